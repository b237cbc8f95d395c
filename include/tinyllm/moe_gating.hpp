// tinyllm/moe_gating.hpp — Mixture-of-Experts gating: which k of E experts
// each token visits, and with what weight.
//
// A sparse MoE layer replaces one feed-forward network by E of them ("experts")
// and a small linear "router" that scores every expert for every token:
//
//     logits = x · W_router^T                        // (T, E)
//
// Gating turns each row of logits into k expert ids and k weights; the layer's
// output for token t is  y_t = sum_j w_tj · FFN_{id_tj}(x_t)  (the rest of the
// MoE machinery is in moe_dispatch.hpp). Three gating functions are in use:
//
// 1. Softmax then top-k (Switch Transformer k = 1, GShard / Mixtral k = 2):
//        p = softmax(logits_t)            ids = the k largest p
//        w_j = p_{id_j}                   (renormalize = false: Switch)
//        w_j = p_{id_j} / sum_i p_{id_i}  (renormalize = true:  GShard's top-2, Mixtral)
//    Mixtral's code writes it as "top-k of the logits, then softmax over those
//    k": softmax is monotone, so the same k win, and p_a / sum p = e^{l_a} /
//    sum e^{l}: the shared normaliser cancels. topk_softmax_gating below is that
//    literal form; a test checks the two agree.
//
// 2. Noisy top-k (Shazeer et al. 2017, "Outrageously large neural networks"):
//        H_e = logits_e + N_e · softplus(noise_logits_e),   N_e ~ Normal(0, 1)
//        ids = the k largest H,   w = softmax over the k selected H
//    Noise spreads training tokens over experts early on; noise_logits come from
//    a second router matrix (W_noise) that learns how much noise each expert gets.
//
// 3. Sigmoid with bias-based balancing and group-limited routing (DeepSeek-V3):
//        s_e = sigmoid(logits_e)              the affinity of the token for e
//        b_e = s_e + bias_e                   used ONLY to choose experts
//        experts are split into n_group equal, contiguous groups; a group's
//        score is the sum of its two largest b; the topk_group best groups
//        survive, and the top k of b within them are chosen.
//        w_j = s_{id_j} / sum_i s_{id_i} · routed_scaling_factor   (renormalized)
//    The bias is nudged up for under-loaded experts and down for over-loaded
//    ones during training ("auxiliary-loss-free balancing"); because it only
//    affects the choice and not the weights, it does not distort the output.
//    Group limiting keeps each token's experts on a few devices.
//
// Order and ties. The k ids of a token come out best first. Two experts with
// equal scores rank by index: the lower expert index wins, on the CPU and on
// CUDA alike (`moe_ranks_before`).
//
// Identical choices on CPU and GPU. Softmax gating chooses on the raw float
// logits (softmax is monotone), so the choice involves no arithmetic at all and
// is exactly reproducible. The noisy and sigmoid variants choose on scores that
// need exp/log/cos; host libm and CUDA's math library may differ in the last
// bit, so tinyllm computes those scores in double on both sides (the helpers
// below). A choice could then differ only where two scores agree to ~1e-15
// relative but are not equal — exact ties are resolved by index on both sides.
// The weights are computed in double on the CPU and in float on the fused CUDA
// kernel; they agree within float rounding (tests use ~1e-5 relative).
//
// Backward (training; derivation in docs/training.md). Only the weights depend
// smoothly on the logits; the choice of experts is piecewise constant, so it
// carries no gradient and the backward recomputes it from the same logits with
// the same rule (ties included) as the forward. Given g_j = dL/dw_j:
//   renormalized (Mixtral): w_j = exp(l_{id_j}) / sum_{i chosen} exp(l_i), a
//     softmax over the k chosen logits (the full softmax's normaliser cancels), so
//         dl_{id_j} = w_j (g_j - sum_i w_i g_i),   dl_e = 0 for every e not chosen:
//     an expert the token did not visit gets no gradient (no straight-through).
//   plain (Switch): w_j = p_{id_j}, the full softmax, so every logit moves:
//         dl_e = p_e (G_e - sum_j w_j g_j),   G_e = g_j if e = id_j, else 0.
//   noisy: as renormalized, on the noisy scores H; the noise N is a constant
//     (drawn from Philox by (seed, t, e), the same draw in the backward), so
//         dlogits_e = dH_e,   dnoise_logits_e = dH_e · N_e · sigmoid(noise_logits_e)
//     (softplus' = sigmoid).
// softmax_topk_gating_backward and noisy_topk_gating_backward compute these in
// double, rounding once.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace tinyllm {

