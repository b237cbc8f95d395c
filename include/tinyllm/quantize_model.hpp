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

// The same summary of a model that holds its matrices quantized (model::quantize_weights,
// quantize_weights_gptq, or a quantized checkpoint); all zeros but the float bytes when it does not.
inline quantization_summary quantization_of(const cpu::model& m) {
    quantization_summary s;
    const auto add = [&](const quantized_matrix& q) {
        if (q.rows == 0) return;
        ++s.matrices;
        s.weights += q.rows * q.cols;
        s.quantized_bytes += q.bytes();
    };
    add(m.head_quantized());
    for (const layer_weights_quantized& layer : m.weights_quantized()) {
        for (const auto& [name, member, dense] : detail::layer_matrix_members) add(layer.*member);
        for (const auto& [name, member, dense] : detail::layer_expert_members)
            for (const quantized_matrix& q : layer.*member) add(q);  // Mixtral: one per expert
    }
    s.float_bytes_kept = m.weight_bytes() - s.quantized_bytes;
    return s;
}

// Bytes of all of `w`'s tensors in float32.
inline index_t float32_bytes(const model_weights& w) {
    index_t bytes = 0;
    detail::for_each_quantized_matrix(
        w, [&](const std::string&, const tensor<float, 2>& m) { bytes += static_cast<index_t>(sizeof(float)) * m.size(); },
        [&](index_t b) { bytes += b; });
    return bytes;
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
