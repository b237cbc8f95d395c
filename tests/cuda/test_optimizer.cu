// CUDA tests for the optimizer kernels (cuda/tinyllm/cuda/optimizer.cuh), each
// against its CPU reference (include/tinyllm/optimizer.hpp, itself checked
// against hand-derived values and PyTorch in tests/test_optimizer.cpp).
//
// Inputs are fresh random numbers each run (a new TINYLLM_TEST_SEED per
// process), rounded to the element type first so that both sides see the same
// values. Outputs written out of place (dropout, masks) are poisoned (NaN, 0xFF)
// first; AdamW, SGD and clipping work in place on values every element of which
// they change, so an element a kernel skipped keeps its old value and fails the
// comparison. NaN never passes. Tolerances, |got - ref| <= abs + rel |ref| per
// element plus a relative-L2 bound:
//   AdamW, SGD (float)   the kernel computes in float, the reference in double
//                        rounding each stored value once: a few float ulps of
//                        the terms after 3 steps. A result can cancel to near 0
//                        (p - lr g, beta1 m + (1 - beta1) g), so the absolute
//                        part is a few ulps of the terms' size: parameters
//                        (|p| < 5) abs 1e-6, moments (|g| < 1.5) abs 1e-7, both
//                        + rel 2e-6; rel-L2 1e-5 (a single cancelling element
//                        can reach 2e-6 alone; observed ~1e-7 over thousands).
//   bfloat16 parameters  the float master weights as above; the bfloat16
//                        parameter is exactly the rounding of the GPU's master
//                        (checked bit for bit), so it is within one bfloat16
//                        ulp (relative 2^-7) of the rounding of the reference,
//                        plus the masters' absolute 1e-6.
//   grad norm            double sums in another order: rel 1e-12.
//   clipping, dropout    the same float multiply on both sides: bit for bit.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/optimizer.cuh>
#include <tinyllm/optimizer.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::adamw_config;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::named_parameter;
using tinyllm::sgd_config;
using tinyllm::tensor_view;
using tinyllm_test::contains;
using tinyllm_test::download;
using tinyllm_test::round_to;
using tinyllm_test::tolerance;
using tinyllm_test::upload;

