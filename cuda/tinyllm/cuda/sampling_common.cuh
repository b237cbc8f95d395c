// tinyllm/cuda/sampling_common.cuh — what every rung of the CUDA sampling
// ladder shares (the ladder itself: sampling.cuh). On the device: the per-row
// status, the row maximum and argmax, 64-bit block sums, the radix selection
// (the shared histogram, the per-thread bin cache, the one-warp pick) and the
// draw's first crossing. On the host: the status buffer of a stream and the
// checks of a call's logits and output, with the CPU's messages.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/sampling.hpp>
#include <tinyllm/sampling_math.hpp>
#include <tinyllm/tensor.hpp>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace tinyllm::cuda {

// Whether a launcher copies the per-row status back and throws on bad rows.
enum class sampling_check { sync, none };

namespace detail {

inline constexpr int sampling_threads = 512;
inline constexpr int sampling_items = 4;  // contiguous elements per thread in the draw's scan

// Per-row status written by the kernels.
// row_overflow: a processor's result overflowed to +inf or NaN (a tiny temperature or
// penalty, a large bias); row_underflow: every logit of a row divided by a tiny
// temperature overflowed to -inf. The CPU processors throw in both cases.
enum : int { row_ok = 0, row_bad_logit = 1, row_all_masked = 2, row_bad_token = 3, row_overflow = 4, row_underflow = 5 };

struct argmax_pair {
    float value;
    int index;
};
struct argmax_op {
    __device__ argmax_pair operator()(const argmax_pair& a, const argmax_pair& b) const {
        if (a.value > b.value) return a;
        if (b.value > a.value) return b;
        return a.index <= b.index ? a : b;
    }
};
struct max_op {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

TINYLLM_DEVICE bool is_bad_logit(float z) { return isnan(z) || z == INFINITY; }

// The scaled logit z / T of element i (T = 1 leaves z unchanged, exactly).
template <class T>
TINYLLM_DEVICE float scaled(const T* row, index_t i, float temperature) {
    return temperature_scaled(to_float(row[i]), temperature);
}

// The row maximum of z / T and whether any z / T is NaN or +inf (block-wide):
// a NaN or +inf logit, or a finite one that a tiny T overflows.
template <int Threads, class T>
__device__ float row_max_checked(const T* row, index_t V, float temperature, bool& bad) {
    using reduce = cub::BlockReduce<float, Threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ float s_max;
    float m = -INFINITY;
    bool my_bad = false;
    for (index_t i = threadIdx.x; i < V; i += Threads) {
        const float x = temperature_scaled(to_float(row[i]), temperature);
        my_bad |= is_bad_logit(x);
        m = fmaxf(m, x);
    }
    bad = __syncthreads_or(my_bad) != 0;
    const float block_max = reduce(storage).Reduce(m, max_op{});
    if (threadIdx.x == 0) s_max = block_max;
    __syncthreads();
    return s_max;
}

// The first index of the row maximum (lowest index among ties).
template <int Threads, class T>
__device__ int row_argmax(const T* row, index_t V) {
    using reduce = cub::BlockReduce<argmax_pair, Threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ int s_index;
    argmax_pair best{-INFINITY, static_cast<int>(V)};
    for (index_t i = threadIdx.x; i < V; i += Threads) {
        const float z = to_float(row[i]);
        if (z > best.value || (z == best.value && static_cast<int>(i) < best.index)) best = {z, static_cast<int>(i)};
    }
    const argmax_pair r = reduce(storage).Reduce(best, argmax_op{});
    if (threadIdx.x == 0) s_index = r.index;
    __syncthreads();
    return s_index;
}

// Sum of a 64-bit integer over the block (exact, any order).
template <int Threads>
__device__ std::uint64_t block_sum(std::uint64_t v) {
    using reduce = cub::BlockReduce<unsigned long long, Threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ unsigned long long s_sum;
    const unsigned long long total = reduce(storage).Sum(static_cast<unsigned long long>(v));
    if (threadIdx.x == 0) s_sum = total;
    __syncthreads();
    const std::uint64_t result = s_sum;
    __syncthreads();
    return result;
}

// A 256-bin histogram of 64-bit sums, added to in shared memory with 32-bit
// atomics. A 32-bit atomicAdd on shared memory is one instruction; a 64-bit one
// is a compare-and-swap loop, which threads adding to the same bin retry. v3's
// radix passes kept the shared-memory pipes ~50% busy at 3% of DRAM's bandwidth
// (ncu, H200); with 32-bit adds they took 15% less time. The sum is kept as
// two 32-bit words: `lo` gets the low halves, and an adder whose add wraps `lo`
// round (it sees the old value) carries one into `hi`, with the high halves.
// Every wrap is counted exactly once, so hi * 2^32 + lo is the exact sum.
struct shared_hist64 {
    unsigned lo[256];
    unsigned hi[256];

