// Tests for the samplers (tinyllm/sampling.hpp, tinyllm/beam_search.hpp):
// every processor on a hand-computed example, greedy tie-breaks, chi-square
// tests that the sampler draws from exactly the filtered, renormalized
// distribution, best-of-n and beam search on a hand-built step function whose
// answer is known, the shared exact arithmetic, and the error messages.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/beam_search.hpp>
#include <tinyllm/sampling.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <vector>

using tinyllm::index_t;
using tinyllm_test::contains;
namespace cpu = tinyllm::cpu;
namespace sampling = tinyllm::sampling;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

// A (1, V) view of a vector (the processors work on (B, V) tensors).
tinyllm::tensor_view<float, 2> as_row(std::vector<float>& v) {
    return {v.data(), {index_t{1}, static_cast<index_t>(v.size())}};
}
tinyllm::tensor_view<const tinyllm::token_id, 2> as_row(const std::vector<tinyllm::token_id>& v) {
    return {v.data(), {index_t{1}, static_cast<index_t>(v.size())}};
}

std::vector<float> log_of(const std::vector<double>& p) {
    std::vector<float> z;
    for (double v : p) z.push_back(static_cast<float>(std::log(v)));
    return z;
}

std::vector<bool> kept(const std::vector<float>& z) {
    std::vector<bool> k;
    for (float v : z) k.push_back(v != -inf);
    return k;
}

// Critical value of chi-square with df degrees of freedom at significance
// 0.001 (Wilson-Hilferty approximation; z = 3.090).
double chi2_critical(int df) {
    const double a = 2.0 / (9.0 * df);
    return df * std::pow(1.0 - a + 3.090 * std::sqrt(a), 3.0);
}

// Draw n tokens from `logits` with the sampler and compare the counts with
// `expected` (probabilities, 0 where a token must never appear).
void check_distribution(const std::vector<float>& logits, const std::vector<double>& expected, int n,
                        std::uint64_t seed, const char* what) {
    std::vector<long> counts(logits.size(), 0);
    for (int s = 0; s < n; ++s)
        ++counts[static_cast<std::size_t>(cpu::sample_row(logits, tinyllm::sampling_bits(seed, 0, static_cast<std::uint64_t>(s))))];
    double chi2 = 0;
    int df = -1;
    long impossible = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        if (expected[i] == 0) {
            impossible += counts[i];
            continue;
        }
        const double e = expected[i] * n;
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
        ++df;
    }
    INFO(what << ": chi-square " << chi2 << " with " << df << " degrees of freedom, critical value (0.001) "
              << chi2_critical(std::max(df, 1)));
    CHECK(impossible == 0);
    if (df >= 1) CHECK(chi2 < chi2_critical(df));
}

// The probabilities softmax(z) over the tokens in `keep`, in double.
std::vector<double> renormalized(const std::vector<float>& z, const std::vector<bool>& keep) {
    std::vector<double> p(z.size(), 0.0);
    double m = -1e300, s = 0;
    for (std::size_t i = 0; i < z.size(); ++i)
        if (keep[i]) m = std::max(m, static_cast<double>(z[i]));
    for (std::size_t i = 0; i < z.size(); ++i)
        if (keep[i]) s += p[i] = std::exp(z[i] - m);
    for (double& v : p) v /= s;
    return p;
}

}  // namespace

TEST_CASE("temperature divides the logits; temperature 0 keeps only the first argmax", "[sampling]") {
    std::vector<float> z{1.0f, 2.0f, 3.0f, -4.0f};
    cpu::temperature(as_row(z), 2.0f);
    CHECK(z == std::vector<float>{0.5f, 1.0f, 1.5f, -2.0f});
    std::vector<float> ties{1.0f, 3.0f, -2.0f, 3.0f};
    cpu::temperature(as_row(ties), 0.0f);
    CHECK(ties == std::vector<float>{-inf, 3.0f, -inf, -inf});
}

TEST_CASE("top-k keeps the k largest logits and every tie of the k-th", "[sampling]") {
    std::vector<float> z{1.0f, 5.0f, 3.0f, 5.0f, 2.0f};
    auto a = z;
    cpu::top_k(as_row(a), 2);
    CHECK(a == std::vector<float>{-inf, 5.0f, -inf, 5.0f, -inf});
    auto b = z;
    cpu::top_k(as_row(b), 3);
    CHECK(b == std::vector<float>{-inf, 5.0f, 3.0f, 5.0f, -inf});
    std::vector<float> ties{1.0f, 4.0f, 4.0f, 4.0f, 0.0f};
    cpu::top_k(as_row(ties), 2);  // the 2nd largest is 4, which three tokens share
    CHECK(ties == std::vector<float>{-inf, 4.0f, 4.0f, 4.0f, -inf});
    auto c = z;
    cpu::top_k(as_row(c), 99);  // k >= V keeps everything
    CHECK(c == z);
}

