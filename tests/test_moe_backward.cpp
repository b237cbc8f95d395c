// tests/test_moe_backward.cpp — the backward of Mixture-of-Experts: the gating
// functions (moe_gating.hpp), the auxiliary losses (moe_balance.hpp) and the
// whole Mixtral block, cpu::moe_backward (moe_dispatch.hpp).
//
// Every gradient is checked against central finite differences of the library's
// own forward, L = sum(dout * f(inputs)) in double, as in tests/test_backward.cpp.
// The choice of experts is piecewise constant: a finite difference is only the
// derivative while no perturbation changes it. The inputs are therefore drawn
// (by rejection, from this run's seed) so that in every row the k-th and the
// (k+1)-th score are at least a margin apart that no perturbation can cross,
// and a tie case checks separately that the backward chooses the experts the
// forward chose.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/moe.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

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

std::vector<double> numeric_gradient(std::vector<float>& v, const std::function<double()>& loss, double h) {
    std::vector<double> grad(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        const float saved = v[i];
        const float plus = static_cast<float>(saved + h), minus = static_cast<float>(saved - h);
        v[i] = plus;
        const double l_plus = loss();
        v[i] = minus;
        const double l_minus = loss();
        v[i] = saved;
        grad[i] = (l_plus - l_minus) / (static_cast<double>(plus) - static_cast<double>(minus));
    }
    return grad;
}

// Richardson: (4 D(h/2) - D(h)) / 3, truncation O(h^4), for the smooth non-linear maps.
std::vector<double> numeric_gradient_richardson(std::vector<float>& v, const std::function<double()>& loss, double h) {
    const auto coarse = numeric_gradient(v, loss, h);
    auto fine = numeric_gradient(v, loss, h / 2);
    for (std::size_t i = 0; i < fine.size(); ++i) fine[i] = (4.0 * fine[i] - coarse[i]) / 3.0;
    return fine;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
}

// The smallest gap, over the rows of scores (T, E), between the k-th and the
// (k+1)-th largest: what decides which experts are chosen. With `ordered`, the
// gaps between the k best too: what decides the order of the k slots, which
// a loss of per-slot weights also depends on.
template <class Row>
double selection_margin(index_t T, index_t E, index_t k, Row&& row, bool ordered = false) {
    double margin = INFINITY;
    for (index_t t = 0; t < T; ++t) {
        std::vector<double> s = row(t);
        std::sort(s.begin(), s.end(), std::greater<>());
        for (index_t j = ordered ? 1 : k; j <= k && j < E; ++j)
            margin = std::min(margin, s[static_cast<std::size_t>(j - 1)] - s[static_cast<std::size_t>(j)]);
    }
    return margin;
}

// Logits (T, E) whose k best and the (k+1)-th are separated by at least `margin`
// in every row: the first of this run's random draws that is.
tensor<float, 2> separated_logits(index_t T, index_t E, index_t k, double margin, std::uint64_t which) {
    for (std::uint64_t attempt = 0; attempt < 1000; ++attempt) {
        auto logits = normal(extents<2>{T, E}, which * 1000 + attempt, 2.0f);
        if (selection_margin(T, E, k, [&](index_t t) {
                std::vector<double> r;
                for (index_t e = 0; e < E; ++e) r.push_back(logits(t, e));
                return r;
            }, /*ordered=*/true) >= margin)
            return logits;
    }
    FAIL("no separated logits in 1000 draws");
    return {};
}

struct gating {
    tensor<std::int32_t, 2> ids;
    tensor<float, 2> weights;
};

gating softmax_topk(const tensor<float, 2>& logits, index_t k, bool renormalize) {
    gating g{tensor<std::int32_t, 2>(extents<2>{logits.extent(0), k}), tensor<float, 2>(extents<2>{logits.extent(0), k})};
    cpu::softmax_topk_gating(g.ids.view(), g.weights.view(), logits.view(), renormalize);
    return g;
}

}  // namespace

