// tests/support/compare.hpp — compare a result with its reference, and make
// fresh random inputs. Shared by every CPU and CUDA test.
//
// The rules every kernel test follows:
//   * Inputs are fresh random numbers each run (a new seed per process, printed
//     so that a failure can be repeated with TINYLLM_TEST_SEED=<seed>).
//   * CUDA outputs are poisoned (NaN-filled, device_buffer::poison) before the
//     kernel runs, so an element the kernel never wrote cannot pass.
//   * The reference is computed in float64 where it matters.
//   * An element passes when |got - ref| <= abs + rel * |ref|; the whole
//     comparison also needs the relative L2 error ||got - ref|| / ||ref|| to be
//     within rel_l2 (||ref|| taken as at least abs * sqrt(n), so a reference of
//     values at the absolute noise floor is judged element by element). A single
//     value has no L2 norm to average over: its relative L2 error is its relative
//     error, which can be any size when the value cancels to near zero, so a
//     comparison of one value is judged by the per-element bound alone. NaN or
//     infinity anywhere never passes.
//   * The result carries the max-abs and relative-L2 errors and a readable
//     report of the first mismatches; TINYLLM_REQUIRE_CLOSE prints it.
#pragma once

#include "catch.hpp"

#include <tinyllm/dtype.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace tinyllm_test {

struct tolerance {
    double abs = 0.0;     // per element: |got - ref| <= abs + rel * |ref|
    double rel = 0.0;
    double rel_l2 = std::numeric_limits<double>::infinity();  // overall: ||got - ref||_2 / ||ref||_2
};

struct comparison {
    std::size_t count = 0;
    double max_abs_error = 0.0;
    std::size_t max_abs_index = 0;
    double rel_l2_error = 0.0;
    std::size_t mismatches = 0;   // elements outside the per-element tolerance
    std::size_t non_finite = 0;   // NaN or Inf in the result or the reference
    bool passed = false;
    std::string report;
};

namespace detail {
inline double as_double(float x) { return x; }
inline double as_double(double x) { return x; }
inline double as_double(tinyllm::bfloat16 x) { return tinyllm::to_float(x); }
inline double as_double(tinyllm::float16 x) { return tinyllm::to_float(x); }
}  // namespace detail

// Compare `got` (float, double, bfloat16 or float16) with a reference.
template <class T, class R>
comparison compare(std::span<const T> got, std::span<const R> reference, tolerance tol, std::string_view what = "") {
    comparison c;
    c.count = got.size();
    std::ostringstream mismatch_lines;
    const std::size_t shown_max = 10;
    std::size_t shown = 0;
    if (got.size() != reference.size()) {
        c.report = "size mismatch: got " + std::to_string(got.size()) + " values, reference has " +
                   std::to_string(reference.size());
        return c;
    }
    double diff2 = 0.0, ref2 = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = detail::as_double(got[i]);
        const double r = detail::as_double(reference[i]);
        const bool finite = std::isfinite(g) && std::isfinite(r);
        const double err = finite ? std::fabs(g - r) : std::numeric_limits<double>::infinity();
        if (!finite) ++c.non_finite;
        if (finite) {
            diff2 += err * err;
            ref2 += r * r;
        }
        if (err > c.max_abs_error) {  // the first non-finite value counts as an infinite error
            c.max_abs_error = err;
            c.max_abs_index = i;
        }
        if (!finite || err > tol.abs + tol.rel * std::fabs(r)) {
            ++c.mismatches;
            if (shown++ < shown_max)
                mismatch_lines << "    [" << i << "] got " << g << ", expected " << r << ", error " << err << "\n";
        }
    }
    // Relative to the reference's size, but never to less than the absolute tolerance per
    // element: a reference of a few values near zero (e.g. one tiny float16) would make any
    // rounding look like a large relative error although every element is within `abs`.
    const double floor2 = static_cast<double>(got.size()) * tol.abs * tol.abs;
    const double scale2 = ref2 > floor2 ? ref2 : floor2;
    c.rel_l2_error = scale2 > 0 ? std::sqrt(diff2 / scale2) : std::sqrt(diff2);
    if (c.non_finite > 0) c.rel_l2_error = std::numeric_limits<double>::infinity();
    // One value: the per-element bound alone (see the rules above).
    c.passed = c.mismatches == 0 && c.non_finite == 0 && (c.count == 1 || c.rel_l2_error <= tol.rel_l2);

    std::ostringstream out;
    out << (what.empty() ? "compare" : what) << ": " << c.count << " values, max-abs error " << c.max_abs_error
        << " (at [" << c.max_abs_index << "]), rel-L2 error " << c.rel_l2_error << "; tolerance abs " << tol.abs
        << " + rel " << tol.rel << ", rel-L2 " << tol.rel_l2 << " -> " << (c.passed ? "PASS" : "FAIL");
    if (c.non_finite) out << "\n  " << c.non_finite << " non-finite value(s) (NaN/Inf never pass)";
    if (c.mismatches) out << "\n  " << c.mismatches << " mismatch(es), the first ones:\n" << mismatch_lines.str();
    c.report = out.str();
    return c;
}

template <class T, class R>
comparison compare(const std::vector<T>& got, const std::vector<R>& reference, tolerance tol,
                   std::string_view what = "") {
    return compare(std::span<const T>(got), std::span<const R>(reference), tol, what);
}

// Two runs that must agree bit for bit (the same kernels on the same data, e.g. a
// replayed CUDA graph and the eager step): how many floats differ in any bit, and
// how many of `got` are not finite. The spans must have the same size.
struct bitwise_comparison {
    std::size_t differ = 0, non_finite = 0;
};
inline bitwise_comparison compare_bits(std::span<const float> got, std::span<const float> want) {
    bitwise_comparison c;
    for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
        c.differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
        c.non_finite += !std::isfinite(got[i]);
    }
    return c;
}

// The seed for this test process: TINYLLM_TEST_SEED if set, else fresh.
inline std::uint64_t test_seed() {
    static const std::uint64_t seed = [] {
        std::uint64_t s;
        if (const char* env = std::getenv("TINYLLM_TEST_SEED")) {
            s = std::strtoull(env, nullptr, 10);
        } else {
            std::random_device rd;
            s = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
        }
        std::printf("tinyllm tests: random seed %llu (TINYLLM_TEST_SEED=%llu repeats this run)\n",
                    static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
        return s;
    }();
    return seed;
}

// A fresh random input of n floats in [lo, hi): input number `which` of this run.
inline std::vector<float> random_floats(std::size_t n, std::uint64_t which, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(v.data(), {n}), test_seed() + 0x9E3779B97F4A7C15ull * (which + 1), lo, hi);
    return v;
}

}  // namespace tinyllm_test

// TINYLLM_REQUIRE_CLOSE(got, reference, tolerance{abs, rel, rel_l2}, "what"):
// compare and require a pass. The report (errors, first mismatches) is printed
// on failure by Catch2 and always to stdout, so logs carry the measured error.
#define TINYLLM_REQUIRE_CLOSE(got, reference, ...)                                               \
    do {                                                                                          \
        const auto tinyllm_cmp_ = ::tinyllm_test::compare((got), (reference), __VA_ARGS__);       \
        std::printf("  %s\n", tinyllm_cmp_.report.c_str());                                       \
        INFO(tinyllm_cmp_.report);                                                                \
        REQUIRE(tinyllm_cmp_.passed);                                                             \
    } while (false)
