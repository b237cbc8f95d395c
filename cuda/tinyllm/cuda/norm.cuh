// tinyllm/cuda/norm.cuh — LayerNorm, RMSNorm and the fused residual add + norm
// on the GPU. Same meaning and arguments as tinyllm::cpu:: in
// <tinyllm/norm.hpp> (read it for the math); element types float,
// tinyllm::bfloat16 and tinyllm::float16, all arithmetic in float.
//
// A norm is memory-bound: per element it reads x once, writes y once and does
// a handful of flops. The ideal time is (bytes read + bytes written) / copy
// bandwidth; the ladder is about getting there.
//
//   v1 naive       one thread per row, a straight port of the CPU loop: the
//                  sum, the squared deviations, then the output. Correct, but
//                  neighbouring threads read addresses D elements apart, so
//                  every load of a warp touches 32 different cache lines (no
//                  coalescing), and with 16384 rows only 16384 threads exist —
//                  too few to keep the memory system busy.
//   v2 vectorized  one block per row. The block's threads walk the row
//                  together, each loading 16 bytes at a time (8 bfloat16 or 4
//                  floats) from consecutive addresses — fully coalesced, 8x
//                  fewer load instructions for 16-bit types. Each thread sums
//                  its elements in a register; the block then adds the partial
//                  sums with warp shuffles (__shfl_xor_sync, 5 steps per warp)
//                  and one round through shared memory between warps. The
//                  passes after the first re-read the row (8 KiB at D = 4096
//                  bf16), which is still in L1/L2, so DRAM sees each byte
//                  read once and written once. Rows whose length is not a
//                  multiple of the vector width, or that are not 16-byte
//                  aligned, use the same kernel with scalar (still coalesced)
//                  accesses.
//   v3 in a GEMV   (decoding; detail::residual_add_*_norm_gemv) the residual
//                  add and the norm become the epilogue of the projection
//                  before them, and the norm is done by the launch's last
//                  block to arrive: one launch instead of two (see v3 below).
//
// Both versions are numerically careful in the same way as the CPU reference:
// two passes (mean, then squared deviations — never E[x^2] - E[x]^2), float
// accumulation for every input type, one rounding to the output type.
//
// Fused residual add (residual_add_*): pass 1 also reads `residual`, forms
// x + residual in float, rounds it to T, stores it to residual_out and sums the
// *rounded* values; later passes read residual_out back. The result equals
// add() followed by the norm, with one kernel instead of two and the sum never
// read back from DRAM. residual_out may be `residual` or `x` (in place) and out
// may be `x` or `residual`: every thread reads an element before writing it, and
// each element is handled by the same thread in every pass. Any other overlap
// (a row shifted, out over residual_out, weight or bias) is refused on the host
// (expect_norm_args and expect_residual_args in <tinyllm/norm.hpp>). The same pass can also
// add a per-column bias to `residual` (detail::residual_add_bias_*_norm): the
// bias of the projection that produced `residual`, which then skips its own
// bias kernel.
//
// The backward (training; the math in <tinyllm/norm.hpp> and docs/training.md):
//
//     dx_j = rstd (g_j - mean_k g_k - xhat_j mean_k(g_k xhat_k)),  g = dout w
//     (RMSNorm: no mean_k g_k term), dw_j = sum_rows dout_j xhat_j,  db_j = sum_rows dout_j
//
//   v1 block per row  (layer_norm_backward, rms_norm_backward and the fused
//                  residual versions, which add dresidual_out to dx) a grid of
//                  G = min(rows, 256) blocks walks the rows (block b takes rows
//                  b, b + G, ...). Per row, like the forward v2 but scalar
//                  (still coalesced): mean and rstd recomputed from x (two
//                  passes), then the sums of g and g xhat (block reductions
//                  with warp shuffles), then dx. dweight and dbias are sums
//                  over rows, and float atomics would make them depend on the
//                  order the blocks run in; instead each thread owns the
//                  columns j = threadIdx.x + k blockDim.x and adds its rows'
//                  terms into block b's row of a (G, D) float workspace, always
//                  in the same order, and a second kernel adds the G partial
//                  rows of each column in order 0..G-1. The results are
//                  bit-identical from run to run and under any schedule.
//   next rung      16-byte accesses as the forward v2; the partial sums in
//                  registers or shared memory instead of the L2-resident
//                  workspace.
//
// dweight and dbias have the weight's element type; they are overwritten, or
// added to with `accumulate` (in float, rounded once). dx may be the memory of
// dout, x (residual_out) or dresidual_out, exactly: each element is read by the
// thread that writes it, and the row's reductions (barriers) come first. Other
// overlaps are refused (expect_norm_backward_args in <tinyllm/norm.hpp>).
//
// Tensors: (..., D) device views — any number of leading dimensions: (B, T, D),
// (rows, D) or one (D) vector — with contiguous rows (stride(1) == 1) and any
// row stride; weight/bias: (D) contiguous, or empty for "none". The (rows, D)
// functions are the definitions; the (..., D) overloads at the end merge the
// leading dimensions into rows (as_rows in tensor.hpp) and call them. The
// element type is deduced, or named as in rms_norm<bfloat16>(...).
#pragma once

#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/gemv.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

// Sum of v over the 32 lanes of a warp, returned to every lane (butterfly).
TINYLLM_DEVICE float row_warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum of v over the block, returned to every thread. blockDim.x must be a
// multiple of 32 (at most 1024); `partial` is 32 floats of shared memory. Safe to
// call repeatedly: the first barrier waits until the previous result was read.
TINYLLM_DEVICE float row_block_sum(float v, float* partial) {
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    const int warps = static_cast<int>(blockDim.x) >> 5;
    v = row_warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    return row_warp_sum(lane < warps ? partial[lane] : 0.0f);
}

// Pointers and strides of one norm call (absent tensors are null).
template <class T>
struct norm_args {
    T* out;
    index_t out_stride;
    T* residual_out;  // Residual only
    index_t residual_out_stride;
    const T* x;
    index_t x_stride;
    const T* residual;  // Residual only
    index_t residual_stride;
    const T* residual_bias;  // (D) or null; Residual only: added to residual first (a deferred projection bias)
    const T* weight;  // (D) or null
    const T* bias;    // (D) or null; LayerNorm only
    index_t rows, D;
    float eps;
};

// v1: one thread per row.
template <class T, bool Layer, bool Residual>
__global__ void norm_naive_kernel(norm_args<T> p) {
    const index_t r = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (r >= p.rows) return;
    const T* src = p.x + r * p.x_stride;  // the row to normalize
    if constexpr (Residual) {
        T* sum = p.residual_out + r * p.residual_out_stride;
        const T* res = p.residual + r * p.residual_stride;
        for (index_t j = 0; j < p.D; ++j) {
            float delta = to_float(res[j]);
            if (p.residual_bias) delta = rounded_to<T>(delta + to_float(p.residual_bias[j]));
            sum[j] = store_as<T>(to_float(src[j]) + delta);
        }
        src = sum;
    }
    float mean = 0.0f;
    if constexpr (Layer) {
        float s = 0.0f;
        for (index_t j = 0; j < p.D; ++j) s += to_float(src[j]);
        mean = s / static_cast<float>(p.D);
    }
    float squares = 0.0f;
    for (index_t j = 0; j < p.D; ++j) {
        const float d = to_float(src[j]) - mean;
        squares += d * d;
    }
    const float rstd = rsqrtf(squares / static_cast<float>(p.D) + p.eps);
    T* y = p.out + r * p.out_stride;
    for (index_t j = 0; j < p.D; ++j) {
        float v = (to_float(src[j]) - mean) * rstd;
        if (p.weight) v *= to_float(p.weight[j]);
        if (Layer && p.bias) v += to_float(p.bias[j]);
        y[j] = store_as<T>(v);
    }
}

