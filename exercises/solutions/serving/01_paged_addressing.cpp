// Reference answer to exercise serving/01_paged_addressing — where a position lives in a paged KV cache.
//
// A paged KV cache (PagedAttention; include/tinyllm/paged_kv.hpp) keeps the keys and
// values of every sequence in one pool of blocks of block_size positions each. A
// sequence owns a block table: the ids of its blocks in order, taken from the pool one
// at a time as it grows, so they are neither consecutive nor sorted, and two sequences
// forked from one share their first blocks. Position p is in the sequence's logical
// block p / block_size, at offset p % block_size within it:
//
//     physical block = block_table[p / block_size]
//     row            = physical block * block_size + p % block_size
//
// "row" numbers the positions of the whole pool: the pool's keys (blocks, block_size,
// Hkv, D) seen as (blocks * block_size, Hkv, D). Attention reads key j of a sequence
// from there (cpu::attention_paged; the CUDA decode kernel does the same per thread).
//
// Return the row of `position` (0 <= position < block_table.size() * block_size).
//
// Hint: the table maps whole blocks, not positions: only the block number goes through
// it, and the offset is kept as it is.
//
// Check: exercises_cpu serving/01_paged_addressing (sequences grown, forked, copied on
// write and freed through tinyllm::kv_block_table; each position's key, as the table
// wrote it, must be in the row you return).
#include "exercises.hpp"

namespace exercises::serving {

std::int64_t physical_row(std::span<const std::int32_t> block_table, int block_size, std::int64_t position) {
    const std::int64_t bs = block_size;
    const std::int64_t block = block_table[static_cast<std::size_t>(position / bs)];
    return block * bs + position % bs;
}

}  // namespace exercises::serving
