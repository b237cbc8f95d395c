// A program outside tinyllm using its CPU half through tinyllm::tinyllm.
#include <tinyllm/tinyllm.hpp>

#include <cstdio>

int main() {
    tinyllm::tensor<float, 2> x({2, 3});  // (2, 3)
    tinyllm::cpu::fill_uniform(x.view(), 1);
    const auto w = tinyllm::philox4x32_10({{0, 0, 0, 0}}, {{0, 0}});
    if (w.v[0] != 0x6627e8d5u) return 1;
    std::printf("consumer: tinyllm %s, x%s, x(1, 2) = %f\n", TINYLLM_VERSION_STRING,
                tinyllm::to_string(x.shape()).c_str(), static_cast<double>(x(1, 2)));
    return 0;
}
