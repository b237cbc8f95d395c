// Tests for the backward pass of attention (tinyllm::cpu::attention_backward in
// tinyllm/attention.hpp) and the forward's log-sum-exp output.
//
// The gradients are checked against central finite differences of the
// library's own forward in double: for L(q, k, v) = sum(dout * attention(q, k, v)),
//
//     dL/dx_e ~ (L(x + h e) - L(x - h e)) / 2h,    h = 1e-5
//
// for every element e of q, k and v. Attention is smooth in its inputs (the
// masks depend on positions, not on values, so a perturbation never moves
// them), and with the forward in double the error of a difference is the
// truncation h^2 |L'''| / 6 ~ 1e-10 plus the rounding of L, ~1e-16 |L| / h
// ~ 1e-10 for the |L| ~ 10 of these shapes. Tolerance: 1e-7 absolute + 1e-6
// relative per element, 1e-6 relative L2 (observed ~1e-9); a wrong or missing
// term of the formula (the rowsum, the soft-cap factor, a GQA head) is O(0.01 .. 1).
//
// Every option and edge runs: causal, sliding window, ALiBi, soft-capping,
// an explicit scale, padding with a key_length of 0, Tq < Tk (bottom-right) and
// Tq > Tk (rows with no visible key), MHA, GQA and MQA, and all together.
#include "support/catch.hpp"
#include "support/attention_cases.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

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

const variant variants[] = {
    {"plain"},
    {"causal", true},
    {"causal + window 2", true, 2},
    {"ALiBi + causal", true, 0, true},
    {"ALiBi, not causal", false, 0, true},
    {"softcap 0.75", false, 0, false, 0.75f},
    {"scale 0.37", false, 0, false, 0.0f, 0.37f},
    {"padding (a row of length 0)", false, 0, false, 0.0f, 0.0f, true},
    {"padding + causal", true, 0, false, 0.0f, 0.0f, true},
    {"everything: causal, window 3, ALiBi, softcap 1.5, scale 0.6, padding", true, 3, true, 1.5f, 0.6f, true},
};

// The options of one test variant, with the storage its views point to. ALiBi
// slopes 0.75 / (h + 1); padding: batch row 0 sees no key, row b loses b keys.
struct options_holder : tinyllm_test::attention_case {
    options_holder(const variant& var, const shape& s)
        : attention_case(var, s, 0.75f, [](index_t b, index_t Tk) {
              return b == 0 ? index_t{0} : std::max<index_t>(1, Tk - b);
          }) {}
};

double dot(const tensor<double, 4>& a, const tensor<double, 4>& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.values().size(); ++i) s += a.values()[i] * b.values()[i];
    return s;
}

// L = sum(dout * attention(q, k, v)) in double.
double loss(const tensor<double, 4>& dout, const tensor<double, 4>& q, const tensor<double, 4>& k,
            const tensor<double, 4>& v, const attention_options& opts) {
    tensor<double, 4> o(q.shape());
    cpu::attention<double>(o, q, k, v, opts);
    return dot(dout, o);
}

// Central differences of loss() with respect to every element of x (perturbed in place and restored).
std::vector<double> numeric_gradient(tensor<double, 4>& x, const std::function<double()>& f, double h = 1e-5) {
    std::vector<double> g(x.values().size());
    for (std::size_t e = 0; e < g.size(); ++e) {
        const double saved = x.values()[e];
        x.values()[e] = saved + h;
        const double plus = f();
        x.values()[e] = saved - h;
        const double minus = f();
        x.values()[e] = saved;
        g[e] = (plus - minus) / (2 * h);
    }
    return g;
}

const tolerance fd_tol{1e-7, 1e-6, 1e-6};

}  // namespace

