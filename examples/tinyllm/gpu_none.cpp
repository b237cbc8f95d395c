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
