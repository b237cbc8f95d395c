// examples/tinyllm/bench_gemm.cpp — CPU rows of `tinyllm bench gemm`: the matrix
// product of a linear layer, out = x W^T, at GPT-2 124M's attention input projection
// (128 x 768 times 768 x 2304; --size sets the rows M), by the double reference
// (cpu::matmul), tinyllm's blocked kernel (cpu::gemm_blocked) and OpenBLAS
// (cpu::gemm_blas, in builds with it), on cpu::num_threads() threads. Each fast row
// is checked against the reference (max-abs error). bench/cpu/bench_gemm.cpp has
// the other GPT-2 shapes.
#include "registry.hpp"

#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

constexpr index_t gemm_k = 768, gemm_n = 2304;

}  // namespace

TINYLLM_BENCH("gemm", "CPU matrix product x W^T, (rows, 768) x (768, 2304): --size rows (default 128); reference, blocked, OpenBLAS", 0) {
    const index_t M = ctx.size > 0 ? ctx.size : 128, K = gemm_k, N = gemm_n;
    std::vector<float> x(static_cast<std::size_t>(M * K)), w(static_cast<std::size_t>(N * K)),
        want(static_cast<std::size_t>(M * N)), got(want.size());
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {M * K}), 1, -1, 1);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {N * K}), 2, -1, 1);
    const tinyllm::tensor_view<const float, 2> a(x.data(), {M, K});
    const auto b = tinyllm::tensor_view<const float, 2>(w.data(), {N, K}).transpose(0, 1);  // (K, N)
    const tinyllm::tensor_view<float, 2> c_want(want.data(), {M, N}), c_got(got.data(), {M, N});
    const double flops = 2.0 * static_cast<double>(M * N * K);
    const double bytes = 4.0 * static_cast<double>(M * K + K * N + M * N);
    const std::string shape = std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N) + "_f32";
    const std::string threads = std::to_string(tinyllm::cpu::num_threads()) + " threads";
    ctx.out << "gemm_blocked runs the " << tinyllm::cpu::gemm_blocked_kernel_name() << " micro-kernel; "
            << threads << " (cpu::num_threads: OMP_NUM_THREADS, else the cores)\n";

    // The reference takes about a second at the default shape: fewer repeats.
    ctx.rows.push_back({"cpu ref f32, 1 thread", "cpu",
                        tinyllm::time_cpu("gemm/cpu_reference/" + shape, [&] { tinyllm::cpu::matmul(c_want, a, b); },
                                          bytes, flops, 0, std::min(ctx.repeats, 2)),
                        "reference", true, true});
    const auto check = [&] {
        double err = 0;
        for (std::size_t i = 0; i < want.size(); ++i) err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
        char text[48];
        std::snprintf(text, sizeof text, "max-abs %.1e", err);
        // Float sums over K = 768 of terms in [-1, 1]: ~1e-5 expected; NaN fails.
        return std::pair<std::string, bool>{text, err <= 1e-3};
    };
    ctx.rows.push_back({"blocked f32, " + threads, "cpu",
                        tinyllm::time_cpu("gemm/cpu_blocked/" + shape, [&] { tinyllm::cpu::gemm_blocked(c_got, a, b); },
                                          bytes, flops, 1, ctx.repeats),
                        "", true, false});
    auto [text, ok] = check();
    ctx.rows.back().check = text;
    ctx.rows.back().agrees = ok;
#if defined(TINYLLM_HAVE_BLAS)
    std::fill(got.begin(), got.end(), 0.0f);
    ctx.rows.push_back({"OpenBLAS f32, " + threads, "cpu",
                        tinyllm::time_cpu("gemm/cpu_openblas/" + shape, [&] { tinyllm::cpu::gemm_blas(c_got, a, b); },
                                          bytes, flops, 1, ctx.repeats),
                        "", true, false});
    std::tie(text, ok) = check();
    ctx.rows.back().check = text;
    ctx.rows.back().agrees = ok;
#endif
}