// ---- gating ---------------------------------------------------------------------------

TEST_CASE("softmax_topk_gating_backward matches finite differences, renormalized and plain", "[moe][backward]") {
    const index_t T = 5, E = 6;
    for (index_t k : {1, 2, 3}) {
        for (bool renormalize : {true, false}) {
            INFO("k = " << k << ", renormalize = " << renormalize);
            auto logits = separated_logits(T, E, k, 0.2, 1 + static_cast<std::uint64_t>(k));
            const auto dweights = normal(extents<2>{T, k}, 10);
            tensor<float, 2> dlogits({T, E}, 7.0f);  // overwritten
            cpu::softmax_topk_gating_backward(dlogits.view(), dweights.view(), logits.view(), renormalize);
            auto loss = [&] { return dot(dweights.values(), softmax_topk(logits, k, renormalize).weights.values()); };
            // Smooth (a softmax): Richardson with h = 5e-2 (a perturbation moves one
            // logit, by less than the 0.2 margin), truncation O(h^4) ~1e-6. The weights
            // are doubles rounded to float: 6e-8 relative each, k of them per
            // perturbation, over 2 (h/2), ~5e-6 after Richardson's 5/3. Tolerance 3e-5
            // absolute (observed <= 5e-6 in 100 runs).
            const double h = 5e-2;
            TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient_richardson(logits.values(), loss, h),
                                  tolerance{3e-5, 0, 3e-4}, "gating dlogits vs finite differences");
            // Renormalized: an expert that was not chosen gets exactly no gradient.
            const auto g = softmax_topk(logits, k, renormalize);
            for (index_t t = 0; t < T; ++t)
                for (index_t e = 0; e < E; ++e) {
                    bool chosen = false;
                    for (index_t j = 0; j < k; ++j) chosen = chosen || g.ids(t, j) == e;
                    if (renormalize && !chosen) CHECK(dlogits(t, e) == 0.0f);
                    if (!renormalize && !chosen) CHECK(dlogits(t, e) != 0.0f);
                }
            // accumulate adds.
            tensor<float, 2> twice = dlogits;
            cpu::softmax_topk_gating_backward(twice.view(), dweights.view(), logits.view(), renormalize, true);
            for (std::size_t i = 0; i < twice.values().size(); ++i)
                CHECK(twice.values()[i] == tinyllm_test::Approx(2.0 * dlogits.values()[i]).epsilon(1e-7));
        }
    }
}

TEST_CASE("noisy_topk_gating_backward matches finite differences; the noise is a constant", "[moe][backward]") {
    const index_t T = 4, E = 5, k = 2;
    const std::uint64_t noise_seed = seed(20);
    auto logits = normal(extents<2>{T, E}, 21, 2.0f);
    auto noise_logits = normal(extents<2>{T, E}, 22);
    // Draw until the noisy scores H are separated by 0.2 (perturbations move H by < 0.1).
    for (std::uint64_t attempt = 0;; ++attempt) {
        REQUIRE(attempt < 1000);
        logits = normal(extents<2>{T, E}, 23 + attempt, 2.0f);
        const double margin = selection_margin(T, E, k, [&](index_t t) {
            std::vector<double> h;
            for (index_t e = 0; e < E; ++e)
                h.push_back(tinyllm::moe_noisy_score(logits(t, e), noise_logits(t, e), noise_seed, t + 3, static_cast<int>(e)));
            return h;
        }, /*ordered=*/true);
        if (margin >= 0.2) break;
    }
    const auto dweights = normal(extents<2>{T, k}, 24);
    tensor<float, 2> dlogits({T, E}), dnoise({T, E});
    cpu::noisy_topk_gating_backward(dlogits.view(), dnoise.view(), dweights.view(), logits.view(), noise_logits.view(),
                                    noise_seed, /*token_offset=*/3);
    auto loss = [&] {
        tensor<std::int32_t, 2> ids({T, k});
        tensor<float, 2> w({T, k});
        cpu::noisy_topk_gating(ids.view(), w.view(), logits.view(), noise_logits.view(), noise_seed, 3);
        return dot(dweights.values(), w.values());
    };
    // As the plain gating (h = 5e-2); a perturbation of a noise logit moves H by
    // |N sigmoid| h < 0.15, inside the 0.2 margin. Tolerance 3e-5 absolute
    // (observed <= 4e-6 in 100 runs).
    const double h = 5e-2;
    TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient_richardson(logits.values(), loss, h),
                          tolerance{3e-5, 0, 3e-4}, "noisy gating dlogits vs finite differences");
    TINYLLM_REQUIRE_CLOSE(dnoise.values(), numeric_gradient_richardson(noise_logits.values(), loss, h),
                          tolerance{3e-5, 0, 3e-4}, "noisy gating dnoise_logits vs finite differences");
    // Without dnoise_logits: the same dlogits.
    tensor<float, 2> alone({T, E});
    cpu::noisy_topk_gating_backward(alone.view(), {}, dweights.view(), logits.view(), noise_logits.view(), noise_seed, 3);
    CHECK(alone.values() == dlogits.values());
}

