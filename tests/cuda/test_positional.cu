// CUDA tests for <tinyllm/cuda/positional.cuh>: RoPE v1 (on the fly), v2
// (cached), v3 (with the KV-cache write, bit for bit against v2 and a copy) and
// v4 (in the QKV GEMV's epilogue, against the projection followed by v3),
// the cos/sin cache, sinusoidal and learned additions — each against
// the CPU reference in <tinyllm/positional.hpp>, for float, bfloat16 and
// float16, int32 and int64 positions, odd sizes (D not a multiple of the
// vector width, T = 1, odd H), both pairings, partial rotary and every scaling.
// The operations work in place: each tensor sits between NaN guard bands that
// must survive (see `guarded`), and is reloaded before every kernel.
//
// Tolerances (the reference is the CPU function applied in float to the same
// rounded inputs; the kernel's math is float too, so what differs is sincosf vs
// the host's sinf/cosf, a few ulp, and the final rounding to the storage type):
//   float     abs 1e-5 + rel 1e-5 per element
//   bfloat16  abs 1e-2 + rel 1e-2 (half an ulp of bf16 is 2^-9 relative)
//   float16   abs 2e-3 + rel 2e-3 (half an ulp of fp16 is 2^-12 relative)
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/positional.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::index_t;
using tinyllm::rope_config;
using tinyllm::rope_pairing;
using tinyllm::rope_scaling;
using tinyllm_test::as_floats;
using tinyllm_test::as_type;
using tinyllm_test::tolerance;

namespace {

template <class T>
tolerance tolerance_for() {
    if constexpr (std::is_same_v<T, float>) return {1e-5, 1e-5, 1e-5};
    else if constexpr (std::is_same_v<T, tinyllm::bfloat16>) return {1e-2, 1e-2, 1e-2};
    else return {2e-3, 2e-3, 2e-3};
}

// Random positions in [0, max_pos): fresh each run.
template <class P>
std::vector<P> random_positions(std::size_t n, std::uint64_t which, index_t max_pos) {
    const auto u = tinyllm_test::random_floats(n, which, 0.0f, 1.0f);
    std::vector<P> p(n);
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<P>(std::min<index_t>(max_pos - 1, static_cast<index_t>(u[i] * max_pos)));
    return p;
}

// The kernels work in place, so their output cannot be poisoned beforehand.
// Instead the tensor sits between two NaN guard bands inside a larger buffer:
// the whole buffer is poisoned, the input copied into the middle, and after the
// kernel the guards must still be NaN (nothing written out of bounds) while the
// middle is compared with the reference.
template <class T>
struct guarded {
    static constexpr std::size_t guard = 64;  // elements; keeps the middle 16-byte aligned
    tc::device_buffer<T> buffer;
    std::size_t n;
    explicit guarded(std::size_t count) : buffer(count + 2 * guard), n(count) {}
    T* data() { return buffer.data() + guard; }
    void load(const std::vector<T>& v) {
        REQUIRE(v.size() == n);
        buffer.poison();
        TINYLLM_CUDA_CHECK(cudaMemcpy(data(), v.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> result() {
        const auto all = tc::to_host(buffer);
        std::size_t overwritten = 0;
        for (std::size_t i = 0; i < guard; ++i) {
            overwritten += !std::isnan(tinyllm::to_float(all[i]));
            overwritten += !std::isnan(tinyllm::to_float(all[guard + n + i]));
        }
        INFO("elements written outside the tensor");
        CHECK(overwritten == 0);
        return std::vector<T>(all.begin() + static_cast<std::ptrdiff_t>(guard),
                              all.begin() + static_cast<std::ptrdiff_t>(guard + n));
    }
};

struct rope_case {
    index_t B, T, H, D;
    rope_config cfg;
    index_t max_pos;  // positions drawn from [0, max_pos)
    std::string name;
};

std::vector<rope_case> rope_cases() {
    std::vector<rope_case> cases;
    for (auto pairing : {rope_pairing::rotate_half, rope_pairing::interleaved}) {
        const std::string p = std::string(tinyllm::to_string(pairing));
        // Llama-like: D = 128, full rotary (vectorized path).
        cases.push_back({2, 33, 4, 128, {.rotary_dim = 128, .theta = 10000.0, .pairing = pairing}, 4096, p + " D128"});
        // Decode: T = 1, odd H.
        cases.push_back({3, 1, 5, 64, {.rotary_dim = 64, .theta = 500000.0, .pairing = pairing}, 100000, p + " T1 H5"});
        // D not a multiple of 8, partial rotary (scalar path).
        cases.push_back({1, 7, 3, 10, {.rotary_dim = 6, .theta = 10000.0, .pairing = pairing}, 50, p + " D10 r6"});
        // Partial rotary with a vectorizable rotary part (GPT-NeoX: 25% of 128 = 32; GPT-J: 64 of 256).
        cases.push_back({2, 9, 3, 128, {.rotary_dim = 32, .theta = 10000.0, .pairing = pairing}, 2048, p + " D128 r32"});
        // Scalings.
        cases.push_back({1, 17, 2, 64,
                         {.rotary_dim = 64, .theta = 10000.0, .pairing = pairing, .scaling = rope_scaling::linear,
                          .factor = 4.0},
                         8192, p + " linear"});
        cases.push_back({1, 17, 2, 64,
                         {.rotary_dim = 64, .theta = 10000.0, .pairing = pairing, .scaling = rope_scaling::ntk,
                          .factor = 4.0},
                         8192, p + " ntk"});
        cases.push_back({1, 17, 2, 128,
                         {.rotary_dim = 128, .theta = 500000.0, .pairing = pairing, .scaling = rope_scaling::llama3,
                          .factor = 8.0, .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                          .original_max_position_embeddings = 8192},
                         32768, p + " llama3"});
    }
    return cases;
}

template <class T, class P>
void check_rope_case(const rope_case& c, std::uint64_t which) {
    const std::size_t n = static_cast<std::size_t>(c.B * c.T * c.H * c.D);
    const auto x_in = as_type<T>(tinyllm_test::random_floats(n, which, -2.0f, 2.0f));
    const auto positions = random_positions<P>(static_cast<std::size_t>(c.B * c.T), which + 1000, c.max_pos);
    const tinyllm::extents<4> shape{c.B, c.T, c.H, c.D};
    const tinyllm::extents<2> pshape{c.B, c.T};

    // Reference: the CPU function on the same (rounded) inputs, in float.
    std::vector<float> want = as_floats(x_in);
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(want.data(), shape),
                             tinyllm::tensor_view<const P, 2>(positions.data(), pshape), c.cfg);

    auto d_pos = tc::to_device(positions);
    const auto pos_view = d_pos.view(pshape);
    guarded<T> x(n);
    const tinyllm::tensor_view<T, 4> xv(x.data(), shape);
    const std::string what = c.name + " " + std::string(tinyllm::dtype_name<T>()) + (sizeof(P) == 4 ? " int32" : " int64");

    x.load(x_in);
    tc::apply_rope_on_the_fly(xv, pos_view, c.cfg);
    TINYLLM_REQUIRE_CLOSE(x.result(), want, tolerance_for<T>(), "v1 on_the_fly " + what);

    // v2 with a cache covering all positions, then with one too small (fallback).
    for (index_t rows : {c.max_pos, std::max<index_t>(1, c.max_pos / 3)}) {
        const auto cache = tc::make_rope_cache(c.cfg, rows);
        x.load(x_in);
        tc::apply_rope_cached(xv, pos_view, cache);
        TINYLLM_REQUIRE_CLOSE(x.result(), want, tolerance_for<T>(), "v2 cached (" + std::to_string(rows) + " rows) " + what);
    }
}

template <class T>
void check_all_rope_cases() {
    std::uint64_t which = 0;
    for (const auto& c : rope_cases()) {
        check_rope_case<T, std::int64_t>(c, ++which);
        check_rope_case<T, std::int32_t>(c, ++which);
    }
}

}  // namespace

TEST_CASE("RoPE v1 and v2 match the CPU reference (float)", "[cuda][positional][rope]") { check_all_rope_cases<float>(); }
TEST_CASE("RoPE v1 and v2 match the CPU reference (bfloat16)", "[cuda][positional][rope]") {
    check_all_rope_cases<tinyllm::bfloat16>();
}
TEST_CASE("RoPE v1 and v2 match the CPU reference (float16)", "[cuda][positional][rope]") {
    check_all_rope_cases<tinyllm::float16>();
}

TEST_CASE("the RoPE cache holds the CPU's cos/sin table", "[cuda][positional][rope]") {
    const rope_config cfg{.rotary_dim = 96, .theta = 500000.0, .scaling = rope_scaling::llama3, .factor = 8.0,
                          .original_max_position_embeddings = 1024};
    const index_t P = 3001, R2 = 48;
    const auto cache = tc::make_rope_cache(cfg, P);
    tinyllm::tensor<float, 2> c({P, R2}), s({P, R2});
    tinyllm::cpu::rope_cos_sin(c.view(), s.view(), cfg);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(cache.cos), c.values(), tolerance{1e-6, 1e-6}, "cache cos");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(cache.sin), s.values(), tolerance{1e-6, 1e-6}, "cache sin");
}

