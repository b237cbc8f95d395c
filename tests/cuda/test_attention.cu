// CUDA tests for the attention ladder: v1 naive, v2 tiled, v3 flash, v4 mma
// (tensor cores) and split-K decode, each against the CPU reference computed in
// float64 from the same (rounded) inputs, over a grid of shapes and options;
// the device KV cache step by step; and the host-side rejections.
//
// Big shapes are tagged [large]; `test_cuda_attention "~[large]"` skips them
// (e.g. under compute-sanitizer).
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/attention_decode.cuh>
#include <tinyllm/cuda/attention_flash.cuh>
#include <tinyllm/cuda/attention_flash2.cuh>
#include <tinyllm/cuda/attention_tma.cuh>
#include <tinyllm/cuda/attention_wgmma.cuh>
#include <tinyllm/cuda/attention_mma.cuh>
#include <tinyllm/cuda/attention_naive.cuh>
#include <tinyllm/cuda/attention_tiled.cuh>
#include <tinyllm/cuda/device_buffer.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::attention_options;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::float16;
using tinyllm::index_t;
using tinyllm_test::contains;
using tinyllm_test::tolerance;

namespace {

struct shape {
    index_t B, Tq, Tk, Hq, Hkv, D;
};

std::string describe(const shape& s) {
    std::ostringstream o;
    o << "B" << s.B << " Tq" << s.Tq << " Tk" << s.Tk << " Hq" << s.Hq << " Hkv" << s.Hkv << " D" << s.D;
    return o.str();
}

// The options of one test variant; device copies of slopes/lengths live here.
struct variant {
    std::string name;
    bool causal = false;
    index_t window = 0;
    bool alibi = false;
    float softcap = 0;
    bool padding = false;
    float scale = 0;  // 0: the default 1/sqrt(D)
};

const variant variants[] = {
    {"plain"}, {"causal", true}, {"causal+window 7", true, 7}, {"alibi+causal", true, 0, true},
    {"softcap 2, scale 0.3", false, 0, false, 2.0f, false, 0.3f}, {"padding", false, 0, false, 0, true}, {"padding+causal", true, 0, false, 0, true},
};

// The variants one shape of a grid runs: every one of them, except under
// ThreadSanitizer (CI's race check, docs/simulator.md). There every barrier of the
// simulated GPU merges one vector clock per thread of the block, and a rung's grid of
// shapes x variants took up to three minutes (v2 tiled: 1024 threads a block). What
// decides where a kernel's threads meet in shared memory is the shape (tiles, partial
// tiles, head dim, GQA group); the variants change which scores are masked. So under
// the race check each shape runs two variants, the pair moving along the list from
// shape to shape and from grid to grid (`rotation`), so that every variant still runs
// on the grid's shapes; the full grid runs everywhere else (the simulated GPU, fresh
// seeds, AddressSanitizer, real GPUs).
#if defined(__SANITIZE_THREAD__)
constexpr bool race_check_build = true;
#else
constexpr bool race_check_build = false;
#endif

std::vector<variant> variants_for(std::size_t shape_index, std::uint64_t rotation = 0) {
    const std::size_t n = std::size(variants);
    if (!race_check_build) return {std::begin(variants), std::end(variants)};
    const std::size_t first = (2 * shape_index + rotation) % n;
    return {variants[first], variants[(first + 1) % n]};
}

// Host data of one problem, rounded to T, and its float64 reference.
template <class T>
struct problem {
    shape s;
    std::vector<T> q, k, v;
    std::vector<float> slopes;
    std::vector<std::int32_t> lengths;
    attention_options host_opts;
    std::vector<double> want_o;  // (B, Tq, Hq, D)
    std::vector<float> want_p;   // (B, Hq, Tq, Tk)
    tc::device_buffer<T> dq, dk, dv, dout;
    tc::device_buffer<float> dslopes;
    tc::device_buffer<std::int32_t> dlengths;

    problem(const shape& sh, const variant& var, std::uint64_t which) : s(sh) {
        auto fill = [&](std::vector<T>& x, index_t n, std::uint64_t w) {
            const auto f = tinyllm_test::random_floats(static_cast<std::size_t>(n), w, -1.0f, 1.0f);
            x.resize(f.size());
            for (std::size_t i = 0; i < f.size(); ++i) x[i] = tinyllm::from_float<T>(f[i]);
        };
        fill(q, s.B * s.Tq * s.Hq * s.D, which);
        fill(k, s.B * s.Tk * s.Hkv * s.D, which + 1);
        fill(v, s.B * s.Tk * s.Hkv * s.D, which + 2);
        host_opts.causal = var.causal;
        if (var.window) host_opts.window = var.window;
        if (var.softcap > 0) host_opts.softcap = var.softcap;
        if (var.scale > 0) host_opts.scale = var.scale;
        if (var.alibi) {
            for (index_t h = 0; h < s.Hq; ++h) slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(s.Hq)));
            host_opts.alibi_slopes = {slopes.data(), {s.Hq}};
        }
        if (var.padding) {
            for (index_t b = 0; b < s.B; ++b) lengths.push_back(static_cast<std::int32_t>(b % 2 ? s.Tk / 2 : s.Tk - 1));
            host_opts.key_lengths = {lengths.data(), {s.B}};
        }
        // float64 reference from exactly the values the kernels see.
        auto to_d = [](const std::vector<T>& x) {
            std::vector<double> y(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) y[i] = tinyllm_test::detail::as_double(x[i]);
            return y;
        };
        auto qd = to_d(q), kd = to_d(k), vd = to_d(v);
        want_o.assign(q.size(), 0.0);
        want_p.assign(static_cast<std::size_t>(s.B * s.Hq * s.Tq * s.Tk), 0.0f);
        tinyllm::cpu::attention<double>(tinyllm::tensor_view<double, 4>(want_o.data(), {s.B, s.Tq, s.Hq, s.D}),
                                        tinyllm::tensor_view<const double, 4>(qd.data(), {s.B, s.Tq, s.Hq, s.D}),
                                        tinyllm::tensor_view<const double, 4>(kd.data(), {s.B, s.Tk, s.Hkv, s.D}),
                                        tinyllm::tensor_view<const double, 4>(vd.data(), {s.B, s.Tk, s.Hkv, s.D}), host_opts,
                                        tinyllm::tensor_view<float, 4>(want_p.data(), {s.B, s.Hq, s.Tq, s.Tk}));
        // The keys past a row's length are padding (in a KV cache: never written);
        // make them NaN on the device, so a kernel that multiplies them in fails.
        if (var.padding) {
            const T nan = tinyllm::from_float<T>(std::numeric_limits<float>::quiet_NaN());
            for (index_t b = 0; b < s.B; ++b)
                for (index_t j = lengths[static_cast<std::size_t>(b)]; j < s.Tk; ++j)
                    for (index_t e = 0; e < s.Hkv * s.D; ++e) {
                        const auto at = static_cast<std::size_t>((b * s.Tk + j) * s.Hkv * s.D + e);
                        k[at] = nan;
                        v[at] = nan;
                    }
        }
        dq = tc::to_device(q);
        dk = tc::to_device(k);
        dv = tc::to_device(v);
        dout = tc::device_buffer<T>(q.size());
        if (!slopes.empty()) dslopes = tc::to_device(slopes);
        if (!lengths.empty()) dlengths = tc::to_device(lengths);
    }

    attention_options device_opts() const {
        attention_options o = host_opts;
        if (!slopes.empty()) o.alibi_slopes = {dslopes.data(), {s.Hq}};
        if (!lengths.empty()) o.key_lengths = {dlengths.data(), {s.B}};
        return o;
    }
    tinyllm::tensor_view<T, 4> out() { return dout.view(extents<4>{s.B, s.Tq, s.Hq, s.D}); }
    tinyllm::tensor_view<const T, 4> qv() const { return dq.view(extents<4>{s.B, s.Tq, s.Hq, s.D}); }
    tinyllm::tensor_view<const T, 4> kv() const { return dk.view(extents<4>{s.B, s.Tk, s.Hkv, s.D}); }
    tinyllm::tensor_view<const T, 4> vv() const { return dv.view(extents<4>{s.B, s.Tk, s.Hkv, s.D}); }
};

