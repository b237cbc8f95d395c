// tinyllm/cuda/launch.cuh — starting a kernel, and finding its dynamic shared
// memory: the two places where tinyllm's kernels meet the machine that runs
// them, a GPU or tinyllm's simulated GPU (docs/simulator.md).
//
//     launch(kernel, grid, block, shared_bytes, stream, args...);
//
// is kernel<<<grid, block, shared_bytes, stream>>>(args...). Under nvcc it is
// exactly that launch; in a simulated build (-DTINYLLM_CUDA=SIM, compiled by
// the host compiler, which has no <<< >>>) the simulator runs the grid. Either
// way a configuration the hardware refuses (more than 1024 threads, too much
// shared memory, ...) is reported by the next cudaGetLastError, so
// TINYLLM_CUDA_CHECK_LAUNCH() follows every launch.
//
//     T* buffer = dynamic_shared<T>();
//
// is the kernel's dynamic shared memory (the `shared_bytes` of its launch),
// what `extern __shared__ T buffer[];` gives in CUDA C++. It is 16-byte
// aligned.
//
// TINYLLM_CUDA_ARCH is the compute capability the device code is compiled
// for (800 for sm_80, ...): __CUDA_ARCH__ under nvcc's device pass, 900 (an
// H100) on the simulated GPU, 0 in host code.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#if defined(__CUDA_ARCH__)
#  define TINYLLM_CUDA_ARCH __CUDA_ARCH__
#elif defined(TINYLLM_SIMULATED_GPU)
#  define TINYLLM_CUDA_ARCH 900
#else
#  define TINYLLM_CUDA_ARCH 0
#endif

namespace tinyllm::cuda {

// kernel<<<grid, block, shared_bytes, stream>>>(args...). The arguments are
// converted to the kernel's parameter types, as in a <<< >>> launch.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
    kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

// The running kernel's dynamic shared memory, as T*.
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
#if defined(TINYLLM_SIMULATED_GPU)
    return static_cast<T*>(::tinyllm::sim::detail::dynamic_shared_memory());
#else
    extern __shared__ __align__(16) unsigned char tinyllm_dynamic_shared[];
    return reinterpret_cast<T*>(tinyllm_dynamic_shared);
#endif
}

}  // namespace tinyllm::cuda
