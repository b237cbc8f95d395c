// Tests for tinyllm/attention_tiled.hpp: cpu::attention_tiled (key blocks,
// online softmax, float, threads), its kv_cache decode path, and
// cpu::attention_backward_tiled, each against the double reference of
// tinyllm/attention.hpp.
//
// Fresh random inputs every run, outputs poisoned with NaN first (an element
// never written cannot pass), every option and edge: causal or not, sliding
// windows (short, and longer than a key block so whole blocks are skipped),
// ALiBi, soft-capping, an explicit scale, padding with a row of length 0, Tq <
// Tk and Tq > Tk (rows with no visible key), GQA groups 1, 2, 4 and MQA, T not a
// multiple of the blocks, T = 1, head dims 32, 64, 80 and 128, and the split of
// the keys that calls with few query rows make (Tk > 512).
//
// Tolerances. The tiled versions compute in float: each dot product sums D
// float products, each softmax Tk terms. Observed against the double reference
// (q, k in [-2, 2]; worst of several runs): O max-abs 3e-6, relative L2 1.6e-6;
// lse max-abs 8e-6; gradients max-abs 1.6e-5, relative L2 2.5e-6. The
// tolerances below are 6-10x that; a wrong mask, a missing rescale or a lost
// GQA head is off by 1e-2 .. 1.
#include "support/catch.hpp"
#include "support/attention_cases.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/attention_tiled.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/threads.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

using tinyllm::attention_options;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::contains;
using tinyllm_test::tolerance;

namespace cpu = tinyllm::cpu;

namespace {

using shape = tinyllm_test::attention_shape;
using variant = tinyllm_test::attention_variant;
using tinyllm_test::describe;
using tinyllm_test::random_tensor;

template <class T, std::size_t R>
tensor<double, R> widen(const tensor<T, R>& x) {
    tensor<double, R> y(x.shape());
    for (std::size_t i = 0; i < x.values().size(); ++i) y.values()[i] = tinyllm::to_float(x.values()[i]);
    return y;
}

const variant variants[] = {
    {"plain"},
    {"causal", true},
    {"causal + window 3", true, 3},
    {"causal + window 70 (whole key blocks before it)", true, 70},
    {"ALiBi + causal", true, 0, true},
    {"ALiBi, not causal", false, 0, true},
    {"softcap 0.75", false, 0, false, 0.75f},
    {"scale 0.37", false, 0, false, 0.0f, 0.37f},
    {"padding (a row of length 0)", false, 0, false, 0.0f, 0.0f, true},
    {"padding + causal", true, 0, false, 0.0f, 0.0f, true},
    {"everything: causal, window 40, ALiBi, softcap 1.5, scale 0.2, padding", true, 40, true, 1.5f, 0.2f, true},
};

// ALiBi slopes 0.5 / (h + 1); padding: batch row 0 sees no key (when there are
// other rows), row b loses 3b + 1 keys at the end.
struct options_holder : tinyllm_test::attention_case {
    options_holder(const variant& var, const shape& s)
        : attention_case(var, s, 0.5f, [&s](index_t b, index_t Tk) {
              return b == 0 && s.B > 1 ? index_t{0} : std::max<index_t>(1, Tk - 3 * b - 1);
          }) {}
};

// Every shape edge: T not a multiple of the 32-row / 64-key blocks, several blocks
// each way, Tq < Tk, Tq > Tk, T = 1, the head dims, GQA/MQA, the split (Tq <= 32, Tk > 512).
const shape shapes[] = {
    {2, 70, 70, 4, 4, 32},     // MHA, partial last blocks
    {1, 130, 130, 4, 2, 64},   // GQA group 2, 5 query blocks x 3 key blocks
    {2, 33, 97, 8, 2, 80},     // GQA group 4, Tq < Tk, D = 80
    {1, 40, 25, 4, 1, 128},    // MQA, Tq > Tk: under causal the first rows see nothing
    {2, 1, 1, 2, 1, 64},       // T = 1
    {1, 1, 1200, 4, 2, 64},    // one query, 3 key chunks (the decode split)
    {2, 20, 1100, 2, 1, 32},   // 20 queries, 3 chunks, MQA
};

const tolerance out_tol{2e-5, 1e-4, 1e-5};
const tolerance lse_tol{2e-5, 1e-5, 1e-5};
const tolerance grad_tol{1e-4, 1e-3, 2e-5};

// lse of the rows that see a key; for the others require -inf in both.
void compare_lse(const tensor<float, 3>& got, const tensor<float, 3>& want, const char* what) {
    std::vector<double> g, w;
    for (std::size_t i = 0; i < got.values().size(); ++i) {
        const float x = got.values()[i], y = want.values()[i];
        if (std::isinf(y) && y < 0) {
            REQUIRE((std::isinf(x) && x < 0));
            continue;
        }
        g.push_back(x);
        w.push_back(y);
    }
    TINYLLM_REQUIRE_CLOSE(g, w, lse_tol, what);
}

}  // namespace

