// tinyllm/detail/wgmma_layout.hpp — where Hopper's warpgroup matrix
// instruction (wgmma.mma_async, sm_90a) finds its operands in shared memory
// and where it leaves its results in registers, as plain host/device
// functions. Attention v6 (cuda/tinyllm/cuda/attention_wgmma.cuh) lays out its
// tiles with them, the simulated GPU executes the instruction with them
// (sim/src/executor.cpp), and tests/test_attention.cpp checks the two against
// each other on the CPU.
//
// What wgmma is. mma.sync (v4, v5) is a warp multiplying 16 x 8 x 16 tiles
// whose operands it first loads into registers (ldmatrix). wgmma is a
// *warpgroup* — 4 consecutive warps, 128 threads — multiplying a 64 x N x 16
// product, N up to 256, whose B operand (and optionally A) the tensor cores
// read straight from shared memory. The instruction is asynchronous: it is
// issued, later committed into a group (wgmma.commit_group) and waited for
// (wgmma.wait_group); the registers it writes must not be touched before.
//
// Shared-memory operands are described by a 64-bit *matrix descriptor*
// (PTX ISA, "Matrix Descriptor Format"):
//     bits  0-13  start address >> 4 (a shared-memory address, 16-byte aligned)
//     bits 16-29  leading-dimension byte offset (LBO) >> 4
//     bits 32-45  stride-dimension byte offset (SBO) >> 4
//     bits 49-51  base offset (0 when the swizzle pattern starts at a 1024-byte boundary)
//     bits 62-63  swizzle mode: 0 none, 1 = 128-byte, 2 = 64-byte, 3 = 32-byte
// tinyllm uses the 128-byte swizzle only. Its canonical layouts, for 16-bit
// elements (PTX ISA, "Canonical Layouts"; the logical byte offset first, then
// the swizzle, which XORs address bits 4-6 with bits 7-9):
//     K-major  (element (mn, k), k contiguous):   start + (mn / 8) SBO + (mn % 8) 128 + 2 k
//     MN-major (element (mn, k), mn contiguous):  start + (mn / 64) LBO + 2 (mn % 64) + (k % 8) 128 + (k / 8) SBO
// i.e. 128-byte rows (64 elements), grouped by 8 into 1024-byte "atoms" in
// which 16-byte chunk c of row r sits at chunk c ^ r. Rows of one K-major
// operand are along M or N (a row holds 64 consecutive k); rows of an MN-major
// operand are along K (a row holds 64 consecutive m or n).
//
// The 16-bit fragments in registers are mma.sync's, one per warp: warp w of
// the warpgroup holds rows 16w .. 16w+15 of A and of the accumulator D, in the
// m16n8k16 layouts of mma_fragments.hpp; D's N columns are N / 8 such 16 x 8
// tiles, so thread register i holds D[16w + mma_c_row(lane, i % 4)][8 (i / 4) + mma_c_col(lane, i % 4)].
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/mma_fragments.hpp>

#include <cstdint>

