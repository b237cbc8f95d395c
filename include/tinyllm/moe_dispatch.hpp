// tinyllm/moe_dispatch.hpp — moving tokens to their experts and back:
// dispatch (plan + gather), the experts' SwiGLU FFNs, and combine.
//
// After gating, token t must visit experts id(t, 0..k-1). Running each expert
// on the whole batch with a mask would do E/k times the work; instead the T·k
// (token, slot) pairs are grouped by expert so each expert multiplies one
// contiguous block of rows — one dense GEMM per expert:
//
//   1. histogram   count[e] = #slots routed to e (after capacity dropping)
//   2. prefix sum  offset[e] = sum_{e' < e} padded(count[e'])       (exclusive scan)
//                  padded(c) = c rounded up to `block` rows, so every expert's
//                  block starts at a multiple of `block` (grouped GEMM tiles)
//   3. scatter     slot (t, j) of expert e goes to row offset[e] + rank, where
//                  rank = how many slots of e came before it in token order
//   4. gather      x_sorted[row] = x[token of row]           (padding rows: 0)
//   5. experts     y_sorted[rows of e] = FFN_e(x_sorted[rows of e])
//   6. combine     y[t] = sum_j w(t, j) · y_sorted[row_of(t, j)]   (dropped slots add 0)
//
// The rank in token order is the same number capacity assignment uses
// (moe_balance.hpp), so a slot is dropped exactly when rank >= capacity, and
// the plan is deterministic: the same ids always give the same rows, on the
// CPU and on the GPU (cuda/tinyllm/cuda/moe.cuh computes the rank with a
// stable per-expert scan). Combine sums a token's k slots in slot order, so it
// needs no atomics and its result does not depend on thread timing.
//
// The expert FFN is Mixtral's SwiGLU (Shazeer 2020, "GLU variants"):
//     FFN_e(x) = W2_e · (silu(W1_e · x) ⊙ (W3_e · x)),   silu(a) = a · sigmoid(a)
// with weights in PyTorch nn.Linear layout: W1_e, W3_e (F, D); W2_e (D, F).
//
// A whole Mixtral-style MoE block is cpu::moe_forward at the end of this file.
//
// Backward (training; derivation in docs/training.md): cpu::moe_backward runs
// the forward's steps in reverse. Each step is a linear map of its data, or a
// small non-linear one with a known derivative:
//   combine    y[t] = sum_j w(t, j) · y_sorted[row_of(t, j)]: a weighted scatter,
//              whose transpose is a gather. dy_sorted[row_of(t, j)] = w(t, j) · dy[t]
//              (every used row belongs to one slot, so nothing is summed), and
//              dw(t, j) = <dy[t], y_sorted[row_of(t, j)]>; dropped slots: 0.
//   experts    per expert, linear_backward through W2, swiglu_backward, and
//              linear_backward through W1 and W3 (their dx added).
//   gather     x_sorted[row] = x[row_token[row]]: its transpose sums every copy
//              of a token back, dx[t] = sum_j dx_sorted[row_of(t, j)], the k slots
//              in slot order — a fixed order, no atomics.
//   gating     softmax_topk_gating_backward (moe_gating.hpp): only the chosen
//              experts' logits get gradient.
//   router     logits = x · router^T: linear_backward.
// The routing (ids, plan) is recomputed from x and the router exactly as the
// forward computed it; it is piecewise constant and has no gradient.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/activation.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/moe_balance.hpp>
#include <tinyllm/moe_gating.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace tinyllm {

// Where every (token, slot) goes: a view of four int32 arrays in host memory
// (CPU) or device memory (CUDA). Fill it with cpu::moe_plan / cuda::moe_plan.
struct moe_plan_view {
    tensor_view<std::int32_t, 2> row_of;          // (T, k): the slot's row in the sorted buffer, -1 if dropped
    tensor_view<std::int32_t, 1> row_token;       // (R): the token a row holds; -1 for padding and unused rows
    tensor_view<std::int32_t, 1> expert_offsets;  // (E + 1): expert e owns rows [offsets[e], offsets[e+1])
    tensor_view<std::int32_t, 1> expert_counts;   // (E): rows of e holding a token (kept slots); the rest pad
};

