// examples/tinyllm/bench_moe.cpp — CPU reference rows of `tinyllm bench
// moe_gating` and `tinyllm bench moe_dispatch` (CUDA rows: bench_moe.cu).
//
// Shapes: T = 16384 tokens (--size T; 515 on the simulated GPU, as the CUDA
// rows there), float32 router logits, (E = 8, k = 2)
// like Mixtral and (E = 256, k = 8) like DeepSeek-V3; dispatch moves hidden
// states of width D = 1024.
#include "registry.hpp"

#include <tinyllm/moe.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::extents;
using tinyllm::index_t;

namespace {

struct moe_shape {
    index_t E, k;
};
constexpr moe_shape moe_shapes[] = {{8, 2}, {256, 8}};
constexpr index_t moe_width = 1024;
constexpr index_t simulated_tokens = 515;  // the default on the simulated GPU, as for the CUDA rows

std::string shape_name(index_t T, moe_shape s) {
    return "T=" + std::to_string(T) + ",E=" + std::to_string(s.E) + ",k=" + std::to_string(s.k);
}

}  // namespace

TINYLLM_BENCH("moe_gating", "softmax -> top-k -> renormalize on (T, E) float logits (--size T, default 16384; simulated GPU 515)", 0) {
    const index_t T = ctx.size_or(16384, simulated_tokens);
    for (const moe_shape s : moe_shapes) {
        tinyllm::tensor<float, 2> logits(extents<2>{T, s.E});  // (T, E)
        tinyllm::cpu::fill_uniform(logits.view(), 11, -4.0f, 4.0f);
        tinyllm::tensor<std::int32_t, 2> ids(extents<2>{T, s.k});  // (T, k)
        tinyllm::tensor<float, 2> weights(extents<2>{T, s.k});     // (T, k)
        const double bytes = 4.0 * static_cast<double>(T * s.E) + 8.0 * static_cast<double>(T * s.k);
        auto timing = tinyllm::time_cpu(
            "moe_gating/cpu_reference/" + shape_name(T, s),
            [&] { tinyllm::cpu::softmax_topk_gating(ids.view(), weights.view(), logits.view(), true); }, bytes, 0, 1,
            ctx.repeats);
        ctx.rows.push_back({"cpu E=" + std::to_string(s.E) + ",k=" + std::to_string(s.k), "cpu", timing, "reference",
                            true, false});
    }
}

TINYLLM_BENCH("moe_dispatch",
              "plan + gather + combine of (T, 1024) float hidden states, identity experts (--size T, default 16384; simulated GPU 515)", 0) {
    const index_t T = ctx.size_or(16384, simulated_tokens), D = moe_width;
    for (const moe_shape s : moe_shapes) {
        tinyllm::tensor<float, 2> logits(extents<2>{T, s.E});  // (T, E)
        tinyllm::cpu::fill_uniform(logits.view(), 12, -4.0f, 4.0f);
        tinyllm::tensor<std::int32_t, 2> ids(extents<2>{T, s.k});  // (T, k)
        tinyllm::tensor<float, 2> weights(extents<2>{T, s.k});     // (T, k)
        tinyllm::cpu::softmax_topk_gating(ids.view(), weights.view(), logits.view(), true);
        tinyllm::tensor<float, 2> x(extents<2>{T, D});  // (T, D)
        tinyllm::cpu::fill_uniform(x.view(), 13, -1.0f, 1.0f);
        tinyllm::cpu::moe_plan_buffers plan(T, s.k, s.E, 1);
        tinyllm::tensor<float, 2> sorted(extents<2>{plan.rows(), D}), out(extents<2>{T, D});  // (R, D), (T, D)
        const double R = static_cast<double>(T * s.k);
        const double bytes = 4.0 * (3 * R * D + static_cast<double>(T) * D) + 4.0 * 6 * R;
        auto timing = tinyllm::time_cpu(
            "moe_dispatch/cpu_reference/" + shape_name(T, s) + ",D=1024",
            [&] {
                tinyllm::cpu::moe_plan(plan.view(), ids.view());
                tinyllm::cpu::moe_gather(sorted.view(), x.view(), plan.view());
                tinyllm::cpu::moe_combine(out.view(), sorted.view(), weights.view(), plan.view());
            },
            bytes, 0, 1, ctx.repeats);
        ctx.rows.push_back({"cpu E=" + std::to_string(s.E) + ",k=" + std::to_string(s.k), "cpu", timing, "reference",
                            true, false});
    }
}
