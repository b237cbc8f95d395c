// tinyllm/cuda/attention_mma.cuh — attention v4: FlashAttention-2 on tensor
// cores (bf16/fp16 inputs, float accumulation), mma.sync m16n8k16 + ldmatrix,
// cp.async double-buffered K/V tiles, padded shared memory.
//
// v3 -> v4   v3 does its two small matrix products (S = Q K^T and O += P V) on
//            CUDA cores in float32: one multiply-add per thread per cycle. An
//            H100's tensor cores do ~15x more bf16 multiply-adds per cycle, but
//            only as whole warp-wide matrix instructions. v4 reorganizes the
//            block around them:
//
//   * FlashAttention-2 partitioning. A block (128 threads = 4 warps) owns 64
//     query rows of one head; warp w owns rows 16w .. 16w+15 and all their
//     state (scores, running max and sum, output accumulator) in REGISTERS.
//     The warps share the K/V tiles but never each other's rows, so the
//     online softmax needs no shared memory and no __syncthreads.
//   * mma.sync.m16n8k16: one instruction multiplies a 16x16 bf16 tile of A by
//     a 16x8 tile of B into a 16x8 float tile C, the operands spread over the
//     32 lanes in a fixed pattern ("fragments"; PTX ISA, "Matrix Fragments for
//     mma.m16n8k16"). With g = lane / 4 and t = lane % 4:
//         A (16x16, row-major): a0 = A[g][2t, 2t+1]    a1 = A[g+8][2t, 2t+1]
//                               a2 = A[g][2t+8, 2t+9]  a3 = A[g+8][2t+8, 2t+9]
//         B (16x8, "col"):      b0 = B[2t, 2t+1][g]    b1 = B[2t+8, 2t+9][g]
//         C (16x8 float):       c0, c1 = C[g][2t, 2t+1]    c2, c3 = C[g+8][2t, 2t+1]
//     (each a/b register holds two 16-bit values, the lower index in the low half).
//     The scores S (16 x 64 per warp) are 8 C tiles; the C layout of two
//     neighbouring tiles is exactly the A layout of a 16x16 tile, so P feeds
//     the second product straight from registers (converted to bf16).
//   * ldmatrix.x4 loads four 8x8 16-bit matrices from shared memory into
//     fragment layout in one instruction (lanes 8m .. 8m+7 give the row
//     addresses of matrix m; each lane receives row lane/4, columns 2(lane%4),
//     +1 of each matrix). The .trans variant delivers the transpose, which turns
//     V (stored [key][d]) into the "col" B operand of P V without a transpose
//     in memory.
//   * cp.async (sm_80+) copies 16 bytes global -> shared without passing
//     through registers, asynchronously: the K/V tile t+1 is in flight while
//     tile t is computed (double buffering: two K and two V buffers).
//   * Padded shared memory: rows of D + 8 elements (144 or 272 bytes), so the
//     eight 16-byte row segments one ldmatrix reads fall in eight different
//     bank groups (a stride of 128 or 256 bytes would put them all in one and
//     serialize the access 8 ways).
//   * Causal/window masks: key tiles no row of the block can see are never
//     loaded (the loop runs over attention_tile_keys only); tiles every row
//     sees completely skip the per-element mask; only tiles on the diagonal
//     (attention_classify_tile == partial) test each element.
//
// Bytes moved: as v3 — Q and O once, K and V once per 64-row block, in 16-bit
// — but the block is 4x taller, so K/V are re-read 4x less often, and half as
// many bytes per element.
//
// Supported: T = bfloat16 or float16; head dims 64 and 128; every option of
// the CPU reference (causal, window, ALiBi, soft-cap, padding); strides that
// are multiples of 8 elements with 16-byte aligned pointers (any contiguous
// tensor). Needs sm_80 or newer. Anything else is rejected on the host.
// The lane/offset arithmetic lives in <tinyllm/detail/attention_mma_layout.hpp>,
// where the CPU tests check it by emulating ldmatrix and mma.
// Not done here (the Hopper rung, v5): wgmma with TMA loads and warp
// specialization (sm_90a), which is what cuDNN's and FlashAttention-3's
// kernels use on an H100.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/detail/attention_mma_layout.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int mma_threads = 128;  // 4 warps
inline constexpr int mma_bq = 64;        // query rows per block (16 per warp)
inline constexpr int mma_bk = 64;        // keys per tile

// Shared-memory row stride in elements: D + 8 (16 bytes of padding per row).
TINYLLM_HOST_DEVICE constexpr int mma_ld(int d) { return d + 8; }
// Bytes of shared memory: Q (64 rows) + 2 K tiles + 2 V tiles (64 rows each).
TINYLLM_HOST_DEVICE constexpr int mma_smem_bytes(int d) { return (mma_bq + 4 * mma_bk) * mma_ld(d) * 2; }

