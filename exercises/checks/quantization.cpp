// exercises/checks/quantization.cpp — the checks of the quantization exercises, against
// tinyllm::quantize_rtn (include/tinyllm/quantize.hpp).
//
// The library's scales, zero points and integers are exact (float arithmetic in a fixed
// order), so the answer must be too. Besides random groups of several magnitudes, the
// rows hold groups that are all positive or all negative (lo or hi is then 0, not a
// weight), groups of zeros, and groups built on a power-of-two step whose weights sit
// exactly on the rounding halves (w / s = j + 0.5, and -lo / s = a + 0.5), where the
// rounding rule and the clamp decide the answer.
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/quantize.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace exercises::check::quantization_checks {

// One group of G weights of the given kind (see the top).
std::vector<float> make_group(context& ctx, int kind, int G) {
    const std::size_t n = static_cast<std::size_t>(G);
    switch (kind) {
        case 0: return ctx.floats(n, -1.0f, 1.0f);
        case 1: return ctx.floats(n, -300.0f, 300.0f);
        case 2: return ctx.floats(n, -1e-3f, 1e-3f);
        case 3: return ctx.floats(n, 0.25f, 2.0f);    // all positive: lo = 0
        case 4: return ctx.floats(n, -5.0f, -0.5f);   // all negative: hi = 0
        case 5: return std::vector<float>(n, 0.0f);   // s = 0, z = 0, q = 0
        default: {
            // On the halves: s = 2^-4 exactly, range = 15 s. Kind 6: lo = -a s (z = a);
            // kind 7: lo = -(a + 0.5) s (z = round(a + 0.5) = a + 1, and hi / s + z rounds to 16).
            const float s = 0.0625f;
            const int a = ctx.integer(1, 13);
            const float shift = kind == 6 ? 0.0f : 0.5f;
            std::vector<float> w(n);
            for (float& x : w) x = (static_cast<float>(ctx.integer(-a, 13 - a)) + 0.5f) * s;  // w / s = j + 0.5
            const std::size_t at_lo = static_cast<std::size_t>(ctx.integer(0, G - 1));
            std::size_t at_hi = static_cast<std::size_t>(ctx.integer(0, G - 2));
            if (at_hi >= at_lo) ++at_hi;
            w[at_lo] = -(static_cast<float>(a) + shift) * s;
            w[at_hi] = (15.0f - static_cast<float>(a) - shift) * s;
            return w;
        }
    }
}

std::string group_text(const std::vector<float>& w, int g, int G) {
    float lo = 0.0f, hi = 0.0f;
    for (int k = g * G; k < (g + 1) * G; ++k) lo = std::min(lo, w[static_cast<std::size_t>(k)]), hi = std::max(hi, w[static_cast<std::size_t>(k)]);
    std::ostringstream s;
    s.precision(9);
    s << "group " << g << " (weights " << g * G << ".." << (g + 1) * G - 1 << ", lo = min(0, min w) = " << lo
      << ", hi = max(0, max w) = " << hi << ")";
    return s.str();
}

}  // namespace exercises::check::quantization_checks

using namespace exercises::check;
using namespace exercises::check::quantization_checks;

