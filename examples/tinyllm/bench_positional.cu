// examples/tinyllm/bench_positional.cu — CUDA rows of `tinyllm bench rope`:
// v1 on the fly and v2 cached, bf16, on (4, T, 32, 128) (--size T, default 4096;
// 64 on the simulated GPU: a block per token, so T only sets how many blocks run).
//
// Bytes per run: every element of x read once and written once (2 * n * 2 bytes);
// the position ids and, for v2, the cos/sin rows read (B*T ids, at most
// T*D floats, shared by all heads) are not counted, as in the PyTorch baseline
// bench/baselines/rope.py. Each row first runs once on a fresh copy of the input
// and compares with the CPU reference (float math on the same bf16 inputs).
#include "registry.hpp"

#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;

TINYLLM_BENCH("rope", "RoPE in place on (4, T, 32, 128), rotate_half, theta 10000: --size T; CUDA bf16 default 4096 (simulated GPU 64), CPU float 512", 1) {
    if (!ctx.gpu_available) return;
    const long long B = 4, T = ctx.size_or(4096, 64), H = 32, D = 128;
    const long long n = B * T * H * D;
    const tinyllm::extents<4> shape{B, T, H, D};
    const tinyllm::extents<2> pshape{B, T};
    const tinyllm::rope_config cfg{.rotary_dim = D};

    std::vector<float> xf(static_cast<std::size_t>(n));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(xf.data(), {n}), 7, -1.0f, 1.0f);
    std::vector<tinyllm::bfloat16> input(xf.size());
    for (std::size_t i = 0; i < xf.size(); ++i) {
        input[i] = tinyllm::float_to_bf16(xf[i]);
        xf[i] = tinyllm::to_float(input[i]);
    }
    std::vector<std::int64_t> positions(static_cast<std::size_t>(B * T));
    for (long long i = 0; i < B * T; ++i) positions[static_cast<std::size_t>(i)] = i % T;
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(xf.data(), shape),
                             tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), pshape), cfg);

    auto d_pos = tc::to_device(positions);
    tc::device_buffer<tinyllm::bfloat16> x(static_cast<std::size_t>(n));
    const auto cache = tc::make_rope_cache(cfg, T);
    const std::string shape_name = "B=4,T=" + std::to_string(T) + ",H=32,D=128,bf16";
    const double bytes = 2.0 * static_cast<double>(n) * sizeof(tinyllm::bfloat16);
    tc::timing_options options;
    options.repeats = ctx.repeats;

    auto run = [&](const char* version, const char* key, bool baseline, auto&& work) {
        x.poison();
        tc::copy_to_device(x, input);
        work();
        const auto got = tc::to_host(x);
        double max_abs = 0;
        bool finite = true;
        for (std::size_t i = 0; i < got.size(); ++i) {
            const double g = tinyllm::to_float(got[i]);
            finite = finite && std::isfinite(g);
            max_abs = std::max(max_abs, std::fabs(g - xf[i]));
        }
        const bool agrees = finite && max_abs <= 1e-2 + 1e-2;  // |x| <= 1.42: bf16 rounding is below 2^-8 * 1.42
        std::ostringstream check;
        check << "max-abs " << max_abs << (finite ? "" : " (non-finite!)");
        // Timed runs rotate x again and again in place: rotations keep norms, so values stay in range.
        auto timing = tc::time_gpu(std::string("rope/") + key + "/" + shape_name, work, bytes, 0, options);
        ctx.rows.push_back({version, "cuda", timing, check.str(), agrees, baseline});
    };
    run("v1 on_the_fly", "v1_on_the_fly", true, [&] { tc::apply_rope_on_the_fly(x.view(shape), d_pos.view(pshape), cfg); });
    run("v2 cached", "v2_cached", false, [&] { tc::apply_rope_cached(x.view(shape), d_pos.view(pshape), cache); });
}

