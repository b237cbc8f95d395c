// tinyllm/cuda/activation.cuh — element-wise kernels of the MLP and the
// residual stream: activations, fused bias + activation, the fused SwiGLU gate
// product, add and multiply. Same meaning as tinyllm::cpu:: in
// <tinyllm/activation.hpp>, whose TINYLLM_HOST_DEVICE functions (gelu_tanh,
// silu, ...) are the math here too.
//
// An element-wise kernel does almost no arithmetic per byte, so its speed is
// the memory system's: the whole game is to move each byte once, in as few
// and as wide memory instructions as possible. One generic kernel,
// map_rows_kernel, reads one or two inputs (plus an optional per-column bias),
// applies a small function object to each element in float, and writes the
// result once:
//
//   scalar      (`*_naive`, and any shape whose rows are not 16-byte aligned)
//               one element per thread per step: a 2-byte load for bfloat16.
//   vectorized  16 bytes per load and store (8 bfloat16/float16 or 4 floats),
//               when every row starts 16-byte aligned and the row length is a
//               multiple of the vector width; 8x fewer memory instructions for
//               16-bit types.
//
// Fusion is where the bytes are saved. SwiGLU's silu(gate) * up:
//
//   swiglu_naive   two kernels: t = silu(gate) (read N, write N), then
//                  out = t * up (read 2N, write N): 5N element transfers.
//   swiglu         one kernel reads gate and up and writes out: 3N, so ~1.7x
//                  less traffic, plus 16-byte accesses.
//
// bias_activate(out, x, bias, gelu_tanh) likewise folds the linear layer's
// bias into the activation (one pass over the GEMM output instead of two).
//
// Backward (training; the derivatives in <tinyllm/activation.hpp>, one
// TINYLLM_HOST_DEVICE definition for the CPU and these kernels):
//
//   activate_backward   dx = dout * kind'(x): map_rows_kernel with
//                       activation_backward_op, reading two inputs and
//                       writing one (3N), 16-byte accesses when aligned.
//   swiglu_backward     dgate = dout * up * silu'(gate), dup = dout * silu(gate):
//                       its own kernel, reading three inputs and writing two
//                       (5N) in one pass, 16-byte accesses when aligned.
//   multiply_backward   da = dout * b, db = dout * a: the same shape of kernel
//                       (three inputs, two outputs, one pass).
//   bias_activate_backward  dx = dout * kind'(x + bias) and dbias = the column
//                       sums of dx. Without dbias it is map_rows_kernel. With
//                       dbias, one kernel computes dx and adds each column's
//                       values over a fixed set of rows into a (G, cols) float
//                       workspace — block (bx, g) takes rows g, g + G, ... in
//                       order, G = min(rows, 256) — and column_total_kernel
//                       adds the G partial rows of each column in order 0..G-1:
//                       no float atomics, so the sums are the same bits on
//                       every run (the norms' dweight uses the same two passes).
//                       column_sums, the same two kernels without the
//                       activation, gives linear_backward its dbias (ffn.cuh).
//
// The derivatives are evaluated in double, as the CPU references do (one
// definition of the math), and rounded once to T: the kernels are memory-bound,
// so the double arithmetic costs little on a data-centre GPU (H100/H200 have
// fast FP64); it is the next thing to revisit on consumer cards. Outputs may
// be the memory of any input: each element is read before it is written, by
// the thread that writes it.
//
// Tensors are (..., cols) views on the device — any number of leading
// dimensions: (B, T, D), (rows, cols), or one (cols) vector — whose rows are
// contiguous (stride(1) == 1) and may be spaced by any row stride — so `gate`
// and `up` may be the two halves of one fused (rows, 2H) projection. The
// (rows, cols) functions are the definitions; the (..., cols) overloads at the
// end merge the leading dimensions into rows (as_rows in tensor.hpp) and call
// them. The element type is deduced, or named as in add<bfloat16>(...). `out` may be one of the
// inputs: each thread reads an element before it writes it. Element types:
// float, tinyllm::bfloat16, tinyllm::float16; arithmetic in float.
#pragma once

#include <tinyllm/activation.hpp>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string_view>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

// A view of const T whose T is deduced from another argument (so a view of
// non-const T converts to it at the call).
template <class T, std::size_t Rank>
using const_view = std::type_identity_t<tensor_view<const T, Rank>>;

