// Tests for tinyllm/tensor.hpp: shapes, strides, indexing, views, bounds checks.
#include "support/catch.hpp"

#include <tinyllm/tensor.hpp>

#include <cstddef>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;

TEST_CASE("row-major strides of a (B, T, H, D) shape", "[tensor]") {
    const extents<4> shape{2, 3, 4, 5};
    const auto strides = tinyllm::row_major_strides(shape);
    CHECK(strides[3] == 1);
    CHECK(strides[2] == 5);
    CHECK(strides[1] == 20);
    CHECK(strides[0] == 60);
    CHECK(shape.product() == 120);
    CHECK(tinyllm::to_string(shape) == "(2, 3, 4, 5)");
}

TEST_CASE("a contiguous view addresses element (i, j, k) at i*s0 + j*s1 + k", "[tensor]") {
    std::vector<int> data(2 * 3 * 4);
    std::iota(data.begin(), data.end(), 0);
    tensor_view<int, 3> x(data.data(), {2, 3, 4});  // (2, 3, 4)
    CHECK(x.size() == 24);
    CHECK(x.is_contiguous());
    for (index_t i = 0; i < 2; ++i)
        for (index_t j = 0; j < 3; ++j)
            for (index_t k = 0; k < 4; ++k) CHECK(x(i, j, k) == i * 12 + j * 4 + k);
    x(1, 2, 3) = -7;
    CHECK(data.back() == -7);
}

TEST_CASE("transpose swaps strides without copying", "[tensor]") {
    std::vector<float> data(6);
    std::iota(data.begin(), data.end(), 0.0f);
    tensor_view<float, 2> a(data.data(), {2, 3});  // (2, 3)
    auto t = a.transpose(0, 1);                     // (3, 2)
    CHECK(t.extent(0) == 3);
    CHECK(t.extent(1) == 2);
    CHECK(t.stride(0) == 1);
    CHECK(t.stride(1) == 3);
    CHECK_FALSE(t.is_contiguous());
    for (index_t i = 0; i < 2; ++i)
        for (index_t j = 0; j < 3; ++j) CHECK(t(j, i) == a(i, j));
    CHECK(t.data() == a.data());
}

TEST_CASE("slice drops a dimension and narrow keeps a range", "[tensor]") {
    std::vector<int> data(2 * 3 * 4);
    std::iota(data.begin(), data.end(), 0);
    tensor_view<int, 3> x(data.data(), {2, 3, 4});  // (B=2, T=3, D=4)

    auto seq1 = x.slice(0, 1);  // (3, 4): batch row 1
    CHECK(seq1.extent(0) == 3);
    CHECK(seq1(2, 3) == x(1, 2, 3));
    CHECK(seq1.is_contiguous());

    auto col = x.slice(2, 2);  // (2, 3): feature 2 of every token
    CHECK(col.stride(0) == 12);
    CHECK(col.stride(1) == 4);
    CHECK(col(1, 1) == x(1, 1, 2));
    CHECK_FALSE(col.is_contiguous());

    auto mid = x.narrow(1, 1, 2);  // (2, 2, 4): tokens 1 and 2
    CHECK(mid.extent(1) == 2);
    CHECK(mid(0, 0, 0) == x(0, 1, 0));
    CHECK(mid(1, 1, 3) == x(1, 2, 3));
    CHECK_FALSE(mid.is_contiguous());
    CHECK(x.narrow(1, 0, 3).is_contiguous());
}

TEST_CASE("a view of T converts to a view of const T", "[tensor]") {
    std::vector<double> data{1, 2, 3};
    tensor_view<double, 1> v(data.data(), {3});
    tensor_view<const double, 1> c = v;
    CHECK(c(2) == 3.0);
    STATIC_REQUIRE_FALSE(std::is_convertible_v<tensor_view<const double, 1>, tensor_view<double, 1>>);
}

TEST_CASE("shapes built from mixed integer types", "[tensor]") {
    const std::size_t rows = 3;
    const int cols = 5;
    extents<2> e{rows, cols};
    CHECK(e[0] == 3);
    CHECK(e[1] == 5);
    CHECK(e == extents<2>{3, 5});
    CHECK(e != extents<2>{5, 3});
}

