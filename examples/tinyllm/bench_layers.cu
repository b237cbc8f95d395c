// examples/tinyllm/bench_layers.cu — CUDA rows of `tinyllm bench
// rmsnorm|layernorm|residual_rmsnorm|swiglu` (and, at the end, the decode GEMVs
// of the MLP and of the MoE experts): (rows, 4096) bfloat16, rows =
// --size or 16384 (64 on the simulated GPU: every row is then checked, and the
// kernels take the same paths, since their launch shapes depend on the 4096).
//
// Each component times its ladder (v1 naive first: the baseline of the
// speed-up column) and a device-to-device copy of the same number of bytes,
// the ceiling a memory-bound kernel is judged against (GB/s here counts the
// bytes the operation must move: every input read once, every output written
// once). Each timed version's output is checked against the CPU reference on
// the first and last 32 rows (bfloat16 tolerance: 1e-2 absolute + 1e-2 relative).
#include "registry.hpp"

#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/moe.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/activation.hpp>
#include <tinyllm/moe.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;

namespace {

using T = bfloat16;
constexpr index_t D = 4096;
constexpr long long default_rows = 16384, simulated_rows = 64;
constexpr float eps = 1e-5f;

template <class U>
__global__ void convert_kernel(U* out, const float* in, index_t n) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        out[i] = tc::detail::store_as<U>(in[i]);
}

// n uniform values in [lo, hi) as bfloat16, made on the device.
tc::device_buffer<T> random_bf16(index_t n, std::uint64_t seed, float lo, float hi) {
    tc::device_buffer<float> f(static_cast<std::size_t>(n));
    tc::fill_uniform(f.view(extents<1>{n}), seed, lo, hi);
    tc::device_buffer<T> out(static_cast<std::size_t>(n));
    tinyllm::cuda::launch(convert_kernel<T>, 1024, 256, 0, nullptr, out.data(), f.data(), n);
    TINYLLM_CUDA_CHECK_LAUNCH();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    return out;
}

// The rows the agreement check looks at: the first and the last 32.
std::vector<index_t> sample_rows(index_t rows) {
    std::vector<index_t> idx;
    for (index_t r = 0; r < rows; ++r)
        if (r < 32 || r >= rows - 32) idx.push_back(r);
    return idx;
}

// Those rows of a (rows, D) host tensor of T, as floats: (samples, D).
std::vector<float> gather(const std::vector<T>& all, const std::vector<index_t>& idx) {
    std::vector<float> out;
    out.reserve(idx.size() * D);
    for (index_t r : idx)
        for (index_t j = 0; j < D; ++j) out.push_back(tinyllm::to_float(all[static_cast<std::size_t>(r * D + j)]));
    return out;
}

struct agreement {
    std::string text;
    bool ok;
};

agreement check(const std::vector<T>& got_all, const std::vector<index_t>& idx, const std::vector<float>& ref) {
    const auto got = gather(got_all, idx);
    double max_abs = 0;
    bool ok = got.size() == ref.size();
    for (std::size_t i = 0; ok && i < got.size(); ++i) {
        const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
        if (!std::isfinite(got[i]) || err > 1e-2 + 1e-2 * std::fabs(ref[i])) ok = false;
        if (err > max_abs || !std::isfinite(err)) max_abs = err;
    }
    char text[64];
    std::snprintf(text, sizeof text, "max-abs %.2g on %zu rows", max_abs, idx.size());
    return {text, ok};
}

tc::timing_options options(const bench_context& ctx) {
    tc::timing_options o;
    o.repeats = ctx.repeats;
    return o;
}

std::string shape_name(index_t rows) { return std::to_string(rows) + "x" + std::to_string(D) + "_bf16"; }

// Time one version writing `out`, then check it against `ref` on the sample rows.
void run_version(bench_context& ctx, const std::string& component, const char* version, const char* key,
                 bool baseline, double bytes, index_t rows, tc::device_buffer<T>& out,
                 const std::vector<index_t>& idx, const std::vector<float>& ref, const std::function<void()>& work) {
    out.poison();
    auto timing = tc::time_gpu(component + "/" + key + "/" + shape_name(rows), work, bytes, 0, options(ctx));
    const auto a = check(tc::to_host(out), idx, ref);
    ctx.rows.push_back({version, "cuda", timing, a.text, a.ok, baseline});
}

// A device-to-device copy moving `bytes` in total (bytes / 2 read, bytes / 2 written).
void run_copy(bench_context& ctx, const std::string& component, double bytes, index_t rows) {
    const auto n = static_cast<std::size_t>(bytes / 2);
    tc::device_buffer<unsigned char> a(n), b(n);
    TINYLLM_CUDA_CHECK(cudaMemset(a.data(), 1, n));
    auto timing = tc::time_gpu(
        component + "/cudaMemcpy_same_bytes/" + shape_name(rows),
        [&] { TINYLLM_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), n, cudaMemcpyDeviceToDevice)); }, bytes, 0,
        options(ctx));
    ctx.rows.push_back({"memcpy (same bytes)", "cuda", timing, "reference", true, false});
}

index_t rows_of(const bench_context& ctx) { return ctx.size_or(default_rows, simulated_rows); }

}  // namespace

TINYLLM_BENCH("rmsnorm", "RMSNorm of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    const index_t rows = rows_of(ctx), n = rows * D;
    auto x = random_bf16(n, 11, -2, 2), w = random_bf16(D, 12, 0.5f, 1.5f);
    tc::device_buffer<T> out(static_cast<std::size_t>(n));
    const auto idx = sample_rows(rows);
    const auto xs = gather(tc::to_host(x), idx), ws = gather(tc::to_host(w), {0});
    std::vector<float> ref(xs.size());
    const auto k = static_cast<index_t>(idx.size());
    tinyllm::cpu::rms_norm({ref.data(), {k, D}}, {xs.data(), {k, D}}, {ws.data(), {D}}, eps);

    const auto X = x.view(extents<2>{rows, D});
    const auto W = w.view(extents<1>{D});
    const auto O = out.view(extents<2>{rows, D});
    const double bytes = 2.0 * n * sizeof(T) + D * sizeof(T);
    run_version(ctx, "rmsnorm", "v1 naive", "v1_naive", true, bytes, rows, out, idx, ref,
                [&] { tc::rms_norm_naive<T>(O, X, W, eps); });
    run_version(ctx, "rmsnorm", "v2 vectorized", "v2_vectorized", false, bytes, rows, out, idx, ref,
                [&] { tc::rms_norm_vectorized<T>(O, X, W, eps); });
    run_copy(ctx, "rmsnorm", bytes, rows);
}

TINYLLM_BENCH("layernorm", "LayerNorm of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    const index_t rows = rows_of(ctx), n = rows * D;
    auto x = random_bf16(n, 21, -2, 2), w = random_bf16(D, 22, 0.5f, 1.5f), b = random_bf16(D, 23, -1, 1);
    tc::device_buffer<T> out(static_cast<std::size_t>(n));
    const auto idx = sample_rows(rows);
    const auto xs = gather(tc::to_host(x), idx), ws = gather(tc::to_host(w), {0}), bs = gather(tc::to_host(b), {0});
    std::vector<float> ref(xs.size());
    const auto k = static_cast<index_t>(idx.size());
    tinyllm::cpu::layer_norm({ref.data(), {k, D}}, {xs.data(), {k, D}}, {ws.data(), {D}}, {bs.data(), {D}}, eps);

    const auto X = x.view(extents<2>{rows, D});
    const auto W = w.view(extents<1>{D});
    const auto B = b.view(extents<1>{D});
    const auto O = out.view(extents<2>{rows, D});
    const double bytes = 2.0 * n * sizeof(T) + 2.0 * D * sizeof(T);
    run_version(ctx, "layernorm", "v1 naive", "v1_naive", true, bytes, rows, out, idx, ref,
                [&] { tc::layer_norm_naive<T>(O, X, W, B, eps); });
    run_version(ctx, "layernorm", "v2 vectorized", "v2_vectorized", false, bytes, rows, out, idx, ref,
                [&] { tc::layer_norm_vectorized<T>(O, X, W, B, eps); });
    run_copy(ctx, "layernorm", bytes, rows);
}

