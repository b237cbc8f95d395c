// Tests for tinyllm/attention.hpp: the CPU reference of scaled dot-product
// attention (hand-computed values, an independent float64 recomputation, every
// mask and option, GQA, fully masked rows), the mask/tile helpers the CUDA
// kernels share, the KV cache, and the errors for bad arguments.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/attention_tiled.hpp>
#include <tinyllm/detail/attention_mma_layout.hpp>
#include <tinyllm/detail/mma_fragments.hpp>
#include <tinyllm/detail/wgmma_layout.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

using tinyllm::attention_options;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm_test::contains;
using tinyllm_test::tolerance;

namespace {

struct shape {
    index_t B, Tq, Tk, Hq, Hkv, D;
};

tensor<float, 4> random_tensor(extents<4> s, std::uint64_t which, float lo = -1.0f, float hi = 1.0f) {
    tensor<float, 4> t(s);
    t.values() = tinyllm_test::random_floats(static_cast<std::size_t>(s.product()), which, lo, hi);
    return t;
}

template <class T>
tensor<double, 4> to_double(const tensor<T, 4>& x) {
    tensor<double, 4> y(x.shape());
    for (index_t i = 0; i < x.size(); ++i) y.values()[static_cast<std::size_t>(i)] = x.values()[static_cast<std::size_t>(i)];
    return y;
}

// An independent float64 attention, written from the definitions rather than
// from attention_visible_keys: a full (Tq, Tk) mask matrix, -inf scores, and a
// softmax that skips rows without a visible key. Returns O (B, Tq, Hq, D) and
// fills P (B, Hq, Tq, Tk).
std::vector<double> reference(const tensor<float, 4>& q, const tensor<float, 4>& k, const tensor<float, 4>& v,
                              bool causal, index_t window, const std::vector<float>& slopes, double softcap,
                              const std::vector<int>& lengths, std::vector<double>* probs = nullptr,
                              double scale = -1) {
    const index_t B = q.extent(0), Tq = q.extent(1), Hq = q.extent(2), D = q.extent(3);
    const index_t Tk = k.extent(1), Hkv = k.extent(2);
    if (scale < 0) scale = 1.0 / std::sqrt(static_cast<double>(D));
    std::vector<double> out(static_cast<std::size_t>(B * Tq * Hq * D), 0.0);
    if (probs) probs->assign(static_cast<std::size_t>(B * Hq * Tq * Tk), 0.0);
    const double inf = std::numeric_limits<double>::infinity();
    for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < Hq; ++h)
            for (index_t i = 0; i < Tq; ++i) {
                const index_t pos = Tk - Tq + i;
                std::vector<double> s(static_cast<std::size_t>(Tk));
                double mx = -inf;
                for (index_t j = 0; j < Tk; ++j) {
                    bool masked = false;
                    if (causal && j > pos) masked = true;
                    if (window > 0 && pos - j >= window) masked = true;
                    if (!lengths.empty() && j >= lengths[static_cast<std::size_t>(b)]) masked = true;
                    double dot = 0;
                    for (index_t d = 0; d < D; ++d) dot += double(q(b, i, h, d)) * double(k(b, j, h * Hkv / Hq, d));
                    double x = dot * scale;
                    if (softcap > 0) x = softcap * std::tanh(x / softcap);
                    if (!slopes.empty()) x += -double(slopes[static_cast<std::size_t>(h)]) * double(pos - j);
                    s[static_cast<std::size_t>(j)] = masked ? -inf : x;
                    mx = std::max(mx, s[static_cast<std::size_t>(j)]);
                }
                if (mx == -inf) continue;  // no visible key: zeros
                double sum = 0;
                for (auto& x : s) sum += (x = std::exp(x - mx));
                for (index_t j = 0; j < Tk; ++j) {
                    const double p = s[static_cast<std::size_t>(j)] / sum;
                    if (probs) (*probs)[static_cast<std::size_t>(((b * Hq + h) * Tq + i) * Tk + j)] = p;
                    for (index_t d = 0; d < D; ++d)
                        out[static_cast<std::size_t>(((b * Tq + i) * Hq + h) * D + d)] += p * v(b, j, h * Hkv / Hq, d);
                }
            }
    return out;
}

template <class T>
std::vector<double> as_doubles(const tensor<T, 4>& t) {
    return std::vector<double>(t.values().begin(), t.values().end());
}

}  // namespace

TEST_CASE("attention: a hand-computed example", "[attention]") {
    // q0 = (1, 0), q1 = (0, 1); k0 = (ln 3, 0), k1 = (0, ln 3); scale 1:
    // scores q0: (ln 3, 0) -> p = (3/4, 1/4); q1: (0, ln 3) -> p = (1/4, 3/4).
    // v0 = (4, 8), v1 = (0, 4): o0 = (3, 7), o1 = (1, 5).
    const float l3 = static_cast<float>(std::log(3.0));
    tensor<float, 4> q({1, 2, 1, 2}), k({1, 2, 1, 2}), v({1, 2, 1, 2}), o({1, 2, 1, 2});
    q.values() = {1, 0, 0, 1};
    k.values() = {l3, 0, 0, l3};
    v.values() = {4, 8, 0, 4};
    tensor<float, 4> p({1, 1, 2, 2});
    attention_options opts;
    opts.scale = 1.0f;
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    const std::vector<double> want_o = {3, 7, 1, 5}, want_p = {0.75, 0.25, 0.25, 0.75};
    TINYLLM_REQUIRE_CLOSE(o.values(), want_o, tolerance{1e-6, 1e-6}, "hand example O");
    TINYLLM_REQUIRE_CLOSE(p.values(), want_p, tolerance{1e-7, 0}, "hand example P");

    // Causal: q0 sees k0 only -> o0 = v0 = (4, 8); q1 is unchanged.
    opts.causal = true;
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    const std::vector<double> causal_o = {4, 8, 1, 5}, causal_p = {1, 0, 0.25, 0.75};
    TINYLLM_REQUIRE_CLOSE(o.values(), causal_o, tolerance{1e-6, 1e-6}, "hand example causal O");
    TINYLLM_REQUIRE_CLOSE(p.values(), causal_p, tolerance{1e-7, 0}, "hand example causal P");

    // Default scale 1/sqrt(2): q0 scores (ln 3 / sqrt 2, 0).
    opts = {};
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    const double e = std::exp(std::log(3.0) / std::sqrt(2.0)), p0 = e / (e + 1);
    CHECK(p(0, 0, 0, 0) == tinyllm_test::Approx(p0).epsilon(1e-6));
    CHECK(o(0, 0, 0, 0) == tinyllm_test::Approx(4 * p0).epsilon(1e-6));
}

