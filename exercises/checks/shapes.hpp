// exercises/checks/shapes.hpp — random small model shapes for the checks that count a
// model's bytes or parameters, and their conversion to the library's model_config.
#pragma once

#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/model.hpp>

#include <string>

namespace exercises::check {

// kind 0: GPT-2 (MHA, biases, a position table), 1: Llama (GQA), 2: Mixtral (GQA, experts).
inline model_shape random_model_shape(context& ctx, int kind) {
    model_shape s;
    s.arch = kind == 0 ? "gpt2" : kind == 1 ? "llama" : "mixtral";
    s.vocab_size = ctx.integer(16, 300);
    s.num_kv_heads = ctx.integer(1, 4);
    s.num_heads = kind == 0 ? s.num_kv_heads : s.num_kv_heads * ctx.integer(1, 4);
    s.head_dim = 2 * ctx.integer(1, 8);
    s.hidden_size = kind == 0 ? s.num_heads * s.head_dim : ctx.integer(4, 48);
    s.num_layers = ctx.integer(1, 4);
    s.intermediate_size = ctx.integer(4, 64);
    s.max_positions = ctx.integer(8, 128);
    s.num_experts = kind == 2 ? ctx.integer(2, 6) : 0;
    s.tie_word_embeddings = ctx.integer(0, 1) == 1;
    return s;
}

inline std::string describe(const model_shape& s) {
    return s.arch + " (V " + std::to_string(s.vocab_size) + ", D " + std::to_string(s.hidden_size) + ", L " +
           std::to_string(s.num_layers) + ", Hq " + std::to_string(s.num_heads) + ", Hkv " +
           std::to_string(s.num_kv_heads) + ", Dh " + std::to_string(s.head_dim) + ", F " +
           std::to_string(s.intermediate_size) + ", max positions " + std::to_string(s.max_positions) +
           (s.num_experts ? ", E " + std::to_string(s.num_experts) : std::string()) +
           (s.tie_word_embeddings ? ", tied" : ", untied") + ")";
}

inline tinyllm::model_config to_config(const model_shape& s) {
    tinyllm::model_config c;
    c.arch = s.arch == "gpt2"    ? tinyllm::model_arch::gpt2
             : s.arch == "llama" ? tinyllm::model_arch::llama
                                 : tinyllm::model_arch::mixtral;
    c.vocab_size = s.vocab_size;
    c.hidden_size = s.hidden_size;
    c.num_layers = s.num_layers;
    c.num_heads = s.num_heads;
    c.num_kv_heads = s.num_kv_heads;
    c.head_dim = s.head_dim;
    c.intermediate_size = s.intermediate_size;
    c.max_positions = s.max_positions;
    c.num_experts = s.num_experts;
    c.experts_per_token = s.num_experts ? 2 : 0;
    c.tie_word_embeddings = s.tie_word_embeddings;
    c.rope.rotary_dim = s.head_dim;
    return c;
}

}  // namespace exercises::check