TINYLLM_BENCH("residual_rmsnorm",
              "residual add + RMSNorm of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    const index_t rows = rows_of(ctx), n = rows * D;
    auto x = random_bf16(n, 31, -2, 2), res = random_bf16(n, 32, -4, 4), w = random_bf16(D, 33, 0.5f, 1.5f);
    tc::device_buffer<T> out(static_cast<std::size_t>(n)), sum(static_cast<std::size_t>(n));
    const auto idx = sample_rows(rows);
    const auto xs = gather(tc::to_host(x), idx), rs = gather(tc::to_host(res), idx), ws = gather(tc::to_host(w), {0});
    const auto k = static_cast<index_t>(idx.size());
    std::vector<float> s(xs.size()), ref(xs.size());
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = tinyllm::to_float(tinyllm::from_float<T>(xs[i] + rs[i]));
    tinyllm::cpu::rms_norm({ref.data(), {k, D}}, {s.data(), {k, D}}, {ws.data(), {D}}, eps);

    const auto X = x.view(extents<2>{rows, D});
    const auto R = res.view(extents<2>{rows, D});
    const auto W = w.view(extents<1>{D});
    const auto O = out.view(extents<2>{rows, D});
    const auto S = sum.view(extents<2>{rows, D});
    const double bytes = 4.0 * n * sizeof(T) + D * sizeof(T);
    run_version(ctx, "residual_rmsnorm", "v1 naive", "v1_naive", true, bytes, rows, out, idx, ref,
                [&] { tc::residual_add_rms_norm_naive<T>(O, S, X, R, W, eps); });
    run_version(ctx, "residual_rmsnorm", "add + v2 rms_norm", "unfused_add_v2", false, bytes, rows, out, idx,
                ref, [&] {
                    tc::add<T>(S, X, R);
                    tc::rms_norm_vectorized<T>(O, S, W, eps);
                });
    run_version(ctx, "residual_rmsnorm", "v2 vectorized fused", "v2_vectorized_fused", false, bytes, rows, out, idx,
                ref, [&] { tc::residual_add_rms_norm_vectorized<T>(O, S, X, R, W, eps); });
    run_copy(ctx, "residual_rmsnorm", bytes, rows);
}

TINYLLM_BENCH("swiglu", "silu(gate) * up of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    const index_t rows = rows_of(ctx), n = rows * D;
    auto g = random_bf16(n, 41, -4, 4), u = random_bf16(n, 42, -2, 2);
    tc::device_buffer<T> out(static_cast<std::size_t>(n));
    const auto idx = sample_rows(rows);
    const auto gs = gather(tc::to_host(g), idx), us = gather(tc::to_host(u), idx);
    const auto k = static_cast<index_t>(idx.size());
    std::vector<float> ref(gs.size());
    tinyllm::cpu::swiglu({ref.data(), {k, D}}, {gs.data(), {k, D}}, {us.data(), {k, D}});

    const auto G = g.view(extents<2>{rows, D});
    const auto U = u.view(extents<2>{rows, D});
    const auto O = out.view(extents<2>{rows, D});
    const double bytes = 3.0 * n * sizeof(T);
    run_version(ctx, "swiglu", "v1 naive, 2 kernels", "v1_naive_unfused", true, bytes, rows, out, idx, ref,
                [&] { tc::swiglu_naive<T>(O, G, U); });
    run_version(ctx, "swiglu", "v2 fused vectorized", "v2_fused_vectorized", false, bytes, rows, out, idx, ref,
                [&] { tc::swiglu<T>(O, G, U); });
    run_copy(ctx, "swiglu", bytes, rows);
}

