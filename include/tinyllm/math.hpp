// tinyllm/math.hpp — small math helpers shared by host and device code.
//
// Bit-identical CPU and GPU results need more than the same formula: the same
// *operations*. nvcc fuses `a * b + c` into one fused multiply-add (a single
// rounding) by default, while g++ for baseline x86-64 computes a rounded
// product and then a rounded sum. The two can differ in the last bit. Where
// tinyllm promises identical results (random numbers, sampling), it spells the
// fused operation out with tinyllm::fma, which is one rounding on both sides.
#pragma once

#include <tinyllm/config.hpp>

#include <cmath>

namespace tinyllm {

// a * b + c with a single rounding, on host and device alike.
TINYLLM_HOST_DEVICE float fma(float a, float b, float c) {
#if TINYLLM_ON_DEVICE
    return __fmaf_rn(a, b, c);
#else
    return std::fma(a, b, c);
#endif
}

// Integer division rounding up: ceil_div(10, 4) == 3. Used for grid sizes.
template <class Int>
TINYLLM_HOST_DEVICE constexpr Int ceil_div(Int a, Int b) {
    return (a + b - 1) / b;
}

}  // namespace tinyllm
