// CUDA tests for the attention backward ladder (attention_backward.cuh,
// attention_backward_mma.cuh): v1 naive, v2 flash and v3 mma (tensor cores,
// bfloat16/float16) against the CPU reference cpu::attention_backward (itself
// checked against finite differences in tests/test_attention_backward.cpp),
// computed in float64 from the same rounded inputs, over shapes and options;
// the forward's log-sum-exp output (attention_flash with lse); determinism;
// the host-side rejections.
//
// Inputs are fresh random numbers each run (uniform in [-1, 1), a new seed per
// process) rounded to the element type first. Outputs and workspaces are
// poisoned (NaN) before every launch, and the padding keys of a row (past its
// key_length) are NaN on the device, so a kernel that writes too little or reads
// padding fails. Each comparison reports max-abs and relative-L2 errors.
//
// Tolerances, per element |got - ref| <= abs + rel |ref|, plus relative L2:
//   float     the kernels accumulate in float over up to Tq * group terms (dK, dV)
//             or Tk (dQ), and G = P (dP - delta) cancels: 2e-5 abs + 1e-4 rel,
//             2e-5 relative L2 (observed ~1e-6 relative L2).
//   bfloat16  inputs and the forward's output in bf16, gradients rounded to bf16
//             (relative 2^-9): 2e-2 abs + 2e-2 rel, 1e-2 relative L2. v3 mma
//             also rounds P and dS to bf16 before their products (float sums),
//             and is held to the same tolerance; float16 (v3 only) too.
//
// Big shapes are tagged [large] (the simulated GPU leaves them to real GPUs).
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/attention_backward.cuh>
#include <tinyllm/cuda/attention_backward_mma.cuh>
#include <tinyllm/cuda/attention_flash.cuh>
#include <tinyllm/cuda/device_buffer.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::attention_options;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor_view;
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

struct variant {
    std::string name;
    bool causal = false;
    index_t window = 0;
    bool alibi = false;
    float softcap = 0;
    float scale = 0;
    bool padding = false;
};

const variant variants[] = {
    {"plain"},
    {"causal", true},
    {"causal+window 7", true, 7},
    {"alibi+causal", true, 0, true},
    {"softcap 2, scale 0.3", false, 0, false, 2.0f, 0.3f},
    {"padding (row 1: length 0)", false, 0, false, 0, 0, true},
    {"padding+causal+window 5+alibi", true, 5, true, 0, 0, true},
};

// Host data of one problem, rounded to T, its float64 reference, and the device copies.
template <class T>
struct problem {
    shape s;
    std::vector<T> q, k, v, dout;
    std::vector<float> slopes;
    std::vector<std::int32_t> lengths;
    attention_options host_opts;
    std::vector<double> want_dq, want_dk, want_dv, want_o;
    std::vector<float> want_lse;  // (B, Hq, Tq)
    tc::device_buffer<T> d_q, d_k, d_v, d_dout, d_dq, d_dk, d_dv, d_out;
    tc::device_buffer<float> d_lse, d_slopes;
    tc::device_buffer<std::int32_t> d_lengths;