const tolerance float_tol{2e-5, 1e-4, 1e-5};
const tolerance bf16_tol{2e-2, 2e-2, 1e-2};   // P and O rounded to bf16 (8 bits of mantissa)
const tolerance fp16_tol{4e-3, 4e-3, 2e-3};   // 11 bits of mantissa

// The shapes every float version runs: odd lengths, Tq != Tk (both ways), Tq = 1,
// D 64 / 128 / odd, GQA ratios 1 / 4 / 8.
const shape float_shapes[] = {
    {1, 1, 1, 1, 1, 64},   {2, 37, 37, 4, 4, 64}, {1, 17, 45, 8, 2, 128}, {2, 1, 77, 8, 1, 64},
    {1, 50, 50, 4, 1, 37}, {1, 45, 17, 2, 2, 64}, {1, 33, 70, 8, 8, 128},
};
const shape float_large[] = {{2, 300, 700, 8, 1, 128}, {1, 1024, 1024, 4, 4, 64}};

template <class Run>
void run_float_grid(const char* version, const shape* shapes, std::size_t n_shapes, Run&& run, bool check_probs) {
    std::uint64_t which = 0;
    for (std::size_t si = 0; si < n_shapes; ++si)
        for (const auto& var : variants_for(si)) {
            problem<float> p(shapes[si], var, 100 * which++);
            INFO(version << " " << describe(p.s) << " " << var.name);
            tc::device_buffer<float> scores(p.want_p.size());
            p.dout.poison();
            scores.poison();
            run(p, scores);
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, float_tol, std::string(version) + " O");
            if (check_probs)
                TINYLLM_REQUIRE_CLOSE(tc::to_host(scores), p.want_p, tolerance{1e-5, 1e-4, 1e-5}, std::string(version) + " P");
        }
}

auto naive = [](problem<float>& p, tc::device_buffer<float>& scores) {
    tc::attention_naive<float>(p.out(), p.qv(), p.kv(), p.vv(), scores.view(extents<4>{p.s.B, p.s.Hq, p.s.Tq, p.s.Tk}),
                               p.device_opts());
};
auto tiled = [](problem<float>& p, tc::device_buffer<float>& scores) {
    tc::attention_tiled<float>(p.out(), p.qv(), p.kv(), p.vv(), scores.view(extents<4>{p.s.B, p.s.Hq, p.s.Tq, p.s.Tk}),
                               p.device_opts());
};
auto flash = [](problem<float>& p, tc::device_buffer<float>&) {
    tc::attention_flash<float>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts());
};

}  // namespace

TEST_CASE("attention v1 naive matches the float64 reference, P included", "[cuda][attention]") {
    run_float_grid("v1 naive", float_shapes, std::size(float_shapes), naive, true);
}
TEST_CASE("attention v1 naive, large shapes", "[cuda][attention][large]") {
    run_float_grid("v1 naive", float_large, std::size(float_large), naive, true);
}
TEST_CASE("attention v2 tiled matches the float64 reference, P included", "[cuda][attention]") {
    run_float_grid("v2 tiled", float_shapes, std::size(float_shapes), tiled, true);
}
TEST_CASE("attention v2 tiled, large shapes", "[cuda][attention][large]") {
    run_float_grid("v2 tiled", float_large, std::size(float_large), tiled, true);
}
TEST_CASE("attention v3 flash matches the float64 reference", "[cuda][attention]") {
    run_float_grid("v3 flash", float_shapes, std::size(float_shapes), flash, false);
    // Head dim 256 (the largest v3 takes) and a tiny odd one.
    const shape extra[] = {{1, 20, 41, 2, 1, 256}, {2, 9, 9, 3, 3, 3}};
    run_float_grid("v3 flash", extra, std::size(extra), flash, false);
}
TEST_CASE("attention v3 flash, large shapes", "[cuda][attention][large]") {
    run_float_grid("v3 flash", float_large, std::size(float_large), flash, false);
}
TEST_CASE("attention v3 flash in bfloat16 (float math)", "[cuda][attention]") {
    problem<bfloat16> p({2, 29, 40, 4, 2, 64}, variants[1], 7000);
    p.dout.poison();
    tc::attention_flash<bfloat16>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts());
    TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, bf16_tol, "v3 flash bf16 O");
}

namespace {

template <class T>
void run_mma_grid(const shape* shapes, std::size_t n, const tolerance& tol, std::uint64_t seed) {
    for (std::size_t si = 0; si < n; ++si)
        for (const auto& var : variants_for(si, seed / 100)) {
            problem<T> p(shapes[si], var, seed + 100 * si);
            INFO("v4 mma " << tinyllm::dtype_name<T>() << " " << describe(p.s) << " " << var.name);
            p.dout.poison();
            tc::attention_mma<T>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts());
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, tol, "v4 mma O");
        }
}

const shape mma_shapes[] = {
    {1, 1, 1, 1, 1, 64},    {2, 37, 37, 4, 4, 64},  {1, 17, 45, 8, 2, 128}, {2, 1, 77, 8, 1, 64},
    {1, 130, 130, 4, 1, 128}, {1, 70, 20, 2, 2, 64}, {1, 64, 64, 8, 8, 128}, {1, 65, 129, 4, 4, 64},
};
const shape mma_large[] = {{2, 1000, 1000, 8, 1, 128}, {1, 777, 2049, 8, 2, 64}};

}  // namespace

TEST_CASE("attention v4 mma (bf16 tensor cores) matches the float64 reference", "[cuda][attention]") {
    run_mma_grid<bfloat16>(mma_shapes, std::size(mma_shapes), bf16_tol, 9000);
}
TEST_CASE("attention v4 mma (fp16 tensor cores) matches the float64 reference", "[cuda][attention]") {
    run_mma_grid<float16>(mma_shapes, std::size(mma_shapes), fp16_tol, 9500);
}
TEST_CASE("attention v4 mma, large shapes", "[cuda][attention][large]") {
    run_mma_grid<bfloat16>(mma_large, std::size(mma_large), bf16_tol, 9900);
}

