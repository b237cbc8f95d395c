// CUDA tests for the first backward kernels: the fused softmax cross-entropy
// (loss.cuh), the norm backwards (norm.cuh) and the activation backwards
// (activation.cuh), each against its CPU reference (loss.hpp, norm.hpp,
// activation.hpp; those are checked against finite differences in
// tests/test_backward.cpp), for float and bfloat16.
//
// Inputs are fresh random numbers (tinyllm::cpu::fill_normal, a new seed per
// process) rounded to the element type first, so the CPU reference (double
// inside, one rounding to float) sees exactly the values the GPU sees. Outputs
// are poisoned (NaN) before every launch; NaN never passes. Each comparison
// reports max-abs and relative-L2 errors. Tolerances, per element
// |got - ref| <= abs + rel |ref| plus a relative-L2 bound:
//   float     the kernels accumulate in float over up to V = 128256 terms
//             (log-sum-exp) or D = 4096 (norms): relative errors ~1e-6 seen,
//             2e-5 allowed (abs 1e-6 for the norms' sums that cancel to ~0).
//   bfloat16  outputs rounded to bfloat16 (relative 2^-9): 1e-2 relative.
// The loss itself is a float on both kinds of logits (float accumulation):
// relative 2e-5.
//
// Determinism: the kernels use no float atomics, so two runs are compared bit
// for bit; running this program with TINYLLM_SIM_SCHEDULE=random:SEED (the
// simulator's shuffled block and thread order) must give the same results.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/elements.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/loss.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/loss.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::activation;
using tinyllm::bfloat16;
using tinyllm::cross_entropy_options;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::loss_reduction;
using tinyllm::tensor_view;
using tinyllm::token_id;
using tinyllm_test::as_type;
using tinyllm_test::download;
using tinyllm_test::round_to;
using tinyllm_test::tolerance;
using tinyllm_test::upload;

