// examples/tinyllm/tour_moe.cpp — the tour's Mixture-of-Experts chapter: route
// the example sentence's words through 8 random experts with top-2 gating.
#include "registry.hpp"
#include "text.hpp"

#include <tinyllm/moe.hpp>
#include <tinyllm/random.hpp>

#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::extents;
using tinyllm::index_t;

namespace {

// FNV-1a: a word's seed, so each word gets the same random "embedding" every run.
std::uint64_t fnv1a(const std::string& s) {
    std::uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(50, "moe", "Mixture of Experts: routing tokens to experts") {
    auto& out = ctx.out;
    const auto words = words_of(example_sentence);
    const index_t T = static_cast<index_t>(words.size()), D = 16, E = 8, k = 2;

    out << "A Mixture-of-Experts layer keeps E feed-forward networks (experts) but runs only k of\n"
           "them per token: E/k times the parameters for the same compute per token. A router\n"
           "scores every expert for every token, logits = x . W_router^T, shape (T, E), and gating\n"
           "keeps the top k. Here: the sentence's "
        << T << " words (random " << D << "-dim embeddings),\nE = " << E << " random experts, k = " << k
        << ", Mixtral's gating: softmax -> top-2 -> renormalize.\n\n";

    tinyllm::tensor<float, 2> x(extents<2>{T, D});  // (T, D)
    for (index_t t = 0; t < T; ++t)
        tinyllm::cpu::fill_uniform(x.view().slice(0, t), fnv1a(words[t]), -1.0f, 1.0f);
    tinyllm::tensor<float, 2> router(extents<2>{E, D});  // (E, D)
    tinyllm::cpu::fill_uniform(router.view(), 50, -1.0f, 1.0f);
    tinyllm::tensor<float, 2> logits(extents<2>{T, E});  // (T, E)
    for (index_t t = 0; t < T; ++t)
        for (index_t e = 0; e < E; ++e) {
            float s = 0;
            for (index_t d = 0; d < D; ++d) s += x(t, d) * router(e, d);
            logits(t, e) = s;
        }

    tinyllm::tensor<std::int32_t, 2> ids(extents<2>{T, k});  // (T, k)
    tinyllm::tensor<float, 2> weights(extents<2>{T, k});     // (T, k)
    tinyllm::cpu::softmax_topk_gating(ids.view(), weights.view(), logits.view(), true);

    const index_t capacity = tinyllm::moe_capacity(T, k, E, 1.0);
    tinyllm::tensor<std::int32_t, 2> position(extents<2>{T, k});  // (T, k)
    const index_t dropped = tinyllm::cpu::assign_capacity(position.view(), ids.view(), E, capacity);

    out << "  word        expert  weight    expert  weight     (x: dropped at capacity factor 1.0)\n";
    for (index_t t = 0; t < T; ++t) {
        out << "  " << std::left << std::setw(11) << words[t] << std::right;
        for (index_t j = 0; j < k; ++j)
            out << "   " << std::setw(3) << ids(t, j) << (position(t, j) < 0 ? "x" : " ") << "   "
                << fixed(weights(t, j), 3) << "  ";
        out << "\n";
    }

    const auto stats = tinyllm::cpu::routing_statistics(ids.view(), E);
    out << "\nTokens per expert (" << T << " tokens x " << k << " = " << stats.slots << " slots, "
        << fixed(stats.mean_load, 2) << " per expert if perfectly balanced):\n   ";
    for (index_t e = 0; e < E; ++e) out << "  e" << e << ": " << stats.counts[e];
    out << "\n    busiest expert / mean = " << fixed(stats.max_over_mean, 2) << ", unused experts: " << stats.unused_experts
        << "\n\nThe Switch load-balancing loss E * sum_i f_i * P_i (f_i: share of slots routed to i,\n"
           "P_i: mean router probability of i) is 1 for perfectly even routing. A token's k experts are\n"
           "distinct, so one expert holds at most 1/k of the slots and the loss is at most E/k = "
        << E / k << ",\napproached when the same k experts take every token and hold all the router's probability.\n"
           "Here: " << fixed(tinyllm::cpu::load_balancing_loss(logits.view(), ids.view()), 4)
        << ". Training adds ~0.01 x this so the router spreads tokens out.\n"
        << "The router z-loss, mean logsumexp^2, keeps logits small: "
        << fixed(tinyllm::cpu::router_z_loss(logits.view()), 4) << ".\n";

    out << "\nCapacity: with capacity factor 1.0 every expert takes at most ceil(1.0 * " << T << " * " << k << " / "
        << E << ") = " << capacity << " slots,\nadmitted in token order. " << dropped << " slot(s) dropped:";
    if (dropped == 0) out << " none.";
    for (index_t t = 0; t < T; ++t)
        for (index_t j = 0; j < k; ++j)
            if (position(t, j) < 0)
                out << "\n    '" << words[t] << "' -> expert " << ids(t, j) << " (its choice " << j + 1
                    << "; the expert was full)";
    out << "\nA dropped slot contributes nothing; the residual connection x + moe(x) carries the token on.\n";

    tinyllm::cpu::moe_plan_buffers plan(T, k, E, 4);
    tinyllm::cpu::moe_plan(plan.view(), ids.view(), {capacity, 4});
    out << "\nDispatch groups the kept slots by expert (histogram -> prefix sum -> scatter), each expert's\n"
           "rows padded to a multiple of 4 for grouped GEMM tiles; '.' is padding:\n";
    for (index_t e = 0; e < E; ++e) {
        out << "    expert " << e << " rows " << std::setw(2) << plan.expert_offsets(e) << ".."
            << std::setw(2) << plan.expert_offsets(e + 1) - 1 << ":";
        for (index_t r = plan.expert_offsets(e); r < plan.expert_offsets(e + 1); ++r)
            out << " " << (plan.row_token(r) >= 0 ? words[plan.row_token(r)] : std::string("."));
        out << "\n";
    }

    // DeepSeek-V3 style on the same logits: sigmoid scores, 4 groups of 2, keep 2 groups.
    tinyllm::tensor<float, 1> bias(extents<1>{E}, 0.0f);
    tinyllm::tensor<std::int32_t, 2> ds_ids(extents<2>{T, k});
    tinyllm::tensor<float, 2> ds_weights(extents<2>{T, k});
    tinyllm::grouped_topk_options options;
    options.n_group = 4;
    options.topk_group = 2;
    tinyllm::cpu::grouped_topk_gating(ds_ids.view(), ds_weights.view(), logits.view(), bias.view(), options);
    index_t changed = 0;
    for (index_t t = 0; t < T; ++t)
        changed += ds_ids(t, 0) != ids(t, 0) || ds_ids(t, 1) != ids(t, 1);
    out << "\nDeepSeek-V3 routing on the same logits (sigmoid scores, experts in 4 groups of 2, only the\n"
           "2 best groups eligible) picks different experts for "
        << changed << " of " << T << " words; e.g. '" << words[0] << "' -> " << ds_ids(0, 0) << " ("
        << fixed(ds_weights(0, 0), 3) << "), " << ds_ids(0, 1) << " (" << fixed(ds_weights(0, 1), 3) << ").\n";
    out << "\nOn a GPU the fused gating kernel does softmax, top-k and renormalization in one pass with a\n"
           "warp per token; tinyllm::cuda::softmax_topk_gating chooses exactly these experts (tests check).\n";
}
