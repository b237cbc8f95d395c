// tinyllm/activation.hpp — the non-linearities of a transformer's MLP (GELU in
// its two forms, SiLU, ReLU) and the element-wise tensor operations around them
// (bias + activation, the SwiGLU gate product, the residual add).
//
// A transformer block is attention followed by an MLP, and the MLP is two (or
// three) matrix products with a non-linearity between them. Without it the
// two products would collapse into one linear map. The activations in use:
//
//     relu(x)      = max(x, 0)                                  (the original Transformer)
//     gelu_erf(x)  = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))   (BERT; PyTorch's exact GELU)
//     gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//                                                               (GPT-2's "gelu_new", a fit of the erf form)
//     silu(x)      = x * sigmoid(x) = x / (1 + exp(-x))         (a.k.a. swish; Llama's gate)
//
// GELU weighs x by the probability that a standard normal is below x: a smooth
// ReLU that lets small negative values through a little and has a gradient
// everywhere. GPT-2 was trained with the tanh approximation, so a GPT-2
// checkpoint must be run with gelu_tanh (the two differ by up to ~5e-4).
//
// Numerical care. Both GELU forms are written so that no cancellation happens
// for negative x, where the result is a tiny number:
//   * 1 + erf(z) = erfc(-z), so gelu_erf(x) = 0.5 x erfc(-x / sqrt(2));
//     `1 + erf(z)` in float would lose every digit near x = -5 (erf(z) ~ -1).
//   * 1 + tanh(u) = 2 sigmoid(2u), so gelu_tanh(x) = x / (1 + exp(-2u)),
//     u = sqrt(2/pi) (x + 0.044715 x^3). Mathematically identical to GPT-2's
//     definition; accurate in float to a few ulps for every x.
// The functions are TINYLLM_HOST_DEVICE: the CPU references below and the CUDA
// kernels in <tinyllm/cuda/activation.cuh> call this one definition.
//
// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"), Llama's MLP:
//
//     swiglu(gate, up) = silu(gate) * up       element-wise
//
// where gate = x W_gate^T and up = x W_up^T are two projections of the same x.
// The gate decides, per hidden unit, how much of `up` passes.
//
// Tensor operations here take (..., cols) tensors — any number of leading
// dimensions, as a (B, T, D) activation, a (rows, cols) matrix or one (cols)
// vector — as views (any strides) or owning tensors. The (rows, cols) functions
// are the definitions; the (..., cols) overloads after them check the shapes,
// merge the leading dimensions into rows (as_rows in tensor.hpp) and call them.
// `out` may be one of the inputs (in place): each element is read before it is
// written.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <string_view>

namespace tinyllm {

// Which non-linearity. `identity` (f(x) = x) makes bias_activate a plain bias add.
enum class activation { identity, relu, gelu_erf, gelu_tanh, silu };

constexpr std::string_view activation_name(activation kind) {
    switch (kind) {
        case activation::identity: return "identity";
        case activation::relu: return "relu";
        case activation::gelu_erf: return "gelu_erf";
        case activation::gelu_tanh: return "gelu_tanh";
        case activation::silu: return "silu";
    }
    return "unknown";
}

// max(x, 0); NaN stays NaN (as in PyTorch).
TINYLLM_HOST_DEVICE float relu(float x) { return x < 0.0f ? 0.0f : x; }

// 1 / (1 + exp(-x)).
TINYLLM_HOST_DEVICE float sigmoid(float x) { return 1.0f / (1.0f + detail::exp_f(-x)); }

// x * sigmoid(x). For very negative x, exp(-x) overflows to inf and the result is -0.
TINYLLM_HOST_DEVICE float silu(float x) { return x / (1.0f + detail::exp_f(-x)); }

// 0.5 x (1 + erf(x / sqrt 2)), computed as 0.5 x erfc(-x / sqrt 2).
TINYLLM_HOST_DEVICE float gelu_erf(float x) {
    const float inv_sqrt2 = 0.70710678118654752f;
    return 0.5f * x * detail::erfc_f(-x * inv_sqrt2);
}

// 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x / (1 + exp(-2u)).
TINYLLM_HOST_DEVICE float gelu_tanh(float x) {
    const float sqrt_2_over_pi = 0.79788456080286536f;
    const float u = sqrt_2_over_pi * (x + 0.044715f * x * x * x);
    return x / (1.0f + detail::exp_f(-2.0f * u));
}

// The activation `kind` applied to x.
TINYLLM_HOST_DEVICE float activate(activation kind, float x) {
    switch (kind) {
        case activation::relu: return relu(x);
        case activation::gelu_erf: return gelu_erf(x);
        case activation::gelu_tanh: return gelu_tanh(x);
        case activation::silu: return silu(x);
        case activation::identity: break;
    }
    return x;
}

// silu(gate) * up: one element of the SwiGLU product.
TINYLLM_HOST_DEVICE float swiglu(float gate, float up) { return silu(gate) * up; }

namespace detail {

// Shape checks shared by the CPU references and the CUDA launchers.
template <class Out, class In>
void expect_same_shape(const Out& out, const In& in, std::string_view op, std::string_view out_name,
                       std::string_view in_name) {
    if (out.shape() != in.shape())
        throw error(cat("tinyllm: ", op, ": ", out_name, " has shape ", to_string(out.shape()), " but ", in_name,
                        " has shape ", to_string(in.shape()), "; they must be equal"));
}

template <class Out, class Bias>
void expect_bias(const Out& out, const Bias& bias, std::string_view op) {
    TINYLLM_EXPECT(bias.extent(0) == out.extent(1), op, ": bias has ", bias.extent(0),
                   " elements but the rows have ", out.extent(1), " columns; one bias per column is required");
}

}  // namespace detail

namespace cpu {

// out = kind(x), element-wise. out, x: (rows, cols).
inline void activate(tensor_view<float, 2> out, tensor_view<const float, 2> x, activation kind) {
    tinyllm::detail::expect_same_shape(out, x, "activate", "out", "x");
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t c = 0; c < x.extent(1); ++c) out(r, c) = tinyllm::activate(kind, x(r, c));
}

// out = kind(x + bias), bias broadcast over rows: the epilogue of a linear
// layer, fused. out, x: (rows, cols); bias: (cols).
inline void bias_activate(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 1> bias,
                          activation kind) {
    tinyllm::detail::expect_same_shape(out, x, "bias_activate", "out", "x");
    tinyllm::detail::expect_bias(out, bias, "bias_activate");
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t c = 0; c < x.extent(1); ++c) out(r, c) = tinyllm::activate(kind, x(r, c) + bias(c));
}