TEST_CASE("reshape needs contiguity and the same element count", "[tensor][errors]") {
    std::vector<float> data(24);
    tensor_view<float, 3> x(data.data(), {2, 3, 4});
    auto flat = tinyllm::reshape(x, extents<2>{6, 4});
    CHECK(flat.extent(0) == 6);
    CHECK(&flat(5, 3) == &data[23]);
    CHECK_THROWS_AS(tinyllm::reshape(x, extents<2>{5, 4}), tinyllm::error);
    CHECK_THROWS_WITH(tinyllm::reshape(x.transpose(0, 2), extents<1>{24}),
                      tinyllm_test::contains("needs a contiguous tensor"));
}

#if TINYLLM_BOUNDS_CHECK
TEST_CASE("out-of-range indices throw in checked builds", "[tensor][errors]") {
    std::vector<float> data(6);
    tensor_view<float, 2> a(data.data(), {2, 3});
    CHECK_NOTHROW(a(1, 2));
    CHECK_THROWS_AS(a(2, 0), tinyllm::error);
    CHECK_THROWS_AS(a(0, -1), tinyllm::error);
    CHECK_THROWS_WITH(a(0, 3), tinyllm_test::contains("index 3 is out of range [0, 3) in dimension 1"));
    CHECK_THROWS_AS(a.slice(0, 2), tinyllm::error);
    CHECK_THROWS_AS(a.narrow(1, 2, 2), tinyllm::error);
}
#endif

TEST_CASE("expect_shape names both shapes", "[tensor][errors]") {
    std::vector<float> data(6);
    tensor_view<float, 2> a(data.data(), {2, 3});
    CHECK_NOTHROW(tinyllm::expect_shape(a, {2, 3}, "x"));
    CHECK_THROWS_WITH(tinyllm::expect_shape(a, {3, 2}, "layer_norm: out"),
                      tinyllm_test::contains("layer_norm: out has shape (2, 3) but (3, 2) is required"));
}

TEST_CASE("the owning tensor holds row-major data and hands out views", "[tensor]") {
    tensor<float, 2> t({3, 4}, 1.5f);  // (3, 4)
    CHECK(t.size() == 12);
    CHECK(t(2, 3) == 1.5f);
    t(1, 2) = 7.0f;
    CHECK(t.values()[1 * 4 + 2] == 7.0f);
    tensor_view<float, 2> v = t.view();
    CHECK(v(1, 2) == 7.0f);
    const tensor<float, 2>& ct = t;
    tensor_view<const float, 2> cv = ct.view();
    CHECK(cv.data() == t.data());
    CHECK_THROWS_AS((tensor<float, 2>({-1, 4})), tinyllm::error);
    tensor<float, 1> empty(extents<1>{0});
    CHECK(empty.view().empty());
}

// The construction traps a first program runs into: each of these lines once failed to
// compile ("call of overloaded ... is ambiguous", "no matching function for reshape").
TEST_CASE("tensors are built from braced sizes of any integer type, one dimension included", "[tensor][api]") {
    const long D = 4;
    const std::size_t n = 3;
    const int i = 2;
    tensor<float, 1> w({D});  // one-element list: a (D) vector, not a copy of a tensor
    tensor<float, 1> w_unsigned({n}, 1.5f);
    tensor<float, 2> x({i, n});  // mixed integer types
    tensor<int, 3> y({i, n, D}, 7);
    CHECK(w.shape() == extents<1>{4});
    CHECK(w_unsigned.size() == 3);
    CHECK(w_unsigned(2) == 1.5f);
    CHECK(x.shape() == extents<2>{2, 3});
    CHECK(y.shape() == extents<3>{2, 3, 4});
    CHECK(y(1, 2, 3) == 7);
}

TEST_CASE("reshape deduces the new rank from the braced sizes, for views and tensors", "[tensor][api]") {
    const index_t B = 2, T = 3, D = 4;
    tensor<float, 3> x({B, T, D});
    std::iota(x.values().begin(), x.values().end(), 0.0f);
    auto flat = tinyllm::reshape(x, {B * T, D});  // (B*T, D)
    static_assert(std::is_same_v<decltype(flat), tensor_view<float, 2>>);
    CHECK(flat.shape() == extents<2>{6, 4});
    CHECK(flat(5, 3) == x(1, 2, 3));
    const auto& cx = x;
    auto all = tinyllm::reshape(cx, {24});
    static_assert(std::is_same_v<decltype(all), tensor_view<const float, 1>>);
    CHECK(all(23) == 23.0f);
    const std::size_t rows = 6;
    auto mixed = tinyllm::reshape(x.view(), {rows, std::size_t{4}});
    CHECK(mixed.shape() == extents<2>{6, 4});
    CHECK_THROWS_WITH(tinyllm::reshape(x, {5, D}), tinyllm_test::contains("changes the number of elements"));
}

