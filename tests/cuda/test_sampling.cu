// CUDA tests for the samplers (tinyllm/cuda/sampling.cuh): for the same seed
// the GPU chooses EXACTLY the CPU reference's tokens — greedy, multinomial,
// top-k, top-p, min-p and their combinations, several blocks per row (v3
// split, over many split counts, seeds and edge rows), fused (v2) and one
// kernel per processor (v1) — over fresh random rows with V in {1000, 50257, 128256,
// 256000} and B in {1, 64, 256}; the v1 processors write bit-identical logits;
// bad logits and parameters give clear errors. Outputs are poisoned first.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/sampling.cuh>
#include <tinyllm/sampling.hpp>
#if defined(TINYLLM_SIMULATED_GPU)
#include <tinyllm/sim/executor.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
namespace sampling = tinyllm::sampling;
using tinyllm::index_t;
using tinyllm_test::contains;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

// Token outputs are poisoned with 0x7F7F7F7F before a call: outside every
// vocabulary, and not the -1 a bad row gets (device_buffer::poison's 0xFF bytes
// are -1, so a kernel that skipped a bad row would pass a check for -1).
void poison_tokens(tc::device_buffer<tinyllm::token_id>& b) {
    if (b.size()) TINYLLM_CUDA_CHECK(cudaMemset(b.data(), 0x7F, b.bytes()));
}

// Random logits with the features that break careless samplers: a spread of
// values, rows with many exact ties (values on a coarse grid), rows with one
// dominant token, -inf (banned) entries, and -0 beside +0.
std::vector<float> random_logits(index_t B, index_t V, std::uint64_t which) {
    std::vector<float> z = tinyllm_test::random_floats(static_cast<std::size_t>(B * V), which, -6.0f, 6.0f);
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 1000 + which);
    for (index_t b = 0; b < B; ++b) {
        float* row = z.data() + b * V;
        switch (b % 4) {
            case 1:  // coarse grid: many ties
                for (index_t i = 0; i < V; ++i) row[i] = std::round(row[i] * 2.0f) / 2.0f;
                break;
            case 2:  // one dominant token and a few banned ones
                row[g.next_bits() % V] = 20.0f;
                for (int j = 0; j < 8; ++j) row[g.next_bits() % V] = -inf;
                break;
            case 3:  // a flat distribution with -0 and +0
                for (index_t i = 0; i < V; ++i) row[i] = (i % 3 == 0) ? -0.0f : row[i] * 0.01f;
                break;
            default: break;
        }
    }
    return z;
}

std::vector<tinyllm::token_id> cpu_tokens(const std::vector<float>& z, index_t B, index_t V, const sampling::params* p,
                                     std::uint64_t seed, std::uint64_t step, index_t rows) {
    std::vector<tinyllm::token_id> out(static_cast<std::size_t>(rows));
    tinyllm::tensor_view<tinyllm::token_id, 1> o(out.data(), {rows});
    tinyllm::tensor_view<const float, 2> l(z.data(), {rows, V});
    (void)B;
    if (p) cpu::sample(o, l, *p, seed, step);
    else cpu::sample(o, l, seed, step);
    return out;
}

std::size_t count_different(const std::vector<tinyllm::token_id>& got, const std::vector<tinyllm::token_id>& want) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < want.size(); ++i) n += got[i] != want[i];
    return n;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The shapes every run checks, and the large ones (real vocabularies at full
// batch) that only GPU runs check: on the simulated GPU they take minutes.
const std::vector<index_t> vocabularies = {1000, 50257};
const std::vector<index_t> batches = {1, 64};
const std::vector<index_t> large_vocabularies = {128256, 256000};
const std::vector<index_t> large_batches = {1, 64, 256};

void check_greedy_and_multinomial(const std::vector<index_t>& vs, const std::vector<index_t>& bs, std::uint64_t which) {
    for (index_t V : vs) {
        for (index_t B : bs) {
            const auto z = random_logits(B, V, ++which);
            auto d_z = tc::to_device(z);
            tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
            auto logits = d_z.view(tinyllm::extents<2>{B, V});
            auto out = d_out.view(tinyllm::extents<1>{B});
            INFO("V = " << V << ", B = " << B);

            poison_tokens(d_out);
            tc::greedy(out, logits);
            std::vector<tinyllm::token_id> want(static_cast<std::size_t>(B));
            cpu::greedy(tinyllm::tensor_view<tinyllm::token_id, 1>(want.data(), {B}),
                        tinyllm::tensor_view<const float, 2>(z.data(), {B, V}));
            CHECK(count_different(tc::to_host(d_out), want) == 0);
            poison_tokens(d_out);
            tc::greedy_reduction(out, logits);  // the one-block-per-row rung, whatever greedy() chose
            CHECK(count_different(tc::to_host(d_out), want) == 0);

            const std::uint64_t seed = tinyllm_test::test_seed() + which, step = which * 7;
            poison_tokens(d_out);
            tc::sample(out, logits, seed, step);
            CHECK(count_different(tc::to_host(d_out), cpu_tokens(z, B, V, nullptr, seed, step, B)) == 0);
        }
    }
}

// The fused rungs: v2 (one block per row), v3 (several blocks per row), or the
// public sample(params), which picks one of them.
enum class fused_rung { v2_fused, v3_split, dispatch };

void check_fused(const std::vector<index_t>& vs, const std::vector<index_t>& bs, std::uint64_t which,
                 fused_rung rung) {
    std::vector<sampling::params> settings(8);
    settings[1].top_k = 50;
    settings[2].top_k = 1;
    settings[3].top_p = 0.9f;
    settings[4].temperature = 1.3f;
    settings[4].top_p = 0.5f;
    settings[5].min_p = 0.05f;
    settings[6].temperature = 0.8f;
    settings[6].top_k = 200;
    settings[6].top_p = 0.95f;
    settings[6].min_p = 0.02f;
    settings[7].temperature = 0.0f;  // greedy
    for (index_t V : vs) {
        for (index_t B : bs) {
            const auto z = random_logits(B, V, ++which);
            auto d_z = tc::to_device(z);
            tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
            // The CPU reference sorts rows for top-p: check at most 64 rows per batch
            // against it (the GPU computes all B; the remaining rows are only checked
            // to hold a token of the vocabulary).
            const index_t checked = std::min<index_t>(B, 64);
            for (std::size_t s = 0; s < settings.size(); ++s) {
                INFO("V = " << V << ", B = " << B << ", setting " << s);
                const std::uint64_t seed = tinyllm_test::test_seed() ^ (which << 8) ^ s, step = s;
                poison_tokens(d_out);
                const auto out = d_out.view(tinyllm::extents<1>{B});
                const auto logits = d_z.view(tinyllm::extents<2>{B, V});
                if (rung == fused_rung::v2_fused) tc::sample_fused(out, logits, settings[s], seed, step);
                else if (rung == fused_rung::v3_split) tc::sample_split(out, logits, settings[s], seed, step);
                else tc::sample(out, logits, settings[s], seed, step);
                auto got = tc::to_host(d_out);
                for (auto t : got) REQUIRE((t >= 0 && t < V));
                got.resize(static_cast<std::size_t>(checked));
                CHECK(count_different(got, cpu_tokens(z, B, V, &settings[s], seed, step, checked)) == 0);
            }
        }
    }
}

}  // namespace

TEST_CASE("greedy and multinomial choose the CPU's tokens for every V and B", "[cuda][sampling]") {
    check_greedy_and_multinomial(vocabularies, batches, 0);
}
TEST_CASE("greedy and multinomial at real vocabulary sizes and B = 256", "[cuda][sampling][large]") {
    check_greedy_and_multinomial(large_vocabularies, large_batches, 50);
    check_greedy_and_multinomial(vocabularies, {256}, 60);
}

