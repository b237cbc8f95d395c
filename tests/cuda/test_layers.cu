// CUDA tests for the layers between blocks: every norm kernel (v1 naive, v2
// vectorized, fused residual add), the element-wise kernels (activations,
// bias + activation, SwiGLU fused and unfused, add, multiply) and the cuBLAS
// MLPs, each against the CPU reference, for float, bfloat16 and float16.
//
// Inputs are fresh random numbers rounded to the element type first, so the
// CPU reference (float, double accumulation) sees exactly the values the GPU
// sees. Outputs are poisoned (NaN) before every launch; NaN never passes.
// Tolerances (per element |got - ref| <= abs + rel |ref|, plus a relative L2
// bound): float 5e-5 (the naive norm kernel sums up to 12288 floats in one
// thread: ~1e-5 relative); bfloat16 1e-2 (an output rounded to bfloat16 is
// within 2^-8 relative); float16 2e-3.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/ffn.hpp>
#include <tinyllm/norm.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::activation;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::float16;
using tinyllm::index_t;
using tinyllm::tensor_view;
using tinyllm_test::as_type;
using tinyllm_test::round_to;
using tinyllm_test::tolerance;
using tinyllm_test::upload;

namespace {

template <class T>
tolerance tol_for() {
    if constexpr (std::is_same_v<T, float>) return {5e-5, 5e-5, 2e-5};
    else if constexpr (std::is_same_v<T, bfloat16>) return {1e-2, 1e-2, 5e-3};
    else return {2e-3, 2e-3, 1e-3};
}

// Twice the tolerance, for results with two roundings to T (a GEMM output fed to another).
template <class T>
tolerance loose_tol_for() {
    const tolerance t = tol_for<T>();
    if constexpr (std::is_same_v<T, float>) return {1e-4, 1e-4, 1e-5};
    else return {2 * t.abs, 2 * t.rel, 2 * t.rel_l2};
}

template <class T>
std::string label(const std::string& what, index_t rows, index_t cols) {
    return what + " " + std::string(tinyllm::dtype_name<T>()) + " (" + std::to_string(rows) + ", " +
           std::to_string(cols) + ")";
}

// n random values in [lo, hi), already rounded to T (returned as floats).
template <class T>
std::vector<float> random_as(std::size_t n, std::uint64_t which, float lo = -1.0f, float hi = 1.0f) {
    auto v = tinyllm_test::random_floats(n, which, lo, hi);
    round_to<T>(v);
    return v;
}

tensor_view<float, 2> view2(std::vector<float>& v, index_t rows, index_t cols) { return {v.data(), {rows, cols}}; }
tensor_view<const float, 2> cview2(const std::vector<float>& v, index_t rows, index_t cols) {
    return {v.data(), {rows, cols}};
}
tensor_view<const float, 1> cview1(const std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }

template <class T>
tensor_view<T, 2> dview2(tc::device_buffer<T>& b, index_t rows, index_t cols) {
    return b.view(extents<2>{rows, cols});
}
template <class T>
tensor_view<const T, 1> dview1(const tc::device_buffer<T>& b) {
    return b.view(extents<1>{static_cast<index_t>(b.size())});
}

const std::vector<std::pair<index_t, index_t>> norm_shapes = {
    {1, 1}, {1, 7}, {3, 8}, {2, 13}, {5, 1000}, {7, 1001}, {33, 4096}, {3, 12288}, {300, 64}};

template <class T>
void check_norms(index_t rows, index_t D, std::uint64_t which) {
    const auto n = static_cast<std::size_t>(rows * D);
    const auto x = random_as<T>(n, which, -3.0f, 5.0f), res = random_as<T>(n, which + 1, -4.0f, 4.0f);
    const auto w = random_as<T>(static_cast<std::size_t>(D), which + 2, 0.5f, 1.5f);
    const auto b = random_as<T>(static_cast<std::size_t>(D), which + 3, -1.0f, 1.0f);
    auto dx = upload<T>(x), dres = upload<T>(res), dw = upload<T>(w), db = upload<T>(b);
    tc::device_buffer<T> dout(n), dsum(n);
    const auto X = dview2(dx, rows, D);
    const auto R = dview2(dres, rows, D);
    const auto out = dview2(dout, rows, D), sum = dview2(dsum, rows, D);
    const float eps = 1e-5f;

    // The residual stream as stored in T, and the references.
    std::vector<float> s(n);
    for (std::size_t i = 0; i < n; ++i) s[i] = x[i] + res[i];
    round_to<T>(s);
    std::vector<float> ref(n);

    for (bool vectorized : {false, true}) {
        const std::string v = vectorized ? "v2 vectorized" : "v1 naive";
        for (bool affine : {true, false}) {
            const std::string a = affine ? " affine" : " plain";
            const tensor_view<const T, 1> W = affine ? dview1(dw) : tensor_view<const T, 1>{};
            const tensor_view<const T, 1> B = affine ? dview1(db) : tensor_view<const T, 1>{};
            const auto cw = affine ? cview1(w) : tensor_view<const float, 1>{};
            const auto cb = affine ? cview1(b) : tensor_view<const float, 1>{};

            dout.poison();
            vectorized ? tc::layer_norm_vectorized<T>(out, X, W, B, eps) : tc::layer_norm_naive<T>(out, X, W, B, eps);
            cpu::layer_norm(view2(ref, rows, D), cview2(x, rows, D), cw, cb, eps);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("layer_norm " + v + a, rows, D));

            dout.poison();
            vectorized ? tc::rms_norm_vectorized<T>(out, X, W, eps) : tc::rms_norm_naive<T>(out, X, W, eps);
            cpu::rms_norm(view2(ref, rows, D), cview2(x, rows, D), cw, eps);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("rms_norm " + v + a, rows, D));

            dout.poison();
            dsum.poison();
            vectorized ? tc::residual_add_layer_norm_vectorized<T>(out, sum, X, R, W, B, eps)
                       : tc::residual_add_layer_norm_naive<T>(out, sum, X, R, W, B, eps);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dsum), s, tolerance{0, 0, 0}, label<T>("residual sum " + v, rows, D));
            cpu::layer_norm(view2(ref, rows, D), cview2(s, rows, D), cw, cb, eps);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(),
                                  label<T>("residual_add_layer_norm " + v + a, rows, D));

            dout.poison();
            dsum.poison();
            vectorized ? tc::residual_add_rms_norm_vectorized<T>(out, sum, X, R, W, eps)
                       : tc::residual_add_rms_norm_naive<T>(out, sum, X, R, W, eps);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dsum), s, tolerance{0, 0, 0}, label<T>("residual sum " + v, rows, D));
            cpu::rms_norm(view2(ref, rows, D), cview2(s, rows, D), cw, eps);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(),
                                  label<T>("residual_add_rms_norm " + v + a, rows, D));
        }
    }
}

template <class T>
void check_norm_layouts(std::uint64_t which) {
    // Rows padded to a longer stride (16 extra elements) and a start one element
    // past alignment (the scalar path); the in-place residual update.
    const index_t rows = 9, D = 256, stride = D + 16;
    const auto x = random_as<T>(static_cast<std::size_t>(rows * stride + 1), which, -2.0f, 2.0f);
    const auto w = random_as<T>(static_cast<std::size_t>(D), which + 1, 0.5f, 1.5f);
    auto dx = upload<T>(x), dw = upload<T>(w);
    tc::device_buffer<T> dout(static_cast<std::size_t>(rows * D));
    const auto out = dview2(dout, rows, D);
    for (index_t offset : {index_t{0}, index_t{1}}) {
        const tensor_view<const T, 2> X(dx.data() + offset, {rows, D}, {stride, 1});
        std::vector<float> xc(static_cast<std::size_t>(rows * D)), ref(xc.size());
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < D; ++j)
                xc[static_cast<std::size_t>(r * D + j)] = x[static_cast<std::size_t>(offset + r * stride + j)];
        cpu::rms_norm(view2(ref, rows, D), cview2(xc, rows, D), cview1(w), 1e-6f);
        dout.poison();
        tc::rms_norm<T>(out, X, dview1(dw), 1e-6f);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(),
                              label<T>("rms_norm strided, offset " + std::to_string(offset), rows, D));
        cpu::layer_norm(view2(ref, rows, D), cview2(xc, rows, D), 1e-6f);
        dout.poison();
        tc::layer_norm<T>(out, X, 1e-6f);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(),
                              label<T>("layer_norm strided, offset " + std::to_string(offset), rows, D));
    }

    // The model's way: the stream updated in place, then compared with add + norm on the GPU.
    const auto n = static_cast<std::size_t>(rows * D);
    const auto h = random_as<T>(n, which + 2, -1.0f, 1.0f), stream0 = random_as<T>(n, which + 3, -3.0f, 3.0f);
    auto dh = upload<T>(h), dstream = upload<T>(stream0), dstream2 = upload<T>(stream0);
    tc::device_buffer<T> dout2(n);
    const auto S = dview2(dstream, rows, D), S2 = dview2(dstream2, rows, D);
    dout.poison();
    tc::residual_add_rms_norm<T>(out, S, dview2(dh, rows, D), S, dview1(dw), 1e-6f);
    dout2.poison();
    tc::add<T>(S2, dview2(dh, rows, D), S2);
    tc::rms_norm<T>(dview2(dout2, rows, D), S2, dview1(dw), 1e-6f);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dstream), tc::to_host(dstream2), tolerance{0, 0, 0},
                          label<T>("in-place stream vs add", rows, D));
    const auto two_steps = tc::to_host(dout2);
    std::vector<float> two_steps_f(n);
    for (std::size_t i = 0; i < n; ++i) two_steps_f[i] = tinyllm::to_float(two_steps[i]);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), two_steps_f, tol_for<T>(), label<T>("fused vs add + rms_norm", rows, D));
}