namespace {
// What a decode step's RoPE and cache write leave, on the host: qkv, then the
// cache row (b * capacity + position) of each of the `rows` rows in keys and in values.
template <class T>
std::vector<T> step_result(const tc::device_buffer<T>& qkv, const tc::device_buffer<T>& keys,
                           const tc::device_buffer<T>& values, long long rows, long long capacity, long long position,
                           long long width) {
    std::vector<T> all = tc::to_host(qkv);
    for (const auto* cache : {&keys, &values}) {
        const std::vector<T> c = tc::to_host(*cache);
        for (long long b = 0; b < rows; ++b) {
            const auto row = c.begin() + (b * capacity + position) * width;
            all.insert(all.end(), row, row + width);
        }
    }
    return all;
}
}  // namespace

// `tinyllm bench rope_cache`: a decode step's RoPE on q and k and its KV-cache
// write, as cuda::model runs them each layer, on the Llama-3.2-1B shape (Hq = 32,
// Hkv = 8, Dh = 64, bf16): B rows of qkv (one new token per sequence, all at
// position 1000 of a (B, 4096, Hkv, Dh) cache). Two ways:
//   rope + 2 copies    apply_rope_cached over q's and k's heads, then k and v
//                      into the caches with two cudaMemcpy2DAsync (the rows'
//                      positions are equal, so each cache is one strided copy)
//   rope_write_cache   the model's fused kernel: one launch
// At these sizes (B = 32: 0.4 MB) both are a few microseconds of launches and
// gaps, which is what the fusion removes. Bytes: q, k, v read, q and k written
// back, k and v written to the cache. The rows' results must agree bit for bit.
TINYLLM_BENCH("rope_cache", "a decode step's RoPE on q, k and KV-cache write, Llama-3.2-1B heads (32 q, 8 kv, Dh 64), bf16: --size B rows (default 32; simulated GPU 4)", 1) {
    if (!ctx.gpu_available) return;
    using T = tinyllm::bfloat16;
    const long long B = ctx.size_or(32, 4), Hq = 32, Hkv = 8, Dh = 64, capacity = ctx.simulated_default() ? 64 : 4096;
    const long long position = ctx.simulated_default() ? 10 : 1000;
    const long long width = Hkv * Dh, stride = (Hq + 2 * Hkv) * Dh;
    std::vector<float> f(static_cast<std::size_t>(B * stride));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(f.data(), {B * stride}), 11, -1.0f, 1.0f);
    std::vector<T> input(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) input[i] = tinyllm::float_to_bf16(f[i]);
    const auto d_pos = tc::to_device(std::vector<std::int64_t>(static_cast<std::size_t>(B), position));
    const std::vector<std::int32_t> start(static_cast<std::size_t>(B), static_cast<std::int32_t>(position));
    const std::vector<std::int32_t> count(static_cast<std::size_t>(B), 1);
    const auto d_start = tc::to_device(start), d_count = tc::to_device(count);
    tinyllm::rope_config cfg;
    cfg.rotary_dim = Dh;
    cfg.theta = 500000.0;
    const auto rope = tc::make_rope_cache(cfg, capacity);
    tc::device_buffer<T> qkv(input.size()), keys(static_cast<std::size_t>(B * capacity * width)),
        values(static_cast<std::size_t>(B * capacity * width));
    const tinyllm::tensor_view<T, 4> qk(qkv.data(), {B, 1, Hq + Hkv, Dh}, {stride, stride, Dh, 1});
    const tinyllm::tensor_view<const std::int64_t, 2> pos(d_pos.data(), {B, 1});
    const std::size_t pitch_src = static_cast<std::size_t>(stride) * sizeof(T),
                      pitch_dst = static_cast<std::size_t>(capacity * width) * sizeof(T),
                      row_bytes = static_cast<std::size_t>(width) * sizeof(T);
    const auto unfused = [&] {
        tc::apply_rope_cached(qk, pos, rope);
        TINYLLM_CUDA_CHECK(cudaMemcpy2DAsync(keys.data() + position * width, pitch_dst, qkv.data() + Hq * Dh, pitch_src,
                                             row_bytes, static_cast<std::size_t>(B), cudaMemcpyDeviceToDevice, nullptr));
        TINYLLM_CUDA_CHECK(cudaMemcpy2DAsync(values.data() + position * width, pitch_dst,
                                             qkv.data() + (Hq + Hkv) * Dh, pitch_src, row_bytes,
                                             static_cast<std::size_t>(B), cudaMemcpyDeviceToDevice, nullptr));
    };
    const auto fused = [&] {
        tc::detail::rope_write_cache(keys.data(), values.data(),
                                     tc::detail::contiguous_cache_rows{1, capacity, d_start.data(), d_count.data()},
                                     qkv.data(), B, stride, Hq, Hkv, Dh, d_pos.data(), &rope, nullptr);
    };
    // One run of each on fresh inputs and poisoned caches: the bits they leave.
    const auto result_of = [&](const auto& work) {
        qkv.poison();
        keys.poison();
        values.poison();
        tc::copy_to_device(qkv, input);
        work();
        return step_result(qkv, keys, values, B, capacity, position, width);
    };
    const std::vector<T> want = result_of(unfused), got = result_of(fused);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < want.size(); ++i) differ += got[i].bits != want[i].bits;
    const std::string shape = "B=" + std::to_string(B) + ",Hq=32,Hkv=8,Dh=64,bf16";
    const double bytes = static_cast<double>(B) * static_cast<double>(stride + (Hq + Hkv) * Dh + 2 * width) * sizeof(T);
    tc::timing_options options;
    options.repeats = ctx.repeats;
    // Timed runs rotate q and k again and again in place: rotations keep norms.
    const auto unfused_t = tc::time_gpu("rope_cache/rope_and_copies/" + shape, unfused, bytes, 0, options);
    ctx.rows.push_back({"rope + 2 copies", "cuda", unfused_t, "the reference", true, true});
    const auto fused_t = tc::time_gpu("rope_cache/rope_write_cache/" + shape, fused, bytes, 0, options);
    ctx.rows.push_back({"rope_write_cache", "cuda", fused_t,
                        differ == 0 ? std::string("bit-exact") : std::to_string(differ) + " values differ", differ == 0,
                        false});
}

