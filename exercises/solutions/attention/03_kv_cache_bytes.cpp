// Reference answer to exercise attention/03_kv_cache_bytes — how much memory the KV cache takes.
//
// While generating, a model keeps every layer's keys and values of all the positions so
// far, so each new token attends without recomputing them (include/tinyllm/attention.hpp,
// kv_cache). Per layer and position it stores one key and one value vector for each of
// the Hkv key/value heads, each of head_dim numbers:
//
//     bytes = 2 (K and V) * L (layers) * context * Hkv * Dh * bytes_per_element
//
// (one sequence). Grouped-query attention (Hkv < Hq) is what shrinks it: Llama-3-8B has
// 32 query heads but 8 key/value heads, a quarter of the cache of full multi-head
// attention. GPT-2 has Hkv = Hq. Mixtral's experts do not change the cache.
//
// Return the bytes for `context` positions of one sequence, elements of
// bytes_per_element bytes (4 for float32, 2 for bfloat16).
//
// Hint: which fields of model_shape matter, and which (vocabulary, MLP width) do not?
//
// Check: exercises_cpu attention/03_kv_cache_bytes (compared with cache_bytes() of a
// session of tinyllm::cpu::model of the same shape).
#include "exercises.hpp"

namespace exercises::attention {

std::int64_t kv_cache_bytes(const model_shape& shape, std::int64_t context, std::int64_t bytes_per_element) {
    return 2 * shape.num_layers * context * shape.num_kv_heads * shape.head_dim * bytes_per_element;
}

}  // namespace exercises::attention
