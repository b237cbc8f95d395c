// bench/cpu/bench_gemm.cpp — matrix multiplication on the CPU at GPT-2 124M's shapes:
// the double-accumulating reference (cpu::matmul, ffn.hpp), tinyllm's blocked kernel
// (cpu::gemm_blocked) and OpenBLAS (cpu::gemm_blas, in builds with it), in GFLOP/s.
//
//   bin/bench_gemm                                     # every row
//   OMP_NUM_THREADS=2 bin/bench_gemm --benchmark_filter=blocked
//
// Shapes (M x K times K x N, the weight passed as a transposed view as linear does):
//   qkv     128 x 768  . 768 x 2304    attention's input projection, 128 tokens
//   mlp     128 x 3072 . 3072 x 768    the MLP's down projection
//   decode    1 x 768  . 768 x 50257   the logits of one generated token
//   logits  128 x 768  . 768 x 50257   the logits of 128 tokens (no reference row: ~10 s each)
// Threads: cpu::num_threads() (OMP_NUM_THREADS, else one per core). Times are wall clock
// (UseRealTime): CPU time would add up the threads.
#include <benchmark/benchmark.h>

#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/random.hpp>

#include <vector>

namespace {

using tinyllm::index_t;

struct shape {
    index_t M, K, N;
};
constexpr shape qkv{128, 768, 2304}, mlp{128, 3072, 768}, decode{1, 768, 50257}, logits{128, 768, 50257};

struct inputs {
    shape s;
    std::vector<float> x, w, out;  // x (M, K), w (N, K) as a linear layer's weight, out (M, N)
    explicit inputs(shape s_)
        : s(s_), x(static_cast<std::size_t>(s.M * s.K)), w(static_cast<std::size_t>(s.N * s.K)),
          out(static_cast<std::size_t>(s.M * s.N)) {
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {s.M * s.K}), 1, -1, 1);
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {s.N * s.K}), 2, -1, 1);
    }
    tinyllm::tensor_view<float, 2> c() { return {out.data(), {s.M, s.N}}; }
    tinyllm::tensor_view<const float, 2> a() const { return {x.data(), {s.M, s.K}}; }
    tinyllm::tensor_view<const float, 2> b() const {  // w^T: (K, N)
        return tinyllm::tensor_view<const float, 2>(w.data(), {s.N, s.K}).transpose(0, 1);
    }
};

template <class Fn>
void run(benchmark::State& state, shape s, Fn&& fn, int threads = tinyllm::cpu::num_threads()) {
    inputs in(s);
    for (auto _ : state) {
        fn(in);
        benchmark::ClobberMemory();
    }
    const double flops = 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K);
    state.counters["GFLOP/s"] =
        benchmark::Counter(flops * 1e-9 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
    // (a rate over the timed interval: wall clock here, as the rows use UseRealTime)
    state.counters["threads"] = threads;
}

void reference(benchmark::State& state, shape s) {
    run(state, s, [](inputs& in) { tinyllm::cpu::matmul(in.c(), in.a(), in.b()); }, 1);  // one thread
}
void blocked(benchmark::State& state, shape s) {
    run(state, s, [](inputs& in) { tinyllm::cpu::gemm_blocked(in.c(), in.a(), in.b()); });
}
#if defined(TINYLLM_HAVE_BLAS)
void blas(benchmark::State& state, shape s) {
    run(state, s, [](inputs& in) { tinyllm::cpu::gemm_blas(in.c(), in.a(), in.b()); });
}
#endif

}  // namespace

BENCHMARK_CAPTURE(reference, qkv_128x768x2304, qkv)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(reference, mlp_128x3072x768, mlp)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(reference, decode_1x768x50257, decode)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(blocked, qkv_128x768x2304, qkv)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blocked, mlp_128x3072x768, mlp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blocked, decode_1x768x50257, decode)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blocked, logits_128x768x50257, logits)->Unit(benchmark::kMillisecond)->UseRealTime();
#if defined(TINYLLM_HAVE_BLAS)
BENCHMARK_CAPTURE(blas, qkv_128x768x2304, qkv)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blas, mlp_128x3072x768, mlp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blas, decode_1x768x50257, decode)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blas, logits_128x768x50257, logits)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif
