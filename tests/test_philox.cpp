// Tests for tinyllm/philox.hpp and tinyllm/random.hpp.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

using tinyllm::philox_counter;
using tinyllm::philox_key;

// Known-answer values published with Random123 (kat_vectors, philox4x32 10):
// counter (4 words), key (2 words) -> output (4 words).
TEST_CASE("Philox4x32-10 reproduces the published known-answer values", "[philox]") {
    struct kat {
        philox_counter counter;
        philox_key key;
        philox_counter expected;
    };
    const kat cases[] = {
        {{{0, 0, 0, 0}}, {{0, 0}}, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
        {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, {{0xffffffff, 0xffffffff}},
         {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
        {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, {{0xa4093822, 0x299f31d0}},
         {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
    };
    for (const auto& c : cases) {
        const philox_counter out = tinyllm::philox4x32_10(c.counter, c.key);
        for (int j = 0; j < 4; ++j) CHECK(out.v[j] == c.expected.v[j]);
    }
}

TEST_CASE("the sequential generator walks the same stream as philox_uniform", "[philox]") {
    const std::uint64_t seed = tinyllm_test::test_seed();
    for (std::uint64_t stream : {std::uint64_t{0}, std::uint64_t{7}, std::uint64_t{1} << 40}) {
        tinyllm::philox_generator g(seed, stream);
        for (std::uint64_t n = 0; n < 100; ++n) {
            const std::uint32_t bits = g.next_bits();
            REQUIRE(bits == tinyllm::philox_bits(seed, stream, n));
            REQUIRE(tinyllm::uniform_float(bits) == tinyllm::philox_uniform(seed, stream, n));
        }
        CHECK(g.position() == 100);
    }
    // Different streams and seeds give different numbers.
    CHECK(tinyllm::philox_bits(seed, 0, 0) != tinyllm::philox_bits(seed, 1, 0));
    CHECK(tinyllm::philox_bits(seed, 0, 0) != tinyllm::philox_bits(seed + 1, 0, 0));
}

TEST_CASE("uniform_float covers [0, 1) and never reaches 1", "[philox]") {
    CHECK(tinyllm::uniform_float(0) == 0.0f);
    CHECK(tinyllm::uniform_float(0xffffffffu) == 1.0f - std::ldexp(1.0f, -24));
    CHECK(tinyllm::uniform_float(0xffffffffu) < 1.0f);
    CHECK(tinyllm::uniform_float(0x80000000u) == 0.5f);
}

TEST_CASE("fill_uniform is reproducible and in range", "[philox][random]") {
    const std::uint64_t seed = tinyllm_test::test_seed();
    std::vector<float> a(1001), b(1001), c(1001);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(a.data(), {1001}), seed, -2.0f, 3.0f);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(b.data(), {1001}), seed, -2.0f, 3.0f);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(c.data(), {1001}), seed + 1, -2.0f, 3.0f);
    CHECK(a == b);
    CHECK(a != c);
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(a[i] >= -2.0f);
        REQUIRE(a[i] < 3.0f);
        REQUIRE(a[i] == tinyllm::uniform_element(seed, i, -2.0f, 3.0f));
    }
    std::vector<float> m(6);
    tinyllm::tensor_view<float, 2> strided(m.data(), {2, 2}, {3, 1});
    CHECK_THROWS_AS(tinyllm::cpu::fill_uniform(strided, seed), tinyllm::error);
    CHECK_THROWS_AS(tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(m.data(), {6}), seed, 1.0f, 0.0f),
                    tinyllm::error);
}

// A fixed seed keeps this statistical test deterministic: with 2^20 draws in 64
// bins a uniform source gives chi-square ~ 63 +- 11; the critical value for
// p = 0.001 at 63 degrees of freedom is 103.4.
TEST_CASE("Philox uniforms pass a chi-square test and have mean 1/2", "[philox][random]") {
    const std::size_t n = 1 << 20, bins = 64;
    std::vector<float> u(n);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(u.data(), {n}), 20261127);
    std::vector<double> count(bins, 0.0);
    double sum = 0.0;
    for (float x : u) {
        count[static_cast<std::size_t>(x * bins)] += 1;
        sum += x;
    }
    double chi2 = 0.0;
    const double expected = static_cast<double>(n) / bins;
    for (double c : count) chi2 += (c - expected) * (c - expected) / expected;
    INFO("chi-square = " << chi2);
    CHECK(chi2 < 103.4);
    const double mean = sum / n, sigma = std::sqrt(1.0 / 12.0 / n);
    INFO("mean = " << mean);
    CHECK(std::fabs(mean - 0.5) < 4 * sigma);
}
