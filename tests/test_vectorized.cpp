// Tests for tinyllm/vectorized.hpp: the float, vectorized, threaded rung of the
// activations, SwiGLU, the norms and the cross-entropy, each against its double
// (or per-element) reference in activation.hpp, norm.hpp and loss.hpp.
//
// Fresh random inputs every run, outputs poisoned with NaN first, rows not a
// multiple of the lanes or of the row chunks, in place and not, with and without
// the optional weights, and the fallback for views whose rows are strided.
//
// Tolerances: see each constant below and the measured errors the test prints;
// a wrong formula or a lost lane is off by 1e-3 or more.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/vectorized.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <vector>

using tinyllm::activation;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm::token_id;
namespace cpu = tinyllm::cpu;
using Catch::Matchers::Contains;

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

tensor<float, 2> random_matrix(index_t rows, index_t cols, std::uint64_t which, float lo, float hi) {
    tensor<float, 2> t(extents<2>{rows, cols});
    t.values() = tinyllm_test::random_floats(static_cast<std::size_t>(rows * cols), which, lo, hi);
    return t;
}

tensor<float, 2> poisoned(index_t rows, index_t cols) { return tensor<float, 2>(extents<2>{rows, cols}, nan_f); }

tensor<float, 1> random_vector(index_t n, std::uint64_t which, float lo, float hi) {
    tensor<float, 1> t(extents<1>{n});
    t.values() = tinyllm_test::random_floats(static_cast<std::size_t>(n), which, lo, hi);
    return t;
}

// Sets the thread count for a scope.
struct threads_scope {
    explicit threads_scope(int n) { cpu::set_num_threads(n); }
    ~threads_scope() { cpu::set_num_threads(0); }
    threads_scope(const threads_scope&) = delete;
    threads_scope& operator=(const threads_scope&) = delete;
};

// Observed over runs of this file: forward activations and SwiGLU rel-L2 <= 1.4e-7,
// derivatives <= 1.4e-7; norms rel-L2 <= 1.2e-7 (3e-6 with a mean of 50, where the
// tolerance grows, below); norm gradients rel-L2 <= 2.3e-7, except D = 3 rows,
// whose dx can nearly cancel (1.5e-5 seen; the tolerance grows: see
// norm_backward_conditioning); the loss's relative error <= 4.2e-7 (but see the
// cancellation below), its gradient rel-L2 <= 8.5e-8.
const tinyllm_test::tolerance elementwise_tol{1e-30, 3e-6, 3e-6};  // a few ulps, relative
// A derivative that is a difference of two terms (GELU's and SiLU's near their
// minimum, far below zero) is exact to the float rounding of the terms: an
// absolute error of ~1e-7 on the scale of dout, however small the difference.
const tinyllm_test::tolerance derivative_tol{3e-7, 3e-6, 3e-6};

double sum_of_squares(std::span<const float> v) {
    double s = 0.0;
    for (const float e : v) s += static_cast<double>(e) * e;
    return s;
}

// `tol` with its rel-L2 bound raised to what its absolute bound allows over a
// whole tensor: an error of at most abs per unit of `scale` in each element is
// ||error|| <= abs * ||scale||, where ||scale||^2 = scale_sq. That exceeds
// rel_l2 * ||reference|| when every element of the reference is small.
tinyllm_test::tolerance rel_l2_from_abs(tinyllm_test::tolerance tol, double scale_sq, std::span<const float> want) {
    const double want_sq = sum_of_squares(want);
    if (want_sq > 0.0) tol.rel_l2 = std::max(tol.rel_l2, tol.abs * std::sqrt(scale_sq / want_sq));
    return tol;
}

// derivative_tol over the whole tensor, the scale being dout (SwiGLU's d gate:
// dout * up): every element can sit near such a minimum (a 1x1 case, say: error
// 2.9e-9 on a derivative of 9.5e-4 is rel-L2 3.1e-6).
tinyllm_test::tolerance derivative_tol_for(std::span<const float> scale, std::span<const float> want) {
    return rel_l2_from_abs(derivative_tol, sum_of_squares(scale), want);
}

