// Exercise attention/02_causal_probs — causal attention probabilities.
//
// For T positions with queries Q (T, D) and keys K (T, D) (one head, one sequence):
//
//     S(i, j) = Q_i . K_j / sqrt(D)                       scores
//     S(i, j) = -infinity  where j > i                    causal mask: no peeking ahead
//     P(i, :) = softmax(S(i, :))                          each row sums to 1
//
// so P(i, j) = exp(S(i, j) - max_j' S(i, j')) / sum_j' exp(S(i, j') - max), and
// P(i, j) = 0 exactly for j > i. Write P into probs(i, j) = probs[i * T + j].
//
// Hint: subtract each row's maximum (over the visible keys) before exp, and accumulate
// in double.
//
// Check: exercises_cpu attention/02_causal_probs (compared with the probabilities
// tinyllm::cpu::attention returns with causal = true).
#include "exercises.hpp"

namespace exercises::attention {

void causal_probs(std::span<float> probs /*(T, T)*/, std::span<const float> q /*(T, D)*/,
                  std::span<const float> k /*(T, D)*/, int T, int D) {
    // TODO: scores, the causal mask, and a softmax per row.
    (void)probs, (void)q, (void)k, (void)T, (void)D;
}

}  // namespace exercises::attention