// N elements of T moved as one (aligned) memory access: 16 bytes when
// N * sizeof(T) == 16, which the compiler emits as a single 128-bit load/store.
template <class T, int N>
struct alignas(sizeof(T) * N) packed_elements {
    T v[N];
};

// Elements per 16-byte vector: 4 floats, 8 bfloat16 or float16.
template <class T>
inline constexpr int vector_width = static_cast<int>(16 / sizeof(T));

// float -> T, rounding to nearest even, with the hardware conversions on the
// device (bit-identical to tinyllm::from_float<T>, checked by test_core).
template <class T>
TINYLLM_HOST_DEVICE T store_as(float f) {
#if TINYLLM_ON_DEVICE
    if constexpr (std::is_same_v<T, bfloat16>) return from_cuda(__float2bfloat16_rn(f));
    else if constexpr (std::is_same_v<T, float16>) return from_cuda(__float2half_rn(f));
    else return f;
#else
    return from_float<T>(f);
#endif
}

// f as T stores it, back in float: the value a kernel would read after writing f to T memory.
template <class T>
TINYLLM_HOST_DEVICE float rounded_to(float f) {
    return to_float(store_as<T>(f));
}

template <class T, int N>
TINYLLM_DEVICE void load_floats(float (&out)[N], const T* p) {
    const packed_elements<T, N> q = *reinterpret_cast<const packed_elements<T, N>*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(q.v[i]);
}

template <class T, int N>
TINYLLM_DEVICE void store_floats(T* p, const float (&in)[N]) {
    packed_elements<T, N> q;
#pragma unroll
    for (int i = 0; i < N; ++i) q.v[i] = store_as<T>(in[i]);
    *reinterpret_cast<packed_elements<T, N>*>(p) = q;
}

inline bool aligned_16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Scratch device memory for the calls made on `stream` by this host thread: at
// least `bytes` (cudaMalloc-aligned), grown as needed and kept. The backward
// launchers put their per-block partial sums and status words here. One
// buffer per host thread and stream: calls on one stream are ordered, so they
// may share it; calls on two streams may overlap, so they must not. Growing
// waits for the stream first, since a kernel of an earlier call may still use
// the old buffer.
inline void* stream_workspace(std::size_t bytes, cudaStream_t stream) {
    thread_local std::map<cudaStream_t, device_buffer<unsigned char>> buffers;
    device_buffer<unsigned char>& buffer = buffers[stream];
    if (buffer.size() < bytes) {
        if (buffer.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        buffer = device_buffer<unsigned char>(bytes);
    }
    return buffer.data();
}

// Operations called with tensors of any rank: T, when the caller names it
// (add<bfloat16>(...)), is the element type; otherwise it is the one of Out.
struct deduced {};
template <class T, class Out>
using element_t =
    std::conditional_t<std::is_same_v<T, deduced>, std::remove_const_t<typename view_of_t<Out>::element_type>, T>;
// The type of an absent (empty) weight or bias: what `{}` stands for.
template <class T, class Out>
using absent_vector = tensor_view<const element_t<T, Out>, 1>;

// The functions applied per element: f(a, b, bias) with b and bias 0 when absent.
struct activation_op {
    activation kind;
    TINYLLM_DEVICE float operator()(float a, float, float bias) const { return tinyllm::activate(kind, a + bias); }
};
struct swiglu_op {
    TINYLLM_DEVICE float operator()(float gate, float up, float) const { return tinyllm::swiglu(gate, up); }
};
struct add_op {
    TINYLLM_DEVICE float operator()(float a, float b, float) const { return a + b; }
};
struct multiply_op {
    TINYLLM_DEVICE float operator()(float a, float b, float) const { return a * b; }
};
// dx = dout * kind'(x + bias), the derivative in double (activation.hpp).
struct activation_backward_op {
    activation kind;
    TINYLLM_DEVICE float operator()(float dout, float x, float bias) const {
        return static_cast<float>(static_cast<double>(dout) *
                                  tinyllm::activate_derivative(kind, static_cast<double>(x) + bias));
    }
};

// out(r, c) = op(a(r, c), b(r, c), bias(c)) for a (rows, cols) grid, N
// elements per access (the launcher guarantees cols % N == 0 and alignment).
// Columns: grid-stride over blockIdx.x; rows: over blockIdx.y.
template <class T, int N, class Op>
__global__ void map_rows_kernel(T* out, index_t out_stride, const T* a, index_t a_stride, const T* b,
                                index_t b_stride, const T* bias, index_t rows, index_t cols, Op op) {
    const index_t vectors = cols / N;
    for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
        for (index_t v = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; v < vectors;
             v += static_cast<index_t>(gridDim.x) * blockDim.x) {
            const index_t c = v * N;
            float av[N], bv[N], biasv[N];
            load_floats<T, N>(av, a + r * a_stride + c);
            if (b) {
                load_floats<T, N>(bv, b + r * b_stride + c);
            } else {
#pragma unroll
                for (int i = 0; i < N; ++i) bv[i] = 0.0f;
            }
            if (bias) {
                load_floats<T, N>(biasv, bias + c);
            } else {
#pragma unroll
                for (int i = 0; i < N; ++i) biasv[i] = 0.0f;
            }
            float o[N];
#pragma unroll
            for (int i = 0; i < N; ++i) o[i] = op(av[i], bv[i], biasv[i]);
            store_floats<T, N>(out + r * out_stride + c, o);
        }
    }
}

