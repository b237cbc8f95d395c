// Reference answer to exercise layers/02_rms_norm_backward — RMSNorm's gradients.
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

#include <cmath>
#include <vector>

namespace exercises::layers {

void rms_norm_backward(std::span<float> dx /*(rows, D)*/, std::span<float> dweight /*(D)*/,
                       std::span<const float> dout /*(rows, D)*/, std::span<const float> x /*(rows, D)*/,
                       std::span<const float> weight /*(D)*/, int rows, int D, float eps) {
    std::vector<double> dw(static_cast<std::size_t>(D), 0.0);
    for (int row = 0; row < rows; ++row) {
        const std::size_t base = static_cast<std::size_t>(row) * D;
        double sum2 = 0;
        for (int d = 0; d < D; ++d) sum2 += static_cast<double>(x[base + d]) * x[base + d];
        const double r = 1.0 / std::sqrt(sum2 / D + eps);
        double dot = 0;  // sum_e g_e xhat_e
        for (int d = 0; d < D; ++d) {
            const double xhat = x[base + d] * r;
            dot += static_cast<double>(dout[base + d]) * weight[d] * xhat;
            dw[d] += static_cast<double>(dout[base + d]) * xhat;
        }
        for (int d = 0; d < D; ++d) {
            const double xhat = x[base + d] * r;
            const double g = static_cast<double>(dout[base + d]) * weight[d];
            dx[base + d] = static_cast<float>(r * (g - xhat * dot / D));
        }
    }
    for (int d = 0; d < D; ++d) dweight[d] = static_cast<float>(dw[d]);
}

}  // namespace exercises::layers
