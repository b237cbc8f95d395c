// tinyllm/cuda/attention_wgmma.cuh — attention v6: v5's FlashAttention-2
// forward with Hopper's warpgroup matrix instruction (wgmma.mma_async,
// sm_90a) instead of mma.sync: the tensor cores read K and V, and Q, straight
// from shared memory.
//
// What it computes is v4's and v5's: for each query row i,
// O_i = sum_j softmax_j(logit(q_i . k_j)) v_j over the visible keys, one key
// tile at a time with the online softmax. Read attention_flash2.cuh (v5) first;
// the instruction and its layouts are in tinyllm/detail/wgmma_layout.hpp.
//
// v5 -> v6   Run D measured v5 at 0.82x PyTorch's flash kernel at D = 128 and
//            0.60x at D = 64 on an H200, and cuDNN at about twice v5's speed.
//            What an H100/H200 offers beyond mma.sync is wgmma: a warpgroup
//            (4 warps) issues one 64 x N x 16 product (N up to 256) whose B
//            operand the tensor cores read from shared memory themselves, and
//            which runs asynchronously until a wait. The changes, each with its
//            EXPECTED effect (not measured: no GPU has run this file yet):
//
//   * Two warpgroups of 64 query rows (128 rows, 256 threads, as v5), key
//     tiles of 128 (v5: 64). S = Q K^T is D/16 instructions m64n128k16 per
//     warpgroup with A = Q and B = K both from shared memory; O += P V is 8
//     instructions m64nDk16 with A = P from registers (the S accumulators
//     converted to 16 bits, the same trick as v4/v5: the accumulator layout of
//     two neighbouring 8-column tiles is the A layout) and B = V from shared
//     memory, N-major (V is stored [key][d]: the transpose is a flag of the
//     instruction, not an ldmatrix.trans). No ldmatrix at all: v5 issued one
//     ldmatrix.x4 per two mma.sync for K and V. Expected: the instructions
//     that fed the tensor cores are gone, and wgmma runs near the H100's
//     dense bf16 rate, where mma.sync reaches about two thirds of it (the
//     FlashAttention-3 paper's figure).
//   * Shared memory in wgmma's 128-byte-swizzle layout: a [rows][D] tile is
//     D/64 column blocks of 128-byte rows, 16-byte chunk c of row r at chunk
//     c ^ (r % 8), each tile 1024-byte aligned (wgmma_tile_offset). The same
//     conflict-free property as v5's swizzle, in the form the descriptors name.
//     Q, K, V: 48 KiB at D = 64, 96 KiB at D = 128.
//   * Registers: the S accumulators are 64 floats a thread (a 64 x 128 tile over
//     128 threads), O is D/2, P 32 registers; Q is never in registers (the
//     instruction reads it). nvcc 13.0, sm_90a, -O3 -Xptxas -v, plain logits:
//     sequential 223 (D = 128) and 186 (D = 64), pipelined 255 and 197, no
//     spills; one 8-warp block per SM, as v5. Two things kept them there: the
//     cp.async loads step from row to row by an increment the compiler cannot
//     hoist (`opaque`; the first version kept every chunk's 64-bit source
//     offset across the tile loop and spilled 36-56 bytes at D = 128), and the
//     descriptors are one base plus constants.
//   * Two schedules (wgmma_schedule):
//       sequential: v5's. Each warpgroup issues a product, waits for it, then
//         runs the softmax; both warpgroups meet at the two barriers of each
//         tile, so their softmaxes coincide and the tensor cores idle meanwhile.
//       pipelined (the default; FlashAttention-3's overlap within a warpgroup):
//           barrier: K[j], V[j-1] landed -> issue S_j = Q K[j]^T and
//           O += P_{j-1} V[j-1] -> wait for S_j only -> softmax of S_j while the
//           tensor cores run P V -> wait for P V -> barrier -> load K[j+1] and
//           V[j] -> O *= alpha_j, P_j = pack(S_j)
//         P_{j-1} is left untouched until its product is waited for, and O is
//         rescaled after it lands (alpha_j multiplies O + P_{j-1} V[j-1]). Each
//         load has a whole tile's work to arrive in, with the same single K and
//         V buffers. Every product is issued on every path: ptxas serializes
//         wgmma issued under branches it cannot prove warpgroup-uniform (its
//         C7520 "Potential Performance Loss" note, which the first version
//         drew), so a tile a warpgroup does not see is computed and masked
//         whole rather than skipped.
//     Expected: the pipelined schedule hides most of the softmax under P V
//     (FlashAttention-3's ablation on an H100 credits this overlap with part of
//     its speed; `tinyllm bench attention` times both schedules).
//
// Expected together: above v5 by the rate of wgmma over mma.sync and the
// ldmatrix traffic removed, i.e. near or above PyTorch's flash kernel (which is
// FlashAttention-2, mma.sync, on this GPU). The rest of FlashAttention-3's
// structure — TMA loads issued by a producer warpgroup with mbarriers (warp
// specialization), two-stage K/V buffers, and "ping-pong" scheduling of the
// two warpgroups — is v7 (attention_tma.cuh), on this file's wgmma_rows.
//
// Supported: v5's set — T = bfloat16 or float16; head dims 64 and 128; every
// option of the CPU reference (causal, window, ALiBi, soft-cap, padding),
// GQA/MQA, Tq != Tk; strides that are multiples of 8 elements with 16-byte
// aligned pointers — on a GPU of compute capability 9.0 running code built for
// sm_90a (CMAKE_CUDA_ARCHITECTURES=90a), or on the simulated GPU. Anything else
// is rejected on the host with a message that says why.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_mma.cuh>  // cp_async_16, pack2, expect_mma_args
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/wgmma.cuh>
#include <tinyllm/detail/wgmma_layout.hpp>

