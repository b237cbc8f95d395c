// tinyllm/moe_balance.hpp — keeping experts balanced: the load-balancing loss,
// the router z-loss, utilization statistics and expert capacity.
//
// Left alone, a router collapses: the experts that happen to win early get the
// gradient, improve, and win more, until a few experts take every token and the
// rest are dead weight (and, with experts on different GPUs, one GPU does all
// the work). Training therefore adds small auxiliary losses.
//
// Load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4). Over a
// batch of T tokens routed to k experts each (ids from a gating function):
//     f_i = (1 / (T·k)) · #{(t, j) : id(t, j) = i}   the fraction of routed slots that went to i
//     P_i = (1 / T) · sum_t softmax(logits_t)_i       the mean router probability of i
//     loss = E · sum_i f_i · P_i
// f is a count and has no gradient; P carries the gradient, and the product
// pushes probability away from the experts that receive the most tokens. Both f
// and P sum to 1, and the loss is 1 when routing is perfectly uniform (f_i =
// P_i = 1/E) and grows to E / k when routing collapses onto k experts (E for
// Switch's k = 1: an expert takes at most T of the T·k slots, so f_i <= 1/k).
// It is scaled by a small coefficient (0.01) in the training loss.
//
// transformers' definition (`load_balancing_loss_func`, used by Mixtral, Qwen-MoE,
// ... with `router_aux_loss_coef`) concatenates the router logits of all L MoE
// layers into R = L·B·T rows and computes, without an attention mask,
//     aux = E · sum_e (c_e / R) · (sum_rows p_e / R),
//     c_e = #rows whose top-k contains e = sum over the k slots of the rows whose slot went to e
// (its tokens_per_expert is the (k, E) mean of the one-hot slots; summing it over
// the k slots gives c_e / R). That is f_e = c_e / (R·k) above with T = R, times k:
//     aux = k · load_balancing_loss(logits of all layers stacked (R, E), their ids (R, k)).
// So a model trained with coefficient c adds c · k · load_balancing_loss(stacked)
// and takes its gradient with load_balancing_loss_backward(dlogits (R, E), stacked
// logits, ids, scale = c · k); rows l·B·T .. (l+1)·B·T - 1 of dlogits belong to
// layer l. (A layer's rows cannot be done alone: f and the 1/R count every layer.)
//
// Gradient. f is a count: it carries no gradient (and the top-k choice behind it
// is piecewise constant). Only P does: for row t with p = softmax(logits_t),
// dp_i/dlogits_e = p_i ([i = e] - p_e), so
//     d loss / d logits(t, e) = (E / T) · p_e · (f_e - sum_i f_i p_i).
// An expert that receives more than its probability-weighted share of slots has
// its logit pushed down, one that receives less pushed up.
//
// Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5):
//     z_loss = (1 / T) · sum_t (log sum_e exp(logits_t,e))^2
// It penalises large logits, which make the softmax saturate and training
// unstable in low precision; coefficient ~1e-3. (transformers' router_z_loss_func
// is the same mean.) Since d lse / d logits_e = p_e,
//     d z_loss / d logits(t, e) = (2 / T) · lse_t · p_e.
//
// Capacity (GShard, Switch). To give every expert a fixed-size buffer (static
// shapes, balanced devices) each expert accepts at most
//     capacity = ceil(capacity_factor · T · k / E)
// routed slots. Slots are admitted in token order (token 0's slots first, a
// token's slots best-first); the rest are dropped: that expert does not see
// the token, the slot contributes nothing, and the layer's residual connection
// carries the token through unchanged. capacity_factor = 1 is exactly the
// average load, so any imbalance drops tokens; 1.25 is common in training.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace tinyllm {

