// tinyllm/attention.hpp — scaled dot-product attention (the CPU reference, forward and backward),
// the masks and score transforms shared with the CUDA kernels, and a KV cache.
//
// Attention lets every query position gather information from key/value
// positions. For one batch row b and one query head h, with queries Q (Tq, D),
// keys K (Tk, D) and values V (Tk, D):
//
//     S = Q K^T * scale                       (Tq, Tk) scores, scale = 1/sqrt(D)
//     S = cap * tanh(S / cap)                 optional logit soft-capping (Gemma 2)
//     S[i][j] += -slope_h * (pos(i) - j)      optional ALiBi bias (BLOOM, MPT)
//     S[i][j] = -inf where key j is masked    causal / sliding window / padding
//     P = softmax(S) along j                  (Tq, Tk) probabilities, rows sum to 1
//     O = P V                                 (Tq, D) outputs
//
// Shapes, the layout PyTorch's flash/SDPA kernels and HF checkpoints use:
//     Q (B, Tq, Hq, D)     K, V (B, Tk, Hkv, D)     O (B, Tq, Hq, D)
//     P (B, Hq, Tq, Tk)    (only on request: it is Tq*Tk per head, the thing fast kernels never store)
// Hq must be a multiple of Hkv: query head h reads key/value head h / (Hq/Hkv).
//     Hkv == Hq      multi-head attention (MHA, GPT-2)
//     1 < Hkv < Hq   grouped-query attention (GQA, Llama 2 70B, Llama 3, Mistral)
//     Hkv == 1       multi-query attention (MQA, PaLM, Falcon)
// GQA/MQA shrink K and V (and the KV cache) by Hq/Hkv; the math is MHA with
// every K/V head repeated Hq/Hkv times.
//
// Positions and masks. Query row i (0-based in Q) sits at absolute position
//     pos(i) = i + Tk - Tq
// i.e. the queries are the LAST Tq of the Tk positions ("bottom-right"
// alignment, FlashAttention-2 and PyTorch's CausalVariant.LOWER_RIGHT). This is
// what decoding needs: the new token at position Tk-1 sees every cached key.
// Key j is visible to query i when all of these hold:
//     causal:        j <= pos(i)
//     window w:      j >  pos(i) - w        (with causal: the last w keys, the query's own included)
//     padding:       j <  key_length[b]     (keys at or past a row's length are padding)
// Pictures for Tq = Tk = 5 (x = visible):
//     causal         causal, window 2     Tq = 2 < Tk = 5, causal
//     x . . . .      x . . . .            x x x x .     (pos 3)
//     x x . . .      x x . . .            x x x x x     (pos 4)
//     x x x . .      . x x . .
//     x x x x .      . . x x .
//     x x x x x      . . . x x
// A row with no visible key (e.g. Tq > Tk under causal, or key_length 0) has
// no distribution to speak of: its probabilities and output are ZERO, never NaN.
//
// Numerics of the reference: every score, the softmax and P V are computed in
// double from the inputs (converted exactly to double), with the maximum of
// each row subtracted before exp so that exp never overflows; the result is
// rounded once to the output type. That makes it the float64 reference that
// the CUDA kernels are tested against.
//
// The backward pass, cpu::attention_backward, recomputes P from Q and K and
// gives dQ, dK and dV (the formulas are at the function; derivation in
// docs/training.md). The forward can return each row's log-sum-exp, the one
// number per row from which a flash kernel recomputes P in its backward.
//
// The element-wise pieces — which keys a query sees, the score transform, the
// tile classification a tiled kernel uses to skip or mask blocks — are
// TINYLLM_HOST_DEVICE functions below, used unchanged by <tinyllm/cuda/attention_*.cuh>,
// and unit-tested on the CPU.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tinyllm {

// ---- options ----------------------------------------------------------------------

struct attention_options {
    // Mask keys after the query's position (bottom-right aligned, see above).
    bool causal = false;
    // Sliding window (Mistral, Gemma 2 local layers): query i sees keys j with
    // pos(i) - window < j <= pos(i), i.e. at most `window` keys, itself included.
    // Needs causal = true; must be >= 1. Unset: no window.
    std::optional<index_t> window;
    // ALiBi: one slope per query head, (Hq). Empty view: no ALiBi. Bias added to
    // score (i, j): -slope[h] * (pos(i) - j), the convention of
    // tinyllm::alibi_bias in <tinyllm/positional.hpp> (slopes: tinyllm::alibi_slopes(Hq)).
    // For CUDA calls this view must point to device memory.
    tensor_view<const float, 1> alibi_slopes;
    // Logit soft-capping (Gemma 2: 50 for attention): s -> cap * tanh(s / cap),
    // applied to the scaled score before ALiBi and masking. Unset: off; must be > 0.
    std::optional<float> softcap;
    // Multiplies Q K^T. Unset: 1 / sqrt(D).
    std::optional<float> scale;
    // Padding: the number of valid keys of each batch row, (B), each in [0, Tk];
    // keys j >= key_lengths[b] are masked. Empty view: all Tk keys valid. The
    // causal alignment stays relative to Tk (right padding). For CUDA calls this
    // view must point to device memory (its values are then not checked on the
    // host; kernels clamp them to [0, Tk]).
    tensor_view<const std::int32_t, 1> key_lengths;
};

