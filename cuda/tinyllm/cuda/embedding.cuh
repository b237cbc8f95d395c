// tinyllm/cuda/embedding.cuh — token embedding on the GPU: out (B, T, D) =
// scale * table[ids] (the CPU reference is tinyllm::cpu::embedding in
// <tinyllm/embedding.hpp>).
//
// The lookup moves B*T*D elements and computes nothing, so it is limited by
// memory bandwidth; the ladder is about moving bytes well.
//
//   v1 naive       one thread per output element. Neighbouring threads read
//                  neighbouring elements of a row, so accesses are already
//                  coalesced, but each thread moves only 2-4 bytes and
//                  recomputes (b, t, d) with divisions.
//   v2 vectorized  one warp-strided loop per token row: each thread moves 16
//                  bytes at a time (float4 = 4 floats or 8 bf16/fp16) with one
//                  load and one store instruction; the id is read once per
//                  row. Used when D * sizeof(T) is a multiple of 16 and both
//                  tensors are 16-byte aligned; otherwise it falls back to
//                  element-wise copies in the same loop. One pass over memory.
//
// Shapes: ids (...) of any rank and out (..., D) with the same leading
// dimensions, as for cpu::embedding: the (B, T) function is the definition;
// the overload at the end sees any ids as (B, T) and calls it.
//
// Ids are validated on the device: an id outside [0, V) writes nothing for
// its row and records the smallest bad position; the launcher then waits for
// the kernel and throws tinyllm::error naming the position and the value (set
// check_ids = false to skip that allocation and synchronization once inputs
// are trusted: rows with bad ids are then left unwritten).
#pragma once

#include <tinyllm/cuda/activation.cuh>  // detail::deduced, detail::element_t
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace tinyllm::cuda {

enum class embedding_version { naive, vectorized };

namespace detail {

inline constexpr unsigned long long no_bad_position = ~0ull;

template <class T>
TINYLLM_DEVICE T scaled(T x, float scale) {
    return scale == 1.0f ? x : from_float<T>(scale * to_float(x));
}

template <class Id>
TINYLLM_DEVICE bool id_ok(Id id, index_t V) {
    return id >= 0 && static_cast<index_t>(id) < V;
}

// v1: one thread per output element (grid-stride).
template <class T, class Id>
__global__ void embedding_naive_kernel(T* out, const Id* ids, index_t ids_stride_b, index_t ids_stride_t,
                                       const T* table, index_t B, index_t Tn, index_t D, index_t V, float scale,
                                       unsigned long long* bad) {
    const index_t n = B * Tn * D;
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const index_t d = i % D;
        const index_t row = i / D;
        const index_t b = row / Tn, t = row % Tn;
        const Id id = ids[b * ids_stride_b + t * ids_stride_t];
        if (!id_ok(id, V)) {
            if (d == 0 && bad) atomicMin(bad, static_cast<unsigned long long>(row));
            continue;
        }
        out[i] = scaled(table[static_cast<index_t>(id) * D + d], scale);
    }
}

// v2: a block per group of rows; threads stride over a row in 16-byte vectors.
template <class T, class Id>
__global__ void embedding_vectorized_kernel(T* out, const Id* ids, index_t ids_stride_b, index_t ids_stride_t,
                                            const T* table, index_t B, index_t Tn, index_t D, index_t V, float scale,
                                            bool vector_ok, unsigned long long* bad) {
    constexpr int per_vector = 16 / sizeof(T);
    const index_t rows = B * Tn;
    for (index_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const index_t b = row / Tn, t = row % Tn;
        const Id id = ids[b * ids_stride_b + t * ids_stride_t];  // one read per row (broadcast)
        if (!id_ok(id, V)) {
            if (threadIdx.x == 0 && bad) atomicMin(bad, static_cast<unsigned long long>(row));
            continue;
        }
        const T* src = table + static_cast<index_t>(id) * D;
        T* dst = out + row * D;
        if (vector_ok) {
            const index_t vectors = D / per_vector;
            const float4* s4 = reinterpret_cast<const float4*>(src);
            float4* d4 = reinterpret_cast<float4*>(dst);
            for (index_t k = threadIdx.x; k < vectors; k += blockDim.x) {
                float4 v = s4[k];
                if (scale != 1.0f) {
                    T lanes[per_vector];
                    memcpy(static_cast<void*>(lanes), &v, 16);  // T is trivially copyable
                    for (int j = 0; j < per_vector; ++j) lanes[j] = scaled(lanes[j], scale);
                    memcpy(&v, lanes, 16);
                }
                d4[k] = v;
            }
        } else {
            for (index_t k = threadIdx.x; k < D; k += blockDim.x) dst[k] = scaled(src[k], scale);
        }
    }
}

}  // namespace detail