TEST_CASE("top-p keeps the most probable tokens until their mass reaches p", "[sampling]") {
    const std::vector<float> z = log_of({0.05, 0.5, 0.15, 0.3});
    const std::map<float, std::vector<bool>> cases{
        {0.4f, {false, true, false, false}},   // 0.5 >= 0.4
        {0.7f, {false, true, false, true}},    // 0.5 + 0.3 = 0.8 >= 0.7
        {0.9f, {false, true, true, true}},     // 0.95 >= 0.9
        {0.97f, {true, true, true, true}},     // 1.0 >= 0.97
        {1.0f, {true, true, true, true}}};
    for (const auto& [p, want] : cases) {
        auto a = z;
        cpu::top_p(as_row(a), p);
        INFO("p = " << p);
        CHECK(kept(a) == want);
        for (std::size_t i = 0; i < a.size(); ++i)
            if (want[i]) CHECK(a[i] == z[i]);  // kept logits are unchanged
    }
}

TEST_CASE("min-p keeps the tokens with p_i >= min_p * p_max", "[sampling]") {
    const std::vector<float> z = log_of({0.05, 0.5, 0.15, 0.3});
    auto a = z;
    cpu::min_p(as_row(a), 0.2f);  // threshold 0.1: drops 0.05
    CHECK(kept(a) == std::vector<bool>{false, true, true, true});
    auto b = z;
    cpu::min_p(as_row(b), 0.5f);  // threshold 0.25: keeps 0.5 and 0.3
    CHECK(kept(b) == std::vector<bool>{false, true, false, true});
    auto c = z;
    cpu::min_p(as_row(c), 0.0f);
    CHECK(c == z);
}

