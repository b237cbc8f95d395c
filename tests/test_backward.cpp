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

#include <tinyllm/activation.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
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

// The same with the h^2 term of the truncation error removed (Richardson):
// (4 D(h/2) - D(h)) / 3, whose truncation error is O(h^4). For smooth, non-linear
// functions, where it allows a larger h and so less rounding error.
template <class T>
std::vector<double> numeric_gradient_richardson(T& input, const std::function<double()>& loss, double h) {
    const auto coarse = numeric_gradient(input, loss, h);
    auto fine = numeric_gradient(input, loss, h / 2);
    for (std::size_t k = 0; k < fine.size(); ++k) fine[k] = (4.0 * fine[k] - coarse[k]) / 3.0;
    return fine;
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

TEST_CASE("cross_entropy and distillation_loss refuse a dlogits that shares memory they cannot handle",
          "[loss][errors]") {
    // Logits (3, 5) at the start of a buffer of 4 rows; dlogits written over them but not exactly them
    // would overwrite logits not yet read.
    const index_t rows = 3, V = 5;
    std::vector<float> mem(static_cast<std::size_t>((rows + 1) * V));
    cpu::fill_normal(tensor_view<float, 1>(mem.data(), {static_cast<index_t>(mem.size())}), seed(80));
    const std::vector<float> before = mem;
    const tensor_view<const float, 2> logits(mem.data(), {rows, V});
    tensor<token_id, 1> targets({rows});
    targets.values() = {1, 4, 0};
    const auto over = [&](index_t first) { return tensor_view<float, 2>(mem.data() + first, {rows, V}); };

    CHECK_THROWS_WITH(cpu::cross_entropy(over(V), logits, targets.view()),
                      tinyllm_test::contains("cross_entropy: dlogits must be exactly logits (in place) or not share "
                                             "memory with it"));
    CHECK_THROWS_WITH(cpu::cross_entropy(over(1), logits, targets.view()),
                      tinyllm_test::contains("dlogits must be exactly logits"));
    const tensor_view<float, 2> square(mem.data(), {4, 4});  // the same memory in another order
    tensor<token_id, 1> four({4});
    four.values() = {0, 1, 2, 3};
    CHECK_THROWS_WITH(cpu::cross_entropy(square.transpose(0, 1), tensor_view<const float, 2>(square), four.view()),
                      tinyllm_test::contains("dlogits must be exactly logits"));
    CHECK_THROWS_WITH(cpu::cross_entropy(tensor_view<float, 3>(mem.data() + 1, {1, rows, V}),
                                         tensor_view<const float, 3>(mem.data(), {1, rows, V}),
                                         tensor_view<const token_id, 2>(targets.data(), {1, rows})),
                      tinyllm_test::contains("dlogits must be exactly logits"));  // any rank
    std::vector<float> row(static_cast<std::size_t>(V));
    CHECK_THROWS_WITH(cpu::cross_entropy(tensor_view<float, 2>(row.data(), {rows, V}, {0, 1}), logits, targets.view()),
                      tinyllm_test::contains("cross_entropy: dlogits has shape (3, 5) and strides (0, 1), so two of "
                                             "its elements share an address"));
    std::vector<token_id> ids(static_cast<std::size_t>(rows * V), 1);  // targets in the first 3, dlogits over all
    CHECK_THROWS_WITH(cpu::cross_entropy(tensor_view<float, 2>(reinterpret_cast<float*>(ids.data()), {rows, V}), logits,
                                         tensor_view<const token_id, 1>(ids.data(), {rows})),
                      tinyllm_test::contains("cross_entropy: dlogits must not share memory with targets"));
    CHECK(mem == before);  // nothing was written

    // Exactly in place: the same loss and gradient as out of place.
    tensor<float, 2> want({rows, V});
    const double loss = cpu::cross_entropy(want.view(), logits, targets.view());
    CHECK(cpu::cross_entropy(over(0), logits, targets.view()) == loss);
    CHECK(std::vector<float>(mem.begin(), mem.begin() + rows * V) == want.values());
    CHECK(mem.back() == before.back());
    mem = before;

    // distillation_loss adds to dlogits while it reads both logits again: apart from both. Student
    // rows 0-1 and teacher rows 2-3 of a buffer of 5 rows.
    std::vector<float> both(static_cast<std::size_t>(5 * V));
    cpu::fill_normal(tensor_view<float, 1>(both.data(), {5 * V}), seed(81));
    const std::vector<float> both_before = both;
    const tensor_view<const float, 2> student(both.data(), {2, V}), teacher(both.data() + 2 * V, {2, V});
    const auto d_over = [&](index_t first) { return tensor_view<float, 2>(both.data() + first, {2, V}); };
    CHECK_THROWS_WITH(cpu::distillation_loss(d_over(1), student, teacher, 2.0),
                      tinyllm_test::contains("distillation_loss: dlogits must not share memory with the student "
                                             "logits"));
    CHECK_THROWS_WITH(cpu::distillation_loss(d_over(2 * V + 2), student, teacher, 2.0),
                      tinyllm_test::contains("distillation_loss: dlogits must not share memory with the teacher "
                                             "logits"));
    CHECK_THROWS_WITH(cpu::distillation_loss(tensor_view<float, 2>(row.data(), {2, V}, {0, 1}), student, teacher, 2.0),
                      tinyllm_test::contains("distillation_loss: dlogits has shape (2, 5) and strides (0, 1)"));
    CHECK(both == both_before);
    // Right after the teacher's last row but apart from it: fine.
    const tensor_view<float, 2> last(both.data() + 4 * V, {1, V});
    CHECK(cpu::distillation_loss(last, student.narrow(0, 0, 1), teacher.narrow(0, 1, 1), 2.0) > 0.0);
    CHECK(std::vector<float>(both.begin() + 4 * V, both.end()) !=
          std::vector<float>(both_before.begin() + 4 * V, both_before.end()));
}

// ---- linear and matmul ------------------------------------------------------------------

TEST_CASE("linear_backward matches finite differences on (B, T, K) inputs, with and without bias", "[ffn][backward]") {
    const index_t B = 2, T = 3, K = 5, N = 4;
    auto x = normal(extents<3>{B, T, K}, 10);
    auto w = normal(extents<2>{N, K}, 11);
    auto b = normal(extents<1>{N}, 12);
    auto dout = normal(extents<3>{B, T, N}, 13);
    tensor<float, 3> dx({B, T, K});
    tensor<float, 2> dw({N, K});
    tensor<float, 1> db({N});
    cpu::linear_backward(dx, dw, db, dout, x, w);

    // linear is linear in each input, so a central difference has no truncation error
    // and h can be large (0.25): only the float rounding of the outputs the perturbed
    // element touches remains, <= N (or rows) * 2 * 6e-8 * |dout * y| / (2h) ~ 1e-5.
    // Tolerance 5e-5 absolute (observed ~1e-6).
    auto loss = [&] {
        tensor<float, 3> y({B, T, N});
        cpu::linear(y, x, w, b);
        return dot(dout, y);
    };
    const tolerance tol{5e-5, 0, 1e-5};
    TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient(x, loss, 0.25), tol, "linear dx");
    TINYLLM_REQUIRE_CLOSE(dw.values(), numeric_gradient(w, loss, 0.25), tol, "linear dweight");
    TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient(b, loss, 0.25), tol, "linear dbias");

    // No bias: dbias is {} and the other gradients are unchanged (the bias does not
    // enter them). dx empty: dweight alone.
    tensor<float, 3> dx2({B, T, K});
    tensor<float, 2> dw2({N, K});
    cpu::linear_backward(dx2, dw2, {}, dout, x, w);
    CHECK(dx2.values() == dx.values());
    CHECK(dw2.values() == dw.values());
    tensor<float, 2> dw3({N, K});
    cpu::linear_backward({}, dw3, {}, dout, x, w);
    CHECK(dw3.values() == dw.values());
    tensor<float, 3> dx3({B, T, K});
    cpu::linear_backward(dx3, {}, {}, dout, x, w);
    CHECK(dx3.values() == dx.values());
}