TEST_CASE("attention decode rung 1 (tiles, split-K, GQA-aware) matches the float64 reference", "[cuda][attention]") {
    const shape shapes[] = {{2, 1, 1000, 8, 8, 128}, {2, 1, 1000, 8, 2, 64}, {1, 1, 333, 8, 1, 128},
                            {2, 4, 517, 8, 2, 64},   {1, 3, 100, 4, 4, 37},  {3, 2, 5, 16, 1, 64}};
    tc::attention_workspace workspace;
    std::uint64_t which = 20000;
    for (std::size_t si = 0; si < std::size(shapes); ++si)
        for (const auto& var : variants_for(si))
            for (int splits : {0, 1, 3}) {
                problem<float> p(shapes[si], var, which += 100);
                INFO("decode " << describe(shapes[si]) << " " << var.name << " splits " << splits);
                p.dout.poison();
                tc::attention_decode_tiles<float>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace, splits);
                TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
                TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, float_tol, "decode O");
            }
    // bf16 inputs.
    problem<bfloat16> p({2, 1, 2000, 32, 8, 128}, variants[1], 31000);
    p.dout.poison();
    tc::attention_decode_tiles<bfloat16>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, bf16_tol, "decode bf16 O");
}

TEST_CASE("attention decode, a long cache", "[cuda][attention][large]") {
    problem<bfloat16> p({2, 1, 32768, 32, 8, 128}, variants[0], 32000);
    tc::attention_workspace workspace;
    p.dout.poison();
    tc::attention_decode<bfloat16>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, bf16_tol, "decode bf16 L=32768");
}

TEST_CASE("attention decode rung 2 (warps) matches the float64 reference", "[cuda][attention]") {
    // L = 1; group 1, 2, 4, 8 (MQA); Tq > 1 (rows 5: the 8-row kernel with 3 rows empty;
    // 12 and 32: several row passes); odd lengths. Rows per KV head 1, 2, 4, 8, 5, 12, 32
    // take the kernels for 1, 4 (2 and 4 rows) and 8 rows per block.
    const shape shapes[] = {{1, 1, 1, 1, 1, 64},   {2, 1, 333, 4, 4, 128}, {2, 1, 517, 8, 2, 64},
                            {2, 1, 200, 4, 2, 128}, {1, 1, 301, 8, 1, 128}, {1, 5, 90, 2, 2, 64},
                            {1, 3, 150, 8, 2, 64},  {1, 2, 77, 16, 1, 64}};
    tc::attention_workspace workspace;
    std::uint64_t which = 33000;
    for (std::size_t si = 0; si < std::size(shapes); ++si)
        for (const auto& var : variants_for(si))
            for (int splits : {0, 1, 7}) {
                problem<float> p(shapes[si], var, which += 100);
                INFO("decode warps " << describe(shapes[si]) << " " << var.name << " splits " << splits);
                p.dout.poison();
                tc::attention_decode_warps<float>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace, splits);
                TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
                TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, float_tol, "decode warps O");
            }
    // bf16 (8 elements per 16-byte load), MQA and GQA, many splits; attention_decode runs this rung.
    const shape bf16_shapes[] = {{2, 1, 400, 4, 1, 128}, {1, 2, 99, 8, 2, 64}};
    for (const auto& s : bf16_shapes)
        for (const auto& var : {variants[0], variants[2], variants[3], variants[4], variants[6]})
            for (int splits : {0, 40}) {
                problem<bfloat16> p(s, var, which += 100);
                INFO("decode warps bf16 " << describe(s) << " " << var.name << " splits " << splits);
                p.dout.poison();
                tc::attention_decode<bfloat16>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace, splits);
                TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
                TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, bf16_tol, "decode warps bf16 O");
            }
    // Rows per block asked for: a GQA group of 4 in the 8-row kernel (what `tinyllm bench
    // attention_decode` times against the automatic 4) and in four passes of the 1-row one.
    problem<bfloat16> p({2, 1, 400, 8, 2, 128}, variants[2], which += 100);
    p.dout.poison();
    tc::attention_decode_warps<bfloat16, 8>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, bf16_tol, "decode warps bf16, 8 rows per block");
    p.dout.poison();
    tc::attention_decode_warps<bfloat16, 1>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts(), workspace, 3);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, bf16_tol, "decode warps bf16, 1 row per block");
    // A group of 8 in two passes of the 4-row kernel (`tinyllm bench attention_decode`'s
    // decode_rows4): the second pass's heads too (their own ALiBi slopes), one split and several.
    problem<bfloat16> g8({2, 1, 300, 16, 2, 64}, variants[3], which += 100);
    for (int splits : {1, 4}) {
        INFO("decode warps bf16, a group of 8 in two passes of 4 rows, splits " << splits);
        g8.dout.poison();
        tc::attention_decode_warps<bfloat16, 4>(g8.out(), g8.qv(), g8.kv(), g8.vv(), g8.device_opts(), workspace,
                                                splits);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(g8.dout), g8.want_o, bf16_tol, "decode warps bf16, 4 rows per block");
    }
}

