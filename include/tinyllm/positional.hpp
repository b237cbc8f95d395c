// tinyllm/positional.hpp — how a transformer tells positions apart: sinusoidal
// and learned absolute encodings, rotary embeddings (RoPE) and ALiBi.
//
// Attention treats its input as a *set*: permute the tokens and every output is
// permuted the same way, nothing else changes. "The tiger ate the fish" and
// "the fish ate the tiger" would look alike. Each scheme below injects order in
// a different place:
//
//   sinusoidal   (Vaswani et al. 2017) add a fixed vector PE(p) to the embedding of
//                the token at position p, built from sines and cosines of
//                geometrically spaced frequencies:
//                    PE(p, 2i)   = sin(p / base^(2i/d))
//                    PE(p, 2i+1) = cos(p / base^(2i/d))          base = 10000
//                Each pair of features is a clock hand turning at its own speed;
//                together they give every position a distinct code, and PE(p + k)
//                is a fixed rotation of PE(p) for every p (linear in p's code).
//   learned      (GPT-2) add row p of a trained (max_positions, d) table. Simple,
//                but no position beyond the table exists.
//   RoPE         (Su et al. 2021, Llama, GPT-NeoX, GPT-J) *rotate* q and k instead
//                of adding to x. Pair the d features of a head into d/2 pairs; pair
//                i of the vector at position m is rotated by the angle m * w_i,
//                w_i = theta^(-2i/d). Since rotations compose,
//                    <R(m w) q, R(n w) k> = <q, R((n - m) w) k>,
//                so the attention score of q at m and k at n depends on the
//                *relative* position n - m only. Which two features form a pair
//                differs between checkpoints (see rope_pairing).
//   ALiBi        (Press et al. 2022, BLOOM, MPT) add nothing to q, k or x; add
//                -slope_h * (query_pos - key_pos) to the attention score, a linear
//                penalty for distance with a different slope per head.
//
// Everything computed per element — inverse frequencies, angles, the rotation,
// the sinusoidal values, ALiBi slopes and biases — is a TINYLLM_HOST_DEVICE
// function here, used unchanged by the CPU reference (namespace cpu below) and
// by the CUDA kernels in <tinyllm/cuda/positional.cuh>.
//
// Numerics. Inverse frequencies are computed in double and rounded once to
// float (so host and device agree to the bit); the angle is float(pos) * w_i
// in float, exactly as PyTorch/transformers compute it; the rotation is done in
// float with fused multiply-adds. Positions enter as float, exact up to 2^24.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tinyllm {

// ---- shared scalar math -------------------------------------------------------

namespace detail {


// Position ids may be int32 or int64 (PyTorch uses int64).
template <class P>
inline constexpr bool is_position_type_v =
    std::is_same_v<std::remove_const_t<P>, std::int32_t> || std::is_same_v<std::remove_const_t<P>, std::int64_t>;

}  // namespace detail

// ---- sinusoidal -----------------------------------------------------------------

// PE(pos, j) for feature j of a dim-wide encoding:
//     j = 2i:    sin(pos * base^(-2i/dim))
//     j = 2i+1:  cos(pos * base^(-2i/dim))
// An odd `dim` ends with a lone sine. (Some code bases — tensor2tensor — put all
// sines in the first half and all cosines in the second; this is the paper's
// interleaved layout.)
TINYLLM_HOST_DEVICE float sinusoidal_value(index_t pos, index_t j, index_t dim, float base = 10000.0f) {
    const index_t i = j / 2;
    const float inv_freq =
        static_cast<float>(1.0 / detail::pow_double(static_cast<double>(base), static_cast<double>(2 * i) / static_cast<double>(dim)));
    const float angle = static_cast<float>(pos) * inv_freq;
    float s, c;
    detail::sin_cos(angle, &s, &c);
    return (j % 2 == 0) ? s : c;
}

// ---- RoPE ---------------------------------------------------------------------

// Which two features of a head are rotated together by pair i's angle.
//   rotate_half  (GPT-NeoX, Llama, Mistral, Qwen, transformers' rotate_half):
//                features (i, i + r/2) for r = rotary_dim — the first half of the
//                rotary features against the second half.
//   interleaved  (GPT-J, the RoPE paper, Meta's original Llama code with complex
//                numbers): features (2i, 2i+1) — neighbours.
// The two give the same attention scores only if the weights are permuted
// accordingly; a checkpoint trained with one must be run with the same one.
enum class rope_pairing { rotate_half, interleaved };

// How the inverse frequencies are stretched to reach beyond the training length.
//   none     w_i = theta^(-2i/r)
//   linear   "position interpolation": w_i / factor (positions squeezed by factor)
//   ntk      "NTK-aware": a larger base, theta * factor^(r/(r-2)), which leaves
//            the fastest pair alone and slows the slowest pair by exactly `factor`
//   llama3   Llama 3.1's piecewise rule on the wavelength 2*pi/w_i:
//            shorter than original_max_position_embeddings / high_freq_factor: kept;
//            longer than original_max_position_embeddings / low_freq_factor: / factor;
//            in between: interpolated smoothly (see rope_inverse_frequency).
enum class rope_scaling { none, linear, ntk, llama3 };