TEST_CASE("linear_backward with GPT-2's Conv1D layout: the weight and its gradient transposed views", "[ffn][backward]") {
    const index_t rows = 5, K = 6, N = 3;
    auto x = normal(extents<2>{rows, K}, 20);
    auto w = normal(extents<2>{N, K}, 21);
    auto dout = normal(extents<2>{rows, N}, 22);
    tensor<float, 2> wt({K, N});  // the same weight stored (in_features, out_features)
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k) wt(k, n) = w(n, k);
    tensor<float, 2> dx({rows, K}), dw({N, K}), dx_t({rows, K}), dwt({K, N});
    tensor<float, 1> db({N}), db_t({N});
    cpu::linear_backward(dx, dw, db, dout, x, w);
    cpu::linear_backward(dx_t, dwt.view().transpose(0, 1), db_t, dout, x, wt.view().transpose(0, 1));
    CHECK(dx_t.values() == dx.values());
    CHECK(db_t.values() == db.values());
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k) CHECK(dwt(k, n) == dw(n, k));
}

TEST_CASE("linear_backward accumulates: a weight tied between two uses gets both gradients", "[ffn][backward]") {
    // GPT-2 ties the token embedding to the output projection; here the same (N, K)
    // weight serves two linear layers, y1 = x1 w^T + b and y2 = x2 w^T + b, and
    // L = sum(d1 * y1) + sum(d2 * y2).
    const index_t K = 4, N = 5;
    auto x1 = normal(extents<2>{3, K}, 30);
    auto x2 = normal(extents<3>{2, 2, K}, 31);
    auto w = normal(extents<2>{N, K}, 32);
    auto b = normal(extents<1>{N}, 33);
    auto d1 = normal(extents<2>{3, N}, 34);
    auto d2 = normal(extents<3>{2, 2, N}, 35);
    tensor<float, 2> dw({N, K}, 123.0f);  // overwritten by the first call
    tensor<float, 1> db({N}, 123.0f);
    cpu::linear_backward({}, dw, db, d1, x1, w);
    cpu::linear_backward({}, dw, db, d2, x2, w, /*accumulate=*/true);
    auto loss = [&] {
        tensor<float, 2> y1({3, N});
        tensor<float, 3> y2({2, 2, N});
        cpu::linear(y1, x1, w, b);
        cpu::linear(y2, x2, w, b);
        return dot(d1, y1) + dot(d2, y2);
    };
    const tolerance tol{5e-5, 0, 1e-5};  // as above: linear, h = 0.25
    TINYLLM_REQUIRE_CLOSE(dw.values(), numeric_gradient(w, loss, 0.25), tol, "tied dweight, accumulated");
    TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient(b, loss, 0.25), tol, "tied dbias, accumulated");
}

