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
// Backward (training; derivations in docs/training.md). The derivatives, for
// dx = dy * f'(x):
//
//     relu'(x)      = [x > 0]                           (0 at x = 0, as PyTorch)
//     gelu_erf'(x)  = Phi(x) + x phi(x),                phi(x) = exp(-x^2/2) / sqrt(2 pi)
//     gelu_tanh'(x) = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2),   s = sigmoid(2u)
//                     (from 1 + tanh(u) = 2 sigmoid(2u) and 1 - tanh(u)^2 = 4 s (1 - s))
//     silu'(x)      = sigmoid(x) (1 + x (1 - sigmoid(x)))
//
// and for the products: swiglu(g, u) = silu(g) u gives dg = dy u silu'(g) and
// du = dy silu(g); a * b gives da = dy b, db = dy a; a + b passes dy to both
// (no function needed); bias + activation gives dbias = the sum over rows of
// dy f'(x + bias). The derivatives are written in double (the CPU references
// compute in double and round once), as TINYLLM_HOST_DEVICE functions like the
// forwards, in the same cancellation-free forms: no 1 + erf, no 1 - tanh^2.
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
#include <initializer_list>
#include <string_view>
#include <utility>
#include <vector>

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

// exp and erfc in double under one name on host and device (the derivatives below).
TINYLLM_HOST_DEVICE double exp_double(double x) {
#if TINYLLM_ON_DEVICE
    return ::exp(x);
#else
    return std::exp(x);
#endif
}

TINYLLM_HOST_DEVICE double erfc_double(double x) {
#if TINYLLM_ON_DEVICE
    return ::erfc(x);
#else
    return std::erfc(x);
#endif
}

TINYLLM_HOST_DEVICE double sigmoid_double(double x) { return 1.0 / (1.0 + exp_double(-x)); }

}  // namespace detail

// d relu / dx: 1 for x > 0, else 0.
TINYLLM_HOST_DEVICE double relu_derivative(double x) { return x > 0.0 ? 1.0 : 0.0; }

// d silu / dx = sigmoid(x) (1 + x (1 - sigmoid(x))). Finite for every finite x
// (far below zero sigmoid is 0 and x (1 - sigmoid) stays finite).
TINYLLM_HOST_DEVICE double silu_derivative(double x) {
    const double s = detail::sigmoid_double(x);
    return s * (1.0 + x * (1.0 - s));
}

// d gelu_erf / dx = Phi(x) + x phi(x), Phi(x) = 0.5 erfc(-x / sqrt 2).
TINYLLM_HOST_DEVICE double gelu_erf_derivative(double x) {
    const double inv_sqrt2 = 0.70710678118654752440, inv_sqrt_2pi = 0.39894228040143267794;
    return 0.5 * detail::erfc_double(-x * inv_sqrt2) + x * inv_sqrt_2pi * detail::exp_double(-0.5 * x * x);
}

// d gelu_tanh / dx = s + 2 x s (1 - s) u', s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
TINYLLM_HOST_DEVICE double gelu_tanh_derivative(double x) {
    const double sqrt_2_over_pi = 0.79788456080286535588;
    const double u = sqrt_2_over_pi * (x + 0.044715 * x * x * x);
    const double du = sqrt_2_over_pi * (1.0 + 3.0 * 0.044715 * x * x);
    const double s = detail::sigmoid_double(2.0 * u);
    return s + 2.0 * x * s * (1.0 - s) * du;
}

// The derivative of the activation `kind` at x.
TINYLLM_HOST_DEVICE double activate_derivative(activation kind, double x) {
    switch (kind) {
        case activation::relu: return relu_derivative(x);
        case activation::gelu_erf: return gelu_erf_derivative(x);
        case activation::gelu_tanh: return gelu_tanh_derivative(x);
        case activation::silu: return silu_derivative(x);
        case activation::identity: break;
    }
    return 1.0;
}

