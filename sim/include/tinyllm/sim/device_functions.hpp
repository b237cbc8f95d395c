// tinyllm/sim/device_functions.hpp — what CUDA's device code takes for
// granted, written for the simulator: the declaration keywords, the built-in
// coordinates, barriers, warp-wide operations, atomics and the intrinsic math
// functions. (Stands in for the built-ins of nvcc and for
// sm_*_intrinsics.h, device_atomic_functions.h, math_functions.h.)
//
// Keywords. __global__, __device__ and __host__ mark where code runs; here all
// code runs on the host, so they vanish (but for the contraction mode below). __shared__ makes a variable `static`:
// the simulator runs one block at a time, so one copy per kernel is one copy
// per running block, exactly the lifetime of shared memory. (Dynamic shared
// memory — `extern __shared__ T buf[]` on a GPU — is reached through
// tinyllm::cuda::dynamic_shared<T>(), see <tinyllm/cuda/launch.cuh>.)
//
// Warp-wide operations (__shfl_*_sync, __ballot_sync, __syncwarp, ...) wait
// until every lane their mask names has arrived, as on Volta and later GPUs
// with independent thread scheduling, and then exchange values. They order no
// memory accesses — only __syncwarp and __syncthreads do — which is what lets
// the race check find a shared-memory write and read separated only by shuffles.
#pragma once

#include <tinyllm/math.hpp>
#include <tinyllm/sim/executor.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <source_location>
#include <type_traits>

// Floating-point contraction. nvcc fuses `a * b + c` into one fma in device
// code by default; the host compiler of a GPU machine, for baseline x86-64,
// does not. A simulated build configured with TINYLLM_SIM_FMA (the default
// where the CPU has fma instructions; sim/CMakeLists.txt) compiles everything
// with -mfma -ffp-contract=off and marks __global__ and __device__ functions
// to contract, so kernels (with whatever they inline: lambdas, shared
// TINYLLM_HOST_DEVICE math, which config.hpp then always inlines) fuse as nvcc
// does while the CPU references round every operation, as the host of a GPU
// machine does. A kernel whose result depends on a fusion then differs from its
// reference here as on a GPU. Device code is also unswitched (a loop-invariant
// branch hoisted out of its loop, as nvcc does): g++ does not fuse a product
// into an add across a branch (`g = w ? d * w : d; ... g - mean`), and nvcc did.
// And g++ forms fmas only with -fexpensive-optimizations, which -O1 (the
// sanitizer builds) leaves off: device code turns it on.
#if defined(TINYLLM_SIM_CONTRACT) && TINYLLM_SIM_CONTRACT && defined(__GNUC__) && !defined(__clang__)
#  define TINYLLM_SIM_DEVICE_CODE __attribute__((optimize("fp-contract=fast", "unswitch-loops", "expensive-optimizations")))
#else
#  define TINYLLM_SIM_DEVICE_CODE
#endif
#define __global__ TINYLLM_SIM_DEVICE_CODE
#define __device__ TINYLLM_SIM_DEVICE_CODE
#define __host__
#define __shared__ static
#define __constant__ static
#define __managed__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__

#define threadIdx (::tinyllm::sim::detail::current->thread_idx)
#define blockIdx (::tinyllm::sim::detail::current->block_idx)
#define blockDim (::tinyllm::sim::detail::current->block_dim)
#define gridDim (::tinyllm::sim::detail::current->grid_dim)
inline constexpr int warpSize = 32;

