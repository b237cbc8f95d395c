// tinyllm/cuda/quantize.cuh — the quantized linear layer of <tinyllm/quantize.hpp>
// on the GPU: out = x W^^T + bias with W^ stored as int8 (per output channel)
// or int4 (groups of G inputs, two per byte), activations x in T (float or
// bfloat16), sums in float.
//
// The formats, the packing picture and the element formulas (quant::) are in
// <tinyllm/quantize.hpp>; the kernels here call the same quant:: functions, so
// the GPU dequantizes exactly as the CPU reference does. A quantized matrix is
// uploaded once (device_quantized_matrix: its bytes, scales and zero points in
// device memory, in the CPU layout).
//
// The ladder:
//   v1 dequantize + cuBLAS  (linear_dequantize_gemm) — expand W^ into a
//       temporary (N, K) matrix of T, then the ordinary cuda::linear. Correct for
//       every shape and the obvious first step, but it defeats the purpose for
//       decoding: it reads the quantized bytes, WRITES 2-4 bytes per weight and
//       reads them again in the GEMM, so a batch-1 step moves more bytes than
//       the bfloat16 layer it replaces. For prefill (many rows), where the GEMM
//       is compute-bound, the expansion is a small extra cost.
//   v2 fused GEMV  (linear_quantized_gemv) — for decoding: few rows of x
//       (at most 8). A warp computes one output n for every row of x: each lane
//       loads 16 bytes of W's row n at a time (32 int4 or 16 int8 values, one
//       uint4 load), the matching values of x, and accumulates in registers
//       per group
//           sum_k x_k (q_k - z) s = s (sum_k x_k q_k - z sum_k x_k)
//       (int8: z = 0 and one scale for the row, applied once at the end); a
//       warp shuffle sum finishes the dot product. The weight's bytes are read
//       exactly once and nothing is written but out, so a step's time should be
//       its quantized bytes over the memory bandwidth: for an 8192 x 2048 layer,
//       9.0 MB at int4-g128 (values, scales and zero points) against 33.6 MB in
//       bfloat16, an expected ~3.7x over a bfloat16 GEMV once the layer is large
//       enough to hide the launch (not yet measured on a GPU).
//       Needs K a multiple of 32 (int4; groups a multiple of 32) or 16 (int8),
//       x contiguous; the host rejects other shapes (v1 takes them).
//       With an epilogue (quantized_pair_gemv_kernel): a warp reads two rows so,
//       and hands their sums to one of gemv.cuh's epilogues (SwiGLU, bias +
//       activation, RoPE v4), as the dense decode GEMVs do; the sums are v2's.
//   v3 fused dequantize-GEMM on tensor cores  (linear_quantized_mma) — for
//       prefill (many rows): the GEMM is compute-bound there, so the point is to
//       feed the tensor cores without ever writing W^ to global memory. A block
//       of 4 warps computes a 64 x 64 tile of out; for every 32 inputs k it
//       stages a 64 x 32 tile of x and a 64 x 32 tile of W^, *dequantized while
//       loading* (the quantized bytes are read from global memory, q -> (q - z) s
//       is computed in registers with the same quant:: functions as the CPU, and
//       only the bfloat16 result goes to shared memory), then each warp runs
//       mma.sync m16n8k16 (bfloat16 in, float sums) over its 16 rows x 64
//       outputs, its fragments loaded with ldmatrix as in attention v4
//       (attention_mma.cuh; W^ stored [n][k] is the "col" B operand, like K in
//       Q K^T). The price: x and W^ enter the product rounded to bfloat16
//       (relative error up to 2^-8 each), also for float activations. Any shape (tiles past
//       the edges are zero-filled); sm_80 or newer. Next rungs, not written:
//       double-buffered cp.async of the packed bytes, and dequantizing straight
//       into the B fragments' registers instead of through shared memory.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_mma.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/quantize.hpp>

#include <cstdint>
#include <span>

