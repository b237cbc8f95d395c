// bench/cpu/bench_model.cpp — tokens per second of the CPU model: the blocked
// kernels (the default) with float32 and bfloat16 weights, and the reference.
//
//   bin/bench_model                                  # every row (about 5 minutes on 2 cores)
//   bin/bench_model --benchmark_filter=gpt2          # GPT-2 rows only (no Llama weights are built)
//   OMP_NUM_THREADS=1 bin/bench_model ...            # thread count (cpu::num_threads)
//
// What is measured. A decoder-only model does two kinds of work:
//   prefill — the whole prompt in one forward pass: T tokens share every weight read,
//             so its cost is arithmetic, about 2 * parameters flops per token;
//   decode  — one token per forward pass after the prompt, reading its KV cache:
//             every weight is read for a single token, so its cost is memory traffic.
// Both are reported as tokens/s (a Google Benchmark rate counter over wall-clock time, as
// the kernels run on several threads): prompt tokens
// processed per second for prefill, generated tokens per second for decode (the
// prefill before the decode steps is not timed). Decode rows also report the
// weight bytes read per second and `of_floor`: the bandwidth floor (weight bytes
// per token / the machine's copy bandwidth, measured by the `copy_bandwidth` row)
// divided by the measured time per token — 1.0 would be decoding at memory speed —
// and `of_read_floor`, the same against the rate of a stream that only reads (the
// `read_GB/s` of the copy_bandwidth row), which is what a decode step is. Prefill and
// decode rows also give `GFLOP/s` and `flop_per_byte` (forward_flops over the weight
// bytes read), the two axes of tools/plot-roofline's picture in docs/cpu.md.
//
// The models are tinyllm::cpu::model with random weights of two real shapes
// (random_model_weights, model_shapes): GPT-2 124M and Llama-3.2-1B (1.24B
// parameters, ~5 GB of float weights, built only when a Llama row runs), each in
// float32, in bfloat16 (the same weights rounded, set_weight_dtype) and, for decoding,
// with their layer matrices quantized to int8 and int4-g64 (quantize_weights). The
// reference rows run the readable reference kernels (double accumulation, one
// thread) on short prompts, once.
//
// Training: `train_step` rows time one step (forward, backward, AdamW) of a 5.8M-parameter
// GPT-2 (gpt2_6m below) on 4 rows of 64 tokens, blocked and reference.
//
// The same shapes in transformers (eager attention, same threads):
// bench/baselines/cpu_model.py; the table is in docs/cpu.md.
#include <benchmark/benchmark.h>

#include <tinyllm/gemm.hpp>
#include <tinyllm/model.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace {

using tinyllm::index_t;
using tinyllm::cpu::model;
using dtype = tinyllm::cpu::model::weight_dtype;

enum class shape { gpt2_124m, llama_1b };

// Quantized matrices (model::quantize_weights): none, int8, or int4 in groups of 64.
enum class quant { none, int8, int4_g64 };

// A model of shape S (random weights; the Llama one is 5 GB in float), its matrices
// held in D (or quantized to Q), on kernels K: built on first use, one static per combination.
template <shape S, dtype D, model::kernels K = model::kernels::blocked, quant Q = quant::none>
const model& cached_model() {
    static const model m = [] {
        const bool gpt2 = S == shape::gpt2_124m;
        const tinyllm::model_config c = gpt2 ? tinyllm::model_shapes::gpt2_124m() : tinyllm::model_shapes::llama_1b();
        model r(c, tinyllm::random_model_weights(c, gpt2 ? 124 : 1));
        r.set_weight_dtype(D);
        r.set_kernels(K);
        if (Q == quant::int8) r.quantize_weights({tinyllm::quant_format::int8, 0});
        if (Q == quant::int4_g64) r.quantize_weights({tinyllm::quant_format::int4, 64});
        return r;
    }();
    return m;
}
constexpr auto gpt2_f32 = &cached_model<shape::gpt2_124m, dtype::float32>;
constexpr auto gpt2_bf16 = &cached_model<shape::gpt2_124m, dtype::bfloat16>;
constexpr auto gpt2_reference = &cached_model<shape::gpt2_124m, dtype::float32, model::kernels::reference>;
constexpr auto llama_f32 = &cached_model<shape::llama_1b, dtype::float32>;
constexpr auto llama_bf16 = &cached_model<shape::llama_1b, dtype::bfloat16>;
constexpr auto llama_reference = &cached_model<shape::llama_1b, dtype::float32, model::kernels::reference>;
constexpr auto gpt2_int8 = &cached_model<shape::gpt2_124m, dtype::float32, model::kernels::blocked, quant::int8>;
constexpr auto gpt2_int4 = &cached_model<shape::gpt2_124m, dtype::float32, model::kernels::blocked, quant::int4_g64>;
constexpr auto llama_int8 = &cached_model<shape::llama_1b, dtype::float32, model::kernels::blocked, quant::int8>;
constexpr auto llama_int4 = &cached_model<shape::llama_1b, dtype::float32, model::kernels::blocked, quant::int4_g64>;