// ---- `tinyllm bench mlp_swiglu_gemv|mlp_gelu_gemv|down_residual_rmsnorm_gemv` -------------
// A decode step's first MLP projection with its element-wise step, M rows
// (--size M, default 1, at most 8), bf16:
//   mlp_swiglu_gemv  Llama-3.2-1B (D 2048, H 8192): cuBLAS gate + cuBLAS up +
//                    swiglu, against swiglu_gemv (gate and up read by one GEMV,
//                    SwiGLU in its epilogue); bytes: the two weights (67 MB)
//   mlp_gelu_gemv    GPT-2 124M (D 768, H 3072): cuBLAS fc + bias_activate (bias
//                    + GELU), against bias_activate_gemv; bytes: W_fc (4.7 MB)
//   down_residual_rmsnorm_gemv  Llama-3.2-1B's down projection (H 8192 -> D
//                    2048) + residual add + RMSNorm: cuBLAS down + v2
//                    residual_add_rms_norm, against norm v3 (one GEMV whose
//                    epilogue adds and whose last block normalizes); bytes:
//                    W_down (33.5 MB), the stream read and written, h written.
//                    Both update the stream in place, so the timed runs keep
//                    adding to it (the values grow; the work does not change).
//                    Without --size it times M = 1 and M = 8: one block
//                    normalizes all M rows, so the tail's cost grows with M
//   moe_experts_gemv Mixtral-8x7B's experts (E 8, k 2, D 4096, F 14336): the
//                    M tokens' chosen experts by moe_experts_swiglu (cuBLAS GEMMs
//                    per expert, sized from the plan's offsets read back: one
//                    wait per call), against moe_experts_swiglu_gemv (grouped
//                    GEMVs that read the plan on the device); bytes: the chosen
//                    experts' three matrices (352 MB each expert), the rows in
//                    and out. The plan and the gather are made once, untimed
// The GEMVs sum in another order than cuBLAS, so the check is a tolerance
// against the unfused steps (rel-L2 <= 1e-2), not bits. On the simulated GPU
// the widths are 8x smaller.

namespace {

// An MLP GEMV bench's problem: M rows of x (M, D), uniform in [-1, 1), the widths
// (1/8 on the simulated GPU) and the weights' scale 1/sqrt(D). M = 0: --size asked
// for more rows than the GEMVs take (said on ctx.out), nothing to run.
struct gemv_problem {
    index_t M = 0, D = 0, H = 0;
    tc::device_buffer<T> x;
    float scale = 1.0f;
};

gemv_problem gemv_problem_of(bench_context& ctx, index_t M, index_t D, index_t H, std::uint64_t seed) {
    gemv_problem p;
    const index_t shrink = ctx.simulated ? 8 : 1;
    if (M > tc::detail::mlp_gemv_max_rows) {
        ctx.out << "  --size " << M << " rows; the MLP GEMVs take at most " << tc::detail::mlp_gemv_max_rows
                << " (a decode step)\n";
        return p;
    }
    p.M = M;
    p.D = D / shrink;
    p.H = H / shrink;
    p.x = random_bf16(M * p.D, seed, -1, 1);
    p.scale = 1.0f / std::sqrt(static_cast<float>(p.D));
    return p;
}

// The same with M from --size (default 1).
gemv_problem gemv_problem_of(bench_context& ctx, index_t D, index_t H, std::uint64_t seed) {
    return gemv_problem_of(ctx, ctx.size_or(1, 1), D, H, seed);
}

std::vector<float> floats_of(const tc::device_buffer<T>& b) {
    const std::vector<T> v = tc::to_host(b);
    std::vector<float> f(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) f[i] = tinyllm::to_float(v[i]);
    return f;
}

// Runs `unfused` (the reference row) and `fused` into poisoned copies of out,
// each after `prepare` (when given: restores an input both update in place),
// compares them, then times both.
void compare_and_time(bench_context& ctx, const std::string& key, tc::device_buffer<T>& out,
                      const char* unfused_name, const char* unfused_key, const std::function<void()>& unfused,
                      const char* fused_name, const char* fused_key, const std::function<void()>& fused, double bytes,
                      double flops, const std::function<void()>& prepare = {}) {
    out.poison();
    if (prepare) prepare();
    unfused();
    const std::vector<float> want = floats_of(out);
    out.poison();
    if (prepare) prepare();
    fused();
    const bench_agreement check = rel_l2_agreement(floats_of(out), want, 1e-2);
    const auto unfused_t = tc::time_gpu(std::string(unfused_key) + "/" + key, unfused, bytes, flops, options(ctx));
    ctx.rows.push_back({unfused_name, "cuda", unfused_t, "the reference", true, true});
    const auto fused_t = tc::time_gpu(std::string(fused_key) + "/" + key, fused, bytes, flops, options(ctx));
    ctx.rows.push_back({fused_name, "cuda", fused_t, check.text, check.ok, false});
}

std::string gemv_shape(index_t M, index_t Dm, index_t H) {
    return "M=" + std::to_string(M) + ",D=" + std::to_string(Dm) + ",H=" + std::to_string(H) + ",bf16";
}

}  // namespace