// The residual add with a deferred projection bias (detail::residual_add_bias_*_norm,
// and v1 through launch_norm): residual_out = x + (residual + bias), out = norm(it),
// against the two steps it replaces on the GPU (bias_activate's identity, as linear adds
// a bias, then residual_add_*_norm) bit for bit, and against the CPU reference. `skew`
// starts the bias and the weight one element past their allocations (not 16-byte
// aligned: the scalar path, for the fusion and the two steps alike, so that both sum
// in the same order).
template <class T>
void check_residual_bias_norms(index_t rows, index_t D, std::uint64_t which, index_t skew) {
    const auto n = static_cast<std::size_t>(rows * D);
    const auto x = random_as<T>(n, which, -3.0f, 5.0f), res = random_as<T>(n, which + 1, -4.0f, 4.0f);
    const auto w = random_as<T>(static_cast<std::size_t>(D + skew), which + 2, 0.5f, 1.5f);
    const auto b = random_as<T>(static_cast<std::size_t>(D), which + 3, -1.0f, 1.0f);
    const auto rb = random_as<T>(static_cast<std::size_t>(D + skew), which + 4, -2.0f, 2.0f);
    auto dx = upload<T>(x), dres = upload<T>(res), dw = upload<T>(w), db = upload<T>(b), drb = upload<T>(rb);
    tc::device_buffer<T> dout(n), dsum(n), dout2(n), dsum2(n), ddelta(n);
    const auto X = dview2(dx, rows, D);
    const auto R = dview2(dres, rows, D);
    const auto out = dview2(dout, rows, D), sum = dview2(dsum, rows, D);
    const auto out2 = dview2(dout2, rows, D), sum2 = dview2(dsum2, rows, D), delta = dview2(ddelta, rows, D);
    const tensor_view<const T, 1> RB(drb.data() + skew, {D});
    const tensor_view<const T, 1> W(dw.data() + skew, {D}), B = dview1(db);
    const tensor_view<const float, 1> cw(w.data() + skew, {D});
    const float eps = 1e-5f;

    // The CPU reference: the stream as stored, residual + bias rounded to T first.
    std::vector<float> s(n), ref(n);
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < D; ++j) {
            const auto i = static_cast<std::size_t>(r * D + j);
            const float biased = tinyllm::to_float(tinyllm::from_float<T>(res[i] + rb[static_cast<std::size_t>(skew + j)]));
            s[i] = x[i] + biased;
        }
    round_to<T>(s);

    // The two steps the fusion replaces: delta = residual + bias (linear's bias kernel).
    tc::bias_activate<T>(delta, R, RB, activation::identity);
    const std::string where = label<T>(" (bias skew " + std::to_string(skew) + ")", rows, D);
    for (bool vectorized : {false, true}) {
        const std::string v = vectorized ? "v2" : "v1";
        for (bool layer : {true, false}) {
            const std::string name = layer ? "residual_add_bias_layer_norm " : "residual_add_bias_rms_norm ";
            dout.poison();
            dsum.poison();
            dout2.poison();
            dsum2.poison();
            if (layer) {
                tc::detail::launch_norm<T, true, true>("test", vectorized, out, sum, X, R, W, B, eps, nullptr, RB);
                tc::detail::launch_norm<T, true, true>("test", vectorized, out2, sum2, X, delta, W, B, eps, nullptr);
                cpu::layer_norm(view2(ref, rows, D), cview2(s, rows, D), cw, cview1(b), eps);
            } else {
                tc::detail::launch_norm<T, false, true>("test", vectorized, out, sum, X, R, W, {}, eps, nullptr, RB);
                tc::detail::launch_norm<T, false, true>("test", vectorized, out2, sum2, X, delta, W, {}, eps, nullptr);
                cpu::rms_norm(view2(ref, rows, D), cview2(s, rows, D), cw, eps);
            }
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dsum), s, tolerance{0, 0, 0}, "residual sum " + name + v + where);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dsum), tc::to_host(dsum2), tolerance{0, 0, 0},
                                  "residual sum vs bias then add " + name + v + where);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), tc::to_host(dout2), tolerance{0, 0, 0},
                                  "out vs bias then add " + name + v + where);
            TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), "out vs CPU " + name + v + where);
        }
    }

    // The launchers cuda::model calls (v2), in place on the stream as it runs them.
    auto dstream = upload<T>(x);
    const auto S = dview2(dstream, rows, D);
    dout.poison();
    tc::detail::residual_add_bias_layer_norm<T>(out, S, S, R, RB, W, B, eps);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dstream), s, tolerance{0, 0, 0}, "in-place stream, layer" + where);
    cpu::layer_norm(view2(ref, rows, D), cview2(s, rows, D), cw, cview1(b), eps);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), "residual_add_bias_layer_norm in place" + where);
    dstream = upload<T>(x);
    dout.poison();
    tc::detail::residual_add_bias_rms_norm<T>(out, dview2(dstream, rows, D), dview2(dstream, rows, D), R, RB, W, eps);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dstream), s, tolerance{0, 0, 0}, "in-place stream, rms" + where);
    cpu::rms_norm(view2(ref, rows, D), cview2(s, rows, D), cw, eps);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), "residual_add_bias_rms_norm in place" + where);

    // A bias of the wrong length is refused before any launch.
    if (D > 1) {
        const tensor_view<const T, 1> short_bias(drb.data(), {D - 1});
        CHECK_THROWS_WITH(tc::detail::residual_add_bias_rms_norm<T>(out, sum, X, R, short_bias, W, eps),
                          tinyllm_test::contains("residual_add_bias_rms_norm: residual_bias has " +
                                                 std::to_string(D - 1) + " elements but the rows have D = " +
                                                 std::to_string(D)));
    }
}

// The decode step's MLP GEMVs (detail::swiglu_gemv, detail::bias_activate_gemv)
// against the double-precision products rounded to T, then the element-wise step
// (what the unfused path stores), and against that unfused path on the GPU (cuBLAS,
// then swiglu / bias_activate). `skew` starts the weights one element past their
// allocation (the scalar path). Outputs poisoned first. Tolerances: twice the
// element type's (two roundings), except float's rel-L2, 1e-4: the float sums of
// K = 1290 terms in two different orders differ by ~1e-5 of a result whose terms
// cancel, and an N = 1 output is a single value, nothing to average over.
template <class T>
tolerance gemv_tol() {
    tolerance t = loose_tol_for<T>();
    if constexpr (std::is_same_v<T, float>) t.rel_l2 = 1e-4;
    return t;
}

// gemv_tol for an element-wise step f applied to the GEMV's sums z (SwiGLU, bias +
// GELU). A sum of K float terms rounds differently when added in another order (the
// kernel against the double reference, or against cuBLAS). The difference grows like
// sqrt(K) roundings (u = 2^-24) of the size of the terms, sqrt(sum_k (x_k w_k)^2), and
// does not shrink when the terms cancel and z is near zero; f then multiplies it by
// |f'(z)|. So where the outputs are much smaller than their terms (z near zero, or
// GELU or SiLU of a very negative z), a rel-L2 bound relative to the outputs alone is
// too tight: one draw of rows 3, N 1 had z = -0.0016 for its largest output, and the
// float GELU's rel-L2 error was 2.6e-4 against a bound of 1e-4.
// sensitivity[i] = sum_j |df_i/dz_j| * (size of z_j's terms). The bound used is the
// larger of gemv_tol's and 4 sqrt(K) u ||sensitivity|| / ||f(z)||, about ten times the
// typical spread of a sequential float sum's rounding.
template <class T>
tolerance carried_gemv_tol(index_t K, const std::vector<double>& sensitivity, const std::vector<float>& result) {
    tolerance t = gemv_tol<T>();
    double s2 = 0.0, r2 = 0.0;
    for (std::size_t i = 0; i < result.size(); ++i) {
        s2 += sensitivity[i] * sensitivity[i];
        r2 += static_cast<double>(result[i]) * result[i];
    }
    const double u = std::ldexp(1.0, -24);
    if (r2 > 0.0) t.rel_l2 = std::max(t.rel_l2, 4.0 * std::sqrt(static_cast<double>(K)) * u * std::sqrt(s2 / r2));
    return t;
}