TEST_CASE("the backward chooses the experts the forward chose, ties included", "[moe][backward][ties]") {
    // E = 4, k = 2; experts 1 and 2 have identical router rows, so their logits are
    // equal (the same double sums) for every token, and they tie for the second
    // place behind expert 0 (ahead of expert 3). The lower index, 1, wins.
    const index_t T = 3, D = 4, E = 4, F = 3, k = 2;
    tensor<float, 2> x({T, D});
    cpu::fill_uniform(x, seed(30), 0.5f, 1.5f);
    tensor<float, 2> router({E, D});
    const auto r12 = normal(extents<1>{D}, 31, 0.1f);
    for (index_t d = 0; d < D; ++d) {
        router(0, d) = 2.0f;
        router(1, d) = r12(d);
        router(2, d) = r12(d);
        router(3, d) = -2.0f;
    }
    auto w1 = normal(extents<3>{E, F, D}, 32), w3 = normal(extents<3>{E, F, D}, 33), w2 = normal(extents<3>{E, D, F}, 34);
    tensor<float, 2> logits({T, E});
    cpu::moe_router_logits(logits.view(), x.view(), router.view());
    const auto g = softmax_topk(logits, k, true);
    for (index_t t = 0; t < T; ++t) {
        REQUIRE(logits(t, 1) == logits(t, 2));
        CHECK(g.ids(t, 0) == 0);
        CHECK(g.ids(t, 1) == 1);
    }
    const auto dout = normal(extents<2>{T, D}, 35);
    tensor<float, 2> dx({T, D}), drouter({E, D});
    tensor<float, 3> dw1({E, F, D}, 9.0f), dw3({E, F, D}, 9.0f), dw2({E, D, F}, 9.0f);
    cpu::moe_backward(dx.view(), drouter.view(), dw1.view(), dw3.view(), dw2.view(), dout.view(), {}, x.view(),
                      router.view(), w1.view(), w3.view(), w2.view(), k);
    // Expert 1 (chosen) has gradients; expert 2 (tied, not chosen) and 3 have none.
    const auto all_zero = [](tensor_view<const float, 2> m) {
        for (index_t i = 0; i < m.extent(0); ++i)
            for (index_t j = 0; j < m.extent(1); ++j)
                if (m(i, j) != 0.0f) return false;
        return true;
    };
    CHECK(!all_zero(dw1.view().slice(0, 1)));
    CHECK(!all_zero(dw2.view().slice(0, 1)));
    for (index_t e : {2, 3}) {
        CHECK(all_zero(dw1.view().slice(0, e)));
        CHECK(all_zero(dw3.view().slice(0, e)));
        CHECK(all_zero(dw2.view().slice(0, e)));
        for (index_t d = 0; d < D; ++d) CHECK(drouter(e, d) == 0.0f);
    }
    // The gating's own backward agrees: the tie's loser gets no logit gradient.
    tensor<float, 2> dlogits({T, E});
    cpu::softmax_topk_gating_backward(dlogits.view(), normal(extents<2>{T, k}, 36).view(), logits.view(), true);
    for (index_t t = 0; t < T; ++t) {
        CHECK(dlogits(t, 1) != 0.0f);
        CHECK(dlogits(t, 2) == 0.0f);
    }
}

