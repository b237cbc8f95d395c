// tinyllm/cuda/sampling.cuh — the samplers of tinyllm/sampling.hpp on the GPU,
// batched over rows (B, V) with V up to 256k, choosing EXACTLY the token the
// CPU reference chooses for the same seed.
//
// How the GPU agrees with the CPU. Nothing here is "close enough": every value
// that decides a token is computed with the same operations as the CPU code
// (tinyllm/sampling_math.hpp): the temperature is one IEEE division, exp is
// tinyllm's own fma polynomial, probabilities are integer weights
// q = floor(exp(z - max) * 2^40), and every mass is a 64-bit INTEGER sum, which
// is the same in any order — so a block may reduce with trees and atomics and
// still match the CPU's loop bit for bit. The draw is t = floor(S * r / 2^64)
// with r = 64 Philox bits of (seed, stream = row, step); the token is the first
// index whose running sum of q exceeds t.
//
// Sort-free thresholds. top-k and top-p keep every logit >= a threshold. The
// threshold is found by RADIX SELECTION on the order key of the logits (a uint32
// that sorts like the float, order_key): in 4 passes of 8 bits, each pass
// builds a 256-bin histogram of the keys that share the prefix chosen so far,
// weighted by 1 (top-k: counts) or by q (top-p: probability mass), and walks
// the bins from the top until the running total reaches the target (k, or
// ceil(p * S)). After 4 passes the prefix IS the threshold key: the largest
// key K with weight(keys >= K) >= target. This is the CPU's "walk the sorted
// row until the mass reaches p", without sorting 128k values — and the
// histograms are integer, so exact.
//
// The ladder (v1 and v2: one thread block per row):
//   v1 unfused — one kernel per processor, as composable as the CPU chain:
//                temperature(), top_k(), top_p(), min_p() each read the logits
//                and write -inf over what they drop; sample() then draws. Each
//                step re-reads (and rewrites) the whole (B, V) tensor.
//   v2 fused   — sample_fused(out, logits, params, ...): the chain temperature ->
//                top-k -> top-p -> min-p -> draw in ONE kernel that never writes
//                the logits: the temperature is folded into every read
//                (z / T), the thresholds live in registers, min-p is one test
//                against the row maximum, and the draw sums only what is kept.
//                Fewer launches and no writes of (B, V).
//   v3 split   — sample_split(out, logits, params, ...) and greedy_split(): the
//                v2 chain with SEVERAL blocks per row (grid = B x splits; a
//                block reads a chunk of V / splits elements with float4 loads).
//                Why: at B = 64 v2 keeps 64 of an H200's 132 SMs busy and each
//                SM reads its 513 KB row alone (measured: greedy 119 us, top-k
//                677 us, top-p 913 us, against ~8 us to read 33 MB once).
//                How, without grid-wide barriers (they deadlock when the blocks
//                are not all resident): each pass adds its block's part to the
//                row's state in global memory with atomics (integer max, integer
//                histogram bins, integer masses: the same in any order, so still
//                the CPU's bits), and the row's LAST block to arrive (atomic
//                counter after __threadfence) finishes the pass in the same
//                launch — picks the radix byte (as radix_pick), or draws t,
//                finds the chunk whose running mass crosses it from the blocks'
//                partial masses, and scans that one chunk. Greedy is ONE launch
//                (a 64-bit atomicMax of key << 32 | ~index); sampling is one
//                launch per pass: max (+ top-k's first byte, whose counts need
//                no maximum), 3 more bytes of top-k, 4 of top-p, draw (2 to 9
//                launches, ~3 us each). The last block picks a byte with one
//                warp (radix_pick_warp), not a 256-step serial walk. Splits:
//                ~2 blocks per SM over the batch, at least 4096 elements per
//                block (split_count).
//                Expected: greedy near the read of 33 MB (~10-15 us); top-k
//                50 / top-p 0.9: 5 / 6 launches, each reading the row (after
//                the first, from L2) with every SM: ~30-40 / 40-60 us.
//                Measured (H200, 2026-12-04, B=64, V=128256): greedy 18.5 us;
//                top-k 354 us, top-p 412 us, about ten times the estimate: the
//                radix passes are bound by per-element work (the exact weights)
//                and latency, not by the reads (docs/sampling.md). Each pass is
//                its own instantiation of sample_split_kernel (56-64 registers,
//                two 512-thread blocks per SM). The public greedy() and
//                sample(params) use v3 whenever it gives a row more than one
//                block (B < 264 and V > 4096), else v1 greedy / v2 (fewer
//                launches); sample(params) takes v6 (below) first whenever
//                top-k lets it, and v5 for top-p without top-k.
//   v4 candidates — sample_candidates(out, logits, params, ...): the chain in ONE
//                launch when top-k is on (0 < k < V, k <= 1024). Why: v3 reads
//                the row once per radix byte (5 launches for top-k), while the k
//                largest keys of a row are among the k largest of each chunk.
//                How: a block holds its chunk (at most 8192 elements: 16 keys per
//                thread, in registers) and finds the chunk's k-th largest key L_j
//                by radix selection with block barriers only (warp-aggregated
//                histogram adds, __match_any_sync), among the keys >= a bound
//                (the k-th largest of the threads' own maxima); it writes the keys above L_j
//                with their indices (fewer than k, in row order) and L_j with its
//                count of equal keys. The row's last block selects the row's k-th
//                largest among those slots (exactly: the counts carry the ties),
//                then top-p among them, then draws: chunk masses from the slots,
//                the token from the drawn chunk's slots — or, when that chunk's
//                L_j is kept (ties at the threshold, whose indices have no slot),
//                from a scan of that chunk, as v3. 64 registers: two blocks per SM.
//                Expected (B = 64, V = 128256, k = 50: 16 chunks, at most 816
//                slots per row): about greedy v3's single read (18.6 us) plus the
//                blocks' selections and the last blocks' merge, 25-40 us.
//                Measured (H200, 2026-12-04), before the bound: 122 us against
//                v3's 354 us; the blocks' four radix passes over all 16 keys a
//                thread holds were latency-bound (docs/sampling.md). With the
//                bound (not yet measured): expected 70-90 us. Without top-k (top-p or
//                min-p alone) the kept set has no bound: sample_candidates runs v3.
//   v5 buckets — sample_buckets(out, logits, params, ...): top-p WITHOUT top-k
//                in THREE launches instead of v3's six. Why: v3 finds top-p's
//                threshold one key byte per launch, and two of those passes
//                compute the exact weight q of a large part of the row (run E's
//                profile: 181 and 122 of its ~470 us). But a threshold only has
//                to be found among the elements that could be it. How: after the
//                maximum (v3's pass), every block adds its masses q into 256
//                buckets of x = z / T - m, eighth nats wide (mass_bucket: a larger
//                key never lands in a lower bucket), and the row's last block
//                finds S, the target and the bucket c where the mass from the top
//                reaches it. The third launch: each block sums its kept mass
//                above c (weighed 32 at a time through a warp's queue,
//                warp_queue, so no lane idles through another's exponential)
//                and appends its elements in c to the row's candidate
//                list (a ballot and one atomic per warp); the row's last block
//                stages the candidates' keys in shared memory (up to 2048), selects
//                tau among them alone, starting below the key bytes they all
//                share, adds their kept masses to their chunks and draws as v3 (a
//                row whose candidates overflow the list, bucket_list_max, is read
//                again by that block). Exact: every key above c is above
//                every candidate. Expected (B = 64, V = 128256, p = 0.9; not
//                yet measured): 45-70 us by an instruction count of its passes
//                (docs/sampling.md), against v3's 412 us measured in run E.
//   v6 filtered — sample_filtered(out, logits, params, ...): v4's slots and
//                last block, with fewer blocks per row and no selection in
//                most chunks. Why: v4 runs two radix selections in every
//                block (the bound M, then L_j: eight barrier-bound passes with
//                a one-warp pick each), and a row of 16 chunks at B = 64 is
//                1024 blocks, four waves of two per SM. But the last block
//                only needs, per chunk, the keys >= SOME L <= K (listed above
//                L, counted at L), and any key that k of the row's keys reach
//                is such an L. How: a row gets one wave of blocks (4 at B =
//                64), each walking consecutive chunks; the first chunk's M
//                becomes the block's bound, published to the row with an
//                atomicMax, and a chunk whose keys above the best bound known
//                fit its cap (k + k/2 + 32 slots) is only counted and written
//                (two block scans) — M or the exact L_j only when they do not.
//                The last block copies the slots in use into shared memory
//                first (stage_slots), so its radix passes wait on no memory.
//                Expected (B = 64, V = 128256, k = 50; not yet measured): the
//                read of the row plus one selection per block and the last
//                blocks' merge, 30-50 us against v4's 70-90 (docs/sampling.md).
//                The public sample() takes v6 for top-k.
//   v7 chained — sample_chained(out, logits, params, ...): v5's three passes
//                in ONE launch. Why: between two kernels the GPU drains the
//                first (its last, partial wave of blocks) and starts the next,
//                twice per v5 call, while a row's next pass needs only that
//                row's last one. How: 3 x B x splits blocks, each taking a
//                ticket (atomicAdd) that gives it its pass and chunk; a block
//                of a later pass waits (wait_at_least, launch.cuh) until its
//                row's last block of the pass before raises the row's stage.
//                Every wait is for lower tickets, which are running or done.
//                Expected (not yet measured): 5-10 us less than v5. The
//                public sample() keeps v5 until a GPU has run it.
// Greedy v1 (greedy_reduction) is one argmax reduction per row.
//
// Errors. Parameters are checked on the host before any launch (the same
// checks and messages as the CPU). NaN or +inf logits, or a row where every
// logit is -inf, are found by the kernels, which write a status per row; the
// launchers copy it back and throw tinyllm::error naming the row (this
// synchronizes `stream`). Pass sampling_check::none to skip that copy (e.g. when
// timing): the bad rows then get the token -1.
//
// Streams. Every launch, copy and wait of a call is on its `stream` (never the
// legacy default stream), and the status buffer is per host thread and
// stream, so calls on different streams do not interfere.
//
// Not done yet (future rungs): bfloat16 logits. The radix histograms already
// sum a thread's hot bins in registers before touching shared memory
// (bin_cache), because one row's logits share few top key bytes.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/sampling.hpp>
#include <tinyllm/sampling_math.hpp>
#include <tinyllm/tensor.hpp>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace tinyllm::cuda {

// Whether a launcher copies the per-row status back and throws on bad rows.
enum class sampling_check { sync, none };

namespace detail {

inline constexpr int sampling_threads = 512;
inline constexpr int sampling_items = 4;  // contiguous elements per thread in the draw's scan

// Per-row status written by the kernels.
enum : int { row_ok = 0, row_bad_logit = 1, row_all_masked = 2, row_bad_token = 3 };

struct argmax_pair {
    float value;
    int index;
};
struct argmax_op {
    __device__ argmax_pair operator()(const argmax_pair& a, const argmax_pair& b) const {
        if (a.value > b.value) return a;
        if (b.value > a.value) return b;
        return a.index <= b.index ? a : b;
    }
};
struct max_op {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

TINYLLM_DEVICE bool is_bad_logit(float z) { return isnan(z) || z == INFINITY; }

// The scaled logit z / T of element i (T = 1 leaves z unchanged, exactly).
template <class T>
TINYLLM_DEVICE float scaled(const T* row, index_t i, float temperature) {
    return temperature_scaled(to_float(row[i]), temperature);
}

// The row maximum of z / T and whether any z / T is NaN or +inf (block-wide):
// a NaN or +inf logit, or a finite one that a tiny T overflows.
template <int Threads, class T>
__device__ float row_max_checked(const T* row, index_t V, float temperature, bool& bad) {
    using reduce = cub::BlockReduce<float, Threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ float s_max;
    float m = -INFINITY;
    bool my_bad = false;
    for (index_t i = threadIdx.x; i < V; i += Threads) {
        const float x = temperature_scaled(to_float(row[i]), temperature);
        my_bad |= is_bad_logit(x);
        m = fmaxf(m, x);
    }
    bad = __syncthreads_or(my_bad) != 0;
    const float block_max = reduce(storage).Reduce(m, max_op{});
    if (threadIdx.x == 0) s_max = block_max;
    __syncthreads();
    return s_max;
}

// The first index of the row maximum (lowest index among ties).
template <int Threads, class T>
__device__ int row_argmax(const T* row, index_t V) {
    using reduce = cub::BlockReduce<argmax_pair, Threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ int s_index;
    argmax_pair best{-INFINITY, static_cast<int>(V)};
    for (index_t i = threadIdx.x; i < V; i += Threads) {
        const float z = to_float(row[i]);
        if (z > best.value || (z == best.value && static_cast<int>(i) < best.index)) best = {z, static_cast<int>(i)};
    }
    const argmax_pair r = reduce(storage).Reduce(best, argmax_op{});
    if (threadIdx.x == 0) s_index = r.index;
    __syncthreads();
    return s_index;
}

// Sum of a 64-bit integer over the block (exact, any order).
template <int Threads>
__device__ std::uint64_t block_sum(std::uint64_t v) {
    using reduce = cub::BlockReduce<unsigned long long, Threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ unsigned long long s_sum;
    const unsigned long long total = reduce(storage).Sum(static_cast<unsigned long long>(v));
    if (threadIdx.x == 0) s_sum = total;
    __syncthreads();
    const std::uint64_t result = s_sum;
    __syncthreads();
    return result;
}

// A 256-bin histogram of 64-bit sums, added to in shared memory with 32-bit
// atomics. A 32-bit atomicAdd on shared memory is one instruction; a 64-bit one
// is a compare-and-swap loop, which threads adding to the same bin retry. v3's
// radix passes kept the shared-memory pipes ~50% busy at 3% of DRAM's bandwidth
// (ncu, H200); with 32-bit adds they took 15% less time. The sum is kept as
// two 32-bit words: `lo` gets the low halves, and an adder whose add wraps `lo`
// round (it sees the old value) carries one into `hi`, with the high halves.
// Every wrap is counted exactly once, so hi * 2^32 + lo is the exact sum.
struct shared_hist64 {
    unsigned lo[256];
    unsigned hi[256];

    template <int Threads>
    __device__ void clear() {
        for (int i = threadIdx.x; i < 256; i += Threads) lo[i] = hi[i] = 0;
    }
    // Adds weight w[k] to bin b[k] for k < N (a zero weight adds nothing). Every
    // low-half add is issued before any of their old values is used, so the N
    // shared-memory round trips overlap instead of following one another (each
    // carry test waits for its add's old value).
    template <int N>
    __device__ void add_batch(const std::uint32_t (&b)[N], const std::uint64_t (&w)[N]) {
        unsigned old[N];
#pragma unroll
        for (int k = 0; k < N; ++k) old[k] = w[k] ? atomicAdd(&lo[b[k]], static_cast<unsigned>(w[k])) : 0u;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const auto w_lo = static_cast<unsigned>(w[k]), w_hi = static_cast<unsigned>(w[k] >> 32);
            const unsigned carry = old[k] + w_lo < old[k] ? 1u : 0u;  // this add wrapped lo round
            if (w_hi + carry) atomicAdd(&hi[b[k]], w_hi + carry);
        }
    }
    __device__ void add(std::uint32_t b, std::uint64_t w) {
        const std::uint32_t bins[1] = {b};
        const std::uint64_t weights[1] = {w};
        add_batch(bins, weights);
    }
    // After a barrier that follows every add: bin b's sum.
    __device__ unsigned long long get(int b) const {
        return (static_cast<unsigned long long>(hi[b]) << 32) | lo[b];
    }
    // Every bin's sum into out[256] (the plain array radix_pick reads).
    template <int Threads>
    __device__ void copy_to(unsigned long long* out) const {
        for (int i = threadIdx.x; i < 256; i += Threads) out[i] = get(i);
    }
};

// A thread's few most recent histogram bins, summed in registers and added to
// the shared histogram only when evicted or flushed. The logits of one row
// share few top key bytes (all of them can fall into 2-4 bins of the first
// pass), and 512 threads adding into the same shared word would serialize;
// with the cache each thread adds to a hot bin about once per pass. Every
// weight still reaches the histogram exactly once (integer sums: any order).
struct bin_cache {
    static constexpr int slots = 4;
    static constexpr std::uint32_t empty = 0xffffffffu;
    std::uint32_t bin[slots];
    unsigned long long sum[slots];