struct moe_dispatch_options {
    index_t capacity = -1;  // the most slots an expert accepts; < 0: unlimited
    index_t block = 1;      // pad every expert's rows to a multiple of this (grouped GEMM tile height)
};

// R, the rows a plan may need: every slot kept, every expert padded by up to
// block - 1 rows. (The rows actually used are expert_offsets[E].)
inline index_t moe_max_rows(index_t tokens, index_t k, index_t experts, index_t block) {
    TINYLLM_EXPECT(tokens >= 0 && k >= 1 && experts >= 1 && block >= 1, "moe_max_rows: T = ", tokens, ", k = ", k,
                   ", E = ", experts, " and block = ", block, " must be >= 0, >= 1, >= 1 and >= 1");
    // Each product and the sum checked before it is formed: they may not fit index_t.
    constexpr index_t most = std::numeric_limits<index_t>::max();
    TINYLLM_EXPECT(tokens <= most / k && block - 1 <= most / experts && tokens * k <= most - experts * (block - 1),
                   "moe_max_rows: T = ", tokens, " tokens of k = ", k, " slots and E = ", experts,
                   " experts padded to blocks of ", block, " need more rows than index_t counts");
    return tokens * k + experts * (block - 1);
}

// silu(a) = a · sigmoid(a), shared by the CPU loop and the CUDA kernel.
TINYLLM_HOST_DEVICE float moe_silu(float a) { return a / (1.0f + ::expf(-a)); }

namespace detail {

inline void expect_plan(const moe_plan_view& plan, index_t tokens, index_t k, index_t experts, index_t block,
                        const char* op) {
    expect_shape(plan.row_of, extents<2>{tokens, k}, std::string(op) + ": plan.row_of");
    expect_shape(plan.expert_offsets, extents<1>{experts + 1}, std::string(op) + ": plan.expert_offsets");
    expect_shape(plan.expert_counts, extents<1>{experts}, std::string(op) + ": plan.expert_counts");
    TINYLLM_EXPECT(plan.row_token.extent(0) >= moe_max_rows(tokens, k, experts, block), op, ": plan.row_token has ",
                   plan.row_token.extent(0), " rows but up to moe_max_rows(T, k, E, block) = ",
                   moe_max_rows(tokens, k, experts, block), " may be needed");
    TINYLLM_EXPECT(plan.row_of.is_contiguous() && plan.row_token.is_contiguous() &&
                       plan.expert_offsets.is_contiguous() && plan.expert_counts.is_contiguous(),
                   op, ": the plan's arrays must be contiguous");
}

inline void expect_dispatch_options(const moe_dispatch_options& o, const char* op) {
    TINYLLM_EXPECT(o.block >= 1, op, ": block = ", o.block, " must be at least 1");
}

// The experts step's shapes: out, in (R, D); w1, w3 (E, F, D); w2 (E, D, F); E from the plan.
template <class Out, class In, class W>
void expect_experts_args(const Out& out, const In& in, const W& w1, const W& w3, const W& w2,
                         const moe_plan_view& plan, const std::string& op) {
    const index_t D = in.extent(1), E = w1.extent(0), F = w1.extent(1);
    expect_shape(out, in.shape(), op + ": out");
    expect_shape(w1, extents<3>{E, F, D}, op + ": w1");
    expect_shape(w3, extents<3>{E, F, D}, op + ": w3");
    expect_shape(w2, extents<3>{E, D, F}, op + ": w2");
    expect_shape(plan.expert_offsets, extents<1>{E + 1}, op + ": plan.expert_offsets");
    expect_shape(plan.expert_counts, extents<1>{E}, op + ": plan.expert_counts");
    // out is written while every row of in and the weights may still be read.
    expect_distinct_elements(op, "out", out);
    expect_apart_from(op, "out", out, "in", in, "w1", w1, "w3", w3, "w2", w2);
}

// The memory of gather and combine (CPU and CUDA): out is written row by row
// while rows of its input that other rows take are still to be read, so it is
// apart from the input, from the weights and from the plan, with an address
// for each element.
template <class Out, class In>
void expect_gather_memory(const char* op, const Out& out, const In& in, const moe_plan_view& plan) {
    expect_distinct_elements(op, "out", out);
    expect_apart_from(op, "out", out, "x", in, "plan.row_token", plan.row_token);
}
template <class Out, class In, class W>
void expect_combine_memory(const char* op, const Out& out, const In& expert_out, const W& weights,
                           const moe_plan_view& plan) {
    expect_distinct_elements(op, "out", out);
    expect_apart_from(op, "out", out, "expert_out", expert_out, "weights", weights, "plan.row_of", plan.row_of);
}

}  // namespace detail

