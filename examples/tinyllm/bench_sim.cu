// examples/tinyllm/bench_sim.cu — `tinyllm bench sim`: what the simulated GPU
// costs (docs/simulator.md). In a build for a real GPU there is nothing to
// measure here and the component prints nothing.
//
// Rows (times are the CPU's, per operation of one simulated thread):
//   fiber switch       one switch between two fibers (the target is <= 50 ns)
//   thread start/exit  an empty kernel of 1024 x 256 threads, per thread
//   __syncthreads      a kernel doing 64 barriers in a 256-thread block, per thread per barrier
//   __shfl_xor_sync    a warp reduction (5 shuffles), per lane per shuffle
#include "registry.hpp"

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#if defined(TINYLLM_SIMULATED_GPU)
#include <tinyllm/sim/fiber.hpp>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;

namespace {

__global__ void empty_kernel(int* out) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *out = 1;
}
__global__ void barrier_kernel(unsigned* out, int rounds) {
    __shared__ unsigned s[256];
    unsigned v = threadIdx.x;
    for (int r = 0; r < rounds; ++r) {
        s[threadIdx.x] = v;
        __syncthreads();
        v += s[(threadIdx.x + 1) % blockDim.x];
        __syncthreads();
    }
    out[threadIdx.x] = v;
}
__global__ void shuffle_kernel(float* out, int rounds) {
    float v = static_cast<float>(threadIdx.x);
    for (int r = 0; r < rounds; ++r)
        for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

// Median over `repeats` of the time of work(), divided by `ops`, as a timing row.
template <class Work>
tinyllm::timing_result per_op(const std::string& name, int repeats, double ops, Work&& work) {
    std::vector<double> us;
    work();  // warm-up (grows the fiber pool)
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        work();
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / ops);
    }
    return tinyllm::summarize(name, std::move(us), 0, 0);
}

std::string ns(const tinyllm::timing_result& t) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f ns", t.median_us * 1e3);
    return buf;
}

tinyllm::sim::fiber main_fiber;
tinyllm::sim::fiber* ping = nullptr;
void ping_loop(void*) {
    for (;;) tinyllm::sim::switch_fiber(*ping, main_fiber);
}

}  // namespace

TINYLLM_BENCH("sim", "the simulated GPU's own costs: fiber switch, thread, barrier, shuffle (times in us per op)", 1) {
    const int repeats = ctx.repeats;
    const int switches = 200000;
    static tinyllm::sim::fiber other(&ping_loop, nullptr, 64 * 1024);
    ping = &other;
    auto fib = per_op("sim/fiber_switch", repeats, 2.0 * switches, [&] {
        for (int i = 0; i < switches; ++i) tinyllm::sim::switch_fiber(main_fiber, other);
    });
    ctx.rows.push_back({"fiber switch", "cpu", fib, ns(fib) + " per switch (target <= 50 ns)", true, false});

    tc::device_buffer<int> out(256);
    tc::device_buffer<unsigned> uout(256);
    tc::device_buffer<float> fout(256);
    auto start = per_op("sim/thread_start_exit", repeats, 1024.0 * 256, [&] {
        tc::launch(empty_kernel, 1024, 256, 0, nullptr, out.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
    });
    ctx.rows.push_back({"thread start/exit", "cuda", start, ns(start) + " per thread", true, false});
    const int rounds = 64;
    auto barrier = per_op("sim/syncthreads", repeats, 256.0 * 2 * rounds * 16, [&] {
        tc::launch(barrier_kernel, 16, 256, 0, nullptr, uout.data(), rounds);
        TINYLLM_CUDA_CHECK_LAUNCH();
    });
    // The same rounds on the host: v[t] += v[(t + 1) % 256], all threads at once.
    std::vector<unsigned> want(256);
    for (unsigned t = 0; t < 256; ++t) want[t] = t;
    for (int r = 0; r < rounds; ++r) {
        const std::vector<unsigned> before = want;
        for (unsigned t = 0; t < 256; ++t) want[t] = before[t] + before[(t + 1) % 256];
    }
    const bool same = tc::to_host(uout) == want;
    ctx.rows.push_back({"__syncthreads", "cuda", barrier,
                        same ? ns(barrier) + " per thread per barrier" : "wrong values", same, false});
    auto shuffle = per_op("sim/shfl_xor_sync", repeats, 256.0 * 5 * rounds * 16, [&] {
        tc::launch(shuffle_kernel, 16, 256, 0, nullptr, fout.data(), rounds);
        TINYLLM_CUDA_CHECK_LAUNCH();
    });
    ctx.rows.push_back({"__shfl_xor_sync", "cuda", shuffle, ns(shuffle) + " per lane per shuffle", true, false});
}
#endif
