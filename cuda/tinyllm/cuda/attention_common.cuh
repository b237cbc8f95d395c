// tinyllm/cuda/attention_common.cuh — what every attention kernel shares: the
// argument bundle a kernel receives, its host-side construction (validation
// first, with the same checks and messages as the CPU reference), and small
// device helpers (warp reductions).
//
// The attention ladder (each file keeps its version and says what changed):
//   attention_naive.cuh    v1  scores in global memory, three kernels, one thread per element
//   attention_tiled.cuh    v2  the same three steps with shared-memory tiles
//   attention_flash.cuh    v3  online softmax, one pass over K/V, no score matrix (float32)
//   attention_mma.cuh      v4  tensor cores (bf16/fp16 mma.sync), cp.async double buffering
//   attention_flash2.cuh   v5  FlashAttention-2's full recipe: 128-row blocks, K/V cp.async stages, exp2, swizzle
//   attention_wgmma.cuh    v6  v5 on Hopper's wgmma (sm_90a), softmax overlapped with the previous tile's P V
//   attention_decode.cuh       rung 1 (tiles): split-K flash-decoding for a few queries over a long KV cache
//   attention_decode_warps.cuh rung 2: flash-decoding, every warp on its own keys, 16-byte loads (attention_decode)
//   attention_backward.cuh     the backward pass: v1 naive (P in global memory), v2 flash (recomputed from the lse)
//   attention_backward_mma.cuh the backward pass v3: v2 on tensor cores (bf16/fp16 mma.sync), no atomics
// The math (masks, logit transform, tile classification) is the CPU reference's,
// from <tinyllm/attention.hpp>.
//
// Memory-space rule: q, k, v, out and the option views (alibi_slopes,
// key_lengths) of a CUDA call all point to device memory. The option views are
// checked on the host (cudaPointerGetAttributes: device or managed memory), since
// a kernel reading a host pointer faults on a GPU, or reads garbage. Every kernel
// needs the head dim to be contiguous (stride 1); the other strides are free (so
// a KV cache narrowed to its current length is fine).
//
// Sizes: the kernels keep B, T, H and D as int, so each must be below 2^31; every
// product of them (grid sizes, element counts) is computed in 64 bits (index_t)
// on the host, and a grid is checked against CUDA's limits before a launch
// (checked_grid), never cast to unsigned unchecked.
#pragma once

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>

namespace tinyllm::cuda {
namespace detail {

// Everything a kernel needs, by value (a few hundred bytes of kernel parameters).
template <class T>
struct attention_args {
    const T* q = nullptr;  // (B, Tq, Hq, D)
    const T* k = nullptr;  // (B, Tk, Hkv, D)
    const T* v = nullptr;  // (B, Tk, Hkv, D)
    T* o = nullptr;        // (B, Tq, Hq, D)
    // Element strides of the batch, time and head dimensions (D is contiguous).
    index_t q_sb = 0, q_st = 0, q_sh = 0;
    index_t k_sb = 0, k_st = 0, k_sh = 0;
    index_t v_sb = 0, v_st = 0, v_sh = 0;
    index_t o_sb = 0, o_st = 0, o_sh = 0;
    int B = 0, Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0;
    int group = 1;  // Hq / Hkv: query heads per key/value head
    float scale = 1.0f;
    float softcap = 0.0f;  // 0: off
    attention_mask mask;
    const float* slopes = nullptr;               // (Hq) ALiBi slopes, or none
    const std::int32_t* key_lengths = nullptr;   // (B) valid keys per row, or none

    TINYLLM_HOST_DEVICE const T* q_row(int b, int i, int h) const { return q + b * q_sb + i * q_st + h * q_sh; }
    TINYLLM_HOST_DEVICE const T* k_row(int b, int j, int hkv) const { return k + b * k_sb + j * k_st + hkv * k_sh; }
    TINYLLM_HOST_DEVICE const T* v_row(int b, int j, int hkv) const { return v + b * v_sb + j * v_st + hkv * v_sh; }
    TINYLLM_HOST_DEVICE T* o_row(int b, int i, int h) const { return o + b * o_sb + i * o_st + h * o_sh; }

    // Valid keys of batch row b, clamped to [0, Tk] (device values are not checked on the host).
    TINYLLM_HOST_DEVICE index_t length(int b) const {
        if (key_lengths == nullptr) return Tk;
        const index_t n = key_lengths[b];
        return n < 0 ? 0 : (n > Tk ? Tk : n);
    }
    TINYLLM_HOST_DEVICE float slope(int h) const { return slopes ? slopes[h] : 0.0f; }
    TINYLLM_HOST_DEVICE float logit(float dot, int h, index_t pos, index_t j) const {
        return attention_logit<float>(dot, scale, softcap, slope(h), pos, j);
    }
};

// Whether a kernel may read p: device or managed memory (cudaPointerGetAttributes
// reports plain host memory as unregistered, pinned host memory as host).
inline bool is_device_memory(const void* p) {
    cudaPointerAttributes attributes{};
    TINYLLM_CUDA_CHECK(cudaPointerGetAttributes(&attributes, p));
    return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

// An option view of attention_options, when set, must point to device memory.
template <class V>
void expect_device_option(const V& view, std::string_view option, std::string_view op) {
    if (!tinyllm::detail::has_view(view)) return;
    TINYLLM_EXPECT(is_device_memory(view.data()), op, ": attention_options::", option, " points to host memory (",
                   static_cast<const void*>(view.data()),
                   "); the CUDA kernels read it on the GPU, so it must point to "
                   "device memory (cudaMalloc, a cuda::device_buffer, or managed memory)");
}

// A launch grid from 64-bit block counts, checked against CUDA's limits on the
// host (x <= 2^31 - 1, y and z <= 65535): a count cast to unsigned unchecked
// would launch a smaller grid, or none. `what` says what the blocks are.
inline dim3 checked_grid(index_t x, index_t y, index_t z, std::string_view op, std::string_view what) {
    TINYLLM_EXPECT(x <= 2147483647 && y <= 65535 && z <= 65535, op, ": ", what, " need a grid of (", x, ", ", y, ", ",
                   z, ") blocks, beyond CUDA's grid limits (2147483647, 65535, 65535)");
    return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

// Validate (the CPU reference's checks, plus what every kernel needs) and
// bundle the arguments. `op` names the caller in messages. out shares no memory
// with q either (a kernel reads q in one thread and writes out in another).
template <class T>
attention_args<T> make_attention_args(tensor_view<T, 4> out, tensor_view<const T, 4> q, tensor_view<const T, 4> k,
                                      tensor_view<const T, 4> v, const attention_options& opts, std::string_view op) {
    tinyllm::detail::check_attention_shapes(out, q, k, v, op);
    tinyllm::detail::check_attention_options(opts, q, k, op);
    tinyllm::detail::check_attention_out(out, q, k, v, opts, op, false);
    TINYLLM_EXPECT(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && out.stride(3) == 1, op,
                   ": the head dim (last) of q, k, v and out must be contiguous (stride 1); strides are q ",
                   q.stride(3), ", k ", k.stride(3), ", v ", v.stride(3), ", out ", out.stride(3));
    constexpr index_t int_max = 2147483647;
    TINYLLM_EXPECT(q.extent(1) < int_max && k.extent(1) < int_max && q.size() < (index_t{1} << 40), op,
                   ": sequence lengths must be below 2^31");
    TINYLLM_EXPECT(q.extent(0) < int_max && q.extent(2) < int_max && k.extent(2) < int_max && q.extent(3) < int_max, op,
                   ": B = ", q.extent(0), ", Hq = ", q.extent(2), ", Hkv = ", k.extent(2), " and D = ", q.extent(3),
                   " must be below 2^31 (the kernels index with int)");
    if (tinyllm::detail::has_view(opts.alibi_slopes))
        TINYLLM_EXPECT(opts.alibi_slopes.stride(0) == 1, op, ": alibi_slopes must be contiguous");
    if (tinyllm::detail::has_view(opts.key_lengths))
        TINYLLM_EXPECT(opts.key_lengths.stride(0) == 1, op, ": key_lengths must be contiguous");
    expect_device_option(opts.alibi_slopes, "alibi_slopes", op);
    expect_device_option(opts.key_lengths, "key_lengths", op);
    attention_args<T> a;
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.o = out.data();
    a.q_sb = q.stride(0), a.q_st = q.stride(1), a.q_sh = q.stride(2);
    a.k_sb = k.stride(0), a.k_st = k.stride(1), a.k_sh = k.stride(2);
    a.v_sb = v.stride(0), a.v_st = v.stride(1), a.v_sh = v.stride(2);
    a.o_sb = out.stride(0), a.o_st = out.stride(1), a.o_sh = out.stride(2);
    a.B = static_cast<int>(q.extent(0)), a.Tq = static_cast<int>(q.extent(1)), a.Hq = static_cast<int>(q.extent(2));
    a.D = static_cast<int>(q.extent(3)), a.Tk = static_cast<int>(k.extent(1)), a.Hkv = static_cast<int>(k.extent(2));
    a.group = a.Hq / a.Hkv;
    a.scale = static_cast<float>(tinyllm::detail::attention_scale(opts, q.extent(3)));
    a.softcap = opts.softcap ? *opts.softcap : 0.0f;
    a.mask = tinyllm::detail::make_attention_mask(opts, q.extent(1), k.extent(1));
    a.slopes = opts.alibi_slopes.data();
    a.key_lengths = opts.key_lengths.data();
    return a;
}

// Opt in to more than 48 KiB of dynamic shared memory when a kernel needs it.
template <class Kernel>
void set_shared_memory(Kernel kernel, std::size_t bytes, std::string_view op) {
    int device = 0, limit = 0;
    TINYLLM_CUDA_CHECK(cudaGetDevice(&device));
    TINYLLM_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    TINYLLM_EXPECT(bytes <= static_cast<std::size_t>(limit), op, ": needs ", bytes,
                   " bytes of shared memory per block but this GPU allows ", limit, " (the head dim is too large)");
    if (bytes > 48 * 1024)
        TINYLLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Reductions over the 32 lanes of a warp (every lane gets the result).
__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// exp(s - m) that is 0 for a masked score (s = -inf), also when m = -inf.
__device__ __forceinline__ float exp_shifted(float s, float m) { return s == -INFINITY ? 0.0f : __expf(s - m); }

// One tile's online-softmax step for the two query rows a thread holds in a
// tensor-core accumulator (v5's mma.sync and v6's wgmma): rows g and g + 8 of
// its warp's 16, N scores in groups of 4 laid out (row0, row0, row1, row1), the
// 4 lanes of a quad holding the rest of the rows. x(i) is score i in log2 units
// (masked: -inf); it becomes exp2(x(i) - m_new). m0, m1 are the running maxima,
// l0, l1 this thread's part of the running sums; alpha0, alpha1 = exp2(m_old -
// m_new), what the rows of O are scaled by. A row that has seen no key yet
// subtracts 0 instead of its max -inf, so that masked scores and alpha give
// exp2(-inf) = 0, never -inf - -inf = NaN, without a test per element.
template <int N, class Score>
__device__ __forceinline__ void quad_online_softmax(Score x, float& m0, float& m1, float& l0, float& l1, float& alpha0,
                                                    float& alpha1) {
    static_assert(N % 4 == 0, "scores come in groups of 4: (row0, row0, row1, row1)");
    float tmax0 = -INFINITY, tmax1 = -INFINITY;
#pragma unroll
    for (int i = 0; i < N; i += 4) {
        tmax0 = fmaxf(tmax0, fmaxf(x(i), x(i + 1)));
        tmax1 = fmaxf(tmax1, fmaxf(x(i + 2), x(i + 3)));
    }
#pragma unroll
    for (int offset = 1; offset <= 2; offset *= 2) {
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, offset));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, offset));
    }
    const float new0 = fmaxf(m0, tmax0), new1 = fmaxf(m1, tmax1);
    const float base0 = new0 == -INFINITY ? 0.0f : new0, base1 = new1 == -INFINITY ? 0.0f : new1;
    alpha0 = exp2f(m0 - base0);
    alpha1 = exp2f(m1 - base1);
    m0 = new0;
    m1 = new1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int i = 0; i < N; i += 4) {
        x(i) = exp2f(x(i) - base0);
        x(i + 1) = exp2f(x(i + 1) - base0);
        x(i + 2) = exp2f(x(i + 2) - base1);
        x(i + 3) = exp2f(x(i + 3) - base1);
        sum0 += x(i) + x(i + 1);
        sum1 += x(i + 2) + x(i + 3);
    }
    l0 = alpha0 * l0 + sum0;
    l1 = alpha1 * l1 + sum1;
}

// The end of the online softmax for the same two rows: the quad's sums of l,
// and 1 / l (0 for a row that saw no key: its O row is 0).
__device__ __forceinline__ void quad_softmax_normalizers(float l0, float l1, float& inv0, float& inv1) {
#pragma unroll
    for (int offset = 1; offset <= 2; offset *= 2) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, offset);
        l1 += __shfl_xor_sync(0xffffffffu, l1, offset);
    }
    inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
}

}  // namespace detail
}  // namespace tinyllm::cuda