namespace tinyllm::cuda {

// A quantized_matrix in device memory (the same layout as on the host).
struct device_quantized_matrix {
    quant_spec spec;
    index_t rows = 0, cols = 0;
    device_buffer<std::uint8_t> data;  // int8: (N, K); int4: (N, K/2)
    device_buffer<float> scales;       // (N, groups)
    device_buffer<std::uint8_t> zeros; // (N, groups), int4 only

    index_t group_size() const { return spec.format == quant_format::int8 ? cols : spec.group; }
    index_t groups() const { return spec.groups(cols); }
    index_t row_bytes() const { return spec.row_bytes(cols); }
};

// Upload a quantized matrix (synchronous copies).
inline device_quantized_matrix to_device(const quantized_matrix& q) {
    ::tinyllm::detail::expect_consistent(q, "cuda::to_device");
    device_quantized_matrix d;
    d.spec = q.spec;
    d.rows = q.rows;
    d.cols = q.cols;
    d.data = to_device(std::span<const std::uint8_t>(q.data));
    d.scales = to_device(std::span<const float>(q.scales.values()));
    if (q.spec.format == quant_format::int4) d.zeros = to_device(std::span<const std::uint8_t>(q.zeros.values()));
    return d;
}

namespace detail {

// What a kernel needs of a device_quantized_matrix, by value.
struct quantized_args {
    const std::uint8_t* data;
    const float* scales;
    const std::uint8_t* zeros;
    index_t rows, cols, group, groups, row_bytes;
    bool int8;
};

// A device_quantized_matrix is an aggregate a caller may change after to_device: its shape,
// format and buffers must still agree before a kernel indexes them (an int4 group of 0 divided
// by zero; a wider cols read past the data).
inline quantized_args args_of(const device_quantized_matrix& w) {
    const bool int4 = w.spec.format == quant_format::int4;
    TINYLLM_EXPECT(w.rows >= 0 && w.cols >= 0 &&
                       (int4 ? w.spec.group >= 2 && w.spec.group % 2 == 0 && w.cols % w.spec.group == 0
                             : w.spec.group == 0),
                   "cuda: the quantized weight (", w.rows, " x ", w.cols, ", format ", w.spec.name(),
                   ") has a group size its columns do not allow; build it with cuda::to_device");
    const auto need = [&](std::size_t have, index_t want, const char* part) {
        TINYLLM_EXPECT(have == static_cast<std::size_t>(want), "cuda: the quantized weight (", w.rows, " x ", w.cols,
                       ", ", w.spec.name(), ") needs ", want, " ", part, ", its buffer holds ", have,
                       "; build it with cuda::to_device");
    };
    need(w.data.size(), w.rows * w.row_bytes(), "bytes of data");
    need(w.scales.size(), w.rows * w.groups(), "scales");
    need(w.zeros.size(), int4 ? w.rows * w.groups() : 0, "zero points");
    return {w.data.data(), w.scales.data(), w.zeros.data(), w.rows, w.cols, w.group_size(), w.groups(),
            w.row_bytes(), w.spec.format == quant_format::int8};
}

// W^ (N, K) in T: one thread per element, grid-stride.
template <class T>
__global__ void dequantize_kernel(T* out, quantized_args w) {
    const index_t total = w.rows * w.cols;
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const index_t n = i / w.cols, k = i % w.cols, g = k / w.group;
        const std::uint8_t* row = w.data + n * w.row_bytes;
        const float s = w.scales[n * w.groups + g];
        const float v = w.int8 ? quant::dequantize_int8(static_cast<std::int8_t>(row[k]), s)
                               : quant::dequantize_int4(quant::int4_at(row, k), s, w.zeros[n * w.groups + g]);
        out[i] = from_float<T>(v);
    }
}

inline constexpr int gemv_warps = 4;    // outputs per block
inline constexpr int gemv_max_rows = 8; // rows of x per call of the v2 kernel

// x[k .. k + 8) as floats; p 16-byte aligned (float: two float4; bfloat16: one uint4).
template <class T>
__device__ __forceinline__ void load8(float* dst, const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        dst[0] = a.x, dst[1] = a.y, dst[2] = a.z, dst[3] = a.w, dst[4] = b.x, dst[5] = b.y, dst[6] = b.z, dst[7] = b.w;
    } else {
        const uint4 u = reinterpret_cast<const uint4*>(p)[0];
        const unsigned words[4] = {u.x, u.y, u.z, u.w};
        for (int i = 0; i < 4; ++i) {  // bfloat16 is a float's high half: a shift widens it exactly
            dst[2 * i] = tinyllm::detail::bits_to_float(words[i] << 16);
            dst[2 * i + 1] = tinyllm::detail::bits_to_float(words[i] & 0xFFFF0000u);
        }
    }
}