// Bytes a decode step reads whole: every matrix and norm weight once (a tied
// embedding once, as the output projection), not GPT-2's position table nor an
// untied input embedding (one row of each per token); quantized matrices in their format.
double weight_bytes_per_token(const model& m) {
    double bytes = 0;
    if (m.quantized()) {  // what the model holds, less what a token does not read whole
        double skipped = 0;
        tinyllm::detail::for_each_weight(m.weights(), m.weights(), [&](const std::string& name, const auto& t, const auto&) {
            if (name == "embed_positions" || (name == "embed_tokens" && !m.config().tie_word_embeddings))
                skipped += static_cast<double>(t.size()) * sizeof(float);
        });
        return static_cast<double>(m.weight_bytes()) - skipped;
    }
    auto add = [&bytes](const auto& t) { bytes += static_cast<double>(t.size()) * sizeof(*t.data()); };
    const auto& w = m.weights();
    const auto& b = m.weights_bf16();
    const bool tied = m.config().tie_word_embeddings;
    // Float tensors (the matrices are empty here when they are held in bf16).
    tinyllm::detail::for_each_weight(w, w, [&](const std::string& name, const auto& t, const auto&) {
        if (name == "embed_positions" || (name == "embed_tokens" && !tied)) return;  // one row read per token
        add(t);
    });
    // bf16 matrices (all empty when the model holds float32 weights).
    if (!b.layers.empty())
        tinyllm::detail::for_each_matrix(w, b, [&](const auto&, const auto& t16) {
            if (static_cast<const void*>(&t16) != &b.embed || tied) add(t16);  // an untied embed: one row
        });
    return bytes;
}

// Multiply-adds x 2 of one forward call over `fed` new tokens after `past` cached ones,
// projecting only the last onto the vocabulary (forward_last): the linear layers per
// token, the attention's scores and weighted sums over the keys each token sees, and
// the output projection once. For the roofline picture (tools/plot-roofline).
double forward_flops(const tinyllm::model_config& c, index_t past, index_t fed) {
    const double D = static_cast<double>(c.hidden_size), F = static_cast<double>(c.intermediate_size);
    const double q = static_cast<double>(c.num_heads * c.head_dim), kv = static_cast<double>(c.num_kv_heads * c.head_dim);
    const double mlp = c.arch == tinyllm::model_arch::gpt2 ? 2.0 * D * F : 3.0 * D * F;
    const double per_token = static_cast<double>(c.num_layers) * (D * (q + 2.0 * kv) + q * D + mlp);
    double keys = 0;  // sum over the fed tokens of the keys each sees (causal)
    for (index_t t = 0; t < fed; ++t) keys += static_cast<double>(past + t + 1);
    const double attention = static_cast<double>(c.num_layers) * 2.0 * q * keys;
    return 2.0 * (per_token * static_cast<double>(fed) + attention +
                  static_cast<double>(c.vocab_size) * D);
}

// The best of 5 wall-clock times of body(first, last) run on cpu::num_threads()
// threads, thread i given elements [n i / threads, n (i + 1) / threads).
template <class Body>
double best_threaded_seconds(std::size_t n, const Body& body) {
    const auto threads = static_cast<std::size_t>(std::max(1, tinyllm::cpu::num_threads()));
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> pool;
        for (std::size_t i = 0; i < threads; ++i)
            pool.emplace_back([&, i] { body(n * i / threads, n * (i + 1) / threads); });
        for (auto& t : pool) t.join();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

// Bytes read + written per second copying 1 GiB, each thread its own slice: what
// the memory system moves.
double copy_bandwidth() {
    static const double rate = [] {
        const std::size_t n = std::size_t{1} << 28;  // floats: 1 GiB
        std::vector<float> src(n, 1.0f), dst(n, 0.0f);
        const double seconds = best_threaded_seconds(n, [&](std::size_t first, std::size_t last) {
            std::memcpy(dst.data() + first, src.data() + first, (last - first) * sizeof(float));
        });
        benchmark::DoNotOptimize(dst.data());
        return 2.0 * static_cast<double>(n) * sizeof(float) / seconds;
    }();
    return rate;
}

// Bytes read per second summing 1 GiB of floats, each thread its own slice: a stream
// that only reads, as a decode step's weights are read. On the development machine it
// is lower than half the copy rate above would suggest (glibc's large memcpy writes with
// non-temporal stores), so the rows report their weight traffic against both.
double read_bandwidth() {
    static const double rate = [] {
        const std::size_t n = std::size_t{1} << 28;  // floats: 1 GiB
        const std::vector<float> src(n, 1.0f);
        std::atomic<float> sink{0.0f};
        const double seconds = best_threaded_seconds(n, [&](std::size_t first, std::size_t last) {
            float lanes[16] = {};  // 16 independent sums: the loads, not the adds, set the pace
            std::size_t j = first;
            for (; j + 16 <= last; j += 16)
                for (std::size_t l = 0; l < 16; ++l) lanes[l] += src[j + l];
            for (; j < last; ++j) lanes[0] += src[j];
            float total = 0;
            for (float x : lanes) total += x;
            sink.store(total);
        });
        benchmark::DoNotOptimize(sink.load());
        return static_cast<double>(n) * sizeof(float) / seconds;
    }();
    return rate;
}

void copy_bandwidth_row(benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(copy_bandwidth());
    state.counters["GB/s"] = copy_bandwidth() / 1e9;
    state.counters["read_GB/s"] = read_bandwidth() / 1e9;
    state.counters["threads"] = tinyllm::cpu::num_threads();
}

// Prompt r of a batch: `length` token ids spread over the vocabulary.
std::vector<std::int32_t> prompt_of(const model& m, index_t r, index_t length) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(length));
    for (index_t t = 0; t < length; ++t)
        ids[static_cast<std::size_t>(t)] =
            static_cast<std::int32_t>((1000 + 7919 * r + 104729 * t) % m.config().vocab_size);
    return ids;
}

