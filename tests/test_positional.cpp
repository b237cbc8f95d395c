// Tests for tinyllm/positional.hpp: sinusoidal and learned encodings, RoPE
// (both pairings, partial rotary, scalings, the relative-position property),
// ALiBi slopes and biases, and the errors for bad configurations.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/positional.hpp>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

using tinyllm::index_t;
using tinyllm::rope_config;
using tinyllm::rope_pairing;
using tinyllm::rope_scaling;
using tinyllm_test::contains;
using tinyllm_test::tolerance;

namespace {

template <class P = std::int64_t>
std::vector<P> iota_positions(index_t n, P start = 0) {
    std::vector<P> p(static_cast<std::size_t>(n));
    std::iota(p.begin(), p.end(), start);
    return p;
}

// An independent float64 RoPE: the textbook formula with the pairing spelled
// out, unscaled inverse frequencies theta^(-2i/r), angles in double.
std::vector<double> rope_reference(const std::vector<float>& x, index_t B, index_t T, index_t H, index_t D,
                                   const std::vector<std::int64_t>& positions, index_t rotary, double theta,
                                   rope_pairing pairing) {
    std::vector<double> out(x.begin(), x.end());
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t)
            for (index_t h = 0; h < H; ++h) {
                const std::size_t row = static_cast<std::size_t>(((b * T + t) * H + h) * D);
                const double pos = static_cast<double>(positions[static_cast<std::size_t>(b * T + t)]);
                for (index_t i = 0; i < rotary / 2; ++i) {
                    const double angle = pos * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary));
                    const std::size_t f0 = row + static_cast<std::size_t>(pairing == rope_pairing::rotate_half ? i : 2 * i);
                    const std::size_t f1 =
                        row + static_cast<std::size_t>(pairing == rope_pairing::rotate_half ? i + rotary / 2 : 2 * i + 1);
                    const double a = x[f0], c = x[f1];
                    out[f0] = a * std::cos(angle) - c * std::sin(angle);
                    out[f1] = c * std::cos(angle) + a * std::sin(angle);
                }
            }
    return out;
}

double dot(const float* a, const float* b, index_t n) {
    double s = 0;
    for (index_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
}

}  // namespace

