// tinyllm/cuda/attention_backward_mma.cuh — attention backward v3: FlashAttention-2's
// backward on tensor cores (bf16/fp16 inputs, mma.sync m16n8k16 with float
// accumulation), the third rung beside v1 naive and v2 flash (attention_backward.cuh).
//
// What it computes: dQ, dK and dV of attention(q, k, v) for dO = dL/dO, from
// the forward's output O and saved log-sum-exp (the math of
// cpu::attention_backward; derived in docs/training.md). Per batch row and
// query head, with every product tile by tile and nothing of size T^2 stored:
//
//     D  = rowsum(dO o O)                  (Tq)      the delta kernel of v2
//     S  = Q K^T * scale (+ soft-cap, ALiBi, masks: the forward's logit)
//     P  = exp(S - LSE)                    recomputed from the saved lse, no max or sum
//     dV = P^T dO                          (Tk, D)
//     dP = dO V^T
//     dS = P o (dP - D) o dlogit/ddot      dlogit/ddot: scale, times the soft-cap's 1 - tanh^2
//     dQ = dS K,   dK = dS^T Q             (scale is inside dS)
//
// and for GQA/MQA a K/V head's dK and dV are summed over its group of query heads.
//
// v2 -> v3   The backward does 2.5x (here 3.5x) the forward's arithmetic, so in
//            training it is most of attention's time. v2 recomputes P and dS
//            with one float dot product per lane (CUDA cores): 7 matrix
//            products per tile pair at one multiply-add per thread per cycle.
//            An H100's tensor cores do ~15x more bf16 multiply-adds per cycle,
//            but only as warp-wide matrix instructions; v3 does every product
//            as mma.sync on 16-bit tiles, as the forward's v4 (attention_mma.cuh,
//            whose fragment helpers, ldmatrix and cp.async wrappers it reuses):
//
//   * dK, dV: block (64 keys, K/V head, b), 4 warps; warp w owns keys
//     16w .. 16w+15 and their dK and dV accumulators (16 x D each, float) in
//     registers. The block walks every 64-row query tile that sees its keys, for
//     every query head of the group, in a fixed order (query tile, then head),
//     with the next tile's Q and dO in flight by cp.async (double buffering).
//     Per tile pair, each warp computes the TRANSPOSED tiles directly:
//         S^T  = K Q^T     A = K rows (ldmatrix),  B = Q  [query][d]: "col" layout, ldmatrix
//         dP^T = V dO^T    A = V rows,             B = dO [query][d]: ldmatrix
//         dV  += P^T dO    A = P^T from the C registers, B = dO: ldmatrix.trans
//         dK  += dS^T Q    A = dS^T from the C registers, B = Q: ldmatrix.trans
//     (two neighbouring 16x8 C tiles are the A fragment of a 16x16 tile, as P
//     in the forward). Each block owns its keys, so GQA's sum needs no atomics.
//   * dQ: block (64 query rows, head, b), warp w owns rows 16w .. 16w+15 and
//     their dQ accumulator; it walks the key tiles the rows see (the forward's
//     loop, K/V double-buffered by cp.async):
//         S  = Q K^T       A = Q rows,  B = K [key][d]: ldmatrix
//         dP = dO V^T      A = dO rows, B = V: ldmatrix
//         dQ += dS K       A = dS from the C registers, B = K: ldmatrix.trans
//     FlashAttention-2 adds dQ from the dK/dV blocks with float atomics, whose
//     order changes from run to run; this pass recomputes S and dP instead
//     (7 products per tile pair instead of 5) and every sum has a fixed order:
//     the gradients are the same bits on every run, as v2's.
//   * The operands stay in shared memory (rows padded to D + 8 elements, so
//     ldmatrix is conflict-free) and are re-read with ldmatrix at each use; the
//     registers go to the float accumulators (2 x 16 x D per warp for dK/dV).
//     ptxas (CUDA 13, sm_90): dK/dV 225 registers at D = 64, 255 with 52 bytes
//     of spill at D = 128; dQ 168 and 240, no spill: two blocks per SM. Shared
//     memory: 55 KiB (D = 64) or 103 KiB (D = 128) per block.
//   * P and dS enter their products rounded to the element type (FlashAttention-2
//     does the same); every sum is in float.
//   * Masks: query (or key) tiles nobody sees are never loaded; tiles every
//     row sees completely skip the per-element mask; only partial tiles test
//     each element (attention_classify_tile). Padding keys are zero-filled, never
//     read. Query rows past Tq get lse = +inf, so their P is exactly 0.
//
// Supported: T = bfloat16 or float16 (the gradients in T too, each rounded once
// from the float accumulators); head dims 64 and 128; every option of the
// forward (causal, window, ALiBi, soft-cap, scale, padding by key_lengths,
// GQA/MQA); q, k, v, dout, dq, dk, dv 16-byte aligned with every batch/time/head
// stride a multiple of 8 elements (any contiguous tensor; out and lse are free);
// sm_80 or newer. Anything else throws a tinyllm::error on the host before any
// launch, naming what is unsupported; nothing is dispatched silently: for float
// tensors or other head dims (1..256) call attention_backward_flash (v2), which
// takes the same arguments. Float tensors are a compile-time error here.
#pragma once