TEST_CASE("attention decode rung 2 rejects what it cannot run; attention_decode falls back", "[cuda][attention][error]") {
    tc::attention_workspace ws;
    problem<float> odd({1, 1, 50, 2, 2, 37}, variants[1], 34000);
    CHECK_THROWS_WITH(tc::attention_decode_warps<float>(odd.out(), odd.qv(), odd.kv(), odd.vv(), {}, ws),
                      contains("attention_decode_warps: it supports head dims 64 and 128, got 37"));
    odd.dout.poison();
    tc::attention_decode<float>(odd.out(), odd.qv(), odd.kv(), odd.vv(), odd.host_opts, ws);  // rung 1
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    TINYLLM_REQUIRE_CLOSE(tc::to_host(odd.dout), odd.want_o, float_tol, "decode fallback D=37");
    // K/V whose time stride (66 floats) is not a multiple of 4: no 16-byte loads.
    problem<float> p({1, 1, 8, 2, 2, 64}, variants[0], 34100);
    tinyllm::tensor_view<const float, 4> skewed(p.dk.data(), {1, 3, 1, 64}, {8 * 2 * 64, 66, 64, 1});
    tc::device_buffer<float> o1(64);
    CHECK_THROWS_WITH(tc::attention_decode_warps<float>(o1.view(extents<4>{1, 1, 1, 64}), p.qv().narrow(2, 0, 1), skewed,
                                                        skewed, {}, ws),
                      contains("16-byte aligned K and V rows"));
    CHECK_NOTHROW(tc::attention_decode<float>(o1.view(extents<4>{1, 1, 1, 64}), p.qv().narrow(2, 0, 1), skewed, skewed, {}, ws));
    problem<float> many({1, 5, 8, 8, 1, 64}, variants[0], 34200);
    CHECK_THROWS_WITH(tc::attention_decode_warps<float>(many.out(), many.qv(), many.kv(), many.vv(), {}, ws),
                      contains("attention_decode_warps: Hq/Hkv * Tq = 8 * 5 = 40") && contains("at most 32"));
    CHECK_THROWS_WITH(tc::attention_decode_warps<float>(p.out(), p.qv(), p.kv(), p.vv(), {}, ws, -1),
                      contains("splits = -1 must be >= 0"));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_CASE("device KV cache: decoding step by step equals full causal attention", "[cuda][attention]") {
    const shape s{2, 12, 12, 8, 2, 64};
    problem<float> full(s, variants[1], 40000);  // causal over all 12 positions
    tc::kv_cache<float> cache(s.B, 16, s.Hkv, s.D);
    tc::attention_workspace workspace;
    index_t t = 0;
    std::vector<double> got(full.want_o.size(), 0.0);
    for (index_t n : {5, 1, 1, 2, 1, 1, 1}) {
        // Slices of (B, T, H, D) along T are strided; copy the new rows into contiguous buffers.
        std::vector<float> kn(static_cast<std::size_t>(s.B * n * s.Hkv * s.D)), vn(kn.size()),
            qn(static_cast<std::size_t>(s.B * n * s.Hq * s.D));
        for (index_t b = 0; b < s.B; ++b)
            for (index_t i = 0; i < n; ++i) {
                for (index_t x = 0; x < s.Hkv * s.D; ++x) {
                    const auto src = static_cast<std::size_t>(((b * s.Tk) + t + i) * s.Hkv * s.D + x);
                    const auto dst = static_cast<std::size_t>((b * n + i) * s.Hkv * s.D + x);
                    kn[dst] = full.k[src];
                    vn[dst] = full.v[src];
                }
                for (index_t x = 0; x < s.Hq * s.D; ++x)
                    qn[static_cast<std::size_t>((b * n + i) * s.Hq * s.D + x)] =
                        full.q[static_cast<std::size_t>(((b * s.Tq) + t + i) * s.Hq * s.D + x)];
            }
        auto dk = tc::to_device(kn), dv = tc::to_device(vn), dq = tc::to_device(qn);
        tc::device_buffer<float> dout(qn.size());
        dout.poison();
        cache.append(dk.view(extents<4>{s.B, n, s.Hkv, s.D}), dv.view(extents<4>{s.B, n, s.Hkv, s.D}));
        tc::attention_decode<float>(dout.view(extents<4>{s.B, n, s.Hq, s.D}), dq.view(extents<4>{s.B, n, s.Hq, s.D}),
                                    cache, full.device_opts(), workspace);
        const auto o = tc::to_host(dout);
        for (index_t b = 0; b < s.B; ++b)
            for (index_t i = 0; i < n; ++i)
                for (index_t x = 0; x < s.Hq * s.D; ++x)
                    got[static_cast<std::size_t>(((b * s.Tq) + t + i) * s.Hq * s.D + x)] =
                        o[static_cast<std::size_t>((b * n + i) * s.Hq * s.D + x)];
        t += n;
    }
    CHECK(cache.length() == 12);
    TINYLLM_REQUIRE_CLOSE(got, full.want_o, float_tol, "kv cache decode vs full causal");
    tc::device_buffer<float> five(static_cast<std::size_t>(s.B * 5 * s.Hkv * s.D));
    CHECK_THROWS_WITH(cache.append(five.view(extents<4>{s.B, 5, s.Hkv, s.D}), five.view(extents<4>{s.B, 5, s.Hkv, s.D})),
                      contains("exceed the capacity 16"));
}

TEST_CASE("a NaN in q reaches its row of the output as NaN on every float rung, as on the CPU", "[cuda][attention][error]") {
    // The flash-family rungs took a NaN row sum for a row that saw no key and wrote 0s.
    const shape sh{1, 2, 70, 2, 2, 64};
    problem<float> p(sh, variants[0], 36000);
    p.q[0] = std::numeric_limits<float>::quiet_NaN();  // row (b 0, query 0, head 0)
    p.dq = tc::to_device(p.q);
    const index_t D = sh.D;
    const auto check = [&](const char* rung) {
        INFO(rung);
        const auto got = tc::to_host(p.dout);
        for (index_t d = 0; d < D; ++d) CHECK(std::isnan(got[static_cast<std::size_t>(d)]));
        CHECK(std::all_of(got.begin() + D, got.end(), [](float x) { return std::isfinite(x); }));
    };
    tc::device_buffer<float> scores(static_cast<std::size_t>(sh.B * sh.Hq * sh.Tq * sh.Tk));
    const auto sv = scores.view(extents<4>{sh.B, sh.Hq, sh.Tq, sh.Tk});
    tc::attention_workspace ws;
    p.dout.poison();
    tc::attention_naive<float>(p.out(), p.qv(), p.kv(), p.vv(), sv);
    check("naive");
    p.dout.poison();
    tc::attention_tiled<float>(p.out(), p.qv(), p.kv(), p.vv(), sv);
    check("tiled");
    p.dout.poison();
    tc::attention_flash<float>(p.out(), p.qv(), p.kv(), p.vv());
    check("flash");
    for (int splits : {1, 3}) {
        p.dout.poison();
        tc::attention_decode_tiles<float>(p.out(), p.qv(), p.kv(), p.vv(), {}, ws, splits);
        check("decode tiles");
        p.dout.poison();
        tc::attention_decode_warps<float>(p.out(), p.qv(), p.kv(), p.vv(), {}, ws, splits);
        check("decode warps");
    }
}

TEST_CASE("attention kernels reject what they do not support", "[cuda][attention][error]") {
    problem<bfloat16> p({1, 4, 4, 2, 2, 80}, variants[0], 50000);
    CHECK_THROWS_WITH(tc::attention_mma<bfloat16>(p.out(), p.qv(), p.kv(), p.vv()),
                      contains("attention v4 (attention_mma) supports head dims 64 and 128, got 80"));
    problem<bfloat16> odd({1, 4, 4, 2, 2, 64}, variants[0], 50100);
    // K/V views whose time stride (132 elements) is not a multiple of 8: cp.async could not move them.
    tinyllm::tensor_view<const bfloat16, 4> skewed_k(odd.dk.data(), {1, 3, 2, 64}, {4 * 2 * 64, 2 * 64 + 4, 64, 1});
    tinyllm::tensor_view<const bfloat16, 4> skewed_v(odd.dv.data(), {1, 3, 2, 64}, {4 * 2 * 64, 2 * 64 + 4, 64, 1});
    CHECK_THROWS_WITH(tc::attention_mma<bfloat16>(odd.out(), odd.qv(), skewed_k, skewed_v), contains("multiple of 8"));

    problem<float> big({1, 2, 8, 4, 4, 300}, variants[0], 50200);
    CHECK_THROWS_WITH(tc::attention_flash<float>(big.out(), big.qv(), big.kv(), big.vv()),
                      contains("attention_flash supports head dims up to 256, got 300"));
    problem<float> many({1, 5, 8, 8, 1, 64}, variants[0], 50300);  // 8 heads * 5 queries = 40 rows per KV head
    CHECK_THROWS_WITH(tc::attention_decode<float>(many.out(), many.qv(), many.kv(), many.vv()),
                      contains("at most 32 are supported"));
    // The CPU reference's checks apply to every version.
    problem<float> gqa({1, 3, 3, 4, 4, 64}, variants[0], 50400);
    tc::device_buffer<float> k3(1 * 3 * 3 * 64);
    auto k3v = k3.view(extents<4>{1, 3, 3, 64});
    CHECK_THROWS_WITH(tc::attention_flash<float>(gqa.out(), gqa.qv(), k3v, k3v), contains("must be a multiple of"));
    tc::device_buffer<float> small_scores(4);
    CHECK_THROWS_WITH(tc::attention_naive<float>(gqa.out(), gqa.qv(), gqa.kv(), gqa.vv(), small_scores.view(extents<4>{1, 1, 2, 2})),
                      contains("attention_naive: scores has shape"));
    attention_options w;
    w.window = 3;  // without causal
    CHECK_THROWS_WITH(tc::attention_tiled<float>(gqa.out(), gqa.qv(), gqa.kv(), gqa.vv(),
                                                 small_scores.view(extents<4>{1, 1, 2, 2}), w),
                      contains("needs causal = true"));
}

namespace {

// Calls check(launcher name, call) for every CUDA attention launcher that takes T.
template <class Check>
void for_each_launcher(problem<float>& p, const attention_options& opts, tc::attention_workspace& ws, Check&& check) {
    const extents<4> shape{p.s.B, p.s.Hq, p.s.Tq, p.s.Tk};
    tc::device_buffer<float> scores(static_cast<std::size_t>(shape.product()));
    check("attention_naive",
          [&] { tc::attention_naive<float>(p.out(), p.qv(), p.kv(), p.vv(), scores.view(shape), opts); });
    check("attention_tiled",
          [&] { tc::attention_tiled<float>(p.out(), p.qv(), p.kv(), p.vv(), scores.view(shape), opts); });
    check("attention_flash", [&] { tc::attention_flash<float>(p.out(), p.qv(), p.kv(), p.vv(), opts); });
    check("attention_decode", [&] { tc::attention_decode<float>(p.out(), p.qv(), p.kv(), p.vv(), opts, ws); });
    check("attention_decode", [&] { tc::attention_decode<float>(p.out(), p.qv(), p.kv(), p.vv(), opts); });
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());  // before the scores are freed
}
template <class Check>
void for_each_launcher(problem<bfloat16>& p, const attention_options& opts, tc::attention_workspace&, Check&& check) {
    check("attention_mma", [&] { tc::attention_mma<bfloat16>(p.out(), p.qv(), p.kv(), p.vv(), opts); });
}

// alibi_slopes and key_lengths in host memory are rejected by every launcher, naming it and
// the option; the same values in device memory run.
template <class T>
void check_host_option_pointers(std::uint64_t seed) {
    const shape s{2, 3, 40, 4, 2, 64};
    problem<T> alibi(s, variants[3], seed), padded(s, variants[5], seed + 100);
    tc::attention_workspace ws;
    for (problem<T>* p : {&alibi, &padded}) {
        const std::string option = p == &alibi ? "alibi_slopes" : "key_lengths";
        for_each_launcher(*p, p->host_opts, ws, [&](const char* launcher, auto&& call) {
            INFO(launcher << " with " << option << " in host memory");
            CHECK_THROWS_WITH(
                call(), contains(std::string(launcher) + ": attention_options::" + option + " points to host memory") &&
                            contains("must point to device memory"));
        });
        for_each_launcher(*p, p->device_opts(), ws, [&](const char* launcher, auto&& call) {
            INFO(launcher << " with " << option << " in device memory");
            CHECK_NOTHROW(call());
        });
    }
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace

TEST_CASE("attention launchers reject alibi_slopes and key_lengths in host memory", "[cuda][attention][error]") {
    check_host_option_pointers<float>(60000);
    check_host_option_pointers<bfloat16>(61000);
}

namespace {

// Calls check(launcher name, call) for every CUDA attention launcher on out, q,
// k, v (scores: the workspace of v1 and v2).
template <class Check>
void for_each_launcher_on(tinyllm::tensor_view<float, 4> out, tinyllm::tensor_view<const float, 4> q,
                          tinyllm::tensor_view<const float, 4> k, tinyllm::tensor_view<const float, 4> v,
                          tinyllm::tensor_view<float, 4> scores, Check&& check) {
    tc::attention_workspace ws;
    check("attention_naive", [&] { tc::attention_naive<float>(out, q, k, v, scores); });
    check("attention_tiled", [&] { tc::attention_tiled<float>(out, q, k, v, scores); });
    check("attention_flash", [&] { tc::attention_flash<float>(out, q, k, v); });
    check("attention_decode", [&] { tc::attention_decode<float>(out, q, k, v, {}, ws); });
    check("attention_decode_warps", [&] { tc::attention_decode_warps<float>(out, q, k, v, {}, ws); });
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
}
template <class Check>
void for_each_launcher_on(tinyllm::tensor_view<bfloat16, 4> out, tinyllm::tensor_view<const bfloat16, 4> q,
                          tinyllm::tensor_view<const bfloat16, 4> k, tinyllm::tensor_view<const bfloat16, 4> v,
                          Check&& check) {
    check("attention_mma", [&] { tc::attention_mma<bfloat16>(out, q, k, v); });
    check("attention_flash2", [&] { tc::attention_flash2<bfloat16>(out, q, k, v); });
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace

TEST_CASE("attention launchers refuse an out over q, k or v, scores or lse over another tensor, a stride-0 out",
          "[cuda][attention][error]") {
    const shape s{1, 4, 4, 2, 2, 64};  // Tq = Tk, Hq = Hkv: out, q, k and v share a shape
    const extents<4> x{s.B, s.Tq, s.Hq, s.D}, score_shape{s.B, s.Hq, s.Tq, s.Tk};
    problem<float> p(s, variants[0], 62000);
    tc::device_buffer<float> scores(static_cast<std::size_t>(score_shape.product()));
    const auto refused = [&](tinyllm::tensor_view<float, 4> out, const std::string& message) {
        for_each_launcher_on(out, p.qv(), p.kv(), p.vv(), scores.view(score_shape),
                             [&](const char* launcher, auto&& call) {
                                 INFO(launcher);
                                 CHECK_THROWS_WITH(call(), contains(std::string(launcher) + ": " + message));
                             });
    };
    refused(tinyllm::tensor_view<float, 4>(p.dk.data(), x), "out must not share memory with k");
    refused(tinyllm::tensor_view<float, 4>(p.dv.data() + 64, x), "out must not share memory with v");
    refused(tinyllm::tensor_view<float, 4>(p.dq.data(), x), "out must not share memory with q");
    refused(tinyllm::tensor_view<float, 4>(p.dout.data(), x, {0, 0, 64, 1}),
            "out has shape (1, 4, 2, 64) and strides (0, 0, 64, 1), so two of its elements share an address");
    const tinyllm::tensor_view<float, 4> scores_over_k(p.dk.data() + 8, score_shape);
    CHECK_THROWS_WITH(tc::attention_naive<float>(p.out(), p.qv(), p.kv(), p.vv(), scores_over_k),
                      contains("attention_naive: scores must not share memory with k"));
    CHECK_THROWS_WITH(tc::attention_tiled<float>(p.out(), p.qv(), p.kv(), p.vv(), scores_over_k),
                      contains("attention_tiled: scores must not share memory with k"));
    CHECK_THROWS_WITH(tc::attention_naive<float>(p.out(), p.qv(), p.kv(), p.vv(),
                                                 tinyllm::tensor_view<float, 4>(p.dout.data(), score_shape)),
                      contains("attention_naive: scores must not share memory with out"));
    CHECK_THROWS_WITH(tc::attention_flash<float>(p.out(), tinyllm::tensor_view<float, 3>(p.dout.data() + 4, {1, 2, 4}),
                                                 p.qv(), p.kv(), p.vv()),
                      contains("attention_flash: lse must not share memory with out"));
    problem<bfloat16> h(s, variants[0], 62100);
    for_each_launcher_on(tinyllm::tensor_view<bfloat16, 4>(h.dv.data(), x), h.qv(), h.kv(), h.vv(),
                         [&](const char* launcher, auto&& call) {
                             INFO(launcher);
                             CHECK_THROWS_WITH(call(),
                                               contains(std::string(launcher) + ": out must not share memory with v"));
                         });

    // Allowed: q, k, v and out as the heads of one fused (B, T, 4 H, D) buffer, interleaved, never overlapping.
    const index_t n = x.product(), width = 4 * s.Hq * s.D;
    tc::device_buffer<float> fused(static_cast<std::size_t>(4 * n));
    for (index_t t = 0; t < s.Tq; ++t)
        for (int which = 0; which < 3; ++which) {
            const std::vector<float>& from = which == 0 ? p.q : which == 1 ? p.k : p.v;
            TINYLLM_CUDA_CHECK(cudaMemcpy(fused.data() + t * width + which * s.Hq * s.D, from.data() + t * s.Hq * s.D,
                                          sizeof(float) * static_cast<std::size_t>(s.Hq * s.D),
                                          cudaMemcpyHostToDevice));
        }
    const extents<4> fused_strides{s.Tq * width, width, s.D, 1};
    const auto head = [&](int which) {
        return tinyllm::tensor_view<float, 4>(fused.data() + which * s.Hq * s.D, x, fused_strides);
    };
    for_each_launcher_on(
        head(3), head(0), head(1), head(2), scores.view(score_shape), [&](const char* launcher, auto&& call) {
            INFO(launcher);
            // The out heads poisoned before each launcher, so that one that writes nothing
            // cannot pass on the previous launcher's output.
            const std::vector<float> nan_rows(static_cast<std::size_t>(s.Hq * s.D), std::nanf(""));
            for (index_t t = 0; t < s.Tq; ++t)
                TINYLLM_CUDA_CHECK(cudaMemcpy(fused.data() + t * width + 3 * s.Hq * s.D, nan_rows.data(),
                                              sizeof(float) * nan_rows.size(), cudaMemcpyHostToDevice));
            call();
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            const std::vector<float> all = tc::to_host(fused);
            std::vector<float> got;
            for (index_t t = 0; t < s.Tq; ++t)
                got.insert(got.end(), all.begin() + t * width + 3 * s.Hq * s.D, all.begin() + (t + 1) * width);
            TINYLLM_REQUIRE_CLOSE(got, p.want_o, float_tol, std::string(launcher) + " O, fused");
        });
}

TEST_CASE("attention decode computes its grids and sizes in 64 bits", "[cuda][attention][error]") {
    // Views with huge extents over one element (every stride 0 but the head dim's): the launchers
    // must reject them on the host, before allocating a workspace or launching anything. The
    // output needs an address per element apart from the inputs: a packed view that starts
    // right after that element (its span is never touched).
    tc::device_buffer<float> one(2);
    const auto view = [&](index_t B, index_t T, index_t H) {
        return tinyllm::tensor_view<float, 4>(one.data(), {B, T, H, 1}, {0, 0, 0, 1});
    };
    const auto out_for = [&](const tinyllm::tensor_view<float, 4>& q) {
        return tinyllm::tensor_view<float, 4>(one.data() + 1, q.shape());
    };
    tc::attention_workspace ws;

    // B * Hq * Tq = 65535 * 65535 query rows: more blocks than the combine kernel's grid can have.
    {
        const auto q = view(65535, 1, 65535), kv = view(65535, 1, 65535);
        CHECK_THROWS_WITH(tc::attention_decode<float>(out_for(q), q, kv, kv, {}, ws),
                          contains("attention_decode: B * Hq * Tq = 4294836225 query rows") &&
                              contains("grid limits (2147483647, 65535, 65535)"));
        CHECK(ws.size() == 0);  // nothing was allocated
    }
    // Hq/Hkv * Tq = 2 * 2^30 = 2^31 rows per KV head: an int product would wrap to a negative number.
    {
        const auto q = view(1, index_t{1} << 30, 2), kv = view(1, 1, 1);
        CHECK_THROWS_WITH(tc::attention_decode<float>(out_for(q), q, kv, kv, {}, ws),
                          contains("Hq/Hkv * Tq = 2 * 1073741824 = 2147483648 query rows share each KV head"));
        CHECK(ws.size() == 0);
    }
    // B = 2^32 + 1 does not fit the kernels' int coordinates (it would be truncated to 1).
    {
        const auto q = view((index_t{1} << 32) + 1, 1, 1);
        CHECK_THROWS_WITH(tc::attention_decode<float>(out_for(q), q, q, q, {}, ws),
                          contains("attention_decode: B = 4294967297") && contains("must be below 2^31"));
        CHECK_THROWS_WITH(tc::attention_flash<float>(out_for(q), q, q, q),
                          contains("attention_flash: B = 4294967297") && contains("must be below 2^31"));
        CHECK(ws.size() == 0);
    }
    // One split over Tk = 2^31 - 8 keys: rounded up to the 32-key tile that is 2^31 keys, which
    // an int kernel parameter cannot hold (it wrapped to -2^31: no key seen, output 0). With a
    // causal window of 1 the query sees only the last key, so the kernel reads one value.
    {
        const float half = 0.5f;
        tc::device_buffer<float> value(1), o(1);
        TINYLLM_CUDA_CHECK(cudaMemcpy(value.data(), &half, sizeof half, cudaMemcpyHostToDevice));
        const index_t Tk = 2147483640;
        const tinyllm::tensor_view<const float, 4> q(value.data(), {1, 1, 1, 1}),
            kv(value.data(), {1, Tk, 1, 1}, {0, 0, 0, 1});
        attention_options causal_window;
        causal_window.causal = true;
        causal_window.window = 1;
        o.poison();
        tc::attention_decode<float>(o.view(extents<4>{1, 1, 1, 1}), q, kv, kv, causal_window, ws, 1);
        CHECK(tc::to_host(o) == std::vector<float>{0.5f});  // softmax over one key: its value
    }
}

// ---- v5 flash2: FlashAttention-2's full recipe (128-row blocks, swizzled shared memory, exp2) ----

namespace {

// v5 against the float64 reference: every variant (plain, causal, window, ALiBi, soft-cap,
// padding) on each shape; the output is poisoned first, TINYLLM_REQUIRE_CLOSE reports
// max-abs and rel-L2 errors and fails on NaN.
// BlocksPerSM = 2: the two-blocks-per-SM compilation (D = 64; D = 128 runs the other).
template <class T, int BlocksPerSM = 1>
void run_flash2_grid(const shape* shapes, std::size_t n, const tolerance& tol, std::uint64_t seed) {
    for (std::size_t si = 0; si < n; ++si)
        for (const auto& var : variants_for(si, seed / 100)) {
            problem<T> p(shapes[si], var, seed + 100 * si);
            INFO("v5 flash2 " << tinyllm::dtype_name<T>() << " " << describe(p.s) << " " << var.name
                              << ", blocks per SM " << BlocksPerSM);
            p.dout.poison();
            tc::attention_flash2<T, BlocksPerSM>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts());
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, tol, "v5 flash2 O");
        }
}

// T = 1 and T < 16 (one warp's rows, most of a block empty), lengths that are not
// multiples of 64 or 128 (130: a second 128-row block with 2 rows, a third key tile
// with 2 keys), Tq < Tk and Tq > Tk (causal bottom-right aligned), MHA, GQA 2 and 4, MQA.
const shape flash2_shapes[] = {
    {1, 1, 1, 1, 1, 64}, {2, 13, 13, 4, 2, 64}, {1, 130, 130, 2, 1, 128}, {1, 70, 200, 4, 1, 64}, {1, 45, 17, 2, 2, 128},
};

}  // namespace

TEST_CASE("attention v5 flash2 (bf16) matches the float64 reference", "[cuda][attention]") {
    run_flash2_grid<bfloat16>(flash2_shapes, std::size(flash2_shapes), bf16_tol, 70000);
}
TEST_CASE("attention v5 flash2 (fp16) matches the float64 reference", "[cuda][attention]") {
    const shape s[] = {{2, 37, 150, 4, 2, 64}};
    run_flash2_grid<float16>(s, std::size(s), fp16_tol, 71000);
}
TEST_CASE("attention v5 flash2 with two blocks per SM (D = 64) matches the float64 reference", "[cuda][attention]") {
    const shape s[] = {{2, 13, 13, 4, 2, 64}, {1, 70, 200, 4, 1, 64}, {1, 130, 130, 2, 1, 64}};
    run_flash2_grid<bfloat16, 2>(s, std::size(s), bf16_tol, 74000);
    const shape h[] = {{2, 37, 150, 4, 2, 64}};
    run_flash2_grid<float16, 2>(h, std::size(h), fp16_tol, 74100);
}
TEST_CASE("attention v5 flash2, large shapes", "[cuda][attention][large]") {
    const shape s[] = {{2, 1000, 1000, 8, 1, 128}, {1, 777, 2049, 8, 2, 64}};
    run_flash2_grid<bfloat16>(s, std::size(s), bf16_tol, 72000);
}

TEST_CASE("attention v5 flash2 rejects what it does not support", "[cuda][attention][error]") {
    problem<bfloat16> p({1, 4, 4, 2, 2, 80}, variants[0], 73000);
    CHECK_THROWS_WITH(tc::attention_flash2<bfloat16>(p.out(), p.qv(), p.kv(), p.vv()),
                      contains("attention v5 (attention_flash2) supports head dims 64 and 128, got 80"));
    problem<bfloat16> odd({1, 4, 4, 2, 2, 64}, variants[0], 73100);
    // K/V views whose time stride (132 elements) is not a multiple of 8: cp.async could not move them.
    tinyllm::tensor_view<const bfloat16, 4> skewed_k(odd.dk.data(), {1, 3, 2, 64}, {4 * 2 * 64, 2 * 64 + 4, 64, 1});
    tinyllm::tensor_view<const bfloat16, 4> skewed_v(odd.dv.data(), {1, 3, 2, 64}, {4 * 2 * 64, 2 * 64 + 4, 64, 1});
    CHECK_THROWS_WITH(tc::attention_flash2<bfloat16>(odd.out(), odd.qv(), skewed_k, skewed_v),
                      contains("attention_flash2 needs every batch/time/head stride to be a multiple of 8 elements"));
    // A q view starting 8 bytes into its buffer: not 16-byte aligned.
    tinyllm::tensor_view<const bfloat16, 4> shifted_q(odd.dq.data() + 4, {1, 3, 2, 64});
    tinyllm::tensor_view<bfloat16, 4> small_out(odd.dout.data(), {1, 3, 2, 64});
    tinyllm::tensor_view<const bfloat16, 4> k3(odd.dk.data(), {1, 3, 2, 64}), v3(odd.dv.data(), {1, 3, 2, 64});
    CHECK_THROWS_WITH(tc::attention_flash2<bfloat16>(small_out, shifted_q, k3, v3),
                      contains("attention_flash2 needs 16-byte aligned q, k, v and out"));
    // The CPU reference's checks, and the option pointers in host memory, under v5's name.
    attention_options w;
    w.window = 3;  // without causal
    CHECK_THROWS_WITH(tc::attention_flash2<bfloat16>(odd.out(), odd.qv(), odd.kv(), odd.vv(), w), contains("needs causal = true"));
    problem<bfloat16> padded({2, 3, 40, 4, 2, 64}, variants[5], 73200);
    CHECK_THROWS_WITH(tc::attention_flash2<bfloat16>(padded.out(), padded.qv(), padded.kv(), padded.vv(), padded.host_opts),
                      contains("attention_flash2: attention_options::key_lengths points to host memory"));
}

// ---- v6 wgmma: v5 on Hopper's warpgroup instruction (runs where sm_90a code runs) ----

namespace {

// v6 against the float64 reference, as v5; skipped (with a message) where the GPU
// or the build has no wgmma: the simulated GPU always has it.
template <class T, tc::wgmma_schedule Schedule = tc::wgmma_schedule::pipelined>
void run_wgmma_grid(const shape* shapes, std::size_t n, const tolerance& tol, std::uint64_t seed) {
    if (!tc::wgmma_compiled()) {
        WARN("attention v6 not run: this GPU or this build (not sm_90a) has no wgmma");
        return;
    }
    for (std::size_t si = 0; si < n; ++si)
        for (const auto& var : variants_for(si, seed / 100)) {
            problem<T> p(shapes[si], var, seed + 100 * si);
            INFO("v6 wgmma " << tinyllm::dtype_name<T>() << " " << describe(p.s) << " " << var.name
                             << (Schedule == tc::wgmma_schedule::pipelined ? ", pipelined" : ", sequential"));
            p.dout.poison();
            tc::attention_wgmma<T, Schedule>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts());
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, tol, "v6 wgmma O");
        }
}

}  // namespace