// The greedy choice from the last row of a forward's logits (n, V).
std::int32_t argmax_last(const tinyllm::tensor<float, 2>& logits) {
    const index_t last = logits.extent(0) - 1;
    index_t best = 0;
    for (index_t i = 1; i < logits.extent(1); ++i)
        if (logits(last, i) > logits(last, best)) best = i;
    return static_cast<std::int32_t>(best);
}

// Prefill: a prompt of T tokens fed in one forward into a fresh session, keeping the
// last position's logits (forward_last, as generate and transformers' generate() do).
// range(0) = T.
void prefill(benchmark::State& state, const model& (*get)()) {
    const model& m = get();  // built outside the timed loop
    const index_t T = state.range(0);
    const auto prompt = prompt_of(m, 0, T);
    for (auto _ : state) {
        auto session = m.new_session(T);
        auto logits = m.forward_last(session, prompt);  // as generate: the last position's logits
        benchmark::DoNotOptimize(logits.data());
    }
    state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(T * state.iterations()),
                                                    benchmark::Counter::kIsRate);
    const double flops = forward_flops(m.config(), 0, T);
    state.counters["GFLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) / 1e9,
                                                   benchmark::Counter::kIsRate);
    state.counters["flop_per_byte"] = flops / weight_bytes_per_token(m);  // each weight read once per call
}

// Decode: an untimed prefill of a T-token prompt, then S timed decode steps, each
// feeding the greedy choice of the step before. range(0) = T, range(1) = S.
void decode(benchmark::State& state, const model& (*get)()) {
    const model& m = get();
    const index_t T = state.range(0), S = state.range(1);
    const auto prompt = prompt_of(m, 0, T);
    const double bytes = weight_bytes_per_token(m), bandwidth = copy_bandwidth();
    double seconds = 0;
    for (auto _ : state) {
        state.PauseTiming();
        auto session = m.new_session(T + S);
        std::int32_t token = argmax_last(m.forward_last(session, prompt));
        state.ResumeTiming();
        const auto t0 = std::chrono::steady_clock::now();
        for (index_t step = 0; step < S; ++step)
            token = argmax_last(m.forward_last(session, std::span<const std::int32_t>(&token, 1)));
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        benchmark::DoNotOptimize(token);
    }
    const double tokens = static_cast<double>(S * state.iterations());
    state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
    state.counters["weight_GB/s"] = bytes * tokens / seconds / 1e9;
    state.counters["of_floor"] = (bytes / bandwidth) / (seconds / tokens);
    state.counters["of_read_floor"] = (bytes / read_bandwidth()) / (seconds / tokens);
    const double flops = forward_flops(m.config(), T + S / 2, 1);  // a middle step
    state.counters["GFLOP/s"] = flops * tokens / seconds / 1e9;
    state.counters["flop_per_byte"] = flops / bytes;
}

// The small GPT-2 of the training rows: d = 256, 6 layers of 8 heads, FFN 1024, 64
// positions and a 4096-token vocabulary — 5.8M parameters, a size a laptop trains.
tinyllm::model_config gpt2_6m() {
    tinyllm::model_config c = tinyllm::model_shapes::gpt2_124m();
    c.vocab_size = 4096;
    c.hidden_size = 256;
    c.num_layers = 6;
    c.num_heads = c.num_kv_heads = 8;
    c.head_dim = 32;
    c.intermediate_size = 1024;
    c.max_positions = 64;
    return c;
}

