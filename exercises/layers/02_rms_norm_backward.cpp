// Exercise layers/02_rms_norm_backward — RMSNorm's gradients.
//
// Forward (exercise layers/01): for a row x of D features,
//     r = 1 / sqrt( (1/D) sum_d x_d^2 + eps ),    xhat_d = x_d r,    out_d = xhat_d w_d
//
// Given dout = dLoss/dout for every row, compute
//
//     dweight_d = sum over rows of dout_d * xhat_d          (summed: w is shared by all rows)
//     dx_d      = r * ( g_d - xhat_d * (1/D) sum_e g_e xhat_e ),   g_d = dout_d w_d
//
// Derive dx yourself: out depends on x_d directly and through r, and
// dr/dx_d = -r^3 x_d / D. (include/tinyllm/norm.hpp, cpu::rms_norm_backward; docs/training.md.)
// Overwrite dx (rows, D) and dweight (D).
//
// Hint: per row, first r and the sum of g_e xhat_e, then dx. Accumulate in double, and
// start dweight at zero.
//
// Check: exercises_cpu layers/02_rms_norm_backward (compared with
// tinyllm::cpu::rms_norm_backward).
#include "exercises.hpp"

namespace exercises::layers {

void rms_norm_backward(std::span<float> dx /*(rows, D)*/, std::span<float> dweight /*(D)*/,
                       std::span<const float> dout /*(rows, D)*/, std::span<const float> x /*(rows, D)*/,
                       std::span<const float> weight /*(D)*/, int rows, int D, float eps) {
    // TODO: dweight = sum over rows of dout * xhat; dx = r * (g - xhat * mean(g * xhat)).
    (void)dx, (void)dweight, (void)dout, (void)x, (void)weight, (void)rows, (void)D, (void)eps;
}

}  // namespace exercises::layers
