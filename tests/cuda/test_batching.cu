// CUDA tests for tinyllm/cuda/batching.cuh: continuous batching and the serving
// engine with their step run by the CUDA model on a device pool.
//
//   * random small GPT-2, Llama and Mixtral models: requests of different
//     prompt lengths, greedy and sampled with their own seeds and streams, run
//     together by continuous_batcher on a cuda::paged_batch_model give exactly
//     the tokens cuda::generate gives each alone — in a roomy pool, in a pool
//     so small that sequences are preempted, with a prefix cache, and with
//     prompt chunks long enough for the gather + flash rung of forward_batch;
//     the streamed events carry the same tokens; at the end every block is back
//     (only the prefix cache holds some);
//   * cancellation frees the blocks, an end-of-sequence token stops a request;
//   * a bfloat16 model runs the same schedule to completion with its blocks back;
//   * the engine on the CUDA model (cuda::make_engine): requests submitted and
//     read from three threads give the tokens each gives alone, also with a
//     pool too small for three at once; the metrics count them.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/cuda_small_models.hpp"

#include <tinyllm/batching.hpp>
#include <tinyllm/cuda/batching.cuh>
#include <tinyllm/cuda/model.cuh>
#include <tinyllm/engine.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::batch_request;
using tinyllm::continuous_batcher;
using tinyllm::finish_reason;
using tinyllm::index_t;
using tinyllm::token_id;
using tinyllm_test::arch_name;
using tinyllm_test::contains;
using namespace std::chrono_literals;

namespace {

// Small enough for the simulated GPU; head dim 64 as the attention kernels like it.
// Hq / Hkv = 2: a chunk of more than 16 rows goes through the gather + flash rung.
tinyllm::model_config batching_config(tinyllm::model_arch arch) {
    tinyllm::model_config c =
        arch == tinyllm::model_arch::gpt2 ? tinyllm::model_shapes::gpt2_124m() : tinyllm::model_shapes::llama_1b();
    c.arch = arch;
    c.vocab_size = 256;
    c.hidden_size = 128;
    c.num_layers = 2;
    c.num_heads = 2;
    c.num_kv_heads = arch == tinyllm::model_arch::gpt2 ? 2 : 1;
    c.head_dim = 64;
    c.intermediate_size = 256;
    c.max_positions = 128;
    c.tie_word_embeddings = false;
    if (arch == tinyllm::model_arch::mixtral) {
        c.num_experts = 4;
        c.experts_per_token = 2;
    }
    return c;
}

std::vector<token_id> tokens_from(token_id first, index_t n, index_t vocab) {
    std::vector<token_id> t(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = static_cast<token_id>((first + 7 * i) % vocab);
    return t;
}

// Requests of every kind: short and long prompts (some sharing a beginning),
// greedy and sampled, none or many new tokens (tests/test_batching.cpp's).
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

// What a batched request must equal: the same request run alone by cuda::generate.
template <class T>
std::vector<token_id> generate_alone(const tc::model<T>& m, const batch_request& r) {
    cpu::generation_options o;
    o.max_new_tokens = r.max_new_tokens;
    o.sampling = r.sampling;
    o.seed = r.seed;
    o.stream = r.stream;
    o.eos_token_ids = r.eos_token_ids;
    return tc::generate(m, r.prompt, o);
}

// Read an engine request to its end; the tokens, and how it finished. Runs on
// the test's own threads, so it throws rather than REQUIREs.
std::pair<std::vector<token_id>, finish_reason> read_all(tinyllm::engine_request& r) {
    std::vector<token_id> tokens;
    for (;;) {
        const std::optional<tinyllm::batch_event> e = r.next(120s);
        if (!e)
            throw std::runtime_error("request " + std::to_string(r.id()) + ": no event in 120 s, the engine is stuck");
        if (e->token >= 0) tokens.push_back(e->token);
        if (e->finished != finish_reason::none) return {tokens, e->finished};
    }
}

constexpr index_t batching_block_size = 4;

}  // namespace

TEST_CASE("cuda continuous batching gives each request the tokens cuda::generate gives it alone",
          "[batching][paged]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        const std::string name = arch_name(arch);
        const tinyllm::model_config c = batching_config(arch);
        const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 60 +
                                                                      static_cast<int>(arch)));
        const tc::model<float> gpu(host);
        const std::vector<batch_request> requests = mixed_requests(c.vocab_size);
        std::vector<std::vector<token_id>> want;
        for (const auto& r : requests) want.push_back(generate_alone(gpu, r));

        struct setup {
            std::string what;
            index_t blocks;
            tinyllm::batch_options options;
            bool cache;
        };
        // Roomy; a pool so small that sequences are preempted; with a prefix cache;
        // prompt chunks of up to 24 rows (Llama, Mixtral: 48 query rows per KV head,
        // the gather + flash rung).
        const std::vector<setup> setups = {{"roomy pool", 64, {16, 4, 8}, false},
                                           {"small pool", 12, {24, 6, 8}, false},
                                           {"prefix cache", 64, {16, 4, 8}, true},
                                           {"long chunks", 64, {48, 4, 24}, true}};
        for (const setup& s : setups) {
            INFO(name << ", " << s.what);
            tc::paged_batch_model<float> model(gpu, s.blocks, batching_block_size);
            tinyllm::kv_block_pool& pool = model.pool();
            tinyllm::prefix_cache cache(pool, 16);
            continuous_batcher batcher(model, s.options, s.cache ? &cache : nullptr);
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

TEST_CASE("cuda continuous batching: cancellation, end of sequence, a bfloat16 model", "[batching][paged]") {
    const tinyllm::model_config c = batching_config(tinyllm::model_arch::llama);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 70));
    const tc::model<float> gpu(host);
    tc::paged_batch_model<float> model(gpu, 16, batching_block_size);
    tinyllm::kv_block_pool& pool = model.pool();
    continuous_batcher batcher(model, {8, 4, 4});
    batch_request r;
    r.prompt = tokens_from(1, 10, c.vocab_size);
    r.max_new_tokens = 20;
    r.eos_token_ids = {static_cast<token_id>(c.vocab_size + 1)};
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
    const std::vector<token_id> greedy = generate_alone(gpu, r);
    batch_request stop = r;
    stop.eos_token_ids = {greedy[2]};
    const index_t e = batcher.submit(stop);
    batcher.run();
    const std::vector<token_id>& got = batcher.tokens(e);
    const auto first_eos = std::find(greedy.begin(), greedy.end(), greedy[2]) - greedy.begin();
    CHECK(got == std::vector<token_id>(greedy.begin(), greedy.begin() + first_eos + 1));
    CHECK(batcher.finished(e) == finish_reason::eos);
    CHECK(pool.used_blocks() == 0);

    // A request the pool could never hold is refused at submit, naming the sizes.
    batch_request big = r;
    big.max_new_tokens = 100;
    CHECK_THROWS_WITH(batcher.submit(big), contains("110 positions need 28 blocks; the whole pool has 16"));

    // bfloat16: its tokens may differ from the float model's where two logits are within
    // bf16 rounding, so only the schedule is checked: every request runs its length, and
    // every block comes back.
    const tc::model<tinyllm::bfloat16> half(host);
    tc::paged_batch_model<tinyllm::bfloat16> half_model(half, 12, batching_block_size);
    continuous_batcher half_batcher(half_model, {24, 6, 8});
    const std::vector<batch_request> requests = mixed_requests(c.vocab_size);
    std::vector<index_t> ids;
    for (const auto& q : requests) ids.push_back(half_batcher.submit(q));
    half_batcher.run();
    for (std::size_t i = 0; i < requests.size(); ++i) {
        INFO("bf16 request " << i);
        CHECK(static_cast<index_t>(half_batcher.tokens(ids[i]).size()) == requests[i].max_new_tokens);
        CHECK(half_batcher.finished(ids[i]) == finish_reason::length);
    }
    CHECK(half_batcher.stats().preemptions > 0);
    CHECK(half_model.pool().used_blocks() == 0);
}

