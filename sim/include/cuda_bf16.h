// cuda_bf16.h — tinyllm's simulated GPU: CUDA's bfloat16 type.
//
// Stands in for the CUDA toolkit's header of the same name (-DTINYLLM_CUDA=SIM).
// __nv_bfloat16 holds the same 16 bits as tinyllm::bfloat16, and converts with
// tinyllm's own round-to-nearest-even routines (tinyllm/dtype.hpp), so the
// simulator has one implementation of every conversion.
#pragma once

#include <tinyllm/dtype.hpp>

#include <cstdint>

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(tinyllm::float_to_bf16(f).bits) {}
    constexpr operator __nv_bfloat16_raw() const { return {__x}; }
    operator float() const { return tinyllm::bf16_to_float(tinyllm::bfloat16{__x}); }
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return {__nv_bfloat16(a), __nv_bfloat16(a)}; }
inline float __low2float(__nv_bfloat162 v) { return static_cast<float>(v.x); }
inline float __high2float(__nv_bfloat162 v) { return static_cast<float>(v.y); }