TEST_CASE("as_rows merges leading dimensions into rows, or says why it cannot", "[tensor][api]") {
    tensor<float, 4> x({2, 3, 5, 4});  // (B, T, H, D)
    const auto r = tinyllm::as_rows<const float>(x, "x");
    CHECK(r.shape() == extents<2>{30, 4});
    CHECK(r.strides() == extents<2>{4, 1});
    CHECK(&r(29, 3) == &x(1, 2, 4, 3));
    // A column slice of the last dimension keeps its row stride.
    const auto narrow = tinyllm::as_rows<float>(x.view().narrow(3, 1, 2), "x");
    CHECK(narrow.shape() == extents<2>{30, 2});
    CHECK(&narrow(7, 1) == &x(0, 1, 2, 2));
    // Leading dimensions of size 1 carry no stride constraint.
    const auto one = tinyllm::as_rows<float>(x.view().narrow(0, 1, 1).narrow(1, 2, 1), "x");
    CHECK(one.shape() == extents<2>{5, 4});
    CHECK(&one(0, 0) == &x(1, 2, 0, 0));
    // A vector is one row.
    tensor<float, 1> v({4});
    CHECK(tinyllm::as_rows<float>(v, "v").shape() == extents<2>{1, 4});
    // Transposed leading dimensions do not merge.
    CHECK_THROWS_WITH(tinyllm::as_rows<float>(x.view().transpose(0, 1), "rms_norm: x"),
                      tinyllm_test::contains("rms_norm: x has shape (3, 2, 5, 4)") &&
                          tinyllm_test::contains("do not merge into rows"));
    CHECK_THROWS_WITH(tinyllm::expect_equal_shapes(x, v, "op", "out", "x"),
                      tinyllm_test::contains("op: out has shape (2, 3, 5, 4) but x has shape (4)"));
}

TEST_CASE("a view refuses a negative extent and a dimension it does not have", "[tensor]") {
    std::vector<float> memory(64, 0.0f);
    // A shape computed as T - n < 0 is refused where the view is made, before
    // any operation sizes a loop or a buffer from it.
    CHECK_THROWS_WITH((tensor_view<float, 2>(memory.data(), {-16, 16})),
                      tinyllm_test::contains("a tensor view of shape (-16, 16) has a negative extent"));
    CHECK_THROWS_WITH((tensor_view<float, 2>(memory.data(), {4, -3}, {1, 1})),
                      tinyllm_test::contains("has a negative extent"));
    const tensor_view<float, 2> v(memory.data(), {8, 8});
    CHECK_THROWS_WITH(v.narrow(0, 2, -1),
                      tinyllm_test::contains("a tensor view of shape (-1, 8) has a negative extent"));
    CHECK(v.narrow(0, 8, 0).size() == 0);  // an empty range at the end is a view
    // (The dimensions come from a volatile, as a computed one would: a constant out of
    // range is already a compiler warning.)
    volatile std::size_t two = 2, three = 3, five = 5;
    CHECK_THROWS_WITH(v.slice(five, 0),
                      tinyllm_test::contains("dimension 5 of a tensor view of rank 2 does not exist"));
    CHECK_THROWS_WITH(v.narrow(two, 0, 1), tinyllm_test::contains("dimension 2 of a tensor view of rank 2"));
    CHECK_THROWS_WITH(v.transpose(0, three), tinyllm_test::contains("dimension 3 of a tensor view of rank 2"));
}