template <class T>
void check_mlp_gemv(index_t rows, index_t K, index_t N, std::uint64_t which, index_t skew) {
    const auto nx = static_cast<std::size_t>(rows * K), nw = static_cast<std::size_t>(N * K + skew);
    const auto x = random_as<T>(nx, which, -1.0f, 1.0f);
    const auto wg = random_as<T>(nw, which + 1, -0.5f, 0.5f), wu = random_as<T>(nw, which + 2, -0.5f, 0.5f);
    const auto bias = random_as<T>(static_cast<std::size_t>(N), which + 3, -1.0f, 1.0f);
    auto dx = upload<T>(x), dwg = upload<T>(wg), dwu = upload<T>(wu), dbias = upload<T>(bias);
    const auto no = static_cast<std::size_t>(rows * N);
    tc::device_buffer<T> dout(no), da(no), db(no);
    const auto X = dview2(dx, rows, K);
    const tensor_view<const T, 2> WG(dwg.data() + skew, {N, K}), WU(dwu.data() + skew, {N, K});
    const auto out = dview2(dout, rows, N), A = dview2(da, rows, N), B = dview2(db, rows, N);
    const std::string where = label<T>("rows " + std::to_string(rows) + ", K " + std::to_string(K) + ", skew " +
                                           std::to_string(skew) + ", (rows, N)",
                                       rows, N);

    // Row m of x times row n of w in double, rounded to T as a GEMM's output is
    // stored (value), and the size of its terms, sqrt(sum_k (x_k w_k)^2) (terms, for
    // carried_gemv_tol).
    struct product_of {
        float value;
        double terms;
    };
    const auto product = [&](const std::vector<float>& w, index_t m, index_t n) {
        double sum = 0.0, sum2 = 0.0;
        for (index_t k = 0; k < K; ++k) {
            const double t = static_cast<double>(x[static_cast<std::size_t>(m * K + k)]) *
                             w[static_cast<std::size_t>(skew + n * K + k)];
            sum += t;
            sum2 += t * t;
        }
        return product_of{tinyllm::to_float(tinyllm::from_float<T>(static_cast<float>(sum))), std::sqrt(sum2)};
    };
    std::vector<float> ref(no);
    std::vector<double> sensitivity(no);  // for carried_gemv_tol
    const auto rounded = [](float v) { return tinyllm::to_float(tinyllm::from_float<T>(v)); };

    // SwiGLU: the reference, then the unfused GPU path (cuBLAS twice, swiglu).
    // f = silu(g) u: df/dg = silu'(g) u, df/du = silu(g).
    for (index_t m = 0; m < rows; ++m)
        for (index_t n = 0; n < N; ++n) {
            const product_of g = product(wg, m, n), u = product(wu, m, n);
            const auto i = static_cast<std::size_t>(m * N + n);
            ref[i] = rounded(tinyllm::swiglu(g.value, u.value));
            sensitivity[i] = std::fabs(tinyllm::silu_derivative(g.value) * u.value) * g.terms +
                             std::fabs(static_cast<double>(tinyllm::silu(g.value))) * u.terms;
        }
    const tolerance swiglu_tol = carried_gemv_tol<T>(K, sensitivity, ref);
    dout.poison();
    tc::detail::swiglu_gemv<T>(out, X, WG, WU);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, swiglu_tol, "swiglu_gemv vs double, " + where);
    tc::cublas_handle handle;
    da.poison();
    db.poison();
    tc::linear<T>(A, X, WG, {}, handle);
    tc::linear<T>(B, X, WU, {}, handle);
    tc::swiglu<T>(A, A, B);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), tc::to_host(da), swiglu_tol, "swiglu_gemv vs unfused, " + where);

    // Bias + GELU (tanh), and without a bias (identity: the plain GEMV).
    for (const bool with_bias : {true, false}) {
        const activation kind = with_bias ? activation::gelu_tanh : activation::identity;
        for (index_t m = 0; m < rows; ++m)
            for (index_t n = 0; n < N; ++n) {
                const float b = with_bias ? bias[static_cast<std::size_t>(n)] : 0.0f;
                const product_of p = product(wg, m, n);
                const float z = p.value + b;
                const auto i = static_cast<std::size_t>(m * N + n);
                ref[i] = rounded(tinyllm::activate(kind, z));
                sensitivity[i] = std::fabs(tinyllm::activate_derivative(kind, z)) * (p.terms + std::fabs(b));
            }
        const tolerance tol = carried_gemv_tol<T>(K, sensitivity, ref);
        const tensor_view<const T, 1> bv = with_bias ? dview1(dbias) : tensor_view<const T, 1>{};
        dout.poison();
        tc::detail::bias_activate_gemv<T>(out, X, WG, bv, kind);
        const std::string what = std::string(with_bias ? "bias_activate_gemv gelu_tanh" : "bias_activate_gemv plain");
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol, what + " vs double, " + where);
        da.poison();
        tc::linear<T>(A, X, WG, {}, handle);
        if (with_bias) tc::bias_activate<T>(A, A, bv, kind);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), tc::to_host(da), tol, what + " vs unfused, " + where);
    }
}

// norm.cuh's v3 (detail::residual_add_*_norm_gemv): x += in proj^T (+ proj_bias),
// out = norm(x) in one GEMV launch whose last block normalizes. Checked step by step:
//   * the stream against the products in double, each rounded to T as cuBLAS
//     stores it, then the bias rounding and the add (gemv_tol: the sum's order);
//   * out against the CPU norm of the stream the GPU wrote (the norm alone);
//   * both against the unfused GPU steps (cuBLAS, residual_add_bias_*_norm);
//   * a second launch (the arrival counter must be back at zero) gives the same
//     bits, and the counter is zero afterwards.
// `skew` starts x and out one element past their allocation: the tail's scalar path.
template <class T, bool Layer>
void check_residual_norm_gemv(index_t rows, index_t K, index_t D, bool with_bias, index_t skew, std::uint64_t which) {
    const auto nx = static_cast<std::size_t>(rows * D), ni = static_cast<std::size_t>(rows * K);
    const auto x = random_as<T>(nx, which, -2.0f, 2.0f), in = random_as<T>(ni, which + 1, -1.0f, 1.0f);
    const auto proj = random_as<T>(static_cast<std::size_t>(D * K), which + 2, -0.5f, 0.5f);
    const auto pb = random_as<T>(static_cast<std::size_t>(D), which + 3, -1.0f, 1.0f);
    const auto w = random_as<T>(static_cast<std::size_t>(D), which + 4, 0.5f, 1.5f);
    const auto b = random_as<T>(static_cast<std::size_t>(D), which + 5, -0.5f, 0.5f);
    const float eps = 1e-5f;
    std::vector<float> x_skewed(nx + static_cast<std::size_t>(skew), 0.0f);
    std::copy(x.begin(), x.end(), x_skewed.begin() + skew);
    auto dx = upload<T>(x_skewed), din = upload<T>(in), dproj = upload<T>(proj), dpb = upload<T>(pb),
         dw = upload<T>(w), db = upload<T>(b);
    tc::device_buffer<T> dout(nx + static_cast<std::size_t>(skew)), dsum(nx), dref_out(nx), ddelta(nx);
    tc::device_buffer<unsigned> arrivals(1);
    TINYLLM_CUDA_CHECK(cudaMemset(arrivals.data(), 0, sizeof(unsigned)));
    const tensor_view<T, 2> X(dx.data() + skew, {rows, D}), out(dout.data() + skew, {rows, D});
    const auto IN = dview2(din, rows, K), P = dview2(dproj, D, K);
    const tensor_view<const T, 1> PB = with_bias ? dview1(dpb) : tensor_view<const T, 1>{};
    const auto W = dview1(dw), B = dview1(db);
    const std::string where = label<T>(std::string(Layer ? "layer" : "rms") + (with_bias ? " + bias" : "") +
                                           ", K " + std::to_string(K) + ", skew " + std::to_string(skew),
                                       rows, D);
    const auto fused = [&] {
        if constexpr (Layer) tc::detail::residual_add_layer_norm_gemv<T>(out, X, IN, P, PB, W, B, eps, arrivals.data());
        else tc::detail::residual_add_rms_norm_gemv<T>(out, X, IN, P, PB, W, eps, arrivals.data());
    };
    const auto cpu_norm = [&](std::vector<float>& ref, const std::vector<float>& stream) {
        if constexpr (Layer) cpu::layer_norm(view2(ref, rows, D), cview2(stream, rows, D), cview1(w), cview1(b), eps);
        else cpu::rms_norm(view2(ref, rows, D), cview2(stream, rows, D), cview1(w), eps);
    };
    const auto rounded = [](double v) { return tinyllm::to_float(tinyllm::from_float<T>(static_cast<float>(v))); };
    const auto host_rows = [&](const tc::device_buffer<T>& buf) {  // the (rows, D) view's elements
        const auto all = tc::to_host(buf);
        std::vector<float> v(nx);
        for (std::size_t i = 0; i < nx; ++i) v[i] = tinyllm::to_float(all[static_cast<std::size_t>(skew) + i]);
        return v;
    };

    // The stream in double: x + round(round(in proj^T) + bias).
    std::vector<float> stream(nx), ref(nx);
    for (index_t m = 0; m < rows; ++m)
        for (index_t n = 0; n < D; ++n) {
            double sum = 0.0;
            for (index_t k = 0; k < K; ++k)
                sum += static_cast<double>(in[static_cast<std::size_t>(m * K + k)]) * proj[static_cast<std::size_t>(n * K + k)];
            float delta = rounded(sum);
            if (with_bias) delta = rounded(static_cast<double>(delta) + pb[static_cast<std::size_t>(n)]);
            const auto i = static_cast<std::size_t>(m * D + n);
            stream[i] = rounded(static_cast<double>(x[i]) + delta);
        }

    dout.poison();
    fused();
    const std::vector<float> got_stream = host_rows(dx), got_out = host_rows(dout);
    TINYLLM_REQUIRE_CLOSE(got_stream, stream, gemv_tol<T>(), "v3 stream vs double, " + where);
    cpu_norm(ref, got_stream);
    TINYLLM_REQUIRE_CLOSE(got_out, ref, tol_for<T>(), "v3 norm vs the CPU norm of its stream, " + where);
    REQUIRE(tc::to_host(arrivals)[0] == 0u);

    // The unfused steps on the GPU: cuBLAS without the bias, then v2 with the deferred bias.
    tc::cublas_handle handle;
    auto dx2 = upload<T>(x);
    const auto X2 = dview2(dx2, rows, D), delta = dview2(ddelta, rows, D), ref_out = dview2(dref_out, rows, D);
    tc::linear<T>(delta, IN, P, {}, handle);
    dref_out.poison();
    if constexpr (Layer) tc::detail::residual_add_bias_layer_norm<T>(ref_out, X2, X2, delta, PB, W, B, eps);
    else tc::detail::residual_add_bias_rms_norm<T>(ref_out, X2, X2, delta, PB, W, eps);
    TINYLLM_REQUIRE_CLOSE(got_stream, tc::to_host(dx2), gemv_tol<T>(), "v3 stream vs cuBLAS + v2, " + where);
    TINYLLM_REQUIRE_CLOSE(got_out, tc::to_host(dref_out), gemv_tol<T>(), "v3 out vs cuBLAS + v2, " + where);

    // Again from the same stream: the same bits (the counter was reset).
    const auto fresh = upload<T>(x_skewed);  // into dx itself: X views its memory
    TINYLLM_CUDA_CHECK(cudaMemcpy(dx.data(), fresh.data(), x_skewed.size() * sizeof(T), cudaMemcpyDeviceToDevice));
    dout.poison();
    fused();
    TINYLLM_REQUIRE_CLOSE(host_rows(dx), got_stream, tolerance{0, 0, 0}, "v3 stream, second launch, " + where);
    TINYLLM_REQUIRE_CLOSE(host_rows(dout), got_out, tolerance{0, 0, 0}, "v3 out, second launch, " + where);
    REQUIRE(tc::to_host(arrivals)[0] == 0u);
}

