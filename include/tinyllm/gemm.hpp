// tinyllm/gemm.hpp — matrix multiplication on the CPU, fast: C = alpha op(A) op(B) + beta C
// in float, and the linear layer (forward and backward) on top of it.
//
// The references in ffn.hpp (cpu::linear, cpu::linear_backward) are the triple loop,
// accumulating in double. They are easy to check and slow — on the order of 1 GFLOP/s —
// for three reasons:
//
//   * Cache misses. For C = X W^T each output element walks a row of X and a row of W
//     from memory; the same rows are fetched again for the next element, long after
//     they left the cache. Memory delivers a few floats per nanosecond, the arithmetic
//     units want dozens.
//   * No SIMD. One double multiply-add at a time, where a core can do 4 or 8 float
//     multiply-adds per instruction (SSE, AVX2 with FMA), two instructions per cycle.
//   * One thread, where the machine has several cores.
//
// gemm_blocked below answers each (the structure of GotoBLAS and BLIS):
//
//   * Blocking. C is computed in blocks: a (KC x NC) panel of B and an (MC x KC) block
//     of A are chosen to fit the L3 and L2 caches, and every element loaded is used
//     MC or NC times before it leaves.
//   * Packing. Before use, each block is copied into a contiguous buffer in exactly
//     the order the inner loop reads it (slivers of MR rows of A, NR columns of B), so
//     the inner loop streams through memory with unit stride whatever op(A) and op(B)
//     are: a transposed or strided operand costs one copy, not a slower kernel.
//   * Register tiling. The innermost piece, the micro-kernel, keeps an MR x NR tile of
//     C in registers (6 x 16 floats = 12 AVX2 registers) and updates it with one
//     outer product per k: MR + NR loads for 2 MR NR flops. It is plain C++ on
//     GCC/Clang vector types, which the compiler turns into SIMD multiply-adds; on
//     x86-64 a second copy compiled for AVX2+FMA is chosen at run time when the CPU
//     has it (a build for the x86-64 baseline has only SSE2 otherwise).
//   * Threads. With OpenMP (-fopenmp; the CMake target adds it when found) C is split
//     into a grid of parts, one per thread, each packed and computed by its thread alone
//     (no barriers to wait at); without OpenMP, one thread. The results do not depend
//     on the thread count: each element of C is summed by one thread in the same order.
//   * Few rows. At most gemm_few_rows_max (8) rows (one token decoding) against a weight is a
//     matrix-vector product, bound by reading the weight once: dot products over the
//     weight where it lies, no packing.
//
// Weights in bfloat16 (linear_gemm with a tensor_view<const bfloat16, 2> weight): a bf16
// checkpoint stays bf16 in memory and the arithmetic stays float. Decoding one token
// reads every weight once for two flops per element, so its time is the weight's bytes
// over the memory bandwidth; 2 bytes an element instead of 4 halves them. The weight is
// widened to float exactly (bf16 is a float's high 16 bits: a 16-bit shift) where it is
// read: the few-rows dot products widen each weight row in registers, and the blocked
// kernel widens while it packs B (its panels are float either way, so the micro-kernel
// and the driver are the float ones). The result is the float product with the widened
// weight, float(bf16(w)), to the same accuracy. BLAS has no bf16 product we can rely on
// (OpenBLAS's sbgemm is not in every build), so this always runs tinyllm's own kernel.
//
// gemm_blas does the same product through an optimized BLAS (OpenBLAS's cblas_sgemm)
// when the build has one (TINYLLM_HAVE_BLAS, set by the CMake option TINYLLM_BLAS);
// cpu::gemm uses it when present and gemm_blocked otherwise.
//
// Layouts: op(A) and op(B) are views. A transposed operand is passed as a transposed
// view — a.transpose(0, 1), no copy — so the three products of a linear layer are
//
//     forward   out = x W^T     gemm(out, x, w.transpose(0, 1))
//     backward  dx  = dy W      gemm(dx, dy, w)
//               dW (+)= dy^T x  gemm(dw, dy.transpose(0, 1), x, 1, accumulate ? 1 : 0)
//
// gemm_blocked takes any strides (its packing reads through them). BLAS takes
// matrices with unit stride along one dimension; gemm_blas passes those as they are
// (a transposed view becomes CblasTrans with its leading dimension) and hands any
// other layout — negative or non-unit strides in both dimensions — to gemm_blocked.
//
// beta = 0 means C is not read (as in BLAS): NaN there does not propagate. C's elements
// must be distinct (no zero strides) and must not share memory with A or B (checked).
//
// Accuracy: float products, float sums over K (in blocks of KC, and in a different
// order than the double reference): the error grows like sqrt(K) float roundings
// of the terms' magnitude. tests/test_gemm.cpp measures it against the reference.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/threads.hpp>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

// The run-time choice of an AVX2+FMA micro-kernel: x86-64 with GCC or Clang (the
// target attribute and __builtin_cpu_supports); not in code compiled by nvcc.
// Defining TINYLLM_GEMM_NO_DISPATCH keeps the generic kernel everywhere (CI tests it so).
// (A program that calls cpu::gemm from .cu files as well as .cpp files links two
// versions of these inline functions; both are correct, and the linker keeps one.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(__NVCOMPILER) && \
    !defined(TINYLLM_GEMM_NO_DISPATCH)
#define TINYLLM_GEMM_X86_DISPATCH 1
#else
#define TINYLLM_GEMM_X86_DISPATCH 0
#endif

