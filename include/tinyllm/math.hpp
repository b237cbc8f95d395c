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

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

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
//
// On the host, g++ and clang contract too, wherever the target has an fma
// instruction: x86-64 built with -mfma or -march=native, and every aarch64
// (a Grace Hopper host, say). There `mul_rn(a, b) + c` would become one fma
// after inlining, and a CPU reference would no longer be the GPU's bits. So
// on such targets the operands and the result pass through an empty asm
// statement that takes and returns a register: the compiler cannot see through
// it, and it emits no instruction. (GCC's __builtin_assoc_barrier is not enough: the
// vectorizer fuses across it.) Baseline x86-64 has no fma to contract into,
// and keeps the plain expression, so its loops still vectorize.
template <class F>  // float or double
TINYLLM_HOST_DEVICE F rounded(F x) {
#if !TINYLLM_ON_DEVICE && (defined(__GNUC__) || defined(__clang__))
#  if (defined(__x86_64__) || defined(__i386__)) && (defined(__FMA__) || defined(__FMA4__) || defined(__AVX512F__))
    __asm__("" : "+x"(x));
#  elif defined(__aarch64__)
    __asm__("" : "+w"(x));
#  endif
#endif
    return x;
}

TINYLLM_HOST_DEVICE float add_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fadd_rn(a, b);
#else
    return rounded(rounded(a) + rounded(b));
#endif
}
TINYLLM_HOST_DEVICE float sub_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fsub_rn(a, b);
#else
    return rounded(rounded(a) - rounded(b));
#endif
}
TINYLLM_HOST_DEVICE float mul_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fmul_rn(a, b);
#else
    return rounded(rounded(a) * rounded(b));
#endif
}
TINYLLM_HOST_DEVICE float div_rn(float a, float b) {
#if TINYLLM_ON_DEVICE
    return __fdiv_rn(a, b);
#else
    return rounded(rounded(a) / rounded(b));
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
// 2^e as a float, for e in [-126, 127]: a normal power of two, built from its
// exponent bits (x * pow2_exact(e) is ldexp(x, e) wherever the product is a
// normal float, for two instructions where the device's ldexpf takes ~17).
TINYLLM_HOST_DEVICE float pow2_exact(int e) {
    const auto bits = static_cast<std::uint32_t>(e + 127) << 23;
#if TINYLLM_ON_DEVICE
    return __uint_as_float(bits);
#else
    return std::bit_cast<float>(bits);
#endif
}

// e^x for the x <= 0 of a softmax (x = s - max) and of the CPU's vectorized
// sigmoids (x = -|u|), in a form a compiler vectorizes (host code only):
// std::exp is a library call per element, this is a dozen multiply-adds and
// integer operations, no branch. x below -87 is taken as -87
// (e^-87 ~ 1.6e-38; masked scores, -inf, are zeroed by the callers, which know
// the visible keys); NaN stays NaN. With n = round(x / ln 2) and
// r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 in two parts, so that n ln 2 is
// exact), e^x = 2^n e^r: e^r is its Taylor polynomial of degree 6 (truncation
// < 2e-7 relative) and 2^n is built in the exponent bits. Relative error
// <= 3e-7 (a few float ulps) over [-87, 0]; also right for the slightly
// positive x that rounding can give (s - lse in the backward).
inline float exp_nonpositive(float x) {
    // The clamp works on the bits: for x <= 0 a larger magnitude is a larger
    // unsigned pattern (up to -inf, 0xff800000; above it, negative NaNs), and
    // integer operations vectorize where a float comparison (which may trap,
    // under the default -ftrapping-math) does not.
    constexpr std::uint32_t limit = std::bit_cast<std::uint32_t>(-87.0f), minus_inf = 0xff800000u;
    const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
    const std::uint32_t nan_mask = 0u - static_cast<std::uint32_t>(u > minus_inf);  // all ones for a negative NaN
    const float xc = std::bit_cast<float>((std::min(u, limit) & ~nan_mask) | (u & nan_mask));
    // Round x / ln 2 to the nearest integer n by adding 1.5 * 2^23: n lands in the low mantissa bits.
    constexpr float round_shift = 12582912.0f;
    const float shifted = xc * 1.44269504088896341f + round_shift;
    const float n = shifted - round_shift;
    const std::int32_t n_int = std::bit_cast<std::int32_t>(shifted) - std::bit_cast<std::int32_t>(round_shift);
    const float r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * std::bit_cast<float>((n_int + 127) << 23);  // 2^n, n in [-126, 0]
}

}  // namespace detail
}  // namespace tinyllm