struct rope_config {
    index_t rotary_dim = 0;      // features that rotate: even, <= head dim (the rest pass through);
                                 // 0 (the default): the whole head dim, whatever it is
    double theta = 10000.0;      // the base; Llama 2: 10000, Llama 3: 500000
    rope_pairing pairing = rope_pairing::rotate_half;
    rope_scaling scaling = rope_scaling::none;
    double factor = 1.0;         // linear, ntk, llama3
    double low_freq_factor = 1.0;                   // llama3 (Llama 3.1: 1)
    double high_freq_factor = 4.0;                  // llama3 (Llama 3.1: 4)
    double original_max_position_embeddings = 8192; // llama3 (Llama 3.1: 8192)
};

inline std::string_view to_string(rope_pairing p) {
    return p == rope_pairing::rotate_half ? "rotate_half" : "interleaved";
}
inline std::string_view to_string(rope_scaling s) {
    switch (s) {
        case rope_scaling::none: return "none";
        case rope_scaling::linear: return "linear";
        case rope_scaling::ntk: return "ntk";
        case rope_scaling::llama3: return "llama3";
    }
    return "?";
}

// The number of features that rotate for heads of head_dim features: rotary_dim,
// or head_dim when rotary_dim is 0 (the default).
TINYLLM_HOST_DEVICE index_t rope_rotary_dim(const rope_config& cfg, index_t head_dim) {
    return cfg.rotary_dim == 0 ? head_dim : cfg.rotary_dim;
}

// Check a config against the head dimension it will be applied to. Throws
// tinyllm::error naming the field, its value and the rule.
inline void validate(const rope_config& cfg, index_t head_dim) {
    TINYLLM_EXPECT(head_dim > 0, "rope: head dim must be positive; got ", head_dim);
    TINYLLM_EXPECT(cfg.rotary_dim >= 0, "rope_config.rotary_dim = ", cfg.rotary_dim,
                   " must be positive (or 0: the whole head dim)");
    if (cfg.rotary_dim == 0) {
        TINYLLM_EXPECT(head_dim % 2 == 0, "rope_config.rotary_dim = 0 rotates the whole head dim ", head_dim,
                       ", which must be even (features rotate in pairs); set an even rotary_dim < ", head_dim);
    } else {
        TINYLLM_EXPECT(cfg.rotary_dim % 2 == 0, "rope_config.rotary_dim = ", cfg.rotary_dim,
                       " must be even (features rotate in pairs)");
        TINYLLM_EXPECT(cfg.rotary_dim <= head_dim, "rope_config.rotary_dim = ", cfg.rotary_dim,
                       " must be <= the head dim ", head_dim);
    }
    const index_t r = rope_rotary_dim(cfg, head_dim);
    // theta^(-2i/r) is the frequency of pair i: a base below 1 makes the
    // frequencies grow instead (and a tiny one overflows them to inf).
    TINYLLM_EXPECT(std::isfinite(cfg.theta) && cfg.theta > 1, "rope_config.theta = ", cfg.theta,
                   " must be a finite number > 1 (the base of the wavelengths, 10000 in the RoPE paper)");
    if (cfg.scaling != rope_scaling::none) {
        // Dividing the frequencies by it must leave every angle a float: a frequency is at most 1
        // and a position below 2^63 (9.2e18), so factor >= 1e-19 keeps the angle below 1e38.
        // (1e-39 overflowed the frequencies to inf, 1e-38 the angle of position 5: NaN rotations.)
        TINYLLM_EXPECT(std::isfinite(cfg.factor) && cfg.factor >= 1e-19, "rope_config.factor = ", cfg.factor,
                       " must be positive (and at least 1e-19, so that every angle stays a float) for ",
                       to_string(cfg.scaling), " scaling");
    }
    if (cfg.scaling == rope_scaling::ntk) {
        TINYLLM_EXPECT(r > 2, "ntk scaling needs rotary_dim > 2 (it raises factor to r/(r-2)); got ", r);
    }
    if (cfg.scaling == rope_scaling::llama3) {
        TINYLLM_EXPECT(cfg.low_freq_factor > 0, "rope_config.low_freq_factor = ", cfg.low_freq_factor,
                       " must be positive");
        TINYLLM_EXPECT(cfg.high_freq_factor > cfg.low_freq_factor, "rope_config.high_freq_factor = ",
                       cfg.high_freq_factor, " must be greater than low_freq_factor = ", cfg.low_freq_factor);
        TINYLLM_EXPECT(cfg.original_max_position_embeddings > 0, "rope_config.original_max_position_embeddings = ",
                       cfg.original_max_position_embeddings, " must be positive");
    }
}