TEST_CASE("RoPE on q inside a fused qkv buffer, and on a misaligned view", "[cuda][positional][rope]") {
    const index_t B = 2, T = 5, H = 3, D = 64;
    const rope_config cfg{.rotary_dim = 64};
    const std::size_t n = static_cast<std::size_t>(B * T * 3 * H * D);
    const auto host = as_type<tinyllm::bfloat16>(tinyllm_test::random_floats(n, 77));
    const auto positions = random_positions<std::int64_t>(static_cast<std::size_t>(B * T), 78, 500);
    auto d_pos = tc::to_device(positions);
    const tinyllm::extents<2> pshape{B, T};

    // Reference: rotate the q part of the fused buffer on the CPU; k and v stay.
    std::vector<float> want = as_floats(host);
    tinyllm::tensor_view<float, 4> fused_ref(want.data(), {B, T, 3 * H, D});
    tinyllm::cpu::apply_rope(fused_ref.narrow(2, 0, H), tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), pshape),
                             cfg);
    tc::device_buffer<tinyllm::bfloat16> d(n);
    d.poison();
    tc::copy_to_device(d, host);
    const auto cache = tc::make_rope_cache(cfg, 500);
    tc::apply_rope_cached(d.view(tinyllm::extents<4>{B, T, 3 * H, D}).narrow(2, 0, H), d_pos.view(pshape), cache);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d), want, tolerance_for<tinyllm::bfloat16>(), "rope on q of fused qkv");

    // Shift the start by one element: not 16-byte aligned, the scalar path runs.
    std::vector<float> base = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * H * D) + 1, 79);
    std::vector<float> ref(base.begin() + 1, base.end());
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(ref.data(), {B, T, H, D}),
                             tinyllm::tensor_view<const std::int64_t, 2>(positions.data(), pshape), cfg);
    ref.insert(ref.begin(), base[0]);
    auto d2 = tc::to_device(base);
    tc::apply_rope_on_the_fly(tinyllm::tensor_view<float, 4>(d2.data() + 1, {B, T, H, D}), d_pos.view(pshape), cfg);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d2), ref, tolerance_for<float>(), "rope on a misaligned view");
}

