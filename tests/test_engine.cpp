// Tests for the serving engine (tinyllm/engine.hpp): requests submitted and
// read from many threads at once each get exactly the tokens cpu::generate
// gives them alone (also when a small pool forces preemption); cancelling mid-
// stream ends the request and gives its blocks back; bad requests throw on the
// submitting thread; the metrics count what happened; destroying the engine
// ends every open request.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"
#include "support/generate_alone.hpp"

#include <tinyllm/engine.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/random.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using tinyllm::batch_event;
using tinyllm::batch_request;
using tinyllm::finish_reason;
using tinyllm::index_t;
using tinyllm::token_id;
using tinyllm_test::contains;

namespace cpu = tinyllm::cpu;
using namespace std::chrono_literals;

namespace {

batch_request request_number(int i, index_t vocab) {
    batch_request r;
    for (int t = 0; t < 3 + 4 * (i % 5); ++t) r.prompt.push_back(static_cast<token_id>((11 * i + 5 * t + 1) % vocab));
    r.max_new_tokens = 4 + i % 6;
    if (i % 2 == 1) {
        r.sampling.temperature = 0.8f;
        r.sampling.top_k = 16;
    }
    r.seed = 1000 + static_cast<std::uint64_t>(i);
    r.eos_token_ids = {static_cast<token_id>(vocab + 1)};  // never produced: each runs its whole length
    return r;
}

using tinyllm_test::generate_alone;

// Read a request to its end; the tokens, and how it finished (finish_reason::none:
// ten seconds passed without an event, the engine is stuck). No Catch2 assertion
// here: Catch2 2.x's assertion macros are not thread-safe (their counters race when
// two threads assert at once), so client threads only collect, and the test's own
// thread checks.
std::pair<std::vector<token_id>, finish_reason> read_to_end(tinyllm::engine_request& r) {
    std::vector<token_id> tokens;
    for (;;) {
        const std::optional<batch_event> e = r.next(10s);
        if (!e) return {tokens, finish_reason::none};
        if (e->token >= 0) tokens.push_back(e->token);
        if (e->finished != finish_reason::none) return {tokens, e->finished};
    }
}

// The same on the test's thread, stopping the test when the engine is stuck.
std::pair<std::vector<token_id>, finish_reason> read_all(tinyllm::engine_request& r) {
    auto got = read_to_end(r);
    REQUIRE(got.second != finish_reason::none);  // ten seconds without an event: the engine is stuck
    return got;
}

}  // namespace

TEST_CASE("engine: requests from many threads give the tokens each gives alone", "[engine]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 64, false);
        const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 5));
        // A roomy pool, and one so small that requests are preempted and recomputed.
        for (const index_t blocks : {index_t{0}, index_t{12}}) {
            CAPTURE(arch, blocks);
            tinyllm::engine_options o;
            o.block_size = 4;
            o.kv_blocks = blocks;
            o.batch = {24, 6, 8};
            tinyllm::engine e(m, o);
            const int n = 12;
            std::vector<std::vector<token_id>> got(n);
            std::vector<finish_reason> why(n, finish_reason::none);
            std::vector<char> more_after_end(n, 0);
            std::vector<std::thread> clients;
            // Each client writes only its own slots; the checks run here after the joins.
            for (int i = 0; i < n; ++i)
                clients.emplace_back([&, i] {
                    const auto k = static_cast<std::size_t>(i);
                    const auto r = e.submit(request_number(i, c.vocab_size));
                    std::tie(got[k], why[k]) = read_to_end(*r);
                    more_after_end[k] = r->next(0ms).has_value();  // nothing may follow the end
                });
            for (auto& t : clients) t.join();
            for (int i = 0; i < n; ++i) {
                CAPTURE(i);
                const batch_request r = request_number(i, c.vocab_size);
                CHECK(why[static_cast<std::size_t>(i)] == finish_reason::length);
                CHECK(!more_after_end[static_cast<std::size_t>(i)]);
                CHECK(got[static_cast<std::size_t>(i)] == generate_alone(m, r));
            }
            // The last event reaches its reader just before the engine's thread counts it
            // and takes the snapshot: wait (up to 10 s) for that step's snapshot.
            tinyllm::engine_metrics s = e.metrics();
            for (int wait = 0; wait < 1000 && (s.running > 0 || s.finished_length < n); ++wait) {
                std::this_thread::sleep_for(10ms);
                s = e.metrics();
            }
            CHECK(s.submitted == n);
            CHECK(s.finished_length == n);
            CHECK(s.running == 0);
            CHECK(s.waiting == 0);
            CHECK(s.tokens_per_second > 0.0);
            CHECK(s.kv_blocks_used == s.prefix_cache_blocks);  // only the prefix cache holds blocks now
            if (blocks == 12) CHECK(s.batch.preemptions > 0);
            else CHECK(s.batch.generated == s.batch.decode_tokens + n);  // each first token comes from a prefill
        }
    }
}

