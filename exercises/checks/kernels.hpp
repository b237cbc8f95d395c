// exercises/checks/kernels.hpp — the launchers of the kernel exercises: what the check
// calls, what exercises/kernels/<nn>_<name>.cu defines beside its kernel (the launch is
// given; the kernel is the exercise). Pointers are device memory.
#pragma once

namespace exercises::kernels {

// out(r, :) = softmax(in(r, :)) for rows r < rows; in, out (rows, cols) row-major.
void row_softmax(float* out, const float* in, int rows, int cols);

// c = a b; a (M, K), b (K, N), c (M, N), all row-major.
void tiled_matmul(float* c, const float* a, const float* b, int M, int N, int K);

// *out = x_0 + ... + x_{n-1} in one launch of grid_sum_blocks(n) blocks (n >= 1);
// partials holds grid_sum_blocks(n) floats; *arrivals is 0 before the call and after it.
constexpr int grid_sum_chunk = 1024;
constexpr int grid_sum_blocks(int n) { return (n + grid_sum_chunk - 1) / grid_sum_chunk; }
void grid_sum(float* out, const float* x, int n, float* partials, unsigned* arrivals);

}  // namespace exercises::kernels