template <class View>
void expect_unit_column_stride(const View& v, std::string_view op, std::string_view name) {
    TINYLLM_EXPECT(v.extent(1) <= 1 || v.stride(1) == 1, op, ": ", name, " has strides ", to_string(v.strides()),
                   "; the kernels need contiguous rows (stride(1) == 1)");
}

// Validate, choose scalar or 16-byte accesses, and launch map_rows_kernel.
// b and bias may be empty (absent). vectorize = false forces the scalar path.
template <class T, class Op>
void launch_map(std::string_view op_name, tensor_view<T, 2> out, tensor_view<const T, 2> a, tensor_view<const T, 2> b,
                tensor_view<const T, 1> bias, Op op, bool vectorize, cudaStream_t stream) {
    expect_unit_column_stride(out, op_name, "out");
    expect_unit_column_stride(a, op_name, "the input");
    if (b.data()) expect_unit_column_stride(b, op_name, "the second input");
    TINYLLM_EXPECT(bias.size() == 0 || bias.extent(0) <= 1 || bias.stride(0) == 1, op_name,
                   ": bias must be contiguous; its stride is ", bias.stride(0));
    // out exactly an input (each thread loads its elements before it stores them) or apart.
    if (b.data())
        tinyllm::detail::expect_elementwise_output<T>(op_name, "out", out, {{"the input", a}, {"the second input", b}});
    else
        tinyllm::detail::expect_elementwise_output<T>(op_name, "out", out, {{"the input", a}});
    tinyllm::detail::expect_apart(op_name, "out", out, "bias", bias);
    const index_t rows = out.extent(0), cols = out.extent(1);
    if (rows == 0 || cols == 0) return;

    constexpr int W = vector_width<T>;
    bool wide = vectorize && cols % W == 0 && aligned_16(out.data()) && aligned_16(a.data()) &&
                (rows == 1 || (out.stride(0) % W == 0 && a.stride(0) % W == 0));
    if (b.data()) wide = wide && aligned_16(b.data()) && (rows == 1 || b.stride(0) % W == 0);
    if (bias.data()) wide = wide && aligned_16(bias.data());

    const int threads = 256;
    const index_t vectors = wide ? cols / W : cols;
    const index_t bx = ceil_div<index_t>(vectors, threads);
    const dim3 grid(static_cast<unsigned>(bx < 65535 ? bx : 65535), static_cast<unsigned>(rows < 65535 ? rows : 65535));
    const T* b_ptr = b.data();
    const index_t b_stride = b_ptr ? b.stride(0) : 0;
    if (wide)
        launch(map_rows_kernel<T, W, Op>, grid, threads, 0, stream, out.data(), out.stride(0), a.data(), a.stride(0),
               b_ptr, b_stride, bias.data(), rows, cols, op);
    else
        launch(map_rows_kernel<T, 1, Op>, grid, threads, 0, stream, out.data(), out.stride(0), a.data(), a.stride(0),
               b_ptr, b_stride, bias.data(), rows, cols, op);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// dgate = dout * up * silu'(gate), dup = dout * silu(gate) for a (rows, cols)
// grid, N elements per access; all three inputs of an element are loaded
// before either output is stored (so the outputs may alias any input).
template <class T, int N>
__global__ void swiglu_backward_kernel(T* dgate, index_t dgate_stride, T* dup, index_t dup_stride, const T* dout,
                                       index_t dout_stride, const T* gate, index_t gate_stride, const T* up,
                                       index_t up_stride, index_t rows, index_t cols) {
    const index_t vectors = cols / N;
    for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
        for (index_t v = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; v < vectors;
             v += static_cast<index_t>(gridDim.x) * blockDim.x) {
            const index_t c = v * N;
            float d[N], g[N], u[N], dg[N], du[N];
            load_floats<T, N>(d, dout + r * dout_stride + c);
            load_floats<T, N>(g, gate + r * gate_stride + c);
            load_floats<T, N>(u, up + r * up_stride + c);
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const double gi = g[i], di = d[i];
                const double silu_g = gi * tinyllm::detail::sigmoid_double(gi);
                dg[i] = static_cast<float>(di * u[i] * tinyllm::silu_derivative(gi));
                du[i] = static_cast<float>(di * silu_g);
            }
            store_floats<T, N>(dgate + r * dgate_stride + c, dg);
            store_floats<T, N>(dup + r * dup_stride + c, du);
        }
    }
}

