// CPU tests for Mixture-of-Experts: gating (softmax top-k, Mixtral's form,
// noisy, DeepSeek grouped), balancing losses and statistics, capacity, and
// dispatch -> experts -> combine.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/moe.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::Approx;
using tinyllm_test::tolerance;

namespace {

tensor<float, 2> matrix(index_t rows, index_t cols, const std::vector<float>& values) {
    tensor<float, 2> m(extents<2>{rows, cols});
    REQUIRE(static_cast<index_t>(values.size()) == rows * cols);
    m.values() = values;
    return m;
}

tensor<std::int32_t, 2> id_matrix(index_t rows, index_t cols, const std::vector<std::int32_t>& values) {
    tensor<std::int32_t, 2> m(extents<2>{rows, cols});
    REQUIRE(static_cast<index_t>(values.size()) == rows * cols);
    m.values() = values;
    return m;
}

struct gating_result {
    tensor<std::int32_t, 2> ids;
    tensor<float, 2> weights;
    gating_result(index_t T, index_t k) : ids(extents<2>{T, k}), weights(extents<2>{T, k}) {}
};

gating_result softmax_topk(const tensor<float, 2>& logits, index_t k, bool renormalize) {
    gating_result r(logits.extent(0), k);
    tinyllm::cpu::softmax_topk_gating(r.ids.view(), r.weights.view(), logits.view(), renormalize);
    return r;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("softmax top-k gating on a hand-computed row", "[moe][gating]") {
    const auto logits = matrix(1, 4, {1, 3, 2, 0});
    const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;

    SECTION("top-2 without renormalization (GShard): the softmax probabilities") {
        const auto r = softmax_topk(logits, 2, false);
        CHECK(r.ids(0, 0) == 1);
        CHECK(r.ids(0, 1) == 2);
        CHECK(r.weights(0, 0) == Approx(std::exp(3.0) / z).epsilon(1e-6));
        CHECK(r.weights(0, 1) == Approx(std::exp(2.0) / z).epsilon(1e-6));
    }
    SECTION("top-2 renormalized (Mixtral): sigmoid of the logit gap") {
        const auto r = softmax_topk(logits, 2, true);
        CHECK(r.weights(0, 0) == Approx(sigmoid(1.0)).epsilon(1e-6));
        CHECK(r.weights(0, 1) == Approx(sigmoid(-1.0)).epsilon(1e-6));
    }
    SECTION("top-1 (Switch): the largest probability, or exactly 1 when renormalized") {
        const auto r = softmax_topk(logits, 1, false);
        CHECK(r.ids(0, 0) == 1);
        CHECK(r.weights(0, 0) == Approx(std::exp(3.0) / z).epsilon(1e-6));
        CHECK(softmax_topk(logits, 1, true).weights(0, 0) == 1.0f);
    }
    SECTION("k = E returns every expert, best first, weights summing to 1") {
        const auto r = softmax_topk(logits, 4, false);
        CHECK(r.ids.values() == std::vector<std::int32_t>{1, 2, 0, 3});
        double sum = 0;
        for (float w : r.weights.values()) sum += w;
        CHECK(sum == Approx(1.0).epsilon(1e-6));
    }
}

TEST_CASE("gating ties: the lower expert index wins", "[moe][gating]") {
    const auto logits = matrix(3, 4, {2, 5, 5, 1,  //
                                      0, 0, 0, 0,  //
                                      7, 1, 7, 7});
    const auto r = softmax_topk(logits, 3, true);
    CHECK(r.ids.values() == std::vector<std::int32_t>{1, 2, 0, 0, 1, 2, 0, 2, 3});
    for (index_t j = 0; j < 3; ++j) CHECK(r.weights(1, j) == Approx(1.0 / 3).epsilon(1e-6));
    CHECK(softmax_topk(logits, 1, false).ids.values() == std::vector<std::int32_t>{1, 0, 0});
    // The grouped (sigmoid) gating breaks ties the same way.
    gating_result g(3, 2);
    tensor<float, 1> bias(extents<1>{4}, 0.0f);
    tinyllm::cpu::grouped_topk_gating(g.ids.view(), g.weights.view(), logits.view(), bias.view(), {});
    CHECK(g.ids.values() == std::vector<std::int32_t>{1, 2, 0, 1, 0, 2});
}

TEST_CASE("Mixtral's top-k-then-softmax is softmax-top-k-renormalize", "[moe][gating]") {
    for (index_t E : {2, 8, 60, 256}) {
        for (index_t k : {1, 2, 8}) {
            if (k > E) continue;
            const index_t T = 300;
            const auto logits = matrix(T, E, tinyllm_test::random_floats(static_cast<std::size_t>(T * E), E + k, -4, 4));
            const auto a = softmax_topk(logits, k, true);
            gating_result b(T, k);
            tinyllm::cpu::topk_softmax_gating(b.ids.view(), b.weights.view(), logits.view());
            INFO("E = " << E << ", k = " << k);
            CHECK(a.ids.values() == b.ids.values());
            TINYLLM_REQUIRE_CLOSE(a.weights.values(), b.weights.values(), tolerance{1e-7, 1e-6, 1e-6}, "mixtral form");
        }
    }
}

TEST_CASE("gating output is sorted, distinct and normalised on random logits", "[moe][gating]") {
    const index_t T = 200, E = 64, k = 8;
    const auto logits = matrix(T, E, tinyllm_test::random_floats(T * E, 1, -3, 3));
    const auto r = softmax_topk(logits, k, false);
    for (index_t t = 0; t < T; ++t) {
        // Every unchosen logit is at most the smallest chosen one.
        float smallest = logits(t, r.ids(t, k - 1));
        std::vector<bool> chosen(E, false);
        for (index_t j = 0; j < k; ++j) {
            REQUIRE(!chosen[r.ids(t, j)]);
            chosen[r.ids(t, j)] = true;
            if (j > 0) REQUIRE(logits(t, r.ids(t, j - 1)) >= logits(t, r.ids(t, j)));
            if (j > 0) REQUIRE(r.weights(t, j - 1) >= r.weights(t, j));
        }
        for (index_t e = 0; e < E; ++e)
            if (!chosen[e]) REQUIRE(logits(t, e) <= smallest);
    }
}

TEST_CASE("noisy top-k gating: Philox/Box-Muller noise, softplus scale, reproducible", "[moe][gating][noisy]") {
    SECTION("the noise is standard normal and depends only on (seed, token, expert)") {
        double sum = 0, sum2 = 0;
        const int n = 200000;
        for (int i = 0; i < n; ++i) {
            const double z = tinyllm::moe_gate_noise(42, i / 16, i % 16);
            sum += z;
            sum2 += z * z;
        }
        CHECK(std::fabs(sum / n) < 0.01);
        CHECK(std::fabs(sum2 / n - 1.0) < 0.02);
        // The documented draw: Philox4x32-10 (known-answer tested) at counter (e, 0, t_lo, t_hi),
        // key = seed, then Box-Muller of its first two words.
        const tinyllm::philox_counter w = tinyllm::philox4x32_10({{3u, 0u, 5u, 0u}}, {{42u, 0u}});
        const double u1 = (static_cast<double>(w.v[0]) + 1.0) / 4294967296.0, u2 = w.v[1] / 4294967296.0;
        CHECK(tinyllm::moe_gate_noise(42, 5, 3) == std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
        CHECK(tinyllm::moe_gate_noise(42, 5, 3) != tinyllm::moe_gate_noise(43, 5, 3));
        CHECK(tinyllm::moe_gate_noise(42, 5, 3) != tinyllm::moe_gate_noise(42, 3, 5));
    }
    const index_t T = 50, E = 8, k = 2;
    const auto logits = matrix(T, E, tinyllm_test::random_floats(T * E, 2, -2, 2));
    SECTION("with softplus(noise_logits) ~ 0 it is Mixtral's gating") {
        const tensor<float, 2> quiet(extents<2>{T, E}, -60.0f);  // softplus(-60) ~ 1e-26
        gating_result noisy(T, k);
        tinyllm::cpu::noisy_topk_gating(noisy.ids.view(), noisy.weights.view(), logits.view(), quiet.view(), 7);
        const auto plain = softmax_topk(logits, k, true);
        CHECK(noisy.ids.values() == plain.ids.values());
        TINYLLM_REQUIRE_CLOSE(noisy.weights.values(), plain.weights.values(), tolerance{1e-7, 1e-6}, "quiet noisy");
    }
    SECTION("H = logits + N * softplus(noise_logits), computed by hand") {
        const auto noise_logits = matrix(T, E, tinyllm_test::random_floats(T * E, 3, -1, 1));
        gating_result r(T, k);
        tinyllm::cpu::noisy_topk_gating(r.ids.view(), r.weights.view(), logits.view(), noise_logits.view(), 99, 1000);
        for (index_t t = 0; t < T; ++t) {
            std::vector<double> h(E);
            for (index_t e = 0; e < E; ++e)
                h[e] = logits(t, e) + tinyllm::moe_gate_noise(99, t + 1000, static_cast<int>(e)) *
                                          std::log1p(std::exp(static_cast<double>(noise_logits(t, e))));
            int best = 0, second = -1;
            for (int e = 1; e < E; ++e) best = h[e] > h[best] ? e : best;
            for (int e = 0; e < E; ++e)
                if (e != best && (second < 0 || h[e] > h[second])) second = e;
            REQUIRE(r.ids(t, 0) == best);
            REQUIRE(r.ids(t, 1) == second);
            CHECK(r.weights(t, 0) == Approx(sigmoid(h[best] - h[second])).epsilon(1e-6));
        }
        // A batch routed in two pieces, with token_offset, draws the same noise.
        gating_result tail(T - 20, k);
        tinyllm::cpu::noisy_topk_gating(tail.ids.view(), tail.weights.view(), logits.view().narrow(0, 20, T - 20),
                                        noise_logits.view().narrow(0, 20, T - 20), 99, 1020);
        for (index_t t = 20; t < T; ++t)
            for (index_t j = 0; j < k; ++j) REQUIRE(tail.ids(t - 20, j) == r.ids(t, j));
    }
}

TEST_CASE("DeepSeek-V3 grouped gating on hand examples", "[moe][gating][grouped]") {
    SECTION("the bias chooses, group limits apply, ties go to the lower group and expert") {
        // sigmoid(0) = 0.5 exactly; biased scores are exact binary fractions:
        //   0.625 0.5 | 0.75 0.375 | 0.875 0.625 | 0.5 0.5625   (groups of 2)
        //   group scores 1.125, 1.125, 1.5, 1.0625 -> groups 2 and 0 (0 beats 1 on the tie)
        //   eligible experts 0, 1, 4, 5 -> 4 (0.875), then 0 and 5 tie at 0.625 -> 0
        // Without group limiting expert 2 (0.75) would have been second.
        const tensor<float, 2> logits(extents<2>{1, 8}, 0.0f);
        tensor<float, 1> bias(extents<1>{8});
        bias.values() = {0.125f, 0.0f, 0.25f, -0.125f, 0.375f, 0.125f, 0.0f, 0.0625f};
        gating_result r(1, 2);
        tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(), bias.view(),
                                          {4, 2, true, 2.5f});
        CHECK(r.ids.values() == std::vector<std::int32_t>{4, 0});
        // Weights come from the unbiased scores (0.5 each): renormalized 0.5, times 2.5.
        CHECK(r.weights(0, 0) == Approx(1.25).epsilon(1e-6));
        CHECK(r.weights(0, 1) == Approx(1.25).epsilon(1e-6));
        gating_result flat(1, 2);
        tinyllm::cpu::grouped_topk_gating(flat.ids.view(), flat.weights.view(), logits.view(), bias.view(),
                                          {1, 1, true, 1.0f});
        CHECK(flat.ids.values() == std::vector<std::int32_t>{4, 2});
    }
    SECTION("sigmoid affinities, group scores from the top two, weights renormalized or not") {
        // s = sigmoid(x); groups (0,1) 1.0, (2,3) 1.122, (4,5) 1.381, (6,7) 0.619
        // -> groups 2 and 1 -> experts 4 (0.881), 2 (0.622), then 3 and 5 tie at 0.5 -> 3.
        const auto logits = matrix(1, 8, {1, -1, 0.5f, 0, 2, 0, -2, 0});
        const tensor<float, 1> bias(extents<1>{8}, 0.0f);
        gating_result r(1, 3);
        tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(), bias.view(),
                                          {4, 2, true, 1.0f});
        CHECK(r.ids.values() == std::vector<std::int32_t>{4, 2, 3});
        const double s4 = sigmoid(2), s2 = sigmoid(0.5), s3 = 0.5, sum = s4 + s2 + s3;
        CHECK(r.weights(0, 0) == Approx(s4 / sum).epsilon(1e-6));
        CHECK(r.weights(0, 1) == Approx(s2 / sum).epsilon(1e-6));
        CHECK(r.weights(0, 2) == Approx(s3 / sum).epsilon(1e-6));
        tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(), bias.view(),
                                          {4, 2, false, 2.0f});
        CHECK(r.weights(0, 0) == Approx(2 * s4).epsilon(1e-6));
        CHECK(r.weights(0, 2) == Approx(2 * s3).epsilon(1e-6));
        // Without groups: 4, 0 (0.731), 2.
        tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(), bias.view(), {});
        CHECK(r.ids.values() == std::vector<std::int32_t>{4, 0, 2});
    }
}

