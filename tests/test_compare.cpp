// Tests for the test helper itself (tests/support/compare.hpp): a checker that
// could not fail would make every kernel test worthless.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <cmath>
#include <limits>
#include <vector>

using tinyllm_test::compare;
using tinyllm_test::tolerance;

TEST_CASE("identical values pass with zero error", "[compare]") {
    const std::vector<float> got{1.0f, -2.0f, 3.5f};
    const std::vector<double> ref{1.0, -2.0, 3.5};
    const auto c = compare(got, ref, tolerance{0, 0, 0});
    CHECK(c.passed);
    CHECK(c.max_abs_error == 0.0);
    CHECK(c.rel_l2_error == 0.0);
    CHECK(c.report.find("PASS") != std::string::npos);
}

TEST_CASE("NaN and infinity never pass, whatever the tolerance", "[compare]") {
    const std::vector<double> ref{1.0, 2.0, 3.0};
    const double inf = std::numeric_limits<double>::infinity();
    const tolerance loose{1e30, 1e30, inf};
    const auto with_nan = compare(std::vector<float>{1.0f, std::nanf(""), 3.0f}, ref, loose);
    CHECK_FALSE(with_nan.passed);
    CHECK(with_nan.non_finite == 1);
    CHECK(with_nan.max_abs_index == 1);
    CHECK(with_nan.report.find("NaN/Inf never pass") != std::string::npos);
    const auto with_inf = compare(std::vector<float>{1.0f, 2.0f, std::numeric_limits<float>::infinity()}, ref, loose);
    CHECK_FALSE(with_inf.passed);
    const auto nan_reference = compare(std::vector<float>{1.0f, 2.0f, 3.0f}, std::vector<double>{1, 2, std::nan("")}, loose);
    CHECK_FALSE(nan_reference.passed);
}

TEST_CASE("per-element tolerance is abs + rel * |ref|", "[compare]") {
    const std::vector<double> ref{100.0, 0.0};
    CHECK(compare(std::vector<float>{100.5f, 0.05f}, ref, tolerance{0.1, 0.01}).passed);   // 0.5 <= 0.1 + 1
    CHECK_FALSE(compare(std::vector<float>{100.5f, 0.2f}, ref, tolerance{0.1, 0.01}).passed);  // 0.2 > 0.1
    const auto c = compare(std::vector<float>{102.0f, 0.0f}, ref, tolerance{0.1, 0.01});
    CHECK_FALSE(c.passed);
    CHECK(c.mismatches == 1);
    CHECK(c.max_abs_error == tinyllm_test::Approx(2.0));
    CHECK(c.max_abs_index == 0);
    CHECK(c.report.find("[0] got 102, expected 100") != std::string::npos);
}

TEST_CASE("the relative L2 bound applies on top of the per-element bound", "[compare]") {
    const std::vector<double> ref{1.0, 1.0, 1.0, 1.0};
    const std::vector<float> got{1.1f, 0.9f, 1.1f, 0.9f};  // rel-L2 = 0.1
    const auto c = compare(got, ref, tolerance{0.2, 0.0, 0.05});
    CHECK(c.mismatches == 0);
    CHECK(c.rel_l2_error == tinyllm_test::Approx(0.1).epsilon(1e-5));
    CHECK_FALSE(c.passed);
    CHECK(compare(got, ref, tolerance{0.2, 0.0, 0.11}).passed);
}

TEST_CASE("sizes must match, and 16-bit results compare through float", "[compare]") {
    CHECK_FALSE(compare(std::vector<float>{1.0f}, std::vector<double>{1.0, 2.0}, tolerance{1, 1}).passed);
    const std::vector<tinyllm::bfloat16> got{tinyllm::float_to_bf16(1.0f), tinyllm::float_to_bf16(3.0f)};
    CHECK(compare(got, std::vector<double>{1.0, 3.0}, tolerance{0, 0}).passed);
    CHECK_FALSE(compare(got, std::vector<double>{1.0, 3.1}, tolerance{0.01, 0}).passed);
}

TEST_CASE("random inputs are fresh per input number and reproducible by seed", "[compare]") {
    const auto a = tinyllm_test::random_floats(100, 0), b = tinyllm_test::random_floats(100, 1);
    CHECK(a != b);
    CHECK(a == tinyllm_test::random_floats(100, 0));
    for (float x : a) {
        REQUIRE(x >= -1.0f);
        REQUIRE(x < 1.0f);
    }
}

TEST_CASE("a reference at the absolute noise floor is judged element by element", "[compare]") {
    using tinyllm_test::compare;
    using tinyllm_test::tolerance;
    // Three values near zero, each 2e-3 off relative to itself but far inside abs = 2e-3.
    // Their own norm would make the relative L2 error 2e-3 (over rel_l2 = 1e-3); the floor
    // abs * sqrt(n) judges them against the per-element bound instead.
    const auto tiny = compare(std::vector<float>{1.0e-6f, -2.0e-6f, 3.0e-6f},
                              std::vector<double>{1.002e-6, -2.004e-6, 3.006e-6}, tolerance{2e-3, 2e-3, 1e-3});
    CHECK(tiny.passed);
    CHECK(tiny.rel_l2_error < 1e-5);
    // A reference well above the floor keeps the relative L2 rule: 2% off everywhere fails 1e-2.
    const auto off = compare(std::vector<float>{1.02f, 2.04f, 3.06f}, std::vector<double>{1, 2, 3}, tolerance{0.1, 0.1, 1e-2});
    CHECK_FALSE(off.passed);
    CHECK(off.rel_l2_error == tinyllm_test::Approx(0.02).epsilon(1e-3));
}

TEST_CASE("one value is judged by the per-element bound alone", "[compare]") {
    // A value that cancelled to 5e-3, off by 1e-3: 20% relative, but within abs 1e-2.
    const tolerance tol{1e-2, 1e-2, 1e-3};
    const auto one = compare(std::vector<float>{6e-3f}, std::vector<double>{5e-3}, tol);
    CHECK(one.passed);
    CHECK(one.rel_l2_error > tol.rel_l2);  // still measured and reported
    // The per-element bound still decides a single value.
    CHECK_FALSE(compare(std::vector<float>{0.1f}, std::vector<double>{5e-3}, tol).passed);
    // From two values on, the relative L2 bound applies again.
    CHECK_FALSE(compare(std::vector<float>{6e-3f, 6e-3f}, std::vector<double>{5e-3, 5e-3}, tol).passed);
}
