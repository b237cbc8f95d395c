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
//   v2 vectorized  one block per token row (grid-stride over the rows), its
//                  threads striding over the row: each thread moves 16
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
// Ids are validated on the device: an id outside [0, V) writes NaN over its
// row (never a table row it does not have) and records the smallest bad
// position; the launcher then waits for the kernel and throws tinyllm::error
// naming the position and the value. check_ids = false skips that allocation
// and synchronization (a decode step reads its ids from device memory and
// cannot stop): a bad id's row is then NaN, so the logits computed from it are
// NaN too, and a sampler refuses them by name, instead of a step that silently
// reuses an older row.
//
// Backward (training; the math in <tinyllm/embedding.hpp>): dtable(v, :) (+)=
// scale * the sum of dout's rows whose id is v, a scatter-add. With float
// atomics (one atomicAdd per element of dout) a frequent id's row would be the
// sum of many terms in whatever order the threads arrive, so its rounding —
// and the trained model — would change from run to run. tinyllm groups the
// tokens by id first, with the CPU's order (ids increasing, each id's tokens in
// token order), and then sums every group in that order:
//
//   1. keys      key(i) = the id of token i = b T + t (an id outside [0, V)
//                becomes V and joins no row); perm = 0, 1, ..., B T - 1.
//   2. sort      a stable LSD radix sort of perm by key: one or two passes over
//                digits of up to 12 bits, each the MoE dispatch plan
//                (cuda::moe_plan with E = 2^bits buckets, moe_dispatch.cuh), a
//                counting sort whose ranks come from a scan, not from atomics,
//                so equal digits keep their order.
//   3. rows      one block per table row v: the first and last place of v in
//                the sorted keys by binary search, then each thread sums its
//                columns over those tokens in order, in double (as the CPU), and
//                writes scale * sum (+ the old value with accumulate) once.
//
// The result is the same bits on every run and under any schedule, and equal
// to the CPU's up to the CPU's own rounding (the same sums in the same order).
// Ids are checked on the device first (an integer atomicMin finds the first bad
// position); with check_ids the launcher waits for that and throws, naming the
// position and the value, before anything is written. The scratch memory (7
// int32 per token plus the plan's) lives in an embedding_backward_workspace,
// made once and reused; the call without one makes a temporary one.
#pragma once

#include <tinyllm/cuda/activation.cuh>  // detail::deduced, detail::element_t
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/moe_dispatch.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

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
            out[i] = from_float<T>(__int_as_float(0x7fc00000));  // NaN
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
            for (index_t k = threadIdx.x; k < D; k += blockDim.x)
                out[row * D + k] = from_float<T>(__int_as_float(0x7fc00000));  // NaN
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
    TINYLLM_EXPECT(std::isfinite(scale), "embedding: scale = ", scale, " must be finite");
    TINYLLM_EXPECT(out.extent(0) == ids.extent(0) && out.extent(1) == ids.extent(1), "embedding: out has shape ",
                   to_string(out.shape()), " but ids ", to_string(ids.shape()),
                   " (out must be (B, T, D) for ids (B, T))");
    TINYLLM_EXPECT(out.extent(2) == table.extent(1), "embedding: out has width ", out.extent(2),
                   " but the table has rows of ", table.extent(1));
    TINYLLM_EXPECT(out.is_contiguous(), "embedding: out must be contiguous; strides ", to_string(out.strides()));
    TINYLLM_EXPECT(table.is_contiguous(), "embedding: table must be contiguous; strides ", to_string(table.strides()));
    ::tinyllm::detail::expect_embedding_memory("embedding", out, ids, table);
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

// ---- Backward -----------------------------------------------------------------------------

namespace detail {

// Step 1: key[i] = ids(b, t) for i = b T + t, or V when the id is outside [0, V)
// (its smallest such i recorded in *bad); perm[i] = i.
template <class Id>
__global__ void embedding_keys_kernel(std::int32_t* keys, std::int32_t* perm, const Id* ids, index_t stride_b,
                                      index_t stride_t, index_t Tn, index_t n, index_t V, unsigned long long* bad) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const Id id = ids[(i / Tn) * stride_b + (i % Tn) * stride_t];
        const bool ok = id_ok(id, V);
        if (!ok && bad) atomicMin(bad, static_cast<unsigned long long>(i));
        keys[i] = static_cast<std::int32_t>(ok ? static_cast<index_t>(id) : V);
        perm[i] = static_cast<std::int32_t>(i);
    }
}