namespace cpu {

// Steps 1–3: histogram, capacity, exclusive prefix sum, scatter.
//   plan: row_of (T, k), row_token (R >= moe_max_rows), expert_offsets (E + 1), expert_counts (E)
//   ids (T, k) int32. Returns the number of dropped slots.
inline index_t moe_plan(moe_plan_view plan, tensor_view<const std::int32_t, 2> ids,
                        const moe_dispatch_options& options = {}) {
    const index_t T = ids.extent(0), k = ids.extent(1), E = plan.expert_counts.extent(0);
    tinyllm::detail::expect_dispatch_options(options, "moe_plan");
    tinyllm::detail::expect_plan(plan, T, k, E, options.block, "moe_plan");
    TINYLLM_EXPECT(moe_max_rows(T, k, E, options.block) <= INT32_MAX, "moe_plan: ", moe_max_rows(T, k, E, options.block),
                   " rows do not fit int32 row numbers");
    // 1. Rank of every slot within its expert, in token order; dropped: -1.
    const index_t dropped = assign_capacity(plan.row_of, ids, E, options.capacity);
    // Histogram of kept slots.
    for (index_t e = 0; e < E; ++e) plan.expert_counts(e) = 0;
    for (index_t t = 0; t < T; ++t)
        for (index_t j = 0; j < k; ++j)
            if (plan.row_of(t, j) >= 0) ++plan.expert_counts(ids(t, j));
    // 2. Exclusive prefix sum of the padded counts.
    index_t offset = 0;
    for (index_t e = 0; e < E; ++e) {
        plan.expert_offsets(e) = static_cast<std::int32_t>(offset);
        offset += ceil_div<index_t>(plan.expert_counts(e), options.block) * options.block;
    }
    plan.expert_offsets(E) = static_cast<std::int32_t>(offset);
    // 3. Scatter: the rank becomes a row; every row records its token.
    for (index_t r = 0; r < plan.row_token.extent(0); ++r) plan.row_token(r) = -1;
    for (index_t t = 0; t < T; ++t) {
        for (index_t j = 0; j < k; ++j) {
            if (plan.row_of(t, j) < 0) continue;
            const std::int32_t row = plan.expert_offsets(ids(t, j)) + plan.row_of(t, j);
            plan.row_of(t, j) = row;
            plan.row_token(row) = static_cast<std::int32_t>(t);
        }
    }
    return dropped;
}

// Step 4: x_sorted[row] = x[row_token[row]], zero for padding/unused rows.
//   out (R, D), x (T, D)
inline void moe_gather(tensor_view<float, 2> out, tensor_view<const float, 2> x, const moe_plan_view& plan) {
    const index_t R = out.extent(0), D = out.extent(1);
    TINYLLM_EXPECT(plan.row_token.extent(0) == R, "moe_gather: out has ", R, " rows but plan.row_token has ",
                   plan.row_token.extent(0));
    TINYLLM_EXPECT(x.extent(1) == D, "moe_gather: x has width ", x.extent(1), " but out has width ", D);
    tinyllm::detail::expect_gather_memory("moe_gather", out, x, plan);
    for (index_t r = 0; r < R; ++r) {
        const std::int32_t t = plan.row_token(r);
        TINYLLM_EXPECT(t < x.extent(0), "moe_gather: plan.row_token(", r, ") = ", t, " but x has ", x.extent(0), " tokens");
        for (index_t d = 0; d < D; ++d) out(r, d) = t >= 0 ? x(t, d) : 0.0f;
    }
}

// Step 5: every expert's SwiGLU FFN on its rows; padding/unused rows get 0.
//   out (R, D), in (R, D), w1 (E, F, D), w3 (E, F, D), w2 (E, D, F)
// Accumulates in double: this is the reference the GPU GEMMs are checked against.
inline void moe_experts_swiglu(tensor_view<float, 2> out, tensor_view<const float, 2> in,
                               tensor_view<const float, 3> w1, tensor_view<const float, 3> w3,
                               tensor_view<const float, 3> w2, const moe_plan_view& plan) {
    const index_t R = in.extent(0), D = in.extent(1), E = w1.extent(0), F = w1.extent(1);
    tinyllm::detail::expect_experts_args(out, in, w1, w3, w2, plan, "moe_experts_swiglu");
    TINYLLM_EXPECT(plan.expert_offsets(E) <= R, "moe_experts_swiglu: the plan uses ", plan.expert_offsets(E),
                   " rows but in has ", R);
    // Each expert's rows lie inside its own range of the plan (a plan moe_plan did not write may not).
    for (index_t e = 0; e < E; ++e)
        TINYLLM_EXPECT(plan.expert_offsets(e) >= 0 && plan.expert_counts(e) >= 0 &&
                           plan.expert_offsets(e) + plan.expert_counts(e) <= plan.expert_offsets(e + 1),
                       "moe_experts_swiglu: expert ", e, "'s ", plan.expert_counts(e), " rows at offset ",
                       plan.expert_offsets(e), " run past the next expert's offset ", plan.expert_offsets(e + 1));
    for (index_t r = 0; r < R; ++r)
        for (index_t d = 0; d < D; ++d) out(r, d) = 0.0f;
    std::vector<double> h(static_cast<std::size_t>(F));
    for (index_t e = 0; e < E; ++e) {
        const index_t first = plan.expert_offsets(e), rows = plan.expert_counts(e);
        for (index_t r = first; r < first + rows; ++r) {
            for (index_t f = 0; f < F; ++f) {
                double gate = 0, up = 0;
                for (index_t d = 0; d < D; ++d) {
                    gate += static_cast<double>(w1(e, f, d)) * in(r, d);
                    up += static_cast<double>(w3(e, f, d)) * in(r, d);
                }
                h[f] = gate / (1.0 + std::exp(-gate)) * up;  // silu(gate) * up
            }
            for (index_t d = 0; d < D; ++d) {
                double y = 0;
                for (index_t f = 0; f < F; ++f) y += static_cast<double>(w2(e, d, f)) * h[f];
                out(r, d) = static_cast<float>(y);
            }
        }
    }
}

// Step 6: y[t] = sum_j weights(t, j) · expert_out[row_of(t, j)], slots in order,
// dropped slots skipped (a token with every slot dropped gets 0: the residual
// connection around the MoE block passes it through).
//   out (T, D), expert_out (R, D), weights (T, k)
inline void moe_combine(tensor_view<float, 2> out, tensor_view<const float, 2> expert_out,
                        tensor_view<const float, 2> weights, const moe_plan_view& plan) {
    const index_t T = out.extent(0), D = out.extent(1), k = weights.extent(1);
    expect_shape(weights, extents<2>{T, k}, "moe_combine: weights");
    expect_shape(plan.row_of, extents<2>{T, k}, "moe_combine: plan.row_of");
    TINYLLM_EXPECT(expert_out.extent(1) == D, "moe_combine: expert_out has width ", expert_out.extent(1),
                   " but out has width ", D);
    tinyllm::detail::expect_combine_memory("moe_combine", out, expert_out, weights, plan);
    for (index_t t = 0; t < T; ++t) {
        for (index_t d = 0; d < D; ++d) {
            float sum = 0.0f;
            for (index_t j = 0; j < k; ++j) {
                const std::int32_t row = plan.row_of(t, j);
                if (row < 0) continue;
                TINYLLM_EXPECT(row < expert_out.extent(0), "moe_combine: plan.row_of(", t, ", ", j, ") = ", row,
                               " but expert_out has ", expert_out.extent(0), " rows");
                sum += weights(t, j) * expert_out(row, d);
            }
            out(t, d) = sum;
        }
    }
}

// A plan that owns its arrays (host memory), for CPU code and tests.
struct moe_plan_buffers {
    tensor<std::int32_t, 2> row_of;
    tensor<std::int32_t, 1> row_token, expert_offsets, expert_counts;
    index_t dropped = 0;