namespace {

template <class T>
tolerance tol_for() {
    if constexpr (std::is_same_v<T, float>) return {1e-6, 2e-5, 1e-5};
    else return {1e-6, 1e-2, 5e-3};
}

template <class T>
std::string label(const std::string& what, index_t rows, index_t cols) {
    return what + " " + std::string(tinyllm::dtype_name<T>()) + " (" + std::to_string(rows) + ", " +
           std::to_string(cols) + ")";
}

std::uint64_t seed_for(std::uint64_t which) { return tinyllm_test::test_seed() + 0x9E3779B97F4A7C15ull * (which + 1); }

// n normal values (mean, stddev), rounded to T (returned as floats).
template <class T>
std::vector<float> normal_as(std::size_t n, std::uint64_t which, float mean = 0.0f, float stddev = 1.0f) {
    std::vector<float> v(n);
    cpu::fill_normal(tensor_view<float, 1>(v.data(), {static_cast<index_t>(n)}), seed_for(which), mean, stddev);
    round_to<T>(v);
    return v;
}

// FNV-1a of the bytes of v: printed by the determinism tests, so that runs with
// one TINYLLM_TEST_SEED and different TINYLLM_SIM_SCHEDULE seeds can be compared.
template <class T>
std::uint64_t fingerprint(const std::vector<T>& v, std::uint64_t h = 14695981039346656037ull) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    for (std::size_t i = 0; i < v.size() * sizeof(T); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

tensor_view<float, 2> view2(std::vector<float>& v, index_t rows, index_t cols) { return {v.data(), {rows, cols}}; }
tensor_view<const float, 2> cview2(const std::vector<float>& v, index_t rows, index_t cols) {
    return {v.data(), {rows, cols}};
}
tensor_view<float, 1> view1(std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }
tensor_view<const float, 1> cview1(const std::vector<float>& v) { return {v.data(), {static_cast<index_t>(v.size())}}; }

template <class T>
tensor_view<T, 2> dview2(tc::device_buffer<T>& b, index_t rows, index_t cols) {
    return b.view(extents<2>{rows, cols});
}
template <class T>
tensor_view<T, 1> dview1(tc::device_buffer<T>& b) {
    return b.view(extents<1>{static_cast<index_t>(b.size())});
}

// ---- cross-entropy ----------------------------------------------------------------------

// Random targets in [0, V), about `ignored` of them replaced by ignore_index.
std::vector<token_id> random_targets(index_t rows, index_t V, double ignored, token_id ignore_index,
                                     std::uint64_t which) {
    std::vector<float> u(static_cast<std::size_t>(2 * rows));
    cpu::fill_uniform(tensor_view<float, 1>(u.data(), {2 * rows}), seed_for(which), 0.0f, 1.0f);
    std::vector<token_id> t(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) {
        const auto i = static_cast<std::size_t>(r);
        t[i] = static_cast<token_id>(std::min<index_t>(V - 1, static_cast<index_t>(u[2 * i] * static_cast<float>(V))));
        if (u[2 * i + 1] < ignored) t[i] = ignore_index;
    }
    return t;
}

struct ce_result {
    float loss;
    std::vector<float> dlogits, losses;
};

// Run the GPU cross-entropy (out of place, or in place on a copy of the logits).
template <class T>
ce_result run_ce(const std::vector<float>& logits, const std::vector<token_id>& targets, index_t rows, index_t V,
                 const cross_entropy_options& opt, bool in_place) {
    auto d_logits = upload<T>(logits);
    auto d_targets = tc::to_device(targets);
    tc::device_buffer<T> d_grad(logits.size());
    tc::device_buffer<float> d_losses(static_cast<std::size_t>(rows));
    d_grad.poison();
    d_losses.poison();
    tc::device_buffer<T>& grad = in_place ? d_logits : d_grad;
    const tensor_view<const token_id, 1> tv = d_targets.view(extents<1>{rows});
    const float loss =
        tc::cross_entropy<T>(dview2(grad, rows, V), dview1(d_losses), dview2(d_logits, rows, V), tv, opt);
    return {loss, download(grad), tc::to_host(d_losses)};
}

// The reference gradient with (eps / V + (1 - eps) [j == t]) scale added back
// to the valid rows: each row's probabilities times scale (1 / valid rows for
// the mean, 1 for the sum); ignored rows stay 0.
std::vector<double> with_one_hot(const std::vector<float>& dlogits, const std::vector<token_id>& targets,
                                 index_t rows, index_t V, const cross_entropy_options& opt) {
    index_t valid = 0;
    for (const token_id t : targets) valid += t == opt.ignore_index ? 0 : 1;
    const double scale =
        opt.reduction == loss_reduction::sum ? 1.0 : (valid > 0 ? 1.0 / static_cast<double>(valid) : 0.0);
    const double eps = opt.label_smoothing;
    std::vector<double> p(dlogits.begin(), dlogits.end());
    for (index_t r = 0; r < rows; ++r) {
        const token_id t = targets[static_cast<std::size_t>(r)];
        if (t == opt.ignore_index) continue;
        for (index_t j = 0; j < V; ++j)
            p[static_cast<std::size_t>(r * V + j)] += (eps / static_cast<double>(V) + (j == t ? 1.0 - eps : 0.0)) * scale;
    }
    return p;
}

template <class T>
void check_cross_entropy(index_t rows, index_t V, const cross_entropy_options& opt, double ignored,
                         std::uint64_t which, const std::string& what) {
    const auto logits = normal_as<T>(static_cast<std::size_t>(rows * V), which, 0.0f, 3.0f);
    const auto targets = random_targets(rows, V, ignored, opt.ignore_index, which + 1);
    std::vector<float> ref(logits.size());
    const double ref_loss =
        cpu::cross_entropy(view2(ref, rows, V), cview2(logits, rows, V),
                           tensor_view<const token_id, 1>(targets.data(), {rows}), opt);
    // The rows' losses: the CPU's sum over each row alone.
    std::vector<float> ref_losses(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) {
        cross_entropy_options one = opt;
        one.reduction = loss_reduction::sum;
        std::vector<float> none;
        ref_losses[static_cast<std::size_t>(r)] = static_cast<float>(cpu::cross_entropy(
            tensor_view<float, 2>{}, tensor_view<const float, 2>(logits.data() + r * V, {1, V}),
            tensor_view<const token_id, 1>(targets.data() + r, {1}), one));
    }
    const std::string name = label<T>("cross_entropy " + what, rows, V);
    for (bool in_place : {false, true}) {
        const auto got = run_ce<T>(logits, targets, rows, V, opt, in_place);
        const std::string n = name + (in_place ? " in place" : "");
        TINYLLM_REQUIRE_CLOSE(std::vector<float>{got.loss}, std::vector<double>{ref_loss}, tolerance{1e-6, 2e-5, 2e-5},
                              n + ": loss");
        TINYLLM_REQUIRE_CLOSE(got.losses, ref_losses, tolerance{1e-5, 2e-5, 2e-5}, n + ": row losses");
        // The gradient scales with 1/n: the absolute tolerance follows it.
        tolerance t = tol_for<T>();
        t.abs *= 1.0 / static_cast<double>(rows);
        // dlogits = (p - eps / V - (1 - eps) [j == t]) scale cancels where a row is
        // confident: p_t = 0.993 leaves 0.007, and a float p good to a few units in
        // the last place of 1 is then good to ~3e-5 of what is left. So the gradient
        // is checked element by element, and as a whole against the larger of its
        // own size and that of what it is computed from, the probabilities p scale
        // (the gradient with the one-hot and smoothing terms added back):
        // ||got - ref|| / max(||ref||, ||p scale||).
        tolerance per_element = t;
        per_element.rel_l2 = std::numeric_limits<double>::infinity();
        TINYLLM_REQUIRE_CLOSE(got.dlogits, ref, per_element, n + ": dlogits");
        const std::vector<double> p = with_one_hot(ref, targets, rows, V, opt);
        double error2 = 0.0, ref2 = 0.0, p2 = 0.0;
        for (std::size_t i = 0; i < p.size(); ++i) {
            const double d = static_cast<double>(got.dlogits[i]) - static_cast<double>(ref[i]);
            error2 += d * d;
            ref2 += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
            p2 += p[i] * p[i];
        }
        const double size2 = std::max(ref2, p2);
        const double relative = size2 > 0.0 ? std::sqrt(error2 / size2) : std::sqrt(error2);
        INFO(n << ": dlogits, ||got - ref|| / max(||ref||, ||p scale||) = " << relative << " (tolerance " << t.rel_l2
               << ")");
        CHECK(relative <= t.rel_l2);
    }
}

TEST_CASE("cross_entropy matches the CPU reference", "[cuda][loss]") {
    const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1}, {1, 7}, {3, 32}, {4, 1000}, {2, 1025}, {5, 4099}};
    std::uint64_t which = 100;
    for (const auto& [rows, V] : shapes) {
        check_cross_entropy<float>(rows, V, {}, 0.0, which, "mean");
        check_cross_entropy<bfloat16>(rows, V, {}, 0.0, which + 2, "mean");
        which += 4;
    }
    cross_entropy_options smooth;
    smooth.label_smoothing = 0.1;
    check_cross_entropy<float>(6, 777, smooth, 0.0, 200, "label smoothing 0.1");
    check_cross_entropy<bfloat16>(6, 777, smooth, 0.0, 202, "label smoothing 0.1");
    cross_entropy_options sum;
    sum.reduction = loss_reduction::sum;
    check_cross_entropy<float>(9, 300, sum, 0.3, 210, "sum, ignored rows");
    check_cross_entropy<float>(17, 300, {}, 0.4, 212, "mean, ignored rows");
    cross_entropy_options other = smooth;
    other.ignore_index = 5;  // a valid token id can be the ignored one
    check_cross_entropy<bfloat16>(12, 10, other, 0.5, 214, "ignore_index 5, label smoothing");
}

TEST_CASE("cross_entropy over a 128256-entry vocabulary", "[cuda][loss]") {
    cross_entropy_options smooth;
    smooth.label_smoothing = 0.05;
    check_cross_entropy<float>(3, 128256, {}, 0.0, 300, "Llama 3 vocabulary");
    check_cross_entropy<bfloat16>(3, 128256, smooth, 0.0, 302, "Llama 3 vocabulary, smoothing");
}

TEST_CASE("cross_entropy with every row ignored is 0 with zero gradients", "[cuda][loss]") {
    const index_t rows = 4, V = 50;
    const auto logits = normal_as<float>(static_cast<std::size_t>(rows * V), 400);
    const std::vector<token_id> targets(static_cast<std::size_t>(rows), -100);
    for (auto reduction : {loss_reduction::mean, loss_reduction::sum}) {
        cross_entropy_options opt;
        opt.reduction = reduction;
        const auto got = run_ce<float>(logits, targets, rows, V, opt, false);
        CHECK(got.loss == 0.0f);
        TINYLLM_REQUIRE_CLOSE(got.dlogits, std::vector<float>(logits.size(), 0.0f), tolerance{0, 0, 0},
                              "cross_entropy all ignored: dlogits");
        TINYLLM_REQUIRE_CLOSE(got.losses, std::vector<float>(static_cast<std::size_t>(rows), 0.0f),
                              tolerance{0, 0, 0}, "cross_entropy all ignored: row losses");
    }
}

// ---- distillation ------------------------------------------------------------------------

TEST_CASE("distillation_loss matches the CPU reference: loss, gradient added to dlogits, errors", "[cuda][loss]") {
    const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1}, {1, 7}, {3, 32}, {4, 1000}, {5, 4099}};
    std::uint64_t which = 600;
    for (const auto& [rows, V] : shapes)
        for (const double tau : {1.0, 2.5}) {
            const std::size_t n = static_cast<std::size_t>(rows * V);
            const auto student = normal_as<float>(n, which++, 0.0f, 3.0f);
            const auto teacher = normal_as<float>(n, which++, 0.0f, 3.0f);
            const auto start = normal_as<float>(n, which++);  // what dlogits holds before (the CE gradient)
            std::vector<float> ref = start;
            const double ref_loss =
                cpu::distillation_loss(view2(ref, rows, V), cview2(student, rows, V), cview2(teacher, rows, V), tau, 0.7);
            auto d_s = upload<float>(student), d_t = upload<float>(teacher), d_g = upload<float>(start);
            const float loss = tc::distillation_loss(dview2(d_g, rows, V), dview2(d_s, rows, V), dview2(d_t, rows, V),
                                                     tau, 0.7);
            const std::string name = "distillation_loss (" + std::to_string(rows) + ", " + std::to_string(V) +
                                     "), tau " + std::to_string(tau);
            TINYLLM_REQUIRE_CLOSE(std::vector<float>{loss}, std::vector<double>{ref_loss},
                                  tolerance{1e-5, 1e-4, 1e-4}, name + ": loss");
            TINYLLM_REQUIRE_CLOSE(download(d_g), ref, tolerance{1e-6, 1e-5, 1e-5}, name + ": dlogits");
            // The loss alone writes nothing.
            const float alone = tc::distillation_loss({}, dview2(d_s, rows, V), dview2(d_t, rows, V), tau);
            CHECK(alone == loss);
        }
    // A NaN in the teacher's row 1 is named; bad arguments are refused on the host.
    const index_t rows = 3, V = 40;
    auto teacher = normal_as<float>(static_cast<std::size_t>(rows * V), 700);
    teacher[static_cast<std::size_t>(V + 5)] = std::numeric_limits<float>::quiet_NaN();
    const auto student = normal_as<float>(static_cast<std::size_t>(rows * V), 701);
    auto d_s = upload<float>(student), d_t = upload<float>(teacher);
    tc::device_buffer<float> d_g(static_cast<std::size_t>(rows * V));
    d_g.poison();
    CHECK_THROWS_WITH(tc::distillation_loss(dview2(d_g, rows, V), dview2(d_s, rows, V), dview2(d_t, rows, V), 1.0),
                      tinyllm_test::contains("the student or teacher logits of row 1 hold a non-finite value"));
    CHECK_THROWS_WITH(tc::distillation_loss({}, dview2(d_s, rows, V), dview2(d_t, rows, V), -1.0),
                      tinyllm_test::contains("temperature = -1 must be positive"));
    // As the CPU's: a temperature whose z / tau would overflow the kernel's float, a NaN grad_scale.
    CHECK_THROWS_WITH(tc::distillation_loss({}, dview2(d_s, rows, V), dview2(d_t, rows, V), 1e-40),
                      tinyllm_test::contains("must be positive, in [1e-3, 1e3]"));
    CHECK_THROWS_WITH(tc::distillation_loss(dview2(d_g, rows, V), dview2(d_s, rows, V), dview2(d_t, rows, V), 1.0,
                                            std::numeric_limits<double>::quiet_NaN()),
                      tinyllm_test::contains("grad_scale = nan must be finite"));
    CHECK_THROWS_WITH(tc::distillation_loss(dview2(d_s, rows, V), dview2(d_s, rows, V), dview2(d_t, rows, V), 1.0),
                      tinyllm_test::contains("must not be the logits' memory"));
    CHECK_THROWS_WITH(tc::distillation_loss({}, dview2(d_s, rows, V),
                                            tensor_view<const float, 2>(d_t.data(), extents<2>{rows - 1, V}), 1.0),
                      tinyllm_test::contains("must have the same shape"));
}

TEST_CASE("cross_entropy on (B, T, V) equals the flattened call; loss alone; no losses buffer", "[cuda][loss]") {
    const index_t B = 2, T = 3, V = 101, rows = B * T;
    const auto logits = normal_as<bfloat16>(static_cast<std::size_t>(rows * V), 500, 0.0f, 2.0f);
    const auto targets = random_targets(rows, V, 0.2, -100, 501);
    const auto flat = run_ce<bfloat16>(logits, targets, rows, V, {}, false);

    auto d_logits = upload<bfloat16>(logits);
    auto d_targets = tc::to_device(targets);
    tc::device_buffer<bfloat16> d_grad(logits.size());
    tc::device_buffer<float> d_losses(static_cast<std::size_t>(rows));
    d_grad.poison();
    d_losses.poison();
    const tensor_view<const bfloat16, 3> L = d_logits.view(extents<3>{B, T, V});
    const tensor_view<const token_id, 2> Tg = d_targets.view(extents<2>{B, T});
    const float loss = tc::cross_entropy(d_grad.view(extents<3>{B, T, V}), d_losses.view(extents<2>{B, T}), L, Tg);
    CHECK(loss == flat.loss);
    CHECK(bit_equal(download(d_grad), flat.dlogits));
    CHECK(bit_equal(tc::to_host(d_losses), flat.losses));

    // The loss alone (evaluation), and with the internal workspace for the row losses.
    const float alone = tc::cross_entropy(tensor_view<bfloat16, 3>{}, tensor_view<float, 2>{}, L, Tg);
    CHECK(alone == flat.loss);
    d_grad.poison();
    const float no_losses = tc::cross_entropy(d_grad.view(extents<3>{B, T, V}), tensor_view<float, 2>{}, L, Tg);
    CHECK(no_losses == flat.loss);
    CHECK(bit_equal(download(d_grad), flat.dlogits));
}

TEST_CASE("cross_entropy is bit-identical from run to run", "[cuda][loss]") {
    const index_t rows = 37, V = 2000;
    const auto logits = normal_as<float>(static_cast<std::size_t>(rows * V), 600, 0.0f, 4.0f);
    const auto targets = random_targets(rows, V, 0.1, -100, 601);
    cross_entropy_options opt;
    opt.label_smoothing = 0.1;
    const auto a = run_ce<float>(logits, targets, rows, V, opt, false);
    const auto b = run_ce<float>(logits, targets, rows, V, opt, true);
    std::printf("  cross_entropy determinism: loss %.9g, fingerprint %016llx\n", static_cast<double>(a.loss),
                static_cast<unsigned long long>(
                    fingerprint(a.losses, fingerprint(a.dlogits, fingerprint(std::vector<float>{a.loss})))));
    CHECK(std::memcmp(&a.loss, &b.loss, sizeof(float)) == 0);
    CHECK(bit_equal(a.dlogits, b.dlogits));
    CHECK(bit_equal(a.losses, b.losses));
}

