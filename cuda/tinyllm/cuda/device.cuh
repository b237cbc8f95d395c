// tinyllm/cuda/device.cuh — which GPUs are there, and what are they?
//
// device_count() never throws: on a machine without a GPU or without a driver
// it returns 0 and, if asked, says why. Tests use it to report "skipped", the
// `tinyllm info` command to print "no GPU".
#pragma once

#include <tinyllm/cuda/check.cuh>

#include <cuda_runtime.h>

#include <string>
#include <vector>

namespace tinyllm::cuda {

// Number of usable CUDA devices; 0 (with the reason in *why) when there are none.
inline int device_count(std::string* why = nullptr) noexcept {
    int count = 0;
    const cudaError_t code = cudaGetDeviceCount(&count);
    if (code != cudaSuccess) {
        (void)cudaGetLastError();
        if (why) *why = std::string(cudaGetErrorName(code)) + ": " + cudaGetErrorString(code);
        return 0;
    }
    if (count == 0 && why) *why = "the CUDA runtime found no devices";
    return count;
}

// The streaming multiprocessors (SMs) of the current device: what kernels that
// size their grid to fill the GPU divide by (132 on an H100 SXM and an H200, and
// on the simulated GPU).
inline int current_multiprocessors() {
    int device = 0, sms = 0;
    TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms > 0 ? sms : 1;
}

struct device_info {
    int index = 0;
    std::string name;
    int major = 0, minor = 0;           // compute capability, e.g. 9.0 for H100
    int multiprocessors = 0;
    std::size_t global_memory = 0;      // bytes
    std::size_t l2_cache = 0;           // bytes
    int memory_bus_bits = 0;
    int memory_clock_khz = 0;
    int driver_version = 0, runtime_version = 0;
};

inline device_info get_device_info(int device) {
    cudaDeviceProp p{};
    TINYLLM_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    device_info info;
    info.index = device;
    info.name = p.name;
    info.major = p.major;
    info.minor = p.minor;
    info.multiprocessors = p.multiProcessorCount;
    info.global_memory = p.totalGlobalMem;
    info.l2_cache = static_cast<std::size_t>(p.l2CacheSize);
    info.memory_bus_bits = p.memoryBusWidth;
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&info.memory_clock_khz, cudaDevAttrMemoryClockRate, device));
    TINYLLM_CUDA_CHECK(cudaDriverGetVersion(&info.driver_version));
    TINYLLM_CUDA_CHECK(cudaRuntimeGetVersion(&info.runtime_version));
    return info;
}

}  // namespace tinyllm::cuda
