// tinyllm/vectorized.hpp — the CPU's fast rung of the element-wise and row-wise
// operations around a transformer's matrix products: the activations (GELU,
// SiLU, ReLU) and SwiGLU with their backward passes, LayerNorm and RMSNorm with
// theirs, and the softmax cross-entropy with its gradient.
//
// The references (activation.hpp, norm.hpp, loss.hpp) are the definitions: one
// element at a time through bounds-checked accessors, derivatives, sums and
// statistics in double, std::exp per element, on one thread. Beside the blocked
// matrix products of a training step they took more time than the products
// themselves (docs/cpu.md has the measured split). The functions here compute
// the same quantities, with the same formulas, differently:
//
//   * in float, sums included, on raw row pointers, in loops a compiler turns
//     into SIMD instructions. No library call per element: e^x is
//     detail::exp_nonpositive (math.hpp), a polynomial on bits. A sum over a row
//     is kept as `vector_lanes` (8) partial sums, element j going to lane j % 8,
//     added up at the end: a compiler may not reorder a float sum on its own, and
//     this order is one it can compute eight at a time.
//   * every sigmoid from an exponential of a non-positive number only:
//
//         e = exp(-|z|),   r = 1 / (1 + e)
//         sigmoid(z)     = r        (z >= 0)        e r    (z < 0)
//         1 - sigmoid(z) = e r      (z >= 0)        r      (z < 0)
//         sigmoid(z) (1 - sigmoid(z)) = e r^2       (either sign)
//
//     the same numbers as 1 / (1 + exp(-z)), without exp ever overflowing, and
//     chosen by the sign bit (integer operations, which vectorize). GELU-tanh
//     is x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) (activation.hpp's
//     form), SiLU is x sigmoid(x); their derivatives are written with the
//     three quantities above (activation.hpp derives them).
//   * over the rows, split into chunks of `rowwise_chunk` rows handed to
//     cpu::num_threads() OpenMP threads. A sum across rows (a norm's dweight and
//     dbias, the loss) is summed within each chunk and then over the chunks in
//     order, so the result is the same for every thread count.
//
// How close to the references: a few float ulps per element for the
// activations and their derivatives; about 1e-6 relative for the norms and the
// loss (float sums of D or V terms, where the references sum in double).
// tests/test_vectorized.cpp measures both on random rows.
//
// Arguments, shapes, checks, error messages and in-place rules are the
// references': (rows, cols) views, the output may be an input's memory. The
// fast loops need each row's elements adjacent (last stride 1; any row stride)
// and 1-D weights contiguous; other views are handed to the reference, as is
// gelu_erf (its erfc has no vectorized form here), which then runs threaded.
#pragma once