// A view's strides and size are products of its extents: a shape whose nonzero extents
// multiply past index_t is refused where the view is made, not overflowed (the owning
// tensor below already refused them; views and reshape did not).
TEST_CASE("a view or a reshape refuses a shape whose strides or size would overflow", "[tensor]") {
    std::vector<float> memory(4, 0.0f);
    CHECK_THROWS_WITH((tensor_view<float, 3>(nullptr, {0, index_t{1} << 62, 4})),
                      tinyllm_test::contains("a tensor view of shape (0, 4611686018427387904, 4) has more elements"));
    CHECK_THROWS_WITH((tensor_view<float, 2>(memory.data(), {index_t{1} << 32, index_t{1} << 32}, {0, 0})),
                      tinyllm_test::contains("more elements (or, with a 0 among them, strides) than index_t counts"));
    CHECK(tensor_view<float, 3>(nullptr, {0, index_t{1} << 40, 4}).size() == 0);  // fits: a view of nothing
    const tensor_view<float, 1> four(memory.data(), {4});
    CHECK_THROWS_WITH(tinyllm::reshape(four, extents<2>{index_t{1} << 32, index_t{1} << 32}),
                      tinyllm_test::contains("changes the number of elements"));
    const tensor_view<float, 1> none(memory.data(), {0});
    CHECK_THROWS_WITH(tinyllm::reshape(none, extents<3>{index_t{1} << 62, 4, 0}),
                      tinyllm_test::contains("changes the number of elements"));
#if TINYLLM_BOUNDS_CHECK
    // narrow's end, start + length - 1, asked without the sum.
    CHECK_THROWS_WITH(four.narrow(0, 1, std::numeric_limits<index_t>::max()),
                      tinyllm_test::contains("index 4 is out of range [0, 4) in dimension 0"));
    CHECK(four.narrow(0, 1, 3).size() == 3);
#endif
}

TEST_CASE("an owning tensor refuses a shape whose size overflows", "[tensor]") {
    CHECK_THROWS_WITH((tensor<float, 3>(extents<3>{0, index_t{1} << 40, index_t{1} << 40})),
                      tinyllm_test::contains("tensor shape (0, 1099511627776, 1099511627776) holds more elements"));
    CHECK_THROWS_WITH((tensor<float, 2>(extents<2>{index_t{1} << 31, index_t{1} << 31})),
                      tinyllm_test::contains("holds more elements than memory can"));
    CHECK(tensor<float, 3>(extents<3>{0, 5, 7}).size() == 0);
}

TEST_CASE("detail::overlaps compares the memory two views touch", "[tensor]") {
    std::vector<float> memory(64, 0.0f);
    const tensor_view<float, 2> a(memory.data(), {4, 4});       // elements 0..15
    const tensor_view<float, 2> b(memory.data() + 12, {2, 4});  // 12..19: shares 12..15
    const tensor_view<float, 2> c(memory.data() + 16, {2, 4});  // 16..23
    CHECK(tinyllm::detail::overlaps(a, b));
    CHECK_FALSE(tinyllm::detail::overlaps(a, c));
    CHECK(tinyllm::detail::overlaps(a.transpose(0, 1), b));  // the same memory, any order
    CHECK_FALSE(tinyllm::detail::overlaps(a, tensor_view<float, 2>(memory.data(), {0, 4})));  // empty: none
    const tensor_view<float, 1> last(memory.data() + 15, {1});
    CHECK(tinyllm::detail::overlaps(a, last));  // views of different ranks
}

TEST_CASE("detail::overlaps sets apart views that interleave without touching", "[tensor]") {
    using tinyllm::detail::overlaps;
    // The two column halves of a (4, 8) matrix: address ranges intersect, elements do not.
    std::vector<float> memory(64, 0.0f);
    const tensor_view<float, 2> left(memory.data(), {4, 4}, {8, 1}), right(memory.data() + 4, {4, 4}, {8, 1});
    CHECK_FALSE(overlaps(left, right));
    CHECK_FALSE(overlaps(right, left));
    CHECK(overlaps(left, tensor_view<float, 2>(memory.data() + 3, {4, 4}, {8, 1})));  // one column shared
    CHECK(overlaps(left, tensor_view<float, 2>(memory.data() + 8, {4, 4}, {8, 1})));  // a row down: rows shared
    CHECK(overlaps(right, tensor_view<float, 2>(memory.data() + 10, {3, 4}, {8, 1})));
    // q, k and v of one fused (B, T, 3, H, D) buffer, each viewed (B, T, H, D).
    constexpr index_t B = 2, T = 3, H = 2, D = 4;
    std::vector<float> qkv(B * T * 3 * H * D);
    const auto part = [&](index_t i) {
        return tensor_view<float, 4>(qkv.data() + i * H * D, {B, T, H, D}, {T * 3 * H * D, 3 * H * D, D, 1});
    };
    CHECK_FALSE(overlaps(part(0), part(1)));
    CHECK_FALSE(overlaps(part(0), part(2)));
    CHECK_FALSE(overlaps(part(2), part(1)));
    CHECK(overlaps(part(1), part(1)));
    // q's heads against all of k and v (B, T, 2H, D): they interleave, do not touch.
    CHECK_FALSE(overlaps(
        part(0), tensor_view<float, 4>(qkv.data() + H * D, {B, T, 2 * H, D}, {T * 3 * H * D, 3 * H * D, D, 1})));
    // A transposed view (strides out of order) and a byte-offset view are still compared.
    CHECK(overlaps(left.transpose(0, 1), tensor_view<float, 1>(memory.data() + 17, {1})));
    CHECK_FALSE(overlaps(left.transpose(0, 1), tensor_view<float, 1>(memory.data() + 20, {1})));
}