namespace {

// The default positions (position_offset + t in every row, computed in the
// kernel) against the CPU's default-position apply_rope, for v1, v2 and the
// q, k pair; rotary_dim left at its default (the whole head dim) or explicit.
template <class T>
void check_rope_default_positions(index_t B, index_t T_, index_t H, index_t D, const rope_config& cfg,
                                  index_t offset, std::uint64_t which) {
    const std::size_t n = static_cast<std::size_t>(B * T_ * H * D);
    const auto x_in = as_type<T>(tinyllm_test::random_floats(n, which, -2.0f, 2.0f));
    const tinyllm::extents<4> shape{B, T_, H, D};
    tinyllm::tensor<float, 4> want(shape);
    want.values() = as_floats(x_in);
    tinyllm::cpu::apply_rope(want, cfg, offset);
    const std::string what = std::string(tinyllm::dtype_name<T>()) + " B" + std::to_string(B) + " T" +
                             std::to_string(T_) + " H" + std::to_string(H) + " D" + std::to_string(D) + " rotary " +
                             std::to_string(cfg.rotary_dim) + " " + std::string(tinyllm::to_string(cfg.pairing)) + " offset " +
                             std::to_string(offset);

    guarded<T> x(n);
    const tinyllm::tensor_view<T, 4> xv(x.data(), shape);
    x.load(x_in);
    tc::apply_rope(xv, cfg, offset);
    TINYLLM_REQUIRE_CLOSE(x.result(), want.values(), tolerance_for<T>(), "default positions v1 " + what);

    for (index_t rows : {offset + T_, std::max<index_t>(1, (offset + T_) / 2)}) {  // whole, then partly computed
        const auto cache = tc::make_rope_cache(tinyllm::resolve_rope(cfg, D), rows);
        x.load(x_in);
        tc::apply_rope_cached(xv, cache, offset);
        TINYLLM_REQUIRE_CLOSE(x.result(), want.values(), tolerance_for<T>(),
                              "default positions v2 (" + std::to_string(rows) + " rows) " + what);
    }

    // Explicit device positions offset..offset+T-1 give the same bits as the default.
    std::vector<std::int32_t> positions;
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T_; ++t) positions.push_back(static_cast<std::int32_t>(offset + t));
    auto d_pos = tc::to_device(positions);
    x.load(x_in);
    tc::apply_rope(xv, d_pos.view(tinyllm::extents<2>{B, T_}), cfg);
    const auto with_ids = x.result();
    x.load(x_in);
    tc::apply_rope(xv, cfg, offset);
    const auto with_default = x.result();
    std::size_t differ = 0;
    for (std::size_t i = 0; i < n; ++i)
        differ += tinyllm::to_float(with_ids[i]) != tinyllm::to_float(with_default[i]);
    INFO(what);
    CHECK(differ == 0);

    // q and k together (k with one head, as with grouped-query attention).
    const std::size_t nk = static_cast<std::size_t>(B * T_ * D);
    guarded<T> k(nk);
    const auto k_in = std::vector<T>(x_in.begin(), x_in.begin() + static_cast<std::ptrdiff_t>(nk));
    tinyllm::tensor<float, 4> k_want({B, T_, index_t{1}, D});
    k_want.values() = as_floats(k_in);
    tinyllm::cpu::apply_rope(k_want, cfg, offset);
    x.load(x_in);
    k.load(k_in);
    tc::apply_rope(xv, tinyllm::tensor_view<T, 4>(k.data(), {B, T_, 1, D}), cfg, offset);
    TINYLLM_REQUIRE_CLOSE(x.result(), want.values(), tolerance_for<T>(), "default positions q " + what);
    TINYLLM_REQUIRE_CLOSE(k.result(), k_want.values(), tolerance_for<T>(), "default positions k " + what);
}

template <class T>
void check_all_rope_default_positions() {
    std::uint64_t which = 500;
    for (auto pairing : {rope_pairing::rotate_half, rope_pairing::interleaved}) {
        const rope_config by_default{.theta = 10000.0, .pairing = pairing};
        check_rope_default_positions<T>(2, 7, 3, 64, by_default, 0, ++which);      // a prompt, vector loads
        check_rope_default_positions<T>(3, 1, 4, 128, by_default, 1000, ++which);  // decoding one token
        check_rope_default_positions<T>(2, 5, 2, 10, by_default, 3, ++which);      // scalar path (D = 10)
        check_rope_default_positions<T>(1, 6, 2, 64, {.rotary_dim = 32, .theta = 500000.0, .pairing = pairing}, 17,
                                        ++which);  // partial rotary, explicit
    }
}

}  // namespace

TEST_CASE("RoPE with default positions (offset + t) matches the CPU (float)", "[cuda][positional][rope]") {
    check_all_rope_default_positions<float>();
}
TEST_CASE("RoPE with default positions (offset + t) matches the CPU (bfloat16)", "[cuda][positional][rope]") {
    check_all_rope_default_positions<tinyllm::bfloat16>();
}

