// Tests for continuous batching (tinyllm/batching.hpp) and the batched forward
// it runs (cpu::model::forward_batch): the batched logits equal each sequence's
// own; requests of different lengths, budgets and sampling parameters, run
// together with chunked prefill, give exactly the tokens cpu::generate gives
// each alone — also when a small pool forces preemption and with a prefix
// cache; cancellation frees the blocks; every block is back at the end; bad
// requests are refused with a message.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"
#include "support/generate_alone.hpp"

#include <tinyllm/batching.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

using tinyllm::batch_request;
using tinyllm::continuous_batcher;
using tinyllm::finish_reason;
using tinyllm::index_t;
using tinyllm::kv_block_pool;
using tinyllm::token_id;
using tinyllm_test::contains;

namespace cpu = tinyllm::cpu;

namespace {

std::vector<token_id> tokens_from(token_id first, index_t n, index_t vocab) {
    std::vector<token_id> t(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = static_cast<token_id>((first + 7 * i) % vocab);
    return t;
}

// Requests of every kind: short and long prompts (some sharing a beginning),
// greedy and sampled, none or many new tokens.
std::vector<batch_request> mixed_requests(index_t vocab) {
    std::vector<batch_request> rs;
    const std::vector<token_id> shared = tokens_from(3, 12, vocab);
    for (int i = 0; i < 7; ++i) {
        batch_request r;
        r.prompt = i % 3 == 0 ? shared : tokens_from(5 + i, 2 + 5 * i, vocab);
        if (i % 3 == 0) r.prompt.push_back(static_cast<token_id>(40 + i));
        r.max_new_tokens = i == 4 ? 0 : 3 + 2 * i;
        if (i % 2 == 1) {
            r.sampling.temperature = 0.9f;
            r.sampling.top_k = 20;
            if (i == 3) r.sampling.top_p = 0.8f;
        }
        r.seed = 100 + static_cast<std::uint64_t>(i);
        r.stream = static_cast<std::uint64_t>(i % 2);
        r.eos_token_ids = {static_cast<token_id>(vocab + 1)};  // never produced: every request runs its length
        rs.push_back(r);
    }
    return rs;
}

using tinyllm_test::generate_alone;

}  // namespace

TEST_CASE("model::forward_batch: each session's logits as if it ran alone", "[batching]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 64, false);
        const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 88));
        kv_block_pool pool(c.num_layers, 24, 4, c.num_kv_heads, c.head_dim);
        // Three sessions: one decoding after a prefill, one mid-prompt, one new.
        auto a = m.new_session(pool), b = m.new_session(pool), d = m.new_session(pool);
        m.forward(a, tokens_from(1, 9, 64));
        m.forward(b, tokens_from(2, 5, 64));
        const std::vector<token_id> fa = {7}, fb = tokens_from(9, 6, 64), fd = tokens_from(4, 3, 64);
        std::vector<cpu::model::session*> sessions = {&a, &b, &d};
        const std::vector<std::span<const token_id>> feeds = {fa, fb, fd};
        const auto got = m.forward_batch(sessions, feeds);  // (3, V)
        CHECK(a.length == 10);
        CHECK(b.length == 11);
        CHECK(d.length == 3);
        // The same steps one session at a time, contiguous.
        auto ca = m.new_session(16), cb = m.new_session(16), cd = m.new_session(16);
        m.forward(ca, tokens_from(1, 9, 64));
        m.forward(cb, tokens_from(2, 5, 64));
        std::vector<float> want;
        for (const auto& l : {m.forward_last(ca, fa), m.forward_last(cb, fb), m.forward_last(cd, fd)})
            want.insert(want.end(), l.values().begin(), l.values().end());
        TINYLLM_REQUIRE_CLOSE(std::vector<float>(got.values().begin(), got.values().end()), want,
                              tinyllm_test::tolerance{1e-4, 1e-4, 1e-5},
                              std::string(arch == model_arch::gpt2 ? "gpt2" : arch == model_arch::llama ? "llama"
                                                                                                       : "mixtral") +
                                  ": batched against one at a time");
    }
    SECTION("bad input") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 64, true);
        const cpu::model m(c, tinyllm::random_model_weights(c, 3));
        kv_block_pool pool(c.num_layers, 3, 4, c.num_kv_heads, c.head_dim);
        auto a = m.new_session(pool), contiguous = m.new_session(8);
        const std::vector<token_id> one = {1}, many = tokens_from(1, 13, 64);
        std::vector<cpu::model::session*> twice = {&a, &a};
        CHECK_THROWS_WITH(m.forward_batch(twice, std::vector<std::span<const token_id>>{one, one}),
                          contains("session 1 is also session 0"));
        std::vector<cpu::model::session*> not_paged = {&contiguous};
        CHECK_THROWS_WITH(m.forward_batch(not_paged, std::vector<std::span<const token_id>>{one}),
                          contains("session 0 is not paged"));
        std::vector<cpu::model::session*> just_a = {&a};
        CHECK_THROWS_WITH(m.forward_batch(just_a, std::vector<std::span<const token_id>>{many}),
                          contains("the step needs 4 free blocks; the pool has 3 of 3"));
        CHECK(a.length == 0);
        CHECK(pool.free_blocks() == 3);
    }
}

