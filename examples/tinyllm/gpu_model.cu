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

// f(the CUDA model of w): float32 or bfloat16 weights as the checkpoint holds them
// (quantized checkpoints included: cuda::model::load reads them through the CPU
// model), or quantized at load by round to nearest (--dtype int8|int4-gG).
template <class F>
decltype(auto) with_model(const gpu_weights& w, F&& f) {
    namespace cuda = tinyllm::cuda;
    if (w.quantize) {
        tinyllm::cpu::model host = tinyllm::cpu::model::load(w.dir);
        if (host.quantized())
            throw tinyllm::error("tinyllm: '" + w.dir + "' is a quantized checkpoint (" + host.quantization().name() +
                                 "); it runs as stored, without --dtype " + w.quantize->name());
        host.quantize_weights(*w.quantize);
        return f(cuda::model<float>(host));
    }
    if (w.bfloat16) return f(cuda::model<tinyllm::bfloat16>::load(w.dir));
    return f(cuda::model<float>::load(w.dir));
}

}  // namespace

std::vector<tinyllm::token_id> gpu_generate(const gpu_weights& model, std::span<const tinyllm::token_id> prompt,
                                            const tinyllm::cpu::generation_options& options,
                                            const std::function<void(tinyllm::token_id)>& on_token) {
    expect_gpu();
    tinyllm::cpu::generation_options o = options;
    o.kv_cache = model.int8_kv ? tinyllm::cpu::model::kv_dtype::int8 : tinyllm::cpu::model::kv_dtype::float32;
    return with_model(model, [&](const auto& m) { return tinyllm::cuda::generate(m, prompt, o, on_token); });
}

std::vector<float> gpu_last_logits(const gpu_weights& model, std::span<const tinyllm::token_id> prompt) {
    expect_gpu();
    return with_model(model, [&](const auto& m) { return tinyllm::cuda::last_logits(m, prompt); });
}

tinyllm::speculative_result gpu_generate_speculative(const gpu_weights& target, const gpu_weights& draft,
                                                     tinyllm::index_t lookup_ngram,
                                                     std::span<const tinyllm::token_id> prompt,
                                                     const tinyllm::speculative_options& options,
                                                     const std::function<void(tinyllm::token_id, bool)>& on_token) {
    expect_gpu();
    namespace cuda = tinyllm::cuda;
    return with_model(target, [&](const auto& t) {
        if (lookup_ngram > 0) return cuda::generate_prompt_lookup(t, prompt, lookup_ngram, options, on_token);
        return with_model(draft, [&](const auto& d) { return cuda::generate_speculative(t, d, prompt, options, on_token); });
    });
}

tinyllm::loss_terms gpu_forward_backward(const tinyllm::cpu::model& model, tinyllm::model_weights& grads,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> tokens,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> targets,
                                         const tinyllm::backward_options& options) {
    expect_gpu();
    return tinyllm::cuda::model<float>(model).forward_backward(grads, tokens, targets, options);
}

}  // namespace tinyllm_cli
