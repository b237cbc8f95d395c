// exercises/checks/speculative.cpp — the check of the speculative decoding exercise,
// against tinyllm::accept_or_resample (include/tinyllm/speculative.hpp).
//
// p and q are random distributions, some with tokens filtered to 0 (as top-k leaves
// them). The uniforms are drawn away from every decision boundary: u_accept clearly
// below or above p(d) / q(d), u_resample in the middle of a token's interval of the
// residual's running sums. So the answer never depends on rounding, and normalizing the
// residual first (or not) gives the same token.
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/speculative.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace exercises::check::speculative_checks {

// A distribution over V tokens: softmax of random logits, some tokens (never all) set to 0.
std::vector<double> random_distribution(context& ctx, int V, double zero_fraction) {
    std::vector<double> d(static_cast<std::size_t>(V));
    const float spread = ctx.uniform(0.5f, 4.0f);
    for (double& x : d) x = ctx.uniform(0.0f, 1.0f) < zero_fraction ? 0.0 : std::exp(ctx.uniform(-spread, spread));
    d[static_cast<std::size_t>(ctx.integer(0, V - 1))] = std::exp(ctx.uniform(-spread, spread));
    double sum = 0;
    for (double x : d) sum += x;
    for (double& x : d) x /= sum;
    return d;
}

}  // namespace exercises::check::speculative_checks

using namespace exercises::check;
using namespace exercises::check::speculative_checks;

TINYLLM_EXERCISE_CHECK("speculative/01_acceptance_rule") {
    for (int c = 0; c < 16; ++c) {
        const int V = c < 4 ? ctx.integer(2, 4) : ctx.integer(2, 64);
        const std::vector<double> p = random_distribution(ctx, V, c % 2 ? 0.3 : 0.0);
        const std::vector<double> q = random_distribution(ctx, V, c % 3 ? 0.3 : 0.0);
        // The residual's weights and running sums, as the library draws from them.
        std::vector<double> w(p.size()), running(p.size());
        double total = 0;
        for (std::size_t i = 0; i < p.size(); ++i) running[i] = total += w[i] = std::max(0.0, p[i] - q[i]);
        std::vector<int> proposable, rejectable, drawable;  // q(d) > 0; and p(d) < q(d); residual tokens
        for (int i = 0; i < V; ++i) {
            const std::size_t at = static_cast<std::size_t>(i);
            if (q[at] > 0) proposable.push_back(i);
            if (q[at] > 0 && p[at] < q[at] * (1 - 1e-6)) rejectable.push_back(i);
            if (w[at] > 1e-6 * total) drawable.push_back(i);
        }
        for (int t = 0; t < 8; ++t) {
            // Most tries propose a token that can be rejected, and reject it half the time.
            const bool try_reject = !rejectable.empty() && t % 4 != 3;
            const std::vector<int>& pool = try_reject ? rejectable : proposable;
            const int d = pool[static_cast<std::size_t>(ctx.integer(0, static_cast<int>(pool.size()) - 1))];
            const double ratio = p[static_cast<std::size_t>(d)] / q[static_cast<std::size_t>(d)];
            double u_accept = ctx.uniform(0.0f, 1.0f);
            if (ratio < 1) {
                u_accept = t % 2 ? ratio * ctx.uniform(0.0f, 0.999f)                  // accept
                                 : ratio + (1 - ratio) * ctx.uniform(0.001f, 0.999f);  // reject
            }
            double u_resample = ctx.uniform(0.0f, 1.0f);
            if (!drawable.empty()) {
                const std::size_t y =
                    static_cast<std::size_t>(drawable[static_cast<std::size_t>(ctx.integer(0, static_cast<int>(drawable.size()) - 1))]);
                u_resample = (running[y] - 0.5 * w[y]) / total;
            }
            std::ostringstream label;
            label.precision(6);
            label << "case " << c << "." << t << ": V " << V << ", drafted token d = " << d << ", p(d) = "
                  << p[static_cast<std::size_t>(d)] << ", q(d) = " << q[static_cast<std::size_t>(d)]
                  << ", u_accept = " << u_accept << ", u_resample = " << u_resample;
            ctx.case_label = label.str();
            const tinyllm::speculative_step want = tinyllm::accept_or_resample(p, q, d, u_accept, u_resample);
            const exercises::speculative::step got = exercises::speculative::accept_or_resample(p, q, d, u_accept, u_resample);

            std::ostringstream m;
            m.precision(6);
            if (got.accepted != want.accepted) {
                m << "min(1, p(d) / q(d)) = " << std::min(1.0, ratio) << ", so d is "
                  << (want.accepted ? "accepted (u_accept < p(d) / q(d))" : "rejected (u_accept >= p(d) / q(d))")
                  << "; got " << (got.accepted ? "accepted" : "rejected");
                if (!got.accepted && got.token == -1) m << " with token -1 (is the function still a TODO?)";
                ctx.fail(m.str());
            }
            if (want.accepted && got.token != d) {
                m << "d is accepted, so the token is d = " << d << "; got " << got.token;
                ctx.fail(m.str());
            }
            if (!want.accepted && got.token != want.token) {
                const std::size_t y = static_cast<std::size_t>(want.token);
                m << "d is rejected; u_resample falls in token " << want.token << "'s interval ["
                  << (running[y] - w[y]) / total << ", " << running[y] / total
                  << ") of the residual's normalized running sums (its weight max(0, p - q) = " << w[y]
                  << ", total " << total << "), so the token is " << want.token << "; got " << got.token;
                if (got.token < 0 || got.token >= V) {
                    m << ", outside the vocabulary [0, " << V << ")";
                    if (got.token == -1) m << " (is the function still a TODO?)";
                } else {
                    const std::size_t g = static_cast<std::size_t>(got.token);
                    m << " (p = " << p[g] << ", q = " << q[g] << ", weight " << w[g] << ")";
                    if (w[g] == 0) m << ": a token with p <= q is never drawn from the residual";
                    else if (got.token == d) m << ": a rejected draft is not emitted";
                }
                ctx.fail(m.str());
            }
        }
    }
}
