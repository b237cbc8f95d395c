// tinyllm/cuda/sampling_chained.cuh — v7 of the CUDA sampling ladder: v5's
// three passes in one launch.
//
// v7 chained — sample_chained(out, logits, params, ...): v5's three passes in
// ONE launch.
//
// Why: between two kernels the GPU drains the first (its last, partial wave of
// blocks) and starts the next, twice per v5 call, while a row's next pass needs
// only that row's last one.
//
// How: 3 x B x splits blocks, each taking a ticket (atomicAdd) that gives it
// its pass and chunk; a block of a later pass waits (wait_at_least, launch.cuh)
// until its row's last block of the pass before raises the row's stage. Every
// wait is for lower tickets, which are running or done.
//
// Expected (not yet measured): 5-10 us less than v5.
//
// The public sample() keeps v5 until a GPU has run it.
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_buckets.cuh>

namespace tinyllm::cuda {

namespace detail {

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

// v7's counters of a stream's workspace, allocated and zeroed by its first call.
inline unsigned* chained_counters(split_workspace& w, cudaStream_t stream) {
    if (w.launch.size() == 0) {
        w.launch = device_buffer<unsigned>(2);
        TINYLLM_CUDA_CHECK(cudaMemsetAsync(w.launch.data(), 0, w.launch.bytes(), stream));
    }
    return w.launch.data();
}

}  // namespace detail

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

}  // namespace tinyllm::cuda
