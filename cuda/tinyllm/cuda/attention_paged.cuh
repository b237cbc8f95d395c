// tinyllm/cuda/attention_paged.cuh — decode attention over a paged KV cache:
// the keys and values of B sequences of different lengths, read from fixed-size
// blocks of one shared pool through each sequence's block table.
//
// What. The kernel counterpart of cpu::attention_paged (<tinyllm/paged_kv.hpp>,
// where the pool, the block tables and their sharing are explained). Sequence b
// has lengths[b] positions; its position j lives in block block_tables(b, j / bs)
// of the pool, at row j % bs. Its Tq queries are its LAST Tq positions, so the
// masks are aligned to its own length: with n = lengths[b], query row i sits at
// position pos(i) = i + n - Tq, and for query head h (KV head h / (Hq/Hkv)):
//
//     s_j = logit(q_i . k_j)                 scale, soft-cap, ALiBi (attention_logit)
//     o_i = sum_j softmax_j(s) v_j           over the keys j < n that the mask lets
//                                            row i see (attention_visible_keys)
//
// A row that sees no key gives 0, as everywhere in tinyllm.
//
// Why a kernel of its own. attention_decode reads a (B, Tk, Hkv, D) cache where
// sequence b's key j is at a fixed stride; here consecutive positions jump
// between blocks anywhere in the pool, and each sequence stops at its own length.
// The algorithm is attention_decode's (rung 1's split-K flash-decoding); only the
// address of a key row and the per-sequence length change:
//
//   * split-K over the table: block (split, hkv, b) of the grid takes `per_split`
//     consecutive table entries of sequence b (whole pool blocks) and runs the
//     online softmax over their keys, in float:
//         m' = max(m, max_j s_j),  alpha = exp(m - m'),
//         l' = alpha l + sum_j exp(s_j - m'),  o' = alpha o + sum_j exp(s_j - m') v_j
//     It writes its unnormalized o with (m, l); attention_decode's combine kernel
//     merges the splits of each query row:
//         M = max_s m_s,   O = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s
//     With one split the kernel writes O = o / l itself and no combine runs.
//     The host does not know the lengths (they live on the device), so splits
//     are cut from the table's width, max_blocks; a split past a sequence's
//     length (or outside every row's visible keys) reads nothing and writes an
//     empty partial (m = -inf, l = 0), which the merge gives weight 0.
//   * GQA-aware: a grid block serves all Hq/Hkv query heads of its KV head times
//     the Tq queries (rows r = 0 .. Hq/Hkv * Tq - 1: head hkv * Hq/Hkv + r / Tq,
//     query r % Tq), so each key/value row is read from memory once per KV head.
//
// Rung 1 (the only one so far; naive but correct): 128 threads walk the split's
// keys 32 at a time. Per tile, the 32 key rows are looked up in the table and
// K and V are copied into shared memory as float; each thread computes dot
// products (row, key) from shared memory; a warp per query row updates that
// row's (m, l) and turns the scores into probabilities; each thread then updates
// elements (row, d) of the o accumulators, which live in shared memory.
// Shared memory: Q, o (rows x D), K (32 x (D + 1), padded against bank
// conflicts), V (32 x D), the scores (rows x 32) — 133 KiB at the limits
// (32 rows, D = 256), 33 KiB for one row of D = 128.
//
// Limits (rejected on the host): Hq/Hkv * Tq <= 32 rows per KV head (as
// attention_decode), D <= 256, max_blocks * block_size < 2^31. Every option of
// the CPU reference but key_lengths (the lengths say it) is supported.
//
// Values that live on the device are not checked on the host (that would mean a
// copy and a synchronisation per call). cpu::attention_paged's requirements
// hold for them — lengths[b] in [Tq, max_blocks * block_size], the first
// ceil(lengths[b] / block_size) table entries of sequence b in [0, blocks) —
// and a kernel given other values stays inside its memory: a length is clamped
// to [0, max_blocks * block_size], and the keys of a table entry outside
// [0, blocks) are skipped as if masked. The table entries past a sequence's
// length are never read (they may hold anything, -1 say).
//
// Memory: q, keys, values, out, block_tables, lengths and the ALiBi slopes are
// all device memory; the host checks that the tables, the lengths and the slopes
// are (a kernel reading a host pointer faults). The head dim of q, keys, values
// and out must be contiguous; every other stride is free.
#pragma once

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_decode.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int paged_threads = 128;  // 4 warps
inline constexpr int paged_tile = 32;      // keys per step: one per lane in the softmax update
inline constexpr int paged_max_head_dim = 256;