TEST_CASE("continuous batching gives each request the tokens it gets alone", "[batching]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        const std::string name = arch == model_arch::gpt2 ? "gpt2" : "llama";
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 64, false);
        const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 89));
        const std::vector<batch_request> requests = mixed_requests(c.vocab_size);
        std::vector<std::vector<token_id>> want;
        for (const auto& r : requests) want.push_back(generate_alone(m, r));

        struct setup {
            std::string what;
            index_t blocks;
            tinyllm::batch_options options;
            bool cache;
        };
        // Roomy; a pool so small that sequences are preempted; with a prefix cache.
        const std::vector<setup> setups = {{"roomy pool", 64, {16, 4, 8}, false},
                                           {"small pool", 12, {24, 6, 8}, false},
                                           {"prefix cache", 64, {16, 4, 8}, true}};
        for (const setup& s : setups) {
            INFO(name << ", " << s.what);
            kv_block_pool pool(c.num_layers, s.blocks, 4, c.num_kv_heads, c.head_dim);
            tinyllm::prefix_cache cache(pool, 16);
            continuous_batcher batcher(m, pool, s.options, s.cache ? &cache : nullptr);
            std::vector<index_t> ids;
            for (const auto& r : requests) ids.push_back(batcher.submit(r));
            std::vector<std::vector<token_id>> streamed(requests.size());
            index_t finished = 0;
            while (!batcher.idle()) {
                for (const auto& e : batcher.step()) {
                    if (e.token >= 0) streamed[static_cast<std::size_t>(e.id)].push_back(e.token);
                    if (e.finished != finish_reason::none) ++finished;
                }
                CHECK(batcher.running() <= s.options.max_running);
            }
            CHECK(finished == static_cast<index_t>(requests.size()));
            for (std::size_t i = 0; i < requests.size(); ++i) {
                INFO("request " << i);
                CHECK(batcher.tokens(ids[i]) == want[i]);
                CHECK(streamed[i] == want[i]);
                CHECK(batcher.finished(ids[i]) == finish_reason::length);
            }
            CHECK(batcher.stats().max_batch_rows <= s.options.token_budget);
            if (s.blocks == 12) CHECK(batcher.stats().preemptions > 0);
            if (s.cache) CHECK(cache.stats().hit_tokens > 0);
            // Every block back: in the pool, or held by the cache alone.
            CHECK(pool.used_blocks() == cache.cached_blocks());
            if (!s.cache) CHECK(pool.used_blocks() == 0);
        }
    }
}