TEST_CASE("attention_backward matches central differences for every option, in double", "[attention][backward]") {
    // MHA; GQA with Tq < Tk (bottom-right causal); MQA; Tq > Tk (under causal the first
    // rows see no key); GQA with group 3.
    const shape shapes[] = {{2, 5, 5, 2, 2, 3}, {2, 4, 7, 4, 2, 3}, {2, 3, 6, 3, 1, 4}, {2, 6, 4, 2, 2, 3}, {1, 5, 6, 3, 1, 2}};
    std::uint64_t which = 0;
    for (const auto& s : shapes)
        for (const auto& var : variants) {
            INFO(describe(s) << ", " << var.name);
            std::printf("%s, %s\n", describe(s).c_str(), var.name.c_str());
            const options_holder o(var, s);
            auto q = random_tensor<double>({s.B, s.Tq, s.Hq, s.D}, which++, -2, 2);
            auto k = random_tensor<double>({s.B, s.Tk, s.Hkv, s.D}, which++, -2, 2);
            auto v = random_tensor<double>({s.B, s.Tk, s.Hkv, s.D}, which++);
            const auto dout = random_tensor<double>({s.B, s.Tq, s.Hq, s.D}, which++);
            // NaN in the outputs: every element must be written.
            const double nan = std::numeric_limits<double>::quiet_NaN();
            tensor<double, 4> dq(q.shape(), nan), dk(k.shape(), nan), dv(v.shape(), nan);
            cpu::attention_backward<double>(dq, dk, dv, dout, q, k, v, o.opts);

            const auto f = [&] { return loss(dout, q, k, v, o.opts); };
            TINYLLM_REQUIRE_CLOSE(dq.values(), numeric_gradient(q, f), fd_tol, "dq vs central differences");
            TINYLLM_REQUIRE_CLOSE(dk.values(), numeric_gradient(k, f), fd_tol, "dk vs central differences");
            TINYLLM_REQUIRE_CLOSE(dv.values(), numeric_gradient(v, f), fd_tol, "dv vs central differences");

            // No gradient flows where nothing is visible: exactly 0, not merely small.
            if (var.padding) {  // batch row 0 has key_length 0
                for (index_t i = 0; i < s.Tq; ++i)
                    for (index_t h = 0; h < s.Hq; ++h)
                        for (index_t d = 0; d < s.D; ++d) REQUIRE(dq(0, i, h, d) == 0.0);
                for (index_t b = 0; b < s.B; ++b)
                    for (index_t j = o.lengths[static_cast<std::size_t>(b)]; j < s.Tk; ++j)
                        for (index_t h = 0; h < s.Hkv; ++h)
                            for (index_t d = 0; d < s.D; ++d) REQUIRE((dk(b, j, h, d) == 0.0 && dv(b, j, h, d) == 0.0));
            }
            if (var.causal && s.Tq > s.Tk)  // rows i < Tq - Tk sit before key 0
                for (index_t i = 0; i < s.Tq - s.Tk; ++i)
                    for (index_t h = 0; h < s.Hq; ++h)
                        for (index_t d = 0; d < s.D; ++d) REQUIRE(dq(1, i, h, d) == 0.0);
        }
}

TEST_CASE("attention_backward with a saturating soft-cap: the (1 - tanh^2) factor", "[attention][backward]") {
    // Scores up to ~|4 * 4 * 4| / 2 = 32 against a cap of 2: tanh is deep in saturation for many
    // pairs, so a missing chain factor would be far off.
    const shape s{1, 4, 5, 2, 1, 4};
    attention_options opts;
    opts.softcap = 2.0f;
    opts.causal = true;
    auto q = random_tensor<double>({s.B, s.Tq, s.Hq, s.D}, 500, -4, 4);
    auto k = random_tensor<double>({s.B, s.Tk, s.Hkv, s.D}, 501, -4, 4);
    auto v = random_tensor<double>({s.B, s.Tk, s.Hkv, s.D}, 502);
    const auto dout = random_tensor<double>({s.B, s.Tq, s.Hq, s.D}, 503);
    tensor<double, 4> dq(q.shape()), dk(k.shape()), dv(v.shape());
    cpu::attention_backward<double>(dq, dk, dv, dout, q, k, v, opts);
    const auto f = [&] { return loss(dout, q, k, v, opts); };
    TINYLLM_REQUIRE_CLOSE(dq.values(), numeric_gradient(q, f), fd_tol, "softcap dq");
    TINYLLM_REQUIRE_CLOSE(dk.values(), numeric_gradient(k, f), fd_tol, "softcap dk");
    TINYLLM_REQUIRE_CLOSE(dv.values(), numeric_gradient(v, f), fd_tol, "softcap dv");
}

