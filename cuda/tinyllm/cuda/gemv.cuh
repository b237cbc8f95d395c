// tinyllm/cuda/gemv.cuh — the matrix-vector product that a decode step's fused
// kernels share: a few rows of activations x (m <= 8) times a weight matrix
// W (N, K), two weight rows per warp, with the results handed to an epilogue
// while they are still in registers.
//
//     s0[m] = sum_k x[m, k] W[n0, k],   s1[m] = sum_k x[m, k] W[n1, k]   (m < rows)
//
// Why a GEMV and not cuBLAS: decoding feeds one token per sequence, so the
// product reads every weight once and does two flops per weight; its time is
// the weights' bytes over the memory bandwidth, whoever computes it. What a
// kernel of our own adds is the epilogue: whatever the next step would do to
// the outputs (rotate them, add a bias, apply SwiGLU, write them to the cache)
// happens here, so that step's launch, and its read and write of the outputs,
// disappear.
//
// How a warp reads its two rows. The 32 lanes stride over K together, each
// loading 16 bytes of each row per step (8 bf16 or 4 floats: coalesced, 512
// bytes a warp-load), and U = 4 such loads of each row are issued before the
// first multiply: a large decode step has only a dozen of these warps per SM,
// and streaming memory needs more bytes in flight than one load per warp. Each
// lane multiplies its slice with every row of x (x is tiny and stays in L1),
// and a warp shuffle (warp_sum) finishes the m sums on every lane; lane m then
// runs the epilogue for row m.
//
// Who pairs which rows is the epilogue's business:
//   * RoPE v4 (positional.cuh): the two features a rotation turns together;
//   * SwiGLU (ffn.cuh): row j of W_gate and row j of W_up, two matrices;
//   * bias + activation (ffn.cuh): neighbouring rows n, n + 1 of one matrix.
//
// An epilogue E is a small struct passed by value to the kernel:
//   E::unit_state   what a warp needs to know about its unit, with members
//                   `index_t n0, n1`: its row of the first matrix and its row of
//                   the second (the same matrix twice for one; there n1 == n0
//                   marks a lone row, whose second sum the epilogue drops)
//   unit_state unit(index_t u) const            (device) unit u's rows
//   void finish(const unit_state&, int m, float s0, float s1) const
//                                               (device) row m's two sums
// and, optionally (the gemv_tail concept below),
//   void tail() const   (device) run by every thread of every block once the
//                       block's units are finished: where an epilogue that
//                       needs all the outputs (a norm over the row) lets the
//                       last block to arrive (launch.cuh) finish the job
// An epilogue names rows, not addresses, so the same one serves the dense
// kernel here and the quantized one (quantize.cuh), which reads int8/int4 rows.
//
// Epilogues: RoPE v4 (positional.cuh), SwiGLU and bias + activation (ffn.cuh),
// and the residual add + norm (norm.cuh v3), the one with a tail.
//
// The grouped form (grouped_pair_gemv_kernel, below) gives each block column g
// its own matrices and its own rows of x, read from device memory: a MoE
// layer's experts, each on the rows its dispatch plan gave it (moe_dispatch.cuh).
//
// Expected speed: the weights' bytes over the bandwidth, e.g. Llama-3.2-1B's
// gate and up in bf16 (2 x 8192 x 2048 x 2 B = 67 MB) in ~17 µs at 4 TB/s.
// Measured (H200, 2026-12-04, one row): 36.6 µs (1.83 TB/s) for gate + up +
// SwiGLU against 34.1 µs for cuBLAS and the SwiGLU kernel; 13.6 against
// 14.9 µs for QKV + RoPE + cache write (docs/gpu.md, run D). Half the copy
// rate, but not for want of loads in flight: at one row (SwiGLU's kernel: 89
// registers, five blocks of 4 warps per SM) 20 warps x 4096 bytes ask for
// 82 KB per SM while they wait, where about 18 KB hides the latency
// (docs/cuda-primer.md, section 5).
// Run D timed after an L2 flush by writing, which leaves up to 63 MB (the H200's
// 60 MiB L2) of dirty lines for the timed kernel to write back (docs/gpu.md, "How we measure"),
// and cuBLAS, timed the same way, was at half the copy rate too. The next
// measurements: after a read flush, and the kernels' times inside a decode
// step (tinyllm bench model_breakdown).
#pragma once

#include <tinyllm/cuda/activation.cuh>        // detail::load_floats
#include <tinyllm/cuda/attention_common.cuh>  // detail::warp_sum
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>