const std::vector<std::pair<index_t, index_t>> map_shapes = {{1, 1}, {3, 5}, {4, 64}, {7, 1001}, {16, 4096}, {2, 24}};

template <class T>
void check_elementwise(index_t rows, index_t cols, std::uint64_t which) {
    const auto n = static_cast<std::size_t>(rows * cols);
    const auto x = random_as<T>(n, which, -6.0f, 6.0f), y = random_as<T>(n, which + 1, -3.0f, 3.0f);
    const auto bias = random_as<T>(static_cast<std::size_t>(cols), which + 2, -1.0f, 1.0f);
    auto dx = upload<T>(x), dy = upload<T>(y), dbias = upload<T>(bias);
    tc::device_buffer<T> dout(n);
    const auto X = dview2(dx, rows, cols), Y = dview2(dy, rows, cols), out = dview2(dout, rows, cols);
    std::vector<float> ref(n);
    for (activation kind :
         {activation::identity, activation::relu, activation::gelu_erf, activation::gelu_tanh, activation::silu}) {
        const std::string k(tinyllm::activation_name(kind));
        dout.poison();
        tc::activate<T>(out, X, kind);
        cpu::activate(view2(ref, rows, cols), cview2(x, rows, cols), kind);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("activate " + k, rows, cols));
        dout.poison();
        tc::bias_activate<T>(out, X, dview1(dbias), kind);
        cpu::bias_activate(view2(ref, rows, cols), cview2(x, rows, cols), cview1(bias), kind);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("bias_activate " + k, rows, cols));
    }
    cpu::swiglu(view2(ref, rows, cols), cview2(x, rows, cols), cview2(y, rows, cols));
    dout.poison();
    tc::swiglu<T>(out, X, Y);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("swiglu fused", rows, cols));
    dout.poison();
    tc::swiglu_naive<T>(out, X, Y);
    // The unfused version rounds silu(gate) to T before the product: one more rounding.
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, gemv_tol<T>(), label<T>("swiglu naive", rows, cols));
    // In place (out = gate), as swiglu_mlp runs it.
    auto dgate = upload<T>(x);
    tc::swiglu<T>(dview2(dgate, rows, cols), dview2(dgate, rows, cols), Y);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dgate), ref, tol_for<T>(), label<T>("swiglu in place", rows, cols));

    cpu::add(view2(ref, rows, cols), cview2(x, rows, cols), cview2(y, rows, cols));
    dout.poison();
    tc::add<T>(out, X, Y);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("add", rows, cols));
    cpu::multiply(view2(ref, rows, cols), cview2(x, rows, cols), cview2(y, rows, cols));
    dout.poison();
    tc::multiply<T>(out, X, Y);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("multiply", rows, cols));
}

template <class T>
void check_swiglu_packed(std::uint64_t which) {
    // gate and up as the two halves of one (rows, 2H) projection (row stride 2H),
    // H not a multiple of 8 in one case (scalar path) and a multiple in the other.
    for (index_t H : {index_t{40}, index_t{37}}) {
        const index_t rows = 5;
        const auto gu = random_as<T>(static_cast<std::size_t>(rows * 2 * H), which, -4.0f, 4.0f);
        auto dgu = upload<T>(gu);
        tc::device_buffer<T> dout(static_cast<std::size_t>(rows * H));
        const tensor_view<const T, 2> both(dgu.data(), {rows, 2 * H});
        dout.poison();
        tc::swiglu<T>(dview2(dout, rows, H), both.narrow(1, 0, H), both.narrow(1, H, H));
        std::vector<float> ref(static_cast<std::size_t>(rows * H));
        for (index_t r = 0; r < rows; ++r)
            for (index_t c = 0; c < H; ++c)
                ref[static_cast<std::size_t>(r * H + c)] =
                    tinyllm::swiglu(gu[static_cast<std::size_t>(r * 2 * H + c)], gu[static_cast<std::size_t>(r * 2 * H + H + c)]);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>("swiglu packed gate|up", rows, H));
    }
}

template <class T>
void check_linear(std::uint64_t which) {
    const tc::cublas_handle handle;
    for (auto [rows, K, N] : std::vector<std::tuple<index_t, index_t, index_t>>{{5, 37, 11}, {1, 64, 128}, {33, 256, 96}}) {
        const float scale = 1.0f / std::sqrt(static_cast<float>(K));
        const auto x = random_as<T>(static_cast<std::size_t>(rows * K), which, -1.0f, 1.0f);
        const auto W = random_as<T>(static_cast<std::size_t>(N * K), which + 1, -scale, scale);  // (N, K)
        const auto b = random_as<T>(static_cast<std::size_t>(N), which + 2, -1.0f, 1.0f);
        std::vector<float> Wt(W.size());  // (K, N)
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) Wt[static_cast<std::size_t>(k * N + n)] = W[static_cast<std::size_t>(n * K + k)];
        auto dx = upload<T>(x), dW = upload<T>(W), dWt = upload<T>(Wt), db = upload<T>(b);
        tc::device_buffer<T> dout(static_cast<std::size_t>(rows * N));
        const auto out = dview2(dout, rows, N);
        std::vector<float> ref(dout.size()), ref_nobias(dout.size());
        cpu::linear(view2(ref, rows, N), cview2(x, rows, K), cview2(W, N, K), cview1(b));
        cpu::linear(view2(ref_nobias, rows, N), cview2(x, rows, K), cview2(W, N, K), {});
        // With a bias the GEMM output is rounded to T before the bias is added.
        std::vector<float> ref_rounded = ref_nobias;
        round_to<T>(ref_rounded);
        for (index_t r = 0; r < rows; ++r)
            for (index_t n = 0; n < N; ++n) ref_rounded[static_cast<std::size_t>(r * N + n)] += b[static_cast<std::size_t>(n)];

        dout.poison();
        tc::linear<T>(out, dview2(dx, rows, K), dview2(dW, N, K), dview1(db), handle);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref_rounded, gemv_tol<T>(), label<T>("linear + bias", rows, N));
        dout.poison();
        tc::linear<T>(out, dview2(dx, rows, K), dview2(dWt, K, N).transpose(0, 1), {}, handle);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref_nobias, gemv_tol<T>(), label<T>("linear, (K, N) weight", rows, N));
        dout.poison();
        tc::matmul<T>(out, dview2(dx, rows, K), dview2(dWt, K, N), handle);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref_nobias, gemv_tol<T>(), label<T>("matmul", rows, N));
    }
}

template <class T>
void check_mlps(std::uint64_t which) {
    const tc::cublas_handle handle;
    const index_t rows = 33, D = 64, H = 176;
    const auto x = random_as<T>(static_cast<std::size_t>(rows * D), which, -2.0f, 2.0f);
    const float sd = 1.0f / std::sqrt(static_cast<float>(D)), sh = 1.0f / std::sqrt(static_cast<float>(H));
    const auto w1 = random_as<T>(static_cast<std::size_t>(H * D), which + 1, -sd, sd);
    const auto w2 = random_as<T>(static_cast<std::size_t>(H * D), which + 2, -sd, sd);
    const auto w3 = random_as<T>(static_cast<std::size_t>(D * H), which + 3, -sh, sh);
    const auto b1 = random_as<T>(static_cast<std::size_t>(H), which + 4, -0.5f, 0.5f);
    const auto b3 = random_as<T>(static_cast<std::size_t>(D), which + 5, -0.5f, 0.5f);
    auto dx = upload<T>(x), dw1 = upload<T>(w1), dw2 = upload<T>(w2), dw3 = upload<T>(w3), db1 = upload<T>(b1),
         db3 = upload<T>(b3);
    const auto n_out = static_cast<std::size_t>(rows * D), n_hidden = static_cast<std::size_t>(rows * H);
    tc::device_buffer<T> dout(n_out), dh1(n_hidden), dh2(n_hidden);
    const auto X = dview2(dx, rows, D);
    const auto out = dview2(dout, rows, D);

    // The reference composition, rounding to T wherever the GPU stores a T.
    auto lin = [&](const std::vector<float>& in, index_t K, const std::vector<float>& W, index_t N) {
        std::vector<float> y(static_cast<std::size_t>(rows * N));
        cpu::linear(view2(y, rows, N), cview2(in, rows, K), cview2(W, N, K), {});
        round_to<T>(y);
        return y;
    };

    // GPT-2 MLP.
    {
        const tinyllm::gpt2_mlp_weights<T> w{dw1.view(extents<2>{H, D}), dview1(db1), dw3.view(extents<2>{D, H}),
                                             dview1(db3)};
        dout.poison();
        dh1.poison();
        tc::gpt2_mlp<T>(out, X, w, dview2(dh1, rows, H), handle);
        auto h = lin(x, D, w1, H);
        cpu::bias_activate(view2(h, rows, H), cview2(h, rows, H), cview1(b1), activation::gelu_tanh);
        round_to<T>(h);
        auto y = lin(h, H, w3, D);
        cpu::bias_activate(view2(y, rows, D), cview2(y, rows, D), cview1(b3), activation::identity);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), y, gemv_tol<T>(), label<T>("gpt2_mlp", rows, D));
        // And close to the unrounded float reference.
        std::vector<float> exact(n_out);
        const tinyllm::gpt2_mlp_weights<float> cw{cview2(w1, H, D), cview1(b1), cview2(w3, D, H), cview1(b3)};
        cpu::gpt2_mlp(view2(exact, rows, D), cview2(x, rows, D), cw);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), exact, tolerance{4 * gemv_tol<T>().abs, 4 * gemv_tol<T>().rel, 2 * gemv_tol<T>().rel_l2},
                              label<T>("gpt2_mlp vs float", rows, D));
    }
    // SwiGLU MLP.
    {
        const tinyllm::swiglu_mlp_weights<T> w{dw1.view(extents<2>{H, D}), dw2.view(extents<2>{H, D}),
                                               dw3.view(extents<2>{D, H})};
        dout.poison();
        dh1.poison();
        dh2.poison();
        tc::swiglu_mlp<T>(out, X, w, dview2(dh1, rows, H), dview2(dh2, rows, H), handle);
        auto g = lin(x, D, w1, H);
        const auto u = lin(x, D, w2, H);
        cpu::swiglu(view2(g, rows, H), cview2(g, rows, H), cview2(u, rows, H));
        round_to<T>(g);
        const auto y = lin(g, H, w3, D);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), y, gemv_tol<T>(), label<T>("swiglu_mlp", rows, D));
    }
}

}  // namespace