TEST_CASE("attention_backward in float is the double result rounded once", "[attention][backward]") {
    // Float inputs convert exactly to double and the computation is the same, so every float
    // gradient is the double one rounded to float: bit for bit.
    const shape s{2, 7, 9, 4, 2, 8};
    for (const auto& var : variants) {
        INFO(var.name);
        const options_holder o(var, s);
        const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 600, -2, 2);
        const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 601, -2, 2);
        const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 602);
        const auto dout = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 603);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        tensor<float, 4> dq(q.shape(), nan), dk(k.shape(), nan), dv(v.shape(), nan);
        cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, o.opts);

        auto widen = [](const tensor<float, 4>& x) {
            tensor<double, 4> y(x.shape());
            for (std::size_t i = 0; i < x.values().size(); ++i) y.values()[i] = x.values()[i];
            return y;
        };
        tensor<double, 4> dq64(q.shape()), dk64(k.shape()), dv64(v.shape());
        cpu::attention_backward<double>(dq64, dk64, dv64, widen(dout), widen(q), widen(k), widen(v), o.opts);
        // Within one rounding (2^-24 relative) ...
        const tolerance one_rounding{1e-30, 6e-8, 6e-8};
        TINYLLM_REQUIRE_CLOSE(dq.values(), dq64.values(), one_rounding, "float dq vs double");
        TINYLLM_REQUIRE_CLOSE(dk.values(), dk64.values(), one_rounding, "float dk vs double");
        TINYLLM_REQUIRE_CLOSE(dv.values(), dv64.values(), one_rounding, "float dv vs double");
        // ... and in fact exactly the rounded double.
        for (std::size_t i = 0; i < dq.values().size(); ++i) REQUIRE(dq.values()[i] == static_cast<float>(dq64.values()[i]));
        for (std::size_t i = 0; i < dk.values().size(); ++i) REQUIRE(dk.values()[i] == static_cast<float>(dk64.values()[i]));
        for (std::size_t i = 0; i < dv.values().size(); ++i) REQUIRE(dv.values()[i] == static_cast<float>(dv64.values()[i]));
    }
}

TEST_CASE("attention_backward: GQA's dK and dV are MHA's summed over each group", "[attention][backward]") {
    // GQA is MHA with each K/V head repeated `group` times; the gradient of a shared head is
    // the sum of its copies' gradients.
    const shape s{2, 5, 6, 6, 2, 4};
    const index_t group = s.Hq / s.Hkv;
    attention_options opts;
    opts.causal = true;
    const auto q = random_tensor<double>({s.B, s.Tq, s.Hq, s.D}, 700, -2, 2);
    const auto k = random_tensor<double>({s.B, s.Tk, s.Hkv, s.D}, 701, -2, 2);
    const auto v = random_tensor<double>({s.B, s.Tk, s.Hkv, s.D}, 702);
    const auto dout = random_tensor<double>({s.B, s.Tq, s.Hq, s.D}, 703);
    tensor<double, 4> kr({s.B, s.Tk, s.Hq, s.D}), vr({s.B, s.Tk, s.Hq, s.D});
    for (index_t b = 0; b < s.B; ++b)
        for (index_t j = 0; j < s.Tk; ++j)
            for (index_t h = 0; h < s.Hq; ++h)
                for (index_t d = 0; d < s.D; ++d) {
                    kr(b, j, h, d) = k(b, j, h / group, d);
                    vr(b, j, h, d) = v(b, j, h / group, d);
                }
    tensor<double, 4> dq(q.shape()), dk(k.shape()), dv(v.shape());
    tensor<double, 4> dq_mha(q.shape()), dk_mha(kr.shape()), dv_mha(vr.shape());
    cpu::attention_backward<double>(dq, dk, dv, dout, q, k, v, opts);
    cpu::attention_backward<double>(dq_mha, dk_mha, dv_mha, dout, q, kr, vr, opts);
    std::vector<double> dk_sum(dk.values().size(), 0.0), dv_sum(dv.values().size(), 0.0);
    for (index_t b = 0; b < s.B; ++b)
        for (index_t j = 0; j < s.Tk; ++j)
            for (index_t h = 0; h < s.Hq; ++h)
                for (index_t d = 0; d < s.D; ++d) {
                    const auto at = static_cast<std::size_t>(((b * s.Tk + j) * s.Hkv + h / group) * s.D + d);
                    dk_sum[at] += dk_mha(b, j, h, d);
                    dv_sum[at] += dv_mha(b, j, h, d);
                }
    const tolerance tol{1e-13, 1e-12, 1e-12};  // the same sums in another order
    TINYLLM_REQUIRE_CLOSE(dq.values(), dq_mha.values(), tol, "GQA dq vs MHA dq");
    TINYLLM_REQUIRE_CLOSE(dk.values(), dk_sum, tol, "GQA dk vs MHA dk summed over the group");
    TINYLLM_REQUIRE_CLOSE(dv.values(), dv_sum, tol, "GQA dv vs MHA dv summed over the group");
}