// out = silu(gate) * up, element-wise. out, gate, up: (rows, hidden).
inline void swiglu(tensor_view<float, 2> out, tensor_view<const float, 2> gate, tensor_view<const float, 2> up) {
    tinyllm::detail::expect_same_shape(out, gate, "swiglu", "out", "gate");
    tinyllm::detail::expect_same_shape(out, up, "swiglu", "out", "up");
    for (index_t r = 0; r < out.extent(0); ++r)
        for (index_t c = 0; c < out.extent(1); ++c) out(r, c) = tinyllm::swiglu(gate(r, c), up(r, c));
}

// out = a + b, element-wise: the residual connection x = x + f(x).
inline void add(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_same_shape(out, a, "add", "out", "a");
    tinyllm::detail::expect_same_shape(out, b, "add", "out", "b");
    for (index_t r = 0; r < out.extent(0); ++r)
        for (index_t c = 0; c < out.extent(1); ++c) out(r, c) = a(r, c) + b(r, c);
}

// out = a * b, element-wise.
inline void multiply(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_same_shape(out, a, "multiply", "out", "a");
    tinyllm::detail::expect_same_shape(out, b, "multiply", "out", "b");
    for (index_t r = 0; r < out.extent(0); ++r)
        for (index_t c = 0; c < out.extent(1); ++c) out(r, c) = a(r, c) * b(r, c);
}

// ---- Any number of leading dimensions: (..., cols) ---------------------------------------
// Views or owning tensors of any rank; out and every input of one shape, bias (cols).

template <tensor_like Out, tensor_like X>
void activate(Out&& out /*(..., cols)*/, const X& x /*(..., cols)*/, activation kind) {
    expect_equal_shapes(out, x, "activate", "out", "x");
    activate(as_rows<float>(out, "activate: out"), as_rows<const float>(x, "activate: x"), kind);
}

template <tensor_like Out, tensor_like X, tensor_like B>
void bias_activate(Out&& out /*(..., cols)*/, const X& x /*(..., cols)*/, const B& bias /*(cols)*/, activation kind) {
    expect_equal_shapes(out, x, "bias_activate", "out", "x");
    bias_activate(as_rows<float>(out, "bias_activate: out"), as_rows<const float>(x, "bias_activate: x"),
                  as_vector<const float>(bias), kind);
}

template <tensor_like Out, tensor_like G, tensor_like U>
void swiglu(Out&& out /*(..., hidden)*/, const G& gate /*(..., hidden)*/, const U& up /*(..., hidden)*/) {
    expect_equal_shapes(out, gate, "swiglu", "out", "gate");
    expect_equal_shapes(out, up, "swiglu", "out", "up");
    swiglu(as_rows<float>(out, "swiglu: out"), as_rows<const float>(gate, "swiglu: gate"),
           as_rows<const float>(up, "swiglu: up"));
}

template <tensor_like Out, tensor_like A, tensor_like B>
void add(Out&& out /*(..., cols)*/, const A& a /*(..., cols)*/, const B& b /*(..., cols)*/) {
    expect_equal_shapes(out, a, "add", "out", "a");
    expect_equal_shapes(out, b, "add", "out", "b");
    add(as_rows<float>(out, "add: out"), as_rows<const float>(a, "add: a"), as_rows<const float>(b, "add: b"));
}

template <tensor_like Out, tensor_like A, tensor_like B>
void multiply(Out&& out /*(..., cols)*/, const A& a /*(..., cols)*/, const B& b /*(..., cols)*/) {
    expect_equal_shapes(out, a, "multiply", "out", "a");
    expect_equal_shapes(out, b, "multiply", "out", "b");
    multiply(as_rows<float>(out, "multiply: out"), as_rows<const float>(a, "multiply: a"),
             as_rows<const float>(b, "multiply: b"));
}

}  // namespace cpu
}  // namespace tinyllm
