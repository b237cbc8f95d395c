// tinyllm/cuda/attention_decode_warps.cuh — decode rung 2: flash-decoding with
// every warp scoring its own keys, K and V streamed through registers with
// 16-byte loads. attention_decode runs this rung, and falls back to rung 1
// (attention_decode_tiles, <tinyllm/cuda/attention_decode.cuh>) where it does
// not apply. Included by attention_decode.cuh; not meant to be included alone.
//
// rung 1 -> rung 2   Rung 1 ran the prefill tile kernel over key splits with
//   32 query rows per block. In decode there is usually ONE row per KV head
//   (MHA, Tq = 1), so only warp 0 of the block did score work, its shared
//   memory was sized for 32 rows, and K/V came in with scalar loads through
//   shared memory. Measured on an H200 (B = 8, L = 32768, H = 32, D = 128,
//   bf16): 19.1 ms, 225 GB/s, 0.08x PyTorch's flash kernel.
//   Rung 2 keeps the algorithm (split-K online softmax, then the log-sum-exp
//   merge of the splits by the same combine kernel) and changes the mapping:
//     * a KEY GROUP of `lanes` lanes holds one key row: each lane loads 16
//       bytes of it (8 bf16 or 4 floats) in one vector load; a warp holds
//       32 / lanes keys at once, and U of them per step are loaded before any
//       is used (loads in flight hide the memory latency);
//     * every warp of the block walks its own keys of the split; every key
//       group keeps its own online softmax (m, l, o) for each query row, so
//       no shuffle is needed per key beyond the dot product's reduction over
//       the group's lanes;
//     * the query rows of the block (the query heads sharing the KV head times
//       Tq, RB at a time) are in registers, and each K/V element loaded is
//       used for all of them;
//     * at the end the key groups merge by shuffles and the warps through
//       shared memory sized for the block's rows (the same (m, l, o) merge);
//       one split writes O directly, more write partials for the combine.
//   Splits: about 64 blocks per SM, never fewer than 64 keys per split, so
//   B*Hkv*splits fills the GPU many times over even at B*Hkv = 256.
//   Expected: bound by DRAM bandwidth, within reach of PyTorch flash's 2.8 TB/s
//   on the H200. Measured (H200, 2026-12-04, B=8, L=32768, H=32, D=128, bf16):
//   1733 us, 2.48 TB/s, 11x rung 1 and 0.898x SDPA flash (docs/attention.md).
//
// Applies when: D = 64 or 128; K and V start 16-byte aligned and their batch,
// time and head strides are multiples of 16 bytes (true of any contiguous
// cudaMalloc'd cache); Hq/Hkv * Tq <= 32 (as rung 1). Every option of the CPU
// reference (causal bottom-right, window, ALiBi, soft-cap, scale, key lengths)
// through the shared mask and logit math of <tinyllm/attention.hpp>.
#pragma once

// This rung reuses rung 1's workspace, combine kernel and split arithmetic, so it
// includes <tinyllm/cuda/attention_decode.cuh> (which in turn includes this header at
// its end, after those definitions; #pragma once makes either order complete).
#include <tinyllm/cuda/attention_decode.cuh>
#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/launch.cuh>

#include <cstdint>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int decode_warps_threads = 128;  // 4 warps
inline constexpr int decode_warps_min_keys = 64;  // no automatic split shorter than this
inline constexpr int decode_warps_blocks_per_sm = 64;  // automatic splits aim at this many blocks per SM

// How a key row of D elements of T is spread over lanes.
template <class T, int D>
struct decode_lanes {
    static constexpr int vec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
    static constexpr int lanes = D / vec < 32 ? D / vec : 32;     // lanes per key (a key group)
    static constexpr int elems = D / lanes;                       // elements a lane holds
    static constexpr int keys = 32 / lanes;                       // keys per warp per load
    static_assert(elems == vec, "one 16-byte load per lane and key row");
};

template <class T, int N>
struct alignas(16) decode_vec {
    T x[N];
};