TEST_CASE("matmul_backward matches finite differences", "[ffn][backward]") {
    const index_t M = 3, K = 4, N = 5;
    auto a = normal(extents<2>{M, K}, 40);
    auto b = normal(extents<2>{K, N}, 41);
    auto dout = normal(extents<2>{M, N}, 42);
    tensor<float, 2> da({M, K}), db({K, N});
    cpu::matmul_backward(da, db, dout, a, b);
    auto loss = [&] {
        tensor<float, 2> y({M, N});
        cpu::matmul(y, a, b);
        return dot(dout, y);
    };
    const tolerance tol{5e-5, 0, 1e-5};  // as above: bilinear, h = 0.25
    TINYLLM_REQUIRE_CLOSE(da.values(), numeric_gradient(a, loss, 0.25), tol, "matmul da");
    TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient(b, loss, 0.25), tol, "matmul db");
}

TEST_CASE("linear_backward rejects mismatched shapes, naming both", "[ffn][backward][errors]") {
    tensor<float, 3> x({2, 3, 4}), dx({2, 3, 4}), dout({2, 3, 5});
    tensor<float, 2> w({5, 4}), dw({5, 4});
    tensor<float, 1> db({5});
    tensor<float, 3> bad_dout({3, 2, 5});
    CHECK_THROWS_WITH(cpu::linear_backward(dx, dw, db, bad_dout, x, w),
                      tinyllm_test::contains("linear_backward: dout has shape (3, 2, 5) but x has shape (2, 3, 4); "
                                             "all dimensions but the last must be equal"));
    tensor<float, 3> narrow_dout({2, 3, 4});
    CHECK_THROWS_WITH(cpu::linear_backward(dx, dw, db, narrow_dout, x, w),
                      tinyllm_test::contains("linear_backward: dout has shape (6, 4) but (rows of x, out_features) = (6, 5)"));
    tensor<float, 3> bad_dx({2, 3, 5});
    CHECK_THROWS_WITH(cpu::linear_backward(bad_dx, dw, db, dout, x, w),
                      tinyllm_test::contains("linear_backward: dx has shape (2, 3, 5) but x has shape (2, 3, 4)"));
    tensor<float, 2> bad_dw({4, 5});
    CHECK_THROWS_WITH(cpu::linear_backward(dx, bad_dw, db, dout, x, w),
                      tinyllm_test::contains("linear_backward: dweight has shape (4, 5) but weight has shape (5, 4)"));
    tensor<float, 1> bad_db({4});
    CHECK_THROWS_WITH(cpu::linear_backward(dx, dw, bad_db, dout, x, w),
                      tinyllm_test::contains("linear_backward: dbias has 4 elements but the layer has 5 out_features"));
    tensor<float, 2> sq({4, 4}), wsq({4, 4});
    CHECK_THROWS_WITH(cpu::linear_backward(sq, {}, {}, sq, sq, wsq),
                      tinyllm_test::contains("dx must not share memory with dout"));
    tensor<float, 2> a({3, 4}), bm({5, 2}), dm({3, 2});
    CHECK_THROWS_WITH(cpu::matmul_backward(a, {}, dm, a, bm), tinyllm_test::contains("a's columns must equal b's rows"));
}

// ---- LayerNorm and RMSNorm ----------------------------------------------------------------

// The norms are smooth but not linear. Richardson differences with h = 2e-2
// leave a truncation error of O(h^4) (~1e-6) and a rounding error of the D
// float outputs a perturbation touches of ~ D * 6e-8 * 75 ~ 4e-5 (the 75 is
// (4 / h + 1 / (2h)) / 3 for h = 2e-2). Observed over 25 seeds: at most 6e-5.
// Tolerance: 3e-4 absolute + 1e-3 relative per element (a dropped term of the
// formula is O(0.1 .. 1) at D = 8), 1e-3 relative L2.
namespace {
const tolerance norm_tol{3e-4, 1e-3, 1e-3};
constexpr double norm_h = 2e-2;
}  // namespace

