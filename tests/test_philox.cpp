// Tests for tinyllm/philox.hpp and tinyllm/random.hpp.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

using tinyllm::philox_counter;
using tinyllm::philox_key;
using tinyllm::index_t;

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
    // Bounds whose draws are not finite floats: infinite or NaN, or a width hi - lo that
    // overflows (every draw was +-inf or NaN).
    const tinyllm::tensor_view<float, 1> six(m.data(), {6});
    const float inf = std::numeric_limits<float>::infinity(), big = std::numeric_limits<float>::max();
    CHECK_THROWS_WITH(tinyllm::cpu::fill_uniform(six, seed, 0.0f, inf), Catch::Contains("needs finite lo <= hi"));
    CHECK_THROWS_WITH(tinyllm::cpu::fill_uniform(six, seed, std::nanf(""), 1.0f), Catch::Contains("needs finite lo"));
    CHECK_THROWS_WITH(tinyllm::cpu::fill_uniform(six, seed, -big, big), Catch::Contains("hi - lo = "));
    tinyllm::cpu::fill_uniform(six, seed, -big / 2, big / 2);  // the widest range that fits
    for (float x : m) CHECK(std::isfinite(x));
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

TEST_CASE("the portable ln, sin and cos behind fill_normal are within a few ulp", "[philox][random]") {
    // ln on every u1 the transform can see (multiples of 2^-24 in (0, 1]), sampled, and a wide range.
    double worst_ln = 0.0;
    for (std::uint32_t k = 1; k <= (1u << 24); k += 997) {
        const float u = static_cast<float>(k) * (1.0f / 16777216.0f);
        const double want = std::log(static_cast<double>(u));
        const double err = std::fabs(tinyllm::detail::log_positive(u) - want);
        worst_ln = std::max(worst_ln, err / std::max(std::fabs(want), 1e-30));
        if (want == 0.0) REQUIRE(tinyllm::detail::log_positive(u) == 0.0f);
    }
    for (float x : {1e-30f, 0.1f, 0.5f, 0.70710677f, 0.70710683f, 1.0f, 1.41421354f, 2.0f, 10.0f, 3e30f}) {
        const double want = std::log(static_cast<double>(x));
        if (want != 0.0) worst_ln = std::max(worst_ln, std::fabs(tinyllm::detail::log_positive(x) - want) / std::fabs(want));
    }
    INFO("worst relative error of log_positive = " << worst_ln);
    CHECK(worst_ln < 4 * 6e-8);  // a few float ulp (2^-24 = 6e-8)
    double worst_trig = 0.0;
    for (std::uint32_t k = 0; k < (1u << 24); k += 331) {
        const float u = static_cast<float>(k) * (1.0f / 16777216.0f);
        float s, c;
        tinyllm::detail::sin_cos_2pi(u, &s, &c);
        const double angle = 2.0 * 3.14159265358979323846 * u;
        worst_trig = std::max({worst_trig, std::fabs(s - std::sin(angle)), std::fabs(c - std::cos(angle))});
    }
    INFO("worst absolute error of sin_cos_2pi = " << worst_trig);
    CHECK(worst_trig < 4 * 6e-8);
}

TEST_CASE("fill_normal is reproducible, handles any size and checks its arguments", "[philox][random]") {
    const std::uint64_t seed = tinyllm_test::test_seed();
    std::vector<float> a(1001), b(1001), c(1001);
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(a.data(), {1001}), seed);
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(b.data(), {1001}), seed);
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(c.data(), {1001}), seed + 1);
    CHECK(a == b);
    std::size_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == c[i];
    CHECK(same == 0);
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(std::isfinite(a[i]));
        REQUIRE(a[i] == tinyllm::normal_element(seed, i, 0.0f, 1.0f));
    }
    // Any size: a short fill is the start of a long one.
    for (index_t n : {1, 2, 3, 5, 6, 7}) {
        std::vector<float> s(static_cast<std::size_t>(n));
        tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(s.data(), {n}), seed);
        CHECK(std::equal(s.begin(), s.end(), a.begin()));
    }
    // mean + stddev * z with one rounding.
    std::vector<float> shifted(1001);
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 2>(shifted.data(), {7, 143}), seed, 3.0f, 0.5f);
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(shifted[i] == std::fma(0.5f, a[i], 3.0f));
    // Another Philox stream than fill_uniform's, so the two fills of one seed are independent.
    CHECK(tinyllm::normal_stream != 0);
    CHECK(tinyllm::philox_block(seed, 0, 0).v[0] != tinyllm::philox_block(seed, tinyllm::normal_stream, 0).v[0]);
    // Errors.
    std::vector<float> m(6);
    tinyllm::tensor_view<float, 2> strided(m.data(), {2, 2}, {3, 1});
    CHECK_THROWS_AS(tinyllm::cpu::fill_normal(strided, seed), tinyllm::error);
    CHECK_THROWS_AS(tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(m.data(), {6}), seed, 0.0f, -1.0f),
                    tinyllm::error);
    const tinyllm::tensor_view<float, 1> six(m.data(), {6});
    const float inf = std::numeric_limits<float>::infinity(), big = std::numeric_limits<float>::max();
    CHECK_THROWS_WITH(tinyllm::cpu::fill_normal(six, seed, std::nanf(""), 1.0f),
                      Catch::Contains("needs a finite mean"));
    CHECK_THROWS_WITH(tinyllm::cpu::fill_normal(six, seed, 0.0f, inf), Catch::Contains("finite stddev >= 0"));
    CHECK_THROWS_WITH(tinyllm::cpu::fill_normal(six, seed, 0.0f, big / 2), Catch::Contains("past the largest float"));
    CHECK_THROWS_WITH(tinyllm::cpu::fill_normal(six, seed, big, 1e36f), Catch::Contains("past the largest float"));
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(m.data(), {0}), seed);  // empty: nothing to do
}