TEST_CASE("repetition, frequency and presence penalties, logit bias and bans", "[sampling]") {
    const std::vector<tinyllm::token_id> generated{0, 1, 1, -1, 4};  // -1 is padding
    std::vector<float> z{2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
    cpu::repetition_penalty(as_row(z), as_row(generated), 2.0f);
    CHECK(z == std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f, 0.0f});  // each seen token once, whatever its count

    std::vector<float> f{2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
    cpu::frequency_presence_penalty(as_row(f), as_row(generated), 0.5f, 0.25f);
    CHECK(f == std::vector<float>{2.0f - 0.75f, -1.0f - 1.25f, 0.5f, 3.0f, -0.75f});

    std::vector<float> g{2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
    cpu::logit_bias(as_row(g), {{2, 1.5f}, {0, -2.0f}});
    CHECK(g == std::vector<float>{0.0f, -1.0f, 2.0f, 3.0f, 0.0f});
    const std::vector<tinyllm::token_id> banned{3, 0};
    cpu::ban_tokens(as_row(g), banned);
    CHECK(g == std::vector<float>{-inf, -1.0f, 2.0f, -inf, 0.0f});
}

TEST_CASE("a chain applies its processors in the order given", "[sampling]") {
    const std::vector<float> z = log_of({0.05, 0.5, 0.15, 0.3});
    // top-k 3 first, then top-p 0.6 over the renormalized (0.5, 0.15, 0.3)/0.95: 0.526 < 0.6, keep 2.
    auto a = z;
    cpu::apply(as_row(a), {sampling::top_k{3}, sampling::top_p{0.6f}});
    CHECK(kept(a) == std::vector<bool>{false, true, false, true});
    // top-p 0.5 first keeps only 0.5; a bias afterwards changes only that logit.
    auto b = z;
    cpu::apply(as_row(b), {sampling::top_p{0.5f}, sampling::logit_bias{{{1, 1.0f}, {3, 1.0f}}}});
    CHECK(b[1] == z[1] + 1.0f);
    CHECK(b[3] == -inf);
    // The penalties need the generated tokens.
    auto c = z;
    const std::vector<tinyllm::token_id> generated{1};
    cpu::apply(as_row(c), {sampling::repetition_penalty{2.0f}}, as_row(generated));
    CHECK(c[1] == z[1] * 2.0f);  // log 0.5 < 0: multiplied
    CHECK_THROWS_WITH(cpu::apply(as_row(c), {sampling::repetition_penalty{2.0f}}), contains("generated has 0 rows"));
}

TEST_CASE("greedy picks the argmax, the lowest index among ties", "[sampling]") {
    std::vector<float> z{1.0f, 3.0f, 3.0f, 2.0f, -inf, 3.0f, 1.0f, 0.0f};  // (2, 4)
    std::vector<tinyllm::token_id> out(2, -7);
    cpu::greedy(tinyllm::tensor_view<tinyllm::token_id, 1>(out.data(), {2}),
                tinyllm::tensor_view<const float, 2>(z.data(), {2, 4}));
    CHECK(out == std::vector<tinyllm::token_id>{1, 1});
    // Temperature 0 in the fused parameters is greedy decoding too.
    sampling::params p;
    p.temperature = 0.0f;
    std::vector<tinyllm::token_id> out2(2, -7);
    cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(out2.data(), {2}),
                tinyllm::tensor_view<const float, 2>(z.data(), {2, 4}), p, 1, 0);
    CHECK(out2 == out);
}

TEST_CASE("the exact arithmetic: exp, weights, order keys, 128-bit products", "[sampling]") {
    double worst = 0;
    for (int i = 0; i <= 100000; ++i) {
        const float x = -87.0f * static_cast<float>(i) / 100000.0f;
        const double want = std::exp(static_cast<double>(x));
        worst = std::max(worst, std::fabs(tinyllm::sampling_exp(x) - want) / want);
    }
    CHECK(worst < 3e-7);
    CHECK(tinyllm::sampling_exp(0.0f) == 1.0f);
    CHECK(tinyllm::sampling_exp(-inf) == 0.0f);
    CHECK(tinyllm::sampling_weight(0.0f) == (std::uint64_t{1} << 40));
    CHECK(tinyllm::sampling_weight(-29.0f) == 0);
    // q is exp(x) scaled by 2^40 exactly: one multiply by 2^(n + 40) gives the bits of
    // ldexp(sampling_exp(x), 40), over every 61st float of [-28, 0] and the ends.
    {
        std::size_t checked = 0, differ = 0;
        const auto same = [&](float x) {
            ++checked;
            const auto want = static_cast<std::uint64_t>(std::ldexp(tinyllm::sampling_exp(x), 40));
            if (tinyllm::sampling_weight(x) != want) ++differ;
        };
        const std::uint32_t top = std::bit_cast<std::uint32_t>(28.0f);
        for (std::uint32_t bits = 0; bits <= top; bits += 61) same(-std::bit_cast<float>(bits));
        for (const float x : {0.0f, -0.0f, -28.0f, std::nextafter(-28.0f, 0.0f), -1e-45f, -0.5f * 0.6931472f})
            same(x);
        CHECK(checked > 10000000);
        CHECK(differ == 0);
    }
    // q carries the float exp's 24 bits: within 3e-7 of exp(-1) * 2^40.
    CHECK(static_cast<double>(tinyllm::sampling_weight(-1.0f)) ==
          tinyllm_test::Approx(std::ldexp(std::exp(-1.0), 40)).epsilon(3e-7));

    const std::vector<float> ordered{-inf, -3e38f, -1.0f, -1e-30f, 0.0f, 1e-30f, 1.0f, 3e38f, inf};
    for (std::size_t i = 1; i < ordered.size(); ++i)
        CHECK(tinyllm::order_key(ordered[i - 1]) < tinyllm::order_key(ordered[i]));
    CHECK(tinyllm::order_key(-0.0f) == tinyllm::order_key(0.0f));

    tinyllm::philox_generator g(tinyllm_test::test_seed(), 1);
    for (int i = 0; i < 1000; ++i) {
        const std::uint64_t a = (std::uint64_t{g.next_bits()} << 32) | g.next_bits();
        const std::uint64_t b = (std::uint64_t{g.next_bits()} << 32) | g.next_bits();
        __extension__ const unsigned __int128 wide = static_cast<unsigned __int128>(a) * b;
        REQUIRE(tinyllm::detail::mul_hi_u64(a, b) == static_cast<std::uint64_t>(wide >> 64));
    }
    CHECK(tinyllm::sampling_threshold(1000, ~std::uint64_t{0}) == 999);
    CHECK(tinyllm::sampling_threshold(1000, 0) == 0);
    CHECK(tinyllm::top_p_target(1000, 0.5f) == 500);
    CHECK(tinyllm::top_p_target(1000, 1.0f) == 1000);
    CHECK(tinyllm::top_p_target(3, 0.5f) == 2);                      // ceil(1.5)
    CHECK(tinyllm::top_p_target(1000, 1e-12f) == 1);                 // at least the top token
}

TEST_CASE("radix selection (the CUDA kernels' sort-free thresholds) finds the CPU's top-k and top-p sets",
          "[sampling][radix]") {
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 3);
    for (int trial = 0; trial < 60; ++trial) {
        const index_t V = 1 + static_cast<index_t>(g.next_bits() % 5000);
        std::vector<float> z(static_cast<std::size_t>(V));
        for (float& v : z) {
            v = 12.0f * g.uniform() - 6.0f;
            if (trial % 3 == 1) v = std::round(v * 2.0f) / 2.0f;   // many exact ties
            if (trial % 3 == 2 && g.next_bits() % 7 == 0) v = (g.next_bits() % 2) ? -inf : -0.0f;
        }
        z[0] = 1.0f;  // at least one finite logit
        const auto key = [&](index_t i) { return tinyllm::order_key(z[static_cast<std::size_t>(i)]); };
        const auto kept_by = [&](std::uint32_t threshold) {
            std::vector<bool> k;
            for (index_t i = 0; i < V; ++i) k.push_back(key(i) >= threshold && z[static_cast<std::size_t>(i)] != -inf);
            return k;
        };
        const index_t k = 1 + static_cast<index_t>(g.next_bits() % static_cast<std::uint32_t>(V));
        auto a = z;
        cpu::top_k(as_row(a), k);
        const std::uint32_t kt = tinyllm::detail::radix_select_sequential(
            V, static_cast<std::uint64_t>(k), 0u, key, [](index_t) { return std::uint64_t{1}; });
        INFO("trial " << trial << ", V = " << V << ", k = " << k);
        CHECK(kept(a) == kept_by(k < V ? kt : 0u));

        const float p = 0.05f + 0.9f * g.uniform();
        auto b = z;
        cpu::top_p(as_row(b), p);
        const float m = *std::max_element(z.begin(), z.end());
        const auto q = [&](index_t i) { return tinyllm::sampling_weight(z[static_cast<std::size_t>(i)] - m); };
        std::uint64_t total = 0;
        for (index_t i = 0; i < V; ++i) total += q(i);
        const std::uint32_t pt = tinyllm::detail::radix_select_sequential(V, tinyllm::top_p_target(total, p), 0u, key, q);
        INFO("p = " << p);
        CHECK(kept(b) == kept_by(pt));
    }
}