TEST_CASE("layer_norm_backward matches finite differences, with and without affine parameters", "[norm][backward]") {
    const index_t B = 2, T = 3, D = 8;
    const float eps = 1e-5f;
    auto x = normal(extents<3>{B, T, D}, 50);
    auto w = normal(extents<1>{D}, 51);
    auto b = normal(extents<1>{D}, 52);
    auto dout = normal(extents<3>{B, T, D}, 53);
    tensor<float, 3> dx({B, T, D});
    tensor<float, 1> dw({D}), db({D});
    cpu::layer_norm_backward(dx, dw, db, dout, x, w, eps);
    auto loss = [&] {
        tensor<float, 3> y({B, T, D});
        cpu::layer_norm(y, x, w, b, eps);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(x, loss, norm_h), norm_tol, "layer_norm dx");
    TINYLLM_REQUIRE_CLOSE(dw.values(), numeric_gradient_richardson(w, loss, norm_h), norm_tol, "layer_norm dweight");
    TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient_richardson(b, loss, norm_h), norm_tol, "layer_norm dbias");

    // accumulate adds: a second call doubles the parameter gradients.
    auto dw2 = dw;
    auto db2 = db;
    cpu::layer_norm_backward(dx, dw2, db2, dout, x, w, eps, /*accumulate=*/true);
    for (index_t j = 0; j < D; ++j) {
        CHECK(dw2(j) == tinyllm_test::Approx(2.0 * dw(j)).epsilon(1e-6));
        CHECK(db2(j) == tinyllm_test::Approx(2.0 * db(j)).epsilon(1e-6));
    }

    // No affine parameters (weight and bias empty).
    tensor<float, 3> dx_plain({B, T, D});
    cpu::layer_norm_backward(dx_plain, {}, {}, dout, x, {}, eps);
    auto loss_plain = [&] {
        tensor<float, 3> y({B, T, D});
        cpu::layer_norm(y, x, eps);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(dx_plain.values(), numeric_gradient_richardson(x, loss_plain, norm_h), norm_tol, "layer_norm dx, no affine");

    // In place: dx is dout's memory.
    auto in_place = dout;
    cpu::layer_norm_backward(in_place, {}, {}, in_place, x, w, eps);
    CHECK(in_place.values() == dx.values());
}

TEST_CASE("rms_norm_backward matches finite differences, with and without a weight", "[norm][backward]") {
    const index_t B = 3, T = 2, D = 8;
    const float eps = 1e-6f;
    auto x = normal(extents<3>{B, T, D}, 60);
    auto w = normal(extents<1>{D}, 61);
    auto dout = normal(extents<3>{B, T, D}, 62);
    tensor<float, 3> dx({B, T, D});
    tensor<float, 1> dw({D});
    cpu::rms_norm_backward(dx, dw, dout, x, w, eps);
    auto loss = [&] {
        tensor<float, 3> y({B, T, D});
        cpu::rms_norm(y, x, w, eps);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(x, loss, norm_h), norm_tol, "rms_norm dx");
    TINYLLM_REQUIRE_CLOSE(dw.values(), numeric_gradient_richardson(w, loss, norm_h), norm_tol, "rms_norm dweight");

    tensor<float, 3> dx_plain({B, T, D});
    cpu::rms_norm_backward(dx_plain, {}, dout, x, {}, eps);
    auto loss_plain = [&] {
        tensor<float, 3> y({B, T, D});
        cpu::rms_norm(y, x, eps);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(dx_plain.values(), numeric_gradient_richardson(x, loss_plain, norm_h), norm_tol, "rms_norm dx, no weight");

    // A large eps matters: eps = 1 halves nothing but enters rstd (checked through the differences).
    tensor<float, 3> dx_eps({B, T, D});
    cpu::rms_norm_backward(dx_eps, {}, dout, x, w, 1.0f);
    auto loss_eps = [&] {
        tensor<float, 3> y({B, T, D});
        cpu::rms_norm(y, x, w, 1.0f);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(dx_eps.values(), numeric_gradient_richardson(x, loss_eps, norm_h), norm_tol, "rms_norm dx, eps = 1");
}

TEST_CASE("fused residual add + norm backward: the norm's gradient plus the stream's, for x and residual", "[norm][backward]") {
    // s = x + residual (residual_out), out = norm(s); L = sum(dout * out) + sum(dstream * s).
    const index_t B = 2, T = 2, D = 8;
    const float eps = 1e-5f;
    auto x = normal(extents<3>{B, T, D}, 70);
    auto residual = normal(extents<3>{B, T, D}, 71);
    auto w = normal(extents<1>{D}, 72);
    auto b = normal(extents<1>{D}, 73);
    auto dout = normal(extents<3>{B, T, D}, 74);
    auto dstream = normal(extents<3>{B, T, D}, 75);
    tensor<float, 3> s({B, T, D}), out({B, T, D});

    for (bool layer : {false, true}) {
        INFO((layer ? "layer_norm" : "rms_norm"));
        auto loss = [&] {
            if (layer)
                cpu::residual_add_layer_norm(out, s, x, residual, w, b, eps);
            else
                cpu::residual_add_rms_norm(out, s, x, residual, w, eps);
            return dot(dout, out) + dot(dstream, s);
        };
        loss();  // s as the forward stores it
        tensor<float, 3> dx({B, T, D});
        tensor<float, 1> dw({D}), db({D});
        if (layer)
            cpu::residual_add_layer_norm_backward(dx, dw, db, dout, dstream, s, w, eps);
        else
            cpu::residual_add_rms_norm_backward(dx, dw, dout, dstream, s, w, eps);
        TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(x, loss, norm_h), norm_tol, "fused dx");
        TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(residual, loss, norm_h), norm_tol, "fused dresidual");
        TINYLLM_REQUIRE_CLOSE(dw.values(), numeric_gradient_richardson(w, loss, norm_h), norm_tol, "fused dweight");
        if (layer) TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient_richardson(b, loss, norm_h), norm_tol, "fused dbias");

        // In place on the stream's gradient (dx is dresidual_out's memory): the same.
        auto stream = dstream;
        tensor<float, 1> dw2({D}), db2({D});
        if (layer)
            cpu::residual_add_layer_norm_backward(stream, dw2, db2, dout, stream, s, w, eps);
        else
            cpu::residual_add_rms_norm_backward(stream, dw2, dout, stream, s, w, eps);
        CHECK(stream.values() == dx.values());

        // No gradient from above (empty dresidual_out): the plain norm's backward on s.
        tensor<float, 3> fused({B, T, D}), plain({B, T, D});
        if (layer) {
            cpu::residual_add_layer_norm_backward(fused, {}, {}, dout, {}, s, w, eps);
            cpu::layer_norm_backward(plain, {}, {}, dout, s, w, eps);
        } else {
            cpu::residual_add_rms_norm_backward(fused, {}, dout, {}, s, w, eps);
            cpu::rms_norm_backward(plain, {}, dout, s, w, eps);
        }
        CHECK(fused.values() == plain.values());
    }
}

