// examples/tinyllm/bench_foundation.cpp — CPU rows of `tinyllm bench random|copy`.
#include "registry.hpp"

#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstring>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {
// The defaults on the simulated GPU, the same as the CUDA rows' (bench_foundation.cu).
constexpr long long random_simulated_n = (1LL << 22) + 3, copy_simulated_n = (1LL << 21) + 3;
}  // namespace

TINYLLM_BENCH("random", "fill_uniform: n Philox uniforms in [0, 1) (--size n, default 2^24; simulated GPU 2^22 + 3)", 0) {
    const long long n = ctx.size_or(1LL << 24, random_simulated_n);
    std::vector<float> out(static_cast<std::size_t>(n));
    tinyllm::tensor_view<float, 1> view(out.data(), {n});
    bench_row row{"cpu reference", "cpu",
                  tinyllm::time_cpu("random/cpu_reference/n=" + std::to_string(n),
                                    [&] { tinyllm::cpu::fill_uniform(view, 1234); }, 4.0 * n, 0, 1, ctx.repeats),
                  "reference", true, true};
    ctx.rows.push_back(row);
}

TINYLLM_BENCH("copy", "copy n floats (--size n, default 2^26; simulated GPU 2^21 + 3): the bandwidth ceiling", 0) {
    const long long n = ctx.size_or(1LL << 26, copy_simulated_n);
    std::vector<float> in(static_cast<std::size_t>(n), 1.0f), out(static_cast<std::size_t>(n));
    bench_row row{"cpu memcpy", "cpu",
                  tinyllm::time_cpu("copy/cpu_memcpy/n=" + std::to_string(n),
                                    [&] { std::memcpy(out.data(), in.data(), in.size() * sizeof(float)); },
                                    8.0 * n, 0, 1, ctx.repeats),
                  "reference", out == in, false};
    ctx.rows.push_back(row);
}