namespace {

template <class T, class P>
void check_absolute(index_t B, index_t S, index_t D, std::uint64_t which) {
    const std::size_t n = static_cast<std::size_t>(B * S * D);
    const auto x_in = as_type<T>(tinyllm_test::random_floats(n, which));
    const index_t max_pos = 1000;
    const auto positions = random_positions<P>(static_cast<std::size_t>(B * S), which + 1, max_pos);
    const tinyllm::extents<3> shape{B, S, D};
    const tinyllm::extents<2> pshape{B, S};
    const tinyllm::tensor_view<const P, 2> host_pos(positions.data(), pshape);
    auto d_pos = tc::to_device(positions);
    const std::string what = "B" + std::to_string(B) + " T" + std::to_string(S) + " D" + std::to_string(D) + " " +
                             std::string(tinyllm::dtype_name<T>());

    std::vector<float> want = as_floats(x_in);
    tinyllm::cpu::add_sinusoidal(tinyllm::tensor_view<float, 3>(want.data(), shape), host_pos);
    guarded<T> x(n);
    const tinyllm::tensor_view<T, 3> xv(x.data(), shape);
    x.load(x_in);
    tc::add_sinusoidal(xv, d_pos.view(pshape));
    TINYLLM_REQUIRE_CLOSE(x.result(), want, tolerance_for<T>(), "add_sinusoidal " + what);

    const auto table = as_type<T>(tinyllm_test::random_floats(static_cast<std::size_t>(max_pos * D), which + 2));
    const auto table_f = as_floats(table);
    want = as_floats(x_in);
    tinyllm::cpu::add_learned_positions(tinyllm::tensor_view<float, 3>(want.data(), shape),
                                        tinyllm::tensor_view<const float, 2>(table_f.data(), {max_pos, D}), host_pos);
    auto d_table = tc::to_device(table);
    x.load(x_in);
    tc::add_learned_positions(xv, d_table.view(tinyllm::extents<2>{max_pos, D}), d_pos.view(pshape));
    TINYLLM_REQUIRE_CLOSE(x.result(), want, tolerance_for<T>(), "add_learned_positions " + what);
}


// A paged step for the v3 and v4 tests: 5 rows of 2 sequences in blocks of 4 (a
// pool of 5 blocks); row r is sequence seq[r]'s position pos[r].
struct paged_step {
    static constexpr index_t max_blocks = 3, block_size = 4, pool_rows = 5 * block_size;
    std::vector<std::int32_t> tables = {2, 0, -1, 1, 3, 4}, seq = {0, 1, 1, 1, 0}, pos = {5, 9, 10, 0, 6};
    tc::device_buffer<std::int32_t> d_tables = tc::to_device(tables), d_seq = tc::to_device(seq),
                                    d_pos = tc::to_device(pos);
    std::vector<std::int64_t> positions() const { return {pos.begin(), pos.end()}; }
    // Each row's pool row: block_tables(seq, pos / bs) * bs + pos % bs.
    std::vector<index_t> dest() const {
        std::vector<index_t> d;
        for (std::size_t r = 0; r < seq.size(); ++r)
            d.push_back(tables[static_cast<std::size_t>(seq[r] * max_blocks + pos[r] / block_size)] * block_size +
                        pos[r] % block_size);
        return d;
    }
    tc::detail::paged_cache_rows rows() const {
        return {d_tables.data(), max_blocks, block_size, d_seq.data(), d_pos.data()};
    }
};

// v3, rope_write_cache (the model's RoPE with its KV-cache write), against what
// it replaces: apply_rope_cached on q and k (one launch over their adjacent heads),
// then each kept token's k and v copied into its cache row, here on the host.
// The rotation is the same device code, so qkv and the cache must agree bit for
// bit; rows nobody writes keep their NaN poison. `dest`: each token's cache row
// or -1 (not kept); `rows`: the same on the device; rope == nullptr: GPT-2.
template <class T, class Rows>
void check_rope_write_cache(index_t Hq, index_t Hkv, index_t Dh, const tc::rope_cache* rope,
                            const std::vector<std::int64_t>& positions, const std::vector<index_t>& dest,
                            index_t cache_rows, Rows rows, std::uint64_t which, const std::string& what) {
    INFO(what);
    const index_t tokens = static_cast<index_t>(positions.size()), stride = (Hq + 2 * Hkv) * Dh, width = Hkv * Dh;
    const auto f = tinyllm_test::random_floats(static_cast<std::size_t>(tokens * stride), which, -2.0f, 2.0f);
    std::vector<T> qkv_host(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) qkv_host[i] = tinyllm::from_float<T>(f[i]);
    const T nan = tinyllm::from_float<T>(std::numeric_limits<float>::quiet_NaN());
    const std::vector<T> poison(static_cast<std::size_t>(cache_rows * width), nan);
    const auto pos = tc::to_device(positions);

    // Unfused: rotate, then copy on the host.
    auto qkv_ref = tc::to_device(qkv_host);
    if (rope != nullptr)
        tc::apply_rope_cached(
            tinyllm::tensor_view<T, 4>(qkv_ref.data(), {1, tokens, Hq + Hkv, Dh}, {tokens * stride, stride, Dh, 1}),
            tinyllm::tensor_view<const std::int64_t, 2>(pos.data(), {1, tokens}), *rope);
    const std::vector<T> want_qkv = tc::to_host(qkv_ref);
    std::vector<T> want_k = poison, want_v = poison;
    for (index_t r = 0; r < tokens; ++r) {
        if (dest[static_cast<std::size_t>(r)] < 0) continue;
        const auto from = want_qkv.begin() + r * stride + Hq * Dh;
        std::copy(from, from + width, want_k.begin() + dest[static_cast<std::size_t>(r)] * width);
        std::copy(from + width, from + 2 * width, want_v.begin() + dest[static_cast<std::size_t>(r)] * width);
    }

    // Fused.
    auto qkv = tc::to_device(qkv_host);
    auto keys = tc::to_device(poison), values = tc::to_device(poison);
    tc::detail::rope_write_cache(keys.data(), values.data(), rows, qkv.data(), tokens, stride, Hq, Hkv, Dh, pos.data(),
                                 rope, nullptr);
    const auto got_qkv = tc::to_host(qkv), got_k = tc::to_host(keys), got_v = tc::to_host(values);

    const auto q_bits = tinyllm_test::compare_bits(as_floats(got_qkv), as_floats(want_qkv));
    const auto k_bits = tinyllm_test::compare_bits(as_floats(got_k), as_floats(want_k));
    const auto v_bits = tinyllm_test::compare_bits(as_floats(got_v), as_floats(want_v));
    const auto kept =
        static_cast<std::size_t>(std::count_if(dest.begin(), dest.end(), [](index_t d) { return d >= 0; }));
    std::printf("  rope_write_cache %s: %lld tokens, %zu kept; qkv, keys, values differ in %zu, %zu, %zu elements\n",
                what.c_str(), static_cast<long long>(tokens), kept, q_bits.differ, k_bits.differ, v_bits.differ);
    REQUIRE(q_bits.differ == 0);
    REQUIRE(q_bits.non_finite == 0);
    REQUIRE(k_bits.differ == 0);
    REQUIRE(v_bits.differ == 0);
    // Exactly the kept rows were written (finite); the rest is still poison.
    REQUIRE(k_bits.non_finite == (static_cast<std::size_t>(cache_rows) - kept) * static_cast<std::size_t>(width));
    REQUIRE(v_bits.non_finite == k_bits.non_finite);
    if (rope != nullptr) REQUIRE(as_floats(got_qkv) != as_floats(qkv_host));  // something rotated
}

template <class T>
void check_rope_write_cache_all() {
    const bool bf = std::is_same_v<T, tinyllm::bfloat16>;
    std::uint64_t which = bf ? 9100 : 9000;
    // (Hq, Hkv, Dh): 16-byte vectors (Dh = 16); Dh = 6, whose 3 pairs take the scalar path; MQA.
    const index_t shapes[][3] = {{4, 2, 16}, {3, 1, 6}, {4, 1, 16}};
    for (const auto& sh : shapes)
        for (int variant = 0; variant < 3; ++variant) {  // RoPE rotate_half, RoPE interleaved, none (GPT-2)
            const index_t Hq = sh[0], Hkv = sh[1], Dh = sh[2];
            const bool with_rope = variant < 2;
            const tinyllm::rope_pairing pairing =
                variant == 1 ? tinyllm::rope_pairing::interleaved : tinyllm::rope_pairing::rotate_half;
            tinyllm::rope_config cfg;
            cfg.pairing = pairing;
            // A table of 8 positions: later ones are computed (the table's fallback).
            const tc::rope_cache table = tc::make_rope_cache(tinyllm::resolve_rope(cfg, Dh), 8);
            const tc::rope_cache* rope = with_rope ? &table : nullptr;
            const std::string shape =
                std::to_string(Hq) + "/" + std::to_string(Hkv) + "/" + std::to_string(Dh) +
                (with_rope ? std::string(" ") + std::string(tinyllm::to_string(pairing)) : std::string(" no rope")) +
                (bf ? " bf16" : " float");

            // A session: B = 3 rows of n = 4 tokens; row b keeps count[b] from cache position start[b].
            const index_t n = 4, capacity = 16;
            const std::vector<std::int32_t> start = {0, 5, 9}, count = {4, 2, 0};
            std::vector<std::int64_t> positions;
            std::vector<index_t> dest;
            for (index_t b = 0; b < 3; ++b)
                for (index_t t = 0; t < n; ++t) {
                    positions.push_back(start[static_cast<std::size_t>(b)] + t);
                    dest.push_back(t < count[static_cast<std::size_t>(b)]
                                       ? b * capacity + start[static_cast<std::size_t>(b)] + t
                                       : -1);
                }
            const auto d_start = tc::to_device(start), d_count = tc::to_device(count);
            check_rope_write_cache<T>(Hq, Hkv, Dh, rope, positions, dest, 3 * capacity,
                                      tc::detail::contiguous_cache_rows{n, capacity, d_start.data(), d_count.data()},
                                      which++, "session " + shape);

            const paged_step paged;
            check_rope_write_cache<T>(Hq, Hkv, Dh, rope, paged.positions(), paged.dest(), paged_step::pool_rows,
                                      paged.rows(), which++, "paged " + shape);
        }
}

// v4, qkv_rope_write_cache (the projection, RoPE and the cache write in one
// GEMV), against what it replaces: qkv = x W^T + b (here in double on the host,
// rounded to T as cuBLAS's output is), then v3 on the device. v4 rounds q and k
// once where that path rounds twice, so they agree within the storage type's
// rounding: float abs 1e-5 + rel 1e-5 (with w scaled by 1/sqrt(K) the values
// are O(1), and a float dot product's rounding errors, which add up like a
// random walk, stay below 1e-6 of them up to K = 1290), bfloat16 abs 1.5e-2 + rel 1e-2 (an extra
// half-ulp of a and of b, 2^-9 (|a| + |b|), enters the rotated values).
// qkv is poisoned before v4 runs: every element must be written; cache rows
// nobody keeps must stay poison.
template <class T, class Rows>
void check_qkv_rope_write_cache(index_t Hq, index_t Hkv, index_t Dh, index_t K, bool with_bias,
                                const tc::rope_cache* rope, const std::vector<std::int64_t>& positions,
                                const std::vector<index_t>& dest, index_t cache_rows, Rows rows, std::uint64_t which,
                                const std::string& what) {
    INFO(what);
    const index_t tokens = static_cast<index_t>(positions.size()), N = (Hq + 2 * Hkv) * Dh, width = Hkv * Dh;
    const float w_scale = 1.0f / std::sqrt(static_cast<float>(K));
    const std::vector<T> x = as_type<T>(tinyllm_test::random_floats(static_cast<std::size_t>(tokens * K), which));
    const std::vector<T> w = as_type<T>(
        tinyllm_test::random_floats(static_cast<std::size_t>(N * K), which + 1, -w_scale, w_scale));
    const std::vector<T> bias =
        with_bias ? as_type<T>(tinyllm_test::random_floats(static_cast<std::size_t>(N), which + 2, -0.5f, 0.5f))
                  : std::vector<T>{};
    std::vector<float> projected(static_cast<std::size_t>(tokens * N));
    for (index_t r = 0; r < tokens; ++r)
        for (index_t n = 0; n < N; ++n) {
            double sum = with_bias ? tinyllm::to_float(bias[static_cast<std::size_t>(n)]) : 0.0;
            for (index_t k = 0; k < K; ++k)
                sum += static_cast<double>(tinyllm::to_float(x[static_cast<std::size_t>(r * K + k)])) *
                       tinyllm::to_float(w[static_cast<std::size_t>(n * K + k)]);
            projected[static_cast<std::size_t>(r * N + n)] = static_cast<float>(sum);
        }
    const T nan = tinyllm::from_float<T>(std::numeric_limits<float>::quiet_NaN());
    const std::vector<T> poison(static_cast<std::size_t>(cache_rows * width), nan);
    const auto pos = tc::to_device(positions);

    // What v4 replaces: the projection's output in T, then v3.
    auto qkv_ref = tc::to_device(as_type<T>(projected));
    auto keys_ref = tc::to_device(poison), values_ref = tc::to_device(poison);
    tc::detail::rope_write_cache(keys_ref.data(), values_ref.data(), rows, qkv_ref.data(), tokens, N, Hq, Hkv, Dh,
                                 pos.data(), rope, nullptr);

    // v4.
    const auto d_x = tc::to_device(x), d_w = tc::to_device(w), d_bias = tc::to_device(bias);
    tc::device_buffer<T> qkv(static_cast<std::size_t>(tokens * N));
    qkv.poison();
    auto keys = tc::to_device(poison), values = tc::to_device(poison);
    tc::detail::qkv_rope_write_cache(qkv.data(), keys.data(), values.data(), rows, d_x.data(), tokens, d_w.data(),
                                     with_bias ? d_bias.data() : nullptr, K, Hq, Hkv, Dh, pos.data(), rope, nullptr);

    tinyllm_test::tolerance tol{1e-5, 1e-5, 1e-5};
    if constexpr (std::is_same_v<T, tinyllm::bfloat16>) tol = {1.5e-2, 1e-2, 1e-2};
    TINYLLM_REQUIRE_CLOSE(as_floats(tc::to_host(qkv)), as_floats(tc::to_host(qkv_ref)), tol, "qkv " + what);
    // The kept cache rows agree; the others are still poison.
    std::size_t kept = 0;
    for (const auto& [got_buf, want_buf] : {std::pair{&keys, &keys_ref}, std::pair{&values, &values_ref}}) {
        const std::vector<float> got = as_floats(tc::to_host(*got_buf)), want = as_floats(tc::to_host(*want_buf));
        std::vector<float> got_kept, want_kept;
        kept = 0;
        for (const index_t d : dest) {
            if (d < 0) continue;
            ++kept;
            got_kept.insert(got_kept.end(), got.begin() + d * width, got.begin() + (d + 1) * width);
            want_kept.insert(want_kept.end(), want.begin() + d * width, want.begin() + (d + 1) * width);
        }
        TINYLLM_REQUIRE_CLOSE(got_kept, want_kept, tol, (got_buf == &keys ? "keys " : "values ") + what);
        const std::size_t poisoned = static_cast<std::size_t>(std::count_if(got.begin(), got.end(), [](float v) {
            return std::isnan(v);
        }));
        REQUIRE(poisoned == (static_cast<std::size_t>(cache_rows) - kept) * static_cast<std::size_t>(width));
    }
    std::printf("  qkv_rope_write_cache %s: %lld tokens, %zu kept, K = %lld\n", what.c_str(),
                static_cast<long long>(tokens), kept, static_cast<long long>(K));
}

template <class T>
void check_qkv_rope_write_cache_all() {
    const bool bf = std::is_same_v<T, tinyllm::bfloat16>;
    std::uint64_t which = bf ? 9600 : 9500;
    // (Hq, Hkv, Dh, K, rotary_dim): 16-byte loads (K = 32); K = 30 (scalar loads) with
    // 3 pairs per head; a partial rotary (4 of 6 features turn); an odd head dim (no
    // RoPE: its last feature goes alone); MQA; K = 1288 and 1290, which take the
    // kernel's unrolled steps (4 loads per lane, 32 lanes) and end inside one
    // (vector and scalar loads).
    const index_t shapes[][5] = {{4, 2, 16, 32, 0}, {3, 1, 6, 30, 0}, {2, 1, 6, 40, 4},   {2, 1, 5, 32, -1},
                                 {4, 1, 16, 32, 0}, {2, 1, 8, 1288, 0}, {1, 1, 8, 1290, 0}};
    int count = 0;
    for (const auto& sh : shapes)
        for (int variant = 0; variant < 3; ++variant) {  // RoPE rotate_half, RoPE interleaved, none (GPT-2)
            if (sh[4] < 0 && variant < 2) continue;  // an odd head dim has no rotation
            const index_t Hq = sh[0], Hkv = sh[1], Dh = sh[2], K = sh[3];
            const bool with_rope = variant < 2;
            const tinyllm::rope_pairing pairing =
                variant == 1 ? tinyllm::rope_pairing::interleaved : tinyllm::rope_pairing::rotate_half;
            tinyllm::rope_config cfg;
            cfg.pairing = pairing;
            cfg.rotary_dim = sh[4] > 0 ? sh[4] : 0;
            // A table of 8 positions: later ones are computed (the table's fallback).
            std::optional<tc::rope_cache> table;
            if (with_rope) table = tc::make_rope_cache(tinyllm::resolve_rope(cfg, Dh), 8);
            const tc::rope_cache* rope = with_rope ? &*table : nullptr;
            const bool with_bias = ++count % 2 == 0;
            const std::string shape =
                std::to_string(Hq) + "/" + std::to_string(Hkv) + "/" + std::to_string(Dh) +
                (with_rope ? std::string(" ") + std::string(tinyllm::to_string(pairing)) +
                                 (sh[4] > 0 ? " rotary " + std::to_string(sh[4]) : std::string())
                           : std::string(" no rope")) +
                (with_bias ? " bias" : "") + (bf ? " bf16" : " float");

            // A session: B = 2 rows of n = 4 tokens (8, the most a launch takes); row 1 keeps 1.
            const index_t n = 4, capacity = 16;
            const std::vector<std::int32_t> start = {3, 9}, count_kept = {4, 1};
            std::vector<std::int64_t> positions;
            std::vector<index_t> dest;
            for (index_t b = 0; b < 2; ++b)
                for (index_t t = 0; t < n; ++t) {
                    const auto bi = static_cast<std::size_t>(b);
                    positions.push_back(start[bi] + t);
                    dest.push_back(t < count_kept[bi] ? b * capacity + start[bi] + t : -1);
                }
            const auto d_start = tc::to_device(start), d_count = tc::to_device(count_kept);
            check_qkv_rope_write_cache<T>(Hq, Hkv, Dh, K, with_bias, rope, positions, dest, 2 * capacity,
                                          tc::detail::contiguous_cache_rows{n, capacity, d_start.data(), d_count.data()},
                                          which, "session " + shape);
            which += 3;

            // A batch-1 decode step: one row, the GEMV's one-row instantiation.
            const std::vector<std::int32_t> start1 = {5}, count1 = {1};
            const auto d_start1 = tc::to_device(start1), d_count1 = tc::to_device(count1);
            check_qkv_rope_write_cache<T>(Hq, Hkv, Dh, K, with_bias, rope, {5}, {5}, capacity,
                                          tc::detail::contiguous_cache_rows{1, capacity, d_start1.data(), d_count1.data()},
                                          which, "one row " + shape);
            which += 3;

            const paged_step paged;
            check_qkv_rope_write_cache<T>(Hq, Hkv, Dh, K, with_bias, rope, paged.positions(), paged.dest(),
                                          paged_step::pool_rows, paged.rows(), which, "paged " + shape);
            which += 3;
        }
}

}  // namespace