    problem(const shape& sh, const variant& var, std::uint64_t which) : s(sh) {
        auto fill = [&](std::vector<T>& x, index_t n, std::uint64_t w) {
            const auto f = tinyllm_test::random_floats(static_cast<std::size_t>(n), w, -1.0f, 1.0f);
            x.resize(f.size());
            for (std::size_t i = 0; i < f.size(); ++i) x[i] = tinyllm::from_float<T>(f[i]);
        };
        const index_t nq = s.B * s.Tq * s.Hq * s.D, nk = s.B * s.Tk * s.Hkv * s.D;
        fill(q, nq, which);
        fill(k, nk, which + 1);
        fill(v, nk, which + 2);
        fill(dout, nq, which + 3);
        host_opts.causal = var.causal;
        if (var.window) host_opts.window = var.window;
        if (var.softcap > 0) host_opts.softcap = var.softcap;
        if (var.scale > 0) host_opts.scale = var.scale;
        if (var.alibi) {
            for (index_t h = 0; h < s.Hq; ++h)
                slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(s.Hq)));
            host_opts.alibi_slopes = {slopes.data(), {s.Hq}};
        }
        if (var.padding) {
            for (index_t b = 0; b < s.B; ++b)
                lengths.push_back(static_cast<std::int32_t>(b == 0 ? s.Tk - 1 : b == 1 ? 0 : s.Tk / 2));
            host_opts.key_lengths = {lengths.data(), {s.B}};
        }
        // The float64 reference, from exactly the values the kernels see.
        auto to_d = [](const std::vector<T>& x) {
            std::vector<double> y(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) y[i] = tinyllm_test::detail::as_double(x[i]);
            return y;
        };
        auto qd = to_d(q), kd = to_d(k), vd = to_d(v), dod = to_d(dout);
        const extents<4> qs{s.B, s.Tq, s.Hq, s.D}, ks{s.B, s.Tk, s.Hkv, s.D};
        want_dq.assign(q.size(), 0.0);
        want_dk.assign(k.size(), 0.0);
        want_dv.assign(v.size(), 0.0);
        want_o.assign(q.size(), 0.0);
        want_lse.assign(static_cast<std::size_t>(s.B * s.Hq * s.Tq), 0.0f);
        tinyllm::cpu::attention_backward<double>(
            tensor_view<double, 4>(want_dq.data(), qs), tensor_view<double, 4>(want_dk.data(), ks),
            tensor_view<double, 4>(want_dv.data(), ks), tensor_view<const double, 4>(dod.data(), qs),
            tensor_view<const double, 4>(qd.data(), qs), tensor_view<const double, 4>(kd.data(), ks),
            tensor_view<const double, 4>(vd.data(), ks), host_opts);
        tinyllm::cpu::attention<double>(tensor_view<double, 4>(want_o.data(), qs), tensor_view<const double, 4>(qd.data(), qs),
                                        tensor_view<const double, 4>(kd.data(), ks),
                                        tensor_view<const double, 4>(vd.data(), ks), host_opts, {},
                                        tensor_view<float, 3>(want_lse.data(), {s.B, s.Hq, s.Tq}));
        // Padding keys (past a row's length) are NaN on the device: a kernel that
        // multiplies one in, even by 0, fails.
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
        d_q = tc::to_device(q);
        d_k = tc::to_device(k);
        d_v = tc::to_device(v);
        d_dout = tc::to_device(dout);
        d_dq = tc::device_buffer<T>(q.size());
        d_dk = tc::device_buffer<T>(k.size());
        d_dv = tc::device_buffer<T>(v.size());
        d_out = tc::device_buffer<T>(q.size());
        d_lse = tc::device_buffer<float>(want_lse.size());
        if (!slopes.empty()) d_slopes = tc::to_device(slopes);
        if (!lengths.empty()) d_lengths = tc::to_device(lengths);
    }

    attention_options device_opts() const {
        attention_options o = host_opts;
        if (!slopes.empty()) o.alibi_slopes = {d_slopes.data(), {s.Hq}};
        if (!lengths.empty()) o.key_lengths = {d_lengths.data(), {s.B}};
        return o;
    }
    extents<4> q_shape() const { return {s.B, s.Tq, s.Hq, s.D}; }
    extents<4> k_shape() const { return {s.B, s.Tk, s.Hkv, s.D}; }
    tensor_view<const T, 4> qv() const { return d_q.view(q_shape()); }
    tensor_view<const T, 4> kv() const { return d_k.view(k_shape()); }
    tensor_view<const T, 4> vv() const { return d_v.view(k_shape()); }
    tensor_view<const T, 4> doutv() const { return d_dout.view(q_shape()); }
    tensor_view<const T, 4> outv() const { return d_out.view(q_shape()); }
    tensor_view<T, 4> dqv() { return d_dq.view(q_shape()); }
    tensor_view<T, 4> dkv() { return d_dk.view(k_shape()); }
    tensor_view<T, 4> dvv() { return d_dv.view(k_shape()); }
    tensor_view<float, 3> lsev() { return d_lse.view(extents<3>{s.B, s.Hq, s.Tq}); }
    void poison_gradients() {
        d_dq.poison();
        d_dk.poison();
        d_dv.poison();
    }

    // The forward of v2's pipeline: attention_flash with the lse, both poisoned first.
    void forward_flash() {
        d_out.poison();
        d_lse.poison();
        tc::attention_flash<T>(d_out.view(q_shape()), lsev(), qv(), kv(), vv(), device_opts());
    }
    void backward_naive(tc::device_buffer<float>& scores) {
        tc::attention_backward_naive<T>(dqv(), dkv(), dvv(), doutv(), qv(), kv(), vv(),
                                        scores.view(extents<4>{s.B, s.Hq, s.Tq, s.Tk}), device_opts());
    }
    void backward_flash() {
        tc::attention_backward_flash<T>(dqv(), dkv(), dvv(), doutv(), qv(), kv(), vv(), outv(), lsev(), device_opts());
    }
    void backward_mma() {
        tc::attention_backward_mma<T>(dqv(), dkv(), dvv(), doutv(), qv(), kv(), vv(), outv(), lsev(), device_opts());
    }
};

template <class T>
std::vector<double> download(const tc::device_buffer<T>& b) {
    const auto h = tc::to_host(b);
    std::vector<double> out(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) out[i] = tinyllm_test::detail::as_double(h[i]);
    return out;
}

