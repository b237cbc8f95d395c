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
// Backward (training; derivations in docs/training.md). With xhat = (x - mean)
// rstd (RMSNorm: mean = 0), y = xhat w + b, the loss's gradient dy arriving
// from above and g = dy w (per feature), per row:
//
//     LayerNorm:  dx_j = rstd (g_j - mean_k(g_k) - xhat_j mean_k(g_k xhat_k))
//     RMSNorm:    dx_j = rstd (g_j              - xhat_j mean_k(g_k xhat_k))
//     dw_j = sum over rows of dy_j xhat_j,      db_j = sum over rows of dy_j
//
// The mean and rstd are recomputed from x (two reductions over a row the
// backward reads anyway) rather than saved by the forward: the forward
// functions keep their signatures and nothing has to be stored between the
// passes. dweight and dbias are overwritten, or added to with `accumulate`
// (gradient accumulation over micro-batches); either may be empty (not
// computed). For the fused residual add + norm,
//
//     s = x + residual (residual_out),  out = norm(s),
//
// s feeds two places — the norm and the rest of the residual stream — so its
// gradient is the sum of what comes back from both: ds = norm_backward(dout) +
// dresidual_out, where dresidual_out is the gradient of the stream s from the
// layers above (empty: none, e.g. after the last block). And since
// ds/dx = ds/dresidual = identity, ds is also the gradient of x and of
// residual: the backward returns that one tensor. It takes the stored s
// (residual_out), not x and residual. dx may be the memory of dout, x (or s)
// or dresidual_out — the usual in-place update of the stream's gradient.
//
// Shapes: x and out are (..., D), any number of leading dimensions — a (B, T, D)
// activation, a (rows, D) matrix or one (D) vector — as tensor views or owning
// tensors; the leading dimensions are seen as rows (as_rows in tensor.hpp), so
// they must merge into one (any contiguous tensor does). The (rows, D)
// functions below are the definitions; the (..., D) overloads after them
// check the shapes and call them. out (and residual_out) may be the same
// memory as an input: every element is read before it is written.
//
// Aliasing, checked before anything is written: out may be exactly x (in
// place: the same data, shape and strides), residual_out exactly x or
// residual, and out exactly residual; any other overlap of an output with an
// input (a row shifted, weight or bias) is refused, as are out and
// residual_out sharing memory and an output whose elements share an address
// (a row stride of 0). In the backward, dx may be exactly dout, x (or s) or
// dresidual_out; dweight and dbias share memory with nothing else.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <string_view>
#include <vector>

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
    // out is written while x, weight and bias are read: in place on x, or apart.
    expect_distinct_elements(op, "out", out);
    expect_in_place_or_apart(op, "out", out, "x", x);
    expect_apart(op, "out", out, "weight", weight);
    expect_apart(op, "out", out, "bias", bias);
}

// The fused residual add's shapes and aliasing (after expect_norm_args): residual_out
// is written first, then out from it, while x, residual, weight and bias are read.
template <class Out, class S, class X, class R, class W, class B>
void expect_residual_args(std::string_view op, const Out& out, const S& residual_out, const X& x, const R& residual,
                          const W& weight, const B& bias) {
    if (residual_out.shape() != x.shape() || residual.shape() != x.shape())
        throw error(cat("tinyllm: ", op, ": residual_out ", to_string(residual_out.shape()), ", x ",
                        to_string(x.shape()), " and residual ", to_string(residual.shape()),
                        " must have the same shape"));
    expect_distinct_elements(op, "residual_out", residual_out);
    expect_in_place_or_apart(op, "residual_out", residual_out, "x", x);
    expect_in_place_or_apart(op, "residual_out", residual_out, "residual", residual);
    expect_apart(op, "residual_out", residual_out, "weight", weight);
    expect_apart(op, "residual_out", residual_out, "bias", bias);
    expect_apart(op, "out", out, "residual_out", residual_out);
    expect_in_place_or_apart(op, "out", out, "residual", residual);
}