#include <cstdint>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int wgmma_attn_threads = 256;  // 2 warpgroups
inline constexpr int wgmma_attn_bq = 128;       // query rows per block (64 per warpgroup)
inline constexpr int wgmma_attn_bk = 128;       // keys per tile

// Bytes of dynamic shared memory: Q, K, V tiles of 128 rows of D 16-bit values,
// plus up to 1024 bytes to align the first to a 1024-byte boundary.
TINYLLM_HOST_DEVICE constexpr int wgmma_attn_smem_bytes(int d) { return (wgmma_attn_bq + 2 * wgmma_attn_bk) * d * 2 + 1024; }

// Copy ROWS rows of D elements (row r at src + r * row_stride) into a [ROWS][D]
// tile in wgmma's layout (wgmma_tile_offset); rows at or past `valid` are
// zero-filled (nothing is read). Thread tid moves 16-byte chunks tid, tid + 256,
// ...: row r0 + i * STEP, the same column, so its destinations are i * STEP * 128
// bytes apart (STEP is a multiple of 8: the same swizzle) and its sources i * STEP
// rows apart. The row step goes through `opaque`, so that the compiler adds it
// per chunk instead of keeping every chunk's 64-bit offset in a register across
// the tile loop.
template <int ROWS, int D, class T>
__device__ __forceinline__ void wgmma_load_tile(unsigned char* dst, const T* src, index_t row_stride, int valid, int tid) {
    constexpr int CHUNKS = D / 8, STEP = wgmma_attn_threads / CHUNKS;
    static_assert(ROWS % STEP == 0 && STEP % 8 == 0, "every thread moves the same number of chunks, 8 rows apart or more");
    const int r0 = tid / CHUNKS, col = (tid % CHUNKS) * 8;
    unsigned char* d = dst + tinyllm::detail::wgmma_tile_offset(r0, col, ROWS);
    const index_t step = static_cast<index_t>(opaque(static_cast<std::uint64_t>(STEP * row_stride)));
    const T* from = src + r0 * row_stride + col;
#pragma unroll
    for (int i = 0; i < ROWS / STEP; ++i, from += step) {
        const bool in = r0 + i * STEP < valid;
        cp_async_16(d + i * STEP * 128, in ? from : src, in ? 16 : 0);
    }
}