TEST_CASE("cross_entropy reports bad targets and non-finite logits", "[cuda][loss]") {
    const index_t rows = 5, V = 40;
    auto logits = normal_as<float>(static_cast<std::size_t>(rows * V), 700);
    std::vector<token_id> targets = {1, 2, -100, 3, 4};

    const auto expect_error = [&](const std::vector<float>& lg, const std::vector<token_id>& tg,
                                  const std::string& needle, bool untouched) {
        auto d_logits = upload<float>(lg);
        auto d_targets = tc::to_device(tg);
        bool thrown = false;
        try {
            tc::cross_entropy<float>(dview2(d_logits, rows, V), {}, dview2(d_logits, rows, V),
                                     d_targets.view(extents<1>{rows}));
        } catch (const tinyllm::error& e) {
            thrown = true;
            const std::string msg = e.what();
            INFO(msg);
            CHECK(msg.find(needle) != std::string::npos);
        }
        CHECK(thrown);
        if (untouched) CHECK(bit_equal(download(d_logits), lg));  // in place: nothing was written
    };
    auto bad = targets;
    bad[3] = V;  // one past the vocabulary
    expect_error(logits, bad, "the target at (3) is 40, outside the vocabulary [0, V = 40)", true);
    bad = targets;
    bad[1] = -1;
    bad[4] = -7;
    expect_error(logits, bad, "the target at (1) is -1", true);
    auto nan_logits = logits;
    nan_logits[static_cast<std::size_t>(4 * V + 7)] = NAN;
    expect_error(nan_logits, targets, "the logits at (4) (row 4) hold a non-finite value", false);
    auto inf_logits = logits;
    inf_logits[static_cast<std::size_t>(V + 3)] = INFINITY;
    expect_error(inf_logits, targets, "the logits at (1)", false);

    // Host-side checks, before any launch.
    auto d_logits = upload<float>(logits);
    auto d_targets = tc::to_device(targets);
    const auto L = dview2(d_logits, rows, V);
    const tensor_view<const token_id, 1> Tg = d_targets.view(extents<1>{rows});
    cross_entropy_options opt;
    opt.label_smoothing = 1.0;
    REQUIRE_THROWS_WITH(tc::cross_entropy<float>(L, {}, L, Tg, opt), Catch::Contains("label_smoothing = 1"));
    tc::device_buffer<float> small(static_cast<std::size_t>((rows - 1) * V));
    REQUIRE_THROWS_WITH(tc::cross_entropy<float>(dview2(small, rows - 1, V), {}, L, Tg),
                        Catch::Contains("dlogits has shape"));
    REQUIRE_THROWS_WITH(tc::cross_entropy<float>(L, {}, L, Tg.narrow(0, 0, rows - 1)),
                        Catch::Contains("targets have shape (4)"));
    tc::device_buffer<float> few(2);
    REQUIRE_THROWS_WITH(tc::cross_entropy<float>(L, dview1(few), L, Tg), Catch::Contains("losses have shape (2)"));
}

