// sim/src/runtime.cpp — the CUDA runtime API of cuda_runtime_api.h on the host.
#include "runtime_state.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

namespace tinyllm::sim {
void clear_report();
}

namespace {

using clock_type = std::chrono::steady_clock;

// A stream being captured: the work issued to it so far, in order.
struct capture {
    cudaStreamCaptureMode mode;
    std::thread::id thread;
    bool invalidated = false;
    std::vector<std::function<void()>> nodes;
};

// The limits of an H100 SXM (compute capability 9.0).
constexpr std::size_t global_memory = std::size_t{80} << 30;
constexpr int max_threads_per_block = 1024;
constexpr std::size_t default_dynamic_shared = 48 * 1024;  // without cudaFuncSetAttribute
constexpr std::size_t max_dynamic_shared = 227 * 1024;     // with it
constexpr int multiprocessors = 132;
constexpr int l2_bytes = 50 * 1024 * 1024;

struct state {
    std::mutex m;
    std::map<std::uintptr_t, std::size_t> allocations;  // base -> bytes
    std::size_t allocated = 0;
    std::set<const void*> streams, events;
    std::map<const void*, clock_type::time_point> recorded;
    std::map<const void*, int> dynamic_shared_limit;  // per kernel, set by cudaFuncSetAttribute
    std::map<const void*, capture> captures;          // per stream being captured
    std::set<const void*> graphs, graph_execs;
    cudaError_t sticky = cudaSuccess;
    std::string sticky_report;
    std::uint64_t allocations_made = 0, synchronizations = 0;
};
state& st() {
    static state s;
    return s;
}
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}
// The sticky error, if a kernel has faulted.
cudaError_t sticky() {
    std::lock_guard lock(st().m);
    return st().sticky;
}
#define TINYLLM_SIM_RETURN_IF_STICKY()                 \
    do {                                               \
        if (const cudaError_t s_ = sticky(); s_ != cudaSuccess) return fail(s_); \
    } while (0)

// Whether [p, p + bytes) lies inside one live allocation (caller holds the lock).
bool in_allocation(const void* p, std::size_t bytes) {
    const auto& a = st().allocations;
    const auto u = reinterpret_cast<std::uintptr_t>(p);
    auto it = a.upper_bound(u);
    if (it == a.begin()) return false;
    --it;
    return u >= it->first && u - it->first <= it->second && bytes <= it->second - (u - it->first) &&
           (bytes > 0 || u < it->first + it->second || it->second == 0);
}
bool is_device(const void* p) { return in_allocation(p, 1); }

bool valid_stream(cudaStream_t s) {
    std::lock_guard lock(st().m);
    return s == nullptr || st().streams.count(s) > 0;
}

// Whether a capture forbids the calling thread capture-unsafe calls (caller
// holds the lock): its own capture unless relaxed, or any thread's global one.
// Those captures are spoiled when `spoil`.
bool capture_forbids(bool spoil) {
    bool forbids = false;
    for (auto& [stream, c] : st().captures) {
        const bool applies = c.mode == cudaStreamCaptureModeGlobal ||
                             (c.mode == cudaStreamCaptureModeThreadLocal && c.thread == std::this_thread::get_id());
        if (!applies) continue;
        forbids = true;
        if (spoil) c.invalidated = true;
    }
    return forbids;
}