// 2^20 standard normals from a fixed seed (deterministic). Tolerances are five
// standard errors of each raw moment for n draws from N(0, 1), sqrt(Var(z^k) / n):
// mean sqrt(1/n) = 0.001, E z^2 sqrt(2/n) = 0.0014, E z^3 sqrt(15/n) = 0.0038,
// E z^4 sqrt(96/n) = 0.0096. The histogram has 40 bins of width 0.2 on [-4, 4) plus
// the two tails, 41 degrees of freedom: chi-square ~ 41 +- 9, and the critical
// value for p = 0.001 is 74.7.
TEST_CASE("fill_normal has the moments and histogram of N(0, 1)", "[philox][random]") {
    const std::size_t n = 1 << 20;
    std::vector<float> z(n);
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(z.data(), {n}), 20261127);
    double m1 = 0, m2 = 0, m3 = 0, m4 = 0, largest = 0;
    for (float x : z) {
        const double d = x;
        m1 += d;
        m2 += d * d;
        m3 += d * d * d;
        m4 += d * d * d * d;
        largest = std::max(largest, std::fabs(d));
    }
    m1 /= n, m2 /= n, m3 /= n, m4 /= n;
    INFO("mean " << m1 << ", variance " << m2 - m1 * m1 << ", third moment " << m3 << ", fourth moment " << m4
                 << ", largest |z| " << largest);
    CHECK(std::fabs(m1) < 5 * 0.001);
    CHECK(std::fabs(m2 - m1 * m1 - 1.0) < 5 * 0.0014);
    CHECK(std::fabs(m3) < 5 * 0.0038);
    CHECK(std::fabs(m4 - 3.0) < 5 * 0.0096);
    CHECK(largest <= 5.77);
    CHECK(largest > 4.0);  // the tails are there: P(|z| > 4) * n = 66 expected

    const int bins = 42;  // (-inf, -4), 40 bins on [-4, 4), [4, inf)
    std::vector<double> count(bins, 0.0);
    for (float x : z) {
        int bin = 0;
        if (x >= 4.0f) bin = bins - 1;
        else if (x >= -4.0f) bin = std::clamp(1 + static_cast<int>(std::floor((x + 4.0) / 0.2)), 1, bins - 2);
        count[static_cast<std::size_t>(bin)] += 1;
    }
    auto cdf = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
    double chi2 = 0;
    for (int b = 0; b < bins; ++b) {
        const double lo = b == 0 ? -INFINITY : -4.0 + 0.2 * (b - 1);
        const double hi = b == bins - 1 ? INFINITY : -4.0 + 0.2 * b;
        const double expected = n * (cdf(hi) - cdf(lo));
        chi2 += (count[b] - expected) * (count[b] - expected) / expected;
    }
    INFO("chi-square = " << chi2);
    CHECK(chi2 < 74.7);
}

TEST_CASE("fill_uniform and fill_normal take owning tensors too", "[philox][random][api]") {
    tinyllm::tensor<float, 3> a({2, 3, 5}), b({2, 3, 5});
    tinyllm::cpu::fill_normal(a, 11, 0.5f, 2.0f);
    tinyllm::cpu::fill_normal(b.view(), 11, 0.5f, 2.0f);
    CHECK(a.values() == b.values());
    tinyllm::cpu::fill_uniform(a, 12, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(b.view(), 12, -1.0f, 1.0f);
    CHECK(a.values() == b.values());
    CHECK(a(1, 2, 4) >= -1.0f);
    CHECK(a(1, 2, 4) < 1.0f);
}
