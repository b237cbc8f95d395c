// tinyllm/cuda/decode_dataflow.cuh — a whole decode step of a dense decoder in
// ONE kernel launch: its blocks wait for each other through counters in global
// memory instead of for the end of a kernel (cuda::model::decode_step_dataflow).
//
// What it computes: exactly what cuda::model's decode step computes for B <= 8
// rows of one token each (model.cuh's diagram), in the same order and with the
// same roundings, up to the order of the norms' and attention's sums:
//
//     x = embed(id) (+ p_pos)                                     (B, D)
//     for each layer l:
//         qkv = norm1(x) Wqkv^T (+ b); rope(q, k); cache[pos] = k, v
//         a   = softmax(q K^T / sqrt(Dh)) V  over positions [0, pos]
//         x  += a Wo^T (+ bo)
//         hid = act(norm2(x) W1^T (+ b1))  or  silu(norm2(x) Wg^T) * (norm2(x) Wu^T)
//         x  += hid W2^T (+ b2)
//     logits = norm_f(x) W_head^T                                 (B, V) float
//
// Why one launch. A batch-1 decode step of GPT-2 124M reads 250 MB of bf16
// weights, about 58 µs at the H200's copy rate, but from a CUDA graph of 89
// kernels it took 489 µs (docs/model.md, run E): each kernel is small, and the
// GPU pays for every one a few microseconds of draining the last blocks,
// starting the next grid, and waiting for its first loads, with the SMs idle
// in between. Fusing kernels pairwise (the GEMVs' epilogues) took the step
// from 126 nodes to 89; this rung removes the boundaries altogether.
//
// How blocks wait without deadlocking. The step is a chain of phases (an
// embedding phase; per layer qkv, attention, out_proj, ffn_in, ffn_out; the
// logits), each a number of blocks; every block of a phase needs every block
// of the phase before it to have finished. A grid-wide barrier is not an
// option (GPT-2 124M's step is ~5700 blocks, which do not fit on the GPU at
// once), and block
// indices say nothing about which blocks the GPU has started. So each block
// first draws a ticket (atomicAdd on a counter) and takes the ticket as its
// place in the chain: tickets [0, blocks(embed)) are the embedding, the next
// ones layer 0's qkv, and so on. A block that holds a ticket is running, and
// it waits only for blocks of lower tickets, which were running before it and
// wait only for lower tickets still: by induction every wait ends, however
// many blocks fit on the GPU and in whatever order it starts them. (The
// decoupled look-back of single-pass scans and stream-K GEMMs rely on the same
// argument.)
//
//   finishing a phase's block: its stores; __threadfence(); __syncthreads();
//                              thread 0 adds 1 to counters[phase]
//   starting the next phase's: thread 0 spins until counters[phase - 1] equals
//                              that phase's block count, fences; __syncthreads()
//
// The activations a block reads were written during the launch by other SMs,
// so they are read from L2 (__ldcg): a line an SM's L1 kept from an earlier
// phase would be stale. The weights are never written and take the normal path.
// The last block to finish sets every counter back to zero for the next launch.
//
// Where the time goes, and what the wait hides. Each warp of a GEMV block asks
// L2 for its first unit's weight rows (cp.async.bulk.prefetch: no register
// holds them) BEFORE the block waits, so the weights of the next phases are on
// their way while the current one computes: every resident block is a
// prefetch. Then it stages its input in shared memory (the norm of x, computed
// by every block of the phase for itself, or a copy of the attention output or
// the MLP's hidden layer), and runs gemv.cuh's warp unit with the epilogue the
// graph's kernel uses: RoPE v4's rotation and cache write, bias + GELU, SwiGLU,
// or the float logits; after Wo and the MLP's last projection, where the graph
// runs cuBLAS and a separate residual add + norm, the residual add of norm v3's
// epilogue.
// Attention is one block per (row, KV head), its 8 warps taking every 8th
// chunk of 32 positions with an online softmax each, merged at the end
// (flash-decoding's merge, inside one block), the cached keys and values asked
// of L2 before the wait: enough for the short contexts where a step is
// launch-bound; a long context wants decode attention's split over many blocks.
//
// Expected (not yet measured on a GPU): per layer five phase boundaries of
// ~1-2 µs each (a fence, an atomic, a poll of L2, a block-wide norm) instead of
// seven kernel boundaries of ~5 µs, so GPT-2 124M's bf16 step at batch 1 from
// 489 µs to about 150 µs, 39% of the weights-read floor's 58 µs (the sixty
// boundaries on the step's chain are then the gap), and the Llama-1B shape,
// which is bandwidth-bound, toward its floor (578 µs) as the prefetching blocks
// keep memory busy across boundaries. `tinyllm bench model` times it beside
// the graph (rows decode_dataflow). With a trace (args.stamps) every block
// stamps the GPU's clock at its start, at the end of its wait and at its end:
// model::dataflow_profile, and `tinyllm bench model_breakdown`, give each
// phase's share of the step.
//
// Limits: dense weights in float or bf16, a contiguous float/bf16 KV cache,
// GPT-2 and Llama-style decoders (no experts), at most 8 rows; D, F and Dh
// multiples of 16 / sizeof(T); Dh <= 128, Hq / Hkv <= 4. Anything else is
// refused with the reason (model.cuh's decode_step_dataflow).
#pragma once

