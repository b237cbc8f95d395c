// tinyllm/cuda/attention_flash2.cuh — attention v5: FlashAttention-2's whole
// forward recipe on mma.sync tensor cores (bf16/fp16 inputs, float
// accumulation): 128-row query blocks over 8 warps, K and V loaded as separate
// cp.async stages that overlap the two matrix products, exp2 softmax with the
// scale folded in, XOR-swizzled shared memory, a heaviest-first block order and
// per-warp skipping of masked tiles.
//
// What it computes is v4's (attention_mma.cuh), and its math: for each query
// row i, O_i = sum_j softmax_j(logit(q_i . k_j)) v_j over the visible keys,
// computed one 64-key tile at a time with the online softmax (running max m,
// running sum l, output rescaled by exp(m_old - m_new)). The fragment layouts
// of mma.m16n8k16 and ldmatrix are v4's; read its header first.
//
// v4 -> v5   v4 reached 104 TFLOP/s on an H200 (B=8 T=2048 H=16 D=128,
//            causal), 0.37x PyTorch's flash kernel, with 228 registers per
//            thread at D=128. The changes, each with its EXPECTED effect (none
//            is measured yet: this file has not run on a GPU):
//
//   * 128 query rows per block over 8 warps of 16 rows (v4: 64 rows, 4 warps).
//     Each K/V tile copied to shared memory now serves 128 rows instead of 64:
//     K/V global/L2 traffic halves, and the loads are spread over 256 threads.
//     The alternative, 4 warps of 32 rows, reuses each K/V fragment read from
//     shared memory for two 16-row MMA tiles (half the ldmatrix traffic), but
//     doubles the per-thread accumulators (D=128: O alone 128 floats, S 64) —
//     past the 255-register limit with the Q fragments, i.e. spills, which is
//     what v4's 228 registers already flirted with. 16 rows per warp keeps
//     O at D/2 floats and S at 32 per thread. Expected: ~1.2x from the halved
//     K/V traffic.
//   * Registers: __launch_bounds__(256, 1). At D = 128 the Q fragments
//     (32 registers) are not kept in registers but re-read from shared memory
//     with ldmatrix for every key tile (FlashAttention-2's default too): a
//     16 x 128 Q slice per tile is a quarter of the K slice the warp reads
//     anyway. At D = 64 Q stays in registers (16). Masks use int key ranges
//     computed once per row, not 64-bit per element, and the swizzled ldmatrix
//     addresses are written as 4 per-lane values plus immediates
//     (tinyllm::detail::swizzled_step). nvcc 13, sm_90, -O3 -Xptxas -v:
//     D = 128: 238 registers, D = 64: 198, no spills. A cap of 128 registers
//     (__launch_bounds__(256, 2), two blocks per SM) spilled 272 / 120 bytes
//     per thread, so one 8-warp block per SM it is, for now; bringing the
//     count under 128 (the compiler hoists ldmatrix loads far ahead of their
//     mma when registers are free) is the next step of this rung. Since run D
//     the logit without soft-cap or ALiBi has its own instantiation (Plain:
//     233 and 180 registers), and at D = 64 attention_flash2<T, 2> compiles
//     for two blocks per SM (128 registers, 48 bytes spilled; see below).
//   * K and V pipelined as separate cp.async stages (FlashAttention-2's
//     schedule, one K and one V buffer):
//         wait K[j], barrier  ->  issue V[j]   ->  S = Q K[j]^T (V[j] in flight)
//         wait V[j], barrier  ->  issue K[j+1] ->  softmax, O += P V[j] (K[j+1] in flight)
//     Each copy overlaps one matrix product, and shared memory holds Q + one K
//     + one V tile: 64 KiB at D = 128 (v4's double buffers of both took 85 KiB
//     for half the rows), so shared memory would allow 3 blocks/SM; registers
//     decide (above). Expected: the copy latency is hidden as well as with
//     v4's double buffering, at 2/3 of the memory per row.
//   * exp2 with the scale folded in: scores are multiplied by
//     scale * log2(e) once, and every exponential is exp2(x - m) (one FFMA
//     feeding MUFU.EX2; exp(x) is exp2(x * log2 e) on the GPU anyway, so v4's
//     __expf paid a multiply per element on top of the scale). A row whose
//     running max is still -inf uses 0 as its max, so exp2(-inf - 0) = 0
//     needs no per-element test for masked scores (v4's exp_shifted compared
//     every score with -inf). Soft-cap and ALiBi take the general path (the
//     CPU reference's logit, times log2 e); the mathematically equal result
//     differs from v4 by float rounding only. Expected: the softmax, which
//     runs on the CUDA cores between the tensor-core products, gets ~30%
//     cheaper.
//   * Heaviest blocks first, globally. The grid is (Hq * B, query blocks):
//     the hardware starts blocks x-fastest, so every head's last (under causal
//     the longest) query block runs in the first wave, and the last wave holds
//     the shortest blocks (v4 reversed the order within one head only, so each
//     head's short blocks started before the next head's long ones).
//     Neighbouring x are neighbouring heads, which share K/V under GQA (L2
//     hits). Expected: a shorter tail at the end of a causal launch, ~5-10%
//     at B*H = 128.
//   * Per-warp masking: each warp classifies the tile against its own 16 rows.
//     On the causal diagonal a 128-row block sees two partial 64-key tiles; for
//     each, half of the warps see all of it (no per-element mask) or none of
//     it (no product at all: they skip straight to the barriers). Expected:
//     the diagonal costs 2 tile-products per warp-row instead of 2 masked ones
//     plus 1 wasted, ~4% of a T = 2048 causal launch.
//   * XOR-swizzled shared memory instead of padding: chunk c (16 bytes) of
//     row r is stored at chunk c ^ (r % 8) of a row of exactly D elements
//     (tinyllm::detail::mma_swizzle; the CPU test checks, by emulating
//     ldmatrix, that each of its matrices' 8 row segments hits 8 different
//     bank groups, and that the map is a bijection). Same conflict-free reads
//     as v4's padding, without the 6% (D = 128) or 12% (D = 64) of shared
//     memory padding wastes, and 16-byte cp.async writes stay conflict-free.
//     Expected: neutral in time, it is what makes the memory budget above fit.
//   * The output goes through shared memory: each warp writes its 16 x D
//     output tile into its own (finished) rows of the Q tile, then copies them
//     out as 16-byte rows (v4: 4-byte stores, 8 rows per instruction).
//     Expected: small (O is written once), fewer store instructions.
//
// Together the expected effect is to bring the kernel near FlashAttention-2's
// own mma.sync numbers; whether it reaches PyTorch's flash kernel (the target:
// >= 1x) is for a GPU run to say (`tinyllm bench attention`, rows v5).
//
// Not done (the Hopper rung): wgmma with TMA loads and warp specialization
// (sm_90a), what FlashAttention-3 and cuDNN use on an H100/H200.
//
// Supported: exactly v4's set — T = bfloat16 or float16; head dims 64 and 128;
// every option of the CPU reference (causal, window, ALiBi, soft-cap,
// padding), GQA/MQA, Tq != Tk (causal bottom-right aligned); strides that are
// multiples of 8 elements with 16-byte aligned pointers; sm_80 or newer.
// Anything else is rejected on the host with a message that says why.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_mma.cuh>  // cp_async_16, ldmatrix_x4(_trans), mma_16816, pack2
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/detail/attention_mma_layout.hpp>

