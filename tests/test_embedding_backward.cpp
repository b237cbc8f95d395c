// tests/test_embedding_backward.cpp — the backward of the token embedding and of
// learned positions (embedding.hpp, positional.hpp): the table's gradient is a
// scatter-add of dout's rows into the rows their ids read.
//
// Checks: central finite differences of the forward (the lookup is linear in the
// table, so h = 0.25 has no truncation error and only the float rounding of the
// forward's outputs remains); an independent double reference on batches where
// one id repeats hundreds of times; the result is the same whatever the order of
// the tokens (each row is summed in double, which is exact for these inputs, and
// rounded once); accumulate (a tied lm_head), scale, 16-bit tables, ids of any
// rank; and the errors for bad ids and shapes, which leave the gradient unwritten.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/embedding.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::tolerance;

namespace cpu = tinyllm::cpu;

namespace {

std::uint64_t seed(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

template <std::size_t R>
tensor<float, R> normal(const extents<R>& shape, std::uint64_t which, float stddev = 1.0f) {
    tensor<float, R> t(shape);
    cpu::fill_normal(t, seed(which), 0.0f, stddev);
    return t;
}

// Random ids in [0, V): with probability `repeat`, the id `frequent` (a common token).
template <class Id, std::size_t R>
tensor<Id, R> random_ids(const extents<R>& shape, index_t V, std::uint64_t which, double repeat = 0.0,
                         Id frequent = 0) {
    tensor<Id, R> ids(shape);
    std::mt19937_64 rng(seed(which));
    std::uniform_int_distribution<long long> pick(0, V - 1);
    std::bernoulli_distribution often(repeat);
    for (Id& id : ids.values()) id = often(rng) ? frequent : static_cast<Id>(pick(rng));
    return ids;
}

// The central-difference gradient of loss() with respect to every element of input.
std::vector<double> numeric_gradient(std::vector<float>& v, const std::function<double()>& loss, double h) {
    std::vector<double> grad(v.size());
    for (std::size_t k = 0; k < v.size(); ++k) {
        const float saved = v[k];
        const float plus = static_cast<float>(saved + h), minus = static_cast<float>(saved - h);
        v[k] = plus;
        const double l_plus = loss();
        v[k] = minus;
        const double l_minus = loss();
        v[k] = saved;
        grad[k] = (l_plus - l_minus) / (static_cast<double>(plus) - static_cast<double>(minus));
    }
    return grad;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
}

// dtable(v, :) = scale * sum of dout's rows with id v, in double, by the definition
// (every row of the table visited for every token: no grouping, no sorting).
std::vector<double> scatter_add_64(const std::vector<std::int32_t>& ids, const std::vector<float>& dout, index_t V,
                                   index_t D, double scale) {
    std::vector<double> want(static_cast<std::size_t>(V * D), 0.0);
    for (index_t v = 0; v < V; ++v)
        for (std::size_t i = 0; i < ids.size(); ++i)
            if (ids[i] == v)
                for (index_t d = 0; d < D; ++d)
                    want[static_cast<std::size_t>(v * D + d)] += scale * dout[i * static_cast<std::size_t>(D) + d];
    return want;
}

}  // namespace

TEST_CASE("embedding_backward matches finite differences of the lookup", "[embedding][backward]") {
    const index_t V = 7, D = 5, B = 2, T = 6;
    auto table = normal(extents<2>{V, D}, 1);
    auto ids = random_ids<std::int32_t>(extents<2>{B, T}, V - 1, 2);  // id V - 1 never occurs: its row gets 0
    ids(1, 4) = ids(0, 1);                                           // and one id repeats for sure
    auto dout = normal(extents<3>{B, T, D}, 3);
    for (float scale : {1.0f, 2.5f}) {
        INFO("scale = " << scale);
        tensor<float, 2> dtable({V, D}, 99.0f);  // overwritten
        cpu::embedding_backward(dtable, ids, dout, scale);
        // L = sum(dout * embedding(table)) is linear in the table: h = 0.25 has no
        // truncation error; the float rounding of the scaled outputs (6e-8 each, a few
        // per element) over 2h leaves ~1e-6. Tolerance 1e-5 absolute (observed ~1e-7).
        auto loss = [&] {
            tensor<float, 3> out({B, T, D});
            cpu::embedding(out, ids, table, scale);
            return dot(dout.values(), out.values());
        };
        TINYLLM_REQUIRE_CLOSE(dtable.values(), numeric_gradient(table.values(), loss, 0.25),
                              tolerance{1e-5, 0, 1e-6}, "embedding dtable vs finite differences");
        for (index_t d = 0; d < D; ++d) CHECK(dtable(V - 1, d) == 0.0f);
    }
}

TEST_CASE("embedding_backward sums hundreds of repeats of one id, rounding once", "[embedding][backward]") {
    // B * T = 1200 tokens over V = 50, 60 % of them the id 3 (a frequent token).
    const index_t V = 50, D = 24, B = 3, T = 400;
    const auto ids = random_ids<std::int32_t>(extents<2>{B, T}, V, 10, 0.6, 3);
    const auto dout = normal(extents<3>{B, T, D}, 11);
    tensor<float, 2> dtable({V, D});
    cpu::embedding_backward(dtable, ids, dout, 0.5f);
    const auto want = scatter_add_64(ids.values(), dout.values(), V, D, 0.5);
    // Each element is a double sum of floats (exact here: ~700 values of similar
    // size) rounded once to float: within half an ulp, 6e-8 relative.
    TINYLLM_REQUIRE_CLOSE(dtable.values(), want, tolerance{1e-30, 6e-8, 6e-8}, "dtable of a repeated id vs double");

    // The same tokens in another order (ids and dout rows permuted together) give
    // the same bits: the sums are exact in double, so their order does not matter.
    std::vector<std::size_t> perm(static_cast<std::size_t>(B * T));
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed(12)));
    tensor<std::int32_t, 1> ids_p({B * T});
    tensor<float, 2> dout_p({B * T, D});
    for (std::size_t i = 0; i < perm.size(); ++i) {
        ids_p.values()[i] = ids.values()[perm[i]];
        for (index_t d = 0; d < D; ++d) dout_p(static_cast<index_t>(i), d) = dout.values()[perm[i] * D + d];
    }
    tensor<float, 2> dtable_p({V, D});
    cpu::embedding_backward(dtable_p, ids_p, dout_p, 0.5f);
    CHECK(dtable_p.values() == dtable.values());
}

