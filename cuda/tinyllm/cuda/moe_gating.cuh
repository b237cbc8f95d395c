// tinyllm/cuda/moe_gating.cuh — MoE gating on the GPU: router logits (T, E)
// -> expert ids (T, k) and weights (T, k), the same functions as
// tinyllm::cpu::{softmax_topk,noisy_topk,grouped_topk}_gating (see
// <tinyllm/moe_gating.hpp> for the formulas and where they come from).
//
// Gating is memory-bound: it reads T·E logits once and writes 2·T·k numbers.
// At T = 16384, E = 256 that is 16 MB, about 6 µs at H100 bandwidth; the
// arithmetic (an exp per logit and k rounds of argmax) is tiny. The ladder:
//
//   v1 naive   one thread per token, a port of the CPU loops: k rounds, each
//              scanning all E scores for the best one ranking after the last
//              pick. Neighbouring threads read logits E floats apart, so every
//              load touches a different 32-byte sector (no coalescing), and a
//              thread does O(k·E) serial work — at E = 256, k = 8 that is 2048
//              steps per thread, with only T threads in flight.
//   v2 fused   one warp per token. Lane l holds experts l, l+32, l+64, ... in
//              registers (E/32 values, loaded with neighbouring lanes reading
//              neighbouring logits: fully coalesced). Softmax max and sum are
//              warp-shuffle reductions; each of the k picks is a warp argmax
//              (each lane's local best, then 5 butterfly shuffle steps comparing
//              (score, index) with the lower index winning ties); lane j keeps
//              pick j and writes it, so the k ids and weights of a token go out
//              as one coalesced store. Softmax (or sigmoid), top-k and
//              renormalization happen in this single pass over the logits.
//              Handles any E <= 1024 (E/32 rounded up to a power of two values
//              per lane, absent experts masked) and k <= 32; larger shapes fall
//              back to v1 in the dispatching functions (no suffix).
//
// Choices are identical to the CPU's: softmax gating compares the raw logits;
// the noisy and sigmoid variants compare double-precision scores computed by
// the same host/device functions as the CPU (moe_noisy_score, moe_sigmoid).
// Weights are computed in double (v1) or float (v2): within ~1e-6 relative of
// the CPU. NaN logits rank last (never chosen before a finite logit) and give
// NaN weights; the CPU reference rejects them instead (checking on the GPU
// would cost a synchronisation).
//
// Backward: softmax_topk_gating_backward (the math in <tinyllm/moe_gating.hpp>)
// is v1-shaped: one thread per token chooses the k experts again exactly as the
// forward does (raw logits, the lower index first among equals), recomputes the
// softmax in double and writes the token's row of dlogits — a fixed sequence of
// operations per token, so the result is the same on every run.
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/moe_gating.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

enum class gate_kind { softmax, noisy, grouped };

// Everything a gating kernel needs; all tensors contiguous.
template <class T>
struct gating_args {
    const T* logits = nullptr;        // (T, E)
    const T* noise_logits = nullptr;  // (T, E), noisy gating only
    const float* bias = nullptr;      // (E), grouped gating only
    std::int32_t* ids = nullptr;      // (T, k)
    float* weights = nullptr;         // (T, k)
    index_t tokens = 0;
    int experts = 0, k = 0;
    bool renormalize = true;
    std::uint64_t seed = 0;
    index_t token_offset = 0;
    int n_group = 1, topk_group = 1;
    float scale = 1.0f;
};

// NaN ranks last: it becomes -inf, so the top-k order stays a total order.
TINYLLM_HOST_DEVICE double moe_key_double(double x) { return x != x ? -INFINITY : x; }

// The selection score of expert e for token t (double for every variant; a
// float logit converts to double exactly, so the order is the logits' order).
template <gate_kind Kind, class T>
__device__ double gate_score(const gating_args<T>& a, index_t t, int e) {
    const index_t at = t * a.experts + e;
    const float x = to_float(a.logits[at]);
    if constexpr (Kind == gate_kind::softmax) {
        return moe_key(x);
    } else if constexpr (Kind == gate_kind::noisy) {
        return moe_key_double(moe_noisy_score(x, to_float(a.noise_logits[at]), a.seed, t + a.token_offset, e));
    } else {
        return moe_key_double(moe_sigmoid(x) + static_cast<double>(a.bias[e]));
    }
}