namespace tinyllm {

namespace detail {

// ---- checks ---------------------------------------------------------------------------

// C (M, N) = op(A) (M, K) op(B) (K, N), C not overlapping A or B.
inline void expect_gemm_args(std::string_view op, const tensor_view<float, 2>& c, const tensor_view<const float, 2>& a,
                             const tensor_view<const float, 2>& b) {
    TINYLLM_EXPECT(a.extent(1) == b.extent(0), op, ": a is ", to_string(a.shape()), " and b is ", to_string(b.shape()),
                   "; a's columns must equal b's rows (C (M, N) = a (M, K) b (K, N))");
    TINYLLM_EXPECT(c.extent(0) == a.extent(0) && c.extent(1) == b.extent(1), op, ": c has shape ",
                   to_string(c.shape()), " but (rows of a, columns of b) = (", a.extent(0), ", ", b.extent(1),
                   ") is required");
    TINYLLM_EXPECT(!overlaps(c, a) && !overlaps(c, b), op,
                   ": c must not share memory with a or b (the product reads them while c is written)");
    for (std::size_t d = 0; d < 2; ++d)
        TINYLLM_EXPECT(c.stride(d) != 0 || c.extent(d) <= 1, op, ": c has stride 0 in dimension ", d, " (shape ",
                       to_string(c.shape()), "); its elements must be distinct");
    expect_distinct_elements(op, "c", c);  // strides that overlap, e.g. (1, 1)
}

// C = beta C, beta = 0 writing zeros (C not read).
inline void gemm_scale(tensor_view<float, 2> c, float beta) {
    for (index_t i = 0; i < c.extent(0); ++i) {
        float* row = c.data() + i * c.stride(0);
        for (index_t j = 0; j < c.extent(1); ++j) {
            float& v = row[j * c.stride(1)];
            v = beta == 0.0f ? 0.0f : beta * v;
        }
    }
}

// ---- the blocked kernel ---------------------------------------------------------------

// Block sizes (floats). KC: the depth of a packed sliver; an MR x KC sliver of A and a
// KC x NR sliver of B (6 and 16 KiB) stay in L1 while the micro-kernel runs. MC: the
// rows of A packed at once (MC x KC = 96 KiB, in L2). NC: the columns of B packed at
// once (KC x NC = 2 MiB, in L3).
inline constexpr index_t gemm_kc = 256;
inline constexpr index_t gemm_mc = 96;
inline constexpr index_t gemm_nc = 2048;

// One thread's unit: an mc x nc block of C from packed A (mc rows in MR-slivers) and
// packed B (nc columns in NR-slivers), depth kc. C = alpha A B + beta C, with beta = 0
// not reading C.
struct gemm_block {
    index_t mc, nc, kc;
    const float* a_pack;  // ceil(mc / MR) slivers of MR x kc, k-major within a sliver
    const float* b_pack;  // ceil(nc / NR) slivers of kc x NR, k-major within a sliver
    float* c;             // C(0, 0) of the block
    index_t c_row_stride, c_col_stride;
    float alpha, beta;
};

// The MR x NR tile of A B for one sliver pair: tile (MR, NR) row-major.
template <index_t MR, index_t NR, index_t W>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void gemm_micro_kernel(index_t kc, const float* __restrict a, const float* __restrict b,
                              float* __restrict tile) {
    static_assert(NR % W == 0, "the tile's width must be a whole number of vectors");
#if defined(__GNUC__)
    // W floats in one SIMD register: GCC/Clang vector arithmetic, lane by lane.
    typedef float vec __attribute__((vector_size(W * sizeof(float))));
    constexpr index_t V = NR / W;
    vec acc[MR][V];
    const vec zero = {};
    for (index_t i = 0; i < MR; ++i)
        for (index_t v = 0; v < V; ++v) acc[i][v] = zero;
    for (index_t k = 0; k < kc; ++k) {
        vec bk[V];  // row k of the B sliver
        for (index_t v = 0; v < V; ++v) std::memcpy(&bk[v], b + k * NR + v * W, sizeof(vec));
        for (index_t i = 0; i < MR; ++i) {
            const float aik = a[k * MR + i];
            for (index_t v = 0; v < V; ++v) acc[i][v] += aik * bk[v];
        }
    }
    for (index_t i = 0; i < MR; ++i)
        for (index_t v = 0; v < V; ++v) std::memcpy(tile + i * NR + v * W, &acc[i][v], sizeof(vec));
#else
    // Any other compiler: the same loops on plain arrays.
    float acc[MR][NR] = {};
    for (index_t k = 0; k < kc; ++k)
        for (index_t i = 0; i < MR; ++i)
            for (index_t j = 0; j < NR; ++j) acc[i][j] += a[k * MR + i] * b[k * NR + j];
    for (index_t i = 0; i < MR; ++i)
        for (index_t j = 0; j < NR; ++j) tile[i * NR + j] = acc[i][j];
#endif
}

// One block: every MR x NR tile, then C = alpha tile + beta C for its valid part.
template <index_t MR, index_t NR, index_t W>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void gemm_block_body(const gemm_block& blk) {
    alignas(64) float tile[MR * NR];
    for (index_t jr = 0; jr < blk.nc; jr += NR) {
        const index_t nr = std::min(NR, blk.nc - jr);
        const float* b = blk.b_pack + (jr / NR) * NR * blk.kc;
        for (index_t ir = 0; ir < blk.mc; ir += MR) {
            const index_t mr = std::min(MR, blk.mc - ir);
            gemm_micro_kernel<MR, NR, W>(blk.kc, blk.a_pack + (ir / MR) * MR * blk.kc, b, tile);
            for (index_t i = 0; i < mr; ++i) {
                float* c = blk.c + (ir + i) * blk.c_row_stride + jr * blk.c_col_stride;
                const float* t = tile + i * NR;
                if (blk.c_col_stride == 1 && blk.beta == 0.0f) {
                    for (index_t j = 0; j < nr; ++j) c[j] = blk.alpha * t[j];
                } else if (blk.c_col_stride == 1) {
                    for (index_t j = 0; j < nr; ++j) c[j] = blk.alpha * t[j] + blk.beta * c[j];
                } else if (blk.beta == 0.0f) {
                    for (index_t j = 0; j < nr; ++j) c[j * blk.c_col_stride] = blk.alpha * t[j];
                } else {
                    for (index_t j = 0; j < nr; ++j)
                        c[j * blk.c_col_stride] = blk.alpha * t[j] + blk.beta * c[j * blk.c_col_stride];
                }
            }
        }
    }
}

// W consecutive bfloat16 widened to floats, exactly: each element's 16 bits become a
// float's high half (bf16_to_float). Inside a vector kernel the loop is a zero-extension
// and a shift of the whole vector (vpmovzxwd, vpslld with AVX2).
template <index_t W>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void gemm_widen_bf16(float* __restrict dst, const bfloat16* __restrict src) {
    std::uint32_t bits[W];
    for (index_t l = 0; l < W; ++l) bits[l] = static_cast<std::uint32_t>(src[l].bits) << 16;
    std::memcpy(dst, bits, sizeof bits);
}

// Packing. A sliver is P lanes (MR rows of A, or NR columns of B) by kc steps of k,
// stored k-major: dst[k * P + l] = src[l * lane_stride + k * k_stride], zero for the
// lanes past `lanes` (the edge of the matrix), so the micro-kernel never checks bounds.
// The two common layouts get their own loops: lanes contiguous along k (a row-major A,
// or the transposed view of a linear layer's weight as B) is a transpose, done 8 k at a
// time through a small buffer so that both the reads and the writes stay in cache
// lines; lanes next to each other (a row-major B) is a copy of each k's row.
// The source T is float, or bfloat16 (a bf16 weight as B), widened exactly on the way.
template <index_t P, class T>
inline void gemm_pack_sliver(float* __restrict dst, const T* src, index_t lanes, index_t kc, index_t lane_stride,
                             index_t k_stride) {
    if (lanes == P && k_stride == 1) {
        index_t k0 = 0;
        for (; k0 + 8 <= kc; k0 += 8) {
            float buf[P][8];
            for (index_t l = 0; l < P; ++l) {
                const T* lane = src + l * lane_stride + k0;
                if constexpr (std::is_same_v<T, float>) {
                    std::memcpy(buf[l], lane, sizeof buf[l]);
                } else {
                    gemm_widen_bf16<8>(buf[l], lane);
                }
            }
            for (index_t k = 0; k < 8; ++k)
                for (index_t l = 0; l < P; ++l) dst[(k0 + k) * P + l] = buf[l][k];
        }
        for (; k0 < kc; ++k0)
            for (index_t l = 0; l < P; ++l) dst[k0 * P + l] = to_float(src[l * lane_stride + k0]);
    } else if (lane_stride == 1) {
        for (index_t k = 0; k < kc; ++k) {
            const T* row = src + k * k_stride;
            for (index_t l = 0; l < P; ++l) dst[k * P + l] = l < lanes ? to_float(row[l]) : 0.0f;
        }
    } else {
        for (index_t k = 0; k < kc; ++k)
            for (index_t l = 0; l < P; ++l)
                dst[k * P + l] = l < lanes ? to_float(src[l * lane_stride + k * k_stride]) : 0.0f;
    }
}

// Rows [i0, i0 + mc) x columns [k0, k0 + kc) of A as ceil(mc / MR) slivers of MR rows.
template <index_t MR>
inline void gemm_pack_a(float* dst, const tensor_view<const float, 2>& a, index_t i0, index_t mc, index_t k0,
                        index_t kc) {
    for (index_t s = 0; s * MR < mc; ++s)
        gemm_pack_sliver<MR>(dst + s * MR * kc, a.data() + (i0 + s * MR) * a.stride(0) + k0 * a.stride(1),
                             std::min(MR, mc - s * MR), kc, a.stride(0), a.stride(1));
}

// Sliver s (columns [j0 + s NR, + NR), at most up to j0 + nc) of rows [k0, k0 + kc) of B,
// B of float or bfloat16.
template <index_t NR, class T>
inline void gemm_pack_b(float* dst, const tensor_view<const T, 2>& b, index_t k0, index_t kc, index_t j0, index_t nc,
                        index_t s) {
    gemm_pack_sliver<NR>(dst, b.data() + k0 * b.stride(0) + (j0 + s * NR) * b.stride(1), std::min(NR, nc - s * NR),
                         kc, b.stride(1), b.stride(0));
}

// Few rows (M <= gemm_few_rows_max = 8: one token decoding) against a weight (B's columns contiguous along
// k, a linear layer's W^T): packing B would copy the whole weight to use each element
// M times, and a 6-row tile would be mostly padding. Instead each output is a dot
// product of a row of A and a column of B, read where they lie: B streams from memory
// once, which bounds these shapes. Columns [j0, j1) of C. B's elements TB are float or
// bfloat16 (a bf16 weight: read as 2 bytes and widened in registers, so the bytes that
// bound the product are half).
template <class TB>
struct gemm_rows_args {
    index_t M, K, j0, j1;
    const float* a;  // row i at a + i * a_row_stride, contiguous along k
    const TB* b;     // column j at b + j * b_col_stride, contiguous along k
    float* c;
    index_t a_row_stride, b_col_stride, c_row_stride, c_col_stride;
    float alpha, beta;
};

// sums[r] = sum_k x_r[k] y[k] in float for R rows x_r = x + r * x_stride against one
// y of float or bfloat16: W-lane vectors, two chains per row. Each y vector is loaded
// (and, for bf16, widened) once for all R rows, so R rows cost fewer loads per
// multiply-add than R separate dot products (speculative decoding's verification
// and batched decoding feed a few rows at once). Every row's sum is computed in the
// same order whatever R is, so a row's result does not depend on its neighbours:
// R = 1 is the single dot product.
template <index_t W, index_t R, class TB>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void gemm_dots(float* sums, const float* __restrict x, index_t x_stride, const TB* __restrict y, index_t K) {
    index_t k = 0;
    for (index_t r = 0; r < R; ++r) sums[r] = 0.0f;
#if defined(__GNUC__)
    typedef float vec __attribute__((vector_size(W * sizeof(float))));
    vec acc0[R] = {}, acc1[R] = {};  // two chains of multiply-adds in flight per row
    for (; k + 2 * W <= K; k += 2 * W) {
        vec y0, y1;
        if constexpr (std::is_same_v<TB, float>) {
            std::memcpy(&y0, y + k, sizeof(vec));
            std::memcpy(&y1, y + k + W, sizeof(vec));
        } else {
            float wide[2 * W];
            gemm_widen_bf16<W>(wide, y + k);
            gemm_widen_bf16<W>(wide + W, y + k + W);
            std::memcpy(&y0, wide, sizeof(vec));
            std::memcpy(&y1, wide + W, sizeof(vec));
        }
        for (index_t r = 0; r < R; ++r) {
            vec x0, x1;
            std::memcpy(&x0, x + r * x_stride + k, sizeof(vec));
            std::memcpy(&x1, x + r * x_stride + k + W, sizeof(vec));
            acc0[r] += x0 * y0;
            acc1[r] += x1 * y1;
        }
    }
    for (index_t r = 0; r < R; ++r) {
        const vec acc = acc0[r] + acc1[r];
        float lanes[W];
        std::memcpy(lanes, &acc, sizeof lanes);
        for (index_t l = 0; l < W; ++l) sums[r] += lanes[l];
    }
#endif
    for (index_t r = 0; r < R; ++r)
        for (index_t kk = k; kk < K; ++kk) sums[r] += x[r * x_stride + kk] * to_float(y[kk]);
}

template <index_t W, class TB>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void gemm_rows_body(const gemm_rows_args<TB>& p) {
    constexpr index_t R = 4;  // rows sharing each load of the weight (2 R accumulators)
    float sums[R];
    for (index_t j = p.j0; j < p.j1; ++j) {
        const TB* column = p.b + j * p.b_col_stride;
        for (index_t i = 0; i < p.M; i += R) {
            const float* rows = p.a + i * p.a_row_stride;
            const index_t n = std::min(R, p.M - i);
            if (n == 4) gemm_dots<W, 4, TB>(sums, rows, p.a_row_stride, column, p.K);
            else if (n == 3) gemm_dots<W, 3, TB>(sums, rows, p.a_row_stride, column, p.K);
            else if (n == 2) gemm_dots<W, 2, TB>(sums, rows, p.a_row_stride, column, p.K);
            else gemm_dots<W, 1, TB>(sums, rows, p.a_row_stride, column, p.K);
            for (index_t r = 0; r < n; ++r) {
                float& c = p.c[(i + r) * p.c_row_stride + j * p.c_col_stride];
                const float v = p.alpha * sums[r];
                c = p.beta == 0.0f ? v : v + p.beta * c;
            }
        }
    }
}

// The micro-kernels with their packing: 6 x 8 on 4-float vectors (SSE2, NEON: 12
// accumulator registers of 16), and on x86-64 6 x 16 on 8-float vectors compiled for
// AVX2+FMA. Each is a block function, the packing functions and the few-rows dot
// products compiled together; B's packing and dot products come for a float B and for
// a bfloat16 one (a bf16 weight).
template <class TB>
using gemm_pack_b_fn = void (*)(float*, const tensor_view<const TB, 2>&, index_t, index_t, index_t, index_t, index_t);
template <class TB>
using gemm_rows_fn = void (*)(const gemm_rows_args<TB>&);

struct gemm_kernel {
    index_t mr, nr;
    void (*block)(const gemm_block&);
    void (*pack_a)(float*, const tensor_view<const float, 2>&, index_t, index_t, index_t, index_t);
    gemm_pack_b_fn<float> pack_b;
    gemm_rows_fn<float> rows;
    gemm_pack_b_fn<bfloat16> pack_b_bf16;
    gemm_rows_fn<bfloat16> rows_bf16;
    const char* name;