TEST_CASE("attention_tiled matches the double reference for every option and shape", "[attention][tiled]") {
    std::uint64_t which = 0;
    for (const auto& s : shapes)
        for (const auto& var : variants) {
            if (var.window > 0 && !var.causal) continue;
            INFO(describe(s) << ", " << var.name);
            std::printf("%s, %s\n", describe(s).c_str(), var.name.c_str());
            const options_holder o(var, s);
            const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, which++, -2, 2);
            const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, which++, -2, 2);
            const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, which++);
            const float nan = std::numeric_limits<float>::quiet_NaN();

            tensor<double, 4> want(q.shape());
            tensor<float, 3> want_lse({s.B, s.Hq, s.Tq});
            cpu::attention<double>(want.view(), widen(q).view(), widen(k).view(), widen(v).view(), o.opts, {},
                                   want_lse.view());

            tensor<float, 4> out(q.shape(), nan);
            tensor<float, 3> lse({s.B, s.Hq, s.Tq}, nan);
            cpu::attention_tiled<float>(out.view(), q.view(), k.view(), v.view(), o.opts, lse.view());
            TINYLLM_REQUIRE_CLOSE(out.values(), want.values(), out_tol, "tiled O vs double reference");
            compare_lse(lse, want_lse, "tiled lse vs reference lse");

            // Without lse: the same output.
            tensor<float, 4> out2(q.shape(), nan);
            cpu::attention_tiled<float>(out2.view(), q.view(), k.view(), v.view(), o.opts);
            REQUIRE(out2.values() == out.values());
        }
}