namespace detail {

// Shape checks shared by the CPU references and the CUDA launchers.
template <class Out, class In>
void expect_same_shape(const Out& out, const In& in, std::string_view op, std::string_view out_name,
                       std::string_view in_name) {
    if (out.shape() != in.shape())
        throw error(cat("tinyllm: ", op, ": ", out_name, " has shape ", to_string(out.shape()), " but ", in_name,
                        " has shape ", to_string(in.shape()), "; they must be equal"));
}

// The memory rules of the element-wise ops, CPU and CUDA alike (rows are
// written in parallel, a GPU thread or a vector at a time): an output has an
// address for each element, and is either exactly one of the inputs (in place:
// each element is read before it is written, by the same iteration or thread)
// or apart from it.
template <class T>
void expect_elementwise_output(std::string_view op, std::string_view out_name, tensor_view<T, 2> out,
                               std::initializer_list<std::pair<std::string_view, tensor_view<const T, 2>>> inputs) {
    expect_distinct_elements(op, out_name, out);
    for (const auto& [name, in] : inputs) expect_in_place_or_apart(op, out_name, out, name, in);
}
// Two outputs (dgate and dup, da and db) must also be apart from each other.
template <class T>
void expect_elementwise_outputs(std::string_view op, std::string_view a_name, tensor_view<T, 2> a,
                                std::string_view b_name, tensor_view<T, 2> b,
                                std::initializer_list<std::pair<std::string_view, tensor_view<const T, 2>>> inputs) {
    expect_elementwise_output(op, a_name, a, inputs);
    expect_elementwise_output(op, b_name, b, inputs);
    expect_apart(op, a_name, a, b_name, b);
}

// bias_activate_backward: dx element-wise over dout and x; dbias (summed over
// the rows while they are read) apart from all of them and from bias.
template <class T, class G>
void expect_bias_activate_backward_memory(tensor_view<T, 2> dx, tensor_view<G, 1> dbias, tensor_view<const T, 2> dout,
                                          tensor_view<const T, 2> x, tensor_view<const T, 1> bias) {
    constexpr std::string_view op = "bias_activate_backward";
    expect_elementwise_output<T>(op, "dx", dx, {{"dout", dout}, {"x", x}});
    expect_apart(op, "dx", dx, "bias", bias);
    expect_distinct_elements(op, "dbias", dbias);
    expect_apart_from(op, "dbias", dbias, "dx", dx, "dout", dout, "x", x, "bias", bias);
}

template <class Out, class Bias>
void expect_bias(const Out& out, const Bias& bias, std::string_view op) {
    TINYLLM_EXPECT(bias.extent(0) == out.extent(1), op, ": bias has ", bias.extent(0),
                   " elements but the rows have ", out.extent(1), " columns; one bias per column is required");
}

// `kind` is one of the enumerators (an integer cast to activation may not be).
inline void expect_activation(activation kind, std::string_view op) {
    TINYLLM_EXPECT(activation_name(kind) != "unknown", op, ": activation ", static_cast<int>(kind),
                   " is not one of identity, relu, gelu_erf, gelu_tanh, silu");
}

}  // namespace detail

namespace cpu {

// out = kind(x), element-wise. out, x: (rows, cols).
inline void activate(tensor_view<float, 2> out, tensor_view<const float, 2> x, activation kind) {
    tinyllm::detail::expect_activation(kind, "activate");
    tinyllm::detail::expect_same_shape(out, x, "activate", "out", "x");
    tinyllm::detail::expect_elementwise_output<float>("activate", "out", out, {{"x", x}});
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t c = 0; c < x.extent(1); ++c) out(r, c) = tinyllm::activate(kind, x(r, c));
}

// out = kind(x + bias), bias broadcast over rows: the epilogue of a linear
// layer, fused. out, x: (rows, cols); bias: (cols).
inline void bias_activate(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 1> bias,
                          activation kind) {
    tinyllm::detail::expect_activation(kind, "bias_activate");
    tinyllm::detail::expect_same_shape(out, x, "bias_activate", "out", "x");
    tinyllm::detail::expect_bias(out, bias, "bias_activate");
    tinyllm::detail::expect_elementwise_output<float>("bias_activate", "out", out, {{"x", x}});
    tinyllm::detail::expect_apart("bias_activate", "out", out, "bias", bias);
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t c = 0; c < x.extent(1); ++c) out(r, c) = tinyllm::activate(kind, x(r, c) + bias(c));
}

// out = silu(gate) * up, element-wise. out, gate, up: (rows, hidden).
inline void swiglu(tensor_view<float, 2> out, tensor_view<const float, 2> gate, tensor_view<const float, 2> up) {
    tinyllm::detail::expect_same_shape(out, gate, "swiglu", "out", "gate");
    tinyllm::detail::expect_same_shape(out, up, "swiglu", "out", "up");
    tinyllm::detail::expect_elementwise_output<float>("swiglu", "out", out, {{"gate", gate}, {"up", up}});
    for (index_t r = 0; r < out.extent(0); ++r)
        for (index_t c = 0; c < out.extent(1); ++c) out(r, c) = tinyllm::swiglu(gate(r, c), up(r, c));
}

// out = a + b, element-wise: the residual connection x = x + f(x).
inline void add(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_same_shape(out, a, "add", "out", "a");
    tinyllm::detail::expect_same_shape(out, b, "add", "out", "b");
    tinyllm::detail::expect_elementwise_output<float>("add", "out", out, {{"a", a}, {"b", b}});
    for (index_t r = 0; r < out.extent(0); ++r)
        for (index_t c = 0; c < out.extent(1); ++c) out(r, c) = a(r, c) + b(r, c);
}