    __device__ bin_cache() {
#pragma unroll
        for (int s = 0; s < slots; ++s) {
            bin[s] = empty;
            sum[s] = 0;
        }
    }
    __device__ void add(shared_hist64& hist, std::uint32_t b, unsigned long long w) {
#pragma unroll
        for (int s = 0; s < slots; ++s) {
            if (bin[s] == b) {
                sum[s] += w;
                return;
            }
        }
        if (bin[slots - 1] != empty) hist.add(bin[slots - 1], sum[slots - 1]);  // evict the oldest
#pragma unroll
        for (int s = slots - 1; s > 0; --s) {
            bin[s] = bin[s - 1];
            sum[s] = sum[s - 1];
        }
        bin[0] = b;
        sum[0] = w;
    }
    __device__ void flush(shared_hist64& hist) {
#pragma unroll
        for (int s = 0; s < slots; ++s)
            if (bin[s] != empty) hist.add(bin[s], sum[s]);
    }
};

// radix_pick by the 32 lanes of one warp (the same byte and `above` as the
// CPU's sequential walk): lane l sums bins 255 - 8l down to 248 - 8l, a warp
// scan from the top finds the lane whose bins reach the target, and that lane
// walks its 8 bins. A serial walk of 256 bins by one thread costs a few
// microseconds of dependent loads, paid once per radix pass. `total` gets the
// sum of all bins.
template <class Count>  // unsigned long long, or unsigned (v4's block counts)
__device__ std::uint32_t radix_pick_warp(const Count* hist, std::uint64_t target, std::uint64_t& above,
                                         std::uint64_t& total) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    const int top = 255 - 8 * lane;
    unsigned long long mine = 0;
    for (int i = 0; i < 8; ++i) mine += hist[top - i];
    unsigned long long inclusive = mine;
    for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned long long v = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += v;
    }
    total = __shfl_sync(0xffffffffu, inclusive, 31);
    const unsigned crossing = __ballot_sync(0xffffffffu, above + inclusive >= target);
    if (crossing == 0) {  // unreachable when target <= the total weight (as radix_pick)
        above += total;
        return 0;
    }
    const int first = __ffs(static_cast<int>(crossing)) - 1;
    std::uint32_t chosen = 0;
    unsigned long long acc = above + inclusive - mine;  // lane `first`: the weight above its bins
    if (lane == first) {
        for (int i = 0; i < 8; ++i) {
            const unsigned long long h = hist[top - i];
            if (acc + h >= target) {
                chosen = static_cast<std::uint32_t>(top - i);
                break;
            }
            acc += h;
        }
    }
    chosen = __shfl_sync(0xffffffffu, chosen, first);
    above = __shfl_sync(0xffffffffu, acc, first);
    return chosen;
}

// Radix selection: the largest key K such that the weight of the elements with
// key >= K (among those with key >= lower) is at least `target` (>= 1, and at
// most the total weight). key_of(i) and weight_of(i) describe element i. v2
// picks each byte with thread 0's serial walk (radix_pick, the CPU's code);
// WarpPick (v4's last block) with one warp (radix_pick_warp, the same byte).
// A caller that knows the top `common_bytes` bytes of every key it weighs
// (those of `common`; v5's last block, whose candidates lie within an eighth
// of a nat) skips their passes: no weighed key is above that prefix.
template <int Threads, bool WarpPick = false, class KeyOf, class WeightOf>
__device__ std::uint32_t radix_select(index_t V, std::uint64_t target, std::uint32_t lower, KeyOf key_of,
                                      WeightOf weight_of, std::uint32_t common = 0, int common_bytes = 0) {
    __shared__ shared_hist64 sums;
    __shared__ unsigned long long hist[256];
    __shared__ std::uint32_t s_prefix;
    __shared__ unsigned long long s_above;
    std::uint32_t mask = common_bytes > 0 ? ~0u << (32 - 8 * common_bytes) : 0u;
    std::uint32_t prefix = common & mask;
    std::uint64_t above = 0;  // weight of the elements whose key is above the chosen prefix
    for (int shift = 24 - 8 * common_bytes; shift >= 0; shift -= 8) {
        sums.clear<Threads>();
        __syncthreads();
        bin_cache cache;
        for (index_t i = threadIdx.x; i < V; i += Threads) {
            const std::uint32_t k = key_of(i);
            if (k >= lower && (k & mask) == prefix) {
                const std::uint64_t w = weight_of(i);
                if (w) cache.add(sums, (k >> shift) & 0xffu, static_cast<unsigned long long>(w));
            }
        }
        cache.flush(sums);
        __syncthreads();
        sums.copy_to<Threads>(hist);
        __syncthreads();
        if constexpr (WarpPick) {
            if (threadIdx.x < 32) {
                std::uint64_t acc = above, total = 0;
                const std::uint32_t chosen = radix_pick_warp(hist, target, acc, total);
                if (threadIdx.x == 0) {
                    s_above = acc;
                    s_prefix = prefix | (chosen << shift);
                }
            }
        } else if (threadIdx.x == 0) {
            std::uint64_t acc = above;
            const std::uint32_t chosen = radix_pick(hist, target, acc);  // shared with the CPU (sampling_math.hpp)
            s_above = acc;
            s_prefix = prefix | (chosen << shift);
        }
        __syncthreads();
        above = s_above;
        prefix = s_prefix;
        mask |= 0xffu << shift;
        __syncthreads();
    }
    return prefix;
}

// The first index i (in row order) with weight_of(0) + ... + weight_of(i) > t,
// where t < the total weight. Tiles of Threads * Items elements; each thread
// owns Items contiguous ones; an exact integer block scan finds the crossing.
template <int Threads, int Items, class WeightOf>
__device__ int first_crossing(index_t V, std::uint64_t t, WeightOf weight_of) {
    using scan = cub::BlockScan<unsigned long long, Threads>;
    __shared__ typename scan::TempStorage storage;
    __shared__ int s_found;
    if (threadIdx.x == 0) s_found = -1;
    std::uint64_t running = 0;  // the same in every thread
    for (index_t base = 0; base < V; base += static_cast<index_t>(Threads) * Items) {
        const index_t first = base + static_cast<index_t>(threadIdx.x) * Items;
        std::uint64_t w[Items];
        unsigned long long local = 0;
        for (int j = 0; j < Items; ++j) {
            w[j] = first + j < V ? weight_of(first + j) : 0;
            local += w[j];
        }
        unsigned long long before = 0, tile = 0;
        scan(storage).ExclusiveSum(local, before, tile);
        if (running + before <= t && t < running + before + local) {  // exactly one thread
            std::uint64_t c = running + before;
            for (int j = 0; j < Items; ++j) {
                c += w[j];
                if (c > t) {
                    s_found = static_cast<int>(first + j);
                    break;
                }
            }
        }
        running += tile;
        __syncthreads();
        if (running > t) break;  // uniform across the block
    }
    return s_found;
}

// ---- kernels ------------------------------------------------------------------

struct fused_params {
    float temperature;  // > 0 (0 goes to the greedy kernel)
    index_t top_k;      // 0: off
    float top_p;        // 1: off
    float min_p;        // 0: off
};

// v2: the whole chain for one row per block; the logits are only read.
template <int Threads, class T>
__global__ void sample_fused_kernel(token_id* out, int* status, const T* logits, index_t V, index_t row_stride,
                                    fused_params p, std::uint64_t seed, std::uint64_t step,
                                    std::uint64_t stream_offset) {
    const index_t b = blockIdx.x;
    const T* row = logits + b * row_stride;
    bool bad = false;
    const float m = row_max_checked<Threads>(row, V, p.temperature, bad);
    if (bad || m == -INFINITY) {
        if (threadIdx.x == 0) {
            status[b] = bad ? row_bad_logit : row_all_masked;
            out[b] = -1;
        }
        return;
    }
    auto key_of = [&](index_t i) { return order_key(scaled(row, i, p.temperature)); };
    auto q_of = [&](index_t i) { return sampling_weight(::tinyllm::detail::sub_rn(scaled(row, i, p.temperature), m)); };

    std::uint32_t threshold = 0;  // keep key >= threshold
    if (p.top_k > 0 && p.top_k < V)
        threshold = radix_select<Threads>(V, static_cast<std::uint64_t>(p.top_k), 0u, key_of,
                                          [](index_t) { return std::uint64_t{1}; });
    if (p.top_p < 1.0f) {
        std::uint64_t local = 0;
        for (index_t i = threadIdx.x; i < V; i += Threads)
            if (key_of(i) >= threshold) local += q_of(i);
        const std::uint64_t total = block_sum<Threads>(local);
        threshold = radix_select<Threads>(V, top_p_target(total, p.top_p), threshold, key_of, q_of);
    }
    auto kept_q = [&](index_t i) -> std::uint64_t {
        const float z = scaled(row, i, p.temperature);
        if (order_key(z) < threshold) return 0;
        const float x = ::tinyllm::detail::sub_rn(z, m);
        if (p.min_p > 0.0f && sampling_exp(x) < p.min_p) return 0;
        return sampling_weight(x);
    };
    std::uint64_t local = 0;
    for (index_t i = threadIdx.x; i < V; i += Threads) local += kept_q(i);
    const std::uint64_t total = block_sum<Threads>(local);
    const std::uint64_t t =
        sampling_threshold(total, sampling_bits(seed, static_cast<std::uint64_t>(b) + stream_offset, step));
    const int token = first_crossing<Threads, sampling_items>(V, t, kept_q);
    if (threadIdx.x == 0) {
        out[b] = token;
        status[b] = row_ok;
    }
}

// A chooser's first step: the row maximum m. A row with NaN/+inf logits or with
// every logit -inf has no token: thread 0 records why (token -1) and false is returned.
template <int Threads, class T>
__device__ bool chooser_row_max(const T* row, index_t V, index_t b, token_id* out, int* status, float& m) {
    bool bad = false;
    m = row_max_checked<Threads>(row, V, 1.0f, bad);
    if (!bad && m != -INFINITY) return true;
    if (threadIdx.x == 0) {
        status[b] = bad ? row_bad_logit : row_all_masked;
        out[b] = -1;
    }
    return false;
}

// Greedy: one argmax reduction per row.
template <int Threads, class T>
__global__ void greedy_kernel(token_id* out, int* status, const T* logits, index_t V, index_t row_stride) {
    const index_t b = blockIdx.x;
    const T* row = logits + b * row_stride;
    float m;
    if (!chooser_row_max<Threads>(row, V, b, out, status, m)) return;
    const int token = row_argmax<Threads>(row, V);
    if (threadIdx.x == 0) {
        out[b] = token;
        status[b] = row_ok;
    }
}

// v1 processors, in place. which: 0 temperature, 1 top-k, 2 top-p, 3 min-p.
template <int Threads, class T>
__global__ void processor_kernel(T* logits, int* status, index_t V, index_t row_stride, int which, float value,
                                 index_t k) {
    const index_t b = blockIdx.x;
    T* row = logits + b * row_stride;
    bool bad = false;
    const float m = row_max_checked<Threads>(row, V, 1.0f, bad);
    if (threadIdx.x == 0) status[b] = bad ? row_bad_logit : row_ok;
    if (bad || m == -INFINITY) return;  // an all -inf row stays as it is; the chooser reports it
    const T minus_inf = from_float<T>(-INFINITY);
    if (which == 0) {
        if (value == 0.0f) {
            const int best = row_argmax<Threads>(row, V);
            for (index_t i = threadIdx.x; i < V; i += Threads)
                if (i != best) row[i] = minus_inf;
        } else {
            for (index_t i = threadIdx.x; i < V; i += Threads)
                row[i] = from_float<T>(::tinyllm::detail::div_rn(to_float(row[i]), value));
        }
        return;
    }
    auto key_of = [&](index_t i) { return order_key(to_float(row[i])); };
    auto q_of = [&](index_t i) { return sampling_weight(::tinyllm::detail::sub_rn(to_float(row[i]), m)); };
    if (which == 3) {
        for (index_t i = threadIdx.x; i < V; i += Threads)
            if (sampling_exp(::tinyllm::detail::sub_rn(to_float(row[i]), m)) < value) row[i] = minus_inf;
        return;
    }
    std::uint32_t threshold = 0;
    if (which == 1) {
        if (k >= V) return;
        threshold = radix_select<Threads>(V, static_cast<std::uint64_t>(k), 0u, key_of,
                                          [](index_t) { return std::uint64_t{1}; });
    } else {
        if (value == 1.0f) return;
        std::uint64_t local = 0;
        for (index_t i = threadIdx.x; i < V; i += Threads) local += q_of(i);
        const std::uint64_t total = block_sum<Threads>(local);
        threshold = radix_select<Threads>(V, top_p_target(total, value), 0u, key_of, q_of);
    }
    __syncthreads();  // every thread has its threshold before anyone writes
    for (index_t i = threadIdx.x; i < V; i += Threads)
        if (key_of(i) < threshold) row[i] = minus_inf;
}

// v1 chooser: a draw from softmax of the logits as they are.
template <int Threads, class T>
__global__ void sample_kernel(token_id* out, int* status, const T* logits, index_t V, index_t row_stride,
                              std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset) {
    const index_t b = blockIdx.x;
    const T* row = logits + b * row_stride;
    float m;
    if (!chooser_row_max<Threads>(row, V, b, out, status, m)) return;
    auto q_of = [&](index_t i) { return sampling_weight(::tinyllm::detail::sub_rn(to_float(row[i]), m)); };
    std::uint64_t local = 0;
    for (index_t i = threadIdx.x; i < V; i += Threads) local += q_of(i);
    const std::uint64_t total = block_sum<Threads>(local);
    const std::uint64_t t =
        sampling_threshold(total, sampling_bits(seed, static_cast<std::uint64_t>(b) + stream_offset, step));
    const int token = first_crossing<Threads, sampling_items>(V, t, q_of);
    if (threadIdx.x == 0) {
        out[b] = token;
        status[b] = row_ok;
    }
}

// Penalties over the generated tokens (B, L): each distinct token of a row is
// handled by the thread holding its FIRST occurrence (so exactly once), which
// also counts its occurrences. O(L^2 / threads) per row: fine for L of a few
// thousand. mode 0: repetition (a = penalty); 1: frequency a, presence c.
template <int Threads, class T>
__global__ void penalty_kernel(T* logits, int* status, index_t V, index_t row_stride, const token_id* generated,
                               index_t L, index_t generated_stride, int mode, float a, float c) {
    const index_t b = blockIdx.x;
    T* row = logits + b * row_stride;
    const token_id* g = generated + b * generated_stride;
    if (threadIdx.x == 0) status[b] = row_ok;
    __syncthreads();
    for (index_t j = threadIdx.x; j < L; j += Threads) {
        const token_id t = g[j];
        if (t < 0) continue;
        if (t >= V) {
            status[b] = row_bad_token;
            continue;
        }
        bool first = true;
        int count = 0;
        for (index_t j2 = 0; j2 < L; ++j2) {
            if (g[j2] != t) continue;
            if (j2 < j) first = false;
            ++count;
        }
        if (!first) continue;
        const float z = to_float(row[t]);
        row[t] = from_float<T>(mode == 0 ? repetition_penalized(z, a)
                                         : frequency_presence_penalized(z, static_cast<float>(count), a, c));
    }
}

// Logit bias (add) or ban (set -inf) for n listed tokens in every row.
template <class T>
__global__ void token_list_kernel(T* logits, index_t row_stride, const token_id* tokens, const float* bias,
                                  index_t n) {
    const index_t b = blockIdx.x;
    T* row = logits + b * row_stride;
    for (index_t j = threadIdx.x; j < n; j += blockDim.x) {
        const token_id t = tokens[j];
        row[t] = bias ? from_float<T>(::tinyllm::detail::add_rn(to_float(row[t]), bias[j])) : from_float<T>(-INFINITY);
    }
}