TEST_CASE("norm backward functions reject bad arguments, naming them", "[norm][backward][errors]") {
    tensor<float, 3> x({2, 3, 4}), dx({2, 3, 4}), dout({2, 3, 4});
    tensor<float, 1> w({4}), dw({4}), short_dw({3});
    tensor<float, 3> bad({3, 2, 4});
    CHECK_THROWS_WITH(cpu::layer_norm_backward(dx, dw, {}, bad, x, w, 1e-5f),
                      tinyllm_test::contains("layer_norm_backward: dout has shape (3, 2, 4) but x has shape (2, 3, 4)"));
    CHECK_THROWS_WITH(cpu::rms_norm_backward(bad, dw, dout, x, w, 1e-5f),
                      tinyllm_test::contains("rms_norm_backward: dx has shape (3, 2, 4) but x has shape (2, 3, 4)"));
    CHECK_THROWS_WITH(cpu::rms_norm_backward(dx, short_dw, dout, x, w, 1e-5f),
                      tinyllm_test::contains("rms_norm_backward: dweight has 3 elements but weight has 4"));
    CHECK_THROWS_WITH(cpu::rms_norm_backward(dx, dw, dout, x, {}, 1e-5f),
                      tinyllm_test::contains("dweight has 4 elements but weight has 0"));
    CHECK_THROWS_WITH(cpu::layer_norm_backward(dx, dw, short_dw, dout, x, w, 1e-5f),
                      tinyllm_test::contains("layer_norm_backward: dbias has 3 elements but x has D = 4"));
    CHECK_THROWS_WITH(cpu::layer_norm_backward(dx, dw, {}, dout, x, w, 0.0f),
                      tinyllm_test::contains("eps = 0 must be positive and finite"));
    CHECK_THROWS_WITH(cpu::residual_add_rms_norm_backward(dx, dw, dout, bad, x, w, 1e-5f),
                      tinyllm_test::contains("residual_add_rms_norm_backward: dresidual_out has shape (3, 2, 4) but "
                                             "residual_out has shape (2, 3, 4)"));
}

