// Tests for the paged KV cache (tinyllm/paged_kv.hpp): the pool's reference
// counts, block tables growing, forking, copying on write, truncating and
// giving every block back; cpu::attention_paged equal to cpu::attention on the
// same keys and values scattered over shuffled blocks (several sequences of
// different lengths, GQA, every option); the model on paged sessions equal to
// contiguous ones — logits and greedy tokens — on all three architectures, with
// prefixes shared between sequences; every bad input.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "support/fixtures.hpp"

using tinyllm::index_t;
using tinyllm::kv_block_pool;
using tinyllm::kv_block_table;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::contains;

namespace cpu = tinyllm::cpu;

namespace {

// Every position's key and value of one layer read back through a table: (length, Hkv, D) each.
std::pair<tensor<float, 3>, tensor<float, 3>> read_back(const kv_block_pool& pool, const kv_block_table& t,
                                                         index_t layer) {
    const index_t bs = pool.block_size();
    tensor<float, 3> k({t.length(), pool.kv_heads(), pool.head_dim()}), v(k.shape());
    for (index_t p = 0; p < t.length(); ++p)
        for (index_t h = 0; h < pool.kv_heads(); ++h)
            for (index_t d = 0; d < pool.head_dim(); ++d) {
                const index_t block = t.blocks()[static_cast<std::size_t>(p / bs)];
                k(p, h, d) = pool.keys(layer)(block, p % bs, h, d);
                v(p, h, d) = pool.values(layer)(block, p % bs, h, d);
            }
    return {std::move(k), std::move(v)};
}

// Append n positions of value `base + position` (keys) and -(base + position) (values) in every layer.
void append(kv_block_table& t, index_t n, float base) {
    kv_block_pool& pool = *t.pool();
    t.reserve(n);
    tensor<float, 3> k({n, pool.kv_heads(), pool.head_dim()}), v(k.shape());
    for (index_t i = 0; i < n; ++i)
        for (index_t h = 0; h < pool.kv_heads(); ++h)
            for (index_t d = 0; d < pool.head_dim(); ++d) {
                k(i, h, d) = base + static_cast<float>(t.length() + i);
                v(i, h, d) = -(base + static_cast<float>(t.length() + i));
            }
    for (index_t l = 0; l < pool.layers(); ++l) t.write(l, t.length(), k.view(), v.view());
    t.advance(n);
}

}  // namespace

