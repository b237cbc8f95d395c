// tinyllm/cuda/attention_tma.cuh — attention v7: v6's wgmma tile loop fed by
// Hopper's Tensor Memory Accelerator, with the block's warps split into a
// producer and consumers (warp specialization) — the structure of
// FlashAttention-3's forward kernel.
//
// What it computes is v4's to v6's: for each query row i,
// O_i = sum_j softmax_j(logit(q_i . k_j)) v_j over the visible keys, one key
// tile at a time with the online softmax. Read attention_wgmma.cuh (v6)
// first; TMA and mbarriers are explained in tma.cuh.
//
// v6 -> v7   In v6 every one of the 256 threads issues cp.async copies for
//            each K and V tile (16 per thread at D = 128), computes their
//            swizzled addresses, and then all of them meet at __syncthreads
//            twice per tile: the copies and the barriers sit between the
//            products, and one buffer per tensor means a tile's load can only
//            start once both warpgroups are done with the one before. v7
//            changes who moves the data and how the warps agree on it. Each
//            change with its EXPECTED effect (not measured: no GPU has run
//            this file):
//
//   * 384 threads: warpgroup 0 is the *producer*, warpgroups 1 and 2 the
//     *consumers* (64 query rows each, as v6's two). One thread of the
//     producer issues every copy, one TMA instruction per 64-feature half of
//     a tile (cp.async.bulk.tensor: the copy engine computes the addresses,
//     applies the 128-byte swizzle wgmma reads, and fills rows past the
//     tensor with zeros). The consumers issue no copy at all. Expected: the
//     consumers' instruction stream is products and softmax only.
//   * Two stages of K and two of V in shared memory (D = 128: Q + 2 K + 2 V =
//     160 KiB), each with a "full" mbarrier (the producer announces the
//     tile's bytes; the copy completes them) and an "empty" one (each
//     consumer warp arrives when its products have read the stage). No
//     __syncthreads after the start: the producer runs up to two tiles ahead,
//     and each warpgroup waits only for the data it needs, not for the other
//     warpgroup. Expected: loads fully hidden behind the products, and the
//     two warpgroups free to drift apart so that one's softmax can overlap
//     the other's products (the ping-pong schedule below forces it).
//   * Registers moved to where they are used (setmaxnreg): the producer
//     warpgroup gives its registers back (24 per thread) and the consumers
//     take 240, which v6's per-thread state (S, O, P: about 200 values at
//     D = 128) needs. 384 threads at the launch's 168 would spill.
//   * Each consumer warpgroup runs v6's pipelined schedule: S_j = Q K_j^T is
//     issued, then P_{j-1} V_{j-1} as soon as V_{j-1} has arrived; the softmax
//     of S_j runs while the tensor cores compute P V.
//   * Two schedules of the consumers (tma_schedule):
//       independent: each warpgroup issues its products as soon as its data
//         is there. Nothing keeps the two from issuing at the same moment and
//         then both running their softmax while the tensor cores idle.
//       pingpong (the default; FlashAttention-3's "inter-warpgroup overlap"):
//         the warpgroups take turns through two named barriers (bar.sync /
//         bar.arrive): warpgroup 1 issues its products for a tile, hands the
//         turn to warpgroup 2 and runs its softmax while warpgroup 2's
//         products occupy the tensor cores, and so on. Expected: the tensor
//         cores busy during both softmaxes (the FlashAttention-3 paper's
//         ablation on an H100 credits its overlaps with part of its speed;
//         `tinyllm bench attention` times both schedules).
//
// Keys past a batch row's length (attention_options::key_lengths) but inside
// the tensor hold whatever the caller left there (the tests put NaN), and a
// NaN in V poisons O through P = 0 (0 * NaN = NaN). A tile with such rows is
// zeroed by the producer warp after its copy lands, which then signals a
// separate barrier (v_zeroed) that the consumers wait on for that tile only.
//
// Supported: v6's set (bf16 or f16, head dims 64 and 128, every option of the
// CPU reference, GQA/MQA, Tq != Tk), with strides that TMA accepts: positive,
// multiples of 16 bytes, the head dim contiguous; compute capability 9.0 with
// code built for sm_90a, or the simulated GPU. Anything else is rejected on
// the host with a message that says why.
#pragma once

#include <tinyllm/cuda/attention_wgmma.cuh>
#include <tinyllm/cuda/tma.cuh>
#include <tinyllm/detail/mbarrier_ring.hpp>

