// tests/support/fixtures.hpp — the Hugging Face fixtures of ../shared/fixtures/hf
// (tiny GPT-2, Llama and Mixtral checkpoints with transformers' outputs), for
// the CPU and the CUDA model tests. Tests skip cleanly when they are absent.
//
// Where (the first that holds the fixture): $TINYLLM_GPU_DATA/shared (the
// git-ignored copy tools/gpu-check points to on a GPU machine, where ../shared
// is absent), $TINYLLM_SHARED_DIR (CTest sets it to the checkout's ../shared),
// ../shared from the working directory.
#pragma once

#include <tinyllm/detail/json.hpp>
#include <tinyllm/model.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace tinyllm_test {

// The fixture's folder, or "" when it is not there.
inline std::string fixture_dir(const std::string& name) {
    std::vector<std::filesystem::path> roots;
    if (const char* data = std::getenv("TINYLLM_GPU_DATA"); data && *data) roots.push_back(std::filesystem::path(data) / "shared");
    if (const char* shared = std::getenv("TINYLLM_SHARED_DIR"); shared && *shared) roots.push_back(shared);
    roots.push_back("../shared");
    for (const auto& root : roots) {
        const auto dir = root / "fixtures" / "hf" / name;
        if (std::filesystem::exists(dir / "config.json")) return dir.string();
    }
    return "";
}

inline std::vector<std::int32_t> ids_of(const tinyllm::json::value& array) {
    std::vector<std::int32_t> ids;
    for (const auto& v : array.as_array()) ids.push_back(static_cast<std::int32_t>(v.as_int64()));
    return ids;
}

inline std::vector<double> doubles_of(const tinyllm::json::value& array) {
    std::vector<double> out;
    for (const auto& v : array.as_array()) out.push_back(v.as_double());
    return out;
}

// A small random-model config of `arch` for training tests: 2 layers of 4 query
// heads (2 key/value heads for Llama and Mixtral; Mixtral's 4 experts route 2 per
// token), RoPE over the whole head in halves, the given sizes.
inline tinyllm::model_config small_model_config(tinyllm::model_arch arch, tinyllm::index_t vocab, tinyllm::index_t hidden,
                                                tinyllm::index_t head_dim, tinyllm::index_t ffn, tinyllm::index_t positions,
                                                bool tied) {
    tinyllm::model_config c;
    c.arch = arch;
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = arch == tinyllm::model_arch::gpt2 ? 4 : 2;
    c.head_dim = head_dim;
    c.intermediate_size = ffn;
    c.max_positions = positions;
    c.tie_word_embeddings = tied;
    c.num_experts = arch == tinyllm::model_arch::mixtral ? 4 : 0;
    c.experts_per_token = arch == tinyllm::model_arch::mixtral ? 2 : 0;
    c.rope.rotary_dim = head_dim;
    c.rope.pairing = tinyllm::rope_pairing::rotate_half;
    return c;
}

}  // namespace tinyllm_test
