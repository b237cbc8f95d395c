// CUDA tests for Mixture of Experts: every gating kernel (naive and fused;
// softmax, noisy, grouped), the dispatch plan with capacity and padding,
// gather, combine and the cuBLAS experts, each against the CPU reference.
// Ids and plans must be exactly equal; weights and activations within float
// rounding. Outputs are poisoned before every kernel runs.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/moe.cuh>
#include <tinyllm/moe.hpp>
#if defined(TINYLLM_SIMULATED_GPU)
#include <tinyllm/sim/executor.hpp>
#endif

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm_test::on_grid;
using tinyllm_test::tolerance;
using tinyllm_test::upload;

namespace {

const tolerance weight_tolerance{2e-6, 2e-5, 1e-5};

// Fill an int32 buffer with 0x7F7F7F7F: never a valid id, row, offset or -1.
void poison_ints(tc::device_buffer<std::int32_t>& b) {
    if (b.size()) TINYLLM_CUDA_CHECK(cudaMemset(b.data(), 0x7F, b.bytes()));
}

enum class variant { softmax_renormalized, softmax_plain, noisy, grouped };

const char* name(variant v) {
    switch (v) {
        case variant::softmax_renormalized: return "softmax+renormalize";
        case variant::softmax_plain: return "softmax";
        case variant::noisy: return "noisy";
        default: return "grouped";
    }
}

tinyllm::grouped_topk_options grouped_options(index_t E, index_t k) {
    // DeepSeek-like: 8 groups keep 4 (or what divides E), unless k needs more experts.
    tinyllm::grouped_topk_options o;
    for (int groups : {8, 6, 4, 2}) {
        if (E % groups == 0 && k <= (groups / 2) * (E / groups)) {
            o.n_group = groups;
            o.topk_group = groups / 2;
            break;
        }
    }
    o.routed_scaling_factor = 2.5f;
    return o;
}

struct gating_case {
    index_t T, E, k;
    variant v;
    bool ties;  // logits quantised to quarters: many exact ties
};

// CPU reference ids/weights for a case.
void cpu_gating(const gating_case& c, const std::vector<float>& logits, const std::vector<float>& noise,
                const std::vector<float>& bias, std::vector<std::int32_t>& ids, std::vector<float>& weights) {
    ids.assign(c.T * c.k, 0);
    weights.assign(c.T * c.k, 0.0f);
    tinyllm::tensor_view<std::int32_t, 2> i(ids.data(), {c.T, c.k});
    tinyllm::tensor_view<float, 2> w(weights.data(), {c.T, c.k});
    tinyllm::tensor_view<const float, 2> x(logits.data(), {c.T, c.E});
    switch (c.v) {
        case variant::softmax_renormalized: tinyllm::cpu::softmax_topk_gating(i, w, x, true); break;
        case variant::softmax_plain: tinyllm::cpu::softmax_topk_gating(i, w, x, false); break;
        case variant::noisy:
            tinyllm::cpu::noisy_topk_gating(i, w, x, tinyllm::tensor_view<const float, 2>(noise.data(), {c.T, c.E}), 1234, 7);
            break;
        case variant::grouped:
            tinyllm::cpu::grouped_topk_gating(i, w, x, tinyllm::tensor_view<const float, 1>(bias.data(), {c.E}),
                                              grouped_options(c.E, c.k));
            break;
    }
}

template <class Launch>
void check_gpu_gating(const gating_case& c, const std::vector<std::int32_t>& want_ids,
                      const std::vector<float>& want_weights, const char* version, Launch&& launch) {
    tc::device_buffer<std::int32_t> ids(c.T * c.k);
    tc::device_buffer<float> weights(c.T * c.k);
    ids.poison();
    weights.poison();
    launch(ids.view(extents<2>{c.T, c.k}), weights.view(extents<2>{c.T, c.k}));
    const auto got_ids = tc::to_host(ids);
    const auto got_weights = tc::to_host(weights);
    const std::string what = std::string(version) + " " + name(c.v) + " T=" + std::to_string(c.T) +
                             " E=" + std::to_string(c.E) + " k=" + std::to_string(c.k) + (c.ties ? " (ties)" : "");
    INFO(what);
    std::size_t first_bad = got_ids.size();
    for (std::size_t i = 0; i < got_ids.size() && first_bad == got_ids.size(); ++i)
        if (got_ids[i] != want_ids[i]) first_bad = i;
    if (first_bad < got_ids.size())
        INFO("first differing id at [" << first_bad << "]: got " << got_ids[first_bad] << ", expected "
                                       << want_ids[first_bad]);
    REQUIRE(first_bad == got_ids.size());
    TINYLLM_REQUIRE_CLOSE(got_weights, want_weights, weight_tolerance, what);
}

void run_gating_case(const gating_case& c, std::uint64_t which) {
    auto logits = tinyllm_test::random_floats(c.T * c.E, which, -4, 4);
    if (c.ties)
        for (float& x : logits) x = std::round(x * 4) / 4;
    const auto noise = tinyllm_test::random_floats(c.T * c.E, which + 1, -2, 1);
    auto bias = tinyllm_test::random_floats(c.E, which + 2, -0.1f, 0.1f);
    if (c.ties)
        for (float& b : bias) b = std::round(b * 32) / 32;
    std::vector<std::int32_t> want_ids;
    std::vector<float> want_weights;
    cpu_gating(c, logits, noise, bias, want_ids, want_weights);

    auto d_logits = tc::to_device(logits);
    auto d_noise = tc::to_device(noise);
    auto d_bias = tc::to_device(bias);
    const auto x = d_logits.view(extents<2>{c.T, c.E});
    const auto nx = d_noise.view(extents<2>{c.T, c.E});
    const auto b = d_bias.view(extents<1>{c.E});
    const auto options = grouped_options(c.E, c.k);
    for (int version = 0; version < 2; ++version) {
        const bool naive = version == 0;
        check_gpu_gating(c, want_ids, want_weights, naive ? "v1 naive" : "v2 fused",
                         [&](tinyllm::tensor_view<std::int32_t, 2> ids, tinyllm::tensor_view<float, 2> w) {
                             switch (c.v) {
                                 case variant::softmax_renormalized:
                                 case variant::softmax_plain: {
                                     const bool renorm = c.v == variant::softmax_renormalized;
                                     if (naive) tc::softmax_topk_gating_naive(ids, w, x, renorm);
                                     else tc::softmax_topk_gating_fused(ids, w, x, renorm);
                                     break;
                                 }
                                 case variant::noisy:
                                     if (naive) tc::noisy_topk_gating_naive(ids, w, x, nx, 1234, 7);
                                     else tc::noisy_topk_gating_fused(ids, w, x, nx, 1234, 7);
                                     break;
                                 case variant::grouped:
                                     if (naive) tc::grouped_topk_gating_naive(ids, w, x, b, options);
                                     else tc::grouped_topk_gating_fused(ids, w, x, b, options);
                                     break;
                             }
                         });
    }
}

}  // namespace

namespace {
void check_gating(const std::vector<index_t>& tokens, bool ties, std::uint64_t which) {
    for (variant v : {variant::softmax_renormalized, variant::softmax_plain, variant::noisy, variant::grouped}) {
        for (index_t E : {8, 64, 256, 60}) {
            for (index_t k : {1, 2, 8}) {
                if (k > E) continue;
                for (index_t T : tokens) run_gating_case({T, E, k, v, false}, which += 3);
                if (ties) run_gating_case({513, E, k, v, true}, which += 3);
            }
        }
    }
}
}  // namespace