template <class T>
std::uint64_t fingerprint(const std::vector<T>& v, std::uint64_t h = 14695981039346656037ull) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    for (std::size_t i = 0; i < v.size() * sizeof(T); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

const tolerance float_tol{2e-5, 1e-4, 2e-5};
const tolerance bf16_tol{2e-2, 2e-2, 1e-2};

// A gradient that is zero in exact arithmetic (with one key, P = 1 and dP = delta,
// so dq = dk = 0) comes out as float rounding noise: its reference is below the
// absolute tolerance (in RMS) and it is judged element by element only.
tolerance for_reference(tolerance tol, const std::vector<double>& ref) {
    double sum2 = 0;
    for (double x : ref) sum2 += x * x;
    if (ref.empty() || std::sqrt(sum2 / static_cast<double>(ref.size())) < tol.abs)
        tol.rel_l2 = std::numeric_limits<double>::infinity();
    return tol;
}

// v3 mma's tolerance, relative to the size of the gradient: its values shrink as T grows
// (dQ and dK as 1/T), and a fixed absolute tolerance of 2e-2 would pass anything at
// T = 2048. Per element 2e-2 of the reference's largest magnitude plus 2e-2 relative
// (under causal masking the first rows' gradients are many times the RMS, and so are
// their rounding errors), and 1e-2 relative L2 — the true relative L2, since the
// comparison's floor (abs * sqrt(n)) stays below the reference's norm. A gradient that
// is zero in exact arithmetic (RMS below 1e-5: one visible key) is held to 1e-4 per
// element.
tolerance scaled_bf16(const std::vector<double>& ref) {
    double sum2 = 0, largest = 0;
    for (double x : ref) {
        sum2 += x * x;
        largest = std::max(largest, std::fabs(x));
    }
    const double rms = ref.empty() ? 0.0 : std::sqrt(sum2 / static_cast<double>(ref.size()));
    if (rms < 1e-5) return tolerance{1e-4, 2e-2, std::numeric_limits<double>::infinity()};
    return tolerance{2e-2 * largest, 2e-2, 1e-2};
}

template <class T>
void check_gradients_scaled(problem<T>& p, const std::string& what) {
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    TINYLLM_REQUIRE_CLOSE(download(p.d_dq), p.want_dq, scaled_bf16(p.want_dq), what + " dq");
    TINYLLM_REQUIRE_CLOSE(download(p.d_dk), p.want_dk, scaled_bf16(p.want_dk), what + " dk");
    TINYLLM_REQUIRE_CLOSE(download(p.d_dv), p.want_dv, scaled_bf16(p.want_dv), what + " dv");
}

template <class T>
void check_gradients(problem<T>& p, const std::string& what, const tolerance& tol) {
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    TINYLLM_REQUIRE_CLOSE(download(p.d_dq), p.want_dq, for_reference(tol, p.want_dq), what + " dq");
    TINYLLM_REQUIRE_CLOSE(download(p.d_dk), p.want_dk, for_reference(tol, p.want_dk), what + " dk");
    TINYLLM_REQUIRE_CLOSE(download(p.d_dv), p.want_dv, for_reference(tol, p.want_dv), what + " dv");
}

// The forward's lse against the CPU's: -inf exactly where a row sees no key, close elsewhere.
void check_lse(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    std::vector<double> g, w;
    for (std::size_t i = 0; i < want.size(); ++i) {
        if (std::isinf(want[i])) {
            REQUIRE(got[i] == want[i]);
            continue;
        }
        g.push_back(got[i]);
        w.push_back(want[i]);
    }
    // Per element only: a log-sum-exp's float error is absolute (a few ulp of the row's
    // largest score), and a relative-L2 bound fails on a vector of a few values near 0
    // (one element of 6e-8 error measured 2e-5 relative).
    TINYLLM_REQUIRE_CLOSE(g, w, tolerance{1e-5, 1e-5}, what);
}

// Shapes: one element; MHA; GQA with Tq < Tk; MQA; Tq > Tk (causal rows with no
// key); an odd head dim and group 3; partial tiles everywhere (none of the
// lengths is a multiple of 16 or 32 but 32 itself). The last: batch row 2 has 20
// keys, so under a window of 5 the query tile of rows 16..31 mixes rows that see
// keys 16..19 with rows whose window starts past the padding (a tile's key range
// once reached into the padding there, and 0 * NaN made the forward's O NaN).
const shape shapes[] = {
    {1, 1, 1, 1, 1, 64}, {2, 37, 37, 2, 2, 32}, {2, 17, 45, 4, 2, 64}, {2, 1, 40, 4, 1, 16},
    {2, 45, 17, 2, 2, 16}, {2, 20, 33, 3, 1, 37}, {1, 32, 32, 2, 2, 128}, {3, 40, 40, 2, 2, 16},
};
const shape large_shapes[] = {{2, 300, 700, 8, 1, 128}, {1, 1024, 1024, 4, 4, 64}, {1, 333, 333, 16, 4, 256}};

template <class Run>
void run_grid(const char* version, const shape* list, std::size_t n, Run&& run) {
    std::uint64_t which = 1000;
    for (std::size_t si = 0; si < n; ++si)
        for (const auto& var : variants) {
            problem<float> p(list[si], var, which += 10);
            INFO(version << " " << describe(p.s) << " " << var.name);
            std::printf("%s %s %s\n", version, describe(p.s).c_str(), var.name.c_str());
            p.poison_gradients();
            run(p);
            check_gradients(p, version, float_tol);
        }
}

auto naive = [](problem<float>& p) {
    tc::device_buffer<float> scores(static_cast<std::size_t>(p.s.B * p.s.Hq * p.s.Tq * p.s.Tk));
    scores.poison();
    p.backward_naive(scores);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());  // before the scores are freed
};
auto flash = [](problem<float>& p) {
    p.forward_flash();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    TINYLLM_REQUIRE_CLOSE(download(p.d_out), p.want_o, float_tol, "v3 flash forward O");
    check_lse(tc::to_host(p.d_lse), p.want_lse, "v3 flash forward lse");
    p.backward_flash();
};

}  // namespace