#include <tinyllm/activation.hpp>
#include <tinyllm/config.hpp>
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/ffn.cuh>         // bias_activate_gemv_epilogue, swiglu_gemv_epilogue
#include <tinyllm/cuda/gemv.cuh>        // pair_gemv_unit, neighbour_rows
#include <tinyllm/cuda/launch.cuh>      // grid_fence
#include <tinyllm/cuda/norm.cuh>        // residual_norm_epilogue, load_row_floats
#include <tinyllm/cuda/positional.cuh>  // qkv_rope_epilogue

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

namespace tinyllm::cuda::detail {

inline constexpr int dataflow_warps = 8;
inline constexpr int dataflow_threads = 32 * dataflow_warps;
inline constexpr int dataflow_max_rows = pair_gemv_max_rows;  // 8
inline constexpr int dataflow_max_group = 4;                  // query heads per KV head (8: attention spills)
inline constexpr int dataflow_max_head_dim = 128;

// The phases of a step, in chain order within a layer.
enum class dataflow_kind : int { embed, qkv, attention, out_proj, ffn_in, ffn_out, logits };
inline constexpr int dataflow_kinds = 7;
inline constexpr int dataflow_layer_kinds = 5;  // qkv .. ffn_out

inline constexpr std::string_view dataflow_kind_name(dataflow_kind k) {
    constexpr std::string_view names[dataflow_kinds] = {"embed", "qkv", "attention", "out_proj",
                                                        "ffn_in", "ffn_out", "logits"};
    return names[static_cast<int>(k)];
}

// One layer's weights and KV cache, as the kernel reads them (device memory).
template <class T>
struct dataflow_layer {
    const T* attn_norm_weight;  // (D)
    const T* attn_norm_bias;    // (D) LayerNorm, or null
    const T* wqkv;              // ((Hq + 2 Hkv) Dh, D)
    const T* bqkv;              // ((Hq + 2 Hkv) Dh) or null
    const T* wo;                // (D, Hq Dh)
    const T* bo;                // (D) or null
    const T* ffn_norm_weight;   // (D)
    const T* ffn_norm_bias;     // (D) LayerNorm, or null
    const T* w_in;              // (F, D) GPT-2's fc, Llama's gate
    const T* w_in2;             // (F, D) Llama's up (GPT-2: fc again)
    const T* b_in;              // (F) GPT-2's fc bias, or null
    const T* w_out;             // (D, F) proj / down
    const T* b_out;             // (D) or null
    T* keys;                    // (B, capacity, Hkv, Dh) this layer's cache
    T* values;
};

// The cache rows of a decode step: row r (sequence r's one token) at its position.
struct dataflow_cache_rows {
    index_t capacity = 0;
    const std::int64_t* positions = nullptr;  // (rows), in shared memory
    __device__ index_t operator()(index_t r) const { return r * capacity + static_cast<index_t>(positions[r]); }
};

// Everything a launch needs, passed by value.
template <class T>
struct dataflow_args {
    const dataflow_layer<T>* layers;  // (L)
    const T* embed;                   // (V, D)
    const T* learned;                 // (max_positions, D) GPT-2's position table, or null
    const T* final_weight;            // (D)
    const T* final_bias;              // (D) or null
    const T* head;                    // (V, D)
    const token_id* ids;              // (rows)
    std::int64_t positions[dataflow_max_rows];  // each row's position: its length before the step
    T* x;                             // (rows, D) the residual stream
    T* qkv;                           // (rows, (Hq + 2 Hkv) Dh)
    T* attn;                          // (rows, Hq Dh)
    T* hidden;                        // (rows, F)
    float* logits;                    // (rows, V)
    unsigned* counters;               // (phases + 2), zero at launch: see counter_*()
    unsigned long long* stamps;       // (total, 3) or null: each ticket's start, end of its wait, end (ns)
    rope_config rope;                 // resolved; used when rotate
    const float* rope_cos;
    const float* rope_sin;
    index_t rope_rows;
    bool rotate;
    bool gpt2;  // LayerNorm, GELU MLP with biases; else RMSNorm and SwiGLU
    index_t D, F, V, Hq, Hkv, Dh, capacity;
    int rows, layers_count;
    float eps, scale;
    unsigned blocks[dataflow_kinds];  // blocks per phase of each kind
    index_t units[dataflow_kinds];    // GEMV units (a warp's pair of rows) per phase of each kind
    index_t per_warp[dataflow_kinds]; // units per warp (at most 8; 1 for more than one row)
    unsigned total;                   // blocks in the launch