TINYLLM_BENCH("mlp_swiglu_gemv", "a decode step's gate and up projections + SwiGLU, Llama-3.2-1B shape (D 2048, H 8192), bf16: --size M rows (default 1, at most 8; simulated GPU: D 256, H 1024)", 1) {
    if (!ctx.gpu_available) return;
    const gemv_problem p = gemv_problem_of(ctx, 2048, 8192, 51);
    if (p.M == 0) return;
    const index_t M = p.M, Dm = p.D, H = p.H;
    auto wg = random_bf16(H * Dm, 52, -p.scale, p.scale), wu = random_bf16(H * Dm, 53, -p.scale, p.scale);
    tc::device_buffer<T> out(static_cast<std::size_t>(M * H)), up(static_cast<std::size_t>(M * H));
    const auto X = p.x.view(extents<2>{M, Dm});
    const auto WG = wg.view(extents<2>{H, Dm}), WU = wu.view(extents<2>{H, Dm});
    const auto O = out.view(extents<2>{M, H}), U = up.view(extents<2>{M, H});
    const tc::cublas_handle handle;
    const double bytes = static_cast<double>(2 * H * Dm + M * Dm + M * H) * sizeof(T);
    compare_and_time(
        ctx, gemv_shape(M, Dm, H), out, "cuBLAS gate, up + swiglu", "mlp_swiglu_gemv/cublas_swiglu",
        [&] {
            tc::linear<T>(O, X, WG, {}, handle);
            tc::linear<T>(U, X, WU, {}, handle);
            tc::swiglu<T>(O, O, U);
        },
        "swiglu_gemv", "mlp_swiglu_gemv/swiglu_gemv", [&] { tc::detail::swiglu_gemv<T>(O, X, WG, WU); }, bytes,
        4.0 * static_cast<double>(M * H * Dm));
}

TINYLLM_BENCH("mlp_gelu_gemv", "a decode step's fc projection + bias + GELU, GPT-2 124M shape (D 768, H 3072), bf16: --size M rows (default 1, at most 8; simulated GPU: D 96, H 384)", 1) {
    if (!ctx.gpu_available) return;
    const gemv_problem p = gemv_problem_of(ctx, 768, 3072, 61);
    if (p.M == 0) return;
    const index_t M = p.M, Dm = p.D, H = p.H;
    auto w = random_bf16(H * Dm, 62, -p.scale, p.scale), b = random_bf16(H, 63, -0.5f, 0.5f);
    tc::device_buffer<T> out(static_cast<std::size_t>(M * H));
    const auto X = p.x.view(extents<2>{M, Dm});
    const auto W = w.view(extents<2>{H, Dm});
    const auto B = b.view(extents<1>{H});
    const auto O = out.view(extents<2>{M, H});
    const tc::cublas_handle handle;
    const double bytes = static_cast<double>(H * Dm + H + M * Dm + M * H) * sizeof(T);
    compare_and_time(
        ctx, gemv_shape(M, Dm, H), out, "cuBLAS fc + bias_activate", "mlp_gelu_gemv/cublas_bias_activate",
        [&] {
            tc::linear<T>(O, X, W, {}, handle);
            tc::bias_activate<T>(O, O, B, tinyllm::activation::gelu_tanh);
        },
        "bias_activate_gemv", "mlp_gelu_gemv/bias_activate_gemv",
        [&] { tc::detail::bias_activate_gemv<T>(O, X, W, B, tinyllm::activation::gelu_tanh); }, bytes,
        2.0 * static_cast<double>(M * H * Dm));
}

