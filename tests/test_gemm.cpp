// Tests for tinyllm/gemm.hpp: cpu::gemm_blocked, cpu::gemm_blas (in builds with BLAS)
// and cpu::gemm against a double-accumulating reference, linear_gemm /
// linear_backward_gemm against cpu::linear / cpu::linear_backward (ffn.hpp), and
// linear_gemm with a bfloat16 weight against a double reference over the widened weight.
//
// Tolerances. The products are summed in float over K, in blocks and in another order
// than the reference. Whatever the order, the error of a float sum of K products is
// at most n u sum_k |a_ik b_kj| with u = 2^-24 and n the roundings on the longest
// path: K, two for alpha and beta C, two for each depth block (of at least 64) added
// on (the classical bound for recursive summation, n = K + 2 K / 64 + 4): every
// element must be within it, so no seed can fail a correct product, and an element
// that is wrong at all is far outside it. Rounding errors add like a random walk,
// so the relative L2 error against those magnitudes must also stay within
// 8 sqrt(n) u. The linear-layer tests compare with cpu::linear's float outputs
// using the same bound with |a|, |b| <= 1 (sum |terms| <= K) and a relative L2
// error within 1e-5 (observed ~2e-7). Outputs are filled with NaN before a call that
// must overwrite them (beta = 0): an element never written fails, as NaN never passes.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor;
using tinyllm::tensor_view;
using tinyllm_test::tolerance;

namespace cpu = tinyllm::cpu;

namespace {

constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();

// Input number `which` of this run: uniform in [-1, 1).
template <std::size_t R>
tensor<float, R> uniform(const extents<R>& shape, std::uint64_t which) {
    tensor<float, R> t(shape);
    cpu::fill_uniform(t, tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1), -1.0f, 1.0f);
    return t;
}

// op(X) of shape (rows, cols): stored row-major, or (transposed) stored as a
// row-major (cols, rows) matrix and seen through a transposed view.
struct operand {
    tensor<float, 2> storage;
    tensor_view<const float, 2> view;
};

operand make_operand(index_t rows, index_t cols, bool transposed, std::uint64_t which) {
    operand o{uniform(transposed ? extents<2>{cols, rows} : extents<2>{rows, cols}, which), {}};
    o.view = transposed ? o.storage.view().transpose(0, 1) : o.storage.view();
    return o;
}

template <class T>
std::vector<float> values_of(const tensor_view<T, 2>& v) {  // row-major
    std::vector<float> out;
    out.reserve(static_cast<std::size_t>(v.size()));
    for (index_t i = 0; i < v.extent(0); ++i)
        for (index_t j = 0; j < v.extent(1); ++j) out.push_back(v(i, j));
    return out;
}

// alpha a b + beta c0 in double, and the magnitude of its terms,
// |alpha| sum_k |a_ik b_kj| + |beta c0_ij|; c0 row-major (not read when beta = 0).
struct reference {
    std::vector<double> value, magnitude;
};

reference reference_gemm(const tensor_view<const float, 2>& a, const tensor_view<const float, 2>& b, float alpha,
                         float beta, const std::vector<float>& c0) {
    const index_t M = a.extent(0), K = a.extent(1), N = b.extent(1);
    reference r{std::vector<double>(static_cast<std::size_t>(M * N)), std::vector<double>(static_cast<std::size_t>(M * N))};
    for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j) {
            double acc = 0, mag = 0;
            for (index_t k = 0; k < K; ++k) {
                const double t = static_cast<double>(a(i, k)) * b(k, j);
                acc += t;
                mag += std::fabs(t);
            }
            const std::size_t at = static_cast<std::size_t>(i * N + j);
            const double bc = beta == 0.0f ? 0.0 : static_cast<double>(beta) * c0[at];
            r.value[at] = alpha * acc + bc;
            r.magnitude[at] = std::fabs(alpha) * mag + std::fabs(bc);
        }
    return r;
}

constexpr double unit_roundoff = 1.0 / 16777216.0;  // 2^-24

// The roundings on the longest path of a blocked float sum of K products (above).
double roundings(index_t K) { return static_cast<double>(K + 2 * (K / 64) + 4); }

// got within the float summation bounds of the reference (above); prints the
// max-abs and relative L2 errors and the worst error / bound.
void require_within_bounds(const std::vector<float>& got, const reference& want, index_t K, const std::string& what) {
    REQUIRE(got.size() == want.value.size());
    const double per_element = roundings(K) * unit_roundoff;
    double max_abs = 0, worst_ratio = 0, err2 = 0, ref2 = 0, mag2 = 0;
    std::size_t failures = 0, first_failure = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double err = std::fabs(static_cast<double>(got[i]) - want.value[i]);
        const double bound = per_element * want.magnitude[i];
        if (!(err <= bound)) {  // NaN fails here
            if (failures++ == 0) first_failure = i;
        }
        if (!(err <= max_abs)) max_abs = err;
        if (bound > 0 && err / bound > worst_ratio) worst_ratio = err / bound;
        err2 += err * err;
        ref2 += want.value[i] * want.value[i];
        mag2 += want.magnitude[i] * want.magnitude[i];
    }
    const double rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
    const double rel_l2_magnitude = mag2 > 0 ? std::sqrt(err2 / mag2) : std::sqrt(err2);
    const double rel_l2_bound = 8.0 * std::sqrt(roundings(K)) * unit_roundoff;
    const bool passed = failures == 0 && rel_l2_magnitude <= rel_l2_bound;
    std::ostringstream report;
    report << what << ": " << got.size() << " values, max-abs error " << max_abs << ", rel-L2 error " << rel_l2
           << ", worst error / bound " << worst_ratio << ", rel-L2 vs magnitudes " << rel_l2_magnitude << " (bound "
           << rel_l2_bound << ") -> " << (passed ? "PASS" : "FAIL");
    if (failures)
        report << "\n  " << failures << " element(s) outside n u sum|terms|, the first [" << first_failure
               << "]: got " << got[first_failure] << ", expected " << want.value[first_failure] << ", bound "
               << per_element * want.magnitude[first_failure];
    std::printf("  %s\n", report.str().c_str());
    INFO(report.str());
    REQUIRE(passed);
}