// ---- auxiliary losses ------------------------------------------------------------------

TEST_CASE("load_balancing_loss_backward matches finite differences with f held constant", "[moe][backward][balance]") {
    const index_t T = 7, E = 5, k = 2;
    auto logits = normal(extents<2>{T, E}, 40, 1.5f);
    const auto ids = softmax_topk(logits, k, true).ids;  // fixed: f carries no gradient
    for (double scale : {1.0, 0.02}) {
        INFO("scale = " << scale);
        tensor<float, 2> dlogits({T, E});
        cpu::load_balancing_loss_backward(dlogits.view(), logits.view(), ids.view(), scale);
        auto loss = [&] { return scale * cpu::load_balancing_loss(logits.view(), ids.view()); };
        // The loss is double and smooth: h = 1e-3 leaves truncation ~1e-7 * scale and
        // rounding ~1e-13; the float gradient itself is rounded (6e-8 relative).
        // Tolerance 1e-6 * scale absolute (observed ~1e-8 * scale).
        TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient(logits.values(), loss, 1e-3),
                              tolerance{1e-6 * scale, 0, 1e-5}, "load-balancing dlogits vs finite differences");
    }
}

TEST_CASE("transformers' load-balancing loss is k times ours on every layer's logits stacked", "[moe][backward][balance]") {
    // Two MoE layers of T = 6 tokens: R = 12 rows. transformers' load_balancing_loss_func,
    // written out in double: aux = E * sum_e (c_e / R) * (sum_rows p_e / R), c_e = rows
    // whose top-k contains e.
    const index_t T = 6, E = 4, k = 2, R = 2 * T;
    auto stacked = normal(extents<2>{R, E}, 50, 1.5f);  // layer 0: rows 0..5, layer 1: rows 6..11
    const auto ids = softmax_topk(stacked, k, true).ids;
    auto transformers_aux = [&] {
        std::vector<double> c(E, 0.0), P(E, 0.0);
        for (index_t r = 0; r < R; ++r) {
            double z = 0;
            for (index_t e = 0; e < E; ++e) z += std::exp(static_cast<double>(stacked(r, e)));
            for (index_t e = 0; e < E; ++e) P[e] += std::exp(static_cast<double>(stacked(r, e))) / z / R;
            for (index_t j = 0; j < k; ++j) c[ids(r, j)] += 1.0;
        }
        double aux = 0;
        for (index_t e = 0; e < E; ++e) aux += c[e] / R * P[e];
        return E * aux;
    };
    CHECK(transformers_aux() ==
          tinyllm_test::Approx(static_cast<double>(k) * cpu::load_balancing_loss(stacked.view(), ids.view())).epsilon(1e-12));
    // Its gradient, with coefficient c = 0.01: scale = c * k.
    tensor<float, 2> dlogits({R, E});
    cpu::load_balancing_loss_backward(dlogits.view(), stacked.view(), ids.view(), 0.01 * k);
    auto loss = [&] { return 0.01 * transformers_aux(); };
    TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient(stacked.values(), loss, 1e-3), tolerance{1e-8, 0, 1e-5},
                          "transformers aux dlogits vs finite differences");
}