TINYLLM_BENCH("down_residual_rmsnorm_gemv", "a decode step's down projection + residual add + RMSNorm, Llama-3.2-1B shape (H 8192 -> D 2048), bf16: --size M rows (default: 1 and 8; at most 8; simulated GPU: D 256, H 1024)", 1) {
    if (!ctx.gpu_available) return;
    const std::vector<index_t> sizes = ctx.size > 0 ? std::vector<index_t>{static_cast<index_t>(ctx.size)} : std::vector<index_t>{1, 8};
    for (const index_t rows : sizes) {
        const gemv_problem p = gemv_problem_of(ctx, rows, 2048, 8192, 71);  // p.x unused: the input is (M, H)
        if (p.M == 0) return;
        const index_t M = p.M, Dm = p.D, H = p.H;
        const float scale = 1.0f / std::sqrt(static_cast<float>(H));
        auto in = random_bf16(M * H, 72, -1, 1), w = random_bf16(Dm * H, 73, -scale, scale);
        auto x0 = random_bf16(M * Dm, 74, -1, 1), g = random_bf16(Dm, 75, 0.5f, 1.5f);
        tc::device_buffer<T> x(static_cast<std::size_t>(M * Dm)), out(static_cast<std::size_t>(M * Dm)),
            delta(static_cast<std::size_t>(M * Dm));
        tc::device_buffer<unsigned> arrivals(1);
        TINYLLM_CUDA_CHECK(cudaMemset(arrivals.data(), 0, sizeof(unsigned)));
        const auto IN = in.view(extents<2>{M, H});
        const auto W = w.view(extents<2>{Dm, H});
        const auto G = g.view(extents<1>{Dm});
        const auto X = x.view(extents<2>{M, Dm}), O = out.view(extents<2>{M, Dm}), DL = delta.view(extents<2>{M, Dm});
        const tc::cublas_handle handle;
        const double bytes = static_cast<double>(Dm * H + M * H + 3 * M * Dm + Dm) * sizeof(T);
        // The rows name M: the speed-up column of the table is over the first reference (M = 1).
        const std::string at_m = ", M=" + std::to_string(M);
        compare_and_time(
            ctx, gemv_shape(M, Dm, H), out, ("cuBLAS down + residual_add_rms_norm" + at_m).c_str(),
            "down_residual_rmsnorm_gemv/cublas_v2",
            [&] {
                tc::linear<T>(DL, IN, W, {}, handle);
                tc::residual_add_rms_norm<T>(O, X, X, DL, G, eps);
            },
            ("residual_add_rms_norm_gemv (v3)" + at_m).c_str(), "down_residual_rmsnorm_gemv/v3_gemv",
            [&] { tc::detail::residual_add_rms_norm_gemv<T>(O, X, IN, W, {}, G, eps, arrivals.data()); }, bytes,
            2.0 * static_cast<double>(M * H * Dm),
            [&] { TINYLLM_CUDA_CHECK(cudaMemcpy(x.data(), x0.data(), x.bytes(), cudaMemcpyDeviceToDevice)); });
    }
}

