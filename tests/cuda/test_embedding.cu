// tests/cuda/test_embedding.cu — the CUDA token embedding (v1 naive, v2
// vectorized) against the CPU reference: float, bfloat16 and float16 tables,
// widths that do and do not allow 16-byte vectors, scaling, strided ids, and
// the error for an id outside the vocabulary.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/embedding.hpp>

#include <cstdint>
#include <random>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::index_t;

namespace {

template <class T>
void check_embedding(index_t B, index_t T_, index_t D, index_t V, float scale, tc::embedding_version version) {
    INFO("B=" << B << " T=" << T_ << " D=" << D << " V=" << V << " scale=" << scale << " version="
              << (version == tc::embedding_version::naive ? "naive" : "vectorized") << " sizeof(T)=" << sizeof(T));
    const auto values = tinyllm_test::random_floats(V * D, 1, -2.0f, 2.0f);
    std::vector<T> table(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) table[i] = tinyllm::from_float<T>(values[i]);
    std::mt19937 rng(tinyllm_test::test_seed());
    std::vector<std::int32_t> ids(B * T_);
    for (auto& id : ids) id = static_cast<std::int32_t>(rng() % V);
    std::vector<T> want(B * T_ * D);
    tinyllm::cpu::embedding(tinyllm::tensor_view<T, 3>(want.data(), {B, T_, D}),
                            tinyllm::tensor_view<const std::int32_t, 2>(ids.data(), {B, T_}),
                            tinyllm::tensor_view<const T, 2>(table.data(), {V, D}), scale);
    auto d_table = tc::to_device(table);
    auto d_ids = tc::to_device(ids);
    tc::device_buffer<T> d_out(want.size());
    d_out.poison();
    tc::embedding(d_out.view(tinyllm::extents<3>{B, T_, D}),
                  tinyllm::tensor_view<const std::int32_t, 2>(d_ids.data(), {B, T_}),
                  tinyllm::tensor_view<const T, 2>(d_table.data(), {V, D}), scale, version);
    const auto got = tc::to_host(d_out);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const float g = tinyllm::to_float(got[i]), w = tinyllm::to_float(want[i]);
        wrong += !(g == w);  // a copy (times a scale, rounded the same way): bit-exact, NaN never equal
    }
    CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("CUDA embedding matches the CPU reference bit for bit", "[cuda][embedding]") {
    for (auto version : {tc::embedding_version::naive, tc::embedding_version::vectorized}) {
        check_embedding<float>(2, 37, 768, 1000, 1.0f, version);
        check_embedding<float>(3, 5, 13, 50, 1.0f, version);  // D*4 not a multiple of 16: fallback path
        check_embedding<float>(1, 64, 256, 50257, 16.0f, version);
        check_embedding<tinyllm::bfloat16>(2, 33, 512, 3000, 1.0f, version);
        check_embedding<tinyllm::bfloat16>(2, 9, 72, 300, 8.4852814f, version);
        check_embedding<tinyllm::float16>(4, 17, 128, 777, 1.0f, version);
        check_embedding<tinyllm::float16>(1, 1, 6, 10, 0.5f, version);
    }
}

TEST_CASE("CUDA embedding reads strided ids and rejects ids outside the vocabulary", "[cuda][embedding]") {
    const index_t V = 4, D = 4;
    std::vector<float> table(V * D);
    for (std::size_t i = 0; i < table.size(); ++i) table[i] = float(i);
    auto d_table = tc::to_device(table);
    const std::vector<std::int64_t> ids_tb{1, 2, 3, 0};  // stored (T=2, B=2), read transposed as (B, T)
    auto d_ids = tc::to_device(ids_tb);
    tc::device_buffer<float> d_out(2 * 2 * D);
    const auto ids = tinyllm::tensor_view<const std::int64_t, 2>(d_ids.data(), {2, 2}).transpose(0, 1);
    tc::embedding(d_out.view(tinyllm::extents<3>{2, 2, D}), ids, tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D}));
    const auto out = tc::to_host(d_out);
    const std::vector<std::int64_t> order{1, 3, 2, 0};
    for (int r = 0; r < 4; ++r)
        for (int d = 0; d < D; ++d) CHECK(out[r * D + d] == float(order[r] * D + d));

    const std::vector<std::int64_t> bad{0, 1, 9, 2};
    auto d_bad = tc::to_device(bad);
    for (auto version : {tc::embedding_version::naive, tc::embedding_version::vectorized})
        CHECK_THROWS_WITH(tc::embedding(d_out.view(tinyllm::extents<3>{1, 4, D}),
                                        tinyllm::tensor_view<const std::int64_t, 2>(d_bad.data(), {1, 4}),
                                        tinyllm::tensor_view<const float, 2>(d_table.data(), {V, D}), 1.0f, version),
                          tinyllm_test::contains("ids(0, 2) = 9 is outside the vocabulary [0, 4)"));
}