// One radix pass, before the plan: digits[j] = (key of the j-th token in the current order >> shift) & mask.
template <class Int>
__global__ void radix_digits_kernel(Int* digits, const Int* keys, const Int* perm, index_t n,
                                    int shift, Int mask) {
    for (index_t j = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; j < n;
         j += static_cast<index_t>(gridDim.x) * blockDim.x)
        digits[j] = (keys[perm[j]] >> shift) & mask;
}

// After the plan: the token at place j of the new order is the one at place
// row_token[j] of the old (the plan's stable counting sort of the digits).
template <class Int>
__global__ void radix_permute_kernel(Int* perm_out, const Int* perm_in, const Int* row_token,
                                     index_t n) {
    for (index_t j = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; j < n;
         j += static_cast<index_t>(gridDim.x) * blockDim.x)
        perm_out[j] = perm_in[row_token[j]];
}

template <class Int>
__global__ void gather_keys_kernel(Int* sorted_keys, const Int* keys, const Int* perm,
                                   index_t n) {
    for (index_t j = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; j < n;
         j += static_cast<index_t>(gridDim.x) * blockDim.x)
        sorted_keys[j] = keys[perm[j]];
}

// The first place j in sorted (n, increasing) with sorted[j] >= v.
TINYLLM_DEVICE index_t lower_bound(const std::int32_t* sorted, index_t n, index_t v) {
    index_t lo = 0, hi = n;
    while (lo < hi) {
        const index_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// Step 3: one block per table row (grid-stride); thread columns d = threadIdx.x + k blockDim.x.
template <class T>
__global__ void embedding_backward_rows_kernel(T* dtable, index_t table_stride, index_t V, index_t D,
                                               const std::int32_t* sorted_keys, const std::int32_t* perm, index_t n,
                                               const T* dout, index_t stride_b, index_t stride_t, index_t Tn,
                                               float scale, bool accumulate) {
    for (index_t v = blockIdx.x; v < V; v += gridDim.x) {
        const index_t first = lower_bound(sorted_keys, n, v), last = lower_bound(sorted_keys, n, v + 1);
        if (accumulate && first == last) continue;  // nothing to add
        T* row = dtable + v * table_stride;
        for (index_t d = threadIdx.x; d < D; d += blockDim.x) {
            double sum = 0.0;
            for (index_t j = first; j < last; ++j) {  // token order: the CPU's order
                const index_t i = perm[j];
                sum += static_cast<double>(to_float(dout[(i / Tn) * stride_b + (i % Tn) * stride_t + d]));
            }
            const double old = accumulate ? static_cast<double>(to_float(row[d])) : 0.0;
#if TINYLLM_ON_DEVICE
            // Explicitly rounded, as the CPU: nvcc would fuse old + scale * sum into one fma.
            const double value = __dadd_rn(old, __dmul_rn(static_cast<double>(scale), sum));
#else
            const double value = old + static_cast<double>(scale) * sum;
#endif
            row[d] = store_as<T>(static_cast<float>(value));
        }
    }
}

inline unsigned grid_for(index_t n, int threads) {
    const index_t blocks = ceil_div<index_t>(n, threads);
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < 65535 ? blocks : 65535));
}

}  // namespace detail

