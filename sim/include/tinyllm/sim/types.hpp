// tinyllm/sim/types.hpp — CUDA's built-in vector types (vector_types.h):
// dim3, uint3, int2 … float4, with the alignments the GPU gives them (a float4
// is 16-byte aligned, so one instruction moves it), and the make_* functions.
#pragma once

#include <cstdint>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};

#define TINYLLM_SIM_VECTOR2(name, T, align) \
    struct alignas(align) name {            \
        T x, y;                             \
    };                                      \
    inline constexpr name make_##name(T x, T y) { return {x, y}; }
#define TINYLLM_SIM_VECTOR3(name, T) \
    struct name {                    \
        T x, y, z;                   \
    };                               \
    inline constexpr name make_##name(T x, T y, T z) { return {x, y, z}; }
#define TINYLLM_SIM_VECTOR4(name, T, align) \
    struct alignas(align) name {            \
        T x, y, z, w;                       \
    };                                      \
    inline constexpr name make_##name(T x, T y, T z, T w) { return {x, y, z, w}; }

TINYLLM_SIM_VECTOR2(char2, signed char, 2)
TINYLLM_SIM_VECTOR2(uchar2, unsigned char, 2)
TINYLLM_SIM_VECTOR2(short2, short, 4)
TINYLLM_SIM_VECTOR2(ushort2, unsigned short, 4)
TINYLLM_SIM_VECTOR2(int2, int, 8)
TINYLLM_SIM_VECTOR2(uint2, unsigned, 8)
TINYLLM_SIM_VECTOR2(float2, float, 8)
TINYLLM_SIM_VECTOR2(longlong2, long long, 16)
TINYLLM_SIM_VECTOR2(ulonglong2, unsigned long long, 16)
TINYLLM_SIM_VECTOR2(double2, double, 16)
TINYLLM_SIM_VECTOR3(int3, int)
TINYLLM_SIM_VECTOR3(float3, float)
inline constexpr uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
TINYLLM_SIM_VECTOR4(char4, signed char, 4)
TINYLLM_SIM_VECTOR4(uchar4, unsigned char, 4)
TINYLLM_SIM_VECTOR4(short4, short, 8)
TINYLLM_SIM_VECTOR4(ushort4, unsigned short, 8)
TINYLLM_SIM_VECTOR4(int4, int, 16)
TINYLLM_SIM_VECTOR4(uint4, unsigned, 16)
TINYLLM_SIM_VECTOR4(float4, float, 16)

#undef TINYLLM_SIM_VECTOR2
#undef TINYLLM_SIM_VECTOR3
#undef TINYLLM_SIM_VECTOR4