// ---- shared math (host and device) ------------------------------------------------

// The masks of one attention call in a form kernels can take by value.
// window == 0 means "no window" here (the options reject window < 1).
struct attention_mask {
    index_t tq = 0, tk = 0;
    bool causal = false;
    index_t window = 0;

    // Absolute position of query row i (bottom-right alignment).
    TINYLLM_HOST_DEVICE constexpr index_t query_position(index_t i) const { return i + tk - tq; }
};

// Keys [begin, end) visible to one query; empty when end <= begin.
struct key_range {
    index_t begin = 0, end = 0;
    TINYLLM_HOST_DEVICE constexpr bool empty() const { return end <= begin; }
    TINYLLM_HOST_DEVICE constexpr bool contains(index_t j) const { return begin <= j && j < end; }
};

// The keys query row i of a batch row with `length` valid keys may see.
// Every mask in this file is an interval of keys, and both ends move forward
// (never back) as i grows — the fact tiled kernels rely on below.
TINYLLM_HOST_DEVICE constexpr key_range attention_visible_keys(const attention_mask& m, index_t i, index_t length) {
    const index_t pos = m.query_position(i);
    index_t end = length < m.tk ? length : m.tk;
    if (end < 0) end = 0;
    if (m.causal && pos + 1 < end) end = pos + 1;
    index_t begin = 0;
    // pos - window + 1 > 0, asked as pos >= window: a window near index_t's top must not overflow.
    if (m.window > 0 && pos >= m.window) begin = pos - m.window + 1;
    if (end < begin) end = begin;
    return {begin, end};
}

// How a tiled kernel treats a tile of query rows [q0, q0 + rows) against keys
// [k0, k0 + cols):
//   skip     no query of the tile sees any key of the tile: do not even load it
//   full     every query sees every key: no per-element mask needed
//   partial  some elements are masked: test each one (attention_visible_keys)
// Because begin(i) and end(i) are nondecreasing in i, it suffices to look at
// the first and the last row. `skip` is conservative: a tile classified
// `partial` may still turn out fully masked, which is correct, only slower.
enum class attention_tile { skip, full, partial };

TINYLLM_HOST_DEVICE constexpr attention_tile attention_classify_tile(const attention_mask& m, index_t q0, index_t rows,
                                                                     index_t k0, index_t cols, index_t length) {
    index_t last = q0 + rows - 1;
    if (last > m.tq - 1) last = m.tq - 1;  // rows past Tq do not exist
    if (last < q0 || cols <= 0) return attention_tile::skip;
    const key_range first_keys = attention_visible_keys(m, q0, length);
    const key_range last_keys = attention_visible_keys(m, last, length);
    if (last_keys.end <= k0 || first_keys.begin >= k0 + cols) return attention_tile::skip;
    // Full needs every row's range to cover the tile: the latest begin (last row)
    // and the earliest end (first row) bound all rows.
    if (last_keys.begin <= k0 && k0 + cols <= first_keys.end && !first_keys.empty()) return attention_tile::full;
    return attention_tile::partial;
}

// The keys that any query row of [q0, q0 + rows) may see: the loop bounds of a
// kernel that walks a query tile over the keys. Tiles outside are skipped.
// Never past the row's length: an empty row's range sits at its window start,
// which may lie beyond the padding, and a kernel must not load padding keys
// (they may hold anything, and 0 * NaN is NaN).
TINYLLM_HOST_DEVICE constexpr key_range attention_tile_keys(const attention_mask& m, index_t q0, index_t rows,
                                                            index_t length) {
    index_t last = q0 + rows - 1;
    if (last > m.tq - 1) last = m.tq - 1;
    if (last < q0) return {0, 0};
    const key_range a = attention_visible_keys(m, q0, length);
    const key_range b = attention_visible_keys(m, last, length);
    key_range r{a.begin, b.end};
    index_t limit = length < m.tk ? length : m.tk;
    if (limit < 0) limit = 0;
    if (r.end > limit) r.end = limit;
    if (r.end < r.begin) r.end = r.begin;
    return r;
}


// The logit of query i (absolute position `pos`) and key j, from their dot
// product: scale, then soft-cap (softcap <= 0: off), then the ALiBi bias
// (slope 0: none). Masking is separate (attention_visible_keys). F is double
// in the CPU reference and float in the kernels.
template <class F>
TINYLLM_HOST_DEVICE F attention_logit(F dot, F scale, F softcap, F slope, index_t pos, index_t j) {
    F s = dot * scale;
    if (softcap > F(0)) s = softcap * detail::tanh_hd(s / softcap);
    if (slope != F(0)) s -= slope * static_cast<F>(pos - j);
    return s;
}