TEST_CASE("RoPE v3: rotation and KV-cache write in one launch give v2's bits and the copy",
          "[cuda][positional][rope][fused]") {
    check_rope_write_cache_all<float>();
    check_rope_write_cache_all<tinyllm::bfloat16>();
}

TEST_CASE("RoPE v4: the QKV GEMV with RoPE and the cache write in its epilogue matches projection + v3",
          "[cuda][positional][rope][fused]") {
    check_qkv_rope_write_cache_all<float>();
    check_qkv_rope_write_cache_all<tinyllm::bfloat16>();
}

TEST_CASE("v4 rejects more rows than a launch takes, and a rotary dim wider than the head",
          "[cuda][positional][rope][errors]") {
    tc::device_buffer<float> buf(4096);
    const std::vector<std::int32_t> zero(16, 0);
    const auto d_zero = tc::to_device(zero);
    const tc::detail::contiguous_cache_rows rows{1, 4, d_zero.data(), d_zero.data()};
    const auto d_pos = tc::to_device(std::vector<std::int64_t>(16, 0));
    tinyllm::rope_config cfg;
    const tc::rope_cache table = tc::make_rope_cache(tinyllm::resolve_rope(cfg, 16), 8);
    CHECK_THROWS_WITH(tc::detail::qkv_rope_write_cache(buf.data(), buf.data(), buf.data(), rows, buf.data(), 9,
                                                       buf.data(), nullptr, 8, 1, 1, 16, d_pos.data(), &table, nullptr),
                      Catch::Contains("at most 8"));
    CHECK_THROWS_WITH(tc::detail::qkv_rope_write_cache(buf.data(), buf.data(), buf.data(), rows, buf.data(), 1,
                                                       buf.data(), nullptr, 8, 1, 1, 8, d_pos.data(), &table, nullptr),
                      Catch::Contains("rotary_dim 16 is larger than head_dim 8"));
}