TEST_CASE("attention: float64 recomputation on random inputs, every option", "[attention]") {
    const shape shapes[] = {{2, 5, 7, 4, 2, 8}, {1, 7, 7, 3, 3, 5}, {2, 1, 9, 8, 1, 4}, {1, 6, 3, 2, 2, 3}};
    std::uint64_t which = 0;
    for (const auto& s : shapes)
        for (int variant = 0; variant < 7; ++variant) {
            const auto q = random_tensor({s.B, s.Tq, s.Hq, s.D}, which++, -2, 2);
            const auto k = random_tensor({s.B, s.Tk, s.Hkv, s.D}, which++, -2, 2);
            const auto v = random_tensor({s.B, s.Tk, s.Hkv, s.D}, which++);
            attention_options opts;
            std::vector<float> slopes;
            std::vector<int> lengths;
            index_t window = 0;
            double softcap = 0;
            if (variant >= 1) opts.causal = true;
            if (variant == 2) opts.window = window = 3;
            if (variant == 3) {
                for (index_t h = 0; h < s.Hq; ++h) slopes.push_back(0.5f / static_cast<float>(h + 1));
                opts.alibi_slopes = {slopes.data(), {s.Hq}};
            }
            if (variant == 4) opts.softcap = static_cast<float>(softcap = 0.75);  // exact in float
            if (variant == 5) {
                for (index_t b = 0; b < s.B; ++b) lengths.push_back(static_cast<int>((s.Tk * (b + 1)) / (s.B + 1)));
                opts.key_lengths = {lengths.data(), {s.B}};
            }
            double scale = -1;  // the default 1/sqrt(D)
            if (variant == 6) opts.scale = static_cast<float>(scale = 0.375);  // exact in float
            INFO("shape B" << s.B << " Tq" << s.Tq << " Tk" << s.Tk << " Hq" << s.Hq << " Hkv" << s.Hkv << " D" << s.D
                           << " variant " << variant);
            std::vector<double> want_p;
            const auto want = reference(q, k, v, opts.causal, window, slopes, softcap, lengths, &want_p, scale);

            // The reference in double agrees to rounding.
            const auto qd = to_double(q), kd = to_double(k), vd = to_double(v);
            tensor<double, 4> od({s.B, s.Tq, s.Hq, s.D});
            tensor<float, 4> p({s.B, s.Hq, s.Tq, s.Tk});
            tinyllm::cpu::attention<double>(od.view(), qd.view(), kd.view(), vd.view(), opts, p.view());
            TINYLLM_REQUIRE_CLOSE(od.values(), want, tolerance{1e-12, 1e-12, 1e-12}, "double O");
            TINYLLM_REQUIRE_CLOSE(p.values(), want_p, tolerance{1e-7, 1e-6}, "P");

            // Float in and out: one rounding of the double result.
            tensor<float, 4> of({s.B, s.Tq, s.Hq, s.D});
            tinyllm::cpu::attention<float>(of.view(), q.view(), k.view(), v.view(), opts);
            TINYLLM_REQUIRE_CLOSE(of.values(), want, tolerance{1e-6, 1e-6, 1e-6}, "float O");
        }
}

TEST_CASE("attention: causal is bottom-right aligned when Tq < Tk", "[attention]") {
    const index_t Tq = 3, Tk = 8, H = 2, D = 4;
    const auto qlong = random_tensor({1, Tk, H, D}, 1), k = random_tensor({1, Tk, H, D}, 2), v = random_tensor({1, Tk, H, D}, 3);
    attention_options opts;
    opts.causal = true;
    // The last Tq queries of full causal attention ...
    tensor<float, 4> full({1, Tk, H, D});
    tinyllm::cpu::attention<float>(full.view(), qlong.view(), k.view(), v.view(), opts);
    // ... equal attention with only those queries.
    tensor<float, 4> q({1, Tq, H, D}), o({1, Tq, H, D});
    for (index_t i = 0; i < Tq; ++i)
        for (index_t h = 0; h < H; ++h)
            for (index_t d = 0; d < D; ++d) q(0, i, h, d) = qlong(0, Tk - Tq + i, h, d);
    tensor<float, 4> p({1, H, Tq, Tk});
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    for (index_t i = 0; i < Tq; ++i)
        for (index_t h = 0; h < H; ++h) {
            for (index_t d = 0; d < D; ++d) CHECK(o(0, i, h, d) == full(0, Tk - Tq + i, h, d));
            // Query i sees keys 0 .. i + Tk - Tq.
            for (index_t j = 0; j < Tk; ++j) CHECK((p(0, h, i, j) > 0) == (j <= i + Tk - Tq));
        }
}

TEST_CASE("attention: sliding window sees the last `window` keys, itself included", "[attention]") {
    const index_t T = 9, H = 2, D = 4;
    const auto q = random_tensor({1, T, H, D}, 4), k = random_tensor({1, T, H, D}, 5), v = random_tensor({1, T, H, D}, 6);
    for (index_t w : {1, 2, 4}) {
        attention_options opts;
        opts.causal = true;
        opts.window = w;
        tensor<float, 4> o({1, T, H, D}), p({1, H, T, T});
        tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
        for (index_t h = 0; h < H; ++h)
            for (index_t i = 0; i < T; ++i)
                for (index_t j = 0; j < T; ++j) CHECK((p(0, h, i, j) > 0) == (j <= i && j > i - w));
        // window 1: each query sees only itself, so o_i = v_i.
        if (w == 1)
            for (index_t i = 0; i < T; ++i)
                for (index_t d = 0; d < D; ++d) CHECK(o(0, i, 1, d) == v(0, i, 1, d));
    }
    // A window as long as the sequence changes nothing.
    attention_options a, b;
    a.causal = b.causal = true;
    b.window = T;
    tensor<float, 4> oa({1, T, H, D}), ob({1, T, H, D});
    tinyllm::cpu::attention<float>(oa.view(), q.view(), k.view(), v.view(), a);
    tinyllm::cpu::attention<float>(ob.view(), q.view(), k.view(), v.view(), b);
    CHECK(oa.values() == ob.values());
}

TEST_CASE("attention: ALiBi adds -slope * (pos(i) - j)", "[attention]") {
    // With q = 0 every content score is 0, so P row i is proportional to
    // exp(-slope * (pos(i) - j)) over the visible keys: a geometric sequence.
    const index_t T = 5, H = 2, D = 3;
    tensor<float, 4> q({1, T, H, D}), o({1, T, H, D}), p({1, H, T, T});
    const auto k = random_tensor({1, T, H, D}, 7), v = random_tensor({1, T, H, D}, 8);
    std::vector<float> slopes = {0.5f, 0.25f};
    attention_options opts;
    opts.causal = true;
    opts.alibi_slopes = {slopes.data(), {H}};
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < T; ++i) {
            double sum = 0;
            for (index_t j = 0; j <= i; ++j) sum += std::exp(-slopes[static_cast<std::size_t>(h)] * double(i - j));
            for (index_t j = 0; j <= i; ++j)
                CHECK(p(0, h, i, j) ==
                      tinyllm_test::Approx(std::exp(-slopes[static_cast<std::size_t>(h)] * double(i - j)) / sum).epsilon(1e-6));
        }
}

TEST_CASE("attention: soft-capping bounds the logits by cap", "[attention]") {
    // Scores of +-100 capped at 1 become tanh(+-100) = +-1: the probabilities
    // of a row with keys scoring (100, -100) are (e, 1/e) / (e + 1/e).
    tensor<float, 4> q({1, 1, 1, 1}), k({1, 2, 1, 1}), v({1, 2, 1, 1}), o({1, 1, 1, 1}), p({1, 1, 1, 2});
    q.values() = {10};
    k.values() = {10, -10};
    v.values() = {1, 0};
    attention_options opts;
    opts.scale = 1.0f;
    opts.softcap = 1.0f;
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    const double e = std::exp(1.0), want = e / (e + 1 / e);
    CHECK(p(0, 0, 0, 0) == tinyllm_test::Approx(want).epsilon(1e-6));
    CHECK(o(0, 0, 0, 0) == tinyllm_test::Approx(want).epsilon(1e-6));
    // A huge cap is (nearly) no cap.
    opts.softcap = 1e30f;
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    CHECK(p(0, 0, 0, 0) == 1.0f);
}

