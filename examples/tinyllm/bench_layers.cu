// examples/tinyllm/bench_layers.cu — CUDA rows of `tinyllm bench
// rmsnorm|layernorm|residual_rmsnorm|swiglu`: (rows, 4096) bfloat16, rows =
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
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/activation.hpp>
#include <tinyllm/norm.hpp>

#include <cmath>
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
