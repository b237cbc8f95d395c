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
//     if (last_block_to_arrive(&counter, gridDim.x)) { ... }
//
// lets the blocks of one launch hand their work to whichever block finishes
// last (see below): a reduction over the whole grid without a second launch.
//
// TINYLLM_CUDA_ARCH is the compute capability the device code is compiled
// for (800 for sm_80, ...): __CUDA_ARCH__ under nvcc's device pass, 900 (an
// H100) on the simulated GPU, 0 in host code.
//
// What including a header costs. A kernel defined in a header is a template
// (kernel<T>), so that every program may define it. nvcc compiles device code
// for each kernel<T> that the translation unit names, whether or not anything
// runs it: a launcher that is an ordinary inline function, say
//
//     inline void greedy(...) { launch(detail::greedy_kernel<512, float>, ...); }
//
// puts greedy_kernel into every program that includes the header, called or
// not. C++ instantiates what a template names only when the template itself
// is instantiated, so such launchers are templates of one unused parameter,
//
//     template <class = void>  // compiled only where called (launch.cuh)
//     inline void greedy(...) { ... }
//
// called exactly as before (greedy(out, logits)): their parameters are not
// deduced, so arguments convert to them as to any function's (a pointer to
// one is &greedy<>). The tests compile every CUDA header, and nothing else,
// to PTX and find no tinyllm kernel there
// (tests/cuda/no_kernels_until_called.cmake). Before this rule the umbrella
// header alone held 41, and a program that included it spent about 6 s more
// in cicc and ptxas.
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

// ---- the last block to arrive ----------------------------------------------
//
// Blocks of a launch never wait for each other (a grid-wide barrier deadlocks
// when the grid does not fit on the GPU at once), but they can count: each
// block, once its results are stored, adds one to a counter in global memory,
// and the block that draws blocks - 1 knows that every other block is done.
// That block then finishes the job (a norm over outputs all blocks wrote, a
// choice among all blocks' candidates) in the same launch. The pattern of
// CUDA's threadFenceReduction sample:
//   * before counting, __threadfence() makes the block's stores visible to the
//     whole device, and __syncthreads() waits for every thread of the block;
//   * after winning, the last block fences again, and reads what others wrote
//     from L2 (__ldcg, or atomics): its own L1 may hold a line it read before
//     another block wrote it;
//   * the counter must be zero at launch; the last block sets it back to zero
//     for the next launch (the caller's business, after it is done with it).

// __threadfence(), except in the simulator under ThreadSanitizer: there the
// fence (a C++ seq_cst fence) draws GCC's -Wtsan warning, an error in CI, and
// it orders nothing anyway (the simulator runs blocks one after another).
__device__ __forceinline__ void grid_fence() {
#if defined(TINYLLM_SIMULATED_GPU) && defined(__SANITIZE_THREAD__)
#else
    __threadfence();
#endif
}

// Called once by every thread of every block of a launch that shares `done`
// (a zeroed counter in global memory) among `blocks` blocks, after the
// thread's stores: true in every thread of the last block to arrive.
__device__ __forceinline__ bool last_block_to_arrive(unsigned* done, unsigned blocks) {
    __shared__ int s_last;
    grid_fence();     // this thread's stores are visible device-wide ...
    __syncthreads();  // ... for every thread of the block, before the arrival is counted
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) s_last = atomicAdd(done, 1u) == blocks - 1;
    __syncthreads();
    const bool last = s_last != 0;
    if (last) grid_fence();
    return last;
}

}  // namespace tinyllm::cuda