namespace tinyllm::cuda::detail {

inline constexpr int pair_gemv_warps = 4;     // units (warps) per block
inline constexpr int pair_gemv_max_rows = 8;  // rows of x per launch
inline constexpr int pair_gemv_unroll = 4;    // 16-byte loads of each weight row in flight per lane

// An epilogue with a tail (see the top).
template <class Epilogue>
concept gemv_tail = requires(const Epilogue& e) { e.tail(); };

// The unit_state of an epilogue whose warps read one matrix's rows two at a time:
// unit u is rows 2u and 2u + 1 of a matrix of `rows` rows, an odd count's last row
// alone (n1 == n0). Bias + activation (ffn.cuh) and norm v3 (norm.cuh) pair rows so.
struct neighbour_rows {
    index_t n0, n1;
    __device__ static neighbour_rows of_unit(index_t u, index_t rows) {
        const index_t n0 = 2 * u;
        return {n0, n0 + 1 < rows ? n0 + 1 : n0};
    }
    static index_t units(index_t rows) { return ceil_div<index_t>(rows, 2); }
};

// One warp's unit: the sums of its two weight rows with every row of x, then
// epi.finish per row (by lane m). inputs_ready() is called once by every lane,
// at one point of the code, after the first step's weight loads are issued and
// before x is read or anything written: a chained launch (launch.cuh) waits
// there for the kernel that wrote x, with those loads already on their way,
// and the one-launch decode step (decode_dataflow.cuh) waits there for the
// blocks that write x and then stages x in shared memory, a block-wide step
// that needs every thread of the block at the same barrier.
//
// MaxRows bounds m_rows at compile time: 1 for a batch-1 decode step, whose warp
// then keeps 2 accumulators rather than 16 (and fewer registers mean more
// warps, and more loads in flight, per SM), else pair_gemv_max_rows.
template <class T, int V, int MaxRows, class Epilogue, class InputsReady>
__device__ void pair_gemv_unit(const Epilogue& epi, const typename Epilogue::unit_state& u, int lane, const T* x,
                               const T* w_a, const T* w_b, int m_rows, index_t K, InputsReady inputs_ready) {
    static_assert(MaxRows >= 1 && MaxRows <= pair_gemv_max_rows);
    const T* w0 = w_a + u.n0 * K;
    const T* w1 = w_b + u.n1 * K;
    float acc0[MaxRows] = {}, acc1[MaxRows] = {};
    // All U loads of a step are issued before the first multiply.
    constexpr int U = pair_gemv_unroll;
    float a[U][V], b[U][V];
    const auto load_step = [&](index_t k0) {
#pragma unroll
        for (int s = 0; s < U; ++s) {
            const index_t k = k0 + s * 32 * V;
            if (k < K) {
                load_floats<T, V>(a[s], w0 + k);
                load_floats<T, V>(b[s], w1 + k);
            }
        }
    };
    index_t k0 = static_cast<index_t>(lane) * V;
    load_step(k0);   // (nothing where K is below the lane's first column)
    inputs_ready();  // every lane, here, once
    while (k0 < K) {
#pragma unroll
        for (int s = 0; s < U; ++s) {
            const index_t k = k0 + s * 32 * V;
            if (k >= K) break;
#pragma unroll
            for (int m = 0; m < MaxRows; ++m) {
                if (m >= m_rows) break;
                float xv[V];
                load_floats<T, V>(xv, x + m * K + k);
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    acc0[m] = fmaf(xv[e], a[s][e], acc0[m]);
                    acc1[m] = fmaf(xv[e], b[s][e], acc1[m]);
                }
            }
        }
        k0 += 32 * V * U;
        load_step(k0);
    }
#pragma unroll
    for (int m = 0; m < MaxRows; ++m) {
        if (m >= m_rows) break;
        acc0[m] = warp_sum(acc0[m]);  // every lane gets the sums
        acc1[m] = warp_sum(acc1[m]);
    }
#pragma unroll
    for (int m = 0; m < MaxRows; ++m) {  // lane m finishes row m
        if (m >= m_rows) break;
        if (lane == m) epi.finish(u, m, acc0[m], acc1[m]);
    }
}