namespace {

std::uint64_t seed_for(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

// n normal values (mean 0, stddev), rounded to T (returned as floats).
template <class T>
std::vector<float> normal_as(std::size_t n, std::uint64_t which, float stddev = 1.0f) {
    std::vector<float> v(n);
    cpu::fill_normal(tensor_view<float, 1>(v.data(), {static_cast<index_t>(n)}), seed_for(which), 0.0f, stddev);
    round_to<T>(v);
    return v;
}

template <class T>
tensor_view<T, 1> dview(tc::device_buffer<T>& b) {
    return b.view(extents<1>{static_cast<index_t>(b.size())});
}
tensor_view<float, 1> view(std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }
tensor_view<const float, 1> cview(const std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// FNV-1a of the bytes of v: printed by the determinism check, so that runs with one
// TINYLLM_TEST_SEED and different TINYLLM_SIM_SCHEDULE seeds can be compared.
template <class T>
std::uint64_t fingerprint(const std::vector<T>& v, std::uint64_t h = 14695981039346656037ull) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    for (std::size_t i = 0; i < v.size() * sizeof(T); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

template <class T>
std::string label(const std::string& what, std::size_t n) {
    return what + " " + std::string(tinyllm::dtype_name<T>()) + " (" + std::to_string(n) + ")";
}

const tolerance param_tol{1e-6, 2e-6, 1e-5};
const tolerance moment_tol{1e-7, 2e-6, 1e-5};
const tolerance bf16_tol{1e-6, 1.0 / 128, 1.0 / 128};

// ---- AdamW and SGD ----------------------------------------------------------------------

// Three steps of the GPU optimizer (float, or bfloat16 with a float master) and
// of the CPU reference on the master values, from the same random start.
template <class T>
void check_adamw(std::size_t n, const adamw_config& config, bool decay, std::uint64_t which) {
    const auto p0 = normal_as<T>(n, which);
    std::vector<float> ref_p = p0, ref_m(n, 0.0f), ref_v(n, 0.0f);
    auto d_p = upload<T>(p0);
    auto d_master = tc::to_device(p0);  // used for bfloat16 only
    tc::device_buffer<float> d_m(n), d_v(n);
    TINYLLM_CUDA_CHECK(cudaMemset(d_m.data(), 0, n * sizeof(float)));
    TINYLLM_CUDA_CHECK(cudaMemset(d_v.data(), 0, n * sizeof(float)));
    constexpr bool bf16 = std::is_same_v<T, bfloat16>;
    for (std::int64_t step = 1; step <= 3; ++step) {
        const auto g = normal_as<T>(n, which + 10 * static_cast<std::uint64_t>(step), 0.1f * static_cast<float>(step));
        auto d_g = upload<T>(g);
        tc::adamw_step<T>(dview(d_p), bf16 ? dview(d_master) : tensor_view<float, 1>{}, dview(d_m), dview(d_v),
                          dview(d_g), config, step, decay);
        cpu::adamw_step(view(ref_p), view(ref_m), view(ref_v), cview(g), config, step, decay);
    }
    const std::string name = label<T>(decay ? "adamw" : "adamw no decay", n);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_m), ref_m, moment_tol, name + ": m");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_v), ref_v, moment_tol, name + ": v");
    if constexpr (bf16) {
        TINYLLM_REQUIRE_CLOSE(tc::to_host(d_master), ref_p, param_tol, name + ": float master");
        std::vector<float> rounded(n);
        for (std::size_t i = 0; i < n; ++i) rounded[i] = tinyllm::to_float(tinyllm::from_float<bfloat16>(ref_p[i]));
        TINYLLM_REQUIRE_CLOSE(download(d_p), rounded, bf16_tol, name + ": bfloat16 parameter");
        // The parameter is exactly the rounding of the GPU's own master.
        const auto master = tc::to_host(d_master);
        const auto param = tc::to_host(d_p);
        for (std::size_t i = 0; i < n; ++i) REQUIRE(param[i].bits == tinyllm::from_float<bfloat16>(master[i]).bits);
    } else {
        TINYLLM_REQUIRE_CLOSE(download(d_p), ref_p, param_tol, name + ": param");
    }
}

template <class T>
void check_sgd(std::size_t n, const sgd_config& config, const std::string& what, std::uint64_t which) {
    const auto p0 = normal_as<T>(n, which);
    std::vector<float> ref_p = p0, ref_b(n, 0.0f);
    auto d_p = upload<T>(p0);
    auto d_master = tc::to_device(p0);
    tc::device_buffer<float> d_b(n);
    d_b.poison();  // the first step must write the buffer without reading it
    constexpr bool bf16 = std::is_same_v<T, bfloat16>;
    for (int step = 0; step < 3; ++step) {
        const auto g = normal_as<T>(n, which + 10 * static_cast<std::uint64_t>(step + 1));
        auto d_g = upload<T>(g);
        tc::sgd_step<T>(dview(d_p), bf16 ? dview(d_master) : tensor_view<float, 1>{}, dview(d_b), dview(d_g), config,
                        step == 0);
        cpu::sgd_step(view(ref_p), view(ref_b), cview(g), config, step == 0);
    }
    const std::string name = label<T>("sgd " + what, n);
    if (config.momentum != 0.0) TINYLLM_REQUIRE_CLOSE(tc::to_host(d_b), ref_b, param_tol, name + ": momentum buffer");
    if constexpr (bf16) {
        TINYLLM_REQUIRE_CLOSE(tc::to_host(d_master), ref_p, param_tol, name + ": float master");
        std::vector<float> rounded(n);
        for (std::size_t i = 0; i < n; ++i) rounded[i] = tinyllm::to_float(tinyllm::from_float<bfloat16>(ref_p[i]));
        TINYLLM_REQUIRE_CLOSE(download(d_p), rounded, bf16_tol, name + ": bfloat16 parameter");
    } else {
        TINYLLM_REQUIRE_CLOSE(download(d_p), ref_p, param_tol, name + ": param");
    }
}

}  // namespace

