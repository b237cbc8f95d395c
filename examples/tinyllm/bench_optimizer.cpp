// examples/tinyllm/bench_optimizer.cpp — the CPU reference row of `tinyllm
// bench adamw`: one AdamW step of n float parameters (--size n; the CPU row
// defaults to 2^22 to stay within a second, the CUDA rows in bench_optimizer.cu
// to 2^26). Bytes: p, g, m, v read once, p, m, v written once (28 per parameter).
#include "registry.hpp"

#include <tinyllm/optimizer.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_BENCH("adamw", "one AdamW step of n parameters (--size n): CUDA float and bf16 + float master default 2^26 (simulated GPU 2^16 + 3), CPU float 2^22", 0) {
    const long long n = ctx.size > 0 ? ctx.size : (1LL << 22);
    std::vector<float> p(static_cast<std::size_t>(n)), g(p.size()), m(p.size(), 0.0f), v(p.size(), 0.0f);
    const auto view = [n](std::vector<float>& x) { return tinyllm::tensor_view<float, 1>(x.data(), {n}); };
    tinyllm::cpu::fill_normal(view(p), 1, 0.0f, 0.02f);
    tinyllm::cpu::fill_normal(view(g), 2, 0.0f, 1e-3f);
    const tinyllm::adamw_config config{.lr = 6e-4, .beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1};
    std::int64_t step = 0;
    ctx.rows.push_back({"cpu ref f32", "cpu",
                        tinyllm::time_cpu("adamw/cpu_reference_f32/n=" + std::to_string(n),
                                          [&] {
                                              tinyllm::cpu::adamw_step(view(p), view(m), view(v), view(g), config,
                                                                       ++step);
                                          },
                                          28.0 * static_cast<double>(n), 0, 1, ctx.repeats),
                        "reference", true, false});
}