// ---- v3 split: several blocks per row ------------------------------------------
//
// Row b is cut into `splits` chunks of `chunk` elements (a multiple of 4, so a
// chunk of a 16-byte aligned row starts 16-byte aligned and is read with float4
// loads). Block j of row b reads chunk j. A pass that needs the whole row's
// answer (the maximum, a radix histogram, the kept mass) adds its block's part
// to the row's state in global memory with atomics — integer sums and integer
// maxima, so the order in which blocks arrive changes nothing — and the LAST
// block of the row to arrive (an atomic arrival counter after __threadfence)
// finishes the pass in the same launch: it picks the radix byte, or draws the
// token. No grid-wide barrier (which would deadlock when the blocks of a row
// are not all resident), no extra launch per reduction. Every field a pass
// accumulates into is reset to zero by that pass's last block, so the state is
// clean for the next pass and the next call on the stream.

// One row's state between the passes of a call (a per-stream workspace).
struct split_row {
    unsigned long long hist[256];  // the current radix pass's histogram (zero between passes)
    unsigned long long above;      // radix: weight of the keys above the prefix chosen so far
    unsigned long long target;     // radix: the weight to reach (k, or top-p's target mass)
    unsigned long long argmax;     // greedy: max of (order key << 32 | ~index) (zero between calls)
    unsigned int max_key;          // the maximum order key of z / T (zero between calls)
    unsigned int bad;              // a NaN or +inf logit was seen (zero between calls)
    unsigned int done;             // blocks arrived in the current pass (zero between passes)
    unsigned int prefix, mask;     // radix: the key bytes chosen so far (zero between selections)
    unsigned int lower;            // top-k's threshold key: top-p selects among keys >= lower
    unsigned int tau;              // the final threshold key: keep keys >= tau
    float m;                       // the row maximum of z / T
    int usable;                    // 0: the row is bad or all -inf (its status is written)
    unsigned int candidates;       // v5: entries in the row's candidate list (zero between calls)
    unsigned int bound;            // v6: the highest bound a block of the row published (zero between calls)
    unsigned int stage;            // v7: the row's passes completed in the current launch (zero between calls)
};

enum : int { split_max = 0, split_radix = 1, split_draw = 2, split_buckets = 3, split_bucket_draw = 4 };

struct split_args {
    token_id* out;
    int* status;
    const float* logits;  // (B, V), rows row_stride apart
    index_t V, row_stride, chunk;
    int splits;
    int vec;  // rows are 16-byte aligned: float4 loads
    split_row* rows;
    unsigned long long* partials;  // (B, splits): the draw's kept mass per chunk
    std::uint32_t* candidates;     // v5: (B, candidate_capacity), row b's crossing bucket's indices
    index_t candidate_capacity;    // v5: entries a row's list holds (more: the last block reads the row again)
    fused_params p;
    std::uint64_t seed, step, stream_offset;
};

// f(i, z) for every element i of [lo, hi) of the row, this thread's share:
// float4 loads when the row is aligned (lo is a multiple of 4), then the tail.
// The loads go out Batch at a time before any of them is used, so each thread
// has 16 * Batch bytes in flight: a pass that reads the row once is bound by
// how many bytes the SMs keep in flight, and one float4 per thread is too few.
// (Run E measured 4 against 1 and saw no difference in the sampling passes; a
// pass whose f is long, the radix byte that weighs every key, takes 2 and keeps
// the registers for f.)
template <int Threads, int Batch = 4, class F>
__device__ void for_each_in_chunk(const float* row, index_t lo, index_t hi, int vec, F&& f) {
    index_t start = lo;
    if (vec) {
        constexpr int batch = Batch;
        const index_t quads = (hi - lo) / 4;
        const float4* q = reinterpret_cast<const float4*>(row + lo);
        auto visit = [&](index_t j, const float4& v) {
            const index_t i = lo + 4 * j;
            f(i, v.x);
            f(i + 1, v.y);
            f(i + 2, v.z);
            f(i + 3, v.w);
        };
        index_t j = threadIdx.x;
        for (; j + (batch - 1) * Threads < quads; j += batch * Threads) {
            float4 v[batch];
#pragma unroll
            for (int u = 0; u < batch; ++u) v[u] = q[j + u * Threads];
#pragma unroll
            for (int u = 0; u < batch; ++u) visit(j + u * Threads, v[u]);
        }
        for (; j < quads; j += Threads) visit(j, q[j]);
        start = lo + 4 * quads;
    }
    for (index_t i = start + static_cast<index_t>(threadIdx.x); i < hi; i += Threads) f(i, row[i]);
}

// The masses of this thread's share of [lo, hi) added into `sums`: weigh(z, bin)
// returns an element's weight and sets its bin. for_each_in_chunk's loads, then
// two steps per batch: every element's weight first — independent chains of
// dependent arithmetic (the exact exponential) that the scheduler interleaves —
// and then the batch's adds together (shared_hist64::add_batch). Run E's
// profile found top-p's weighted passes bound by instruction latency, 13-19
// cycles between a warp's instructions, which is what one element weighed and
// added at a time gives: each weight's chain and each add's round trip in turn.
template <int Threads, int Batch, class Weigh>
__device__ void add_chunk_masses(shared_hist64& sums, const float* row, index_t lo, index_t hi, int vec, Weigh&& weigh) {
    index_t start = lo;
    if (vec) {
        const index_t quads = (hi - lo) / 4;
        const float4* q = reinterpret_cast<const float4*>(row + lo);
        index_t j = threadIdx.x;
        for (; j + (Batch - 1) * Threads < quads; j += Batch * Threads) {
            float4 v[Batch];
#pragma unroll
            for (int u = 0; u < Batch; ++u) v[u] = q[j + u * Threads];
            std::uint32_t b[4 * Batch];
            std::uint64_t w[4 * Batch];
#pragma unroll
            for (int u = 0; u < Batch; ++u) {
                w[4 * u] = weigh(v[u].x, b[4 * u]);
                w[4 * u + 1] = weigh(v[u].y, b[4 * u + 1]);
                w[4 * u + 2] = weigh(v[u].z, b[4 * u + 2]);
                w[4 * u + 3] = weigh(v[u].w, b[4 * u + 3]);
            }
            sums.add_batch(b, w);
        }
        for (; j < quads; j += Threads) {
            const float4 v = q[j];
            std::uint32_t b[4];
            const std::uint64_t w[4] = {weigh(v.x, b[0]), weigh(v.y, b[1]), weigh(v.z, b[2]), weigh(v.w, b[3])};
            sums.add_batch(b, w);
        }
        start = lo + 4 * quads;
    }
    for (index_t i = start + static_cast<index_t>(threadIdx.x); i < hi; i += Threads) {
        std::uint32_t b[1];
        const std::uint64_t w[1] = {weigh(row[i], b[0])};
        sums.add_batch(b, w);
    }
}

// for_each_in_chunk for a pass that votes across the warp: f(i, z, valid) is
// called the same number of times by every lane of a warp (valid is false past
// the chunk's end, z is then 0), so f may call __ballot_sync on the full warp.
// One float4 (or one scalar in the tail) per thread per step.
template <int Threads, class F>
__device__ void for_each_in_chunk_warp_uniform(const float* row, index_t lo, index_t hi, int vec, F&& f) {
    index_t start = lo;
    if (vec) {
        const index_t quads = (hi - lo) / 4;
        const float4* q = reinterpret_cast<const float4*>(row + lo);
        for (index_t base = 0; base < quads; base += Threads) {  // the same trip count in every thread
            const index_t j = base + static_cast<index_t>(threadIdx.x);
            const bool valid = j < quads;
            float4 v{0.0f, 0.0f, 0.0f, 0.0f};
            if (valid) v = q[j];
            const index_t i = lo + 4 * j;
            f(i, v.x, valid);
            f(i + 1, v.y, valid);
            f(i + 2, v.z, valid);
            f(i + 3, v.w, valid);
        }
        start = lo + 4 * quads;
    }
    for (index_t base = start; base < hi; base += Threads) {
        const index_t i = base + static_cast<index_t>(threadIdx.x);
        const bool valid = i < hi;
        f(i, valid ? row[i] : 0.0f, valid);
    }
}

// A warp's queue of elements waiting for their weight, so that the weights are
// computed 32 at a time with every lane busy. v5's draw pass weighs only the
// elements above the crossing bucket, about 1 in 7 of uniform logits; weighed
// where they are found, one kept lane among 32 makes the whole warp step
// through the exponential's ~40 instructions, and nearly every step of a warp
// has one (1 - (6/7)^32 = 99%). Instead each lane puts its element's x into
// the warp's ring of 64 in shared memory (a ballot gives each its place), and
// whenever 32 are waiting every lane weighs one of them. The weights are
// integers added in another order: the same sum, bit for bit.
inline constexpr int warp_queue_size = 64;
struct warp_queue {
    float* ring;               // this warp's warp_queue_size entries (shared memory)
    unsigned head = 0, n = 0;  // the oldest entry and how many wait: the same in every lane

    // Called by every lane of the warp; an entry when `keep`.
    template <class Weigh>
    __device__ void push(bool keep, float x, std::uint64_t& sum, Weigh&& weigh) {
        const unsigned lane = threadIdx.x % 32, want = __ballot_sync(0xffffffffu, keep);
        if (!want) return;
        if (keep) ring[(head + n + static_cast<unsigned>(__popc(want & ((1u << lane) - 1u)))) % warp_queue_size] = x;
        n += static_cast<unsigned>(__popc(want));  // at most 31 + 32 < 64: no entry is overwritten
        if (n >= 32) {
            __syncwarp();  // the entries are in
            sum += weigh(ring[(head + lane) % warp_queue_size]);
            __syncwarp();  // and read, before later pushes reuse their places
            head = (head + 32) % warp_queue_size;
            n -= 32;
        }
    }
    // The entries still waiting (fewer than 32), by the first n lanes.
    template <class Weigh>
    __device__ void flush(std::uint64_t& sum, Weigh&& weigh) {
        __syncwarp();
        const unsigned lane = threadIdx.x % 32;
        if (lane < n) sum += weigh(ring[(head + lane) % warp_queue_size]);
        n = 0;
    }
};

// v5's candidates in its last block's shared memory (16 KB): each one's index
// in the row and order key, and the lowest and highest key.
inline constexpr int staged_candidate_max = 2048;
struct staged_candidates {
    std::uint32_t index[staged_candidate_max];
    std::uint32_t key[staged_candidate_max];
    unsigned low, high;
};

// v5's bucket of an element of positive weight, x = z / T - m in [-28, 0]:
// eighth-nat buckets numbered up from the bottom, 255 for x in (-1/8, 0] down to
// 31 for x = -28. Any function of x that never gives a larger key a smaller
// bucket would do (equal keys, equal x, one bucket); this one puts about 1/128
// of a row of logits spread evenly over 16 nats into each bucket. -8x is exact.
TINYLLM_DEVICE std::uint32_t mass_bucket(float x) {
    return 255u - static_cast<std::uint32_t>(::tinyllm::detail::mul_rn(x, -8.0f));
}

template <class U>
__device__ U warp_max(U v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const U w = __shfl_xor_sync(0xffffffffu, v, offset);
        v = w > v ? w : v;
    }
    return v;
}