// For the linear-layer tests: inputs in [-1, 1], so sum |terms| <= K (+ 1 for a bias).
tolerance linear_tolerance(index_t K) {
    return {roundings(K) * unit_roundoff * static_cast<double>(K + 1), 0.0, 1e-5};
}

using gemm_fn = void (*)(tensor_view<float, 2>, tensor_view<const float, 2>, tensor_view<const float, 2>, float,
                         float);

struct implementation {
    const char* name;
    gemm_fn fn;
};

// Every implementation this build has.
std::vector<implementation> implementations() {
    std::vector<implementation> out{{"gemm_blocked", &cpu::gemm_blocked}, {"gemm", &cpu::gemm}};
#if defined(TINYLLM_HAVE_BLAS)
    out.push_back({"gemm_blas", &cpu::gemm_blas});
#endif
    return out;
}

// Sets the thread count for one scope, restoring the default after.
struct threads_scope {
    explicit threads_scope(int n) { cpu::set_num_threads(n); }
    ~threads_scope() { cpu::set_num_threads(0); }
};

// One product C = alpha op(A) op(B) + beta C by `impl`, checked against the reference.
void check_product(const implementation& impl, index_t M, index_t N, index_t K, bool ta, bool tb, float alpha,
                   float beta, std::uint64_t which) {
    const operand a = make_operand(M, K, ta, which);
    const operand b = make_operand(K, N, tb, which + 1);
    tensor<float, 2> c = uniform(extents<2>{M, N}, which + 2);
    if (beta == 0.0f) c.values().assign(c.values().size(), nan_value);  // must be overwritten, never read
    const reference want = reference_gemm(a.view, b.view, alpha, beta, c.values());
    impl.fn(c, a.view, b.view, alpha, beta);
    const std::string what = std::string(impl.name) + " (" + std::to_string(M) + ", " + std::to_string(N) + ", " +
                             std::to_string(K) + ")" + (ta ? " A^T" : "") + (tb ? " B^T" : "") +
                             " alpha " + std::to_string(alpha) + " beta " + std::to_string(beta);
    require_within_bounds(c.values(), want, K, what);
}

}  // namespace

TEST_CASE("gemm matches the double reference for every transpose case and odd sizes", "[gemm]") {
    INFO("blocked micro-kernel: " << cpu::gemm_blocked_kernel_name() << "; BLAS: " << cpu::have_blas);
    std::printf("gemm_blocked runs the %s micro-kernel; BLAS %s\n", cpu::gemm_blocked_kernel_name(),
                cpu::have_blas ? "present" : "absent");
    const std::vector<index_t> small = {1, 3, 17, 65};
    // (M, N, K) with the larger sizes: none a multiple of the blocks (MR 6, NR 8 or 16,
    // MC 96, KC 256, NC 2048), K past one depth block, N past one panel of B.
    const std::vector<std::array<index_t, 3>> large = {{129, 65, 300}, {300, 17, 129}, {65, 300, 300},
                                                       {1, 300, 129},   {300, 129, 1},  {129, 300, 65},
                                                       {7, 2100, 300}, {8, 2100, 300}, {9, 2100, 300}};
    std::uint64_t which = 100;
    for (const auto& impl : implementations())
        for (int threads : {1, 2}) {
            const threads_scope scope(threads);
            INFO(impl.name << " on " << threads << " thread(s)");
            for (bool ta : {false, true})
                for (bool tb : {false, true}) {
                    for (index_t M : small)
                        for (index_t N : small)
                            for (index_t K : small) check_product(impl, M, N, K, ta, tb, 1.0f, 0.0f, which += 3);
                    for (const auto& s : large) check_product(impl, s[0], s[1], s[2], ta, tb, 1.0f, 0.0f, which += 3);
                }
        }
}

TEST_CASE("gemm scales by alpha and adds beta C (beta = 0 never reads C)", "[gemm]") {
    std::uint64_t which = 1000;
    for (const auto& impl : implementations())
        for (int threads : {1, 2}) {
            const threads_scope scope(threads);
            INFO(impl.name << " on " << threads << " thread(s)");
            for (float alpha : {1.0f, 0.5f, -1.5f})
                for (float beta : {0.0f, 1.0f, 0.25f}) {
                    check_product(impl, 65, 129, 300, false, true, alpha, beta, which += 3);
                    check_product(impl, 17, 3, 1, true, false, alpha, beta, which += 3);
                }
            // alpha = 0: C = beta C, A and B not needed.
            check_product(impl, 17, 65, 129, false, false, 0.0f, 0.5f, which += 3);
            check_product(impl, 17, 65, 129, false, false, 0.0f, 0.0f, which += 3);
        }
}