TEST_CASE("adamw matches the CPU reference", "[cuda][optimizer][adamw]") {
    const adamw_config gpt2{.lr = 6e-4, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    const adamw_config big{.lr = 0.05, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.5};
    std::uint64_t which = 100;
    for (std::size_t n : {std::size_t{1}, std::size_t{257}, std::size_t{5000}}) {
        check_adamw<float>(n, gpt2, true, which);
        check_adamw<float>(n, big, false, which + 1);
        check_adamw<bfloat16>(n, gpt2, true, which + 2);
        check_adamw<bfloat16>(n, big, true, which + 3);
        which += 50;
    }
}

// The launchers cap their grid at 4096 blocks of 256 threads (the norm at 1024): past
// 2^20 elements every thread walks a second stretch (a second ~1.5 s on the simulator).
TEST_CASE("adamw over more elements than one grid covers", "[cuda][optimizer][adamw]") {
    check_adamw<float>(std::size_t{3} << 20, adamw_config{}, true, 300);
    check_adamw<bfloat16>(std::size_t{3} << 20, adamw_config{}, true, 301);
}

TEST_CASE("adamw on a model's list of parameters equals the CPU's", "[cuda][optimizer][adamw]") {
    // Two bfloat16 tensors with float masters, one decaying and one not.
    const std::size_t nw = 96, nb = 8;
    const auto w0 = normal_as<bfloat16>(nw, 400), b0 = normal_as<bfloat16>(nb, 401);
    auto d_w = upload<bfloat16>(w0), d_b = upload<bfloat16>(b0);
    auto d_wm = tc::to_device(w0), d_bm = tc::to_device(b0);
    tc::device_buffer<bfloat16> d_gw(nw), d_gb(nb);
    std::vector<named_parameter<bfloat16>> params = {{"fc.weight", dview(d_w), dview(d_gw), dview(d_wm), true},
                                                     {"fc.bias", dview(d_b), dview(d_gb), dview(d_bm), false}};
    auto state = tc::make_adamw_state(params);
    std::vector<float> w = w0, b = b0, gw(nw), gb(nb);
    std::vector<named_parameter<float>> cpu_params = {{"fc.weight", view(w), view(gw), {}, true},
                                                      {"fc.bias", view(b), view(gb), {}, false}};
    auto cpu_state = cpu::make_adamw_state(cpu_params);
    const adamw_config c{.lr = 0.01, .weight_decay = 0.3};
    for (std::uint64_t step = 0; step < 3; ++step) {
        const auto new_gw = normal_as<bfloat16>(nw, 410 + step), new_gb = normal_as<bfloat16>(nb, 420 + step);
        std::copy(new_gw.begin(), new_gw.end(), gw.begin());  // in place: cpu_params view gw and gb
        std::copy(new_gb.begin(), new_gb.end(), gb.begin());
        d_gw = upload<bfloat16>(gw);
        d_gb = upload<bfloat16>(gb);
        params[0].grad = dview(d_gw);
        params[1].grad = dview(d_gb);
        tc::adamw_step(params, state, c);
        cpu::adamw_step(cpu_params, cpu_state, c);
    }
    CHECK(state[0].step == 3);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_wm), w, param_tol, "adamw list: weight master");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_bm), b, param_tol, "adamw list: bias master (no decay)");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(state[1].v), cpu_state[1].v.values(), moment_tol, "adamw list: bias v");
}

TEST_CASE("sgd matches the CPU reference", "[cuda][optimizer][sgd]") {
    const std::vector<std::pair<std::string, sgd_config>> configs = {
        {"plain, weight decay", {.lr = 0.1, .weight_decay = 0.01}},
        {"momentum", {.lr = 0.1, .momentum = 0.9}},
        {"momentum, dampening, weight decay", {.lr = 0.05, .momentum = 0.5, .dampening = 0.25, .weight_decay = 0.01}},
        {"nesterov", {.lr = 0.1, .momentum = 0.9, .nesterov = true}},
    };
    std::uint64_t which = 500;
    for (const auto& [what, config] : configs) {
        check_sgd<float>(1000, config, what, which);
        check_sgd<bfloat16>(333, config, what, which + 1);
        which += 50;
    }
    // More elements than one grid of 4096 x 256 threads covers.
    check_sgd<float>((std::size_t{1} << 20) + 4099, configs[1].second, "momentum, past one grid", which);
}