TEST_CASE("the fused sampler chooses the CPU's tokens for top-k, top-p, min-p and their combinations",
          "[cuda][sampling]") {
    check_fused(vocabularies, batches, 100, fused_rung::v2_fused);
    check_fused({50257}, {1}, 110, fused_rung::dispatch);  // each setting on the rung the public sample() picks
}
TEST_CASE("the fused sampler at real vocabulary sizes and B = 256", "[cuda][sampling][large]") {
    for (fused_rung rung : {fused_rung::v2_fused, fused_rung::v3_split}) {
        check_fused(large_vocabularies, large_batches, 150, rung);
        check_fused(vocabularies, {256}, 160, rung);
    }
}

namespace {
void check_processor_chain(const std::vector<index_t>& vs) {
    for (index_t V : vs) {
        const index_t B = 64;
        const auto z = random_logits(B, V, 200 + static_cast<std::uint64_t>(V));
        struct step_case {
            const char* name;
            sampling::processor p;
        };
        const std::vector<step_case> chain{{"temperature 0.7", sampling::temperature{0.7f}},
                                           {"top-k 300", sampling::top_k{300}},
                                           {"top-p 0.8", sampling::top_p{0.8f}},
                                           {"min-p 0.01", sampling::min_p{0.01f}}};
        auto d_z = tc::to_device(z);
        auto logits = d_z.view(tinyllm::extents<2>{B, V});
        std::vector<float> want = z;
        for (const auto& c : chain) {
            INFO("V = " << V << ", after " << c.name);
            cpu::apply(tinyllm::tensor_view<float, 2>(want.data(), {B, V}), {c.p});
            if (auto* t = std::get_if<sampling::temperature>(&c.p)) tc::temperature(logits, t->value);
            if (auto* k = std::get_if<sampling::top_k>(&c.p)) tc::top_k(logits, k->k);
            if (auto* p = std::get_if<sampling::top_p>(&c.p)) tc::top_p(logits, p->p);
            if (auto* m = std::get_if<sampling::min_p>(&c.p)) tc::min_p(logits, m->p);
            CHECK(same_bits(tc::to_host(d_z), want));
        }
        tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
        poison_tokens(d_out);
        tc::sample(d_out.view(tinyllm::extents<1>{B}), logits, 77, 3);
        CHECK(count_different(tc::to_host(d_out), cpu_tokens(want, B, V, nullptr, 77, 3, B)) == 0);
        // ... and the fused kernel on the original logits agrees with both.
        sampling::params p;
        p.temperature = 0.7f;
        p.top_k = 300;
        p.top_p = 0.8f;
        p.min_p = 0.01f;
        auto d_orig = tc::to_device(z);
        tc::device_buffer<tinyllm::token_id> d_fused(static_cast<std::size_t>(B));
        poison_tokens(d_fused);
        tc::sample(d_fused.view(tinyllm::extents<1>{B}), d_orig.view(tinyllm::extents<2>{B, V}), p, 77, 3);
        CHECK(tc::to_host(d_fused) == tc::to_host(d_out));
    }
}
}  // namespace

TEST_CASE("the v1 processors write the CPU's logits bit for bit and the chain picks the same tokens",
          "[cuda][sampling]") {
    check_processor_chain(vocabularies);
    // Temperature 0 as a processor keeps only the first argmax.
    std::vector<float> ties{1.0f, 3.0f, 3.0f, 2.0f};
    auto d_ties = tc::to_device(ties);
    tc::temperature(d_ties.view(tinyllm::extents<2>{1, 4}), 0.0f);
    CHECK(tc::to_host(d_ties) == std::vector<float>{-inf, 3.0f, -inf, -inf});
}
TEST_CASE("the v1 processor chain at V = 128256", "[cuda][sampling][large]") { check_processor_chain({128256}); }

TEST_CASE("penalties, logit bias and bans on the device match the CPU bit for bit", "[cuda][sampling]") {
    const index_t B = 16, V = 5000, L = 300;
    const auto z = random_logits(B, V, 300);
    std::vector<tinyllm::token_id> generated(static_cast<std::size_t>(B * L));
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 301);
    for (auto& t : generated) t = (g.next_bits() % 10 == 0) ? -1 : static_cast<tinyllm::token_id>(g.next_bits() % 400);
    const std::map<tinyllm::token_id, float> bias{{0, 1.5f}, {17, -3.0f}, {4999, 0.25f}};
    const std::vector<tinyllm::token_id> banned{5, 6, 7, 4000};

    std::vector<float> want = z;
    tinyllm::tensor_view<float, 2> w(want.data(), {B, V});
    tinyllm::tensor_view<const tinyllm::token_id, 2> gen(generated.data(), {B, L});
    cpu::repetition_penalty(w, gen, 1.3f);
    cpu::frequency_presence_penalty(w, gen, 0.4f, 0.6f);
    cpu::logit_bias(w, bias);
    cpu::ban_tokens(w, banned);

    auto d_z = tc::to_device(z);
    auto d_gen = tc::to_device(generated);
    auto logits = d_z.view(tinyllm::extents<2>{B, V});
    auto d_generated = tinyllm::tensor_view<const tinyllm::token_id, 2>(d_gen.data(), {B, L});
    tc::repetition_penalty(logits, d_generated, 1.3f);
    tc::frequency_presence_penalty(logits, d_generated, 0.4f, 0.6f);
    tc::logit_bias(logits, bias);
    tc::ban_tokens(logits, banned);
    CHECK(same_bits(tc::to_host(d_z), want));
}

TEST_CASE("bad logits and parameters give clear errors on the host", "[cuda][sampling][errors]") {
    const index_t B = 4, V = 3000;
    auto z = random_logits(B, V, 400);
    z[3 * V + 17] = std::nanf("");
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(B);
    auto out = d_out.view(tinyllm::extents<1>{B});
    auto logits = d_z.view(tinyllm::extents<2>{B, V});
    sampling::params p;
    p.top_p = 0.9f;
    CHECK_THROWS_WITH(tc::sample(out, logits, p, 1, 0), contains("row 3 has a NaN or +inf logit"));
    CHECK_THROWS_WITH(tc::greedy(out, logits), contains("row 3 has a NaN or +inf logit"));
    CHECK_THROWS_WITH(tc::top_k(logits, 5), contains("row 3 has a NaN or +inf logit"));
    z[3 * V + 17] = inf;
    tc::copy_to_device(d_z, z);
    CHECK_THROWS_WITH(tc::sample(out, logits, 1, 0), contains("row 3 has a NaN or +inf logit"));
    for (index_t i = 0; i < V; ++i) z[static_cast<std::size_t>(3 * V + i)] = -inf;
    tc::copy_to_device(d_z, z);
    CHECK_THROWS_WITH(tc::sample(out, logits, p, 1, 0), contains("every logit of row 3 is -inf"));
    // Without the check the bad row gets token -1 and the others are sampled.
    poison_tokens(d_out);
    tc::sample(out, logits, p, 1, 0, 0, tc::sampling_check::none);
    const auto tokens = tc::to_host(d_out);
    CHECK(tokens[3] == -1);
    CHECK((tokens[0] >= 0 && tokens[0] < V));

    // Finite logits that a tiny T divides to +inf, in the fused rung (v2).
    tc::copy_to_device(d_z, random_logits(B, V, 400));
    sampling::params tiny = p;
    tiny.temperature = 1e-45f;
    CHECK_THROWS_WITH(tc::sample_fused(out, logits, tiny, 1, 0),
                      contains("or one that the temperature divides to +inf"));
    CHECK_THROWS_WITH(tc::temperature(logits, -1.0f), contains("temperature: T = -1"));
    CHECK_THROWS_WITH(tc::top_k(logits, 0), contains("k = 0 must be at least 1"));
    CHECK_THROWS_WITH(tc::top_p(logits, 0.0f), contains("p = 0 must be in (0, 1]"));
    CHECK_THROWS_WITH(tc::min_p(logits, 2.0f), contains("p = 2 must be in [0, 1]"));
    p.top_p = 1.5f;
    CHECK_THROWS_WITH(tc::sample(out, logits, p, 1, 0), contains("p = 1.5 must be in (0, 1]"));
    std::vector<tinyllm::token_id> all(static_cast<std::size_t>(V));
    for (index_t i = 0; i < V; ++i) all[static_cast<std::size_t>(i)] = static_cast<tinyllm::token_id>(i);
    CHECK_THROWS_WITH(tc::ban_tokens(logits, all), contains("tokens are banned"));
    tc::device_buffer<tinyllm::token_id> wrong(B + 1);
    CHECK_THROWS_WITH(tc::greedy(wrong.view(tinyllm::extents<1>{B + 1}), logits), contains("out has 5 entries"));
    // Rows that overlap (each processor block writes its row in place), and an out
    // in the logits' memory (a block would write its token where others still read).
    const tinyllm::tensor_view<float, 2> overlapping(d_z.data(), {B, V}, {V / 2, 1});
    CHECK_THROWS_WITH(tc::top_k(overlapping, 3), contains("top_k: logits rows of 3000 elements 1500 apart overlap"));
    CHECK_THROWS_WITH(tc::temperature(overlapping, 0.5f), contains("rows of 3000 elements 1500 apart overlap"));
    const tinyllm::tensor_view<tinyllm::token_id, 1> inside(reinterpret_cast<tinyllm::token_id*>(d_z.data()), {B});
    CHECK_THROWS_WITH(tc::greedy(inside, logits), contains("greedy: out must not share memory with the logits"));
    p.top_p = 0.9f;
    CHECK_THROWS_WITH(tc::sample(inside, logits, p, 1, 0),
                      contains("sample: out must not share memory with the logits"));
    // Generated ids read from the logits' memory (a block reads its row while others write theirs).
    const tinyllm::tensor_view<const tinyllm::token_id, 2> generated_inside(
        reinterpret_cast<const tinyllm::token_id*>(d_z.data() + 2 * V), {B, 4});
    CHECK_THROWS_WITH(tc::repetition_penalty(logits, generated_inside, 1.2f),
                      contains("repetition_penalty: logits must not share memory with generated"));
    CHECK_THROWS_WITH(tc::frequency_presence_penalty(logits, generated_inside, 0.5f, 0.0f),
                      contains("frequency_presence_penalty: logits must not share memory with generated"));
}