TEST_CASE("CUDA gating kernels choose exactly the CPU's experts", "[cuda][moe][gating]") {
    check_gating({1, 37, 300}, true, 100);
}
TEST_CASE("CUDA gating kernels at T = 4099, every variant", "[cuda][moe][gating][large]") {
    check_gating({4099}, false, 500);
}

TEST_CASE("CUDA gating at T = 100000", "[cuda][moe][gating][large]") {
    run_gating_case({100000, 256, 8, variant::softmax_renormalized, false}, 900);
    run_gating_case({100000, 8, 2, variant::softmax_plain, false}, 903);
    run_gating_case({100000, 60, 2, variant::noisy, false}, 906);
    run_gating_case({100000, 256, 8, variant::grouped, false}, 909);
}

TEST_CASE("CUDA gating beyond the fused kernel's range falls back to v1", "[cuda][moe][gating]") {
    const index_t T = 64, E = 1500, k = 40;
    const auto logits = tinyllm_test::random_floats(T * E, 50, -3, 3);
    std::vector<std::int32_t> want_ids(T * k);
    std::vector<float> want_w(T * k);
    tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(want_ids.data(), {T, k}),
                                      tinyllm::tensor_view<float, 2>(want_w.data(), {T, k}),
                                      tinyllm::tensor_view<const float, 2>(logits.data(), {T, E}), true);
    auto d = tc::to_device(logits);
    tc::device_buffer<std::int32_t> ids(T * k);
    tc::device_buffer<float> w(T * k);
    ids.poison();
    w.poison();
    CHECK_THROWS_WITH(tc::softmax_topk_gating_fused(ids.view(extents<2>{T, k}), w.view(extents<2>{T, k}),
                                                    d.view(extents<2>{T, E}), true),
                      tinyllm_test::contains("E <= 1024, k <= 32"));
    tc::softmax_topk_gating(ids.view(extents<2>{T, k}), w.view(extents<2>{T, k}), d.view(extents<2>{T, E}), true);
    CHECK(tc::to_host(ids) == want_ids);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(w), want_w, weight_tolerance, "fallback");
}

TEST_CASE("CUDA gating reads bfloat16 logits", "[cuda][moe][gating][bf16]") {
    const index_t T = 777, E = 64, k = 8;
    const auto f = tinyllm_test::random_floats(T * E, 60, -3, 3);
    std::vector<tinyllm::bfloat16> h(f.size());
    std::vector<float> rounded(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) {
        h[i] = tinyllm::from_float<tinyllm::bfloat16>(f[i]);
        rounded[i] = tinyllm::to_float(h[i]);  // bf16 has many ties: a good tie test too
    }
    std::vector<std::int32_t> want_ids(T * k);
    std::vector<float> want_w(T * k);
    tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(want_ids.data(), {T, k}),
                                      tinyllm::tensor_view<float, 2>(want_w.data(), {T, k}),
                                      tinyllm::tensor_view<const float, 2>(rounded.data(), {T, E}), true);
    auto d = tc::to_device(h);
    for (int version = 0; version < 2; ++version) {
        tc::device_buffer<std::int32_t> ids(T * k);
        tc::device_buffer<float> w(T * k);
        ids.poison();
        w.poison();
        if (version == 0)
            tc::softmax_topk_gating_naive(ids.view(extents<2>{T, k}), w.view(extents<2>{T, k}), d.view(extents<2>{T, E}), true);
        else
            tc::softmax_topk_gating_fused(ids.view(extents<2>{T, k}), w.view(extents<2>{T, k}), d.view(extents<2>{T, E}), true);
        CHECK(tc::to_host(ids) == want_ids);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(w), want_w, weight_tolerance, "bf16 gating");
    }
}

TEST_CASE("CUDA gating validates its arguments on the host", "[cuda][moe][gating][errors]") {
    tc::device_buffer<float> logits(4 * 8), w(4 * 9), bias(8);
    tc::device_buffer<std::int32_t> ids(4 * 9);
    const auto x = logits.view(extents<2>{4, 8});
    CHECK_THROWS_WITH(tc::softmax_topk_gating(ids.view(extents<2>{4, 9}), w.view(extents<2>{4, 9}), x, true),
                      tinyllm_test::contains("k = 9 exceeds the number of experts E = 8"));
    tinyllm::grouped_topk_options bad;
    bad.n_group = 3;
    CHECK_THROWS_WITH(tc::grouped_topk_gating(ids.view(extents<2>{4, 9}).narrow(1, 0, 2),
                                              w.view(extents<2>{4, 9}).narrow(1, 0, 2), x, bias.view(extents<1>{8}), bad),
                      tinyllm_test::contains("ids and weights must be contiguous"));
    tc::device_buffer<std::int32_t> ids2(8);
    tc::device_buffer<float> w2(8);
    CHECK_THROWS_WITH(tc::grouped_topk_gating(ids2.view(extents<2>{4, 2}), w2.view(extents<2>{4, 2}), x,
                                              bias.view(extents<1>{8}), bad),
                      tinyllm_test::contains("n_group = 3 does not divide E = 8"));
}