    template <int Threads>
    __device__ void clear() {
        for (int i = threadIdx.x; i < 256; i += Threads) lo[i] = hi[i] = 0;
    }
    // Adds weight w[k] to bin b[k] for k < N (a zero weight adds nothing). Every
    // low-half add is issued before any of their old values is used, so the N
    // shared-memory round trips overlap instead of following one another (each
    // carry test waits for its add's old value).
    template <int N>
    __device__ void add_batch(const std::uint32_t (&b)[N], const std::uint64_t (&w)[N]) {
        unsigned old[N];
#pragma unroll
        for (int k = 0; k < N; ++k) old[k] = w[k] ? atomicAdd(&lo[b[k]], static_cast<unsigned>(w[k])) : 0u;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const auto w_lo = static_cast<unsigned>(w[k]), w_hi = static_cast<unsigned>(w[k] >> 32);
            const unsigned carry = old[k] + w_lo < old[k] ? 1u : 0u;  // this add wrapped lo round
            if (w_hi + carry) atomicAdd(&hi[b[k]], w_hi + carry);
        }
    }
    __device__ void add(std::uint32_t b, std::uint64_t w) {
        const std::uint32_t bins[1] = {b};
        const std::uint64_t weights[1] = {w};
        add_batch(bins, weights);
    }
    // After a barrier that follows every add: bin b's sum.
    __device__ unsigned long long get(int b) const {
        return (static_cast<unsigned long long>(hi[b]) << 32) | lo[b];
    }
    // Every bin's sum into out[256] (the plain array radix_pick reads).
    template <int Threads>
    __device__ void copy_to(unsigned long long* out) const {
        for (int i = threadIdx.x; i < 256; i += Threads) out[i] = get(i);
    }
};

// A thread's few most recent histogram bins, summed in registers and added to
// the shared histogram only when evicted or flushed. The logits of one row
// share few top key bytes (all of them can fall into 2-4 bins of the first
// pass), and 512 threads adding into the same shared word would serialize;
// with the cache each thread adds to a hot bin about once per pass. Every
// weight still reaches the histogram exactly once (integer sums: any order).
struct bin_cache {
    static constexpr int slots = 4;
    static constexpr std::uint32_t empty = 0xffffffffu;
    std::uint32_t bin[slots];
    unsigned long long sum[slots];

    __device__ bin_cache() {
#pragma unroll
        for (int s = 0; s < slots; ++s) {
            bin[s] = empty;
            sum[s] = 0;
        }
    }
    __device__ void add(shared_hist64& hist, std::uint32_t b, unsigned long long w) {
#pragma unroll
        for (int s = 0; s < slots; ++s) {
            if (bin[s] == b) {
                sum[s] += w;
                return;
            }
        }
        if (bin[slots - 1] != empty) hist.add(bin[slots - 1], sum[slots - 1]);  // evict the oldest
#pragma unroll
        for (int s = slots - 1; s > 0; --s) {
            bin[s] = bin[s - 1];
            sum[s] = sum[s - 1];
        }
        bin[0] = b;
        sum[0] = w;
    }
    __device__ void flush(shared_hist64& hist) {
#pragma unroll
        for (int s = 0; s < slots; ++s)
            if (bin[s] != empty) hist.add(bin[s], sum[s]);
    }
};

// radix_pick by the 32 lanes of one warp (the same byte and `above` as the
// CPU's sequential walk): lane l sums bins 255 - 8l down to 248 - 8l, a warp
// scan from the top finds the lane whose bins reach the target, and that lane
// walks its 8 bins. A serial walk of 256 bins by one thread costs a few
// microseconds of dependent loads, paid once per radix pass. `total` gets the
// sum of all bins.
template <class Count>  // unsigned long long, or unsigned (v4's block counts)
__device__ std::uint32_t radix_pick_warp(const Count* hist, std::uint64_t target, std::uint64_t& above,
                                         std::uint64_t& total) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    const int top = 255 - 8 * lane;
    unsigned long long mine = 0;
    for (int i = 0; i < 8; ++i) mine += hist[top - i];
    unsigned long long inclusive = mine;
    for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned long long v = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += v;
    }
    total = __shfl_sync(0xffffffffu, inclusive, 31);
    const unsigned crossing = __ballot_sync(0xffffffffu, above + inclusive >= target);
    if (crossing == 0) {  // unreachable when target <= the total weight (as radix_pick)
        above += total;
        return 0;
    }
    const int first = __ffs(static_cast<int>(crossing)) - 1;
    std::uint32_t chosen = 0;
    unsigned long long acc = above + inclusive - mine;  // lane `first`: the weight above its bins
    if (lane == first) {
        for (int i = 0; i < 8; ++i) {
            const unsigned long long h = hist[top - i];
            if (acc + h >= target) {
                chosen = static_cast<std::uint32_t>(top - i);
                break;
            }
            acc += h;
        }
    }
    chosen = __shfl_sync(0xffffffffu, chosen, first);
    above = __shfl_sync(0xffffffffu, acc, first);
    return chosen;
}