TEST_CASE("engine: cancelling mid-stream ends the request and frees its blocks", "[engine]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 6));
    tinyllm::engine_options o;
    o.block_size = 4;
    o.prefix_cache_blocks = 0;  // nothing cached: every block must come back to the pool
    o.kv_blocks = 2100;
    tinyllm::engine e(m, o);
    batch_request r = request_number(3, c.vocab_size);
    r.max_new_tokens = 8000;  // seconds of work: it is still running when cancelled
    const auto h = e.submit(r);
    for (int i = 0; i < 2; ++i) {
        const auto ev = h->next(10s);
        REQUIRE(ev.has_value());
        CHECK(ev->token >= 0);
        CHECK(ev->finished == finish_reason::none);
    }
    e.cancel(*h);
    std::optional<batch_event> last;
    while (const auto ev = h->next(1s)) last = ev;  // tokens already queued, then the end
    REQUIRE(last.has_value());
    CHECK(last->finished == finish_reason::cancelled);
    const tinyllm::engine_metrics s = e.metrics();
    CHECK(s.cancelled == 1);
    CHECK(s.running == 0);
    CHECK(s.kv_blocks_used == 0);
    e.cancel(*h);  // twice: nothing happens
    CHECK(e.metrics().cancelled == 1);

    // The engine goes on serving: the next request is complete.
    const auto h2 = e.submit(request_number(4, c.vocab_size));
    CHECK(read_all(*h2).first == generate_alone(m, request_number(4, c.vocab_size)));
}

// A request whose sampling fails mid-way (its penalty overflows a logit: see test_batching)
// ends alone with the error; the request beside it runs to its end untouched. A request
// its reader stops (engine::stop, a stop string in the server) counts as stopped.
TEST_CASE("engine: a request whose sampling fails ends alone; stop is counted apart from cancel", "[engine]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 9));
    tinyllm::engine_options o;
    o.block_size = 4;
    o.prefix_cache_blocks = 0;
    o.kv_blocks = 2100;
    tinyllm::engine e(m, o);
    const batch_request good = request_number(3, c.vocab_size);
    batch_request bad = request_number(2, c.vocab_size);
    bad.max_new_tokens = 50;
    bad.adjust.frequency_penalty = -2e38f;  // greedy: the third draw overflows
    const auto hg = e.submit(good), hb = e.submit(bad);
    const auto got_bad = read_all(*hb), got_good = read_all(*hg);
    CHECK(got_bad.second == finish_reason::failed);
    CHECK(got_bad.first.size() == 2);
    CHECK_THAT(hb->error(), contains("overflows to +inf"));
    CHECK(got_good.second == finish_reason::length);
    CHECK(got_good.first == generate_alone(m, good));
    CHECK(hg->error().empty());

    batch_request longer = request_number(4, c.vocab_size);
    longer.max_new_tokens = 8000;  // seconds of work: it is still running when stopped
    const auto hs = e.submit(longer);
    REQUIRE(hs->next(10s).has_value());
    e.stop(*hs);
    std::optional<batch_event> last;
    while (const auto ev = hs->next(1s)) last = ev;
    REQUIRE(last.has_value());
    CHECK(last->finished == finish_reason::cancelled);  // what the reader sees: ended by its own call
    tinyllm::engine_metrics s = e.metrics();
    CHECK(s.failed == 1);
    CHECK(s.finished_length == 1);
    CHECK(s.finished_stop == 1);
    CHECK(s.cancelled == 0);
    CHECK(s.kv_blocks_used == 0);

    // A stop string found in the last events, after the engine had finished the request by
    // length: the request moves from finished_length to finished_stop, once.
    const auto hl = e.submit(request_number(0, c.vocab_size));
    REQUIRE(read_all(*hl).second == finish_reason::length);
    e.stop(*hl);  // under the engine's mutex: after the loop has counted the request's end
    e.stop(*hl);
    s = e.metrics();
    CHECK(s.finished_length == 1);
    CHECK(s.finished_stop == 2);
    e.cancel(*hl);  // finished: nothing to count
    CHECK(e.metrics().cancelled == 0);
}

// A submit that throws, or a cancel of a request that has finished, while another
// request runs: the caller took the engine's mutex between two steps, so the loop
// was waiting for it to leave; leaving without waking the loop stalled every
// running request (until some other submit or cancel came along).
TEST_CASE("engine: a refused submit or a late cancel does not stall the running requests", "[engine]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 8));
    tinyllm::engine_options o;
    o.block_size = 4;
    o.kv_blocks = 2100;
    tinyllm::engine e(m, o);
    const auto finished = e.submit(request_number(0, c.vocab_size));
    REQUIRE(read_all(*finished).second == finish_reason::length);
    batch_request r = request_number(3, c.vocab_size);
    r.max_new_tokens = 8000;  // seconds of work: it runs throughout
    const auto h = e.submit(r);
    REQUIRE(h->next(10s).has_value());
    batch_request bad = request_number(1, c.vocab_size);
    bad.prompt.push_back(static_cast<token_id>(c.vocab_size));
    // A token comes within 10 s after each call: read what is queued, then wait for a new one.
    const auto still_running = [&] {
        while (h->next(0ms)) {
        }
        const auto ev = h->next(10s);
        return ev.has_value() && ev->finished == finish_reason::none;
    };
    for (int i = 0; i < 3; ++i) {
        CHECK_THROWS_WITH(e.submit(bad), contains("outside the vocabulary"));
        REQUIRE(still_running());
        e.cancel(*finished);  // finished already: nothing to do
        REQUIRE(still_running());
    }
    e.cancel(*h);
    CHECK(e.metrics().cancelled == 1);
}

