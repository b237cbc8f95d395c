// exercises/checks/moe.cpp — the checks of the mixture-of-experts exercises, against
// tinyllm::cpu::softmax_topk_gating (include/tinyllm/moe_gating.hpp) and
// tinyllm::cpu::load_balancing_loss (include/tinyllm/moe_balance.hpp).
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/moe_balance.hpp>
#include <tinyllm/moe_gating.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace exercises::check;

TINYLLM_EXERCISE_CHECK("moe/01_topk_routing") {
    for (int c = 0; c < 10; ++c) {
        const int T = ctx.integer(1, 12), E = ctx.integer(2, 16), k = ctx.integer(1, std::min(E, 4));
        ctx.case_label = "case " + std::to_string(c) + ": T " + std::to_string(T) + ", E " + std::to_string(E) +
                         ", k " + std::to_string(k);
        const std::vector<float> logits = ctx.floats(static_cast<std::size_t>(T) * E, -4, 4);
        std::vector<std::int32_t> want_ids(static_cast<std::size_t>(T) * k);
        std::vector<float> want_weights(want_ids.size());
        tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(want_ids.data(), {T, k}),
                                          tinyllm::tensor_view<float, 2>(want_weights.data(), {T, k}),
                                          tinyllm::tensor_view<const float, 2>(logits.data(), {T, E}), true);
        std::vector<int> got_ids(want_ids.size(), -1);
        std::vector<float> got_weights(want_ids.size(), std::nanf(""));
        exercises::moe::topk_routing(got_ids, got_weights, logits, T, E, k);
        for (int t = 0; t < T; ++t)
            for (int j = 0; j < k; ++j) {
                const std::size_t i = static_cast<std::size_t>(t) * k + j;
                if (got_ids[i] != want_ids[i])
                    ctx.fail("token " + std::to_string(t) + ": choice " + std::to_string(j) + " is expert " +
                             std::to_string(got_ids[i]) + ", expected " + std::to_string(want_ids[i]) +
                             " (the k largest logits, best first)");
            }
        for (int t = 0; t < T; ++t) {
            double sum = 0;
            for (int j = 0; j < k; ++j) sum += got_weights[static_cast<std::size_t>(t) * k + j];
            if (!(std::fabs(sum - 1.0) < 1e-5))
                ctx.fail("the weights of token " + std::to_string(t) + " sum to " + std::to_string(sum) +
                         ", not 1: renormalize over the k chosen experts");
        }
        expect_close(ctx, "weights", got_weights, want_weights, {std::size_t(T), std::size_t(k)}, 1e-6, 1e-5);
    }
}

TINYLLM_EXERCISE_CHECK("moe/02_load_balancing_loss") {
    for (int c = 0; c < 10; ++c) {
        const int T = ctx.integer(1, 20), E = ctx.integer(2, 8), k = ctx.integer(1, std::min(E, 3));
        ctx.case_label = "case " + std::to_string(c) + ": T " + std::to_string(T) + ", E " + std::to_string(E) +
                         ", k " + std::to_string(k);
        const std::vector<float> logits = ctx.floats(static_cast<std::size_t>(T) * E, -3, 3);
        std::vector<std::int32_t> ids(static_cast<std::size_t>(T) * k);
        std::vector<float> weights(ids.size());
        tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(ids.data(), {T, k}),
                                          tinyllm::tensor_view<float, 2>(weights.data(), {T, k}),
                                          tinyllm::tensor_view<const float, 2>(logits.data(), {T, E}), true);
        if (c % 2 == 1)  // also routings the router would not choose: f and P must be computed independently
            for (auto& id : ids) id = ctx.integer(0, E - 1);
        const double want =
            tinyllm::cpu::load_balancing_loss(tinyllm::tensor_view<const float, 2>(logits.data(), {T, E}),
                                              tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {T, k}));
        const std::vector<int> student_ids(ids.begin(), ids.end());
        const double got = exercises::moe::load_balancing_loss(logits, student_ids, T, E, k);
        expect_scalar(ctx, "the loss", got, want, 1e-9, 1e-6);
    }
}
