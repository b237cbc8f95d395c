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
//     unsigned long long t = global_timer_ns();
//
// is the GPU's clock, the same on every SM: for timing phases inside a kernel.
//
//     launch_chained(kernel, grid, block, shared_bytes, stream, args...);
//
// is launch() for a kernel that calls wait_for_prior_grids() before it reads
// what earlier work on the stream wrote: with set_programmatic_launch(true), on
// an sm_90 GPU, the kernel may start while the one before it is still running
// (programmatic dependent launch, below).
//
// launch() and launch_chained() tell a launch_timeline (timeline.cuh), when one
// records on the calling host thread, where each launch begins and ends on its
// stream: a kernel-by-kernel account of where a decode step's time goes.
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

#include <atomic>
#include <chrono>
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

namespace detail {
// What launch() tells a launch_timeline (timeline.cuh) that records this host
// thread's launches: before and after each launch, or each library call that
// says so (the cuBLAS products). kernel is null for a library call, label null
// for a kernel. Nothing is called when no timeline records (the usual case).
class launch_observer {
public:
    virtual void before(const void* kernel, const char* label, cudaStream_t stream) = 0;
    virtual void after(cudaStream_t stream) = 0;

protected:
    ~launch_observer() = default;
};
inline launch_observer*& current_launch_observer() {
    thread_local launch_observer* observer = nullptr;
    return observer;
}
// Tells the current observer, if any, about one launch or library call: from
// its construction to its destruction.
class observed_launch {
public:
    observed_launch(const void* kernel, const char* label, cudaStream_t stream)
        : observer_(current_launch_observer()), stream_(stream) {
        if (observer_) observer_->before(kernel, label, stream);
    }
    ~observed_launch() {
        if (observer_) observer_->after(stream_);
    }
    observed_launch(const observed_launch&) = delete;
    observed_launch& operator=(const observed_launch&) = delete;

private:
    launch_observer* observer_;
    cudaStream_t stream_;
};
}  // namespace detail

// kernel<<<grid, block, shared_bytes, stream>>>(args...). The arguments are
// converted to the kernel's parameter types, as in a <<< >>> launch.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
    const detail::observed_launch observed(reinterpret_cast<const void*>(kernel), nullptr, stream);
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
//   * after winning, the thread that counted fences again before the barrier
//     that tells its block: in the PTX memory model the fence that makes other
//     blocks' stores visible (the acquire) must follow the atomic in the
//     atomic's own thread; the barrier then passes that on to the block's other
//     threads. (Every thread fencing after the barrier instead is not such a
//     pattern; the simulator's race check reports it.)
//     The block then reads what others wrote from L2 (__ldcg, or atomics): its
//     own L1 may hold a line it read before another block wrote it;
//   * the counter must be zero at launch; the last block sets it back to zero
//     for the next launch (the caller's business, after it is done with it),
//     with atomicExch: a counter other blocks add to is only touched
//     atomically, else the reset is a data race with their adds in the PTX
//     memory model (the simulator's race check reports it).

// __threadfence() (in the simulator under ThreadSanitizer, a note of what the
// fence orders between blocks, which its race check then holds kernels to:
// docs/simulator.md). It must stay a sequentially consistent fence (PTX fence.sc, what
// __threadfence() is): in the pattern above each thread fences its own stores,
// but the arrival is thread 0's atomic, after a barrier. The PTX memory model
// orders the other threads' stores before that atomic only through the total
// order of fence.sc; an acquire-release fence (fence.acq_rel) orders a thread's
// own operations only, and the pattern would then need thread 0 to fence after
// the barrier (cooperative groups' grid sync does it that way).
__device__ __forceinline__ void grid_fence() { __threadfence(); }

// The GPU's clock in nanoseconds, read alike by every SM (%globaltimer; its
// resolution depends on the GPU, a microsecond on some): for traces that
// compare blocks, such as the dataflow decode step's. (mbarrier_wait's bound,
// tma.cuh, reads only its low 32 bits, to save a register.) The simulated GPU
// reads the host's steady clock.
__device__ inline unsigned long long global_timer_ns() {
#if defined(TINYLLM_SIMULATED_GPU)
    return static_cast<unsigned long long>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
#else
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
#endif
}

