// examples/tinyllm/gpu_model.cu — `tinyllm generate/logits --device cuda`:
// the checkpoint run by tinyllm::cuda::model (cuda/tinyllm/cuda/model.cuh).
#include "gpu.hpp"

#include <tinyllm/cuda/model.cuh>

namespace tinyllm_cli {
namespace {

void expect_gpu() {
    const gpu_report r = query_gpus();
    if (r.devices.empty()) throw tinyllm::error("tinyllm: --device cuda: no usable GPU (" + r.why_none + ")");
}

template <class T>
std::vector<float> last_logits(const std::string& dir, std::span<const std::int32_t> prompt) {
    const auto m = tinyllm::cuda::model<T>::load(dir);
    const tinyllm::index_t n = static_cast<tinyllm::index_t>(prompt.size());
    auto session = m.new_session(1, n);
    const auto logits = m.forward(session, tinyllm::tensor_view<const std::int32_t, 2>(prompt.data(), {1, n}));
    std::vector<float> host(static_cast<std::size_t>(logits.extent(1)));
    TINYLLM_CUDA_CHECK(cudaMemcpy(host.data(), logits.data(), host.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
}

}  // namespace

std::vector<std::int32_t> gpu_generate(const std::string& dir, bool bfloat16, std::span<const std::int32_t> prompt,
                                       const tinyllm::cpu::generation_options& options,
                                       const std::function<void(std::int32_t)>& on_token) {
    expect_gpu();
    if (bfloat16) return tinyllm::cuda::generate(tinyllm::cuda::model<tinyllm::bfloat16>::load(dir), prompt, options, on_token);
    return tinyllm::cuda::generate(tinyllm::cuda::model<float>::load(dir), prompt, options, on_token);
}

std::vector<float> gpu_last_logits(const std::string& dir, bool bfloat16, std::span<const std::int32_t> prompt) {
    expect_gpu();
    return bfloat16 ? last_logits<tinyllm::bfloat16>(dir, prompt) : last_logits<float>(dir, prompt);
}

}  // namespace tinyllm_cli