// `tinyllm bench qkv_rope_cache`: a decode step's QKV projection, RoPE and
// KV-cache write on the Llama-3.2-1B shape (D = 2048, Hq = 32, Hkv = 8,
// Dh = 64, bf16), M rows of h (one token of M sequences at position 1000 of a
// (M, 4096, Hkv, Dh) cache; --size M, at most 8). Two ways:
//   cuBLAS + rope_write_cache   the GEMM, then RoPE v3 (rotation and cache write)
//   qkv_rope_write_cache        RoPE v4: a GEMV with the rotation and the store
//                               in its epilogue, one launch
// Bytes: Wqkv (3072 x 2048 bf16, 12.6 MB) read once dominates; x, qkv and the
// cache rows are counted too. v4 rounds q and k once where the pair rounds
// twice, so the check is a tolerance (rel-L2 <= 1e-2, a few bf16 roundings),
// not bits.
TINYLLM_BENCH("qkv_rope_cache", "a decode step's QKV projection + RoPE + KV-cache write, Llama-3.2-1B shape (D 2048, 32 q, 8 kv, Dh 64), bf16: --size M rows (default 1, at most 8; simulated GPU: D 256)", 1) {
    if (!ctx.gpu_available) return;
    using T = tinyllm::bfloat16;
    const long long M = ctx.size_or(1, 1), Hq = 32, Hkv = 8, Dh = 64;
    const long long D = ctx.simulated ? 256 : 2048, capacity = ctx.simulated ? 64 : 4096;
    const long long position = ctx.simulated ? 10 : 1000;
    if (M > tc::detail::qkv_gemv_max_rows) {
        ctx.out << "  qkv_rope_cache: --size " << M << " rows; RoPE v4 takes at most " << tc::detail::qkv_gemv_max_rows
                << " (a decode step)\n";
        return;
    }
    const long long N = (Hq + 2 * Hkv) * Dh, width = Hkv * Dh;
    const auto random_bf16 = [](long long n, std::uint64_t seed, float scale) {
        std::vector<float> f(static_cast<std::size_t>(n));
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(f.data(), {n}), seed, -scale, scale);
        std::vector<T> out(f.size());
        for (std::size_t i = 0; i < f.size(); ++i) out[i] = tinyllm::float_to_bf16(f[i]);
        return out;
    };
    const auto d_x = tc::to_device(random_bf16(M * D, 21, 1.0f));
    const auto d_w = tc::to_device(random_bf16(N * D, 22, 1.0f / std::sqrt(static_cast<float>(D))));
    const auto d_pos = tc::to_device(std::vector<std::int64_t>(static_cast<std::size_t>(M), position));
    const auto d_start = tc::to_device(std::vector<std::int32_t>(static_cast<std::size_t>(M), static_cast<std::int32_t>(position)));
    const auto d_count = tc::to_device(std::vector<std::int32_t>(static_cast<std::size_t>(M), 1));
    const tc::detail::contiguous_cache_rows rows{1, capacity, d_start.data(), d_count.data()};
    tinyllm::rope_config cfg;
    cfg.rotary_dim = Dh;
    cfg.theta = 500000.0;
    const auto rope = tc::make_rope_cache(cfg, capacity);
    tc::device_buffer<T> qkv(static_cast<std::size_t>(M * N)), keys(static_cast<std::size_t>(M * capacity * width)),
        values(static_cast<std::size_t>(M * capacity * width));
    const tc::cublas_handle handle;
    const auto unfused = [&] {
        tc::linear<T>(qkv.view(tinyllm::extents<2>{M, N}), d_x.view(tinyllm::extents<2>{M, D}),
                      d_w.view(tinyllm::extents<2>{N, D}), {}, handle);
        tc::detail::rope_write_cache(keys.data(), values.data(), rows, qkv.data(), M, N, Hq, Hkv, Dh, d_pos.data(),
                                     &rope, nullptr);
    };
    const auto fused = [&] {
        tc::detail::qkv_rope_write_cache(qkv.data(), keys.data(), values.data(), rows, d_x.data(), M, d_w.data(),
                                         nullptr, D, Hq, Hkv, Dh, d_pos.data(), &rope, nullptr);
    };
    // One run of each into poisoned outputs: qkv and the cache rows written.
    const auto result_of = [&](const auto& work) {
        qkv.poison();
        keys.poison();
        values.poison();
        work();
        return step_result(qkv, keys, values, M, capacity, position, width);
    };
    const auto floats = [](const std::vector<T>& v) {
        std::vector<float> f(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) f[i] = tinyllm::to_float(v[i]);
        return f;
    };
    const bench_agreement check = rel_l2_agreement(floats(result_of(fused)), floats(result_of(unfused)), 1e-2);
    const std::string shape = "M=" + std::to_string(M) + ",D=" + std::to_string(D) + ",Hq=32,Hkv=8,Dh=64,bf16";
    const double bytes = static_cast<double>(N * D + M * D + M * N + 2 * M * width) * sizeof(T);
    const double flops = 2.0 * static_cast<double>(M * N * D);
    tc::timing_options options;
    options.repeats = ctx.repeats;
    const auto unfused_t = tc::time_gpu("qkv_rope_cache/cublas_rope_write_cache/" + shape, unfused, bytes, flops, options);
    ctx.rows.push_back({"cuBLAS + rope_write_cache", "cuda", unfused_t, "the reference", true, true});
    const auto fused_t = tc::time_gpu("qkv_rope_cache/qkv_rope_write_cache/" + shape, fused, bytes, flops, options);
    ctx.rows.push_back({"qkv_rope_write_cache", "cuda", fused_t, check.text, check.ok, false});
}