// The derivative of attention_logit with respect to the dot product, what the
// backward pass multiplies a score's gradient by: `scale`, times 1 - tanh^2 of
// the capped argument when soft-capping (d/dx cap * tanh(x / cap) = 1 - tanh^2(x / cap)).
// The ALiBi bias is a constant and drops out.
template <class F>
TINYLLM_HOST_DEVICE F attention_logit_derivative(F dot, F scale, F softcap) {
    if (softcap <= F(0)) return scale;
    const F t = detail::tanh_hd(dot * scale / softcap);
    return scale * (F(1) - t * t);
}

// ---- argument checks (shared by the CPU reference and the CUDA launchers) ----------

namespace detail {

inline bool has_view(const tensor_view<const float, 1>& v) { return v.data() != nullptr; }
inline bool has_view(const tensor_view<const std::int32_t, 1>& v) { return v.data() != nullptr; }

// An output of attention against the option views it reads.
template <class O>
void expect_apart_from_options(std::string_view op, std::string_view name, const O& out, const attention_options& o) {
    if (has_view(o.alibi_slopes)) expect_apart(op, name, out, "alibi_slopes", o.alibi_slopes);
    if (has_view(o.key_lengths)) expect_apart(op, name, out, "key_lengths", o.key_lengths);
}

// The forward's out (skipped when out.data() == nullptr): an address for each
// element, apart from k, v and the option views. With `in_place_q` out may be
// exactly q (the CPU versions read a query row before they write its output,
// from the same thread); otherwise it is apart from q too (the CUDA kernels
// read q in one thread and write out in another, or q several times).
template <class T>
void check_attention_out(const tensor_view<T, 4>& out, const tensor_view<const T, 4>& q,
                         const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v, const attention_options& o,
                         std::string_view op, bool in_place_q) {
    if (out.data() == nullptr) return;
    expect_distinct_elements(op, "out", out);
    // (overlaps() sets apart the heads of one fused (B, T, Hq + 2 Hkv, D) buffer.)
    if (in_place_q)
        expect_in_place_or_apart(op, "out", out, "q", q);
    else
        expect_apart(op, "out", out, "q", q);
    expect_apart(op, "out", out, "k", k);
    expect_apart(op, "out", out, "v", v);
    expect_apart_from_options(op, "out", out, o);
}

// A further output of the forward (probs, lse, the scores workspace; skipped
// when x.data() == nullptr): an address for each element, apart from out, q, k,
// v and the option views.
template <class X, class T>
void check_attention_side_output(std::string_view op, std::string_view name, const X& x, const tensor_view<T, 4>& out,
                                 const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
                                 const tensor_view<const T, 4>& v, const attention_options& o) {
    if (x.data() == nullptr) return;
    expect_distinct_elements(op, name, x);
    if (out.data() != nullptr) expect_apart(op, name, x, "out", out);
    expect_apart_from(op, name, x, "q", q, "k", k, "v", v);
    expect_apart_from_options(op, name, x, o);
}

// The backward's wanted gradients: an address for each element and apart from
// each other (the CPU versions read every input before they write a gradient,
// so a gradient may share memory with an input there; the CUDA launchers add
// that check).
template <class T>
void check_attention_gradients(const tensor_view<T, 4>& dq, const tensor_view<T, 4>& dk, const tensor_view<T, 4>& dv,
                               std::string_view op) {
    const bool want_dq = dq.data() != nullptr, want_dk = dk.data() != nullptr, want_dv = dv.data() != nullptr;
    if (want_dq) expect_distinct_elements(op, "dq", dq);
    if (want_dk) expect_distinct_elements(op, "dk", dk);
    if (want_dv) expect_distinct_elements(op, "dv", dv);
    if (want_dq && want_dk) expect_apart(op, "dq", dq, "dk", dk);
    if (want_dq && want_dv) expect_apart(op, "dq", dq, "dv", dv);
    if (want_dk && want_dv) expect_apart(op, "dk", dk, "dv", dv);
}

// `out_name` names the (B, Tq, Hq, D) argument checked against q: "out" in the
// forward, "dout" in the backward.
template <class O, class Q, class K, class V>
void check_attention_shapes(const O& out, const Q& q, const K& k, const V& v, std::string_view op,
                            std::string_view out_name = "out") {
    const index_t B = q.extent(0), Tq = q.extent(1), Hq = q.extent(2), D = q.extent(3);
    TINYLLM_EXPECT(D >= 1, op, ": q has shape ", to_string(q.shape()), "; the head dim (last) must be at least 1");
    TINYLLM_EXPECT(k.shape() == v.shape(), op, ": k has shape ", to_string(k.shape()), " but v has shape ",
                   to_string(v.shape()), "; they must be equal (B, Tk, Hkv, D)");
    TINYLLM_EXPECT(k.extent(0) == B, op, ": q has batch ", B, " but k has batch ", k.extent(0));
    TINYLLM_EXPECT(k.extent(3) == D, op, ": q has head dim ", D, " but k has head dim ", k.extent(3));
    const index_t Hkv = k.extent(2);
    TINYLLM_EXPECT(Hkv >= 1, op, ": k has ", Hkv, " heads; at least 1 is needed");
    TINYLLM_EXPECT(Hq % Hkv == 0, op, ": the query heads (Hq = ", Hq, ") must be a multiple of the key/value heads (Hkv = ",
                   Hkv, ")");
    if (out.shape() != q.shape())
        TINYLLM_FAIL(op, ": ", out_name, " has shape ", to_string(out.shape()), " but must have the shape of q ",
                     to_string(q.shape()), " (B, Tq, Hq, D)");
    (void)Tq;
}

// The backward's arguments: the forward's checks (dout in the place of out),
// then each wanted gradient against the tensor it is the gradient of, and the
// gradients' memory (check_attention_gradients). An empty gradient
// (data() == nullptr) is not wanted and not checked.
template <class DQ, class DK, class DV, class DO, class Q, class K, class V>
void check_attention_backward_shapes(const DQ& dq, const DK& dk, const DV& dv, const DO& dout, const Q& q, const K& k,
                                     const V& v, std::string_view op) {
    check_attention_shapes(dout, q, k, v, op, "dout");
    if (dq.data() != nullptr && dq.shape() != q.shape())
        TINYLLM_FAIL(op, ": dq has shape ", to_string(dq.shape()), " but must have the shape of q ", to_string(q.shape()),
                     " (B, Tq, Hq, D)");
    if (dk.data() != nullptr && dk.shape() != k.shape())
        TINYLLM_FAIL(op, ": dk has shape ", to_string(dk.shape()), " but must have the shape of k ", to_string(k.shape()),
                     " (B, Tk, Hkv, D)");
    if (dv.data() != nullptr && dv.shape() != v.shape())
        TINYLLM_FAIL(op, ": dv has shape ", to_string(dv.shape()), " but must have the shape of v ", to_string(v.shape()),
                     " (B, Tk, Hkv, D)");
    check_attention_gradients(dq, dk, dv, op);
}

// The option views in host memory (the CPU versions): every key_lengths value
// in [0, Tk], and every ALiBi slope finite (a NaN or infinite slope turns a
// whole row of scores into NaN or inf - inf).
inline void check_attention_host_views(const attention_options& o, index_t tk, std::string_view op) {
    // The bias slope * (j - pos) spans up to Tk keys, and the kernels add it to a score in float:
    // it must stay well inside a float (a slope of -3e38 gave NaN in the tiled kernels).
    for (index_t h = 0; o.alibi_slopes.data() != nullptr && h < o.alibi_slopes.extent(0); ++h)
        TINYLLM_EXPECT(std::isfinite(o.alibi_slopes(h)) &&
                           std::abs(static_cast<double>(o.alibi_slopes(h))) * static_cast<double>(tk > 1 ? tk : 1) <=
                               static_cast<double>(std::numeric_limits<float>::max()) / 4,
                       op, ": alibi_slopes[", h, "] = ", o.alibi_slopes(h), " must be finite, and its bias over the ",
                       tk, " keys must fit a float");
    if (o.key_lengths.data() == nullptr) return;
    for (index_t b = 0; b < o.key_lengths.extent(0); ++b)
        TINYLLM_EXPECT(o.key_lengths(b) >= 0 && o.key_lengths(b) <= tk, op, ": key_lengths[", b, "] = ",
                       o.key_lengths(b), " must be in [0, Tk = ", tk, "]");
}

template <class Q, class K>
void check_attention_options(const attention_options& o, const Q& q, const K& k, std::string_view op) {
    const index_t B = q.extent(0), Hq = q.extent(2);
    if (o.window) {
        TINYLLM_EXPECT(*o.window >= 1, op, ": window = ", *o.window, " must be at least 1 (leave it unset for no window)");
        TINYLLM_EXPECT(o.causal, op, ": a sliding window (window = ", *o.window,
                       ") looks back from the query and needs causal = true");
    }
    if (o.softcap)
        TINYLLM_EXPECT(*o.softcap > 0.0f && std::isfinite(*o.softcap), op, ": softcap = ", *o.softcap,
                       " must be a positive finite number (leave it unset for no capping)");
    if (o.scale) TINYLLM_EXPECT(std::isfinite(*o.scale), op, ": scale = ", *o.scale, " must be finite");
    if (o.alibi_slopes.data() != nullptr || o.alibi_slopes.size() != 0)
        TINYLLM_EXPECT(o.alibi_slopes.extent(0) == Hq, op, ": alibi_slopes has ", o.alibi_slopes.extent(0),
                       " slopes but there are Hq = ", Hq, " query heads");
    if (o.key_lengths.data() != nullptr || o.key_lengths.size() != 0)
        TINYLLM_EXPECT(o.key_lengths.extent(0) == B, op, ": key_lengths has ", o.key_lengths.extent(0),
                       " entries but the batch is B = ", B);
    (void)k;
}

// The scale in double (the CPU reference); kernels round it to float.
inline double attention_scale(const attention_options& o, index_t head_dim) {
    return o.scale ? static_cast<double>(*o.scale) : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

inline attention_mask make_attention_mask(const attention_options& o, index_t tq, index_t tk) {
    return {tq, tk, o.causal, o.window ? *o.window : 0};
}

inline double attention_to_double(double x) { return x; }
inline double attention_to_double(float x) { return x; }
inline double attention_to_double(bfloat16 x) { return to_float(x); }
inline double attention_to_double(float16 x) { return to_float(x); }

template <class T>
T attention_from_double(double x) {
    if constexpr (std::is_same_v<T, double>) return x;
    else return from_float<T>(static_cast<float>(x));
}

}  // namespace detail

// ---- CPU reference ------------------------------------------------------------------

namespace cpu {

// O = softmax(mask(transform(Q K^T * scale))) V, see the top of this file.
//   out    (B, Tq, Hq, D)
//   q      (B, Tq, Hq, D)
//   k, v   (B, Tk, Hkv, D), Hq % Hkv == 0
//   probs  (B, Hq, Tq, Tk) if given (data != nullptr): the probabilities P
//   lse    (B, Hq, Tq) if given: the log-sum-exp of each row's logits over its
//          visible keys, log sum_j exp(s_j), so that P = exp(S - lse); -inf for
//          a row with no visible key. What a flash backward recomputes P from.
// Any strides; T is float, double, bfloat16 or float16. Computed in double.
// out may be exactly q (in place); otherwise the outputs share no memory with
// the inputs or with each other, and each output element has its own address.
template <class T>
void attention(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
               std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
               const attention_options& opts = {}, tensor_view<float, 4> probs = {}, tensor_view<float, 3> lse = {}) {
    tinyllm::detail::check_attention_shapes(out, q, k, v, "attention");
    tinyllm::detail::check_attention_options(opts, q, k, "attention");
    const index_t B = q.extent(0), Tq = q.extent(1), Hq = q.extent(2), D = q.extent(3);
    const index_t Tk = k.extent(1), Hkv = k.extent(2), group = Hq / Hkv;
    if (probs.data() != nullptr) expect_shape(probs, extents<4>{B, Hq, Tq, Tk}, "attention: probs");
    if (lse.data() != nullptr) expect_shape(lse, extents<3>{B, Hq, Tq}, "attention: lse");
    tinyllm::detail::check_attention_host_views(opts, Tk, "attention");
    tinyllm::detail::check_attention_out(out, q, k, v, opts, "attention", true);
    tinyllm::detail::check_attention_side_output("attention", "probs", probs, out, q, k, v, opts);
    tinyllm::detail::check_attention_side_output("attention", "lse", lse, out, q, k, v, opts);
    if (probs.data() != nullptr && lse.data() != nullptr)
        tinyllm::detail::expect_apart("attention", "lse", lse, "probs", probs);

    const double scale = tinyllm::detail::attention_scale(opts, D);
    const double softcap = opts.softcap ? *opts.softcap : 0.0;
    const attention_mask mask = tinyllm::detail::make_attention_mask(opts, Tq, Tk);
    std::vector<double> s(static_cast<std::size_t>(Tk));   // one row of scores, then of probabilities
    std::vector<double> qi(static_cast<std::size_t>(D));   // one query row
    std::vector<double> o(static_cast<std::size_t>(D));    // one output row
    // The keys and values one query head reads, (Tk, D) each: its K/V head's, read
    // from k and v once per head instead of once per query row.
    std::vector<double> kh(static_cast<std::size_t>(Tk * D)), vh(static_cast<std::size_t>(Tk * D));
    const auto row = [D](index_t j, index_t d) { return static_cast<std::size_t>(j * D + d); };

    for (index_t b = 0; b < B; ++b) {
        const index_t length = tinyllm::detail::has_view(opts.key_lengths) ? opts.key_lengths(b) : Tk;
        for (index_t h = 0; h < Hq; ++h) {
            const index_t hkv = h / group;  // the key/value head this query head reads
            const double slope = tinyllm::detail::has_view(opts.alibi_slopes) ? opts.alibi_slopes(h) : 0.0;
            for (index_t j = 0; j < Tk; ++j)
                for (index_t d = 0; d < D; ++d) {
                    kh[row(j, d)] = tinyllm::detail::attention_to_double(k(b, j, hkv, d));
                    vh[row(j, d)] = tinyllm::detail::attention_to_double(v(b, j, hkv, d));
                }
            for (index_t i = 0; i < Tq; ++i) {
                const key_range keys = attention_visible_keys(mask, i, length);
                const index_t pos = mask.query_position(i);
                for (index_t d = 0; d < D; ++d) qi[static_cast<std::size_t>(d)] = tinyllm::detail::attention_to_double(q(b, i, h, d));
                // 1. scores s_j = logit(q_i . k_j) for the visible keys, and their maximum
                double row_max = -std::numeric_limits<double>::infinity();
                for (index_t j = keys.begin; j < keys.end; ++j) {
                    double dot = 0.0;
                    for (index_t d = 0; d < D; ++d) dot += qi[static_cast<std::size_t>(d)] * kh[row(j, d)];
                    s[static_cast<std::size_t>(j)] = attention_logit(dot, scale, softcap, slope, pos, j);
                    row_max = std::max(row_max, s[static_cast<std::size_t>(j)]);
                }
                // 2. softmax: p_j = exp(s_j - max) / sum_j' exp(s_j' - max). Subtracting the
                //    maximum changes nothing mathematically and keeps every exp <= 1.
                double sum = 0.0;
                for (index_t j = keys.begin; j < keys.end; ++j) {
                    auto& x = s[static_cast<std::size_t>(j)];
                    x = std::exp(x - row_max);
                    sum += x;
                }
                // 3. o = sum_j p_j v_j. A row with no visible key keeps o = 0 and p = 0.
                std::fill(o.begin(), o.end(), 0.0);
                for (index_t j = keys.begin; j < keys.end; ++j) {
                    const double p = s[static_cast<std::size_t>(j)] / sum;
                    s[static_cast<std::size_t>(j)] = p;
                    for (index_t d = 0; d < D; ++d) o[static_cast<std::size_t>(d)] += p * vh[row(j, d)];
                }
                for (index_t d = 0; d < D; ++d) out(b, i, h, d) = tinyllm::detail::attention_from_double<T>(o[static_cast<std::size_t>(d)]);
                if (probs.data() != nullptr)
                    for (index_t j = 0; j < Tk; ++j)
                        probs(b, h, i, j) = keys.contains(j) ? static_cast<float>(s[static_cast<std::size_t>(j)]) : 0.0f;
                if (lse.data() != nullptr)
                    lse(b, h, i) = keys.empty() ? -std::numeric_limits<float>::infinity()
                                                : static_cast<float>(row_max + std::log(sum));
            }
        }
    }
}

// The gradient of attention: from dout = dL/dO and the forward's inputs, the
// gradients dq = dL/dQ, dk = dL/dK and dv = dL/dV. For one batch row and one
// query head, with Z = Q K^T * scale, S = logits (soft-capped, ALiBi, masked)
// and P = softmax(S) recomputed exactly as the forward computes them
// (o is the element-wise product):
//
//     dV = P^T dO                               (Tk, D)
//     dP = dO V^T                               (Tq, Tk)
//     dS = P o (dP - rowsum(dO o O))            (Tq, Tk)  the softmax's Jacobian, row by row
//     dZ = dS o (1 - tanh^2(Z / cap))           the soft-cap's chain factor (without capping dZ = dS)
//     dQ = dZ K * scale,   dK = dZ^T Q * scale
//
// rowsum(dO o O) = sum_d dO_id O_id equals sum_j P_ij dP_ij (O_i = sum_j P_ij V_j):
// one number per query row, from two (Tq, D) tensors instead of the (Tq, Tk)
// ones. The ALiBi bias and the masks are constants: they shape P but add no
// term (a masked score has P = 0, so dS = 0 there). GQA/MQA: K/V head g serves
// query heads g*group .. g*group + group - 1, so its dK and dV are the sums over
// those heads. A row with no visible key outputs 0 in the forward and passes no
// gradient: its dq row is 0, and keys nobody sees (padding) get dk = dv = 0.
//   dq           (B, Tq, Hq, D)    or empty (data() == nullptr): not wanted
//   dk, dv       (B, Tk, Hkv, D)   or empty
//   dout, q      (B, Tq, Hq, D)
//   k, v         (B, Tk, Hkv, D)
//   opts         the forward's options
// Any strides; T as in attention. Computed in double (P recomputed per row,
// never stored), each gradient rounded once and overwritten. Everything is read
// before anything is written, so a gradient may share memory with an input (not
// with another gradient).
template <class T>
void attention_backward(tensor_view<T, 4> dq, tensor_view<T, 4> dk, tensor_view<T, 4> dv,
                        std::type_identity_t<tensor_view<const T, 4>> dout, std::type_identity_t<tensor_view<const T, 4>> q,
                        std::type_identity_t<tensor_view<const T, 4>> k, std::type_identity_t<tensor_view<const T, 4>> v,
                        const attention_options& opts = {}) {
    constexpr std::string_view op = "attention_backward";
    tinyllm::detail::check_attention_backward_shapes(dq, dk, dv, dout, q, k, v, op);
    tinyllm::detail::check_attention_options(opts, q, k, op);
    const index_t B = q.extent(0), Tq = q.extent(1), Hq = q.extent(2), D = q.extent(3);
    const index_t Tk = k.extent(1), Hkv = k.extent(2), group = Hq / Hkv;
    tinyllm::detail::check_attention_host_views(opts, Tk, op);
    const bool want_dq = dq.data() != nullptr, want_dk = dk.data() != nullptr, want_dv = dv.data() != nullptr;
    if (!want_dq && !want_dk && !want_dv) return;

    using tinyllm::detail::attention_to_double;
    const double scale = tinyllm::detail::attention_scale(opts, D);
    const double softcap = opts.softcap ? *opts.softcap : 0.0;
    const attention_mask mask = tinyllm::detail::make_attention_mask(opts, Tq, Tk);
    const auto at = [](index_t b, index_t t, index_t h, index_t T_, index_t H_, index_t D_, index_t d) {
        return static_cast<std::size_t>(((b * T_ + t) * H_ + h) * D_ + d);
    };
    // The gradients in double, contiguous (B, T, H, D), rounded at the end.
    std::vector<double> gq(want_dq ? static_cast<std::size_t>(B * Tq * Hq * D) : 0);
    std::vector<double> gk(want_dk ? static_cast<std::size_t>(B * Tk * Hkv * D) : 0);
    std::vector<double> gv(want_dv ? static_cast<std::size_t>(B * Tk * Hkv * D) : 0);
    std::vector<double> dots(static_cast<std::size_t>(Tk)), p(static_cast<std::size_t>(Tk));  // one row
    std::vector<double> qi(static_cast<std::size_t>(D)), doi(static_cast<std::size_t>(D)), o(static_cast<std::size_t>(D));
    // The keys and values one query head reads, (Tk, D) each, as in the forward.
    std::vector<double> kh(static_cast<std::size_t>(Tk * D)), vh(static_cast<std::size_t>(Tk * D));
    const auto row = [D](index_t j, index_t d) { return static_cast<std::size_t>(j * D + d); };

    for (index_t b = 0; b < B; ++b) {
        const index_t length = tinyllm::detail::has_view(opts.key_lengths) ? opts.key_lengths(b) : Tk;
        for (index_t h = 0; h < Hq; ++h) {
            const index_t hkv = h / group;
            const double slope = tinyllm::detail::has_view(opts.alibi_slopes) ? opts.alibi_slopes(h) : 0.0;
            for (index_t j = 0; j < Tk; ++j)
                for (index_t d = 0; d < D; ++d) {
                    kh[row(j, d)] = attention_to_double(k(b, j, hkv, d));
                    vh[row(j, d)] = attention_to_double(v(b, j, hkv, d));
                }
            for (index_t i = 0; i < Tq; ++i) {
                const key_range keys = attention_visible_keys(mask, i, length);
                if (keys.empty()) continue;  // output 0 in the forward: no gradient
                const index_t pos = mask.query_position(i);
                for (index_t d = 0; d < D; ++d) {
                    qi[static_cast<std::size_t>(d)] = attention_to_double(q(b, i, h, d));
                    doi[static_cast<std::size_t>(d)] = attention_to_double(dout(b, i, h, d));
                }
                // 1. P of row i, as in the forward: dots, logits, max-subtracted softmax.
                double row_max = -std::numeric_limits<double>::infinity();
                for (index_t j = keys.begin; j < keys.end; ++j) {
                    double dot = 0.0;
                    for (index_t d = 0; d < D; ++d) dot += qi[static_cast<std::size_t>(d)] * kh[row(j, d)];
                    dots[static_cast<std::size_t>(j)] = dot;
                    p[static_cast<std::size_t>(j)] = attention_logit(dot, scale, softcap, slope, pos, j);
                    row_max = std::max(row_max, p[static_cast<std::size_t>(j)]);
                }
                double sum = 0.0;
                for (index_t j = keys.begin; j < keys.end; ++j) sum += (p[static_cast<std::size_t>(j)] = std::exp(p[static_cast<std::size_t>(j)] - row_max));
                // 2. O_i = sum_j P_ij V_j, and delta_i = rowsum(dO_i o O_i).
                std::fill(o.begin(), o.end(), 0.0);
                for (index_t j = keys.begin; j < keys.end; ++j) {
                    p[static_cast<std::size_t>(j)] /= sum;
                    for (index_t d = 0; d < D; ++d) o[static_cast<std::size_t>(d)] += p[static_cast<std::size_t>(j)] * vh[row(j, d)];
                }
                double delta = 0.0;
                for (index_t d = 0; d < D; ++d) delta += doi[static_cast<std::size_t>(d)] * o[static_cast<std::size_t>(d)];
                // 3. Per visible key: dV_j += P_ij dO_i; dP_ij = dO_i . V_j;
                //    dZ_ij = P_ij (dP_ij - delta_i) * dlogit/ddot; dQ_i += dZ_ij K_j; dK_j += dZ_ij Q_i.
                for (index_t j = keys.begin; j < keys.end; ++j) {
                    const double pj = p[static_cast<std::size_t>(j)];
                    double dp = 0.0;
                    for (index_t d = 0; d < D; ++d) dp += doi[static_cast<std::size_t>(d)] * vh[row(j, d)];
                    const double dz = pj * (dp - delta) * attention_logit_derivative(dots[static_cast<std::size_t>(j)], scale, softcap);
                    for (index_t d = 0; d < D; ++d) {
                        if (want_dv) gv[at(b, j, hkv, Tk, Hkv, D, d)] += pj * doi[static_cast<std::size_t>(d)];
                        if (want_dq) gq[at(b, i, h, Tq, Hq, D, d)] += dz * kh[row(j, d)];
                        if (want_dk) gk[at(b, j, hkv, Tk, Hkv, D, d)] += dz * qi[static_cast<std::size_t>(d)];
                    }
                }
            }
        }
    }
    // 4. Round once and overwrite (zeros where nothing flowed).
    const auto store = [&](tensor_view<T, 4> dst, const std::vector<double>& src, index_t T_, index_t H_) {
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < T_; ++t)
                for (index_t h = 0; h < H_; ++h)
                    for (index_t d = 0; d < D; ++d)
                        dst(b, t, h, d) = tinyllm::detail::attention_from_double<T>(src[at(b, t, h, T_, H_, D, d)]);
    };
    if (want_dq) store(dq, gq, Tq, Hq);
    if (want_dk) store(dk, gk, Tk, Hkv);
    if (want_dv) store(dv, gv, Tk, Hkv);
}

}  // namespace cpu