// Checks for the backward functions. A weight, dweight, dbias or dresidual_out
// with no elements means "absent".
template <class DX, class DW, class DB, class DY, class DS, class X, class W>
void expect_norm_backward_args(std::string_view op, const DX& dx, const DW& dweight, const DB& dbias, const DY& dout,
                               const DS& dresidual_out, const X& x, const W& weight, float eps) {
    const auto same = [&](std::string_view name, const auto& t) {
        if (t.shape() != x.shape())
            throw error(cat("tinyllm: ", op, ": ", name, " has shape ", to_string(t.shape()), " but x has shape ",
                            to_string(x.shape()), "; they must be equal"));
    };
    same("dout", dout);
    same("dx", dx);
    if (dresidual_out.size() != 0) same("dresidual_out", dresidual_out);
    TINYLLM_EXPECT(x.extent(1) >= 1, op, ": x has shape ", to_string(x.shape()),
                   "; a row needs at least one feature to normalize");
    TINYLLM_EXPECT(weight.size() == 0 || weight.extent(0) == x.extent(1), op, ": weight has ", weight.extent(0),
                   " elements but x has D = ", x.extent(1), " features (one weight per feature, or none)");
    TINYLLM_EXPECT(dweight.size() == 0 || (weight.size() != 0 && dweight.extent(0) == weight.extent(0)), op,
                   ": dweight has ", dweight.extent(0), " elements but weight has ", weight.size(),
                   " (one gradient per weight; none when there is no weight)");
    TINYLLM_EXPECT(dbias.size() == 0 || dbias.extent(0) == x.extent(1), op, ": dbias has ", dbias.extent(0),
                   " elements but x has D = ", x.extent(1), " features (one per feature, or none)");
    TINYLLM_EXPECT(eps > 0.0f && std::isfinite(eps), op, ": eps = ", eps, " must be positive and finite");
    // dx is written element by element after its row was read: in place on dout, x or
    // dresidual_out, or apart. dweight and dbias are sums over all rows: apart from all.
    expect_distinct_elements(op, "dx", dx);
    expect_in_place_or_apart(op, "dx", dx, "dout", dout);
    expect_in_place_or_apart(op, "dx", dx, "x", x);
    expect_in_place_or_apart(op, "dx", dx, "dresidual_out", dresidual_out);
    expect_apart(op, "dx", dx, "weight", weight);
    const auto expect_sum_apart = [&](std::string_view name, const auto& g) {
        expect_distinct_elements(op, name, g);
        expect_apart_from(op, name, g, "dx", dx, "dout", dout, "dresidual_out", dresidual_out, "x", x, "weight",
                          weight);
    };
    expect_sum_apart("dweight", dweight);
    expect_sum_apart("dbias", dbias);
    expect_apart(op, "dbias", dbias, "dweight", dweight);
}

// dresidual_out of a fused backward as rows, or an empty view when it is empty.
template <tensor_like S, tensor_like X>
tensor_view<const float, 2> optional_rows(const S& s, const X& x, std::string_view op, std::string_view what) {
    if (as_view(s).size() == 0) return {};
    expect_equal_shapes(s, x, op, "dresidual_out", "residual_out");
    return as_rows<const float>(s, what);
}

