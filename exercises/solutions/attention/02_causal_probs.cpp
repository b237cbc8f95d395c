// Reference answer to exercise attention/02_causal_probs — causal attention probabilities.
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

#include <algorithm>
#include <cmath>

namespace exercises::attention {

void causal_probs(std::span<float> probs /*(T, T)*/, std::span<const float> q /*(T, D)*/,
                  std::span<const float> k /*(T, D)*/, int T, int D) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    std::vector<double> s(static_cast<std::size_t>(T));
    for (int i = 0; i < T; ++i) {
        double max = -INFINITY;
        for (int j = 0; j <= i; ++j) {  // keys after i are masked
            double dot = 0;
            for (int d = 0; d < D; ++d)
                dot += static_cast<double>(q[static_cast<std::size_t>(i) * D + d]) *
                       k[static_cast<std::size_t>(j) * D + d];
            s[j] = dot * scale;
            max = std::max(max, s[j]);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += s[j] = std::exp(s[j] - max);
        for (int j = 0; j < T; ++j)
            probs[static_cast<std::size_t>(i) * T + j] = j <= i ? static_cast<float>(s[j] / sum) : 0.0f;
    }
}

}  // namespace exercises::attention