TEST_CASE("attention_tiled: rows with no visible key give zeros and lse -inf, never NaN", "[attention][tiled]") {
    const index_t B = 2, Tq = 37, Tk = 5, H = 2, D = 8;
    const auto q = random_tensor<float>({B, Tq, H, D}, 1000), k = random_tensor<float>({B, Tk, H, D}, 1001),
               v = random_tensor<float>({B, Tk, H, D}, 1002);
    std::vector<std::int32_t> lengths = {5, 0};
    attention_options opts;
    opts.causal = true;  // Tq > Tk: the first 32 rows sit before key 0
    opts.key_lengths = {lengths.data(), {B}};
    const float nan = std::numeric_limits<float>::quiet_NaN();
    tensor<float, 4> o({B, Tq, H, D}, nan);
    tensor<float, 3> lse({B, H, Tq}, nan);
    cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), opts, lse.view());
    for (index_t b = 0; b < B; ++b)
        for (index_t i = 0; i < Tq; ++i)
            for (index_t h = 0; h < H; ++h) {
                const bool empty = b == 1 || i < Tq - Tk;
                if (empty) REQUIRE(lse(b, h, i) == -std::numeric_limits<float>::infinity());
                else REQUIRE(std::isfinite(lse(b, h, i)));
                for (index_t d = 0; d < D; ++d) {
                    REQUIRE(std::isfinite(o(b, i, h, d)));
                    if (empty) REQUIRE(o(b, i, h, d) == 0.0f);
                }
            }
    // Tk = 0: every row is empty.
    tensor<float, 4> k0({B, 0, H, D}), v0({B, 0, H, D}), o0({B, Tq, H, D}, nan);
    cpu::attention_tiled<float>(o0.view(), q.view(), k0.view(), v0.view());
    for (float x : o0.values()) REQUIRE(x == 0.0f);
    // Padding keys are never read: NaN there changes nothing.
    std::vector<std::int32_t> short_lengths = {3, 3};
    attention_options pad;
    pad.key_lengths = {short_lengths.data(), {B}};
    auto k_nan = k, v_nan = v;
    for (index_t b = 0; b < B; ++b)
        for (index_t j = 3; j < Tk; ++j)
            for (index_t h = 0; h < H; ++h)
                for (index_t d = 0; d < D; ++d) k_nan(b, j, h, d) = v_nan(b, j, h, d) = nan;
    tensor<float, 4> o_clean({B, Tq, H, D}, nan), o_dirty({B, Tq, H, D}, nan);
    cpu::attention_tiled<float>(o_clean.view(), q.view(), k.view(), v.view(), pad);
    cpu::attention_tiled<float>(o_dirty.view(), q.view(), k_nan.view(), v_nan.view(), pad);
    REQUIRE(o_clean.values() == o_dirty.values());
}

TEST_CASE("attention_tiled: strided views and 16-bit types", "[attention][tiled]") {
    const shape s{2, 45, 77, 4, 2, 64};
    const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 1100, -2, 2);
    const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 1101, -2, 2);
    const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 1102);
    attention_options opts;
    opts.causal = true;
    tensor<float, 4> want(q.shape());
    cpu::attention<float>(want.view(), q.view(), k.view(), v.view(), opts);

    // out written into the odd heads of a buffer twice as wide.
    tensor<float, 4> wide({s.B, s.Tq, 2 * s.Hq, s.D}, 7.0f);
    tensor_view<float, 4> odd(wide.data() + s.D, {s.B, s.Tq, s.Hq, s.D},
                              {s.Tq * 2 * s.Hq * s.D, 2 * s.Hq * s.D, 2 * s.D, 1});
    cpu::attention_tiled<float>(odd, q.view(), k.view(), v.view(), opts);
    std::vector<float> got;
    for (index_t b = 0; b < s.B; ++b)
        for (index_t i = 0; i < s.Tq; ++i)
            for (index_t h = 0; h < s.Hq; ++h)
                for (index_t d = 0; d < s.D; ++d) {
                    got.push_back(wide(b, i, 2 * h + 1, d));
                    REQUIRE(wide(b, i, 2 * h, d) == 7.0f);
                }
    TINYLLM_REQUIRE_CLOSE(got, want.values(), out_tol, "tiled O into a strided view");

    // bfloat16 and float16 in and out: float math inside, one rounding at the end,
    // so within about one unit of the last place of the reference's (also once-rounded) output.
    auto run16 = [&](auto tag, double ulp, const char* what) {
        using T = decltype(tag);
        tensor<T, 4> q16(q.shape()), k16(k.shape()), v16(v.shape()), o16(q.shape()), ref16(q.shape());
        for (std::size_t i = 0; i < q.values().size(); ++i) q16.values()[i] = tinyllm::from_float<T>(q.values()[i]);
        for (std::size_t i = 0; i < k.values().size(); ++i) k16.values()[i] = tinyllm::from_float<T>(k.values()[i]);
        for (std::size_t i = 0; i < v.values().size(); ++i) v16.values()[i] = tinyllm::from_float<T>(v.values()[i]);
        cpu::attention<T>(ref16.view(), q16.view(), k16.view(), v16.view(), opts);
        cpu::attention_tiled<T>(o16.view(), q16.view(), k16.view(), v16.view(), opts);
        TINYLLM_REQUIRE_CLOSE(o16.values(), widen(ref16).values(), (tolerance{1e-3, 2 * ulp, ulp}), what);
    };
    run16(tinyllm::bfloat16{}, 1.0 / 128, "bfloat16 tiled O vs bfloat16 reference");
    run16(tinyllm::float16{}, 1.0 / 1024, "float16 tiled O vs float16 reference");
}

