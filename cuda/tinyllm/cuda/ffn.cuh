// tinyllm/cuda/ffn.cuh — the MLP on the GPU: matrix products by cuBLAS,
// everything between them by tinyllm's fused element-wise kernels.
// Same meaning as tinyllm::cpu:: in <tinyllm/ffn.hpp>.
//
//   GPT-2:  h = x W_fc^T           cuBLAS GEMM, float accumulation, stored as T
//           h = gelu_tanh(h + b)   bias_activate: one pass, bias and GELU fused
//           y = h W_proj^T         cuBLAS GEMM
//           y = y + b_proj         bias_activate(identity)
//   Llama:  g = x W_gate^T, u = x W_up^T     two cuBLAS GEMMs
//           g = silu(g) * u                   swiglu: one pass (reads g, u; writes g)
//           y = g W_down^T                    cuBLAS GEMM
//
// For a decode step (at most 8 rows) the first projection and the element-wise
// step after it can be one GEMV instead (detail::swiglu_gemv,
// detail::bias_activate_gemv; see the section before the (..., features)
// overloads, and gemv.cuh).
//
// (cublasLt can fuse a bias and GELU into the GEMM's epilogue; we keep the
// element-wise step visible, because it is the part this library teaches and
// the same kernels serve every model.)
//
// Layout. Tensors are row-major (C order); cuBLAS is column-major. A row-major
// (M, N) matrix is the column-major (N, M) matrix with the same bytes, so
// out = x W^T (row-major) is out^T = W x^T (column-major): cublasGemmEx with
// m = N (out_features), n = rows, k = K (in_features), A = the weight, B = x.
// The weight, (out_features, in_features) like torch.nn.Linear, may have
// either unit stride: a (N, K) row-major weight is used transposed (CUBLAS_OP_T,
// lda = its row stride); a weight stored (K, N) (GPT-2's Conv1D) and passed as
// w.transpose(0, 1) is used as it is (CUBLAS_OP_N).
//
// Precision: inputs and outputs in T (float, bfloat16, float16), products
// accumulated in float (CUBLAS_COMPUTE_32F; for float inputs that is true
// FP32, not TF32). Intermediate activations are stored as T, as in PyTorch.
//
// Shapes: activations are (..., features) device views — any number of
// leading dimensions: (B, T, D), (rows, D) or one (D) vector. The (rows,
// features) functions are the definitions; the (..., features) overloads at
// the end merge the leading dimensions into rows (as_rows in tensor.hpp) and
// call them. Weights stay matrices and biases vectors; matmul is 2-D only.
//
// The caller provides the scratch tensors (the (rows, H) hidden activations,
// or (..., H) with x's leading dimensions) and a cublas_handle; nothing here
// allocates.
//
// Backward (training; the math in <tinyllm/ffn.hpp> and docs/training.md).
// linear_backward is two cuBLAS GEMMs and a column sum, with the CPU's argument
// order and checks (tinyllm::detail::expect_linear_backward_args):
//
//   dweight (N, K) = dout^T x     GEMM, m = K, n = N, k = rows: the sum over rows
//                                 happens inside cuBLAS, in float, in an order
//                                 fixed by the problem's shape (cuBLAS is
//                                 deterministic without its atomics mode); with
//                                 `accumulate`, beta = 1 adds to dweight in float
//   dx (rows, K) = dout weight    GEMM, m = K, n = rows, k = N
//   dbias (N) = sum_rows dout     detail::column_sums (activation.cuh): per-block
//                                 partial sums over fixed rows, then one ordered
//                                 sum per column; no float atomics
//
// Any row-major view with one unit stride works as an operand: weight and
// dweight may be transposed views (GPT-2's Conv1D layout), as in the forward;
// detail::gemm reads each operand as the column-major matrix its bytes are. The
// products take T inputs (float, bfloat16, float16) and accumulate in float;
// dweight and dbias have T or float elements (G): float keeps a 16-bit model's
// gradient unrounded (mixed-precision training). matmul_backward (out = a b) is
// linear_backward with weight b^T and dweight db^T.
#pragma once

