// tinyllm/attention_tiled.hpp — attention on the CPU the way FlashAttention
// computes it on a GPU: key blocks with an online softmax, in float, over
// threads. The forward, the decode path over a kv_cache, and the backward.
//
// cpu::attention (attention.hpp) is the reference: for each query row it
// computes all the row's scores in double, takes their maximum, exponentiates,
// normalizes and forms P V — three passes over a row of Tk scores, one thread,
// double arithmetic. It is the definition the kernels are tested against, and
// it is slow on purpose: every step is visible.
//
// cpu::attention_tiled computes the same function differently:
//
//   * Key blocks and the online softmax. A work item owns a block of query
//     rows (32) of one head and walks its visible keys in blocks of 64. For
//     each key block it computes the 32x64 scores, and folds them into three
//     running quantities per row (Milakov & Gimelshein 2018; Dao et al. 2022):
//         m = the maximum score seen so far
//         l = sum over the keys seen of exp(s_j - m)
//         o = sum over the keys seen of exp(s_j - m) v_j          (D floats)
//     A new block with scores s_j updates them exactly:
//         m'    = max(m, max_j s_j)
//         alpha = exp(m - m')              rescales everything summed so far
//         l'    = alpha l + sum_j exp(s_j - m')
//         o'    = alpha o + sum_j exp(s_j - m') v_j
//     and after the last block O = o / l, log-sum-exp = m + log l. The Tq x Tk
//     score matrix is never stored: only one 32x64 block of it exists at a time.
//   * Blocks that no query of the item can see — above the causal diagonal,
//     before a sliding window, past the padding — are never touched
//     (attention_tile_keys, attention_classify_tile: the same helpers the CUDA
//     kernels use). Blocks every query sees fully skip the per-element mask.
//   * Float arithmetic, converted once from T on load (float, double, bfloat16,
//     float16) and rounded once to T on store, as the CUDA kernels do.
//   * A layout for the cache and the vector unit. A work item copies its query
//     rows (32 x D) and each key block, TRANSPOSED (D x 64), into small float
//     buffers that stay in L1/L2. Every product is then a small matrix product
//     of row-major blocks (attention_block_gemm),
//         scores:  s[r][0..64) += q[r][d] * kt[d][0..64)     for d = 0 .. D-1
//         output:  o[r][0..D)  += p[r][c] * v[c][0..D)       for c = 0 .. 63
//     whose innermost loop runs over contiguous floats with no reduction: the
//     compiler vectorizes it without reassociating any sum (no -ffast-math),
//     and every sum keeps a fixed order. With GCC and Clang, blocks of 4 rows x
//     8 columns are also kept in vector registers over the whole sum.
//   * Threads: with OpenMP (compiled with -fopenmp; _OPENMP defined) the work
//     items, (batch x head x query block), run in parallel, the heaviest
//     (last, under causal) query blocks first. Without OpenMP the same items run
//     in order on one thread; so do calls of less than 2^17 (~1.3e5) multiply-adds,
//     where starting the threads costs more than they gain. Each item writes
//     only its own output rows and computes them in an order that does not
//     depend on which thread runs it, so the result is the same bits for any
//     number of threads.
//
// Decode (one or a few new queries against a long cache): a call with at most
// 32 query rows has only B x Hq work items — with B = 1 and few heads, fewer
// than the threads. Such a call also splits the keys into chunks of 512 (the
// "split-K" of flash-decoding): each (row block, chunk) item leaves its (m, l,
// o) partials, and a second step combines the chunks of each row in chunk
// order, with the same rescaling as above. The chunk size is fixed, not derived
// from the thread count, so the bits again do not depend on the thread count;
// with Tk <= 512 there is one chunk and no combine step.
//
// The backward (FlashAttention-2's, Dao 2023) recomputes P from the saved
// log-sum-exp instead of storing it: P_ij = exp(s_ij - lse_i). With
// delta_i = rowsum(dO_i o O_i):
//     dV = P^T dO,   dP = dO V^T,   G = P o (dP - delta) o dlogit/ddot,
//     dQ = G K,      dK = G^T Q
// in two passes so that no two threads ever add into the same element:
//     dK, dV  item (b, K/V head, key block): walks every query block of every
//             query head of the GQA group that sees its keys, in a fixed order
//             (so GQA's sum over the group needs no locks);
//     dQ      item (b, head, query block): walks the key blocks its rows see.
// The products Q K^T and dO V^T are computed twice (once per pass), the price of
// determinism without atomics — the CUDA flash backward makes the same trade.
//
// Accuracy: float accumulation over D products and Tk keys; the tests compare
// with the double reference and report the max-abs and relative-L2 errors
// (docs/cpu.md, the tiled attention's accuracy table, has the numbers).
#pragma once