// ---- Gradient norm, clipping, scaling ---------------------------------------------------

namespace {

// A model's gradients: sizes n[i], values of stddev `scale`, as T.
template <class T>
struct model_grads {
    std::vector<std::vector<float>> host;
    std::vector<tc::device_buffer<T>> device;
    std::vector<std::vector<float>> values;  // unused parameter values (the list needs a view)
    std::vector<tc::device_buffer<T>> device_values;
    std::vector<named_parameter<T>> gpu;
    std::vector<named_parameter<float>> cpu;

    model_grads(const std::vector<std::size_t>& sizes, float scale, std::uint64_t which) {
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            host.push_back(normal_as<T>(sizes[i], which + i, scale));
            values.emplace_back(sizes[i], 0.0f);
        }
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            device.push_back(upload<T>(host[i]));
            device_values.push_back(upload<T>(values[i]));
        }
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            const std::string name = "layer." + std::to_string(i) + ".weight";
            gpu.push_back({name, dview(device_values[i]), dview(device[i]), {}, true});
            cpu.push_back({name, view(values[i]), view(host[i]), {}, true});
        }
    }
};

template <class T>
void check_clip(const std::vector<std::size_t>& sizes, float scale, double max_norm, std::uint64_t which) {
    model_grads<T> m(sizes, scale, which);
    const double gpu_norm = tc::clip_grad_norm(m.gpu, max_norm, 1);
    const double cpu_norm = cpu::clip_grad_norm(m.cpu, max_norm, 1);
    const std::string name = label<T>("clip_grad_norm max_norm " + std::to_string(max_norm), sizes.size()) + " tensors";
    TINYLLM_REQUIRE_CLOSE(std::vector<double>{gpu_norm}, std::vector<double>{cpu_norm}, tolerance{0, 1e-12, 1e-12},
                          name + ": norm");
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        // The CPU clipped float copies of the T values: round them back to T.
        std::vector<float> ref = m.host[i];
        round_to<T>(ref);
        TINYLLM_REQUIRE_CLOSE(download(m.device[i]), ref, tolerance{0, 0, 0}, name + ": grad " + std::to_string(i));
    }
}

}  // namespace

TEST_CASE("grad_norm and clip_grad_norm match the CPU reference", "[cuda][optimizer][clip]") {
    const std::vector<std::size_t> sizes = {1000, 1, 70000, 3};
    check_clip<float>(sizes, 1.0f, 1.0, 600);      // norm ~ 265: clipped
    check_clip<float>(sizes, 1e-3f, 1.0, 610);     // norm ~ 0.27: unchanged
    check_clip<bfloat16>(sizes, 1.0f, 5.0, 620);
    check_clip<bfloat16>({7}, 1.0f, std::numeric_limits<double>::infinity(), 630);  // the norm only
    model_grads<float> empty({}, 1.0f, 640);
    CHECK(tc::grad_norm(empty.gpu) == 0.0);
}

TEST_CASE("clip_grad_norm over tensors larger than the norm kernel's grid", "[cuda][optimizer][clip]") {
    check_clip<float>({std::size_t{1} << 22, 5000}, 1.0f, 1.0, 650);
}

TEST_CASE("the gradient norm is bit-identical from run to run", "[cuda][optimizer][clip]") {
    model_grads<float> m({4099, 70001, 17}, 2.0f, 700);
    const double a = tc::grad_norm(m.gpu), b = tc::grad_norm(m.gpu);
    std::printf("  grad_norm determinism: norm %.17g, fingerprint %016llx\n", a,
                static_cast<unsigned long long>(fingerprint(std::vector<double>{a})));
    CHECK(std::memcmp(&a, &b, sizeof a) == 0);
}