TEST_CASE("norm backward functions refuse a dx or parameter gradient over memory they cannot share",
          "[norm][backward][errors]") {
    const index_t rows = 6, D = 4;
    const float eps = 1e-5f;
    auto buf = normal(extents<2>{rows + 1, D}, 90);  // dout, and dx one row past it
    auto x = normal(extents<2>{rows, D}, 91);
    auto w = normal(extents<1>{D}, 92);
    tensor<float, 2> dx({rows, D});
    tensor<float, 1> dw({D}), db({D});
    const tensor_view<const float, 2> dout(buf.data(), {rows, D});
    const tensor_view<float, 2> past_dout(buf.data() + D, {rows, D});
    CHECK_THROWS_WITH(cpu::layer_norm_backward(past_dout, dw, db, dout, x, w, eps),
                      tinyllm_test::contains("layer_norm_backward: dx must be exactly dout (in place) or not share "
                                             "memory with it"));
    auto xbuf = normal(extents<2>{rows + 1, D}, 93);
    CHECK_THROWS_WITH(cpu::rms_norm_backward(tensor_view<float, 2>(xbuf.data() + D, {rows, D}), dw, dout,
                                             tensor_view<const float, 2>(xbuf.data(), {rows, D}), w, eps),
                      tinyllm_test::contains("rms_norm_backward: dx must be exactly x (in place)"));
    CHECK_THROWS_WITH(
        cpu::residual_add_rms_norm_backward(past_dout, dw, x, dout, x, w, eps),
        tinyllm_test::contains("residual_add_rms_norm_backward: dx must be exactly dresidual_out (in place)"));
    tensor<float, 1> one_row({D});
    CHECK_THROWS_WITH(
        cpu::rms_norm_backward(tensor_view<float, 2>(one_row.data(), {rows, D}, {0, 1}), dw, dout, x, w, eps),
        tinyllm_test::contains("rms_norm_backward: dx has shape (6, 4) and strides (0, 1), so two of its "
                               "elements share an address"));
    CHECK_THROWS_WITH(cpu::rms_norm_backward(dx, tensor_view<float, 1>(buf.data(), {D}), dout, x, w, eps),
                      tinyllm_test::contains("rms_norm_backward: dweight must not share memory with dout"));
    CHECK_THROWS_WITH(cpu::rms_norm_backward(dx, tensor_view<float, 1>(dx.data(), {D}), dout, x, w, eps),
                      tinyllm_test::contains("rms_norm_backward: dweight must not share memory with dx"));
    CHECK_THROWS_WITH(cpu::layer_norm_backward(dx, dw, dw, dout, x, w, eps),
                      tinyllm_test::contains("layer_norm_backward: dbias must not share memory with dweight"));
    CHECK_THROWS_WITH(cpu::layer_norm_backward(dx, dw, tensor_view<float, 1>(w.data(), {D}), dout, x, w, eps),
                      tinyllm_test::contains("layer_norm_backward: dbias must not share memory with weight"));
    CHECK_THROWS_WITH(cpu::layer_norm_backward(dx, dw, tensor_view<float, 1>(db.data(), {D}, {0}), dout, x, w, eps),
                      tinyllm_test::contains("layer_norm_backward: dbias has shape (4) and strides (0)"));

    // dx exactly dout or exactly x (in place) gives the out-of-place result.
    cpu::layer_norm_backward(dx, dw, db, dout, x, w, eps);
    tensor<float, 2> g({rows, D});
    std::copy(buf.data(), buf.data() + rows * D, g.data());
    tensor<float, 1> dw2({D}), db2({D});
    CHECK_NOTHROW(cpu::layer_norm_backward(g, dw2, db2, g, x, w, eps));
    CHECK(g.values() == dx.values());
    CHECK(dw2.values() == dw.values());
    auto x_io = x;
    CHECK_NOTHROW(cpu::layer_norm_backward(x_io, dw2, db2, dout, x_io, w, eps));
    CHECK(x_io.values() == dx.values());
}

// ---- activations, SwiGLU, bias + activation, multiply -----------------------------------

// Element-wise: a perturbation touches one output, so the rounding error is
// ~6e-8 * |dout * y| * 75 (Richardson, h = 2e-2, as for the norms) ~ 1e-5, and
// the truncation error O(h^4) ~ 1e-6. Inputs are kept at least 0.1 away from 0,
// where ReLU has its corner. Observed over 30 seeds: at most 1.03e-4 (SwiGLU's
// dgate, whose outputs reach ~10 and so round ~10x coarser). Tolerance: 3e-4
// absolute + 1e-4 relative per element, 1e-3 relative L2.
namespace {
const tolerance elementwise_tol{3e-4, 1e-4, 1e-3};
constexpr double elementwise_h = 2e-2;

template <std::size_t R>
tensor<float, R> away_from_zero(const extents<R>& shape, std::uint64_t which) {
    auto t = normal(shape, which, 2.0f);
    for (float& v : t.values())
        if (std::fabs(v) < 0.1f) v = v < 0 ? -0.5f : 0.5f;
    return t;
}
}  // namespace

TEST_CASE("activation derivatives at known values and in the far tails", "[activation][backward]") {
    // Phi(1) + phi(1) = 0.8413447460685429 + 0.2419707245191434.
    CHECK(tinyllm::gelu_erf_derivative(1.0) == tinyllm_test::Approx(1.0833154705876863).epsilon(1e-14));
    CHECK(tinyllm::gelu_erf_derivative(0.0) == 0.5);
    CHECK(tinyllm::gelu_tanh_derivative(0.0) == 0.5);
    CHECK(tinyllm::silu_derivative(0.0) == 0.5);
    CHECK(tinyllm::relu_derivative(0.0) == 0.0);
    CHECK(tinyllm::relu_derivative(1e-30) == 1.0);
    CHECK(tinyllm::activate_derivative(tinyllm::activation::identity, -3.0) == 1.0);
    // gelu_tanh' at 1 from GPT-2's definition, differentiated by hand:
    // 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2), u = sqrt(2/pi) 1.044715.
    const double c = std::sqrt(2.0 / 3.14159265358979323846), t = std::tanh(c * 1.044715);
    CHECK(tinyllm::gelu_tanh_derivative(1.0) ==
          tinyllm_test::Approx(0.5 * (1 + t) + 0.5 * (1 - t * t) * c * (1 + 3 * 0.044715)).epsilon(1e-14));
    for (double x : {-3.0e38, -1e4, -50.0, 50.0, 1e4, 3.0e38}) {
        INFO("x = " << x);
        const double want = x > 0 ? 1.0 : 0.0;
        CHECK(tinyllm::gelu_erf_derivative(x) == tinyllm_test::Approx(want).margin(1e-12));
        CHECK(tinyllm::gelu_tanh_derivative(x) == tinyllm_test::Approx(want).margin(1e-12));
        CHECK(tinyllm::silu_derivative(x) == tinyllm_test::Approx(want).margin(1e-12));
    }
}

