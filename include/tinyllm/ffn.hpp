// tinyllm/ffn.hpp — the feed-forward (MLP) sub-layer of a transformer block:
// a readable matrix product, torch.nn.Linear, the GPT-2 MLP and Llama's SwiGLU MLP.
//
// After attention has mixed information *between* tokens, the MLP transforms
// each token's vector on its own, with the same weights for every position.
// It widens the vector to a hidden size H (4D in GPT-2, ~8D/3 in Llama),
// applies a non-linearity there, and projects back to D:
//
//     GPT-2:   mlp(x) = gelu_tanh(x W_fc^T + b_fc) W_proj^T + b_proj
//     Llama:   mlp(x) = (silu(x W_gate^T) * (x W_up^T)) W_down^T          (no biases)
//
// The gated form (SwiGLU) spends a third projection to let one projection gate
// the other, element by element; at equal parameter count it trains to lower
// loss, which is why Llama-style models use H ~ 8D/3 instead of 4D.
//
// Weight layout: every weight here is (out_features, in_features), as in
// torch.nn.Linear and the safetensors of Llama: y = x W^T + b. Views carry
// strides, so a weight stored the other way round — GPT-2's Conv1D keeps
// c_fc.weight as (in_features, out_features) — is passed as
// w.transpose(0, 1) with no copy. `matmul(out, a, b)` is the plain product
// out = a b with b (K, N).
//
// Shapes: activations are (..., features) — any number of leading dimensions,
// as a (B, T, D) activation, a (rows, D) matrix or one (D) vector — as views or
// owning tensors. The (rows, features) functions are the definitions; the
// (..., features) overloads after them check the shapes, merge the leading
// dimensions into rows (as_rows in tensor.hpp) and call them. Weights stay
// matrices and biases vectors. matmul is the 2-D matrix product only.
//
// Backward (training; derivations in docs/training.md). For y = x W^T + b over
// rows i, with the loss's gradient dy = dL/dy arriving from above:
//
//     dx = dy W                      (rows, K): the gradient passed further down
//     dW = dy^T x = sum_i dy_i^T x_i (N, K): one outer product per row, summed
//     db = sum_i dy_i                (N)
//
// linear_backward computes all three (any may be skipped by passing it
// empty). Parameter gradients either overwrite dW, db or are added to them
// (`accumulate`): a weight used twice — the token embedding tied to the
// output projection, GPT-2 — gets the sum of both uses' gradients, and
// gradient accumulation over micro-batches adds too. The weight's layout is
// any strides, and dW is written in the layout it is given, so GPT-2's Conv1D
// passes w.transpose(0, 1) and dw.transpose(0, 1). For out = a b (matmul),
// da = dout b^T and db = a^T dout: matmul_backward.
//
// This CPU reference is the triple loop, accumulating in double: slow, obvious
// and accurate. On the GPU (<tinyllm/cuda/ffn.cuh>) the products go to cuBLAS
// and what tinyllm writes is the element-wise work between them, fused.
#pragma once

#include <tinyllm/activation.hpp>
#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <string_view>
#include <vector>