TEST_CASE("CUDA norms (naive, vectorized, fused residual) match the CPU reference", "[cuda][norm]") {
    std::uint64_t which = 100;
    for (auto [rows, D] : norm_shapes) {
        check_norms<float>(rows, D, which += 10);
        check_norms<bfloat16>(rows, D, which += 10);
        check_norms<float16>(rows, D, which += 10);
    }
}

TEST_CASE("CUDA norms on strided and misaligned rows, and the in-place residual stream", "[cuda][norm]") {
    check_norm_layouts<float>(500);
    check_norm_layouts<bfloat16>(510);
    check_norm_layouts<float16>(520);
}

TEST_CASE("CUDA residual add + norm with a projection's deferred bias: bias then add, bit for bit", "[cuda][norm]") {
    std::uint64_t which = 700;
    for (auto [rows, D] : norm_shapes)
        for (index_t skew : {index_t{0}, index_t{1}}) {
            check_residual_bias_norms<float>(rows, D, which += 10, skew);
            check_residual_bias_norms<bfloat16>(rows, D, which += 10, skew);
            check_residual_bias_norms<float16>(rows, D, which += 10, skew);
        }
}

TEST_CASE("CUDA MLP GEMVs (SwiGLU, bias + activation) for a decode step match the products in double and the "
          "unfused kernels",
          "[cuda][ffn][gemv]") {
    std::uint64_t which = 900;
    for (const index_t rows : {1, 3, 8})
        for (const index_t K : {30, 32, 40, 1288, 1290})
            for (const index_t N : {1, 7, 64}) {
                const index_t skew = (K + N) % 3 == 0 ? 1 : 0;
                check_mlp_gemv<float>(rows, K, N, which += 10, skew);
                check_mlp_gemv<bfloat16>(rows, K, N, which += 10, skew);
            }
    check_mlp_gemv<float16>(2, 64, 9, which += 10, 0);
}

TEST_CASE("CUDA projection + residual add + norm in one GEMV (norm v3) matches the products in double, the CPU "
          "norm and the unfused kernels",
          "[cuda][norm][gemv]") {
    std::uint64_t which = 1900;
    for (const index_t rows : {1, 3, 8})
        for (const auto& [K, D] : {std::pair<index_t, index_t>{32, 1}, {40, 7}, {64, 64}, {1288, 40}, {72, 2056}})
            for (const bool with_bias : {false, true}) {
                const index_t skew = (rows + D) % 2 == 0 ? 1 : 0;
                check_residual_norm_gemv<float, true>(rows, K, D, with_bias, skew, which += 10);
                check_residual_norm_gemv<float, false>(rows, K, D, with_bias, skew, which += 10);
                check_residual_norm_gemv<bfloat16, true>(rows, K, D, with_bias, skew, which += 10);
                check_residual_norm_gemv<bfloat16, false>(rows, K, D, with_bias, skew, which += 10);
            }
    check_residual_norm_gemv<float16, false>(2, 64, 24, true, 0, which += 10);
}

TEST_CASE("CUDA projection + residual add + norm GEMV rejects bad arguments before launching", "[cuda][norm][gemv][error]") {
    tc::device_buffer<float> x(9 * 16), in(9 * 32), p(16 * 32), w(16), out(9 * 16);
    tc::device_buffer<unsigned> arrivals(1);
    TINYLLM_CUDA_CHECK(cudaMemset(arrivals.data(), 0, sizeof(unsigned)));
    const auto P = dview2(p, 16, 32);
    const auto W = dview1(w);
    const tensor_view<const float, 1> none;
    const auto X = [&](index_t rows) { return tensor_view<float, 2>(x.data(), {rows, 16}); };
    const auto O = [&](index_t rows) { return tensor_view<float, 2>(out.data(), {rows, 16}); };
    const auto I = [&](index_t rows) { return tensor_view<const float, 2>(in.data(), {rows, 32}); };
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(O(9), X(9), I(9), P, none, W, 1e-5f, arrivals.data()),
                      tinyllm_test::contains("residual_add_rms_norm_gemv: 9 rows; the GEMV takes at most 8"));
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(O(2), X(2), I(3), P, none, W, 1e-5f, arrivals.data()),
                      tinyllm_test::contains("x (2, 16) and in (3, 32) do not fit a projection of 32 inputs to 16 outputs"));
    CHECK_THROWS_WITH(tc::detail::residual_add_layer_norm_gemv<float>(O(2), X(2), I(2), P, tensor_view<const float, 1>(w.data(), {15}), W,
                                                                      none, 1e-5f, arrivals.data()),
                      tinyllm_test::contains("residual_add_layer_norm_gemv: bias has 15 elements but the weight has N = 16"));
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(O(2), X(2), I(2), P, none, W, 1e-5f, nullptr),
                      tinyllm_test::contains("arrivals must be a zeroed device counter"));
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(O(2), X(2), tensor_view<const float, 2>(x.data(), {2, 32}),
                                                                    P, none, W, 1e-5f, arrivals.data()),
                      tinyllm_test::contains("in must not overlap x or out"));
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(X(2), X(2), I(2), P, none, W, 1e-5f, arrivals.data()),
                      tinyllm_test::contains("out must not overlap x"));
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(O(2), X(2), I(2), P, none, W, 0.0f, arrivals.data()),
                      tinyllm_test::contains("eps = 0 must be positive"));
    REQUIRE(tc::to_host(arrivals)[0] == 0u);
}

TEST_CASE("CUDA MLP GEMVs reject bad arguments before launching", "[cuda][ffn][gemv][error]") {
    tc::device_buffer<float> x(9 * 16), w(32 * 16), u(32 * 16), out(9 * 32), bias(31);
    const auto X = dview2(x, 9, 16), W = dview2(w, 32, 16), U = dview2(u, 32, 16), out9 = dview2(out, 9, 32);
    CHECK_THROWS_WITH(tc::detail::swiglu_gemv<float>(out9, X, W, U),
                      tinyllm_test::contains("swiglu_gemv: 9 rows; the GEMV takes at most 8"));
    // An output over the input or the weights (other warps still read them: wrong values, no error).
    const tensor_view<float, 2> over_x(x.data(), {2, 32});
    CHECK_THROWS_WITH(tc::detail::swiglu_gemv<float>(over_x, tensor_view<const float, 2>(x.data(), {2, 16}), W, U),
                      tinyllm_test::contains("swiglu_gemv: hidden must not share memory with x"));
    CHECK_THROWS_WITH(tc::detail::bias_activate_gemv<float>(tensor_view<float, 2>(w.data(), {2, 32}),
                                                            tensor_view<const float, 2>(x.data(), {2, 16}), W,
                                                            tensor_view<const float, 1>{}, activation::identity),
                      tinyllm_test::contains("bias_activate_gemv: out must not share memory with weight"));
    const tensor_view<const float, 2> X2(x.data(), {2, 16});
    const tensor_view<float, 2> out2(out.data(), {2, 32});
    CHECK_THROWS_WITH(tc::detail::swiglu_gemv<float>(out2, X2, W, dview2(u, 16, 32)),
                      tinyllm_test::contains("swiglu_gemv: hidden (2, 32), x (2, 16), gate_weight (32, 16) and "
                                             "up_weight (16, 32) must be"));
    CHECK_THROWS_WITH(tc::detail::bias_activate_gemv<float>(out2, X2, W, dview1(bias), activation::gelu_tanh),
                      tinyllm_test::contains("bias_activate_gemv: bias has 31 elements but the weight has N = 32"));
    const tensor_view<const float, 2> strided(x.data(), {2, 8}, {16, 1});  // rows 16 apart, 8 wide
    CHECK_THROWS_WITH(tc::detail::bias_activate_gemv<float>(out2, strided, tensor_view<const float, 2>(w.data(), {32, 8}),
                                                            tensor_view<const float, 1>{}, activation::identity),
                      tinyllm_test::contains("bias_activate_gemv: x (shape (2, 8), strides (16, 1)) must be contiguous"));
}

TEST_CASE("CUDA element-wise kernels match the CPU reference", "[cuda][activation]") {
    std::uint64_t which = 600;
    for (auto [rows, cols] : map_shapes) {
        check_elementwise<float>(rows, cols, which += 10);
        check_elementwise<bfloat16>(rows, cols, which += 10);
        check_elementwise<float16>(rows, cols, which += 10);
    }
    check_swiglu_packed<float>(700);
    check_swiglu_packed<bfloat16>(710);
    check_swiglu_packed<float16>(720);
}