    // counters[p]: blocks of phase p finished; then the ticket and the blocks done.
    __host__ __device__ int phases() const { return 2 + dataflow_layer_kinds * layers_count; }
    __host__ __device__ int counter_ticket() const { return phases(); }
    __host__ __device__ int counter_done() const { return phases() + 1; }
    __host__ __device__ unsigned blocks_of_phase(int p) const {
        if (p == 0) return blocks[0];
        if (p == phases() - 1) return blocks[dataflow_kinds - 1];
        return blocks[1 + (p - 1) % dataflow_layer_kinds];
    }
};

// A ticket's place in the chain.
struct dataflow_block {
    dataflow_kind kind;
    int layer;        // -1 for the embedding, layers_count for the logits
    unsigned index;   // the block's number within its phase
    int phase;        // its counter
    unsigned ticket;  // its place in the chain
};

template <class T>
__host__ __device__ dataflow_block dataflow_block_of(const dataflow_args<T>& a, unsigned ticket) {
    unsigned t = ticket;
    if (t < a.blocks[0]) return {dataflow_kind::embed, -1, t, 0, ticket};
    t -= a.blocks[0];
    unsigned per_layer = 0;
    for (int k = 1; k <= dataflow_layer_kinds; ++k) per_layer += a.blocks[k];
    const unsigned layer = t / per_layer;
    if (layer < static_cast<unsigned>(a.layers_count)) {
        unsigned r = t % per_layer;
        for (int k = 1; k <= dataflow_layer_kinds; ++k) {
            if (r < a.blocks[k])
                return {static_cast<dataflow_kind>(k), static_cast<int>(layer), r,
                        1 + dataflow_layer_kinds * static_cast<int>(layer) + (k - 1), ticket};
            r -= a.blocks[k];
        }
    }
    return {dataflow_kind::logits, a.layers_count, t - per_layer * static_cast<unsigned>(a.layers_count),
            a.phases() - 1, ticket};
}

// Thread 0 waits until *counter reaches `expected` (wait_at_least, launch.cuh),
// then the block goes on; `stamp` (or null): where the trace keeps the time the
// wait ended.
__device__ inline void dataflow_wait(const unsigned* counter, unsigned expected, unsigned long long* stamp) {
    if (threadIdx.x == 0) {
        wait_at_least(counter, expected);  // what the counted blocks stored is visible from here on
        if (stamp) *stamp = global_timer_ns();
    }
    __syncthreads();
}

// The block's end: its stores made visible, then counted; the launch's last
// block zeroes every counter for the next launch.
template <class T>
__device__ void dataflow_arrive(const dataflow_args<T>& a, const dataflow_block& blk) {
    const int phase = blk.phase;
    grid_fence();
    __syncthreads();
    if (threadIdx.x == 0) {
        if (a.stamps) a.stamps[3 * static_cast<std::size_t>(blk.ticket) + 2] = global_timer_ns();
        atomicAdd(&a.counters[phase], 1u);
        grid_fence();  // the phase count before the done count
        if (atomicAdd(&a.counters[a.counter_done()], 1u) == a.total - 1) {
            grid_fence();
            for (int i = 0; i <= a.counter_done(); ++i) atomicExch(&a.counters[i], 0u);
        }
    }
}

// n elements of src (written during this launch) into shared memory, read
// from L2 as 16-byte words (n * sizeof(T) is a multiple of 16, both aligned).
template <class T>
__device__ void dataflow_stage(T* dst, const T* src, index_t n) {
    const index_t words = n * static_cast<index_t>(sizeof(T)) / 16;
    for (index_t i = threadIdx.x; i < words; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = __ldcg(reinterpret_cast<const uint4*>(src) + i);
}

// Asks L2 to fetch `bytes` (a multiple of 16, from a 16-byte aligned address)
// from global memory, without waiting and without a register to hold them. On
// sm_90 one instruction for the whole range (cp.async.bulk.prefetch); before,
// one prefetch per 128-byte line, issued by the calling thread. Nothing on the
// simulated GPU, whose memory has no cache to fill.
__device__ inline void prefetch_l2(const void* p, unsigned bytes) {
#if defined(TINYLLM_SIMULATED_GPU)
    (void)p, (void)bytes;
#elif TINYLLM_CUDA_ARCH >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
    for (unsigned at = 0; at < bytes; at += 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(p) + at));
#endif
}

// norm(x) of every row (rows, D) into out (shared memory), x read from L2: v2's
// passes (norm.cuh), one row after another. N: elements per access.
template <class T, int N, bool Layer>
__device__ void dataflow_normalize(T* out, const T* x, const T* weight, const T* bias, index_t D, int rows,
                                   float eps) {
    __shared__ float partial[32];
    const index_t vectors = D / N;
    for (int m = 0; m < rows; ++m) {
        const float acc = norm_first_pass<T, N, Layer, row_reads::from_l2>(x + m * D, vectors);
        norm_last_passes<T, N, Layer, row_reads::from_l2>(out + m * D, x + m * D, acc, weight, bias, vectors,
                                                          1.0f / static_cast<float>(D), eps, partial);
    }
}

// The float logits of the head's rows n, n + 1.
struct dataflow_logits_epilogue {
    float* out;  // (rows, V)
    index_t V;
    using unit_state = neighbour_rows;
    __device__ unit_state unit(index_t u) const { return neighbour_rows::of_unit(u, V); }
    __device__ void finish(const unit_state& s, int m, float a, float b) const {
        out[m * V + s.n0] = a;
        if (s.n1 != s.n0) out[m * V + s.n1] = b;
    }
};

// One warp's units of a GEMV phase: `per_warp` consecutive units from
// (block * warps + warp) * per_warp on, of `units`. Lane 0 asks L2 for the first
// unit's two weight rows; then every thread of the block runs `stage` (the wait
// for the previous phase, and the input into x_staged (rows, K) in shared
// memory); then the warp's GEMVs (gemv.cuh), one unit after another, with `epi`,
// each unit's rows asked of L2 while the unit before it computes. (Asking for
// all of a warp's units at once would ask for more than L2 holds: at the
// Llama-1B shape's logits, 264 resident blocks of 8 warps of 8 units of 8 KB.)
// Only the batch-1 kernel loops over units: with 8 rows' accumulators the
// loop's state would not fit the 128 registers, so for more rows the host gives
// one unit per warp (per_warp = 1).
template <class T, int V, int MaxRows, class Epilogue, class Stage>
__device__ void dataflow_gemv(const Epilogue& epi, index_t units, index_t per_warp, unsigned block,
                              const T* x_staged, const T* w_a, const T* w_b, int rows, index_t K, Stage stage) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    const index_t first = (static_cast<index_t>(block) * dataflow_warps + threadIdx.x / 32) * per_warp;
    const index_t end = first + per_warp < units ? first + per_warp : units;
    const auto prefetch = [&](index_t unit) {
        const typename Epilogue::unit_state u = epi.unit(unit);
        const unsigned bytes = static_cast<unsigned>(K * static_cast<index_t>(sizeof(T)));
        prefetch_l2(w_a + u.n0 * K, bytes);
        if (w_b != w_a || u.n1 != u.n0) prefetch_l2(w_b + u.n1 * K, bytes);
    };
    if (lane == 0 && first < end) prefetch(first);
    stage();
    if constexpr (MaxRows == 1) {
        for (index_t unit = first; unit < end; ++unit) {
            if (lane == 0 && unit + 1 < end) prefetch(unit + 1);
            pair_gemv_unit<T, V, MaxRows>(epi, epi.unit(unit), lane, x_staged, w_a, w_b, rows, K, [] {});
        }
    } else if (first < end) {
        pair_gemv_unit<T, V, MaxRows>(epi, epi.unit(first), lane, x_staged, w_a, w_b, rows, K, [] {});
    }
}