TEST_CASE("clip_grad_norm: a NaN or infinity is reported as on the CPU, and nothing is scaled",
          "[cuda][optimizer][clip]") {
    model_grads<float> m({300, 2000, 5}, 10.0f, 800);
    m.host[1][1234] = std::numeric_limits<float>::quiet_NaN();
    m.host[1][1500] = std::numeric_limits<float>::infinity();
    m.host[2][4] = -std::numeric_limits<float>::infinity();
    for (std::size_t i = 0; i < 3; ++i) {
        m.device[i] = upload<float>(m.host[i]);
        m.gpu[i].grad = dview(m.device[i]);
    }
    std::string cpu_message, gpu_message;
    try {
        cpu::clip_grad_norm(m.cpu, 1.0, 42);
    } catch (const tinyllm::error& e) {
        cpu_message = e.what();
    }
    try {
        tc::clip_grad_norm(m.gpu, 1.0, 42);
    } catch (const tinyllm::error& e) {
        gpu_message = e.what();
    }
    INFO("CPU: " << cpu_message << "\nGPU: " << gpu_message);
    const std::string expected =
        "clip_grad_norm: at step 42, the gradient of 'layer.1.weight' (parameter 1 of 3) holds nan at index 1234";
    CHECK(cpu_message.find(expected) != std::string::npos);
    CHECK(gpu_message.find(expected) != std::string::npos);
    for (std::size_t i = 0; i < 3; ++i) CHECK(bit_equal(download(m.device[i]), m.host[i]));  // NaN bits compared as bits
    m.host[1][1234] = 0.0f;
    m.device[1] = upload<float>(m.host[1]);
    m.gpu[1].grad = dview(m.device[1]);
    REQUIRE_THROWS_WITH(tc::grad_norm(m.gpu, 43), contains("grad_norm: at step 43, the gradient of 'layer.1.weight' "
                                                           "(parameter 1 of 3) holds inf at index 1500"));
}

TEST_CASE("scale_grads and zero_grads", "[cuda][optimizer]") {
    model_grads<bfloat16> m({100, 3}, 1.0f, 900);
    tc::scale_grads(m.gpu, 1.0 / 3);
    cpu::scale_grads(m.cpu, 1.0 / 3);
    for (std::size_t i = 0; i < 2; ++i) {
        std::vector<float> ref = m.host[i];
        for (auto& x : ref) x = tinyllm::to_float(tinyllm::from_float<bfloat16>(x));
        TINYLLM_REQUIRE_CLOSE(download(m.device[i]), ref, tolerance{0, 0, 0}, "scale_grads bfloat16 1/3");
    }
    tc::zero_grads(m.gpu);
    CHECK(download(m.device[0]) == std::vector<float>(100, 0.0f));
    CHECK(download(m.device[1]) == std::vector<float>(3, 0.0f));
}

// ---- Dropout ----------------------------------------------------------------------------

namespace {

template <class T>
void check_dropout(index_t n, float p, std::uint64_t offset, std::uint64_t which) {
    const auto x = normal_as<T>(static_cast<std::size_t>(n), which);
    const std::uint64_t s = seed_for(which + 1);
    std::vector<float> ref(x.size()), ref_dx(x.size());
    std::vector<std::uint8_t> ref_mask(x.size());
    cpu::dropout<1>(view(ref), {ref_mask.data(), {n}}, cview(x), p, s, offset);
    round_to<T>(ref);
    auto d_x = upload<T>(x);
    tc::device_buffer<T> d_out(x.size());
    tc::device_buffer<std::uint8_t> d_mask(x.size());
    d_out.poison();
    d_mask.poison();
    tc::dropout<T, 1>(dview(d_out), dview(d_mask), dview(d_x), p, s, offset);
    const std::string name = label<T>("dropout p " + std::to_string(p) + " offset " + std::to_string(offset),
                                      static_cast<std::size_t>(n));
    REQUIRE(bit_equal(tc::to_host(d_mask), ref_mask));
    TINYLLM_REQUIRE_CLOSE(download(d_out), ref, tolerance{0, 0, 0}, name + ": out");
    // The backward: the same decisions regenerated; in place on dout.
    const auto dout = normal_as<T>(x.size(), which + 2);
    cpu::dropout_backward<1>(view(ref_dx), cview(dout), p, s, offset);
    round_to<T>(ref_dx);
    auto d_dout = upload<T>(dout);
    tc::dropout_backward<T, 1>(dview(d_dout), dview(d_dout), p, s, offset);
    TINYLLM_REQUIRE_CLOSE(download(d_dout), ref_dx, tolerance{0, 0, 0}, name + ": dx (in place)");
}

}  // namespace