TEST_CASE("gating rejects bad arguments with clear errors", "[moe][gating][errors]") {
    const auto logits = matrix(2, 4, {1, 2, 3, 4, 5, 6, 7, 8});
    const tensor<float, 1> bias(extents<1>{4}, 0.0f);
    using tinyllm_test::contains;
    {
        gating_result r(2, 5);
        CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating(r.ids.view(), r.weights.view(), logits.view(), true),
                          contains("k = 5 exceeds the number of experts E = 4"));
    }
    {
        gating_result r(2, 0);
        CHECK_THROWS_WITH(tinyllm::cpu::topk_softmax_gating(r.ids.view(), r.weights.view(), logits.view()),
                          contains("must be at least 1"));
    }
    {
        gating_result r(3, 2);
        CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating(r.ids.view(), r.weights.view(), logits.view(), true),
                          contains("ids has 3 rows"));
    }
    {
        gating_result r(2, 2);
        auto bad = logits;
        bad(1, 2) = std::nanf("");
        CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating(r.ids.view(), r.weights.view(), bad.view(), true),
                          contains("logits(1, 2) = nan is not finite"));
        bad(1, 2) = INFINITY;
        CHECK_THROWS_WITH(
            tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), bad.view(), bias.view(), {}),
            contains("grouped_topk_gating: logits(1, 2) = inf is not finite"));
        CHECK_THROWS_WITH(tinyllm::cpu::noisy_topk_gating(r.ids.view(), r.weights.view(), logits.view(), bad.view(), 1),
                          contains("noise_logits(1, 2)"));
        CHECK_THROWS_WITH(tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(),
                                                            bias.view(), {3, 1, true, 1.0f}),
                          contains("n_group = 3 does not divide E = 4"));
        CHECK_THROWS_WITH(tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(),
                                                            bias.view(), {2, 3, true, 1.0f}),
                          contains("topk_group = 3"));
        gating_result three(2, 3);
        CHECK_THROWS_WITH(tinyllm::cpu::grouped_topk_gating(three.ids.view(), three.weights.view(), logits.view(),
                                                            bias.view(), {2, 1, true, 1.0f}),
                          contains("k = 3 exceeds the experts in the topk_group = 1 surviving groups of 2"));
        const tensor<float, 1> short_bias(extents<1>{3}, 0.0f);
        CHECK_THROWS_WITH(tinyllm::cpu::grouped_topk_gating(r.ids.view(), r.weights.view(), logits.view(),
                                                            short_bias.view(), {}),
                          contains("bias has shape (3)"));
    }
}