namespace tinyllm {

// The GPT-2 MLP's parameters (element type T), all in (out_features, in_features) layout.
template <class T>
struct gpt2_mlp_weights {
    tensor_view<const T, 2> fc_weight;    // (H, D)  c_fc   ("up")
    tensor_view<const T, 1> fc_bias;      // (H)
    tensor_view<const T, 2> proj_weight;  // (D, H)  c_proj ("down")
    tensor_view<const T, 1> proj_bias;    // (D)
};

// Llama's SwiGLU MLP's parameters, (out_features, in_features) layout, no biases.
template <class T>
struct swiglu_mlp_weights {
    tensor_view<const T, 2> gate_weight;  // (H, D)  gate_proj
    tensor_view<const T, 2> up_weight;    // (H, D)  up_proj
    tensor_view<const T, 2> down_weight;  // (D, H)  down_proj
};

namespace detail {

template <class Out, class X, class W, class B>
void expect_linear_args(std::string_view op, const Out& out, const X& x, const W& weight, const B& bias) {
    TINYLLM_EXPECT(weight.extent(1) == x.extent(1), op, ": weight is ", to_string(weight.shape()),
                   " = (out_features, in_features) but x ", to_string(x.shape()), " has ", x.extent(1),
                   " features; in_features must equal x's last dimension");
    TINYLLM_EXPECT(out.extent(0) == x.extent(0) && out.extent(1) == weight.extent(0), op, ": out has shape ",
                   to_string(out.shape()), " but (rows of x, out_features) = (", x.extent(0), ", ", weight.extent(0),
                   ") is required");
    TINYLLM_EXPECT(bias.size() == 0 || bias.extent(0) == weight.extent(0), op, ": bias has ", bias.extent(0),
                   " elements but the layer has ", weight.extent(0), " out_features (or pass no bias)");
    TINYLLM_EXPECT(!overlaps(out, x) && !overlaps(out, weight) && !overlaps(out, bias), op,
                   ": out must not share memory with x, weight or bias (the product reads them while out is written)");
    expect_distinct_elements(op, "out", out);
}

template <class Out, class X, class W>
void expect_gpt2_mlp_args(std::string_view op, const Out& out, const X& x, const W& w) {
    const index_t D = x.extent(1), H = w.fc_weight.extent(0);
    TINYLLM_EXPECT(w.fc_weight.extent(1) == D, op, ": fc_weight is ", to_string(w.fc_weight.shape()),
                   " but must be (H, D) with D = ", D);
    TINYLLM_EXPECT(w.fc_bias.extent(0) == H, op, ": fc_bias has ", w.fc_bias.extent(0), " elements but H = ", H);
    TINYLLM_EXPECT(w.proj_weight.extent(0) == D && w.proj_weight.extent(1) == H, op, ": proj_weight is ",
                   to_string(w.proj_weight.shape()), " but must be (D, H) = (", D, ", ", H, ")");
    TINYLLM_EXPECT(w.proj_bias.extent(0) == D, op, ": proj_bias has ", w.proj_bias.extent(0), " elements but D = ", D);
    if (out.shape() != x.shape())
        throw error(cat("tinyllm: ", op, ": out has shape ", to_string(out.shape()), " but x has shape ",
                        to_string(x.shape()), "; they must be equal"));
}

template <class Out, class X, class W>
void expect_swiglu_mlp_args(std::string_view op, const Out& out, const X& x, const W& w) {
    const index_t D = x.extent(1), H = w.gate_weight.extent(0);
    TINYLLM_EXPECT(w.gate_weight.extent(1) == D, op, ": gate_weight is ", to_string(w.gate_weight.shape()),
                   " but must be (H, D) with D = ", D);
    TINYLLM_EXPECT(w.up_weight.shape() == w.gate_weight.shape(), op, ": up_weight is ", to_string(w.up_weight.shape()),
                   " but must have gate_weight's shape ", to_string(w.gate_weight.shape()));
    TINYLLM_EXPECT(w.down_weight.extent(0) == D && w.down_weight.extent(1) == H, op, ": down_weight is ",
                   to_string(w.down_weight.shape()), " but must be (D, H) = (", D, ", ", H, ")");
    if (out.shape() != x.shape())
        throw error(cat("tinyllm: ", op, ": out has shape ", to_string(out.shape()), " but x has shape ",
                        to_string(x.shape()), "; they must be equal"));
}

// A weight argument (a view or an owning tensor) as a matrix of E.
template <class E, tensor_like X>
tensor_view<E, 2> as_matrix(const X& x) {
    const auto v = as_view(x);
    static_assert(decltype(v)::rank == 2, "tinyllm: this weight must be a matrix (two dimensions)");
    return v;
}

// a (..., N) and b (..., K) have the same leading dimensions (one row of a per row of b).
template <tensor_like A, tensor_like B>
void expect_same_leading(const A& a, const B& b, std::string_view op, std::string_view a_name,
                         std::string_view b_name) {
    const auto av = as_view(a);
    const auto bv = as_view(b);
    constexpr std::size_t R = decltype(av)::rank;
    bool same = R == decltype(bv)::rank;
    if constexpr (R == decltype(bv)::rank)
        for (std::size_t d = 0; d + 1 < R; ++d) same = same && av.extent(d) == bv.extent(d);
    if (!same)
        throw error(cat("tinyllm: ", op, ": ", a_name, " has shape ", to_string(av.shape()), " but ", b_name,
                        " has shape ", to_string(bv.shape()), "; all dimensions but the last must be equal"));
}

template <class DX, class DW, class DB, class DY, class X, class W>
void expect_linear_backward_args(std::string_view op, const DX& dx, const DW& dweight, const DB& dbias, const DY& dout,
                                 const X& x, const W& weight) {
    TINYLLM_EXPECT(weight.extent(1) == x.extent(1), op, ": weight is ", to_string(weight.shape()),
                   " = (out_features, in_features) but x ", to_string(x.shape()), " has ", x.extent(1),
                   " features; in_features must equal x's last dimension");
    TINYLLM_EXPECT(dout.extent(0) == x.extent(0) && dout.extent(1) == weight.extent(0), op, ": dout has shape ",
                   to_string(dout.shape()), " but (rows of x, out_features) = (", x.extent(0), ", ", weight.extent(0),
                   ") is required");
    if (dx.size() != 0 && dx.shape() != x.shape())
        throw error(cat("tinyllm: ", op, ": dx has shape ", to_string(dx.shape()), " but x has shape ",
                        to_string(x.shape()), "; they must be equal (or dx empty)"));
    if (dweight.size() != 0 && dweight.shape() != weight.shape())
        throw error(cat("tinyllm: ", op, ": dweight has shape ", to_string(dweight.shape()), " but weight has shape ",
                        to_string(weight.shape()), "; they must be equal (or dweight empty)"));
    TINYLLM_EXPECT(dbias.size() == 0 || dbias.extent(0) == weight.extent(0), op, ": dbias has ", dbias.extent(0),
                   " elements but the layer has ", weight.extent(0), " out_features (or pass no dbias)");
    // Each output its own elements, apart from every input (and from each other).
    expect_distinct_elements(op, "dx", dx);
    expect_distinct_elements(op, "dweight", dweight);
    expect_distinct_elements(op, "dbias", dbias);
    expect_apart_from(op, "dx", dx, "dout", dout, "x", x, "weight", weight);
    expect_apart_from(op, "dweight", dweight, "dout", dout, "x", x, "weight", weight, "dx", dx);
    expect_apart_from(op, "dbias", dbias, "dout", dout, "x", x, "weight", weight, "dx", dx, "dweight", dweight);
}

// out = a b needs a (M, K) and b (K, N): a's columns equal b's rows.
template <class A, class B>
void expect_matmul_args(std::string_view op, const A& a, const B& b) {
    TINYLLM_EXPECT(a.extent(1) == b.extent(0), op, ": a is ", to_string(a.shape()), " and b is ", to_string(b.shape()),
                   "; a's columns must equal b's rows");
}

}  // namespace detail

namespace cpu {

// out = x weight^T + bias, torch.nn.Linear. out: (rows, N); x: (rows, K);
// weight: (N, K), any strides; bias: (N) or empty. out must not overlap x or
// weight (checked). Any rank: below.
inline void linear(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 2> weight,
                   tensor_view<const float, 1> bias) {
    tinyllm::detail::expect_linear_args("linear", out, x, weight, bias);
    const index_t rows = x.extent(0), N = weight.extent(0), K = weight.extent(1);
    for (index_t i = 0; i < rows; ++i) {
        for (index_t n = 0; n < N; ++n) {
            double acc = bias.size() ? bias(n) : 0.0;
            for (index_t k = 0; k < K; ++k) acc += static_cast<double>(x(i, k)) * weight(n, k);
            out(i, n) = static_cast<float>(acc);
        }
    }
}

// out = a b. out: (M, N); a: (M, K); b: (K, N). out must not overlap a or b (checked).
inline void matmul(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_matmul_args("matmul", a, b);
    linear(out, a, b.transpose(0, 1), {});  // a b = a (b^T)^T
}

// The GPT-2 MLP: out = act(x fc_weight^T + fc_bias) proj_weight^T + proj_bias,
// act = gelu_tanh for GPT-2 (gelu_erf for BERT). out, x: (rows, D).
inline void gpt2_mlp(tensor_view<float, 2> out, tensor_view<const float, 2> x, const gpt2_mlp_weights<float>& w,
                     activation act = activation::gelu_tanh) {
    tinyllm::detail::expect_gpt2_mlp_args("gpt2_mlp", out, x, w);
    const index_t rows = x.extent(0), H = w.fc_weight.extent(0);
    std::vector<float> hidden_data(static_cast<std::size_t>(rows * H));
    tensor_view<float, 2> hidden(hidden_data.data(), {rows, H});  // (rows, H)
    linear(hidden, x, w.fc_weight, w.fc_bias);
    activate(hidden, hidden, act);
    linear(out, hidden, w.proj_weight, w.proj_bias);
}

// Llama's MLP: out = (silu(x gate_weight^T) * (x up_weight^T)) down_weight^T. out, x: (rows, D).
inline void swiglu_mlp(tensor_view<float, 2> out, tensor_view<const float, 2> x, const swiglu_mlp_weights<float>& w) {
    tinyllm::detail::expect_swiglu_mlp_args("swiglu_mlp", out, x, w);
    const index_t rows = x.extent(0), H = w.gate_weight.extent(0);
    std::vector<float> gate_data(static_cast<std::size_t>(rows * H)), up_data(gate_data.size());
    tensor_view<float, 2> gate(gate_data.data(), {rows, H});  // (rows, H)
    tensor_view<float, 2> up(up_data.data(), {rows, H});      // (rows, H)
    linear(gate, x, w.gate_weight, {});
    linear(up, x, w.up_weight, {});
    swiglu(gate, gate, up);
    linear(out, gate, w.down_weight, {});
}

// The gradients of out = x weight^T + bias (linear above), given dout = dL/dout:
//     dx = dout weight          (rows, K), overwritten; empty: not computed
//     dweight (+)= dout^T x     (N, K), any strides; empty: not computed
//     dbias (+)= sum_rows dout  (N); empty: not computed (or no bias)
// `accumulate` adds to dweight and dbias instead of overwriting them. dout:
// (rows, N); x: (rows, K); weight: (N, K), any strides. dx must not overlap
// dout; it may be x's memory (x is read for dweight before dx is written).
inline void linear_backward(tensor_view<float, 2> dx, tensor_view<float, 2> dweight, tensor_view<float, 1> dbias,
                            tensor_view<const float, 2> dout, tensor_view<const float, 2> x,
                            tensor_view<const float, 2> weight, bool accumulate = false) {
    tinyllm::detail::expect_linear_backward_args("linear_backward", dx, dweight, dbias, dout, x, weight);
    const index_t rows = x.extent(0), N = weight.extent(0), K = weight.extent(1);
    if (dweight.size()) {
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) {
                double acc = accumulate ? dweight(n, k) : 0.0;
                for (index_t i = 0; i < rows; ++i) acc += static_cast<double>(dout(i, n)) * x(i, k);
                dweight(n, k) = static_cast<float>(acc);
            }
    }
    if (dbias.size()) {
        for (index_t n = 0; n < N; ++n) {
            double acc = accumulate ? dbias(n) : 0.0;
            for (index_t i = 0; i < rows; ++i) acc += dout(i, n);
            dbias(n) = static_cast<float>(acc);
        }
    }
    if (dx.size()) {
        for (index_t i = 0; i < rows; ++i)
            for (index_t k = 0; k < K; ++k) {
                double acc = 0;
                for (index_t n = 0; n < N; ++n) acc += static_cast<double>(dout(i, n)) * weight(n, k);
                dx(i, k) = static_cast<float>(acc);
            }
    }
}

// The gradients of out = a b (matmul above), given dout: da = dout b^T (M, K)
// and db (+)= a^T dout (K, N); either may be empty (not computed). `accumulate`
// adds to db. da must not overlap dout.
inline void matmul_backward(tensor_view<float, 2> da, tensor_view<float, 2> db, tensor_view<const float, 2> dout,
                            tensor_view<const float, 2> a, tensor_view<const float, 2> b, bool accumulate = false) {
    tinyllm::detail::expect_matmul_args("matmul_backward", a, b);
    // out = a (b^T)^T: linear with weight b^T, whose gradient is db^T.
    linear_backward(da, db.transpose(0, 1), {}, dout, a, b.transpose(0, 1), accumulate);
}

// ---- Any number of leading dimensions: (..., features) -------------------------------

// linear: out (..., N), x (..., K) with the same leading dimensions; weight (N, K); bias (N) or {}.
template <tensor_like Out, tensor_like X, tensor_like W, tensor_like B = tensor_view<const float, 1>>
void linear(Out&& out /*(..., N)*/, const X& x /*(..., K)*/, const W& weight /*(N, K)*/, const B& bias /*(N)*/) {
    tinyllm::detail::expect_same_leading(out, x, "linear", "out", "x");
    linear(as_rows<float>(out, "linear: out"), as_rows<const float>(x, "linear: x"),
           tinyllm::detail::as_matrix<const float>(weight), as_vector<const float>(bias));
}

// linear_backward: dx (..., K) or {}, dout (..., N) and x (..., K) with the same leading
// dimensions; dweight (N, K) or {}; dbias (N) or {}; weight (N, K).
template <tensor_like DX = tensor_view<float, 2>, tensor_like DW = tensor_view<float, 2>,
          tensor_like DB = tensor_view<float, 1>, tensor_like DY, tensor_like X, tensor_like W>
void linear_backward(DX&& dx /*(..., K) or empty*/, DW&& dweight /*(N, K) or empty*/, DB&& dbias /*(N) or empty*/,
                     const DY& dout /*(..., N)*/, const X& x /*(..., K)*/, const W& weight /*(N, K)*/,
                     bool accumulate = false) {
    tinyllm::detail::expect_same_leading(dout, x, "linear_backward", "dout", "x");
    tensor_view<float, 2> dx2;  // empty: not wanted
    if (as_view(dx).size() != 0) {
        expect_equal_shapes(dx, x, "linear_backward", "dx", "x");
        dx2 = as_rows<float>(dx, "linear_backward: dx");
    }
    linear_backward(dx2, tensor_view<float, 2>(as_view(dweight)), as_vector<float>(dbias),
                    as_rows<const float>(dout, "linear_backward: dout"), as_rows<const float>(x, "linear_backward: x"),
                    tinyllm::detail::as_matrix<const float>(weight), accumulate);
}

template <tensor_like Out, tensor_like X>
void gpt2_mlp(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const gpt2_mlp_weights<float>& w,
              activation act = activation::gelu_tanh) {
    expect_equal_shapes(out, x, "gpt2_mlp", "out", "x");
    gpt2_mlp(as_rows<float>(out, "gpt2_mlp: out"), as_rows<const float>(x, "gpt2_mlp: x"), w, act);
}

template <tensor_like Out, tensor_like X>
void swiglu_mlp(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const swiglu_mlp_weights<float>& w) {
    expect_equal_shapes(out, x, "swiglu_mlp", "out", "x");
    swiglu_mlp(as_rows<float>(out, "swiglu_mlp: out"), as_rows<const float>(x, "swiglu_mlp: x"), w);
}

}  // namespace cpu
}  // namespace tinyllm
