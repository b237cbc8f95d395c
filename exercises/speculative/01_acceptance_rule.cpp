// Exercise speculative/01_acceptance_rule — the acceptance rule of speculative sampling.
//
// A cheap draft model proposed token d, drawn from its distribution q; the target
// model's distribution at the same place is p (both over the same V tokens).
// Speculative sampling keeps d with probability min(1, p(d) / q(d)); on a rejection it
// draws a replacement from the residual
//
//     r(i) = max(0, p(i) - q(i)) / sum_j max(0, p(j) - q(j))     ("norm(max(0, p - q))"),
//
// and then the emitted token is distributed exactly as p, whatever q is:
// P(y) = min(p(y), q(y)) + P(reject) r(y) = p(y) (docs/speculative.md works it out).
//
// With two uniform numbers in [0, 1): accept iff u_accept < p(d) / q(d) (a ratio of 1
// or more always accepts), and return {d, true}. Otherwise return {y, false}, where y is
// drawn from the residual by its running sums c_y = w_0 + ... + w_y of the weights
// w_i = max(0, p(i) - q(i)): y is the first token with c_y > u_resample * c_{V-1}. A
// token with w_i = 0 is never drawn. q(d) > 0 always.
//
// Hint: the weights need not be normalized first; u_resample * (their sum) picks the
// same token. A rejection means p(d) < q(d), so some other token has p > q.
//
// Check: exercises_cpu speculative/01_acceptance_rule (compared with
// tinyllm::accept_or_resample).
#include "exercises.hpp"

namespace exercises::speculative {

step accept_or_resample(std::span<const double> p /*(V)*/, std::span<const double> q /*(V)*/, int d,
                        double u_accept, double u_resample) {
    // TODO: accept d if u_accept < p(d) / q(d); else draw from max(0, p - q) with u_resample.
    (void)p, (void)q, (void)d, (void)u_accept, (void)u_resample;
    return {};
}

}  // namespace exercises::speculative