TEST_CASE("attention: padding masks keys at or past each row's length", "[attention]") {
    const index_t B = 3, T = 6, H = 2, D = 4;
    const auto q = random_tensor({B, T, H, D}, 9), k = random_tensor({B, T, H, D}, 10), v = random_tensor({B, T, H, D}, 11);
    std::vector<std::int32_t> lengths = {6, 4, 1};
    attention_options opts;
    opts.key_lengths = {lengths.data(), {B}};
    tensor<float, 4> o({B, T, H, D}), p({B, H, T, T});
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    for (index_t b = 0; b < B; ++b) {
        // Equal to attention over the first length keys only.
        const index_t L = lengths[static_cast<std::size_t>(b)];
        tensor<float, 4> qb({1, T, H, D}), kb({1, L, H, D}), vb({1, L, H, D}), ob({1, T, H, D});
        for (index_t t = 0; t < T; ++t)
            for (index_t h = 0; h < H; ++h)
                for (index_t d = 0; d < D; ++d) {
                    qb(0, t, h, d) = q(b, t, h, d);
                    if (t < L) kb(0, t, h, d) = k(b, t, h, d), vb(0, t, h, d) = v(b, t, h, d);
                }
        tinyllm::cpu::attention<float>(ob.view(), qb.view(), kb.view(), vb.view());
        for (index_t t = 0; t < T; ++t)
            for (index_t h = 0; h < H; ++h) {
                for (index_t d = 0; d < D; ++d) CHECK(o(b, t, h, d) == ob(0, t, h, d));
                for (index_t j = L; j < T; ++j) CHECK(p(b, h, t, j) == 0.0f);
            }
    }
}

TEST_CASE("attention: GQA and MQA equal MHA with the K/V heads repeated", "[attention]") {
    const index_t B = 2, Tq = 4, Tk = 6, Hq = 8, D = 5;
    for (index_t Hkv : {1, 2, 4}) {
        const auto q = random_tensor({B, Tq, Hq, D}, 12), k = random_tensor({B, Tk, Hkv, D}, 13),
                   v = random_tensor({B, Tk, Hkv, D}, 14);
        tensor<float, 4> kr({B, Tk, Hq, D}), vr({B, Tk, Hq, D});
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < Tk; ++t)
                for (index_t h = 0; h < Hq; ++h)
                    for (index_t d = 0; d < D; ++d) {
                        kr(b, t, h, d) = k(b, t, h / (Hq / Hkv), d);
                        vr(b, t, h, d) = v(b, t, h / (Hq / Hkv), d);
                    }
        attention_options opts;
        opts.causal = true;
        tensor<float, 4> og({B, Tq, Hq, D}), om({B, Tq, Hq, D});
        tinyllm::cpu::attention<float>(og.view(), q.view(), k.view(), v.view(), opts);
        tinyllm::cpu::attention<float>(om.view(), q.view(), kr.view(), vr.view(), opts);
        INFO("Hkv = " << Hkv);
        CHECK(og.values() == om.values());
    }
}

TEST_CASE("attention: fully masked rows give zeros, never NaN", "[attention]") {
    const index_t B = 2, Tq = 5, Tk = 3, H = 2, D = 4;
    const auto q = random_tensor({B, Tq, H, D}, 15), k = random_tensor({B, Tk, H, D}, 16), v = random_tensor({B, Tk, H, D}, 17);
    std::vector<std::int32_t> lengths = {3, 0};  // batch row 1 has no keys at all
    attention_options opts;
    opts.causal = true;  // Tq > Tk: queries 0 and 1 sit at positions -2, -1: nothing to see
    opts.key_lengths = {lengths.data(), {B}};
    tensor<float, 4> o({B, Tq, H, D}, 123.0f), p({B, H, Tq, Tk}, 123.0f);
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
    for (index_t b = 0; b < B; ++b)
        for (index_t i = 0; i < Tq; ++i)
            for (index_t h = 0; h < H; ++h) {
                const bool empty = b == 1 || i < 2;
                double row = 0;
                for (index_t j = 0; j < Tk; ++j) row += p(b, h, i, j);
                CHECK(row == tinyllm_test::Approx(empty ? 0.0 : 1.0).margin(1e-6));
                for (index_t d = 0; d < D; ++d) {
                    CHECK(std::isfinite(o(b, i, h, d)));
                    if (empty) CHECK(o(b, i, h, d) == 0.0f);
                }
            }
    // Tk = 0: every row is empty.
    tensor<float, 4> k0({B, 0, H, D}), v0({B, 0, H, D});
    tinyllm::cpu::attention<float>(o.view(), q.view(), k0.view(), v0.view());
    for (float x : o.values()) CHECK(x == 0.0f);
}

TEST_CASE("attention: probability rows sum to 1 and are nonnegative", "[attention]") {
    const index_t B = 2, Tq = 7, Tk = 11, Hq = 4, Hkv = 2, D = 6;
    const auto q = random_tensor({B, Tq, Hq, D}, 18, -4, 4), k = random_tensor({B, Tk, Hkv, D}, 19, -4, 4),
               v = random_tensor({B, Tk, Hkv, D}, 20);
    for (bool causal : {false, true}) {
        attention_options opts;
        opts.causal = causal;
        tensor<float, 4> o({B, Tq, Hq, D}), p({B, Hq, Tq, Tk});
        tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts, p.view());
        for (index_t b = 0; b < B; ++b)
            for (index_t h = 0; h < Hq; ++h)
                for (index_t i = 0; i < Tq; ++i) {
                    double row = 0;
                    for (index_t j = 0; j < Tk; ++j) {
                        CHECK(p(b, h, i, j) >= 0.0f);
                        row += p(b, h, i, j);
                    }
                    CHECK(row == tinyllm_test::Approx(1.0).margin(1e-6));
                }
    }
}

TEST_CASE("attention: large scores do not overflow (max subtraction)", "[attention]") {
    tensor<float, 4> q({1, 1, 1, 1}), k({1, 3, 1, 1}), v({1, 3, 1, 1}), o({1, 1, 1, 1});
    q.values() = {1000};
    k.values() = {1000, 999, -1000};  // scores 1e6, 999000, -1e6: exp would overflow
    v.values() = {1, 2, 3};
    attention_options opts;
    opts.scale = 1.0f;
    tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts);
    CHECK(o(0, 0, 0, 0) == 1.0f);  // all weight on the first key
}

