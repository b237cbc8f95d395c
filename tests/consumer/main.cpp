// A program outside tinyllm using its CPU half through tinyllm::tinyllm.
#include <tinyllm/tinyllm.hpp>

#include <cmath>
#include <cstdio>

int main() {
    tinyllm::tensor<float, 2> x({2, 3});  // (2, 3)
    tinyllm::cpu::fill_uniform(x.view(), 1);
    const auto w = tinyllm::philox4x32_10({{0, 0, 0, 0}}, {{0, 0}});
    if (w.v[0] != 0x6627e8d5u) return 1;
    // cpu::gemm links whatever the package carries (OpenBLAS, OpenMP): x x^T, (2, 2).
    tinyllm::tensor<float, 2> g({2, 2});
    tinyllm::cpu::gemm(g, x, x.view().transpose(0, 1));
    if (!(std::fabs(g(0, 1) - g(1, 0)) <= 1e-6f)) return 1;
    std::printf("consumer: tinyllm %s, x%s, x(1, 2) = %f, gemm %s\n", TINYLLM_VERSION_STRING,
                tinyllm::to_string(x.shape()).c_str(), static_cast<double>(x(1, 2)),
                tinyllm::cpu::have_blas ? "through BLAS" : "blocked");
    return 0;
}
