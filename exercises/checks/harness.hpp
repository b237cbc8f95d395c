// exercises/checks/harness.hpp — what every exercise check uses: fresh random inputs from
// a printed seed, comparisons that say what is wrong in words a student can act on, and
// the main() of the check programs.
//
// A check calls the student's function on random inputs (a few cases, of several
// shapes), computes the same thing with the library's reference (include/tinyllm/),
// and on the first disagreement stops with a message naming the element, the expected
// and the got value: "out(2, 5): expected 0.125, got 0.525 (max-abs error 0.4 ...)".
// NaN and infinity never pass where a finite value is expected.
//
// The seed: TINYLLM_TEST_SEED if set, else fresh each run; always printed, so a failure
// can be repeated. Each check draws from its own generator (the seed mixed with the
// check's name), so a check sees the same inputs whether it runs alone or with others.
//
//   exercises_cpu                       run every check (here: against the stubs)
//   exercises_cpu layers/01_rms_norm    one check (also "layers/rms_norm" or "rms_norm")
//   exercises_cpu --list                the checks and their one-line statements
//   exercises_cpu --expect-fail NAME... succeed only if every named check fails
//                                       (CTest runs the stubs so: each check catches an empty answer)
#pragma once

#include "catalog.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace exercises::check {

// Thrown by context::fail: the check found a wrong answer.
struct wrong_answer : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The random source and the failure report of one check.
class context {
public:
    explicit context(std::uint64_t seed) : rng_(seed) {}

    // What the current case is ("case 2: rows 3, D 17"); it prefixes a failure.
    std::string case_label;

    float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng_); }
    int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }  // in [lo, hi]
    std::vector<float> floats(std::size_t n, float lo = -1.0f, float hi = 1.0f) {
        std::vector<float> v(n);
        for (float& x : v) x = uniform(lo, hi);
        return v;
    }
    std::mt19937_64& engine() { return rng_; }

    [[noreturn]] void fail(const std::string& message) const {
        throw wrong_answer(case_label.empty() ? message : case_label + ": " + message);
    }

private:
    std::mt19937_64 rng_;
};

// "(2, 5)" for flat index i of a row-major tensor of shape `shape`.
inline std::string index_text(std::size_t i, const std::vector<std::size_t>& shape) {
    std::vector<std::size_t> idx(shape.size());
    for (std::size_t d = shape.size(); d-- > 0;) {
        idx[d] = shape[d] ? i % shape[d] : 0;
        i = shape[d] ? i / shape[d] : 0;
    }
    std::ostringstream s;
    s << "(";
    for (std::size_t d = 0; d < idx.size(); ++d) s << (d ? ", " : "") << idx[d];
    s << ")";
    return s.str();
}

inline void expect_size(const context& ctx, std::string_view what, std::size_t got, std::size_t want) {
    if (got != want) {
        std::ostringstream s;
        s << what << " has " << got << " values, expected " << want;
        if (got == 0) s << " (nothing was written: is the function still a TODO?)";
        ctx.fail(s.str());
    }
}

// Every element within abs + rel * |expected|; NaN or infinity where the expected value
// is finite fails. The message names the worst element and how many are off.
template <class G, class W>
void expect_close(const context& ctx, std::string_view what, std::span<const G> got, std::span<const W> want,
                  const std::vector<std::size_t>& shape, double abs, double rel) {
    expect_size(ctx, what, got.size(), want.size());
    std::size_t worst = 0, off = 0;
    double worst_error = -1;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
        if (std::isfinite(w) != std::isfinite(g) || (!std::isfinite(w) && g != w)) {
            std::ostringstream s;
            s << what << index_text(i, shape) << " is " << g << ", expected " << w;
            if (std::isnan(g)) s << " (NaN never passes; was this element written?)";
            ctx.fail(s.str());
        }
        if (!std::isfinite(w)) continue;
        const double e = std::fabs(g - w);
        if (e > abs + rel * std::fabs(w)) ++off;
        if (e > worst_error) worst_error = e, worst = i;
    }
    if (off > 0) {
        std::ostringstream s;
        s << what << ": max-abs error " << worst_error << " at " << index_text(worst, shape) << ": expected "
          << static_cast<double>(want[worst]) << ", got " << static_cast<double>(got[worst]) << "; " << off << " of "
          << got.size() << " values are off by more than " << abs << " + " << rel << " * |expected|";
        ctx.fail(s.str());
    }
}

template <class G, class W>
void expect_close(const context& ctx, std::string_view what, const std::vector<G>& got, const std::vector<W>& want,
                  const std::vector<std::size_t>& shape, double abs, double rel) {
    expect_close(ctx, what, std::span<const G>(got), std::span<const W>(want), shape, abs, rel);
}

inline void expect_scalar(const context& ctx, std::string_view what, double got, double want, double abs, double rel) {
    if (!std::isfinite(got) || std::fabs(got - want) > abs + rel * std::fabs(want)) {
        std::ostringstream s;
        s.precision(10);
        s << what << " is " << got << ", expected " << want;
        if (std::isnan(got)) s << " (NaN never passes)";
        ctx.fail(s.str());
    }
}

// ---- the registry and main() ----------------------------------------------------------

struct registered {
    std::string name;
    std::function<void(context&)> run;
};
inline std::vector<registered>& registry() {
    static std::vector<registered> checks;
    return checks;
}
struct registrar {
    registrar(const char* name, void (*fn)(context&)) { registry().push_back({name, fn}); }
};

inline const exercise_info* find_info(std::string_view name) {
    for (const auto& e : catalog)
        if (name == e.name) return &e;
    return nullptr;
}