// Scratch memory for cuda::embedding_backward: room for `tokens` = B * T tokens
// and a table of V rows (which fixes the radix passes). Make it once and reuse
// it; one workspace serves one stream at a time.
class embedding_backward_workspace {
public:
    template <class = void>  // compiled only where called (launch.cuh): plan_'s constructor names CUB's kernels
    embedding_backward_workspace(index_t tokens, index_t V)
        : tokens_(tokens), vocabulary_(V), bits_(std::bit_width(static_cast<std::uint64_t>(V < 1 ? 1 : V))),
          passes_((bits_ + 11) / 12), digit_bits_((bits_ + passes_ - 1) / passes_),
          keys_(static_cast<std::size_t>(tokens)), sorted_keys_(keys_.size()), perm_(keys_.size()),
          perm_next_(keys_.size()), digits_(keys_.size()), row_of_(keys_.size()), row_token_(keys_.size()),
          offsets_(static_cast<std::size_t>((index_t{1} << digit_bits_) + 1)),
          counts_(static_cast<std::size_t>(index_t{1} << digit_bits_)), bad_(1),
          plan_(tokens, index_t{1} << digit_bits_) {
        TINYLLM_EXPECT(tokens >= 0 && tokens <= INT32_MAX, "embedding_backward_workspace: ", tokens,
                       " tokens do not fit int32 positions");
        TINYLLM_EXPECT(V >= 0 && V < INT32_MAX, "embedding_backward_workspace: V = ", V, " does not fit int32 ids");
    }
    index_t tokens() const { return tokens_; }
    index_t vocabulary() const { return vocabulary_; }
    int passes() const { return passes_; }          // radix passes: 1 for V < 4096, 2 up to 2^24
    int digit_bits() const { return digit_bits_; }  // bits per pass (buckets per pass: 2^digit_bits)

    // The buffers, for embedding_backward.
    std::int32_t* keys() { return keys_.data(); }
    std::int32_t* sorted_keys() { return sorted_keys_.data(); }
    std::int32_t* perm() { return perm_.data(); }
    std::int32_t* perm_next() { return perm_next_.data(); }
    void swap_perm() { std::swap(perm_, perm_next_); }
    std::int32_t* digits() { return digits_.data(); }
    std::int32_t* row_of() { return row_of_.data(); }
    std::int32_t* row_token() { return row_token_.data(); }
    std::int32_t* offsets() { return offsets_.data(); }
    std::int32_t* counts() { return counts_.data(); }
    unsigned long long* bad() { return bad_.data(); }
    moe_dispatch_workspace& plan() { return plan_; }

private:
    index_t tokens_, vocabulary_;
    int bits_, passes_, digit_bits_;
    device_buffer<std::int32_t> keys_, sorted_keys_, perm_, perm_next_, digits_, row_of_, row_token_;  // (tokens) each
    device_buffer<std::int32_t> offsets_, counts_;  // (2^digit_bits + 1), (2^digit_bits)
    device_buffer<unsigned long long> bad_;
    moe_dispatch_workspace plan_;
};

