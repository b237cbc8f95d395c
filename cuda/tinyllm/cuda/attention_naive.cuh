// tinyllm/cuda/attention_naive.cuh — attention v1: the formula, one kernel per step.
//
//     S = logit(Q K^T)  ->  P = softmax(S)  ->  O = P V
//
// v1 naive   Three kernels, each one thread per output element:
//              scores   thread (b, h, i, j) computes the dot product q_i . k_j
//                       (reading 2*D elements from global memory) and writes
//                       S[b, h, i, j], or -inf when masked;
//              softmax  thread (b, h, i) walks its row of S three times (max,
//                       exp and sum, normalize) and leaves P in place;
//              P V      thread (b, i, h, d) computes sum_j P[b,h,i,j] * v_j[d].
//            The (B, Hq, Tq, Tk) matrix S lives in global memory, so it is
//            also the probabilities: the caller passes it in and reads P back.
//
// Why it is slow — bytes moved, for B*Hq heads of Tq = Tk = T, head dim D:
//   * S is written once and read about four times (softmax: 3 passes; P V: 1):
//     ~5 * 4 bytes * B*Hq*T^2. At T = 2048, B*Hq = 128 heads that is 10.7 GB,
//     against 4 * 128*2048*128*4 = 0.54 GB for Q, K, V and O themselves.
//   * the scores kernel reads each q_i and k_j from global memory T times
//     (2*D loads per score, 2*D*B*Hq*T^2 loads in all; caches catch some);
//   * P V reads each row of P D times and each v_j T times, with no reuse
//     through shared memory.
// The arithmetic (4*B*Hq*T^2*D flops) is the same as in every later version;
// only the traffic differs. v2 tiles the two matrix products; v3 removes S.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace tinyllm::cuda {
namespace detail {

// Thread (b, h, i, j), flattened in the layout of S (B, Hq, Tq, Tk): j fastest.
template <class T>
__global__ void attention_naive_scores_kernel(attention_args<T> a, float* s) {
    const index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    const index_t total = static_cast<index_t>(a.B) * a.Hq * a.Tq * a.Tk;
    if (idx >= total) return;
    const int j = static_cast<int>(idx % a.Tk);
    const int i = static_cast<int>((idx / a.Tk) % a.Tq);
    const int h = static_cast<int>((idx / (static_cast<index_t>(a.Tk) * a.Tq)) % a.Hq);
    const int b = static_cast<int>(idx / (static_cast<index_t>(a.Tk) * a.Tq * a.Hq));
    if (!attention_visible_keys(a.mask, i, a.length(b)).contains(j)) {
        s[idx] = -INFINITY;
        return;
    }
    const T* qi = a.q_row(b, i, h);
    const T* kj = a.k_row(b, j, h / a.group);
    float dot = 0.0f;
    for (int d = 0; d < a.D; ++d) dot += to_float(qi[d]) * to_float(kj[d]);
    s[idx] = a.logit(dot, h, a.mask.query_position(i), j);
}

// Thread (b, h, i): softmax of one row of S, in place. A row with no visible
// key (all -inf) becomes zeros. (A template only so that several .cu files may
// include this header without duplicate symbols.)
template <class F = float>
__global__ void attention_naive_softmax_kernel(F* s, index_t rows, int tk) {
    const index_t row = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (row >= rows) return;
    F* x = s + row * tk;
    float m = -INFINITY;
    for (int j = 0; j < tk; ++j) m = fmaxf(m, x[j]);
    float sum = 0.0f;
    for (int j = 0; j < tk; ++j) {
        x[j] = exp_shifted(x[j], m);
        sum += x[j];
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = 0; j < tk; ++j) x[j] *= inv;
}

// Thread (b, i, h, d), flattened in the layout of O (B, Tq, Hq, D): d fastest.
template <class T>
__global__ void attention_naive_pv_kernel(attention_args<T> a, const float* p) {
    const index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    const index_t total = static_cast<index_t>(a.B) * a.Tq * a.Hq * a.D;
    if (idx >= total) return;
    const int d = static_cast<int>(idx % a.D);
    const int h = static_cast<int>((idx / a.D) % a.Hq);
    const int i = static_cast<int>((idx / (static_cast<index_t>(a.D) * a.Hq)) % a.Tq);
    const int b = static_cast<int>(idx / (static_cast<index_t>(a.D) * a.Hq * a.Tq));
    const float* prow = p + ((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * a.Tk;
    // Only the keys row i sees: P is 0 elsewhere, but 0 * V is NaN where V is
    // (padding past key_lengths may hold anything, an uninitialised cache NaN).
    const key_range keys = attention_visible_keys(a.mask, i, a.length(b));
    float acc = 0.0f;
    for (index_t j = keys.begin; j < keys.end; ++j)
        acc += prow[j] * to_float(a.v_row(b, static_cast<int>(j), h / a.group)[d]);
    a.o_row(b, i, h)[d] = from_float<T>(acc);
}

// Blocks of `threads` for n elements, checked against the grid limit.
inline dim3 blocks_for(index_t n, int threads) {
    return checked_grid(ceil_div<index_t>(n, threads), 1, 1, "attention_naive", "one thread per element");
}

}  // namespace detail

// v1: out = attention(q, k, v). `scores` (B, Hq, Tq, Tk), float, device: the
// workspace for S, holding the probabilities P afterwards. Supports every
// option of the CPU reference. T: float, bfloat16 or float16 (float math).
template <class T>
void attention_naive(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                     tensor_view<float, 4> scores, const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_naive");
    expect_shape(scores, extents<4>{a.B, a.Hq, a.Tq, a.Tk}, "attention_naive: scores");
    TINYLLM_EXPECT(scores.is_contiguous(), "attention_naive: scores must be contiguous");
    tinyllm::detail::check_attention_side_output("attention_naive", "scores", scores, out, q, k, v, opts);
    if (out.size() == 0) return;
    const int threads = 256;
    const index_t n_scores = scores.size();
    if (n_scores > 0) {
        launch(detail::attention_naive_scores_kernel<T>, detail::blocks_for(n_scores, threads), threads, 0, stream, a,
               scores.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
        const index_t rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
        launch(detail::attention_naive_softmax_kernel<float>, detail::blocks_for(rows, threads), threads, 0, stream,
               scores.data(), rows, a.Tk);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    launch(detail::attention_naive_pv_kernel<T>, detail::blocks_for(out.size(), threads), threads, 0, stream, a,
           scores.data());
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda
