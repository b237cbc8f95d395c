// examples/tinyllm/bench_sampling.hpp — what `tinyllm bench greedy|temperature|
// top_k|top_p|min_p` runs, shared by the CPU rows (bench_sampling.cpp) and the
// CUDA rows (bench_sampling.cu).
//
// B = 64 rows of V float logits (--size V, default 128256, Llama 3's vocabulary;
// 5003 on the simulated GPU, for the CPU and the CUDA rows alike),
// uniform in [-8, 8) from Philox seed 1234. Bytes = the floor: the logits read
// once (4·B·V; ~33 MB, ~11 µs on an H100) — the tokens written are negligible.
// Every row's check: the tokens are IDENTICAL to the CPU reference's.
// PyTorch on the same shapes: bench/baselines/sampling.py.
#pragma once

#include "registry.hpp"

#include <tinyllm/random.hpp>
#include <tinyllm/sampling.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tinyllm_cli::sampling_bench {

inline constexpr tinyllm::index_t rows = 64;
inline constexpr std::uint64_t seed = 2026, step = 3;

struct setting {
    const char* component;
    const char* description;
    tinyllm::sampling::params params;
};

inline std::vector<setting> settings() {
    std::vector<setting> s(5);
    s[0] = {"greedy", "argmax of B=64 rows of V logits (--size V, default 128256; simulated GPU 5003)", {}};
    s[0].params.temperature = 0.0f;
    s[1] = {"temperature", "temperature 0.7 + multinomial draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", {}};
    s[1].params.temperature = 0.7f;
    s[2] = {"top_k", "top-k 50 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", {}};
    s[2].params.top_k = 50;
    s[3] = {"top_p", "top-p 0.9 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", {}};
    s[3].params.top_p = 0.9f;
    s[4] = {"min_p", "min-p 0.1 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", {}};
    s[4].params.min_p = 0.1f;
    return s;
}

// On the simulated GPU V = 5003: like 128256, not a multiple of the 512 threads of a row's block.
inline tinyllm::index_t vocab(const bench_context& ctx) { return ctx.size_or(128256, 5003); }

inline std::string shape(tinyllm::index_t V) { return "B=" + std::to_string(rows) + ",V=" + std::to_string(V); }

inline std::vector<float> logits(tinyllm::index_t V) {
    std::vector<float> z(static_cast<std::size_t>(rows * V));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(z.data(), {rows * V}), 1234, -8.0f, 8.0f);
    return z;
}

// The CPU reference's tokens.
inline std::vector<tinyllm::token_id> reference(const std::vector<float>& z, tinyllm::index_t V,
                                           const tinyllm::sampling::params& p) {
    std::vector<tinyllm::token_id> out(static_cast<std::size_t>(rows));
    tinyllm::cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(out.data(), {rows}),
                         tinyllm::tensor_view<const float, 2>(z.data(), {rows, V}), p, seed, step);
    return out;
}

inline std::string compare_tokens(const std::vector<tinyllm::token_id>& got, const std::vector<tinyllm::token_id>& want,
                                  bool& agrees) {
    std::size_t same = 0;
    for (std::size_t i = 0; i < want.size(); ++i) same += got[i] == want[i];
    agrees = same == want.size();
    return (agrees ? "identical tokens " : "tokens differ: ") + std::to_string(same) + "/" +
           std::to_string(want.size());
}

}  // namespace tinyllm_cli::sampling_bench
