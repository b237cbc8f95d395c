// Tests for the layers between blocks: activations (tinyllm/activation.hpp),
// LayerNorm / RMSNorm and the fused residual add (tinyllm/norm.hpp), and the
// MLPs (tinyllm/ffn.hpp). References are computed here in double, written
// independently of the library code, on fresh random inputs.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/norm.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

using tinyllm::activation;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor_view;
using tinyllm_test::Approx;
using tinyllm_test::random_floats;
using tinyllm_test::tolerance;

namespace cpu = tinyllm::cpu;

namespace {

// ---- float64 definitions, straight from the papers ----------------------------
double gelu_erf_64(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }  // = 0.5 x (1 + erf(x/sqrt2))
double gelu_tanh_64(double x) {
    const double pi = 3.14159265358979323846;
    const double u = std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x);
    // GPT-2's definition. Below x = -5 even double loses digits in 1 + tanh(u)
    // (tanh(u) -> -1), so there use the exact identity 1 + tanh(u) = 2 / (1 + exp(-2u)).
    return x >= -5.0 ? 0.5 * x * (1.0 + std::tanh(u)) : x / (1.0 + std::exp(-2.0 * u));
}
double silu_64(double x) { return x / (1.0 + std::exp(-x)); }

tensor_view<float, 2> view2(std::vector<float>& v, index_t rows, index_t cols) { return {v.data(), {rows, cols}}; }
tensor_view<const float, 2> cview2(const std::vector<float>& v, index_t rows, index_t cols) {
    return {v.data(), {rows, cols}};
}
tensor_view<const float, 1> cview1(const std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }

// LayerNorm / RMSNorm of a (rows, D) row-major buffer in double. Empty w/b: none.
std::vector<double> layer_norm_64(const std::vector<float>& x, index_t rows, index_t D, const std::vector<float>& w,
                                  const std::vector<float>& b, double eps) {
    std::vector<double> y(x.size());
    for (index_t r = 0; r < rows; ++r) {
        const float* row = x.data() + r * D;
        double mean = 0, var = 0;
        for (index_t j = 0; j < D; ++j) mean += row[j];
        mean /= static_cast<double>(D);
        for (index_t j = 0; j < D; ++j) var += (row[j] - mean) * (row[j] - mean);
        var /= static_cast<double>(D);
        for (index_t j = 0; j < D; ++j) {
            double v = (row[j] - mean) / std::sqrt(var + eps);
            if (!w.empty()) v *= w[static_cast<std::size_t>(j)];
            if (!b.empty()) v += b[static_cast<std::size_t>(j)];
            y[static_cast<std::size_t>(r * D + j)] = v;
        }
    }
    return y;
}

std::vector<double> rms_norm_64(const std::vector<float>& x, index_t rows, index_t D, const std::vector<float>& w,
                                double eps) {
    std::vector<double> y(x.size());
    for (index_t r = 0; r < rows; ++r) {
        const float* row = x.data() + r * D;
        double ms = 0;
        for (index_t j = 0; j < D; ++j) ms += static_cast<double>(row[j]) * row[j];
        ms /= static_cast<double>(D);
        for (index_t j = 0; j < D; ++j)
            y[static_cast<std::size_t>(r * D + j)] =
                row[j] / std::sqrt(ms + eps) * (w.empty() ? 1.0 : w[static_cast<std::size_t>(j)]);
    }
    return y;
}