TEST_CASE("CUDA linear, matmul and the MLPs match the CPU reference", "[cuda][ffn]") {
    check_linear<float>(800);
    check_linear<bfloat16>(810);
    check_linear<float16>(820);
    check_mlps<float>(900);
    check_mlps<bfloat16>(910);
    check_mlps<float16>(920);
}

TEST_CASE("CUDA layer launchers reject bad arguments before launching", "[cuda][error]") {
    tc::device_buffer<float> a(12), b(12), w(3);
    const auto A = a.view(extents<2>{3, 4});
    CHECK_THROWS_WITH(tc::rms_norm<float>(b.view(extents<2>{4, 3}), A, 1e-5f),
                      tinyllm_test::contains("out has shape (4, 3) but x has shape (3, 4)"));
    CHECK_THROWS_WITH(tc::layer_norm<float>(b.view(extents<2>{3, 4}), A, w.view(extents<1>{3}), {}, 1e-5f),
                      tinyllm_test::contains("weight has 3 elements"));
    CHECK_THROWS_WITH(tc::rms_norm_naive<float>(b.view(extents<2>{3, 4}), A, {}, -1.0f),
                      tinyllm_test::contains("must be positive"));
    const tensor_view<const float, 2> columns(a.data(), {4, 3}, {1, 4});  // x stored transposed
    CHECK_THROWS_WITH(tc::rms_norm<float>(b.view(extents<2>{4, 3}), columns, 1e-5f),
                      tinyllm_test::contains("stride(1) == 1"));
    CHECK_THROWS_WITH(tc::swiglu<float>(b.view(extents<2>{4, 3}), A, A), tinyllm_test::contains("swiglu: out has shape"));
    CHECK_THROWS_WITH(tc::swiglu_naive<float>(b.view(extents<2>{3, 4}), A, b.view(extents<2>{3, 4})),
                      tinyllm_test::contains("out must not be `up`"));
    CHECK_THROWS_WITH(tc::bias_activate<float>(b.view(extents<2>{3, 4}), A, w.view(extents<1>{3}), activation::relu),
                      tinyllm_test::contains("bias has 3 elements"));
    const tc::cublas_handle handle;
    CHECK_THROWS_WITH(tc::linear<float>(b.view(extents<2>{3, 4}), A, w.view(extents<2>{3, 1}), {}, handle),
                      tinyllm_test::contains("in_features must equal"));
    {  // A float output from bfloat16 inputs takes no bias: refused before cuBLAS writes out.
        tc::device_buffer<bfloat16> xb(4), wb(8), bb(2);
        auto out = tc::to_device(std::vector<float>{-7.0f, -7.0f});
        const auto with_bias = [&] {
            tc::linear<bfloat16, float>(out.view(extents<2>{1, 2}), xb.view(extents<2>{1, 4}), wb.view(extents<2>{2, 4}),
                                        bb.view(extents<1>{2}), handle);
        };
        CHECK_THROWS_WITH(with_bias(), tinyllm_test::contains("a float output from bfloat16 inputs takes no bias"));
        CHECK(tc::to_host(out) == std::vector<float>{-7.0f, -7.0f});
    }
    try {
        TINYLLM_CUBLAS_CHECK(CUBLAS_STATUS_INVALID_VALUE);
        FAIL("no exception was thrown");
    } catch (const tinyllm::cublas_error& e) {
        CHECK(e.status() == CUBLAS_STATUS_INVALID_VALUE);
        CHECK(std::string(e.what()).find("CUBLAS_STATUS_INVALID_VALUE") != std::string::npos);
    }
    // Nothing to do is not an error.
    tc::device_buffer<float> none(0);
    CHECK_NOTHROW(tc::rms_norm<float>(none.view(extents<2>{0, 12}), none.view(extents<2>{0, 12}), 1e-5f));
    CHECK_NOTHROW(tc::swiglu<float>(none.view(extents<2>{0, 12}), none.view(extents<2>{0, 12}), none.view(extents<2>{0, 12})));
}

TEST_CASE("CUDA norms refuse outputs that overlap an input other than exactly in place, before launching",
          "[cuda][norm][error]") {
    const index_t rows = 4, D = 8;
    const float eps = 1e-5f;
    const auto host = random_as<float>(static_cast<std::size_t>((rows + 1) * D), 2100, -2.0f, 2.0f);
    const auto res = random_as<float>(static_cast<std::size_t>(rows * D), 2101, -2.0f, 2.0f);
    const auto w = random_as<float>(static_cast<std::size_t>(D), 2102, 0.5f, 1.5f);
    const auto b = random_as<float>(static_cast<std::size_t>(D), 2103);
    auto dbuf = tc::to_device(host), dres = tc::to_device(res), dw = tc::to_device(w), db = tc::to_device(b);
    tc::device_buffer<float> dout(static_cast<std::size_t>(rows * D)), dsum(static_cast<std::size_t>(rows * D));
    const tensor_view<const float, 2> X(dbuf.data(), {rows, D});
    const tensor_view<float, 2> shifted(dbuf.data() + D, {rows, D});  // one row past X
    const auto R = dview2(dres, rows, D), out = dview2(dout, rows, D), sum = dview2(dsum, rows, D);
    const auto W = dview1(dw), B = dview1(db);
    CHECK_THROWS_WITH(
        tc::rms_norm<float>(shifted, X, W, eps),
        tinyllm_test::contains("rms_norm_vectorized: out must be exactly x (in place) or not share memory"));
    CHECK_THROWS_WITH(tc::layer_norm_naive<float>(shifted, X, W, B, eps),
                      tinyllm_test::contains("layer_norm_naive: out must be exactly x (in place)"));
    CHECK_THROWS_WITH(tc::rms_norm<float>(tensor_view<float, 2>(dout.data(), {rows, D}, {0, 1}), R, W, eps),
                      tinyllm_test::contains("out has shape (4, 8) and strides (0, 1), so two of its elements share "
                                             "an address"));
    CHECK_THROWS_WITH(tc::rms_norm<float>(tensor_view<float, 2>(dw.data(), {1, D}),
                                          tensor_view<float, 2>(dres.data(), {1, D}), W, eps),
                      tinyllm_test::contains("rms_norm_vectorized: out must not share memory with weight"));
    CHECK_THROWS_WITH(tc::layer_norm<float>(tensor_view<float, 2>(db.data(), {1, D}),
                                            tensor_view<float, 2>(dres.data(), {1, D}), W, B, eps),
                      tinyllm_test::contains("layer_norm_vectorized: out must not share memory with bias"));
    CHECK_THROWS_WITH(tc::residual_add_rms_norm<float>(sum, sum, X, R, W, eps),
                      tinyllm_test::contains("residual_add_rms_norm_vectorized: out must not share memory with "
                                             "residual_out"));
    CHECK_THROWS_WITH(tc::residual_add_layer_norm_naive<float>(out, shifted, R, X, W, B, eps),
                      tinyllm_test::contains("residual_out must be exactly residual (in place)"));
    CHECK_THROWS_WITH(tc::residual_add_rms_norm<float>(out, shifted, X, R, W, eps),
                      tinyllm_test::contains("residual_out must be exactly x (in place)"));
    CHECK_THROWS_WITH(tc::residual_add_rms_norm<float>(shifted, sum, R, X, W, eps),
                      tinyllm_test::contains("out must be exactly residual (in place)"));
    CHECK_THROWS_WITH(tc::detail::residual_add_bias_rms_norm<float>(
                          out, sum, X, R, tensor_view<const float, 1>(dsum.data(), {D}), W, eps),
                      tinyllm_test::contains("residual_add_bias_rms_norm: residual_out must not share memory with "
                                             "residual_bias"));
    // The backward: dx over dout shifted, a parameter gradient over an input.
    tc::device_buffer<float> dgw(static_cast<std::size_t>(D));
    const tensor_view<float, 1> GW(dgw.data(), {D});
    CHECK_THROWS_WITH(tc::rms_norm_backward<float>(shifted, GW, X, R, W, eps),
                      tinyllm_test::contains("rms_norm_backward: dx must be exactly dout (in place)"));
    CHECK_THROWS_WITH(tc::layer_norm_backward<float>(out, GW, tensor_view<float, 1>(dw.data(), {D}), X, R, W, eps),
                      tinyllm_test::contains("layer_norm_backward: dbias must not share memory with weight"));
    CHECK_THROWS_WITH(tc::rms_norm_backward<float>(out, tensor_view<float, 1>(dout.data(), {D}), X, R, W, eps),
                      tinyllm_test::contains("rms_norm_backward: dweight must not share memory with dx"));
    // v3: the stream x is written too, so not over the weight; out not over the projection.
    tc::device_buffer<float> din(static_cast<std::size_t>(2 * 32)), dproj(static_cast<std::size_t>(D * 32));
    tc::device_buffer<unsigned> arrivals(1);
    TINYLLM_CUDA_CHECK(cudaMemset(arrivals.data(), 0, sizeof(unsigned)));
    const tensor_view<const float, 2> IN(din.data(), {2, 32}), P(dproj.data(), {D, 32});
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(
                          tensor_view<float, 2>(dout.data(), {1, D}), tensor_view<float, 2>(dw.data(), {1, D}),
                          tensor_view<const float, 2>(din.data(), {1, 32}), P, {}, W, eps, arrivals.data()),
                      tinyllm_test::contains("residual_add_rms_norm_gemv: x must not share memory with weight"));
    CHECK_THROWS_WITH(
        tc::detail::residual_add_rms_norm_gemv<float>(tensor_view<float, 2>(dproj.data(), {2, D}), sum.narrow(0, 0, 2),
                                                      IN, P, {}, W, eps, arrivals.data()),
        tinyllm_test::contains("residual_add_rms_norm_gemv: out must not share memory with proj"));
    REQUIRE(tc::to_host(arrivals)[0] == 0u);

    // Exactly in place still works, and gives the out-of-place bits.
    dout.poison();
    dsum.poison();
    tc::residual_add_layer_norm<float>(out, sum, X, R, W, B, eps);
    const auto want = tc::to_host(dout), want_sum = tc::to_host(dsum);
    auto dx_io = tc::to_device(std::vector<float>(host.begin(), host.begin() + rows * D)), dres_io = tc::to_device(res);
    const auto X_io = dview2(dx_io, rows, D), R_io = dview2(dres_io, rows, D);
    // out is x, residual_out is residual.
    CHECK_NOTHROW(tc::residual_add_layer_norm<float>(X_io, R_io, X_io, R_io, W, B, eps));
    CHECK(tc::to_host(dx_io) == want);
    CHECK(tc::to_host(dres_io) == want_sum);
    dx_io = tc::to_device(std::vector<float>(host.begin(), host.begin() + rows * D));
    dres_io = tc::to_device(res);
    const auto X_io2 = dview2(dx_io, rows, D), R_io2 = dview2(dres_io, rows, D);
    // out is residual, residual_out is x.
    CHECK_NOTHROW(tc::residual_add_layer_norm<float>(R_io2, X_io2, X_io2, R_io2, W, B, eps));
    CHECK(tc::to_host(dres_io) == want);
    CHECK(tc::to_host(dx_io) == want_sum);
    // One row seen with two row strides is the same elements.
    dout.poison();
    tc::rms_norm<float>(tensor_view<float, 2>(dout.data(), {1, D}), tensor_view<float, 2>(dres.data(), {1, D}), W, eps);
    const auto row_want = tc::to_host(dout);
    CHECK_NOTHROW(tc::rms_norm<float>(tensor_view<float, 2>(dres.data(), {1, D}, {4096, 1}),
                                      tensor_view<float, 2>(dres.data(), {1, D}), W, eps));
    CHECK(std::equal(row_want.begin(), row_want.begin() + D, tc::to_host(dres).begin()));
}