TINYLLM_EXERCISE_CHECK("quantization/01_int4_groups") {
    constexpr int group_sizes[] = {2, 4, 8, 16, 32, 64, 128};
    for (int c = 0; c < 14; ++c) {
        const int G = group_sizes[ctx.integer(0, 6)], groups = c == 0 ? 8 : ctx.integer(1, 6), K = G * groups;
        std::vector<float> w;
        std::vector<int> kinds;
        for (int g = 0; g < groups; ++g) {
            // Case 0: every kind once in order (G >= 2 holds both ends of a halves group).
            const int kind = c == 0 ? g % 8 : ctx.integer(0, 7);
            kinds.push_back(kind);
            const std::vector<float> x = make_group(ctx, kind, G);
            w.insert(w.end(), x.begin(), x.end());
        }
        ctx.case_label = "case " + std::to_string(c) + ": K " + std::to_string(K) + ", G " + std::to_string(G);
        const tinyllm::quantized_matrix want = tinyllm::quantize_rtn(
            tinyllm::tensor_view<const float, 2>(w.data(), {1, K}), tinyllm::quant_spec{tinyllm::quant_format::int4, G});

        // Unwritten outputs fail: NaN scales, and 255 (not an int4 value) elsewhere.
        std::vector<std::uint8_t> q(static_cast<std::size_t>(K), 255), zeros(static_cast<std::size_t>(groups), 255);
        std::vector<float> scales(static_cast<std::size_t>(groups), std::numeric_limits<float>::quiet_NaN());
        exercises::quantization::int4_groups(q, scales, zeros, w, G);

        for (int g = 0; g < groups; ++g) {
            const float s = scales[static_cast<std::size_t>(g)], ws = want.scales(0, g);
            if (s != ws) {
                std::ostringstream m;
                m.precision(9);
                m << "the scale of " << group_text(w, g, G) << " is " << s << ", expected " << ws;
                if (std::isnan(s))
                    m << " (NaN never passes; was this group's scale written?)";
                else if (ws == 0.0f)
                    m << " (every weight of the group is 0: s = 0)";
                else if (std::isfinite(s) && (std::nextafter(ws, 0.0f) == s || std::nextafter(ws, 1e30f) == s))
                    m << " (one float step off: s is the smallest float with (hi - lo) / s <= 15; compute hi - lo in "
                         "double, s = float(range / 15), then step s up while range / s > 15)";
                else if (kinds[static_cast<std::size_t>(g)] == 3 || kinds[static_cast<std::size_t>(g)] == 4)
                    m << " (the group is all " << (kinds[static_cast<std::size_t>(g)] == 3 ? "positive" : "negative")
                      << ": 0 must stay in the range, so " << (kinds[static_cast<std::size_t>(g)] == 3 ? "lo" : "hi")
                      << " is 0)";
                ctx.fail(m.str());
            }
        }
        for (int g = 0; g < groups; ++g) {
            const int z = zeros[static_cast<std::size_t>(g)], wz = want.zeros(0, g);
            if (z != wz) {
                std::ostringstream m;
                m.precision(9);
                m << "the zero point of " << group_text(w, g, G) << " is " << z << ", expected " << wz << " = clamp(round("
                  << "-lo / s), 0, 15) with s = " << want.scales(0, g);
                if (z == 255) m << " (255 is no int4 value: was it written?)";
                else if (kinds[static_cast<std::size_t>(g)] == 7)
                    m << " (-lo / s is exactly " << wz - 1 << ".5 here: std::round takes halves away from zero)";
                ctx.fail(m.str());
            }
        }
        for (int k = 0; k < K; ++k) {
            const int got = q[static_cast<std::size_t>(k)], wq = want.value(0, k), g = k / G;
            if (got == wq) continue;
            const float s = want.scales(0, g), wk = w[static_cast<std::size_t>(k)];
            const int z = want.zeros(0, g);
            std::ostringstream m;
            m.precision(9);
            m << "q[" << k << "] is " << got << ", expected " << wq << ": w[" << k << "] = " << wk << " in "
              << group_text(w, g, G) << ", s = " << s << ", z = " << z << ", w / s = " << wk / s;
            if (got == 255)
                m << " (255 is no int4 value: was it written?)";
            else if (got > 15)
                m << " (an int4 value is in 0..15: clamp round(w / s) + z)";
            else
                m << "; (q - z) * s = " << static_cast<float>(got - z) * s << " is "
                  << std::fabs(static_cast<float>(got - z) * s - wk) << " from w, the expected q gives "
                  << std::fabs(static_cast<float>(wq - z) * s - wk) << " (at most s / 2 = " << s / 2 << ")";
            if (got <= 15 && std::fabs(wk / s - std::trunc(wk / s)) == 0.5f)
                m << "; w / s is exactly on a half: std::round takes it away from zero";
            ctx.fail(m.str());
        }
    }
}

