// cuda_fp16.h — tinyllm's simulated GPU: CUDA's half-precision type.
//
// Stands in for the CUDA toolkit's header of the same name (-DTINYLLM_CUDA=SIM).
// __half holds the same 16 bits as tinyllm::float16 and converts with
// tinyllm's own routines (tinyllm/dtype.hpp).
#pragma once

#include <tinyllm/dtype.hpp>

struct __half_raw {
    unsigned short x;
};
struct __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(tinyllm::float_to_fp16(f).bits) {}
    constexpr operator __half_raw() const { return {__x}; }
    operator float() const { return tinyllm::fp16_to_float(tinyllm::float16{__x}); }
};
struct alignas(4) __half2 {
    __half x, y;
};
typedef __half half;
typedef __half2 half2;

inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return {__half(a), __half(a)}; }
inline float __low2float(__half2 v) { return static_cast<float>(v.x); }
inline float __high2float(__half2 v) { return static_cast<float>(v.y); }
