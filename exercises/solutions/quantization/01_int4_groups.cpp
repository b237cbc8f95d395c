// Reference answer to exercise quantization/01_int4_groups — int4 group quantization: one row of weights in 4 bits.
//
// Decoding reads every weight once per token, so fewer bytes per weight is faster
// decoding. int4 keeps 16 levels per weight; to make them count, a row of K weights is
// cut into groups of G consecutive inputs, and each group gets its own scale s and zero
// point z (the int4-gG format of GPTQ and AWQ checkpoints; include/tinyllm/quantize.hpp,
// quantize_rtn). Over a group, with lo = min(0, min w) and hi = max(0, max w):
//
//     s = (hi - lo) / 15,   z = round(-lo / s) in [0, 15],
//     q = clamp(round(w / s) + z, 0, 15),      and back: w^ = (q - z) * s,
//
// so every weight comes back within s / 2. For exactly the library's numbers:
//   * s is the smallest float with (hi - lo) / s <= 15: compute range = double(hi) -
//     double(lo), s = float(range / 15), then while range / s > 15 step s up to the next
//     float (std::nextafter). A group of zeros has s = 0, z = 0 and every q = 0.
//   * the rest is float arithmetic: z = clamp(round(-lo / s), 0, 15), q as above.
//   * round is std::round: halves away from zero (2.5 -> 3, -2.5 -> -3).
//
// Write q[k] (one value in 0..15 per weight, unpacked), scales[g] and zeros[g] for the
// K / G groups of w (G divides K).
//
// Hint: lo and hi start at 0, not at the first weight: 0 must be in every group's range,
// so that an exact zero stays exact. Some groups of the check are all positive, and
// some sit exactly on the rounding halves.
//
// Check: exercises_cpu quantization/01_int4_groups (compared with tinyllm::quantize_rtn,
// format int4-gG).
#include "exercises.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace exercises::quantization {

void int4_groups(std::span<std::uint8_t> q /*(K)*/, std::span<float> scales /*(K / G)*/,
                 std::span<std::uint8_t> zeros /*(K / G)*/, std::span<const float> w /*(K)*/, int G) {
    const std::size_t group = static_cast<std::size_t>(G);
    for (std::size_t g = 0; g * group < w.size(); ++g) {
        const std::span<const float> x = w.subspan(g * group, group);
        float lo = 0.0f, hi = 0.0f;
        for (float v : x) lo = std::min(lo, v), hi = std::max(hi, v);
        const double range = static_cast<double>(hi) - static_cast<double>(lo);
        float s = 0.0f;
        if (range > 0.0) {
            s = static_cast<float>(range / 15.0);
            if (s == 0.0f) s = std::numeric_limits<float>::denorm_min();
            while (range / s > 15.0) s = std::nextafter(s, std::numeric_limits<float>::infinity());
        }
        const float z = s > 0.0f ? std::clamp(std::round(-lo / s), 0.0f, 15.0f) : 0.0f;
        scales[g] = s;
        zeros[g] = static_cast<std::uint8_t>(z);
        for (std::size_t k = 0; k < group; ++k)
            q[g * group + k] =
                static_cast<std::uint8_t>(s > 0.0f ? std::clamp(std::round(x[k] / s) + z, 0.0f, 15.0f) : z);
    }
}

}  // namespace exercises::quantization