// The backward of LayerNorm (centre = true) or RMSNorm (centre = false) of the
// rows of x, plus the stream's gradient dresidual_out when it is not empty.
inline void norm_backward_rows(bool centre, tensor_view<float, 2> dx, tensor_view<float, 1> dweight,
                               tensor_view<float, 1> dbias, tensor_view<const float, 2> dout,
                               tensor_view<const float, 2> dresidual_out, tensor_view<const float, 2> x,
                               tensor_view<const float, 1> weight, float eps, bool accumulate) {
    const index_t rows = x.extent(0), D = x.extent(1);
    const double inv_d = 1.0 / static_cast<double>(D);
    std::vector<double> dw(static_cast<std::size_t>(dweight.size())), db(static_cast<std::size_t>(dbias.size()));
    for (index_t r = 0; r < rows; ++r) {
        double mean = 0;  // the forward's statistics, recomputed (two passes, as the forward)
        if (centre) {
            for (index_t j = 0; j < D; ++j) mean += x(r, j);
            mean *= inv_d;
        }
        double squares = 0;
        for (index_t j = 0; j < D; ++j) squares += (x(r, j) - mean) * (x(r, j) - mean);
        const double rstd = 1.0 / std::sqrt(squares * inv_d + static_cast<double>(eps));
        double sum_g = 0, sum_g_xhat = 0;  // g = dout * w
        for (index_t j = 0; j < D; ++j) {
            const double xhat = (x(r, j) - mean) * rstd;
            const double g = weight.size() ? static_cast<double>(dout(r, j)) * weight(j) : dout(r, j);
            sum_g += g;
            sum_g_xhat += g * xhat;
            if (dweight.size()) dw[static_cast<std::size_t>(j)] += dout(r, j) * xhat;
            if (dbias.size()) db[static_cast<std::size_t>(j)] += dout(r, j);
        }
        const double mean_g = centre ? sum_g * inv_d : 0.0, mean_g_xhat = sum_g_xhat * inv_d;
        for (index_t j = 0; j < D; ++j) {  // element j is read before it is written (dx may alias)
            const double xhat = (x(r, j) - mean) * rstd;
            const double g = weight.size() ? static_cast<double>(dout(r, j)) * weight(j) : dout(r, j);
            double d = rstd * (g - mean_g - xhat * mean_g_xhat);
            if (dresidual_out.size()) d += dresidual_out(r, j);
            dx(r, j) = static_cast<float>(d);
        }
    }
    for (index_t j = 0; j < dweight.size(); ++j)
        dweight(j) = static_cast<float>(dw[static_cast<std::size_t>(j)] + (accumulate ? dweight(j) : 0.0));
    for (index_t j = 0; j < dbias.size(); ++j)
        dbias(j) = static_cast<float>(db[static_cast<std::size_t>(j)] + (accumulate ? dbias(j) : 0.0));
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
    tinyllm::detail::expect_residual_args("residual_add_layer_norm", out, residual_out, x, residual, weight, bias);
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t j = 0; j < x.extent(1); ++j) residual_out(r, j) = x(r, j) + residual(r, j);
    layer_norm(out, residual_out, weight, bias, eps);
}

// residual_out = x + residual; out = rms_norm(residual_out). All (rows, D).
inline void residual_add_rms_norm(tensor_view<float, 2> out, tensor_view<float, 2> residual_out,
                                  tensor_view<const float, 2> x, tensor_view<const float, 2> residual,
                                  tensor_view<const float, 1> weight, float eps) {
    tinyllm::detail::expect_norm_args("residual_add_rms_norm", out, x, weight, tensor_view<const float, 1>{}, eps);
    tinyllm::detail::expect_residual_args("residual_add_rms_norm", out, residual_out, x, residual, weight,
                                          tensor_view<const float, 1>{});
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t j = 0; j < x.extent(1); ++j) residual_out(r, j) = x(r, j) + residual(r, j);
    rms_norm(out, residual_out, weight, eps);
}

// The gradients of out = layer_norm(x, weight, bias, eps), given dout = dL/dout:
// dx (rows, D), overwritten; dweight, dbias (D), overwritten or, with
// `accumulate`, added to; either may be empty (not computed). mean and rstd are
// recomputed from x. dx may be dout's or x's memory.
inline void layer_norm_backward(tensor_view<float, 2> dx, tensor_view<float, 1> dweight, tensor_view<float, 1> dbias,
                                tensor_view<const float, 2> dout, tensor_view<const float, 2> x,
                                tensor_view<const float, 1> weight, float eps, bool accumulate = false) {
    tinyllm::detail::expect_norm_backward_args("layer_norm_backward", dx, dweight, dbias, dout,
                                               tensor_view<const float, 2>{}, x, weight, eps);
    tinyllm::detail::norm_backward_rows(true, dx, dweight, dbias, dout, {}, x, weight, eps, accumulate);
}

