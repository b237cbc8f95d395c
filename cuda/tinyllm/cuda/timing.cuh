// tinyllm/cuda/timing.cuh — timing GPU work honestly.
//
// Three mistakes make GPU timings lie: timing on the host (launches are
// asynchronous, so the host clock measures the launch, not the work), timing
// one run (the first includes start-up costs, any one run is noisy), and
// re-reading the same small inputs from a warm L2 cache (on an H100 the 50 MB
// L2 is much faster than HBM, so repeats look better than real use).
//
// time_gpu() therefore
//   1. runs the work `warmup` times untimed,
//   2. before each of `repeats` timed runs, overwrites a buffer twice the size
//      of the L2 cache (flushing the inputs out of it),
//   3. times each run alone with CUDA events on the stream, and
//   4. reports the median (and min and max) — robust to the odd slow run —
//      with the bandwidth (bytes / time) or throughput (flops / time) it implies.
//
// The result is a tinyllm::timing_result (tinyllm/timing.hpp), printed with
// print_results or written with write_json like any CPU timing.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/timing.hpp>

#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

namespace tinyllm::cuda {

struct timing_options {
    int warmup = 3;
    int repeats = 20;
    bool flush_l2 = true;
    cudaStream_t stream = nullptr;
};

namespace detail {

// A buffer twice the L2 size, written between timed runs to evict their data.
class l2_flusher {
public:
    l2_flusher() {
        int device = 0, l2 = 0;
        TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
        TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
        bytes_ = 2 * static_cast<std::size_t>(l2 > 0 ? l2 : (1 << 20));
        TINYLLM_CUDA_CHECK(cudaMalloc(&buffer_, bytes_));
    }
    ~l2_flusher() { (void)cudaFree(buffer_); }
    l2_flusher(const l2_flusher&) = delete;
    l2_flusher& operator=(const l2_flusher&) = delete;
    void flush(cudaStream_t stream) { TINYLLM_CUDA_CHECK(cudaMemsetAsync(buffer_, 0x5A, bytes_, stream)); }

private:
    void* buffer_ = nullptr;
    std::size_t bytes_ = 0;
};

class event_pair {
public:
    event_pair() {
        TINYLLM_CUDA_CHECK(cudaEventCreate(&start));
        TINYLLM_CUDA_CHECK(cudaEventCreate(&stop));
    }
    ~event_pair() {
        (void)cudaEventDestroy(start);
        (void)cudaEventDestroy(stop);
    }
    event_pair(const event_pair&) = delete;
    event_pair& operator=(const event_pair&) = delete;
    cudaEvent_t start = nullptr, stop = nullptr;
};

}  // namespace detail

// Time `work()` (which launches GPU work on options.stream) and summarise.
template <class Work>
timing_result time_gpu(std::string name, Work&& work, double bytes, double flops = 0,
                       const timing_options& options = {}) {
    TINYLLM_EXPECT(options.repeats >= 1, "time_gpu needs at least one repeat; got ", options.repeats);
    for (int i = 0; i < options.warmup; ++i) work();
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(options.stream));

    detail::l2_flusher flusher;
    detail::event_pair events;
    std::vector<double> us;
    for (int r = 0; r < options.repeats; ++r) {
        if (options.flush_l2) flusher.flush(options.stream);
        TINYLLM_CUDA_CHECK(cudaEventRecord(events.start, options.stream));
        work();
        TINYLLM_CUDA_CHECK(cudaEventRecord(events.stop, options.stream));
        TINYLLM_CUDA_CHECK(cudaEventSynchronize(events.stop));
        float ms = 0;
        TINYLLM_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start, events.stop));
        us.push_back(1e3 * ms);
    }
    return summarize(std::move(name), std::move(us), bytes, flops);
}

}  // namespace tinyllm::cuda