    // The packing and the dot products for B's element type TB.
    void pack_b_of(float* dst, const tensor_view<const float, 2>& b, index_t k0, index_t kc, index_t j0, index_t nc,
                   index_t s) const {
        pack_b(dst, b, k0, kc, j0, nc, s);
    }
    void pack_b_of(float* dst, const tensor_view<const bfloat16, 2>& b, index_t k0, index_t kc, index_t j0, index_t nc,
                   index_t s) const {
        pack_b_bf16(dst, b, k0, kc, j0, nc, s);
    }
    void rows_of(const gemm_rows_args<float>& p) const { rows(p); }
    void rows_of(const gemm_rows_args<bfloat16>& p) const { rows_bf16(p); }
};

inline void gemm_block_generic(const gemm_block& blk) { gemm_block_body<6, 8, 4>(blk); }
template <class TB>
inline void gemm_rows_generic(const gemm_rows_args<TB>& p) {
    gemm_rows_body<4, TB>(p);
}
inline void gemm_pack_a_generic(float* dst, const tensor_view<const float, 2>& a, index_t i0, index_t mc, index_t k0,
                                index_t kc) {
    gemm_pack_a<6>(dst, a, i0, mc, k0, kc);
}
template <class TB>
inline void gemm_pack_b_generic(float* dst, const tensor_view<const TB, 2>& b, index_t k0, index_t kc, index_t j0,
                                index_t nc, index_t s) {
    gemm_pack_b<8, TB>(dst, b, k0, kc, j0, nc, s);
}

#if TINYLLM_GEMM_X86_DISPATCH
__attribute__((target("avx2,fma"))) inline void gemm_block_avx2(const gemm_block& blk) {
    gemm_block_body<6, 16, 8>(blk);
}
template <class TB>
__attribute__((target("avx2,fma"))) inline void gemm_rows_avx2(const gemm_rows_args<TB>& p) {
    gemm_rows_body<8, TB>(p);
}
__attribute__((target("avx2,fma"))) inline void gemm_pack_a_avx2(float* dst, const tensor_view<const float, 2>& a,
                                                                 index_t i0, index_t mc, index_t k0, index_t kc) {
    gemm_pack_a<6>(dst, a, i0, mc, k0, kc);
}
template <class TB>
__attribute__((target("avx2,fma"))) inline void gemm_pack_b_avx2(float* dst, const tensor_view<const TB, 2>& b,
                                                                 index_t k0, index_t kc, index_t j0, index_t nc,
                                                                 index_t s) {
    gemm_pack_b<16, TB>(dst, b, k0, kc, j0, nc, s);
}
#endif

inline gemm_kernel gemm_pick_kernel() {
#if TINYLLM_GEMM_X86_DISPATCH
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2)
        return {6,
                16,
                gemm_block_avx2,
                gemm_pack_a_avx2,
                gemm_pack_b_avx2<float>,
                gemm_rows_avx2<float>,
                gemm_pack_b_avx2<bfloat16>,
                gemm_rows_avx2<bfloat16>,
                "6x16 AVX2+FMA"};
#endif
    return {6,
            8,
            gemm_block_generic,
            gemm_pack_a_generic,
            gemm_pack_b_generic<float>,
            gemm_rows_generic<float>,
            gemm_pack_b_generic<bfloat16>,
            gemm_rows_generic<bfloat16>,
            "6x8 generic"};
}

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// One thread's product, C = alpha A B + beta C, with its own packing buffers:
// b_pack holds KC x NC, a_pack MC x KC (rounded up to whole slivers). B of float or
// bfloat16 (widened as it is packed).
template <class TB>
void gemm_blocked_serial(tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const TB, 2> b,
                         float alpha, float beta, const gemm_kernel& kernel, float* a_pack, float* b_pack) {
    const index_t M = c.extent(0), N = c.extent(1), K = a.extent(1), NR = kernel.nr;
    for (index_t jc = 0; jc < N; jc += gemm_nc) {
        const index_t nc = std::min(gemm_nc, N - jc);
        for (index_t pc = 0; pc < K; pc += gemm_kc) {
            const index_t kc = std::min(gemm_kc, K - pc);
            for (index_t s = 0; s * NR < nc; ++s) kernel.pack_b_of(b_pack + s * NR * kc, b, pc, kc, jc, nc, s);
            for (index_t ic = 0; ic < M; ic += gemm_mc) {
                const index_t mc = std::min(gemm_mc, M - ic);
                kernel.pack_a(a_pack, a, ic, mc, pc, kc);
                // The first depth block applies beta; the later ones add to it.
                kernel.block({mc, nc, kc, a_pack, b_pack, c.data() + ic * c.stride(0) + jc * c.stride(1), c.stride(0),
                              c.stride(1), alpha, pc == 0 ? beta : 1.0f});
            }
        }
    }
}

// How `threads` threads split C: a grid of tm x tn parts, each thread computing one
// part on its own (no barriers, so no waiting for a thread the OS has set aside). A
// part packs its rows of A and its columns of B, so tm rows of parts pack B tm times
// and tn columns pack A tn times: of the grids that use the most threads, the one that
// packs the least (a few tokens and a wide weight: all columns; many rows: all rows).
struct gemm_grid {
    index_t tm = 1, tn = 1;
};

inline gemm_grid gemm_choose_grid(index_t M, index_t N, index_t threads, index_t MR, index_t NR) {
    gemm_grid best;
    double best_cost = -1;
    for (index_t tm = 1; tm <= threads; ++tm) {
        const index_t tn = std::min(threads / tm, ceil_div(N, NR));
        if (tm > ceil_div(M, MR) || tn < 1) continue;
        const double cost = static_cast<double>(tm) * static_cast<double>(N) + static_cast<double>(tn) * static_cast<double>(M);
        const bool more = tm * tn > best.tm * best.tn;
        if (best_cost < 0 || more || (tm * tn == best.tm * best.tn && cost < best_cost)) {
            best = {tm, tn};
            best_cost = cost;
        }
    }
    return best;
}

// The threads worth waking for an M x N x K product, at most `threads`: small products
// are not worth it (2 MFLOP per thread, ~50 us of the blocked kernel). 1 without OpenMP.
inline index_t gemm_team(index_t M, index_t N, index_t K, int threads) {
#if defined(_OPENMP)
    const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
    return std::clamp<index_t>(static_cast<index_t>(flops / 2e6), 1, std::max(1, threads));
#else
    (void)M, (void)N, (void)K, (void)threads;
    return 1;
#endif
}

// Thread t's block of an (M, N) product shared by nt threads on gemm_choose_grid's grid:
// rows [i0, i1) and columns [j0, j1), in whole slivers of MR rows and NR columns; empty
// (i0 == i1 or j0 == j1) when the grid leaves thread t without work.
struct gemm_range {
    index_t i0 = 0, i1 = 0, j0 = 0, j1 = 0;
    bool empty() const { return i0 >= i1 || j0 >= j1; }
};

inline gemm_range gemm_thread_block(index_t M, index_t N, index_t t, index_t nt, index_t MR, index_t NR) {
    const gemm_grid g = gemm_choose_grid(M, N, nt, MR, NR);
    const index_t ti = t / g.tn, tj = t % g.tn;
    if (ti >= g.tm) return {};
    const index_t rows = ceil_div(ceil_div(M, g.tm), MR) * MR, cols = ceil_div(ceil_div(N, g.tn), NR) * NR;
    gemm_range r;
    r.i0 = std::min(M, ti * rows);
    r.i1 = std::min(M, r.i0 + rows);
    r.j0 = std::min(N, tj * cols);
    r.j1 = std::min(N, r.j0 + cols);
    return r;
}

// body(t, r) on each thread t of a team of `team` OpenMP threads, r its block of an
// (M, N) product (gemm_thread_block: whole slivers of MR rows, NR columns), for the
// threads the block grid gives work. The grid is chosen for the threads the runtime
// actually started (which may be fewer than asked).
template <class Body>
void gemm_on_team(index_t M, index_t N, index_t team, index_t MR, index_t NR, const Body& body) {
    TINYLLM_OMP(parallel num_threads(static_cast<int>(team)))
    {
#if defined(_OPENMP)
        const index_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        (void)team;
        const index_t t = 0, nt = 1;
#endif
        const gemm_range r = gemm_thread_block(M, N, t, nt, MR, NR);
        if (!r.empty()) body(t, r);
    }
}

// Whether the product is a few rows against a weight (decoding a token, or verifying a
// few drafted ones: at most gemm_few_rows_max rows, A contiguous along k, B's columns
// contiguous along k), which the dot products compute reading B once where it lies.
// Up to 8 rows the dot products (4 rows per load of the weight) beat packing the
// weight for the blocked kernel: on a 2-core EPYC, a 4-layer d = 256 model's forward
// over 8 positions took 2.7 ms blocked, about 1 ms as dot products.
inline constexpr index_t gemm_few_rows_max = 8;
template <class TB>
bool gemm_few_rows(const tensor_view<const float, 2>& a, const tensor_view<const TB, 2>& b) {
    return a.extent(0) <= gemm_few_rows_max && (a.extent(1) == 1 || (a.stride(1) == 1 && b.stride(0) == 1));
}

// The blocked, packed, register-tiled product on up to `threads` threads (OpenMP);
// the arguments are checked by the caller. B's elements TB: float, or bfloat16 (a
// bf16 weight, widened to float where it is read).
template <class TB>
void gemm_blocked_unchecked(tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const TB, 2> b,
                            float alpha, float beta, int threads) {
    const index_t M = c.extent(0), N = c.extent(1), K = a.extent(1);
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0f) {
        gemm_scale(c, beta);
        return;
    }
    const gemm_kernel kernel = gemm_pick_kernel();
    const index_t MR = kernel.mr, NR = kernel.nr;
    const index_t team = gemm_team(M, N, K, threads);
    if (gemm_few_rows(a, b)) {
        // Few rows against a weight: dot products, the columns shared out among threads.
        // Reading the weight is the cost here, not the multiply-adds gemm_team counts:
        // a thread per 128 KB of weight (a 768 x 768 bf16 matrix, one decode step's
        // projection, 1.2 MB, gets 9 threads, or all there are, where its 1.2 MFLOP
        // would get one).
        const gemm_rows_args<TB> whole{M, K, 0, N, a.data(), b.data(), c.data(), a.stride(0), b.stride(1),
                                       c.stride(0), c.stride(1), alpha, beta};
        const double weight_bytes = static_cast<double>(N) * static_cast<double>(K) * sizeof(TB);
        const index_t chunks = std::min<index_t>(
            N, std::clamp<index_t>(static_cast<index_t>(weight_bytes / (1 << 17)), team, std::max(1, threads)));
        TINYLLM_OMP(parallel for num_threads(static_cast<int>(chunks)) schedule(static))
        for (index_t t = 0; t < chunks; ++t) {
            gemm_rows_args<TB> part = whole;
            part.j0 = N * t / chunks;
            part.j1 = N * (t + 1) / chunks;
            kernel.rows_of(part);
        }
        return;
    }
    const index_t a_size = ceil_div(std::min(gemm_mc, M), MR) * MR * std::min(gemm_kc, K);
    const index_t b_size = ceil_div(std::min(gemm_nc, N), NR) * NR * std::min(gemm_kc, K);
    // Packing buffers, uninitialized (every element used is written by the packing first).
    const std::unique_ptr<float[]> buffers(new float[static_cast<std::size_t>(team * (a_size + b_size))]);
    if (team == 1) {
        gemm_blocked_serial(c, a, b, alpha, beta, kernel, buffers.get(), buffers.get() + a_size);
        return;
    }
    gemm_on_team(M, N, team, MR, NR, [&](index_t t, const gemm_range& r) {
        float* mine = buffers.get() + t * (a_size + b_size);
        gemm_blocked_serial(c.narrow(0, r.i0, r.i1 - r.i0).narrow(1, r.j0, r.j1 - r.j0), a.narrow(0, r.i0, r.i1 - r.i0),
                            b.narrow(1, r.j0, r.j1 - r.j0), alpha, beta, kernel, mine, mine + a_size);
    });
}

}  // namespace detail