#include <cstdint>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int tma_attn_threads = 384;  // producer warpgroup + 2 consumer warpgroups
inline constexpr int tma_attn_stages = 2;     // K and V buffers each
inline constexpr int tma_attn_barriers = 1 + 4 * tma_attn_stages + 1;  // q_full, {k,v}_{full,empty}[stages], v_zeroed
// Registers per thread after setmaxnreg: the producer warpgroup gives back down
// to 24, the two consumer warpgroups take 240. setmaxnreg moves registers
// within the block's allocation, fixed at launch by __launch_bounds__(384, 1):
// 65536 / 384 per thread, rounded down to a multiple of 8, 168. A consumer
// asking for more than the producer released would wait in setmaxnreg forever.
inline constexpr int tma_attn_producer_regs = 24, tma_attn_consumer_regs = 240;
static_assert(128 * tma_attn_producer_regs + 256 * tma_attn_consumer_regs <=
                  tma_attn_threads * (65536 / tma_attn_threads / 8 * 8),
              "v7: the warpgroups' setmaxnreg counts exceed the block's registers");

// Bytes of dynamic shared memory: Q, the K and V stages (128 rows of D 16-bit
// values each), the barriers, and up to 1024 bytes to align the first tile.
TINYLLM_HOST_DEVICE constexpr int tma_attn_smem_bytes(int d) {
    return (1 + 2 * tma_attn_stages) * wgmma_attn_bq * d * 2 + 8 * tma_attn_barriers + 1024;
}

// Where the view axes (B, T, H) of each tensor sit in its tensor map.
struct tma_attn_maps {
    tensor_map_order q, k, v;
};

