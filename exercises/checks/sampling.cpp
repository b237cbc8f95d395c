// exercises/checks/sampling.cpp — the checks of the sampling exercises, against
// tinyllm::cpu::min_p and tinyllm::cpu::top_p (include/tinyllm/sampling.hpp).
//
// The library decides on exactly rounded integer weights; a student's double
// arithmetic may differ in the last bits. So p is drawn from the middle of a gap
// between two candidate thresholds, never near one, and the answer is never a matter of
// rounding.
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace exercises::check::sampling_checks {

// Which tokens are kept (finite): "kept 12 of 50, expected 9; token 7 (logit 1.25, probability 0.031) ...".
void expect_same_filter(const exercises::check::context& ctx, const std::vector<float>& got,
                        const std::vector<float>& want, const std::vector<double>& probs) {
    exercises::check::expect_size(ctx, "logits", got.size(), want.size());
    std::size_t kept_got = 0, kept_want = 0;
    for (std::size_t i = 0; i < got.size(); ++i) kept_got += std::isfinite(got[i]), kept_want += std::isfinite(want[i]);
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(got[i])) ctx.fail("logits[" + std::to_string(i) + "] is NaN");
        const bool g = std::isfinite(got[i]), w = std::isfinite(want[i]);
        if (g != w)
            ctx.fail("kept " + std::to_string(kept_got) + " of " + std::to_string(got.size()) + " tokens, expected " +
                     std::to_string(kept_want) + "; token " + std::to_string(i) + " (probability " +
                     std::to_string(probs[i]) + ") should be " + (w ? "kept" : "set to -infinity"));
        if (g && got[i] != want[i])
            ctx.fail("logits[" + std::to_string(i) + "] changed from " + std::to_string(want[i]) + " to " +
                     std::to_string(got[i]) + ": kept logits stay as they were");
    }
}

}  // namespace exercises::check::sampling_checks

using namespace exercises::check;
using namespace exercises::check::sampling_checks;

TINYLLM_EXERCISE_CHECK("sampling/01_min_p") {
    for (int c = 0; c < 12; ++c) {
        const int V = ctx.integer(2, 200);
        const std::vector<float> logits = ctx.floats(static_cast<std::size_t>(V), -6, 6);
        const std::vector<double> probs = tinyllm::cpu::softmax_row(logits);
        // p between two neighbouring ratios exp(z_i - max), away from both.
        std::vector<double> ratios;
        const float max = *std::max_element(logits.begin(), logits.end());
        for (float z : logits) ratios.push_back(std::exp(static_cast<double>(z) - max));
        std::sort(ratios.begin(), ratios.end());
        const int at = ctx.integer(0, V - 2);
        const float p =
            static_cast<float>(0.5 * (ratios[static_cast<std::size_t>(at)] + ratios[static_cast<std::size_t>(at) + 1]));
        ctx.case_label = "case " + std::to_string(c) + ": V " + std::to_string(V) + ", p " + std::to_string(p);
        std::vector<float> want = logits;
        tinyllm::cpu::min_p(tinyllm::tensor_view<float, 2>(want.data(), {1, V}), p);
        std::vector<float> got = logits;
        exercises::sampling::min_p(got, p);
        expect_same_filter(ctx, got, want, probs);
    }
}

TINYLLM_EXERCISE_CHECK("sampling/02_top_p_bisection") {
    for (int c = 0; c < 12; ++c) {
        const int V = ctx.integer(2, 300);
        const std::vector<float> logits = ctx.floats(static_cast<std::size_t>(V), -5, 5);
        const std::vector<double> probs = tinyllm::cpu::softmax_row(logits);
        // p between two neighbouring prefix masses of the sorted probabilities, away from both.
        std::vector<double> sorted = probs;
        std::sort(sorted.begin(), sorted.end(), std::greater<>());
        std::vector<double> prefix(1, 0.0);
        for (double q : sorted) prefix.push_back(prefix.back() + q);
        const int at = ctx.integer(0, V - 2);  // keep at + 1 tokens
        const float p =
            static_cast<float>(0.5 * (prefix[static_cast<std::size_t>(at)] + prefix[static_cast<std::size_t>(at) + 1]));
        ctx.case_label = "case " + std::to_string(c) + ": V " + std::to_string(V) + ", p " + std::to_string(p);
        std::vector<float> want = logits;
        tinyllm::cpu::top_p(tinyllm::tensor_view<float, 2>(want.data(), {1, V}), p);
        std::vector<float> got = logits;
        exercises::sampling::top_p(got, p);
        expect_same_filter(ctx, got, want, probs);
    }
}
