// CUDA tests for the backward of linear and matmul through cuBLAS (ffn.cuh) and
// of bias + activation and multiply (activation.cuh), against the CPU references
// (ffn.hpp, activation.hpp; those are checked against finite differences in
// tests/test_backward.cpp), for float and bfloat16.
//
// Inputs are fresh random numbers rounded to the element type first, so the CPU
// reference (double inside, one rounding to float) sees exactly the values the
// GPU sees. Outputs are poisoned (NaN) before every launch; NaN never passes.
// Tolerances, per element |got - ref| <= abs + rel |ref| plus a relative-L2 bound:
//   float     cuBLAS accumulates in float over up to 300 terms of size ~1:
//             relative ~1e-6 seen; 1e-4 allowed per element, 1e-5 in L2, with
//             an absolute floor of 1e-4 for sums that cancel to ~0.
//   bfloat16  outputs rounded to bfloat16 (relative 2^-9): 1e-2 relative; a
//             float dweight from bfloat16 inputs is float-accurate (products of
//             bfloat16 are exact in float).
// Determinism: no float atomics; repeated runs are compared bit for bit.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/ffn.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::activation;
using tinyllm::bfloat16;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::tensor_view;
using tinyllm_test::download;
using tinyllm_test::round_to;
using tinyllm_test::tolerance;
using tinyllm_test::upload;