// ceil(capacity_factor · T · k / E), computed without float rounding surprises
// for the common exact cases (e.g. factor 1.0 with T·k divisible by E).
inline index_t moe_capacity(index_t tokens, index_t k, index_t experts, double capacity_factor) {
    TINYLLM_EXPECT(experts >= 1, "moe_capacity: E = ", experts, " must be at least 1");
    TINYLLM_EXPECT(tokens >= 0 && k >= 1, "moe_capacity: T = ", tokens, " and k = ", k, " must be >= 0 and >= 1");
    TINYLLM_EXPECT(std::isfinite(capacity_factor) && capacity_factor > 0, "moe_capacity: capacity_factor = ",
                   capacity_factor, " must be a positive finite number");
    TINYLLM_EXPECT(tokens <= std::numeric_limits<index_t>::max() / k, "moe_capacity: T = ", tokens,
                   " tokens of k = ", k, " slots are more slots than index_t counts");
    const double exact = capacity_factor * static_cast<double>(tokens * k) / static_cast<double>(experts);
    TINYLLM_EXPECT(exact < 0x1p62, "moe_capacity: capacity_factor = ", capacity_factor, " gives ", exact,
                   " slots per expert, more than index_t counts");
    // Nearest integer first, so 1.0 * 24 / 8 is 3 and not ceil(3.0000000000000004).
    const double nearest = std::nearbyint(exact);
    return static_cast<index_t>(std::fabs(exact - nearest) <= 1e-9 * (1 + exact) ? nearest : std::ceil(exact));
}

// What a routing decision did to the experts (see routing_statistics).
struct routing_stats {
    std::vector<index_t> counts;   // (E) routed slots per expert
    std::vector<double> fraction;  // (E) f_i = counts_i / (T·k)
    index_t slots = 0;             // T·k
    double mean_load = 0;          // T·k / E, the perfectly balanced count
    index_t max_count = 0, min_count = 0;
    double max_over_mean = 0;      // max_count / mean_load: 1 is perfect balance
    double coefficient_of_variation = 0;  // std(counts) / mean(counts)
    index_t unused_experts = 0;    // experts that received no token
};

namespace detail {
inline void expect_ids(tensor_view<const std::int32_t, 2> ids, index_t experts, const char* op) {
    TINYLLM_EXPECT(experts >= 1, op, ": E = ", experts, " must be at least 1");
    for (index_t t = 0; t < ids.extent(0); ++t)
        for (index_t j = 0; j < ids.extent(1); ++j)
            TINYLLM_EXPECT(ids(t, j) >= 0 && ids(t, j) < experts, op, ": ids(", t, ", ", j, ") = ", ids(t, j),
                           " is not an expert in [0, ", experts, ")");
}
}  // namespace detail

