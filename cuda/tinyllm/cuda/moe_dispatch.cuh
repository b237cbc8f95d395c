// tinyllm/cuda/moe_dispatch.cuh — MoE dispatch and combine on the GPU: the
// plan (histogram -> scan -> scatter), gather, the experts' SwiGLU FFNs with
// cuBLAS, and combine. Same meaning as the CPU functions in
// <tinyllm/moe_dispatch.hpp>, and the same plan, bit for bit.
//
// The plan must put slot (t, j) of expert e at row offset[e] + rank, where
// rank counts the earlier slots of e in token order — the CPU's order, which
// also decides which slots capacity drops. Atomics would give each slot *a*
// row, but in whatever order threads arrive; tinyllm computes the rank with a
// stable scan instead, so the plan is deterministic:
//
//   1. count    the T·k slots are cut into tiles of 256; one warp per tile
//               counts its slots per expert (32 slots at a time: lanes with the
//               same expert find each other with __match_any_sync and the
//               lowest of them adds the group's size), writing tile_counts[e][tile].
//   2. scan     one exclusive prefix sum (CUB DeviceScan) over tile_counts laid
//               out expert-major gives, for every (e, tile), the number of slots
//               of expert e in earlier tiles, plus all slots of experts < e.
//   3. offsets  one warp: kept[e] = min(count[e], capacity), padded to the
//               block size, exclusive-scanned into expert_offsets.
//   4. scatter  every warp replays its tile: a slot's rank is the tile's base
//               for e + the slots of e earlier in the tile (the same match
//               masks: popc(peers below this lane)); rank >= capacity is
//               dropped (row -1), otherwise row = expert_offsets[e] + rank.
//
// A plan of at most one tile (256 slots: every decode step) needs no scan across
// tiles, and one warp does the four steps in one launch (moe_plan_one_tile_kernel,
// the same device functions), so a decode step's plan is one graph node, not five.
//
// Gather (one warp per row, 16-byte vector copies where the row size allows)
// and combine (one warp per token; each output element sums the token's k
// slots in slot order — no atomics, so results are reproducible run to run)
// are pure data movement: their floor is the bytes they must move,
//     gather  R·D·s read + R·D·s written        combine  T·k·D·s read + T·D·s written
// (s = bytes per element), which is what the benchmark reports GB/s against.
// Combine v2 (moe_combine_residual_rms_norm / _layer_norm) is what a decoder
// does with the combined rows: add them to the residual stream and normalize
// for the next layer, one block per token, in one launch (its kernel says how).
//
// The experts run as a loop of cuBLAS GEMMs (float accumulation), three per expert with rows
// (gate, up, down), plus one element-wise SiLU-multiply kernel: simple and
// already near peak for large expert batches; a single grouped GEMM kernel is
// the next rung (see docs/moe.md). Their intermediates live in a caller-owned
// moe_experts_workspace, so a call in a decode loop allocates nothing and waits
// only for the plan's offsets, which size the GEMMs.
//
// ids outside [0, E) are never read out of bounds: those slots are dropped
// (the CPU reference throws for them instead).
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/moe_gating.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/moe_dispatch.hpp>
#include <tinyllm/tensor.hpp>

#include <cub/device/device_scan.cuh>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tinyllm::cuda {
namespace detail {

constexpr int moe_tile_slots = 256;  // slots per warp tile in the plan kernels
constexpr unsigned moe_full_warp = 0xffffffffu;

// Warps per block of the plan kernels: each warp keeps E int32 counters in
// shared memory, so large E gets fewer warps (at most 48 KB per block).
inline int moe_plan_warps(index_t experts) {
    const index_t fit = (48 * 1024) / (experts * static_cast<index_t>(sizeof(int)));
    return static_cast<int>(fit >= 4 ? 4 : fit);
}

// The expert of flattened slot i, or -1 when absent or out of range.
__device__ inline int moe_slot_expert(const std::int32_t* ids, index_t slots, index_t i, int experts) {
    if (i >= slots) return -1;
    const int e = ids[i];
    return e >= 0 && e < experts ? e : -1;
}

// One warp counts the slots of each expert in the tile from slot `first` on:
// count[e] (shared memory, E counters) = slots of e in the tile.
__device__ inline void moe_tile_count(int* count, const std::int32_t* ids, index_t slots, index_t first, int experts,
                                      int lane) {
    for (int e = lane; e < experts; e += 32) count[e] = 0;
    __syncwarp();
    for (int step = 0; step < moe_tile_slots; step += 32) {
        const int e = moe_slot_expert(ids, slots, first + step + lane, experts);
        const unsigned peers = __match_any_sync(moe_full_warp, e);  // lanes holding the same expert
        if (e >= 0 && lane == __ffs(peers) - 1) count[e] += __popc(peers);
        __syncwarp();
    }
}

// Step 1: tile_counts[e * tiles + tile] = slots of expert e in the tile.
template <class Int>
__global__ void moe_plan_count_kernel(Int* tile_counts, const std::int32_t* ids, index_t slots, int experts,
                                      index_t tiles) {
    int* moe_counters = dynamic_shared<int>();  // (warps, E)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const index_t tile = blockIdx.x * static_cast<index_t>(warps) + warp;
    if (tile >= tiles) return;  // the whole warp leaves together
    int* count = moe_counters + warp * experts;
    moe_tile_count(count, ids, slots, tile * moe_tile_slots, experts, lane);
    for (int e = lane; e < experts; e += 32) tile_counts[static_cast<index_t>(e) * tiles + tile] = count[e];
}

// Step 3 (one warp): expert_counts[e] = min(all slots of e, capacity);
// expert_offsets = exclusive scan of the counts padded to `block`. all_slots(e):
// every slot of expert e (over all tiles).
template <class AllSlots>
__device__ void moe_offsets_warp(std::int32_t* expert_offsets, std::int32_t* expert_counts, int experts,
                                 index_t capacity, index_t block, int lane, AllSlots all_slots) {
    std::int32_t carry = 0;
    for (int base = 0; base < experts; base += 32) {
        const int e = base + lane;
        std::int32_t padded = 0;
        if (e < experts) {
            const std::int32_t all = all_slots(e);
            const std::int32_t kept = capacity >= 0 && all > capacity ? static_cast<std::int32_t>(capacity) : all;
            expert_counts[e] = kept;
            padded = static_cast<std::int32_t>(ceil_div<index_t>(kept, block) * block);
        }
        std::int32_t inclusive = padded;  // warp inclusive scan (Hillis–Steele with shuffles)
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const std::int32_t below = __shfl_up_sync(moe_full_warp, inclusive, offset);
            if (lane >= offset) inclusive += below;
        }
        if (e < experts) expert_offsets[e] = carry + inclusive - padded;
        carry += __shfl_sync(moe_full_warp, inclusive, 31);
    }
    if (lane == 0) expert_offsets[experts] = carry;
}

template <class Int>
__global__ void moe_plan_offsets_kernel(std::int32_t* expert_offsets, std::int32_t* expert_counts,
                                        const Int* tile_counts, const Int* tile_offsets, int experts, index_t tiles,
                                        index_t capacity, index_t block) {
    moe_offsets_warp(expert_offsets, expert_counts, experts, capacity, block, static_cast<int>(threadIdx.x),
                     [&](int e) -> std::int32_t {
                         if (tiles == 0) return 0;
                         const index_t last = static_cast<index_t>(e) * tiles + tiles - 1;
                         return static_cast<std::int32_t>(tile_offsets[last] + tile_counts[last] -
                                                          tile_offsets[static_cast<index_t>(e) * tiles]);
                     });
}

