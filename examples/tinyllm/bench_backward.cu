// examples/tinyllm/bench_backward.cu — CUDA rows of `tinyllm bench
// cross_entropy|rmsnorm_backward|layernorm_backward|swiglu_backward|linear_backward|embedding_backward`:
// the training kernels, each beside its forward (or the loss alone) and, for the
// memory-bound ones, a device-to-device copy of the same bytes (the ceiling).
// bench/baselines/backward.py times PyTorch's autograd on the same shapes.
//
//   cross_entropy       (rows, V) float logits, V = 50257 (GPT-2) and 128256 (Llama 3),
//                       rows = --size or 8192 (4 on the simulated GPU): v1 online loss +
//                       gradient, then the loss alone. GB/s: the logits read once (and the
//                       gradient written once); the second read comes from L2.
//   rmsnorm_backward,   (rows, 4096) bfloat16, rows = --size or 16384 (64 on the simulated
//   layernorm_backward  GPU), as the forward rows: dx and dweight (and dbias), then the v2
//                       forward. GB/s: dout and x read, dx written (the (D) vectors too).
//   swiglu_backward     the same shapes: dgate and dup from dout, gate, up (5 tensors), then
//                       the v2 forward (3 tensors).
//   linear_backward     GPT-2's c_fc: x (rows, 768), weight (3072, 768), bias; rows = --size
//                       or 8192 ((128, 64) x (256, 64) on the simulated GPU); dx, dweight and
//                       dbias by cuBLAS (two GEMMs, 4 rows N K FLOPs) then the forward
//                       (2 rows N K), float and bfloat16. TFLOP/s.
//   embedding_backward  ids (8, T) into (50257, 768), T = --size or 1024 (T = 16 into
//                       (4099, 768) on the simulated GPU: still two radix passes): the
//                       sort-based deterministic scatter-add, float and bfloat16, then the
//                       v2 forward lookup. GB/s: dout read once, the whole table written once.
//
// Each version's first run (outputs poisoned with NaN first) is checked against
// the CPU reference before it is timed: cross_entropy on the first and last 32
// rows (gradient and per-row losses), the norms on every element (dweight sums
// every row), swiglu on the first and last 32 rows, linear on 64 rows of dx and
// 16 rows of dweight and dbias, embedding bit for bit. The forward rows are
// there for scale; they are checked by their own components (`tinyllm bench
// rmsnorm|layernorm|swiglu|embedding`), except linear's, checked here.
#include "registry.hpp"

#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/loss.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/activation.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::token_id;

namespace {

constexpr float eps = 1e-5f;

template <class U>
__global__ void convert_kernel(U* out, const float* in, index_t n) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        out[i] = tc::detail::store_as<U>(in[i]);
}

// n uniform values in [lo, hi) of type U, made on the device.
template <class U>
tc::device_buffer<U> random_device(index_t n, std::uint64_t seed, float lo, float hi) {
    tc::device_buffer<float> f(static_cast<std::size_t>(n));
    tc::fill_uniform(f.view(extents<1>{n}), seed, lo, hi);
    if constexpr (std::is_same_v<U, float>) {
        return f;
    } else {
        tc::device_buffer<U> out(static_cast<std::size_t>(n));
        tc::launch(convert_kernel<U>, 1024, 256, 0, nullptr, out.data(), f.data(), n);
        TINYLLM_CUDA_CHECK_LAUNCH();
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        return out;
    }
}

template <class U>
std::vector<float> as_floats(const std::vector<U>& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = tinyllm::to_float(v[i]);
    return out;
}

// The whole buffer on the host, as floats.
template <class U>
std::vector<float> host_floats(const tc::device_buffer<U>& b) {
    return as_floats(tc::to_host(b));
}

// The first and the last 32 rows (all rows when there are at most 64).
std::vector<index_t> sample_rows(index_t rows) {
    std::vector<index_t> idx;
    for (index_t r = 0; r < rows; ++r)
        if (r < 32 || r >= rows - 32) idx.push_back(r);
    return idx;
}

