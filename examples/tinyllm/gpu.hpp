// examples/tinyllm/gpu.hpp — what the command knows about GPUs. Implemented in
// gpu.cu when tinyllm is built with CUDA, and in gpu_none.cpp otherwise, so the
// CPU-only build needs no CUDA headers.
#pragma once

#include <string>
#include <vector>

namespace tinyllm_cli {

struct gpu_report {
    bool built_with_cuda = false;
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

#include <cstdint>
#include <functional>
#include <span>

namespace tinyllm_cli {
// `tinyllm generate/logits --device cuda`: the checkpoint in DIR run by
// tinyllm::cuda::model in float32 or bfloat16 (gpu_model.cu). A build without
// CUDA, or a machine without a usable GPU, throws tinyllm::error saying so.
std::vector<std::int32_t> gpu_generate(const std::string& dir, bool bfloat16, std::span<const std::int32_t> prompt,
                                       const tinyllm::cpu::generation_options& options,
                                       const std::function<void(std::int32_t)>& on_token);
std::vector<float> gpu_last_logits(const std::string& dir, bool bfloat16, std::span<const std::int32_t> prompt);
}  // namespace tinyllm_cli