// One training step of gpt2_6m on a batch of B = 4 rows of T = 64 tokens: the forward
// and backward pass (model::forward_backward) and an AdamW update of every weight
// (torch.optim.AdamW's defaults, lr 1e-3). range(0): 1 = the blocked kernels, 0 = the references.
void train_step(benchmark::State& state) {
    const tinyllm::model_config c = gpt2_6m();
    model m(c, tinyllm::random_model_weights(c, 6));
    if (state.range(0) == 0) m.set_kernels(model::kernels::reference);
    const index_t B = 4, T = 64;
    tinyllm::tensor<std::int32_t, 2> tokens(tinyllm::extents<2>{B, T}), targets(tinyllm::extents<2>{B, T});
    for (index_t i = 0; i < B * T; ++i) tokens.data()[i] = static_cast<std::int32_t>((7919 * i + 13) % c.vocab_size);
    for (index_t i = 0; i < B * T; ++i) targets.data()[i] = i % T == T - 1 ? -100 : tokens.data()[i + 1];
    tinyllm::model_weights grads = tinyllm::zeros_like(m.weights());
    const auto params = tinyllm::model_parameters(m.weights(), grads);
    auto adam_state = tinyllm::cpu::make_adamw_state(params);
    const tinyllm::adamw_config adam;
    double loss = 0;
    // Three untimed steps first, as the PyTorch baseline takes (the first steps
    // also fault in the activations' memory); not for the slow reference.
    for (int i = 0; state.range(0) == 1 && i < 3; ++i) {
        m.forward_backward(grads, tokens.view(), targets.view());
        tinyllm::cpu::adamw_step(params, adam_state, adam);
    }
    for (auto _ : state) {
        loss = m.forward_backward(grads, tokens.view(), targets.view()).total;
        tinyllm::cpu::adamw_step(params, adam_state, adam);
    }
    state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(B * T * state.iterations()),
                                                    benchmark::Counter::kIsRate);
    state.counters["loss"] = loss;
}

}  // namespace

BENCHMARK(copy_bandwidth_row)->Name("copy_bandwidth")->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// GPT-2 124M: about 0.25 GFLOP per token; 0.50 GB of float weights read per decoded token.
BENCHMARK_CAPTURE(prefill, gpt2_124m_f32, gpt2_f32)
    ->ArgName("prompt")->Arg(128)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(prefill, gpt2_124m_bf16, gpt2_bf16)
    ->ArgName("prompt")->Arg(128)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, gpt2_124m_f32, gpt2_f32)
    ->ArgNames({"prompt", "steps"})->Args({128, 32})->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, gpt2_124m_bf16, gpt2_bf16)
    ->ArgNames({"prompt", "steps"})->Args({128, 32})->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
// Quantized matrices (round to nearest, tinyllm/quantize.hpp): int8 and int4 in groups of 64.
BENCHMARK_CAPTURE(decode, gpt2_124m_int8, gpt2_int8)
    ->ArgNames({"prompt", "steps"})->Args({128, 32})->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, gpt2_124m_int4_g64, gpt2_int4)
    ->ArgNames({"prompt", "steps"})->Args({128, 32})->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(prefill, gpt2_124m_reference, gpt2_reference)
    ->ArgName("prompt")->Arg(32)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, gpt2_124m_reference, gpt2_reference)
    ->ArgNames({"prompt", "steps"})->Args({16, 4})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// Llama-3.2-1B's shape: about 2.5 GFLOP per token; 5.0 GB of float weights per decoded token.
BENCHMARK_CAPTURE(prefill, llama_1b_f32, llama_f32)
    ->ArgName("prompt")->Arg(128)->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(prefill, llama_1b_bf16, llama_bf16)
    ->ArgName("prompt")->Arg(128)->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, llama_1b_f32, llama_f32)
    ->ArgNames({"prompt", "steps"})->Args({128, 8})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, llama_1b_bf16, llama_bf16)
    ->ArgNames({"prompt", "steps"})->Args({128, 8})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, llama_1b_int8, llama_int8)
    ->ArgNames({"prompt", "steps"})->Args({128, 8})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, llama_1b_int4_g64, llama_int4)
    ->ArgNames({"prompt", "steps"})->Args({128, 8})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(prefill, llama_1b_reference, llama_reference)
    ->ArgName("prompt")->Arg(4)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// Training: one step (forward, backward, AdamW) of the 5.8M-parameter GPT-2, B = 4, T = 64.
BENCHMARK(train_step)
    ->Name("train_step/gpt2_6m_b4_t64_blocked")->Arg(1)->Iterations(10)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(train_step)
    ->Name("train_step/gpt2_6m_b4_t64_reference")->Arg(0)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
