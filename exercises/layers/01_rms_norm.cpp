// Exercise layers/01_rms_norm — RMSNorm, the normalization of Llama and most models since.
//
// Each row x of D features is divided by its root mean square and scaled by a learned
// weight per feature (Zhang & Sennrich 2019; include/tinyllm/norm.hpp, cpu::rms_norm):
//
//     rms = sqrt( (1/D) * sum_d x_d^2 + eps )
//     out_d = x_d / rms * weight_d
//
// Unlike LayerNorm there is no mean subtracted and no bias. Compute it for every row of
// x (rows, D): element (r, d) is x[r * D + d].
//
// Hint: accumulate the sum of squares in double.
//
// Check: exercises_cpu layers/01_rms_norm (compared with tinyllm::cpu::rms_norm).
#include "exercises.hpp"

namespace exercises::layers {

void rms_norm(std::span<float> out /*(rows, D)*/, std::span<const float> x /*(rows, D)*/,
              std::span<const float> weight /*(D)*/, int rows, int D, float eps) {
    // TODO: out = x / sqrt(mean(x^2) + eps) * weight, row by row.
    (void)out, (void)x, (void)weight, (void)rows, (void)D, (void)eps;
}

}  // namespace exercises::layers