TEST_CASE("attention_tiled over a kv_cache equals the reference's cache overload, step by step", "[attention][tiled]") {
    // A prefill chunk of 600 positions, single tokens across the 512-key chunk
    // boundary of the split, a chunk of 3, and single tokens again.
    const index_t B = 1, T = 1040, Hq = 4, Hkv = 2, D = 32;  // one batch, small heads: the reference is the cost
    const auto q = random_tensor<float>({B, T, Hq, D}, 1200, -2, 2), k = random_tensor<float>({B, T, Hkv, D}, 1201, -2, 2),
               v = random_tensor<float>({B, T, Hkv, D}, 1202);
    const std::vector<index_t> steps = {600, 1, 1, 3, 1, 1, 433};
    for (int variant = 0; variant < 3; ++variant) {
        attention_options opts;
        opts.causal = true;
        if (variant == 1) opts.window = 300;
        if (variant == 2) opts.softcap = 2.0f;
        INFO("variant " << variant);
        tinyllm::kv_cache<float> cache(B, T, Hkv, D);
        index_t t = 0;
        double worst = 0;
        for (index_t n : steps) {
            cache.append(k.view().narrow(1, t, n), v.view().narrow(1, t, n));
            const auto qn = q.view().narrow(1, t, n);
            tensor<float, 4> want({B, n, Hq, D}), got({B, n, Hq, D}, std::numeric_limits<float>::quiet_NaN());
            tensor<float, 3> want_lse({B, Hq, n}), got_lse({B, Hq, n});
            cpu::attention<float>(want.view(), qn, k.view().narrow(1, 0, t + n), v.view().narrow(1, 0, t + n), opts, {},
                                  want_lse.view());
            tensor<float, 4> want_cache({B, n, Hq, D});
            cpu::attention<float>(want_cache.view(), qn, cache, opts);
            REQUIRE(want_cache.values() == want.values());
            cpu::attention_tiled<float>(got.view(), qn, cache, opts, got_lse.view());
            INFO("step of " << n << " after " << t);
            const auto c = tinyllm_test::compare(got.values(), want.values(), out_tol, "decode O");
            INFO(c.report);
            REQUIRE(c.passed);
            worst = std::max(worst, c.max_abs_error);
            compare_lse(got_lse, want_lse, "decode lse");
            t += n;
        }
        std::printf("kv_cache decode, variant %d: max-abs error over %zu steps %g\n", variant, steps.size(), worst);
    }
    tinyllm::kv_cache<float> empty(B, 4, Hkv, D);
    tensor<float, 4> o({B, 1, Hq, D});
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view().narrow(1, 0, 1), empty),
                      contains("attention_tiled over a kv_cache: 1 queries but the cache holds only 0"));
}