TEST_CASE("activate_backward matches finite differences for every activation", "[activation][backward]") {
    using tinyllm::activation;
    const index_t B = 2, T = 3, C = 8;
    auto x = away_from_zero(extents<3>{B, T, C}, 80);
    auto dout = normal(extents<3>{B, T, C}, 81);
    for (activation kind : {activation::identity, activation::relu, activation::gelu_erf, activation::gelu_tanh,
                            activation::silu}) {
        INFO("activation " << tinyllm::activation_name(kind));
        tensor<float, 3> dx({B, T, C});
        cpu::activate_backward(dx, dout, x, kind);
        auto loss = [&] {
            tensor<float, 3> y({B, T, C});
            cpu::activate(y, x, kind);
            return dot(dout, y);
        };
        TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(x, loss, elementwise_h), elementwise_tol,
                              std::string("activate_backward ") + std::string(tinyllm::activation_name(kind)));
        auto in_place = dout;  // dx is dout's memory
        cpu::activate_backward(in_place, in_place, x, kind);
        CHECK(in_place.values() == dx.values());
    }
}

TEST_CASE("bias_activate_backward: dx and the bias gradient summed over rows", "[activation][backward]") {
    using tinyllm::activation;
    const index_t rows = 5, C = 6;
    auto x = normal(extents<2>{rows, C}, 90);
    auto bias = normal(extents<1>{C}, 91);
    auto dout = normal(extents<2>{rows, C}, 92);
    for (activation kind : {activation::gelu_tanh, activation::gelu_erf, activation::silu}) {
        INFO("activation " << tinyllm::activation_name(kind));
        tensor<float, 2> dx({rows, C});
        tensor<float, 1> db({C}, 99.0f);
        cpu::bias_activate_backward(dx, db, dout, x, bias, kind);
        auto loss = [&] {
            tensor<float, 2> y({rows, C});
            cpu::bias_activate(y, x, bias, kind);
            return dot(dout, y);
        };
        TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient_richardson(x, loss, elementwise_h), elementwise_tol,
                              "bias_activate dx");
        // The bias feeds `rows` outputs each: rounding error up to rows times larger.
        TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient_richardson(bias, loss, elementwise_h),
                              tolerance{5e-4, 1e-4, 1e-4}, "bias_activate dbias");
        auto db2 = db;
        cpu::bias_activate_backward(dx, db2, dout, x, bias, kind, /*accumulate=*/true);
        for (index_t c = 0; c < C; ++c) CHECK(db2(c) == tinyllm_test::Approx(2.0 * db(c)).epsilon(1e-6));
    }
}

