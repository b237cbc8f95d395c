// tinyllm/norm.hpp — LayerNorm and RMSNorm over the last dimension, and the
// fused residual-add + norm that sits between transformer blocks.
//
// A transformer keeps one vector per token, the *residual stream* x (D
// numbers), and every block adds to it: x = x + attention(norm(x)), then
// x = x + mlp(norm(x)). The norm in front of each sub-layer ("pre-norm", GPT-2
// and every model since) rescales the token's vector to a standard size, so
// that the sub-layer sees inputs of the same scale however large the stream
// has grown, while the stream itself is never normalized and gradients flow
// straight through the additions. A final norm follows the last block.
//
// LayerNorm (Ba et al. 2016; GPT-2, BERT), per row of D values:
//
//     mean = (1/D) sum_j x_j
//     var  = (1/D) sum_j (x_j - mean)^2           (biased: divide by D, as PyTorch)
//     y_j  = (x_j - mean) / sqrt(var + eps) * w_j + b_j
//
// RMSNorm (Zhang & Sennrich 2019; Llama, Mistral, Qwen) drops the centring and
// the bias — one reduction instead of two, and it works as well in practice:
//
//     rms  = sqrt((1/D) sum_j x_j^2 + eps)
//     y_j  = x_j / rms * w_j
//
// eps keeps a row of (near) zeros from dividing by zero; it is part of the
// checkpoint's definition (GPT-2: 1e-5, Llama 2/3: 1e-5, many others 1e-6), so
// it is a required argument. w ("weight", "gamma") and b ("bias", "beta") are
// the affine parameters, one per feature, learned; an empty view means "none"
// (w = 1, b = 0).
//
// Numerical care. Computing var as E[x^2] - E[x]^2 in one pass cancels
// catastrophically when |mean| >> std (think 1000 + small noise in float). We
// use two passes: the mean first, then the sum of squared deviations. This
// CPU reference works in double throughout — sums, mean, rstd = 1 / sqrt(var
// + eps) and (x - mean) * rstd * w + b — and rounds once, to float, at the
// end: it is the yardstick the kernels are measured with. The CUDA kernels
// accumulate in float (even for bfloat16/float16 inputs), form the output in
// float and round once to the storage type. A float mean carries an error of
// up to half an ulp of the mean, so when |mean| >> std the float result is off
// by ~ulp(mean) / std (e.g. 1000 + noise of std 0.006: ~0.5%); the input
// itself is only known to that precision, and PyTorch behaves the same.
// (Hugging Face's Llama rounds x * rstd to the model dtype before multiplying
// by w; with bfloat16 that extra rounding changes some outputs by one ulp.)
//
// Fused residual add + norm, what runs between blocks:
//
//     residual_out = x + residual            (the updated stream, stored)
//     out          = norm(residual_out)      (the next sub-layer's input)
//
// One pass reads x and residual and writes both results, instead of an add
// kernel writing the stream and a norm kernel reading it back. The norm sees
// the stream *as stored* (rounded to the storage type), so the fused result
// equals the two steps done one after the other.
//
// Shapes: x and out are (..., D), any number of leading dimensions — a (B, T, D)
// activation, a (rows, D) matrix or one (D) vector — as tensor views or owning
// tensors; the leading dimensions are seen as rows (as_rows in tensor.hpp), so
// they must merge into one (any contiguous tensor does). The (rows, D)
// functions below are the definitions; the (..., D) overloads after them
// check the shapes and call them. out (and residual_out) may be the same
// memory as an input: every element is read before it is written.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <string_view>