// units warps, each the two sums of every row of x (m_rows, K, contiguous) with
// its two weight rows (row n0 of w_a, row n1 of w_b; both (N, K), contiguous),
// then epi.finish per row, and an epilogue's tail in every thread (the threads
// of a warp without a unit too). V: elements per load (16 / sizeof(T), or 1
// when K or a pointer does not allow vectors).
//
// Launched chained (launch.cuh): the next kernel may start as soon as every
// block here has, and the weights (which no kernel of a step writes) are read
// before waiting for the kernel that wrote x. The epilogue's writes (the
// outputs, the KV cache) all come after the wait.
template <class T, int V, int MaxRows, class Epilogue>
__global__ void __launch_bounds__(pair_gemv_warps * 32)
    pair_gemv_kernel(Epilogue epi, const T* x, const T* w_a, const T* w_b, int m_rows, index_t K, index_t units) {
    allow_next_grid();
    const int lane = static_cast<int>(threadIdx.x % 32);
    const index_t unit = blockIdx.x * static_cast<index_t>(pair_gemv_warps) + threadIdx.x / 32;
    if (unit < units)  // a whole warp, or none of it
        pair_gemv_unit<T, V, MaxRows>(epi, epi.unit(unit), lane, x, w_a, w_b, m_rows, K,
                                      [] { wait_for_prior_grids(); });
    if constexpr (gemv_tail<Epilogue>) {
        wait_for_prior_grids();  // the threads of a warp without a unit too (a second wait returns at once)
        epi.tail();
    }
}

// An epilogue seen from row `first` on: row m of a launch is row first + m of
// the epilogue's output (the grouped GEMV's rows of one group).
template <class Epilogue>
struct rows_from {
    Epilogue epi;
    int first;
    using unit_state = typename Epilogue::unit_state;
    __device__ void finish(const unit_state& u, int m, float s0, float s1) const { epi.finish(u, first + m, s0, s1); }
};

// The grouped pair GEMV. Group g = blockIdx.y owns the matrices w_a + g group_stride
// and w_b + g group_stride, and counts[g] rows of x from row offsets[g] on (device
// memory: a dispatch plan's offsets and counts), taken 8 at a time; the epilogue's
// row m is x's row m. A group without rows returns before reading a weight, so the
// launch reads only the matrices that have work. Rows at or past `rows` are neither
// read nor written (a plan made for more rows than x has is cut, not followed out of
// bounds). No tail: the groups' blocks do not share an output.
template <class T, int V, class Epilogue>
__global__ void __launch_bounds__(pair_gemv_warps * 32)
    grouped_pair_gemv_kernel(Epilogue epi, const T* x, const T* w_a, const T* w_b, index_t group_stride,
                             const std::int32_t* offsets, const std::int32_t* counts, int rows, index_t K,
                             index_t units) {
    static_assert(!gemv_tail<Epilogue>, "grouped_pair_gemv_kernel: an epilogue with a tail needs one group");
    const int lane = static_cast<int>(threadIdx.x % 32);
    const index_t unit = blockIdx.x * static_cast<index_t>(pair_gemv_warps) + threadIdx.x / 32;
    const index_t g = blockIdx.y;
    if (unit >= units) return;  // a whole warp, or none of it
    const int first = offsets[g], count = counts[g];
    const int end = first + count < rows ? first + count : rows;  // an empty group: end <= first, no row
    const T* wa = w_a + g * group_stride;
    const T* wb = w_b + g * group_stride;
    for (int r = first; r < end; r += pair_gemv_max_rows) {
        const int m = end - r < pair_gemv_max_rows ? end - r : pair_gemv_max_rows;
        pair_gemv_unit<T, V, pair_gemv_max_rows>(rows_from<Epilogue>{epi, r}, epi.unit(unit), lane,
                                                 x + static_cast<index_t>(r) * K, wa, wb, m, K,
                                                 [] {});  // launched plainly: x and the plan are ready
    }
}

// The GEMVs read and write whole rows c apart: a (r, c) view must be contiguous.
template <class View>
void expect_packed_rows(const View& v, std::string_view op, std::string_view name) {
    TINYLLM_EXPECT(v.is_contiguous(), op, ": ", name, " (shape ", to_string(v.shape()), ", strides ",
                   to_string(v.strides()), ") must be contiguous");
}

// A GEMV's bias: (N), contiguous, or empty (none).
template <class View>
void expect_gemv_bias(const View& bias, index_t N, std::string_view op) {
    TINYLLM_EXPECT(bias.size() == 0 || bias.extent(0) == N, op, ": bias has ", bias.extent(0),
                   " elements but the weight has N = ", N, " rows");
    TINYLLM_EXPECT(bias.size() <= 1 || bias.stride(0) == 1, op, ": bias must be contiguous");
}

