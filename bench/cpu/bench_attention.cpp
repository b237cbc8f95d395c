// bench/cpu/bench_attention.cpp — what the CPU reference of attention costs,
// and how it grows with the sequence length.
//
//   bin/bench_attention --benchmark_format=json > attention.json
//
// B = 1, H = 12 heads of D = 64 (GPT-2 small's attention), causal, float in and
// out, float64 math, one thread. The work is 4*H*T^2*D/2 flops (causal): it
// grows 4x each time T doubles, which is the quadratic cost of attention that
// FlashAttention makes cheaper in memory but not in arithmetic. Large T run
// once (->Iterations(1)) to keep the default run short.
#include <benchmark/benchmark.h>

#include <tinyllm/attention.hpp>
#include <tinyllm/random.hpp>

static void attention_cpu_reference(benchmark::State& state) {
    const tinyllm::index_t B = 1, T = state.range(0), H = 12, D = 64;
    tinyllm::tensor<float, 4> q({B, T, H, D}), k({B, T, H, D}), v({B, T, H, D}), out({B, T, H, D});
    tinyllm::cpu::fill_uniform(q.view(), 1, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(k.view(), 2, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(v.view(), 3, -1.0f, 1.0f);
    tinyllm::attention_options opts;
    opts.causal = true;
    for (auto _ : state) {
        tinyllm::cpu::attention<float>(out.view(), q.view(), k.view(), v.view(), opts);
        benchmark::ClobberMemory();
    }
    const double flops = 4.0 * static_cast<double>(H) * static_cast<double>(T) * static_cast<double>(T) * D / 2;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9 * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
}
BENCHMARK(attention_cpu_reference)->Arg(256)->Arg(512)->Unit(benchmark::kMillisecond);
BENCHMARK(attention_cpu_reference)->Arg(1024)->Arg(2048)->Arg(4096)->Iterations(1)->Unit(benchmark::kMillisecond);

// The backward pass of the same causal attention: dQ, dK and dV from dO, P
// recomputed per row (cpu::attention_backward). GFLOP/s counts 2.5x the
// forward's flops, FlashAttention's convention (five matrix products against
// the forward's two); the reference does six (it also recomputes O for the
// rowsum), so it is at least as slow per flop as the forward.
static void attention_cpu_backward(benchmark::State& state) {
    const tinyllm::index_t B = 1, T = state.range(0), H = 12, D = 64;
    tinyllm::tensor<float, 4> q({B, T, H, D}), k({B, T, H, D}), v({B, T, H, D}), dout({B, T, H, D});
    tinyllm::tensor<float, 4> dq({B, T, H, D}), dk({B, T, H, D}), dv({B, T, H, D});
    tinyllm::cpu::fill_uniform(q.view(), 7, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(k.view(), 8, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(v.view(), 9, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(dout.view(), 10, -1.0f, 1.0f);
    tinyllm::attention_options opts;
    opts.causal = true;
    for (auto _ : state) {
        tinyllm::cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, opts);
        benchmark::ClobberMemory();
    }
    const double flops = 2.5 * 4.0 * static_cast<double>(H) * static_cast<double>(T) * static_cast<double>(T) * D / 2;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9 * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
}
BENCHMARK(attention_cpu_backward)->Arg(256)->Arg(512)->Unit(benchmark::kMillisecond);

// One decode step: a single query against T cached keys (what a KV cache buys:
// O(T) per token instead of recomputing O(T^2) attention over the whole prefix).
static void attention_cpu_decode_step(benchmark::State& state) {
    const tinyllm::index_t T = state.range(0), H = 12, D = 64;
    tinyllm::tensor<float, 4> q({1, 1, H, D}), k({1, T, H, D}), v({1, T, H, D}), out({1, 1, H, D});
    tinyllm::cpu::fill_uniform(q.view(), 4, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(k.view(), 5, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(v.view(), 6, -1.0f, 1.0f);
    for (auto _ : state) {
        tinyllm::cpu::attention<float>(out.view(), q.view(), k.view(), v.view());
        benchmark::ClobberMemory();
    }
}
BENCHMARK(attention_cpu_decode_step)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);