TEST_CASE("attention_backward: empty gradients are skipped, views and tensors both work, in place", "[attention][backward]") {
    const shape s{1, 4, 6, 4, 2, 5};
    attention_options opts;
    opts.causal = true;
    const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 800);
    const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 801);
    const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 802);
    const auto dout = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 803);
    tensor<float, 4> dq(q.shape()), dk(k.shape()), dv(v.shape());
    cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, opts);  // owning tensors

    tensor<float, 4> dq2(q.shape()), dk2(k.shape()), dv2(v.shape());
    cpu::attention_backward<float>(dq2.view(), {}, {}, dout.view(), q.view(), k.view(), v.view(), opts);
    cpu::attention_backward<float>({}, dk2.view(), {}, dout.view(), q.view(), k.view(), v.view(), opts);
    cpu::attention_backward<float>({}, {}, dv2.view(), dout.view(), q.view(), k.view(), v.view(), opts);
    CHECK(dq2.values() == dq.values());
    CHECK(dk2.values() == dk.values());
    CHECK(dv2.values() == dv.values());
    cpu::attention_backward<float>({}, {}, {}, dout, q, k, v, opts);  // nothing wanted: nothing to do

    // Everything is read before anything is written: dq may be q's memory.
    auto q_in_place = q;
    cpu::attention_backward<float>(q_in_place, {}, {}, dout, q_in_place, k, v, opts);
    CHECK(q_in_place.values() == dq.values());

    // Strided views: dk written into the even heads of a wider buffer.
    tensor<float, 4> wide({s.B, s.Tk, 2 * s.Hkv, s.D}, 7.0f);
    tensor_view<float, 4> every_other(wide.data(), {s.B, s.Tk, s.Hkv, s.D},
                                      {s.Tk * 2 * s.Hkv * s.D, 2 * s.Hkv * s.D, 2 * s.D, 1});
    cpu::attention_backward<float>({}, every_other, {}, dout, q, k, v, opts);
    for (index_t j = 0; j < s.Tk; ++j)
        for (index_t h = 0; h < s.Hkv; ++h)
            for (index_t d = 0; d < s.D; ++d) {
                CHECK(wide(0, j, 2 * h, d) == dk(0, j, h, d));
                CHECK(wide(0, j, 2 * h + 1, d) == 7.0f);
            }
}

