// examples/tinyllm/bench_quantize.cu — CUDA rows of `tinyllm bench quantize`: a
// decoding step's linear layer out = x W^T, x (rows, 2048) in bfloat16 (--size
// rows, default 1), W (8192, 2048) as a dense bfloat16 matrix (cuBLAS through
// cuda::linear, what a bf16 model does today) and quantized: v1 dequantize +
// cuBLAS (int4-g128), v2 fused GEMV (int8, int4-g128, int4-g32; rows <= 8) and v3
// tensor-core dequantize-GEMM (int8, int4-g128; the prefill rung: try --size 512). On the
// simulated GPU: W (64, 256). GB/s counts the weight's stored bytes (scales and
// zero points included), the quantity a decode step is bound by; each row is
// checked against the float64 reference of its own weight (bfloat16 output:
// 1e-2 absolute + 1e-2 relative).
#include "registry.hpp"

#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/quantize.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/quantize.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;

namespace {

std::pair<std::string, bool> agreement(const tc::device_buffer<bfloat16>& got, const tensor<float, 2>& want) {
    const std::vector<bfloat16> host = tc::to_host(got);
    double err = 0;
    bool ok = host.size() == want.values().size();
    for (std::size_t i = 0; ok && i < host.size(); ++i) {
        const double e = std::fabs(static_cast<double>(tinyllm::to_float(host[i])) - want.values()[i]);
        if (!(e <= 1e-2 + 1e-2 * std::fabs(want.values()[i]))) ok = false;
        err = std::isfinite(e) ? std::max(err, e) : INFINITY;
    }
    char text[48];
    std::snprintf(text, sizeof text, "max-abs %.1e", err);
    return {text, ok};
}

}  // namespace

TINYLLM_BENCH("quantize", "decode linear layer x W^T, x (rows, 2048), W (8192, 2048): CPU float32/bf16/int8/int4 weights; CUDA bf16 cuBLAS, v1 dequantize + cuBLAS, v2 fused GEMV, v3 tensor-core GEMM; --size rows (default 1; simulated GPU: W 64 x 256)", 1) {
    if (!ctx.gpu_available) return;
    const index_t M = ctx.size > 0 ? ctx.size : 1, N = ctx.simulated ? 64 : 8192, K = ctx.simulated ? 256 : 2048;
    tensor<float, 2> w({N, K}), x({M, K});
    tinyllm::cpu::fill_normal(w, 1, 0.0f, 0.02f);
    tinyllm::cpu::fill_uniform(x, 2, -1.0f, 1.0f);
    for (auto& v : x.values()) v = tinyllm::to_float(tinyllm::from_float<bfloat16>(v));
    std::vector<bfloat16> xb(x.values().size()), wb(w.values().size());
    for (std::size_t i = 0; i < xb.size(); ++i) xb[i] = tinyllm::from_float<bfloat16>(x.values()[i]);
    for (std::size_t i = 0; i < wb.size(); ++i) wb[i] = tinyllm::from_float<bfloat16>(w.values()[i]);
    const auto dx = tc::to_device(xb);
    const auto dw = tc::to_device(wb);
    tc::device_buffer<bfloat16> dout(static_cast<std::size_t>(M * N)), scratch;
    const auto xv = dx.view(extents<2>{M, K});
    const auto ov = dout.view(extents<2>{M, N});
    tc::cublas_handle handle;
    tc::timing_options options;
    options.repeats = ctx.repeats;
    const double flops = 2.0 * static_cast<double>(M * N * K);
    const std::string shape = std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);

    {  // dense bfloat16 weights through cuBLAS: the baseline
        tensor<float, 2> wide({N, K}), want({M, N});
        for (std::size_t i = 0; i < wb.size(); ++i) wide.values()[i] = tinyllm::to_float(wb[i]);
        tinyllm::cpu::linear(want.view(), x.view(), wide.view(), {});
        dout.poison();
        tc::linear<bfloat16>(ov, xv, dw.view(extents<2>{N, K}), {}, handle);
        const auto [text, ok] = agreement(dout, want);
        ctx.rows.push_back({"bf16 dense, cuBLAS", "cuda",
                            tc::time_gpu("quantize/cuda_bf16_cublas/" + shape,
                                         [&] { tc::linear<bfloat16>(ov, xv, dw.view(extents<2>{N, K}), {}, handle); },
                                         2.0 * static_cast<double>(N * K), flops, options),
                            text, ok, true});
    }
    struct variant {
        const char* format;
        int rung;  // 1 dequantize + cuBLAS, 2 fused GEMV (rows <= 8), 3 tensor-core dequantize-GEMM
    };
    for (const variant& v : {variant{"int4-g128", 1}, variant{"int8", 2}, variant{"int4-g128", 2}, variant{"int4-g32", 2},
                             variant{"int8", 3}, variant{"int4-g128", 3}}) {
        if (v.rung == 2 && M > tc::detail::gemv_max_rows) continue;  // the GEMV is for decoding
        const tinyllm::quantized_matrix q = tinyllm::quantize_rtn(w.view(), tinyllm::parse_quant_spec(v.format));
        tensor<float, 2> want({M, N});
        tinyllm::linear_quantized(want.view(), x.view(), q);
        const tc::device_quantized_matrix dq = tc::to_device(q);
        const auto run = [&] {
            if (v.rung == 2) tc::linear_quantized_gemv<bfloat16>(ov, xv, dq, {});
            else if (v.rung == 3) tc::linear_quantized_mma<bfloat16>(ov, xv, dq, {});
            else tc::linear_dequantize_gemm<bfloat16>(ov, xv, dq, {}, scratch, handle);
        };
        dout.poison();
        run();
        const auto [text, ok] = agreement(dout, want);
        static const char* const names[] = {"", "v1 dequantize + cuBLAS ", "v2 fused GEMV ", "v3 tensor-core GEMM "};
        static const char* const keys[] = {"", "v1_dequant_", "v2_gemv_", "v3_mma_"};
        ctx.rows.push_back({std::string(names[v.rung]) + v.format, "cuda",
                            tc::time_gpu("quantize/cuda_" + std::string(keys[v.rung]) + v.format + "/" + shape, run,
                                         static_cast<double>(q.bytes()), flops, options),
                            text, ok, false});
    }
}