TEST_CASE("kv_block_pool and kv_block_table: blocks taken, shared, copied on write and given back", "[paged]") {
    kv_block_pool pool(2, 8, 4, 2, 3);  // 2 layers, 8 blocks of 4 positions, 2 KV heads of 3
    CHECK(pool.free_blocks() == 8);
    CHECK(pool.block_bytes() == 2 * 2 * 4 * 2 * 3 * 4);
    {
        kv_block_table a(pool);
        CHECK(a.blocks_needed(10) == 3);
        append(a, 10, 100.0f);
        CHECK(a.length() == 10);
        CHECK(a.blocks().size() == 3);
        CHECK(pool.free_blocks() == 5);
        // Another sequence shares A's 10 positions, then both go on differently.
        kv_block_table b = a.fork();
        CHECK(pool.free_blocks() == 5);
        for (const std::int32_t block : a.blocks()) CHECK(pool.ref_count(block) == 2);
        CHECK(b.blocks_needed(1) == 1);  // the shared half-full block is copied; no new one
        append(b, 1, 500.0f);
        CHECK(pool.free_blocks() == 4);
        CHECK(b.blocks()[0] == a.blocks()[0]);
        CHECK(b.blocks()[1] == a.blocks()[1]);
        CHECK(b.blocks()[2] != a.blocks()[2]);
        CHECK(pool.ref_count(a.blocks()[2]) == 1);
        CHECK(pool.ref_count(b.blocks()[2]) == 1);
        append(a, 3, 100.0f);  // A writes its own block 2 in place (its count is 1 again), then takes a new one
        CHECK(a.blocks().size() == 4);
        for (index_t layer = 0; layer < 2; ++layer) {
            const auto [ka, va] = read_back(pool, a, layer);
            const auto [kb, vb] = read_back(pool, b, layer);
            for (index_t p = 0; p < 13; ++p) CHECK(ka(p, 1, 2) == 100.0f + static_cast<float>(p));
            for (index_t p = 0; p < 10; ++p) CHECK(kb(p, 0, 0) == 100.0f + static_cast<float>(p));  // the shared prefix
            CHECK(kb(10, 0, 0) == 510.0f);
            CHECK(vb(10, 1, 1) == -510.0f);
        }
        // Roll B back into its shared prefix: the blocks past it go back.
        b.truncate(4);
        CHECK(b.blocks().size() == 1);
        CHECK(pool.ref_count(a.blocks()[1]) == 1);
        CHECK(pool.free_blocks() == 8 - 4);
        // Asking for more than the pool has changes nothing.
        CHECK(a.blocks_needed(30) == 11 - 4);  // 43 positions in blocks of 4
        CHECK_THROWS_WITH(a.reserve(30), contains("30 more positions after 13 need 7 free blocks of 4 positions; "
                                                  "the pool has 4 of 8"));
        CHECK(a.blocks().size() == 4);
        CHECK(pool.free_blocks() == 4);
        // Moving a table moves its blocks.
        kv_block_table c = std::move(b);
        CHECK(c.length() == 4);
        CHECK(b.blocks().empty());
        CHECK(pool.free_blocks() == 4);
    }
    CHECK(pool.free_blocks() == 8);  // every table released its blocks
    for (index_t block = 0; block < 8; ++block) CHECK(pool.ref_count(block) == 0);

    SECTION("bad input") {
        CHECK_THROWS_WITH(kv_block_pool(1, 0, 4, 1, 1), contains("must all be at least 1"));
        CHECK_THROWS_WITH(pool.release(3), contains("block 3 is free"));
        CHECK_THROWS_WITH(pool.retain(8), contains("block 8 is outside [0, 8)"));
        kv_block_table t(pool);
        append(t, 2, 0.0f);
        tensor<float, 3> k({3, 2, 3}, 0.0f);
        CHECK_THROWS_WITH(t.write(0, 2, k.view(), k.view()), contains("3 positions from 2 are not reserved"));
        CHECK_THROWS_WITH(t.write(2, 0, tensor<float, 3>({1, 2, 3}).view(), tensor<float, 3>({1, 2, 3}).view()),
                          contains("layer 2 is outside [0, 2)"));
        CHECK_THROWS_WITH(t.truncate(3), contains("length 3 is outside [0, 2]"));
        kv_block_table shared = t.fork();
        CHECK_THROWS_WITH(t.write(0, 0, tensor<float, 3>({1, 2, 3}).view(), tensor<float, 3>({1, 2, 3}).view()),
                          contains("is shared (reserve copies a shared block before it is written)"));
        CHECK_THROWS_WITH(kv_block_table().reserve(1), contains("the table has no pool"));
    }
}

