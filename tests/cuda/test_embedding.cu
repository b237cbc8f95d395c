// tests/cuda/test_embedding.cu — the CUDA token embedding (v1 naive, v2
// vectorized) against the CPU reference: float, bfloat16 and float16 tables,
// widths that do and do not allow 16-byte vectors, scaling, strided ids, and
// the error for an id outside the vocabulary.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/embedding.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::index_t;

namespace {

template <class T>
void check_embedding(index_t B, index_t T_, index_t D, index_t V, float scale, tc::embedding_version version) {
    INFO("B=" << B << " T=" << T_ << " D=" << D << " V=" << V << " scale=" << scale << " version="
              << (version == tc::embedding_version::naive ? "naive" : "vectorized") << " sizeof(T)=" << sizeof(T));
    const auto values = tinyllm_test::random_floats(V * D, 1, -2.0f, 2.0f);
    std::vector<T> table(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) table[i] = tinyllm::from_float<T>(values[i]);
    std::mt19937 rng(tinyllm_test::test_seed());
    std::vector<std::int32_t> ids(B * T_);
    for (auto& id : ids) id = static_cast<std::int32_t>(rng() % V);
    std::vector<T> want(B * T_ * D);
    tinyllm::cpu::embedding(tinyllm::tensor_view<T, 3>(want.data(), {B, T_, D}),
                            tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {B, T_}),
                            tinyllm::tensor_view<const T, 2>(table.data(), {V, D}), scale);
    auto d_table = tc::to_device(table);
    auto d_ids = tc::to_device(ids);
    tc::device_buffer<T> d_out(want.size());
    d_out.poison();
    tc::embedding(d_out.view(tinyllm::extents<3>{B, T_, D}),
                  tinyllm::tensor_view<const std::int32_t, 2>(d_ids.data(), {B, T_}),
                  tinyllm::tensor_view<const T, 2>(d_table.data(), {V, D}), scale, version);
    const auto got = tc::to_host(d_out);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const float g = tinyllm::to_float(got[i]), w = tinyllm::to_float(want[i]);
        wrong += !(g == w);  // a copy (times a scale, rounded the same way): bit-exact, NaN never equal
    }
    CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("CUDA embedding matches the CPU reference bit for bit", "[cuda][embedding]") {
    for (auto version : {tc::embedding_version::naive, tc::embedding_version::vectorized}) {
        check_embedding<float>(2, 37, 768, 1000, 1.0f, version);
        check_embedding<float>(3, 5, 13, 50, 1.0f, version);  // D*4 not a multiple of 16: fallback path
        check_embedding<float>(1, 64, 256, 50257, 16.0f, version);
        check_embedding<tinyllm::bfloat16>(2, 33, 512, 3000, 1.0f, version);
        check_embedding<tinyllm::bfloat16>(2, 9, 72, 300, 8.4852814f, version);
        check_embedding<tinyllm::float16>(4, 17, 128, 777, 1.0f, version);
        check_embedding<tinyllm::float16>(1, 1, 6, 10, 0.5f, version);
    }
}

TEST_CASE("CUDA embedding reads strided ids and rejects ids outside the vocabulary", "[cuda][embedding]") {
    const index_t V = 4, D = 4;
    std::vector<float> table(V * D);
    for (std::size_t i = 0; i < table.size(); ++i) table[i] = float(i);
    auto d_table = tc::to_device(table);
    const std::vector<std::int64_t> ids_tb{1, 2, 3, 0};  // stored (T=2, B=2), read transposed as (B, T)
    auto d_ids = tc::to_device(ids_tb);
    tc::device_buffer<float> d_out(2 * 2 * D);
    const auto ids = tinyllm::tensor_view<const std::int64_t, 2>(d_ids.data(), {2, 2}).transpose(0, 1);
    tc::embedding(d_out.view(tinyllm::extents<3>{2, 2, D}), ids, tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D}));
    const auto out = tc::to_host(d_out);
    const std::vector<std::int64_t> order{1, 3, 2, 0};
    for (int r = 0; r < 4; ++r)
        for (int d = 0; d < D; ++d) CHECK(out[r * D + d] == float(order[r] * D + d));

    const std::vector<std::int64_t> bad{0, 1, 9, 2};
    auto d_bad = tc::to_device(bad);
    for (auto version : {tc::embedding_version::naive, tc::embedding_version::vectorized})
        CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<3>{1, 4, D}),
                                        tinyllm::tensor_view<const std::int64_t, 2>(d_bad.data(), {1, 4}),
                                        tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D}), 1.0f, version),
                          tinyllm_test::contains("ids(0, 2) = 9 is outside the vocabulary [0, 4)"));
    // Unchecked (check_ids = false, as a decode step calls it): the bad id's row is NaN,
    // never a table row it does not have nor what the output held before.
    for (auto version : {tc::embedding_version::naive, tc::embedding_version::vectorized}) {
        TINYLLM_CUDA_CHECK(cudaMemset(d_out.data(), 0, d_out.bytes()));  // not NaN before the call
        tc::embedding(d_out.view(tinyllm::extents<3>{1, 4, D}), tinyllm::tensor_view<const std::int64_t, 2>(d_bad.data(), {1, 4}),
                      tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D}), 1.0f, version, /*check_ids=*/false);
        const auto got = tc::to_host(d_out);
        for (int d = 0; d < D; ++d) {
            CHECK(got[1 * D + d] == float(1 * D + d));
            CHECK(std::isnan(got[2 * D + d]));
        }
    }
    // A NaN scale (refused by the CPU reference too), and an out that overlaps the table.
    CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<3>{2, 2, D}), ids,
                                    tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D}), std::nanf("")),
                      tinyllm_test::contains("embedding: scale = nan must be finite"));
    CHECK_THROWS_WITH(tc::embedding(tinyllm::tensor_view<float, 3>(d_table.data() + D, {1, 2, D}),
                                    tinyllm::tensor_view<const std::int64_t, 2>(d_ids.data(), {1, 2}),
                                    tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D})),
                      tinyllm_test::contains("embedding: out must not share memory with the table"));
}

