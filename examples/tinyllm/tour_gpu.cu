// examples/tinyllm/tour_gpu.cu — the kernels of the tour's chapter on how a GPU
// runs a kernel (tour_gpu.cpp): a block sum in shared memory, right and wrong.
#include "gpu.hpp"

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>

#include <vector>

namespace tinyllm_cli {
namespace {

// 64 threads = 2 warps. Every thread stores its value in shared memory; thread
// 0 then adds the 64 slots. Without the barrier, thread 0 may read slots the
// second warp has not written yet. (Dynamic shared memory: the simulated GPU
// fills it with 0xFF bytes, -1 as an int, at every block's start.)
template <bool Barrier>
__global__ void block_sum_kernel(const int* in, int* out) {
    int* slots = tinyllm::cuda::dynamic_shared<int>();  // 64 ints
    slots[threadIdx.x] = in[threadIdx.x];
    if (Barrier) __syncthreads();
    if (threadIdx.x == 0) {
        int total = 0;
        for (int i = 0; i < 64; ++i) total += slots[i];
        *out = total;
    }
}

#if defined(TINYLLM_SIMULATED_GPU)
// A wrong "fix": the first warp and the second wait at two different barriers
// (run on the simulated GPU only: on a GPU it is undefined behaviour).
__global__ void split_barrier_kernel(const int* in, int* out) {
    __shared__ int slots[64];
    slots[threadIdx.x] = in[threadIdx.x];
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = slots[63];
}
#endif

template <bool Barrier>
int run_sum(const tinyllm::cuda::device_buffer<int>& in, tinyllm::cuda::device_buffer<int>& out) {
    tinyllm::cuda::launch(block_sum_kernel<Barrier>, 1, 64, 64 * sizeof(int), nullptr, in.data(), out.data());
    TINYLLM_CUDA_CHECK_LAUNCH();
    return tinyllm::cuda::to_host(out)[0];
}

}  // namespace

race_demo gpu_race_demo() {
    race_demo d;
    if (tinyllm::cuda::device_count() == 0) return d;
    std::vector<int> values(64);
    for (int i = 0; i < 64; ++i) values[static_cast<std::size_t>(i)] = i + 1;
    d.expected = 64 * 65 / 2;
    auto in = tinyllm::cuda::to_device(values);
    tinyllm::cuda::device_buffer<int> out(1);
    d.ran = true;
#if defined(TINYLLM_SIMULATED_GPU)
    d.simulated = true;
    const auto saved = tinyllm::sim::current_schedule();
    for (std::uint64_t seed : {0, 1, 2, 3, 4}) {  // 0: in order; 1..4: random schedules
        tinyllm::sim::set_schedule({seed != 0, seed});
        out.poison();
        d.missing_barrier.push_back(run_sum<false>(in, out));
        d.with_barrier.push_back(run_sum<true>(in, out));
    }
    tinyllm::sim::set_schedule(saved);
    tinyllm::sim::set_report_to_stderr(false);
    tinyllm::cuda::launch(split_barrier_kernel, 1, 64, 0, nullptr, in.data(), out.data());
    (void)cudaGetLastError();
    d.synccheck_report = tinyllm::sim::last_report();
    (void)cudaDeviceReset();
    tinyllm::sim::set_report_to_stderr(true);
#else
    // A real GPU runs the block's warps in an order of its own; the split
    // barrier is not run here (on a GPU it is undefined behaviour).
    for (int run = 0; run < 5; ++run) {
        d.missing_barrier.push_back(run_sum<false>(in, out));
        d.with_barrier.push_back(run_sum<true>(in, out));
    }
#endif
    return d;
}

}  // namespace tinyllm_cli