#include <tinyllm/cuda/attention_backward.cuh>  // attention_backward_args, v2's delta kernel
#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_mma.cuh>  // mma_16816, ldmatrix_x4(_trans), cp_async_*, pack2, mma_ld
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/detail/attention_mma_layout.hpp>

#include <cstdint>
#include <string_view>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int mma_backward_threads = 128;  // 4 warps
inline constexpr int mma_backward_tile = 64;      // rows of every tile: 16 per warp, and the other side's tiles

// Shared memory of either kernel: six [64][D + 8] 16-bit tiles (dK/dV: K, V and
// two buffers each of Q and dO; dQ: Q, dO and two buffers each of K and V),
// then, for dK/dV, lse and delta of the two query tiles in flight (float).
TINYLLM_HOST_DEVICE constexpr int mma_backward_smem_bytes(int d) {
    return 6 * mma_backward_tile * mma_ld(d) * 2 + 4 * mma_backward_tile * 4;
}

// A [64][D + 8] tile from `src` (row r at src + r * row_stride) by cp.async: rows
// at or past `valid` are zero-filled, never read. Thread tid moves 16-byte
// chunks tid, tid + 128, ... (chunk c: row c / (D/8), elements 8 (c % (D/8)) .. +7).
template <class T, int D>
__device__ __forceinline__ void mma_backward_load_tile(T* dst, const T* src, index_t row_stride, index_t valid) {
    constexpr int LD = mma_ld(D), CHUNKS = D / 8;
    for (int c = threadIdx.x; c < mma_backward_tile * CHUNKS; c += mma_backward_threads) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool in = r < valid;
        cp_async_16(dst + r * LD + col, in ? src + r * row_stride + col : src, in ? 16 : 0);
    }
}

