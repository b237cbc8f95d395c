// tinyllm/sampling_math.hpp — the arithmetic that the CPU and CUDA samplers
// share, written so that both compute the SAME bits and so choose the same token.
//
// Why this header exists. Sampling turns logits into probabilities
// (p_i = exp(z_i - m) / S, m = max z, S = sum exp(z_j - m)) and then walks a
// cumulative sum until it passes a random threshold. Run naively, a CPU and a
// GPU disagree in the last bits: std::exp and CUDA's expf are different
// approximations, nvcc fuses a*b+c into one fma while g++ does not, and a GPU
// adds 128k numbers in a different order than a loop does. A threshold that
// falls between two such sums picks a different token. tinyllm removes every
// one of those sources of disagreement:
//
//  1. Element-wise math uses only operations IEEE 754 rounds exactly
//     (+, -, *, /, fma, rint, ldexp), each spelled out so that no compiler may
//     fuse or reorder them (on the device the __fadd_rn-style intrinsics,
//     which nvcc never contracts; tinyllm::fma on both sides).
//  2. exp is our own: Cody-Waite range reduction x = n ln2 + r and a degree-7
//     Taylor polynomial in Horner form with fma (error ~1 ulp, identical bits
//     on both sides). See sampling_exp().
//  3. Probabilities are turned into INTEGER weights
//         q_i = floor(exp(z_i - m) * 2^40)          (0 <= q_i <= 2^40)
//     and every sum, prefix sum and comparison of probability mass is done in
//     64-bit integers. Integer addition is associative, so a GPU block may add
//     in any order (tree reductions, atomics) and still get exactly the CPU's
//     sum. A token whose probability is below 2^-40 of the top token's gets
//     weight 0 and is never sampled (the mass lost is < V * 2^-40 of the top
//     token: < 2.4e-7 for V = 256k).
//  4. The random draw is an integer too: r = 64 Philox bits, t = floor(S * r / 2^64)
//     in [0, S), computed with exact 128-bit integer arithmetic, and the chosen
//     token is the first index i (in vocabulary order) with q_0 + ... + q_i > t.
//     Token i is therefore chosen with probability q_i / S (up to 2^-64).
//
// Thresholds (top-k, top-p) are found over the ORDER KEY of a float: a uint32
// that sorts like the float (see order_key), so "the k-th largest logit" can be
// found by radix selection on the GPU without sorting.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/philox.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tinyllm {

// Fixed-point scale of the integer sampling weights: q = floor(w * 2^40).
inline constexpr int sampling_weight_bits = 40;
// The largest vocabulary the integer weights support: V * 2^40 < 2^64.
inline constexpr std::int64_t sampling_max_vocab = std::int64_t{1} << 23;

namespace detail {


// floor(a * b / 2^64) for 64-bit a, b: the high word of the 128-bit product,
// from four 32x32 -> 64 products (portable, exact, the same on both sides).
TINYLLM_HOST_DEVICE std::uint64_t mul_hi_u64(std::uint64_t a, std::uint64_t b) {
    const std::uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
    const std::uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
    const std::uint64_t lo_lo = a_lo * b_lo;
    const std::uint64_t hi_lo = a_hi * b_lo;
    const std::uint64_t lo_hi = a_lo * b_hi;
    const std::uint64_t hi_hi = a_hi * b_hi;
    const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + lo_hi;
    return hi_hi + (hi_lo >> 32) + (cross >> 32);
}

}  // namespace detail

