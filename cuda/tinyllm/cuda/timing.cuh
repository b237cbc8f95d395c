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
//   2. before each of `repeats` timed runs, reads a buffer twice the size of
//      the L2 cache (flushing the inputs out of it),
//   3. times each run alone with CUDA events on the stream, and
//   4. reports the median (and min and max) — robust to the odd slow run —
//      with the bandwidth (bytes / time) or throughput (flops / time) it implies.
//
// Why the flush reads and does not write. The L2 is a write-back cache: a
// line that was written stays in it, dirty, until something evicts it, and
// the eviction writes it to memory. Runs A to E flushed by writing the buffer
// (cudaMemsetAsync, as triton's do_bench and many harnesses do), which leaves
// the L2 full of dirty lines: the timed work then pays, for every line it
// brings in, a write of the line it displaces — up to the L2's size of extra
// traffic (the H200 of runs A to E: 60 MiB, 63 MB, about 16 µs at 4 TB/s). That
// is noise for a 1 ms model step but up to a doubling of a read smaller than the
// L2 (greedy over 64 x 128256 floats: 32.8 MB, ~8 µs read once). Reading
// the buffer evicts the inputs just as well and leaves clean lines, which the
// timed work drops for free. Both modes are kept (l2_flush below, chosen with
// TINYLLM_BENCH_L2_FLUSH=read|write|none, `tinyllm bench --l2-flush`), so a run
// can be compared with the earlier ones; bench/baselines/_timing.py flushes
// PyTorch's runs the same way.
//
// The result is a tinyllm::timing_result (tinyllm/timing.hpp), printed with
// print_results or written with write_json like any CPU timing.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/timing.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tinyllm::cuda {

// How time_gpu empties the L2 cache before each timed run (see the top).
enum class l2_flush {
    read,   // read a buffer twice the L2's size: inputs evicted, clean lines left (the default)
    write,  // write it (cudaMemsetAsync): inputs evicted, dirty lines left; runs A to E
    none,   // keep the cache warm: repeats re-read what the last run left in it
};

inline std::string_view to_string(l2_flush f) {
    return f == l2_flush::read ? "read" : f == l2_flush::write ? "write" : "none";
}

inline l2_flush parse_l2_flush(std::string_view text) {
    if (text == "read") return l2_flush::read;
    if (text == "write") return l2_flush::write;
    if (text == "none") return l2_flush::none;
    throw tinyllm::error("L2 flush mode must be read, write or none; got '" + std::string(text) + "'");
}

// TINYLLM_BENCH_L2_FLUSH, else read.
inline l2_flush l2_flush_from_environment() {
    const char* text = std::getenv("TINYLLM_BENCH_L2_FLUSH");
    if (!text || !*text) return l2_flush::read;
    try {
        return parse_l2_flush(text);
    } catch (const tinyllm::error& e) {
        throw tinyllm::error(std::string("TINYLLM_BENCH_L2_FLUSH: ") + e.what());
    }
}

struct timing_options {
    int warmup = 3;
    int repeats = 20;
    l2_flush flush = l2_flush_from_environment();
    cudaStream_t stream = nullptr;
};

namespace detail {

// Reads n 16-byte words, grid-stride. The XOR of each word's four equal 32-bit
// halves of the fill is 0, so the store never happens; the compiler cannot
// know that, so it keeps every load. (A template, as every kernel in a header:
// several translation units include it.)
template <class Word>
__global__ void l2_flush_read_kernel(const Word* __restrict__ words, std::size_t n, unsigned* sink) {
    unsigned acc = 0;
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const Word w = words[i];
        acc ^= w.x ^ w.y ^ w.z ^ w.w;
    }
    if (acc == 0x9E3779B9u) *sink = acc;
}

// A buffer twice the L2 size, read (or written) between timed runs to evict their data.
class l2_flusher {
public:
    l2_flusher() {
        int device = 0, l2 = 0;
        TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
        TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
        TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device));
        bytes_ = 2 * static_cast<std::size_t>(l2 > 0 ? l2 : (1 << 20));
        bytes_ = (bytes_ + 15) / 16 * 16;
        TINYLLM_CUDA_CHECK(cudaMalloc(&buffer_, bytes_ + 16));
        TINYLLM_CUDA_CHECK(cudaMemset(buffer_, 0x5A, bytes_ + 16));
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    ~l2_flusher() { (void)cudaFree(buffer_); }
    l2_flusher(const l2_flusher&) = delete;
    l2_flusher& operator=(const l2_flusher&) = delete;
    template <class Word = uint4>  // compiled only where called (launch.cuh)
    void flush(l2_flush mode, cudaStream_t stream) {
        if (mode == l2_flush::write) {
            TINYLLM_CUDA_CHECK(cudaMemsetAsync(buffer_, 0x5A, bytes_, stream));
        } else if (mode == l2_flush::read) {
            auto* words = static_cast<const Word*>(buffer_);
            auto* sink = reinterpret_cast<unsigned*>(static_cast<char*>(buffer_) + bytes_);
            launch(l2_flush_read_kernel<Word>, static_cast<unsigned>(4 * (sms_ > 0 ? sms_ : 1)), 256, 0, stream,
                   words, bytes_ / sizeof(Word), sink);
            TINYLLM_CUDA_CHECK_LAUNCH();
        }
    }

private:
    void* buffer_ = nullptr;
    std::size_t bytes_ = 0;
    int sms_ = 0;
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
        flusher.flush(options.flush, options.stream);
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