// Called once by every thread of every block of a launch that shares `done`
// (a zeroed counter in global memory) among `blocks` blocks, after the
// thread's stores: true in every thread of the last block to arrive.
__device__ __forceinline__ bool last_block_to_arrive(unsigned* done, unsigned blocks) {
    __shared__ int s_last;
    grid_fence();     // this thread's stores are visible device-wide ...
    __syncthreads();  // ... for every thread of the block, before the arrival is counted
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        const bool won = atomicAdd(done, 1u) == blocks - 1;
        if (won) grid_fence();  // what the other blocks stored before counting is visible from here on ...
        s_last = won;
    }
    __syncthreads();            // ... to every thread of this block
    return s_last != 0;
}

// A value other blocks of the launch change with atomics, read while they may
// still be changing it (a hint such as sampling v6's published bound): a
// relaxed atomic load (PTX ld.relaxed.gpu, from L2). A plain load there is a
// data race in the PTX memory model, and the simulator's race check reports it.
__device__ inline unsigned load_relaxed(const unsigned* p) {
#if defined(TINYLLM_SIMULATED_GPU)
    return ::tinyllm::sim::detail::atomic_load(p);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    unsigned v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#else
    return *static_cast<const volatile unsigned*>(p);
#endif
}

// ---- waiting for earlier blocks of the same launch -------------------------
//
// A block may wait for other blocks of its own launch only if they are sure to
// be running or done. blockIdx says nothing about that: the GPU starts blocks
// in any order, and holds a grid larger than it fits back until blocks end. A
// *ticket* does: each block draws one with an atomicAdd when it starts, so a
// block holding ticket t knows that tickets 0 .. t-1 were drawn by blocks that
// started before it; if those wait only for lower tickets still, every wait
// ends. The decode step's dataflow kernel (decode_dataflow.cuh) and sampling
// v7 (sampling_chained.cuh) chain their phases this way.
//
// One thread of the waiting block calls wait_at_least: it returns once
// *counter >= expected, which blocks of lower tickets raise after fencing their
// stores, and fences, so that what they stored is visible from then on. The
// other threads wait for it at a barrier and read those stores from L2
// (__ldcg): their SM's L1 may hold a line from before. On a GPU a wait that
// lasts about 17 s traps (a broken chain ends as an error, not a hang).
//
// The counter must count exactly the blocks the waiter needs, every one of a
// lower ticket. The simulator runs each block to its end before the next, in
// ticket order, so there every block the counter counts has signalled when the
// wait begins, and the count must be `expected` exactly. Below it, some block
// never signals: a deadlock, which traps at once instead of hanging. Above it,
// the wait asks for fewer blocks than the counter counts: on a GPU it could
// return while some of those are still storing what the waiter reads (an
// off-by-one in `expected`, or a counter raised too early). Blocks that all end
// before the wait hide such a race; the exact count does not.
__device__ inline void wait_at_least(const unsigned* counter, unsigned expected) {
#if defined(TINYLLM_SIMULATED_GPU)
    const unsigned seen = load_relaxed(counter);
    if (seen < expected) __trap();  // a deadlock: no lower ticket raises the count to `expected`
    if (seen > expected) __trap();  // `expected` is lower than the blocks counted (see above)
#else
    const volatile unsigned* c = counter;
    unsigned sleep = 32;
    long long polls = 0;
    while (*c < expected) {
        __nanosleep(sleep);
        if (sleep < 256) sleep *= 2;
        if (++polls > (1ll << 26)) __trap();
    }
#endif
    grid_fence();
}