// The float whose order key is k (the inverse of order_key).
TINYLLM_DEVICE float from_order_key(std::uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Copies a row's listed candidates (n <= staged_candidate_max) into st, as
// indices and order keys of z / T, with the lowest and highest key; returns how
// many top bytes every key shares (4: all keys equal). Every thread of the
// block calls it.
template <int Threads>
__device__ int stage_candidates(staged_candidates& st, const std::uint32_t* list, index_t n, const float* row,
                                float T) {
    if (threadIdx.x == 0) {
        st.low = ~0u;
        st.high = 0;
    }
    __syncthreads();
    std::uint32_t low = ~0u, high = 0;
    for (index_t e = threadIdx.x; e < n; e += Threads) {
        const std::uint32_t i = __ldcg(&list[e]);
        const std::uint32_t k = order_key(temperature_scaled(row[i], T));
        st.index[e] = i;
        st.key[e] = k;
        low = k < low ? k : low;
        high = k > high ? k : high;
    }
    low = ~warp_max(~low);  // the warp's lowest key
    high = warp_max(high);
    if (threadIdx.x % 32 == 0) {
        atomicMin(&st.low, low);
        atomicMax(&st.high, high);
    }
    __syncthreads();
    const std::uint32_t differ = st.low ^ st.high;
    return differ == 0 ? 4 : __clz(static_cast<int>(differ)) / 8;
}

// Every block of a row calls this once, after its atomics and stores: true in
// the row's last block to arrive, which then sees every other block's work.
__device__ inline bool split_arrive(split_row& r, int splits) {
    return last_block_to_arrive(&r.done, static_cast<unsigned>(splits));  // launch.cuh
}

// In the row's last block, once every block has added its maximum key and
// NaN/+inf flag: m, the row's status (and the token -1 when the row has none),
// and both fields cleared for the next call. Thread 0 calls it; true when the
// row has a token to draw.
__device__ inline bool finish_row_max(split_row& r, index_t b, const split_args& a, float& m) {
    const bool row_bad = __ldcg(&r.bad) != 0;
    m = from_order_key(__ldcg(&r.max_key));
    r.max_key = 0;
    r.bad = 0;
    a.status[b] = row_bad ? row_bad_logit : (m == -INFINITY ? row_all_masked : row_ok);
    const bool usable = !row_bad && m != -INFINITY;
    if (!usable) a.out[b] = -1;
    return usable;
}

// The draw over a row cut into chunks with kept masses partial[0..splits): t
// from the row's total and its random bits, then the chunk whose running mass
// crosses t (t becomes the offset into that chunk). One thread calls it.
__device__ inline index_t draw_chunk(const unsigned long long* partial, index_t splits, std::uint64_t bits,
                                     std::uint64_t& t) {
    std::uint64_t total = 0;
    for (index_t c = 0; c < splits; ++c) total += __ldcg(&partial[c]);
    t = sampling_threshold(total, bits);
    for (index_t c = 0; c < splits; ++c) {
        const std::uint64_t w = __ldcg(&partial[c]);
        if (t < w) return c;
        t -= w;
    }
    return splits - 1;  // unreachable: t < total
}

// v3 greedy: one launch. Each block's best (order key, lowest index) packed in
// 64 bits goes to the row with one atomicMax per warp; the last block decodes it.
template <int Threads>
__global__ void greedy_split_kernel(split_args a) {
    const index_t b = blockIdx.x / a.splits, j = blockIdx.x % a.splits;
    const float* row = a.logits + b * a.row_stride;
    split_row& r = a.rows[b];
    const index_t lo = j * a.chunk, hi = lo >= a.V ? lo : (lo + a.chunk < a.V ? lo + a.chunk : a.V);
    bool bad = false;
    unsigned long long best = 0;
    for_each_in_chunk<Threads>(row, lo, hi, a.vec, [&](index_t i, float z) {
        bad |= is_bad_logit(z);
        const unsigned long long packed = (static_cast<unsigned long long>(order_key(z)) << 32) |
                                          (0xffffffffu - static_cast<std::uint32_t>(i));
        best = packed > best ? packed : best;
    });
    const bool any_bad = __syncthreads_or(bad) != 0;
    best = warp_max(best);
    if (threadIdx.x % 32 == 0 && best) atomicMax(&r.argmax, best);
    if (threadIdx.x == 0 && any_bad) atomicOr(&r.bad, 1u);
    if (!split_arrive(r, a.splits) || threadIdx.x != 0) return;
    const unsigned long long packed = __ldcg(&r.argmax);
    const bool row_bad = __ldcg(&r.bad) != 0;
    r.argmax = 0;
    r.bad = 0;
    atomicExch(&r.done, 0u);  // a counter is only touched atomically
    if (row_bad || static_cast<std::uint32_t>(packed >> 32) == order_key(-INFINITY)) {
        a.status[b] = row_bad ? row_bad_logit : row_all_masked;
        a.out[b] = -1;
        return;
    }
    a.out[b] = static_cast<token_id>(0xffffffffu - static_cast<std::uint32_t>(packed & 0xffffffffu));
    a.status[b] = row_ok;
}

// v3 fused sampling, one launch per pass (the host sequences them):
//   split_max    the row maximum m of z / T and the NaN/+inf check; the last
//                block writes the status and readies the radix state;
//   split_radix  one byte of a radix selection (sel 0: top-k, weights 1;
//                sel 1: top-p, weights q, among keys >= top-k's threshold):
//                block histograms are added to the row's; the last block picks
//                the byte (radix_pick, as the CPU) and, after the last byte,
//                stores the threshold;
//   split_draw   each block's kept mass; the last block draws t, finds the
//                chunk whose running sum crosses t, and scans that chunk.
// and v5's two (sample_buckets, after split_max):
//   split_buckets      the row's masses in 256 eighth-nat buckets of z / T - m;
//                      the last block finds top-p's target and its bucket c;
//   split_bucket_draw  each block's kept mass above c and its elements in c as
//                      candidates; the last block selects tau among them and
//                      draws as split_draw.
//
// The passes are one body, split_pass; v3 launches it as sample_split_kernel and
// v5 as sample_buckets_kernel, two names so that a profiler can pick either
// rung's kernels (Nsight Compute's -k matches the name without its template
// arguments). `block` is the block's number in the pass (blockIdx.x, or v7's
// ticket); the result, the same in every thread of the block, says whether it
// was its row's last block of the pass (v7 then raises the row's stage).
template <int Threads, int Phase>
__device__ __forceinline__ bool split_pass(const split_args& a, index_t block, int sel, int shift) {
    const index_t b = block / a.splits, j = block % a.splits;
    const float* row = a.logits + b * a.row_stride;
    split_row& r = a.rows[b];
    const index_t lo = j * a.chunk, hi = lo >= a.V ? lo : (lo + a.chunk < a.V ? lo + a.chunk : a.V);
    const float T = a.p.temperature;
    __shared__ unsigned long long hist[256];  // the row's histogram, in its last block
    __shared__ shared_hist64 sums;            // this block's

    if constexpr (Phase == split_max) {  // sel 1: also top-k's first byte (counts need no maximum)
        bool bad = false;
        std::uint32_t key = 0;
        if (sel == 1) {
            sums.clear<Threads>();
            __syncthreads();
        }
        bin_cache cache;
        for_each_in_chunk<Threads>(row, lo, hi, a.vec, [&](index_t, float z) {
            const float x = temperature_scaled(z, T);
            bad |= is_bad_logit(x);  // z NaN or +inf, or z / T overflowing
            const std::uint32_t k = order_key(x);
            key = k > key ? k : key;
            if (sel == 1) cache.add(sums, k >> 24, 1);
        });
        if (sel == 1) cache.flush(sums);
        const bool any_bad = __syncthreads_or(bad) != 0;  // also orders the flushes before the reads below
        if (sel == 1)
            for (int i = threadIdx.x; i < 256; i += Threads)
                if (const unsigned long long h = sums.get(i)) atomicAdd(&r.hist[i], h);
        key = warp_max(key);
        if (threadIdx.x % 32 == 0 && key) atomicMax(&r.max_key, key);
        if (threadIdx.x == 0 && any_bad) atomicOr(&r.bad, 1u);
        if (!split_arrive(r, a.splits)) return false;
        __shared__ int s_usable;
        if (sel == 1) {
            for (int i = threadIdx.x; i < 256; i += Threads) {
                hist[i] = __ldcg(&r.hist[i]);
                r.hist[i] = 0;
            }
        }
        if (threadIdx.x == 0) {
            float m = 0.0f;
            r.usable = finish_row_max(r, b, a, m);
            r.m = m;
            r.prefix = r.mask = r.lower = r.tau = 0;
            r.above = 0;
            atomicExch(&r.done, 0u);
            s_usable = r.usable;
        }
        __syncthreads();
        if (sel != 1 || !s_usable || threadIdx.x >= 32) return true;
        const auto target = static_cast<std::uint64_t>(a.p.top_k);
        std::uint64_t above = 0, total = 0;
        const std::uint32_t chosen = radix_pick_warp(hist, target, above, total);
        if (threadIdx.x == 0) {
            r.prefix = chosen << 24;
            r.mask = 0xff000000u;
            r.above = above;
            r.target = target;
        }
        return true;
    }

    // Written by the row's last block of an earlier pass: read from L2, as v7
    // must (its passes share a launch, and an SM's L1 may hold an older line).
    const bool usable = __ldcg(&r.usable) != 0;
    const float m = __ldcg(&r.m);
    if constexpr (Phase == split_radix) {
        sums.clear<Threads>();
        __syncthreads();
        if (usable) {
            const std::uint32_t prefix = r.prefix, mask = r.mask, lower = sel == 0 ? 0u : r.lower;
            bin_cache cache;
            for_each_in_chunk<Threads, 2>(row, lo, hi, a.vec, [&](index_t, float z) {
                const float x = temperature_scaled(z, T);
                const std::uint32_t k = order_key(x);
                if (k >= lower && (k & mask) == prefix) {
                    const std::uint64_t w = sel == 0 ? 1 : sampling_weight(::tinyllm::detail::sub_rn(x, m));
                    if (w) cache.add(sums, (k >> shift) & 0xffu, static_cast<unsigned long long>(w));
                }
            });
            cache.flush(sums);
            __syncthreads();
            for (int i = threadIdx.x; i < 256; i += Threads)
                if (const unsigned long long h = sums.get(i)) atomicAdd(&r.hist[i], h);
        }
        if (!split_arrive(r, a.splits)) return false;
        for (int i = threadIdx.x; i < 256; i += Threads) {  // the row's histogram, and clean it
            hist[i] = __ldcg(&r.hist[i]);
            r.hist[i] = 0;
        }
        __syncthreads();
        if (threadIdx.x >= 32) return true;  // warp 0 picks the byte
        if (threadIdx.x == 0) atomicExch(&r.done, 0u);
        if (!usable) return true;
        std::uint64_t above = r.above, target = r.target, total = 0;
        if (shift == 24) {  // a selection's first byte: its target
            above = 0;
            target = static_cast<std::uint64_t>(a.p.top_k);
            if (sel == 1) {  // the target mass needs the total mass top-k kept: sum of the bins
                std::uint64_t unused = 0;
                (void)radix_pick_warp(hist, ~std::uint64_t{0}, unused, total);
                target = top_p_target(total, a.p.top_p);
            }
        }
        const std::uint32_t chosen = radix_pick_warp(hist, target, above, total);
        __syncwarp();  // every lane has read r.above and r.target before lane 0 writes them
        if (threadIdx.x != 0) return true;
        const std::uint32_t prefix = r.prefix | (chosen << shift);
        if (shift > 0) {
            r.prefix = prefix;
            r.mask |= 0xffu << shift;
            r.above = above;
            r.target = target;
        } else {  // the last byte: the threshold; clean the radix state for the next selection
            if (sel == 0) r.lower = prefix;
            r.tau = prefix;
            r.prefix = r.mask = 0;
            r.above = 0;
        }
        return true;
    }

    if constexpr (Phase == split_draw) {
        const std::uint32_t tau = r.tau;
        auto kept_q = [&](float z) -> std::uint64_t {
            const float x = temperature_scaled(z, T);
            if (order_key(x) < tau) return 0;
            const float d = ::tinyllm::detail::sub_rn(x, m);
            if (a.p.min_p > 0.0f && sampling_exp(d) < a.p.min_p) return 0;
            return sampling_weight(d);
        };
        std::uint64_t local = 0;
        if (usable) for_each_in_chunk<Threads>(row, lo, hi, a.vec, [&](index_t, float z) { local += kept_q(z); });
        const std::uint64_t mass = block_sum<Threads>(local);
        unsigned long long* partial = a.partials + b * a.splits;
        if (threadIdx.x == 0) partial[j] = mass;
        if (!split_arrive(r, a.splits)) return false;
        __shared__ index_t s_chunk;
        __shared__ unsigned long long s_t;
        if (threadIdx.x == 0) {
            atomicExch(&r.done, 0u);
            s_chunk = -1;
            if (usable) {
                std::uint64_t t = 0;
                s_chunk = draw_chunk(partial, a.splits,
                                     sampling_bits(a.seed, static_cast<std::uint64_t>(b) + a.stream_offset, a.step), t);
                s_t = t;
            }
        }
        __syncthreads();
        if (s_chunk < 0) return true;  // uniform: a bad row (its token -1 is written)
        const index_t first = s_chunk * a.chunk, n = (first + a.chunk < a.V ? first + a.chunk : a.V) - first;
        const int token =
            first_crossing<Threads, sampling_items>(n, s_t, [&](index_t i) { return kept_q(row[first + i]); });
        if (threadIdx.x == 0) a.out[b] = static_cast<token_id>(first + token);
    }

    // v5 (sample_buckets), top-p without top-k. The crossing bucket: each block
    // adds its chunk's masses per bucket (mass_bucket: eighth nats of z / T - m)
    // to the row's; the last block takes the total mass S, the target
    // ceil(p S) and the bucket where the running mass from the top reaches it.
    if constexpr (Phase == split_buckets) {
        sums.clear<Threads>();
        __syncthreads();
        if (usable) {
            // No bin_cache: a row's masses spread over ~100 buckets, which a cache
            // of 4 would evict at almost every element.
            add_chunk_masses<Threads, 2>(sums, row, lo, hi, a.vec, [&](float z, std::uint32_t& bucket) {
                const float x = ::tinyllm::detail::sub_rn(temperature_scaled(z, T), m);
                bucket = x >= -28.0f ? mass_bucket(x) : 0u;  // any bucket: the weight is 0 below -28
                return sampling_weight(x);
            });
            __syncthreads();
            for (int i = threadIdx.x; i < 256; i += Threads)
                if (const unsigned long long h = sums.get(i)) atomicAdd(&r.hist[i], h);
        }
        if (!split_arrive(r, a.splits)) return false;
        for (int i = threadIdx.x; i < 256; i += Threads) {  // the row's bucket masses, and clean them
            hist[i] = __ldcg(&r.hist[i]);
            r.hist[i] = 0;
        }
        __syncthreads();
        if (threadIdx.x >= 32) return true;  // warp 0 picks the bucket
        if (threadIdx.x == 0) atomicExch(&r.done, 0u);
        if (!usable) return true;
        std::uint64_t unused = 0, total = 0, above = 0;
        (void)radix_pick_warp(hist, ~std::uint64_t{0}, unused, total);  // S: the sum of the buckets
        const std::uint64_t target = top_p_target(total, a.p.top_p);
        const std::uint32_t bucket = radix_pick_warp(hist, target, above, total);
        if (threadIdx.x == 0) {
            r.prefix = bucket;
            r.above = above;  // the mass of the buckets above it: < target
            r.target = target;
        }
        return true;
    }

    // v5's draw. Every block: its kept mass above the crossing bucket c (min-p
    // applied) and the indices of its elements IN c, appended to the row's
    // candidate list (one atomic per warp; a list that would pass its capacity
    // keeps counting but stores no more). The row's last block: tau by radix
    // selection over the candidates alone (target - above), the candidates' kept
    // masses added to their chunks, then the draw as v3's. A row whose
    // candidates overflowed the list is read again instead, by that block.
    if constexpr (Phase == split_bucket_draw) {
        const std::uint32_t c = __ldcg(&r.prefix);
        const std::uint64_t above = __ldcg(&r.above), target = __ldcg(&r.target);
        std::uint32_t* list = a.candidates + b * a.candidate_capacity;
        auto kept_weight = [&](float x) -> std::uint64_t {  // min-p, then q (x = z / T - m)
            if (a.p.min_p > 0.0f && sampling_exp(x) < a.p.min_p) return 0;
            return sampling_weight(x);
        };
        auto in_bucket_c = [&](float x) { return x >= -28.0f && mass_bucket(x) == c; };  // below -28: weight 0
        std::uint64_t local = 0;
        if (usable) {
            const int lane = static_cast<int>(threadIdx.x % 32);
            __shared__ float queued[Threads / 32][warp_queue_size];
            warp_queue kept{queued[threadIdx.x / 32]};
            for_each_in_chunk_warp_uniform<Threads>(row, lo, hi, a.vec, [&](index_t i, float z, bool valid) {
                bool candidate = false, above_c = false;
                float x = 0.0f;
                if (valid) {
                    x = ::tinyllm::detail::sub_rn(temperature_scaled(z, T), m);
                    if (x >= -28.0f) {
                        const std::uint32_t bucket = mass_bucket(x);
                        above_c = bucket > c;  // every key above c is kept
                        candidate = bucket == c;
                    }
                }
                kept.push(above_c, x, local, kept_weight);
                const unsigned want = __ballot_sync(0xffffffffu, candidate);
                if (want) {  // uniform in the warp: one atomic for its candidates
                    const int leader = __ffs(static_cast<int>(want)) - 1;
                    unsigned base = 0;
                    if (lane == leader) base = atomicAdd(&r.candidates, static_cast<unsigned>(__popc(want)));
                    base = __shfl_sync(0xffffffffu, base, leader);
                    const index_t pos = static_cast<index_t>(base) + __popc(want & ((1u << lane) - 1u));
                    if (candidate && pos < a.candidate_capacity) list[pos] = static_cast<std::uint32_t>(i);
                }
            });
            kept.flush(local, kept_weight);
        }
        const std::uint64_t mass = block_sum<Threads>(local);
        unsigned long long* partial = a.partials + b * a.splits;
        if (threadIdx.x == 0) partial[j] = mass;
        if (!split_arrive(r, a.splits)) return false;
        __shared__ unsigned s_n;
        if (threadIdx.x == 0) {
            atomicExch(&r.done, 0u);
            s_n = __ldcg(&r.candidates);
            r.candidates = 0;
            r.prefix = 0;
            r.above = 0;
        }
        __syncthreads();
        if (!usable) return true;  // uniform: the row's token -1 is written
        // The candidates: the list, or (overflowed) the row's elements in bucket c.
        const bool listed = static_cast<index_t>(s_n) <= a.candidate_capacity;
        const index_t n = listed ? static_cast<index_t>(s_n) : a.V;
        // A list of at most staged_candidate_max (about a thousand candidates for
        // uniform logits) is staged in shared memory first — indices and order
        // keys, read from L2 once instead of once per radix pass — along with the
        // bytes its keys share. The candidates lie within an eighth of a nat, so
        // their keys usually share the top byte or two (the sign and exponent of
        // z / T, and for |z / T| >= 16 the first mantissa bits), and the
        // selection starts below them: two or three passes instead of four, none
        // when every candidate is the same logit.
        __shared__ staged_candidates st;
        const bool staged = listed && n <= staged_candidate_max;  // uniform
        const int common_bytes = staged ? stage_candidates<Threads>(st, list, n, row, T) : 0;
        const std::uint32_t common = staged ? st.low : 0u;
        auto candidate_index = [&](index_t e) -> index_t {
            return staged ? static_cast<index_t>(st.index[e]) : listed ? static_cast<index_t>(__ldcg(&list[e])) : e;
        };
        auto candidate_key = [&](index_t e) -> std::uint32_t {
            return staged ? st.key[e] : order_key(temperature_scaled(row[candidate_index(e)], T));
        };
        // x from the key: the logit itself, but for -0, whose key is +0's (the same weight).
        auto x_of = [&](std::uint32_t k) { return ::tinyllm::detail::sub_rn(from_order_key(k), m); };
        const std::uint32_t tau = radix_select<Threads, true>(
            n, target - above, 0u, candidate_key,
            [&](index_t e) -> std::uint64_t {
                const float x = x_of(candidate_key(e));
                return listed || in_bucket_c(x) ? sampling_weight(x) : 0;
            },
            common, common_bytes);
        auto kept_key_q = [&](std::uint32_t k) -> std::uint64_t { return k < tau ? 0 : kept_weight(x_of(k)); };
        auto kept_q = [&](float z) { return kept_key_q(order_key(temperature_scaled(z, T))); };
        for (index_t e = threadIdx.x; e < n; e += Threads) {  // the kept candidates' masses, to their chunks
            const std::uint32_t k = candidate_key(e);
            if (!listed && !in_bucket_c(x_of(k))) continue;
            if (const std::uint64_t q = kept_key_q(k))
                atomicAdd(&partial[candidate_index(e) / a.chunk], static_cast<unsigned long long>(q));
        }
        __syncthreads();
        __shared__ index_t s_chunk;
        __shared__ unsigned long long s_t;
        if (threadIdx.x == 0) {
            std::uint64_t t = 0;
            s_chunk = draw_chunk(partial, a.splits,
                                 sampling_bits(a.seed, static_cast<std::uint64_t>(b) + a.stream_offset, a.step), t);
            s_t = t;
        }
        __syncthreads();
        const index_t first = s_chunk * a.chunk, n_chunk = (first + a.chunk < a.V ? first + a.chunk : a.V) - first;
        const int token =
            first_crossing<Threads, sampling_items>(n_chunk, s_t, [&](index_t i) { return kept_q(row[first + i]); });
        if (threadIdx.x == 0) a.out[b] = static_cast<token_id>(first + token);
    }
    return true;  // the draw phases' last blocks
}

template <int Threads, int Phase>
__global__ void __launch_bounds__(Threads, 2) sample_split_kernel(split_args a, int sel, int shift) {  // v3
    (void)split_pass<Threads, Phase>(a, blockIdx.x, sel, shift);
}

template <int Threads, int Phase>
__global__ void __launch_bounds__(Threads, 2) sample_buckets_kernel(split_args a) {  // v5
    (void)split_pass<Threads, Phase>(a, blockIdx.x, 0, 0);
}

// v7 chained: v5's three passes in ONE launch of 3 * B * splits blocks. Each
// block draws a ticket (launch.cuh: wait_at_least); tickets [0, B * splits)
// run the maximum pass, the next B * splits the bucket pass, the last the draw,
// each ticket as the block of that pass that v5 would number ticket mod B *
// splits. A block of a later pass waits only for its own row: until the row's
// last block of the pass before has counted it in r.stage. So a row whose pass
// is done goes on while other rows still run theirs, and nothing waits for a
// kernel to drain and the next to start. launch[0] counts the tickets drawn,
// launch[1] the blocks done; the launch's last block zeroes both, and a row's
// last draw block its stage, for the next call.
template <int Threads>
__global__ void __launch_bounds__(Threads, 2) sample_chained_kernel(split_args a, unsigned* launch) {
    __shared__ unsigned s_ticket;
    if (threadIdx.x == 0) s_ticket = atomicAdd(&launch[0], 1u);
    __syncthreads();
    const unsigned per_pass = gridDim.x / 3, pass = s_ticket / per_pass;
    const index_t block = s_ticket % per_pass;
    if (pass > 2) __trap();  // a counter a failed launch left behind
    split_row& r = a.rows[block / a.splits];
    if (pass > 0) {
        if (threadIdx.x == 0) wait_at_least(&r.stage, pass);
        __syncthreads();
    }
    const bool row_last = pass == 0   ? split_pass<Threads, split_max>(a, block, 0, 0)
                          : pass == 1 ? split_pass<Threads, split_buckets>(a, block, 0, 0)
                                      : split_pass<Threads, split_bucket_draw>(a, block, 0, 0);
    // The row's last block: every thread's stores of the pass made visible, then
    // the row's stage raised (last_block_to_arrive's order, launch.cuh).
    if (row_last) grid_fence();  // uniform in the block
    __syncthreads();
    if (threadIdx.x == 0) {
        if (row_last) atomicExch(&r.stage, pass == 2 ? 0u : pass + 1);
        if (atomicAdd(&launch[1], 1u) == gridDim.x - 1) {
            atomicExch(&launch[0], 0u);
            atomicExch(&launch[1], 0u);
        }
    }
}

// ---- v4 candidates: top-k from every block's own k largest --------------------
//
// The k largest keys of a row are among the union of every chunk's k largest:
// a chunk's k-th largest key L_j is at most the row's k-th largest K (the row
// has at least k keys >= L_j), so every key >= K of chunk j is >= L_j. So each
// block finds its chunk's L_j ALONE — a radix selection over the chunk's keys
// held in registers, with block barriers only — and writes what can matter:
// the keys above L_j (fewer than k) with their row indices, in row order, and
// L_j with the number of keys equal to it (their indices are not kept). The
// row's last block to arrive selects K among those few slots (with their
// counts: exact, ties included), then top-p among the slots >= K, and draws:
// the chunk masses come from the slots, and the token from the drawn chunk's
// slots — or, when that chunk's L_j is itself kept (ties at the threshold,
// whose indices were not kept), from a scan of that one chunk, as v3.

inline constexpr int candidate_items = 16;  // keys per thread, in registers
inline constexpr index_t candidate_chunk_max = index_t{sampling_threads} * candidate_items;  // 8192 per block
inline constexpr index_t candidate_max_k = 1024;  // larger k: v3 (slots grow as splits * k)

struct candidate_args {
    split_args s;             // the row state, partial masses and parameters of v3 (split_row, split_args)
    std::uint32_t* keys;      // (B, splits, width): slots e < above: keys > L_j in row order; slot width - 1: L_j
    std::int32_t* index;      // (B, splits, width): the row index of each slot e < above
    std::uint32_t* counts;    // (B, splits, 2): above (keys > L_j), ties (keys == L_j)
    index_t width;            // slots per chunk: v4 k + 1, v6 cap + 1 (filtered_cap)
    index_t blocks;           // v6: blocks per row (v4: one per chunk, a.splits)
    index_t per_block;        // v6: consecutive chunks per block
};

// Sum of a 64-bit integer over one warp (exact).
__device__ inline std::uint64_t warp_sum_u64(std::uint64_t v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum of a small count over the block, every thread getting it: a warp
// reduction (__reduce_add_sync), then the warps' sums from shared memory.
template <int Threads>
__device__ unsigned block_count(unsigned v) {
    __shared__ unsigned warp_sums[Threads / 32];
    v = __reduce_add_sync(0xffffffffu, v);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    unsigned total = 0;
#pragma unroll
    for (int w = 0; w < Threads / 32; ++w) total += warp_sums[w];
    __syncthreads();  // every thread has read the sums before they are written again
    return total;
}

// Radix selection over keys a block holds in registers, N per thread (key 0:
// no element), with block barriers only: the largest key L such that at least
// `target` of the keys >= lower are >= L (target >= 1 and at most how many keys
// are >= lower). `above` gets how many of them are > L, `ties` how many == L.
// 4 passes of a 256-bin shared histogram of 32-bit counts. A warp's lanes that
// fall into the same bin add once (__match_any_sync groups them; the lowest lane
// adds the group's size), so a bin most keys crowd into is not added to 512
// times; a warp none of whose keys can still matter skips the add altogether.
template <int Threads, int N>
__device__ std::uint32_t block_select(const std::uint32_t (&key)[N], std::uint32_t lower, std::uint64_t target,
                                      std::uint64_t& above, std::uint64_t& ties) {
    __shared__ unsigned hist[256];  // counts: at most 8192 keys (see shared_hist64 for why 32-bit)
    __shared__ std::uint32_t s_prefix;
    __shared__ unsigned long long s_above, s_ties;
    std::uint32_t prefix = 0, mask = 0;
    above = 0;
    ties = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += Threads) hist[i] = 0;
        __syncthreads();
#pragma unroll
        for (int s = 0; s < N; ++s) {
            const bool in = key[s] != 0 && key[s] >= lower && (key[s] & mask) == prefix;
            if (!__any_sync(0xffffffffu, in)) continue;  // uniform in the warp
            const std::uint32_t bin = in ? (key[s] >> shift) & 0xffu : 256u;
            const unsigned peers = __match_any_sync(0xffffffffu, bin);
            if (in && static_cast<int>(threadIdx.x % 32) == __ffs(static_cast<int>(peers)) - 1)
                atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            std::uint64_t acc = above, total = 0;
            const std::uint32_t chosen = radix_pick_warp(hist, target, acc, total);
            if (threadIdx.x == 0) {
                s_prefix = prefix | (chosen << shift);
                s_above = acc;
                s_ties = hist[chosen];
            }
        }
        __syncthreads();
        prefix = s_prefix;
        above = s_above;
        ties = s_ties;
        mask |= 0xffu << shift;
        __syncthreads();  // every thread has read the picks before the next pass's
    }
    return prefix;
}

