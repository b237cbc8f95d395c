// exercises/checks/serving.cpp — the check of the serving exercise, against the paged
// KV cache of include/tinyllm/paged_kv.hpp.
//
// A pool of blocks serves a few sequences that grow in random steps, fork (sharing
// blocks), get copied on write, shrink and end (their blocks return to the pool and are
// handed out again), so block tables are neither consecutive nor sorted. Every
// position's key is a distinct number written through kv_block_table::write; the row
// the student's function returns must hold the key the table's own gather() reads for
// that position.
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/paged_kv.hpp>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace exercises::check::serving_checks {

std::string table_text(const std::vector<std::int32_t>& blocks) {
    std::ostringstream s;
    s << "[";
    for (std::size_t i = 0; i < blocks.size() && i < 20; ++i) s << (i ? ", " : "") << blocks[i];
    if (blocks.size() > 20) s << ", ... (" << blocks.size() << " blocks)";
    s << "]";
    return s.str();
}

// A pool and the sequences left in it after 60 random steps: grow (writing each position's
// key), start, fork, end, shrink, or reserve blocks ahead without writing them.
struct scene {
    tinyllm::kv_block_pool pool;
    std::vector<tinyllm::kv_block_table> tables;
    std::vector<int> names;                            // tables[i] is sequence names[i]
    std::vector<std::pair<int, std::int64_t>> writer;  // key value k was written for (sequence, position)

    scene(context& ctx, int bs, int NB) : pool(1, NB, bs, 1, 1) {
        writer.emplace_back(-1, -1);  // 0: never written
        int next_name = 0;
        const auto any = [&]() { return static_cast<std::size_t>(ctx.integer(0, static_cast<int>(tables.size()) - 1)); };
        for (int step = 0; step < 60; ++step) {
            const int op = tables.empty() ? 6 : ctx.integer(0, 10);
            if (op <= 5) {
                grow(any(), ctx.integer(1, 2 * bs + 1));
            } else if (op == 6 && tables.size() < 6) {
                tables.emplace_back(pool);
                names.push_back(next_name++);
            } else if (op == 7 && tables.size() < 6) {
                const std::size_t i = any();
                if (tables[i].length() == 0) continue;
                tables.push_back(tables[i].fork());  // shares the blocks; growing it copies a partial last one
                names.push_back(next_name++);
            } else if (op == 8) {
                const std::size_t i = any();
                tables.erase(tables.begin() + static_cast<std::ptrdiff_t>(i));  // its blocks go back to the pool
                names.erase(names.begin() + static_cast<std::ptrdiff_t>(i));
            } else if (op == 9) {
                tinyllm::kv_block_table& t = tables[any()];
                t.truncate(ctx.integer(0, static_cast<int>(t.length())));
            } else if (op == 10) {
                tinyllm::kv_block_table& t = tables[any()];
                const tinyllm::index_t n = ctx.integer(1, 2 * bs + 1);
                if (t.blocks_needed(n) <= pool.free_blocks()) t.reserve(n);  // room for n more, not written yet
            }
        }
        if (tables.empty()) tables.emplace_back(pool), names.push_back(next_name++);
        if (tables[0].length() == 0) grow(0, bs + 1);
    }

    void grow(std::size_t i, tinyllm::index_t n) {
        tinyllm::kv_block_table& t = tables[i];
        if (t.blocks_needed(n) > pool.free_blocks()) return;
        t.reserve(n);
        std::vector<float> k(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
        for (tinyllm::index_t j = 0; j < n; ++j) {
            k[static_cast<std::size_t>(j)] = static_cast<float>(writer.size());
            v[static_cast<std::size_t>(j)] = -k[static_cast<std::size_t>(j)];
            writer.emplace_back(names[i], t.length() + j);
        }
        t.write(0, t.length(), tinyllm::tensor_view<const float, 3>(k.data(), {n, 1, 1}),
                tinyllm::tensor_view<const float, 3>(v.data(), {n, 1, 1}));
        t.advance(n);
    }
};

}  // namespace exercises::check::serving_checks

using namespace exercises::check;
using namespace exercises::check::serving_checks;

TINYLLM_EXERCISE_CHECK("serving/01_paged_addressing") {
    constexpr int block_sizes[] = {1, 2, 3, 4, 5, 8, 16};
    for (int c = 0; c < 10; ++c) {
        const int bs = block_sizes[ctx.integer(0, 6)], NB = ctx.integer(12, 64);
        ctx.case_label = "case " + std::to_string(c) + ": a pool of " + std::to_string(NB) + " blocks of " +
                         std::to_string(bs) + " positions";
        scene sc(ctx, bs, NB);
        const auto& tables = sc.tables;
        const auto& names = sc.names;
        const auto& writer = sc.writer;
        const float* rows = std::as_const(sc.pool).keys(0).data();  // (NB * bs) keys, one per row (Hkv = D = 1)
        const std::int64_t pool_rows = static_cast<std::int64_t>(NB) * bs;
        for (std::size_t i = 0; i < tables.size(); ++i) {
            const tinyllm::kv_block_table& t = tables[i];
            const tinyllm::index_t n = t.length();
            if (n == 0) continue;
            std::vector<float> k(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
            t.gather(0, n, tinyllm::tensor_view<float, 4>(k.data(), {1, n, 1, 1}),
                     tinyllm::tensor_view<float, 4>(v.data(), {1, n, 1, 1}));
            const std::vector<std::int32_t>& blocks = t.blocks();
            for (std::int64_t p = 0; p < n; ++p) {
                const std::int64_t block = blocks[static_cast<std::size_t>(p / bs)];
                const std::int64_t want = block * bs + p % bs;
                if (rows[want] != k[static_cast<std::size_t>(p)])
                    throw std::logic_error("the check's own addressing disagrees with kv_block_table::gather");
                const std::int64_t got = exercises::serving::physical_row(blocks, bs, p);
                if (got == want) continue;
                const auto [seq, pos] = writer[static_cast<std::size_t>(k[static_cast<std::size_t>(p)])];
                std::ostringstream m;
                m << "sequence " << names[i] << " (length " << n << ", block table " << table_text(blocks)
                  << "): position " << p << " (key written for position " << pos << " of sequence " << seq
                  << ") is in logical block " << p / bs << " -> physical block " << block << ", offset " << p % bs
                  << ": row " << block << " * " << bs << " + " << p % bs << " = " << want << "; got row " << got;
                if (got == -1) {
                    m << " (is the function still a TODO?)";
                } else if (got < 0 || got >= pool_rows) {
                    m << ", outside the pool's rows [0, " << pool_rows << ")";
                } else {
                    const float there = rows[got];
                    m << " (physical block " << got / bs << ", offset " << got % bs << ")";
                    if (there == k[static_cast<std::size_t>(p)])
                        m << ", which holds a copy of the same key (a block copied on write), but is not the block "
                             "this sequence's table names";
                    else if (there == 0.0f)
                        m << ", which holds no key yet";
                    else
                        m << ", which holds the key written for position " << writer[static_cast<std::size_t>(there)].second
                          << " of sequence " << writer[static_cast<std::size_t>(there)].first;
                }
                ctx.fail(m.str());
            }
        }
    }
}

TINYLLM_EXERCISE_CHECK("serving/02_blocks_needed") {
    constexpr int block_sizes[] = {1, 2, 3, 4, 5, 8, 16};
    for (int c = 0; c < 10; ++c) {
        const int bs = block_sizes[ctx.integer(0, 6)], NB = ctx.integer(12, 64);
        ctx.case_label = "case " + std::to_string(c) + ": a pool of " + std::to_string(NB) + " blocks of " +
                         std::to_string(bs) + " positions";
        scene sc(ctx, bs, NB);
        // One more pair that shares its last written block: full (even cases) or partly filled (odd).
        for (int tries = 0; tries < 8 && !sc.tables.empty(); ++tries) {
            sc.tables.emplace_back(sc.pool);
            sc.names.push_back(100 + c);
            sc.grow(sc.tables.size() - 1, c % 2 ? bs + 1 : 2 * bs);
            if (sc.tables.back().length() > 0) {
                sc.tables.push_back(sc.tables.back().fork());
                sc.names.push_back(200 + c);
                break;
            }
            sc.tables.pop_back(), sc.names.pop_back();
            sc.tables.erase(sc.tables.begin()), sc.names.erase(sc.names.begin());  // free some blocks
        }
        for (std::size_t i = 0; i < sc.tables.size(); ++i) {
            const tinyllm::kv_block_table& t = sc.tables[i];
            const std::int64_t length = t.length(), held = static_cast<std::int64_t>(t.blocks().size());
            const bool shared =
                length > 0 && sc.pool.ref_count(t.blocks()[static_cast<std::size_t>((length - 1) / bs)]) > 1;
            for (int r = 0; r < 6; ++r) {
                const std::int64_t n = r == 0 ? 0 : r == 1 ? bs : ctx.integer(1, 4 * bs + 3);
                const std::int64_t want = t.blocks_needed(n);
                const std::int64_t got = exercises::serving::blocks_needed(length, held, shared, bs, n);
                if (got == want) continue;
                const std::int64_t total = (length + n + bs - 1) / bs;
                const bool copy = n > 0 && length % bs != 0 && shared;
                std::ostringstream m;
                m << "sequence " << sc.names[i] << " (length " << length << ", " << held << " blocks held "
                  << table_text(t.blocks()) << ", last written block " << (shared ? "shared" : "not shared")
                  << "), n = " << n << ": expected " << want;
                if (n == 0)
                    m << " (no positions, no blocks)";
                else
                    m << ": max(0, ceil((" << length << " + " << n << ") / " << bs << ") - " << held << ") = "
                      << std::max<std::int64_t>(total - held, 0) << " new block(s)"
                      << (copy ? " + 1 copy (the shared last block is partly filled: it is copied before it is "
                                 "written)"
                          : shared ? " (the shared last block is full: it stays shared, no copy)"
                                   : " (no shared block to copy)");
                m << "; got " << got;
                if (got == -1) m << " (is the function still a TODO?)";
                ctx.fail(m.str());
            }
        }
    }
}