// How the passes of a row read it: through L1, as any load, or from L2 only
// (__ldcg) for a row that other blocks of the same launch have just written
// (v3's tail: its block's L1 may hold a stale line; launch.cuh says why).
enum class row_reads { cached, from_l2 };

template <class T, int N, row_reads Reads>
TINYLLM_DEVICE void load_row_floats(float (&out)[N], const T* p) {
    if constexpr (Reads == row_reads::cached) {
        load_floats<T, N>(out, p);
    } else {
        constexpr std::size_t bytes = sizeof(T) * N;  // one load of 16, 4 or 2 bytes
        using word = std::conditional_t<bytes == 16, uint4, std::conditional_t<bytes == 4, unsigned, unsigned short>>;
        static_assert(sizeof(word) == bytes, "a row load is 16, 4 or 2 bytes");
        const word w = __ldcg(reinterpret_cast<const word*>(p));
        packed_elements<T, N> q;
        memcpy(static_cast<void*>(&q), &w, bytes);  // the same bits, without a pointer cast
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = to_float(q.v[i]);
    }
}

// The affine parameters of elements v N .. v N + N - 1: the weight (1 where there
// is none) and the bias (0 where there is none, and always for RMSNorm).
template <class T, int N, bool Layer>
TINYLLM_DEVICE void load_affine(float (&w)[N], float (&b)[N], const T* weight, const T* bias, index_t v) {
    if (weight) {
        load_floats<T, N>(w, weight + v * N);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) w[i] = 1.0f;
    }
    if (Layer && bias) {
        load_floats<T, N>(b, bias + v * N);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) b[i] = 0.0f;
    }
}

// Pass 1 of a row without a residual: this thread's share of the sum
// (LayerNorm) or of the sum of squares (RMSNorm). The row is `vectors` accesses
// of N elements; thread t takes accesses t, t + blockDim.x, ...
template <class T, int N, bool Layer, row_reads Reads>
TINYLLM_DEVICE float norm_first_pass(const T* src, index_t vectors) {
    float acc = 0.0f;
    for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
        float a[N];
        load_row_floats<T, N, Reads>(a, src + v * N);
#pragma unroll
        for (int i = 0; i < N; ++i) acc += Layer ? a[i] : a[i] * a[i];
    }
    return acc;
}

// The passes after the first, by the whole block: the row's total from every
// thread's `acc`, the squared deviations from the mean (LayerNorm; the row is
// in cache by now), rstd, then y = (x - mean) rstd w + b. Each element is read
// and written by the same thread in every pass, so y may be src.
template <class T, int N, bool Layer, row_reads Reads>
TINYLLM_DEVICE void norm_last_passes(T* y, const T* src, float acc, const T* weight, const T* bias, index_t vectors,
                                     float inv_d, float eps, float* partial) {
    const float total = row_block_sum(acc, partial);
    float mean = 0.0f, rstd;
    if constexpr (Layer) {
        mean = total * inv_d;
        float squares = 0.0f;
        for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
            float a[N];
            load_row_floats<T, N, Reads>(a, src + v * N);
#pragma unroll
            for (int i = 0; i < N; ++i) squares += (a[i] - mean) * (a[i] - mean);
        }
        rstd = rsqrtf(row_block_sum(squares, partial) * inv_d + eps);
    } else {
        rstd = rsqrtf(total * inv_d + eps);
    }
    // Normalize, scale, shift, store.
    for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
        float a[N], w[N], b[N], o[N];
        load_row_floats<T, N, Reads>(a, src + v * N);
        load_affine<T, N, Layer>(w, b, weight, bias, v);
#pragma unroll
        for (int i = 0; i < N; ++i) o[i] = (a[i] - mean) * rstd * w[i] + b[i];
        store_floats<T, N>(y + v * N, o);
    }
}

// v2: one block per row, N elements per access (16 bytes, or 1 for the scalar
// fallback), block reductions with warp shuffles.
template <class T, int N, bool Layer, bool Residual>
__global__ void norm_vectorized_kernel(norm_args<T> p) {
    allow_next_grid();  // launched chained (launch.cuh): every row is read after the wait
    wait_for_prior_grids();
    __shared__ float partial[32];
    const index_t vectors = p.D / N;  // the launcher guarantees D % N == 0
    const float inv_d = 1.0f / static_cast<float>(p.D);
    for (index_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T* src = p.x + r * p.x_stride;

        // Pass 1: (the residual add, stored) and the sum, or the sum of squares for RMSNorm.
        float acc = 0.0f;
        if constexpr (Residual) {
            T* sum = p.residual_out + r * p.residual_out_stride;
            const T* res = p.residual + r * p.residual_stride;
            for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
                float a[N], b[N], s[N];
                load_floats<T, N>(a, src + v * N);
                load_floats<T, N>(b, res + v * N);
                if (p.residual_bias) {  // residual + bias rounded to T first, as linear's bias add stores it
                    float c[N];
                    load_floats<T, N>(c, p.residual_bias + v * N);
#pragma unroll
                    for (int i = 0; i < N; ++i) b[i] = rounded_to<T>(b[i] + c[i]);
                }
                packed_elements<T, N> q;
#pragma unroll
                for (int i = 0; i < N; ++i) {
                    q.v[i] = store_as<T>(a[i] + b[i]);
                    s[i] = to_float(q.v[i]);  // the stream as stored
                    acc += Layer ? s[i] : s[i] * s[i];
                }
                *reinterpret_cast<packed_elements<T, N>*>(sum + v * N) = q;
            }
            src = sum;
        } else {
            acc = norm_first_pass<T, N, Layer, row_reads::cached>(src, vectors);
        }
        norm_last_passes<T, N, Layer, row_reads::cached>(p.out + r * p.out_stride, src, acc, p.weight, p.bias,
                                                          vectors, inv_d, p.eps, partial);
    }
}

// v2's launch shape, shared with MoE's combine v2 (moe_dispatch.cuh): one block per
// row (at most 2^30, the rest taken by a grid-stride loop), with enough threads to
// give each a few of the row's `vectors` accesses, 32..256, whole warps.
inline unsigned norm_row_blocks(index_t rows) {
    return static_cast<unsigned>(rows < (index_t{1} << 30) ? rows : (index_t{1} << 30));
}
inline int norm_row_threads(index_t vectors) {
    const index_t wanted = ceil_div<index_t>(vectors, 32) * 32;
    return static_cast<int>(wanted < 32 ? 32 : (wanted > 256 ? 256 : wanted));
}

template <class View>
index_t norm_row_stride(const View& v) {
    return v.extent(0) > 1 ? v.stride(0) : v.extent(1);
}