TEST_CASE("kv_block_pool: a shape too large is refused before anything is allocated", "[paged]") {
    // 2^40 blocks: refused for their ids, not by allocating a reference count for each.
    CHECK_THROWS_WITH(kv_block_pool(1, index_t{1} << 40, 1, 1, 1), contains("blocks do not fit the int32 ids"));
    CHECK_THROWS_WITH(kv_block_pool(1, index_t{1} << 40, 1, 1, 1, tinyllm::kv_storage::elsewhere),
                      contains("blocks do not fit the int32 ids"));
    // 2^20 blocks of 2^20 positions of 2^20 x 2^20 numbers: the byte count overflows index_t.
    const index_t big = index_t{1} << 20;
    CHECK_THROWS_WITH(kv_block_pool(1, big, big, big, big), contains("more bytes than an index_t counts"));
    CHECK_THROWS_WITH(kv_block_pool(big, 1, big, big, big, tinyllm::kv_storage::elsewhere),
                      contains("layers = 1048576, blocks = 1, block_size = 1048576"));
    CHECK_THROWS_WITH(kv_block_pool(1, 1, std::numeric_limits<index_t>::max(), 1, 1, tinyllm::kv_storage::elsewhere),
                      contains("more bytes than an index_t counts"));
    // On the host, at most 2^40 bytes: one more position per block past that is refused
    // with the byte count, before any allocation (it was a std::bad_alloc).
    CHECK_NOTHROW(kv_block_pool(1, 1, 1, 1, 1));
    CHECK_THROWS_WITH(kv_block_pool(1, 1, (index_t{1} << 37) + 1, 1, 1),
                      contains("bytes, more than the 2^40 (1 TiB) a pool holds on the host"));
    CHECK_THROWS_WITH(kv_block_pool(2, 4, index_t{1} << 40, 12, 64), contains("more than the 2^40"));
    // The largest that fits is accepted when nothing is held on the host.
    const kv_block_pool elsewhere(1, 1, std::numeric_limits<index_t>::max() / 8, 1, 1, tinyllm::kv_storage::elsewhere);
    CHECK(elsewhere.block_bytes() == std::numeric_limits<index_t>::max() / 8 * 8);
}

TEST_CASE("kv_block_table: huge counts are refused without overflowing", "[paged]") {
    const index_t huge = std::numeric_limits<index_t>::max();
    kv_block_pool pool(1, 4, 2, 1, 1);
    kv_block_table t(pool);
    append(t, 1, 0.0f);
    // blocks_needed counts past what the held block has room for, never length + n.
    CHECK(t.blocks_needed(huge) == (huge - 1) / 2);  // 1 + huge positions in blocks of 2, less the one held
    CHECK(t.blocks_needed(huge - 1) == (huge - 1) / 2);
    CHECK_THROWS_WITH(t.reserve(huge), contains("need 4611686018427387903 free blocks of 2 positions"));
    CHECK_THROWS_WITH(t.advance(huge), contains("1 + 9223372036854775807 positions exceed the 1 reserved blocks"));
    tensor<float, 3> k({1, 1, 1}, 0.0f), k2({2, 1, 1}, 0.0f);
    CHECK_THROWS_WITH(t.write(0, huge, k.view(), k.view()),
                      contains("1 positions from 9223372036854775807 are not reserved (1 blocks of 2)"));
    CHECK_THROWS_WITH(t.write(0, huge - 1, k2.view(), k2.view()), contains("are not reserved"));
    CHECK_THROWS_WITH(t.write(0, -1, k.view(), k.view()), contains("1 positions from -1 are not reserved"));
    CHECK(t.length() == 1);
    CHECK(t.blocks().size() == 1);
    CHECK(pool.free_blocks() == 3);
    // A table with one unwritten reserved block: reserve then advance still count right.
    t.reserve(2);
    CHECK(t.blocks().size() == 2);
    CHECK(t.blocks_needed(3) == 0);
    CHECK(t.blocks_needed(4) == 1);
    t.advance(3);
    CHECK(t.length() == 4);
}