TEST_CASE("sampling draws from exactly the filtered, renormalized distribution (chi-square, 200k draws)",
          "[sampling][statistics]") {
    // Fixed logits and a fixed seed: the test is deterministic.
    const int V = 24, n = 200000;
    std::vector<float> z(V);
    tinyllm::philox_generator g(2026, 7);
    for (float& v : z) v = 4.0f * g.uniform() - 2.0f;
    std::vector<std::size_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return z[a] > z[b]; });
    const auto full = renormalized(z, std::vector<bool>(V, true));

    SECTION("multinomial") { check_distribution(z, full, n, 11, "multinomial"); }
    SECTION("top-k 6") {
        std::vector<bool> keep(V, false);
        for (int r = 0; r < 6; ++r) keep[order[r]] = true;
        auto a = z;
        cpu::top_k(as_row(a), 6);
        CHECK(kept(a) == keep);
        check_distribution(a, renormalized(z, keep), n, 12, "top-k");
    }
    SECTION("top-p 0.6") {
        std::vector<bool> keep(V, false);
        double mass = 0;
        for (std::size_t r = 0; r < order.size() && mass < 0.6; ++r) {
            keep[order[r]] = true;
            mass += full[order[r]];
        }
        auto a = z;
        cpu::top_p(as_row(a), 0.6f);
        CHECK(kept(a) == keep);
        check_distribution(a, renormalized(z, keep), n, 13, "top-p");
    }
    SECTION("min-p 0.3") {
        std::vector<bool> keep(V, false);
        const double top = full[order[0]];
        for (int i = 0; i < V; ++i) keep[i] = full[i] >= 0.3 * top;
        auto a = z;
        cpu::min_p(as_row(a), 0.3f);
        CHECK(kept(a) == keep);
        check_distribution(a, renormalized(z, keep), n, 14, "min-p");
    }
    SECTION("temperature 0.5 then top-k 10 then top-p 0.9") {
        auto a = z;
        cpu::apply(as_row(a), {sampling::temperature{0.5f}, sampling::top_k{10}, sampling::top_p{0.9f}});
        std::vector<float> scaled(z);
        for (float& v : scaled) v /= 0.5f;
        // The kept set, derived here: the 10 largest of z / 0.5, then, by their
        // renormalized probabilities in descending order, tokens until the mass reaches 0.9.
        std::vector<bool> top10(V, false);
        for (int r = 0; r < 10; ++r) top10[order[r]] = true;
        const auto in_top10 = renormalized(scaled, top10);
        std::vector<bool> keep(V, false);
        double mass = 0;
        for (int r = 0; r < 10 && mass < 0.9; ++r) {
            keep[order[r]] = true;
            mass += in_top10[order[r]];
        }
        CHECK(kept(a) == keep);
        check_distribution(a, renormalized(scaled, keep), n, 15, "chain");
    }
    SECTION("a distribution with a tiny tail still samples the tail at its rate") {
        std::vector<float> t{0.0f, -8.0f, -8.0f, -12.0f};  // p ~ (0.99933, 3.4e-4, 3.4e-4, 6e-6)
        check_distribution(t, renormalized(t, std::vector<bool>(4, true)), n, 16, "tail");
    }
}

