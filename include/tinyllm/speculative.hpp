// tinyllm/speculative.hpp — speculative decoding: a cheap drafter proposes k
// tokens, the model (the "target") checks all of them in ONE forward pass, and
// an acceptance–rejection rule keeps the output distributed exactly as the
// target's own sampling (CPU reference).
//
// Why it is faster: decoding one token reads every weight of the target once
// (the bandwidth-bound case, see docs/quantization.md). A forward over k+1
// positions reads the weights once too, so if the target agrees with the
// drafter on a tokens per round, a round yields a + 1 tokens for one target
// forward plus k cheap draft forwards.
//
// One round, with the committed text x_1..x_n (prompt + tokens emitted so far):
//
//     draft:   for i = 1..k:  q_i = draft(. | x, d_1..d_{i-1});  d_i ~ q_i
//     verify:  p_1..p_{k+1} = target(. | x), target(. | x, d_1), ..., target(. | x, d_1..d_k)
//              (one forward of the k+1 tokens x_n, d_1, ..., d_k over the target's KV cache)
//     for i = 1..k:
//         accept d_i with probability min(1, p_i(d_i) / q_i(d_i))
//         on the first rejection: emit r ~ norm(max(0, p_i - q_i)) and end the round
//     all k accepted: emit a bonus token ~ p_{k+1}
//     roll both KV caches back to the committed text (rejected drafts are forgotten)
//
// The rule is exact (Leviathan et al. 2023, "Fast Inference from Transformers
// via Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language
// Model Decoding with Speculative Sampling"): for one position,
//
//     P(emit y) = q(y) min(1, p(y)/q(y)) + P(reject) norm(max(0, p - q))(y)
//               = min(q(y), p(y))       + (1 - sum_z min(q(z), p(z))) * max(0, p(y) - q(y)) / sum_z max(0, p(z) - q(z))
//               = min(q(y), p(y)) + max(0, p(y) - q(y))          (both sums equal 1 - sum_z min(p(z), q(z)))
//               = p(y).
//
// So every emitted token is distributed as the target's sampler would draw it,
// whatever the drafter proposes; a good drafter only makes rounds longer.
// p and q here are the distributions the sampling::params chain gives
// (temperature -> top-k -> top-p -> min-p, with the integer weights of
// <tinyllm/sampling.hpp>); temperature 0 makes both one-hot at their argmax,
// and the rule reduces to "accept while the draft's argmax is the target's":
// greedy speculative decoding returns exactly the target's greedy tokens.
//
// Two drafters:
//   * a draft model (a smaller model over the same vocabulary) — generate_speculative;
//   * prompt lookup (n-gram drafting; Saxena 2023, as in transformers'
//     `prompt_lookup_num_tokens`): find the latest earlier occurrence of the
//     text's last N tokens (then N-1, ..., 1) and propose the tokens that
//     followed it. Its q is one-hot, so acceptance is p(d) and the residual is
//     p without d — no draft model at all — generate_prompt_lookup.
//
// Randomness: output position j (0-based, prompt excluded) draws from Philox
// (seed, stream) at steps 3j (the draft's sample), 3j+1 (the acceptance test)
// and 3j+2 (the correction or bonus sample), so a run is a function of the seed.
//
// The loop runs on a model adapter (detail::cpu_target here; the CUDA model's
// in <tinyllm/cuda/speculative.cuh>), so the GPU target uses the same code.
//
//     tinyllm::speculative_options o;  o.draft_tokens = 4;  o.max_new_tokens = 64;
//     auto r = tinyllm::cpu::generate_speculative(target, draft, prompt, o);
//     // r.tokens, r.from_draft[i] (accepted draft or target sample), r.acceptance_rate()
#pragma once

#include <tinyllm/error.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <vector>