// ---- barriers ----------------------------------------------------------------
inline void __syncthreads(std::source_location where = std::source_location::current()) {
    (void)::tinyllm::sim::detail::block_barrier(::tinyllm::sim::detail::barrier_op::sync, 0, where);
}
inline int __syncthreads_count(int predicate, std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::block_barrier(::tinyllm::sim::detail::barrier_op::count, predicate, where);
}
inline int __syncthreads_or(int predicate, std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::block_barrier(::tinyllm::sim::detail::barrier_op::any, predicate, where);
}
inline int __syncthreads_and(int predicate, std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::block_barrier(::tinyllm::sim::detail::barrier_op::all, predicate, where);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location where = std::source_location::current()) {
    ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::syncwarp, mask, nullptr, nullptr, 0, 32, where);
}
inline unsigned __activemask() { return ::tinyllm::sim::detail::active_mask(); }
// Fences. Blocks run one after another here, so a fence has nothing to wait
// for; under ThreadSanitizer (the racecheck preset) __threadfence() instead
// tells it what the fence orders between blocks (executor.hpp, device_fence),
// since ThreadSanitizer does not model a C++ fence (GCC's -Wtsan warns of it).
#if defined(__SANITIZE_THREAD__)
inline void __threadfence() { ::tinyllm::sim::detail::device_fence(); }
inline void __threadfence_block() {}  // within a block: barriers order the threads here
inline void __threadfence_system() { ::tinyllm::sim::detail::device_fence(); }
#else
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#endif
[[noreturn]] inline void __trap(std::source_location where = std::source_location::current()) {
    ::tinyllm::sim::detail::trap(where);
}
inline void __nanosleep(unsigned) { ::tinyllm::sim::detail::schedule_point(); }
inline long long clock64() {
    static long long ticks = 0;  // a counter, not a clock: the simulator has no cycles
    return ++ticks;
}

// ---- warp-wide operations ------------------------------------------------------
namespace tinyllm::sim::detail {
template <class T>
std::uint64_t to_bits64(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move values of at most 8 bytes");
    std::uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T>
T from_bits64(std::uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}
template <class T>
T shuffle(warp_op op, unsigned mask, T var, int arg, int width, const std::source_location& where) {
    const std::uint64_t in = to_bits64(var);
    std::uint64_t out = 0;
    warp_collective(op, mask, &in, &out, arg, width, where);
    return from_bits64<T>(out);
}
}  // namespace tinyllm::sim::detail

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::shuffle(::tinyllm::sim::detail::warp_op::shfl_idx, mask, var, src_lane, width, where);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::shuffle(::tinyllm::sim::detail::warp_op::shfl_up, mask, var, static_cast<int>(delta),
                                           width, where);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::shuffle(::tinyllm::sim::detail::warp_op::shfl_down, mask, var, static_cast<int>(delta),
                                           width, where);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  std::source_location where = std::source_location::current()) {
    return ::tinyllm::sim::detail::shuffle(::tinyllm::sim::detail::warp_op::shfl_xor, mask, var, lane_mask, width, where);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, std::source_location where = std::source_location::current()) {
    unsigned out = 0;
    const int in = predicate != 0;
    ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::ballot, mask, &in, &out, 0, 32, where);
    return out;
}
inline int __any_sync(unsigned mask, int predicate, std::source_location where = std::source_location::current()) {
    unsigned out = 0;
    const int in = predicate != 0;
    ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::any, mask, &in, &out, 0, 32, where);
    return static_cast<int>(out);
}
inline int __all_sync(unsigned mask, int predicate, std::source_location where = std::source_location::current()) {
    unsigned out = 0;
    const int in = predicate != 0;
    ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::all, mask, &in, &out, 0, 32, where);
    return static_cast<int>(out);
}
template <class T>
unsigned __match_any_sync(unsigned mask, T value, std::source_location where = std::source_location::current()) {
    const std::uint64_t in = ::tinyllm::sim::detail::to_bits64(value);
    unsigned out = 0;
    ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::match_any, mask, &in, &out, 0, 32, where);
    return out;
}
template <class T>
unsigned __match_all_sync(unsigned mask, T value, int* pred, std::source_location where = std::source_location::current()) {
    const std::uint64_t in = ::tinyllm::sim::detail::to_bits64(value);
    unsigned out = 0;
    ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::match_all, mask, &in, &out, 0, 32, where);
    *pred = out != 0;
    return out;
}
#define TINYLLM_SIM_WARP_REDUCE(name, T, op)                                                                       \
    inline T name(unsigned mask, T value, std::source_location where = std::source_location::current()) {         \
        const std::uint32_t in = static_cast<std::uint32_t>(value);                                               \
        std::uint32_t out = 0;                                                                                    \
        ::tinyllm::sim::detail::warp_collective(::tinyllm::sim::detail::warp_op::op, mask, &in, &out, 0, 32, where); \
        return static_cast<T>(out);                                                                               \
    }
TINYLLM_SIM_WARP_REDUCE(__reduce_add_sync, unsigned, reduce_add_u)
TINYLLM_SIM_WARP_REDUCE(__reduce_add_sync, int, reduce_add_u)
TINYLLM_SIM_WARP_REDUCE(__reduce_min_sync, unsigned, reduce_min_u)
TINYLLM_SIM_WARP_REDUCE(__reduce_min_sync, int, reduce_min_i)
TINYLLM_SIM_WARP_REDUCE(__reduce_max_sync, unsigned, reduce_max_u)
TINYLLM_SIM_WARP_REDUCE(__reduce_max_sync, int, reduce_max_i)
TINYLLM_SIM_WARP_REDUCE(__reduce_and_sync, unsigned, reduce_and)
TINYLLM_SIM_WARP_REDUCE(__reduce_or_sync, unsigned, reduce_or)
TINYLLM_SIM_WARP_REDUCE(__reduce_xor_sync, unsigned, reduce_xor)
#undef TINYLLM_SIM_WARP_REDUCE

// ---- atomics (relaxed read-modify-write, as on the GPU) ---------------------------
// Each is one indivisible operation (the GCC __atomic built-ins, which
// ThreadSanitizer understands), and a point where the random schedule may
// switch threads, so code that assumes an order between atomics can fail.
namespace tinyllm::sim::detail {
template <class T, class F>
T atomic_update(T* address, F f) {
    schedule_point();
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- and 8-byte values");
    using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    U* p = reinterpret_cast<U*>(address);
    U old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T old;
        std::memcpy(&old, &old_bits, sizeof(T));
        const T updated = f(old);
        U new_bits;
        std::memcpy(&new_bits, &updated, sizeof(T));
        if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
#if defined(__SANITIZE_THREAD__)
            atomic_done(address, true);
#endif
            return old;
        }
    }
}

// A relaxed atomic load (what a `volatile` read of a flag is on a GPU), for
// code that polls a counter other blocks raise.
template <class T>
T atomic_load(const T* address) {
    schedule_point();
    const T v = __atomic_load_n(address, __ATOMIC_RELAXED);
#if defined(__SANITIZE_THREAD__)
    atomic_done(address, false);
#endif
    return v;
}
}  // namespace tinyllm::sim::detail

#define TINYLLM_SIM_ATOMIC(name, T, expr)                                                          \
    inline T name(T* address, T val) {                                                             \
        return ::tinyllm::sim::detail::atomic_update(address, [val]([[maybe_unused]] T old) -> T { return expr; }); \
    }
#define TINYLLM_SIM_ATOMIC_ALL_INTS(name, expr)          \
    TINYLLM_SIM_ATOMIC(name, int, expr)                  \
    TINYLLM_SIM_ATOMIC(name, unsigned, expr)             \
    TINYLLM_SIM_ATOMIC(name, unsigned long long, expr)   \
    TINYLLM_SIM_ATOMIC(name, long long, expr)
TINYLLM_SIM_ATOMIC(atomicAdd, int, static_cast<int>(static_cast<unsigned>(old) + static_cast<unsigned>(val)))
TINYLLM_SIM_ATOMIC(atomicAdd, unsigned, old + val)
TINYLLM_SIM_ATOMIC(atomicAdd, unsigned long long, old + val)
TINYLLM_SIM_ATOMIC(atomicAdd, float, old + val)
TINYLLM_SIM_ATOMIC(atomicAdd, double, old + val)
TINYLLM_SIM_ATOMIC(atomicSub, int, static_cast<int>(static_cast<unsigned>(old) - static_cast<unsigned>(val)))
TINYLLM_SIM_ATOMIC(atomicSub, unsigned, old - val)
TINYLLM_SIM_ATOMIC_ALL_INTS(atomicMin, std::min(old, val))
TINYLLM_SIM_ATOMIC_ALL_INTS(atomicMax, std::max(old, val))
TINYLLM_SIM_ATOMIC_ALL_INTS(atomicAnd, old & val)
TINYLLM_SIM_ATOMIC_ALL_INTS(atomicOr, old | val)
TINYLLM_SIM_ATOMIC_ALL_INTS(atomicXor, old ^ val)
TINYLLM_SIM_ATOMIC_ALL_INTS(atomicExch, val)
TINYLLM_SIM_ATOMIC(atomicExch, float, val)
TINYLLM_SIM_ATOMIC(atomicInc, unsigned, old >= val ? 0u : old + 1u)
TINYLLM_SIM_ATOMIC(atomicDec, unsigned, (old == 0u || old > val) ? val : old - 1u)
#undef TINYLLM_SIM_ATOMIC_ALL_INTS
#undef TINYLLM_SIM_ATOMIC
template <class T>
T atomicCAS(T* address, T compare, T val) {
    static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 2),
                  "atomicCAS on 2-, 4- and 8-byte integers");
    ::tinyllm::sim::detail::schedule_point();
    __atomic_compare_exchange_n(address, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
#if defined(__SANITIZE_THREAD__)
    ::tinyllm::sim::detail::atomic_done(address, true);
#endif
    return compare;  // the old value, whether or not the swap happened
}

