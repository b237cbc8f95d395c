// Exercise moe/01_topk_routing — the router of a mixture of experts.
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

namespace exercises::moe {

void topk_routing(std::span<int> ids /*(T, k)*/, std::span<float> weights /*(T, k)*/,
                  std::span<const float> logits /*(T, E)*/, int T, int E, int k) {
    // TODO: per token, the k best experts (best first) and their renormalized probabilities.
    (void)ids, (void)weights, (void)logits, (void)T, (void)E, (void)k;
}

}  // namespace exercises::moe