TEST_CASE("gemm on 1 and 2 threads gives the same bits (gemm_blocked)", "[gemm]") {
    // Many rows (the blocked path, split into a grid) and 3 rows (dot products, split by column).
    for (const index_t M : {300, 3}) {
        const operand a = make_operand(M, 129, false, 2000);
        const operand b = make_operand(129, 3000, true, 2001);
        tensor<float, 2> one({M, 3000}, nan_value), two({M, 3000}, nan_value);
        {
            const threads_scope scope(1);
            cpu::gemm_blocked(one, a.view, b.view);
        }
        {
            const threads_scope scope(2);
            cpu::gemm_blocked(two, a.view, b.view);
        }
        INFO("M = " << M);
        CHECK(one.values() == two.values());
        REQUIRE(std::none_of(one.values().begin(), one.values().end(), [](float v) { return std::isnan(v); }));
    }
}

TEST_CASE("gemm writes through strided, transposed and reversed views of C and reads such A and B", "[gemm]") {
    const index_t M = 67, N = 33, K = 129;
    for (const auto& impl : implementations()) {
        INFO(impl.name);
        const operand a = make_operand(M, K, false, 3000);
        const operand b = make_operand(K, N, true, 3001);
        const reference want = reference_gemm(a.view, b.view, 1.0f, 0.0f, {});

        // C inside a wider buffer (row stride N + 5): the columns past N stay untouched.
        tensor<float, 2> wide({M, N + 5}, 7.0f);
        auto c_wide = wide.view().narrow(1, 0, N);
        for (index_t i = 0; i < M; ++i)
            for (index_t j = 0; j < N; ++j) c_wide(i, j) = nan_value;
        impl.fn(c_wide, a.view, b.view, 1.0f, 0.0f);
        require_within_bounds(values_of(c_wide), want, K, std::string(impl.name) + " C with row stride N + 5");
        for (index_t i = 0; i < M; ++i)
            for (index_t j = N; j < N + 5; ++j) REQUIRE(wide(i, j) == 7.0f);

        // C column-major: the transposed view of an (N, M) matrix.
        tensor<float, 2> ct({N, M}, nan_value);
        impl.fn(ct.view().transpose(0, 1), a.view, b.view, 1.0f, 0.0f);
        require_within_bounds(values_of(ct.view().transpose(0, 1)), want, K, std::string(impl.name) + " column-major C");

        // No unit stride anywhere (every other element), and A read backwards: BLAS
        // cannot take these; gemm_blas hands them to the blocked kernel.
        tensor<float, 2> sparse_c({2 * M, 2 * N}, nan_value);
        tensor_view<float, 2> c_sparse(sparse_c.data(), {M, N}, {4 * N, 2});
        tensor<float, 2> sparse_a({2 * M, 2 * K});
        tensor_view<float, 2> a_sparse(sparse_a.data(), {M, K}, {4 * K, 2});
        for (index_t i = 0; i < M; ++i)
            for (index_t k = 0; k < K; ++k) a_sparse(i, k) = a.view(i, k);
        tensor<float, 2> reversed_b({K, N});
        tensor_view<float, 2> b_reversed(reversed_b.data() + (K * N - 1), {K, N}, {-N, -1});
        for (index_t k = 0; k < K; ++k)
            for (index_t j = 0; j < N; ++j) b_reversed(k, j) = b.view(k, j);
        impl.fn(c_sparse, a_sparse, b_reversed, 1.0f, 0.0f);
        require_within_bounds(values_of(c_sparse), want, K, std::string(impl.name) + " strides 2 and reversed B");
    }
}

TEST_CASE("gemm with an empty dimension: nothing, or C = beta C when K = 0", "[gemm]") {
    for (const auto& impl : implementations()) {
        INFO(impl.name);
        tensor<float, 2> a0({0, 4}), b0({4, 3}), c0({0, 3});
        impl.fn(c0, a0, b0, 1.0f, 0.0f);  // M = 0: nothing to do
        tensor<float, 2> a({5, 0}), b({0, 3}), c({5, 3}, nan_value);
        impl.fn(c, a, b, 1.0f, 0.0f);  // K = 0, beta = 0: zeros
        for (float v : c.values()) CHECK(v == 0.0f);
        tensor<float, 2> d({5, 3}, 2.0f);
        impl.fn(d, a, b, 1.0f, 0.5f);  // K = 0: beta C
        for (float v : d.values()) CHECK(v == 1.0f);
    }
}