TEST_CASE("the v1 processors refuse what the CPU's refuse: overflow, a bad row, a bad token before any write",
          "[cuda][sampling][errors]") {
    const index_t B = 2, V = 8;
    const std::vector<float> z{1, 2, 3, -1, 0.5f, 4, -2, 1, /* row 1: */ -1, -2, -3, -1, -0.5f, -4, -2, -1};
    auto d_z = tc::to_device(z);
    auto logits = d_z.view(tinyllm::extents<2>{B, V});
    const auto refused_alike = [&](auto gpu, auto cpu_op, const char* gpu_says, const char* cpu_says) {
        tc::copy_to_device(d_z, z);
        std::vector<float> host = z;
        CHECK_THROWS_WITH(cpu_op(tinyllm::tensor_view<float, 2>(host.data(), {B, V})), contains(cpu_says));
        CHECK_THROWS_WITH(gpu(), contains(gpu_says));
    };
    // Temperature: z / T overflows to +inf (row 0), or every logit of a row to -inf (row 1 alone).
    refused_alike([&] { tc::temperature(logits, 1e-45f); },
                  [](auto l) { cpu::temperature(l, 1e-45f); },
                  "temperature: a logit of row 0 overflows to +inf", "overflows to +inf; use a larger T");
    const tinyllm::tensor_view<float, 2> row1(d_z.data() + V, {1, V});  // row 1 alone
    tc::copy_to_device(d_z, z);
    CHECK_THROWS_WITH(tc::temperature(row1, 1e-40f),
                      contains("every logit of row 0 divided by T overflows to -inf"));
    CHECK(same_bits(tc::to_host(d_z), z));  // the row is left as it was
    // Penalties: a result of +inf, and NaN (a -inf logit minus a penalty that overflowed).
    const std::vector<tinyllm::token_id> generated{0, 5, -1, -1, 0, 0, 3, -1};
    auto d_gen = tc::to_device(generated);
    const tinyllm::tensor_view<const tinyllm::token_id, 2> gen(d_gen.data(), {B, 4});
    const tinyllm::tensor_view<const tinyllm::token_id, 2> host_gen(generated.data(), {B, 4});
    refused_alike([&] { tc::repetition_penalty(logits, gen, 1e-38f); },
                  [&](auto l) { cpu::repetition_penalty(l, host_gen, 1e-38f); },
                  "repetition_penalty: a logit of row 0 overflows to +inf", "divided by the penalty 1e-38 overflows");
    refused_alike([&] { tc::frequency_presence_penalty(logits, gen, -3e38f, -3e38f); },
                  [&](auto l) { cpu::frequency_presence_penalty(l, host_gen, -3e38f, -3e38f); },
                  "frequency_presence_penalty: a logit of row 0 overflows", "overflows to +inf");
    // A NaN in a row: refused before the penalty, the bias or the ban writes anything.
    std::vector<float> with_nan = z;
    with_nan[V + 3] = std::nanf("");
    tc::copy_to_device(d_z, with_nan);
    CHECK_THROWS_WITH(tc::repetition_penalty(logits, gen, 1.2f), contains("repetition_penalty: row 1 has a NaN"));
    CHECK_THROWS_WITH(tc::logit_bias(logits, {{2, 1.0f}}), contains("logit_bias: row 1 has a NaN"));
    const std::vector<tinyllm::token_id> ban{2};
    CHECK_THROWS_WITH(tc::ban_tokens(logits, ban), contains("ban_tokens: row 1 has a NaN"));
    const auto row = [&](index_t b) {
        const auto all = tc::to_host(d_z);
        return std::vector<float>(all.begin() + b * V, all.begin() + (b + 1) * V);
    };
    CHECK(same_bits(row(1), std::vector<float>(with_nan.begin() + V, with_nan.end())));
    // A generated token outside [0, V): refused with the row untouched, as the CPU refuses it first.
    const std::vector<tinyllm::token_id> out_of_range{0, 5, 8, -1, 0, 0, 3, -1};
    auto d_bad = tc::to_device(out_of_range);
    tc::copy_to_device(d_z, z);
    CHECK_THROWS_WITH(tc::repetition_penalty(logits, tinyllm::tensor_view<const tinyllm::token_id, 2>(d_bad.data(), {B, 4}), 1.2f),
                      contains("row 0 of generated holds a token outside [0, V)"));
    CHECK(same_bits(row(0), std::vector<float>(z.begin(), z.begin() + V)));
    // A bias that overflows to +inf.
    std::vector<float> big = z;
    big[1] = 3e38f;
    tc::copy_to_device(d_z, big);
    CHECK_THROWS_WITH(tc::logit_bias(logits, {{1, 3e38f}}), contains("logit_bias: a logit of row 0 overflows to +inf"));
}

TEST_CASE("the choosers: no rows, rows read more than once, a null pointer", "[cuda][sampling][errors]") {
    const index_t V = 16;
    auto d_z = tc::to_device(random_logits(1, V, 410));
    tc::device_buffer<tinyllm::token_id> d_out(4);
    // No rows: nothing to do, as on the CPU (the block count was divided by B = 0).
    const tinyllm::tensor_view<const float, 2> none(d_z.data(), {0, V});
    const tinyllm::tensor_view<tinyllm::token_id, 1> no_out(d_out.data(), {0});
    tc::greedy(no_out, none);
    tc::sample(no_out, none, sampling::params{}, 1, 0);
    sampling::params t0;
    t0.temperature = 0.0f;
    tc::sample(no_out, none, t0, 1, 0);
    // One row read four times (stride 0): the choosers only read, so it is allowed as on the CPU.
    const tinyllm::tensor_view<const float, 2> same_row(d_z.data(), {4, V}, {0, 1});
    tc::greedy(d_out.view(tinyllm::extents<1>{4}), same_row);
    std::vector<tinyllm::token_id> want(4);
    cpu::greedy(tinyllm::tensor_view<tinyllm::token_id, 1>(want.data(), {4}),
                tinyllm::tensor_view<const float, 2>(tc::to_host(d_z).data(), {4, V}, {0, 1}));
    CHECK(tc::to_host(d_out) == want);
    // A processor writes in place: the same row four times is refused.
    CHECK_THROWS_WITH(tc::top_k(tinyllm::tensor_view<float, 2>(d_z.data(), {4, V}, {0, 1}), 2),
                      contains("top_k: logits rows of 16 elements 0 apart overlap"));
    CHECK_THROWS_WITH(tc::greedy(d_out.view(tinyllm::extents<1>{4}), tinyllm::tensor_view<const float, 2>(nullptr, {4, V})),
                      contains("greedy: the logits pointer is null"));
}

