// exercises/checks/exercises.hpp — the signature of every CPU exercise: what the checks
// call, what exercises/<component>/<nn>_<name>.cpp defines (and its reference answer in
// exercises/solutions/ defines the same way).
//
// Tensors are flat, row-major std::spans with their shape in a comment, `// (rows, D)`:
// element (r, d) of a (rows, D) tensor is x[r * D + d]. Outputs come first.
// Nothing here needs the library: the exercise files compile on their own, with only
// the standard library, and the checks compare them with include/tinyllm/.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace exercises {

// ---- tokenization ---------------------------------------------------------------------
namespace tokenization {

// A distinct pre-tokenized piece of the corpus as token ids, and how often it occurs.
struct weighted_word {
    std::vector<int> ids;
    std::int64_t count = 0;
};

std::pair<int, int> most_frequent_pair(std::span<const weighted_word> words);
std::vector<int> merge_pair(std::span<const int> ids, int left, int right, int new_id);

}  // namespace tokenization

// ---- positional -------------------------------------------------------------------------
namespace positional {

void alibi_bias(std::span<float> out /*(H, T, T)*/, int heads, int T);
void rope_rotate(std::span<float> x /*(D)*/, std::int64_t position, double theta);
double rope_relative_score(std::span<const float> q /*(D)*/, std::span<const float> k /*(D)*/, std::int64_t offset,
                           double theta);

}  // namespace positional

// ---- attention --------------------------------------------------------------------------
namespace attention {

// One query's attention over a subset of the keys, before normalization:
//   m = max_j s_j,   l = sum_j exp(s_j - m),   o = sum_j exp(s_j - m) v_j   (D)
// An empty subset: m = -infinity, l = 0, o = 0.
struct partial_attention {
    double m = 0;
    double l = 0;
    std::vector<double> o;
};

partial_attention merge_partials(const partial_attention& a, const partial_attention& b);
void causal_probs(std::span<float> probs /*(T, T)*/, std::span<const float> q /*(T, D)*/,
                  std::span<const float> k /*(T, D)*/, int T, int D);

}  // namespace attention

// ---- model shapes (attention/03, model/01) -----------------------------------------------------
// The numbers of a Hugging Face config.json that decide a model's size.
struct model_shape {
    std::string arch;                    // "gpt2", "llama" or "mixtral"
    std::int64_t vocab_size = 0;         // V
    std::int64_t hidden_size = 0;        // D
    std::int64_t num_layers = 0;         // L
    std::int64_t num_heads = 0;          // Hq
    std::int64_t num_kv_heads = 0;       // Hkv (GPT-2: = Hq)
    std::int64_t head_dim = 0;           // Dh
    std::int64_t intermediate_size = 0;  // F: the MLP's hidden width (per expert for Mixtral)
    std::int64_t max_positions = 0;      // GPT-2's learned position table has this many rows
    std::int64_t num_experts = 0;        // Mixtral: E
    bool tie_word_embeddings = false;    // the output layer reuses the token embedding
};

namespace attention {
std::int64_t kv_cache_bytes(const model_shape& shape, std::int64_t context, std::int64_t bytes_per_element);
std::uint32_t swizzled_tile_offset(int r, int d, int rows);
// A tile's place in a ring of mbarrier-guarded buffers (05_ring_parity).
struct ring_position {
    int stage = -1;
    unsigned full_parity = 2, empty_parity = 2;  // 0 or 1 when answered
};
ring_position ring_parity(int i, int stages);
}  // namespace attention

namespace model {
std::int64_t count_parameters(const model_shape& shape);
double cross_entropy(std::span<float> dlogits /*(rows, V)*/, std::span<const float> logits /*(rows, V)*/,
                     std::span<const int> targets /*(rows)*/, int rows, int V);
}  // namespace model

// ---- sampling ---------------------------------------------------------------------------
namespace sampling {

void min_p(std::span<float> logits /*(V)*/, float p);
void top_p(std::span<float> logits /*(V)*/, float p);

}  // namespace sampling

// ---- moe ----------------------------------------------------------------------------------
namespace moe {

void topk_routing(std::span<int> ids /*(T, k)*/, std::span<float> weights /*(T, k)*/,
                  std::span<const float> logits /*(T, E)*/, int T, int E, int k);
double load_balancing_loss(std::span<const float> logits /*(T, E)*/, std::span<const int> ids /*(T, k)*/, int T, int E,
                           int k);

}  // namespace moe

// ---- layers -------------------------------------------------------------------------------
namespace layers {

void rms_norm(std::span<float> out /*(rows, D)*/, std::span<const float> x /*(rows, D)*/,
              std::span<const float> weight /*(D)*/, int rows, int D, float eps);
void rms_norm_backward(std::span<float> dx /*(rows, D)*/, std::span<float> dweight /*(D)*/,
                       std::span<const float> dout /*(rows, D)*/, std::span<const float> x /*(rows, D)*/,
                       std::span<const float> weight /*(D)*/, int rows, int D, float eps);

}  // namespace layers

// ---- quantization -------------------------------------------------------------------------
namespace quantization {

void int4_groups(std::span<std::uint8_t> q /*(K)*/, std::span<float> scales /*(K / G)*/,
                 std::span<std::uint8_t> zeros /*(K / G)*/, std::span<const float> w /*(K)*/, int G);
// Returns the row's worst error max_k |w[k] - q[k] * scale|.
double int8_absmax(std::span<std::int8_t> q /*(K)*/, float& scale, std::span<const float> w /*(K)*/);

}  // namespace quantization

// ---- speculative decoding ---------------------------------------------------------------
namespace speculative {

// What the acceptance rule did with one drafted token.
struct step {
    int token = -1;  // the drafted token if accepted, else the one drawn from the residual
    bool accepted = false;
};

step accept_or_resample(std::span<const double> p /*(V)*/, std::span<const double> q /*(V)*/, int d,
                        double u_accept, double u_resample);

}  // namespace speculative

// ---- serving ------------------------------------------------------------------------------
namespace serving {

std::int64_t physical_row(std::span<const std::int32_t> block_table, int block_size, std::int64_t position);
std::int64_t blocks_needed(std::int64_t length, std::int64_t held, bool last_block_shared, int block_size,
                           std::int64_t n);

}  // namespace serving

}  // namespace exercises
