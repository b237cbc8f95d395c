// A CUDA program outside tinyllm using tinyllm::cuda: one of tinyllm's kernels
// (fill_uniform) and one of its own (a block sum with shared memory, a barrier
// and warp shuffles), checked against the host. Compiles with nvcc, or with the
// host compiler against a package installed from a simulated build; runs
// where a GPU is, and everywhere on the simulated GPU.
#include <tinyllm/cuda/tinyllm.cuh>

#include <cmath>
#include <cstdio>
#include <vector>

__global__ void block_sum_kernel(const float* x, float* out, int n) {
    __shared__ float warp_sums[32];
    float v = 0.0f;
    for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) v += x[i];
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (unsigned w = 0; w < blockDim.x / 32; ++w) total += warp_sums[w];
        *out = total;
    }
}

int main() {
    if (tinyllm::cuda::device_count() == 0) {
        std::printf("consumer_cuda: built against tinyllm::cuda; no GPU to run on\n");
        return 0;
    }
    const int n = 1024;
    tinyllm::cuda::device_buffer<float> d(n), sum(1);
    tinyllm::cuda::fill_uniform(d.view(tinyllm::extents<1>{n}), 3);
    tinyllm::cuda::launch(block_sum_kernel, 1, 256, 0, nullptr, d.data(), sum.data(), n);
    TINYLLM_CUDA_CHECK_LAUNCH();
    const std::vector<float> x = tinyllm::cuda::to_host(d);
    double want = 0.0;
    for (float v : x) want += v;
    const float got = tinyllm::cuda::to_host(sum)[0];
    std::printf("consumer_cuda: first value %f, block sum %f (host %f)\n", static_cast<double>(x[0]),
                static_cast<double>(got), want);
    return std::fabs(got - want) <= 1e-3 * std::fabs(want) ? 0 : 1;
}
