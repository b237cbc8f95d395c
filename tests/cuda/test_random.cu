// CUDA tests for <tinyllm/cuda/random.cuh>'s fill_normal: bit-identical to the
// CPU reference for every size (odd ones included), at a misaligned start, and
// for any mean and stddev; bad arguments are refused before launching.
// (fill_uniform's device tests are in test_core.cu.)
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/random.cuh>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::index_t;

namespace {

std::size_t differing_bits(const std::vector<float>& a, const std::vector<float>& b, std::size_t offset = 0) {
    std::size_t differing = 0;
    for (std::size_t i = 0; i < b.size(); ++i) differing += std::memcmp(&a[offset + i], &b[i], sizeof(float)) != 0;
    return differing;
}

}  // namespace

TEST_CASE("fill_normal on the device is bit-identical to the CPU reference", "[cuda][random]") {
    for (index_t n : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{5}, index_t{1023}, index_t{1} << 20,
                      (index_t{1} << 22) + 7}) {
        const std::uint64_t seed = tinyllm_test::test_seed() + static_cast<std::uint64_t>(n);
        const float mean = n % 2 ? 0.0f : -1.5f, stddev = n % 2 ? 1.0f : 0.25f;
        tc::device_buffer<float> d(static_cast<std::size_t>(n));
        d.poison();
        tc::fill_normal(d.view(tinyllm::extents<1>{n}), seed, mean, stddev);
        std::vector<float> want(static_cast<std::size_t>(n));
        tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(want.data(), {n}), seed, mean, stddev);
        const auto got = tc::to_host(d);
        INFO("n = " << n << ", mean = " << mean << ", stddev = " << stddev);
        std::size_t finite = 0;
        for (float x : got) finite += std::isfinite(x);
        CHECK(finite == got.size());  // no poison left
        CHECK(differing_bits(got, want) == 0);
    }
}

TEST_CASE("fill_normal at a misaligned start takes the scalar path and still matches", "[cuda][random]") {
    const std::uint64_t seed = tinyllm_test::test_seed();
    tc::device_buffer<float> d(1003);
    d.poison();
    tc::fill_normal(tinyllm::tensor_view<float, 2>(d.data() + 1, {7, 143}), seed);
    std::vector<float> want(1001);
    tinyllm::cpu::fill_normal(tinyllm::tensor_view<float, 1>(want.data(), {1001}), seed);
    const auto got = tc::to_host(d);
    CHECK(std::isnan(got[0]));
    CHECK(std::isnan(got[1002]));
    CHECK(differing_bits(got, want, 1) == 0);
}

TEST_CASE("fill_normal on the device refuses bad arguments", "[cuda][random]") {
    tc::device_buffer<float> d(8);
    tinyllm::tensor_view<float, 2> strided(d.data(), {2, 2}, {4, 1});
    CHECK_THROWS_AS(tc::fill_normal(strided, 1), tinyllm::error);
    CHECK_THROWS_AS(tc::fill_normal(d.view(tinyllm::extents<1>{8}), 1, 0.0f, -1.0f), tinyllm::error);
    // Parameters whose draws are not finite floats (the CPU's checks, before any launch).
    const float inf = std::numeric_limits<float>::infinity(), big = std::numeric_limits<float>::max();
    CHECK_THROWS_WITH(tc::fill_normal(d.view(tinyllm::extents<1>{8}), 1, std::nanf(""), 1.0f),
                      Catch::Contains("needs a finite mean"));
    CHECK_THROWS_WITH(tc::fill_normal(d.view(tinyllm::extents<1>{8}), 1, 0.0f, big / 2),
                      Catch::Contains("past the largest float"));
    CHECK_THROWS_WITH(tc::fill_uniform(d.view(tinyllm::extents<1>{8}), 1, 0.0f, inf),
                      Catch::Contains("needs finite lo <= hi"));
    CHECK_THROWS_WITH(tc::fill_uniform(d.view(tinyllm::extents<1>{8}), 1, -big, big), Catch::Contains("hi - lo = "));
    tc::fill_normal(tinyllm::tensor_view<float, 1>(d.data(), {0}), 1);  // empty: no launch
}