// Rows idx of a (rows, cols) device matrix, as floats: (idx.size(), cols).
template <class U>
std::vector<float> host_rows(const tc::device_buffer<U>& b, index_t cols, const std::vector<index_t>& idx) {
    std::vector<U> h(idx.size() * static_cast<std::size_t>(cols));
    for (std::size_t i = 0; i < idx.size(); ++i)
        TINYLLM_CUDA_CHECK(cudaMemcpy(h.data() + i * static_cast<std::size_t>(cols), b.data() + idx[i] * cols,
                                      static_cast<std::size_t>(cols) * sizeof(U), cudaMemcpyDeviceToHost));
    return as_floats(h);
}

// got against ref, element by element: |got - ref| <= atol + rtol |ref|, finite.
struct agreement {
    double max_abs = 0;
    bool ok = true;
    std::string note;  // replaces the max-abs text when set
    void add(const std::vector<float>& got, const std::vector<float>& ref, double atol, double rtol,
             double scale = 1.0) {
        if (got.size() != ref.size()) ok = false;
        for (std::size_t i = 0; i < got.size() && i < ref.size(); ++i) {
            const double g = static_cast<double>(got[i]) * scale;
            const double err = std::fabs(g - ref[i]);
            if (!std::isfinite(g) || err > atol + rtol * std::fabs(ref[i])) ok = false;
            if (!(err <= max_abs)) max_abs = std::isfinite(err) ? err : INFINITY;
        }
    }
    void add_value(double got, double ref, double rtol) {  // one value, compared in double
        const double err = std::fabs(got - ref);
        if (!std::isfinite(got) || err > rtol * std::fabs(ref)) ok = false;
        if (!(err <= max_abs)) max_abs = std::isfinite(err) ? err : INFINITY;
    }
    std::string text(const std::string& what) const {
        if (!note.empty()) return note;
        char t[96];
        std::snprintf(t, sizeof t, "max-abs %.2g %s", max_abs, what.c_str());
        return t;
    }
};

double peak(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::fmax(m, std::fabs(static_cast<double>(x)));
    return m;
}

tc::timing_options options(const bench_context& ctx) {
    tc::timing_options o;
    o.repeats = ctx.repeats;
    return o;
}

// Check (after one run of `work` into poisoned outputs), then time, then add the row.
void add_row(bench_context& ctx, const std::string& version, const std::string& name, bool baseline, double bytes,
             double flops, const std::function<void()>& poison, const std::function<void()>& work,
             const std::function<agreement()>& check, const std::string& what) {
    poison();
    work();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const agreement a = check();
    auto timing = tc::time_gpu(name, work, bytes, flops, options(ctx));
    ctx.rows.push_back({version, "cuda", timing, a.text(what), a.ok, baseline});
}

// A forward row, for scale (checked by its own component).
void add_forward_row(bench_context& ctx, const std::string& version, const std::string& name, double bytes,
                     double flops, const std::function<void()>& work, const std::string& checked_by) {
    auto timing = tc::time_gpu(name, work, bytes, flops, options(ctx));
    ctx.rows.push_back({version, "cuda", timing, "forward (checked by `tinyllm bench " + checked_by + "`)", true, false});
}

// A device-to-device copy moving `bytes` in total (bytes / 2 read, bytes / 2 written).
void add_copy_row(bench_context& ctx, const std::string& version, const std::string& name, double bytes) {
    const auto n = static_cast<std::size_t>(bytes / 2);
    tc::device_buffer<unsigned char> a(n), b(n);
    TINYLLM_CUDA_CHECK(cudaMemset(a.data(), 1, n));
    auto timing = tc::time_gpu(
        name, [&] { TINYLLM_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), n, cudaMemcpyDeviceToDevice)); }, bytes, 0,
        options(ctx));
    ctx.rows.push_back({version, "cuda", timing, "reference", true, false});
}

// ---- cross_entropy ------------------------------------------------------------------------

