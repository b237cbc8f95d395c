// examples/tinyllm/tour_sampling.cpp — the tour's sampling chapter: what each
// logit processor does to one next-token distribution, and 10,000 draws
// against the exact probabilities.
//
// The distribution is for the example sentence with its last word masked,
// "... because it was ___", over 12 candidate words with MADE-UP logits (no
// model produced them; tools/plot-sampling draws the same numbers).
#include "registry.hpp"
#include "text.hpp"

#include <tinyllm/beam_search.hpp>
#include <tinyllm/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;
namespace sampling = tinyllm::sampling;

namespace {

// The candidates and their made-up logits (keep in sync with tools/plot-sampling).
const std::vector<std::string> words{"thirsty", "tired", "hungry", "hot",   "scared", "bored",
                                     "curious", "happy", "lost",   "sleepy", "angry", "purple"};
const std::vector<float> base_logits{4.0f, 3.2f, 3.0f, 2.6f, 2.2f, 1.8f, 1.5f, 1.2f, 0.8f, 0.7f, 0.3f, -2.0f};

std::string pad(const std::string& s, std::size_t width) { return s.size() >= width ? s : s + std::string(width - s.size(), ' '); }

std::vector<float> processed(const sampling::chain& chain, const std::vector<tinyllm::token_id>& generated = {}) {
    std::vector<float> z = base_logits;
    const index_t V = static_cast<index_t>(z.size()), L = static_cast<index_t>(generated.size());
    tinyllm::cpu::apply(tinyllm::tensor_view<float, 2>(z.data(), {index_t{1}, V}), chain,
                        tinyllm::tensor_view<const tinyllm::token_id, 2>(generated.data(), {index_t{1}, L}));
    return z;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(60, "sampling", "Sampling: from logits to the next word") {
    auto& out = ctx.out;
    out << "The model's last layer gives one logit per vocabulary entry. For the sentence\n    \""
        << example_sentence
        << "\"\nwith its last word masked, suppose it scored these 12 candidates (the logits are MADE UP\n"
           "for this chapter; a real vocabulary has 50k-256k entries). softmax turns logits into\n"
           "probabilities: p_i = exp(z_i) / sum_j exp(z_j).\n\n";

    struct column {
        std::string title;
        sampling::chain chain;
    };
    const std::vector<column> columns{{"p", {}},
                                      {"T=0.5", {sampling::temperature{0.5f}}},
                                      {"T=1.5", {sampling::temperature{1.5f}}},
                                      {"top-k 5", {sampling::top_k{5}}},
                                      {"top-p .9", {sampling::top_p{0.9f}}},
                                      {"min-p .1", {sampling::min_p{0.1f}}}};
    std::vector<std::vector<double>> probs;
    for (const auto& c : columns) probs.push_back(tinyllm::cpu::softmax_row(processed(c.chain)));
    out << "    " << pad("word", 9) << pad("logit", 8);
    for (const auto& c : columns) out << pad(c.title, 10);
    out << "\n";
    for (std::size_t i = 0; i < words.size(); ++i) {
        out << "    " << pad(words[i], 9) << pad(fixed(base_logits[i], 1), 8);
        for (const auto& p : probs) out << pad(p[i] > 0 ? fixed(p[i], 4) : "  -", 10);
        out << "\n";
    }
    out << "\n  temperature T divides the logits: T < 1 sharpens (thirsty rises to "
        << fixed(probs[1][0], 2) << "), T > 1 flattens.\n"
           "  top-k keeps the k best words; top-p keeps the best words until their mass reaches p;\n"
           "  min-p keeps words at least 0.1 times as likely as the best. '-' = removed; the rest\n"
           "  is renormalized. Temperature 0 is greedy decoding: always the argmax, '"
        << words[0] << "'.\n";

    // 10,000 draws with the Philox sampler: the frequencies match the probabilities.
    const sampling::chain chosen{sampling::temperature{0.8f}, sampling::top_p{0.9f}};
    const std::vector<float> z = processed(chosen);
    const auto exact = tinyllm::cpu::softmax_row(z);
    std::vector<int> counts(words.size(), 0);
    const int draws = 10000;
    for (int s = 0; s < draws; ++s)
        ++counts[static_cast<std::size_t>(
            tinyllm::cpu::sample_row(z, tinyllm::sampling_bits(2026, 0, static_cast<std::uint64_t>(s))))];
    out << "\n10,000 draws after temperature 0.8 then top-p 0.9 (seed 2026, one Philox draw per step):\n"
        << "    " << pad("word", 9) << pad("exact", 9) << pad("sampled", 9) << "\n";
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (exact[i] == 0 && counts[i] == 0) continue;
        out << "    " << pad(words[i], 9) << pad(fixed(exact[i], 4), 9) << pad(fixed(counts[i] / double(draws), 4), 9)
            << "\n";
    }
    out << "  (" << words.size() - static_cast<std::size_t>(std::count_if(exact.begin(), exact.end(), [](double p) { return p > 0; }))
        << " words were removed by top-p and never drawn.)\n";

    // Penalties: a repeated word is pushed down.
    const std::vector<tinyllm::token_id> generated{0, 0, 1};  // "thirsty" twice and "tired" once so far
    const auto penalized = tinyllm::cpu::softmax_row(processed({sampling::repetition_penalty{1.5f}}, generated));
    const auto freq = tinyllm::cpu::softmax_row(processed({sampling::frequency_presence_penalty{0.5f, 0.5f}}, generated));
    out << "\nIf 'thirsty' was already generated twice and 'tired' once, penalties discourage repeats:\n"
        << "    repetition penalty 1.5 (z/1.5 if z > 0):   thirsty " << fixed(probs[0][0], 3) << " -> "
        << fixed(penalized[0], 3) << ", tired " << fixed(probs[0][1], 3) << " -> " << fixed(penalized[1], 3) << "\n"
        << "    frequency 0.5 + presence 0.5 (z - 0.5*count - 0.5): thirsty -> " << fixed(freq[0], 3) << ", tired -> "
        << fixed(freq[1], 3) << "\n"
        << "  Greedy decoding has no such memory: if a phrase made itself likely once, the argmax picks\n"
           "  it again and again, which is why pure greedy text loops.\n";

    std::vector<tinyllm::token_id> out_token(1);
    std::vector<float> zz = base_logits;
    const std::vector<tinyllm::token_id> banned{0};
    tinyllm::cpu::ban_tokens(tinyllm::tensor_view<float, 2>(zz.data(), {index_t{1}, index_t{12}}), banned);
    tinyllm::cpu::greedy(tinyllm::tensor_view<tinyllm::token_id, 1>(out_token.data(), {1}),
                         tinyllm::tensor_view<const float, 2>(zz.data(), {index_t{1}, index_t{12}}));
    out << "  Banning 'thirsty' (logit -inf) makes greedy choose '" << words[static_cast<std::size_t>(out_token[0])]
        << "'.\n";

    out << "\nThe CUDA sampler (tinyllm::cuda::sample) picks top-k and top-p thresholds by radix selection\n"
           "over the logits' bits instead of sorting, and computes probabilities as integers, so for the\n"
           "same seed it chooses exactly the CPU's token"
        << (ctx.gpu_available ? " (tests/cuda/test_sampling.cu checks it on this GPU; on the simulated GPU too).\n"
                              : " (tests/cuda/test_sampling.cu checks it on a GPU, and on the simulated GPU).\n");
}