TEST_CASE("CUDA gating refuses outputs over the logits, over each other or over its other inputs",
          "[cuda][moe][gating][errors]") {
    using tinyllm_test::contains;
    using ids_view = tinyllm::tensor_view<std::int32_t, 2>;
    using weights_view = tinyllm::tensor_view<float, 2>;
    tc::device_buffer<float> logits(4 * 8), noise(4 * 8), w(4 * 2), bias(8);
    tc::device_buffer<std::int32_t> ids(4 * 2);
    const auto x = logits.view(extents<2>{4, 8});
    const auto n = noise.view(extents<2>{4, 8});
    const auto b = bias.view(extents<1>{8});
    const auto I = ids.view(extents<2>{4, 2});
    const auto W = w.view(extents<2>{4, 2});
    const weights_view over_logits(logits.data() + 8, {4, 2});
    CHECK_THROWS_WITH(tc::softmax_topk_gating_naive(I, over_logits, x, true),
                      contains("softmax_topk_gating_naive: weights must not share memory with logits"));
    CHECK_THROWS_WITH(tc::softmax_topk_gating_fused(I, over_logits, x, true),
                      contains("softmax_topk_gating_fused: weights must not share memory with logits"));
    CHECK_THROWS_WITH(tc::softmax_topk_gating(I, over_logits, x, true),
                      contains("softmax_topk_gating: weights must not share memory with logits"));
    CHECK_THROWS_WITH(tc::softmax_topk_gating(ids_view(reinterpret_cast<std::int32_t*>(w.data()), {4, 2}), W, x, true),
                      contains("softmax_topk_gating: ids must not share memory with weights"));
    CHECK_THROWS_WITH(
        tc::softmax_topk_gating(ids_view(reinterpret_cast<std::int32_t*>(logits.data()), {4, 2}), W, x, true),
        contains("softmax_topk_gating: ids must not share memory with logits"));
    CHECK_THROWS_WITH(tc::noisy_topk_gating(I, weights_view(noise.data() + 4, {4, 2}), x, n, 7),
                      contains("noisy_topk_gating: weights must not share memory with noise_logits"));
    CHECK_THROWS_WITH(tc::grouped_topk_gating(ids_view(reinterpret_cast<std::int32_t*>(bias.data()), {4, 2}), W, x, b,
                                              tinyllm::grouped_topk_options{}),
                      contains("grouped_topk_gating: ids must not share memory with bias"));
    // The backward: dlogits exactly the logits, or apart from them and from dweights.
    const std::vector<float> host_logits = tinyllm_test::random_floats(4 * 8, 77, -2, 2);
    const std::vector<float> host_dweights = tinyllm_test::random_floats(4 * 2, 78, -1, 1);
    tc::device_buffer<float> big(4 * 8 + 8), dweights(4 * 2), dlogits(4 * 8);
    const tinyllm::tensor_view<const float, 2> L(big.data(), {4, 8}), G = dweights.view(extents<2>{4, 2});
    CHECK_THROWS_WITH(tc::softmax_topk_gating_backward(weights_view(big.data() + 8, {4, 8}), G, L, true),
                      contains("cuda::softmax_topk_gating_backward: dlogits must be exactly logits (in place) or not "
                               "share memory with it"));
    CHECK_THROWS_WITH(
        tc::softmax_topk_gating_backward(weights_view(dweights.data(), {4, 8}), G, logits.view(extents<2>{4, 8}), true),
        contains("cuda::softmax_topk_gating_backward: dlogits must not share memory with dweights"));
    TINYLLM_CUDA_CHECK(
        cudaMemcpy(big.data(), host_logits.data(), sizeof(float) * host_logits.size(), cudaMemcpyHostToDevice));
    TINYLLM_CUDA_CHECK(cudaMemcpy(dweights.data(), host_dweights.data(), sizeof(float) * host_dweights.size(),
                                  cudaMemcpyHostToDevice));
    tc::softmax_topk_gating_backward(dlogits.view(extents<2>{4, 8}), G, L, true);
    tc::softmax_topk_gating_backward(weights_view(big.data(), {4, 8}), G, L, true);  // in place over the logits
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> apart = tc::to_host(dlogits), in_place = tc::to_host(big);
    CHECK(std::vector<float>(in_place.begin(), in_place.begin() + 4 * 8) == apart);
}

namespace {

struct plan_device {
    tc::device_buffer<std::int32_t> row_of, row_token, offsets, counts;
    index_t T, k, E;
    plan_device(index_t T_, index_t k_, index_t E_, index_t block)
        : row_of(T_ * k_), row_token(tinyllm::moe_max_rows(T_, k_, E_, block)), offsets(E_ + 1), counts(E_),
          T(T_), k(k_), E(E_) {}
    tinyllm::moe_plan_view view() {
        return {row_of.view(extents<2>{T, k}), row_token.view(extents<1>{static_cast<index_t>(row_token.size())}),
                offsets.view(extents<1>{E + 1}), counts.view(extents<1>{E})};
    }
    void poison() {
        poison_ints(row_of);
        poison_ints(row_token);
        poison_ints(offsets);
        poison_ints(counts);
    }
};

// Ids from the CPU gating of random logits; `skew` adds a bias towards expert 0.
std::vector<std::int32_t> routed_ids(index_t T, index_t E, index_t k, float skew, std::uint64_t which) {
    auto logits = tinyllm_test::random_floats(T * E, which, -2, 2);
    for (index_t t = 0; t < T; ++t) logits[t * E] += skew;
    std::vector<std::int32_t> ids(T * k);
    std::vector<float> w(T * k);
    tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(ids.data(), {T, k}),
                                      tinyllm::tensor_view<float, 2>(w.data(), {T, k}),
                                      tinyllm::tensor_view<const float, 2>(logits.data(), {T, E}), true);
    return ids;
}

// The CPU reference of the experts for routed tokens: the plan (options o), and
// every used row's SwiGLU FFN output (R, D) over the gathered x (T, D).
struct cpu_experts {
    tinyllm::cpu::moe_plan_buffers plan;
    tensor<float, 2> out;
};
cpu_experts cpu_expert_rows(const std::vector<std::int32_t>& ids, const std::vector<float>& x,
                            const std::vector<float>& w1, const std::vector<float>& w3, const std::vector<float>& w2,
                            index_t T, index_t k, index_t E, index_t D, index_t F,
                            const tinyllm::moe_dispatch_options& o) {
    cpu_experts c{tinyllm::cpu::moe_plan_buffers(T, k, E, o.block), tensor<float, 2>()};
    tinyllm::cpu::moe_plan(c.plan.view(), tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {T, k}), o);
    const index_t R = tinyllm::moe_max_rows(T, k, E, o.block);
    tensor<float, 2> sorted(extents<2>{R, D});
    c.out = tensor<float, 2>(extents<2>{R, D});
    tinyllm::cpu::moe_gather(sorted.view(), tinyllm::tensor_view<const float, 2>(x.data(), {T, D}), c.plan.view());
    tinyllm::cpu::moe_experts_swiglu(c.out.view(), sorted.view(),
                                     tinyllm::tensor_view<const float, 3>(w1.data(), {E, F, D}),
                                     tinyllm::tensor_view<const float, 3>(w3.data(), {E, F, D}),
                                     tinyllm::tensor_view<const float, 3>(w2.data(), {E, D, F}), c.plan.view());
    return c;
}

}  // namespace

namespace {
struct plan_shape {
    index_t T, E, k;
};
void check_plans(const std::vector<plan_shape>& shapes, std::uint64_t which) {
    for (plan_shape s : shapes) {
        for (float skew : {0.0f, 3.0f}) {
            const auto ids = routed_ids(s.T, s.E, s.k, skew, which += 1);
            auto d_ids = tc::to_device(ids);
            tc::moe_dispatch_workspace ws(s.T * s.k, s.E);
            for (double factor : {0.0, 1.0, 1.25}) {
                for (index_t block : {1, 16}) {
                    tinyllm::moe_dispatch_options o;
                    o.capacity = factor > 0 ? tinyllm::moe_capacity(s.T, s.k, s.E, factor) : -1;
                    o.block = block;
                    tinyllm::cpu::moe_plan_buffers want(s.T, s.k, s.E, block);
                    tinyllm::cpu::moe_plan(want.view(),
                                           tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {s.T, s.k}), o);
                    plan_device got(s.T, s.k, s.E, block);
                    got.poison();
                    tc::moe_plan(got.view(), d_ids.view(extents<2>{s.T, s.k}), o, ws);
                    INFO("T=" << s.T << " E=" << s.E << " k=" << s.k << " skew=" << skew << " capacity=" << o.capacity
                              << " block=" << block);
                    CHECK(tc::to_host(got.counts) == want.expert_counts.values());
                    CHECK(tc::to_host(got.offsets) == want.expert_offsets.values());
                    CHECK(tc::to_host(got.row_of) == want.row_of.values());
                    CHECK(tc::to_host(got.row_token) == want.row_token.values());
                }
            }
        }
    }
}
}  // namespace