#include <cstdint>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int flash2_threads = 256;  // 8 warps
inline constexpr int flash2_bq = 128;       // query rows per block (16 per warp)
inline constexpr int flash2_bk = 64;        // keys per tile
inline constexpr int flash2_warp_rows = 16;

// Bytes of shared memory: Q (128 rows) + one K and one V tile (64 rows), rows of D 16-bit elements.
TINYLLM_HOST_DEVICE constexpr int flash2_smem_bytes(int d) { return (flash2_bq + 2 * flash2_bk) * d * 2; }

// Copy ROWS rows of D elements (row r at src + r * row_stride) into a swizzled
// [ROWS][D] tile; rows at or past `valid` are zero-filled (nothing is read).
// Thread tid moves chunks tid, tid + 256, ...: chunk c is row c / (D / 8),
// elements 8 (c % (D / 8)) .. +7, so consecutive threads read consecutive 16
// bytes of global memory and write distinct bank groups.
template <int ROWS, int D, class T>
__device__ __forceinline__ void flash2_load_tile(T* dst, const T* src, index_t row_stride, int valid, int tid) {
    constexpr int CHUNKS = D / 8;
    static_assert(ROWS * CHUNKS % flash2_threads == 0, "every thread moves the same number of chunks");
#pragma unroll
    for (int i = 0; i < ROWS * CHUNKS / flash2_threads; ++i) {
        const int c = tid + i * flash2_threads;
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool in = r < valid;
        cp_async_16(dst + tinyllm::detail::mma_swizzle(r, col, D), in ? src + r * row_stride + col : src, in ? 16 : 0);
    }
}

