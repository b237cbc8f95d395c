// bench/cpu/bench_positional.cpp — what the positional-encoding CPU references cost.
//
//   bin/bench_positional --benchmark_format=json > positional.json
//
// * rope: cpu::apply_rope in place on (1, T, 32, 128), rotate_half, GB/s of x
//   read + written. The per-token sin/cos are computed once and shared by the
//   32 heads, so the time is mostly the rotation loop.
// * rope_inverse_frequencies: the llama3-scaled inverse frequencies of a
//   128-wide head (double pow per pair), the one-off cost of a config.
// * add_sinusoidal: x += PE on (1, T, 768), GB/s of x read + written (a pow and
//   a sin or cos per element: compute-bound on the CPU).
#include <benchmark/benchmark.h>

#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>

#include <cstdint>
#include <vector>

static void rope(benchmark::State& state) {
    const std::int64_t T = state.range(0), H = 32, D = 128;
    std::vector<float> x(static_cast<std::size_t>(T * H * D));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {T * H * D}), 1, -1.0f, 1.0f);
    std::vector<std::int64_t> positions(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) positions[static_cast<std::size_t>(t)] = t;
    const tinyllm::rope_config cfg{.rotary_dim = D};
    tinyllm::tensor_view<float, 4> xv(x.data(), {1, T, H, D});  // (B, T, H, D)
    tinyllm::tensor_view<const std::int64_t, 2> pv(positions.data(), {1, T});
    for (auto _ : state) {
        tinyllm::cpu::apply_rope(xv, pv, cfg);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 2 * T * H * D * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(rope)->Arg(64)->Arg(1024);

static void rope_inverse_frequencies(benchmark::State& state) {
    const tinyllm::rope_config cfg{.rotary_dim = 128, .theta = 500000.0, .scaling = tinyllm::rope_scaling::llama3,
                                   .factor = 8.0};
    for (auto _ : state) {
        auto w = tinyllm::cpu::rope_inverse_frequencies(cfg);
        benchmark::DoNotOptimize(w.data());
    }
}
BENCHMARK(rope_inverse_frequencies);

static void add_sinusoidal(benchmark::State& state) {
    const std::int64_t T = state.range(0), D = 768;
    std::vector<float> x(static_cast<std::size_t>(T * D), 0.5f);
    std::vector<std::int32_t> positions(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) positions[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
    tinyllm::tensor_view<float, 3> xv(x.data(), {1, T, D});  // (B, T, D)
    tinyllm::tensor_view<const std::int32_t, 2> pv(positions.data(), {1, T});
    for (auto _ : state) {
        tinyllm::cpu::add_sinusoidal(xv, pv);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 2 * T * D * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(add_sinusoidal)->Arg(1024);