TEST_CASE("the sampler is deterministic per (seed, row, step) and uses one stream per row", "[sampling]") {
    const int B = 3, V = 1000;
    std::vector<float> z(B * V);
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 2);
    for (float& v : z) v = 3.0f * g.uniform();
    std::vector<tinyllm::token_id> a(B), b(B);
    tinyllm::tensor_view<const float, 2> logits(z.data(), {B, V});
    cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(a.data(), {B}), logits, 42, 5);
    cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(b.data(), {B}), logits, 42, 5);
    CHECK(a == b);
    for (int r = 0; r < B; ++r)
        CHECK(a[r] == cpu::sample_row(std::span<const float>(z.data() + r * V, V), tinyllm::sampling_bits(42, r, 5)));
    // The fused parameters give the same token as the same chain run by hand.
    sampling::params p;
    p.temperature = 0.8f;
    p.top_k = 100;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    std::vector<tinyllm::token_id> fused(B), chained(B);
    cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(fused.data(), {B}), logits, p, 42, 5);
    auto work = z;
    cpu::apply(tinyllm::tensor_view<float, 2>(work.data(), {B, V}),
               {sampling::temperature{0.8f}, sampling::top_k{100}, sampling::top_p{0.9f}, sampling::min_p{0.05f}});
    cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(chained.data(), {B}),
                tinyllm::tensor_view<const float, 2>(work.data(), {B, V}), 42, 5);
    CHECK(fused == chained);
}

namespace {
// Tokens: 0 = a, 1 = b, 2 = c, 3 = d, 4 = eos. log-probabilities by prefix.
std::vector<float> lp(std::initializer_list<double> p) {
    std::vector<float> out;
    for (double v : p) out.push_back(v > 0 ? static_cast<float>(std::log(v)) : -inf);
    return out;
}
}  // namespace

TEST_CASE("best-of-n keeps the most probable sample; length normalization changes the winner", "[sampling][search]") {
    // After "":  a 0.5, b 0.5.   After a: eos.   After b: c 0.6, eos 0.4.   After b c: d.   After b c d: eos.
    // [a eos]: log 0.5 = -0.693 (mean -0.347); [b c d eos]: log 0.3 = -1.204 (mean -0.301); [b eos]: log 0.2.
    const tinyllm::step_function step = [](std::span<const tinyllm::token_id> prefix) {
        const std::vector<tinyllm::token_id> p(prefix.begin(), prefix.end());
        if (p.empty()) return lp({0.5, 0.5, 0, 0, 0});
        if (p == std::vector<tinyllm::token_id>{1}) return lp({0, 0, 0.6, 0, 0.4});
        if (p == std::vector<tinyllm::token_id>{1, 2}) return lp({0, 0, 0, 1, 0});
        return lp({0, 0, 0, 0, 1});
    };
    tinyllm::best_of_n_options o;
    o.n = 32;
    o.eos = 4;
    o.seed = 5;
    std::vector<tinyllm::generated_sequence> all;
    const auto raw = cpu::best_of_n(step, {}, o, &all);
    REQUIRE(all.size() == 32);
    CHECK(raw.tokens == std::vector<tinyllm::token_id>{0, 4});
    CHECK(raw.log_prob == tinyllm_test::Approx(std::log(0.5)).epsilon(1e-6));
    CHECK(raw.finished);
    o.length_alpha = 1.0f;
    const auto mean = cpu::best_of_n(step, {}, o);
    CHECK(mean.tokens == std::vector<tinyllm::token_id>{1, 2, 3, 4});
    CHECK(mean.score == tinyllm_test::Approx(std::log(0.3) / 4).epsilon(1e-6));
    o.n = 0;
    CHECK_THROWS_WITH(cpu::best_of_n(step, {}, o), contains("n = 0 must be at least 1"));
}