// Step 4 for one warp's tile from slot `first` on: every slot's row (or -1) and every
// used row's token; rank[e] (shared memory) holds the slots of e before the tile, and
// is advanced past the tile's.
__device__ inline void moe_tile_scatter(int* rank, std::int32_t* row_of, std::int32_t* row_token,
                                        const std::int32_t* ids, index_t slots, index_t first, int k, int experts,
                                        const std::int32_t* expert_offsets, index_t capacity, int lane) {
    const unsigned below = (1u << lane) - 1u;  // lanes before this one
    for (int step = 0; step < moe_tile_slots; step += 32) {
        const index_t i = first + step + lane;
        const int e = moe_slot_expert(ids, slots, i, experts);
        const unsigned peers = __match_any_sync(moe_full_warp, e);
        if (i < slots) {
            std::int32_t row = -1;
            if (e >= 0) {
                const index_t r = rank[e] + __popc(peers & below);
                if (capacity < 0 || r < capacity) {
                    row = static_cast<std::int32_t>(expert_offsets[e] + r);
                    row_token[row] = static_cast<std::int32_t>(i / k);
                }
            }
            row_of[i] = row;
        }
        __syncwarp();  // every lane has read rank[e] before the leader bumps it
        if (e >= 0 && lane == __ffs(peers) - 1) rank[e] += __popc(peers);
        __syncwarp();
    }
}

// Step 4: every slot's row (or -1), and every used row's token.
template <class Int>
__global__ void moe_plan_scatter_kernel(std::int32_t* row_of, std::int32_t* row_token, const std::int32_t* ids,
                                        index_t slots, int k, int experts, index_t tiles, const Int* tile_offsets,
                                        const std::int32_t* expert_offsets, index_t capacity) {
    int* moe_counters = dynamic_shared<int>();  // (warps, E): rank of the next slot of e
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const index_t tile = blockIdx.x * static_cast<index_t>(warps) + warp;
    if (tile >= tiles) return;
    int* rank = moe_counters + warp * experts;
    // Slots of e before this tile = offset of (e, tile) - offset of (e, 0).
    for (int e = lane; e < experts; e += 32)
        rank[e] = static_cast<int>(tile_offsets[static_cast<index_t>(e) * tiles + tile] -
                                   tile_offsets[static_cast<index_t>(e) * tiles]);
    __syncwarp();
    moe_tile_scatter(rank, row_of, row_token, ids, slots, tile * moe_tile_slots, k, experts, expert_offsets, capacity,
                     lane);
}

// The plan of at most one tile (moe_tile_slots slots: every decode step) in one
// launch of one warp: row_token = -1, step 1's counts, step 3's offsets (all of an
// expert's slots are in this tile: nothing to scan across tiles), step 4's scatter.
template <class Int>  // std::int32_t (a template, as the other kernels here: defined in a header)
__global__ void moe_plan_one_tile_kernel(Int* row_of, Int* row_token, Int* expert_offsets, Int* expert_counts,
                                         const Int* ids, index_t slots, int k, int experts, index_t rows,
                                         index_t capacity, index_t block) {
    int* counters = dynamic_shared<int>();  // (E): the tile's counts, then each expert's next rank
    const int lane = static_cast<int>(threadIdx.x);
    for (index_t r = lane; r < rows; r += 32) row_token[r] = -1;  // rows no slot lands in (padding, unused)
    moe_tile_count(counters, ids, slots, 0, experts, lane);
    moe_offsets_warp(expert_offsets, expert_counts, experts, capacity, block, lane,
                     [&](int e) -> std::int32_t { return counters[e]; });
    __syncwarp();  // every lane has read the counts; the -1s and the offsets are written
    for (int e = lane; e < experts; e += 32) counters[e] = 0;
    __syncwarp();
    moe_tile_scatter(counters, row_of, row_token, ids, slots, 0, k, experts, expert_offsets, capacity, lane);
}

// Gather rows as vectors V (16, 4 or 2 bytes): out[r] = in[row_token[r]] or 0.
template <class V>
__global__ void moe_gather_kernel(V* out, const V* in, const std::int32_t* row_token, index_t rows,
                                  index_t vectors_per_row) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (index_t r = blockIdx.x * static_cast<index_t>(warps) + (threadIdx.x >> 5); r < rows;
         r += static_cast<index_t>(gridDim.x) * warps) {
        const std::int32_t t = row_token[r];
        V* dst = out + r * vectors_per_row;
        if (t >= 0) {
            const V* src = in + static_cast<index_t>(t) * vectors_per_row;
            for (index_t v = lane; v < vectors_per_row; v += 32) dst[v] = src[v];
        } else {
            for (index_t v = lane; v < vectors_per_row; v += 32) dst[v] = V{};  // all-zero bits: 0.0
        }
    }
}

// Combine: one warp per token, VEC consecutive elements per lane step.
template <class T, int VEC>
__global__ void moe_combine_kernel(T* out, const T* expert_out, const float* weights, const std::int32_t* row_of,
                                   index_t tokens, index_t width, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (index_t t = blockIdx.x * static_cast<index_t>(warps) + (threadIdx.x >> 5); t < tokens;
         t += static_cast<index_t>(gridDim.x) * warps) {
        for (index_t d = static_cast<index_t>(lane) * VEC; d < width; d += 32 * VEC) {
            float sum[VEC] = {};
            for (int j = 0; j < k; ++j) {  // slot order: the same sum every run
                const std::int32_t row = row_of[t * k + j];
                if (row < 0) continue;
                const float w = weights[t * k + j];
                const T* src = expert_out + static_cast<index_t>(row) * width + d;
                if constexpr (VEC == 4 && std::is_same_v<T, float>) {
                    const float4 v = *reinterpret_cast<const float4*>(src);
                    sum[0] += w * v.x;
                    sum[1] += w * v.y;
                    sum[2] += w * v.z;
                    sum[3] += w * v.w;
                } else {
#pragma unroll
                    for (int i = 0; i < VEC; ++i) sum[i] += w * to_float(src[i]);
                }
            }
            T* dst = out + t * width + d;
            if constexpr (VEC == 4 && std::is_same_v<T, float>) {
                *reinterpret_cast<float4*>(dst) = make_float4(sum[0], sum[1], sum[2], sum[3]);
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) dst[i] = from_float<T>(sum[i]);
            }
        }
    }
}

// Combine v2, in the decoder: the combined rows are only ever added to the
// residual stream and normalized for the next layer, so one block per token
// does combine and norm.cuh v2's residual add + norm together:
//   x[t] += round_T(sum_j w(t, j) expert_out[row_of(t, j)]);  out[t] = norm(x[t]).
// Pass 1 sums the k slots in slot order with combine's own arithmetic, rounds the
// sum to T as combine stores it, adds it to x, stores x and accumulates the
// norm's first sum; norm.cuh's last passes (L1-resident re-reads of x, each
// element by the thread that wrote it) finish. Bit for bit moe_combine then the
// residual add + norm, with one launch and no (T, D) intermediate in memory.
template <class T, int N, bool Layer>
__global__ void moe_combine_residual_norm_kernel(T* out, T* x, const T* expert_out, const float* weights,
                                                 const std::int32_t* row_of, int k, const T* weight, const T* bias,
                                                 index_t tokens, index_t D, float eps) {
    __shared__ float partial[32];
    const index_t vectors = D / N;  // the launcher guarantees D % N == 0
    const float inv_d = 1.0f / static_cast<float>(D);
    for (index_t t = blockIdx.x; t < tokens; t += gridDim.x) {
        T* row = x + t * D;  // this token's row of the residual stream
        float acc = 0.0f;
        for (index_t v = threadIdx.x; v < vectors; v += blockDim.x) {
            float a[N], sum[N] = {};
            for (int j = 0; j < k; ++j) {  // slot order, dropped slots skipped: moe_combine's sum
                const std::int32_t slot_row = row_of[t * k + j];
                if (slot_row < 0) continue;
                const float w = weights[t * k + j];
                float e[N];
                load_floats<T, N>(e, expert_out + static_cast<index_t>(slot_row) * D + v * N);
#pragma unroll
                for (int i = 0; i < N; ++i) sum[i] += w * e[i];
            }
            load_floats<T, N>(a, row + v * N);
            packed_elements<T, N> q;
#pragma unroll
            for (int i = 0; i < N; ++i) {
                q.v[i] = store_as<T>(a[i] + rounded_to<T>(sum[i]));  // the combined row as stored, then the add
                const float s = to_float(q.v[i]);
                acc += Layer ? s : s * s;
            }
            *reinterpret_cast<packed_elements<T, N>*>(row + v * N) = q;
        }
        norm_last_passes<T, N, Layer, row_reads::cached>(out + t * D, row, acc, weight, bias, vectors, inv_d, eps,
                                                          partial);
    }
}

