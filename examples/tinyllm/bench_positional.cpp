// examples/tinyllm/bench_positional.cpp — CPU reference row of `tinyllm bench rope`.
//
// RoPE in place on q of shape (B, T, H, D) = (4, T, 32, 128), Llama's layout
// (rotate_half, theta = 10000, full rotary). --size sets T (default 512 here, 4096 for the CUDA rows). The
// CPU reference works in float; the CUDA rows (bench_positional.cu) in bf16.
#include "registry.hpp"

#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_BENCH("rope", "RoPE in place on (4, T, 32, 128), rotate_half, theta 10000: --size T; CUDA bf16 default 4096 (simulated GPU 64), CPU float 512", 0) {
    const long long B = 4, T = ctx.size > 0 ? ctx.size : 512, H = 32, D = 128;
    const long long n = B * T * H * D;
    std::vector<float> x(static_cast<std::size_t>(n));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {n}), 7, -1.0f, 1.0f);
    std::vector<std::int64_t> positions(static_cast<std::size_t>(B * T));
    for (long long i = 0; i < B * T; ++i) positions[static_cast<std::size_t>(i)] = i % T;
    const tinyllm::rope_config cfg{.rotary_dim = D};
    tinyllm::tensor_view<float, 4> xv(x.data(), {B, T, H, D});  // (B, T, H, D)
    tinyllm::tensor_view<const std::int64_t, 2> pv(positions.data(), {B, T});
    const std::string shape = "B=4,T=" + std::to_string(T) + ",H=32,D=128,f32";
    // Read + write of every element (the positions are B*T ids, negligible).
    const double bytes = 2.0 * static_cast<double>(n) * sizeof(float);
    const int repeats = ctx.repeats < 3 ? ctx.repeats : 3;  // the reference is slow: a few runs suffice
    ctx.rows.push_back({"cpu reference (f32)", "cpu",
                        tinyllm::time_cpu("rope/cpu_reference/" + shape, [&] { tinyllm::cpu::apply_rope(xv, pv, cfg); },
                                          bytes, 0, 0, repeats),
                        "reference", true, false});
}