TEST_CASE("gating refuses outputs over the logits, over each other or with stride 0", "[moe][gating][errors]") {
    using tinyllm_test::contains;
    using ids_view = tinyllm::tensor_view<std::int32_t, 2>;
    using weights_view = tinyllm::tensor_view<float, 2>;
    const auto logits = matrix(2, 4, {1, 2, 3, 4, 8, 7, 6, 5});
    gating_result r(2, 2), want = softmax_topk(logits, 2, true);
    // weights over the logits (exactly, k = E, or in part), ids over weights.
    auto over = logits;
    CHECK_THROWS_WITH(
        tinyllm::cpu::softmax_topk_gating(r.ids.view(), weights_view(over.data() + 4, {2, 2}), over.view(), true),
        contains("softmax_topk_gating: weights must not share memory with logits"));
    gating_result four(2, 4);
    CHECK_THROWS_WITH(tinyllm::cpu::topk_softmax_gating(four.ids.view(), over.view(), over.view()),
                      contains("topk_softmax_gating: weights must not share memory with logits"));
    std::vector<float> shared(8);
    const ids_view ids_in_shared(reinterpret_cast<std::int32_t*>(shared.data()), {2, 2});
    CHECK_THROWS_WITH(
        tinyllm::cpu::softmax_topk_gating(ids_in_shared, weights_view(shared.data() + 2, {2, 2}), logits.view(), true),
        contains("softmax_topk_gating: ids must not share memory with weights"));
    CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating(r.ids.view(), weights_view(shared.data(), {2, 2}, {0, 1}),
                                                        logits.view(), true),
                      contains("softmax_topk_gating: weights has shape (2, 2) and strides (0, 1), so two of its "
                               "elements share an address"));
    CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating(ids_view(r.ids.data(), {2, 2}, {2, 0}), r.weights.view(),
                                                        logits.view(), true),
                      contains("softmax_topk_gating: ids has shape (2, 2) and strides (2, 0)"));
    // The other gatings: the same checks, and their further inputs.
    CHECK_THROWS_WITH(
        tinyllm::cpu::noisy_topk_gating(r.ids.view(), weights_view(over.data(), {2, 2}), over.view(), logits.view(), 1),
        contains("noisy_topk_gating: weights must not share memory with logits"));
    auto noise = logits;
    CHECK_THROWS_WITH(tinyllm::cpu::noisy_topk_gating(r.ids.view(), weights_view(noise.data() + 2, {2, 2}),
                                                      logits.view(), noise.view(), 1),
                      contains("noisy_topk_gating: weights must not share memory with noise_logits"));
    tensor<float, 1> bias(extents<1>{4}, 0.0f);
    CHECK_THROWS_WITH(tinyllm::cpu::grouped_topk_gating(r.ids.view(), weights_view(bias.data(), {2, 2}), logits.view(),
                                                        bias.view(), {}),
                      contains("grouped_topk_gating: weights must not share memory with bias"));
    const ids_view ids_in_logits(reinterpret_cast<std::int32_t*>(over.data()), {2, 2});
    CHECK_THROWS_WITH(tinyllm::cpu::grouped_topk_gating(ids_in_logits, r.weights.view(), over.view(), bias.view(), {}),
                      contains("grouped_topk_gating: ids must not share memory with logits"));
    // Allowed: separate outputs.
    tinyllm::cpu::softmax_topk_gating(r.ids.view(), r.weights.view(), logits.view(), true);
    CHECK(r.ids.values() == want.ids.values());
    CHECK(r.weights.values() == want.weights.values());
}