TEST_CASE("dropout drops exactly the CPU's elements", "[cuda][optimizer][dropout]") {
    std::uint64_t which = 1000;
    for (index_t n : {index_t{1}, index_t{5}, index_t{1001}, index_t{4099}}) {
        for (std::uint64_t offset : {std::uint64_t{0}, std::uint64_t{3}, std::uint64_t{77}}) {
            check_dropout<float>(n, 0.1f, offset, which);
            check_dropout<bfloat16>(n, 0.5f, offset, which + 3);
            which += 10;
        }
    }
    check_dropout<float>(300, 0.0f, 0, which);
    check_dropout<float>(300, 0.999f, 1ull << 40, which + 3);
    check_dropout<float>((index_t{1} << 22) + 4099, 0.1f, 3, which + 6);  // past one grid (4 elements a thread)

    // Any rank and no mask: a (3, 5, 7) tensor as its flattening.
    const auto x = normal_as<float>(105, 1100);
    auto d_x = upload<float>(x);
    tc::device_buffer<float> d_out(105);
    d_out.poison();
    tc::dropout<float, 3>(d_out.view(extents<3>{3, 5, 7}), {}, d_x.view(extents<3>{3, 5, 7}), 0.25f, 5, 9);
    std::vector<float> ref(105);
    cpu::dropout<1>(view(ref), {}, cview(x), 0.25f, 5, 9);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_out), ref, tolerance{0, 0, 0}, "dropout (3, 5, 7) float, no mask");
}

// ---- Bad inputs -------------------------------------------------------------------------

TEST_CASE("the launchers reject bad inputs with the CPU's messages", "[cuda][optimizer][errors]") {
    tc::device_buffer<float> p(4), m(4), v(4), g(4), small(3);
    tc::device_buffer<bfloat16> pb(4), gb(4);
    const auto P = dview(p), M = dview(m), V = dview(v), G = dview(g), S = dview(small);
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.lr = -1.0}, 1), contains("adamw: lr = -1 must be finite and >= 0"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.beta1 = 1.0}, 1), contains("adamw: beta1 = 1 must be in [0, 1)"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.beta2 = -0.5}, 1), contains("adamw: beta2 = -0.5"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.eps = 0.0}, 1), contains("adamw: eps = 0 must be finite and > 0"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.weight_decay = -1.0}, 1), contains("adamw: weight_decay = -1"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.eps = 1e-50}, 1), contains("adamw: eps = 1e-50 must be a normal float"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.lr = 1e300}, 1), contains("adamw: lr = 1e+300"));
    CHECK_THROWS_WITH(tc::sgd_step(P, M, G, {.lr = 0.1, .momentum = 1e300}, false), contains("sgd: momentum = 1e+300"));
    // lr / (1 - beta1^t), the step the kernel takes in float: 1e30 / 1e-12 is not a float.
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {.lr = 1e30, .beta1 = 1.0 - 1e-12}, 1),
                      contains("adamw_step: lr / (1 - beta1^t) = "));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, G, {}, 0), contains("adamw_step: step = 0 must be >= 1"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, V, S, {}, 1), contains("value has 4 elements but grad has 3"));
    CHECK_THROWS_WITH(tc::adamw_step(P, M, S, G, {}, 1), contains("value has 4 elements but v has 3"));
    CHECK_THROWS_WITH(tc::adamw_step<float>(P, M, M, V, G, {}, 1), contains("is float: it is its own master copy"));
    CHECK_THROWS_WITH(tc::adamw_step<bfloat16>(dview(pb), {}, M, V, dview(gb), {}, 1),
                      contains("is bfloat16 and needs a float master copy"));
    CHECK_THROWS_WITH(tc::adamw_step<bfloat16>(dview(pb), S, M, V, dview(gb), {}, 1),
                      contains("value has 4 elements but master has 3"));
    CHECK_THROWS_WITH(tc::sgd_step(P, M, G, {.momentum = 0.9, .dampening = 0.5, .nesterov = true}, true),
                      contains("sgd: nesterov momentum needs momentum > 0 and dampening = 0"));
    CHECK_THROWS_WITH(tc::sgd_step(P, S, G, {.momentum = 0.9}, true),
                      contains("value has 4 elements but the momentum buffer has 3"));
    std::vector<named_parameter<float>> params = {{"a", P, G, {}, true}};
    CHECK_THROWS_WITH(tc::clip_grad_norm(params, 0.0), contains("clip_grad_norm: max_norm = 0 must be > 0"));
    auto state = tc::make_adamw_state(params);
    state[0].name = "b";
    CHECK_THROWS_WITH(tc::adamw_step(params, state, {}), contains("adamw_step: state 0 belongs to 'b' but parameter 0 is 'a'"));
    CHECK_THROWS_WITH((tc::dropout<float, 1>(P, {}, G, 1.0f, 0)), contains("dropout: p = 1 must be in [0, 1)"));
    CHECK_THROWS_WITH((tc::dropout<float, 1>(P, {}, S, 0.5f, 0)), contains("dropout: out has shape (4) but x has shape (3)"));
    CHECK_THROWS_WITH((tc::dropout_backward<float, 1>(P, G, -0.5f, 0)), contains("dropout_backward: p = -0.5"));
}

