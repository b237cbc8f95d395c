// tinyllm/cuda/sampling_filtered.cuh — v6 of the CUDA sampling ladder: v4
// with one bound carried along each block's chunks; the public sample() takes
// it for top-k.
//
// v6 filtered — sample_filtered(out, logits, params, ...): v4's slots and last
// block, with fewer blocks per row and no selection in most chunks.
//
// Why: v4 runs two radix selections in every block (the bound M, then L_j:
// eight barrier-bound passes with a one-warp pick each), and a row of 16 chunks
// at B = 64 is 1024 blocks, four waves of two per SM. But the last block only
// needs, per chunk, the keys >= SOME L <= K (listed above L, counted at L), and
// any key that k of the row's keys reach is such an L.
//
// How: a row gets one wave of blocks (4 at B = 64), each walking consecutive
// chunks; the first chunk's M becomes the block's bound, published to the row
// with an atomicMax, and a chunk whose keys above the best bound known fit its
// cap (k + k/2 + 32 slots) is only counted and written (two block scans) — M or
// the exact L_j only when they do not. The last block copies the slots in use
// into shared memory first (stage_slots), so its radix passes wait on no
// memory.
//
// Expected (B = 64, V = 128256, k = 50; not yet measured): the read of the row
// plus one selection per block and the last blocks' merge, 30-50 us against
// v4's 70-90 (docs/sampling.md).
//
// The public sample() takes v6 for top-k.
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_candidates.cuh>

namespace tinyllm::cuda {

namespace detail {

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

// ---- host side -----------------------------------------------------------------

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

}  // namespace tinyllm::cuda