TEST_CASE("gemm rejects mismatched shapes and overlapping memory, saying what was wrong", "[gemm][errors]") {
    tensor<float, 2> a({4, 5}), b({5, 3}), c({4, 3}), bad_b({4, 3}), bad_c({3, 4});
    for (const auto& impl : implementations()) {
        const std::string op = impl.name;
        CHECK_THROWS_WITH(impl.fn(c, a, bad_b, 1.0f, 0.0f),
                          tinyllm_test::contains(op + ": a is (4, 5) and b is (4, 3); a's columns must equal b's rows"));
        CHECK_THROWS_WITH(impl.fn(bad_c, a, b, 1.0f, 0.0f),
                          tinyllm_test::contains(op + ": c has shape (3, 4) but (rows of a, columns of b) = (4, 3) "
                                                      "is required"));
        tensor<float, 2> sq({4, 4}), sq_b({4, 4});
        CHECK_THROWS_WITH(impl.fn(sq, sq, sq_b, 1.0f, 0.0f),
                          tinyllm_test::contains(op + ": c must not share memory with a or b"));
        // Partial overlap: C is the lower half of the buffer that A's rows run through.
        tensor<float, 2> buf({8, 4});
        CHECK_THROWS_WITH(impl.fn(buf.view().narrow(0, 2, 4), buf.view().narrow(0, 0, 4), sq_b, 1.0f, 0.0f),
                          tinyllm_test::contains(op + ": c must not share memory"));
    }
    CHECK_THROWS_WITH(cpu::set_num_threads(-1), tinyllm_test::contains("set_num_threads: n = -1 must be at least 1"));
}

// ---- linear_gemm, linear_backward_gemm against the references in ffn.hpp ------------------

TEST_CASE("linear_gemm matches cpu::linear, with and without bias, (B, T, K) and Conv1D weights", "[gemm][ffn]") {
    const index_t B = 2, T = 65, K = 129, N = 300;
    const auto x = uniform(extents<3>{B, T, K}, 4000);
    const auto w = uniform(extents<2>{N, K}, 4001);
    const auto bias = uniform(extents<1>{N}, 4002);
    const tolerance tol = linear_tolerance(K);
    for (int threads : {1, 2}) {
        const threads_scope scope(threads);
        INFO(threads << " thread(s)");
        tensor<float, 3> want({B, T, N}), got({B, T, N}, nan_value);
        cpu::linear(want, x, w, bias);
        cpu::linear_gemm(got, x, w, bias);
        TINYLLM_REQUIRE_CLOSE(got.values(), want.values(), tol, "linear_gemm with bias vs linear");

        tensor<float, 3> want0({B, T, N}), got0({B, T, N}, nan_value);
        cpu::linear(want0, x, w, tensor_view<const float, 1>{});
        cpu::linear_gemm(got0, x, w, tensor_view<const float, 1>{});
        TINYLLM_REQUIRE_CLOSE(got0.values(), want0.values(), tol, "linear_gemm without bias vs linear");

        // GPT-2's Conv1D stores the weight (K, N): passed as its transposed view.
        tensor<float, 2> wt({K, N});
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) wt(k, n) = w(n, k);
        tensor<float, 3> got_t({B, T, N}, nan_value);
        cpu::linear_gemm(got_t, x, wt.view().transpose(0, 1), bias);
        TINYLLM_REQUIRE_CLOSE(got_t.values(), want.values(), tol, "linear_gemm, Conv1D weight, vs linear");

        // matmul_gemm: a b with b (K, N) is linear with weight b^T.
        tensor<float, 2> mm({B * T, N}, nan_value);
        cpu::matmul_gemm(mm, reshape(x, {B * T, K}), wt);
        TINYLLM_REQUIRE_CLOSE(mm.values(), want0.values(), tol, "matmul_gemm vs linear");
    }
    // An empty output is nothing to do.
    tensor<float, 2> x0({0, K}), out0({0, N});
    cpu::linear_gemm(out0, x0, w, bias);
}

TEST_CASE("linear_gemm's few-rows path gives each row the same bits whatever rows it shares the call with",
          "[gemm][ffn]") {
    // Speculative decoding verifies drafted tokens in one forward over k + 1 positions
    // and compares its choices with decoding one position at a time: a row's product
    // must not depend on its neighbours. Rows 1 to 8 (4 rows per load of the weight),
    // float and bf16 weights, K with a tail (300 = 2 x 8 x 18 + 12), 1 and 2 threads.
    const index_t N = 37, K = 300;
    const auto w = uniform(extents<2>{N, K}, 7001);
    tensor<tinyllm::bfloat16, 2> w16(extents<2>{N, K});
    for (index_t i = 0; i < w.size(); ++i) w16.data()[i] = tinyllm::float_to_bf16(w.data()[i]);
    const auto x = uniform(extents<2>{8, K}, 7002);
    for (int threads : {1, 2}) {
        const threads_scope scope(threads);
        for (index_t rows = 1; rows <= 8; ++rows) {
            tensor<float, 2> together(extents<2>{rows, N}), alone(extents<2>{1, N});
            tensor<float, 2> together16(extents<2>{rows, N}), alone16(extents<2>{1, N});
            const auto xs = tensor_view<const float, 2>(x.view()).narrow(0, 0, rows);
            cpu::linear_gemm(together, xs, w, {});
            cpu::linear_gemm(together16.view(), xs, tensor_view<const tinyllm::bfloat16, 2>(w16.view()), {});
            for (index_t r = 0; r < rows; ++r) {
                const auto xr = xs.narrow(0, r, 1);
                cpu::linear_gemm(alone, xr, w, {});
                cpu::linear_gemm(alone16.view(), xr, tensor_view<const tinyllm::bfloat16, 2>(w16.view()), {});
                for (index_t n = 0; n < N; ++n) {
                    INFO("rows " << rows << ", row " << r << ", column " << n << ", " << threads << " thread(s)");
                    REQUIRE(std::bit_cast<std::uint32_t>(together(r, n)) == std::bit_cast<std::uint32_t>(alone(0, n)));
                    REQUIRE(std::bit_cast<std::uint32_t>(together16(r, n)) == std::bit_cast<std::uint32_t>(alone16(0, n)));
                }
            }
        }
    }
}