// "layers/01_rms_norm" answers to itself, "layers/rms_norm" and "rms_norm".
inline bool name_matches(std::string_view full, std::string_view query) {
    if (query == full) return true;
    const std::size_t slash = full.find('/');
    const std::string_view component = full.substr(0, slash), stem = full.substr(slash + 1);
    const std::string_view bare = stem.size() > 3 && stem[2] == '_' ? stem.substr(3) : stem;
    return query == bare || query == std::string(component) + "/" + std::string(bare);
}

inline std::uint64_t seed_from_environment() {
    std::uint64_t s;
    if (const char* env = std::getenv("TINYLLM_TEST_SEED")) {
        s = std::strtoull(env, nullptr, 10);
    } else {
        std::random_device rd;
        s = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    return s;
}

inline std::uint64_t mix(std::uint64_t seed, std::string_view name) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the name, then mixed with the seed
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    std::uint64_t z = seed + h + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The check programs' main(): `program` is this program's stub-build name
// ("exercises_cpu"), `solutions` whether it was built against the solutions.
inline int run_checks(int argc, char** argv, std::string_view program, bool solutions) {
    const std::string self = std::string(program) + (solutions ? "_solutions" : "");
    bool list = false, expect_fail = false;
    std::vector<std::string> names;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--list")
            list = true;
        else if (a == "--expect-fail")
            expect_fail = true;
        else if (a == "--help" || a == "-h") {
            std::printf(
                "usage: %s [--list] [--expect-fail] [NAME...]\n"
                "Runs the exercise checks (all, or the NAMEs: \"layers/01_rms_norm\", \"layers/rms_norm\" or\n"
                "\"rms_norm\") on fresh random inputs; TINYLLM_TEST_SEED=S repeats a run. --expect-fail\n"
                "succeeds only when every check run fails (the stubs' test).\n",
                self.c_str());
            return 0;
        } else if (!a.empty() && a[0] == '-') {
            std::fprintf(stderr, "%s: unknown option '%s' (try --help)\n", self.c_str(), argv[i]);
            return 2;
        } else
            names.emplace_back(a);
    }
    // The checks and the catalog must agree.
    for (const auto& r : registry())
        if (!find_info(r.name)) {
            std::fprintf(stderr, "%s: check '%s' is not in exercises/checks/catalog.hpp\n", self.c_str(),
                         r.name.c_str());
            return 1;
        }
    for (const auto& e : catalog) {
        if (program != e.program) continue;
        bool found = false;
        for (const auto& r : registry()) found = found || r.name == e.name;
        if (!found) {
            std::fprintf(stderr, "%s: exercise '%s' of the catalog has no check\n", self.c_str(), e.name);
            return 1;
        }
    }
    if (list) {
        for (const auto& e : catalog)
            if (program == e.program) std::printf("%-38s %s\n", e.name, e.summary);
        return 0;
    }
    std::vector<const registered*> selected;
    for (const auto& r : registry())
        if (names.empty()) selected.push_back(&r);
    for (const auto& n : names) {
        bool found = false;
        for (const auto& r : registry())
            if (name_matches(r.name, n)) selected.push_back(&r), found = true;
        if (!found) {
            std::fprintf(stderr, "%s: no exercise named '%s' (--list shows them)\n", self.c_str(), n.c_str());
            return 2;
        }
    }
    const std::uint64_t seed = seed_from_environment();
    std::printf("exercise checks (%s, %s): random seed %llu (TINYLLM_TEST_SEED=%llu repeats this run)\n", self.c_str(),
                solutions ? "the reference solutions" : "exercises/ as edited", static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(seed));
    int passed = 0, failed = 0;
    for (const registered* r : selected) {
        const exercise_info* info = find_info(r->name);
        context ctx(mix(seed, r->name));
        std::string problem;
        try {
            r->run(ctx);
        } catch (const wrong_answer& e) {
            problem = e.what();
        } catch (const std::exception& e) {
            problem = std::string("an exception escaped: ") + e.what();
        }
        if (problem.empty()) {
            ++passed;
            std::printf("PASS  %s\n", r->name.c_str());
        } else {
            ++failed;
            std::printf(
                "FAIL  %s\n      %s\n      (edit exercises/%s; a reference answer is in exercises/solutions/%s)\n",
                r->name.c_str(), problem.c_str(), info->file, info->file);
        }
        std::fflush(stdout);
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    if (expect_fail) {
        if (passed > 0) {
            std::printf("--expect-fail: %d check(s) passed an answer that should have failed them\n", passed);
            return 1;
        }
        std::printf("--expect-fail: every check caught the wrong answer\n");
        return 0;
    }
    return failed == 0 ? 0 : 1;
}

}  // namespace exercises::check

#define TINYLLM_EXERCISE_CONCAT2(a, b) a##b
#define TINYLLM_EXERCISE_CONCAT(a, b) TINYLLM_EXERCISE_CONCAT2(a, b)

// TINYLLM_EXERCISE_CHECK("layers/01_rms_norm") { ... ctx ... }: a check, registered at startup.
// (__COUNTER__, not __LINE__: the check files may be compiled as one unit.)
#define TINYLLM_EXERCISE_CHECK(name) TINYLLM_EXERCISE_CHECK_ID(name, __COUNTER__)
#define TINYLLM_EXERCISE_CHECK_ID(name, id)                                                      \
    static void TINYLLM_EXERCISE_CONCAT(exercise_check_, id)(::exercises::check::context&);      \
    static const ::exercises::check::registrar TINYLLM_EXERCISE_CONCAT(exercise_registrar_, id)( \
        name, &TINYLLM_EXERCISE_CONCAT(exercise_check_, id));                                    \
    static void TINYLLM_EXERCISE_CONCAT(exercise_check_, id)(::exercises::check::context & ctx)