TEST_CASE("attention backward v1 naive matches the float64 reference", "[cuda][attention][backward]") {
    run_grid("v1 naive", shapes, std::size(shapes), naive);
}
TEST_CASE("attention backward v1 naive, large shapes", "[cuda][attention][backward][large]") {
    run_grid("v1 naive", large_shapes, 2, naive);  // D = 256 has a (1, 16, 333, 333) P: left to v2
}
TEST_CASE("attention backward v2 flash matches the float64 reference", "[cuda][attention][backward]") {
    run_grid("v2 flash", shapes, std::size(shapes), flash);
    // Head dim 256, the largest v2 takes (~170 KB of shared memory for dK/dV: opted in), and a tiny odd one.
    const shape extra[] = {{1, 20, 41, 2, 1, 256}, {2, 9, 9, 3, 3, 3}};
    run_grid("v2 flash", extra, std::size(extra), flash);
}
TEST_CASE("attention backward v2 flash, large shapes", "[cuda][attention][backward][large]") {
    run_grid("v2 flash", large_shapes, std::size(large_shapes), flash);
}

TEST_CASE("attention backward v2 flash with the CPU forward's out and lse", "[cuda][attention][backward]") {
    // The lse may come from anywhere: here the CPU reference's, rounded to float.
    problem<float> p({2, 21, 50, 4, 2, 64}, variants[6], 5000);
    std::vector<float> o(p.want_o.begin(), p.want_o.end());
    tc::copy_to_device(p.d_out, o);
    tc::copy_to_device(p.d_lse, p.want_lse);
    p.poison_gradients();
    p.backward_flash();
    check_gradients(p, "v2 flash (CPU forward)", float_tol);
}

TEST_CASE("attention backward in bfloat16 (float math)", "[cuda][attention][backward]") {
    for (const auto& var : {variants[1], variants[6]}) {
        problem<bfloat16> p({2, 29, 40, 4, 2, 64}, var, 6000);
        INFO(var.name);
        tc::device_buffer<float> scores(static_cast<std::size_t>(p.s.B * p.s.Hq * p.s.Tq * p.s.Tk));
        scores.poison();
        p.poison_gradients();
        p.backward_naive(scores);
        check_gradients(p, "v1 naive bf16", bf16_tol);
        p.forward_flash();
        p.poison_gradients();
        p.backward_flash();
        check_gradients(p, "v2 flash bf16", bf16_tol);
    }
}

TEST_CASE("attention backward: unwanted gradients are skipped, the others unchanged", "[cuda][attention][backward]") {
    problem<float> p({2, 19, 35, 4, 2, 32}, variants[3], 7000);
    p.forward_flash();
    p.poison_gradients();
    p.backward_flash();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto dq = tc::to_host(p.d_dq), dk = tc::to_host(p.d_dk), dv = tc::to_host(p.d_dv);
    const auto nan_everywhere = [](const std::vector<float>& x) {
        for (float e : x)
            if (!std::isnan(e)) return false;
        return true;
    };
    // One gradient at a time: it alone is written, with the same bits.
    p.poison_gradients();
    tc::attention_backward_flash<float>(p.dqv(), {}, {}, p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev(), p.device_opts());
    CHECK(tc::to_host(p.d_dq) == dq);
    CHECK((nan_everywhere(tc::to_host(p.d_dk)) && nan_everywhere(tc::to_host(p.d_dv))));
    p.poison_gradients();
    tc::attention_backward_flash<float>({}, p.dkv(), {}, p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev(), p.device_opts());
    CHECK(tc::to_host(p.d_dk) == dk);
    CHECK((nan_everywhere(tc::to_host(p.d_dq)) && nan_everywhere(tc::to_host(p.d_dv))));
    p.poison_gradients();
    tc::attention_backward_flash<float>({}, {}, p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev(), p.device_opts());
    CHECK(tc::to_host(p.d_dv) == dv);

    tc::device_buffer<float> scores(static_cast<std::size_t>(p.s.B * p.s.Hq * p.s.Tq * p.s.Tk));
    p.poison_gradients();
    tc::attention_backward_naive<float>({}, p.dkv(), {}, p.doutv(), p.qv(), p.kv(), p.vv(),
                                        scores.view(extents<4>{p.s.B, p.s.Hq, p.s.Tq, p.s.Tk}), p.device_opts());
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    CHECK((nan_everywhere(tc::to_host(p.d_dq)) && nan_everywhere(tc::to_host(p.d_dv))));
    TINYLLM_REQUIRE_CLOSE(download(p.d_dk), p.want_dk, float_tol, "v1 naive dk alone");
}