// out = a * b, element-wise.
inline void multiply(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_same_shape(out, a, "multiply", "out", "a");
    tinyllm::detail::expect_same_shape(out, b, "multiply", "out", "b");
    tinyllm::detail::expect_elementwise_output<float>("multiply", "out", out, {{"a", a}, {"b", b}});
    for (index_t r = 0; r < out.extent(0); ++r)
        for (index_t c = 0; c < out.extent(1); ++c) out(r, c) = a(r, c) * b(r, c);
}

// dx = dout * kind'(x), element-wise: the backward of activate. dx, dout, x:
// (rows, cols); dx may be dout's or x's memory.
inline void activate_backward(tensor_view<float, 2> dx, tensor_view<const float, 2> dout, tensor_view<const float, 2> x,
                              activation kind) {
    tinyllm::detail::expect_activation(kind, "activate_backward");
    tinyllm::detail::expect_same_shape(dx, x, "activate_backward", "dx", "x");
    tinyllm::detail::expect_same_shape(dout, x, "activate_backward", "dout", "x");
    tinyllm::detail::expect_elementwise_output<float>("activate_backward", "dx", dx, {{"dout", dout}, {"x", x}});
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t c = 0; c < x.extent(1); ++c)
            dx(r, c) = static_cast<float>(dout(r, c) * activate_derivative(kind, x(r, c)));
}

// The backward of bias_activate: dx = dout * kind'(x + bias) (rows, cols), and
// dbias (cols) = the sum of dx over rows, overwritten or, with `accumulate`,
// added to (empty: not computed). dx may be dout's or x's memory.
inline void bias_activate_backward(tensor_view<float, 2> dx, tensor_view<float, 1> dbias,
                                   tensor_view<const float, 2> dout, tensor_view<const float, 2> x,
                                   tensor_view<const float, 1> bias, activation kind, bool accumulate = false) {
    tinyllm::detail::expect_activation(kind, "bias_activate_backward");
    tinyllm::detail::expect_same_shape(dx, x, "bias_activate_backward", "dx", "x");
    tinyllm::detail::expect_same_shape(dout, x, "bias_activate_backward", "dout", "x");
    tinyllm::detail::expect_bias(x, bias, "bias_activate_backward");
    TINYLLM_EXPECT(dbias.size() == 0 || dbias.extent(0) == x.extent(1), "bias_activate_backward: dbias has ",
                   dbias.extent(0), " elements but the rows have ", x.extent(1), " columns (one per column, or none)");
    tinyllm::detail::expect_bias_activate_backward_memory(dx, dbias, dout, x, bias);
    std::vector<double> sums(static_cast<std::size_t>(dbias.size()));
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t c = 0; c < x.extent(1); ++c) {
            const double d = dout(r, c) * activate_derivative(kind, static_cast<double>(x(r, c)) + bias(c));
            if (dbias.size()) sums[static_cast<std::size_t>(c)] += d;
            dx(r, c) = static_cast<float>(d);
        }
    for (index_t c = 0; c < dbias.size(); ++c)
        dbias(c) = static_cast<float>(sums[static_cast<std::size_t>(c)] + (accumulate ? dbias(c) : 0.0));
}

// The backward of out = silu(gate) * up: dgate = dout * up * silu'(gate) and
// dup = dout * silu(gate). All (rows, hidden); dgate and dup may be the memory
// of gate, up or dout (each element is read before it is written).
inline void swiglu_backward(tensor_view<float, 2> dgate, tensor_view<float, 2> dup, tensor_view<const float, 2> dout,
                            tensor_view<const float, 2> gate, tensor_view<const float, 2> up) {
    tinyllm::detail::expect_same_shape(dout, gate, "swiglu_backward", "dout", "gate");
    tinyllm::detail::expect_same_shape(dout, up, "swiglu_backward", "dout", "up");
    tinyllm::detail::expect_same_shape(dgate, gate, "swiglu_backward", "dgate", "gate");
    tinyllm::detail::expect_same_shape(dup, up, "swiglu_backward", "dup", "up");
    tinyllm::detail::expect_elementwise_outputs<float>("swiglu_backward", "dgate", dgate, "dup", dup,
                                                       {{"dout", dout}, {"gate", gate}, {"up", up}});
    for (index_t r = 0; r < dout.extent(0); ++r)
        for (index_t c = 0; c < dout.extent(1); ++c) {
            const double g = gate(r, c), u = up(r, c), d = dout(r, c);
            const double silu_g = g * tinyllm::detail::sigmoid_double(g);
            dgate(r, c) = static_cast<float>(d * u * silu_derivative(g));
            dup(r, c) = static_cast<float>(d * silu_g);
        }
}