namespace tinyllm {

struct speculative_options {
    index_t draft_tokens = 4;                       // k: tokens drafted per round (>= 1)
    index_t max_new_tokens = 32;
    sampling::params sampling{0.0f, {}, {}, {}};    // the target's sampler (temperature 0: greedy)
    std::uint64_t seed = 0;                         // Philox seed and stream of every draw
    std::uint64_t stream = 0;
    std::vector<token_id> eos_token_ids;            // stop after one of these (empty: the target config's)
};

struct speculative_result {
    std::vector<token_id> tokens;    // generated (the prompt excluded; an EOS that stopped it included)
    std::vector<bool> from_draft;    // per token: a drafted token the target accepted (else the target sampled it)
    index_t rounds = 0;              // target verification forwards
    index_t drafted = 0;             // tokens proposed
    index_t accepted = 0;            // proposals accepted
    std::vector<index_t> accepted_per_round;  // a per round, 0..k

    double acceptance_rate() const { return drafted ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0; }
    double tokens_per_round() const {
        return rounds ? static_cast<double>(tokens.size()) / static_cast<double>(rounds) : 0.0;
    }
};

namespace detail {

// The distribution the sampler draws a row from, as probabilities: the
// params chain applied to the logits, then the integer weights normalized.
// Temperature 0: one-hot at the greedy token.
inline std::vector<double> sampler_distribution(std::span<const float> logits, const sampling::params& p) {
    const index_t V = static_cast<index_t>(logits.size());
    tensor<float, 2> work(extents<2>{1, V});  // (1, V)
    std::copy(logits.begin(), logits.end(), work.data());
    std::vector<double> dist(logits.size(), 0.0);
    if (p.temperature == 0.0f) {
        token_id best = 0;
        cpu::greedy(tensor_view<token_id, 1>(&best, {1}), tensor_view<const float, 2>(work.view()));
        dist[static_cast<std::size_t>(best)] = 1.0;
        return dist;
    }
    cpu::apply_params(work.view(), p);
    const std::span<const float> row(work.data(), logits.size());
    cpu::sampling_detail::check_row(row, 0, "speculative decoding");
    const std::vector<std::uint64_t> w = cpu::sampling_detail::row_weights(row);
    std::uint64_t total = 0;
    for (std::uint64_t x : w) total += x;
    TINYLLM_EXPECT(total > 0, "speculative decoding: every logit is -inf (all tokens banned or filtered)");
    for (std::size_t i = 0; i < w.size(); ++i) dist[i] = static_cast<double>(w[i]) / static_cast<double>(total);
    return dist;
}

// A uniform double in [0, 1) from 64 random bits (their top 53).
inline double unit_interval(std::uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1p-53; }

// The index i with c_{i-1} <= u * total < c_i over the running sums c of `weights`
// (never an index of weight 0).
inline token_id draw_from(std::span<const double> weights, double u) {
    double total = 0;
    for (double w : weights) total += w;
    TINYLLM_EXPECT(total > 0, "speculative decoding: a distribution with no mass");
    const double t = u * total;
    double running = 0;
    token_id last = -1;
    for (std::size_t i = 0; i < weights.size(); ++i) {
        if (weights[i] <= 0) continue;
        running += weights[i];
        last = static_cast<token_id>(i);
        if (running > t) return last;
    }
    return last;  // rounding left t at the very top
}

}  // namespace detail

// What the acceptance rule did with one drafted token.
struct speculative_step {
    token_id token;  // the drafted token if accepted, else the resampled one
    bool accepted;
};

// The acceptance rule for one drafted token d (see the header): with target
// distribution p and draft distribution q (an empty q means one-hot at d),
// accept d if u_accept < p(d)/q(d); otherwise return a token drawn with u_resample
// from norm(max(0, p - q)).
inline speculative_step accept_or_resample(std::span<const double> p, std::span<const double> q, token_id d,
                                           double u_accept, double u_resample) {
    const std::size_t V = p.size();
    TINYLLM_EXPECT(q.empty() || q.size() == V, "accept_or_resample: q has ", q.size(), " entries, p ", V);
    TINYLLM_EXPECT(d >= 0 && static_cast<std::size_t>(d) < V, "accept_or_resample: token ", d,
                   " is outside the vocabulary [0, ", V, ")");
    TINYLLM_EXPECT(u_accept >= 0 && u_accept < 1 && u_resample >= 0 && u_resample < 1,
                   "accept_or_resample: the uniform draws u_accept = ", u_accept, " and u_resample = ", u_resample,
                   " must be in [0, 1)");
    const double qd = q.empty() ? 1.0 : q[static_cast<std::size_t>(d)];
    TINYLLM_EXPECT(qd > 0 && std::isfinite(qd), "accept_or_resample: the draft proposed token ", d,
                   ", which its own distribution gives ", qd);
    const double pd = p[static_cast<std::size_t>(d)];
    // The accept path reads p(d) alone (the rejection path checks every entry below).
    TINYLLM_EXPECT(pd >= 0 && pd <= 1 + 1e-9, "accept_or_resample: the target gives the proposed token ", d,
                   " probability ", pd, "; probabilities are in [0, 1]");
    if (u_accept < pd / qd) return {d, true};  // min(1, p/q): a ratio >= 1 always accepts (u < 1)
    std::vector<double> residual(V);            // max(0, p - q)
    double mass = 0;
    for (std::size_t i = 0; i < V; ++i) {
        const double qi = q.empty() ? (i == static_cast<std::size_t>(d) ? 1.0 : 0.0) : q[i];
        TINYLLM_EXPECT(p[i] >= 0 && std::isfinite(p[i]) && qi >= 0 && std::isfinite(qi), "accept_or_resample: token ",
                       i, " has probability p = ", p[i], ", q = ", qi, "; probabilities are finite and >= 0");
        mass += residual[i] = std::max(0.0, p[i] - qi);
    }
    // A rejection implies p(d) < q(d), so some other token has p > q; only
    // rounding can leave no mass, and then p itself is the right distribution.
    if (!(mass > 0)) return {detail::draw_from(p, u_resample), false};
    return {detail::draw_from(residual, u_resample), false};
}

namespace detail {

// What speculate() needs of a model, on any device: sessions (a KV cache and a
// length), logits of every fed position or of the last one, as host (n, V)
// float tensors, and a rollback. cpu_target is the CPU model's;
// <tinyllm/cuda/speculative.cuh> has the CUDA model's.
class cpu_target {
public:
    using session = cpu::model::session;
    explicit cpu_target(const cpu::model& m) : m_(m) {}
    const model_config& config() const { return m_.config(); }
    session new_session(index_t capacity) const { return m_.new_session(capacity); }
    tensor<float, 2> forward(session& s, std::span<const token_id> tokens) const { return m_.forward(s, tokens); }
    tensor<float, 2> forward_last(session& s, std::span<const token_id> tokens) const {
        return m_.forward_last(s, tokens);
    }
    void truncate(session& s, index_t length) const { m_.truncate(s, length); }
    static index_t length(const session& s) { return s.length; }

private:
    const cpu::model& m_;
};

// The drafters. propose(text, k, first_position, out_tokens, out_q) fills up
// to k tokens (fewer, even none, if it has nothing to say) and, for a model,
// their distributions; sync(length) tells it the committed text now has
// `length` tokens (so a model can roll its cache back).
template <class Model>
class model_drafter {
public:
    model_drafter(const Model& m, index_t capacity, const speculative_options& o)
        : m_(m), s_(m.new_session(capacity)), o_(o) {}

