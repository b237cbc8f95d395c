// CUDA tests for paged decode attention (cuda::attention_paged): against
// cpu::attention_paged on fresh random pools whose blocks are handed out in a
// shuffled order, for sequences of different lengths, MHA / GQA / MQA, one and a
// few queries per sequence, every option, explicit and automatic splits, in
// float and in 16-bit types; over a real kv_block_pool with shared blocks; the
// documented handling of bad device values; and the host-side rejections.
//
// Pool positions that no sequence has written are NaN (in a real pool they may
// hold anything), and so are the table entries past a sequence's blocks (-1 or
// ids past the pool): a kernel that reads them fails the comparison.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/cuda/attention_paged.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/paged_kv.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::attention_options;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::float16;
using tinyllm::index_t;
using tinyllm::tensor_view;
using tinyllm_test::contains;
using tinyllm_test::tolerance;

namespace {

// A batch of sequences over one pool.
struct paged_shape {
    std::vector<index_t> lengths;  // per sequence
    index_t block_size, Hq, Hkv, D, Tq;
    bool share_first_block = false;  // sequence 1's first block is sequence 0's (as after a fork)
};

std::string describe(const paged_shape& s) {
    std::ostringstream o;
    o << "lengths";
    for (const index_t n : s.lengths) o << " " << n;
    o << " bs" << s.block_size << " Hq" << s.Hq << " Hkv" << s.Hkv << " D" << s.D << " Tq" << s.Tq
      << (s.share_first_block ? " shared" : "");
    return o.str();
}

struct variant {
    std::string name;
    bool causal = false;
    index_t window = 0;
    bool alibi = false;
    float softcap = 0;
    float scale = 0;  // 0: the default 1 / sqrt(D)
};

const variant variants[] = {
    {"plain"},
    {"causal", true},
    {"causal+window 5", true, 5},
    {"alibi+softcap 3+causal", true, 0, true, 3.0f},
    {"scale 0.3", false, 0, false, 0, 0.3f},
};

// Host data of one problem (rounded to T), the float64-computed reference from
// the rounded values, and the device copies.
template <class T>
struct paged_problem {
    paged_shape s;
    index_t B = 0, blocks = 0, max_blocks = 0;
    std::vector<T> q, k, v;             // q (B, Tq, Hq, D); k, v (blocks, bs, Hkv, D)
    std::vector<std::int32_t> tables;   // (B, max_blocks)
    std::vector<std::int32_t> lengths;  // (B)
    std::vector<float> slopes;          // (Hq) or empty
    attention_options host_opts;
    std::vector<float> want;  // (B, Tq, Hq, D)
    tc::device_buffer<T> dq, dk, dv, dout;
    tc::device_buffer<std::int32_t> dtables, dlengths;
    tc::device_buffer<float> dslopes;