// out (B, T, D) = scale * table[ids]; ids (B, T) and table (V, D) on the
// device; out and table contiguous. Same meaning as cpu::embedding.
template <class T, class Id>
void embedding(tensor_view<T, 3> out /*(B, T, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
               tensor_view<const T, 2> table /*(V, D)*/, float scale = 1.0f,
               embedding_version version = embedding_version::vectorized, bool check_ids = true,
               cudaStream_t stream = nullptr) {
    static_assert(std::is_integral_v<Id>, "embedding: ids must have an integer type");
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "embedding: T is float, bfloat16 or float16");
    TINYLLM_EXPECT(out.extent(0) == ids.extent(0) && out.extent(1) == ids.extent(1), "embedding: out has shape ",
                   to_string(out.shape()), " but ids ", to_string(ids.shape()),
                   " (out must be (B, T, D) for ids (B, T))");
    TINYLLM_EXPECT(out.extent(2) == table.extent(1), "embedding: out has width ", out.extent(2),
                   " but the table has rows of ", table.extent(1));
    TINYLLM_EXPECT(out.is_contiguous(), "embedding: out must be contiguous; strides ", to_string(out.strides()));
    TINYLLM_EXPECT(table.is_contiguous(), "embedding: table must be contiguous; strides ", to_string(table.strides()));
    const index_t B = out.extent(0), Tn = out.extent(1), D = out.extent(2), V = table.extent(0);
    if (B * Tn * D == 0) return;
    // With check_ids, a one-word flag holds the smallest bad row; without, the
    // kernels skip rows with bad ids silently and nothing is allocated or awaited.
    device_buffer<unsigned long long> bad(check_ids ? 1 : 0);
    if (check_ids) TINYLLM_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0xFF, sizeof(unsigned long long), stream));
    if (version == embedding_version::naive) {
        const int threads = 256;
        const index_t blocks = ceil_div<index_t>(B * Tn * D, threads);
        launch(detail::embedding_naive_kernel<T, Id>, static_cast<unsigned>(blocks < 65536 ? blocks : 65536), threads, 0,
               stream, out.data(), ids.data(), ids.stride(0), ids.stride(1), table.data(), B, Tn, D, V, scale,
               bad.data());
    } else {
        const bool vector_ok = (D * static_cast<index_t>(sizeof(T))) % 16 == 0 &&
                               reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0 &&
                               reinterpret_cast<std::uintptr_t>(table.data()) % 16 == 0;
        const index_t per_row = vector_ok ? D / (16 / static_cast<index_t>(sizeof(T))) : D;
        const int threads = per_row >= 256 ? 256 : per_row >= 128 ? 128 : 64;
        const index_t rows = B * Tn;
        launch(detail::embedding_vectorized_kernel<T, Id>, static_cast<unsigned>(rows < 65536 ? rows : 65536), threads, 0,
               stream, out.data(), ids.data(), ids.stride(0), ids.stride(1), table.data(), B, Tn, D, V, scale,
               vector_ok, bad.data());
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
    if (!check_ids) return;
    unsigned long long first_bad = 0;
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(&first_bad, bad.data(), sizeof first_bad, cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (first_bad != detail::no_bad_position) {
        const index_t row = static_cast<index_t>(first_bad), b = row / Tn, t = row % Tn;
        Id value{};
        TINYLLM_CUDA_CHECK(cudaMemcpy(&value, ids.data() + b * ids.stride(0) + t * ids.stride(1), sizeof(Id),
                                      cudaMemcpyDeviceToHost));
        TINYLLM_FAIL("embedding: ids(", b, ", ", t, ") = ", static_cast<long long>(value),
                     " is outside the vocabulary [0, ", V, ")");
    }
}

// out (..., D) = scale * table[ids] with ids (...) of any rank, device views. T (the table's
// element type) and Id are deduced, or named as in embedding<bfloat16, std::int32_t>(...).
template <class T = detail::deduced, class Id = detail::deduced, tensor_like Out, tensor_like Ids, tensor_like Table>
void embedding(Out&& out /*(..., D)*/, const Ids& ids /*(...)*/, const Table& table /*(V, D)*/, float scale = 1.0f,
               embedding_version version = embedding_version::vectorized, bool check_ids = true,
               cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, Out>;
    using I = std::conditional_t<std::is_same_v<Id, detail::deduced>, tinyllm::detail::id_type_t<Ids>, Id>;
    const auto [out3, ids2] = tinyllm::detail::embedding_as_3d<E, I>(out, ids, "embedding");
    const auto t = as_view(table);
    static_assert(decltype(t)::rank == 2, "embedding: the table must be a matrix (V, D)");
    embedding<E, I>(out3, ids2, tensor_view<const E, 2>(t), scale, version, check_ids, stream);
}

}  // namespace tinyllm::cuda
