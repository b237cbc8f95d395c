// tinyllm/cuda/random.cuh — fill device tensors with Philox random numbers,
// bit-identical to tinyllm::cpu::fill_uniform and tinyllm::cpu::fill_normal.
//
// Each thread computes its elements from (seed, index) alone — the point of a
// counter-based generator — so there is no state to share and no order to
// respect. One Philox call yields four words; a thread therefore produces four
// consecutive elements and writes them with one 16-byte store when the
// destination is aligned (grid-stride loop over groups of four). fill_normal
// turns the four words into four normals with tinyllm::normal_block, the same
// host/device function the CPU loop calls (Box–Muller from correctly rounded
// operations only; see <tinyllm/random.hpp>).
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/math.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

// Kernels defined in headers are templates, so that several .cu files can
// include the header without defining the kernel twice.
template <class T>
__global__ void fill_uniform_kernel(T* out, index_t n, std::uint64_t seed, float lo, float hi) {
    const index_t groups = ceil_div<index_t>(n, 4);
    for (index_t g = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; g < groups;
         g += static_cast<index_t>(gridDim.x) * blockDim.x) {
        // The four words of Philox block g are elements 4g .. 4g+3.
        const std::uint64_t block = static_cast<std::uint64_t>(g);
        const philox_counter words = philox4x32_10(
            {{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32), 0u, 0u}},
            {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
        float v[4];
        for (int j = 0; j < 4; ++j) v[j] = tinyllm::fma(hi - lo, uniform_float(words.v[j]), lo);
        const index_t i = 4 * g;
        if (std::is_same_v<T, float> && i + 3 < n && (reinterpret_cast<std::uintptr_t>(out + i) % 16) == 0) {
            *reinterpret_cast<float4*>(out + i) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
            for (int j = 0; j < 4 && i + j < n; ++j) out[i + j] = v[j];
        }
    }
}

template <class T>
__global__ void fill_normal_kernel(T* out, index_t n, std::uint64_t seed, float mean, float stddev) {
    const index_t groups = ceil_div<index_t>(n, 4);
    for (index_t g = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; g < groups;
         g += static_cast<index_t>(gridDim.x) * blockDim.x) {
        float v[4];
        normal_block(v, seed, static_cast<std::uint64_t>(g), mean, stddev);  // elements 4g .. 4g+3
        const index_t i = 4 * g;
        if (std::is_same_v<T, float> && i + 3 < n && (reinterpret_cast<std::uintptr_t>(out + i) % 16) == 0) {
            *reinterpret_cast<float4*>(out + i) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
            for (int j = 0; j < 4 && i + j < n; ++j) out[i + j] = v[j];
        }
    }
}

// Blocks for a grid-stride loop over `groups` items: enough to fill the GPU, at most 4096.
inline int fill_blocks(index_t groups, int threads) {
    const index_t blocks = ceil_div<index_t>(groups, threads);
    return static_cast<int>(blocks < 4096 ? blocks : 4096);
}

}  // namespace detail

// out[i] = uniform in [lo, hi), the same bits as cpu::fill_uniform(out, seed, lo, hi).
template <std::size_t Rank>
void fill_uniform(tensor_view<float, Rank> out, std::uint64_t seed, float lo = 0.0f, float hi = 1.0f,
                  cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(out.is_contiguous(), "fill_uniform writes a contiguous tensor; got strides ",
                   to_string(out.strides()), " for shape ", to_string(out.shape()));
    tinyllm::detail::expect_uniform_range(lo, hi, "fill_uniform");
    if (out.size() == 0) return;
    const int threads = 256;
    const index_t groups = ceil_div<index_t>(out.size(), 4);
    // Enough blocks to fill the GPU; the grid-stride loop covers any remainder.
    const int blocks = static_cast<int>(ceil_div<index_t>(groups, threads) < 4096 ? ceil_div<index_t>(groups, threads) : 4096);
    launch(detail::fill_uniform_kernel<float>, blocks, threads, 0, stream, out.data(), out.size(), seed, lo, hi);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// out[i] = normal(mean, stddev), the same bits as cpu::fill_normal(out, seed, mean, stddev).
template <std::size_t Rank>
void fill_normal(tensor_view<float, Rank> out, std::uint64_t seed, float mean = 0.0f, float stddev = 1.0f,
                 cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(out.is_contiguous(), "fill_normal writes a contiguous tensor; got strides ",
                   to_string(out.strides()), " for shape ", to_string(out.shape()));
    tinyllm::detail::expect_normal_params(mean, stddev, "fill_normal");
    if (out.size() == 0) return;
    const int threads = 256;
    const int blocks = detail::fill_blocks(ceil_div<index_t>(out.size(), 4), threads);
    launch(detail::fill_normal_kernel<float>, blocks, threads, 0, stream, out.data(), out.size(), seed, mean, stddev);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