// What the paged kernel takes: attention_args for the queries, the output and
// the options (its k, v, Tk stay unused: 0 and null), plus the pool and the tables.
template <class T>
struct paged_args {
    attention_args<T> a;   // q (B, Tq, Hq, D), o (B, Tq, Hq, D), sizes, scale, soft-cap, slopes, mask
    const T* k = nullptr;  // (blocks, bs, Hkv, D)
    const T* v = nullptr;  // (blocks, bs, Hkv, D)
    index_t k_sblock = 0, k_st = 0, k_sh = 0;  // element strides of the block, row and head dims
    index_t v_sblock = 0, v_st = 0, v_sh = 0;
    const std::int32_t* tables = nullptr;  // (B, max_blocks)
    index_t table_sb = 0, table_si = 0;
    const std::int32_t* lengths = nullptr;  // (B)
    index_t lengths_stride = 0;
    int blocks = 0, block_size = 0, max_blocks = 0;

    TINYLLM_HOST_DEVICE index_t capacity() const { return static_cast<index_t>(max_blocks) * block_size; }
    // Sequence b's length, clamped to [0, capacity] (device values are not checked on the host).
    TINYLLM_HOST_DEVICE index_t length(int b) const {
        const index_t n = lengths[b * lengths_stride];
        return n < 0 ? 0 : (n > capacity() ? capacity() : n);
    }
    // The pool block holding sequence b's position j, or -1 if its table entry is outside the pool.
    TINYLLM_HOST_DEVICE index_t block_of(int b, index_t j) const {
        const index_t id = tables[b * table_sb + (j / block_size) * table_si];
        return id >= 0 && id < blocks ? id : -1;
    }
};

