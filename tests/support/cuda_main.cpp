// tests/support/cuda_main.cpp — the main() of every CUDA test program (Catch2 itself is in
// session.cpp).
//
// Without a usable GPU the program prints why and exits with code 77, which
// CTest reports as "skipped" (SKIP_RETURN_CODE 77 in tests/CMakeLists.txt):
// not passed, because nothing was checked, and not failed, because nothing
// is wrong. Listing the tests (--list-tests) works without a GPU.
#include "session.hpp"

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>

int main(int argc, char* argv[]) {
    bool listing = false;
    for (int i = 1; i < argc; ++i)
        if (std::strncmp(argv[i], "--list", 6) == 0 || std::strcmp(argv[i], "--help") == 0 ||
            std::strcmp(argv[i], "-h") == 0)
            listing = true;
    int devices = 0;
    const cudaError_t code = cudaGetDeviceCount(&devices);
    if (!listing && (code != cudaSuccess || devices == 0)) {
        std::printf("SKIPPED: no usable CUDA device (%s)\n",
                    code != cudaSuccess ? cudaGetErrorString(code) : "the CUDA runtime found none");
        return 77;
    }
    return tinyllm_test::run_tests(argc, argv);
}
