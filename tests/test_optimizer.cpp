// Tests for the optimizer and training utilities (tinyllm/optimizer.hpp):
// AdamW and SGD against values derived by hand and against PyTorch's
// torch.optim on the same inputs; clipping by global norm against
// torch.nn.utils.clip_grad_norm_; the warmup + cosine schedule against
// nanoGPT's get_lr; gradient accumulation; dropout's keep rate and exact
// reproducibility; every bad input.
//
// Tolerances. The CPU references compute in double and round p, m, v once
// per step; PyTorch computes in float (a rounding per operation). After 5
// steps the two agree to a few float ulps: relative 2e-6 (plus 1e-9 absolute
// for values near 0) is allowed, ~1e-7 is observed. Hand-derived values are
// exact formulas evaluated in double: relative 1e-6.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/ffn.hpp>
#include <tinyllm/optimizer.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

using tinyllm::adamw_config;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::lr_schedule;
using tinyllm::named_parameter;
using tinyllm::sgd_config;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::contains;
using tinyllm_test::tolerance;

namespace cpu = tinyllm::cpu;

namespace {

// ---- PyTorch reference ------------------------------------------------------------------
// Produced by tools/gen-optimizer-reference (torch 2.15.0, CPU, float32,
// foreach=False): torch.optim.AdamW / SGD on one parameter P0 for 5 steps with
// the gradients GRADS[step % 3]; torch.nn.utils.clip_grad_norm_ on CLIP_GRADS
// with max_norm 1; nanoGPT's get_lr at SCHEDULE_STEPS. Rerun the script and
// paste its output here to refresh them. The inputs (below) are dyadic
// rationals, exact in float, the same literals as the script's.
const std::vector<float> P0 = {0.5f, -1.25f, 2.0f, 0.0f, -0.75f, 3.5f};
const std::vector<std::vector<float>> GRADS = {
    {0.125f, -0.25f, 0.0f, 1.5f, -3.0f, 0.0009765625f},
    {-0.0625f, 0.5f, 0.25f, -1.0f, 2.0f, 0.0009765625f},
    {0.375f, 0.125f, -0.5f, 0.0f, -0.25f, -0.001953125f},
};
constexpr int STEPS = 5;
const std::vector<std::vector<float>> CLIP_GRADS = {{0.5f, -1.0f, 0.25f, 2.0f, -0.125f, 0.75f}, {1.5f, -0.5f, 0.0625f}};
const std::vector<std::int64_t> SCHEDULE_STEPS = {0, 4, 9, 10, 11, 55, 99, 100, 101, 1000};

// tools/gen-optimizer-reference, torch 2.15.0+cu132
const std::vector<float> adamw_decay_param = {0.466202646f, -1.24632716f, 1.98806643f, -0.0182305388f, -0.727101266f, 3.45852304f};
const std::vector<float> adamw_decay_m = {0.0390199982f, 0.0576724969f, 0.00272500189f, 0.0605150163f, -0.14128001f, 0.000162607423f};
const std::vector<float> adamw_decay_v = {0.000179316659f, 0.00063953246f, 0.000374312978f, 0.00648576673f, 0.0260054413f, 7.61414842e-09f};
const std::vector<float> adamw_no_decay_param = {0.406501919f, -1.26086164f, 1.99469626f, -0.0509988181f, -0.69605881f, 3.43051887f};
const std::vector<float> adamw_no_decay_m = {0.0593400002f, 0.106720001f, 0.0116000017f, 0.0604799874f, -0.152960002f, 0.000281562505f};
const std::vector<float> adamw_no_decay_v = {0.00176001107f, 0.00629801024f, 0.00368168671f, 0.0635914057f, 0.25497815f, 7.47804165e-08f};
const std::vector<float> sgd_plain_param = {0.44762361f, -1.30621254f, 1.98999512f, -0.0995505974f, -0.522206366f, 3.48233962f};
const std::vector<float> sgd_plain_buffer = {};
const std::vector<float> sgd_momentum_param = {0.351180017f, -1.35594761f, 2.02452517f, -0.455364972f, 0.228479952f, 3.49951029f};
const std::vector<float> sgd_momentum_buffer = {0.390200019f, 0.576725006f, 0.0272500068f, 0.605149865f, -1.41279984f, 0.0016260742f};
const std::vector<float> sgd_dampening_param = {0.461390644f, -1.26974988f, 1.99933338f, -0.12168175f, -0.487793893f, 3.48845458f};
const std::vector<float> sgd_dampening_buffer = {0.0792452544f, 0.317531466f, 0.146593735f, -0.188975334f, 0.320221901f, 0.0521909371f};
const std::vector<float> sgd_nesterov_param = {0.316061974f, -1.40785265f, 2.02207255f, -0.509828448f, 0.355631918f, 3.49936414f};
const std::vector<float> sgd_nesterov_buffer = {0.390200019f, 0.576725006f, 0.0272500068f, 0.605149865f, -1.41279984f, 0.0016260742f};
const double clip_norm = 2.8973319530487061;
const std::vector<float> clip_grad0 = {0.172572508f, -0.345145017f, 0.0862862542f, 0.690290034f, -0.0431431271f, 0.25885877f};
const std::vector<float> clip_grad1 = {0.51771754f, -0.172572508f, 0.0215715636f};
const std::vector<double> schedule_lr = {5.4545454545454539e-05, 0.00027272727272727268, 0.00054545454545454537, 0.00059999999999999995, 0.00059983552329515586, 0.00032999999999999994, 6.0164476704844146e-05, 6.0000000000000002e-05, 6.0000000000000002e-05, 6.0000000000000002e-05};
// ---- end of the PyTorch reference -------------------------------------------------------

const tolerance torch_tol{1e-9, 2e-6, 2e-6};
const tolerance hand_tol{1e-12, 1e-6, 1e-6};

tensor_view<float, 1> view(std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }
tensor_view<const float, 1> cview(const std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }

std::uint64_t seed(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

}  // namespace

// ---- Parameters and the decay rule ------------------------------------------------------

TEST_CASE("default_weight_decay: matrices decay; biases, norms and embeddings do not", "[optimizer]") {
    CHECK(tinyllm::default_weight_decay("h.0.attn.c_attn.weight", 2));
    CHECK(tinyllm::default_weight_decay("model.layers.3.mlp.down_proj.weight", 2));
    CHECK(tinyllm::default_weight_decay("lm_head.weight", 2));
    CHECK_FALSE(tinyllm::default_weight_decay("h.0.attn.c_attn.bias", 1));
    CHECK_FALSE(tinyllm::default_weight_decay("ln_f.weight", 1));
    CHECK_FALSE(tinyllm::default_weight_decay("model.norm.weight", 1));
    CHECK_FALSE(tinyllm::default_weight_decay("transformer.wte.weight", 2));
    CHECK_FALSE(tinyllm::default_weight_decay("transformer.wpe.weight", 2));
    CHECK_FALSE(tinyllm::default_weight_decay("model.embed_tokens.weight", 2));
    CHECK_FALSE(tinyllm::default_weight_decay("scale", 1));
}

TEST_CASE("make_parameter flattens a tensor and applies the decay rule", "[optimizer]") {
    tensor<float, 3> w({2, 3, 4}), dw({2, 3, 4});
    const auto p = tinyllm::make_parameter("h.0.mlp.c_fc.weight", w, dw);
    CHECK(p.value.extent(0) == 24);
    CHECK(p.grad.extent(0) == 24);
    CHECK(p.value.data() == w.data());
    CHECK(p.grad.data() == dw.data());
    CHECK(p.decay);
    CHECK(p.master.size() == 0);
    tensor<float, 1> b({4}), db({4});
    CHECK_FALSE(tinyllm::make_parameter("h.0.mlp.c_fc.bias", b, db).decay);
    tensor<float, 3> other({2, 4, 3});
    CHECK_THROWS_WITH(tinyllm::make_parameter("w", w, other),
                      contains("make_parameter: 'w': value has shape (2, 3, 4) but grad has shape (2, 4, 3)"));
    tensor<float, 2> m({3, 4}), dm({3, 4});
    CHECK_THROWS_WITH(tinyllm::make_parameter("m", m.view().transpose(0, 1), dm.view().transpose(0, 1)),
                      contains("must be contiguous"));
}

// ---- AdamW ------------------------------------------------------------------------------

TEST_CASE("adamw: the first steps derived by hand", "[optimizer][adamw]") {
    // Step 1: m = (1 - b1) g and v = (1 - b2) g^2, so m^ = g and v^ = g^2, and
    //     p1 = p0 (1 - lr wd) - lr g / (|g| + eps)
    // With the same g again, m^ = g and v^ = g^2 once more (the bias corrections
    // are exactly what makes this so), and p2 = p1 (1 - lr wd) - lr g / (|g| + eps).
    // A zero gradient leaves m = v = 0: only the decay moves p.
    const adamw_config c{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
    std::vector<float> p = {1.0f, -2.0f, 0.5f, 3.0f}, m(4, 0.0f), v(4, 0.0f);
    const std::vector<float> g = {0.5f, 0.25f, -4.0f, 0.0f};
    std::vector<double> expected(p.begin(), p.end());
    for (int step = 1; step <= 2; ++step) {
        cpu::adamw_step(view(p), view(m), view(v), cview(g), c, step);
        for (std::size_t i = 0; i < 4; ++i)
            expected[i] = expected[i] * (1 - c.lr * c.weight_decay) -
                          c.lr * g[i] / (std::fabs(static_cast<double>(g[i])) + c.eps);
        TINYLLM_REQUIRE_CLOSE(p, expected, hand_tol, "adamw hand-derived p, step " + std::to_string(step));
    }
    // m and v after two steps of the same g: (1 - b^2) g and (1 - b2^2) g^2.
    std::vector<double> m_expected(4), v_expected(4);
    for (std::size_t i = 0; i < 4; ++i) {
        m_expected[i] = (1 - 0.9 * 0.9) * g[i];
        v_expected[i] = (1 - 0.999 * 0.999) * g[i] * g[i];
    }
    TINYLLM_REQUIRE_CLOSE(m, m_expected, hand_tol, "adamw hand-derived m");
    TINYLLM_REQUIRE_CLOSE(v, v_expected, hand_tol, "adamw hand-derived v");

    // decay = false: the step without the shrink.
    std::vector<float> q = {1.0f}, mq = {0.0f}, vq = {0.0f};
    const std::vector<float> gq = {2.0f};
    cpu::adamw_step(view(q), view(mq), view(vq), cview(gq), c, 1, false);
    CHECK(q[0] == Approx(1.0 - 0.01 * 2.0 / (2.0 + 1e-8)).epsilon(1e-7));
}

TEST_CASE("adamw matches torch.optim.AdamW", "[optimizer][adamw][pytorch]") {
    SECTION("weight decay 0.1, through the model API") {
        // P0 as a (2, 3) weight: rank 2, decays by the default rule.
        tensor<float, 2> w({2, 3}), dw({2, 3});
        w.values() = P0;
        std::vector<named_parameter<float>> params = {tinyllm::make_parameter("h.0.mlp.c_proj.weight", w, dw)};
        REQUIRE(params[0].decay);
        auto state = cpu::make_adamw_state(params);
        const adamw_config c{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
        for (int step = 0; step < STEPS; ++step) {
            dw.values() = GRADS[step % 3];
            cpu::adamw_step(params, state, c);
        }
        CHECK(state[0].step == STEPS);
        TINYLLM_REQUIRE_CLOSE(w.values(), adamw_decay_param, torch_tol, "adamw vs torch: param");
        TINYLLM_REQUIRE_CLOSE(state[0].m.values(), adamw_decay_m, torch_tol, "adamw vs torch: exp_avg");
        TINYLLM_REQUIRE_CLOSE(state[0].v.values(), adamw_decay_v, torch_tol, "adamw vs torch: exp_avg_sq");
    }
    SECTION("no decay (a bias, though the config has weight_decay 0.5), other betas and eps") {
        // PyTorch ran with weight_decay = 0: the no-decay group. Here the config's
        // decay is 0.5 and the parameter's rule (rank 1) turns it off.
        tensor<float, 1> b({6}), db({6});
        b.values() = P0;
        std::vector<named_parameter<float>> params = {tinyllm::make_parameter("h.0.mlp.c_proj.bias", b, db)};
        REQUIRE_FALSE(params[0].decay);
        auto state = cpu::make_adamw_state(params);
        const adamw_config c{.lr = 3e-2, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.5};
        for (int step = 0; step < STEPS; ++step) {
            db.values() = GRADS[step % 3];
            cpu::adamw_step(params, state, c);
        }
        TINYLLM_REQUIRE_CLOSE(b.values(), adamw_no_decay_param, torch_tol, "adamw no decay vs torch: param");
        TINYLLM_REQUIRE_CLOSE(state[0].m.values(), adamw_no_decay_m, torch_tol, "adamw no decay vs torch: exp_avg");
        TINYLLM_REQUIRE_CLOSE(state[0].v.values(), adamw_no_decay_v, torch_tol, "adamw no decay vs torch: exp_avg_sq");
    }
}

TEST_CASE("adamw on a model of several tensors equals stepping each tensor alone", "[optimizer][adamw]") {
    tensor<float, 2> w({4, 3}), dw({4, 3});
    tensor<float, 1> b({4}), db({4});
    cpu::fill_normal(w, seed(1));
    cpu::fill_normal(b, seed(2));
    std::vector<named_parameter<float>> params = {tinyllm::make_parameter("fc.weight", w, dw),
                                                  tinyllm::make_parameter("fc.bias", b, db)};
    auto state = cpu::make_adamw_state(params);
    std::vector<float> w1 = w.values(), b1 = b.values(), mw(12, 0.0f), vw(12, 0.0f), mb(4, 0.0f), vb(4, 0.0f);
    const adamw_config c{.lr = 0.05, .weight_decay = 0.2};
    for (std::int64_t step = 1; step <= 3; ++step) {
        cpu::fill_normal(dw, seed(10 + static_cast<std::uint64_t>(step)));
        cpu::fill_normal(db, seed(20 + static_cast<std::uint64_t>(step)));
        cpu::adamw_step(params, state, c);
        cpu::adamw_step(view(w1), view(mw), view(vw), cview(dw.values()), c, step, true);
        cpu::adamw_step(view(b1), view(mb), view(vb), cview(db.values()), c, step, false);
    }
    TINYLLM_REQUIRE_CLOSE(w.values(), w1, tolerance{0, 0, 0}, "adamw model vs per tensor: weight");
    TINYLLM_REQUIRE_CLOSE(b.values(), b1, tolerance{0, 0, 0}, "adamw model vs per tensor: bias");
}

TEST_CASE("adamw_step: strided views, partial blocks and any thread count give the same bits", "[optimizer][adamw]") {
    // 70001 elements: threaded (>= 2^16), and not a multiple of the 256-element blocks nor of two.
    const index_t n = 70001;
    tensor<float, 1> p0({n}), g({n});
    cpu::fill_normal(p0, seed(30));
    const adamw_config c{.lr = 0.01, .weight_decay = 0.1};
    auto run_contiguous = [&](int threads) {
        cpu::set_num_threads(threads);
        std::vector<float> p = p0.values(), m(static_cast<std::size_t>(n), 0.0f), v(m);
        for (std::int64_t step = 1; step <= 3; ++step) {
            cpu::fill_normal(g, seed(40 + static_cast<std::uint64_t>(step)));
            cpu::adamw_step(view(p), view(m), view(v), cview(g.values()), c, step, true);
        }
        cpu::set_num_threads(0);
        return p;
    };
    // Every other element of buffers twice the size: the accessor loop.
    std::vector<float> p2(static_cast<std::size_t>(2 * n), 0.0f), m2(p2), v2(p2);
    for (index_t i = 0; i < n; ++i) p2[static_cast<std::size_t>(2 * i)] = p0(i);
    const extents<1> shape{n}, every_other{2};
    for (std::int64_t step = 1; step <= 3; ++step) {
        cpu::fill_normal(g, seed(40 + static_cast<std::uint64_t>(step)));
        cpu::adamw_step(tensor_view<float, 1>(p2.data(), shape, every_other),
                        tensor_view<float, 1>(m2.data(), shape, every_other),
                        tensor_view<float, 1>(v2.data(), shape, every_other), cview(g.values()), c, step, true);
    }
    std::vector<float> strided(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) strided[static_cast<std::size_t>(i)] = p2[static_cast<std::size_t>(2 * i)];
    const std::vector<float> one = run_contiguous(1), three = run_contiguous(3);
    REQUIRE(one != p0.values());
    REQUIRE(one == three);
    REQUIRE(one == strided);
}

// ---- SGD --------------------------------------------------------------------------------

TEST_CASE("sgd: the first steps derived by hand", "[optimizer][sgd]") {
    // Plain: p1 = p0 - lr (g + wd p0). Momentum mu, dampening d: b1 = g1 (no
    // dampening on the first step), p1 = p0 - lr g1; b2 = mu g1 + (1 - d) g2,
    // p2 = p1 - lr b2. Nesterov: p1 = p0 - lr (g1 + mu g1).
    const std::vector<float> g1 = {0.5f, -1.0f}, g2 = {0.25f, 2.0f};
    {
        std::vector<float> p = {1.0f, 2.0f}, none;
        cpu::sgd_step(view(p), view(none), cview(g1), sgd_config{.lr = 0.1, .weight_decay = 0.5}, true);
        TINYLLM_REQUIRE_CLOSE(p, (std::vector<double>{1.0 - 0.1 * (0.5 + 0.5), 2.0 - 0.1 * (-1.0 + 1.0)}), hand_tol,
                              "sgd plain");
    }
    {
        const sgd_config c{.lr = 0.1, .momentum = 0.9, .dampening = 0.5};
        std::vector<float> p = {1.0f, 2.0f}, b(2, 123.0f);  // the buffer's old content must not matter
        cpu::sgd_step(view(p), view(b), cview(g1), c, true);
        TINYLLM_REQUIRE_CLOSE(b, (std::vector<double>{0.5, -1.0}), hand_tol, "sgd momentum: first buffer");
        cpu::sgd_step(view(p), view(b), cview(g2), c, false);
        const std::vector<double> b2 = {0.9 * 0.5 + 0.5 * 0.25, 0.9 * -1.0 + 0.5 * 2.0};
        TINYLLM_REQUIRE_CLOSE(b, b2, hand_tol, "sgd momentum: second buffer");
        TINYLLM_REQUIRE_CLOSE(p, (std::vector<double>{1.0 - 0.05 - 0.1 * b2[0], 2.0 + 0.1 - 0.1 * b2[1]}), hand_tol,
                              "sgd momentum: p after two steps");
    }
    {
        std::vector<float> p = {1.0f, 2.0f}, b(2);
        cpu::sgd_step(view(p), view(b), cview(g1), sgd_config{.lr = 0.1, .momentum = 0.9, .nesterov = true}, true);
        TINYLLM_REQUIRE_CLOSE(p, (std::vector<double>{1.0 - 0.1 * 1.9 * 0.5, 2.0 + 0.1 * 1.9}), hand_tol, "sgd nesterov");
    }
}

TEST_CASE("sgd matches torch.optim.SGD", "[optimizer][sgd][pytorch]") {
    struct sgd_case {
        const char* name;
        sgd_config config;
        const std::vector<float>& param;
        const std::vector<float>& buffer;
    };
    const std::vector<sgd_case> cases = {
        {"plain, weight decay", {.lr = 0.1, .weight_decay = 0.01}, sgd_plain_param, sgd_plain_buffer},
        {"momentum", {.lr = 0.1, .momentum = 0.9}, sgd_momentum_param, sgd_momentum_buffer},
        {"momentum, dampening, weight decay", {.lr = 0.05, .momentum = 0.5, .dampening = 0.25, .weight_decay = 0.01},
         sgd_dampening_param, sgd_dampening_buffer},
        {"nesterov", {.lr = 0.1, .momentum = 0.9, .nesterov = true}, sgd_nesterov_param, sgd_nesterov_buffer},
    };
    for (const auto& k : cases) {
        tensor<float, 2> w({3, 2}), dw({3, 2});
        w.values() = P0;
        std::vector<named_parameter<float>> params = {tinyllm::make_parameter("w", w, dw)};
        auto state = cpu::make_sgd_state(params, k.config);
        for (int step = 0; step < STEPS; ++step) {
            dw.values() = GRADS[step % 3];
            cpu::sgd_step(params, state, k.config);
        }
        TINYLLM_REQUIRE_CLOSE(w.values(), k.param, torch_tol, std::string("sgd vs torch, ") + k.name + ": param");
        TINYLLM_REQUIRE_CLOSE(state[0].momentum_buffer.values(), k.buffer, torch_tol,
                              std::string("sgd vs torch, ") + k.name + ": momentum buffer");
    }
}

// ---- Clipping ---------------------------------------------------------------------------

TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[optimizer][clip][pytorch]") {
    tensor<float, 2> w({2, 3}), dw({2, 3});
    tensor<float, 1> b({3}), db({3});
    dw.values() = CLIP_GRADS[0];
    db.values() = CLIP_GRADS[1];
    const std::vector<named_parameter<float>> params = {tinyllm::make_parameter("w", w, dw),
                                                        tinyllm::make_parameter("b", b, db)};
    const double norm = cpu::clip_grad_norm(params, 1.0);
    CHECK(norm == Approx(clip_norm).epsilon(1e-7));  // PyTorch's norm is a float
    TINYLLM_REQUIRE_CLOSE(dw.values(), clip_grad0, tolerance{0, 1.2e-7, 1.2e-7}, "clip vs torch: grad 0");
    TINYLLM_REQUIRE_CLOSE(db.values(), clip_grad1, tolerance{0, 1.2e-7, 1.2e-7}, "clip vs torch: grad 1");
}

TEST_CASE("clip_grad_norm: the norm by hand, no change below max_norm, exact factor", "[optimizer][clip]") {
    std::vector<float> g1 = {3.0f}, g2 = {0.0f, -4.0f}, none1(1), none2(2);
    const std::vector<named_parameter<float>> params = {{"a", view(none1), view(g1), {}, true},
                                                        {"b", view(none2), view(g2), {}, true}};
    // ||(3, 0, -4)|| = 5 <= 10: returned, nothing changes (bit for bit).
    CHECK(cpu::clip_grad_norm(params, 10.0) == 5.0);
    CHECK(g1[0] == 3.0f);
    CHECK(g2[1] == -4.0f);
    CHECK(cpu::clip_grad_norm(params, std::numeric_limits<double>::infinity()) == 5.0);
    CHECK(cpu::grad_norm(params) == 5.0);
    // max_norm 1: every gradient times the float c = 1 / (5 + 1e-6).
    CHECK(cpu::clip_grad_norm(params, 1.0, 3) == 5.0);
    const float c = static_cast<float>(1.0 / (5.0 + 1e-6));
    CHECK(g1[0] == 3.0f * c);
    CHECK(g2[0] == 0.0f);
    CHECK(g2[1] == -4.0f * c);
    // The new norm is max_norm, up to the 1e-6 and float rounding.
    CHECK(cpu::grad_norm(params) == Approx(1.0).epsilon(1e-6));
}

TEST_CASE("clip_grad_norm: a NaN or infinity names the parameter, index and step, and changes nothing",
          "[optimizer][clip]") {
    std::vector<float> g1 = {30.0f, 1.0f}, g2 = {1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN(), 5.0f},
                       g3 = {std::numeric_limits<float>::infinity()}, v1(2), v2(4), v3(1);
    const std::vector<named_parameter<float>> params = {{"wte", view(v1), view(g1), {}, false},
                                                        {"h.0.attn.c_proj.weight", view(v2), view(g2), {}, true},
                                                        {"ln_f.bias", view(v3), view(g3), {}, false}};
    CHECK_THROWS_WITH(cpu::clip_grad_norm(params, 1.0, 12),
                      contains("clip_grad_norm: at step 12, the gradient of 'h.0.attn.c_proj.weight' (parameter 1 of 3) "
                               "holds nan at index 2"));
    CHECK(g1[0] == 30.0f);  // nothing scaled
    g2[2] = 0.0f;
    CHECK_THROWS_WITH(cpu::clip_grad_norm(params, 1.0, 13),
                      contains("at step 13, the gradient of 'ln_f.bias' (parameter 2 of 3) holds inf at index 0"));
    CHECK_THROWS_WITH(cpu::grad_norm(params, 14), contains("grad_norm: at step 14"));
}

// ---- The schedule -----------------------------------------------------------------------

TEST_CASE("learning_rate_at: warmup, cosine, floor (nanoGPT's get_lr)", "[optimizer][schedule]") {
    const lr_schedule s{.max_lr = 6e-4, .min_lr = 6e-5, .warmup_steps = 10, .decay_steps = 100};
    for (std::size_t k = 0; k < SCHEDULE_STEPS.size(); ++k) {
        INFO("step " << SCHEDULE_STEPS[k]);
        CHECK(tinyllm::learning_rate_at(s, SCHEDULE_STEPS[k]) == Approx(schedule_lr[k]).epsilon(1e-12));
    }
    // By hand: warmup start and end, the end of warmup is max_lr, the middle of
    // the cosine is the mean, its end and beyond are min_lr.
    CHECK(tinyllm::learning_rate_at(s, 0) == Approx(6e-4 / 11).epsilon(1e-14));
    CHECK(tinyllm::learning_rate_at(s, 9) == Approx(6e-4 * 10 / 11).epsilon(1e-14));
    CHECK(tinyllm::learning_rate_at(s, 10) == Approx(6e-4).epsilon(1e-14));
    CHECK(tinyllm::learning_rate_at(s, 55) == Approx((6e-4 + 6e-5) / 2).epsilon(1e-14));
    CHECK(tinyllm::learning_rate_at(s, 100) == Approx(6e-5).epsilon(1e-14));
    CHECK(tinyllm::learning_rate_at(s, 5000) == 6e-5);
    // No warmup: step 0 is max_lr. Monotone decreasing after warmup.
    const lr_schedule no_warmup{.max_lr = 1.0, .min_lr = 0.0, .warmup_steps = 0, .decay_steps = 4};
    CHECK(tinyllm::learning_rate_at(no_warmup, 0) == 1.0);
    CHECK(tinyllm::learning_rate_at(no_warmup, 2) == Approx(0.5).epsilon(1e-15));
    for (std::int64_t step = 10; step < 100; ++step)
        REQUIRE(tinyllm::learning_rate_at(s, step + 1) <= tinyllm::learning_rate_at(s, step));
}

// ---- Gradient accumulation --------------------------------------------------------------

TEST_CASE("gradient accumulation: K micro-batches, accumulate, scale by 1/K = the full batch", "[optimizer]") {
    // The loss of a batch of `rows` rows is the mean over rows of sum(linear(x)),
    // so d loss / d y = 1 / rows. The full batch of 8 rows in one backward, or 4
    // micro-batches of 2 rows accumulated (each with its own mean, 1/2), then
    // scaled by 1/4, give the same weight gradient.
    const index_t rows = 8, K = 4, N = 3, Kin = 5, micro = rows / K;
    tensor<float, 2> x({rows, Kin}), w({N, Kin});
    cpu::fill_normal(x, seed(30));
    cpu::fill_normal(w, seed(31));
    tensor<float, 2> dw_full({N, Kin}), dw_acc({N, Kin}, 7.0f), dout_full({rows, N}, 1.0f / rows),
        dout_micro({micro, N}, 1.0f / micro);
    cpu::linear_backward({}, dw_full.view(), {}, dout_full.view(), x.view(), w.view());

    tensor<float, 2> unused({N, Kin});
    const std::vector<named_parameter<float>> params = {tinyllm::make_parameter("w", unused, dw_acc)};
    cpu::zero_grads(params);
    for (index_t k = 0; k < K; ++k)
        cpu::linear_backward({}, dw_acc.view(), {}, dout_micro.view(), x.view().narrow(0, k * micro, micro), w.view(),
                             /*accumulate=*/true);
    cpu::scale_grads(params, 1.0 / K);
    TINYLLM_REQUIRE_CLOSE(dw_acc.values(), dw_full.values(), tolerance{1e-7, 1e-6, 1e-6},
                          "accumulated and scaled vs full batch");
}

// ---- Dropout ----------------------------------------------------------------------------

TEST_CASE("dropout keeps 1 - p of the elements and preserves the mean", "[optimizer][dropout]") {
    const index_t n = 200000;
    std::vector<float> x(static_cast<std::size_t>(n), 1.0f), out(x.size());
    std::vector<std::uint8_t> mask(x.size());
    for (float p : {0.1f, 0.5f, 0.9f}) {
        cpu::dropout<1>(view(out), {mask.data(), {n}}, cview(x), p, seed(40));
        double kept = 0, sum = 0;
        for (index_t i = 0; i < n; ++i) {
            kept += mask[static_cast<std::size_t>(i)];
            sum += out[static_cast<std::size_t>(i)];
        }
        // Each element is kept independently with probability 1 - p: the kept
        // fraction is within 5 standard deviations sqrt(p (1 - p) / n) of 1 - p
        // (a false alarm once in 3.5 million runs), and so is mean(out) / (1 / (1 - p)).
        const double sigma = std::sqrt(p * (1.0 - p) / static_cast<double>(n));
        INFO("p = " << p << ", kept " << kept / n << ", mean " << sum / n);
        std::printf("  dropout p = %.1f: kept fraction %.5f (expected %.5f, 5 sigma %.5f), mean %.5f\n", p, kept / n,
                    1.0 - p, 5 * sigma, sum / n);
        CHECK(std::fabs(kept / n - (1.0 - p)) < 5 * sigma);
        CHECK(std::fabs(sum / n - 1.0) < 5 * sigma / (1.0 - p) + 1e-6);
    }
}

TEST_CASE("dropout: the decisions are Philox stream 2, counter offset + i, and reproducible", "[optimizer][dropout]") {
    const index_t n = 1001;
    const float p = 0.3f;
    const std::uint64_t s = seed(50), offset = 77;
    std::vector<float> x(static_cast<std::size_t>(n));
    cpu::fill_normal(tensor_view<float, 1>(x.data(), {n}), seed(51));
    std::vector<float> out(x.size()), out2(x.size());
    std::vector<std::uint8_t> mask(x.size()), mask2(x.size());
    cpu::dropout<1>(view(out), {mask.data(), {n}}, cview(x), p, s, offset);
    const float scale = tinyllm::dropout_scale(p);
    CHECK(scale == static_cast<float>(1.0 / 0.7));
    for (index_t i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        const bool keep = tinyllm::philox_uniform(s, 2, offset + static_cast<std::uint64_t>(i)) >= p;
        REQUIRE(keep == tinyllm::dropout_keep(s, offset, static_cast<std::uint64_t>(i), p));
        REQUIRE(mask[k] == (keep ? 1 : 0));
        REQUIRE(out[k] == (keep ? x[k] * scale : 0.0f));  // exact: one float multiply
    }
    // Same (seed, offset): the same bits. Without a mask, in place: the same output.
    cpu::dropout<1>(view(out2), {mask2.data(), {n}}, cview(x), p, s, offset);
    CHECK(out2 == out);
    CHECK(mask2 == mask);
    std::vector<float> in_place = x;
    cpu::dropout<1>(view(in_place), {}, cview(in_place), p, s, offset);
    CHECK(in_place == out);
    // Counter-based: the call at offset + 10 on x[10:] is the tail of this one.
    std::vector<float> tail(x.begin() + 10, x.end()), tail_out(tail.size());
    cpu::dropout<1>(view(tail_out), {}, cview(tail), p, s, offset + 10);
    CHECK(std::equal(tail_out.begin(), tail_out.end(), out.begin() + 10));
    // Another seed or offset: another mask.
    cpu::dropout<1>(view(out2), {mask2.data(), {n}}, cview(x), p, s + 1, offset);
    CHECK(mask2 != mask);
    // Any rank: a (7, 11, 13) tensor is dropped as its row-major flattening.
    std::vector<float> out3(x.size());
    cpu::dropout<3>({out3.data(), {7, 11, 13}}, {}, {x.data(), {7, 11, 13}}, p, s, offset);
    CHECK(out3 == out);
    // p = 0 keeps everything, unscaled.
    cpu::dropout<1>(view(out2), {mask2.data(), {n}}, cview(x), 0.0f, s, offset);
    CHECK(out2 == x);
    CHECK(std::all_of(mask2.begin(), mask2.end(), [](std::uint8_t m) { return m == 1; }));
}

TEST_CASE("dropout_backward regenerates the forward's decisions", "[optimizer][dropout]") {
    const index_t n = 513;
    const float p = 0.2f;
    std::vector<float> x(static_cast<std::size_t>(n)), dout(x.size()), out(x.size()), dx(x.size());
    std::vector<std::uint8_t> mask(x.size());
    cpu::fill_normal(view(x), seed(60));
    cpu::fill_normal(view(dout), seed(61));
    cpu::dropout<1>(view(out), {mask.data(), {n}}, cview(x), p, 9, 4);
    cpu::dropout_backward<1>(view(dx), cview(dout), p, 9, 4);
    const float scale = tinyllm::dropout_scale(p);
    for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(dx[i] == (mask[i] ? dout[i] * scale : 0.0f));
    // dx = dout / (1 - p) on kept elements: the derivative of out = x / (1 - p).
    cpu::dropout_backward<1>(view(dout), cview(dout), p, 9, 4);  // in place
    CHECK(dout == dx);
}

// ---- Bad inputs -------------------------------------------------------------------------

TEST_CASE("bad optimizer inputs are clear errors", "[optimizer][errors]") {
    std::vector<float> p(4, 1.0f), g(4, 0.5f), m(4), v(4), short3(3);
    const auto adamw = [&](const adamw_config& c) { cpu::adamw_step(view(p), view(m), view(v), cview(g), c, 1); };
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    CHECK_THROWS_WITH(adamw({.lr = -1e-3}), contains("adamw: lr = -0.001 must be finite and >= 0"));
    CHECK_THROWS_WITH(adamw({.lr = nan}), contains("adamw: lr = nan"));
    CHECK_THROWS_WITH(adamw({.lr = inf}), contains("adamw: lr = inf"));
    CHECK_THROWS_WITH(adamw({.beta1 = 1.0}), contains("adamw: beta1 = 1 must be in [0, 1)"));
    CHECK_THROWS_WITH(adamw({.beta1 = -0.1}), contains("adamw: beta1 = -0.1"));
    CHECK_THROWS_WITH(adamw({.beta2 = 1.5}), contains("adamw: beta2 = 1.5 must be in [0, 1)"));
    CHECK_THROWS_WITH(adamw({.beta2 = nan}), contains("adamw: beta2 = nan"));
    CHECK_THROWS_WITH(adamw({.eps = 0.0}), contains("adamw: eps = 0 must be finite and > 0"));
    CHECK_THROWS_WITH(adamw({.eps = -1e-8}), contains("adamw: eps = -1e-08"));
    CHECK_THROWS_WITH(adamw({.weight_decay = -0.1}), contains("adamw: weight_decay = -0.1 must be finite and >= 0"));
    // Settings the GPU's float kernels cannot hold are refused on both (they gave the GPU NaN steps).
    CHECK_THROWS_WITH(adamw({.lr = 1e300}), contains("adamw: lr = 1e+300 must be finite and >= 0 (and a float)"));
    CHECK_THROWS_WITH(adamw({.eps = 1e-50}), contains("adamw: eps = 1e-50 must be a normal float"));
    CHECK_THROWS_WITH(adamw({.weight_decay = 1e306}), contains("weight_decay = 1e+306 must be finite and >= 0 (and a float)"));
    CHECK_THROWS_WITH(adamw({.lr = 1e20, .weight_decay = 1e20}), contains("adamw: lr x weight_decay = 1e+40 must be a float"));

    CHECK_THROWS_WITH(cpu::adamw_step(view(p), view(m), view(v), cview(g), {}, 0), contains("adamw_step: step = 0 must be >= 1"));
    CHECK_THROWS_WITH(cpu::adamw_step(view(p), view(m), view(v), cview(short3), {}, 1, true, "fc.weight"),
                      contains("adamw_step: parameter 'fc.weight': value has 4 elements but grad has 3"));
    CHECK_THROWS_WITH(cpu::adamw_step(view(p), view(short3), view(v), cview(g), {}, 1),
                      contains("value has 4 elements but m has 3"));
    CHECK_THROWS_WITH(cpu::adamw_step(view(p), view(m), view(short3), cview(g), {}, 1),
                      contains("value has 4 elements but v has 3"));
    CHECK(p == std::vector<float>(4, 1.0f));  // nothing was stepped

    // The model API: state from another list, in another order, of another size.
    std::vector<float> q(3), gq(3);
    std::vector<named_parameter<float>> params = {{"a", view(p), view(g), {}, true}, {"b", view(q), view(gq), {}, true}};
    auto state = cpu::make_adamw_state(params);
    std::vector<named_parameter<float>> swapped = {params[1], params[0]};
    CHECK_THROWS_WITH(cpu::adamw_step(swapped, state, {}),
                      contains("adamw_step: state 0 belongs to 'a' but parameter 0 is 'b'"));
    CHECK_THROWS_WITH(cpu::adamw_step(std::span(params).first(1), state, {}),
                      contains("adamw_step: 1 parameters but 2 optimizer states"));
    state[1].m = tensor<float, 1>({5});
    CHECK_THROWS_WITH(cpu::adamw_step(params, state, {}),
                      contains("parameter 'b': value has 3 elements but the state has 5"));
    params[1].grad = view(short3).narrow(0, 0, 2);
    CHECK_THROWS_WITH(cpu::adamw_step(params, state, {}), contains("parameter 'b': value has 3 elements but grad has 2"));

    // SGD.
    std::vector<float> buf(4);
    const auto sgd = [&](const sgd_config& c) { cpu::sgd_step(view(p), view(buf), cview(g), c, true); };
    CHECK_THROWS_WITH(sgd({.lr = -0.1}), contains("sgd: lr = -0.1 must be finite and >= 0"));
    CHECK_THROWS_WITH(sgd({.lr = nan}), contains("sgd: lr = nan"));
    CHECK_THROWS_WITH(sgd({.momentum = -0.5}), contains("sgd: momentum = -0.5"));
    CHECK_THROWS_WITH(sgd({.momentum = 0.9, .dampening = 1.5}), contains("sgd: dampening = 1.5 must be in [0, 1]"));
    CHECK_THROWS_WITH(sgd({.weight_decay = -1.0}), contains("sgd: weight_decay = -1"));
    CHECK_THROWS_WITH(sgd({.lr = 1e300}), contains("sgd: lr = 1e+300 must be finite and >= 0 (and a float)"));
    CHECK_THROWS_WITH(sgd({.lr = 0, .weight_decay = 1e300}), contains("sgd: weight_decay = 1e+300"));
    CHECK_THROWS_WITH(sgd({.lr = 0.1, .momentum = 1e300}), contains("sgd: momentum = 1e+300"));
    CHECK_THROWS_WITH(sgd({.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                      contains("sgd: nesterov momentum needs momentum > 0 and dampening = 0"));
    CHECK_THROWS_WITH(sgd({.nesterov = true}), contains("nesterov momentum needs momentum > 0"));
    CHECK_THROWS_WITH(cpu::sgd_step(view(p), view(short3), cview(g), {.momentum = 0.9}, true),
                      contains("value has 4 elements but the momentum buffer has 3"));
    CHECK_THROWS_WITH(cpu::sgd_step(view(p), {}, cview(short3), {}, true), contains("value has 4 elements but grad has 3"));

    // Clipping, scaling, the schedule.
    const std::vector<named_parameter<float>> one = {{"a", view(p), view(g), {}, true}};
    CHECK_THROWS_WITH(cpu::clip_grad_norm(one, 0.0), contains("clip_grad_norm: max_norm = 0 must be > 0"));
    CHECK_THROWS_WITH(cpu::clip_grad_norm(one, -1.0), contains("max_norm = -1"));
    CHECK_THROWS_WITH(cpu::clip_grad_norm(one, nan), contains("max_norm = nan"));
    CHECK_THROWS_WITH(cpu::scale_grads(one, inf), contains("scale_grads: factor = inf must be finite"));
    CHECK_THROWS_WITH(cpu::scale_grads(one, 1e300), contains("scale_grads: factor = 1e+300 must be finite as a float"));
    const auto lr = [](const lr_schedule& s, std::int64_t step = 0) { return tinyllm::learning_rate_at(s, step); };
    CHECK_THROWS_WITH(lr({}, -1), contains("learning_rate_at: step = -1 must be >= 0"));
    CHECK_THROWS_WITH(lr({.max_lr = -1.0}), contains("max_lr = -1 must be finite and >= 0"));
    CHECK_THROWS_WITH(lr({.max_lr = nan}), contains("max_lr = nan"));
    CHECK_THROWS_WITH(lr({.max_lr = 1e-4, .min_lr = 1e-3}), contains("min_lr = 0.001 must be in [0, max_lr = 0.0001]"));
    CHECK_THROWS_WITH(lr({.warmup_steps = -1}), contains("warmup_steps = -1 must be >= 0"));
    CHECK_THROWS_WITH(lr({.warmup_steps = 100, .decay_steps = 100}),
                      contains("decay_steps = 100 must be > warmup_steps = 100"));

    // Dropout.
    std::vector<float> out(4);
    std::vector<std::uint8_t> mask3(3);
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {}, cview(g), 1.0f, 0), contains("dropout: p = 1 must be in [0, 1)"));
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {}, cview(g), -0.1f, 0), contains("dropout: p = -0.1"));
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {}, cview(g), std::numeric_limits<float>::quiet_NaN(), 0),
                      contains("dropout: p = nan"));
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {}, cview(short3), 0.5f, 0),
                      contains("dropout: out has shape (4) but x has shape (3)"));
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {mask3.data(), {3}}, cview(g), 0.5f, 0),
                      contains("dropout: mask has shape (3) but x has shape (4)"));
    CHECK_THROWS_WITH(cpu::dropout_backward<1>(view(out), cview(short3), 0.5f, 0),
                      contains("dropout_backward: dx has shape (4) but dout has shape (3)"));
    CHECK_THROWS_WITH(cpu::dropout_backward<1>(view(out), cview(g), 1.5f, 0), contains("dropout_backward: p = 1.5"));
    std::vector<float> wide(8);
    CHECK_THROWS_WITH(cpu::dropout<2>({out.data(), {2, 2}}, {}, tensor_view<const float, 2>(wide.data(), {2, 2}, {4, 1}),
                                      0.5f, 0),
                      contains("must be contiguous"));
}

