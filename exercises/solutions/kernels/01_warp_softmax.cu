// Reference answer to exercise kernels/01_warp_softmax — a row softmax with one warp per row.
//
// softmax(x)_j = exp(x_j - m) / sum_j' exp(x_j' - m),   m = max_j x_j
//
// (subtracting m changes nothing mathematically and keeps exp from overflowing: the
// check feeds rows with values up to 100, and expf(100) is infinity in float).
//
// The launch is given below: one block of 32 threads — one warp — per row, for rows of
// any length `cols` (fewer or more than 32). Lane `threadIdx.x` handles the elements
// j = lane, lane + 32, lane + 64, ... of row blockIdx.x. The warp then needs two
// reductions over its 32 lanes, the row's maximum and the sum of the exponentials, and
// a warp can reduce without shared memory: __shfl_xor_sync(0xffffffff, v, offset)
// returns v of lane (lane ^ offset), so
//
//     for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, offset));
//
// leaves the maximum of all 32 lanes' v in every lane (a "butterfly"). The same with +
// gives the sum. Then each lane writes its elements of out.
//
// Hint: start the maximum at -INFINITY so that lanes with no element do not matter,
// and every lane must take part in every shuffle (no early return before them).
// (cuda/tinyllm/cuda/norm.cuh reduces rows the same way.)
//
// Check: exercises_cuda kernels/01_warp_softmax (compared with tinyllm::cpu::softmax_row;
// runs on the simulated GPU in a -DTINYLLM_CUDA=SIM build, no NVIDIA card needed).
#include "kernels.hpp"

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace exercises::kernels {

__global__ void row_softmax_kernel(float* out, const float* in, int rows, int cols) {
    const int row = blockIdx.x, lane = threadIdx.x;
    if (row >= rows) return;  // the whole warp: every lane of a block has the same row
    const float* x = in + static_cast<long long>(row) * cols;
    float* y = out + static_cast<long long>(row) * cols;
    float m = -INFINITY;
    for (int j = lane; j < cols; j += 32) m = fmaxf(m, x[j]);
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    float sum = 0.0f;
    for (int j = lane; j < cols; j += 32) sum += expf(x[j] - m);
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    for (int j = lane; j < cols; j += 32) y[j] = expf(x[j] - m) / sum;
}

// Given: one warp per row.
void row_softmax(float* out, const float* in, int rows, int cols) {
    tinyllm::cuda::launch(row_softmax_kernel, dim3(rows), dim3(32), 0, nullptr, out, in, rows, cols);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace exercises::kernels