#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/gemv.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/tensor.hpp>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <string_view>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline int checked_int(index_t v, std::string_view op, std::string_view what) {
    TINYLLM_EXPECT(v >= 0 && v <= INT_MAX, op, ": ", what, " = ", v, " does not fit cuBLAS's 32-bit int");
    return static_cast<int>(v);
}

template <class View>
void expect_workspace(const View& w, index_t rows, index_t cols, std::string_view op, std::string_view name) {
    TINYLLM_EXPECT(w.extent(0) == rows && w.extent(1) == cols, op, ": ", name, " has shape ", to_string(w.shape()),
                   " but (rows, H) = (", rows, ", ", cols, ") is required");
    expect_unit_column_stride(w, op, name);
}

// A row-major matrix view X (r, c) with one unit stride, as the column-major
// operand cuBLAS reads for X^T (c x r): a row-major X's bytes are X^T (op N,
// ld = its row stride); a transposed view's bytes are X (op T, ld = its column
// stride).
struct gemm_operand {
    cublasOperation_t op;
    int ld;
};

template <class V>
gemm_operand transposed_operand(const V& x, std::string_view op, std::string_view name) {
    const index_t r = x.extent(0), c = x.extent(1);
    if (c <= 1 || x.stride(1) == 1) {
        const index_t ld = r <= 1 ? (c > 1 ? c : 1) : x.stride(0);
        TINYLLM_EXPECT(ld >= c, op, ": ", name, "'s rows overlap (row stride ", ld, " < ", c, " columns)");
        return {CUBLAS_OP_N, checked_int(ld, op, name)};
    }
    if (r <= 1 || x.stride(0) == 1) {
        const index_t ld = c <= 1 ? (r > 1 ? r : 1) : x.stride(1);
        TINYLLM_EXPECT(ld >= r, op, ": ", name, "'s columns overlap (column stride ", ld, " < ", r, " rows)");
        return {CUBLAS_OP_T, checked_int(ld, op, name)};
    }
    TINYLLM_FAIL(op, ": ", name, " has strides ", to_string(x.strides()),
                 "; one of its two dimensions must have unit stride");
}

