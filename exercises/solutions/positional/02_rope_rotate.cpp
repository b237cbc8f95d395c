// Reference answer to exercise positional/02_rope_rotate — rotary position embedding of one head vector.
//
// RoPE (Su et al. 2021) encodes position p by rotating pairs of features of q and k by
// angles proportional to p. With D features (D even) and the rotate-half pairing of
// Llama and GPT-NeoX (tinyllm's default, include/tinyllm/positional.hpp), pair i of
// the D/2 pairs is features (i, i + D/2), and its angle is p * w_i with
//
//     w_i = theta^(-2 i / D)                          (theta = 10000 for Llama 2)
//
//     a = x[i], b = x[i + D/2]:
//     x[i]       = a cos(p w_i) - b sin(p w_i)
//     x[i + D/2] = a sin(p w_i) + b cos(p w_i)
//
// Rotate x in place for position `position`.
//
// Hint: read both features of a pair before writing either. Compute the angle in double.
//
// Check: exercises_cpu positional/02_rope_rotate (compared with tinyllm::cpu::apply_rope).
#include "exercises.hpp"

#include <cmath>

namespace exercises::positional {

void rope_rotate(std::span<float> x /*(D)*/, std::int64_t position, double theta) {
    const std::size_t half = x.size() / 2;
    for (std::size_t i = 0; i < half; ++i) {
        const double w = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(x.size()));
        const double angle = static_cast<double>(position) * w;
        const double c = std::cos(angle), s = std::sin(angle);
        const double a = x[i], b = x[i + half];
        x[i] = static_cast<float>(a * c - b * s);
        x[i + half] = static_cast<float>(a * s + b * c);
    }
}

}  // namespace exercises::positional