TEST_CASE("attention: KV-cache decoding step by step equals full causal attention", "[attention]") {
    const index_t B = 2, T = 9, Hq = 4, Hkv = 2, D = 8;
    const auto q = random_tensor({B, T, Hq, D}, 21), k = random_tensor({B, T, Hkv, D}, 22), v = random_tensor({B, T, Hkv, D}, 23);
    for (int variant = 0; variant < 2; ++variant) {
        attention_options opts;
        opts.causal = true;
        if (variant == 1) opts.window = 3;
        tensor<float, 4> full({B, T, Hq, D});
        tinyllm::cpu::attention<float>(full.view(), q.view(), k.view(), v.view(), opts);

        tinyllm::kv_cache<float> cache(B, 16, Hkv, D);
        // A prefill chunk of 4 positions, then one token at a time.
        index_t t = 0;
        for (index_t n : {4, 1, 1, 1, 1, 1}) {
            cache.append(k.view().narrow(1, t, n), v.view().narrow(1, t, n));
            tensor<float, 4> o({B, n, Hq, D});
            tinyllm::cpu::attention<float>(o.view(), q.view().narrow(1, t, n), cache, opts);
            for (index_t b = 0; b < B; ++b)
                for (index_t i = 0; i < n; ++i)
                    for (index_t h = 0; h < Hq; ++h)
                        for (index_t d = 0; d < D; ++d) CHECK(o(b, i, h, d) == full(b, t + i, h, d));
            t += n;
        }
        CHECK(cache.length() == T);
        CHECK(cache.keys().extent(1) == T);
        cache.clear();
        CHECK(cache.length() == 0);
    }
    tinyllm::kv_cache<float> small(B, 2, Hkv, D);
    CHECK_THROWS_WITH(small.append(k.view().narrow(1, 0, 3), v.view().narrow(1, 0, 3)), contains("exceed the capacity 2"));
    CHECK_THROWS_WITH(small.append(k.view().narrow(1, 0, 1), q.view().narrow(1, 0, 1)), contains("v_new has shape"));
    tensor<float, 4> o({B, 1, Hq, D});
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(o.view(), q.view().narrow(1, 0, 1), small),
                      contains("cache holds only 0"));
}

TEST_CASE("attention: mask helpers agree with the definition, tile skip/full/partial is safe", "[attention]") {
    using tinyllm::attention_tile;
    for (index_t tq : {1, 3, 8})
        for (index_t tk : {1, 5, 13})
            for (bool causal : {false, true})
                for (index_t window : {0, 1, 3})
                    for (index_t length : {index_t{0}, tk / 2, tk}) {
                        if (window > 0 && !causal) continue;
                        const tinyllm::attention_mask m{tq, tk, causal, window};
                        auto visible = [&](index_t i, index_t j) {
                            const index_t pos = i + tk - tq;
                            return j < length && (!causal || j <= pos) && (window == 0 || pos - j < window);
                        };
                        for (index_t i = 0; i < tq; ++i)
                            for (index_t j = 0; j < tk; ++j)
                                REQUIRE(tinyllm::attention_visible_keys(m, i, length).contains(j) == visible(i, j));
                        // Every tile shape and position: skip means no visible element,
                        // full means all visible; tile_keys covers every visible key.
                        for (index_t rows : {1, 2, 4})
                            for (index_t cols : {1, 2, 4})
                                for (index_t q0 = 0; q0 < tq; q0 += rows) {
                                    const auto range = tinyllm::attention_tile_keys(m, q0, rows, length);
                                    // Never a padding key, even for rows whose window starts past the length.
                                    REQUIRE((range.empty() || range.end <= std::min(length, tk)));
                                    for (index_t k0 = 0; k0 < tk; k0 += cols) {
                                        const index_t c = std::min(cols, tk - k0);
                                        const auto kind = tinyllm::attention_classify_tile(m, q0, rows, k0, c, length);
                                        bool any = false, all = true;
                                        for (index_t i = q0; i < std::min(q0 + rows, tq); ++i)
                                            for (index_t j = k0; j < k0 + c; ++j) {
                                                any = any || visible(i, j);
                                                all = all && visible(i, j);
                                                if (visible(i, j)) REQUIRE(range.contains(j));
                                            }
                                        INFO("tq " << tq << " tk " << tk << " causal " << causal << " window " << window
                                                   << " len " << length << " tile q0 " << q0 << " rows " << rows
                                                   << " k0 " << k0 << " cols " << c);
                                        if (kind == attention_tile::skip) REQUIRE(!any);
                                        if (kind == attention_tile::full) REQUIRE(all);
                                        // Exact for the masks without a window.
                                        if (window == 0) REQUIRE((kind == attention_tile::skip) == !any);
                                        if (window == 0) REQUIRE((kind == attention_tile::full) == all);
                                    }
                                }
                    }
    // The logit transform: scale, cap, bias in that order.
    CHECK(tinyllm::attention_logit(2.0, 0.5, 0.0, 0.0, 5, 5) == 1.0);
    CHECK(tinyllm::attention_logit(2.0, 0.5, 0.0, 0.25, 5, 1) == 0.0);
    CHECK(tinyllm::attention_logit(2.0, 0.5, 2.0, 0.0, 0, 0) == tinyllm_test::Approx(2.0 * std::tanh(0.5)));
}

TEST_CASE("attention: bad arguments are rejected with clear errors", "[attention][error]") {
    tensor<float, 4> q({1, 3, 6, 4}), k({1, 5, 4, 4}), v({1, 5, 4, 4}), o({1, 3, 6, 4});
    auto call = [&](const attention_options& opts) {
        tinyllm::cpu::attention<float>(o.view(), q.view(), k.view(), v.view(), opts);
    };
    CHECK_THROWS_WITH(call({}), contains("must be a multiple of the key/value heads (Hkv = 4)"));
    tensor<float, 4> k2({1, 5, 2, 4}), v2({1, 5, 2, 4}), v3({1, 4, 2, 4}), k4({1, 5, 2, 3}), k5({2, 5, 2, 4});
    auto call2 = [&](tensor<float, 4>& kk, tensor<float, 4>& vv, const attention_options& opts = {}) {
        tinyllm::cpu::attention<float>(o.view(), q.view(), kk.view(), vv.view(), opts);
    };
    CHECK_NOTHROW(call2(k2, v2));
    CHECK_THROWS_WITH(call2(k2, v3), contains("they must be equal"));
    CHECK_THROWS_WITH(call2(k4, k4), contains("q has head dim 4 but k has head dim 3"));
    CHECK_THROWS_WITH(call2(k5, k5), contains("q has batch 1 but k has batch 2"));
    tensor<float, 4> bad_out({1, 3, 6, 5});
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(bad_out.view(), q.view(), k2.view(), v2.view()),
                      contains("out has shape (1, 3, 6, 5)"));

    attention_options w;
    w.causal = true;
    w.window = 0;
    CHECK_THROWS_WITH(call2(k2, v2, w), contains("window = 0 must be at least 1"));
    w.window = 2;
    w.causal = false;
    CHECK_THROWS_WITH(call2(k2, v2, w), contains("needs causal = true"));
    attention_options c;
    c.softcap = -1.0f;
    CHECK_THROWS_WITH(call2(k2, v2, c), contains("softcap = -1 must be a positive"));
    std::vector<float> slopes(5, 0.5f);
    attention_options a;
    a.alibi_slopes = {slopes.data(), {5}};
    CHECK_THROWS_WITH(call2(k2, v2, a), contains("alibi_slopes has 5 slopes but there are Hq = 6"));
    std::vector<float> nan_slopes(6, 0.5f);  // a NaN slope made its heads' rows NaN
    nan_slopes[4] = std::numeric_limits<float>::quiet_NaN();
    a.alibi_slopes = {nan_slopes.data(), {6}};
    CHECK_THROWS_WITH(call2(k2, v2, a), contains("attention: alibi_slopes[4] = nan must be finite"));
    std::vector<std::int32_t> lengths = {6};
    attention_options l;
    l.key_lengths = {lengths.data(), {1}};
    CHECK_THROWS_WITH(call2(k2, v2, l), contains("key_lengths[0] = 6 must be in [0, Tk = 5]"));
    std::vector<std::int32_t> lengths2 = {1, 2};
    l.key_lengths = {lengths2.data(), {2}};
    CHECK_THROWS_WITH(call2(k2, v2, l), contains("key_lengths has 2 entries but the batch is B = 1"));
    tensor<float, 4> p({1, 6, 3, 4});
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(o.view(), q.view(), k2.view(), v2.view(), {}, p.view()),
                      contains("probs has shape (1, 6, 3, 4) but (1, 6, 3, 5) is required"));
}