namespace {

template <class T>
tolerance tol_for() {
    if constexpr (std::is_same_v<T, float>) return {1e-4, 1e-4, 1e-5};
    else return {1e-3, 1e-2, 5e-3};
}

std::uint64_t seed_for(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

// n normal values rounded to T (returned as floats).
template <class T>
std::vector<float> normal_as(std::size_t n, std::uint64_t which, float stddev = 1.0f) {
    std::vector<float> v(n);
    cpu::fill_normal(tensor_view<float, 1>(v.data(), {static_cast<index_t>(n)}), seed_for(which), 0.0f, stddev);
    round_to<T>(v);
    return v;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
std::string label(const std::string& what, index_t rows, index_t K, index_t N) {
    return what + " " + std::string(tinyllm::dtype_name<T>()) + " (rows " + std::to_string(rows) + ", K " +
           std::to_string(K) + ", N " + std::to_string(N) + ")";
}

// A (rows, cols) host view of a vector.
tensor_view<float, 2> hview(std::vector<float>& v, index_t rows, index_t cols) { return {v.data(), {rows, cols}}; }
tensor_view<const float, 2> hcview(const std::vector<float>& v, index_t rows, index_t cols) {
    return {v.data(), {rows, cols}};
}

struct linear_case {
    index_t rows, K, N;
    bool bias, conv1d, accumulate, want_dx;
};

// linear_backward on the GPU against cpu::linear_backward. conv1d: the weight is
// stored (K, N) and passed transposed, as is dweight (GPT-2's layout).
template <class T, class G = T>
void check_linear_backward(const linear_case& c, std::uint64_t which) {
    const index_t rows = c.rows, K = c.K, N = c.N;
    const auto x = normal_as<T>(static_cast<std::size_t>(rows * K), which);
    const auto w = normal_as<T>(static_cast<std::size_t>(N * K), which + 1);  // (N, K), or (K, N) for conv1d
    const auto dout = normal_as<T>(static_cast<std::size_t>(rows * N), which + 2);
    const auto dw0 = normal_as<G>(static_cast<std::size_t>(N * K), which + 3);  // the gradient already there
    const auto db0 = normal_as<G>(static_cast<std::size_t>(N), which + 4);

    // The CPU reference (float in and out, double inside).
    std::vector<float> ref_dx(static_cast<std::size_t>(rows * K)), ref_dw = dw0, ref_db = db0;
    const tensor_view<const float, 2> hw = c.conv1d ? hcview(w, K, N).transpose(0, 1) : hcview(w, N, K);
    const tensor_view<float, 2> hdw = c.conv1d ? hview(ref_dw, K, N).transpose(0, 1) : hview(ref_dw, N, K);
    cpu::linear_backward(c.want_dx ? hview(ref_dx, rows, K) : tensor_view<float, 2>{}, hdw,
                         c.bias ? tensor_view<float, 1>(ref_db.data(), {N}) : tensor_view<float, 1>{},
                         hcview(dout, rows, N), hcview(x, rows, K), hw, c.accumulate);

    tc::cublas_handle handle;
    auto d_x = upload<T>(x), d_w = upload<T>(w), d_dout = upload<T>(dout);
    tc::device_buffer<T> d_dx(static_cast<std::size_t>(rows * K));
    auto d_dw = upload<G>(dw0), d_db = upload<G>(db0);
    std::vector<std::vector<float>> first;
    for (int run = 0; run < 2; ++run) {
        d_dx.poison();
        if (c.accumulate) {
            d_dw = upload<G>(dw0);
            d_db = upload<G>(db0);
        } else {
            d_dw.poison();
            d_db.poison();
        }
        const tensor_view<const T, 2> dw_w =
            c.conv1d ? d_w.view(extents<2>{K, N}).transpose(0, 1) : d_w.view(extents<2>{N, K});
        const tensor_view<G, 2> dw_v =
            c.conv1d ? d_dw.view(extents<2>{K, N}).transpose(0, 1) : d_dw.view(extents<2>{N, K});
        tc::linear_backward<T, G>(c.want_dx ? d_dx.view(extents<2>{rows, K}) : tensor_view<T, 2>{}, dw_v,
                                  c.bias ? d_db.view(extents<1>{N}) : tensor_view<G, 1>{},
                                  d_dout.view(extents<2>{rows, N}), d_x.view(extents<2>{rows, K}), dw_w, handle,
                                  c.accumulate);
        std::vector<std::vector<float>> got = {c.want_dx ? download(d_dx) : std::vector<float>{}, download(d_dw),
                                               c.bias ? download(d_db) : std::vector<float>{}};
        if (run == 0) {
            const std::string name =
                label<T>(std::string("linear_backward") + (c.conv1d ? " conv1d" : "") + (c.accumulate ? " accumulate" : "") +
                             (!std::is_same_v<G, T> ? " float gradients" : ""),
                         rows, K, N);
            tolerance t = tol_for<T>();
            if (c.want_dx) TINYLLM_REQUIRE_CLOSE(got[0], ref_dx, t, name + ": dx");
            TINYLLM_REQUIRE_CLOSE(got[1], ref_dw, tol_for<G>(), name + ": dweight");
            if (c.bias) TINYLLM_REQUIRE_CLOSE(got[2], ref_db, tol_for<G>(), name + ": dbias");
            first = got;
        } else {
            for (std::size_t i = 0; i < got.size(); ++i) CHECK(bit_equal(got[i], first[i]));
        }
    }
}

}  // namespace

TEST_CASE("linear_backward matches the CPU reference", "[cuda][ffn][backward]") {
    std::uint64_t which = 100;
    for (const linear_case c : {linear_case{37, 48, 40, true, false, false, true},
                                linear_case{300, 64, 24, true, false, false, true},
                                linear_case{1, 5, 3, true, false, false, true},
                                linear_case{9, 16, 33, false, false, false, true},
                                linear_case{20, 24, 8, true, true, false, true},
                                linear_case{13, 8, 12, true, false, true, false},
                                linear_case{13, 8, 12, true, true, true, true}}) {
        check_linear_backward<float>(c, which);
        check_linear_backward<bfloat16>(c, which + 10);
        which += 20;
    }
    // bfloat16 activations and weights, float gradients (mixed precision).
    check_linear_backward<bfloat16, float>({37, 48, 40, true, false, false, true}, 300);
    check_linear_backward<bfloat16, float>({11, 8, 12, true, true, true, true}, 310);
}

TEST_CASE("linear_backward of no rows zeroes dweight and dbias (or leaves them, accumulating)",
          "[cuda][ffn][backward]") {
    const index_t K = 4, N = 3;
    tc::cublas_handle handle;
    tc::device_buffer<float> d_x(1), d_dout(1), d_dx(1);
    auto d_w = upload<float>(normal_as<float>(static_cast<std::size_t>(N * K), 400));
    const auto before = normal_as<float>(static_cast<std::size_t>(N * K), 401);
    auto d_dw = upload<float>(before);
    auto d_db = upload<float>(std::vector<float>(static_cast<std::size_t>(N), 5.0f));
    const tensor_view<const float, 2> x(d_x.data(), {0, K}), dout(d_dout.data(), {0, N});
    tc::linear_backward<float>(tensor_view<float, 2>(d_dx.data(), {0, K}), d_dw.view(extents<2>{N, K}),
                               d_db.view(extents<1>{N}), dout, x, d_w.view(extents<2>{N, K}), handle, true);
    CHECK(bit_equal(download(d_dw), before));
    CHECK(download(d_db) == std::vector<float>(static_cast<std::size_t>(N), 5.0f));
    tc::linear_backward<float>(tensor_view<float, 2>(d_dx.data(), {0, K}), d_dw.view(extents<2>{N, K}),
                               d_db.view(extents<1>{N}), dout, x, d_w.view(extents<2>{N, K}), handle);
    CHECK(download(d_dw) == std::vector<float>(static_cast<std::size_t>(N * K), 0.0f));
    CHECK(download(d_db) == std::vector<float>(static_cast<std::size_t>(N), 0.0f));
}

TEST_CASE("matmul_backward and (B, T, K) linear_backward match the CPU reference", "[cuda][ffn][backward]") {
    const index_t M = 19, K = 12, N = 21;
    const auto a = normal_as<float>(static_cast<std::size_t>(M * K), 500);
    const auto b = normal_as<float>(static_cast<std::size_t>(K * N), 501);
    const auto dout = normal_as<float>(static_cast<std::size_t>(M * N), 502);
    std::vector<float> ref_da(static_cast<std::size_t>(M * K)), ref_db(static_cast<std::size_t>(K * N));
    cpu::matmul_backward(hview(ref_da, M, K), hview(ref_db, K, N), hcview(dout, M, N), hcview(a, M, K),
                         hcview(b, K, N));
    tc::cublas_handle handle;
    auto d_a = upload<float>(a), d_b = upload<float>(b), d_dout = upload<float>(dout);
    tc::device_buffer<float> d_da(ref_da.size()), d_db(ref_db.size());
    d_da.poison();
    d_db.poison();
    tc::matmul_backward<float>(d_da.view(extents<2>{M, K}), d_db.view(extents<2>{K, N}), d_dout.view(extents<2>{M, N}),
                               d_a.view(extents<2>{M, K}), d_b.view(extents<2>{K, N}), handle);
    TINYLLM_REQUIRE_CLOSE(download(d_da), ref_da, tol_for<float>(), "matmul_backward da");
    TINYLLM_REQUIRE_CLOSE(download(d_db), ref_db, tol_for<float>(), "matmul_backward db");

    // (B, T, K) activations through the any-rank overload, no dx: the same bits as (rows, K),
    // which match the CPU reference.
    const index_t B = 3, T = 5, Kx = 6, Nx = 7;
    const auto hx = normal_as<float>(static_cast<std::size_t>(B * T * Kx), 510);
    const auto hw = normal_as<float>(static_cast<std::size_t>(Nx * Kx), 511);
    const auto hy = normal_as<float>(static_cast<std::size_t>(B * T * Nx), 512);
    std::vector<float> ref_dx(hx.size()), ref_dw(hw.size());
    cpu::linear_backward(hview(ref_dx, B * T, Kx), hview(ref_dw, Nx, Kx), tensor_view<float, 1>{}, hcview(hy, B * T, Nx),
                         hcview(hx, B * T, Kx), hcview(hw, Nx, Kx));
    auto d_x = upload<float>(hx), d_w = upload<float>(hw), d_y = upload<float>(hy);
    tc::device_buffer<float> dw3(static_cast<std::size_t>(Nx * Kx)), dw2(dw3.size()), dx3(static_cast<std::size_t>(B * T * Kx)),
        dx2(dx3.size());
    dw3.poison();
    dw2.poison();
    dx3.poison();
    dx2.poison();
    tc::linear_backward({}, dw3.view(extents<2>{Nx, Kx}), {}, d_y.view(extents<3>{B, T, Nx}),
                        d_x.view(extents<3>{B, T, Kx}), d_w.view(extents<2>{Nx, Kx}), handle);
    tc::linear_backward(dx2.view(extents<2>{B * T, Kx}), dw2.view(extents<2>{Nx, Kx}), {},
                        d_y.view(extents<2>{B * T, Nx}), d_x.view(extents<2>{B * T, Kx}), d_w.view(extents<2>{Nx, Kx}),
                        handle);
    tc::linear_backward(dx3.view(extents<3>{B, T, Kx}), {}, {}, d_y.view(extents<3>{B, T, Nx}),
                        d_x.view(extents<3>{B, T, Kx}), d_w.view(extents<2>{Nx, Kx}), handle);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dw2), ref_dw, tol_for<float>(), "(rows, K) linear_backward dw");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(dx2), ref_dx, tol_for<float>(), "(rows, K) linear_backward dx");
    CHECK(bit_equal(tc::to_host(dw3), tc::to_host(dw2)));
    CHECK(bit_equal(tc::to_host(dx3), tc::to_host(dx2)));
}