// y = x W^T + b in double. x: (rows, K); W: (N, K) row-major; b: (N) or empty.
std::vector<double> linear_64(const std::vector<double>& x, index_t rows, index_t K, const std::vector<float>& W,
                              index_t N, const std::vector<float>& b) {
    std::vector<double> y(static_cast<std::size_t>(rows * N));
    for (index_t i = 0; i < rows; ++i)
        for (index_t n = 0; n < N; ++n) {
            double acc = b.empty() ? 0.0 : b[static_cast<std::size_t>(n)];
            for (index_t k = 0; k < K; ++k)
                acc += x[static_cast<std::size_t>(i * K + k)] * W[static_cast<std::size_t>(n * K + k)];
            y[static_cast<std::size_t>(i * N + n)] = acc;
        }
    return y;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

// ---- activations -------------------------------------------------------------------

TEST_CASE("GELU, SiLU and ReLU at published values", "[activation]") {
    // GELU(x) = x Phi(x): Phi(1) = 0.841344746..., Phi(-1) = 0.158655254...
    CHECK(tinyllm::gelu_erf(1.0f) == Approx(0.8413447460685429).epsilon(1e-6));
    CHECK(tinyllm::gelu_erf(-1.0f) == Approx(-0.15865525393145707).epsilon(1e-6));
    CHECK(tinyllm::gelu_erf(0.0f) == 0.0f);
    // GPT-2's gelu_new at 1: 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.84119199...
    CHECK(tinyllm::gelu_tanh(1.0f) == Approx(0.8411919906082768).epsilon(1e-6));
    CHECK(tinyllm::gelu_tanh(-1.0f) == Approx(-0.15880800939172324).epsilon(1e-6));
    CHECK(tinyllm::gelu_tanh(0.0f) == 0.0f);
    // silu(1) = sigmoid(1) = 0.7310585786...
    CHECK(tinyllm::silu(1.0f) == Approx(0.7310585786300049).epsilon(1e-6));
    CHECK(tinyllm::silu(-1.0f) == Approx(-0.2689414213699951).epsilon(1e-6));
    CHECK(tinyllm::sigmoid(0.0f) == 0.5f);
    CHECK(tinyllm::relu(-2.5f) == 0.0f);
    CHECK(tinyllm::relu(2.5f) == 2.5f);
    CHECK(std::isnan(tinyllm::relu(std::numeric_limits<float>::quiet_NaN())));
    // Far tails: no NaN, the right limits.
    CHECK(tinyllm::gelu_tanh(-100.0f) == 0.0f);
    CHECK(tinyllm::gelu_tanh(100.0f) == 100.0f);
    CHECK(tinyllm::gelu_erf(-100.0f) == 0.0f);
    CHECK(tinyllm::gelu_erf(100.0f) == 100.0f);
    CHECK(tinyllm::silu(-200.0f) == 0.0f);
    CHECK(tinyllm::silu(200.0f) == 200.0f);
    CHECK(tinyllm::activate(activation::identity, 3.5f) == 3.5f);
    CHECK(tinyllm::activation_name(activation::gelu_tanh) == "gelu_tanh");
}

TEST_CASE("both GELU forms and SiLU match their float64 definitions", "[activation]") {
    // A dense grid over [-8, 8] plus fresh random points; relative accuracy
    // holds in the negative tail too (no cancellation in the float formulas).
    std::vector<float> xs = random_floats(20000, 1, -8.0f, 8.0f);
    for (int i = -8000; i <= 8000; ++i) xs.push_back(static_cast<float>(i) / 1000.0f);
    std::vector<float> got_erf, got_tanh, got_silu;
    std::vector<double> ref_erf, ref_tanh, ref_silu;
    for (float x : xs) {
        got_erf.push_back(tinyllm::gelu_erf(x));
        got_tanh.push_back(tinyllm::gelu_tanh(x));
        got_silu.push_back(tinyllm::silu(x));
        ref_erf.push_back(gelu_erf_64(x));
        ref_tanh.push_back(gelu_tanh_64(x));
        ref_silu.push_back(silu_64(x));
    }
    // (gelu_erf's tail is ill-conditioned: erfc(z) changes by 2 z^2 times the
    // relative error of z = x/sqrt2, itself rounded; so 1e-5 relative at x = -8.)
    TINYLLM_REQUIRE_CLOSE(got_erf, ref_erf, tolerance{1e-30, 1e-5, 1e-6}, "gelu_erf vs float64");
    // (gelu_tanh's tail too: exp(-2u) with u ~ x^3 amplifies the rounding of u.)
    TINYLLM_REQUIRE_CLOSE(got_tanh, ref_tanh, tolerance{1e-30, 2e-5, 1e-6}, "gelu_tanh vs float64");
    TINYLLM_REQUIRE_CLOSE(got_silu, ref_silu, tolerance{1e-30, 2e-6, 1e-6}, "silu vs float64");

    // The two GELU forms are different functions: close (GPT-2's tanh form is a
    // fit) but not equal, so using the wrong one for a checkpoint is visible.
    double max_diff = 0;
    for (std::size_t i = 0; i < xs.size(); ++i) max_diff = std::max(max_diff, std::fabs(ref_erf[i] - ref_tanh[i]));
    CHECK(max_diff > 1e-4);
    CHECK(max_diff < 1e-3);
}

TEST_CASE("element-wise tensor ops: activate, bias_activate, swiglu, add, multiply", "[activation]") {
    const index_t rows = 5, cols = 13;
    auto x = random_floats(rows * cols, 2, -4, 4), g = random_floats(rows * cols, 3, -4, 4);
    auto bias = random_floats(cols, 4);
    std::vector<float> out(x.size());
    for (activation kind : {activation::identity, activation::relu, activation::gelu_erf, activation::gelu_tanh,
                            activation::silu}) {
        cpu::activate(view2(out, rows, cols), cview2(x, rows, cols), kind);
        for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(out[i] == tinyllm::activate(kind, x[i]));
        cpu::bias_activate(view2(out, rows, cols), cview2(x, rows, cols), cview1(bias), kind);
        for (index_t r = 0; r < rows; ++r)
            for (index_t c = 0; c < cols; ++c) {
                const auto i = static_cast<std::size_t>(r * cols + c);
                REQUIRE(out[i] == tinyllm::activate(kind, x[i] + bias[static_cast<std::size_t>(c)]));
            }
    }
    cpu::swiglu(view2(out, rows, cols), cview2(g, rows, cols), cview2(x, rows, cols));
    std::vector<double> want;
    for (std::size_t i = 0; i < x.size(); ++i) want.push_back(silu_64(g[i]) * x[i]);
    TINYLLM_REQUIRE_CLOSE(out, want, tolerance{1e-6, 4e-6, 1e-6}, "swiglu vs float64");

    // In place: out is the gate.
    auto g2 = g;
    cpu::swiglu(view2(g2, rows, cols), cview2(g2, rows, cols), cview2(x, rows, cols));
    CHECK(g2 == out);

    cpu::add(view2(out, rows, cols), cview2(x, rows, cols), cview2(g, rows, cols));
    for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(out[i] == x[i] + g[i]);
    cpu::multiply(view2(out, rows, cols), cview2(x, rows, cols), cview2(g, rows, cols));
    for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(out[i] == x[i] * g[i]);

    std::vector<float> small(4);
    CHECK_THROWS_WITH(cpu::swiglu(view2(small, 2, 2), cview2(g, rows, cols), cview2(x, rows, cols)),
                      tinyllm_test::contains("swiglu: out has shape (2, 2) but gate has shape (5, 13)"));
    CHECK_THROWS_WITH(cpu::bias_activate(view2(out, rows, cols), cview2(x, rows, cols), cview1(small), activation::relu),
                      tinyllm_test::contains("bias has 4 elements"));
    CHECK_THROWS_AS(cpu::add(view2(out, rows, cols), cview2(x, rows, cols), cview2(x, cols, rows)), tinyllm::error);
}

// ---- norms -----------------------------------------------------------------------------

TEST_CASE("LayerNorm and RMSNorm of a hand-computed row", "[norm]") {
    std::vector<float> x = {1, 2, 3, 4}, out(4);
    cpu::layer_norm(view2(out, 1, 4), cview2(x, 1, 4), 1e-5f);
    // mean 2.5, var 1.25: (x - 2.5) / sqrt(1.25 + 1e-5)
    CHECK(out[0] == Approx(-1.3416354199689269).epsilon(1e-6));
    CHECK(out[1] == Approx(-0.447211806656309).epsilon(1e-6));
    CHECK(out[2] == Approx(0.447211806656309).epsilon(1e-6));
    CHECK(out[3] == Approx(1.3416354199689269).epsilon(1e-6));
    // mean of squares 7.5: x / sqrt(7.5 + 1e-5)
    cpu::rms_norm(view2(out, 1, 4), cview2(x, 1, 4), 1e-5f);
    CHECK(out[0] == Approx(0.3651481282381064).epsilon(1e-6));
    CHECK(out[3] == Approx(1.4605925129524255).epsilon(1e-6));
    // Affine: weight 2, bias -1 on every feature.
    std::vector<float> w(4, 2.0f), b(4, -1.0f);
    cpu::layer_norm(view2(out, 1, 4), cview2(x, 1, 4), cview1(w), cview1(b), 1e-5f);
    CHECK(out[0] == Approx(2 * -1.3416354199689269 - 1).epsilon(1e-6));
    cpu::rms_norm(view2(out, 1, 4), cview2(x, 1, 4), cview1(w), 1e-5f);
    CHECK(out[1] == Approx(2 * 0.7302962564762128).epsilon(1e-6));
}

TEST_CASE("norms match float64 references on random rows, with and without affine parameters", "[norm]") {
    std::uint64_t which = 10;
    for (index_t D : {index_t{1}, index_t{2}, index_t{7}, index_t{64}, index_t{1000}}) {
        for (index_t rows : {index_t{1}, index_t{9}}) {
            INFO("rows = " << rows << ", D = " << D);
            const auto x = random_floats(static_cast<std::size_t>(rows * D), ++which, -3.0f, 5.0f);
            const auto w = random_floats(static_cast<std::size_t>(D), ++which, 0.5f, 1.5f);
            const auto b = random_floats(static_cast<std::size_t>(D), ++which, -1.0f, 1.0f);
            std::vector<float> out(x.size());
            const float eps = 1e-5f;
            const tolerance tol{1e-5, 1e-5, 1e-6};

            cpu::layer_norm(view2(out, rows, D), cview2(x, rows, D), cview1(w), cview1(b), eps);
            TINYLLM_REQUIRE_CLOSE(out, layer_norm_64(x, rows, D, w, b, eps), tol, "layer_norm affine");
            cpu::layer_norm(view2(out, rows, D), cview2(x, rows, D), eps);
            TINYLLM_REQUIRE_CLOSE(out, layer_norm_64(x, rows, D, {}, {}, eps), tol, "layer_norm plain");
            cpu::layer_norm(view2(out, rows, D), cview2(x, rows, D), cview1(w), {}, eps);
            TINYLLM_REQUIRE_CLOSE(out, layer_norm_64(x, rows, D, w, {}, eps), tol, "layer_norm weight only");
            cpu::rms_norm(view2(out, rows, D), cview2(x, rows, D), cview1(w), eps);
            TINYLLM_REQUIRE_CLOSE(out, rms_norm_64(x, rows, D, w, eps), tol, "rms_norm affine");
            cpu::rms_norm(view2(out, rows, D), cview2(x, rows, D), eps);
            TINYLLM_REQUIRE_CLOSE(out, rms_norm_64(x, rows, D, {}, eps), tol, "rms_norm plain");

            // Properties of the first output row (D > 1): LayerNorm's output has mean 0
            // and variance exactly var/(var + eps), var being the input row's
            // variance. (That is close to 1 only when var >> eps: two random inputs
            // of a D = 2 row can be arbitrarily close.) The float output carries
            // about 1e-7 / sqrt(eps) of rounding per element, hence the 1e-4 floor.
            if (D > 1) {
                cpu::layer_norm(view2(out, rows, D), cview2(x, rows, D), eps);
                auto mean_and_variance = [D](const float* row) {
                    double m = 0, v = 0;
                    for (index_t j = 0; j < D; ++j) m += row[j];
                    m /= static_cast<double>(D);
                    for (index_t j = 0; j < D; ++j) v += (row[j] - m) * (row[j] - m);
                    return std::pair<double, double>{m, v / static_cast<double>(D)};
                };
                const auto [in_mean, in_var] = mean_and_variance(x.data());
                const auto [out_mean, out_var] = mean_and_variance(out.data());
                (void)in_mean;
                const double want = in_var / (in_var + static_cast<double>(eps));
                INFO("input variance " << in_var << ", output variance " << out_var << ", expected " << want);
                CHECK(std::fabs(out_mean) < 1e-5);
                CHECK(std::fabs(out_var - want) <= 1e-3 * want + 1e-4);
            }
        }
    }
}

TEST_CASE("LayerNorm stays accurate when the mean is large compared with the spread", "[norm]") {
    // 1000 + noise of size 0.01: E[x^2] - E[x]^2 in float would lose every digit
    // of the variance; two passes keep them.
    const index_t D = 4096;
    auto x = random_floats(D, 20, -0.01f, 0.01f);
    for (auto& v : x) v += 1000.0f;
    std::vector<float> out(x.size());
    cpu::layer_norm(view2(out, 1, D), cview2(x, 1, D), 1e-12f);
    const auto want = layer_norm_64(x, 1, D, {}, {}, 1e-12);
    TINYLLM_REQUIRE_CLOSE(out, want, tolerance{1e-5, 1e-5, 1e-6}, "two-pass layer_norm, offset row");

    // The one-pass formula var = E[x^2] - E[x]^2 in float, for contrast: x^2 ~ 1e6
    // has an ulp of 0.06, far above the variance (~3e-5), so nothing is left.
    float s = 0, s2 = 0;
    for (float v : x) {
        s += v;
        s2 += v * v;
    }
    const float mean = s / D, var = s2 / D - mean * mean;
    std::vector<float> naive(x.size());
    for (std::size_t j = 0; j < x.size(); ++j) naive[j] = (x[j] - mean) / std::sqrt(var + 1e-12f);
    const auto c = tinyllm_test::compare(naive, want, tolerance{1e-2, 1e-2, 1e-2});
    INFO(c.report);
    CHECK_FALSE(c.passed);
}

TEST_CASE("eps: a row of zeros gives the bias, larger eps shrinks the output", "[norm]") {
    std::vector<float> zeros(8, 0.0f), out(8), w(8, 3.0f), b(8, 0.25f);
    cpu::layer_norm(view2(out, 1, 8), cview2(zeros, 1, 8), cview1(w), cview1(b), 1e-5f);
    for (float v : out) CHECK(v == 0.25f);
    cpu::rms_norm(view2(out, 1, 8), cview2(zeros, 1, 8), cview1(w), 1e-6f);
    for (float v : out) CHECK(v == 0.0f);
    // x = +-1: mean square 1, so rms_norm gives x / sqrt(1 + eps).
    std::vector<float> ones = {1, -1, 1, -1, 1, -1, 1, -1};
    cpu::rms_norm(view2(out, 1, 8), cview2(ones, 1, 8), 1.0f);
    CHECK(out[0] == Approx(1.0 / std::sqrt(2.0)).epsilon(1e-6));
    CHECK(out[1] == Approx(-1.0 / std::sqrt(2.0)).epsilon(1e-6));
    cpu::layer_norm(view2(out, 1, 8), cview2(ones, 1, 8), 3.0f);  // var 1: x / sqrt(1 + 3)
    CHECK(out[0] == Approx(0.5).epsilon(1e-6));
    // D = 1: LayerNorm of a single value is 0 (then + bias).
    std::vector<float> one = {7.0f}, o1(1), b1 = {0.5f};
    cpu::layer_norm(view2(o1, 1, 1), cview2(one, 1, 1), {}, cview1(b1), 1e-5f);
    CHECK(o1[0] == 0.5f);
}

TEST_CASE("norms work in place and on strided views", "[norm]") {
    const index_t rows = 6, D = 10;
    const auto x = random_floats(static_cast<std::size_t>(rows * D), 30, -2.0f, 2.0f);
    const auto w = random_floats(static_cast<std::size_t>(D), 31);
    std::vector<float> want(x.size());
    cpu::rms_norm(view2(want, rows, D), cview2(x, rows, D), cview1(w), 1e-6f);
    auto inplace = x;
    cpu::rms_norm(view2(inplace, rows, D), cview2(inplace, rows, D), cview1(w), 1e-6f);
    CHECK(inplace == want);

    // x stored transposed, (D, rows) in memory, viewed as (rows, D).
    std::vector<float> xt(x.size());
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < D; ++j) xt[static_cast<std::size_t>(j * rows + r)] = x[static_cast<std::size_t>(r * D + j)];
    std::vector<float> got(x.size());
    cpu::rms_norm(view2(got, rows, D), tensor_view<const float, 2>(xt.data(), {D, rows}).transpose(0, 1), cview1(w), 1e-6f);
    CHECK(got == want);

    // A (B, T, D) activation, normalized through a (B*T, D) reshape.
    const tensor_view<const float, 3> x3(x.data(), {2, 3, D});  // (B=2, T=3, D)
    std::vector<float> got3(x.size());
    tensor_view<float, 3> out3(got3.data(), {2, 3, D});  // (B, T, D)
    cpu::rms_norm(tinyllm::reshape(out3, extents<2>{6, D}), tinyllm::reshape(x3, extents<2>{6, D}), cview1(w), 1e-6f);
    CHECK(got3 == want);
}