namespace cpu {

// counts (E) int32: routed slots per expert (a histogram of ids).
inline void expert_counts(tensor_view<std::int32_t, 1> counts, tensor_view<const std::int32_t, 2> ids) {
    const index_t E = counts.extent(0);
    tinyllm::detail::expect_ids(ids, E, "expert_counts");
    for (index_t e = 0; e < E; ++e) counts(e) = 0;
    for (index_t t = 0; t < ids.extent(0); ++t)
        for (index_t j = 0; j < ids.extent(1); ++j) ++counts(ids(t, j));
}

// Counts, fractions and balance measures of a routing over E experts.
inline routing_stats routing_statistics(tensor_view<const std::int32_t, 2> ids, index_t experts) {
    tinyllm::detail::expect_ids(ids, experts, "routing_statistics");
    routing_stats s;
    s.counts.assign(static_cast<std::size_t>(experts), 0);
    for (index_t t = 0; t < ids.extent(0); ++t)
        for (index_t j = 0; j < ids.extent(1); ++j) ++s.counts[ids(t, j)];
    s.slots = ids.extent(0) * ids.extent(1);
    s.mean_load = static_cast<double>(s.slots) / static_cast<double>(experts);
    s.max_count = s.min_count = s.counts[0];
    double var = 0;
    for (index_t c : s.counts) {
        s.fraction.push_back(s.slots ? static_cast<double>(c) / static_cast<double>(s.slots) : 0.0);
        s.max_count = c > s.max_count ? c : s.max_count;
        s.min_count = c < s.min_count ? c : s.min_count;
        s.unused_experts += c == 0;
        var += (static_cast<double>(c) - s.mean_load) * (static_cast<double>(c) - s.mean_load);
    }
    var /= static_cast<double>(experts);
    s.max_over_mean = s.mean_load > 0 ? static_cast<double>(s.max_count) / s.mean_load : 0.0;
    s.coefficient_of_variation = s.mean_load > 0 ? std::sqrt(var) / s.mean_load : 0.0;
    return s;
}

// Switch load-balancing loss E · sum_i f_i · P_i (definitions above), in double.
//   logits (T, E) float: the router logits (P is their softmax, averaged)
//   ids    (T, k) int32: the experts chosen for them
inline double load_balancing_loss(tensor_view<const float, 2> logits, tensor_view<const std::int32_t, 2> ids) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    TINYLLM_EXPECT(ids.extent(0) == T, "load_balancing_loss: ids has ", ids.extent(0), " rows but logits has ", T);
    TINYLLM_EXPECT(T >= 1, "load_balancing_loss: needs at least one token");
    const index_t k = ids.extent(1);
    tinyllm::detail::expect_ids(ids, E, "load_balancing_loss");
    std::vector<double> f(static_cast<std::size_t>(E), 0.0), P(static_cast<std::size_t>(E), 0.0), p(E);
    for (index_t t = 0; t < T; ++t) {
        double max = logits(t, 0), sum = 0;
        for (index_t e = 0; e < E; ++e) {
            TINYLLM_EXPECT(std::isfinite(logits(t, e)), "load_balancing_loss: logits(", t, ", ", e, ") = ",
                           logits(t, e), " is not finite");
            max = logits(t, e) > max ? logits(t, e) : max;
        }
        for (index_t e = 0; e < E; ++e) sum += p[e] = std::exp(logits(t, e) - max);
        for (index_t e = 0; e < E; ++e) P[e] += p[e] / sum / static_cast<double>(T);
        for (index_t j = 0; j < k; ++j) f[ids(t, j)] += 1.0 / static_cast<double>(T * k);
    }
    double loss = 0;
    for (index_t e = 0; e < E; ++e) loss += f[e] * P[e];
    return static_cast<double>(E) * loss;
}

// Router z-loss: the mean over tokens of logsumexp(logits_t)^2, in double.
inline double router_z_loss(tensor_view<const float, 2> logits) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    TINYLLM_EXPECT(T >= 1 && E >= 1, "router_z_loss: logits ", to_string(logits.shape()), " is empty");
    double total = 0;
    for (index_t t = 0; t < T; ++t) {
        double max = logits(t, 0), sum = 0;
        for (index_t e = 0; e < E; ++e) {
            TINYLLM_EXPECT(std::isfinite(logits(t, e)), "router_z_loss: logits(", t, ", ", e, ") = ", logits(t, e),
                           " is not finite");
            max = logits(t, e) > max ? logits(t, e) : max;
        }
        for (index_t e = 0; e < E; ++e) sum += std::exp(logits(t, e) - max);
        const double lse = max + std::log(sum);
        total += lse * lse;
    }
    return total / static_cast<double>(T);
}