#include <tinyllm/activation.hpp>
#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/threads.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace tinyllm {
namespace detail {

inline constexpr index_t vector_lanes = 8;              // partial sums per row sum
inline constexpr index_t rowwise_chunk = 16;            // rows per work item
inline constexpr double rowwise_parallel_elements = 1 << 15;  // below this, one thread

// Element (r, 0) of a (rows, cols) view.
template <class T>
T* row_of(const tensor_view<T, 2>& v, index_t r) {
    return v.data() + r * v.stride(0);
}

// Can the fast loops read these views? Each row's elements adjacent (or the
// view empty, or one column); 1-D views contiguous.
template <class T, std::size_t R>
bool unit_stride(const tensor_view<T, R>& v) {
    return v.size() == 0 || v.extent(R - 1) == 1 || v.stride(R - 1) == 1;
}
template <class... V>
bool all_unit_stride(const V&... v) {
    return (unit_stride(v) && ...);
}

// body(chunk, first_row, end_row) for every chunk of rowwise_chunk rows: over
// the threads when rows * cols is large enough, in order otherwise. The body
// must not throw (callers check everything first).
template <class Body>
void for_row_chunks(index_t rows, index_t cols, const Body& body) {
    const index_t chunks = (rows + rowwise_chunk - 1) / rowwise_chunk;
    [[maybe_unused]] const bool threaded =
        chunks > 1 && static_cast<double>(rows) * static_cast<double>(cols) >= rowwise_parallel_elements;
    TINYLLM_OMP(parallel for schedule(static) if (threaded) num_threads(cpu::num_threads()))
    for (index_t c = 0; c < chunks; ++c) body(c, c * rowwise_chunk, std::min(rows, (c + 1) * rowwise_chunk));
}

// The sum of term(j) for j in [0, n), in vector_lanes partial sums (lane j % 8),
// then lane 0 + lane 1 + ... + lane 7 + the tail.
template <class Term>
float lane_sum(index_t n, const Term& term) {
    float acc[vector_lanes] = {};
    index_t j = 0;
    for (; j + vector_lanes <= n; j += vector_lanes)
        for (index_t l = 0; l < vector_lanes; ++l) acc[l] += term(j + l);
    float s = 0;
    for (index_t l = 0; l < vector_lanes; ++l) s += acc[l];
    for (; j < n; ++j) s += term(j);
    return s;
}

// The largest of x[0..n), n >= 1, in lanes as lane_sum.
inline float lane_max(const float* x, index_t n) {
    float acc[vector_lanes];
    for (index_t l = 0; l < vector_lanes; ++l) acc[l] = x[0];
    index_t j = 0;
    for (; j + vector_lanes <= n; j += vector_lanes)
        for (index_t l = 0; l < vector_lanes; ++l) acc[l] = std::max(acc[l], x[j + l]);
    float m = acc[0];
    for (index_t l = 1; l < vector_lanes; ++l) m = std::max(m, acc[l]);
    for (; j < n; ++j) m = std::max(m, x[j]);
    return m;
}

// z < 0 (sign bit set) ? if_negative : otherwise, on the bits.
inline float select_by_sign(float z, float if_negative, float otherwise) {
    const std::uint32_t negative = 0u - (std::bit_cast<std::uint32_t>(z) >> 31);  // all ones if the sign is set
    return std::bit_cast<float>((std::bit_cast<std::uint32_t>(if_negative) & negative) |
                                (std::bit_cast<std::uint32_t>(otherwise) & ~negative));
}

// sigmoid(z), 1 - sigmoid(z) and their product, from e = exp(-|z|) (above).
struct sigmoid_parts {
    float s, one_minus_s, s_one_minus_s;
};
inline sigmoid_parts sigmoid_split(float z) {
    const float e = exp_nonpositive(-std::fabs(z));
    const float r = 1.0f / (1.0f + e), er = e * r;
    return {select_by_sign(z, er, r), select_by_sign(z, r, er), er * r};
}

// GELU-tanh's 2u and its derivative d(2u)/dx.
inline float gelu_tanh_2u(float x) { return 2.0f * 0.79788456080286536f * (x + 0.044715f * x * x * x); }
inline float gelu_tanh_2u_slope(float x) { return 2.0f * 0.79788456080286536f * (1.0f + 3.0f * 0.044715f * x * x); }

// The forward of one element of `kind` and its derivative, in the forms above.
inline float gelu_tanh_vectorized(float x) { return x * sigmoid_split(gelu_tanh_2u(x)).s; }
inline float gelu_tanh_derivative_vectorized(float x) {
    const sigmoid_parts p = sigmoid_split(gelu_tanh_2u(x));
    return p.s + x * p.s_one_minus_s * gelu_tanh_2u_slope(x);
}
inline float silu_vectorized(float x) { return x * sigmoid_split(x).s; }
inline float silu_derivative_vectorized(float x) {
    const sigmoid_parts p = sigmoid_split(x);
    return p.s * (1.0f + x * p.one_minus_s);
}

// out(r, j) = f(x(r, j)) over the rows' chunks.
template <class F>
void map_rows(tensor_view<float, 2> out, tensor_view<const float, 2> x, const F& f) {
    const index_t cols = x.extent(1);
    for_row_chunks(x.extent(0), cols, [&](index_t, index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r) {
            float* o = row_of(out, r);
            const float* xr = row_of(x, r);
            for (index_t j = 0; j < cols; ++j) o[j] = f(xr[j]);
        }
    });
}