namespace tinyllm {
namespace detail {

// Checks shared by the CPU references and the CUDA launchers. A weight or bias
// with no elements means "absent".
template <class Out, class X, class W, class B>
void expect_norm_args(std::string_view op, const Out& out, const X& x, const W& weight, const B& bias, float eps) {
    if (out.shape() != x.shape())
        throw error(cat("tinyllm: ", op, ": out has shape ", to_string(out.shape()), " but x has shape ",
                        to_string(x.shape()), "; they must be equal"));
    TINYLLM_EXPECT(x.extent(1) >= 1, op, ": x has shape ", to_string(x.shape()),
                   "; a row needs at least one feature to normalize");
    TINYLLM_EXPECT(weight.size() == 0 || weight.extent(0) == x.extent(1), op, ": weight has ", weight.extent(0),
                   " elements but x has D = ", x.extent(1), " features (one weight per feature, or none)");
    TINYLLM_EXPECT(bias.size() == 0 || bias.extent(0) == x.extent(1), op, ": bias has ", bias.extent(0),
                   " elements but x has D = ", x.extent(1), " features (one bias per feature, or none)");
    TINYLLM_EXPECT(eps > 0.0f && std::isfinite(eps), op, ": eps = ", eps, " must be positive and finite");
}

template <class X, class R>
void expect_residual_args(std::string_view op, const X& residual_out, const X& x, const R& residual) {
    if (residual_out.shape() != x.shape() || residual.shape() != x.shape())
        throw error(cat("tinyllm: ", op, ": residual_out ", to_string(residual_out.shape()), ", x ",
                        to_string(x.shape()), " and residual ", to_string(residual.shape()),
                        " must have the same shape"));
}

}  // namespace detail

namespace cpu {

// LayerNorm of each row of x: out = (x - mean) / sqrt(var + eps) * weight + bias.
// out, x: (rows, D); weight, bias: (D) or empty (no affine parameters). Any rank: below.
inline void layer_norm(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 1> weight,
                       tensor_view<const float, 1> bias, float eps) {
    tinyllm::detail::expect_norm_args("layer_norm", out, x, weight, bias, eps);
    const index_t rows = x.extent(0), D = x.extent(1);
    for (index_t r = 0; r < rows; ++r) {
        double sum = 0;  // pass 1: the mean
        for (index_t j = 0; j < D; ++j) sum += x(r, j);
        const double mean = sum / static_cast<double>(D);
        double squares = 0;  // pass 2: the variance, from deviations (no cancellation)
        for (index_t j = 0; j < D; ++j) {
            const double d = x(r, j) - mean;
            squares += d * d;
        }
        const double var = squares / static_cast<double>(D);
        const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
        for (index_t j = 0; j < D; ++j) {  // pass 3: normalize, scale, shift
            double y = (x(r, j) - mean) * rstd;
            if (weight.size()) y *= weight(j);
            if (bias.size()) y += bias(j);
            out(r, j) = static_cast<float>(y);
        }
    }
}

// LayerNorm without affine parameters.
inline void layer_norm(tensor_view<float, 2> out, tensor_view<const float, 2> x, float eps) {
    layer_norm(out, x, {}, {}, eps);
}

// RMSNorm of each row of x: out = x / sqrt(mean(x^2) + eps) * weight.
// out, x: (rows, D); weight: (D) or empty.
inline void rms_norm(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 1> weight,
                     float eps) {
    tinyllm::detail::expect_norm_args("rms_norm", out, x, weight, tensor_view<const float, 1>{}, eps);
    const index_t rows = x.extent(0), D = x.extent(1);
    for (index_t r = 0; r < rows; ++r) {
        double squares = 0;
        for (index_t j = 0; j < D; ++j) squares += static_cast<double>(x(r, j)) * x(r, j);
        const double rstd = 1.0 / std::sqrt(squares / static_cast<double>(D) + static_cast<double>(eps));
        for (index_t j = 0; j < D; ++j) {
            double y = x(r, j) * rstd;
            if (weight.size()) y *= weight(j);
            out(r, j) = static_cast<float>(y);
        }
    }
}

// RMSNorm without a weight.
inline void rms_norm(tensor_view<float, 2> out, tensor_view<const float, 2> x, float eps) {
    rms_norm(out, x, {}, eps);
}

// residual_out = x + residual; out = layer_norm(residual_out). All (rows, D).
inline void residual_add_layer_norm(tensor_view<float, 2> out, tensor_view<float, 2> residual_out,
                                    tensor_view<const float, 2> x, tensor_view<const float, 2> residual,
                                    tensor_view<const float, 1> weight, tensor_view<const float, 1> bias, float eps) {
    tinyllm::detail::expect_norm_args("residual_add_layer_norm", out, x, weight, bias, eps);
    tinyllm::detail::expect_residual_args("residual_add_layer_norm", tensor_view<const float, 2>(residual_out), x, residual);
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t j = 0; j < x.extent(1); ++j) residual_out(r, j) = x(r, j) + residual(r, j);
    layer_norm(out, residual_out, weight, bias, eps);
}

// residual_out = x + residual; out = rms_norm(residual_out). All (rows, D).
inline void residual_add_rms_norm(tensor_view<float, 2> out, tensor_view<float, 2> residual_out,
                                  tensor_view<const float, 2> x, tensor_view<const float, 2> residual,
                                  tensor_view<const float, 1> weight, float eps) {
    tinyllm::detail::expect_norm_args("residual_add_rms_norm", out, x, weight, tensor_view<const float, 1>{}, eps);
    tinyllm::detail::expect_residual_args("residual_add_rms_norm", tensor_view<const float, 2>(residual_out), x, residual);
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t j = 0; j < x.extent(1); ++j) residual_out(r, j) = x(r, j) + residual(r, j);
    rms_norm(out, residual_out, weight, eps);
}