// Block (split, hkv, b): the online softmax of the group * Tq query rows of KV
// head hkv of sequence b over the keys of table entries [split * per_split,
// (split + 1) * per_split). part_o == nullptr: one split, write O normalized;
// otherwise write the unnormalized o and (m, l) in the layout of
// attention_decode_combine_kernel: slot ((b * Hq + h) * Tq + i) * splits + split.
template <class T>
__global__ void __launch_bounds__(paged_threads)
    attention_paged_split_kernel(paged_args<T> p, int per_split, float* part_o, float* part_ml) {
    constexpr int tile = paged_tile, warps = paged_threads / 32;
    const attention_args<T>& a = p.a;
    const int D = a.D, rows = a.group * a.Tq, ks = D + 1;  // ks: K's padded row stride in shared memory
    const int split = blockIdx.x, hkv = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

    // Shared memory: Q and o (rows, D), K (tile, D + 1), V (tile, D), scores (rows, tile), then per row m, l, alpha.
    float* sq = dynamic_shared<float>();
    float* so = sq + rows * D;
    float* sk = so + rows * D;
    float* sv = sk + tile * ks;
    float* ss = sv + tile * D;
    float* sm = ss + rows * tile;
    float* sl = sm + rows;
    float* salpha = sl + rows;
    __shared__ index_t k_at[tile], v_at[tile];  // element offsets of the tile's key and value rows, -1: none

    // This sequence's mask, and the keys this split may need: the table entries of the split,
    // cut to the keys any row sees (attention_tile_keys never reaches past the length).
    const index_t length = p.length(b);
    attention_mask mask = a.mask;
    mask.tk = length;
    key_range range = attention_tile_keys(mask, 0, a.Tq, length);
    const index_t first = static_cast<index_t>(split) * per_split * p.block_size;
    const index_t last = first + static_cast<index_t>(per_split) * p.block_size;
    range.begin = range.begin > first ? range.begin : first;
    range.end = range.end < last ? range.end : last;

    for (int idx = tid; idx < rows * D; idx += paged_threads) {
        const int r = idx / D, d = idx % D;
        const int h = hkv * a.group + r / a.Tq, i = r % a.Tq;
        sq[idx] = to_float(a.q_row(b, i, h)[d]);
        so[idx] = 0.0f;
    }
    for (int r = tid; r < rows; r += paged_threads) {
        sm[r] = -INFINITY;
        sl[r] = 0.0f;
    }
    __syncthreads();  // also when the split has no keys: the results below read what other threads set

    for (index_t k0 = range.begin; k0 < range.end; k0 += tile) {  // the same trip count in every thread
        // Where the tile's keys are: a table look-up per key, by the first `tile` threads.
        if (tid < tile) {
            const index_t j = k0 + tid;
            const index_t block = j < range.end ? p.block_of(b, j) : -1;
            const index_t row = j % p.block_size;
            k_at[tid] = block < 0 ? -1 : block * p.k_sblock + row * p.k_st + hkv * p.k_sh;
            v_at[tid] = block < 0 ? -1 : block * p.v_sblock + row * p.v_st + hkv * p.v_sh;
        }
        __syncthreads();
        // K and V rows into shared memory as float; missing rows as 0 (never 0 * NaN later).
        for (int idx = tid; idx < tile * D; idx += paged_threads) {
            const int t = idx / D, d = idx % D;
            sk[t * ks + d] = k_at[t] < 0 ? 0.0f : to_float(p.k[k_at[t] + d]);
            sv[idx] = v_at[t] < 0 ? 0.0f : to_float(p.v[v_at[t] + d]);
        }
        __syncthreads();
        // Scores of (row, key); -inf where the row does not see the key (or the key is missing).
        for (int idx = tid; idx < rows * tile; idx += paged_threads) {
            const int r = idx / tile, t = idx % tile;
            const int h = hkv * a.group + r / a.Tq, i = r % a.Tq;
            const index_t j = k0 + t;
            float s = -INFINITY;
            if (k_at[t] >= 0 && attention_visible_keys(mask, i, length).contains(j)) {
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += sq[r * D + d] * sk[t * ks + d];
                s = a.logit(dot, h, mask.query_position(i), j);
            }
            ss[idx] = s;
        }
        __syncthreads();
        // Online softmax, a warp per row, a lane per key: new m and l, scores -> exp(s - m').
        for (int r = warp; r < rows; r += warps) {
            const float m_old = sm[r], s = ss[r * tile + lane];
            const float m_new = fmaxf(m_old, warp_max(s));
            const float e = exp_shifted(s, m_new);
            const float sum = warp_sum(e);
            ss[r * tile + lane] = e;
            __syncwarp();  // every lane has read sm[r] before lane 0 writes it (shuffles do not order memory)
            if (lane == 0) {
                const float alpha = exp_shifted(m_old, m_new);  // 0 while the row has seen nothing
                salpha[r] = alpha;
                sl[r] = alpha * sl[r] + sum;
                sm[r] = m_new;
            }
        }
        __syncthreads();
        // o = alpha o + P V, element (row, d) per thread.
        for (int idx = tid; idx < rows * D; idx += paged_threads) {
            const int r = idx / D, d = idx % D;
            float acc = salpha[r] * so[idx];
            for (int t = 0; t < tile; ++t) acc += ss[r * tile + t] * sv[t * D + d];
            so[idx] = acc;
        }
        __syncthreads();  // before the next tile overwrites k_at, K, V and the scores
    }

    for (int idx = tid; idx < rows * D; idx += paged_threads) {
        const int r = idx / D, d = idx % D;
        const int h = hkv * a.group + r / a.Tq, i = r % a.Tq;
        if (part_o == nullptr) {
            a.o_row(b, i, h)[d] = from_float<T>(sl[r] != 0.0f ? so[idx] / sl[r] : 0.0f);
        } else {
            const index_t slot = ((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * gridDim.x + split;
            part_o[slot * D + d] = so[idx];
            if (d == 0) {
                part_ml[2 * slot] = sm[r];
                part_ml[2 * slot + 1] = sl[r];
            }
        }
    }
}

// Validate on the host (cpu::attention_paged's checks that need no device value,
// plus the kernel's limits) and bundle the arguments.
template <class T>
paged_args<T> make_paged_args(tensor_view<T, 4> out, tensor_view<const T, 4> q, tensor_view<const T, 4> keys,
                              tensor_view<const T, 4> values, tensor_view<const std::int32_t, 2> block_tables,
                              tensor_view<const std::int32_t, 1> lengths, const attention_options& opts,
                              std::string_view op) {
    const index_t B = q.extent(0), Tq = q.extent(1), Hq = q.extent(2), D = q.extent(3);
    const index_t blocks = keys.extent(0), bs = keys.extent(1), Hkv = keys.extent(2);
    const index_t max_blocks = block_tables.extent(1);
    TINYLLM_EXPECT(D >= 1, op, ": q has shape ", to_string(q.shape()), "; the head dim (last) must be at least 1");
    expect_shape(out, q.shape(), tinyllm::detail::cat(op, ": out (B, Tq, Hq, D) like q"));
    expect_shape(values, keys.shape(), tinyllm::detail::cat(op, ": values (blocks, block_size, Hkv, D) like keys"));
    TINYLLM_EXPECT(keys.extent(3) == D, op, ": q has head dim ", D, " but the blocks hold ", keys.extent(3));
    TINYLLM_EXPECT(blocks >= 1 && bs >= 1, op, ": the pool has shape ", to_string(keys.shape()),
                   "; it needs at least one block of at least one position (blocks, block_size, Hkv, D)");
    TINYLLM_EXPECT(Hkv >= 1 && Hq % Hkv == 0, op, ": the query heads (Hq = ", Hq,
                   ") must be a multiple of the key/value heads (Hkv = ", Hkv, ")");
    TINYLLM_EXPECT(block_tables.extent(0) == B && lengths.extent(0) == B, op, ": ", B, " sequences but ",
                   block_tables.extent(0), " block tables and ", lengths.extent(0), " lengths");
    TINYLLM_EXPECT(opts.key_lengths.data() == nullptr && opts.key_lengths.size() == 0, op,
                   ": key_lengths is not taken; the lengths give each sequence's keys");
    tinyllm::detail::check_attention_options(opts, q, q, op);  // q stands in for the keys' shape
    TINYLLM_EXPECT(q.stride(3) == 1 && keys.stride(3) == 1 && values.stride(3) == 1 && out.stride(3) == 1, op,
                   ": the head dim (last) of q, keys, values and out must be contiguous (stride 1); strides are q ",
                   q.stride(3), ", keys ", keys.stride(3), ", values ", values.stride(3), ", out ", out.stride(3));
    TINYLLM_EXPECT(D <= paged_max_head_dim, op, " supports head dims up to ", paged_max_head_dim, ", got ", D);
    constexpr index_t int_max = 2147483647;
    TINYLLM_EXPECT(B < int_max && Tq < int_max && Hq < int_max && Hkv < int_max && blocks < int_max && bs < int_max &&
                       max_blocks < int_max && max_blocks * bs < int_max,
                   op, ": B = ", B, ", Tq = ", Tq, ", Hq = ", Hq, ", Hkv = ", Hkv, ", blocks = ", blocks,
                   " and max_blocks * block_size = ", max_blocks, " * ", bs,
                   " must be below 2^31 (the kernels index with int)");
    TINYLLM_EXPECT(max_blocks * bs >= Tq, op, ": the block tables have room for ", max_blocks, " blocks of ", bs, " = ",
                   max_blocks * bs, " positions, fewer than the ", Tq, " queries of each sequence");
    // Every product of sizes is taken in 64 bits: group * Tq, say, passes 2^31 for Tq near 2^30.
    const index_t rows_per_head = (Hq / Hkv) * Tq;
    TINYLLM_EXPECT(rows_per_head <= decode_rows, op, ": Hq/Hkv * Tq = ", Hq / Hkv, " * ", Tq, " = ", rows_per_head,
                   " query rows share each KV head; at most ", decode_rows, " are supported (a grid block holds them)");
    // out: an address per element, apart from everything the kernels read.
    tinyllm::detail::expect_distinct_elements(op, "out", out);
    tinyllm::detail::expect_apart_from(op, "out", out, "q", q, "keys", keys, "values", values, "block_tables",
                                       block_tables, "lengths", lengths);
    tinyllm::detail::expect_apart_from_options(op, "out", out, opts);
    if (tinyllm::detail::has_view(opts.alibi_slopes))
        TINYLLM_EXPECT(opts.alibi_slopes.stride(0) == 1, op, ": alibi_slopes must be contiguous");
    expect_device_option(opts.alibi_slopes, "alibi_slopes", op);
    if (B > 0) {
        TINYLLM_EXPECT(is_device_memory(lengths.data()), op, ": lengths points to host memory (",
                       static_cast<const void*>(lengths.data()), "); the kernels read it on the GPU");
    }
    if (block_tables.size() > 0) {
        TINYLLM_EXPECT(is_device_memory(block_tables.data()), op, ": block_tables points to host memory (",
                       static_cast<const void*>(block_tables.data()), "); the kernels read it on the GPU");
    }

    paged_args<T> p;
    attention_args<T>& a = p.a;
    a.q = q.data(), a.o = out.data();
    a.q_sb = q.stride(0), a.q_st = q.stride(1), a.q_sh = q.stride(2);
    a.o_sb = out.stride(0), a.o_st = out.stride(1), a.o_sh = out.stride(2);
    a.B = static_cast<int>(B), a.Tq = static_cast<int>(Tq), a.Hq = static_cast<int>(Hq);
    a.Hkv = static_cast<int>(Hkv), a.D = static_cast<int>(D);
    a.group = static_cast<int>(Hq / Hkv);
    a.scale = static_cast<float>(tinyllm::detail::attention_scale(opts, D));
    a.softcap = opts.softcap ? *opts.softcap : 0.0f;
    a.mask = tinyllm::detail::make_attention_mask(opts, Tq, 0);  // tk: each sequence's length, set in the kernel
    a.slopes = opts.alibi_slopes.data();
    p.k = keys.data(), p.v = values.data();
    p.k_sblock = keys.stride(0), p.k_st = keys.stride(1), p.k_sh = keys.stride(2);
    p.v_sblock = values.stride(0), p.v_st = values.stride(1), p.v_sh = values.stride(2);
    p.tables = block_tables.data();
    p.table_sb = block_tables.stride(0), p.table_si = block_tables.stride(1);
    p.lengths = lengths.data();
    p.lengths_stride = lengths.stride(0);
    p.blocks = static_cast<int>(blocks);
    p.block_size = static_cast<int>(bs);
    p.max_blocks = static_cast<int>(max_blocks);
    return p;
}

}  // namespace detail

// out (B, Tq, Hq, D) = attention of each sequence's last Tq positions over its
// first lengths[b] positions, keys and values read through block tables, as
// cpu::attention_paged (<tinyllm/paged_kv.hpp>) computes it:
//   q               (B, Tq, Hq, D)
//   keys, values    (blocks, block_size, Hkv, D), one layer of a pool; Hq % Hkv == 0
//   block_tables    (B, max_blocks) int32: sequence b's position j is in block
//                   block_tables(b, j / block_size), row j % block_size
//   lengths         (B) int32, each in [Tq, max_blocks * block_size]
// All in device memory. splits = 0 picks the number of splits of each table from
// the GPU size, as attention_decode's rung 1 does (about 4 grid blocks per SM, no
// split under 256 positions of the table); splits = n asks for n (fewer when the
// table's entries run out).
// The workspace holds the splits' partial results between the two kernels.
template <class T>
void attention_paged(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> keys,
                     std::type_identity_t<tensor_view<const T, 4>> values,
                     tensor_view<const std::int32_t, 2> block_tables, tensor_view<const std::int32_t, 1> lengths,
                     const attention_options& opts, attention_workspace& workspace, int splits = 0,
                     cudaStream_t stream = nullptr) {
    const char* op = "attention_paged";
    const auto p = detail::make_paged_args<T>(out, q, keys, values, block_tables, lengths, opts, op);
    TINYLLM_EXPECT(splits >= 0, op, ": splits = ", splits, " must be >= 0 (0: automatic)");
    TINYLLM_EXPECT(p.a.B <= 65535 && p.a.Hkv <= 65535, op, ": B = ", p.a.B, " and Hkv = ", p.a.Hkv,
                   " must be at most 65535 (grid limits)");
    if (out.size() == 0) return;
    // The combine kernel has a block per query row: check its grid before allocating anything.
    const index_t rows = static_cast<index_t>(p.a.B) * p.a.Hq * p.a.Tq;
    const dim3 combine_grid = detail::checked_grid(
        rows, 1, 1, op,
        tinyllm::detail::cat("B * Hq * Tq = ", rows, " query rows (a block each in the combine kernel)"));
    const index_t table_blocks = p.max_blocks;  // >= 1: the host checks max_blocks * block_size >= Tq >= 1
    if (splits == 0) {
        splits = detail::decode_splits(p.capacity(), static_cast<index_t>(p.a.B) * p.a.Hkv, current_multiprocessors());
    }
    // Table entries per split; then drop the splits that would start past the table.
    const index_t per_split = ceil_div<index_t>(table_blocks, splits);
    splits = static_cast<int>(ceil_div<index_t>(table_blocks, per_split));
    const dim3 grid =
        detail::checked_grid(splits, p.a.Hkv, p.a.B, op,
                             tinyllm::detail::cat("(splits, Hkv, B) = (", splits, ", ", p.a.Hkv, ", ", p.a.B, ")"));

    float* part_o = nullptr;
    float* part_ml = nullptr;
    if (splits > 1) {  // (rows, splits, D) outputs, then (rows, splits, 2) (m, l) pairs
        const index_t partials = rows * splits;
        part_o = workspace.floats(static_cast<std::size_t>(partials * (p.a.D + 2)));
        part_ml = part_o + partials * p.a.D;
    }
    const index_t group_rows = static_cast<index_t>(p.a.group) * p.a.Tq;
    const index_t floats = 2 * group_rows * p.a.D + detail::paged_tile * (2 * p.a.D + 1) +
                           group_rows * detail::paged_tile + 3 * group_rows;
    const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(floats);
    auto kernel = detail::attention_paged_split_kernel<T>;
    detail::set_shared_memory(kernel, bytes, op);
    launch(kernel, grid, detail::paged_threads, bytes, stream, p, static_cast<int>(per_split), part_o, part_ml);
    TINYLLM_CUDA_CHECK_LAUNCH();
    if (splits > 1) {
        launch(detail::attention_decode_combine_kernel<T>, combine_grid, 128, 0, stream, p.a, splits, part_o, part_ml);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

// The same with a temporary workspace (allocated and freed per call) and automatic splits:
// cpu::attention_paged's signature.
template <class T>
void attention_paged(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> keys,
                     std::type_identity_t<tensor_view<const T, 4>> values,
                     tensor_view<const std::int32_t, 2> block_tables, tensor_view<const std::int32_t, 1> lengths,
                     const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    attention_workspace workspace;
    attention_paged<T>(out, q, keys, values, block_tables, lengths, opts, workspace, 0, stream);
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the workspace is freed
}

}  // namespace tinyllm::cuda
