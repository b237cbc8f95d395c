// tinyllm/threads.hpp — how many threads the CPU's threaded kernels use, and
// the OpenMP pragma macro they are written with.
//
// The fast CPU rungs (cpu::gemm and linear_gemm, the tiled attention, the
// vectorized row-wise operations) split their work over OpenMP threads when the
// build has OpenMP (-fopenmp; CMake's OpenMP::OpenMP_CXX) and run on the calling
// thread otherwise, with the same results: how work is divided never changes
// what an element sums. The count is OpenMP's default (OMP_NUM_THREADS, else one
// per core) unless cpu::set_num_threads says otherwise.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

// TINYLLM_OMP(parallel for ...) is `#pragma omp parallel for ...` with OpenMP and
// nothing without it (so no unknown-pragma warnings there).
#if defined(_OPENMP)
#define TINYLLM_PRAGMA(x) _Pragma(#x)
#define TINYLLM_OMP(...) TINYLLM_PRAGMA(omp __VA_ARGS__)
#else
#define TINYLLM_OMP(...)
#endif

namespace tinyllm {

namespace detail {

// The thread count set by cpu::set_num_threads (0: the default).
inline std::atomic<int>& num_threads_setting() {
    static std::atomic<int> n{0};
    return n;
}

inline int default_num_threads() {
#if defined(_OPENMP)
    return std::max(1, omp_get_max_threads());  // OMP_NUM_THREADS, else the cores
#else
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
        const int n = std::atoi(env);
        if (n > 0) return n;
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
#endif
}

}  // namespace detail

namespace cpu {

// The number of threads the threaded CPU kernels (gemm, the tiled attention, the
// vectorized row-wise operations) use. By default the OpenMP default: OMP_NUM_THREADS when set, else
// one per core. set_num_threads(n) sets it for the whole program (n >= 1),
// set_num_threads(0) restores the default. Without OpenMP the kernels run on one
// thread whatever this says; gemm_blas splits its product over this many OpenMP
// threads and runs OpenBLAS single-threaded inside each.
inline void set_num_threads(int n) {
    TINYLLM_EXPECT(n >= 0, "set_num_threads: n = ", n, " must be at least 1 (or 0 for the default)");
    tinyllm::detail::num_threads_setting().store(n);
}

inline int num_threads() {
    const int n = tinyllm::detail::num_threads_setting().load();
    return n > 0 ? n : tinyllm::detail::default_num_threads();
}

}  // namespace cpu
}  // namespace tinyllm