// The lane's share of row n of W^ times every row of x: acc[m] += its partial
// sums (16-byte chunks c = lane, lane + 32, ...), before the warp sum and, for
// int8, before the row's scale (quantized_row_scale).
template <class T>
__device__ __forceinline__ void quantized_row_partials(float (&acc)[gemv_max_rows], const T* x,
                                                       const quantized_args& w, index_t n, int rows, int lane) {
    const std::uint8_t* row = w.data + n * w.row_bytes;
    const index_t K = w.cols;
    const int per_chunk = w.int8 ? 16 : 32;  // values in 16 bytes
    const index_t chunks = K / per_chunk;
    for (index_t c = lane; c < chunks; c += 32) {
        const uint4 packed = reinterpret_cast<const uint4*>(row)[c];
        const unsigned words[4] = {packed.x, packed.y, packed.z, packed.w};
        const index_t k0 = c * per_chunk;
        if (w.int8) {
            float q[16];
            for (int i = 0; i < 16; ++i)
                q[i] = static_cast<float>(static_cast<std::int8_t>((words[i / 4] >> (8 * (i % 4))) & 0xFF));
#pragma unroll
            for (int m = 0; m < gemv_max_rows; ++m) {
                if (m >= rows) break;
                float xv[8], d = 0.0f;
                for (int h = 0; h < 2; ++h) {
                    load8(xv, x + m * K + k0 + 8 * h);
                    for (int i = 0; i < 8; ++i) d += xv[i] * q[8 * h + i];
                }
                acc[m] += d;
            }
        } else {
            const index_t g = k0 / w.group;
            const float s = w.scales[n * w.groups + g];
            const float z = static_cast<float>(w.zeros[n * w.groups + g]);
            float q[32];
            for (int i = 0; i < 32; ++i) q[i] = static_cast<float>((words[i / 8] >> (4 * (i % 8))) & 0x0F);
#pragma unroll
            for (int m = 0; m < gemv_max_rows; ++m) {
                if (m >= rows) break;
                float xv[8], d = 0.0f, xs = 0.0f;
                for (int h = 0; h < 4; ++h) {
                    load8(xv, x + m * K + k0 + 8 * h);
                    for (int i = 0; i < 8; ++i) {
                        d += xv[i] * q[8 * h + i];
                        xs += xv[i];
                    }
                }
                acc[m] += s * (d - z * xs);
            }
        }
    }
}

// What a warp's summed partials of row n are multiplied by: int8's per-row scale (int4's
// per-group scales are inside the partials).
__device__ __forceinline__ float quantized_row_scale(const quantized_args& w, index_t n) {
    return w.int8 ? w.scales[n] : 1.0f;
}

// v2: a warp per output n, every row of x (rows <= gemv_max_rows); see the top.
template <class T>
__global__ void __launch_bounds__(gemv_warps * 32)
    quantized_gemv_kernel(T* out, const T* x, const T* bias, quantized_args w, int rows) {
    const int lane = threadIdx.x % 32;
    const index_t n = blockIdx.x * static_cast<index_t>(gemv_warps) + threadIdx.x / 32;
    if (n >= w.rows) return;  // a whole warp leaves together
    float acc[gemv_max_rows] = {};
    quantized_row_partials(acc, x, w, n, rows, lane);
    const float row_scale = quantized_row_scale(w, n);
#pragma unroll
    for (int m = 0; m < gemv_max_rows; ++m) {
        if (m >= rows) break;
        // mul_rn: the product rounded on its own. nvcc would fuse it with the bias add into one
        // fma, and the epilogue kernels (which add the bias later) would then differ in the last bit.
        const float total = ::tinyllm::detail::mul_rn(warp_sum(acc[m]), row_scale);
        if (lane == 0) out[m * w.rows + n] = from_float<T>(total + (bias ? to_float(bias[n]) : 0.0f));
    }
}