// Block (split, hkv * passes + pass, b). Rows r0 .. r0 + RB of the KV head's
// group * Tq query rows (row r: query r % Tq of head hkv * group + r / Tq).
// part_o == nullptr: one split, write O normalized. Otherwise write the
// unnormalized o and (m, l) in rung 1's layout, for the combine kernel.
template <class T, int D, int RB>
__global__ void __launch_bounds__(decode_warps_threads)
    attention_decode_warps_kernel(attention_args<T> a, int keys_per_split, int passes, float* part_o, float* part_ml) {
    allow_next_grid();  // launched chained (launch.cuh): q, the cache and the lengths are
    wait_for_prior_grids();  // the previous kernels' work, so nothing is read before the wait
    using G = decode_lanes<T, D>;
    constexpr int U = RB == 1 ? 4 : 2;  // keys per key group per step
    constexpr int warps = decode_warps_threads / 32;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int slice = lane % G::lanes;  // elements [slice * elems, +elems) of a row
    const int kg = lane / G::lanes;     // the key group of the warp
    const int b = blockIdx.z;
    const int hkv = blockIdx.y / passes, r0 = (blockIdx.y % passes) * RB;
    const int rows = min(RB, a.group * a.Tq - r0);
    const index_t length = a.length(b);
    key_range range = attention_tile_keys(a.mask, 0, a.Tq, length);
    const index_t s0 = static_cast<index_t>(blockIdx.x) * keys_per_split;
    range.begin = range.begin > s0 ? range.begin : s0;
    range.end = range.end < s0 + keys_per_split ? range.end : s0 + keys_per_split;

    float q[RB][G::elems], o[RB][G::elems], m[RB], l[RB];
    key_range visible[RB];
    index_t pos[RB];
    int head[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        const int row = r0 + (r < rows ? r : 0);
        head[r] = hkv * a.group + row / a.Tq;
        const int i = row % a.Tq;
        visible[r] = r < rows ? attention_visible_keys(a.mask, i, length) : key_range{};
        pos[r] = a.mask.query_position(i);
        const T* qr = a.q_row(b, i, head[r]) + slice * G::elems;
#pragma unroll
        for (int e = 0; e < G::elems; ++e) {
            q[r][e] = r < rows ? to_float(qr[e]) : 0.0f;
            o[r][e] = 0.0f;
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }

    using V = decode_vec<T, G::elems>;
    constexpr int step = warps * G::keys * U;  // keys per block step
    for (index_t k0 = range.begin + warp * G::keys * U; k0 < range.end; k0 += step) {
        V kx[U], vx[U];
        index_t j[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            j[u] = k0 + u * G::keys + kg;
            if (j[u] < range.end) {
                kx[u] = *reinterpret_cast<const V*>(a.k_row(b, static_cast<int>(j[u]), hkv) + slice * G::elems);
                vx[u] = *reinterpret_cast<const V*>(a.v_row(b, static_cast<int>(j[u]), hkv) + slice * G::elems);
            } else {
                kx[u] = V{};
                vx[u] = V{};
            }
        }
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            if (r >= rows) break;  // uniform over the block: the shuffles below see every lane
            float s[U];
            float s_max = -INFINITY;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < G::elems; ++e) dot += q[r][e] * to_float(kx[u].x[e]);
#pragma unroll
                for (int offset = G::lanes / 2; offset > 0; offset /= 2)
                    dot += __shfl_xor_sync(0xffffffffu, dot, offset);
                s[u] = j[u] < range.end && visible[r].contains(j[u]) ? a.logit(dot, head[r], pos[r], j[u]) : -INFINITY;
                s_max = fmaxf(s_max, s[u]);
            }
            const float m_new = fmaxf(m[r], s_max);
            const float alpha = exp_shifted(m[r], m_new);  // 0 while nothing was seen
            float p[U];
            float p_sum = 0.0f;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                p[u] = exp_shifted(s[u], m_new);
                p_sum += p[u];
            }
            l[r] = alpha * l[r] + p_sum;
            m[r] = m_new;
#pragma unroll
            for (int e = 0; e < G::elems; ++e) {
                float acc = alpha * o[r][e];
#pragma unroll
                for (int u = 0; u < U; ++u) acc += p[u] * to_float(vx[u].x[e]);
                o[r][e] = acc;
            }
        }
    }

    // Merge the key groups of the warp: lanes `lanes` apart hold the same elements.
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        if (r >= rows) break;
        for (int offset = G::lanes; offset < 32; offset *= 2) {
            const float m_other = __shfl_xor_sync(0xffffffffu, m[r], offset);
            const float l_other = __shfl_xor_sync(0xffffffffu, l[r], offset);
            const float m_new = fmaxf(m[r], m_other);
            const float w_self = exp_shifted(m[r], m_new), w_other = exp_shifted(m_other, m_new);
            l[r] = w_self * l[r] + w_other * l_other;
#pragma unroll
            for (int e = 0; e < G::elems; ++e) {
                const float o_other = __shfl_xor_sync(0xffffffffu, o[r][e], offset);
                o[r][e] = w_self * o[r][e] + w_other * o_other;
            }
            m[r] = m_new;
        }
    }

    // Merge the warps through shared memory: (warps, RB, D) o, then (warps, RB) m and l.
    float* smem = dynamic_shared<float>();
    float* so = smem;
    float* sm = so + warps * RB * D;
    float* sl = sm + warps * RB;
    if (kg == 0) {
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            if (r >= rows) break;
#pragma unroll
            for (int e = 0; e < G::elems; ++e) so[(warp * RB + r) * D + slice * G::elems + e] = o[r][e];
            if (slice == 0) {
                sm[warp * RB + r] = m[r];
                sl[warp * RB + r] = l[r];
            }
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < rows * D; idx += decode_warps_threads) {
        const int r = idx / D, d = idx % D;
        float mm = -INFINITY;
        for (int w = 0; w < warps; ++w) mm = fmaxf(mm, sm[w * RB + r]);
        float ll = 0.0f, acc = 0.0f;
        for (int w = 0; w < warps; ++w) {
            const float wt = exp_shifted(sm[w * RB + r], mm);
            ll += wt * sl[w * RB + r];
            acc += wt * so[(w * RB + r) * D + d];
        }
        const int row = r0 + r, h = hkv * a.group + row / a.Tq, i = row % a.Tq;
        if (part_o == nullptr) {
            a.o_row(b, i, h)[d] = from_float<T>(ll != 0.0f ? acc / ll : 0.0f);
        } else {
            const index_t slot = ((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * gridDim.x + blockIdx.x;
            part_o[slot * D + d] = acc;
            if (d == 0) {
                part_ml[2 * slot] = mm;
                part_ml[2 * slot + 1] = ll;
            }
        }
    }
}

// Why rung 2 cannot run this call, or empty when it can.
template <class T>
std::string decode_warps_unsupported(const attention_args<T>& a) {
    if (a.D != 64 && a.D != 128)
        return tinyllm::detail::cat("it supports head dims 64 and 128, got ", a.D);
    constexpr index_t vec = 16 / static_cast<index_t>(sizeof(T));
    const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
    if (!aligned(a.k) || !aligned(a.v) || a.k_sb % vec || a.k_st % vec || a.k_sh % vec || a.v_sb % vec ||
        a.v_st % vec || a.v_sh % vec)
        return tinyllm::detail::cat("it needs 16-byte aligned K and V rows (data and batch, time, head strides "
                                    "multiples of ",
                                    vec, " elements); strides are k (", a.k_sb, ", ", a.k_st, ", ", a.k_sh, "), v (",
                                    a.v_sb, ", ", a.v_st, ", ", a.v_sh, ")");
    return {};
}

template <class T, int D, int RB>
void launch_decode_warps(const attention_args<T>& a, dim3 grid, int keys_per_split, int passes, float* part_o,
                         float* part_ml, cudaStream_t stream) {
    const std::size_t bytes = sizeof(float) * static_cast<std::size_t>((decode_warps_threads / 32) * RB * (D + 2));
    launch_chained(attention_decode_warps_kernel<T, D, RB>, grid, decode_warps_threads, bytes, stream, a,
                   keys_per_split, passes, part_o, part_ml);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The kernel for rb rows per block: only RowsPerBlock's when it is fixed, so that a
// caller asking for one size does not compile the other two.
template <class T, int D, int RowsPerBlock>
void launch_decode_warps_rows(int rb, const attention_args<T>& a, dim3 grid, int keys_per_split, int passes,
                              float* part_o, float* part_ml, cudaStream_t stream) {
    if constexpr (RowsPerBlock != 0) {
        (void)rb;
        launch_decode_warps<T, D, RowsPerBlock>(a, grid, keys_per_split, passes, part_o, part_ml, stream);
    } else if (rb == 1) {
        launch_decode_warps<T, D, 1>(a, grid, keys_per_split, passes, part_o, part_ml, stream);
    } else if (rb == 4) {
        launch_decode_warps<T, D, 4>(a, grid, keys_per_split, passes, part_o, part_ml, stream);
    } else {
        launch_decode_warps<T, D, 8>(a, grid, keys_per_split, passes, part_o, part_ml, stream);
    }
}

}  // namespace detail

// Rung 2: out (B, Tq, Hq, D) = attention of the Tq new queries q over k, v
// (B, Tk, Hkv, D), flash-decoding with every warp on its own keys (see the top
// of this file). splits = 0 picks the number of key splits from the GPU size;
// splits = n asks for n (fewer when the keys run out). Rejects what it cannot
// run (head dims other than 64 and 128, unaligned K/V) with a tinyllm::error.
//
// RowsPerBlock: the query rows a block holds in registers, 1, 4 or 8; 0 (the
// default) picks the smallest of them that holds the Hq/Hkv * Tq rows of a KV
// head, or 8 (several passes) past 8. Each row held costs a thread registers
// (its q and o slices, m, l, its mask range) whether the KV head has that row
// or not. nvcc 13.0, sm_90a, bf16, D = 64 or 128 (tools/kernel-resources):
// 118-119 registers at 1 row (4 keys per load step), 142 at 4 rows and 255 at 8,
// with 36 / 64 bytes spilled. That is 4, 3 and 2 blocks of 4 warps per SM.
// Until the 4-row kernel existed, a GQA group of 4 (Llama 3, Mistral:
// Hq/Hkv = 4) ran the 8-row one with half its rows empty: 8 warps per SM to
// hide the latency of the K/V loads, and spills in the key loop. Expected: a
// faster read of the cache on that shape, from 12 warps per SM instead of 8
// and no spills (not measured: `tinyllm bench attention_decode` times both).
// The 8-row kernel itself stops spilling with one key per key group and step
// (U = 1: 252 registers), at half the loads in flight. Groups of 5 to 8 could
// also take the 4-row kernel in two passes: the cache read twice, the second
// time mostly from L2 (both passes' blocks are neighbours in the grid), at 3
// blocks per SM and no spills. Which is faster is for a GPU to say:
// `tinyllm bench attention_decode` times the 8-row kernel against two passes
// of the 4-row one on a group of 8 (rows decode and decode_rows4).
template <class T, int RowsPerBlock = 0>
void attention_decode_warps(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                            std::type_identity_t<tensor_view<const T, 4>> k,
                            std::type_identity_t<tensor_view<const T, 4>> v, const attention_options& opts,
                            attention_workspace& workspace, int splits = 0, cudaStream_t stream = nullptr) {
    static_assert(RowsPerBlock == 0 || RowsPerBlock == 1 || RowsPerBlock == 4 || RowsPerBlock == 8,
                  "attention_decode_warps: RowsPerBlock is 0 (automatic), 1, 4 or 8");
    const char* op = "attention_decode_warps";
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, op);
    detail::expect_decode_rows(a, op);
    const index_t rows_per_head = static_cast<index_t>(a.group) * a.Tq;
    if (const std::string why = detail::decode_warps_unsupported(a); !why.empty())
        TINYLLM_FAIL(op, ": ", why, " (attention_decode falls back to attention_decode_tiles)");
    TINYLLM_EXPECT(splits >= 0, op, ": splits = ", splits, " must be >= 0 (0: automatic)");
    if (out.size() == 0) return;
    const int rb = RowsPerBlock != 0 ? RowsPerBlock : rows_per_head == 1 ? 1 : rows_per_head <= 4 ? 4 : 8;
    const int passes = static_cast<int>(ceil_div<index_t>(rows_per_head, rb));
    const index_t rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
    const dim3 combine_grid = detail::checked_grid(
        rows, 1, 1, op, tinyllm::detail::cat("B * Hq * Tq = ", rows, " query rows (a block each in the combine kernel)"));
    const index_t tk = a.Tk > 0 ? a.Tk : 1;
    index_t per_split;
    if (splits == 0) {
        const int sms = current_multiprocessors();
        const index_t want = detail::decode_splits(tk, static_cast<index_t>(a.B) * a.Hkv * passes, sms,
                                                   detail::decode_warps_blocks_per_sm, detail::decode_warps_min_keys);
        per_split = ceil_div<index_t>(ceil_div<index_t>(tk, want), detail::decode_warps_min_keys) *
                    detail::decode_warps_min_keys;
    } else {
        per_split = ceil_div<index_t>(tk, splits);
    }
    splits = static_cast<int>(ceil_div<index_t>(tk, per_split));
    if (per_split > 2147483647) per_split = 2147483647;  // one split covering Tk < 2^31 - 1
    const dim3 grid = detail::checked_grid(splits, static_cast<index_t>(a.Hkv) * passes, a.B, op,
                                           tinyllm::detail::cat("(splits, Hkv * row passes, B) = (", splits, ", ",
                                                                a.Hkv, " * ", passes, ", ", a.B, ")"));
    float* part_o = nullptr;
    float* part_ml = nullptr;
    if (splits > 1) {
        const index_t partials = rows * splits;
        part_o = workspace.floats(static_cast<std::size_t>(partials * (a.D + 2)));
        part_ml = part_o + partials * a.D;
    }
    const int kps = static_cast<int>(per_split);
    if (a.D == 64) detail::launch_decode_warps_rows<T, 64, RowsPerBlock>(rb, a, grid, kps, passes, part_o, part_ml, stream);
    else detail::launch_decode_warps_rows<T, 128, RowsPerBlock>(rb, a, grid, kps, passes, part_o, part_ml, stream);
    if (splits > 1) {
        launch_chained(detail::attention_decode_combine_kernel<T>, combine_grid, 128, 0, stream, a, splits, part_o,
                       part_ml);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

// attention_decode: rung 2 (attention_decode_warps) where it applies, else rung 1
// (attention_decode_tiles: other head dims up to 256, unaligned K/V). Same
// arguments, limits and messages as rung 1.
template <class T>
void attention_decode(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                      std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                      const attention_options& opts, attention_workspace& workspace, int splits = 0,
                      cudaStream_t stream = nullptr) {
    const auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_decode");
    const index_t rows_per_head = static_cast<index_t>(a.group) * a.Tq;
    if (rows_per_head <= detail::decode_rows && detail::decode_warps_unsupported(a).empty() &&
        static_cast<index_t>(a.B) * a.Hq * a.Tq <= 2147483647)
        attention_decode_warps<T>(out, q, k, v, opts, workspace, splits, stream);
    else
        attention_decode_tiles<T>(out, q, k, v, opts, workspace, splits, stream);
}

// The same with a temporary workspace (allocated and freed per call).
template <class T>
void attention_decode(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                      std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                      const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    attention_workspace workspace;
    attention_decode<T>(out, q, k, v, opts, workspace, 0, stream);
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the workspace is freed
}

}  // namespace tinyllm::cuda