template <class T, int D, bool Plain, bool PingPong>
__global__ void __launch_bounds__(tma_attn_threads, 1)
    attention_tma_kernel(attention_args<T> a, const __grid_constant__ CUtensorMap q_map,
                         const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map,
                         tma_attn_maps order) {
#if TINYLLM_TMA
    constexpr int BK = wgmma_attn_bk, BQ = wgmma_attn_bq, S = tma_attn_stages;
    constexpr int TILE = BQ * D * 2;  // bytes of one Q, K or V tile
    unsigned char* raw = dynamic_shared<unsigned char>();
    const std::uint32_t raw_address = wgmma_smem_address(raw);
    const std::uint32_t pad = (1024u - raw_address % 1024u) % 1024u;
    unsigned char* qs = raw + pad;         // [128][D]: Q, later the consumers' output rows
    unsigned char* ks = qs + TILE;         // S x [128][D]: K stages
    unsigned char* vs = ks + S * TILE;     // S x [128][D]: V stages
    auto* bars = reinterpret_cast<std::uint64_t*>(vs + S * TILE);
    std::uint64_t* q_full = bars;
    std::uint64_t* k_full = bars + 1;      // [S]
    std::uint64_t* v_full = k_full + S;    // [S]
    std::uint64_t* k_empty = v_full + S;   // [S]
    std::uint64_t* v_empty = k_empty + S;  // [S]
    std::uint64_t* v_zeroed = v_empty + S;
    const std::uint32_t q_address = raw_address + pad, k_address = q_address + TILE, v_address = k_address + S * TILE;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wg = warp / 4;
    const wgmma_query_block blk = wgmma_block_of(a);
    const int h = blk.h, b = blk.b, hkv = blk.hkv, q0 = blk.q0, t_begin = blk.t_begin;
    const int tiles = blk.t_end - blk.t_begin;  // key tiles of this block
    const index_t length = blk.length;
    // Rows [length - k0, min(BK, Tk - k0)) of tile i exist in V but are past the row's
    // keys: the producer zeroes them (see the top of this file).
    auto padded = [&](int i) {
        const index_t k0 = index_t{t_begin + i} * BK;
        return length - k0 < BK && length < a.Tk;
    };

    if (tid == 0) {
        prefetch_tensor_map(&q_map);  // the maps are read by the producer's first copies
        prefetch_tensor_map(&k_map);
        prefetch_tensor_map(&v_map);
        mbarrier_init(q_full, 1);
        for (int s = 0; s < S; ++s) {
            mbarrier_init(&k_full[s], 1);  // the producer's arrival; the copies' bytes
            mbarrier_init(&v_full[s], 1);
            mbarrier_init(&k_empty[s], 8);  // one arrival per consumer warp
            mbarrier_init(&v_empty[s], 8);
        }
        mbarrier_init(v_zeroed, 1);
        fence_proxy_async();  // the barriers as the copy engine sees them
    }
    __syncthreads();  // the last block-wide barrier: from here on the roles wait only on mbarriers

    if (wg == 0) {
        // ---- producer: one warp; lane 0 issues, the warp zeroes a padded V tile ----
        setmaxnreg<tma_attn_producer_regs, false>();
        if (warp != 0) return;
        const bool leader = lane == 0;
        // The leader's copy of one 128-row tile (rows t.., head hh of batch row b) into
        // dst: its bytes announced on `full`, then one TMA box per 64 features.
        auto copy_tile = [&](unsigned char* dst, const CUtensorMap* map, const tensor_map_order& ord, int t, int hh,
                             std::uint64_t* full) {
            if (!leader) return;
            mbarrier_arrive_expect_tx(full, TILE);
            std::int32_t c[4];
            for (int j = 0; j < D / 64; ++j) {
                tensor_map_coords(c, ord, 64 * j, b, t, hh);
                tma_load(dst + j * BQ * 128, map, c, full);
            }
        };
        copy_tile(qs, &q_map, order.q, q0, h, q_full);
        for (int i = 0; i < tiles; ++i) {
            const tinyllm::detail::ring_slot slot = tinyllm::detail::mbarrier_ring_slot(i, S);
            const int s = slot.stage;
            const int k0 = (t_begin + i) * BK;
            mbarrier_wait(&k_empty[s], slot.empty_parity);  // the consumers are done with the stage's last tile
            copy_tile(ks + s * TILE, &k_map, order.k, k0, hkv, &k_full[s]);
            mbarrier_wait(&v_empty[s], slot.empty_parity);
            copy_tile(vs + s * TILE, &v_map, order.v, k0, hkv, &v_full[s]);
            if (padded(i)) {  // at most one tile: the row's last
                mbarrier_wait(&v_full[s], slot.full_parity);
                const int lo = static_cast<int>(length - k0);
                const int hi = static_cast<int>(a.Tk - k0 < BK ? a.Tk - k0 : BK);
                const int chunks = (hi - lo) * 8;  // 16-byte chunks of the rows, per 64-feature block
                for (int j = 0; j < D / 64; ++j)
                    for (int x = lane; x < chunks; x += 32)
                        *reinterpret_cast<uint4*>(vs + s * TILE + j * BK * 128 + (lo + x / 8) * 128 + (x % 8) * 16) =
                            make_uint4(0u, 0u, 0u, 0u);
                fence_proxy_async();  // the stores, as the tensor cores read them
                __syncwarp();
                if (leader) mbarrier_arrive(v_zeroed);
            }
        }
        return;
    }

    // ---- consumers: warpgroups 1 and 2, v6's pipelined schedule on the stages ----
    setmaxnreg<tma_attn_consumer_regs, true>();
    using rows_t = wgmma_rows<T, D, Plain>;
    rows_t rows(a, tid % 128, wg - 1, q0, h, length);
    const std::uint64_t q_desc0 = tinyllm::detail::wgmma_descriptor(q_address, 16, 1024);
    auto k_desc = [&](int s) { return tinyllm::detail::wgmma_descriptor(k_address + s * TILE, 16, 1024); };
    auto v_desc = [&](int s) { return tinyllm::detail::wgmma_descriptor(v_address + s * TILE, BK * 128, 1024); };
    // Tile i's stage is i % S (mbarrier_ring_slot); the consumers wait on its "full" barrier.
    auto wait_full = [&](std::uint64_t* full, int i) {
        const tinyllm::detail::ring_slot slot = tinyllm::detail::mbarrier_ring_slot(i, S);
        mbarrier_wait(&full[slot.stage], slot.full_parity);
    };
    auto wait_k = [&](int i) { wait_full(k_full, i); };
    auto wait_v = [&](int i) {
        if (padded(i)) mbarrier_wait(v_zeroed, 0);
        else wait_full(v_full, i);
    };
    // A warp has read a stage once its wait for the product returned: its lane 0 says so.
    auto release = [&](std::uint64_t* bar) {
        if (lane == 0) mbarrier_arrive(bar);
    };
    // Ping-pong: the warpgroups take turns issuing their products (named barrier k is
    // warpgroup k's turn, 256 threads: the 128 that wait and the 128 that give it).
    // Warpgroup 1 goes first; warpgroup 2 gives back all turns but its last, so that
    // every barrier completes as often as it is waited at (tiles + 1 turns each).
    auto take_turn = [&] {
        if constexpr (PingPong) named_barrier_sync(wg, 256);
    };
    auto give_turn = [&](bool last) {
        if constexpr (PingPong)
            if (!(last && wg == 2)) named_barrier_arrive(3 - wg, 256);
    };
    if constexpr (PingPong)
        if (wg == 2 && tiles > 0) named_barrier_arrive(1, 256);

    mbarrier_wait(q_full, 0);  // also before the output reuses Q's rows
    if (tiles > 0) {
        float s[BK / 2];
        float alpha0, alpha1;
        std::uint32_t p[BK / 16][4];
        auto kind_of = [&](int i) {  // a tile the warpgroup does not see is computed and masked whole (v6)
            const attention_tile kind = rows.classify(t_begin + i);
            return kind == attention_tile::skip ? attention_tile::partial : kind;
        };
        wait_k(0);
        take_turn();
        wgmma_fence();
        rows.issue_s(s, q_desc0, k_desc(0));
        give_turn(false);
        wgmma_wait<0>(s);
        release(&k_empty[0]);
        rows.softmax(s, t_begin, kind_of(0), alpha0, alpha1);
        rows.rescale(alpha0, alpha1);
        rows_t::pack(p, s);
        for (int i = 1; i < tiles; ++i) {
            wait_k(i);
            take_turn();
            wgmma_fence();
            rows.issue_s(s, q_desc0, k_desc(i % S));
            wait_v(i - 1);
            wgmma_fence();
            rows.issue_pv(p, v_desc((i - 1) % S));
            give_turn(false);
            wgmma_wait<1>(s);  // S_i done; P V may still run
            release(&k_empty[i % S]);
            rows.softmax(s, t_begin + i, kind_of(i), alpha0, alpha1);
            wgmma_wait<0>(rows.o);
            release(&v_empty[(i - 1) % S]);
            rows.rescale(alpha0, alpha1);
            rows_t::pack(p, s);
        }
        wait_v(tiles - 1);
        take_turn();
        wgmma_fence();
        rows.issue_pv(p, v_desc((tiles - 1) % S));
        give_turn(true);
        wgmma_wait<0>(rows.o);
        release(&v_empty[(tiles - 1) % S]);
    }
    // Each warpgroup's products read only its own 64 rows of Q, all waited for above:
    // its rows can hold the output without waiting for the other warpgroup.
    rows.write_output(qs, b, q0);
#else
    (void)a, (void)q_map, (void)k_map, (void)v_map, (void)order;
    __trap();  // the launcher refuses builds without sm_90a code
#endif
}