// One warp's unit of quantized_pair_gemv_kernel.
template <class T, class Epilogue>
__device__ void quantized_pair_gemv_unit(const Epilogue& epi, const typename Epilogue::unit_state& s, int lane,
                                         const T* x, const quantized_args& a, const quantized_args& b, int rows) {
    float acc0[gemv_max_rows] = {}, acc1[gemv_max_rows] = {};
    quantized_row_partials(acc0, x, a, s.n0, rows, lane);
    quantized_row_partials(acc1, x, b, s.n1, rows, lane);
    const float scale0 = quantized_row_scale(a, s.n0), scale1 = quantized_row_scale(b, s.n1);
#pragma unroll
    for (int m = 0; m < gemv_max_rows; ++m) {
        if (m >= rows) break;
        acc0[m] = ::tinyllm::detail::mul_rn(warp_sum(acc0[m]), scale0);  // every lane gets the sums; rounded as v2's
        acc1[m] = ::tinyllm::detail::mul_rn(warp_sum(acc1[m]), scale1);
    }
#pragma unroll
    for (int m = 0; m < gemv_max_rows; ++m) {  // lane m finishes row m
        if (m >= rows) break;
        if (lane == m) epi.finish(s, m, acc0[m], acc1[m]);
    }
}

// v2 with an epilogue: the quantized counterpart of gemv.cuh's pair_gemv_kernel,
// taking the same epilogues (RoPE v4's, the MLP's SwiGLU and bias + activation).
// A warp reads row n0 of a and row n1 of b as v2 reads one row, and lane m
// hands row m's two sums to the epilogue (then an epilogue's tail runs, as in
// pair_gemv_kernel). The sums are v2's, bit for bit.
template <class T, class Epilogue>
__global__ void __launch_bounds__(gemv_warps * 32)
    quantized_pair_gemv_kernel(Epilogue epi, const T* x, quantized_args a, quantized_args b, int rows,
                               index_t units) {
    const int lane = threadIdx.x % 32;
    const index_t unit = blockIdx.x * static_cast<index_t>(gemv_warps) + threadIdx.x / 32;
    if (unit < units) quantized_pair_gemv_unit(epi, epi.unit(unit), lane, x, a, b, rows);  // a whole warp, or none
    if constexpr (gemv_tail<Epilogue>) epi.tail();
}

// v3: a 64 x 64 tile of out per block of 4 warps, 32 inputs per step; see the top.
inline constexpr int qmma_bm = 64;  // rows of x per block (16 per warp)
inline constexpr int qmma_bn = 64;  // outputs per block
inline constexpr int qmma_bk = 32;  // inputs per step
inline constexpr int qmma_ld = qmma_bk + 8;  // shared row stride in elements: 80 bytes, 16-byte aligned rows

