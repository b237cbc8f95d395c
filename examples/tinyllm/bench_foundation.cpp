// examples/tinyllm/bench_foundation.cpp — CPU rows of `tinyllm bench random|copy`.
#include "registry.hpp"

#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstring>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {
long long size_or(const bench_context& ctx, long long fallback) { return ctx.size > 0 ? ctx.size : fallback; }
}  // namespace

TINYLLM_BENCH("random", "fill_uniform: n Philox uniforms in [0, 1) (--size n, default 2^24)", 0) {
    const long long n = size_or(ctx, 1LL << 24);
    std::vector<float> out(static_cast<std::size_t>(n));
    tinyllm::tensor_view<float, 1> view(out.data(), {n});
    bench_row row{"cpu reference", "cpu",
                  tinyllm::time_cpu("random/cpu_reference/n=" + std::to_string(n),
                                    [&] { tinyllm::cpu::fill_uniform(view, 1234); }, 4.0 * n, 0, 1, ctx.repeats),
                  "reference", true, true};
    ctx.rows.push_back(row);
}

TINYLLM_BENCH("copy", "copy n floats (--size n, default 2^26): the bandwidth ceiling", 0) {
    const long long n = size_or(ctx, 1LL << 26);
    std::vector<float> in(static_cast<std::size_t>(n), 1.0f), out(static_cast<std::size_t>(n));
    bench_row row{"cpu memcpy", "cpu",
                  tinyllm::time_cpu("copy/cpu_memcpy/n=" + std::to_string(n),
                                    [&] { std::memcpy(out.data(), in.data(), in.size() * sizeof(float)); },
                                    8.0 * n, 0, 1, ctx.repeats),
                  "reference", out == in, false};
    ctx.rows.push_back(row);
}