    moe_plan_buffers(index_t tokens, index_t k, index_t experts, index_t block = 1)
        : row_of(extents<2>{tokens, k}),
          row_token(extents<1>{moe_max_rows(tokens, k, experts, block)}),
          expert_offsets(extents<1>{experts + 1}),
          expert_counts(extents<1>{experts}) {}
    moe_plan_view view() { return {row_of.view(), row_token.view(), expert_offsets.view(), expert_counts.view()}; }
    index_t rows() const { return row_token.size(); }
};

// The router of moe_forward: logits (T, E) = x (T, D) · router (E, D)^T, each
// a double sum rounded once — the logits the forward chooses experts from, and
// the ones to give load_balancing_loss and router_z_loss.
inline void moe_router_logits(tensor_view<float, 2> logits, tensor_view<const float, 2> x,
                              tensor_view<const float, 2> router) {
    const index_t T = x.extent(0), D = x.extent(1), E = router.extent(0);
    expect_shape(router, extents<2>{E, D}, "moe_router_logits: router");
    expect_shape(logits, extents<2>{T, E}, "moe_router_logits: logits");
    for (index_t t = 0; t < T; ++t)
        for (index_t e = 0; e < E; ++e) {
            double s = 0;
            for (index_t d = 0; d < D; ++d) s += static_cast<double>(x(t, d)) * router(e, d);
            logits(t, e) = static_cast<float>(s);
        }
}

// A whole Mixtral-style sparse MoE block (without the residual):
//   logits = x · router^T; softmax -> top-k -> renormalize;
//   y[t] = sum_j w(t, j) · FFN_{id(t, j)}(x[t])
//   out (T, D), x (T, D), router (E, D), w1 (E, F, D), w3 (E, F, D), w2 (E, D, F)
inline void moe_forward(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 2> router,
                        tensor_view<const float, 3> w1, tensor_view<const float, 3> w3,
                        tensor_view<const float, 3> w2, index_t k, const moe_dispatch_options& options = {}) {
    const index_t T = x.extent(0), D = x.extent(1), E = router.extent(0);
    expect_shape(out, x.shape(), "moe_forward: out");
    expect_shape(router, extents<2>{E, D}, "moe_forward: router");
    TINYLLM_EXPECT(k >= 1 && k <= E, "moe_forward: k = ", k, " must be in [1, E = ", E, "]");
    tinyllm::detail::expect_dispatch_options(options, "moe_forward");
    tensor<float, 2> logits(extents<2>{T, E});  // (T, E)
    moe_router_logits(logits.view(), x, router);
    tensor<std::int32_t, 2> ids(extents<2>{T, k});  // (T, k)
    tensor<float, 2> weights(extents<2>{T, k});     // (T, k)
    softmax_topk_gating(ids.view(), weights.view(), logits.view(), true);
    moe_plan_buffers plan(T, k, E, options.block);
    moe_plan(plan.view(), ids.view(), options);
    tensor<float, 2> sorted(extents<2>{plan.rows(), D}), expert_out(extents<2>{plan.rows(), D});  // (R, D)
    moe_gather(sorted.view(), x, plan.view());
    moe_experts_swiglu(expert_out.view(), sorted.view(), w1, w3, w2, plan.view());
    moe_combine(out, expert_out.view(), weights.view(), plan.view());
}

}  // namespace cpu
}  // namespace tinyllm