TEST_CASE("attention backward is bit-identical from run to run", "[cuda][attention][backward]") {
    // No float atomics: the same inputs give the same bits, also under the simulator's random
    // schedule (TINYLLM_SIM_SCHEDULE=random:SEED; compare the printed fingerprints).
    problem<float> p({2, 40, 40, 4, 1, 32}, variants[1], 8000);
    p.forward_flash();
    std::vector<float> runs[2][3];
    for (auto& run : runs) {
        p.poison_gradients();
        p.backward_flash();
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        run[0] = tc::to_host(p.d_dq);
        run[1] = tc::to_host(p.d_dk);
        run[2] = tc::to_host(p.d_dv);
    }
    for (int i = 0; i < 3; ++i) CHECK(std::memcmp(runs[0][i].data(), runs[1][i].data(), runs[0][i].size() * sizeof(float)) == 0);
    std::printf("  attention_backward_flash determinism: fingerprint %016llx\n",
                static_cast<unsigned long long>(fingerprint(runs[0][2], fingerprint(runs[0][1], fingerprint(runs[0][0])))));
}

TEST_CASE("attention backward launchers reject bad arguments", "[cuda][attention][backward][error]") {
    problem<float> p({1, 3, 5, 4, 2, 8}, variants[0], 9000);
    tc::device_buffer<float> scores(static_cast<std::size_t>(1 * 4 * 3 * 5));
    const auto sv = scores.view(extents<4>{1, 4, 3, 5});
    const auto opts = p.device_opts();
    CHECK_NOTHROW(tc::attention_backward_naive<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), sv, opts));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());

    // The CPU reference's checks and messages, under each launcher's name.
    tc::device_buffer<float> wrong(1 * 5 * 4 * 8);
    const auto wrong_kv = wrong.view(extents<4>{1, 5, 4, 8});
    CHECK_THROWS_WITH(tc::attention_backward_naive<float>(p.dqv(), wrong_kv, p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), sv, opts),
                      contains("attention_backward_naive: dk has shape (1, 5, 4, 8) but must have the shape of k (1, 5, 2, 8)"));
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(p.dqv(), p.dkv(), wrong_kv, p.doutv(), p.qv(), p.kv(), p.vv(),
                                                          p.outv(), p.lsev(), opts),
                      contains("attention_backward_flash: dv has shape (1, 5, 4, 8) but must have the shape of v (1, 5, 2, 8)"));
    tc::device_buffer<float> wrong_q(1 * 3 * 4 * 7);
    const auto wq = wrong_q.view(extents<4>{1, 3, 4, 7});
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(wq, p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(),
                                                          p.lsev(), opts),
                      contains("attention_backward_flash: dq has shape (1, 3, 4, 7) but must have the shape of q (1, 3, 4, 8)"));
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(p.dqv(), p.dkv(), p.dvv(), wq, p.qv(), p.kv(), p.vv(), p.outv(),
                                                          p.lsev(), opts),
                      contains("attention_backward_flash: dout has shape (1, 3, 4, 7) but must have the shape of q"));
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), wq,
                                                          p.lsev(), opts),
                      contains("attention_backward_flash: out has shape (1, 3, 4, 7) but must have the shape of q"));
    tc::device_buffer<float> wrong_lse(12);
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                          p.outv(), wrong_lse.view(extents<3>{1, 3, 4}), opts),
                      contains("attention_backward_flash: lse has shape (1, 3, 4) but (1, 4, 3) is required"));
    CHECK_THROWS_WITH(tc::attention_flash<float>(p.d_out.view(p.q_shape()), wrong_lse.view(extents<3>{1, 3, 4}), p.qv(),
                                                 p.kv(), p.vv(), opts),
                      contains("attention_flash: lse has shape (1, 3, 4) but (1, 4, 3) is required"));
    tc::device_buffer<float> small(4);
    CHECK_THROWS_WITH(tc::attention_backward_naive<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                          small.view(extents<4>{1, 1, 2, 2}), opts),
                      contains("attention_backward_naive: scores has shape (1, 1, 2, 2) but (1, 4, 3, 5) is required"));
    attention_options w;
    w.window = 3;  // without causal
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                          p.outv(), p.lsev(), w),
                      contains("attention_backward_flash: a sliding window (window = 3) looks back from the query and needs causal = true"));
    // Option views in host memory.
    std::vector<std::int32_t> lengths = {5};
    attention_options host_lengths;
    host_lengths.key_lengths = {lengths.data(), {1}};
    CHECK_THROWS_WITH(tc::attention_backward_naive<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), sv,
                                                          host_lengths),
                      contains("attention_backward_naive: attention_options::key_lengths points to host memory"));
    // Head dims beyond 256.
    problem<float> big({1, 2, 3, 2, 2, 300}, variants[0], 9100);
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(big.dqv(), big.dkv(), big.dvv(), big.doutv(), big.qv(), big.kv(),
                                                          big.vv(), big.outv(), big.lsev()),
                      contains("attention_backward_flash supports head dims up to 256, got 300"));
}

