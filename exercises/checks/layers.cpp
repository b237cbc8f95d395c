// exercises/checks/layers.cpp — the checks of the layer exercises, against
// tinyllm::cpu::rms_norm and tinyllm::cpu::rms_norm_backward (include/tinyllm/norm.hpp).
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/norm.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace exercises::check;

TINYLLM_EXERCISE_CHECK("layers/01_rms_norm") {
    for (int c = 0; c < 10; ++c) {
        const int rows = ctx.integer(1, 8), D = ctx.integer(1, 64);
        const float eps = c % 2 ? 1e-5f : 1e-1f;  // a large eps shows whether it is inside the square root
        ctx.case_label = "case " + std::to_string(c) + ": rows " + std::to_string(rows) + ", D " + std::to_string(D) +
                         ", eps " + std::to_string(eps);
        const std::vector<float> x = ctx.floats(static_cast<std::size_t>(rows) * D, -2, 2);
        const std::vector<float> weight = ctx.floats(static_cast<std::size_t>(D), 0.5f, 1.5f);
        std::vector<float> want(x.size());
        tinyllm::cpu::rms_norm(tinyllm::tensor_view<float, 2>(want.data(), {rows, D}),
                               tinyllm::tensor_view<const float, 2>(x.data(), {rows, D}),
                               tinyllm::tensor_view<const float, 1>(weight.data(), {D}), eps);
        std::vector<float> got(x.size(), std::nanf(""));
        exercises::layers::rms_norm(got, x, weight, rows, D, eps);
        expect_close(ctx, "out", got, want, {std::size_t(rows), std::size_t(D)}, 1e-5, 1e-5);
    }
}

TINYLLM_EXERCISE_CHECK("layers/02_rms_norm_backward") {
    for (int c = 0; c < 10; ++c) {
        const int rows = ctx.integer(1, 8), D = ctx.integer(1, 64);
        const float eps = c % 2 ? 1e-5f : 1e-1f;
        ctx.case_label = "case " + std::to_string(c) + ": rows " + std::to_string(rows) + ", D " + std::to_string(D) +
                         ", eps " + std::to_string(eps);
        const std::vector<float> x = ctx.floats(static_cast<std::size_t>(rows) * D, -2, 2);
        const std::vector<float> weight = ctx.floats(static_cast<std::size_t>(D), 0.5f, 1.5f);
        const std::vector<float> dout = ctx.floats(x.size());
        std::vector<float> want_dx(x.size()), want_dw(weight.size());
        tinyllm::cpu::rms_norm_backward(tinyllm::tensor_view<float, 2>(want_dx.data(), {rows, D}),
                                        tinyllm::tensor_view<float, 1>(want_dw.data(), {D}),
                                        tinyllm::tensor_view<const float, 2>(dout.data(), {rows, D}),
                                        tinyllm::tensor_view<const float, 2>(x.data(), {rows, D}),
                                        tinyllm::tensor_view<const float, 1>(weight.data(), {D}), eps);
        std::vector<float> got_dx(x.size(), std::nanf("")), got_dw(weight.size(), std::nanf(""));
        exercises::layers::rms_norm_backward(got_dx, got_dw, dout, x, weight, rows, D, eps);
        expect_close(ctx, "dweight", got_dw, want_dw, {std::size_t(D)}, 1e-5, 1e-4);
        expect_close(ctx, "dx", got_dx, want_dx, {std::size_t(rows), std::size_t(D)}, 1e-5, 1e-4);
    }
}