TEST_CASE("the launchers refuse outputs that share memory they cannot handle", "[cuda][optimizer][errors]") {
    // Views into one device buffer: at(first) is elements first .. first + 3.
    auto host = normal_as<float>(32, 1200);
    std::fill(host.begin() + 4, host.begin() + 12, 0.0f);  // m and v of the valid step at the end
    auto mem = tc::to_device(host);
    const auto at = [&](index_t first) { return tensor_view<float, 1>(mem.data() + first, {4}); };

    // AdamW: value, master, m, v written, grad read; all apart.
    CHECK_THROWS_WITH(tc::adamw_step(at(0), at(4), at(4), at(12), {}, 1),
                      contains("adamw_step: v must not share memory with m"));
    CHECK_THROWS_WITH(tc::adamw_step(at(0), at(4), at(8), at(0), {}, 1),
                      contains("adamw_step: value must not share memory with grad"));
    CHECK_THROWS_WITH(tc::adamw_step(at(0), at(4), at(6), at(12), {}, 1), contains("v must not share memory with m"));
    CHECK_THROWS_WITH(tc::adamw_step(at(0), at(2), at(8), at(12), {}, 1),
                      contains("m must not share memory with value"));
    CHECK_THROWS_WITH(tc::adamw_step(at(0), at(4), at(8), at(10), {}, 1),
                      contains("v must not share memory with grad"));
    tc::device_buffer<bfloat16> pb(4), gb(4);
    const tensor_view<float, 1> over_pb(reinterpret_cast<float*>(pb.data()), {4});  // 16 bytes over its 8
    CHECK_THROWS_WITH(
        tc::adamw_step<bfloat16>(dview(pb), over_pb, at(4), at(8), dview(gb), {}, 1, true, nullptr, "wte"),
        contains("adamw_step: parameter 'wte': master must not share memory with value"));
    CHECK_THROWS_WITH(tc::adamw_step<bfloat16>(dview(pb), at(4), at(4), at(8), dview(gb), {}, 1),
                      contains("m must not share memory with master"));
    std::vector<named_parameter<float>> params = {{"wte", at(0), at(0), {}, true}};
    auto state = tc::make_adamw_state(params);
    CHECK_THROWS_WITH(tc::adamw_step(params, state, {}),
                      contains("parameter 'wte': value must not share memory with grad"));
    // Two tensors of a list in one memory (the CPU's check): one listed twice.
    const std::vector<named_parameter<float>> twice = {
        {"a", at(0), at(4), {}, true}, {"b", at(8), at(12), {}, true}, {"a again", at(0), at(4), {}, true}};
    auto twice_state = tc::make_adamw_state(twice);
    CHECK_THROWS_WITH(tc::adamw_step(twice, twice_state, {}),
                      contains("adamw_step: the value of parameter 'a' (#0) and the value of parameter 'a again' (#2) "
                               "share memory"));
    CHECK_THROWS_WITH(tc::scale_grads(twice, 0.5), contains("scale_grads: the gradient of parameter 'a' (#0)"));
    // A factor that is finite as a double but not as a float (the kernel's): refused as on the CPU.
    CHECK_THROWS_WITH(tc::scale_grads(twice, 1e300), contains("scale_grads: factor = 1e+300 must be finite as a float"));
    CHECK_THROWS_WITH(tc::clip_grad_norm(twice, 0.1), contains("clip_grad_norm: the gradient of parameter 'a' (#0)"));

    // SGD: the momentum buffer is written too.
    const sgd_config momentum{.lr = 0.1, .momentum = 0.9};
    CHECK_THROWS_WITH(tc::sgd_step(at(0), at(0), at(12), momentum, false),
                      contains("sgd_step: the momentum buffer must not share memory with value"));
    CHECK_THROWS_WITH(tc::sgd_step(at(0), at(12), at(14), momentum, false),
                      contains("the momentum buffer must not share memory with grad"));
    CHECK_THROWS_WITH(tc::sgd_step(at(0), {}, at(2), {}, true),
                      contains("sgd_step: value must not share memory with grad"));

    // Dropout: out exactly x or apart; the mask apart from both.
    const tensor_view<float, 1> x8(mem.data(), {8}), shifted(mem.data() + 1, {8});
    CHECK_THROWS_WITH((tc::dropout<float, 1>(shifted, {}, x8, 0.5f, 3)),
                      contains("dropout: out must be exactly x (in place) or not share memory with it"));
    CHECK_THROWS_WITH((tc::dropout_backward<float, 1>(shifted, x8, 0.5f, 3)),
                      contains("dropout_backward: dx must be exactly dout (in place) or not share memory with it"));
    CHECK_THROWS_WITH(
        (tc::dropout<float, 1>(at(16), {reinterpret_cast<std::uint8_t*>(mem.data()), {4}}, at(0), 0.5f, 3)),
        contains("dropout: mask must not share memory with x"));
    CHECK_THROWS_WITH(
        (tc::dropout<float, 1>(at(16), {reinterpret_cast<std::uint8_t*>(mem.data() + 17), {4}}, at(0), 0.5f, 3)),
        contains("dropout: mask must not share memory with out"));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(bit_equal(tc::to_host(mem), host));  // nothing was launched

    // Adjacent views of one buffer are apart: the step equals the CPU's on separate vectors.
    tc::adamw_step(at(0), at(4), at(8), at(12), {}, 1);
    std::vector<float> p(host.begin(), host.begin() + 4), m(host.begin() + 4, host.begin() + 8),
        v(host.begin() + 8, host.begin() + 12), g(host.begin() + 12, host.begin() + 16);
    cpu::adamw_step(view(p), view(m), view(v), cview(g), {}, 1);
    const auto got = tc::to_host(mem);
    const auto part = [&](std::ptrdiff_t first) {
        return std::vector<float>(got.begin() + first, got.begin() + first + 4);
    };
    TINYLLM_REQUIRE_CLOSE(part(0), p, param_tol, "adamw on adjacent views: param");
    TINYLLM_REQUIRE_CLOSE(part(4), m, moment_tol, "adamw on adjacent views: m");
    TINYLLM_REQUIRE_CLOSE(part(8), v, moment_tol, "adamw on adjacent views: v");
    CHECK(part(12) == g);
}
