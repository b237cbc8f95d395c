// examples/tinyllm/gpu.cu — the GPU report of a CUDA build.
#include "gpu.hpp"

#include <tinyllm/cuda/device.cuh>

#include <cstdio>

namespace tinyllm_cli {

gpu_report query_gpus() {
    gpu_report r;
    r.built_with_cuda = true;
#if defined(TINYLLM_SIMULATED_GPU)
    r.simulated = true;
#endif
    r.cuda_version = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#ifdef TINYLLM_CUDA_ARCHITECTURES
    r.architectures = TINYLLM_CUDA_ARCHITECTURES;
#endif
    const int n = tinyllm::cuda::device_count(&r.why_none);
    for (int d = 0; d < n; ++d) {
        const auto info = tinyllm::cuda::get_device_info(d);
        char line[256];
        std::snprintf(line, sizeof line, "GPU %d: %s, compute capability %d.%d, %d SMs, %.1f GiB, L2 %.0f MiB", d,
                      info.name.c_str(), info.major, info.minor, info.multiprocessors,
                      info.global_memory / 1073741824.0, info.l2_cache / 1048576.0);
        r.devices.push_back(line);
    }
    return r;
}

}  // namespace tinyllm_cli

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/random.cuh>

namespace tinyllm_cli {
std::vector<float> gpu_fill_uniform(long long n, unsigned long long seed) {
    if (tinyllm::cuda::device_count() == 0) return {};
    tinyllm::cuda::device_buffer<float> d(static_cast<std::size_t>(n));
    tinyllm::cuda::fill_uniform(d.view(tinyllm::extents<1>{n}), seed);
    return tinyllm::cuda::to_host(d);
}
}  // namespace tinyllm_cli