// g = silu(gate) * up, element-wise over n values.
template <class T>
__global__ void moe_silu_mul_kernel(T* g, const T* gate, const T* up, index_t n) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        g[i] = from_float<T>(moe_silu(to_float(gate[i])) * to_float(up[i]));
}

inline unsigned moe_grid(index_t work_items, index_t per_block) {
    const index_t blocks = ceil_div<index_t>(work_items, per_block);
    return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}


}  // namespace detail
}  // namespace tinyllm::cuda

namespace tinyllm::cuda {

// Scratch memory for cuda::moe_plan, sized for up to `slots` = T·k slots and
// E experts; make it once and reuse it.
class moe_dispatch_workspace {
public:
    template <class = void>  // compiled only where called (launch.cuh): the scan's size query names its kernels
    moe_dispatch_workspace(index_t slots, index_t experts)
        : slots_(slots), experts_(experts), tiles_(ceil_div<index_t>(slots, detail::moe_tile_slots)) {
        TINYLLM_EXPECT(slots >= 0 && experts >= 1, "moe_dispatch_workspace: slots = ", slots, ", E = ", experts);
        TINYLLM_EXPECT(detail::moe_plan_warps(experts) >= 1, "moe_dispatch_workspace: E = ", experts,
                       " is too large for the CUDA plan kernels (E <= 12288)");
        const std::size_t n = static_cast<std::size_t>(experts * tiles_);
        tile_counts_ = device_buffer<std::int32_t>(n);
        tile_offsets_ = device_buffer<std::int32_t>(n);
        std::size_t bytes = 0;
        TINYLLM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, tile_counts_.data(), tile_offsets_.data(),
                                                         static_cast<int>(n)));
        scan_temp_ = device_buffer<unsigned char>(bytes > 0 ? bytes : 1);
    }
    index_t slots() const { return slots_; }
    index_t experts() const { return experts_; }
    std::int32_t* tile_counts() { return tile_counts_.data(); }
    std::int32_t* tile_offsets() { return tile_offsets_.data(); }
    device_buffer<unsigned char>& scan_temp() { return scan_temp_; }

private:
    index_t slots_, experts_, tiles_;
    device_buffer<std::int32_t> tile_counts_, tile_offsets_;  // (E, tiles) each
    device_buffer<unsigned char> scan_temp_;
};