TEST_CASE("beam search finds the sequence greedy decoding misses", "[sampling][search]") {
    // After "": a 0.6, b 0.4.  After a: a 0.3, b 0.3, c 0.2, eos 0.2.  After b: eos 0.9, a/b/c 1/30 each.
    // Anything longer: eos. Greedy: a a eos (0.18). Best: b eos (0.36).
    const tinyllm::step_function step = [](std::span<const tinyllm::token_id> prefix) {
        const std::vector<tinyllm::token_id> p(prefix.begin(), prefix.end());
        if (p.empty()) return lp({0.6, 0.4, 0, 0, 0});
        if (p == std::vector<tinyllm::token_id>{0}) return lp({0.3, 0.3, 0.2, 0, 0.2});
        if (p == std::vector<tinyllm::token_id>{1}) return lp({1.0 / 30, 1.0 / 30, 1.0 / 30, 0, 0.9});
        return lp({0, 0, 0, 0, 1});
    };
    tinyllm::beam_search_options o;
    o.width = 1;
    o.eos = 4;
    o.max_new_tokens = 5;
    const auto greedy = cpu::beam_search(step, {}, o);
    REQUIRE(greedy.size() == 1);
    CHECK(greedy[0].tokens == std::vector<tinyllm::token_id>{0, 0, 4});
    CHECK(greedy[0].log_prob == tinyllm_test::Approx(std::log(0.18)).epsilon(1e-6));

    o.width = 2;
    const auto beams = cpu::beam_search(step, {}, o);
    REQUIRE(beams.size() == 2);
    CHECK(beams[0].tokens == std::vector<tinyllm::token_id>{1, 4});
    CHECK(beams[0].log_prob == tinyllm_test::Approx(std::log(0.36)).epsilon(1e-6));
    CHECK(beams[1].tokens == std::vector<tinyllm::token_id>{0, 0, 4});
    CHECK(beams[0].finished);

    // Without eos, the beams run to max_new_tokens and come back unfinished.
    o.eos.reset();
    o.max_new_tokens = 2;
    const auto open = cpu::beam_search(step, {}, o);
    REQUIRE(open.size() == 2);
    CHECK_FALSE(open[0].finished);
    CHECK(open[0].tokens.size() == 2);
    o.width = 0;
    CHECK_THROWS_WITH(cpu::beam_search(step, {}, o), contains("width = 0 must be at least 1"));
}

TEST_CASE("invalid parameters and logits give clear errors", "[sampling][errors]") {
    std::vector<float> z{1.0f, 2.0f, 3.0f};
    CHECK_THROWS_WITH(cpu::temperature(as_row(z), -0.5f), contains("temperature: T = -0.5 must be finite and >= 0"));
    CHECK_THROWS_WITH(cpu::top_k(as_row(z), 0), contains("top_k: k = 0 must be at least 1"));
    CHECK_THROWS_WITH(cpu::top_p(as_row(z), 0.0f), contains("top_p: p = 0 must be in (0, 1]"));
    CHECK_THROWS_WITH(cpu::top_p(as_row(z), 1.5f), contains("top_p: p = 1.5 must be in (0, 1]"));
    CHECK_THROWS_WITH(cpu::min_p(as_row(z), -0.1f), contains("min_p: p = -0.1 must be in [0, 1]"));
    CHECK_THROWS_WITH(cpu::min_p(as_row(z), 1.5f), contains("min_p: p = 1.5 must be in [0, 1]"));
    const std::vector<tinyllm::token_id> gen{0};
    CHECK_THROWS_WITH(cpu::repetition_penalty(as_row(z), as_row(gen), 0.0f), contains("penalty = 0"));
    CHECK_THROWS_WITH(cpu::ban_tokens(as_row(z), std::vector<tinyllm::token_id>{0, 1, 2}), contains("all 3 tokens are banned"));
    CHECK_THROWS_WITH(cpu::ban_tokens(as_row(z), std::vector<tinyllm::token_id>{3}), contains("token 3 is outside [0, 3)"));
    CHECK_THROWS_WITH(cpu::logit_bias(as_row(z), {{0, inf}}), contains("use ban_tokens"));
    const std::vector<tinyllm::token_id> bad_gen{7};
    CHECK_THROWS_WITH(cpu::repetition_penalty(as_row(z), as_row(bad_gen), 1.2f), contains("generated token 7"));

    std::vector<tinyllm::token_id> out(1);
    tinyllm::tensor_view<tinyllm::token_id, 1> o(out.data(), {1});
    std::vector<float> nan{1.0f, std::nanf(""), 0.0f};
    CHECK_THROWS_WITH(cpu::sample(o, as_row(nan), 1, 0), contains("logit [0, 1] is nan"));
    CHECK_THROWS_WITH(cpu::greedy(o, as_row(nan)), contains("logits must be finite or -inf"));
    std::vector<float> pinf{1.0f, 0.0f, inf};
    CHECK_THROWS_WITH(cpu::top_p(as_row(pinf), 0.5f), contains("logit [0, 2] is inf"));
    std::vector<float> none{-inf, -inf, -inf};
    CHECK_THROWS_WITH(cpu::sample(o, as_row(none), 1, 0), contains("every logit of row 0 is -inf"));
    CHECK_THROWS_WITH(cpu::greedy(o, as_row(none)), contains("every logit of row 0 is -inf"));
    sampling::params p;
    p.top_k = 0;
    CHECK_THROWS_WITH(cpu::sample(o, as_row(z), p, 1, 0), contains("k = 0"));
    std::vector<tinyllm::token_id> two(2);
    CHECK_THROWS_WITH(cpu::sample(tinyllm::tensor_view<tinyllm::token_id, 1>(two.data(), {2}), as_row(z), 1, 0),
                      contains("out has 2 entries but logits have 1 rows"));
}

