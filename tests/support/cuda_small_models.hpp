// tests/support/cuda_small_models.hpp — what the CUDA model's tests share: the
// small random-model configurations they run (two layers, head dim 64, a
// 1000-token vocabulary; the architectures' real paths at a size the simulated
// GPU runs in seconds), their names, and the copy of device logits rows to the host.
#pragma once

#include <tinyllm/model.hpp>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <vector>

namespace tinyllm_test {

// Llama-3.2's paths (RMSNorm, llama3 RoPE, SwiGLU), GQA 2:1; Mixtral adds 8 experts, top-2.
inline tinyllm::model_config small_config(tinyllm::model_arch arch) {
    tinyllm::model_config c = tinyllm::model_shapes::llama_1b();
    c.arch = arch;
    c.vocab_size = 1000;
    c.hidden_size = 256;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.intermediate_size = 512;
    c.max_positions = 256;
    c.tie_word_embeddings = false;
    if (arch == tinyllm::model_arch::mixtral) {
        c.num_experts = 8;
        c.experts_per_token = 2;
    }
    return c;
}

// GPT-2's paths (LayerNorm, learned positions, biases, GELU MLP, multi-head), as small.
inline tinyllm::model_config small_gpt2_config() {
    tinyllm::model_config c = tinyllm::model_shapes::gpt2_124m();
    c.vocab_size = 1000;
    c.num_layers = 2;
    c.hidden_size = 256;
    c.num_heads = c.num_kv_heads = 4;
    c.head_dim = 64;
    c.intermediate_size = 1024;
    c.max_positions = 256;
    return c;
}

// An architecture's name, for test messages.
inline const char* arch_name(tinyllm::model_arch a) {
    return a == tinyllm::model_arch::gpt2 ? "gpt2" : a == tinyllm::model_arch::llama ? "llama" : "mixtral";
}

// The small configuration of an architecture.
inline tinyllm::model_config small_model_config(tinyllm::model_arch arch) {
    return arch == tinyllm::model_arch::gpt2 ? small_gpt2_config() : small_config(arch);
}

// Rows [first, first + count) of device logits (rows, V), on the host.
inline std::vector<float> host_rows(tinyllm::tensor_view<const float, 2> d, tinyllm::index_t first,
                                    tinyllm::index_t count) {
    std::vector<float> h(static_cast<std::size_t>(count * d.extent(1)));
    TINYLLM_CUDA_CHECK(cudaMemcpy(h.data(), d.data() + first * d.extent(1), h.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost));
    return h;
}

}  // namespace tinyllm_test