const tinyllm_test::tolerance norm_tol{2e-6, 2e-6, 3e-6};
const tinyllm_test::tolerance norm_grad_tol{4e-6, 4e-6, 1e-5};
// The target's element, p_t - 1, cancels when p_t is near 1: absolute error ~1e-7
// (of the 1/valid scale), however small the difference.
const tinyllm_test::tolerance loss_grad_tol{2e-7, 1e-5, 3e-6};

const index_t shapes[][2] = {{1, 1}, {3, 7}, {33, 301}, {70, 1024}};

// How far a norm's backward amplifies float rounding, case by case.
//
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ skip), g = dout * w: its
// errors are those of its terms, however much the terms cancel: rstd * g, and
// xhat = (x - mean) * rstd, whose float error is an ulp of |x| times rstd and
// is multiplied by rstd again. So a row's amplification is a = rstd * (1 + rstd
// * max|x|) / 4, the 4 making it at most 1 on this test's typical rows (spread
// of x ~1.4, |x| <= 3, |g| <= 1.5).
// The tolerance grows with `term`, the largest a * |g| of the case, and the
// rel-L2 bound with `cancellation`, ||a * g|| / ||dx||. A row of three values
// can land close together: within 0.1 (rstd ~ 9), dx a twentieth of its terms,
// an error of 4e-6; within 0.03 of each other near |x| = 2.5 (rstd ~ 32), an
// error of 1.9e-4 on 0.52.
//
// dweight = sum over rows of dout * xhat carries xhat's error too: `xhat_term`
// is the largest rstd * max|x| / 3 of the case (at most 1 on typical rows),
// and dweight's bounds grow with it (a 1x3 row gave 4.9e-6 on 0.043).
struct conditioning {
    double term = 0.0, cancellation = 0.0, xhat_term = 0.0;
};
conditioning norm_backward_conditioning(const tensor<float, 2>& dx, const tensor<float, 2>& dout,
                                        const tensor<float, 2>& x, const tensor<float, 1>& w, bool centre) {
    const index_t rows = x.extent(0), D = x.extent(1);
    double largest = 0.0, terms_sq = 0.0, dx_sq = 0.0, xhat_term = 0.0;
    for (index_t r = 0; r < rows; ++r) {
        double mean = 0.0, squares = 0.0, x_max = 0.0;
        if (centre) {
            for (index_t j = 0; j < D; ++j) mean += x(r, j);
            mean /= static_cast<double>(D);
        }
        for (index_t j = 0; j < D; ++j) {
            squares += (x(r, j) - mean) * (x(r, j) - mean);
            x_max = std::max(x_max, static_cast<double>(std::fabs(x(r, j))));
        }
        const double rstd = 1.0 / std::sqrt(squares / static_cast<double>(D) + 1e-5);
        const double a = rstd * (1.0 + rstd * x_max) / 4.0;
        xhat_term = std::max(xhat_term, rstd * x_max / 3.0);
        for (index_t j = 0; j < D; ++j) {
            const double t = a * dout(r, j) * (w.size() ? w(j) : 1.0f);
            largest = std::max(largest, std::fabs(t));
            terms_sq += t * t;
            dx_sq += static_cast<double>(dx(r, j)) * dx(r, j);
        }
    }
    return {largest, std::sqrt(terms_sq / std::max(dx_sq, 1e-300)), xhat_term};
}

}  // namespace