// v4's steps as functions, which v6 (below) calls in its own order.

// Step 1: the chunk [lo, hi)'s keys of z / T in registers: thread t holds
// elements lo + 4 (t + Threads s) + {0, 1, 2, 3} for s < Items / 4 (float4
// loads when the row is aligned). Key 0 marks "no element": no finite or -inf
// logit has it (order_key(-inf) = 0x007fffff; only a NaN's key can be 0). `bad`
// is or-ed with a NaN/+inf seen; returns this thread's largest key (0: none).
template <int Threads, int Items>
__device__ __forceinline__ std::uint32_t load_chunk_keys(std::uint32_t (&key)[Items], const split_args& a,
                                                         const float* row, index_t lo, index_t hi, bool& bad) {
    const float T = a.p.temperature;
    std::uint32_t top = 0;
#pragma unroll
    for (int s = 0; s < Items / 4; ++s) {
        const index_t i0 = lo + 4 * (static_cast<index_t>(threadIdx.x) + static_cast<index_t>(Threads) * s);
        float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (a.vec && i0 + 3 < hi) {
            const float4 v = *reinterpret_cast<const float4*>(row + i0);
            z[0] = v.x;
            z[1] = v.y;
            z[2] = v.z;
            z[3] = v.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (i0 + e < hi) z[e] = row[i0 + e];
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            key[4 * s + e] = 0;
            if (i0 + e < hi) {
                const float x = temperature_scaled(z[e], T);
                bad |= is_bad_logit(x);  // z NaN or +inf, or z / T overflowing
                const std::uint32_t kk = order_key(x);
                key[4 * s + e] = kk;
                top = kk > top ? kk : top;
            }
        }
    }
    return top;
}

// Step 3: the slots of the chunk starting at `lo`, from slot0: its keys above
// L with their indices, in row order. Row order is group by group (group s of
// every thread, then group s + 1), so each group needs its own exclusive scan of
// the threads' counts. They are done two at a time: a thread's counts of two
// groups (at most 4 each) packed in the 16-bit halves of one word, so one block
// scan adds both (a group's total is at most 4 * Threads = 2048: the low half
// never carries into the high one).
template <int Threads, int Items>
__device__ __forceinline__ void write_chunk_slots(const candidate_args& c, index_t slot0,
                                                  const std::uint32_t (&key)[Items], std::uint32_t L, index_t lo) {
    static_assert(4 * Threads < (1 << 16) && Items % 8 == 0, "v4's paired scan: two 16-bit fields");
    using scan = cub::BlockScan<unsigned, Threads>;
    __shared__ typename scan::TempStorage storage;
    index_t base = 0;  // the slots of the groups before
#pragma unroll
    for (int pair = 0; pair < Items / 8; ++pair) {
        unsigned mine = 0;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) mine += (key[4 * (2 * pair + h) + e] > L ? 1u : 0u) << (16 * h);
        unsigned offsets = 0, totals = 0;
        scan(storage).ExclusiveSum(mine, offsets, totals);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int s = 2 * pair + h;
            index_t at = base + static_cast<index_t>((offsets >> (16 * h)) & 0xffffu);
            const index_t i0 = lo + 4 * (static_cast<index_t>(threadIdx.x) + static_cast<index_t>(Threads) * s);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if (key[4 * s + e] > L) {
                    c.keys[slot0 + at] = key[4 * s + e];
                    c.index[slot0 + at] = static_cast<std::int32_t>(i0 + e);
                    ++at;
                }
            }
            base += static_cast<index_t>((totals >> (16 * h)) & 0xffffu);
        }
        __syncthreads();  // before the scan's storage is reused
    }
}

// Where the row's last block reads the slots. v4 reads them where the blocks
// wrote them, in global memory (through L2: __ldcg), slot by slot in every
// radix pass; v6 first copies the slots in use into shared memory
// (staged_slots), when they fit, so that its passes wait on no memory.
//   size()          entries, i < size()
//   key(i), count(i) an entry's key and how many elements it stands for
//   first(c)        chunk c's first entry: its keys above L_c follow, in row order
//   above(c), ties(c), tie_key(c)  chunk c's counts, and L_c
//   index(c, e)     the row index of chunk c's listed key e
struct global_slots {
    const std::uint32_t* keys;    // the row's (splits, width)
    const std::int32_t* indices;  // the same
    const std::uint32_t* counts;  // (splits, 2)
    index_t width, splits;
    __device__ index_t size() const { return splits * width; }
    __device__ std::uint32_t key(index_t i) const { return __ldcg(&keys[i]); }
    __device__ std::uint64_t count(index_t i) const {
        const index_t chunk = i / width, e = i - chunk * width;
        if (e == width - 1) return __ldcg(&counts[2 * chunk + 1]);  // L_c
        return e < static_cast<index_t>(__ldcg(&counts[2 * chunk])) ? 1 : 0;
    }
    __device__ index_t first(index_t chunk) const { return chunk * width; }
    __device__ index_t above(index_t chunk) const { return __ldcg(&counts[2 * chunk]); }
    __device__ std::uint64_t ties(index_t chunk) const { return __ldcg(&counts[2 * chunk + 1]); }
    __device__ std::uint32_t tie_key(index_t chunk) const { return __ldcg(&keys[chunk * width + width - 1]); }
    __device__ token_id index(index_t chunk, index_t e) const {
        return static_cast<token_id>(__ldcg(&indices[chunk * width + e]));
    }
};

// v6's slots in shared memory: the listed keys of every chunk, each chunk's L_c
// after them when it has ties, packed (about 16 x (k + 3) entries at k = 50,
// against 16 x (cap + 1) slots in global memory). At most staged_entries of
// them and staged_chunks chunks; a row with more (staged false) is read from
// global memory, through the same object, so that draw_from_slots is compiled
// once for v6 (each instantiation has its own shared arrays, and a block's
// static shared memory is limited to 48 KB).
inline constexpr int staged_entries = 2048, staged_chunks = 512;
struct staged_slots {
    std::uint32_t keys[staged_entries];
    std::uint32_t counts[staged_entries];  // 1 for a listed key, the ties for L_c
    std::uint16_t firsts[staged_chunks], aboves[staged_chunks], tie_counts[staged_chunks];
    global_slots g;  // where the slots were written; the token's index is always read there
    index_t entries;
    int staged;
    __device__ index_t size() const { return staged ? entries : g.size(); }
    __device__ std::uint32_t key(index_t i) const { return staged ? keys[i] : g.key(i); }
    __device__ std::uint64_t count(index_t i) const { return staged ? counts[i] : g.count(i); }
    __device__ index_t first(index_t chunk) const { return staged ? firsts[chunk] : g.first(chunk); }
    __device__ index_t above(index_t chunk) const { return staged ? aboves[chunk] : g.above(chunk); }
    __device__ std::uint64_t ties(index_t chunk) const { return staged ? tie_counts[chunk] : g.ties(chunk); }
    __device__ std::uint32_t tie_key(index_t chunk) const {
        return staged ? keys[firsts[chunk] + aboves[chunk]] : g.tie_key(chunk);
    }
    __device__ token_id index(index_t chunk, index_t e) const { return g.index(chunk, e); }
};

// Copies the row's slots in use into `st` (every thread of the last block
// calls it): the chunks' counts, their offsets by a block scan, then a warp
// per chunk copies its keys. st.staged stays 0 when the row has more chunks or
// entries than `st` holds (st then reads them where they are).
template <int Threads>
__device__ void stage_slots(staged_slots& st, const global_slots& g) {
    static_assert(staged_chunks >= Threads, "one chunk per thread");
    static_assert(staged_entries < (1 << 16) && candidate_max_k + candidate_max_k / 2 + 32 < (1 << 16) &&
                      candidate_chunk_max < (1 << 16),
                  "the 16-bit offsets and counts");
    if (threadIdx.x == 0) {
        st.g = g;
        st.staged = 0;
    }
    __syncthreads();
    if (g.splits > Threads) return;  // uniform
    using scan = cub::BlockScan<unsigned, Threads>;
    __shared__ typename scan::TempStorage storage;
    const index_t chunk = threadIdx.x;
    unsigned n = 0, offset = 0, total = 0;
    if (chunk < g.splits) {
        const index_t above = g.above(chunk);
        const std::uint64_t ties = g.ties(chunk);
        n = static_cast<unsigned>(above) + (ties ? 1u : 0u);
        st.aboves[chunk] = static_cast<std::uint16_t>(above);
        st.tie_counts[chunk] = static_cast<std::uint16_t>(ties);
    }
    scan(storage).ExclusiveSum(n, offset, total);
    if (total > static_cast<unsigned>(staged_entries)) return;  // uniform: every thread has the total
    if (chunk < g.splits) st.firsts[chunk] = static_cast<std::uint16_t>(offset);
    __syncthreads();
    const int lane = static_cast<int>(threadIdx.x % 32);
    for (index_t c = threadIdx.x / 32; c < g.splits; c += Threads / 32) {
        const index_t from = g.first(c), to = st.firsts[c], above = st.aboves[c];
        for (index_t e = lane; e < above; e += 32) {
            st.keys[to + e] = g.key(from + e);
            st.counts[to + e] = 1;
        }
        if (lane == 0 && st.tie_counts[c]) {
            st.keys[to + above] = g.tie_key(c);
            st.counts[to + above] = st.tie_counts[c];
        }
    }
    if (threadIdx.x == 0) {
        st.entries = total;
        st.staged = 1;
    }
    __syncthreads();
}

