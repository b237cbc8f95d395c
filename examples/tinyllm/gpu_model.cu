// examples/tinyllm/gpu_model.cu — `tinyllm generate/logits/grads --device cuda`:
// the checkpoint run by tinyllm::cuda::model (cuda/tinyllm/cuda/model.cuh).
#include "gpu.hpp"

#include <tinyllm/cuda/model.cuh>

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

tinyllm::loss_terms gpu_forward_backward(const tinyllm::cpu::model& model, tinyllm::model_weights& grads,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> tokens,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> targets,
                                         const tinyllm::backward_options& options) {
    expect_gpu();
    return tinyllm::cuda::model<float>(model).forward_backward(grads, tokens, targets, options);
}

}  // namespace tinyllm_cli