TEST_CASE("activate_vectorized and its backward equal the references for every activation", "[vectorized][activation]") {
    const activation kinds[] = {activation::gelu_tanh, activation::silu, activation::relu, activation::gelu_erf,
                                activation::identity};
    std::uint64_t which = 100;
    for (const activation kind : kinds)
        for (const auto& s : shapes) {
            const index_t rows = s[0], cols = s[1];
            const std::string what = std::string(tinyllm::activation_name(kind)) + " " + std::to_string(rows) + "x" +
                                     std::to_string(cols);
            INFO(what);
            auto x = random_matrix(rows, cols, which++, -12.0f, 12.0f);
            // Edges in the first row: zeros of both signs, tiny, large and the region where exp saturates.
            const float edges[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-3f, -1e-3f, 30.0f, -30.0f, 200.0f, -200.0f};
            for (index_t j = 0; j < cols && j < 10; ++j) x.data()[j] = edges[j];
            const auto dout = random_matrix(rows, cols, which++, -2.0f, 2.0f);

            auto want = poisoned(rows, cols), got = poisoned(rows, cols);
            cpu::activate(want.view(), x.view(), kind);
            cpu::activate_vectorized(got.view(), x.view(), kind);
            TINYLLM_REQUIRE_CLOSE(got.values(), want.values(), elementwise_tol, what + " forward");

            auto dwant = poisoned(rows, cols), dgot = poisoned(rows, cols);
            cpu::activate_backward(dwant.view(), dout.view(), x.view(), kind);
            cpu::activate_backward_vectorized(dgot.view(), dout.view(), x.view(), kind);
            TINYLLM_REQUIRE_CLOSE(dgot.values(), dwant.values(), derivative_tol_for(dout.values(), dwant.values()),
                                  what + " backward");

            // In place: out = x, and dx = dout.
            auto inplace = x;
            cpu::activate_vectorized(inplace.view(), inplace.view(), kind);
            REQUIRE(inplace.values() == got.values());
            auto dinplace = dout;
            cpu::activate_backward_vectorized(dinplace.view(), dinplace.view(), x.view(), kind);
            REQUIRE(dinplace.values() == dgot.values());
        }
}

TEST_CASE("swiglu_vectorized and its backward equal the references", "[vectorized][activation]") {
    std::uint64_t which = 200;
    for (const auto& s : shapes) {
        const index_t rows = s[0], cols = s[1];
        INFO(rows << "x" << cols);
        const auto gate = random_matrix(rows, cols, which++, -10.0f, 10.0f),
                   up = random_matrix(rows, cols, which++, -3, 3);
        const auto dout = random_matrix(rows, cols, which++, -2.0f, 2.0f);
        auto want = poisoned(rows, cols), got = poisoned(rows, cols);
        cpu::swiglu(want.view(), gate.view(), up.view());
        cpu::swiglu_vectorized(got.view(), gate.view(), up.view());
        TINYLLM_REQUIRE_CLOSE(got.values(), want.values(), elementwise_tol, "swiglu");

        auto dg_want = poisoned(rows, cols), du_want = poisoned(rows, cols);
        auto dg_got = poisoned(rows, cols), du_got = poisoned(rows, cols);
        cpu::swiglu_backward(dg_want.view(), du_want.view(), dout.view(), gate.view(), up.view());
        cpu::swiglu_backward_vectorized(dg_got.view(), du_got.view(), dout.view(), gate.view(), up.view());
        std::vector<float> dout_up(dout.values().begin(), dout.values().end());
        for (std::size_t i = 0; i < dout_up.size(); ++i) dout_up[i] *= up.values()[i];
        TINYLLM_REQUIRE_CLOSE(dg_got.values(), dg_want.values(), derivative_tol_for(dout_up, dg_want.values()),
                              "swiglu d gate");
        TINYLLM_REQUIRE_CLOSE(du_got.values(), du_want.values(), elementwise_tol, "swiglu d up");
        auto dg_inplace = dout;  // dgate = dout's memory, as the model calls it
        cpu::swiglu_backward_vectorized(dg_inplace.view(), du_got.view(), dg_inplace.view(), gate.view(), up.view());
        REQUIRE(dg_inplace.values() == dg_got.values());
    }
}

