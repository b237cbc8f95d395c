// Tests for weight-only quantization (tinyllm/quantize.hpp): the int8 and int4
// formats' round trip within their stated error bound on random matrices with
// outliers, all-zero groups, one-signed groups, tiny (subnormal) and huge
// weights; the int4 packing byte for byte; the quantized linear layer against
// the float layer within the bound the weights' errors allow; GPTQ against
// round-to-nearest on correlated inputs (it must lower the layer's output
// error); every bad input. The quantized model: its checkpoints written and
// read back bit for bit, refused where config and tensors disagree; GPTQ on the
// model's own activations against round to nearest.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"
#include "support/temp_dir.hpp"

#include <tinyllm/ffn.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/quantize_model.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

using tinyllm::index_t;
using tinyllm::quant_format;
using tinyllm::quant_spec;
using tinyllm::quantized_matrix;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::contains;

namespace cpu = tinyllm::cpu;

namespace {

std::vector<quant_spec> all_specs() {
    return {{quant_format::int8, 0}, {quant_format::int4, 32}, {quant_format::int4, 64}, {quant_format::int4, 128}};
}

// A weight (N, K) of normal values times `magnitude`, input `which` of this run; with
// outliers (every 97th element x100), an all-zero stretch of 128 inputs in row 1, a
// row of only positive and a row of only negative values.
tensor<float, 2> test_weight(index_t N, index_t K, float magnitude, std::uint64_t which) {
    tensor<float, 2> w({N, K});
    cpu::fill_normal(w, tinyllm_test::test_seed() + 7919 * which, 0.0f, 1.0f);
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k) {
            float v = w(n, k);
            if ((n * K + k) % 97 == 5) v *= 100.0f;
            if (n == 1 && k < 128) v = 0.0f;
            if (n == 2) v = std::fabs(v);
            if (n == 3) v = -std::fabs(v);
            w(n, k) = v * magnitude;
        }
    return w;
}

// Every element within the format's bound, every stored value in range, zeros exact;
// and every scale the finest that holds its group (checked from the weights here, since
// the bound itself grows with the scale): int8 amax / 127, int4 (hi - lo) / 15 with zero
// inside [lo, hi], as small as that allows up to a float's rounding.
void check_round_trip(const tensor<float, 2>& w, const quantized_matrix& q) {
    const bool int8 = q.spec.format == quant_format::int8;
    const index_t G = q.group_size();
    for (index_t n = 0; n < q.rows; ++n)
        for (index_t g = 0; g < q.groups(); ++g) {
            double lo = 0, hi = 0, amax = 0;
            for (index_t k = g * G; k < std::min(q.cols, (g + 1) * G); ++k) {
                lo = std::min(lo, static_cast<double>(w(n, k)));
                hi = std::max(hi, static_cast<double>(w(n, k)));
                amax = std::max(amax, std::fabs(static_cast<double>(w(n, k))));
            }
            const double range = int8 ? amax : hi - lo, levels = int8 ? 127.0 : 15.0;
            const double s = q.scales(n, g), want = range / levels;
            INFO(q.spec.name() << ": the scale of row " << n << ", group " << g << " is " << s << " for range " << range);
            if (range == 0) {
                CHECK(s == 0.0);
                continue;
            }
            CHECK(range / s <= levels);  // every value of the group fits
            CHECK(s <= want + std::max(want * 1e-6, 2.0 * std::numeric_limits<float>::denorm_min()));  // and no coarser
        }
    index_t worst_n = 0, worst_k = 0;
    double worst = 0.0;  // the largest error as a fraction of its bound
    for (index_t n = 0; n < q.rows; ++n)
        for (index_t k = 0; k < q.cols; ++k) {
            const int v = q.value(n, k);
            REQUIRE(v >= (int8 ? -127 : 0));
            REQUIRE(v <= (int8 ? 127 : 15));
            const float back = q.weight(n, k);
            REQUIRE(std::isfinite(back));
            if (w(n, k) == 0.0f) REQUIRE(back == 0.0f);
            const double err = std::fabs(static_cast<double>(back) - w(n, k));
            const double bound = q.error_bound(n, k);
            if (err > bound) FAIL(q.spec.name() << ": element (" << n << ", " << k << ") = " << w(n, k) << " came back as "
                                                << back << ", error " << err << " > bound " << bound);
            const double frac = bound > 0 ? err / bound : 0.0;
            if (frac > worst) worst = frac, worst_n = n, worst_k = k;
        }
    std::printf("  %s %lld x %lld: worst error %.3f of the bound at (%lld, %lld), %lld bytes (%.2f bits/weight)\n",
                q.spec.name().c_str(), static_cast<long long>(q.rows), static_cast<long long>(q.cols), worst,
                static_cast<long long>(worst_n), static_cast<long long>(worst_k), static_cast<long long>(q.bytes()),
                8.0 * static_cast<double>(q.bytes()) / static_cast<double>(q.rows * q.cols));
}

// ||x W^T - x W'^T||^2 summed over the rows of x.
double output_error(const tensor<float, 2>& x, const tensor<float, 2>& w, const quantized_matrix& q) {
    const index_t M = x.extent(0), N = w.extent(0), K = w.extent(1);
    double sum = 0.0;
    for (index_t m = 0; m < M; ++m)
        for (index_t n = 0; n < N; ++n) {
            double d = 0.0;
            for (index_t k = 0; k < K; ++k) d += static_cast<double>(x(m, k)) * (static_cast<double>(w(n, k)) - q.weight(n, k));
            sum += d * d;
        }
    return sum;
}

// Correlated inputs (M, K): a few latent factors mixed into every input, plus noise, plus
// per-input scales spanning 30x (as transformer activations have).
tensor<float, 2> correlated_inputs(index_t M, index_t K, const tensor<float, 2>& mix, std::uint64_t which) {
    const index_t F = mix.extent(0);
    tensor<float, 2> z({M, F}), noise({M, K}), x({M, K});
    cpu::fill_normal(z, tinyllm_test::test_seed() + 104729 * which);
    cpu::fill_normal(noise, tinyllm_test::test_seed() + 130363 * which, 0.0f, 0.1f);
    for (index_t m = 0; m < M; ++m)
        for (index_t k = 0; k < K; ++k) {
            double v = noise(m, k);
            for (index_t f = 0; f < F; ++f) v += z(m, f) * mix(f, k);
            x(m, k) = static_cast<float>(v * (1.0 + 29.0 * static_cast<double>(k % 7) / 6.0));
        }
    return x;
}

}  // namespace

TEST_CASE("quantization format names", "[quantize]") {
    for (const auto& spec : all_specs()) {
        const quant_spec back = tinyllm::parse_quant_spec(spec.name());
        CHECK(back.format == spec.format);
        CHECK(back.group == spec.group);
    }
    CHECK(tinyllm::parse_quant_spec("int4-g128").name() == "int4-g128");
    for (const char* bad : {"int4", "int4-g", "int4-g0", "int4-g33", "int4-gx", "int16", "", "INT8", "int4-g1234567"})
        CHECK_THROWS_WITH(tinyllm::parse_quant_spec(bad), contains("is not one of int8, int4-gG"));
}

TEST_CASE("int4 packing: two values per byte, the even input in the low nibble", "[quantize]") {
    // Group of 4 over [0, 15]: lo = 0, hi = 15, so the step is 1 and the zero point 0: q = w.
    tensor<float, 2> w({2, 4});
    const float values[2][4] = {{9, 3, 0, 15}, {-15, 0, -1, -8}};
    for (index_t n = 0; n < 2; ++n)
        for (index_t k = 0; k < 4; ++k) w(n, k) = values[n][k];
    const quantized_matrix q = tinyllm::quantize_rtn(w.view(), {quant_format::int4, 4});
    REQUIRE(q.data.size() == 4);
    CHECK(q.data[0] == 0x39);
    CHECK(q.data[1] == 0xF0);
    CHECK(q.scales(0, 0) == 1.0f);
    CHECK(q.zeros(0, 0) == 0);
    // Row 1 is all <= 0: lo = -15, hi = 0, step 1, zero point 15; q = w + 15.
    CHECK(q.zeros(1, 0) == 15);
    CHECK(q.data[2] == ((15 << 4) | 0));  // inputs 0, 1: q = 0, 15
    CHECK(q.data[3] == ((7 << 4) | 14));  // inputs 2, 3: q = 14, 7
    for (index_t n = 0; n < 2; ++n)
        for (index_t k = 0; k < 4; ++k) CHECK(q.weight(n, k) == values[n][k]);

    // int8 stores signed bytes, the row's largest magnitude at +-127.
    tensor<float, 2> w8({1, 3});
    w8(0, 0) = -2.0f, w8(0, 1) = 0.5f, w8(0, 2) = 0.0f;
    const quantized_matrix q8 = tinyllm::quantize_rtn(w8.view(), {quant_format::int8, 0});
    CHECK(q8.value(0, 0) == -127);
    CHECK(q8.value(0, 1) == 32);  // 0.5 / (2 / 127) = 31.75
    CHECK(q8.value(0, 2) == 0);
    CHECK(q8.data[0] == 0x81);
}