TEST_CASE("attention_backward_tiled matches cpu::attention_backward for every option and shape", "[attention][tiled][backward]") {
    const shape backward_shapes[] = {
        {2, 70, 70, 4, 4, 32},    // MHA, partial blocks
        {1, 130, 100, 4, 2, 64},  // GQA group 2, Tq > Tk
        {2, 33, 97, 8, 2, 80},    // GQA group 4, Tq < Tk
        {1, 40, 40, 4, 1, 128},   // MQA
        {2, 1, 1, 2, 1, 64},      // T = 1
    };
    std::uint64_t which = 2000;
    for (const auto& s : backward_shapes)
        for (const auto& var : variants) {
            INFO(describe(s) << ", " << var.name);
            std::printf("backward %s, %s\n", describe(s).c_str(), var.name.c_str());
            const options_holder o(var, s);
            const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, which++, -2, 2);
            const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, which++, -2, 2);
            const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, which++);
            const auto dout = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, which++);
            const float nan = std::numeric_limits<float>::quiet_NaN();

            tensor<double, 4> dq64(q.shape()), dk64(k.shape()), dv64(v.shape());
            cpu::attention_backward<double>(dq64.view(), dk64.view(), dv64.view(), widen(dout).view(), widen(q).view(),
                                            widen(k).view(), widen(v).view(), o.opts);

            // The forward's output and lse from the tiled forward ...
            tensor<float, 4> out(q.shape());
            tensor<float, 3> lse({s.B, s.Hq, s.Tq});
            cpu::attention_tiled<float>(out.view(), q.view(), k.view(), v.view(), o.opts, lse.view());
            tensor<float, 4> dq(q.shape(), nan), dk(k.shape(), nan), dv(v.shape(), nan);
            cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(), k.view(),
                                                 v.view(), out.view(), lse.view(), o.opts);
            TINYLLM_REQUIRE_CLOSE(dq.values(), dq64.values(), grad_tol, "tiled dq vs double reference");
            TINYLLM_REQUIRE_CLOSE(dk.values(), dk64.values(), grad_tol, "tiled dk vs double reference");
            TINYLLM_REQUIRE_CLOSE(dv.values(), dv64.values(), grad_tol, "tiled dv vs double reference");

            // ... or from the reference forward: the same within float rounding.
            tensor<float, 4> out_ref(q.shape());
            tensor<float, 3> lse_ref({s.B, s.Hq, s.Tq});
            cpu::attention<float>(out_ref.view(), q.view(), k.view(), v.view(), o.opts, {}, lse_ref.view());
            tensor<float, 4> dq2(q.shape(), nan), dk2(k.shape(), nan), dv2(v.shape(), nan);
            cpu::attention_backward_tiled<float>(dq2.view(), dk2.view(), dv2.view(), dout.view(), q.view(), k.view(),
                                                 v.view(), out_ref.view(), lse_ref.view(), o.opts);
            TINYLLM_REQUIRE_CLOSE(dq2.values(), dq64.values(), grad_tol, "tiled dq (reference lse) vs double reference");
            TINYLLM_REQUIRE_CLOSE(dk2.values(), dk64.values(), grad_tol, "tiled dk (reference lse) vs double reference");
            TINYLLM_REQUIRE_CLOSE(dv2.values(), dv64.values(), grad_tol, "tiled dv (reference lse) vs double reference");

            // No gradient where nothing is visible: exactly 0.
            if (var.padding && s.B > 1) {
                for (index_t i = 0; i < s.Tq; ++i)
                    for (index_t h = 0; h < s.Hq; ++h)
                        for (index_t d = 0; d < s.D; ++d) REQUIRE(dq(0, i, h, d) == 0.0f);
                for (index_t b = 0; b < s.B; ++b)
                    for (index_t j = o.lengths[static_cast<std::size_t>(b)]; j < s.Tk; ++j)
                        for (index_t h = 0; h < s.Hkv; ++h)
                            for (index_t d = 0; d < s.D; ++d) REQUIRE((dk(b, j, h, d) == 0.0f && dv(b, j, h, d) == 0.0f));
            }
        }
}