TEST_CASE("the samplers on a created stream give the default stream's tokens and logits", "[cuda][sampling][stream]") {
    const index_t B = 6, V = 3000;
    const auto z = random_logits(B, V, 500);
    auto d_z = tc::to_device(z);
    const tinyllm::tensor_view<const float, 2> logits(d_z.data(), {B, V});
    sampling::params p;
    p.temperature = 0.8f;
    p.top_k = 50;
    p.top_p = 0.9f;
    cudaStream_t s1 = nullptr, s2 = nullptr;
    TINYLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    TINYLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    tc::device_buffer<tinyllm::token_id> d_want(B), d_got(B);
    const auto want = d_want.view(tinyllm::extents<1>{B}), got = d_got.view(tinyllm::extents<1>{B});
    const auto sync = tc::sampling_check::sync;

    // The choosers: the same tokens on s1 as on the default stream.
    poison_tokens(d_got);
    tc::greedy(want, logits);
    tc::greedy(got, logits, sync, s1);
    CHECK(tc::to_host(d_got) == tc::to_host(d_want));
    poison_tokens(d_got);
    tc::sample(want, logits, 11, 2);
    tc::sample(got, logits, 11, 2, 0, sync, s1);
    CHECK(tc::to_host(d_got) == tc::to_host(d_want));
    poison_tokens(d_got);
    tc::sample(want, logits, p, 11, 2);
    tc::sample(got, logits, p, 11, 2, 0, sync, s1);
    CHECK(tc::to_host(d_got) == tc::to_host(d_want));

    // The processors, logit bias and bans: the same logits on s2 as on the default stream.
    const std::map<tinyllm::token_id, float> bias{{0, 1.5f}, {17, -3.0f}, {2999, 0.25f}};
    const std::vector<tinyllm::token_id> banned{5, 6, 7, 2000};
    auto d_a = tc::to_device(z), d_b = tc::to_device(z);
    const auto a = d_a.view(tinyllm::extents<2>{B, V}), b = d_b.view(tinyllm::extents<2>{B, V});
    tc::top_k(a, 40);
    tc::logit_bias(a, bias);
    tc::ban_tokens(a, banned);
    tc::top_k(b, 40, sync, s2);
    tc::logit_bias(b, bias, s2);
    tc::ban_tokens(b, banned, s2);
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(s2));
    CHECK(same_bits(tc::to_host(d_b), tc::to_host(d_a)));

    // A bad row is reported from a created stream as from the default one.
    auto bad = z;
    bad[2 * V + 5] = std::nanf("");
    auto d_bad = tc::to_device(bad);
    CHECK_THROWS_WITH(tc::sample(got, d_bad.view(tinyllm::extents<2>{B, V}), p, 11, 2, 0, sync, s1),
                      contains("row 2 has a NaN or +inf logit"));

#if defined(TINYLLM_SIMULATED_GPU)
    // The simulator runs every call to completion at once, so it cannot show on which stream a
    // copy ran. What it shows: a checked call waits once (for its rows' status, on its stream),
    // and a stream's calls keep their status and workspace in buffers of that stream (the first
    // call on a stream allocates them; a buffer shared with another stream could be overwritten by
    // that stream's kernels before this call reads it back).
    cudaStream_t s3 = nullptr;
    TINYLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s3, cudaStreamNonBlocking));
    auto before = tinyllm::sim::stats();
    tc::sample(got, logits, p, 11, 2, 0, sync, s3);
    auto after = tinyllm::sim::stats();
    CHECK(after.synchronizations - before.synchronizations == 1);
    // s3's own status buffer, and v6's workspace: the rows' state, the chunk masses, the slots.
    REQUIRE(tc::detail::candidates_apply(V, p));
    CHECK(after.allocations - before.allocations == 4);
    before = after;
    tc::sample(got, logits, p, 11, 3, 0, sync, s3);
    tc::greedy(got, logits, sync, s3);
    after = tinyllm::sim::stats();
    CHECK(after.synchronizations - before.synchronizations == 2);
    CHECK(after.allocations == before.allocations);  // kept
    before = after;
    tc::logit_bias(b, bias, s3);  // uploads the map's two arrays (two allocations) and waits once
    after = tinyllm::sim::stats();
    CHECK(after.synchronizations - before.synchronizations == 1);
    CHECK(after.allocations - before.allocations == 2);
    TINYLLM_CUDA_CHECK(cudaStreamDestroy(s3));
#endif
    TINYLLM_CUDA_CHECK(cudaStreamDestroy(s1));
    TINYLLM_CUDA_CHECK(cudaStreamDestroy(s2));
}

// ---- v3 split: several blocks per row ------------------------------------------

namespace {

// The settings the split sampler is checked with: every option alone, their
// chain, and the edges k = 1, k = V - 1, k >= V, p tiny, p = 1, temperature 0.
std::vector<sampling::params> split_settings(index_t V) {
    std::vector<sampling::params> s(13);
    s[1].top_k = 50;
    s[2].top_k = 1;
    s[3].top_k = V;
    s[4].top_k = std::max<index_t>(1, V - 1);
    s[5].top_p = 0.9f;
    s[6].top_p = 1e-6f;
    s[7].top_p = 1.0f;
    s[8].temperature = 1.3f;
    s[8].top_p = 0.5f;
    s[9].min_p = 0.05f;
    s[10].temperature = 0.8f;
    s[10].top_k = 200;
    s[10].top_p = 0.95f;
    s[10].min_p = 0.02f;
    s[11].temperature = 0.0f;  // greedy_split
    s[12].temperature = 0.5f;
    s[12].top_k = 3;
    s[12].top_p = 0.7f;
    return s;
}

// random_logits' four kinds of rows, then (when B > 4) a row where most logits
// tie at the top-k / top-p threshold, and a row of -inf but one.
std::vector<float> split_logits(index_t B, index_t V, std::uint64_t which) {
    auto z = random_logits(B, V, which);
    if (B > 4) {
        float* ties = z.data() + 4 * V;
        for (index_t i = 0; i < V; ++i) ties[i] = (i % 97 == 5) ? 2.0f : 1.0f;
    }
    if (B > 5) {
        float* one = z.data() + 5 * V;
        for (index_t i = 0; i < V; ++i) one[i] = -inf;
        one[V / 2] = 0.25f;
    }
    return z;
}

std::vector<sampling::params> candidate_settings(index_t V);
std::vector<sampling::params> bucket_settings(index_t V);

// sample_split (v3), sample_candidates (v4) or sample_buckets (v5) with `splits`
// blocks per row (0: its own choice) against the CPU reference, over several
// seeds per setting. `z` replaces split_logits' rows when given.
// For v6, `splits` is the chunks per row and `blocks` the blocks (0: its own).
enum class split_rung { v3_split, v4_candidates, v5_buckets, v6_filtered, v7_chained };
void check_split(index_t B, index_t V, int splits, std::uint64_t which, int seeds,
                 split_rung rung = split_rung::v3_split, std::vector<float> z = {}, int blocks = 0) {
    if (z.empty()) z = split_logits(B, V, which);
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
    const auto out = d_out.view(tinyllm::extents<1>{B});
    const auto logits = d_z.view(tinyllm::extents<2>{B, V});
    const bool v4 = rung == split_rung::v4_candidates, v7 = rung == split_rung::v7_chained,
               v5 = rung == split_rung::v5_buckets || v7, v6 = rung == split_rung::v6_filtered;
    const auto settings = v4 || v6 ? candidate_settings(V) : v5 ? bucket_settings(V) : split_settings(V);
    for (std::size_t s = 0; s < settings.size(); ++s) {
        for (int k = 0; k < seeds; ++k) {
            const bool candidates = tc::detail::candidates_apply(V, settings[s]);
            const char* taken = v7 && tc::detail::buckets_apply(V, settings[s]) ? " (v7)"
                                : v5 && tc::detail::buckets_apply(V, settings[s]) ? " (v5)"
                                : v6 && candidates                              ? " (v6)"
                                : (v4 || v5) && candidates                      ? " (v4)"
                                                                                : " (v3)";
            INFO("B = " << B << ", V = " << V << ", splits = " << splits << ", blocks = " << blocks << ", setting "
                        << s << ", seed " << k << taken);
            const std::uint64_t seed = tinyllm_test::test_seed() ^ (which << 12) ^ (s << 4) ^ k, step = s + k;
            poison_tokens(d_out);
            if (v6 && candidates)
                tc::detail::run_filtered(out, logits, settings[s], seed, step, 0, splits, blocks,
                                         tc::sampling_check::sync, nullptr);
            else if (v6) tc::sample_filtered(out, logits, settings[s], seed, step, 0, splits);
            else if (v7) tc::sample_chained(out, logits, settings[s], seed, step, 0, splits);
            else if (v5) tc::sample_buckets(out, logits, settings[s], seed, step, 0, splits);
            else if (v4) tc::sample_candidates(out, logits, settings[s], seed, step, 0, splits);
            else tc::sample_split(out, logits, settings[s], seed, step, 0, splits);
            const auto got = tc::to_host(d_out);
            CHECK(count_different(got, cpu_tokens(z, B, V, &settings[s], seed, step, B)) == 0);
        }
    }
}

}  // namespace

