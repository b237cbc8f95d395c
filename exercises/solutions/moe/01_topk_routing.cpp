// Reference answer to exercise moe/01_topk_routing — the router of a mixture of experts.
//
// A MoE layer sends each token to k of its E expert MLPs and adds their outputs,
// weighted. The router turns each token's E logits into the choice (Switch, GShard,
// Mixtral; include/tinyllm/moe_gating.hpp, cpu::softmax_topk_gating):
//
//     p = softmax(logits_t)                         (E) probabilities
//     ids_t = the k experts with the largest p, best first
//     weights_t,j = p_ids(t,j) / sum_j' p_ids(t,j')   renormalized: they sum to 1
//
// Write ids(t, j) = ids[t * k + j] and weights(t, j) likewise, for every token t < T.
// The logits have no ties.
//
// Hint: the k largest probabilities are the k largest logits (softmax keeps the order);
// std::partial_sort over the indices 0..E-1 finds them. The renormalized weights are a
// softmax over the k chosen logits alone.
//
// Check: exercises_cpu moe/01_topk_routing (compared with tinyllm::cpu::softmax_topk_gating,
// renormalize = true).
#include "exercises.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace exercises::moe {

void topk_routing(std::span<int> ids /*(T, k)*/, std::span<float> weights /*(T, k)*/,
                  std::span<const float> logits /*(T, E)*/, int T, int E, int k) {
    std::vector<int> order(static_cast<std::size_t>(E));
    for (int t = 0; t < T; ++t) {
        const float* x = logits.data() + static_cast<std::size_t>(t) * E;
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return x[a] > x[b]; });
        // The renormalized weights: a softmax over the k chosen logits (order[0] is the largest).
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += std::exp(static_cast<double>(x[order[j]]) - x[order[0]]);
        for (int j = 0; j < k; ++j) {
            ids[static_cast<std::size_t>(t) * k + j] = order[j];
            weights[static_cast<std::size_t>(t) * k + j] =
                static_cast<float>(std::exp(static_cast<double>(x[order[j]]) - x[order[0]]) / sum);
        }
    }
}

}  // namespace exercises::moe
