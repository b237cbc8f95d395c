// Tests for tinyllm/dtype.hpp: bfloat16 / float16 <-> float conversions.
//
// float16 is checked against the compiler's own IEEE binary16 type (_Float16,
// an independent implementation); bfloat16 against a float64 reference that
// rounds to the nearest representable value with ties to even.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/dtype.hpp>
#include <tinyllm/philox.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

using tinyllm::bfloat16;
using tinyllm::float16;

namespace {

float from_bits(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
std::uint32_t to_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// The value of bfloat16 bits as a double; exponent field 255 with mantissa 0
// is read as 2^128 (the "next value" after the largest finite one).
double bf16_value_extended(std::uint32_t bits) {
    const int sign = (bits >> 15) & 1, e = (bits >> 7) & 0xff, m = bits & 0x7f;
    const double mag = e == 0 ? std::ldexp(m, -133) : std::ldexp(1.0 + m / 128.0, e - 127);
    return sign ? -mag : mag;
}

// Round a finite float to bfloat16 in float64 arithmetic: nearest, ties to even.
std::uint16_t bf16_reference(float f) {
    const std::uint32_t t = to_bits(f) >> 16;  // truncated: the candidate toward zero
    const std::uint32_t up = t + 1;             // the next one away from zero
    const double x = f;
    const double dt = std::fabs(x - bf16_value_extended(t));
    const double du = std::fabs(x - bf16_value_extended(up));
    if (dt < du) return static_cast<std::uint16_t>(t);
    if (du < dt) return static_cast<std::uint16_t>(up);
    return static_cast<std::uint16_t>((t & 1) ? up : t);
}

// Random float bit patterns: the whole range, plus many in float16's range.
std::vector<float> random_finite_floats(std::size_t n, std::uint64_t seed) {
    std::vector<float> out;
    tinyllm::philox_generator g(seed);
    while (out.size() < n) {
        std::uint32_t u = g.next_bits();
        if (out.size() % 2) u = (u & 0x80000000u) | (0x33000000u + (u & 0x0fffffffu) % 0x14800000u);  // ~2^-25 .. 2^17
        const float f = from_bits(u);
        if (std::isfinite(f)) out.push_back(f);
    }
    return out;
}

const std::vector<float> edge_cases = {
    0.0f, -0.0f, 1.0f, -1.0f, 3.14159265f, 65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e5f, -1e5f,
    std::ldexp(1.0f, -14), std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(3.0f, -26),
    std::ldexp(1.0f, -26), std::ldexp(1.5f, -25), std::numeric_limits<float>::denorm_min(),
    std::numeric_limits<float>::min(), std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
    from_bits(0x3f808000u), from_bits(0x3f818000u), from_bits(0x3f807fffu), from_bits(0x7f7f8000u)};

}  // namespace

TEST_CASE("known bfloat16 and float16 encodings", "[dtype]") {
    CHECK(tinyllm::float_to_bf16(1.0f).bits == 0x3F80);
    CHECK(tinyllm::float_to_bf16(-2.0f).bits == 0xC000);
    CHECK(tinyllm::float_to_bf16(3.14159265f).bits == 0x4049);
    CHECK(tinyllm::float_to_bf16(std::numeric_limits<float>::infinity()).bits == 0x7F80);
    CHECK(tinyllm::float_to_bf16(std::numeric_limits<float>::max()).bits == 0x7F80);  // rounds up to inf
    CHECK(tinyllm::float_to_fp16(1.0f).bits == 0x3C00);
    CHECK(tinyllm::float_to_fp16(65504.0f).bits == 0x7BFF);
    CHECK(tinyllm::float_to_fp16(65520.0f).bits == 0x7C00);
    CHECK(tinyllm::float_to_fp16(std::ldexp(1.0f, -24)).bits == 0x0001);
    CHECK(tinyllm::float_to_fp16(std::ldexp(1.0f, -25)).bits == 0x0000);  // tie, to even
    CHECK(tinyllm::float_to_fp16(-0.0f).bits == 0x8000);
    CHECK(tinyllm::bf16_to_float({0x3F80}) == 1.0f);
    CHECK(tinyllm::fp16_to_float({0x0001}) == std::ldexp(1.0f, -24));
    CHECK(tinyllm::fp16_to_float({0x7BFF}) == 65504.0f);
    CHECK(std::isnan(tinyllm::bf16_to_float(tinyllm::float_to_bf16(std::nanf("")))));
    CHECK(std::isnan(tinyllm::fp16_to_float(tinyllm::float_to_fp16(std::nanf("")))));
}

TEST_CASE("every bfloat16 and float16 value survives a round trip through float", "[dtype]") {
    for (std::uint32_t bits = 0; bits < 65536; ++bits) {
        const std::uint16_t b = static_cast<std::uint16_t>(bits);
        const float fb = tinyllm::bf16_to_float({b});
        const float fh = tinyllm::fp16_to_float({b});
        const bool nan_b = ((b & 0x7f80) == 0x7f80) && (b & 0x7f);
        const bool nan_h = ((b & 0x7c00) == 0x7c00) && (b & 0x3ff);
        CHECK(std::isnan(fb) == nan_b);
        CHECK(std::isnan(fh) == nan_h);
        if (!nan_b && tinyllm::float_to_bf16(fb).bits != b) FAIL("bfloat16 " << b << " did not round-trip");
        if (!nan_h && tinyllm::float_to_fp16(fh).bits != b) FAIL("float16 " << b << " did not round-trip");
    }
}

TEST_CASE("float -> bfloat16 rounds to nearest, ties to even", "[dtype]") {
    std::vector<float> inputs = random_finite_floats(1 << 20, tinyllm_test::test_seed());
    inputs.insert(inputs.end(), edge_cases.begin(), edge_cases.end());
    std::size_t wrong = 0;
    for (float f : inputs) {
        const std::uint16_t got = tinyllm::float_to_bf16(f).bits, want = bf16_reference(f);
        if (got != want && wrong++ < 5) UNSCOPED_INFO("bf16(" << f << "): got " << got << ", want " << want);
    }
    CHECK(wrong == 0);
}

#ifdef __FLT16_MANT_DIG__
TEST_CASE("float16 conversions agree with the compiler's _Float16", "[dtype]") {
    for (std::uint32_t bits = 0; bits < 65536; ++bits) {
        const std::uint16_t b = static_cast<std::uint16_t>(bits);
        _Float16 h;
        std::memcpy(&h, &b, 2);
        const float want = static_cast<float>(h), got = tinyllm::fp16_to_float({b});
        if (std::isnan(want)) {
            CHECK(std::isnan(got));
        } else if (to_bits(got) != to_bits(want)) {
            FAIL("fp16_to_float(" << b << ") = " << got << ", _Float16 gives " << want);
        }
    }
    std::vector<float> inputs = random_finite_floats(1 << 20, tinyllm_test::test_seed() + 1);
    inputs.insert(inputs.end(), edge_cases.begin(), edge_cases.end());
    inputs.push_back(std::numeric_limits<float>::infinity());
    inputs.push_back(-std::numeric_limits<float>::infinity());
    std::size_t wrong = 0;
    for (float f : inputs) {
        const _Float16 h = static_cast<_Float16>(f);
        std::uint16_t want;
        std::memcpy(&want, &h, 2);
        const std::uint16_t got = tinyllm::float_to_fp16(f).bits;
        if (got != want && wrong++ < 5) UNSCOPED_INFO("fp16(" << f << "): got " << got << ", want " << want);
    }
    CHECK(wrong == 0);
}
#endif

TEST_CASE("to_float / from_float spell every conversion the same way", "[dtype]") {
    CHECK(tinyllm::to_float(tinyllm::from_float<bfloat16>(0.5f)) == 0.5f);
    CHECK(tinyllm::to_float(tinyllm::from_float<float16>(0.5f)) == 0.5f);
    CHECK(tinyllm::to_float(tinyllm::from_float<float>(0.1f)) == 0.1f);
    CHECK(tinyllm::dtype_name<bfloat16>() == "bfloat16");
    CHECK(tinyllm::dtype_name<float16>() == "float16");
    CHECK(tinyllm::dtype_name<float>() == "float32");
    STATIC_REQUIRE(sizeof(bfloat16) == 2);
    STATIC_REQUIRE(sizeof(float16) == 2);
}
