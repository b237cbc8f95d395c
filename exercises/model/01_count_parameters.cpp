// Exercise model/01_count_parameters — how many numbers a model is made of.
//
// A decoder-only model (include/tinyllm/model.hpp) is a token embedding, L identical
// blocks, a final norm and an output layer. With D = hidden_size, V = vocab_size,
// F = intermediate_size, Dh = head_dim, Hq and Hkv the query and key/value heads:
//
//   embedding          V x D                (GPT-2 also: a position table max_positions x D)
//   per block:
//     2 norms          D each               (GPT-2's LayerNorms also have a bias of D)
//     attention        Wq (Hq Dh) x D, Wk and Wv (Hkv Dh) x D, Wo D x (Hq Dh)
//                      (GPT-2 also: biases of Hq Dh, Hkv Dh, Hkv Dh and D)
//     MLP, GPT-2       fc F x D + bias F, proj D x F + bias D
//     MLP, Llama       gate F x D, up F x D, down D x F        (SwiGLU, no biases)
//     MoE, Mixtral     router E x D, and per expert E: w1 F x D, w3 F x D, w2 D x F
//   final norm         D                    (GPT-2: and a bias of D)
//   output layer       V x D, unless tie_word_embeddings (it reuses the embedding)
//
// Return the total for `shape` (GPT-2 small: 124,439,808 with tied embeddings).
//
// Hint: write the per-block count once, with the architecture's differences as terms.
//
// Check: exercises_cpu model/01_count_parameters (compared with the sizes of the tensors
// tinyllm::random_model_weights makes for the same shape).
#include "exercises.hpp"

namespace exercises::model {

std::int64_t count_parameters(const model_shape& shape) {
    // TODO: embeddings + L blocks + final norm + output layer.
    (void)shape;
    return 0;
}

}  // namespace exercises::model