// c (m, n) = a (m, k) b (k, n) + beta c, all row-major views with one unit
// stride each (any of them may be a transposed view): T inputs, G output,
// float accumulation. With beta == 0, c is only written.
template <class T, class G>
void gemm(tensor_view<G, 2> c, tensor_view<const T, 2> a, tensor_view<const T, 2> b, float beta,
          const cublas_handle& handle, cudaStream_t stream, std::string_view op) {
    const index_t m = c.extent(0), n = c.extent(1), k = a.extent(1);
    if (m == 0 || n == 0) return;
    if (!(n <= 1 || c.stride(1) == 1) && (m <= 1 || c.stride(0) == 1)) {
        // c is a transposed view: compute c^T = b^T a^T, whose c^T is row-major.
        gemm<T, G>(c.transpose(0, 1), b.transpose(0, 1), a.transpose(0, 1), beta, handle, stream, op);
        return;
    }
    // Row-major c: column-major c^T (n x m) = b^T (n x k) a^T (k x m).
    const gemm_operand oc = transposed_operand(c, op, "the output");
    TINYLLM_EXPECT(oc.op == CUBLAS_OP_N, op, ": the output has strides ", to_string(c.strides()),
                   "; one of its two dimensions must have unit stride");
    const gemm_operand ob = transposed_operand(b, op, "an operand");
    const gemm_operand oa = transposed_operand(a, op, "an operand");
    const float alpha = 1.0f;
    TINYLLM_CUBLAS_CHECK(detail::cublas_set_stream(handle.get(), stream));
    const observed_launch observed(nullptr, "cublasGemmEx", stream);  // launch.cuh: a timeline's span
    TINYLLM_CUBLAS_CHECK(detail::cublas_gemm_ex(
        handle.get(), ob.op, oa.op, checked_int(n, op, "n"), checked_int(m, op, "m"), checked_int(k, op, "k"), &alpha,
        b.data(), cuda_data_type<T>(), ob.ld, a.data(), cuda_data_type<T>(), oa.ld, &beta, c.data(),
        cuda_data_type<G>(), oc.ld, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// c (m, n) = 0, any strides (a gradient of an empty sum).
template <class G>
__global__ void zero_matrix_kernel(G* c, index_t m, index_t n, index_t stride0, index_t stride1) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < m * n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        c[(i / n) * stride0 + (i % n) * stride1] = store_as<G>(0.0f);
}

}  // namespace detail

// out = x weight^T + bias (torch.nn.Linear). out: (rows, N); x: (rows, K);
// weight: (N, K) with stride(1) == 1, or a transposed view of a (K, N) matrix;
// bias: (N) or empty. out must not overlap x. The output type O is T, or float
// for 16-bit inputs whose products should not be rounded to 16 bits (e.g. a
// router's logits before top-k; then no bias).
template <class T, class O = T>
void linear(tensor_view<O, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 2> weight,
            detail::const_view<T, 1> bias, const cublas_handle& handle, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<O, T> || std::is_same_v<O, float>, "linear: the output is T or float");
    constexpr std::string_view op = "linear";
    tinyllm::detail::expect_linear_args(op, out, x, weight, bias);
    detail::expect_unit_column_stride(out, op, "out");
    detail::expect_unit_column_stride(x, op, "x");
    const index_t rows = x.extent(0), N = weight.extent(0), K = weight.extent(1);
    TINYLLM_EXPECT(K >= 1, op, ": in_features = ", K, " must be at least 1");
    if (rows == 0 || N == 0) return;

    // The weight as cuBLAS sees it (column-major A with m = N rows, k = K columns after op).
    cublasOperation_t op_a;
    index_t lda;
    if (weight.stride(1) == 1 || K == 1) {  // row-major (N, K): the column-major (K, N) matrix, transposed
        op_a = CUBLAS_OP_T;
        lda = N == 1 ? K : weight.stride(0);
        TINYLLM_EXPECT(lda >= K, op, ": weight's row stride ", lda, " is smaller than in_features ", K);
    } else if (weight.stride(0) == 1 || N == 1) {  // a (K, N) row-major matrix viewed transposed
        op_a = CUBLAS_OP_N;
        lda = K == 1 ? N : weight.stride(1);
        TINYLLM_EXPECT(lda >= N, op, ": weight's stride ", lda, " is smaller than out_features ", N);
    } else {
        TINYLLM_FAIL(op, ": weight has strides ", to_string(weight.strides()),
                     "; one of its two dimensions must have unit stride");
    }
    const index_t ldb = rows == 1 ? K : x.stride(0);
    const index_t ldc = rows == 1 ? N : out.stride(0);
    TINYLLM_EXPECT(ldb >= K && ldc >= N, op, ": rows of x or out overlap (row strides ", ldb, " and ", ldc, ")");

    // Before cuBLAS writes out: a refused call leaves out as it was.
    if constexpr (!std::is_same_v<O, T>)
        TINYLLM_EXPECT(bias.size() == 0, op, ": a float output from ", dtype_name<T>(), " inputs takes no bias");
    const float alpha = 1.0f, beta = 0.0f;
    TINYLLM_CUBLAS_CHECK(detail::cublas_set_stream(handle.get(), stream));
    {
        const detail::observed_launch observed(nullptr, "cublasGemmEx", stream);  // launch.cuh: a timeline's span
        TINYLLM_CUBLAS_CHECK(detail::cublas_gemm_ex(
            handle.get(), op_a, CUBLAS_OP_N, detail::checked_int(N, op, "out_features"),
            detail::checked_int(rows, op, "rows"), detail::checked_int(K, op, "in_features"), &alpha, weight.data(),
            cuda_data_type<T>(), detail::checked_int(lda, op, "lda"), x.data(), cuda_data_type<T>(),
            detail::checked_int(ldb, op, "ldb"), &beta, out.data(), cuda_data_type<O>(),
            detail::checked_int(ldc, op, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if constexpr (std::is_same_v<O, T>) {
        if (bias.size()) bias_activate<T>(out, out, bias, activation::identity, stream);
    }
}

// out = a b. out: (M, N); a: (M, K); b: (K, N) with stride(1) == 1.
template <class T>
void matmul(tensor_view<T, 2> out, detail::const_view<T, 2> a, detail::const_view<T, 2> b,
            const cublas_handle& handle, cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(a.extent(1) == b.extent(0), "matmul: a is ", to_string(a.shape()), " and b is ",
                   to_string(b.shape()), "; a's columns must equal b's rows");
    linear<T>(out, a, b.transpose(0, 1), {}, handle, stream);
}

// The gradients of out = x weight^T + bias (linear above), given dout = dL/dout:
//     dx = dout weight          (rows, K), overwritten; empty: not computed
//     dweight (+)= dout^T x     (N, K), either unit stride; empty: not computed
//     dbias (+)= sum_rows dout  (N); empty: not computed (or no bias)
// `accumulate` adds to dweight and dbias instead of overwriting them. dout:
// (rows, N); x: (rows, K); weight: (N, K), either unit stride. T: the type of
// dout, x, weight and dx; G: of dweight and dbias, T or float. dx must not
// overlap dout; it may be x's memory (x is read for dweight first, in stream
// order). Asynchronous on `stream`; the dbias partial sums use the stream's
// workspace (detail::stream_workspace).
template <class T, class G = T>
void linear_backward(tensor_view<T, 2> dx, tensor_view<G, 2> dweight, tensor_view<G, 1> dbias,
                     detail::const_view<T, 2> dout, detail::const_view<T, 2> x, detail::const_view<T, 2> weight,
                     const cublas_handle& handle, bool accumulate = false, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<G, T> || std::is_same_v<G, float>, "linear_backward: the gradients are T or float");
    constexpr std::string_view op = "linear_backward";
    tinyllm::detail::expect_linear_backward_args(op, dx, dweight, dbias, dout, x, weight);
    detail::expect_unit_column_stride(dout, op, "dout");
    detail::expect_unit_column_stride(x, op, "x");
    if (dx.size()) detail::expect_unit_column_stride(dx, op, "dx");
    TINYLLM_EXPECT(dbias.size() <= 1 || dbias.stride(0) == 1, op, ": dbias must be contiguous");
    const index_t rows = x.extent(0), N = weight.extent(0), K = weight.extent(1);
    if (dweight.size()) {
        if (rows == 0) {  // an empty sum: zero, or nothing to add
            if (!accumulate)
                launch(detail::zero_matrix_kernel<G>, static_cast<unsigned>(ceil_div<index_t>(N * K, 256)), 256, 0,
                       stream, dweight.data(), N, K, dweight.stride(0), dweight.stride(1));
        } else {
            detail::gemm<T, G>(dweight, dout.transpose(0, 1), x, accumulate ? 1.0f : 0.0f, handle, stream, op);
        }
    }
    if (dbias.size())
        detail::column_sums<T, G>(dbias, {}, dout, {}, {}, activation::identity, accumulate, stream);
    if (dx.size() && rows > 0) detail::gemm<T, T>(dx, dout, weight, 0.0f, handle, stream, op);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The gradients of out = a b (matmul above), given dout: da = dout b^T (M, K),
// overwritten, and db (+)= a^T dout (K, N); either may be empty (not computed).
// `accumulate` adds to db. da must not overlap dout.
template <class T, class G = T>
void matmul_backward(tensor_view<T, 2> da, tensor_view<G, 2> db, detail::const_view<T, 2> dout,
                     detail::const_view<T, 2> a, detail::const_view<T, 2> b, const cublas_handle& handle,
                     bool accumulate = false, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_matmul_args("matmul_backward", a, b);
    // out = a (b^T)^T: linear with weight b^T, whose gradient is db^T.
    linear_backward<T, G>(da, db.transpose(0, 1), {}, dout, a, b.transpose(0, 1), handle, accumulate, stream);
}

// The GPT-2 MLP: out = act(x fc_weight^T + fc_bias) proj_weight^T + proj_bias.
// out, x: (rows, D); hidden: (rows, H) scratch.
template <class T>
void gpt2_mlp(tensor_view<T, 2> out, detail::const_view<T, 2> x, const gpt2_mlp_weights<T>& w,
              tensor_view<T, 2> hidden, const cublas_handle& handle, activation act = activation::gelu_tanh,
              cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_gpt2_mlp_args("gpt2_mlp", out, x, w);
    detail::expect_workspace(hidden, x.extent(0), w.fc_weight.extent(0), "gpt2_mlp", "hidden");
    linear<T>(hidden, x, w.fc_weight, {}, handle, stream);
    bias_activate<T>(hidden, hidden, w.fc_bias, act, stream);  // fused bias + GELU
    linear<T>(out, hidden, w.proj_weight, w.proj_bias, handle, stream);
}

// Llama's MLP: out = (silu(x gate_weight^T) * (x up_weight^T)) down_weight^T.
// out, x: (rows, D); gate, up: (rows, H) scratch (gate ends holding the product).
template <class T>
void swiglu_mlp(tensor_view<T, 2> out, detail::const_view<T, 2> x, const swiglu_mlp_weights<T>& w,
                tensor_view<T, 2> gate, tensor_view<T, 2> up, const cublas_handle& handle,
                cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_swiglu_mlp_args("swiglu_mlp", out, x, w);
    const index_t rows = x.extent(0), H = w.gate_weight.extent(0);
    detail::expect_workspace(gate, rows, H, "swiglu_mlp", "gate");
    detail::expect_workspace(up, rows, H, "swiglu_mlp", "up");
    TINYLLM_EXPECT(gate.data() != up.data() || gate.size() == 0, "swiglu_mlp: gate and up must be different memory");
    linear<T>(gate, x, w.gate_weight, {}, handle, stream);
    linear<T>(up, x, w.up_weight, {}, handle, stream);
    swiglu<T>(gate, gate, up, stream);  // fused: silu(gate) * up in one pass
    linear<T>(out, gate, w.down_weight, {}, handle, stream);
}

// ---- A decode step's first MLP projection as a GEMV (at most 8 rows) ---------------
// For a few rows of x (decoding) the MLP's first half is a matrix-vector product
// and an element-wise step. gemv.cuh's pair_gemv_kernel does both in one launch,
// the element-wise step in its epilogue (gemv.cuh explains how a warp reads):
//
//   swiglu_gemv          hidden = silu(x W_gate^T) * (x W_up^T): a warp reads row j of
//                        W_gate and row j of W_up. Replaces two cuBLAS GEMMs + swiglu.
//   bias_activate_gemv   hidden = kind(x W^T + b): a warp per two neighbouring rows of
//                        W. Replaces a cuBLAS GEMM + bias_activate.
//
// Each product is rounded to T before the element-wise step, as the unfused path
// stores it. The sums run in another order than cuBLAS's, so the result is within
// a rounding of the unfused one, not its bits. cuda::model uses them for a decode
// step (two launches fewer per Llama layer, one per GPT-2 layer); quantize.cuh
// has the same two for quantized weights, on the same epilogues.

namespace detail {

inline constexpr int mlp_gemv_max_rows = pair_gemv_max_rows;

// Unit j: row j of W_gate (the first matrix) and row j of W_up (the second).
template <class T>
struct swiglu_gemv_epilogue {
    T* out;  // (m, H)
    index_t H;

    struct unit_state {
        index_t n0, n1;
    };
    __device__ unit_state unit(index_t j) const { return {j, j}; }
    __device__ void finish(const unit_state& s, int m, float g, float u) const {
        out[m * H + s.n0] = from_float<T>(tinyllm::swiglu(rounded_to<T>(g), rounded_to<T>(u)));
    }
    index_t units() const { return H; }
};

// Unit u: rows 2u and 2u + 1 of W (both matrices are W).
template <class T>
struct bias_activate_gemv_epilogue {
    T* out;         // (m, N)
    const T* bias;  // (N) or null
    index_t N;
    activation kind;

    using unit_state = neighbour_rows;  // rows n, n + 1
    __device__ unit_state unit(index_t u) const { return neighbour_rows::of_unit(u, N); }
    index_t units() const { return neighbour_rows::units(N); }
    __device__ void finish(const unit_state& s, int m, float a, float b) const {
        T* row = out + m * N;
        const float b0 = bias != nullptr ? to_float(bias[s.n0]) : 0.0f;
        row[s.n0] = from_float<T>(tinyllm::activate(kind, rounded_to<T>(a) + b0));
        if (s.n0 + 1 < N) {
            const float b1 = bias != nullptr ? to_float(bias[s.n0 + 1]) : 0.0f;
            row[s.n0 + 1] = from_float<T>(tinyllm::activate(kind, rounded_to<T>(b) + b1));
        }
    }
};

// hidden (rows, H) = silu(x W_gate^T) * (x W_up^T); x (rows, K); gate_weight,
// up_weight (H, K); all contiguous, rows <= mlp_gemv_max_rows.
template <class T>
void swiglu_gemv(tensor_view<T, 2> hidden, const_view<T, 2> x, const_view<T, 2> gate_weight,
                 const_view<T, 2> up_weight, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "swiglu_gemv";
    const index_t rows = x.extent(0), K = x.extent(1), H = gate_weight.extent(0);
    TINYLLM_EXPECT(gate_weight.extent(1) == K && up_weight.extent(0) == H && up_weight.extent(1) == K &&
                       hidden.extent(0) == rows && hidden.extent(1) == H,
                   op, ": hidden ", to_string(hidden.shape()), ", x ", to_string(x.shape()), ", gate_weight ",
                   to_string(gate_weight.shape()), " and up_weight ", to_string(up_weight.shape()),
                   " must be (rows, H), (rows, K), (H, K) and (H, K)");
    expect_packed_rows(hidden, op, "hidden");
    expect_packed_rows(x, op, "x");
    expect_packed_rows(gate_weight, op, "gate_weight");
    expect_packed_rows(up_weight, op, "up_weight");
    // Other warps still read x and the weights while a warp writes its part of hidden.
    ::tinyllm::detail::expect_apart_from(op, "hidden", hidden, "x", x, "gate_weight", gate_weight, "up_weight",
                                         up_weight);
    const swiglu_gemv_epilogue<T> epi{hidden.data(), H};
    launch_pair_gemv<T>(op, epi, x.data(), rows, gate_weight.data(), up_weight.data(), K, epi.units(), stream);
}

// out (rows, N) = kind(x W^T + bias); x (rows, K); weight (N, K); bias (N) or
// empty; all contiguous, rows <= mlp_gemv_max_rows.
template <class T>
void bias_activate_gemv(tensor_view<T, 2> out, const_view<T, 2> x, const_view<T, 2> weight, const_view<T, 1> bias,
                        activation kind, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "bias_activate_gemv";
    const index_t rows = x.extent(0), K = x.extent(1), N = weight.extent(0);
    TINYLLM_EXPECT(weight.extent(1) == K && out.extent(0) == rows && out.extent(1) == N, op, ": out ",
                   to_string(out.shape()), ", x ", to_string(x.shape()), " and weight ", to_string(weight.shape()),
                   " must be (rows, N), (rows, K) and (N, K)");
    expect_gemv_bias(bias, N, op);
    expect_packed_rows(out, op, "out");
    expect_packed_rows(x, op, "x");
    expect_packed_rows(weight, op, "weight");
    ::tinyllm::detail::expect_apart_from(op, "out", out, "x", x, "weight", weight, "bias", bias);
    const bias_activate_gemv_epilogue<T> epi{out.data(), bias.size() ? bias.data() : nullptr, N, kind};
    launch_pair_gemv<T>(op, epi, x.data(), rows, weight.data(), weight.data(), K, epi.units(), stream);
}

}  // namespace detail

// ---- Any number of leading dimensions: (..., features) -------------------------------

// linear: out (..., N), x (..., K) with the same leading dimensions; weight (N, K); bias (N) or {}.
// T (x's element type) and O (out's) are deduced, or named as in linear<bfloat16, float>(...).
template <class T = detail::deduced, class O = detail::deduced, tensor_like Out, tensor_like X, tensor_like W,
          tensor_like B = detail::absent_vector<T, X>>
void linear(Out&& out /*(..., N)*/, const X& x /*(..., K)*/, const W& weight /*(N, K)*/, const B& bias /*(N)*/,
            const cublas_handle& handle, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, X>;
    using EO = detail::element_t<O, Out>;
    tinyllm::detail::expect_same_leading(out, x, "linear", "out", "x");
    linear<E, EO>(as_rows<EO>(out, "linear: out"), as_rows<const E>(x, "linear: x"),
                  tinyllm::detail::as_matrix<const E>(weight), as_vector<const E>(bias), handle, stream);
}

// linear_backward: dx (..., K) or {}, dout (..., N) and x (..., K) with the same leading
// dimensions; dweight (N, K) or {}; dbias (N) or {}; weight (N, K). T (dout's element type)
// and G (dweight's, or T when it is {}) are deduced, or named as in linear_backward<bfloat16>(...).
template <class T = detail::deduced, tensor_like DY, tensor_like X, tensor_like W,
          tensor_like DX = tensor_view<detail::element_t<T, DY>, 2>,
          tensor_like DW = tensor_view<detail::element_t<T, DY>, 2>,
          tensor_like DB = tensor_view<std::remove_const_t<typename view_of_t<DW>::element_type>, 1>>
void linear_backward(DX&& dx /*(..., K) or empty*/, DW&& dweight /*(N, K) or empty*/, DB&& dbias /*(N) or empty*/,
                     const DY& dout /*(..., N)*/, const X& x /*(..., K)*/, const W& weight /*(N, K)*/,
                     const cublas_handle& handle, bool accumulate = false, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DY>;
    using G = std::remove_const_t<typename view_of_t<DW>::element_type>;
    constexpr std::string_view op = "linear_backward";
    tinyllm::detail::expect_same_leading(dout, x, op, "dout", "x");
    tensor_view<E, 2> dx2;  // empty: not wanted
    if (as_view(dx).size() != 0) {
        expect_equal_shapes(dx, x, op, "dx", "x");
        dx2 = as_rows<E>(dx, "linear_backward: dx");
    }
    linear_backward<E, G>(dx2, tinyllm::detail::as_matrix<G>(dweight), as_vector<G>(dbias),
                          as_rows<const E>(dout, "linear_backward: dout"), as_rows<const E>(x, "linear_backward: x"),
                          tinyllm::detail::as_matrix<const E>(weight), handle, accumulate, stream);
}

// The GPT-2 MLP on (..., D): out, x (..., D); hidden (..., H) or (rows, H) scratch.
template <class T, tensor_like Out, tensor_like X, tensor_like Hidden>
void gpt2_mlp(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const gpt2_mlp_weights<T>& w,
              Hidden&& hidden /*(..., H)*/, const cublas_handle& handle, activation act = activation::gelu_tanh,
              cudaStream_t stream = nullptr) {
    expect_equal_shapes(out, x, "gpt2_mlp", "out", "x");
    gpt2_mlp<T>(as_rows<T>(out, "gpt2_mlp: out"), as_rows<const T>(x, "gpt2_mlp: x"), w,
                as_rows<T>(hidden, "gpt2_mlp: hidden"), handle, act, stream);
}

// Llama's MLP on (..., D): out, x (..., D); gate, up (..., H) or (rows, H) scratch.
template <class T, tensor_like Out, tensor_like X, tensor_like G, tensor_like U>
void swiglu_mlp(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const swiglu_mlp_weights<T>& w,
                G&& gate /*(..., H)*/, U&& up /*(..., H)*/, const cublas_handle& handle,
                cudaStream_t stream = nullptr) {
    expect_equal_shapes(out, x, "swiglu_mlp", "out", "x");
    swiglu_mlp<T>(as_rows<T>(out, "swiglu_mlp: out"), as_rows<const T>(x, "swiglu_mlp: x"), w,
                  as_rows<T>(gate, "swiglu_mlp: gate"), as_rows<T>(up, "swiglu_mlp: up"), handle, stream);
}

}  // namespace tinyllm::cuda
