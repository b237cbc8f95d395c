// examples/tinyllm/bench_foundation.cu — CUDA rows of `tinyllm bench random|copy`.
#include "registry.hpp"

#include <tinyllm/cuda/copy.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/random.hpp>

#include <cstring>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;

namespace {
// The defaults on the simulated GPU: small, yet past the grid caps (fill_uniform: 4096 blocks of 256
// threads, 4 values each; copy_vectorized: 8 blocks per SM), so the grid-stride loops go round, with a
// tail of 3 floats for the scalar paths. The CPU rows use the same n.
constexpr long long random_simulated_n = (1LL << 22) + 3, copy_simulated_n = (1LL << 21) + 3;

tc::timing_options options(const bench_context& ctx) {
    tc::timing_options o;
    o.repeats = ctx.repeats;
    return o;
}
}  // namespace

TINYLLM_BENCH("random", "fill_uniform: n Philox uniforms in [0, 1) (--size n, default 2^24; simulated GPU 2^22 + 3)", 1) {
    if (!ctx.gpu_available) return;
    const long long n = ctx.size_or(1LL << 24, random_simulated_n);
    tc::device_buffer<float> d(static_cast<std::size_t>(n));
    auto view = d.view(tinyllm::extents<1>{n});
    d.poison();
    auto timing = tc::time_gpu("random/cuda/n=" + std::to_string(n), [&] { tc::fill_uniform(view, 1234); }, 4.0 * n,
                               0, options(ctx));
    std::vector<float> want(static_cast<std::size_t>(n));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(want.data(), {n}), 1234);
    const auto got = tc::to_host(d);
    const bool same = std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0;
    ctx.rows.push_back({"cuda fill_uniform", "cuda", timing, same ? "bit-exact" : "bits differ", same, false});
}

TINYLLM_BENCH("copy", "copy n floats (--size n, default 2^26; simulated GPU 2^21 + 3): the bandwidth ceiling", 1) {
    if (!ctx.gpu_available) return;
    const long long n = ctx.size_or(1LL << 26, copy_simulated_n);
    const tinyllm::extents<1> shape{n};
    tc::device_buffer<float> in(static_cast<std::size_t>(n)), out(static_cast<std::size_t>(n));
    tc::fill_uniform(in.view(shape), 99);
    const auto expected = tc::to_host(in);
    const double bytes = 8.0 * n;
    auto run = [&](const char* version, const char* key, bool baseline, auto&& work) {
        out.poison();
        auto timing = tc::time_gpu(std::string("copy/") + key + "/n=" + std::to_string(n), work, bytes, 0, options(ctx));
        const bool same = tc::to_host(out) == expected;
        ctx.rows.push_back({version, "cuda", timing, same ? "exact" : "wrong values", same, baseline});
    };
    run("v1 naive", "v1_naive", true, [&] { tc::copy_naive(out.view(shape), in.view(shape)); });
    run("v2 vectorized", "v2_vectorized", false, [&] { tc::copy_vectorized(out.view(shape), in.view(shape)); });
    run("cudaMemcpyAsync", "cudaMemcpyAsync", false,
        [&] { TINYLLM_CUDA_CHECK(cudaMemcpyAsync(out.data(), in.data(), in.bytes(), cudaMemcpyDeviceToDevice)); });
}