namespace tinyllm::detail {

// An optional (empty) gradient of the given shape, or an error naming it.
template <std::size_t R>
void expect_optional_gradient(tensor_view<float, R> g, const extents<R>& shape, const char* op, const char* name) {
    if (g.size() != 0) expect_shape(g, shape, std::string(op) + ": " + name);
}

// The arguments of moe_backward (CPU and CUDA): every gradient empty or of its
// tensor's shape, dout like x, dlogits_extra (T, E) or empty.
inline void expect_moe_backward_args(const char* op, tensor_view<float, 2> dx, tensor_view<float, 2> drouter,
                                     tensor_view<float, 3> dw1, tensor_view<float, 3> dw3, tensor_view<float, 3> dw2,
                                     tensor_view<const float, 2> dout, tensor_view<const float, 2> dlogits_extra,
                                     tensor_view<const float, 2> x, tensor_view<const float, 2> router,
                                     tensor_view<const float, 3> w1, tensor_view<const float, 3> w3,
                                     tensor_view<const float, 3> w2) {
    const std::string o(op);
    const index_t T = x.extent(0), D = x.extent(1), E = router.extent(0), F = w1.extent(1);
    expect_shape(router, extents<2>{E, D}, o + ": router");
    expect_shape(w1, extents<3>{E, F, D}, o + ": w1");
    expect_shape(w3, extents<3>{E, F, D}, o + ": w3");
    expect_shape(w2, extents<3>{E, D, F}, o + ": w2");
    expect_shape(dout, x.shape(), o + ": dout");
    expect_optional_gradient(dx, x.shape(), op, "dx");
    expect_optional_gradient(drouter, router.shape(), op, "drouter");
    expect_optional_gradient(dw1, w1.shape(), op, "dw1");
    expect_optional_gradient(dw3, w3.shape(), op, "dw3");
    expect_optional_gradient(dw2, w2.shape(), op, "dw2");
    if (dlogits_extra.size() != 0) expect_shape(dlogits_extra, extents<2>{T, E}, o + ": dlogits_extra");
    TINYLLM_EXPECT(!overlaps(dx, dout), op, ": dx must not share memory with dout");
}

// The backward of moe_combine: dy_sorted[row_of(t, j)] = w(t, j) dout[t] and
// dweights(t, j) = <dout[t], y_sorted[row_of(t, j)]> (a double sum); rows no slot
// uses are left as they are, a dropped slot's dweight is 0. dout (T, D), y_sorted
// and dy_sorted (R, D), weights and dweights (T, k).
inline void moe_combine_backward(tensor_view<float, 2> dy_sorted, tensor_view<float, 2> dweights,
                                 tensor_view<const float, 2> dout, tensor_view<const float, 2> y_sorted,
                                 tensor_view<const float, 2> weights, const moe_plan_view& plan) {
    const index_t T = dout.extent(0), D = dout.extent(1), k = weights.extent(1);
    for (index_t t = 0; t < T; ++t)
        for (index_t j = 0; j < k; ++j) {
            const std::int32_t row = plan.row_of(t, j);
            double dot = 0;
            if (row >= 0)
                for (index_t d = 0; d < D; ++d) {
                    dot += static_cast<double>(dout(t, d)) * y_sorted(row, d);
                    dy_sorted(row, d) = static_cast<float>(static_cast<double>(weights(t, j)) * dout(t, d));
                }
            dweights(t, j) = static_cast<float>(dot);
        }
}

// Expert e's (F, D) or (D, F) matrix of an (E, ., .) gradient, or empty when the gradient is not wanted.
inline tensor_view<float, 2> expert_gradient(tensor_view<float, 3> g, index_t e) {
    return g.size() ? g.slice(0, e) : tensor_view<float, 2>{};
}

}  // namespace tinyllm::detail