template <class T>
__global__ void __launch_bounds__(128) quantized_mma_kernel(T* out, const T* x, const T* bias, quantized_args w,
                                                            index_t M) {
#if TINYLLM_CUDA_ARCH >= 800
    __shared__ __align__(16) bfloat16 xs[qmma_bm * qmma_ld];  // x tile   [row][k]
    __shared__ __align__(16) bfloat16 ws[qmma_bn * qmma_ld];  // W^ tile  [n][k]
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const index_t n0 = blockIdx.x * static_cast<index_t>(qmma_bn), m0 = blockIdx.y * static_cast<index_t>(qmma_bm);
    const index_t N = w.rows, K = w.cols;
    float acc[qmma_bn / 8][4] = {};  // 8 tiles of 8 outputs; accumulator layout of mma_c_row/mma_c_col
    for (index_t k0 = 0; k0 < K; k0 += qmma_bk) {
        // Stage both tiles; thread tid takes elements tid, tid + 128, ... (32 per row:
        // consecutive threads read consecutive k of one row).
        for (int e = tid; e < qmma_bm * qmma_bk; e += 128) {
            const int r = e / qmma_bk, c = e % qmma_bk;
            const index_t k = k0 + c, m = m0 + r, n = n0 + r;
            const float xv = (m < M && k < K) ? to_float(x[m * K + k]) : 0.0f;
            xs[r * qmma_ld + c] = from_float<bfloat16>(xv);
            float wv = 0.0f;
            if (n < N && k < K) {  // dequantize in registers, as dequantize_kernel does
                const std::uint8_t* row = w.data + n * w.row_bytes;
                const index_t g = k / w.group;
                const float sc = w.scales[n * w.groups + g];
                wv = w.int8 ? quant::dequantize_int8(static_cast<std::int8_t>(row[k]), sc)
                            : quant::dequantize_int4(quant::int4_at(row, k), sc, w.zeros[n * w.groups + g]);
            }
            ws[r * qmma_ld + c] = from_float<bfloat16>(wv);
        }
        __syncthreads();
        for (int kk = 0; kk < qmma_bk / 16; ++kk) {
            std::uint32_t a[4];
            ldmatrix_x4(a, xs + warp * 16 * qmma_ld + tinyllm::detail::mma_q_offset(lane, qmma_ld, kk));
            for (int np = 0; np < qmma_bn / 16; ++np) {
                std::uint32_t b[4];  // b0, b1 of output tiles 2np and 2np + 1
                ldmatrix_x4(b, ws + tinyllm::detail::mma_k_offset(lane, qmma_ld, np, kk));
                mma_16816<bfloat16>(acc[2 * np], a, b[0], b[1]);
                mma_16816<bfloat16>(acc[2 * np + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // the tiles are overwritten next step
    }
    for (int nt = 0; nt < qmma_bn / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
            const index_t m = m0 + warp * 16 + tinyllm::detail::mma_c_row(lane, e);
            const index_t n = n0 + nt * 8 + tinyllm::detail::mma_c_col(lane, e);
            if (m < M && n < N) out[m * N + n] = from_float<T>(acc[nt][e] + (bias ? to_float(bias[n]) : 0.0f));
        }
#else
    (void)out, (void)x, (void)bias, (void)w, (void)M;
    __trap();  // the launcher refuses GPUs older than sm_80
#endif
}

// Whether the v2 GEMV takes this weight: K a multiple of 16 (int8), or of 32 with
// groups a multiple of 32 (int4): every 16-byte load then lies in one row and one group.
inline bool gemv_takes(const device_quantized_matrix& w) {
    return w.spec.format == quant_format::int8 ? w.cols % 16 == 0 : (w.cols % 32 == 0 && w.spec.group % 32 == 0);
}

template <class T>
void expect_quantized_args(const char* op, tensor_view<T, 2> out, tensor_view<const T, 2> x,
                           tensor_view<const T, 1> bias, const device_quantized_matrix& w) {
    const index_t out0 = out.extent(0), out1 = out.extent(1), x0 = x.extent(0), x1 = x.extent(1);
    TINYLLM_EXPECT(x1 == w.cols, op, ": x has ", x1, " features, the quantized weight (", w.rows, " x ", w.cols,
                   ") takes ", w.cols);
    TINYLLM_EXPECT(out0 == x0 && out1 == w.rows, op, ": out is (", out0, ", ", out1, ") but (rows of x, outputs) = (",
                   x0, ", ", w.rows, ") is required");
    TINYLLM_EXPECT(bias.size() == 0 || bias.size() == w.rows, op, ": bias has ", bias.size(),
                   " elements but the layer has ", w.rows, " outputs (or pass no bias)");
    // Every output reads all of x's row: out apart from x (and from the bias).
    tinyllm::detail::expect_apart(op, "out", out, "x", x);
    tinyllm::detail::expect_apart(op, "out", out, "bias", bias);
}

}  // namespace detail

// out (N, K) = W^ in T (the v1 temporary; also useful on its own).
template <class T>
void dequantize(tensor_view<T, 2> out, const device_quantized_matrix& w, cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(out.extent(0) == w.rows && out.extent(1) == w.cols && out.is_contiguous(), "cuda::dequantize: out ",
                   to_string(out.shape()), " must be a contiguous (", w.rows, ", ", w.cols, ") matrix");
    if (out.size() == 0) return;
    const index_t blocks = std::min<index_t>(ceil_div<index_t>(out.size(), 256), 65535);
    launch(detail::dequantize_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, out.data(),
           detail::args_of(w));
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// v1: out (rows, N) = x (rows, K) W^^T + bias, by dequantizing W into `scratch`
// (grown to N * K elements of T) and cuda::linear (cuBLAS).
template <class T>
void linear_dequantize_gemm(tensor_view<T, 2> out, std::type_identity_t<tensor_view<const T, 2>> x,
                            const device_quantized_matrix& w, std::type_identity_t<tensor_view<const T, 1>> bias,
                            device_buffer<T>& scratch, const cublas_handle& handle, cudaStream_t stream = nullptr) {
    detail::expect_quantized_args<T>("linear_dequantize_gemm", out, x, bias, w);
    const auto need = static_cast<std::size_t>(w.rows * w.cols);
    if (scratch.size() < need) scratch = device_buffer<T>(need);
    const tensor_view<T, 2> dense(scratch.data(), {w.rows, w.cols});
    dequantize<T>(dense, w, stream);
    linear<T>(out, x, tensor_view<const T, 2>(dense), bias, handle, stream);
}

// v2: out (rows, N) = x (rows, K) W^^T + bias for rows <= 8 (decoding), fused; see the top.
template <class T>
void linear_quantized_gemv(tensor_view<T, 2> out, std::type_identity_t<tensor_view<const T, 2>> x,
                           const device_quantized_matrix& w, std::type_identity_t<tensor_view<const T, 1>> bias,
                           cudaStream_t stream = nullptr) {
    constexpr const char* op = "linear_quantized_gemv";
    detail::expect_quantized_args<T>(op, out, x, bias, w);
    TINYLLM_EXPECT(x.extent(0) <= detail::gemv_max_rows, op, ": ", x.extent(0), " rows of x; the fused GEMV takes at most ",
                   detail::gemv_max_rows, " (use linear_dequantize_gemm for prefill)");
    const bool int8 = w.spec.format == quant_format::int8;
    TINYLLM_EXPECT(detail::gemv_takes(w), op, ": ", w.spec.name(),
                   " with K = ", w.cols, " inputs; the fused GEMV needs K a multiple of ", int8 ? "16" : "32",
                   int8 ? "" : " and a group size that is a multiple of 32", " (linear_dequantize_gemm takes any)");
    TINYLLM_EXPECT(x.is_contiguous() && out.is_contiguous() && (bias.size() == 0 || bias.is_contiguous()), op,
                   ": x, out and bias must be contiguous");
    TINYLLM_EXPECT(reinterpret_cast<std::uintptr_t>(x.data()) % 16 == 0, op, ": x must be 16-byte aligned");
    if (out.size() == 0) return;
    const index_t blocks = ceil_div<index_t>(w.rows, detail::gemv_warps);
    TINYLLM_EXPECT(blocks <= 2147483647, op, ": ", w.rows, " outputs exceed the grid");
    launch(detail::quantized_gemv_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(detail::gemv_warps * 32), 0,
           stream, out.data(), x.data(), bias.size() ? bias.data() : nullptr, detail::args_of(w),
           static_cast<int>(x.extent(0)));
    TINYLLM_CUDA_CHECK_LAUNCH();
}

namespace detail {

// Whether a decode step of `rows` rows can take the quantized pair GEMV on a (and b).
inline bool quantized_pair_gemv_takes(index_t rows, const device_quantized_matrix& a,
                                      const device_quantized_matrix& b) {
    return rows <= gemv_max_rows && gemv_takes(a) && gemv_takes(b);
}

// Checks (on the host) and launches quantized_pair_gemv_kernel: x (rows, K),
// contiguous and 16-byte aligned; a and b (N_a, K), (N_b, K) in a format the v2
// GEMV takes; epi's units read rows of a and b.
template <class T, class Epilogue>
void launch_quantized_pair_gemv(std::string_view op, const Epilogue& epi, const T* x, index_t rows, index_t K,
                                const device_quantized_matrix& a, const device_quantized_matrix& b, index_t units,
                                cudaStream_t stream) {
    TINYLLM_EXPECT(rows >= 0 && rows <= gemv_max_rows, op, ": ", rows, " rows; the quantized GEMV takes at most ",
                   gemv_max_rows, " (a decode step)");
    TINYLLM_EXPECT(a.cols == K && b.cols == K, op, ": x has ", K, " features, the quantized weights take ", a.cols,
                   " and ", b.cols);
    TINYLLM_EXPECT(gemv_takes(a) && gemv_takes(b), op, ": ", a.spec.name(), " / ", b.spec.name(), " with K = ", K,
                   " inputs; the quantized GEMV needs K a multiple of 16 (int8), or of 32 with groups a multiple "
                   "of 32 (int4)");
    TINYLLM_EXPECT(reinterpret_cast<std::uintptr_t>(x) % 16 == 0, op, ": x must be 16-byte aligned");
    if (rows == 0 || units == 0) return;
    const index_t blocks = ceil_div<index_t>(units, gemv_warps);
    TINYLLM_EXPECT(blocks <= 2147483647, op, ": ", units, " output units exceed the grid");
    launch(quantized_pair_gemv_kernel<T, Epilogue>, dim3(static_cast<unsigned>(blocks)), dim3(gemv_warps * 32), 0,
           stream, epi, x, args_of(a), args_of(b), static_cast<int>(rows), units);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// ffn.cuh's swiglu_gemv with quantized W_gate and W_up (H, K): hidden (rows, H)
// = silu(x W^_gate^T) * (x W^_up^T), each product rounded to T first, as
// linear_quantized_gemv stores it; the same bits as two linear_quantized_gemv
// calls and swiglu.
template <class T>
void swiglu_gemv(tensor_view<T, 2> hidden, const_view<T, 2> x, const device_quantized_matrix& gate,
                 const device_quantized_matrix& up, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "swiglu_gemv";
    const index_t rows = x.extent(0), K = x.extent(1), H = gate.rows;
    TINYLLM_EXPECT(up.rows == H && hidden.extent(0) == rows && hidden.extent(1) == H, op, ": hidden ",
                   to_string(hidden.shape()), ", gate (", gate.rows, " x ", gate.cols, ") and up (", up.rows, " x ",
                   up.cols, ") must be (rows, H), (H, K) and (H, K)");
    expect_packed_rows(hidden, op, "hidden");
    expect_packed_rows(x, op, "x");
    const swiglu_gemv_epilogue<T> epi{hidden.data(), H};
    launch_quantized_pair_gemv<T>(op, epi, x.data(), rows, K, gate, up, epi.units(), stream);
}

// ffn.cuh's bias_activate_gemv with a quantized W (N, K): out (rows, N) =
// kind(x W^^T + bias); the same bits as linear_quantized_gemv (no bias) and
// bias_activate.
template <class T>
void bias_activate_gemv(tensor_view<T, 2> out, const_view<T, 2> x, const device_quantized_matrix& w,
                        const_view<T, 1> bias, activation kind, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "bias_activate_gemv";
    const index_t rows = x.extent(0), K = x.extent(1), N = w.rows;
    TINYLLM_EXPECT(out.extent(0) == rows && out.extent(1) == N, op, ": out ", to_string(out.shape()),
                   " must be (rows, N) = (", rows, ", ", N, ")");
    expect_gemv_bias(bias, N, op);
    expect_packed_rows(out, op, "out");
    expect_packed_rows(x, op, "x");
    const bias_activate_gemv_epilogue<T> epi{out.data(), bias.size() ? bias.data() : nullptr, N, kind};
    launch_quantized_pair_gemv<T>(op, epi, x.data(), rows, K, w, w, epi.units(), stream);
}

// norm.cuh's v3 with a quantized projection (D, K): x (rows, D) += in W^^T (+ proj_bias),
// out = norm(x), in one launch; x gets the same bits as linear_quantized_gemv (with
// the bias) followed by residual_add_*_norm.
template <class T, bool Layer>
void launch_residual_norm_gemv(std::string_view op, tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                               const device_quantized_matrix& proj, const_view<T, 1> proj_bias,
                               const_view<T, 1> weight, const_view<T, 1> bias, float eps, unsigned* arrivals,
                               cudaStream_t stream) {
    expect_residual_norm_gemv<T>(op, out, x, in, proj.rows, proj.cols, proj_bias, weight, bias, eps, arrivals);
    const auto epi = make_residual_norm_epilogue<T, Layer>(out, x, proj_bias, weight, bias, eps, arrivals,
                                                           /*round_before_bias=*/false);
    launch_quantized_pair_gemv<T>(op, epi, in.data(), x.extent(0), proj.cols, proj, proj, epi.units(), stream);
}

template <class T>
void residual_add_layer_norm_gemv(tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                                  const device_quantized_matrix& proj, const_view<T, 1> proj_bias,
                                  const_view<T, 1> weight, const_view<T, 1> bias, float eps, unsigned* arrivals,
                                  cudaStream_t stream = nullptr) {
    launch_residual_norm_gemv<T, true>("residual_add_layer_norm_gemv", out, x, in, proj, proj_bias, weight, bias, eps,
                                       arrivals, stream);
}

template <class T>
void residual_add_rms_norm_gemv(tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                                const device_quantized_matrix& proj, const_view<T, 1> proj_bias,
                                const_view<T, 1> weight, float eps, unsigned* arrivals,
                                cudaStream_t stream = nullptr) {
    launch_residual_norm_gemv<T, false>("residual_add_rms_norm_gemv", out, x, in, proj, proj_bias, weight, {}, eps,
                                        arrivals, stream);
}

}  // namespace detail

// v3: out (rows, N) = x (rows, K) W^^T + bias on tensor cores, W^ dequantized
// on the way into shared memory (prefill); see the top. Any shape; x, out and bias
// contiguous; sm_80 or newer. x and W^ enter the products as bfloat16.
template <class T>
void linear_quantized_mma(tensor_view<T, 2> out, std::type_identity_t<tensor_view<const T, 2>> x,
                          const device_quantized_matrix& w, std::type_identity_t<tensor_view<const T, 1>> bias,
                          cudaStream_t stream = nullptr) {
    constexpr const char* op = "linear_quantized_mma";
    detail::expect_quantized_args<T>(op, out, x, bias, w);
    TINYLLM_EXPECT(x.is_contiguous() && out.is_contiguous() && (bias.size() == 0 || bias.is_contiguous()), op,
                   ": x, out and bias must be contiguous");
    if (out.size() == 0) return;
    int device = 0, major = 0;
    TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    TINYLLM_EXPECT(major >= 8, op, " needs a GPU of compute capability 8.0 or newer (mma.sync bf16); this one is ",
                   major, ".x (linear_dequantize_gemm runs anywhere)");
    const index_t bx = ceil_div<index_t>(w.rows, detail::qmma_bn), by = ceil_div<index_t>(x.extent(0), detail::qmma_bm);
    TINYLLM_EXPECT(bx <= 2147483647 && by <= 65535, op, ": (", x.extent(0), " rows, ", w.rows,
                   " outputs) exceed the grid of 64 x 64 tiles");
    launch(detail::quantized_mma_kernel<T>, dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by)), dim3(128), 0,
           stream, out.data(), x.data(), bias.size() ? bias.data() : nullptr, detail::args_of(w), x.extent(0));
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
