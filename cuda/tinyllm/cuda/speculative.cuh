// tinyllm/cuda/speculative.cuh — speculative decoding (<tinyllm/speculative.hpp>)
// with the CUDA model as the target, the draft, or both.
//
// The decoding loop, the acceptance rule and the drafters are the CPU
// reference's, unchanged: a round feeds the last committed token and the k
// drafts to the target in one forward over k + 1 positions of its device KV
// cache, reads those k + 1 rows of float logits back to the host (k + 1 rows of
// V floats: 80 KB per round at k = 4 and V = 4096), applies the rule there, and
// rolls the cache back by setting the session's length: the positions beyond
// it are masked by the attention's key lengths and overwritten by the next
// forward, so nothing is copied or cleared. The GPU's gain is the one the
// method was designed for: at batch 1 a decode step is bound by reading the
// weights, so a forward over k + 1 positions costs about one step.
//
// Not here yet: the acceptance rule on the device (the logits would stay
// there), CUDA graphs for the draft's decode steps, batched sessions.
//
//     auto r = tinyllm::cuda::generate_speculative(target, draft, prompt, options);   // cuda::model<T> each
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/model.cuh>
#include <tinyllm/speculative.hpp>

#include <cuda_runtime.h>

#include <functional>
#include <span>

namespace tinyllm::cuda {
namespace detail {

// cuda::model<T> as speculate() drives a target or a draft (the adapter of
// tinyllm::detail::cpu_target): one sequence per session, host logits.
template <class T>
class speculative_target {
public:
    using session = typename model<T>::session;
    explicit speculative_target(const model<T>& m) : m_(m) {}
    const model_config& config() const { return m_.config(); }
    session new_session(index_t capacity) const { return m_.new_session(1, capacity); }
    // The logits of every fed position, (n, V) on the host.
    tensor<float, 2> forward(session& s, std::span<const token_id> tokens) const { return fed(s, tokens, true); }
    // The logits of the last fed position, (1, V) on the host.
    tensor<float, 2> forward_last(session& s, std::span<const token_id> tokens) const { return fed(s, tokens, false); }
    void truncate(session& s, index_t length) const {
        TINYLLM_EXPECT(length >= 0 && length <= s.lengths[0], "cuda speculative decoding: length ", length,
                       " is outside [0, ", s.lengths[0], "]");
        s.lengths[0] = length;
    }
    static index_t length(const session& s) { return s.lengths[0]; }

private:
    tensor<float, 2> fed(session& s, std::span<const token_id> tokens, bool all_positions) const {
        const index_t n = static_cast<index_t>(tokens.size());
        const tensor_view<const float, 2> logits =
            m_.forward(s, tensor_view<const token_id, 2>(tokens.data(), {1, n}), {}, all_positions);  // device
        tensor<float, 2> host(logits.shape());
        TINYLLM_CUDA_CHECK(cudaMemcpy(host.data(), logits.data(), static_cast<std::size_t>(host.size()) * sizeof(float),
                                      cudaMemcpyDeviceToHost));
        return host;
    }

    const model<T>& m_;
};

}  // namespace detail

// Speculative decoding with a CUDA target and a CUDA draft model over the same
// vocabulary (the element types may differ: a bf16 target with a float draft).
// The same result as tinyllm::cpu::generate_speculative for the same logits.
template <class T, class TD>
speculative_result generate_speculative(const model<T>& target, const model<TD>& draft, std::span<const token_id> prompt,
                                        const speculative_options& o,
                                        const std::function<void(token_id, bool)>& on_token = {}) {
    return tinyllm::detail::generate_speculative_on(detail::speculative_target<T>(target),
                                                    detail::speculative_target<TD>(draft), prompt, o, on_token,
                                                    "cuda::generate_speculative");
}

// A CUDA target with a CPU draft model (a small draft is cheap on the CPU).
template <class T>
speculative_result generate_speculative(const model<T>& target, const cpu::model& draft,
                                        std::span<const token_id> prompt, const speculative_options& o,
                                        const std::function<void(token_id, bool)>& on_token = {}) {
    return tinyllm::detail::generate_speculative_on(detail::speculative_target<T>(target),
                                                    tinyllm::detail::cpu_target(draft), prompt, o, on_token,
                                                    "cuda::generate_speculative");
}

// Prompt lookup with a CUDA target.
template <class T>
speculative_result generate_prompt_lookup(const model<T>& target, std::span<const token_id> prompt, index_t ngram,
                                          const speculative_options& o,
                                          const std::function<void(token_id, bool)>& on_token = {}) {
    return tinyllm::detail::generate_prompt_lookup_on(detail::speculative_target<T>(target), prompt, ngram, o,
                                                      on_token, "cuda::generate_prompt_lookup");
}

}  // namespace tinyllm::cuda