TEST_CASE("sampling refuses rows and values it cannot draw from", "[sampling][errors]") {
    // An empty row is refused as a vocabulary of 0 (there was no check: the row
    // maximum of an empty span was read).
    CHECK_THROWS_WITH(cpu::sample_row(std::span<const float>(), 42), contains("vocabulary size V = 0"));
    CHECK_THROWS_WITH(cpu::softmax_row(std::span<const float>()), contains("softmax_row: the row is empty"));
    // A row longer than the samplers' exact integer weights allow.
    std::vector<float> huge(static_cast<std::size_t>(tinyllm::sampling_max_vocab) + 1, 0.0f);
    CHECK_THROWS_WITH(cpu::sample_row(huge, 42), contains("vocabulary size V = "));

    // A temperature so small that a finite logit divided by it overflows.
    std::vector<float> values = {2.0f, -1.0f, 0.5f};
    tinyllm::tensor_view<float, 2> logits(values.data(), {1, 3});
    CHECK_THROWS_WITH(cpu::temperature(logits, 1e-45f),
                      contains("logit [0, 0] = 2 divided by T = ") && contains("overflows to +inf"));
    // A bias, or a penalty, that overflows a logit to +inf.
    values = {3e38f, 0.0f, 0.0f};
    CHECK_THROWS_WITH(cpu::logit_bias(logits, {{0, 3e38f}}), contains("logit_bias: logit [0, 0] + its bias"));
    values = {-3e38f, 0.0f, 0.0f};
    const std::vector<tinyllm::token_id> generated = {0, 0};
    CHECK_THROWS_WITH(
        cpu::frequency_presence_penalty(
            logits, tinyllm::tensor_view<const tinyllm::token_id, 2>(generated.data(), {1, 2}), -3e38f, 0.0f),
        contains("frequency_presence_penalty: logit [0, 0] overflows to +inf"));
    // ... or, on a banned token (-inf), a penalty that overflows to -inf makes NaN (-inf - -inf).
    values = {-std::numeric_limits<float>::infinity(), 1.0f, 0.0f};
    CHECK_THROWS_WITH(
        cpu::frequency_presence_penalty(
            logits, tinyllm::tensor_view<const tinyllm::token_id, 2>(generated.data(), {1, 2}), -3e38f, 0.0f),
        contains("frequency_presence_penalty: logit [0, 0] overflows to NaN"));
    // A repetition penalty so close to 0 that a positive logit divided by it overflows.
    values = {10.0f, 1.0f, 0.0f};
    CHECK_THROWS_WITH(
        cpu::repetition_penalty(logits, tinyllm::tensor_view<const tinyllm::token_id, 2>(generated.data(), {1, 1}),
                                1e-38f),
        contains("repetition_penalty: logit [0, 0] = 10 divided by the penalty") && contains("overflows to +inf"));
    // A small temperature on a row of negative logits sends all of them to -inf: said as
    // the temperature's doing, not as "every token banned" by the chooser after it.
    values = {-1.0f, -2.0f, -3.0f};
    CHECK_THROWS_WITH(cpu::temperature(logits, 1e-45f),
                      contains("temperature: every logit of row 0 divided by T = ") && contains("overflows to -inf"));
    // softmax_row rejects what the choosers reject.
    const float inf = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(cpu::softmax_row(std::vector<float>{-inf, -inf}), contains("every logit is -inf"));
    CHECK_THROWS_WITH(cpu::softmax_row(std::vector<float>{inf, 1.0f}), contains("softmax_row: logit [0, 0] is inf"));
    CHECK_THROWS_WITH(cpu::softmax_row(std::vector<float>{1.0f, std::nanf("")}),
                      contains("softmax_row: logit [0, 1] is nan"));
    // ban_tokens on rows of no tokens names the vocabulary, not "all 0 tokens are banned".
    CHECK_THROWS_WITH(cpu::ban_tokens(tinyllm::tensor_view<float, 2>(values.data(), {1, 0}), {}),
                      contains("ban_tokens: vocabulary size V = 0"));
}