TEST_CASE("v3 split: the sampler chooses the CPU's tokens for every setting, shape and split count",
          "[cuda][sampling][split]") {
    check_split(1, 1, 0, 700, 1);      // one logit
    check_split(1, 1, 16, 701, 1);     // forced 16 splits of one element: clamped to 1
    check_split(1, 7, 2, 702, 2);      // V below one block's share, odd
    check_split(6, 1003, 1, 703, 2);   // one block per row through the split path
    check_split(6, 1003, 5, 704, 2);   // V not a multiple of 4: scalar loads
    check_split(2, 4100, 7, 705, 2);   // V a multiple of 4: float4 loads
    check_split(1, 257, 64, 706, 1);   // chunks of 8 elements, the last ones empty
    check_split(33, 201, 2, 707, 1);   // a larger batch (every kind of row)
}

TEST_CASE("v3 split: greedy_split and the public choosers match the CPU", "[cuda][sampling][split]") {
    // Greedy's own block count: one wave of four blocks per SM (528 on an H200's 132) over the batch.
    CHECK(tc::detail::greedy_split_count(64, 128256, 0, 132) == 8);
    CHECK(tc::detail::greedy_split_count(1, 128256, 0, 132) == 32);   // at least 4096 elements a block
    CHECK(tc::detail::greedy_split_count(600, 128256, 0, 132) == 1);  // the batch alone fills the wave
    CHECK(tc::detail::greedy_split_count(64, 128256, 3) == 3);   // forced
    // The counts follow the GPU's SMs (an H100 PCIe has 114): 456 / 64 blocks for greedy,
    // 2 x 114 over the batch for v3; without a count given, this GPU's.
    CHECK(tc::detail::greedy_split_count(64, 128256, 0, 114) == 7);
    CHECK(tc::detail::split_count(64, 128256, 0, 114) == 4);
    CHECK(tc::detail::split_count(64, 128256, 0, 132) == 5);
    const index_t sms = tc::current_multiprocessors();
    CHECK(tc::detail::greedy_split_count(64, 128256, 0) == tc::detail::greedy_split_count(64, 128256, 0, sms));
    CHECK(tc::detail::split_count(64, 128256, 0) == tc::detail::split_count(64, 128256, 0, sms));
    for (auto [B, V, splits] : {std::tuple<index_t, index_t, int>{1, 1, 3}, {6, 1003, 1}, {6, 1003, 9}, {3, 4100, 4},
                                {1, 9000, 0}}) {
        INFO("B = " << B << ", V = " << V << ", splits = " << splits);
        const auto z = split_logits(B, V, 720 + static_cast<std::uint64_t>(V));
        auto d_z = tc::to_device(z);
        tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
        const auto out = d_out.view(tinyllm::extents<1>{B});
        const auto logits = d_z.view(tinyllm::extents<2>{B, V});
        std::vector<tinyllm::token_id> want(static_cast<std::size_t>(B));
        cpu::greedy(tinyllm::tensor_view<tinyllm::token_id, 1>(want.data(), {B}),
                    tinyllm::tensor_view<const float, 2>(z.data(), {B, V}));
        poison_tokens(d_out);
        tc::greedy_split(out, logits, splits);
        CHECK(count_different(tc::to_host(d_out), want) == 0);
        poison_tokens(d_out);
        tc::greedy(out, logits);
        CHECK(count_different(tc::to_host(d_out), want) == 0);
    }
    // B = 1, V = 9000: the public sample(params) takes v6 for top-k (and top-p after it).
    const index_t V = 9000;
    const auto z = split_logits(1, V, 730);
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(1);
    sampling::params p;
    p.top_k = 40;
    p.top_p = 0.8f;
    REQUIRE(tc::detail::candidates_apply(V, p));
    poison_tokens(d_out);
    tc::sample(d_out.view(tinyllm::extents<1>{1}), d_z.view(tinyllm::extents<2>{1, V}), p, 5, 9);
    CHECK(count_different(tc::to_host(d_out), cpu_tokens(z, 1, V, &p, 5, 9, 1)) == 0);
}

namespace {
// A multi-block sampler on rows with a NaN, a +inf, then only -inf in row 3: the
// same errors as the CPU, the token -1 for that row when unchecked (the others
// the CPU's), and an exact call right after the failures (same stream and
// workspace). run(out, logits, p, check) samples with 3 blocks per row; greedy,
// when given, is the rung's greedy with 3 blocks per row.
template <class Run, class Greedy>
void check_bad_rows(std::uint64_t which, Run run, Greedy greedy, bool with_top_k = true) {
    const index_t B = 4, V = 3001;
    auto z = random_logits(B, V, which);
    const auto good = z;
    z[3 * V + 17] = std::nanf("");
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(B);
    const auto out = d_out.view(tinyllm::extents<1>{B});
    const auto logits = d_z.view(tinyllm::extents<2>{B, V});
    sampling::params p;
    if (with_top_k) p.top_k = 20;
    p.top_p = 0.9f;
    const auto sync = tc::sampling_check::sync;
    CHECK_THROWS_WITH(run(out, logits, p, sync), contains("sample: row 3 has a NaN or +inf logit"));
    greedy(out, logits, "greedy: row 3 has a NaN or +inf logit");
    z[3 * V + 17] = inf;
    tc::copy_to_device(d_z, z);
    CHECK_THROWS_WITH(run(out, logits, p, sync), contains("row 3 has a NaN or +inf logit"));
    // Finite logits that a tiny T divides to +inf: refused as the CPU's temperature()
    // refuses them (they were drawn from the NaN weights of inf - inf).
    tc::copy_to_device(d_z, good);
    sampling::params tiny = p;
    tiny.temperature = 1e-45f;
    CHECK_THROWS_WITH(run(out, logits, tiny, sync), contains("or one that the temperature divides to +inf"));
    for (index_t i = 0; i < V; ++i) z[static_cast<std::size_t>(3 * V + i)] = -inf;
    tc::copy_to_device(d_z, z);
    CHECK_THROWS_WITH(run(out, logits, p, sync), contains("every logit of row 3 is -inf"));
    greedy(out, logits, "every logit of row 3 is -inf");
    // Unchecked: the bad row gets -1, the others the CPU's tokens.
    poison_tokens(d_out);
    run(out, logits, p, tc::sampling_check::none);
    auto tokens = tc::to_host(d_out);
    CHECK(tokens[3] == -1);
    tokens.resize(3);
    CHECK(count_different(tokens, cpu_tokens(good, 3, V, &p, 1, 0, 3)) == 0);
    // A call after the failures (same stream, same workspace) is exact.
    tc::copy_to_device(d_z, good);
    poison_tokens(d_out);
    run(out, logits, p, sync);
    CHECK(count_different(tc::to_host(d_out), cpu_tokens(good, B, V, &p, 1, 0, B)) == 0);
}
}  // namespace