TEST_CASE("swiglu_backward and multiply_backward match finite differences", "[activation][backward]") {
    const index_t B = 2, T = 2, H = 6;
    auto gate = normal(extents<3>{B, T, H}, 100, 2.0f);
    auto up = normal(extents<3>{B, T, H}, 101);
    auto dout = normal(extents<3>{B, T, H}, 102);
    tensor<float, 3> dgate({B, T, H}), dup({B, T, H});
    cpu::swiglu_backward(dgate, dup, dout, gate, up);
    auto loss = [&] {
        tensor<float, 3> y({B, T, H});
        cpu::swiglu(y, gate, up);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(dgate.values(), numeric_gradient_richardson(gate, loss, elementwise_h), elementwise_tol,
                          "swiglu dgate");
    TINYLLM_REQUIRE_CLOSE(dup.values(), numeric_gradient_richardson(up, loss, elementwise_h), elementwise_tol,
                          "swiglu dup");
    // In place: the gradients overwrite gate and up.
    auto g2 = gate;
    auto u2 = up;
    cpu::swiglu_backward(g2, u2, dout, g2, u2);
    CHECK(g2.values() == dgate.values());
    CHECK(u2.values() == dup.values());

    tensor<float, 3> da({B, T, H}), db({B, T, H});
    cpu::multiply_backward(da, db, dout, gate, up);
    auto loss_mul = [&] {
        tensor<float, 3> y({B, T, H});
        cpu::multiply(y, gate, up);
        return dot(dout, y);
    };
    TINYLLM_REQUIRE_CLOSE(da.values(), numeric_gradient(gate, loss_mul, 0.25), elementwise_tol, "multiply da");
    TINYLLM_REQUIRE_CLOSE(db.values(), numeric_gradient(up, loss_mul, 0.25), elementwise_tol, "multiply db");
}

TEST_CASE("activation backward functions reject mismatched shapes, naming both", "[activation][backward][errors]") {
    using tinyllm::activation;
    tensor<float, 3> x({2, 3, 4}), dx({2, 3, 4}), dout({2, 3, 4}), bad({3, 2, 4});
    tensor<float, 1> bias({4}), short_bias({3});
    CHECK_THROWS_WITH(cpu::activate_backward(dx, bad, x, activation::silu),
                      tinyllm_test::contains("activate_backward: dout has shape (3, 2, 4) but x has shape (2, 3, 4)"));
    CHECK_THROWS_WITH(cpu::activate_backward(bad, dout, x, activation::silu),
                      tinyllm_test::contains("activate_backward: dx has shape (3, 2, 4) but x has shape (2, 3, 4)"));
    CHECK_THROWS_WITH(cpu::bias_activate_backward(dx, short_bias, dout, x, bias, activation::relu),
                      tinyllm_test::contains("bias_activate_backward: dbias has 3 elements but the rows have 4 columns"));
    CHECK_THROWS_WITH(cpu::bias_activate_backward(dx, {}, dout, x, short_bias, activation::relu),
                      tinyllm_test::contains("bias_activate_backward: bias has 3 elements"));
    CHECK_THROWS_WITH(cpu::swiglu_backward(dx, dx, dout, x, bad),
                      tinyllm_test::contains("swiglu_backward: dout has shape (2, 3, 4) but up has shape (3, 2, 4)"));
    CHECK_THROWS_WITH(cpu::swiglu_backward(bad, dx, dout, x, x),
                      tinyllm_test::contains("swiglu_backward: dgate has shape (3, 2, 4) but gate has shape (2, 3, 4)"));
    CHECK_THROWS_WITH(cpu::multiply_backward(dx, bad, dout, x, x),
                      tinyllm_test::contains("multiply_backward: db has shape (3, 2, 4) but b has shape (2, 3, 4)"));
}

// ---- RoPE -----------------------------------------------------------------------------

TEST_CASE("apply_rope_backward is the forward's transpose, for every pairing, scaling and position form", "[rope][backward]") {
    using tinyllm::rope_config;
    using tinyllm::rope_pairing;
    using tinyllm::rope_scaling;
    const index_t B = 2, T = 3, H = 2, D = 8;
    auto x = normal(extents<4>{B, T, H, D}, 110);
    auto dout = normal(extents<4>{B, T, H, D}, 111);
    tensor<std::int64_t, 2> positions({B, T});
    positions.values() = {0, 1, 2, 7, 3, 100};

    std::vector<rope_config> configs(6);
    configs[1].pairing = rope_pairing::interleaved;
    configs[2].rotary_dim = 4;  // half the features rotate, the rest pass through
    configs[3] = {.rotary_dim = 6, .theta = 500000.0, .pairing = rope_pairing::interleaved,
                  .scaling = rope_scaling::llama3, .factor = 8.0, .original_max_position_embeddings = 16};
    configs[4] = {.scaling = rope_scaling::ntk, .factor = 4.0};
    configs[5] = {.scaling = rope_scaling::linear, .factor = 2.0};
    for (std::size_t c = 0; c < configs.size(); ++c) {
        const rope_config& cfg = configs[c];
        for (int form = 0; form < 3; ++form) {  // positions 0..T-1, offset 5 + t, explicit
            INFO("config " << c << ", position form " << form);
            auto forward = [&](tensor<float, 4>& t) {
                if (form == 0) cpu::apply_rope(t, cfg);
                if (form == 1) cpu::apply_rope(t, cfg, 5);
                if (form == 2) cpu::apply_rope(t, positions, cfg);
            };
            auto dx = dout;
            if (form == 0) cpu::apply_rope_backward(dx, cfg);
            if (form == 1) cpu::apply_rope_backward(dx, cfg, 5);
            if (form == 2) cpu::apply_rope_backward(dx, positions, cfg);
            // RoPE is linear: no truncation error, h = 0.25; each perturbation moves two
            // outputs, so the rounding error is ~2 * 6e-8 * |dout * y| / 0.5 ~ 1e-6.
            // Tolerance 1e-5 absolute.
            auto loss = [&] {
                auto y = x;
                forward(y);
                return dot(dout, y);
            };
            TINYLLM_REQUIRE_CLOSE(dx.values(), numeric_gradient(x, loss, 0.25), tolerance{1e-5, 0, 1e-5},
                                  "rope dx vs finite differences");
            // Rotations are orthogonal: backward(forward(x)) = x, up to float rounding.
            auto round_trip = x;
            forward(round_trip);
            if (form == 0) cpu::apply_rope_backward(round_trip, cfg);
            if (form == 1) cpu::apply_rope_backward(round_trip, cfg, 5);
            if (form == 2) cpu::apply_rope_backward(round_trip, positions, cfg);
            TINYLLM_REQUIRE_CLOSE(round_trip.values(), x.values(), tolerance{1e-6, 1e-6, 1e-6}, "rope round trip");
        }
    }
    tensor<std::int64_t, 2> wrong({T, B});
    CHECK_THROWS_WITH(cpu::apply_rope_backward(x, wrong, rope_config{}),
                      tinyllm_test::contains("apply_rope_backward: positions has shape (3, 2) but dx (2, 3, 2, 8) needs "
                                             "(B, T) = (2, 3)"));
    CHECK_THROWS_WITH(cpu::apply_rope_backward(x, rope_config{}, -1),
                      tinyllm_test::contains("apply_rope_backward: position_offset = -1 must be >= 0"));
    CHECK_THROWS_WITH(cpu::apply_rope_backward(x, rope_config{.rotary_dim = 3}),
                      tinyllm_test::contains("rotary_dim = 3 must be even"));
}