TEST_CASE("continuous batching: cancellation, end of sequence, bad requests", "[batching]") {
    using tinyllm::model_arch;
    const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 64, true);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 90));
    kv_block_pool pool(c.num_layers, 16, 4, c.num_kv_heads, c.head_dim);
    continuous_batcher batcher(m, pool, {8, 4, 4});
    batch_request r;
    r.prompt = tokens_from(1, 10, 64);
    r.max_new_tokens = 20;
    const index_t a = batcher.submit(r), b = batcher.submit(r);
    batcher.step(), batcher.step(), batcher.step();
    CHECK(pool.used_blocks() > 0);
    batcher.cancel(a);
    CHECK(batcher.finished(a) == finish_reason::cancelled);
    const auto events = batcher.step();
    CHECK(std::count_if(events.begin(), events.end(), [&](const auto& e) {
              return e.id == a && e.finished == finish_reason::cancelled;
          }) == 1);
    batcher.cancel(b);
    batcher.step();
    CHECK(batcher.idle());
    CHECK(pool.used_blocks() == 0);

    // An end-of-sequence token stops a request: the greedy continuation's third token, as EOS.
    const std::vector<token_id> greedy = generate_alone(m, r);
    batch_request stop = r;
    stop.eos_token_ids = {greedy[2]};
    const index_t e = batcher.submit(stop);
    batcher.run();
    const std::vector<token_id>& got = batcher.tokens(e);
    const auto first_eos = std::find(greedy.begin(), greedy.end(), greedy[2]) - greedy.begin();
    CHECK(got == std::vector<token_id>(greedy.begin(), greedy.begin() + first_eos + 1));
    CHECK(batcher.finished(e) == finish_reason::eos);

    SECTION("bad requests") {
        batch_request bad = r;
        bad.prompt.clear();
        CHECK_THROWS_WITH(batcher.submit(bad), contains("the prompt is empty"));
        bad.prompt = {1, 64};
        CHECK_THROWS_WITH(batcher.submit(bad), contains("token id 64 at prompt position 1 is outside the vocabulary"));
        bad.prompt = {1};
        bad.max_new_tokens = -1;
        CHECK_THROWS_WITH(batcher.submit(bad), contains("max_new_tokens = -1 must not be negative"));
        bad.max_new_tokens = 100;
        CHECK_THROWS_WITH(batcher.submit(bad), contains("101 positions need 26 blocks; the whole pool has 16"));
        // Counts whose sum (prompt + max_new_tokens) or whose block count would overflow index_t.
        const index_t huge = std::numeric_limits<index_t>::max();
        bad.max_new_tokens = huge;
        CHECK_THROWS_WITH(batcher.submit(bad), contains("1 prompt + max_new_tokens = 9223372036854775807 new tokens "
                                                        "are more positions than the whole pool's 16 blocks of 4"));
        bad.max_new_tokens = huge - 1;
        CHECK_THROWS_WITH(batcher.submit(bad), contains("9223372036854775807 positions need 2305843009213693952 "
                                                        "blocks; the whole pool has 16"));
        bad.max_new_tokens = huge - 3;
        CHECK_THROWS_WITH(batcher.submit(bad), contains("9223372036854775805 positions need 2305843009213693952 "
                                                        "blocks; the whole pool has 16"));
        CHECK(batcher.idle());
        bad.max_new_tokens = 4;
        bad.sampling.top_p = 0.0f;
        CHECK_THROWS_WITH(batcher.submit(bad), contains("top_p"));
        CHECK_THROWS_WITH(continuous_batcher(m, pool, {0, 1, 1}), contains("must all be at least 1"));
    }
    SECTION("a prefix cache on another pool is refused") {
        kv_block_pool other(c.num_layers, 16, 4, c.num_kv_heads, c.head_dim);
        tinyllm::prefix_cache cache(other, 8);
        CHECK_THROWS_WITH(continuous_batcher(m, pool, {8, 4, 4}, &cache),
                          contains("the prefix cache is on another kv_block_pool than the model's"));
        tinyllm::cpu_batch_model on_pool(m, pool);
        CHECK_THROWS_WITH(continuous_batcher(on_pool, {8, 4, 4}, &cache),
                          contains("the prefix cache is on another kv_block_pool than the model's"));
        tinyllm::prefix_cache own(pool, 8);
        CHECK_NOTHROW(continuous_batcher(on_pool, {8, 4, 4}, &own));
    }
}