TINYLLM_BENCH("moe_experts_gemv", "a decode step's MoE experts, Mixtral-8x7B shape (E 8, k 2, D 4096, F 14336), bf16: cuBLAS per expert against grouped GEMVs; --size M tokens (default 1, at most 8; simulated GPU: D 512, F 1792)", 1) {
    if (!ctx.gpu_available) return;
    const gemv_problem p = gemv_problem_of(ctx, 4096, 14336, 81);
    if (p.M == 0) return;
    const index_t M = p.M, Dm = p.D, F = p.H, E = 8, k = 2;
    // The tokens' experts: the CPU's gating of uniform router logits.
    std::vector<float> logits(static_cast<std::size_t>(M * E));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(logits.data(), {M * E}), 82, -4.0f, 4.0f);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(M * k));
    std::vector<float> gate_weights(ids.size());
    tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(ids.data(), {M, k}),
                                      tinyllm::tensor_view<float, 2>(gate_weights.data(), {M, k}),
                                      tinyllm::tensor_view<const float, 2>(logits.data(), {M, E}), true);
    std::vector<bool> chosen(static_cast<std::size_t>(E), false);
    for (const std::int32_t e : ids) chosen[static_cast<std::size_t>(e)] = true;
    const auto experts_read = static_cast<index_t>(std::count(chosen.begin(), chosen.end(), true));

    const float s1 = 1.0f / std::sqrt(static_cast<float>(Dm)), s2 = 1.0f / std::sqrt(static_cast<float>(F));
    auto w1 = random_bf16(E * F * Dm, 83, -s1, s1), w3 = random_bf16(E * F * Dm, 84, -s1, s1);
    auto w2 = random_bf16(E * Dm * F, 85, -s2, s2);
    const index_t R = tinyllm::moe_max_rows(M, k, E, 1);
    auto d_ids = tc::to_device(ids);
    tc::device_buffer<std::int32_t> row_of(ids.size()), row_token(static_cast<std::size_t>(R)),
        offsets(static_cast<std::size_t>(E + 1)), counts(static_cast<std::size_t>(E));
    const tinyllm::moe_plan_view plan{row_of.view(extents<2>{M, k}), row_token.view(extents<1>{R}),
                                      offsets.view(extents<1>{E + 1}), counts.view(extents<1>{E})};
    tc::moe_dispatch_workspace plan_ws(M * k, E);
    tc::moe_plan(plan, d_ids.view(extents<2>{M, k}), {}, plan_ws);
    tc::device_buffer<T> sorted(static_cast<std::size_t>(R * Dm)), out(static_cast<std::size_t>(R * Dm)),
        hidden(static_cast<std::size_t>(R * F));
    tc::moe_gather(sorted.view(extents<2>{R, Dm}), p.x.view(extents<2>{M, Dm}), plan);
    const auto IN = tinyllm::tensor_view<const T, 2>(sorted.data(), {R, Dm});
    const auto O = out.view(extents<2>{R, Dm});
    const auto W1 = w1.view(extents<3>{E, F, Dm}), W3 = w3.view(extents<3>{E, F, Dm});
    const auto W2 = w2.view(extents<3>{E, Dm, F});
    tc::moe_experts_workspace ws;
    const tc::cublas_handle handle;
    const double bytes = static_cast<double>(experts_read * 3 * F * Dm + 2 * R * Dm) * sizeof(T);
    const std::string shape = "M=" + std::to_string(M) + ",D=" + std::to_string(Dm) + ",F=" + std::to_string(F) +
                              ",E=8,k=2,bf16";
    compare_and_time(
        ctx, shape, out, "cuBLAS per expert (plan read back)", "moe_experts_gemv/cublas",
        [&] { tc::moe_experts_swiglu(O, IN, W1, W3, W2, plan, ws, handle.get()); }, "grouped GEMVs",
        "moe_experts_gemv/grouped_gemv",
        [&] { tc::moe_experts_swiglu_gemv(O, IN, W1, W3, W2, plan, hidden.view(extents<2>{R, F})); }, bytes,
        6.0 * static_cast<double>(M * k * F * Dm));
}