// What a v6 or v7 block works on: block (h + Hq * b, query block counted from the
// end, heaviest first as in v5), its K/V head, its batch row's valid keys, and the
// key tiles [t_begin, t_end) that any of its 128 rows sees.
struct wgmma_query_block {
    int h, b, hkv, q0;
    index_t length;
    int t_begin, t_end;
};
template <class T>
__device__ __forceinline__ wgmma_query_block wgmma_block_of(const attention_args<T>& a) {
    wgmma_query_block q{};
    q.h = static_cast<int>(blockIdx.x % static_cast<unsigned>(a.Hq));
    q.b = static_cast<int>(blockIdx.x / static_cast<unsigned>(a.Hq));
    q.hkv = q.h / a.group;
    q.q0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * wgmma_attn_bq;
    q.length = a.length(q.b);
    const key_range range = attention_tile_keys(a.mask, q.q0, wgmma_attn_bq, q.length);
    q.t_begin = static_cast<int>(range.begin / wgmma_attn_bk);
    q.t_end = static_cast<int>(ceil_div<index_t>(range.end, wgmma_attn_bk));
    return q;
}

// One warpgroup's 64 query rows of a v6 (or v7) block: where they are, their
// online-softmax state and O in registers, and the steps of one key tile. The
// kernels below (and v7's consumers, attention_tma.cuh) differ only in how the
// tiles reach shared memory and when the steps run.
template <class T, int D, bool Plain>
struct wgmma_rows {
    static constexpr int BK = wgmma_attn_bk, BQ = wgmma_attn_bq;
    static constexpr float log2e = 1.4426950408889634f;
    const attention_args<T>& a;
    const int t, wg, h;        // thread in the warpgroup (0..127), the warpgroup's 64-row slice of the block, head
    const int wq0;             // the warpgroup's first query row
    const index_t length;      // valid keys of the batch row
    int begin0, end0, begin1, end1;  // visible keys of the thread's two rows (row0, row0 + 8)
    index_t pos0, pos1;
    bool plain;
    float scale_log2;
    float o[D / 2];  // O: register i is row (i % 4 < 2 ? row0 : row1), feature wgmma_d_col(t, i)
    float m0 = -INFINITY, m1 = -INFINITY;  // running max (log2 units) of rows row0, row1
    float l0 = 0.0f, l1 = 0.0f;            // running sums of this thread's columns

    __device__ __forceinline__ wgmma_rows(const attention_args<T>& args, int t_, int wg_, int q0, int h_, index_t length_)
        : a(args), t(t_), wg(wg_), h(h_), wq0(q0 + 64 * wg_), length(length_) {
        const int row0 = wq0 + tinyllm::detail::wgmma_d_row(t, 0), row1 = row0 + 8;
        const key_range keys0 = attention_visible_keys(a.mask, row0, length);
        const key_range keys1 = attention_visible_keys(a.mask, row1, length);
        begin0 = static_cast<int>(keys0.begin), end0 = static_cast<int>(keys0.end);
        begin1 = static_cast<int>(keys1.begin), end1 = static_cast<int>(keys1.end);
        pos0 = a.mask.query_position(row0), pos1 = a.mask.query_position(row1);
        plain = Plain || (!(a.softcap > 0.0f) && a.slopes == nullptr);
        scale_log2 = a.scale * log2e;
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    }