TEST_CASE("attention: the forward's log-sum-exp output", "[attention][backward]") {
    // Tq > Tk and causal: query rows 0 and 1 see no key (lse = -inf); the rest see 1 .. 4 keys.
    const shape s{2, 6, 4, 3, 1, 5};
    attention_options opts;
    opts.causal = true;
    opts.scale = 0.5f;
    const auto q = random_tensor<float>({s.B, s.Tq, s.Hq, s.D}, 900, -2, 2);
    const auto k = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 901, -2, 2);
    const auto v = random_tensor<float>({s.B, s.Tk, s.Hkv, s.D}, 902);
    tensor<float, 4> o(q.shape());
    tensor<float, 3> lse({s.B, s.Hq, s.Tq}, std::numeric_limits<float>::quiet_NaN());
    tensor<float, 4> p({s.B, s.Hq, s.Tq, s.Tk});
    cpu::attention<float>(o, q, k, v, opts, p, lse);
    std::vector<double> want, got;
    for (index_t b = 0; b < s.B; ++b)
        for (index_t h = 0; h < s.Hq; ++h)
            for (index_t i = 0; i < s.Tq; ++i) {
                const index_t pos = i + s.Tk - s.Tq;
                if (pos < 0) {
                    CHECK(lse(b, h, i) == -std::numeric_limits<float>::infinity());
                    continue;
                }
                double sum = 0;  // log sum_j exp(0.5 q_i . k_j) over j <= pos
                for (index_t j = 0; j <= pos; ++j) {
                    double d = 0;
                    for (index_t e = 0; e < s.D; ++e) d += double(q(b, i, h, e)) * double(k(b, j, 0, e));
                    sum += std::exp(0.5 * d);
                }
                want.push_back(std::log(sum));
                got.push_back(lse(b, h, i));
                // P = exp(S - lse), the identity a flash backward relies on.
                for (index_t j = 0; j <= pos; ++j) {
                    double d = 0;
                    for (index_t e = 0; e < s.D; ++e) d += double(q(b, i, h, e)) * double(k(b, j, 0, e));
                    CHECK(p(b, h, i, j) == tinyllm_test::Approx(std::exp(0.5 * d - double(lse(b, h, i)))).epsilon(1e-6));
                }
            }
    TINYLLM_REQUIRE_CLOSE(got, want, tolerance{1e-6, 1e-7, 1e-7}, "lse");
    tensor<float, 3> bad({s.B, s.Tq, s.Hq});
    CHECK_THROWS_WITH(cpu::attention<float>(o, q, k, v, opts, {}, bad),
                      contains("attention: lse has shape (2, 6, 3) but (2, 3, 6) is required"));
}

TEST_CASE("attention_backward rejects bad arguments, naming the argument and the shapes", "[attention][backward][errors]") {
    tensor<float, 4> q({1, 3, 4, 8}), k({1, 5, 2, 8}), v({1, 5, 2, 8}), dout({1, 3, 4, 8});
    tensor<float, 4> dq({1, 3, 4, 8}), dk({1, 5, 2, 8}), dv({1, 5, 2, 8});
    CHECK_NOTHROW(cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v));

    tensor<float, 4> bad_dout({1, 3, 4, 7});
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, dk, dv, bad_dout, q, k, v),
                      contains("attention_backward: dout has shape (1, 3, 4, 7) but must have the shape of q (1, 3, 4, 8)"));
    tensor<float, 4> bad_dq({1, 4, 3, 8});
    CHECK_THROWS_WITH(cpu::attention_backward<float>(bad_dq, dk, dv, dout, q, k, v),
                      contains("attention_backward: dq has shape (1, 4, 3, 8) but must have the shape of q (1, 3, 4, 8)"));
    tensor<float, 4> bad_kv({1, 5, 4, 8});
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, bad_kv, dv, dout, q, k, v),
                      contains("attention_backward: dk has shape (1, 5, 4, 8) but must have the shape of k (1, 5, 2, 8)"));
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, dk, bad_kv, dout, q, k, v),
                      contains("attention_backward: dv has shape (1, 5, 4, 8) but must have the shape of v (1, 5, 2, 8)"));
    // The forward's checks, under the backward's name.
    tensor<float, 4> k3({1, 5, 3, 8});
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, {}, {}, dout, q, k3, k3),
                      contains("attention_backward: the query heads (Hq = 4) must be a multiple of the key/value heads (Hkv = 3)"));
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, dk, dv, dout, q, k, dq),
                      contains("attention_backward: k has shape (1, 5, 2, 8) but v has shape (1, 3, 4, 8)"));
    attention_options w;
    w.window = 2;
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, w),
                      contains("attention_backward: a sliding window (window = 2) looks back from the query and needs causal = true"));
    std::vector<std::int32_t> lengths = {6};
    attention_options l;
    l.key_lengths = {lengths.data(), {1}};
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, l),
                      contains("attention_backward: key_lengths[0] = 6 must be in [0, Tk = 5]"));
    std::vector<float> slopes(3, 0.5f);
    attention_options a;
    a.alibi_slopes = {slopes.data(), {3}};
    CHECK_THROWS_WITH(cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, a),
                      contains("attention_backward: alibi_slopes has 3 slopes but there are Hq = 4 query heads"));
}