// Step 4 on a row's slots, wherever they are (Slots: global_slots or
// staged_slots): K from the slots, top-p among them, min-p, the chunks' kept
// masses, the draw and the token.
template <int Threads, class Slots>
__device__ __forceinline__ void draw_from_slots(const split_args& a, index_t b, float m, const Slots& slots) {
    const float* row = a.logits + b * a.row_stride;
    const float T = a.p.temperature;
    const index_t k = a.p.top_k;
    auto slot_key = [&](index_t i) { return slots.key(i); };
    auto slot_count = [&](index_t i) { return slots.count(i); };
    const index_t n = slots.size();

    // K, the row's k-th largest key, from the slots ...
    const std::uint32_t K = radix_select<Threads, true>(n, static_cast<std::uint64_t>(k), 0u, slot_key, slot_count);
    // ... top-p among the slots >= K, weighted by q ...
    auto q_of = [&](std::uint32_t kk) {
        return sampling_weight(::tinyllm::detail::sub_rn(from_order_key(kk), m));
    };
    std::uint32_t tau = K;
    if (a.p.top_p < 1.0f) {
        auto slot_q = [&](index_t i) -> std::uint64_t {
            const std::uint64_t n_i = slots.count(i);
            return n_i ? n_i * q_of(slots.key(i)) : 0;
        };
        std::uint64_t local = 0;
        for (index_t i = threadIdx.x; i < n; i += Threads)
            if (slots.key(i) >= K) local += slot_q(i);
        const std::uint64_t total = block_sum<Threads>(local);
        tau = radix_select<Threads, true>(n, top_p_target(total, a.p.top_p), K, slot_key, slot_q);
    }
    // ... min-p in the weights, and the draw: each chunk's kept mass (one warp per chunk) ...
    auto kept_q = [&](std::uint32_t kk) -> std::uint64_t {
        if (kk < tau) return 0;
        const float d = ::tinyllm::detail::sub_rn(from_order_key(kk), m);
        if (a.p.min_p > 0.0f && sampling_exp(d) < a.p.min_p) return 0;
        return sampling_weight(d);
    };
    unsigned long long* partial = a.partials + b * a.splits;
    const int lane = static_cast<int>(threadIdx.x % 32);
    for (index_t chunk = threadIdx.x / 32; chunk < a.splits; chunk += Threads / 32) {
        const index_t n_above = slots.above(chunk), first = slots.first(chunk);
        std::uint64_t sum = 0;
        for (index_t e = lane; e < n_above; e += 32) sum += kept_q(slots.key(first + e));
        sum = warp_sum_u64(sum);
        if (lane == 0) {
            const std::uint64_t n_ties = slots.ties(chunk);
            if (n_ties) sum += n_ties * kept_q(slots.tie_key(chunk));
            partial[chunk] = sum;
        }
    }
    __syncthreads();
    __shared__ index_t s_chunk;
    __shared__ unsigned long long s_t;
    if (threadIdx.x == 0) {
        std::uint64_t t = 0;
        s_chunk = draw_chunk(partial, a.splits,
                             sampling_bits(a.seed, static_cast<std::uint64_t>(b) + a.stream_offset, a.step), t);
        s_t = t;
    }
    __syncthreads();
    // ... and the token: from the drawn chunk's slots, in row order, unless its
    // L_j is kept (then its equal keys, whose indices have no slots, are kept
    // too: scan the chunk's logits, as v3's draw).
    const index_t chunk = s_chunk;
    const bool scan_chunk = slots.ties(chunk) != 0 && kept_q(slots.tie_key(chunk)) != 0;
    token_id token;
    if (scan_chunk) {
        const index_t start = chunk * a.chunk, n_chunk = (start + a.chunk < a.V ? start + a.chunk : a.V) - start;
        token = static_cast<token_id>(start + first_crossing<Threads, sampling_items>(n_chunk, s_t, [&](index_t i) {
                                          return kept_q(order_key(temperature_scaled(row[start + i], T)));
                                      }));
    } else {
        const index_t n_above = slots.above(chunk), first = slots.first(chunk);
        const int e = first_crossing<Threads, sampling_items>(
            n_above, s_t, [&](index_t i) { return kept_q(slots.key(first + i)); });
        token = e >= 0 ? slots.index(chunk, e) : -1;  // e >= 0: t < the chunk's mass
    }
    if (threadIdx.x == 0) a.out[b] = token;
}

// Step 4, in the row's last block once every block has written its slots:
// the status and maximum (as v3's split_max), then draw_from_slots — on the
// slots in global memory (v4), or staged in shared memory first (v6: Stage).
template <int Threads, bool Stage = false>
__device__ __forceinline__ void finish_candidates(const candidate_args& c, index_t b) {
    const split_args& a = c.s;
    split_row& r = a.rows[b];
    __shared__ int s_usable;
    __shared__ float s_m;
    if (threadIdx.x == 0) {
        float m = 0.0f;
        s_usable = finish_row_max(r, b, a, m) ? 1 : 0;
        s_m = m;
        atomicExch(&r.done, 0u);
        atomicExch(&r.bound, 0u);
    }
    __syncthreads();
    if (!s_usable) return;
    const global_slots g{c.keys + b * a.splits * c.width, c.index + b * a.splits * c.width,
                         c.counts + 2 * b * a.splits, c.width, a.splits};
    if constexpr (Stage) {
        __shared__ staged_slots staged;
        stage_slots<Threads>(staged, g);
        draw_from_slots<Threads>(a, b, s_m, staged);
    } else {
        draw_from_slots<Threads>(a, b, s_m, g);
    }
}

// v4: the whole chain in ONE launch when top-k is on (0 < k < V, k <= 1024).
// Grid B x splits, chunks of at most Threads * Items elements; slots k + 1
// (c.width) per chunk.
template <int Threads, int Items>
__global__ void __launch_bounds__(Threads, 2) sample_candidates_kernel(candidate_args c) {
    const split_args& a = c.s;
    const index_t b = blockIdx.x / a.splits, j = blockIdx.x % a.splits;
    const float* row = a.logits + b * a.row_stride;
    split_row& r = a.rows[b];
    const index_t lo = j * a.chunk, hi = lo >= a.V ? lo : (lo + a.chunk < a.V ? lo + a.chunk : a.V);
    const index_t k = a.p.top_k;

    // 1. The chunk's keys in registers, the row's maximum and NaN/+inf flag.
    std::uint32_t key[Items];
    bool bad = false;
    const std::uint32_t own_max = load_chunk_keys<Threads, Items>(key, a, row, lo, hi, bad);
    const bool any_bad = __syncthreads_or(bad) != 0;
    const std::uint32_t top = warp_max(own_max);
    if (threadIdx.x % 32 == 0 && top) atomicMax(&r.max_key, top);
    if (threadIdx.x == 0 && any_bad) atomicOr(&r.bad, 1u);

    // 2. L_j, the chunk's k-th largest key (its smallest when it has fewer than k
    //    elements), by radix selection over the registers (block_select). First
    //    a bound: the k-th largest of the threads' own maxima, M. k threads hold
    //    a key >= M, so L_j >= M, and only the keys >= M — usually a few more
    //    than k — take part in the passes over all 16 keys a thread holds.
    const index_t n = hi - lo;
    const std::uint64_t target = static_cast<std::uint64_t>(k < n ? k : n);
    std::uint32_t prefix = 0;
    std::uint64_t above = 0, ties = 0;  // keys > L_j, keys == L_j
    if (target > 0) {  // uniform: an empty chunk (lo >= V) has no slots
        std::uint32_t lower = 0;
        const std::uint32_t own[1] = {own_max};
        if (__syncthreads_count(own_max != 0) >= k) {  // uniform; else no bound (lower 0: every key)
            std::uint64_t unused_above = 0, unused_ties = 0;
            lower = block_select<Threads, 1>(own, 0u, static_cast<std::uint64_t>(k), unused_above, unused_ties);
        }
        prefix = block_select<Threads, Items>(key, lower, target, above, ties);
    }

    // 3. The slots: the keys above L_j with their indices, in row order, then L_j
    //    and the two counts.
    const index_t chunk_id = b * a.splits + j, slot0 = chunk_id * c.width;
    if (target > 0) write_chunk_slots<Threads, Items>(c, slot0, key, prefix, lo);
    if (threadIdx.x == 0) {
        c.keys[slot0 + c.width - 1] = prefix;
        c.counts[2 * chunk_id] = static_cast<std::uint32_t>(above);
        c.counts[2 * chunk_id + 1] = static_cast<std::uint32_t>(ties);
    }
    if (!split_arrive(r, a.splits)) return;

    // 4. The row's last block: K, top-p, min-p and the draw, from the slots.
    finish_candidates<Threads>(c, b);
}

// ---- v6 filtered: one bound carried along a block's chunks ---------------------
//
// v4 finds every chunk's L_j exactly: two radix selections per block (the
// bound M, then L_j), each four passes of a shared histogram with barriers and
// a one-warp pick, and at B = 64 a row of 16 chunks gives 1024 blocks, four
// waves of two per SM, each wave waiting through its selections. But the last
// block needs less: for each chunk SOME L with every key of the chunk that is
// >= L in the slots (listed above L, counted at L) and L <= K, the row's k-th
// largest key. Any key that k of the row's keys reach is such an L — a bound.
// The first chunk a block reads gives one (its M, as v4's step 2), and so does
// any other block of the row: each publishes its bound with an atomicMax in
// the row's state. So v6 gives a row fewer blocks (one wave: 4 per row at
// B = 64), each walks several consecutive chunks, and a chunk costs a read, a
// count against the best bound known and the slot scans — no selection —
// unless more than `cap` of its keys are above the bound (the first chunk, or
// a chunk whose logits run higher than the ones before): then M, and if even
// that leaves too many (ties), v4's exact L_j, and the block's bound rises.
// Slots per chunk: cap = k + k / 2 + 32 above the bound (v4: k - 1), then L.
// The last block is v4's (finish_candidates) over the same chunks, on the
// slots staged in shared memory (stage_slots) when they fit.
template <int Threads, int Items>
__global__ void __launch_bounds__(Threads, 2) sample_filtered_kernel(candidate_args c) {
    const split_args& a = c.s;
    const index_t b = blockIdx.x / c.blocks, first = (blockIdx.x % c.blocks) * c.per_block;
    const index_t last = first + c.per_block < a.splits ? first + c.per_block : a.splits;
    const float* row = a.logits + b * a.row_stride;
    split_row& r = a.rows[b];
    const index_t k = a.p.top_k, cap = c.width - 1;
    __shared__ std::uint32_t s_bound;
    std::uint32_t bound = 0;  // a key that k of the row's keys reach (0: none known yet)
    bool bad = false;
    for (index_t j = first; j < last; ++j) {
        const index_t lo = j * a.chunk, hi = lo >= a.V ? lo : (lo + a.chunk < a.V ? lo + a.chunk : a.V);
        std::uint32_t key[Items];
        const std::uint32_t own_max = load_chunk_keys<Threads, Items>(key, a, row, lo, hi, bad);
        const std::uint32_t warp_top = warp_max(own_max);
        if (threadIdx.x % 32 == 0 && warp_top) atomicMax(&r.max_key, warp_top);
        // The best bound known: this block's, or a higher one another block of the row published.
        if (threadIdx.x == 0) {
            const std::uint32_t published = load_relaxed(&r.bound);  // other blocks may be raising it (launch.cuh)
            s_bound = published > bound ? published : bound;
        }
        __syncthreads();
        bound = s_bound;
        // How many keys are above the bound and equal to it (key 0 is no element,
        // never counted), as the two 16-bit halves of one block sum (a chunk has
        // at most 8192 keys).
        auto count = [&](std::uint32_t L) {
            unsigned mine = 0;
#pragma unroll
            for (int s = 0; s < Items; ++s) mine += key[s] > L ? 1u : (key[s] == L && L != 0 ? 1u << 16 : 0u);
            return block_count<Threads>(mine);
        };
        std::uint32_t L = bound;
        unsigned counted = count(L);
        std::uint64_t above = counted & 0xffffu, ties = counted >> 16;
        if (above > static_cast<std::uint64_t>(cap)) {  // uniform; the chunk then has more than k keys
            if (__syncthreads_count(own_max != 0) >= k) {  // M, as v4's step 2
                const std::uint32_t own[1] = {own_max};
                std::uint64_t unused_above = 0, unused_ties = 0;
                const std::uint32_t M =
                    block_select<Threads, 1>(own, 0u, static_cast<std::uint64_t>(k), unused_above, unused_ties);
                if (M > L) {
                    L = M;
                    counted = count(L);
                    above = counted & 0xffffu;
                    ties = counted >> 16;
                }
            }
            if (above > static_cast<std::uint64_t>(cap))  // still too many (ties at M): the chunk's exact L_j
                L = block_select<Threads, Items>(key, L, static_cast<std::uint64_t>(k), above, ties);
            if (L > bound) {
                bound = L;
                if (threadIdx.x == 0) atomicMax(&r.bound, L);
            }
        }
        const index_t slot0 = (b * a.splits + j) * c.width;
        write_chunk_slots<Threads, Items>(c, slot0, key, L, lo);
        if (threadIdx.x == 0) {
            c.keys[slot0 + cap] = L;
            c.counts[2 * (b * a.splits + j)] = static_cast<std::uint32_t>(above);
            c.counts[2 * (b * a.splits + j) + 1] = static_cast<std::uint32_t>(ties);
        }
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(&r.bad, 1u);
    if (!split_arrive(r, static_cast<int>(c.blocks))) return;
    finish_candidates<Threads, true>(c, b);
}

// ---- host side ---------------------------------------------------------------

// The device buffer for the row status of a call on `stream`: one per host
// thread and stream (grown as needed, kept). Calls on two streams may run at
// the same time, so they must not share one: the other stream's kernel could
// overwrite a status before this call reads it back. (A call on the same stream
// is ordered after this one's read-back.)
inline int* status_buffer(index_t rows, cudaStream_t stream) {
    thread_local std::map<cudaStream_t, device_buffer<int>> buffers;
    device_buffer<int>& buffer = buffers[stream];
    if (buffer.size() < static_cast<std::size_t>(rows)) {
        // An unchecked call's kernel may still write the old buffer.
        if (buffer.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        buffer = device_buffer<int>(static_cast<std::size_t>(rows));
    }
    return buffer.data();
}

inline void check_status(const int* d_status, index_t rows, const char* what, sampling_check check,
                         cudaStream_t stream) {
    TINYLLM_CUDA_CHECK_LAUNCH();
    if (check == sampling_check::none) return;
    std::vector<int> status(static_cast<std::size_t>(rows));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(status.data(), d_status, status.size() * sizeof(int), cudaMemcpyDeviceToHost,
                                       stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (index_t b = 0; b < rows; ++b) {
        switch (status[static_cast<std::size_t>(b)]) {
            case row_ok: break;
            case row_bad_logit:
                TINYLLM_FAIL(what, ": row ", b,
                             " has a NaN or +inf logit, or one that the temperature divides to +inf;",
                             " logits must be finite or -inf (and a T that small is greedy decoding: T = 0)");
            case row_all_masked:
                TINYLLM_FAIL(what, ": every logit of row ", b, " is -inf (all tokens banned or filtered)");
            case row_bad_token:
                TINYLLM_FAIL(what, ": row ", b, " of generated holds a token outside [0, V)");
            default: TINYLLM_FAIL(what, ": row ", b, " has an unknown status ", status[static_cast<std::size_t>(b)]);
        }
    }
}

template <class T>
void check_logits(tensor_view<T, 2> logits, const char* what) {  // (B, V)
    ::tinyllm::detail::check_vocab(logits.extent(1), what);
    TINYLLM_EXPECT(logits.stride(1) == 1, what, ": logits rows must be contiguous (stride of V is ",
                   logits.stride(1), ")");
    TINYLLM_EXPECT(logits.extent(1) < (index_t{1} << 31), what, ": V = ", logits.extent(1), " is too large");
    // Each row is a block's own (the processors write their row in place).
    TINYLLM_EXPECT(logits.extent(0) <= 1 || logits.stride(0) >= logits.extent(1), what, ": logits rows of ",
                   logits.extent(1), " elements ", logits.stride(0), " apart overlap");
}

// out (B) beside the logits (B, V) it is chosen from: one token per row, in memory of its own.
template <class T>
void check_out(tensor_view<token_id, 1> out, tensor_view<T, 2> logits, const char* what) {
    const index_t rows = logits.extent(0);
    TINYLLM_EXPECT(out.extent(0) == rows, what, ": out has ", out.extent(0), " entries but logits have ", rows,
                   " rows");
    TINYLLM_EXPECT(out.extent(0) <= 1 || out.stride(0) == 1, what, ": out must be contiguous");
    TINYLLM_EXPECT(!::tinyllm::detail::overlaps(out, logits), what,
                   ": out must not share memory with the logits (other blocks still read them)");
}

template <class = void>  // compiled only where called (launch.cuh)
inline void run_processor(tensor_view<float, 2> logits, int which, float value, index_t k, const char* what,
                          sampling_check check, cudaStream_t stream) {
    check_logits(logits, what);
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = status_buffer(B, stream);
    launch(processor_kernel<sampling_threads, float>, static_cast<unsigned>(B), sampling_threads, 0, stream,
           logits.data(), status, logits.extent(1), logits.stride(0), which, value, k);
    check_status(status, B, what, check, stream);
}

template <class = void>  // compiled only where called (launch.cuh)
inline void run_token_list(tensor_view<float, 2> logits, const std::vector<token_id>& tokens,
                           const std::vector<float>* bias, cudaStream_t stream) {
    if (logits.extent(0) == 0 || tokens.empty()) return;
    // Staged on `stream` itself: a copy on the legacy default stream is not ordered
    // before the kernel when `stream` is a non-blocking stream.
    device_buffer<token_id> d_tokens(tokens.size());
    device_buffer<float> d_bias(bias ? bias->size() : 0);
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_tokens.data(), tokens.data(), d_tokens.bytes(), cudaMemcpyHostToDevice, stream));
    if (bias)
        TINYLLM_CUDA_CHECK(
            cudaMemcpyAsync(d_bias.data(), bias->data(), d_bias.bytes(), cudaMemcpyHostToDevice, stream));
    launch(token_list_kernel<float>, static_cast<unsigned>(logits.extent(0)), 256, 0, stream, logits.data(),
           logits.stride(0), d_tokens.data(), bias ? d_bias.data() : nullptr, static_cast<index_t>(tokens.size()));
    TINYLLM_CUDA_CHECK_LAUNCH();
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the temporary buffers (and the host arrays) are freed
}

}  // namespace detail