// The backward of out = a * b: da = dout * b, db = dout * a. All (rows, cols);
// da and db may be the memory of a, b or dout.
inline void multiply_backward(tensor_view<float, 2> da, tensor_view<float, 2> db, tensor_view<const float, 2> dout,
                              tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_same_shape(dout, a, "multiply_backward", "dout", "a");
    tinyllm::detail::expect_same_shape(dout, b, "multiply_backward", "dout", "b");
    tinyllm::detail::expect_same_shape(da, a, "multiply_backward", "da", "a");
    tinyllm::detail::expect_same_shape(db, b, "multiply_backward", "db", "b");
    tinyllm::detail::expect_elementwise_outputs<float>("multiply_backward", "da", da, "db", db,
                                                       {{"dout", dout}, {"a", a}, {"b", b}});
    for (index_t r = 0; r < dout.extent(0); ++r)
        for (index_t c = 0; c < dout.extent(1); ++c) {
            const double d = dout(r, c), av = a(r, c), bv = b(r, c);
            da(r, c) = static_cast<float>(d * bv);
            db(r, c) = static_cast<float>(d * av);
        }
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

template <tensor_like DX, tensor_like DY, tensor_like X>
void activate_backward(DX&& dx /*(..., cols)*/, const DY& dout /*(..., cols)*/, const X& x /*(..., cols)*/,
                       activation kind) {
    expect_equal_shapes(dx, x, "activate_backward", "dx", "x");
    expect_equal_shapes(dout, x, "activate_backward", "dout", "x");
    activate_backward(as_rows<float>(dx, "activate_backward: dx"), as_rows<const float>(dout, "activate_backward: dout"),
                      as_rows<const float>(x, "activate_backward: x"), kind);
}

template <tensor_like DX, tensor_like DB = tensor_view<float, 1>, tensor_like DY, tensor_like X, tensor_like B>
void bias_activate_backward(DX&& dx /*(..., cols)*/, DB&& dbias /*(cols) or empty*/, const DY& dout /*(..., cols)*/,
                            const X& x /*(..., cols)*/, const B& bias /*(cols)*/, activation kind,
                            bool accumulate = false) {
    expect_equal_shapes(dx, x, "bias_activate_backward", "dx", "x");
    expect_equal_shapes(dout, x, "bias_activate_backward", "dout", "x");
    bias_activate_backward(as_rows<float>(dx, "bias_activate_backward: dx"), as_vector<float>(dbias),
                           as_rows<const float>(dout, "bias_activate_backward: dout"),
                           as_rows<const float>(x, "bias_activate_backward: x"), as_vector<const float>(bias), kind,
                           accumulate);
}

template <tensor_like DG, tensor_like DU, tensor_like DY, tensor_like G, tensor_like U>
void swiglu_backward(DG&& dgate /*(..., hidden)*/, DU&& dup /*(..., hidden)*/, const DY& dout /*(..., hidden)*/,
                     const G& gate /*(..., hidden)*/, const U& up /*(..., hidden)*/) {
    constexpr std::string_view op = "swiglu_backward";
    expect_equal_shapes(dout, gate, op, "dout", "gate");
    expect_equal_shapes(dout, up, op, "dout", "up");
    expect_equal_shapes(dgate, gate, op, "dgate", "gate");
    expect_equal_shapes(dup, up, op, "dup", "up");
    swiglu_backward(as_rows<float>(dgate, "swiglu_backward: dgate"), as_rows<float>(dup, "swiglu_backward: dup"),
                    as_rows<const float>(dout, "swiglu_backward: dout"), as_rows<const float>(gate, "swiglu_backward: gate"),
                    as_rows<const float>(up, "swiglu_backward: up"));
}

template <tensor_like DA, tensor_like DB, tensor_like DY, tensor_like A, tensor_like B>
void multiply_backward(DA&& da /*(..., cols)*/, DB&& db /*(..., cols)*/, const DY& dout /*(..., cols)*/,
                       const A& a /*(..., cols)*/, const B& b /*(..., cols)*/) {
    constexpr std::string_view op = "multiply_backward";
    expect_equal_shapes(dout, a, op, "dout", "a");
    expect_equal_shapes(dout, b, op, "dout", "b");
    expect_equal_shapes(da, a, op, "da", "a");
    expect_equal_shapes(db, b, op, "db", "b");
    multiply_backward(as_rows<float>(da, "multiply_backward: da"), as_rows<float>(db, "multiply_backward: db"),
                      as_rows<const float>(dout, "multiply_backward: dout"), as_rows<const float>(a, "multiply_backward: a"),
                      as_rows<const float>(b, "multiply_backward: b"));
}

}  // namespace cpu
}  // namespace tinyllm
