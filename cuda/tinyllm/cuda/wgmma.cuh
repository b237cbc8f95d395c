// tinyllm/cuda/wgmma.cuh — Hopper's warpgroup matrix instructions (PTX
// wgmma.*, sm_90a) as small device functions, for attention v6
// (attention_wgmma.cuh). What the instructions do, their descriptors and their
// layouts: tinyllm/detail/wgmma_layout.hpp.
//
//   wgmma_fence()             wgmma.fence: registers written before it (the
//                             accumulators, A fragments) are seen by the next
//                             wgmma; needed before the first of a batch.
//   wgmma_m64k16<N, T>(...)   wgmma.mma_async m64nNk16, float accumulators:
//                             d = A B (+ d if scale_d). A from shared memory
//                             (a descriptor) or from registers (4 per thread,
//                             mma.sync's A layout); B from shared memory,
//                             K-major or, with TransB, N-major.
//   wgmma_commit()            closes the issued products into a group.
//   wgmma_wait<N>()           waits until at most N groups are pending, then
//                             pins the accumulators (wgmma_fence_operands) so
//                             the compiler cannot move their reads earlier.
//   fence_proxy_async()       shared memory written by threads (cp.async,
//                             stores) is seen by the tensor cores' reads.
//
// The instructions exist only in code compiled for sm_90a (nvcc
// -gencode=arch=compute_90a,code=sm_90a, CMAKE_CUDA_ARCHITECTURES=90a):
// TINYLLM_WGMMA is 1 there and on the simulated GPU, which executes them
// (tinyllm/sim/ptx.hpp), and 0 everywhere else, where the wgmma instructions
// trap and the operand fence compiles to nothing.
// wgmma_compiled() asks the running GPU whether the kernels it runs have them.
#pragma once

#include <tinyllm/cuda/attention_mma.cuh>  // smem_address
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/detail/wgmma_layout.hpp>

#include <atomic>
#include <cstdint>
#include <type_traits>

#if defined(TINYLLM_SIMULATED_GPU) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#  define TINYLLM_WGMMA 1
#else
#  define TINYLLM_WGMMA 0
#endif

namespace tinyllm::cuda {
namespace detail {

// The shared-memory address a matrix descriptor holds.
__device__ __forceinline__ std::uint32_t wgmma_smem_address(const void* p) {
#if defined(TINYLLM_SIMULATED_GPU)
    return ::tinyllm::sim::ptx::shared_address(p);
#else
    return smem_address(p);
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::wgmma_fence();
#elif TINYLLM_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::wgmma_commit_group();
#elif TINYLLM_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}

// An empty asm that "reads and writes" each accumulator: the compiler may not
// move an access of them across it, nor across the wgmma asm statements.
template <int R>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[R]) {
#if !defined(TINYLLM_SIMULATED_GPU)
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
    (void)d;
#endif
}

template <int N, int R>
__device__ __forceinline__ void wgmma_wait(float (&d)[R]) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::wgmma_wait_group<N>();
#elif TINYLLM_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
    __trap();
#endif
    wgmma_fence_operands(d);
}

// x, through an instruction the compiler cannot see into: a value computed
// before a loop and passed through this inside it is not kept in a register
// across the loop's body (nor is what is derived from it).
__device__ __forceinline__ std::uint64_t opaque(std::uint64_t x) {
#if !defined(TINYLLM_SIMULATED_GPU)
    asm volatile("mov.b64 %0, %0;\n" : "+l"(x));
#endif
    return x;
}

__device__ __forceinline__ void fence_proxy_async() {
#if !defined(TINYLLM_SIMULATED_GPU) && TINYLLM_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

#define TINYLLM_WGMMA_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define TINYLLM_WGMMA_D32 TINYLLM_WGMMA_D8(0), TINYLLM_WGMMA_D8(8), TINYLLM_WGMMA_D8(16), TINYLLM_WGMMA_D8(24)
#define TINYLLM_WGMMA_D64 TINYLLM_WGMMA_D32, TINYLLM_WGMMA_D8(32), TINYLLM_WGMMA_D8(40), TINYLLM_WGMMA_D8(48), TINYLLM_WGMMA_D8(56)
#define TINYLLM_WGMMA_L32                                                                                          \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31}"
#define TINYLLM_WGMMA_L64                                                                                          \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "  \
    "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (N/2 floats a thread) = A B + (scale_d ? d : 0) for a 64 x N x 16 product of
// the warpgroup. a == nullptr: A (64 x 16, K-major) from a_desc; otherwise the
// thread's 4 A registers. TransB: B is N-major in shared memory (B[k][n] with n
// contiguous), otherwise K-major. Used shapes: A from shared memory with N = 128
// and K-major B; A from registers with N = 64 or 128 and N-major B.
template <int N, class T, bool TransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[N / 2], const std::uint32_t* a, std::uint64_t a_desc,
                                             std::uint64_t b_desc, bool scale_d) {
    static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>, "wgmma: bf16 or f16 inputs");
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::wgmma_m64k16<N>(d, a, a_desc, b_desc, scale_d, TransB, !std::is_same_v<T, bfloat16>);
#elif TINYLLM_WGMMA
    const int sd = scale_d ? 1 : 0;
    // One asm statement per shape and operand source; TY is the PTX type of A and B.
    // The predicate p is scale-d; "1, 1" are imm-scale-a/b (no negation); the last
    // immediates are imm-trans-a, imm-trans-b (A from registers has no trans-a).
#define TINYLLM_WGMMA_SS128(TY)                                                                      \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                       \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " TINYLLM_WGMMA_L64      \
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"                                                  \
                 : TINYLLM_WGMMA_D64                                                                 \
                 : "l"(a_desc), "l"(b_desc), "r"(sd))
#define TINYLLM_WGMMA_RS128(TY)                                                                      \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                       \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " TINYLLM_WGMMA_L64      \
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                     \
                 : TINYLLM_WGMMA_D64                                                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(sd))