TEST_CASE("quantize -> dequantize stays within the format's error bound", "[quantize]") {
    const index_t N = 8, K = 384;
    std::uint64_t which = 0;
    for (const float magnitude : {1.0f, 1e-3f, 1e-30f, 1e-38f, 1e-42f, 1e30f, 1e33f}) {
        const tensor<float, 2> w = test_weight(N, K, magnitude, ++which);
        INFO("weights of magnitude " << magnitude);
        for (const auto& spec : all_specs()) {
            const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
            CHECK(q.bytes() == (spec.format == quant_format::int8 ? N * K + 4 * N : N * K / 2 + 5 * N * (K / spec.group)));
            check_round_trip(w, q);
        }
    }
    SECTION("an all-zero matrix") {
        const tensor<float, 2> zero({4, 64});
        for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
            const quantized_matrix q = tinyllm::quantize_rtn(zero.view(), spec);
            check_round_trip(zero, q);
            CHECK(q.scales(0, 0) == 0.0f);
        }
    }
    SECTION("the extremes of float") {
        tensor<float, 2> w({1, 4});
        w(0, 0) = 1e36f, w(0, 1) = -1e36f, w(0, 2) = std::numeric_limits<float>::denorm_min(), w(0, 3) = 0.0f;
        for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 2}})
            check_round_trip(w, tinyllm::quantize_rtn(w.view(), spec));
    }
}

TEST_CASE("linear_quantized: the float layer's output within the weights' error bound", "[quantize]") {
    const index_t rows = 5, N = 24, K = 256;
    const tensor<float, 2> w = test_weight(N, K, 0.05f, 21);
    tensor<float, 2> x({rows, K});
    cpu::fill_uniform(x, tinyllm_test::test_seed() + 22, -1.0f, 1.0f);
    tensor<float, 1> bias({N});
    cpu::fill_uniform(bias, tinyllm_test::test_seed() + 23, -1.0f, 1.0f);
    tensor<float, 2> exact({rows, N});
    cpu::linear(exact.view(), x.view(), w.view(), bias.view());
    for (const auto& spec : all_specs()) {
        const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
        tensor<float, 2> out({rows, N}, std::numeric_limits<float>::quiet_NaN());
        tinyllm::linear_quantized(out.view(), x.view(), q, bias.view());
        double worst = 0.0;
        for (index_t i = 0; i < rows; ++i)
            for (index_t n = 0; n < N; ++n) {
                double bound = 1e-5 * (1.0 + std::fabs(exact(i, n)));  // float rounding of the two outputs
                double dot = bias(n);
                for (index_t k = 0; k < K; ++k) {
                    bound += std::fabs(x(i, k)) * q.error_bound(n, k);
                    dot += static_cast<double>(x(i, k)) * q.weight(n, k);
                }
                REQUIRE(std::isfinite(out(i, n)));
                REQUIRE(std::fabs(out(i, n) - exact(i, n)) <= bound);
                REQUIRE(std::fabs(out(i, n) - dot) <= 1e-5 * (1.0 + std::fabs(dot)));  // it is x W'^T + b
                worst = std::max(worst, std::fabs(out(i, n) - exact(i, n)) / bound);
            }
        std::printf("  linear_quantized %s: worst output error %.3f of its bound\n", spec.name().c_str(), worst);
    }
    tensor<float, 2> wrong({rows, N + 1});
    CHECK_THROWS_WITH(tinyllm::linear_quantized(wrong.view(), x.view(), tinyllm::quantize_rtn(w.view(), {})),
                      contains("linear_quantized: out has shape"));
}

TEST_CASE("GPTQ lowers the layer's output error below round-to-nearest on correlated inputs", "[quantize]") {
    const index_t N = 32, K = 256, F = 16;
    tensor<float, 2> w({N, K}), mix({F, K});
    cpu::fill_normal(w, tinyllm_test::test_seed() + 31, 0.0f, 0.05f);
    cpu::fill_normal(mix, tinyllm_test::test_seed() + 32);
    const tensor<float, 2> calibration = correlated_inputs(512, K, mix, 33);
    const tensor<float, 2> held_out = correlated_inputs(256, K, mix, 34);
    for (const auto& spec : all_specs()) {
        const quantized_matrix rtn = tinyllm::quantize_rtn(w.view(), spec);
        const quantized_matrix gptq = tinyllm::quantize_gptq(w.view(), calibration.view(), spec);
        // The GPTQ matrix is a valid matrix of the format: values in range, finite weights.
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) {
                const int v = gptq.value(n, k);
                REQUIRE(v >= (spec.format == quant_format::int8 ? -127 : 0));
                REQUIRE(v <= (spec.format == quant_format::int8 ? 127 : 15));
                REQUIRE(std::isfinite(gptq.weight(n, k)));
            }
        const double rtn_cal = output_error(calibration, w, rtn), gptq_cal = output_error(calibration, w, gptq);
        const double rtn_held = output_error(held_out, w, rtn), gptq_held = output_error(held_out, w, gptq);
        std::printf("  %s: output error (squared) calibration RTN %.4g GPTQ %.4g (%.2fx); held out RTN %.4g GPTQ %.4g (%.2fx)\n",
                    spec.name().c_str(), rtn_cal, gptq_cal, rtn_cal / gptq_cal, rtn_held, gptq_held, rtn_held / gptq_held);
        CHECK(gptq_cal < 0.7 * rtn_cal);
        CHECK(gptq_held < 0.8 * rtn_held);
    }
}

TEST_CASE("GPTQ: an input that is always zero is quantized as zero", "[quantize]") {
    const index_t N = 4, K = 64;
    tensor<float, 2> w({N, K}), x({100, K});
    cpu::fill_normal(w, tinyllm_test::test_seed() + 41);
    cpu::fill_normal(x, tinyllm_test::test_seed() + 42);
    for (index_t m = 0; m < 100; ++m) x(m, 5) = 0.0f;
    for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
        const quantized_matrix q = tinyllm::quantize_gptq(w.view(), x.view(), spec);
        for (index_t n = 0; n < N; ++n) CHECK(q.weight(n, 5) == 0.0f);
    }
}

TEST_CASE("quantization rejects bad input with a clear message", "[quantize]") {
    tensor<float, 2> w({4, 96});
    cpu::fill_normal(w, tinyllm_test::test_seed() + 51);
    CHECK_THROWS_WITH(tinyllm::quantize_rtn(w.view(), {quant_format::int4, 64}),
                      contains("the group size 64 does not divide the 96 inputs of the weight (4 x 96)"));
    CHECK_THROWS_WITH(tinyllm::quantize_rtn(w.view(), {quant_format::int4, 3}), contains("int4 group size 3 must be even"));
    CHECK_THROWS_WITH(tinyllm::quantize_rtn(w.view(), {quant_format::int8, 32}), contains("int8 is per output channel"));
    CHECK_THROWS_WITH(tinyllm::quantize_rtn(tensor<float, 2>({0, 8}).view(), {}), contains("needs at least one element"));
    w(2, 7) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(tinyllm::quantize_rtn(w.view(), {}), contains("weight (2, 7) is nan; quantized weights must be finite"));
    w(2, 7) = 1e37f;
    CHECK_THROWS_WITH(tinyllm::quantize_rtn(w.view(), {}), contains("weight (2, 7) is 1e+37; quantized weights must be"));
    w(2, 7) = 0.5f;
    tensor<float, 2> x({10, 95});
    CHECK_THROWS_WITH(tinyllm::quantize_gptq(w.view(), x.view(), {}),
                      contains("the calibration inputs have 95 columns; the weight (4 x 96) takes 96 inputs"));
    tensor<float, 2> x96({10, 96});
    CHECK_THROWS_WITH(tinyllm::quantize_gptq(w.view(), x96.view(), {}, {-1.0}), contains("percdamp = -1 must be positive"));
    x96(3, 4) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(tinyllm::quantize_gptq(w.view(), x96.view(), {}), contains("calibration input (3, 4) is inf"));
    tensor<float, 2> wrong({3, 96});
    CHECK_THROWS_WITH(tinyllm::dequantize(wrong.view(), tinyllm::quantize_rtn(w.view(), {})),
                      contains("dequantize: out is 3 x 96, the quantized weight is 4 x 96"));
    // out over the bias it adds, over x, or with a row stride of 0: refused by both CPU rungs.
    const quantized_matrix q = tinyllm::quantize_rtn(w.view(), {});
    std::vector<float> mem(2 * 96 + 8, 0.5f);
    const tinyllm::tensor_view<const float, 2> x2(mem.data(), {2, 96});
    const tinyllm::tensor_view<float, 2> out_over_x(mem.data() + 96, {2, 4});
    CHECK_THROWS_WITH(cpu::linear_quantized_fused(out_over_x, x2, q), contains("linear_quantized_fused: out must not "
                                                                               "share memory with x"));
    CHECK_THROWS_WITH(tinyllm::linear_quantized(out_over_x, x2, q), contains("linear_quantized: out must not share"));
    const tinyllm::tensor_view<float, 2> out_after(mem.data() + 2 * 96, {1, 4});
    CHECK_THROWS_WITH(
        cpu::linear_quantized_fused(out_after, tinyllm::tensor_view<const float, 2>(mem.data(), {1, 96}), q,
                                    tinyllm::tensor_view<const float, 1>(mem.data() + 2 * 96 + 2, {4})),
        contains("linear_quantized_fused: out must not share memory with bias"));
    CHECK_THROWS_WITH(
        cpu::linear_quantized_fused(tinyllm::tensor_view<float, 2>(mem.data() + 2 * 96, {2, 4}, {0, 1}), x2, q),
        contains("out has shape (2, 4) and strides (0, 1), so two of its elements share an address"));
}

