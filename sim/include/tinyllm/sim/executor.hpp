// tinyllm/sim/executor.hpp — how the simulator runs a kernel launch.
//
// A launch kernel<<<grid, block, shared, stream>>>(args...) becomes
// tinyllm::sim::launch(kernel, grid, block, shared, stream, args...), which
//   1. checks the configuration as an H100 would (at most 1024 threads per
//      block, grid y and z at most 65535, dynamic shared memory at most 48 KB
//      unless cudaFuncSetAttribute raised the limit, never over 227 KB); a bad
//      one is reported through cudaGetLastError and nothing runs;
//   2. runs the blocks one after another on the calling OS thread (in grid
//      order, or shuffled under TINYLLM_SIM_SCHEDULE=random:SEED);
//   3. runs each CUDA thread of a block as a fiber (tinyllm/sim/fiber.hpp).
//      A fiber runs until it must wait — at __syncthreads, at a warp-wide
//      operation such as __shfl_sync, at cp.async.wait_group — or returns; the
//      scheduler then resumes another ready thread. A barrier releases its
//      threads when every thread of the block that has not returned has
//      arrived; a warp collective completes when every lane its mask names
//      has arrived at the same one.
//   4. checks what compute-sanitizer's synccheck would: a barrier or warp
//      collective that can never complete (threads waiting at different
//      barriers, a mask naming a lane that has returned or does not exist) is
//      a fault, never a hang. So are __trap() and an exception escaping the
//      kernel (a failed bounds check, say). A fault stops the launch; its
//      report names the check, the kernel, the block and the threads, goes to
//      stderr and to last_report(), and the error is sticky, as on a GPU: every
//      later runtime call returns it until cudaDeviceReset().
//
// Kernels see their coordinates through the built-in names threadIdx,
// blockIdx, blockDim and gridDim, which read the running fiber's
// thread_context (tinyllm/sim/device_functions.hpp).
#pragma once

#include <tinyllm/sim/types.hpp>

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