TEST_CASE("attention: outputs over the inputs or over each other are refused", "[attention][error]") {
    using view4 = tinyllm::tensor_view<float, 4>;
    using cview4 = tinyllm::tensor_view<const float, 4>;
    const extents<4> s{1, 4, 2, 8};  // B, T, H, D: Tq = Tk, Hq = Hkv, so out, q, k and v share a shape
    const index_t n = s.product();
    const auto q = random_tensor(s, 1), k = random_tensor(s, 2), v = random_tensor(s, 3);
    tensor<float, 4> want(s);
    tinyllm::cpu::attention<float>(want.view(), q.view(), k.view(), v.view());
    std::vector<float> buf(static_cast<std::size_t>(3 * n));
    const auto at = [&](index_t offset) { return view4(buf.data() + offset, s); };
    const auto copy_to = [&](view4 dst, const tensor<float, 4>& src) {
        std::copy(src.values().begin(), src.values().end(), dst.data());
        return cview4(dst);
    };

    // out over k or v, exactly or in part; out over q in part; out with a stride of 0.
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(at(0), q.view(), copy_to(at(0), k), v.view()),
                      contains("attention: out must not share memory with k"));
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(at(1), q.view(), k.view(), copy_to(at(0), v)),
                      contains("attention: out must not share memory with v"));
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(at(8), copy_to(at(0), q), k.view(), v.view()),
                      contains("attention: out must be exactly q (in place) or not share memory with it"));
    const view4 repeated(buf.data(), s, {0, 0, 8, 1});  // every time step the same 16 elements
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(repeated, q.view(), k.view(), v.view()),
                      contains("attention: out has shape (1, 4, 2, 8) and strides (0, 0, 8, 1), so two of its "
                               "elements share an address"));
    // probs and lse over out, each other or an option.
    const tinyllm::tensor_view<float, 4> probs(buf.data() + 2 * n, {1, 2, 4, 4});
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(at(0), q.view(), k.view(), v.view(), {},
                                                     tinyllm::tensor_view<float, 4>(buf.data(), {1, 2, 4, 4})),
                      contains("attention: probs must not share memory with out"));
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(at(0), q.view(), k.view(), v.view(), {}, probs,
                                                     tinyllm::tensor_view<float, 3>(probs.data() + 4, {1, 2, 4})),
                      contains("attention: lse must not share memory with probs"));
    attention_options alibi;
    alibi.alibi_slopes = {buf.data() + 3, {2}};
    CHECK_THROWS_WITH(tinyllm::cpu::attention<float>(at(0), q.view(), k.view(), v.view(), alibi),
                      contains("attention: out must not share memory with alibi_slopes"));
    // The tiled version checks the same.
    CHECK_THROWS_WITH(tinyllm::cpu::attention_tiled<float>(at(0), q.view(), copy_to(at(0), k), v.view()),
                      contains("attention_tiled: out must not share memory with k"));
    CHECK_THROWS_WITH(tinyllm::cpu::attention_tiled<float>(at(2), copy_to(at(0), q), k.view(), v.view()),
                      contains("attention_tiled: out must be exactly q (in place) or not share memory with it"));

    // Allowed: out exactly q (each query row is read before its output is written) ...
    const auto in_place = [&](auto attend) {
        const view4 x = at(0);
        attend(x, copy_to(x, q));
        return std::vector<float>(x.data(), x.data() + n);
    };
    CHECK(in_place([&](view4 o, cview4 qq) { tinyllm::cpu::attention<float>(o, qq, k.view(), v.view()); }) ==
          want.values());
    tensor<float, 4> tiled(s);
    tinyllm::cpu::attention_tiled<float>(tiled.view(), q.view(), k.view(), v.view());
    CHECK(in_place([&](view4 o, cview4 qq) { tinyllm::cpu::attention_tiled<float>(o, qq, k.view(), v.view()); }) ==
          tiled.values());
    // ... and q, k, v and out as the heads of one fused (B, T, 4 H, D) buffer: interleaved, never overlapping.
    std::vector<float> fused(static_cast<std::size_t>(4 * n));
    const extents<4> fused_strides{4 * n, 4 * 2 * 8, 8, 1};
    const auto head = [&](index_t first) { return view4(fused.data() + first * 2 * 8, s, fused_strides); };
    for (index_t t = 0; t < 4; ++t)
        for (index_t h = 0; h < 2; ++h)
            for (index_t d = 0; d < 8; ++d) {
                head(0)(0, t, h, d) = q(0, t, h, d);
                head(1)(0, t, h, d) = k(0, t, h, d);
                head(2)(0, t, h, d) = v(0, t, h, d);
            }
    tinyllm::cpu::attention<float>(head(3), head(0), head(1), head(2));
    for (index_t t = 0; t < 4; ++t)
        for (index_t h = 0; h < 2; ++h)
            for (index_t d = 0; d < 8; ++d) CHECK(head(3)(0, t, h, d) == want(0, t, h, d));
}

TEST_CASE("attention_backward: gradients over each other are refused, over an input not", "[attention][error]") {
    using view4 = tinyllm::tensor_view<float, 4>;
    const extents<4> s{1, 4, 2, 8};
    const index_t n = s.product();
    const auto q = random_tensor(s, 4), k = random_tensor(s, 5), v = random_tensor(s, 6), dout = random_tensor(s, 7);
    tensor<float, 4> dq(s), dk(s), dv(s);
    tinyllm::cpu::attention_backward<float>(dq.view(), dk.view(), dv.view(), dout.view(), q.view(), k.view(), v.view());
    std::vector<float> buf(static_cast<std::size_t>(3 * n));
    const auto at = [&](index_t offset) { return view4(buf.data() + offset, s); };

    CHECK_THROWS_WITH(
        tinyllm::cpu::attention_backward<float>(at(0), at(1), at(2 * n), dout.view(), q.view(), k.view(), v.view()),
        contains("attention_backward: dq must not share memory with dk"));
    CHECK_THROWS_WITH(
        tinyllm::cpu::attention_backward<float>(view4{}, at(0), at(n - 8), dout.view(), q.view(), k.view(), v.view()),
        contains("attention_backward: dk must not share memory with dv"));
    CHECK_THROWS_WITH(tinyllm::cpu::attention_backward<float>(at(0), view4(buf.data() + n, s, {0, 0, 8, 1}), view4{},
                                                              dout.view(), q.view(), k.view(), v.view()),
                      contains("attention_backward: dk has shape (1, 4, 2, 8) and strides (0, 0, 8, 1)"));
    tensor<float, 4> out(s);
    tensor<float, 3> lse(extents<3>{1, 2, 4});
    tinyllm::cpu::attention<float>(out.view(), q.view(), k.view(), v.view(), {}, {}, lse.view());
    CHECK_THROWS_WITH(tinyllm::cpu::attention_backward_tiled<float>(at(0), at(n), at(n + 1), dout.view(), q.view(),
                                                                    k.view(), v.view(), out.view(), lse.view()),
                      contains("attention_backward_tiled: dk must not share memory with dv"));

    // Allowed: dq, dk and dv as the heads of one fused (B, T, 3 H, D) buffer (the model's layout) ...
    std::vector<float> fused(static_cast<std::size_t>(3 * n));
    const extents<4> fused_strides{3 * n, 3 * 2 * 8, 8, 1};
    const auto head = [&](index_t first) { return view4(fused.data() + first * 2 * 8, s, fused_strides); };
    tinyllm::cpu::attention_backward<float>(head(0), head(1), head(2), dout.view(), q.view(), k.view(), v.view());
    for (index_t t = 0; t < 4; ++t)
        for (index_t h = 0; h < 2; ++h)
            for (index_t d = 0; d < 8; ++d) {
                CHECK(head(0)(0, t, h, d) == dq(0, t, h, d));
                CHECK(head(1)(0, t, h, d) == dk(0, t, h, d));
                CHECK(head(2)(0, t, h, d) == dv(0, t, h, d));
            }
    // ... and a gradient over an input (everything is read before anything is written).
    auto k_then_dk = k;
    tinyllm::cpu::attention_backward<float>(view4{}, k_then_dk.view(), view4{}, dout.view(), q.view(), k_then_dk.view(),
                                            v.view());
    CHECK(k_then_dk.values() == dk.values());
}