// Block (h + Hq * b, query block counted from the end). T: bfloat16 or float16.
// MinBlocks: 8-warp blocks per SM the registers must allow (launch bounds).
// Plain: launched only when the logit is the scaled dot product (no soft-cap, no
// ALiBi), so the general logit's code and registers are left out.
template <class T, int D, int MinBlocks, bool Plain>
__global__ void __launch_bounds__(flash2_threads, MinBlocks) attention_flash2_kernel(attention_args<T> a) {
#if TINYLLM_CUDA_ARCH >= 800
    constexpr bool q_in_registers = D <= 64;  // D = 128: re-read Q from shared memory per tile (registers)
    constexpr int CHUNKS = D / 8;
    constexpr float log2e = 1.4426950408889634f;
    T* qs = dynamic_shared<T>();  // [128][D] swizzled; warp w's rows 16w .. 16w+15 later hold its output
    T* ks = qs + flash2_bq * D;   // [64][D] swizzled
    T* vs = ks + flash2_bk * D;   // [64][D] swizzled

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4;  // accumulator rows g and g + 8 (tinyllm::detail::mma_c_row)
    const int h = static_cast<int>(blockIdx.x % static_cast<unsigned>(a.Hq));
    const int b = static_cast<int>(blockIdx.x / static_cast<unsigned>(a.Hq));
    const int hkv = h / a.group;
    // The last query block (the longest under causal) first: see "Heaviest blocks first".
    const int q0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * flash2_bq;
    const int wq0 = q0 + warp * flash2_warp_rows;  // this warp's first query row
    const index_t length = a.length(b);

    // The key tiles any row of the block may see; the others are never loaded.
    const key_range range = attention_tile_keys(a.mask, q0, flash2_bq, length);
    const int t_begin = static_cast<int>(range.begin / flash2_bk);
    const int t_end = static_cast<int>(ceil_div<index_t>(range.end, flash2_bk));
    // Keys past the row's length are zero-filled, never read (padding may hold NaN, and 0 * NaN = NaN).
    auto load_k = [&](int tile) {
        const int k0 = tile * flash2_bk;
        flash2_load_tile<flash2_bk, D>(ks, a.k_row(b, k0, hkv), a.k_st, static_cast<int>(length - k0), tid);
    };
    auto load_v = [&](int tile) {
        const int k0 = tile * flash2_bk;
        flash2_load_tile<flash2_bk, D>(vs, a.v_row(b, k0, hkv), a.v_st, static_cast<int>(length - k0), tid);
    };

    // ---- prologue: Q (one group), K of the first tile (the next) ----
    flash2_load_tile<flash2_bq, D>(qs, a.q_row(b, q0, h), a.q_st, a.Tq - q0, tid);
    cp_async_commit();
    if (t_begin < t_end) load_k(t_begin);
    cp_async_commit();
    cp_async_wait<1>();  // Q has landed (K may still be in flight)
    __syncthreads();
    const T* qw = qs + warp * flash2_warp_rows * D;  // this warp's 16 rows (a multiple of 8: the swizzle is the tile's)
    // D = 64: the A fragments of Q stay in registers (qf[kk]: features 16kk .. 16kk+15).
    std::uint32_t qf[q_in_registers ? D / 16 : 1][4];
    if constexpr (q_in_registers) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], qw + tinyllm::detail::swizzled_q_offset(lane, D, kk));
    }

    // The two query rows this thread holds, their visible keys (as int: Tk < 2^31) and positions.
    const int row0 = wq0 + g, row1 = row0 + 8;
    const key_range keys0 = attention_visible_keys(a.mask, row0, length);
    const key_range keys1 = attention_visible_keys(a.mask, row1, length);
    const int begin0 = static_cast<int>(keys0.begin), end0 = static_cast<int>(keys0.end);
    const int begin1 = static_cast<int>(keys1.begin), end1 = static_cast<int>(keys1.end);
    const index_t pos0 = a.mask.query_position(row0), pos1 = a.mask.query_position(row1);
    // Plain logits (no soft-cap, no ALiBi): x = dot * scale * log2 e, one multiply.
    const bool plain = Plain || (!(a.softcap > 0.0f) && a.slopes == nullptr);  // Plain: the launcher checked
    const float scale_log2 = a.scale * log2e;

    float o[D / 8][4];  // O rows (g, g+8) x features (8n + 2t, +1): D/8 C tiles
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running max of rows g, g+8 in log2 units (same in a quad)
    float l0 = 0.0f, l1 = 0.0f;            // running sum: this lane's columns only, summed over the quad at the end

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int k0 = tile * flash2_bk;
        cp_async_wait<0>();  // K[tile] has landed (this thread's copies) ...
        __syncthreads();     // ... everyone's; and every warp is done with V[tile - 1]
        load_v(tile);        // V[tile] flies while S = Q K^T runs
        cp_async_commit();

        // This warp's own view of the tile: skip (no row sees a key: no product at all),
        // full (no per-element mask) or partial. Warp-uniform, so no divergence.
        const attention_tile kind = attention_classify_tile(a.mask, wq0, flash2_warp_rows, k0, flash2_bk, length);
        const bool active = kind != attention_tile::skip;

        // ---- S = Q K^T: 16 rows x 64 keys per warp = 8 C tiles ----
        float s[flash2_bk / 8][4];