TEST_CASE("sinusoidal encoding matches the paper's formula in float64", "[positional][sinusoidal]") {
    for (index_t D : {index_t{16}, index_t{7}}) {
        for (float base : {10000.0f, 100.0f}) {
            const index_t T = 100;
            tinyllm::tensor<float, 2> pe({T, D});
            auto positions = iota_positions<std::int32_t>(T);
            tinyllm::cpu::sinusoidal_encoding(pe.view(), tinyllm::tensor_view<const std::int32_t, 1>(positions.data(), {T}),
                                              base);
            std::vector<double> want;
            for (index_t p = 0; p < T; ++p)
                for (index_t j = 0; j < D; ++j) {
                    const double angle = static_cast<double>(p) / std::pow(static_cast<double>(base),
                                                                            static_cast<double>(2 * (j / 2)) / D);
                    want.push_back(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
                }
            // float angle p * w has a rounding error of about p * 6e-8 radians.
            TINYLLM_REQUIRE_CLOSE(pe.values(), want, tolerance{2e-5, 0, 1e-5},
                                  "sinusoidal D=" + std::to_string(D) + " base=" + std::to_string(base));
        }
    }
    // Hand values: position 0 is (0, 1, 0, 1, ...); position 1, feature 0 is sin(1), feature 1 is cos(1).
    CHECK(tinyllm::sinusoidal_value(0, 0, 8) == 0.0f);
    CHECK(tinyllm::sinusoidal_value(0, 1, 8) == 1.0f);
    CHECK(tinyllm::sinusoidal_value(1, 0, 8) == tinyllm_test::Approx(std::sin(1.0)).epsilon(1e-6));
    CHECK(tinyllm::sinusoidal_value(1, 1, 8) == tinyllm_test::Approx(std::cos(1.0)).epsilon(1e-6));
    // Feature 2 of 8 is pair 1: w = 10000^(-2/8) = 0.1, so position 3 gives sin(0.3).
    CHECK(tinyllm::sinusoidal_value(3, 2, 8) == tinyllm_test::Approx(std::sin(0.3)).epsilon(1e-6));
}

TEST_CASE("add_sinusoidal and add_learned_positions add the right row to every token", "[positional][absolute]") {
    const index_t B = 2, T = 5, D = 6;
    const auto x0 = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * D), 1);
    // Two sequences with different position ids (the second continues a cache at 7).
    std::vector<std::int64_t> positions = {0, 1, 2, 3, 4, 7, 8, 9, 10, 11};
    tinyllm::tensor_view<const std::int64_t, 2> pos(positions.data(), {B, T});

    std::vector<float> x = x0;
    tinyllm::cpu::add_sinusoidal(tinyllm::tensor_view<float, 3>(x.data(), {B, T, D}), pos);
    std::vector<double> want;
    for (index_t r = 0; r < B * T; ++r)
        for (index_t j = 0; j < D; ++j) {
            const double angle = static_cast<double>(positions[static_cast<std::size_t>(r)]) /
                                 std::pow(10000.0, static_cast<double>(2 * (j / 2)) / D);
            want.push_back(x0[static_cast<std::size_t>(r * D + j)] + (j % 2 == 0 ? std::sin(angle) : std::cos(angle)));
        }
    TINYLLM_REQUIRE_CLOSE(x, want, tolerance{1e-5, 0, 1e-5}, "add_sinusoidal");

    const index_t P = 16;
    const auto table = tinyllm_test::random_floats(static_cast<std::size_t>(P * D), 2);
    x = x0;
    tinyllm::cpu::add_learned_positions(tinyllm::tensor_view<float, 3>(x.data(), {B, T, D}),
                                        tinyllm::tensor_view<const float, 2>(table.data(), {P, D}), pos);
    std::vector<float> expected;
    for (index_t r = 0; r < B * T; ++r)
        for (index_t j = 0; j < D; ++j)
            expected.push_back(x0[static_cast<std::size_t>(r * D + j)] +
                               table[static_cast<std::size_t>(positions[static_cast<std::size_t>(r)] * D + j)]);
    TINYLLM_REQUIRE_CLOSE(x, expected, tolerance{0, 0, 0}, "add_learned_positions");

    // A position outside the table is an error, not a read past its end.
    positions[3] = P;
    CHECK_THROWS_WITH(tinyllm::cpu::add_learned_positions(tinyllm::tensor_view<float, 3>(x.data(), {B, T, D}),
                                                          tinyllm::tensor_view<const float, 2>(table.data(), {P, D}), pos),
                      contains("position 16 at (0, 3) is outside the table's [0, 16)"));
    CHECK_THROWS_WITH(tinyllm::cpu::add_sinusoidal(tinyllm::tensor_view<float, 3>(x.data(), {B, T - 1, D}),
                                                   tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), {B, T})),
                      contains("add_sinusoidal: positions has shape (2, 5)"));
}

TEST_CASE("RoPE on one pair is the 2-D rotation by position times frequency", "[positional][rope]") {
    // D = 2: one pair, w_0 = 1, so the vector at position p turns by p radians.
    rope_config cfg{.rotary_dim = 2};
    for (auto pairing : {rope_pairing::rotate_half, rope_pairing::interleaved}) {
        cfg.pairing = pairing;
        std::vector<float> x = {1, 0, 3, 4};  // (B=1, T=2, H=1, D=2)
        std::vector<std::int32_t> p = {1, 2};
        tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(x.data(), {1, 2, 1, 2}),
                                 tinyllm::tensor_view<const std::int32_t, 2>(p.data(), {1, 2}), cfg);
        CHECK(x[0] == tinyllm_test::Approx(std::cos(1.0)).epsilon(1e-6));
        CHECK(x[1] == tinyllm_test::Approx(std::sin(1.0)).epsilon(1e-6));
        CHECK(x[2] == tinyllm_test::Approx(3 * std::cos(2.0) - 4 * std::sin(2.0)).epsilon(1e-6));
        CHECK(x[3] == tinyllm_test::Approx(4 * std::cos(2.0) + 3 * std::sin(2.0)).epsilon(1e-6));
    }
    // D = 4, theta = 10000: w_0 = 1, w_1 = 10000^(-1/2) = 0.01. Position 3.
    // rotate_half pairs features (0, 2) and (1, 3); interleaved pairs (0, 1) and (2, 3).
    const double c0 = std::cos(3.0), s0 = std::sin(3.0), c1 = std::cos(0.03), s1 = std::sin(0.03);
    const std::vector<float> v = {1, 2, 3, 4};
    std::vector<std::int64_t> p = {3};
    cfg = rope_config{.rotary_dim = 4};
    std::vector<float> x = v;
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(x.data(), {1, 1, 1, 4}),
                             tinyllm::tensor_view<const std::int64_t, 2>(p.data(), {1, 1}), cfg);
    std::vector<double> want = {1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1};
    TINYLLM_REQUIRE_CLOSE(x, want, tolerance{1e-6, 1e-6}, "rotate_half D=4 by hand");
    cfg.pairing = rope_pairing::interleaved;
    x = v;
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(x.data(), {1, 1, 1, 4}),
                             tinyllm::tensor_view<const std::int64_t, 2>(p.data(), {1, 1}), cfg);
    want = {1 * c0 - 2 * s0, 2 * c0 + 1 * s0, 3 * c1 - 4 * s1, 4 * c1 + 3 * s1};
    TINYLLM_REQUIRE_CLOSE(x, want, tolerance{1e-6, 1e-6}, "interleaved D=4 by hand");
}

