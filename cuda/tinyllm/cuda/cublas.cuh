// tinyllm/cuda/cublas.cuh — cuBLAS for the matrix products, with every status
// checked, the handle owned, and the library loaded when first used.
//
// tinyllm writes its own element-wise and reduction kernels, but leaves dense
// matrix products to cuBLAS: a GEMM that reaches the tensor cores' peak is a
// project of its own, and the MLP's interesting part for us is the work
// *between* the products (see ffn.cuh). Two things make cuBLAS safe to use,
// and a third keeps it from costing programs that never call it:
//
//   * cublas_handle owns a cublasHandle_t (created in the constructor,
//     destroyed in the destructor, move-only), so no handle leaks on an
//     exception;
//   * TINYLLM_CUBLAS_CHECK(call) turns a failed status into a
//     tinyllm::cublas_error naming the status, the call, the file and the line:
//
//       tinyllm: cuBLAS error CUBLAS_STATUS_INVALID_VALUE (an invalid numeric value
//         was used as an argument) in detail::cublas_gemm_ex(...) at cuda/tinyllm/cuda/ffn.cuh:146
//
//   * the library is opened (dlopen) by the first call that needs it, not when
//     the program starts. cuBLAS brings cuBLASLt, half a gigabyte of library
//     whose start-up code touches about 100 MB of memory and takes 0.1 to 0.3 s
//     (on this project's 2-core development machine); linked as usual, every
//     program that includes these headers paid that at start, also `tinyllm
//     tokenize` and a test program that finds no GPU and stops. detail::cublas()
//     looks the six entry points tinyllm calls up once, by their exported names
//     (cublasCreate_v2, ...): first in libcublas.so.<major of the headers> on the loader's path,
//     then in the toolkit's library folder the build found (TINYLLM_CUBLAS_DIR,
//     set by tinyllm::cuda). A cuBLAS that cannot be found is a tinyllm::error
//     saying where it was looked for. On the simulated GPU the entry points are
//     the stand-ins of sim/src/cublas.cpp, linked as usual.
//
// cuda_data_type<T>() maps tinyllm's element types to cuBLAS's cudaDataType.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>

#include <cublas_v2.h>
#include <library_types.h>

#if !defined(TINYLLM_SIMULATED_GPU)
#include <dlfcn.h>
#endif

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

namespace cuda::detail {

// The cuBLAS entry points tinyllm calls. (Types spelled out: in C++ cuBLAS
// overloads cublasGemmEx, so &cublasGemmEx names no one function.)
struct cublas_api {
    cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
    cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
    const char* (*status_name)(cublasStatus_t) = nullptr;
    const char* (*status_string)(cublasStatus_t) = nullptr;
};

#if defined(TINYLLM_SIMULATED_GPU)
inline cublas_api load_cublas() {
    return {.create = &cublasCreate,
            .destroy = &cublasDestroy,
            .set_stream = &cublasSetStream,
            .gemm_ex = &cublasGemmEx,
            .status_name = &cublasGetStatusName,
            .status_string = &cublasGetStatusString};
}
#else
// Opens cuBLAS and looks its entry points up; throws tinyllm::error when it can't.
inline cublas_api load_cublas() {
    using ::tinyllm::detail::cat;
    const std::string soname = cat("libcublas.so.", CUBLAS_VER_MAJOR);
    std::string tried = soname;
    void* library = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    std::string why = library ? "" : dlerror();
#if defined(TINYLLM_CUBLAS_DIR)
    if (!library) {
        const std::string path = cat(TINYLLM_CUBLAS_DIR, "/", soname);
        library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        tried += cat(" (on the loader's path) and ", path);
        if (!library) why += cat("; ", dlerror());
    }
#endif
    if (!library)
        throw error(cat("tinyllm: cuBLAS could not be loaded: looked for ", tried, ": ", why,
                        "\n  (cuBLAS comes with the CUDA toolkit; put its library folder on LD_LIBRARY_PATH)"));
    cublas_api api;
    const auto find = [&](auto& entry, const char* name) {
        void* symbol = dlsym(library, name);
        if (!symbol)
            throw error(cat("tinyllm: ", soname, " has no function ", name, " (a cuBLAS older than its headers?)"));
        entry = reinterpret_cast<std::remove_reference_t<decltype(entry)>>(symbol);
    };
    find(api.create, "cublasCreate_v2");
    find(api.destroy, "cublasDestroy_v2");
    find(api.set_stream, "cublasSetStream_v2");
    find(api.gemm_ex, "cublasGemmEx");
    find(api.status_name, "cublasGetStatusName");
    find(api.status_string, "cublasGetStatusString");
    return api;  // the library stays open for the life of the process
}
#endif

// cuBLAS, loaded by the first call (thread-safe; a failed load is tried again by the next call).
inline const cublas_api& cublas() {
    static const cublas_api api = load_cublas();
    return api;
}

// The calls tinyllm makes, by their cuBLAS names in snake_case.
inline cublasStatus_t cublas_create(cublasHandle_t* handle) { return cublas().create(handle); }
inline cublasStatus_t cublas_destroy(cublasHandle_t handle) { return cublas().destroy(handle); }
inline cublasStatus_t cublas_set_stream(cublasHandle_t handle, cudaStream_t stream) {
    return cublas().set_stream(handle, stream);
}
// C = alpha op(A) op(B) + beta C, column-major, as cublasGemmEx.
inline cublasStatus_t cublas_gemm_ex(cublasHandle_t handle, cublasOperation_t op_a, cublasOperation_t op_b, int m,
                                     int n, int k, const void* alpha, const void* a, cudaDataType a_type, int lda,
                                     const void* b, cudaDataType b_type, int ldb, const void* beta, void* c,
                                     cudaDataType c_type, int ldc, cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    return cublas().gemm_ex(handle, op_a, op_b, m, n, k, alpha, a, a_type, lda, b, b_type, ldb, beta, c, c_type, ldc,
                            compute, algo);
}

}  // namespace cuda::detail

namespace detail {

inline void cublas_check(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    throw cublas_error(status, cat("tinyllm: cuBLAS error ", cuda::detail::cublas().status_name(status), " (",
                                   cuda::detail::cublas().status_string(status), ") in ", call, "\n  at ",
                                   short_path(file), ":", line));
}

}  // namespace detail
}  // namespace tinyllm

#define TINYLLM_CUBLAS_CHECK(call) ::tinyllm::detail::cublas_check((call), #call, __FILE__, __LINE__)

namespace tinyllm::cuda {

// An owned cuBLAS handle. Create one per thread (a handle is not meant to be
// shared between host threads) and pass it to the products that need it.
class cublas_handle {
public:
    cublas_handle() { TINYLLM_CUBLAS_CHECK(detail::cublas_create(&handle_)); }
    ~cublas_handle() {
        if (handle_) (void)detail::cublas_destroy(handle_);  // never throw from a destructor
    }
    cublas_handle(cublas_handle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    cublas_handle& operator=(cublas_handle&& other) noexcept {
        if (this != &other) {
            if (handle_) (void)detail::cublas_destroy(handle_);
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
