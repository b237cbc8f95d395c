// Reference answer to exercise sampling/01_min_p — min-p filtering.
//
// Before drawing the next token, samplers cut the long tail of unlikely tokens. Min-p
// (Nguyen et al. 2024) keeps a token when its probability is at least p times that of
// the most probable token. With probabilities softmax(z), the ratio needs no sum:
//
//     softmax(z)_i / softmax(z)_max = exp(z_i - z_max)
//
// so keep token i when exp(z_i - z_max) >= p, and set the logit of every other token to
// -infinity (include/tinyllm/sampling.hpp, cpu::min_p). Kept logits stay unchanged. The
// most probable token is always kept. p is in [0, 1].
//
// Hint: one pass for the maximum, one to filter. -INFINITY or
// -std::numeric_limits<float>::infinity() is minus infinity.
//
// Check: exercises_cpu sampling/01_min_p (compared with tinyllm::cpu::min_p).
#include "exercises.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace exercises::sampling {

void min_p(std::span<float> logits /*(V)*/, float p) {
    const float max = *std::max_element(logits.begin(), logits.end());
    for (float& z : logits)
        if (std::exp(static_cast<double>(z) - max) < p) z = -std::numeric_limits<float>::infinity();
}

}  // namespace exercises::sampling