// The PTX instructions below run as inline assembly on a GPU; on the
// simulated GPU, the simulator executes each by the PTX ISA's rules
// (tinyllm/sim/ptx.hpp, fragment layouts in tinyllm/detail/mma_fragments.hpp).
#if !defined(TINYLLM_SIMULATED_GPU)
__device__ __forceinline__ unsigned smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// 16 bytes global -> shared, asynchronously; src_bytes = 0 writes 16 zero bytes.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::cp_async_cg_16(dst, src, src_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::cp_async_commit_group();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::cp_async_wait_group<N>();
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::ldmatrix(r, p, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::ldmatrix(r, p, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
#endif
}

// c += a * b for one m16n8k16 tile (16-bit inputs, float accumulators).
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::mma_m16n8k16(c, a, b0, b1, /*f16=*/!std::is_same_v<T, bfloat16>);
#else
    if constexpr (std::is_same_v<T, bfloat16>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
}

// Two floats -> two 16-bit values in one register, x in the low half.
template <class T>
__device__ __forceinline__ std::uint32_t pack2(float x, float y) {
    std::uint32_t bits;  // memcpy, not a pointer cast: the same bits without breaking aliasing rules
    if constexpr (std::is_same_v<T, bfloat16>) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
        std::memcpy(&bits, &v, sizeof bits);
    } else {
        const __half2 v = __floats2half2_rn(x, y);
        std::memcpy(&bits, &v, sizeof bits);
    }
    return bits;
}

// Block (query tile, h, b). T: bfloat16 or float16 (tinyllm's types; same bits as CUDA's).
template <class T, int D>
__global__ void __launch_bounds__(mma_threads) attention_mma_kernel(attention_args<T> a) {
#if TINYLLM_CUDA_ARCH >= 800
    constexpr int LD = mma_ld(D);
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    unsigned char* smem_raw = dynamic_shared<unsigned char>();
    T* qs = reinterpret_cast<T*>(smem_raw);  // [64][LD]
    T* ks = qs + mma_bq * LD;                // [2][64][LD]
    T* vs = ks + 2 * mma_bk * LD;            // [2][64][LD]

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4;  // accumulator rows g and g + 8 (tinyllm::detail::mma_c_row)
    // Heavier (later, under causal) query tiles first: they finish last otherwise.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * mma_bq;
    const int h = blockIdx.y, hkv = h / a.group, b = blockIdx.z;
    const index_t length = a.length(b);

    // Copy `rows` rows of D elements (row r at src + r * row_stride) into a
    // [64][LD] tile; rows at or past `valid` are zero-filled. Thread tid moves
    // chunks tid, tid + 128, ...; chunk c is row c / CHUNKS, elements
    // 8 * (c % CHUNKS) .. +7, so consecutive threads read consecutive 16 bytes.
    auto load_tile = [&](T* dst, const T* src, index_t row_stride, int valid) {
        for (int c = tid; c < 64 * CHUNKS; c += mma_threads) {
            const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
            const bool in = r < valid;
            cp_async_16(dst + r * LD + col, in ? src + r * row_stride + col : src, in ? 16 : 0);
        }
    };

    // ---- Q: load once, keep as A fragments in registers ----
    load_tile(qs, a.q_row(b, q0, h), a.q_st, a.Tq - q0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // qf[kk] is the A fragment of rows 16w..16w+15, features 16kk..16kk+15.
    // ldmatrix.x4 matrices: 0 = rows 0-7/cols 0-7 (a0), 1 = rows 8-15/cols 0-7 (a1),
    // 2 = rows 0-7/cols 8-15 (a2), 3 = rows 8-15/cols 8-15 (a3); lane l gives the
    // address of row l % 16, column 8 * (l / 16) of the 16x16 tile.
    std::uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], qs + warp * 16 * LD + tinyllm::detail::mma_q_offset(lane, LD, kk));

    // The two query rows this thread holds scores and outputs for.
    const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;
    const key_range keys0 = attention_visible_keys(a.mask, row0, length);
    const key_range keys1 = attention_visible_keys(a.mask, row1, length);
    const index_t pos0 = a.mask.query_position(row0), pos1 = a.mask.query_position(row1);

    float o[D / 8][4];  // O rows (g, g+8) x features (8n + 2t, +1): D/8 C tiles
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running max of rows g, g+8 (same in the 4 lanes of a quad)
    float l0 = 0.0f, l1 = 0.0f;            // running sum: this lane's columns only, summed over the quad at the end

    // The key tiles any row of this block may see; the others are never loaded.
    const key_range range = attention_tile_keys(a.mask, q0, mma_bq, length);
    const int t_begin = static_cast<int>(range.begin / mma_bk);
    const int t_end = static_cast<int>(ceil_div<index_t>(range.end, mma_bk));
    // Keys past the row's length are zero-filled, never read: padding past
    // key_lengths may hold anything (NaN in an uninitialised cache), and the
    // masked P = 0 times a NaN V would still be NaN.
    auto load_kv = [&](int tile, int buf) {
        const int k0 = tile * mma_bk;
        const int valid = static_cast<int>(length - k0);
        load_tile(ks + buf * mma_bk * LD, a.k_row(b, k0, hkv), a.k_st, valid);
        load_tile(vs + buf * mma_bk * LD, a.v_row(b, k0, hkv), a.v_st, valid);
    };
    if (t_begin < t_end) load_kv(t_begin, 0);
    cp_async_commit();

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int buf = (tile - t_begin) & 1;
        // Start copying the next tile into the other buffer, then wait for this one
        // (wait_group 1: everything but the newest group has landed).
        if (tile + 1 < t_end) load_kv(tile + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T* kt = ks + buf * mma_bk * LD;
        const T* vt = vs + buf * mma_bk * LD;
        const int k0 = tile * mma_bk;

        // ---- S = Q K^T: 16 rows x 64 keys per warp = 8 C tiles ----
        float s[mma_bk / 8][4];
#pragma unroll
        for (int n = 0; n < mma_bk / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < mma_bk / 16; ++np) {
                // B = K^T, stored as K [key][d] = B "col": no transpose needed.
                // Matrices: 0 = keys 16np+0-7 / d 16kk+0-7 (b0 of tile 2np),
                // 1 = same keys / d +8 (b1 of tile 2np), 2 and 3 = keys +8 (tile 2np+1).
                // Lane l addresses key 16np + 8 * (m / 2) + l % 8, feature 16kk + 8 * (m % 2), m = l / 8.
                std::uint32_t kf[4];
                ldmatrix_x4(kf, kt + tinyllm::detail::mma_k_offset(lane, LD, np, kk));
                mma_16816<T>(s[2 * np], qf[kk], kf[0], kf[1]);
                mma_16816<T>(s[2 * np + 1], qf[kk], kf[2], kf[3]);
            }
        }

        // ---- scale, soft-cap, ALiBi; mask only where the tile is partial ----
        // Element e of C tile n: row g (e < 2) or g + 8, key k0 + 8n + 2t + (e & 1).
        const bool partial =
            attention_classify_tile(a.mask, q0, mma_bq, k0, mma_bk, length) != attention_tile::full;