// out(r, j) = f(a(r, j), b(r, j)).
template <class F>
void map_rows(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b, const F& f) {
    const index_t cols = a.extent(1);
    for_row_chunks(a.extent(0), cols, [&](index_t, index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r) {
            float* o = row_of(out, r);
            const float *ar = row_of(a, r), *br = row_of(b, r);
            for (index_t j = 0; j < cols; ++j) o[j] = f(ar[j], br[j]);
        }
    });
}

// Adds each chunk's partial sums (chunks, D) in chunk order into `out` (D),
// overwriting it or (accumulate) adding to it.
inline void sum_chunk_partials(tensor_view<float, 1> out, const std::vector<float>& partial, index_t chunks,
                               bool accumulate) {
    const index_t D = out.extent(0);
    for (index_t j = 0; j < D; ++j) {
        double s = accumulate ? static_cast<double>(out(j)) : 0.0;
        for (index_t c = 0; c < chunks; ++c) s += partial[static_cast<std::size_t>(c * D + j)];
        out(j) = static_cast<float>(s);
    }
}

// LayerNorm (centre) or RMSNorm of the rows of x into out; weight and bias may be empty.
inline void norm_rows_vectorized(bool centre, tensor_view<float, 2> out, tensor_view<const float, 2> x,
                                 tensor_view<const float, 1> weight, tensor_view<const float, 1> bias, float eps) {
    const index_t D = x.extent(1);
    const std::vector<float> ones(weight.size() ? 0 : static_cast<std::size_t>(D), 1.0f),
        zeros(bias.size() ? 0 : static_cast<std::size_t>(D), 0.0f);
    const float* w = weight.size() ? weight.data() : ones.data();
    const float* b = bias.size() ? bias.data() : zeros.data();
    const float inv_d = 1.0f / static_cast<float>(D);
    for_row_chunks(x.extent(0), D, [&](index_t, index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r) {
            const float* xr = row_of(x, r);
            float* o = row_of(out, r);
            const float mean = centre ? lane_sum(D, [&](index_t j) { return xr[j]; }) * inv_d : 0.0f;
            const float var = lane_sum(D, [&](index_t j) { return (xr[j] - mean) * (xr[j] - mean); }) * inv_d;
            const float rstd = 1.0f / std::sqrt(var + eps);
            for (index_t j = 0; j < D; ++j) o[j] = (xr[j] - mean) * rstd * w[j] + b[j];
        }
    });
}

// The backward of LayerNorm (centre) or RMSNorm with the stream's gradient
// dresidual_out added (norm.hpp's norm_backward_rows, in float).
inline void norm_backward_rows_vectorized(bool centre, tensor_view<float, 2> dx, tensor_view<float, 1> dweight,
                                          tensor_view<float, 1> dbias, tensor_view<const float, 2> dout,
                                          tensor_view<const float, 2> dresidual_out, tensor_view<const float, 2> x,
                                          tensor_view<const float, 1> weight, float eps, bool accumulate) {
    const index_t rows = x.extent(0), D = x.extent(1);
    const index_t chunks = (rows + rowwise_chunk - 1) / rowwise_chunk;
    const bool want_dw = dweight.size() != 0, want_db = dbias.size() != 0, with_skip = dresidual_out.size() != 0;
    std::vector<float> dw(want_dw ? static_cast<std::size_t>(chunks * D) : 0),
        db(want_db ? static_cast<std::size_t>(chunks * D) : 0);
    const std::vector<float> ones(weight.size() ? 0 : static_cast<std::size_t>(D), 1.0f);
    const float* w = weight.size() ? weight.data() : ones.data();
    const float inv_d = 1.0f / static_cast<float>(D);
    for_row_chunks(rows, D, [&](index_t c, index_t r0, index_t r1) {
        float* dwc = want_dw ? dw.data() + c * D : nullptr;
        float* dbc = want_db ? db.data() + c * D : nullptr;
        for (index_t r = r0; r < r1; ++r) {
            const float *xr = row_of(x, r), *dy = row_of(dout, r);
            const float* skip = with_skip ? row_of(dresidual_out, r) : nullptr;
            float* d = row_of(dx, r);
            const float mean = centre ? lane_sum(D, [&](index_t j) { return xr[j]; }) * inv_d : 0.0f;
            const float var = lane_sum(D, [&](index_t j) { return (xr[j] - mean) * (xr[j] - mean); }) * inv_d;
            const float rstd = 1.0f / std::sqrt(var + eps);
            const float mean_g = centre ? lane_sum(D, [&](index_t j) { return dy[j] * w[j]; }) * inv_d : 0.0f;
            const float mean_g_xhat =
                lane_sum(D, [&](index_t j) { return dy[j] * w[j] * ((xr[j] - mean) * rstd); }) * inv_d;
            if (dwc)
                for (index_t j = 0; j < D; ++j) dwc[j] += dy[j] * ((xr[j] - mean) * rstd);
            if (dbc)
                for (index_t j = 0; j < D; ++j) dbc[j] += dy[j];
            // Element j is read before it is written (dx may be dout, x or dresidual_out).
            if (skip)
                for (index_t j = 0; j < D; ++j)
                    d[j] = rstd * (dy[j] * w[j] - mean_g - (xr[j] - mean) * rstd * mean_g_xhat) + skip[j];
            else
                for (index_t j = 0; j < D; ++j)
                    d[j] = rstd * (dy[j] * w[j] - mean_g - (xr[j] - mean) * rstd * mean_g_xhat);
        }
    });
    if (want_dw) sum_chunk_partials(dweight, dw, chunks, accumulate);
    if (want_db) sum_chunk_partials(dbias, db, chunks, accumulate);
}

}  // namespace detail

