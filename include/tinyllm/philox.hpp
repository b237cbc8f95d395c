// tinyllm/philox.hpp — Philox4x32-10, a counter-based random number generator
// that gives the same numbers on the CPU and on the GPU.
//
// An ordinary generator (std::mt19937) is a state machine: to get the n-th
// number you must produce the n-1 before it, and thousands of GPU threads
// cannot share one. A counter-based generator is a pure function instead
//
//     (counter, key) -> 4 random 32-bit words
//
// so thread i simply computes philox(counter = i, key = seed). The CPU reference
// asks for the same counter and gets the same bits, which is how tinyllm's CPU
// and CUDA samplers (and noisy MoE gating) choose identical tokens.
//
// Philox (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011) runs 10 rounds over the counter words (c0, c1, c2, c3)
// with the key (k0, k1). Each round multiplies two words and mixes the halves:
//
//     p0 = M0 * c0   (64-bit product)         M0 = 0xD2511F53
//     p1 = M1 * c2                            M1 = 0xCD9E8D57
//     (c0, c1, c2, c3) <- (hi(p1) ^ c1 ^ k0,  lo(p1),  hi(p0) ^ c3 ^ k1,  lo(p0))
//
// and between rounds the key is bumped by the Weyl constants
// (k0, k1) += (0x9E3779B9, 0xBB67AE85). Ten rounds pass the BigCrush tests.
// This is the same generator as Random123's philox4x32_10 and cuRAND's
// Philox4_32_10 (tests check the published known-answer values).
//
// tinyllm's convention for streams of numbers (see philox_uniform):
//     key     = (seed low 32 bits, seed high 32 bits)
//     counter = (block low, block high, stream low, stream high)
// where the n-th number of a stream comes from block n / 4, word n % 4. A
// sampler uses one stream per batch row; a kernel thread needs no state.
#pragma once

#include <tinyllm/config.hpp>

#include <cstdint>

namespace tinyllm {

struct philox_counter {
    std::uint32_t v[4];
};
struct philox_key {
    std::uint32_t v[2];
};

namespace detail {

inline constexpr std::uint32_t philox_m0 = 0xD2511F53u;
inline constexpr std::uint32_t philox_m1 = 0xCD9E8D57u;
inline constexpr std::uint32_t philox_w0 = 0x9E3779B9u;  // golden ratio
inline constexpr std::uint32_t philox_w1 = 0xBB67AE85u;  // sqrt(3) - 1

TINYLLM_HOST_DEVICE void mul_hi_lo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi, std::uint32_t& lo) {
    const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
    hi = static_cast<std::uint32_t>(p >> 32);
    lo = static_cast<std::uint32_t>(p);
}

TINYLLM_HOST_DEVICE philox_counter philox_round(philox_counter c, philox_key k) {
    std::uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(philox_m0, c.v[0], hi0, lo0);
    mul_hi_lo(philox_m1, c.v[2], hi1, lo1);
    return {{hi1 ^ c.v[1] ^ k.v[0], lo1, hi0 ^ c.v[3] ^ k.v[1], lo0}};
}

}  // namespace detail

// The Philox4x32-10 bijection: 4 random words for one (counter, key).
TINYLLM_HOST_DEVICE philox_counter philox4x32_10(philox_counter counter, philox_key key) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key.v[0] += detail::philox_w0;
            key.v[1] += detail::philox_w1;
        }
        counter = detail::philox_round(counter, key);
    }
    return counter;
}

// A uniform float in [0, 1) from the top 24 bits of a random word: every value
// is a multiple of 2^-24, so it is exact in float and never reaches 1.
TINYLLM_HOST_DEVICE float uniform_float(std::uint32_t bits) {
    return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// Block `block` of stream `stream` for `seed`: the random words 4 block .. 4 block + 3.
TINYLLM_HOST_DEVICE philox_counter philox_block(std::uint64_t seed, std::uint64_t stream, std::uint64_t block) {
    const philox_counter counter{{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                                  static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)}};
    const philox_key key{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
    return philox4x32_10(counter, key);
}

// The n-th random word of stream `stream` for `seed` (see the convention above).
TINYLLM_HOST_DEVICE std::uint32_t philox_bits(std::uint64_t seed, std::uint64_t stream, std::uint64_t n) {
    return philox_block(seed, stream, n >> 2).v[n & 3];
}

// The n-th uniform [0, 1) float of stream `stream` for `seed`.
TINYLLM_HOST_DEVICE float philox_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t n) {
    return uniform_float(philox_bits(seed, stream, n));
}

// A sequential generator over one stream, for host code that wants "the next
// number": philox_generator g(seed, stream); float u = g.uniform();
// It produces exactly philox_uniform(seed, stream, 0), (…, 1), (…, 2), ...
class philox_generator {
public:
    TINYLLM_HOST_DEVICE philox_generator(std::uint64_t seed, std::uint64_t stream = 0)
        : seed_(seed), stream_(stream) {}

    TINYLLM_HOST_DEVICE std::uint32_t next_bits() {
        if ((position_ & 3) == 0) {
            const std::uint64_t block = position_ >> 2;
            block_ = philox4x32_10({{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                                     static_cast<std::uint32_t>(stream_), static_cast<std::uint32_t>(stream_ >> 32)}},
                                   {{static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32)}});
        }
        return block_.v[position_++ & 3];
    }
    TINYLLM_HOST_DEVICE float uniform() { return uniform_float(next_bits()); }
    TINYLLM_HOST_DEVICE std::uint64_t position() const { return position_; }

private:
    std::uint64_t seed_;
    std::uint64_t stream_;
    std::uint64_t position_ = 0;
    philox_counter block_{};
};

}  // namespace tinyllm
