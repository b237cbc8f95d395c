// Exercise kernels/02_tiled_matmul — matrix multiplication through shared memory.
//
// c(i, j) = sum_k a(i, k) b(k, j),   a (M, K), b (K, N), c (M, N), all row-major.
//
// The launch is given below: blocks of 16 x 16 threads, thread (threadIdx.x, threadIdx.y)
// of block (blockIdx.x, blockIdx.y) computing c(row, col) with
//     row = blockIdx.y * 16 + threadIdx.y,   col = blockIdx.x * 16 + threadIdx.x.
//
// A naive kernel reads a whole row of a and column of b from global memory per thread:
// 2K loads per output. Tiling shares them: the block walks k in steps of 16, and at
// each step
//   1. every thread loads ONE element of a's 16 x 16 tile (rows of the block, columns
//      k0 .. k0+15) and ONE of b's (rows k0 .. k0+15, columns of the block) into
//      __shared__ float arrays — elements outside the matrices load as 0;
//   2. __syncthreads(): the tiles are complete before anyone reads them;
//   3. every thread adds its 16 products from the shared tiles;
//   4. __syncthreads() again: nobody overwrites a tile another thread is still reading.
// Each element of a and b is now read from global memory M/16 or N/16 times, not M or N.
// M, N and K need not be multiples of 16; threads outside c load zeros, take part in
// every barrier (a __syncthreads that some threads skip never completes) and write
// nothing.
//
// Hint: declare the tiles inside the kernel: __shared__ float a_tile[tile][tile];
// (cuda/tinyllm/cuda/attention_tiled.cuh tiles attention the same way.)
//
// Check: exercises_cuda kernels/02_tiled_matmul (compared with tinyllm::cpu::matmul; runs
// on the simulated GPU in a -DTINYLLM_CUDA=SIM build, which also reports a missing or
// divergent __syncthreads).
#include "kernels.hpp"

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace exercises::kernels {

constexpr int tile = 16;

__global__ void tiled_matmul_kernel(float* c, const float* a, const float* b, int M, int N, int K) {
    // TODO: load tiles of a and b into shared memory, synchronize, accumulate, synchronize.
    (void)c, (void)a, (void)b, (void)M, (void)N, (void)K;
}

// Given: 16 x 16 threads per block, one per element of c.
void tiled_matmul(float* c, const float* a, const float* b, int M, int N, int K) {
    const dim3 block(tile, tile), grid((N + tile - 1) / tile, (M + tile - 1) / tile);
    tinyllm::cuda::launch(tiled_matmul_kernel, grid, block, 0, nullptr, c, a, b, M, N, K);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace exercises::kernels
