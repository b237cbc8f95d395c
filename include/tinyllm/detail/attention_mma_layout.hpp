// tinyllm/detail/attention_mma_layout.hpp — the index arithmetic of the
// tensor-core attention kernels (cuda/tinyllm/cuda/attention_mma.cuh, v4, and
// attention_flash2.cuh, v5), as plain host/device functions so the CPU tests
// can check it.
//
// The kernel's warps multiply 16-bit tiles with mma.sync.m16n8k16 and load
// them with ldmatrix.x4. Both instructions spread a matrix over the 32 lanes
// of a warp in a fixed pattern (PTX ISA, "Matrix Fragments for mma.m16n8k16"
// and "ldmatrix"). With g = lane / 4 and t = lane % 4:
//     A (16x16): a0 = A[g][2t, 2t+1]   a1 = A[g+8][2t, 2t+1]   a2 = A[g][2t+8, 2t+9]   a3 = A[g+8][2t+8, 2t+9]
//     B (16x8):  b0 = B[2t, 2t+1][g]   b1 = B[2t+8, 2t+9][g]
//     C (16x8):  c0, c1 = C[g][2t, 2t+1]   c2, c3 = C[g+8][2t, 2t+1]
//     ldmatrix.x4: lanes 8m .. 8m+7 give the addresses of rows 0..7 of matrix m;
//                  register m of lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of
//                  matrix m (.trans: of its transpose).
// The functions below say which shared-memory element each lane points
// ldmatrix at (as an offset in elements, rows `ld` elements apart) and where
// each accumulator element lands. tests/test_attention.cpp emulates the two
// instructions from the rules above and checks that these offsets compute
// Q K^T and P V.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/mma_fragments.hpp>  // the fragment layouts, mma_c_row/mma_c_col

