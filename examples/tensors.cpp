// examples/tensors.cpp — using tinyllm's core types from your own code.
//
// Build (inside the tinyllm build: bin/example_tensors), or by hand:
//     g++ -std=c++20 -I path/to/tinyllm/include tensors.cpp
#include <tinyllm/tinyllm.hpp>

#include <cstdio>

int main() {
    // An owning (B, T, D) host tensor, filled with reproducible random numbers.
    tinyllm::tensor<float, 3> x({2, 5, 8});  // (B=2, T=5, D=8)
    tinyllm::cpu::fill_uniform(x.view(), /*seed=*/7, -1.0f, 1.0f);

    // Views share memory: sequence 1, then its last token, then one feature across tokens.
    auto seq = x.view().slice(0, 1);     // (T=5, D=8)
    auto last = seq.slice(0, 4);         // (D=8)
    auto feature3 = seq.slice(1, 3);     // (T=5), stride 8
    std::printf("x %s, seq %s, last token %s, feature 3 over tokens %s (stride %lld)\n",
                tinyllm::to_string(x.shape()).c_str(), tinyllm::to_string(seq.shape()).c_str(),
                tinyllm::to_string(last.shape()).c_str(), tinyllm::to_string(feature3.shape()).c_str(),
                static_cast<long long>(feature3.stride(0)));

    // Mean of each token's features: a typical CPU-reference loop.
    for (tinyllm::index_t t = 0; t < seq.extent(0); ++t) {
        float sum = 0;
        for (tinyllm::index_t d = 0; d < seq.extent(1); ++d) sum += seq(t, d);
        std::printf("token %lld: mean %+.4f\n", static_cast<long long>(t), sum / seq.extent(1));
    }

    // Errors are exceptions that say what was wrong.
    try {
        tinyllm::expect_shape(seq, {5, 9}, "my_layer: input");
    } catch (const tinyllm::error& e) {
        std::printf("caught: %s\n", e.what());
    }
    return 0;
}