#include <tinyllm/attention.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/threads.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tinyllm {
namespace detail {

inline constexpr index_t attention_tiled_bq = 32;            // query rows per work item
inline constexpr index_t attention_tiled_bk = 64;            // keys per block
inline constexpr index_t attention_tiled_split_keys = 512;   // keys per chunk of a split (decode) call

inline float attention_to_float(float x) { return x; }
inline float attention_to_float(double x) { return static_cast<float>(x); }
inline float attention_to_float(bfloat16 x) { return to_float(x); }
inline float attention_to_float(float16 x) { return to_float(x); }

template <class T>
T attention_from_float(float x) {
    if constexpr (std::is_same_v<T, double>) return x;
    else return from_float<T>(x);
}

// exp(s - m), and 0 for a masked score (s = -inf), never NaN.
inline float attention_exp_shifted(float s, float m) {
    return s == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(s - m);
}

// The block columns [c0, c1) of the keys visible to a row, from its key range
// and the block [k0, k0 + kn).
inline void attention_block_columns(const key_range& visible, index_t k0, index_t kn, index_t& c0, index_t& c1) {
    c0 = std::clamp<index_t>(visible.begin - k0, 0, kn);
    c1 = std::clamp<index_t>(visible.end - k0, c0, kn);
}

// Below this many multiply-adds (an estimate per call) the work runs on the
// calling thread: starting and joining a team of threads costs microseconds on
// an idle machine (a thread that is not scheduled holds up the join, so more on
// a loaded one). 2^17 multiply-adds is about 30 us on one core; one decode
// step's attention in a GPT-2 124M layer at 128 cached positions (2 x 12 heads x
// 128 x 64 = 2e5) is above it, and gains from sharing its heads.
inline constexpr double attention_tiled_parallel_work = 1 << 17;

// Runs body(item, scratch) for every item in [0, n): over cpu::num_threads()
// OpenMP threads when compiled with OpenMP and `work` (multiply-adds, an
// estimate) is at least attention_tiled_parallel_work, in order otherwise. Each thread makes its own
// scratch (make_scratch()) once. Items are handed out one at a time
// (schedule(dynamic)) because their costs differ (causal: later query blocks
// see more keys); what an item computes does not depend on the thread.
template <class MakeScratch, class Body>
void attention_tiled_for(index_t n, [[maybe_unused]] double work, const MakeScratch& make_scratch, const Body& body) {
    if (n <= 0) return;
#if defined(_OPENMP)
#pragma omp parallel num_threads(cpu::num_threads()) if (n > 1 && work >= attention_tiled_parallel_work)
    {
        auto scratch = make_scratch();
#pragma omp for schedule(dynamic, 1)
        for (index_t item = 0; item < n; ++item) body(item, scratch);
    }
#else
    auto scratch = make_scratch();
    for (index_t item = 0; item < n; ++item) body(item, scratch);
#endif
}

// Copies n elements (stride apart) of a row into floats.
template <class T>
void attention_load_row(float* dst, const T* src, index_t n, index_t stride) {
    if (stride == 1)
        for (index_t d = 0; d < n; ++d) dst[d] = attention_to_float(src[d]);
    else
        for (index_t d = 0; d < n; ++d) dst[d] = attention_to_float(src[d * stride]);
}

// Element (b, t, h, 0) of a (B, T, H, D) view: the start of one head's row.
template <class T>
T* attention_row(const tensor_view<T, 4>& x, index_t b, index_t t, index_t h) {
    return x.data() + b * x.stride(0) + t * x.stride(1) + h * x.stride(2);
}

// Asks the cache for the row `ahead` keys after key j of head h (if there is
// one): one head's consecutive keys are H * D elements apart — for H * D * 4
// bytes >= 4 KB, a new memory page per key, where the hardware prefetchers
// (which stop at page boundaries) do not help, and each key row would wait for
// memory in turn. A hint only (GCC, Clang); nothing elsewhere.
template <class T>
void attention_prefetch_row([[maybe_unused]] const tensor_view<const T, 4>& x, [[maybe_unused]] index_t b,
                            [[maybe_unused]] index_t j, [[maybe_unused]] index_t h, [[maybe_unused]] index_t end) {
#if defined(__GNUC__)
    constexpr index_t ahead = 8, line = 64;
    if (j + ahead >= end) return;
    const char* p = reinterpret_cast<const char*>(attention_row(x, b, j + ahead, h));
    const index_t bytes = (x.extent(3) - 1) * x.stride(3) * static_cast<index_t>(sizeof(T)) + static_cast<index_t>(sizeof(T));
    for (index_t o = 0; o < bytes; o += line) __builtin_prefetch(p + o);
#endif
}

// Keys [k0, k0 + kn) of head hkv into kt (D, bk), transposed, with zeros in the
// columns kn .. bk-1 (the score loop always runs over all bk columns; padding
// keys are never read, they may hold anything).
template <class T>
void attention_load_keys_transposed(float* kt, const tensor_view<const T, 4>& k, index_t b, index_t k0, index_t kn,
                                    index_t hkv) {
    constexpr index_t bk = attention_tiled_bk;
    const index_t D = k.extent(3), sd = k.stride(3);
    for (index_t c = 0; c < kn; ++c) {
        attention_prefetch_row(k, b, k0 + c, hkv, k0 + kn);
        const T* src = attention_row(k, b, k0 + c, hkv);
        for (index_t d = 0; d < D; ++d) kt[d * bk + c] = attention_to_float(src[d * sd]);
    }
    for (index_t d = 0; d < D; ++d)
        for (index_t c = kn; c < bk; ++c) kt[d * bk + c] = 0.0f;
}

// Keys [k0, k0 + kn) of head hkv into rows (kn, D).
template <class T>
void attention_load_keys(float* rows, const tensor_view<const T, 4>& k, index_t b, index_t k0, index_t kn, index_t hkv) {
    const index_t D = k.extent(3);
    for (index_t c = 0; c < kn; ++c) {
        attention_prefetch_row(k, b, k0 + c, hkv, k0 + kn);
        attention_load_row(rows + c * D, attention_row(k, b, k0 + c, hkv), D, k.stride(3));
    }
}

// q . k over D elements, k of any element type and stride, in 8 partial sums
// (element d in sum d % 8) that a compiler keeps in vector registers.
template <class T>
float attention_dot_row(const float* q, const T* k, index_t D, index_t stride) {
    constexpr index_t lanes = 8;
    float acc[lanes] = {};
    index_t d = 0;
    if (stride == 1)
        for (; d + lanes <= D; d += lanes)
            for (index_t l = 0; l < lanes; ++l) acc[l] += q[d + l] * attention_to_float(k[d + l]);
    float sum = 0.0f;
    for (index_t l = 0; l < lanes; ++l) sum += acc[l];
    for (; d < D; ++d) sum += q[d] * attention_to_float(k[d * stride]);
    return sum;
}

// o[0..D) += p * v[0..D), v of any element type and stride.
template <class T>
void attention_add_scaled_row(float* o, float p, const T* v, index_t D, index_t stride) {
    if (stride == 1)
        for (index_t d = 0; d < D; ++d) o[d] += p * attention_to_float(v[d]);
    else
        for (index_t d = 0; d < D; ++d) o[d] += p * attention_to_float(v[d * stride]);
}

// c (rows, n) = or += a (rows, kdim) times b (kdim, n), row strides lda, ldb,
// ldc: every block product of this file (scores, P V, dP, dV, dK, dQ).
//
// The plain form is the loop nest "for r, for k: c[r][0..n) += a[r][k] * b[k][0..n)"
// (attention_block_gemm_rows): its innermost loop runs over contiguous columns
// with no reduction, so a compiler vectorizes it as written. It still loads and
// stores c[r][..] for every k. With GCC and Clang the full 4-row x 8-column
// blocks instead keep their 32 sums in eight 4-float vector registers (the
// compilers' vector extension) across the whole k loop: each loaded row of b
// serves 4 rows of a, and c is touched once — about 2x faster here than the
// plain form, which GCC does not register-block by itself. Either way every
// element sums over k in the order 0, 1, ..., kdim - 1, starting from c (or 0):
// the two forms give the same bits.
inline void attention_block_gemm_rows(float* c, index_t ldc, const float* a, index_t lda, const float* b, index_t ldb,
                                      index_t r0, index_t r1, index_t n0, index_t n1, index_t kdim, bool accumulate) {
    for (index_t r = r0; r < r1; ++r) {
        float* cr = c + r * ldc;
        const float* ar = a + r * lda;
        if (!accumulate)
            for (index_t j = n0; j < n1; ++j) cr[j] = 0.0f;
        for (index_t k = 0; k < kdim; ++k) {
            const float x = ar[k];
            const float* br = b + k * ldb;
            for (index_t j = n0; j < n1; ++j) cr[j] += x * br[j];
        }
    }
}

#if defined(__GNUC__)
using attention_float4 = float __attribute__((vector_size(16)));  // 4 floats: one SSE/NEON register

inline attention_float4 attention_load4(const float* p) {
    attention_float4 v;
    __builtin_memcpy(&v, p, sizeof v);  // unaligned
    return v;
}
inline void attention_store4(float* p, attention_float4 v) { __builtin_memcpy(p, &v, sizeof v); }
#endif

inline void attention_block_gemm(float* c, index_t ldc, const float* a, index_t lda, const float* b, index_t ldb,
                                 index_t rows, index_t n, index_t kdim, bool accumulate) {
#if defined(__GNUC__)
    constexpr index_t rb = 4, cb = 8;
    const index_t rows_full = rows - rows % rb, n_full = n - n % cb;
    for (index_t r0 = 0; r0 < rows_full; r0 += rb)
        for (index_t n0 = 0; n0 < n_full; n0 += cb) {
            attention_float4 acc[rb][2];
            for (index_t rr = 0; rr < rb; ++rr)
                for (index_t h = 0; h < 2; ++h)
                    acc[rr][h] = accumulate ? attention_load4(c + (r0 + rr) * ldc + n0 + 4 * h) : attention_float4{};
            for (index_t k = 0; k < kdim; ++k) {
                const attention_float4 b0 = attention_load4(b + k * ldb + n0), b1 = attention_load4(b + k * ldb + n0 + 4);
                for (index_t rr = 0; rr < rb; ++rr) {
                    const float x = a[(r0 + rr) * lda + k];
                    acc[rr][0] += x * b0;
                    acc[rr][1] += x * b1;
                }
            }
            for (index_t rr = 0; rr < rb; ++rr)
                for (index_t h = 0; h < 2; ++h) attention_store4(c + (r0 + rr) * ldc + n0 + 4 * h, acc[rr][h]);
        }
    // The edges: the columns past the last full 8, then the rows past the last full 4.
    attention_block_gemm_rows(c, ldc, a, lda, b, ldb, 0, rows_full, n_full, n, kdim, accumulate);
    attention_block_gemm_rows(c, ldc, a, lda, b, ldb, rows_full, rows, 0, n, kdim, accumulate);
#else
    attention_block_gemm_rows(c, ldc, a, lda, b, ldb, 0, rows, 0, n, kdim, accumulate);
#endif
}

// y[0..n) += a * x[0..n)
inline void attention_axpy(float* y, float a, const float* x, index_t n) {
    for (index_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// What every forward work item reads: the inputs, the options in float, the masks.
template <class T>
struct attention_tiled_forward_args {
    tensor_view<const T, 4> q, k, v;  // (B, Tq, Hq, D), (B, Tk, Hkv, D) x 2
    index_t B = 0, Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0, group = 1;
    float scale = 1.0f, softcap = 0.0f;
    attention_mask mask;
    tensor_view<const float, 1> slopes;           // (Hq) or empty
    tensor_view<const std::int32_t, 1> lengths;  // (B) or empty

    index_t length(index_t b) const { return lengths.data() != nullptr ? lengths(b) : Tk; }
    float slope(index_t h) const { return slopes.data() != nullptr ? slopes(h) : 0.0f; }
};

// One thread's buffers for the forward.
struct attention_tiled_forward_scratch {
    std::vector<float> q, o, s, kt, v, m, l;
    explicit attention_tiled_forward_scratch(index_t D)
        : q(static_cast<std::size_t>(attention_tiled_bq * D)),
          o(static_cast<std::size_t>(attention_tiled_bq * D)),
          s(static_cast<std::size_t>(attention_tiled_bq * attention_tiled_bk)),
          kt(static_cast<std::size_t>(D * attention_tiled_bk)),
          v(static_cast<std::size_t>(attention_tiled_bk * D)),
          m(static_cast<std::size_t>(attention_tiled_bq)),
          l(static_cast<std::size_t>(attention_tiled_bq)) {}
};

// One forward work item: query rows [q0, q0 + rows) of head h of batch row b,
// over the visible keys in [kbegin, kend). Leaves each row r's running max
// s.m[r], sum s.l[r] and unnormalized output s.o[r * D ..] in the scratch
// (m = -inf, l = 0, o = 0 for a row that saw no key).
template <class T>
void attention_tiled_forward_item(const attention_tiled_forward_args<T>& a, attention_tiled_forward_scratch& s,
                                  index_t b, index_t h, index_t q0, index_t rows, index_t kbegin, index_t kend) {
    constexpr index_t bk = attention_tiled_bk;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const index_t D = a.D, hkv = h / a.group, length = a.length(b);
    const float slope = a.slope(h);
    float* qs = s.q.data();
    float* os = s.o.data();
    float* ss = s.s.data();
    for (index_t r = 0; r < rows; ++r) attention_load_row(qs + r * D, attention_row(a.q, b, q0 + r, h), D, a.q.stride(3));
    std::fill(os, os + rows * D, 0.0f);
    std::fill(s.m.begin(), s.m.end(), neg_inf);
    std::fill(s.l.begin(), s.l.end(), 0.0f);

    key_range range = attention_tile_keys(a.mask, q0, rows, length);
    range.begin = std::max(range.begin, kbegin);
    range.end = std::min(range.end, kend);
    for (index_t k0 = range.begin; k0 < range.end; k0 += bk) {
        const index_t kn = std::min(bk, range.end - k0);
        const attention_tile kind = attention_classify_tile(a.mask, q0, rows, k0, kn, length);
        if (kind == attention_tile::skip) continue;
        // 1-2. The block's dot products q_i . k_j. For one query row (a decode
        //    step) each is read straight from its key row; for more rows, the key
        //    block is transposed once (and the value block loaded) so that
        //    attention_block_gemm serves every row from it.
        if (rows == 1) {
            for (index_t c = 0; c < kn; ++c) {
                attention_prefetch_row(a.k, b, k0 + c, hkv, k0 + kn);
                ss[c] = attention_dot_row(qs, attention_row(a.k, b, k0 + c, hkv), D, a.k.stride(3));
            }
        } else {
            attention_load_keys_transposed(s.kt.data(), a.k, b, k0, kn, hkv);
            attention_load_keys(s.v.data(), a.v, b, k0, kn, hkv);
            attention_block_gemm(ss, bk, qs, D, s.kt.data(), bk, rows, bk, D, false);
        }
        // 3. Per row: the logits of its visible columns [c0, c1), the online
        //    softmax update of m, l and o *= alpha, and p = exp(s - m) in place
        //    of the scores (0 outside [c0, c1)).
        for (index_t r = 0; r < rows; ++r) {
            const index_t i = q0 + r, pos = a.mask.query_position(i);
            float* sr = ss + r * bk;
            index_t c0 = 0, c1 = kn;
            if (kind != attention_tile::full) attention_block_columns(attention_visible_keys(a.mask, i, length), k0, kn, c0, c1);
            std::fill(sr, sr + c0, 0.0f);
            std::fill(sr + c1, sr + kn, 0.0f);
            if (c0 == c1) continue;  // no visible key in this block: m, l and o unchanged
            float block_max = neg_inf;
            for (index_t c = c0; c < c1; ++c) {
                sr[c] = attention_logit(sr[c], a.scale, a.softcap, slope, pos, k0 + c);
                block_max = std::max(block_max, sr[c]);
            }
            const float m_old = s.m[static_cast<std::size_t>(r)];
            const float m_new = std::max(m_old, block_max);
            const float alpha = attention_exp_shifted(m_old, m_new);  // 0 on the first visible block
            for (index_t c = c0; c < c1; ++c) sr[c] = exp_nonpositive(sr[c] - m_new);
            float sum = 0.0f;
            for (index_t c = c0; c < c1; ++c) sum += sr[c];
            s.m[static_cast<std::size_t>(r)] = m_new;
            s.l[static_cast<std::size_t>(r)] = alpha * s.l[static_cast<std::size_t>(r)] + sum;
            if (alpha != 1.0f)
                for (float* o = os + r * D; o < os + (r + 1) * D; ++o) *o *= alpha;
        }
        // 4. o += P V for the whole block of rows (one row: each value row where it lies).
        if (rows == 1) {
            for (index_t c = 0; c < kn; ++c) {
                attention_prefetch_row(a.v, b, k0 + c, hkv, k0 + kn);
                attention_add_scaled_row(os, ss[c], attention_row(a.v, b, k0 + c, hkv), D, a.v.stride(3));
            }
        } else {
            attention_block_gemm(os, D, ss, bk, s.v.data(), D, rows, D, kn, true);
        }
    }
}

// The forward of attention_tiled on checked arguments (see the top of the file).
template <class T>
void attention_tiled_forward(tensor_view<T, 4> out, const attention_tiled_forward_args<T>& a, tensor_view<float, 3> lse) {
    constexpr index_t bq = attention_tiled_bq;
    const index_t q_blocks = (a.Tq + bq - 1) / bq;
    const index_t heads = a.B * a.Hq;
    const auto make_scratch = [&] { return attention_tiled_forward_scratch(a.D); };
    // Multiply-adds without masks: Q K^T and P V.
    const double work = 2.0 * static_cast<double>(heads) * static_cast<double>(a.Tq) * static_cast<double>(a.Tk) *
                        static_cast<double>(a.D);
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();

    // Few query rows: split the keys into fixed chunks (see the top of the file).
    const index_t chunk = attention_tiled_split_keys;
    const index_t splits = q_blocks == 1 && a.Tk > chunk ? (a.Tk + chunk - 1) / chunk : 1;

    if (splits == 1) {
        // Item -> (query block, b, h), the last query blocks (the most keys under causal) first.
        attention_tiled_for(q_blocks * heads, work, make_scratch, [&](index_t item, attention_tiled_forward_scratch& s) {
            const index_t qb = q_blocks - 1 - item / heads, b = (item % heads) / a.Hq, h = item % a.Hq;
            const index_t q0 = qb * bq, rows = std::min(bq, a.Tq - q0);
            attention_tiled_forward_item(a, s, b, h, q0, rows, 0, a.Tk);
            for (index_t r = 0; r < rows; ++r) {
                const float l = s.l[static_cast<std::size_t>(r)];
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                T* dst = attention_row(out, b, q0 + r, h);
                const float* orow = s.o.data() + r * a.D;
                for (index_t d = 0; d < a.D; ++d) dst[d * out.stride(3)] = attention_from_float<T>(orow[d] * inv);
                if (lse.data() != nullptr)
                    lse(b, h, q0 + r) = l > 0.0f ? s.m[static_cast<std::size_t>(r)] + std::log(l) : neg_inf;
            }
        });
        return;
    }

    // Split: partial (m, l, o) of every (b, h, query row, chunk), then the combine.
    const index_t rows_total = heads * a.Tq;  // the rows, (B, Hq, Tq)
    std::vector<float> part_o(static_cast<std::size_t>(rows_total * splits * a.D));
    std::vector<float> part_m(static_cast<std::size_t>(rows_total * splits)), part_l(part_m.size());
    attention_tiled_for(heads * splits, work, make_scratch, [&](index_t item, attention_tiled_forward_scratch& s) {
        const index_t split = item % splits, bh = item / splits, b = bh / a.Hq, h = bh % a.Hq;
        attention_tiled_forward_item(a, s, b, h, 0, a.Tq, split * chunk, (split + 1) * chunk);
        for (index_t r = 0; r < a.Tq; ++r) {
            const index_t slot = (bh * a.Tq + r) * splits + split;
            part_m[static_cast<std::size_t>(slot)] = s.m[static_cast<std::size_t>(r)];
            part_l[static_cast<std::size_t>(slot)] = s.l[static_cast<std::size_t>(r)];
            std::copy(s.o.data() + r * a.D, s.o.data() + (r + 1) * a.D, part_o.data() + slot * a.D);
        }
    });
    // Combine row by row, the chunks in order: M = max m_s, L = sum l_s e^(m_s - M),
    // O = sum o_s e^(m_s - M) / L.
    attention_tiled_for(rows_total, static_cast<double>(part_o.size()),
                        [&] { return std::vector<float>(static_cast<std::size_t>(a.D)); },
                        [&](index_t row, std::vector<float>& acc) {
                            const index_t b = row / (a.Hq * a.Tq), h = (row / a.Tq) % a.Hq, i = row % a.Tq;
                            const float* m = part_m.data() + row * splits;
                            const float* l = part_l.data() + row * splits;
                            float big = neg_inf;
                            for (index_t c = 0; c < splits; ++c) big = std::max(big, m[c]);
                            std::fill(acc.begin(), acc.end(), 0.0f);
                            float sum = 0.0f;
                            for (index_t c = 0; c < splits; ++c) {
                                const float w = attention_exp_shifted(m[c], big);  // 0 for a chunk that saw nothing
                                if (w == 0.0f) continue;
                                sum += w * l[c];
                                attention_axpy(acc.data(), w, part_o.data() + (row * splits + c) * a.D, a.D);
                            }
                            const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
                            T* dst = attention_row(out, b, i, h);
                            for (index_t d = 0; d < a.D; ++d)
                                dst[d * out.stride(3)] = attention_from_float<T>(acc[static_cast<std::size_t>(d)] * inv);
                            if (lse.data() != nullptr) lse(b, h, i) = sum > 0.0f ? big + std::log(sum) : neg_inf;
                        });
}

template <class T>
attention_tiled_forward_args<T> make_attention_tiled_args(tensor_view<const T, 4> q, tensor_view<const T, 4> k,
                                                          tensor_view<const T, 4> v, const attention_options& opts) {
    attention_tiled_forward_args<T> a;
    a.q = q;
    a.k = k;
    a.v = v;
    a.B = q.extent(0);
    a.Tq = q.extent(1);
    a.Hq = q.extent(2);
    a.D = q.extent(3);
    a.Tk = k.extent(1);
    a.Hkv = k.extent(2);
    a.group = a.Hq / a.Hkv;
    a.scale = static_cast<float>(attention_scale(opts, a.D));
    a.softcap = opts.softcap ? *opts.softcap : 0.0f;
    a.mask = make_attention_mask(opts, a.Tq, a.Tk);
    a.slopes = opts.alibi_slopes;
    a.lengths = opts.key_lengths;
    return a;
}

}  // namespace detail

namespace cpu {

// The same function as cpu::attention — O = softmax(mask(transform(Q K^T * scale))) V,
// every option — computed with key blocks, the online softmax and float
// arithmetic over threads (see the top of this file).
//   out    (B, Tq, Hq, D)
//   q      (B, Tq, Hq, D)
//   k, v   (B, Tk, Hkv, D), Hq % Hkv == 0
//   lse    (B, Hq, Tq) if given (data != nullptr): each row's log-sum-exp over
//          its visible keys, -inf for a row with none; what attention_backward_tiled
//          recomputes P from.
// Any strides; T is float, double, bfloat16 or float16 (float math). The
// argument checks and their messages are cpu::attention's (out may be exactly q,
// in place: a query block is read before its output is written, by one thread).
// A row with no visible key outputs zeros.
template <class T>
void attention_tiled(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                     std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                     const attention_options& opts = {}, tensor_view<float, 3> lse = {}) {
    constexpr std::string_view op = "attention_tiled";
    tinyllm::detail::check_attention_shapes(out, q, k, v, op);
    tinyllm::detail::check_attention_options(opts, q, k, op);
    if (lse.data() != nullptr) expect_shape(lse, extents<3>{q.extent(0), q.extent(2), q.extent(1)}, "attention_tiled: lse");
    tinyllm::detail::check_attention_host_views(opts, k.extent(1), op);
    tinyllm::detail::check_attention_out(out, q, k, v, opts, op, true);
    tinyllm::detail::check_attention_side_output(op, "lse", lse, out, q, k, v, opts);
    tinyllm::detail::attention_tiled_forward(out, tinyllm::detail::make_attention_tiled_args<T>(q, k, v, opts), lse);
}

// Attend the newest Tn queries (B, Tn, Hq, D) over everything in the cache, as
// the cpu::attention overload for a kv_cache does (bottom-right causal
// alignment: query t of the Tn sits at cache position length - Tn + t). For
// Tn <= 32 the keys are split into chunks of 512 across the threads.
template <class T>
void attention_tiled(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q, const kv_cache<T>& cache,
                     const attention_options& opts = {}, tensor_view<float, 3> lse = {}) {
    TINYLLM_EXPECT(q.extent(1) <= cache.length(), "attention_tiled over a kv_cache: ", q.extent(1),
                   " queries but the cache holds only ", cache.length(), " positions (append first)");
    attention_tiled<T>(out, q, cache.keys(), cache.values(), opts, lse);
}

}  // namespace cpu

// ---- backward --------------------------------------------------------------------

namespace detail {

// One thread's buffers for the backward (both passes).
struct attention_tiled_backward_scratch {
    std::vector<float> q, dout, kt, vt, krows, p, g, pt, gt, acc_a, acc_b, lse, delta;
    explicit attention_tiled_backward_scratch(index_t D)
        : q(static_cast<std::size_t>(attention_tiled_bq * D)),
          dout(static_cast<std::size_t>(attention_tiled_bq * D)),
          kt(static_cast<std::size_t>(D * attention_tiled_bk)),
          vt(static_cast<std::size_t>(D * attention_tiled_bk)),
          krows(static_cast<std::size_t>(attention_tiled_bk * D)),
          p(static_cast<std::size_t>(attention_tiled_bq * attention_tiled_bk)),
          g(static_cast<std::size_t>(attention_tiled_bq * attention_tiled_bk)),
          pt(static_cast<std::size_t>(attention_tiled_bk * attention_tiled_bq)),
          gt(static_cast<std::size_t>(attention_tiled_bk * attention_tiled_bq)),
          acc_a(static_cast<std::size_t>(std::max(attention_tiled_bq, attention_tiled_bk) * D)),
          acc_b(static_cast<std::size_t>(attention_tiled_bk * D)),
          lse(static_cast<std::size_t>(attention_tiled_bq)),
          delta(static_cast<std::size_t>(attention_tiled_bq)) {}
};

// P and G of query rows [q0, q0 + rows) of head h against the key block [k0, k0 + kn)
// already in s.kt and s.vt, from the query block in s.q, s.dout, s.lse, s.delta:
//     P_ij = exp(logit(q_i . k_j) - lse_i),   G_ij = P_ij (dO_i . v_j - delta_i) dlogit/ddot
// both 0 where masked (and in the columns kn .. bk-1).
template <class T>
void attention_tiled_backward_block(const attention_tiled_forward_args<T>& a, attention_tiled_backward_scratch& s,
                                    index_t h, index_t length, index_t q0, index_t rows, index_t k0, index_t kn,
                                    attention_tile kind) {
    constexpr index_t bk = attention_tiled_bk;
    float* ps = s.p.data();
    float* gs = s.g.data();
    attention_block_gemm(ps, bk, s.q.data(), a.D, s.kt.data(), bk, rows, bk, a.D, false);     // q_i . k_j
    attention_block_gemm(gs, bk, s.dout.data(), a.D, s.vt.data(), bk, rows, bk, a.D, false);  // dO_i . v_j
    const float slope = a.slope(h);
    for (index_t r = 0; r < rows; ++r) {
        const index_t i = q0 + r, pos = a.mask.query_position(i);
        index_t c0 = 0, c1 = kn;
        if (kind != attention_tile::full) attention_block_columns(attention_visible_keys(a.mask, i, length), k0, kn, c0, c1);
        const float row_lse = s.lse[static_cast<std::size_t>(r)], row_delta = s.delta[static_cast<std::size_t>(r)];
        float* pr = ps + r * bk;
        float* gr = gs + r * bk;
        // pr: the dot products, then s - lse, then P; gr: dP, then (dP - delta) dlogit/ddot, then G.
        for (index_t c = c0; c < c1; ++c) {
            const float dot = pr[c];
            pr[c] = attention_logit(dot, a.scale, a.softcap, slope, pos, k0 + c) - row_lse;
            gr[c] = (gr[c] - row_delta) * attention_logit_derivative(dot, a.scale, a.softcap);
        }
        for (index_t c = c0; c < c1; ++c) pr[c] = exp_nonpositive(pr[c]);
        for (index_t c = c0; c < c1; ++c) gr[c] *= pr[c];
        std::fill(pr, pr + c0, 0.0f);
        std::fill(gr, gr + c0, 0.0f);
        std::fill(pr + c1, pr + bk, 0.0f);
        std::fill(gr + c1, gr + bk, 0.0f);
    }
}

// Query rows [q0, q0 + rows) of head h: Q, dO, lse and delta into the scratch.
template <class T>
void attention_tiled_backward_load_queries(const attention_tiled_forward_args<T>& a, attention_tiled_backward_scratch& s,
                                           const tensor_view<const T, 4>& dout, const tensor_view<const float, 3>& lse,
                                           const std::vector<float>& delta, index_t b, index_t h, index_t q0,
                                           index_t rows) {
    for (index_t r = 0; r < rows; ++r) {
        attention_load_row(s.q.data() + r * a.D, attention_row(a.q, b, q0 + r, h), a.D, a.q.stride(3));
        attention_load_row(s.dout.data() + r * a.D, attention_row(dout, b, q0 + r, h), a.D, dout.stride(3));
        s.lse[static_cast<std::size_t>(r)] = lse(b, h, q0 + r);
        s.delta[static_cast<std::size_t>(r)] = delta[static_cast<std::size_t>((b * a.Hq + h) * a.Tq + q0 + r)];
    }
}

}  // namespace detail

namespace cpu {

// The gradients of attention, computed as FlashAttention-2's backward (see the
// top of this file): from dout = dL/dO and what the forward saved — its output
// `out` and the log-sum-exp `lse` of each row (attention_tiled(out, q, k, v,
// opts, lse) writes both; cpu::attention's lse works too) — dq = dL/dQ,
// dk = dL/dK and dv = dL/dV, without any (Tq, Tk) matrix in memory.
//   dq           (B, Tq, Hq, D)    or empty (data() == nullptr): not wanted
//   dk, dv       (B, Tk, Hkv, D)   or empty
//   dout, q, out (B, Tq, Hq, D)
//   k, v         (B, Tk, Hkv, D)
//   lse          (B, Hq, Tq)
//   opts         the forward's options
// Any strides; float math; the same argument checks as cpu::attention_backward,
// and the results are the same bits for any number of threads. A row with no
// visible key passes no gradient; keys no query sees get dk = dv = 0.
// Everything is read before anything is written, so a gradient may share
// memory with an input.
template <class T>
void attention_backward_tiled(tensor_view<T, 4> dq, tensor_view<T, 4> dk, tensor_view<T, 4> dv,
                              std::type_identity_t<tensor_view<const T, 4>> dout,
                              std::type_identity_t<tensor_view<const T, 4>> q,
                              std::type_identity_t<tensor_view<const T, 4>> k,
                              std::type_identity_t<tensor_view<const T, 4>> v,
                              std::type_identity_t<tensor_view<const T, 4>> out, tensor_view<const float, 3> lse,
                              const attention_options& opts = {}) {
    namespace d = tinyllm::detail;
    constexpr std::string_view op = "attention_backward_tiled";
    d::check_attention_backward_shapes(dq, dk, dv, dout, q, k, v, op);
    d::check_attention_options(opts, q, k, op);
    if (out.shape() != q.shape())
        TINYLLM_FAIL(op, ": out has shape ", to_string(out.shape()), " but must have the shape of q ", to_string(q.shape()),
                     " (B, Tq, Hq, D)");
    expect_shape(lse, extents<3>{q.extent(0), q.extent(2), q.extent(1)}, "attention_backward_tiled: lse");
    d::check_attention_host_views(opts, k.extent(1), op);
    const bool want_dq = dq.data() != nullptr, want_dk = dk.data() != nullptr, want_dv = dv.data() != nullptr;
    if (!want_dq && !want_dk && !want_dv) return;

    constexpr index_t bq = d::attention_tiled_bq, bk = d::attention_tiled_bk;
    const auto a = d::make_attention_tiled_args<T>(q, k, v, opts);
    const index_t B = a.B, Tq = a.Tq, Tk = a.Tk, Hq = a.Hq, Hkv = a.Hkv, D = a.D;
    const auto make_scratch = [&] { return d::attention_tiled_backward_scratch(D); };
    // Multiply-adds of one pass without masks (Q K^T, dO V^T and one gradient product).
    const double work = 3.0 * static_cast<double>(B * Hq) * static_cast<double>(Tq) * static_cast<double>(Tk) *
                        static_cast<double>(D);

    // 1. delta = rowsum(dO o O), (B, Hq, Tq).
    std::vector<float> delta(static_cast<std::size_t>(B * Hq * Tq));
    d::attention_tiled_for(
        B * Tq, static_cast<double>(B * Tq * Hq * D), [] { return 0; },
        [&](index_t row, int&) {
            const index_t b = row / Tq, i = row % Tq;
            for (index_t h = 0; h < Hq; ++h) {
                const T* o = d::attention_row(out, b, i, h);
                const T* g = d::attention_row(dout, b, i, h);
                float acc = 0.0f;
                for (index_t e = 0; e < D; ++e)
                    acc += d::attention_to_float(g[e * dout.stride(3)]) * d::attention_to_float(o[e * out.stride(3)]);
                delta[static_cast<std::size_t>((b * Hq + h) * Tq + i)] = acc;
            }
        });

    // The gradients in float, contiguous (B, T, H, D), written to the outputs at the end.
    std::vector<float> gq(want_dq ? static_cast<std::size_t>(B * Tq * Hq * D) : 0);
    std::vector<float> gk(want_dk || want_dv ? static_cast<std::size_t>(B * Tk * Hkv * D) : 0), gv(gk.size());
    const index_t q_blocks = (Tq + bq - 1) / bq, k_blocks = (Tk + bk - 1) / bk;

    // 2. dK, dV: item (key block, b, K/V head), the first key blocks (the most queries under causal) first.
    if (want_dk || want_dv)
        d::attention_tiled_for(k_blocks * B * Hkv, work, make_scratch, [&](index_t item, d::attention_tiled_backward_scratch& s) {
            const index_t kb = item / (B * Hkv), b = (item % (B * Hkv)) / Hkv, hkv = item % Hkv;
            const index_t k0 = kb * bk, length = a.length(b);
            const index_t kn = std::min(bk, Tk - k0);
            const index_t valid = std::clamp<index_t>(length - k0, 0, kn);  // keys before the padding
            float* dks = s.acc_a.data();  // (bk, D)
            float* dvs = s.acc_b.data();  // (bk, D)
            std::fill(dks, dks + bk * D, 0.0f);
            std::fill(dvs, dvs + bk * D, 0.0f);
            if (valid > 0) {
                d::attention_load_keys_transposed(s.kt.data(), a.k, b, k0, valid, hkv);
                d::attention_load_keys_transposed(s.vt.data(), a.v, b, k0, valid, hkv);
            }
            for (index_t h = hkv * a.group; valid > 0 && h < (hkv + 1) * a.group; ++h)
                for (index_t q0 = 0; q0 < Tq; q0 += bq) {
                    const index_t rows = std::min(bq, Tq - q0);
                    const attention_tile kind = attention_classify_tile(a.mask, q0, rows, k0, valid, length);
                    if (kind == attention_tile::skip) continue;
                    d::attention_tiled_backward_load_queries(a, s, dout, lse, delta, b, h, q0, rows);
                    d::attention_tiled_backward_block(a, s, h, length, q0, rows, k0, valid, kind);
                    // dV += P^T dO, dK += G^T Q (P and G transposed first: keys become rows).
                    float* pt = s.pt.data();  // (bk, bq)
                    float* gt = s.gt.data();  // (bk, bq)
                    for (index_t r = 0; r < rows; ++r)
                        for (index_t c = 0; c < valid; ++c) {
                            pt[c * bq + r] = s.p[static_cast<std::size_t>(r * bk + c)];
                            gt[c * bq + r] = s.g[static_cast<std::size_t>(r * bk + c)];
                        }
                    d::attention_block_gemm(dvs, D, pt, bq, s.dout.data(), D, valid, D, rows, true);
                    d::attention_block_gemm(dks, D, gt, bq, s.q.data(), D, valid, D, rows, true);
                }
            for (index_t c = 0; c < kn; ++c) {
                const auto at = static_cast<std::size_t>(((b * Tk + k0 + c) * Hkv + hkv) * D);
                std::copy(dks + c * D, dks + (c + 1) * D, gk.data() + at);
                std::copy(dvs + c * D, dvs + (c + 1) * D, gv.data() + at);
            }
        });

    // 3. dQ: item (query block, b, h), the last query blocks first.
    if (want_dq)
        d::attention_tiled_for(q_blocks * B * Hq, work, make_scratch, [&](index_t item, d::attention_tiled_backward_scratch& s) {
            const index_t qb = q_blocks - 1 - item / (B * Hq), b = (item % (B * Hq)) / Hq, h = item % Hq;
            const index_t q0 = qb * bq, rows = std::min(bq, Tq - q0), length = a.length(b), hkv = h / a.group;
            float* dqs = s.acc_a.data();  // (rows, D)
            std::fill(dqs, dqs + rows * D, 0.0f);
            d::attention_tiled_backward_load_queries(a, s, dout, lse, delta, b, h, q0, rows);
            const key_range range = attention_tile_keys(a.mask, q0, rows, length);  // never past the length
            for (index_t k0 = range.begin; k0 < range.end; k0 += bk) {
                const index_t kn = std::min(bk, range.end - k0);
                const attention_tile kind = attention_classify_tile(a.mask, q0, rows, k0, kn, length);
                if (kind == attention_tile::skip) continue;
                d::attention_load_keys_transposed(s.kt.data(), a.k, b, k0, kn, hkv);
                d::attention_load_keys_transposed(s.vt.data(), a.v, b, k0, kn, hkv);
                d::attention_load_keys(s.krows.data(), a.k, b, k0, kn, hkv);
                d::attention_tiled_backward_block(a, s, h, length, q0, rows, k0, kn, kind);
                // dQ += G K.
                d::attention_block_gemm(dqs, D, s.g.data(), bk, s.krows.data(), D, rows, D, kn, true);
            }
            for (index_t r = 0; r < rows; ++r)
                std::copy(dqs + r * D, dqs + (r + 1) * D, gq.data() + ((b * Tq + q0 + r) * Hq + h) * D);
        });

    // 4. Round once and overwrite, row by row over the threads.
    const auto store = [&](tensor_view<T, 4> dst, const std::vector<float>& src, index_t T_, index_t H_) {
        d::attention_tiled_for(
            B * T_, static_cast<double>(B * T_ * H_ * D), [] { return 0; },
            [&](index_t row, int&) {
                for (index_t h = 0; h < H_; ++h) {
                    T* o = d::attention_row(dst, row / T_, row % T_, h);
                    const float* x = src.data() + (row * H_ + h) * D;
                    for (index_t e = 0; e < D; ++e) o[e * dst.stride(3)] = d::attention_from_float<T>(x[e]);
                }
            });
    };
    if (want_dq) store(dq, gq, Tq, Hq);
    if (want_dk) store(dk, gk, Tk, Hkv);
    if (want_dv) store(dv, gv, Tk, Hkv);
}

}  // namespace cpu
}  // namespace tinyllm