TEST_CASE("adamw, sgd, clipping and dropout refuse outputs that share memory they cannot handle",
          "[optimizer][errors]") {
    // Views into one buffer: at(first, n) is elements first .. first + n - 1.
    std::vector<float> mem(32, 0.5f);
    const auto at = [&](index_t first, index_t n = 4) { return tensor_view<float, 1>(mem.data() + first, {n}); };
    const tensor_view<float, 1> broadcast(mem.data() + 20, {4}, {0});  // one element four times
    const std::vector<float> before = mem;

    // AdamW: value, m, v written, grad read; all apart, each written one with an address per element.
    const auto adamw = [&](tensor_view<float, 1> p, tensor_view<float, 1> m, tensor_view<float, 1> v,
                           tensor_view<float, 1> g) { cpu::adamw_step(p, m, v, g, {}, 1, true, "fc.weight"); };
    CHECK_THROWS_WITH(adamw(at(0), at(4), at(4), at(12)),
                      contains("adamw_step: parameter 'fc.weight': v must not share memory with m"));
    CHECK_THROWS_WITH(adamw(at(0), at(4), at(8), at(0)), contains("value must not share memory with grad"));
    CHECK_THROWS_WITH(adamw(at(0), at(4), at(6), at(12)), contains("v must not share memory with m"));
    CHECK_THROWS_WITH(adamw(at(0), at(2), at(8), at(12)), contains("m must not share memory with value"));
    CHECK_THROWS_WITH(adamw(at(0), at(4), at(8), at(10)), contains("v must not share memory with grad"));
    CHECK_THROWS_WITH(adamw(at(0), at(4), at(8), at(3)), contains("value must not share memory with grad"));
    CHECK_THROWS_WITH(adamw(broadcast, at(4), at(8), at(12)),
                      contains("parameter 'fc.weight': value has shape (4) and strides (0), so two of its elements "
                               "share an address"));
    CHECK_THROWS_WITH(adamw(at(0), broadcast, at(8), at(12)), contains("m has shape (4) and strides (0)"));
    CHECK_THROWS_WITH(adamw(at(0), at(4), broadcast, at(12)), contains("v has shape (4) and strides (0)"));
    CHECK(mem == before);  // nothing was stepped
    // A gradient read through a stride of 0 is fine (it is only read).
    adamw(at(0), at(4), at(8), broadcast);
    CHECK(mem[0] != 0.5f);
    mem = before;

    // The model API: a parameter whose gradient is its value.
    std::vector<named_parameter<float>> params = {{"wte", at(0), at(0), {}, true}};
    auto state = cpu::make_adamw_state(params);
    CHECK_THROWS_WITH(cpu::adamw_step(params, state, {}),
                      contains("adamw_step: parameter 'wte': value must not share memory with grad"));
    CHECK(state[0].step == 0);

    // SGD: the momentum buffer is written too; without momentum it is not used.
    const sgd_config momentum{.lr = 0.1, .momentum = 0.9};
    CHECK_THROWS_WITH(cpu::sgd_step(at(0), at(0), at(12), momentum, false),
                      contains("sgd_step: the momentum buffer must not share memory with value"));
    CHECK_THROWS_WITH(cpu::sgd_step(at(0), at(2), at(12), momentum, false),
                      contains("the momentum buffer must not share memory with value"));
    CHECK_THROWS_WITH(cpu::sgd_step(at(0), at(12), at(14), momentum, false),
                      contains("the momentum buffer must not share memory with grad"));
    CHECK_THROWS_WITH(cpu::sgd_step(at(0), broadcast, at(12), momentum, false),
                      contains("sgd_step: the momentum buffer has shape (4) and strides (0)"));
    CHECK_THROWS_WITH(cpu::sgd_step(broadcast, at(4), at(12), momentum, false),
                      contains("sgd_step: value has shape (4) and strides (0)"));
    CHECK_THROWS_WITH(cpu::sgd_step(at(0), {}, at(2), {}, true),
                      contains("sgd_step: value must not share memory with grad"));
    CHECK(mem == before);
    cpu::sgd_step(at(0), at(0), at(12), {.lr = 0.1}, true);  // no momentum: the buffer is unused
    CHECK(mem[0] == static_cast<float>(0.5 - 0.1 * 0.5));
    mem = before;

    // Clipping and scaling multiply each gradient element once.
    const std::vector<named_parameter<float>> broadcast_grad = {{"a", at(0), broadcast, {}, true}};
    CHECK_THROWS_WITH(cpu::scale_grads(broadcast_grad, 0.5),
                      contains("scale_grads: the gradient of 'a' has shape (4) and strides (0)"));
    CHECK_THROWS_WITH(cpu::clip_grad_norm(broadcast_grad, 0.1),
                      contains("clip_grad_norm: the gradient of 'a' has shape (4) and strides (0)"));
    CHECK(mem == before);

    // The tensors of a list: one listed twice, or a value over another parameter's
    // gradient, would be stepped or scaled twice.
    const std::vector<named_parameter<float>> twice = {
        {"a", at(0), at(4), {}, true}, {"b", at(8), at(12), {}, true}, {"a again", at(0), at(4), {}, true}};
    auto twice_state = cpu::make_adamw_state(twice);
    CHECK_THROWS_WITH(cpu::adamw_step(twice, twice_state, {}),
                      contains("adamw_step: the value of parameter 'a' (#0) and the value of parameter 'a again' (#2) "
                               "share memory"));
    CHECK_THROWS_WITH(cpu::scale_grads(twice, 0.5),
                      contains("scale_grads: the gradient of parameter 'a' (#0) and the gradient of parameter "
                               "'a again' (#2) share memory"));
    CHECK_THROWS_WITH(cpu::clip_grad_norm(twice, 0.1), contains("clip_grad_norm: the gradient of parameter 'a'"));
    const std::vector<named_parameter<float>> crossed = {{"a", at(0, 8), at(8), {}, true},
                                                         {"b", at(16), at(4), {}, true}};
    auto crossed_state = cpu::make_sgd_state(crossed, {.lr = 0.1});
    CHECK_THROWS_WITH(cpu::sgd_step(crossed, crossed_state, {.lr = 0.1}),
                      contains("sgd_step: the value of parameter 'a' (#0) and the gradient of parameter 'b' (#1) "
                               "share memory"));
    cpu::scale_grads(crossed, 1.0);  // the gradients alone are apart: scaling is fine
    CHECK(mem == before);
    // Adjacent tensors of one buffer, listed in any order, are apart.
    const std::vector<named_parameter<float>> adjacent = {
        {"b", at(4), at(20), {}, true}, {"a", at(0), at(16), {}, true}, {"c", at(8), at(24), {}, true}};
    auto adjacent_state = cpu::make_adamw_state(adjacent);
    cpu::adamw_step(adjacent, adjacent_state, {});
    CHECK(mem[0] != 0.5f);
    mem = before;

    // Dropout: out may be exactly x; shifted, it would overwrite x before reading it; the mask apart from both.
    std::vector<float> x(9);
    cpu::fill_normal(view(x), seed(90));
    const tensor_view<float, 1> x8(x.data(), {8}), shifted(x.data() + 1, {8});
    CHECK_THROWS_WITH(cpu::dropout<1>(shifted, {}, x8, 0.5f, 3),
                      contains("dropout: out must be exactly x (in place) or not share memory with it"));
    CHECK_THROWS_WITH(cpu::dropout_backward<1>(shifted, x8, 0.5f, 3),
                      contains("dropout_backward: dx must be exactly dout (in place) or not share memory with it"));
    std::vector<float> out(8);
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {reinterpret_cast<std::uint8_t*>(x.data()), {8}}, x8, 0.5f, 3),
                      contains("dropout: mask must not share memory with x"));
    CHECK_THROWS_WITH(cpu::dropout<1>(view(out), {reinterpret_cast<std::uint8_t*>(out.data() + 4), {8}}, x8, 0.5f, 3),
                      contains("dropout: mask must not share memory with out"));
    const std::vector<float> x0 = x;
    std::vector<float> want(8);
    cpu::dropout<1>(view(want), {}, x8, 0.5f, 3);
    cpu::dropout<1>(x8, {}, x8, 0.5f, 3);  // in place
    CHECK(std::vector<float>(x.begin(), x.begin() + 8) == want);
    CHECK(x[8] == x0[8]);
}
