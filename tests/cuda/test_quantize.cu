// CUDA tests for the quantized linear layer (cuda/tinyllm/cuda/quantize.cuh)
// against its CPU reference (include/tinyllm/quantize.hpp, itself checked in
// tests/test_quantize.cpp): the device dequantization bit for bit, v1
// (dequantize + cuBLAS) and v2 (fused GEMV) against the float64 reference
// dequantize-then-linear, for int8, int4-g32/g64/g128, float and bfloat16
// activations, with and without bias; v3 (tensor-core dequantize-GEMM) on
// prefill shapes that are not multiples of its 64 x 64 x 32 tiles; the decode
// GEMVs with epilogues (SwiGLU, bias + GELU, RoPE v4, norm v3's residual add +
// norm) against the unfused steps they replace; the rejections.
//
// Inputs are fresh random numbers each run; outputs are poisoned (NaN) first.
// Tolerances, |got - ref| <= abs + rel |ref| plus relative L2:
//   float        float sums of K = 256 products of |x| <= 1 and |w| ~ 0.05:
//                abs 1e-4 + rel 1e-4, rel-L2 1e-5 (observed ~1e-7).
//   bfloat16     x is rounded to bfloat16 before the reference sees it; the output
//                is rounded to bfloat16 (relative 2^-9) and v1 also rounds W^
//                to bfloat16 before cuBLAS: abs 1e-2 + rel 1e-2, rel-L2 1e-2.
//   v1 bf16, v3  round W^ (v3: and x, whatever T is) to bfloat16 before the
//                products; they are compared with a float64 reference computed on
//                those same rounded operands, so what is left is float summation
//                and the output's rounding: T's tolerance above. (Against the
//                unrounded reference the error is up to 2^-8 sum |x w|, which
//                outlier rows and unit-variance weights push past any fixed bound.)
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/cuda/quantize.cuh>
#include <tinyllm/quantize.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::bfloat16;
using tinyllm::index_t;
using tinyllm::quant_format;
using tinyllm::quant_spec;
using tinyllm::quantized_matrix;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::contains;
using tinyllm_test::download;
using tinyllm_test::tolerance;
using tinyllm_test::upload;

