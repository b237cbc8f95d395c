// tinyllm/detail/attention_mma_layout.hpp — the index arithmetic of the
// tensor-core attention kernel (cuda/tinyllm/cuda/attention_mma.cuh, v4), as
// plain host/device functions so the CPU tests can check it.
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

}  // namespace tinyllm::detail
