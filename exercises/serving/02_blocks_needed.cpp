// Exercise serving/02_blocks_needed — how many free blocks a sequence needs to grow.
//
// Before a step writes n more positions of a sequence, a server reserves blocks for them
// in the paged KV pool (include/tinyllm/paged_kv.hpp, kv_block_table::blocks_needed), and
// its scheduler admits only the work the free blocks can take. A sequence of `length`
// positions holds `held` blocks of block_size positions: ceil(length / block_size) of
// them, or more if it reserved ahead. Positions [length, length + n) need
//
//     ceil((length + n) / block_size) blocks in all:  max(0, that - held) new ones,
//
// plus one when position `length` falls in a partly filled block that another sequence
// shares (after a fork). That block is copied before it is written (copy-on-write), as
// the other sequence still reads it. A full shared block is never written again, so it
// stays shared and costs nothing. n = 0 needs no block.
//
// last_block_shared says whether the block holding position length - 1 (the last written
// one) is shared with another sequence; it is false for length = 0.
//
// Hint: "partly filled" is length % block_size != 0. An integer ceil(a / b) is
// (a + b - 1) / b.
//
// Check: exercises_cpu serving/02_blocks_needed (compared with
// tinyllm::kv_block_table::blocks_needed on sequences grown, forked and freed in a pool).
#include "exercises.hpp"

namespace exercises::serving {

std::int64_t blocks_needed(std::int64_t length, std::int64_t held, bool last_block_shared, int block_size,
                           std::int64_t n) {
    // TODO: new blocks past the held ones, plus a copy of a shared, partly filled last block.
    (void)length, (void)held, (void)last_block_shared, (void)block_size, (void)n;
    return -1;
}

}  // namespace exercises::serving
