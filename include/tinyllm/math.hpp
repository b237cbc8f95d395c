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


namespace detail {

// ---- standard math under one name on host (std::) and device (CUDA's library) ----
//
// Component headers call these instead of std:: directly, so the same line
// compiles in a CPU loop and in a kernel. (Results may differ in the last bit
// between the two libraries: where CPU and GPU must agree exactly, use the
// correctly rounded operations below, or integer arithmetic.)

TINYLLM_HOST_DEVICE float exp_f(float x) {
#if TINYLLM_ON_DEVICE
    return expf(x);
#else
    return std::exp(x);
#endif
}

TINYLLM_HOST_DEVICE float erfc_f(float x) {
#if TINYLLM_ON_DEVICE
    return erfcf(x);
#else
    return std::erfc(x);
#endif
}

TINYLLM_HOST_DEVICE float tanh_hd(float x) {
#if TINYLLM_ON_DEVICE
    return tanhf(x);
#else
    return std::tanh(x);
#endif
}
TINYLLM_HOST_DEVICE double tanh_hd(double x) {
#if TINYLLM_ON_DEVICE
    return ::tanh(x);
#else
    return std::tanh(x);
#endif
}

// sin and cos of a float angle (CUDA: sincosf, one call for both).
TINYLLM_HOST_DEVICE void sin_cos(float angle, float* s, float* c) {
#if TINYLLM_ON_DEVICE
    sincosf(angle, s, c);
#else
    *s = std::sin(angle);
    *c = std::cos(angle);
#endif
}

TINYLLM_HOST_DEVICE double pow_double(double base, double exponent) {
#if TINYLLM_ON_DEVICE
    return ::pow(base, exponent);
#else
    return std::pow(base, exponent);
#endif
}

// ---- single IEEE operations that no compiler may fuse with their neighbours ----
//
// nvcc contracts a * b + c into one fma unless told otherwise; these spell out
// one correctly rounded operation each, identical on host and device.

TINYLLM_HOST_DEVICE float add_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
TINYLLM_HOST_DEVICE float sub_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
TINYLLM_HOST_DEVICE float mul_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
TINYLLM_HOST_DEVICE float div_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
// Round to the nearest integer, ties to even (exact).
TINYLLM_HOST_DEVICE float rint_rn(float x) {
#if TINYLLM_ON_DEVICE
    return rintf(x);
#else
    return std::rint(x);
#endif
}
// x * 2^n (exact while the result is a normal float).
TINYLLM_HOST_DEVICE float ldexp_exact(float x, int n) {
#if TINYLLM_ON_DEVICE
    return ldexpf(x, n);
#else
    return std::ldexp(x, n);
#endif
}

}  // namespace detail
}  // namespace tinyllm