TEST_CASE("cpu::linear_quantized_fused equals the reference dequantize-then-linear", "[quantize]") {
    const index_t N = 40, K = 384;
    const tensor<float, 2> w = test_weight(N, K, 0.02f, 61);
    for (const index_t rows : {index_t{1}, index_t{3}, index_t{17}}) {
        tensor<float, 2> x({rows, K});
        cpu::fill_uniform(x, tinyllm_test::test_seed() + 62 + static_cast<std::uint64_t>(rows), -2.0f, 2.0f);
        tensor<float, 1> bias({N});
        cpu::fill_uniform(bias, tinyllm_test::test_seed() + 63, -1.0f, 1.0f);
        for (const auto& spec : all_specs()) {
            const quantized_matrix q = tinyllm::quantize_rtn(w.view(), spec);
            tensor<float, 2> want({rows, N}), got({rows, N}, std::numeric_limits<float>::quiet_NaN());
            tinyllm::linear_quantized(want.view(), x.view(), q, bias.view());
            cpu::linear_quantized_fused(got.view(), x.view(), q, bias.view());
            // Float sums of K terms: the rounding is relative to sum_k |x_k| |q_k - z| s (terms before cancellation),
            // never more than K * 2^-24 of it; allowed 1e-5.
            double worst = 0.0;
            for (index_t m = 0; m < rows; ++m)
                for (index_t n = 0; n < N; ++n) {
                    double magnitude = 1.0;
                    for (index_t k = 0; k < K; ++k)
                        magnitude += std::fabs(x(m, k)) * q.scales(n, k / q.group_size()) *
                                     (spec.format == quant_format::int8 ? 127.0 : 15.0);
                    REQUIRE(std::isfinite(got(m, n)));
                    const double err = std::fabs(static_cast<double>(got(m, n)) - want(m, n));
                    REQUIRE(err <= 1e-5 * magnitude);
                    worst = std::max(worst, err / magnitude);
                }
            TINYLLM_REQUIRE_CLOSE(got.values(), want.values(), tinyllm_test::tolerance{1e-4, 1e-4, 1e-5},
                                  "linear_quantized_fused " + spec.name() + ", rows " + std::to_string(rows));
            std::printf("    worst error %.2e of the terms' magnitude\n", worst);
        }
    }
    tensor<float, 2> x({2, K - 2}), out({2, N});
    CHECK_THROWS_WITH(cpu::linear_quantized_fused(out.view(), x.view(), tinyllm::quantize_rtn(w.view(), {})),
                      contains("linear_quantized_fused: x (2, 382) has 382 features, the quantized weight (40 x 384) takes 384"));
}

TEST_CASE("round_model_weights: every layer matrix rounded, embeddings, norms, biases and routers kept", "[quantize]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        for (const bool tied : {true, false}) {
            const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 32, tied);
            const tinyllm::model_weights original = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 71);
            INFO("arch " << static_cast<int>(arch) << (tied ? ", tied" : ", untied"));
            for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
                tinyllm::model_weights w = original;
                const tinyllm::quantization_summary s = tinyllm::round_model_weights(w, spec);
                // Kept exactly: the embedding (and a tied head with it), positions, norms, biases, routers.
                CHECK(w.embed.values() == original.embed.values());
                CHECK(w.positions.values() == original.positions.values());
                CHECK(w.final_norm_weight.values() == original.final_norm_weight.values());
                index_t expected = 0, weights = 0;  // counted by check_matrix
                auto check_matrix = [&](const tensor<float, 2>& got, const tensor<float, 2>& before) {
                    if (before.size() == 0) return;
                    ++expected;
                    weights += before.size();
                    tensor<float, 2> want(before.shape());
                    tinyllm::dequantize(want.view(), tinyllm::quantize_rtn(before.view(), spec));
                    REQUIRE(got.values() == want.values());
                };
                if (!tied) check_matrix(w.lm_head, original.lm_head);
                for (std::size_t l = 0; l < w.layers.size(); ++l) {
                    const auto& L = w.layers[l];
                    const auto& O = original.layers[l];
                    CHECK(L.attn_norm_weight.values() == O.attn_norm_weight.values());
                    CHECK(L.bq.values() == O.bq.values());
                    CHECK(L.fc_bias.values() == O.fc_bias.values());
                    CHECK(L.router.values() == O.router.values());
                    check_matrix(L.wq, O.wq), check_matrix(L.wk, O.wk), check_matrix(L.wv, O.wv), check_matrix(L.wo, O.wo);
                    check_matrix(L.fc, O.fc), check_matrix(L.proj, O.proj);
                    check_matrix(L.gate, O.gate), check_matrix(L.up, O.up), check_matrix(L.down, O.down);
                    for (auto [got, before] : {std::pair{&L.w1, &O.w1}, {&L.w3, &O.w3}, {&L.w2, &O.w2}}) {
                        for (index_t e = 0; e < before->extent(0); ++e) {
                            const index_t r = before->extent(1), k = before->extent(2);
                            tensor<float, 2> one({r, k}), back({r, k});
                            std::copy_n(before->data() + e * r * k, r * k, one.data());
                            std::copy_n(got->data() + e * r * k, r * k, back.data());
                            check_matrix(back, one);
                        }
                    }
                }
                CHECK(s.matrices == expected);
                CHECK(s.weights == weights);
                CHECK(s.float_bytes_kept + 4 * s.weights == tinyllm::float32_bytes(original));
                if (spec.format == quant_format::int8) CHECK(s.bits_per_weight() < 8.6);
                else CHECK(std::fabs(s.bits_per_weight() - (4.0 + 40.0 / 32)) < 1e-12);  // 4 bits + (32 + 8) per 32
            }
        }
    }
    SECTION("a group size that does not divide a matrix is an error naming it, and changes nothing") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(tinyllm::model_arch::llama, 64, 64, 16, 96, 32, true);
        const tinyllm::model_weights original = tinyllm::random_model_weights(c, 5);
        tinyllm::model_weights w = original;
        CHECK_THROWS_WITH(tinyllm::round_model_weights(w, {quant_format::int4, 64}),
                          contains("the group size 64 does not divide the 96 inputs of layers.0.down (64 x 96)"));
        CHECK(w.layers[0].wq.values() == original.layers[0].wq.values());
        // The same reason without the error; none for a group that divides, nor for int8.
        CHECK(tinyllm::quant_spec_mismatch(original, {quant_format::int4, 64}) ==
              "the group size 64 does not divide the 96 inputs of layers.0.down (64 x 96)");
        CHECK(tinyllm::quant_spec_mismatch(original, {quant_format::int4, 32}).empty());
        CHECK(tinyllm::quant_spec_mismatch(original, {quant_format::int8, 0}).empty());
    }
}

