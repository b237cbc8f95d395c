// tests/cuda/test_embedding_backward.cu — the CUDA embedding backward and learned
// positions backward (embedding.cuh, positional.cuh) against the CPU references
// (embedding.hpp, positional.hpp; those are checked against finite differences
// in tests/test_embedding_backward.cpp): float and bfloat16 tables, one and two
// radix passes (V < 4096 and V = 50257), batches where one id takes most tokens,
// scale, accumulate, ids of any rank, and the errors for bad ids.
//
// The GPU sums each table row's tokens in the CPU's order (token order), in
// double, and rounds once as the CPU does, so the results are compared bit for
// bit (the report still prints max-abs and rel-L2 errors). Outputs are poisoned
// (NaN) first; NaN never passes. Determinism: every case runs twice and the two
// results are compared with memcmp; running under TINYLLM_SIM_SCHEDULE=random:SEED
// must give the same bits.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/embedding.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor_view;
using tinyllm_test::as_floats;
using tinyllm_test::tolerance;

namespace {

std::uint64_t seed_for(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

template <class T>
std::vector<T> normal_values(std::size_t n, std::uint64_t which) {
    std::vector<float> v(n);
    cpu::fill_normal(tensor_view<float, 1>(v.data(), {static_cast<index_t>(n)}), seed_for(which), 0.0f, 1.0f);
    return tinyllm_test::as_type<T>(v);
}

// Ids in [0, V); with probability `repeat` the id `frequent`.
template <class Id>
std::vector<Id> random_ids(std::size_t n, index_t V, std::uint64_t which, double repeat, Id frequent) {
    std::mt19937_64 rng(seed_for(which));
    std::uniform_int_distribution<long long> pick(0, V - 1);
    std::bernoulli_distribution often(repeat);
    std::vector<Id> ids(n);
    for (Id& id : ids) id = often(rng) ? frequent : static_cast<Id>(pick(rng));
    return ids;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T, class Id>
void check_embedding_backward(index_t B, index_t Tn, index_t V, index_t D, double repeat, float scale, bool accumulate,
                              std::uint64_t which) {
    const auto ids = random_ids<Id>(static_cast<std::size_t>(B * Tn), V, which, repeat, static_cast<Id>(V / 3));
    const auto dout = normal_values<T>(static_cast<std::size_t>(B * Tn * D), which + 1);
    const auto dtable0 = normal_values<T>(static_cast<std::size_t>(V * D), which + 2);
    auto want = dtable0;
    cpu::embedding_backward(tensor_view<T, 2>(want.data(), {V, D}), tensor_view<const Id, 2>(ids.data(), {B, Tn}),
                            tensor_view<const T, 3>(dout.data(), {B, Tn, D}), scale, accumulate);

    auto d_ids = tc::to_device(ids);
    auto d_dout = tc::to_device(dout);
    tc::device_buffer<T> d_dtable(dtable0.size());
    tc::embedding_backward_workspace ws(B * Tn, V);
    std::vector<T> first;
    for (int run = 0; run < 2; ++run) {
        if (accumulate) tc::copy_to_device(d_dtable, std::span<const T>(dtable0));
        else d_dtable.poison();
        tc::embedding_backward<T, Id>(d_dtable.view(extents<2>{V, D}), d_ids.view(extents<2>{B, Tn}),
                                      d_dout.view(extents<3>{B, Tn, D}), scale, accumulate, ws);
        const auto got = tc::to_host(d_dtable);
        if (run == 0) {
            const std::string name = "embedding_backward " + std::string(tinyllm::dtype_name<T>()) + " (B " +
                                     std::to_string(B) + ", T " + std::to_string(Tn) + ", V " + std::to_string(V) +
                                     ", D " + std::to_string(D) + ", " + std::to_string(ws.passes()) + " radix pass" +
                                     (ws.passes() > 1 ? "es" : "") + ")" + (accumulate ? " accumulate" : "");
            TINYLLM_REQUIRE_CLOSE(as_floats(got), as_floats(want), tolerance{0, 0, 0}, name);
            CHECK(bit_equal(got, want));
            first = got;
        } else {
            CHECK(bit_equal(got, first));  // the same bits on every run
        }
    }
}

}  // namespace

TEST_CASE("embedding_backward matches the CPU bit for bit, run after run", "[cuda][embedding][backward]") {
    // One radix pass (V < 4096), most tokens on one id; two passes (GPT-2's V).
    check_embedding_backward<float, std::int32_t>(3, 50, 37, 24, 0.5, 1.0f, false, 10);
    check_embedding_backward<bfloat16, std::int32_t>(3, 50, 37, 24, 0.5, 1.0f, false, 20);
    check_embedding_backward<float, std::int64_t>(2, 300, 5000, 40, 0.3, 2.5f, false, 30);
    check_embedding_backward<float, std::int32_t>(4, 40, 50257, 8, 0.2, 1.0f, true, 40);
    check_embedding_backward<bfloat16, std::int32_t>(1, 7, 50257, 8, 0.0, 1.0f, false, 50);
    check_embedding_backward<float, std::int32_t>(2, 600, 9, 33, 0.9, 1.0f, true, 60);  // 1000 repeats of one id
    check_embedding_backward<tinyllm::float16, std::int32_t>(2, 16, 100, 16, 0.4, 0.5f, false, 70);
    check_embedding_backward<float, std::int32_t>(1, 1, 1, 3, 0.0, 1.0f, false, 80);
}

TEST_CASE("embedding_backward takes ids of any rank, a temporary workspace and no tokens",
          "[cuda][embedding][backward]") {
    const index_t V = 11, D = 6;
    const auto ids = random_ids<std::int32_t>(24, V, 90, 0.3, 2);
    const auto dout = normal_values<float>(static_cast<std::size_t>(24 * D), 91);
    std::vector<float> want(static_cast<std::size_t>(V * D));
    cpu::embedding_backward(tensor_view<float, 2>(want.data(), {V, D}),
                            tensor_view<const std::int32_t, 3>(ids.data(), {2, 3, 4}),
                            tensor_view<const float, 4>(dout.data(), {2, 3, 4, D}));
    auto d_ids = tc::to_device(ids);
    auto d_dout = tc::to_device(dout);
    tc::device_buffer<float> d_dtable(want.size());
    d_dtable.poison();
    tc::embedding_backward(d_dtable.view(extents<2>{V, D}), d_ids.view(extents<3>{2, 3, 4}),
                           d_dout.view(extents<4>{2, 3, 4, D}));
    CHECK(bit_equal(tc::to_host(d_dtable), want));

    // No tokens: every row becomes 0 (or stays, accumulating).
    tc::embedding_backward_workspace ws(0, V);
    tc::embedding_backward<float, std::int32_t>(d_dtable.view(extents<2>{V, D}),
                                                tensor_view<const std::int32_t, 2>(d_ids.data(), {1, 0}),
                                                tensor_view<const float, 3>(d_dout.data(), {1, 0, D}), 1.0f, true, ws);
    CHECK(bit_equal(tc::to_host(d_dtable), want));
    tc::embedding_backward<float, std::int32_t>(d_dtable.view(extents<2>{V, D}),
                                                tensor_view<const std::int32_t, 2>(d_ids.data(), {1, 0}),
                                                tensor_view<const float, 3>(d_dout.data(), {1, 0, D}), 1.0f, false, ws);
    CHECK(tc::to_host(d_dtable) == std::vector<float>(want.size(), 0.0f));
}

TEST_CASE("embedding_backward rejects bad ids before writing, or skips them unchecked",
          "[cuda][embedding][backward][errors]") {
    const index_t V = 8, D = 4, B = 2, Tn = 5;
    auto ids = random_ids<std::int64_t>(static_cast<std::size_t>(B * Tn), V, 100, 0.0, 0);
    ids[7] = V;
    ids[9] = -1;
    const auto dout = normal_values<float>(static_cast<std::size_t>(B * Tn * D), 101);
    const std::vector<float> before(static_cast<std::size_t>(V * D), 3.0f);
    auto d_ids = tc::to_device(ids);
    auto d_dout = tc::to_device(dout);
    auto d_dtable = tc::to_device(before);
    tc::embedding_backward_workspace ws(B * Tn, V);
    CHECK_THROWS_WITH((tc::embedding_backward<float, std::int64_t>(d_dtable.view(extents<2>{V, D}),
                                                                   d_ids.view(extents<2>{B, Tn}),
                                                                   d_dout.view(extents<3>{B, Tn, D}), 1.0f, false, ws)),
                      tinyllm_test::contains("embedding_backward: ids(1, 2) = 8 is outside the vocabulary [0, 8)"));
    CHECK(tc::to_host(d_dtable) == before);  // nothing was written

    // Unchecked: the bad tokens add to no row; the others as the CPU without them.
    auto kept = ids;
    auto kept_dout = dout;
    for (std::size_t i : {std::size_t{7}, std::size_t{9}}) {
        kept[i] = 0;
        for (index_t d = 0; d < D; ++d) kept_dout[i * D + static_cast<std::size_t>(d)] = 0.0f;  // adds +0 to row 0
    }
    std::vector<float> want(before.size());
    cpu::embedding_backward(tensor_view<float, 2>(want.data(), {V, D}),
                            tensor_view<const std::int64_t, 2>(kept.data(), {B, Tn}),
                            tensor_view<const float, 3>(kept_dout.data(), {B, Tn, D}));
    tc::embedding_backward<float, std::int64_t>(d_dtable.view(extents<2>{V, D}), d_ids.view(extents<2>{B, Tn}),
                                                d_dout.view(extents<3>{B, Tn, D}), 1.0f, false, ws,
                                                /*check_ids=*/false);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dtable), want, tolerance{0, 0, 0}, "embedding_backward unchecked bad ids");