TEST_CASE("cross_entropy and distillation_loss refuse outputs that share memory they cannot handle",
          "[cuda][loss][errors]") {
    // Logits (3, 40) at the start of a device buffer of 4 rows.
    const index_t rows = 3, V = 40;
    const auto host = normal_as<float>(static_cast<std::size_t>((rows + 1) * V), 800);
    auto mem = upload<float>(host);
    const tensor_view<const float, 2> logits(mem.data(), {rows, V});
    const std::vector<token_id> targets = {1, 39, -100};
    auto d_targets = tc::to_device(targets);
    const tensor_view<const token_id, 1> Tg = d_targets.view(extents<1>{rows});
    const auto over = [&](index_t first) { return tensor_view<float, 2>(mem.data() + first, {rows, V}); };
    tc::device_buffer<float> d_grad(static_cast<std::size_t>(rows * V)), d_losses(static_cast<std::size_t>(rows));
    const auto G = dview2(d_grad, rows, V);
    const auto Lo = dview1(d_losses);

    // dlogits over the logits but not exactly them (a block would overwrite another block's row), or with
    // rows that share an address; over the targets.
    CHECK_THROWS_WITH(tc::cross_entropy<float>(over(V), Lo, logits, Tg),
                      tinyllm_test::contains("cross_entropy: dlogits must be exactly logits (in place) or not share "
                                             "memory with it"));
    CHECK_THROWS_WITH(tc::cross_entropy<float>(over(3), Lo, logits, Tg),
                      tinyllm_test::contains("dlogits must be exactly logits"));
    CHECK_THROWS_WITH(tc::cross_entropy<float>(tensor_view<float, 2>(d_grad.data(), {rows, V}, {0, 1}), Lo, logits, Tg),
                      tinyllm_test::contains("cross_entropy: dlogits has shape (3, 40) and strides (0, 1), so two "
                                             "of its elements share an address"));
    tc::device_buffer<token_id> ids(static_cast<std::size_t>(rows * V));
    TINYLLM_CUDA_CHECK(
        cudaMemcpy(ids.data(), targets.data(), targets.size() * sizeof(token_id), cudaMemcpyHostToDevice));
    const tensor_view<const token_id, 1> ids_targets(ids.data(), {rows});  // the first rows of ids
    CHECK_THROWS_WITH(tc::cross_entropy<float>(tensor_view<float, 2>(reinterpret_cast<float*>(ids.data()), {rows, V}),
                                               Lo, logits, ids_targets),
                      tinyllm_test::contains("cross_entropy: dlogits must not share memory with targets"));
    // The row losses are written while other blocks read: apart from logits, dlogits and targets.
    CHECK_THROWS_WITH(tc::cross_entropy<float>(G, tensor_view<float, 1>(mem.data() + 5, {rows}), logits, Tg),
                      tinyllm_test::contains("cross_entropy: losses must not share memory with logits"));
    CHECK_THROWS_WITH(tc::cross_entropy<float>(over(0), tensor_view<float, 1>(mem.data() + 5, {rows}), logits, Tg),
                      tinyllm_test::contains("cross_entropy: losses must not share memory with logits"));
    CHECK_THROWS_WITH(tc::cross_entropy<float>(G, tensor_view<float, 1>(d_grad.data() + V, {rows}), logits, Tg),
                      tinyllm_test::contains("cross_entropy: losses must not share memory with dlogits"));
    const tensor_view<float, 1> losses_over_ids(reinterpret_cast<float*>(ids.data()), {rows});
    CHECK_THROWS_WITH(tc::cross_entropy<float>(tensor_view<float, 2>{}, losses_over_ids, logits, ids_targets),
                      tinyllm_test::contains("cross_entropy: losses must not share memory with targets"));
    // The (B, T, V) overload reaches the same checks.
    CHECK_THROWS_WITH(
        tc::cross_entropy(tensor_view<float, 3>(mem.data() + 1, {1, rows, V}), tensor_view<float, 2>{},
                          tensor_view<const float, 3>(mem.data(), {1, rows, V}), d_targets.view(extents<2>{1, rows})),
        tinyllm_test::contains("dlogits must be exactly logits"));
    tc::device_buffer<bfloat16> half(static_cast<std::size_t>((rows + 1) * V));
    CHECK_THROWS_WITH(tc::cross_entropy<bfloat16>(tensor_view<bfloat16, 2>(half.data() + V, {rows, V}), {},
                                                  tensor_view<const bfloat16, 2>(half.data(), {rows, V}), Tg),
                      tinyllm_test::contains("dlogits must be exactly logits"));
    CHECK(bit_equal(tc::to_host(mem), host));  // nothing was launched

    // Exactly in place, with the row losses apart: the out-of-place result, bit for bit.
    const float want = tc::cross_entropy<float>(G, Lo, logits, Tg);
    const auto want_losses = tc::to_host(d_losses);
    d_losses.poison();
    CHECK(tc::cross_entropy<float>(over(0), Lo, logits, Tg) == want);
    const auto got = tc::to_host(mem);
    CHECK(std::vector<float>(got.begin(), got.begin() + rows * V) == tc::to_host(d_grad));
    CHECK(std::vector<float>(got.begin() + rows * V, got.end()) ==
          std::vector<float>(host.begin() + rows * V, host.end()));  // the row after is untouched
    CHECK(bit_equal(tc::to_host(d_losses), want_losses));

    // distillation_loss adds to dlogits while it reads both logits: apart from both (student rows 0-1,
    // teacher rows 2-3 of a buffer of 5 rows), rows with addresses of their own.
    const auto both_host = normal_as<float>(static_cast<std::size_t>(5 * V), 801);
    auto both = upload<float>(both_host);
    const tensor_view<const float, 2> student(both.data(), {2, V}), teacher(both.data() + 2 * V, {2, V});
    const auto d_over = [&](index_t first) { return tensor_view<float, 2>(both.data() + first, {2, V}); };
    CHECK_THROWS_WITH(tc::distillation_loss(d_over(1), student, teacher, 2.0),
                      tinyllm_test::contains("distillation_loss: dlogits must not share memory with the student "
                                             "logits"));
    CHECK_THROWS_WITH(tc::distillation_loss(d_over(2 * V + 2), student, teacher, 2.0),
                      tinyllm_test::contains("distillation_loss: dlogits must not share memory with the teacher "
                                             "logits"));
    CHECK_THROWS_WITH(
        tc::distillation_loss(tensor_view<float, 2>(d_grad.data(), {2, V}, {0, 1}), student, teacher, 2.0),
        tinyllm_test::contains("distillation_loss: dlogits has shape (2, 40) and strides (0, 1)"));
    CHECK(bit_equal(tc::to_host(both), both_host));
}

// ---- norm backward ------------------------------------------------------------------------

template <class T>
tolerance norm_tol() {
    if constexpr (std::is_same_v<T, float>) return {1e-5, 2e-5, 1e-5};
    else return {1e-3, 1e-2, 5e-3};
}

struct norm_case {
    bool layer, residual, affine, accumulate, in_place;
};

std::string norm_name(const norm_case& c) {
    std::string n = std::string(c.residual ? "residual_add_" : "") + (c.layer ? "layer_norm_backward" : "rms_norm_backward");
    n += c.affine ? " affine" : " plain";
    if (c.accumulate) n += " accumulate";
    if (c.in_place) n += " in place";
    return n;
}

struct norm_outputs {
    std::vector<float> dx, dw, db;
};

// One GPU call of the case, on T; returns the outputs as floats.
template <class T>
norm_outputs run_norm_backward(const norm_case& c, index_t rows, index_t D, const std::vector<float>& x,
                               const std::vector<float>& dout, const std::vector<float>& dres,
                               const std::vector<float>& w, const std::vector<float>& dw0,
                               const std::vector<float>& db0) {
    auto d_x = upload<T>(x), d_dout = upload<T>(dout), d_dres = upload<T>(dres), d_w = upload<T>(w);
    auto d_dw = upload<T>(dw0), d_db = upload<T>(db0);
    tc::device_buffer<T> d_dx(x.size());
    d_dx.poison();
    if (!c.accumulate) {
        d_dw.poison();
        d_db.poison();
    }
    // In place: dx overwrites dresidual_out (residual versions) or dout.
    tc::device_buffer<T>& dx_buf = c.in_place ? (c.residual ? d_dres : d_dout) : d_dx;
    const auto DX = dview2(dx_buf, rows, D);
    const tensor_view<const T, 2> DY = dview2(d_dout, rows, D), X = dview2(d_x, rows, D);
    const tensor_view<const T, 2> S = c.residual ? tensor_view<const T, 2>(dview2(d_dres, rows, D)) : tensor_view<const T, 2>{};
    const tensor_view<const T, 1> W = c.affine ? tensor_view<const T, 1>(dview1(d_w)) : tensor_view<const T, 1>{};
    const tensor_view<T, 1> DW = c.affine ? dview1(d_dw) : tensor_view<T, 1>{};
    const tensor_view<T, 1> DB = c.affine ? dview1(d_db) : tensor_view<T, 1>{};
    const float eps = 1e-5f;
    if (c.layer && c.residual) tc::residual_add_layer_norm_backward<T>(DX, DW, DB, DY, S, X, W, eps, c.accumulate);
    else if (c.layer) tc::layer_norm_backward<T>(DX, DW, DB, DY, X, W, eps, c.accumulate);
    else if (c.residual) tc::residual_add_rms_norm_backward<T>(DX, DW, DY, S, X, W, eps, c.accumulate);
    else tc::rms_norm_backward<T>(DX, DW, DY, X, W, eps, c.accumulate);
    norm_outputs o{download(dx_buf), {}, {}};
    if (c.affine) {
        o.dw = download(d_dw);
        if (c.layer) o.db = download(d_db);
    }
    return o;
}

