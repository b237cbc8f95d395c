// examples/tinyllm/gpu.hpp — what the command knows about GPUs. Implemented in
// gpu.cu when tinyllm is built with CUDA, and in gpu_none.cpp otherwise, so the
// CPU-only build needs no CUDA headers.
#pragma once

#include <string>
#include <vector>

namespace tinyllm_cli {

struct gpu_report {
    bool built_with_cuda = false;
    bool simulated = false;            // built for tinyllm's simulated GPU (docs/simulator.md)
    std::string cuda_version;          // runtime the command was built against, e.g. "13.0"
    std::string architectures;         // the sm_XX it was compiled for
    std::vector<std::string> devices;  // one readable line per device
    std::string why_none;              // why no device is usable, when devices is empty
};

gpu_report query_gpus();

}  // namespace tinyllm_cli

namespace tinyllm_cli {
// cuda::fill_uniform of n floats in [0, 1) with `seed`, copied back to the host;
// empty when there is no usable GPU (or no CUDA in this build).
std::vector<float> gpu_fill_uniform(long long n, unsigned long long seed);
}  // namespace tinyllm_cli

#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/speculative.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>

namespace tinyllm {
class engine;           // tinyllm/engine.hpp (not included here: most commands do not serve)
struct engine_options;
}  // namespace tinyllm

namespace tinyllm_cli {
// What `--device cuda` runs: the checkpoint in `dir` on tinyllm::cuda::model
// (gpu_model.cu), its matrices in float32 or bfloat16, or quantized — as a
// checkpoint of `tinyllm quantize --out` holds them, or by round to nearest at
// load (`quantize`, from --dtype int8|int4-gG; the model then computes in float
// around its int8/int4 matrices). `int8_kv` keeps the sessions' keys and values
// in int8 (--kv-cache int8). A build without CUDA, or a machine without a
// usable GPU, throws tinyllm::error saying so.
struct gpu_weights {
    std::string dir;
    bool bfloat16 = false;
    std::optional<tinyllm::quant_spec> quantize;
    bool int8_kv = false;
};

std::vector<tinyllm::token_id> gpu_generate(const gpu_weights& model, std::span<const tinyllm::token_id> prompt,
                                            const tinyllm::cpu::generation_options& options,
                                            const std::function<void(tinyllm::token_id)>& on_token);
std::vector<float> gpu_last_logits(const gpu_weights& model, std::span<const tinyllm::token_id> prompt);

// `tinyllm generate --device cuda` with --draft-model or --prompt-lookup: speculative
// decoding with the CUDA model of `target` (tinyllm/cuda/speculative.cuh). The
// drafter: prompt lookup when lookup_ngram > 0; else the CUDA model of `draft`.
tinyllm::speculative_result gpu_generate_speculative(const gpu_weights& target, const gpu_weights& draft,
                                                     tinyllm::index_t lookup_ngram,
                                                     std::span<const tinyllm::token_id> prompt,
                                                     const tinyllm::speculative_options& options,
                                                     const std::function<void(tinyllm::token_id, bool)>& on_token);

// `tinyllm grads --device cuda`: cuda::model<float>::forward_backward on the
// weights of `model` (uploaded), the gradients downloaded into `grads` in the
// weights' layout. Throws like gpu_generate without CUDA or a GPU.
tinyllm::loss_terms gpu_forward_backward(const tinyllm::cpu::model& model, tinyllm::model_weights& grads,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> tokens,
                                         tinyllm::tensor_view<const tinyllm::token_id, 2> targets,
                                         const tinyllm::backward_options& options);

// `tinyllm serve --device cuda`: the serving engine (tinyllm/engine.hpp) on the
// CUDA model of `model` (float32 or bfloat16 weights; gpu_serve.cu), its KV
// blocks on the device, sized from `options` as the CPU engine's pool is. Throws
// like gpu_generate without CUDA or a GPU, and for quantized weights.
std::unique_ptr<tinyllm::engine> gpu_serve_engine(const gpu_weights& model, const tinyllm::engine_options& options);
}  // namespace tinyllm_cli

namespace tinyllm_cli {
// The tour's "how a GPU runs a kernel" chapter (tour_gpu.cpp, kernels in tour_gpu.cu):
// a two-warp block sums 64 values in shared memory, with and without the barrier
// between the writes and the read. Empty results when there is no GPU to run on.
struct race_demo {
    bool ran = false;
    bool simulated = false;             // on the simulated GPU: schedules and the synccheck report too
    int expected = 0;                   // the true sum
    std::vector<int> missing_barrier;   // the racy kernel's sum, once per run (per random schedule when simulated)
    std::vector<int> with_barrier;      // the fixed kernel's sum, same runs
    std::string synccheck_report;       // simulated only: the report for barriers in both branches of an if
};
race_demo gpu_race_demo();
}  // namespace tinyllm_cli