// da = dout * b, db = dout * a for a (rows, cols) grid, N elements per access;
// the inputs of an element are loaded before its outputs are stored.
template <class T, int N>
__global__ void multiply_backward_kernel(T* da, index_t da_stride, T* db, index_t db_stride, const T* dout,
                                         index_t dout_stride, const T* a, index_t a_stride, const T* b,
                                         index_t b_stride, index_t rows, index_t cols) {
    const index_t vectors = cols / N;
    for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
        for (index_t v = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; v < vectors;
             v += static_cast<index_t>(gridDim.x) * blockDim.x) {
            const index_t c = v * N;
            float d[N], av[N], bv[N], dav[N], dbv[N];
            load_floats<T, N>(d, dout + r * dout_stride + c);
            load_floats<T, N>(av, a + r * a_stride + c);
            load_floats<T, N>(bv, b + r * b_stride + c);
#pragma unroll
            for (int i = 0; i < N; ++i) {
                dav[i] = d[i] * bv[i];  // a float product of floats: the CPU's double product, rounded once
                dbv[i] = d[i] * av[i];
            }
            store_floats<T, N>(da + r * da_stride + c, dav);
            store_floats<T, N>(db + r * db_stride + c, dbv);
        }
    }
}

// Column sums, first pass: partial(g, c) = the sum over rows r = g, g + G,
// g + 2G, ... (in that order; G = gridDim.y) of d(r, c), where d = dout, or
// with x given d = dout * kind'(x + bias), also stored to dx when given. One
// thread per column: a warp reads 32 neighbouring elements of a row.
template <class T>
__global__ void column_partial_kernel(float* partial, T* dx, index_t dx_stride, const T* dout, index_t dout_stride,
                                      const T* x, index_t x_stride, const T* bias, activation kind, index_t rows,
                                      index_t cols) {
    const index_t c = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (c >= cols) return;
    const float b = bias ? to_float(bias[c]) : 0.0f;
    float s = 0.0f;
    for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
        float d = to_float(dout[r * dout_stride + c]);
        if (x) d = activation_backward_op{kind}(d, to_float(x[r * x_stride + c]), b);
        if (dx) dx[r * dx_stride + c] = store_as<T>(d);
        s += d;
    }
    partial[blockIdx.y * cols + c] = s;
}

// Second pass: out(c) = sum over g = 0..parts-1 of partial(g, c), in that order
// (+ out(c) with accumulate), rounded once to G.
template <class G>
__global__ void column_total_kernel(G* out, index_t out_stride, const float* partial, index_t parts, index_t cols,
                                    bool accumulate) {
    const index_t c = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (index_t g = 0; g < parts; ++g) s += partial[g * cols + c];
    if (accumulate) s += to_float(out[c * out_stride]);
    out[c * out_stride] = store_as<G>(s);
}