#pragma unroll
        for (int n = 0; n < mma_bk / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const index_t j = k0 + 8 * n + tinyllm::detail::mma_c_col(lane, e);
                const bool upper = e < 2;
                float x = a.logit(s[n][e], h, upper ? pos0 : pos1, j);
                if (partial && !(upper ? keys0 : keys1).contains(j)) x = -INFINITY;
                s[n][e] = x;
            }

        // ---- online softmax for rows g and g+8 ----
        // The 4 lanes of a quad (same g) hold the 64 columns of a row between them:
        // reduce with shuffles over lane bits 0 and 1.
        float tmax0 = -INFINITY, tmax1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < mma_bk / 8; ++n) {
            tmax0 = fmaxf(tmax0, fmaxf(s[n][0], s[n][1]));
            tmax1 = fmaxf(tmax1, fmaxf(s[n][2], s[n][3]));
        }
#pragma unroll
        for (int offset = 1; offset <= 2; offset *= 2) {
            tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, offset));
            tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, offset));
        }
        const float new0 = fmaxf(m0, tmax0), new1 = fmaxf(m1, tmax1);
        const float alpha0 = exp_shifted(m0, new0), alpha1 = exp_shifted(m1, new1);
        m0 = new0;
        m1 = new1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int n = 0; n < mma_bk / 8; ++n) {
            s[n][0] = exp_shifted(s[n][0], m0);
            s[n][1] = exp_shifted(s[n][1], m0);
            s[n][2] = exp_shifted(s[n][2], m1);
            s[n][3] = exp_shifted(s[n][3], m1);
            sum0 += s[n][0] + s[n][1];
            sum1 += s[n][2] + s[n][3];
        }
        l0 = alpha0 * l0 + sum0;
        l1 = alpha1 * l1 + sum1;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= alpha0;
            o[n][1] *= alpha0;
            o[n][2] *= alpha1;
            o[n][3] *= alpha1;
        }

        // ---- O += P V ----