    paged_problem(const paged_shape& sh, const variant& var, std::uint64_t which) : s(sh) {
        const index_t bs = s.block_size;
        B = static_cast<index_t>(s.lengths.size());
        std::vector<index_t> needed;
        for (const index_t n : s.lengths) {
            needed.push_back((n + bs - 1) / bs);
            max_blocks = std::max(max_blocks, needed.back() + 1);  // one spare column, never read
        }
        blocks = std::accumulate(needed.begin(), needed.end(), index_t{0}) + 3;  // 3 blocks nobody holds

        // Block ids handed out in a random order.
        std::vector<std::int32_t> ids(static_cast<std::size_t>(blocks));
        std::iota(ids.begin(), ids.end(), 0);
        std::mt19937_64 rng(tinyllm_test::test_seed() ^ (which * 0x9E3779B97F4A7C15ull));
        std::shuffle(ids.begin(), ids.end(), rng);
        tables.assign(static_cast<std::size_t>(B * max_blocks), 0);
        std::size_t next = 0;
        for (index_t b = 0; b < B; ++b)
            for (index_t i = 0; i < max_blocks; ++i)  // entries past the sequence's blocks: never valid
                tables[static_cast<std::size_t>(b * max_blocks + i)] =
                    i < needed[static_cast<std::size_t>(b)] ? ids[next++]
                                                            : static_cast<std::int32_t>(i % 2 ? -1 : blocks + 7);
        if (s.share_first_block) {
            REQUIRE((B >= 2 && s.lengths[0] >= bs && s.lengths[1] >= bs));
            tables[static_cast<std::size_t>(max_blocks)] = tables[0];
        }
        lengths.assign(s.lengths.begin(), s.lengths.end());

        // The pool: random where a sequence has written, NaN elsewhere (spare blocks, the rest of last blocks).
        const index_t row = s.Hkv * s.D;
        const auto kr = tinyllm_test::random_floats(static_cast<std::size_t>(blocks * bs * row), which + 1);
        const auto vr = tinyllm_test::random_floats(kr.size(), which + 2);
        const auto qr = tinyllm_test::random_floats(static_cast<std::size_t>(B * s.Tq * s.Hq * s.D), which + 3);
        const T nan = tinyllm::from_float<T>(std::numeric_limits<float>::quiet_NaN());
        k.assign(kr.size(), nan);
        v.assign(kr.size(), nan);
        for (index_t b = 0; b < B; ++b)
            for (index_t j = 0; j < s.lengths[static_cast<std::size_t>(b)]; ++j) {
                const index_t block = tables[static_cast<std::size_t>(b * max_blocks + j / bs)];
                for (index_t e = 0; e < row; ++e) {
                    const auto at = static_cast<std::size_t>((block * bs + j % bs) * row + e);
                    k[at] = tinyllm::from_float<T>(kr[at]);
                    v[at] = tinyllm::from_float<T>(vr[at]);
                }
            }
        for (const float x : qr) q.push_back(tinyllm::from_float<T>(x));

        host_opts.causal = var.causal;
        if (var.window) host_opts.window = var.window;
        if (var.softcap > 0) host_opts.softcap = var.softcap;
        if (var.scale != 0) host_opts.scale = var.scale;
        if (var.alibi) {
            for (index_t h = 0; h < s.Hq; ++h)
                slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(s.Hq)));
            host_opts.alibi_slopes = {slopes.data(), {s.Hq}};
        }

        // The reference, on exactly the values the kernel sees (widened to float: exact).
        const auto widen = [](const std::vector<T>& x) {
            std::vector<float> y(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(tinyllm_test::detail::as_double(x[i]));
            return y;
        };
        const auto qf = widen(q), kf = widen(k), vf = widen(v);
        want.assign(q.size(), 0.0f);
        tinyllm::cpu::attention_paged(
            tensor_view<float, 4>(want.data(), q_shape()), tensor_view<const float, 4>(qf.data(), q_shape()),
            tensor_view<const float, 4>(kf.data(), pool_shape()), tensor_view<const float, 4>(vf.data(), pool_shape()),
            tensor_view<const std::int32_t, 2>(tables.data(), {B, max_blocks}),
            tensor_view<const std::int32_t, 1>(lengths.data(), {B}), host_opts);

        dq = tc::to_device(q);
        dk = tc::to_device(k);
        dv = tc::to_device(v);
        dout = tc::device_buffer<T>(q.size());
        dtables = tc::to_device(tables);
        dlengths = tc::to_device(lengths);
        if (!slopes.empty()) dslopes = tc::to_device(slopes);
    }

    extents<4> q_shape() const { return {B, s.Tq, s.Hq, s.D}; }
    extents<4> pool_shape() const { return {blocks, s.block_size, s.Hkv, s.D}; }
    attention_options device_opts() const {
        attention_options o = host_opts;
        if (!slopes.empty()) o.alibi_slopes = {dslopes.data(), {s.Hq}};
        return o;
    }
    tensor_view<T, 4> out() { return dout.view(q_shape()); }
    tensor_view<const T, 4> qv() const { return dq.view(q_shape()); }
    tensor_view<const T, 4> kv() const { return dk.view(pool_shape()); }
    tensor_view<const T, 4> vv() const { return dv.view(pool_shape()); }
    tensor_view<const std::int32_t, 2> tv() const { return dtables.view(extents<2>{B, max_blocks}); }
    tensor_view<const std::int32_t, 1> lv() const { return dlengths.view(extents<1>{B}); }

