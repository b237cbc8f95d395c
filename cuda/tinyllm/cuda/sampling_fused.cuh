// tinyllm/cuda/sampling_fused.cuh — v2 of the CUDA sampling ladder: the whole
// chain in one kernel, one thread block per row.
//
// v2 fused — sample_fused(out, logits, params, ...): the chain temperature ->
// top-k -> top-p -> min-p -> draw in ONE kernel that never writes the logits:
// the temperature is folded into every read (z / T), the thresholds live in
// registers, min-p is one test against the row maximum, and the draw sums only
// what is kept. Fewer launches and no writes of (B, V).
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_unfused.cuh>

namespace tinyllm::cuda {

namespace detail {

struct fused_params {
    float temperature;  // > 0 (0 goes to the greedy kernel)
    index_t top_k;      // 0: off
    float top_p;        // 1: off
    float min_p;        // 0: off
};

// v2: the whole chain for one row per block; the logits are only read.
template <int Threads, class T>
__global__ void sample_fused_kernel(token_id* out, int* status, const T* logits, index_t V, index_t row_stride,
                                    fused_params p, std::uint64_t seed, std::uint64_t step,
                                    std::uint64_t stream_offset) {
    const index_t b = blockIdx.x;
    const T* row = logits + b * row_stride;
    bool bad = false;
    const float m = row_max_checked<Threads>(row, V, p.temperature, bad);
    if (bad || m == -INFINITY) {
        if (threadIdx.x == 0) {
            status[b] = bad ? row_bad_logit : row_all_masked;
            out[b] = -1;
        }
        return;
    }
    auto key_of = [&](index_t i) { return order_key(scaled(row, i, p.temperature)); };
    auto q_of = [&](index_t i) { return sampling_weight(::tinyllm::detail::sub_rn(scaled(row, i, p.temperature), m)); };

    std::uint32_t threshold = 0;  // keep key >= threshold
    if (p.top_k > 0 && p.top_k < V)
        threshold = radix_select<Threads>(V, static_cast<std::uint64_t>(p.top_k), 0u, key_of,
                                          [](index_t) { return std::uint64_t{1}; });
    if (p.top_p < 1.0f) {
        std::uint64_t local = 0;
        for (index_t i = threadIdx.x; i < V; i += Threads)
            if (key_of(i) >= threshold) local += q_of(i);
        const std::uint64_t total = block_sum<Threads>(local);
        threshold = radix_select<Threads>(V, top_p_target(total, p.top_p), threshold, key_of, q_of);
    }
    auto kept_q = [&](index_t i) -> std::uint64_t {
        const float z = scaled(row, i, p.temperature);
        if (order_key(z) < threshold) return 0;
        const float x = ::tinyllm::detail::sub_rn(z, m);
        if (p.min_p > 0.0f && sampling_exp(x) < p.min_p) return 0;
        return sampling_weight(x);
    };
    std::uint64_t local = 0;
    for (index_t i = threadIdx.x; i < V; i += Threads) local += kept_q(i);
    const std::uint64_t total = block_sum<Threads>(local);
    const std::uint64_t t =
        sampling_threshold(total, sampling_bits(seed, static_cast<std::uint64_t>(b) + stream_offset, step));
    const int token = first_crossing<Threads, sampling_items>(V, t, kept_q);
    if (threadIdx.x == 0) {
        out[b] = token;
        status[b] = row_ok;
    }
}

}  // namespace detail

// v2 fused, one block per row: temperature -> top-k -> top-p -> min-p -> draw
// in one kernel (the logits are not modified); temperature 0 is greedy. The
// same token as tinyllm::cpu::sample(out, logits, params, seed, step,
// stream_offset): row b draws from Philox stream b + stream_offset.
template <class = void>  // compiled only where called (launch.cuh)
inline void sample_fused(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const sampling::params& p,
                   std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset = 0,
                   sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    ::tinyllm::detail::check_params(p);
    if (p.temperature == 0.0f) return greedy_reduction(out, logits, check, stream);
    detail::check_logits(logits, "sample");
    detail::check_out(out, logits, "sample");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    const detail::fused_params fp{p.temperature, p.top_k ? *p.top_k : 0, p.top_p ? *p.top_p : 1.0f,
                                  p.min_p ? *p.min_p : 0.0f};
    int* status = detail::status_buffer(B, stream);
    launch(detail::sample_fused_kernel<detail::sampling_threads, float>, static_cast<unsigned>(B),
           detail::sampling_threads, 0, stream, out.data(), status, logits.data(), logits.extent(1), logits.stride(0),
           fp, seed, step, stream_offset);
    detail::check_status(status, B, "sample", check, stream);
}

}  // namespace tinyllm::cuda