TEST_CASE("fused residual add + norm equals the two steps", "[norm]") {
    const index_t rows = 7, D = 33;
    const auto x = random_floats(static_cast<std::size_t>(rows * D), 40, -2.0f, 2.0f);
    const auto res = random_floats(static_cast<std::size_t>(rows * D), 41, -5.0f, 5.0f);
    const auto w = random_floats(static_cast<std::size_t>(D), 42);
    const auto b = random_floats(static_cast<std::size_t>(D), 43);
    std::vector<float> sum(x.size()), want(x.size()), got(x.size()), got_res(x.size());

    cpu::add(view2(sum, rows, D), cview2(x, rows, D), cview2(res, rows, D));
    cpu::layer_norm(view2(want, rows, D), cview2(sum, rows, D), cview1(w), cview1(b), 1e-5f);
    cpu::residual_add_layer_norm(view2(got, rows, D), view2(got_res, rows, D), cview2(x, rows, D), cview2(res, rows, D),
                                 cview1(w), cview1(b), 1e-5f);
    CHECK(got_res == sum);
    CHECK(got == want);

    cpu::rms_norm(view2(want, rows, D), cview2(sum, rows, D), cview1(w), 1e-5f);
    cpu::residual_add_rms_norm(view2(got, rows, D), view2(got_res, rows, D), cview2(x, rows, D), cview2(res, rows, D),
                               cview1(w), 1e-5f);
    CHECK(got_res == sum);
    CHECK(got == want);

    // The residual stream updated in place (residual_out is residual), as a model runs it.
    auto stream = res;
    cpu::residual_add_rms_norm(view2(got, rows, D), view2(stream, rows, D), cview2(x, rows, D), cview2(stream, rows, D),
                               cview1(w), 1e-5f);
    CHECK(stream == sum);
    CHECK(got == want);
    // And against float64: norm(x + residual).
    TINYLLM_REQUIRE_CLOSE(got, rms_norm_64(sum, rows, D, w, 1e-5), tolerance{1e-5, 1e-5, 1e-6}, "residual rms_norm");
}

