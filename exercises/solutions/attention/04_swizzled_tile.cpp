// Reference answer to exercise attention/04_swizzled_tile — where a tile element lives in attention v6's
// shared memory.
//
// Attention v6 (cuda/tinyllm/cuda/attention_wgmma.cuh) hands its Q, K and V tiles to
// Hopper's wgmma instruction, which reads them from shared memory in one of a few fixed
// layouts. v6 uses the 128-byte swizzle: a [rows][D] tile of 16-bit values (bf16) is cut
// into column blocks of 64 features, and each block is a stack of 128-byte rows:
//
//     block  j = d / 64       starts at byte  j * rows * 128
//     row    r                starts at byte  r * 128 within its block
//     16-byte chunk c = (d % 64) / 8 of that row is stored at chunk  c XOR (r % 8)
//     element d % 8 of the chunk is at byte  2 * (d % 8) within it
//
// Why the XOR: shared memory has 32 banks of 4 bytes, so a 128-byte row covers all of
// them once. Without the swizzle, the same chunk of 8 consecutive rows (what one 8 x 8
// matrix of the tensor cores' operand is) would sit in the same 4 banks, and reading it
// would take 8 turns; with it, the 8 rows' chunks land in 8 different groups of 4 banks.
//
// Return the byte offset of element (r, d) of a [rows][D] tile (rows a multiple of 8, D a
// multiple of 64).
//
// Hint: the XOR only permutes the 16-byte chunks inside a row; check that distinct
// (r, d) give distinct offsets below rows * D * 2.
//
// Check: exercises_cpu attention/04_swizzled_tile (compared with
// tinyllm::detail::wgmma_tile_offset, include/tinyllm/detail/wgmma_layout.hpp).
#include "exercises.hpp"

namespace exercises::attention {

std::uint32_t swizzled_tile_offset(int r, int d, int rows) {
    const int block = d / 64, chunk = (d % 64) / 8, element = d % 8;
    return static_cast<std::uint32_t>(block * rows * 128 + r * 128 + (chunk ^ (r % 8)) * 16 + element * 2);
}

}  // namespace exercises::attention