// ---- KV cache ------------------------------------------------------------------------

// The keys and values of every position generated so far, for ONE attention
// layer (a model keeps one kv_cache per layer).
//
// Autoregressive decoding produces one token at a time. Without a cache, step t
// would recompute K and V for all t previous tokens — O(t) projections per step,
// O(T^2) in total. With it, each step computes k, v for the new token only,
// appends them, and attends its query against everything stored:
//
//     cache.append(k_new, v_new);                 // (B, Tn, Hkv, D) each
//     cpu::attention(out, q_new, cache, opts);    // q_new (B, Tn, Hq, D), causal
//
// Storage is (B, capacity, Hkv, D) for K and for V, allocated once; the
// length is shared by all batch rows (every row advances by the same Tn per
// append; ragged prompts use attention_options::key_lengths). keys()/values()
// are views of the first length() positions (strided: the batch stride is
// capacity * Hkv * D). Memory: 2 * B * capacity * Hkv * D * sizeof(T) per layer
// — this is what GQA divides by Hq / Hkv.
template <class T>
class kv_cache {
public:
    kv_cache() = default;
    kv_cache(index_t batch, index_t capacity, index_t kv_heads, index_t head_dim)
        : k_(checked_shape(batch, capacity, kv_heads, head_dim)), v_(k_.shape()) {}