// The plan's four steps (count, scan, offsets, scatter) on the GPU: the same plan as cpu::moe_plan (device
// memory; asynchronous on `stream`). The workspace must match E and hold T·k slots.
template <class = void>  // compiled only where called (launch.cuh)
inline void moe_plan(moe_plan_view plan, tensor_view<const std::int32_t, 2> ids, const moe_dispatch_options& options,
                     moe_dispatch_workspace& ws, cudaStream_t stream = nullptr) {
    const index_t T = ids.extent(0), k = ids.extent(1), E = plan.expert_counts.extent(0), slots = T * k;
    tinyllm::detail::expect_dispatch_options(options, "cuda::moe_plan");
    tinyllm::detail::expect_plan(plan, T, k, E, options.block, "cuda::moe_plan");
    TINYLLM_EXPECT(ids.is_contiguous(), "cuda::moe_plan: ids must be contiguous");
    TINYLLM_EXPECT(ws.experts() == E && ws.slots() >= slots, "cuda::moe_plan: the workspace was made for ", ws.slots(),
                   " slots and E = ", ws.experts(), "; this call needs ", slots, " slots and E = ", E);
    TINYLLM_EXPECT(moe_max_rows(T, k, E, options.block) <= INT32_MAX, "cuda::moe_plan: ",
                   moe_max_rows(T, k, E, options.block), " rows do not fit int32 row numbers");
    const index_t tiles = ceil_div<index_t>(slots, detail::moe_tile_slots);
    if (tiles <= 1) {  // at most one tile (every decode step): the whole plan in one launch of one warp
        launch(detail::moe_plan_one_tile_kernel<std::int32_t>, 1, 32, static_cast<std::size_t>(E) * sizeof(int), stream,
               plan.row_of.data(), plan.row_token.data(), plan.expert_offsets.data(), plan.expert_counts.data(),
               ids.data(), slots, static_cast<int>(k), static_cast<int>(E), plan.row_token.extent(0), options.capacity,
               options.block);
        TINYLLM_CUDA_CHECK_LAUNCH();
        return;
    }
    const int warps = detail::moe_plan_warps(E);
    const std::size_t shared = static_cast<std::size_t>(warps) * E * sizeof(int);
    // Rows no slot lands in (padding, unused) hold token -1.
    TINYLLM_CUDA_CHECK(cudaMemsetAsync(plan.row_token.data(), 0xFF, plan.row_token.size() * sizeof(std::int32_t), stream));
    const unsigned blocks = static_cast<unsigned>(ceil_div<index_t>(tiles, warps));
    if (tiles > 0) {
        launch(detail::moe_plan_count_kernel<std::int32_t>, blocks, warps * 32, shared, stream, ws.tile_counts(),
               ids.data(), slots, static_cast<int>(E), tiles);
        TINYLLM_CUDA_CHECK_LAUNCH();
        std::size_t bytes = ws.scan_temp().size();
        TINYLLM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(ws.scan_temp().data(), bytes, ws.tile_counts(),
                                                         ws.tile_offsets(), static_cast<int>(E * tiles), stream));
    }
    launch(detail::moe_plan_offsets_kernel<std::int32_t>, 1, 32, 0, stream, plan.expert_offsets.data(),
           plan.expert_counts.data(), ws.tile_counts(), ws.tile_offsets(), static_cast<int>(E), tiles, options.capacity,
           options.block);
    TINYLLM_CUDA_CHECK_LAUNCH();
    if (tiles > 0) {
        launch(detail::moe_plan_scatter_kernel<std::int32_t>, blocks, warps * 32, shared, stream, plan.row_of.data(),
               plan.row_token.data(), ids.data(), slots, static_cast<int>(k), static_cast<int>(E), tiles,
               ws.tile_offsets(), plan.expert_offsets.data(), options.capacity);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

// Gather (the CPU's step 4): out[r] = x[row_token[r]], zero for padding and unused rows.
//   out (R, D), x (T, D): float, bfloat16 or float16, contiguous.
template <class T, class X>
void moe_gather(tensor_view<T, 2> out, tensor_view<X, 2> x, const moe_plan_view& plan, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<std::remove_const_t<X>, T>, "moe_gather: out and x have the same element type");
    const index_t R = out.extent(0), D = out.extent(1);
    TINYLLM_EXPECT(plan.row_token.extent(0) == R, "cuda::moe_gather: out has ", R, " rows but plan.row_token has ",
                   plan.row_token.extent(0));
    TINYLLM_EXPECT(x.extent(1) == D, "cuda::moe_gather: x has width ", x.extent(1), " but out has width ", D);
    TINYLLM_EXPECT(out.is_contiguous() && x.is_contiguous(), "cuda::moe_gather: out and x must be contiguous");
    tinyllm::detail::expect_gather_memory("cuda::moe_gather", out, x, plan);
    if (R == 0 || D == 0) return;
    const int warps = 8;
    const unsigned grid = detail::moe_grid(R, warps);
    const index_t row_bytes = D * static_cast<index_t>(sizeof(T));
    const auto aligned = [&](std::size_t a) {
        return reinterpret_cast<std::uintptr_t>(out.data()) % a == 0 && reinterpret_cast<std::uintptr_t>(x.data()) % a == 0 &&
               row_bytes % static_cast<index_t>(a) == 0;
    };
    if (aligned(16)) {
        launch(detail::moe_gather_kernel<uint4>, grid, warps * 32, 0, stream, reinterpret_cast<uint4*>(out.data()),
               reinterpret_cast<const uint4*>(x.data()), plan.row_token.data(), R, row_bytes / 16);
    } else if (aligned(4)) {
        launch(detail::moe_gather_kernel<std::uint32_t>, grid, warps * 32, 0, stream,
               reinterpret_cast<std::uint32_t*>(out.data()), reinterpret_cast<const std::uint32_t*>(x.data()),
               plan.row_token.data(), R, row_bytes / 4);
    } else {
        static_assert(sizeof(T) % 2 == 0, "moe_gather moves elements of 2 or 4 bytes");
        launch(detail::moe_gather_kernel<std::uint16_t>, grid, warps * 32, 0, stream,
               reinterpret_cast<std::uint16_t*>(out.data()), reinterpret_cast<const std::uint16_t*>(x.data()),
               plan.row_token.data(), R, row_bytes / 2);
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// Combine (the CPU's step 6): out[t] = sum_j weights(t, j) · expert_out[row_of(t, j)] (slot order,
// dropped slots skipped, float accumulation).
//   out (T, D), expert_out (R, D), weights (T, k) float
template <class T, class Y, class W>
void moe_combine(tensor_view<T, 2> out, tensor_view<Y, 2> expert_out, tensor_view<W, 2> weights,
                 const moe_plan_view& plan, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<std::remove_const_t<Y>, T>, "moe_combine: out and expert_out have the same type");
    static_assert(std::is_same_v<std::remove_const_t<W>, float>, "moe_combine: weights are float");
    const index_t T_ = out.extent(0), D = out.extent(1), k = weights.extent(1);
    expect_shape(weights, extents<2>{T_, k}, "cuda::moe_combine: weights");
    expect_shape(plan.row_of, extents<2>{T_, k}, "cuda::moe_combine: plan.row_of");
    TINYLLM_EXPECT(expert_out.extent(1) == D, "cuda::moe_combine: expert_out has width ", expert_out.extent(1),
                   " but out has width ", D);
    TINYLLM_EXPECT(out.is_contiguous() && expert_out.is_contiguous() && weights.is_contiguous(),
                   "cuda::moe_combine: out, expert_out and weights must be contiguous");
    tinyllm::detail::expect_combine_memory("cuda::moe_combine", out, expert_out, weights, plan);
    if (T_ == 0 || D == 0) return;
    const int warps = 8;
    const unsigned grid = detail::moe_grid(T_, warps);
    const bool vector4 = std::is_same_v<T, float> && D % 4 == 0 &&
                         reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0 &&
                         reinterpret_cast<std::uintptr_t>(expert_out.data()) % 16 == 0;
    if (vector4) {
        launch(detail::moe_combine_kernel<T, 4>, grid, warps * 32, 0, stream, out.data(), expert_out.data(),
               weights.data(), plan.row_of.data(), T_, D, static_cast<int>(k));
    } else {
        launch(detail::moe_combine_kernel<T, 1>, grid, warps * 32, 0, stream, out.data(), expert_out.data(),
               weights.data(), plan.row_of.data(), T_, D, static_cast<int>(k));
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
}

namespace detail {
// Validate (on the host) and launch combine v2 with LayerNorm (Layer) or RMSNorm.
template <class T, bool Layer>
void launch_moe_combine_residual_norm(std::string_view op, tensor_view<T, 2> out, tensor_view<T, 2> x,
                                      tensor_view<const T, 2> expert_out, tensor_view<const float, 2> weights,
                                      const moe_plan_view& plan, tensor_view<const T, 1> weight,
                                      tensor_view<const T, 1> bias, float eps, cudaStream_t stream) {
    tinyllm::detail::expect_norm_args(op, out, x, weight, bias, eps);
    const index_t tokens = x.extent(0), D = x.extent(1), k = weights.extent(1);
    expect_shape(weights, extents<2>{tokens, k}, std::string(op) + ": weights");
    expect_shape(plan.row_of, extents<2>{tokens, k}, std::string(op) + ": plan.row_of");
    TINYLLM_EXPECT(expert_out.extent(1) == D, op, ": expert_out has width ", expert_out.extent(1), " but x has D = ", D);
    TINYLLM_EXPECT(out.is_contiguous() && x.is_contiguous() && expert_out.is_contiguous() && weights.is_contiguous(),
                   op, ": out, x, expert_out and weights must be contiguous");
    TINYLLM_EXPECT(weight.size() <= 1 || weight.stride(0) == 1, op, ": weight must be contiguous");
    TINYLLM_EXPECT(bias.size() <= 1 || bias.stride(0) == 1, op, ": bias must be contiguous");
    // x is written (the residual add) and out too: each apart from what the kernel
    // reads of other tokens (expert_out, weights, the plan, the norm's parameters).
    // out may be exactly x: each element of a row is read and then written by the
    // thread that stored it, after the row's sums.
    namespace td = tinyllm::detail;
    td::expect_distinct_elements(op, "out", out);
    td::expect_distinct_elements(op, "x", x);
    td::expect_in_place_or_apart(op, "out", out, "x", x);
    for (const auto& [name, y] : {std::pair<std::string_view, tensor_view<T, 2>>{"out", out}, {"x", x}})
        td::expect_apart_from(op, name, y, "expert_out", expert_out, "weights", weights, "plan.row_of", plan.row_of,
                              "weight", weight, "bias", bias);
    if (tokens == 0) return;
    const T* w = weight.size() ? weight.data() : nullptr;
    const T* b = bias.size() ? bias.data() : nullptr;
    // 16-byte accesses when every row and the parameters are 16-byte aligned (as norm v2).
    constexpr int W = vector_width<T>;
    const auto ok = [](const void* p) { return !p || aligned_16(p); };
    const bool wide = D % W == 0 && ok(out.data()) && ok(x.data()) && ok(expert_out.data()) && ok(w) && ok(b);
    const int threads = norm_row_threads(wide ? D / W : D);
    const unsigned blocks = norm_row_blocks(tokens);
    const auto launch_as = [&](auto kernel) {
        launch(kernel, blocks, threads, 0, stream, out.data(), x.data(), expert_out.data(), weights.data(),
               plan.row_of.data(), static_cast<int>(k), w, b, tokens, D, eps);
    };
    if (wide) launch_as(moe_combine_residual_norm_kernel<T, W, Layer>);
    else launch_as(moe_combine_residual_norm_kernel<T, 1, Layer>);
    TINYLLM_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

// Combine v2: x += combine(expert_out), then out = rms_norm(x) (x, out (T, D)),
// in one launch — what a decoder layer does with its MoE block's output (the
// residual add and the next norm), bit for bit moe_combine followed by
// residual_add_rms_norm (LayerNorm: moe_combine_residual_layer_norm).
// expert_out, weights and the plan as in moe_combine. out may be exactly x (the
// normalized row over the residual); otherwise out and x share no memory with
// each other or with the inputs.
//   out (T, D), x (T, D) in place, expert_out (R, D), weights (T, k) float, weight (D)
template <class T>
void moe_combine_residual_rms_norm(tensor_view<T, 2> out, tensor_view<T, 2> x, tensor_view<const T, 2> expert_out,
                                   tensor_view<const float, 2> weights, const moe_plan_view& plan,
                                   tensor_view<const T, 1> weight, float eps, cudaStream_t stream = nullptr) {
    detail::launch_moe_combine_residual_norm<T, false>("cuda::moe_combine_residual_rms_norm", out, x, expert_out,
                                                       weights, plan, weight, {}, eps, stream);
}
template <class T>
void moe_combine_residual_layer_norm(tensor_view<T, 2> out, tensor_view<T, 2> x, tensor_view<const T, 2> expert_out,
                                     tensor_view<const float, 2> weights, const moe_plan_view& plan,
                                     tensor_view<const T, 1> weight, tensor_view<const T, 1> bias, float eps,
                                     cudaStream_t stream = nullptr) {
    detail::launch_moe_combine_residual_norm<T, true>("cuda::moe_combine_residual_layer_norm", out, x, expert_out,
                                                      weights, plan, weight, bias, eps, stream);
}

// Scratch memory for cuda::moe_experts_swiglu, made once and reused: the two
// (rows, F) activations of the experts (gate and up, grown when a call needs
// more and then kept), the host copy of the plan's offsets, and a cuBLAS handle
// made on first use when the caller passes none. A call with a workspace that
// is large enough allocates nothing and returns without waiting for its GEMMs,
// so a workspace serves one stream at a time, and must outlive the work queued
// with it (as a session's scratch does).
class moe_experts_workspace {
public:
    moe_experts_workspace() = default;

    // Room for n elements of T in each activation buffer. Growing waits for
    // `stream` first: its queued GEMMs may still read the old buffers.
    template <class T>
    void reserve(std::size_t n, cudaStream_t stream = nullptr) {
        const std::size_t bytes = n * sizeof(T);
        if (gate_.size() >= bytes && up_.size() >= bytes) return;
        if (gate_.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        gate_ = device_buffer<unsigned char>(bytes);
        up_ = device_buffer<unsigned char>(bytes);
    }
    template <class T>
    T* gate() {
        return reinterpret_cast<T*>(gate_.data());
    }
    template <class T>
    T* up() {
        return reinterpret_cast<T*>(up_.data());
    }
    // Bytes of device memory held (both buffers).
    std::size_t bytes() const { return gate_.size() + up_.size(); }
    // The workspace's own cuBLAS handle, made on first use.
    cublasHandle_t handle() {
        if (!handle_) handle_.emplace();
        return handle_->get();
    }
    std::vector<std::int32_t>& host_offsets() { return offsets_; }
    std::vector<std::int32_t>& host_counts() { return counts_; }

private:
    device_buffer<unsigned char> gate_, up_;  // (rows, F) each, as T
    std::optional<cublas_handle> handle_;
    std::vector<std::int32_t> offsets_, counts_;  // (E + 1), (E): the plan, read back
};

// The experts (the CPU's step 5): every expert's SwiGLU FFN on its rows (cuBLAS GEMMs per expert,
// float accumulation); padding and unused rows of `out` become 0.
//   out (R, D), in (R, D), w1 (E, F, D), w3 (E, F, D), w2 (E, D, F); one element
//   type T for all of them: float, bfloat16 or float16 (intermediates stored as T).
// Reads the plan's offsets back to the host (one synchronisation of `stream`)
// to size the GEMMs; the rest is queued on `stream` and not awaited. The
// intermediates live in `workspace` (grown when too small); handle: a cuBLAS
// handle, or nullptr to use the workspace's own. Once the workspace is large
// enough a call allocates nothing.
template <class O, class I, class W>
void moe_experts_swiglu(tensor_view<O, 2> out, tensor_view<I, 2> in, tensor_view<W, 3> w1, tensor_view<W, 3> w3,
                        tensor_view<W, 3> w2, const moe_plan_view& plan, moe_experts_workspace& workspace,
                        cublasHandle_t handle = nullptr, cudaStream_t stream = nullptr) {
    using T = O;
    static_assert(std::is_same_v<std::remove_const_t<I>, T> && std::is_same_v<std::remove_const_t<W>, T>,
                  "cuda::moe_experts_swiglu: out, in and the weights have one element type");
    const index_t R = in.extent(0), D = in.extent(1), E = w1.extent(0), F = w1.extent(1);
    tinyllm::detail::expect_experts_args(out, in, w1, w3, w2, plan, "cuda::moe_experts_swiglu");
    TINYLLM_EXPECT(out.is_contiguous() && in.is_contiguous() && w1.is_contiguous() && w3.is_contiguous() &&
                       w2.is_contiguous(),
                   "cuda::moe_experts_swiglu: every tensor must be contiguous");
    TINYLLM_EXPECT(D <= INT32_MAX && F <= INT32_MAX && R <= INT32_MAX, "cuda::moe_experts_swiglu: sizes exceed int32");
    std::vector<std::int32_t>& offsets = workspace.host_offsets();
    std::vector<std::int32_t>& counts = workspace.host_counts();
    offsets.resize(static_cast<std::size_t>(E + 1));
    counts.resize(static_cast<std::size_t>(E));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(offsets.data(), plan.expert_offsets.data(), offsets.size() * sizeof(std::int32_t),
                                       cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(counts.data(), plan.expert_counts.data(), counts.size() * sizeof(std::int32_t),
                                       cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    TINYLLM_EXPECT(offsets[E] <= R, "cuda::moe_experts_swiglu: the plan uses ", offsets[E], " rows but in has ", R);
    if (R > 0 && D > 0) TINYLLM_CUDA_CHECK(cudaMemsetAsync(out.data(), 0, static_cast<std::size_t>(R * D) * sizeof(T), stream));
    const index_t used = offsets[E];
    if (used == 0 || F == 0) return;

    const cublasHandle_t h = handle ? handle : workspace.handle();
    TINYLLM_CUBLAS_CHECK(detail::cublas_set_stream(h, stream));
    workspace.reserve<T>(static_cast<std::size_t>(used * F), stream);
    T* const gate = workspace.gate<T>();  // (used, F)
    T* const up = workspace.up<T>();      // (used, F)
    const float one = 1.0f, zero = 0.0f;
    const int d = static_cast<int>(D), f = static_cast<int>(F);
    constexpr cudaDataType_t type = cuda_data_type<T>();
    // Row-major (m, n) is column-major (n, m): C^T (rows_out, m) = W (rows_out, K) · X^T (K, m).
    auto gemm = [&](int rows_out, int m, int k, const T* w, const T* x, T* y) {
        const detail::observed_launch observed(nullptr, "cublasGemmEx", stream);  // launch.cuh: a timeline's span
        TINYLLM_CUBLAS_CHECK(detail::cublas_gemm_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, rows_out, m, k, &one, w, type, k, x,
                                                    type, k, &zero, y, type, rows_out, CUBLAS_COMPUTE_32F,
                                                    CUBLAS_GEMM_DEFAULT));
    };
    for (index_t e = 0; e < E; ++e) {
        const int m = counts[static_cast<std::size_t>(e)];
        if (m == 0) continue;
        const index_t first = offsets[static_cast<std::size_t>(e)];
        const T* x = in.data() + first * D;
        gemm(f, m, d, w1.data() + e * F * D, x, gate + first * F);
        gemm(f, m, d, w3.data() + e * F * D, x, up + first * F);
    }
    // gate <- silu(gate) * up over every used row (padding rows are never read).
    launch(detail::moe_silu_mul_kernel<T>, detail::moe_grid(used * F, 256), 256, 0, stream, gate, gate, up, used * F);
    TINYLLM_CUDA_CHECK_LAUNCH();
    for (index_t e = 0; e < E; ++e) {
        const int m = counts[static_cast<std::size_t>(e)];
        if (m == 0) continue;
        const index_t first = offsets[static_cast<std::size_t>(e)];
        gemm(d, m, f, w2.data() + e * D * F, gate + first * F, out.data() + first * D);
    }
}

// The same with a temporary workspace: it allocates the intermediates, and
// waits for `stream` before returning (and freeing them). handle: a cuBLAS
// handle, or nullptr to make one. For repeated calls keep a workspace.
template <class O, class I, class W>
void moe_experts_swiglu(tensor_view<O, 2> out, tensor_view<I, 2> in, tensor_view<W, 3> w1, tensor_view<W, 3> w3,
                        tensor_view<W, 3> w2, const moe_plan_view& plan, cublasHandle_t handle = nullptr,
                        cudaStream_t stream = nullptr) {
    moe_experts_workspace workspace;
    moe_experts_swiglu(out, in, w1, w3, w2, plan, workspace, handle, stream);
    // The scratch buffers are freed when this returns; wait so that the GEMMs are done with them.
    if (workspace.bytes() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// ---- Step 5 in a decode step: the experts as grouped GEMVs -----------------------------------
//
// A decode step routes a few tokens (at most 8 rows, k slots each), so an expert
// gets at most 8 rows: its products are matrix-vector products, whose time is the
// expert's weights' bytes (gemv.cuh). moe_experts_swiglu sizes its cuBLAS GEMMs on
// the host, so it reads the plan's offsets back and waits for them: one round trip
// per MoE layer, and a step that cannot be captured in a CUDA graph.
// moe_experts_swiglu_gemv reads the plan where it lies, in device memory:
//
//   1. gate, up   grid (F units, E): block column e reads counts[e]; an expert no
//                 slot chose returns at once (its weights are never read), the
//                 others run the pair GEMV on rows offsets[e] .. of `in` with row j
//                 of W1[e] and of W3[e], and the SwiGLU epilogue (ffn.cuh) writes
//                 hidden = silu(x W1[e]^T) * (x W3[e]^T)
//   2. down       the same over D with W2[e] (two neighbouring rows a warp) and a
//                 plain store: out = hidden W2[e]^T
//
// Bytes: the chosen experts' weights only, 3 F D s each (s bytes per element); at
// batch 1 a Mixtral layer reads k = 2 of its 8 experts, as the GEMM path does. The
// roundings are the GEMM path's (each product rounded to T, SwiGLU of the rounded
// values, stored as T); the sums run in another order, so the result is within a
// rounding of moe_experts_swiglu's, not its bits. Nothing is read back and nothing
// waited for, so cuda::model's decode step captures it in its graph.
//
// Expected speed: the chosen experts' bytes over the bandwidth, e.g.
// Mixtral-8x7B's two experts of a token in bf16 (2 x 3 x 14336 x 4096 x 2 B =
// 705 MB) in ~0.18 ms at 4 TB/s; `tinyllm bench moe_experts_gemv` sets it
// beside the GEMM path. Measured (H200, 2026-12-04, one token): 278 µs
// (2.53 TB/s) against 232 µs for cuBLAS per expert (docs/gpu.md, run D).

// The experts for at most a few rows an expert, as above:
//   out (R, D), in (R, D), w1 (E, F, D), w3 (E, F, D), w2 (E, D, F), hidden (R, F)
//   scratch; one element type T (float, bfloat16, float16); all contiguous.
// Only the rows of the plan's kept slots are written (the GEMM path also zeroes
// padding rows; combine reads neither). Rows any expert has are taken 8 at a
// time, so the result holds for any plan; the speed is a GEMV's only while every
// expert has few rows. Asynchronous on `stream`; allocates nothing.
template <class O, class I, class W, class H>
void moe_experts_swiglu_gemv(tensor_view<O, 2> out, tensor_view<I, 2> in, tensor_view<W, 3> w1,
                             tensor_view<W, 3> w3, tensor_view<W, 3> w2, const moe_plan_view& plan,
                             tensor_view<H, 2> hidden, cudaStream_t stream = nullptr) {
    using T = O;
    static_assert(std::is_same_v<std::remove_const_t<I>, T> && std::is_same_v<std::remove_const_t<W>, T> &&
                      std::is_same_v<H, T>,
                  "cuda::moe_experts_swiglu_gemv: out, in, hidden and the weights have one element type");
    constexpr std::string_view op = "cuda::moe_experts_swiglu_gemv";
    const index_t R = in.extent(0), D = in.extent(1), E = w1.extent(0), F = w1.extent(1);
    tinyllm::detail::expect_experts_args(out, in, w1, w3, w2, plan, std::string(op));
    expect_shape(hidden, extents<2>{R, F}, std::string(op) + ": hidden");
    TINYLLM_EXPECT(out.is_contiguous() && in.is_contiguous() && hidden.is_contiguous() && w1.is_contiguous() &&
                       w3.is_contiguous() && w2.is_contiguous(),
                   op, ": every tensor must be contiguous");
    TINYLLM_EXPECT(plan.expert_offsets.extent(0) == E + 1 && plan.expert_offsets.is_contiguous() &&
                       plan.expert_counts.is_contiguous(),
                   op, ": the plan's expert_offsets must be (E + 1) = (", E + 1, ") and contiguous, as its counts");
    if (R == 0 || D == 0 || F == 0 || E == 0) return;
    const std::int32_t* offsets = plan.expert_offsets.data();
    const std::int32_t* counts = plan.expert_counts.data();
    const detail::swiglu_gemv_epilogue<T> up{hidden.data(), F};
    detail::launch_grouped_pair_gemv<T>(op, up, in.data(), R, w1.data(), w3.data(), F * D, E, offsets, counts, D,
                                        up.units(), stream);
    const detail::bias_activate_gemv_epilogue<T> down{out.data(), nullptr, D, activation::identity};
    const T* h = hidden.data();
    detail::launch_grouped_pair_gemv<T>(op, down, h, R, w2.data(), w2.data(), D * F, E, offsets, counts, F,
                                        down.units(), stream);
}

// ---- Backward ------------------------------------------------------------------------------
//
// cuda::moe_backward is cpu::moe_backward (moe_dispatch.hpp) on the GPU, float
// tensors: the forward recomputed with the GPU forward's own functions (a
// cuBLAS router, the fused gating kernel, the deterministic plan, gather, the
// experts' GEMMs), then each step's transpose:
//   combine    one warp per (token, slot): dy_sorted[row] = w dout[t] and
//              dweights(t, j) = <dout[t], y_sorted[row]> by a fixed shuffle tree
//   experts    per expert, cuBLAS GEMMs: dh = dy W2, dW2 (+)= dy^T h, one
//              swiglu_backward over all rows, dx_sorted = dgate W1 + dup W3,
//              dW1 (+)= dgate^T x_sorted, dW3 (+)= dup^T x_sorted
//   gather     dx[t] = sum_j dx_sorted[row_of(t, j)], slots in order
//   gating     cuda::softmax_topk_gating_backward (moe_gating.cuh)
//   router     drouter (+)= dlogits^T x and dx += dlogits router, cuBLAS
// No float atomics anywhere: the results are the same bits on every run.

namespace detail {

// Combine's transpose, one warp per (token, slot) i = t k + j.
template <class T>
__global__ void moe_combine_backward_kernel(T* dy_sorted, float* dweights, const T* dout, const T* y_sorted,
                                            const float* weights, const std::int32_t* row_of, index_t slots,
                                            index_t width, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (index_t i = blockIdx.x * static_cast<index_t>(warps) + (threadIdx.x >> 5); i < slots;
         i += static_cast<index_t>(gridDim.x) * warps) {
        const index_t t = i / k;
        const std::int32_t row = row_of[i];
        float dot = 0.0f;
        if (row >= 0) {  // the same for the whole warp
            const float w = weights[i];
            for (index_t d = lane; d < width; d += 32) {
                const float g = to_float(dout[t * width + d]);
                dot += g * to_float(y_sorted[static_cast<index_t>(row) * width + d]);
                dy_sorted[static_cast<index_t>(row) * width + d] = store_as<T>(w * g);
            }
        }
        for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(moe_full_warp, dot, offset);
        if (lane == 0) dweights[i] = dot;  // a dropped slot: 0
    }
}

// Gather's transpose: dx[t, d] = sum over the token's kept slots, in slot order, of dx_sorted[row, d].
template <class T>
__global__ void moe_gather_backward_kernel(T* dx, const T* dx_sorted, const std::int32_t* row_of, index_t tokens,
                                           index_t width, int k) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < tokens * width;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const index_t t = i / width, d = i % width;
        float sum = 0.0f;
        for (int j = 0; j < k; ++j) {
            const std::int32_t row = row_of[t * k + j];
            if (row >= 0) sum += to_float(dx_sorted[static_cast<index_t>(row) * width + d]);
        }
        dx[i] = store_as<T>(sum);
    }
}

}  // namespace detail

// Scratch memory for cuda::moe_backward: the recomputed forward's
// intermediates and the backward's, grown to fit a call and then kept, plus
// the plan's workspace. One workspace serves one stream at a time.
class moe_backward_workspace {
public:
    moe_backward_workspace() = default;

    // Room for `bytes`; growing waits for `stream` (earlier work may still use the old buffer).
    unsigned char* reserve(std::size_t bytes, cudaStream_t stream) {
        if (buffer_.size() < bytes) {
            if (buffer_.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
            buffer_ = device_buffer<unsigned char>(bytes);
        }
        return buffer_.data();
    }
    // The plan's workspace for `slots` slots and E experts.
    template <class = void>  // compiled only where called (launch.cuh), as the workspace's constructor
    moe_dispatch_workspace& dispatch(index_t slots, index_t experts, cudaStream_t stream) {
        if (!dispatch_ || dispatch_->slots() < slots || dispatch_->experts() != experts) {
            if (dispatch_) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
            dispatch_.emplace(slots, experts);
        }
        return *dispatch_;
    }
    std::vector<std::int32_t>& host_offsets() { return offsets_; }
    std::vector<std::int32_t>& host_counts() { return counts_; }

private:
    device_buffer<unsigned char> buffer_;
    std::optional<moe_dispatch_workspace> dispatch_;
    std::vector<std::int32_t> offsets_, counts_;
};

// The backward of the Mixtral block (cpu::moe_forward; softmax -> top-k ->
// renormalize, SwiGLU experts) on the GPU, with cpu::moe_backward's arguments
// and meaning: dx (T, D), drouter (E, D), dw1, dw3 (E, F, D), dw2 (E, D, F),
// each empty when not wanted (dx overwritten; the others overwritten or, with
// `accumulate`, added to); dout (T, D); dlogits_extra (T, E) or empty (an
// auxiliary loss's gradient at the router logits); x, router, w1, w3, w2, k and
// options as given to the forward. float tensors, contiguous, on the device.
// Reads the plan's offsets back to the host (one wait on `stream`) to size the
// experts' GEMMs.
template <class = void>  // compiled only where called (launch.cuh)
inline void moe_backward(tensor_view<float, 2> dx, tensor_view<float, 2> drouter, tensor_view<float, 3> dw1,
                         tensor_view<float, 3> dw3, tensor_view<float, 3> dw2, tensor_view<const float, 2> dout,
                         tensor_view<const float, 2> dlogits_extra, tensor_view<const float, 2> x,
                         tensor_view<const float, 2> router, tensor_view<const float, 3> w1,
                         tensor_view<const float, 3> w3, tensor_view<const float, 3> w2, index_t k,
                         const moe_dispatch_options& options, moe_backward_workspace& ws, const cublas_handle& handle,
                         bool accumulate = false, cudaStream_t stream = nullptr) {
    constexpr const char* op = "cuda::moe_backward";
    tinyllm::detail::expect_moe_backward_args(op, dx, drouter, dw1, dw3, dw2, dout, dlogits_extra, x, router, w1, w3,
                                              w2);
    tinyllm::detail::expect_dispatch_options(options, op);
    const auto contiguous = [](const auto& v) { return v.size() == 0 || v.is_contiguous(); };
    TINYLLM_EXPECT(contiguous(dx) && contiguous(drouter) && contiguous(dw1) && contiguous(dw3) && contiguous(dw2) &&
                       contiguous(dout) && contiguous(dlogits_extra) && contiguous(x) && contiguous(router) &&
                       contiguous(w1) && contiguous(w3) && contiguous(w2),
                   op, ": every tensor must be contiguous");
    const index_t T = x.extent(0), D = x.extent(1), E = router.extent(0), F = w1.extent(1);
    TINYLLM_EXPECT(k >= 1 && k <= E, op, ": k = ", k, " must be in [1, E = ", E, "]");
    const index_t R = moe_max_rows(T, k, E, options.block);
    TINYLLM_EXPECT(R <= INT32_MAX, op, ": ", R, " rows do not fit int32 row numbers");
    const auto zero = [&](float* g, index_t elements) {
        if (g == nullptr || elements == 0 || accumulate) return;
        launch(detail::zero_matrix_kernel<float>, static_cast<unsigned>(ceil_div<index_t>(elements, 256)), 256, 0,
               stream, g, index_t{1}, elements, elements, index_t{1});
        TINYLLM_CUDA_CHECK_LAUNCH();
    };
    if (T == 0) {  // no tokens: every parameter gradient is an empty sum
        zero(drouter.data(), drouter.size());
        zero(dw1.data(), dw1.size());
        zero(dw3.data(), dw3.size());
        zero(dw2.data(), dw2.size());
        return;
    }

    // Carve the scratch buffer: (T, E) x2, (T, k) x4, plan, (R, D) x3, (R, F) x4.
    std::size_t bytes = 0;
    const auto room = [&](index_t elements) {
        const std::size_t at = bytes;
        bytes += (static_cast<std::size_t>(elements) * 4 + 255) / 256 * 256;
        return at;
    };
    const std::size_t o_logits = room(T * E), o_dlogits = room(T * E), o_ids = room(T * k), o_weights = room(T * k),
                      o_dweights = room(T * k), o_row_of = room(T * k), o_row_token = room(R),
                      o_offsets = room(E + 1), o_counts = room(E), o_xs = room(R * D), o_ys = room(R * D),
                      o_dys = room(R * D), o_gate = room(R * F), o_up = room(R * F), o_h = room(R * F),
                      o_dh = room(R * F);
    unsigned char* base = ws.reserve(bytes > 0 ? bytes : 1, stream);
    const auto f32 = [&](std::size_t at) { return reinterpret_cast<float*>(base + at); };
    const auto i32 = [&](std::size_t at) { return reinterpret_cast<std::int32_t*>(base + at); };
    const tensor_view<float, 2> logits(f32(o_logits), {T, E}), dlogits(f32(o_dlogits), {T, E});
    const tensor_view<std::int32_t, 2> ids(i32(o_ids), {T, k});
    const tensor_view<float, 2> weights(f32(o_weights), {T, k}), dweights(f32(o_dweights), {T, k});
    const moe_plan_view plan{tensor_view<std::int32_t, 2>(i32(o_row_of), {T, k}),
                             tensor_view<std::int32_t, 1>(i32(o_row_token), {R}),
                             tensor_view<std::int32_t, 1>(i32(o_offsets), {E + 1}),
                             tensor_view<std::int32_t, 1>(i32(o_counts), {E})};
    float *const xs = f32(o_xs), *const ys = f32(o_ys), *const dys = f32(o_dys);
    float *const gate = f32(o_gate), *const up = f32(o_up), *const h = f32(o_h), *const dh = f32(o_dh);

    // The forward again: logits, gating, plan, gather.
    linear<float>(logits, x, router, {}, handle, stream);
    softmax_topk_gating(ids, weights, tensor_view<const float, 2>(logits), true, stream);
    moe_plan(plan, tensor_view<const std::int32_t, 2>(ids), options, ws.dispatch(T * k, E, stream), stream);
    moe_gather(tensor_view<float, 2>(xs, {R, D}), x, plan, stream);
    std::vector<std::int32_t>& offsets = ws.host_offsets();
    std::vector<std::int32_t>& counts = ws.host_counts();
    offsets.resize(static_cast<std::size_t>(E + 1));
    counts.resize(static_cast<std::size_t>(E));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(offsets.data(), plan.expert_offsets.data(), offsets.size() * sizeof(std::int32_t),
                                       cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(counts.data(), plan.expert_counts.data(), counts.size() * sizeof(std::int32_t),
                                       cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    const index_t used = offsets[static_cast<std::size_t>(E)];

    // Expert e's rows of an (R, width) buffer, and its weights.
    const auto rows = [&](float* buffer, index_t width, index_t e) {
        return tensor_view<float, 2>(buffer + static_cast<index_t>(offsets[static_cast<std::size_t>(e)]) * width,
                                     {counts[static_cast<std::size_t>(e)], width});
    };
    const auto crows = [&](float* buffer, index_t width, index_t e) { return tensor_view<const float, 2>(rows(buffer, width, e)); };
    const auto gemm = [&](tensor_view<float, 2> c, tensor_view<const float, 2> a, tensor_view<const float, 2> b, float beta) {
        detail::gemm<float, float>(c, a, b, beta, handle, stream, op);
    };
    const float beta_w = accumulate ? 1.0f : 0.0f;
    for (index_t e = 0; e < E; ++e) {
        if (counts[static_cast<std::size_t>(e)] == 0) continue;
        gemm(rows(gate, F, e), crows(xs, D, e), w1.slice(0, e).transpose(0, 1), 0.0f);
        gemm(rows(up, F, e), crows(xs, D, e), w3.slice(0, e).transpose(0, 1), 0.0f);
    }
    if (used > 0) swiglu<float>(tensor_view<float, 2>(h, {used, F}), tensor_view<const float, 2>(gate, {used, F}),
                                tensor_view<const float, 2>(up, {used, F}), stream);
    for (index_t e = 0; e < E; ++e)
        if (counts[static_cast<std::size_t>(e)] > 0) gemm(rows(ys, D, e), crows(h, F, e), w2.slice(0, e).transpose(0, 1), 0.0f);

    // Combine: dy_sorted and dweights.
    if (T * k > 0) {
        const int warps = 8;
        launch(detail::moe_combine_backward_kernel<float>, detail::moe_grid(T * k, warps), warps * 32, 0, stream, dys,
               dweights.data(), dout.data(), static_cast<const float*>(ys), static_cast<const float*>(weights.data()),
               static_cast<const std::int32_t*>(plan.row_of.data()), T * k, D, static_cast<int>(k));
        TINYLLM_CUDA_CHECK_LAUNCH();
    }

    // Experts: dh = dy W2 and dW2; then dgate (into dh) and dup (into h); then dx_sorted (into ys), dW1, dW3.
    const auto zero_expert = [&](tensor_view<float, 3> g, index_t e) {
        if (g.size()) zero(g.data() + e * g.extent(1) * g.extent(2), g.extent(1) * g.extent(2));
    };
    for (index_t e = 0; e < E; ++e) {
        if (counts[static_cast<std::size_t>(e)] == 0) {  // no token: an empty sum
            zero_expert(dw1, e);
            zero_expert(dw3, e);
            zero_expert(dw2, e);
            continue;
        }
        gemm(rows(dh, F, e), crows(dys, D, e), w2.slice(0, e), 0.0f);
        if (dw2.size()) gemm(dw2.slice(0, e), crows(dys, D, e).transpose(0, 1), crows(h, F, e), beta_w);
    }
    if (used > 0)
        swiglu_backward<float>(tensor_view<float, 2>(dh, {used, F}), tensor_view<float, 2>(h, {used, F}),
                               tensor_view<const float, 2>(dh, {used, F}), tensor_view<const float, 2>(gate, {used, F}),
                               tensor_view<const float, 2>(up, {used, F}), stream);
    for (index_t e = 0; e < E; ++e) {
        if (counts[static_cast<std::size_t>(e)] == 0) continue;
        if (dx.size()) {
            gemm(rows(ys, D, e), crows(dh, F, e), w1.slice(0, e), 0.0f);
            gemm(rows(ys, D, e), crows(h, F, e), w3.slice(0, e), 1.0f);
        }
        if (dw1.size()) gemm(dw1.slice(0, e), crows(dh, F, e).transpose(0, 1), crows(xs, D, e), beta_w);
        if (dw3.size()) gemm(dw3.slice(0, e), crows(h, F, e).transpose(0, 1), crows(xs, D, e), beta_w);
    }

    // Gating (plus the extra gradient), router, and dx.
    if (dlogits_extra.size())
        TINYLLM_CUDA_CHECK(cudaMemcpyAsync(dlogits.data(), dlogits_extra.data(), static_cast<std::size_t>(T * E) * sizeof(float),
                                           cudaMemcpyDeviceToDevice, stream));
    softmax_topk_gating_backward(dlogits, dweights, logits, true, dlogits_extra.size() != 0, stream);
    if (drouter.size()) gemm(drouter, tensor_view<const float, 2>(dlogits).transpose(0, 1), x, beta_w);
    if (dx.size()) {
        if (D > 0)
            launch(detail::moe_gather_backward_kernel<float>, detail::moe_grid(T * D, 256), 256, 0, stream, dx.data(),
                   static_cast<const float*>(ys), static_cast<const std::int32_t*>(plan.row_of.data()), T, D,
                   static_cast<int>(k));
        TINYLLM_CUDA_CHECK_LAUNCH();
        gemm(dx, dlogits, router, 1.0f);
    }
}

}  // namespace tinyllm::cuda