namespace cpu {

// C = alpha a b + beta c with tinyllm's own blocked kernel (above), on
// cpu::num_threads() threads with OpenMP. c: (M, N); a: (M, K); b: (K, N); any
// strides (a transposed operand is a transposed view). c must not overlap a or b.
inline void gemm_blocked(tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const float, 2> b,
                         float alpha = 1.0f, float beta = 0.0f) {
    tinyllm::detail::expect_gemm_args("gemm_blocked", c, a, b);
    tinyllm::detail::gemm_blocked_unchecked(c, a, b, alpha, beta, num_threads());
}

// The micro-kernel gemm_blocked runs on this CPU, e.g. "6x16 AVX2+FMA".
inline const char* gemm_blocked_kernel_name() { return tinyllm::detail::gemm_pick_kernel().name; }

// Whether this build has BLAS (TINYLLM_HAVE_BLAS): gemm_blas exists and gemm uses it.
inline constexpr bool have_blas =
#if defined(TINYLLM_HAVE_BLAS)
    true;
#else
    false;
#endif

#if defined(TINYLLM_HAVE_BLAS)
}  // namespace cpu

namespace detail {

// The two OpenBLAS entry points used, declared here instead of through <cblas.h>:
// OpenBLAS's headers put `typedef uint16_t bfloat16` (and BLASLONG, blasint, ...) in
// the global namespace, where a program's `using tinyllm::bfloat16;` or `using namespace
// tinyllm;` would silently or ambiguously meet an unsigned short. Each declaration binds
// its C symbol by name (a GNU asm label, so no C++ name leaks out either) with the C
// ABI's types: CBLAS's enums are ints (CblasRowMajor = 101, CblasNoTrans = 111,
// CblasTrans = 112, fixed by the CBLAS standard) and blasint is int in the 32-bit-index
// OpenBLAS that TINYLLM_BLAS finds (Debian's libopenblas-dev; the 64-bit-index build is
// a different package with suffixed symbols).
inline constexpr int cblas_row_major = 101;
inline constexpr int cblas_no_trans = 111;
inline constexpr int cblas_trans = 112;
void cblas_sgemm_symbol(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                        const float* b, int ldb, float beta, float* c, int ldc) __asm__("cblas_sgemm");
void openblas_set_num_threads_symbol(int threads) __asm__("openblas_set_num_threads");

// A matrix view as a BLAS operand in row-major terms: not transposed with leading
// dimension ld (unit stride along a row), or transposed (unit stride down a column:
// the view is the transpose of a row-major matrix). ok = false: BLAS cannot take it.
struct blas_operand {
    bool ok = false;
    int trans = cblas_no_trans;
    int ld = 1;
};

inline blas_operand blas_layout(index_t rows, index_t cols, index_t row_stride, index_t col_stride) {
    const auto fits = [](index_t v) { return v >= 0 && v <= INT_MAX; };
    if (!fits(rows) || !fits(cols)) return {};
    // A dimension of extent 1 may have any stride.
    if ((cols == 1 || col_stride == 1) && (rows == 1 || (row_stride >= std::max<index_t>(1, cols) && fits(row_stride))))
        return {true, cblas_no_trans, static_cast<int>(rows == 1 ? std::max<index_t>(1, cols) : row_stride)};
    if ((rows == 1 || row_stride == 1) && (cols == 1 || (col_stride >= std::max<index_t>(1, rows) && fits(col_stride))))
        return {true, cblas_trans, static_cast<int>(cols == 1 ? std::max<index_t>(1, rows) : col_stride)};
    return {};
}

// The thread count last passed to OpenBLAS (a global setting there; tinyllm sets 1).
inline std::atomic<int>& blas_threads_applied() {
    static std::atomic<int> n{-1};
    return n;
}

inline void gemm_blas_unchecked(tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const float, 2> b,
                                float alpha, float beta, int threads) {
    const index_t M = c.extent(0), N = c.extent(1), K = a.extent(1);
    if (M == 0 || N == 0) return;
    if (K == 0) {
        gemm_scale(c, beta);
        return;
    }
    // A few rows against a weight (decoding a token): the blocked kernel's dot products
    // read the weight once, where sgemm packs it first (a float GPT-2 decode step took
    // 86 ms through sgemm, 4 times the bf16 step that runs the dot products).
    if (gemm_few_rows(a, b)) {
        gemm_blocked_unchecked(c, a, b, alpha, beta, threads);
        return;
    }
    // Row-major C as it is; column-major C as C^T = op(B)^T op(A)^T, row-major.
    blas_operand lc = blas_layout(M, N, c.stride(0), c.stride(1));
    if (lc.ok && lc.trans == cblas_trans) {
        c = c.transpose(0, 1);
        std::swap(a, b);
        a = a.transpose(0, 1);
        b = b.transpose(0, 1);
        lc = blas_layout(c.extent(0), c.extent(1), c.stride(0), c.stride(1));
    }
    const blas_operand la = blas_layout(c.extent(0), K, a.stride(0), a.stride(1));
    const blas_operand lb = blas_layout(K, c.extent(1), b.stride(0), b.stride(1));
    if (!lc.ok || lc.trans != cblas_no_trans || !la.ok || !lb.ok || K > INT_MAX) {
        gemm_blocked_unchecked(c, a, b, alpha, beta, threads);  // a layout BLAS cannot take
        return;
    }
    // One pool of threads: OpenBLAS runs single-threaded and each of tinyllm's OpenMP
    // threads multiplies its own block of C (the grid gemm_blocked uses). With OpenBLAS's
    // own threads beside OpenMP's, the two pools spin-wait against each other for the
    // cores: in a training step alternating BLAS products with tiled attention, libgomp's
    // spinning took 28% of the time on 2 cores (perf).
    if (blas_threads_applied().exchange(1) != 1) openblas_set_num_threads_symbol(1);
    const index_t rows = c.extent(0), cols = c.extent(1);
    auto product = [&](index_t i0, index_t i1, index_t j0, index_t j1) {  // C[i0:i1, j0:j1]
        cblas_sgemm_symbol(cblas_row_major, la.trans, lb.trans, static_cast<int>(i1 - i0), static_cast<int>(j1 - j0),
                           static_cast<int>(K), alpha, a.data() + i0 * a.stride(0), la.ld,
                           b.data() + j0 * b.stride(1), lb.ld, beta, c.data() + i0 * c.stride(0) + j0 * c.stride(1),
                           lc.ld);
    };
    const index_t team = gemm_team(rows, cols, K, threads);
    if (team == 1) {
        product(0, rows, 0, cols);
        return;
    }
    constexpr index_t granule = 16;  // blocks of whole 16-row / 16-column slivers
    gemm_on_team(rows, cols, team, granule, granule,
                 [&](index_t, const gemm_range& r) { product(r.i0, r.i1, r.j0, r.j1); });
}

}  // namespace detail