// ---- shared host/device math ----------------------------------------------------

// True when (a, index ia) comes before (b, index ib) in the top-k order: the
// larger score first, the lower index first among equal scores.
template <class S>
TINYLLM_HOST_DEVICE bool moe_ranks_before(S a, int ia, S b, int ib) {
    return a > b || (a == b && ia < ib);
}

// The selection key of a logit: itself, except that NaN ranks last (as -inf),
// so a NaN on the GPU can never break the order (the CPU rejects NaN logits).
TINYLLM_HOST_DEVICE float moe_key(float x) { return x != x ? -INFINITY : x; }

// sigmoid(x) = 1 / (1 + e^-x), in double (see "Identical choices" above).
TINYLLM_HOST_DEVICE double moe_sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

// softplus(x) = log(1 + e^x), written so that neither branch overflows.
TINYLLM_HOST_DEVICE double moe_softplus(double x) {
    return x > 0 ? x + ::log1p(::exp(-x)) : ::log1p(::exp(x));
}

// The standard-normal noise N for token t and expert e of noisy gating:
// one Philox4x32-10 block with counter (e, 0, t_lo, t_hi) and key = seed gives
// words w0, w1; Box–Muller turns two uniforms into a normal sample,
//     u1 = (w0 + 1) / 2^32 in (0, 1],   u2 = w1 / 2^32 in [0, 1)
//     N  = sqrt(-2 ln u1) · cos(2 pi u2).
// Every (t, e) has its own counter, so a GPU thread needs no state at all.
TINYLLM_HOST_DEVICE double moe_gate_noise(std::uint64_t seed, index_t t, int e) {
    const std::uint64_t token = static_cast<std::uint64_t>(t);
    const philox_counter words = philox4x32_10(
        {{static_cast<std::uint32_t>(e), 0u, static_cast<std::uint32_t>(token), static_cast<std::uint32_t>(token >> 32)}},
        {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
    const double two_to_minus_32 = 1.0 / 4294967296.0;
    const double u1 = (static_cast<double>(words.v[0]) + 1.0) * two_to_minus_32;
    const double u2 = static_cast<double>(words.v[1]) * two_to_minus_32;
    const double two_pi = 6.283185307179586476925286766559;
    return ::sqrt(-2.0 * ::log(u1)) * ::cos(two_pi * u2);
}

// H = logit + N · softplus(noise_logit), the noisy gating score (double).
TINYLLM_HOST_DEVICE double moe_noisy_score(float logit, float noise_logit, std::uint64_t seed, index_t t, int e) {
    const double noise = moe_gate_noise(seed, t, e);
    const double scale = moe_softplus(static_cast<double>(noise_logit));
#if TINYLLM_ON_DEVICE
    // Explicitly rounded multiply and add: nvcc would otherwise fuse them into
    // one fma (one rounding) while the host rounds twice.
    return __dadd_rn(static_cast<double>(logit), __dmul_rn(noise, scale));
#else
    return detail::rounded(static_cast<double>(logit) + detail::rounded(noise * scale));  // never one fma (math.hpp)
#endif
}

// ---- options and validation -------------------------------------------------------

// DeepSeek-V3 style routing (variant 3 above). DeepSeek-V3 itself uses E = 256,
// k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5.
struct grouped_topk_options {
    int n_group = 1;                    // experts split into this many equal contiguous groups
    int topk_group = 1;                 // groups that survive, by the sum of their top-2 biased scores
    bool renormalize = true;            // divide the k weights by their sum (norm_topk_prob)
    float routed_scaling_factor = 1.0f; // multiplies every weight
};

namespace detail {

// Shapes and k shared by every gating function.
inline void expect_gating_shapes(tensor_view<const std::int32_t, 2> ids, tensor_view<const float, 2> weights,
                                 index_t tokens, index_t experts, const char* op) {
    const index_t k = ids.extent(1);
    TINYLLM_EXPECT(k >= 1, op, ": k (the second extent of ids) = ", k, " must be at least 1");
    TINYLLM_EXPECT(k <= experts, op, ": k = ", k, " exceeds the number of experts E = ", experts);
    TINYLLM_EXPECT(experts <= std::numeric_limits<std::int32_t>::max(), op, ": E = ", experts, " does not fit int32 ids");
    TINYLLM_EXPECT(ids.extent(0) == tokens, op, ": ids has ", ids.extent(0), " rows but logits has ", tokens, " tokens");
    expect_shape(weights, extents<2>{tokens, k}, std::string(op) + ": weights");
}

// The outputs' memory: ids and weights each with an address per element, apart
// from each other and from the logits (a token's logits are read again after
// some of its picks are written).
template <class L>
void expect_gating_outputs(tensor_view<const std::int32_t, 2> ids, tensor_view<const float, 2> weights,
                           tensor_view<L, 2> logits, const char* op) {
    expect_distinct_elements(op, "ids", ids);
    expect_distinct_elements(op, "weights", weights);
    expect_apart_from(op, "ids", ids, "weights", weights, "logits", logits);
    expect_apart(op, "weights", weights, "logits", logits);
}

// A further input of the gating (noise_logits, bias) apart from both outputs.
template <class X>
void expect_gating_input_apart(tensor_view<const std::int32_t, 2> ids, tensor_view<const float, 2> weights,
                               const char* name, const X& in, const char* op) {
    expect_apart(op, "ids", ids, name, in);
    expect_apart(op, "weights", weights, name, in);
}

inline void expect_grouped_options(const grouped_topk_options& o, index_t experts, index_t k, const char* op) {
    TINYLLM_EXPECT(o.n_group >= 1, op, ": n_group = ", o.n_group, " must be at least 1");
    TINYLLM_EXPECT(experts % o.n_group == 0, op, ": n_group = ", o.n_group, " does not divide E = ", experts);
    TINYLLM_EXPECT(o.topk_group >= 1 && o.topk_group <= o.n_group, op, ": topk_group = ", o.topk_group,
                   " must be in [1, n_group = ", o.n_group, "]");
    TINYLLM_EXPECT(k <= static_cast<index_t>(o.topk_group) * (experts / o.n_group), op, ": k = ", k,
                   " exceeds the experts in the topk_group = ", o.topk_group, " surviving groups of ",
                   experts / o.n_group);
    TINYLLM_EXPECT(std::isfinite(o.routed_scaling_factor), op, ": routed_scaling_factor = ", o.routed_scaling_factor,
                   " must be finite");
}

inline void expect_finite_row(const float* row, index_t experts, index_t t, const char* what, const char* op) {
    for (index_t e = 0; e < experts; ++e)
        TINYLLM_EXPECT(std::isfinite(row[e]), op, ": ", what, "(", t, ", ", e, ") = ", row[e], " is not finite");
}

// The k best of `scores` in top-k order (best first, lower index first among
// equals), skipping entries whose `eligible` flag is false. k rounds, each a
// scan for the best entry that ranks after the previous pick.
template <class S>
std::vector<int> top_k_indices(const std::vector<S>& scores, int k, const std::vector<bool>* eligible = nullptr) {
    std::vector<int> chosen;
    std::vector<bool> taken(scores.size(), false);
    for (int j = 0; j < k; ++j) {
        int best = -1;
        for (int i = 0; i < static_cast<int>(scores.size()); ++i) {
            if (taken[i] || (eligible && !(*eligible)[i])) continue;
            if (best < 0 || moe_ranks_before(scores[i], i, scores[best], best)) best = i;
        }
        if (best < 0) break;
        taken[best] = true;
        chosen.push_back(best);
    }
    return chosen;
}

inline const float* row_pointer(tensor_view<const float, 2> m, index_t t) { return &m(t, 0); }

inline void expect_rows_contiguous(tensor_view<const float, 2> m, const char* what, const char* op) {
    TINYLLM_EXPECT(m.extent(1) <= 1 || m.stride(1) == 1, op, ": the rows of ", what, " must be contiguous (stride(1) = ",
                   m.stride(1), ")");
}

}  // namespace detail

namespace cpu {

// Softmax -> top-k -> optional renormalization (Switch, GShard, Mixtral).
//   ids     (T, k)  int32   the chosen experts, best first
//   weights (T, k)  float   p_id (renormalize = false) or p_id / sum p_ids (true)
//   logits  (T, E)  float   router logits; must be finite
inline void softmax_topk_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                                tensor_view<const float, 2> logits, bool renormalize) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    tinyllm::detail::expect_gating_shapes(ids, weights, T, E, "softmax_topk_gating");
    tinyllm::detail::expect_rows_contiguous(logits, "logits", "softmax_topk_gating");
    tinyllm::detail::expect_gating_outputs(ids, weights, logits, "softmax_topk_gating");
    const int k = static_cast<int>(ids.extent(1));
    std::vector<float> keys(static_cast<std::size_t>(E));
    std::vector<double> p(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        const float* x = tinyllm::detail::row_pointer(logits, t);
        tinyllm::detail::expect_finite_row(x, E, t, "logits", "softmax_topk_gating");
        // p = softmax(x) in double, stabilised by the row maximum.
        double max = x[0], sum = 0;
        for (index_t e = 0; e < E; ++e) max = x[e] > max ? x[e] : max;
        for (index_t e = 0; e < E; ++e) sum += p[e] = std::exp(static_cast<double>(x[e]) - max);
        for (index_t e = 0; e < E; ++e) p[e] /= sum;
        // Choose on the logits themselves: the same order as p, with no rounding.
        for (index_t e = 0; e < E; ++e) keys[e] = x[e];
        const std::vector<int> top = tinyllm::detail::top_k_indices(keys, k);
        double chosen_sum = 0;
        for (int j = 0; j < k; ++j) chosen_sum += p[top[j]];
        for (int j = 0; j < k; ++j) {
            ids(t, j) = top[j];
            weights(t, j) = static_cast<float>(renormalize ? p[top[j]] / chosen_sum : p[top[j]]);
        }
    }
}

// Mixtral's literal formulation: top-k of the logits, then softmax over those k.
// Mathematically identical to softmax_topk_gating(..., renormalize = true).
inline void topk_softmax_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                                tensor_view<const float, 2> logits) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    tinyllm::detail::expect_gating_shapes(ids, weights, T, E, "topk_softmax_gating");
    tinyllm::detail::expect_rows_contiguous(logits, "logits", "topk_softmax_gating");
    tinyllm::detail::expect_gating_outputs(ids, weights, logits, "topk_softmax_gating");
    const int k = static_cast<int>(ids.extent(1));
    std::vector<float> row(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        const float* x = tinyllm::detail::row_pointer(logits, t);
        tinyllm::detail::expect_finite_row(x, E, t, "logits", "topk_softmax_gating");
        row.assign(x, x + E);
        const std::vector<int> top = tinyllm::detail::top_k_indices(row, k);
        // softmax over the k selected logits; top[0] holds the largest.
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += std::exp(static_cast<double>(x[top[j]]) - x[top[0]]);
        for (int j = 0; j < k; ++j) {
            ids(t, j) = top[j];
            weights(t, j) = static_cast<float>(std::exp(static_cast<double>(x[top[j]]) - x[top[0]]) / sum);
        }
    }
}