TEST_CASE("continuous_batcher: presence and frequency penalties and logit biases, as generate applies them",
          "[batching]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 91));
    kv_block_pool pool(c.num_layers, 64, 4, c.num_kv_heads, c.head_dim);
    continuous_batcher batcher(m, pool, {32, 4, 8});
    std::vector<batch_request> rs(4);
    for (std::size_t i = 0; i < rs.size(); ++i) {
        rs[i].prompt = tokens_from(static_cast<token_id>(3 + i), 6, c.vocab_size);
        rs[i].max_new_tokens = 12;
        rs[i].seed = 50 + i;
        rs[i].eos_token_ids = {static_cast<token_id>(c.vocab_size + 1)};
    }
    rs[0].adjust.logit_bias = {{7, 100.0f}};                                  // greedy: always 7
    rs[1].adjust.logit_bias = {{7, 100.0f}};
    rs[1].adjust.frequency_penalty = 30.0f;                                   // ... until 7 has been said 4 times
    rs[2].sampling.temperature = 0.9f;
    rs[2].adjust.presence_penalty = 1.5f;
    rs[2].adjust.frequency_penalty = 0.5f;
    rs[3].adjust.presence_penalty = -2.0f;                                    // greedy, rewarding repetition
    std::vector<index_t> ids;
    for (const auto& r : rs) ids.push_back(batcher.submit(r));
    batcher.run();
    for (std::size_t i = 0; i < rs.size(); ++i) {
        CAPTURE(i);
        CHECK(batcher.tokens(ids[i]) == generate_alone(m, rs[i]));
    }
    CHECK(batcher.tokens(ids[0]) == std::vector<token_id>(12, 7));
    const std::vector<token_id>& r1 = batcher.tokens(ids[1]);
    CHECK(std::count(r1.begin(), r1.end(), 7) == 4);  // 100 - 30 n beats every other logit until n = 4
    CHECK(std::vector<token_id>(r1.begin(), r1.begin() + 4) == std::vector<token_id>(4, 7));

    batch_request bad = rs[0];
    bad.adjust.logit_bias = {{static_cast<token_id>(c.vocab_size), 1.0f}};
    CHECK_THROWS_WITH(batcher.submit(bad), contains("logit_bias"));
    bad.adjust.logit_bias.clear();
    bad.adjust.presence_penalty = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(batcher.submit(bad), contains("presence_penalty"));
}

// A request whose own parameters make its row unusable mid-way (a frequency penalty so large
// that a repeated token's logit overflows to +inf: finite, so submit() accepts it) fails
// alone; the batch goes on, the others get their tokens, and the batcher ends idle with
// every block back.
TEST_CASE("continuous_batcher: a request whose sampling fails ends alone, the others go on", "[batching]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 92));
    kv_block_pool pool(c.num_layers, 64, 4, c.num_kv_heads, c.head_dim);
    continuous_batcher batcher(m, pool, {32, 4, 8});
    batch_request good, bad;
    good.prompt = tokens_from(3, 6, c.vocab_size);
    good.max_new_tokens = 8;
    good.sampling.temperature = 0.7f;
    good.seed = 5;
    good.eos_token_ids = {static_cast<token_id>(c.vocab_size + 1)};
    bad = good;
    bad.prompt = tokens_from(9, 5, c.vocab_size);
    bad.sampling.temperature = 0.0f;
    // Greedy: the first token again at the second draw (its logit + 2e38), then at the third
    // its count of 2 makes the penalty -4e38, which overflows the logit to +inf.
    bad.adjust.frequency_penalty = -2e38f;
    const index_t g = batcher.submit(good), b = batcher.submit(bad);
    std::vector<tinyllm::batch_event> failed;
    for (int steps = 0; !batcher.idle(); ++steps) {
        REQUIRE(steps < 100);
        for (const auto& e : batcher.step())
            if (e.finished == finish_reason::failed) failed.push_back(e);
    }
    REQUIRE(failed.size() == 1);
    CHECK(failed[0].id == b);
    CHECK(failed[0].token == -1);
    CHECK_THAT(failed[0].error, contains("frequency_presence_penalty") && contains("overflows to +inf"));
    CHECK(batcher.finished(b) == finish_reason::failed);
    REQUIRE(batcher.tokens(b).size() == 2);
    CHECK(batcher.tokens(b)[0] == batcher.tokens(b)[1]);
    CHECK(batcher.finished(g) == finish_reason::length);
    CHECK(batcher.tokens(g) == generate_alone(m, good));
    CHECK(pool.used_blocks() == 0);
    // The batcher is still usable.
    const index_t again = batcher.submit(good);
    batcher.run();
    CHECK(batcher.tokens(again) == generate_alone(m, good));
}