namespace tinyllm::detail {

// The 128-byte swizzle of a shared-memory byte address: bits 4-6 (the 16-byte
// chunk within a 128-byte row) XOR bits 7-9 (the row within a 1024-byte atom).
TINYLLM_HOST_DEVICE constexpr std::uint32_t wgmma_swizzle128(std::uint32_t address) {
    return address ^ (((address >> 7) & 7u) << 4);
}

// Byte offset of element (r, d) in a [rows][D] tile of 16-bit values stored
// the way attention v6 stores Q, K and V: the features split into 64-wide
// column blocks, block j = d / 64 at j * rows * 128 bytes, each a stack of
// 128-byte rows (row r at r * 128) with the 128-byte swizzle applied. With the
// tile at a 1024-byte aligned address and rows a multiple of 8, this is the
// K-major canonical layout for rows along M or N (SBO = 1024) and the MN-major
// one for rows along K (SBO = 1024, LBO = rows * 128).
TINYLLM_HOST_DEVICE constexpr std::uint32_t wgmma_tile_offset(int r, int d, int rows) {
    const std::uint32_t logical = static_cast<std::uint32_t>((d / 64) * rows * 128 + r * 128 + (d % 64) * 2);
    return wgmma_swizzle128(logical);
}

// The fields of a descriptor, in bytes.
struct wgmma_descriptor_fields {
    std::uint32_t start, lbo, sbo;
    int base_offset, swizzle;  // swizzle: 1 = 128-byte
};

// A descriptor of an operand at shared-memory address `start` with the 128-byte swizzle.
TINYLLM_HOST_DEVICE constexpr std::uint64_t wgmma_descriptor(std::uint32_t start, std::uint32_t lbo, std::uint32_t sbo) {
    auto encode = [](std::uint32_t x) { return static_cast<std::uint64_t>((x & 0x3FFFFu) >> 4); };
    return encode(start) | (encode(lbo) << 16) | (encode(sbo) << 32) | (std::uint64_t{1} << 62);
}

TINYLLM_HOST_DEVICE constexpr wgmma_descriptor_fields wgmma_decode(std::uint64_t desc) {
    return {static_cast<std::uint32_t>(desc & 0x3FFFu) << 4, static_cast<std::uint32_t>((desc >> 16) & 0x3FFFu) << 4,
            static_cast<std::uint32_t>((desc >> 32) & 0x3FFFu) << 4, static_cast<int>((desc >> 49) & 7u),
            static_cast<int>(desc >> 62)};
}

// The shared-memory byte address of element (mn, k) of an operand described
// by `f` (128-byte swizzle, base offset 0): the canonical layouts above.
TINYLLM_HOST_DEVICE constexpr std::uint32_t wgmma_k_major_address(const wgmma_descriptor_fields& f, int mn, int k) {
    return wgmma_swizzle128(f.start + static_cast<std::uint32_t>(mn / 8) * f.sbo + static_cast<std::uint32_t>((mn % 8) * 128 + 2 * k));
}
TINYLLM_HOST_DEVICE constexpr std::uint32_t wgmma_mn_major_address(const wgmma_descriptor_fields& f, int mn, int k) {
    return wgmma_swizzle128(f.start + static_cast<std::uint32_t>(mn / 64) * f.lbo + static_cast<std::uint32_t>(2 * (mn % 64) + (k % 8) * 128) +
                            static_cast<std::uint32_t>(k / 8) * f.sbo);
}

// The same descriptor moved `bytes` (a multiple of 16) further: the start
// address field is the low 14 bits, address / 16, and stays below 2^14 for
// shared-memory addresses under 256 KiB.
TINYLLM_HOST_DEVICE constexpr std::uint64_t wgmma_advance(std::uint64_t desc, std::uint32_t bytes) { return desc + (bytes >> 4); }

// Where attention v6's products start in its tiles (wgmma_tile_offset layout, `rows` rows):
//   K-major operand of rows row0 .. (M or N along the rows), features 16 step .. 16 step + 15:
//   column block step / 4, 32 bytes per step within the 128-byte rows (SBO = 1024);
TINYLLM_HOST_DEVICE constexpr std::uint32_t wgmma_k_major_step(int rows, int row0, int step) {
    return static_cast<std::uint32_t>((step / 4) * rows * 128 + row0 * 128 + (step % 4) * 32);
}
//   N-major operand (rows along K) for rows 16 kk .. 16 kk + 15, all features:
//   SBO = 1024 (8 rows), LBO = rows * 128 (the next 64-feature column block).
TINYLLM_HOST_DEVICE constexpr std::uint32_t wgmma_n_major_step(int kk) { return static_cast<std::uint32_t>(kk * 16 * 128); }

// Row (0..63) and column (0..N-1) of accumulator register i of thread t (0..127) of a warpgroup.
TINYLLM_HOST_DEVICE constexpr int wgmma_d_row(int t, int i) { return 16 * (t / 32) + mma_c_row(t % 32, i % 4); }
TINYLLM_HOST_DEVICE constexpr int wgmma_d_col(int t, int i) { return 8 * (i / 4) + mma_c_col(t % 32, i % 4); }

}  // namespace tinyllm::detail
