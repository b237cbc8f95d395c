// cub/device/device_scan.cuh — tinyllm's simulated GPU: cub::DeviceScan.
//
// Stands in for CUB's header of the same name (-DTINYLLM_CUDA=SIM). CUB's
// two-call protocol is kept: called with d_temp_storage == nullptr it only
// says how many bytes of temporary storage it needs; called again with that
// storage it scans. The scan itself runs in order on the stream (the
// simulator's streams run work as it is issued, or record it while captured),
// over device memory that must lie in live allocations (cudaErrorInvalidValue
// otherwise).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <iterator>

namespace cub {

struct DeviceScan {
    static constexpr std::size_t temp_bytes = 256;

    template <class In, class Out>
    static cudaError_t ExclusiveSum(void* d_temp_storage, std::size_t& temp_storage_bytes, In d_in, Out d_out,
                                    int num_items, cudaStream_t stream = nullptr) {
        return scan(d_temp_storage, temp_storage_bytes, d_in, d_out, num_items, stream, false);
    }
    template <class In, class Out>
    static cudaError_t InclusiveSum(void* d_temp_storage, std::size_t& temp_storage_bytes, In d_in, Out d_out,
                                    int num_items, cudaStream_t stream = nullptr) {
        return scan(d_temp_storage, temp_storage_bytes, d_in, d_out, num_items, stream, true);
    }

private:
    static bool device_range(const void* p, std::size_t bytes) {
        cudaPointerAttributes a{};
        if (bytes == 0) return true;
        if (cudaPointerGetAttributes(&a, p) != cudaSuccess || a.type != cudaMemoryTypeDevice) return false;
        return cudaPointerGetAttributes(&a, static_cast<const char*>(p) + bytes - 1) == cudaSuccess &&
               a.type == cudaMemoryTypeDevice;
    }
    template <class In, class Out>
    static cudaError_t scan(void* temp, std::size_t& temp_storage_bytes, In in, Out out, int n, cudaStream_t stream,
                            bool inclusive) {
        if (!temp) {
            temp_storage_bytes = temp_bytes;
            return cudaSuccess;
        }
        if (temp_storage_bytes < temp_bytes || !device_range(temp, temp_bytes) || n < 0) return cudaErrorInvalidValue;
        using T = typename std::iterator_traits<Out>::value_type;
        const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
        if (!device_range(&in[0], bytes) || !device_range(&out[0], bytes)) return cudaErrorInvalidValue;
        return tinyllm_sim_stream_work(stream, [=] {
            T running{};
            for (int i = 0; i < n; ++i) {
                const T v = static_cast<T>(in[i]);
                if (!inclusive) out[i] = running;
                running = running + v;
                if (inclusive) out[i] = running;
            }
        });
    }
};

}  // namespace cub
