// exercises/checks/main_cuda.cpp — the main() of the kernel check program, built twice:
// against the exercises as edited (exercises_cuda) and against the reference answers
// (exercises_cuda_solutions, TINYLLM_EXERCISE_SOLUTIONS=1).
//
// Without a usable GPU it exits with 77, which CTest reports as skipped, like the CUDA
// tests (tests/support/cuda_main.cpp). On the simulated GPU (TINYLLM_CUDA=SIM) there is
// always one: the kernels run on the CPU.
#include "harness.hpp"

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
    bool listing = false;
    for (int i = 1; i < argc; ++i)
        listing = listing || std::strcmp(argv[i], "--list") == 0 || std::strcmp(argv[i], "--help") == 0;
    int devices = 0;
    const cudaError_t code = cudaGetDeviceCount(&devices);
    if (!listing && (code != cudaSuccess || devices == 0)) {
        std::printf(
            "SKIPPED: no usable CUDA device (%s); configure with -DTINYLLM_CUDA=SIM to run the kernel "
            "exercises on the simulated GPU\n",
            code != cudaSuccess ? cudaGetErrorString(code) : "the CUDA runtime found none");
        return 77;
    }
    return exercises::check::run_checks(argc, argv, "exercises_cuda", TINYLLM_EXERCISE_SOLUTIONS != 0);
}