    // The warpgroup's own view of a tile (uniform over its 128 threads, as wgmma
    // requires): skip, full or partial. Rows past Tq do not exist.
    __device__ __forceinline__ attention_tile classify(int tile) const {
        return wq0 < a.Tq ? attention_classify_tile(a.mask, wq0, 64, tile * BK, BK, length) : attention_tile::skip;
    }
    // Issue S = Q K^T (64 rows x 128 keys) from the [128][D] Q and K tiles whose
    // descriptors are q_desc0, k_desc0, and commit it as one group. Each step's
    // descriptor is the tile's plus a constant; `opaque` hides the base from the
    // compiler so that it adds the constants at each use instead of keeping the
    // loop-invariant 64-bit descriptors in registers.
    __device__ __forceinline__ void issue_s(float (&s)[BK / 2], std::uint64_t q_desc0, std::uint64_t k_desc0) const {
        using tinyllm::detail::wgmma_advance;
        using tinyllm::detail::wgmma_k_major_step;
        const std::uint64_t qd = opaque(q_desc0), kd = opaque(k_desc0);
#pragma unroll
        for (int step = 0; step < D / 16; ++step)
            wgmma_m64k16<BK, T, false>(s, nullptr, wgmma_advance(qd, wgmma_k_major_step(BQ, 64 * wg, step)),
                                       wgmma_advance(kd, wgmma_k_major_step(BK, 0, step)), step > 0);
        wgmma_commit();
    }
    // Issue O += P V (P: 64 x 128 in registers, 16 keys per instruction; V N-major) and commit it.
    __device__ __forceinline__ void issue_pv(const std::uint32_t (&p)[BK / 16][4], std::uint64_t v_desc0) {
        const std::uint64_t vd = opaque(v_desc0);
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk)
            wgmma_m64k16<D, T, true>(o, p[kk], 0, tinyllm::detail::wgmma_advance(vd, tinyllm::detail::wgmma_n_major_step(kk)), true);
        wgmma_commit();
    }
    // Scores -> logits in log2 units, masked where the tile is partial; then the online
    // softmax of rows row0, row1 (a quad of lanes holds a row): s becomes exp2(x - m_new),
    // m and l are updated, and the factors O must be scaled by are returned.
    __device__ __forceinline__ void softmax(float (&s)[BK / 2], int tile, attention_tile kind, float& alpha0, float& alpha1) {
        const int k0 = tile * BK;
        if (plain) {
#pragma unroll
            for (int i = 0; i < BK / 2; ++i) s[i] *= scale_log2;
        } else if constexpr (!Plain) {
#pragma unroll
            for (int i = 0; i < BK / 2; ++i) {
                const index_t j = k0 + tinyllm::detail::wgmma_d_col(t, i);
                s[i] = log2e * a.logit(s[i], h, i % 4 < 2 ? pos0 : pos1, j);
            }
        }
        if (kind == attention_tile::partial) {
#pragma unroll
            for (int i = 0; i < BK / 2; ++i) {
                const int j = k0 + tinyllm::detail::wgmma_d_col(t, i);
                const bool visible = i % 4 < 2 ? (begin0 <= j && j < end0) : (begin1 <= j && j < end1);
                if (!visible) s[i] = -INFINITY;
            }
        }
        quad_online_softmax<BK / 2>([&](int i) -> float& { return s[i]; }, m0, m1, l0, l1, alpha0, alpha1);
    }
    __device__ __forceinline__ void rescale(float alpha0, float alpha1) {
#pragma unroll
        for (int i = 0; i < D / 2; i += 4) {
            o[i] *= alpha0;
            o[i + 1] *= alpha0;
            o[i + 2] *= alpha1;
            o[i + 3] *= alpha1;
        }
    }
    // P from the S registers: keys 16kk .. 16kk+15 are S's 8-column tiles 2kk and 2kk+1
    // (registers 8kk .. 8kk+7), whose accumulator layout is the A layout (rows g / g+8,
    // keys 2t.. and 8+2t..), as in v4 and v5.
    __device__ __forceinline__ static void pack(std::uint32_t (&p)[BK / 16][4], const float (&s)[BK / 2]) {
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            p[kk][0] = pack2<T>(s[8 * kk], s[8 * kk + 1]);
            p[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
            p[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
            p[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
        }
    }
    // O / l written to the block's rows of output, staged through the warpgroup's 64
    // rows of the Q tile qs (which no product may still read) as 16-byte rows.
    __device__ __forceinline__ void write_output(unsigned char* qs, int b, int q0) {
        constexpr int CHUNKS = D / 8;
        float inv0, inv1;
        quad_softmax_normalizers(l0, l1, inv0, inv1);
        const int r0 = 64 * wg + tinyllm::detail::wgmma_d_row(t, 0);  // row in the block
#pragma unroll
        for (int i = 0; i < D / 2; i += 4) {
            const int d = tinyllm::detail::wgmma_d_col(t, i);
            *reinterpret_cast<std::uint32_t*>(qs + tinyllm::detail::wgmma_tile_offset(r0, d, BQ)) =
                pack2<T>(o[i] * inv0, o[i + 1] * inv0);
            *reinterpret_cast<std::uint32_t*>(qs + tinyllm::detail::wgmma_tile_offset(r0 + 8, d, BQ)) =
                pack2<T>(o[i + 2] * inv1, o[i + 3] * inv1);
        }
        __syncwarp();  // a warp copies out exactly the 16 rows it wrote
        const int lane = t % 32, wr0 = 64 * wg + 16 * (t / 32);
#pragma unroll
        for (int i = 0; i < 16 * CHUNKS / 32; ++i) {
            const int c = lane + 32 * i;
            const int r = wr0 + c / CHUNKS, col = (c % CHUNKS) * 8;
            const int row = q0 + r;
            if (row < a.Tq)
                *reinterpret_cast<uint4*>(a.o_row(b, row, h) + col) =
                    *reinterpret_cast<const uint4*>(qs + tinyllm::detail::wgmma_tile_offset(r, col, BQ));
        }
    }
};

// Block (h + Hq * b, query block counted from the end), as v5.
template <class T, int D, bool Plain, bool Pipelined>
__global__ void __launch_bounds__(wgmma_attn_threads, 1) attention_wgmma_kernel(attention_args<T> a) {
#if TINYLLM_WGMMA
    constexpr int BK = wgmma_attn_bk;
    constexpr int BQ = wgmma_attn_bq;
    static_assert(BQ == BK, "Q, K and V tiles have the same rows (one tile size below)");
    constexpr int TILE = BQ * D * 2;  // bytes of one Q, K or V tile
    // The tiles at the first 1024-byte boundary of the shared-memory window.
    unsigned char* raw = dynamic_shared<unsigned char>();
    const std::uint32_t raw_address = wgmma_smem_address(raw);
    const std::uint32_t pad = (1024u - raw_address % 1024u) % 1024u;
    unsigned char* qs = raw + pad;  // [128][D]: Q, later each warp's output rows
    unsigned char* ks = qs + TILE;  // [128][D]: K of one tile
    unsigned char* vs = ks + TILE;  // [128][D]: V of one tile
    const std::uint32_t q_address = raw_address + pad, k_address = q_address + TILE, v_address = k_address + TILE;

    const int tid = threadIdx.x, warp = tid / 32;
    const int wg = warp / 4, t = tid % 128;  // warpgroup, thread in it
    const wgmma_query_block blk = wgmma_block_of(a);
    const int h = blk.h, b = blk.b, hkv = blk.hkv, q0 = blk.q0, t_begin = blk.t_begin, t_end = blk.t_end;
    const index_t length = blk.length;
    auto load_k = [&](int tile) {
        const int k0 = tile * BK;
        wgmma_load_tile<BK, D>(ks, a.k_row(b, k0, hkv), a.k_st, static_cast<int>(length - k0), tid);
    };
    auto load_v = [&](int tile) {
        const int k0 = tile * BK;
        wgmma_load_tile<BK, D>(vs, a.v_row(b, k0, hkv), a.v_st, static_cast<int>(length - k0), tid);
    };

    // Descriptors (tinyllm/detail/wgmma_layout.hpp). Q and K are K-major
    // (rows along M or N, 8-row groups 1024 bytes apart); step s covers features
    // 16s .. 16s+15 (wgmma_k_major_step). V is N-major for O += P V: rows along K
    // (keys), 8-key groups 1024 bytes apart, the second 64-feature block (D = 128)
    // BK * 128 bytes further (wgmma_n_major_step).
    const std::uint64_t q_desc0 = tinyllm::detail::wgmma_descriptor(q_address, 16, 1024);
    const std::uint64_t k_desc0 = tinyllm::detail::wgmma_descriptor(k_address, 16, 1024);
    const std::uint64_t v_desc0 = tinyllm::detail::wgmma_descriptor(v_address, BK * 128, 1024);

    // ---- prologue: Q, then K of the first tile ----
    wgmma_load_tile<BQ, D>(qs, a.q_row(b, q0, h), a.q_st, a.Tq - q0, tid);
    cp_async_commit();
    if (t_begin < t_end) load_k(t_begin);
    cp_async_commit();

    wgmma_rows<T, D, Plain> rows(a, t, wg, q0, h, length);
    using rows_t = wgmma_rows<T, D, Plain>;

    if constexpr (!Pipelined) {
        // ---- sequential: each product waited for before the next step (v5's schedule) ----
        for (int tile = t_begin; tile < t_end; ++tile) {
            cp_async_wait<0>();   // K[tile] (and, the first time, Q) landed: this thread's copies ...
            fence_proxy_async();  // ... visible to the tensor cores' reads ...
            __syncthreads();      // ... everyone's; every warpgroup is done with V[tile - 1]
            load_v(tile);
            cp_async_commit();
            const attention_tile kind = rows.classify(tile);
            float s[BK / 2];
            if (kind != attention_tile::skip) {
                wgmma_fence();
                rows.issue_s(s, q_desc0, k_desc0);
                wgmma_wait<0>(s);
            }
            cp_async_wait<0>();  // V[tile] landed ...
            fence_proxy_async();
            __syncthreads();     // ... everyone's; every warpgroup is done with K[tile]
            if (tile + 1 < t_end) load_k(tile + 1);
            cp_async_commit();
            if (kind == attention_tile::skip) continue;
            float alpha0, alpha1;
            rows.softmax(s, tile, kind, alpha0, alpha1);
            rows.rescale(alpha0, alpha1);
            std::uint32_t p[BK / 16][4];
            rows_t::pack(p, s);
            wgmma_fence();
            rows.issue_pv(p, v_desc0);
            wgmma_wait<0>(rows.o);
        }
    } else {
        // ---- pipelined: the softmax of tile j runs while O += P V of tile j-1 is in
        // flight (FlashAttention-3's overlap within a warpgroup) ----
        //   barrier (K[j] and V[j-1] landed) -> issue S_j, issue P_{j-1} V_{j-1}
        //   -> wait for S_j -> softmax of S_j (the tensor cores run P V meanwhile)
        //   -> wait for P V -> barrier -> load K[j+1], V[j] -> O *= alpha_j, P_j = pack(S_j)
        // P_{j-1} stays untouched until its product is waited for; O is rescaled after it.
        // Each load has a whole tile's work to arrive, without a second buffer.
        // Every product is issued unconditionally (ptxas serializes wgmma issued on paths
        // it cannot prove warpgroup-uniform): a tile the warpgroup does not see is
        // computed and masked whole (every row's visible keys miss it), which gives
        // P = 0 and leaves m, l and O as they were. (Rows past Tq may see keys of such a
        // tile; they are never written.) The first tile has no P V before it.
        std::uint32_t p[BK / 16][4];
        // One tile's first half: S_j, with P_{j-1} V_{j-1} in flight when `overlap`.
        auto tile_products = [&](int tile, float (&s)[BK / 2], bool overlap, float& alpha0, float& alpha1) {
            cp_async_wait<0>();  // K[tile] and V[tile - 1] landed (this thread's copies) ...
            fence_proxy_async();
            __syncthreads();     // ... everyone's
            const attention_tile kind = rows.classify(tile);
            wgmma_fence();
            rows.issue_s(s, q_desc0, k_desc0);
            if (overlap) {
                rows.issue_pv(p, v_desc0);
                wgmma_wait<1>(s);  // S_j done; P V may still run
            } else {
                wgmma_wait<0>(s);
            }
            rows.softmax(s, tile, kind == attention_tile::skip ? attention_tile::partial : kind, alpha0, alpha1);
            if (overlap) wgmma_wait<0>(rows.o);
            __syncthreads();  // every warpgroup is done with K[tile] and V[tile - 1]
            if (tile + 1 < t_end) load_k(tile + 1);
            load_v(tile);
            cp_async_commit();
        };
        if (t_begin < t_end) {
            float s[BK / 2];
            float alpha0, alpha1;
            tile_products(t_begin, s, false, alpha0, alpha1);
            rows.rescale(alpha0, alpha1);
            rows_t::pack(p, s);
            for (int tile = t_begin + 1; tile < t_end; ++tile) {
                tile_products(tile, s, true, alpha0, alpha1);
                rows.rescale(alpha0, alpha1);
                rows_t::pack(p, s);
            }
            cp_async_wait<0>();  // V of the last tile ...
            fence_proxy_async();
            __syncthreads();     // ... everyone's
            wgmma_fence();
            rows.issue_pv(p, v_desc0);
            wgmma_wait<0>(rows.o);
        }
    }
    cp_async_wait<0>();  // only empty groups can be pending here

    // ---- O / l, staged through the block's Q rows, written as 16-byte rows ----
    __syncthreads();  // every warpgroup's last product has read Q (each warp reads all 64 rows of its warpgroup)
    rows.write_output(qs, b, q0);
#else
    (void)a;
    __trap();  // the launcher refuses builds without sm_90a code
#endif
}

// The arguments of v6 and v7 (`name`, `rung`), checked: bf16 or fp16 with v4's
// limits, on a GPU that runs sm_90a code; and their grid of 128-row query blocks.
template <class T>
attention_args<T> wgmma_attention_args(tensor_view<T, 4> out, tensor_view<const T, 4> q, tensor_view<const T, 4> k,
                                       tensor_view<const T, 4> v, const attention_options& opts, const char* name,
                                       const char* rung) {
    static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>,
                  "attention v6 and v7 take tinyllm::bfloat16 or tinyllm::float16 tensors");
    auto a = make_attention_args<T>(out, q, k, v, opts, name);
    expect_mma_args(a, name, rung);
    TINYLLM_EXPECT(wgmma_compiled(), name, " (", rung, ") needs a GPU of compute capability 9.0 (H100, H200) running "
                   "code compiled for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a); use attention_flash2 (v5) otherwise");
    return a;
}
template <class T>
dim3 wgmma_attention_grid(const attention_args<T>& a, const char* name) {
    return checked_grid(index_t{a.Hq} * a.B, ceil_div<index_t>(a.Tq, wgmma_attn_bq), 1, name,
                        "the (Hq * B, Tq / 128) query blocks");
}