// The config as it applies to heads of head_dim features: validated, with
// rotary_dim made explicit (0 becomes head_dim). Kernels and tables work on
// resolved configs; so can callers that build a table once (make_rope_cache).
inline rope_config resolve_rope(const rope_config& cfg, index_t head_dim) {
    validate(cfg, head_dim);
    rope_config resolved = cfg;
    resolved.rotary_dim = rope_rotary_dim(cfg, head_dim);
    return resolved;
}

namespace detail {

// A config for a function that has no head dim to resolve rotary_dim = 0 against
// (a table of inverse frequencies or of cos/sin): rotary_dim must be explicit.
inline rope_config resolve_rope_without_head_dim(const rope_config& cfg, std::string_view op) {
    TINYLLM_EXPECT(cfg.rotary_dim != 0, op, ": rope_config.rotary_dim = 0 means the whole head dim, which ", op,
                   " cannot know; pass the head dim too (", op, "(..., cfg, head_dim)) or resolve_rope(cfg, head_dim)");
    return resolve_rope(cfg, cfg.rotary_dim);
}

}  // namespace detail

// The inverse frequency w_i of pair i (0 <= i < rotary_dim/2), after scaling:
// the angle of pair i at position p is p * w_i radians. Computed in double,
// rounded once to float. The ONE definition used by the CPU reference, the
// CUDA kernels and the cos/sin cache. `cfg` is resolved (resolve_rope): its
// rotary_dim is the number of rotating features, never 0.
TINYLLM_HOST_DEVICE float rope_inverse_frequency(const rope_config& cfg, index_t i) {
    const double r = static_cast<double>(cfg.rotary_dim);
    double base = cfg.theta;
    if (cfg.scaling == rope_scaling::ntk) base *= detail::pow_double(cfg.factor, r / (r - 2.0));
    double w = 1.0 / detail::pow_double(base, static_cast<double>(2 * i) / r);
    if (cfg.scaling == rope_scaling::linear) {
        w /= cfg.factor;
    } else if (cfg.scaling == rope_scaling::llama3) {
        // transformers' _compute_llama3_parameters, in words:
        const double two_pi = 6.283185307179586476925;
        const double wavelength = two_pi / w;
        const double low_freq_wavelength = cfg.original_max_position_embeddings / cfg.low_freq_factor;
        const double high_freq_wavelength = cfg.original_max_position_embeddings / cfg.high_freq_factor;
        if (wavelength > low_freq_wavelength) {
            w /= cfg.factor;  // slow pairs: interpolate positions fully
        } else if (!(wavelength < high_freq_wavelength)) {
            // medium pairs (boundaries included): blend w/factor and w
            const double smooth = (cfg.original_max_position_embeddings / wavelength - cfg.low_freq_factor) /
                                  (cfg.high_freq_factor - cfg.low_freq_factor);
            w = (1.0 - smooth) * w / cfg.factor + smooth * w;
        }
        // fast pairs (wavelength < high_freq_wavelength): unchanged
    }
    return static_cast<float>(w);
}

// The angle of pair i at position pos: float(pos) * w_i, in float (as PyTorch).
TINYLLM_HOST_DEVICE float rope_angle(float inv_freq, index_t pos) { return static_cast<float>(pos) * inv_freq; }

// The two features of a head rotated together as pair i.
TINYLLM_HOST_DEVICE void rope_pair_features(rope_pairing pairing, index_t rotary_dim, index_t i, index_t* first,
                                            index_t* second) {
    if (pairing == rope_pairing::rotate_half) {
        *first = i;
        *second = i + rotary_dim / 2;
    } else {
        *first = 2 * i;
        *second = 2 * i + 1;
    }
}

// Rotate the 2-D vector (a, b) by the angle whose cosine and sine are given:
//     a' = a cos - b sin,   b' = b cos + a sin
// (fused multiply-adds, so host and device round identically).
TINYLLM_HOST_DEVICE void rope_rotate(float* a, float* b, float cos_angle, float sin_angle) {
    const float x = *a, y = *b;
    *a = tinyllm::fma(x, cos_angle, -(y * sin_angle));
    *b = tinyllm::fma(y, cos_angle, x * sin_angle);
}

// ---- ALiBi --------------------------------------------------------------------

// The slope of head h (0-based) of n_heads, as in the ALiBi paper:
//   n a power of two:  m_h = 2^(-8 (h+1) / n)        (8 heads: 1/2, 1/4, ..., 1/256)
//   otherwise, with n' the largest power of two below n: the n' slopes of n'
//   heads, then the odd-numbered slopes of 2n' heads (every other one, starting
//   with the first) for the remaining n - n' heads:
//       h <  n':  2^(-8 (h+1) / n')
//       h >= n':  2^(-8 (2 (h - n') + 1) / (2 n')) = 2^(-4 (2 (h - n') + 1) / n')
// (the rule of the paper's code and of BLOOM's build_alibi_tensor).
TINYLLM_HOST_DEVICE float alibi_slope(index_t h, index_t n_heads) {
    index_t n2 = 1;
    while (n2 * 2 <= n_heads) n2 *= 2;  // the largest power of two <= n_heads
    double exponent;
    if (h < n2) {
        exponent = -8.0 * static_cast<double>(h + 1) / static_cast<double>(n2);
    } else {
        exponent = -4.0 * static_cast<double>(2 * (h - n2) + 1) / static_cast<double>(n2);
    }
    return static_cast<float>(detail::pow_double(2.0, exponent));
}