// The launch geometry both launchers share: blocks of pair_gemv_warps units (checked
// against the grid), and whether the loads may be 16-byte vectors (V = 16 / sizeof(T)
// elements): K and `stride` (the elements between two groups' matrices; 0 for one)
// multiples of the vector, and x, w_a, w_b 16-byte aligned.
template <class T>
struct pair_gemv_geometry {
    static constexpr int vector = 16 / static_cast<int>(sizeof(T));
    unsigned blocks;
    bool vectorized;

    pair_gemv_geometry(std::string_view op, index_t units, index_t K, index_t stride, const T* x, const T* w_a,
                       const T* w_b) {
        const index_t b = ceil_div<index_t>(units, pair_gemv_warps);
        TINYLLM_EXPECT(b <= 2147483647, op, ": ", units, " output units exceed the grid");
        blocks = static_cast<unsigned>(b);
        const auto aligned = [](const T* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
        vectorized = K % vector == 0 && stride % vector == 0 && aligned(x) && aligned(w_a) && aligned(w_b);
    }
};

// Checks (on the host) and launches pair_gemv_kernel: x (rows, K) and every
// weight row contiguous, the rows K apart in the matrices w_a and w_b that the
// units read (one matrix: the same pointer twice). The vector path needs K a
// multiple of the vector and x, w_a, w_b 16-byte aligned; otherwise scalar.
template <class T, class Epilogue>
void launch_pair_gemv(std::string_view op, const Epilogue& epi, const T* x, index_t rows, const T* w_a, const T* w_b,
                      index_t K, index_t units, cudaStream_t stream) {
    TINYLLM_EXPECT(rows >= 0 && rows <= pair_gemv_max_rows, op, ": ", rows, " rows; the GEMV takes at most ",
                   pair_gemv_max_rows, " (a decode step; more rows go to cuBLAS)");
    TINYLLM_EXPECT(K >= 1, op, ": K = ", K, " must be positive");
    if (rows == 0 || units == 0) return;
    const pair_gemv_geometry<T> at(op, units, K, 0, x, w_a, w_b);
    constexpr int W = pair_gemv_geometry<T>::vector;
    const unsigned grid = at.blocks;
    const int m = static_cast<int>(rows);
    // Four instantiations: 16-byte or scalar loads, one row or up to pair_gemv_max_rows.
    constexpr int R = pair_gemv_max_rows;
    auto kernel = pair_gemv_kernel<T, 1, R, Epilogue>;
    if (at.vectorized) kernel = m == 1 ? pair_gemv_kernel<T, W, 1, Epilogue> : pair_gemv_kernel<T, W, R, Epilogue>;
    else if (m == 1) kernel = pair_gemv_kernel<T, 1, 1, Epilogue>;
    launch_chained(kernel, grid, pair_gemv_warps * 32, 0, stream, epi, x, w_a, w_b, m, K, units);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// Checks (on the host) and launches grouped_pair_gemv_kernel: `groups` block
// columns, group g's matrices group_stride elements after group g - 1's, its rows
// of x (rows, K) given by offsets[g] and counts[g] in device memory. Vectors need
// group_stride a multiple of the vector too, so that every group's rows stay aligned.
template <class T, class Epilogue>
void launch_grouped_pair_gemv(std::string_view op, const Epilogue& epi, const T* x, index_t rows, const T* w_a,
                              const T* w_b, index_t group_stride, index_t groups, const std::int32_t* offsets,
                              const std::int32_t* counts, index_t K, index_t units, cudaStream_t stream) {
    TINYLLM_EXPECT(K >= 1, op, ": K = ", K, " must be positive");
    TINYLLM_EXPECT(rows >= 0 && rows <= 2147483647, op, ": ", rows, " rows do not fit int32 row numbers");
    TINYLLM_EXPECT(groups <= 65535, op, ": ", groups, " groups exceed the grid's 65535 block rows");
    if (rows == 0 || units == 0 || groups == 0) return;
    const pair_gemv_geometry<T> at(op, units, K, group_stride, x, w_a, w_b);
    constexpr int W = pair_gemv_geometry<T>::vector;
    const dim3 grid(at.blocks, static_cast<unsigned>(groups));
    const int r = static_cast<int>(rows);
    if (at.vectorized)
        launch(grouped_pair_gemv_kernel<T, W, Epilogue>, grid, pair_gemv_warps * 32, 0, stream, epi, x, w_a, w_b,
               group_stride, offsets, counts, r, K, units);
    else
        launch(grouped_pair_gemv_kernel<T, 1, Epilogue>, grid, pair_gemv_warps * 32, 0, stream, epi, x, w_a, w_b,
               group_stride, offsets, counts, r, K, units);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda::detail