TEST_CASE("model::quantize_weights computes what the model of the rounded weights computes", "[quantize]") {
    using tinyllm::model_arch;
    const std::vector<tinyllm::token_id> prompt = {3, 17, 42, 5, 9, 61, 2};
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        for (const bool tied : {true, false}) {
            const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 32, tied);
            const tinyllm::model_weights w = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 81);
            for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
                tinyllm::model_weights rounded = w;
                const tinyllm::quantization_summary s = tinyllm::round_model_weights(rounded, spec);
                const cpu::model reference(c, rounded);  // float32 weights W^, float kernels
                cpu::model quantized(c, w);
                const index_t float_bytes = quantized.weight_bytes();
                quantized.quantize_weights(spec);
                CHECK(quantized.quantized());
                // The quantized model's own summary counts what rounding the float weights counted.
                const tinyllm::quantization_summary held = tinyllm::quantization_of(quantized);
                CHECK(held.matrices == s.matrices);
                CHECK(held.weights == s.weights);
                CHECK(held.quantized_bytes == s.quantized_bytes);
                CHECK(held.float_bytes_kept == s.float_bytes_kept);
                CHECK(quantized.quantization().name() == spec.name());
                CHECK(quantized.weight_bytes() == float_bytes - 4 * s.weights + s.quantized_bytes);
                // Prefill, then three decode steps, on both.
                auto s1 = reference.new_session(16);
                auto s2 = quantized.new_session(16);
                std::vector<float> want, got;
                auto feed = [&](std::span<const tinyllm::token_id> ids) {
                    const auto a = reference.forward(s1, ids), b = quantized.forward(s2, ids);
                    want.insert(want.end(), a.values().begin(), a.values().end());
                    got.insert(got.end(), b.values().begin(), b.values().end());
                };
                feed(prompt);
                for (const tinyllm::token_id t : {11, 12, 13}) feed(std::vector<tinyllm::token_id>{t});
                // The same weights W^; float sums in another order (fused kernel vs blocked GEMM).
                TINYLLM_REQUIRE_CLOSE(got, want, tinyllm_test::tolerance{1e-4, 1e-4, 1e-5},
                                      std::string(arch == model_arch::gpt2 ? "gpt2" : "llama") +
                                          (tied ? " tied " : " untied ") + spec.name() + " logits");
            }
        }
    }
    SECTION("what a quantized model refuses") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 32, true);
        cpu::model m(c, tinyllm::random_model_weights(c, 3));
        CHECK_THROWS_WITH(m.quantize_weights({quant_format::int4, 64}),
                          contains("the group size 64 does not divide the 96 inputs of layers.0.down (64 x 96)"));
        CHECK_FALSE(m.quantized());
        m.quantize_weights({quant_format::int4, 32});
        CHECK_THROWS_WITH(m.quantize_weights({}), contains("already quantized (int4-g32)"));
        CHECK_THROWS_WITH(m.set_weight_dtype(cpu::model::weight_dtype::bfloat16), contains("the matrices are quantized"));
        tinyllm::model_weights grads = tinyllm::zeros_like(tinyllm::random_model_weights(c, 3));
        tensor<tinyllm::token_id, 2> tokens({1, 4}, 1), targets({1, 4}, 2);
        CHECK_THROWS_WITH(m.forward_backward(grads, tokens.view(), targets.view()),
                          contains("holds its matrices quantized (int4-g32)"));
        m.set_kernels(cpu::model::kernels::reference);
        auto session = m.new_session(16);
        CHECK_THROWS_WITH(m.forward(session, prompt), contains("the reference kernels need float32 weights"));
        cpu::model b16(c, tinyllm::random_model_weights(c, 5));
        b16.set_weight_dtype(cpu::model::weight_dtype::bfloat16);
        CHECK_THROWS_WITH(b16.quantize_weights({}), contains("the matrices are bfloat16"));
    }
}

namespace {

// Logits of every position of each window (M, T), one session per window, concatenated.
std::vector<float> window_logits(const cpu::model& m, const tensor<tinyllm::token_id, 2>& windows) {
    std::vector<float> out;
    for (index_t w = 0; w < windows.extent(0); ++w) {
        auto s = m.new_session(windows.extent(1));
        const std::vector<tinyllm::token_id> ids(windows.data() + w * windows.extent(1),
                                                 windows.data() + (w + 1) * windows.extent(1));
        const auto logits = m.forward(s, ids);
        out.insert(out.end(), logits.values().begin(), logits.values().end());
    }
    return out;
}

tensor<tinyllm::token_id, 2> random_windows(index_t M, index_t T, index_t vocab, std::uint64_t seed) {
    tensor<tinyllm::token_id, 2> t({M, T});
    tinyllm::philox_generator r(seed);
    for (auto& id : t.values()) id = static_cast<tinyllm::token_id>(r.next_bits() % static_cast<std::uint32_t>(vocab));
    return t;
}

double mean_square_difference(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double sum = 0;
    for (std::size_t i = 0; i < a.size(); ++i) sum += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    return sum / static_cast<double>(a.size());
}

}  // namespace

TEST_CASE("quantized checkpoints: save_quantized_model, then model::load, is the same model", "[quantize]") {
    using tinyllm::model_arch;
    const auto windows = random_windows(2, 12, 64, tinyllm_test::test_seed() + 5);
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        for (const bool tied : {true, false}) {
            const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 32, tied);
            const tinyllm::model_weights w = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 82);
            for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
                const std::string what = std::string(arch == model_arch::gpt2 ? "gpt2" : "llama") +
                                         (tied ? " tied " : " untied ") + spec.name();
                INFO(what);
                cpu::model m(c, w);
                m.quantize_weights(spec);
                tinyllm_test::temp_dir dir("tinyllm_quantized_checkpoint");
                tinyllm::cpu::save_quantized_model(dir.path.string(), m);
                const cpu::model back = cpu::model::load(dir.path.string());
                REQUIRE(back.quantized());
                CHECK(back.quantization().name() == spec.name());
                REQUIRE(back.config().quantization);
                CHECK(back.config().quantization->name() == spec.name());
                CHECK(back.config().quantization_method == "rtn");
                CHECK(back.weight_bytes() == m.weight_bytes());
                // The same bytes and the same kernels: the same logits, bit for bit.
                const std::vector<float> want = window_logits(m, windows), got = window_logits(back, windows);
                CHECK(got == want);
                // A checkpoint of a quantized model says so to a float loader's users too.
                const std::string config = tinyllm_test::read_text(dir.file("config.json"));
                CHECK_THAT(config, contains("\"quant_method\": \"tinyllm\""));
                CHECK_THAT(config, contains("\"format\": \"" + spec.name() + "\""));
            }
        }
    }
    SECTION("what is refused") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 32, false);
        cpu::model m(c, tinyllm::random_model_weights(c, 8));
        tinyllm_test::temp_dir dir("tinyllm_quantized_checkpoint");
        CHECK_THROWS_WITH(tinyllm::cpu::save_quantized_model(dir.path.string(), m), contains("not quantized"));
        m.quantize_weights({quant_format::int4, 32});
        CHECK_THROWS_WITH(tinyllm::save_model(dir.path.string(), m.config(), m.weights()),
                          contains("this config's matrices are quantized (int4-g32)"));
        tinyllm::cpu::save_quantized_model(dir.path.string(), m);
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string(), cpu::model::weight_dtype::bfloat16),
                          contains("holds its matrices quantized (int4-g32)"));
        const std::string config = tinyllm_test::read_text(dir.file("config.json"));
        const auto with_config = [&](const std::string& from, const std::string& to) {
            std::string edited = config;
            const auto at = edited.find(from);
            REQUIRE(at != std::string::npos);
            edited.replace(at, from.size(), to);
            tinyllm_test::write_text(dir.file("config.json"), edited);
        };
        // The config and the tensors disagree: each named.
        with_config("\"format\": \"int4-g32\", \"bits\": 4, \"group_size\": 32",
                    "\"format\": \"int4-g16\", \"bits\": 4, \"group_size\": 16");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("tensor 'lm_head.scales' is F32 (64, 2) but the config (int4-g16, lm_head of 64 x "
                                   "64) asks for F32 (64, 4)"));
        with_config("\"format\": \"int4-g32\", \"bits\": 4, \"group_size\": 32",
                    "\"format\": \"int8\", \"bits\": 8, \"group_size\": 0");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("tensor 'lm_head.qweight' is U8 (64, 32) but the config (int8, lm_head of 64 x 64) "
                                   "asks for I8 (64, 64)"));
        with_config("\"format\": \"int4-g32\", \"bits\": 4, \"group_size\": 32",
                    "\"format\": \"int4-g32\", \"bits\": 4, \"group_size\": 64");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("quantization_config says format int4-g32 but bits 4 and group_size 64"));
        with_config("\"quant_method\": \"tinyllm\"", "\"quant_method\": \"gptq\"");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()), contains("is another library's checkpoint layout"));
        with_config("\"format\": \"int4-g32\"", "\"format\": \"int3\"");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()), contains("quantization format 'int3' is not one of"));
        with_config("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("has no tensor 'layers.2.attn_norm.weight'"));
        with_config("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("tensor 'layers.1.attn_norm.weight' is not part of a int4-g32 LlamaForCausalLM"));
        // Values the format cannot hold, written into the tensors themselves.
        tinyllm_test::write_text(dir.file("config.json"), config);
        const auto with_tensor = [&](const std::string& target, const auto& edit) {
            // Rewrite model.safetensors with `target` (U8 or F32, rank 2) changed by edit(tensor).
            std::vector<tensor<float, 1>> f1;
            std::vector<tensor<float, 2>> f2;
            std::vector<tensor<std::uint8_t, 2>> u2;
            std::vector<tensor<std::int8_t, 2>> i2;
            {
                const tinyllm::safetensors_checkpoint ck(dir.path.string());
                for (const std::string& name : ck.names()) {
                    const tinyllm::safetensors_tensor& t = *ck.find(name);
                    if (t.dtype == tinyllm::st_dtype::f32 && t.shape.size() == 1) {
                        f1.push_back(tinyllm::to_tensor<float, 1>(t));
                    } else if (t.dtype == tinyllm::st_dtype::f32) {
                        f2.push_back(tinyllm::to_tensor<float, 2>(t));
                        if (name == target) edit(f2.back());
                    } else if (t.dtype == tinyllm::st_dtype::u8) {
                        u2.push_back(tinyllm::to_tensor<std::uint8_t, 2>(t));
                        if (name == target) edit(u2.back());
                    } else {
                        i2.push_back(tinyllm::to_tensor<std::int8_t, 2>(t));
                    }
                }
                // Entries in the same order, viewing the copies (the file is closed before it is replaced).
                std::vector<tinyllm::safetensors_entry> entries;
                std::size_t a1 = 0, a2 = 0, b2 = 0, c2 = 0;
                for (const std::string& name : ck.names()) {
                    const tinyllm::safetensors_tensor& t = *ck.find(name);
                    if (t.dtype == tinyllm::st_dtype::f32 && t.shape.size() == 1) entries.emplace_back(name, f1[a1++]);
                    else if (t.dtype == tinyllm::st_dtype::f32) entries.emplace_back(name, f2[a2++]);
                    else if (t.dtype == tinyllm::st_dtype::u8) entries.emplace_back(name, u2[b2++]);
                    else entries.emplace_back(name, i2[c2++]);
                }
                tinyllm::save_safetensors(dir.file("edited.safetensors"), entries);
            }
            std::filesystem::rename(dir.file("edited.safetensors"), dir.file("model.safetensors"));
        };
        with_tensor("layers.1.down.zeros", [](auto& z) {
            if constexpr (std::is_same_v<std::decay_t<decltype(z)>, tensor<std::uint8_t, 2>>) z(3, 1) = 16;
        });
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("layers.1.down.zeros(3, 1) = 16; int4 zero points are in [0, 15]"));
        with_tensor("layers.1.down.zeros", [](auto& z) {
            if constexpr (std::is_same_v<std::decay_t<decltype(z)>, tensor<std::uint8_t, 2>>) z(3, 1) = 15;
        });
        with_tensor("lm_head.scales", [](auto& sc) {
            if constexpr (std::is_same_v<std::decay_t<decltype(sc)>, tensor<float, 2>>) sc(5, 0) = -1.0f;
        });
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("lm_head.scales(5, 0) = -1; scales are finite and >= 0"));
        with_tensor("lm_head.scales", [](auto& sc) {
            if constexpr (std::is_same_v<std::decay_t<decltype(sc)>, tensor<float, 2>>)
                sc(5, 0) = std::numeric_limits<float>::quiet_NaN();
        });
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()), contains("lm_head.scales(5, 0) = nan"));
        // Without its quantization_config it is read as a float checkpoint, which it is not.
        std::string plain = config;
        plain.erase(plain.find("  \"quantization_config\""), plain.find("  \"torch_dtype\"") - plain.find("  \"quantization_config\""));
        tinyllm_test::write_text(dir.file("config.json"), plain);
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()), contains("has no tensor 'model.embed_tokens.weight'"));
    }
}