TEST_CASE("gating backward: dlogits exactly over the logits, never over dweights or in part", "[moe][gating][errors]") {
    using tinyllm_test::contains;
    using grad_view = tinyllm::tensor_view<float, 2>;
    const auto logits = matrix(2, 4, {1, 2, 3, 4, 8, 7, 6, 5});
    const auto dweights = matrix(2, 2, {0.5f, -1.0f, 2.0f, 0.25f});
    tensor<float, 2> want(extents<2>{2, 4});
    tinyllm::cpu::softmax_topk_gating_backward(want.view(), dweights.view(), logits.view(), true);
    std::vector<float> buf(12);
    std::copy(logits.values().begin(), logits.values().end(), buf.begin());
    CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating_backward(grad_view(buf.data() + 1, {2, 4}), dweights.view(),
                                                                 grad_view(buf.data(), {2, 4}), true),
                      contains("softmax_topk_gating_backward: dlogits must be exactly logits (in place) or not share "
                               "memory with it"));
    const tinyllm::tensor_view<const float, 2> dw(buf.data() + 6, {2, 2});
    CHECK_THROWS_WITH(
        tinyllm::cpu::softmax_topk_gating_backward(grad_view(buf.data(), {2, 4}), dw, logits.view(), true),
        contains("softmax_topk_gating_backward: dlogits must not share memory with dweights"));
    CHECK_THROWS_WITH(tinyllm::cpu::softmax_topk_gating_backward(grad_view(buf.data(), {2, 4}, {0, 1}), dweights.view(),
                                                                 logits.view(), true),
                      contains("dlogits has shape (2, 4) and strides (0, 1)"));
    const auto noise_logits = matrix(2, 4, {0.5f, 0.1f, -0.2f, 0.3f, 0.0f, 0.4f, -0.6f, 0.2f});
    auto noise = noise_logits;
    tensor<float, 2> dlogits(extents<2>{2, 4});
    CHECK_THROWS_WITH(
        tinyllm::cpu::noisy_topk_gating_backward(noise.view(), {}, dweights.view(), logits.view(), noise.view(), 7),
        contains("noisy_topk_gating_backward: dlogits must not share memory with noise_logits"));
    CHECK_THROWS_WITH(tinyllm::cpu::noisy_topk_gating_backward(dlogits.view(), grad_view(dlogits.data(), {2, 4}),
                                                               dweights.view(), logits.view(), noise_logits.view(), 7),
                      contains("noisy_topk_gating_backward: dnoise_logits must not share memory with dlogits"));
    // Allowed: dlogits exactly the logits, dnoise_logits exactly the noise logits (each row read, then written).
    auto over = logits;
    tinyllm::cpu::softmax_topk_gating_backward(over.view(), dweights.view(), over.view(), true);
    CHECK(over.values() == want.values());
    tensor<float, 2> dnoise(extents<2>{2, 4});
    tinyllm::cpu::noisy_topk_gating_backward(dlogits.view(), dnoise.view(), dweights.view(), logits.view(),
                                             noise_logits.view(), 7);
    auto logits_then_dlogits = logits;
    tinyllm::cpu::noisy_topk_gating_backward(logits_then_dlogits.view(), noise.view(), dweights.view(),
                                             logits_then_dlogits.view(), noise.view(), 7);
    CHECK(logits_then_dlogits.values() == dlogits.values());
    CHECK(noise.values() == dnoise.values());
}

