// tinyllm/cuda/attention_backward.cuh — the backward pass of attention: from
// dO = dL/dO, the gradients dQ, dK and dV.
//
// The math is cpu::attention_backward's (<tinyllm/attention.hpp>; derived in
// docs/training.md). For one batch row and query head, with P = softmax(S)
// recomputed from Q and K:
//
//     dV    = P^T dO                           (Tk, D)
//     dP    = dO V^T                           (Tq, Tk)
//     delta = rowsum(dO o O)                   (Tq)      = rowsum(P o dP)
//     G     = P o (dP - delta) o dlogit/ddot   (Tq, Tk)  dlogit/ddot: scale, times the soft-cap's 1 - tanh^2
//     dQ    = G K,   dK = G^T Q
//
// and for GQA/MQA a K/V head's dK and dV are summed over the query heads that
// share it. Every option of the forward is supported (causal, window, ALiBi,
// soft-cap, scale, padding, GQA/MQA); the masks and the logit transform are the
// TINYLLM_HOST_DEVICE functions of attention.hpp, as in the forward kernels.
//
// v1 naive   attention_backward_naive: the formula, one small kernel per step,
//            with the (B, Hq, Tq, Tk) matrix in global memory (the caller's
//            `scores` workspace, as for attention_naive). P is recomputed by the
//            forward's v1 kernels; then, one thread per output element:
//              dV      thread (b, j, hkv, d): sum over the group's heads and all
//                      queries of P_ij dO_i[d];
//              delta   thread (b, h, i): sum_j P_ij (dO_i . V_j) — the same number
//                      as dO_i . O_i, without needing O;
//              G       thread (b, h, i, j): P_ij (dO_i . V_j - delta_i) dlogit/ddot,
//                      written over P in place;
//              dQ, dK  thread per element of dQ / dK: sum_j G_ij K_j, sum_i G_ij Q_i.
//            Memory: the T^2 matrix, written and read ~5 times; for T = 2048 and
//            B*Hq = 128 that is 2.1 GB, the same wall the forward's v1 hits.
//
// v2 flash   attention_backward_flash (FlashAttention-2's backward, Dao 2023,
//            in float32 CUDA-core math like the forward's v3). Nothing of size
//            T^2 is stored: the forward saves each row's log-sum-exp
//            (attention_flash with an lse argument), from which any P_ij =
//            exp(s_ij - lse_i) is recomputed from one dot product. Three kernels:
//              delta   one warp per query row: delta_i = dO_i . O_i (O from the forward);
//              dK, dV  block (key tile of 32, K/V head, b): holds its K, V tile and
//                      its dK, dV accumulators in shared memory and walks every
//                      query tile (16 rows) of every query head of the group that
//                      sees the key tile; per tile it recomputes P and G (lane c is
//                      key c) and adds P^T dO and G^T Q. Each block owns its keys'
//                      gradients, so GQA's sum over heads needs no atomics;
//              dQ      block (query tile of 16, head, b): the forward's loop over
//                      the visible key tiles, recomputing P and G, adding G K.
//            Determinism: FlashAttention-2 adds dQ with float atomics from the
//            key-tile blocks, whose order changes from run to run. Here dQ has
//            its own pass instead (it recomputes Q K^T and dO V^T once more:
//            7 matrix products per tile pair instead of 5), and every sum runs
//            in a fixed order: the gradients are the same bits on every run.
//            Memory: O(T) beyond the inputs and gradients (lse and delta,
//            4 bytes per row each) instead of the 4 T^2 bytes per head of v1.
//            Shared memory: ~4 * (160 D + 1100) bytes for dK/dV (D = 128: 86 KB),
//            ~4 * (112 D + 600) bytes for dQ; head dims 1..256.
//
// T: float, bfloat16 or float16 in and out (float math inside). The CPU
// reference's argument checks apply to every version (same messages); an empty
// gradient view (data() == nullptr) is not computed. Option views point to
// device memory (attention_common.cuh).
#pragma once

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/activation.cuh>  // detail::stream_workspace
#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_naive.cuh>
#include <tinyllm/cuda/launch.cuh>

#include <string_view>