// ---- intrinsic math ------------------------------------------------------------
// The fast-math intrinsics (__expf, __sinf ...) are approximations on a GPU;
// here they are the correctly computed library functions, which is one of the
// precision differences docs/simulator.md lists.
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
// Correctly rounded single operations, never fused with a neighbour (as nvcc
// promises for them). A host compiler targeting an fma instruction (-mfma,
// aarch64) would fuse `__fmul_rn(a, b) + c` after inlining; the operands and
// the result pass through tinyllm::detail::rounded (tinyllm/math.hpp), an
// empty asm statement it cannot see through.
inline float __fadd_rn(float a, float b) { using tinyllm::detail::rounded; return rounded(rounded(a) + rounded(b)); }
inline float __fsub_rn(float a, float b) { using tinyllm::detail::rounded; return rounded(rounded(a) - rounded(b)); }
inline float __fmul_rn(float a, float b) { using tinyllm::detail::rounded; return rounded(rounded(a) * rounded(b)); }
inline float __fdiv_rn(float a, float b) { using tinyllm::detail::rounded; return rounded(rounded(a) / rounded(b)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { using tinyllm::detail::rounded; return rounded(rounded(a) + rounded(b)); }
inline double __dmul_rn(double a, double b) { using tinyllm::detail::rounded; return rounded(rounded(a) * rounded(b)); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }

// ---- bits ------------------------------------------------------------------------
namespace tinyllm::sim::detail {
template <class To, class From>
To bit_copy(From v) {
    static_assert(sizeof(To) == sizeof(From));
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}
}  // namespace tinyllm::sim::detail
inline int __float_as_int(float x) { return ::tinyllm::sim::detail::bit_copy<int>(x); }
inline unsigned __float_as_uint(float x) { return ::tinyllm::sim::detail::bit_copy<unsigned>(x); }
inline float __int_as_float(int x) { return ::tinyllm::sim::detail::bit_copy<float>(x); }
inline float __uint_as_float(unsigned x) { return ::tinyllm::sim::detail::bit_copy<float>(x); }
inline long long __double_as_longlong(double x) { return ::tinyllm::sim::detail::bit_copy<long long>(x); }
inline double __longlong_as_double(long long x) { return ::tinyllm::sim::detail::bit_copy<double>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    __extension__ typedef unsigned __int128 u128;
    return static_cast<unsigned long long>((static_cast<u128>(a) * b) >> 64);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
    shift &= 31u;
    return shift ? (hi << shift) | (lo >> (32 - shift)) : hi;
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    shift &= 31u;
    return shift ? (lo >> shift) | (hi << (32 - shift)) : lo;
}

// ---- loads with cache hints: plain loads here ------------------------------------
template <class T>
T __ldg(const T* p) { return *p; }
template <class T>
T __ldcs(const T* p) { return *p; }
template <class T>
T __ldcg(const T* p) { return *p; }
template <class T>
T __ldlu(const T* p) { return *p; }
template <class T>
void __stcs(T* p, T v) { *p = v; }
template <class T>
void __stcg(T* p, T v) { *p = v; }

// The shared-window address of a pointer into shared memory. The simulator's
// shared memory is ordinary memory, so this is the address itself.
inline std::size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<std::size_t>(p); }

// Functions device code has in the global namespace, without std::.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::max;
using std::min;
using std::signbit;