TEST_CASE("linear_backward_gemm matches cpu::linear_backward: overwrite, accumulate, skipped outputs",
          "[gemm][ffn][backward]") {
    const index_t B = 3, T = 43, K = 129, N = 65;  // rows = 129: dweight sums over 129 rows
    const auto x = uniform(extents<3>{B, T, K}, 5000);
    const auto w = uniform(extents<2>{N, K}, 5001);
    const auto dout = uniform(extents<3>{B, T, N}, 5002);
    const index_t rows = B * T;
    const tolerance tol_dx = linear_tolerance(N), tol_dw = linear_tolerance(rows + 1);  // + 1: accumulate
    for (int threads : {1, 2}) {
        const threads_scope scope(threads);
        INFO(threads << " thread(s)");
        tensor<float, 3> dx_want({B, T, K}), dx({B, T, K}, nan_value);
        tensor<float, 2> dw_want({N, K}), dw({N, K}, nan_value);
        tensor<float, 1> db_want({N}), db({N}, nan_value);
        cpu::linear_backward(dx_want, dw_want, db_want, dout, x, w);
        cpu::linear_backward_gemm(dx, dw, db, dout, x, w);
        TINYLLM_REQUIRE_CLOSE(dx.values(), dx_want.values(), tol_dx, "linear_backward_gemm dx");
        TINYLLM_REQUIRE_CLOSE(dw.values(), dw_want.values(), tol_dw, "linear_backward_gemm dweight");
        TINYLLM_REQUIRE_CLOSE(db.values(), db_want.values(), tolerance{1e-6, 1e-6, 1e-6}, "linear_backward_gemm dbias");

        // accumulate: added to what is there (both start from the same values).
        tensor<float, 2> dw_acc_want = uniform(extents<2>{N, K}, 5003), dw_acc = dw_acc_want;
        tensor<float, 1> db_acc_want = uniform(extents<1>{N}, 5004), db_acc = db_acc_want;
        cpu::linear_backward({}, dw_acc_want, db_acc_want, dout, x, w, /*accumulate=*/true);
        cpu::linear_backward_gemm({}, dw_acc, db_acc, dout, x, w, /*accumulate=*/true);
        TINYLLM_REQUIRE_CLOSE(dw_acc.values(), dw_acc_want.values(), tol_dw, "accumulated dweight");
        TINYLLM_REQUIRE_CLOSE(db_acc.values(), db_acc_want.values(), tolerance{1e-6, 1e-6, 1e-6}, "accumulated dbias");

        // Conv1D layout: the weight and its gradient as transposed views; dx alone.
        tensor<float, 2> wt({K, N}), dwt({K, N}, nan_value);
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) wt(k, n) = w(n, k);
        cpu::linear_backward_gemm({}, dwt.view().transpose(0, 1), {}, dout, x, wt.view().transpose(0, 1));
        TINYLLM_REQUIRE_CLOSE(values_of(dwt.view().transpose(0, 1)), dw_want.values(), tol_dw,
                              "dweight through transposed views");
        tensor<float, 3> dx_only({B, T, K}, nan_value);
        cpu::linear_backward_gemm(dx_only, {}, {}, dout, x, wt.view().transpose(0, 1));
        TINYLLM_REQUIRE_CLOSE(dx_only.values(), dx_want.values(), tol_dx, "dx alone, Conv1D weight");

        // matmul_backward_gemm against matmul_backward.
        const auto a2 = reshape(x, {rows, K});
        const auto d2 = reshape(dout, {rows, N});
        tensor<float, 2> da_want({rows, K}), db2_want({K, N}), da({rows, K}, nan_value), db2({K, N}, nan_value);
        cpu::matmul_backward(da_want, db2_want, d2, a2, wt);
        cpu::matmul_backward_gemm(da, db2, d2, a2, wt);
        TINYLLM_REQUIRE_CLOSE(da.values(), da_want.values(), tol_dx, "matmul_backward_gemm da");
        TINYLLM_REQUIRE_CLOSE(db2.values(), db2_want.values(), tol_dw, "matmul_backward_gemm db");
    }
}

