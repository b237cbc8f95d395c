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
// Shapes: ids (...) of any rank — (B, T), one sequence (T), (B, K, T), ... —
// and out (..., D) with the same leading dimensions, as views or owning tensors.
// The (B, T) function below is the definition; the overload after it sees any
// ids as (B, T) (leading dimensions merged, a vector as one sequence) and calls it.
//
// An id outside [0, V) would read another tensor's memory; it is rejected
// with an error naming the position and the value.
#pragma once

#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <string_view>
#include <type_traits>
#include <utility>

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

namespace tinyllm::detail {

// ids (...) and out (..., D) of an embedding as (B, T) and (B, T, D): the leading
// dimensions of ids merged into B (a vector of ids is one sequence, B = 1), out's
// leading dimensions, which must equal ids' shape, split the same way.
template <class T, class Id, tensor_like Out, tensor_like Ids>
std::pair<tensor_view<T, 3>, tensor_view<const Id, 2>> embedding_as_3d(Out&& out, const Ids& ids,
                                                                         std::string_view op) {
    const auto o = as_view(out);
    const auto i = as_view(ids);
    constexpr std::size_t R = decltype(i)::rank;
    static_assert(decltype(o)::rank == R + 1, "embedding: out must have one dimension more than ids: (..., D) for ids (...)");
    bool same = true;
    for (std::size_t d = 0; d < R; ++d) same = same && o.extent(d) == i.extent(d);
    if (!same)
        throw error(cat("tinyllm: ", op, ": out has shape ", to_string(o.shape()), " but ids ", to_string(i.shape()),
                        " (out must be (..., D) for ids (...), with the same leading dimensions)"));
    const tensor_view<const Id, 2> ids2 = as_rows<const Id>(ids, cat(op, ": ids"));  // (B, T)
    const tensor_view<T, 2> rows = as_rows<T>(out, cat(op, ": out"));             // (B * T, D)
    const index_t B = ids2.extent(0), Tn = ids2.extent(1);
    const tensor_view<T, 3> out3(rows.data(), {B, Tn, rows.extent(1)},
                                 {rows.stride(0) * Tn, rows.stride(0), rows.stride(1)});  // (B, T, D)
    return {out3, ids2};
}

// The id type of an ids argument (its element type without const).
template <class Ids>
using id_type_t = std::remove_const_t<typename view_of_t<const Ids&>::element_type>;

}  // namespace tinyllm::detail

namespace tinyllm::cpu {

// out (..., D) = scale * table[ids] with ids (...) of any rank (views or owning tensors).
template <tensor_like Out, tensor_like Ids, tensor_like Table>
void embedding(Out&& out /*(..., D)*/, const Ids& ids /*(...)*/, const Table& table /*(V, D)*/, float scale = 1.0f) {
    using T = std::remove_const_t<typename view_of_t<Out>::element_type>;
    using Id = tinyllm::detail::id_type_t<Ids>;
    const auto [out3, ids2] = tinyllm::detail::embedding_as_3d<T, Id>(out, ids, "embedding");
    const auto t = as_view(table);
    static_assert(decltype(t)::rank == 2, "embedding: the table must be a matrix (V, D)");
    embedding<T, Id>(out3, ids2, tensor_view<const T, 2>(t), scale);
}

}  // namespace tinyllm::cpu