// ---- v1 naive: one thread per token -----------------------------------------------

// The best expert (in [first, first + count), eligible per `group_mask`) that
// ranks after (after_score, after_index); after_index < 0 means "no previous pick".
template <gate_kind Kind, class T>
__device__ int naive_next(const gating_args<T>& a, index_t t, int first, int count, double after_score,
                          int after_index, unsigned long long group_mask, int group_size, double& best_score) {
    int best = -1;
    for (int e = first; e < first + count; ++e) {
        if (Kind == gate_kind::grouped && !((group_mask >> (e / group_size)) & 1ull)) continue;
        const double s = gate_score<Kind>(a, t, e);
        if (after_index >= 0 && !moe_ranks_before(after_score, after_index, s, e)) continue;
        if (best < 0 || moe_ranks_before(s, e, best_score, best)) {
            best = e;
            best_score = s;
        }
    }
    return best;
}

// A group's score: the sum of its two best biased scores (one when it has one expert).
template <class T>
__device__ double naive_group_score(const gating_args<T>& a, index_t t, int g, int group_size) {
    double first_score = 0, second_score = 0;
    const int first = naive_next<gate_kind::grouped>(a, t, g * group_size, group_size, 0.0, -1, ~0ull, group_size,
                                                     first_score);
    if (group_size < 2) return first_score;
    naive_next<gate_kind::grouped>(a, t, g * group_size, group_size, first_score, first, ~0ull, group_size,
                                   second_score);
    return first_score + second_score;
}

template <gate_kind Kind, class T>
__global__ void gating_naive_kernel(gating_args<T> a) {
    const index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
    if (t >= a.tokens) return;
    const int E = a.experts, k = a.k;
    std::int32_t* ids = a.ids + t * k;
    float* weights = a.weights + t * k;
    const T* row = a.logits + t * E;

    // Group-limited routing: choose topk_group groups by their top-2 sums.
    unsigned long long group_mask = ~0ull;
    const int group_size = Kind == gate_kind::grouped ? E / a.n_group : E;
    if constexpr (Kind == gate_kind::grouped) {
        group_mask = 0;
        double previous = 0;
        int previous_group = -1;
        for (int r = 0; r < a.topk_group; ++r) {
            int best = -1;
            double best_score = 0;
            for (int g = 0; g < a.n_group; ++g) {
                const double s = naive_group_score(a, t, g, group_size);
                if (previous_group >= 0 && !moe_ranks_before(previous, previous_group, s, g)) continue;
                if (best < 0 || moe_ranks_before(s, g, best_score, best)) {
                    best = g;
                    best_score = s;
                }
            }
            group_mask |= 1ull << best;
            previous = best_score;
            previous_group = best;
        }
    }

    // k rounds: each pick is the best expert ranking after the previous pick.
    double previous = 0;
    int previous_id = -1;
    for (int j = 0; j < k; ++j) {
        double score = 0;
        const int id = naive_next<Kind>(a, t, 0, E, previous, previous_id, group_mask, group_size, score);
        ids[j] = id;
        previous = score;
        previous_id = id;
    }

    // Weights, in double, exactly as the CPU reference computes them.
    if constexpr (Kind == gate_kind::softmax) {
        double max = to_float(row[0]), sum = 0, chosen = 0;
        for (int e = 1; e < E; ++e) max = fmax(max, static_cast<double>(to_float(row[e])));
        for (int e = 0; e < E; ++e) sum += ::exp(static_cast<double>(to_float(row[e])) - max);
        for (int j = 0; j < k; ++j) chosen += ::exp(static_cast<double>(to_float(row[ids[j]])) - max) / sum;
        for (int j = 0; j < k; ++j) {
            const double p = ::exp(static_cast<double>(to_float(row[ids[j]])) - max) / sum;
            weights[j] = static_cast<float>(a.renormalize ? p / chosen : p);
        }
    } else if constexpr (Kind == gate_kind::noisy) {
        const double top = gate_score<Kind>(a, t, ids[0]);
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += ::exp(gate_score<Kind>(a, t, ids[j]) - top);
        for (int j = 0; j < k; ++j) weights[j] = static_cast<float>(::exp(gate_score<Kind>(a, t, ids[j]) - top) / sum);
    } else {
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += moe_sigmoid(to_float(row[ids[j]]));
        for (int j = 0; j < k; ++j) {
            const double s = moe_sigmoid(to_float(row[ids[j]]));
            weights[j] = static_cast<float>((a.renormalize ? (sum > 0 ? s / sum : 0.0) : s) * a.scale);
        }
    }
}