// Checks a copy of `bytes` (or rows) between dst and src for `kind`.
cudaError_t check_copy(void* dst, std::size_t dpitch, const void* src, std::size_t spitch, std::size_t width,
                       std::size_t height, cudaMemcpyKind kind) {
    if (height == 0 || width == 0) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    const std::size_t dst_span = dpitch * (height - 1) + width, src_span = spitch * (height - 1) + width;
    std::lock_guard lock(st().m);
    const bool dst_dev = is_device(dst), src_dev = is_device(src);
    bool want_dst_dev = false, want_src_dev = false;
    switch (kind) {
    case cudaMemcpyHostToHost: break;
    case cudaMemcpyHostToDevice: want_dst_dev = true; break;
    case cudaMemcpyDeviceToHost: want_src_dev = true; break;
    case cudaMemcpyDeviceToDevice: want_dst_dev = want_src_dev = true; break;
    case cudaMemcpyDefault: want_dst_dev = dst_dev; want_src_dev = src_dev; break;
    default: return cudaErrorInvalidMemcpyDirection;
    }
    // The wrong direction: a device pointer where host memory was promised, or the reverse.
    if (dst_dev != want_dst_dev || src_dev != want_src_dev) return cudaErrorInvalidValue;
    if (want_dst_dev && !in_allocation(dst, dst_span)) return cudaErrorInvalidValue;
    if (want_src_dev && !in_allocation(src, src_span)) return cudaErrorInvalidValue;
    return cudaSuccess;
}

const char* name_of(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidKernelImage: return "cudaErrorInvalidKernelImage";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorUnknown: return "cudaErrorUnknown";
    }
    return "cudaErrorUnknown";
}
const char* text_of(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidKernelImage: return "device kernel image is invalid";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "the capture was not initiated in this stream";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorUnknown: return "unknown error";
    }
    return "unrecognized error code";
}

}  // namespace

namespace tinyllm::sim::runtime {

void set_last_error(cudaError_t error) { last_error = error; }
void set_sticky_error(cudaError_t error, const std::string& report) {
    std::lock_guard lock(st().m);
    if (st().sticky == cudaSuccess) {
        st().sticky = error;
        st().sticky_report = report;
    }
}
cudaError_t sticky_error() { return sticky(); }

cudaError_t route(cudaStream_t stream, bool* record) {
    *record = false;
    std::lock_guard lock(st().m);
    if (stream == nullptr) return capture_forbids(true) ? cudaErrorStreamCaptureImplicit : cudaSuccess;
    auto it = st().captures.find(stream);
    if (it == st().captures.end()) return cudaSuccess;
    if (it->second.invalidated) return cudaErrorStreamCaptureInvalidated;
    *record = true;
    return cudaSuccess;
}
void record(cudaStream_t stream, std::function<void()> work) {
    std::lock_guard lock(st().m);
    auto it = st().captures.find(stream);
    if (it != st().captures.end()) it->second.nodes.push_back(std::move(work));
}
cudaError_t check_capture_safe() {
    std::lock_guard lock(st().m);
    return capture_forbids(true) ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
std::uint64_t allocation_count() {
    std::lock_guard lock(st().m);
    return st().allocations_made;
}
std::uint64_t synchronization_count() {
    std::lock_guard lock(st().m);
    return st().synchronizations;
}

// Every refusal is cudaErrorInvalidValue ("invalid argument"): what the CUDA 13
// runtime returned on an H200 for each of these (tests/cuda/test_sim.cu, run there
// on 2026-11-29), not the cudaErrorInvalidConfiguration of older runtimes.
cudaError_t check_launch(const detail::launch_request& r, std::size_t* limit) {
    const dim3 b = r.block, g = r.grid;
    if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 ||
        std::uint64_t{b.x} * b.y * b.z > max_threads_per_block)
        return cudaErrorInvalidValue;
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535u || g.z > 65535u)
        return cudaErrorInvalidValue;
    if (!valid_stream(r.stream)) return cudaErrorInvalidResourceHandle;
    std::size_t allowed = default_dynamic_shared;
    {
        std::lock_guard lock(st().m);
        if (auto it = st().dynamic_shared_limit.find(r.kernel); it != st().dynamic_shared_limit.end())
            allowed = static_cast<std::size_t>(it->second);
    }
    if (r.dynamic_shared_bytes > allowed) return cudaErrorInvalidValue;
    *limit = allowed;
    return cudaSuccess;
}

}  // namespace tinyllm::sim::runtime

using tinyllm::sim::runtime::set_last_error;

