// CUDA tests for RoPE's backward, tinyllm::cuda::apply_rope_backward (and its
// cached spelling), against cpu::apply_rope_backward: both pairings, partial
// rotary_dim, every scaling, position ids (int32, int64) and runs from an
// offset, odd sizes (scalar path) and vector-friendly ones (16-byte path), and
// strided views (q inside a stacked qkv row, as the model's backward uses it).
//
// The operation is in place, so the output cannot be poisoned beforehand:
// each case fills dx fresh at random, copies it to the device, rotates it there
// and on the CPU, and compares max-abs and rel-L2 (a NaN never passes). The
// rotation's math is the CPU's own TINYLLM_HOST_DEVICE code, so in float the
// two agree to a few ulp (the device's sincosf vs the host's); bfloat16 is
// compared against the CPU applied to the same rounded input.
//
// A property check closes the loop: backward(forward(x)) == x, the rotation by
// -angle undoing the rotation by +angle (R^T R = I) up to rounding.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/positional.hpp>

#include <cstdint>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::index_t;
using tinyllm::rope_config;
using tinyllm::rope_pairing;
using tinyllm::rope_scaling;
using tinyllm_test::tolerance;

namespace {

std::uint64_t next_input = 0;

rope_config make_config(rope_pairing pairing, rope_scaling scaling, index_t rotary_dim) {
    rope_config c;
    c.pairing = pairing;
    c.scaling = scaling;
    c.rotary_dim = rotary_dim;
    c.theta = 10000.0;
    if (scaling == rope_scaling::linear) c.factor = 4.0;
    if (scaling == rope_scaling::ntk) c.factor = 2.0;
    if (scaling == rope_scaling::llama3) {
        c.factor = 8.0;
        c.low_freq_factor = 1.0;
        c.high_freq_factor = 4.0;
        c.original_max_position_embeddings = 64.0;  // small, so that every regime of pairs occurs
    }
    return c;
}

// Random position ids in [0, 5000).
template <class P>
std::vector<P> random_positions(std::size_t n) {
    const auto u = tinyllm_test::random_floats(n, next_input++, 0.0f, 4999.0f);
    std::vector<P> p(n);
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<P>(u[i]);
    return p;
}

// One case in float: dx (B, T, H, D) contiguous; positions as ids (P) or a run from `offset`.
template <class P>
void check_float(index_t B, index_t T, index_t H, index_t D, const rope_config& cfg, bool with_ids, index_t offset,
                 bool cached = false) {
    const std::size_t n = static_cast<std::size_t>(B * T * H * D);
    const std::vector<float> dx = tinyllm_test::random_floats(n, next_input++);
    std::vector<P> pos = with_ids ? random_positions<P>(static_cast<std::size_t>(B * T)) : std::vector<P>{};

    std::vector<float> expected = dx;
    const tinyllm::tensor_view<float, 4> ev(expected.data(), {B, T, H, D});
    if (with_ids) tinyllm::cpu::apply_rope_backward(ev, tinyllm::tensor_view<const P, 2>(pos.data(), {B, T}), cfg);
    else tinyllm::cpu::apply_rope_backward(ev, cfg, offset);

    tc::device_buffer<float> d = tc::to_device(dx);
    const tinyllm::tensor_view<float, 4> dv(d.data(), {B, T, H, D});
    if (with_ids) {
        tc::device_buffer<P> dpos = tc::to_device(pos);
        tc::apply_rope_backward(dv, tinyllm::tensor_view<const P, 2>(dpos.data(), {B, T}), cfg);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    } else if (cached) {
        const tc::rope_cache cache = tc::make_rope_cache(tinyllm::resolve_rope(cfg, D), 256);
        tc::apply_rope_backward_cached(dv, cache, offset);
    } else {
        tc::apply_rope_backward(dv, cfg, offset);
    }
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = tc::to_host(d);
    TINYLLM_REQUIRE_CLOSE(got, expected, tolerance{1e-5, 1e-5, 1e-6}, "apply_rope_backward");
}

}  // namespace

TEST_CASE("cuda apply_rope_backward matches the CPU: pairings, scalings, partial rotary", "[cuda][rope][backward]") {
    for (const rope_pairing pairing : {rope_pairing::rotate_half, rope_pairing::interleaved})
        for (const rope_scaling scaling :
             {rope_scaling::none, rope_scaling::linear, rope_scaling::ntk, rope_scaling::llama3}) {
            INFO("pairing " << tinyllm::to_string(pairing) << ", scaling " << tinyllm::to_string(scaling));
            check_float<std::int32_t>(2, 5, 3, 64, make_config(pairing, scaling, 0), false, 0);        // vectorized
            check_float<std::int32_t>(1, 3, 2, 10, make_config(pairing, scaling, 6), false, 7);        // scalar, partial
            check_float<std::int32_t>(2, 4, 3, 32, make_config(pairing, scaling, 16), true, 0);        // ids, partial
            check_float<std::int64_t>(1, 7, 1, 6, make_config(pairing, scaling, 0), true, 0);          // int64 ids
        }
}

TEST_CASE("cuda apply_rope_backward_cached matches the CPU, inside and beyond the table", "[cuda][rope][backward]") {
    // 256 cached positions: offset 250 runs 250 .. 257, past the table's end.
    check_float<std::int32_t>(2, 8, 2, 16, make_config(rope_pairing::rotate_half, rope_scaling::none, 0), false, 250,
                              true);
    check_float<std::int32_t>(1, 4, 3, 12, make_config(rope_pairing::interleaved, rope_scaling::linear, 8), false, 3,
                              true);
}

