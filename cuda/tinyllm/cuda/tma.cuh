// tinyllm/cuda/tma.cuh — Hopper's Tensor Memory Accelerator (TMA), the
// shared-memory barriers it reports to (mbarrier), and the other instructions
// of warp specialization (named barriers, setmaxnreg), as small functions, for
// attention v7 (attention_tma.cuh).
//
// TMA copies a whole tile — a box of a tensor of up to 5 dimensions — from
// global to shared memory in one instruction issued by one thread
// (cp.async.bulk.tensor). What to copy is described once, on the host, by a
// *tensor map* (CUtensorMap, 128 bytes: the tensor's base, sizes and strides,
// the box, and the shared-memory swizzle), passed to the kernel as a
// __grid_constant__ parameter. Elements outside the tensor arrive as zeros.
// With the 128-byte swizzle the tile lands in exactly the layout wgmma's
// descriptors name (tinyllm/detail/wgmma_layout.hpp), so no thread computes
// an address or moves a byte: the copy engine does both.
//
// The copy is asynchronous. It reports to an *mbarrier*, an 8-byte object in
// shared memory that counts two things per phase: arrivals (threads saying
// "done", mbarrier_arrive) and transaction bytes (the copies' bytes, which
// the issuing thread announces with mbarrier_arrive_expect_tx). When both
// reach their expected counts the phase completes and the barrier moves to
// the next one; a waiter names the phase by its parity (0, 1, 0, ...). A ring
// of buffers with a "full" and an "empty" barrier each is how a producer
// (issuing copies) and consumers (computing) hand tiles to each other
// without __syncthreads.
//
//   mbarrier_init(bar, n)                 n arrivals per phase (one thread, then a block barrier)
//   mbarrier_arrive(bar)                  one arrival
//   mbarrier_arrive_expect_tx(bar, bytes) the phase also waits for `bytes`; one arrival
//   mbarrier_wait(bar, parity)            until the phase of that parity has completed
//                                         (with TINYLLM_MBARRIER_TIMEOUT_MS, a GPU
//                                         traps after that long: a hang's bound)
//   tma_load(dst, map, {c0, ..}, bar)     the box at element coordinates c into dst
//   prefetch_tensor_map(map)              fetch the map before the first copy needs it
//   named_barrier_sync(id, n) / _arrive   bar.sync / bar.arrive: n threads complete barrier id
//   setmaxnreg<N, increase>()             a warpgroup's registers per thread become N
//   make_tensor_map(...)                  (host) the map of a strided tensor view
//
// The instructions need sm_90 (setmaxnreg: sm_90a); TINYLLM_TMA is 1 in code
// compiled for sm_90a and on the simulated GPU, which executes them
// (tinyllm/sim/ptx.hpp), and 0 elsewhere, where the mbarrier and TMA
// instructions trap and the hints and fences (setmaxnreg, the tensor map
// prefetch, fence.proxy.async) compile to nothing.
#pragma once

#include <tinyllm/cuda/attention_mma.cuh>  // smem_address
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/wgmma.cuh>

#include <cuda.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>

#if defined(TINYLLM_SIMULATED_GPU) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#  define TINYLLM_TMA 1
#else
#  define TINYLLM_TMA 0
#endif

namespace tinyllm::cuda {
namespace detail {

__device__ __forceinline__ void mbarrier_init(std::uint64_t* bar, unsigned count) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::mbarrier_init(bar, count);
#elif TINYLLM_TMA
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count) : "memory");
#else
    (void)bar, (void)count;
    __trap();
#endif
}

__device__ __forceinline__ void mbarrier_arrive(std::uint64_t* bar) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::mbarrier_arrive(bar);
#elif TINYLLM_TMA
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
#else
    (void)bar;
    __trap();
#endif
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(std::uint64_t* bar, unsigned bytes) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::mbarrier_arrive(bar, bytes);
#elif TINYLLM_TMA
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes) : "memory");
#else
    (void)bar, (void)bytes;
    __trap();
#endif
}

