// tests/test_embedding.cpp — the CPU token embedding: rows copied exactly,
// scaling, 16-bit tables, strided ids, and errors for bad ids and shapes.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/embedding.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
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
    // Unsigned ids past index_t's range: 2^64 - 1 became -1 when compared as index_t
    // (the backward then wrote outside the table).
    const std::vector<std::uint64_t> huge{std::numeric_limits<std::uint64_t>::max(), 0};
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(out.data(), {1, 2, 3}),
                                     tensor_view<const std::uint64_t, 2>(huge.data(), {1, 2}),
                                     tensor_view<const float, 2>(table.data(), {4, 3})),
                      tinyllm_test::contains("ids(0, 0) = 18446744073709551615 is outside the vocabulary [0, 4)"));
    std::vector<float> dtable(4 * 3);
    CHECK_THROWS_WITH(cpu::embedding_backward(tensor_view<float, 2>(dtable.data(), {4, 3}),
                                              tensor_view<const std::uint64_t, 2>(huge.data(), {1, 2}),
                                              tensor_view<const float, 3>(out.data(), {1, 2, 3})),
                      tinyllm_test::contains("= 18446744073709551615 is outside"));
    const std::vector<std::int32_t> good{0, 1};
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(out.data(), {1, 2, 3}),
                                     tensor_view<const std::int32_t, 2>(good.data(), {1, 2}),
                                     tensor_view<const float, 2>(table.data(), {4, 3}), std::nanf("")),
                      tinyllm_test::contains("embedding: scale = nan must be finite"));
    // out over the table (a row copied onto a row still to be read), with stride 0, or over dout.
    std::vector<float> shared(6 * 3, 1.0f);
    const tensor_view<const float, 2> table_view(shared.data(), {4, 3});
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(shared.data() + 9, {1, 2, 3}),
                                     tensor_view<const std::int32_t, 2>(good.data(), {1, 2}), table_view),
                      tinyllm_test::contains("embedding: out must not share memory with the table"));
    CHECK_THROWS_WITH(cpu::embedding(tensor_view<float, 3>(out.data(), {1, 2, 3}, {0, 0, 1}),
                                     tensor_view<const std::int32_t, 2>(good.data(), {1, 2}), table_view),
                      tinyllm_test::contains("embedding: out has shape (1, 2, 3) and strides (0, 0, 1)"));
    CHECK_THROWS_WITH(cpu::embedding_backward(tensor_view<float, 2>(shared.data(), {4, 3}),
                                              tensor_view<const std::int32_t, 2>(good.data(), {1, 2}),
                                              tensor_view<const float, 3>(shared.data() + 9, {1, 2, 3})),
                      tinyllm_test::contains("embedding_backward: dtable must not share memory with dout"));
}

TEST_CASE("embedding takes ids of any rank: (...) ids give (..., D) rows", "[batch]") {
    const index_t V = 9, D = 4, B = 2, T = 3;
    tinyllm::tensor<float, 2> table({V, D});  // an owning table
    table.values() = tinyllm_test::random_floats(static_cast<std::size_t>(V * D), 3);
    tinyllm::tensor<std::int32_t, 2> ids({B, T});
    ids.values() = {4, 0, 8, 8, 2, 5};
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> want(static_cast<std::size_t>(B * T * D), nan);
    cpu::embedding(tensor_view<float, 3>(want.data(), {B, T, D}), std::as_const(ids).view(),
                   std::as_const(table).view(), 0.5f);  // the (B, T) definition

    tinyllm::tensor<float, 3> out({B, T, D}, nan);  // owning tensors, ids of non-const
    cpu::embedding(out, ids, table, 0.5f);
    CHECK(out.values() == want);

    tinyllm::tensor<float, 2> flat({B * T, D}, nan);  // (B*T) ids as one vector
    cpu::embedding(flat, reshape(ids, {B * T}), table.view(), 0.5f);
    CHECK(flat.values() == want);

    tinyllm::tensor<float, 4> out4({B, 1, T, D}, nan);  // (B, 1, T) ids
    cpu::embedding(out4.view(), reshape(std::as_const(ids), {B, index_t{1}, T}), table, 0.5f);
    CHECK(out4.values() == want);

    std::vector<float> row(static_cast<std::size_t>(T * D), nan);  // one sequence (T)
    cpu::embedding(tensor_view<float, 2>(row.data(), {T, D}), ids.view().slice(0, 1), table, 0.5f);
    CHECK(row == std::vector<float>(want.begin() + T * D, want.end()));

    // 16-bit table, 1-D ids of another integer type.
    tinyllm::tensor<bfloat16, 2> t16({V, D});
    for (std::size_t i = 0; i < t16.values().size(); ++i) t16.values()[i] = from_float<bfloat16>(table.values()[i]);
    const tinyllm::tensor<std::int64_t, 1> ids64({3}, 7);
    tinyllm::tensor<bfloat16, 2> o16({3, D});
    cpu::embedding(o16, ids64, t16);
    for (index_t r = 0; r < 3; ++r)
        for (index_t d = 0; d < D; ++d) CHECK(to_float(o16(r, d)) == to_float(t16(7, d)));

    // Leading dimensions that do not merge, shapes that do not match, bad ids.
    tinyllm::tensor<std::int32_t, 3> ids3({2, 2, 2}, 1);
    tinyllm::tensor<float, 4> out3({2, 2, 2, D});
    CHECK_THROWS_WITH(cpu::embedding(out3, ids3.view().transpose(0, 1), table),
                      tinyllm_test::contains("embedding: ids has shape (2, 2, 2) and strides (2, 4, 1)") &&
                          tinyllm_test::contains("do not merge"));
    CHECK_THROWS_WITH(cpu::embedding(out3.view().transpose(0, 1), ids3, table),
                      tinyllm_test::contains("embedding: out has shape (2, 2, 2, 4) and strides"));
    tinyllm::tensor<float, 3> wrong({T, B, D});
    CHECK_THROWS_WITH(cpu::embedding(wrong, ids, table),
                      tinyllm_test::contains("embedding: out has shape (3, 2, 4) but ids (2, 3)"));
    tinyllm::tensor<float, 3> narrow({B, T, D - 1});
    CHECK_THROWS_WITH(cpu::embedding(narrow, ids, table), tinyllm_test::contains("embedding: out has width 3"));
    ids(1, 2) = 9;
    CHECK_THROWS_WITH(cpu::embedding(out, ids, table), tinyllm_test::contains("ids(1, 2) = 9 is outside the vocabulary"));
    CHECK_THROWS_WITH(cpu::embedding(flat, reshape(ids, {B * T}), table),
                      tinyllm_test::contains("ids(0, 5) = 9 is outside the vocabulary"));
}