TEST_CASE("attention backward launchers refuse gradients over an input or over each other",
          "[cuda][attention][backward][error]") {
    const shape s{1, 4, 4, 2, 2, 64};  // Tq = Tk, Hq = Hkv: every gradient has the shape of every input
    problem<float> p(s, variants[0], 9200);
    const extents<4> x = p.q_shape(), score_shape{s.B, s.Hq, s.Tq, s.Tk};
    tc::device_buffer<float> scores(static_cast<std::size_t>(score_shape.product()));
    p.forward_flash();
    const auto at = [](tc::device_buffer<float>& b, index_t offset, const extents<4>& shape) {
        return tensor_view<float, 4>(b.data() + offset, shape);
    };
    // Each launcher: (dq, dk, dv) -> throws with `message` under its name.
    const auto refused = [&](tensor_view<float, 4> dq, tensor_view<float, 4> dk, tensor_view<float, 4> dv,
                             const std::string& message) {
        CHECK_THROWS_WITH(tc::attention_backward_naive<float>(dq, dk, dv, p.doutv(), p.qv(), p.kv(), p.vv(),
                                                              scores.view(score_shape)),
                          contains("attention_backward_naive: " + message));
        CHECK_THROWS_WITH(
            tc::attention_backward_flash<float>(dq, dk, dv, p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev()),
            contains("attention_backward_flash: " + message));
    };
    refused(at(p.d_q, 0, x), p.dkv(), p.dvv(), "dq must not share memory with q");
    refused(p.dqv(), at(p.d_k, 0, x), p.dvv(), "dk must not share memory with k");
    refused(p.dqv(), p.dkv(), at(p.d_v, 64, x), "dv must not share memory with v");
    refused(p.dqv(), p.dkv(), at(p.d_dout, 64, x), "dv must not share memory with dout");
    refused(at(p.d_dk, 64, x), p.dkv(), p.dvv(), "dq must not share memory with dk");
    refused(p.dqv(), tensor_view<float, 4>(p.d_dk.data(), x, {0, 0, 64, 1}), p.dvv(),
            "dk has shape (1, 4, 2, 64) and strides (0, 0, 64, 1), so two of its elements share an address");
    CHECK_THROWS_WITH(tc::attention_backward_naive<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                          at(p.d_dv, 0, score_shape)),
                      contains("attention_backward_naive: dv must not share memory with scores"));
    CHECK_THROWS_WITH(tc::attention_backward_naive<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                          at(p.d_k, 0, score_shape)),
                      contains("attention_backward_naive: scores must not share memory with k"));
    CHECK_THROWS_WITH(tc::attention_backward_flash<float>(at(p.d_out, 0, x), p.dkv(), p.dvv(), p.doutv(), p.qv(),
                                                          p.kv(), p.vv(), p.outv(), p.lsev()),
                      contains("attention_backward_flash: dq must not share memory with out"));
    CHECK_THROWS_WITH(
        tc::attention_backward_flash<float>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(),
                                            tensor_view<const float, 3>(p.d_dk.data() + 8, {1, 2, 4})),
        contains("attention_backward_flash: dk must not share memory with lse"));
    problem<bfloat16> h(s, variants[0], 9300);
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(h.dqv(), h.dkv(), tensor_view<bfloat16, 4>(h.d_v.data(), x),
                                                           h.doutv(), h.qv(), h.kv(), h.vv(), h.outv(), h.lsev()),
                      contains("attention_backward_mma: dv must not share memory with v"));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());

    // Allowed: dq, dk and dv as the heads of one fused (B, T, 3 H, D) buffer (the model's layout).
    const index_t width = 3 * s.Hq * s.D;
    tc::device_buffer<float> fused(static_cast<std::size_t>(s.Tq * width));
    const extents<4> fused_strides{s.Tq * width, width, s.D, 1};
    const auto head = [&](int which) {
        return tensor_view<float, 4>(fused.data() + which * s.Hq * s.D, x, fused_strides);
    };
    const auto check_heads = [&](const std::string& version) {
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> all = tc::to_host(fused);
        for (int which = 0; which < 3; ++which) {
            std::vector<double> got;
            for (index_t t = 0; t < s.Tq; ++t)
                for (index_t e = 0; e < s.Hq * s.D; ++e)
                    got.push_back(all[static_cast<std::size_t>(t * width + which * s.Hq * s.D + e)]);
            const std::vector<double>& want = which == 0 ? p.want_dq : which == 1 ? p.want_dk : p.want_dv;
            TINYLLM_REQUIRE_CLOSE(got, want, float_tol, version + " fused d" + "qkv"[which]);
        }
    };
    fused.poison();
    tc::attention_backward_naive<float>(head(0), head(1), head(2), p.doutv(), p.qv(), p.kv(), p.vv(),
                                        scores.view(score_shape));
    check_heads("v1 naive");
    fused.poison();
    tc::attention_backward_flash<float>(head(0), head(1), head(2), p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(),
                                        p.lsev());
    check_heads("v2 flash");
}

