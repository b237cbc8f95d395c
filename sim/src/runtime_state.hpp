// sim/src/runtime_state.hpp — what the executor and the runtime API share:
// the error state and the launch limits.
#pragma once

#include <cuda_runtime_api.h>
#include <tinyllm/sim/executor.hpp>

#include <functional>
#include <string>

namespace tinyllm::sim::runtime {

// The error the next cudaGetLastError returns (cleared by it).
void set_last_error(cudaError_t error);
// A fault in a kernel: returned by every later call until cudaDeviceReset.
void set_sticky_error(cudaError_t error, const std::string& report);
cudaError_t sticky_error();
// What an H100 refuses to launch; *limit receives the dynamic shared memory allowed.
cudaError_t check_launch(const detail::launch_request& request, std::size_t* limit);
// Where work issued to `stream` goes: cudaSuccess with *record false (run it
// now) or true (the stream is captured: record() it), or an error (the legacy
// stream while a capture forbids it; that capture is spoiled).
cudaError_t route(cudaStream_t stream, bool* record);
void record(cudaStream_t stream, std::function<void()> work);
// A capture-unsafe call (synchronization, allocation): cudaErrorStreamCaptureUnsupported
// when a capture forbids it from this thread (and that capture is spoiled), else cudaSuccess.
cudaError_t check_capture_safe();
// A kernel's name, demangled, as the executor's reports print it (executor.cpp).
std::string function_name(const void* kernel);
// Counters for statistics().
std::uint64_t allocation_count();
std::uint64_t synchronization_count();

}  // namespace tinyllm::sim::runtime