template <class T, int D, bool Pipelined>
void launch_attention_wgmma(const attention_args<T>& a, dim3 grid, std::size_t bytes, cudaStream_t stream) {
    const bool plain = !(a.softcap > 0.0f) && a.slopes == nullptr;
    auto kernel = plain ? attention_wgmma_kernel<T, D, true, Pipelined> : attention_wgmma_kernel<T, D, false, Pipelined>;
    set_shared_memory(kernel, bytes, "attention_wgmma");
    launch(kernel, grid, wgmma_attn_threads, bytes, stream, a);
}

}  // namespace detail

// How v6 orders a tile's steps (see the top of this file): each product waited
// for before the next step, or the softmax of tile j under the product P V of
// tile j-1.
enum class wgmma_schedule { sequential, pipelined };

// v6: out = attention(q, k, v) on Hopper's warpgroup tensor-core instruction.
// T: tinyllm::bfloat16 or tinyllm::float16; head dims 64 and 128; a compute
// capability 9.0 GPU with code built for sm_90a. See the top of this file.
template <class T, wgmma_schedule Schedule = wgmma_schedule::pipelined>
void attention_wgmma(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                     const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    auto a = detail::wgmma_attention_args<T>(out, q, k, v, opts, "attention_wgmma", "v6");
    if (out.size() == 0) return;
    const std::size_t bytes = static_cast<std::size_t>(detail::wgmma_attn_smem_bytes(a.D));
    const dim3 grid = detail::wgmma_attention_grid(a, "attention_wgmma");
    constexpr bool pipelined = Schedule == wgmma_schedule::pipelined;
    if (a.D == 64) detail::launch_attention_wgmma<T, 64, pipelined>(a, grid, bytes, stream);
    else detail::launch_attention_wgmma<T, 128, pipelined>(a, grid, bytes, stream);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