namespace tinyllm::cpu {

// The backward of moe_forward(out, x, router, w1, w3, w2, k, options), the
// Mixtral block (softmax -> top-k -> renormalize; SwiGLU experts):
//   dx      (T, D)     overwritten; empty: not computed
//   drouter (E, D)     the router's gradient; empty: not computed
//   dw1     (E, F, D)  gate projections; dw3 (E, F, D) up; dw2 (E, D, F) down;
//                      each empty: not computed
//   dout    (T, D)     dL/dout
//   dlogits_extra (T, E) or empty: a gradient arriving at the router logits
//                      from elsewhere — an auxiliary loss's
//                      (load_balancing_loss_backward, router_z_loss_backward),
//                      added to the gating's before the router's backward
//   x, router, w1, w3, w2, k, options: as given to the forward
// Parameter gradients are overwritten, or added to with `accumulate`; an
// expert no token reached gets zero (or keeps its gradient). The routing is
// recomputed (moe_router_logits, softmax_topk_gating, moe_plan), so the
// backward chooses exactly the experts, ties and dropped slots the forward
// chose. Sums over tokens are in double (linear_backward's); dx is the double
// sum of the router's and the k slots' contributions, rounded once.
inline void moe_backward(tensor_view<float, 2> dx /*(T, D) or empty*/, tensor_view<float, 2> drouter /*(E, D) or empty*/,
                         tensor_view<float, 3> dw1 /*(E, F, D) or empty*/, tensor_view<float, 3> dw3 /*(E, F, D) or empty*/,
                         tensor_view<float, 3> dw2 /*(E, D, F) or empty*/, tensor_view<const float, 2> dout /*(T, D)*/,
                         tensor_view<const float, 2> dlogits_extra /*(T, E) or empty*/,
                         tensor_view<const float, 2> x /*(T, D)*/, tensor_view<const float, 2> router /*(E, D)*/,
                         tensor_view<const float, 3> w1 /*(E, F, D)*/, tensor_view<const float, 3> w3 /*(E, F, D)*/,
                         tensor_view<const float, 3> w2 /*(E, D, F)*/, index_t k,
                         const moe_dispatch_options& options = {}, bool accumulate = false) {
    const index_t T = x.extent(0), D = x.extent(1), E = router.extent(0), F = w1.extent(1);
    tinyllm::detail::expect_moe_backward_args("moe_backward", dx, drouter, dw1, dw3, dw2, dout, dlogits_extra, x, router,
                                              w1, w3, w2);
    TINYLLM_EXPECT(k >= 1 && k <= E, "moe_backward: k = ", k, " must be in [1, E = ", E, "]");
    tinyllm::detail::expect_dispatch_options(options, "moe_backward");

    // The forward again, keeping what the backward needs.
    tensor<float, 2> logits(extents<2>{T, E});  // (T, E)
    moe_router_logits(logits.view(), x, router);
    tensor<std::int32_t, 2> ids(extents<2>{T, k});  // (T, k)
    tensor<float, 2> weights(extents<2>{T, k});     // (T, k)
    softmax_topk_gating(ids.view(), weights.view(), logits.view(), true);
    moe_plan_buffers plan(T, k, E, options.block);
    moe_plan(plan.view(), ids.view(), options);
    const index_t R = plan.rows();
    tensor<float, 2> x_sorted(extents<2>{R, D}), y_sorted(extents<2>{R, D});  // (R, D)
    tensor<float, 2> gate(extents<2>{R, F}), up(extents<2>{R, F}), h(extents<2>{R, F});  // (R, F)
    moe_gather(x_sorted.view(), x, plan.view());
    // Expert e's rows of an (R, .) buffer.
    const auto rows_of = [&](auto& buffer, index_t e) {
        return buffer.view().narrow(0, plan.expert_offsets(e), plan.expert_counts(e));
    };
    for (index_t e = 0; e < E; ++e) {
        linear(rows_of(gate, e), tensor_view<const float, 2>(rows_of(x_sorted, e)), w1.slice(0, e), {});
        linear(rows_of(up, e), tensor_view<const float, 2>(rows_of(x_sorted, e)), w3.slice(0, e), {});
        swiglu(rows_of(h, e), rows_of(gate, e), rows_of(up, e));
        linear(rows_of(y_sorted, e), tensor_view<const float, 2>(rows_of(h, e)), w2.slice(0, e), {});
    }

    // Combine: dy_sorted[row_of(t, j)] = w(t, j) dout[t]; dweights(t, j) = <dout[t], y_sorted[row_of(t, j)]>.
    tensor<float, 2> dy_sorted(extents<2>{R, D});  // (R, D), zero on padding rows
    tensor<float, 2> dweights(extents<2>{T, k});   // (T, k)
    tinyllm::detail::moe_combine_backward(dy_sorted.view(), dweights.view(), dout, y_sorted.view(), weights.view(),
                                          plan.view());

    // Experts: y = W2 h, h = silu(gate) up, gate = W1 x, up = W3 x, per expert's rows.
    const bool want_dx = dx.size() != 0;
    tensor<float, 2> dh(extents<2>{R, F}), dgate(extents<2>{R, F}), dup(extents<2>{R, F});  // (R, F)
    tensor<float, 2> dx_gate(extents<2>{want_dx ? R : 0, D}), dx_up(extents<2>{want_dx ? R : 0, D});  // (R, D)
    for (index_t e = 0; e < E; ++e) {
        linear_backward(rows_of(dh, e), tinyllm::detail::expert_gradient(dw2, e), {},
                        tensor_view<const float, 2>(rows_of(dy_sorted, e)), tensor_view<const float, 2>(rows_of(h, e)),
                        w2.slice(0, e), accumulate);
        swiglu_backward(rows_of(dgate, e), rows_of(dup, e), rows_of(dh, e), rows_of(gate, e), rows_of(up, e));
        const tensor_view<const float, 2> xs = rows_of(x_sorted, e);
        linear_backward(want_dx ? rows_of(dx_gate, e) : tensor_view<float, 2>{}, tinyllm::detail::expert_gradient(dw1, e),
                        {}, tensor_view<const float, 2>(rows_of(dgate, e)), xs, w1.slice(0, e), accumulate);
        linear_backward(want_dx ? rows_of(dx_up, e) : tensor_view<float, 2>{}, tinyllm::detail::expert_gradient(dw3, e),
                        {}, tensor_view<const float, 2>(rows_of(dup, e)), xs, w3.slice(0, e), accumulate);
    }

    // Gating: only the chosen experts' logits get gradient; plus the extra one (an auxiliary loss's).
    tensor<float, 2> dlogits(extents<2>{T, E});  // (T, E)
    if (dlogits_extra.size() != 0)
        for (index_t t = 0; t < T; ++t)
            for (index_t e = 0; e < E; ++e) dlogits(t, e) = dlogits_extra(t, e);
    softmax_topk_gating_backward(dlogits.view(), dweights.view(), logits.view(), /*renormalize=*/true,
                                 /*accumulate=*/dlogits_extra.size() != 0);

    // Router: logits = x router^T.
    if (drouter.size() != 0) linear_backward({}, drouter, {}, dlogits.view(), x, router, accumulate);
    if (want_dx) {
        // dx[t] = dlogits[t] · router + sum_j (dx_gate + dx_up)[row_of(t, j)], slots in order.
        for (index_t t = 0; t < T; ++t)
            for (index_t d = 0; d < D; ++d) {
                double sum = 0;
                for (index_t e = 0; e < E; ++e) sum += static_cast<double>(dlogits(t, e)) * router(e, d);
                for (index_t j = 0; j < k; ++j) {
                    const std::int32_t row = plan.row_of(t, j);
                    if (row >= 0) sum += static_cast<double>(dx_gate(row, d)) + dx_up(row, d);
                }
                dx(t, d) = static_cast<float>(sum);
            }
    }
}

}  // namespace tinyllm::cpu
