// tinyllm/cuda/copy.cuh — copying memory, the first rung of every ladder.
//
// A copy does no arithmetic: its speed is the memory system's. Every
// memory-bound kernel in tinyllm (norms, RoPE, embeddings, sampling) is judged
// against it — "85% of copy bandwidth" means the kernel moves its bytes almost
// as fast as a plain copy moves the same number of bytes.
//
//   v1 naive       one thread per float, one 4-byte load and store each. Simple and
//                  already coalesced (neighbouring threads touch neighbouring
//                  words), but every thread does little, many blocks are launched,
//                  and each memory instruction moves only 4 bytes.
//   v2 vectorized  each thread moves 16 bytes per instruction (float4 loads and
//                  stores) in a grid-stride loop over a grid sized to the GPU: four
//                  times fewer memory instructions and no launch of millions of
//                  tiny blocks. This is the reference "copy bandwidth".
//
// cudaMemcpyAsync(device to device) is the library baseline the two are benchmarked against.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>

namespace tinyllm::cuda {
namespace detail {

// (Kernels in headers are templates so that several .cu files may include them.)
template <class T>
__global__ void copy_naive_kernel(T* out, const T* in, index_t n) {
    const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (i < n) out[i] = in[i];
}

template <class T>
__global__ void copy_vectorized_kernel(T* out, const T* in, index_t n) {
    static_assert(sizeof(T) == 4, "copy_vectorized_kernel moves 4-byte elements four at a time");
    const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
    const index_t first = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    // The launcher guarantees 16-byte alignment of both pointers.
    const index_t vectors = n / 4;
    const float4* in4 = reinterpret_cast<const float4*>(in);
    float4* out4 = reinterpret_cast<float4*>(out);
    for (index_t v = first; v < vectors; v += stride) out4[v] = in4[v];
    // The last n % 4 floats, one each.
    for (index_t i = 4 * vectors + first; i < n; i += stride) out[i] = in[i];
}

inline void expect_same_size(tensor_view<float, 1> out, tensor_view<const float, 1> in, const char* op) {
    TINYLLM_EXPECT(out.size() == in.size(), op, ": out has ", out.size(), " elements but in has ", in.size());
    TINYLLM_EXPECT(out.is_contiguous() && in.is_contiguous(), op, " copies contiguous tensors");
    // The threads copy in any order: a partial overlap would read elements already overwritten.
    TINYLLM_EXPECT(out.data() == in.data() || !::tinyllm::detail::overlaps(out, in), op,
                   ": out and in overlap without being the same memory (use a buffer in between)");
}

}  // namespace detail

// v1: out[i] = in[i], one thread per element.
template <class = void>  // compiled only where called (launch.cuh)
inline void copy_naive(tensor_view<float, 1> out, tensor_view<const float, 1> in, cudaStream_t stream = nullptr) {
    detail::expect_same_size(out, in, "copy_naive");
    if (in.size() == 0) return;
    const int threads = 256;
    launch(detail::copy_naive_kernel<float>, static_cast<unsigned>(ceil_div<index_t>(in.size(), threads)), threads, 0,
           stream, out.data(), in.data(), in.size());
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// v2: out[i] = in[i], 16 bytes per thread per step, grid-stride.
template <class = void>  // compiled only where called (launch.cuh)
inline void copy_vectorized(tensor_view<float, 1> out, tensor_view<const float, 1> in, cudaStream_t stream = nullptr) {
    detail::expect_same_size(out, in, "copy_vectorized");
    TINYLLM_EXPECT(reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0 &&
                       reinterpret_cast<std::uintptr_t>(in.data()) % 16 == 0,
                   "copy_vectorized needs 16-byte aligned pointers (cudaMalloc gives 256-byte alignment)");
    if (in.size() == 0) return;
    const int sms = current_multiprocessors();
    const int threads = 256;
    const index_t wanted = ceil_div<index_t>(ceil_div<index_t>(in.size(), 4), threads);
    const int blocks = static_cast<int>(wanted < 8 * sms ? wanted : 8 * sms);  // a few waves fill the GPU
    launch(detail::copy_vectorized_kernel<float>, blocks, threads, 0, stream, out.data(), in.data(), in.size());
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
