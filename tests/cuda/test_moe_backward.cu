// tests/cuda/test_moe_backward.cu — the CUDA MoE backward (moe_gating.cuh,
// moe_dispatch.cuh) against the CPU references (moe_gating.hpp,
// moe_dispatch.hpp; those are checked against finite differences in
// tests/test_moe_backward.cpp).
//
// The GPU recomputes the routing from its own router logits (a cuBLAS GEMM in
// float), the CPU from its logits (double sums rounded once); the two can differ
// in the last bit, so the inputs are drawn until, in every row, the k-th and
// (k+1)-th logit are at least 1e-3 apart, and both choose the same experts.
// Outputs are poisoned (NaN) first; NaN never passes. Tolerances: the GPU sums
// in float (cuBLAS, warp reductions) what the CPU sums in double: relative
// ~1e-6 seen; 1e-4 relative per element plus 1e-5 absolute, 1e-5 relative L2.
// Determinism: every case runs twice and compares the bits.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/moe.cuh>
#include <tinyllm/moe.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::tolerance;

namespace {

const tolerance tol{1e-5, 1e-4, 1e-5};

std::uint64_t seed_for(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

template <std::size_t R>
tensor<float, R> normal(const extents<R>& shape, std::uint64_t which, float stddev = 1.0f) {
    tensor<float, R> t(shape);
    cpu::fill_normal(t, seed_for(which), 0.0f, stddev);
    return t;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// The smallest gap between the k-th and (k+1)-th logit over the rows.
double margin(const tensor<float, 2>& logits, index_t k) {
    double m = INFINITY;
    for (index_t t = 0; t < logits.extent(0); ++t) {
        std::vector<float> row(logits.values().begin() + t * logits.extent(1),
                               logits.values().begin() + (t + 1) * logits.extent(1));
        std::sort(row.begin(), row.end(), std::greater<>());
        if (k < logits.extent(1)) m = std::min(m, static_cast<double>(row[k - 1]) - row[k]);
    }
    return m;
}

struct problem {
    tensor<float, 2> x, router;
    tensor<float, 3> w1, w3, w2;
};

problem draw(index_t T, index_t D, index_t E, index_t F, index_t k, std::uint64_t which) {
    for (std::uint64_t attempt = 0; attempt < 1000; ++attempt) {
        auto x = normal(extents<2>{T, D}, which * 1000 + 2 * attempt);
        auto router = normal(extents<2>{E, D}, which * 1000 + 2 * attempt + 1);
        tensor<float, 2> logits({T, E});
        cpu::moe_router_logits(logits.view(), x.view(), router.view());
        if (margin(logits, k) >= 1e-3)
            return {x, router, normal(extents<3>{E, F, D}, which + 1, 0.5f), normal(extents<3>{E, F, D}, which + 2, 0.5f),
                    normal(extents<3>{E, D, F}, which + 3, 0.5f)};
    }
    FAIL("no router logits separated by 1e-3 in 1000 draws");
    return {};
}

void check_moe_backward(index_t T, index_t D, index_t E, index_t F, index_t k, const tinyllm::moe_dispatch_options& options,
                        bool extra, bool accumulate, std::uint64_t which) {
    const auto p = draw(T, D, E, F, k, which);
    const auto dout = normal(extents<2>{T, D}, which + 10);
    const auto dextra = normal(extents<2>{T, E}, which + 11, 0.3f);
    const auto r0 = normal(extents<2>{E, D}, which + 12);  // the gradients already there (accumulate)
    const auto w1_0 = normal(extents<3>{E, F, D}, which + 13), w3_0 = normal(extents<3>{E, F, D}, which + 14),
               w2_0 = normal(extents<3>{E, D, F}, which + 15);
    tensor<float, 2> dx({T, D}), drouter = r0;
    tensor<float, 3> dw1 = w1_0, dw3 = w3_0, dw2 = w2_0;
    cpu::moe_backward(dx.view(), drouter.view(), dw1.view(), dw3.view(), dw2.view(), dout.view(),
                      extra ? dextra.view() : tensor_view<const float, 2>{}, p.x.view(), p.router.view(), p.w1.view(),
                      p.w3.view(), p.w2.view(), k, options, accumulate);

    auto d_x = tc::to_device(p.x.values()), d_router = tc::to_device(p.router.values()),
         d_w1 = tc::to_device(p.w1.values()), d_w3 = tc::to_device(p.w3.values()), d_w2 = tc::to_device(p.w2.values()),
         d_dout = tc::to_device(dout.values()), d_extra = tc::to_device(dextra.values());
    tc::device_buffer<float> d_dx(dx.values().size());
    auto d_drouter = tc::to_device(r0.values()), d_dw1 = tc::to_device(w1_0.values()), d_dw3 = tc::to_device(w3_0.values()),
         d_dw2 = tc::to_device(w2_0.values());
    tc::moe_backward_workspace ws;
    tc::cublas_handle handle;
    std::vector<std::vector<float>> first;
    for (int run = 0; run < 2; ++run) {
        d_dx.poison();
        if (accumulate) {
            tc::copy_to_device(d_drouter, r0.values());
            tc::copy_to_device(d_dw1, w1_0.values());
            tc::copy_to_device(d_dw3, w3_0.values());
            tc::copy_to_device(d_dw2, w2_0.values());
        } else {
            d_drouter.poison();
            d_dw1.poison();
            d_dw3.poison();
            d_dw2.poison();
        }
        tc::moe_backward(d_dx.view(extents<2>{T, D}), d_drouter.view(extents<2>{E, D}), d_dw1.view(extents<3>{E, F, D}),
                         d_dw3.view(extents<3>{E, F, D}), d_dw2.view(extents<3>{E, D, F}), d_dout.view(extents<2>{T, D}),
                         extra ? tensor_view<const float, 2>(d_extra.view(extents<2>{T, E})) : tensor_view<const float, 2>{},
                         d_x.view(extents<2>{T, D}), d_router.view(extents<2>{E, D}), d_w1.view(extents<3>{E, F, D}),
                         d_w3.view(extents<3>{E, F, D}), d_w2.view(extents<3>{E, D, F}), k, options, ws, handle,
                         accumulate);
        std::vector<std::vector<float>> got = {tc::to_host(d_dx), tc::to_host(d_drouter), tc::to_host(d_dw1),
                                               tc::to_host(d_dw3), tc::to_host(d_dw2)};
        if (run == 0) {
            const std::string name = "moe_backward (T " + std::to_string(T) + ", D " + std::to_string(D) + ", E " +
                                     std::to_string(E) + ", F " + std::to_string(F) + ", k " + std::to_string(k) +
                                     ", capacity " + std::to_string(options.capacity) + ", block " +
                                     std::to_string(options.block) + (extra ? ", extra dlogits" : "") +
                                     (accumulate ? ", accumulate" : "") + ")";
            TINYLLM_REQUIRE_CLOSE(got[0], dx.values(), tol, name + ": dx");
            TINYLLM_REQUIRE_CLOSE(got[1], drouter.values(), tol, name + ": drouter");
            TINYLLM_REQUIRE_CLOSE(got[2], dw1.values(), tol, name + ": dw1");
            TINYLLM_REQUIRE_CLOSE(got[3], dw3.values(), tol, name + ": dw3");
            TINYLLM_REQUIRE_CLOSE(got[4], dw2.values(), tol, name + ": dw2");
            first = got;
        } else {
            for (std::size_t i = 0; i < got.size(); ++i) CHECK(bit_equal(got[i], first[i]));
        }
    }
}

}  // namespace

TEST_CASE("softmax_topk_gating_backward on the GPU matches the CPU", "[cuda][moe][backward]") {
    for (const auto& [T, E, k] : std::vector<std::tuple<index_t, index_t, index_t>>{{37, 8, 2}, {5, 64, 6}, {3, 3, 3}}) {
        for (bool renormalize : {true, false}) {
            const auto logits = normal(extents<2>{T, E}, 100 + static_cast<std::uint64_t>(E), 2.0f);
            const auto dweights = normal(extents<2>{T, k}, 200 + static_cast<std::uint64_t>(E));
            const auto before = normal(extents<2>{T, E}, 300 + static_cast<std::uint64_t>(E));
            for (bool accumulate : {false, true}) {
                tensor<float, 2> want = before;
                cpu::softmax_topk_gating_backward(want.view(), dweights.view(), logits.view(), renormalize, accumulate);
                auto d_logits = tc::to_device(logits.values()), d_dweights = tc::to_device(dweights.values());
                auto d_dlogits = tc::to_device(before.values());
                if (!accumulate) d_dlogits.poison();
                tc::softmax_topk_gating_backward(d_dlogits.view(extents<2>{T, E}), d_dweights.view(extents<2>{T, k}),
                                                 d_logits.view(extents<2>{T, E}), renormalize, accumulate);
                TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dlogits), want.values(), tolerance{1e-7, 1e-6, 1e-6},
                                      "softmax_topk_gating_backward (T " + std::to_string(T) + ", E " + std::to_string(E) +
                                          ", k " + std::to_string(k) + (renormalize ? ", renormalized" : ", plain") +
                                          (accumulate ? ", accumulate" : "") + ")");
            }
        }
    }
}