namespace tinyllm::detail {

// A fragment of a 16x16 tile of Q (rows 0..15 of a warp's tile, features
// 16kk .. 16kk+15): matrices 0..3 = (rows 0-7, cols 0-7), (rows 8-15, cols 0-7),
// (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) = a0..a3. Lane l addresses
// row l % 16, column 8 * (l / 16).
TINYLLM_HOST_DEVICE constexpr int mma_q_offset(int lane, int ld, int kk) {
    return (lane % 16) * ld + kk * 16 + (lane / 16) * 8;
}

// B fragments of S = Q K^T for key tiles 2np and 2np+1 (8 keys each) and
// features 16kk .. 16kk+15. B = K^T, and K stored [key][d] is B in the "col"
// layout, so no transpose: matrices 0..3 = (keys 0-7, d 0-7) = b0 of tile 2np,
// (keys 0-7, d 8-15) = b1 of tile 2np, (keys 8-15, d 0-7) and (keys 8-15, d 8-15)
// = b0, b1 of tile 2np+1. Lane l (matrix m = l / 8) addresses key
// 16np + 8 (m / 2) + l % 8, feature 16kk + 8 (m % 2).
TINYLLM_HOST_DEVICE constexpr int mma_k_offset(int lane, int ld, int np, int kk) {
    const int m = lane / 8;
    return (np * 16 + (m / 2) * 8 + lane % 8) * ld + kk * 16 + (m % 2) * 8;
}

// B fragments of O = P V for keys 16kk .. 16kk+15 and feature tiles 2dp, 2dp+1.
// B[k][n] = V[key k][feature n]; V is stored [key][d], row-major in k, so the
// "col" layout needs ldmatrix.trans: matrices 0..3 = (keys 0-7, d 0-7) = b0 of
// tile 2dp, (keys 8-15, d 0-7) = b1 of tile 2dp, (keys 0-7, d 8-15) and
// (keys 8-15, d 8-15) = b0, b1 of tile 2dp+1. Lane l (m = l / 8) addresses key
// 16kk + 8 (m % 2) + l % 8, feature 16dp + 8 (m / 2).
TINYLLM_HOST_DEVICE constexpr int mma_v_offset(int lane, int ld, int kk, int dp) {
    const int m = lane / 8;
    return (kk * 16 + (m % 2) * 8 + lane % 8) * ld + dp * 16 + (m / 2) * 8;
}

// ---- v5 (attention_flash2.cuh): XOR-swizzled tiles instead of padded rows ----------
//
// v5 stores a tile [rows][d] with rows of exactly d elements (no padding) and
// permutes the 16-byte chunks of each row: chunk c of row r is stored at chunk
// c ^ (r % 8). A bank group is 16 bytes (4 of the 32 4-byte banks); the 128
// bytes at a 128-byte aligned address cover all 8 bank groups once, so chunk c
// of a row lies in bank group c % 8 (d = 64: a row is 128 bytes; d = 128: 256
// bytes, two passes over the 8 groups). ldmatrix reads 8 row segments per
// matrix: the same logical chunk c of 8 consecutive rows r0 .. r0+7 (r0 a
// multiple of 8). Unswizzled, with a row stride of 128 or 256 bytes, all 8 are
// in bank group c % 8 (an 8-way conflict: what v4 padded away); swizzled they
// are in groups (c ^ r) % 8 = (c % 8) ^ (r % 8), r = 0..7: eight different ones.
// Within a row the map c -> c ^ (r % 8) is a bijection of the d / 8 chunks
// (XOR with a value < 8 stays inside each aligned group of 8), so no two
// elements share an address and the tile takes exactly rows * d elements.
// Element order inside a chunk is unchanged, so ldmatrix's 16-byte rows and
// cp.async's 16-byte copies stay contiguous. d must be a multiple of 64.
TINYLLM_HOST_DEVICE constexpr int mma_swizzle(int row, int col, int d) {
    return row * d + (((col / 8) ^ (row % 8)) * 8) + col % 8;
}

// The v4 ldmatrix addresses (mma_q_offset, mma_k_offset, mma_v_offset: same
// rows and columns) in a swizzled [rows][d] tile. The rows are relative to the
// tile's first row, which the kernel keeps at a multiple of 8 (a warp's 16
// query rows, a 64-key tile), so row % 8 is the same in the tile and in shared
// memory and the swizzle of a sub-tile is the sub-tile of the swizzle.
//
// Written so that a compiler sees few distinct per-lane values: a 16-column
// step s (= kk or dp) reads chunk 2s + half of its row (half = 0 or 1: which
// 8 columns of the 16), and since 2s + half = 8 (s / 4) + (2 (s % 4) + half)
// and the XOR with row % 8 < 8 only touches the low three bits,
//     mma_swizzle(row, 16 s + 8 half, d) = row d + 64 (s / 4) + swizzled_step(s % 4, half, row).
// With s and the tile offsets compile-time constants (unrolled loops), every
// address is one of four per-lane values plus an immediate: 4 registers per
// operand instead of one per ldmatrix (D = 128: 72 addresses, which spilled).
// The CPU test checks these against mma_swizzle.
TINYLLM_HOST_DEVICE constexpr int swizzled_step(int s4, int half, int row) { return ((2 * s4 + half) ^ (row % 8)) * 8; }
TINYLLM_HOST_DEVICE constexpr int swizzled_q_offset(int lane, int d, int kk) {
    return (lane % 16) * d + 64 * (kk / 4) + swizzled_step(kk % 4, lane / 16, lane);
}
TINYLLM_HOST_DEVICE constexpr int swizzled_k_offset(int lane, int d, int np, int kk) {
    const int m = lane / 8;
    return (np * 16 + (m / 2) * 8 + lane % 8) * d + 64 * (kk / 4) + swizzled_step(kk % 4, m % 2, lane);
}
TINYLLM_HOST_DEVICE constexpr int swizzled_v_offset(int lane, int d, int kk, int dp) {
    const int m = lane / 8;
    return (kk * 16 + (m % 2) * 8 + lane % 8) * d + 64 * (dp / 4) + swizzled_step(dp % 4, m / 2, lane);
}

// The 16-byte bank group (0..7) of an element offset of a 16-bit tile whose
// start is 128-byte aligned: what the CPU test checks the swizzle against.
TINYLLM_HOST_DEVICE constexpr int bank_group_of(int element_offset) { return (element_offset * 2 / 16) % 8; }

}  // namespace tinyllm::detail