TEST_CASE("engine on the CUDA model: requests from three threads give the tokens each gives alone",
          "[engine][paged]") {
    const tinyllm::model_config c = batching_config(tinyllm::model_arch::llama);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 71));
    const tc::model<float> reference(host);
    std::vector<batch_request> requests;
    for (int i = 0; i < 6; ++i) {
        batch_request r;
        r.prompt = tokens_from(static_cast<token_id>(2 + 3 * i), 3 + 4 * (i % 4), c.vocab_size);
        r.max_new_tokens = 4 + i % 5;
        if (i % 2 == 1) {
            r.sampling.temperature = 0.8f;
            r.sampling.top_k = 16;
        }
        r.seed = 1000 + static_cast<std::uint64_t>(i);
        r.eos_token_ids = {static_cast<token_id>(c.vocab_size + 1)};
        requests.push_back(r);
    }
    std::vector<std::vector<token_id>> want;
    for (const auto& r : requests) want.push_back(generate_alone(reference, r));

    // 0: the default size, with a prefix cache; 8 blocks of 4: too few for three at once (preemption)
    for (const index_t blocks : {index_t{0}, index_t{8}}) {
        INFO("kv_blocks = " << blocks);
        tinyllm::engine_options o;
        o.batch = {16, 4, 8};
        o.block_size = batching_block_size;
        o.kv_blocks = blocks;
        o.prefix_cache_blocks = blocks == 0 ? -1 : 0;
        const std::unique_ptr<tinyllm::engine> e = tc::make_engine(std::make_unique<const tc::model<float>>(host), o);
        std::vector<std::vector<token_id>> got(requests.size());
        std::vector<finish_reason> why(requests.size(), finish_reason::none);
        std::mutex failures_mu;
        std::vector<std::string> failures;
        std::vector<std::thread> threads;
        for (int t = 0; t < 3; ++t)
            threads.emplace_back([&, t] {
                try {
                    for (std::size_t i = static_cast<std::size_t>(t); i < requests.size(); i += 3) {
                        const auto handle = e->submit(requests[i]);
                        std::tie(got[i], why[i]) = read_all(*handle);
                    }
                } catch (const std::exception& x) {
                    std::lock_guard<std::mutex> lk(failures_mu);
                    failures.push_back(x.what());
                }
            });
        for (auto& t : threads) t.join();
        REQUIRE(failures.empty());
        for (std::size_t i = 0; i < requests.size(); ++i) {
            INFO("request " << i);
            CHECK(got[i] == want[i]);
            CHECK(why[i] == finish_reason::length);
        }
        // The last event reaches its reader just before the engine's thread counts it
        // and takes the snapshot: wait for that step's snapshot.
        tinyllm::engine_metrics m = e->metrics();
        for (int wait = 0; wait < 1000 && (m.running > 0 || m.finished_length < 6); ++wait) {
            std::this_thread::sleep_for(10ms);
            m = e->metrics();
        }
        CHECK(m.submitted == 6);
        CHECK(m.finished_length == 6);
        CHECK(m.failed == 0);
        CHECK(m.running == 0);
        CHECK(m.kv_blocks_used == m.prefix_cache_blocks);
    }
}