// The bias ALiBi adds to the attention score of the query at query_pos and the
// key at key_pos:
//     bias = -slope * (query_pos - key_pos)
// Zero on the diagonal, more negative the further back the key is (causal
// attention only sees key_pos <= query_pos, so the bias is <= 0 there).
//
// Convention note: HF/BLOOM's build_alibi_tensor adds +slope * key_pos (no
// query term). Within one query row the two differ by the constant
// slope * query_pos, and softmax ignores a constant added to a whole row, so
// the attention weights are the same; the raw scores are not.
TINYLLM_HOST_DEVICE float alibi_bias(float slope, index_t query_pos, index_t key_pos) {
    return slope * static_cast<float>(key_pos - query_pos);  // = -slope * (query_pos - key_pos), never -0
}

// All n_heads slopes (host).
inline std::vector<float> alibi_slopes(index_t n_heads) {
    TINYLLM_EXPECT(n_heads >= 1, "alibi_slopes: n_heads = ", n_heads, " must be at least 1");
    std::vector<float> slopes(static_cast<std::size_t>(n_heads));
    for (index_t h = 0; h < n_heads; ++h) slopes[static_cast<std::size_t>(h)] = alibi_slope(h, n_heads);
    return slopes;
}

namespace detail {

// The checks of add_sinusoidal and add_learned_positions, the CPU's and the
// CUDA's (any element type): positions (B, T) match x (B, T, D), the base is
// positive, the table is D wide, and x, added to in place, has an address per
// element, apart from what is read.
template <class X, class P>
void expect_add_sinusoidal_args(const tensor_view<X, 3>& x, const tensor_view<P, 2>& positions, float base) {
    static_assert(is_position_type_v<P>, "positions must be int32 or int64");
    TINYLLM_EXPECT(positions.extent(0) == x.extent(0) && positions.extent(1) == x.extent(1),
                   "add_sinusoidal: positions has shape ", to_string(positions.shape()), " but x ",
                   to_string(x.shape()), " needs (B, T) = (", x.extent(0), ", ", x.extent(1), ")");
    TINYLLM_EXPECT(std::isfinite(base) && base > 0, "add_sinusoidal: base = ", base, " must be positive");
    expect_distinct_elements("add_sinusoidal", "x", x);
    expect_apart("add_sinusoidal", "x", x, "positions", positions);
}

template <class X, class Table, class P>
void expect_add_learned_args(const tensor_view<X, 3>& x, const tensor_view<Table, 2>& table,
                             const tensor_view<P, 2>& positions) {
    static_assert(is_position_type_v<P>, "positions must be int32 or int64");
    TINYLLM_EXPECT(positions.extent(0) == x.extent(0) && positions.extent(1) == x.extent(1),
                   "add_learned_positions: positions has shape ", to_string(positions.shape()), " but x ",
                   to_string(x.shape()), " needs (B, T) = (", x.extent(0), ", ", x.extent(1), ")");
    TINYLLM_EXPECT(table.extent(1) == x.extent(2), "add_learned_positions: the table has width ", table.extent(1),
                   " but x has D = ", x.extent(2));
    expect_distinct_elements("add_learned_positions", "x", x);
    expect_apart_from("add_learned_positions", "x", x, "the table", table, "positions", positions);
}

}  // namespace detail

// ---- CPU reference ---------------------------------------------------------------