TEST_CASE("norms reject bad arguments with a clear message", "[norm]") {
    std::vector<float> x(12, 1.0f), out(12), w(4), w3(3);
    CHECK_THROWS_WITH(cpu::layer_norm(view2(out, 4, 3), cview2(x, 3, 4), 1e-5f),
                      tinyllm_test::contains("layer_norm: out has shape (4, 3) but x has shape (3, 4)"));
    CHECK_THROWS_WITH(cpu::rms_norm(view2(out, 3, 4), cview2(x, 3, 4), cview1(w3), 1e-5f),
                      tinyllm_test::contains("weight has 3 elements but x has D = 4"));
    CHECK_THROWS_WITH(cpu::layer_norm(view2(out, 3, 4), cview2(x, 3, 4), cview1(w), cview1(w3), 1e-5f),
                      tinyllm_test::contains("bias has 3 elements"));
    CHECK_THROWS_WITH(cpu::rms_norm(view2(out, 3, 4), cview2(x, 3, 4), 0.0f),
                      tinyllm_test::contains("eps = 0 must be positive and finite"));
    CHECK_THROWS_WITH(cpu::layer_norm(view2(out, 3, 4), cview2(x, 3, 4), -1e-5f),
                      tinyllm_test::contains("layer_norm: eps = -1e-05 must be positive and finite"));
    CHECK_THROWS_WITH(cpu::layer_norm(view2(out, 3, 4), cview2(x, 3, 4), std::numeric_limits<float>::quiet_NaN()),
                      tinyllm_test::contains("layer_norm: eps = nan must be positive and finite"));
    CHECK_THROWS_WITH(cpu::layer_norm(view2(out, 3, 4), cview2(x, 3, 4), std::numeric_limits<float>::infinity()),
                      tinyllm_test::contains("layer_norm: eps = inf must be positive and finite"));
    CHECK_THROWS_WITH(cpu::rms_norm(view2(out, 3, 0), cview2(x, 3, 0), 1e-5f),
                      tinyllm_test::contains("at least one feature"));
    std::vector<float> r(12);
    CHECK_THROWS_WITH(cpu::residual_add_rms_norm(view2(out, 3, 4), view2(r, 3, 4), cview2(x, 3, 4), cview2(x, 4, 3),
                                                 cview1(w), 1e-5f),
                      tinyllm_test::contains("must have the same shape"));
    // Zero rows is not an error: nothing to do.
    CHECK_NOTHROW(cpu::rms_norm(view2(out, 0, 4), cview2(x, 0, 4), 1e-5f));
}

