// tinyllm/cuda/device_buffer.cuh — GPU memory that frees itself, and copies.
//
//     tinyllm::cuda::device_buffer<float> x(n);     // cudaMalloc, freed by the destructor
//     tinyllm::cuda::copy_to_device(x, host_vector);
//     kernel<<<...>>>(x.view({rows, cols}));          // a (rows, cols) tensor_view on the device
//     std::vector<float> back = tinyllm::cuda::to_host(x);
//
// A device_buffer owns n elements of T in device memory. It is move-only (two
// owners would free the memory twice) and every CUDA call it makes is checked.
// poison() fills it with 0xFF bytes, which is NaN for float, bfloat16 and
// float16: tests poison outputs before a kernel runs, so an element the kernel
// forgot to write shows up as NaN instead of a stale correct-looking value.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace tinyllm::cuda {

template <class T>
class device_buffer {
public:
    device_buffer() = default;
    explicit device_buffer(std::size_t count) : count_(count) {
        if (count_ > 0) TINYLLM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), count_ * sizeof(T)));
    }
    ~device_buffer() {
        if (data_) (void)cudaFree(data_);  // never throw from a destructor
    }
    device_buffer(device_buffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
    device_buffer& operator=(device_buffer&& other) noexcept {
        if (this != &other) {
            if (data_) (void)cudaFree(data_);
            data_ = std::exchange(other.data_, nullptr);
            count_ = std::exchange(other.count_, 0);
        }
        return *this;
    }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;

    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return count_; }
    std::size_t bytes() const { return count_ * sizeof(T); }

    // A contiguous tensor view of the buffer; the shape must cover it exactly.
    template <std::size_t Rank>
    tensor_view<T, Rank> view(const extents<Rank>& shape) {
        TINYLLM_EXPECT(static_cast<std::size_t>(shape.product()) == count_, "a view of shape ", to_string(shape),
                       " needs ", shape.product(), " elements but the buffer holds ", count_);
        return {data_, shape};
    }
    template <std::size_t Rank>
    tensor_view<const T, Rank> view(const extents<Rank>& shape) const {
        return const_cast<device_buffer*>(this)->view(shape);
    }

    // Fill with 0xFF bytes (NaN in every floating-point type we use).
    void poison(cudaStream_t stream = nullptr) {
        if (count_ > 0) TINYLLM_CUDA_CHECK(cudaMemsetAsync(data_, 0xFF, bytes(), stream));
    }

private:
    T* data_ = nullptr;
    std::size_t count_ = 0;
};

// Host -> device. The buffer must have exactly as many elements as the source.
template <class T>
void copy_to_device(device_buffer<T>& dst, std::span<const T> src) {
    TINYLLM_EXPECT(dst.size() == src.size(), "copy_to_device: the buffer holds ", dst.size(),
                   " elements but the source has ", src.size());
    if (!src.empty()) TINYLLM_CUDA_CHECK(cudaMemcpy(dst.data(), src.data(), dst.bytes(), cudaMemcpyHostToDevice));
}
template <class T>
void copy_to_device(device_buffer<T>& dst, const std::vector<T>& src) {
    copy_to_device(dst, std::span<const T>(src));
}

// A new device buffer holding a copy of host data.
template <class T>
device_buffer<T> to_device(std::span<const T> src) {
    device_buffer<T> dst(src.size());
    copy_to_device(dst, src);
    return dst;
}
template <class T>
device_buffer<T> to_device(const std::vector<T>& src) {
    return to_device(std::span<const T>(src));
}

// Device -> host. Synchronous: when it returns, the data is on the host (and
// any fault of an earlier kernel has been reported as a cuda_error).
template <class T>
void copy_to_host(std::span<T> dst, const device_buffer<T>& src) {
    TINYLLM_EXPECT(dst.size() == src.size(), "copy_to_host: the buffer holds ", src.size(),
                   " elements but the destination has room for ", dst.size());
    if (!dst.empty()) TINYLLM_CUDA_CHECK(cudaMemcpy(dst.data(), src.data(), src.bytes(), cudaMemcpyDeviceToHost));
}
template <class T>
std::vector<T> to_host(const device_buffer<T>& src) {
    std::vector<T> dst(src.size());
    copy_to_host(std::span<T>(dst), src);
    return dst;
}

}  // namespace tinyllm::cuda