TEST_CASE("v3 split: bad rows give the same errors, and the next call is unaffected", "[cuda][sampling][split][errors]") {
    check_bad_rows(
        740,
        [](auto out, auto logits, const sampling::params& p, tc::sampling_check check) {
            tc::sample_split(out, logits, p, 1, 0, 0, 3, check);
        },
        [](auto out, auto logits, const char* message) {
            CHECK_THROWS_WITH(tc::greedy_split(out, logits, 3), contains(message));
        });
}

// ---- v4 candidates: each block's k largest, one launch ------------------------

namespace {

// The settings v4 is checked with: top-k alone and in every chain, the edges
// k = 1, k = V - 1, k = 1024 (the largest v4 takes) and k = 1025 (v3's), k = 512
// and 513 (a block's bound from its threads' maxima needs k of them: 512 take
// it in full chunks, 513 never), ties at the threshold (split_logits' fifth
// row), and one setting without top-k (v3's path through sample_candidates).
std::vector<sampling::params> candidate_settings(index_t V) {
    std::vector<sampling::params> s(12);
    s[0].top_k = 50;
    s[1].top_k = 1;
    s[2].top_k = std::max<index_t>(1, V - 1);
    s[3].top_k = 1024;
    s[4].top_k = 1025;
    s[5].temperature = 0.8f;
    s[5].top_k = 200;
    s[5].top_p = 0.95f;
    s[5].min_p = 0.02f;
    s[6].temperature = 0.5f;
    s[6].top_k = 3;
    s[6].top_p = 0.7f;
    s[7].temperature = 1.3f;
    s[7].top_k = 40;
    s[7].top_p = 1e-6f;
    s[8].top_k = 7;
    s[8].min_p = 0.5f;
    s[9].top_p = 0.9f;
    s[10].top_k = 512;
    s[11].top_k = 513;
    return s;
}

}  // namespace

TEST_CASE("v4 candidates: which chains take it, and how many blocks a row gets", "[cuda][sampling][candidates]") {
    sampling::params p;
    CHECK_FALSE(tc::detail::candidates_apply(1000, p));  // no top-k
    p.top_k = 50;
    CHECK(tc::detail::candidates_apply(1000, p));
    CHECK_FALSE(tc::detail::candidates_apply(50, p));  // k >= V keeps the row: no selection
    p.top_k = 1024;
    CHECK(tc::detail::candidates_apply(128256, p));
    p.top_k = 1025;
    CHECK_FALSE(tc::detail::candidates_apply(128256, p));
    p.top_k = 50;
    p.temperature = 0.0f;  // greedy
    CHECK_FALSE(tc::detail::candidates_apply(1000, p));
    // A block holds at most 8192 elements: 16 chunks for Llama 3's row at B = 64
    // (v3 alone would cut it into 5), 32 at B = 1.
    CHECK(tc::detail::candidate_split_count(64, 128256, 0, 132) == 16);
    CHECK(tc::detail::candidate_split_count(1, 128256, 0, 132) == 32);
    CHECK(tc::detail::candidate_split_count(64, 8192, 0, 132) == 2);  // v3's count where it is enough
    CHECK(tc::detail::candidate_split_count(1000, 8193, 0, 132) == 2);  // one block per row is not
    CHECK(tc::detail::candidate_split_count(1, 20000, 1) == 3);  // a forced count too small is raised
}

TEST_CASE("v4 candidates: the sampler chooses the CPU's tokens for every setting, shape and split count",
          "[cuda][sampling][candidates]") {
    check_split(1, 2, 0, 800, 2, split_rung::v4_candidates);      // V = 2: k = 1 only
    check_split(1, 7, 2, 801, 2, split_rung::v4_candidates);      // chunks shorter than k (every key is a slot)
    check_split(6, 1003, 1, 802, 2, split_rung::v4_candidates);   // one block per row; V not a multiple of 4
    check_split(6, 1003, 5, 803, 2, split_rung::v4_candidates);   // ties spread over 5 chunks (row 4)
    check_split(2, 4100, 7, 804, 2, split_rung::v4_candidates);   // float4 loads
    check_split(1, 257, 64, 805, 1, split_rung::v4_candidates);   // chunks of 8 elements, the last ones empty
    check_split(33, 201, 3, 806, 1, split_rung::v4_candidates);   // a larger batch (every kind of row)
    check_split(2, 20000, 0, 807, 1, split_rung::v4_candidates);  // its own count: 3 chunks of at most 8192
}

namespace {
// The public cuda::sample on B rows of split_logits against the CPU's tokens.
void check_public_sample(index_t B, index_t V, const sampling::params& p, std::uint64_t which) {
    INFO("B = " << B << ", V = " << V);
    const auto z = split_logits(B, V, which);
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
    poison_tokens(d_out);
    tc::sample(d_out.view(tinyllm::extents<1>{B}), d_z.view(tinyllm::extents<2>{B, V}), p, 5, 9);
    CHECK(count_different(tc::to_host(d_out), cpu_tokens(z, B, V, &p, 5, 9, B)) == 0);
}
}  // namespace

TEST_CASE("v4 candidates: bad rows give the same errors, and the next call is unaffected",
          "[cuda][sampling][candidates][errors]") {
    check_bad_rows(
        840,
        [](auto out, auto logits, const sampling::params& p, tc::sampling_check check) {
            tc::sample_candidates(out, logits, p, 1, 0, 0, 3, check);
        },
        [](auto, auto, const char*) {});  // v4 has no greedy of its own (temperature 0 is v3's greedy_split)
    const index_t B = 2, V = 100;
    const auto z = random_logits(B, V, 841);
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(B);
    sampling::params zero_k;
    zero_k.top_k = 0;
    CHECK_THROWS_WITH(tc::sample_candidates(d_out.view(tinyllm::extents<1>{B}), d_z.view(tinyllm::extents<2>{B, V}),
                                            zero_k, 1, 0),
                      contains("top_k"));
}

// ---- v6 filtered: one bound carried along a block's chunks --------------------

namespace {
// split_logits' rows, then rows that take v6's other paths: logits rising along
// the row (every chunk's keys pass the bound the chunks before it gave, so each
// raises it), falling (a chunk's largest keys crowd into a few threads' groups,
// so its bound M leaves more than cap above it: the exact selection), and
// rising in steps from chunk to chunk with ties inside each step.
std::vector<float> filtered_logits(index_t B, index_t V, std::uint64_t which) {
    auto z = split_logits(B, V, which);
    for (index_t b = 6; b < B; ++b) {
        float* row = z.data() + b * V;
        for (index_t i = 0; i < V; ++i) {
            const float x = static_cast<float>(i) / static_cast<float>(V);  // [0, 1)
            row[i] = b % 3 == 0 ? 8.0f * x : b % 3 == 1 ? -8.0f * x : std::floor(16.0f * x) + (i % 3 == 0 ? 0.5f : 0.0f);
        }
    }
    return z;
}
}  // namespace