// Noisy top-k gating (Shazeer et al. 2017):
//   H(t, e) = logits(t, e) + N(seed, t, e) · softplus(noise_logits(t, e))
//   ids = top-k of H,  weights = softmax over the k selected H.
//   noise_logits (T, E) float; N from moe_gate_noise (Philox + Box–Muller).
// `token_offset` is added to t when drawing noise, so a batch processed in
// pieces draws the same noise as in one piece.
inline void noisy_topk_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                              tensor_view<const float, 2> logits, tensor_view<const float, 2> noise_logits,
                              std::uint64_t seed, index_t token_offset = 0) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    tinyllm::detail::expect_gating_shapes(ids, weights, T, E, "noisy_topk_gating");
    expect_shape(noise_logits, logits.shape(), "noisy_topk_gating: noise_logits");
    tinyllm::detail::expect_rows_contiguous(logits, "logits", "noisy_topk_gating");
    tinyllm::detail::expect_rows_contiguous(noise_logits, "noise_logits", "noisy_topk_gating");
    tinyllm::detail::expect_gating_outputs(ids, weights, logits, "noisy_topk_gating");
    tinyllm::detail::expect_gating_input_apart(ids, weights, "noise_logits", noise_logits, "noisy_topk_gating");
    const int k = static_cast<int>(ids.extent(1));
    std::vector<double> h(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        const float* x = tinyllm::detail::row_pointer(logits, t);
        const float* nx = tinyllm::detail::row_pointer(noise_logits, t);
        tinyllm::detail::expect_finite_row(x, E, t, "logits", "noisy_topk_gating");
        tinyllm::detail::expect_finite_row(nx, E, t, "noise_logits", "noisy_topk_gating");
        for (index_t e = 0; e < E; ++e) h[e] = moe_noisy_score(x[e], nx[e], seed, t + token_offset, static_cast<int>(e));
        const std::vector<int> top = tinyllm::detail::top_k_indices(h, k);
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += std::exp(h[top[j]] - h[top[0]]);
        for (int j = 0; j < k; ++j) {
            ids(t, j) = top[j];
            weights(t, j) = static_cast<float>(std::exp(h[top[j]] - h[top[0]]) / sum);
        }
    }
}

