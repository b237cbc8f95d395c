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
//
// Backward (training; derivation in docs/training.md). The lookup is linear in
// the table: out[b, t, :] = scale * E[ids[b, t], :] is the one-hot product
// onehot(ids) E, so the table's gradient is onehot(ids)^T dout — every row of
// dout added into the table row its token read:
//
//     dE[v, :] = scale * sum_{(b, t) : ids[b, t] = v} dout[b, t, :]
//
// a scatter-add. Rows of tokens absent from the batch get zero. A token that
// occurs many times (a frequent word, padding) sums many rows, so the order of
// the additions decides the rounding; embedding_backward groups the positions
// by id (a stable counting sort: ids in increasing order, each id's positions
// in token order), sums each group in double in token order and rounds once.
// The CUDA kernel (<tinyllm/cuda/embedding.cuh>) sums in the same order, so it
// needs no float atomics and is bit-reproducible. With `accumulate`, the sums
// are added to dE instead of overwriting it: GPT-2 ties its output projection
// (lm_head) to the token embedding, so dE receives the projection's gradient
// (linear_backward's dweight) and the lookup's, added. There is no gradient
// with respect to the ids (they are integers).
#pragma once

#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tinyllm::detail {

// The memory of the embedding's output (CPU and CUDA): rows of the table are
// copied into it while other rows may still be read, so out has an address
// for each element and is apart from the table and the ids. The backward's
// dtable likewise, apart from dout and the ids.
template <class O, class I, class Table>
void expect_embedding_memory(std::string_view op, const O& out, const I& ids, const Table& table) {
    expect_distinct_elements(op, "out", out);
    expect_apart(op, "out", out, "the table", table);
    expect_apart(op, "out", out, "ids", ids);
}
template <class G, class I, class DOut>
void expect_scatter_memory(std::string_view op, const G& dtable, const I& ids, const DOut& dout) {
    expect_distinct_elements(op, "dtable", dtable);
    expect_apart(op, "dtable", dtable, "dout", dout);
    expect_apart(op, "dtable", dtable, "ids", ids);
}

}  // namespace tinyllm::detail

