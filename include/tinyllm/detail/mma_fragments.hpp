// tinyllm/detail/mma_fragments.hpp — how the warp-wide matrix instructions
// ldmatrix and mma.sync.m16n8k16 spread their matrices over the 32 lanes of a
// warp (PTX ISA, "Matrix Fragments for mma.m16n8k16" and "ldmatrix"), as plain
// functions. The simulated GPU executes the two instructions with them
// (sim/src/executor.cpp); tests/test_attention.cpp uses them to check the
// tensor-core attention kernel's index arithmetic on the CPU.
//
// With g = lane / 4 and t = lane % 4, and every 32-bit register holding two
// 16-bit values (the lower index in the low half):
//     A (16x16, row-major): a0 = A[g][2t, 2t+1]    a1 = A[g+8][2t, 2t+1]
//                           a2 = A[g][2t+8, 2t+9]  a3 = A[g+8][2t+8, 2t+9]
//     B (16x8, "col"):      b0 = B[2t, 2t+1][g]    b1 = B[2t+8, 2t+9][g]
//     C, D (16x8, float):   c0, c1 = C[g][2t, 2t+1]    c2, c3 = C[g+8][2t, 2t+1]
//     ldmatrix .x1/.x2/.x4: lanes 8m .. 8m+7 give the addresses of rows 0..7 of
//                           matrix m (8 16-bit values each); register m of lane l
//                           receives row l/4, columns 2(l%4) and 2(l%4)+1 of
//                           matrix m — of its transpose with .trans.
#pragma once

#include <tinyllm/config.hpp>

namespace tinyllm::detail {

// The two values of ldmatrix register m of `lane`, given rows[i] = the 8 values
// at the address lane i supplied.
template <class V>
constexpr void ldmatrix_pair(V (&pair)[2], const V (&rows)[32][8], int m, int lane, bool trans) {
    const int r = lane / 4, c = 2 * (lane % 4);
    for (int x = 0; x < 2; ++x) pair[x] = trans ? rows[8 * m + c + x][r] : rows[8 * m + r][c + x];
}

// Assemble the A (16x16) operand of one m16n8k16 product (or a warp's 16 rows
// of a wgmma A operand in registers) from the lanes' registers: a(l, r, x) is
// value x of A register r of lane l.
template <class GetA>
void mma_a_operand(float (&A)[16][16], GetA a) {
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int x = 0; x < 2; ++x) {
            A[g][2 * t + x] = a(l, 0, x);
            A[g + 8][2 * t + x] = a(l, 1, x);
            A[g][2 * t + 8 + x] = a(l, 2, x);
            A[g + 8][2 * t + 8 + x] = a(l, 3, x);
        }
    }
}

// Both operands of one m16n8k16 product: A as above, B (16x8) from B registers
// 0 and 1, b(l, r, x) likewise.
template <class GetA, class GetB>
void mma_operands(float (&A)[16][16], float (&B)[16][8], GetA a, GetB b) {
    mma_a_operand(A, a);
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int x = 0; x < 2; ++x) {
            B[2 * t + x][g] = b(l, 0, x);
            B[2 * t + 8 + x][g] = b(l, 1, x);
        }
    }
}

// Row (0..15) and column (0..7) of accumulator element e (0..3) of a lane.
TINYLLM_HOST_DEVICE constexpr int mma_c_row(int lane, int e) { return lane / 4 + (e >= 2 ? 8 : 0); }
TINYLLM_HOST_DEVICE constexpr int mma_c_col(int lane, int e) { return 2 * (lane % 4) + (e & 1); }

// d = c + A B for the four accumulator elements `lane` holds (float sums, k in order).
inline void mma_lane_result(float (&d)[4], const float (&A)[16][16], const float (&B)[16][8], const float (&c)[4],
                            int lane) {
    for (int e = 0; e < 4; ++e) {
        const int row = mma_c_row(lane, e), col = mma_c_col(lane, e);
        float acc = 0.0f;
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        d[e] = c[e] + acc;
    }
}

}  // namespace tinyllm::detail