TEST_CASE("kv_block_table::adopt checks every block before retaining any", "[paged]") {
    kv_block_pool pool(1, 4, 2, 1, 1);
    kv_block_table a(pool);
    append(a, 2, 0.0f);  // one block, held by a
    const std::int32_t held = a.blocks()[0];
    const std::int32_t free_block = held == 3 ? 2 : 3;
    kv_block_table b(pool);
    CHECK_THROWS_WITH(b.adopt({held, free_block}, 4),
                      contains("block " + std::to_string(free_block) + " (entry 1) is free"));
    CHECK_THROWS_WITH(b.adopt({held, -1}, 4), contains("block -1 (entry 1) is outside the pool's [0, 4)"));
    CHECK_THROWS_WITH(b.adopt({held, 4}, 4), contains("block 4 (entry 1) is outside the pool's [0, 4)"));
    CHECK_THROWS_WITH(b.adopt({held, held}, 5), contains("2 blocks of 2 cannot hold exactly 5 positions"));
    CHECK_THROWS_WITH(b.adopt({held, held, held, held, held}, 10), contains("5 blocks, more than the pool's 4"));
    // Nothing was retained by the refused lists: releasing a's block frees it.
    CHECK(pool.ref_count(held) == 1);
    CHECK(b.blocks().empty());
    a.reset();
    CHECK(pool.ref_count(held) == 0);
    CHECK(pool.free_blocks() == 4);
}