namespace cpu {

// The rotary_dim/2 inverse frequencies of a config (after scaling) for heads of
// head_dim features (rotary_dim = 0: head_dim/2 of them).
inline std::vector<float> rope_inverse_frequencies(const rope_config& cfg, index_t head_dim) {
    const rope_config r = resolve_rope(cfg, head_dim);
    std::vector<float> w(static_cast<std::size_t>(r.rotary_dim / 2));
    for (index_t i = 0; i < r.rotary_dim / 2; ++i) w[static_cast<std::size_t>(i)] = rope_inverse_frequency(r, i);
    return w;
}

// The same for a config with an explicit rotary_dim.
inline std::vector<float> rope_inverse_frequencies(const rope_config& cfg) {
    const rope_config r = tinyllm::detail::resolve_rope_without_head_dim(cfg, "rope_inverse_frequencies");
    return rope_inverse_frequencies(r, r.rotary_dim);
}

// The sinusoidal table: out(t, j) = PE(positions(t), j).
template <class P>
void sinusoidal_encoding(tensor_view<float, 2> out /*(T, D)*/, tensor_view<P, 1> positions /*(T)*/,
                         float base = 10000.0f) {
    static_assert(detail::is_position_type_v<P>, "positions must be int32 or int64");
    TINYLLM_EXPECT(out.extent(0) == positions.extent(0), "sinusoidal_encoding: out has ", out.extent(0),
                   " rows but there are ", positions.extent(0), " positions");
    TINYLLM_EXPECT(std::isfinite(base) && base > 0, "sinusoidal_encoding: base = ", base, " must be positive");
    tinyllm::detail::expect_distinct_elements("sinusoidal_encoding", "out", out);
    tinyllm::detail::expect_apart("sinusoidal_encoding", "out", out, "positions", positions);
    const index_t D = out.extent(1);
    for (index_t t = 0; t < out.extent(0); ++t)
        for (index_t j = 0; j < D; ++j) out(t, j) = sinusoidal_value(static_cast<index_t>(positions(t)), j, D, base);
}

// x(b, t, :) += PE(positions(b, t), :), the original Transformer's input.
template <class P>
void add_sinusoidal(tensor_view<float, 3> x /*(B, T, D)*/, tensor_view<P, 2> positions /*(B, T)*/,
                    float base = 10000.0f) {
    tinyllm::detail::expect_add_sinusoidal_args(x, positions, base);
    const index_t D = x.extent(2);
    for (index_t b = 0; b < x.extent(0); ++b)
        for (index_t t = 0; t < x.extent(1); ++t) {
            const index_t p = static_cast<index_t>(positions(b, t));
            for (index_t j = 0; j < D; ++j) x(b, t, j) += sinusoidal_value(p, j, D, base);
        }
}

// x(b, t, :) += table(positions(b, t), :), GPT-2's learned positions (wpe).
template <class P>
void add_learned_positions(tensor_view<float, 3> x /*(B, T, D)*/, tensor_view<const float, 2> table /*(P_max, D)*/,
                           tensor_view<P, 2> positions /*(B, T)*/) {
    tinyllm::detail::expect_add_learned_args(x, table, positions);
    for (index_t b = 0; b < x.extent(0); ++b)
        for (index_t t = 0; t < x.extent(1); ++t) {
            const index_t p = static_cast<index_t>(positions(b, t));
            TINYLLM_EXPECT(p >= 0 && p < table.extent(0), "add_learned_positions: position ", p, " at (", b, ", ",
                           t, ") is outside the table's [0, ", table.extent(0), ")");
            for (index_t j = 0; j < x.extent(2); ++j) x(b, t, j) += table(p, j);
        }
}

}  // namespace cpu

namespace detail {

// A (B, T, H, D) tensor or view RoPE rotates, and a (B, T) tensor or view of
// int32/int64 position ids.
template <class X>
concept rope_tensor_like = tensor_like<X> && view_of_t<X>::rank == 4;
template <class X>
concept position_tensor_like =
    tensor_like<X> && view_of_t<X>::rank == 2 && is_position_type_v<typename view_of_t<X>::element_type>;

template <class X>
tensor_view<float, 4> rope_output(X&& x) {
    using V = view_of_t<X>;
    static_assert(std::is_same_v<typename V::element_type, float>,
                  "tinyllm::cpu::apply_rope rotates float tensors in place (not const, not another type)");
    return as_view(x);
}

// apply_rope(q, k, ...): q and k are rotated in place one after the other, so an
// element of both would be rotated twice.
template <class T, class U>
void expect_rope_pair(std::string_view op, const tensor_view<T, 4>& q, const tensor_view<U, 4>& k) {
    // overlaps() sets apart the heads of one fused qkv row (disjoint modulo the row stride).
    if (overlaps(q, k))
        throw error(cat("tinyllm: ", op, ": k must not share memory with q (each is rotated in place, so an element ",
                        "of both would be rotated twice)"));
}

// RoPE in place on x, the position of token (b, t) given by position_of(b, t).
template <class PositionOf>
void apply_rope_rows(tensor_view<float, 4> x /*(B, T, H, D)*/, const rope_config& cfg, PositionOf&& position_of) {
    const rope_config r = resolve_rope(cfg, x.extent(3));
    const index_t pairs = r.rotary_dim / 2;
    std::vector<float> inv_freq(static_cast<std::size_t>(pairs)), cosines(inv_freq.size()), sines(inv_freq.size());
    for (index_t i = 0; i < pairs; ++i) inv_freq[static_cast<std::size_t>(i)] = rope_inverse_frequency(r, i);
    for (index_t b = 0; b < x.extent(0); ++b)
        for (index_t t = 0; t < x.extent(1); ++t) {
            const index_t pos = position_of(b, t);
            for (std::size_t i = 0; i < inv_freq.size(); ++i)
                detail::sin_cos(rope_angle(inv_freq[i], pos), &sines[i], &cosines[i]);
            for (index_t h = 0; h < x.extent(2); ++h)
                for (index_t i = 0; i < pairs; ++i) {
                    index_t f0, f1;
                    rope_pair_features(r.pairing, r.rotary_dim, i, &f0, &f1);
                    rope_rotate(&x(b, t, h, f0), &x(b, t, h, f1), cosines[static_cast<std::size_t>(i)],
                                sines[static_cast<std::size_t>(i)]);
                }
        }
}

// position_offset of a run of `tokens` tokens (the last at position_offset + tokens - 1,
// which must fit index_t).
inline void expect_position_offset(index_t position_offset, index_t tokens, std::string_view op) {
    TINYLLM_EXPECT(position_offset >= 0, op, ": position_offset = ", position_offset,
                   " must be >= 0 (it is the position of the first token: the cache length when decoding)");
    TINYLLM_EXPECT(position_offset <= std::numeric_limits<index_t>::max() - tokens, op,
                   ": position_offset = ", position_offset, " puts the last of ", tokens,
                   " tokens past the largest position index_t holds");
}

}  // namespace detail

