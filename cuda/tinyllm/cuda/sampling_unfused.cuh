// tinyllm/cuda/sampling_unfused.cuh — v1 of the CUDA sampling ladder: each
// processor of tinyllm/sampling.hpp (temperature, top-k, top-p, min-p, the
// penalties, logit bias, banned tokens) as its own kernel, in place on device
// logits (B, V), one thread block per row; and the v1 choosers, greedy
// (one argmax reduction per row) and a draw from softmax of the logits as they are.
//
// v1 unfused — one kernel per processor, as composable as the CPU chain:
// temperature(), top_k(), top_p(), min_p() each read the logits and write -inf
// over what they drop; sample() then draws. Each step re-reads (and rewrites)
// the whole (B, V) tensor.
//
// The ladder and what every rung shares: sampling.cuh.
#pragma once

#include <tinyllm/cuda/sampling_common.cuh>

namespace tinyllm::cuda {

namespace detail {

// A chooser's first step: the row maximum m. A row with NaN/+inf logits or with
// every logit -inf has no token: thread 0 records why (token -1) and false is returned.
template <int Threads, class T>
__device__ bool chooser_row_max(const T* row, index_t V, index_t b, token_id* out, int* status, float& m) {
    bool bad = false;
    m = row_max_checked<Threads>(row, V, 1.0f, bad);
    if (!bad && m != -INFINITY) return true;
    if (threadIdx.x == 0) {
        status[b] = bad ? row_bad_logit : row_all_masked;
        out[b] = -1;
    }
    return false;
}

// Greedy: one argmax reduction per row.
template <int Threads, class T>
__global__ void greedy_kernel(token_id* out, int* status, const T* logits, index_t V, index_t row_stride) {
    const index_t b = blockIdx.x;
    const T* row = logits + b * row_stride;
    float m;
    if (!chooser_row_max<Threads>(row, V, b, out, status, m)) return;
    const int token = row_argmax<Threads>(row, V);
    if (threadIdx.x == 0) {
        out[b] = token;
        status[b] = row_ok;
    }
}

// v1 processors, in place. which: 0 temperature, 1 top-k, 2 top-p, 3 min-p.
template <int Threads, class T>
__global__ void processor_kernel(T* logits, int* status, index_t V, index_t row_stride, int which, float value,
                                 index_t k) {
    const index_t b = blockIdx.x;
    T* row = logits + b * row_stride;
    bool bad = false;
    const float m = row_max_checked<Threads>(row, V, 1.0f, bad);
    if (threadIdx.x == 0) status[b] = bad ? row_bad_logit : row_ok;
    if (bad || m == -INFINITY) return;  // an all -inf row stays as it is; the chooser reports it
    const T minus_inf = from_float<T>(-INFINITY);
    if (which == 0) {
        if (value == 0.0f) {
            const int best = row_argmax<Threads>(row, V);
            for (index_t i = threadIdx.x; i < V; i += Threads)
                if (i != best) row[i] = minus_inf;
        } else {
            // Division by T > 0 keeps the order, so the row maximum says it all: m / T = +inf
            // overflows, m / T = -inf means every logit does (the CPU's two errors); the row
            // is left as it was.
            const float top = ::tinyllm::detail::div_rn(m, value);
            if (top == INFINITY || top == -INFINITY) {
                if (threadIdx.x == 0) status[b] = top == INFINITY ? row_overflow : row_underflow;
                return;
            }
            for (index_t i = threadIdx.x; i < V; i += Threads)
                row[i] = from_float<T>(::tinyllm::detail::div_rn(to_float(row[i]), value));
        }
        return;
    }
    auto key_of = [&](index_t i) { return order_key(to_float(row[i])); };
    auto q_of = [&](index_t i) { return sampling_weight(::tinyllm::detail::sub_rn(to_float(row[i]), m)); };
    if (which == 3) {
        for (index_t i = threadIdx.x; i < V; i += Threads)
            if (sampling_exp(::tinyllm::detail::sub_rn(to_float(row[i]), m)) < value) row[i] = minus_inf;
        return;
    }
    std::uint32_t threshold = 0;
    if (which == 1) {
        if (k >= V) return;
        threshold = radix_select<Threads>(V, static_cast<std::uint64_t>(k), 0u, key_of,
                                          [](index_t) { return std::uint64_t{1}; });
    } else {
        if (value == 1.0f) return;
        std::uint64_t local = 0;
        for (index_t i = threadIdx.x; i < V; i += Threads) local += q_of(i);
        const std::uint64_t total = block_sum<Threads>(local);
        threshold = radix_select<Threads>(V, top_p_target(total, value), 0u, key_of, q_of);
    }
    __syncthreads();  // every thread has its threshold before anyone writes
    for (index_t i = threadIdx.x; i < V; i += Threads)
        if (key_of(i) < threshold) row[i] = minus_inf;
}

// v1 chooser: a draw from softmax of the logits as they are.
template <int Threads, class T>
__global__ void sample_kernel(token_id* out, int* status, const T* logits, index_t V, index_t row_stride,
                              std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset) {
    const index_t b = blockIdx.x;
    const T* row = logits + b * row_stride;
    float m;
    if (!chooser_row_max<Threads>(row, V, b, out, status, m)) return;
    auto q_of = [&](index_t i) { return sampling_weight(::tinyllm::detail::sub_rn(to_float(row[i]), m)); };
    std::uint64_t local = 0;
    for (index_t i = threadIdx.x; i < V; i += Threads) local += q_of(i);
    const std::uint64_t total = block_sum<Threads>(local);
    const std::uint64_t t =
        sampling_threshold(total, sampling_bits(seed, static_cast<std::uint64_t>(b) + stream_offset, step));
    const int token = first_crossing<Threads, sampling_items>(V, t, q_of);
    if (threadIdx.x == 0) {
        out[b] = token;
        status[b] = row_ok;
    }
}

// Penalties over the generated tokens (B, L): each distinct token of a row is
// handled by the thread holding its FIRST occurrence (so exactly once), which
// also counts its occurrences. O(L^2 / threads) per row: fine for L of a few
// thousand. mode 0: repetition (a = penalty); 1: frequency a, presence c.
// As the CPU's, the row is checked before anything is written (a NaN or +inf
// logit, a generated token outside [0, V)); a result of +inf or NaN is reported.
template <int Threads, class T>
__global__ void penalty_kernel(T* logits, int* status, index_t V, index_t row_stride, const token_id* generated,
                               index_t L, index_t generated_stride, int mode, float a, float c) {
    const index_t b = blockIdx.x;
    T* row = logits + b * row_stride;
    const token_id* g = generated + b * generated_stride;
    bool bad = false;
    (void)row_max_checked<Threads>(row, V, 1.0f, bad);
    bool bad_token = false;
    for (index_t j = threadIdx.x; j < L; j += Threads) bad_token |= g[j] >= V;
    bad_token = __syncthreads_or(bad_token) != 0;
    if (bad || bad_token) {
        if (threadIdx.x == 0) status[b] = bad ? row_bad_logit : row_bad_token;
        return;
    }
    bool overflow = false;
    for (index_t j = threadIdx.x; j < L; j += Threads) {
        const token_id t = g[j];
        if (t < 0) continue;
        bool first = true;
        int count = 0;
        for (index_t j2 = 0; j2 < L; ++j2) {
            if (g[j2] != t) continue;
            if (j2 < j) first = false;
            ++count;
        }
        if (!first) continue;
        const float z = mode == 0 ? repetition_penalized(to_float(row[t]), a)
                                  : frequency_presence_penalized(to_float(row[t]), static_cast<float>(count), a, c);
        overflow |= is_bad_logit(z);
        row[t] = from_float<T>(z);
    }
    overflow = __syncthreads_or(overflow) != 0;
    if (threadIdx.x == 0) status[b] = overflow ? row_overflow : row_ok;
}

// Logit bias (add) or ban (set -inf) for n listed tokens in every row; the row is
// checked first (a NaN or +inf logit: nothing written) and a sum of +inf reported.
template <int Threads, class T>
__global__ void token_list_kernel(T* logits, int* status, index_t V, index_t row_stride, const token_id* tokens,
                                  const float* bias, index_t n) {
    const index_t b = blockIdx.x;
    T* row = logits + b * row_stride;
    bool bad = false;
    (void)row_max_checked<Threads>(row, V, 1.0f, bad);
    if (bad) {
        if (threadIdx.x == 0) status[b] = row_bad_logit;
        return;
    }
    bool overflow = false;
    for (index_t j = threadIdx.x; j < n; j += Threads) {
        const token_id t = tokens[j];
        const float z = bias ? ::tinyllm::detail::add_rn(to_float(row[t]), bias[j]) : -INFINITY;
        overflow |= z == INFINITY;
        row[t] = from_float<T>(z);
    }
    overflow = __syncthreads_or(overflow) != 0;
    if (threadIdx.x == 0) status[b] = overflow ? row_overflow : row_ok;
}

template <class = void>  // compiled only where called (launch.cuh)
inline void run_processor(tensor_view<float, 2> logits, int which, float value, index_t k, const char* what,
                          sampling_check check, cudaStream_t stream) {
    check_logits(logits, what);
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = status_buffer(B, stream);
    launch(processor_kernel<sampling_threads, float>, static_cast<unsigned>(B), sampling_threads, 0, stream,
           logits.data(), status, logits.extent(1), logits.stride(0), which, value, k);
    check_status(status, B, what, check, stream);
}

template <class = void>  // compiled only where called (launch.cuh)
inline void run_token_list(tensor_view<float, 2> logits, const std::vector<token_id>& tokens,
                           const std::vector<float>* bias, const char* what, cudaStream_t stream) {
    const index_t B = logits.extent(0);
    if (B == 0 || tokens.empty()) return;
    // Staged on `stream` itself: a copy on the legacy default stream is not ordered
    // before the kernel when `stream` is a non-blocking stream.
    device_buffer<token_id> d_tokens(tokens.size());
    device_buffer<float> d_bias(bias ? bias->size() : 0);
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_tokens.data(), tokens.data(), d_tokens.bytes(), cudaMemcpyHostToDevice, stream));
    if (bias)
        TINYLLM_CUDA_CHECK(
            cudaMemcpyAsync(d_bias.data(), bias->data(), d_bias.bytes(), cudaMemcpyHostToDevice, stream));
    int* status = status_buffer(B, stream);
    launch(token_list_kernel<sampling_threads, float>, static_cast<unsigned>(B), sampling_threads, 0, stream,
           logits.data(), status, logits.extent(1), logits.stride(0), d_tokens.data(), bias ? d_bias.data() : nullptr,
           static_cast<index_t>(tokens.size()));
    // Synchronizes, before the temporary buffers (and the host arrays) are freed.
    check_status(status, B, what, sampling_check::sync, stream);
}

}  // namespace detail