    index_t batch() const { return k_.extent(0); }
    index_t capacity() const { return k_.extent(1); }
    index_t kv_heads() const { return k_.extent(2); }
    index_t head_dim() const { return k_.extent(3); }
    index_t length() const { return length_; }

    // Store the keys and values of the next Tn positions: (B, Tn, Hkv, D) each.
    void append(tensor_view<const T, 4> k_new, tensor_view<const T, 4> v_new) {
        const extents<4> want{batch(), k_new.extent(1), kv_heads(), head_dim()};
        expect_shape(k_new, want, "kv_cache::append: k_new");
        expect_shape(v_new, want, "kv_cache::append: v_new");
        const index_t n = k_new.extent(1);
        TINYLLM_EXPECT(length_ + n <= capacity(), "kv_cache::append: ", n, " new positions after ", length_,
                       " exceed the capacity ", capacity());
        for (index_t b = 0; b < batch(); ++b)
            for (index_t t = 0; t < n; ++t)
                for (index_t h = 0; h < kv_heads(); ++h)
                    for (index_t d = 0; d < head_dim(); ++d) {
                        k_(b, length_ + t, h, d) = k_new(b, t, h, d);
                        v_(b, length_ + t, h, d) = v_new(b, t, h, d);
                    }
        length_ += n;
    }