namespace cpu {

// RoPE in place: for every (b, t, h) and pair i < rotary_dim/2, rotate the two
// features of pair i of x(b, t, h, :) by the angle positions(b, t) * w_i.
// Features rotary_dim .. D-1 are left as they are. Apply to q and to k (they
// may have different head counts, as with grouped-query attention). x is a
// float tensor or view; positions a (B, T) tensor or view of int32 or int64.
// Position ids say where each token is: 0..T-1 for a prompt, the cache length
// for a decoded token, restarting at 0 for each sequence packed into one row.
template <tinyllm::detail::rope_tensor_like X, tinyllm::detail::position_tensor_like Pos>
void apply_rope(X&& x /*(B, T, H, D)*/, Pos&& positions /*(B, T)*/, const rope_config& cfg) {
    const tensor_view<float, 4> xv = tinyllm::detail::rope_output(x);
    const auto pv = as_view(positions);
    validate(cfg, xv.extent(3));
    TINYLLM_EXPECT(pv.extent(0) == xv.extent(0) && pv.extent(1) == xv.extent(1), "apply_rope: positions has shape ",
                   to_string(pv.shape()), " but x ", to_string(xv.shape()), " needs (B, T) = (", xv.extent(0), ", ",
                   xv.extent(1), ")");
    tinyllm::detail::expect_distinct_elements("apply_rope", "x", xv);  // a head stride of 0: one head rotated twice
    tinyllm::detail::expect_apart("apply_rope", "x", xv, "positions", pv);
    tinyllm::detail::apply_rope_rows(xv, cfg, [&](index_t b, index_t t) { return static_cast<index_t>(pv(b, t)); });
}

// RoPE in place with the positions of a contiguous run of tokens: token t of
// every batch row is at position_offset + t. The prompt is apply_rope(x, cfg)
// (positions 0..T-1); decoding T new tokens after a cache of L is
// apply_rope(x, cfg, L).
template <tinyllm::detail::rope_tensor_like X>
void apply_rope(X&& x /*(B, T, H, D)*/, const rope_config& cfg, index_t position_offset = 0) {
    const tensor_view<float, 4> xv = tinyllm::detail::rope_output(x);
    tinyllm::detail::expect_position_offset(position_offset, xv.extent(1), "apply_rope");
    tinyllm::detail::expect_distinct_elements("apply_rope", "x", xv);
    tinyllm::detail::apply_rope_rows(xv, cfg, [&](index_t, index_t t) { return position_offset + t; });
}

// q and k together (the usual call), explicit positions.
template <tinyllm::detail::rope_tensor_like Q, tinyllm::detail::rope_tensor_like K,
          tinyllm::detail::position_tensor_like Pos>
void apply_rope(Q&& q /*(B, T, Hq, D)*/, K&& k /*(B, T, Hk, D)*/, Pos&& positions /*(B, T)*/,
                const rope_config& cfg) {
    tinyllm::detail::expect_rope_pair("apply_rope", tinyllm::detail::rope_output(q), tinyllm::detail::rope_output(k));
    apply_rope(q, positions, cfg);
    apply_rope(k, positions, cfg);
}

// q and k together, positions position_offset + t.
template <tinyllm::detail::rope_tensor_like Q, tinyllm::detail::rope_tensor_like K>
void apply_rope(Q&& q /*(B, T, Hq, D)*/, K&& k /*(B, T, Hk, D)*/, const rope_config& cfg,
                index_t position_offset = 0) {
    tinyllm::detail::expect_rope_pair("apply_rope", tinyllm::detail::rope_output(q), tinyllm::detail::rope_output(k));
    apply_rope(q, cfg, position_offset);
    apply_rope(k, cfg, position_offset);
}

// The cos/sin cache a fast kernel reads instead of computing: row p holds
// cos(p w_i) and sin(p w_i) for i < rotary_dim/2, for heads of head_dim features.
// Same values as apply_rope uses.
inline void rope_cos_sin(tensor_view<float, 2> cos_out /*(P_max, R/2)*/, tensor_view<float, 2> sin_out /*(P_max, R/2)*/,
                         const rope_config& cfg, index_t head_dim) {
    const rope_config r = resolve_rope(cfg, head_dim);
    TINYLLM_EXPECT(cos_out.shape() == sin_out.shape(), "rope_cos_sin: cos ", to_string(cos_out.shape()),
                   " and sin ", to_string(sin_out.shape()), " differ");
    TINYLLM_EXPECT(cos_out.extent(1) == r.rotary_dim / 2, "rope_cos_sin: tables need rotary_dim/2 = ",
                   r.rotary_dim / 2, " columns; got ", cos_out.extent(1));
    tinyllm::detail::expect_distinct_elements("rope_cos_sin", "cos_out", cos_out);
    tinyllm::detail::expect_distinct_elements("rope_cos_sin", "sin_out", sin_out);
    tinyllm::detail::expect_apart("rope_cos_sin", "sin_out", sin_out, "cos_out", cos_out);
    for (index_t p = 0; p < cos_out.extent(0); ++p)
        for (index_t i = 0; i < cos_out.extent(1); ++i)
            detail::sin_cos(rope_angle(rope_inverse_frequency(r, i), p), &sin_out(p, i), &cos_out(p, i));
}

// The same for a config with an explicit rotary_dim.
inline void rope_cos_sin(tensor_view<float, 2> cos_out /*(P_max, R/2)*/, tensor_view<float, 2> sin_out /*(P_max, R/2)*/,
                         const rope_config& cfg) {
    const rope_config r = tinyllm::detail::resolve_rope_without_head_dim(cfg, "rope_cos_sin");
    rope_cos_sin(cos_out, sin_out, r, r.rotary_dim);
}

// The ALiBi bias for every head, query and key: out(h, i, j) =
// alibi_bias(slope_h, query_positions(i), key_positions(j)). For inspection and
// tests; attention kernels call alibi_bias() inline instead of storing this.
template <class P>
void alibi_bias_table(tensor_view<float, 3> out /*(H, Tq, Tk)*/, tensor_view<P, 1> query_positions /*(Tq)*/,
                      tensor_view<P, 1> key_positions /*(Tk)*/) {
    static_assert(detail::is_position_type_v<P>, "positions must be int32 or int64");
    TINYLLM_EXPECT(out.extent(1) == query_positions.extent(0) && out.extent(2) == key_positions.extent(0),
                   "alibi_bias_table: out has shape ", to_string(out.shape()), " but there are ",
                   query_positions.extent(0), " queries and ", key_positions.extent(0), " keys");
    tinyllm::detail::expect_distinct_elements("alibi_bias_table", "out", out);
    tinyllm::detail::expect_apart("alibi_bias_table", "out", out, "query_positions", query_positions);
    tinyllm::detail::expect_apart("alibi_bias_table", "out", out, "key_positions", key_positions);
    const auto slopes = alibi_slopes(out.extent(0));
    for (index_t h = 0; h < out.extent(0); ++h)
        for (index_t i = 0; i < out.extent(1); ++i)
            for (index_t j = 0; j < out.extent(2); ++j)
                out(h, i, j) = alibi_bias(slopes[static_cast<std::size_t>(h)], static_cast<index_t>(query_positions(i)),
                                          static_cast<index_t>(key_positions(j)));
}

}  // namespace cpu