TEST_CASE("embedding_backward accumulates: GPT-2's tied lm_head and token embedding", "[embedding][backward]") {
    // wte (V, D) serves twice: x = wte[ids] at the bottom, logits = h wte^T at the top.
    // Its gradient is the sum of linear_backward's dweight and the lookup's scatter-add.
    const index_t V = 9, D = 4, B = 2, T = 5;
    auto wte = normal(extents<2>{V, D}, 20);
    const auto ids = random_ids<std::int64_t>(extents<2>{B, T}, V, 21);
    auto h = normal(extents<3>{B, T, D}, 22);
    const auto dlogits = normal(extents<3>{B, T, V}, 23);
    const auto dx = normal(extents<3>{B, T, D}, 24);
    tensor<float, 2> dwte({V, D});
    cpu::linear_backward({}, dwte, {}, dlogits, h, wte);          // the lm_head's gradient, overwriting
    const auto head_only = dwte.values();
    cpu::embedding_backward(dwte, ids, dx, 1.0f, /*accumulate=*/true);  // plus the lookup's
    tensor<float, 2> lookup_only({V, D});
    cpu::embedding_backward(lookup_only, ids, dx);
    std::vector<double> want(head_only.size());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = static_cast<double>(head_only[i]) + lookup_only.values()[i];
    // Each element against the double sum of the two parts: accumulating adds the
    // rows of a repeated id one at a time in float, a rounding each (up to 10 rows
    // of normal numbers here, partial sums up to about 4), so a few ulps of the
    // addends — not of the result, which cancellation can make much smaller.
    TINYLLM_REQUIRE_CLOSE(dwte.values(), want, tolerance{1e-6, 0, 3e-7}, "tied dwte = head + lookup");

    // And against finite differences of the whole: L = sum(dlogits * h wte^T) + sum(dx * wte[ids]).
    auto loss = [&] {
        tensor<float, 3> logits({B, T, V}), x({B, T, D});
        cpu::linear(logits, h, wte, tensor_view<const float, 1>{});
        cpu::embedding(x, ids, wte);
        return dot(dlogits.values(), logits.values()) + dot(dx.values(), x.values());
    };
    TINYLLM_REQUIRE_CLOSE(dwte.values(), numeric_gradient(wte.values(), loss, 0.25), tolerance{3e-5, 0, 1e-5},
                          "tied dwte vs finite differences");
}

