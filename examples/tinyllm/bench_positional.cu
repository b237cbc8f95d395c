// examples/tinyllm/bench_positional.cu — CUDA rows of `tinyllm bench rope`:
// v1 on the fly and v2 cached, bf16, on (4, T, 32, 128) (--size T, default 4096;
// 64 on the simulated GPU: a block per token, so T only sets how many blocks run).
//
// Bytes per run: every element of x read once and written once (2 * n * 2 bytes);
// the position ids and, for v2, the cos/sin rows read (B*T ids, at most
// T*D floats, shared by all heads) are not counted, as in the PyTorch baseline
// bench/baselines/rope.py. Each row first runs once on a fresh copy of the input
// and compares with the CPU reference (float math on the same bf16 inputs).
#include "registry.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;

TINYLLM_BENCH("rope", "RoPE in place on (4, T, 32, 128), rotate_half, theta 10000: --size T; CUDA bf16 default 4096 (simulated GPU 64), CPU float 512", 1) {
    if (!ctx.gpu_available) return;
    const long long B = 4, T = ctx.size_or(4096, 64), H = 32, D = 128;
    const long long n = B * T * H * D;
    const tinyllm::extents<4> shape{B, T, H, D};
    const tinyllm::extents<2> pshape{B, T};
    const tinyllm::rope_config cfg{.rotary_dim = D};

    std::vector<float> xf(static_cast<std::size_t>(n));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(xf.data(), {n}), 7, -1.0f, 1.0f);
    std::vector<tinyllm::bfloat16> input(xf.size());
    for (std::size_t i = 0; i < xf.size(); ++i) {
        input[i] = tinyllm::float_to_bf16(xf[i]);
        xf[i] = tinyllm::to_float(input[i]);
    }
    std::vector<std::int64_t> positions(static_cast<std::size_t>(B * T));
    for (long long i = 0; i < B * T; ++i) positions[static_cast<std::size_t>(i)] = i % T;
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(xf.data(), shape),
                             tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), pshape), cfg);

    auto d_pos = tc::to_device(positions);
    tc::device_buffer<tinyllm::bfloat16> x(static_cast<std::size_t>(n));
    const auto cache = tc::make_rope_cache(cfg, T);
    const std::string shape_name = "B=4,T=" + std::to_string(T) + ",H=32,D=128,bf16";
    const double bytes = 2.0 * static_cast<double>(n) * sizeof(tinyllm::bfloat16);
    tc::timing_options options;
    options.repeats = ctx.repeats;

    auto run = [&](const char* version, const char* key, bool baseline, auto&& work) {
        x.poison();
        tc::copy_to_device(x, input);
        work();
        const auto got = tc::to_host(x);
        double max_abs = 0;
        bool finite = true;
        for (std::size_t i = 0; i < got.size(); ++i) {
            const double g = tinyllm::to_float(got[i]);
            finite = finite && std::isfinite(g);
            max_abs = std::max(max_abs, std::fabs(g - xf[i]));
        }
        const bool agrees = finite && max_abs <= 1e-2 + 1e-2;  // |x| <= 1.42: bf16 rounding is below 2^-8 * 1.42
        std::ostringstream check;
        check << "max-abs " << max_abs << (finite ? "" : " (non-finite!)");
        // Timed runs rotate x again and again in place: rotations keep norms, so values stay in range.
        auto timing = tc::time_gpu(std::string("rope/") + key + "/" + shape_name, work, bytes, 0, options);
        ctx.rows.push_back({version, "cuda", timing, check.str(), agrees, baseline});
    };
    run("v1 on_the_fly", "v1_on_the_fly", true, [&] { tc::apply_rope_on_the_fly(x.view(shape), d_pos.view(pshape), cfg); });
    run("v2 cached", "v2_cached", false, [&] { tc::apply_rope_cached(x.view(shape), d_pos.view(pshape), cache); });
}
