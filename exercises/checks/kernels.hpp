// exercises/checks/kernels.hpp — the launchers of the kernel exercises: what the check
// calls, what exercises/kernels/<nn>_<name>.cu defines beside its kernel (the launch is
// given; the kernel is the exercise). Pointers are device memory.
#pragma once

namespace exercises::kernels {

// out(r, :) = softmax(in(r, :)) for rows r < rows; in, out (rows, cols) row-major.
void row_softmax(float* out, const float* in, int rows, int cols);

// c = a b; a (M, K), b (K, N), c (M, N), all row-major.
void tiled_matmul(float* c, const float* a, const float* b, int M, int N, int K);

}  // namespace exercises::kernels
