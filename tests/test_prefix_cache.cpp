// Tests for prefix caching (tinyllm/prefix_cache.hpp): matching in whole
// blocks, the blocks handed out shared, statistics, least-recently-used
// eviction that spares blocks in use and keeps cached paths whole, the
// capacity; and the model starting from a cached prefix computing the logits it
// computes from scratch, with the prefill it skipped counted.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"

#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <numeric>
#include <string>
#include <vector>

using tinyllm::index_t;
using tinyllm::kv_block_pool;
using tinyllm::kv_block_table;
using tinyllm::prefix_cache;
using tinyllm::tensor;
using tinyllm::token_id;
using tinyllm_test::contains;

namespace cpu = tinyllm::cpu;

namespace {

// A table of `tokens.size()` positions whose keys are the tokens (every element of a position = its token).
kv_block_table computed(kv_block_pool& pool, const std::vector<token_id>& tokens) {
    kv_block_table t(pool);
    const index_t n = static_cast<index_t>(tokens.size());
    t.reserve(n);
    tensor<float, 3> k({n, pool.kv_heads(), pool.head_dim()}), v(k.shape());
    for (index_t i = 0; i < n; ++i)
        for (index_t h = 0; h < pool.kv_heads(); ++h)
            for (index_t d = 0; d < pool.head_dim(); ++d) k(i, h, d) = v(i, h, d) = static_cast<float>(tokens[i]);
    for (index_t l = 0; l < pool.layers(); ++l) t.write(l, 0, k.view(), v.view());
    t.advance(n);
    return t;
}

std::vector<token_id> range(token_id first, token_id count) {
    std::vector<token_id> v(static_cast<std::size_t>(count));
    std::iota(v.begin(), v.end(), first);
    return v;
}

std::vector<token_id> operator+(std::vector<token_id> a, const std::vector<token_id>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

}  // namespace

TEST_CASE("prefix_cache: whole blocks matched and shared, counted, evicted least recently used", "[prefix]") {
    kv_block_pool pool(1, 16, 4, 1, 2);
    prefix_cache cache(pool, 4);
    const std::vector<token_id> a = range(0, 11);  // blocks [0-3] [4-7], and 3 tokens not cached
    {
        const kv_block_table ta = computed(pool, a);
        CHECK(cache.insert(a, ta) == 2);
        CHECK(cache.cached_blocks() == 2);
        CHECK(pool.ref_count(ta.blocks()[0]) == 2);  // the table's and the cache's
        CHECK(pool.ref_count(ta.blocks()[2]) == 1);  // the partial block is not cached
        CHECK(cache.insert(a, ta) == 0);             // already there

        // A request sharing the first 9 tokens: the two whole blocks.
        const kv_block_table tb = cache.match(range(0, 9) + std::vector<token_id>{99, 98});
        CHECK(tb.length() == 8);
        REQUIRE(tb.blocks().size() == 2);
        CHECK(tb.blocks()[0] == ta.blocks()[0]);
        CHECK(tb.blocks()[1] == ta.blocks()[1]);
        CHECK(pool.ref_count(ta.blocks()[1]) == 3);
        // Diverging inside the second block: only the first.
        CHECK(cache.match(range(0, 6) + std::vector<token_id>{50, 51, 52}).length() == 4);
        // Nothing in common, and shorter than a block.
        CHECK(cache.match(range(20, 9)).length() == 0);
        CHECK(cache.match(range(0, 3)).length() == 0);
        CHECK(cache.stats().lookups == 4);
        CHECK(cache.stats().lookup_tokens == 11 + 9 + 9 + 3);
        CHECK(cache.stats().hit_tokens == 8 + 4);
    }
    // Only the cache holds the two blocks now.
    CHECK(pool.used_blocks() == 2);

    SECTION("capacity: least recently used leaves go first, blocks in use never") {
        const std::vector<token_id> c = range(40, 8), d = range(80, 12);
        const kv_block_table tc = computed(pool, c);
        CHECK(cache.insert(c, tc) == 2);  // 4 cached: a's two, c's two
        cache.match(a);                   // a's path is now the most recently used
        const kv_block_table td = computed(pool, d);
        // Full: c's leaf [44-47] is the least recently used but tc holds it; a's leaf
        // [4-7] is held by the cache alone and goes; then [0-3], now a leaf.
        CHECK(cache.insert(d, td) == 2);
        CHECK(cache.stats().evicted_blocks == 2);
        CHECK(cache.match(a).length() == 0);
        CHECK(cache.match(c).length() == 8);
        CHECK(cache.match(d).length() == 8);  // d's third block did not fit: everything left is in use
        CHECK(cache.cached_blocks() == 4);
    }
    SECTION("evict frees the pool; clear drops everything") {
        CHECK(cache.evict(5) == 2);
        CHECK(pool.used_blocks() == 0);
        CHECK(cache.cached_blocks() == 0);
        const kv_block_table ta = computed(pool, a);
        cache.insert(a, ta);
        cache.clear();
        CHECK(cache.cached_blocks() == 0);
        CHECK(pool.ref_count(ta.blocks()[0]) == 1);
    }
    SECTION("bad input") {
        kv_block_pool other(1, 4, 4, 1, 2);
        const kv_block_table t = computed(other, range(0, 4));
        CHECK_THROWS_WITH(cache.insert(range(0, 4), t), contains("the table's blocks are in another pool"));
        const kv_block_table u = computed(pool, range(0, 8));
        CHECK_THROWS_WITH(cache.insert(range(0, 5), u), contains("5 tokens for a table of 8 positions"));
        CHECK_THROWS_WITH(prefix_cache(pool, -1), contains("must not be negative"));
    }
}

TEST_CASE("prefix_cache: a path deeper than the stack allows is evicted, cleared and destroyed", "[prefix]") {
    // 300,000 blocks of one token: a chain of 300,000 nodes. Walking or destroying it
    // recursively, one call per node, overflowed the default 8 MB stack (from 100,000).
    const index_t n = 300000;
    kv_block_pool pool(1, n + 4, 1, 1, 1);
    const std::vector<token_id> tokens(static_cast<std::size_t>(n), 7);
    {
        prefix_cache cache(pool, n);
        {
            kv_block_table t(pool);
            t.reserve(n);
            t.advance(n);
            CHECK(cache.insert(tokens, t) == n);
        }
        CHECK(cache.match(tokens).length() == n);
        CHECK(cache.evict(2) == 2);  // the two deepest blocks, each a leaf when it goes
        CHECK(cache.cached_blocks() == n - 2);
        CHECK(cache.match(tokens).length() == n - 2);
        cache.clear();
        CHECK(cache.cached_blocks() == 0);
        CHECK(pool.used_blocks() == 0);
        // Filled again, and left to the destructor.
        kv_block_table t(pool);
        t.reserve(n);
        t.advance(n);
        CHECK(cache.insert(tokens, t) == n);
    }
    CHECK(pool.used_blocks() == 0);
}

TEST_CASE("the model from a cached prefix computes the logits it computes from scratch", "[prefix]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        const std::string name = arch == model_arch::gpt2 ? "gpt2" : "llama";
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 64, false);
        cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 87));
        kv_block_pool pool(c.num_layers, 32, 4, c.num_kv_heads, c.head_dim);
        prefix_cache cache(pool, 16);
        const std::vector<token_id> system = range(1, 22);  // a shared "system prompt" of 22 tokens
        const std::vector<std::vector<token_id>> requests = {system + std::vector<token_id>{40, 41, 42},
                                                             system + std::vector<token_id>{50, 51},
                                                             system + std::vector<token_id>{40, 41, 60, 61}};
        index_t computed_positions = 0;
        for (const auto& prompt : requests) {
            // Serve the request: the cached prefix (all but the last token may match), then the rest.
            const std::span<const token_id> all(prompt);
            auto s = m.new_session(cache.match(all.first(all.size() - 1)));
            const index_t cached = s.length;
            const auto logits = m.forward_last(s, all.subspan(static_cast<std::size_t>(cached)));
            computed_positions += static_cast<index_t>(prompt.size()) - cached;
            cache.insert(prompt, s.paged);
            // From scratch, contiguous.
            auto fresh = m.new_session(32);
            const auto want = m.forward_last(fresh, prompt);
            TINYLLM_REQUIRE_CLOSE(std::vector<float>(logits.values().begin(), logits.values().end()),
                                  std::vector<float>(want.values().begin(), want.values().end()),
                                  tinyllm_test::tolerance{1e-4, 1e-4, 1e-5},
                                  name + ": " + std::to_string(prompt.size()) + " tokens, " + std::to_string(cached) +
                                      " from the cache");
        }
        // The first request computes 25 positions; the second finds the system prompt's 5 whole
        // blocks (20 tokens); the third also finds the first request's 6th block [21 22 40 41].
        CHECK(computed_positions == 25 + (24 - 20) + (26 - 24));
        CHECK(cache.stats().hit_tokens == 0 + 20 + 24);
        CHECK(pool.used_blocks() == cache.cached_blocks());  // the sessions ended; only the cache holds blocks
    }
}