// DeepSeek-V3 style gating: sigmoid affinities, a selection-only bias and
// group-limited routing (variant 3 in the header comment).
//   bias (E) float: added to the affinities for choosing only.
inline void grouped_topk_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                                tensor_view<const float, 2> logits, tensor_view<const float, 1> bias,
                                const grouped_topk_options& options) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    tinyllm::detail::expect_gating_shapes(ids, weights, T, E, "grouped_topk_gating");
    expect_shape(bias, extents<1>{E}, "grouped_topk_gating: bias");
    tinyllm::detail::expect_rows_contiguous(logits, "logits", "grouped_topk_gating");
    tinyllm::detail::expect_grouped_options(options, E, ids.extent(1), "grouped_topk_gating");
    tinyllm::detail::expect_gating_outputs(ids, weights, logits, "grouped_topk_gating");
    tinyllm::detail::expect_gating_input_apart(ids, weights, "bias", bias, "grouped_topk_gating");
    for (index_t e = 0; e < E; ++e)
        TINYLLM_EXPECT(std::isfinite(bias(e)), "grouped_topk_gating: bias(", e, ") = ", bias(e), " is not finite");
    const int k = static_cast<int>(ids.extent(1));
    const int groups = options.n_group, group_size = static_cast<int>(E / groups);
    std::vector<double> s(static_cast<std::size_t>(E)), biased(static_cast<std::size_t>(E));
    std::vector<double> group_score(static_cast<std::size_t>(groups)), in_group(static_cast<std::size_t>(group_size));
    std::vector<bool> eligible(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        const float* x = tinyllm::detail::row_pointer(logits, t);
        tinyllm::detail::expect_finite_row(x, E, t, "logits", "grouped_topk_gating");
        for (index_t e = 0; e < E; ++e) {
            s[e] = moe_sigmoid(x[e]);
            biased[e] = s[e] + static_cast<double>(bias(e));
        }
        // A group's score: the sum of its two largest biased scores (its one
        // score when a group holds a single expert).
        for (int g = 0; g < groups; ++g) {
            for (int i = 0; i < group_size; ++i) in_group[i] = biased[g * group_size + i];
            const std::vector<int> best = tinyllm::detail::top_k_indices(in_group, group_size >= 2 ? 2 : 1);
            group_score[g] = group_size >= 2 ? in_group[best[0]] + in_group[best[1]] : in_group[best[0]];
        }
        const std::vector<int> kept_groups = tinyllm::detail::top_k_indices(group_score, options.topk_group);
        eligible.assign(eligible.size(), false);
        for (int g : kept_groups)
            for (int i = 0; i < group_size; ++i) eligible[g * group_size + i] = true;
        const std::vector<int> top = tinyllm::detail::top_k_indices(biased, k, &eligible);
        // Weights from the unbiased affinities. When every chosen affinity is 0
        // (logits below about -745 underflow the sigmoid) the weights are 0, not
        // the NaN of 0 / 0.
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += s[top[j]];
        for (int j = 0; j < k; ++j) {
            ids(t, j) = top[j];
            const double w = options.renormalize ? (sum > 0 ? s[top[j]] / sum : 0.0) : s[top[j]];
            weights(t, j) = static_cast<float>(w * options.routed_scaling_factor);
        }
    }
}

}  // namespace cpu
}  // namespace tinyllm