    // Run the kernel on a poisoned output and return what it wrote.
    std::vector<T> run(tc::attention_workspace& workspace, int splits) {
        dout.poison();
        tc::attention_paged<T>(out(), qv(), kv(), vv(), tv(), lv(), device_opts(), workspace, splits);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        return tc::to_host(dout);
    }
};

// The reference runs on the rounded inputs, so in 16 bits the error is the rounding of O (|O| <= 1:
// at most 2^-9 in bf16, 2^-12 in fp16, absolute; 2^-9 and 2^-12 relative), with a 2x margin.
const tolerance float_tol{2e-5, 1e-4, 1e-5};
const tolerance bf16_tol{4e-3, 4e-3, 4e-3};
const tolerance fp16_tol{5e-4, 5e-4, 5e-4};

// Lengths 1 .. 37 (one position, exactly one block, partial last blocks, several blocks),
// block sizes 16 and 4, MHA / MQA / GQA, Tq 1 and 3 (group * Tq up to 12 rows per KV head).
const paged_shape float_shapes[] = {
    {{1, 5, 16, 37}, 16, 4, 4, 32, 1},
    {{37, 5, 16, 3}, 4, 4, 1, 64, 3},
    {{16, 1, 29}, 4, 4, 2, 64, 1},
    {{20, 37, 9}, 16, 8, 2, 16, 3, true},
};
// The limits and the odd: 32 rows per KV head (16 heads over 1, Tq 2); D = 256 with 32 rows (over
// 48 KB of shared memory); an odd head dim; tables of 34 entries, where automatic splits are 3.
const paged_shape float_edges[] = {
    {{40, 2, 19}, 4, 16, 1, 64, 2},
    {{20, 45}, 16, 8, 1, 256, 4},
    {{7, 33}, 16, 2, 2, 37, 1},
    {{300, 1, 517}, 16, 8, 2, 128, 1},
};

}  // namespace

TEST_CASE("attention_paged (float) matches cpu::attention_paged", "[cuda][attention][paged]") {
    tc::attention_workspace workspace;
    std::uint64_t which = 1000;
    for (const auto& s : float_shapes)
        for (const auto& var : variants) {
            paged_problem<float> p(s, var, which += 10);
            for (int splits : {0, 1, 2, 3}) {
                INFO("paged float " << describe(s) << " " << var.name << " splits " << splits);
                TINYLLM_REQUIRE_CLOSE(p.run(workspace, splits), p.want, float_tol, "paged float O");
            }
        }
}

TEST_CASE("attention_paged (float) at its limits: 32 rows, D = 256, odd D, automatic splits",
          "[cuda][attention][paged]") {
    tc::attention_workspace workspace;
    std::uint64_t which = 1500;
    for (const auto& s : float_edges)
        for (const auto& var : {variants[1], variants[3]}) {
            paged_problem<float> p(s, var, which += 10);
            for (int splits : {0, 2}) {
                INFO("paged float " << describe(s) << " " << var.name << " splits " << splits);
                TINYLLM_REQUIRE_CLOSE(p.run(workspace, splits), p.want, float_tol, "paged float O");
            }
        }
}