// ---- Backward (training) --------------------------------------------------------------
//
// RoPE is a rotation of each pair: (a', b') = R(angle) (a, b), a linear map
// whose matrix R is orthogonal, so its transpose is its inverse, R(-angle).
// The gradient flows back through the transpose:
//
//     (da, db) = R(angle)^T (da', db') = R(-angle) (da', db'):
//         da = da' cos + db' sin,   db = db' cos - da' sin
//
// — the same rotation with the sine negated, for every pairing, scaling and
// rotary_dim the forward supports (features beyond rotary_dim passed through
// unchanged, so their gradient passes through too). The cosines and sines are
// the forward's own (the same float angle), so the backward is the forward's
// exact transpose, up to the rounding of the products. apply_rope_backward
// rotates the gradient in place, with positions given as the forward's.
//
// Learned positions, x(b, t, :) += table(positions(b, t), :), are an
// embedding lookup added to x: dx passes through unchanged (the caller keeps
// dout as x's gradient), and the table's gradient is the embedding backward's
// scatter-add of dout's rows into the rows their positions read,
// learned_positions_backward below (the same code as cpu::embedding_backward).
//
// The other schemes need no backward function: the sinusoidal encoding is a
// constant added to x (dx passes through unchanged, and it has no
// parameters); ALiBi is a constant bias on the attention scores (the scores'
// gradient passes through it, and the slopes are not trained).