TEST_CASE("layer_norm_vectorized and rms_norm_vectorized equal the references", "[vectorized][norm]") {
    std::uint64_t which = 300;
    const index_t norm_shapes[][2] = {{1, 1}, {5, 7}, {33, 256}, {100, 1000}};
    for (const auto& s : norm_shapes)
        for (int affine = 0; affine < 2; ++affine)
            for (const float offset : {0.0f, 50.0f}) {  // a stream with a large mean
                const index_t rows = s[0], D = s[1];
                INFO(rows << "x" << D << (affine ? " with" : " without") << " weights, offset " << offset);
                const auto x = random_matrix(rows, D, which++, offset - 3.0f, offset + 3.0f);
                const auto w = affine ? random_vector(D, which++, 0.5f, 1.5f) : tensor<float, 1>();
                const auto b = affine ? random_vector(D, which++, -1.0f, 1.0f) : tensor<float, 1>();
                auto want = poisoned(rows, D), got = poisoned(rows, D);
                cpu::layer_norm(want.view(), x.view(), w.view(), b.view(), 1e-5f);
                cpu::layer_norm_vectorized(got.view(), x.view(), w.view(), b.view(), 1e-5f);
                // With |mean| >> std a float mean loses digits (norm.hpp): the bound scales with it.
                const double scale = 1.0 + static_cast<double>(offset) / 2.0;
                const tinyllm_test::tolerance tol{norm_tol.abs * scale, norm_tol.rel * scale, norm_tol.rel_l2 * scale};
                TINYLLM_REQUIRE_CLOSE(got.values(), want.values(), tol, "layer_norm");
                auto inplace = x;
                cpu::layer_norm_vectorized(inplace.view(), inplace.view(), w.view(), b.view(), 1e-5f);
                REQUIRE(inplace.values() == got.values());

                auto rwant = poisoned(rows, D), rgot = poisoned(rows, D);
                cpu::rms_norm(rwant.view(), x.view(), w.view(), 1e-6f);
                cpu::rms_norm_vectorized(rgot.view(), x.view(), w.view(), 1e-6f);
                TINYLLM_REQUIRE_CLOSE(rgot.values(), rwant.values(), norm_tol, "rms_norm");
            }
}

TEST_CASE("the vectorized norms' backward passes equal the references", "[vectorized][norm][backward]") {
    std::uint64_t which = 400;
    const index_t norm_shapes[][2] = {{1, 3}, {7, 9}, {70, 256}, {129, 100}};
    for (const auto& s : norm_shapes)
        for (int variant = 0; variant < 4; ++variant) {
            // 0: everything; 1: no skip gradient; 2: accumulate into dweight, dbias; 3: no weight, no gradients of it
            const index_t rows = s[0], D = s[1];
            INFO(rows << "x" << D << ", variant " << variant);
            const auto x = random_matrix(rows, D, which++, -2.0f, 3.0f);
            const auto dout = random_matrix(rows, D, which++, -1.0f, 1.0f);
            const auto skip = variant == 1 ? tensor<float, 2>() : random_matrix(rows, D, which++, -1.0f, 1.0f);
            const auto w = variant == 3 ? tensor<float, 1>() : random_vector(D, which++, 0.5f, 1.5f);
            const auto start = random_vector(D, which++, -1.0f, 1.0f);  // what accumulate adds to
            const bool accumulate = variant == 2;
            for (const bool centre : {true, false}) {
                INFO((centre ? "layer_norm" : "rms_norm"));
                auto dx_want = poisoned(rows, D), dx_got = poisoned(rows, D);
                tensor<float, 1> dw_want = variant == 3 ? tensor<float, 1>() : start, dw_got = dw_want;
                tensor<float, 1> db_want = start, db_got = start;
                if (!accumulate) {
                    for (auto& v : dw_got.values()) v = nan_f;
                    for (auto& v : db_got.values()) v = nan_f;
                }
                if (centre) {
                    cpu::residual_add_layer_norm_backward(dx_want.view(), dw_want.view(), db_want.view(), dout.view(),
                                                          skip.view(), x.view(), w.view(), 1e-5f, accumulate);
                    cpu::residual_add_layer_norm_backward_vectorized(dx_got.view(), dw_got.view(), db_got.view(),
                                                                     dout.view(), skip.view(), x.view(), w.view(),
                                                                     1e-5f, accumulate);
                    TINYLLM_REQUIRE_CLOSE(db_got.values(), db_want.values(), norm_grad_tol, "d bias");
                } else {
                    cpu::residual_add_rms_norm_backward(dx_want.view(), dw_want.view(), dout.view(), skip.view(),
                                                        x.view(), w.view(), 1e-5f, accumulate);
                    cpu::residual_add_rms_norm_backward_vectorized(dx_got.view(), dw_got.view(), dout.view(),
                                                                   skip.view(), x.view(), w.view(), 1e-5f, accumulate);
                }
                const auto [term, cancellation, xhat_term] = norm_backward_conditioning(dx_want, dout, x, w, centre);
                const tinyllm_test::tolerance dx_tol{norm_grad_tol.abs * std::max(1.0, term), norm_grad_tol.rel,
                                                     norm_grad_tol.rel_l2 * std::max(1.0, cancellation)};
                TINYLLM_REQUIRE_CLOSE(dx_got.values(), dx_want.values(), dx_tol, "dx");
                const tinyllm_test::tolerance dw_tol{norm_grad_tol.abs * std::max(1.0, xhat_term), norm_grad_tol.rel,
                                                     norm_grad_tol.rel_l2 * std::max(1.0, xhat_term)};
                TINYLLM_REQUIRE_CLOSE(dw_got.values(), dw_want.values(), dw_tol, "d weight");
            }
        }
}