// v5's shapes plus one whose rows fill both warpgroups and several 128-key tiles
// (T = 300: a diagonal tile half masked for one warpgroup, whole for the other), in
// both schedules (the pipelined one, the default, computes and masks whole the tiles
// a warpgroup does not see: the window variant has such tiles).
TEST_CASE("attention v6 wgmma (bf16) matches the float64 reference", "[cuda][attention][wgmma]") {
    const shape s[] = {{1, 300, 300, 2, 1, 64}};
    run_wgmma_grid<bfloat16>(flash2_shapes, std::size(flash2_shapes), bf16_tol, 76000);
    run_wgmma_grid<bfloat16>(s, std::size(s), bf16_tol, 76500);
    run_wgmma_grid<bfloat16, tc::wgmma_schedule::sequential>(flash2_shapes, std::size(flash2_shapes), bf16_tol, 76000);
    run_wgmma_grid<bfloat16, tc::wgmma_schedule::sequential>(s, std::size(s), bf16_tol, 76500);
}
TEST_CASE("attention v6 wgmma (fp16) matches the float64 reference", "[cuda][attention][wgmma]") {
    const shape s[] = {{2, 37, 150, 4, 2, 64}, {1, 45, 17, 2, 2, 128}};
    run_wgmma_grid<float16>(s, std::size(s), fp16_tol, 77000);
    run_wgmma_grid<float16, tc::wgmma_schedule::sequential>(s, std::size(s), fp16_tol, 77000);
}
TEST_CASE("attention v6 wgmma, large shapes", "[cuda][attention][wgmma][large]") {
    const shape s[] = {{2, 1000, 1000, 8, 1, 128}, {1, 777, 2049, 8, 2, 64}};
    run_wgmma_grid<bfloat16>(s, std::size(s), bf16_tol, 78000);
    run_wgmma_grid<bfloat16, tc::wgmma_schedule::sequential>(s, std::size(s), bf16_tol, 78000);
}
TEST_CASE("attention v6 wgmma rejects what it does not support", "[cuda][attention][wgmma][error]") {
    problem<bfloat16> p({1, 4, 4, 2, 2, 80}, variants[0], 79000);
    CHECK_THROWS_WITH(tc::attention_wgmma<bfloat16>(p.out(), p.qv(), p.kv(), p.vv()),
                      contains("attention v6 (attention_wgmma) supports head dims 64 and 128, got 80"));
    problem<bfloat16> odd({1, 4, 4, 2, 2, 64}, variants[0], 79100);
    tinyllm::tensor_view<const bfloat16, 4> shifted_q(odd.dq.data() + 4, {1, 3, 2, 64});
    tinyllm::tensor_view<bfloat16, 4> small_out(odd.dout.data(), {1, 3, 2, 64});
    tinyllm::tensor_view<const bfloat16, 4> k3(odd.dk.data(), {1, 3, 2, 64}), v3(odd.dv.data(), {1, 3, 2, 64});
    CHECK_THROWS_WITH(tc::attention_wgmma<bfloat16>(small_out, shifted_q, k3, v3),
                      contains("attention_wgmma needs 16-byte aligned q, k, v and out"));
}