#pragma unroll
        for (int n = 0; n < flash2_bk / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        if (active) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                // Features 16kk .. 16kk+15 of the 64 keys, against qa = Q's A fragment of the same features.
                auto qk = [&](const std::uint32_t(&qa)[4]) {
#pragma unroll
                    for (int np = 0; np < flash2_bk / 16; ++np) {
                        std::uint32_t kf[4];  // b0, b1 of key tiles 2np and 2np+1 (v4's mma_k_offset, swizzled)
                        ldmatrix_x4(kf, ks + tinyllm::detail::swizzled_k_offset(lane, D, np, kk));
                        mma_16816<T>(s[2 * np], qa, kf[0], kf[1]);
                        mma_16816<T>(s[2 * np + 1], qa, kf[2], kf[3]);
                    }
                };
                if constexpr (q_in_registers) {
                    qk(qf[kk]);
                } else {
                    std::uint32_t qa[4];
                    ldmatrix_x4(qa, qw + tinyllm::detail::swizzled_q_offset(lane, D, kk));
                    qk(qa);
                }
            }
        }

        cp_async_wait<0>();  // V[tile] has landed ...
        __syncthreads();     // ... everyone's; and every warp is done with K[tile]
        if (tile + 1 < t_end) load_k(tile + 1);  // K[tile + 1] flies during the softmax and P V
        cp_async_commit();
        if (!active) continue;

        // ---- logits in log2 units; mask only where this warp's tile is partial ----
        // Element e of C tile n: row g (e < 2) or g + 8, key k0 + 8n + 2t + (e & 1).
        if (plain) {
#pragma unroll
            for (int n = 0; n < flash2_bk / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] *= scale_log2;
        } else if constexpr (!Plain) {
#pragma unroll
            for (int n = 0; n < flash2_bk / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const index_t j = k0 + 8 * n + tinyllm::detail::mma_c_col(lane, e);
                    s[n][e] = log2e * a.logit(s[n][e], h, e < 2 ? pos0 : pos1, j);
                }
        }
        if (kind == attention_tile::partial) {
#pragma unroll
            for (int n = 0; n < flash2_bk / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = k0 + 8 * n + tinyllm::detail::mma_c_col(lane, e);
                    const bool visible = e < 2 ? (begin0 <= j && j < end0) : (begin1 <= j && j < end1);
                    if (!visible) s[n][e] = -INFINITY;
                }
        }

        // ---- online softmax for rows g and g+8 (the 4 lanes of a quad hold a row) ----
        float alpha0, alpha1;
        quad_online_softmax<flash2_bk / 2>([&](int i) -> float& { return s[i / 4][i % 4]; }, m0, m1, l0, l1, alpha0,
                                           alpha1);
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= alpha0;
            o[n][1] *= alpha0;
            o[n][2] *= alpha1;
            o[n][3] *= alpha1;
        }

        // ---- O += P V (P straight from the S accumulators, as in v4) ----