// ---- Backward -------------------------------------------------------------------------

namespace tinyllm::detail {

// A gradient of the gating backward (dlogits, dnoise_logits) against what the
// backward reads: an address per element, exactly `in` (the logits it is the
// gradient of: a token's row is read before it is written, by the same thread)
// or apart from it, and apart from dweights (read while the row is written).
inline void expect_gating_gradient(tensor_view<const float, 2> grad, const char* name,
                                   tensor_view<const float, 2> dweights, tensor_view<const float, 2> in,
                                   const char* in_name, const char* op) {
    expect_distinct_elements(op, name, grad);
    expect_in_place_or_apart(op, name, grad, in_name, in);
    expect_apart(op, name, grad, "dweights", dweights);
}

// dlogits (T, E) (empty when `optional`), dweights (T, k) with 1 <= k <= E, rows of logits contiguous;
// dlogits' memory (expect_gating_gradient).
inline void expect_gating_backward_shapes(tensor_view<float, 2> dlogits, tensor_view<const float, 2> dweights,
                                          tensor_view<const float, 2> logits, bool optional, const char* op) {
    const index_t T = logits.extent(0), E = logits.extent(1), k = dweights.extent(1);
    if (!optional || dlogits.size() != 0) expect_shape(dlogits, logits.shape(), std::string(op) + ": dlogits");
    TINYLLM_EXPECT(dweights.extent(0) == T, op, ": dweights has ", dweights.extent(0), " rows but logits has ", T,
                   " tokens");
    TINYLLM_EXPECT(k >= 1 && k <= E, op, ": k (the second extent of dweights) = ", k, " must be in [1, E = ", E, "]");
    expect_rows_contiguous(logits, "logits", op);
    if (dlogits.size() != 0) expect_gating_gradient(dlogits, "dlogits", dweights, logits, "logits", op);
}

}  // namespace tinyllm::detail