TEST_CASE("the load-balancing loss against a hand-computed example", "[moe][balance]") {
    // T = 4, E = 2, k = 1. softmax([0, 0]) = (1/2, 1/2), softmax([ln 3, 0]) = (3/4, 1/4).
    // P = (0.625, 0.375); ids 0, 0, 0, 1 -> f = (0.75, 0.25);
    // loss = 2 * (0.75 * 0.625 + 0.25 * 0.375) = 1.125.
    const float ln3 = static_cast<float>(std::log(3.0));
    const auto logits = matrix(4, 2, {0, 0, 0, 0, ln3, 0, ln3, 0});
    const auto ids = id_matrix(4, 1, {0, 0, 0, 1});
    CHECK(tinyllm::cpu::load_balancing_loss(logits.view(), ids.view()) == Approx(1.125).epsilon(1e-7));
    // Perfect balance gives 1; everything on one confident expert approaches E.
    const auto balanced = id_matrix(4, 1, {0, 1, 0, 1});
    const tensor<float, 2> zero(extents<2>{4, 2}, 0.0f);
    CHECK(tinyllm::cpu::load_balancing_loss(zero.view(), balanced.view()) == Approx(1.0).epsilon(1e-12));
    const auto confident = matrix(4, 2, {30, 0, 30, 0, 30, 0, 30, 0});
    const auto collapsed = id_matrix(4, 1, {0, 0, 0, 0});
    CHECK(tinyllm::cpu::load_balancing_loss(confident.view(), collapsed.view()) == Approx(2.0).epsilon(1e-9));
    // k = 2: f is normalised by T*k.
    const auto two = id_matrix(2, 2, {0, 1, 0, 1});
    CHECK(tinyllm::cpu::load_balancing_loss(zero.view().narrow(0, 0, 2), two.view()) == Approx(1.0).epsilon(1e-12));
    CHECK_THROWS_WITH(tinyllm::cpu::load_balancing_loss(logits.view(), id_matrix(4, 1, {0, 2, 0, 0}).view()),
                      tinyllm_test::contains("ids(1, 0) = 2 is not an expert in [0, 2)"));
}

TEST_CASE("the router z-loss is the mean squared logsumexp", "[moe][balance]") {
    const float ln3 = static_cast<float>(std::log(3.0));
    const auto logits = matrix(2, 2, {0, 0, ln3, 0});  // logsumexp = ln 2 and ln 4
    const double ln2 = std::log(2.0);
    CHECK(tinyllm::cpu::router_z_loss(logits.view()) == Approx((ln2 * ln2 + 4 * ln2 * ln2) / 2).epsilon(1e-7));
    const auto big = matrix(1, 3, {100, 100, 100});  // stable for large logits: (100 + ln 3)^2
    CHECK(tinyllm::cpu::router_z_loss(big.view()) == Approx(std::pow(100 + std::log(3.0), 2)).epsilon(1e-9));
}

TEST_CASE("routing statistics and expert counts", "[moe][balance]") {
    const auto ids = id_matrix(4, 2, {0, 1, 0, 2, 0, 1, 3, 0});
    tensor<std::int32_t, 1> counts(extents<1>{5});
    tinyllm::cpu::expert_counts(counts.view(), ids.view());
    CHECK(counts.values() == std::vector<std::int32_t>{4, 2, 1, 1, 0});
    const auto s = tinyllm::cpu::routing_statistics(ids.view(), 5);
    CHECK(s.slots == 8);
    CHECK(s.mean_load == Approx(1.6));
    CHECK(s.max_count == 4);
    CHECK(s.min_count == 0);
    CHECK(s.unused_experts == 1);
    CHECK(s.max_over_mean == Approx(2.5));
    CHECK(s.fraction[0] == Approx(0.5));
    // counts 4, 2, 1, 1, 0 around 1.6: variance (5.76 + 0.16 + 0.36 + 0.36 + 2.56) / 5 = 1.84
    CHECK(s.coefficient_of_variation == Approx(std::sqrt(1.84) / 1.6));
}