TEST_CASE("cross_entropy_vectorized equals the reference: loss and gradient, every option", "[vectorized][loss]") {
    std::uint64_t which = 500;
    const index_t loss_shapes[][2] = {{1, 1}, {4, 5}, {37, 4096}, {9, 50257}};
    for (const auto& s : loss_shapes)
        for (int variant = 0; variant < 4; ++variant) {
            // 0: mean; 1: label smoothing 0.1; 2: sum, logits around +500; 3: loss only (no gradient)
            const index_t rows = s[0], V = s[1];
            INFO(rows << "x" << V << ", variant " << variant);
            const float offset = variant == 2 ? 500.0f : 0.0f;
            const auto logits = random_matrix(rows, V, which++, offset - 8.0f, offset + 8.0f);
            tensor<token_id, 1> targets(extents<1>{rows});
            const auto picks = tinyllm_test::random_floats(static_cast<std::size_t>(rows), which++, 0.0f, 1.0f);
            for (index_t r = 0; r < rows; ++r)
                targets(r) = r % 5 == 3
                                 ? -100
                                 : static_cast<token_id>(std::min<index_t>(V - 1, static_cast<index_t>(picks[r] * V)));
            tinyllm::cross_entropy_options opts;
            if (variant == 1) opts.label_smoothing = 0.1;
            if (variant == 2) opts.reduction = tinyllm::loss_reduction::sum;
            auto want = poisoned(rows, V), got = poisoned(rows, V);
            const bool grad = variant != 3;
            const double loss_want =
                cpu::cross_entropy(grad ? want.view() : tensor_view<float, 2>{}, logits.view(), targets.view(), opts);
            const double loss_got = cpu::cross_entropy_vectorized(grad ? got.view() : tensor_view<float, 2>{},
                                                                  logits.view(), targets.view(), opts);
            std::printf("  cross_entropy %ldx%ld variant %d: loss %.9g, reference %.9g, relative error %.3g\n",
                        static_cast<long>(rows), static_cast<long>(V), variant, loss_got, loss_want,
                        std::fabs(loss_got - loss_want) / std::max(1e-30, std::fabs(loss_want)));
            REQUIRE(std::isfinite(loss_got));
            // A row's loss is logsumexp - logit_t, which cancel when p_t is near 1: what is left is the float
            // rounding of the log-sum-exp, a few ulps of the row's largest |logit| (a 4x5 case at loss 0.0077
            // was off by 2.9e-8, relative 3.8e-6). The bound: 4 ulps of 1 per unit of that scale, summed over
            // the rows (averaged for the mean).
            double logit_scale = 0.0;
            index_t valid = 0;
            for (index_t r = 0; r < rows; ++r) {
                if (targets(r) < 0) continue;
                ++valid;
                float largest = 0.0f;
                for (index_t j = 0; j < V; ++j) largest = std::max(largest, std::fabs(logits(r, j)));
                logit_scale += largest;
            }
            if (opts.reduction == tinyllm::loss_reduction::mean && valid > 0) logit_scale /= static_cast<double>(valid);
            REQUIRE(std::fabs(loss_got - loss_want) <= 2e-6 * std::fabs(loss_want) + 2.4e-7 * logit_scale + 1e-9);
            if (!grad) continue;
            // The cancelling element is one per valid row, so over the tensor ||error|| <= abs * sqrt(valid),
            // which exceeds 3e-6 ||dlogits|| when every row's p_t is near 1 (the 4x5 case above: 6.7e-6).
            TINYLLM_REQUIRE_CLOSE(got.values(), want.values(),
                                  rel_l2_from_abs(loss_grad_tol, static_cast<double>(valid), want.values()), "dlogits");
            auto inplace = logits;  // dlogits = logits, as the model calls it
            const double loss_inplace =
                cpu::cross_entropy_vectorized(inplace.view(), inplace.view(), targets.view(), opts);
            REQUIRE(loss_inplace == loss_got);
            REQUIRE(inplace.values() == got.values());
        }
}