namespace tinyllm::cpu {

// The backward of softmax_topk_gating(ids, weights, logits, renormalize): given
// dweights = dL/dweights (T, k), dlogits (T, E) is overwritten with dL/dlogits
// (or added to, with `accumulate`: another loss's gradient already there, such
// as load_balancing_loss_backward's). The experts are chosen again from the
// logits exactly as the forward chose them. renormalize: only the chosen
// logits get gradient; plain: every logit does (see the top of this file).
inline void softmax_topk_gating_backward(tensor_view<float, 2> dlogits /*(T, E)*/,
                                         tensor_view<const float, 2> dweights /*(T, k)*/,
                                         tensor_view<const float, 2> logits /*(T, E)*/, bool renormalize,
                                         bool accumulate = false) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    tinyllm::detail::expect_gating_backward_shapes(dlogits, dweights, logits, false, "softmax_topk_gating_backward");
    const int k = static_cast<int>(dweights.extent(1));
    std::vector<float> keys(static_cast<std::size_t>(E));
    std::vector<double> p(static_cast<std::size_t>(E)), d(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        const float* x = tinyllm::detail::row_pointer(logits, t);
        tinyllm::detail::expect_finite_row(x, E, t, "logits", "softmax_topk_gating_backward");
        double max = x[0], sum = 0;
        for (index_t e = 0; e < E; ++e) max = x[e] > max ? x[e] : max;
        for (index_t e = 0; e < E; ++e) sum += p[e] = std::exp(static_cast<double>(x[e]) - max);
        for (index_t e = 0; e < E; ++e) p[e] /= sum;
        for (index_t e = 0; e < E; ++e) keys[e] = x[e];
        const std::vector<int> top = tinyllm::detail::top_k_indices(keys, k);  // the forward's choice
        double chosen_sum = 0;
        for (int j = 0; j < k; ++j) chosen_sum += p[top[j]];
        // w_j and s = sum_j w_j g_j
        double s = 0;
        for (int j = 0; j < k; ++j) s += (renormalize ? p[top[j]] / chosen_sum : p[top[j]]) * dweights(t, j);
        if (renormalize) {
            d.assign(d.size(), 0.0);
            for (int j = 0; j < k; ++j) d[top[j]] = p[top[j]] / chosen_sum * (dweights(t, j) - s);
        } else {
            for (index_t e = 0; e < E; ++e) d[e] = -p[e] * s;
            for (int j = 0; j < k; ++j) d[top[j]] += p[top[j]] * dweights(t, j);
        }
        for (index_t e = 0; e < E; ++e)
            dlogits(t, e) = static_cast<float>(d[e] + (accumulate ? static_cast<double>(dlogits(t, e)) : 0.0));
    }
}

