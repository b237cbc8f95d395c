// tinyllm/cuda/sampling_split.cuh — v3 of the CUDA sampling ladder: several
// blocks per row, and the row state and passes that v4 to v7 build on (v5's
// two passes are in split_pass beside v3's; sampling_buckets.cuh launches them).
//
// v3 split — sample_split(out, logits, params, ...) and greedy_split(): the v2
// chain with SEVERAL blocks per row (grid = B x splits; a block reads a chunk
// of V / splits elements with float4 loads).
//
// Why: at B = 64 v2 keeps 64 of an H200's 132 SMs busy and each SM reads its
// 513 KB row alone (measured: greedy 119 us, top-k 677 us, top-p 913 us,
// against ~8 us to read 33 MB once).
//
// How, without grid-wide barriers (they deadlock when the blocks are not all
// resident): each pass adds its block's part to the row's state in global
// memory with atomics (integer max, integer histogram bins, integer masses: the
// same in any order, so still the CPU's bits), and the row's LAST block to
// arrive (atomic counter after __threadfence) finishes the pass in the same
// launch — picks the radix byte (as radix_pick), or draws t, finds the chunk
// whose running mass crosses it from the blocks' partial masses, and scans that
// one chunk. Greedy is ONE launch (a 64-bit atomicMax of key << 32 | ~index);
// sampling is one launch per pass: max (+ top-k's first byte, whose counts need
// no maximum), 3 more bytes of top-k, 4 of top-p, draw (2 to 9 launches, ~3 us
// each). The last block picks a byte with one warp (radix_pick_warp), not a
// 256-step serial walk. Splits: ~2 blocks per SM over the batch, at least 4096
// elements per block (split_count).
//
// Expected: greedy near the read of 33 MB (~10-15 us); top-k 50 / top-p 0.9: 5
// / 6 launches, each reading the row (after the first, from L2) with every SM:
// ~30-40 / 40-60 us.
//
// Measured (H200, 2026-12-04, B=64, V=128256): greedy 18.5 us; top-k 354 us,
// top-p 412 us, about ten times the estimate: the radix passes are bound by
// per-element work (the exact weights) and latency, not by the reads
// (docs/sampling.md).
//
// Each pass is its own instantiation of sample_split_kernel (56-64 registers,
// two 512-thread blocks per SM).
//
// The public greedy() and sample(params) use v3 whenever it gives a row more
// than one block (B < 264 and V > 4096), else v1 greedy / v2 (fewer launches);
// sample(params) takes v6 (sampling_filtered.cuh) first whenever top-k lets
// it, and v5 (sampling_buckets.cuh) for top-p without top-k.
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_fused.cuh>

namespace tinyllm::cuda {

namespace detail {

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

// ---- host side -----------------------------------------------------------------

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
    if (B < 1) return 1;  // no rows: nothing to split (and no division by 0)
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
    if (B < 1) return 1;
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

}  // namespace tinyllm::cuda