TEST_CASE("v6 filtered: how many blocks a row gets and how many chunks each walks", "[cuda][sampling][filtered]") {
    int blocks = 0;
    // Llama 3's row at B = 64 on 132 SMs: v4's 16 chunks over 4 blocks (one wave, two per SM).
    CHECK(tc::detail::filtered_blocks(64, 16, blocks, 132) == 4);
    CHECK(blocks == 4);
    blocks = 0;  // B = 1: a block per chunk, as v4
    CHECK(tc::detail::filtered_blocks(1, 32, blocks, 132) == 1);
    CHECK(blocks == 32);
    blocks = 0;  // more rows than a wave holds: one block walks the whole row
    CHECK(tc::detail::filtered_blocks(300, 16, blocks, 132) == 16);
    CHECK(blocks == 1);
    blocks = 5;  // forced: 16 chunks over 5 blocks are 4 blocks of 4 (no block left with fewer)
    CHECK(tc::detail::filtered_blocks(64, 16, blocks, 132) == 4);
    CHECK(blocks == 4);
    blocks = 40;  // forced past the chunks: one chunk each
    CHECK(tc::detail::filtered_blocks(1, 7, blocks, 132) == 1);
    CHECK(blocks == 7);
    CHECK(tc::detail::filtered_cap(50) == 107);
}

TEST_CASE("v6 filtered: the sampler chooses the CPU's tokens for every setting, shape and count of blocks",
          "[cuda][sampling][filtered]") {
    const auto v6 = split_rung::v6_filtered;
    check_split(1, 2, 0, 900, 2, v6);                                  // V = 2: k = 1 only
    check_split(1, 7, 2, 901, 2, v6, {}, 1);                           // one block walks two chunks shorter than k
    check_split(9, 1003, 5, 902, 2, v6, filtered_logits(9, 1003, 902), 2);  // 5 chunks over 2 blocks (3 + 2)
    check_split(9, 1003, 5, 903, 1, v6, filtered_logits(9, 1003, 903), 1);  // one block walks the row
    check_split(9, 4100, 7, 904, 1, v6, filtered_logits(9, 4100, 904), 3);  // float4 loads; 3 + 3 + 1
    check_split(1, 257, 64, 905, 1, v6, {}, 5);                        // chunks of 8 elements, the last ones empty
    check_split(33, 201, 3, 906, 1, v6);                               // a larger batch, its own block count
    check_split(9, 20000, 0, 907, 1, v6, filtered_logits(9, 20000, 907), 1);  // 3 chunks of at most 8192, one block
}

TEST_CASE("v6 filtered at Llama 3's vocabulary and B = 64, the benchmark's shape", "[cuda][sampling][filtered][large]") {
    // 16 chunks a row; on 132 SMs (an H200, and the simulated GPU) 4 blocks of 4 chunks.
    const index_t B = 64, V = 128256;
    int blocks = 0;
    const index_t per_block = tc::detail::filtered_blocks(B, tc::detail::candidate_split_count(B, V, 0), blocks);
    INFO(blocks << " blocks a row, " << per_block << " chunks each");
    check_split(B, V, 0, 950, 1, split_rung::v6_filtered, filtered_logits(B, V, 950));
}

TEST_CASE("v6 filtered: the public sampler takes it for top-k and matches the CPU", "[cuda][sampling][filtered]") {
    sampling::params p;
    p.top_k = 40;
    p.top_p = 0.8f;
    REQUIRE(tc::detail::candidates_apply(9000, p));
    check_public_sample(3, 9000, p, 830);
}

TEST_CASE("v6 filtered: bad rows give the same errors, and the next call is unaffected",
          "[cuda][sampling][filtered][errors]") {
    check_bad_rows(
        945,
        [](auto out, auto logits, const sampling::params& p, tc::sampling_check check) {
            tc::detail::run_filtered(out, logits, p, 1, 0, 0, 3, 1, check, nullptr);  // one block walks 3 chunks
        },
        [](auto, auto, const char*) {});  // temperature 0 is v3's greedy_split
}

// ---- v5 buckets: top-p without top-k in three launches ------------------------

namespace {

// The settings v5 is checked with: top-p alone from tiny to nearly 1, with
// temperatures and min-p, a top-k that keeps the whole row (k = V: still v5),
// and the chains v5 hands on (p = 1, top-k below V, temperature 0).
std::vector<sampling::params> bucket_settings(index_t V) {
    std::vector<sampling::params> s(11);
    s[0].top_p = 0.9f;
    s[1].top_p = 1e-6f;
    s[2].top_p = 0.999f;
    s[3].temperature = 1.3f;
    s[3].top_p = 0.5f;
    s[4].temperature = 0.8f;
    s[4].top_p = 0.95f;
    s[4].min_p = 0.02f;
    s[5].temperature = 4.0f;
    s[5].top_p = 0.3f;
    s[5].min_p = 0.2f;
    s[6].top_k = V;
    s[6].top_p = 0.7f;
    s[7].top_p = 1.0f;
    s[8].top_k = std::max<index_t>(1, V - 1);
    s[8].top_p = 0.9f;
    s[9].temperature = 0.0f;
    s[9].top_p = 0.9f;
    s[10].temperature = 0.25f;
    s[10].top_p = 0.6f;
    return s;
}

// Rows whose masses spread past x = -28, where the weights are 0: uniform over
// [-60, 10), a row of two values 30 nats apart, and a row on a grid of eighth
// nats (many keys on the buckets' edges), after split_logits' rows.
std::vector<float> bucket_logits(index_t B, index_t V, std::uint64_t which) {
    auto z = split_logits(B, V, which);
    const auto wide = tinyllm_test::random_floats(static_cast<std::size_t>(V), which + 1, -60.0f, 10.0f);
    for (index_t b = 6; b < B; ++b) {
        float* row = z.data() + b * V;
        for (index_t i = 0; i < V; ++i) {
            const float w = wide[static_cast<std::size_t>(i)];
            row[i] = b % 3 == 0 ? w : b % 3 == 1 ? (i % 5 == 0 ? 1.0f : -29.0f) : std::round(w * 8.0f) / 8.0f;
        }
    }
    return z;
}

}  // namespace

TEST_CASE("v5 buckets: which chains take it", "[cuda][sampling][buckets]") {
    sampling::params p;
    CHECK_FALSE(tc::detail::buckets_apply(1000, p));  // no top-p
    p.top_p = 0.9f;
    CHECK(tc::detail::buckets_apply(1000, p));
    p.top_k = 1000;  // keeps the whole row
    CHECK(tc::detail::buckets_apply(1000, p));
    p.top_k = 999;
    CHECK_FALSE(tc::detail::buckets_apply(1000, p));
    p.top_k.reset();
    p.top_p = 1.0f;
    CHECK_FALSE(tc::detail::buckets_apply(1000, p));
    p.top_p = 0.5f;
    p.temperature = 0.0f;  // greedy
    CHECK_FALSE(tc::detail::buckets_apply(1000, p));
}

TEST_CASE("v5 buckets: the sampler chooses the CPU's tokens for every setting, shape and split count",
          "[cuda][sampling][buckets]") {
    check_split(1, 1, 0, 900, 1, split_rung::v5_buckets);     // one logit
    check_split(1, 7, 2, 901, 2, split_rung::v5_buckets);     // V below one block's share
    check_split(6, 1003, 1, 902, 2, split_rung::v5_buckets);  // one block per row; scalar loads
    check_split(6, 1003, 5, 903, 2, split_rung::v5_buckets);  // the tie row: one bucket holds most of it
    check_split(2, 4100, 7, 904, 2, split_rung::v5_buckets);  // float4 loads
    check_split(1, 257, 64, 905, 1, split_rung::v5_buckets);  // chunks of 8 elements, the last ones empty
    check_split(33, 201, 3, 906, 1, split_rung::v5_buckets);  // a larger batch (every kind of row)
    check_split(9, 3001, 4, 907, 2, split_rung::v5_buckets, bucket_logits(9, 3001, 907));  // weights 0 past -28
    check_split(9, 20000, 0, 908, 1, split_rung::v5_buckets, bucket_logits(9, 20000, 908));  // its own count
    // Row 4 puts ~39,600 logits into one bucket, more than a row's list holds
    // (bucket_list_max): its last block reads the row again.
    REQUIRE(tc::detail::bucket_capacity(40000) < 39000);
    check_split(6, 40000, 0, 909, 1, split_rung::v5_buckets);
}