TEST_CASE("embedding_backward takes ids of any rank and 16-bit tables", "[embedding][backward]") {
    const index_t V = 6, D = 3;
    const auto ids = random_ids<std::int32_t>(extents<3>{2, 3, 4}, V, 30);
    const auto dout = normal(extents<4>{2, 3, 4, D}, 31);
    tensor<float, 2> dtable({V, D});
    cpu::embedding_backward(dtable, ids, dout);
    // (B, K, T) equals the flattened (24) call: ids as one sequence.
    tensor<float, 2> flat({V, D});
    cpu::embedding_backward(flat, reshape(ids, {24}), reshape(dout, {24, D}));
    CHECK(flat.values() == dtable.values());

    // bfloat16 table and gradient: the double sums of the bf16 values of dout,
    // rounded to float and then to bf16 (2^-8 relative).
    std::vector<bfloat16> dout16(dout.values().size());
    std::vector<float> dout16_as_float(dout16.size());
    for (std::size_t i = 0; i < dout16.size(); ++i) {
        dout16[i] = tinyllm::from_float<bfloat16>(dout.values()[i]);
        dout16_as_float[i] = tinyllm::to_float(dout16[i]);
    }
    std::vector<bfloat16> dtable16(static_cast<std::size_t>(V * D));
    cpu::embedding_backward(tensor_view<bfloat16, 2>(dtable16.data(), {V, D}), ids,
                            tensor_view<const bfloat16, 4>(dout16.data(), {2, 3, 4, D}));
    TINYLLM_REQUIRE_CLOSE(dtable16, scatter_add_64(ids.values(), dout16_as_float, V, D, 1.0),
                          tolerance{1e-30, 4e-3, 4e-3}, "bfloat16 dtable");
}

TEST_CASE("embedding_backward rejects bad ids and shapes before writing", "[embedding][backward][errors]") {
    const index_t V = 4, D = 3;
    tensor<std::int32_t, 2> ids({2, 3}, 1);
    const auto dout = normal(extents<3>{2, 3, D}, 40);
    tensor<float, 2> dtable({V, D}, 5.0f);
    ids(1, 2) = 4;
    CHECK_THROWS_WITH(cpu::embedding_backward(dtable, ids, dout),
                      tinyllm_test::contains("embedding_backward: ids(1, 2) = 4 is outside the vocabulary [0, 4)"));
    ids(1, 2) = -1;
    CHECK_THROWS_WITH(cpu::embedding_backward(dtable, ids, dout, 1.0f, true),
                      tinyllm_test::contains("ids(1, 2) = -1 is outside the vocabulary"));
    for (float g : dtable.values()) CHECK(g == 5.0f);  // nothing was written
    ids(1, 2) = 0;

    tensor<float, 2> narrow({V, D + 1});
    CHECK_THROWS_WITH(cpu::embedding_backward(narrow, ids, dout),
                      tinyllm_test::contains("embedding_backward: dout has width 3 but dtable has rows of 4"));
    const auto wrong = normal(extents<3>{3, 2, D}, 41);
    CHECK_THROWS_WITH(cpu::embedding_backward(dtable, ids, wrong),
                      tinyllm_test::contains("embedding_backward: dout has shape (3, 2, 3) but ids (2, 3)"));
    CHECK_THROWS_WITH(cpu::embedding_backward(dtable, ids, dout, std::nanf("")),
                      tinyllm_test::contains("embedding_backward: scale = nan must be finite"));
    for (float g : dtable.values()) CHECK(g == 5.0f);
}

TEST_CASE("learned_positions_backward matches finite differences of add_learned_positions", "[positional][backward]") {
    const index_t P = 8, D = 4, B = 3, T = 5;
    auto table = normal(extents<2>{P, D}, 50);
    tensor<std::int64_t, 2> positions({B, T});
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t) positions(b, t) = b == 2 ? 2 + t : t;  // rows 0, 1 from 0; row 2 from 2
    auto x = normal(extents<3>{B, T, D}, 51);
    const auto dout = normal(extents<3>{B, T, D}, 52);
    tensor<float, 2> dtable({P, D}, -3.0f);
    cpu::learned_positions_backward(dtable.view(), dout.view(), positions.view());
    auto loss = [&] {
        auto y = x;
        cpu::add_learned_positions(y.view(), tensor_view<const float, 2>(table.view()), positions.view());
        return dot(dout.values(), y.values());
    };
    // Linear in the table: h = 0.25, tolerance as for the embedding.
    TINYLLM_REQUIRE_CLOSE(dtable.values(), numeric_gradient(table.values(), loss, 0.25), tolerance{1e-5, 0, 1e-6},
                          "learned positions dtable vs finite differences");
    CHECK(dtable(7, 0) == 0.0f);  // position 7 never occurs

    // accumulate adds to a gradient already there.
    tensor<float, 2> twice = dtable;
    cpu::learned_positions_backward(twice.view(), dout.view(), positions.view(), /*accumulate=*/true);
    for (std::size_t i = 0; i < twice.values().size(); ++i) CHECK(twice.values()[i] == 2.0f * dtable.values()[i]);

    positions(2, 4) = P;
    CHECK_THROWS_WITH(cpu::learned_positions_backward(dtable.view(), dout.view(), positions.view()),
                      tinyllm_test::contains("learned_positions_backward: positions(2, 4) = 8 is outside the "
                                             "table's [0, 8)"));
    positions(2, 4) = 0;
    tensor<float, 2> narrow({P, D - 1});
    CHECK_THROWS_WITH(cpu::learned_positions_backward(narrow.view(), dout.view(), positions.view()),
                      tinyllm_test::contains("dout has width 4 but dtable has rows of 3"));
}
