// bench/cpu/bench_layers.cpp — what the CPU references of the layers between
// blocks cost, at a laptop size: (512, 4096) float, and a small linear layer;
// each forward with its backward (*_backward: the gradients a training step needs).
//
//   bin/bench_layers --benchmark_format=json > layers.json
//
// The references are written to be read, not to be fast (double accumulation,
// no SIMD intrinsics, no threads); these numbers say how long a test or the
// tour spends in them, and give the GPU speed-ups a floor.
#include <benchmark/benchmark.h>

#include <tinyllm/activation.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>

#include <string>
#include <vector>

namespace {

constexpr std::int64_t rows = 512, D = 4096;

struct inputs {
    std::vector<float> x, y, w, out, out2, dw, db;
    inputs() : x(rows * D), y(rows * D), w(D), out(rows * D), out2(rows * D), dw(D), db(D) {
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {rows * D}), 1, -2, 2);
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(y.data(), {rows * D}), 2, -2, 2);
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {D}), 3, 0.5f, 1.5f);
    }
    static tinyllm::tensor_view<float, 2> v(std::vector<float>& a) { return {a.data(), {rows, D}}; }
    tinyllm::tensor_view<const float, 1> weight() const { return {w.data(), {D}}; }
    static tinyllm::tensor_view<float, 1> vec(std::vector<float>& a) { return {a.data(), {D}}; }
};

void set_bytes(benchmark::State& state, int tensors) {
    state.SetBytesProcessed(state.iterations() * tensors * rows * D * static_cast<std::int64_t>(sizeof(float)));
}

}  // namespace

static void rms_norm(benchmark::State& state) {
    inputs in;
    for (auto _ : state) {
        tinyllm::cpu::rms_norm(inputs::v(in.out), inputs::v(in.x), in.weight(), 1e-5f);
        benchmark::ClobberMemory();
    }
    set_bytes(state, 2);
}
BENCHMARK(rms_norm)->Unit(benchmark::kMillisecond);

// dx and dweight from dout (y) and x: dout and x read, dx written.
static void rms_norm_backward(benchmark::State& state) {
    inputs in;
    for (auto _ : state) {
        tinyllm::cpu::rms_norm_backward(inputs::v(in.out), inputs::vec(in.dw), inputs::v(in.y), inputs::v(in.x),
                                        in.weight(), 1e-5f);
        benchmark::ClobberMemory();
    }
    set_bytes(state, 3);
}
BENCHMARK(rms_norm_backward)->Unit(benchmark::kMillisecond);

static void layer_norm(benchmark::State& state) {
    inputs in;
    for (auto _ : state) {
        tinyllm::cpu::layer_norm(inputs::v(in.out), inputs::v(in.x), in.weight(), in.weight(), 1e-5f);
        benchmark::ClobberMemory();
    }
    set_bytes(state, 2);
}
BENCHMARK(layer_norm)->Unit(benchmark::kMillisecond);

static void layer_norm_backward(benchmark::State& state) {
    inputs in;
    for (auto _ : state) {
        tinyllm::cpu::layer_norm_backward(inputs::v(in.out), inputs::vec(in.dw), inputs::vec(in.db), inputs::v(in.y),
                                          inputs::v(in.x), in.weight(), 1e-5f);
        benchmark::ClobberMemory();
    }
    set_bytes(state, 3);
}
BENCHMARK(layer_norm_backward)->Unit(benchmark::kMillisecond);

static void residual_add_rms_norm(benchmark::State& state) {
    inputs in;
    for (auto _ : state) {
        tinyllm::cpu::residual_add_rms_norm(inputs::v(in.out), inputs::v(in.out2), inputs::v(in.x), inputs::v(in.y),
                                            in.weight(), 1e-5f);
        benchmark::ClobberMemory();
    }
    set_bytes(state, 4);
}
BENCHMARK(residual_add_rms_norm)->Unit(benchmark::kMillisecond);

static void swiglu(benchmark::State& state) {
    inputs in;
    for (auto _ : state) {
        tinyllm::cpu::swiglu(inputs::v(in.out), inputs::v(in.x), inputs::v(in.y));
        benchmark::ClobberMemory();
    }
    set_bytes(state, 3);
}
BENCHMARK(swiglu)->Unit(benchmark::kMillisecond);

// dgate and dup from dout (out), gate (x) and up (y): three read, two written.
static void swiglu_backward(benchmark::State& state) {
    inputs in;
    std::vector<float> dout(rows * D);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(dout.data(), {rows * D}), 6, -1, 1);
    for (auto _ : state) {
        tinyllm::cpu::swiglu_backward(inputs::v(in.out), inputs::v(in.out2), inputs::v(dout), inputs::v(in.x),
                                      inputs::v(in.y));
        benchmark::ClobberMemory();
    }
    set_bytes(state, 5);
}
BENCHMARK(swiglu_backward)->Unit(benchmark::kMillisecond);

// One activation, state.range(0) selects it (the numbering of tinyllm::activation).
static void activate(benchmark::State& state) {
    inputs in;
    const auto kind = static_cast<tinyllm::activation>(state.range(0));
    state.SetLabel(std::string(tinyllm::activation_name(kind)));
    for (auto _ : state) {
        tinyllm::cpu::activate(inputs::v(in.out), inputs::v(in.x), kind);
        benchmark::ClobberMemory();
    }
    set_bytes(state, 2);
}
BENCHMARK(activate)
    ->Arg(static_cast<int>(tinyllm::activation::relu))
    ->Arg(static_cast<int>(tinyllm::activation::gelu_erf))
    ->Arg(static_cast<int>(tinyllm::activation::gelu_tanh))
    ->Arg(static_cast<int>(tinyllm::activation::silu))
    ->Unit(benchmark::kMillisecond);

// linear (64 tokens, 512 -> 1536): the triple loop, in FLOP/s.
static void linear(benchmark::State& state) {
    const std::int64_t n = 64, k = 512, m = 1536;
    std::vector<float> x(n * k), w(m * k), out(n * m);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {n * k}), 4);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {m * k}), 5);
    for (auto _ : state) {
        tinyllm::cpu::linear({out.data(), {n, m}}, {x.data(), {n, k}}, {w.data(), {m, k}}, {});
        benchmark::ClobberMemory();
    }
    state.counters["FLOP/s"] =
        benchmark::Counter(static_cast<double>(2 * n * k * m), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(linear)->Unit(benchmark::kMillisecond);

// linear_backward at the same shape: dx, dweight and dbias (two products, 4 n k m FLOPs).
static void linear_backward(benchmark::State& state) {
    const std::int64_t n = 64, k = 512, m = 1536;
    std::vector<float> x(n * k), w(m * k), dout(n * m), dx(n * k), dw(m * k), db(m);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {n * k}), 4);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {m * k}), 5);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(dout.data(), {n * m}), 6);
    for (auto _ : state) {
        tinyllm::cpu::linear_backward({dx.data(), {n, k}}, {dw.data(), {m, k}}, {db.data(), {m}}, {dout.data(), {n, m}},
                                      {x.data(), {n, k}}, {w.data(), {m, k}});
        benchmark::ClobberMemory();
    }
    state.counters["FLOP/s"] =
        benchmark::Counter(static_cast<double>(4 * n * k * m), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(linear_backward)->Unit(benchmark::kMillisecond);