// Attention's reads that do not wait: the keys and values of the positions
// earlier steps cached, [0, pos_b) of row b and KV head g, asked of L2 by every
// thread before the block waits for this step's qkv phase (one row per
// instruction), so the attention that follows finds them there.
template <class T>
__device__ void dataflow_attention_prefetch(const dataflow_args<T>& a, const dataflow_layer<T>& L, unsigned index,
                                            const std::int64_t* positions) {
    const index_t b = index / a.Hkv, g = index % a.Hkv, kv_width = a.Hkv * a.Dh;
    const index_t cached = static_cast<index_t>(positions[b]);
    const T* keys = L.keys + b * a.capacity * kv_width + g * a.Dh;
    const T* values = L.values + b * a.capacity * kv_width + g * a.Dh;
    const unsigned bytes = static_cast<unsigned>(a.Dh * static_cast<index_t>(sizeof(T)));
    for (index_t j = threadIdx.x; j < 2 * cached; j += blockDim.x)
        prefetch_l2(j < cached ? keys + j * kv_width : values + (j - cached) * kv_width, bytes);
}

// Attention for row b and KV head g: the G = Hq / Hkv query heads that share it,
// over the row's positions [0, pos_b]. Warp w takes the chunks of 32 positions
// w, w + 8, ... In a chunk, lane i scores position i against every head (its
// key row read with 16-byte loads, all issued together: one trip to memory per
// chunk, not one per position), the warp folds the chunk into its online
// softmax per head (running max m, sum l, weighted values acc), then adds the
// chunk's values, lane i holding features i, i + 32, ... The block merges its
// eight warps at the end: out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
template <class T>
__device__ void dataflow_attention(const dataflow_args<T>& a, const dataflow_layer<T>& L, unsigned index,
                                   const std::int64_t* positions, float* shared) {
    constexpr int E = dataflow_max_head_dim / 32, G_max = dataflow_max_group, W = dataflow_warps;
    constexpr int VK = 16 / static_cast<int>(sizeof(T));  // a key row's elements per load
    const int G = static_cast<int>(a.Hq / a.Hkv);
    const index_t Dh = a.Dh, b = index / a.Hkv, g = index % a.Hkv;
    const index_t qkv_width = (a.Hq + 2 * a.Hkv) * Dh, kv_width = a.Hkv * Dh;
    const index_t keys_n = static_cast<index_t>(positions[b]) + 1;
    float* q = shared;                          // (G, Dh), scaled
    float* part_m = q + G * Dh;                 // (W, G)
    float* part_l = part_m + W * G;             // (W, G)
    float* part_acc = part_l + W * G;           // (W, G, Dh)
    const T* q_src = a.qkv + b * qkv_width + g * G * Dh;
    for (index_t i = threadIdx.x; i < G * Dh; i += blockDim.x) {
        float v[1];
        load_row_floats<T, 1, row_reads::from_l2>(v, q_src + i);
        q[i] = v[0] * a.scale;
    }
    __syncthreads();
    const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
    float m[G_max], l[G_max], acc[G_max][E];
#pragma unroll
    for (int h = 0; h < G_max; ++h) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[h][e] = 0.0f;
    }
    const T* keys = L.keys + b * a.capacity * kv_width + g * Dh;
    const T* values = L.values + b * a.capacity * kv_width + g * Dh;
    for (index_t j0 = static_cast<index_t>(warp) * 32; j0 < keys_n; j0 += 32 * W) {
        // Scores: lane i, position j0 + i, every head.
        const index_t j = j0 + lane;
        const bool valid = j < keys_n;
        float score[G_max] = {};
        if (valid) {
            const T* k = keys + j * kv_width;
            for (index_t d0 = 0; d0 < Dh; d0 += VK) {  // Dh is a multiple of VK (checked on the host)
                float kv[VK];
                load_row_floats<T, VK, row_reads::from_l2>(kv, k + d0);
#pragma unroll
                for (int h = 0; h < G_max; ++h) {
                    if (h >= G) break;
#pragma unroll
                    for (int e = 0; e < VK; ++e) score[h] = fmaf(q[h * Dh + d0 + e], kv[e], score[h]);
                }
            }
        }
        // The chunk into each head's online softmax.
        float p[G_max];
#pragma unroll
        for (int h = 0; h < G_max; ++h) {
            if (h >= G) break;
            const float sh = valid ? score[h] : -INFINITY;
            const float m_new = fmaxf(m[h], warp_max(sh));
            const float correction = expf(m[h] - m_new);  // 0 before the first chunk (m = -inf)
            p[h] = valid ? expf(sh - m_new) : 0.0f;
            l[h] = l[h] * correction + warp_sum(p[h]);
#pragma unroll
            for (int e = 0; e < E; ++e) acc[h][e] *= correction;
            m[h] = m_new;
        }
        // The chunk's values: position j0 + i's weight from lane i.
        const int chunk = keys_n - j0 < 32 ? static_cast<int>(keys_n - j0) : 32;
#pragma unroll 4
        for (int i = 0; i < chunk; ++i) {
            float v[E];
#pragma unroll
            for (int e = 0; e < E; ++e) {
                const index_t d = lane + 32 * e;
                v[e] = 0.0f;
                if (d < Dh) {
                    float t[1];
                    load_row_floats<T, 1, row_reads::from_l2>(t, values + (j0 + i) * kv_width + d);
                    v[e] = t[0];
                }
            }
#pragma unroll
            for (int h = 0; h < G_max; ++h) {
                if (h >= G) break;
                const float pi = __shfl_sync(0xffffffffu, p[h], i);
#pragma unroll
                for (int e = 0; e < E; ++e) acc[h][e] = fmaf(pi, v[e], acc[h][e]);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < G_max; ++h) {
        if (h >= G) break;
        if (lane == 0) {
            part_m[warp * G + h] = m[h];
            part_l[warp * G + h] = l[h];
        }
#pragma unroll
        for (int e = 0; e < E; ++e)
            if (lane + 32 * e < Dh) part_acc[(warp * G + h) * Dh + lane + 32 * e] = acc[h][e];
    }
    __syncthreads();
    T* out = a.attn + b * a.Hq * Dh + g * G * Dh;
    for (index_t i = threadIdx.x; i < G * Dh; i += blockDim.x) {
        const index_t h = i / Dh, d = i % Dh;
        float M = -INFINITY;
        for (int w = 0; w < W; ++w) M = fmaxf(M, part_m[w * G + h]);
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < W; ++w) {
            const float mw = part_m[w * G + h];
            const float f = mw == -INFINITY ? 0.0f : expf(mw - M);  // a warp without positions counts nothing
            num = fmaf(part_acc[(w * G + h) * Dh + d], f, num);
            den = fmaf(part_l[w * G + h], f, den);
        }
        out[i] = from_float<T>(num / den);
    }
}

// The phases of one layer and the logits, for LayerNorm (GPT-2) or RMSNorm.
template <class T, int V, int MaxRows, bool Layer>
__device__ void dataflow_phase(const dataflow_args<T>& a, const dataflow_block& blk, const std::int64_t* positions,
                               T* staged, float* shared) {
    const int rows = a.rows;
    const auto wait_previous = [&] {
        dataflow_wait(&a.counters[blk.phase - 1], a.blocks_of_phase(blk.phase - 1),
                      a.stamps ? a.stamps + 3 * static_cast<std::size_t>(blk.ticket) + 1 : nullptr);
    };
    // The residual add after a projection: norm v3's epilogue (norm.cuh), whose
    // finish() adds to x with the dense path's rounding (the sum rounded, + bias,
    // rounded); its norm is not used.
    const auto residual = [&](const T* proj_bias) {
        return residual_norm_epilogue<T, Layer>{nullptr, a.x, proj_bias, nullptr, nullptr, a.D, rows, a.eps, true,
                                                V > 1, nullptr};
    };
    const auto normalized = [&](const T* w, const T* b) {
        return [&a, &wait_previous, staged, w, b, rows] {
            wait_previous();
            dataflow_normalize<T, V, Layer>(staged, a.x, w, b, a.D, rows, a.eps);
            __syncthreads();
        };
    };
    const auto copied = [&](const T* src, index_t K) {
        return [&a, &wait_previous, staged, src, K, rows] {
            wait_previous();
            dataflow_stage<T>(staged, src, rows * K);
            __syncthreads();
        };
    };
    const index_t units = a.units[static_cast<int>(blk.kind)], per_warp = a.per_warp[static_cast<int>(blk.kind)];
    if (blk.kind == dataflow_kind::logits) {
        dataflow_gemv<T, V, MaxRows>(dataflow_logits_epilogue{a.logits, a.V}, units, per_warp, blk.index, staged,
                                     a.head, a.head, rows, a.D, normalized(a.final_weight, a.final_bias));
        return;
    }
    const dataflow_layer<T>& L = a.layers[blk.layer];
    switch (blk.kind) {
        case dataflow_kind::qkv: {
            const qkv_rope_epilogue<T, dataflow_cache_rows> epi{
                a.qkv, L.keys, L.values, dataflow_cache_rows{a.capacity, positions}, L.bqkv, a.Hq, a.Hkv, a.Dh,
                a.rotate, positions, a.rope, a.rope_cos, a.rope_sin, a.rope_rows};
            dataflow_gemv<T, V, MaxRows>(epi, units, per_warp, blk.index, staged, L.wqkv, L.wqkv, rows, a.D,
                                         normalized(L.attn_norm_weight, L.attn_norm_bias));
            break;
        }
        case dataflow_kind::attention:
            dataflow_attention_prefetch<T>(a, L, blk.index, positions);
            wait_previous();
            dataflow_attention<T>(a, L, blk.index, positions, shared);
            break;
        case dataflow_kind::out_proj:
            dataflow_gemv<T, V, MaxRows>(residual(L.bo), units, per_warp, blk.index, staged, L.wo, L.wo, rows,
                                         a.Hq * a.Dh, copied(a.attn, a.Hq * a.Dh));
            break;
        case dataflow_kind::ffn_in:
            if constexpr (Layer)
                dataflow_gemv<T, V, MaxRows>(
                    bias_activate_gemv_epilogue<T>{a.hidden, L.b_in, a.F, activation::gelu_tanh}, units, per_warp,
                    blk.index, staged, L.w_in, L.w_in, rows, a.D, normalized(L.ffn_norm_weight, L.ffn_norm_bias));
            else
                dataflow_gemv<T, V, MaxRows>(swiglu_gemv_epilogue<T>{a.hidden, a.F}, units, per_warp, blk.index,
                                             staged, L.w_in, L.w_in2, rows, a.D,
                                             normalized(L.ffn_norm_weight, nullptr));
            break;
        case dataflow_kind::ffn_out:
            dataflow_gemv<T, V, MaxRows>(residual(L.b_out), units, per_warp, blk.index, staged, L.w_out,
                                         L.w_out, rows, a.F, copied(a.hidden, a.F));
            break;
        default: break;
    }
}

// The step. One block of dataflow_threads per ticket; V: elements per 16-byte
// load (D, F and Dh are multiples of it); MaxRows: 1 (batch 1) or 8.
template <class T, int V, int MaxRows>
__global__ void __launch_bounds__(dataflow_threads, 2) decode_dataflow_kernel(dataflow_args<T> a) {
    __shared__ unsigned s_ticket;
    __shared__ std::int64_t s_positions[dataflow_max_rows];  // where the epilogues read them
    T* staged = dynamic_shared<T>();  // a GEMV phase's input (rows, K)
    float* shared = dynamic_shared<float>();  // attention's scratch (the same bytes)
    if (threadIdx.x == 0) s_ticket = atomicAdd(&a.counters[a.counter_ticket()], 1u);
    if (threadIdx.x < static_cast<unsigned>(a.rows)) s_positions[threadIdx.x] = a.positions[threadIdx.x];
    __syncthreads();
    const dataflow_block blk = dataflow_block_of(a, s_ticket);
    if (a.stamps && threadIdx.x == 0) {  // the start; the end of the wait too, until a wait says otherwise
        const unsigned long long now = global_timer_ns();
        a.stamps[3 * static_cast<std::size_t>(s_ticket)] = now;
        a.stamps[3 * static_cast<std::size_t>(s_ticket) + 1] = now;
    }
    if (blk.kind == dataflow_kind::embed) {  // row blk.index: x = embed[id] (+ learned[pos])
        const index_t r = blk.index, id = a.ids[r], pos = static_cast<index_t>(a.positions[r]);
        // An id outside the vocabulary (read from device memory, so not checked on the host):
        // a NaN row, whose NaN logits a sampler refuses, as cuda::embedding writes one.
        const bool known = id >= 0 && id < a.V;
        for (index_t d = threadIdx.x; d < a.D; d += blockDim.x) {
            float v = known ? to_float(a.embed[id * a.D + d]) : __int_as_float(0x7fc00000);  // NaN
            if (a.learned && known) v += to_float(a.learned[pos * a.D + d]);
            a.x[r * a.D + d] = from_float<T>(v);
        }
    } else if (a.gpt2) {
        dataflow_phase<T, V, MaxRows, true>(a, blk, s_positions, staged, shared);
    } else {
        dataflow_phase<T, V, MaxRows, false>(a, blk, s_positions, staged, shared);
    }
    dataflow_arrive(a, blk);
}

// A session's state for these steps (model.cuh): the layers' pointers and the
// counters (zeroed once; each launch leaves them zero).
template <class T>
struct dataflow_state {
    device_buffer<dataflow_layer<T>> layers;  // (L)
    device_buffer<unsigned> counters;
    device_buffer<unsigned long long> stamps;  // the trace's, when on
    dataflow_args<T> last{};                   // the last launch's arguments
};

// One phase of a traced launch: its time on the step's chain, from the end of
// the phase before it (the first phase: from the first block's start) to the
// end of its own last block. The phases' times add up to the launch's, first
// start to last end, so each is its share of the step; `waited` is the mean
// over its blocks of the time from a block's start to the end of its wait.
struct dataflow_phase_time {
    dataflow_kind kind;
    int layer;  // -1: the embedding; layers: the logits
    unsigned blocks;
    double chain_us, waited_us;
};

// The phases of a traced launch from its arguments and its stamps (total, 3).
template <class T>
std::vector<dataflow_phase_time> dataflow_profile(const dataflow_args<T>& a,
                                                  const std::vector<unsigned long long>& stamps) {
    const auto P = static_cast<std::size_t>(a.phases());
    std::vector<dataflow_phase_time> out(P, dataflow_phase_time{});
    std::vector<unsigned long long> end(P, 0);
    unsigned long long first = std::numeric_limits<unsigned long long>::max();
    for (unsigned t = 0; t < a.total; ++t) {  // every block: its phase's end, and its wait
        const dataflow_block blk = dataflow_block_of(a, t);
        const unsigned long long* s = stamps.data() + 3 * static_cast<std::size_t>(t);
        const auto p = static_cast<std::size_t>(blk.phase);
        out[p].kind = blk.kind;
        out[p].layer = blk.layer;
        out[p].blocks += 1;
        out[p].waited_us += 1e-3 * static_cast<double>(s[1] - s[0]);
        first = std::min(first, s[0]);
        end[p] = std::max(end[p], s[2]);
    }
    for (std::size_t p = 0; p < P; ++p) {  // each phase: from the previous phase's end to its own
        const unsigned long long from = p == 0 ? first : std::max(first, end[p - 1]);
        out[p].chain_us = end[p] > from ? 1e-3 * static_cast<double>(end[p] - from) : 0.0;
        out[p].waited_us /= out[p].blocks;
    }
    return out;
}