TEST_CASE("linear_gemm and linear_backward_gemm reject what the references reject, by their own names",
          "[gemm][ffn][errors]") {
    tensor<float, 3> x({2, 3, 4}), dx({2, 3, 4}), dout({2, 3, 5});
    tensor<float, 2> w({5, 4}), dw({5, 4});
    tensor<float, 1> b({5}), db({5});
    tensor<float, 3> bad_out({2, 3, 4});
    CHECK_THROWS_WITH(cpu::linear_gemm(bad_out, x, w, b),
                      tinyllm_test::contains("linear_gemm: out has shape (6, 4) but (rows of x, out_features) = (6, 5)"));
    tensor<float, 1> bad_b({4});
    CHECK_THROWS_WITH(cpu::linear_gemm(dout, x, w, bad_b),
                      tinyllm_test::contains("linear_gemm: bias has 4 elements but the layer has 5 out_features"));
    tensor<float, 3> bad_dout({3, 2, 5});
    CHECK_THROWS_WITH(cpu::linear_backward_gemm(dx, dw, db, bad_dout, x, w),
                      tinyllm_test::contains("linear_backward_gemm: dout has shape (3, 2, 5) but x has shape (2, 3, 4)"));
    tensor<float, 2> bad_dw({4, 5});
    CHECK_THROWS_WITH(cpu::linear_backward_gemm(dx, bad_dw, db, dout, x, w),
                      tinyllm_test::contains("linear_backward_gemm: dweight has shape (4, 5) but weight has shape (5, 4)"));
    tensor<float, 2> sq({4, 4}), wsq({4, 4});
    CHECK_THROWS_WITH(cpu::linear_backward_gemm(sq, {}, {}, sq, sq, wsq),
                      tinyllm_test::contains("linear_backward_gemm: dx must not share memory with dout"));
}

// ---- linear_gemm with a bfloat16 weight --------------------------------------------------
//
// The weight is rounded from uniform floats to bf16 with the project's conversion
// (float_to_bf16, round to nearest even), so almost no weight is what it was: the
// product must be the float product with the widened weights float(bf16(w)), checked
// against a double reference of exactly that with the same n u sum|terms| bounds as
// gemm. A kernel that widened wrongly, or read the unrounded weights, is far outside
// them (checked below: the reference with the original floats is missed by a wide margin).

namespace {

using bf16 = tinyllm::bfloat16;

// A (N, K) weight in bf16, stored row-major (N, K), or (Conv1D) as a row-major
// (K, N) matrix seen through a transposed view, or inside a wider buffer (row stride
// K + 5, the columns past K NaN: never read).
struct bf16_weight {
    tensor<bf16, 2> storage;
    tensor_view<const bf16, 2> view;
};

enum class weight_layout { row_major, transposed, padded };

const char* layout_name(weight_layout l) {
    return l == weight_layout::row_major    ? "row-major"
           : l == weight_layout::transposed ? "transposed (Conv1D)"
                                            : "row stride K + 5";
}

bf16_weight make_bf16_weight(const tensor<bf16, 2>& w, weight_layout layout) {
    const index_t N = w.extent(0), K = w.extent(1);
    bf16_weight out;
    if (layout == weight_layout::row_major) {
        out.storage = w;
        out.view = out.storage.view();
    } else if (layout == weight_layout::transposed) {
        out.storage = tensor<bf16, 2>({K, N});
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) out.storage(k, n) = w(n, k);
        out.view = out.storage.view().transpose(0, 1);
    } else {
        out.storage = tensor<bf16, 2>({N, K + 5}, tinyllm::float_to_bf16(nan_value));
        for (index_t n = 0; n < N; ++n)
            for (index_t k = 0; k < K; ++k) out.storage(n, k) = w(n, k);
        out.view = out.storage.view().narrow(1, 0, K);
    }
    return out;
}

tensor<bf16, 2> to_bf16(const tensor<float, 2>& w) {
    tensor<bf16, 2> out(w.shape());
    for (std::size_t i = 0; i < w.values().size(); ++i) out.values()[i] = tinyllm::float_to_bf16(w.values()[i]);
    return out;
}

tensor<float, 2> widen(const tensor<bf16, 2>& w) {
    tensor<float, 2> out(w.shape());
    for (std::size_t i = 0; i < w.values().size(); ++i) out.values()[i] = tinyllm::bf16_to_float(w.values()[i]);
    return out;
}

// x weight^T + bias in double from the reference of x weight^T: bias added to the value
// and its magnitude to the terms' (as gemm's beta C).
reference with_bias(reference r, const tensor<float, 1>& bias, index_t N) {
    for (std::size_t at = 0; at < r.value.size(); ++at) {
        const double b = bias.values()[at % static_cast<std::size_t>(N)];
        r.value[at] += b;
        r.magnitude[at] += std::fabs(b);
    }
    return r;
}

}  // namespace