TEST_CASE("model::quantize_weights_gptq: closer to the float model than round to nearest", "[quantize]") {
    using tinyllm::model_arch;
    // Calibrated on windows of one text; measured on those windows (GPTQ's
    // objective) and on other windows of the same kind.
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 128, 64, false);
        const tinyllm::model_weights w = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 83);
        const auto calibration = random_windows(8, 32, 64, tinyllm_test::test_seed() + 9);
        const auto other = random_windows(4, 32, 64, tinyllm_test::test_seed() + 10);
        const cpu::model reference(c, w);
        for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
            const std::string what = std::string(arch == model_arch::gpt2 ? "gpt2 " : "llama ") + spec.name();
            INFO(what);
            cpu::model rtn(c, w), gptq(c, w);
            rtn.quantize_weights(spec);
            gptq.quantize_weights_gptq(spec, calibration.view());
            CHECK(gptq.quantized());
            CHECK(gptq.config().quantization_method == "gptq");
            CHECK(gptq.weight_bytes() == rtn.weight_bytes());
            for (const auto* windows : {&calibration, &other}) {
                const std::vector<float> want = window_logits(reference, *windows);
                const double e_rtn = mean_square_difference(window_logits(rtn, *windows), want);
                const double e_gptq = mean_square_difference(window_logits(gptq, *windows), want);
                INFO((windows == &calibration ? "calibration" : "other") << " windows: mean square logit error rtn "
                                                                          << e_rtn << ", gptq " << e_gptq);
                CHECK(e_gptq > 0.0);
                // Its objective, on the windows it saw: well below; elsewhere, below.
                CHECK(e_gptq < (windows == &calibration ? 0.8 : 1.0) * e_rtn);
            }
        }
    }
    SECTION("bad input") {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::llama, 64, 64, 16, 96, 32, false);
        cpu::model m(c, tinyllm::random_model_weights(c, 11));
        tensor<tinyllm::token_id, 2> windows({2, 4}, 1);
        windows(1, 2) = 64;
        CHECK_THROWS_WITH(m.quantize_weights_gptq({}, windows.view()),
                          contains("calibration token (1, 2) = 64 is outside the vocabulary [0, 64)"));
        CHECK_FALSE(m.quantized());
        CHECK_THROWS_WITH(m.quantize_weights_gptq({}, tensor<tinyllm::token_id, 2>({0, 4}).view()),
                          contains("the calibration windows are 0 x 4"));
        CHECK_THROWS_WITH(m.quantize_weights_gptq({quant_format::int4, 64}, windows.view()),
                          contains("the group size 64 does not divide the 96 inputs of layers.0.down"));
        windows(1, 2) = 5;
        m.quantize_weights_gptq({}, windows.view());
        CHECK_THROWS_WITH(m.quantize_weights_gptq({}, windows.view()), contains("already quantized (int8)"));
    }
}

// ---- Mixtral: the experts quantized one matrix per expert, the router float ----

namespace {

// Rewrite DIR/model.safetensors without tensor `drop`, with tensor `swap`'s two
// extents exchanged (the same bytes, another shape), and with a copy of tensor
// `copy_from` added as `copy_as`; "" leaves them alone.
void rewrite_checkpoint(const tinyllm_test::temp_dir& dir, const std::string& drop, const std::string& swap,
                        const std::string& copy_from = "", const std::string& copy_as = "") {
    // Copies of every tensor's bytes (the file is closed before it is replaced).
    std::vector<std::vector<float>> f32;
    std::vector<std::vector<std::uint8_t>> u8;
    std::vector<std::vector<std::int8_t>> i8;
    std::vector<std::string> names;
    std::vector<std::vector<index_t>> shapes;
    std::vector<tinyllm::st_dtype> dtypes;
    {
        const tinyllm::safetensors_checkpoint ck(dir.path.string());
        std::vector<std::string> sources = ck.names();
        if (!copy_from.empty()) sources.push_back(copy_from);
        for (std::size_t s = 0; s < sources.size(); ++s) {
            const std::string& name = sources[s];
            if (name == drop) continue;
            const tinyllm::safetensors_tensor& t = *ck.find(name);
            std::vector<index_t> shape = t.shape;
            REQUIRE((shape.size() == 1 || shape.size() == 2));
            if (name == swap) std::swap(shape.front(), shape.back());
            names.push_back(s + 1 == sources.size() && !copy_from.empty() ? copy_as : name);
            shapes.push_back(shape), dtypes.push_back(t.dtype);
            const auto copy = [&](auto& store) {
                using T = typename std::decay_t<decltype(store)>::value_type::value_type;
                store.emplace_back(t.bytes / sizeof(T));
                std::memcpy(store.back().data(), t.data, t.bytes);
            };
            if (t.dtype == tinyllm::st_dtype::f32) copy(f32);
            else if (t.dtype == tinyllm::st_dtype::u8) copy(u8);
            else if (t.dtype == tinyllm::st_dtype::i8) copy(i8);
            else FAIL("unexpected dtype in " << name);
        }
    }
    std::vector<tinyllm::safetensors_entry> entries;
    std::size_t a = 0, b = 0, c = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
        const auto put = [&](const auto* data) {
            using T = std::remove_cv_t<std::remove_pointer_t<decltype(data)>>;
            if (shapes[i].size() == 1) entries.emplace_back(names[i], tensor_view<const T, 1>(data, {shapes[i][0]}));
            else entries.emplace_back(names[i], tensor_view<const T, 2>(data, {shapes[i][0], shapes[i][1]}));
        };
        if (dtypes[i] == tinyllm::st_dtype::f32) put(f32[a++].data());
        else if (dtypes[i] == tinyllm::st_dtype::u8) put(u8[b++].data());
        else put(i8[c++].data());
    }
    tinyllm::save_safetensors(dir.file("edited.safetensors"), entries);
    std::filesystem::rename(dir.file("edited.safetensors"), dir.file("model.safetensors"));
}