// ---- the tensor-core kernel's index arithmetic, on an emulated warp ----------------

namespace {

// One register of each of 4 fragments per lane, each holding two 16-bit values
// (emulated in float: the layout is what is tested, not the rounding).
using lane_regs = std::array<std::array<std::array<float, 2>, 4>, 32>;

// ldmatrix.x4 by the fragment rules of tinyllm/detail/mma_fragments.hpp (the
// simulated GPU executes the instruction with the same function): lane l
// supplies the address of one row of 8 values.
lane_regs emulate_ldmatrix_x4(const std::vector<float>& smem, const std::array<int, 32>& address, bool trans) {
    float rows[32][8];
    for (int l = 0; l < 32; ++l)
        for (int c = 0; c < 8; ++c) rows[l][c] = smem[static_cast<std::size_t>(address[static_cast<std::size_t>(l)] + c)];
    lane_regs out{};
    for (int l = 0; l < 32; ++l)
        for (int m = 0; m < 4; ++m) {
            float pair[2];
            tinyllm::detail::ldmatrix_pair(pair, rows, m, l, trans);
            out[static_cast<std::size_t>(l)][static_cast<std::size_t>(m)] = {pair[0], pair[1]};
        }
    return out;
}

// mma.m16n8k16: c += A (16x16) * B (16x8), where a = registers 0..3 of `a`,
// b0/b1 = registers b_first, b_first + 1 of `b` (tinyllm/detail/mma_fragments.hpp).
void emulate_mma(std::array<std::array<float, 4>, 32>& c, const lane_regs& a, const lane_regs& b, int b_first) {
    float A[16][16], B[16][8];
    tinyllm::detail::mma_operands(
        A, B,
        [&](int l, int r, int x) {
            return a[static_cast<std::size_t>(l)][static_cast<std::size_t>(r)][static_cast<std::size_t>(x)];
        },
        [&](int l, int r, int x) {
            return b[static_cast<std::size_t>(l)][static_cast<std::size_t>(b_first + r)][static_cast<std::size_t>(x)];
        });
    for (int l = 0; l < 32; ++l) {
        auto& cl = c[static_cast<std::size_t>(l)];
        float in[4] = {cl[0], cl[1], cl[2], cl[3]}, out[4];
        tinyllm::detail::mma_lane_result(out, A, B, in, l);
        for (int e = 0; e < 4; ++e) cl[static_cast<std::size_t>(e)] = out[e];
    }
}

}  // namespace

TEST_CASE("attention v4 index arithmetic computes Q K^T and P V on an emulated warp", "[attention][mma]") {
    namespace d = tinyllm::detail;
    for (int D : {64, 128}) {
        const int LD = D + 8, BK = 64;  // the kernel's padded row stride and key tile
        // Shared memory of one warp: 16 query rows, 64 keys, 64 values, [row][LD].
        auto fill = [&](int rows, std::uint64_t which) {
            std::vector<float> m(static_cast<std::size_t>(rows * LD), std::nanf(""));  // padding must never be read
            const auto r = tinyllm_test::random_floats(static_cast<std::size_t>(rows * D), which);
            for (int i = 0; i < rows; ++i)
                for (int j = 0; j < D; ++j)
                    m[static_cast<std::size_t>(i * LD + j)] = r[static_cast<std::size_t>(i * D + j)];
            return m;
        };
        const auto qs = fill(16, 100 + static_cast<std::uint64_t>(D)), ks = fill(BK, 200), vs = fill(BK, 300);
        auto at = [&](const std::vector<float>& m, int row, int col) { return m[static_cast<std::size_t>(row * LD + col)]; };
        auto addresses = [](auto&& f) {
            std::array<int, 32> a{};
            for (int l = 0; l < 32; ++l) a[static_cast<std::size_t>(l)] = f(l);
            return a;
        };

        // S = Q K^T exactly as the kernel's loops do it.
        std::vector<lane_regs> qf;
        for (int kk = 0; kk < D / 16; ++kk)
            qf.push_back(emulate_ldmatrix_x4(qs, addresses([&](int l) { return d::mma_q_offset(l, LD, kk); }), false));
        std::vector<std::array<std::array<float, 4>, 32>> s(static_cast<std::size_t>(BK / 8));
        for (auto& tile : s)
            for (auto& lane : tile) lane.fill(0.0f);
        for (int kk = 0; kk < D / 16; ++kk)
            for (int np = 0; np < BK / 16; ++np) {
                const auto kf = emulate_ldmatrix_x4(ks, addresses([&](int l) { return d::mma_k_offset(l, LD, np, kk); }), false);
                emulate_mma(s[static_cast<std::size_t>(2 * np)], qf[static_cast<std::size_t>(kk)], kf, 0);
                emulate_mma(s[static_cast<std::size_t>(2 * np + 1)], qf[static_cast<std::size_t>(kk)], kf, 2);
            }
        double worst = 0;
        for (int n = 0; n < BK / 8; ++n)
            for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) {
                    const int row = d::mma_c_row(l, e), key = 8 * n + d::mma_c_col(l, e);
                    double want = 0;
                    for (int f = 0; f < D; ++f) want += double(at(qs, row, f)) * at(ks, key, f);
                    worst = std::max(worst, std::fabs(s[static_cast<std::size_t>(n)][static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] - want));
                }
        INFO("D = " << D << ": S max-abs error " << worst);
        REQUIRE(worst < 1e-4);

        // O = P V with P = S taken straight from the accumulators (C tiles 2kk, 2kk+1 -> A).
        std::vector<std::array<std::array<float, 4>, 32>> o(static_cast<std::size_t>(D / 8));
        for (auto& tile : o)
            for (auto& lane : tile) lane.fill(0.0f);
        for (int kk = 0; kk < BK / 16; ++kk) {
            lane_regs pf{};
            for (int l = 0; l < 32; ++l) {
                const auto& lo = s[static_cast<std::size_t>(2 * kk)][static_cast<std::size_t>(l)];
                const auto& hi = s[static_cast<std::size_t>(2 * kk + 1)][static_cast<std::size_t>(l)];
                pf[static_cast<std::size_t>(l)] = {{{lo[0], lo[1]}, {lo[2], lo[3]}, {hi[0], hi[1]}, {hi[2], hi[3]}}};
            }
            for (int dp = 0; dp < D / 16; ++dp) {
                const auto vf = emulate_ldmatrix_x4(vs, addresses([&](int l) { return d::mma_v_offset(l, LD, kk, dp); }), true);
                emulate_mma(o[static_cast<std::size_t>(2 * dp)], pf, vf, 0);
                emulate_mma(o[static_cast<std::size_t>(2 * dp + 1)], pf, vf, 2);
            }
        }
        // The reference P V from the S just checked (P[row][key] read back through the C layout).
        std::vector<double> p(16 * BK);
        for (int n = 0; n < BK / 8; ++n)
            for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e)
                    p[static_cast<std::size_t>(d::mma_c_row(l, e) * BK + 8 * n + d::mma_c_col(l, e))] =
                        s[static_cast<std::size_t>(n)][static_cast<std::size_t>(l)][static_cast<std::size_t>(e)];
        worst = 0;
        for (int n = 0; n < D / 8; ++n)
            for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) {
                    const int row = d::mma_c_row(l, e), feature = 8 * n + d::mma_c_col(l, e);
                    double want = 0;
                    for (int j = 0; j < BK; ++j) want += p[static_cast<std::size_t>(row * BK + j)] * at(vs, j, feature);
                    worst = std::max(worst, std::fabs(o[static_cast<std::size_t>(n)][static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] - want));
                }
        INFO("D = " << D << ": O max-abs error " << worst);
        REQUIRE(worst < 1e-3);
    }
}

