// examples/tinyllm/gpu_none.cpp — the GPU report of a build without CUDA.
#include "gpu.hpp"

namespace tinyllm_cli {

gpu_report query_gpus() {
    gpu_report r;
    r.why_none = "this tinyllm was built without CUDA (configure with -DTINYLLM_CUDA=ON on a machine with nvcc)";
    return r;
}

}  // namespace tinyllm_cli

namespace tinyllm_cli {
std::vector<float> gpu_fill_uniform(long long, unsigned long long) { return {}; }
}  // namespace tinyllm_cli

#include <tinyllm/engine.hpp>
#include <tinyllm/error.hpp>

namespace tinyllm_cli {
namespace {
[[noreturn]] void no_cuda() {
    throw tinyllm::error("tinyllm: --device cuda: " + query_gpus().why_none + "; use --device cpu");
}
}  // namespace

std::vector<tinyllm::token_id> gpu_generate(const gpu_weights&, std::span<const tinyllm::token_id>,
                                            const tinyllm::cpu::generation_options&,
                                            const std::function<void(tinyllm::token_id)>&) {
    no_cuda();
}
std::vector<float> gpu_last_logits(const gpu_weights&, std::span<const tinyllm::token_id>) { no_cuda(); }
tinyllm::speculative_result gpu_generate_speculative(const gpu_weights&, const gpu_weights&, tinyllm::index_t,
                                                     std::span<const tinyllm::token_id>, const tinyllm::speculative_options&,
                                                     const std::function<void(tinyllm::token_id, bool)>&) {
    no_cuda();
}
tinyllm::loss_terms gpu_forward_backward(const tinyllm::cpu::model&, tinyllm::model_weights&,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2>,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2>,
                                         const tinyllm::backward_options&) {
    no_cuda();
}
std::unique_ptr<tinyllm::engine> gpu_serve_engine(const gpu_weights&, const tinyllm::engine_options&) { no_cuda(); }
}  // namespace tinyllm_cli

namespace tinyllm_cli {
race_demo gpu_race_demo() { return {}; }
}  // namespace tinyllm_cli