// How long mbarrier_wait waits for one phase before it declares a hang, on a
// GPU: TINYLLM_MBARRIER_TIMEOUT_MS milliseconds (at most 4000: the bound is
// kept in 32 bits), or forever when 0, the default. A phase that never
// completes — an arrival or a copy the code forgot, a parity misread — hangs
// the GPU until the process is killed; with a bound the waiting thread traps
// and the host's next check fails with the launch's error. The test programs
// set 3000 (tests/CMakeLists.txt): thousands of times a phase's normal wait,
// even under compute-sanitizer. The library leaves it off because the bound
// costs a register at every wait, and v7's consumers, with 240 registers in
// use, then spill (ptxas, nvcc 13.0, sm_90a: up to 324 bytes at D = 128, and
// wgmma serialized, C7512). There is no message: a printf is a function
// call, and a call anywhere in a kernel serializes its wgmma too (C7510).
#ifndef TINYLLM_MBARRIER_TIMEOUT_MS
#  define TINYLLM_MBARRIER_TIMEOUT_MS 0
#endif
static_assert(TINYLLM_MBARRIER_TIMEOUT_MS >= 0 && TINYLLM_MBARRIER_TIMEOUT_MS <= 4000,
              "TINYLLM_MBARRIER_TIMEOUT_MS: 0 (no bound) up to 4000 ms");

// Returns once the phase of parity `parity` has completed (try_wait in a loop:
// each try may suspend the thread for a while in hardware). With a bound, the
// clock is read only once the first try has failed, so a wait that succeeds
// at once costs nothing more. (The simulated GPU finds a hang itself: it runs until
// no thread can move and names the missing arrivals and bytes.)
__device__ __forceinline__ void mbarrier_wait(std::uint64_t* bar, unsigned parity) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::mbarrier_wait_parity(bar, parity);
#elif TINYLLM_TMA
    const unsigned address = smem_address(bar);
    auto try_wait = [&] {
        unsigned done;
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(address), "r"(parity)
                     : "memory");
        return done != 0;
    };
    if (try_wait()) return;
#  if TINYLLM_MBARRIER_TIMEOUT_MS > 0
    // The clock's low 32 bits: one register, enough for intervals under 4.29 s.
    auto clock_lo = [] {
        unsigned t;
        asm volatile("mov.u32 %0, %%globaltimer_lo;" : "=r"(t));
        return t;
    };
    const unsigned start = clock_lo();
    while (!try_wait())
        if (clock_lo() - start > static_cast<unsigned>(TINYLLM_MBARRIER_TIMEOUT_MS) * 1000000u) __trap();
#  else
    while (!try_wait()) {
    }
#  endif
#else
    (void)bar, (void)parity;
    __trap();
#endif
}

// The box of `map` at element coordinates c (innermost first) into shared
// memory at dst (1024-byte aligned for the 128-byte swizzle); its bytes
// complete on `bar`.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, const std::int32_t (&c)[4], std::uint64_t* bar) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::tma_load<4>(dst, map, c, bar);
#elif TINYLLM_TMA
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(
            smem_address(dst)),
        "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(smem_address(bar))
        : "memory");
#else
    (void)dst, (void)map, (void)c, (void)bar;
    __trap();
#endif
}

// Asks for the tensor map's 128 bytes ahead of the first copy that reads them
// (prefetch.tensormap); a hint, nothing on the simulated GPU.
__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
#if !defined(TINYLLM_SIMULATED_GPU) && TINYLLM_TMA
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(map)) : "memory");
#else
    (void)map;
#endif
}

// Named barriers: barrier `id` (1 .. 15; 0 is __syncthreads's) completes when
// `count` threads (a multiple of 32) have arrived; named_barrier_sync waits for
// that, named_barrier_arrive counts itself and goes on. Two warpgroups take turns
// with a pair of them: each waits at its own and arrives at the other's.
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::bar_sync(id, count);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
#if defined(TINYLLM_SIMULATED_GPU)
    ::tinyllm::sim::ptx::bar_arrive(id, count);
#else
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// setmaxnreg: the warpgroup's registers per thread become N, every thread of the
// warpgroup executing it. A producer warpgroup gives registers back (N below the
// launch's) so that the consumers can take them (N above).
template <int N, bool Increase>
__device__ __forceinline__ void setmaxnreg() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: a multiple of 8 in 24 .. 256");
#if !defined(TINYLLM_SIMULATED_GPU) && TINYLLM_TMA
    if constexpr (Increase) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
    else asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// How the coordinates of a 4-d view (outermost first: a0, a1, a2, innermost
// a3 with stride 1) map onto a tensor map's dimensions: dims[0] is a3; the
// other three are ordered by stride, smallest first (the order the driver's
// stride rules describe). position[i] is the map dimension of view axis i.
struct tensor_map_order {
    int position[3];
};