TEST_CASE("capacity: ceil(factor * T * k / E), slots admitted in token order", "[moe][balance][capacity]") {
    CHECK(tinyllm::moe_capacity(6, 1, 3, 1.0) == 2);
    CHECK(tinyllm::moe_capacity(24, 1, 8, 1.0) == 3);
    CHECK(tinyllm::moe_capacity(10, 2, 8, 1.25) == 4);  // ceil(3.125)
    CHECK(tinyllm::moe_capacity(7, 2, 4, 1.0) == 4);    // ceil(3.5)
    CHECK_THROWS_WITH(tinyllm::moe_capacity(4, 1, 2, 0.0),
                      tinyllm_test::contains("moe_capacity: capacity_factor = 0 must be a positive finite number"));
    // Sizes whose product, or whose capacity, index_t cannot count: refused, not overflowed.
    CHECK_THROWS_WITH(tinyllm::moe_capacity(index_t(1) << 62, 4, 8, 1.0),
                      tinyllm_test::contains("are more slots than index_t counts"));
    CHECK_THROWS_WITH(
        tinyllm::moe_capacity(1000, 2, 1, 1e300),
        tinyllm_test::contains("capacity_factor = 1e+300 gives") && tinyllm_test::contains("more than index_t counts"));
    CHECK(tinyllm::moe_max_rows(5, 2, 4, 8) == 5 * 2 + 4 * 7);
    CHECK_THROWS_WITH(tinyllm::moe_max_rows(1000, 2, 4, index_t(1) << 62),
                      tinyllm_test::contains("need more rows than index_t counts"));
    CHECK_THROWS_WITH(tinyllm::moe_max_rows(index_t(1) << 62, 4, 4, 1),
                      tinyllm_test::contains("need more rows than index_t counts"));
    CHECK_THROWS_WITH(tinyllm::moe_max_rows(5, 2, 4, 0), tinyllm_test::contains("block = 0 must be"));

    const auto ids = id_matrix(4, 2, {0, 1, 0, 1, 1, 0, 2, 3});
    tensor<std::int32_t, 2> position(extents<2>{4, 2});
    const index_t dropped = tinyllm::cpu::assign_capacity(position.view(), ids.view(), 4, 2);
    CHECK(dropped == 2);
    CHECK(position.values() == std::vector<std::int32_t>{0, 0, 1, 1, -1, -1, 0, 0});
    CHECK(tinyllm::cpu::assign_capacity(position.view(), ids.view(), 4, -1) == 0);
    CHECK(position.values() == std::vector<std::int32_t>{0, 0, 1, 1, 2, 2, 0, 0});
}

TEST_CASE("dispatch plan: histogram, padded prefix sum, scatter in token order", "[moe][dispatch]") {
    const auto ids = id_matrix(5, 2, {0, 2, 2, 0, 1, 2, 0, 1, 2, 1});
    tinyllm::cpu::moe_plan_buffers plan(5, 2, 3, 4);
    CHECK(plan.rows() == 10 + 3 * 3);
    CHECK(tinyllm::cpu::moe_plan(plan.view(), ids.view(), {-1, 4}) == 0);
    CHECK(plan.expert_counts.values() == std::vector<std::int32_t>{3, 3, 4});
    CHECK(plan.expert_offsets.values() == std::vector<std::int32_t>{0, 4, 8, 12});
    CHECK(plan.row_of.values() == std::vector<std::int32_t>{0, 8, 9, 1, 4, 10, 2, 5, 11, 6});
    const std::vector<std::int32_t> tokens{0, 1, 3, -1, 2, 3, 4, -1, 0, 1, 2, 4, -1, -1, -1, -1, -1, -1, -1};
    CHECK(plan.row_token.values() == tokens);

    SECTION("with capacity 2, the third slot of each expert is dropped") {
        CHECK(tinyllm::cpu::moe_plan(plan.view(), ids.view(), {2, 1}) == 4);
        CHECK(plan.expert_counts.values() == std::vector<std::int32_t>{2, 2, 2});
        CHECK(plan.expert_offsets.values() == std::vector<std::int32_t>{0, 2, 4, 6});
        CHECK(plan.row_of.values() == std::vector<std::int32_t>{0, 4, 5, 1, 2, -1, -1, 3, -1, -1});
    }
    SECTION("errors") {
        tinyllm::cpu::moe_plan_buffers small(5, 2, 3, 1);
        CHECK_THROWS_WITH(tinyllm::cpu::moe_plan(small.view(), ids.view(), {-1, 4}),
                          tinyllm_test::contains("moe_max_rows"));
        CHECK_THROWS_WITH(tinyllm::cpu::moe_plan(plan.view(), ids.view(), {-1, 0}),
                          tinyllm_test::contains("block = 0 must be at least 1"));
        tinyllm::cpu::moe_plan_buffers two(5, 2, 2, 4);
        CHECK_THROWS_WITH(tinyllm::cpu::moe_plan(two.view(), ids.view(), {-1, 4}),
                          tinyllm_test::contains("is not an expert in [0, 2)"));
    }
}