TEST_CASE("sinusoidal and learned additions match the CPU reference", "[cuda][positional][absolute]") {
    std::uint64_t which = 500;
    const std::vector<std::tuple<index_t, index_t, index_t>> shapes = {{2, 17, 768}, {1, 1, 7}, {3, 5, 130}};
    for (const auto& [B, T, D] : shapes) {
        check_absolute<float, std::int64_t>(B, T, D, which += 10);
        check_absolute<tinyllm::bfloat16, std::int32_t>(B, T, D, which += 10);
        check_absolute<tinyllm::float16, std::int64_t>(B, T, D, which += 10);
    }
}

TEST_CASE("a learned position outside the table turns its row into NaN, never reads past the table",
          "[cuda][positional][absolute]") {
    const index_t D = 8;
    std::vector<float> x(2 * D, 1.0f), table(4 * D, 0.5f);
    std::vector<std::int32_t> positions = {1, 4};  // 4 is outside a 4-row table
    auto dx = tc::to_device(x);
    auto dt = tc::to_device(table);
    auto dp = tc::to_device(positions);
    tc::add_learned_positions(dx.view(tinyllm::extents<3>{1, 2, D}), dt.view(tinyllm::extents<2>{4, D}),
                              dp.view(tinyllm::extents<2>{1, 2}));
    const auto got = tc::to_host(dx);
    for (index_t j = 0; j < D; ++j) {
        CHECK(got[static_cast<std::size_t>(j)] == 1.5f);
        CHECK(std::isnan(got[static_cast<std::size_t>(D + j)]));
    }
}