// ---- the order key ------------------------------------------------------------
// A uint32 whose unsigned order is the order of the float: flip the sign bit
// of positive numbers, flip every bit of negative ones. -inf -> 0x007fffff,
// -0 and +0 -> 0x80000000 (equal floats, equal keys), +inf -> 0xff800000.
// (NaN never reaches it: the samplers reject NaN first.)
TINYLLM_HOST_DEVICE std::uint32_t order_key(float x) {
    if (x == 0.0f) x = 0.0f;  // -0 == +0 as floats, so they get one key too
    std::uint32_t bits;
#if TINYLLM_ON_DEVICE
    bits = __float_as_uint(x);
#else
    std::memcpy(&bits, &x, sizeof bits);
#endif
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// ---- exp, the same bits on host and device ------------------------------------
namespace detail {
// exp(x) = p * 2^n for -87 <= x <= 0: n = rint(x / ln2), |r| <= ln2 / 2 with
// x = n ln2 + r, and p = e^r by a degree-7 Taylor polynomial (truncation error
// < 6e-9; p in [0.7, 1.42]). Every step is one correctly rounded IEEE operation,
// so g++ and nvcc produce identical results.
struct exp_parts {
    float p;
    int n;
};
TINYLLM_HOST_DEVICE exp_parts sampling_exp_parts(float x) {
    const float n = rint_rn(mul_rn(x, 1.44269504f));
    // ln 2 = ln2_hi + ln2_lo, ln2_hi with few bits so n * ln2_hi is exact.
    float r = tinyllm::fma(n, -0.693145751953125f, x);
    r = tinyllm::fma(n, -1.428606765330187e-06f, r);
    float p = 1.0f / 5040.0f;
    p = tinyllm::fma(p, r, 1.0f / 720.0f);
    p = tinyllm::fma(p, r, 1.0f / 120.0f);
    p = tinyllm::fma(p, r, 1.0f / 24.0f);
    p = tinyllm::fma(p, r, 1.0f / 6.0f);
    p = tinyllm::fma(p, r, 0.5f);
    p = tinyllm::fma(p, r, 1.0f);
    p = tinyllm::fma(p, r, 1.0f);
    return {p, static_cast<int>(n)};
}
}  // namespace detail

// exp(x) for x <= 0 (the only case sampling needs: x = z - max z). Below -87
// it returns 0. Otherwise p * 2^n (above), scaled by 2^n exactly.
TINYLLM_HOST_DEVICE float sampling_exp(float x) {
    if (!(x >= -87.0f)) return 0.0f;  // also -inf
    const detail::exp_parts e = detail::sampling_exp_parts(x);
    return detail::ldexp_exact(e.p, e.n);  // exact: a power-of-two scaling
}

// The integer sampling weight q = floor(exp(x) * 2^40) of a logit x below the
// row maximum (x = z - m <= 0). exp(0) = 1 gives 2^40; x < -28 gives 0.
//
// It is floor(ldexp(ldexp(p, n), 40)) = floor(p * 2^(n + 40)), computed as the
// latter: x >= -28 gives n >= -40, so 2^(n + 40) is a normal power of two in
// [1, 2^40] and the one product is exact, the same bits as the two exact
// scalings, for one multiply where the device's two ldexpf calls took ~35
// instructions (run E profiled top-p's weighted passes, which compute this for
// every element they weigh, as bound by instruction issue).
TINYLLM_HOST_DEVICE std::uint64_t sampling_weight(float x) {
    if (!(x >= -28.0f)) return 0;
    const detail::exp_parts e = detail::sampling_exp_parts(x);
    const float w = detail::mul_rn(e.p, detail::pow2_exact(e.n + sampling_weight_bits));  // exact scaling
    return static_cast<std::uint64_t>(w);                                                // truncation
}

// A logit z at temperature T, as the samplers see it: z / T, correctly rounded.
// T = 1 (the default) returns z itself, which is what the division by 1 gives,
// bit for bit (signed zeros and infinities included; a NaN row is rejected
// before anything reads its keys), without a division per element per pass.
TINYLLM_HOST_DEVICE float temperature_scaled(float z, float T) {
    return T == 1.0f ? z : detail::div_rn(z, T);
}

// ---- the random draw -----------------------------------------------------------
// 64 random bits for (row, step): Philox stream `stream`, words 2*step and 2*step+1.
TINYLLM_HOST_DEVICE std::uint64_t sampling_bits(std::uint64_t seed, std::uint64_t stream, std::uint64_t step) {
    const std::uint64_t hi = philox_bits(seed, stream, 2 * step);
    const std::uint64_t lo = philox_bits(seed, stream, 2 * step + 1);
    return (hi << 32) | lo;
}

// The threshold t = floor(total * r / 2^64), uniform over [0, total): the chosen
// token is the first one whose running sum of weights exceeds t.
TINYLLM_HOST_DEVICE std::uint64_t sampling_threshold(std::uint64_t total, std::uint64_t random_bits) {
    return detail::mul_hi_u64(total, random_bits);
}

// ---- top-p's target mass --------------------------------------------------------
// Top-p keeps the most probable tokens until their mass reaches p of the total.
// p is fixed-point too: P = floor(p * 2^32) (exact scaling, truncation), and
// the target is ceil(S * P / 2^32), at least 1 so the top token is always kept.
TINYLLM_HOST_DEVICE std::uint64_t top_p_target(std::uint64_t total, float p) {
    const std::uint64_t P = static_cast<std::uint64_t>(detail::ldexp_exact(p, 32));
    // S * P / 2^32 = (S_hi * 2^32 + S_lo) * P / 2^32 = S_hi * P + S_lo * P / 2^32
    const std::uint64_t s_hi = total >> 32, s_lo = total & 0xffffffffu;
    // No overflow: s_lo < 2^32 and P <= 2^32; s_hi <= 2^31 because S <= 2^63 (V <= 2^23
    // weights of at most 2^40), so s_hi * P <= 2^63.
    const std::uint64_t low = s_lo * P;
    std::uint64_t target = s_hi * P + (low >> 32) + ((low & 0xffffffffu) != 0 ? 1 : 0);
    return target == 0 ? 1 : target;
}

// ---- radix selection (the sort-free threshold of top-k and top-p) -------------
// The threshold key K is the largest key with W(key >= K) >= target, where W
// counts elements (top-k, target k) or sums their weights q (top-p). It is found
// one byte at a time, from the top: histogram the next byte of the keys that
// share the prefix chosen so far, then walk the 256 bins from the highest.
// `above` is the weight of the keys above the current prefix; the chosen bin
// is the first where above + hist[bin] reaches the target. The CUDA kernels
// build the histogram in parallel and call this to pick the byte.
template <class Count>
TINYLLM_HOST_DEVICE std::uint32_t radix_pick(const Count* hist, std::uint64_t target, std::uint64_t& above) {
    std::uint64_t acc = above;
    for (int bin = 255; bin >= 0; --bin) {
        const std::uint64_t h = hist[bin];
        if (acc + h >= target) {
            above = acc;
            return static_cast<std::uint32_t>(bin);
        }
        acc += h;
    }
    above = acc;  // unreachable when target <= the total weight
    return 0;
}

namespace detail {
// Radix selection run sequentially (the same passes as the CUDA kernels, one
// thread): over elements 0..n-1 with key_of(i) >= lower.
template <class KeyOf, class WeightOf>
std::uint32_t radix_select_sequential(std::int64_t n, std::uint64_t target, std::uint32_t lower, KeyOf key_of,
                                      WeightOf weight_of) {
    std::uint32_t prefix = 0, mask = 0;
    std::uint64_t above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        std::uint64_t hist[256] = {};
        for (std::int64_t i = 0; i < n; ++i) {
            const std::uint32_t k = key_of(i);
            if (k >= lower && (k & mask) == prefix) hist[(k >> shift) & 0xffu] += weight_of(i);
        }
        prefix |= radix_pick(hist, target, above) << shift;
        mask |= 0xffu << shift;
    }
    return prefix;
}
}  // namespace detail

// ---- element-wise processors (one rounding per operation) -------------------
// Repetition penalty (CTRL, Keskar et al. 2019; Hugging Face's form): a token
// already generated becomes less likely whatever the sign of its logit.
TINYLLM_HOST_DEVICE float repetition_penalized(float logit, float penalty) {
    return logit > 0.0f ? detail::div_rn(logit, penalty) : detail::mul_rn(logit, penalty);
}
// OpenAI's frequency and presence penalties for a token seen `count` > 0 times:
// z - (count * frequency + presence), the bracket as one fma.
TINYLLM_HOST_DEVICE float frequency_presence_penalized(float logit, float count, float frequency, float presence) {
    return detail::sub_rn(logit, tinyllm::fma(count, frequency, presence));
}

}  // namespace tinyllm