TEST_CASE("the CUDA dispatch plan equals the CPU plan, capacity drops included", "[cuda][moe][dispatch]") {
    // One tile (at most 256 slots: the one-launch plan): 2, 37, 200 (E = 64: two experts a lane)
    // and exactly 256 slots (E = 256); then 258 slots (two tiles) and more.
    check_plans({{1, 8, 2}, {37, 8, 1}, {100, 64, 2}, {128, 256, 2}, {129, 8, 2}, {1000, 60, 2}, {4099, 64, 8}}, 300);
}
TEST_CASE("the CUDA dispatch plan at T = 100000", "[cuda][moe][dispatch][large]") {
    check_plans({{100000, 256, 8}, {100000, 8, 2}}, 400);
}

TEST_CASE("CUDA gather, combine and experts against the CPU", "[cuda][moe][dispatch][experts]") {
    const index_t T = 3001, E = 8, k = 2, D = 64, F = 96;
    const auto logits = tinyllm_test::random_floats(T * E, 400, -2, 2);
    const auto x = tinyllm_test::random_floats(T * D, 401);
    std::vector<std::int32_t> ids(T * k);
    std::vector<float> w(T * k);
    tinyllm::cpu::softmax_topk_gating(tinyllm::tensor_view<std::int32_t, 2>(ids.data(), {T, k}),
                                      tinyllm::tensor_view<float, 2>(w.data(), {T, k}),
                                      tinyllm::tensor_view<const float, 2>(logits.data(), {T, E}), false);
    tensor<float, 3> w1(extents<3>{E, F, D}), w3(extents<3>{E, F, D}), w2(extents<3>{E, D, F});
    w1.values() = tinyllm_test::random_floats(E * F * D, 402, -0.2f, 0.2f);
    w3.values() = tinyllm_test::random_floats(E * F * D, 403, -0.2f, 0.2f);
    w2.values() = tinyllm_test::random_floats(E * D * F, 404, -0.2f, 0.2f);
    auto d_ids = tc::to_device(ids);
    auto d_w = tc::to_device(w);
    auto d_x = tc::to_device(x);
    auto d_w1 = tc::to_device(w1.values()), d_w3 = tc::to_device(w3.values()), d_w2 = tc::to_device(w2.values());
    tc::moe_dispatch_workspace ws(T * k, E);
    tc::cublas_handle handle;

    for (index_t block : {1, 32}) {
        for (double factor : {0.0, 1.0}) {
            tinyllm::moe_dispatch_options o;
            o.capacity = factor > 0 ? tinyllm::moe_capacity(T, k, E, factor) : -1;
            o.block = block;
            INFO("block " << block << ", capacity " << o.capacity);
            tinyllm::cpu::moe_plan_buffers plan(T, k, E, block);
            tinyllm::cpu::moe_plan(plan.view(), tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {T, k}), o);
            const index_t R = plan.rows();
            tensor<float, 2> sorted(extents<2>{R, D}), expert_out(extents<2>{R, D}), out(extents<2>{T, D});
            tinyllm::tensor_view<const float, 2> xv(x.data(), {T, D});
            tinyllm::cpu::moe_gather(sorted.view(), xv, plan.view());
            tinyllm::cpu::moe_experts_swiglu(expert_out.view(), sorted.view(), w1.view(), w3.view(), w2.view(), plan.view());
            tinyllm::cpu::moe_combine(out.view(), expert_out.view(), tinyllm::tensor_view<const float, 2>(w.data(), {T, k}),
                                      plan.view());

            plan_device p(T, k, E, block);
            p.poison();
            tc::moe_plan(p.view(), d_ids.view(extents<2>{T, k}), o, ws);
            tc::device_buffer<float> d_sorted(R * D), d_expert_out(R * D), d_out(T * D), d_identity(T * D);
            d_sorted.poison();
            tc::moe_gather(d_sorted.view(extents<2>{R, D}), d_x.view(extents<2>{T, D}), p.view());
            REQUIRE(tc::to_host(d_sorted) == sorted.values());  // a copy: exact

            // Identity experts: combine(gather(x)) = x * (sum of kept weights).
            d_identity.poison();
            tc::moe_combine(d_identity.view(extents<2>{T, D}), d_sorted.view(extents<2>{R, D}),
                            d_w.view(extents<2>{T, k}), p.view());
            std::vector<float> scaled(T * D);
            for (index_t t = 0; t < T; ++t) {
                float kept = 0;
                for (index_t j = 0; j < k; ++j)
                    if (plan.row_of(t, j) >= 0) kept += w[t * k + j];
                for (index_t d = 0; d < D; ++d) scaled[t * D + d] = x[t * D + d] * kept;
            }
            TINYLLM_REQUIRE_CLOSE(tc::to_host(d_identity), scaled, tolerance{1e-6, 1e-6, 1e-6}, "identity experts");

            d_expert_out.poison();
            tc::moe_experts_swiglu(d_expert_out.view(extents<2>{R, D}), d_sorted.view(extents<2>{R, D}),
                                   d_w1.view(extents<3>{E, F, D}), d_w3.view(extents<3>{E, F, D}),
                                   d_w2.view(extents<3>{E, D, F}), p.view(), handle.get());
            TINYLLM_REQUIRE_CLOSE(tc::to_host(d_expert_out), expert_out.values(), tolerance{1e-5, 1e-4, 1e-5},
                                  "experts (cuBLAS)");
            d_out.poison();
            tc::moe_combine(d_out.view(extents<2>{T, D}), d_expert_out.view(extents<2>{R, D}),
                            d_w.view(extents<2>{T, k}), p.view());
            TINYLLM_REQUIRE_CLOSE(tc::to_host(d_out), out.values(), tolerance{1e-5, 1e-4, 1e-5}, "combine");
        }
    }
}

TEST_CASE("CUDA combine with bfloat16 rows and an odd width", "[cuda][moe][dispatch][bf16]") {
    const index_t T = 515, E = 8, k = 2, D = 37;
    const auto ids = routed_ids(T, E, k, 0.0f, 500);
    const auto w = tinyllm_test::random_floats(T * k, 501, 0, 1);
    const auto xf = tinyllm_test::random_floats(T * D, 502);
    std::vector<tinyllm::bfloat16> xb(xf.size());
    std::vector<float> xr(xf.size());
    for (std::size_t i = 0; i < xf.size(); ++i) {
        xb[i] = tinyllm::from_float<tinyllm::bfloat16>(xf[i]);
        xr[i] = tinyllm::to_float(xb[i]);
    }
    tinyllm::cpu::moe_plan_buffers plan(T, k, E, 1);
    tinyllm::cpu::moe_plan(plan.view(), tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {T, k}));
    const index_t R = plan.rows();
    tensor<float, 2> sorted(extents<2>{R, D}), out(extents<2>{T, D});
    tinyllm::cpu::moe_gather(sorted.view(), tinyllm::tensor_view<const float, 2>(xr.data(), {T, D}), plan.view());
    tinyllm::cpu::moe_combine(out.view(), sorted.view(), tinyllm::tensor_view<const float, 2>(w.data(), {T, k}), plan.view());

    auto d_ids = tc::to_device(ids);
    auto d_w = tc::to_device(w);
    auto d_x = tc::to_device(xb);
    tc::moe_dispatch_workspace ws(T * k, E);
    plan_device p(T, k, E, 1);
    tc::moe_plan(p.view(), d_ids.view(extents<2>{T, k}), {}, ws);
    tc::device_buffer<tinyllm::bfloat16> d_sorted(R * D), d_out(T * D);
    d_sorted.poison();
    d_out.poison();
    tc::moe_gather(d_sorted.view(extents<2>{R, D}), d_x.view(extents<2>{T, D}), p.view());
    tc::moe_combine(d_out.view(extents<2>{T, D}), d_sorted.view(extents<2>{R, D}), d_w.view(extents<2>{T, k}), p.view());
    const auto got = tc::to_host(d_out);
    TINYLLM_REQUIRE_CLOSE(got, out.values(), tolerance{1e-2, 1e-2, 5e-3}, "bf16 combine");
}