TEST_CASE("CUDA positional launchers reject bad arguments before launching", "[cuda][positional][errors]") {
    tc::device_buffer<float> x(2 * 3 * 4 * 8);
    tc::device_buffer<std::int64_t> p(2 * 3);
    const auto xv = x.view(tinyllm::extents<4>{2, 3, 4, 8});
    const auto pv = p.view(tinyllm::extents<2>{2, 3});
    CHECK_THROWS_WITH(tc::apply_rope_on_the_fly(xv, pv, rope_config{.rotary_dim = 9}),
                      tinyllm_test::contains("rotary_dim = 9 must be even"));
    CHECK_THROWS_WITH(tc::apply_rope(xv, pv, rope_config{.rotary_dim = 16}),
                      tinyllm_test::contains("must be <= the head dim 8"));
    CHECK_THROWS_WITH(tc::apply_rope_on_the_fly(xv, p.view(tinyllm::extents<2>{3, 2}), rope_config{.rotary_dim = 8}),
                      tinyllm_test::contains("positions has shape (3, 2)"));
    CHECK_THROWS_WITH(tc::apply_rope_cached(xv, pv, tc::make_rope_cache(rope_config{.rotary_dim = 16}, 4)),
                      tinyllm_test::contains("must be <= the head dim 8"));
    CHECK_THROWS_WITH(tc::apply_rope_on_the_fly(xv.transpose(2, 3), pv, rope_config{.rotary_dim = 4}),
                      tinyllm_test::contains("the head dim of x must be contiguous"));
    CHECK_THROWS_WITH(tc::make_rope_cache(rope_config{.rotary_dim = 8}, 0), tinyllm_test::contains("max_positions = 0"));
    // A table whose size would wrap (2^62 + 1 positions of 4 pairs: a 4-entry table, then read far
    // past its end), or too large to allocate, is refused by name before anything is made.
    CHECK_THROWS_WITH(tc::make_rope_cache(rope_config{.rotary_dim = 8}, (index_t{1} << 62) + 1),
                      tinyllm_test::contains("make_rope_cache: max_positions = 4611686018427387905 x rotary_dim/2 = 4 "
                                             "exceeds the 4294967296 entries a table may hold"));
    CHECK_THROWS_WITH(tc::make_rope_cache(rope_config{.rotary_dim = 4}, index_t{1} << 40),
                      tinyllm_test::contains("exceeds the 4294967296 entries"));
    CHECK_THROWS_WITH(tc::apply_rope_cached(xv, pv, tc::rope_cache{}), tinyllm_test::contains("the cache is empty"));
    CHECK_THROWS_WITH(tc::apply_rope_cached(xv, tc::rope_cache{}), tinyllm_test::contains("the cache is empty"));
    CHECK_THROWS_WITH(tc::make_rope_cache(rope_config{}, 4),
                      tinyllm_test::contains("make_rope_cache: rope_config.rotary_dim = 0 means the whole head dim"));
    CHECK_THROWS_WITH(tc::apply_rope(xv, rope_config{}, -3), tinyllm_test::contains("position_offset = -3 must be >= 0"));
    CHECK_THROWS_WITH(tc::apply_rope(xv, rope_config{.rotary_dim = 10}),
                      tinyllm_test::contains("rotary_dim = 10 must be <= the head dim 8"));
}

