// tinyllm/beam_search.hpp — decoding whole sequences: best-of-n sampling and
// beam search, over a user-supplied step function (CPU reference).
//
// Samplers (tinyllm/sampling.hpp) pick ONE next token. Some decoders look at
// whole sequences instead. Both below call a step function
//
//     step(prefix) -> log p(next token | prefix), a vector of V log-probabilities
//
// (a model run on the tokens so far), and score a sequence y_1..y_L by its
// total log-probability sum_t log p(y_t | y_<t), optionally normalized by length:
//
//     score = log p(y) / L^alpha        alpha = 0: raw sum; alpha = 1: mean per token
//
// Raw sums favour short sequences (every extra token multiplies in a
// probability < 1); alpha > 0 removes part of that bias (Wu et al. 2016 use a
// similar length penalty in GNMT; Hugging Face's `length_penalty` is this alpha).
//
// * best_of_n: draw n sequences independently (each with a logit-processor
//   chain and the Philox sampler, sequence s using random stream s and its
//   position as the step), and keep the one with the highest score (ties: the
//   lowest s). OpenAI's `best_of` works this way.
// * beam_search: keep the `width` best partial sequences ("beams"). At each
//   step, extend every beam by every token, rank the candidates by total
//   log-probability (ties: lower beam, then lower token), and walk down the
//   ranking: a candidate ending in `eos` among the top `width` is finished;
//   the others become the new beams until there are `width` of them. Stop
//   when `width` sequences have finished, no beam is left, or after
//   max_new_tokens (unfinished beams then count as finished). The result is
//   the finished sequences by score, best first, at most `width` of them.
//   Greedy decoding is beam search with width 1; a wider beam can find a
//   sequence whose first token looked worse (see tests/test_sampling.cpp).
#pragma once

#include <tinyllm/error.hpp>
#include <tinyllm/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <vector>