TEST_CASE("attention_paged takes strided views (all but the head dim)", "[cuda][attention][paged]") {
    // The pool with 3 padding elements after each head row, q and out with 5, the tables with 2 spare
    // columns, the lengths every other element: the same numbers as the contiguous problem.
    paged_problem<float> p({{9, 22, 4}, 4, 4, 2, 16, 2}, variants[2], 1800);
    const index_t D = p.s.D, Hkv = p.s.Hkv, rows = p.blocks * p.s.block_size * Hkv;
    std::vector<float> kpad(static_cast<std::size_t>(rows * (D + 3))), vpad(kpad.size());
    for (index_t r = 0; r < rows; ++r)
        for (index_t d = 0; d < D; ++d) {
            kpad[static_cast<std::size_t>(r * (D + 3) + d)] = p.k[static_cast<std::size_t>(r * D + d)];
            vpad[static_cast<std::size_t>(r * (D + 3) + d)] = p.v[static_cast<std::size_t>(r * D + d)];
        }
    const index_t qrows = p.B * p.s.Tq * p.s.Hq;
    std::vector<float> qpad(static_cast<std::size_t>(qrows * (D + 5)));
    for (index_t r = 0; r < qrows; ++r)
        for (index_t d = 0; d < D; ++d)
            qpad[static_cast<std::size_t>(r * (D + 5) + d)] = p.q[static_cast<std::size_t>(r * D + d)];
    const index_t mb = p.max_blocks;
    std::vector<std::int32_t> tpad(static_cast<std::size_t>(p.B * (mb + 2)), -1),
        lpad(static_cast<std::size_t>(2 * p.B), -1);
    for (index_t b = 0; b < p.B; ++b) {
        for (index_t i = 0; i < mb; ++i)
            tpad[static_cast<std::size_t>(b * (mb + 2) + i)] = p.tables[static_cast<std::size_t>(b * mb + i)];
        lpad[static_cast<std::size_t>(2 * b)] = p.lengths[static_cast<std::size_t>(b)];
    }
    const auto dk = tc::to_device(kpad), dv = tc::to_device(vpad), dq = tc::to_device(qpad);
    const auto dt = tc::to_device(tpad), dl = tc::to_device(lpad);
    tc::device_buffer<float> dout(qpad.size());
    const extents<4> pool{p.blocks, p.s.block_size, Hkv, D + 3}, qs{p.B, p.s.Tq, p.s.Hq, D + 5};
    tc::attention_workspace workspace;
    for (int splits : {1, 3}) {
        INFO("strided views, splits " << splits);
        dout.poison();
        tc::attention_paged<float>(
            dout.view(qs).narrow(3, 0, D), dq.view(qs).narrow(3, 0, D), dk.view(pool).narrow(3, 0, D),
            dv.view(pool).narrow(3, 0, D), dt.view(extents<2>{p.B, mb + 2}).narrow(1, 0, mb),
            tensor_view<const std::int32_t, 1>(dl.data(), {p.B}, {2}), p.device_opts(), workspace, splits);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        const auto padded = tc::to_host(dout);
        std::vector<float> got(p.want.size());
        std::size_t padding_written = 0;  // out's padding must still be the poison
        for (index_t r = 0; r < qrows; ++r) {
            for (index_t d = 0; d < D; ++d)
                got[static_cast<std::size_t>(r * D + d)] = padded[static_cast<std::size_t>(r * (D + 5) + d)];
            for (index_t d = D; d < D + 5; ++d)
                padding_written += !std::isnan(padded[static_cast<std::size_t>(r * (D + 5) + d)]);
        }
        CHECK(padding_written == 0);
        TINYLLM_REQUIRE_CLOSE(got, p.want, float_tol, "paged strided O");
    }
}

TEST_CASE("attention_paged in bfloat16 and float16 (float math)", "[cuda][attention][paged]") {
    tc::attention_workspace workspace;
    const paged_shape shapes[] = {{{1, 5, 16, 37}, 16, 4, 2, 64, 1}, {{37, 12, 3}, 4, 2, 1, 128, 3, false}};
    std::uint64_t which = 2000;
    for (const auto& s : shapes)
        for (const auto& var : variants) {
            paged_problem<bfloat16> p(s, var, which += 10);
            for (int splits : {0, 3}) {
                INFO("paged bf16 " << describe(s) << " " << var.name << " splits " << splits);
                TINYLLM_REQUIRE_CLOSE(p.run(workspace, splits), p.want, bf16_tol, "paged bf16 O");
            }
        }
    paged_problem<float16> h(shapes[0], variants[3], 2900);
    INFO("paged fp16 " << describe(shapes[0]) << " " << variants[3].name);
    TINYLLM_REQUIRE_CLOSE(h.run(workspace, 2), h.want, fp16_tol, "paged fp16 O");
}