namespace tinyllm::cpu {

// out (B, T, D) = scale * table[ids] with ids (B, T) of any integer type and
// table (V, D); T is float, bfloat16 or float16.
template <class T, class Id>
void embedding(tensor_view<T, 3> out /*(B, T, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
               tensor_view<const T, 2> table /*(V, D)*/, float scale = 1.0f) {
    static_assert(std::is_integral_v<Id>, "embedding: ids must have an integer type");
    TINYLLM_EXPECT(std::isfinite(scale), "embedding: scale = ", scale, " must be finite");
    TINYLLM_EXPECT(out.extent(0) == ids.extent(0) && out.extent(1) == ids.extent(1),
                   "embedding: out has shape ", to_string(out.shape()), " but ids ", to_string(ids.shape()),
                   " (out must be (B, T, D) for ids (B, T))");
    TINYLLM_EXPECT(out.extent(2) == table.extent(1), "embedding: out has width ", out.extent(2),
                   " but the table has rows of ", table.extent(1));
    tinyllm::detail::expect_embedding_memory("embedding", out, ids, table);
    const index_t V = table.extent(0);
    for (index_t b = 0; b < ids.extent(0); ++b)
        for (index_t t = 0; t < ids.extent(1); ++t) {
            const auto id = ids(b, t);
            TINYLLM_EXPECT(std::cmp_greater_equal(id, 0) && std::cmp_less(id, V), "embedding: ids(", b, ", ", t,
                           ") = ", +id, " is outside the vocabulary [0, ", V, ")");
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
// leading dimensions, which must equal ids' shape, split the same way. `out_name`
// names out in errors (the backward's is dout).
template <class T, class Id, tensor_like Out, tensor_like Ids>
std::pair<tensor_view<T, 3>, tensor_view<const Id, 2>> embedding_as_3d(Out&& out, const Ids& ids, std::string_view op,
                                                                         std::string_view out_name = "out") {
    const auto o = as_view(out);
    const auto i = as_view(ids);
    constexpr std::size_t R = decltype(i)::rank;
    static_assert(decltype(o)::rank == R + 1, "embedding: out must have one dimension more than ids: (..., D) for ids (...)");
    bool same = true;
    for (std::size_t d = 0; d < R; ++d) same = same && o.extent(d) == i.extent(d);
    if (!same)
        throw error(cat("tinyllm: ", op, ": ", out_name, " has shape ", to_string(o.shape()), " but ids ",
                        to_string(i.shape()), " (", out_name,
                        " must be (..., D) for ids (...), with the same leading dimensions)"));
    const tensor_view<const Id, 2> ids2 = as_rows<const Id>(ids, cat(op, ": ids"));  // (B, T)
    const tensor_view<T, 2> rows = as_rows<T>(out, cat(op, ": ", out_name));      // (B * T, D)
    const index_t B = ids2.extent(0), Tn = ids2.extent(1);
    const tensor_view<T, 3> out3(rows.data(), {B, Tn, rows.extent(1)},
                                 {rows.stride(0) * Tn, rows.stride(0), rows.stride(1)});  // (B, T, D)
    return {out3, ids2};
}

// The id type of an ids argument (its element type without const).
template <class Ids>
using id_type_t = std::remove_const_t<typename view_of_t<const Ids&>::element_type>;

// The flat positions i = b * T + t of a (B, T) array of ids grouped by id: a
// stable counting sort. The positions of id v are order[offsets[v]] ..
// order[offsets[v + 1] - 1], in increasing (token) order.
struct positions_by_id {
    std::vector<index_t> offsets;  // (V + 1)
    std::vector<index_t> order;    // (B * T)
};

// Every id is checked first (the first one outside [0, V) is reported as
// "<op>: <what>(b, t) = id is outside <range> [0, V)"), so a bad id throws
// before anything is written.
template <class Id>
positions_by_id group_positions_by_id(tensor_view<const Id, 2> ids /*(B, T)*/, index_t V, std::string_view op,
                                      std::string_view what, std::string_view range) {
    const index_t B = ids.extent(0), Tn = ids.extent(1);
    positions_by_id g;
    g.offsets.assign(static_cast<std::size_t>(V + 1), 0);
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < Tn; ++t) {
            const auto id = ids(b, t);
            if (!(std::cmp_greater_equal(id, 0) && std::cmp_less(id, V)))  // any integer type, unsigned too
                throw error(cat("tinyllm: ", op, ": ", what, "(", b, ", ", t, ") = ", +id, " is outside ", range,
                                " [0, ", V, ")"));
            ++g.offsets[static_cast<std::size_t>(id) + 1];  // histogram, shifted by one
        }
    for (index_t v = 0; v < V; ++v) g.offsets[static_cast<std::size_t>(v + 1)] += g.offsets[static_cast<std::size_t>(v)];
    g.order.resize(static_cast<std::size_t>(B * Tn));
    std::vector<index_t> next(g.offsets.begin(), g.offsets.end() - 1);  // the next free place of each id
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < Tn; ++t)
            g.order[static_cast<std::size_t>(next[static_cast<std::size_t>(ids(b, t))]++)] = b * Tn + t;
    return g;
}

// The scatter-add shared by embedding_backward and learned_positions_backward:
//     dtable(v, :) = scale * sum_{(b, t) : ids(b, t) = v} dout(b, t, :)   (+ dtable(v, :) with accumulate)
// each row summed in double in token order and rounded once.
template <class T, class Id>
void scatter_add_rows(tensor_view<T, 2> dtable /*(V, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
                      tensor_view<const T, 3> dout /*(B, T, D)*/, float scale, bool accumulate, std::string_view op,
                      std::string_view what, std::string_view range) {
    static_assert(std::is_integral_v<Id>, "embedding_backward: ids must have an integer type");
    if (dout.extent(0) != ids.extent(0) || dout.extent(1) != ids.extent(1))
        throw error(cat("tinyllm: ", op, ": dout has shape ", to_string(dout.shape()), " but ", what, " ",
                        to_string(ids.shape()), " (dout must be (B, T, D) for ", what, " (B, T))"));
    if (dout.extent(2) != dtable.extent(1))
        throw error(cat("tinyllm: ", op, ": dout has width ", dout.extent(2), " but dtable has rows of ",
                        dtable.extent(1), " (dtable must be (V, D) for dout (..., D))"));
    expect_scatter_memory(op, dtable, ids, dout);
    const index_t V = dtable.extent(0), D = dtable.extent(1), Tn = ids.extent(1);
    const positions_by_id g = group_positions_by_id(ids, V, op, what, range);
    std::vector<double> sum(static_cast<std::size_t>(D));
    for (index_t v = 0; v < V; ++v) {
        sum.assign(sum.size(), 0.0);
        for (index_t n = g.offsets[static_cast<std::size_t>(v)]; n < g.offsets[static_cast<std::size_t>(v + 1)]; ++n) {
            const index_t i = g.order[static_cast<std::size_t>(n)], b = i / Tn, t = i % Tn;
            for (index_t d = 0; d < D; ++d) sum[static_cast<std::size_t>(d)] += to_float(dout(b, t, d));
        }
        for (index_t d = 0; d < D; ++d) {
            const double old = accumulate ? static_cast<double>(to_float(dtable(v, d))) : 0.0;
            dtable(v, d) = from_float<T>(static_cast<float>(old + static_cast<double>(scale) * sum[static_cast<std::size_t>(d)]));
        }
    }
}

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

// The backward of embedding: the table's gradient, a scatter-add of dout's rows
// (see the top of this file):
//     dtable(v, :) (+)= scale * sum_{(b, t) : ids(b, t) = v} dout(b, t, :)
// dtable (V, D) is overwritten (rows of ids absent from the batch become 0) or,
// with `accumulate`, added to (a tied lm_head's gradient, micro-batches). ids
// (B, T) of any integer type, dout (B, T, D); T is float, bfloat16 or float16.
// Each row is summed in double in token order and rounded once. An id outside
// [0, V) throws before anything is written.
template <class T, class Id>
void embedding_backward(tensor_view<T, 2> dtable /*(V, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
                        tensor_view<const T, 3> dout /*(B, T, D)*/, float scale = 1.0f, bool accumulate = false) {
    TINYLLM_EXPECT(std::isfinite(scale), "embedding_backward: scale = ", scale, " must be finite (as embedding's)");
    tinyllm::detail::scatter_add_rows<T, Id>(dtable, ids, dout, scale, accumulate, "embedding_backward", "ids",
                                             "the vocabulary");
}

// The same with ids (...) of any rank and dout (..., D) (views or owning tensors).
template <tensor_like DTable, tensor_like Ids, tensor_like DOut>
void embedding_backward(DTable&& dtable /*(V, D)*/, const Ids& ids /*(...)*/, const DOut& dout /*(..., D)*/,
                        float scale = 1.0f, bool accumulate = false) {
    const auto dt = as_view(dtable);
    static_assert(decltype(dt)::rank == 2, "embedding_backward: dtable must be a matrix (V, D)");
    using T = typename decltype(dt)::element_type;
    static_assert(!std::is_const_v<T>, "embedding_backward: dtable is written; it cannot be a view of const");
    using Id = tinyllm::detail::id_type_t<Ids>;
    const auto [dout3, ids2] = tinyllm::detail::embedding_as_3d<const T, Id>(dout, ids, "embedding_backward", "dout");
    embedding_backward<T, Id>(dt, ids2, dout3, scale, accumulate);
}

}  // namespace tinyllm::cpu