TEST_CASE("CUDA embedding takes ids of any rank: (...) ids give (..., D) rows", "[cuda][embedding][batch]") {
    const index_t V = 50, D = 16, B = 2, T_ = 3;
    const auto values = tinyllm_test::random_floats(static_cast<std::size_t>(V * D), 5, -2.0f, 2.0f);
    std::vector<tinyllm::bfloat16> table(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) table[i] = tinyllm::from_float<tinyllm::bfloat16>(values[i]);
    std::mt19937 rng(tinyllm_test::test_seed());
    std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T_));
    for (auto& id : ids) id = static_cast<std::int32_t>(rng() % V);
    const float scale = 1.5f;
    std::vector<tinyllm::bfloat16> want(static_cast<std::size_t>(B * T_ * D));
    tinyllm::cpu::embedding(tinyllm::tensor_view<tinyllm::bfloat16, 3>(want.data(), {B, T_, D}),
                            tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {B, T_}),
                            tinyllm::tensor_view<const tinyllm::bfloat16, 2>(table.data(), {V, D}), scale);
    auto d_table = tc::to_device(table);
    auto d_ids = tc::to_device(ids);
    tc::device_buffer<tinyllm::bfloat16> d_out(want.size());
    const tinyllm::tensor_view<std::int32_t, 2> ids2(d_ids.data(), {B, T_});  // of non-const ids
    const tinyllm::tensor_view<tinyllm::bfloat16, 2> tab(d_table.data(), {V, D});
    // Bit-exact (a copy times a scale, rounded the same way); poisoned outputs are NaN and never equal.
    const auto count_wrong = [&](std::size_t n, std::size_t first) {
        const auto got = tc::to_host(d_out);
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < n; ++i)
            wrong += !(tinyllm::to_float(got[i]) == tinyllm::to_float(want[first + i]));
        return wrong;
    };
    for (auto version : {tc::embedding_version::naive, tc::embedding_version::vectorized}) {
        INFO("version " << (version == tc::embedding_version::naive ? "naive" : "vectorized"));
        d_out.poison();
        tc::embedding(d_out.view(tinyllm::extents<3>{B, T_, D}), ids2, tab, scale, version);  // (B, T), deduced types
        CHECK(count_wrong(want.size(), 0) == 0);
        d_out.poison();
        tc::embedding<tinyllm::bfloat16, std::int32_t>(d_out.view(tinyllm::extents<2>{B * T_, D}),
                                                       tinyllm::reshape(ids2, {B * T_}), tab, scale, version);  // (B*T)
        CHECK(count_wrong(want.size(), 0) == 0);
        d_out.poison();
        tc::embedding(d_out.view(tinyllm::extents<4>{B, 1, T_, D}), tinyllm::reshape(ids2, {B, index_t{1}, T_}), tab,
                      scale, version);  // (B, 1, T)
        CHECK(count_wrong(want.size(), 0) == 0);
        d_out.poison();
        tc::embedding(d_out.view(tinyllm::extents<2>{B * T_, D}).narrow(0, 0, T_), ids2.slice(0, 1), tab, scale,
                      version);  // one sequence (T)
        CHECK(count_wrong(static_cast<std::size_t>(T_ * D), static_cast<std::size_t>(T_ * D)) == 0);
    }

    // Leading dimensions that do not merge, shapes that do not match, bad ids.
    const tinyllm::tensor_view<std::int32_t, 3> ids3(d_ids.data(), {3, 2, 1});
    CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<4>{2, 3, 1, D}), ids3.transpose(0, 1), tab),
                      tinyllm_test::contains("embedding: ids has shape (2, 3, 1) and strides (1, 2, 1)") &&
                          tinyllm_test::contains("do not merge"));
    CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<3>{T_, B, D}), ids2, tab),
                      tinyllm_test::contains("embedding: out has shape (3, 2, 16) but ids (2, 3)"));
    CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<3>{B, T_, D}).transpose(0, 1), ids2.transpose(0, 1), tab),
                      tinyllm_test::contains("embedding: out has shape (3, 2, 16) and strides"));
    const tinyllm::tensor_view<tinyllm::bfloat16, 2> padded(d_out.data(), {T_, D}, {2 * D, 1});  // rows merge, gaps
    CHECK_THROWS_WITH(tc::embedding(padded, ids2.slice(0, 0), tab), tinyllm_test::contains("out must be contiguous"));
    const std::vector<std::int32_t> bad{0, 1, 2, 3, 4, 99};
    auto d_bad = tc::to_device(bad);
    CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<2>{B * T_, D}),
                                    tinyllm::tensor_view<const std::int32_t, 1>(d_bad.data(), {B * T_}), tab),
                      tinyllm_test::contains("ids(0, 5) = 99 is outside the vocabulary [0, 50)"));
}
