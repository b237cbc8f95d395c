// bench/cpu/bench_model.cpp — tokens per second of the CPU reference model.
//
//   bin/bench_model                                  # every row (about 4 minutes on 2 cores)
//   bin/bench_model --benchmark_filter=gpt2          # GPT-2 rows only (no Llama weights are built)
//
// What is measured. A decoder-only model does two kinds of work:
//   prefill — the whole prompt in one forward pass: T tokens share every weight read,
//             so its cost is arithmetic, about 2 * parameters flops per token;
//   decode  — one token per forward pass after the prompt, reading its KV cache:
//             every weight is read for a single token.
// Both are reported as tokens/s (a Google Benchmark rate counter): prompt tokens
// processed per second for prefill, generated tokens per second for decode (the
// prefill before the decode steps is not timed).
//
// The models are tinyllm::cpu::model with random weights of two real shapes
// (random_model_weights, model_shapes): GPT-2 124M and Llama-3.2-1B (1.24B
// parameters, ~5 GB of float weights, built only when a Llama row runs). Each is
// built once and reused by every row. The CPU reference is float weights, double
// accumulation, naive loops and one thread: it is the readable definition, not a
// fast path, so the prompts are short and each row runs once.
//
// Batch. The CPU reference has no batched forward: a batch of B prompts is B
// sequences run one after another, each with its own KV cache, exactly as
// cpu::generate_batch does. Batch-32 rows therefore show the same tokens/s as
// batch 1 (they are here to be read beside the GPU rows of the same name); they
// use shorter prompts and fewer decode steps to keep the run short.
//
// The GPU comparison — tinyllm's CUDA model against transformers (eager
// attention) at prompt 128, batch 1 and 32, float32 and bfloat16 — lives in
// bench/baselines/model.py and `tinyllm bench model`.
#include <benchmark/benchmark.h>

#include <tinyllm/model.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace {

using tinyllm::index_t;
using tinyllm::cpu::model;

// The models, built on first use (a function-local static each).
const model& gpt2_124m() {
    static const model m(tinyllm::model_shapes::gpt2_124m(),
                         tinyllm::random_model_weights(tinyllm::model_shapes::gpt2_124m(), 124));
    return m;
}

const model& llama_1b() {
    static const model m(tinyllm::model_shapes::llama_1b(),
                         tinyllm::random_model_weights(tinyllm::model_shapes::llama_1b(), 1));
    return m;
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

// Prefill: B prompts of T tokens, each fed in one forward into a fresh session.
// range(0) = B, range(1) = T.
void prefill(benchmark::State& state, const model& (*get)()) {
    const model& m = get();  // built outside the timed loop
    const index_t B = state.range(0), T = state.range(1);
    std::vector<std::vector<std::int32_t>> prompts;
    for (index_t r = 0; r < B; ++r) prompts.push_back(prompt_of(m, r, T));
    for (auto _ : state) {
        for (const auto& prompt : prompts) {  // the batch, one sequence after another
            auto session = m.new_session(T);
            auto logits = m.forward(session, prompt);
            benchmark::DoNotOptimize(logits.data());
        }
    }
    state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(B * T * state.iterations()),
                                                    benchmark::Counter::kIsRate);
}

// Decode: for each of B sequences, an untimed prefill of a T-token prompt, then
// S timed decode steps, each feeding the greedy choice of the step before.
// range(0) = B, range(1) = T, range(2) = S.
void decode(benchmark::State& state, const model& (*get)()) {
    const model& m = get();
    const index_t B = state.range(0), T = state.range(1), S = state.range(2);
    std::vector<std::vector<std::int32_t>> prompts;
    for (index_t r = 0; r < B; ++r) prompts.push_back(prompt_of(m, r, T));
    for (auto _ : state) {
        for (const auto& prompt : prompts) {
            state.PauseTiming();
            auto session = m.new_session(T + S);
            std::int32_t token = argmax_last(m.forward(session, prompt));
            state.ResumeTiming();
            for (index_t step = 0; step < S; ++step)
                token = argmax_last(m.forward(session, std::span<const std::int32_t>(&token, 1)));
            benchmark::DoNotOptimize(token);
        }
    }
    state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(B * S * state.iterations()),
                                                    benchmark::Counter::kIsRate);
}

}  // namespace

// GPT-2 124M: about 0.25 GFLOP per token.
BENCHMARK_CAPTURE(prefill, gpt2_124m, &gpt2_124m)
    ->ArgNames({"batch", "prompt"})
    ->Args({1, 32})
    ->Args({32, 4})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, gpt2_124m, &gpt2_124m)
    ->ArgNames({"batch", "prompt", "steps"})
    ->Args({1, 16, 8})
    ->Args({32, 1, 2})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// Llama-3.2-1B's shape: about 2.5 GFLOP per token.
BENCHMARK_CAPTURE(prefill, llama_1b, &llama_1b)
    ->ArgNames({"batch", "prompt"})
    ->Args({1, 8})
    ->Args({32, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode, llama_1b, &llama_1b)
    ->ArgNames({"batch", "prompt", "steps"})
    ->Args({1, 4, 4})
    ->Args({32, 1, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