TEST_CASE("engine: bad requests throw on the submitting thread; shutting down ends open requests", "[engine]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::gpt2, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 7));
    std::shared_ptr<tinyllm::engine_request> open;
    {
        tinyllm::engine_options o;
        o.block_size = 4;
        o.kv_blocks = 8;
        tinyllm::engine e(m, o);
        batch_request bad = request_number(0, c.vocab_size);
        bad.prompt.push_back(static_cast<token_id>(c.vocab_size));
        CHECK_THROWS_WITH(e.submit(bad), contains("outside the vocabulary"));
        bad = request_number(0, c.vocab_size);
        bad.max_new_tokens = 40;  // 43 positions: 11 blocks of 4, the pool has 8
        CHECK_THROWS_WITH(e.submit(bad), contains("the whole pool has 8"));
        bad = request_number(0, c.vocab_size);
        bad.sampling.top_p = 0.0f;
        CHECK_THROWS_WITH(e.submit(bad), contains("top_p"));
        CHECK(e.metrics().submitted == 0);
        CHECK_THROWS_WITH(tinyllm::engine(m, tinyllm::engine_options{{}, 0, 0, -1}), contains("block_size = 0"));
        tinyllm::engine_options huge;  // one block of 2^40 positions a sequence: an error, not a bad_alloc
        huge.block_size = index_t{1} << 40;
        CHECK_THROWS_WITH(tinyllm::engine(m, huge), contains("more than the 2^40 (1 TiB) a pool holds on the host"));
    }
    // A Llama model (RoPE: no position table to outgrow) and a pool for 8000 tokens.
    const tinyllm::model_config lc =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model lm(lc, tinyllm::random_model_weights(lc, tinyllm_test::test_seed() + 8));
    {
        tinyllm::engine_options o;
        o.block_size = 4;
        o.kv_blocks = 2100;
        tinyllm::engine e(lm, o);
        batch_request slow = request_number(1, lc.vocab_size);
        slow.max_new_tokens = 8000;  // seconds of work: still running when the engine goes
        open = e.submit(slow);
    }  // the engine goes while `open` is running
    std::optional<batch_event> last;
    while (const auto ev = open->next(1s)) last = ev;
    REQUIRE(last.has_value());
    CHECK(last->finished == finish_reason::cancelled);
}

TEST_CASE("engine: bad options are refused up front, named, and sizes never overflow", "[engine]") {
    const tinyllm::model_config c =
        tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 64, false);
    const cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 8));
    const auto with = [](auto change) {
        tinyllm::engine_options o;
        change(o);
        return o;
    };
    using opts = tinyllm::engine_options;
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.batch.max_running = 0; })),
                      contains("engine: batch.max_running = 0 must be at least 1"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.batch.max_running = -3; })),
                      contains("engine: batch.max_running = -3 must be at least 1"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.batch.token_budget = 0; })),
                      contains("engine: batch.token_budget = 0 must be at least 1"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.batch.prefill_chunk = -1; })),
                      contains("engine: batch.prefill_chunk = -1 must be at least 1"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.kv_blocks = -1; })), contains("engine: kv_blocks = -1"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.kv_blocks = index_t{1} << 40; })),
                      contains("engine: kv_blocks = 1099511627776 must be 0"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.prefix_cache_blocks = -2; })),
                      contains("engine: prefix_cache_blocks = -2"));
    // max_running x 32 blocks (512 positions of 16) overflowed index_t at 2^62; past the pool's int32 ids
    // it is refused.
    CHECK_THROWS_WITH(tinyllm::engine::pool_blocks(c, with([](opts& o) { o.batch.max_running = index_t{1} << 62; })),
                      contains("batch.max_running = 4611686018427387904 sequences of 512 positions (32 blocks of 16)"));
    CHECK_THROWS_WITH(tinyllm::engine(m, with([](opts& o) { o.batch.max_running = index_t{1} << 40; })),
                      contains("need more than the 2147483647 blocks a pool can have"));
    CHECK(tinyllm::engine::pool_blocks(c, with([](opts& o) { o.batch.max_running = 3; })) == 3 * 32);
    // The constructor taking a batch_model checks them too.
    auto model = std::make_unique<tinyllm::cpu_batch_model>(
        m, std::make_unique<tinyllm::kv_block_pool>(c.num_layers, 8, 4, c.num_kv_heads, c.head_dim));
    CHECK_THROWS_WITH(tinyllm::engine(std::move(model), with([](opts& o) { o.batch.max_running = 0; })),
                      contains("engine: batch.max_running = 0 must be at least 1"));
}