    void propose(const std::vector<token_id>& text, index_t k, index_t first_position, std::vector<token_id>& tokens,
                 std::vector<std::vector<double>>& q) {
        const index_t V = m_.config().vocab_size;
        // Catch up with the committed text (the last token, or two after a round that accepted everything).
        const std::size_t fed = static_cast<std::size_t>(Model::length(s_));
        const std::span<const token_id> missing(text.data() + fed, text.size() - fed);
        tensor<float, 2> logits = m_.forward_last(s_, missing);  // (1, V)
        for (index_t i = 0; i < k; ++i) {
            q.push_back(sampler_distribution(std::span<const float>(logits.data(), V), o_.sampling));
            const std::uint64_t bits = sampling_bits(o_.seed, o_.stream, 3 * static_cast<std::uint64_t>(first_position + i));
            const token_id d = draw_from(q.back(), unit_interval(bits));
            tokens.push_back(d);
            if (i + 1 < k) logits = m_.forward_last(s_, std::span<const token_id>(&tokens.back(), 1));
        }
    }
    void sync(index_t length) {
        // The draft cache holds text[0..length-1) at most: the last committed token is fed next round.
        if (Model::length(s_) > length - 1) m_.truncate(s_, length - 1);
    }

private:
    Model m_;
    typename Model::session s_;
    const speculative_options& o_;
};

class prompt_lookup_drafter {
public:
    explicit prompt_lookup_drafter(index_t ngram) : n_(ngram) {}