TEST_CASE("dispatch then combine with identity experts gives x times the kept weights", "[moe][dispatch]") {
    const index_t T = 97, E = 8, k = 2, D = 16;
    const auto logits = matrix(T, E, tinyllm_test::random_floats(T * E, 10, -2, 2));
    const auto x = matrix(T, D, tinyllm_test::random_floats(T * D, 11));
    const auto g = softmax_topk(logits, k, false);
    for (index_t capacity : {index_t{-1}, tinyllm::moe_capacity(T, k, E, 1.0)}) {
        for (index_t block : {1, 8}) {
            tinyllm::cpu::moe_plan_buffers plan(T, k, E, block);
            const index_t dropped = tinyllm::cpu::moe_plan(plan.view(), g.ids.view(), {capacity, block});
            if (capacity < 0) CHECK(dropped == 0);
            tensor<float, 2> sorted(extents<2>{plan.rows(), D}), out(extents<2>{T, D});
            tinyllm::cpu::moe_gather(sorted.view(), x.view(), plan.view());
            tinyllm::cpu::moe_combine(out.view(), sorted.view(), g.weights.view(), plan.view());
            std::vector<float> expected(T * D);
            index_t seen_dropped = 0;
            for (index_t t = 0; t < T; ++t) {
                float w = 0;
                for (index_t j = 0; j < k; ++j) {
                    if (plan.row_of(t, j) >= 0) w += g.weights(t, j);
                    else ++seen_dropped;
                }
                for (index_t d = 0; d < D; ++d) expected[t * D + d] = x(t, d) * w;
            }
            CHECK(seen_dropped == dropped);
            INFO("capacity " << capacity << ", block " << block);
            TINYLLM_REQUIRE_CLOSE(out.values(), expected, tolerance{1e-6, 1e-6}, "identity experts");
            // Every expert's rows are block-aligned and hold only its own tokens: row r of
            // expert e holds a token t that chose e (its first expert_counts(e) rows), or is
            // padding (-1); and each kept slot (t, j) points at such a row of expert ids(t, j).
            for (index_t e = 0; e < E; ++e) {
                CHECK(plan.expert_offsets(e) % block == 0);
                CHECK(plan.expert_counts(e) <= (capacity < 0 ? T : capacity));
                for (index_t r = plan.expert_offsets(e); r < plan.expert_offsets(e + 1); ++r) {
                    const index_t t = plan.row_token(r);
                    if (r - plan.expert_offsets(e) >= plan.expert_counts(e)) {
                        CHECK(t == -1);
                        continue;
                    }
                    REQUIRE((t >= 0 && t < T));
                    bool chose = false;
                    for (index_t j = 0; j < k; ++j) chose |= g.ids(t, j) == e && plan.row_of(t, j) == r;
                    CHECK(chose);
                }
            }
        }
    }
}

TEST_CASE("gather, experts and combine refuse an out over their inputs", "[moe][dispatch][errors]") {
    const index_t T = 6, E = 4, k = 2, D = 8, F = 4;
    const auto logits = matrix(T, E, tinyllm_test::random_floats(T * E, 20, -2, 2));
    const auto g = softmax_topk(logits, k, false);
    tinyllm::cpu::moe_plan_buffers plan(T, k, E, 1);
    tinyllm::cpu::moe_plan(plan.view(), g.ids.view(), {});
    const index_t R = plan.rows();
    // x and a sorted buffer in one allocation: x = rows 0..T-1, sorted = the rows after.
    tensor<float, 2> memory(extents<2>{T + R, D}, 0.5f);
    const tensor_view<float, 2> x(memory.data(), {T, D}), sorted(memory.data() + T * D, {R, D});
    const tensor_view<float, 2> over_x(memory.data() + D, {R, D});  // starts at x's second row
    CHECK_THROWS_WITH(tinyllm::cpu::moe_gather(over_x, x, plan.view()),
                      Catch::Matchers::Contains("moe_gather: out must not share memory with x"));
    tinyllm::cpu::moe_gather(sorted, x, plan.view());  // apart: fine
    tensor<float, 3> w1(extents<3>{E, F, D}, 0.1f), w3(extents<3>{E, F, D}, 0.1f), w2(extents<3>{E, D, F}, 0.1f);
    CHECK_THROWS_WITH(tinyllm::cpu::moe_experts_swiglu(sorted, sorted, w1.view(), w3.view(), w2.view(), plan.view()),
                      Catch::Matchers::Contains("moe_experts_swiglu: out must not share memory with in"));
    const tensor_view<float, 2> over_sorted(memory.data() + (T + 1) * D, {T, D});
    CHECK_THROWS_WITH(tinyllm::cpu::moe_combine(over_sorted, sorted, g.weights.view(), plan.view()),
                      Catch::Matchers::Contains("moe_combine: out must not share memory with expert_out"));
    CHECK_THROWS_WITH(tinyllm::cpu::moe_combine(tensor_view<float, 2>(memory.data(), {T, D}, {0, 1}), sorted,
                                                g.weights.view(), plan.view()),
                      Catch::Matchers::Contains("two of its elements share an address"));
}