TEST_CASE("linear_backward rejects mismatched shapes with the CPU's messages", "[cuda][ffn][backward][errors]") {
    tc::cublas_handle handle;
    tc::device_buffer<float> d_x(12), d_w(12), d_dout(9), d_dw(12);
    const auto x = d_x.view(extents<2>{3, 4});
    const auto w = d_w.view(extents<2>{3, 4});
    CHECK_THROWS_WITH(tc::linear_backward<float>({}, d_dw.view(extents<2>{3, 4}), {}, d_dout.view(extents<2>{3, 3}), x,
                                                 d_w.view(extents<2>{4, 3}), handle),
                      tinyllm_test::contains("linear_backward: weight is (4, 3) = (out_features, in_features)"));
    CHECK_THROWS_WITH(tc::linear_backward<float>({}, d_dw.view(extents<2>{4, 3}), {}, d_dout.view(extents<2>{3, 3}), x,
                                                 w, handle),
                      tinyllm_test::contains("linear_backward: dweight has shape (4, 3) but weight has shape (3, 4)"));
    CHECK_THROWS_WITH(tc::matmul_backward<float>({}, {}, d_dout.view(extents<2>{3, 3}), x, d_w.view(extents<2>{3, 4}),
                                                 handle),
                      tinyllm_test::contains("matmul_backward: a is (3, 4) and b is (3, 4)"));
}

