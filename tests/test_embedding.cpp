// tests/test_embedding.cpp — the CPU token embedding: rows copied exactly,
// scaling, 16-bit tables, strided ids, and errors for bad ids and shapes.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/embedding.hpp>

#include <cstdint>
#include <vector>

using namespace tinyllm;

TEST_CASE("embedding copies the row of each id") {
    const index_t V = 11, D = 5, B = 2, T = 3;
    const auto table = tinyllm_test::random_floats(V * D, 0);
    const std::vector<std::int32_t> ids{3, 0, 10, 10, 7, 1};
    std::vector<float> out(B * T * D, -1.0f);
    cpu::embedding(tensor_view<float, 3>(out.data(), {B, T, D}), tensor_view<const std::int32_t, 2>(ids.data(), {B, T}),
                   tensor_view<const float, 2>(table.data(), {V, D}));
    for (index_t r = 0; r < B * T; ++r)
        for (index_t d = 0; d < D; ++d) REQUIRE(out[r * D + d] == table[ids[r] * D + d]);

    // scale (Gemma multiplies by sqrt(D)) and 16-bit tables
    std::vector<bfloat16> t16(V * D);
    for (std::size_t i = 0; i < t16.size(); ++i) t16[i] = from_float<bfloat16>(table[i]);
    std::vector<bfloat16> o16(B * T * D);
    cpu::embedding(tensor_view<bfloat16, 3>(o16.data(), {B, T, D}),
                   tensor_view<const std::int32_t, 2>(ids.data(), {B, T}),
                   tensor_view<const bfloat16, 2>(t16.data(), {V, D}), 2.0f);
    for (index_t r = 0; r < B * T; ++r)
        for (index_t d = 0; d < D; ++d)
            REQUIRE(to_float(o16[r * D + d]) == to_float(from_float<bfloat16>(2.0f * to_float(t16[ids[r] * D + d]))));
}

TEST_CASE("embedding reads strided ids (a transposed view)") {
    const index_t V = 4, D = 2;
    const std::vector<float> table{0, 1, 10, 11, 20, 21, 30, 31};
    const std::vector<std::int64_t> ids_tb{1, 2, 3, 0};  // stored (T=2, B=2)
    const tensor_view<const std::int64_t, 2> ids = tensor_view<const std::int64_t, 2>(ids_tb.data(), {2, 2}).transpose(0, 1);
    std::vector<float> out(8);
    cpu::embedding(tensor_view<float, 3>(out.data(), {2, 2, D}), ids, tensor_view<const float, 2>(table.data(), {V, D}));
    // ids as (B, T): [[1, 3], [2, 0]]
    CHECK(out == std::vector<float>{10, 11, 30, 31, 20, 21, 0, 1});
}

TEST_CASE("embedding rejects bad ids and shapes") {
    const std::vector<float> table(4 * 3);
    std::vector<float> out(2 * 3);
    const std::vector<std::int32_t> bad{1, 4};
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(out.data(), {1, 2, 3}),
                                     tensor_view<const std::int32_t, 2>(bad.data(), {1, 2}),
                                     tensor_view<const float, 2>(table.data(), {4, 3})),
                      tinyllm_test::contains("ids(0, 1) = 4 is outside the vocabulary [0, 4)"));
    const std::vector<std::int32_t> negative{-1, 0};
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(out.data(), {1, 2, 3}),
                                     tensor_view<const std::int32_t, 2>(negative.data(), {1, 2}),
                                     tensor_view<const float, 2>(table.data(), {4, 3})),
                      tinyllm_test::contains("ids(0, 0) = -1"));
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(out.data(), {1, 3, 2}),
                                     tensor_view<const std::int32_t, 2>(bad.data(), {1, 2}),
                                     tensor_view<const float, 2>(table.data(), {4, 3})),
                      tinyllm_test::contains("embedding: out has shape"));
}