TEST_CASE("linear_gemm with a bfloat16 weight is the float product with the widened weight", "[gemm][ffn][bf16]") {
    const index_t N = 2100, K = 300;  // N past one packed panel (2048), neither a multiple of the tiles
    const tensor<float, 2> w_float = uniform(extents<2>{N, K}, 6000);
    const tensor<bf16, 2> w = to_bf16(w_float);
    const tensor<float, 2> w_wide = widen(w);
    const auto bias = uniform(extents<1>{N}, 6001);
    std::size_t rounded = 0;
    for (std::size_t i = 0; i < w_wide.values().size(); ++i) rounded += w_wide.values()[i] != w_float.values()[i];
    INFO(rounded << " of " << w_wide.values().size() << " weights changed by the rounding to bf16");
    REQUIRE(rounded > w_wide.values().size() * 9 / 10);  // the check below means something

    std::uint64_t which = 6100;
    // Rows 1 to 8: the few-rows dot products (4 rows per load of the weight, then the
    // rest: 5 = 4 + 1, 7 = 4 + 3); 9, 128, 200: the blocked kernel (200: past one 96-row
    // block of A). A transposed weight takes the blocked kernel at every row count (its
    // packing reads it along N).
    for (const index_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 128, 200}) {
        const auto x = uniform(extents<2>{rows, K}, which++);
        const reference plain = reference_gemm(x.view(), w_wide.view().transpose(0, 1), 1.0f, 0.0f, {});
        const reference biased = with_bias(plain, bias, N);
        for (const weight_layout layout :
             {weight_layout::row_major, weight_layout::transposed, weight_layout::padded}) {
            const bf16_weight wb = make_bf16_weight(w, layout);
            for (const int threads : {1, 2}) {
                const threads_scope scope(threads);
                for (const bool use_bias : {false, true}) {
                    tensor<float, 2> out({rows, N}, nan_value);
                    const tensor_view<const float, 1> b = use_bias ? bias.view() : tensor_view<const float, 1>{};
                    cpu::linear_gemm(out.view(), tensor_view<const float, 2>(x.view()), wb.view, b);
                    const std::string what = "linear_gemm bf16 (" + std::to_string(rows) + ", " + std::to_string(N) +
                                             ", " + std::to_string(K) + ") " + layout_name(layout) + ", " +
                                             std::to_string(threads) + " thread(s)" + (use_bias ? ", bias" : "");
                    require_within_bounds(out.values(), use_bias ? biased : plain, K, what);
                }
            }
        }
        // The same check against the unrounded float weights fails: the bounds tell a
        // correctly widened bf16 weight from the float it came from.
        {
            tensor<float, 2> out({rows, N}, nan_value);
            cpu::linear_gemm(out.view(), tensor_view<const float, 2>(x.view()), w.view(), {});
            const reference unrounded = reference_gemm(x.view(), w_float.view().transpose(0, 1), 1.0f, 0.0f, {});
            const double per_element = roundings(K) * unit_roundoff;
            std::size_t outside = 0;
            for (std::size_t i = 0; i < out.values().size(); ++i)
                outside += std::fabs(out.values()[i] - unrounded.value[i]) > per_element * unrounded.magnitude[i];
            INFO("rows " << rows << ": " << outside << " of " << out.values().size()
                         << " outputs outside the float bounds of the unrounded weights");
            CHECK(outside > out.values().size() / 2);
        }
    }
}

TEST_CASE("linear_gemm with a bfloat16 weight: (B, T, K) as the flattened call, tensors, NaN propagation",
          "[gemm][ffn][bf16]") {
    const index_t N = 300, K = 129;
    const tensor<bf16, 2> w = to_bf16(uniform(extents<2>{N, K}, 7000));
    const auto bias = uniform(extents<1>{N}, 7001);
    for (const int threads : {1, 2}) {
        const threads_scope scope(threads);
        // (B, T) = (2, 64): 128 rows, the blocked kernel; (1, 1): one decoded token.
        for (const auto& bt : {std::array<index_t, 2>{2, 64}, std::array<index_t, 2>{1, 1}}) {
            const index_t B = bt[0], T = bt[1], rows = B * T;
            INFO("B = " << B << ", T = " << T << ", " << threads << " thread(s)");
            const auto x = uniform(extents<3>{B, T, K}, 7002 + static_cast<std::uint64_t>(rows));
            tensor<float, 2> flat({rows, N}, nan_value);
            cpu::linear_gemm(flat.view(), reshape(x.view(), {rows, K}), w.view(), bias.view());
            tensor<float, 3> batched({B, T, N}, nan_value);
            cpu::linear_gemm(batched, x, w, bias);  // owning tensors: the (..., K) overload
            CHECK(batched.values() == flat.values());
            tensor<float, 3> no_bias({B, T, N}, nan_value);
            tensor<float, 2> flat_no_bias({rows, N}, nan_value);
            cpu::linear_gemm(no_bias, x, w, tensor_view<const float, 1>{});
            cpu::linear_gemm(flat_no_bias.view(), reshape(x.view(), {rows, K}), w.view(), {});
            CHECK(no_bias.values() == flat_no_bias.values());

            // NaN in x: its row is NaN everywhere, every other row unchanged.
            tensor<float, 3> x_nan = x;
            x_nan(B - 1, T - 1, K / 2) = nan_value;
            tensor<float, 3> got({B, T, N}, nan_value);
            cpu::linear_gemm(got, x_nan, w, bias);
            const index_t poisoned = rows - 1;
            for (index_t i = 0; i < rows; ++i)
                for (index_t n = 0; n < N; ++n) {
                    const float g = got.values()[static_cast<std::size_t>(i * N + n)];
                    const float f = batched.values()[static_cast<std::size_t>(i * N + n)];
                    if (i == poisoned) {
                        REQUIRE(std::isnan(g));
                    } else {
                        REQUIRE(g == f);
                    }
                }
        }
    }
    // A float weight still takes the float overloads, views or tensors.
    tensor<float, 2> wf({N, K}), x2({3, K}), out({3, N}, nan_value), out_t({3, N}, nan_value);
    cpu::linear_gemm(out.view(), tensor_view<const float, 2>(x2.view()), tensor_view<const float, 2>(wf.view()), {});
    cpu::linear_gemm(out_t, x2, wf, tensor_view<const float, 1>{});
    CHECK(out.values() == out_t.values());
    // Nothing to do for an empty output.
    tensor<float, 2> x0({0, K}), out0({0, N});
    cpu::linear_gemm(out0, x0, w, bias);
}