void cross_entropy_rows(bench_context& ctx, index_t rows, index_t V, bool first) {
    const auto n = static_cast<std::size_t>(rows * V);
    auto logits = random_device<float>(rows * V, 50 + static_cast<std::uint64_t>(V), -4.0f, 4.0f);
    tc::device_buffer<float> dlogits(n), losses(static_cast<std::size_t>(rows));
    std::vector<token_id> targets(static_cast<std::size_t>(rows));
    for (std::size_t r = 0; r < targets.size(); ++r) targets[r] = static_cast<token_id>((r * 7919 + 13) % V);
    const auto d_targets = tc::to_device(targets);

    // The CPU reference on the sample rows, summed: unscaled gradients, the sum of their losses.
    const auto idx = sample_rows(rows);
    const auto k = static_cast<index_t>(idx.size());
    const auto ls = host_rows(logits, V, idx);
    std::vector<token_id> ts;
    for (index_t r : idx) ts.push_back(targets[static_cast<std::size_t>(r)]);
    std::vector<float> ref_grad(ls.size());
    tinyllm::cross_entropy_options sum;
    sum.reduction = tinyllm::loss_reduction::sum;
    const double ref_loss = tinyllm::cpu::cross_entropy({ref_grad.data(), {k, V}}, {ls.data(), {k, V}},
                                                        {ts.data(), {k}}, sum);

    const auto L = logits.view(extents<2>{rows, V});
    const auto DL = dlogits.view(extents<2>{rows, V});
    const auto LO = losses.view(extents<1>{rows});
    const tinyllm::tensor_view<const token_id, 1> TG(d_targets.data(), {rows});
    const auto losses_agree = [&](agreement& a) {  // the sample rows' losses, summed, against the CPU's
        const auto all = tc::to_host(losses);
        double got = 0;
        for (index_t r : idx) got += all[static_cast<std::size_t>(r)];
        a.add_value(got, ref_loss, 1e-5);
    };
    const std::string shape = "rows=" + std::to_string(rows) + ",V=" + std::to_string(V) + ",f32";
    const std::string v = " V=" + std::to_string(V);
    const double bytes = 4.0 * static_cast<double>(n);
    add_row(
        ctx, "v1 loss+grad" + v, "cross_entropy/v1_online_loss_grad/" + shape, first, 2 * bytes, 0,
        [&] { dlogits.poison(), losses.poison(); },
        [&] { (void)tc::cross_entropy<float>(DL, LO, L, TG); },
        [&] {
            agreement a;
            // The mean's gradient is the sum's / rows.
            a.add(host_rows(dlogits, V, idx), ref_grad, 1e-6, 1e-5, static_cast<double>(rows));
            losses_agree(a);
            return a;
        },
        "on " + std::to_string(k) + " rows");
    add_row(
        ctx, "v1 loss only" + v, "cross_entropy/v1_online_loss_only/" + shape, false, bytes, 0,
        [&] { losses.poison(); }, [&] { (void)tc::cross_entropy<float>(tinyllm::tensor_view<float, 2>{}, LO, L, TG); },
        [&] {
            agreement a;
            losses_agree(a);
            return a;
        },
        "on the loss of " + std::to_string(k) + " rows");
    add_copy_row(ctx, "memcpy (same bytes)" + v, "cross_entropy/cudaMemcpy_same_bytes/" + shape, 2 * bytes);
}

// ---- norms and swiglu: (rows, 4096) bfloat16 ------------------------------------------------

using T16 = bfloat16;
constexpr index_t D = 4096;

index_t layer_rows(const bench_context& ctx) { return ctx.size_or(16384, 64); }
std::string layer_shape(index_t rows) { return std::to_string(rows) + "x" + std::to_string(D) + "_bf16"; }