namespace {
// The experts of a decode step as grouped GEMVs (moe_experts_swiglu_gemv) against
// the CPU reference and the cuBLAS path, on the rows of kept slots (the only rows
// the GEMVs write). T tokens with k = 2 of E = 8 experts; `skew` sends most tokens
// to expert 0 (T = 40 then gives it more than 8 rows: the GEMV's row chunks).
template <class T>
void check_experts_gemv(index_t tokens, index_t D, index_t F, index_t block, float skew, std::uint64_t which) {
    const index_t E = 8, k = 2;
    const auto ids = routed_ids(tokens, E, k, skew, which);
    const auto x = on_grid<T>(tinyllm_test::random_floats(tokens * D, which + 1));
    const auto w1 = on_grid<T>(tinyllm_test::random_floats(E * F * D, which + 2, -0.2f, 0.2f));
    const auto w3 = on_grid<T>(tinyllm_test::random_floats(E * F * D, which + 3, -0.2f, 0.2f));
    const auto w2 = on_grid<T>(tinyllm_test::random_floats(E * D * F, which + 4, -0.2f, 0.2f));
    tinyllm::moe_dispatch_options o;
    o.block = block;
    const index_t R = tinyllm::moe_max_rows(tokens, k, E, block);
    const cpu_experts want_rows = cpu_expert_rows(ids, x, w1, w3, w2, tokens, k, E, D, F, o);

    auto d_ids = tc::to_device(ids);
    auto d_x = upload<T>(x);
    auto d_w1 = upload<T>(w1), d_w3 = upload<T>(w3);
    auto d_w2 = upload<T>(w2);
    const auto v1 = d_w1.view(extents<3>{E, F, D}), v3 = d_w3.view(extents<3>{E, F, D});
    const auto v2 = d_w2.view(extents<3>{E, D, F});
    tc::moe_dispatch_workspace plan_ws(tokens * k, E);
    plan_device p(tokens, k, E, block);
    tc::moe_plan(p.view(), d_ids.view(extents<2>{tokens, k}), o, plan_ws);
    tc::device_buffer<T> d_sorted(R * D), d_gemm(R * D), d_gemv(R * D), d_hidden(R * F);
    tc::moe_gather(d_sorted.view(extents<2>{R, D}), d_x.view(extents<2>{tokens, D}), p.view());
    const auto in = tinyllm::tensor_view<const T, 2>(d_sorted.data(), {R, D});
    tc::cublas_handle handle;
    d_gemm.poison();
    tc::moe_experts_swiglu(d_gemm.view(extents<2>{R, D}), in, v1, v3, v2, p.view(), handle.get());
    d_gemv.poison();
    d_hidden.poison();
#if defined(TINYLLM_SIMULATED_GPU)
    const auto before = tinyllm::sim::stats();
#endif
    tc::moe_experts_swiglu_gemv(d_gemv.view(extents<2>{R, D}), in, v1, v3, v2, p.view(),
                                d_hidden.view(extents<2>{R, F}));
#if defined(TINYLLM_SIMULATED_GPU)
    const auto after = tinyllm::sim::stats();
    CHECK(after.allocations == before.allocations);          // nothing allocated
    CHECK(after.synchronizations == before.synchronizations);  // nothing read back: the plan stays on the device
#endif
    // The rows of kept slots, in slot order.
    const auto gemv_all = tc::to_host(d_gemv), gemm_all = tc::to_host(d_gemm);
    std::vector<float> got, gemm, want;
    index_t kept = 0;
    for (index_t t = 0; t < tokens; ++t)
        for (index_t j = 0; j < k; ++j) {
            const std::int32_t row = want_rows.plan.row_of(t, j);
            if (row < 0) continue;
            ++kept;
            for (index_t d = 0; d < D; ++d) {
                got.push_back(tinyllm::to_float(gemv_all[static_cast<std::size_t>(row * D + d)]));
                gemm.push_back(tinyllm::to_float(gemm_all[static_cast<std::size_t>(row * D + d)]));
                want.push_back(want_rows.out(row, d));
            }
        }
    REQUIRE(kept == tokens * k);  // no capacity: every slot is kept
    const std::string name = std::string(std::is_same_v<T, float> ? "float32" : "bf16") + " experts GEMV, T=" +
                             std::to_string(tokens) + " D=" + std::to_string(D) + " F=" + std::to_string(F) +
                             " block=" + std::to_string(block);
    // float: sums of up to F products of size ~0.1 in float; bf16: the intermediate and the
    // output are rounded to bf16 (8 bits), which the CPU reference does not do.
    const tolerance tol = std::is_same_v<T, float> ? tolerance{1e-5, 1e-4, 1e-5} : tolerance{2e-2, 2e-2, 1e-2};
    TINYLLM_REQUIRE_CLOSE(got, want, tol, name + " vs CPU");
    TINYLLM_REQUIRE_CLOSE(got, gemm, tol, name + " vs cuBLAS");
}
}  // namespace

TEST_CASE("CUDA experts as grouped GEMVs (a decode step's rows) against the CPU and the cuBLAS experts, without a wait",
          "[cuda][moe][dispatch][experts][gemv]") {
    // D, F multiples of 8 (16-byte vectors) and odd (scalar loads); 1, 3 and 8 tokens (a decode
    // step), and 40 tokens skewed to expert 0 (more than 8 rows for one expert).
    std::uint64_t which = 700;
    for (const auto& [D, F] : std::vector<std::pair<index_t, index_t>>{{64, 96}, {37, 45}})
        for (index_t tokens : {1, 3, 8, 40})
            for (index_t block : {1, 16}) {
                const float skew = tokens == 40 ? 3.0f : 0.0f;
                check_experts_gemv<float>(tokens, D, F, block, skew, which += 10);
                check_experts_gemv<tinyllm::bfloat16>(tokens, D, F, block, skew, which += 10);
            }
}

namespace {
// Combine v2 (moe_combine_residual_rms_norm / _layer_norm) against v1 then the
// residual add + norm on the GPU (bit for bit: the stream and the normalized
// rows), and against the CPU (combine, rounded to T, added to x and rounded,
// then the CPU norm). T tokens with k = 2 of E = 8 experts, capacity (some slots
// dropped) or not; the expert rows are random, padding rows included (never read).
template <class T, bool Layer>
void check_combine_residual_norm(index_t tokens, index_t D, bool capacity, std::uint64_t which) {
    const index_t E = 8, k = 2, block = 4;
    const float eps = 1e-5f;
    const auto ids = routed_ids(tokens, E, k, 1.0f, which);
    tinyllm::moe_dispatch_options o;
    o.block = block;
    o.capacity = capacity ? tinyllm::moe_capacity(tokens, k, E, 0.75) : -1;
    tinyllm::cpu::moe_plan_buffers plan(tokens, k, E, block);
    tinyllm::cpu::moe_plan(plan.view(), tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {tokens, k}), o);
    const index_t R = tinyllm::moe_max_rows(tokens, k, E, block);
    const auto y = on_grid<T>(tinyllm_test::random_floats(R * D, which + 1, -2, 2));  // expert rows (R, D)
    const auto w = tinyllm_test::random_floats(tokens * k, which + 2, 0, 1);         // gating weights (T, k)
    const auto x = on_grid<T>(tinyllm_test::random_floats(tokens * D, which + 3, -2, 2));
    const auto g = on_grid<T>(tinyllm_test::random_floats(D, which + 4, 0.5f, 1.5f));  // the norm's weight
    const auto b = on_grid<T>(tinyllm_test::random_floats(D, which + 5, -0.5f, 0.5f));  // and bias (LayerNorm)