// ---- v2 fused: one warp per token -----------------------------------------------------

constexpr unsigned full_warp = 0xffffffffu;

// Warp argmax over (score, index): afterwards every lane holds the winner.
template <class S>
__device__ void warp_argmax(S& score, int& index) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const S other = __shfl_xor_sync(full_warp, score, offset);
        const int other_index = __shfl_xor_sync(full_warp, index, offset);
        if (moe_ranks_before(other, other_index, score, index)) {
            score = other;
            index = other_index;
        }
    }
}

template <class S>
__device__ S warp_sum(S x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(full_warp, x, offset);
    return x;
}

// VPT values per lane: lane l holds experts l + 32·j for j < VPT.
template <gate_kind Kind, class T, int VPT>
__global__ void gating_fused_kernel(gating_args<T> a) {
    using score_t = std::conditional_t<Kind == gate_kind::softmax, float, double>;
    double* staged_scores = dynamic_shared<double>();  // (warps per block, E), grouped gating only
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int E = a.experts, k = a.k;
    for (index_t t = blockIdx.x * static_cast<index_t>(warps) + warp; t < a.tokens;
         t += static_cast<index_t>(gridDim.x) * warps) {  // uniform per warp: all lanes stay together
        const T* row = a.logits + t * E;
        score_t score[VPT];
        unsigned taken = 0;  // bit j: value j is absent, already picked, or in a dropped group
#pragma unroll
        for (int j = 0; j < VPT; ++j) {
            const int e = lane + 32 * j;
            if (e < E) {
                const float x = to_float(row[e]);  // coalesced: lanes read neighbouring logits
                if constexpr (Kind == gate_kind::softmax) {
                    score[j] = moe_key(x);
                } else if constexpr (Kind == gate_kind::noisy) {
                    score[j] = moe_key_double(
                        moe_noisy_score(x, to_float(a.noise_logits[t * E + e]), a.seed, t + a.token_offset, e));
                } else {
                    score[j] = moe_key_double(moe_sigmoid(x) + static_cast<double>(a.bias[e]));
                }
            } else {
                score[j] = -INFINITY;
                taken |= 1u << j;
            }
        }

        if constexpr (Kind == gate_kind::grouped) {
            // Groups are contiguous ranges of experts, spread over all lanes:
            // stage the scores in shared memory, lane g scores group g.
            double* staged = staged_scores + static_cast<index_t>(warp) * E;
#pragma unroll
            for (int j = 0; j < VPT; ++j)
                if (lane + 32 * j < E) staged[lane + 32 * j] = score[j];
            __syncwarp();
            const int group_size = E / a.n_group;
            double group_score = -INFINITY;
            if (lane < a.n_group) {
                int first = -1, second = -1;
                for (int i = lane * group_size; i < (lane + 1) * group_size; ++i) {
                    if (first < 0 || moe_ranks_before(staged[i], i, staged[first], first)) {
                        second = first;
                        first = i;
                    } else if (second < 0 || moe_ranks_before(staged[i], i, staged[second], second)) {
                        second = i;
                    }
                }
                group_score = group_size >= 2 ? staged[first] + staged[second] : staged[first];
            }
            unsigned kept_groups = 0;
            for (int r = 0; r < a.topk_group; ++r) {
                const bool candidate = lane < a.n_group && !((kept_groups >> lane) & 1u);
                double best = candidate ? group_score : -INFINITY;
                int best_group = candidate ? lane : INT_MAX;
                warp_argmax(best, best_group);
                kept_groups |= 1u << best_group;
            }
#pragma unroll
            for (int j = 0; j < VPT; ++j) {
                const int e = lane + 32 * j;
                if (e < E && !((kept_groups >> (e / group_size)) & 1u)) taken |= 1u << j;
            }
            __syncwarp();  // the next token may overwrite `staged`
        }

        // k rounds of warp argmax; lane j keeps pick j.
        int my_id = -1;
        score_t my_score = -INFINITY, top_score = -INFINITY;
        for (int r = 0; r < k; ++r) {
            score_t best = -INFINITY;
            int best_id = INT_MAX;  // ranks after every real expert
#pragma unroll
            for (int j = 0; j < VPT; ++j)
                if (!((taken >> j) & 1u) && moe_ranks_before(score[j], lane + 32 * j, best, best_id)) {
                    best = score[j];
                    best_id = lane + 32 * j;
                }
            warp_argmax(best, best_id);
            if ((best_id & 31) == lane) taken |= 1u << (best_id >> 5);
            if (lane == r) {
                my_id = best_id;
                my_score = best;
            }
            if (r == 0) top_score = best;
        }

        // Weights: lanes 0..k-1 hold one pick each.
        float w = 0.0f;
        if constexpr (Kind == gate_kind::softmax) {
            // softmax(x)_id = exp(x_id - max) / sum_e exp(x_e - max); the max is the first pick.
            const float e_mine = lane < k ? expf(my_score - top_score) : 0.0f;
            float denominator;
            if (a.renormalize) {
                denominator = warp_sum(e_mine);
            } else {
                float partial = 0.0f;
#pragma unroll
                for (int j = 0; j < VPT; ++j)
                    if (lane + 32 * j < E) partial += expf(score[j] - top_score);
                denominator = warp_sum(partial);
            }
            w = e_mine / denominator;
        } else if constexpr (Kind == gate_kind::noisy) {
            const float e_mine = lane < k ? expf(static_cast<float>(my_score - top_score)) : 0.0f;
            w = e_mine / warp_sum(e_mine);
        } else {
            const float s = lane < k ? static_cast<float>(moe_sigmoid(to_float(row[my_id]))) : 0.0f;
            const float sum = warp_sum(s);
            w = (a.renormalize ? (sum > 0.0f ? s / sum : 0.0f) : s) * a.scale;  // every pick 0: weights 0
        }
        if (lane < k) {
            a.ids[t * k + lane] = my_id;
            a.weights[t * k + lane] = w;
        }
    }
}