template <bool Layer>
void norm_backward_rows(bench_context& ctx, const std::string& component, const std::string& forward) {
    const index_t rows = layer_rows(ctx), n = rows * D;
    auto x = random_device<T16>(n, Layer ? 71 : 61, -2, 2), dout = random_device<T16>(n, Layer ? 72 : 62, -1, 1);
    auto w = random_device<T16>(D, Layer ? 73 : 63, 0.5f, 1.5f), b = random_device<T16>(D, 74, -1, 1);
    tc::device_buffer<T16> dx(static_cast<std::size_t>(n)), dw(static_cast<std::size_t>(D)),
        db(static_cast<std::size_t>(D)), out(static_cast<std::size_t>(n));

    // The CPU reference on every row (dweight and dbias are sums over all of them), from the rounded inputs.
    const auto xh = host_floats(x), gh = host_floats(dout), wh = host_floats(w);
    std::vector<float> rdx(xh.size()), rdw(static_cast<std::size_t>(D)), rdb(rdw.size());
    const tinyllm::tensor_view<const float, 2> hx(xh.data(), {rows, D}), hg(gh.data(), {rows, D});
    const tinyllm::tensor_view<const float, 1> hw(wh.data(), {D});
    if constexpr (Layer)
        tinyllm::cpu::layer_norm_backward({rdx.data(), {rows, D}}, {rdw.data(), {D}}, {rdb.data(), {D}}, hg, hx, hw, eps);
    else
        tinyllm::cpu::rms_norm_backward({rdx.data(), {rows, D}}, {rdw.data(), {D}}, hg, hx, hw, eps);

    const auto X = x.view(extents<2>{rows, D});
    const auto G = dout.view(extents<2>{rows, D});
    const auto W = w.view(extents<1>{D});
    const auto DX = dx.view(extents<2>{rows, D});
    const auto DW = dw.view(extents<1>{D});
    const auto DB = db.view(extents<1>{D});
    const double vectors = Layer ? 3 : 2;  // weight read, dweight (and dbias) written
    const double bytes = (3.0 * n + vectors * D) * sizeof(T16);
    add_row(
        ctx, "v1 block per row", component + "/v1_block_per_row/" + layer_shape(rows), true, bytes, 0,
        [&] { dx.poison(), dw.poison(), db.poison(); },
        [&] {
            if constexpr (Layer) tc::layer_norm_backward<T16>(DX, DW, DB, G, X, W, eps);
            else tc::rms_norm_backward<T16>(DX, DW, G, X, W, eps);
        },
        [&] {
            agreement a;  // bfloat16 outputs: 1e-2 absolute + 1e-2 relative, as the forward rows
            a.add(host_floats(dx), rdx, 1e-2, 1e-2);
            a.add(host_floats(dw), rdw, 1e-2, 1e-2);
            if constexpr (Layer) a.add(host_floats(db), rdb, 1e-2, 1e-2);
            return a;
        },
        Layer ? "(dx, dw, db)" : "(dx, dw)");
    const auto O = out.view(extents<2>{rows, D});
    const auto B = b.view(extents<1>{D});
    add_forward_row(
        ctx, "forward v2 vectorized", component + "/forward_v2_vectorized/" + layer_shape(rows),
        (2.0 * n + (Layer ? 2 : 1) * D) * sizeof(T16),
        0,
        [&] {
            if constexpr (Layer) tc::layer_norm_vectorized<T16>(O, X, W, B, eps);
            else tc::rms_norm_vectorized<T16>(O, X, W, eps);
        },
        forward);
    add_copy_row(ctx, "memcpy (same bytes)", component + "/cudaMemcpy_same_bytes/" + layer_shape(rows), bytes);
}

// ---- linear: GPT-2's c_fc ---------------------------------------------------------------------