    auto d_ids = tc::to_device(ids);
    auto d_y = upload<T>(y);
    auto d_w = tc::to_device(w);
    auto d_g = upload<T>(g), d_b = upload<T>(b);
    tc::moe_dispatch_workspace plan_ws(tokens * k, E);
    plan_device p(tokens, k, E, block);
    tc::moe_plan(p.view(), d_ids.view(extents<2>{tokens, k}), o, plan_ws);
    const auto Y = tinyllm::tensor_view<const T, 2>(d_y.data(), {R, D});
    const auto W = d_w.view(extents<2>{tokens, k});
    const auto G = tinyllm::tensor_view<const T, 1>(d_g.data(), {D}), B = tinyllm::tensor_view<const T, 1>(d_b.data(), {D});

    // v1 combine, then the residual add + norm (norm v2).
    auto d_x1 = upload<T>(x);
    tc::device_buffer<T> d_comb(tokens * D), d_out1(tokens * D), d_out2(tokens * D);
    const auto X1 = d_x1.view(extents<2>{tokens, D});
    d_comb.poison();
    d_out1.poison();
    tc::moe_combine(d_comb.view(extents<2>{tokens, D}), Y, W, p.view());
    const auto comb = tinyllm::tensor_view<const T, 2>(d_comb.data(), {tokens, D});
    if constexpr (Layer) tc::residual_add_layer_norm<T>(d_out1.view(extents<2>{tokens, D}), X1, X1, comb, G, B, eps);
    else tc::residual_add_rms_norm<T>(d_out1.view(extents<2>{tokens, D}), X1, X1, comb, G, eps);
    // v2, in one launch.
    auto d_x2 = upload<T>(x);
    const auto X2 = d_x2.view(extents<2>{tokens, D});
    d_out2.poison();
    if constexpr (Layer) tc::moe_combine_residual_layer_norm<T>(d_out2.view(extents<2>{tokens, D}), X2, Y, W, p.view(), G, B, eps);
    else tc::moe_combine_residual_rms_norm<T>(d_out2.view(extents<2>{tokens, D}), X2, Y, W, p.view(), G, eps);

    const auto floats = [](const tc::device_buffer<T>& d) {
        const auto h = tc::to_host(d);
        std::vector<float> v(h.size());
        for (std::size_t i = 0; i < h.size(); ++i) v[i] = tinyllm::to_float(h[i]);
        return v;
    };
    const std::vector<float> stream1 = floats(d_x1), stream2 = floats(d_x2), out1 = floats(d_out1),
                             out2 = floats(d_out2);
    const std::string name = std::string(std::is_same_v<T, float> ? "float32" : "bf16") +
                             (Layer ? " layer" : " rms") + " combine v2, T=" + std::to_string(tokens) +
                             " D=" + std::to_string(D) + (capacity ? ", capacity" : "");
    INFO(name);
    const auto stream_bits = tinyllm_test::compare_bits(stream2, stream1), out_bits = tinyllm_test::compare_bits(out2, out1);
    std::printf("  %s: %zu of %zu stream values and %zu of %zu outputs differ in any bit from v1 + norm v2\n",
                name.c_str(), stream_bits.differ, stream2.size(), out_bits.differ, out2.size());
    CHECK(stream_bits.non_finite == 0);
    CHECK(out_bits.non_finite == 0);
    CHECK(stream_bits.differ == 0);
    CHECK(out_bits.differ == 0);

    // The CPU: combine (float), rounded to T as stored; the add, rounded; the norm.
    tensor<float, 2> combined(extents<2>{tokens, D}), want(extents<2>{tokens, D});
    tinyllm::cpu::moe_combine(combined.view(), tinyllm::tensor_view<const float, 2>(y.data(), {R, D}),
                              tinyllm::tensor_view<const float, 2>(w.data(), {tokens, k}), plan.view());
    std::vector<float> stream(x.size());
    index_t dropped = 0;
    for (index_t t = 0; t < tokens; ++t)
        for (index_t j = 0; j < k; ++j) dropped += plan.row_of(t, j) < 0;
    for (std::size_t i = 0; i < stream.size(); ++i) {
        const float c = tinyllm::to_float(tinyllm::from_float<T>(combined.values()[i]));
        stream[i] = tinyllm::to_float(tinyllm::from_float<T>(x[i] + c));
    }
    const auto cpu_norm = [&](tensor<float, 2>& normed, const std::vector<float>& rows) {
        const tinyllm::tensor_view<const float, 2> S(rows.data(), {tokens, D});
        const tinyllm::tensor_view<const float, 1> G1(g.data(), {D}), B1(b.data(), {D});
        if constexpr (Layer) tinyllm::cpu::layer_norm(normed.view(), S, G1, B1, eps);
        else tinyllm::cpu::rms_norm(normed.view(), S, G1, eps);
    };
    cpu_norm(want, stream);
    // float: sums in another order (and fused multiply-adds) than the CPU's; bf16: the
    // stream may round the other way where the sum falls near a rounding boundary.
    const tolerance tol = std::is_same_v<T, float> ? tolerance{1e-5, 1e-5, 1e-5} : tolerance{2e-2, 2e-2, 1e-2};
    TINYLLM_REQUIRE_CLOSE(stream2, stream, tol, name + ": the stream vs CPU");
    // The norm of the GPU's own stream: the norm alone.
    tensor<float, 2> own(extents<2>{tokens, D});
    cpu_norm(own, stream2);
    const tolerance norm_tol = std::is_same_v<T, float> ? tolerance{5e-5, 5e-5, 2e-5} : tolerance{1e-2, 1e-2, 5e-3};
    TINYLLM_REQUIRE_CLOSE(out2, own.values(), norm_tol, name + ": out vs the CPU norm of its stream");
    if (capacity) CHECK(dropped > 0);  // the capacity case drops slots, which v2 must skip as v1 does
}
}  // namespace

TEST_CASE("CUDA combine v2 (combine + residual add + norm in one launch) equals combine then the residual add + norm, "
          "bit for bit",
          "[cuda][moe][dispatch][combine]") {
    // D a multiple of 8 (16-byte vectors for float and bf16) and odd (scalar); a decode
    // step's 1, 3 and 8 tokens and a prefill's 40, with and without capacity drops.
    std::uint64_t which = 1300;
    for (const index_t D : {64, 37})
        for (const index_t tokens : {1, 3, 8, 40})
            for (const bool capacity : {false, true}) {
                if (capacity && tokens < 40) continue;  // 80 slots skewed to expert 0: capacity 0.75 drops some
                check_combine_residual_norm<float, false>(tokens, D, capacity, which += 10);
                check_combine_residual_norm<tinyllm::bfloat16, false>(tokens, D, capacity, which += 10);
                check_combine_residual_norm<float, true>(tokens, D, capacity, which += 10);
                check_combine_residual_norm<tinyllm::bfloat16, true>(tokens, D, capacity, which += 10);
            }
}