// ---- v1: the processors, one kernel each, in place on device logits (B, V) ----

// z <- z / T; T = 0 keeps only the first argmax (greedy decoding).
template <class = void>  // compiled only where called (launch.cuh)
inline void temperature(tensor_view<float, 2> logits, float t, sampling_check check = sampling_check::sync,
                        cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_temperature(t);
    detail::run_processor(logits, 0, t, 0, "temperature", check, stream);
}
// Keep the logits >= the k-th largest (ties kept).
template <class = void>  // compiled only where called (launch.cuh)
inline void top_k(tensor_view<float, 2> logits, index_t k, sampling_check check = sampling_check::sync,
                  cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_top_k(k);
    detail::run_processor(logits, 1, 0.0f, k, "top_k", check, stream);
}
// Keep the most probable tokens until their mass reaches p.
template <class = void>  // compiled only where called (launch.cuh)
inline void top_p(tensor_view<float, 2> logits, float p, sampling_check check = sampling_check::sync,
                  cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_top_p(p);
    detail::run_processor(logits, 2, p, 0, "top_p", check, stream);
}
// Keep the tokens with probability >= p * the top token's.
template <class = void>  // compiled only where called (launch.cuh)
inline void min_p(tensor_view<float, 2> logits, float p, sampling_check check = sampling_check::sync,
                  cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_min_p(p);
    detail::run_processor(logits, 3, p, 0, "min_p", check, stream);
}

namespace detail {
// Both penalties: validate, launch penalty_kernel in `mode` (0: repetition with
// factor a; 1: frequency a and presence b), check the rows' status.
template <class = void>  // compiled only where called (launch.cuh)
inline void run_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated, int mode, float a,
                        float b, const char* op, sampling_check check, cudaStream_t stream) {
    check_logits(logits, op);
    TINYLLM_EXPECT(generated.extent(0) == logits.extent(0), op, ": generated has ", generated.extent(0),
                   " rows but logits have ", logits.extent(0));
    TINYLLM_EXPECT(generated.extent(1) <= 1 || generated.stride(1) == 1, op, ": generated rows must be contiguous");
    // A block reads its row of generated while other blocks write their logits.
    ::tinyllm::detail::expect_apart(op, "logits", logits, "generated", generated);
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = status_buffer(B, stream);
    launch(penalty_kernel<sampling_threads, float>, static_cast<unsigned>(B), sampling_threads, 0, stream,
           logits.data(), status, logits.extent(1), logits.stride(0), generated.data(), generated.extent(1),
           generated.stride(0), mode, a, b);
    check_status(status, B, op, check, stream);
}
}  // namespace detail

// Repetition penalty over the generated tokens (B, L) (device memory, entries < 0 are padding).
template <class = void>  // compiled only where called (launch.cuh)
inline void repetition_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated, float r,
                               sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    ::tinyllm::detail::check_penalty(r);
    detail::run_penalty(logits, generated, 0, r, 0.0f, "repetition_penalty", check, stream);
}

// Frequency and presence penalties over the generated tokens (B, L) (device memory).
template <class = void>  // compiled only where called (launch.cuh)
inline void frequency_presence_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated,
                                       float frequency, float presence, sampling_check check = sampling_check::sync,
                                       cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(std::isfinite(frequency) && std::isfinite(presence),
                   "frequency_presence_penalty: frequency = ", frequency, " and presence = ", presence,
                   " must be finite");
    detail::run_penalty(logits, generated, 1, frequency, presence, "frequency_presence_penalty", check, stream);
}

// z_t <- z_t + bias[t] in every row (the map is on the host). Synchronizes.
template <class = void>  // compiled only where called (launch.cuh)
inline void logit_bias(tensor_view<float, 2> logits, const std::map<token_id, float>& bias,
                       cudaStream_t stream = nullptr) {  // (B, V)
    detail::check_logits(logits, "logit_bias");
    std::vector<token_id> tokens;
    std::vector<float> values;
    for (auto [t, v] : bias) {
        TINYLLM_EXPECT(t >= 0 && t < logits.extent(1), "logit_bias: token ", t, " is outside [0, ", logits.extent(1),
                       ")");
        TINYLLM_EXPECT(std::isfinite(v), "logit_bias: the bias of token ", t, " is ", v,
                       "; use ban_tokens to forbid a token");
        tokens.push_back(t);
        values.push_back(v);
    }
    detail::run_token_list(logits, tokens, &values, stream);
}

// z_t <- -inf for the listed tokens in every row. Synchronizes.
template <class = void>  // compiled only where called (launch.cuh)
inline void ban_tokens(tensor_view<float, 2> logits, std::span<const token_id> tokens,
                       cudaStream_t stream = nullptr) {  // (B, V)
    detail::check_logits(logits, "ban_tokens");
    std::vector<bool> banned(static_cast<std::size_t>(logits.extent(1)), false);
    for (token_id t : tokens) {
        TINYLLM_EXPECT(t >= 0 && t < logits.extent(1), "ban_tokens: token ", t, " is outside [0, ", logits.extent(1),
                       ")");
        banned[static_cast<std::size_t>(t)] = true;
    }
    TINYLLM_EXPECT(std::find(banned.begin(), banned.end(), false) != banned.end(), "ban_tokens: all ",
                   logits.extent(1), " tokens are banned; nothing could be generated");
    detail::run_token_list(logits, std::vector<token_id>(tokens.begin(), tokens.end()), nullptr, stream);
}

// ---- choosers -------------------------------------------------------------------

// Greedy, one block per row: out[b] = argmax of row b (lowest index among
// ties). out (B) and logits (B, V) on the device.
template <class = void>  // compiled only where called (launch.cuh)
inline void greedy_reduction(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                   sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    detail::check_logits(logits, "greedy");
    detail::check_out(out, logits, "greedy");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = detail::status_buffer(B, stream);
    launch(detail::greedy_kernel<detail::sampling_threads, float>, static_cast<unsigned>(B), detail::sampling_threads,
           0, stream, out.data(), status, logits.data(), logits.extent(1), logits.stride(0));
    detail::check_status(status, B, "greedy", check, stream);
}

// v1 chooser: a draw from softmax(logits) per row, the same token as
// tinyllm::cpu::sample(out, logits, seed, step, stream_offset).
template <class = void>  // compiled only where called (launch.cuh)
inline void sample(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, std::uint64_t seed,
                   std::uint64_t step, std::uint64_t stream_offset = 0, sampling_check check = sampling_check::sync,
                   cudaStream_t stream = nullptr) {
    detail::check_logits(logits, "sample");
    detail::check_out(out, logits, "sample");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = detail::status_buffer(B, stream);
    launch(detail::sample_kernel<detail::sampling_threads, float>, static_cast<unsigned>(B), detail::sampling_threads,
           0, stream, out.data(), status, logits.data(), logits.extent(1), logits.stride(0), seed, step, stream_offset);
    detail::check_status(status, B, "sample", check, stream);
}

// v2 fused, one block per row: temperature -> top-k -> top-p -> min-p -> draw
// in one kernel (the logits are not modified); temperature 0 is greedy. The
// same token as tinyllm::cpu::sample(out, logits, params, seed, step,
// stream_offset): row b draws from Philox stream b + stream_offset.
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_fused(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const sampling::params& p,
                   std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset = 0,
                   sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    ::tinyllm::detail::check_params(p);
    if (p.temperature == 0.0f) return greedy_reduction(out, logits, check, stream);
    detail::check_logits(logits, "sample");
    detail::check_out(out, logits, "sample");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    const detail::fused_params fp{p.temperature, p.top_k ? *p.top_k : 0, p.top_p ? *p.top_p : 1.0f,
                                  p.min_p ? *p.min_p : 0.0f};
    int* status = detail::status_buffer(B, stream);
    launch(detail::sample_fused_kernel<detail::sampling_threads, float>, static_cast<unsigned>(B),
           detail::sampling_threads, 0, stream, out.data(), status, logits.data(), logits.extent(1), logits.stride(0),
           fp, seed, step, stream_offset);
    detail::check_status(status, B, "sample", check, stream);
}

