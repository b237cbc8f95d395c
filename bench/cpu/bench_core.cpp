// bench/cpu/bench_core.cpp — what the foundation costs on the CPU.
//
//   bin/bench_core --benchmark_format=json > core.json
//
// * philox: Philox4x32-10 words per second (10 rounds of two 32x32->64 multiplies).
// * fill_uniform: the CPU reference of tinyllm::cuda::fill_uniform, in GB/s written.
// * sum over a tensor_view vs a raw pointer: a view's indexing costs nothing
//   once optimized (build type Release, no bounds checks).
#include <benchmark/benchmark.h>

#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <vector>

static void philox_words(benchmark::State& state) {
    std::uint32_t acc = 0, i = 0;
    for (auto _ : state) {
        const auto w = tinyllm::philox4x32_10({{i++, 0, 0, 0}}, {{42, 0}});
        acc ^= w.v[0] ^ w.v[1] ^ w.v[2] ^ w.v[3];
        benchmark::DoNotOptimize(acc);
    }
    state.SetItemsProcessed(4 * state.iterations());
}
BENCHMARK(philox_words);

static void fill_uniform(benchmark::State& state) {
    const auto n = state.range(0);
    std::vector<float> out(static_cast<std::size_t>(n));
    for (auto _ : state) {
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(out.data(), {n}), 7);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * n * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(fill_uniform)->Arg(1 << 16)->Arg(1 << 22);

static void sum_raw_pointer(benchmark::State& state) {
    const auto n = state.range(0);
    std::vector<float> x(static_cast<std::size_t>(n * n), 1.0f);
    for (auto _ : state) {
        float s = 0;
        for (std::int64_t i = 0; i < n * n; ++i) s += x[static_cast<std::size_t>(i)];
        benchmark::DoNotOptimize(s);
    }
    state.SetBytesProcessed(state.iterations() * n * n * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(sum_raw_pointer)->Arg(1024);

static void sum_tensor_view(benchmark::State& state) {
    const auto n = state.range(0);
    std::vector<float> x(static_cast<std::size_t>(n * n), 1.0f);
    tinyllm::tensor_view<const float, 2> v(x.data(), {n, n});  // (n, n)
    for (auto _ : state) {
        float s = 0;
        for (tinyllm::index_t i = 0; i < n; ++i)
            for (tinyllm::index_t j = 0; j < n; ++j) s += v(i, j);
        benchmark::DoNotOptimize(s);
    }
    state.SetBytesProcessed(state.iterations() * n * n * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(sum_tensor_view)->Arg(1024);