TEST_CASE("v5 buckets: the public sampler takes it and matches the CPU", "[cuda][sampling][buckets]") {
    sampling::params p;
    p.top_p = 0.8f;
    p.temperature = 0.9f;
    REQUIRE(tc::detail::buckets_apply(9000, p));
    check_public_sample(3, 9000, p, 930);
    // A batch that fills the GPU alone (split_count 1): v5 with one block per row.
    REQUIRE(tc::detail::split_count(300, 1003, 0) == 1);
    check_public_sample(300, 1003, p, 931);
}

TEST_CASE("v5 buckets and v7 chained: bad rows give the same errors, and the next call is unaffected",
          "[cuda][sampling][buckets][chained][errors]") {
    for (const bool chained : {false, true}) {
        INFO((chained ? "v7" : "v5"));
        check_bad_rows(
            chained ? 1020 : 940,
            [chained](auto out, auto logits, const sampling::params& p, tc::sampling_check check) {
                REQUIRE(tc::detail::buckets_apply(logits.extent(1), p));
                if (chained) tc::sample_chained(out, logits, p, 1, 0, 0, 3, check);
                else tc::sample_buckets(out, logits, p, 1, 0, 0, 3, check);
            },
            [](auto, auto, const char*) {}, false);  // neither has a greedy of its own
    }
}

// ---- v7 chained: v5's passes in one launch ------------------------------------

TEST_CASE("v7 chained: the sampler chooses the CPU's tokens for every setting, shape and split count",
          "[cuda][sampling][chained]") {
    check_split(1, 1, 0, 1000, 1, split_rung::v7_chained);     // one logit
    check_split(1, 7, 2, 1001, 2, split_rung::v7_chained);     // V below one block's share
    check_split(6, 1003, 1, 1002, 2, split_rung::v7_chained);  // one block per row (a pass is B blocks)
    check_split(6, 1003, 5, 1003, 2, split_rung::v7_chained);  // the tie row: one bucket holds most of it
    check_split(2, 4100, 7, 1004, 2, split_rung::v7_chained);  // float4 loads
    check_split(1, 257, 64, 1005, 1, split_rung::v7_chained);  // chunks of 8 elements, the last ones empty
    check_split(33, 201, 3, 1006, 1, split_rung::v7_chained);  // a larger batch (every kind of row)
    check_split(9, 3001, 4, 1007, 2, split_rung::v7_chained, bucket_logits(9, 3001, 1007));  // weights 0 past -28
    check_split(6, 40000, 0, 1009, 1, split_rung::v7_chained);  // a list that overflows: the row read again
}

TEST_CASE("v7 chained: the same tokens as v5, bit for bit, call after call on one stream",
          "[cuda][sampling][chained]") {
    // Calls of different shapes share the stream's workspace: each launch must
    // leave its tickets, its done count and every row's stage at zero, or the
    // next call's blocks would take the wrong passes (and trap).
    sampling::params p;
    p.top_p = 0.85f;
    p.temperature = 1.1f;
    for (const auto& [B, V, splits] : std::vector<std::tuple<index_t, index_t, int>>{
             {4, 5000, 3}, {4, 5000, 3}, {2, 9000, 0}, {7, 2500, 1}, {4, 5000, 6}}) {
        const auto z = split_logits(B, V, 1010 + static_cast<std::uint64_t>(V));
        auto d_z = tc::to_device(z);
        tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
        const auto out = d_out.view(tinyllm::extents<1>{B});
        const auto logits = d_z.view(tinyllm::extents<2>{B, V});
        INFO("B = " << B << ", V = " << V << ", splits = " << splits);
        poison_tokens(d_out);
        tc::sample_buckets(out, logits, p, 77, 5, 0, splits);
        const auto v5 = tc::to_host(d_out);
        poison_tokens(d_out);
        tc::sample_chained(out, logits, p, 77, 5, 0, splits);
        const auto v7 = tc::to_host(d_out);
        CHECK(count_different(v7, v5) == 0);
        CHECK(count_different(v7, cpu_tokens(z, B, V, &p, 77, 5, B)) == 0);
        // What the launch leaves behind (the simulator runs the blocks in ticket
        // order, so a stale stage would not change its tokens; on a GPU it would
        // let the next call's rows start a pass early).
        auto& w = tc::detail::split_buffers(B, tc::detail::split_count(B, V, splits), nullptr);
        std::vector<tc::detail::split_row> rows(w.rows.size());
        unsigned launch[2] = {1, 1};
        TINYLLM_CUDA_CHECK(cudaMemcpy(rows.data(), w.rows.data(), w.rows.bytes(), cudaMemcpyDeviceToHost));
        TINYLLM_CUDA_CHECK(cudaMemcpy(launch, w.launch.data(), sizeof launch, cudaMemcpyDeviceToHost));
        CHECK(launch[0] == 0);
        CHECK(launch[1] == 0);
        CHECK(std::all_of(rows.begin(), rows.end(), [](const auto& r) { return r.stage == 0 && r.done == 0; }));
    }
}

// A mass that reaches top-p's target EXACTLY at a threshold: one logit 0 (weight
// 2^40), two at -ln 2 (2^39 each), the rest -inf. S = 2^41, and p = 1/2 gives
// the target 2^40, the top token's weight alone: only it is kept (a rung whose
// target or comparison is off by one keeps all three). Random draws never land
// there; every multi-block rung and the one-block rung are checked.
TEST_CASE("top-p whose target is reached exactly at a threshold keeps only the tokens above it",
          "[cuda][sampling][split][buckets][chained]") {
    const float minus_ln2 = -0.693147182f;
    REQUIRE(tinyllm::sampling_weight(minus_ln2) == (std::uint64_t{1} << 39));
    REQUIRE(tinyllm::top_p_target(std::uint64_t{1} << 41, 0.5f) == (std::uint64_t{1} << 40));
    const index_t B = 2, V = 3001;
    std::vector<float> z(static_cast<std::size_t>(B * V), -inf);
    const index_t top[2] = {1700, 5};
    z[static_cast<std::size_t>(top[0])] = 0.0f;
    z[17] = z[2999] = minus_ln2;
    z[static_cast<std::size_t>(V + top[1])] = 0.0f;
    z[static_cast<std::size_t>(V + 4)] = z[static_cast<std::size_t>(V + 6)] = minus_ln2;
    auto d_z = tc::to_device(z);
    tc::device_buffer<tinyllm::token_id> d_out(static_cast<std::size_t>(B));
    const auto out = d_out.view(tinyllm::extents<1>{B});
    const auto logits = d_z.view(tinyllm::extents<2>{B, V});
    sampling::params p;
    p.top_p = 0.5f;
    for (std::uint64_t seed = 0; seed < 8; ++seed) {
        const auto want = cpu_tokens(z, B, V, &p, seed, 3, B);
        REQUIRE(want[0] == top[0]);
        REQUIRE(want[1] == top[1]);
        for (int rung = 0; rung < 4; ++rung) {
            INFO("seed " << seed << ", rung " << (rung == 0 ? "v2" : rung == 1 ? "v3" : rung == 2 ? "v5" : "v7"));
            poison_tokens(d_out);
            if (rung == 0) tc::sample_fused(out, logits, p, seed, 3);
            else if (rung == 1) tc::sample_split(out, logits, p, seed, 3, 0, 4);
            else if (rung == 2) tc::sample_buckets(out, logits, p, seed, 3, 0, 4);
            else tc::sample_chained(out, logits, p, seed, 3, 0, 4);
            CHECK(count_different(tc::to_host(d_out), want) == 0);
        }
    }
}
