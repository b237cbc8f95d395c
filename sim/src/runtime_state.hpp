// sim/src/runtime_state.hpp — what the executor and the runtime API share:
// the error state and the launch limits.
#pragma once

#include <cuda_runtime_api.h>
#include <tinyllm/sim/executor.hpp>

#include <string>

namespace tinyllm::sim::runtime {

// The error the next cudaGetLastError returns (cleared by it).
void set_last_error(cudaError_t error);
// A fault in a kernel: returned by every later call until cudaDeviceReset.
void set_sticky_error(cudaError_t error, const std::string& report);
cudaError_t sticky_error();
// What an H100 refuses to launch; *limit receives the dynamic shared memory allowed.
cudaError_t check_launch(const detail::launch_request& request, std::size_t* limit);
// Counters for statistics().
std::uint64_t allocation_count();
std::uint64_t synchronization_count();

}  // namespace tinyllm::sim::runtime
