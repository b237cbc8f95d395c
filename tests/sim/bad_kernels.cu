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
// The first three are memcheck errors (AddressSanitizer: the `asan` preset; a
// __shared__ array indexed by name past its declared size is caught even earlier
// by UndefinedBehaviorSanitizer's bounds check), the last two racecheck errors
// (ThreadSanitizer: the `racecheck` preset). Each case
// is a CTest test that passes when the sanitizer's report and the simulator's
// line naming the kernel, block and thread are both in the output
// (tests/CMakeLists.txt). A sanitizer stops the program at its first report.
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>

#include <cstdio>
#include <cstring>

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

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: bad_kernels global-oob|shared-oob|static-shared-oob|missing-barrier|warp-hazard\n");
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
        std::fprintf(stderr, "bad_kernels: unknown case '%s'\n", which);
        return 2;
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("bad_kernels %s: no error was reported\n", which);
    return 0;
}