// ---- v1: the processors, one kernel each, in place on device logits (B, V) ----

// z <- z / T; T = 0 keeps only the first argmax (greedy decoding).
template <class = void>  // compiled only where called (launch.cuh)
inline void temperature(tensor_view<float, 2> logits, float t, sampling_check check = sampling_check::sync,
                        cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_temperature(t);
    detail::run_processor(logits, 0, t, 0, "temperature", check, stream);
}
// Keep the logits >= the k-th largest (ties kept).
template <class = void>  // compiled only where called (launch.cuh)
inline void top_k(tensor_view<float, 2> logits, index_t k, sampling_check check = sampling_check::sync,
                  cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_top_k(k);
    detail::run_processor(logits, 1, 0.0f, k, "top_k", check, stream);
}
// Keep the most probable tokens until their mass reaches p.
template <class = void>  // compiled only where called (launch.cuh)
inline void top_p(tensor_view<float, 2> logits, float p, sampling_check check = sampling_check::sync,
                  cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_top_p(p);
    detail::run_processor(logits, 2, p, 0, "top_p", check, stream);
}
// Keep the tokens with probability >= p * the top token's.
template <class = void>  // compiled only where called (launch.cuh)
inline void min_p(tensor_view<float, 2> logits, float p, sampling_check check = sampling_check::sync,
                  cudaStream_t stream = nullptr) {  // (B, V)
    ::tinyllm::detail::check_min_p(p);
    detail::run_processor(logits, 3, p, 0, "min_p", check, stream);
}