// The gradients of out = rms_norm(x, weight, eps): dx (rows, D); dweight (D)
// or empty, overwritten or (accumulate) added to. dx may be dout's or x's memory.
inline void rms_norm_backward(tensor_view<float, 2> dx, tensor_view<float, 1> dweight, tensor_view<const float, 2> dout,
                              tensor_view<const float, 2> x, tensor_view<const float, 1> weight, float eps,
                              bool accumulate = false) {
    tinyllm::detail::expect_norm_backward_args("rms_norm_backward", dx, dweight, tensor_view<float, 1>{}, dout,
                                               tensor_view<const float, 2>{}, x, weight, eps);
    tinyllm::detail::norm_backward_rows(false, dx, dweight, {}, dout, {}, x, weight, eps, accumulate);
}

// The backward of residual_out = x + residual; out = layer_norm(residual_out):
// dx = layer_norm_backward(dout) + dresidual_out, the gradient of residual_out
// and so of x and of residual alike. dout: the gradient of out; dresidual_out:
// the gradient of the stream from above, or empty (none); residual_out: the
// forward's stored sum. dweight, dbias as in layer_norm_backward. All (rows, D).
inline void residual_add_layer_norm_backward(tensor_view<float, 2> dx, tensor_view<float, 1> dweight,
                                             tensor_view<float, 1> dbias, tensor_view<const float, 2> dout,
                                             tensor_view<const float, 2> dresidual_out,
                                             tensor_view<const float, 2> residual_out,
                                             tensor_view<const float, 1> weight, float eps, bool accumulate = false) {
    tinyllm::detail::expect_norm_backward_args("residual_add_layer_norm_backward", dx, dweight, dbias, dout,
                                               dresidual_out, residual_out, weight, eps);
    tinyllm::detail::norm_backward_rows(true, dx, dweight, dbias, dout, dresidual_out, residual_out, weight, eps,
                                        accumulate);
}

// The backward of residual_out = x + residual; out = rms_norm(residual_out):
// dx = rms_norm_backward(dout) + dresidual_out (the gradient of x and of
// residual). All (rows, D); dweight (D) or empty; dresidual_out may be empty.
inline void residual_add_rms_norm_backward(tensor_view<float, 2> dx, tensor_view<float, 1> dweight,
                                           tensor_view<const float, 2> dout, tensor_view<const float, 2> dresidual_out,
                                           tensor_view<const float, 2> residual_out, tensor_view<const float, 1> weight,
                                           float eps, bool accumulate = false) {
    tinyllm::detail::expect_norm_backward_args("residual_add_rms_norm_backward", dx, dweight, tensor_view<float, 1>{},
                                               dout, dresidual_out, residual_out, weight, eps);
    tinyllm::detail::norm_backward_rows(false, dx, dweight, {}, dout, dresidual_out, residual_out, weight, eps,
                                        accumulate);
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

// The backward functions on (..., D) tensors: dx, dout, x (or residual_out) and
// dresidual_out of one shape (dresidual_out may be {}); dweight, dbias (D) or {}.

template <tensor_like DX, tensor_like DW = tensor_view<float, 1>, tensor_like DB = tensor_view<float, 1>,
          tensor_like DY, tensor_like X, tensor_like W = tensor_view<const float, 1>>
void layer_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, DB&& dbias /*(D)*/, const DY& dout /*(..., D)*/,
                         const X& x /*(..., D)*/, const W& weight /*(D)*/, float eps, bool accumulate = false) {
    constexpr std::string_view op = "layer_norm_backward";
    expect_equal_shapes(dout, x, op, "dout", "x");
    expect_equal_shapes(dx, x, op, "dx", "x");
    layer_norm_backward(as_rows<float>(dx, "layer_norm_backward: dx"), as_vector<float>(dweight),
                        as_vector<float>(dbias), as_rows<const float>(dout, "layer_norm_backward: dout"),
                        as_rows<const float>(x, "layer_norm_backward: x"), as_vector<const float>(weight), eps,
                        accumulate);
}