template <class T>
void linear_rows(bench_context& ctx, index_t rows, index_t K, index_t N, const tc::cublas_handle& handle) {
    constexpr bool f32 = std::is_same_v<T, float>;
    const std::string dt = f32 ? "f32" : "bf16";
    const std::uint64_t s = f32 ? 80 : 90;
    auto x = random_device<T>(rows * K, s + 1, -1, 1), w = random_device<T>(N * K, s + 2, -0.1f, 0.1f);
    auto bias = random_device<T>(N, s + 3, -0.1f, 0.1f), dout = random_device<T>(rows * N, s + 4, -1, 1);
    tc::device_buffer<T> dx(static_cast<std::size_t>(rows * K)), dw(static_cast<std::size_t>(N * K)),
        db(static_cast<std::size_t>(N)), out(static_cast<std::size_t>(rows * N));

    // The CPU reference (double inside) on 64 rows of dx and of out, and 16 rows of dweight and dbias
    // (output features: the first and the last 8; each sums over every row).
    const auto xh = host_floats(x), wh = host_floats(w), bh = host_floats(bias), gh = host_floats(dout);
    const auto idx = sample_rows(rows);
    const auto k = static_cast<index_t>(idx.size());
    std::vector<index_t> feats;
    for (index_t j = 0; j < N; ++j)
        if (j < 8 || j >= N - 8) feats.push_back(j);
    const auto f = static_cast<index_t>(feats.size());
    std::vector<float> xs, gs, gf(static_cast<std::size_t>(rows * f)), wf;
    for (index_t r : idx) {
        xs.insert(xs.end(), xh.begin() + r * K, xh.begin() + (r + 1) * K);
        gs.insert(gs.end(), gh.begin() + r * N, gh.begin() + (r + 1) * N);
    }
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < f; ++j) gf[static_cast<std::size_t>(r * f + j)] = gh[static_cast<std::size_t>(r * N + feats[static_cast<std::size_t>(j)])];
    for (index_t j : feats) wf.insert(wf.end(), wh.begin() + j * K, wh.begin() + (j + 1) * K);
    std::vector<float> ref_dx(static_cast<std::size_t>(k * K)), ref_dw(static_cast<std::size_t>(f * K)),
        ref_db(static_cast<std::size_t>(f)), ref_out(static_cast<std::size_t>(k * N));
    tinyllm::cpu::linear_backward({ref_dx.data(), {k, K}}, {}, {}, {gs.data(), {k, N}}, {xs.data(), {k, K}},
                                  {wh.data(), {N, K}});
    tinyllm::cpu::linear_backward({}, {ref_dw.data(), {f, K}}, {ref_db.data(), {f}}, {gf.data(), {rows, f}},
                                  {xh.data(), {rows, K}}, {wf.data(), {f, K}});
    tinyllm::cpu::linear({ref_out.data(), {k, N}}, {xs.data(), {k, K}}, {wh.data(), {N, K}}, {bh.data(), {N}});

    // Tolerance relative to each tensor's largest value: float 1e-4, bfloat16 1e-2.
    const double rtol = f32 ? 1e-4 : 1e-2;
    const auto X = x.view(extents<2>{rows, K});
    const auto W = w.view(extents<2>{N, K});
    const auto G = dout.view(extents<2>{rows, N});
    const auto DX = dx.view(extents<2>{rows, K});
    const auto DW = dw.view(extents<2>{N, K});
    const auto DB = db.view(extents<1>{N});
    const std::string shape = std::to_string(rows) + "x" + std::to_string(K) + "_x_" + std::to_string(N) + "x" +
                              std::to_string(K) + "_" + dt;
    const double gemm = 2.0 * static_cast<double>(rows) * static_cast<double>(N) * static_cast<double>(K);
    add_row(
        ctx, "v1 cuBLAS dX+dW+db " + dt, "linear_backward/v1_cublas_dx_dw_db/" + shape, f32, 0, 2 * gemm,
        [&] { dx.poison(), dw.poison(), db.poison(); },
        [&] { tc::linear_backward<T>(DX, DW, DB, G, X, W, handle); },
        [&] {
            agreement a;
            a.add(host_rows(dx, K, idx), ref_dx, rtol * peak(ref_dx), 0);
            a.add(host_rows(dw, K, feats), ref_dw, rtol * peak(ref_dw), 0);
            std::vector<float> got_db;
            const auto all_db = host_floats(db);
            for (index_t j : feats) got_db.push_back(all_db[static_cast<std::size_t>(j)]);
            a.add(got_db, ref_db, rtol * peak(ref_db), 0);
            return a;
        },
        "(" + std::to_string(k) + " rows of dx, " + std::to_string(f) + " of dw, db)");
    const auto O = out.view(extents<2>{rows, N});
    const auto BI = bias.view(extents<1>{N});
    add_row(
        ctx, "forward cuBLAS " + dt, "linear_backward/forward_cublas/" + shape, false, 0, gemm, [&] { out.poison(); },
        [&] { tc::linear<T>(O, X, W, BI, handle); },
        [&] {
            agreement a;
            a.add(host_rows(out, N, idx), ref_out, rtol * peak(ref_out), 0);
            return a;
        },
        "forward, on " + std::to_string(k) + " rows");
}