const char* cudaGetErrorName(cudaError_t error) { return name_of(error); }
const char* cudaGetErrorString(cudaError_t error) {
    // A kernel fault carries the simulator's report (check, kernel, block, thread).
    thread_local std::string detailed;
    {
        std::lock_guard lock(st().m);
        if (error != cudaSuccess && error == st().sticky && !st().sticky_report.empty()) {
            detailed = std::string(text_of(error)) + "; " + st().sticky_report;
            return detailed.c_str();
        }
    }
    return text_of(error);
}
cudaError_t cudaGetLastError() {
    if (const cudaError_t s = sticky(); s != cudaSuccess) return s;
    return std::exchange(last_error, cudaSuccess);
}
cudaError_t cudaPeekAtLastError() {
    if (const cudaError_t s = sticky(); s != cudaSuccess) return s;
    return last_error;
}

cudaError_t cudaGetDeviceCount(int* count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    if (!device) return fail(cudaErrorInvalidValue);
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
    if (!p) return fail(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    *p = cudaDeviceProp{};
    std::strncpy(p->name, "simulated GPU (CPU), H100 limits", sizeof p->name - 1);
    p->totalGlobalMem = global_memory;
    p->sharedMemPerBlock = default_dynamic_shared;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = max_threads_per_block;
    p->maxThreadsDim[0] = 1024;
    p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647;
    p->maxGridSize[1] = 65535;
    p->maxGridSize[2] = 65535;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = multiprocessors;
    p->memoryBusWidth = 5120;
    p->l2CacheSize = l2_bytes;
    p->maxThreadsPerMultiProcessor = 2048;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->sharedMemPerBlockOptin = max_dynamic_shared;
    p->concurrentKernels = 1;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    if (!value) return fail(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = max_threads_per_block; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(default_dynamic_shared); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrClockRate: *value = 1980000; break;
    case cudaDevAttrMultiProcessorCount: *value = multiprocessors; break;
    case cudaDevAttrMemoryClockRate: *value = 2619000; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = 5120; break;
    case cudaDevAttrL2CacheSize: *value = l2_bytes; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(max_dynamic_shared); break;
    default: return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
    if (!version) return fail(cudaErrorInvalidValue);
    *version = 0;  // no driver: the simulator is the device
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
    if (!version) return fail(cudaErrorInvalidValue);
    *version = 13000;
    return cudaSuccess;
}
static void count_synchronization() {
    std::lock_guard lock(st().m);
    ++st().synchronizations;
}
cudaError_t cudaDeviceSynchronize() {
    count_synchronization();
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (const cudaError_t e = tinyllm::sim::runtime::check_capture_safe(); e != cudaSuccess) return fail(e);
    return cudaSuccess;
}
cudaError_t cudaDeviceReset() {
    {
        std::lock_guard lock(st().m);
        st().sticky = cudaSuccess;
        st().sticky_report.clear();
        st().dynamic_shared_limit.clear();
    }
    last_error = cudaSuccess;
    tinyllm::sim::clear_report();
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total) {
    if (!free || !total) return fail(cudaErrorInvalidValue);
    std::lock_guard lock(st().m);
    *total = global_memory;
    *free = global_memory - st().allocated;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, std::size_t bytes) {
    if (!ptr) return fail(cudaErrorInvalidValue);
    *ptr = nullptr;
    TINYLLM_SIM_RETURN_IF_STICKY();
    // An allocation is not stream work: a graph would not replay it.
    if (const cudaError_t e = tinyllm::sim::runtime::check_capture_safe(); e != cudaSuccess) return fail(e);
    if (bytes == 0) return cudaSuccess;
    std::lock_guard lock(st().m);
    // The simulated device has an H100's 80 GB, and no more than the host's memory.
    static const std::size_t host_memory =
        static_cast<std::size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    if (bytes > global_memory - st().allocated || bytes > host_memory) return fail(cudaErrorMemoryAllocation);
    // 256-byte aligned, as cudaMalloc's; exactly `bytes` long, so AddressSanitizer
    // reports the first byte past the end.
    void* p = ::operator new(bytes, std::align_val_t{256}, std::nothrow);
    if (!p) return fail(cudaErrorMemoryAllocation);
    std::memset(p, 0xff, bytes);  // uninitialised device memory reads as NaN
    st().allocations[reinterpret_cast<std::uintptr_t>(p)] = bytes;
    st().allocated += bytes;
    ++st().allocations_made;
    *ptr = p;
    return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
    if (!ptr) return cudaSuccess;
    if (const cudaError_t e = tinyllm::sim::runtime::check_capture_safe(); e != cudaSuccess) return fail(e);
    std::lock_guard lock(st().m);
    auto it = st().allocations.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == st().allocations.end()) return fail(cudaErrorInvalidValue);  // not the start of a live allocation
    st().allocated -= it->second;
    st().allocations.erase(it);
    ::operator delete(ptr, std::align_val_t{256});
    return st().sticky != cudaSuccess ? fail(st().sticky) : cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, std::size_t bytes) {
    if (!ptr) return fail(cudaErrorInvalidValue);
    *ptr = ::operator new(bytes ? bytes : 1, std::align_val_t{256}, std::nothrow);
    return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* ptr) {
    ::operator delete(ptr, std::align_val_t{256});
    return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* ptr) {
    if (!a) return fail(cudaErrorInvalidValue);
    std::lock_guard lock(st().m);
    const bool dev = ptr && is_device(ptr);
    a->type = dev ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
    a->device = dev ? 0 : -1;
    a->devicePointer = dev ? const_cast<void*>(ptr) : nullptr;
    a->hostPointer = dev ? nullptr : const_cast<void*>(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dpitch, const void* src, std::size_t spitch, std::size_t width,
                              std::size_t height, cudaMemcpyKind kind, cudaStream_t stream) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    if (const cudaError_t e = check_copy(dst, dpitch, src, spitch, width, height, kind); e != cudaSuccess) return fail(e);
    const auto copy = [=] {
        for (std::size_t r = 0; r < height; ++r)
            std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
    };
    bool captured = false;
    if (const cudaError_t e = tinyllm::sim::runtime::route(stream, &captured); e != cudaSuccess) return fail(e);
    if (!captured) {
        copy();
        return cudaSuccess;
    }
    // Replayed later: the pointers are checked again then (freed memory is a fault).
    tinyllm::sim::runtime::record(stream, [=] {
        if (sticky() != cudaSuccess) return;
        if (check_copy(dst, dpitch, src, spitch, width, height, kind) != cudaSuccess) {
            tinyllm::sim::runtime::set_sticky_error(
                cudaErrorIllegalAddress, "tinyllm simulator: a graph's copy node reaches memory that is no longer allocated");
            return;
        }
        copy();
    });
    return cudaSuccess;
}
cudaError_t cudaMemcpy2D(void* dst, std::size_t dpitch, const void* src, std::size_t spitch, std::size_t width,
                         std::size_t height, cudaMemcpyKind kind) {
    return cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, nullptr);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    return cudaMemcpy2DAsync(dst, bytes, src, bytes, bytes, 1, kind, stream);
}
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, std::size_t bytes, cudaStream_t stream) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    if (bytes == 0) return cudaSuccess;
    {
        std::lock_guard lock(st().m);
        if (!in_allocation(ptr, bytes)) return fail(cudaErrorInvalidValue);
    }
    bool captured = false;
    if (const cudaError_t e = tinyllm::sim::runtime::route(stream, &captured); e != cudaSuccess) return fail(e);
    if (!captured) {
        std::memset(ptr, value, bytes);
        return cudaSuccess;
    }
    tinyllm::sim::runtime::record(stream, [=] {
        if (sticky() != cudaSuccess) return;
        bool live = false;
        {
            std::lock_guard lock(st().m);
            live = in_allocation(ptr, bytes);
        }
        if (!live) {
            tinyllm::sim::runtime::set_sticky_error(
                cudaErrorIllegalAddress, "tinyllm simulator: a graph's memset node reaches memory that is no longer allocated");
            return;
        }
        std::memset(ptr, value, bytes);
    });
    return cudaSuccess;
}
cudaError_t cudaMemset(void* ptr, int value, std::size_t bytes) { return cudaMemsetAsync(ptr, value, bytes, nullptr); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
    if (!stream) return fail(cudaErrorInvalidValue);
    *stream = reinterpret_cast<cudaStream_t>(new char);
    std::lock_guard lock(st().m);
    st().streams.insert(*stream);
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    std::lock_guard lock(st().m);
    if (st().captures.count(stream)) return fail(cudaErrorIllegalState);
    if (!st().streams.erase(stream)) return fail(cudaErrorInvalidResourceHandle);
    delete reinterpret_cast<char*>(stream);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    count_synchronization();
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (const cudaError_t e = tinyllm::sim::runtime::check_capture_safe(); e != cudaSuccess) return fail(e);
    return valid_stream(stream) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard lock(st().m);
    return st().events.count(event) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
    if (!event) return fail(cudaErrorInvalidValue);
    *event = reinterpret_cast<cudaEvent_t>(new char);
    std::lock_guard lock(st().m);
    st().events.insert(*event);
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    std::lock_guard lock(st().m);
    if (!st().events.erase(event)) return fail(cudaErrorInvalidResourceHandle);
    st().recorded.erase(event);
    delete reinterpret_cast<char*>(event);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    return cudaEventRecordWithFlags(event, stream, cudaEventRecordDefault);
}
// Inside a stream capture, as on a GPU: a default record only marks a point of the
// capture for other captured streams to wait on, and is not recorded when the graph
// runs; an external one becomes an event-record node, recorded at every replay.
cudaError_t cudaEventRecordWithFlags(cudaEvent_t event, cudaStream_t stream, unsigned flags) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (flags != cudaEventRecordDefault && flags != cudaEventRecordExternal) return fail(cudaErrorInvalidValue);
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    {
        std::lock_guard lock(st().m);
        if (!st().events.count(event)) return fail(cudaErrorInvalidResourceHandle);
    }
    bool captured = false;
    if (const cudaError_t e = tinyllm::sim::runtime::route(stream, &captured); e != cudaSuccess) return fail(e);
    const auto stamp = [event] {
        std::lock_guard lock(st().m);
        if (st().events.count(event)) st().recorded[event] = clock_type::now();  // the work before it has run
    };
    if (!captured) stamp();
    else if (flags == cudaEventRecordExternal) tinyllm::sim::runtime::record(stream, stamp);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    count_synchronization();
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (const cudaError_t e = tinyllm::sim::runtime::check_capture_safe(); e != cudaSuccess) return fail(e);
    std::lock_guard lock(st().m);
    return st().events.count(event) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms) return fail(cudaErrorInvalidValue);
    TINYLLM_SIM_RETURN_IF_STICKY();
    std::lock_guard lock(st().m);
    auto a = st().recorded.find(start), b = st().recorded.find(end);
    if (a == st().recorded.end() || b == st().recorded.end()) return fail(cudaErrorInvalidResourceHandle);
    *ms = std::chrono::duration<float, std::milli>(b->second - a->second).count();
    return cudaSuccess;
}

