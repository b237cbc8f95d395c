// Reference answer to exercise positional/03_rope_relative_score — RoPE's relative-position identity.
//
// Why RoPE: the score of a query at position m and a key at position n depends on m and
// n only through m - n. With R_p the rotation of exercise positional/02 (rotate-half
// pairing, pair i = features (i, i + D/2), angle p w_i, w_i = theta^(-2i/D)):
//
//     <R_m q, R_n k> = <q, R_m^T R_n k> = <q, R_(n-m) k>        (rotations compose)
//
// Work it out per pair: with (a, b) = (q[i], q[i + D/2]), (c, d) = (k[i], k[i + D/2])
// and phi = (m - n) w_i, the pair contributes
//
//     (a c + b d) cos(phi) + (a d - b c) sin(phi)
//
// (derive it: rotate both, multiply out, use cos(x)cos(y) + sin(x)sin(y) = cos(x - y)).
// Return the score <R_m q, R_n k> for offset = m - n, computed from q, k and the offset
// alone, without rotating anything, in double.
//
// The check rotates q by m and k by n with the library for random m, n and compares.
//
// Check: exercises_cpu positional/03_rope_relative_score (compared with
// tinyllm::cpu::apply_rope on q at m and k at n, then their dot product).
#include "exercises.hpp"

#include <cmath>

namespace exercises::positional {

double rope_relative_score(std::span<const float> q /*(D)*/, std::span<const float> k /*(D)*/, std::int64_t offset,
                           double theta) {
    const std::size_t half = q.size() / 2;
    double score = 0;
    for (std::size_t i = 0; i < half; ++i) {
        const double w = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(q.size()));
        const double phi = static_cast<double>(offset) * w;
        const double a = q[i], b = q[i + half], c = k[i], d = k[i + half];
        score += (a * c + b * d) * std::cos(phi) + (a * d - b * c) * std::sin(phi);
    }
    return score;
}

}  // namespace exercises::positional