namespace {

std::uint64_t seed_for(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

std::vector<quant_spec> all_specs() {
    return {{quant_format::int8, 0}, {quant_format::int4, 32}, {quant_format::int4, 64}, {quant_format::int4, 128}};
}

// (rows, cols) uniform in [lo, hi), rounded to T (returned as float).
template <class T>
tensor<float, 2> random_as(index_t rows, index_t cols, std::uint64_t which, float lo, float hi) {
    tensor<float, 2> t({rows, cols});
    cpu::fill_uniform(t, seed_for(which), lo, hi);
    for (auto& v : t.values()) v = tinyllm::to_float(tinyllm::from_float<T>(v));
    return t;
}

template <class T>
tolerance tolerance_for() {
    if constexpr (std::is_same_v<T, float>) return {1e-4, 1e-4, 1e-5};
    else return {1e-2, 1e-2, 1e-2};
}

// out = x W^^T + bias in float64 with x and W^ rounded to bfloat16 first (round_x:
// also x), and bias as given: what v1 (W^ only) and v3 (both) multiply.
std::vector<float> reference_bf16(const tensor<float, 2>& x, const quantized_matrix& q,
                                  tensor_view<const float, 1> bias, bool round_x) {
    const auto r = [](float v) { return tinyllm::to_float(tinyllm::from_float<bfloat16>(v)); };
    const index_t M = x.extent(0), K = x.extent(1), N = q.rows;
    std::vector<float> out(static_cast<std::size_t>(M * N));
    for (index_t m = 0; m < M; ++m)
        for (index_t n = 0; n < N; ++n) {
            double acc = bias.size() ? bias(n) : 0.0;
            for (index_t k = 0; k < K; ++k) acc += double(round_x ? r(x(m, k)) : x(m, k)) * double(r(q.weight(n, k)));
            out[static_cast<std::size_t>(m * N + n)] = static_cast<float>(acc);
        }
    return out;
}

template <class T>
void check_layer(index_t rows, index_t N, index_t K, const quant_spec& spec, bool with_bias, std::uint64_t which) {
    tensor<float, 2> w({N, K});
    cpu::fill_normal(w, seed_for(which), 0.0f, 0.05f);
    for (index_t k = 0; k < K; k += 41) w(N / 2, k) *= 30.0f;  // outliers in one row
    const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
    const tensor<float, 2> x = random_as<T>(rows, K, which + 1, -1.0f, 1.0f);
    const tensor<float, 2> b = random_as<T>(1, N, which + 2, -1.0f, 1.0f);
    const tensor_view<const float, 1> bias_view(b.data(), {with_bias ? N : 0});
    tensor<float, 2> want({rows, N});
    tinyllm::linear_quantized(want.view(), x.view(), q, bias_view);

    const tc::device_quantized_matrix dw = tc::to_device(q);
    auto dx = upload<T>(x.values());
    auto dbias = upload<T>(std::vector<float>(b.values().begin(), b.values().begin() + (with_bias ? N : 0)));
    tc::device_buffer<T> dout(static_cast<std::size_t>(rows * N));
    const tensor_view<const T, 2> xv = dx.view(tinyllm::extents<2>{rows, K});
    const tensor_view<const T, 1> bv(dbias.data(), {with_bias ? N : 0});
    const std::string what = std::string(tinyllm::dtype_name<T>()) + " " + spec.name() + " rows " +
                             std::to_string(rows) + " N " + std::to_string(N) + (with_bias ? " bias" : "");

    dout.poison();
    tc::linear_quantized_gemv<T>(dout.view(tinyllm::extents<2>{rows, N}), xv, dw, bv);
    TINYLLM_REQUIRE_CLOSE(download(dout), want.values(), tolerance_for<T>(), "v2 fused GEMV " + what);

    tc::cublas_handle handle;
    tc::device_buffer<T> scratch;
    dout.poison();
    tc::linear_dequantize_gemm<T>(dout.view(tinyllm::extents<2>{rows, N}), xv, dw, bv, scratch, handle);
    const std::vector<float> want_v1 = std::is_same_v<T, float> ? want.values() : reference_bf16(x, q, bias_view, false);
    TINYLLM_REQUIRE_CLOSE(download(dout), want_v1, tolerance_for<T>(), "v1 dequantize + cuBLAS " + what);

    dout.poison();
    tc::linear_quantized_mma<T>(dout.view(tinyllm::extents<2>{rows, N}), xv, dw, bv);
    TINYLLM_REQUIRE_CLOSE(download(dout), reference_bf16(x, q, bias_view, true), tolerance_for<T>(),
                          "v3 tensor-core GEMM " + what);
    // And the price of the bfloat16 operands, against the unrounded reference: rel-L2 only.
    TINYLLM_REQUIRE_CLOSE(download(dout), want.values(), (tolerance{1e9, 0, 1e-2}), "v3 against float operands " + what);
}

// v3 on a prefill shape: rows and N not multiples of 64, K several 32-input steps.
template <class T>
void check_prefill(index_t rows, index_t N, index_t K, const quant_spec& spec, bool with_bias, std::uint64_t which) {
    tensor<float, 2> w({N, K});
    cpu::fill_normal(w, seed_for(which), 0.0f, 0.05f);
    const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
    const tensor<float, 2> x = random_as<T>(rows, K, which + 1, -1.0f, 1.0f);
    const tensor<float, 2> b = random_as<T>(1, N, which + 2, -1.0f, 1.0f);
    const tensor_view<const float, 1> bias_view(b.data(), {with_bias ? N : 0});
    const std::vector<float> want = reference_bf16(x, q, bias_view, true);
    const tc::device_quantized_matrix dw = tc::to_device(q);
    auto dx = upload<T>(x.values());
    auto dbias = upload<T>(std::vector<float>(b.values().begin(), b.values().begin() + (with_bias ? N : 0)));
    tc::device_buffer<T> dout(static_cast<std::size_t>(rows * N));
    dout.poison();
    tc::linear_quantized_mma<T>(dout.view(tinyllm::extents<2>{rows, N}), dx.view(tinyllm::extents<2>{rows, K}), dw,
                                tensor_view<const T, 1>(dbias.data(), {with_bias ? N : 0}));
    TINYLLM_REQUIRE_CLOSE(download(dout), want, tolerance_for<T>(),
                          "v3 tensor-core GEMM " + std::string(tinyllm::dtype_name<T>()) + " " + spec.name() + " (" +
                              std::to_string(rows) + ", " + std::to_string(N) + ", " + std::to_string(K) + ")");
}

}  // namespace

// The quantized pair GEMVs of a decode step (detail::swiglu_gemv,
// detail::bias_activate_gemv with quantized weights) against what they fuse,
// which must give the same bits: v2 (linear_quantized_gemv) for each matrix,
// then swiglu / bias_activate; and RoPE v4's epilogue on the quantized GEMV
// (qkv_rope_epilogue, no rotation: GPT-2's way) against v2 with the bias, whose
// sums it shares (the epilogue adds the bias before its one rounding, v2 too).
template <class T>
void check_pair_gemv(index_t rows, index_t N, index_t K, const quant_spec& spec, std::uint64_t which) {
    tensor<float, 2> wg({N, K}), wu({N, K});
    cpu::fill_normal(wg, seed_for(which), 0.0f, 0.05f);
    cpu::fill_normal(wu, seed_for(which + 1), 0.0f, 0.05f);
    const quantized_matrix qg = tinyllm::quantize_rtn(wg.view(), spec), qu = tinyllm::quantize_rtn(wu.view(), spec);
    const tensor<float, 2> x = random_as<T>(rows, K, which + 2, -1.0f, 1.0f);
    const tensor<float, 2> b = random_as<T>(1, N, which + 3, -1.0f, 1.0f);
    const tc::device_quantized_matrix dg = tc::to_device(qg), du = tc::to_device(qu);
    auto dx = upload<T>(x.values());
    auto dbias = upload<T>(b.values());
    const auto n = static_cast<std::size_t>(rows * N);
    tc::device_buffer<T> dout(n), da(n), db(n);
    const tinyllm::extents<2> shape{rows, N};
    const tensor_view<const T, 2> xv = dx.view(tinyllm::extents<2>{rows, K});
    const tensor_view<const T, 1> bv = dbias.view(tinyllm::extents<1>{N});
    const std::string what = std::string(tinyllm::dtype_name<T>()) + " " + spec.name() + " rows " +
                             std::to_string(rows) + " N " + std::to_string(N) + " K " + std::to_string(K);
    const tolerance bits{0, 0, 0};

    dout.poison();
    tc::detail::swiglu_gemv<T>(dout.view(shape), xv, dg, du);
    da.poison();
    db.poison();
    tc::linear_quantized_gemv<T>(da.view(shape), xv, dg, {});
    tc::linear_quantized_gemv<T>(db.view(shape), xv, du, {});
    tc::swiglu<T>(da.view(shape), da.view(shape), db.view(shape));
    TINYLLM_REQUIRE_CLOSE(download(dout), download(da), bits, "quantized swiglu_gemv vs v2 + swiglu, " + what);

    dout.poison();
    tc::detail::bias_activate_gemv<T>(dout.view(shape), xv, dg, bv, tinyllm::activation::gelu_tanh);
    da.poison();
    tc::linear_quantized_gemv<T>(da.view(shape), xv, dg, {});
    tc::bias_activate<T>(da.view(shape), da.view(shape), bv, tinyllm::activation::gelu_tanh);
    TINYLLM_REQUIRE_CLOSE(download(dout), download(da), bits, "quantized bias_activate_gemv vs v2 + bias_activate, " + what);

    // RoPE v4's epilogue, unrotated: one head each for q, k and v (Dh = N / 3, when 3 divides N).
    if (N % 3 == 0) {
        const index_t Dh = N / 3, capacity = 4;
        tc::device_buffer<T> keys(static_cast<std::size_t>(rows * capacity * Dh)),
            values(static_cast<std::size_t>(rows * capacity * Dh));
        const std::vector<std::int32_t> start(static_cast<std::size_t>(rows), 1), count(static_cast<std::size_t>(rows), 1);
        const auto d_start = tc::to_device(start), d_count = tc::to_device(count);
        const tc::detail::contiguous_cache_rows cache_rows{1, capacity, d_start.data(), d_count.data()};
        const auto epi = tc::detail::make_qkv_rope_epilogue<T>(dout.data(), keys.data(), values.data(), cache_rows,
                                                               rows, dbias.data(), 1, 1, Dh, nullptr, nullptr);
        dout.poison();
        keys.poison();
        values.poison();
        tc::detail::launch_quantized_pair_gemv<T>("test", epi, dx.data(), rows, K, dg, dg, epi.units(), nullptr);
        da.poison();
        tc::linear_quantized_gemv<T>(da.view(shape), xv, dg, bv);
        const std::vector<float> want = download(da);
        TINYLLM_REQUIRE_CLOSE(download(dout), want, bits, "quantized RoPE v4 epilogue (unrotated) vs v2, " + what);
        // The cache: row r's k and v (columns Dh..2 Dh and 2 Dh..3 Dh) at position start = 1 of
        // sequence r, every other position left as it was (poisoned).
        const std::vector<float> got_k = download(keys), got_v = download(values);
        std::vector<float> want_k(got_k.size(), std::nanf("")), want_v(got_v.size(), std::nanf(""));
        for (index_t r = 0; r < rows; ++r)
            for (index_t d = 0; d < Dh; ++d) {
                const auto at = static_cast<std::size_t>((r * capacity + 1) * Dh + d);
                want_k[at] = want[static_cast<std::size_t>(r * N + Dh + d)];
                want_v[at] = want[static_cast<std::size_t>(r * N + 2 * Dh + d)];
            }
        const auto same = [](const std::vector<float>& g, const std::vector<float>& w) {
            if (g.size() != w.size()) return false;
            for (std::size_t i = 0; i < g.size(); ++i)
                if (!(g[i] == w[i] || (std::isnan(g[i]) && std::isnan(w[i])))) return false;
            return true;
        };
        CHECK(same(got_k, want_k));
        CHECK(same(got_v, want_v));
    }
}

TEST_CASE("cuda quantized pair GEMVs (SwiGLU, bias + GELU, RoPE v4's epilogue) give the unfused steps' bits",
          "[quantize][gemv]") {
    std::uint64_t which = 5000;
    for (const quant_spec& spec : all_specs())
        for (const index_t rows : {1, 3, 8})
            for (const index_t N : {7, 48}) {
                check_pair_gemv<float>(rows, N, 256, spec, which += 10);
                check_pair_gemv<bfloat16>(rows, N, 256, spec, which += 10);
            }
    // Rejections: more rows than the GEMV takes, a K the quantized GEMV cannot read.
    tensor<float, 2> w({8, 256});
    cpu::fill_normal(w, seed_for(1), 0.0f, 0.05f);
    const tc::device_quantized_matrix dw = tc::to_device(tinyllm::quantize_rtn(w.view(), {quant_format::int8, 0}));
    tc::device_buffer<float> x(9 * 256), out(9 * 8);
    CHECK_THROWS_WITH(tc::detail::swiglu_gemv<float>(out.view(tinyllm::extents<2>{9, 8}),
                                                     x.view(tinyllm::extents<2>{9, 256}), dw, dw),
                      contains("swiglu_gemv: 9 rows; the quantized GEMV takes at most 8"));
    tensor<float, 2> w_odd({8, 40});
    cpu::fill_normal(w_odd, seed_for(2), 0.0f, 0.05f);
    const tc::device_quantized_matrix dodd = tc::to_device(tinyllm::quantize_rtn(w_odd.view(), {quant_format::int8, 0}));
    CHECK_THROWS_WITH(tc::detail::bias_activate_gemv<float>(tensor_view<float, 2>(out.data(), {1, 8}),
                                                            tensor_view<const float, 2>(x.data(), {1, 40}), dodd,
                                                            tensor_view<const float, 1>{}, tinyllm::activation::identity),
                      contains("the quantized GEMV needs K a multiple of 16"));
}

// norm.cuh's v3 on a quantized projection (detail::residual_add_*_norm_gemv with
// a device_quantized_matrix): x (rows, D) += in W^^T (+ bias), out = norm(x), in
// one launch. Against v2 (linear_quantized_gemv with the bias) then
// residual_add_*_norm: the stream must be the same bits (the same sums, the bias
// added before the one rounding, the same add); out the same norm of the same
// stream, up to the order of its block reduction (T's tolerance). The arrival
// counter must be back at zero, so a second launch gives the same bits.
template <class T, bool Layer>
void check_residual_norm_gemv(index_t rows, index_t D, index_t K, const quant_spec& spec, bool with_bias,
                              std::uint64_t which) {
    tensor<float, 2> w({D, K});
    cpu::fill_normal(w, seed_for(which), 0.0f, 0.05f);
    const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
    const tensor<float, 2> x = random_as<T>(rows, D, which + 1, -2.0f, 2.0f);
    const tensor<float, 2> in = random_as<T>(rows, K, which + 2, -1.0f, 1.0f);
    const tensor<float, 2> pb = random_as<T>(1, D, which + 3, -1.0f, 1.0f);
    const tensor<float, 2> gamma = random_as<T>(1, D, which + 4, 0.5f, 1.5f);
    const tensor<float, 2> beta = random_as<T>(1, D, which + 5, -0.5f, 0.5f);
    const tc::device_quantized_matrix dq = tc::to_device(q);
    auto dx = upload<T>(x.values()), dx2 = upload<T>(x.values()), din = upload<T>(in.values());
    auto dpb = upload<T>(pb.values()), dgamma = upload<T>(gamma.values()), dbeta = upload<T>(beta.values());
    const auto n = static_cast<std::size_t>(rows * D);
    tc::device_buffer<T> dout(n), ddelta(n), dref(n);
    tc::device_buffer<unsigned> arrivals(1);
    TINYLLM_CUDA_CHECK(cudaMemset(arrivals.data(), 0, sizeof(unsigned)));
    const tinyllm::extents<2> shape{rows, D};
    const tensor_view<T, 2> X = dx.view(shape), X2 = dx2.view(shape);
    const tensor_view<const T, 2> IN = din.view(tinyllm::extents<2>{rows, K});
    const tensor_view<const T, 1> PB(dpb.data(), {with_bias ? D : 0});
    const tensor_view<const T, 1> G = dgamma.view(tinyllm::extents<1>{D}), B = dbeta.view(tinyllm::extents<1>{D});
    const float eps = 1e-5f;
    const std::string what = std::string(tinyllm::dtype_name<T>()) + " " + spec.name() + (Layer ? " layer" : " rms") +
                             " rows " + std::to_string(rows) + " D " + std::to_string(D) + (with_bias ? " bias" : "");
    const auto fused = [&] {
        if constexpr (Layer)
            tc::detail::residual_add_layer_norm_gemv<T>(dout.view(shape), X, IN, dq, PB, G, B, eps, arrivals.data());
        else tc::detail::residual_add_rms_norm_gemv<T>(dout.view(shape), X, IN, dq, PB, G, eps, arrivals.data());
    };
    const tolerance bits{0, 0, 0};

    dout.poison();
    fused();
    const std::vector<float> got_stream = download(dx), got_out = download(dout);
    REQUIRE(tc::to_host(arrivals)[0] == 0u);

    tc::linear_quantized_gemv<T>(ddelta.view(shape), IN, dq, PB);
    dref.poison();
    if constexpr (Layer) tc::residual_add_layer_norm<T>(dref.view(shape), X2, X2, ddelta.view(shape), G, B, eps);
    else tc::residual_add_rms_norm<T>(dref.view(shape), X2, X2, ddelta.view(shape), G, eps);
    TINYLLM_REQUIRE_CLOSE(got_stream, download(dx2), bits, "quantized v3 stream vs v2 GEMV + residual norm, " + what);
    TINYLLM_REQUIRE_CLOSE(got_out, download(dref), tolerance_for<T>(),
                          "quantized v3 out vs v2 GEMV + residual norm, " + what);

    // Again from the same x: the same bits.
    const auto fresh = upload<T>(x.values());
    TINYLLM_CUDA_CHECK(cudaMemcpy(dx.data(), fresh.data(), n * sizeof(T), cudaMemcpyDeviceToDevice));
    dout.poison();
    fused();
    TINYLLM_REQUIRE_CLOSE(download(dx), got_stream, bits, "quantized v3 stream, second launch, " + what);
    TINYLLM_REQUIRE_CLOSE(download(dout), got_out, bits, "quantized v3 out, second launch, " + what);
    REQUIRE(tc::to_host(arrivals)[0] == 0u);
}

TEST_CASE("cuda quantized projection + residual add + norm in one GEMV (norm v3) gives v2's stream bit for bit",
          "[quantize][gemv][norm]") {
    std::uint64_t which = 6000;
    for (const quant_spec& spec : all_specs())
        for (const index_t rows : {1, 3, 8})
            for (const index_t D : {7, 48})
                for (const bool with_bias : {false, true}) {
                    check_residual_norm_gemv<float, true>(rows, D, 256, spec, with_bias, which += 10);
                    check_residual_norm_gemv<float, false>(rows, D, 256, spec, with_bias, which += 10);
                    check_residual_norm_gemv<bfloat16, true>(rows, D, 256, spec, with_bias, which += 10);
                    check_residual_norm_gemv<bfloat16, false>(rows, D, 256, spec, with_bias, which += 10);
                }
    // A K the quantized GEMV cannot read is refused before launching.
    tensor<float, 2> w_odd({8, 40});
    cpu::fill_normal(w_odd, seed_for(3), 0.0f, 0.05f);
    const tc::device_quantized_matrix dodd = tc::to_device(tinyllm::quantize_rtn(w_odd.view(), {quant_format::int8, 0}));
    tc::device_buffer<float> x(8), in(40), g(8), out(8);
    tc::device_buffer<unsigned> arrivals(1);
    TINYLLM_CUDA_CHECK(cudaMemset(arrivals.data(), 0, sizeof(unsigned)));
    CHECK_THROWS_WITH(tc::detail::residual_add_rms_norm_gemv<float>(
                          out.view(tinyllm::extents<2>{1, 8}), x.view(tinyllm::extents<2>{1, 8}),
                          tensor_view<const float, 2>(in.data(), {1, 40}), dodd, tensor_view<const float, 1>{},
                          tensor_view<const float, 1>(g.data(), {8}), 1e-5f, arrivals.data()),
                      contains("residual_add_rms_norm_gemv: int8 / int8 with K = 40 inputs; the quantized GEMV needs K "
                               "a multiple of 16"));
}

TEST_CASE("cuda::dequantize gives the CPU's dequantized weights bit for bit", "[quantize]") {
    const index_t N = 37, K = 256;
    tensor<float, 2> w({N, K});
    cpu::fill_normal(w, seed_for(1));
    for (const auto& spec : all_specs()) {
        const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
        const tc::device_quantized_matrix dw = tc::to_device(q);
        tc::device_buffer<float> out(static_cast<std::size_t>(N * K));
        tc::device_buffer<bfloat16> out16(static_cast<std::size_t>(N * K));
        out.poison();
        out16.poison();
        tc::dequantize<float>(out.view(tinyllm::extents<2>{N, K}), dw);
        tc::dequantize<bfloat16>(out16.view(tinyllm::extents<2>{N, K}), dw);
        const std::vector<float> got = tc::to_host(out);
        const std::vector<bfloat16> got16 = tc::to_host(out16);
        index_t differ = 0;
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) {
                const float want = q.weight(n, k);
                const std::size_t i = static_cast<std::size_t>(n * K + k);
                if (!(got[i] == want) || got16[i].bits != tinyllm::from_float<bfloat16>(want).bits) ++differ;
            }
        INFO(spec.name() << ": " << differ << " of " << N * K << " elements differ");
        CHECK(differ == 0);
    }
}