TEST_CASE("CUDA combine v2 rejects bad arguments before launching", "[cuda][moe][dispatch][combine][errors]") {
    const index_t tokens = 3, k = 2, E = 4, D = 16, R = tinyllm::moe_max_rows(tokens, k, E, 1);
    tc::device_buffer<float> x(tokens * D), out(tokens * D), y(R * D), w(tokens * k), g(D);
    plan_device p(tokens, k, E, 1);
    const auto X = x.view(extents<2>{tokens, D}), O = out.view(extents<2>{tokens, D});
    const auto Y = tinyllm::tensor_view<const float, 2>(y.data(), {R, D});
    const auto W = w.view(extents<2>{tokens, k});
    const auto G = tinyllm::tensor_view<const float, 1>(g.data(), {D});
    CHECK_THROWS_WITH(tc::moe_combine_residual_rms_norm<float>(O, X, Y, tinyllm::tensor_view<const float, 2>(w.data(), {tokens, 1}),
                                                               p.view(), G, 1e-5f),
                      tinyllm_test::contains("cuda::moe_combine_residual_rms_norm: plan.row_of"));
    CHECK_THROWS_WITH(tc::moe_combine_residual_rms_norm<float>(O, X, tinyllm::tensor_view<const float, 2>(y.data(), {R, D - 1}),
                                                               W, p.view(), G, 1e-5f),
                      tinyllm_test::contains("expert_out has width 15 but x has D = 16"));
    CHECK_THROWS_WITH(tc::moe_combine_residual_rms_norm<float>(O, X, Y, W, p.view(), G, 0.0f),
                      tinyllm_test::contains("eps = 0 must be positive"));
    CHECK_THROWS_WITH(tc::moe_combine_residual_rms_norm<float>(tinyllm::tensor_view<float, 2>(out.data(), {tokens - 1, D}), X, Y,
                                                               W, p.view(), G, 1e-5f),
                      tinyllm_test::contains("out has shape"));
    CHECK_THROWS_WITH(tc::moe_combine_residual_layer_norm<float>(O, X, Y, W, p.view(), G,
                                                                 tinyllm::tensor_view<const float, 1>(g.data(), {D - 1}), 1e-5f),
                      tinyllm_test::contains("bias has 15 elements"));
}

TEST_CASE("CUDA combine v2 refuses out or x over its inputs or partly over each other; out may be x",
          "[cuda][moe][dispatch][combine][errors]") {
    using tinyllm_test::contains;
    using rows_view = tinyllm::tensor_view<float, 2>;
    const index_t tokens = 3, k = 2, E = 4, D = 16, R = tinyllm::moe_max_rows(tokens, k, E, 1);
    const auto ids = routed_ids(tokens, E, k, 0.0f, 1700);
    auto d_ids = tc::to_device(ids);
    tinyllm::moe_dispatch_options o;
    o.block = 1;
    tc::moe_dispatch_workspace plan_ws(tokens * k, E);
    plan_device p(tokens, k, E, 1);
    tc::moe_plan(p.view(), d_ids.view(extents<2>{tokens, k}), o, plan_ws);
    auto y = tc::to_device(tinyllm_test::random_floats(R * D, 1701, -2, 2));
    auto w = tc::to_device(tinyllm_test::random_floats(tokens * k, 1702, 0, 1));
    auto g = tc::to_device(tinyllm_test::random_floats(D, 1703, 0.5f, 1.5f));
    const auto x_host = tinyllm_test::random_floats(tokens * D, 1704, -2, 2);
    tc::device_buffer<float> x(2 * tokens * D), out(tokens * D);
    const rows_view X(x.data(), {tokens, D}), O = out.view(extents<2>{tokens, D});
    const auto Y = tinyllm::tensor_view<const float, 2>(y.data(), {R, D});
    const auto W = tinyllm::tensor_view<const float, 2>(w.data(), {tokens, k});
    const auto G = tinyllm::tensor_view<const float, 1>(g.data(), {D});
    const auto run = [&](rows_view out_, rows_view x_, tinyllm::tensor_view<const float, 2> w_,
                         tinyllm::tensor_view<const float, 1> g_) {
        tc::moe_combine_residual_rms_norm<float>(out_, x_, Y, w_, p.view(), g_, 1e-5f);
    };
    CHECK_THROWS_WITH(run(rows_view(y.data() + D, {tokens, D}), X, W, G),
                      contains("cuda::moe_combine_residual_rms_norm: out must not share memory with expert_out"));
    CHECK_THROWS_WITH(run(O, rows_view(y.data(), {tokens, D}), W, G),
                      contains("cuda::moe_combine_residual_rms_norm: x must not share memory with expert_out"));
    CHECK_THROWS_WITH(run(rows_view(x.data() + 1, {tokens, D}), X, W, G),
                      contains("cuda::moe_combine_residual_rms_norm: out must be exactly x (in place) or not share "
                               "memory with it"));
    CHECK_THROWS_WITH(run(O, X, tinyllm::tensor_view<const float, 2>(out.data() + 4, {tokens, k}), G),
                      contains("cuda::moe_combine_residual_rms_norm: out must not share memory with weights"));
    CHECK_THROWS_WITH(run(O, X, W, tinyllm::tensor_view<const float, 1>(x.data() + D, {D})),
                      contains("cuda::moe_combine_residual_rms_norm: x must not share memory with weight"));
    CHECK_THROWS_WITH(tc::moe_combine_residual_layer_norm<float>(
                          O, X, Y, W, p.view(), G, tinyllm::tensor_view<const float, 1>(out.data(), {D}), 1e-5f),
                      contains("cuda::moe_combine_residual_layer_norm: out must not share memory with bias"));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());

    // Allowed: out exactly x (the stream normalized in place): the same numbers as into a separate out.
    const auto upload_x = [&] {
        TINYLLM_CUDA_CHECK(cudaMemcpy(x.data(), x_host.data(), sizeof(float) * x_host.size(), cudaMemcpyHostToDevice));
    };
    upload_x();
    run(O, X, W, G);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> apart = tc::to_host(out);
    upload_x();
    run(X, X, W, G);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> all = tc::to_host(x);
    CHECK(std::vector<float>(all.begin(), all.begin() + tokens * D) == apart);
}