// ---- v3 mma (tensor cores, bfloat16/float16) -------------------------------------------

namespace {

// Head dims 64 and 128 only; tiles of 64 rows and 64 keys. One element; GQA (group 2)
// over two partial query tiles and two key tiles; group 3 with Tq < Tk at D = 128;
// Tq > Tk (causal rows that see no key) and padding; MQA at D = 128 over three tiles;
// exactly one full tile. No length but 64 is a multiple of the tile.
const shape mma_shapes[] = {
    {1, 1, 1, 1, 1, 64},   {2, 77, 77, 4, 2, 64},    {1, 45, 100, 6, 2, 128},
    {2, 100, 37, 2, 2, 64}, {2, 130, 130, 4, 1, 128}, {1, 64, 64, 2, 2, 64},
};
const shape mma_large_shapes[] = {{2, 300, 700, 8, 1, 128}, {1, 1024, 1024, 4, 4, 64}, {1, 2048, 2048, 2, 1, 128}};

// The pipeline the kernel serves: the forward (v3 flash, which writes the lse) in T,
// then the tensor-core backward from its out and lse.
template <class T>
void run_mma_grid(const char* version, const shape* list, std::size_t n, const variant* vars, std::size_t nv,
                  std::uint64_t which) {
    for (std::size_t si = 0; si < n; ++si)
        for (std::size_t vi = 0; vi < nv; ++vi) {
            const variant& var = vars[vi];
            problem<T> p(list[si], var, which += 10);
            INFO(version << " " << describe(p.s) << " " << var.name);
            std::printf("%s %s %s\n", version, describe(p.s).c_str(), var.name.c_str());
            p.forward_flash();
            p.poison_gradients();
            p.backward_mma();
            check_gradients_scaled(p, version);
        }
}

}  // namespace

TEST_CASE("attention backward v3 mma (bf16) matches the float64 reference", "[cuda][attention][backward][mma]") {
    run_mma_grid<bfloat16>("v3 mma bf16", mma_shapes, std::size(mma_shapes), variants, std::size(variants), 20000);
}
TEST_CASE("attention backward v3 mma (fp16) matches the float64 reference", "[cuda][attention][backward][mma]") {
    // float16 has 3 more mantissa bits than bfloat16; the same tolerance holds with room.
    const shape s[] = {{2, 77, 77, 4, 2, 64}, {1, 45, 100, 6, 2, 128}};
    const variant v[] = {variants[1], variants[6]};
    run_mma_grid<tinyllm::float16>("v3 mma fp16", s, std::size(s), v, std::size(v), 21000);
}
TEST_CASE("attention backward v3 mma, large shapes", "[cuda][attention][backward][mma][large]") {
    const variant v[] = {variants[0], variants[1]};
    run_mma_grid<bfloat16>("v3 mma bf16", mma_large_shapes, std::size(mma_large_shapes), v, std::size(v), 22000);
}

TEST_CASE("attention backward v3 mma with the CPU forward's out and lse", "[cuda][attention][backward][mma]") {
    // The lse may come from anywhere: here the CPU reference's (float64, rounded to float),
    // and O rounded to bfloat16.
    problem<bfloat16> p({2, 70, 90, 4, 2, 128}, variants[6], 23000);
    std::vector<bfloat16> o(p.want_o.size());
    for (std::size_t i = 0; i < o.size(); ++i) o[i] = tinyllm::from_float<bfloat16>(static_cast<float>(p.want_o[i]));
    tc::copy_to_device(p.d_out, o);
    tc::copy_to_device(p.d_lse, p.want_lse);
    p.poison_gradients();
    p.backward_mma();
    check_gradients_scaled(p, "v3 mma (CPU forward)");
}

TEST_CASE("attention backward v3 mma: unwanted gradients are skipped, the others unchanged",
          "[cuda][attention][backward][mma]") {
    problem<bfloat16> p({2, 70, 70, 4, 2, 64}, variants[3], 24000);
    p.forward_flash();
    p.poison_gradients();
    p.backward_mma();
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto dq = tc::to_host(p.d_dq), dk = tc::to_host(p.d_dk), dv = tc::to_host(p.d_dv);
    const auto bits = [](const std::vector<bfloat16>& x) { return fingerprint(x); };
    const auto nan_everywhere = [](const std::vector<bfloat16>& x) {
        for (bfloat16 e : x)
            if (!std::isnan(tinyllm::to_float(e))) return false;
        return true;
    };
    const auto opts = p.device_opts();
    p.poison_gradients();
    tc::attention_backward_mma<bfloat16>(p.dqv(), {}, {}, p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev(), opts);
    CHECK(bits(tc::to_host(p.d_dq)) == bits(dq));
    CHECK((nan_everywhere(tc::to_host(p.d_dk)) && nan_everywhere(tc::to_host(p.d_dv))));
    p.poison_gradients();
    tc::attention_backward_mma<bfloat16>({}, p.dkv(), {}, p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev(), opts);
    CHECK(bits(tc::to_host(p.d_dk)) == bits(dk));
    CHECK((nan_everywhere(tc::to_host(p.d_dq)) && nan_everywhere(tc::to_host(p.d_dv))));
    p.poison_gradients();
    tc::attention_backward_mma<bfloat16>({}, {}, p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(), p.outv(), p.lsev(), opts);
    CHECK(bits(tc::to_host(p.d_dv)) == bits(dv));
    CHECK((nan_everywhere(tc::to_host(p.d_dq)) && nan_everywhere(tc::to_host(p.d_dk))));
}