TEST_CASE("RoPE matches a float64 reference for both pairings and partial rotary", "[positional][rope]") {
    const index_t B = 2, T = 9, H = 3;
    for (auto pairing : {rope_pairing::rotate_half, rope_pairing::interleaved})
        for (index_t D : {index_t{64}, index_t{10}})
            for (index_t rotary : {D, D / 2 % 2 ? D / 2 + 1 : D / 2}) {
                const auto x0 = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * H * D), 3);
                std::vector<std::int64_t> positions;
                for (index_t b = 0; b < B; ++b)
                    for (index_t t = 0; t < T; ++t) positions.push_back(b == 0 ? t : 40 + 3 * t);  // prefill; decode-like
                rope_config cfg{.rotary_dim = rotary, .theta = 10000.0, .pairing = pairing};
                std::vector<float> x = x0;
                tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(x.data(), {B, T, H, D}),
                                         tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), {B, T}), cfg);
                const auto want = rope_reference(x0, B, T, H, D, positions, rotary, 10000.0, pairing);
                INFO("pairing " << tinyllm::to_string(pairing) << " D " << D << " rotary " << rotary);
                TINYLLM_REQUIRE_CLOSE(x, want, tolerance{2e-5, 1e-5, 1e-5},
                                      std::string("rope ") + std::string(tinyllm::to_string(pairing)));
                // Partial rotary: features rotary..D-1 are untouched, bit for bit.
                std::size_t changed_tail = 0;
                for (std::size_t r = 0; r < static_cast<std::size_t>(B * T * H); ++r)
                    for (index_t j = rotary; j < D; ++j)
                        changed_tail += x[r * D + static_cast<std::size_t>(j)] != x0[r * D + static_cast<std::size_t>(j)];
                CHECK(changed_tail == 0);
            }
}

TEST_CASE("RoPE on a strided view (q inside a fused qkv buffer) equals RoPE on a copy", "[positional][rope]") {
    const index_t B = 2, T = 4, H = 2, D = 8;
    auto qkv = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * 3 * H * D), 4);  // (B, T, 3H, D)
    std::vector<float> q;
    for (index_t r = 0; r < B * T; ++r)
        for (index_t j = 0; j < H * D; ++j) q.push_back(qkv[static_cast<std::size_t>(r * 3 * H * D + j)]);
    auto positions = iota_positions<std::int64_t>(B * T, 5);
    tinyllm::tensor_view<const std::int64_t, 2> pos(positions.data(), {B, T});
    const rope_config cfg{.rotary_dim = 8, .pairing = rope_pairing::interleaved};
    tinyllm::tensor_view<float, 4> fused(qkv.data(), {B, T, 3 * H, D});
    tinyllm::cpu::apply_rope(fused.narrow(2, 0, H), pos, cfg);
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(q.data(), {B, T, H, D}), pos, cfg);
    std::vector<float> q_from_fused;
    for (index_t r = 0; r < B * T; ++r)
        for (index_t j = 0; j < H * D; ++j) q_from_fused.push_back(qkv[static_cast<std::size_t>(r * 3 * H * D + j)]);
    CHECK(q_from_fused == q);
}

