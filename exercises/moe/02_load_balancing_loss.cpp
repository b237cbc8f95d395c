// Exercise moe/02_load_balancing_loss — keeping the experts busy.
//
// Left alone, a router sends most tokens to a few experts. Training adds the Switch
// Transformer's auxiliary loss (Fedus et al. 2021, eq. 4; include/tinyllm/moe_balance.hpp):
// over T tokens routed to k experts each (ids, from the router),
//
//     f_i = (1 / (T k)) * #{(t, j) : ids(t, j) = i}    the fraction of routed slots expert i got
//     P_i = (1 / T) * sum_t softmax(logits_t)_i        expert i's mean router probability
//     loss = E * sum_i f_i P_i
//
// It is 1 when routing is perfectly even (f_i = P_i = 1/E) and grows to E when one
// expert takes everything. Return it for logits (T, E) and ids (T, k) (ids(t, j) =
// ids[t * k + j]).
//
// Hint: accumulate f and P in double, each row's softmax with its maximum subtracted.
//
// Check: exercises_cpu moe/02_load_balancing_loss (compared with
// tinyllm::cpu::load_balancing_loss).
#include "exercises.hpp"

namespace exercises::moe {

double load_balancing_loss(std::span<const float> logits /*(T, E)*/, std::span<const int> ids /*(T, k)*/, int T, int E,
                           int k) {
    // TODO: E * sum_i f_i * P_i.
    (void)logits, (void)ids, (void)T, (void)E, (void)k;
    return 0.0;
}

}  // namespace exercises::moe