TEST_CASE("CUDA experts as grouped GEMVs reject what they do not take", "[cuda][moe][dispatch][experts][gemv]") {
    const index_t T = 2, k = 2, E = 4, D = 8, F = 16, R = tinyllm::moe_max_rows(T, k, E, 1);
    plan_device p(T, k, E, 1);
    tc::device_buffer<float> x(R * D), out(R * D), hidden(R * F), w1(E * F * D), w3(E * F * D), w2(E * D * F);
    const auto in = tinyllm::tensor_view<const float, 2>(x.data(), {R, D});
    const auto v1 = w1.view(extents<3>{E, F, D}), v3 = w3.view(extents<3>{E, F, D}), v2 = w2.view(extents<3>{E, D, F});
    tc::device_buffer<float> short_hidden(R * (F - 1));
    CHECK_THROWS_WITH(tc::moe_experts_swiglu_gemv(out.view(extents<2>{R, D}), in, v1, v3, v2, p.view(),
                                                  short_hidden.view(extents<2>{R, F - 1})),
                      tinyllm_test::contains("hidden"));
    CHECK_THROWS_WITH(tc::moe_experts_swiglu_gemv(out.view(extents<2>{R, D}), in, v1, v3, w2.view(extents<3>{E, F, D}),
                                                  p.view(), hidden.view(extents<2>{R, F})),
                      tinyllm_test::contains("w2"));
    tc::device_buffer<float> wide(R * (F + 1));  // a (R, F) view of it, rows F + 1 apart: not contiguous
    CHECK_THROWS_WITH(tc::moe_experts_swiglu_gemv(out.view(extents<2>{R, D}), in, v1, v3, v2, p.view(),
                                                  wide.view(extents<2>{R, F + 1}).narrow(1, 0, F)),
                      tinyllm_test::contains("must be contiguous"));
}

TEST_CASE("CUDA dispatch validates its arguments on the host", "[cuda][moe][dispatch][errors]") {
    tc::device_buffer<std::int32_t> ids(10 * 2);
    tc::moe_dispatch_workspace ws(20, 4);
    plan_device p(10, 2, 4, 1);
    CHECK_THROWS_WITH(tc::moe_plan(p.view(), ids.view(extents<2>{10, 2}), {-1, 8}, ws),
                      tinyllm_test::contains("moe_max_rows"));
    CHECK_THROWS_WITH(tc::moe_plan(p.view(), ids.view(extents<2>{10, 2}), {-1, 0}, ws),
                      tinyllm_test::contains("block = 0"));
    tc::moe_dispatch_workspace small(8, 4);
    CHECK_THROWS_WITH(tc::moe_plan(p.view(), ids.view(extents<2>{10, 2}), {}, small),
                      tinyllm_test::contains("the workspace was made for 8 slots"));
    // gather's and combine's out over their inputs (the CPU's checks, before any launch).
    const index_t D = 8, R = p.view().row_token.extent(0);
    tc::device_buffer<float> mem((10 + R) * D), weights(10 * 2);
    const tinyllm::tensor_view<float, 2> x(mem.data(), {10, D}), sorted(mem.data() + 10 * D, {R, D});
    CHECK_THROWS_WITH(tc::moe_gather(tinyllm::tensor_view<float, 2>(mem.data() + D, {R, D}),
                                     tinyllm::tensor_view<const float, 2>(x), p.view()),
                      tinyllm_test::contains("cuda::moe_gather: out must not share memory with x"));
    CHECK_THROWS_WITH(
        tc::moe_combine(tinyllm::tensor_view<float, 2>(mem.data() + (10 + 1) * D, {10, D}),
                        tinyllm::tensor_view<const float, 2>(sorted), weights.view(extents<2>{10, 2}), p.view()),
        tinyllm_test::contains("cuda::moe_combine: out must not share memory with expert_out"));
}

TEST_CASE("CUDA experts with a caller-owned workspace give the same rows and once warm allocate nothing and wait once",
          "[cuda][moe][dispatch][experts]") {
    const index_t T = 301, E = 8, k = 2, D = 32, F = 48;
    const auto ids = routed_ids(T, E, k, 1.0f, 600);
    const auto x = tinyllm_test::random_floats(T * D, 601);
    const auto w1 = tinyllm_test::random_floats(E * F * D, 602, -0.2f, 0.2f);
    const auto w3 = tinyllm_test::random_floats(E * F * D, 603, -0.2f, 0.2f);
    const auto w2 = tinyllm_test::random_floats(E * D * F, 604, -0.2f, 0.2f);
    auto d_ids = tc::to_device(ids);
    auto d_x = tc::to_device(x);
    auto d_w1 = tc::to_device(w1), d_w3 = tc::to_device(w3), d_w2 = tc::to_device(w2);
    const auto v1 = d_w1.view(extents<3>{E, F, D}), v3 = d_w3.view(extents<3>{E, F, D});
    const auto v2 = d_w2.view(extents<3>{E, D, F});
    tc::moe_dispatch_workspace plan_ws(T * k, E);
    tc::cublas_handle handle;

    tinyllm::moe_dispatch_options o;
    o.block = 16;
    const index_t R = tinyllm::moe_max_rows(T, k, E, o.block);
    plan_device p(T, k, E, o.block);
    tc::moe_plan(p.view(), d_ids.view(extents<2>{T, k}), o, plan_ws);
    tc::device_buffer<float> d_sorted(R * D), d_want(R * D), d_got(R * D);
    tc::moe_gather(d_sorted.view(extents<2>{R, D}), d_x.view(extents<2>{T, D}), p.view());
    const auto in = tinyllm::tensor_view<const float, 2>(d_sorted.data(), {R, D});
    const auto want = d_want.view(extents<2>{R, D}), got = d_got.view(extents<2>{R, D});

    // Without a workspace (a temporary one per call) and with one: the same rows, bit for bit.
    d_want.poison();
    tc::moe_experts_swiglu(want, in, v1, v3, v2, p.view(), handle.get());
    tc::moe_experts_workspace ws;
    d_got.poison();
    tc::moe_experts_swiglu(got, in, v1, v3, v2, p.view(), ws, handle.get());
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto reference = tc::to_host(d_want);
    CHECK(tc::to_host(d_got) == reference);
    // ... and the CPU's rows.
    TINYLLM_REQUIRE_CLOSE(reference, cpu_expert_rows(ids, x, w1, w3, w2, T, k, E, D, F, o).out.values(),
                          tolerance{1e-5, 1e-4, 1e-5}, "experts with a workspace");

    // Warm: on a created stream, with the caller's handle or the workspace's own (made on first use).
    cudaStream_t stream = nullptr;
    TINYLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    tc::moe_experts_swiglu(got, in, v1, v3, v2, p.view(), ws, nullptr, stream);  // makes the workspace's handle
    for (cublasHandle_t h : {handle.get(), static_cast<cublasHandle_t>(nullptr)}) {
        INFO((h ? "the caller's handle" : "the workspace's handle"));
        d_got.poison(stream);
#if defined(TINYLLM_SIMULATED_GPU)
        const auto before = tinyllm::sim::stats();
#endif
        tc::moe_experts_swiglu(got, in, v1, v3, v2, p.view(), ws, h, stream);
#if defined(TINYLLM_SIMULATED_GPU)
        const auto after = tinyllm::sim::stats();
        CHECK(after.allocations == before.allocations);                // no cudaMalloc
        CHECK(after.synchronizations - before.synchronizations == 1);  // the plan's offsets, read back on `stream`
#endif
        TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        CHECK(tc::to_host(d_got) == reference);
    }
    TINYLLM_CUDA_CHECK(cudaStreamDestroy(stream));

#if defined(TINYLLM_SIMULATED_GPU)
    // The old signature still works: a temporary workspace, so it allocates and waits before freeing it.
    const auto before = tinyllm::sim::stats();
    tc::moe_experts_swiglu(want, in, v1, v3, v2, p.view(), handle.get());
    const auto after = tinyllm::sim::stats();
    CHECK(after.allocations - before.allocations == 2);
    CHECK(after.synchronizations - before.synchronizations == 2);
#endif
}