#pragma unroll
        for (int kk = 0; kk < flash2_bk / 16; ++kk) {
            const std::uint32_t pf[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                         pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                         pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                std::uint32_t vf[4];  // v4's mma_v_offset, swizzled; .trans turns V [key][d] into the "col" B
                ldmatrix_x4_trans(vf, vs + tinyllm::detail::swizzled_v_offset(lane, D, kk, dp));
                mma_16816<T>(o[2 * dp], pf, vf[0], vf[1]);
                mma_16816<T>(o[2 * dp + 1], pf, vf[2], vf[3]);
            }
        }
    }
    cp_async_wait<0>();  // only empty groups can be pending here

    // ---- O / l, staged through this warp's own Q rows, written as 16-byte rows ----
    float inv0, inv1;
    quad_softmax_normalizers(l0, l1, inv0, inv1);
    T* ow = qs + warp * flash2_warp_rows * D;  // only this warp ever reads these rows
    __syncwarp();  // the warp's last ldmatrix reads of Q come before the overwrite
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = 8 * n + tinyllm::detail::mma_c_col(lane, 0);
        *reinterpret_cast<std::uint32_t*>(ow + tinyllm::detail::mma_swizzle(g, d, D)) =
            pack2<T>(o[n][0] * inv0, o[n][1] * inv0);
        *reinterpret_cast<std::uint32_t*>(ow + tinyllm::detail::mma_swizzle(g + 8, d, D)) =
            pack2<T>(o[n][2] * inv1, o[n][3] * inv1);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < flash2_warp_rows * CHUNKS / 32; ++i) {
        const int c = lane + 32 * i;
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const int row = wq0 + r;
        if (row < a.Tq)
            *reinterpret_cast<uint4*>(a.o_row(b, row, h) + col) =
                *reinterpret_cast<const uint4*>(ow + tinyllm::detail::mma_swizzle(r, col, D));
    }
#else
    (void)a;
    __trap();  // the launcher refuses GPUs older than sm_80
#endif
}

// The kernel for one head dim, occupancy and kind of logit: the plain
// instantiation (no soft-cap, no ALiBi: the logit is the dot product times the
// scale) drops the general path's registers from the loop.
// Two blocks per SM applies to the plain logit only: the general one (soft-cap,
// ALiBi) under the same 128-register cap spilled 124 / 132 bytes a thread at
// D = 64 (tools/kernel-resources, nvcc 13.0, sm_90a), so it keeps one block per SM.
template <class T, int D, int BlocksPerSM>
void launch_attention_flash2(const attention_args<T>& a, dim3 grid, std::size_t bytes, cudaStream_t stream) {
    const bool plain = !(a.softcap > 0.0f) && a.slopes == nullptr;
    auto kernel = plain ? attention_flash2_kernel<T, D, BlocksPerSM, true> : attention_flash2_kernel<T, D, 1, false>;
    set_shared_memory(kernel, bytes, "attention_flash2");
    launch(kernel, grid, flash2_threads, bytes, stream, a);
}

}  // namespace detail

// v5: out = attention(q, k, v) on tensor cores with FlashAttention-2's full
// recipe. T: tinyllm::bfloat16 or tinyllm::float16; head dims 64 and 128;
// sm_80+. See the top of this file.
//
// BlocksPerSM = 2 (D = 64 and the plain logit only; D = 128, soft-cap and ALiBi
// keep one) compiles the kernel for two 8-warp blocks per SM: registers capped at
// 128 a thread (65536 / 512), 48 bytes spilled a thread (nvcc 13, sm_90). Why try it: run D
// measured v5 at 0.60x PyTorch's flash kernel at D = 64 against 0.82x at
// D = 128, and at D = 64 a K/V tile carries half the work between the same two
// cp.async waits and barriers. With two blocks per SM one block's waits are
// covered by the other's products. Expected: a gain at D = 64 if the spills stay
// in L1; `tinyllm bench attention` times both (not yet measured on a GPU).
template <class T, int BlocksPerSM = 1>
void attention_flash2(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                      std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                      const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>,
                  "attention_flash2 (v5) takes tinyllm::bfloat16 or tinyllm::float16 tensors");
    static_assert(BlocksPerSM == 1 || BlocksPerSM == 2, "attention_flash2: BlocksPerSM is 1 or 2");
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_flash2");
    detail::expect_mma_args(a, "attention_flash2", "v5");
    if (out.size() == 0) return;
    const std::size_t bytes = static_cast<std::size_t>(detail::flash2_smem_bytes(a.D));
    // x: (head, batch row), heads fastest; y: query blocks, launched last-first by the kernel.
    const dim3 grid = detail::checked_grid(index_t{a.Hq} * a.B, ceil_div<index_t>(a.Tq, detail::flash2_bq), 1,
                                           "attention_flash2", "the (Hq * B, Tq / 128) query blocks");
    if (a.D == 64) detail::launch_attention_flash2<T, 64, BlocksPerSM>(a, grid, bytes, stream);
    else detail::launch_attention_flash2<T, 128, 1>(a, grid, bytes, stream);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
