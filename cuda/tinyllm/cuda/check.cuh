// tinyllm/cuda/check.cuh — turn CUDA failures into exceptions that say where.
//
// Every CUDA runtime call returns a cudaError_t that is easy to ignore, and a
// kernel launch reports nothing at all until someone asks. tinyllm checks
// every call and every launch:
//
//     TINYLLM_CUDA_CHECK(cudaMalloc(&p, bytes));
//     my_kernel<<<grid, block, 0, stream>>>(...);
//     TINYLLM_CUDA_CHECK_LAUNCH();
//
// On failure it throws tinyllm::cuda_error (a tinyllm::error) whose message
// names the CUDA error, its description, the call, the file and the line:
//
//     tinyllm: CUDA error cudaErrorMemoryAllocation (out of memory) in cudaMalloc(
//     reinterpret_cast<void**>(&data_), count_ * sizeof(T))
//       at cuda/tinyllm/cuda/device_buffer.cuh:33
#pragma once

#include <tinyllm/error.hpp>

#include <cuda_runtime.h>

#include <string>

namespace tinyllm {

// A failed CUDA runtime call. code() is the cudaError_t that was returned.
class cuda_error : public error {
public:
    cuda_error(cudaError_t code, const std::string& message) : error(message), code_(code) {}
    cudaError_t code() const noexcept { return code_; }

private:
    cudaError_t code_;
};

namespace detail {

inline void cuda_check(cudaError_t code, const char* call, const char* file, int line) {
    if (code == cudaSuccess) return;
    // Clear a non-sticky error so the next, unrelated call does not see it.
    (void)cudaGetLastError();
    throw cuda_error(code, cat("tinyllm: CUDA error ", cudaGetErrorName(code), " (", cudaGetErrorString(code),
                               ") in ", call, "\n  at ", short_path(file), ":", line));
}

}  // namespace detail
}  // namespace tinyllm

#define TINYLLM_CUDA_CHECK(call) ::tinyllm::detail::cuda_check((call), #call, __FILE__, __LINE__)

// After a kernel launch: reports a bad launch configuration at once. (Faults
// inside the kernel surface at the next synchronising call, which is checked too.)
#define TINYLLM_CUDA_CHECK_LAUNCH() \
    ::tinyllm::detail::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