// ---- bias + activation, multiply ----------------------------------------------------------

namespace {

template <class T>
void check_bias_activate_backward(index_t rows, index_t cols, activation kind, bool want_dbias, bool accumulate,
                                  std::uint64_t which) {
    const auto x = normal_as<T>(static_cast<std::size_t>(rows * cols), which, 2.0f);
    const auto bias = normal_as<T>(static_cast<std::size_t>(cols), which + 1);
    const auto dout = normal_as<T>(static_cast<std::size_t>(rows * cols), which + 2);
    const auto db0 = normal_as<T>(static_cast<std::size_t>(cols), which + 3);
    std::vector<float> ref_dx(x.size()), ref_db = db0;
    cpu::bias_activate_backward(hview(ref_dx, rows, cols),
                                want_dbias ? tensor_view<float, 1>(ref_db.data(), {cols}) : tensor_view<float, 1>{},
                                hcview(dout, rows, cols), hcview(x, rows, cols),
                                tensor_view<const float, 1>(bias.data(), {cols}), kind, accumulate);
    auto d_x = upload<T>(x), d_bias = upload<T>(bias), d_dout = upload<T>(dout);
    tc::device_buffer<T> d_dx(x.size());
    auto d_db = upload<T>(db0);
    std::vector<float> first_dx, first_db;
    for (int run = 0; run < 2; ++run) {
        d_dx.poison();
        if (accumulate) d_db = upload<T>(db0);
        else d_db.poison();
        tc::bias_activate_backward<T>(d_dx.view(extents<2>{rows, cols}),
                                      want_dbias ? d_db.view(extents<1>{cols}) : tensor_view<T, 1>{},
                                      d_dout.view(extents<2>{rows, cols}), d_x.view(extents<2>{rows, cols}),
                                      d_bias.view(extents<1>{cols}), kind, accumulate);
        const auto dx = download(d_dx), db = download(d_db);
        if (run == 0) {
            const std::string name = "bias_activate_backward " + std::string(tinyllm::activation_name(kind)) + " " +
                                     std::string(tinyllm::dtype_name<T>()) + " (" + std::to_string(rows) + ", " +
                                     std::to_string(cols) + ")" + (accumulate ? " accumulate" : "");
            TINYLLM_REQUIRE_CLOSE(dx, ref_dx, tol_for<T>(), name + ": dx");
            if (want_dbias) TINYLLM_REQUIRE_CLOSE(db, ref_db, tol_for<T>(), name + ": dbias");
            first_dx = dx;
            first_db = db;
        } else {
            CHECK(bit_equal(dx, first_dx));
            if (want_dbias) CHECK(bit_equal(db, first_db));
        }
    }
}

}  // namespace