TEST_CASE("attention_paged over a kv_block_pool with forked, copied-on-write blocks", "[cuda][attention][paged]") {
    // Two layers; the second is the one attended. A is 10 positions; B = A.fork() then grows by 3
    // (its half-full last block is copied on write); C is a fresh sequence of 7.
    const index_t bs = 4, Hkv = 2, D = 32, Hq = 4, Tq = 2;
    tinyllm::kv_block_pool pool(2, 12, bs, Hkv, D);
    std::uint64_t which = 3000;
    const auto append = [&](tinyllm::kv_block_table& t, index_t n) {
        t.reserve(n);
        for (index_t layer = 0; layer < pool.layers(); ++layer) {
            const auto kn = tinyllm_test::random_floats(static_cast<std::size_t>(n * Hkv * D), which++);
            const auto vn = tinyllm_test::random_floats(kn.size(), which++);
            t.write(layer, t.length(), tensor_view<const float, 3>(kn.data(), {n, Hkv, D}),
                    tensor_view<const float, 3>(vn.data(), {n, Hkv, D}));
        }
        t.advance(n);
    };
    tinyllm::kv_block_table a(pool), c(pool);
    append(a, 10);
    tinyllm::kv_block_table b = a.fork();
    append(b, 3);
    append(c, 7);
    CHECK(pool.ref_count(a.blocks()[0]) == 2);  // shared by A and B
    CHECK(a.blocks()[2] != b.blocks()[2]);      // copied on write

    const tinyllm::kv_block_table* seqs[] = {&a, &b, &c};
    const index_t B = 3, max_blocks = 5;
    std::vector<std::int32_t> tables(static_cast<std::size_t>(B * max_blocks), -1), lengths;
    for (index_t s = 0; s < B; ++s) {
        const auto& ids = seqs[s]->blocks();
        std::copy(ids.begin(), ids.end(), tables.begin() + s * max_blocks);
        lengths.push_back(static_cast<std::int32_t>(seqs[s]->length()));
    }
    const auto q = tinyllm_test::random_floats(static_cast<std::size_t>(B * Tq * Hq * D), which++);
    const extents<4> q_shape{B, Tq, Hq, D};
    attention_options opts;
    opts.causal = true;
    std::vector<float> want(q.size());
    tinyllm::cpu::attention_paged(tensor_view<float, 4>(want.data(), q_shape),
                                  tensor_view<const float, 4>(q.data(), q_shape), pool.keys(1), pool.values(1),
                                  tensor_view<const std::int32_t, 2>(tables.data(), {B, max_blocks}),
                                  tensor_view<const std::int32_t, 1>(lengths.data(), {B}), opts);

    const auto keys = pool.keys(1), values = pool.values(1);
    const auto dk = tc::to_device(std::vector<float>(keys.data(), keys.data() + keys.size()));
    const auto dv = tc::to_device(std::vector<float>(values.data(), values.data() + values.size()));
    const auto dq = tc::to_device(q);
    const auto dtables = tc::to_device(tables);
    const auto dlengths = tc::to_device(lengths);
    tc::device_buffer<float> dout(q.size());
    tc::attention_workspace workspace;
    for (int splits : {1, 2}) {
        INFO("kv_block_pool splits " << splits);
        dout.poison();
        tc::attention_paged<float>(dout.view(q_shape), dq.view(q_shape), dk.view(keys.shape()), dv.view(values.shape()),
                                   dtables.view(extents<2>{B, max_blocks}), dlengths.view(extents<1>{B}), opts,
                                   workspace, splits);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), want, float_tol, "paged over kv_block_pool O");
    }
    // cpu::attention_paged's signature: a temporary workspace, automatic splits.
    dout.poison();
    tc::attention_paged<float>(dout.view(q_shape), dq.view(q_shape), dk.view(keys.shape()), dv.view(values.shape()),
                               dtables.view(extents<2>{B, max_blocks}), dlengths.view(extents<1>{B}), opts);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dout), want, float_tol, "paged over kv_block_pool O, no workspace");
}

