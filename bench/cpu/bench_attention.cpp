// bench/cpu/bench_attention.cpp — what the CPU reference of attention costs,
// how it grows with the sequence length, and what the tiled version
// (cpu::attention_tiled, <tinyllm/attention_tiled.hpp>) does with the same work.
//
//   bin/bench_attention --benchmark_format=json > attention.json
//   bin/bench_attention --benchmark_filter=tiled     # only the tiled rows
//
// B = 1, H = 12 heads of D = 64 (GPT-2 small's attention), causal, float in and
// out. The reference: float64 math, one thread. The tiled rows: float math,
// key blocks with the online softmax, over the OpenMP threads when the build
// has OpenMP (OMP_NUM_THREADS sets how many; the "threads" counter says). The work is 4*H*T^2*D/2 flops (causal): it
// grows 4x each time T doubles, which is the quadratic cost of attention that
// FlashAttention makes cheaper in memory but not in arithmetic. Large T run
// once (->Iterations(1)) to keep the default run short.
#include <benchmark/benchmark.h>

#include <tinyllm/attention.hpp>
#include <tinyllm/attention_tiled.hpp>
#include <tinyllm/random.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

// The threads the tiled versions run on.
double tiled_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// A causal prefill at GPT-2 small's attention shape (B = 1, H = 12, D = 64, T from
// the argument) through `run(out, q, k, v, opts)`, with its GFLOP/s.
template <class Run>
void causal_prefill(benchmark::State& state, Run run) {
    const tinyllm::index_t B = 1, T = state.range(0), H = 12, D = 64;
    tinyllm::tensor<float, 4> q({B, T, H, D}), k({B, T, H, D}), v({B, T, H, D}), out({B, T, H, D});
    tinyllm::cpu::fill_uniform(q.view(), 1, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(k.view(), 2, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(v.view(), 3, -1.0f, 1.0f);
    tinyllm::attention_options opts;
    opts.causal = true;
    for (auto _ : state) {
        run(out.view(), q.view(), k.view(), v.view(), opts);
        benchmark::ClobberMemory();
    }
    const double flops = 4.0 * static_cast<double>(H) * static_cast<double>(T) * static_cast<double>(T) * D / 2;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9 * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
}

}  // namespace

static void attention_cpu_reference(benchmark::State& state) {
    causal_prefill(state, [](auto out, auto q, auto k, auto v, const auto& opts) {
        tinyllm::cpu::attention<float>(out, q, k, v, opts);
    });
}
BENCHMARK(attention_cpu_reference)->Arg(128)->Arg(256)->Arg(512)->Unit(benchmark::kMillisecond);
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
BENCHMARK(attention_cpu_backward)->Arg(128)->Arg(256)->Arg(512)->Unit(benchmark::kMillisecond);
BENCHMARK(attention_cpu_backward)->Arg(1024)->Iterations(1)->Unit(benchmark::kMillisecond);

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

// ---- the tiled versions (cpu::attention_tiled, cpu::attention_backward_tiled) ----------

// The same causal prefill as attention_cpu_reference, tiled: float, key blocks of 64,
// the online softmax, key blocks above the diagonal skipped.
static void attention_cpu_tiled(benchmark::State& state) {
    causal_prefill(state, [](auto out, auto q, auto k, auto v, const auto& opts) {
        tinyllm::cpu::attention_tiled<float>(out, q, k, v, opts);
    });
    state.counters["threads"] = tiled_threads();
}
BENCHMARK(attention_cpu_tiled)->Arg(128)->Arg(256)->Arg(512)->Arg(1024)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

// The backward from the tiled forward's output and log-sum-exp (saved once, outside the loop).
static void attention_cpu_tiled_backward(benchmark::State& state) {
    const tinyllm::index_t B = 1, T = state.range(0), H = 12, D = 64;
    tinyllm::tensor<float, 4> q({B, T, H, D}), k({B, T, H, D}), v({B, T, H, D}), dout({B, T, H, D}), out({B, T, H, D});
    tinyllm::tensor<float, 4> dq({B, T, H, D}), dk({B, T, H, D}), dv({B, T, H, D});
    tinyllm::tensor<float, 3> lse({B, H, T});
    tinyllm::cpu::fill_uniform(q.view(), 7, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(k.view(), 8, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(v.view(), 9, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(dout.view(), 10, -1.0f, 1.0f);
    tinyllm::attention_options opts;
    opts.causal = true;
    tinyllm::cpu::attention_tiled<float>(out.view(), q.view(), k.view(), v.view(), opts, lse.view());
    for (auto _ : state) {
        tinyllm::cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(), k.view(),
                                                      v.view(), out.view(), lse.view(), opts);
        benchmark::ClobberMemory();
    }
    const double flops = 2.5 * 4.0 * static_cast<double>(H) * static_cast<double>(T) * static_cast<double>(T) * D / 2;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9 * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
    state.counters["threads"] = tiled_threads();
}
BENCHMARK(attention_cpu_tiled_backward)->Arg(128)->Arg(256)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// One decode step through the kv_cache overload: a single query against T cached
// keys, the keys split into chunks of 512 across the threads.
static void attention_cpu_tiled_decode_step(benchmark::State& state) {
    const tinyllm::index_t T = state.range(0), H = 12, D = 64;
    tinyllm::tensor<float, 4> q({1, 1, H, D}), k({1, T, H, D}), v({1, T, H, D}), out({1, 1, H, D});
    tinyllm::cpu::fill_uniform(q.view(), 4, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(k.view(), 5, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(v.view(), 6, -1.0f, 1.0f);
    tinyllm::kv_cache<float> cache(1, T, H, D);
    cache.append(k.view(), v.view());
    tinyllm::attention_options opts;
    opts.causal = true;
    for (auto _ : state) {
        tinyllm::cpu::attention_tiled<float>(out.view(), q.view(), cache, opts);
        benchmark::ClobberMemory();
    }
    state.counters["threads"] = tiled_threads();
}
BENCHMARK(attention_cpu_tiled_decode_step)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond)->UseRealTime();