// The coordinates (innermost first) of the box at innermost element `inner`
// and view coordinates (a0, a1, a2).
__device__ __forceinline__ void tensor_map_coords(std::int32_t (&c)[4], const tensor_map_order& o, int inner, int a0, int a1,
                                                  int a2) {
    c[0] = inner;
#pragma unroll
    for (int i = 1; i < 4; ++i) c[i] = o.position[0] == i ? a0 : (o.position[1] == i ? a1 : a2);
}

#if !defined(TINYLLM_SIMULATED_GPU)
using tensor_map_encode_fn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                          const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                          CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
// The driver's cuTensorMapEncodeTiled, found through the runtime (no -lcuda).
template <class = void>
tensor_map_encode_fn tensor_map_encoder() {
    static tensor_map_encode_fn fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult found{};
        TINYLLM_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
        TINYLLM_EXPECT(found == cudaDriverEntryPointSuccess && p != nullptr,
                       "the CUDA driver has no cuTensorMapEncodeTiled (TMA needs a driver of CUDA 12.0 or newer)");
        return reinterpret_cast<tensor_map_encode_fn>(p);
    }();
    return fn;
}
#endif

}  // namespace detail

// The tensor map of a 4-d view of 16-bit elements at `base` with element
// strides `strides` (outermost first, the last 1) and extents `extents`, copied
// in boxes of `box` elements (same order), with the 128-byte swizzle: box[3]
// must be 64 (one 128-byte row). `what` names the tensor in errors.
template <class = void>
CUtensorMap make_tensor_map(const void* base, std::array<index_t, 4> extents, std::array<index_t, 4> strides,
                            std::array<int, 4> box, CUtensorMapDataType type, detail::tensor_map_order* order,
                            const std::string& what) {
    TINYLLM_EXPECT(strides[3] == 1, what, ": TMA copies need the innermost dimension contiguous (stride 1), got ", strides[3]);
    // A dimension of extent 1 has no stride that matters: put it last, with a nested one.
    int axes[3] = {0, 1, 2};
    std::sort(axes, axes + 3, [&](int x, int y) {
        const bool x1 = extents[static_cast<std::size_t>(x)] == 1, y1 = extents[static_cast<std::size_t>(y)] == 1;
        if (x1 != y1) return y1;
        return strides[static_cast<std::size_t>(x)] < strides[static_cast<std::size_t>(y)];
    });
    cuuint64_t dims[4], bytes[3];
    cuuint32_t boxes[4], unit[4] = {1, 1, 1, 1};
    dims[0] = static_cast<cuuint64_t>(extents[3]);
    boxes[0] = static_cast<cuuint32_t>(box[3]);
    std::uint64_t nested = static_cast<std::uint64_t>(extents[3]) * 2;
    for (int i = 0; i < 3; ++i) {
        const auto a = static_cast<std::size_t>(axes[i]);
        order->position[axes[i]] = i + 1;
        dims[i + 1] = static_cast<cuuint64_t>(extents[a]);
        boxes[i + 1] = static_cast<cuuint32_t>(box[a]);
        TINYLLM_EXPECT(extents[a] == 1 || strides[a] > 0, what, ": TMA copies need positive strides, got ", strides[a],
                       " for a dimension of extent ", extents[a]);
        std::uint64_t s = extents[a] == 1 ? (nested + 15) / 16 * 16 : static_cast<std::uint64_t>(strides[a]) * 2;
        TINYLLM_EXPECT(s % 16 == 0, what, ": TMA copies need strides that are multiples of 16 bytes, got ", s, " bytes");
        bytes[i] = s;
        nested = s * static_cast<std::uint64_t>(extents[a]);
    }
    CUtensorMap map{};
#if defined(TINYLLM_SIMULATED_GPU)
    const CUresult r = cuTensorMapEncodeTiled(
#else
    const CUresult r = detail::tensor_map_encoder()(
#endif
        &map, type, 4, const_cast<void*>(base), dims, bytes, boxes, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    TINYLLM_EXPECT(r == CUDA_SUCCESS, what, ": cuTensorMapEncodeTiled refused the map (CUresult ", static_cast<int>(r),
                   "): sizes (", dims[3], ", ", dims[2], ", ", dims[1], ", ", dims[0], "), byte strides (", bytes[2], ", ",
                   bytes[1], ", ", bytes[0], ")");
    return map;
}

}  // namespace tinyllm::cuda