TEST_CASE("attention v5 swizzle: a bijection, conflict-free ldmatrix, and Q K^T, P V on an emulated warp", "[attention][mma]") {
    namespace d = tinyllm::detail;
    for (int D : {64, 128}) {
        INFO("D = " << D);
        const int BK = 64;
        // A bijection: each row's chunks land on the row's own chunks, each exactly once.
        for (int row = 0; row < 128; ++row) {
            std::vector<int> hits(static_cast<std::size_t>(D / 8), 0);
            for (int col = 0; col < D; col += 8) {
                const int off = d::mma_swizzle(row, col, D);
                REQUIRE(off % 8 == 0);  // 16-byte aligned: cp.async and ldmatrix rows
                REQUIRE(off / D == row);
                ++hits[static_cast<std::size_t>((off % D) / 8)];
                for (int e = 1; e < 8; ++e) REQUIRE(d::mma_swizzle(row, col + e, D) == off + e);  // order inside a chunk
            }
            for (int h : hits) REQUIRE(h == 1);
        }
        // The decomposed ldmatrix addresses equal the swizzle of v4's rows and columns (ld = D).
        for (int l = 0; l < 32; ++l)
            for (int s = 0; s < D / 16; ++s) {
                const int q = d::mma_q_offset(l, D, s), v = d::mma_v_offset(l, D, 0, s);
                REQUIRE(d::swizzled_q_offset(l, D, s) == d::mma_swizzle(q / D, q % D, D));
                REQUIRE(d::swizzled_v_offset(l, D, 0, s) == d::mma_swizzle(v / D, v % D, D));
                for (int np = 0; np < BK / 16; ++np) {
                    const int k = d::mma_k_offset(l, D, np, s), v2 = d::mma_v_offset(l, D, np, s);
                    REQUIRE(d::swizzled_k_offset(l, D, np, s) == d::mma_swizzle(k / D, k % D, D));
                    REQUIRE(d::swizzled_v_offset(l, D, np, s) == d::mma_swizzle(v2 / D, v2 % D, D));
                }
            }
        // Each of ldmatrix.x4's 4 matrices reads 8 row segments (lanes 8m .. 8m+7): they must
        // fall in 8 different 16-byte bank groups, or the access is serialized.
        auto conflict_free = [](auto&& offset) {
            for (int m = 0; m < 4; ++m) {
                std::array<int, 8> groups{};
                for (int r = 0; r < 8; ++r) ++groups[static_cast<std::size_t>(tinyllm::detail::bank_group_of(offset(8 * m + r)))];
                for (int g : groups)
                    if (g != 1) return false;
            }
            return true;
        };
        for (int s = 0; s < D / 16; ++s) {
            CHECK(conflict_free([&](int l) { return d::swizzled_q_offset(l, D, s); }));
            for (int t = 0; t < BK / 16; ++t) {
                CHECK(conflict_free([&](int l) { return d::swizzled_k_offset(l, D, t, s); }));
                CHECK(conflict_free([&](int l) { return d::swizzled_v_offset(l, D, t, s); }));
            }
        }
        // Unswizzled rows of exactly D elements would conflict 8 ways (what v4 padded away): the check can fail.
        CHECK_FALSE(conflict_free([&](int l) { return d::mma_k_offset(l, D, 0, 0); }));

        // Q K^T and P V through the swizzled tiles, as the kernel's loops do them.
        auto fill = [&](int rows, std::uint64_t which) {
            std::vector<float> m(static_cast<std::size_t>(rows * D), std::nanf(""));
            const auto r = tinyllm_test::random_floats(static_cast<std::size_t>(rows * D), which);
            for (int i = 0; i < rows; ++i)
                for (int j = 0; j < D; ++j)
                    m[static_cast<std::size_t>(d::mma_swizzle(i, j, D))] = r[static_cast<std::size_t>(i * D + j)];
            return std::pair{m, r};  // swizzled tile, plain row-major values
        };
        const auto [qs, qr] = fill(16, 400 + static_cast<std::uint64_t>(D));
        const auto [ks, kr] = fill(BK, 500);
        const auto [vs, vr] = fill(BK, 600);
        auto at = [&](const std::vector<float>& m, int row, int col) { return m[static_cast<std::size_t>(row * D + col)]; };
        auto addresses = [](auto&& f) {
            std::array<int, 32> a{};
            for (int l = 0; l < 32; ++l) a[static_cast<std::size_t>(l)] = f(l);
            return a;
        };
        std::vector<std::array<std::array<float, 4>, 32>> s(static_cast<std::size_t>(BK / 8));
        for (auto& tile : s)
            for (auto& lane : tile) lane.fill(0.0f);
        for (int kk = 0; kk < D / 16; ++kk) {
            const auto qf = emulate_ldmatrix_x4(qs, addresses([&](int l) { return d::swizzled_q_offset(l, D, kk); }), false);
            for (int np = 0; np < BK / 16; ++np) {
                const auto kf = emulate_ldmatrix_x4(ks, addresses([&](int l) { return d::swizzled_k_offset(l, D, np, kk); }), false);
                emulate_mma(s[static_cast<std::size_t>(2 * np)], qf, kf, 0);
                emulate_mma(s[static_cast<std::size_t>(2 * np + 1)], qf, kf, 2);
            }
        }
        double worst = 0;
        std::vector<double> p(16 * BK);
        for (int n = 0; n < BK / 8; ++n)
            for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) {
                    const int row = d::mma_c_row(l, e), key = 8 * n + d::mma_c_col(l, e);
                    double want = 0;
                    for (int f = 0; f < D; ++f) want += double(at(qr, row, f)) * at(kr, key, f);
                    const float got = s[static_cast<std::size_t>(n)][static_cast<std::size_t>(l)][static_cast<std::size_t>(e)];
                    worst = std::max(worst, std::fabs(got - want));
                    p[static_cast<std::size_t>(row * BK + key)] = got;
                }
        INFO("S max-abs error " << worst);
        REQUIRE(worst < 1e-4);
        std::vector<std::array<std::array<float, 4>, 32>> o(static_cast<std::size_t>(D / 8));
        for (auto& tile : o)
            for (auto& lane : tile) lane.fill(0.0f);
        for (int kk = 0; kk < BK / 16; ++kk) {
            lane_regs pf{};
            for (int l = 0; l < 32; ++l) {
                const auto& lo = s[static_cast<std::size_t>(2 * kk)][static_cast<std::size_t>(l)];
                const auto& hi = s[static_cast<std::size_t>(2 * kk + 1)][static_cast<std::size_t>(l)];
                pf[static_cast<std::size_t>(l)] = {{{lo[0], lo[1]}, {lo[2], lo[3]}, {hi[0], hi[1]}, {hi[2], hi[3]}}};
            }
            for (int dp = 0; dp < D / 16; ++dp) {
                const auto vf = emulate_ldmatrix_x4(vs, addresses([&](int l) { return d::swizzled_v_offset(l, D, kk, dp); }), true);
                emulate_mma(o[static_cast<std::size_t>(2 * dp)], pf, vf, 0);
                emulate_mma(o[static_cast<std::size_t>(2 * dp + 1)], pf, vf, 2);
            }
        }
        worst = 0;
        for (int n = 0; n < D / 8; ++n)
            for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) {
                    const int row = d::mma_c_row(l, e), feature = 8 * n + d::mma_c_col(l, e);
                    double want = 0;
                    for (int j = 0; j < BK; ++j) want += p[static_cast<std::size_t>(row * BK + j)] * at(vr, j, feature);
                    worst = std::max(worst, std::fabs(o[static_cast<std::size_t>(n)][static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] - want));
                }
        INFO("O max-abs error " << worst);
        REQUIRE(worst < 1e-3);
    }
}

