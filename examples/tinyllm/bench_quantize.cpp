// examples/tinyllm/bench_quantize.cpp — CPU rows of `tinyllm bench quantize`: one
// decoding step's linear layer, out = x W^T with x (1, 2048) and W (8192, 2048) (a
// Llama-3.2-1B MLP projection; --size sets the rows of x), with W in float32, in
// bfloat16 (cpu::linear_gemm) and quantized (cpu::linear_quantized_fused: int8, int4
// in groups of 128 and of 32). Decoding is bound by reading the weight, so the rows
// report the weight's bytes per second and the time against float32.
//
// A model's decode step reads every matrix once, from memory, not from the cache.
// Each format therefore cycles through copies of its weight totalling at least
// 256 MiB, so that every call reads its weight from memory as a step does (one
// 8192 x 2048 int4 matrix, 9 MiB, would otherwise sit in a large L3). Each row is
// checked against the float64 reference dequantize-then-linear of its own weight.
#include "registry.hpp"

#include <tinyllm/dtype.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/threads.hpp>
#include <tinyllm/timing.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;

namespace {

constexpr index_t quant_n = 8192, quant_k = 2048;
constexpr double cycle_bytes = 256.0 * 1024 * 1024;

int copies_for(double bytes_each) { return std::max(1, static_cast<int>(std::ceil(cycle_bytes / bytes_each))); }

std::string max_abs_text(const std::vector<float>& got, const tensor<float, 2>& want, bool& ok) {
    double err = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs(static_cast<double>(got[i]) - want.values()[i]);
        err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
    char text[48];
    std::snprintf(text, sizeof text, "max-abs %.1e", err);
    ok = err <= 1e-3;  // float sums over K = 2048 of terms ~1e-2: ~1e-5 expected; NaN fails
    return text;
}

}  // namespace

TINYLLM_BENCH("quantize", "decode linear layer x W^T, x (rows, 2048), W (8192, 2048): CPU float32/bf16/int8/int4 weights; CUDA bf16 cuBLAS, v1 dequantize + cuBLAS, v2 fused GEMV, v3 tensor-core GEMM; --size rows (default 1; simulated GPU: W 64 x 256)", 0) {
    const index_t M = ctx.size > 0 ? ctx.size : 1, N = quant_n, K = quant_k;
    tensor<float, 2> w({N, K}), x({M, K});
    tinyllm::cpu::fill_normal(w, 1, 0.0f, 0.02f);
    tinyllm::cpu::fill_uniform(x, 2, -1.0f, 1.0f);
    std::vector<float> got(static_cast<std::size_t>(M * N));
    const tensor_view<float, 2> out(got.data(), {M, N});
    const double flops = 2.0 * static_cast<double>(M * N * K);
    const std::string shape = std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);
    const std::string threads = std::to_string(tinyllm::cpu::num_threads()) + " threads";
    ctx.out << "weights cycle through copies totalling >= 256 MiB per format (read from memory, as in a decode step); "
            << threads << "\n";

    // float32: the baseline.
    {
        const int copies = copies_for(4.0 * static_cast<double>(N * K));
        std::vector<tensor<float, 2>> ws(static_cast<std::size_t>(copies), w);
        int next = 0;
        tensor<float, 2> want({M, N});
        tinyllm::cpu::linear(want.view(), x.view(), w.view(), {});
        ctx.rows.push_back({"f32 weights, linear_gemm, " + threads, "cpu",
                            tinyllm::time_cpu("quantize/cpu_f32/" + shape,
                                              [&] { tinyllm::cpu::linear_gemm(out, x.view(), ws[static_cast<std::size_t>(next++ % copies)].view(), {}); },
                                              4.0 * static_cast<double>(N * K), flops, 1, ctx.repeats),
                            "", true, true});
        bool ok = true;
        ctx.rows.back().check = max_abs_text(got, want, ok);
        ctx.rows.back().agrees = ok;
    }
    // bfloat16 weights.
    {
        tensor<tinyllm::bfloat16, 2> wb({N, K});
        tensor<float, 2> wide({N, K});
        for (index_t i = 0; i < N * K; ++i) {
            wb.values()[static_cast<std::size_t>(i)] = tinyllm::bfloat16(w.values()[static_cast<std::size_t>(i)]);
            wide.values()[static_cast<std::size_t>(i)] = tinyllm::to_float(wb.values()[static_cast<std::size_t>(i)]);
        }
        tensor<float, 2> want({M, N});
        tinyllm::cpu::linear(want.view(), x.view(), wide.view(), {});
        const int copies = copies_for(2.0 * static_cast<double>(N * K));
        std::vector<tensor<tinyllm::bfloat16, 2>> ws(static_cast<std::size_t>(copies), wb);
        int next = 0;
        ctx.rows.push_back({"bf16 weights, linear_gemm, " + threads, "cpu",
                            tinyllm::time_cpu("quantize/cpu_bf16/" + shape,
                                              [&] { tinyllm::cpu::linear_gemm(out, x.view(), tensor_view<const tinyllm::bfloat16, 2>(ws[static_cast<std::size_t>(next++ % copies)].view()), {}); },
                                              2.0 * static_cast<double>(N * K), flops, 1, ctx.repeats),
                            "", true, false});
        bool ok = true;
        ctx.rows.back().check = max_abs_text(got, want, ok);
        ctx.rows.back().agrees = ok;
    }
    // Quantized: int8, int4-g128, int4-g32 (round to nearest).
    for (const char* name : {"int8", "int4-g128", "int4-g32"}) {
        const tinyllm::quantized_matrix q = tinyllm::quantize_rtn(w.view(), tinyllm::parse_quant_spec(name));
        tensor<float, 2> want({M, N});
        tinyllm::linear_quantized(want.view(), x.view(), q, {});
        const double bytes = static_cast<double>(q.bytes());
        const int copies = copies_for(bytes);
        std::vector<tinyllm::quantized_matrix> qs(static_cast<std::size_t>(copies), q);
        int next = 0;
        ctx.rows.push_back({std::string(name) + " weights, linear_quantized_fused, " + threads, "cpu",
                            tinyllm::time_cpu("quantize/cpu_" + std::string(name) + "/" + shape,
                                              [&] { tinyllm::cpu::linear_quantized_fused(out, x.view(), qs[static_cast<std::size_t>(next++ % copies)], {}); },
                                              bytes, flops, 1, ctx.repeats),
                            "", true, false});
        bool ok = true;
        ctx.rows.back().check = max_abs_text(got, want, ok);
        ctx.rows.back().agrees = ok;
    }
}