// ---- host side -------------------------------------------------------------------------

template <class T>
void expect_gating_views(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                         tensor_view<const T, 2> logits, const char* op) {
    TINYLLM_EXPECT(logits.is_contiguous(), op, ": logits must be contiguous; strides ", to_string(logits.strides()));
    TINYLLM_EXPECT(ids.is_contiguous() && weights.is_contiguous(), op, ": ids and weights must be contiguous");
    tinyllm::detail::expect_gating_shapes(ids, weights, logits.extent(0), logits.extent(1), op);
    tinyllm::detail::expect_gating_outputs(ids, weights, logits, op);
}

template <class T>
gating_args<T> make_gating_args(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                                tensor_view<const T, 2> logits) {
    gating_args<T> a;
    a.logits = logits.data();
    a.ids = ids.data();
    a.weights = weights.data();
    a.tokens = logits.extent(0);
    a.experts = static_cast<int>(logits.extent(1));
    a.k = static_cast<int>(ids.extent(1));
    return a;
}

template <gate_kind Kind, class T>
void launch_gating_naive(const gating_args<T>& a, cudaStream_t stream) {
    if (a.tokens == 0) return;
    const int threads = 128;
    launch(gating_naive_kernel<Kind, T>, static_cast<unsigned>(ceil_div<index_t>(a.tokens, threads)), threads, 0,
           stream, a);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// Whether v2 handles this shape: E <= 1024 (32 values per lane), k <= 32, n_group <= 32.
inline bool gating_fused_supports(index_t experts, index_t k, int n_group = 1) {
    return experts <= 1024 && k <= 32 && n_group <= 32;
}

template <gate_kind Kind, class T, int VPT>
void launch_gating_fused_vpt(const gating_args<T>& a, cudaStream_t stream) {
    const int warps = 4;
    const index_t blocks = ceil_div<index_t>(a.tokens, warps);
    const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);  // grid-stride covers the rest
    const std::size_t shared = Kind == gate_kind::grouped ? warps * static_cast<std::size_t>(a.experts) * sizeof(double) : 0;
    launch(gating_fused_kernel<Kind, T, VPT>, grid, warps * 32, shared, stream, a);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

template <gate_kind Kind, class T>
void launch_gating_fused(const gating_args<T>& a, cudaStream_t stream, const char* op) {
    TINYLLM_EXPECT(gating_fused_supports(a.experts, a.k, a.n_group), op, ": the fused kernel handles E <= 1024, k <= 32",
                   " and n_group <= 32; got E = ", a.experts, ", k = ", a.k, ", n_group = ", a.n_group,
                   " (use the version without a suffix, which falls back to the naive kernel)");
    if (a.tokens == 0) return;
    const int per_lane = ceil_div(a.experts, 32);
    if (per_lane <= 1) launch_gating_fused_vpt<Kind, T, 1>(a, stream);
    else if (per_lane <= 2) launch_gating_fused_vpt<Kind, T, 2>(a, stream);
    else if (per_lane <= 4) launch_gating_fused_vpt<Kind, T, 4>(a, stream);
    else if (per_lane <= 8) launch_gating_fused_vpt<Kind, T, 8>(a, stream);
    else if (per_lane <= 16) launch_gating_fused_vpt<Kind, T, 16>(a, stream);
    else launch_gating_fused_vpt<Kind, T, 32>(a, stream);
}

enum class gating_version { naive, fused, best };

template <gate_kind Kind, class T>
void run_gating(const gating_args<T>& a, gating_version version, cudaStream_t stream, const char* op) {
    if (version == gating_version::naive ||
        (version == gating_version::best && !gating_fused_supports(a.experts, a.k, a.n_group))) {
        launch_gating_naive<Kind, T>(a, stream);
    } else {
        launch_gating_fused<Kind, T>(a, stream, op);
    }
}

template <class L>
void softmax_topk(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights, tensor_view<L, 2> logits,
                  bool renormalize, gating_version version, cudaStream_t stream, const char* op) {
    using T = std::remove_const_t<L>;
    const tensor_view<const T, 2> in = logits;
    expect_gating_views(ids, weights, in, op);
    auto a = make_gating_args(ids, weights, in);
    a.renormalize = renormalize;
    run_gating<gate_kind::softmax>(a, version, stream, op);
}

template <class L>
void noisy_topk(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights, tensor_view<L, 2> logits,
                tensor_view<L, 2> noise_logits, std::uint64_t seed, index_t token_offset, gating_version version,
                cudaStream_t stream, const char* op) {
    using T = std::remove_const_t<L>;
    const tensor_view<const T, 2> in = logits, noise = noise_logits;
    expect_gating_views(ids, weights, in, op);
    expect_shape(noise, in.shape(), std::string(op) + ": noise_logits");
    TINYLLM_EXPECT(noise.is_contiguous(), op, ": noise_logits must be contiguous");
    tinyllm::detail::expect_gating_input_apart(ids, weights, "noise_logits", noise, op);
    auto a = make_gating_args(ids, weights, in);
    a.noise_logits = noise.data();
    a.seed = seed;
    a.token_offset = token_offset;
    run_gating<gate_kind::noisy>(a, version, stream, op);
}

template <class L, class B>
void grouped_topk(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights, tensor_view<L, 2> logits,
                  tensor_view<B, 1> bias, const grouped_topk_options& options, gating_version version,
                  cudaStream_t stream, const char* op) {
    using T = std::remove_const_t<L>;
    static_assert(std::is_same_v<std::remove_const_t<B>, float>, "grouped_topk_gating: the bias is float");
    const tensor_view<const T, 2> in = logits;
    expect_gating_views(ids, weights, in, op);
    expect_shape(bias, extents<1>{in.extent(1)}, std::string(op) + ": bias");
    TINYLLM_EXPECT(bias.is_contiguous(), op, ": bias must be contiguous");
    tinyllm::detail::expect_gating_input_apart(ids, weights, "bias", bias, op);
    tinyllm::detail::expect_grouped_options(options, in.extent(1), ids.extent(1), op);
    TINYLLM_EXPECT(options.n_group <= 64, op, ": the CUDA kernels handle n_group <= 64; got ", options.n_group);
    auto a = make_gating_args(ids, weights, in);
    a.bias = bias.data();
    a.n_group = options.n_group;
    a.topk_group = options.topk_group;
    a.renormalize = options.renormalize;
    a.scale = options.routed_scaling_factor;
    run_gating<gate_kind::grouped>(a, version, stream, op);
}

}  // namespace detail