// Expert e's (rows, cols) matrix of an (E, rows, cols) tensor, as its own tensor.
tensor<float, 2> expert_matrix(const tensor<float, 3>& experts, index_t e) {
    const index_t rows = experts.extent(1), cols = experts.extent(2);
    tensor<float, 2> m({rows, cols});
    std::copy_n(experts.data() + e * rows * cols, rows * cols, m.data());
    return m;
}

// The median over positions of each position's mean square difference between
// two runs' logits (rows of V). A position whose top-k routing flipped between the
// runs differs by far more than rounding's error elsewhere; the median leaves the
// few such positions out of the comparison the mean would let them dominate.
double median_position_square_difference(const std::vector<float>& a, const std::vector<float>& b, index_t V) {
    REQUIRE(a.size() == b.size());
    std::vector<double> per_position;
    for (std::size_t p = 0; p < a.size() / static_cast<std::size_t>(V); ++p) {
        double sum = 0;
        for (std::size_t i = p * static_cast<std::size_t>(V); i < (p + 1) * static_cast<std::size_t>(V); ++i)
            sum += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        per_position.push_back(sum / static_cast<double>(V));
    }
    std::nth_element(per_position.begin(), per_position.begin() + per_position.size() / 2, per_position.end());
    return per_position[per_position.size() / 2];
}

bool same_quantized(const quantized_matrix& a, const quantized_matrix& b) {
    return a.rows == b.rows && a.cols == b.cols && a.data == b.data && a.scales.values() == b.scales.values() &&
           a.zeros.values() == b.zeros.values();
}

}  // namespace

TEST_CASE("Mixtral: quantize_weights rounds each expert and computes what the model of the rounded weights computes",
          "[quantize]") {
    using tinyllm::model_arch;
    const std::vector<tinyllm::token_id> prompt = {5, 40, 11, 63, 2, 19, 33, 8, 27};
    for (const bool tied : {true, false}) {
        const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::mixtral, 64, 64, 16, 96, 32, tied);
        const tinyllm::model_weights w = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 91);
        for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
            const std::string what = std::string(tied ? "tied " : "untied ") + spec.name();
            INFO(what);
            tinyllm::model_weights rounded = w;
            const tinyllm::quantization_summary s = tinyllm::round_model_weights(rounded, spec);
            // Wq Wk Wv Wo and 3 matrices of each of the 4 experts, per layer; an untied head.
            CHECK(s.matrices == 2 * (4 + 3 * 4) + (tied ? 0 : 1));
            const cpu::model reference(c, rounded);
            cpu::model quantized(c, w);
            const index_t float_bytes = quantized.weight_bytes();
            quantized.quantize_weights(spec);
            for (std::size_t l = 0; l < 2; ++l) {
                const tinyllm::layer_weights_quantized& Q = quantized.weights_quantized()[l];
                const tinyllm::layer_weights& L = quantized.weights().layers[l];
                REQUIRE(Q.w1.size() == 4);
                REQUIRE(Q.w3.size() == 4);
                REQUIRE(Q.w2.size() == 4);
                CHECK((Q.w1[3].rows == 96 && Q.w1[3].cols == 64 && Q.w2[3].rows == 64 && Q.w2[3].cols == 96));
                // Each expert's matrix is quantize_rtn of that expert alone; the float experts are freed,
                // the router kept as it was.
                CHECK(same_quantized(Q.w3[2], tinyllm::quantize_rtn(expert_matrix(w.layers[l].w3, 2).view(), spec)));
                CHECK(same_quantized(Q.w2[1], tinyllm::quantize_rtn(expert_matrix(w.layers[l].w2, 1).view(), spec)));
                CHECK(L.w1.size() == 0);
                CHECK(L.w2.size() == 0);
                CHECK(L.router.values() == w.layers[l].router.values());
            }
            const tinyllm::quantization_summary held = tinyllm::quantization_of(quantized);
            CHECK(held.matrices == s.matrices);
            CHECK(held.weights == s.weights);
            CHECK(held.quantized_bytes == s.quantized_bytes);
            CHECK(held.float_bytes_kept == s.float_bytes_kept);
            CHECK(quantized.weight_bytes() == float_bytes - 4 * s.weights + s.quantized_bytes);
            // Per layer Wq, Wo (64 x 64), Wk, Wv (32 x 64) and 4 experts' 3 matrices of 96 x 64: the experts
            // hold 6 of every 7 quantized weights.
            CHECK(s.weights == 2 * (3 * 64 * 64 + 4 * 3 * 96 * 64) + (tied ? 0 : 64 * 64));
            auto s1 = reference.new_session(16);
            auto s2 = quantized.new_session(16);
            std::vector<float> want, got;
            auto feed = [&](std::span<const tinyllm::token_id> ids) {
                const auto a = reference.forward(s1, ids), b = quantized.forward(s2, ids);
                want.insert(want.end(), a.values().begin(), a.values().end());
                got.insert(got.end(), b.values().begin(), b.values().end());
            };
            feed(prompt);
            for (const tinyllm::token_id t : {50, 7, 31}) feed(std::vector<tinyllm::token_id>{t});
            TINYLLM_REQUIRE_CLOSE(got, want, tinyllm_test::tolerance{1e-4, 1e-4, 1e-5}, "mixtral " + what + " logits");
        }
    }
}

TEST_CASE("Mixtral quantized checkpoints: the experts written and read back; one missing or misshapen is named",
          "[quantize]") {
    using tinyllm::model_arch;
    const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::mixtral, 64, 64, 16, 96, 32, false);
    const tinyllm::model_weights w = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 92);
    const auto windows = random_windows(2, 12, 64, tinyllm_test::test_seed() + 93);
    for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
        INFO(spec.name());
        cpu::model m(c, w);
        m.quantize_weights(spec);
        tinyllm_test::temp_dir dir("tinyllm_quantized_mixtral");
        tinyllm::cpu::save_quantized_model(dir.path.string(), m);
        {
            const tinyllm::safetensors_checkpoint ck(dir.path.string());
            const tinyllm::safetensors_tensor* router = ck.find("layers.1.router");
            REQUIRE(router);
            CHECK(router->dtype == tinyllm::st_dtype::f32);
            CHECK(router->shape == std::vector<index_t>{4, 64});
            const tinyllm::safetensors_tensor* w2 = ck.find("layers.1.experts.3.w2.qweight");
            REQUIRE(w2);
            CHECK(w2->shape == std::vector<index_t>{64, spec.format == quant_format::int8 ? 96 : 48});
            CHECK(ck.contains("layers.0.experts.0.w1.scales"));
            CHECK(ck.contains("layers.0.experts.2.w3.zeros") == (spec.format == quant_format::int4));
            CHECK_FALSE(ck.contains("layers.0.experts.4.w1.qweight"));
        }
        const cpu::model back = cpu::model::load(dir.path.string());
        REQUIRE(back.quantized());
        CHECK(back.quantization().name() == spec.name());
        CHECK(back.weight_bytes() == m.weight_bytes());
        CHECK(back.weights_quantized()[1].w3.size() == 4);
        CHECK(same_quantized(back.weights_quantized()[1].w3[2], m.weights_quantized()[1].w3[2]));
        // The same bytes, the same kernels, the same routing: the same logits, bit for bit.
        const std::vector<float> want = window_logits(m, windows), got = window_logits(back, windows);
        CHECK(got == want);
    }
    SECTION("what is refused, by name") {
        const quant_spec spec{quant_format::int4, 32};
        cpu::model m(c, w);
        m.quantize_weights(spec);
        tinyllm_test::temp_dir dir("tinyllm_quantized_mixtral");
        const auto save = [&] { tinyllm::cpu::save_quantized_model(dir.path.string(), m); };
        save();
        rewrite_checkpoint(dir, "layers.1.experts.2.w3.scales", "");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("the matrices are int4-g32 but tensor 'layers.1.experts.2.w3.scales' is missing"));
        save();
        rewrite_checkpoint(dir, "", "layers.0.experts.1.w2.qweight");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("tensor 'layers.0.experts.1.w2.qweight' is U8 (48, 64) but the config (int4-g32, "
                                   "layers.0.experts.1.w2 of 64 x 96) asks for U8 (64, 48)"));
        save();
        rewrite_checkpoint(dir, "", "layers.1.router");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("tensor 'layers.1.router' has shape (64, 4) but the config implies (4, 64)"));
        save();
        rewrite_checkpoint(dir, "layers.0.router", "");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()), contains("has no tensor 'layers.0.router'"));
        // More experts in the file than the config has, or fewer.
        save();
        const std::string config = tinyllm_test::read_text(dir.file("config.json"));
        const auto with_experts = [&](const char* n) {
            std::string edited = config;
            const std::string from = "\"num_local_experts\": 4";
            const auto at = edited.find(from);
            REQUIRE(at != std::string::npos);
            edited.replace(at, from.size(), std::string("\"num_local_experts\": ") + n);
            tinyllm_test::write_text(dir.file("config.json"), edited);
        };
        with_experts("3");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("has shape (4, 64) but the config implies (3, 64)"));
        with_experts("5");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("has shape (4, 64) but the config implies (5, 64)"));
        // An expert tensor the config does not imply.
        tinyllm_test::write_text(dir.file("config.json"), config);
        CHECK_NOTHROW(cpu::model::load(dir.path.string()));
        rewrite_checkpoint(dir, "", "", "layers.0.experts.3.w1.qweight", "layers.0.experts.4.w1.qweight");
        CHECK_THROWS_WITH(cpu::model::load(dir.path.string()),
                          contains("tensor 'layers.0.experts.4.w1.qweight' is not part of a int4-g32 "
                                   "MixtralForCausalLM of this config"));
    }
}

TEST_CASE("Mixtral: quantize_weights_gptq fits each expert to the tokens routed to it", "[quantize]") {
    using tinyllm::model_arch;
    const tinyllm::model_config c = tinyllm_test::small_model_config(model_arch::mixtral, 64, 64, 16, 128, 64, false);
    const tinyllm::model_weights w = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 94);
    const auto calibration = random_windows(8, 32, 64, tinyllm_test::test_seed() + 95);
    const auto other = random_windows(4, 32, 64, tinyllm_test::test_seed() + 96);
    const cpu::model reference(c, w);
    for (const auto& spec : {quant_spec{quant_format::int8, 0}, quant_spec{quant_format::int4, 32}}) {
        INFO("mixtral " << spec.name());
        cpu::model rtn(c, w), gptq(c, w);
        rtn.quantize_weights(spec);
        gptq.quantize_weights_gptq(spec, calibration.view());
        CHECK(gptq.config().quantization_method == "gptq");
        CHECK(gptq.weight_bytes() == rtn.weight_bytes());
        REQUIRE(gptq.weights_quantized()[1].w2.size() == 4);
        // Every expert was reached here, so none is round to nearest's.
        for (std::size_t l = 0; l < 2; ++l)
            for (index_t e = 0; e < 4; ++e)
                CHECK_FALSE(same_quantized(gptq.weights_quantized()[l].w1[static_cast<std::size_t>(e)],
                                           rtn.weights_quantized()[l].w1[static_cast<std::size_t>(e)]));
        for (const auto* windows : {&calibration, &other}) {
            const std::vector<float> want = window_logits(reference, *windows);
            const std::vector<float> got_rtn = window_logits(rtn, *windows), got_gptq = window_logits(gptq, *windows);
            const double e_rtn = mean_square_difference(got_rtn, want);
            const double e_gptq = mean_square_difference(got_gptq, want);
            const double m_rtn = median_position_square_difference(got_rtn, want, 64);
            const double m_gptq = median_position_square_difference(got_gptq, want, 64);
            INFO((windows == &calibration ? "calibration" : "other")
                 << " windows: mean square logit error rtn " << e_rtn << ", gptq " << e_gptq
                 << "; median over positions rtn " << m_rtn << ", gptq " << m_gptq);
            CHECK(m_gptq > 0.0);
            CHECK(m_gptq < (windows == &calibration ? 0.8 : 1.0) * m_rtn);
            // At int4 rounding's own error outweighs the few flipped positions: the mean is below too.
            if (spec.format == quant_format::int4) CHECK(e_gptq < (windows == &calibration ? 0.8 : 1.0) * e_rtn);
        }
    }
    SECTION("an expert no calibration token reaches is rounded to nearest") {
        // Layer 0's router: expert 0 scores a = h . v, expert 1 -a, experts 2 and 3 exactly 0.
        // Top-2 takes the larger of +-a, then expert 2 (ties go to the lower index): never 3.
        tinyllm::model_weights cut = w;
        tensor<float, 2>& router = cut.layers[0].router;  // (E, D)
        for (index_t d = 0; d < 64; ++d) router(1, d) = -router(0, d), router(2, d) = 0.0f, router(3, d) = 0.0f;
        const quant_spec spec{quant_format::int4, 32};
        cpu::model m(c, cut);
        m.quantize_weights_gptq(spec, calibration.view());
        const tinyllm::layer_weights_quantized& Q = m.weights_quantized()[0];
        for (auto [got, dense] : {std::pair{&Q.w1, &cut.layers[0].w1}, {&Q.w3, &cut.layers[0].w3},
                                  {&Q.w2, &cut.layers[0].w2}}) {
            CHECK(same_quantized((*got)[3], tinyllm::quantize_rtn(expert_matrix(*dense, 3).view(), spec)));
            CHECK_FALSE(same_quantized((*got)[2], tinyllm::quantize_rtn(expert_matrix(*dense, 2).view(), spec)));
        }
    }
}

TEST_CASE("kv_cache_int8: each position's keys and values within half a step of their own scale", "[quantize]") {
    const index_t B = 2, cap = 12, H = 3, D = 16;
    tinyllm::kv_cache_int8 cache(B, cap, H, D);
    CHECK(cache.bytes() == 2 * (B * cap * H * D + 4 * B * cap * H));
    std::vector<tensor<float, 4>> ks, vs;
    std::uint64_t seed = tinyllm_test::test_seed() + 90;
    for (const index_t n : {5, 1, 4}) {
        tensor<float, 4> k({B, n, H, D}), v({B, n, H, D});
        tinyllm::cpu::fill_uniform(k.view(), seed++, -2.0f, 2.0f);
        tinyllm::cpu::fill_uniform(v.view(), seed++, -2.0f, 2.0f);
        // An outlier, an all-zero row, a row of subnormal size and one of huge size.
        k(0, 0, 0, 3) = 900.0f;
        for (index_t d = 0; d < D; ++d) {
            v(1, 0, 2, d) = 0.0f;
            k(1, 0, 1, d) *= 1e-40f;
            v(0, 0, 1, d) *= 1e30f;
        }
        cache.append(k.view(), v.view());
        ks.push_back(k), vs.push_back(v);
    }
    REQUIRE(cache.length() == 10);
    tensor<float, 4> k_out({B, 10, H, D}, std::numeric_limits<float>::quiet_NaN()), v_out(k_out.shape(), k_out(0, 0, 0, 0));
    cache.dequantize(k_out.view(), v_out.view());
    index_t t0 = 0, checked = 0;
    for (std::size_t chunk = 0; chunk < ks.size(); ++chunk) {
        const index_t n = ks[chunk].extent(1);
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < n; ++t)
                for (index_t h = 0; h < H; ++h)
                    for (const bool key : {true, false}) {
                        const tensor<float, 4>& x = key ? ks[chunk] : vs[chunk];
                        const tensor<float, 4>& got = key ? k_out : v_out;
                        const float s = (key ? cache.key_scales() : cache.value_scales())(b, t0 + t, h);
                        double amax = 0;
                        for (index_t d = 0; d < D; ++d) amax = std::max(amax, std::fabs(static_cast<double>(x(b, t, h, d))));
                        INFO("chunk " << chunk << " (b, t, h) = (" << b << ", " << t << ", " << h << ") key " << key);
                        // The scale is the step of 127 levels over max|x| (up to one ulp up).
                        CHECK(static_cast<double>(s) * 127.0 >= amax);
                        CHECK(static_cast<double>(s) * 127.0 <=
                              amax * (1.0 + 1e-6) + 127.0 * std::numeric_limits<float>::denorm_min());
                        for (index_t d = 0; d < D; ++d) {
                            const double err = std::fabs(static_cast<double>(got(b, t0 + t, h, d)) - x(b, t, h, d));
                            REQUIRE(std::isfinite(got(b, t0 + t, h, d)));
                            CHECK(err <= static_cast<double>(s) * (0.5 + std::ldexp(1.0, -16)) + 1e-45);
                            ++checked;
                        }
                    }
        t0 += n;
    }
    CHECK(checked == 2 * B * 10 * H * D);
    SECTION("truncate keeps the first positions; bad input is refused") {
        cache.truncate(6);
        CHECK(cache.length() == 6);
        tensor<float, 4> one({B, 1, H, D}, 0.5f);
        cache.append(one.view(), one.view());
        tensor<float, 4> k6({B, 7, H, D}), v6(k6.shape());
        cache.dequantize(k6.view(), v6.view());
        CHECK(std::fabs(k6(1, 6, 2, 5) - 0.5f) <= 1e-6f);  // 127 steps of (0.5 / 127, rounded up)
        CHECK(k6(0, 0, 0, 3) == k_out(0, 0, 0, 3));
        CHECK_THROWS_WITH(cache.truncate(8), contains("length 8 is outside [0, 7]"));
        tensor<float, 4> many({B, 6, H, D}, 1.0f);
        CHECK_THROWS_WITH(cache.append(many.view(), many.view()), contains("6 new positions after 7 exceed the capacity 12"));
        // A view claiming more positions than index_t can add to the length: refused, not overflowed.
        tinyllm::kv_cache_int8 single(1, 4, 1, 1);
        const tinyllm::tensor<float, 4> first({1, 1, 1, 1}, 0.5f);
        single.append(first.view(), first.view());
        const tinyllm::tensor_view<const float, 4> endless(first.data(), {1, std::numeric_limits<index_t>::max(), 1, 1},
                                                           {0, 0, 0, 0});
        CHECK_THROWS_WITH(single.append(endless, endless),
                          contains("9223372036854775807 new positions after 1 exceed the capacity 4"));
        one(1, 0, 2, 7) = std::numeric_limits<float>::quiet_NaN();
        CHECK_THROWS_WITH(cache.append(one.view(), tensor<float, 4>({B, 1, H, D}, 0.0f).view()),
                          contains("key (1, 0, 2, 7) is nan; only finite numbers can be quantized"));
        tensor<float, 4> wrong({B, 1, H, D + 1}, 0.0f);
        CHECK_THROWS_WITH(cache.append(wrong.view(), wrong.view()), contains("kv_cache_int8::append: k_new"));
        CHECK_THROWS_WITH(tinyllm::kv_cache_int8(1, 0, 1, 1), contains("must all be at least 1"));
    }
}