// ---- leading batch dimensions: (..., D) device views ----------------------------------

namespace {

// A contiguous view of `data` shaped like v but with last dimension `last` (scratch for the MLPs).
template <class T, class V>
tensor_view<T, V::rank> shaped_like(T* data, const V& v, index_t last) {
    auto shape = v.shape();
    shape[V::rank - 1] = last;
    return {data, shape};
}

template <class T>
std::vector<float> head(const std::vector<T>& v, std::size_t n) {
    std::vector<float> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = tinyllm::to_float(v[i]);
    return out;
}

// op(out, x, y) on the device with out (..., Dout) and x, y (..., D), against ref(out, x, y),
// the flattened (B*T, D) CPU call: (B, T, D) views (x of non-const T), (B, 1, T, D) views, a
// (B*T, D) view of non-const T, and one row as a vector; outputs poisoned (NaN) first. Then a
// transposed (non-mergeable) argument and mismatched shapes must throw before any launch.
template <class T, class Ref, class Op>
void check_leading_dims(const std::string& op_name, const std::string& x_name, index_t D, index_t Dout, Ref ref, Op op,
                        tolerance tol, std::uint64_t which) {
    const index_t B = 2, Tn = 3;
    const auto n_in = static_cast<std::size_t>(B * Tn * D), n_out = static_cast<std::size_t>(B * Tn * Dout);
    const auto x = random_as<T>(n_in, which, -2.0f, 2.0f), y = random_as<T>(n_in, which + 1, -2.0f, 2.0f);
    std::vector<float> want(n_out);
    ref(view2(want, B * Tn, Dout), cview2(x, B * Tn, D), cview2(y, B * Tn, D));
    auto dx = upload<T>(x), dy = upload<T>(y);
    tc::device_buffer<T> dout(n_out);
    const tensor_view<T, 3> X(dx.data(), {B, Tn, D});
    const tensor_view<const T, 3> Y(dy.data(), {B, Tn, D});

    dout.poison();
    op(dout.view(extents<3>{B, Tn, Dout}), X, Y);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), want, tol, label<T>(op_name + " (B, T, D)", B * Tn, Dout));
    dout.poison();
    op(dout.view(extents<4>{B, 1, Tn, Dout}), tinyllm::reshape(X, {B, index_t{1}, Tn, D}),
       tinyllm::reshape(Y, {B, index_t{1}, Tn, D}));
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), want, tol, label<T>(op_name + " (B, 1, T, D)", B * Tn, Dout));
    dout.poison();
    op(dview2(dout, B * Tn, Dout), tinyllm::reshape(X, {B * Tn, D}), tinyllm::reshape(Y, {B * Tn, D}));
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), want, tol, label<T>(op_name + " (rows, D) of non-const", B * Tn, Dout));
    dout.poison();
    op(tensor_view<T, 1>(dout.data(), {Dout}), X.slice(0, 1).slice(0, 2), Y.slice(0, 1).slice(0, 2));
    const auto row = static_cast<std::size_t>(Dout);
    TINYLLM_REQUIRE_CLOSE(head(tc::to_host(dout), row),
                          std::vector<float>(want.begin() + static_cast<std::ptrdiff_t>((Tn + 2) * row),
                                             want.begin() + static_cast<std::ptrdiff_t>((Tn + 3) * row)),
                          tol, label<T>(op_name + " one row (D)", 1, Dout));

    // X.transpose(0, 1) is (T, B, D) with strides (D, T*D, 1): the leading dimensions do not merge.
    tc::device_buffer<T> dtb(n_in);
    const tensor_view<T, 3> out_tb(dout.data(), {Tn, B, Dout});
    const tensor_view<const T, 3> y_tb(dtb.data(), {Tn, B, D});
    const std::string d = std::to_string(D), dout_s = std::to_string(Dout);
    CHECK_THROWS_WITH(op(out_tb, X.transpose(0, 1), y_tb),
                      tinyllm_test::contains(op_name + ": " + x_name + " has shape (3, 2, " + d + ") and strides") &&
                          tinyllm_test::contains("do not merge"));
    CHECK_THROWS_WITH(op(dout.view(extents<3>{B, Tn, Dout}).transpose(0, 1), y_tb, y_tb),
                      tinyllm_test::contains(op_name + ": out has shape (3, 2, " + dout_s + ") and strides"));
    CHECK_THROWS_WITH(op(out_tb, X, Y), tinyllm_test::contains(op_name + ": out has shape (3, 2, " + dout_s + ") but " +
                                                                x_name + " has shape (2, 3, " + d + ")"));
    CHECK_THROWS_WITH(op(dview2(dout, B * Tn, Dout), X, Y),
                      tinyllm_test::contains(op_name + ": out has shape (6, " + dout_s + ") but " + x_name +
                                             " has shape (2, 3, " + d + ")"));
}

template <class T>
void check_norms_leading_dims(index_t D, std::uint64_t which) {
    const auto w = random_as<T>(static_cast<std::size_t>(D), which, 0.5f, 1.5f);
    const auto b = random_as<T>(static_cast<std::size_t>(D), which + 1, -1.0f, 1.0f);
    auto dw = upload<T>(w), db = upload<T>(b);
    const auto W = dview1(dw), Bv = dview1(db);
    const float eps = 1e-5f;
    check_leading_dims<T>(
        "layer_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::layer_norm(out, x, cview1(w), cview1(b), eps); },
        [&](auto out, auto x, auto) { tc::layer_norm(out, x, W, Bv, eps); }, tol_for<T>(), which + 2);
    check_leading_dims<T>(
        "layer_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::layer_norm(out, x, eps); },
        [&](auto out, auto x, auto) { tc::layer_norm<T>(out, x, eps); }, tol_for<T>(), which + 4);
    check_leading_dims<T>(
        "rms_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::rms_norm(out, x, cview1(w), eps); },
        [&](auto out, auto x, auto) { tc::rms_norm<T>(out, x, W, eps); }, tol_for<T>(), which + 6);
    check_leading_dims<T>(
        "rms_norm", "x", D, D, [&](auto out, auto x, auto) { cpu::rms_norm(out, x, eps); },
        [&](auto out, auto x, auto) { tc::rms_norm(out, x, {}, eps); }, tol_for<T>(), which + 8);

    // The fused residual add + norm on (B, T, D), and on one row.
    const index_t B = 2, Tn = 3;
    const auto n = static_cast<std::size_t>(B * Tn * D);
    const auto x = random_as<T>(n, which + 10, -3.0f, 3.0f), r = random_as<T>(n, which + 11, -3.0f, 3.0f);
    std::vector<float> s(n), ref(n);
    for (std::size_t i = 0; i < n; ++i) s[i] = x[i] + r[i];
    round_to<T>(s);
    auto dx = upload<T>(x), dr = upload<T>(r);
    tc::device_buffer<T> dout(n), dsum(n);
    const tensor_view<T, 3> X(dx.data(), {B, Tn, D}), R(dr.data(), {B, Tn, D});
    const auto out = dout.view(extents<3>{B, Tn, D}), sum = dsum.view(extents<3>{B, Tn, D});
    const auto row = static_cast<std::size_t>(D), last = static_cast<std::size_t>((Tn + 2) * D);
    for (bool layer : {true, false}) {
        const std::string name = layer ? "residual_add_layer_norm" : "residual_add_rms_norm";
        if (layer)
            cpu::layer_norm(view2(ref, B * Tn, D), cview2(s, B * Tn, D), cview1(w), cview1(b), eps);
        else
            cpu::rms_norm(view2(ref, B * Tn, D), cview2(s, B * Tn, D), cview1(w), eps);
        dout.poison();
        dsum.poison();
        if (layer)
            tc::residual_add_layer_norm(out, sum, X, R, W, Bv, eps);
        else
            tc::residual_add_rms_norm<T>(out, sum, X, R, W, eps);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dsum), s, tolerance{0, 0, 0}, label<T>(name + " sum (B, T, D)", B * Tn, D));
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), ref, tol_for<T>(), label<T>(name + " (B, T, D)", B * Tn, D));
        dout.poison();
        dsum.poison();
        const tensor_view<T, 1> out1(dout.data(), {D}), sum1(dsum.data(), {D});
        if (layer)
            tc::residual_add_layer_norm<T>(out1, sum1, X.slice(0, 1).slice(0, 2), R.slice(0, 1).slice(0, 2), W, Bv, eps);
        else
            tc::residual_add_rms_norm(out1, sum1, X.slice(0, 1).slice(0, 2), R.slice(0, 1).slice(0, 2), W, eps);
        TINYLLM_REQUIRE_CLOSE(head(tc::to_host(dsum), row), std::vector<float>(s.begin() + last, s.begin() + last + row),
                              tolerance{0, 0, 0}, label<T>(name + " sum, one row", 1, D));
        TINYLLM_REQUIRE_CLOSE(head(tc::to_host(dout), row),
                              std::vector<float>(ref.begin() + last, ref.begin() + last + row), tol_for<T>(),
                              label<T>(name + " one row", 1, D));
    }
    const tensor_view<T, 3> wrong(dsum.data(), {Tn, B, D});
    CHECK_THROWS_WITH(tc::residual_add_rms_norm(out, wrong, X, R, W, eps),
                      tinyllm_test::contains("residual_add_rms_norm: residual_out has shape (3, 2, " +
                                             std::to_string(D) + ") but x has shape (2, 3, "));
    CHECK_THROWS_WITH(tc::residual_add_layer_norm(wrong, wrong, wrong, R.transpose(0, 1), W, Bv, eps),
                      tinyllm_test::contains("residual_add_layer_norm: residual has shape (3, 2, " + std::to_string(D) +
                                             ") and strides"));
}