// out (cols) (+)= the column sums of d (rows, cols) — d = dout, or dout * kind'(x +
// bias) when x is given (then also written to dx when given) — by the two
// passes above, deterministically. Rows of dout, x and dx contiguous.
template <class T, class G>
void column_sums(tensor_view<G, 1> out, tensor_view<T, 2> dx, tensor_view<const T, 2> dout, tensor_view<const T, 2> x,
                 tensor_view<const T, 1> bias, activation kind, bool accumulate, cudaStream_t stream) {
    const index_t rows = dout.extent(0), cols = dout.extent(1);
    if (cols == 0) return;
    const index_t parts = rows < 256 ? rows : 256;
    float* partial = parts > 0 ? static_cast<float*>(stream_workspace(
                                     static_cast<std::size_t>(parts * cols) * sizeof(float), stream))
                               : nullptr;
    const int threads = 256;
    const unsigned column_blocks = static_cast<unsigned>(ceil_div<index_t>(cols, threads));
    if (parts > 0) {
        launch(column_partial_kernel<T>, dim3(column_blocks, static_cast<unsigned>(parts)), threads, 0, stream, partial,
               dx.size() ? dx.data() : nullptr, dx.size() ? dx.stride(0) : 0, dout.data(), dout.stride(0),
               x.size() ? x.data() : nullptr, x.size() ? x.stride(0) : 0, bias.size() ? bias.data() : nullptr, kind,
               rows, cols);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    launch(column_total_kernel<G>, column_blocks, threads, 0, stream, out.data(), cols > 1 ? out.stride(0) : 1,
           static_cast<const float*>(partial), parts, cols, accumulate);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace detail

// out = kind(x), element-wise. out, x: (rows, cols) on the device.
template <class T>
void activate(tensor_view<T, 2> out, detail::const_view<T, 2> x, activation kind, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(out, x, "activate", "out", "x");
    detail::launch_map<T>("activate", out, x, {}, {}, detail::activation_op{kind}, true, stream);
}

// out = kind(x + bias), bias broadcast over rows (a linear layer's epilogue, fused).
// out, x: (rows, cols); bias: (cols).
template <class T>
void bias_activate(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> bias,
                   activation kind, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(out, x, "bias_activate", "out", "x");
    tinyllm::detail::expect_bias(out, bias, "bias_activate");
    detail::launch_map<T>("bias_activate", out, x, {}, bias, detail::activation_op{kind}, true, stream);
}

// v2: out = silu(gate) * up in one pass, 16-byte accesses. out, gate, up: (rows, hidden).
template <class T>
void swiglu(tensor_view<T, 2> out, detail::const_view<T, 2> gate, detail::const_view<T, 2> up,
            cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(out, gate, "swiglu", "out", "gate");
    tinyllm::detail::expect_same_shape(out, up, "swiglu", "out", "up");
    detail::launch_map<T>("swiglu", out, gate, up, {}, detail::swiglu_op{}, true, stream);
}

// v1: the unfused baseline, scalar: out = silu(gate), then out = out * up (two
// kernels, 5 element transfers instead of 3). out must not be `up`.
template <class T>
void swiglu_naive(tensor_view<T, 2> out, detail::const_view<T, 2> gate, detail::const_view<T, 2> up,
                  cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(out, gate, "swiglu_naive", "out", "gate");
    tinyllm::detail::expect_same_shape(out, up, "swiglu_naive", "out", "up");
    TINYLLM_EXPECT(out.data() != up.data() || out.size() == 0,
                   "swiglu_naive: out must not be `up` (it is overwritten by silu(gate) first)");
    detail::launch_map<T>("swiglu_naive", out, gate, {}, {}, detail::activation_op{activation::silu}, false, stream);
    detail::launch_map<T>("swiglu_naive", out, out, up, {}, detail::multiply_op{}, false, stream);
}

// out = a + b (the residual add). out, a, b: (rows, cols).
template <class T>
void add(tensor_view<T, 2> out, detail::const_view<T, 2> a, detail::const_view<T, 2> b, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(out, a, "add", "out", "a");
    tinyllm::detail::expect_same_shape(out, b, "add", "out", "b");
    detail::launch_map<T>("add", out, a, b, {}, detail::add_op{}, true, stream);
}

// out = a * b. out, a, b: (rows, cols).
template <class T>
void multiply(tensor_view<T, 2> out, detail::const_view<T, 2> a, detail::const_view<T, 2> b,
              cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(out, a, "multiply", "out", "a");
    tinyllm::detail::expect_same_shape(out, b, "multiply", "out", "b");
    detail::launch_map<T>("multiply", out, a, b, {}, detail::multiply_op{}, true, stream);
}

// ---- Backward: (rows, cols) ----------------------------------------------------------------

// dx = dout * kind'(x), element-wise: the backward of activate. dx, dout, x:
// (rows, cols); dx may be dout's or x's memory.
template <class T>
void activate_backward(tensor_view<T, 2> dx, detail::const_view<T, 2> dout, detail::const_view<T, 2> x,
                       activation kind, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_same_shape(dx, x, "activate_backward", "dx", "x");
    tinyllm::detail::expect_same_shape(dout, x, "activate_backward", "dout", "x");
    detail::launch_map<T>("activate_backward", dx, dout, x, {}, detail::activation_backward_op{kind}, true, stream);
}

// The backward of out = silu(gate) * up: dgate = dout * up * silu'(gate) and
// dup = dout * silu(gate). All (rows, hidden); dgate and dup may be the memory of
// gate, up or dout (e.g. the two halves of one fused (rows, 2H) gradient).
template <class T>
void swiglu_backward(tensor_view<T, 2> dgate, tensor_view<T, 2> dup, detail::const_view<T, 2> dout,
                     detail::const_view<T, 2> gate, detail::const_view<T, 2> up, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "swiglu_backward";
    tinyllm::detail::expect_same_shape(dout, gate, op, "dout", "gate");
    tinyllm::detail::expect_same_shape(dout, up, op, "dout", "up");
    tinyllm::detail::expect_same_shape(dgate, gate, op, "dgate", "gate");
    tinyllm::detail::expect_same_shape(dup, up, op, "dup", "up");
    detail::expect_unit_column_stride(dgate, op, "dgate");
    detail::expect_unit_column_stride(dup, op, "dup");
    detail::expect_unit_column_stride(dout, op, "dout");
    detail::expect_unit_column_stride(gate, op, "gate");
    detail::expect_unit_column_stride(up, op, "up");
    tinyllm::detail::expect_elementwise_outputs<T>(op, "dgate", dgate, "dup", dup,
                                                   {{"dout", dout}, {"gate", gate}, {"up", up}});
    const index_t rows = dout.extent(0), cols = dout.extent(1);
    if (rows == 0 || cols == 0) return;
    constexpr int W = detail::vector_width<T>;
    const auto ok = [&](const void* p, index_t stride) {
        return detail::aligned_16(p) && (rows == 1 || stride % W == 0);
    };
    const bool wide = cols % W == 0 && ok(dgate.data(), dgate.stride(0)) && ok(dup.data(), dup.stride(0)) &&
                      ok(dout.data(), dout.stride(0)) && ok(gate.data(), gate.stride(0)) && ok(up.data(), up.stride(0));
    const int threads = 256;
    const index_t vectors = wide ? cols / W : cols;
    const index_t bx = ceil_div<index_t>(vectors, threads);
    const dim3 grid(static_cast<unsigned>(bx < 65535 ? bx : 65535), static_cast<unsigned>(rows < 65535 ? rows : 65535));
    if (wide)
        launch(detail::swiglu_backward_kernel<T, W>, grid, threads, 0, stream, dgate.data(), dgate.stride(0),
               dup.data(), dup.stride(0), dout.data(), dout.stride(0), gate.data(), gate.stride(0), up.data(),
               up.stride(0), rows, cols);
    else
        launch(detail::swiglu_backward_kernel<T, 1>, grid, threads, 0, stream, dgate.data(), dgate.stride(0),
               dup.data(), dup.stride(0), dout.data(), dout.stride(0), gate.data(), gate.stride(0), up.data(),
               up.stride(0), rows, cols);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The backward of bias_activate: dx = dout * kind'(x + bias) (rows, cols), and
// dbias (cols) = the sum of dx over rows, overwritten or, with `accumulate`,
// added to (empty: not computed), deterministically (two passes, no atomics).
// dx may be dout's or x's memory.
template <class T>
void bias_activate_backward(tensor_view<T, 2> dx, tensor_view<T, 1> dbias, detail::const_view<T, 2> dout,
                            detail::const_view<T, 2> x, detail::const_view<T, 1> bias, activation kind,
                            bool accumulate = false, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "bias_activate_backward";
    tinyllm::detail::expect_same_shape(dx, x, op, "dx", "x");
    tinyllm::detail::expect_same_shape(dout, x, op, "dout", "x");
    tinyllm::detail::expect_bias(x, bias, op);
    TINYLLM_EXPECT(dbias.size() == 0 || dbias.extent(0) == x.extent(1), op, ": dbias has ", dbias.extent(0),
                   " elements but the rows have ", x.extent(1), " columns (one per column, or none)");
    TINYLLM_EXPECT(bias.size() <= 1 || bias.stride(0) == 1, op, ": bias must be contiguous; its stride is ",
                   bias.stride(0));
    if (dbias.size() == 0) {
        detail::launch_map<T>(op, dx, dout, x, bias, detail::activation_backward_op{kind}, true, stream);
        return;
    }
    detail::expect_unit_column_stride(dx, op, "dx");
    detail::expect_unit_column_stride(dout, op, "dout");
    detail::expect_unit_column_stride(x, op, "x");
    tinyllm::detail::expect_bias_activate_backward_memory<T, T>(dx, dbias, dout, x, bias);
    detail::column_sums<T, T>(dbias, dx, dout, x, bias, kind, accumulate, stream);
}

// The backward of out = a * b: da = dout * b, db = dout * a. All (rows, cols);
// da and db may be the memory of a, b or dout.
template <class T>
void multiply_backward(tensor_view<T, 2> da, tensor_view<T, 2> db, detail::const_view<T, 2> dout,
                       detail::const_view<T, 2> a, detail::const_view<T, 2> b, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "multiply_backward";
    tinyllm::detail::expect_same_shape(dout, a, op, "dout", "a");
    tinyllm::detail::expect_same_shape(dout, b, op, "dout", "b");
    tinyllm::detail::expect_same_shape(da, a, op, "da", "a");
    tinyllm::detail::expect_same_shape(db, b, op, "db", "b");
    detail::expect_unit_column_stride(da, op, "da");
    detail::expect_unit_column_stride(db, op, "db");
    detail::expect_unit_column_stride(dout, op, "dout");
    detail::expect_unit_column_stride(a, op, "a");
    detail::expect_unit_column_stride(b, op, "b");
    tinyllm::detail::expect_elementwise_outputs<T>(op, "da", da, "db", db, {{"dout", dout}, {"a", a}, {"b", b}});
    const index_t rows = dout.extent(0), cols = dout.extent(1);
    if (rows == 0 || cols == 0) return;
    constexpr int W = detail::vector_width<T>;
    const auto ok = [&](const void* p, index_t stride) {
        return detail::aligned_16(p) && (rows == 1 || stride % W == 0);
    };
    const bool wide = cols % W == 0 && ok(da.data(), da.stride(0)) && ok(db.data(), db.stride(0)) &&
                      ok(dout.data(), dout.stride(0)) && ok(a.data(), a.stride(0)) && ok(b.data(), b.stride(0));
    const int threads = 256;
    const index_t vectors = wide ? cols / W : cols;
    const index_t bx = ceil_div<index_t>(vectors, threads);
    const dim3 grid(static_cast<unsigned>(bx < 65535 ? bx : 65535), static_cast<unsigned>(rows < 65535 ? rows : 65535));
    if (wide)
        launch(detail::multiply_backward_kernel<T, W>, grid, threads, 0, stream, da.data(), da.stride(0), db.data(),
               db.stride(0), dout.data(), dout.stride(0), a.data(), a.stride(0), b.data(), b.stride(0), rows, cols);
    else
        launch(detail::multiply_backward_kernel<T, 1>, grid, threads, 0, stream, da.data(), da.stride(0), db.data(),
               db.stride(0), dout.data(), dout.stride(0), a.data(), a.stride(0), b.data(), b.stride(0), rows, cols);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// ---- Any number of leading dimensions: (..., cols) ---------------------------------------
// Device views of any rank; out and every input of one shape, bias (cols).

template <class T = detail::deduced, tensor_like Out, tensor_like X>
void activate(Out&& out /*(..., cols)*/, const X& x /*(..., cols)*/, activation kind, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, x, "activate", "out", "x");
    activate<E>(as_rows<E>(out, "activate: out"), as_rows<const E>(x, "activate: x"), kind, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like X, tensor_like B>
void bias_activate(Out&& out /*(..., cols)*/, const X& x /*(..., cols)*/, const B& bias /*(cols)*/, activation kind,
                   cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, x, "bias_activate", "out", "x");
    bias_activate<E>(as_rows<E>(out, "bias_activate: out"), as_rows<const E>(x, "bias_activate: x"),
                     as_vector<const E>(bias), kind, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like G, tensor_like U>
void swiglu(Out&& out /*(..., hidden)*/, const G& gate /*(..., hidden)*/, const U& up /*(..., hidden)*/,
            cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, gate, "swiglu", "out", "gate");
    expect_equal_shapes(out, up, "swiglu", "out", "up");
    swiglu<E>(as_rows<E>(out, "swiglu: out"), as_rows<const E>(gate, "swiglu: gate"), as_rows<const E>(up, "swiglu: up"),
              stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like A, tensor_like B>
void add(Out&& out /*(..., cols)*/, const A& a /*(..., cols)*/, const B& b /*(..., cols)*/,
         cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, a, "add", "out", "a");
    expect_equal_shapes(out, b, "add", "out", "b");
    add<E>(as_rows<E>(out, "add: out"), as_rows<const E>(a, "add: a"), as_rows<const E>(b, "add: b"), stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like A, tensor_like B>
void multiply(Out&& out /*(..., cols)*/, const A& a /*(..., cols)*/, const B& b /*(..., cols)*/,
              cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, a, "multiply", "out", "a");
    expect_equal_shapes(out, b, "multiply", "out", "b");
    multiply<E>(as_rows<E>(out, "multiply: out"), as_rows<const E>(a, "multiply: a"),
                as_rows<const E>(b, "multiply: b"), stream);
}

template <class T = detail::deduced, tensor_like DX, tensor_like DY, tensor_like X>
void activate_backward(DX&& dx /*(..., cols)*/, const DY& dout /*(..., cols)*/, const X& x /*(..., cols)*/,
                       activation kind, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DX>;
    expect_equal_shapes(dx, x, "activate_backward", "dx", "x");
    expect_equal_shapes(dout, x, "activate_backward", "dout", "x");
    activate_backward<E>(as_rows<E>(dx, "activate_backward: dx"), as_rows<const E>(dout, "activate_backward: dout"),
                         as_rows<const E>(x, "activate_backward: x"), kind, stream);
}

template <class T = detail::deduced, tensor_like DG, tensor_like DU, tensor_like DY, tensor_like G, tensor_like U>
void swiglu_backward(DG&& dgate /*(..., hidden)*/, DU&& dup /*(..., hidden)*/, const DY& dout /*(..., hidden)*/,
                     const G& gate /*(..., hidden)*/, const U& up /*(..., hidden)*/, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DG>;
    constexpr std::string_view op = "swiglu_backward";
    expect_equal_shapes(dout, gate, op, "dout", "gate");
    expect_equal_shapes(dout, up, op, "dout", "up");
    expect_equal_shapes(dgate, gate, op, "dgate", "gate");
    expect_equal_shapes(dup, up, op, "dup", "up");
    swiglu_backward<E>(as_rows<E>(dgate, "swiglu_backward: dgate"), as_rows<E>(dup, "swiglu_backward: dup"),
                       as_rows<const E>(dout, "swiglu_backward: dout"), as_rows<const E>(gate, "swiglu_backward: gate"),
                       as_rows<const E>(up, "swiglu_backward: up"), stream);
}

template <class T = detail::deduced, tensor_like DX, tensor_like DY, tensor_like X, tensor_like B,
          tensor_like DB = tensor_view<detail::element_t<T, DX>, 1>>
void bias_activate_backward(DX&& dx /*(..., cols)*/, DB&& dbias /*(cols) or empty*/, const DY& dout /*(..., cols)*/,
                            const X& x /*(..., cols)*/, const B& bias /*(cols)*/, activation kind,
                            bool accumulate = false, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DX>;
    constexpr std::string_view op = "bias_activate_backward";
    expect_equal_shapes(dx, x, op, "dx", "x");
    expect_equal_shapes(dout, x, op, "dout", "x");
    bias_activate_backward<E>(as_rows<E>(dx, "bias_activate_backward: dx"), as_vector<E>(dbias),
                              as_rows<const E>(dout, "bias_activate_backward: dout"),
                              as_rows<const E>(x, "bias_activate_backward: x"), as_vector<const E>(bias), kind,
                              accumulate, stream);
}

template <class T = detail::deduced, tensor_like DA, tensor_like DB, tensor_like DY, tensor_like A, tensor_like B>
void multiply_backward(DA&& da /*(..., cols)*/, DB&& db /*(..., cols)*/, const DY& dout /*(..., cols)*/,
                       const A& a /*(..., cols)*/, const B& b /*(..., cols)*/, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DA>;
    constexpr std::string_view op = "multiply_backward";
    expect_equal_shapes(dout, a, op, "dout", "a");
    expect_equal_shapes(dout, b, op, "dout", "b");
    expect_equal_shapes(da, a, op, "da", "a");
    expect_equal_shapes(db, b, op, "db", "b");
    multiply_backward<E>(as_rows<E>(da, "multiply_backward: da"), as_rows<E>(db, "multiply_backward: db"),
                         as_rows<const E>(dout, "multiply_backward: dout"), as_rows<const E>(a, "multiply_backward: a"),
                         as_rows<const E>(b, "multiply_backward: b"), stream);
}

}  // namespace tinyllm::cuda