// c (16 x 64 floats: 8 C tiles) = A X^T for one warp, where A is the 16 rows
// (D features) at `a` and X the 64 rows at `x`, both [.][D + 8] tiles in shared
// memory. A: ldmatrix as Q in the forward; X^T: X stored [row][d] is the "col"
// B operand, ldmatrix without transpose, as K in the forward.
template <class T, int D>
__device__ __forceinline__ void mma_backward_rows_by_tile_t(float (&c)[8][4], const T* a, const T* x, int lane) {
    constexpr int LD = mma_ld(D);
#pragma unroll
    for (int n = 0; n < 8; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t af[4];
        ldmatrix_x4(af, a + tinyllm::detail::mma_q_offset(lane, LD, kk));
#pragma unroll
        for (int np = 0; np < 4; ++np) {
            std::uint32_t bf[4];
            ldmatrix_x4(bf, x + tinyllm::detail::mma_k_offset(lane, LD, np, kk));
            mma_16816<T>(c[2 * np], af, bf[0], bf[1]);
            mma_16816<T>(c[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// acc (16 x D floats: D/8 C tiles) += P Y for one warp, where P (16 x 64) is in
// the C registers of 8 tiles (converted to T: tiles 2kk, 2kk+1 are the A
// fragment of columns 16kk .. 16kk+15) and Y the 64 rows at `y` (a [64][D + 8]
// tile, [row][d]: the B operand needs ldmatrix.trans, as V in the forward).
template <class T, int D>
__device__ __forceinline__ void mma_backward_accumulate(float (&acc)[D / 8][4], const float (&p)[8][4], const T* y,
                                                        int lane) {
    constexpr int LD = mma_ld(D);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const std::uint32_t pf[4] = {pack2<T>(p[2 * kk][0], p[2 * kk][1]), pack2<T>(p[2 * kk][2], p[2 * kk][3]),
                                     pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                     pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            std::uint32_t yf[4];
            ldmatrix_x4_trans(yf, y + tinyllm::detail::mma_v_offset(lane, LD, kk, dp));
            mma_16816<T>(acc[2 * dp], pf, yf[0], yf[1]);
            mma_16816<T>(acc[2 * dp + 1], pf, yf[2], yf[3]);
        }
    }
}

// Block (64 keys, K/V head, b): dK and dV of the keys, summed over every query
// tile of every query head of the group that sees them, in a fixed order.
template <class T, int D>
__global__ void __launch_bounds__(mma_backward_threads)
    attention_backward_mma_dkdv_kernel(attention_backward_args<T> g, tensor_view<const float, 3> lse,
                                       const float* delta) {
#if TINYLLM_CUDA_ARCH >= 800
    constexpr int LD = mma_ld(D), R = mma_backward_tile;
    unsigned char* smem_raw = dynamic_shared<unsigned char>();
    T* ks = reinterpret_cast<T*>(smem_raw);                     // [64][LD]    the block's keys
    T* vs = ks + R * LD;                                        // [64][LD]    their values
    T* qs = vs + R * LD;                                        // [2][64][LD] a query tile
    T* dos = qs + 2 * R * LD;                                   // [2][64][LD] its dO rows
    float* lses = reinterpret_cast<float*>(dos + 2 * R * LD);  // [2][64]     its lse (+inf past Tq)
    float* deltas = lses + 2 * R;                               // [2][64]     its delta

    const attention_args<T>& a = g.a;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g4 = lane / 4;  // accumulator rows g4 and g4 + 8 (tinyllm::detail::mma_c_row)
    const int hkv = blockIdx.y, b = blockIdx.z;
    const int k0 = blockIdx.x * R;
    const index_t length = a.length(b);
    const int query_tiles = (a.Tq + R - 1) / R;
    const int h_first = hkv * a.group;

    // The keys, once (past the row's length: zeros, the padding is never read).
    mma_backward_load_tile<T, D>(ks, a.k_row(b, k0, hkv), a.k_st, length - k0);
    mma_backward_load_tile<T, D>(vs, a.v_row(b, k0, hkv), a.v_st, length - k0);
    cp_async_commit();

    // The query tiles that see any key of the block: visibility does not depend
    // on the head, so the walk is (query tile, then each head of the group).
    auto sees = [&](int qt) {
        return attention_classify_tile(a.mask, static_cast<index_t>(qt) * R, R, k0, R, length) != attention_tile::skip;
    };
    auto next_tile = [&](int qt) {
        while (qt < query_tiles && !sees(qt)) ++qt;
        return qt;
    };
    auto load_queries = [&](int qt, int h, int buf) {
        const int q0 = qt * R, rows = a.Tq - q0;
        mma_backward_load_tile<T, D>(qs + buf * R * LD, a.q_row(b, q0, h), a.q_st, rows);
        mma_backward_load_tile<T, D>(dos + buf * R * LD, g.dout.row(b, q0, h), g.dout.st, rows);
        if (tid < R) {  // plain stores: the buffer's last readers passed the barrier that ended their tile
            const bool in = tid < rows;
            lses[buf * R + tid] = in ? lse(b, h, q0 + tid) : INFINITY;
            deltas[buf * R + tid] = in ? delta[(static_cast<index_t>(b) * a.Hq + h) * a.Tq + q0 + tid] : 0.0f;
        }
    };

    float dk[D / 8][4], dv[D / 8][4];  // keys (g4, g4 + 8) of the warp x features (8n + 2t, +1)
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
    const index_t j0 = k0 + warp * 16 + g4, j1 = j0 + 8;  // the two keys this lane holds

    int qt = next_tile(0), hi = 0, buf = 0;
    if (qt < query_tiles) load_queries(qt, h_first, 0);
    cp_async_commit();
    while (qt < query_tiles) {
        // Start the next (tile, head) into the other buffer, then wait for this one.
        int next_qt = qt, next_hi = hi + 1;
        if (next_hi == a.group) {
            next_hi = 0;
            next_qt = next_tile(qt + 1);
        }
        if (next_qt < query_tiles) load_queries(next_qt, h_first + next_hi, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        const int q0 = qt * R, h = h_first + hi;
        const T* qt_s = qs + buf * R * LD;
        const T* dot_s = dos + buf * R * LD;
        const float* lse_t = lses + buf * R;
        const float* delta_t = deltas + buf * R;

        // S^T = K Q^T (raw dot products) and dP^T = V dO^T: 16 keys x 64 queries per warp.
        float s[8][4], dp[8][4];
        mma_backward_rows_by_tile_t<T, D>(s, ks + warp * 16 * LD, qt_s, lane);
        mma_backward_rows_by_tile_t<T, D>(dp, vs + warp * 16 * LD, dot_s, lane);

        // P^T and dS^T in place. Element e of C tile n: key j0 (e < 2) or j1,
        // query q0 + 8n + 2t + (e & 1).
        const bool partial = attention_classify_tile(a.mask, q0, R, k0, R, length) != attention_tile::full;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = 8 * n + tinyllm::detail::mma_c_col(lane, e);
                const index_t i = q0 + c, j = e < 2 ? j0 : j1;
                const float dot = s[n][e];
                float p = 0.0f, ds = 0.0f;
                if (!partial || attention_visible_keys(a.mask, i, length).contains(j)) {
                    p = __expf(a.logit(dot, h, a.mask.query_position(i), j) - lse_t[c]);
                    ds = p * (dp[n][e] - delta_t[c]) * attention_logit_derivative(dot, a.scale, a.softcap);
                }
                s[n][e] = p;
                dp[n][e] = ds;
            }

        mma_backward_accumulate<T, D>(dv, s, dot_s, lane);  // dV += P^T dO
        mma_backward_accumulate<T, D>(dk, dp, qt_s, lane);  // dK += dS^T Q
        __syncthreads();  // all warps are done with this buffer before it is refilled

        qt = next_qt;
        hi = next_hi;
        buf ^= 1;
    }
    cp_async_wait<0>();

    // Keys nobody sees (padding, masked for every query) keep their zeros.
    const auto store = [&](const strided_rows<T>& x, index_t j, int d, float lo, float hi) {
        if (x.p != nullptr && j < a.Tk)
            *reinterpret_cast<std::uint32_t*>(x.row(b, static_cast<int>(j), hkv) + d) = pack2<T>(lo, hi);
    };
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = 8 * n + tinyllm::detail::mma_c_col(lane, 0);
        store(g.dk, j0, d, dk[n][0], dk[n][1]);
        store(g.dk, j1, d, dk[n][2], dk[n][3]);
        store(g.dv, j0, d, dv[n][0], dv[n][1]);
        store(g.dv, j1, d, dv[n][2], dv[n][3]);
    }
#else
    (void)g;
    (void)lse;
    (void)delta;
    __trap();  // the launcher refuses GPUs older than sm_80
#endif
}

// Block (64 query rows, head, b): dQ of the rows over the key tiles they see.
template <class T, int D>
__global__ void __launch_bounds__(mma_backward_threads)
    attention_backward_mma_dq_kernel(attention_backward_args<T> g, tensor_view<const float, 3> lse,
                                     const float* delta) {
#if TINYLLM_CUDA_ARCH >= 800
    constexpr int LD = mma_ld(D), R = mma_backward_tile;
    unsigned char* smem_raw = dynamic_shared<unsigned char>();
    T* qs = reinterpret_cast<T*>(smem_raw);  // [64][LD]     the block's query rows
    T* dos = qs + R * LD;                    // [64][LD]     their dO rows
    T* ks = dos + R * LD;                    // [2][64][LD]  a key tile
    T* vs = ks + 2 * R * LD;                 // [2][64][LD]  its values

    const attention_args<T>& a = g.a;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g4 = lane / 4;
    // Heavier (later, under causal) query tiles first, as in the forward.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * R;
    const int h = blockIdx.y, hkv = h / a.group, b = blockIdx.z;
    const index_t length = a.length(b);

    mma_backward_load_tile<T, D>(qs, a.q_row(b, q0, h), a.q_st, a.Tq - q0);
    mma_backward_load_tile<T, D>(dos, g.dout.row(b, q0, h), g.dout.st, a.Tq - q0);
    cp_async_commit();

    // The two query rows this lane holds, their lse (+inf past Tq: P = 0) and delta.
    const int row0 = q0 + warp * 16 + g4, row1 = row0 + 8;
    const index_t drow = (static_cast<index_t>(b) * a.Hq + h) * a.Tq;
    const float lse0 = row0 < a.Tq ? lse(b, h, row0) : INFINITY, lse1 = row1 < a.Tq ? lse(b, h, row1) : INFINITY;
    const float delta0 = row0 < a.Tq ? delta[drow + row0] : 0.0f, delta1 = row1 < a.Tq ? delta[drow + row1] : 0.0f;
    const key_range keys0 = attention_visible_keys(a.mask, row0, length);
    const key_range keys1 = attention_visible_keys(a.mask, row1, length);
    const index_t pos0 = a.mask.query_position(row0), pos1 = a.mask.query_position(row1);

    float dq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    const key_range range = attention_tile_keys(a.mask, q0, R, length);  // never past length
    const int t_begin = static_cast<int>(range.begin / R);
    const int t_end = static_cast<int>((range.end + R - 1) / R);
    auto load_kv = [&](int tile, int buf) {
        const int k0 = tile * R;
        mma_backward_load_tile<T, D>(ks + buf * R * LD, a.k_row(b, k0, hkv), a.k_st, length - k0);
        mma_backward_load_tile<T, D>(vs + buf * R * LD, a.v_row(b, k0, hkv), a.v_st, length - k0);
    };
    if (t_begin < t_end) load_kv(t_begin, 0);
    cp_async_commit();

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int buf = (tile - t_begin) & 1;
        if (tile + 1 < t_end) load_kv(tile + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T* kt = ks + buf * R * LD;
        const T* vt = vs + buf * R * LD;
        const int k0 = tile * R;

        // S = Q K^T (raw dot products) and dP = dO V^T: 16 rows x 64 keys per warp.
        float s[8][4], dp[8][4];
        mma_backward_rows_by_tile_t<T, D>(s, qs + warp * 16 * LD, kt, lane);
        mma_backward_rows_by_tile_t<T, D>(dp, dos + warp * 16 * LD, vt, lane);

        // dS in place of dP. Element e of C tile n: row row0 (e < 2) or row1, key k0 + 8n + 2t + (e & 1).
        const bool partial = attention_classify_tile(a.mask, q0, R, k0, R, length) != attention_tile::full;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const index_t j = k0 + 8 * n + tinyllm::detail::mma_c_col(lane, e);
                const bool upper = e < 2;
                const float dot = s[n][e];
                float ds = 0.0f;
                if (!partial || (upper ? keys0 : keys1).contains(j)) {
                    const float p = __expf(a.logit(dot, h, upper ? pos0 : pos1, j) - (upper ? lse0 : lse1));
                    const float dlogit = attention_logit_derivative(dot, a.scale, a.softcap);
                    ds = p * (dp[n][e] - (upper ? delta0 : delta1)) * dlogit;
                }
                dp[n][e] = ds;
            }

        mma_backward_accumulate<T, D>(dq, dp, kt, lane);  // dQ += dS K
        __syncthreads();  // all warps are done with this buffer before it is refilled
    }
    cp_async_wait<0>();

#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = 8 * n + tinyllm::detail::mma_c_col(lane, 0);
        if (row0 < a.Tq) *reinterpret_cast<std::uint32_t*>(g.dq.row(b, row0, h) + d) = pack2<T>(dq[n][0], dq[n][1]);
        if (row1 < a.Tq) *reinterpret_cast<std::uint32_t*>(g.dq.row(b, row1, h) + d) = pack2<T>(dq[n][2], dq[n][3]);
    }
#else
    (void)g;
    (void)lse;
    (void)delta;
    __trap();  // the launcher refuses GPUs older than sm_80
#endif
}

template <int D, class T>
void launch_attention_backward_mma(const attention_backward_args<T>& g, tensor_view<const float, 3> lse,
                                   const float* delta, bool want_dq, bool want_kv, cudaStream_t stream,
                                   std::string_view op) {
    const auto& a = g.a;
    const std::size_t bytes = static_cast<std::size_t>(mma_backward_smem_bytes(D));
    if (want_kv && a.B > 0 && a.Tk > 0) {  // dK, dV per key tile (zeros where no query looks)
        const dim3 grid = checked_grid(ceil_div<index_t>(a.Tk, mma_backward_tile), a.Hkv, a.B, op,
                                       "the key tiles (Tk / 64, Hkv, B)");
        auto kernel = attention_backward_mma_dkdv_kernel<T, D>;
        set_shared_memory(kernel, bytes, op);
        launch(kernel, grid, mma_backward_threads, bytes, stream, g, lse, delta);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_dq && a.B > 0 && a.Tq > 0 && a.Hq > 0) {  // dQ per query tile
        const dim3 grid = checked_grid(ceil_div<index_t>(a.Tq, mma_backward_tile), a.Hq, a.B, op,
                                       "the query tiles (Tq / 64, Hq, B)");
        auto kernel = attention_backward_mma_dq_kernel<T, D>;
        set_shared_memory(kernel, bytes, op);
        launch(kernel, grid, mma_backward_threads, bytes, stream, g, lse, delta);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace detail

// v3: dq, dk, dv = the gradients of attention(q, k, v) for dout, on tensor
// cores. Arguments as attention_backward_flash (v2): `out` is the forward's
// output and `lse` (B, Hq, Tq), float, device, each row's log-sum-exp
// (attention_flash(out, lse, q, k, v, opts) writes both; cpu::attention too).
// T: tinyllm::bfloat16 or tinyllm::float16; head dims 64 and 128; sm_80+; every
// option. An empty gradient view (data() == nullptr) is not written. See the
// top of this file; what it does not take throws (v2 takes float and D <= 256).
template <class T>
void attention_backward_mma(tensor_view<T, 4> dq,                                       // (B, Tq, Hq, D)
                            tensor_view<T, 4> dk,                                       // (B, Tk, Hkv, D)
                            tensor_view<T, 4> dv,                                       // (B, Tk, Hkv, D)
                            std::type_identity_t<tensor_view<const T, 4>> dout,         // (B, Tq, Hq, D)
                            std::type_identity_t<tensor_view<const T, 4>> q,            // (B, Tq, Hq, D)
                            std::type_identity_t<tensor_view<const T, 4>> k,            // (B, Tk, Hkv, D)
                            std::type_identity_t<tensor_view<const T, 4>> v,            // (B, Tk, Hkv, D)
                            std::type_identity_t<tensor_view<const T, 4>> out,          // (B, Tq, Hq, D)
                            tensor_view<const float, 3> lse,                            // (B, Hq, Tq)
                            const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>,
                  "attention_backward_mma (attention backward v3) takes tinyllm::bfloat16 or tinyllm::float16 tensors; "
                  "for float use attention_backward_flash (v2)");
    constexpr std::string_view op = "attention_backward_mma";
    auto g = detail::make_attention_backward_args<T>(dq, dk, dv, dout, q, k, v, opts, op);
    const auto& a = g.a;
    TINYLLM_EXPECT(a.D == 64 || a.D == 128, op,
                   " (attention backward v3, tensor cores) supports head dims 64 and 128, got ", a.D,
                   "; attention_backward_flash (v2) takes head dims 1..256");
    if (out.shape() != q.shape())
        TINYLLM_FAIL(op, ": out has shape ", to_string(out.shape()), " but must have the shape of q ",
                     to_string(q.shape()), " (B, Tq, Hq, D)");
    TINYLLM_EXPECT(out.stride(3) == 1, op, ": the head dim (last) of out must be contiguous (stride 1), not ",
                   out.stride(3));
    expect_shape(lse, extents<3>{q.extent(0), q.extent(2), q.extent(1)}, "attention_backward_mma: lse");
    detail::expect_gradients_apart(op, dq, dk, dv, "out", out);
    detail::expect_gradients_apart(op, dq, dk, dv, "lse", lse);
    // cp.async moves 16 bytes (8 elements) of q, k, v and dout at a time; the
    // gradients are written as pairs (held to the same rule, for one rule).
    const auto check_layout = [&](const auto& x, const char* name) {
        if (x.data() == nullptr) return;
        TINYLLM_EXPECT(reinterpret_cast<std::uintptr_t>(x.data()) % 16 == 0, op, ": ", name,
                       " must be 16-byte aligned (cp.async moves 16 bytes); it is at ",
                       static_cast<const void*>(x.data()));
        for (int d = 0; d < 3; ++d)
            TINYLLM_EXPECT(x.stride(d) % 8 == 0, op, ": every batch/time/head stride of ", name,
                           " must be a multiple of 8 elements; stride ", d, " is ", x.stride(d));
    };
    check_layout(q, "q");
    check_layout(k, "k");
    check_layout(v, "v");
    check_layout(dout, "dout");
    check_layout(dq, "dq");
    check_layout(dk, "dk");
    check_layout(dv, "dv");
    int device = 0, major = 0;
    TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    TINYLLM_EXPECT(major >= 8, op,
                   " needs a GPU of compute capability 8.0 or newer (mma.sync bf16, cp.async); this one is ", major,
                   ".x");
    g.out = detail::rows_of(out);

    const bool want_dq = dq.data() != nullptr, want_kv = dk.data() != nullptr || dv.data() != nullptr;
    const index_t rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
    if (!want_dq && !want_kv) return;
    // 1. delta = rowsum(dO o O): v2's kernel, one warp per query row.
    const std::size_t delta_bytes = sizeof(float) * static_cast<std::size_t>(rows > 0 ? rows : 1);
    float* delta = static_cast<float*>(detail::stream_workspace(delta_bytes, stream));
    if (rows > 0) {
        const dim3 grid = detail::checked_grid(ceil_div<index_t>(rows, detail::flash_backward_threads / 32), 1, 1, op,
                                               "the query rows (one warp each)");
        launch(detail::attention_backward_flash_delta_kernel<T>, grid, detail::flash_backward_threads, 0, stream, g,
               delta);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    // 2. dK, dV per key tile; 3. dQ per query tile.
    if (a.D == 64)
        detail::launch_attention_backward_mma<64>(g, lse, delta, want_dq, want_kv, stream, op);
    else
        detail::launch_attention_backward_mma<128>(g, lse, delta, want_dq, want_kv, stream, op);
}

}  // namespace tinyllm::cuda