TEST_CASE("moe_backward on the GPU matches the CPU, run after run", "[cuda][moe][backward]") {
    check_moe_backward(24, 16, 4, 12, 2, {}, false, false, 400);
    check_moe_backward(24, 16, 4, 12, 2, {}, true, true, 410);
    check_moe_backward(40, 8, 8, 6, 2, {.capacity = 6, .block = 4}, true, false, 420);  // slots dropped, rows padded
    check_moe_backward(9, 5, 6, 3, 1, {}, false, false, 430);                            // k = 1: dlogits 0
    check_moe_backward(3, 4, 8, 4, 2, {}, false, false, 440);                            // experts without tokens
}

TEST_CASE("moe_backward on the GPU skips gradients that are not wanted", "[cuda][moe][backward]") {
    const index_t T = 10, D = 6, E = 4, F = 5, k = 2;
    const auto p = draw(T, D, E, F, k, 500);
    const auto dout = normal(extents<2>{T, D}, 501);
    tensor<float, 3> dw2({E, D, F});
    cpu::moe_backward({}, {}, {}, {}, dw2.view(), dout.view(), {}, p.x.view(), p.router.view(), p.w1.view(),
                      p.w3.view(), p.w2.view(), k);
    auto d_x = tc::to_device(p.x.values()), d_router = tc::to_device(p.router.values()),
         d_w1 = tc::to_device(p.w1.values()), d_w3 = tc::to_device(p.w3.values()), d_w2 = tc::to_device(p.w2.values()),
         d_dout = tc::to_device(dout.values());
    tc::device_buffer<float> d_dw2(dw2.values().size());
    d_dw2.poison();
    tc::moe_backward_workspace ws;
    tc::cublas_handle handle;
    tc::moe_backward({}, {}, {}, {}, d_dw2.view(extents<3>{E, D, F}), d_dout.view(extents<2>{T, D}), {},
                     d_x.view(extents<2>{T, D}), d_router.view(extents<2>{E, D}), d_w1.view(extents<3>{E, F, D}),
                     d_w3.view(extents<3>{E, F, D}), d_w2.view(extents<3>{E, D, F}), k, {}, ws, handle);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dw2), dw2.values(), tol, "moe_backward dw2 alone");
    tc::device_buffer<float> wrong(static_cast<std::size_t>(E * D * F));
    CHECK_THROWS_WITH(tc::moe_backward({}, {}, wrong.view(extents<3>{E, D, F}), {}, {}, d_dout.view(extents<2>{T, D}), {},
                                       d_x.view(extents<2>{T, D}), d_router.view(extents<2>{E, D}),
                                       d_w1.view(extents<3>{E, F, D}), d_w3.view(extents<3>{E, F, D}),
                                       d_w2.view(extents<3>{E, D, F}), k, {}, ws, handle),
                      tinyllm_test::contains("cuda::moe_backward: dw1"));
}