namespace cpu {

// C = alpha a b + beta c through the BLAS's cblas_sgemm (OpenBLAS), with
// cpu::num_threads() threads. Shapes and overlap as gemm_blocked; operands that BLAS
// cannot take (no unit stride in either dimension, or sizes past int) go to
// gemm_blocked. Only in builds with TINYLLM_HAVE_BLAS.
inline void gemm_blas(tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const float, 2> b,
                      float alpha = 1.0f, float beta = 0.0f) {
    tinyllm::detail::expect_gemm_args("gemm_blas", c, a, b);
    tinyllm::detail::gemm_blas_unchecked(c, a, b, alpha, beta, num_threads());
}
#endif  // TINYLLM_HAVE_BLAS

// C = alpha a b + beta c: gemm_blas when the build has BLAS, else gemm_blocked.
// c: (M, N); a: (M, K); b: (K, N); any strides; a transposed operand is a transposed
// view (a.transpose(0, 1)). beta = 0 does not read c. c must not overlap a or b.
inline void gemm(tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const float, 2> b,
                 float alpha = 1.0f, float beta = 0.0f) {
    tinyllm::detail::expect_gemm_args("gemm", c, a, b);
#if defined(TINYLLM_HAVE_BLAS)
    tinyllm::detail::gemm_blas_unchecked(c, a, b, alpha, beta, num_threads());
#else
    tinyllm::detail::gemm_blocked_unchecked(c, a, b, alpha, beta, num_threads());
#endif
}

// ---- The linear layer through gemm ------------------------------------------------------
//
// linear_gemm and linear_backward_gemm compute what cpu::linear and
// cpu::linear_backward (ffn.hpp) compute, with the same arguments, checks and
// layouts (the weight and dweight any strides: GPT-2's Conv1D passes transposed
// views), in float through gemm: the fast rung beside the double reference.
// The bias is added by starting from it (C = bias, beta = 1); dbias is summed in double.

}  // namespace cpu

