// examples/tinyllm/gpu_serve.cu — `tinyllm serve --device cuda`: the serving
// engine (tinyllm/engine.hpp) with its batched step on tinyllm::cuda::model,
// the keys and values in a device pool (cuda/tinyllm/cuda/batching.cuh). The
// server's HTTP side (cmd_serve.cpp) holds it as the same std::unique_ptr<engine>
// as the CPU path's, so it compiles without CUDA headers.
#include "gpu.hpp"

#include <tinyllm/cuda/batching.cuh>
#include <tinyllm/cuda/model.cuh>

#include <memory>

namespace tinyllm_cli {

std::unique_ptr<tinyllm::engine> gpu_serve_engine(const gpu_weights& w, const tinyllm::engine_options& options) {
    namespace cuda = tinyllm::cuda;
    const gpu_report r = query_gpus();
    if (r.devices.empty()) throw tinyllm::error("tinyllm: --device cuda: no usable GPU (" + r.why_none + ")");
    if (w.quantize || w.int8_kv)
        throw tinyllm::error("tinyllm serve --device cuda: the GPU engine runs float32 or bfloat16 weights and KV "
                             "blocks; quantized weights (--dtype int8|int4-gG) serve with --device cpu");
    const auto engine_on = [&](auto m) {
        if (m->quantized())
            throw tinyllm::error("tinyllm serve --device cuda: '" + w.dir + "' is a quantized checkpoint; the GPU "
                                 "engine runs float32 or bfloat16 weights (serve it with --device cpu)");
        return cuda::make_engine(std::move(m), options);
    };
    using cuda::model;
    if (w.bfloat16)
        return engine_on(std::make_unique<const model<tinyllm::bfloat16>>(model<tinyllm::bfloat16>::load(w.dir)));
    return engine_on(std::make_unique<const model<float>>(model<float>::load(w.dir)));
}

}  // namespace tinyllm_cli