TEST_CASE("CUDA RoPE and the absolute additions refuse outputs over memory they cannot share, before launching",
          "[cuda][positional][errors]") {
    const index_t B = 1, T = 2, H = 2, D = 8;
    const rope_config cfg{};
    const auto host = tinyllm_test::random_floats(static_cast<std::size_t>(B * (T + 1) * H * D), 80);
    auto x = tc::to_device(host);
    auto p = tc::to_device(std::vector<std::int64_t>{0, 1});
    const auto pv = p.view(tinyllm::extents<2>{B, T});
    // A head stride of 0: two heads at one address, rotated twice (by two threads at once).
    const tinyllm::tensor_view<float, 4> one_head(x.data(), {B, T, H, D}, {T * D, D, 0, 1});
    CHECK_THROWS_WITH(
        tc::apply_rope(one_head, cfg),
        tinyllm_test::contains("apply_rope_on_the_fly: x has shape (1, 2, 2, 8) and strides (16, 8, 0, 1), "
                               "so two of its elements share an address"));
    CHECK_THROWS_WITH(tc::apply_rope_cached(one_head, pv, tc::make_rope_cache(rope_config{.rotary_dim = D}, 4)),
                      tinyllm_test::contains("apply_rope_cached: x has shape (1, 2, 2, 8)"));
    // q and k the same memory, or k one token past q.
    const tinyllm::tensor_view<float, 4> q(x.data(), {B, T, H, D});
    const tinyllm::tensor_view<float, 4> k_past(x.data() + H * D, {B, T, H, D});
    CHECK_THROWS_WITH(tc::apply_rope(q, q, cfg), tinyllm_test::contains("apply_rope: k must not share memory with q"));
    CHECK_THROWS_WITH(tc::apply_rope(q, k_past, pv, cfg),
                      tinyllm_test::contains("apply_rope: k must not share memory with q"));
    // x over the positions.
    tc::device_buffer<std::int64_t> shared(static_cast<std::size_t>(B * T * H * D));
    const tinyllm::tensor_view<float, 4> x_over(reinterpret_cast<float*>(shared.data()), {B, T, H, D});
    CHECK_THROWS_WITH(tc::apply_rope(x_over, tinyllm::tensor_view<const std::int64_t, 2>(shared.data(), {B, T}), cfg),
                      tinyllm_test::contains("apply_rope_on_the_fly: x must not share memory with positions"));
    // The absolute additions: x over the table, x with a token stride of 0.
    auto table = tc::to_device(tinyllm_test::random_floats(static_cast<std::size_t>(4 * D), 81));
    CHECK_THROWS_WITH(tc::add_learned_positions(tinyllm::tensor_view<float, 3>(table.data(), {B, T, D}),
                                                table.view(tinyllm::extents<2>{4, D}), pv),
                      tinyllm_test::contains("add_learned_positions: x must not share memory with the table"));
    CHECK_THROWS_WITH(tc::add_sinusoidal(tinyllm::tensor_view<float, 3>(x.data(), {B, T, D}, {T * D, 0, 1}), pv),
                      tinyllm_test::contains("add_sinusoidal: x has shape (1, 2, 8) and strides (16, 0, 1)"));
    CHECK_THROWS_WITH(tc::add_learned_positions(tinyllm::tensor_view<float, 3>(x.data(), {B, T, D}, {T * D, 0, 1}),
                                                table.view(tinyllm::extents<2>{4, D}), pv),
                      tinyllm_test::contains("add_learned_positions: x has shape (1, 2, 8) and strides (16, 0, 1)"));
    CHECK(tc::to_host(x) == host);  // nothing was written

    // q's and k's heads side by side in one fused row (k given first) rotate as all the heads at once.
    const auto fused_host = tinyllm_test::random_floats(static_cast<std::size_t>(B * T * 3 * H * D), 82);
    auto fused = tc::to_device(fused_host), want = tc::to_device(fused_host);
    const tinyllm::tensor_view<float, 4> f(fused.data(), {B, T, 3 * H, D}), all(want.data(), {B, T, 3 * H, D});
    tc::apply_rope(all.narrow(2, 0, 2 * H), cfg, 3);
    CHECK_NOTHROW(tc::apply_rope(f.narrow(2, H, H), f.narrow(2, 0, H), cfg, 3));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(tc::to_host(fused) == tc::to_host(want));
}
