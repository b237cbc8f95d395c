// tinyllm/embedding.hpp — token embedding: token ids -> vectors.
//
// A model's first layer is a table with one row of D numbers per token of the
// vocabulary, E (V, D). The input ids (B, T) become activations (B, T, D) by
// looking up one row per id:
//
//     out[b, t, :] = scale * E[ids[b, t], :]
//
// That is a matrix product with one-hot vectors, done without the zeros.
// `scale` is 1 for GPT-2 and Llama; Gemma multiplies by sqrt(D). Position
// information is added afterwards where a model uses it (positional.hpp:
// add_learned_positions for GPT-2's table, add_sinusoidal; RoPE acts inside
// attention instead).
//
// An id outside [0, V) would read another tensor's memory; it is rejected
// with an error naming the position and the value.
#pragma once

#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <type_traits>

namespace tinyllm::cpu {

// out (B, T, D) = scale * table[ids] with ids (B, T) of any integer type and
// table (V, D); T is float, bfloat16 or float16.
template <class T, class Id>
void embedding(tensor_view<T, 3> out /*(B, T, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
               tensor_view<const T, 2> table /*(V, D)*/, float scale = 1.0f) {
    static_assert(std::is_integral_v<Id>, "embedding: ids must have an integer type");
    TINYLLM_EXPECT(out.extent(0) == ids.extent(0) && out.extent(1) == ids.extent(1),
                   "embedding: out has shape ", to_string(out.shape()), " but ids ", to_string(ids.shape()),
                   " (out must be (B, T, D) for ids (B, T))");
    TINYLLM_EXPECT(out.extent(2) == table.extent(1), "embedding: out has width ", out.extent(2),
                   " but the table has rows of ", table.extent(1));
    const index_t V = table.extent(0);
    for (index_t b = 0; b < ids.extent(0); ++b)
        for (index_t t = 0; t < ids.extent(1); ++t) {
            const auto id = ids(b, t);
            TINYLLM_EXPECT(id >= 0 && static_cast<index_t>(id) < V, "embedding: ids(", b, ", ", t, ") = ",
                           static_cast<long long>(id), " is outside the vocabulary [0, ", V, ")");
            for (index_t d = 0; d < out.extent(2); ++d) {
                const T x = table(static_cast<index_t>(id), d);
                out(b, t, d) = scale == 1.0f ? x : from_float<T>(scale * to_float(x));
            }
        }
}

}  // namespace tinyllm::cpu
