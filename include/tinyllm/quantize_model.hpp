// tinyllm/quantize_model.hpp — weight quantization applied to a whole model:
// which matrices are quantized, and the model with its matrices rounded to a
// format (the quality a quantized model has, measured with the float code).
//
// Which matrices. Every matrix a decoded token reads whole goes through a
// quantized linear layer: the attention projections (Wq, Wk, Wv, Wo), the MLP
// (GPT-2's fc and proj, Llama's gate, up and down, each Mixtral expert's w1, w3
// and w2 — one quantized matrix per expert) and an untied output projection.
// They are nearly all of a model's bytes. These stay float, as in GPTQ's and
// AWQ's checkpoints:
//   * the token embedding: a token reads one row of it, not the matrix;
//     a TIED output projection is the same tensor and stays float with it;
//   * GPT-2's position table (one row per token), the norms' weights and all
//     biases (vectors);
//   * Mixtral's router (E x D, small; its logits choose the experts, and a
//     rounding that flips a choice changes the computation, not just a value).
//
// round_model_weights(w, spec) replaces each of those matrices by its
// dequantized round-to-nearest form W^ = dequantize(quantize_rtn(W)). A model
// built from the result computes exactly what a model running the quantized
// kernels computes, up to float summation order — which is how the quality
// cost of a format is measured before (and independently of) the kernels that
// make it fast.
#pragma once

#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>

#include <string>
#include <type_traits>

namespace tinyllm {

// What rounding a model's matrices to a format touched.
struct quantization_summary {
    index_t matrices = 0;          // quantized matrices (each Mixtral expert's counts once per matrix)
    index_t weights = 0;           // their elements
    index_t quantized_bytes = 0;   // their storage in the format (values, scales, zero points)
    index_t float_bytes_kept = 0;  // bytes of everything left in float32 (embeddings, norms, biases, router)
    double bits_per_weight() const { return weights ? 8.0 * static_cast<double>(quantized_bytes) / static_cast<double>(weights) : 0.0; }
};

namespace detail {

// Calls f(name, matrix) for each matrix that is quantized (see the top), and
// g(bytes) for the float32 bytes of every tensor that is not. W is model_weights
// (f may change the matrices) or const model_weights (f only reads them).
template <class W, class F, class G>
void for_each_quantized_matrix(W& w, F&& f, G&& kept) {
    auto keep = [&](const auto& t) { kept(static_cast<index_t>(sizeof(float)) * t.size()); };
    keep(w.embed), keep(w.positions), keep(w.final_norm_weight), keep(w.final_norm_bias);
    if (w.lm_head.size()) f(std::string("lm_head"), w.lm_head);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
        auto& L = w.layers[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        keep(L.attn_norm_weight), keep(L.attn_norm_bias), keep(L.ffn_norm_weight), keep(L.ffn_norm_bias);
        keep(L.bq), keep(L.bk), keep(L.bv), keep(L.bo), keep(L.fc_bias), keep(L.proj_bias), keep(L.router);
        for (const auto& [name, member, dense] : layer_matrix_members)  // the model's own list (model.hpp)
            if ((L.*dense).size()) f(p + name, L.*dense);
        for (auto [name, experts] : {std::pair{"w1", &L.w1}, {"w3", &L.w3}, {"w2", &L.w2}}) {
            if (!experts->size()) continue;
            const index_t E = experts->extent(0), rows = experts->extent(1), cols = experts->extent(2);
            for (index_t e = 0; e < E; ++e) {
                // Expert e's matrix as its own (rows, cols) tensor, written back after f.
                tensor<float, 2> m(extents<2>{rows, cols});
                std::copy_n(experts->data() + e * rows * cols, rows * cols, m.data());
                f(p + "experts." + std::to_string(e) + "." + name, m);
                if constexpr (!std::is_const_v<W>) std::copy_n(m.data(), rows * cols, experts->data() + e * rows * cols);
            }
        }
    }
}

}  // namespace detail

// Bytes of all of `w`'s tensors in float32.
inline index_t float32_bytes(const model_weights& w) {
    index_t bytes = 0;
    detail::for_each_quantized_matrix(
        w, [&](const std::string&, const tensor<float, 2>& m) { bytes += static_cast<index_t>(sizeof(float)) * m.size(); },
        [&](index_t b) { bytes += b; });
    return bytes;
}

// Why `spec` cannot quantize `w`: "the group size G does not divide the K inputs
// of NAME (N x K)" for the first matrix whose inputs an int4 group size does not
// divide; empty when it can (always for int8).
inline std::string quant_spec_mismatch(const model_weights& w, const quant_spec& spec) {
    std::string why;
    if (spec.format != quant_format::int4) return why;
    detail::for_each_quantized_matrix(
        w,
        [&](const std::string& name, const tensor<float, 2>& m) {
            if (why.empty() && m.extent(1) % spec.group != 0)
                why = tinyllm::detail::cat("the group size ", spec.group, " does not divide the ", m.extent(1),
                                           " inputs of ", name, " (", m.extent(0), " x ", m.extent(1), ")");
        },
        [](index_t) {});
    return why;
}

// Replace every quantized matrix of `w` (see the top) by its round-to-nearest
// dequantized form in `spec`. A group size that does not divide a matrix's
// inputs is an error naming the matrix (quant_spec_mismatch); nothing is changed then.
inline quantization_summary round_model_weights(model_weights& w, const quant_spec& spec) {
    const std::string why = quant_spec_mismatch(w, spec);
    TINYLLM_EXPECT(why.empty(), "round_model_weights: ", spec.name(), ": ", why);
    quantization_summary s;
    detail::for_each_quantized_matrix(
        w,
        [&](const std::string&, tensor<float, 2>& m) {
            const quantized_matrix q = quantize_rtn(m.view(), spec);
            dequantize(m.view(), q);
            ++s.matrices;
            s.weights += m.size();
            s.quantized_bytes += q.bytes();
        },
        [&](index_t bytes) { s.float_bytes_kept += bytes; });
    return s;
}

}  // namespace tinyllm
