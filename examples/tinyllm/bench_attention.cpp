// examples/tinyllm/bench_attention.cpp — CPU rows of `tinyllm bench attention`,
// `tinyllm bench attention_decode` and `tinyllm bench attention_backward`: the CPU reference (float64 math) on
// small shapes, to show what the GPU rows are compared with, and the tiled CPU
// version (cpu::attention_tiled / attention_backward_tiled: float, key blocks,
// OpenMP threads when built with OpenMP) on the same inputs, checked against
// the reference. (Google Benchmark sweeps over T: bench/cpu/bench_attention.cpp.)
#include "registry.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/attention_tiled.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

// FLOPs of attention: 4 * B * H * Tq * Tk * D, halved for causal.
double attention_flops(index_t B, index_t H, index_t Tq, index_t Tk, index_t D, bool causal) {
    const double f = 4.0 * static_cast<double>(B * H) * static_cast<double>(Tq) * static_cast<double>(Tk) * static_cast<double>(D);
    return causal ? f / 2 : f;
}

tinyllm::tensor<float, 4> random_tensor(tinyllm::extents<4> shape, std::uint64_t seed) {
    tinyllm::tensor<float, 4> t(shape);
    tinyllm::cpu::fill_uniform(t.view(), seed, -1.0f, 1.0f);
    return t;
}

// The largest |a - b| over two equally long float arrays (NaN counts as infinite).
double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double e = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
        worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
    return worst;
}

// A bench row for a tiled CPU version checked against the reference's output(s).
bench_row tiled_row(tinyllm::timing_result timing, double max_abs, double tolerance) {
    char check[64];
    std::snprintf(check, sizeof check, "max-abs %.1e", max_abs);
    return {"cpu tiled", "cpu", std::move(timing), check, max_abs <= tolerance, false};
}

}  // namespace

TINYLLM_BENCH("attention", "causal attention, 16k tokens of a 2048-wide model (v1/v2 at 2048 tokens; simulated GPU: T = 256 and 520, 2-4 heads)", 0) {
    // --size T sets the CPU sequence length (default 256).
    const index_t B = 1, T = ctx.size > 0 ? ctx.size : 256, H = 12, D = 64;
    const auto q = random_tensor({B, T, H, D}, 1), k = random_tensor({B, T, H, D}, 2), v = random_tensor({B, T, H, D}, 3);
    tinyllm::tensor<float, 4> out({B, T, H, D});
    tinyllm::attention_options opts;
    opts.causal = true;
    const std::string name = "attention/cpu_reference/B=1,T=" + std::to_string(T) + ",H=12,D=64,causal,float";
    auto timing = tinyllm::time_cpu(
        name, [&] { tinyllm::cpu::attention<float>(out.view(), q.view(), k.view(), v.view(), opts); }, 0,
        attention_flops(B, H, T, T, D, true), 1, ctx.repeats < 3 ? ctx.repeats : 3);
    ctx.rows.push_back({"cpu reference", "cpu", timing, "reference", true, false});

    tinyllm::tensor<float, 4> tiled({B, T, H, D});
    auto tiled_timing = tinyllm::time_cpu(
        "attention/cpu_tiled/B=1,T=" + std::to_string(T) + ",H=12,D=64,causal,float",
        [&] { tinyllm::cpu::attention_tiled<float>(tiled.view(), q.view(), k.view(), v.view(), opts); }, 0,
        attention_flops(B, H, T, T, D, true), 1, ctx.repeats < 5 ? ctx.repeats : 5);
    ctx.rows.push_back(tiled_row(std::move(tiled_timing), max_abs_difference(tiled.values(), out.values()), 1e-4));
}