TEST_CASE("model sessions with an int8 KV cache: the float model's logits within the cache's rounding", "[quantize]") {
    using tinyllm::model_arch;
    using kv = cpu::model::kv_dtype;
    const std::vector<tinyllm::token_id> prompt = {3, 17, 42, 5, 9, 61, 2, 8};
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama}) {
        const tinyllm::model_config c = tinyllm_test::small_model_config(arch, 64, 64, 16, 96, 32, false);
        cpu::model m(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 84));
        // Prefill, then three decode steps; the logits of every fed position.
        const auto run = [&](cpu::model::session s) {
            std::vector<float> all;
            const auto keep = [&](const tensor<float, 2>& l) { all.insert(all.end(), l.values().begin(), l.values().end()); };
            keep(m.forward(s, prompt));
            for (const tinyllm::token_id t : {11, 12, 13}) keep(m.forward(s, std::vector<tinyllm::token_id>{t}));
            return all;
        };
        const std::string name = arch == model_arch::gpt2 ? "gpt2" : "llama";
        const auto float_cache = run(m.new_session(16));
        const auto int8_cache = run(m.new_session(16, kv::int8));
        CHECK(m.new_session(16, kv::int8).dtype() == kv::int8);
        CHECK(m.new_session(16).cache_bytes() == 2 * 2 * 16 * c.num_kv_heads * c.head_dim * 4);
        CHECK(m.new_session(16, kv::int8).cache_bytes() == 2 * 2 * 16 * c.num_kv_heads * (c.head_dim + 4));
        // The rounding shows, and stays small (keys and values to 1/254 of their range).
        CHECK(int8_cache != float_cache);
        TINYLLM_REQUIRE_CLOSE(int8_cache, float_cache, tinyllm_test::tolerance{2e-2, 2e-2, 1e-2},
                              name + ": int8 KV cache against float32");
        // The reference kernels over an int8 cache agree with the blocked ones, though not to float
        // rounding: the two compute keys and values that differ in their last bits, and an element
        // that lands on a rounding boundary is stored one step (1/254 of its row's range) apart. A
        // flip costs at most what the int8 rounding itself costs, so the bound is the one above
        // (seen over 500 seeds: max-abs up to 2.1e-3, rel-L2 up to 7.1e-4).
        m.set_kernels(cpu::model::kernels::reference);
        const auto reference = run(m.new_session(16, kv::int8));
        m.set_kernels(cpu::model::kernels::blocked);
        TINYLLM_REQUIRE_CLOSE(int8_cache, reference, tinyllm_test::tolerance{2e-2, 2e-2, 1e-2},
                              name + ": int8 KV cache, blocked against reference kernels");
        // Rolled back and fed again: the same logits (each position's rounding is its own).
        auto s = m.new_session(16, kv::int8);
        m.forward(s, prompt);
        m.forward(s, std::vector<tinyllm::token_id>{11});
        m.truncate(s, 8);
        const auto again = m.forward(s, std::vector<tinyllm::token_id>{11});
        const std::vector<float> first(int8_cache.begin() + 8 * 64, int8_cache.begin() + 9 * 64);
        CHECK(std::vector<float>(again.values().begin(), again.values().end()) == first);
    }
}

TEST_CASE("a quantized_matrix whose parts disagree with its shape is refused", "[quantize]") {
    tensor<float, 2> w({4, 8});
    cpu::fill_normal(w, tinyllm_test::test_seed() + 52);
    tensor<float, 2> x({2, 8}), out({2, 4}), dense({4, 8});
    const quantized_matrix good = tinyllm::quantize_rtn(w.view(), {quant_format::int4, 4});
    // quantized_matrix is a plain struct a caller may fill: each part is checked
    // against rows, cols and the format before anything indexes it.
    quantized_matrix q = good;
    q.data.clear();
    CHECK_THROWS_WITH(cpu::linear_quantized_fused(out.view(), x.view(), q),
                      contains("the quantized weight (4 x 8, int4-g4) needs 16 bytes of data, it has 0"));
    q = good;
    q.spec.group = 0;
    CHECK_THROWS_WITH(tinyllm::dequantize(dense.view(), q), contains("dequantize: int4 group size 0 must be even"));
    q = good;
    q.scales = tensor<float, 2>({4, 1});
    CHECK_THROWS_WITH(tinyllm::linear_quantized(out.view(), x.view(), q),
                      contains("the scales have shape (4, 1); int4-g4 needs (4, 2)"));
    q = good;
    q.zeros = tensor<std::uint8_t, 2>({4, 1});
    CHECK_THROWS_WITH(tinyllm::dequantize(dense.view(), q),
                      contains("the zero points have shape (4, 1); int4-g4 needs (4, 2)"));
    const quantized_matrix q8 = tinyllm::quantize_rtn(w.view(), {});
    q = q8;
    q.zeros = tensor<std::uint8_t, 2>({4, 1});
    CHECK_THROWS_WITH(tinyllm::dequantize(dense.view(), q), contains("int8 needs none"));
    // The values too: a NaN or negative scale, a zero point past 15.
    q = good;
    q.scales(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(tinyllm::linear_quantized(out.view(), x.view(), q),
                      contains("scale (1, 1) is nan; scales are finite and >= 0"));
    q = q8;
    q.scales(3, 0) = -1.0f;
    CHECK_THROWS_WITH(cpu::linear_quantized_fused(out.view(), x.view(), q), contains("scale (3, 0) is -1"));
    q = good;
    q.zeros(2, 0) = 16;
    CHECK_THROWS_WITH(tinyllm::dequantize(dense.view(), q), contains("zero point (2, 0) is 16; int4 zero points are in [0, 15]"));
    tinyllm::dequantize(dense.view(), good);  // the parts quantize_rtn wrote agree
    tinyllm::dequantize(dense.view(), q8);
    // The Hessian's (K, K) sum is allocated only for a size a layer can have.
    CHECK_THROWS_WITH(tinyllm::gptq_hessian(-100000), contains("gptq_hessian: -100000 inputs"));
    CHECK_THROWS_WITH(tinyllm::gptq_hessian(index_t{1} << 40), contains("inputs (a layer takes between 1 and 2^16"));
    CHECK_THROWS_WITH(tinyllm::gptq_hessian(index_t{1} << 24),
                      contains("16777216 inputs (a layer takes between 1 and 2^16"));
}
