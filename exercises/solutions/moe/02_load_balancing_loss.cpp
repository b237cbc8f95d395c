// Reference answer to exercise moe/02_load_balancing_loss — keeping the experts busy.
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

#include <algorithm>
#include <cmath>
#include <vector>

namespace exercises::moe {

double load_balancing_loss(std::span<const float> logits /*(T, E)*/, std::span<const int> ids /*(T, k)*/, int T, int E,
                           int k) {
    std::vector<double> f(static_cast<std::size_t>(E), 0.0), P(static_cast<std::size_t>(E), 0.0),
        p(static_cast<std::size_t>(E));
    for (int t = 0; t < T; ++t) {
        const float* x = logits.data() + static_cast<std::size_t>(t) * E;
        const double max = *std::max_element(x, x + E);
        double sum = 0;
        for (int e = 0; e < E; ++e) sum += p[e] = std::exp(x[e] - max);
        for (int e = 0; e < E; ++e) P[e] += p[e] / sum / T;
        for (int j = 0; j < k; ++j) f[ids[static_cast<std::size_t>(t) * k + j]] += 1.0 / (static_cast<double>(T) * k);
    }
    double loss = 0;
    for (int e = 0; e < E; ++e) loss += f[e] * P[e];
    return E * loss;
}

}  // namespace exercises::moe
