// sim/src/cublas.cpp — cublasGemmEx of the stand-in cublas_v2.h on the CPU.
//
// C (m x n, column-major, leading dimension ldc) = alpha op(A) op(B) + beta C.
// The operands are first copied into float panels — op(A) as m rows of k,
// op(B) as n rows of k — so that every entry of C is one dot product of two
// contiguous rows; the columns of C are shared out among the machine's cores.
// Accumulation is in float (8 partial sums, in a fixed order), as with
// CUBLAS_COMPUTE_32F. With beta == 0, C is only written, never read (cuBLAS's
// rule: C may hold anything, NaN included).
#include <cublas_v2.h>
#include <tinyllm/dtype.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace tinyllm::sim {
namespace runtime {
cudaError_t sticky_error();
}
}  // namespace tinyllm::sim

struct cublasContext {
    cudaStream_t stream = nullptr;
};

namespace {

std::size_t element_bytes(cudaDataType t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: case CUDA_R_16F: return 2;
    default: return 0;
    }
}

float load(const void* base, std::size_t index, cudaDataType t) {
    switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(base)[index];
    case CUDA_R_16BF: return tinyllm::bf16_to_float(static_cast<const tinyllm::bfloat16*>(base)[index]);
    default: return tinyllm::fp16_to_float(static_cast<const tinyllm::float16*>(base)[index]);
    }
}
void store(void* base, std::size_t index, cudaDataType t, float v) {
    switch (t) {
    case CUDA_R_32F: static_cast<float*>(base)[index] = v; break;
    case CUDA_R_16BF: static_cast<tinyllm::bfloat16*>(base)[index] = tinyllm::float_to_bf16(v); break;
    default: static_cast<tinyllm::float16*>(base)[index] = tinyllm::float_to_fp16(v); break;
    }
}

// Whether the `rows` x `cols` column-major matrix at p (leading dimension ld) lies in device memory.
bool in_device_memory(const void* p, int rows, int cols, int ld, cudaDataType t) {
    if (rows == 0 || cols == 0) return true;
    const std::size_t span = (static_cast<std::size_t>(ld) * static_cast<std::size_t>(cols - 1) + static_cast<std::size_t>(rows)) * element_bytes(t);
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess || a.type != cudaMemoryTypeDevice) return false;
    return cudaPointerGetAttributes(&a, static_cast<const char*>(p) + span - 1) == cudaSuccess &&
           a.type == cudaMemoryTypeDevice;
}

float dot(const float* a, const float* b, int k) {
    float acc[8] = {};
    int p = 0;
    for (; p + 8 <= k; p += 8)
        for (int u = 0; u < 8; ++u) acc[u] += a[p + u] * b[p + u];
    for (; p < k; ++p) acc[p % 8] += a[p] * b[p];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown status";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    // The stored shapes: A is (m x k), or (k x m) when transposed; likewise B.
    const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m) ||
        !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!element_bytes(Atype) || !element_bytes(Btype) || !element_bytes(Ctype) || Atype != Btype ||
        (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_16BF && compute != CUBLAS_COMPUTE_32F_FAST_TF32))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (tinyllm::sim::runtime::sticky_error() != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!in_device_memory(A, a_rows, a_cols, lda, Atype) || !in_device_memory(B, b_rows, b_cols, ldb, Btype) ||
        !in_device_memory(C, m, n, ldc, Ctype))
        return CUBLAS_STATUS_INVALID_VALUE;
    // alpha and beta are read now (host pointer mode); the product runs in order
    // on the handle's stream, or is recorded while that stream is captured.
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    const auto gemm = [=] {
    // Panels: a[i][p] = op(A)(i, p), b[j][p] = op(B)(p, j).
    std::vector<float> a(static_cast<std::size_t>(m) * k), b(static_cast<std::size_t>(n) * k);
    for (int i = 0; i < m; ++i)
        for (int p = 0; p < k; ++p)
            a[static_cast<std::size_t>(i) * k + p] =
                load(A, ta ? p + static_cast<std::size_t>(i) * lda : i + static_cast<std::size_t>(p) * lda, Atype);
    for (int j = 0; j < n; ++j)
        for (int p = 0; p < k; ++p)
            b[static_cast<std::size_t>(j) * k + p] =
                load(B, tb ? j + static_cast<std::size_t>(p) * ldb : p + static_cast<std::size_t>(j) * ldb, Btype);

    auto columns = [&](int j0, int j1) {
        for (int j = j0; j < j1; ++j) {
            const float* bj = b.data() + static_cast<std::size_t>(j) * k;
            for (int i = 0; i < m; ++i) {
                const std::size_t c = i + static_cast<std::size_t>(j) * ldc;
                const float ab = dot(a.data() + static_cast<std::size_t>(i) * k, bj, k);
                store(C, c, Ctype, be == 0.0f ? al * ab : al * ab + be * load(C, c, Ctype));
            }
        }
    };
    const double work = static_cast<double>(m) * n * (k + 1);
    const int workers = static_cast<int>(std::min<unsigned>(std::max(1u, std::thread::hardware_concurrency()), 8u));
    if (work < 4e6 || workers == 1 || n < workers) {
        columns(0, n);
    } else {
        std::vector<std::thread> pool;
        for (int w = 0; w < workers; ++w)
            pool.emplace_back(columns, static_cast<int>(static_cast<long long>(n) * w / workers),
                              static_cast<int>(static_cast<long long>(n) * (w + 1) / workers));
        for (auto& t : pool) t.join();
    }
    };
    return tinyllm_sim_stream_work(handle->stream, gemm) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                                        : CUBLAS_STATUS_EXECUTION_FAILED;
}