TEST_CASE("a Mixtral-style MoE block equals routing each token by hand", "[moe][experts]") {
    const index_t T = 13, D = 12, F = 20, E = 4, k = 2;
    const auto x = matrix(T, D, tinyllm_test::random_floats(T * D, 20));
    const auto router = matrix(E, D, tinyllm_test::random_floats(E * D, 21));
    tensor<float, 3> w1(extents<3>{E, F, D}), w3(extents<3>{E, F, D}), w2(extents<3>{E, D, F});
    w1.values() = tinyllm_test::random_floats(E * F * D, 22, -0.3f, 0.3f);
    w3.values() = tinyllm_test::random_floats(E * F * D, 23, -0.3f, 0.3f);
    w2.values() = tinyllm_test::random_floats(E * D * F, 24, -0.3f, 0.3f);
    tensor<float, 2> out(extents<2>{T, D});
    tinyllm::cpu::moe_forward(out.view(), x.view(), router.view(), w1.view(), w3.view(), w2.view(), k, {-1, 4});

    std::vector<double> expected(T * D, 0.0);
    for (index_t t = 0; t < T; ++t) {
        std::vector<double> logit(E);
        for (index_t e = 0; e < E; ++e)
            for (index_t d = 0; d < D; ++d) logit[e] += static_cast<double>(x(t, d)) * router(e, d);
        int a = 0, b = -1;
        for (int e = 1; e < E; ++e) a = logit[e] > logit[a] ? e : a;
        for (int e = 0; e < E; ++e)
            if (e != a && (b < 0 || logit[e] > logit[b])) b = e;
        const double wa = sigmoid(logit[a] - logit[b]);
        for (auto [e, w] : {std::pair<int, double>{a, wa}, {b, 1 - wa}}) {
            std::vector<double> h(F);
            for (index_t f = 0; f < F; ++f) {
                double gate = 0, up = 0;
                for (index_t d = 0; d < D; ++d) {
                    gate += static_cast<double>(w1(e, f, d)) * x(t, d);
                    up += static_cast<double>(w3(e, f, d)) * x(t, d);
                }
                h[f] = gate * sigmoid(gate) * up;
            }
            for (index_t d = 0; d < D; ++d) {
                double y = 0;
                for (index_t f = 0; f < F; ++f) y += w2(e, d, f) * h[f];
                expected[t * D + d] += w * y;
            }
        }
    }
    TINYLLM_REQUIRE_CLOSE(out.values(), expected, tolerance{1e-5, 1e-5, 1e-5}, "moe block");
}

TEST_CASE("the MoE steps refuse a plan or a k they cannot use", "[moe][dispatch][errors]") {
    using tinyllm_test::contains;
    const index_t T = 5, k = 2, E = 3, D = 4, F = 6;
    const auto ids = id_matrix(T, k, {0, 2, 2, 0, 1, 2, 0, 1, 2, 1});
    tinyllm::cpu::moe_plan_buffers plan(T, k, E, 1);
    tinyllm::cpu::moe_plan(plan.view(), ids.view());
    const tensor<float, 3> w1(extents<3>{E, F, D}, 0.1f), w3(extents<3>{E, F, D}, 0.1f), w2(extents<3>{E, D, F}, 0.1f);
    tensor<float, 2> in(extents<2>{plan.rows(), D}, 1.0f), out(extents<2>{plan.rows(), D});
    // A plan whose expert counts run past the next expert's offset (a plan the caller
    // filled): the rows past the end of `in` were read.
    plan.expert_counts(0) = 100;
    CHECK_THROWS_WITH(
        tinyllm::cpu::moe_experts_swiglu(out.view(), in.view(), w1.view(), w3.view(), w2.view(), plan.view()),
        contains("expert 0's 100 rows at offset 0 run past the next expert's offset"));
    // expert_offsets with E entries instead of E + 1.
    tinyllm::moe_plan_view short_offsets = plan.view();
    short_offsets.expert_offsets = short_offsets.expert_offsets.narrow(0, 0, E);
    CHECK_THROWS_WITH(
        tinyllm::cpu::moe_experts_swiglu(out.view(), in.view(), w1.view(), w3.view(), w2.view(), short_offsets),
        contains("plan.expert_offsets has shape (3) but (4) is required"));
    // k outside [1, E] is named as k (it was a negative tensor extent).
    const tensor<float, 2> x(extents<2>{T, D}, 1.0f), router(extents<2>{E, D}, 0.5f);
    tensor<float, 2> y(extents<2>{T, D});
    CHECK_THROWS_WITH(tinyllm::cpu::moe_forward(y.view(), x.view(), router.view(), w1.view(), w3.view(), w2.view(), -1),
                      contains("moe_forward: k = -1 must be in [1, E = 3]"));
    CHECK_THROWS_WITH(
        tinyllm::cpu::moe_forward(y.view(), x.view(), router.view(), w1.view(), w3.view(), w2.view(), 1, {-1, -3}),
        contains("moe_forward: block = -3 must be at least 1"));
}

TEST_CASE("grouped gating gives weights 0, not NaN, when every chosen affinity underflows", "[moe][gating]") {
    const auto logits = matrix(1, 4, {-800, -800, -900, -800});
    const tensor<float, 1> bias(extents<1>{4}, 0.0f);
    tensor<std::int32_t, 2> ids(extents<2>{1, 2});
    tensor<float, 2> weights(extents<2>{1, 2}, std::nanf(""));
    tinyllm::cpu::grouped_topk_gating(ids.view(), weights.view(), logits.view(), bias.view(), {});
    CHECK(weights(0, 0) == 0.0f);
    CHECK(weights(0, 1) == 0.0f);
}