namespace detail {

// The backward of apply_rope_rows: rotate each pair of dx by -angle, in place.
template <class PositionOf>
void apply_rope_backward_rows(tensor_view<float, 4> dx /*(B, T, H, D)*/, const rope_config& cfg,
                              PositionOf&& position_of) {
    const rope_config r = resolve_rope(cfg, dx.extent(3));
    const index_t pairs = r.rotary_dim / 2;
    std::vector<float> inv_freq(static_cast<std::size_t>(pairs)), cosines(inv_freq.size()), sines(inv_freq.size());
    for (index_t i = 0; i < pairs; ++i) inv_freq[static_cast<std::size_t>(i)] = rope_inverse_frequency(r, i);
    for (index_t b = 0; b < dx.extent(0); ++b)
        for (index_t t = 0; t < dx.extent(1); ++t) {
            const index_t pos = position_of(b, t);
            for (std::size_t i = 0; i < inv_freq.size(); ++i)
                detail::sin_cos(rope_angle(inv_freq[i], pos), &sines[i], &cosines[i]);
            for (index_t h = 0; h < dx.extent(2); ++h)
                for (index_t i = 0; i < pairs; ++i) {
                    index_t f0, f1;
                    rope_pair_features(r.pairing, r.rotary_dim, i, &f0, &f1);
                    rope_rotate(&dx(b, t, h, f0), &dx(b, t, h, f1), cosines[static_cast<std::size_t>(i)],
                                -sines[static_cast<std::size_t>(i)]);  // R(-angle) = R(angle)^T
                }
        }
}

}  // namespace detail

namespace cpu {

// The backward of apply_rope(x, positions, cfg), in place: dx holds the
// gradient of the rotated x on entry and the gradient of x on return (each
// pair rotated by -angle). dx: (B, T, H, D), a float tensor or view; positions:
// (B, T) of int32 or int64, as given to the forward.
template <tinyllm::detail::rope_tensor_like X, tinyllm::detail::position_tensor_like Pos>
void apply_rope_backward(X&& dx /*(B, T, H, D)*/, Pos&& positions /*(B, T)*/, const rope_config& cfg) {
    const tensor_view<float, 4> dv = tinyllm::detail::rope_output(dx);
    const auto pv = as_view(positions);
    validate(cfg, dv.extent(3));
    TINYLLM_EXPECT(pv.extent(0) == dv.extent(0) && pv.extent(1) == dv.extent(1),
                   "apply_rope_backward: positions has shape ", to_string(pv.shape()), " but dx ",
                   to_string(dv.shape()), " needs (B, T) = (", dv.extent(0), ", ", dv.extent(1), ")");
    tinyllm::detail::expect_distinct_elements("apply_rope_backward", "dx", dv);
    tinyllm::detail::expect_apart("apply_rope_backward", "dx", dv, "positions", pv);
    tinyllm::detail::apply_rope_backward_rows(dv, cfg,
                                              [&](index_t b, index_t t) { return static_cast<index_t>(pv(b, t)); });
}

// The backward of apply_rope(x, cfg, position_offset), in place: token t at
// position position_offset + t.
template <tinyllm::detail::rope_tensor_like X>
void apply_rope_backward(X&& dx /*(B, T, H, D)*/, const rope_config& cfg, index_t position_offset = 0) {
    const tensor_view<float, 4> dv = tinyllm::detail::rope_output(dx);
    tinyllm::detail::expect_position_offset(position_offset, dv.extent(1), "apply_rope_backward");
    tinyllm::detail::expect_distinct_elements("apply_rope_backward", "dx", dv);
    tinyllm::detail::apply_rope_backward_rows(dv, cfg, [&](index_t, index_t t) { return position_offset + t; });
}

// The backward of add_learned_positions(x, table, positions) for the table:
//     dtable(p, :) (+)= sum_{(b, t) : positions(b, t) = p} dout(b, t, :)
// summed in double in token order and rounded once; rows of positions that do
// not occur become 0 (or are left as they are with `accumulate`). dtable:
// (P_max, D); dout: (B, T, D), the gradient of the sum x + table[positions];
// positions: (B, T) int32 or int64, as given to the forward. x's own gradient
// is dout itself (an addition passes it through), so there is no dx.
template <class P>
void learned_positions_backward(tensor_view<float, 2> dtable /*(P_max, D)*/,
                                tensor_view<const float, 3> dout /*(B, T, D)*/, tensor_view<P, 2> positions /*(B, T)*/,
                                bool accumulate = false) {
    static_assert(detail::is_position_type_v<P>, "positions must be int32 or int64");
    using Id = std::remove_const_t<P>;
    tinyllm::detail::scatter_add_rows<float, Id>(dtable, tensor_view<const Id, 2>(positions), dout, 1.0f, accumulate,
                                                 "learned_positions_backward", "positions", "the table's");
}

}  // namespace cpu
}  // namespace tinyllm