#pragma unroll
        for (int kk = 0; kk < mma_bk / 16; ++kk) {
            // A = P, keys 16kk .. 16kk+15: C tiles 2kk (keys +0..7) and 2kk+1 (keys +8..15)
            // are a0/a1 and a2/a3 of the A layout.
            const std::uint32_t pf[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                         pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                         pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                // B = V (k = key, n = feature), stored [key][d]: ldmatrix.trans.
                // Matrices: 0 = keys 16kk+0-7 / d 16dp+0-7 (b0 of tile 2dp), 1 = keys +8 (b1),
                // 2, 3 = the same for d +8 (tile 2dp+1). Lane l addresses key
                // 16kk + 8 * (m % 2) + l % 8, feature 16dp + 8 * (m / 2), m = l / 8.
                std::uint32_t vf[4];
                ldmatrix_x4_trans(vf, vt + tinyllm::detail::mma_v_offset(lane, LD, kk, dp));
                mma_16816<T>(o[2 * dp], pf, vf[0], vf[1]);
                mma_16816<T>(o[2 * dp + 1], pf, vf[2], vf[3]);
            }
        }
        __syncthreads();  // all warps are done with this buffer before it is refilled
    }
    cp_async_wait<0>();

    // ---- O / l, written as pairs of 16-bit values ----
#pragma unroll
    for (int offset = 1; offset <= 2; offset *= 2) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, offset);
        l1 += __shfl_xor_sync(0xffffffffu, l1, offset);
    }
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = 8 * n + tinyllm::detail::mma_c_col(lane, 0);
        if (row0 < a.Tq)
            *reinterpret_cast<std::uint32_t*>(a.o_row(b, row0, h) + d) = pack2<T>(o[n][0] * inv0, o[n][1] * inv0);
        if (row1 < a.Tq)
            *reinterpret_cast<std::uint32_t*>(a.o_row(b, row1, h) + d) = pack2<T>(o[n][2] * inv1, o[n][3] * inv1);
    }
#else
    (void)a;
    __trap();  // the launcher refuses GPUs older than sm_80
#endif
}

// The launch conditions the tensor-core rungs (v4 attention_mma, v5
// attention_flash2) share, checked on the host: head dim 64 or 128; q, k, v and
// out 16-byte aligned with every batch/time/head stride a multiple of 8 elements
// (cp.async and the output stores move 16 bytes); a GPU of compute capability
// 8.0 or newer (mma.sync on bf16/fp16, cp.async).
template <class Args>
void expect_mma_args(const Args& a, const char* name, const char* rung) {
    TINYLLM_EXPECT(a.D == 64 || a.D == 128, "attention ", rung, " (", name, ") supports head dims 64 and 128, got ", a.D);
    const void* const pointers[] = {a.q, a.k, a.v, a.o};
    for (const void* p : pointers)
        TINYLLM_EXPECT(reinterpret_cast<std::uintptr_t>(p) % 16 == 0, name,
                       " needs 16-byte aligned q, k, v and out (cp.async and the output stores move 16 bytes)");
    const index_t strides[] = {a.q_sb, a.q_st, a.q_sh, a.k_sb, a.k_st, a.k_sh, a.v_sb, a.v_st, a.v_sh, a.o_sb, a.o_st, a.o_sh};
    for (index_t s : strides)
        TINYLLM_EXPECT(s % 8 == 0, name, " needs every batch/time/head stride to be a multiple of 8 elements; got ", s);
    int device = 0, major = 0;
    TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    TINYLLM_EXPECT(major >= 8, name, " needs a GPU of compute capability 8.0 or newer (mma.sync bf16, cp.async); "
                   "this one is ", major, ".x");
}

}  // namespace detail

// v4: out = attention(q, k, v) on tensor cores. T: tinyllm::bfloat16 or
// tinyllm::float16; head dims 64 and 128; sm_80+. See the top of this file.
template <class T>
void attention_mma(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                   std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                   const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>,
                  "attention_mma (v4) takes tinyllm::bfloat16 or tinyllm::float16 tensors");
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_mma");
    detail::expect_mma_args(a, "attention_mma", "v4");
    if (out.size() == 0) return;
    const std::size_t bytes = static_cast<std::size_t>(detail::mma_smem_bytes(a.D));
    const dim3 grid = detail::checked_grid(ceil_div<index_t>(a.Tq, detail::mma_bq), a.Hq, a.B, "attention_mma",
                                           "the query tiles (Tq / 64, Hq, B)");
    if (a.D == 64) {
        auto kernel = detail::attention_mma_kernel<T, 64>;
        detail::set_shared_memory(kernel, bytes, "attention_mma");
        launch(kernel, grid, detail::mma_threads, bytes, stream, a);
    } else {
        auto kernel = detail::attention_mma_kernel<T, 128>;
        detail::set_shared_memory(kernel, bytes, "attention_mma");
        launch(kernel, grid, detail::mma_threads, bytes, stream, a);
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