TEST_CASE("cpu::attention_paged equals cpu::attention over the same keys and values", "[paged]") {
    const index_t bs = 4, Hq = 6, Hkv = 2, D = 8, blocks = 40;
    const std::vector<index_t> lengths = {1, 7, 16, 23};  // four sequences
    std::uint64_t seed = tinyllm_test::test_seed() + 30;
    // Contiguous keys and values per sequence, scattered over shuffled blocks.
    tensor<float, 4> pool_k({blocks, bs, Hkv, D}, 0.0f), pool_v(pool_k.shape(), 0.0f);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(blocks));
    std::iota(ids.begin(), ids.end(), 0);
    tinyllm::philox_generator shuffle(seed++);
    for (std::size_t i = ids.size() - 1; i > 0; --i) std::swap(ids[i], ids[shuffle.next_bits() % (i + 1)]);
    const index_t max_blocks = 6, B = static_cast<index_t>(lengths.size());
    tensor<std::int32_t, 2> tables({B, max_blocks}, -1);
    tensor<std::int32_t, 1> lens({B});
    std::vector<tensor<float, 4>> ks, vs;
    std::size_t next = 0;
    for (index_t b = 0; b < B; ++b) {
        const index_t n = lengths[static_cast<std::size_t>(b)];
        lens(b) = static_cast<std::int32_t>(n);
        tensor<float, 4> k({1, n, Hkv, D}), v(k.shape());
        tinyllm::cpu::fill_uniform(k.view(), seed++, -1.0f, 1.0f);
        tinyllm::cpu::fill_uniform(v.view(), seed++, -1.0f, 1.0f);
        for (index_t i = 0; i < (n + bs - 1) / bs; ++i) tables(b, i) = ids[next++];
        for (index_t j = 0; j < n; ++j)
            for (index_t h = 0; h < Hkv; ++h)
                for (index_t d = 0; d < D; ++d) {
                    pool_k(tables(b, j / bs), j % bs, h, d) = k(0, j, h, d);
                    pool_v(tables(b, j / bs), j % bs, h, d) = v(0, j, h, d);
                }
        ks.push_back(std::move(k)), vs.push_back(std::move(v));
    }
    const std::vector<float> slope_values = tinyllm::alibi_slopes(Hq);
    const tensor_view<const float, 1> slopes(slope_values.data(), {Hq});
    struct named_options {
        std::string name;
        tinyllm::attention_options opts;
    };
    std::vector<named_options> cases(5);
    cases[0].name = "causal";
    cases[0].opts.causal = true;
    cases[1].name = "not causal";
    cases[2].name = "causal, window 5";
    cases[2].opts.causal = true, cases[2].opts.window = 5;
    cases[3].name = "causal, ALiBi, softcap 3";
    cases[3].opts.causal = true, cases[3].opts.alibi_slopes = slopes, cases[3].opts.softcap = 3.0f;
    cases[4].name = "scale 0.3";
    cases[4].opts.scale = 0.3f;
    for (const index_t Tq : {1, 3}) {
        if (Tq > 1) lens(0) = 3, tables(0, 0) = ids[next];  // the first sequence needs 3 positions now
        if (Tq > 1) {
            ks[0] = tensor<float, 4>({1, 3, Hkv, D});
            vs[0] = tensor<float, 4>({1, 3, Hkv, D});
            tinyllm::cpu::fill_uniform(ks[0].view(), seed++, -1.0f, 1.0f);
            tinyllm::cpu::fill_uniform(vs[0].view(), seed++, -1.0f, 1.0f);
            for (index_t j = 0; j < 3; ++j)
                for (index_t h = 0; h < Hkv; ++h)
                    for (index_t d = 0; d < D; ++d) {
                        pool_k(tables(0, 0), j, h, d) = ks[0](0, j, h, d);
                        pool_v(tables(0, 0), j, h, d) = vs[0](0, j, h, d);
                    }
        }
        tensor<float, 4> q({B, Tq, Hq, D});
        tinyllm::cpu::fill_uniform(q.view(), seed++, -1.0f, 1.0f);
        for (const auto& [name, opts] : cases) {
            tensor<float, 4> got({B, Tq, Hq, D}, std::numeric_limits<float>::quiet_NaN());
            cpu::attention_paged(got.view(), q.view(), pool_k.view(), pool_v.view(), tables.view(), lens.view(), opts);
            std::vector<float> want_all, got_all(got.values().begin(), got.values().end());
            for (index_t b = 0; b < B; ++b) {
                tensor<float, 4> want({1, Tq, Hq, D}, std::numeric_limits<float>::quiet_NaN());
                const auto qb = tensor_view<const float, 4>(q.view()).narrow(0, b, 1);
                cpu::attention<float>(want.view(), qb, ks[static_cast<std::size_t>(b)].view(),
                                      vs[static_cast<std::size_t>(b)].view(), opts);
                want_all.insert(want_all.end(), want.values().begin(), want.values().end());
            }
            // The same arithmetic in the same order, in double: equal up to the last float rounding.
            TINYLLM_REQUIRE_CLOSE(got_all, want_all, tinyllm_test::tolerance{1e-7, 1e-7, 1e-7},
                                  "Tq " + std::to_string(Tq) + ", " + name);
        }
    }
    SECTION("bad input") {
        tensor<float, 4> q({B, 1, Hq, D}, 0.0f), out(q.shape());
        tensor<std::int32_t, 1> bad(lens);
        bad(2) = 25;
        CHECK_THROWS_WITH(cpu::attention_paged(out.view(), q.view(), pool_k.view(), pool_v.view(), tables.view(),
                                               bad.view()),
                          contains("sequence 2 has length 25; it must hold its 1 queries and fit its 6 blocks of 4"));
        tensor<std::int32_t, 2> outside(tables);
        outside(3, 1) = blocks;
        CHECK_THROWS_WITH(cpu::attention_paged(out.view(), q.view(), pool_k.view(), pool_v.view(), outside.view(),
                                               lens.view()),
                          contains("sequence 3's block 1 is 40, outside the pool's [0, 40)"));
        tinyllm::attention_options with_lengths;
        with_lengths.key_lengths = lens.view();
        CHECK_THROWS_WITH(cpu::attention_paged(out.view(), q.view(), pool_k.view(), pool_v.view(), tables.view(),
                                               lens.view(), with_lengths),
                          contains("key_lengths is not taken"));
        tensor<float, 4> q5({B, 1, 5, D}, 0.0f), out5(q5.shape());
        CHECK_THROWS_WITH(cpu::attention_paged(out5.view(), q5.view(), pool_k.view(), pool_v.view(), tables.view(),
                                               lens.view()),
                          contains("must be a multiple of the key/value heads"));
        tensor<float, 4> empty_blocks({blocks, 0, Hkv, D});
        CHECK_THROWS_WITH(cpu::attention_paged(out.view(), q.view(), empty_blocks.view(), empty_blocks.view(),
                                               tables.view(), lens.view()),
                          contains("the blocks hold 0 positions each"));
        // out over the pool's keys, or shifted over q, is refused; exactly q (in place) is computed.
        const tinyllm::tensor_view<float, 4> over_keys(pool_k.data(), q.shape());
        CHECK_THROWS_WITH(
            cpu::attention_paged(over_keys, q.view(), pool_k.view(), pool_v.view(), tables.view(), lens.view()),
            contains("attention_paged: out must not share memory with k"));
        tensor<float, 4> q2({2 * B, 1, Hq, D}, 0.25f);
        const tinyllm::tensor_view<const float, 4> qa(q2.data(), q.shape());
        const tinyllm::tensor_view<float, 4> shifted(q2.data() + D, q.shape());
        CHECK_THROWS_WITH(cpu::attention_paged(shifted, qa, pool_k.view(), pool_v.view(), tables.view(), lens.view()),
                          contains("attention_paged: out must be exactly q (in place)"));
        cpu::attention_paged(out.view(), qa, pool_k.view(), pool_v.view(), tables.view(), lens.view());
        const tinyllm::tensor_view<float, 4> in_place(q2.data(), q.shape());
        cpu::attention_paged(in_place, qa, pool_k.view(), pool_v.view(), tables.view(), lens.view());
        for (index_t i = 0; i < out.size(); ++i) REQUIRE(q2.data()[i] == out.data()[i]);
    }
}

