// Exercise positional/01_alibi_bias — the ALiBi bias tensor.
//
// ALiBi (Press et al. 2022) adds no position vectors: each head h adds a fixed linear
// penalty to the attention score of query i and key j,
//
//     bias(h, i, j) = -m_h * (i - j)                 (0 on the diagonal, = m_h * (j - i))
//
// with a head-specific slope m_h (include/tinyllm/positional.hpp, alibi_slope):
//   H a power of two:   m_h = 2^(-8 (h + 1) / H)            (8 heads: 1/2, 1/4, ..., 1/256)
//   otherwise, with n the largest power of two below H: the n slopes of n heads for
//   h < n, then every other slope of 2n heads, starting with the first, for the rest:
//                       m_h = 2^(-8 (2 (h - n) + 1) / (2 n))    for h >= n
//
// Fill out(h, i, j) = out[(h * T + i) * T + j] for h < heads, i, j < T (query i and key
// j at positions i and j; keys after the query get a positive bias, which a causal mask
// removes anyway).
//
// Hint: compute the slopes first; std::exp2 computes 2^x.
//
// Check: exercises_cpu positional/01_alibi_bias (compared with tinyllm::cpu::alibi_bias_table).
#include "exercises.hpp"

namespace exercises::positional {

void alibi_bias(std::span<float> out /*(H, T, T)*/, int heads, int T) {
    // TODO: fill out(h, i, j) = -m_h * (i - j).
    (void)out, (void)heads, (void)T;
}

}  // namespace exercises::positional
