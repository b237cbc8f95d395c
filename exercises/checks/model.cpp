// exercises/checks/model.cpp — the checks of the model exercises, against the tensors
// tinyllm::random_model_weights makes for a shape (include/tinyllm/model.hpp) and
// tinyllm::cpu::cross_entropy (include/tinyllm/loss.hpp).
#include "exercises.hpp"
#include "harness.hpp"
#include "shapes.hpp"

#include <tinyllm/loss.hpp>
#include <tinyllm/model.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace exercises::check;

TINYLLM_EXERCISE_CHECK("model/01_count_parameters") {
    for (int c = 0; c < 12; ++c) {
        const exercises::model_shape shape = random_model_shape(ctx, c % 3);
        ctx.case_label = "case " + std::to_string(c) + ": " + describe(shape);
        tinyllm::model_weights w = tinyllm::random_model_weights(to_config(shape), 1);
        std::int64_t want = 0;
        tinyllm::detail::for_each_weight(
            w, w, [&](const std::string&, const auto& t, const auto&) { want += static_cast<std::int64_t>(t.size()); });
        const std::int64_t got = exercises::model::count_parameters(shape);
        if (got != want)
            ctx.fail("got " + std::to_string(got) + " parameters, expected " + std::to_string(want) + " (off by " +
                     std::to_string(got - want) + ")");
    }
}

TINYLLM_EXERCISE_CHECK("model/02_cross_entropy") {
    for (int c = 0; c < 10; ++c) {
        const int rows = ctx.integer(1, 8), V = ctx.integer(2, 60);
        const float spread = c % 2 ? 1000.0f : 5.0f;  // exp(1000) overflows even a double: subtract the maximum
        ctx.case_label = "case " + std::to_string(c) + ": rows " + std::to_string(rows) + ", V " + std::to_string(V) +
                         ", logits in [-" + std::to_string(static_cast<int>(spread)) + ", " +
                         std::to_string(static_cast<int>(spread)) + "]";
        const std::vector<float> logits = ctx.floats(static_cast<std::size_t>(rows) * V, -spread, spread);
        std::vector<int> targets(static_cast<std::size_t>(rows));
        for (int& t : targets) t = ctx.integer(0, 3) == 0 ? -100 : ctx.integer(0, V - 1);     // some rows ignored
        targets[static_cast<std::size_t>(ctx.integer(0, rows - 1))] = ctx.integer(0, V - 1);  // at least one target
        const std::vector<tinyllm::token_id> ids(targets.begin(), targets.end());
        std::vector<float> want_d(logits.size());
        const double want =
            tinyllm::cpu::cross_entropy(tinyllm::tensor_view<float, 2>(want_d.data(), {rows, V}),
                                        tinyllm::tensor_view<const float, 2>(logits.data(), {rows, V}),
                                        tinyllm::tensor_view<const tinyllm::token_id, 1>(ids.data(), {rows}));
        std::vector<float> got_d(logits.size(), std::nanf(""));
        const double got = exercises::model::cross_entropy(got_d, logits, targets, rows, V);
        expect_scalar(ctx, "the loss", got, want, 1e-6, 1e-6);
        expect_close(ctx, "dlogits", got_d, want_d, {std::size_t(rows), std::size_t(V)}, 1e-6, 1e-5);
    }
}