template <tensor_like DX, tensor_like DW = tensor_view<float, 1>, tensor_like DY, tensor_like X,
          tensor_like W = tensor_view<const float, 1>>
void rms_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, const DY& dout /*(..., D)*/,
                       const X& x /*(..., D)*/, const W& weight /*(D)*/, float eps, bool accumulate = false) {
    constexpr std::string_view op = "rms_norm_backward";
    expect_equal_shapes(dout, x, op, "dout", "x");
    expect_equal_shapes(dx, x, op, "dx", "x");
    rms_norm_backward(as_rows<float>(dx, "rms_norm_backward: dx"), as_vector<float>(dweight),
                      as_rows<const float>(dout, "rms_norm_backward: dout"),
                      as_rows<const float>(x, "rms_norm_backward: x"), as_vector<const float>(weight), eps, accumulate);
}

template <tensor_like DX, tensor_like DW = tensor_view<float, 1>, tensor_like DB = tensor_view<float, 1>,
          tensor_like DY, tensor_like DS = tensor_view<const float, 2>, tensor_like S,
          tensor_like W = tensor_view<const float, 1>>
void residual_add_layer_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, DB&& dbias /*(D)*/,
                                      const DY& dout /*(..., D)*/, const DS& dresidual_out /*(..., D) or empty*/,
                                      const S& residual_out /*(..., D)*/, const W& weight /*(D)*/, float eps,
                                      bool accumulate = false) {
    constexpr std::string_view op = "residual_add_layer_norm_backward";
    expect_equal_shapes(dout, residual_out, op, "dout", "residual_out");
    expect_equal_shapes(dx, residual_out, op, "dx", "residual_out");
    residual_add_layer_norm_backward(
        as_rows<float>(dx, "residual_add_layer_norm_backward: dx"), as_vector<float>(dweight), as_vector<float>(dbias),
        as_rows<const float>(dout, "residual_add_layer_norm_backward: dout"),
        tinyllm::detail::optional_rows(dresidual_out, residual_out, op, "residual_add_layer_norm_backward: dresidual_out"),
        as_rows<const float>(residual_out, "residual_add_layer_norm_backward: residual_out"),
        as_vector<const float>(weight), eps, accumulate);
}

template <tensor_like DX, tensor_like DW = tensor_view<float, 1>, tensor_like DY,
          tensor_like DS = tensor_view<const float, 2>, tensor_like S, tensor_like W = tensor_view<const float, 1>>
void residual_add_rms_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, const DY& dout /*(..., D)*/,
                                    const DS& dresidual_out /*(..., D) or empty*/, const S& residual_out /*(..., D)*/,
                                    const W& weight /*(D)*/, float eps, bool accumulate = false) {
    constexpr std::string_view op = "residual_add_rms_norm_backward";
    expect_equal_shapes(dout, residual_out, op, "dout", "residual_out");
    expect_equal_shapes(dx, residual_out, op, "dx", "residual_out");
    residual_add_rms_norm_backward(
        as_rows<float>(dx, "residual_add_rms_norm_backward: dx"), as_vector<float>(dweight),
        as_rows<const float>(dout, "residual_add_rms_norm_backward: dout"),
        tinyllm::detail::optional_rows(dresidual_out, residual_out, op, "residual_add_rms_norm_backward: dresidual_out"),
        as_rows<const float>(residual_out, "residual_add_rms_norm_backward: residual_out"),
        as_vector<const float>(weight), eps, accumulate);
}

}  // namespace cpu
}  // namespace tinyllm