// ---- softmax -> top-k -> renormalize (Switch, GShard, Mixtral) -------------------------
//   ids (T, k) int32, weights (T, k) float, logits (T, E) float / bfloat16 / float16

// v1: one thread per token.
template <class L>
void softmax_topk_gating_naive(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                               tensor_view<L, 2> logits, bool renormalize, cudaStream_t stream = nullptr) {
    detail::softmax_topk(ids, weights, logits, renormalize, detail::gating_version::naive, stream,
                         "softmax_topk_gating_naive");
}
// v2: one warp per token, everything in one pass (E <= 1024, k <= 32).
template <class L>
void softmax_topk_gating_fused(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                               tensor_view<L, 2> logits, bool renormalize, cudaStream_t stream = nullptr) {
    detail::softmax_topk(ids, weights, logits, renormalize, detail::gating_version::fused, stream,
                         "softmax_topk_gating_fused");
}
// The fused kernel where it applies, else the naive one.
template <class L>
void softmax_topk_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights, tensor_view<L, 2> logits,
                         bool renormalize, cudaStream_t stream = nullptr) {
    detail::softmax_topk(ids, weights, logits, renormalize, detail::gating_version::best, stream,
                         "softmax_topk_gating");
}

// ---- noisy top-k (Shazeer et al. 2017) --------------------------------------------------
//   noise_logits (T, E) like logits; the same noise as the CPU for the same seed.
template <class L>
void noisy_topk_gating_naive(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                             tensor_view<L, 2> logits, tensor_view<L, 2> noise_logits, std::uint64_t seed,
                             index_t token_offset = 0, cudaStream_t stream = nullptr) {
    detail::noisy_topk(ids, weights, logits, noise_logits, seed, token_offset, detail::gating_version::naive, stream,
                       "noisy_topk_gating_naive");
}
template <class L>
void noisy_topk_gating_fused(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                             tensor_view<L, 2> logits, tensor_view<L, 2> noise_logits, std::uint64_t seed,
                             index_t token_offset = 0, cudaStream_t stream = nullptr) {
    detail::noisy_topk(ids, weights, logits, noise_logits, seed, token_offset, detail::gating_version::fused, stream,
                       "noisy_topk_gating_fused");
}
template <class L>
void noisy_topk_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights, tensor_view<L, 2> logits,
                       tensor_view<L, 2> noise_logits, std::uint64_t seed, index_t token_offset = 0,
                       cudaStream_t stream = nullptr) {
    detail::noisy_topk(ids, weights, logits, noise_logits, seed, token_offset, detail::gating_version::best, stream,
                       "noisy_topk_gating");
}

