// bench/cpu/bench_moe.cpp — what the MoE CPU references cost.
//
//   bin/bench_moe --benchmark_format=json > moe.json
//
// * softmax_topk_gating: (T = 4096, E) logits -> top-k, for Mixtral's (8, 2)
//   and DeepSeek's (256, 8); bytes = logits read + ids and weights written.
// * moe_plan: histogram -> prefix sum -> scatter of the T·k slots.
// * gather_combine: (T, 1024) float hidden states to expert order and back.
#include <benchmark/benchmark.h>

#include <tinyllm/moe.hpp>
#include <tinyllm/random.hpp>

#include <cstdint>

namespace {
using tinyllm::extents;
using tinyllm::index_t;
constexpr index_t tokens = 4096;

struct routed {
    tinyllm::tensor<float, 2> logits;
    tinyllm::tensor<std::int32_t, 2> ids;
    tinyllm::tensor<float, 2> weights;
    routed(index_t E, index_t k) : logits(extents<2>{tokens, E}), ids(extents<2>{tokens, k}), weights(extents<2>{tokens, k}) {
        tinyllm::cpu::fill_uniform(logits.view(), 3, -4.0f, 4.0f);
        tinyllm::cpu::softmax_topk_gating(ids.view(), weights.view(), logits.view(), true);
    }
};
}  // namespace

static void softmax_topk_gating(benchmark::State& state) {
    const index_t E = state.range(0), k = state.range(1);
    routed r(E, k);
    for (auto _ : state) {
        tinyllm::cpu::softmax_topk_gating(r.ids.view(), r.weights.view(), r.logits.view(), true);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * tokens * (4 * E + 8 * k));
}
BENCHMARK(softmax_topk_gating)->Args({8, 2})->Args({256, 8});

static void moe_plan(benchmark::State& state) {
    const index_t E = state.range(0), k = state.range(1);
    routed r(E, k);
    tinyllm::cpu::moe_plan_buffers plan(tokens, k, E, 1);
    for (auto _ : state) {
        tinyllm::cpu::moe_plan(plan.view(), r.ids.view());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * tokens * k);
}
BENCHMARK(moe_plan)->Args({8, 2})->Args({256, 8});

static void gather_combine(benchmark::State& state) {
    const index_t E = state.range(0), k = state.range(1), D = 1024;
    routed r(E, k);
    tinyllm::cpu::moe_plan_buffers plan(tokens, k, E, 1);
    tinyllm::cpu::moe_plan(plan.view(), r.ids.view());
    tinyllm::tensor<float, 2> x(extents<2>{tokens, D}), sorted(extents<2>{plan.rows(), D}), out(extents<2>{tokens, D});
    tinyllm::cpu::fill_uniform(x.view(), 4);
    for (auto _ : state) {
        tinyllm::cpu::moe_gather(sorted.view(), x.view(), plan.view());
        tinyllm::cpu::moe_combine(out.view(), sorted.view(), r.weights.view(), plan.view());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 4 * D * (3 * tokens * k + tokens));
}
BENCHMARK(gather_combine)->Args({8, 2});