cudaError_t cudaFuncGetName(const char** name, const void* func) {
    if (!name || !func) return fail(cudaErrorInvalidValue);
    static std::mutex m;
    static std::map<const void*, std::string> names;  // stable strings: the pointers are handed out
    std::lock_guard lock(m);
    auto it = names.find(func);
    if (it == names.end()) it = names.emplace(func, tinyllm::sim::runtime::function_name(func)).first;
    *name = it->second.c_str();
    return cudaSuccess;
}

cudaError_t tinyllm_sim_func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (!kernel) return fail(cudaErrorInvalidValue);
    switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
        // An H100 allows up to 227 KB per block, and only after this opt-in.
        if (value < 0 || static_cast<std::size_t>(value) > max_dynamic_shared) return fail(cudaErrorInvalidValue);
        {
            std::lock_guard lock(st().m);
            st().dynamic_shared_limit[kernel] = value;
        }
        return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
        return value >= -1 && value <= 100 ? cudaSuccess : fail(cudaErrorInvalidValue);
    }
    return fail(cudaErrorInvalidValue);
}

// ---- stream capture and graphs ----------------------------------------------
// A graph is the list of work a capture recorded; an executable graph is a
// copy of it. The nodes run in the order they were issued (one stream: the
// dependencies a GPU would track are that order).
struct CUgraph_st {
    std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> nodes;
};

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (stream == nullptr) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot be captured
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return fail(cudaErrorInvalidValue);
    std::lock_guard lock(st().m);
    if (st().captures.count(stream)) return fail(cudaErrorIllegalState);
    st().captures.emplace(stream, capture{mode, std::this_thread::get_id(), false, {}});
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    if (!graph) return fail(cudaErrorInvalidValue);
    *graph = nullptr;
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard lock(st().m);
    auto it = st().captures.find(stream);
    if (it == st().captures.end()) return fail(cudaErrorIllegalState);
    if (it->second.mode != cudaStreamCaptureModeRelaxed && it->second.thread != std::this_thread::get_id())
        return fail(cudaErrorStreamCaptureUnmatched);
    capture c = std::move(it->second);
    st().captures.erase(it);
    if (c.invalidated) return fail(cudaErrorStreamCaptureInvalidated);
    *graph = new CUgraph_st{std::move(c.nodes)};
    st().graphs.insert(*graph);
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
    if (!status) return fail(cudaErrorInvalidValue);
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard lock(st().m);
    auto it = st().captures.find(stream);
    *status = it == st().captures.end() ? cudaStreamCaptureStatusNone
              : it->second.invalidated  ? cudaStreamCaptureStatusInvalidated
                                        : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, std::size_t* count) {
    if (!count) return fail(cudaErrorInvalidValue);
    std::lock_guard lock(st().m);
    if (!st().graphs.count(graph)) return fail(cudaErrorInvalidResourceHandle);
    if (nodes) return fail(cudaErrorNotSupported);  // the simulator reports the count only
    *count = graph->nodes.size();
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    if (!exec) return fail(cudaErrorInvalidValue);
    *exec = nullptr;
    TINYLLM_SIM_RETURN_IF_STICKY();
    std::lock_guard lock(st().m);
    if (!st().graphs.count(graph)) return fail(cudaErrorInvalidResourceHandle);
    *exec = new CUgraphExec_st{graph->nodes};
    st().graph_execs.insert(*exec);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    {
        std::lock_guard lock(st().m);
        if (!st().graph_execs.count(exec)) return fail(cudaErrorInvalidResourceHandle);
    }
    bool captured = false;
    if (const cudaError_t e = tinyllm::sim::runtime::route(stream, &captured); e != cudaSuccess) return fail(e);
    for (const auto& node : exec->nodes) {
        if (captured) {
            tinyllm::sim::runtime::record(stream, node);
        } else {
            node();
            if (sticky() != cudaSuccess) break;  // a fault stops the graph, as it stops a stream
        }
    }
    return sticky() != cudaSuccess ? fail(sticky()) : cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    std::lock_guard lock(st().m);
    if (!st().graph_execs.erase(exec)) return fail(cudaErrorInvalidResourceHandle);
    delete exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    std::lock_guard lock(st().m);
    if (!st().graphs.erase(graph)) return fail(cudaErrorInvalidResourceHandle);
    delete graph;
    return cudaSuccess;
}

cudaError_t tinyllm_sim_stream_work(cudaStream_t stream, std::function<void()> work) {
    TINYLLM_SIM_RETURN_IF_STICKY();
    if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    bool captured = false;
    if (const cudaError_t e = tinyllm::sim::runtime::route(stream, &captured); e != cudaSuccess) return fail(e);
    if (captured) {
        tinyllm::sim::runtime::record(stream, [w = std::move(work)] {
            if (sticky() == cudaSuccess) w();
        });
    } else {
        work();
    }
    return cudaSuccess;
}