TEST_CASE("cross_entropy_vectorized: all rows ignored, and bad inputs, as the reference", "[vectorized][loss][errors]") {
    const auto logits = random_matrix(3, 10, 600, -1.0f, 1.0f);
    tensor<token_id, 1> targets(extents<1>{3}, -100);
    auto d = poisoned(3, 10);
    REQUIRE(cpu::cross_entropy_vectorized(d.view(), logits.view(), targets.view()) == 0.0);
    for (const float g : d.values()) REQUIRE(g == 0.0f);

    targets(1) = 10;
    REQUIRE_THROWS_WITH(cpu::cross_entropy_vectorized(d.view(), logits.view(), targets.view()),
                        Contains("the target at position (1) is 10, outside the vocabulary [0, V = 10)"));
    targets(1) = 2;
    for (const float bad : {nan_f, std::numeric_limits<float>::infinity()}) {
        auto with_bad = logits;
        with_bad(2, 7) = bad;
        targets(2) = 0;
        const std::string what = std::string("(row 2) hold a non-finite value, ") + (std::isnan(bad) ? "nan" : "inf") +
                                 " at vocabulary index 7";
        REQUIRE_THROWS_WITH(cpu::cross_entropy(tensor_view<float, 2>{}, with_bad.view(), targets.view()),
                            Contains(what));
        REQUIRE_THROWS_WITH(cpu::cross_entropy_vectorized(d.view(), with_bad.view(), targets.view()),
                            Contains("the logits at position (2) " + what));
    }
    auto wrong = poisoned(3, 9);
    REQUIRE_THROWS_WITH(cpu::cross_entropy_vectorized(wrong.view(), logits.view(), targets.view()),
                        Contains("dlogits has shape (3, 9) but logits has shape (3, 10)"));
}