namespace tinyllm::cuda {
namespace detail {

// A (B, T, H, D) tensor whose head dim is contiguous, as a pointer and three strides.
template <class E>
struct strided_rows {
    E* p = nullptr;
    index_t sb = 0, st = 0, sh = 0;
    TINYLLM_HOST_DEVICE E* row(int b, int t, int h) const { return p + b * sb + t * st + h * sh; }
};

template <class E>
strided_rows<E> rows_of(tensor_view<E, 4> x) {
    return {x.data(), x.stride(0), x.stride(1), x.stride(2)};
}

// Everything a backward kernel reads and writes. `a` carries q, k, v, the shapes
// and the options as in the forward (a.o is unused).
template <class T>
struct attention_backward_args {
    attention_args<T> a;
    strided_rows<const T> dout, out;  // (B, Tq, Hq, D); out: flash only
    strided_rows<T> dq;               // (B, Tq, Hq, D)   p == nullptr: not wanted
    strided_rows<T> dk, dv;           // (B, Tk, Hkv, D)  likewise
};

// A wanted gradient (dq, dk or dv) of `op` against a tensor its kernels read:
// apart (the heads of one fused buffer are: overlaps() sets them apart).
template <class T, class X>
void expect_gradient_apart(std::string_view op, std::string_view name, const tensor_view<T, 4>& grad,
                           std::string_view in_name, const X& in) {
    if (grad.data() == nullptr || in.data() == nullptr) return;
    tinyllm::detail::expect_apart(op, name, grad, in_name, in);
}
template <class T, class X>
void expect_gradients_apart(std::string_view op, const tensor_view<T, 4>& dq, const tensor_view<T, 4>& dk,
                            const tensor_view<T, 4>& dv, std::string_view in_name, const X& in) {
    expect_gradient_apart(op, "dq", dq, in_name, in);
    expect_gradient_apart(op, "dk", dk, in_name, in);
    expect_gradient_apart(op, "dv", dv, in_name, in);
}

// The CPU reference's checks, then what the kernels need (contiguous head dims,
// device memory for the options, int-sized dimensions, and gradients apart from
// every input: the kernels read q, k, v and dout after some gradient is
// written, where the CPU versions read everything first).
template <class T>
attention_backward_args<T> make_attention_backward_args(tensor_view<T, 4> dq, tensor_view<T, 4> dk, tensor_view<T, 4> dv,
                                                        tensor_view<const T, 4> dout, tensor_view<const T, 4> q,
                                                        tensor_view<const T, 4> k, tensor_view<const T, 4> v,
                                                        const attention_options& opts, std::string_view op) {
    tinyllm::detail::check_attention_backward_shapes(dq, dk, dv, dout, q, k, v, op);
    attention_backward_args<T> g;
    // q's shape stands in for the forward's output, which the backward does not write.
    g.a = make_attention_args<T>(tensor_view<T, 4>(nullptr, q.shape()), q, k, v, opts, op);
    const auto contiguous = [](const auto& x) { return x.data() == nullptr || x.stride(3) == 1; };
    TINYLLM_EXPECT(contiguous(dout) && contiguous(dq) && contiguous(dk) && contiguous(dv), op,
                   ": the head dim (last) of dout, dq, dk and dv must be contiguous (stride 1); strides are dout ",
                   dout.stride(3), ", dq ", dq.stride(3), ", dk ", dk.stride(3), ", dv ", dv.stride(3));
    expect_gradients_apart(op, dq, dk, dv, "q", q);
    expect_gradients_apart(op, dq, dk, dv, "k", k);
    expect_gradients_apart(op, dq, dk, dv, "v", v);
    expect_gradients_apart(op, dq, dk, dv, "dout", dout);
    expect_gradients_apart(op, dq, dk, dv, "alibi_slopes", opts.alibi_slopes);
    expect_gradients_apart(op, dq, dk, dv, "key_lengths", opts.key_lengths);
    g.dout = rows_of(dout);
    g.dq = rows_of(dq);
    g.dk = rows_of(dk);
    g.dv = rows_of(dv);
    return g;
}

// ---- v1 naive ------------------------------------------------------------------------

// Thread (b, j, hkv, d), in the layout of dV (B, Tk, Hkv, D): sum over the
// group's query heads h and every query i of P[b, h, i, j] dO[b, i, h, d]
// (P is 0 where masked).
template <class T>
__global__ void attention_backward_naive_dv_kernel(attention_backward_args<T> g, const float* p) {
    const attention_args<T>& a = g.a;
    const index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    const index_t total = static_cast<index_t>(a.B) * a.Tk * a.Hkv * a.D;
    if (idx >= total) return;
    const int d = static_cast<int>(idx % a.D);
    const int hkv = static_cast<int>((idx / a.D) % a.Hkv);
    const int j = static_cast<int>((idx / (static_cast<index_t>(a.D) * a.Hkv)) % a.Tk);
    const int b = static_cast<int>(idx / (static_cast<index_t>(a.D) * a.Hkv * a.Tk));
    float acc = 0.0f;
    for (int h = hkv * a.group; h < (hkv + 1) * a.group; ++h)
        for (int i = 0; i < a.Tq; ++i)
            acc += p[((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * a.Tk + j] * to_float(g.dout.row(b, i, h)[d]);
    g.dv.row(b, j, hkv)[d] = from_float<T>(acc);
}

// Thread (b, h, i): delta_i = sum_j P_ij (dO_i . V_j) over the visible keys,
// into delta (B, Hq, Tq).
template <class T>
__global__ void attention_backward_naive_delta_kernel(attention_backward_args<T> g, const float* p, float* delta) {
    const attention_args<T>& a = g.a;
    const index_t row = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (row >= static_cast<index_t>(a.B) * a.Hq * a.Tq) return;
    const int i = static_cast<int>(row % a.Tq);
    const int h = static_cast<int>((row / a.Tq) % a.Hq);
    const int b = static_cast<int>(row / (static_cast<index_t>(a.Tq) * a.Hq));
    const T* doi = g.dout.row(b, i, h);
    const key_range keys = attention_visible_keys(a.mask, i, a.length(b));
    float acc = 0.0f;
    for (index_t j = keys.begin; j < keys.end; ++j) {
        const T* vj = a.v_row(b, static_cast<int>(j), h / a.group);
        float dp = 0.0f;
        for (int d = 0; d < a.D; ++d) dp += to_float(doi[d]) * to_float(vj[d]);
        acc += p[row * a.Tk + j] * dp;
    }
    delta[row] = acc;
}

// Thread (b, h, i, j), in the layout of S: P_ij becomes
// G_ij = P_ij (dO_i . V_j - delta_i) dlogit/ddot(Q_i . K_j); 0 where masked.
template <class T>
__global__ void attention_backward_naive_grad_scores_kernel(attention_backward_args<T> g, float* s, const float* delta) {
    const attention_args<T>& a = g.a;
    const index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    const index_t total = static_cast<index_t>(a.B) * a.Hq * a.Tq * a.Tk;
    if (idx >= total) return;
    const int j = static_cast<int>(idx % a.Tk);
    const index_t row = idx / a.Tk;
    const int i = static_cast<int>(row % a.Tq);
    const int h = static_cast<int>((row / a.Tq) % a.Hq);
    const int b = static_cast<int>(row / (static_cast<index_t>(a.Tq) * a.Hq));
    if (!attention_visible_keys(a.mask, i, a.length(b)).contains(j)) {
        s[idx] = 0.0f;
        return;
    }
    const T* qi = a.q_row(b, i, h);
    const T* doi = g.dout.row(b, i, h);
    const T* kj = a.k_row(b, j, h / a.group);
    const T* vj = a.v_row(b, j, h / a.group);
    float dot = 0.0f, dp = 0.0f;
    for (int d = 0; d < a.D; ++d) {
        dot += to_float(qi[d]) * to_float(kj[d]);
        dp += to_float(doi[d]) * to_float(vj[d]);
    }
    s[idx] = s[idx] * (dp - delta[row]) * attention_logit_derivative(dot, a.scale, a.softcap);
}

// Thread (b, i, h, d), in the layout of dQ: sum over the visible keys of G_ij K_j[d].
template <class T>
__global__ void attention_backward_naive_dq_kernel(attention_backward_args<T> g, const float* gs) {
    const attention_args<T>& a = g.a;
    const index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    const index_t total = static_cast<index_t>(a.B) * a.Tq * a.Hq * a.D;
    if (idx >= total) return;
    const int d = static_cast<int>(idx % a.D);
    const int h = static_cast<int>((idx / a.D) % a.Hq);
    const int i = static_cast<int>((idx / (static_cast<index_t>(a.D) * a.Hq)) % a.Tq);
    const int b = static_cast<int>(idx / (static_cast<index_t>(a.D) * a.Hq * a.Tq));
    const float* grow = gs + ((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * a.Tk;
    // Only the visible keys: padding keys may hold anything (NaN), and 0 * NaN is NaN.
    const key_range keys = attention_visible_keys(a.mask, i, a.length(b));
    float acc = 0.0f;
    for (index_t j = keys.begin; j < keys.end; ++j) acc += grow[j] * to_float(a.k_row(b, static_cast<int>(j), h / a.group)[d]);
    g.dq.row(b, i, h)[d] = from_float<T>(acc);
}

// Thread (b, j, hkv, d), in the layout of dK: sum over the group's heads and
// every query of G_ij Q_i[d] (G is 0 where masked).
template <class T>
__global__ void attention_backward_naive_dk_kernel(attention_backward_args<T> g, const float* gs) {
    const attention_args<T>& a = g.a;
    const index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    const index_t total = static_cast<index_t>(a.B) * a.Tk * a.Hkv * a.D;
    if (idx >= total) return;
    const int d = static_cast<int>(idx % a.D);
    const int hkv = static_cast<int>((idx / a.D) % a.Hkv);
    const int j = static_cast<int>((idx / (static_cast<index_t>(a.D) * a.Hkv)) % a.Tk);
    const int b = static_cast<int>(idx / (static_cast<index_t>(a.D) * a.Hkv * a.Tk));
    float acc = 0.0f;
    for (int h = hkv * a.group; h < (hkv + 1) * a.group; ++h)
        for (int i = 0; i < a.Tq; ++i)
            acc += gs[((static_cast<index_t>(b) * a.Hq + h) * a.Tq + i) * a.Tk + j] * to_float(a.q_row(b, i, h)[d]);
    g.dk.row(b, j, hkv)[d] = from_float<T>(acc);
}

// ---- v2 flash ------------------------------------------------------------------------

inline constexpr int flash_backward_threads = 128;  // 4 warps
inline constexpr int flash_backward_bq = 16;  // query rows per tile
inline constexpr int flash_backward_bk = 32;  // keys per tile: one per lane

// Offsets (in floats) of the shared-memory arrays of the two flash backward kernels.
struct flash_backward_smem {
    int ks, vs, qs, dos, acc, ps, gs, lse, delta, total;
    int kstride;  // K and V rows padded to an odd number of floats: no bank conflicts
    // dK/dV kernel: acc holds dK then dV, (32, D) each.
    TINYLLM_HOST_DEVICE static flash_backward_smem make_dkdv(int d) {
        flash_backward_smem s;
        s.kstride = d | 1;
        s.ks = 0;                                                  // (32, kstride)  the key tile
        s.vs = s.ks + flash_backward_bk * s.kstride;               // (32, kstride)  the value tile
        s.acc = s.vs + flash_backward_bk * s.kstride;              // (2, 32, D)     dK, dV of the tile
        s.qs = s.acc + 2 * flash_backward_bk * d;                  // (16, D)        a query tile
        s.dos = s.qs + flash_backward_bq * d;                      // (16, D)        its dO rows
        s.ps = s.dos + flash_backward_bq * d;                      // (16, 32)       P of the tile pair
        s.gs = s.ps + flash_backward_bq * flash_backward_bk;       // (16, 32)       G of the tile pair
        s.lse = s.gs + flash_backward_bq * flash_backward_bk;      // (16)
        s.delta = s.lse + flash_backward_bq;                       // (16)
        s.total = s.delta + flash_backward_bq;
        return s;
    }
    // dQ kernel: acc holds dQ, (16, D); no P.
    TINYLLM_HOST_DEVICE static flash_backward_smem make_dq(int d) {
        flash_backward_smem s;
        s.kstride = d | 1;
        s.ks = 0;
        s.vs = s.ks + flash_backward_bk * s.kstride;
        s.qs = s.vs + flash_backward_bk * s.kstride;
        s.dos = s.qs + flash_backward_bq * d;
        s.acc = s.dos + flash_backward_bq * d;
        s.ps = s.acc + flash_backward_bq * d;  // unused: empty
        s.gs = s.ps;
        s.lse = s.gs + flash_backward_bq * flash_backward_bk;
        s.delta = s.lse + flash_backward_bq;
        s.total = s.delta + flash_backward_bq;
        return s;
    }
};

// One warp per query row (b, i, h): delta (B, Hq, Tq) = dO_i . O_i.
template <class T>
__global__ void attention_backward_flash_delta_kernel(attention_backward_args<T> g, float* delta) {
    const attention_args<T>& a = g.a;
    const int lane = threadIdx.x % 32;
    const index_t row = (blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x) / 32;
    if (row >= static_cast<index_t>(a.B) * a.Hq * a.Tq) return;  // whole warps leave together
    const int i = static_cast<int>(row % a.Tq);
    const int h = static_cast<int>((row / a.Tq) % a.Hq);
    const int b = static_cast<int>(row / (static_cast<index_t>(a.Tq) * a.Hq));
    const T* doi = g.dout.row(b, i, h);
    const T* oi = g.out.row(b, i, h);
    float acc = 0.0f;
    for (int d = lane; d < a.D; d += 32) acc += to_float(doi[d]) * to_float(oi[d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

// P and G of a (16 query rows) x (32 keys) tile pair, from the tiles in shared
// memory: warp w takes rows w, w + 4, ...; lane c is key k0 + c. P_ij =
// exp(s_ij - lse_i) and G_ij = P_ij (dO_i . V_j - delta_i) dlogit/ddot; both 0
// where masked, past the tile's rows or keys. P is stored only when want_p
// (the dK/dV kernel; dQ needs G alone).
template <class T>
__device__ void attention_backward_flash_tile(const attention_args<T>& a, const flash_backward_smem& L, float* smem,
                                              int h, index_t length, int q0, int rows, index_t k0, int kn, bool want_p) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = flash_backward_threads / 32;
    const float* qs = smem + L.qs;
    const float* dos = smem + L.dos;
    const float* kr = smem + L.ks + lane * L.kstride;
    const float* vr = smem + L.vs + lane * L.kstride;
    for (int r = warp; r < flash_backward_bq; r += warps) {
        const int i = q0 + r;
        const index_t j = k0 + lane;
        float p = 0.0f, grad = 0.0f;
        if (r < rows && lane < kn && attention_visible_keys(a.mask, i, length).contains(j)) {
            float dot = 0.0f, dp = 0.0f;
            for (int d = 0; d < a.D; ++d) {
                dot += qs[r * a.D + d] * kr[d];
                dp += dos[r * a.D + d] * vr[d];
            }
            const float s = a.logit(dot, h, a.mask.query_position(i), j);
            p = __expf(s - smem[L.lse + r]);
            grad = p * (dp - smem[L.delta + r]) * attention_logit_derivative(dot, a.scale, a.softcap);
        }
        if (want_p) smem[L.ps + r * flash_backward_bk + lane] = p;
        smem[L.gs + r * flash_backward_bk + lane] = grad;
    }
}

// Query rows q0 .. q0 + rows - 1 of head h into shared memory: Q, dO (zeros past
// `rows`), lse and delta.
template <class T>
__device__ void attention_backward_flash_load_queries(const attention_backward_args<T>& g, tensor_view<const float, 3> lse,
                                                      const float* delta, const flash_backward_smem& L, float* smem,
                                                      int b, int h, int q0, int rows) {
    const attention_args<T>& a = g.a;
    for (int idx = threadIdx.x; idx < flash_backward_bq * a.D; idx += flash_backward_threads) {
        const int r = idx / a.D, d = idx % a.D;
        const bool in = r < rows;
        smem[L.qs + idx] = in ? to_float(a.q_row(b, q0 + r, h)[d]) : 0.0f;
        smem[L.dos + idx] = in ? to_float(g.dout.row(b, q0 + r, h)[d]) : 0.0f;
    }
    for (int r = threadIdx.x; r < flash_backward_bq; r += flash_backward_threads) {
        const bool in = r < rows;
        smem[L.lse + r] = in ? lse(b, h, q0 + r) : 0.0f;
        smem[L.delta + r] = in ? delta[(static_cast<index_t>(b) * a.Hq + h) * a.Tq + q0 + r] : 0.0f;
    }
}

// Keys k0 .. k0 + kn - 1 of K/V head hkv into shared memory (zeros past kn).
template <class T>
__device__ void attention_backward_flash_load_keys(const attention_args<T>& a, const flash_backward_smem& L, float* smem,
                                                   int b, int hkv, index_t k0, int kn) {
    for (int idx = threadIdx.x; idx < flash_backward_bk * a.D; idx += flash_backward_threads) {
        const int c = idx / a.D, d = idx % a.D;
        const bool in = c < kn;
        smem[L.ks + c * L.kstride + d] = in ? to_float(a.k_row(b, static_cast<int>(k0) + c, hkv)[d]) : 0.0f;
        smem[L.vs + c * L.kstride + d] = in ? to_float(a.v_row(b, static_cast<int>(k0) + c, hkv)[d]) : 0.0f;
    }
}

// Block (key tile, K/V head, b): dK and dV of 32 keys, summed over every query
// tile of every query head of the group, in a fixed order.
template <class T>
__global__ void __launch_bounds__(flash_backward_threads)
    attention_backward_flash_dkdv_kernel(attention_backward_args<T> g, tensor_view<const float, 3> lse, const float* delta) {
    float* smem = dynamic_shared<float>();
    const attention_args<T>& a = g.a;
    const flash_backward_smem L = flash_backward_smem::make_dkdv(a.D);
    float* dks = smem + L.acc;
    float* dvs = dks + flash_backward_bk * a.D;
    const int b = blockIdx.z, hkv = blockIdx.y;
    const index_t k0 = static_cast<index_t>(blockIdx.x) * flash_backward_bk;
    const index_t length = a.length(b);
    const int kn = static_cast<int>(a.Tk - k0 < flash_backward_bk ? a.Tk - k0 : flash_backward_bk);  // keys of the tile
    // Of them, the ones before the row's length; padding keys are never loaded.
    const int valid = static_cast<int>(length - k0 < 0 ? 0 : (length - k0 < kn ? length - k0 : kn));

    attention_backward_flash_load_keys(a, L, smem, b, hkv, k0, valid);
    for (int idx = threadIdx.x; idx < 2 * flash_backward_bk * a.D; idx += flash_backward_threads) dks[idx] = 0.0f;
    __syncthreads();

    for (int h = hkv * a.group; valid > 0 && h < (hkv + 1) * a.group; ++h)
        for (int q0 = 0; q0 < a.Tq; q0 += flash_backward_bq) {
            if (attention_classify_tile(a.mask, q0, flash_backward_bq, k0, valid, length) == attention_tile::skip) continue;
            const int rows = a.Tq - q0 < flash_backward_bq ? a.Tq - q0 : flash_backward_bq;
            // 1. The query tile.
            attention_backward_flash_load_queries(g, lse, delta, L, smem, b, h, q0, rows);
            __syncthreads();
            // 2. P and G of the tile pair.
            attention_backward_flash_tile(a, L, smem, h, length, q0, rows, k0, valid, true);
            __syncthreads();
            // 3. dV += P^T dO, dK += G^T Q: thread per (key c, feature d).
            for (int idx = threadIdx.x; idx < valid * a.D; idx += flash_backward_threads) {
                const int c = idx / a.D, d = idx % a.D;
                float acc_k = dks[idx], acc_v = dvs[idx];
                for (int r = 0; r < rows; ++r) {
                    acc_v += smem[L.ps + r * flash_backward_bk + c] * smem[L.dos + r * a.D + d];
                    acc_k += smem[L.gs + r * flash_backward_bk + c] * smem[L.qs + r * a.D + d];
                }
                dks[idx] = acc_k;
                dvs[idx] = acc_v;
            }
            __syncthreads();
        }

    // Keys nobody sees (padding, or masked for every query) get 0.
    for (int idx = threadIdx.x; idx < kn * a.D; idx += flash_backward_threads) {
        const int c = idx / a.D, d = idx % a.D;
        const int j = static_cast<int>(k0) + c;
        if (g.dk.p != nullptr) g.dk.row(b, j, hkv)[d] = from_float<T>(dks[idx]);
        if (g.dv.p != nullptr) g.dv.row(b, j, hkv)[d] = from_float<T>(dvs[idx]);
    }
}

// Block (query tile, head, b): dQ of 16 query rows over the key tiles they see.
template <class T>
__global__ void __launch_bounds__(flash_backward_threads)
    attention_backward_flash_dq_kernel(attention_backward_args<T> g, tensor_view<const float, 3> lse, const float* delta) {
    float* smem = dynamic_shared<float>();
    const attention_args<T>& a = g.a;
    const flash_backward_smem L = flash_backward_smem::make_dq(a.D);
    float* dqs = smem + L.acc;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * flash_backward_bq;
    const int rows = a.Tq - q0 < flash_backward_bq ? a.Tq - q0 : flash_backward_bq;
    const index_t length = a.length(b);
    const key_range range = attention_tile_keys(a.mask, q0, rows, length);  // never past length

    attention_backward_flash_load_queries(g, lse, delta, L, smem, b, h, q0, rows);
    for (int idx = threadIdx.x; idx < flash_backward_bq * a.D; idx += flash_backward_threads) dqs[idx] = 0.0f;
    __syncthreads();

    for (index_t k0 = range.begin; k0 < range.end; k0 += flash_backward_bk) {
        const int kn = static_cast<int>(range.end - k0 < flash_backward_bk ? range.end - k0 : flash_backward_bk);
        attention_backward_flash_load_keys(a, L, smem, b, h / a.group, k0, kn);
        __syncthreads();
        attention_backward_flash_tile(a, L, smem, h, length, q0, rows, k0, kn, false);
        __syncthreads();
        // dQ += G K: thread per (row r, feature d).
        for (int idx = threadIdx.x; idx < rows * a.D; idx += flash_backward_threads) {
            const int r = idx / a.D, d = idx % a.D;
            float acc = dqs[idx];
            for (int c = 0; c < kn; ++c) acc += smem[L.gs + r * flash_backward_bk + c] * smem[L.ks + c * L.kstride + d];
            dqs[idx] = acc;
        }
        __syncthreads();
    }

    for (int idx = threadIdx.x; idx < rows * a.D; idx += flash_backward_threads) {
        const int r = idx / a.D, d = idx % a.D;
        g.dq.row(b, q0 + r, h)[d] = from_float<T>(dqs[idx]);
    }
}

}  // namespace detail

// v1: dq, dk, dv = the gradients of attention(q, k, v) for dout. `scores`
// (B, Hq, Tq, Tk), float, device, contiguous: the workspace for P and then G.
// Shapes and options as cpu::attention_backward; an empty gradient is skipped.
template <class T>
void attention_backward_naive(tensor_view<T, 4> dq, tensor_view<T, 4> dk, tensor_view<T, 4> dv,
                              std::type_identity_t<tensor_view<const T, 4>> dout,
                              std::type_identity_t<tensor_view<const T, 4>> q,
                              std::type_identity_t<tensor_view<const T, 4>> k,
                              std::type_identity_t<tensor_view<const T, 4>> v, tensor_view<float, 4> scores,
                              const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "attention_backward_naive";
    const auto g = detail::make_attention_backward_args<T>(dq, dk, dv, dout, q, k, v, opts, op);
    const auto& a = g.a;
    expect_shape(scores, extents<4>{a.B, a.Hq, a.Tq, a.Tk}, "attention_backward_naive: scores");
    TINYLLM_EXPECT(scores.is_contiguous(), op, ": scores must be contiguous");
    detail::expect_gradients_apart(op, dq, dk, dv, "scores", scores);
    tinyllm::detail::check_attention_side_output(op, "scores", scores, tensor_view<T, 4>{}, q, k, v, opts);
    tinyllm::detail::expect_apart(op, "scores", scores, "dout", dout);
    const bool want_dq = dq.data() != nullptr, want_dk = dk.data() != nullptr, want_dv = dv.data() != nullptr;
    const int threads = 256;
    const auto blocks = [&](index_t n) { return detail::blocks_for(n, threads); };
    const index_t n_scores = scores.size(), rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
    if (n_scores > 0) {  // 1. P, as the forward's v1
        launch(detail::attention_naive_scores_kernel<T>, blocks(n_scores), threads, 0, stream, a, scores.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
        launch(detail::attention_naive_softmax_kernel<float>, blocks(rows), threads, 0, stream, scores.data(), rows, a.Tk);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_dv && dv.size() > 0) {  // 2. dV = P^T dO, before P is overwritten
        launch(detail::attention_backward_naive_dv_kernel<T>, blocks(dv.size()), threads, 0, stream, g, scores.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (!want_dq && !want_dk) return;
    if (n_scores > 0) {  // 3. delta, then G over P
        float* delta = static_cast<float*>(detail::stream_workspace(sizeof(float) * static_cast<std::size_t>(rows), stream));
        launch(detail::attention_backward_naive_delta_kernel<T>, blocks(rows), threads, 0, stream, g, scores.data(), delta);
        TINYLLM_CUDA_CHECK_LAUNCH();
        launch(detail::attention_backward_naive_grad_scores_kernel<T>, blocks(n_scores), threads, 0, stream, g,
               scores.data(), delta);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_dq && dq.size() > 0) {  // 4. dQ = G K, dK = G^T Q
        launch(detail::attention_backward_naive_dq_kernel<T>, blocks(dq.size()), threads, 0, stream, g, scores.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_dk && dk.size() > 0) {
        launch(detail::attention_backward_naive_dk_kernel<T>, blocks(dk.size()), threads, 0, stream, g, scores.data());
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

// v2: the same gradients without the T^2 matrix (FlashAttention-2's backward,
// deterministic). Takes what the forward saved: `out` (B, Tq, Hq, D), its
// output, and `lse` (B, Hq, Tq), float, device, each row's log-sum-exp
// (attention_flash(out, lse, q, k, v, opts) writes both; cpu::attention too).
// Head dims 1..256.
template <class T>
void attention_backward_flash(tensor_view<T, 4> dq, tensor_view<T, 4> dk, tensor_view<T, 4> dv,
                              std::type_identity_t<tensor_view<const T, 4>> dout,
                              std::type_identity_t<tensor_view<const T, 4>> q,
                              std::type_identity_t<tensor_view<const T, 4>> k,
                              std::type_identity_t<tensor_view<const T, 4>> v,
                              std::type_identity_t<tensor_view<const T, 4>> out, tensor_view<const float, 3> lse,
                              const attention_options& opts = {}, cudaStream_t stream = nullptr) {
    constexpr std::string_view op = "attention_backward_flash";
    auto g = detail::make_attention_backward_args<T>(dq, dk, dv, dout, q, k, v, opts, op);
    const auto& a = g.a;
    TINYLLM_EXPECT(a.D <= 256, op, " supports head dims up to 256, got ", a.D);
    if (out.shape() != q.shape())
        TINYLLM_FAIL(op, ": out has shape ", to_string(out.shape()), " but must have the shape of q ", to_string(q.shape()),
                     " (B, Tq, Hq, D)");
    TINYLLM_EXPECT(out.stride(3) == 1, op, ": the head dim (last) of out must be contiguous (stride 1), not ", out.stride(3));
    expect_shape(lse, extents<3>{q.extent(0), q.extent(2), q.extent(1)}, "attention_backward_flash: lse");
    detail::expect_gradients_apart(op, dq, dk, dv, "out", out);
    detail::expect_gradients_apart(op, dq, dk, dv, "lse", lse);
    g.out = detail::rows_of(out);
    const bool want_dq = dq.data() != nullptr, want_kv = dk.data() != nullptr || dv.data() != nullptr;
    const index_t rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
    float* delta = nullptr;
    if (rows > 0) {  // 1. delta = rowsum(dO o O)
        delta = static_cast<float*>(detail::stream_workspace(sizeof(float) * static_cast<std::size_t>(rows), stream));
        const dim3 grid = detail::checked_grid(ceil_div<index_t>(rows, detail::flash_backward_threads / 32), 1, 1, op,
                                               "the query rows (one warp each)");
        launch(detail::attention_backward_flash_delta_kernel<T>, grid, detail::flash_backward_threads, 0, stream, g, delta);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_kv && a.B > 0 && a.Tk > 0) {  // 2. dK, dV per key tile (zeros where no query looks)
        const dim3 grid = detail::checked_grid(ceil_div<index_t>(a.Tk, detail::flash_backward_bk), a.Hkv, a.B, op,
                                               "the key tiles (Tk / 32, Hkv, B)");
        const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(detail::flash_backward_smem::make_dkdv(a.D).total);
        auto kernel = detail::attention_backward_flash_dkdv_kernel<T>;
        detail::set_shared_memory(kernel, bytes, op);
        launch(kernel, grid, detail::flash_backward_threads, bytes, stream, g, lse, static_cast<const float*>(delta));
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    if (want_dq && rows > 0) {  // 3. dQ per query tile
        const dim3 grid = detail::checked_grid(ceil_div<index_t>(a.Tq, detail::flash_backward_bq), a.Hq, a.B, op,
                                               "the query tiles (Tq / 16, Hq, B)");
        const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(detail::flash_backward_smem::make_dq(a.D).total);
        auto kernel = detail::attention_backward_flash_dq_kernel<T>;
        detail::set_shared_memory(kernel, bytes, op);
        launch(kernel, grid, detail::flash_backward_threads, bytes, stream, g, lse, static_cast<const float*>(delta));
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace tinyllm::cuda
