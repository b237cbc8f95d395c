// examples/tinyllm/bench_optimizer.cu — CUDA rows of `tinyllm bench adamw`:
// one fused AdamW step of n parameters (--size n, default 2^26; 2^16 + 3 on the
// simulated GPU), float, and bfloat16 with float master weights, beside a
// device-to-device copy of the same bytes (the ceiling of a memory-bound
// kernel). Bytes per parameter: float p, g, m, v read and p, m, v written = 28;
// bfloat16: master, m, v (float) and g (bf16) read, master, m, v and the bf16
// parameter written = 28 as well.
//
// AdamW changes its state, so each version is checked on its first step, from
// a known state, before it is timed: the first and the last 1024 parameters
// against the CPU reference (float: 1e-6 absolute + 2e-6 relative; bfloat16:
// one bfloat16 ulp of the reference's rounding, plus 1e-6).
#include "registry.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/optimizer.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/optimizer.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;

namespace {

constexpr long long default_n = 1LL << 26, simulated_n = (1LL << 16) + 3;
const tinyllm::adamw_config config{.lr = 6e-4, .beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1};

template <class U>
__global__ void convert_kernel(U* out, const float* in, index_t n) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        out[i] = tc::detail::store_as<U>(in[i]);
}

template <class U>
void convert(tc::device_buffer<U>& out, const tc::device_buffer<float>& in, index_t n) {
    tc::launch(convert_kernel<U>, 1024, 256, 0, nullptr, out.data(), in.data(), n);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The indices checked: the first and the last 1024.
std::vector<index_t> sample(index_t n) {
    std::vector<index_t> idx;
    for (index_t i = 0; i < n && i < 1024; ++i) idx.push_back(i);
    for (index_t i = n - 1024 > 1024 ? n - 1024 : 1024; i < n; ++i) idx.push_back(i);
    return idx;
}

template <class U>
std::vector<float> gather(const std::vector<U>& all, const std::vector<index_t>& idx) {
    std::vector<float> out;
    for (index_t i : idx) out.push_back(tinyllm::to_float(all[static_cast<std::size_t>(i)]));
    return out;
}

struct agreement {
    std::string text;
    bool ok;
};

agreement check(const std::vector<float>& got, const std::vector<float>& ref, double rel) {
    double max_abs = 0;
    bool ok = got.size() == ref.size();
    for (std::size_t i = 0; ok && i < got.size(); ++i) {
        const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
        if (!std::isfinite(got[i]) || err > 1e-6 + rel * std::fabs(ref[i])) ok = false;
        if (err > max_abs || !std::isfinite(err)) max_abs = err;
    }
    char text[64];
    std::snprintf(text, sizeof text, "max-abs %.2g on %zu params", max_abs, got.size());
    return {text, ok};
}

tc::timing_options options(const bench_context& ctx) {
    tc::timing_options o;
    o.repeats = ctx.repeats;
    return o;
}

}  // namespace

TINYLLM_BENCH("adamw", "one AdamW step of n parameters (--size n): CUDA float and bf16 + float master default 2^26 (simulated GPU 2^16 + 3), CPU float 2^22", 1) {
    if (!ctx.gpu_available) return;
    const index_t n = ctx.size_or(default_n, simulated_n);
    const extents<1> shape{n};
    const auto count = static_cast<std::size_t>(n);
    const std::string name = "n=" + std::to_string(n);
    tc::device_buffer<float> p0(count), g(count), p(count), m(count), v(count);
    tc::fill_normal(p0.view(shape), 1, 0.0f, 0.02f);
    tc::fill_normal(g.view(shape), 2, 0.0f, 1e-3f);
    const auto idx = sample(n);
    const auto p0_s = gather(tc::to_host(p0), idx), g_s = gather(tc::to_host(g), idx);
    const double bytes = 28.0 * static_cast<double>(n);

    // The CPU reference's first step on the sampled parameters (m = v = 0).
    std::vector<float> ref = p0_s, ref_m(idx.size(), 0.0f), ref_v(idx.size(), 0.0f);
    const auto k = static_cast<index_t>(idx.size());
    tinyllm::cpu::adamw_step({ref.data(), {k}}, {ref_m.data(), {k}}, {ref_v.data(), {k}}, {g_s.data(), {k}}, config, 1);

    const auto reset = [&] {
        TINYLLM_CUDA_CHECK(cudaMemcpy(p.data(), p0.data(), p.bytes(), cudaMemcpyDeviceToDevice));
        TINYLLM_CUDA_CHECK(cudaMemset(m.data(), 0, m.bytes()));
        TINYLLM_CUDA_CHECK(cudaMemset(v.data(), 0, v.bytes()));
    };

    {  // v1 fused, float
        reset();
        std::int64_t step = 1;
        tc::adamw_step(p.view(shape), m.view(shape), v.view(shape), g.view(shape), config, step);
        const auto a = check(gather(tc::to_host(p), idx), ref, 2e-6);
        auto timing = tc::time_gpu(
            "adamw/v1_fused_f32/" + name,
            [&] { tc::adamw_step(p.view(shape), m.view(shape), v.view(shape), g.view(shape), config, ++step); },
            bytes, 0, options(ctx));
        ctx.rows.push_back({"v1 fused f32", "cuda", timing, a.text, a.ok, true});
    }
    {  // v1 fused, bfloat16 parameters and gradients with float master weights
        reset();
        tc::device_buffer<bfloat16> pb(count), gb(count);
        convert(pb, p0, n);
        convert(gb, g, n);
        // The reference for bfloat16: the step on the bfloat16 gradients, rounded.
        const auto gb_s = gather(tc::to_host(gb), idx);
        std::vector<float> refb = p0_s, mb(idx.size(), 0.0f), vb(idx.size(), 0.0f);
        tinyllm::cpu::adamw_step({refb.data(), {k}}, {mb.data(), {k}}, {vb.data(), {k}}, {gb_s.data(), {k}}, config, 1);
        for (auto& x : refb) x = tinyllm::to_float(tinyllm::from_float<bfloat16>(x));
        std::int64_t step = 1;
        tc::adamw_step<bfloat16>(pb.view(shape), p.view(shape), m.view(shape), v.view(shape), gb.view(shape), config,
                                 step);
        const auto a = check(gather(tc::to_host(pb), idx), refb, 1.0 / 128);
        auto timing = tc::time_gpu(
            "adamw/v1_fused_bf16_master/" + name,
            [&] {
                tc::adamw_step<bfloat16>(pb.view(shape), p.view(shape), m.view(shape), v.view(shape), gb.view(shape),
                                         config, ++step);
            },
            bytes, 0, options(ctx));
        ctx.rows.push_back({"v1 fused bf16+f32 master", "cuda", timing, a.text, a.ok, false});
    }
    {  // the ceiling: a copy of the same bytes (half read, half written)
        const auto half = static_cast<std::size_t>(bytes / 2);
        tc::device_buffer<unsigned char> a(half), b(half);
        TINYLLM_CUDA_CHECK(cudaMemset(a.data(), 1, half));
        auto timing = tc::time_gpu(
            "adamw/cudaMemcpy_same_bytes/" + name,
            [&] { TINYLLM_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), half, cudaMemcpyDeviceToDevice)); }, bytes, 0,
            options(ctx));
        ctx.rows.push_back({"memcpy (same bytes)", "cuda", timing, "reference", true, false});
    }
}