TEST_CASE("linear_gemm with a bfloat16 weight rejects mismatched shapes and overlapping memory",
          "[gemm][ffn][bf16][errors]") {
    tensor<float, 3> x({2, 3, 4}), out({2, 3, 5});
    tensor<bf16, 2> w({5, 4}), bad_w({5, 3});
    tensor<float, 1> b({5}), bad_b({4});
    CHECK_THROWS_WITH(cpu::linear_gemm(out, x, bad_w, b),
                      tinyllm_test::contains("linear_gemm: weight is (5, 3) = (out_features, in_features) but x (6, 4) "
                                             "has 4 features"));
    tensor<float, 3> bad_out({2, 3, 4});
    CHECK_THROWS_WITH(
        cpu::linear_gemm(bad_out, x, w, b),
        tinyllm_test::contains("linear_gemm: out has shape (6, 4) but (rows of x, out_features) = (6, 5)"));
    CHECK_THROWS_WITH(cpu::linear_gemm(out, x, w, bad_b),
                      tinyllm_test::contains("linear_gemm: bias has 4 elements but the layer has 5 out_features"));
    tensor<float, 3> other_leading({3, 2, 5});
    CHECK_THROWS_WITH(cpu::linear_gemm(other_leading, x, w, b),
                      tinyllm_test::contains("linear_gemm: out has shape (3, 2, 5) but x has shape (2, 3, 4)"));
    // out over x: the same memory, or rows 2 to 5 of the buffer whose rows 0 to 3 are x.
    tensor<float, 2> sq({4, 4});
    tensor<bf16, 2> w4({4, 4});
    CHECK_THROWS_WITH(cpu::linear_gemm(sq.view(), tensor_view<const float, 2>(sq.view()), w4.view(), {}),
                      tinyllm_test::contains("linear_gemm: out must not share memory with x, weight or bias"));
    tensor<float, 2> buf({8, 4});
    CHECK_THROWS_WITH(cpu::linear_gemm(buf.view().narrow(0, 2, 4),
                                       tensor_view<const float, 2>(buf.view().narrow(0, 0, 4)), w4.view(), {}),
                      tinyllm_test::contains("linear_gemm: out must not share memory with x, weight or bias"));
    // out over the weight's bytes (a float buffer seen as bf16).
    tensor<float, 2> shared({4, 4});
    const tensor_view<const bf16, 2> w_in_out(reinterpret_cast<const bf16*>(shared.data()), {4, 4});
    tensor<float, 2> x4({4, 4});
    CHECK_THROWS_WITH(cpu::linear_gemm(shared.view(), tensor_view<const float, 2>(x4.view()), w_in_out, {}),
                      tinyllm_test::contains("linear_gemm: out must not share memory with x, weight or bias"));
}

TEST_CASE("gemm and linear_gemm refuse an output that aliases an input or itself", "[gemm][errors]") {
    std::vector<float> memory(64, 1.0f);
    const std::vector<float> before = memory;
    const tensor_view<const float, 2> x(memory.data(), {3, 4});  // elements 0..11
    const std::vector<float> w(8, 0.5f), bias(2, 0.25f);
    const tensor_view<const float, 2> weight(w.data(), {2, 4});
    // out (3, 2) at element 4 overlaps x without starting where it does: linear_gemm
    // used to write the bias into it (corrupting x) before gemm found the overlap.
    const tensor_view<float, 2> out(memory.data() + 4, {3, 2});
    CHECK_THROWS_WITH(cpu::linear_gemm(out, x, weight, tensor_view<const float, 1>(bias.data(), {2})),
                      tinyllm_test::contains("linear_gemm: out must not share memory with x, weight or bias"));
    CHECK(memory == before);
    // C with a zero stride: every row of the product would land on the same elements.
    std::vector<float> c_memory(4, 0.0f);
    const std::vector<float> a_values(8, 1.0f);
    const tensor_view<float, 2> c(c_memory.data(), {4, 4}, {0, 1});
    CHECK_THROWS_WITH(cpu::gemm(c, tensor_view<const float, 2>(a_values.data(), {4, 2}),
                                tensor_view<const float, 2>(w.data(), {2, 4})),
                      tinyllm_test::contains("c has stride 0 in dimension 0"));
    // Strides that overlap without a zero: (1, 1) puts c(0, 1) and c(1, 0) at one address.
    std::vector<float> diagonal(8, 0.0f);
    CHECK_THROWS_WITH(
        cpu::gemm(tensor_view<float, 2>(diagonal.data(), {4, 4}, {1, 1}),
                  tensor_view<const float, 2>(a_values.data(), {4, 2}), tensor_view<const float, 2>(w.data(), {2, 4})),
        tinyllm_test::contains("c has shape (4, 4) and strides (1, 1), so two of its elements share"));
}