TEST_CASE("attention_backward_tiled: empty gradients skipped, in place, strided", "[attention][tiled][backward]") {
    const shape s{1, 50, 70, 4, 2, 32};
    attention_options opts;
    opts.causal = true;
    const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 2500);
    const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 2501);
    const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 2502);
    const auto dout = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 2503);
    tensor<float, 4> out(q.shape());
    tensor<float, 3> lse({s.B, s.Hq, s.Tq});
    cpu::attention_tiled<float>(out.view(), q.view(), k.view(), v.view(), opts, lse.view());
    tensor<float, 4> dq(q.shape()), dk(k.shape()), dv(v.shape());
    cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(), k.view(), v.view(),
                                         out.view(), lse.view(), opts);

    tensor<float, 4> dq2(q.shape()), dk2(k.shape()), dv2(v.shape());
    cpu::attention_backward_tiled<float>(dq2.view(), {}, {}, dout.view(), q.view(), k.view(), v.view(), out.view(),
                                         lse.view(), opts);
    cpu::attention_backward_tiled<float>({}, dk2.view(), {}, dout.view(), q.view(), k.view(), v.view(), out.view(),
                                         lse.view(), opts);
    cpu::attention_backward_tiled<float>({}, {}, dv2.view(), dout.view(), q.view(), k.view(), v.view(), out.view(),
                                         lse.view(), opts);
    CHECK(dq2.values() == dq.values());
    CHECK(dk2.values() == dk.values());
    CHECK(dv2.values() == dv.values());

    // Everything is read before anything is written: dk may be k's memory.
    auto k_in_place = k;
    cpu::attention_backward_tiled<float>({}, k_in_place.view(), {}, dout.view(), q.view(), k_in_place.view(), v.view(),
                                         out.view(), lse.view(), opts);
    CHECK(k_in_place.values() == dk.values());

    // dv into the even heads of a wider buffer.
    tensor<float, 4> wide({s.B, s.Tk, 2 * s.Hkv, s.D}, 7.0f);
    tensor_view<float, 4> even(wide.data(), {s.B, s.Tk, s.Hkv, s.D}, {s.Tk * 2 * s.Hkv * s.D, 2 * s.Hkv * s.D, 2 * s.D, 1});
    cpu::attention_backward_tiled<float>({}, {}, even, dout.view(), q.view(), k.view(), v.view(), out.view(), lse.view(),
                                         opts);
    for (index_t j = 0; j < s.Tk; ++j)
        for (index_t h = 0; h < s.Hkv; ++h)
            for (index_t d = 0; d < s.D; ++d) {
                REQUIRE(wide(0, j, 2 * h, d) == dv(0, j, h, d));
                REQUIRE(wide(0, j, 2 * h + 1, d) == 7.0f);
            }
}

TEST_CASE("attention_tiled and attention_backward_tiled are deterministic, for any thread count", "[attention][tiled]") {
    const shape s{2, 150, 150, 4, 2, 64};
    const variant var{"causal, ALiBi, padding", true, 0, true, 0.0f, 0.0f, true};
    const options_holder o(var, s);
    const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 3000, -2, 2);
    const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 3001, -2, 2);
    const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 3002);
    const auto dout = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 3003);
    // One query of 12 heads against 1200 keys: the split path, with enough work to use the threads.
    const auto q1 = random_tensor<float>({1, 1, 12, 64}, 3004), k1 = random_tensor<float>({1, 1200, 4, 64}, 3005),
               v1 = random_tensor<float>({1, 1200, 4, 64}, 3006);

    struct results {
        std::vector<float> out, lse, dq, dk, dv, decode;
    };
    const auto run = [&] {
        tensor<float, 4> out(q.shape()), dq(q.shape()), dk(k.shape()), dv(v.shape()), o1({1, 1, 12, 64});
        tensor<float, 3> lse({s.B, s.Hq, s.Tq});
        cpu::attention_tiled<float>(out.view(), q.view(), k.view(), v.view(), o.opts, lse.view());
        cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(), k.view(), v.view(),
                                             out.view(), lse.view(), o.opts);
        cpu::attention_tiled<float>(o1.view(), q1.view(), k1.view(), v1.view());
        return results{out.values(), lse.values(), dq.values(), dk.values(), dv.values(), o1.values()};
    };
    const auto same = [](const results& a, const results& b) {
        // Bit for bit (NaN-free, so == on the floats is a bitwise comparison here).
        REQUIRE(a.out == b.out);
        REQUIRE(a.dq == b.dq);
        REQUIRE(a.dk == b.dk);
        REQUIRE(a.dv == b.dv);
        REQUIRE(a.decode == b.decode);
        for (std::size_t i = 0; i < a.lse.size(); ++i)
            REQUIRE((a.lse[i] == b.lse[i] || (std::isinf(a.lse[i]) && a.lse[i] == b.lse[i])));
    };