TINYLLM_BENCH("attention_decode", "one new token per sequence, B=8, L=32768 cached, H=32, D=128, bf16, then GQA with H/4 and H/8 KV heads (simulated GPU: B=2, L=1000, H=4, and H=8 for H/8)", 0) {
    // The CPU reference decodes one sequence against a 4096-position cache.
    const index_t B = 1, L = 4096, H = 32, D = 128;
    const auto q = random_tensor({B, 1, H, D}, 4), k = random_tensor({B, L, H, D}, 5), v = random_tensor({B, L, H, D}, 6);
    tinyllm::tensor<float, 4> out({B, 1, H, D});
    const double bytes = 2.0 * static_cast<double>(B * L * H * D) * sizeof(float);
    auto timing = tinyllm::time_cpu(
        "attention_decode/cpu_reference/B=1,L=4096,H=32,D=128,float",
        [&] { tinyllm::cpu::attention<float>(out.view(), q.view(), k.view(), v.view()); }, bytes,
        attention_flops(B, H, 1, L, D, false), 1, ctx.repeats < 3 ? ctx.repeats : 3);
    ctx.rows.push_back({"cpu reference", "cpu", timing, "reference", true, false});

    // The tiled decode path: the same keys in a kv_cache, split into chunks of 512 across the threads.
    tinyllm::kv_cache<float> cache(B, L, H, D);
    cache.append(k.view(), v.view());
    tinyllm::tensor<float, 4> tiled({B, 1, H, D});
    auto tiled_timing = tinyllm::time_cpu(
        "attention_decode/cpu_tiled/B=1,L=4096,H=32,D=128,float",
        [&] { tinyllm::cpu::attention_tiled<float>(tiled.view(), q.view(), cache); }, bytes,
        attention_flops(B, H, 1, L, D, false), 1, ctx.repeats < 5 ? ctx.repeats : 5);
    ctx.rows.push_back(tiled_row(std::move(tiled_timing), max_abs_difference(tiled.values(), out.values()), 1e-4));
}

TINYLLM_BENCH("attention_backward", "dQ, dK, dV of causal attention, B=1, T=2048, H=16, D=128, float and bf16 (v2, v3 also at B=8; simulated GPU: T = 200, 2 heads)", 0) {
    // --size T sets the CPU sequence length (default 256). FLOPs: 2.5x the forward's (five
    // matrix products against two), FlashAttention's convention.
    const index_t B = 1, T = ctx.size > 0 ? ctx.size : 256, H = 12, D = 64;
    const auto q = random_tensor({B, T, H, D}, 1), k = random_tensor({B, T, H, D}, 2), v = random_tensor({B, T, H, D}, 3);
    const auto dout = random_tensor({B, T, H, D}, 4);
    tinyllm::tensor<float, 4> dq({B, T, H, D}), dk({B, T, H, D}), dv({B, T, H, D});
    tinyllm::attention_options opts;
    opts.causal = true;
    const std::string name = "attention_backward/cpu_reference/B=1,T=" + std::to_string(T) + ",H=12,D=64,causal,float";
    auto timing = tinyllm::time_cpu(
        name, [&] { tinyllm::cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, opts); }, 0,
        2.5 * attention_flops(B, H, T, T, D, true), 1, ctx.repeats < 3 ? ctx.repeats : 3);
    ctx.rows.push_back({"cpu reference", "cpu", timing, "reference", true, false});

    // The tiled backward from the tiled forward's output and log-sum-exp (saved once).
    tinyllm::tensor<float, 4> out({B, T, H, D}), tq({B, T, H, D}), tk({B, T, H, D}), tv({B, T, H, D});
    tinyllm::tensor<float, 3> lse({B, H, T});
    tinyllm::cpu::attention_tiled<float>(out.view(), q.view(), k.view(), v.view(), opts, lse.view());
    auto tiled_timing = tinyllm::time_cpu(
        "attention_backward/cpu_tiled/B=1,T=" + std::to_string(T) + ",H=12,D=64,causal,float",
        [&] {
            tinyllm::cpu::attention_backward_tiled<float>(tq.view(), tk.view(), tv.view(), dout.view(), q.view(), k.view(),
                                                          v.view(), out.view(), lse.view(), opts);
        },
        0, 2.5 * attention_flops(B, H, T, T, D, true), 1, ctx.repeats < 5 ? ctx.repeats : 5);
    const double worst = std::max({max_abs_difference(tq.values(), dq.values()), max_abs_difference(tk.values(), dk.values()),
                                   max_abs_difference(tv.values(), dv.values())});
    ctx.rows.push_back(tiled_row(std::move(tiled_timing), worst, 1e-3));
}