// Validate (on the host, before any launch) and launch v1 or v2.
template <class T, bool Layer, bool Residual>
void launch_norm(std::string_view op, bool vectorized, tensor_view<T, 2> out, tensor_view<T, 2> residual_out,
                 tensor_view<const T, 2> x, tensor_view<const T, 2> residual, tensor_view<const T, 1> weight,
                 tensor_view<const T, 1> bias, float eps, cudaStream_t stream,
                 tensor_view<const T, 1> residual_bias = {}) {
    tinyllm::detail::expect_norm_args(op, out, x, weight, bias, eps);
    expect_unit_column_stride(out, op, "out");
    expect_unit_column_stride(x, op, "x");
    if constexpr (Residual) {
        tinyllm::detail::expect_residual_args(op, out, residual_out, x, residual, weight, bias);
        expect_unit_column_stride(residual_out, op, "residual_out");
        expect_unit_column_stride(residual, op, "residual");
    }
    TINYLLM_EXPECT(weight.size() <= 1 || weight.stride(0) == 1, op, ": weight must be contiguous");
    TINYLLM_EXPECT(bias.size() <= 1 || bias.stride(0) == 1, op, ": bias must be contiguous");
    const index_t rows = x.extent(0), D = x.extent(1);
    if (residual_bias.size()) {
        TINYLLM_EXPECT(Residual && residual_bias.extent(0) == D, op, ": residual_bias has ", residual_bias.extent(0),
                       " elements but the rows have D = ", D);
        TINYLLM_EXPECT(D <= 1 || residual_bias.stride(0) == 1, op, ": residual_bias must be contiguous");
        tinyllm::detail::expect_apart(op, "out", out, "residual_bias", residual_bias);
        tinyllm::detail::expect_apart(op, "residual_out", residual_out, "residual_bias", residual_bias);
    }
    if (rows == 0) return;

    norm_args<T> p{out.data(), norm_row_stride(out), residual_out.data(), Residual ? norm_row_stride(residual_out) : 0,
                   x.data(), norm_row_stride(x), residual.data(), Residual ? norm_row_stride(residual) : 0,
                   residual_bias.size() ? residual_bias.data() : nullptr, weight.size() ? weight.data() : nullptr,
                   bias.size() ? bias.data() : nullptr, rows, D, eps};

    if (!vectorized) {
        const int threads = 128;
        launch(norm_naive_kernel<T, Layer, Residual>, static_cast<unsigned>(ceil_div<index_t>(rows, threads)), threads,
               0, stream, p);
        TINYLLM_CUDA_CHECK_LAUNCH();
        return;
    }

    // 16-byte accesses when every row and the parameters are 16-byte aligned.
    constexpr int W = vector_width<T>;
    const auto ok = [](const void* ptr, index_t stride) { return !ptr || (aligned_16(ptr) && stride % W == 0); };
    const bool wide = D % W == 0 && ok(p.out, p.out_stride) && ok(p.x, p.x_stride) &&
                      ok(p.residual_out, p.residual_out_stride) && ok(p.residual, p.residual_stride) &&
                      ok(p.residual_bias, 0) && ok(p.weight, 0) && ok(p.bias, 0);
    const int threads = norm_row_threads(wide ? D / W : D);
    const unsigned blocks = norm_row_blocks(rows);
    if (wide)
        launch_chained(norm_vectorized_kernel<T, W, Layer, Residual>, blocks, threads, 0, stream, p);
    else
        launch_chained(norm_vectorized_kernel<T, 1, Layer, Residual>, blocks, threads, 0, stream, p);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// ---- backward ----------------------------------------------------------------------

// Pointers and strides of one norm backward call (absent tensors are null).
template <class T>
struct norm_backward_args {
    T* dx;
    index_t dx_stride;
    const T* dout;
    index_t dout_stride;
    const T* dresidual;  // dresidual_out (fused residual versions) or null
    index_t dresidual_stride;
    const T* x;  // x, or the stored residual_out
    index_t x_stride;
    const T* weight;     // (D) or null
    float* partial_dw;   // (gridDim.x, D) workspace, or null: dweight not wanted
    float* partial_db;   // (gridDim.x, D) workspace, or null: dbias not wanted (LayerNorm only)
    index_t rows, D;
    float eps;
};

// v1: a grid of blocks walking the rows; one block per row at a time.
template <class T, bool Layer>
__global__ void norm_backward_block_kernel(norm_backward_args<T> p) {
    __shared__ float partial[32];
    const float inv_d = 1.0f / static_cast<float>(p.D);
    float* pdw = p.partial_dw ? p.partial_dw + blockIdx.x * p.D : nullptr;
    float* pdb = p.partial_db ? p.partial_db + blockIdx.x * p.D : nullptr;
    for (index_t j = threadIdx.x; j < p.D; j += blockDim.x) {  // this thread's columns of the block's partials
        if (pdw) pdw[j] = 0.0f;
        if (pdb) pdb[j] = 0.0f;
    }
    for (index_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T* x = p.x + r * p.x_stride;
        const T* dy = p.dout + r * p.dout_stride;

        // The forward's statistics, recomputed (two passes, as the forward).
        float mean = 0.0f;
        if constexpr (Layer) {
            float sum = 0.0f;
            for (index_t j = threadIdx.x; j < p.D; j += blockDim.x) sum += to_float(x[j]);
            mean = row_block_sum(sum, partial) * inv_d;
        }
        float squares = 0.0f;
        for (index_t j = threadIdx.x; j < p.D; j += blockDim.x) {
            const float d = to_float(x[j]) - mean;
            squares += d * d;
        }
        const float rstd = rsqrtf(row_block_sum(squares, partial) * inv_d + p.eps);

        // The sums of g = dout w and of g xhat; this row's terms of dweight and dbias.
        float sum_g = 0.0f, sum_g_xhat = 0.0f;
        for (index_t j = threadIdx.x; j < p.D; j += blockDim.x) {
            const float xhat = (to_float(x[j]) - mean) * rstd;
            const float d = to_float(dy[j]);
            // mul_rn: g rounded once, the same value in both passes. nvcc would otherwise fuse
            // `g - mean_g` below into fma(d, w, -mean_g), and a row whose terms cancel exactly
            // (D = 1: dx = 0) would keep the product's rounding error, times rstd (up to 1/sqrt(eps)).
            const float g = p.weight ? ::tinyllm::detail::mul_rn(d, to_float(p.weight[j])) : d;
            sum_g += g;
            sum_g_xhat += g * xhat;
            if (pdw) pdw[j] += d * xhat;
            if (pdb) pdb[j] += d;
        }
        const float mean_g = Layer ? row_block_sum(sum_g, partial) * inv_d : 0.0f;
        const float mean_g_xhat = row_block_sum(sum_g_xhat, partial) * inv_d;

        // dx; every read of the row by other threads happened before the barriers above.
        T* dx = p.dx + r * p.dx_stride;
        const T* ds = p.dresidual ? p.dresidual + r * p.dresidual_stride : nullptr;
        for (index_t j = threadIdx.x; j < p.D; j += blockDim.x) {
            const float xhat = (to_float(x[j]) - mean) * rstd;
            const float d = to_float(dy[j]);
            const float g = p.weight ? ::tinyllm::detail::mul_rn(d, to_float(p.weight[j])) : d;
            float v = rstd * (g - mean_g - xhat * mean_g_xhat);
            if (ds) v += to_float(ds[j]);
            dx[j] = store_as<T>(v);
        }
    }
}

// out(j) = sum over b = 0..blocks-1 of partial(b, j) (+ out(j) with accumulate),
// in that order: the deterministic second pass of a parameter gradient.
template <class T>
__global__ void column_sum_kernel(T* out, const float* partial, index_t blocks, index_t D, bool accumulate) {
    const index_t j = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (j >= D) return;
    float s = 0.0f;
    for (index_t b = 0; b < blocks; ++b) s += partial[b * D + j];
    if (accumulate) s += to_float(out[j]);
    out[j] = store_as<T>(s);
}

// Validate (on the host) and launch the backward of LayerNorm (Layer) or RMSNorm.
template <class T, bool Layer>
void launch_norm_backward(std::string_view op, tensor_view<T, 2> dx, tensor_view<T, 1> dweight,
                          tensor_view<T, 1> dbias, tensor_view<const T, 2> dout, tensor_view<const T, 2> dresidual,
                          tensor_view<const T, 2> x, tensor_view<const T, 1> weight, float eps, bool accumulate,
                          cudaStream_t stream) {
    tinyllm::detail::expect_norm_backward_args(op, dx, dweight, dbias, dout, dresidual, x, weight, eps);
    expect_unit_column_stride(dx, op, "dx");
    expect_unit_column_stride(dout, op, "dout");
    expect_unit_column_stride(x, op, "x");
    if (dresidual.size()) expect_unit_column_stride(dresidual, op, "dresidual_out");
    TINYLLM_EXPECT(weight.size() <= 1 || weight.stride(0) == 1, op, ": weight must be contiguous");
    TINYLLM_EXPECT(dweight.size() <= 1 || dweight.stride(0) == 1, op, ": dweight must be contiguous");
    TINYLLM_EXPECT(dbias.size() <= 1 || dbias.stride(0) == 1, op, ": dbias must be contiguous");
    const index_t rows = x.extent(0), D = x.extent(1);
    const bool want_dw = dweight.size() != 0, want_db = dbias.size() != 0;
    if (rows == 0) {
        // No rows: the sums are empty. Zero the gradients unless accumulating.
        if (!accumulate) {
            if (want_dw) TINYLLM_CUDA_CHECK(cudaMemsetAsync(dweight.data(), 0, D * sizeof(T), stream));
            if (want_db) TINYLLM_CUDA_CHECK(cudaMemsetAsync(dbias.data(), 0, D * sizeof(T), stream));
        }
        return;
    }
    const index_t blocks = rows < 256 ? rows : 256;
    float* work = nullptr;
    if (want_dw || want_db) {
        const std::size_t one = static_cast<std::size_t>(blocks * D);
        work = static_cast<float*>(stream_workspace(one * sizeof(float) * (want_dw && want_db ? 2 : 1), stream));
    }
    float* pdw = want_dw ? work : nullptr;
    float* pdb = want_db ? work + (want_dw ? blocks * D : 0) : nullptr;
    norm_backward_args<T> p{dx.data(),
                            norm_row_stride(dx),
                            dout.data(),
                            norm_row_stride(dout),
                            dresidual.size() ? dresidual.data() : nullptr,
                            dresidual.size() ? norm_row_stride(dresidual) : 0,
                            x.data(),
                            norm_row_stride(x),
                            weight.size() ? weight.data() : nullptr,
                            pdw,
                            pdb,
                            rows,
                            D,
                            eps};
    const index_t wanted = ceil_div<index_t>(D, 32) * 32;
    const int threads = static_cast<int>(wanted < 32 ? 32 : (wanted > 256 ? 256 : wanted));
    launch(norm_backward_block_kernel<T, Layer>, static_cast<unsigned>(blocks), threads, 0, stream, p);
    TINYLLM_CUDA_CHECK_LAUNCH();
    const unsigned column_blocks = static_cast<unsigned>(ceil_div<index_t>(D, 256));
    if (want_dw) {
        launch(column_sum_kernel<T>, column_blocks, 256, 0, stream, dweight.data(), static_cast<const float*>(pdw),
               blocks, D, accumulate);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_db) {
        launch(column_sum_kernel<T>, column_blocks, 256, 0, stream, dbias.data(), static_cast<const float*>(pdb),
               blocks, D, accumulate);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace detail

// ---- LayerNorm: out = (x - mean) / sqrt(var + eps) * weight + bias; (rows, D) ----

// v1: one thread per row.
template <class T>
void layer_norm_naive(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> weight,
                      detail::const_view<T, 1> bias, float eps, cudaStream_t stream = nullptr) {
    detail::launch_norm<T, true, false>("layer_norm_naive", false, out, {}, x, {}, weight, bias, eps, stream);
}

// v2: one block per row, 16-byte loads, warp-shuffle reductions.
template <class T>
void layer_norm_vectorized(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> weight,
                           detail::const_view<T, 1> bias, float eps, cudaStream_t stream = nullptr) {
    detail::launch_norm<T, true, false>("layer_norm_vectorized", true, out, {}, x, {}, weight, bias, eps, stream);
}

// The best version (v2).
template <class T>
void layer_norm(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> weight,
                detail::const_view<T, 1> bias, float eps, cudaStream_t stream = nullptr) {
    layer_norm_vectorized<T>(out, x, weight, bias, eps, stream);
}

// Without affine parameters.
template <class T>
void layer_norm(tensor_view<T, 2> out, detail::const_view<T, 2> x, float eps, cudaStream_t stream = nullptr) {
    layer_norm_vectorized<T>(out, x, {}, {}, eps, stream);
}

// ---- RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight; (rows, D) --------------------

template <class T>
void rms_norm_naive(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> weight, float eps,
                    cudaStream_t stream = nullptr) {
    detail::launch_norm<T, false, false>("rms_norm_naive", false, out, {}, x, {}, weight, {}, eps, stream);
}

template <class T>
void rms_norm_vectorized(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> weight,
                         float eps, cudaStream_t stream = nullptr) {
    detail::launch_norm<T, false, false>("rms_norm_vectorized", true, out, {}, x, {}, weight, {}, eps, stream);
}

template <class T>
void rms_norm(tensor_view<T, 2> out, detail::const_view<T, 2> x, detail::const_view<T, 1> weight, float eps,
              cudaStream_t stream = nullptr) {
    rms_norm_vectorized<T>(out, x, weight, eps, stream);
}

template <class T>
void rms_norm(tensor_view<T, 2> out, detail::const_view<T, 2> x, float eps, cudaStream_t stream = nullptr) {
    rms_norm_vectorized<T>(out, x, {}, eps, stream);
}

// ---- residual_out = x + residual; out = norm(residual_out); all (rows, D) -------------

template <class T>
void residual_add_layer_norm_naive(tensor_view<T, 2> out, tensor_view<T, 2> residual_out, detail::const_view<T, 2> x,
                                   detail::const_view<T, 2> residual, detail::const_view<T, 1> weight,
                                   detail::const_view<T, 1> bias, float eps, cudaStream_t stream = nullptr) {
    detail::launch_norm<T, true, true>("residual_add_layer_norm_naive", false, out, residual_out, x, residual, weight,
                                       bias, eps, stream);
}

template <class T>
void residual_add_layer_norm_vectorized(tensor_view<T, 2> out, tensor_view<T, 2> residual_out,
                                        detail::const_view<T, 2> x, detail::const_view<T, 2> residual,
                                        detail::const_view<T, 1> weight, detail::const_view<T, 1> bias, float eps,
                                        cudaStream_t stream = nullptr) {
    detail::launch_norm<T, true, true>("residual_add_layer_norm_vectorized", true, out, residual_out, x, residual,
                                       weight, bias, eps, stream);
}

template <class T>
void residual_add_layer_norm(tensor_view<T, 2> out, tensor_view<T, 2> residual_out, detail::const_view<T, 2> x,
                             detail::const_view<T, 2> residual, detail::const_view<T, 1> weight,
                             detail::const_view<T, 1> bias, float eps, cudaStream_t stream = nullptr) {
    residual_add_layer_norm_vectorized<T>(out, residual_out, x, residual, weight, bias, eps, stream);
}

template <class T>
void residual_add_rms_norm_naive(tensor_view<T, 2> out, tensor_view<T, 2> residual_out, detail::const_view<T, 2> x,
                                 detail::const_view<T, 2> residual, detail::const_view<T, 1> weight, float eps,
                                 cudaStream_t stream = nullptr) {
    detail::launch_norm<T, false, true>("residual_add_rms_norm_naive", false, out, residual_out, x, residual, weight,
                                        {}, eps, stream);
}

template <class T>
void residual_add_rms_norm_vectorized(tensor_view<T, 2> out, tensor_view<T, 2> residual_out,
                                      detail::const_view<T, 2> x, detail::const_view<T, 2> residual,
                                      detail::const_view<T, 1> weight, float eps, cudaStream_t stream = nullptr) {
    detail::launch_norm<T, false, true>("residual_add_rms_norm_vectorized", true, out, residual_out, x, residual,
                                        weight, {}, eps, stream);
}

template <class T>
void residual_add_rms_norm(tensor_view<T, 2> out, tensor_view<T, 2> residual_out, detail::const_view<T, 2> x,
                           detail::const_view<T, 2> residual, detail::const_view<T, 1> weight, float eps,
                           cudaStream_t stream = nullptr) {
    residual_add_rms_norm_vectorized<T>(out, residual_out, x, residual, weight, eps, stream);
}

// ---- residual_out = x + (residual + residual_bias); out = norm(residual_out) -------------
// A projection's bias, deferred to the residual add that follows it: the projection runs
// without its bias (linear(delta, ..., {})) and the v2 kernel adds residual_bias (D) to
// each row of residual, rounded to T as linear's own bias kernel rounds it, before the
// add. The result is linear with its bias, then residual_add_*_norm, bit for bit, in one
// launch fewer. cuda::model's decode uses it for GPT-2's Wo and MLP proj.

namespace detail {
template <class T>
void residual_add_bias_layer_norm(tensor_view<T, 2> out, tensor_view<T, 2> residual_out, const_view<T, 2> x,
                                  const_view<T, 2> residual, const_view<T, 1> residual_bias, const_view<T, 1> weight,
                                  const_view<T, 1> bias, float eps, cudaStream_t stream = nullptr) {
    launch_norm<T, true, true>("residual_add_bias_layer_norm", true, out, residual_out, x, residual, weight, bias, eps,
                               stream, residual_bias);
}

template <class T>
void residual_add_bias_rms_norm(tensor_view<T, 2> out, tensor_view<T, 2> residual_out, const_view<T, 2> x,
                                const_view<T, 2> residual, const_view<T, 1> residual_bias, const_view<T, 1> weight,
                                float eps, cudaStream_t stream = nullptr) {
    launch_norm<T, false, true>("residual_add_bias_rms_norm", true, out, residual_out, x, residual, weight, {}, eps,
                                stream, residual_bias);
}
}  // namespace detail

// ---- v3: the residual add + norm in the epilogue of the projection before it -------------
//
// A decode step's layer ends each half the same way: a projection (Wo, or the
// MLP's down / proj), then x += its output (+ its bias), then h = norm(x) for
// what comes next. With at most 8 rows that projection is a GEMV (gemv.cuh),
// and this is its epilogue:
//
//     finish   the warp holding rows n, n + 1 of the projection adds their sums
//              to the residual stream: x[m, n] += round_T(sum) (+ bias[n])
//     tail     the last block to arrive (launch.cuh) normalizes every row of x
//              into out: v2's passes, by one block of 128 threads, over all rows
//              at once (each pass issues every row's loads before using any),
//              reading x from L2 (the other blocks wrote it)
//
// One launch instead of two, and the projection's output never goes through
// memory: a decode step's layer has 5 graph nodes instead of 7 (cuda::model,
// which takes v3 for quantized weights only, below).
// The price is the tail, run by one block: rows x D elements read from L2 three
// times (LayerNorm; twice for RMSNorm) and written once, 4 KB a row for
// Llama-3.2-1B in bf16. Normalizing the rows one after another would chain
// each row's L2 round trips and block sums behind the previous row's (about a
// microsecond a row); all rows at once, a pass costs about one row's latency
// whatever the rows: expected under the 2 to 3 µs a separate launch costs, at
// 1 row and at 8 (`tinyllm bench down_residual_rmsnorm_gemv` times both).
// Measured (H200, run D, Llama-3.2-1B's down projection in bf16): 36.9 µs at
// one row and 129.5 µs at eight, where cuBLAS and the separate residual add +
// RMSNorm took 21.8 and 20.8 µs: slower, so cuda::model's dense decode steps
// went back to the two kernels; quantized weights keep v3 until their own
// comparison is measured (docs/layers.md).
//
// Rounding, as the two steps it replaces: the projection's output is rounded
// to T (cuBLAS stores it), a bias is then added and the sum rounded to T (the
// deferred bias of residual_add_bias_*_norm); the quantized GEMV (quantize.cuh)
// rounds sum + bias once, as linear_quantized_gemv stores it. The stream x
// therefore holds the same values as the unfused steps up to the order of the
// projection's sum (bit for bit with the quantized GEMV); out differs from v2's
// only in the order of the norm's block sums (v2 picks its own thread count).

namespace detail {
template <class T, bool Layer>
struct residual_norm_epilogue {
    T* out;                  // (rows, D) norm(x)
    T* x;                    // (rows, D) the residual stream, updated in place
    const T* proj_bias;      // (D) or null
    const T* weight;         // (D) or null
    const T* bias;           // (D) or null; LayerNorm only
    index_t D;
    int rows;
    float eps;
    bool round_before_bias;  // round_T(round_T(sum) + bias) (dense) or round_T(sum + bias) (quantized)
    bool vectorized;         // the tail's 16-byte accesses (D a multiple of the vector, aligned rows)
    unsigned* arrivals;      // zero at launch; the tail's last block sets it back to zero

    using unit_state = neighbour_rows;  // rows n, n + 1 of the projection
    __device__ unit_state unit(index_t u) const { return neighbour_rows::of_unit(u, D); }
    index_t units() const { return neighbour_rows::units(D); }

    __device__ void add(int m, index_t n, float sum) const {
        float delta = rounded_to<T>(sum);
        if (proj_bias) delta = rounded_to<T>((round_before_bias ? delta : sum) + to_float(proj_bias[n]));
        // x read from L2: in the one-launch decode step (decode_dataflow.cuh) a block
        // on another SM may have written this row's neighbours during the launch, and
        // a line this SM's L1 kept from before would be stale.
        T* xn = x + m * D + n;
        float xv[1];
        load_row_floats<T, 1, row_reads::from_l2>(xv, xn);
        *xn = store_as<T>(xv[0] + delta);
    }
    __device__ void finish(const unit_state& s, int m, float s0, float s1) const {
        add(m, s.n0, s0);
        if (s.n1 != s.n0) add(m, s.n1, s1);
    }

    // v2's passes over all rows at once, by this one block: in each pass a thread
    // issues the same vector of every row before using any (loads in flight together,
    // not one row's round trips after another's), one block sum per pass serves all
    // rows, and the weight and bias are read once for all rows. Each row's arithmetic,
    // and its order, is v2's (norm_first_pass, norm_last_passes).
    template <int N>
    __device__ void normalize_rows() const {
        constexpr int R = pair_gemv_max_rows;
        __shared__ float partial[R][32];
        const index_t vectors = D / N;
        const float inv_d = 1.0f / static_cast<float>(D);
        // Pass 1: each row's sum (LayerNorm) or sum of squares (RMSNorm).
        float acc[R] = {}, mean[R] = {}, rstd[R];
        accumulate_rows<N>(acc, vectors, [](int, float a) { return Layer ? a : a * a; });
        rows_block_sum(acc, partial);
        if constexpr (Layer) {  // pass 2: the squared deviations from each row's mean
            float squares[R] = {};
#pragma unroll
            for (int m = 0; m < R; ++m) mean[m] = acc[m] * inv_d;
            accumulate_rows<N>(squares, vectors, [&](int m, float a) { return (a - mean[m]) * (a - mean[m]); });
            rows_block_sum(squares, partial);
#pragma unroll
            for (int m = 0; m < R; ++m) rstd[m] = rsqrtf(squares[m] * inv_d + eps);
        } else {
#pragma unroll
            for (int m = 0; m < R; ++m) rstd[m] = rsqrtf(acc[m] * inv_d + eps);
        }
        // Last pass: y = (x - mean) rstd w + b, the weight and bias read once for all rows.
        for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
            float w[N], b[N];
            load_affine<T, N, Layer>(w, b, weight, bias, v);
            float a[R][N];
            load_rows(a, v);
#pragma unroll
            for (int m = 0; m < R; ++m) {
                if (m < rows) {
                    float o[N];
#pragma unroll
                    for (int i = 0; i < N; ++i) o[i] = (a[m][i] - mean[m]) * rstd[m] * w[i] + b[i];
                    store_floats<T, N>(out + m * D + v * N, o);
                }
            }
        }
    }

    // acc[m] += term(m, x[m, j]) over this thread's elements j of every row m, in
    // v2's order: a pass of the tail.
    template <int N, class Term>
    __device__ void accumulate_rows(float (&acc)[pair_gemv_max_rows], index_t vectors, Term term) const {
        for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
            float a[pair_gemv_max_rows][N];
            load_rows(a, v);
#pragma unroll
            for (int m = 0; m < pair_gemv_max_rows; ++m)
                if (m < rows)
#pragma unroll
                    for (int i = 0; i < N; ++i) acc[m] += term(m, a[m][i]);
        }
    }

    // Vector v (elements v N .. v N + N - 1) of every row of x, from L2: all the
    // loads issued before any is used.
    template <int N>
    __device__ void load_rows(float (&a)[pair_gemv_max_rows][N], index_t v) const {
#pragma unroll
        for (int m = 0; m < pair_gemv_max_rows; ++m)
            if (m < rows) load_row_floats<T, N, row_reads::from_l2>(a[m], x + m * D + v * N);
    }

    // row_block_sum for the R rows at once, in place (every thread gets each row's
    // total): the same shuffles and the same order of the warps' partials per row,
    // one pair of barriers for all rows.
    __device__ static void rows_block_sum(float (&v)[pair_gemv_max_rows], float (*partial)[32]) {
        const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
        const int warps = static_cast<int>(blockDim.x) >> 5;
#pragma unroll
        for (int m = 0; m < pair_gemv_max_rows; ++m) v[m] = row_warp_sum(v[m]);
        __syncthreads();
        if (lane == 0)
#pragma unroll
            for (int m = 0; m < pair_gemv_max_rows; ++m) partial[m][warp] = v[m];
        __syncthreads();
#pragma unroll
        for (int m = 0; m < pair_gemv_max_rows; ++m) v[m] = row_warp_sum(lane < warps ? partial[m][lane] : 0.0f);
    }
    __device__ void tail() const {
        if (!last_block_to_arrive(arrivals, gridDim.x)) return;
        if (vectorized) normalize_rows<vector_width<T>>();
        else normalize_rows<1>();
        if (threadIdx.x == 0) atomicExch(arrivals, 0u);  // for the next launch (a counter is only touched atomically)
    }
};

// Host checks of v3 (dense and quantized): out, x (rows, D), in (rows, K), all
// contiguous; in apart from out and x (the GEMV reads it while they are
// written), out apart from x, both apart from weight, bias and proj_bias; a counter.
template <class T>
void expect_residual_norm_gemv(std::string_view op, tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                               index_t D, index_t K, const_view<T, 1> proj_bias, const_view<T, 1> weight,
                               const_view<T, 1> bias, float eps, const unsigned* arrivals) {
    tinyllm::detail::expect_norm_args(op, out, x, weight, bias, eps);
    TINYLLM_EXPECT(x.extent(0) <= pair_gemv_max_rows, op, ": ", x.extent(0), " rows; the GEMV takes at most ",
                   pair_gemv_max_rows, " (a decode step; more rows: the projection, then residual_add_*_norm)");
    TINYLLM_EXPECT(x.extent(1) == D && in.extent(0) == x.extent(0) && in.extent(1) == K, op, ": x ",
                   to_string(x.shape()), " and in ", to_string(in.shape()), " do not fit a projection of ", K,
                   " inputs to ", D, " outputs: x (rows, ", D, ") and in (rows, ", K, ") are required");
    expect_packed_rows(out, op, "out");
    expect_packed_rows(x, op, "x");
    expect_packed_rows(in, op, "in");
    expect_gemv_bias(proj_bias, D, op);
    TINYLLM_EXPECT(weight.size() <= 1 || weight.stride(0) == 1, op, ": weight must be contiguous");
    TINYLLM_EXPECT(bias.size() <= 1 || bias.stride(0) == 1, op, ": bias must be contiguous");
    TINYLLM_EXPECT(arrivals != nullptr, op, ": arrivals must be a zeroed device counter");
    const auto overlap = [](const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
        const auto pa = reinterpret_cast<std::uintptr_t>(a), pb = reinterpret_cast<std::uintptr_t>(b);
        return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
    };
    const std::size_t xb = static_cast<std::size_t>(x.size()) * sizeof(T);
    const std::size_t ib = static_cast<std::size_t>(in.size()) * sizeof(T);
    TINYLLM_EXPECT(!overlap(in.data(), ib, x.data(), xb) && !overlap(in.data(), ib, out.data(), xb), op,
                   ": in must not overlap x or out (the GEMV reads it while they are written)");
    TINYLLM_EXPECT(!overlap(out.data(), xb, x.data(), xb), op, ": out must not overlap x (the stream)");
    // x is written too (the stream, updated in place): neither output over a parameter.
    tinyllm::detail::expect_apart_from(op, "x", x, "weight", weight, "bias", bias, "proj_bias", proj_bias);
    tinyllm::detail::expect_apart(op, "out", out, "proj_bias", proj_bias);
}

template <class T, bool Layer>
residual_norm_epilogue<T, Layer> make_residual_norm_epilogue(tensor_view<T, 2> out, tensor_view<T, 2> x,
                                                             const_view<T, 1> proj_bias, const_view<T, 1> weight,
                                                             const_view<T, 1> bias, float eps, unsigned* arrivals,
                                                             bool round_before_bias) {
    const index_t D = x.extent(1);
    const auto ok = [](const void* p) { return p == nullptr || aligned_16(p); };
    const T* w = weight.size() ? weight.data() : nullptr;
    const T* b = Layer && bias.size() ? bias.data() : nullptr;
    const bool vectorized = D % vector_width<T> == 0 && ok(out.data()) && ok(x.data()) && ok(w) && ok(b);
    return {out.data(), x.data(), proj_bias.size() ? proj_bias.data() : nullptr, w, b, D,
            static_cast<int>(x.extent(0)), eps, round_before_bias, vectorized, arrivals};
}

template <class T, bool Layer>
void launch_residual_norm_gemv(std::string_view op, tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                               const_view<T, 2> proj, const_view<T, 1> proj_bias, const_view<T, 1> weight,
                               const_view<T, 1> bias, float eps, unsigned* arrivals, cudaStream_t stream) {
    const index_t D = proj.extent(0), K = proj.extent(1);
    expect_residual_norm_gemv<T>(op, out, x, in, D, K, proj_bias, weight, bias, eps, arrivals);
    expect_packed_rows(proj, op, "proj");
    tinyllm::detail::expect_apart(op, "out", out, "proj", proj);
    tinyllm::detail::expect_apart(op, "x", x, "proj", proj);
    const auto epi = make_residual_norm_epilogue<T, Layer>(out, x, proj_bias, weight, bias, eps, arrivals,
                                                           /*round_before_bias=*/true);
    launch_pair_gemv<T>(op, epi, in.data(), x.extent(0), proj.data(), proj.data(), K, epi.units(), stream);
}

// v3, dense: x (rows, D) += in (rows, K) proj^T (+ proj_bias); out = norm(x), in one
// launch, for rows <= 8 (a decode step). proj (D, K) contiguous; proj_bias (D) or
// empty; arrivals: one zeroed device counter per stream (left zero).
template <class T>
void residual_add_layer_norm_gemv(tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                                  const_view<T, 2> proj, const_view<T, 1> proj_bias, const_view<T, 1> weight,
                                  const_view<T, 1> bias, float eps, unsigned* arrivals,
                                  cudaStream_t stream = nullptr) {
    launch_residual_norm_gemv<T, true>("residual_add_layer_norm_gemv", out, x, in, proj, proj_bias, weight, bias, eps,
                                       arrivals, stream);
}

template <class T>
void residual_add_rms_norm_gemv(tensor_view<T, 2> out, tensor_view<T, 2> x, const_view<T, 2> in,
                                const_view<T, 2> proj, const_view<T, 1> proj_bias, const_view<T, 1> weight, float eps,
                                unsigned* arrivals, cudaStream_t stream = nullptr) {
    launch_residual_norm_gemv<T, false>("residual_add_rms_norm_gemv", out, x, in, proj, proj_bias, weight, {}, eps,
                                        arrivals, stream);
}
}  // namespace detail

// ---- Backward: (rows, D) ------------------------------------------------------------------

// The gradients of out = layer_norm(x, weight, bias, eps), given dout: dx (rows, D),
// overwritten; dweight, dbias (D), overwritten or (accumulate) added to, or empty (not
// computed). dx may be dout's or x's memory. v1 (block per row).
template <class T>
void layer_norm_backward(tensor_view<T, 2> dx, tensor_view<T, 1> dweight, tensor_view<T, 1> dbias,
                         detail::const_view<T, 2> dout, detail::const_view<T, 2> x, detail::const_view<T, 1> weight,
                         float eps, bool accumulate = false, cudaStream_t stream = nullptr) {
    detail::launch_norm_backward<T, true>("layer_norm_backward", dx, dweight, dbias, dout, {}, x, weight, eps,
                                          accumulate, stream);
}

// The gradients of out = rms_norm(x, weight, eps): dx (rows, D); dweight (D) or empty.
template <class T>
void rms_norm_backward(tensor_view<T, 2> dx, tensor_view<T, 1> dweight, detail::const_view<T, 2> dout,
                       detail::const_view<T, 2> x, detail::const_view<T, 1> weight, float eps,
                       bool accumulate = false, cudaStream_t stream = nullptr) {
    detail::launch_norm_backward<T, false>("rms_norm_backward", dx, dweight, {}, dout, {}, x, weight, eps, accumulate,
                                           stream);
}

// The backward of residual_out = x + residual; out = layer_norm(residual_out):
// dx = layer_norm_backward(dout) + dresidual_out (the gradient of x and of residual
// alike); dresidual_out may be empty (none), and dx may be its memory (the stream's
// gradient updated in place). residual_out: the forward's stored sum.
template <class T>
void residual_add_layer_norm_backward(tensor_view<T, 2> dx, tensor_view<T, 1> dweight, tensor_view<T, 1> dbias,
                                      detail::const_view<T, 2> dout, detail::const_view<T, 2> dresidual_out,
                                      detail::const_view<T, 2> residual_out, detail::const_view<T, 1> weight,
                                      float eps, bool accumulate = false, cudaStream_t stream = nullptr) {
    detail::launch_norm_backward<T, true>("residual_add_layer_norm_backward", dx, dweight, dbias, dout, dresidual_out,
                                          residual_out, weight, eps, accumulate, stream);
}

// The backward of residual_out = x + residual; out = rms_norm(residual_out).
template <class T>
void residual_add_rms_norm_backward(tensor_view<T, 2> dx, tensor_view<T, 1> dweight, detail::const_view<T, 2> dout,
                                    detail::const_view<T, 2> dresidual_out, detail::const_view<T, 2> residual_out,
                                    detail::const_view<T, 1> weight, float eps, bool accumulate = false,
                                    cudaStream_t stream = nullptr) {
    detail::launch_norm_backward<T, false>("residual_add_rms_norm_backward", dx, dweight, {}, dout, dresidual_out,
                                           residual_out, weight, eps, accumulate, stream);
}

// ---- Any number of leading dimensions: (..., D) -----------------------------------------
// Device views of any rank: out, x, residual_out and residual all (..., D) of one shape;
// weight, bias (D) or {} (none). v2, as the functions above.

template <class T = detail::deduced, tensor_like Out, tensor_like X, tensor_like W = detail::absent_vector<T, Out>,
          tensor_like B = detail::absent_vector<T, Out>>
void layer_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const W& weight /*(D)*/, const B& bias /*(D)*/,
                float eps, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, x, "layer_norm", "out", "x");
    layer_norm_vectorized<E>(as_rows<E>(out, "layer_norm: out"), as_rows<const E>(x, "layer_norm: x"),
                             as_vector<const E>(weight), as_vector<const E>(bias), eps, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like X>
void layer_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, float eps, cudaStream_t stream = nullptr) {
    layer_norm<detail::element_t<T, Out>>(out, x, {}, {}, eps, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like X, tensor_like W = detail::absent_vector<T, Out>>
void rms_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, const W& weight /*(D)*/, float eps,
              cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    expect_equal_shapes(out, x, "rms_norm", "out", "x");
    rms_norm_vectorized<E>(as_rows<E>(out, "rms_norm: out"), as_rows<const E>(x, "rms_norm: x"),
                           as_vector<const E>(weight), eps, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like X>
void rms_norm(Out&& out /*(..., D)*/, const X& x /*(..., D)*/, float eps, cudaStream_t stream = nullptr) {
    rms_norm<detail::element_t<T, Out>>(out, x, {}, eps, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like Sum, tensor_like X, tensor_like R,
          tensor_like W = detail::absent_vector<T, Out>, tensor_like B = detail::absent_vector<T, Out>>
void residual_add_layer_norm(Out&& out /*(..., D)*/, Sum&& residual_out /*(..., D)*/, const X& x /*(..., D)*/,
                             const R& residual /*(..., D)*/, const W& weight /*(D)*/, const B& bias /*(D)*/,
                             float eps, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    constexpr std::string_view op = "residual_add_layer_norm";
    expect_equal_shapes(out, x, op, "out", "x");
    expect_equal_shapes(residual_out, x, op, "residual_out", "x");
    expect_equal_shapes(residual, x, op, "residual", "x");
    residual_add_layer_norm_vectorized<E>(as_rows<E>(out, "residual_add_layer_norm: out"),
                                          as_rows<E>(residual_out, "residual_add_layer_norm: residual_out"),
                                          as_rows<const E>(x, "residual_add_layer_norm: x"),
                                          as_rows<const E>(residual, "residual_add_layer_norm: residual"),
                                          as_vector<const E>(weight), as_vector<const E>(bias), eps, stream);
}

template <class T = detail::deduced, tensor_like Out, tensor_like Sum, tensor_like X, tensor_like R,
          tensor_like W = detail::absent_vector<T, Out>>
void residual_add_rms_norm(Out&& out /*(..., D)*/, Sum&& residual_out /*(..., D)*/, const X& x /*(..., D)*/,
                           const R& residual /*(..., D)*/, const W& weight /*(D)*/, float eps,
                           cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    constexpr std::string_view op = "residual_add_rms_norm";
    expect_equal_shapes(out, x, op, "out", "x");
    expect_equal_shapes(residual_out, x, op, "residual_out", "x");
    expect_equal_shapes(residual, x, op, "residual", "x");
    residual_add_rms_norm_vectorized<E>(as_rows<E>(out, "residual_add_rms_norm: out"),
                                        as_rows<E>(residual_out, "residual_add_rms_norm: residual_out"),
                                        as_rows<const E>(x, "residual_add_rms_norm: x"),
                                        as_rows<const E>(residual, "residual_add_rms_norm: residual"),
                                        as_vector<const E>(weight), eps, stream);
}

// The backward functions on device views of any rank: dx, dout, x (residual_out) and
// dresidual_out (..., D) of one shape; dweight, dbias, weight (D) or {} (none).

namespace detail {
template <class E, class S, class X>
tensor_view<const E, 2> optional_rows_of(const S& s, const X& x, std::string_view op, std::string_view what) {
    if (as_view(s).size() == 0) return {};
    expect_equal_shapes(s, x, op, "dresidual_out", "residual_out");
    return as_rows<const E>(s, what);
}
}  // namespace detail

template <class T = detail::deduced, tensor_like DX, tensor_like DY, tensor_like X,
          tensor_like DW = tensor_view<detail::element_t<T, DX>, 1>,
          tensor_like DB = tensor_view<detail::element_t<T, DX>, 1>, tensor_like W = detail::absent_vector<T, DX>>
void layer_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, DB&& dbias /*(D)*/, const DY& dout /*(..., D)*/,
                         const X& x /*(..., D)*/, const W& weight /*(D)*/, float eps, bool accumulate = false,
                         cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DX>;
    constexpr std::string_view op = "layer_norm_backward";
    expect_equal_shapes(dx, x, op, "dx", "x");
    expect_equal_shapes(dout, x, op, "dout", "x");
    layer_norm_backward<E>(as_rows<E>(dx, "layer_norm_backward: dx"), as_vector<E>(dweight), as_vector<E>(dbias),
                           as_rows<const E>(dout, "layer_norm_backward: dout"),
                           as_rows<const E>(x, "layer_norm_backward: x"), as_vector<const E>(weight), eps, accumulate,
                           stream);
}

template <class T = detail::deduced, tensor_like DX, tensor_like DY, tensor_like X,
          tensor_like DW = tensor_view<detail::element_t<T, DX>, 1>, tensor_like W = detail::absent_vector<T, DX>>
void rms_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, const DY& dout /*(..., D)*/, const X& x /*(..., D)*/,
                       const W& weight /*(D)*/, float eps, bool accumulate = false, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DX>;
    constexpr std::string_view op = "rms_norm_backward";
    expect_equal_shapes(dx, x, op, "dx", "x");
    expect_equal_shapes(dout, x, op, "dout", "x");
    rms_norm_backward<E>(as_rows<E>(dx, "rms_norm_backward: dx"), as_vector<E>(dweight),
                         as_rows<const E>(dout, "rms_norm_backward: dout"), as_rows<const E>(x, "rms_norm_backward: x"),
                         as_vector<const E>(weight), eps, accumulate, stream);
}

template <class T = detail::deduced, tensor_like DX, tensor_like DY, tensor_like X,
          tensor_like S = tensor_view<const detail::element_t<T, DX>, 2>,
          tensor_like DW = tensor_view<detail::element_t<T, DX>, 1>,
          tensor_like DB = tensor_view<detail::element_t<T, DX>, 1>, tensor_like W = detail::absent_vector<T, DX>>
void residual_add_layer_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, DB&& dbias /*(D)*/,
                                      const DY& dout /*(..., D)*/, const S& dresidual_out /*(..., D) or empty*/,
                                      const X& residual_out /*(..., D)*/, const W& weight /*(D)*/, float eps,
                                      bool accumulate = false, cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DX>;
    constexpr std::string_view op = "residual_add_layer_norm_backward";
    expect_equal_shapes(dx, residual_out, op, "dx", "residual_out");
    expect_equal_shapes(dout, residual_out, op, "dout", "residual_out");
    residual_add_layer_norm_backward<E>(
        as_rows<E>(dx, "residual_add_layer_norm_backward: dx"), as_vector<E>(dweight), as_vector<E>(dbias),
        as_rows<const E>(dout, "residual_add_layer_norm_backward: dout"),
        detail::optional_rows_of<E>(dresidual_out, residual_out, op, "residual_add_layer_norm_backward: dresidual_out"),
        as_rows<const E>(residual_out, "residual_add_layer_norm_backward: residual_out"), as_vector<const E>(weight),
        eps, accumulate, stream);
}

template <class T = detail::deduced, tensor_like DX, tensor_like DY, tensor_like X,
          tensor_like S = tensor_view<const detail::element_t<T, DX>, 2>,
          tensor_like DW = tensor_view<detail::element_t<T, DX>, 1>, tensor_like W = detail::absent_vector<T, DX>>
void residual_add_rms_norm_backward(DX&& dx /*(..., D)*/, DW&& dweight /*(D)*/, const DY& dout /*(..., D)*/,
                                    const S& dresidual_out /*(..., D) or empty*/, const X& residual_out /*(..., D)*/,
                                    const W& weight /*(D)*/, float eps, bool accumulate = false,
                                    cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, DX>;
    constexpr std::string_view op = "residual_add_rms_norm_backward";
    expect_equal_shapes(dx, residual_out, op, "dx", "residual_out");
    expect_equal_shapes(dout, residual_out, op, "dout", "residual_out");
    residual_add_rms_norm_backward<E>(
        as_rows<E>(dx, "residual_add_rms_norm_backward: dx"), as_vector<E>(dweight),
        as_rows<const E>(dout, "residual_add_rms_norm_backward: dout"),
        detail::optional_rows_of<E>(dresidual_out, residual_out, op, "residual_add_rms_norm_backward: dresidual_out"),
        as_rows<const E>(residual_out, "residual_add_rms_norm_backward: residual_out"), as_vector<const E>(weight), eps,
        accumulate, stream);
}

}  // namespace tinyllm::cuda