TEST_CASE("attention_paged refuses an out over what it reads or with a stride of 0",
          "[cuda][attention][paged][error]") {
    tc::attention_workspace ws;
    paged_problem<float> p({{9, 13}, 4, 4, 4, 16, 2}, variants[0], 5100);  // Hq = Hkv: q's rows are the pool's
    const auto run = [&](tensor_view<float, 4> out) {
        tc::attention_paged<float>(out, p.qv(), p.kv(), p.vv(), p.tv(), p.lv(), {}, ws);
    };
    const extents<4> qs = p.qv().shape();
    CHECK_THROWS_WITH(run(tensor_view<float, 4>(p.dq.data(), qs)),
                      contains("attention_paged: out must not share memory with q"));
    CHECK_THROWS_WITH(run(tensor_view<float, 4>(p.dk.data() + 16, qs)),
                      contains("attention_paged: out must not share memory with keys"));
    CHECK_THROWS_WITH(run(tensor_view<float, 4>(p.dv.data(), qs)),
                      contains("attention_paged: out must not share memory with values"));
    CHECK_THROWS_WITH(run(tensor_view<float, 4>(reinterpret_cast<float*>(p.dlengths.data()), qs)),
                      contains("attention_paged: out must not share memory with lengths"));
    CHECK_THROWS_WITH(run(tensor_view<float, 4>(p.dout.data(), qs, {0, 64, 16, 1})),
                      contains("attention_paged: out has shape (2, 2, 4, 16) and strides (0, 64, 16, 1), so two of "
                               "its elements share an address"));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());

    // Allowed: q and out as the heads of one (B, Tq, 2 Hq, D) buffer, interleaved, never overlapping.
    const index_t width = 2 * p.s.Hq * p.s.D, rows = p.B * p.s.Tq;
    std::vector<float> both(static_cast<std::size_t>(rows * width), std::numeric_limits<float>::quiet_NaN());
    for (index_t r = 0; r < rows; ++r)
        std::copy(p.q.begin() + r * width / 2, p.q.begin() + (r + 1) * width / 2, both.begin() + r * width);
    auto d_both = tc::to_device(both);
    const extents<4> strides{p.s.Tq * width, width, p.s.D, 1};
    tc::attention_paged<float>(tensor_view<float, 4>(d_both.data() + width / 2, qs, strides),
                               tensor_view<const float, 4>(d_both.data(), qs, strides), p.kv(), p.vv(), p.tv(), p.lv(),
                               {}, ws);
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto after = tc::to_host(d_both);
    std::vector<float> got;
    for (index_t r = 0; r < rows; ++r)
        got.insert(got.end(), after.begin() + r * width + width / 2, after.begin() + (r + 1) * width);
    TINYLLM_REQUIRE_CLOSE(got, p.want, float_tol, "paged O beside q in one buffer");
}