TEST_CASE("detail::same_elements and distinct_elements tell in place and self-overlapping views", "[tensor]") {
    using tinyllm::detail::distinct_elements;
    using tinyllm::detail::same_elements;
    std::vector<float> memory(64, 0.0f);
    const tensor_view<float, 2> a(memory.data(), {4, 4});
    CHECK(same_elements(a, tensor_view<const float, 2>(a)));
    CHECK_FALSE(same_elements(a, a.transpose(0, 1)));                                 // same memory, other order
    CHECK_FALSE(same_elements(a, tensor_view<float, 2>(memory.data() + 4, {4, 4})));  // shifted by a row
    CHECK_FALSE(same_elements(a, tensor_view<float, 1>(memory.data(), {16})));        // another rank
    // One row viewed with two row strides: the same elements.
    CHECK(same_elements(tensor_view<float, 2>(memory.data(), {1, 4}, {4, 1}),
                        tensor_view<float, 2>(memory.data(), {1, 4}, {16, 1})));
    CHECK_FALSE(same_elements(tensor_view<float, 2>(memory.data(), {2, 4}, {4, 1}),
                              tensor_view<float, 2>(memory.data(), {2, 4}, {8, 1})));

    CHECK(distinct_elements(a));
    CHECK(distinct_elements(a.transpose(0, 1)));
    CHECK(distinct_elements(tensor_view<float, 2>(memory.data(), {4, 2}, {8, 2})));        // every other column
    CHECK(distinct_elements(tensor_view<float, 2>(memory.data(), {1, 4}, {0, 1})));        // stride 0 of extent 1: fine
    CHECK_FALSE(distinct_elements(tensor_view<float, 2>(memory.data(), {4, 4}, {0, 1})));  // rows broadcast
    CHECK_FALSE(distinct_elements(tensor_view<float, 2>(memory.data(), {4, 4}, {2, 1})));  // rows overlap
    CHECK_FALSE(distinct_elements(tensor_view<float, 2>(memory.data(), {2, 2}, {1, 1})));  // (0,1) is (1,0)

    const tensor_view<float, 2> shifted(memory.data() + 1, {4, 4});
    CHECK_THROWS_WITH(tinyllm::detail::expect_in_place_or_apart("op", "out", shifted, "x", a),
                      Catch::Contains("op: out must be exactly x (in place)"));
    CHECK_NOTHROW(tinyllm::detail::expect_in_place_or_apart("op", "out", a, "x", tensor_view<const float, 2>(a)));
    CHECK_THROWS_WITH(tinyllm::detail::expect_apart("op", "out", a, "x", a), Catch::Contains("must not share memory"));
    CHECK_THROWS_WITH(
        tinyllm::detail::expect_distinct_elements("op", "out", tensor_view<float, 2>(memory.data(), {4, 4}, {0, 1})),
        Catch::Contains("two of its elements share an address"));
}

TEST_CASE("detail::nonzero_product_at_most bounds sizes without overflowing", "[tensor]") {
    using tinyllm::detail::nonzero_product_at_most;
    CHECK(nonzero_product_at_most(24, {2, 3, 4}));
    CHECK_FALSE(nonzero_product_at_most(23, {2, 3, 4}));
    CHECK(nonzero_product_at_most(6, {2, 0, 3, -5}));  // zeros and negatives are skipped
    const index_t big = index_t{1} << 62;
    CHECK_FALSE(nonzero_product_at_most(std::numeric_limits<index_t>::max(), {big, big, big}));  // would wrap
    const std::vector<index_t> shape{0, big, 4};
    CHECK_FALSE(nonzero_product_at_most(big, shape));  // holds nothing, but 2^64 would overflow strides
    CHECK(nonzero_product_at_most(big, std::vector<index_t>{0, big / 4, 4}));
}