    tc::embedding_backward_workspace small(B * Tn - 1, V);
    CHECK_THROWS_WITH((tc::embedding_backward<float, std::int64_t>(d_dtable.view(extents<2>{V, D}),
                                                                   d_ids.view(extents<2>{B, Tn}),
                                                                   d_dout.view(extents<3>{B, Tn, D}), 1.0f, false,
                                                                   small)),
                      tinyllm_test::contains("the workspace was made for 9 tokens and V = 8"));
    // dtable over dout (the CPU's check, before any launch).
    CHECK_THROWS_WITH((tc::embedding_backward<float, std::int64_t>(
                          tinyllm::tensor_view<float, 2>(d_dout.data(), {V, D}), d_ids.view(extents<2>{B, Tn}),
                          d_dout.view(extents<3>{B, Tn, D}), 1.0f, false, ws)),
                      tinyllm_test::contains("embedding_backward: dtable must not share memory with dout"));
}

TEST_CASE("learned_positions_backward matches the CPU bit for bit", "[cuda][positional][backward]") {
    const index_t P = 64, D = 12, B = 3, Tn = 20;
    std::vector<std::int64_t> positions(static_cast<std::size_t>(B * Tn));
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < Tn; ++t) positions[static_cast<std::size_t>(b * Tn + t)] = b == 1 ? 10 + t : t;
    const auto dout = normal_values<float>(static_cast<std::size_t>(B * Tn * D), 200);
    const auto dtable0 = normal_values<float>(static_cast<std::size_t>(P * D), 201);
    for (bool accumulate : {false, true}) {
        auto want = dtable0;
        cpu::learned_positions_backward(tensor_view<float, 2>(want.data(), {P, D}),
                                        tensor_view<const float, 3>(dout.data(), {B, Tn, D}),
                                        tensor_view<const std::int64_t, 2>(positions.data(), {B, Tn}), accumulate);
        auto d_pos = tc::to_device(positions);
        auto d_dout = tc::to_device(dout);
        auto d_dtable = tc::to_device(dtable0);
        if (!accumulate) d_dtable.poison();
        tc::learned_positions_backward<float>(d_dtable.view(extents<2>{P, D}), d_dout.view(extents<3>{B, Tn, D}),
                                              d_pos.view(extents<2>{B, Tn}), accumulate);
        TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dtable), want, tolerance{0, 0, 0},
                              std::string("learned_positions_backward") + (accumulate ? " accumulate" : ""));
    }
    positions[5] = P;
    auto d_pos = tc::to_device(positions);
    auto d_dout = tc::to_device(dout);
    tc::device_buffer<float> d_dtable(static_cast<std::size_t>(P * D));
    CHECK_THROWS_WITH(tc::learned_positions_backward<float>(d_dtable.view(extents<2>{P, D}),
                                                            d_dout.view(extents<3>{B, Tn, D}),
                                                            d_pos.view(extents<2>{B, Tn})),
                      tinyllm_test::contains("learned_positions_backward: positions(0, 5) = 64 is outside the "
                                             "table's [0, 64)"));
}