TEST_CASE("attention_paged stays inside memory given bad device values", "[cuda][attention][paged]") {
    // Device values are not checked on the host. A length past the table's capacity is clamped to
    // it; the keys of a table entry outside the pool are skipped. Neither reads outside the pool.
    paged_problem<float> p({{9, 13, 6}, 4, 2, 1, 16, 1}, variants[0], 4000);
    const index_t mb = p.max_blocks;  // 5: sequence 1's 4 blocks and a spare column
    auto bad_lengths = p.lengths;
    bad_lengths[1] = 1000;
    // Sequence 1 clamped to 5 * 4 = 20 positions reads all 5 of its table entries: give the spare
    // fifth one a real block (its own first block again); the reference then has length 20.
    auto ref_tables = p.tables;
    ref_tables[static_cast<std::size_t>(mb + 4)] = p.tables[static_cast<std::size_t>(mb)];
    auto bad_tables = ref_tables;
    bad_tables[0 * mb + 1] = static_cast<std::int32_t>(p.blocks + 100);  // sequence 0's second block
    auto ref_lengths = p.lengths;
    ref_lengths[1] = 20;
    // Positions 13 .. 15 of sequence 1 are rows 1 .. 3 of its block 3, unwritten (NaN) in the pool:
    // give them real values.
    const index_t last = p.tables[static_cast<std::size_t>(mb + 3)];
    const auto fill = tinyllm_test::random_floats(static_cast<std::size_t>(2 * 3 * 16), 4100);
    for (index_t r = 1; r < 4; ++r)
        for (index_t e = 0; e < 16; ++e) {
            p.k[static_cast<std::size_t>((last * 4 + r) * 16 + e)] = fill[static_cast<std::size_t>((r - 1) * 16 + e)];
            p.v[static_cast<std::size_t>((last * 4 + r) * 16 + e)] =
                fill[static_cast<std::size_t>(48 + (r - 1) * 16 + e)];
        }
    std::vector<float> want(p.q.size());
    tinyllm::cpu::attention_paged(tensor_view<float, 4>(want.data(), p.q_shape()),
                                  tensor_view<const float, 4>(p.q.data(), p.q_shape()),
                                  tensor_view<const float, 4>(p.k.data(), p.pool_shape()),
                                  tensor_view<const float, 4>(p.v.data(), p.pool_shape()),
                                  tensor_view<const std::int32_t, 2>(ref_tables.data(), {p.B, mb}),
                                  tensor_view<const std::int32_t, 1>(ref_lengths.data(), {p.B}), p.host_opts);
    tc::copy_to_device(p.dk, p.k);
    tc::copy_to_device(p.dv, p.v);
    tc::copy_to_device(p.dlengths, bad_lengths);
    tc::copy_to_device(p.dtables, bad_tables);
    tc::attention_workspace workspace;
    for (int splits : {1, 3}) {
        INFO("bad device values, splits " << splits);
        const auto got = p.run(workspace, splits);
        const std::size_t per_seq = static_cast<std::size_t>(p.s.Tq * p.s.Hq * p.s.D);
        // Sequence 0 (a block skipped): finite, and not what the whole sequence gives.
        const std::vector<float> got0(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(per_seq));
        for (const float x : got0) REQUIRE(std::isfinite(x));
        CHECK_FALSE(tinyllm_test::compare(
                        got0, std::vector<float>(p.want.begin(), p.want.begin() + static_cast<std::ptrdiff_t>(per_seq)),
                        float_tol)
                        .passed);
        // Sequences 1 (clamped) and 2 (untouched): exact.
        const std::vector<float> got12(got.begin() + static_cast<std::ptrdiff_t>(per_seq), got.end());
        const std::vector<float> want12(want.begin() + static_cast<std::ptrdiff_t>(per_seq), want.end());
        TINYLLM_REQUIRE_CLOSE(got12, want12, float_tol, "paged bad values: sequences 1 and 2");
    }
}