namespace detail {

// The blocks per row of a v3 call: enough blocks for two per SM over the whole
// batch (264 on an H200's 132 SMs), but at least 4096 elements per block (below
// that a block's fixed cost dominates). `requested` > 0 forces the count
// (tests), capped at 1024 and at one block per 4 elements. `sms`: the GPU's SMs
// (by default the current device's, device.cuh).
inline constexpr index_t split_blocks_per_sm = 2;
inline constexpr index_t split_min_elements = 4096;
// `per_row` blocks a row, but at least split_min_elements each, at most 1024.
inline int split_count_of(index_t per_row, index_t V) {
    const index_t by_size = (V + split_min_elements - 1) / split_min_elements;
    return static_cast<int>(std::max<index_t>(1, std::min<index_t>({per_row, by_size, 1024})));
}
inline int split_count(index_t B, index_t V, int requested, index_t sms = current_multiprocessors()) {
    if (requested > 0) return static_cast<int>(std::max<index_t>(1, std::min<index_t>({requested, 1024, (V + 3) / 4})));
    return split_count_of((split_blocks_per_sm * sms + B - 1) / B, V);
}

// Greedy's blocks per row: as many as one wave holds over the batch. Its kernel
// (31 registers) runs four 512-thread blocks per SM, 528 on an H200's 132 SMs,
// so floor(528 / B) (8 at B = 64: 512 blocks, all resident at once), with at
// least 4096 elements per block as split_count. Measured at B = 64, V = 128256
// (run E, H200): 8 blocks 17.6 and 18.2 us, split_count's 5: 18.4 and 18.5 us.
inline constexpr index_t greedy_blocks_per_sm = 4;
inline int greedy_split_count(index_t B, index_t V, int requested, index_t sms = current_multiprocessors()) {
    if (requested > 0) return split_count(B, V, requested, sms);
    return split_count_of(greedy_blocks_per_sm * sms / B, V);
}

// The v3 workspace of a stream: one split_row per row (zeroed once when
// allocated; every pass leaves it clean) and the draw's per-chunk masses.
struct split_workspace {
    device_buffer<split_row> rows;
    device_buffer<unsigned long long> partials;
    device_buffer<unsigned> launch;  // v7: tickets drawn, blocks done (zeroed once; every launch leaves them zero)
};
inline split_workspace& split_buffers(index_t B, int splits, cudaStream_t stream) {
    thread_local std::map<cudaStream_t, split_workspace> workspaces;
    split_workspace& w = workspaces[stream];
    const auto need_rows = static_cast<std::size_t>(B), need_partials = static_cast<std::size_t>(B) * splits;
    if (w.rows.size() < need_rows || w.partials.size() < need_partials) {
        // An unchecked call's kernels may still use the old buffers.
        if (w.rows.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (w.rows.size() < need_rows) {
            w.rows = device_buffer<split_row>(need_rows);
            TINYLLM_CUDA_CHECK(cudaMemsetAsync(w.rows.data(), 0, w.rows.bytes(), stream));
        }
        if (w.partials.size() < need_partials) w.partials = device_buffer<unsigned long long>(need_partials);
    }
    return w;
}

// v7's counters of a stream's workspace, allocated and zeroed by its first call.
inline unsigned* chained_counters(split_workspace& w, cudaStream_t stream) {
    if (w.launch.size() == 0) {
        w.launch = device_buffer<unsigned>(2);
        TINYLLM_CUDA_CHECK(cudaMemsetAsync(w.launch.data(), 0, w.launch.bytes(), stream));
    }
    return w.launch.data();
}

inline split_args make_split_args(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, int splits,
                                  int* status, split_workspace& w) {
    split_args a{};
    a.out = out.data();
    a.status = status;
    a.logits = logits.data();
    a.V = logits.extent(1);
    a.row_stride = logits.stride(0);
    a.splits = splits;
    a.chunk = ((a.V + splits - 1) / splits + 3) / 4 * 4;  // a multiple of 4: aligned chunk starts
    a.vec = (reinterpret_cast<std::uintptr_t>(logits.data()) % 16 == 0 &&
             (logits.extent(0) == 1 || a.row_stride % 4 == 0))
                ? 1
                : 0;
    a.rows = w.rows.data();
    a.partials = w.partials.data();
    return a;
}

inline unsigned split_grid(index_t B, int splits) {
    const index_t blocks = B * splits;
    TINYLLM_EXPECT(blocks < (index_t{1} << 31), "sample: B = ", B, " rows of ", splits, " blocks is too many");
    return static_cast<unsigned>(blocks);
}

// The arguments of a multi-block sampling call (v3, v4, v5) with `splits` blocks
// per row: the stream's workspace and status buffer (a.status), the chain's
// parameters and the draw's seed, step and stream offset.
inline split_args split_call(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                             const sampling::params& p, std::uint64_t seed, std::uint64_t step,
                             std::uint64_t stream_offset, int splits, cudaStream_t stream) {
    const index_t B = logits.extent(0);
    int* status = status_buffer(B, stream);
    split_args a = make_split_args(out, logits, splits, status, split_buffers(B, splits, stream));
    a.p = fused_params{p.temperature, p.top_k ? *p.top_k : 0, p.top_p ? *p.top_p : 1.0f, p.min_p ? *p.min_p : 0.0f};
    a.seed = seed;
    a.step = step;
    a.stream_offset = stream_offset;
    return a;
}

}  // namespace detail

// v3 split greedy: several blocks per row, one launch (see split_row). splits
// = 0 chooses the count (greedy_split_count); a positive value forces it.
template <class = void>  // compiled only where called (launch.cuh)
inline void greedy_split(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, int splits = 0,
                         sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    detail::check_logits(logits, "greedy");
    detail::check_out(out, logits, "greedy");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    splits = detail::greedy_split_count(B, logits.extent(1), splits);
    int* status = detail::status_buffer(B, stream);
    detail::split_workspace& w = detail::split_buffers(B, splits, stream);
    const detail::split_args a = detail::make_split_args(out, logits, splits, status, w);
    launch(detail::greedy_split_kernel<detail::sampling_threads>, detail::split_grid(B, splits),
           detail::sampling_threads, 0, stream, a);
    detail::check_status(status, B, "greedy", check, stream);
}

// v3 split fused sampling: the chain of v2 with several blocks per row, one
// launch per pass: the maximum (with top-k's first radix byte), 3 more bytes
// for top-k (0 < k < V), 4 for top-p (p < 1), the draw — 2 to 9 launches.
// Temperature 0 is greedy_split.
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_split(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const sampling::params& p,
                         std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset = 0, int splits = 0,
                         sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    ::tinyllm::detail::check_params(p);
    if (p.temperature == 0.0f) return greedy_split(out, logits, splits, check, stream);
    detail::check_logits(logits, "sample");
    detail::check_out(out, logits, "sample");
    const index_t B = logits.extent(0), V = logits.extent(1);
    if (B == 0) return;
    splits = detail::split_count(B, V, splits);
    const detail::split_args a = detail::split_call(out, logits, p, seed, step, stream_offset, splits, stream);
    const unsigned grid = detail::split_grid(B, splits);
    auto pass = [&](int phase, int sel, int shift) {  // one instantiation per phase: each its own registers
        constexpr int T = detail::sampling_threads;
        if (phase == detail::split_max)
            launch(detail::sample_split_kernel<T, detail::split_max>, grid, T, 0, stream, a, sel, shift);
        else if (phase == detail::split_radix)
            launch(detail::sample_split_kernel<T, detail::split_radix>, grid, T, 0, stream, a, sel, shift);
        else
            launch(detail::sample_split_kernel<T, detail::split_draw>, grid, T, 0, stream, a, sel, shift);
    };
    const bool top_k = a.p.top_k > 0 && a.p.top_k < V;
    pass(detail::split_max, top_k ? 1 : 0, 0);  // with top-k's first byte
    if (top_k)
        for (int shift = 16; shift >= 0; shift -= 8) pass(detail::split_radix, 0, shift);
    if (a.p.top_p < 1.0f)
        for (int shift = 24; shift >= 0; shift -= 8) pass(detail::split_radix, 1, shift);
    pass(detail::split_draw, 0, 0);
    detail::check_status(a.status, B, "sample", check, stream);
}

namespace detail {

// Whether v4 (candidates) runs a chain: top-k on (0 < k < V, k <= 1024; not
// greedy) and a row of at most 1024 chunks of 8192.
inline bool candidates_apply(index_t V, const sampling::params& p) {
    if (p.temperature == 0.0f || !p.top_k) return false;
    const index_t k = *p.top_k;
    return k > 0 && k < V && k <= candidate_max_k && V <= 1024 * candidate_chunk_max;
}

// v4's blocks per row: v3's count (split_count), but never chunks longer than
// a block holds in registers (8192 elements).
inline int candidate_split_count(index_t B, index_t V, int requested, index_t sms = current_multiprocessors()) {
    const index_t least = (V + candidate_chunk_max - 1) / candidate_chunk_max;
    return static_cast<int>(std::max<index_t>(split_count(B, V, requested, sms), least));
}

// The host's checks of a multi-block call (v4, v5, v6), with the CPU's
// messages; false when there is nothing to launch (no rows).
inline bool check_sample_call(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                              const sampling::params& p) {
    ::tinyllm::detail::check_params(p);
    check_logits(logits, "sample");
    check_out(out, logits, "sample");
    return logits.extent(0) > 0;
}

// At least `need` words of device memory, kept per host thread and stream and
// grown as needed; never zeroed. Tag keeps one user's buffers from another's.
template <class Tag>
std::uint32_t* stream_words(std::size_t need, cudaStream_t stream) {
    thread_local std::map<cudaStream_t, device_buffer<std::uint32_t>> buffers;
    device_buffer<std::uint32_t>& buffer = buffers[stream];
    if (buffer.size() < need) {
        // An unchecked call's kernels may still use the old buffer.
        if (buffer.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        buffer = device_buffer<std::uint32_t>(need);
    }
    return buffer.data();
}

// v4's and v6's slots, per stream, in one buffer: the keys (B, splits, width),
// their indices (the same), the counts (B, splits, 2). Never zeroed: every slot
// a call reads is written earlier in the same launch.
inline void candidate_slots(candidate_args& c, index_t B, int splits, index_t width, cudaStream_t stream) {
    c.width = width;
    const auto slots = static_cast<std::size_t>(B) * splits * static_cast<std::size_t>(width);
    const auto counts = static_cast<std::size_t>(B) * splits * 2;
    std::uint32_t* words = stream_words<struct candidate_slots_tag>(2 * slots + counts, stream);
    c.keys = words;
    c.index = reinterpret_cast<std::int32_t*>(words + slots);
    c.counts = words + 2 * slots;
}

}  // namespace detail

// v4 candidates: the chain of v2/v3 in ONE launch when top-k is on (0 < k < V,
// k <= 1024): every block keeps its chunk's k largest keys as slots and the
// row's last block selects, draws and finds the token among them (see
// candidate_args). Other parameters (no top-k, k > 1024, temperature 0) run
// sample_split. splits = 0 chooses the count (candidate_split_count).
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_candidates(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                              const sampling::params& p, std::uint64_t seed, std::uint64_t step,
                              std::uint64_t stream_offset = 0, int splits = 0,
                              sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    const index_t B = logits.extent(0), V = logits.extent(1);
    if (!detail::candidates_apply(V, p))  // it checks the call itself
        return sample_split(out, logits, p, seed, step, stream_offset, splits, check, stream);
    if (!detail::check_sample_call(out, logits, p)) return;
    splits = detail::candidate_split_count(B, V, splits);
    detail::candidate_args c{};
    c.s = detail::split_call(out, logits, p, seed, step, stream_offset, splits, stream);
    detail::candidate_slots(c, B, splits, *p.top_k + 1, stream);
    c.blocks = splits;
    c.per_block = 1;
    launch(detail::sample_candidates_kernel<detail::sampling_threads, detail::candidate_items>,
           detail::split_grid(B, splits), detail::sampling_threads, 0, stream, c);
    detail::check_status(c.s.status, B, "sample", check, stream);
}

namespace detail {

// v6's slots per chunk above its bound: the keys above a bound M of the k-th
// largest are usually k and a few (k + 10 for k = 50, up to k + 80 for k = 200,
// on uniform, normal and heavy-tailed logits in chunks of 8192); more send the
// chunk to a selection.
inline index_t filtered_cap(index_t k) { return k + k / 2 + 32; }

// v6's blocks per row, and the chunks each walks: v4's chunks, over as many
// blocks as one wave holds at two per SM (4 at B = 64 on 132 SMs, each walking
// 4 of a Llama 3 row's 16 chunks; one chunk each at B = 1, as v4). blocks > 0
// forces the count (at most the chunks). Returns the chunks per block.
inline index_t filtered_blocks(index_t B, int chunks, int& blocks, index_t sms = current_multiprocessors()) {
    index_t want = blocks > 0 ? blocks : split_blocks_per_sm * sms / std::max<index_t>(B, 1);
    want = std::clamp<index_t>(want, 1, chunks);
    const index_t per_block = (chunks + want - 1) / want;
    blocks = static_cast<int>((chunks + per_block - 1) / per_block);
    return per_block;
}

// v6 with its counts given: `chunks` per row (v4's), `blocks` per row (0:
// filtered_blocks' choice). The tests force both.
template <class = void>  // compiled only where called (launch.cuh)
inline void run_filtered(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const sampling::params& p,
                         std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset, int chunks, int blocks,
                         sampling_check check, cudaStream_t stream) {
    const index_t B = logits.extent(0), V = logits.extent(1);
    chunks = candidate_split_count(B, V, chunks);
    candidate_args c{};
    c.s = split_call(out, logits, p, seed, step, stream_offset, chunks, stream);
    candidate_slots(c, B, chunks, filtered_cap(*p.top_k) + 1, stream);
    c.per_block = filtered_blocks(B, chunks, blocks);
    c.blocks = blocks;
    launch(sample_filtered_kernel<sampling_threads, candidate_items>, split_grid(B, blocks), sampling_threads, 0,
           stream, c);
    check_status(c.s.status, B, "sample", check, stream);
}

}  // namespace detail

// v6 filtered: v4's chain and slots, with fewer blocks per row, each walking
// several chunks against a bound carried from chunk to chunk and shared by the
// row's blocks, so that most chunks need no selection (see
// sample_filtered_kernel). The same chains as v4 (0 < k < V, k <= 1024); others
// run sample_split. splits = 0 chooses the chunks (candidate_split_count) and
// the blocks (filtered_blocks); a positive value forces the chunks.
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_filtered(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                            const sampling::params& p, std::uint64_t seed, std::uint64_t step,
                            std::uint64_t stream_offset = 0, int splits = 0,
                            sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    if (!detail::candidates_apply(logits.extent(1), p))  // it checks the call itself
        return sample_split(out, logits, p, seed, step, stream_offset, splits, check, stream);
    if (!detail::check_sample_call(out, logits, p)) return;
    detail::run_filtered(out, logits, p, seed, step, stream_offset, splits, 0, check, stream);
}

namespace detail {

// Whether v5 (buckets) runs a chain: top-p on (p < 1) without a top-k that
// keeps less than the row (k < V: v4 or v3), and not greedy.
inline bool buckets_apply(index_t V, const sampling::params& p) {
    if (p.temperature == 0.0f || !p.top_p || *p.top_p >= 1.0f) return false;
    return !p.top_k || *p.top_k >= V;
}

// v5's candidate lists, per stream (stream_words): (B, capacity) indices, capacity =
// min(V, bucket_list_max). A crossing bucket holds about 1/128 of a row of
// logits spread over 16 nats (~1000 of 128256); a row with more candidates than
// that (logits piled into one eighth of a nat: ties, a flat distribution) is
// read again by its last block instead. A call reads only the entries it wrote.
inline constexpr index_t bucket_list_max = 16384;
inline index_t bucket_capacity(index_t V) { return std::min(V, bucket_list_max); }
inline std::uint32_t* bucket_candidates(index_t B, index_t V, cudaStream_t stream) {
    const auto need = static_cast<std::size_t>(B) * static_cast<std::size_t>(bucket_capacity(V));
    return stream_words<struct bucket_candidates_tag>(need, stream);
}

// The arguments of a v5 or v7 call: v3's (split_call) with the stream's
// candidate lists; `splits` becomes the count used (0: split_count's choice).
inline split_args bucket_call(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                              const sampling::params& p, std::uint64_t seed, std::uint64_t step,
                              std::uint64_t stream_offset, int& splits, cudaStream_t stream) {
    const index_t B = logits.extent(0), V = logits.extent(1);
    splits = split_count(B, V, splits);
    split_args a = split_call(out, logits, p, seed, step, stream_offset, splits, stream);
    a.candidates = bucket_candidates(B, V, stream);
    a.candidate_capacity = bucket_capacity(V);
    return a;
}

}  // namespace detail

// v5 buckets: top-p without top-k in THREE launches, v3's chunks and row state:
//   1. the maximum (v3's split_max);
//   2. every block adds its chunk's masses into 256 buckets of x = z / T - m,
//      eighth nats (mass_bucket); the row's last block finds S, the target
//      ceil(p S) and the bucket c where the mass from the top reaches it;
//   3. every block: its kept mass above c, and its elements in c appended to the
//      row's candidate list; the row's last block selects tau among the
//      candidates only (radix selection, weights q), adds their kept masses to
//      their chunks and draws as v3. A row with more candidates than its list
//      holds (bucket_list_max) is read again by that block instead: slower, the
//      same token.
// tau is exactly the CPU's: every key above bucket c is larger than every key
// in it, so the CPU's threshold is the candidate key whose mass from the top,
// plus the mass above c, first reaches the target. Other chains (top-k with
// k < V, p = 1, temperature 0) run sample_candidates (v4, or v3 through it).
// splits = 0 chooses v3's count (split_count).
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_buckets(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                           const sampling::params& p, std::uint64_t seed, std::uint64_t step,
                           std::uint64_t stream_offset = 0, int splits = 0,
                           sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    const index_t B = logits.extent(0), V = logits.extent(1);
    if (!detail::buckets_apply(V, p))  // it checks the call itself
        return sample_candidates(out, logits, p, seed, step, stream_offset, splits, check, stream);
    if (!detail::check_sample_call(out, logits, p)) return;
    const detail::split_args a = detail::bucket_call(out, logits, p, seed, step, stream_offset, splits, stream);
    const unsigned grid = detail::split_grid(B, splits);
    constexpr int T = detail::sampling_threads;
    launch(detail::sample_buckets_kernel<T, detail::split_max>, grid, T, 0, stream, a);
    launch(detail::sample_buckets_kernel<T, detail::split_buckets>, grid, T, 0, stream, a);
    launch(detail::sample_buckets_kernel<T, detail::split_bucket_draw>, grid, T, 0, stream, a);
    detail::check_status(a.status, B, "sample", check, stream);
}

// v7 chained: v5's passes, the same token, in ONE launch (sample_chained_kernel):
// 3 x B x splits blocks taking tickets, a row's blocks of one pass waiting for
// its blocks of the pass before. Other chains go where sample_buckets sends
// them. splits = 0 chooses v3's count (split_count).
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_chained(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                           const sampling::params& p, std::uint64_t seed, std::uint64_t step,
                           std::uint64_t stream_offset = 0, int splits = 0,
                           sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    const index_t B = logits.extent(0), V = logits.extent(1);
    if (!detail::buckets_apply(V, p))  // it checks the call itself
        return sample_candidates(out, logits, p, seed, step, stream_offset, splits, check, stream);
    if (!detail::check_sample_call(out, logits, p)) return;
    const detail::split_args a = detail::bucket_call(out, logits, p, seed, step, stream_offset, splits, stream);
    const unsigned per_pass = detail::split_grid(B, splits);
    TINYLLM_EXPECT(per_pass < (1u << 31) / 3, "sample: B = ", B, " rows of ", splits, " blocks is too many");
    unsigned* counters = detail::chained_counters(detail::split_buffers(B, splits, stream), stream);
    constexpr int T = detail::sampling_threads;
    launch(detail::sample_chained_kernel<T>, 3 * per_pass, T, 0, stream, a, counters);
    detail::check_status(a.status, B, "sample", check, stream);
}

// The public choosers pick the rung: v3 (split) when it gives a row more than
// one block (split_count > 1: B < 264 rows and V > 4096), else the
// one-block-per-row rung, which needs fewer launches.
template <class = void>  // compiled only where called (launch.cuh)
inline void greedy(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                   sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    if (detail::split_count(logits.extent(0), logits.extent(1), 0) > 1) return greedy_split(out, logits, 0, check, stream);
    greedy_reduction(out, logits, check, stream);
}

// The fused chain (temperature -> top-k -> top-p -> min-p -> draw; temperature
// 0 is greedy), the same token as tinyllm::cpu::sample(out, logits, params,
// seed, step, stream_offset): sample_filtered (v6) when top-k is on with
// k <= 1024, sample_buckets (v5) for top-p without top-k; else sample_split
// (v3) where greedy would take it, else sample_fused (v2).
template <class = void>  // compiled only where called (launch.cuh)
inline void sample(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const sampling::params& p,
                   std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset = 0,
                   sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    if (detail::candidates_apply(logits.extent(1), p))
        return sample_filtered(out, logits, p, seed, step, stream_offset, 0, check, stream);
    if (detail::buckets_apply(logits.extent(1), p))
        return sample_buckets(out, logits, p, seed, step, stream_offset, 0, check, stream);
    if (detail::split_count(logits.extent(0), logits.extent(1), 0) > 1)
        return sample_split(out, logits, p, seed, step, stream_offset, 0, check, stream);
    sample_fused(out, logits, p, seed, step, stream_offset, check, stream);
}

}  // namespace tinyllm::cuda