TEST_CASE("cuda quantized linear: v1 dequantize + cuBLAS and v2 fused GEMV against the reference", "[quantize]") {
    std::uint64_t which = 10;
    for (const auto& spec : all_specs()) {
        for (const index_t rows : {index_t{1}, index_t{3}, index_t{8}}) {
            check_layer<float>(rows, 37, 256, spec, rows != 3, which += 3);
        }
        check_layer<bfloat16>(2, 45, 384, spec, true, which += 3);
    }
    SECTION("v3 on prefill shapes") {
        for (const auto& spec2 : all_specs()) {
            check_prefill<bfloat16>(100, 70, 128, spec2, true, which += 3);
            check_prefill<float>(65, 129, 256, spec2, false, which += 3);
        }
    }
    SECTION("v1 takes shapes the fused kernel does not: K = 20, int4 groups of 10") {
        tensor<float, 2> w({9, 20});
        cpu::fill_normal(w, seed_for(90));
        const quantized_matrix q = tinyllm::quantize_rtn(w.view(), {quant_format::int4, 10});
        const tensor<float, 2> x = random_as<float>(11, 20, 91, -1.0f, 1.0f);
        tensor<float, 2> want({11, 9});
        tinyllm::linear_quantized(want.view(), x.view(), q);
        const auto dw = tc::to_device(q);
        auto dx = upload<float>(x.values());
        tc::device_buffer<float> dout(11 * 9), scratch;
        dout.poison();
        tc::cublas_handle handle;
        tc::linear_dequantize_gemm<float>(dout.view(tinyllm::extents<2>{11, 9}), dx.view(tinyllm::extents<2>{11, 20}), dw,
                                          {}, scratch, handle);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), want.values(), tolerance{1e-4, 1e-4, 1e-5}, "v1 int4-g10 K=20");
        dout.poison();  // v3 takes it too (the last 32-input step is zero-filled past K)
        tc::linear_quantized_mma<float>(dout.view(tinyllm::extents<2>{11, 9}), dx.view(tinyllm::extents<2>{11, 20}), dw, {});
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), reference_bf16(x, q, {}, true), tolerance{1e-4, 1e-4, 1e-5},
                              "v3 int4-g10 K=20");
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(dout.view(tinyllm::extents<2>{11, 9}),
                                                           dx.view(tinyllm::extents<2>{11, 20}), dw, {}),
                          contains("linear_quantized_gemv: 11 rows of x; the fused GEMV takes at most 8"));
        auto dx1 = upload<float>(std::vector<float>(20, 0.5f));
        tc::device_buffer<float> dout1(9);
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(dout1.view(tinyllm::extents<2>{1, 9}),
                                                           dx1.view(tinyllm::extents<2>{1, 20}), dw, {}),
                          contains("int4-g10 with K = 20 inputs; the fused GEMV needs K a multiple of 32"));
    }
    SECTION("shape errors") {
        tensor<float, 2> w({8, 64});
        cpu::fill_normal(w, seed_for(95));
        const auto dw = tc::to_device(tinyllm::quantize_rtn(w.view(), {}));
        tc::device_buffer<float> dx(2 * 32), dout(2 * 8), dbias(7);
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(dout.view(tinyllm::extents<2>{2, 8}),
                                                           dx.view(tinyllm::extents<2>{2, 32}), dw, {}),
                          contains("x has 32 features, the quantized weight (8 x 64) takes 64"));
        tc::device_buffer<float> dx64(2 * 64);
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(dout.view(tinyllm::extents<2>{2, 8}),
                                                           dx64.view(tinyllm::extents<2>{2, 64}), dw,
                                                           dbias.view(tinyllm::extents<1>{7})),
                          contains("bias has 7 elements but the layer has 8 outputs"));
        // out over x's second row (every output reads all of its row) or over the bias:
        // refused by v1, v2 and v3 alike, before any launch.
        tc::device_buffer<float> shared(2 * 64 + 8);
        const tensor_view<const float, 2> x_in(shared.data(), {2, 64});
        const tensor_view<float, 2> out_over_x(shared.data() + 64, {2, 8});
        tc::device_buffer<float> scratch;
        tc::cublas_handle handle;
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(out_over_x, x_in, dw, {}),
                          contains("linear_quantized_gemv: out must not share memory with x"));
        CHECK_THROWS_WITH(tc::linear_quantized_mma<float>(out_over_x, x_in, dw, {}),
                          contains("linear_quantized_mma: out must not share memory with x"));
        CHECK_THROWS_WITH(tc::linear_dequantize_gemm<float>(out_over_x, x_in, dw, {}, scratch, handle),
                          contains("linear_dequantize_gemm: out must not share memory with x"));
        const tensor_view<float, 2> out_apart(shared.data() + 2 * 64 - 8, {1, 8});
        CHECK_THROWS_WITH(
            tc::linear_quantized_gemv<float>(out_apart, tensor_view<const float, 2>(dx64.data(), {1, 64}), dw,
                                             tensor_view<const float, 1>(shared.data() + 2 * 64 - 4, {8})),
            contains("out must not share memory with bias"));
    }
    SECTION("a device matrix whose parts no longer agree with its shape") {
        // device_quantized_matrix is an aggregate: changed after to_device, it was used as it
        // stood (an int4 group of 0 divided by zero; wider columns were read past the data).
        tensor<float, 2> w({2, 32});
        cpu::fill_normal(w, seed_for(96));
        tc::device_buffer<float> dx(32), dout(2);
        const auto x = dx.view(tinyllm::extents<2>{1, 32});
        const auto out = dout.view(tinyllm::extents<2>{1, 2});
        auto dw = tc::to_device(tinyllm::quantize_rtn(w.view(), {quant_format::int4, 32}));
        dw.spec.group = 0;
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(out, x, dw, {}), contains("has a group size its columns do not allow"));
        dw = tc::to_device(tinyllm::quantize_rtn(w.view(), {quant_format::int4, 32}));
        dw.cols = 64;
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(out, tensor_view<const float, 2>(nullptr, {1, 64}), dw, {}),
                          contains("needs 64 bytes of data, its buffer holds 32"));
        dw = tc::to_device(tinyllm::quantize_rtn(w.view(), {quant_format::int4, 32}));
        dw.rows = 6;
        tc::device_buffer<float> dout6(6);
        CHECK_THROWS_WITH(tc::linear_quantized_gemv<float>(dout6.view(tinyllm::extents<2>{1, 6}), x, dw, {}),
                          contains("needs 96 bytes of data, its buffer holds 32"));
    }
}