TEST_CASE("RoPE scores depend only on the relative position m - n", "[positional][rope]") {
    const index_t D = 64;
    const auto q0 = tinyllm_test::random_floats(static_cast<std::size_t>(D), 5);
    const auto k0 = tinyllm_test::random_floats(static_cast<std::size_t>(D), 6);
    const double scale = std::sqrt(dot(q0.data(), q0.data(), D) * dot(k0.data(), k0.data(), D));  // |q| |k|
    for (auto pairing : {rope_pairing::rotate_half, rope_pairing::interleaved})
        for (auto scaling : {rope_scaling::none, rope_scaling::llama3}) {
            rope_config cfg{.rotary_dim = D, .theta = 10000.0, .pairing = pairing, .scaling = scaling, .factor = 8.0,
                            .original_max_position_embeddings = 64};
            auto score = [&](std::int64_t m, std::int64_t n) {
                std::vector<float> q = q0, k = k0;
                std::vector<std::int64_t> pm = {m}, pn = {n};
                tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(q.data(), {1, 1, 1, D}),
                                         tinyllm::tensor_view<const std::int64_t, 2>(pm.data(), {1, 1}), cfg);
                tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(k.data(), {1, 1, 1, D}),
                                         tinyllm::tensor_view<const std::int64_t, 2>(pn.data(), {1, 1}), cfg);
                return dot(q.data(), k.data(), D);
            };
            for (std::int64_t delta : {0, 1, 5, 37}) {
                const double first = score(delta, 0);
                for (std::int64_t n : {1, 7, 100, 1000}) {
                    INFO("pairing " << tinyllm::to_string(pairing) << " scaling " << tinyllm::to_string(scaling)
                                    << " m - n = " << delta << ", n = " << n);
                    // Float angles at position ~1000 carry ~1e-4 rad of rounding.
                    CHECK(std::fabs(score(n + delta, n) - first) <= 2e-3 * scale);
                }
            }
            // ... and it does depend on the distance (the property is not trivially
            // true). For k = q the score is sum_i |q_i|^2 cos((m - n) w_i) over the
            // rotated pairs i, and cos(w) - cos(5w) = 2 sin(3w) sin(2w) >= 0 for every
            // frequency w <= 1 < pi/3: no pair cancels another. With every |q_j| >=
            // 0.5 each |q_i|^2 >= 0.5, and the highest frequency (1 unscaled, >= 1/8
            // scaled) alone gives 0.5 * 2 sin(3/8) sin(2/8) = 0.09.
            std::vector<float> q_same = tinyllm_test::random_floats(static_cast<std::size_t>(D), 7, 0.5f, 1.0f);
            for (std::size_t j = 0; j < q_same.size(); j += 3) q_same[j] = -q_same[j];
            auto self_score = [&](std::int64_t distance) {
                std::vector<float> q = q_same, k = q_same;
                std::vector<std::int64_t> pm = {distance}, pn = {0};
                tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(q.data(), {1, 1, 1, D}),
                                         tinyllm::tensor_view<const std::int64_t, 2>(pm.data(), {1, 1}), cfg);
                tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(k.data(), {1, 1, 1, D}),
                                         tinyllm::tensor_view<const std::int64_t, 2>(pn.data(), {1, 1}), cfg);
                return dot(q.data(), k.data(), D);
            };
            CHECK(self_score(1) - self_score(5) > 0.05);
        }
}

