// bench/cpu/bench_optimizer.cpp — what the CPU reference of one AdamW step
// costs: 2^20 float parameters (a 1024 x 1024 weight), the state and the
// gradient in memory.
//
//   bin/bench_optimizer --benchmark_format=json > optimizer.json
//
// The reference computes each element in double and is written to be read,
// not to be fast; this number says how long a test or a CPU training step
// spends in it and gives the GPU speed-up a floor. Bytes: p, g, m, v read
// once, p, m, v written once (28 per parameter).
#include <benchmark/benchmark.h>

#include <tinyllm/optimizer.hpp>
#include <tinyllm/random.hpp>

#include <cstdint>
#include <vector>

namespace {

constexpr std::int64_t n = std::int64_t{1} << 20;

tinyllm::tensor_view<float, 1> view(std::vector<float>& v) { return {v.data(), {n}}; }

}  // namespace

static void adamw_step(benchmark::State& state) {
    std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
    tinyllm::cpu::fill_normal(view(p), 1, 0.0f, 0.02f);
    tinyllm::cpu::fill_normal(view(g), 2, 0.0f, 1e-3f);
    const tinyllm::adamw_config config{.lr = 6e-4, .beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1};
    std::int64_t step = 0;
    for (auto _ : state) {
        tinyllm::cpu::adamw_step(view(p), view(m), view(v), view(g), config, ++step);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 28 * n);
}
BENCHMARK(adamw_step)->Unit(benchmark::kMillisecond);