// Dynamic shared memory of a launch: the largest GEMV input (rows, K) in T, or
// attention's scratch.
template <class T>
std::size_t dataflow_shared_bytes(const dataflow_args<T>& a) {
    const index_t K = std::max({a.D, a.F, a.Hq * a.Dh});
    const index_t G = a.Hq / a.Hkv;
    const std::size_t gemv = static_cast<std::size_t>(a.rows * K) * sizeof(T);
    const std::size_t attention =
        static_cast<std::size_t>(G * a.Dh + 2 * dataflow_warps * G + dataflow_warps * G * a.Dh) * sizeof(float);
    return std::max(gemv, attention);
}

// Launches the step (the arguments checked and the counters zeroed by the caller:
// model.cuh's decode_step_dataflow).
template <class T>
void launch_decode_dataflow(const dataflow_args<T>& a, cudaStream_t stream) {
    constexpr int W = 16 / static_cast<int>(sizeof(T));
    auto kernel = a.rows == 1 ? decode_dataflow_kernel<T, W, 1> : decode_dataflow_kernel<T, W, dataflow_max_rows>;
    const std::size_t bytes = dataflow_shared_bytes(a);
    if (bytes > 48 * 1024)
        TINYLLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(bytes)));
    launch(kernel, a.total, dataflow_threads, bytes, stream, a);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda::detail