TEST_CASE("norms refuse outputs that overlap an input other than exactly in place", "[norm][errors]") {
    const index_t rows = 4, D = 8;
    const float eps = 1e-5f;
    auto buf = random_floats(static_cast<std::size_t>((rows + 1) * D), 60, -2.0f, 2.0f);
    const auto w = random_floats(static_cast<std::size_t>(D), 61);
    const auto b = random_floats(static_cast<std::size_t>(D), 62);
    const auto res = random_floats(static_cast<std::size_t>(rows * D), 63, -2.0f, 2.0f);
    const tensor_view<const float, 2> x(buf.data(), {rows, D});
    // out one row past x in the same buffer: row r would be written before row r + 1 is read.
    const tensor_view<float, 2> shifted(buf.data() + D, {rows, D});
    CHECK_THROWS_WITH(cpu::rms_norm(shifted, x, cview1(w), eps),
                      tinyllm_test::contains("rms_norm: out must be exactly x (in place) or not share memory with it"));
    CHECK_THROWS_WITH(cpu::layer_norm(shifted, x, cview1(w), cview1(b), eps),
                      tinyllm_test::contains("layer_norm: out must be exactly x (in place)"));
    // A row stride of 0: every row written to one address.
    std::vector<float> one(static_cast<std::size_t>(D));
    const tensor_view<float, 2> broadcast(one.data(), {rows, D}, {0, 1});
    CHECK_THROWS_WITH(cpu::rms_norm(broadcast, cview2(res, rows, D), eps),
                      tinyllm_test::contains("rms_norm: out has shape (4, 8) and strides (0, 1), so two of its "
                                             "elements share an address"));
    // out over a parameter it reads.
    auto params = w;
    const tensor_view<float, 2> over_params(params.data(), {1, D});
    CHECK_THROWS_WITH(cpu::rms_norm(over_params, cview2(res, 1, D), cview1(params), eps),
                      tinyllm_test::contains("rms_norm: out must not share memory with weight"));
    CHECK_THROWS_WITH(cpu::layer_norm(over_params, cview2(res, 1, D), cview1(w), cview1(params), eps),
                      tinyllm_test::contains("layer_norm: out must not share memory with bias"));

    // The fused residual add writes two outputs.
    std::vector<float> s(static_cast<std::size_t>(rows * D)), out(s.size());
    CHECK_THROWS_WITH(
        cpu::residual_add_rms_norm(view2(s, rows, D), view2(s, rows, D), x, cview2(res, rows, D), cview1(w), eps),
        tinyllm_test::contains("residual_add_rms_norm: out must not share memory with residual_out"));
    auto stream = buf;  // residual_out one row past residual
    CHECK_THROWS_WITH(
        cpu::residual_add_layer_norm(view2(out, rows, D), tensor_view<float, 2>(stream.data() + D, {rows, D}),
                                     cview2(res, rows, D), cview2(stream, rows, D), cview1(w), cview1(b), eps),
        tinyllm_test::contains("residual_add_layer_norm: residual_out must be exactly residual (in place)"));
    CHECK_THROWS_WITH(
        cpu::residual_add_rms_norm(view2(out, rows, D), tensor_view<float, 2>(stream.data() + D, {rows, D}),
                                   cview2(stream, rows, D), cview2(res, rows, D), cview1(w), eps),
        tinyllm_test::contains("residual_add_rms_norm: residual_out must be exactly x (in place)"));
    CHECK_THROWS_WITH(cpu::residual_add_rms_norm(tensor_view<float, 2>(stream.data() + D, {rows, D}), view2(s, rows, D),
                                                 cview2(res, rows, D), cview2(stream, rows, D), cview1(w), eps),
                      tinyllm_test::contains("residual_add_rms_norm: out must be exactly residual (in place)"));
    CHECK_THROWS_WITH(cpu::residual_add_rms_norm(view2(out, 1, D), tensor_view<float, 2>(params.data(), {1, D}),
                                                 cview2(res, 1, D), cview2(res, 1, D), cview1(params), eps),
                      tinyllm_test::contains("residual_add_rms_norm: residual_out must not share memory with weight"));

    // Exactly in place still works, and gives the out-of-place result.
    std::vector<float> want(s.size()), want_sum(s.size());
    cpu::residual_add_layer_norm(view2(want, rows, D), view2(want_sum, rows, D), x, cview2(res, rows, D), cview1(w),
                                 cview1(b), eps);
    auto x_io = std::vector<float>(buf.begin(), buf.begin() + rows * D), res_io = res;
    CHECK_NOTHROW(cpu::residual_add_layer_norm(view2(x_io, rows, D), view2(res_io, rows, D), cview2(x_io, rows, D),
                                               cview2(res_io, rows, D), cview1(w), cview1(b), eps));
    CHECK(x_io == want);        // out is x
    CHECK(res_io == want_sum);  // residual_out is residual
    x_io.assign(buf.begin(), buf.begin() + rows * D);
    res_io = res;
    CHECK_NOTHROW(cpu::residual_add_layer_norm(view2(res_io, rows, D), view2(x_io, rows, D), cview2(x_io, rows, D),
                                               cview2(res_io, rows, D), cview1(w), cview1(b), eps));
    CHECK(res_io == want);    // out is residual
    CHECK(x_io == want_sum);  // residual_out is x
    // One row seen with two different row strides is still the same elements.
    std::vector<float> row(buf.begin(), buf.begin() + D), row_want(static_cast<std::size_t>(D));
    cpu::rms_norm(view2(row_want, 1, D), cview2(row, 1, D), cview1(w), eps);
    CHECK_NOTHROW(
        cpu::rms_norm(tensor_view<float, 2>(row.data(), {1, D}, {4096, 1}), cview2(row, 1, D), cview1(w), eps));
    CHECK(row == row_want);
}

// ---- FFN ------------------------------------------------------------------------------

TEST_CASE("linear and matmul match float64, for weights in either layout", "[ffn]") {
    const index_t rows = 5, K = 37, N = 11;
    const auto x = random_floats(static_cast<std::size_t>(rows * K), 50);
    const auto W = random_floats(static_cast<std::size_t>(N * K), 51);  // (N, K)
    const auto b = random_floats(static_cast<std::size_t>(N), 52);
    std::vector<float> out(static_cast<std::size_t>(rows * N));
    const tolerance tol{1e-6, 1e-6, 1e-7};

    cpu::linear(view2(out, rows, N), cview2(x, rows, K), cview2(W, N, K), cview1(b));
    TINYLLM_REQUIRE_CLOSE(out, linear_64(to_double(x), rows, K, W, N, b), tol, "linear with bias");
    cpu::linear(view2(out, rows, N), cview2(x, rows, K), cview2(W, N, K), {});
    const auto want = linear_64(to_double(x), rows, K, W, N, {});
    TINYLLM_REQUIRE_CLOSE(out, want, tol, "linear without bias");

    // The same weight stored (K, N), as GPT-2's Conv1D does, passed transposed.
    std::vector<float> Wt(W.size());
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k) Wt[static_cast<std::size_t>(k * N + n)] = W[static_cast<std::size_t>(n * K + k)];
    std::vector<float> out2(out.size());
    cpu::linear(view2(out2, rows, N), cview2(x, rows, K), cview2(Wt, K, N).transpose(0, 1), {});
    CHECK(out2 == out);
    // matmul(out, a, b) with b = Wt (K, N) is the same product.
    cpu::matmul(view2(out2, rows, N), cview2(x, rows, K), cview2(Wt, K, N));
    CHECK(out2 == out);

    CHECK_THROWS_WITH(cpu::linear(view2(out, rows, N), cview2(x, rows, K), cview2(W, K, N), {}),
                      tinyllm_test::contains("in_features must equal"));
    CHECK_THROWS_WITH(cpu::linear(view2(out, N, rows), cview2(x, rows, K), cview2(W, N, K), {}),
                      tinyllm_test::contains("out has shape (11, 5)"));
    CHECK_THROWS_WITH(cpu::linear(view2(out, rows, N), cview2(x, rows, K), cview2(W, N, K), cview2(W, N, K).slice(1, 0).narrow(0, 0, 3)),
                      tinyllm_test::contains("bias has 3 elements"));
    CHECK_THROWS_WITH(cpu::matmul(view2(out, rows, N), cview2(x, rows, K), cview2(W, N, K)),
                      tinyllm_test::contains("a's columns must equal b's rows"));
    std::vector<float> sq(16);
    CHECK_THROWS_WITH(cpu::linear(view2(sq, 4, 4), cview2(sq, 4, 4), cview2(W, 4, 4), {}),
                      tinyllm_test::contains("must not share memory with x, weight or bias"));
}

