// tests/sim/bad_kernels.cu — kernels with the bugs compute-sanitizer exists to
// find, each of which the simulated GPU must report (docs/simulator.md):
//
//   bad_kernels global-oob         reads one element past a cudaMalloc'ed buffer
//   bad_kernels shared-oob         writes one element past its dynamic shared memory
//   bad_kernels static-shared-oob  writes one element past a __shared__ array
//   bad_kernels missing-barrier    thread 0 reads shared slots other threads write,
//                                  with no __syncthreads() in between
//   bad_kernels warp-hazard        lanes read a shared value that lane 0 overwrites,
//                                  separated only by a shuffle (which orders no memory)
//
// and four ways for one block to read what another block of the same launch
// stored, each missing one link of the chain a GPU needs (docs/simulator.md):
//
//   bad_kernels unwaited-read      the second block reads without waiting at all
//   bad_kernels unfenced-signal    the first block signals with no fence after its stores
//   bad_kernels one-fence          only the signalling thread fences, before the barrier
//   bad_kernels early-signal       the signal comes before the barrier that waits for
//                                  the other threads' stores
//
// (`bad_kernels ordered-signal` is the same kernel with every link in place, which
// must run without a report.)
//
// The first three are memcheck errors (AddressSanitizer: the `asan` preset; a
// __shared__ array indexed by name past its declared size is caught even earlier
// by UndefinedBehaviorSanitizer's bounds check), the others racecheck errors
// (ThreadSanitizer: the `racecheck` preset). Each case
// is a CTest test that passes when the sanitizer's report and the simulator's
// line naming the kernel, block and thread are both in the output
// (tests/CMakeLists.txt). A sanitizer stops the program at its first report.
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>

namespace tc = tinyllm::cuda;

__global__ void global_oob_kernel(const float* in, float* out, int n) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i <= n) out[i % n] = in[i];  // `<=`: thread n reads in[n]
}

__global__ void shared_oob_kernel(float* out) {
    float* s = tc::dynamic_shared<float>();  // blockDim.x floats
    s[threadIdx.x + 1] = 1.0f;                // the last thread writes past the end
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

__global__ void static_shared_oob_kernel(float* out) {
    __shared__ float s[64];
    float* row = s;           // through a pointer, as most kernels index shared memory
    row[threadIdx.x] = 1.0f;  // launched with 65 threads
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x % 64];
}

__global__ void missing_barrier_kernel(const float* in, float* out) {
    __shared__ float s[128];
    s[threadIdx.x] = in[threadIdx.x];
    // missing: __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int i = 0; i < 128; ++i) total += s[i];
        out[0] = total;
    }
}

__global__ void warp_hazard_kernel(const float* in, float* out) {
    __shared__ float row_max;
    if (threadIdx.x == 0) row_max = 0.0f;
    __syncthreads();
    for (int step = 0; step < 4; ++step) {
        const float m = row_max;  // every lane reads ...
        float x = in[step * 32 + threadIdx.x] + m;
        for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
        if (threadIdx.x == 0) row_max = x;  // ... while lane 0 writes: only shuffles between
    }
    out[threadIdx.x] = row_max;
}

// Two blocks of 64 threads. The block that draws ticket 0 stores a row; the
// one that draws ticket 1 waits for its signal and reads the row shifted by
// one, so that every value it reads was stored by another thread. `mode` takes
// out one link of the chain: store, fence, barrier, signal | wait, fence,
// barrier, load (launch.cuh's wait_at_least does the second block's part).
enum class signal_mode { ordered, unwaited, unfenced, one_fence, early };

__global__ void block_signal_kernel(float* row, unsigned* counters, float* out, signal_mode mode) {
    __shared__ unsigned s_ticket;
    if (threadIdx.x == 0) s_ticket = atomicAdd(&counters[0], 1u);
    __syncthreads();
    const unsigned ticket = s_ticket;
    if (ticket == 0) {
        row[threadIdx.x] = static_cast<float>(threadIdx.x);
        const bool fence = mode == signal_mode::one_fence ? threadIdx.x == 0 : mode != signal_mode::unfenced;
        if (fence) tinyllm::cuda::grid_fence();
        if (mode == signal_mode::early && threadIdx.x == 0) atomicAdd(&counters[1], 1u);
        __syncthreads();
        if (mode != signal_mode::early && threadIdx.x == 0) atomicAdd(&counters[1], 1u);
    } else {
        if (mode != signal_mode::unwaited && threadIdx.x == 0) tinyllm::cuda::wait_at_least(&counters[1], 1u);
        __syncthreads();
        out[threadIdx.x] = __ldcg(&row[(threadIdx.x + 1) % 64]);
    }
}

struct signal_case {
    const char* name;
    signal_mode mode;
};
constexpr signal_case signal_cases[] = {{"ordered-signal", signal_mode::ordered},
                                        {"unwaited-read", signal_mode::unwaited},
                                        {"unfenced-signal", signal_mode::unfenced},
                                        {"one-fence", signal_mode::one_fence},
                                        {"early-signal", signal_mode::early}};

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: bad_kernels global-oob|shared-oob|static-shared-oob|missing-barrier|warp-hazard|"
                             "unwaited-read|unfenced-signal|one-fence|early-signal|ordered-signal\n");
        return 2;
    }
    const char* which = argv[1];
    tc::device_buffer<float> in(128), out(128), short_in(127);
    TINYLLM_CUDA_CHECK(cudaMemset(in.data(), 0, in.bytes()));
    TINYLLM_CUDA_CHECK(cudaMemset(short_in.data(), 0, short_in.bytes()));
    if (!std::strcmp(which, "global-oob")) {
        tc::launch(global_oob_kernel, 1, 128, 0, nullptr, short_in.data(), out.data(), 127);
    } else if (!std::strcmp(which, "shared-oob")) {
        tc::launch(shared_oob_kernel, 1, 64, 64 * sizeof(float), nullptr, out.data());
    } else if (!std::strcmp(which, "static-shared-oob")) {
        tc::launch(static_shared_oob_kernel, 1, 65, 0, nullptr, out.data());
    } else if (!std::strcmp(which, "missing-barrier")) {
        tc::launch(missing_barrier_kernel, 1, 128, 0, nullptr, in.data(), out.data());
    } else if (!std::strcmp(which, "warp-hazard")) {
        tc::launch(warp_hazard_kernel, 1, 32, 0, nullptr, in.data(), out.data());
    } else {
        const signal_case* c = std::find_if(std::begin(signal_cases), std::end(signal_cases),
                                            [&](const signal_case& k) { return !std::strcmp(which, k.name); });
        if (c == std::end(signal_cases)) {
            std::fprintf(stderr, "bad_kernels: unknown case '%s'\n", which);
            return 2;
        }
        tc::device_buffer<unsigned> counters(2);
        TINYLLM_CUDA_CHECK(cudaMemset(counters.data(), 0, counters.bytes()));
        tc::launch(block_signal_kernel, 2, 64, 0, nullptr, in.data(), counters.data(), out.data(), c->mode);
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("bad_kernels %s: no error was reported\n", which);
    return 0;
}