// ---- v7 tma: v6 fed by TMA, a producer and two consumer warpgroups (sm_90a) ----

namespace {

// A (B, T, H, D) tensor stored as (B, H, T, D): the host copy of x rearranged, and a
// view of the device copy with the permuted strides (T's stride D, H's T * D).
template <class T>
struct head_major {
    tc::device_buffer<T> buffer;
    tinyllm::tensor_view<const T, 4> view;
    head_major(const std::vector<T>& x, index_t B, index_t Tn, index_t H, index_t D) {
        std::vector<T> y(x.size());
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < Tn; ++t)
                for (index_t h = 0; h < H; ++h)
                    for (index_t d = 0; d < D; ++d)
                        y[static_cast<std::size_t>(((b * H + h) * Tn + t) * D + d)] = x[static_cast<std::size_t>(((b * Tn + t) * H + h) * D + d)];
        buffer = tc::to_device(y);
        view = tinyllm::tensor_view<const T, 4>(buffer.data(), {B, Tn, H, D}, {H * Tn * D, D, Tn * D, 1});
    }
};

// v7 against the float64 reference, as v6; `head_major_kv`: K and V stored (B, H, T, D),
// so that the tensor maps order their dimensions differently from Q's.
template <class T, tc::tma_schedule Schedule = tc::tma_schedule::pingpong>
void run_tma_grid(const shape* shapes, std::size_t n, const tolerance& tol, std::uint64_t seed, bool head_major_kv = false) {
    if (!tc::wgmma_compiled()) {
        WARN("attention v7 not run: this GPU or this build (not sm_90a) has no wgmma and TMA");
        return;
    }
    for (std::size_t si = 0; si < n; ++si)
        for (const auto& var : variants_for(si, seed / 100)) {
            problem<T> p(shapes[si], var, seed + 100 * si);
            INFO("v7 tma " << tinyllm::dtype_name<T>() << " " << describe(p.s) << " " << var.name
                           << (Schedule == tc::tma_schedule::pingpong ? ", ping-pong" : ", independent")
                           << (head_major_kv ? ", K and V stored (B, H, T, D)" : ""));
            p.dout.poison();
            if (head_major_kv) {
                const head_major<T> k(p.k, p.s.B, p.s.Tk, p.s.Hkv, p.s.D), v(p.v, p.s.B, p.s.Tk, p.s.Hkv, p.s.D);
                tc::attention_tma<T, Schedule>(p.out(), p.qv(), k.view, v.view, p.device_opts());
                TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            } else {
                tc::attention_tma<T, Schedule>(p.out(), p.qv(), p.kv(), p.vv(), p.device_opts());
                TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            }
            TINYLLM_REQUIRE_CLOSE(tc::to_host(p.dout), p.want_o, tol, "v7 tma O");
        }
}

}  // namespace

