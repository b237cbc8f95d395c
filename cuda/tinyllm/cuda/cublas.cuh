// tinyllm/cuda/cublas.cuh — cuBLAS for the matrix products, with every status
// checked and the handle owned.
//
// tinyllm writes its own element-wise and reduction kernels, but leaves dense
// matrix products to cuBLAS: a GEMM that reaches the tensor cores' peak is a
// project of its own, and the MLP's interesting part for us is the work
// *between* the products (see ffn.cuh). Two things make cuBLAS safe to use:
//
//   * cublas_handle owns a cublasHandle_t (created in the constructor,
//     destroyed in the destructor, move-only), so no handle leaks on an
//     exception;
//   * TINYLLM_CUBLAS_CHECK(call) turns a failed status into a
//     tinyllm::cublas_error naming the status, the call, the file and the line:
//
//       tinyllm: cuBLAS error CUBLAS_STATUS_INVALID_VALUE (an invalid numeric value
//         was used as an argument) in cublasGemmEx(...) at cuda/tinyllm/cuda/ffn.cuh:120
//
// cuda_data_type<T>() maps tinyllm's element types to cuBLAS's cudaDataType.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>

#include <cublas_v2.h>
#include <library_types.h>

#include <string>
#include <type_traits>
#include <utility>

namespace tinyllm {

// A failed cuBLAS call. status() is the cublasStatus_t that was returned.
class cublas_error : public error {
public:
    cublas_error(cublasStatus_t status, const std::string& message) : error(message), status_(status) {}
    cublasStatus_t status() const noexcept { return status_; }

private:
    cublasStatus_t status_;
};

namespace detail {

inline void cublas_check(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    throw cublas_error(status, cat("tinyllm: cuBLAS error ", cublasGetStatusName(status), " (",
                                   cublasGetStatusString(status), ") in ", call, "\n  at ", short_path(file), ":",
                                   line));
}

}  // namespace detail
}  // namespace tinyllm

#define TINYLLM_CUBLAS_CHECK(call) ::tinyllm::detail::cublas_check((call), #call, __FILE__, __LINE__)

namespace tinyllm::cuda {

// An owned cuBLAS handle. Create one per thread (a handle is not meant to be
// shared between host threads) and pass it to the products that need it.
class cublas_handle {
public:
    cublas_handle() { TINYLLM_CUBLAS_CHECK(cublasCreate(&handle_)); }
    ~cublas_handle() {
        if (handle_) (void)cublasDestroy(handle_);  // never throw from a destructor
    }
    cublas_handle(cublas_handle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    cublas_handle& operator=(cublas_handle&& other) noexcept {
        if (this != &other) {
            if (handle_) (void)cublasDestroy(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    cublas_handle(const cublas_handle&) = delete;
    cublas_handle& operator=(const cublas_handle&) = delete;

    cublasHandle_t get() const { return handle_; }

private:
    cublasHandle_t handle_ = nullptr;
};

// The cudaDataType cuBLAS uses for a tinyllm element type.
template <class T>
constexpr cudaDataType_t cuda_data_type() {
    if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
    else if constexpr (std::is_same_v<T, bfloat16>) return CUDA_R_16BF;
    else if constexpr (std::is_same_v<T, float16>) return CUDA_R_16F;
    else static_assert(sizeof(T) == 0, "tinyllm::cuda::cuda_data_type: float, bfloat16 or float16 only");
}

}  // namespace tinyllm::cuda
