// Reference answer to exercise layers/01_rms_norm — RMSNorm, the normalization of Llama and most models since.
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

#include <cmath>

namespace exercises::layers {

void rms_norm(std::span<float> out /*(rows, D)*/, std::span<const float> x /*(rows, D)*/,
              std::span<const float> weight /*(D)*/, int rows, int D, float eps) {
    for (int r = 0; r < rows; ++r) {
        const float* xr = x.data() + static_cast<std::size_t>(r) * D;
        double sum2 = 0;
        for (int d = 0; d < D; ++d) sum2 += static_cast<double>(xr[d]) * xr[d];
        const double inv_rms = 1.0 / std::sqrt(sum2 / D + eps);
        for (int d = 0; d < D; ++d)
            out[static_cast<std::size_t>(r) * D + d] = static_cast<float>(xr[d] * inv_rms * weight[d]);
    }
}

}  // namespace exercises::layers