TEST_CASE("continuous_batcher: log-probabilities of each token from the model's own distribution", "[batching]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 92));
    kv_block_pool pool(c.num_layers, 64, 4, c.num_kv_heads, c.head_dim);
    continuous_batcher batcher(m, pool, {32, 4, 8});
    std::vector<batch_request> rs(3);
    for (std::size_t i = 0; i < rs.size(); ++i) {
        rs[i].prompt = tokens_from(static_cast<token_id>(5 + i), 4 + 3 * static_cast<index_t>(i), c.vocab_size);
        rs[i].max_new_tokens = 8;
        rs[i].seed = 70 + i;
        rs[i].eos_token_ids = {static_cast<token_id>(c.vocab_size + 1)};
    }
    rs[0].logprobs = 3;                               // greedy, top 3
    rs[1].logprobs = 0;                               // sampled, the token's own only
    rs[1].sampling.temperature = 0.8f;
    rs[1].adjust.logit_bias = {{9, 5.0f}};            // the bias changes the draw, not the reported distribution
    rs[2].sampling.temperature = 1.0f;                // none asked for
    std::vector<index_t> ids;
    for (const auto& r : rs) ids.push_back(batcher.submit(r));
    std::vector<std::vector<tinyllm::batch_event>> events(rs.size());
    while (!batcher.idle())
        for (const auto& e : batcher.step()) events[static_cast<std::size_t>(e.id - ids.front())].push_back(e);

    for (std::size_t i = 0; i < rs.size(); ++i) {
        CAPTURE(i);
        const auto& got = batcher.tokens(ids[i]);
        CHECK(got == generate_alone(m, rs[i]));  // asking for them changes no token
        REQUIRE(events[i].size() == got.size());
        // The reference: the whole sequence fed at once, log softmax in double at each new position.
        std::vector<token_id> seq = rs[i].prompt;
        seq.insert(seq.end(), got.begin(), got.end());
        auto session = m.new_session(static_cast<index_t>(seq.size()));
        const auto logits = m.forward(session, seq);  // (n, V)
        for (std::size_t t = 0; t < got.size(); ++t) {
            const index_t row = static_cast<index_t>(rs[i].prompt.size() + t) - 1;
            double mx = -1e300, sum = 0;
            for (index_t v = 0; v < c.vocab_size; ++v) mx = std::max(mx, double{logits(row, v)});
            for (index_t v = 0; v < c.vocab_size; ++v) sum += std::exp(double{logits(row, v)} - mx);
            const auto logp = [&](token_id v) { return double{logits(row, v)} - mx - std::log(sum); };
            const tinyllm::batch_event& e = events[i][t];
            CHECK(e.token == got[t]);
            if (rs[i].logprobs < 0) {
                CHECK(e.top_logprobs.empty());
                continue;
            }
            CHECK(std::isfinite(e.logprob));
            CHECK(std::fabs(e.logprob - logp(e.token)) < 1e-4);
            REQUIRE(static_cast<index_t>(e.top_logprobs.size()) == rs[i].logprobs);
            // The top k: the k largest logits, most likely first, each with its own log p.
            std::vector<token_id> order(static_cast<std::size_t>(c.vocab_size));
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](token_id a, token_id b) { return logp(a) > logp(b); });
            for (std::size_t j = 0; j < e.top_logprobs.size(); ++j) {
                CHECK(e.top_logprobs[j].first == order[j]);
                CHECK(std::fabs(e.top_logprobs[j].second - logp(order[j])) < 1e-4);
            }
            if (rs[i].sampling.temperature == 0.0f) {  // greedy: the token is the most likely one
                CHECK(e.top_logprobs.front().first == e.token);
                CHECK(e.top_logprobs.front().second == e.logprob);
            }
        }
    }
    batch_request bad = rs[0];
    bad.logprobs = -2;
    CHECK_THROWS_WITH(batcher.submit(bad), contains("logprobs"));
    bad.logprobs = c.vocab_size + 1;
    CHECK_THROWS_WITH(batcher.submit(bad), contains("logprobs"));
    // token_logprobs alone: with k = 0 the top list may be left out; with k > 0 it may not.
    const std::vector<float> z = {1.0f, 2.0f, 0.5f};
    const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(0.5));
    CHECK(tinyllm::token_logprobs(z, 1, 0, nullptr) == tinyllm_test::Approx(2.0 - lse).margin(1e-6));
    CHECK_THROWS_WITH(tinyllm::token_logprobs(z, 1, 2, nullptr), contains("k = 2 top tokens need somewhere to go"));
}