TEST_CASE("RoPE inverse frequencies under each scaling", "[positional][rope][scaling]") {
    const index_t r = 128;
    rope_config none{.rotary_dim = r, .theta = 500000.0};
    const auto w = tinyllm::cpu::rope_inverse_frequencies(none);
    REQUIRE(w.size() == 64);
    for (index_t i = 0; i < 64; ++i)
        CHECK(w[static_cast<std::size_t>(i)] ==
              tinyllm_test::Approx(std::pow(500000.0, -2.0 * static_cast<double>(i) / r)).epsilon(1e-7));

    rope_config linear = none;
    linear.scaling = rope_scaling::linear;
    linear.factor = 4.0;
    const auto wl = tinyllm::cpu::rope_inverse_frequencies(linear);
    for (index_t i = 0; i < 64; ++i)
        CHECK(wl[static_cast<std::size_t>(i)] ==
              tinyllm_test::Approx(std::pow(500000.0, -2.0 * static_cast<double>(i) / r) / 4.0).epsilon(1e-7));

    rope_config ntk = none;
    ntk.scaling = rope_scaling::ntk;
    ntk.factor = 4.0;
    const auto wn = tinyllm::cpu::rope_inverse_frequencies(ntk);
    const double ntk_base = 500000.0 * std::pow(4.0, 128.0 / 126.0);
    for (index_t i = 0; i < 64; ++i)
        CHECK(wn[static_cast<std::size_t>(i)] ==
              tinyllm_test::Approx(std::pow(ntk_base, -2.0 * static_cast<double>(i) / r)).epsilon(1e-7));
    // NTK-aware keeps the fastest pair and slows the slowest by exactly `factor`.
    CHECK(wn[0] == 1.0f);
    CHECK(wn[63] == tinyllm_test::Approx(w[63] / 4.0).epsilon(1e-6));

    // Llama 3.1 (theta 500000, factor 8, low 1, high 4, original 8192): float64
    // values from tools/rope_reference.py, an independent Python derivation.
    const struct {
        index_t i;
        double w;
    } llama3_reference[] = {
        {0, 1},                          // keep
        {10, 0.12868737343265052},       // keep
        {28, 0.0032114459947525913},     // keep
        {29, 0.0021665707635033591},     // blend
        {31, 0.00085675141291963208},    // blend
        {34, 0.00017850781276799638},    // blend
        {35, 9.5562123539646833e-05},    // divide
        {50, 4.4115346745584042e-06},    // divide
        {63, 3.0689259889145111e-07},    // divide
    };
    rope_config llama3{.rotary_dim = r, .theta = 500000.0, .scaling = rope_scaling::llama3, .factor = 8.0,
                       .low_freq_factor = 1.0, .high_freq_factor = 4.0, .original_max_position_embeddings = 8192};
    const auto w3 = tinyllm::cpu::rope_inverse_frequencies(llama3);
    for (const auto& ref : llama3_reference) {
        INFO("llama3 pair " << ref.i);
        CHECK(w3[static_cast<std::size_t>(ref.i)] == tinyllm_test::Approx(ref.w).epsilon(1e-7));
    }

    // Linear scaling by 2 at position 2p is exactly no scaling at position p.
    const index_t D = 16;
    const auto x0 = tinyllm_test::random_floats(static_cast<std::size_t>(3 * D), 8);
    std::vector<std::int64_t> p = {3, 11, 250}, p2 = {6, 22, 500};
    std::vector<float> a = x0, b = x0;
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(a.data(), {1, 3, 1, D}),
                             tinyllm::tensor_view<const std::int64_t, 2>(p.data(), {1, 3}), rope_config{.rotary_dim = D});
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(b.data(), {1, 3, 1, D}),
                             tinyllm::tensor_view<const std::int64_t, 2>(p2.data(), {1, 3}),
                             rope_config{.rotary_dim = D, .scaling = rope_scaling::linear, .factor = 2.0});
    CHECK(a == b);
}

TEST_CASE("the cos/sin cache holds the values apply_rope uses", "[positional][rope]") {
    const rope_config cfg{.rotary_dim = 6, .theta = 100.0};
    tinyllm::tensor<float, 2> c({5, 3}), s({5, 3});
    tinyllm::cpu::rope_cos_sin(c.view(), s.view(), cfg);
    for (index_t p = 0; p < 5; ++p)
        for (index_t i = 0; i < 3; ++i) {
            const double angle = static_cast<double>(p) * std::pow(100.0, -2.0 * static_cast<double>(i) / 6.0);
            CHECK(c(p, i) == tinyllm_test::Approx(std::cos(angle)).margin(1e-6));
            CHECK(s(p, i) == tinyllm_test::Approx(std::sin(angle)).margin(1e-6));
        }
    tinyllm::tensor<float, 2> wrong({5, 2});
    CHECK_THROWS_WITH(tinyllm::cpu::rope_cos_sin(wrong.view(), wrong.view(), cfg), contains("rotary_dim/2 = 3"));
}

TEST_CASE("ALiBi slopes follow the paper, for powers of two and otherwise", "[positional][alibi]") {
    // 8 heads: 1/2, 1/4, ..., 1/256 (exact powers of two).
    const auto s8 = tinyllm::alibi_slopes(8);
    REQUIRE(s8.size() == 8);
    for (int h = 0; h < 8; ++h) CHECK(s8[static_cast<std::size_t>(h)] == std::ldexp(1.0f, -(h + 1)));
    // 12 heads: the 8 slopes of 8 heads, then slopes 0, 2, 4, 6 of 16 heads
    // (2^(-(i+1)/2)): 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    const auto s12 = tinyllm::alibi_slopes(12);
    REQUIRE(s12.size() == 12);
    for (int h = 0; h < 8; ++h) CHECK(s12[static_cast<std::size_t>(h)] == std::ldexp(1.0f, -(h + 1)));
    for (int j = 0; j < 4; ++j)
        CHECK(s12[static_cast<std::size_t>(8 + j)] == tinyllm_test::Approx(std::pow(2.0, -0.5 - j)).epsilon(1e-7));
    // 3 heads: 2 heads give 1/16, 1/256; 4 heads give 1/4, 1/16, 1/64, 1/256, of which the first is added.
    const auto s3 = tinyllm::alibi_slopes(3);
    CHECK(s3 == std::vector<float>{1.0f / 16, 1.0f / 256, 1.0f / 4});
    CHECK(tinyllm::alibi_slopes(1) == std::vector<float>{1.0f / 256});
    CHECK_THROWS_WITH(tinyllm::alibi_slopes(0), contains("n_heads = 0 must be at least 1"));
}

