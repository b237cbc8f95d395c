// Tests for the backward passes: the cross-entropy loss (tinyllm/loss.hpp) and
// the backward functions of linear (ffn.hpp), the norms (norm.hpp), the
// activations (activation.hpp) and RoPE (positional.hpp).
//
// Every gradient is checked against central finite differences of the
// library's own forward: for a scalar L(x) = sum(dout * f(x)), computed in
// double from f's float outputs,
//
//     dL/dx_k ~ (L(x + h e_k) - L(x - h e_k)) / (x_k^+ - x_k^-)
//
// where x_k^+ and x_k^- are x_k + h and x_k - h rounded to float (the forwards
// take float inputs) and the denominator is their exact difference. Two error
// sources bound the agreement: the truncation error, h^2 f''' / 6, and the
// rounding of f's outputs to float (relative 2^-24 each, ~6e-8), which only
// the outputs that depend on x_k carry and which is divided by 2h. The
// tolerance chosen for each check is stated beside it with its reason.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/loss.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm::token_id;
using tinyllm_test::tolerance;

namespace cpu = tinyllm::cpu;

namespace {

// A fresh seed for input number `which` of this run (see test_seed in compare.hpp).
std::uint64_t seed(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

template <std::size_t R>
tensor<float, R> normal(const extents<R>& shape, std::uint64_t which, float stddev = 1.0f) {
    tensor<float, R> t(shape);
    cpu::fill_normal(t, seed(which), 0.0f, stddev);
    return t;
}

// The central-difference gradient of loss() with respect to every element of
// `input` (perturbed in place and restored), in double.
template <class T>
std::vector<double> numeric_gradient(T& input, const std::function<double()>& loss, double h) {
    std::vector<float>& v = input.values();
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

// sum(dout * y) in double: the scalar whose gradient with respect to y is dout.
template <class A, class B>
double dot(const A& dout, const B& y) {
    double s = 0;
    for (std::size_t i = 0; i < dout.values().size(); ++i)
        s += static_cast<double>(dout.values()[i]) * static_cast<double>(y.values()[i]);
    return s;
}

}  // namespace

// ---- cross-entropy ------------------------------------------------------------------

namespace {

// The loss of one row by its definition, in double, independent of the library:
// p = softmax(z); loss = (1 - eps) * -log p_t + eps * mean_j(-log p_j).
double cross_entropy_row_64(const std::vector<double>& z, int t, double eps) {
    double sum = 0;
    for (double v : z) sum += std::exp(v);
    double nll_t = 0, mean_nll = 0;
    for (std::size_t j = 0; j < z.size(); ++j) {
        const double nll = -std::log(std::exp(z[j]) / sum);
        if (static_cast<int>(j) == t) nll_t = nll;
        mean_nll += nll / static_cast<double>(z.size());
    }
    return (1.0 - eps) * nll_t + eps * mean_nll;
}

}  // namespace

TEST_CASE("cross_entropy of a hand-computed example", "[loss]") {
    // Two rows of V = 3 logits. Row 0: z = (1, 2, 3), target 2; row 1: z = (0, 0, 0), target 0.
    //   row 0: lse = log(e + e^2 + e^3) = 3.40760596444438, nll = lse - 3 = 0.40760596444438
    //   row 1: lse = log 3 = 1.09861228866811,              nll = 1.09861228866811
    //   mean  = 0.75310912655624
    tensor<float, 2> logits({2, 3});
    logits.values() = {1, 2, 3, 0, 0, 0};
    tensor<token_id, 1> targets({2});
    targets.values() = {2, 0};
    tensor<float, 2> dlogits({2, 3});
    const double loss = cpu::cross_entropy(dlogits, logits, targets);
    CHECK(loss == tinyllm_test::Approx(0.75310912655624).epsilon(1e-12));
    // softmax(1, 2, 3) = (0.09003057, 0.24472847, 0.66524096); the gradient is (p - onehot) / 2.
    const std::vector<double> want = {0.09003057317038 / 2, 0.24472847105480 / 2, (0.66524095577482 - 1) / 2,
                                      (1.0 / 3 - 1) / 2,    1.0 / 6,              1.0 / 6};
    TINYLLM_REQUIRE_CLOSE(dlogits.values(), want, tolerance{1e-7, 0, 1e-7}, "hand-computed dlogits");

    // reduction = sum: the two row losses added, the gradient not divided.
    tensor<float, 2> dsum({2, 3});
    const double sum = cpu::cross_entropy(dsum, logits, targets, {.reduction = tinyllm::loss_reduction::sum});
    CHECK(sum == tinyllm_test::Approx(0.40760596444438 + 1.09861228866811).epsilon(1e-12));
    for (std::size_t i = 0; i < 6; ++i) CHECK(dsum.values()[i] == tinyllm_test::Approx(2 * want[i]).margin(1e-7));

    // No dlogits: the loss alone.
    CHECK(cpu::cross_entropy(tensor_view<float, 2>{}, logits, targets) == loss);
}

TEST_CASE("cross_entropy with label smoothing follows PyTorch's definition", "[loss]") {
    const index_t rows = 6, V = 11;
    auto logits = normal(extents<2>{rows, V}, 1, 2.0f);
    tensor<token_id, 1> targets({rows});
    targets.values() = {3, 0, 10, -100, 7, 3};
    for (double eps : {0.0, 0.1, 0.5, 0.9}) {
        INFO("label_smoothing = " << eps);
        // Expected, from the formula in double: the mean over the 5 rows that are not ignored.
        double want = 0;
        for (index_t r = 0; r < rows; ++r) {
            if (targets(r) == -100) continue;
            std::vector<double> z(static_cast<std::size_t>(V));
            for (index_t j = 0; j < V; ++j) z[static_cast<std::size_t>(j)] = logits(r, j);
            want += cross_entropy_row_64(z, targets(r), eps) / 5.0;
        }
        tensor<float, 2> dlogits({rows, V});
        const double loss = cpu::cross_entropy(dlogits, logits, targets, {.label_smoothing = eps});
        CHECK(loss == tinyllm_test::Approx(want).epsilon(1e-12));
        // The gradient against central differences of the loss. The loss is double and
        // the logits enter exactly, so only truncation (h^2 |f'''| / 6 ~ 1e-7) and the
        // loss's own double rounding (~1e-16 / h) remain: tolerance 1e-6 absolute.
        auto loss_of = [&] { return cpu::cross_entropy(tensor_view<float, 2>{}, logits, targets, {.label_smoothing = eps}); };
        TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient(logits, loss_of, 1e-3), tolerance{1e-6, 0, 1e-5},
                              "cross_entropy dlogits vs finite differences");
        // The ignored row's gradient is exactly zero.
        for (index_t j = 0; j < V; ++j) CHECK(dlogits(3, j) == 0.0f);
    }
}

TEST_CASE("cross_entropy takes (B, T, V) logits, in place, with sum reduction", "[loss][batch]") {
    const index_t B = 2, T = 3, V = 7;
    auto logits = normal(extents<3>{B, T, V}, 2, 1.5f);
    tensor<token_id, 2> targets({B, T});
    targets.values() = {1, 6, 0, 5, -1, 2};
    const tinyllm::cross_entropy_options opts{.ignore_index = -1, .label_smoothing = 0.2,
                                              .reduction = tinyllm::loss_reduction::sum};
    tensor<float, 3> dlogits({B, T, V});
    const double loss = cpu::cross_entropy(dlogits, logits, targets, opts);

    // The same as the flattened (B*T, V) call.
    tensor<float, 2> dflat({B * T, V});
    tensor<token_id, 1> tflat({B * T});
    tflat.values() = targets.values();
    CHECK(cpu::cross_entropy(dflat, reshape(logits, {B * T, V}), tflat, opts) == loss);
    CHECK(dflat.values() == dlogits.values());

    auto loss_of = [&] { return cpu::cross_entropy(tensor_view<float, 3>{}, logits, targets, opts); };
    TINYLLM_REQUIRE_CLOSE(dlogits.values(), numeric_gradient(logits, loss_of, 1e-3), tolerance{1e-6, 0, 1e-5},
                          "(B, T, V) sum-reduced dlogits vs finite differences");

    // In place: dlogits is the logits' memory (the llm.c trick); the result is the same.
    auto in_place = logits;
    const double loss_in_place = cpu::cross_entropy(in_place, in_place, targets, opts);
    CHECK(loss_in_place == loss);
    CHECK(in_place.values() == dlogits.values());
}

TEST_CASE("cross_entropy with every target ignored gives 0 and zero gradients", "[loss]") {
    auto logits = normal(extents<2>{3, 5}, 3);
    tensor<token_id, 1> targets({3}, token_id{-100});
    tensor<float, 2> dlogits({3, 5}, 7.0f);
    CHECK(cpu::cross_entropy(dlogits, logits, targets) == 0.0);
    for (float g : dlogits.values()) CHECK(g == 0.0f);
    CHECK(cpu::cross_entropy(dlogits, logits, targets, {.reduction = tinyllm::loss_reduction::sum}) == 0.0);
}

TEST_CASE("cross_entropy stays finite for huge logits", "[loss]") {
    // exp(1000) overflows even in double; the max-subtracted log-sum-exp does not.
    tensor<float, 2> logits({1, 3});
    logits.values() = {1000.0f, 999.0f, -1000.0f};
    tensor<token_id, 1> targets({1}, token_id{1});
    tensor<float, 2> dlogits({1, 3});
    const double loss = cpu::cross_entropy(dlogits, logits, targets);
    CHECK(loss == tinyllm_test::Approx(1.0 + std::log1p(std::exp(-1.0))).epsilon(1e-12));  // lse - 999
    for (float g : dlogits.values()) CHECK(std::isfinite(g));
}

TEST_CASE("cross_entropy rejects bad targets, non-finite logits and mismatched shapes", "[loss][errors]") {
    auto logits = normal(extents<3>{2, 3, 5}, 4);
    tensor<token_id, 2> targets({2, 3}, token_id{1});
    tensor<float, 3> dlogits({2, 3, 5});

    targets(1, 2) = 5;
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, logits, targets),
                      tinyllm_test::contains("cross_entropy: the target at (1, 2) is 5, outside the vocabulary "
                                             "[0, V = 5) and not ignore_index = -100"));
    targets(1, 2) = -3;
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, logits, targets), tinyllm_test::contains("the target at (1, 2) is -3"));
    targets(1, 2) = 1;

    auto poisoned = logits;
    poisoned(0, 1, 4) = std::numeric_limits<float>::quiet_NaN();
    const auto before = dlogits.values();
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, poisoned, targets),
                      tinyllm_test::contains("the logits at (0, 1) (row 1) hold a non-finite value, nan at vocabulary index 4"));
    CHECK(dlogits.values() == before);  // nothing was written
    poisoned(0, 1, 4) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, poisoned, targets), tinyllm_test::contains("non-finite value, inf"));

    tensor<float, 3> wrong({2, 3, 4});
    CHECK_THROWS_WITH(cpu::cross_entropy(wrong, logits, targets),
                      tinyllm_test::contains("cross_entropy: dlogits has shape (2, 3, 4) but logits has shape (2, 3, 5)"));
    tensor<token_id, 2> wrong_targets({3, 2});
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, logits, wrong_targets),
                      tinyllm_test::contains("cross_entropy: targets have shape (3, 2) but logits have shape (2, 3, 5)"));
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, logits, targets, {.label_smoothing = 1.0}),
                      tinyllm_test::contains("label_smoothing = 1 must be in [0, 1)"));
    CHECK_THROWS_WITH(cpu::cross_entropy(dlogits, logits, targets, {.label_smoothing = -0.1}),
                      tinyllm_test::contains("must be in [0, 1)"));
}