TEST_CASE("the model on paged sessions computes what it computes on contiguous ones", "[paged]") {
    using tinyllm::model_arch;
    const std::vector<tinyllm::token_id> prompt = {3, 17, 42, 5, 9, 61, 2, 8, 30, 31, 1};
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        const std::string name = arch == model_arch::gpt2 ? "gpt2" : arch == model_arch::llama ? "llama" : "mixtral";
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 64, false);
        cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 85));
        kv_block_pool pool(c.num_layers, 32, 4, c.num_kv_heads, c.head_dim);
        // Prefill, then decode steps; the logits of every fed position.
        const auto run = [&](cpu::model::session& s, const std::vector<tinyllm::token_id>& steps) {
            std::vector<float> all;
            const auto keep = [&](const tensor<float, 2>& l) { all.insert(all.end(), l.values().begin(), l.values().end()); };
            keep(m.forward(s, prompt));
            for (const tinyllm::token_id t : steps) keep(m.forward(s, std::vector<tinyllm::token_id>{t}));
            return all;
        };
        const std::vector<tinyllm::token_id> steps = {11, 12, 13, 14, 15, 16};
        auto contiguous = m.new_session(32);
        const std::vector<float> want = run(contiguous, steps);
        std::vector<float> got;
        {
            auto paged = m.new_session(pool);
            got = run(paged, steps);
            CHECK(paged.is_paged());
            CHECK(paged.length == 17);
            CHECK(pool.used_blocks() == 5);  // 17 positions in blocks of 4
            CHECK(paged.cache_bytes() == 5 * pool.block_bytes());
        }
        CHECK(pool.free_blocks() == 32);
        // The blocked kernels gather the blocks and run the tiled attention: the contiguous arithmetic.
        TINYLLM_REQUIRE_CLOSE(got, want, tinyllm_test::tolerance{1e-4, 1e-4, 1e-5}, name + ": paged against contiguous");
        // The reference kernels attend through the table in place (cpu::attention_paged).
        m.set_kernels(cpu::model::kernels::reference);
        {
            auto paged = m.new_session(pool);
            auto contiguous_reference = m.new_session(32);
            TINYLLM_REQUIRE_CLOSE(run(paged, steps), run(contiguous_reference, steps),
                                  tinyllm_test::tolerance{1e-5, 1e-5, 1e-6},
                                  name + ": paged against contiguous, reference kernels");
        }
        m.set_kernels(cpu::model::kernels::blocked);

        // Two continuations of one shared prefix: each equals its own contiguous run.
        auto first = m.new_session(pool);
        m.forward(first, prompt);
        const index_t prefix_blocks = pool.used_blocks();
        auto second = m.fork(first);
        CHECK(pool.used_blocks() == prefix_blocks);  // shared, not copied
        const auto a = m.forward(first, std::vector<tinyllm::token_id>{20});
        const auto b = m.forward(second, std::vector<tinyllm::token_id>{21});
        CHECK(pool.used_blocks() == prefix_blocks + 1);  // the half-full last block, copied on write
        auto ca = m.new_session(32), cb = m.new_session(32);
        m.forward(ca, prompt), m.forward(cb, prompt);
        const auto want_a = m.forward(ca, std::vector<tinyllm::token_id>{20});
        const auto want_b = m.forward(cb, std::vector<tinyllm::token_id>{21});
        TINYLLM_REQUIRE_CLOSE(std::vector<float>(a.values().begin(), a.values().end()),
                              std::vector<float>(want_a.values().begin(), want_a.values().end()),
                              tinyllm_test::tolerance{1e-4, 1e-4, 1e-5}, name + ": first continuation");
        TINYLLM_REQUIRE_CLOSE(std::vector<float>(b.values().begin(), b.values().end()),
                              std::vector<float>(want_b.values().begin(), want_b.values().end()),
                              tinyllm_test::tolerance{1e-4, 1e-4, 1e-5}, name + ": second continuation");
        // Rolled back and fed again (speculative decoding's pattern): the same logits.
        m.truncate(second, static_cast<index_t>(prompt.size()));
        const auto again = m.forward(second, std::vector<tinyllm::token_id>{21});
        CHECK(std::vector<float>(again.values().begin(), again.values().end()) ==
              std::vector<float>(b.values().begin(), b.values().end()));
    }
    SECTION("greedy generation on a paged session prints the same tokens") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 64, true);
        cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 86));
        kv_block_pool pool(c.num_layers, 16, 4, c.num_kv_heads, c.head_dim);
        auto contiguous = m.new_session(40);
        auto paged = m.new_session(pool);
        std::vector<tinyllm::token_id> ta{prompt}, tb{prompt};
        auto la = m.forward_last(contiguous, prompt), lb = m.forward_last(paged, prompt);
        for (int step = 0; step < 20; ++step) {
            const auto argmax = [](const tensor<float, 2>& l) {
                return static_cast<tinyllm::token_id>(std::max_element(l.values().begin(), l.values().end()) -
                                                      l.values().begin());
            };
            ta.push_back(argmax(la)), tb.push_back(argmax(lb));
            la = m.forward_last(contiguous, std::vector<tinyllm::token_id>{ta.back()});
            lb = m.forward_last(paged, std::vector<tinyllm::token_id>{tb.back()});
        }
        CHECK(ta == tb);
    }
    SECTION("bad input") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 64, true);
        cpu::model m(c, tinyllm::random_model_weights(c, 5));
        kv_block_pool wrong(c.num_layers + 1, 4, 4, c.num_kv_heads, c.head_dim);
        CHECK_THROWS_WITH(m.new_session(wrong), contains("the block pool has 3 layers"));
        kv_block_pool small(c.num_layers, 2, 4, c.num_kv_heads, c.head_dim);
        auto s = m.new_session(small);
        CHECK_THROWS_WITH(m.forward(s, prompt), contains("11 more positions after 0 need 3 free blocks"));
        CHECK(s.length == 0);
        CHECK(small.free_blocks() == 2);
        auto contiguous = m.new_session(8);
        CHECK_THROWS_WITH(m.fork(contiguous), contains("only a paged session's blocks can be shared"));
        auto observed = m.new_session(small);
        CHECK_THROWS_WITH(m.forward(observed, std::vector<tinyllm::token_id>{1},
                                    [](index_t, tensor_view<const float, 4>) {}),
                          contains("the attention observer needs a contiguous session"));
    }
}