TEST_CASE("ALiBi bias is -slope times the distance back to the key", "[positional][alibi]") {
    CHECK(tinyllm::alibi_bias(0.5f, 5, 2) == -1.5f);
    CHECK(tinyllm::alibi_bias(0.25f, 3, 3) == 0.0f);
    CHECK(tinyllm::alibi_bias(0.25f, 3, 7) == 1.0f);  // a key ahead (non-causal) gets a positive bias
    std::vector<std::int32_t> qp = {4, 5}, kp = {0, 1, 2, 3, 4, 5};
    tinyllm::tensor<float, 3> bias({2, 2, 6});
    tinyllm::cpu::alibi_bias_table(bias.view(), tinyllm::tensor_view<const std::int32_t, 1>(qp.data(), {2}),
                                   tinyllm::tensor_view<const std::int32_t, 1>(kp.data(), {6}));
    // 2 heads: slopes 1/16 and 1/256.
    CHECK(bias(0, 0, 0) == -4.0f / 16);
    CHECK(bias(0, 1, 5) == 0.0f);
    CHECK(bias(1, 1, 0) == -5.0f / 256);
    CHECK(bias(1, 0, 5) == 1.0f / 256);
}

TEST_CASE("RoPE defaults: the whole head dim rotates, positions are 0..T-1 (+ an offset)", "[positional][rope]") {
    const index_t B = 2, T = 5, H = 3, D = 16;
    const auto x0 = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * H * D), 11);
    auto explicit_rope = [&](std::int64_t offset, const rope_config& cfg) {
        std::vector<std::int64_t> positions;
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < T; ++t) positions.push_back(offset + t);
        std::vector<float> x = x0;
        tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(x.data(), {B, T, H, D}),
                                 tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), {B, T}), cfg);
        return x;
    };
    for (auto pairing : {rope_pairing::rotate_half, rope_pairing::interleaved}) {
        INFO("pairing " << tinyllm::to_string(pairing));
        const rope_config full{.rotary_dim = D, .theta = 500.0, .pairing = pairing};
        rope_config by_default{.theta = 500.0, .pairing = pairing};
        CHECK(by_default.rotary_dim == 0);
        CHECK(tinyllm::rope_rotary_dim(by_default, D) == D);
        CHECK(tinyllm::resolve_rope(by_default, D).rotary_dim == D);
        CHECK(tinyllm::resolve_rope(rope_config{.rotary_dim = 6}, D).rotary_dim == 6);
        CHECK(tinyllm::cpu::rope_inverse_frequencies(by_default, D) == tinyllm::cpu::rope_inverse_frequencies(full));
        tinyllm::tensor<float, 2> c0({7, D / 2}), s0({7, D / 2}), c1({7, D / 2}), s1({7, D / 2});
        tinyllm::cpu::rope_cos_sin(c0.view(), s0.view(), by_default, D);
        tinyllm::cpu::rope_cos_sin(c1.view(), s1.view(), full);
        CHECK(c0.values() == c1.values());
        CHECK(s0.values() == s1.values());

        const auto want0 = explicit_rope(0, full);
        // Default rotary_dim, explicit positions: the same bits as rotary_dim = D.
        CHECK(explicit_rope(0, by_default) == want0);
        // Default positions (0..T-1 in every row), on an owning tensor.
        tinyllm::tensor<float, 4> x({B, T, H, D});
        x.values() = x0;
        tinyllm::cpu::apply_rope(x, by_default);
        CHECK(x.values() == want0);
        // An offset: positions offset..offset+T-1.
        for (index_t offset : {index_t{1}, index_t{37}}) {
            x.values() = x0;
            tinyllm::cpu::apply_rope(x, full, offset);
            CHECK(x.values() == explicit_rope(offset, full));
        }
        // q and k together, default positions and an offset, owning tensors and views.
        tinyllm::tensor<float, 4> q({B, T, H, D}), k({B, T, 1, D});
        q.values() = x0;
        k.values().assign(x0.begin(), x0.begin() + B * T * D);
        std::vector<float> k_want = k.values();
        tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(k_want.data(), {B, T, 1, D}), full, 3);
        tinyllm::cpu::apply_rope(q, k.view(), by_default, 3);
        CHECK(q.values() == explicit_rope(3, full));
        CHECK(k.values() == k_want);
        // Explicit positions as an owning tensor, q and k together.
        tinyllm::tensor<std::int32_t, 2> positions({B, T});
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < T; ++t) positions(b, t) = static_cast<std::int32_t>(t);
        q.values() = x0;
        k.values().assign(x0.begin(), x0.begin() + B * T * D);
        tinyllm::cpu::apply_rope(q, k, positions, by_default);
        CHECK(q.values() == want0);
    }
}

