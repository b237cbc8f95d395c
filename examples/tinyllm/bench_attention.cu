// examples/tinyllm/bench_attention.cu — CUDA rows of `tinyllm bench attention`
// and `tinyllm bench attention_decode`.
//
// attention: 16k tokens of a 2048-wide model, causal:
//   D = 128, S = 2048, B = 8, H = 16   v4, v5, v6, v7 (bf16) and v3 (float)
//   D = 64,  S = 2048, B = 8, H = 32   v4, v5, v6, v7 (bf16), v5 with two blocks per SM
//   D = 128, S = 8192, B = 2, H = 16   v4, v5, v6, v7 (bf16), v3 (float)
//   v6 (wgmma) and v7 (TMA), each in both schedules, run where the build has sm_90a code for the GPU
//   (and on the simulated GPU); elsewhere their rows are left out. v7 runs last (wait_first_call).
//   v1 and v2 materialize the (B, H, S, S) score matrix and are slow: they run
//   at B = 1 (2048 tokens; the score matrix alone is 256 MiB), said in the row.
// TFLOP/s with FLOPs = 4 * B * H * S * S * D, halved for causal (the masked
// half is not computed), the convention of FlashAttention and PyTorch's numbers.
//
// attention_decode: B = 8 sequences, one new token each, against L = 32768
// cached positions, H = 32 heads (MHA, as the PyTorch baseline), D = 128, bf16.
// Then the same with 8 KV heads (GQA, 4 query heads per KV head), rung 2 with 4
// and with 8 query rows per block. GB/s counts K and V read once:
// 2 * B * L * Hkv * D * 2 bytes.
//
// On the simulated GPU (docs/simulator.md) the same rows run on small shapes:
//   attention   T = 256 (1 or 2 sequences, 2 or 4 heads), and T = 520 for the
//               long shape: not a multiple of the 64-row tiles of v4, of v2's 32
//               or of v3's 16 queries and 32 keys, so partial tiles run too;
//   attention_decode   B = 2, H = 4 and L = 1000 (--size L keeps B = 8, H = 32):
//               rung 2 (warps, what attention_decode runs) and rung 1 (tiles),
//               key splits with a partial last one, merged by the combine kernel.
//
// attention_backward: dQ, dK, dV of causal attention (MHA), D = 128, v1 naive
//   (float) at B = 1, T = 2048, H = 16 (v1's P is 256 MiB); v2 flash (float and
//   bf16) and v3 mma (bf16, tensor cores) at B = 1 and B = 8 (16k tokens). The
//   v2 and v3 rows time the backward alone (the forward that saves out and lse,
//   v3 flash, runs once before). TFLOP/s with 2.5x the forward's FLOPs (five
//   matrix products against two, FlashAttention's convention; v2 and v3 do
//   seven, for their deterministic dQ pass). Simulated GPU: B = 1, T = 200, H = 2.
//
// Each row is checked against the CPU reference (float64 math) on batch row 0,
// head 0 (the full reference would take minutes on a CPU).
#include "registry.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/attention_backward.cuh>
#include <tinyllm/cuda/attention_backward_mma.cuh>
#include <tinyllm/cuda/attention_decode.cuh>
#include <tinyllm/cuda/attention_flash.cuh>
#include <tinyllm/cuda/attention_flash2.cuh>
#include <tinyllm/cuda/attention_mma.cuh>
#include <tinyllm/cuda/attention_tma.cuh>
#include <tinyllm/cuda/attention_wgmma.cuh>
#include <tinyllm/cuda/attention_naive.cuh>
#include <tinyllm/cuda/attention_tiled.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;
using tinyllm::index_t;