TEST_CASE("attention backward v3 mma is bit-identical from run to run", "[cuda][attention][backward][mma]") {
    // No atomics: each block owns its outputs and sums in a fixed order (compare the printed
    // fingerprints across TINYLLM_SIM_SCHEDULE=random:SEED for a fixed TINYLLM_TEST_SEED).
    problem<bfloat16> p({2, 100, 100, 4, 1, 64}, variants[1], 25000);
    p.forward_flash();
    std::vector<bfloat16> runs[2][3];
    for (auto& run : runs) {
        p.poison_gradients();
        p.backward_mma();
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        run[0] = tc::to_host(p.d_dq);
        run[1] = tc::to_host(p.d_dk);
        run[2] = tc::to_host(p.d_dv);
    }
    for (int i = 0; i < 3; ++i)
        CHECK(std::memcmp(runs[0][i].data(), runs[1][i].data(), runs[0][i].size() * sizeof(bfloat16)) == 0);
    std::printf("  attention_backward_mma determinism: fingerprint %016llx\n",
                static_cast<unsigned long long>(fingerprint(runs[0][2], fingerprint(runs[0][1], fingerprint(runs[0][0])))));
}

TEST_CASE("attention backward v3 mma rejects what it does not support", "[cuda][attention][backward][mma][error]") {
    problem<bfloat16> p({1, 3, 5, 4, 2, 64}, variants[0], 26000);
    const auto opts = p.device_opts();
    CHECK_NOTHROW(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                       p.outv(), p.lsev(), opts));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());

    // Head dims other than 64 and 128: named, with the version that takes them.
    problem<bfloat16> d80({1, 3, 5, 4, 2, 80}, variants[0], 26100);
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(d80.dqv(), d80.dkv(), d80.dvv(), d80.doutv(), d80.qv(),
                                                           d80.kv(), d80.vv(), d80.outv(), d80.lsev()),
                      contains("attention_backward_mma (attention backward v3, tensor cores) supports head dims 64 and "
                               "128, got 80; attention_backward_flash (v2) takes head dims 1..256"));
    // Layouts cp.async cannot move: a pointer off 16 bytes, a stride not a multiple of 8.
    tc::device_buffer<bfloat16> big(1 * 3 * 4 * 64 + 8);
    const tensor_view<const bfloat16, 4> shifted(big.data() + 1, {1, 3, 4, 64});
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), shifted, p.qv(), p.kv(), p.vv(),
                                                           p.outv(), p.lsev(), opts),
                      contains("attention_backward_mma: dout must be 16-byte aligned"));
    tc::device_buffer<bfloat16> wide(1 * 5 * 2 * 68);
    const tensor_view<const bfloat16, 4> odd_stride(wide.data(), {1, 5, 2, 64}, {5 * 2 * 68, 2 * 68, 68, 1});
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), odd_stride,
                                                           p.vv(), p.outv(), p.lsev(), opts),
                      contains("attention_backward_mma: every batch/time/head stride of k must be a multiple of 8 "
                               "elements; stride 2 is 68"));
    // The shared checks, under this launcher's name.
    tc::device_buffer<float> wrong_lse(12);
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                           p.outv(), wrong_lse.view(extents<3>{1, 3, 4}), opts),
                      contains("attention_backward_mma: lse has shape (1, 3, 4) but (1, 4, 3) is required"));
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                           p.kv(), p.lsev(), opts),
                      contains("attention_backward_mma: out has shape (1, 5, 2, 64) but must have the shape of q"));
    attention_options w;
    w.window = 3;  // without causal
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                           p.outv(), p.lsev(), w),
                      contains("attention_backward_mma: a sliding window (window = 3) looks back from the query and "
                               "needs causal = true"));
    std::vector<std::int32_t> lengths = {5};
    attention_options host_lengths;
    host_lengths.key_lengths = {lengths.data(), {1}};
    CHECK_THROWS_WITH(tc::attention_backward_mma<bfloat16>(p.dqv(), p.dkv(), p.dvv(), p.doutv(), p.qv(), p.kv(), p.vv(),
                                                           p.outv(), p.lsev(), host_lengths),
                      contains("attention_backward_mma: attention_options::key_lengths points to host memory"));
}