TEST_CASE("cuda apply_rope_backward on a strided view: q and k inside stacked qkv rows", "[cuda][rope][backward]") {
    const index_t B = 2, T = 5, Hq = 4, Hkv = 2, Dh = 8, width = (Hq + 2 * Hkv) * Dh;
    const rope_config cfg = make_config(rope_pairing::rotate_half, rope_scaling::none, 0);
    const std::vector<float> qkv = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * width), next_input++);
    std::vector<float> expected = qkv;
    const tinyllm::extents<4> strides{T * width, width, Dh, 1};
    tinyllm::cpu::apply_rope_backward(tinyllm::tensor_view<float, 4>(expected.data(), {B, T, Hq, Dh}, strides), cfg);
    tinyllm::cpu::apply_rope_backward(
        tinyllm::tensor_view<float, 4>(expected.data() + Hq * Dh, {B, T, Hkv, Dh}, strides), cfg);
    tc::device_buffer<float> d = tc::to_device(qkv);
    tc::apply_rope_backward(tinyllm::tensor_view<float, 4>(d.data(), {B, T, Hq, Dh}, strides), cfg);
    tc::apply_rope_backward(tinyllm::tensor_view<float, 4>(d.data() + Hq * Dh, {B, T, Hkv, Dh}, strides), cfg);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = tc::to_host(d);
    // v's columns are untouched on both sides.
    TINYLLM_REQUIRE_CLOSE(got, expected, tolerance{1e-5, 1e-5, 1e-6}, "apply_rope_backward in qkv");
}

TEST_CASE("cuda apply_rope_backward refuses a dx whose heads share addresses, and dx over the positions",
          "[cuda][rope][backward][errors]") {
    const index_t B = 1, T = 3, H = 2, D = 8;
    const rope_config cfg = make_config(rope_pairing::rotate_half, rope_scaling::none, 0);
    tc::device_buffer<float> d(static_cast<std::size_t>(B * T * H * D));
    const tinyllm::tensor_view<float, 4> one_head(d.data(), {B, T, H, D}, {T * D, D, 0, 1});
    CHECK_THROWS_WITH(
        tc::apply_rope_backward(one_head, cfg),
        tinyllm_test::contains("apply_rope_backward: dx has shape (1, 3, 2, 8) and strides (24, 8, 0, 1), "
                               "so two of its elements share an address"));
    CHECK_THROWS_WITH(tc::apply_rope_backward_cached(one_head, tc::make_rope_cache(tinyllm::resolve_rope(cfg, D), 8)),
                      tinyllm_test::contains("apply_rope_backward_cached: dx has shape (1, 3, 2, 8)"));
    tc::device_buffer<std::int32_t> shared(static_cast<std::size_t>(B * T * H * D));
    const tinyllm::tensor_view<float, 4> over(reinterpret_cast<float*>(shared.data()), {B, T, H, D});
    CHECK_THROWS_WITH(
        tc::apply_rope_backward(over, tinyllm::tensor_view<const std::int32_t, 2>(shared.data(), {B, T}), cfg),
        tinyllm_test::contains("apply_rope_backward: dx must not share memory with positions"));
}

TEST_CASE("cuda apply_rope_backward undoes apply_rope (R^T R = I)", "[cuda][rope][backward]") {
    const index_t B = 2, T = 6, H = 3, D = 32;
    for (const rope_pairing pairing : {rope_pairing::rotate_half, rope_pairing::interleaved}) {
        const rope_config cfg = make_config(pairing, rope_scaling::llama3, 24);
        const std::vector<float> x = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * H * D), next_input++);
        tc::device_buffer<float> d = tc::to_device(x);
        const tinyllm::tensor_view<float, 4> dv(d.data(), {B, T, H, D});
        tc::apply_rope(dv, cfg, 1000);
        tc::apply_rope_backward(dv, cfg, 1000);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        TINYLLM_REQUIRE_CLOSE(tc::to_host(d), x, tolerance{1e-6, 1e-6, 1e-6}, "backward(forward(x))");
    }
}

TEST_CASE("cuda apply_rope_backward in bfloat16 matches the CPU on the rounded input", "[cuda][rope][backward]") {
    const index_t B = 1, T = 4, H = 2, D = 16;
    const rope_config cfg = make_config(rope_pairing::rotate_half, rope_scaling::none, 0);
    const std::vector<float> x = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * H * D), next_input++);
    std::vector<tinyllm::bfloat16> xb(x.size());
    std::vector<float> expected(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        xb[i] = tinyllm::from_float<tinyllm::bfloat16>(x[i]);
        expected[i] = tinyllm::to_float(xb[i]);
    }
    tinyllm::cpu::apply_rope_backward(tinyllm::tensor_view<float, 4>(expected.data(), {B, T, H, D}), cfg, 5);
    tc::device_buffer<tinyllm::bfloat16> d = tc::to_device(xb);
    tc::apply_rope_backward(tinyllm::tensor_view<tinyllm::bfloat16, 4>(d.data(), {B, T, H, D}), cfg, 5);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<tinyllm::bfloat16> got = tc::to_host(d);
    TINYLLM_REQUIRE_CLOSE(got, expected, tolerance{1e-2, 1e-2, 1e-2}, "apply_rope_backward bf16");
}