namespace {

struct attn_shape {
    index_t B, Tq, Tk, Hq, Hkv, D;
    bool causal;
    std::string name(const char* dtype) const {
        char buf[128];
        std::snprintf(buf, sizeof buf, "B=%lld,Tq=%lld,Tk=%lld,Hq=%lld,Hkv=%lld,D=%lld,%s%s", static_cast<long long>(B),
                      static_cast<long long>(Tq), static_cast<long long>(Tk), static_cast<long long>(Hq),
                      static_cast<long long>(Hkv), static_cast<long long>(D), causal ? "causal," : "", dtype);
        return buf;
    }
    double flops() const {
        const double f = 4.0 * B * Hq * Tq * Tk * D;
        return causal ? f / 2 : f;
    }
};

// Random inputs in [-1, 1), rounded to T; kept on the host for the check.
template <class T>
std::vector<T> random_values(index_t n, std::uint64_t seed) {
    std::vector<float> f(static_cast<std::size_t>(n));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(f.data(), {n}), seed, -1.0f, 1.0f);
    std::vector<T> x(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) x[i] = tinyllm::from_float<T>(f[i]);
    return x;
}

template <class T>
struct attn_data {
    attn_shape s;
    std::vector<T> q, k, v;
    tc::device_buffer<T> dq, dk, dv, dout;
    explicit attn_data(const attn_shape& sh) : s(sh) {
        q = random_values<T>(s.B * s.Tq * s.Hq * s.D, 11);
        k = random_values<T>(s.B * s.Tk * s.Hkv * s.D, 12);
        v = random_values<T>(s.B * s.Tk * s.Hkv * s.D, 13);
        dq = tc::to_device(q);
        dk = tc::to_device(k);
        dv = tc::to_device(v);
        dout = tc::device_buffer<T>(q.size());
    }
    tinyllm::tensor_view<T, 4> out() { return dout.view(tinyllm::extents<4>{s.B, s.Tq, s.Hq, s.D}); }
    tinyllm::tensor_view<const T, 4> qv() const { return dq.view(tinyllm::extents<4>{s.B, s.Tq, s.Hq, s.D}); }
    tinyllm::tensor_view<const T, 4> kv() const { return dk.view(tinyllm::extents<4>{s.B, s.Tk, s.Hkv, s.D}); }
    tinyllm::tensor_view<const T, 4> vv() const { return dv.view(tinyllm::extents<4>{s.B, s.Tk, s.Hkv, s.D}); }

    // Max-abs error of batch row 0, head 0 against the CPU reference.
    double check(const tinyllm::attention_options& opts) const {
        auto to_d = [](const std::vector<T>& x, index_t n) {
            std::vector<double> y(static_cast<std::size_t>(n));
            for (index_t i = 0; i < n; ++i) y[static_cast<std::size_t>(i)] = tinyllm::to_float(x[static_cast<std::size_t>(i)]);
            return y;
        };
        // Batch row 0 is the first slice; head 0 of q and kv head 0 via strided views.
        const auto qd = to_d(q, s.Tq * s.Hq * s.D), kd = to_d(k, s.Tk * s.Hkv * s.D), vd = to_d(v, s.Tk * s.Hkv * s.D);
        tinyllm::tensor_view<const double, 4> q0(qd.data(), {1, s.Tq, s.Hq, s.D}), k0(kd.data(), {1, s.Tk, s.Hkv, s.D}),
            v0(vd.data(), {1, s.Tk, s.Hkv, s.D});
        tinyllm::tensor<double, 4> want({1, s.Tq, 1, s.D});
        tinyllm::cpu::attention<double>(want.view(), q0.narrow(2, 0, 1), k0.narrow(2, 0, 1), v0.narrow(2, 0, 1), opts);
        const auto got = tc::to_host(dout);
        double err = 0;
        for (index_t i = 0; i < s.Tq; ++i)
            for (index_t d = 0; d < s.D; ++d) {
                const double g = tinyllm::to_float(got[static_cast<std::size_t>((i * s.Hq) * s.D + d)]);
                const double e = std::fabs(g - want(0, i, 0, d));
                err = std::isfinite(g) ? std::max(err, e) : INFINITY;
            }
        return err;
    }
};

tc::timing_options options(const bench_context& ctx) {
    tc::timing_options o;
    o.repeats = ctx.repeats;
    return o;
}