#if defined(_OPENMP)
    const int saved = omp_get_max_threads();
    std::printf("determinism: OpenMP, %d threads available\n", saved);
    omp_set_num_threads(1);
    const results one_a = run(), one_b = run();
    omp_set_num_threads(2);
    const results two_a = run(), two_b = run();
    omp_set_num_threads(saved);
    same(one_a, one_b);
    same(two_a, two_b);
    same(one_a, two_a);  // the thread count does not change a bit
#else
    std::printf("determinism: built without OpenMP (one thread)\n");
    same(run(), run());
#endif
}

TEST_CASE("the tiled attention runs on cpu::set_num_threads' count of threads", "[attention][tiled]") {
#if defined(_OPENMP)
    // The most threads seen inside the items of one call with work enough to share out.
    const auto team = [] {
        std::atomic<int> most{0};
        tinyllm::detail::attention_tiled_for(
            64, 1e9, [] { return 0; },
            [&](index_t, int&) {
                const int n = omp_get_num_threads();
                int seen = most.load();
                while (n > seen && !most.compare_exchange_weak(seen, n)) {
                }
            });
        return most.load();
    };
    cpu::set_num_threads(1);
    const int one = team();
    cpu::set_num_threads(2);
    const int two = team();
    cpu::set_num_threads(0);
    CHECK(one == 1);
    CHECK(two == 2);
#else
    SUCCEED("built without OpenMP: the items run on the calling thread");
#endif
}