TEST_CASE("attention_paged rejects bad arguments with clear errors", "[cuda][attention][paged][error]") {
    tc::attention_workspace ws;
    paged_problem<float> p({{9, 13}, 4, 4, 2, 16, 2}, variants[0], 5000);
    const attention_options none;
    const auto run = [&](auto out, auto q, auto k, auto v, auto t, auto l, const attention_options& o, int splits = 0) {
        tc::attention_paged<float>(out, q, k, v, t, l, o, ws, splits);
    };
    // Mismatched shapes.
    const tensor_view<float, 4> one_query_out(p.dout.data(), {2, 1, 4, 16});
    CHECK_THROWS_WITH(run(one_query_out, p.qv(), p.kv(), p.vv(), p.tv(), p.lv(), none),
                      contains("attention_paged: out (B, Tq, Hq, D) like q has shape"));
    const tensor_view<const float, 4> short_values(p.dv.data(), {p.blocks - 1, 4, 2, 16});
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), short_values, p.tv(), p.lv(), none),
                      contains("attention_paged: values (blocks, block_size, Hkv, D) like keys has shape"));
    const tensor_view<const float, 4> narrow_keys(p.dk.data(), {p.blocks, 4, 2, 8});
    CHECK_THROWS_WITH(run(p.out(), p.qv(), narrow_keys, narrow_keys, p.tv(), p.lv(), none),
                      contains("q has head dim 16 but the blocks hold 8"));
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), p.vv(), p.tv().narrow(0, 0, 1), p.lv(), none),
                      contains("2 sequences but 1 block tables and 2 lengths"));
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), p.vv(), p.tv(), p.lv().narrow(0, 0, 1), none),
                      contains("2 sequences but 2 block tables and 1 lengths"));
    // Hq not a multiple of Hkv: 4 query heads over 3 KV heads.
    const tensor_view<const float, 4> three_heads(p.dk.data(), {2, 4, 3, 16});
    CHECK_THROWS_WITH(run(p.out(), p.qv(), three_heads, three_heads, p.tv(), p.lv(), none),
                      contains("the query heads (Hq = 4) must be a multiple of the key/value heads (Hkv = 3)"));
    // Too many query rows per KV head: 8 heads over 1, 5 queries each.
    tc::device_buffer<float> q40(2 * 5 * 8 * 16);
    const tensor_view<const float, 4> one_head(p.dk.data(), {2, 4, 1, 16});
    CHECK_THROWS_WITH(run(q40.view(extents<4>{2, 5, 8, 16}), q40.view(extents<4>{2, 5, 8, 16}), one_head, one_head,
                          p.tv(), p.lv(), none),
                      contains("Hq/Hkv * Tq = 8 * 5 = 40 query rows share each KV head; at most 32"));
    // key_lengths is refused; the lengths say it.
    attention_options padded;
    padded.key_lengths = p.lv();
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), p.vv(), p.tv(), p.lv(), padded),
                      contains("key_lengths is not taken; the lengths give each sequence's keys"));
    // The CPU reference's option checks.
    attention_options window;
    window.window = 3;
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), p.vv(), p.tv(), p.lv(), window), contains("needs causal = true"));
    // Tables and lengths must be device memory.
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), p.vv(),
                          tensor_view<const std::int32_t, 2>(p.tables.data(), {p.B, p.max_blocks}), p.lv(), none),
                      contains("attention_paged: block_tables points to host memory"));
    CHECK_THROWS_WITH(
        run(p.out(), p.qv(), p.kv(), p.vv(), p.tv(), tensor_view<const std::int32_t, 1>(p.lengths.data(), {p.B}), none),
        contains("attention_paged: lengths points to host memory"));
    // Head dim over 256, negative splits, a table too narrow for the queries.
    tc::device_buffer<float> wide(2 * 2 * 4 * 300 + p.blocks * 4 * 2 * 300);
    const tensor_view<float, 4> wide_q(wide.data(), {2, 2, 4, 300});
    const tensor_view<const float, 4> wide_pool(wide.data() + 2 * 2 * 4 * 300, {p.blocks, 4, 2, 300});
    CHECK_THROWS_WITH(run(wide_q, wide_q, wide_pool, wide_pool, p.tv(), p.lv(), none),
                      contains("attention_paged supports head dims up to 256, got 300"));
    CHECK_THROWS_WITH(run(p.out(), p.qv(), p.kv(), p.vv(), p.tv(), p.lv(), none, -1),
                      contains("splits = -1 must be >= 0"));
    const tensor_view<const float, 4> one_row_blocks(p.dk.data(), {p.blocks, 1, 2, 16});
    CHECK_THROWS_WITH(run(p.out(), p.qv(), one_row_blocks, one_row_blocks, p.tv().narrow(1, 0, 1), p.lv(), none),
                      contains("room for 1 blocks of 1 = 1 positions, fewer than the 2 queries"));
    TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
}