// Waits for a row's first call, at most `seconds`. A kernel that never ends
// (a barrier misused in a way the simulated GPU does not model: v7's mbarriers
// and named barriers have only run there) would otherwise hold the benchmark
// until something kills it, and the rows already measured, printed only at the
// end, would be lost with it. On a timeout the rows so far go to stderr and
// the process ends at once: std::_Exit, because destructors would free device
// memory and so wait for the GPU; the driver ends the kernel with the process.
void wait_first_call(const bench_context& ctx, const std::string& name, double seconds = 30) {
    cudaEvent_t done;
    TINYLLM_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    TINYLLM_CUDA_CHECK(cudaEventRecord(done));
    const auto start = std::chrono::steady_clock::now();
    cudaError_t state;
    while ((state = cudaEventQuery(done)) == cudaErrorNotReady) {
        if (std::chrono::steady_clock::now() - start > std::chrono::duration<double>(seconds)) {
            std::fprintf(stderr, "tinyllm bench: %s did not finish in %.0f s: a hang. The rows measured before it:\n",
                         name.c_str(), seconds);
            for (const auto& r : ctx.rows)
                std::fprintf(stderr, "  %s: %.2f us median, %s%s\n", r.timing.name.c_str(), r.timing.median_us,
                             r.check.c_str(), r.agrees ? "" : " (DISAGREES)");
            std::fflush(stderr);
            std::_Exit(3);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    (void)cudaEventDestroy(done);
    TINYLLM_CUDA_CHECK(state);
}

template <class T, class Work>
void add_row(bench_context& ctx, attn_data<T>& data, const char* version, const char* key, const char* dtype,
             double tolerance, bool baseline, Work&& work, double bytes = 0) {
    tinyllm::attention_options opts;
    opts.causal = data.s.causal;
    data.dout.poison();
    const std::string name = std::string("attention/") + key + "/" + data.s.name(dtype);
    work();
    wait_first_call(ctx, name);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const double err = data.check(opts);
    auto timing = tc::time_gpu(name, work, bytes, bytes > 0 ? 0 : data.s.flops(), options(ctx));
    char check[64];
    std::snprintf(check, sizeof check, "max-abs %.1e (b0,h0)", err);
    ctx.rows.push_back({version, "cuda", timing, check, err <= tolerance, baseline});
}

}  // namespace

TINYLLM_BENCH("attention", "causal attention, 16k tokens of a 2048-wide model (v1/v2 at 2048 tokens; simulated GPU: T = 256 and 520, 2-4 heads)", 1) {
    if (!ctx.gpu_available) return;
    tinyllm::attention_options causal;
    causal.causal = true;
    const double float_tol = 1e-4, bf16_tol = 2e-2;
    // The CUDA rows take no --size: on the simulated GPU they always run the small shapes.
    const bool sim = ctx.simulated;
    {
        // v1, v2: B = 1 — their (B, H, S, S) float score matrix is the point (and the cost).
        attn_data<float> d(sim ? attn_shape{1, 256, 256, 2, 2, 128, true} : attn_shape{1, 2048, 2048, 16, 16, 128, true});
        tc::device_buffer<float> scores(static_cast<std::size_t>(d.s.B * d.s.Hq * d.s.Tq * d.s.Tk));
        auto sv = scores.view(tinyllm::extents<4>{d.s.B, d.s.Hq, d.s.Tq, d.s.Tk});
        add_row(ctx, d, "v1 naive (B=1)", "v1_naive", "float", float_tol, true,
                [&] { tc::attention_naive<float>(d.out(), d.qv(), d.kv(), d.vv(), sv, causal); });
        add_row(ctx, d, "v2 tiled (B=1)", "v2_tiled", "float", float_tol, false,
                [&] { tc::attention_tiled<float>(d.out(), d.qv(), d.kv(), d.vv(), sv, causal); });
        add_row(ctx, d, "v3 flash (B=1)", "v3_flash", "float", float_tol, false,
                [&] { tc::attention_flash<float>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
    }
    {
        attn_data<float> d(sim ? attn_shape{2, 256, 256, 2, 2, 128, true} : attn_shape{8, 2048, 2048, 16, 16, 128, true});
        add_row(ctx, d, "v3 flash", "v3_flash", "float", float_tol, false,
                [&] { tc::attention_flash<float>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
    }
    const std::vector<attn_shape> bf16_shapes =
        sim ? std::vector<attn_shape>{{2, 256, 256, 2, 2, 128, true}, {2, 256, 256, 4, 4, 64, true},
                                      {1, 520, 520, 2, 2, 128, true}}
            : std::vector<attn_shape>{{8, 2048, 2048, 16, 16, 128, true}, {8, 2048, 2048, 32, 32, 64, true},
                                      {2, 8192, 8192, 16, 16, 128, true}};
    const std::size_t first_bf16 = ctx.rows.size();
    for (const auto& s : bf16_shapes) {
        attn_data<tinyllm::bfloat16> d(s);
        add_row(ctx, d, "v4 mma (bf16)", "v4_mma", "bf16", bf16_tol, false,
                [&] { tc::attention_mma<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
        add_row(ctx, d, "v5 flash2 (bf16)", "v5_flash2", "bf16", bf16_tol, false,
                [&] { tc::attention_flash2<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
        if (s.D == 64)  // the same kernel compiled for two blocks per SM (128 registers)
            add_row(ctx, d, "v5 flash2, 2 blocks/SM (bf16)", "v5_flash2_x2", "bf16", bf16_tol, false,
                    [&] { tc::attention_flash2<tinyllm::bfloat16, 2>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
        if (tc::wgmma_compiled()) {  // v6 in its default schedule and the other one
            add_row(ctx, d, "v6 wgmma (bf16)", "v6_wgmma", "bf16", bf16_tol, false,
                    [&] { tc::attention_wgmma<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
            add_row(ctx, d, "v6 wgmma, sequential (bf16)", "v6_wgmma_seq", "bf16", bf16_tol, false, [&] {
                tc::attention_wgmma<tinyllm::bfloat16, tc::wgmma_schedule::sequential>(d.out(), d.qv(), d.kv(), d.vv(), causal);
            });
        }
    }
    // v7, both schedules, after every other row: its barriers have run only on the
    // simulated GPU, and a first call that hangs ends the process (wait_first_call)
    // with the rows measured so far. Its rows then join their shapes' in the table.
    if (tc::wgmma_compiled()) {
        for (const auto& s : bf16_shapes) {
            attn_data<tinyllm::bfloat16> d(s);
            add_row(ctx, d, "v7 tma (bf16)", "v7_tma", "bf16", bf16_tol, false,
                    [&] { tc::attention_tma<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv(), causal); });
            add_row(ctx, d, "v7 tma, independent (bf16)", "v7_tma_indep", "bf16", bf16_tol, false, [&] {
                tc::attention_tma<tinyllm::bfloat16, tc::tma_schedule::independent>(d.out(), d.qv(), d.kv(), d.vv(), causal);
            });
        }
        auto shape_of = [&](const bench_row& r) {  // a row's name ends with its shape
            std::size_t i = 0;
            while (i < bf16_shapes.size() && !r.timing.name.ends_with("/" + bf16_shapes[i].name("bf16"))) ++i;
            return i;
        };
        std::stable_sort(ctx.rows.begin() + static_cast<std::ptrdiff_t>(first_bf16), ctx.rows.end(),
                         [&](const bench_row& x, const bench_row& y) { return shape_of(x) < shape_of(y); });
    }
}

TINYLLM_BENCH("attention_decode", "one new token per sequence, B=8, L=32768 cached, H=32, D=128, bf16, then GQA with H/4 and H/8 KV heads (simulated GPU: B=2, L=1000, H=4, and H=8 for H/8)", 1) {
    if (!ctx.gpu_available) return;
    const index_t L = ctx.size_or(32768, 1000);
    const index_t B = ctx.simulated_default() ? 2 : 8, H = ctx.simulated_default() ? 4 : 32;
    attn_data<tinyllm::bfloat16> d({B, 1, L, H, H, 128, false});
    tc::attention_workspace workspace;
    const double bytes = 2.0 * d.s.B * L * d.s.Hkv * d.s.D * sizeof(tinyllm::bfloat16);
    // attention_decode runs rung 2 (warps); rung 1 (tiles) beside it on the same shape.
    add_row(ctx, d, "decode rung 2 warps (bf16)", "decode", "bf16", 2e-2, true,
            [&] { tc::attention_decode<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv(), {}, workspace); }, bytes);
    add_row(ctx, d, "decode rung 1 tiles (bf16)", "decode_tiles", "bf16", 2e-2, false,
            [&] { tc::attention_decode_tiles<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv(), {}, workspace); }, bytes);
    add_row(ctx, d, "v3 flash (bf16, no split)", "v3_flash", "bf16", 2e-2, false,
            [&] { tc::attention_flash<tinyllm::bfloat16>(d.out(), d.qv(), d.kv(), d.vv()); }, bytes);
    // GQA, 4 query heads per KV head (Llama 3, Mistral): 4 rows per block (what
    // attention_decode picks) against the 8 rows per block it ran before, half of them empty.
    attn_data<tinyllm::bfloat16> g({B, 1, L, H, H / 4, 128, false});
    const double gqa_bytes = 2.0 * g.s.B * L * g.s.Hkv * g.s.D * sizeof(tinyllm::bfloat16);
    add_row(ctx, g, "rung 2 GQA-4, 4 rows", "decode", "bf16", 2e-2, false,
            [&] { tc::attention_decode<tinyllm::bfloat16>(g.out(), g.qv(), g.kv(), g.vv(), {}, workspace); }, gqa_bytes);
    add_row(ctx, g, "rung 2 GQA-4, 8 rows", "decode_rows8", "bf16", 2e-2, false, [&] {
        tc::attention_decode_warps<tinyllm::bfloat16, 8>(g.out(), g.qv(), g.kv(), g.vv(), {}, workspace);
    }, gqa_bytes);
    // GQA, 8 query heads per KV head (Llama 2 and 3 70B): the 8-row kernel (what attention_decode
    // picks: one read of the cache, 2 blocks per SM, spills) against the 4-row kernel in two passes
    // (two reads, the second mostly from L2, since both passes' blocks are neighbours in the grid;
    // 3 blocks per SM, no spills). The bytes are the cache read once, for both.
    const index_t H8 = ctx.simulated_default() ? 8 : H;
    attn_data<tinyllm::bfloat16> g8({B, 1, L, H8, H8 / 8, 128, false});
    const double gqa8_bytes = 2.0 * g8.s.B * L * g8.s.Hkv * g8.s.D * sizeof(tinyllm::bfloat16);
    add_row(ctx, g8, "rung 2 GQA-8, 8 rows", "decode", "bf16", 2e-2, false,
            [&] { tc::attention_decode<tinyllm::bfloat16>(g8.out(), g8.qv(), g8.kv(), g8.vv(), {}, workspace); },
            gqa8_bytes);
    add_row(ctx, g8, "rung 2 GQA-8, 4 rows twice", "decode_rows4", "bf16", 2e-2, false, [&] {
        tc::attention_decode_warps<tinyllm::bfloat16, 4>(g8.out(), g8.qv(), g8.kv(), g8.vv(), {}, workspace);
    }, gqa8_bytes);
}

namespace {

// Inputs, dO and the gradients of one backward problem (MHA, float or bf16),
// and the CPU reference's gradients of batch row 0, head 0 (computed once, on
// demand, from the inputs as rounded to T).
template <class E>
struct backward_data {
    attn_shape s;
    std::vector<E> q, k, v, g;
    tc::device_buffer<E> d_q, d_k, d_v, d_dout, out, dq, dk, dv;
    tc::device_buffer<float> lse;
    std::vector<double> want;  // dq, dk, dv of (b0, h0): 3 * (T, D)

    explicit backward_data(const attn_shape& sh) : s(sh) {
        q = random_values<E>(s.B * s.Tq * s.Hq * s.D, 21);
        k = random_values<E>(s.B * s.Tk * s.Hkv * s.D, 22);
        v = random_values<E>(s.B * s.Tk * s.Hkv * s.D, 23);
        g = random_values<E>(s.B * s.Tq * s.Hq * s.D, 24);
        d_q = tc::to_device(q), d_k = tc::to_device(k), d_v = tc::to_device(v), d_dout = tc::to_device(g);
        out = tc::device_buffer<E>(q.size()), dq = tc::device_buffer<E>(q.size());
        dk = tc::device_buffer<E>(k.size()), dv = tc::device_buffer<E>(v.size());
        lse = tc::device_buffer<float>(static_cast<std::size_t>(s.B * s.Hq * s.Tq));
    }
    tinyllm::extents<4> shape() const { return {s.B, s.Tq, s.Hq, s.D}; }
    tinyllm::tensor_view<const E, 4> cv(const tc::device_buffer<E>& b) const { return b.view(shape()); }
    tinyllm::tensor_view<E, 4> mv(tc::device_buffer<E>& b) const { return b.view(shape()); }
    tinyllm::tensor_view<const float, 3> lse_view() const { return lse.view(tinyllm::extents<3>{s.B, s.Hq, s.Tq}); }
    // The forward that saves out and lse (v3 flash), once before the v2 and v3 rows.
    void forward(const tinyllm::attention_options& opts) {
        tc::attention_flash<E>(mv(out), lse.view(tinyllm::extents<3>{s.B, s.Hq, s.Tq}), cv(d_q), cv(d_k), cv(d_v), opts);
    }

    // Max-abs error of dq, dk and dv on batch row 0, head 0.
    double check(const tinyllm::attention_options& opts) {
        const index_t T = s.Tq, H = s.Hq, D = s.D;
        if (want.empty()) {
            std::vector<double> x[4];
            const std::vector<E>* src[4] = {&q, &k, &v, &g};
            for (int t = 0; t < 4; ++t) {  // head 0 of batch row 0, (1, T, 1, D)
                x[t].resize(static_cast<std::size_t>(T * D));
                for (index_t i = 0; i < T; ++i)
                    for (index_t d = 0; d < D; ++d)
                        x[t][static_cast<std::size_t>(i * D + d)] =
                            tinyllm::to_float((*src[t])[static_cast<std::size_t>(i * H * D + d)]);
            }
            want.assign(static_cast<std::size_t>(3 * T * D), 0.0);
            const tinyllm::extents<4> one{1, T, 1, D};
            auto w = [&](int part) { return tinyllm::tensor_view<double, 4>(want.data() + part * T * D, one); };
            auto c = [&](int t) { return tinyllm::tensor_view<const double, 4>(x[t].data(), one); };
            tinyllm::cpu::attention_backward<double>(w(0), w(1), w(2), c(3), c(0), c(1), c(2), opts);
        }
        double err = 0;
        const tc::device_buffer<E>* got[3] = {&dq, &dk, &dv};
        for (int part = 0; part < 3; ++part) {
            const auto h = tc::to_host(*got[part]);
            for (index_t i = 0; i < T; ++i)
                for (index_t d = 0; d < D; ++d) {
                    const double e = std::fabs(tinyllm::to_float(h[static_cast<std::size_t>(i * H * D + d)]) -
                                               want[static_cast<std::size_t>((part * T + i) * D + d)]);
                    err = std::isfinite(e) ? std::max(err, e) : INFINITY;
                }
        }
        return err;
    }
};

template <class E, class Work>
void add_backward_row(bench_context& ctx, backward_data<E>& data, const char* version, const char* key, bool baseline,
                      Work&& work) {
    const bool bf16 = std::is_same_v<E, tinyllm::bfloat16>;
    tinyllm::attention_options opts;
    opts.causal = true;
    data.dq.poison(), data.dk.poison(), data.dv.poison();
    work();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const double err = data.check(opts);
    const std::string name = std::string("attention_backward/") + key + "/" + data.s.name(bf16 ? "bf16" : "float");
    auto timing = tc::time_gpu(name, work, 0, 2.5 * data.s.flops(), options(ctx));
    char check[64];
    std::snprintf(check, sizeof check, "max-abs %.1e (b0,h0)", err);
    // bf16: inputs, P, dS and the gradients rounded to 8 bits of mantissa (gradients of size ~0.1 at T = 200).
    ctx.rows.push_back({version, "cuda", timing, check, err <= (bf16 ? 2e-2 : 1e-4), baseline});
}

}  // namespace

TINYLLM_BENCH("attention_backward", "dQ, dK, dV of causal attention, B=1, T=2048, H=16, D=128, float and bf16 (v2, v3 also at B=8; simulated GPU: T = 200, 2 heads)", 1) {
    if (!ctx.gpu_available) return;
    tinyllm::attention_options causal;
    causal.causal = true;
    const bool sim = ctx.simulated;
    for (const index_t B : sim ? std::vector<index_t>{1} : std::vector<index_t>{1, 8}) {
        const attn_shape shape = sim ? attn_shape{1, 200, 200, 2, 2, 128, true} : attn_shape{B, 2048, 2048, 16, 16, 128, true};
        const bool one = !sim && B == 1;  // the rows v1 runs beside
        {
            backward_data<float> d(shape);
            if (B == 1) {
                tc::device_buffer<float> scores(static_cast<std::size_t>(d.s.B * d.s.Hq * d.s.Tq * d.s.Tk));
                auto sv = scores.view(tinyllm::extents<4>{d.s.B, d.s.Hq, d.s.Tq, d.s.Tk});
                add_backward_row(ctx, d, one ? "v1 naive (B=1)" : "v1 naive", "v1_naive", true, [&] {
                    tc::attention_backward_naive<float>(d.mv(d.dq), d.dk.view(d.shape()), d.dv.view(d.shape()),
                                                        d.cv(d.d_dout), d.cv(d.d_q), d.cv(d.d_k), d.cv(d.d_v), sv, causal);
                });
            }
            d.forward(causal);
            add_backward_row(ctx, d, one ? "v2 flash (B=1)" : "v2 flash", "v2_flash", false, [&] {
                tc::attention_backward_flash<float>(d.mv(d.dq), d.dk.view(d.shape()), d.dv.view(d.shape()),
                                                    d.cv(d.d_dout), d.cv(d.d_q), d.cv(d.d_k), d.cv(d.d_v), d.cv(d.out),
                                                    d.lse_view(), causal);
            });
        }
        {
            // The same problem in bf16: v2 (float math on CUDA cores) beside v3 (tensor cores).
            using bf16 = tinyllm::bfloat16;
            backward_data<bf16> d(shape);
            d.forward(causal);
            add_backward_row(ctx, d, one ? "v2 flash (bf16, B=1)" : "v2 flash (bf16)", "v2_flash", false, [&] {
                tc::attention_backward_flash<bf16>(d.mv(d.dq), d.dk.view(d.shape()), d.dv.view(d.shape()),
                                                   d.cv(d.d_dout), d.cv(d.d_q), d.cv(d.d_k), d.cv(d.d_v), d.cv(d.out),
                                                   d.lse_view(), causal);
            });
            add_backward_row(ctx, d, one ? "v3 mma (bf16, B=1)" : "v3 mma (bf16)", "v3_mma", false, [&] {
                tc::attention_backward_mma<bf16>(d.mv(d.dq), d.dk.view(d.shape()), d.dv.view(d.shape()), d.cv(d.d_dout),
                                                 d.cv(d.d_q), d.cv(d.d_k), d.cv(d.d_v), d.cv(d.out), d.lse_view(),
                                                 causal);
            });
        }
    }
}
