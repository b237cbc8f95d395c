// Reference answer to exercise kernels/03_last_block_sum — a grid-wide sum in one launch.
//
// x (n) -> out (1): the sum of n floats in ONE launch.
//
//     out = x_0 + x_1 + ... + x_{n-1}
//
// The launch is given below: blocks of 128 threads, block b summing the chunk
// x[b * 1024 .. b * 1024 + 1023] (the last chunk may be shorter). A block's sum is a
// reduction you know (kernels/01_warp_softmax: shuffles within each warp, then the four
// warps' sums through __shared__ memory). The question is the grid: blocks cannot wait
// for each other (a grid-wide barrier deadlocks when not every block fits on the GPU at
// once), so the usual answer is a second launch over the blocks' partial sums. Here the
// blocks count instead, and the LAST block to finish adds the partials:
//   1. each block stores its sum in partials[blockIdx.x];
//   2. it makes that store visible to the whole device, then waits for its threads:
//      grid_fence() (launch.cuh: __threadfence()), then __syncthreads();
//   3. one thread adds 1 to *arrivals with atomicAdd, which returns the old value: the
//      block that gets gridDim.x - 1 is the last. That thread fences again (the other
//      blocks' stores are visible to it from there on; the PTX memory model wants this
//      fence in the thread that did the atomic), then tells its threads through a
//      __shared__ flag and another __syncthreads();
//   4. the last block sums partials[0 .. gridDim.x - 1] (read them with __ldcg(p), which
//      reads from L2: this block's L1 may hold a line from before another block wrote
//      it), writes *out, and sets *arrivals back to 0 with atomicExch (a counter other
//      blocks add to is only touched atomically), because the next launch starts from
//      a zeroed counter.
// The check calls grid_sum twice with the same counter: a counter left at gridDim.x makes
// the second call never find its last block, and its out stays NaN. What it cannot catch
// on the simulated GPU: there the blocks run one after another, so each block in turn is
// the last so far, and a wrong test (say, old value == 0 with the reset in every "last"
// block) still ends with the right sum. On a GPU, blocks run at the same time; reason
// about that case. (A missing fence it can catch, in its ThreadSanitizer build:
// docs/simulator.md, racecheck between blocks.)
//
// Hint: every thread must reach every __syncthreads(), so only return after the flag is
// read. (cuda/tinyllm/cuda/launch.cuh's last_block_to_arrive is this step 2-4; norm.cuh's v3
// uses it to normalize in the same launch as the projection, sampling.cuh's v3 to pick a
// token from all blocks' candidates.)
//
// Check: exercises_cuda kernels/03_last_block_sum (compared with the sum in double;
// runs on the simulated GPU in a -DTINYLLM_CUDA=SIM build, no NVIDIA card needed).
#include "kernels.hpp"

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace exercises::kernels {

constexpr int threads = 128, warps = threads / 32;

// The sum of v over the block's 128 threads, in every thread: shuffles within each warp,
// then the four warps' sums through shared memory. Every thread must call it.
__device__ float block_sum(float v, float* warp_sums) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += warp_sums[w];
    __syncthreads();  // everyone has read warp_sums before a next call writes it
    return total;
}

__global__ void grid_sum_kernel(float* out, const float* x, int n, float* partials, unsigned* arrivals) {
    __shared__ float warp_sums[warps];
    __shared__ bool last;
    // 1. This block's chunk.
    const long long begin = static_cast<long long>(blockIdx.x) * grid_sum_chunk;
    const long long end = begin + grid_sum_chunk < n ? begin + grid_sum_chunk : n;
    float s = 0.0f;
    for (long long i = begin + threadIdx.x; i < end; i += threads) s += x[i];
    s = block_sum(s, warp_sums);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
    // 2, 3. Publish, then count this block's arrival.
    tinyllm::cuda::grid_fence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(arrivals, 1u) == gridDim.x - 1;
        if (last) tinyllm::cuda::grid_fence();  // every other block's partial is visible from here ...
    }
    __syncthreads();  // ... to every thread of this block
    if (!last) return;
    // 4. The last block.
    float t = 0.0f;
    for (unsigned b = threadIdx.x; b < gridDim.x; b += threads) t += __ldcg(partials + b);
    t = block_sum(t, warp_sums);
    if (threadIdx.x == 0) {
        *out = t;
        atomicExch(arrivals, 0u);  // for the next launch
    }
}

// Given: 128 threads per block, one block per chunk of grid_sum_chunk elements.
void grid_sum(float* out, const float* x, int n, float* partials, unsigned* arrivals) {
    const int blocks = grid_sum_blocks(n);
    tinyllm::cuda::launch(grid_sum_kernel, dim3(blocks), dim3(threads), 0, nullptr, out, x, n, partials, arrivals);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace exercises::kernels