template <class T>
void check_norm_backward(index_t rows, index_t D, std::uint64_t which) {
    const auto n = static_cast<std::size_t>(rows * D);
    const auto x = normal_as<T>(n, which, 0.5f, 2.0f), dout = normal_as<T>(n, which + 1);
    const auto dres = normal_as<T>(n, which + 2);
    const auto w = normal_as<T>(static_cast<std::size_t>(D), which + 3, 1.0f, 0.3f);
    const auto dw0 = normal_as<T>(static_cast<std::size_t>(D), which + 4);
    const auto db0 = normal_as<T>(static_cast<std::size_t>(D), which + 5);
    std::vector<norm_case> cases;
    for (bool layer : {true, false})
        for (bool residual : {false, true}) {
            cases.push_back({layer, residual, true, false, false});
            cases.push_back({layer, residual, false, false, false});
            cases.push_back({layer, residual, true, true, true});
        }
    for (const auto& c : cases) {
        std::vector<float> dx(n), dw = dw0, db = db0;
        const auto W = c.affine ? cview1(w) : tensor_view<const float, 1>{};
        const auto DW = c.affine ? view1(dw) : tensor_view<float, 1>{};
        const auto DB = c.affine && c.layer ? view1(db) : tensor_view<float, 1>{};
        const auto S = c.residual ? cview2(dres, rows, D) : tensor_view<const float, 2>{};
        if (c.layer && c.residual)
            cpu::residual_add_layer_norm_backward(view2(dx, rows, D), DW, DB, cview2(dout, rows, D), S,
                                                  cview2(x, rows, D), W, 1e-5f, c.accumulate);
        else if (c.layer)
            cpu::layer_norm_backward(view2(dx, rows, D), DW, DB, cview2(dout, rows, D), cview2(x, rows, D), W, 1e-5f,
                                     c.accumulate);
        else if (c.residual)
            cpu::residual_add_rms_norm_backward(view2(dx, rows, D), DW, cview2(dout, rows, D), S, cview2(x, rows, D),
                                                W, 1e-5f, c.accumulate);
        else
            cpu::rms_norm_backward(view2(dx, rows, D), DW, cview2(dout, rows, D), cview2(x, rows, D), W, 1e-5f,
                                   c.accumulate);
        const auto got = run_norm_backward<T>(c, rows, D, x, dout, dres, w, dw0, db0);
        const std::string name = label<T>(norm_name(c), rows, D);
        // At D = 1 the true dx is rstd g (1 - xhat^2) with xhat^2 = x^2 / (x^2 + eps): pure cancellation,
        // ~1e-6 in size, so only the per-element (absolute) bound applies, not the relative L2 one.
        tolerance xt = norm_tol<T>();
        if (D == 1) xt.rel_l2 = std::numeric_limits<double>::infinity();
        TINYLLM_REQUIRE_CLOSE(got.dx, dx, xt, name + ": dx");
        // dweight, dbias: sums over rows of O(1) terms; the absolute tolerance grows with sqrt(rows).
        tolerance pt = norm_tol<T>();
        pt.abs *= std::sqrt(static_cast<double>(rows));
        if (c.affine) TINYLLM_REQUIRE_CLOSE(got.dw, dw, pt, name + ": dweight");
        if (c.affine && c.layer) TINYLLM_REQUIRE_CLOSE(got.db, db, pt, name + ": dbias");
    }
}

TEST_CASE("norm backward kernels match the CPU reference", "[cuda][norm]") {
    const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1}, {1, 7}, {3, 32}, {5, 1000}, {7, 1001},
                                                             {300, 64}, {2, 4096}};
    std::uint64_t which = 1000;
    for (const auto& [rows, D] : shapes) {
        check_norm_backward<float>(rows, D, which);
        check_norm_backward<bfloat16>(rows, D, which + 10);
        which += 20;
    }
}

TEST_CASE("norm backward on (B, T, D) views and strided rows", "[cuda][norm]") {
    const index_t B = 2, T = 3, D = 40, rows = B * T, stride = D + 8;
    const auto x = normal_as<float>(static_cast<std::size_t>(rows * stride), 1200);
    const auto dout = normal_as<float>(static_cast<std::size_t>(rows * D), 1201);
    const auto w = normal_as<float>(static_cast<std::size_t>(D), 1202, 1.0f, 0.2f);
    std::vector<float> xc(static_cast<std::size_t>(rows * D));
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < D; ++j) xc[static_cast<std::size_t>(r * D + j)] = x[static_cast<std::size_t>(r * stride + j)];
    std::vector<float> dx(xc.size()), dw(static_cast<std::size_t>(D)), db(dw.size());
    cpu::layer_norm_backward(view2(dx, rows, D), view1(dw), view1(db), cview2(dout, rows, D), cview2(xc, rows, D),
                             cview1(w), 1e-5f);
    auto d_x = upload<float>(x), d_dout = upload<float>(dout), d_w = upload<float>(w);
    tc::device_buffer<float> d_dx(xc.size()), d_dw(dw.size()), d_db(db.size());
    d_dx.poison();
    d_dw.poison();
    d_db.poison();
    // x as a strided (B, T, D) view (rows padded to `stride`), the rest contiguous.
    const tensor_view<const float, 3> X(d_x.data(), {B, T, D}, {T * stride, stride, 1});
    tc::layer_norm_backward(d_dx.view(extents<3>{B, T, D}), dview1(d_dw), dview1(d_db),
                            d_dout.view(extents<3>{B, T, D}), X, dview1(d_w), 1e-5f);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dx), dx, norm_tol<float>(), "layer_norm_backward (2, 3, 40) strided: dx");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dw), dw, norm_tol<float>(), "layer_norm_backward (2, 3, 40) strided: dweight");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_db), db, norm_tol<float>(), "layer_norm_backward (2, 3, 40) strided: dbias");

    // RMSNorm without weight on (B, T, D), and the fused residual version without dresidual_out.
    cpu::rms_norm_backward(view2(dx, rows, D), {}, cview2(dout, rows, D), cview2(xc, rows, D), {}, 1e-5f);
    d_dx.poison();
    tc::rms_norm_backward(d_dx.view(extents<3>{B, T, D}), {}, d_dout.view(extents<3>{B, T, D}), X, {}, 1e-5f);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dx), dx, norm_tol<float>(), "rms_norm_backward (2, 3, 40) plain: dx");
    cpu::residual_add_rms_norm_backward(view2(dx, rows, D), view1(dw), cview2(dout, rows, D), {}, cview2(xc, rows, D),
                                        cview1(w), 1e-5f);
    d_dx.poison();
    d_dw.poison();
    tc::residual_add_rms_norm_backward(d_dx.view(extents<3>{B, T, D}), dview1(d_dw), d_dout.view(extents<3>{B, T, D}),
                                       {}, X, dview1(d_w), 1e-5f);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dx), dx, norm_tol<float>(), "residual_add_rms_norm_backward no stream: dx");
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dw), dw, norm_tol<float>(), "residual_add_rms_norm_backward no stream: dweight");
}

