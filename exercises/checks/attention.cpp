// exercises/checks/attention.cpp — the checks of the attention exercises, against
// tinyllm::cpu::attention (include/tinyllm/attention.hpp) and the KV cache of a
// tinyllm::cpu::model session (include/tinyllm/model.hpp).
#include "exercises.hpp"
#include "harness.hpp"
#include "shapes.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/detail/mbarrier_ring.hpp>
#include <tinyllm/detail/wgmma_layout.hpp>
#include <tinyllm/model.hpp>

#include <cmath>
#include <limits>
#include <vector>

using namespace exercises::check;

TINYLLM_EXERCISE_CHECK("attention/01_online_softmax_merge") {
    using exercises::attention::partial_attention;
    for (int c = 0; c < 12; ++c) {
        const int D = ctx.integer(1, 16), Tk = ctx.integer(2, 24);
        // Where the keys are split; case 0 and 1 leave one part empty.
        const int split = c == 0 ? 0 : c == 1 ? Tk : ctx.integer(1, Tk - 1);
        const float spread = c % 3 == 0 ? 30.0f : 3.0f;  // large scores: exp without the max would overflow
        ctx.case_label = "case " + std::to_string(c) + ": D " + std::to_string(D) + ", " + std::to_string(Tk) +
                         " keys split after " + std::to_string(split);
        const std::vector<float> q = ctx.floats(static_cast<std::size_t>(D), -spread, spread);
        const std::vector<float> k = ctx.floats(static_cast<std::size_t>(Tk) * D, -spread, spread);
        const std::vector<float> v = ctx.floats(static_cast<std::size_t>(Tk) * D);
        // The library's output over all keys: one batch row, one query, one head.
        std::vector<float> want(static_cast<std::size_t>(D));
        tinyllm::cpu::attention(tinyllm::tensor_view<float, 4>(want.data(), {1, 1, 1, D}),
                                tinyllm::tensor_view<const float, 4>(q.data(), {1, 1, 1, D}),
                                tinyllm::tensor_view<const float, 4>(k.data(), {1, Tk, 1, D}),
                                tinyllm::tensor_view<const float, 4>(v.data(), {1, Tk, 1, D}));
        // The two partial results, over keys [0, split) and [split, Tk).
        const double scale = 1.0 / std::sqrt(static_cast<double>(D));
        const auto partial = [&](int begin, int end) {
            partial_attention p{-std::numeric_limits<double>::infinity(), 0.0, std::vector<double>(D, 0.0)};
            std::vector<double> s;
            for (int j = begin; j < end; ++j) {
                double dot = 0;
                for (int d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * k[static_cast<std::size_t>(j) * D + d];
                s.push_back(dot * scale);
                p.m = std::max(p.m, s.back());
            }
            for (int j = begin; j < end; ++j) {
                const double e = std::exp(s[static_cast<std::size_t>(j - begin)] - p.m);
                p.l += e;
                for (int d = 0; d < D; ++d) p.o[d] += e * v[static_cast<std::size_t>(j) * D + d];
            }
            return p;
        };
        const partial_attention a = partial(0, split), b = partial(split, Tk), all = partial(0, Tk);
        const partial_attention got = exercises::attention::merge_partials(a, b);
        expect_scalar(ctx, "m", got.m, all.m, 1e-9, 1e-9);
        expect_scalar(ctx, "l", got.l, all.l, 1e-9, 1e-7);
        expect_size(ctx, "o", got.o.size(), static_cast<std::size_t>(D));
        std::vector<double> normalized(got.o.size());
        for (std::size_t d = 0; d < got.o.size(); ++d) normalized[d] = got.o[d] / got.l;
        expect_close(ctx, "o / l (the attention output)", normalized, want, {std::size_t(D)}, 1e-5, 1e-5);
    }
}

TINYLLM_EXERCISE_CHECK("attention/02_causal_probs") {
    for (int c = 0; c < 10; ++c) {
        const int T = ctx.integer(1, 12), D = ctx.integer(1, 16);
        ctx.case_label = "case " + std::to_string(c) + ": T " + std::to_string(T) + ", D " + std::to_string(D);
        const std::vector<float> q = ctx.floats(static_cast<std::size_t>(T) * D, -3, 3);
        const std::vector<float> k = ctx.floats(static_cast<std::size_t>(T) * D, -3, 3);
        std::vector<float> out(static_cast<std::size_t>(T) * D), want(static_cast<std::size_t>(T) * T);
        tinyllm::attention_options options;
        options.causal = true;
        tinyllm::cpu::attention(tinyllm::tensor_view<float, 4>(out.data(), {1, T, 1, D}),
                                tinyllm::tensor_view<const float, 4>(q.data(), {1, T, 1, D}),
                                tinyllm::tensor_view<const float, 4>(k.data(), {1, T, 1, D}),
                                tinyllm::tensor_view<const float, 4>(k.data(), {1, T, 1, D}), options,
                                tinyllm::tensor_view<float, 4>(want.data(), {1, 1, T, T}));
        std::vector<float> got(want.size(), std::nanf(""));
        exercises::attention::causal_probs(got, q, k, T, D);
        for (std::size_t i = 0; i < got.size(); ++i)
            if (std::isnan(got[i]))
                ctx.fail("probs" + index_text(i, {std::size_t(T), std::size_t(T)}) +
                         " is NaN (NaN never passes; was this element written?)");
        for (int i = 0; i < T; ++i) {
            double sum = 0;
            for (int j = 0; j < T; ++j) {
                const float p = got[static_cast<std::size_t>(i) * T + j];
                if (j > i && p != 0.0f)
                    ctx.fail("probs(" + std::to_string(i) + ", " + std::to_string(j) + ") = " + std::to_string(p) +
                             " but key " + std::to_string(j) + " comes after query " + std::to_string(i) +
                             ": the causal mask makes it exactly 0");
                sum += p;
            }
            if (!(std::fabs(sum - 1.0) < 1e-4))
                ctx.fail("row " + std::to_string(i) + " sums to " + std::to_string(sum) + ", not 1");
        }
        expect_close(ctx, "probs", got, want, {std::size_t(T), std::size_t(T)}, 1e-6, 1e-5);
    }
}

TINYLLM_EXERCISE_CHECK("attention/03_kv_cache_bytes") {
    for (int c = 0; c < 9; ++c) {
        const exercises::model_shape shape = random_model_shape(ctx, c % 3);
        const std::int64_t context = ctx.integer(1, static_cast<int>(shape.max_positions));
        ctx.case_label = "case " + std::to_string(c) + ": " + describe(shape) + ", context " + std::to_string(context);
        const tinyllm::model_config config = to_config(shape);
        const tinyllm::cpu::model m(config, tinyllm::random_model_weights(config, 1));
        const std::int64_t want = m.new_session(context).cache_bytes();  // float32 keys and values
        expect_scalar(ctx, "kv_cache_bytes(shape, context, 4)",
                      static_cast<double>(exercises::attention::kv_cache_bytes(shape, context, 4)),
                      static_cast<double>(want), 0, 0);
        expect_scalar(ctx, "kv_cache_bytes(shape, context, 2) (bfloat16: half of float32's)",
                      static_cast<double>(exercises::attention::kv_cache_bytes(shape, context, 2)),
                      static_cast<double>(want / 2), 0, 0);
    }
}

TINYLLM_EXERCISE_CHECK("attention/04_swizzled_tile") {
    for (int c = 0; c < 6; ++c) {
        const int rows = 8 * ctx.integer(1, 32), D = 64 * ctx.integer(1, 4);
        ctx.case_label = "case " + std::to_string(c) + ": a [" + std::to_string(rows) + "][" + std::to_string(D) + "] tile";
        for (int r = 0; r < rows; ++r)
            for (int d = 0; d < D; ++d) {
                const double got = static_cast<double>(exercises::attention::swizzled_tile_offset(r, d, rows));
                const double want = static_cast<double>(tinyllm::detail::wgmma_tile_offset(r, d, rows));
                if (got != want) {
                    expect_scalar(ctx, "swizzled_tile_offset(" + std::to_string(r) + ", " + std::to_string(d) + ", rows)",
                                  got, want, 0, 0);
                    return;
                }
            }
    }
}

TINYLLM_EXERCISE_CHECK("attention/05_ring_parity") {
    for (int c = 0; c < 6; ++c) {
        const int stages = ctx.integer(1, 8);
        ctx.case_label = "case " + std::to_string(c) + ": a ring of " + std::to_string(stages) + " stages";
        for (int i = 0; i < 40 * stages; ++i) {
            const exercises::attention::ring_position got = exercises::attention::ring_parity(i, stages);
            const tinyllm::detail::ring_slot want = tinyllm::detail::mbarrier_ring_slot(i, stages);
            const std::string tile = "tile " + std::to_string(i);
            if (got.stage != want.stage) {
                expect_scalar(ctx, tile + ": its stage", got.stage, want.stage, 0, 0);
                return;
            }
            if (got.full_parity != want.full_parity) {
                expect_scalar(ctx, tile + ": the consumers' parity on full", got.full_parity, want.full_parity, 0, 0);
                return;
            }
            if (got.empty_parity != want.empty_parity) {
                expect_scalar(ctx, tile + ": the producer's parity on empty", got.empty_parity, want.empty_parity, 0, 0);
                return;
            }
        }
    }
}