TEST_CASE("processors and choosers refuse outputs that share memory", "[sampling][errors]") {
    // Two rows over one row's memory: each processor would run twice on it
    // (temperature 0.5 would divide by 0.25).
    std::vector<float> z{2.0f, -1.0f, 0.5f, 3.0f};
    const tinyllm::tensor_view<float, 2> twice(z.data(), {2, 4}, {0, 1});
    CHECK_THROWS_WITH(cpu::temperature(twice, 0.5f),
                      contains("temperature: logits rows of 4 elements 0 apart overlap"));
    const tinyllm::tensor_view<float, 2> shifted(z.data(), {2, 3}, {1, 1});
    CHECK_THROWS_WITH(cpu::top_k(shifted, 1), contains("top_k: logits rows of 3 elements 1 apart overlap"));
    CHECK(z == std::vector<float>{2.0f, -1.0f, 0.5f, 3.0f});  // refused before anything was written

    // generated read from the logits' own memory (row 1's counts would be read
    // after row 0 was penalized).
    const tinyllm::tensor_view<const tinyllm::token_id, 2> inside(reinterpret_cast<const tinyllm::token_id*>(z.data()),
                                                                  {1, 2});
    CHECK_THROWS_WITH(cpu::repetition_penalty(tinyllm::tensor_view<float, 2>(z.data(), {1, 4}), inside, 1.2f),
                      contains("repetition_penalty: logits must not share memory with generated"));
    CHECK_THROWS_WITH(
        cpu::frequency_presence_penalty(tinyllm::tensor_view<float, 2>(z.data(), {1, 4}), inside, 0.5f, 0.0f),
        contains("frequency_presence_penalty: logits must not share memory with generated"));

    // An out of stride 0 keeps only the last row's token; an out inside the
    // logits overwrites rows still to be read.
    std::vector<float> two_rows{0.0f, 1.0f, 5.0f, 2.0f};  // (2, 2): argmaxes 1 and 0
    const tinyllm::tensor_view<const float, 2> logits(two_rows.data(), {2, 2});
    tinyllm::token_id one = -7;
    const tinyllm::tensor_view<tinyllm::token_id, 1> broadcast(&one, {2}, {0});
    CHECK_THROWS_WITH(cpu::greedy(broadcast, logits),
                      contains("greedy: out has shape") && contains("share an address"));
    CHECK_THROWS_WITH(cpu::sample(broadcast, logits, 1, 0), contains("sample: out has shape"));
    CHECK(one == -7);
    const tinyllm::tensor_view<tinyllm::token_id, 1> in_logits(reinterpret_cast<tinyllm::token_id*>(two_rows.data()),
                                                               {2});
    CHECK_THROWS_WITH(cpu::greedy(in_logits, logits), contains("greedy: out must not share memory with the logits"));
    CHECK_THROWS_WITH(cpu::sample(in_logits, logits, 1, 0),
                      contains("sample: out must not share memory with the logits"));
    // The allowed forms still work: separate memory gives each row its token.
    std::vector<tinyllm::token_id> tokens(2, -1);
    cpu::greedy(tinyllm::tensor_view<tinyllm::token_id, 1>(tokens.data(), {2}), logits);
    CHECK(tokens == std::vector<tinyllm::token_id>{1, 0});
}

TEST_CASE("beam_search refuses a step where every token is banned", "[sampling][beam][errors]") {
    const tinyllm::step_function banned = [](std::span<const tinyllm::token_id>) {
        return std::vector<float>(4, -std::numeric_limits<float>::infinity());
    };
    tinyllm::beam_search_options o;
    o.width = 2;
    o.max_new_tokens = 3;
    const std::vector<tinyllm::token_id> prompt = {1};
    CHECK_THROWS_WITH(tinyllm::cpu::beam_search(banned, prompt, o),
                      contains("beam_search: at new token 0 every token of every beam has log-probability -inf"));
}