// ---- embedding: ids (8, T) into (V, 768) ---------------------------------------------------------

template <class T>
void embedding_backward_rows(bench_context& ctx, index_t Tn, index_t V, bool first) {
    constexpr index_t B = 8, Dm = 768;
    constexpr bool f32 = std::is_same_v<T, float>;
    const std::string dt = f32 ? "f32" : "bf16";
    std::vector<float> f(static_cast<std::size_t>(B * Tn * Dm));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(f.data(), {B * Tn * Dm}), f32 ? 5 : 6, -1.0f, 1.0f);
    std::vector<T> dout(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) dout[i] = tinyllm::from_float<T>(f[i]);
    f = {};
    std::vector<token_id> ids(static_cast<std::size_t>(B * Tn));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<token_id>((i * 7919 + 13) % V);
    std::vector<T> want(static_cast<std::size_t>(V * Dm));
    tinyllm::cpu::embedding_backward<T, token_id>(tinyllm::tensor_view<T, 2>(want.data(), {V, Dm}),
                                                  tinyllm::tensor_view<const token_id, 2>(ids.data(), {B, Tn}),
                                                  tinyllm::tensor_view<const T, 3>(dout.data(), {B, Tn, Dm}));

    const auto d_dout = tc::to_device(dout);
    const auto d_ids = tc::to_device(ids);
    tc::device_buffer<T> dtable(want.size()), out(dout.size());
    tc::embedding_backward_workspace ws(B * Tn, V);
    const auto DT = dtable.view(extents<2>{V, Dm});
    const tinyllm::tensor_view<const token_id, 2> I(d_ids.data(), {B, Tn});
    const tinyllm::tensor_view<const T, 3> G(d_dout.data(), {B, Tn, Dm});
    const std::string shape = "B=8,T=" + std::to_string(Tn) + ",V=" + std::to_string(V) + ",D=768," + dt;
    const double bytes = static_cast<double>(B * Tn * Dm + V * Dm) * sizeof(T);
    bool checked = false;  // the checked run validates the ids; the timed runs skip that wait
    add_row(
        ctx, "v1 sort + row sums " + dt, "embedding_backward/v1_sort_row_sums/" + shape, first, bytes, 0,
        [&] { dtable.poison(); },
        [&] { tc::embedding_backward<T, token_id>(DT, I, G, 1.0f, false, ws, !checked); },
        [&] {
            checked = true;
            const auto got = tc::to_host(dtable);
            std::size_t wrong = 0;
            for (std::size_t i = 0; i < got.size(); ++i) wrong += std::memcmp(&got[i], &want[i], sizeof(T)) != 0;
            agreement a;
            a.ok = wrong == 0;
            a.note = wrong == 0 ? "bit-exact" : std::to_string(wrong) + " elements differ";
            return a;
        },
        "");
    if constexpr (f32) {
        const auto O = out.view(extents<3>{B, Tn, Dm});
        const tinyllm::tensor_view<const T, 2> table(dtable.data(), {V, Dm});
        add_forward_row(
            ctx, "forward v2 vectorized " + dt, "embedding_backward/forward_v2_vectorized/" + shape,
            2.0 * static_cast<double>(B * Tn * Dm) * sizeof(T), 0,
            [&] { tc::embedding<T, token_id>(O, I, table, 1.0f, tc::embedding_version::vectorized, false); },
            "embedding");
    }
}

}  // namespace

TINYLLM_BENCH("cross_entropy", "fused softmax cross-entropy loss + dlogits of (rows, V) float logits, V = 50257 and 128256: --size rows; CUDA default 8192 (simulated GPU 4), CPU 32", 1) {
    if (!ctx.gpu_available) return;
    const index_t rows = ctx.size_or(8192, 4);
    cross_entropy_rows(ctx, rows, 50257, true);
    cross_entropy_rows(ctx, rows, 128256, false);
}