template <class T>
CUtensorMap attention_tensor_map(const T* base, index_t B, index_t Tn, index_t H, int D, index_t sb, index_t st, index_t sh,
                                 tensor_map_order* order, const char* what) {
    constexpr CUtensorMapDataType type =
        std::is_same_v<T, bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    return make_tensor_map(base, {B, Tn, H, index_t{D}}, {sb, st, sh, 1}, {1, wgmma_attn_bq, 1, 64}, type, order,
                           std::string("attention_tma (v7): ") + what);
}

template <class T, int D, bool PingPong>
void launch_attention_tma(const attention_args<T>& a, dim3 grid, std::size_t bytes, cudaStream_t stream) {
    tma_attn_maps order{};
    const CUtensorMap qm = attention_tensor_map(a.q, a.B, a.Tq, a.Hq, D, a.q_sb, a.q_st, a.q_sh, &order.q, "q");
    const CUtensorMap km = attention_tensor_map(a.k, a.B, a.Tk, a.Hkv, D, a.k_sb, a.k_st, a.k_sh, &order.k, "k");
    const CUtensorMap vm = attention_tensor_map(a.v, a.B, a.Tk, a.Hkv, D, a.v_sb, a.v_st, a.v_sh, &order.v, "v");
    const bool plain = !(a.softcap > 0.0f) && a.slopes == nullptr;
    auto kernel = plain ? attention_tma_kernel<T, D, true, PingPong> : attention_tma_kernel<T, D, false, PingPong>;
    set_shared_memory(kernel, bytes, "attention_tma");
    launch(kernel, grid, tma_attn_threads, bytes, stream, a, qm, km, vm, order);
}

}  // namespace detail

// How v7's two consumer warpgroups schedule their products (see the top of this
// file): each as soon as its data has arrived, or taking turns (ping-pong).
enum class tma_schedule { independent, pingpong };

// v7: out = attention(q, k, v) with TMA loads, a producer warpgroup and two
// consumer warpgroups on wgmma. T: tinyllm::bfloat16 or tinyllm::float16; head
// dims 64 and 128; a compute capability 9.0 GPU with code built for sm_90a.
// See the top of this file.
template <class T, tma_schedule Schedule = tma_schedule::pingpong>
void attention_tma(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                   std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                   const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    auto a = detail::wgmma_attention_args<T>(out, q, k, v, opts, "attention_tma", "v7");
    if (out.size() == 0) return;
    // No keys: every row is 0, as on every rung. A TMA map cannot describe an empty tensor
    // (cuTensorMapEncodeTiled refuses a size of 0), so v6 writes the zeros.
    if (a.Tk == 0) return attention_wgmma<T>(out, q, k, v, opts, stream);
    const std::size_t bytes = static_cast<std::size_t>(detail::tma_attn_smem_bytes(a.D));
    const dim3 grid = detail::wgmma_attention_grid(a, "attention_tma");
    constexpr bool pingpong = Schedule == tma_schedule::pingpong;
    if (a.D == 64) detail::launch_attention_tma<T, 64, pingpong>(a, grid, bytes, stream);
    else detail::launch_attention_tma<T, 128, pingpong>(a, grid, bytes, stream);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