// The gradient of scale · load_balancing_loss(logits, ids) with respect to the
// logits, f held constant (see the top of this file):
//     dlogits(t, e) (+)= scale · (E / T) · p_e · (f_e - sum_i f_i p_i)
// dlogits (T, E) is overwritten, or added to with `accumulate` (to combine it
// with the gating's own gradient or the z-loss's). scale is dL/d(loss): the
// loss's coefficient in the training objective (c · k for transformers' aux
// loss, with the logits of every layer stacked: see above). In double, rounded once.
inline void load_balancing_loss_backward(tensor_view<float, 2> dlogits /*(T, E)*/,
                                         tensor_view<const float, 2> logits /*(T, E)*/,
                                         tensor_view<const std::int32_t, 2> ids /*(T, k)*/, double scale = 1.0,
                                         bool accumulate = false) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    expect_shape(dlogits, logits.shape(), "load_balancing_loss_backward: dlogits");
    TINYLLM_EXPECT(ids.extent(0) == T, "load_balancing_loss_backward: ids has ", ids.extent(0),
                   " rows but logits has ", T);
    TINYLLM_EXPECT(T >= 1, "load_balancing_loss_backward: needs at least one token");
    const index_t k = ids.extent(1);
    tinyllm::detail::expect_ids(ids, E, "load_balancing_loss_backward");
    std::vector<double> f(static_cast<std::size_t>(E), 0.0), p(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t)
        for (index_t j = 0; j < k; ++j) f[ids(t, j)] += 1.0 / static_cast<double>(T * k);
    const double c = scale * static_cast<double>(E) / static_cast<double>(T);
    for (index_t t = 0; t < T; ++t) {
        double max = logits(t, 0), sum = 0, fp = 0;
        for (index_t e = 0; e < E; ++e) {
            TINYLLM_EXPECT(std::isfinite(logits(t, e)), "load_balancing_loss_backward: logits(", t, ", ", e, ") = ",
                           logits(t, e), " is not finite");
            max = logits(t, e) > max ? logits(t, e) : max;
        }
        for (index_t e = 0; e < E; ++e) sum += p[e] = std::exp(logits(t, e) - max);
        for (index_t e = 0; e < E; ++e) fp += f[e] * (p[e] /= sum);
        for (index_t e = 0; e < E; ++e)
            dlogits(t, e) = static_cast<float>(c * p[e] * (f[e] - fp) +
                                               (accumulate ? static_cast<double>(dlogits(t, e)) : 0.0));
    }
}

// The gradient of scale · router_z_loss(logits):
//     dlogits(t, e) (+)= scale · (2 / T) · lse_t · p_e
// overwritten, or added to with `accumulate`. In double, rounded once.
inline void router_z_loss_backward(tensor_view<float, 2> dlogits /*(T, E)*/,
                                   tensor_view<const float, 2> logits /*(T, E)*/, double scale = 1.0,
                                   bool accumulate = false) {
    const index_t T = logits.extent(0), E = logits.extent(1);
    expect_shape(dlogits, logits.shape(), "router_z_loss_backward: dlogits");
    TINYLLM_EXPECT(T >= 1 && E >= 1, "router_z_loss_backward: logits ", to_string(logits.shape()), " is empty");
    std::vector<double> p(static_cast<std::size_t>(E));
    for (index_t t = 0; t < T; ++t) {
        double max = logits(t, 0), sum = 0;
        for (index_t e = 0; e < E; ++e) {
            TINYLLM_EXPECT(std::isfinite(logits(t, e)), "router_z_loss_backward: logits(", t, ", ", e, ") = ",
                           logits(t, e), " is not finite");
            max = logits(t, e) > max ? logits(t, e) : max;
        }
        for (index_t e = 0; e < E; ++e) sum += p[e] = std::exp(logits(t, e) - max);
        const double lse = max + std::log(sum), c = scale * 2.0 * lse / static_cast<double>(T) / sum;
        for (index_t e = 0; e < E; ++e)
            dlogits(t, e) = static_cast<float>(c * p[e] + (accumulate ? static_cast<double>(dlogits(t, e)) : 0.0));
    }
}

// Capacity assignment in token order.
//   position (T, k) int32: the slot's place in its expert's buffer, 0 ..
//                          capacity-1, or -1 when the slot is dropped
//   ids      (T, k) int32; capacity < 0 means unlimited.
// Returns the number of dropped slots.
inline index_t assign_capacity(tensor_view<std::int32_t, 2> position, tensor_view<const std::int32_t, 2> ids,
                               index_t experts, index_t capacity) {
    expect_shape(position, ids.shape(), "assign_capacity: position");
    tinyllm::detail::expect_ids(ids, experts, "assign_capacity");
    std::vector<index_t> filled(static_cast<std::size_t>(experts), 0);
    index_t dropped = 0;
    for (index_t t = 0; t < ids.extent(0); ++t) {
        for (index_t j = 0; j < ids.extent(1); ++j) {
            index_t& n = filled[ids(t, j)];
            if (capacity < 0 || n < capacity) {
                position(t, j) = static_cast<std::int32_t>(n++);
            } else {
                position(t, j) = -1;
                ++dropped;
            }
        }
    }
    return dropped;
}

}  // namespace cpu
}  // namespace tinyllm