namespace detail {
// Both penalties: validate, launch penalty_kernel in `mode` (0: repetition with
// factor a; 1: frequency a and presence b), check the rows' status.
template <class = void>  // compiled only where called (launch.cuh)
inline void run_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated, int mode, float a,
                        float b, const char* op, sampling_check check, cudaStream_t stream) {
    check_logits(logits, op);
    TINYLLM_EXPECT(generated.extent(0) == logits.extent(0), op, ": generated has ", generated.extent(0),
                   " rows but logits have ", logits.extent(0));
    TINYLLM_EXPECT(generated.extent(1) <= 1 || generated.stride(1) == 1, op, ": generated rows must be contiguous");
    // A block reads its row of generated while other blocks write their logits.
    ::tinyllm::detail::expect_apart(op, "logits", logits, "generated", generated);
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = status_buffer(B, stream);
    launch(penalty_kernel<sampling_threads, float>, static_cast<unsigned>(B), sampling_threads, 0, stream,
           logits.data(), status, logits.extent(1), logits.stride(0), generated.data(), generated.extent(1),
           generated.stride(0), mode, a, b);
    check_status(status, B, op, check, stream);
}
}  // namespace detail

// Repetition penalty over the generated tokens (B, L) (device memory, entries < 0 are padding).
template <class = void>  // compiled only where called (launch.cuh)
inline void repetition_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated, float r,
                               sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    ::tinyllm::detail::check_penalty(r);
    detail::run_penalty(logits, generated, 0, r, 0.0f, "repetition_penalty", check, stream);
}

