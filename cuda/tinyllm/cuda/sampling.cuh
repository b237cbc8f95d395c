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
// The ladder, a rung per file, each saying at its top what changed and why
// (v1 and v2: one thread block per row; v3 on: several blocks per row):
//   sampling_unfused.cuh    v1  one kernel per processor, in place on the logits,
//                               as composable as the CPU chain; the v1 choosers
//   sampling_fused.cuh      v2  the chain temperature -> top-k -> top-p -> min-p
//                               -> draw in ONE kernel that only reads the logits
//   sampling_split.cuh      v3  the v2 chain with several blocks per row, one
//                               launch per pass, each pass finished by the row's
//                               last block to arrive; greedy in one launch
//   sampling_candidates.cuh v4  top-k in one launch from every chunk's own k
//                               largest keys
//   sampling_buckets.cuh    v5  top-p without top-k in three launches: mass
//                               buckets, then a selection among one bucket
//   sampling_filtered.cuh   v6  v4 with one bound carried along each block's
//                               chunks, so most chunks need no selection
//   sampling_chained.cuh    v7  v5's three passes in one launch, each block
//                               waiting only for its own row's previous pass
//   sampling_common.cuh         what they share: the status, block reductions,
//                               the radix selection, the host's checks
// greedy() and sample() at the end of this file choose the rung for a call.
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

#include <tinyllm/cuda/sampling_common.cuh>
#include <tinyllm/cuda/sampling_unfused.cuh>
#include <tinyllm/cuda/sampling_fused.cuh>
#include <tinyllm/cuda/sampling_split.cuh>
#include <tinyllm/cuda/sampling_candidates.cuh>
#include <tinyllm/cuda/sampling_buckets.cuh>
#include <tinyllm/cuda/sampling_filtered.cuh>
#include <tinyllm/cuda/sampling_chained.cuh>

namespace tinyllm::cuda {

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
