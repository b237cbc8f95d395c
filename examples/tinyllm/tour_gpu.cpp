// examples/tinyllm/tour_gpu.cpp — the tour's chapter on how a GPU runs a
// kernel: grid, blocks, warps, shared memory, and the barrier that a block sum
// cannot do without. The kernels are in tour_gpu.cu; on the simulated GPU
// (docs/simulator.md) they run everywhere, thread by thread.
#include "gpu.hpp"
#include "registry.hpp"

#include <sstream>
#include <string>

using namespace tinyllm_cli;

namespace {
std::string list(const std::vector<int>& v) {
    std::ostringstream o;
    for (std::size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
    return o.str();
}
}  // namespace

TINYLLM_TOUR_CHAPTER(12, "kernels", "How a GPU runs a kernel, and why barriers matter") {
    auto& out = ctx.out;
    out << "A kernel launch starts a grid of blocks; a block is a group of threads that share fast\n"
           "shared memory and can wait for each other at a barrier, __syncthreads(). The hardware\n"
           "runs a block's threads 32 at a time, in warps, and schedules warps in an order of its own.\n\n"
           "A block of 64 threads (2 warps) sums the numbers 1..64: every thread stores its number in\n"
           "shared memory, then thread 0 adds the 64 slots.\n\n"
           "    int* slots = dynamic_shared<int>();       // 64 ints of shared memory\n"
           "    slots[threadIdx.x] = in[threadIdx.x];\n"
           "    __syncthreads();                          // <- without this line ...\n"
           "    if (threadIdx.x == 0) for (i < 64) total += slots[i];\n\n";
    const race_demo d = gpu_race_demo();
    if (!d.ran) {
        out << "(No GPU here to run it on. Configure with `cmake --preset sim` to run this chapter's\n"
               " kernels on tinyllm's simulated GPU.)\n\n"
               "Without the barrier, thread 0 may read slots the second warp has not written yet: the\n"
               "sum depends on the order the warps happen to run in. tinyllm's simulated GPU runs the\n"
               "threads in a chosen or random order and reports the race under its racecheck build.\n";
        return;
    }
    out << "The right sum is " << d.expected << ".\n";
    if (d.simulated) {
        out << "On the simulated GPU, in order and under four random thread schedules\n"
               "(TINYLLM_SIM_SCHEDULE=random:SEED):\n"
            << "    without the barrier: " << list(d.missing_barrier) << "\n"
            << "    with the barrier:    " << list(d.with_barrier) << "\n\n"
            << "In order, thread 0 runs first and adds 63 slots nobody has written yet (fresh shared\n"
               "memory reads as -1 on the simulator); each schedule lets a different number of threads\n"
               "write first. The barrier makes every order give "
            << d.expected
            << ".\n"
               "The racecheck build (cmake --preset racecheck) reports such a bug by itself, naming both\n"
               "CUDA threads of the conflicting write and read (ThreadSanitizer: data race).\n\n"
               "A barrier must be reached by every thread of the block. Putting one in each branch of\n"
               "`if (threadIdx.x < 32)` looks harmless; it hangs or misbehaves on a GPU, and the\n"
               "simulator's synccheck reports it instead:\n\n"
            << d.synccheck_report << "\n";
    } else {
        out << "On this GPU, five runs:\n"
            << "    without the barrier: " << list(d.missing_barrier) << "\n"
            << "    with the barrier:    " << list(d.with_barrier) << "\n"
            << "(Without the barrier the sum is right only when the second warp happens to write first.)\n";
    }
}