// Frequency and presence penalties over the generated tokens (B, L) (device memory).
template <class = void>  // compiled only where called (launch.cuh)
inline void frequency_presence_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated,
                                       float frequency, float presence, sampling_check check = sampling_check::sync,
                                       cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(std::isfinite(frequency) && std::isfinite(presence),
                   "frequency_presence_penalty: frequency = ", frequency, " and presence = ", presence,
                   " must be finite");
    detail::run_penalty(logits, generated, 1, frequency, presence, "frequency_presence_penalty", check, stream);
}

// z_t <- z_t + bias[t] in every row (the map is on the host). Synchronizes.
template <class = void>  // compiled only where called (launch.cuh)
inline void logit_bias(tensor_view<float, 2> logits, const std::map<token_id, float>& bias,
                       cudaStream_t stream = nullptr) {  // (B, V)
    detail::check_logits(logits, "logit_bias");
    std::vector<token_id> tokens;
    std::vector<float> values;
    for (auto [t, v] : bias) {
        TINYLLM_EXPECT(t >= 0 && t < logits.extent(1), "logit_bias: token ", t, " is outside [0, ", logits.extent(1),
                       ")");
        TINYLLM_EXPECT(std::isfinite(v), "logit_bias: the bias of token ", t, " is ", v,
                       "; use ban_tokens to forbid a token");
        tokens.push_back(t);
        values.push_back(v);
    }
    detail::run_token_list(logits, tokens, &values, "logit_bias", stream);
}

// z_t <- -inf for the listed tokens in every row. Synchronizes.
template <class = void>  // compiled only where called (launch.cuh)
inline void ban_tokens(tensor_view<float, 2> logits, std::span<const token_id> tokens,
                       cudaStream_t stream = nullptr) {  // (B, V)
    detail::check_logits(logits, "ban_tokens");
    std::vector<bool> banned(static_cast<std::size_t>(logits.extent(1)), false);
    for (token_id t : tokens) {
        TINYLLM_EXPECT(t >= 0 && t < logits.extent(1), "ban_tokens: token ", t, " is outside [0, ", logits.extent(1),
                       ")");
        banned[static_cast<std::size_t>(t)] = true;
    }
    TINYLLM_EXPECT(std::find(banned.begin(), banned.end(), false) != banned.end(), "ban_tokens: all ",
                   logits.extent(1), " tokens are banned; nothing could be generated");
    detail::run_token_list(logits, std::vector<token_id>(tokens.begin(), tokens.end()), nullptr, "ban_tokens", stream);
}

// ---- choosers -------------------------------------------------------------------

// Greedy, one block per row: out[b] = argmax of row b (lowest index among
// ties). out (B) and logits (B, V) on the device.
template <class = void>  // compiled only where called (launch.cuh)
inline void greedy_reduction(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits,
                   sampling_check check = sampling_check::sync, cudaStream_t stream = nullptr) {
    detail::check_logits(logits, "greedy");
    detail::check_out(out, logits, "greedy");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = detail::status_buffer(B, stream);
    launch(detail::greedy_kernel<detail::sampling_threads, float>, static_cast<unsigned>(B), detail::sampling_threads,
           0, stream, out.data(), status, logits.data(), logits.extent(1), logits.stride(0));
    detail::check_status(status, B, "greedy", check, stream);
}

// v1 chooser: a draw from softmax(logits) per row, the same token as
// tinyllm::cpu::sample(out, logits, seed, step, stream_offset).
template <class = void>  // compiled only where called (launch.cuh)
inline void sample(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, std::uint64_t seed,
                   std::uint64_t step, std::uint64_t stream_offset = 0, sampling_check check = sampling_check::sync,
                   cudaStream_t stream = nullptr) {
    detail::check_logits(logits, "sample");
    detail::check_out(out, logits, "sample");
    const index_t B = logits.extent(0);
    if (B == 0) return;
    int* status = detail::status_buffer(B, stream);
    launch(detail::sample_kernel<detail::sampling_threads, float>, static_cast<unsigned>(B), detail::sampling_threads,
           0, stream, out.data(), status, logits.data(), logits.extent(1), logits.stride(0), seed, step, stream_offset);
    detail::check_status(status, B, "sample", check, stream);
}

}  // namespace tinyllm::cuda