template <class T>
void check_elementwise_leading_dims(index_t D, std::uint64_t which) {
    const auto bias = random_as<T>(static_cast<std::size_t>(D), which, -1.0f, 1.0f);
    auto dbias = upload<T>(bias);
    const auto Bv = dview1(dbias);
    for (activation kind : {activation::gelu_tanh, activation::silu}) {
        check_leading_dims<T>(
            "activate", "x", D, D, [&](auto out, auto x, auto) { cpu::activate(out, x, kind); },
            [&](auto out, auto x, auto) { tc::activate(out, x, kind); }, tol_for<T>(), which + 1);
        check_leading_dims<T>(
            "bias_activate", "x", D, D, [&](auto out, auto x, auto) { cpu::bias_activate(out, x, cview1(bias), kind); },
            [&](auto out, auto x, auto) { tc::bias_activate<T>(out, x, Bv, kind); }, tol_for<T>(), which + 3);
    }
    check_leading_dims<T>(
        "swiglu", "gate", D, D, [&](auto out, auto g, auto u) { cpu::swiglu(out, g, u); },
        [&](auto out, auto g, auto u) { tc::swiglu(out, g, u); }, tol_for<T>(), which + 5);
    check_leading_dims<T>(
        "add", "a", D, D, [&](auto out, auto a, auto b) { cpu::add(out, a, b); },
        [&](auto out, auto a, auto b) { tc::add<T>(out, a, b); }, tol_for<T>(), which + 7);
    check_leading_dims<T>(
        "multiply", "a", D, D, [&](auto out, auto a, auto b) { cpu::multiply(out, a, b); },
        [&](auto out, auto a, auto b) { tc::multiply(out, a, b); }, tol_for<T>(), which + 9);
}

template <class T>
void check_ffn_leading_dims(std::uint64_t which) {
    const tc::cublas_handle handle;
    const index_t D = 32, N = 24, H = 40;
    const float sd = 1.0f / std::sqrt(static_cast<float>(D)), sh = 1.0f / std::sqrt(static_cast<float>(H));
    const auto W = random_as<T>(static_cast<std::size_t>(N * D), which, -sd, sd);  // (N, D)
    const auto b = random_as<T>(static_cast<std::size_t>(N), which + 1, -1.0f, 1.0f);
    auto dW = upload<T>(W), db = upload<T>(b);
    // linear: the GEMM output is rounded to T, then the bias is added.
    check_leading_dims<T>(
        "linear", "x", D, N,
        [&](auto out, auto x, auto) {
            cpu::linear(out, x, cview2(W, N, D), {});
            for (index_t r = 0; r < out.extent(0); ++r)
                for (index_t c = 0; c < N; ++c)
                    out(r, c) = tinyllm::to_float(tinyllm::from_float<T>(out(r, c))) + b[static_cast<std::size_t>(c)];
        },
        [&](auto out, auto x, auto) { tc::linear(out, x, dview2(dW, N, D), dview1(db), handle); }, loose_tol_for<T>(),
        which + 2);
    check_leading_dims<T>(
        "linear", "x", D, N, [&](auto out, auto x, auto) { cpu::linear(out, x, cview2(W, N, D), {}); },
        [&](auto out, auto x, auto) { tc::linear<T>(out, x, dview2(dW, N, D), {}, handle); }, loose_tol_for<T>(),
        which + 4);

    // The MLPs against the float composition (intermediates not rounded to T), as check_mlps does.
    const auto w1 = random_as<T>(static_cast<std::size_t>(H * D), which + 5, -sd, sd);
    const auto w2 = random_as<T>(static_cast<std::size_t>(H * D), which + 6, -sd, sd);
    const auto w3 = random_as<T>(static_cast<std::size_t>(D * H), which + 7, -sh, sh);
    const auto b1 = random_as<T>(static_cast<std::size_t>(H), which + 8, -0.5f, 0.5f);
    const auto b3 = random_as<T>(static_cast<std::size_t>(D), which + 9, -0.5f, 0.5f);
    auto dw1 = upload<T>(w1), dw2 = upload<T>(w2), dw3 = upload<T>(w3), db1 = upload<T>(b1), db3 = upload<T>(b3);
    const tolerance lt = loose_tol_for<T>();
    const tolerance mlp_tol{4 * lt.abs, 4 * lt.rel, 2 * lt.rel_l2};
    tc::device_buffer<T> dh1(static_cast<std::size_t>(2 * 3 * H)), dh2(dh1.size());
    const tinyllm::gpt2_mlp_weights<float> cg{cview2(w1, H, D), cview1(b1), cview2(w3, D, H), cview1(b3)};
    const tinyllm::gpt2_mlp_weights<T> g{dw1.view(extents<2>{H, D}), dview1(db1), dw3.view(extents<2>{D, H}),
                                         dview1(db3)};
    check_leading_dims<T>(
        "gpt2_mlp", "x", D, D, [&](auto out, auto x, auto) { cpu::gpt2_mlp(out, x, cg); },
        [&](auto out, auto x, auto) {
            dh1.poison();
            tc::gpt2_mlp(out, x, g, shaped_like(dh1.data(), x, H), handle);
        },
        mlp_tol, which + 10);
    const tinyllm::swiglu_mlp_weights<float> cs{cview2(w1, H, D), cview2(w2, H, D), cview2(w3, D, H)};
    const tinyllm::swiglu_mlp_weights<T> s{dw1.view(extents<2>{H, D}), dw2.view(extents<2>{H, D}),
                                           dw3.view(extents<2>{D, H})};
    check_leading_dims<T>(
        "swiglu_mlp", "x", D, D, [&](auto out, auto x, auto) { cpu::swiglu_mlp(out, x, cs); },
        [&](auto out, auto x, auto) {
            dh1.poison();
            dh2.poison();
            tc::swiglu_mlp<T>(out, x, s, shaped_like(dh1.data(), x, H), shaped_like(dh2.data(), x, H), handle);
        },
        mlp_tol, which + 12);

    // linear's out and x share all dimensions but the last; scratch rows must match x's.
    tc::device_buffer<T> dx(static_cast<std::size_t>(2 * 3 * D)), dout(static_cast<std::size_t>(2 * 3 * D));
    CHECK_THROWS_WITH(tc::linear(tensor_view<T, 3>(dout.data(), {3, 2, N}), tensor_view<T, 3>(dx.data(), {2, 3, D}),
                                 dview2(dW, N, D), {}, handle),
                      tinyllm_test::contains("linear: out has shape (3, 2, 24) but x has shape (2, 3, 32); all "
                                             "dimensions but the last must be equal"));
    CHECK_THROWS_WITH(tc::gpt2_mlp(dout.view(extents<3>{2, 3, D}), dx.view(extents<3>{2, 3, D}), g,
                                   tensor_view<T, 3>(dh1.data(), {3, 1, H}), handle),
                      tinyllm_test::contains("hidden has shape (3, 40) but (rows, H) = (6, 40) is required"));
}

}  // namespace

TEST_CASE("CUDA norms take (..., D) device views: (B, T, D) matches the CPU reference", "[cuda][norm][batch]") {
    check_norms_leading_dims<float>(40, 1000);
    check_norms_leading_dims<bfloat16>(40, 1020);
    check_norms_leading_dims<float16>(13, 1040);  // D not a multiple of the vector width: the scalar path
}

TEST_CASE("CUDA element-wise kernels take (..., cols) device views", "[cuda][activation][batch]") {
    check_elementwise_leading_dims<float>(24, 1100);
    check_elementwise_leading_dims<bfloat16>(24, 1120);
    check_elementwise_leading_dims<float16>(7, 1140);
}

TEST_CASE("CUDA linear and the MLPs take (..., D) device views", "[cuda][ffn][batch]") {
    check_ffn_leading_dims<float>(1200);
    check_ffn_leading_dims<bfloat16>(1220);
    check_ffn_leading_dims<float16>(1240);
}