TEST_CASE("norm backward is bit-identical from run to run", "[cuda][norm]") {
    const index_t rows = 600, D = 96;  // more rows than blocks: each block sums several rows
    const auto x = normal_as<float>(static_cast<std::size_t>(rows * D), 1300, 0.0f, 3.0f);
    const auto dout = normal_as<float>(x.size(), 1301), dres = normal_as<float>(x.size(), 1302);
    const auto w = normal_as<float>(static_cast<std::size_t>(D), 1303, 1.0f, 0.3f);
    const std::vector<float> zeros(static_cast<std::size_t>(D), 0.0f);
    const norm_case c{true, true, true, false, false};
    const auto a = run_norm_backward<float>(c, rows, D, x, dout, dres, w, zeros, zeros);
    const auto b = run_norm_backward<float>(c, rows, D, x, dout, dres, w, zeros, zeros);
    std::printf("  norm backward determinism: fingerprint %016llx\n",
                static_cast<unsigned long long>(fingerprint(a.db, fingerprint(a.dw, fingerprint(a.dx)))));
    CHECK(bit_equal(a.dx, b.dx));
    CHECK(bit_equal(a.dw, b.dw));
    CHECK(bit_equal(a.db, b.db));
}

TEST_CASE("norm backward launchers reject bad arguments", "[cuda][norm]") {
    tc::device_buffer<float> a(12), b(12), w(4), dw(3);
    const auto A = a.view(extents<2>{3, 4});
    const auto B = b.view(extents<2>{3, 4});
    CHECK_THROWS_WITH(tc::rms_norm_backward<float>(b.view(extents<2>{4, 3}), {}, A, A, {}, 1e-5f),
                      Catch::Contains("dx has shape (4, 3) but x has shape (3, 4)"));
    CHECK_THROWS_WITH(tc::layer_norm_backward<float>(B, dw.view(extents<1>{3}), {}, A, A, w.view(extents<1>{4}), 1e-5f),
                      Catch::Contains("dweight has 3 elements but weight has 4"));
    CHECK_THROWS_WITH(tc::rms_norm_backward<float>(B, {}, A, A, {}, 0.0f), Catch::Contains("eps = 0"));
    CHECK_THROWS_WITH(tc::residual_add_layer_norm_backward<float>(B, {}, {}, A, b.view(extents<2>{4, 3}), A, {}, 1e-5f),
                      Catch::Contains("dresidual_out"));
}

// ---- activation backward ----------------------------------------------------------------------

template <class T>
void check_activation_backward(index_t rows, index_t cols, std::uint64_t which) {
    const auto n = static_cast<std::size_t>(rows * cols);
    const auto x = normal_as<T>(n, which, 0.0f, 3.0f), dout = normal_as<T>(n, which + 1);
    const auto up = normal_as<T>(n, which + 2);
    auto d_x = upload<T>(x), d_dout = upload<T>(dout), d_up = upload<T>(up);
    tc::device_buffer<T> d_a(n), d_b(n);
    const tensor_view<const T, 2> X = dview2(d_x, rows, cols), DY = dview2(d_dout, rows, cols),
                                  U = dview2(d_up, rows, cols);
    const tolerance t = tol_for<T>();
    std::vector<float> ref(n), ref2(n);
    const std::pair<activation, const char*> kinds[] = {{activation::relu, "relu"},
                                                        {activation::silu, "silu"},
                                                        {activation::gelu_erf, "gelu_erf"},
                                                        {activation::gelu_tanh, "gelu_tanh"}};
    for (const auto& [kind, name] : kinds) {
        cpu::activate_backward(view2(ref, rows, cols), cview2(dout, rows, cols), cview2(x, rows, cols), kind);
        d_a.poison();
        tc::activate_backward<T>(dview2(d_a, rows, cols), DY, X, kind);
        TINYLLM_REQUIRE_CLOSE(download(d_a), ref, t, label<T>(std::string("activate_backward ") + name, rows, cols));
    }
    cpu::swiglu_backward(view2(ref, rows, cols), view2(ref2, rows, cols), cview2(dout, rows, cols),
                         cview2(x, rows, cols), cview2(up, rows, cols));
    d_a.poison();
    d_b.poison();
    tc::swiglu_backward<T>(dview2(d_a, rows, cols), dview2(d_b, rows, cols), DY, X, U);
    TINYLLM_REQUIRE_CLOSE(download(d_a), ref, t, label<T>("swiglu_backward dgate", rows, cols));
    TINYLLM_REQUIRE_CLOSE(download(d_b), ref2, t, label<T>("swiglu_backward dup", rows, cols));

    // In place: dgate over gate, dup over up (the forward's inputs, no longer needed).
    tc::swiglu_backward<T>(dview2(d_x, rows, cols), dview2(d_up, rows, cols), DY, X, U);
    TINYLLM_REQUIRE_CLOSE(download(d_x), ref, t, label<T>("swiglu_backward in place dgate", rows, cols));
    TINYLLM_REQUIRE_CLOSE(download(d_up), ref2, t, label<T>("swiglu_backward in place dup", rows, cols));
}

TEST_CASE("activation backward kernels match the CPU reference", "[cuda][activation]") {
    const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1}, {1, 7}, {3, 8}, {2, 13}, {5, 1000}, {4, 1001}};
    std::uint64_t which = 2000;
    for (const auto& [rows, cols] : shapes) {
        check_activation_backward<float>(rows, cols, which);
        check_activation_backward<bfloat16>(rows, cols, which + 5);
        which += 10;
    }
}