#define TINYLLM_WGMMA_RS64(TY)                                                                       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                       \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " TINYLLM_WGMMA_L32       \
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                     \
                 : TINYLLM_WGMMA_D32                                                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(sd))
    constexpr bool bf = std::is_same_v<T, bfloat16>;
    if constexpr (N == 128 && !TransB) {  // A from shared memory (a == nullptr by contract)
        (void)a;
        if constexpr (bf) TINYLLM_WGMMA_SS128("bf16");
        else TINYLLM_WGMMA_SS128("f16");
    } else if constexpr (N == 128 && TransB) {
        (void)a_desc;
        if constexpr (bf) TINYLLM_WGMMA_RS128("bf16");
        else TINYLLM_WGMMA_RS128("f16");
    } else if constexpr (N == 64 && TransB) {
        (void)a_desc;
        if constexpr (bf) TINYLLM_WGMMA_RS64("bf16");
        else TINYLLM_WGMMA_RS64("f16");
    } else {
        static_assert(N == 0, "wgmma_m64k16: this shape/operand combination has no instruction written out here");
    }
#undef TINYLLM_WGMMA_SS128
#undef TINYLLM_WGMMA_RS128
#undef TINYLLM_WGMMA_RS64
#else
    (void)d, (void)a, (void)a_desc, (void)b_desc, (void)scale_d;
    __trap();
#endif
}

#undef TINYLLM_WGMMA_D8
#undef TINYLLM_WGMMA_D32
#undef TINYLLM_WGMMA_D64
#undef TINYLLM_WGMMA_L32
#undef TINYLLM_WGMMA_L64

template <class = void>
__global__ void wgmma_probe_kernel(int* out) {
    *out = TINYLLM_WGMMA;
}

}  // namespace detail

// Whether the kernels the current GPU runs were compiled with the wgmma
// instructions (a build for sm_90a on an sm_90 GPU, or the simulated GPU).
// Asked once per device (a one-thread launch and a copy back), then remembered:
// call it once before capturing attention_wgmma into a CUDA graph, since the
// first call's copy would end the capture.
template <class = void>
bool wgmma_compiled() {
    static std::atomic<int> known[64];  // 0: not asked, 1: yes, 2: no (asking twice is harmless)
    int device = 0;
    TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
    if (device >= 0 && device < 64) {
        if (const int k = known[device].load(); k != 0) return k == 1;
    }
    int major = 0, minor = 0;
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    bool yes = false;
    if (major == 9 && minor == 0) {
        device_buffer<int> flag(1);
        launch(detail::wgmma_probe_kernel<>, 1, 1, 0, nullptr, flag.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
        int host = 0;
        TINYLLM_CUDA_CHECK(cudaMemcpy(&host, flag.data(), sizeof host, cudaMemcpyDeviceToHost));
        yes = host == 1;
    }
    if (device >= 0 && device < 64) known[device].store(yes ? 1 : 2);
    return yes;
}

}  // namespace tinyllm::cuda
