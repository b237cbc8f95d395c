// bench/cpu/bench_gemm.cpp — matrix multiplication on the CPU at GPT-2 124M's shapes:
// the double-accumulating reference (cpu::matmul, ffn.hpp), tinyllm's blocked kernel
// (cpu::gemm_blocked) and OpenBLAS (cpu::gemm_blas, in builds with it), in GFLOP/s;
// and the linear layer with its weight in bfloat16 (cpu::linear_gemm, `bf16` rows)
// beside the float weight (`blocked` rows: the same kernel, the same product).
//
//   bin/bench_gemm                                     # every row
//   OMP_NUM_THREADS=2 bin/bench_gemm --benchmark_filter=blocked
//   bin/bench_gemm --benchmark_filter='(blocked|bf16)/(decode|qkv_128)'   # float vs bf16 weights
//
// Shapes (M x K times K x N, the weight passed as a transposed view as linear does):
//   qkv          128 x 768  . 768 x 2304    attention's input projection, 128 tokens
//   mlp          128 x 3072 . 3072 x 768    the MLP's down projection
//   decode         1 x 768  . 768 x 50257   the logits of one generated token
//   decode_qkv     1 x 768  . 768 x 2304    attention's input projection, one token
//   decode_mlp     1 x 3072 . 3072 x 768    the MLP's down projection, one token
//   logits       128 x 768  . 768 x 50257   the logits of 128 tokens (no reference row: ~10 s each)
// Counters: GFLOP/s (2 M N K per call) and weight GB/s (the weight's bytes per call, N K
// times 4 for float and 2 for bf16: what bounds decoding, M = 1, where each weight is
// read once for 2 flops; decode rows read their weight from memory, not the caches: see
// weight_copies). Threads: cpu::num_threads() (OMP_NUM_THREADS, else one per
// core). Times are wall clock (UseRealTime): CPU time would add up the threads.
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
constexpr shape decode_qkv{1, 768, 2304}, decode_mlp{1, 3072, 768};

// One token (M = 1) decoding through a model reads each layer's weight from memory:
// the 12 layers' weights (85 M parameters) are far more than the caches hold. A decode
// row with a weight smaller than 96 MiB in float therefore cycles through enough
// copies of it (copy `turn` on call `turn`) that every call finds its weight out of
// cache (L3 here: 32 MiB), as a decode step does: 1 x 768 x 2304 in float is 7 MB,
// so 15 copies (106 MB in float, 53 MB in bf16). The others use one weight.
index_t weight_copies(shape s) {
    const index_t floats = s.N * s.K, want = (96 << 20) / 4;
    return s.M == 1 && floats < want ? (want + floats - 1) / floats : 1;
}

struct inputs {
    shape s;
    index_t copies, turn = 0;
    std::vector<float> x, w, out;  // x (M, K), w: copies of (N, K) as a linear layer's weight, out (M, N)
    std::vector<tinyllm::bfloat16> w16;  // w rounded to bfloat16, for the bf16 rows
    explicit inputs(shape s_, bool bf16 = false)
        : s(s_), copies(weight_copies(s_)), x(static_cast<std::size_t>(s.M * s.K)),
          w(static_cast<std::size_t>(copies * s.N * s.K)), out(static_cast<std::size_t>(s.M * s.N)) {
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {s.M * s.K}), 1, -1, 1);
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {copies * s.N * s.K}), 2, -1, 1);
        if (bf16) {
            w16.resize(w.size());
            for (std::size_t i = 0; i < w.size(); ++i) w16[i] = tinyllm::float_to_bf16(w[i]);
            std::vector<float>().swap(w);  // only the bf16 copy is read
        }
    }
    tinyllm::tensor_view<float, 2> c() { return {out.data(), {s.M, s.N}}; }
    tinyllm::tensor_view<const float, 2> a() const { return {x.data(), {s.M, s.K}}; }
    tinyllm::tensor_view<const float, 2> b() const {  // w^T: (K, N)
        return tinyllm::tensor_view<const float, 2>(w.data() + turn * s.N * s.K, {s.N, s.K}).transpose(0, 1);
    }
    tinyllm::tensor_view<const tinyllm::bfloat16, 2> weight16() const {  // (N, K)
        return {w16.data() + turn * s.N * s.K, {s.N, s.K}};
    }
    void next() { turn = (turn + 1) % copies; }
};

template <class Fn>
void run(benchmark::State& state, shape s, Fn&& fn, int threads = tinyllm::cpu::num_threads(), bool bf16 = false) {
    inputs in(s, bf16);
    for (auto _ : state) {
        fn(in);
        benchmark::ClobberMemory();
        in.next();
    }
    const double flops = 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K);
    const double weight_bytes = (bf16 ? 2.0 : 4.0) * static_cast<double>(s.N) * static_cast<double>(s.K);
    const double calls = static_cast<double>(state.iterations());
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9 * calls, benchmark::Counter::kIsRate);
    state.counters["weight GB/s"] = benchmark::Counter(weight_bytes * 1e-9 * calls, benchmark::Counter::kIsRate);
    // (a rate over the timed interval: wall clock here, as the rows use UseRealTime)
    state.counters["threads"] = threads;
    state.counters["weight copies"] = static_cast<double>(in.copies);
}

void reference(benchmark::State& state, shape s) {
    run(state, s, [](inputs& in) { tinyllm::cpu::matmul(in.c(), in.a(), in.b()); }, 1);  // one thread
}
void blocked(benchmark::State& state, shape s) {
    run(state, s, [](inputs& in) { tinyllm::cpu::gemm_blocked(in.c(), in.a(), in.b()); });
}
// out = x W^T with W in bfloat16: cpu::linear_gemm, no bias (tinyllm's kernel, never BLAS).
void bf16(benchmark::State& state, shape s) {
    run(
        state, s, [](inputs& in) { tinyllm::cpu::linear_gemm(in.c(), in.a(), in.weight16(), {}); },
        tinyllm::cpu::num_threads(), true);
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
BENCHMARK_CAPTURE(blocked, decode_qkv_1x768x2304, decode_qkv)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(blocked, decode_mlp_1x3072x768, decode_mlp)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(bf16, qkv_128x768x2304, qkv)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(bf16, decode_1x768x50257, decode)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(bf16, decode_qkv_1x768x2304, decode_qkv)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(bf16, decode_mlp_1x3072x768, decode_mlp)->Unit(benchmark::kMicrosecond)->UseRealTime();
#if defined(TINYLLM_HAVE_BLAS)
BENCHMARK_CAPTURE(blas, qkv_128x768x2304, qkv)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blas, mlp_128x3072x768, mlp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blas, decode_1x768x50257, decode)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(blas, logits_128x768x50257, logits)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif
