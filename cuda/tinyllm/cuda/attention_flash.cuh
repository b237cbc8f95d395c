// tinyllm/cuda/attention_flash.cuh — attention v3: FlashAttention's online
// softmax in float32, one pass over K and V, no score matrix in memory.
//
// v2 -> v3   v2 still writes the (Tq, Tk) score matrix S to global memory and
//            reads it back three times. v3 never stores it. A block owns 16
//            query rows of one head, keeps them (and their 16 output rows) in
//            shared memory, and walks the keys in tiles of 32: for each tile it
//            computes the 16x32 scores, folds them into a running softmax, and
//            adds P_tile V_tile to the outputs — then forgets the scores.
//
// Online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022).
// For one query row, after the tiles 1..t the block keeps
//     m_t = max of all scores seen so far
//     l_t = sum over seen keys of exp(s_j - m_t)
//     o_t = sum over seen keys of exp(s_j - m_t) v_j         (unnormalized)
// A new tile with scores s_j, j in tile t+1, updates them exactly:
//     m_{t+1} = max(m_t, max_j s_j)
//     alpha   = exp(m_t - m_{t+1})                  (rescales the old terms)
//     l_{t+1} = alpha * l_t + sum_j exp(s_j - m_{t+1})
//     o_{t+1} = alpha * o_t + sum_j exp(s_j - m_{t+1}) v_j
// and after the last tile O = o / l — the same numbers as softmax(S) V with the
// maximum subtracted, computed in one pass. A row that saw no visible key
// keeps m = -inf and l = 0 and outputs 0 (alpha and p are defined as 0 when
// their exponent involves -inf, never NaN).
//
// Bytes moved: Q and O once, K and V once per block of 16 queries:
//     4 bytes * (2 * B*Hq*Tq*D  +  2 * B*Hq*Tk*D * ceil(Tq / 16))
// and no T^2 term: for T = 2048, B*Hq = 128, D = 128 that is ~34 GB of K/V
// reads served mostly from L2 (neighbouring blocks read the same K/V) versus
// v2's ~8.6 GB of S traffic to DRAM plus its Q/K/V traffic. Key tiles past the
// causal diagonal (or before a sliding window) are never loaded.
//
// The work inside a tile is plain float32 CUDA-core math: warp w handles query
// rows w, w+4, w+8, w+12; lane c computes the score of key c (reading its K row
// from shared memory, padded to an odd stride so 32 lanes hit 32 banks), and the
// row's max and sum are warp shuffles. Tensor cores come in v4.
//
// The same kernel, with a different mapping of its rows, is the split-K
// decode kernel of <tinyllm/cuda/attention_decode.cuh>.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int flash_threads = 128;  // 4 warps
inline constexpr int flash_bk = 32;        // keys per tile: one per lane

// Offsets (in floats) of the shared-memory arrays of a block with `rows` rows.
struct flash_smem {
    int qs, ks, vs, ps, os, m, l, alpha, total;
    int kstride;  // K rows padded to an odd number of floats: no bank conflicts
    TINYLLM_HOST_DEVICE static flash_smem make(int rows, int d) {
        flash_smem s;
        s.kstride = d | 1;
        s.qs = 0;                               // (rows, D)      the block's queries
        s.ks = s.qs + rows * d;                 // (32, kstride)  the key tile
        s.vs = s.ks + flash_bk * s.kstride;     // (32, D)        the value tile
        s.ps = s.vs + flash_bk * d;             // (rows, 32)     p = exp(s - m) of the tile
        s.os = s.ps + rows * flash_bk;          // (rows, D)      unnormalized outputs
        s.m = s.os + rows * d;                  // (rows)         running max
        s.l = s.m + rows;                       // (rows)         running sum
        s.alpha = s.l + rows;                   // (rows)         this tile's rescale factor
        s.total = s.alpha + rows;
        return s;
    }
};