// Radix selection: the largest key K such that the weight of the elements with
// key >= K (among those with key >= lower) is at least `target` (>= 1, and at
// most the total weight). key_of(i) and weight_of(i) describe element i. v2
// picks each byte with thread 0's serial walk (radix_pick, the CPU's code);
// WarpPick (v4's last block) with one warp (radix_pick_warp, the same byte).
// A caller that knows the top `common_bytes` bytes of every key it weighs
// (those of `common`; v5's last block, whose candidates lie within an eighth
// of a nat) skips their passes: no weighed key is above that prefix.
template <int Threads, bool WarpPick = false, class KeyOf, class WeightOf>
__device__ std::uint32_t radix_select(index_t V, std::uint64_t target, std::uint32_t lower, KeyOf key_of,
                                      WeightOf weight_of, std::uint32_t common = 0, int common_bytes = 0) {
    __shared__ shared_hist64 sums;
    __shared__ unsigned long long hist[256];
    __shared__ std::uint32_t s_prefix;
    __shared__ unsigned long long s_above;
    std::uint32_t mask = common_bytes > 0 ? ~0u << (32 - 8 * common_bytes) : 0u;
    std::uint32_t prefix = common & mask;
    std::uint64_t above = 0;  // weight of the elements whose key is above the chosen prefix
    for (int shift = 24 - 8 * common_bytes; shift >= 0; shift -= 8) {
        sums.clear<Threads>();
        __syncthreads();
        bin_cache cache;
        for (index_t i = threadIdx.x; i < V; i += Threads) {
            const std::uint32_t k = key_of(i);
            if (k >= lower && (k & mask) == prefix) {
                const std::uint64_t w = weight_of(i);
                if (w) cache.add(sums, (k >> shift) & 0xffu, static_cast<unsigned long long>(w));
            }
        }
        cache.flush(sums);
        __syncthreads();
        sums.copy_to<Threads>(hist);
        __syncthreads();
        if constexpr (WarpPick) {
            if (threadIdx.x < 32) {
                std::uint64_t acc = above, total = 0;
                const std::uint32_t chosen = radix_pick_warp(hist, target, acc, total);
                if (threadIdx.x == 0) {
                    s_above = acc;
                    s_prefix = prefix | (chosen << shift);
                }
            }
        } else if (threadIdx.x == 0) {
            std::uint64_t acc = above;
            const std::uint32_t chosen = radix_pick(hist, target, acc);  // shared with the CPU (sampling_math.hpp)
            s_above = acc;
            s_prefix = prefix | (chosen << shift);
        }
        __syncthreads();
        above = s_above;
        prefix = s_prefix;
        mask |= 0xffu << shift;
        __syncthreads();
    }
    return prefix;
}

// The first index i (in row order) with weight_of(0) + ... + weight_of(i) > t,
// where t < the total weight. Tiles of Threads * Items elements; each thread
// owns Items contiguous ones; an exact integer block scan finds the crossing.
template <int Threads, int Items, class WeightOf>
__device__ int first_crossing(index_t V, std::uint64_t t, WeightOf weight_of) {
    using scan = cub::BlockScan<unsigned long long, Threads>;
    __shared__ typename scan::TempStorage storage;
    __shared__ int s_found;
    if (threadIdx.x == 0) s_found = -1;
    std::uint64_t running = 0;  // the same in every thread
    for (index_t base = 0; base < V; base += static_cast<index_t>(Threads) * Items) {
        const index_t first = base + static_cast<index_t>(threadIdx.x) * Items;
        std::uint64_t w[Items];
        unsigned long long local = 0;
        for (int j = 0; j < Items; ++j) {
            w[j] = first + j < V ? weight_of(first + j) : 0;
            local += w[j];
        }
        unsigned long long before = 0, tile = 0;
        scan(storage).ExclusiveSum(local, before, tile);
        if (running + before <= t && t < running + before + local) {  // exactly one thread
            std::uint64_t c = running + before;
            for (int j = 0; j < Items; ++j) {
                c += w[j];
                if (c > t) {
                    s_found = static_cast<int>(first + j);
                    break;
                }
            }
        }
        running += tile;
        __syncthreads();
        if (running > t) break;  // uniform across the block
    }
    return s_found;
}