// ---- Any number of leading dimensions: (..., D) -----------------------------------------
// The same operations on tensor views or owning tensors of any rank: out, x, residual_out
// and residual all (..., D) of one shape; weight, bias (D) or {} (none). Each merges the
// leading dimensions into rows and calls the (rows, D) definition above.

template <tensor_like Out, tensor_like X, tensor_like W = tensor_view<const float, 1>,
          tensor_like B = tensor_view<const float, 1>>
void layer_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const W& weight /*(D)*/, const B& bias /*(D)*/,
                float eps) {
    expect_equal_shapes(out, x, "layer_norm", "out", "x");
    layer_norm(as_rows<float>(out, "layer_norm: out"), as_rows<const float>(x, "layer_norm: x"),
               as_vector<const float>(weight), as_vector<const float>(bias), eps);
}

template <tensor_like Out, tensor_like X>
void layer_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, float eps) {
    layer_norm(out, x, {}, {}, eps);
}

template <tensor_like Out, tensor_like X, tensor_like W = tensor_view<const float, 1>>
void rms_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const W& weight /*(D)*/, float eps) {
    expect_equal_shapes(out, x, "rms_norm", "out", "x");
    rms_norm(as_rows<float>(out, "rms_norm: out"), as_rows<const float>(x, "rms_norm: x"),
             as_vector<const float>(weight), eps);
}

template <tensor_like Out, tensor_like X>
void rms_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, float eps) {
    rms_norm(out, x, {}, eps);
}

template <tensor_like Out, tensor_like Sum, tensor_like X, tensor_like R, tensor_like W = tensor_view<const float, 1>,
          tensor_like B = tensor_view<const float, 1>>
void residual_add_layer_norm(Out&& out /*(..., D)*/, Sum&& residual_out /*(..., D)*/, const X& x /*(..., D)*/,
                             const R& residual /*(..., D)*/, const W& weight /*(D)*/, const B& bias /*(D)*/,
                             float eps) {
    constexpr std::string_view op = "residual_add_layer_norm";
    expect_equal_shapes(out, x, op, "out", "x");
    expect_equal_shapes(residual_out, x, op, "residual_out", "x");
    expect_equal_shapes(residual, x, op, "residual", "x");
    residual_add_layer_norm(as_rows<float>(out, "residual_add_layer_norm: out"),
                            as_rows<float>(residual_out, "residual_add_layer_norm: residual_out"),
                            as_rows<const float>(x, "residual_add_layer_norm: x"),
                            as_rows<const float>(residual, "residual_add_layer_norm: residual"),
                            as_vector<const float>(weight), as_vector<const float>(bias), eps);
}

template <tensor_like Out, tensor_like Sum, tensor_like X, tensor_like R, tensor_like W = tensor_view<const float, 1>>
void residual_add_rms_norm(Out&& out /*(..., D)*/, Sum&& residual_out /*(..., D)*/, const X& x /*(..., D)*/,
                           const R& residual /*(..., D)*/, const W& weight /*(D)*/, float eps) {
    constexpr std::string_view op = "residual_add_rms_norm";
    expect_equal_shapes(out, x, op, "out", "x");
    expect_equal_shapes(residual_out, x, op, "residual_out", "x");
    expect_equal_shapes(residual, x, op, "residual", "x");
    residual_add_rms_norm(as_rows<float>(out, "residual_add_rms_norm: out"),
                          as_rows<float>(residual_out, "residual_add_rms_norm: residual_out"),
                          as_rows<const float>(x, "residual_add_rms_norm: x"),
                          as_rows<const float>(residual, "residual_add_rms_norm: residual"),
                          as_vector<const float>(weight), eps);
}

}  // namespace cpu
}  // namespace tinyllm