TEST_CASE("bad RoPE configurations and shapes are clear errors", "[positional][errors]") {
    std::vector<float> x(2 * 3 * 2 * 8);
    std::vector<std::int64_t> p(2 * 3);
    tinyllm::tensor_view<float, 4> xv(x.data(), {2, 3, 2, 8});
    tinyllm::tensor_view<const std::int64_t, 2> pv(p.data(), {2, 3});
    auto apply = [&](rope_config cfg) { tinyllm::cpu::apply_rope(xv, pv, cfg); };
    CHECK_THROWS_WITH(apply({.rotary_dim = 7}), contains("rotary_dim = 7 must be even"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 10}), contains("rotary_dim = 10 must be <= the head dim 8"));
    CHECK_THROWS_WITH(apply({.rotary_dim = -2}), contains("rotary_dim = -2 must be positive (or 0: the whole head dim)"));
    CHECK_NOTHROW(apply({.rotary_dim = 0}));  // the default: the whole head dim
    {
        std::vector<float> odd(7);
        CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(odd.data(), {1, 1, 1, 7}), rope_config{}),
                          contains("rotary_dim = 0 rotates the whole head dim 7, which must be even"));
    }
    CHECK_THROWS_WITH(tinyllm::cpu::rope_inverse_frequencies(rope_config{}),
                      contains("rope_inverse_frequencies: rope_config.rotary_dim = 0 means the whole head dim"));
    CHECK_THROWS_WITH(tinyllm::cpu::rope_inverse_frequencies(rope_config{}, 9), contains("head dim 9, which must be even"));
    CHECK_THROWS_WITH(tinyllm::cpu::rope_inverse_frequencies(rope_config{.rotary_dim = 12}, 8),
                      contains("rotary_dim = 12 must be <= the head dim 8"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(xv, rope_config{}, -1),
                      contains("apply_rope: position_offset = -1 must be >= 0"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(xv, rope_config{}, std::numeric_limits<index_t>::max()),
                      contains("past the largest position index_t holds"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope_backward(xv, rope_config{}, std::numeric_limits<index_t>::max() - 1),
                      contains("apply_rope_backward: position_offset = 9223372036854775806 puts the last of"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .theta = 0}), contains("theta = 0 must be a finite number > 1"));
    // A base at or below 1: the frequencies grow (at 1e-300 they overflow to inf and the output is NaN).
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .theta = 1e-300}),
                      contains("theta = 1e-300 must be a finite number > 1"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .theta = 1}), contains("theta = 1 must be"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .theta = -1}), contains("theta = -1"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .scaling = rope_scaling::linear, .factor = 0}),
                      contains("factor = 0 must be positive (and at least 1e-19, so that every angle stays a float) "
                               "for linear scaling"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .scaling = rope_scaling::linear, .factor = 1e-39}),
                      contains("factor = 1e-39 must be positive (and at least 1e-19"));
    // 1e-38 kept the frequencies finite, but position 5's angle overflowed: NaN rotations on CPU and GPU.
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .scaling = rope_scaling::linear, .factor = 1e-38}),
                      contains("factor = 1e-38 must be positive (and at least 1e-19"));
    CHECK_NOTHROW(apply({.rotary_dim = 8, .scaling = rope_scaling::linear, .factor = 1e-19}));
    CHECK_NOTHROW(apply({.rotary_dim = 8, .scaling = rope_scaling::linear, .factor = 0.5}));
    CHECK_THROWS_WITH(apply({.rotary_dim = 2, .scaling = rope_scaling::ntk, .factor = 2}),
                      contains("ntk scaling needs rotary_dim > 2"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .scaling = rope_scaling::llama3, .factor = 8, .low_freq_factor = 4,
                             .high_freq_factor = 4}),
                      contains("high_freq_factor = 4 must be greater than low_freq_factor = 4"));
    CHECK_THROWS_WITH(apply({.rotary_dim = 8, .scaling = rope_scaling::llama3, .factor = 8,
                             .original_max_position_embeddings = 0}),
                      contains("original_max_position_embeddings = 0 must be positive"));
    // A valid scaling factor is not checked when there is no scaling.
    CHECK_NOTHROW(apply({.rotary_dim = 8, .factor = 0}));
    std::vector<std::int64_t> p_short(2 * 2);
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(xv, tinyllm::tensor_view<const std::int64_t, 2>(p_short.data(), {2, 2}),
                                               rope_config{.rotary_dim = 8}),
                      contains("apply_rope: positions has shape (2, 2) but x (2, 3, 2, 8) needs (B, T) = (2, 3)"));
}