// v6's shapes; T = 300 and 520 give 3 and 5 key tiles, so each of the two K and V
// stages is reused (the barriers' parity flips), and the padding variants a last tile
// whose rows past the length the producer zeroes (the tests put NaN there). Both
// schedules: the warpgroups taking turns (the default) and independent.
TEST_CASE("attention v7 tma (bf16) matches the float64 reference", "[cuda][attention][wgmma][tma]") {
    const shape s[] = {{1, 300, 300, 2, 1, 64}, {2, 129, 520, 2, 2, 128}};
    run_tma_grid<bfloat16>(flash2_shapes, std::size(flash2_shapes), bf16_tol, 80000);
    run_tma_grid<bfloat16>(s, std::size(s), bf16_tol, 80500);
    run_tma_grid<bfloat16, tc::tma_schedule::independent>(flash2_shapes, std::size(flash2_shapes), bf16_tol, 80000);
    run_tma_grid<bfloat16, tc::tma_schedule::independent>(s, std::size(s), bf16_tol, 80500);
}
TEST_CASE("attention v7 tma (fp16) matches the float64 reference", "[cuda][attention][wgmma][tma]") {
    const shape s[] = {{2, 37, 150, 4, 2, 64}, {1, 45, 17, 2, 2, 128}};
    run_tma_grid<float16>(s, std::size(s), fp16_tol, 81000);
    run_tma_grid<float16, tc::tma_schedule::independent>(s, std::size(s), fp16_tol, 81000);
}
TEST_CASE("attention v7 tma reads K and V in another layout through their tensor maps", "[cuda][attention][wgmma][tma]") {
    const shape s[] = {{2, 13, 200, 4, 2, 64}, {1, 70, 150, 2, 1, 128}};
    run_tma_grid<bfloat16>(s, std::size(s), bf16_tol, 81500, true);
}
TEST_CASE("attention v7 tma, large shapes", "[cuda][attention][wgmma][tma][large]") {
    const shape s[] = {{2, 1000, 1000, 8, 1, 128}, {1, 777, 2049, 8, 2, 64}};
    run_tma_grid<bfloat16>(s, std::size(s), bf16_tol, 82000);  // the default schedule: each problem's reference takes seconds
}
TEST_CASE("attention v7 tma rejects what it does not support", "[cuda][attention][wgmma][tma][error]") {
    problem<bfloat16> p({1, 4, 4, 2, 2, 80}, variants[0], 83000);
    CHECK_THROWS_WITH(tc::attention_tma<bfloat16>(p.out(), p.qv(), p.kv(), p.vv()),
                      contains("attention v7 (attention_tma) supports head dims 64 and 128, got 80"));
    if (!tc::wgmma_compiled()) return;
    // K and V shared by both batch rows through a batch stride of 0: a tensor map has no such stride.
    problem<bfloat16> odd({2, 4, 4, 2, 2, 64}, variants[0], 83100);
    tinyllm::tensor_view<const bfloat16, 4> k0(odd.dk.data(), {2, 4, 2, 64}, {0, 2 * 64, 64, 1});
    tinyllm::tensor_view<const bfloat16, 4> v0(odd.dv.data(), {2, 4, 2, 64}, {0, 2 * 64, 64, 1});
    CHECK_THROWS_WITH(tc::attention_tma<bfloat16>(odd.out(), odd.qv(), k0, v0),
                      contains("attention_tma (v7): k: TMA copies need positive strides, got 0 for a dimension of extent 2"));
    // No keys: zeros, as every rung writes (a tensor map of an empty K was refused).
    problem<bfloat16> none({1, 3, 0, 2, 2, 64}, variants[0], 83200);
    none.dout.poison();
    tc::attention_tma<bfloat16>(none.out(), none.qv(), none.kv(), none.vv());
    for (const bfloat16 x : tc::to_host(none.dout)) CHECK(tinyllm::to_float(x) == 0.0f);
}