TEST_CASE("router_z_loss_backward matches finite differences", "[moe][backward][balance]") {
    const index_t T = 5, E = 6;
    auto logits = normal(extents<2>{T, E}, 60, 3.0f);
    tensor<float, 2> dlogits({T, E}, 1.0f);
    cpu::router_z_loss_backward(dlogits.view(), logits.view(), 1e-3);
    auto loss = [&] { return 1e-3 * cpu::router_z_loss(logits.view()); };
    // Double loss, h = 1e-3: truncation ~1e-10 here. Tolerance 1e-8 absolute (observed <= 3e-10).
    TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient(logits.values(), loss, 1e-3), tolerance{1e-8, 0, 1e-5},
                          "z-loss dlogits vs finite differences");
    // accumulate: added to what is there, in double, rounded once.
    tensor<float, 2> added({T, E}, 1.0f);
    cpu::router_z_loss_backward(added.view(), logits.view(), 1e-3, /*accumulate=*/true);
    std::vector<double> want(added.values().size());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = 1.0 + static_cast<double>(dlogits.values()[i]);
    TINYLLM_REQUIRE_CLOSE(added.values(), want, tolerance{1.2e-7, 0, 1e-7}, "z-loss dlogits accumulated on 1");
}

// ---- the whole block -----------------------------------------------------------------------

namespace {

struct moe_problem {
    index_t T, D, E, F, k;
    tensor<float, 2> x, router;
    tensor<float, 3> w1, w3, w2;
};

// x and a router whose logits are separated by `margin` at the top-k boundary in every row.
moe_problem separated_problem(index_t T, index_t D, index_t E, index_t F, index_t k, double margin, std::uint64_t which) {
    for (std::uint64_t attempt = 0; attempt < 1000; ++attempt) {
        auto x = normal(extents<2>{T, D}, which * 1000 + 2 * attempt);
        auto router = normal(extents<2>{E, D}, which * 1000 + 2 * attempt + 1, 1.5f);
        tensor<float, 2> logits({T, E});
        cpu::moe_router_logits(logits.view(), x.view(), router.view());
        const double m = selection_margin(T, E, k, [&](index_t t) {
            std::vector<double> r;
            for (index_t e = 0; e < E; ++e) r.push_back(logits(t, e));
            return r;
        });
        if (m >= margin)
            return {T, D, E, F, k, x, router, normal(extents<3>{E, F, D}, which + 1, 0.7f),
                    normal(extents<3>{E, F, D}, which + 2, 0.7f), normal(extents<3>{E, D, F}, which + 3, 0.7f)};
    }
    FAIL("no separated router logits in 1000 draws");
    return {};
}

}  // namespace

