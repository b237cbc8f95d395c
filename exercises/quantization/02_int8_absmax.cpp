// Exercise quantization/02_int8_absmax — int8 per-row quantization and its error bound.
//
// int8 weights (LLM.int8() without its outlier path; include/tinyllm/quantize.hpp,
// quantize_rtn with format int8) give each row of W one scale, symmetric around 0:
//
//     s = max_k |w_k| / 127,    q_k = round(w_k / s) in [-127, 127],    w^_k = q_k * s.
//
// Rounding moves a weight by at most half a step, so |w_k - w^_k| <= s / 2 = max|w| / 254:
// the row's largest weight sets the precision of all the others, and one outlier 100
// times the rest leaves them about one step each. That is why the scale is per row.
//
// For exactly the library's numbers: s is the smallest float with max|w| / s <= 127
// (amax = max |w_k| in float; s = float(amax / 127.0) in double, then step s up with
// std::nextafter while amax / s > 127); w / s, std::round (halves away from zero) and
// q * s in float. A row of zeros has s = 0 and every q = 0.
//
// Write q and scale, and return the row's worst error max_k |w_k - w^_k|.
//
// Hint: the largest MAGNITUDE: a row whose biggest weight is negative takes its scale
// from that one. Compare your worst error with s / 2; some rows of the check sit exactly
// on the halves, where it is s / 2.
//
// Check: exercises_cpu quantization/02_int8_absmax (compared with tinyllm::quantize_rtn,
// format int8).
#include "exercises.hpp"

namespace exercises::quantization {

double int8_absmax(std::span<std::int8_t> q /*(K)*/, float& scale, std::span<const float> w /*(K)*/) {
    // TODO: the scale from the largest magnitude, each q, and the worst |w - q * s|.
    (void)q, (void)scale, (void)w;
    return -1;
}

}  // namespace exercises::quantization