TINYLLM_EXERCISE_CHECK("quantization/02_int8_absmax") {
    for (int c = 0; c < 16; ++c) {
        const int kind = c < 6 ? c : ctx.integer(0, 5);
        const int K = kind == 5 && c % 2 ? 1 : ctx.integer(1, 300);
        std::vector<float> w = ctx.floats(static_cast<std::size_t>(K), -1.0f, 1.0f);
        const std::size_t at = static_cast<std::size_t>(ctx.integer(0, K - 1));
        std::string what = "weights in [-1, 1]";
        if (kind == 1) {
            w[at] = ctx.integer(0, 1) ? 100.0f : -100.0f;
            what = "weights in [-1, 1] and one outlier " + std::to_string(w[at]) + " at " + std::to_string(at);
        } else if (kind == 2) {
            w[at] = -3.0f;
            what = "weights in [-1, 1] and the largest magnitude negative: -3 at " + std::to_string(at);
        } else if (kind == 3) {
            std::fill(w.begin(), w.end(), 0.0f);
            what = "all zeros";
        } else if (kind == 4) {  // s = 2^-6 exactly; every other weight on a half step: w / s = j + 0.5
            const float s = 0.015625f;
            for (float& x : w) x = (static_cast<float>(ctx.integer(-127, 126)) + 0.5f) * s;
            w[at] = (ctx.integer(0, 1) ? 127.0f : -127.0f) * s;
            what = "weights on half steps of s = 2^-6";
        } else if (kind == 5) {
            for (float& x : w) x *= 1e-3f;
            what = "weights in [-1e-3, 1e-3]";
        }
        ctx.case_label = "case " + std::to_string(c) + ": K " + std::to_string(K) + ", " + what;
        const tinyllm::quantized_matrix want = tinyllm::quantize_rtn(
            tinyllm::tensor_view<const float, 2>(w.data(), {1, K}), tinyllm::quant_spec{tinyllm::quant_format::int8, 0});
        const float ws = want.scales(0, 0);
        double want_error = 0;
        for (int k = 0; k < K; ++k)
            want_error = std::max(want_error, std::fabs(static_cast<double>(w[static_cast<std::size_t>(k)]) - want.weight(0, k)));

        std::vector<std::int8_t> q(static_cast<std::size_t>(K), -128);  // -128: not a value the format uses
        float s = std::numeric_limits<float>::quiet_NaN();
        const double error = exercises::quantization::int8_absmax(q, s, w);

        float amax = 0.0f;
        for (float x : w) amax = std::max(amax, std::fabs(x));
        if (s != ws) {
            std::ostringstream m;
            m.precision(9);
            m << "the scale is " << s << ", expected " << ws << " (max |w| = " << amax << ")";
            if (std::isnan(s))
                m << " (NaN never passes; was the scale written?)";
            else if (ws == 0.0f)
                m << " (every weight is 0: s = 0)";
            else if (std::isfinite(s) && (std::nextafter(ws, 0.0f) == s || std::nextafter(ws, 1e30f) == s))
                m << " (one float step off: s is the smallest float with max|w| / s <= 127; s = float(amax / 127.0) "
                     "in double, then step s up while amax / s > 127)";
            else if (s < ws && *std::min_element(w.begin(), w.end()) == -amax)
                m << " (the largest magnitude is a negative weight, " << -amax << ": the scale comes from |w|)";
            ctx.fail(m.str());
        }
        for (int k = 0; k < K; ++k) {
            const int got = q[static_cast<std::size_t>(k)], wq = want.value(0, k);
            if (got == wq) continue;
            const float wk = w[static_cast<std::size_t>(k)];
            std::ostringstream m;
            m.precision(9);
            m << "q[" << k << "] is " << got << ", expected " << wq << " = round(w / s): w[" << k << "] = " << wk
              << ", s = " << ws << ", w / s = " << wk / ws;
            if (got == -128)
                m << " (-128 is not a value of the format: was it written?)";
            else {
                const float off = std::fabs(static_cast<float>(got) * ws - wk);
                m << "; q * s = " << static_cast<float>(got) * ws << " is " << off << " from w, "
                  << (off > ws / 2 ? "more than" : "and the bound is") << " s / 2 = " << ws / 2;
            }
            if (got != -128 && std::fabs(wk / ws - std::trunc(wk / ws)) == 0.5f)
                m << " (w / s is exactly on a half: std::round takes it away from zero)";
            ctx.fail(m.str());
        }
        if (!(std::fabs(error - want_error) <= 1e-5 * ws + 1e-30)) {
            std::ostringstream m;
            m.precision(9);
            m << "the worst error max_k |w_k - q_k s| returned is " << error << ", expected " << want_error
              << " (the bound s / 2 is " << ws / 2 << "; the measured worst error is at most that, and equal to it "
              << "only when a weight sits on a half step)";
            if (std::isnan(error)) m << " (NaN never passes)";
            else if (error == -1) m << " (is the function still a TODO?)";
            ctx.fail(m.str());
        }
    }
}
