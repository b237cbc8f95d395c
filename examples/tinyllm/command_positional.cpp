// examples/tinyllm/command_positional.cpp — `tinyllm positions`: print the
// tables behind the positional-encoding pictures as CSV, computed by the CPU
// reference in <tinyllm/positional.hpp> (tools/plot-positional draws them).
#include "registry.hpp"

#include <tinyllm/positional.hpp>

#include <cmath>
#include <cstdint>
#include <iomanip>
#include <ostream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

// v rotated by RoPE at position pos.
std::vector<float> rope_at(std::vector<float> v, std::int64_t pos, const tinyllm::rope_config& cfg) {
    const index_t D = static_cast<index_t>(v.size());
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(v.data(), {1, 1, 1, D}),
                             tinyllm::tensor_view<const std::int64_t, 2>(&pos, {1, 1}), cfg);
    return v;
}

// <RoPE(q, m), RoPE(q, n)> / |q|^2 for q = (1, ..., 1): the mean over pairs of cos((m - n) w_i).
double similarity(const std::vector<float>& qm, const std::vector<float>& qn) {
    double s = 0;
    for (std::size_t i = 0; i < qm.size(); ++i) s += static_cast<double>(qm[i]) * qn[i];
    return s / static_cast<double>(qm.size());
}

}  // namespace

TINYLLM_COMMAND("positions", "print positional-encoding tables as CSV (sinusoidal, RoPE similarity)",
                "usage: tinyllm positions TABLE [--positions N] [--dim D] [--base B]\n\n"
                "TABLE is one of\n"
                "  sinusoidal       N rows (positions 0..N-1) of D values PE(p, j)\n"
                "  rope-similarity  N rows of N values <RoPE(q, m), RoPE(q, n)> / |q|^2, q = (1, ..., 1)\n"
                "  rope-distance    N values <RoPE(q, d), RoPE(q, 0)> / |q|^2 for d = 0..N-1\n\n"
                "--base is the sinusoidal base or RoPE's theta (default 10000); RoPE uses rotate_half\n"
                "with rotary_dim = D. Defaults: N = 128, D = 128.\n") {
    const auto a = parse_args(args, {"positions", "dim", "base"}, {});
    if (a.positional.size() != 1) throw usage_error("give exactly one TABLE");
    const std::string table = a.positional[0];
    const index_t N = a.get_int("positions", 128), D = a.get_int("dim", 128);
    const double base = a.get_double("base", 10000.0);
    if (N < 1 || D < 2 || D % 2 != 0) throw usage_error("--positions must be >= 1 and --dim even and >= 2");
    // The sinusoidal table's check (cpu::sinusoidal_encoding's), said before any row is printed.
    if (const float b = static_cast<float>(base); !(std::isfinite(b) && b > 0))
        throw usage_error("--base must be a positive number that a float holds, got " + a.get("base"));
    out << std::setprecision(7);
    if (table == "sinusoidal") {
        for (index_t p = 0; p < N; ++p)
            for (index_t j = 0; j < D; ++j)
                out << tinyllm::sinusoidal_value(p, j, D, static_cast<float>(base)) << (j + 1 == D ? "\n" : ",");
        return 0;
    }
    const tinyllm::rope_config cfg{.rotary_dim = D, .theta = base};
    const std::vector<float> q(static_cast<std::size_t>(D), 1.0f);
    if (table == "rope-similarity") {
        std::vector<std::vector<float>> rotated;
        for (index_t p = 0; p < N; ++p) rotated.push_back(rope_at(q, p, cfg));
        for (index_t m = 0; m < N; ++m)
            for (index_t n = 0; n < N; ++n)
                out << similarity(rotated[static_cast<std::size_t>(m)], rotated[static_cast<std::size_t>(n)])
                    << (n + 1 == N ? "\n" : ",");
        return 0;
    }
    if (table == "rope-distance") {
        const auto q0 = rope_at(q, 0, cfg);
        for (index_t d = 0; d < N; ++d) out << similarity(rope_at(q, d, cfg), q0) << "\n";
        return 0;
    }
    throw usage_error("unknown table '" + table + "'");
}