// ROWS query rows per block, all reading the same key/value head.
//   part_o == nullptr (v3, prefill): block (q tile, h, b); row r is query
//     q0 + r of head h; writes O normalized.
//   part_o != nullptr (decode): block (split, hkv, b); row r is query r % Tq of
//     head hkv*group + r / Tq — every query head sharing the KV head, so K and
//     V are read once for all of them — over the keys of this split only;
//     writes the unnormalized o, and (m, l), for the combine kernel.
//   lse (B, Hq, Tq), prefill only, if its data is set: each row's log-sum-exp
//     m + log l (-inf for a row with no visible key), saved for the backward.
template <class T, int ROWS>
__global__ void __launch_bounds__(flash_threads)
    attention_flash_kernel(attention_args<T> a, int keys_per_split, float* part_o, float* part_ml,
                           tensor_view<float, 3> lse) {
    float* smem = dynamic_shared<float>();
    const flash_smem L = flash_smem::make(ROWS, a.D);
    float* qs = smem + L.qs;
    float* ks = smem + L.ks;
    float* vs = smem + L.vs;
    float* ps = smem + L.ps;
    float* os = smem + L.os;
    float* row_m = smem + L.m;
    float* row_l = smem + L.l;
    float* row_alpha = smem + L.alpha;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = flash_threads / 32;
    const bool split = part_o != nullptr;
    const int b = blockIdx.z;
    const index_t length = a.length(b);
    int hkv, rows, q0 = 0;
    key_range range;
    if (!split) {
        hkv = blockIdx.y / a.group;
        q0 = blockIdx.x * ROWS;
        rows = min(ROWS, a.Tq - q0);
        range = attention_tile_keys(a.mask, q0, rows, length);
    } else {
        hkv = blockIdx.y;
        rows = a.group * a.Tq;
        range = attention_tile_keys(a.mask, 0, a.Tq, length);
        const index_t s0 = static_cast<index_t>(blockIdx.x) * keys_per_split;
        range.begin = range.begin > s0 ? range.begin : s0;
        range.end = range.end < s0 + keys_per_split ? range.end : s0 + keys_per_split;
    }
    // Row r -> (query head, query index).
    auto head_of = [&](int r) { return split ? hkv * a.group + r / a.Tq : static_cast<int>(blockIdx.y); };
    auto query_of = [&](int r) { return split ? r % a.Tq : q0 + r; };

    for (int idx = tid; idx < rows * a.D; idx += flash_threads) {
        const int r = idx / a.D, d = idx % a.D;
        qs[idx] = to_float(a.q_row(b, query_of(r), head_of(r))[d]);
        os[idx] = 0.0f;
    }
    for (int r = tid; r < ROWS; r += flash_threads) {
        row_m[r] = -INFINITY;
        row_l[r] = 0.0f;
    }
    __syncthreads();

    for (index_t k0 = range.begin; k0 < range.end; k0 += flash_bk) {
        const int kn = static_cast<int>(range.end - k0 < flash_bk ? range.end - k0 : flash_bk);
        // 1. The key and value tile, zero past its end.
        for (int idx = tid; idx < flash_bk * a.D; idx += flash_threads) {
            const int c = idx / a.D, d = idx % a.D;
            const bool in = c < kn;
            ks[c * L.kstride + d] = in ? to_float(a.k_row(b, static_cast<int>(k0) + c, hkv)[d]) : 0.0f;
            vs[idx] = in ? to_float(a.v_row(b, static_cast<int>(k0) + c, hkv)[d]) : 0.0f;
        }
        __syncthreads();
        // 2. Scores, running max and sum: warp w takes rows w, w + 4, ...; lane c is key k0 + c.
        for (int r = warp; r < rows; r += warps) {
            const int i = query_of(r), h = head_of(r);
            const index_t j = k0 + lane;
            float s = -INFINITY;
            if (lane < kn && attention_visible_keys(a.mask, i, length).contains(j)) {
                float dot = 0.0f;
                const float* qr = qs + r * a.D;
                const float* kr = ks + lane * L.kstride;
                for (int d = 0; d < a.D; ++d) dot += qr[d] * kr[d];
                s = a.logit(dot, h, a.mask.query_position(i), j);
            }
            const float m_old = row_m[r];
            const float m_new = fmaxf(m_old, warp_max(s));
            const float p = exp_shifted(s, m_new);
            const float alpha = exp_shifted(m_old, m_new);  // 0 while nothing was seen
            const float tile_sum = warp_sum(p);
            ps[r * flash_bk + lane] = p;
            // Every lane has read row_m[r] above; lane 0 overwrites it below. The
            // shuffles in between exchange registers but order no memory access:
            // without this barrier the read and the write race (compute-sanitizer
            // racecheck on an H200 and the simulated GPU's racecheck both report it).
            __syncwarp();
            if (lane == 0) {
                row_m[r] = m_new;
                row_l[r] = alpha * row_l[r] + tile_sum;
                row_alpha[r] = alpha;
            }
        }
        __syncthreads();
        // 3. o = alpha * o + P_tile V_tile, one (row, feature) per thread per step.
        for (int idx = tid; idx < rows * a.D; idx += flash_threads) {
            const int r = idx / a.D, d = idx % a.D;
            float acc = os[idx] * row_alpha[r];
            const float* pr = ps + r * flash_bk;
            for (int c = 0; c < kn; ++c) acc += pr[c] * vs[c * a.D + d];
            os[idx] = acc;
        }
        __syncthreads();
    }

    for (int idx = tid; idx < rows * a.D; idx += flash_threads) {
        const int r = idx / a.D, d = idx % a.D;
        const int i = query_of(r), h = head_of(r);
        if (!split) {
            const float l = row_l[r];  // 0: no key seen (a row of 0s); NaN: a NaN score, kept as the CPU keeps it
            a.o_row(b, i, h)[d] = from_float<T>(l != 0.0f ? os[idx] / l : 0.0f);
            if (d == 0 && lse.data() != nullptr) lse(b, h, i) = l != 0.0f ? row_m[r] + logf(l) : -INFINITY;
        } else {
            // Layout of the partial results: (B, Hq, Tq, splits, D) and (B, Hq, Tq, splits, 2).
            const index_t slot = ((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * gridDim.x + blockIdx.x;
            part_o[slot * a.D + d] = os[idx];
            if (d == 0) {
                part_ml[2 * slot] = row_m[r];
                part_ml[2 * slot + 1] = row_l[r];
            }
        }
    }
}

}  // namespace detail

// v3: out = attention(q, k, v) with the online softmax, float32 math. Supports
// every option of the CPU reference and head dims 1..256 (shared memory:
// ~4 * (48 * D + 1100) bytes per block). T: float, bfloat16 or float16.
// With `lse` (B, Hq, Tq), float, device, it also writes each row's log-sum-exp
// (as cpu::attention's lse), which attention_backward_flash needs.
template <class T>
void attention_flash(tensor_view<T, 4> out, tensor_view<float, 3> lse, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                     const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    constexpr int ROWS = 16;
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_flash");
    TINYLLM_EXPECT(a.D <= 256, "attention_flash supports head dims up to 256, got ", a.D);
    if (lse.data() != nullptr) expect_shape(lse, extents<3>{q.extent(0), q.extent(2), q.extent(1)}, "attention_flash: lse");
    tinyllm::detail::check_attention_side_output("attention_flash", "lse", lse, out, q, k, v, opts);
    if (out.size() == 0) return;
    const dim3 grid = detail::checked_grid(ceil_div<index_t>(a.Tq, ROWS), a.Hq, a.B, "attention_flash",
                                           "the query tiles (Tq / 16, Hq, B)");
    const auto layout = detail::flash_smem::make(ROWS, a.D);
    const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(layout.total);
    auto kernel = detail::attention_flash_kernel<T, ROWS>;
    detail::set_shared_memory(kernel, bytes, "attention_flash");
    launch(kernel, grid, detail::flash_threads, bytes, stream, a, 0, nullptr, nullptr, lse);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The same without the log-sum-exp.
template <class T>
void attention_flash(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                     const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    attention_flash<T>(out, tensor_view<float, 3>{}, q, k, v, opts, stream);
}

}  // namespace tinyllm::cuda