namespace tinyllm::sim {

// Where the running CUDA thread is. Read by threadIdx & co.
struct thread_context {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

// The report of the last fault (empty if none since the last reset).
std::string last_report();
// Print fault reports to stderr (default) or not (tests of the checks).
void set_report_to_stderr(bool on);
// Whether the calling code runs inside a simulated kernel.
bool in_kernel();

// How the scheduler orders ready threads (and blocks). TINYLLM_SIM_SCHEDULE
// sets it at start-up: "in-order" (default) or "random:SEED".
struct schedule {
    bool random = false;
    std::uint64_t seed = 0;
};
void set_schedule(schedule s);
schedule current_schedule();

// Statistics of the work simulated so far (for `tinyllm bench sim`).
struct statistics {
    std::uint64_t launches = 0, blocks = 0, threads = 0, switches = 0;
    std::uint64_t allocations = 0;       // successful cudaMalloc calls
    std::uint64_t synchronizations = 0;  // cudaDeviceSynchronize / cudaStreamSynchronize / cudaEventSynchronize calls
};
statistics stats();

namespace detail {

// The running thread's coordinates; set by the executor before it resumes a fiber.
inline thread_context* current = nullptr;

// The running thread's lane: its linear index in the block, modulo 32.
inline unsigned lane_id() {
    const thread_context& c = *current;
    return (c.thread_idx.x + c.block_dim.x * (c.thread_idx.y + c.block_dim.y * c.thread_idx.z)) % 32u;
}

struct launch_request {
    dim3 grid, block;
    std::size_t dynamic_shared_bytes;
    cudaStream_t stream;
    const void* kernel;  // identifies the kernel (limits set with cudaFuncSetAttribute, its name)
    void (*run)(void* closure);
    void* closure;
    // A copy of the closure that outlives the call (a launch recorded by stream capture).
    void* (*clone)(const void* closure);
    void (*destroy)(void* closure);
};
// Validates and runs a launch (or records the configuration error).
void launch(const launch_request& request);

// ---- what the device functions call ----
enum class barrier_op : int { sync, count, any, all };
int block_barrier(barrier_op op, int predicate, const std::source_location& where);

enum class warp_op : int {
    shfl_idx, shfl_up, shfl_down, shfl_xor,    // in: uint64 value;  out: uint64
    ballot, any, all,                          // in: int predicate; out: unsigned
    match_any, match_all,                      // in: uint64 value;  out: unsigned (match_all: 0 unless all equal)
    reduce_add_u, reduce_min_u, reduce_max_u,  // in: uint32;        out: uint32
    reduce_min_i, reduce_max_i,
    reduce_and, reduce_or, reduce_xor,
    syncwarp,                                  // no payload
    ldmatrix, ldmatrix_trans,                  // in: 16 bytes (the row this lane addresses); out: `arg` uint32; arg = 1, 2, 4
    mma_bf16, mma_f16,                         // in: mma_fragments; out: float[4]
    wgmma,                                     // in: wgmma_request (results through its d); no out
};
struct mma_fragments {
    std::uint32_t a[4];
    std::uint32_t b[2];
    float c[4];
};
// One wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16} of one
// thread, kept from its issue to the wait that lands it (what it reads and
// writes is read and written then: the latest moment a GPU may). A GPU may as
// well read the operands at the issue, so they must not change in between:
// `operands` sums them at the issue, and the wait checks the sum.
struct wgmma_request {
    float* d;                // the thread's N / 2 accumulators
    const std::uint32_t* a;  // A in registers (4 per thread), or nullptr: A from a_desc
    std::uint64_t a_desc, b_desc;
    int n;                   // 8 .. 256, a multiple of 8
    bool trans_b, scale_d, f16;
    std::source_location where;
    std::uint64_t operands = 0;  // set by the simulator at the issue
};
// The running lane's part of a warp-wide operation: waits for the lanes of `mask`.
void warp_collective(warp_op op, unsigned mask, const void* in, void* out, int arg, int width,
                     const std::source_location& where);
unsigned active_mask();

void* dynamic_shared_memory();
[[noreturn]] void trap(const std::source_location& where);
// A point where the random schedule may switch to another thread (atomics).
void schedule_point();
extern bool random_schedule_active;

// Memory ordering between blocks, for ThreadSanitizer (racecheck builds only;
// elsewhere these are not called). __threadfence() calls device_fence(); an
// atomic on `address` calls atomic_done(address, wrote) after it. A block's
// threads are ordered after another block's only through these: a fence makes
// what its thread did before it visible to the device; an atomic write made
// after fences carries what they made visible to `address`; a thread that
// reads `address` with an atomic and then fences sees it (executor.cpp).
void device_fence();
void atomic_done(const void* address, bool wrote);

// cp.async: queued per thread, landed by cp_async_wait (or when the thread returns).
void cp_async(void* shared_dst, const void* global_src, int copy_bytes, int src_bytes,
              const std::source_location& where);
void cp_async_commit();
void cp_async_wait(int newest_pending_allowed);

// wgmma: issued per thread, committed into groups, executed per warp (each warp
// of a warpgroup computes its 16 rows of D) by wgmma_wait; shared_address is
// the offset of p in the block's dynamic shared memory (the simulated
// shared-memory address that descriptors hold).
void wgmma_issue(const wgmma_request& r);
void wgmma_commit();
void wgmma_wait(int newest_pending_allowed, const std::source_location& where);
std::uint32_t shared_address(const void* p, const std::source_location& where);

// mbarrier (a barrier object in shared memory, named by its shared_address):
// init sets the arrivals each phase expects; arrive adds `tx_bytes` to the
// transaction bytes the phase waits for (expect_tx), then counts `count`
// arrivals; wait returns once the phase of parity `parity` has completed (the
// barrier's current phase has the other parity). A phase completes when its
// arrivals are in and its transaction bytes have been delivered by the bulk
// copies that name the barrier (tma_load), which land when a thread waits on
// the barrier or arrives at it afterwards — the latest moment a GPU may.
void mbarrier_init(std::uint32_t bar, int count, const std::source_location& where);
void mbarrier_arrive(std::uint32_t bar, int count, std::uint32_t tx_bytes, const std::source_location& where);
void mbarrier_wait(std::uint32_t bar, unsigned parity, const std::source_location& where);
// bar.sync / bar.arrive with a barrier id (1 .. 15) and a thread count: the
// barrier completes when `count` threads have arrived, some of them waiting
// (sync) and some not (arrive). Barrier 0 with every thread is __syncthreads.
void named_barrier(int id, int count, bool wait, const std::source_location& where);
// cp.async.bulk.tensor (tile mode): the box of `map` at element coordinates
// c[0 .. rank) into shared memory at dst; completes its bytes on barrier `bar`.
void tma_load(void* dst, const void* map, const std::int32_t* c, int rank, std::uint32_t bar,
              const std::source_location& where);

// One call of the kernel, by the simulated thread that runs it.
template <class Closure>
void run_closure(void* c) {
    auto& closure = *static_cast<Closure*>(c);
    std::apply(closure.kernel, closure.params);  // each thread gets its own copies of the parameters
}

template <class Closure>
void* clone_closure(const void* c) {
    return new Closure(*static_cast<const Closure*>(c));
}
template <class Closure>
void destroy_closure(void* c) {
    delete static_cast<Closure*>(c);
}

}  // namespace detail

// kernel<<<grid, block, dynamic_shared_bytes, stream>>>(args...) on the simulator.
// The arguments are converted to the kernel's parameter types once, as a real
// launch does, and every thread receives copies of them (a captured launch
// keeps its own copy until its graph is destroyed).
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, cudaStream_t stream,
            Args&&... args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "launch: the kernel takes a different number of arguments");
    struct closure {
        void (*kernel)(Params...);
        std::tuple<std::decay_t<Params>...> params;
    } c{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    detail::launch({grid, block, dynamic_shared_bytes, stream, reinterpret_cast<const void*>(kernel),
                    &detail::run_closure<closure>, &c, &detail::clone_closure<closure>,
                    &detail::destroy_closure<closure>});
}

}  // namespace tinyllm::sim