namespace detail {

// embedding_backward (below), with the names of the operation, of the ids and
// of their range for errors (learned_positions_backward shares it).
template <class T, class Id>
void scatter_add_rows(tensor_view<T, 2> dtable /*(V, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
                      tensor_view<const T, 3> dout /*(B, T, D)*/, float scale, bool accumulate,
                      embedding_backward_workspace& ws, bool check_ids, cudaStream_t stream, const char* op,
                      const char* what, const char* range) {
    static_assert(std::is_integral_v<Id>, "embedding_backward: ids must have an integer type");
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "embedding_backward: T is float, bfloat16 or float16");
    if (dout.extent(0) != ids.extent(0) || dout.extent(1) != ids.extent(1))
        TINYLLM_FAIL(op, ": dout has shape ", to_string(dout.shape()), " but ", what, " ", to_string(ids.shape()),
                     " (dout must be (B, T, D) for ", what, " (B, T))");
    if (dout.extent(2) != dtable.extent(1))
        TINYLLM_FAIL(op, ": dout has width ", dout.extent(2), " but dtable has rows of ", dtable.extent(1),
                     " (dtable must be (V, D) for dout (..., D))");
    ::tinyllm::detail::expect_scatter_memory(op, dtable, ids, dout);
    TINYLLM_EXPECT(dtable.extent(1) <= 1 || dtable.stride(1) == 1, op, ": dtable's rows must be contiguous; strides ",
                   to_string(dtable.strides()));
    TINYLLM_EXPECT(dout.extent(2) <= 1 || dout.stride(2) == 1, op, ": dout's rows must be contiguous; strides ",
                   to_string(dout.strides()));
    const index_t B = ids.extent(0), Tn = ids.extent(1), n = B * Tn, V = dtable.extent(0), D = dtable.extent(1);
    TINYLLM_EXPECT(ws.vocabulary() == V && ws.tokens() >= n, op, ": the workspace was made for ", ws.tokens(),
                   " tokens and V = ", ws.vocabulary(), "; this call needs ", n, " tokens and V = ", V);
    const int threads = 256;
    if (n > 0 && V > 0 && D > 0) {
        unsigned long long* bad = check_ids ? ws.bad() : nullptr;
        if (bad) TINYLLM_CUDA_CHECK(cudaMemsetAsync(bad, 0xFF, sizeof(unsigned long long), stream));
        launch(detail::embedding_keys_kernel<Id>, detail::grid_for(n, threads), threads, 0, stream, ws.keys(),
               ws.perm(), ids.data(), ids.stride(0), ids.stride(1), Tn, n, V, bad);
        TINYLLM_CUDA_CHECK_LAUNCH();
        if (bad) {
            unsigned long long first_bad = 0;
            TINYLLM_CUDA_CHECK(cudaMemcpyAsync(&first_bad, bad, sizeof first_bad, cudaMemcpyDeviceToHost, stream));
            TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
            if (first_bad != detail::no_bad_position) {
                const index_t i = static_cast<index_t>(first_bad), b = i / Tn, t = i % Tn;
                Id value{};
                TINYLLM_CUDA_CHECK(cudaMemcpy(&value, ids.data() + b * ids.stride(0) + t * ids.stride(1), sizeof(Id),
                                              cudaMemcpyDeviceToHost));
                TINYLLM_FAIL(op, ": ", what, "(", b, ", ", t, ") = ", static_cast<long long>(value), " is outside ",
                             range, " [0, ", V, ")");
            }
        }
        // The stable radix sort: low digits first, each pass a counting sort by the MoE plan.
        const index_t buckets = index_t{1} << ws.digit_bits();
        moe_plan_view plan{tensor_view<std::int32_t, 2>(ws.row_of(), {n, 1}),
                           tensor_view<std::int32_t, 1>(ws.row_token(), {n}),
                           tensor_view<std::int32_t, 1>(ws.offsets(), {buckets + 1}),
                           tensor_view<std::int32_t, 1>(ws.counts(), {buckets})};
        const tensor_view<const std::int32_t, 2> digits(ws.digits(), {n, 1});
        for (int pass = 0; pass < ws.passes(); ++pass) {
            launch(detail::radix_digits_kernel<std::int32_t>, detail::grid_for(n, threads), threads, 0, stream,
                   ws.digits(), static_cast<const std::int32_t*>(ws.keys()), static_cast<const std::int32_t*>(ws.perm()),
                   n, pass * ws.digit_bits(), static_cast<std::int32_t>(buckets - 1));
            TINYLLM_CUDA_CHECK_LAUNCH();
            moe_plan(plan, digits, {}, ws.plan(), stream);
            launch(detail::radix_permute_kernel<std::int32_t>, detail::grid_for(n, threads), threads, 0, stream,
                   ws.perm_next(), static_cast<const std::int32_t*>(ws.perm()),
                   static_cast<const std::int32_t*>(ws.row_token()), n);
            TINYLLM_CUDA_CHECK_LAUNCH();
            ws.swap_perm();
        }
        launch(detail::gather_keys_kernel<std::int32_t>, detail::grid_for(n, threads), threads, 0, stream,
               ws.sorted_keys(), static_cast<const std::int32_t*>(ws.keys()), static_cast<const std::int32_t*>(ws.perm()), n);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (V == 0 || D == 0) return;
    const index_t wanted = ceil_div<index_t>(D, 32) * 32;
    const int row_threads = static_cast<int>(wanted > 256 ? 256 : wanted);
    launch(detail::embedding_backward_rows_kernel<T>, static_cast<unsigned>(V < 65535 * 16 ? V : 65535 * 16),
           row_threads, 0, stream, dtable.data(), V > 1 ? dtable.stride(0) : D, V, D,
           static_cast<const std::int32_t*>(ws.sorted_keys()), static_cast<const std::int32_t*>(ws.perm()),
           n, dout.data(), dout.stride(0), dout.stride(1), Tn, scale, accumulate);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace detail

// The backward of embedding: dtable (V, D) (+)= scale * the scatter-add of
// dout's rows by id (see the top of this file), deterministic and in the CPU's
// order. dtable is overwritten (rows of absent ids become 0) or, with
// `accumulate`, added to (a tied lm_head's gradient). ids (B, T) of an integer
// type and dout (B, T, D) on the device; dtable with contiguous rows. The
// workspace must hold B * T tokens and V rows. check_ids: validate ids first,
// waiting for the stream, and throw naming the first bad one before anything
// is written; false: no wait, and tokens with bad ids add to no row.
template <class T, class Id>
void embedding_backward(tensor_view<T, 2> dtable /*(V, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
                        tensor_view<const T, 3> dout /*(B, T, D)*/, float scale, bool accumulate,
                        embedding_backward_workspace& ws, bool check_ids = true, cudaStream_t stream = nullptr) {
    detail::scatter_add_rows<T, Id>(dtable, ids, dout, scale, accumulate, ws, check_ids, stream, "embedding_backward",
                                    "ids", "the vocabulary");
}

// The same with a temporary workspace: it allocates, and waits for `stream`
// before returning (and freeing it). For repeated calls keep a workspace.
template <class T, class Id>
void embedding_backward(tensor_view<T, 2> dtable /*(V, D)*/, tensor_view<const Id, 2> ids /*(B, T)*/,
                        tensor_view<const T, 3> dout /*(B, T, D)*/, float scale = 1.0f, bool accumulate = false,
                        bool check_ids = true, cudaStream_t stream = nullptr) {
    embedding_backward_workspace ws(ids.extent(0) * ids.extent(1), dtable.extent(0));
    embedding_backward<T, Id>(dtable, ids, dout, scale, accumulate, ws, check_ids, stream);
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
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

// embedding_backward with ids (...) of any rank and dout (..., D), device views, with a workspace.
template <tensor_like DTable, tensor_like Ids, tensor_like DOut>
void embedding_backward(DTable&& dtable /*(V, D)*/, const Ids& ids /*(...)*/, const DOut& dout /*(..., D)*/, float scale,
                        bool accumulate, embedding_backward_workspace& ws, bool check_ids = true,
                        cudaStream_t stream = nullptr) {
    const auto dt = as_view(dtable);
    static_assert(decltype(dt)::rank == 2, "embedding_backward: dtable must be a matrix (V, D)");
    using E = typename decltype(dt)::element_type;
    static_assert(!std::is_const_v<E>, "embedding_backward: dtable is written; it cannot be a view of const");
    using I = tinyllm::detail::id_type_t<Ids>;
    const auto [dout3, ids2] = tinyllm::detail::embedding_as_3d<const E, I>(dout, ids, "embedding_backward", "dout");
    embedding_backward<E, I>(dt, ids2, dout3, scale, accumulate, ws, check_ids, stream);
}

// The same with a temporary workspace (allocates and waits).
template <tensor_like DTable, tensor_like Ids, tensor_like DOut>
void embedding_backward(DTable&& dtable /*(V, D)*/, const Ids& ids /*(...)*/, const DOut& dout /*(..., D)*/,
                        float scale = 1.0f, bool accumulate = false, bool check_ids = true,
                        cudaStream_t stream = nullptr) {
    const auto dt = as_view(dtable);
    static_assert(decltype(dt)::rank == 2, "embedding_backward: dtable must be a matrix (V, D)");
    using E = typename decltype(dt)::element_type;
    static_assert(!std::is_const_v<E>, "embedding_backward: dtable is written; it cannot be a view of const");
    using I = tinyllm::detail::id_type_t<Ids>;
    const auto [dout3, ids2] = tinyllm::detail::embedding_as_3d<const E, I>(dout, ids, "embedding_backward", "dout");
    embedding_backward<E, I>(dt, ids2, dout3, scale, accumulate, check_ids, stream);
}

}  // namespace tinyllm::cuda