// The backward of noisy_topk_gating(ids, weights, logits, noise_logits, seed,
// token_offset): dlogits (T, E) and dnoise_logits (T, E) (empty: not computed),
// overwritten or, with `accumulate`, added to. The noise is drawn again from
// (seed, t + token_offset, e) and is a constant of the gradient:
//     dlogits_e = dH_e,  dnoise_logits_e = dH_e · N_e · sigmoid(noise_logits_e)
// with dH the renormalized softmax's backward on the k chosen noisy scores H.
inline void noisy_topk_gating_backward(tensor_view<float, 2> dlogits /*(T, E) or empty*/,
                                       tensor_view<float, 2> dnoise_logits /*(T, E) or empty*/,
                                       tensor_view<const float, 2> dweights /*(T, k)*/,
                                       tensor_view<const float, 2> logits /*(T, E)*/,
                                       tensor_view<const float, 2> noise_logits /*(T, E)*/, std::uint64_t seed,
                                       index_t token_offset = 0, bool accumulate = false) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    const char* op = "noisy_topk_gating_backward";
    tinyllm::detail::expect_gating_backward_shapes(dlogits, dweights, logits, true, op);
    expect_shape(noise_logits, logits.shape(), std::string(op) + ": noise_logits");
    if (dnoise_logits.size()) expect_shape(dnoise_logits, logits.shape(), std::string(op) + ": dnoise_logits");
    tinyllm::detail::expect_rows_contiguous(noise_logits, "noise_logits", op);
    // dlogits is written before noise_logits is read again (for dnoise_logits); dnoise_logits
    // after logits' last read.
    if (dlogits.size()) tinyllm::detail::expect_apart(op, "dlogits", dlogits, "noise_logits", noise_logits);
    if (dnoise_logits.size()) {
        tinyllm::detail::expect_gating_gradient(dnoise_logits, "dnoise_logits", dweights, noise_logits, "noise_logits",
                                                op);
        tinyllm::detail::expect_apart(op, "dnoise_logits", dnoise_logits, "logits", logits);
        if (dlogits.size()) tinyllm::detail::expect_apart(op, "dnoise_logits", dnoise_logits, "dlogits", dlogits);
    }
    const int k = static_cast<int>(dweights.extent(1));
    std::vector<double> h(static_cast<std::size_t>(E)), dh(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        const float* x = tinyllm::detail::row_pointer(logits, t);
        const float* nx = tinyllm::detail::row_pointer(noise_logits, t);
        tinyllm::detail::expect_finite_row(x, E, t, "logits", op);
        tinyllm::detail::expect_finite_row(nx, E, t, "noise_logits", op);
        for (index_t e = 0; e < E; ++e) h[e] = moe_noisy_score(x[e], nx[e], seed, t + token_offset, static_cast<int>(e));
        const std::vector<int> top = tinyllm::detail::top_k_indices(h, k);
        double sum = 0, s = 0;
        for (int j = 0; j < k; ++j) sum += std::exp(h[top[j]] - h[top[0]]);
        for (int j = 0; j < k; ++j) s += std::exp(h[top[j]] - h[top[0]]) / sum * dweights(t, j);
        dh.assign(dh.size(), 0.0);
        for (int j = 0; j < k; ++j) dh[top[j]] = std::exp(h[top[j]] - h[top[0]]) / sum * (dweights(t, j) - s);
        for (index_t e = 0; e < E; ++e) {
            if (dlogits.size())
                dlogits(t, e) = static_cast<float>(dh[e] + (accumulate ? static_cast<double>(dlogits(t, e)) : 0.0));
            if (dnoise_logits.size()) {
                const double dn = dh[e] * moe_gate_noise(seed, t + token_offset, static_cast<int>(e)) *
                                  moe_sigmoid(static_cast<double>(nx[e]));
                dnoise_logits(t, e) = static_cast<float>(dn + (accumulate ? static_cast<double>(dnoise_logits(t, e)) : 0.0));
            }
        }
    }
}

}  // namespace tinyllm::cpu
