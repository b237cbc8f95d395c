// examples/tinyllm/tour_positional.cpp — the tour chapter on positions: the
// sinusoidal table of the example sentence, RoPE turning a pair of features,
// the relative-position property of RoPE, and ALiBi's distance penalty.
#include "registry.hpp"
#include "text.hpp"

#include <tinyllm/positional.hpp>
#include <tinyllm/random.hpp>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

double dot(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
}

// RoPE of one head vector at one position.
std::vector<float> rope_at(std::vector<float> v, std::int64_t pos, const tinyllm::rope_config& cfg) {
    const index_t D = static_cast<index_t>(v.size());
    tinyllm::cpu::apply_rope(tinyllm::tensor_view<float, 4>(v.data(), {1, 1, 1, D}),
                             tinyllm::tensor_view<const std::int64_t, 2>(&pos, {1, 1}), cfg);
    return v;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(30, "positions", "Positions: how a model that reads in parallel knows the order") {
    auto& out = ctx.out;
    const auto words = words_of(example_sentence);
    const index_t T = static_cast<index_t>(words.size());
    out << "Without a mask, attention looks at all tokens at once and treats them as a set: shuffle\n"
           "the words and every output is shuffled the same way, nothing else changes. \"The tiger ate\n"
           "the fish\" and \"the fish ate the tiger\" would be the same bag of vectors. The causal\n"
           "mask breaks this symmetry (each token sees only itself and the tokens before it), and\n"
           "models with no positional encoding still learn positions through it (Haviv et al. 2022).\n"
           "A positional encoding puts the order in directly. Here the positions are the "
        << T << " words of the sentence (with a tokenizer: token positions).\n";

    // ---- sinusoidal ------------------------------------------------------------
    const index_t D = 64;
    std::vector<std::int64_t> positions(static_cast<std::size_t>(T));
    for (index_t t = 0; t < T; ++t) positions[static_cast<std::size_t>(t)] = t;
    tinyllm::tensor<float, 2> pe({T, D});  // (T, D)
    tinyllm::cpu::sinusoidal_encoding(pe.view(), tinyllm::tensor_view<const std::int64_t, 1>(positions.data(), {T}));
    out << "\n1. Sinusoidal encoding (the original Transformer): add to the embedding at position p\n"
           "   PE(p, 2i) = sin(p / 10000^(2i/d)),  PE(p, 2i+1) = cos(p / 10000^(2i/d)).   d = "
        << D << ", a few of its " << D << " features:\n\n";
    const index_t shown[] = {0, 1, 2, 3, 16, 17, 62, 63};
    out << "     p  word     ";
    for (index_t j : shown) {
        char label[16];
        std::snprintf(label, sizeof label, "f%lld", static_cast<long long>(j));
        out << std::setw(8) << label;
    }
    out << "\n";
    for (index_t t = 0; t < T; ++t) {
        out << "    " << std::setw(2) << t << "  " << std::left << std::setw(9) << words[static_cast<std::size_t>(t)].substr(0, 8)
            << std::right;
        for (index_t j : shown) out << std::setw(8) << std::fixed << std::setprecision(3) << pe(t, j);
        out << "\n";
    }
    out.unsetf(std::ios::fixed);
    out << "\n   Features 0/1 turn by 1 radian per position (a fast clock hand); features 62/63 by\n"
           "   10000^(-62/64) = 1.3e-4 radians (a slow one). Together they give every position a\n"
           "   distinct code, like the hands of a clock with 32 dials. (docs/img/sinusoidal.png)\n";

    // ---- RoPE turning one pair ---------------------------------------------------
    const tinyllm::rope_config cfg{.rotary_dim = D, .theta = 10000.0, .pairing = tinyllm::rope_pairing::rotate_half};
    const auto w = tinyllm::cpu::rope_inverse_frequencies(cfg);
    out << "\n2. RoPE (Llama, GPT-NeoX, ...) adds nothing: it rotates q and k. The d features of a head\n"
           "   form d/2 pairs; pair i at position p turns by p * w_i, w_i = 10000^(-2i/d). Pair 0\n"
           "   (features 0 and 32 in Llama's rotate_half layout) turns by w_0 = "
        << w[0] << " rad per position,\n   pair 8 (features 8 and 40) by w_8 = " << std::setprecision(4) << w[8]
        << ".\n   The vector (1, 0) in pair 0 and in pair 8, word by word:\n\n";
    out << "     p  word        pair 0 (f0, f32)      pair 8 (f8, f40)\n";
    for (index_t t = 0; t < T; ++t) {
        std::vector<float> v(static_cast<std::size_t>(D), 0.0f);
        v[0] = 1.0f;   // pair 0: features 0 and 32
        v[8] = 1.0f;   // pair 8: features 8 and 40
        const auto r = rope_at(v, t, cfg);
        out << "    " << std::setw(2) << t << "  " << std::left << std::setw(9) << words[static_cast<std::size_t>(t)].substr(0, 8)
            << std::right << std::fixed << std::setprecision(3) << "  (" << std::setw(6) << r[0] << ", " << std::setw(6)
            << r[32] << ")      (" << std::setw(6) << r[8] << ", " << std::setw(6) << r[40] << ")\n";
    }
    out.unsetf(std::ios::fixed);

    // ---- relative positions --------------------------------------------------------
    std::vector<float> q(static_cast<std::size_t>(D)), k(static_cast<std::size_t>(D));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(q.data(), {D}), 30, -1.0f, 1.0f);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(k.data(), {D}), 31, -1.0f, 1.0f);
    out << "\n3. Why rotate? Rotations compose: <R(m) q, R(n) k> = <q, R(n - m) k>. The score of a query\n"
           "   at position m and a key at n depends only on the distance m - n. The same random q and k\n"
           "   placed at every (m, n) among the first 8 words (rows m = query, columns n = key):\n\n";
    const index_t N = 8;
    out << "    m\\n ";
    for (index_t n = 0; n < N; ++n) out << std::setw(8) << n;
    out << "\n";
    for (index_t m = 0; m < N; ++m) {
        out << "    " << std::setw(2) << m << "  ";
        const auto qm = rope_at(q, m, cfg);
        for (index_t n = 0; n < N; ++n) out << std::setw(8) << std::fixed << std::setprecision(3) << dot(qm, rope_at(k, n, cfg));
        out << "\n";
    }
    out << "\n   Each diagonal (same m - n) holds one number. Far apart, the same pattern:\n";
    for (std::int64_t delta : {0, 1, 2, 5}) {
        out << "    m - n = " << delta << ":";
        for (std::int64_t n : {0, 100, 1000}) out << "  score(" << n + delta << ", " << n << ") = " << std::setw(7) << dot(rope_at(q, n + delta, cfg), rope_at(k, n, cfg));
        out << "\n";
    }
    out.unsetf(std::ios::fixed);
    out << "   (docs/img/rope_similarity.png shows <RoPE(q, m), RoPE(q, n)> for m, n up to 64.)\n";

    // ---- ALiBi ------------------------------------------------------------------------
    const auto slopes = tinyllm::alibi_slopes(8);
    out << "\n4. ALiBi (BLOOM, MPT) leaves q and k alone and adds -slope_h * (m - n) to each score: a\n"
           "   penalty growing with distance, steep for some heads, gentle for others. 8 heads:\n   slopes";
    for (float s : slopes) out << "  1/" << std::lround(1.0f / s);
    out << "\n   bias added to the scores of the last word \"" << words.back() << "\" (m = " << T - 1
        << ") for keys n = 0 .. " << T - 1 << ", heads 0 and 7:\n";
    for (int h : {0, 7}) {
        out << "    head " << h << ":";
        for (index_t n = 0; n < T; ++n)
            out << " " << std::fixed << std::setprecision(3)
                << tinyllm::alibi_bias(slopes[static_cast<std::size_t>(h)], T - 1, n);
        out << "\n";
    }
    out.unsetf(std::ios::fixed);
    out << "\n   In code: tinyllm::cpu::apply_rope(q, k, cfg, cache_length) (or explicit positions) and\n"
           "   tinyllm::cuda::apply_rope_cached\n"
           "   (docs/positional.md has the formulas, the scalings for long contexts, and the kernels).\n";
}