TEST_CASE("bias_activate_backward matches the CPU reference, dbias deterministic", "[cuda][activation][backward]") {
    std::uint64_t which = 600;
    for (activation kind : {activation::gelu_tanh, activation::gelu_erf, activation::silu, activation::relu,
                            activation::identity}) {
        check_bias_activate_backward<float>(37, 72, kind, true, false, which);
        check_bias_activate_backward<bfloat16>(37, 72, kind, true, false, which + 4);
        which += 8;
    }
    check_bias_activate_backward<float>(300, 20, activation::gelu_tanh, true, true, 700);
    check_bias_activate_backward<float>(5, 13, activation::silu, false, false, 704);
    check_bias_activate_backward<bfloat16>(3, 1, activation::gelu_tanh, true, true, 708);

    // In place: dx is dout's memory.
    const index_t rows = 6, cols = 16;
    const auto x = normal_as<float>(static_cast<std::size_t>(rows * cols), 720);
    const auto bias = normal_as<float>(static_cast<std::size_t>(cols), 721);
    const auto dout = normal_as<float>(static_cast<std::size_t>(rows * cols), 722);
    std::vector<float> ref_dx(x.size()), ref_db(static_cast<std::size_t>(cols));
    cpu::bias_activate_backward(hview(ref_dx, rows, cols), tensor_view<float, 1>(ref_db.data(), {cols}),
                                hcview(dout, rows, cols), hcview(x, rows, cols),
                                tensor_view<const float, 1>(bias.data(), {cols}), activation::gelu_tanh);
    auto d_x = upload<float>(x), d_bias = upload<float>(bias), d_g = upload<float>(dout);
    tc::device_buffer<float> d_db(static_cast<std::size_t>(cols));
    d_db.poison();
    tc::bias_activate_backward(d_g.view(extents<3>{2, 3, cols}), d_db.view(extents<1>{cols}),
                               d_g.view(extents<3>{2, 3, cols}), d_x.view(extents<3>{2, 3, cols}),
                               d_bias.view(extents<1>{cols}), activation::gelu_tanh);
    TINYLLM_REQUIRE_CLOSE(download(d_g), ref_dx, tol_for<float>(), "bias_activate_backward in place: dx");
    TINYLLM_REQUIRE_CLOSE(download(d_db), ref_db, tol_for<float>(), "bias_activate_backward in place: dbias");
}

TEST_CASE("multiply_backward matches the CPU reference, also in place", "[cuda][activation][backward]") {
    for (const auto& [rows, cols] : std::vector<std::pair<index_t, index_t>>{{7, 64}, {3, 13}}) {
        // On the bfloat16 grid, so the bfloat16 run below sees the reference's inputs
        // and differs from it only by the one rounding of its outputs.
        const auto a = normal_as<bfloat16>(static_cast<std::size_t>(rows * cols), 800);
        const auto b = normal_as<bfloat16>(static_cast<std::size_t>(rows * cols), 801);
        const auto dout = normal_as<bfloat16>(static_cast<std::size_t>(rows * cols), 802);
        std::vector<float> ref_da(a.size()), ref_db(a.size());
        cpu::multiply_backward(hview(ref_da, rows, cols), hview(ref_db, rows, cols), hcview(dout, rows, cols),
                               hcview(a, rows, cols), hcview(b, rows, cols));
        auto d_a = upload<float>(a), d_b = upload<float>(b), d_dout = upload<float>(dout);
        tc::device_buffer<float> d_da(a.size()), d_db(a.size());
        d_da.poison();
        d_db.poison();
        tc::multiply_backward<float>(d_da.view(extents<2>{rows, cols}), d_db.view(extents<2>{rows, cols}),
                                     d_dout.view(extents<2>{rows, cols}), d_a.view(extents<2>{rows, cols}),
                                     d_b.view(extents<2>{rows, cols}));
        // A float product of floats is the CPU's double product rounded once: exact agreement.
        CHECK(bit_equal(download(d_da), ref_da));
        CHECK(bit_equal(download(d_db), ref_db));
        // In place: da is a's memory and db is b's.
        tc::multiply_backward(d_a.view(extents<2>{rows, cols}), d_b.view(extents<2>{rows, cols}),
                              d_dout.view(extents<2>{rows, cols}), d_a.view(extents<2>{rows, cols}),
                              d_b.view(extents<2>{rows, cols}));
        CHECK(bit_equal(download(d_a), ref_da));
        CHECK(bit_equal(download(d_b), ref_db));
        // bfloat16: the product of two bfloat16 values is exact in float, so the one
        // error is the rounding of the output (relative <= 2^-9 per element).
        auto d_a16 = upload<bfloat16>(a), d_b16 = upload<bfloat16>(b), d_dout16 = upload<bfloat16>(dout);
        tc::device_buffer<bfloat16> d_da16(a.size()), d_db16(a.size());
        d_da16.poison();
        d_db16.poison();
        tc::multiply_backward<bfloat16>(d_da16.view(extents<2>{rows, cols}), d_db16.view(extents<2>{rows, cols}),
                                        d_dout16.view(extents<2>{rows, cols}), d_a16.view(extents<2>{rows, cols}),
                                        d_b16.view(extents<2>{rows, cols}));
        TINYLLM_REQUIRE_CLOSE(download(d_da16), ref_da, tol_for<bfloat16>(), "multiply_backward bfloat16 da");
        TINYLLM_REQUIRE_CLOSE(download(d_db16), ref_db, tol_for<bfloat16>(), "multiply_backward bfloat16 db");
    }
}