// ---- programmatic dependent launch (PDL) -----------------------------------
//
// Kernels on one stream run one after another: kernel B starts when kernel A
// has finished and its writes are visible. Between the two the GPU pays a gap:
// B's launch is processed, its blocks are placed on the SMs, and its first
// loads travel to memory, while the SMs A has left sit idle. A decode step is
// ~100 such kernels of a few microseconds each (docs/model.md), so the gaps are
// a large share of it.
//
// Hopper (sm_90) lets B overlap that gap. B is launched with the attribute
// cudaLaunchAttributeProgrammaticStreamSerialization; its blocks may then start
// as soon as every block of A has executed
//     griddepcontrol.launch_dependents   (allow_next_grid() here)
// (or exited), and B itself executes
//     griddepcontrol.wait                (wait_for_prior_grids() here)
// which returns once every grid B depends on has completed and its memory
// operations are visible: the ordering a plain launch gives, moved from the
// start of B to the point where B first needs it. Before that point B may do
// only what depends on nothing earlier work writes: compute addresses, and
// load data that no kernel writes during the step (weights). It must not
// write anything either (a kernel still running may be reading it). Since every
// kernel of a chain allows its successor at its start, B's early part may run
// beside kernels further back than A too; the rule keeps that harmless.
//
// Launched plainly, such a kernel behaves as before: wait returns at once and
// launch_dependents does nothing. The reverse is the danger: a kernel launched
// with the attribute that never waits may read its inputs before they are
// written, so launch_chained is only for kernels that wait. Inside a stream
// capture the attribute becomes a programmatic edge of the graph, so a
// replayed decode step keeps the overlap.
//
// It is off unless set_programmatic_launch(true) says otherwise (tinyllm bench
// model times the decode step both ways), and it needs compute capability 9.0
// or newer; below that launch_chained is launch(). The simulated GPU runs
// kernels one after another, where every wait is already satisfied: both
// instructions do nothing there, so the simulator checks what the chained
// kernels compute, not that they keep the rule above (the [pdl] tests of
// test_core and test_model exercise that on a GPU).
//
// Expected effect (not yet measured on a GPU): a microsecond or two less per
// chained kernel boundary of a decode step, and for the GEMVs (gemv.cuh) the
// first weight loads in flight before the previous kernel ends.

__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

namespace detail {
inline std::atomic<bool>& programmatic_launch_setting() {
    static std::atomic<bool> on{false};
    return on;
}
}  // namespace detail

// Whether launch_chained may overlap a kernel with the one before it (off by default).
inline void set_programmatic_launch(bool on) { detail::programmatic_launch_setting().store(on); }
inline bool programmatic_launch() { return detail::programmatic_launch_setting().load(); }

// Sets programmatic_launch() for a scope and puts the old setting back after it.
class programmatic_launch_scope {
public:
    explicit programmatic_launch_scope(bool on) : before_(programmatic_launch()) { set_programmatic_launch(on); }
    ~programmatic_launch_scope() { set_programmatic_launch(before_); }
    programmatic_launch_scope(const programmatic_launch_scope&) = delete;
    programmatic_launch_scope& operator=(const programmatic_launch_scope&) = delete;

private:
    bool before_;
};

namespace detail {
// Compute capability 9.0 or newer on the current device.
inline bool device_has_programmatic_launch() {
    int device = 0, major = 0;
    return cudaGetDevice(&device) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9;
}
}  // namespace detail

// launch() for a kernel that calls wait_for_prior_grids() before touching what
// earlier work on the stream writes (see above). A refused launch is reported by
// the next cudaGetLastError, as launch()'s is.
template <class... Params, class... Args>
void launch_chained(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
                    Args&&... args) {
#if defined(TINYLLM_SIMULATED_GPU)
    launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
    if (!programmatic_launch() || !detail::device_has_programmatic_launch()) {
        launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
        return;
    }
    const detail::observed_launch observed(reinterpret_cast<const void*>(kernel), nullptr, stream);
    cudaLaunchAttribute attribute[1] = {};
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    config.attrs = attribute;
    config.numAttrs = 1;
    (void)cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...);
#endif
}

}  // namespace tinyllm::cuda