    void propose(const std::vector<token_id>& text, index_t k, index_t, std::vector<token_id>& tokens,
                 std::vector<std::vector<double>>&) const {
        const index_t L = static_cast<index_t>(text.size());
        for (index_t n = std::min(n_, L - 1); n >= 1; --n) {
            // The latest start s < L - n with text[s..s+n) == text[L-n..L).
            for (index_t s = L - n - 1; s >= 0; --s) {
                if (!std::equal(text.begin() + s, text.begin() + s + n, text.end() - n)) continue;
                for (index_t i = s + n; i < L && static_cast<index_t>(tokens.size()) < k; ++i) tokens.push_back(text[i]);
                return;
            }
        }
    }
    void sync(index_t) const {}

private:
    index_t n_;
};

// The decoding loop of the header's comment, for a target adapter (cpu_target,
// or the CUDA model's) and a drafter.
template <class Target, class Drafter>
speculative_result speculate(const Target& target, Drafter& drafter, std::span<const token_id> prompt,
                             const speculative_options& o, const std::function<void(token_id, bool)>& on_token) {
    const index_t V = target.config().vocab_size;
    const auto& eos = o.eos_token_ids.empty() ? target.config().eos_token_ids : o.eos_token_ids;
    speculative_result r;
    if (o.max_new_tokens == 0) return r;
    // The cache a generation of the same length needs, and no more: a round feeds the
    // last committed token and k <= max_new_tokens - produced - 1 drafts, so it reaches
    // at most prompt + max_new_tokens - 1 positions (GPT-2's position table bounds this).
    auto session = target.new_session(static_cast<index_t>(prompt.size()) + o.max_new_tokens);
    std::vector<token_id> text(prompt.begin(), prompt.end());
    // Prefill all but the last prompt token: every round starts by feeding the
    // last committed token, whose logits are the first position it verifies.
    if (prompt.size() > 1) target.forward_last(session, prompt.first(prompt.size() - 1));

    std::vector<token_id> draft;
    std::vector<std::vector<double>> q;
    const auto emit = [&](token_id t, bool from_draft) {
        r.tokens.push_back(t);
        r.from_draft.push_back(from_draft);
        text.push_back(t);
        if (on_token) on_token(t, from_draft);
        return std::find(eos.begin(), eos.end(), t) != eos.end();
    };
    bool stop = false;
    while (!stop && static_cast<index_t>(r.tokens.size()) < o.max_new_tokens) {
        const index_t produced = static_cast<index_t>(r.tokens.size());
        // A round emits at most k + 1 tokens: draft no more than what is left, minus the bonus.
        const index_t k = std::min(o.draft_tokens, o.max_new_tokens - produced - 1);
        draft.clear();
        q.clear();
        if (k > 0) drafter.propose(text, k, produced, draft, q);
        const index_t n = static_cast<index_t>(draft.size());

        // Verify: feed the last committed token and the drafts, (n + 1, V) logits.
        std::vector<token_id> feed{text.back()};
        feed.insert(feed.end(), draft.begin(), draft.end());
        const index_t before = Target::length(session);
        const tensor<float, 2> logits = target.forward(session, feed);
        ++r.rounds;
        r.drafted += n;

        index_t a = 0;
        for (; a <= n && !stop; ++a) {
            const std::vector<double> p =
                sampler_distribution(std::span<const float>(logits.data() + a * V, static_cast<std::size_t>(V)), o.sampling);
            const std::uint64_t pos = static_cast<std::uint64_t>(produced + a);
            const double u_resample = unit_interval(sampling_bits(o.seed, o.stream, 3 * pos + 2));
            if (a == n) {  // every draft accepted (or none proposed): the bonus token from p_{n+1}
                stop = emit(draw_from(p, u_resample), false);
                break;
            }
            const double u_accept = unit_interval(sampling_bits(o.seed, o.stream, 3 * pos + 1));
            const std::span<const double> qa = q.empty() ? std::span<const double>() : std::span<const double>(q[a]);
            const speculative_step step = accept_or_resample(p, qa, draft[a], u_accept, u_resample);
            stop = emit(step.token, step.accepted);
            if (!step.accepted) break;
            ++r.accepted;
        }
        r.accepted_per_round.push_back(std::min(a, n));
        // Keep the target's cache for the committed text minus its last token.
        target.truncate(session, std::min(Target::length(session), before + static_cast<index_t>(r.tokens.size()) - produced));
        drafter.sync(static_cast<index_t>(text.size()));
    }
    return r;
}

template <class Target>
void check_speculative(const Target& target, std::span<const token_id> prompt, const speculative_options& o,
                       const char* what) {
    TINYLLM_EXPECT(!prompt.empty(), what, ": the prompt is empty");
    TINYLLM_EXPECT(o.draft_tokens >= 1, what, ": draft_tokens = ", o.draft_tokens, " must be at least 1");
    TINYLLM_EXPECT(o.max_new_tokens >= 0, what, ": max_new_tokens = ", o.max_new_tokens, " must not be negative");
    // prompt + max_new_tokens positions: checked before they are added, as the sum may not fit index_t.
    TINYLLM_EXPECT(o.max_new_tokens <= std::numeric_limits<index_t>::max() - static_cast<index_t>(prompt.size()), what,
                   ": ", prompt.size(), " prompt + max_new_tokens = ", o.max_new_tokens,
                   " new tokens are more positions than a session can hold");
    check_params(o.sampling);
    for (token_id t : prompt)
        TINYLLM_EXPECT(t >= 0 && t < target.config().vocab_size, what, ": prompt token ", t,
                       " is outside the target's vocabulary [0, ", target.config().vocab_size, ")");
}

template <class Target, class Draft>
speculative_result generate_speculative_on(const Target& target, const Draft& draft, std::span<const token_id> prompt,
                                           const speculative_options& o,
                                           const std::function<void(token_id, bool)>& on_token, const char* what) {
    check_speculative(target, prompt, o, what);
    TINYLLM_EXPECT(draft.config().vocab_size == target.config().vocab_size, what, ": the draft model's vocabulary has ",
                   draft.config().vocab_size, " tokens and the target's ", target.config().vocab_size,
                   "; a draft must share the target's tokenizer");
    model_drafter<Draft> drafter(draft, static_cast<index_t>(prompt.size()) + o.max_new_tokens, o);
    return speculate(target, drafter, prompt, o, on_token);
}

template <class Target>
speculative_result generate_prompt_lookup_on(const Target& target, std::span<const token_id> prompt, index_t ngram,
                                             const speculative_options& o,
                                             const std::function<void(token_id, bool)>& on_token, const char* what) {
    check_speculative(target, prompt, o, what);
    TINYLLM_EXPECT(ngram >= 1, what, ": ngram = ", ngram, " must be at least 1");
    prompt_lookup_drafter drafter(ngram);
    return speculate(target, drafter, prompt, o, on_token);
}

}  // namespace detail

namespace cpu {
// Speculative decoding with a draft model over the same vocabulary.
// on_token(id, from_draft) is called as each token is committed.
inline speculative_result generate_speculative(const model& target, const model& draft,
                                               std::span<const token_id> prompt, const speculative_options& o,
                                               const std::function<void(token_id, bool)>& on_token = {}) {
    return ::tinyllm::detail::generate_speculative_on(::tinyllm::detail::cpu_target(target),
                                                      ::tinyllm::detail::cpu_target(draft), prompt, o, on_token,
                                                      "generate_speculative");
}

// Speculative decoding with prompt lookup: drafts copied from the text's own
// earlier continuation of its last `ngram` (or fewer) tokens.
inline speculative_result generate_prompt_lookup(const model& target, std::span<const token_id> prompt, index_t ngram,
                                                 const speculative_options& o,
                                                 const std::function<void(token_id, bool)>& on_token = {}) {
    return ::tinyllm::detail::generate_prompt_lookup_on(::tinyllm::detail::cpu_target(target), prompt, ngram, o,
                                                        on_token, "generate_prompt_lookup");
}

}  // namespace cpu
}  // namespace tinyllm
