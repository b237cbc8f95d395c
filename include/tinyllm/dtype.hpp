// tinyllm/dtype.hpp — 16-bit floating-point storage types and their exact
// conversions to and from float, identical on host and device.
//
// Models are stored and run in 16-bit formats; the arithmetic is done in float.
//
//     float32   s eeeeeeee mmmmmmmmmmmmmmmmmmmmmmm   1 + 8 + 23 bits
//     bfloat16  s eeeeeeee mmmmmmm                   1 + 8 +  7 bits (float's top half)
//     float16   s eeeee    mmmmmmmmmm                1 + 5 + 10 bits (IEEE binary16)
//
// bfloat16 keeps float's exponent range and drops mantissa bits, so converting
// to float is a shift and converting from float is rounding away 16 bits.
// float16 has more precision but a small range (largest finite 65504,
// smallest normal 2^-14, subnormals down to 2^-24).
//
// Conversions from float round to nearest, ties to even (what CUDA's
// __float2bfloat16_rn / __float2half_rn and PyTorch do); NaN stays NaN and
// values beyond the range become infinity. They are written with integer
// operations only, so host and device give bit-identical results whatever the
// floating-point flags (flush-to-zero, fast math) are.
//
// `bfloat16` and `float16` are plain 2-byte structs: layout-compatible with
// CUDA's __nv_bfloat16 and __half (see <tinyllm/cuda/dtype.cuh>), so host
// buffers of them can be copied to the device as they are.
#pragma once

#include <tinyllm/config.hpp>

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

namespace tinyllm {

struct bfloat16 {
    std::uint16_t bits = 0;
};
struct float16 {
    std::uint16_t bits = 0;
};

namespace detail {

TINYLLM_HOST_DEVICE std::uint32_t float_to_bits(float f) {
#if TINYLLM_ON_DEVICE
    return __float_as_uint(f);
#else
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
#endif
}

TINYLLM_HOST_DEVICE float bits_to_float(std::uint32_t u) {
#if TINYLLM_ON_DEVICE
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
#endif
}

// Shift `value` right by `shift` bits, rounding to nearest with ties to even.
TINYLLM_HOST_DEVICE std::uint32_t shift_right_round_even(std::uint32_t value, unsigned shift) {
    // Callers keep 1 <= shift <= 31.
    const std::uint32_t kept = value >> shift;
    const std::uint32_t rest = value & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

}  // namespace detail

// ---- bfloat16 -------------------------------------------------------------

TINYLLM_HOST_DEVICE float bf16_to_float(bfloat16 x) {
    return detail::bits_to_float(static_cast<std::uint32_t>(x.bits) << 16);
}

TINYLLM_HOST_DEVICE bfloat16 float_to_bf16(float f) {
    const std::uint32_t u = detail::float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, make it quiet
        return {static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
    }
    // Round the low 16 bits away: add just under half an ulp, plus one if the
    // kept part is odd (ties to even). A carry may ripple into the exponent,
    // which is exactly right (and turns the largest values into infinity).
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return {static_cast<std::uint16_t>((u + rounding) >> 16)};
}

// ---- float16 (IEEE binary16) -----------------------------------------------

TINYLLM_HOST_DEVICE float fp16_to_float(float16 x) {
    const std::uint32_t h = x.bits;
    const std::uint32_t sign = (h & 0x8000u) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) {  // infinity or NaN
        return detail::bits_to_float(sign | 0x7f800000u | (mantissa << 13));
    }
    if (exponent == 0) {
        if (mantissa == 0) return detail::bits_to_float(sign);  // +-0
        // Subnormal m * 2^-24: normalise so the leading 1 becomes implicit.
        int e = 1;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --e;
        }
        return detail::bits_to_float(sign | (static_cast<std::uint32_t>(e + 112) << 23) | ((mantissa & 0x3ffu) << 13));
    }
    // Normal: re-bias the exponent from 15 to 127 (add 112).
    return detail::bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

TINYLLM_HOST_DEVICE float16 float_to_fp16(float f) {
    const std::uint32_t u = detail::float_to_bits(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;  // |f|
    if (a > 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7e00u)};  // NaN
    if (a >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};  // >= 65520 rounds to inf
    if (a >= 0x38800000u) {  // >= 2^-14: a normal half
        // Re-bias the exponent (subtract 112 << 23) and round 13 mantissa bits away.
        const std::uint32_t h = detail::shift_right_round_even(a - 0x38000000u, 13);
        return {static_cast<std::uint16_t>(sign | h)};
    }
    // Below 2^-14: a subnormal half, counted in units of 2^-24. The float is
    // (1.m) * 2^(e-127) = mantissa24 * 2^(e-150), so it is mantissa24 >> (126 - e) units.
    const std::uint32_t e = a >> 23;
    const std::uint32_t mantissa24 = (a & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // >= 14 here
    if (shift > 24) return {sign};          // below 2^-25: rounds to zero
    return {static_cast<std::uint16_t>(sign | detail::shift_right_round_even(mantissa24, shift))};
}

// ---- generic spelling for templates ------------------------------------------
//
// Kernels templated on the storage type T load with to_float(x) and store with
// from_float<T>(f), whatever T is.

TINYLLM_HOST_DEVICE float to_float(float x) { return x; }
TINYLLM_HOST_DEVICE float to_float(bfloat16 x) { return bf16_to_float(x); }
TINYLLM_HOST_DEVICE float to_float(float16 x) { return fp16_to_float(x); }

template <class T>
TINYLLM_HOST_DEVICE T from_float(float f);
template <>
TINYLLM_HOST_DEVICE float from_float<float>(float f) { return f; }
template <>
TINYLLM_HOST_DEVICE bfloat16 from_float<bfloat16>(float f) { return float_to_bf16(f); }
template <>
TINYLLM_HOST_DEVICE float16 from_float<float16>(float f) { return float_to_fp16(f); }

// The name PyTorch and safetensors use for each type.
template <class T>
constexpr std::string_view dtype_name() {
    if constexpr (std::is_same_v<T, float>) return "float32";
    else if constexpr (std::is_same_v<T, bfloat16>) return "bfloat16";
    else if constexpr (std::is_same_v<T, float16>) return "float16";
    else if constexpr (std::is_same_v<T, double>) return "float64";
    else static_assert(sizeof(T) == 0, "tinyllm::dtype_name: not a tinyllm element type");
}

}  // namespace tinyllm