TEST_CASE("moe_backward matches finite differences of moe_forward", "[moe][backward]") {
    const index_t T = 6, D = 5, E = 4, F = 3, k = 2;
    auto p = separated_problem(T, D, E, F, k, 0.6, 70);
    const auto dout = normal(extents<2>{T, D}, 71);
    const auto dlogits_extra = normal(extents<2>{T, E}, 72, 0.3f);  // an auxiliary loss's gradient
    // Without a capacity; with capacity 2 (of T*k/E = 3 on average: slots are dropped)
    // and rows padded to blocks of 4.
    for (const tinyllm::moe_dispatch_options options :
         {tinyllm::moe_dispatch_options{}, tinyllm::moe_dispatch_options{.capacity = 2, .block = 4}}) {
        INFO("capacity = " << options.capacity << ", block = " << options.block);
        tensor<float, 2> dx({T, D}, NAN), drouter({E, D}, NAN);
        tensor<float, 3> dw1({E, F, D}, NAN), dw3({E, F, D}, NAN), dw2({E, D, F}, NAN);
        cpu::moe_backward(dx.view(), drouter.view(), dw1.view(), dw3.view(), dw2.view(), dout.view(), dlogits_extra.view(),
                          p.x.view(), p.router.view(), p.w1.view(), p.w3.view(), p.w2.view(), k, options);
        auto loss = [&] {
            tensor<float, 2> y({T, D}), logits({T, E});
            cpu::moe_forward(y.view(), p.x.view(), p.router.view(), p.w1.view(), p.w3.view(), p.w2.view(), k, options);
            cpu::moe_router_logits(logits.view(), p.x.view(), p.router.view());
            return dot(dout.values(), y.values()) + dot(dlogits_extra.values(), logits.values());
        };
        // Smooth between choices: Richardson with h = 5e-2; a perturbation moves the gap
        // between two logits by h |x| or h |router(e1) - router(e2)| <~ 0.5 at worst,
        // inside the 0.6 margin. Errors: truncation O(h^4) ~1e-6, and the float rounding
        // of the T * D outputs a perturbation touches (6e-8 |dout y| each, |y| up to ~5)
        // over 2 (h/2): up to ~1e-4 for the weights every token uses. Tolerance 5e-4
        // absolute + 1e-3 relative (observed <= 2e-4, rel-L2 <= 4e-5, in 100 runs); a
        // wrong term of the backward is O(0.1 .. 1).
        const double h = 5e-2;
        const tolerance tol{5e-4, 1e-3, 3e-4};
        TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(p.x.values(), loss, h), tol, "moe dx");
        TINYLLM_REQUIRE_CLOSE(drouter.values(), numeric_gradient_richardson(p.router.values(), loss, h), tol,
                              "moe drouter");
        TINYLLM_REQUIRE_CLOSE(dw1.values(), numeric_gradient_richardson(p.w1.values(), loss, h), tol, "moe dw1");
        TINYLLM_REQUIRE_CLOSE(dw3.values(), numeric_gradient_richardson(p.w3.values(), loss, h), tol, "moe dw3");
        TINYLLM_REQUIRE_CLOSE(dw2.values(), numeric_gradient_richardson(p.w2.values(), loss, h), tol, "moe dw2");
    }
}

TEST_CASE("moe_backward: padding changes nothing, gradients may be skipped, accumulate adds", "[moe][backward]") {
    const index_t T = 9, D = 6, E = 5, F = 4, k = 2;
    auto p = separated_problem(T, D, E, F, k, 0.0, 80);
    const auto dout = normal(extents<2>{T, D}, 81);
    tensor<float, 2> dx({T, D}), drouter({E, D});
    tensor<float, 3> dw1({E, F, D}), dw3({E, F, D}), dw2({E, D, F});
    cpu::moe_backward(dx.view(), drouter.view(), dw1.view(), dw3.view(), dw2.view(), dout.view(), {}, p.x.view(),
                      p.router.view(), p.w1.view(), p.w3.view(), p.w2.view(), k);

    // Rows padded to blocks of 8: the same rows of each expert, in the same order.
    tensor<float, 2> dx8({T, D}), drouter8({E, D});
    tensor<float, 3> dw1_8({E, F, D}), dw3_8({E, F, D}), dw2_8({E, D, F});
    cpu::moe_backward(dx8.view(), drouter8.view(), dw1_8.view(), dw3_8.view(), dw2_8.view(), dout.view(), {}, p.x.view(),
                      p.router.view(), p.w1.view(), p.w3.view(), p.w2.view(), k, {.block = 8});
    CHECK(dx8.values() == dx.values());
    CHECK(drouter8.values() == drouter.values());
    CHECK(dw1_8.values() == dw1.values());
    CHECK(dw3_8.values() == dw3.values());
    CHECK(dw2_8.values() == dw2.values());

    // Only some gradients: the others are the same bits.
    tensor<float, 3> only_w2({E, D, F});
    cpu::moe_backward({}, {}, {}, {}, only_w2.view(), dout.view(), {}, p.x.view(), p.router.view(), p.w1.view(),
                      p.w3.view(), p.w2.view(), k);
    CHECK(only_w2.values() == dw2.values());
    tensor<float, 2> only_dx({T, D});
    cpu::moe_backward(only_dx.view(), {}, {}, {}, {}, dout.view(), {}, p.x.view(), p.router.view(), p.w1.view(),
                      p.w3.view(), p.w2.view(), k);
    CHECK(only_dx.values() == dx.values());

    // accumulate: a second call adds (dx is overwritten).
    cpu::moe_backward(dx8.view(), drouter8.view(), dw1_8.view(), dw3_8.view(), dw2_8.view(), dout.view(), {}, p.x.view(),
                      p.router.view(), p.w1.view(), p.w3.view(), p.w2.view(), k, {}, /*accumulate=*/true);
    CHECK(dx8.values() == dx.values());
    const auto doubled = [](const std::vector<float>& v) {
        std::vector<double> d(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) d[i] = 2.0 * v[i];
        return d;
    };
    const tolerance one_rounding{1e-30, 1.2e-7, 1.2e-7};
    TINYLLM_REQUIRE_CLOSE(drouter8.values(), doubled(drouter.values()), one_rounding, "accumulated drouter");
    TINYLLM_REQUIRE_CLOSE(dw1_8.values(), doubled(dw1.values()), one_rounding, "accumulated dw1");
    TINYLLM_REQUIRE_CLOSE(dw2_8.values(), doubled(dw2.values()), one_rounding, "accumulated dw2");
}