TEST_CASE("the GPT-2 MLP equals its float64 composition", "[ffn]") {
    const index_t rows = 6, D = 16, H = 64;
    const auto x = random_floats(static_cast<std::size_t>(rows * D), 60, -2, 2);
    const auto fc = random_floats(static_cast<std::size_t>(H * D), 61, -0.3f, 0.3f);
    const auto fcb = random_floats(static_cast<std::size_t>(H), 62);
    const auto proj = random_floats(static_cast<std::size_t>(D * H), 63, -0.2f, 0.2f);
    const auto projb = random_floats(static_cast<std::size_t>(D), 64);
    const tinyllm::gpt2_mlp_weights<float> w{cview2(fc, H, D), cview1(fcb), cview2(proj, D, H), cview1(projb)};

    for (activation act : {activation::gelu_tanh, activation::gelu_erf}) {
        std::vector<float> out(x.size());
        cpu::gpt2_mlp(view2(out, rows, D), cview2(x, rows, D), w, act);
        auto h = linear_64(to_double(x), rows, D, fc, H, fcb);
        for (auto& v : h) v = act == activation::gelu_tanh ? gelu_tanh_64(v) : gelu_erf_64(v);
        TINYLLM_REQUIRE_CLOSE(out, linear_64(h, rows, H, proj, D, projb), tolerance{1e-5, 1e-5, 1e-6},
                              std::string("gpt2_mlp ") + std::string(tinyllm::activation_name(act)));
    }
    std::vector<float> out(x.size());
    auto bad = w;
    bad.fc_bias = cview1(projb);
    CHECK_THROWS_WITH(cpu::gpt2_mlp(view2(out, rows, D), cview2(x, rows, D), bad),
                      tinyllm_test::contains("fc_bias has 16 elements but H = 64"));
    bad = w;
    bad.proj_weight = cview2(fc, H, D);
    CHECK_THROWS_WITH(cpu::gpt2_mlp(view2(out, rows, D), cview2(x, rows, D), bad),
                      tinyllm_test::contains("proj_weight is (64, 16) but must be (D, H) = (16, 64)"));
}

TEST_CASE("the SwiGLU MLP equals its float64 composition", "[ffn]") {
    const index_t rows = 3, D = 24, H = 40;
    const auto x = random_floats(static_cast<std::size_t>(rows * D), 70, -2, 2);
    const auto gate = random_floats(static_cast<std::size_t>(H * D), 71, -0.3f, 0.3f);
    const auto up = random_floats(static_cast<std::size_t>(H * D), 72, -0.3f, 0.3f);
    const auto down = random_floats(static_cast<std::size_t>(D * H), 73, -0.2f, 0.2f);
    const tinyllm::swiglu_mlp_weights<float> w{cview2(gate, H, D), cview2(up, H, D), cview2(down, D, H)};
    std::vector<float> out(x.size());
    cpu::swiglu_mlp(view2(out, rows, D), cview2(x, rows, D), w);
    auto g = linear_64(to_double(x), rows, D, gate, H, {});
    const auto u = linear_64(to_double(x), rows, D, up, H, {});
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = silu_64(g[i]) * u[i];
    TINYLLM_REQUIRE_CLOSE(out, linear_64(g, rows, H, down, D, {}), tolerance{1e-5, 1e-5, 1e-6}, "swiglu_mlp");

    auto bad = w;
    bad.up_weight = cview2(down, D, H);
    CHECK_THROWS_WITH(cpu::swiglu_mlp(view2(out, rows, D), cview2(x, rows, D), bad),
                      tinyllm_test::contains("up_weight is (24, 40)"));
    std::vector<float> wrong(static_cast<std::size_t>(rows * H));
    CHECK_THROWS_WITH(cpu::swiglu_mlp(view2(wrong, rows, H), cview2(x, rows, D), w),
                      tinyllm_test::contains("out has shape (3, 40) but x has shape (3, 24)"));
}

// ---- leading batch dimensions: (..., D) -----------------------------------------------

namespace {

const float nan_f = std::numeric_limits<float>::quiet_NaN();

// op(out, x, y) with out (..., Dout) and x, y (..., D): run on (B, T, D) owning tensors, on
// (B, 1, T, D) views, on 2-D views of non-const, and on one row as a vector, each result equal
// to the flattened (B*T, D) call `ref` (outputs start as NaN, which never compares equal);
// then a transposed (non-mergeable) argument and mismatched shapes must throw.
template <class Ref, class Op>
void check_leading_dims(const std::string& op_name, const std::string& x_name, index_t D, index_t Dout, Ref ref,
                        Op op) {
    INFO(op_name);
    const index_t B = 2, T = 3;
    tinyllm::tensor<float, 3> x({B, T, D}), y({B, T, D});
    x.values() = random_floats(static_cast<std::size_t>(B * T * D), 90, -2, 2);
    y.values() = random_floats(static_cast<std::size_t>(B * T * D), 91, -2, 2);
    std::vector<float> want(static_cast<std::size_t>(B * T * Dout), nan_f);
    ref(view2(want, B * T, Dout), cview2(x.values(), B * T, D), cview2(y.values(), B * T, D));

    tinyllm::tensor<float, 3> out({B, T, Dout}, nan_f);  // owning tensors, read ones const and not
    op(out, std::as_const(x), y);
    CHECK(out.values() == want);

    tinyllm::tensor<float, 4> out4({B, 1, T, Dout}, nan_f);  // rank 4, views
    op(out4.view(), tinyllm::reshape(std::as_const(x), {B, index_t{1}, T, D}), tinyllm::reshape(y, {B, index_t{1}, T, D}));
    CHECK(out4.values() == want);

    std::vector<float> out2(want.size(), nan_f);  // 2-D views of non-const elements
    op(view2(out2, B * T, Dout), tinyllm::reshape(x, {B * T, D}), tinyllm::reshape(y, {B * T, D}));
    CHECK(out2 == want);

    std::vector<float> row(static_cast<std::size_t>(Dout), nan_f);  // one row (b = 1, t = 2) as a vector
    op(tensor_view<float, 1>(row.data(), {Dout}), x.view().slice(0, 1).slice(0, 2), y.view().slice(0, 1).slice(0, 2));
    CHECK(row == std::vector<float>(want.begin() + (T + 2) * Dout, want.begin() + (T + 3) * Dout));

    // x.transpose(0, 1) is (T, B, D) with strides (D, T*D, 1): its leading dimensions do not merge.
    tinyllm::tensor<float, 3> out_tb({T, B, Dout}), x_tb({T, B, D}), y_tb({T, B, D});
    CHECK_THROWS_WITH(op(out_tb, x.view().transpose(0, 1), y_tb),
                      tinyllm_test::contains(op_name + ": " + x_name + " has shape (3, 2, " + std::to_string(D) +
                                             ") and strides") &&
                          tinyllm_test::contains("do not merge"));
    CHECK_THROWS_WITH(op(out.view().transpose(0, 1), x_tb, y_tb),
                      tinyllm_test::contains(op_name + ": out has shape (3, 2, " + std::to_string(Dout) + ")") &&
                          tinyllm_test::contains("do not merge"));
    // Mismatched shapes: (T, B, .) against (B, T, .), and (B*T, .) against (B, T, .).
    CHECK_THROWS_WITH(op(out_tb, x, y), tinyllm_test::contains(op_name + ": out has shape (3, 2, " +
                                                                std::to_string(Dout) + ") but " + x_name +
                                                                " has shape (2, 3, " + std::to_string(D) + ")"));
    CHECK_THROWS_WITH(op(view2(out2, B * T, Dout), x, y),
                      tinyllm_test::contains(op_name + ": out has shape (6, " + std::to_string(Dout) + ") but " +
                                             x_name + " has shape (2, 3, " + std::to_string(D) + ")"));
}

}  // namespace