TEST_CASE("attention_tiled and attention_backward_tiled reject bad arguments with clear errors", "[attention][tiled][error]") {
    tensor<float, 4> q({1, 3, 4, 8}), k({1, 5, 2, 8}), v({1, 5, 2, 8}), o({1, 3, 4, 8});
    CHECK_NOTHROW(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view()));
    tensor<float, 4> k3({1, 5, 3, 8}), v4({1, 4, 2, 8}), k7({1, 5, 2, 7}), bad_out({1, 3, 4, 9});
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k3.view(), k3.view()),
                      contains("attention_tiled: the query heads (Hq = 4) must be a multiple of the key/value heads (Hkv = 3)"));
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v4.view()),
                      contains("attention_tiled: k has shape (1, 5, 2, 8) but v has shape (1, 4, 2, 8)"));
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k7.view(), k7.view()),
                      contains("attention_tiled: q has head dim 8 but k has head dim 7"));
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(bad_out.view(), q.view(), k.view(), v.view()),
                      contains("attention_tiled: out has shape (1, 3, 4, 9) but must have the shape of q (1, 3, 4, 8)"));
    tensor<float, 3> bad_lse({1, 3, 4});
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), {}, bad_lse.view()),
                      contains("attention_tiled: lse has shape (1, 3, 4) but (1, 4, 3) is required"));
    attention_options w;
    w.window = 2;
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), w),
                      contains("attention_tiled: a sliding window (window = 2) looks back from the query and needs causal = true"));
    std::vector<std::int32_t> lengths = {6};
    attention_options l;
    l.key_lengths = {lengths.data(), {1}};
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), l),
                      contains("attention_tiled: key_lengths[0] = 6 must be in [0, Tk = 5]"));
    std::vector<float> slopes(3, 0.5f);
    attention_options a;
    a.alibi_slopes = {slopes.data(), {3}};
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), a),
                      contains("attention_tiled: alibi_slopes has 3 slopes but there are Hq = 4 query heads"));
    std::vector<float> inf_slopes(4, 0.5f);
    inf_slopes[0] = -std::numeric_limits<float>::infinity();
    a.alibi_slopes = {inf_slopes.data(), {4}};
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), a),
                      contains("attention_tiled: alibi_slopes[0] = -inf must be finite"));
    // Finite, but its bias over the keys overflows a float (the tiled kernel gave NaN).
    inf_slopes[0] = -3e38f;
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), a),
                      contains("alibi_slopes[0] = -3e+38 must be finite, and its bias over the") &&
                          contains("keys must fit a float"));
    attention_options c;
    c.softcap = 0.0f;
    CHECK_THROWS_WITH(cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), c),
                      contains("attention_tiled: softcap = 0 must be a positive finite number"));

    // The backward.
    tensor<float, 4> dq({1, 3, 4, 8}), dk({1, 5, 2, 8}), dv({1, 5, 2, 8}), dout({1, 3, 4, 8});
    tensor<float, 3> lse({1, 4, 3});
    cpu::attention_tiled<float>(o.view(), q.view(), k.view(), v.view(), {}, lse.view());
    CHECK_NOTHROW(cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(), k.view(),
                                                       v.view(), o.view(), lse.view()));
    CHECK_THROWS_WITH(cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), bad_out.view(), q.view(),
                                                           k.view(), v.view(), o.view(), lse.view()),
                      contains("attention_backward_tiled: dout has shape (1, 3, 4, 9) but must have the shape of q (1, 3, 4, 8)"));
    CHECK_THROWS_WITH(cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(),
                                                           k.view(), v.view(), bad_out.view(), lse.view()),
                      contains("attention_backward_tiled: out has shape (1, 3, 4, 9) but must have the shape of q (1, 3, 4, 8)"));
    CHECK_THROWS_WITH(cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(),
                                                           k.view(), v.view(), o.view(), bad_lse.view()),
                      contains("attention_backward_tiled: lse has shape (1, 3, 4) but (1, 4, 3) is required"));
    CHECK_THROWS_WITH(cpu::attention_backward_tiled<float>(dq.view(), dout.view(), dv.view(), dout.view(), q.view(),
                                                           k.view(), v.view(), o.view(), lse.view()),
                      contains("attention_backward_tiled: dk has shape (1, 3, 4, 8) but must have the shape of k (1, 5, 2, 8)"));
    CHECK_THROWS_WITH(cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(),
                                                           k.view(), v.view(), o.view(), {}),
                      contains("attention_backward_tiled: lse has shape (0, 0, 0) but (1, 4, 3) is required"));
    CHECK_THROWS_WITH(cpu::attention_backward_tiled<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(),
                                                           k.view(), v.view(), o.view(), lse.view(), l),
                      contains("attention_backward_tiled: key_lengths[0] = 6 must be in [0, Tk = 5]"));
}

TEST_CASE("attention_tiled's polynomial exp: a few ulps over [-87, 0], clamped below, NaN kept", "[attention][tiled]") {
    using tinyllm::detail::exp_nonpositive;
    double worst = 0;
    for (double x = -87.0; x <= 0.01; x += 1e-3) {
        const float xf = static_cast<float>(x);
        const double want = std::exp(static_cast<double>(xf));
        worst = std::max(worst, std::fabs(exp_nonpositive(xf) - want) / want);
    }
    std::printf("exp_nonpositive: worst relative error over [-87, 0.01] %g\n", worst);
    REQUIRE(worst < 5e-7);
    REQUIRE(exp_nonpositive(0.0f) == 1.0f);
    REQUIRE(exp_nonpositive(-0.0f) == 1.0f);
    // Below -87 (and -inf): e^-87, a tiny positive number the callers zero where the key is masked.
    const float floor = exp_nonpositive(-87.0f);
    REQUIRE((floor > 0.0f && floor < 2e-38f));
    REQUIRE(exp_nonpositive(-1000.0f) == floor);
    REQUIRE(exp_nonpositive(-std::numeric_limits<float>::infinity()) == floor);
    REQUIRE(std::isnan(exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
    REQUIRE(std::isnan(exp_nonpositive(-std::numeric_limits<float>::quiet_NaN())));
}
