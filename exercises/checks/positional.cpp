// exercises/checks/positional.cpp — the checks of the positional exercises, against
// tinyllm::cpu::alibi_bias_table and tinyllm::cpu::apply_rope (include/tinyllm/positional.hpp).
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/positional.hpp>

#include <cmath>
#include <numeric>
#include <vector>

namespace exercises::check::positional_checks {

// x rotated by the library's RoPE (rotate-half pairing, whole head) at `position`.
std::vector<float> library_rope(std::vector<float> x, std::int64_t position, double theta) {
    const tinyllm::index_t D = static_cast<tinyllm::index_t>(x.size());
    const tinyllm::rope_config cfg{.rotary_dim = D, .theta = theta, .pairing = tinyllm::rope_pairing::rotate_half};
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(x.data(), {1, 1, 1, D}),
                             tinyllm::tensor_view<const std::int64_t, 2>(&position, {1, 1}), cfg);
    return x;
}

}  // namespace exercises::check::positional_checks

using namespace exercises::check;
using namespace exercises::check::positional_checks;

TINYLLM_EXERCISE_CHECK("positional/01_alibi_bias") {
    for (int heads : {1, 2, 4, 8, 3, 5, 6, 12, ctx.integer(1, 16)}) {
        const int T = ctx.integer(1, 9);
        ctx.case_label = "heads " + std::to_string(heads) + ", T " + std::to_string(T);
        std::vector<float> want(static_cast<std::size_t>(heads) * T * T);
        std::vector<std::int32_t> positions(static_cast<std::size_t>(T));
        std::iota(positions.begin(), positions.end(), 0);
        const tinyllm::tensor_view<const std::int32_t, 1> pos(positions.data(), {T});
        tinyllm::cpu::alibi_bias_table(tinyllm::tensor_view<float, 3>(want.data(), {heads, T, T}), pos, pos);
        std::vector<float> got(want.size(), std::nanf(""));
        exercises::positional::alibi_bias(got, heads, T);
        expect_close(ctx, "out", got, want, {std::size_t(heads), std::size_t(T), std::size_t(T)}, 1e-6, 1e-5);
    }
}

TINYLLM_EXERCISE_CHECK("positional/02_rope_rotate") {
    for (int c = 0; c < 10; ++c) {
        const int D = 2 * ctx.integer(1, 32);
        const std::int64_t position = c == 0 ? 0 : ctx.integer(0, 300);
        const double theta = c % 2 ? 10000.0 : 500000.0;
        ctx.case_label = "D " + std::to_string(D) + ", position " + std::to_string(position) + ", theta " +
                         std::to_string(static_cast<long long>(theta));
        const std::vector<float> x = ctx.floats(static_cast<std::size_t>(D));
        const std::vector<float> want = library_rope(x, position, theta);
        std::vector<float> got = x;
        exercises::positional::rope_rotate(got, position, theta);
        if (position > 0 && got == x) ctx.fail("x was not changed: the rotation by a nonzero angle must change it");
        expect_close(ctx, "x", got, want, {std::size_t(D)}, 2e-5, 1e-4);
    }
}

TINYLLM_EXERCISE_CHECK("positional/03_rope_relative_score") {
    for (int c = 0; c < 10; ++c) {
        const int D = 2 * ctx.integer(1, 32);
        const std::int64_t m = ctx.integer(0, 300), n = ctx.integer(0, 300);
        const double theta = c % 2 ? 10000.0 : 500000.0;
        ctx.case_label = "D " + std::to_string(D) + ", m " + std::to_string(m) + ", n " + std::to_string(n);
        const std::vector<float> q = ctx.floats(static_cast<std::size_t>(D)),
                                 k = ctx.floats(static_cast<std::size_t>(D));
        const std::vector<float> qm = library_rope(q, m, theta), kn = library_rope(k, n, theta);
        double want = 0, norm = 0;
        for (int d = 0; d < D; ++d) want += static_cast<double>(qm[d]) * kn[d], norm += std::fabs(q[d] * k[d]);
        const double got = exercises::positional::rope_relative_score(q, k, m - n, theta);
        expect_scalar(ctx, "the score for offset m - n = " + std::to_string(m - n), got, want, 1e-4 * (1 + norm), 0);
    }
}