namespace detail {

// A linear layer's bias added by starting the product from it: out's rows set to
// the bias and beta = 1 returned, or beta = 0 without a bias (out not read).
inline float start_from_bias(tensor_view<float, 2> out, tensor_view<const float, 1> bias) {
    if (bias.size() == 0) return 0.0f;
    for (index_t i = 0; i < out.extent(0); ++i)
        for (index_t n = 0; n < out.extent(1); ++n)
            out.data()[i * out.stride(0) + n * out.stride(1)] = bias.data()[n * bias.stride(0)];
    return 1.0f;
}

}  // namespace detail

namespace cpu {

// out = x weight^T + bias. out: (rows, N); x: (rows, K); weight: (N, K), any strides;
// bias: (N) or empty. out must not overlap x or weight (checked before the bias is
// written into out).
inline void linear_gemm(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 2> weight,
                        tensor_view<const float, 1> bias) {
    tinyllm::detail::expect_linear_args("linear_gemm", out, x, weight, bias);
    if (out.size() == 0) return;
    const float beta = tinyllm::detail::start_from_bias(out, bias);
    gemm(out, x, weight.transpose(0, 1), 1.0f, beta);
}

// out = x weight^T + bias with the weight stored in bfloat16 and widened exactly to
// float as it is read (float(bf16) is the bf16's bits in a float's high half), the
// arithmetic in float. out: (rows, N); x: (rows, K); weight: (N, K) bfloat16, any
// strides (GPT-2's Conv1D weight as a transposed view); bias: (N) or empty. out must
// not overlap x or the weight.
//
// Why: a bf16 checkpoint kept in bf16 is half the bytes of its float copy, and
// decoding one token (rows = 1) reads every weight once for 2 flops per element, so
// its time is the weight's bytes over the memory bandwidth: the few-rows path reads
// 2 bytes per weight instead of 4 and widens in registers. Many rows (prefill) run the
// blocked kernel, which widens the weight while packing it (its panels are float).
// Always tinyllm's own kernel, with or without BLAS: OpenBLAS's bf16 product (sbgemm)
// is not in every build of it (not reliably in Debian's), and converting the weight for
// sgemm would cost a float copy of it per call, the bytes the bf16 weight saves.
inline void linear_gemm(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const bfloat16, 2> weight,
                        tensor_view<const float, 1> bias) {
    tinyllm::detail::expect_linear_args("linear_gemm", out, x, weight, bias);
    if (out.size() == 0) return;
    const float beta = tinyllm::detail::start_from_bias(out, bias);
    tinyllm::detail::gemm_blocked_unchecked(out, x, weight.transpose(0, 1), 1.0f, beta, num_threads());
}

// out = a b. out: (M, N); a: (M, K); b: (K, N). out must not overlap a or b.
inline void matmul_gemm(tensor_view<float, 2> out, tensor_view<const float, 2> a, tensor_view<const float, 2> b) {
    tinyllm::detail::expect_matmul_args("matmul_gemm", a, b);
    gemm(out, a, b);
}

// The gradients of linear_gemm, as cpu::linear_backward:
//     dx = dout weight          (rows, K), overwritten; empty: not computed
//     dweight (+)= dout^T x     (N, K), any strides; empty: not computed
//     dbias (+)= sum_rows dout  (N); empty: not computed
// `accumulate` adds to dweight and dbias. dx must not overlap dout; it may be x's
// memory (dweight is computed first).
inline void linear_backward_gemm(tensor_view<float, 2> dx, tensor_view<float, 2> dweight, tensor_view<float, 1> dbias,
                                 tensor_view<const float, 2> dout, tensor_view<const float, 2> x,
                                 tensor_view<const float, 2> weight, bool accumulate = false) {
    tinyllm::detail::expect_linear_backward_args("linear_backward_gemm", dx, dweight, dbias, dout, x, weight);
    const index_t rows = x.extent(0), N = weight.extent(0);
    if (dweight.size()) gemm(dweight, dout.transpose(0, 1), x, 1.0f, accumulate ? 1.0f : 0.0f);
    if (dbias.size()) {
        std::vector<double> sum(static_cast<std::size_t>(N), 0.0);
        for (index_t i = 0; i < rows; ++i) {
            const float* row = dout.data() + i * dout.stride(0);
            for (index_t n = 0; n < N; ++n) sum[static_cast<std::size_t>(n)] += row[n * dout.stride(1)];
        }
        for (index_t n = 0; n < N; ++n) {
            float& d = dbias.data()[n * dbias.stride(0)];
            d = static_cast<float>((accumulate ? d : 0.0) + sum[static_cast<std::size_t>(n)]);
        }
    }
    if (dx.size()) gemm(dx, dout, weight);
}

// The gradients of matmul_gemm, as cpu::matmul_backward: da = dout b^T (M, K) and
// db (+)= a^T dout (K, N); either may be empty. `accumulate` adds to db.
inline void matmul_backward_gemm(tensor_view<float, 2> da, tensor_view<float, 2> db, tensor_view<const float, 2> dout,
                                 tensor_view<const float, 2> a, tensor_view<const float, 2> b,
                                 bool accumulate = false) {
    tinyllm::detail::expect_matmul_args("matmul_backward_gemm", a, b);
    linear_backward_gemm(da, db.transpose(0, 1), {}, dout, a, b.transpose(0, 1), accumulate);
}

// ---- Any number of leading dimensions: (..., features), as in ffn.hpp ----------------------

// The weight of float or bfloat16 (the overload above for bf16 weights).
template <tensor_like Out, tensor_like X, tensor_like W, tensor_like B = tensor_view<const float, 1>>
void linear_gemm(Out&& out /*(..., N)*/, const X& x /*(..., K)*/, const W& weight /*(N, K)*/, const B& bias /*(N)*/) {
    tinyllm::detail::expect_same_leading(out, x, "linear_gemm", "out", "x");
    using weight_element = std::remove_const_t<typename view_of_t<const W&>::element_type>;
    using E = std::conditional_t<std::is_same_v<weight_element, bfloat16>, const bfloat16, const float>;
    linear_gemm(as_rows<float>(out, "linear_gemm: out"), as_rows<const float>(x, "linear_gemm: x"),
                tinyllm::detail::as_matrix<E>(weight), as_vector<const float>(bias));
}

template <tensor_like DX = tensor_view<float, 2>, tensor_like DW = tensor_view<float, 2>,
          tensor_like DB = tensor_view<float, 1>, tensor_like DY, tensor_like X, tensor_like W>
void linear_backward_gemm(DX&& dx /*(..., K) or empty*/, DW&& dweight /*(N, K) or empty*/,
                          DB&& dbias /*(N) or empty*/, const DY& dout /*(..., N)*/, const X& x /*(..., K)*/,
                          const W& weight /*(N, K)*/, bool accumulate = false) {
    tinyllm::detail::expect_same_leading(dout, x, "linear_backward_gemm", "dout", "x");
    tensor_view<float, 2> dx2;  // empty: not wanted
    if (as_view(dx).size() != 0) {
        expect_equal_shapes(dx, x, "linear_backward_gemm", "dx", "x");
        dx2 = as_rows<float>(dx, "linear_backward_gemm: dx");
    }
    linear_backward_gemm(dx2, tensor_view<float, 2>(as_view(dweight)), as_vector<float>(dbias),
                         as_rows<const float>(dout, "linear_backward_gemm: dout"),
                         as_rows<const float>(x, "linear_backward_gemm: x"),
                         tinyllm::detail::as_matrix<const float>(weight), accumulate);
}

}  // namespace cpu
}  // namespace tinyllm