TEST_CASE("moe_backward and the aux-loss backwards reject mismatched shapes", "[moe][backward][errors]") {
    const index_t T = 3, D = 4, E = 3, F = 2, k = 2;
    auto p = separated_problem(T, D, E, F, k, 0.0, 90);
    const auto dout = normal(extents<2>{T, D}, 91);
    tensor<float, 3> wrong({E, D, F});
    CHECK_THROWS_WITH(cpu::moe_backward({}, {}, wrong.view(), {}, {}, dout.view(), {}, p.x.view(), p.router.view(),
                                        p.w1.view(), p.w3.view(), p.w2.view(), k),
                      tinyllm_test::contains("moe_backward: dw1"));
    const auto bad_extra = normal(extents<2>{T, E + 1}, 92);
    CHECK_THROWS_WITH(cpu::moe_backward({}, {}, {}, {}, {}, dout.view(), bad_extra.view(), p.x.view(), p.router.view(),
                                        p.w1.view(), p.w3.view(), p.w2.view(), k),
                      tinyllm_test::contains("moe_backward: dlogits_extra"));
    const auto bad_dout = normal(extents<2>{T + 1, D}, 93);
    CHECK_THROWS_WITH(cpu::moe_backward({}, {}, {}, {}, {}, bad_dout.view(), {}, p.x.view(), p.router.view(),
                                        p.w1.view(), p.w3.view(), p.w2.view(), k),
                      tinyllm_test::contains("moe_backward: dout"));
    tensor<float, 2> dlogits({T, E});
    tensor<std::int32_t, 2> ids({T, k}, 0);
    ids(2, 1) = E;
    tensor<float, 2> logits({T, E});
    CHECK_THROWS_WITH(cpu::load_balancing_loss_backward(dlogits.view(), logits.view(), ids.view()),
                      tinyllm_test::contains("load_balancing_loss_backward: ids(2, 1) = 3 is not an expert in [0, 3)"));
    tensor<float, 2> wrong_dlogits({T, E + 1});
    CHECK_THROWS_WITH(cpu::router_z_loss_backward(wrong_dlogits.view(), logits.view()),
                      tinyllm_test::contains("router_z_loss_backward: dlogits"));
    CHECK_THROWS_WITH(cpu::softmax_topk_gating_backward(dlogits.view(), normal(extents<2>{T, E + 1}, 94).view(),
                                                        logits.view(), true),
                      tinyllm_test::contains("softmax_topk_gating_backward: k (the second extent of dweights) = 4"));
}