TEST_CASE("RoPE and the absolute encodings refuse outputs over memory they cannot share", "[positional][errors]") {
    const index_t B = 1, T = 2, H = 2, D = 4;
    const rope_config cfg{};
    auto buf = tinyllm_test::random_floats(static_cast<std::size_t>(B * (T + 1) * H * D), 70);
    auto positions = iota_positions<std::int64_t>(B * T);
    tinyllm::tensor_view<const std::int64_t, 2> pos(positions.data(), {B, T});
    // A head stride of 0: both heads at one address, which would be rotated twice.
    const tinyllm::tensor_view<float, 4> one_head(buf.data(), {B, T, H, D}, {T * D, D, 0, 1});
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(one_head, cfg),
                      contains("apply_rope: x has shape (1, 2, 2, 4) and strides (8, 4, 0, 1), so two of its "
                               "elements share an address"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(one_head, pos, cfg), contains("apply_rope: x has shape (1, 2, 2, 4)"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope_backward(one_head, pos, cfg),
                      contains("apply_rope_backward: dx has shape (1, 2, 2, 4) and strides (8, 4, 0, 1)"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope_backward(one_head, cfg), contains("apply_rope_backward: dx has shape"));
    // q and k the same memory, or k one token past q: elements of both rotated twice.
    const tinyllm::tensor_view<float, 4> q(buf.data(), {B, T, H, D});
    const tinyllm::tensor_view<float, 4> k_past(buf.data() + H * D, {B, T, H, D});
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(q, q, cfg), contains("apply_rope: k must not share memory with q"));
    CHECK_THROWS_WITH(tinyllm::cpu::apply_rope(q, k_past, pos, cfg),
                      contains("apply_rope: k must not share memory with q"));
    // x over the positions it reads.
    std::vector<std::int64_t> shared(static_cast<std::size_t>(B * T * H * D), 0);
    const tinyllm::tensor_view<float, 4> x_over(reinterpret_cast<float*>(shared.data()), {B, T, H, D});
    CHECK_THROWS_WITH(
        tinyllm::cpu::apply_rope(x_over, tinyllm::tensor_view<const std::int64_t, 2>(shared.data(), {B, T}), cfg),
        contains("apply_rope: x must not share memory with positions"));
    // The absolute encodings: x over the table, x with a row stride of 0.
    auto table = tinyllm_test::random_floats(static_cast<std::size_t>(4 * D), 71);
    CHECK_THROWS_WITH(
        tinyllm::cpu::add_learned_positions(tinyllm::tensor_view<float, 3>(table.data(), {B, T, D}),
                                            tinyllm::tensor_view<const float, 2>(table.data(), {4, D}), pos),
        contains("add_learned_positions: x must not share memory with the table"));
    CHECK_THROWS_WITH(
        tinyllm::cpu::add_sinusoidal(tinyllm::tensor_view<float, 3>(buf.data(), {B, T, D}, {T * D, 0, 1}), pos),
        contains("add_sinusoidal: x has shape (1, 2, 4) and strides (8, 0, 1)"));
    std::vector<float> table_cs(static_cast<std::size_t>(3 * (D / 2)));
    const tinyllm::tensor_view<float, 2> cs(table_cs.data(), {3, D / 2});
    CHECK_THROWS_WITH(tinyllm::cpu::rope_cos_sin(cs, cs, cfg, D),
                      contains("rope_cos_sin: sin_out must not share memory with cos_out"));

    // q's and k's heads side by side in one fused buffer (and k before q) are apart: the
    // same result as rotating all the heads at once.
    auto fused = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * 3 * H * D), 72);
    auto want = fused;
    const tinyllm::tensor_view<float, 4> all(want.data(), {B, T, 3 * H, D});
    tinyllm::cpu::apply_rope(all.narrow(2, 0, 2 * H), cfg, 3);
    const tinyllm::tensor_view<float, 4> f(fused.data(), {B, T, 3 * H, D});
    CHECK_NOTHROW(tinyllm::cpu::apply_rope(f.narrow(2, H, H), f.narrow(2, 0, H), cfg, 3));
    CHECK(fused == want);
}