// ---- sigmoid + bias + group-limited (DeepSeek-V3) ---------------------------------------
//   bias (E) float. The CUDA kernels handle n_group <= 64 (v2: <= 32).
template <class L, class B>
void grouped_topk_gating_naive(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                               tensor_view<L, 2> logits, tensor_view<B, 1> bias,
                               const grouped_topk_options& options, cudaStream_t stream = nullptr) {
    detail::grouped_topk(ids, weights, logits, bias, options, detail::gating_version::naive, stream,
                         "grouped_topk_gating_naive");
}
template <class L, class B>
void grouped_topk_gating_fused(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights,
                               tensor_view<L, 2> logits, tensor_view<B, 1> bias,
                               const grouped_topk_options& options, cudaStream_t stream = nullptr) {
    detail::grouped_topk(ids, weights, logits, bias, options, detail::gating_version::fused, stream,
                         "grouped_topk_gating_fused");
}
template <class L, class B>
void grouped_topk_gating(tensor_view<std::int32_t, 2> ids, tensor_view<float, 2> weights, tensor_view<L, 2> logits,
                         tensor_view<B, 1> bias, const grouped_topk_options& options, cudaStream_t stream = nullptr) {
    detail::grouped_topk(ids, weights, logits, bias, options, detail::gating_version::best, stream,
                         "grouped_topk_gating");
}

// ---- backward -------------------------------------------------------------------------