TEST_CASE("the element-wise ops refuse outputs that overlap their inputs, references and vectorized alike",
          "[vectorized][activation][errors]") {
    // One buffer of 5 rows of 8: x = rows 0..3, a "shifted" view = rows 1..4 (over x's
    // last three rows), a stride-0 view = row 4 repeated.
    std::vector<float> memory(5 * 8);
    for (std::size_t i = 0; i < memory.size(); ++i) memory[i] = 0.01f * static_cast<float>(i) - 0.2f;
    const tensor_view<float, 2> x(memory.data(), {4, 8}), shifted(memory.data() + 8, {4, 8});
    const tensor_view<float, 2> repeated(memory.data() + 32, {4, 8}, {0, 1});
    const auto other = random_matrix(4, 8, 700, -1.0f, 1.0f);
    const tensor_view<const float, 2> cx = x, co = other.view();
    auto out = poisoned(4, 8), out2 = poisoned(4, 8);
    const std::string overlap = "must be exactly", shared = "share an address";

    CHECK_THROWS_WITH(cpu::activate(shifted, cx, activation::silu), Contains("activate: out " + overlap));
    CHECK_THROWS_WITH(cpu::activate_vectorized(shifted, cx, activation::silu), Contains("activate: out " + overlap));
    CHECK_THROWS_WITH(cpu::activate(repeated, co, activation::silu), Contains(shared));
    CHECK_THROWS_WITH(cpu::swiglu(shifted, co, cx), Contains("swiglu: out " + overlap + " up"));
    CHECK_THROWS_WITH(cpu::swiglu_vectorized(shifted, cx, co), Contains("swiglu: out " + overlap + " gate"));
    CHECK_THROWS_WITH(cpu::add(shifted, co, cx), Contains("add: out " + overlap + " b"));
    CHECK_THROWS_WITH(cpu::multiply(shifted, cx, co), Contains("multiply: out " + overlap + " a"));
    CHECK_THROWS_WITH(
        cpu::bias_activate(out.view(), co, tensor_view<const float, 1>(out.data() + 8, {8}), activation::relu),
        Contains("bias_activate: out must not share memory with bias"));
    CHECK_THROWS_WITH(cpu::activate_backward(shifted, cx, co, activation::gelu_tanh),
                      Contains("activate_backward: dx " + overlap + " dout"));
    CHECK_THROWS_WITH(cpu::activate_backward_vectorized(shifted, co, cx, activation::gelu_tanh),
                      Contains("activate_backward: dx " + overlap + " x"));
    CHECK_THROWS_WITH(cpu::bias_activate_backward(out.view(), tensor_view<float, 1>(out.data() + 8, {8}), co, co,
                                                  tensor_view<const float, 1>(memory.data(), {8}), activation::relu),
                      Contains("bias_activate_backward: dbias must not share memory with dx"));
    // Two outputs: dgate and dup apart from each other, each exactly an input or apart.
    CHECK_THROWS_WITH(cpu::swiglu_backward(out.view(), out.view(), co, co, co),
                      Contains("swiglu_backward: dgate must not share memory with dup"));
    CHECK_THROWS_WITH(cpu::swiglu_backward_vectorized(out.view(), shifted, co, cx, co),
                      Contains("swiglu_backward: dup " + overlap + " gate"));
    CHECK_THROWS_WITH(cpu::multiply_backward(out.view(), out.view(), co, co, co),
                      Contains("multiply_backward: da must not share memory with db"));
    // The cross-entropy's gradient: shifted over the logits, or with stride 0.
    tensor<token_id, 1> targets(extents<1>{4}, 1);
    CHECK_THROWS_WITH(cpu::cross_entropy_vectorized(shifted, cx, targets.view()),
                      Contains("cross_entropy: dlogits " + overlap + " logits"));
    CHECK_THROWS_WITH(cpu::cross_entropy_vectorized(repeated, co, targets.view()), Contains(shared));

    // Allowed: exactly in place, and interleaved halves of one (rows, 16) buffer.
    auto in_place = other;
    cpu::activate(out.view(), co, activation::silu);
    cpu::activate_vectorized(in_place.view(), in_place.view(), activation::silu);
    TINYLLM_REQUIRE_CLOSE(in_place.values(), out.values(), elementwise_tol, "activate in place");
    std::vector<float> fused(4 * 16, nan_f);
    const tensor_view<float, 2> dgate(fused.data(), {4, 8}, {16, 1}), dup(fused.data() + 8, {4, 8}, {16, 1});
    cpu::swiglu_backward(dgate, dup, co, cx, co);
    cpu::swiglu_backward(out.view(), out2.view(), co, cx, co);
    for (index_t r = 0; r < 4; ++r)
        for (index_t c = 0; c < 8; ++c) {
            REQUIRE(dgate(r, c) == out(r, c));
            REQUIRE(dup(r, c) == out2(r, c));
        }
}

TEST_CASE("vectorized: the same bits for any thread count", "[vectorized][threads]") {
    const index_t rows = 300, D = 512, V = 3000;
    const auto x = random_matrix(rows, D, 700, -2.0f, 2.0f), dout = random_matrix(rows, D, 701, -1.0f, 1.0f);
    const auto w = random_vector(D, 702, 0.5f, 1.5f);
    const auto logits = random_matrix(rows, V, 703, -5.0f, 5.0f);
    tensor<token_id, 1> targets(extents<1>{rows});
    for (index_t r = 0; r < rows; ++r) targets(r) = static_cast<token_id>((r * 7919) % V);
    struct result {
        std::vector<float> dx, dw, db, g, dlogits;
        double loss = 0;
    };
    auto run = [&](int threads) {
        threads_scope scope(threads);
        result out;
        tensor<float, 2> dx(extents<2>{rows, D}), g(extents<2>{rows, D}), dl(extents<2>{rows, V});
        tensor<float, 1> dw(extents<1>{D}), db(extents<1>{D});
        cpu::residual_add_layer_norm_backward_vectorized(dx.view(), dw.view(), db.view(), dout.view(), {}, x.view(),
                                                         w.view(), 1e-5f);
        cpu::activate_vectorized(g.view(), x.view(), activation::gelu_tanh);
        out.loss = cpu::cross_entropy_vectorized(dl.view(), logits.view(), targets.view());
        out.dx = dx.values(), out.dw = dw.values(), out.db = db.values(), out.g = g.values(), out.dlogits = dl.values();
        return out;
    };
    const result one = run(1), three = run(3);
    REQUIRE(one.dx == three.dx);
    REQUIRE(one.dw == three.dw);
    REQUIRE(one.db == three.db);
    REQUIRE(one.g == three.g);
    REQUIRE(one.dlogits == three.dlogits);
    REQUIRE(one.loss == three.loss);
}

TEST_CASE("vectorized: strided rows go to the reference, bad shapes are the references' errors", "[vectorized][errors]") {
    // A transposed view: its rows are not contiguous, so the reference computes it.
    const auto x = random_matrix(40, 30, 800, -4.0f, 4.0f);
    const auto xt = x.view().transpose(0, 1);  // (30, 40), column stride 30
    auto want = poisoned(30, 40), got = poisoned(30, 40);
    cpu::activate(want.view(), xt, activation::gelu_tanh);
    cpu::activate_vectorized(got.view(), xt, activation::gelu_tanh);
    REQUIRE(got.values() == want.values());
    auto n_want = poisoned(30, 40), n_got = poisoned(30, 40);
    cpu::rms_norm(n_want.view(), xt, {}, 1e-5f);
    cpu::rms_norm_vectorized(n_got.view(), xt, {}, 1e-5f);
    REQUIRE(n_got.values() == n_want.values());

    auto small = poisoned(40, 29);
    REQUIRE_THROWS_WITH(cpu::activate_vectorized(small.view(), x.view(), activation::silu),
                        Contains("activate: out has shape (40, 29) but x has shape (40, 30)"));
    const tensor<float, 1> w(extents<1>{29});
    auto out = poisoned(40, 30);
    REQUIRE_THROWS_WITH(cpu::layer_norm_vectorized(out.view(), x.view(), w.view(), {}, 1e-5f),
                        Contains("weight has 29 elements but x has D = 30 features"));
    REQUIRE_THROWS_WITH(cpu::rms_norm_vectorized(out.view(), x.view(), {}, 0.0f), Contains("eps = 0 must be positive"));
}