namespace cpu {

// ---- Activations ------------------------------------------------------------------------

// out = kind(x), element-wise (activation.hpp's cpu::activate). out, x: (rows, cols).
inline void activate_vectorized(tensor_view<float, 2> out, tensor_view<const float, 2> x, activation kind) {
    tinyllm::detail::expect_same_shape(out, x, "activate", "out", "x");
    tinyllm::detail::expect_elementwise_output<float>("activate", "out", out, {{"x", x}});
    if (!tinyllm::detail::all_unit_stride(out, x)) return activate(out, x, kind);
    namespace d = tinyllm::detail;
    switch (kind) {
        case activation::gelu_tanh: return d::map_rows(out, x, [](float v) { return d::gelu_tanh_vectorized(v); });
        case activation::silu: return d::map_rows(out, x, [](float v) { return d::silu_vectorized(v); });
        case activation::relu: return d::map_rows(out, x, [](float v) { return tinyllm::relu(v); });
        case activation::gelu_erf: return d::map_rows(out, x, [](float v) { return tinyllm::gelu_erf(v); });
        case activation::identity: return d::map_rows(out, x, [](float v) { return v; });
    }
}

// dx = dout * kind'(x), element-wise (cpu::activate_backward). dx, dout, x:
// (rows, cols); dx may be dout's or x's memory.
inline void activate_backward_vectorized(tensor_view<float, 2> dx, tensor_view<const float, 2> dout,
                                         tensor_view<const float, 2> x, activation kind) {
    tinyllm::detail::expect_same_shape(dx, x, "activate_backward", "dx", "x");
    tinyllm::detail::expect_same_shape(dout, x, "activate_backward", "dout", "x");
    tinyllm::detail::expect_elementwise_output<float>("activate_backward", "dx", dx, {{"dout", dout}, {"x", x}});
    if (!tinyllm::detail::all_unit_stride(dx, dout, x)) return activate_backward(dx, dout, x, kind);
    namespace d = tinyllm::detail;
    switch (kind) {
        case activation::gelu_tanh:
            return d::map_rows(dx, dout, x, [](float g, float v) { return g * d::gelu_tanh_derivative_vectorized(v); });
        case activation::silu:
            return d::map_rows(dx, dout, x, [](float g, float v) { return g * d::silu_derivative_vectorized(v); });
        case activation::relu:
            return d::map_rows(dx, dout, x, [](float g, float v) { return v > 0.0f ? g : 0.0f; });
        case activation::gelu_erf:
            return d::map_rows(dx, dout, x, [](float g, float v) {
                return static_cast<float>(g * gelu_erf_derivative(v));
            });
        case activation::identity: return d::map_rows(dx, dout, x, [](float g, float) { return g; });
    }
}

// out = silu(gate) * up, element-wise (cpu::swiglu). All (rows, hidden).
inline void swiglu_vectorized(tensor_view<float, 2> out, tensor_view<const float, 2> gate,
                              tensor_view<const float, 2> up) {
    tinyllm::detail::expect_same_shape(out, gate, "swiglu", "out", "gate");
    tinyllm::detail::expect_same_shape(out, up, "swiglu", "out", "up");
    tinyllm::detail::expect_elementwise_output<float>("swiglu", "out", out, {{"gate", gate}, {"up", up}});
    if (!tinyllm::detail::all_unit_stride(out, gate, up)) return swiglu(out, gate, up);
    tinyllm::detail::map_rows(out, gate, up,
                              [](float g, float u) { return tinyllm::detail::silu_vectorized(g) * u; });
}

// The backward of swiglu (cpu::swiglu_backward): dgate = dout * up * silu'(gate),
// dup = dout * silu(gate). All (rows, hidden); dgate or dup may be dout's memory.
inline void swiglu_backward_vectorized(tensor_view<float, 2> dgate, tensor_view<float, 2> dup,
                                       tensor_view<const float, 2> dout, tensor_view<const float, 2> gate,
                                       tensor_view<const float, 2> up) {
    tinyllm::detail::expect_same_shape(dgate, gate, "swiglu_backward", "dgate", "gate");
    tinyllm::detail::expect_same_shape(dup, gate, "swiglu_backward", "dup", "gate");
    tinyllm::detail::expect_same_shape(dout, gate, "swiglu_backward", "dout", "gate");
    tinyllm::detail::expect_same_shape(up, gate, "swiglu_backward", "up", "gate");
    tinyllm::detail::expect_elementwise_outputs<float>("swiglu_backward", "dgate", dgate, "dup", dup,
                                                       {{"dout", dout}, {"gate", gate}, {"up", up}});
    if (!tinyllm::detail::all_unit_stride(dgate, dup, dout, gate, up))
        return swiglu_backward(dgate, dup, dout, gate, up);
    const index_t cols = gate.extent(1);
    tinyllm::detail::for_row_chunks(gate.extent(0), cols, [&](index_t, index_t r0, index_t r1) {
        namespace d = tinyllm::detail;
        for (index_t r = r0; r < r1; ++r) {
            const float *dy = d::row_of(dout, r), *g = d::row_of(gate, r), *u = d::row_of(up, r);
            float *dg = d::row_of(dgate, r), *du = d::row_of(dup, r);
            for (index_t j = 0; j < cols; ++j) {
                const float y = dy[j], gj = g[j], uj = u[j];  // read before either write
                const d::sigmoid_parts p = d::sigmoid_split(gj);
                du[j] = y * gj * p.s;
                dg[j] = y * uj * p.s * (1.0f + gj * p.one_minus_s);
            }
        }
    });
}

// ---- Norms --------------------------------------------------------------------------------

// LayerNorm of each row (cpu::layer_norm). out, x: (rows, D); weight, bias: (D) or empty.
inline void layer_norm_vectorized(tensor_view<float, 2> out, tensor_view<const float, 2> x,
                                  tensor_view<const float, 1> weight, tensor_view<const float, 1> bias, float eps) {
    tinyllm::detail::expect_norm_args("layer_norm", out, x, weight, bias, eps);
    if (!tinyllm::detail::all_unit_stride(out, x, weight, bias)) return layer_norm(out, x, weight, bias, eps);
    tinyllm::detail::norm_rows_vectorized(true, out, x, weight, bias, eps);
}

// RMSNorm of each row (cpu::rms_norm). out, x: (rows, D); weight: (D) or empty.
inline void rms_norm_vectorized(tensor_view<float, 2> out, tensor_view<const float, 2> x,
                                tensor_view<const float, 1> weight, float eps) {
    tinyllm::detail::expect_norm_args("rms_norm", out, x, weight, tensor_view<const float, 1>{}, eps);
    if (!tinyllm::detail::all_unit_stride(out, x, weight)) return rms_norm(out, x, weight, eps);
    tinyllm::detail::norm_rows_vectorized(false, out, x, weight, {}, eps);
}

// The backward of residual_out = x + residual; out = layer_norm(residual_out)
// (cpu::residual_add_layer_norm_backward): dx = layer_norm_backward(dout) +
// dresidual_out (empty: none); dweight, dbias (D) or empty, overwritten or
// (accumulate) added to. All (rows, D); dx may be any input's memory.
inline void residual_add_layer_norm_backward_vectorized(tensor_view<float, 2> dx, tensor_view<float, 1> dweight,
                                                        tensor_view<float, 1> dbias, tensor_view<const float, 2> dout,
                                                        tensor_view<const float, 2> dresidual_out,
                                                        tensor_view<const float, 2> residual_out,
                                                        tensor_view<const float, 1> weight, float eps,
                                                        bool accumulate = false) {
    tinyllm::detail::expect_norm_backward_args("residual_add_layer_norm_backward", dx, dweight, dbias, dout,
                                               dresidual_out, residual_out, weight, eps);
    if (!tinyllm::detail::all_unit_stride(dx, dout, dresidual_out, residual_out, weight))
        return residual_add_layer_norm_backward(dx, dweight, dbias, dout, dresidual_out, residual_out, weight, eps,
                                                accumulate);
    tinyllm::detail::norm_backward_rows_vectorized(true, dx, dweight, dbias, dout, dresidual_out, residual_out, weight,
                                                   eps, accumulate);
}

// The backward of residual_out = x + residual; out = rms_norm(residual_out)
// (cpu::residual_add_rms_norm_backward). As above, without a bias.
inline void residual_add_rms_norm_backward_vectorized(tensor_view<float, 2> dx, tensor_view<float, 1> dweight,
                                                      tensor_view<const float, 2> dout,
                                                      tensor_view<const float, 2> dresidual_out,
                                                      tensor_view<const float, 2> residual_out,
                                                      tensor_view<const float, 1> weight, float eps,
                                                      bool accumulate = false) {
    tinyllm::detail::expect_norm_backward_args("residual_add_rms_norm_backward", dx, dweight, tensor_view<float, 1>{},
                                               dout, dresidual_out, residual_out, weight, eps);
    if (!tinyllm::detail::all_unit_stride(dx, dout, dresidual_out, residual_out, weight))
        return residual_add_rms_norm_backward(dx, dweight, dout, dresidual_out, residual_out, weight, eps, accumulate);
    tinyllm::detail::norm_backward_rows_vectorized(false, dx, dweight, {}, dout, dresidual_out, residual_out, weight,
                                                   eps, accumulate);
}

// ---- The loss -----------------------------------------------------------------------------

// The cross-entropy of logits (rows, V) against targets (rows), and its gradient
// into dlogits (rows, V) unless empty; dlogits may be logits (cpu::cross_entropy,
// same options, checks and messages). Per row, in float: m = max z, the sum of
// e_j = exp(z_j - m), then p_j = e_j / sum; the row's loss from lse = m + log(sum)
// in double, and the rows' losses summed in row order. If a logit is not finite
// the call throws naming the first such row, as the reference does, but other
// rows' gradients may already be written.
template <class Where>
double cross_entropy_vectorized(tensor_view<float, 2> dlogits, tensor_view<const float, 2> logits,
                                tensor_view<const token_id, 1> targets, const cross_entropy_options& options,
                                Where&& where) {
    const index_t rows = logits.extent(0), V = logits.extent(1);
    tinyllm::detail::expect_cross_entropy_rows(logits, targets, options);
    const bool want_grad = dlogits.size() != 0;
    if (want_grad && dlogits.shape() != logits.shape())
        throw error(tinyllm::detail::cat("tinyllm: cross_entropy: dlogits has shape ", to_string(dlogits.shape()),
                                         " but logits has shape ", to_string(logits.shape()),
                                         "; they must be equal (or dlogits empty)"));
    tinyllm::detail::expect_cross_entropy_memory(dlogits, logits, targets);
    if (!tinyllm::detail::all_unit_stride(dlogits, logits)) return cross_entropy(dlogits, logits, targets, options, where);

    index_t valid = 0;  // the targets, checked before any row is read
    for (index_t r = 0; r < rows; ++r) {
        const token_id t = targets(r);
        if (t == options.ignore_index) continue;
        TINYLLM_EXPECT(t >= 0 && t < V, "cross_entropy: the target at ", where(r), " is ", t,
                       ", outside the vocabulary [0, V = ", V, ") and not ignore_index = ", options.ignore_index);
        ++valid;
    }
    const double eps = options.label_smoothing;
    const double scale = options.reduction == loss_reduction::sum ? 1.0 : valid > 0 ? 1.0 / valid : 0.0;
    std::vector<double> row_loss(static_cast<std::size_t>(rows), 0.0);
    std::vector<index_t> bad_column(static_cast<std::size_t>(rows), -1);  // a non-finite logit's index
    tinyllm::detail::for_row_chunks(rows, V, [&](index_t, index_t r0, index_t r1) {
        namespace d = tinyllm::detail;
        for (index_t r = r0; r < r1; ++r) {
            const token_id t = targets(r);
            const float* z = d::row_of(logits, r);
            float* g = want_grad ? d::row_of(dlogits, r) : nullptr;
            if (t == options.ignore_index) {
                if (g) std::fill(g, g + V, 0.0f);
                continue;
            }
            const float m = d::lane_max(z, V);
            const float sum_z = d::lane_sum(V, [&](index_t j) { return z[j]; });
            if (!std::isfinite(m) || !std::isfinite(sum_z)) {  // a NaN or inf somewhere (or a float overflow)
                index_t j = 0;
                while (j < V && std::isfinite(z[j])) ++j;
                if (j < V) {
                    bad_column[static_cast<std::size_t>(r)] = j;
                    continue;
                }
            }
            const float z_t = z[t];  // (g may be z's memory)
            // With a gradient wanted, e_j = exp(z_j - m) also goes into g (z_j read first), scaled below.
            const float sum = g ? d::lane_sum(V, [&](index_t j) { return g[j] = d::exp_nonpositive(z[j] - m); })
                                : d::lane_sum(V, [&](index_t j) { return d::exp_nonpositive(z[j] - m); });
            const double lse = static_cast<double>(m) + std::log(static_cast<double>(sum));
            row_loss[static_cast<std::size_t>(r)] =
                (1.0 - eps) * (lse - z_t) + eps * (lse - static_cast<double>(sum_z) / static_cast<double>(V));
            if (!g) continue;
            // (p_j - eps / V) * scale with p_j = e_j / sum, and - (1 - eps) * scale at the target.
            const float p_scale = static_cast<float>(scale / static_cast<double>(sum));
            const float smooth = static_cast<float>(eps / static_cast<double>(V) * scale);
            const float e_t = g[t];
            for (index_t j = 0; j < V; ++j) g[j] = g[j] * p_scale - smooth;
            g[t] = static_cast<float>((static_cast<double>(e_t) * p_scale - eps / static_cast<double>(V) * scale) -
                                      (1.0 - eps) * scale);
        }
    });
    double total = 0;
    for (index_t r = 0; r < rows; ++r) {
        const index_t j = bad_column[static_cast<std::size_t>(r)];
        TINYLLM_EXPECT(j < 0, "cross_entropy: the logits at ", where(r), " (row ", r, ") hold a non-finite value, ",
                       logits(r, j), " at vocabulary index ", j);
        total += row_loss[static_cast<std::size_t>(r)];
    }
    return total * scale;
}

inline double cross_entropy_vectorized(tensor_view<float, 2> dlogits /*(rows, V) or empty*/,
                                       tensor_view<const float, 2> logits /*(rows, V)*/,
                                       tensor_view<const token_id, 1> targets /*(rows)*/,
                                       const cross_entropy_options& options = {}) {
    return cross_entropy_vectorized(dlogits, logits, targets, options, tinyllm::detail::flat_position);
}

}  // namespace cpu
}  // namespace tinyllm