TEST_CASE("norms take (..., D) tensors: (B, T, D) equals the flattened call", "[norm][batch]") {
    const index_t D = 8;
    const auto w = random_floats(D, 92), b = random_floats(D, 93);
    tinyllm::tensor<float, 1> w_t({D}), b_t({D});  // owning weight tensors
    w_t.values() = w;
    b_t.values() = b;
    const float eps = 1e-5f;
    check_leading_dims(
        "layer_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::layer_norm(out, x, cview1(w), cview1(b), eps); },
        [&](auto&& out, const auto& x, const auto&) { cpu::layer_norm(out, x, w_t, b_t, eps); });
    check_leading_dims(
        "layer_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::layer_norm(out, x, eps); },
        [&](auto&& out, const auto& x, const auto&) { cpu::layer_norm(out, x, eps); });
    check_leading_dims(
        "layer_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::layer_norm(out, x, cview1(w), {}, eps); },
        [&](auto&& out, const auto& x, const auto&) { cpu::layer_norm(out, x, w_t.view(), {}, eps); });
    check_leading_dims(
        "rms_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::rms_norm(out, x, cview1(w), eps); },
        [&](auto&& out, const auto& x, const auto&) { cpu::rms_norm(out, x, w_t, eps); });
    check_leading_dims(
        "rms_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::rms_norm(out, x, {}, eps); },
        [&](auto&& out, const auto& x, const auto&) { cpu::rms_norm(out, x, {}, eps); });
    check_leading_dims(
        "rms_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::rms_norm(out, x, eps); },
        [&](auto&& out, const auto& x, const auto&) { cpu::rms_norm(out, x, eps); });
}

TEST_CASE("fused residual add + norm takes (..., D) tensors", "[norm][batch]") {
    const index_t B = 2, T = 3, D = 8;
    const auto w = random_floats(D, 94), b = random_floats(D, 95);
    tinyllm::tensor<float, 1> w_t({D});
    w_t.values() = w;
    tinyllm::tensor<float, 3> x({B, T, D}), r({B, T, D});
    x.values() = random_floats(static_cast<std::size_t>(B * T * D), 96, -2, 2);
    r.values() = random_floats(static_cast<std::size_t>(B * T * D), 97, -2, 2);
    const auto n = static_cast<std::size_t>(B * T * D);
    for (bool layer : {true, false}) {
        INFO((layer ? "residual_add_layer_norm" : "residual_add_rms_norm"));
        std::vector<float> want(n, nan_f), want_sum(n, nan_f);
        if (layer)
            cpu::residual_add_layer_norm(view2(want, B * T, D), view2(want_sum, B * T, D), cview2(x.values(), B * T, D),
                                         cview2(r.values(), B * T, D), cview1(w), cview1(b), 1e-5f);
        else
            cpu::residual_add_rms_norm(view2(want, B * T, D), view2(want_sum, B * T, D), cview2(x.values(), B * T, D),
                                       cview2(r.values(), B * T, D), cview1(w), 1e-5f);
        tinyllm::tensor<float, 3> out({B, T, D}, nan_f), sum({B, T, D}, nan_f);
        if (layer)
            cpu::residual_add_layer_norm(out, sum, x, r.view(), w_t, cview1(b), 1e-5f);
        else
            cpu::residual_add_rms_norm(out, sum.view(), std::as_const(x), r, w_t, 1e-5f);
        CHECK(out.values() == want);
        CHECK(sum.values() == want_sum);
        // One row as vectors.
        std::vector<float> row(static_cast<std::size_t>(D), nan_f), row_sum(row);
        const tensor_view<float, 1> row_v(row.data(), {D}), row_sum_v(row_sum.data(), {D});
        if (layer)
            cpu::residual_add_layer_norm(row_v, row_sum_v, x.view().slice(0, 1).slice(0, 2),
                                         r.view().slice(0, 1).slice(0, 2), cview1(w), cview1(b), 1e-5f);
        else
            cpu::residual_add_rms_norm(row_v, row_sum_v, x.view().slice(0, 1).slice(0, 2),
                                       r.view().slice(0, 1).slice(0, 2), w_t, 1e-5f);
        CHECK(row == std::vector<float>(want.begin() + (T + 2) * D, want.begin() + (T + 3) * D));
        CHECK(row_sum == std::vector<float>(want_sum.begin() + (T + 2) * D, want_sum.begin() + (T + 3) * D));
    }
    // In place on (B, T, D): residual_out is the residual.
    std::vector<float> want(static_cast<std::size_t>(B * T * D)), want_sum(want.size());
    cpu::residual_add_rms_norm(view2(want, B * T, D), view2(want_sum, B * T, D), cview2(x.values(), B * T, D),
                               cview2(r.values(), B * T, D), cview1(w), 1e-5f);
    tinyllm::tensor<float, 3> out({B, T, D}, nan_f), stream = r;
    cpu::residual_add_rms_norm(out, stream, x, stream, w_t, 1e-5f);
    CHECK(out.values() == want);
    CHECK(stream.values() == want_sum);

    tinyllm::tensor<float, 3> wrong({T, B, D});
    CHECK_THROWS_WITH(cpu::residual_add_rms_norm(out, wrong, x, r, w_t, 1e-5f),
                      tinyllm_test::contains("residual_add_rms_norm: residual_out has shape (3, 2, 8) but x has shape (2, 3, 8)"));
    CHECK_THROWS_WITH(cpu::residual_add_layer_norm(out, stream, x, wrong, w_t, {}, 1e-5f),
                      tinyllm_test::contains("residual_add_layer_norm: residual has shape (3, 2, 8)"));
    CHECK_THROWS_WITH(cpu::residual_add_layer_norm(out.view().transpose(0, 1), wrong, wrong, wrong, w_t, {}, 1e-5f),
                      tinyllm_test::contains("residual_add_layer_norm: out has shape (3, 2, 8) and strides"));
    CHECK_THROWS_WITH(cpu::residual_add_layer_norm(wrong, wrong, wrong, r.view().transpose(0, 1), w_t, {}, 1e-5f),
                      tinyllm_test::contains("residual_add_layer_norm: residual has shape (3, 2, 8) and strides"));
}

