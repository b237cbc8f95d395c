// tinyllm/cuda/sampling_candidates.cuh — v4 of the CUDA sampling ladder:
// top-k in one launch, from every chunk's own k largest keys.
//
// v4 candidates — sample_candidates(out, logits, params, ...): the chain in ONE
// launch when top-k is on (0 < k < V, k <= 1024).
//
// Why: v3 reads the row once per radix byte (5 launches for top-k), while the k
// largest keys of a row are among the k largest of each chunk.
//
// How: a block holds its chunk (at most 8192 elements: 16 keys per thread, in
// registers) and finds the chunk's k-th largest key L_j by radix selection with
// block barriers only (warp-aggregated histogram adds, __match_any_sync), among
// the keys >= a bound (the k-th largest of the threads' own maxima); it writes
// the keys above L_j with their indices (fewer than k, in row order) and L_j
// with its count of equal keys. The row's last block selects the row's k-th
// largest among those slots (exactly: the counts carry the ties), then top-p
// among them, then draws: chunk masses from the slots, the token from the drawn
// chunk's slots — or, when that chunk's L_j is kept (ties at the threshold,
// whose indices have no slot), from a scan of that chunk, as v3. 64 registers:
// two blocks per SM.
//
// Expected (B = 64, V = 128256, k = 50: 16 chunks, at most 816 slots per row):
// about greedy v3's single read (18.6 us) plus the blocks' selections and the
// last blocks' merge, 25-40 us.
//
// Measured (H200, 2026-12-04), before the bound: 122 us against v3's 354 us;
// the blocks' four radix passes over all 16 keys a thread holds were
// latency-bound (docs/sampling.md).
//
// With the bound (not yet measured): expected 70-90 us.
//
// Without top-k (top-p or min-p alone) the kept set has no bound:
// sample_candidates runs v3.
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_split.cuh>

namespace tinyllm::cuda {

namespace detail {

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

// v4's steps as functions, which v6 (sampling_filtered.cuh) calls in its own order.

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

// ---- host side -----------------------------------------------------------------

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

}  // namespace tinyllm::cuda
