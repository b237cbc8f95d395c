// bench/cpu/bench_sampling.cpp — what the CPU reference samplers cost.
//
//   bin/bench_sampling --benchmark_format=json > sampling.json
//
// One row of V float logits (uniform in [-8, 8)), V = 50257 and 128256:
// greedy (one pass), multinomial (exp into integer weights, sum, walk), top-k 50
// (nth_element), top-p 0.9 (a stable sort of the row: the expensive one) and
// min-p 0.1. Bytes = the row read once.
#include <benchmark/benchmark.h>

#include <tinyllm/random.hpp>
#include <tinyllm/sampling.hpp>

#include <cstdint>
#include <vector>

namespace {

std::vector<float> row(std::int64_t V) {
    std::vector<float> z(static_cast<std::size_t>(V));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(z.data(), {V}), 1234, -8.0f, 8.0f);
    return z;
}

void run(benchmark::State& state, const tinyllm::sampling::params& p) {
    const std::int64_t V = state.range(0);
    const auto z = row(V);
    std::int32_t token = 0;
    std::uint64_t step = 0;
    for (auto _ : state) {
        tinyllm::cpu::sample(tinyllm::tensor_view<std::int32_t, 1>(&token, {1}),
                             tinyllm::tensor_view<const float, 2>(z.data(), {std::int64_t{1}, V}), p, 7, step++);
        benchmark::DoNotOptimize(token);
    }
    state.SetBytesProcessed(state.iterations() * V * static_cast<std::int64_t>(sizeof(float)));
}

}  // namespace

static void greedy(benchmark::State& state) {
    tinyllm::sampling::params p;
    p.temperature = 0.0f;
    run(state, p);
}
static void multinomial(benchmark::State& state) { run(state, {}); }
static void top_k_50(benchmark::State& state) {
    tinyllm::sampling::params p;
    p.top_k = 50;
    run(state, p);
}
static void top_p_09(benchmark::State& state) {
    tinyllm::sampling::params p;
    p.top_p = 0.9f;
    run(state, p);
}
static void min_p_01(benchmark::State& state) {
    tinyllm::sampling::params p;
    p.min_p = 0.1f;
    run(state, p);
}
BENCHMARK(greedy)->Arg(50257)->Arg(128256);
BENCHMARK(multinomial)->Arg(50257)->Arg(128256);
BENCHMARK(top_k_50)->Arg(50257)->Arg(128256);
BENCHMARK(top_p_09)->Arg(50257)->Arg(128256);
BENCHMARK(min_p_01)->Arg(50257)->Arg(128256);
