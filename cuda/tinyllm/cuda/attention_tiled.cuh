// tinyllm/cuda/attention_tiled.cuh — attention v2: shared-memory tiles for
// both matrix products, a warp per softmax row.
//
// v1 -> v2   The three steps stay (S and P still go through global memory), but
//            each step reuses what it loads:
//              scores   a block computes a 32x32 tile of S. It walks the head
//                       dim in chunks of 32, staging a 32x32 chunk of Q and one
//                       of K in shared memory; every element loaded is used by
//                       32 threads instead of 1. Global loads for the scores
//                       drop from 2*D per score to 2*D/32 per score. Tiles that
//                       the mask hides entirely (above the causal diagonal) are
//                       filled with -inf without loading anything.
//              softmax  one warp per row: 32 lanes read consecutive scores
//                       (coalesced) and reduce max and sum with shuffles.
//              P V      a block computes a 32x32 tile of O (32 queries x 32
//                       features), staging 32x32 chunks of P and V; chunks of
//                       keys that no query of the tile sees are skipped.
//            Shared-memory rows are padded to 33 floats so that 32 threads
//            reading a column hit 32 different banks.
//
// Bytes moved: the Q/K/V/O traffic falls ~32x, but S is still written once
// and read three times (softmax: 2 passes over the row in registers' reach,
// P V: 1): ~4 * 4 bytes * B*Hq*Tq*Tk, which dominates for long sequences and
// is what v3 (flash) removes.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int tiled_tile = 32;

