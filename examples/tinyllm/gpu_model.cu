// examples/tinyllm/gpu_model.cu — `tinyllm generate/logits/grads --device cuda`:
// the checkpoint run by tinyllm::cuda::model (cuda/tinyllm/cuda/model.cuh).
#include "gpu.hpp"

#include <tinyllm/cuda/model.cuh>
#include <tinyllm/cuda/speculative.cuh>

namespace tinyllm_cli {
namespace {

void expect_gpu() {
    const gpu_report r = query_gpus();
    if (r.devices.empty()) throw tinyllm::error("tinyllm: --device cuda: no usable GPU (" + r.why_none + ")");
}

}  // namespace

std::vector<tinyllm::token_id> gpu_generate(const std::string& dir, bool bfloat16, std::span<const tinyllm::token_id> prompt,
                                       const tinyllm::cpu::generation_options& options,
                                       const std::function<void(tinyllm::token_id)>& on_token) {
    expect_gpu();
    if (bfloat16) return tinyllm::cuda::generate(tinyllm::cuda::model<tinyllm::bfloat16>::load(dir), prompt, options, on_token);
    return tinyllm::cuda::generate(tinyllm::cuda::model<float>::load(dir), prompt, options, on_token);
}

std::vector<float> gpu_last_logits(const std::string& dir, bool bfloat16, std::span<const tinyllm::token_id> prompt) {
    expect_gpu();
    if (bfloat16) return tinyllm::cuda::last_logits(tinyllm::cuda::model<tinyllm::bfloat16>::load(dir), prompt);
    return tinyllm::cuda::last_logits(tinyllm::cuda::model<float>::load(dir), prompt);
}

tinyllm::speculative_result gpu_generate_speculative(const std::string& dir, bool bfloat16,
                                                     const std::string& draft_dir, bool draft_bfloat16,
                                                     const tinyllm::cpu::model* cpu_draft, tinyllm::index_t lookup_ngram,
                                                     std::span<const tinyllm::token_id> prompt,
                                                     const tinyllm::speculative_options& options,
                                                     const std::function<void(tinyllm::token_id, bool)>& on_token) {
    expect_gpu();
    const auto with_target = [&](const auto& target) {
        namespace cuda = tinyllm::cuda;
        if (lookup_ngram > 0) return cuda::generate_prompt_lookup(target, prompt, lookup_ngram, options, on_token);
        if (cpu_draft) return cuda::generate_speculative(target, *cpu_draft, prompt, options, on_token);
        if (draft_bfloat16)
            return cuda::generate_speculative(target, cuda::model<tinyllm::bfloat16>::load(draft_dir), prompt, options,
                                              on_token);
        return cuda::generate_speculative(target, cuda::model<float>::load(draft_dir), prompt, options, on_token);
    };
    if (bfloat16) return with_target(tinyllm::cuda::model<tinyllm::bfloat16>::load(dir));
    return with_target(tinyllm::cuda::model<float>::load(dir));
}

tinyllm::loss_terms gpu_forward_backward(const tinyllm::cpu::model& model, tinyllm::model_weights& grads,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> tokens,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> targets,
                                         const tinyllm::backward_options& options) {
    expect_gpu();
    return tinyllm::cuda::model<float>(model).forward_backward(grads, tokens, targets, options);
}

}  // namespace tinyllm_cli