    // The stored positions: (B, length, Hkv, D) views into the storage.
    tensor_view<const T, 4> keys() const { return tensor_view<const T, 4>(k_.view()).narrow(1, 0, length_); }
    tensor_view<const T, 4> values() const { return tensor_view<const T, 4>(v_.view()).narrow(1, 0, length_); }

    // Forget everything (the storage stays allocated).
    void clear() { length_ = 0; }

    // Forget the positions from `length` on, keeping the first `length`: how
    // speculative decoding rolls back the drafted positions a verifier rejected.
    void truncate(index_t length) {
        TINYLLM_EXPECT(length >= 0 && length <= length_, "kv_cache::truncate: length ", length,
                       " is outside [0, ", length_, "]");
        length_ = length;
    }

private:
    static extents<4> checked_shape(index_t b, index_t cap, index_t h, index_t d) {
        TINYLLM_EXPECT(b >= 1 && cap >= 1 && h >= 1 && d >= 1, "kv_cache: batch = ", b, ", capacity = ", cap,
                       ", kv_heads = ", h, ", head_dim = ", d, " must all be at least 1");
        return {b, cap, h, d};
    }

    tensor<T, 4> k_, v_;  // (B, capacity, Hkv, D)
    index_t length_ = 0;
};

namespace cpu {

// Attend the newest Tn queries (B, Tn, Hq, D) — the last Tn positions already
// appended to the cache — over everything in the cache. With causal = true the
// alignment is bottom-right, so query t of the Tn sees cache positions
// <= length - Tn + t. One query per step (Tn = 1) is ordinary decoding; Tn > 1
// is a prefill chunk or speculative verification.
template <class T>
void attention(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q, const kv_cache<T>& cache,
               const attention_options& opts = {}, tensor_view<float, 4> probs = {}) {
    TINYLLM_EXPECT(q.extent(1) <= cache.length(), "attention over a kv_cache: ", q.extent(1),
                   " queries but the cache holds only ", cache.length(), " positions (append first)");
    attention<T>(out, q, cache.keys(), cache.values(), opts, probs);
}

}  // namespace cpu
}  // namespace tinyllm