namespace tinyllm {

// log-probabilities (V) of the next token after `prefix` (prompt + generated so far).
using step_function = std::function<std::vector<float>(std::span<const token_id> prefix)>;

struct generated_sequence {
    std::vector<token_id> tokens;  // the generated tokens (not the prompt), eos included if reached
    double log_prob = 0.0;             // sum of log p(token | prefix) from the step function
    double score = 0.0;                // log_prob / length^alpha
    bool finished = false;             // ended with eos
};

struct best_of_n_options {
    int n = 4;
    index_t max_new_tokens = 32;
    std::optional<token_id> eos;
    float length_alpha = 0.0f;   // 0: rank by total log-probability; 1: by mean per token
    sampling::chain chain;       // processors applied to the log-probs before each draw
    std::uint64_t seed = 0;
};

struct beam_search_options {
    int width = 4;
    index_t max_new_tokens = 32;
    std::optional<token_id> eos;
    float length_penalty = 0.0f;  // alpha: score = log p / length^alpha
};

namespace detail {
inline double length_normalized(double log_prob, std::size_t length, float alpha) {
    return alpha == 0.0f || length == 0 ? log_prob : log_prob / std::pow(static_cast<double>(length), alpha);
}
inline std::vector<float> checked_step(const step_function& step, std::span<const token_id> prefix,
                                       std::size_t& vocab, const char* what) {
    std::vector<float> lp = step(prefix);
    TINYLLM_EXPECT(!lp.empty(), what, ": the step function returned no log-probabilities");
    if (vocab == 0) vocab = lp.size();
    TINYLLM_EXPECT(lp.size() == vocab, what, ": the step function returned ", lp.size(),
                   " log-probabilities, earlier ", vocab);
    cpu::sampling_detail::check_row(lp, 0, what);
    return lp;
}
}  // namespace detail

namespace cpu {

// n sampled sequences; the best by score. All n (in sample order) go to *all if given.
inline generated_sequence best_of_n(const step_function& step, std::span<const token_id> prompt,
                                    const best_of_n_options& o, std::vector<generated_sequence>* all = nullptr) {
    TINYLLM_EXPECT(o.n >= 1, "best_of_n: n = ", o.n, " must be at least 1");
    TINYLLM_EXPECT(o.max_new_tokens >= 1, "best_of_n: max_new_tokens = ", o.max_new_tokens, " must be at least 1");
    TINYLLM_EXPECT(std::isfinite(o.length_alpha) && o.length_alpha >= 0.0f, "best_of_n: length_alpha = ",
                   o.length_alpha, " must be finite and >= 0");
    std::size_t vocab = 0;
    std::vector<generated_sequence> samples;
    for (int s = 0; s < o.n; ++s) {
        generated_sequence seq;
        std::vector<token_id> prefix(prompt.begin(), prompt.end());
        for (index_t position = 0; position < o.max_new_tokens; ++position) {
            const std::vector<float> lp = ::tinyllm::detail::checked_step(step, prefix, vocab, "best_of_n");
            std::vector<float> logits = lp;
            const index_t V = static_cast<index_t>(vocab), L = static_cast<index_t>(seq.tokens.size());
            apply(tensor_view<float, 2>(logits.data(), {index_t{1}, V}), o.chain,
                  tensor_view<const token_id, 2>(seq.tokens.data(), {index_t{1}, L}));
            const token_id token = sample_row(
                logits, sampling_bits(o.seed, static_cast<std::uint64_t>(s), static_cast<std::uint64_t>(position)));
            seq.tokens.push_back(token);
            prefix.push_back(token);
            seq.log_prob += lp[static_cast<std::size_t>(token)];
            if (o.eos && token == *o.eos) {
                seq.finished = true;
                break;
            }
        }
        seq.score = ::tinyllm::detail::length_normalized(seq.log_prob, seq.tokens.size(), o.length_alpha);
        samples.push_back(std::move(seq));
    }
    std::size_t best = 0;
    for (std::size_t s = 1; s < samples.size(); ++s)
        if (samples[s].score > samples[best].score) best = s;
    generated_sequence result = samples[best];
    if (all) *all = std::move(samples);
    return result;
}

// Beam search (see the header comment); the finished sequences, best score first.
inline std::vector<generated_sequence> beam_search(const step_function& step, std::span<const token_id> prompt,
                                                   const beam_search_options& o) {
    TINYLLM_EXPECT(o.width >= 1, "beam_search: width = ", o.width, " must be at least 1");
    TINYLLM_EXPECT(o.max_new_tokens >= 1, "beam_search: max_new_tokens = ", o.max_new_tokens,
                   " must be at least 1");
    TINYLLM_EXPECT(std::isfinite(o.length_penalty), "beam_search: length_penalty = ", o.length_penalty,
                   " must be finite");
    const std::size_t width = static_cast<std::size_t>(o.width);
    std::size_t vocab = 0;
    std::vector<generated_sequence> beams(1), finished;
    auto finish = [&](generated_sequence seq) {
        seq.score = ::tinyllm::detail::length_normalized(seq.log_prob, seq.tokens.size(), o.length_penalty);
        finished.push_back(std::move(seq));
    };
    for (index_t position = 0; position < o.max_new_tokens && !beams.empty() && finished.size() < width;
         ++position) {
        struct candidate {
            double log_prob;
            std::size_t beam;
            token_id token;
        };
        std::vector<candidate> candidates;
        for (std::size_t b = 0; b < beams.size(); ++b) {
            std::vector<token_id> prefix(prompt.begin(), prompt.end());
            prefix.insert(prefix.end(), beams[b].tokens.begin(), beams[b].tokens.end());
            const std::vector<float> lp = ::tinyllm::detail::checked_step(step, prefix, vocab, "beam_search");
            for (std::size_t t = 0; t < lp.size(); ++t)
                if (lp[t] != -std::numeric_limits<float>::infinity())
                    candidates.push_back({beams[b].log_prob + lp[t], b, static_cast<token_id>(t)});
        }
        TINYLLM_EXPECT(!candidates.empty() || !finished.empty(), "beam_search: at new token ", position,
                       " every token of every beam has log-probability -inf (all tokens banned or filtered)");
        // Best first; stable, so ties keep beam-major, token-minor order.
        std::stable_sort(candidates.begin(), candidates.end(),
                         [](const candidate& a, const candidate& b) { return a.log_prob > b.log_prob; });
        std::vector<generated_sequence> next;
        for (std::size_t rank = 0; rank < candidates.size() && next.size() < width; ++rank) {
            const candidate& c = candidates[rank];
            generated_sequence seq = beams[c.beam];
            seq.tokens.push_back(c.token);
            seq.log_prob = c.log_prob;
            if (o.eos && c.token == *o.eos) {
                if (rank < width) {
                    seq.finished = true;
                    finish(std::move(seq));
                }
            } else {
                next.push_back(std::move(seq));
            }
        }
        beams = std::move(next);
    }
    if (finished.size() < width)
        for (auto& seq : beams) finish(std::move(seq));
    std::stable_sort(finished.begin(), finished.end(),
                     [](const generated_sequence& a, const generated_sequence& b) { return a.score > b.score; });
    if (finished.size() > width) finished.resize(width);
    return finished;
}

}  // namespace cpu
}  // namespace tinyllm