TEST_CASE("activation backward on the halves of a fused (rows, 2H) projection, and (B, T, H)", "[cuda][activation]") {
    // gate and up are the two halves of one (rows, 2H) tensor; so are dgate and dup.
    const index_t rows = 6, H = 24;
    const auto gu = normal_as<bfloat16>(static_cast<std::size_t>(rows * 2 * H), 2100, 0.0f, 2.0f);
    const auto dout = normal_as<bfloat16>(static_cast<std::size_t>(rows * H), 2101);
    std::vector<float> gate(static_cast<std::size_t>(rows * H)), up(gate.size()), dg(gate.size()), du(gate.size());
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < H; ++j) {
            gate[static_cast<std::size_t>(r * H + j)] = gu[static_cast<std::size_t>(r * 2 * H + j)];
            up[static_cast<std::size_t>(r * H + j)] = gu[static_cast<std::size_t>(r * 2 * H + H + j)];
        }
    cpu::swiglu_backward(view2(dg, rows, H), view2(du, rows, H), cview2(dout, rows, H), cview2(gate, rows, H),
                         cview2(up, rows, H));
    auto d_gu = upload<bfloat16>(gu), d_dout = upload<bfloat16>(dout);
    tc::device_buffer<bfloat16> d_grad(gu.size());
    d_grad.poison();
    const tensor_view<const bfloat16, 2> G(d_gu.data(), {rows, H}, {2 * H, 1}), U(d_gu.data() + H, {rows, H}, {2 * H, 1});
    const tensor_view<bfloat16, 2> DG(d_grad.data(), {rows, H}, {2 * H, 1}), DU(d_grad.data() + H, {rows, H}, {2 * H, 1});
    tc::swiglu_backward(DG, DU, dview2(d_dout, rows, H), G, U);
    const auto got = download(d_grad);
    std::vector<float> got_dg(dg.size()), got_du(du.size());
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < H; ++j) {
            got_dg[static_cast<std::size_t>(r * H + j)] = got[static_cast<std::size_t>(r * 2 * H + j)];
            got_du[static_cast<std::size_t>(r * H + j)] = got[static_cast<std::size_t>(r * 2 * H + H + j)];
        }
    TINYLLM_REQUIRE_CLOSE(got_dg, dg, tol_for<bfloat16>(), "swiglu_backward packed halves: dgate");
    TINYLLM_REQUIRE_CLOSE(got_du, du, tol_for<bfloat16>(), "swiglu_backward packed halves: dup");

    // activate_backward on (B, T, H), in place over dout.
    const index_t B = 2, T = 3;
    const auto x = normal_as<float>(static_cast<std::size_t>(B * T * H), 2102, 0.0f, 2.0f);
    const auto dy = normal_as<float>(x.size(), 2103);
    std::vector<float> ref(x.size());
    cpu::activate_backward(view2(ref, B * T, H), cview2(dy, B * T, H), cview2(x, B * T, H), activation::gelu_tanh);
    auto d_x = upload<float>(x), d_dy = upload<float>(dy);
    tc::activate_backward(d_dy.view(extents<3>{B, T, H}), d_dy.view(extents<3>{B, T, H}), d_x.view(extents<3>{B, T, H}),
                          activation::gelu_tanh);
    TINYLLM_REQUIRE_CLOSE(tc::to_host(d_dy), ref, tol_for<float>(), "activate_backward (2, 3, 24) in place gelu_tanh");

    tc::device_buffer<float> a(12), b(12);
    CHECK_THROWS_WITH(tc::activate_backward<float>(a.view(extents<2>{4, 3}), b.view(extents<2>{3, 4}),
                                                   b.view(extents<2>{3, 4}), activation::relu),
                      Catch::Contains("dx has shape (4, 3) but x has shape (3, 4)"));
    CHECK_THROWS_WITH(tc::swiglu_backward<float>(a.view(extents<2>{3, 4}), a.view(extents<2>{4, 3}),
                                                 b.view(extents<2>{3, 4}), b.view(extents<2>{3, 4}),
                                                 b.view(extents<2>{3, 4})),
                      Catch::Contains("dup has shape (4, 3)"));
}

TEST_CASE("the element-wise launchers refuse outputs that overlap their inputs", "[cuda][activation]") {
    // x = rows 0..3 of a (5, 8) buffer; `shifted` = rows 1..4 (over x's last three rows:
    // a block writing its row while another reads it); `repeated` = row 4, stride 0.
    auto buf = upload<float>(normal_as<float>(5 * 8, 2200)), other = upload<float>(normal_as<float>(4 * 8, 2201));
    tc::device_buffer<float> out(4 * 8), out2(4 * 8);
    const tensor_view<const float, 2> x(buf.data(), {4, 8}), co = dview2(other, 4, 8);
    const tensor_view<float, 2> shifted(buf.data() + 8, {4, 8}), repeated(buf.data() + 32, {4, 8}, {0, 1});
    const std::string overlap = "must be exactly";
    CHECK_THROWS_WITH(tc::activate<float>(shifted, x, activation::silu),
                      Catch::Contains("activate: out " + overlap + " the input"));
    CHECK_THROWS_WITH(tc::activate<float>(repeated, co, activation::silu),
                      Catch::Contains("two of its elements share an address"));
    CHECK_THROWS_WITH(tc::swiglu<float>(shifted, co, x),
                      Catch::Contains("swiglu: out " + overlap + " the second input"));
    CHECK_THROWS_WITH(tc::add<float>(shifted, x, co), Catch::Contains("add: out " + overlap + " the input"));
    CHECK_THROWS_WITH(tc::bias_activate<float>(dview2(out, 4, 8), co, tensor_view<const float, 1>(out.data() + 8, {8}),
                                               activation::relu),
                      Catch::Contains("bias_activate: out must not share memory with bias"));
    CHECK_THROWS_WITH(tc::activate_backward<float>(shifted, co, x, activation::gelu_tanh),
                      Catch::Contains("activate_backward: out " + overlap + " the second input"));
    CHECK_THROWS_WITH(
        tc::bias_activate_backward<float>(dview2(out, 4, 8), tensor_view<float, 1>(out.data() + 8, {8}), co, co,
                                          tensor_view<const float, 1>(buf.data(), {8}), activation::relu),
        Catch::Contains("bias_activate_backward: dbias must not share memory with dx"));
    CHECK_THROWS_WITH(tc::swiglu_backward<float>(dview2(out, 4, 8), dview2(out, 4, 8), co, co, co),
                      Catch::Contains("swiglu_backward: dgate must not share memory with dup"));
    CHECK_THROWS_WITH(tc::swiglu_backward<float>(dview2(out, 4, 8), shifted, co, x, co),
                      Catch::Contains("swiglu_backward: dup " + overlap + " gate"));
    CHECK_THROWS_WITH(tc::multiply_backward<float>(shifted, dview2(out2, 4, 8), co, x, co),
                      Catch::Contains("multiply_backward: da " + overlap + " a"));
    // Exactly in place is allowed, and gives the out-of-place values.
    tc::activate<float>(dview2(out, 4, 8), co, activation::silu);
    tc::activate<float>(dview2(other, 4, 8), co, activation::silu);
    REQUIRE(bit_equal(tc::to_host(other), tc::to_host(out)));
}

}  // namespace