// Attention v6 (cuda/tinyllm/cuda/attention_wgmma.cuh) stores its tiles with
// wgmma_tile_offset and hands wgmma descriptors of them; the instruction then
// finds each operand element by the PTX ISA's canonical 128-byte-swizzle
// layouts (wgmma_k_major_address / wgmma_mn_major_address, which the simulated
// GPU executes with). These must name the same bytes.
TEST_CASE("attention v6 wgmma layouts: tiles, descriptors and fragments agree", "[attention][mma]") {
    namespace d = tinyllm::detail;
    // The descriptor's bit fields (PTX ISA, "Matrix Descriptor Format"): start >> 4 in bits 0-13, LBO >> 4 in
    // 16-29, SBO >> 4 in 32-45, base offset 0, swizzle mode 1 (128-byte) in bits 62-63.
    REQUIRE(d::wgmma_descriptor(0x1230, 16, 1024) ==
            (0x123ull | (1ull << 16) | (64ull << 32) | (1ull << 62)));
    const d::wgmma_descriptor_fields f = d::wgmma_decode(d::wgmma_descriptor(0x3ff70, 16384, 1024));
    CHECK((f.start == 0x3ff70 && f.lbo == 16384 && f.sbo == 1024 && f.base_offset == 0 && f.swizzle == 1));
    // The 128-byte swizzle: the chunk (address bits 4-6) XOR the row within 8 (bits 7-9).
    CHECK(d::wgmma_swizzle128(3 * 128 + 5 * 16 + 6) == 3 * 128 + (5 ^ 3) * 16 + 6);
    CHECK(d::wgmma_swizzle128(1024 + 9 * 128) == 1024 + 9 * 128 + 16);

    for (const int D : {64, 128}) {
        INFO("D = " << D);
        const int rows = 128;
        const std::uint32_t tile = 3 * 1024;  // a 1024-byte aligned tile address
        // A bijection onto the tile's bytes, 8 consecutive features in one 16-byte chunk.
        std::vector<int> seen(static_cast<std::size_t>(rows * D), 0);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < D; ++c) {
                const std::uint32_t off = d::wgmma_tile_offset(r, c, rows);
                REQUIRE(off % 2 == 0);
                REQUIRE(off < static_cast<std::uint32_t>(rows * D * 2));
                ++seen[off / 2];
                if (c % 8) REQUIRE(off == d::wgmma_tile_offset(r, c - c % 8, rows) + 2 * (c % 8));
            }
        CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
        // Q (A, rows 0.. and 64.. per warpgroup) and K (B, 128 keys): K-major descriptors, every step.
        for (int step = 0; step < D / 16; ++step)
            for (const int row0 : {0, 64}) {
                const d::wgmma_descriptor_fields q =
                    d::wgmma_decode(d::wgmma_advance(d::wgmma_descriptor(tile, 16, 1024), d::wgmma_k_major_step(rows, row0, step)));
                const int mn_count = row0 == 0 ? 128 : 64;  // K spans all 128 rows
                for (int mn = 0; mn < mn_count; ++mn)
                    for (int k = 0; k < 16; ++k)
                        REQUIRE(d::wgmma_k_major_address(q, mn, k) == tile + d::wgmma_tile_offset(row0 + mn, 16 * step + k, rows));
            }
        // V (B of P V): N-major, keys along K, every feature.
        for (int kk = 0; kk < rows / 16; ++kk) {
            const d::wgmma_descriptor_fields v =
                d::wgmma_decode(d::wgmma_advance(d::wgmma_descriptor(tile, rows * 128, 1024), d::wgmma_n_major_step(kk)));
            for (int n = 0; n < D; ++n)
                for (int k = 0; k < 16; ++k)
                    REQUIRE(d::wgmma_mn_major_address(v, n, k) == tile + d::wgmma_tile_offset(16 * kk + k, n, rows));
        }
    }
    // The accumulator map covers a 64 x N tile once; and the kernel's P packing (registers
    // 8kk + 2r, +1 of S into A register r of step kk) is the A layout: rows g, g + 8 of
    // each warp's 16, keys 2t, 2t + 1 (+ 8 for registers 2, 3).
    for (const int N : {64, 128}) {
        std::vector<int> hit(static_cast<std::size_t>(64 * N), 0);
        for (int t = 0; t < 128; ++t)
            for (int i = 0; i < N / 2; ++i) ++hit[static_cast<std::size_t>(d::wgmma_d_row(t, i) * N + d::wgmma_d_col(t, i))];
        CHECK(std::all_of(hit.begin(), hit.end(), [](int n) { return n == 1; }));
    }
    for (int t = 0; t < 128; ++t)
        for (int kk = 0; kk < 8; ++kk)
            for (int r = 0; r < 4; ++r)
                for (int x = 0; x < 2; ++x) {
                    const int i = 8 * kk + 2 * r + x, lane = t % 32;
                    REQUIRE(d::wgmma_d_row(t, i) == 16 * (t / 32) + lane / 4 + 8 * (r % 2));
                    REQUIRE(d::wgmma_d_col(t, i) - 16 * kk == 2 * (lane % 4) + x + 8 * (r / 2));
                }
}
