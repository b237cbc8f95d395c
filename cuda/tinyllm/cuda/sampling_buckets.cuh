// tinyllm/cuda/sampling_buckets.cuh — v5 of the CUDA sampling ladder: top-p
// without top-k in three launches. Its two new passes (split_buckets,
// split_bucket_draw) are in split_pass, sampling_split.cuh, beside v3's.
//
// v5 buckets — sample_buckets(out, logits, params, ...): top-p WITHOUT top-k in
// THREE launches instead of v3's six.
//
// Why: v3 finds top-p's threshold one key byte per launch, and two of those
// passes compute the exact weight q of a large part of the row (run E's
// profile: 181 and 122 of its ~470 us). But a threshold only has to be found
// among the elements that could be it.
//
// How: after the maximum (v3's pass), every block adds its masses q into 256
// buckets of x = z / T - m, eighth nats wide (mass_bucket: a larger key never
// lands in a lower bucket), and the row's last block finds S, the target and
// the bucket c where the mass from the top reaches it. The third launch: each
// block sums its kept mass above c (weighed 32 at a time through a warp's
// queue, warp_queue, so no lane idles through another's exponential) and
// appends its elements in c to the row's candidate list (a ballot and one
// atomic per warp); the row's last block stages the candidates' keys in shared
// memory (up to 2048), selects tau among them alone, starting below the key
// bytes they all share, adds their kept masses to their chunks and draws as v3
// (a row whose candidates overflow the list, bucket_list_max, is read again by
// that block). Exact: every key above c is above every candidate.
//
// Expected (B = 64, V = 128256, p = 0.9; not yet measured): 45-70 us by an
// instruction count of its passes (docs/sampling.md), against v3's 412 us
// measured in run E.
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_candidates.cuh>

namespace tinyllm::cuda {

namespace detail {

// v5's passes under a name of their own (see split_pass).
template <int Threads, int Phase>
__global__ void __launch_bounds__(Threads, 2) sample_buckets_kernel(split_args a) {  // v5
    (void)split_pass<Threads, Phase>(a, blockIdx.x, 0, 0);
}

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

}  // namespace tinyllm::cuda