// ---- host side -----------------------------------------------------------------

// The device buffer for the row status of a call on `stream`: one per host
// thread and stream (grown as needed, kept). Calls on two streams may run at
// the same time, so they must not share one: the other stream's kernel could
// overwrite a status before this call reads it back. (A call on the same stream
// is ordered after this one's read-back.)
inline int* status_buffer(index_t rows, cudaStream_t stream) {
    thread_local std::map<cudaStream_t, device_buffer<int>> buffers;
    device_buffer<int>& buffer = buffers[stream];
    if (buffer.size() < static_cast<std::size_t>(rows)) {
        // An unchecked call's kernel may still write the old buffer.
        if (buffer.size() > 0) TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        buffer = device_buffer<int>(static_cast<std::size_t>(rows));
    }
    return buffer.data();
}

inline void check_status(const int* d_status, index_t rows, const char* what, sampling_check check,
                         cudaStream_t stream) {
    TINYLLM_CUDA_CHECK_LAUNCH();
    if (check == sampling_check::none) return;
    std::vector<int> status(static_cast<std::size_t>(rows));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(status.data(), d_status, status.size() * sizeof(int), cudaMemcpyDeviceToHost,
                                       stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (index_t b = 0; b < rows; ++b) {
        switch (status[static_cast<std::size_t>(b)]) {
            case row_ok: break;
            case row_bad_logit:
                TINYLLM_FAIL(what, ": row ", b,
                             " has a NaN or +inf logit, or one that the temperature divides to +inf;",
                             " logits must be finite or -inf (and a T that small is greedy decoding: T = 0)");
            case row_all_masked:
                TINYLLM_FAIL(what, ": every logit of row ", b, " is -inf (all tokens banned or filtered, or every "
                             "logit divided by a tiny temperature overflows to -inf: use a larger T, or T = 0)");
            case row_bad_token:
                TINYLLM_FAIL(what, ": row ", b, " of generated holds a token outside [0, V)");
            case row_overflow:
                TINYLLM_FAIL(what, ": a logit of row ", b, " overflows to +inf (or NaN) under the ", what,
                             "; use a smaller penalty or bias, or a larger T (T = 0 is greedy decoding)");
            case row_underflow:
                TINYLLM_FAIL(what, ": every logit of row ", b,
                             " divided by T overflows to -inf; use a larger T, or T = 0 for greedy decoding");
            default: TINYLLM_FAIL(what, ": row ", b, " has an unknown status ", status[static_cast<std::size_t>(b)]);
        }
    }
}

template <class T>
void check_logits(tensor_view<T, 2> logits, const char* what) {  // (B, V)
    ::tinyllm::detail::check_vocab(logits.extent(1), what);
    TINYLLM_EXPECT(logits.stride(1) == 1, what, ": logits rows must be contiguous (stride of V is ",
                   logits.stride(1), ")");
    TINYLLM_EXPECT(logits.extent(1) < (index_t{1} << 31), what, ": V = ", logits.extent(1), " is too large");
    TINYLLM_EXPECT(logits.extent(0) == 0 || logits.data() != nullptr, what, ": the logits pointer is null");
    // A processor writes each row in place, a block's own: rows that share memory would be
    // written twice. The choosers only read (const T), and may read one row many times, as the
    // CPU's do.
    if constexpr (!std::is_const_v<T>)
        TINYLLM_EXPECT(::tinyllm::detail::distinct_elements(logits), what, ": logits rows of ", logits.extent(1),
                       " elements ", logits.stride(0), " apart overlap");
}

// out (B) beside the logits (B, V) it is chosen from: one token per row, in memory of its own.
template <class T>
void check_out(tensor_view<token_id, 1> out, tensor_view<T, 2> logits, const char* what) {
    const index_t rows = logits.extent(0);
    TINYLLM_EXPECT(out.extent(0) == rows, what, ": out has ", out.extent(0), " entries but logits have ", rows,
                   " rows");
    TINYLLM_EXPECT(out.extent(0) <= 1 || out.stride(0) == 1, what, ": out must be contiguous");
    TINYLLM_EXPECT(!::tinyllm::detail::overlaps(out, logits), what,
                   ": out must not share memory with the logits (other blocks still read them)");
}

}  // namespace detail

}  // namespace tinyllm::cuda
