// tinyllm/random.hpp — filling tensors with reproducible random numbers.
//
// Uniform. Element i of a tensor filled by fill_uniform(out, seed, lo, hi) is
//
//     lo + (hi - lo) * u_i,      u_i = philox_uniform(s, stream = 0, n = i)
//
// a pure function of (s, i), so the CPU loop here and the CUDA kernel in
// <tinyllm/cuda/random.cuh> produce bit-identical tensors (the product and sum
// are one fused multiply-add on both sides, see tinyllm/math.hpp). Tests use
// it for inputs, the tour for weights.
//
// Normal. fill_normal(out, seed, mean, stddev) uses the Box–Muller transform:
// two independent uniforms u1 in (0, 1] and u2 in [0, 1) give two independent
// standard normals
//
//     r = sqrt(-2 ln u1),   z0 = r cos(2 pi u2),   z1 = r sin(2 pi u2)
//
// (in polar coordinates a 2-D standard normal has angle uniform in [0, 2 pi) and
// squared radius r^2 exponential with mean 2, i.e. r^2 = -2 ln u1). Philox block
// b = i / 4 of stream 1 gives the words (w0, w1, w2, w3) of elements 4b .. 4b+3:
// (w0, w1) make z0, z1 for elements 4b, 4b+1, and (w2, w3) for 4b+2, 4b+3;
// element i is mean + stddev * z, one fused multiply-add. Stream 1 keeps normal
// fills independent of uniform fills with the same seed; any size works (the
// last block's unused normals are simply dropped).
//
//     u1 = (top 24 bits of w0 + 1) * 2^-24     -> in (0, 1], so ln u1 is finite
//     u2 = (top 24 bits of w1) * 2^-24         -> in [0, 1)
//
// Since u1 >= 2^-24, |z| <= sqrt(2 * 24 ln 2) = 5.77: the tail beyond that
// (probability 8e-9) is cut off.
//
// The same bits on the CPU and the GPU need the same operations, and the math
// libraries' logf, sinf and cosf are not correctly rounded (glibc and CUDA may
// differ in the last bit). So ln, sin and cos are computed here from integer
// bit manipulation and correctly rounded +, -, *, /, sqrt and fma only, which
// IEEE 754 defines exactly on both sides (detail::log_positive and
// detail::sin_cos_2pi below: a few ulp from the true values, identical bits
// everywhere). CPU and GPU normals are therefore bit-identical.
#pragma once

#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

namespace tinyllm {

namespace detail {
// lo + (hi - lo) * u for the uniform u of one random word: one fused multiply-add.
TINYLLM_HOST_DEVICE float uniform_in(std::uint32_t bits, float lo, float hi) {
    return tinyllm::fma(hi - lo, uniform_float(bits), lo);
}
}  // namespace detail

// The value of element `i` of a tensor filled by fill_uniform(out, seed, lo, hi).
TINYLLM_HOST_DEVICE float uniform_element(std::uint64_t seed, std::uint64_t i, float lo, float hi) {
    return detail::uniform_in(philox_bits(seed, 0, i), lo, hi);
}

namespace detail {

// sqrt(x), correctly rounded on host and device (also under nvcc --use_fast_math).
TINYLLM_HOST_DEVICE float sqrt_rn(float x) {
#if TINYLLM_ON_DEVICE
    return __fsqrt_rn(x);
#else
    return std::sqrt(x);
#endif
}

// ln(x) for a positive normal float x, from correctly rounded operations only.
//
// Split x = m * 2^e with m in [sqrt(1/2), sqrt(2)) by editing the bits, so that
// ln x = e ln 2 + ln m. With f = m - 1 (exact) and s = f / (2 + f), |s| <= 0.172,
//     ln m = ln((1 + s) / (1 - s)) = 2 (s + s^3/3 + s^5/5 + ...)
// and the terms after s^11/11 add less than 1e-10. Error: a few ulp.
TINYLLM_HOST_DEVICE float log_positive(float x) {
    const std::uint32_t bits = float_to_bits(x);
    int e = static_cast<int>(bits >> 23) - 127;
    std::uint32_t m_bits = (bits & 0x007fffffu) | 0x3f800000u;  // m in [1, 2)
    if (m_bits > 0x3fb504f3u) {                                  // m > sqrt(2): halve it
        m_bits -= 0x00800000u;
        ++e;
    }
    const float f = sub_rn(bits_to_float(m_bits), 1.0f);
    const float s = div_rn(f, add_rn(2.0f, f));
    const float s2 = mul_rn(s, s);
    // 1/11, 1/9, 1/7, 1/5, 1/3 as floats:
    float p = tinyllm::fma(s2, 0.0909090936f, 0.111111112f);
    p = tinyllm::fma(s2, p, 0.142857149f);
    p = tinyllm::fma(s2, p, 0.200000003f);
    p = tinyllm::fma(s2, p, 0.333333343f);
    const float two_s = add_rn(s, s);
    const float ln_m = tinyllm::fma(mul_rn(two_s, s2), p, two_s);
    return tinyllm::fma(static_cast<float>(e), 0.693147182f, ln_m);  // + e ln 2
}

// sin(2 pi u) and cos(2 pi u) for u in [0, 1), from correctly rounded operations only.
//
// t = 4u (exact) is split into the nearest integer q and f = t - q in [-1/2, 1/2]
// (exact), so 2 pi u = q pi/2 + a with a = f pi/2 in [-pi/4, pi/4]. sin a and
// cos a are their Taylor series in f (coefficients (pi/2)^k / k!, truncation
// below 2e-9), and the quadrant q mod 4 rotates them:
//     q = 0: ( sin a,  cos a)   q = 1: ( cos a, -sin a)
//     q = 2: (-sin a, -cos a)   q = 3: (-cos a,  sin a)
TINYLLM_HOST_DEVICE void sin_cos_2pi(float u, float* sin_out, float* cos_out) {
    const float t = mul_rn(u, 4.0f);
    const float q = rint_rn(t);
    const float f = sub_rn(t, q);
    const float g = mul_rn(f, f);
    float sp = tinyllm::fma(g, -3.59884325e-06f, 0.000160441181f);
    sp = tinyllm::fma(g, sp, -0.00468175393f);
    sp = tinyllm::fma(g, sp, 0.0796926245f);
    sp = tinyllm::fma(g, sp, -0.645964086f);
    sp = tinyllm::fma(g, sp, 1.57079637f);
    const float sin_a = mul_rn(f, sp);
    float cp = tinyllm::fma(g, 4.71087475e-07f, -2.52020418e-05f);
    cp = tinyllm::fma(g, cp, 0.000919260259f);
    cp = tinyllm::fma(g, cp, -0.0208634809f);
    cp = tinyllm::fma(g, cp, 0.2536695f);
    cp = tinyllm::fma(g, cp, -1.23370051f);
    const float cos_a = tinyllm::fma(g, cp, 1.0f);
    switch (static_cast<int>(q) & 3) {
        case 0: *sin_out = sin_a; *cos_out = cos_a; break;
        case 1: *sin_out = cos_a; *cos_out = -sin_a; break;
        case 2: *sin_out = -sin_a; *cos_out = -cos_a; break;
        default: *sin_out = -cos_a; *cos_out = sin_a; break;
    }
}

}  // namespace detail

// Box–Muller: two standard normals (z0, z1) from two random words (see the top).
TINYLLM_HOST_DEVICE void box_muller(std::uint32_t w0, std::uint32_t w1, float* z0, float* z1) {
    const float u1 = static_cast<float>((w0 >> 8) + 1u) * (1.0f / 16777216.0f);  // (0, 1], exact
    const float u2 = uniform_float(w1);                                           // [0, 1)
    const float r = detail::sqrt_rn(detail::mul_rn(-2.0f, detail::log_positive(u1)));
    float s, c;
    detail::sin_cos_2pi(u2, &s, &c);
    *z0 = detail::mul_rn(r, c);
    *z1 = detail::mul_rn(r, s);
}

// The Philox stream fill_normal draws from (fill_uniform uses stream 0).
inline constexpr std::uint64_t normal_stream = 1;

// Elements 4b .. 4b+3 of a tensor filled by fill_normal(out, seed, mean, stddev).
TINYLLM_HOST_DEVICE void normal_block(float out[4], std::uint64_t seed, std::uint64_t block, float mean,
                                      float stddev) {
    const philox_counter w = philox_block(seed, normal_stream, block);
    float z[4];
    box_muller(w.v[0], w.v[1], &z[0], &z[1]);
    box_muller(w.v[2], w.v[3], &z[2], &z[3]);
    for (int j = 0; j < 4; ++j) out[j] = tinyllm::fma(stddev, z[j], mean);
}

// The value of element `i` of a tensor filled by fill_normal(out, seed, mean, stddev).
TINYLLM_HOST_DEVICE float normal_element(std::uint64_t seed, std::uint64_t i, float mean, float stddev) {
    float v[4];
    normal_block(v, seed, i >> 2, mean, stddev);
    return v[i & 3];
}

namespace detail {

// The parameters of the fills (host, CPU and CUDA alike): finite, lo <= hi,
// stddev >= 0, and every value they can produce a finite float — hi - lo is
// computed in float, and a normal draw is at most 5.77 standard deviations
// from its mean (Box-Muller of 24-bit uniforms, above), so 7 bound it.
inline void expect_uniform_range(float lo, float hi, std::string_view op) {
    TINYLLM_EXPECT(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, op, " needs finite lo <= hi; got lo = ", lo,
                   ", hi = ", hi);
    TINYLLM_EXPECT(std::isfinite(hi - lo), op, ": hi - lo = ", static_cast<double>(hi) - lo,
                   " overflows a float (lo = ", lo, ", hi = ", hi, ")");
}
inline void expect_normal_params(float mean, float stddev, std::string_view op) {
    TINYLLM_EXPECT(std::isfinite(mean) && std::isfinite(stddev) && stddev >= 0.0f, op,
                   " needs a finite mean and a finite stddev >= 0; got mean = ", mean, ", stddev = ", stddev);
    TINYLLM_EXPECT(std::fabs(static_cast<double>(mean)) + 7.0 * stddev <= std::numeric_limits<float>::max(), op,
                   ": mean = ", mean, " and stddev = ", stddev,
                   " can draw values past the largest float (|mean| + 7 stddev must fit)");
}

}  // namespace detail

namespace cpu {

// out[i] = uniform in [lo, hi), element i drawn from (seed, i). out: any shape, contiguous.
template <std::size_t Rank>
void fill_uniform(tensor_view<float, Rank> out, std::uint64_t seed, float lo = 0.0f, float hi = 1.0f) {
    TINYLLM_EXPECT(out.is_contiguous(), "fill_uniform writes a contiguous tensor; got strides ",
                   to_string(out.strides()), " for shape ", to_string(out.shape()));
    tinyllm::detail::expect_uniform_range(lo, hi, "fill_uniform");
    // uniform_element(seed, i, lo, hi) for every i, one Philox block per four elements
    // (element i is word i % 4 of stream 0's block i / 4) instead of one block per element.
    float* data = out.data();
    const index_t n = out.size();
    for (index_t i = 0; i < n; i += 4) {
        const philox_counter w = philox_block(seed, 0, static_cast<std::uint64_t>(i) >> 2);
        for (index_t j = 0; j < 4 && i + j < n; ++j)
            data[i + j] = tinyllm::detail::uniform_in(w.v[j], lo, hi);
    }
}

// out[i] = normal with the given mean and standard deviation, element i drawn
// from (seed, i) by Box–Muller (see the top). out: any shape, contiguous.
template <std::size_t Rank>
void fill_normal(tensor_view<float, Rank> out, std::uint64_t seed, float mean = 0.0f, float stddev = 1.0f) {
    TINYLLM_EXPECT(out.is_contiguous(), "fill_normal writes a contiguous tensor; got strides ",
                   to_string(out.strides()), " for shape ", to_string(out.shape()));
    tinyllm::detail::expect_normal_params(mean, stddev, "fill_normal");
    float* data = out.data();
    const index_t n = out.size();
    for (index_t i = 0; i < n; i += 4) {
        float v[4];
        normal_block(v, seed, static_cast<std::uint64_t>(i) >> 2, mean, stddev);
        for (index_t j = 0; j < 4 && i + j < n; ++j) data[i + j] = v[j];
    }
}

// The same fills of an owning tensor: fill_normal(w, seed) for a tinyllm::tensor<float, R>.
template <std::size_t Rank>
void fill_uniform(tensor<float, Rank>& out, std::uint64_t seed, float lo = 0.0f, float hi = 1.0f) {
    fill_uniform(out.view(), seed, lo, hi);
}
template <std::size_t Rank>
void fill_normal(tensor<float, Rank>& out, std::uint64_t seed, float mean = 0.0f, float stddev = 1.0f) {
    fill_normal(out.view(), seed, mean, stddev);
}

}  // namespace cpu
}  // namespace tinyllm