TINYLLM_BENCH("rmsnorm_backward", "RMSNorm backward (dx, dweight) of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    norm_backward_rows<false>(ctx, "rmsnorm_backward", "rmsnorm");
}

TINYLLM_BENCH("layernorm_backward", "LayerNorm backward (dx, dweight, dbias) of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    norm_backward_rows<true>(ctx, "layernorm_backward", "layernorm");
}

TINYLLM_BENCH("swiglu_backward", "backward of silu(gate) * up (dgate, dup) of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    const index_t rows = layer_rows(ctx), n = rows * D;
    auto g = random_device<T16>(n, 41, -4, 4), u = random_device<T16>(n, 42, -2, 2), dout = random_device<T16>(n, 43, -1, 1);
    tc::device_buffer<T16> dg(static_cast<std::size_t>(n)), du(static_cast<std::size_t>(n)), out(static_cast<std::size_t>(n));
    const auto idx = sample_rows(rows);
    const auto k = static_cast<index_t>(idx.size());
    const auto gs = host_rows(g, D, idx), us = host_rows(u, D, idx), ds = host_rows(dout, D, idx);
    std::vector<float> rdg(gs.size()), rdu(gs.size());
    tinyllm::cpu::swiglu_backward({rdg.data(), {k, D}}, {rdu.data(), {k, D}}, {ds.data(), {k, D}}, {gs.data(), {k, D}},
                                  {us.data(), {k, D}});
    const auto G = g.view(extents<2>{rows, D});
    const auto U = u.view(extents<2>{rows, D});
    const auto DY = dout.view(extents<2>{rows, D});
    const auto DG = dg.view(extents<2>{rows, D});
    const auto DU = du.view(extents<2>{rows, D});
    const auto O = out.view(extents<2>{rows, D});
    const double bytes = 5.0 * n * sizeof(T16);
    add_row(
        ctx, "v1 fused", "swiglu_backward/v1_fused/" + layer_shape(rows), true, bytes, 0,
        [&] { dg.poison(), du.poison(); }, [&] { tc::swiglu_backward<T16>(DG, DU, DY, G, U); },
        [&] {
            agreement a;
            a.add(host_rows(dg, D, idx), rdg, 1e-2, 1e-2);
            a.add(host_rows(du, D, idx), rdu, 1e-2, 1e-2);
            return a;
        },
        "on " + std::to_string(k) + " rows");
    add_forward_row(ctx, "forward v2 fused vectorized", "swiglu_backward/forward_v2_fused_vectorized/" + layer_shape(rows),
                    3.0 * n * sizeof(T16), 0, [&] { tc::swiglu<T16>(O, G, U); }, "swiglu");
    add_copy_row(ctx, "memcpy (same bytes)", "swiglu_backward/cudaMemcpy_same_bytes/" + layer_shape(rows), bytes);
}

TINYLLM_BENCH("linear_backward", "linear backward (dx, dweight, dbias; cuBLAS) of GPT-2's c_fc, x (rows, 768), weight (3072, 768), float and bf16: --size rows; CUDA default 8192 (simulated GPU: (128, 64) x (256, 64)), CPU float 16", 1) {
    if (!ctx.gpu_available) return;
    const bool small = ctx.simulated_default();
    const index_t rows = ctx.size_or(8192, 128), K = small ? 64 : 768, N = small ? 256 : 3072;
    const tc::cublas_handle handle;
    linear_rows<float>(ctx, rows, K, N, handle);
    linear_rows<bfloat16>(ctx, rows, K, N, handle);
}

TINYLLM_BENCH("embedding_backward", "embedding backward (deterministic sort-based scatter-add) of ids (8, T) into (50257, 768), float and bf16: --size T; CUDA default 1024 (simulated GPU: T = 16 into (4099, 768)), CPU float 1024", 1) {
    if (!ctx.gpu_available) return;
    const index_t Tn = ctx.size_or(1024, 16), V = ctx.simulated_default() ? 4099 : 50257;
    embedding_backward_rows<float>(ctx, Tn, V, true);
    embedding_backward_rows<bfloat16>(ctx, Tn, V, false);
}