// Block (j tile, i tile, b*Hq + h), 32x32 threads: thread (x = j, y = i).
template <class T>
__global__ void __launch_bounds__(1024) attention_tiled_scores_kernel(attention_args<T> a, float* s) {
    constexpr int TILE = tiled_tile;
    __shared__ float qs[TILE][TILE + 1];  // qs[i][d]: 32 queries, 32 features of the chunk
    __shared__ float ks[TILE][TILE + 1];  // ks[j][d]: 32 keys, 32 features
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j0 = blockIdx.x * TILE, i0 = blockIdx.y * TILE;
    const int b = blockIdx.z / a.Hq, h = blockIdx.z % a.Hq, hkv = h / a.group;
    const index_t length = a.length(b);
    const int i = i0 + ty, j = j0 + tx;
    float* srow = s + ((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * a.Tk;

    const int cols = min(TILE, a.Tk - j0);
    if (attention_classify_tile(a.mask, i0, TILE, j0, cols, length) == attention_tile::skip) {
        if (i < a.Tq && j < a.Tk) srow[j] = -INFINITY;  // uniform per block: nothing to load
        return;
    }
    float dot = 0.0f;
    for (int d0 = 0; d0 < a.D; d0 += TILE) {
        // Thread (x, y) loads feature d0 + x of query i0 + y and of key j0 + y
        // (consecutive x: consecutive addresses, coalesced). Zero outside.
        const int d = d0 + tx;
        qs[ty][tx] = (i0 + ty < a.Tq && d < a.D) ? to_float(a.q_row(b, i0 + ty, h)[d]) : 0.0f;
        ks[ty][tx] = (j0 + ty < a.Tk && d < a.D) ? to_float(a.k_row(b, j0 + ty, hkv)[d]) : 0.0f;
        __syncthreads();
        // qs[ty][dd] is the same address for the whole warp (a broadcast);
        // ks[tx][dd] has stride 33 across the warp: 32 different banks.
        for (int dd = 0; dd < TILE; ++dd) dot += qs[ty][dd] * ks[tx][dd];
        __syncthreads();
    }
    if (i < a.Tq && j < a.Tk)
        srow[j] = attention_visible_keys(a.mask, i, length).contains(j) ? a.logit(dot, h, a.mask.query_position(i), j)
                                                                          : -INFINITY;
}

// One warp per row of S (B*Hq*Tq rows), in place; fully masked rows become 0.
// (A template only so that several .cu files may include this header.)
template <class F = float>
__global__ void attention_tiled_softmax_kernel(F* s, index_t rows, int tk) {
    const index_t row = blockIdx.x * static_cast<index_t>(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps leave together
    F* x = s + row * tk;
    float m = -INFINITY;
    for (int j = lane; j < tk; j += 32) m = fmaxf(m, x[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < tk; j += 32) {
        const float e = exp_shifted(x[j], m);
        x[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = lane; j < tk; j += 32) x[j] *= inv;
}

// Block (d tile, i tile, b*Hq + h), 32x32 threads: thread (x = d, y = i).
template <class T>
__global__ void __launch_bounds__(1024) attention_tiled_pv_kernel(attention_args<T> a, const float* p) {
    constexpr int TILE = tiled_tile;
    __shared__ float ps[TILE][TILE + 1];  // ps[i][j]
    __shared__ float vs[TILE][TILE + 1];  // vs[j][d]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int d0 = blockIdx.x * TILE, i0 = blockIdx.y * TILE;
    const int b = blockIdx.z / a.Hq, h = blockIdx.z % a.Hq, hkv = h / a.group;
    const float* pbase = p + (static_cast<index_t>(b) * a.Hq + h) * a.Tq * static_cast<index_t>(a.Tk);
    // Only the keys some query of this tile can see (P is 0 elsewhere).
    const key_range keys = attention_tile_keys(a.mask, i0, TILE, a.length(b));
    const int jbegin = static_cast<int>(keys.begin / TILE) * TILE, jend = static_cast<int>(keys.end);
    float acc = 0.0f;
    for (int j0 = jbegin; j0 < jend; j0 += TILE) {
        // Keys at or past jend are zeros, never loaded: past key_lengths a V row
        // may be NaN (padding, an uninitialised cache), and 0 * NaN is NaN.
        ps[ty][tx] = (i0 + ty < a.Tq && j0 + tx < jend) ? pbase[static_cast<index_t>(i0 + ty) * a.Tk + j0 + tx] : 0.0f;
        vs[ty][tx] = (j0 + ty < jend && d0 + tx < a.D) ? to_float(a.v_row(b, j0 + ty, hkv)[d0 + tx]) : 0.0f;
        __syncthreads();
        for (int jj = 0; jj < TILE; ++jj) acc += ps[ty][jj] * vs[jj][tx];
        __syncthreads();
    }
    const int i = i0 + ty, d = d0 + tx;
    if (i < a.Tq && d < a.D) a.o_row(b, i, h)[d] = from_float<T>(acc);
}

}  // namespace detail

// v2: out = attention(q, k, v); `scores` (B, Hq, Tq, Tk) float device workspace,
// holding P afterwards. Supports every option of the CPU reference.
template <class T>
void attention_tiled(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                     tensor_view<float, 4> scores, const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_tiled");
    expect_shape(scores, extents<4>{a.B, a.Hq, a.Tq, a.Tk}, "attention_tiled: scores");
    TINYLLM_EXPECT(scores.is_contiguous(), "attention_tiled: scores must be contiguous");
    tinyllm::detail::check_attention_side_output("attention_tiled", "scores", scores, out, q, k, v, opts);
    if (out.size() == 0) return;
    constexpr int TILE = detail::tiled_tile;
    const dim3 threads(TILE, TILE);
    // Grids from 64-bit counts, checked against CUDA's limits (z = B * Hq <= 65535).
    const index_t bh = static_cast<index_t>(a.B) * a.Hq, i_tiles = ceil_div<index_t>(a.Tq, TILE);
    constexpr std::string_view op = "attention_tiled";
    if (scores.size() > 0) {
        launch(detail::attention_tiled_scores_kernel<T>,
               detail::checked_grid(ceil_div<index_t>(a.Tk, TILE), i_tiles, bh, op, "the score tiles (Tk, Tq, B * Hq)"),
               threads, 0, stream, a, scores.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
        const index_t rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
        const int warps = 8;
        launch(detail::attention_tiled_softmax_kernel<float>,
               detail::checked_grid(ceil_div<index_t>(rows, warps), 1, 1, op, "the softmax rows"), 32 * warps, 0, stream,
               scores.data(), rows, a.Tk);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    launch(detail::attention_tiled_pv_kernel<T>,
           detail::checked_grid(ceil_div<index_t>(a.D, TILE), i_tiles, bh, op, "the output tiles (D, Tq, B * Hq)"),
           threads, 0, stream, a, scores.data());
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