TEST_CASE("element-wise ops take (..., cols) tensors: (B, T, D) equals the flattened call", "[activation][batch]") {
    const index_t D = 12;
    const auto bias = random_floats(D, 98);
    tinyllm::tensor<float, 1> bias_t({D});
    bias_t.values() = bias;
    for (activation kind : {activation::relu, activation::gelu_tanh, activation::silu}) {
        check_leading_dims(
            "activate", "x", D, D, [&](auto out, auto x, auto) { cpu::activate(out, x, kind); },
            [&](auto&& out, const auto& x, const auto&) { cpu::activate(out, x, kind); });
        check_leading_dims(
            "bias_activate", "x", D, D, [&](auto out, auto x, auto) { cpu::bias_activate(out, x, cview1(bias), kind); },
            [&](auto&& out, const auto& x, const auto&) { cpu::bias_activate(out, x, bias_t, kind); });
    }
    check_leading_dims(
        "swiglu", "gate", D, D, [&](auto out, auto g, auto u) { cpu::swiglu(out, g, u); },
        [&](auto&& out, const auto& g, const auto& u) { cpu::swiglu(out, g, u); });
    check_leading_dims(
        "add", "a", D, D, [&](auto out, auto a, auto b) { cpu::add(out, a, b); },
        [&](auto&& out, const auto& a, const auto& b) { cpu::add(out, a, b); });
    check_leading_dims(
        "multiply", "a", D, D, [&](auto out, auto a, auto b) { cpu::multiply(out, a, b); },
        [&](auto&& out, const auto& a, const auto& b) { cpu::multiply(out, a, b); });

    // The second input is checked too, and in place works on (B, T, D).
    tinyllm::tensor<float, 3> a({2, 3, D}, 1.0f), b({3, 2, D}, 2.0f);
    CHECK_THROWS_WITH(cpu::add(a, a, b), tinyllm_test::contains("add: out has shape (2, 3, 12) but b has shape (3, 2, 12)"));
    CHECK_THROWS_WITH(cpu::swiglu(a, a, b), tinyllm_test::contains("swiglu: out has shape (2, 3, 12) but up has shape"));
    tinyllm::tensor<float, 1> short_bias({D - 1});
    CHECK_THROWS_WITH(cpu::bias_activate(a, a, short_bias, activation::relu), tinyllm_test::contains("bias has 11 elements"));
    cpu::add(a, a, a);
    CHECK(a.values() == std::vector<float>(a.values().size(), 2.0f));
}

TEST_CASE("linear and the MLPs take (..., D) tensors: (B, T, D) equals the flattened call", "[ffn][batch]") {
    const index_t D = 8, N = 5, H = 12;
    tinyllm::tensor<float, 2> W({N, D});  // an owning weight
    W.values() = random_floats(static_cast<std::size_t>(N * D), 100);
    const auto bias = random_floats(N, 101);
    const auto Wt_values = random_floats(static_cast<std::size_t>(D * N), 102);  // stored (D, N), used transposed
    const auto Wt = cview2(Wt_values, D, N).transpose(0, 1);
    check_leading_dims(
        "linear", "x", D, N, [&](auto out, auto x, auto) { cpu::linear(out, x, W.view(), cview1(bias)); },
        [&](auto&& out, const auto& x, const auto&) { cpu::linear(out, x, W, cview1(bias)); });
    check_leading_dims(
        "linear", "x", D, N, [&](auto out, auto x, auto) { cpu::linear(out, x, Wt, {}); },
        [&](auto&& out, const auto& x, const auto&) { cpu::linear(out, x, Wt, {}); });

    const auto fc = random_floats(static_cast<std::size_t>(H * D), 103, -0.3f, 0.3f);
    const auto fcb = random_floats(static_cast<std::size_t>(H), 104);
    const auto proj = random_floats(static_cast<std::size_t>(D * H), 105, -0.3f, 0.3f);
    const auto projb = random_floats(static_cast<std::size_t>(D), 106);
    const tinyllm::gpt2_mlp_weights<float> gw{cview2(fc, H, D), cview1(fcb), cview2(proj, D, H), cview1(projb)};
    check_leading_dims(
        "gpt2_mlp", "x", D, D, [&](auto out, auto x, auto) { cpu::gpt2_mlp(out, x, gw); },
        [&](auto&& out, const auto& x, const auto&) { cpu::gpt2_mlp(out, x, gw); });
    const auto up = random_floats(static_cast<std::size_t>(H * D), 107, -0.3f, 0.3f);
    const tinyllm::swiglu_mlp_weights<float> sw{cview2(fc, H, D), cview2(up, H, D), cview2(proj, D, H)};
    check_leading_dims(
        "swiglu_mlp", "x", D, D, [&](auto out, auto x, auto) { cpu::swiglu_mlp(out, x, sw); },
        [&](auto&& out, const auto& x, const auto&) { cpu::swiglu_mlp(out, x, sw); });

    // linear's out and x share all dimensions but the last.
    tinyllm::tensor<float, 3> x({2, 3, D}), out({2, 4, N});
    CHECK_THROWS_WITH(cpu::linear(out, x, W, {}),
                      tinyllm_test::contains("linear: out has shape (2, 4, 5) but x has shape (2, 3, 8); all dimensions "
                                             "but the last must be equal"));
    tinyllm::tensor<float, 3> out_ok({2, 3, N});
    CHECK_THROWS_WITH(cpu::linear(out_ok, x, cview2(fc, H, D), {}), tinyllm_test::contains("out has shape (6, 5)"));
}

TEST_CASE("linear refuses an out that shares memory with x, and an activation that does not exist",
          "[layers][errors]") {
    std::vector<float> memory(32, 1.0f);
    const std::vector<float> w(8, 0.5f);
    const tensor_view<const float, 2> x(memory.data(), {3, 4}), weight(w.data(), {2, 4});
    // out starts inside x, not at its first element (only equal starts were refused).
    CHECK_THROWS_WITH(cpu::linear(tensor_view<float, 2>(memory.data() + 4, {3, 2}), x, weight, {}),
                      tinyllm_test::contains("linear: out must not share memory with x, weight or bias"));
    CHECK_THROWS_WITH(cpu::linear_backward(tensor_view<float, 2>(memory.data() + 13, {3, 4}), {}, {},
                                           tensor_view<const float, 2>(memory.data() + 12, {3, 2}), x, weight),
                      tinyllm_test::contains("linear_backward: dx must not share memory with dout"));
    // An out whose rows share memory (stride 0), and a dx written over the weight it reads.
    std::vector<float> row(8);
    CHECK_THROWS_WITH(cpu::linear(tensor_view<float, 2>(row.data(), {3, 2}, {0, 1}), x, weight, {}),
                      tinyllm_test::contains("linear: out has shape (3, 2) and strides (0, 1), so two of its elements "
                                             "share an address"));
    std::vector<float> wmem(16, 0.5f), dout(6, 1.0f);
    const tensor_view<const float, 2> w_in(wmem.data(), {2, 4});
    CHECK_THROWS_WITH(cpu::linear_backward(tensor_view<float, 2>(wmem.data() + 4, {3, 4}), {}, {},
                                           tensor_view<const float, 2>(dout.data(), {3, 2}), x, w_in),
                      tinyllm_test::contains("linear_backward: dx must not share memory with weight"));
    // out over the bias: the product would overwrite the bias before adding it.
    std::vector<float> buffer(16);
    CHECK_THROWS_WITH(cpu::linear(tensor_view<float, 2>(buffer.data(), {3, 2}), x, weight,
                                  tensor_view<const float, 1>(buffer.data() + 4, {2})),
                      tinyllm_test::contains("linear: out must not share memory with x, weight or bias"));
    std::vector<float> out(12);
    CHECK_THROWS_WITH(cpu::activate(tensor_view<float, 2>(out.data(), {3, 4}), x, static_cast<activation>(7)),
                      tinyllm_test::contains("activate: activation 7 is not one of"));
}