namespace detail {

// Pick j of the top-k order of a row of float logits: the best expert ranking
// after pick j - 1 (prev; -1 for the first) in the (key desc, index asc) order.
TINYLLM_DEVICE int next_pick(const float* x, int experts, int prev) {
    int best = -1;
    for (int e = 0; e < experts; ++e) {
        if (prev >= 0 && !moe_ranks_before(moe_key(x[prev]), prev, moe_key(x[e]), e)) continue;
        if (best < 0 || moe_ranks_before(moe_key(x[e]), e, moe_key(x[best]), best)) best = e;
    }
    return best;
}

constexpr int gating_backward_max_k = 64;

// One thread per token: dlogits (T, E) (+)= the gradient of sum_j dweights(t, j)
// w(t, j) for the softmax -> top-k (-> renormalize) weights (moe_gating.hpp),
// the k picks (k <= gating_backward_max_k) found again as the forward finds them.
template <class F>
__global__ void softmax_topk_gating_backward_kernel(F* dlogits, const F* dweights, const F* logits,
                                                    index_t tokens, int experts, int k, bool renormalize,
                                                    bool accumulate) {
    for (index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; t < tokens;
         t += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const float* x = logits + t * experts;
        const float* g = dweights + t * k;
        float* d = dlogits + t * experts;
        double max = x[0], sum = 0.0;
        for (int e = 1; e < experts; ++e) max = x[e] > max ? x[e] : max;
        for (int e = 0; e < experts; ++e) sum += ::exp(static_cast<double>(x[e]) - max);
        // The picks; chosen = the sum of their p; s = sum_j w_j g_j.
        int picks[gating_backward_max_k];
        double chosen = 0.0, s = 0.0;
        for (int j = 0; j < k; ++j) {
            picks[j] = next_pick(x, experts, j > 0 ? picks[j - 1] : -1);
            const double p = ::exp(static_cast<double>(x[picks[j]]) - max) / sum;
            chosen += p;
            s += p * g[j];
        }
        if (renormalize) s /= chosen;
        for (int e = 0; e < experts; ++e) {
            int slot = -1;
            for (int j = 0; j < k; ++j) slot = picks[j] == e ? j : slot;
            const double p = ::exp(static_cast<double>(x[e]) - max) / sum;
            double value;
            if (renormalize) value = slot >= 0 ? p / chosen * (g[slot] - s) : 0.0;  // w_m (g_m - s)
            else value = (slot >= 0 ? p * g[slot] : 0.0) - p * s;                 // p_e (G_e - s)
            d[e] = static_cast<float>(value + (accumulate ? static_cast<double>(d[e]) : 0.0));
        }
    }
}

}  // namespace detail

// The backward of softmax_topk_gating(ids, weights, logits, renormalize): given
// dweights (T, k), dlogits (T, E) is overwritten with dL/dlogits or, with
// `accumulate`, added to (an auxiliary loss's gradient already there). float
// logits; every tensor contiguous, on the device. The formulas of
// cpu::softmax_topk_gating_backward, in double, rounded once. dlogits may be
// exactly logits (a thread reads its token's row before it writes it); it shares
// no memory with dweights.
template <class = void>  // compiled only where called (launch.cuh)
inline void softmax_topk_gating_backward(tensor_view<float, 2> dlogits, tensor_view<const float, 2> dweights,
                                         tensor_view<const float, 2> logits, bool renormalize, bool accumulate = false,
                                         cudaStream_t stream = nullptr) {
    constexpr const char* op = "cuda::softmax_topk_gating_backward";
    const index_t T = logits.extent(0), E = logits.extent(1), k = dweights.extent(1);
    expect_shape(dlogits, logits.shape(), std::string(op) + ": dlogits");
    TINYLLM_EXPECT(dweights.extent(0) == T, op, ": dweights has ", dweights.extent(0), " rows but logits has ", T,
                   " tokens");
    TINYLLM_EXPECT(k >= 1 && k <= E, op, ": k (the second extent of dweights) = ", k, " must be in [1, E = ", E, "]");
    TINYLLM_EXPECT(k <= detail::gating_backward_max_k, op, ": k = ", k, " exceeds the kernel's ",
                   detail::gating_backward_max_k);
    TINYLLM_EXPECT(E <= INT_MAX, op, ": E = ", E, " does not fit int");
    TINYLLM_EXPECT(dlogits.is_contiguous() && dweights.is_contiguous() && logits.is_contiguous(), op,
                   ": every tensor must be contiguous");
    tinyllm::detail::expect_gating_gradient(dlogits, "dlogits", dweights, logits, "logits", op);
    if (T == 0) return;
    const int threads = 128;
    const index_t blocks = ceil_div<index_t>(T, threads);
    launch(detail::softmax_topk_gating_backward_kernel<float>, static_cast<unsigned>(blocks < 65535 ? blocks : 65535),
           threads, 0, stream, dlogits.data(), dweights.data(), logits.data(), T, static_cast<int>(E), static_cast<int>(k),
           renormalize, accumulate);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda

