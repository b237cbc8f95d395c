// tinyllm/sampling.hpp — turning logits into the next token: logit processors
// that reshape the distribution, and choosers that pick from it (CPU reference).
//
// A language model ends in logits z (one score per vocabulary entry, for each
// of B rows). The model's distribution is softmax(z): p_i = exp(z_i) / sum_j exp(z_j).
// Generation then runs a CHAIN of logit processors, in an order the user
// picks, each rewriting the logits of every row, and finally a CHOOSER:
//
//   processor            what it does to each row                           parameter rule
//   temperature T        z <- z / T: T < 1 sharpens, T > 1 flattens;        T >= 0
//                        T = 0 keeps only the argmax (= greedy decoding)
//   top-k k              keep the k largest logits (all ties of the k-th)   k >= 1
//   top-p p (nucleus)    keep the most probable tokens until their          0 < p <= 1
//                        probability mass reaches p (Holtzman et al. 2019)
//   min-p p              keep tokens with p_i >= p * max_j p_j              0 <= p <= 1
//   repetition penalty r z_i <- z_i > 0 ? z_i / r : z_i * r for every token  r > 0
//                        already generated (CTRL, Keskar et al. 2019)
//   frequency f /        z_i <- z_i - (count_i * f + presence) for tokens   finite
//   presence penalty     generated count_i > 0 times (OpenAI's API)
//   logit bias           z_i <- z_i + bias[i] for the tokens in a map       finite
//   banned tokens        z_i <- -inf                                        in range
//
//   chooser              greedy: argmax z (the lowest index among ties)
//                        sample: token i with probability softmax(z)_i, driven by
//                        Philox (seed, stream = row, step) — see below.
//
// "Keep" means: every other logit becomes -inf, i.e. probability 0, so what is
// left is renormalized automatically by the next softmax.
//
// Exact definitions (the CUDA kernels reproduce these bit for bit; the math is
// in <tinyllm/sampling_math.hpp>):
//   * probabilities are integer weights q_i = floor(exp(z_i - max z) * 2^40)
//     computed with tinyllm's own exp; masses are sums of q in 64-bit integers;
//   * top-k keeps z_i >= tau, tau = the k-th largest logit of the row (counted
//     with multiplicity; -inf counts too), so ties at the boundary are all kept;
//   * top-p keeps z_i >= tau, tau = the largest logit value such that the mass
//     of the tokens with z >= tau is at least ceil(S * floor(p * 2^32) / 2^32)
//     (S = total mass, target at least 1). p = 1 changes nothing;
//   * min-p keeps tokens with sampling_exp(z_i - max z) >= p;
//   * sample draws 64 Philox bits r (stream = row + stream_offset, words 2*step,
//     2*step+1), sets t = floor(S * r / 2^64) and returns the first index i with
//     q_0 + ... + q_i > t.
//
// Rows whose logits contain NaN or +inf are rejected with tinyllm::error
// (-inf is allowed: it is how tokens are masked). A row in which every logit
// is -inf (everything banned or filtered) is rejected by the choosers.
//
//     tinyllm::sampling::chain chain{tinyllm::sampling::repetition_penalty{1.1f},
//                                    tinyllm::sampling::temperature{0.7f},
//                                    tinyllm::sampling::top_p{0.9f}};
//     tinyllm::cpu::apply(logits, chain, generated);   // (B, V), (B, L)
//     tinyllm::cpu::sample(tokens, logits, seed, step); // (B)
#pragma once

#include <tinyllm/error.hpp>
#include <tinyllm/sampling_math.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace tinyllm {

// ---- processor parameters (a chain is a list of these) ------------------------
namespace sampling {
struct temperature { float value = 1.0f; };
struct top_k { index_t k = 50; };
struct top_p { float p = 0.9f; };
struct min_p { float p = 0.1f; };
struct repetition_penalty { float penalty = 1.1f; };
struct frequency_presence_penalty { float frequency = 0.0f; float presence = 0.0f; };
struct logit_bias { std::map<token_id, float> bias; };
struct ban_tokens { std::vector<token_id> tokens; };

using processor = std::variant<temperature, top_k, top_p, min_p, repetition_penalty, frequency_presence_penalty,
                               logit_bias, ban_tokens>;
using chain = std::vector<processor>;

// The common fused chain, applied in this fixed order: temperature -> top-k
// -> top-p -> min-p -> sample. An empty optional means "off". The CUDA
// sampler runs exactly this chain in one kernel (tinyllm::cuda::sample).
struct params {
    float temperature = 1.0f;
    std::optional<index_t> top_k;
    std::optional<float> top_p;
    std::optional<float> min_p;
};
}  // namespace sampling

// ---- parameter checks (shared by the CPU and CUDA launchers) -----------------
namespace detail {
inline void check_temperature(float t) {
    TINYLLM_EXPECT(std::isfinite(t) && t >= 0.0f, "temperature: T = ", t,
                   " must be finite and >= 0 (0 means greedy decoding)");
}
inline void check_top_k(index_t k) { TINYLLM_EXPECT(k >= 1, "top_k: k = ", k, " must be at least 1"); }
inline void check_top_p(float p) {
    TINYLLM_EXPECT(p > 0.0f && p <= 1.0f, "top_p: p = ", p, " must be in (0, 1]");
}
inline void check_min_p(float p) {
    TINYLLM_EXPECT(p >= 0.0f && p <= 1.0f, "min_p: p = ", p, " must be in [0, 1]");
}
inline void check_penalty(float r) {
    TINYLLM_EXPECT(std::isfinite(r) && r > 0.0f, "repetition_penalty: penalty = ", r, " must be finite and > 0");
}
inline void check_vocab(index_t vocab, const char* what) {
    TINYLLM_EXPECT(vocab >= 1 && vocab <= sampling_max_vocab, what, ": vocabulary size V = ", vocab,
                   " must be in [1, ", sampling_max_vocab, "]");
}
inline void check_params(const sampling::params& p) {
    check_temperature(p.temperature);
    if (p.top_k) check_top_k(*p.top_k);
    if (p.top_p) check_top_p(*p.top_p);
    if (p.min_p) check_min_p(*p.min_p);
}
}  // namespace detail

namespace cpu {
// (Not `detail`: a tinyllm::cpu::detail would hide tinyllm::detail from other headers' cpu functions.)
namespace sampling_detail {

using row_t = std::span<float>;

// NaN and +inf are not logits a sampler can use: say which row and token.
inline void check_row(std::span<const float> row, index_t b, const char* what) {
    for (std::size_t i = 0; i < row.size(); ++i) {
        const float z = row[i];
        TINYLLM_EXPECT(!std::isnan(z) && z != std::numeric_limits<float>::infinity(), what, ": logit [", b, ", ", i,
                       "] is ", z, "; logits must be finite or -inf");
    }
}

// Run fn(row span, row index) over the rows of a (B, V) tensor, checking them first.
template <class Fn>
void for_each_row(tensor_view<float, 2> logits, const char* what, Fn&& fn) {  // (B, V)
    ::tinyllm::detail::check_vocab(logits.extent(1), what);
    TINYLLM_EXPECT(logits.stride(1) == 1, what, ": logits rows must be contiguous (stride of V is ",
                   logits.stride(1), ")");
    // Each row is processed in place once: rows that share memory would be processed twice.
    TINYLLM_EXPECT(::tinyllm::detail::distinct_elements(logits), what, ": logits rows of ", logits.extent(1),
                   " elements ", logits.stride(0), " apart overlap");
    for (index_t b = 0; b < logits.extent(0); ++b) {
        row_t row(&logits(b, 0), static_cast<std::size_t>(logits.extent(1)));
        check_row(row, b, what);
        fn(row, b);
    }
}

inline float row_max(std::span<const float> row) { return *std::max_element(row.begin(), row.end()); }

// The integer weights q_i = floor(exp(z_i - m) * 2^40) of a row.
inline std::vector<std::uint64_t> row_weights(std::span<const float> row) {
    const float m = row_max(row);
    std::vector<std::uint64_t> q(row.size(), 0);
    if (m == -std::numeric_limits<float>::infinity()) return q;
    for (std::size_t i = 0; i < row.size(); ++i) q[i] = sampling_weight(::tinyllm::detail::sub_rn(row[i], m));
    return q;
}

// Set every logit below tau to -inf.
inline void keep_at_least(row_t row, float tau) {
    for (float& z : row)
        if (z < tau) z = -std::numeric_limits<float>::infinity();
}

// Indices of a row from the largest logit to the smallest (ties: lower index first).
inline std::vector<token_id> descending_order(std::span<const float> row) {
    std::vector<token_id> order(row.size());
    for (std::size_t i = 0; i < row.size(); ++i) order[i] = static_cast<token_id>(i);
    std::stable_sort(order.begin(), order.end(), [&](token_id a, token_id b) { return row[a] > row[b]; });
    return order;
}

// How many times each token occurs in row b of `generated` (entries < 0 are padding).
inline std::map<token_id, int> token_counts(tensor_view<const token_id, 2> generated, index_t b,
                                            index_t vocab, const char* what) {
    std::map<token_id, int> counts;
    for (index_t j = 0; j < generated.extent(1); ++j) {
        const token_id t = generated(b, j);
        if (t < 0) continue;
        TINYLLM_EXPECT(t < vocab, what, ": generated token ", t, " at [", b, ", ", j, "] is outside [0, ", vocab,
                       ")");
        ++counts[t];
    }
    return counts;
}

inline void check_generated(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated,
                            const char* what) {
    TINYLLM_EXPECT(generated.extent(0) == logits.extent(0), what, ": generated has ", generated.extent(0),
                   " rows but logits have ", logits.extent(0));
    // The counts of row b are read after rows 0..b-1 were penalized.
    ::tinyllm::detail::expect_apart(what, "logits", logits, "generated", generated);
}

// out (B) beside the logits (B, V) it is chosen from: one entry per row, written
// after its row is read, apart from the rows still to be read.
inline void check_out(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const char* what) {
    TINYLLM_EXPECT(out.extent(0) == logits.extent(0), what, ": out has ", out.extent(0), " entries but logits have ",
                   logits.extent(0), " rows");
    ::tinyllm::detail::expect_distinct_elements(what, "out", out);
    TINYLLM_EXPECT(!::tinyllm::detail::overlaps(out, logits), what, ": out must not share memory with the logits");
}

}  // namespace sampling_detail

// ---- the processors -------------------------------------------------------------

// z <- z / T. T = 0 is greedy decoding: only the argmax (lowest index among
// ties) keeps its logit, every other token gets -inf.
inline void temperature(tensor_view<float, 2> logits, float t) {  // (B, V)
    ::tinyllm::detail::check_temperature(t);
    sampling_detail::for_each_row(logits, "temperature", [&](sampling_detail::row_t row, index_t b) {
        if (t == 0.0f) {
            const auto best = std::max_element(row.begin(), row.end()) - row.begin();  // first maximum
            for (std::size_t i = 0; i < row.size(); ++i)
                if (static_cast<std::ptrdiff_t>(i) != best) row[i] = -std::numeric_limits<float>::infinity();
        } else {
            constexpr float minus_inf = -std::numeric_limits<float>::infinity();
            bool any_token = false;  // a logit above -inf before the division, and after it
            float top = minus_inf;
            for (std::size_t i = 0; i < row.size(); ++i) {
                const float z = ::tinyllm::detail::div_rn(row[i], t);
                // A T so small that z / T overflows would hand the next step a +inf.
                TINYLLM_EXPECT(z != std::numeric_limits<float>::infinity(), "temperature: logit [", b, ", ", i,
                               "] = ", row[i], " divided by T = ", t,
                               " overflows to +inf; use a larger T, or T = 0 for greedy decoding");
                any_token = any_token || row[i] != minus_inf;
                top = std::max(top, z);
                row[i] = z;
            }
            // ... or, every logit negative, to -inf: the choosers would call the row all banned.
            TINYLLM_EXPECT(!any_token || top != minus_inf, "temperature: every logit of row ", b, " divided by T = ", t,
                           " overflows to -inf; use a larger T, or T = 0 for greedy decoding");
        }
    });
}

// Keep the logits >= the k-th largest (ties at the boundary all kept). k >= V keeps everything.
inline void top_k(tensor_view<float, 2> logits, index_t k) {  // (B, V)
    ::tinyllm::detail::check_top_k(k);
    sampling_detail::for_each_row(logits, "top_k", [&](sampling_detail::row_t row, index_t) {
        if (k >= static_cast<index_t>(row.size())) return;
        std::vector<float> sorted(row.begin(), row.end());
        std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
        sampling_detail::keep_at_least(row, sorted[static_cast<std::size_t>(k - 1)]);
    });
}

// Keep the smallest set of most probable tokens whose probability mass reaches p.
inline void top_p(tensor_view<float, 2> logits, float p) {  // (B, V)
    ::tinyllm::detail::check_top_p(p);
    sampling_detail::for_each_row(logits, "top_p", [&](sampling_detail::row_t row, index_t) {
        if (p == 1.0f) return;
        const auto q = sampling_detail::row_weights(row);
        std::uint64_t total = 0;
        for (auto w : q) total += w;
        if (total == 0) return;  // all -inf: the chooser reports it
        const std::uint64_t target = top_p_target(total, p);
        std::uint64_t mass = 0;
        for (token_id i : sampling_detail::descending_order(row)) {  // walk from the most probable token down
            mass += q[static_cast<std::size_t>(i)];
            if (mass >= target) {
                sampling_detail::keep_at_least(row, row[static_cast<std::size_t>(i)]);
                return;
            }
        }
    });
}

// Keep the tokens whose probability is at least p times the top token's.
inline void min_p(tensor_view<float, 2> logits, float p) {  // (B, V)
    ::tinyllm::detail::check_min_p(p);
    sampling_detail::for_each_row(logits, "min_p", [&](sampling_detail::row_t row, index_t) {
        const float m = sampling_detail::row_max(row);
        if (m == -std::numeric_limits<float>::infinity()) return;
        for (float& z : row)
            if (sampling_exp(::tinyllm::detail::sub_rn(z, m)) < p) z = -std::numeric_limits<float>::infinity();
    });
}

// Every token that occurs in row b of `generated` (B, L) (entries < 0 are
// padding) is penalized once: z > 0 ? z / r : z * r.
inline void repetition_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated,
                               float r) {  // (B, V), (B, L)
    ::tinyllm::detail::check_penalty(r);
    sampling_detail::check_generated(logits, generated, "repetition_penalty");
    sampling_detail::for_each_row(logits, "repetition_penalty", [&](sampling_detail::row_t row, index_t b) {
        for (auto [t, count] : sampling_detail::token_counts(generated, b, logits.extent(1), "repetition_penalty")) {
            float& z = row[static_cast<std::size_t>(t)];
            const float was = z;
            z = repetition_penalized(z, r);
            // A penalty so close to 0 that z / r overflows would hand the next step a +inf.
            TINYLLM_EXPECT(z != std::numeric_limits<float>::infinity(), "repetition_penalty: logit [", b, ", ", t,
                           "] = ", was, " divided by the penalty ", r, " overflows to +inf");
        }
    });
}

// z_t <- z_t - (count_t * frequency + presence) for every token t generated count_t > 0 times.
inline void frequency_presence_penalty(tensor_view<float, 2> logits, tensor_view<const token_id, 2> generated,
                                       float frequency, float presence) {  // (B, V), (B, L)
    TINYLLM_EXPECT(std::isfinite(frequency) && std::isfinite(presence),
                   "frequency_presence_penalty: frequency = ", frequency, " and presence = ", presence,
                   " must be finite");
    sampling_detail::check_generated(logits, generated, "frequency_presence_penalty");
    sampling_detail::for_each_row(logits, "frequency_presence_penalty", [&](sampling_detail::row_t row, index_t b) {
        for (auto [t, count] :
             sampling_detail::token_counts(generated, b, logits.extent(1), "frequency_presence_penalty")) {
            float& z = row[static_cast<std::size_t>(t)];
            z = frequency_presence_penalized(z, static_cast<float>(count), frequency, presence);
            // Overflow to +inf, or NaN: a -inf logit (a banned token) minus a penalty that overflowed to -inf.
            TINYLLM_EXPECT(z != std::numeric_limits<float>::infinity() && !std::isnan(z),
                           "frequency_presence_penalty: logit [", b, ", ", t, "] overflows to ",
                           std::isnan(z) ? "NaN" : "+inf", " (frequency = ", frequency, ", presence = ", presence,
                           ", count = ", count, ")");
        }
    });
}

// z_t <- z_t + bias[t] in every row.
inline void logit_bias(tensor_view<float, 2> logits, const std::map<token_id, float>& bias) {  // (B, V)
    for (auto [t, v] : bias) {
        TINYLLM_EXPECT(t >= 0 && t < logits.extent(1), "logit_bias: token ", t, " is outside [0, ",
                       logits.extent(1), ")");
        TINYLLM_EXPECT(std::isfinite(v), "logit_bias: the bias of token ", t, " is ", v,
                       "; use ban_tokens to forbid a token");
    }
    sampling_detail::for_each_row(logits, "logit_bias", [&](sampling_detail::row_t row, index_t b) {
        for (auto [t, v] : bias) {
            float& z = row[static_cast<std::size_t>(t)];
            z = ::tinyllm::detail::add_rn(z, v);
            TINYLLM_EXPECT(z != std::numeric_limits<float>::infinity(), "logit_bias: logit [", b, ", ", t,
                           "] + its bias ", v, " overflows to +inf");
        }
    });
}

// z_t <- -inf for the listed tokens, in every row.
inline void ban_tokens(tensor_view<float, 2> logits, std::span<const token_id> tokens) {  // (B, V)
    ::tinyllm::detail::check_vocab(logits.extent(1), "ban_tokens");
    std::vector<bool> banned(static_cast<std::size_t>(std::max<index_t>(logits.extent(1), 0)), false);
    for (token_id t : tokens) {
        TINYLLM_EXPECT(t >= 0 && t < logits.extent(1), "ban_tokens: token ", t, " is outside [0, ",
                       logits.extent(1), ")");
        banned[static_cast<std::size_t>(t)] = true;
    }
    TINYLLM_EXPECT(std::find(banned.begin(), banned.end(), false) != banned.end(),
                   "ban_tokens: all ", logits.extent(1), " tokens are banned; nothing could be generated");
    sampling_detail::for_each_row(logits, "ban_tokens", [&](sampling_detail::row_t row, index_t) {
        for (std::size_t i = 0; i < row.size(); ++i)
            if (banned[i]) row[i] = -std::numeric_limits<float>::infinity();
    });
}

// Apply a chain of processors in order. `generated` (B, L) is needed only by
// the penalties (pass an empty (B, 0) view otherwise).
inline void apply(tensor_view<float, 2> logits, const sampling::chain& chain,
                  tensor_view<const token_id, 2> generated = {}) {  // (B, V), (B, L)
    for (const auto& step : chain) {
        std::visit(
            [&](const auto& s) {
                using S = std::decay_t<decltype(s)>;
                if constexpr (std::is_same_v<S, sampling::temperature>) temperature(logits, s.value);
                else if constexpr (std::is_same_v<S, sampling::top_k>) top_k(logits, s.k);
                else if constexpr (std::is_same_v<S, sampling::top_p>) top_p(logits, s.p);
                else if constexpr (std::is_same_v<S, sampling::min_p>) min_p(logits, s.p);
                else if constexpr (std::is_same_v<S, sampling::repetition_penalty>)
                    repetition_penalty(logits, generated, s.penalty);
                else if constexpr (std::is_same_v<S, sampling::frequency_presence_penalty>)
                    frequency_presence_penalty(logits, generated, s.frequency, s.presence);
                else if constexpr (std::is_same_v<S, sampling::logit_bias>) logit_bias(logits, s.bias);
                else ban_tokens(logits, s.tokens);
            },
            step);
    }
}

// ---- the choosers ---------------------------------------------------------------

// out[b] = argmax_i logits[b, i], the lowest index among equal maxima.
inline void greedy(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits) {  // (B), (B, V)
    sampling_detail::check_out(out, logits, "greedy");
    ::tinyllm::detail::check_vocab(logits.extent(1), "greedy");
    std::vector<float> row(static_cast<std::size_t>(logits.extent(1)));
    for (index_t b = 0; b < logits.extent(0); ++b) {
        for (index_t i = 0; i < logits.extent(1); ++i) row[static_cast<std::size_t>(i)] = logits(b, i);
        sampling_detail::check_row(row, b, "greedy");
        std::size_t best = 0;  // the first maximum
        for (std::size_t i = 1; i < row.size(); ++i)
            if (row[i] > row[best]) best = i;
        TINYLLM_EXPECT(row[best] != -std::numeric_limits<float>::infinity(), "greedy: every logit of row ", b,
                       " is -inf (all tokens banned or filtered)");
        out(b) = static_cast<token_id>(best);
    }
}

// The token that `sample` chooses for one row with random bits r (see the header comment).
inline token_id sample_row(std::span<const float> row, std::uint64_t random_bits, index_t b = 0) {
    ::tinyllm::detail::check_vocab(static_cast<index_t>(row.size()), "sample");
    sampling_detail::check_row(row, b, "sample");
    const auto q = sampling_detail::row_weights(row);
    std::uint64_t total = 0;
    for (auto w : q) total += w;
    TINYLLM_EXPECT(total > 0, "sample: every logit of row ", b, " is -inf (all tokens banned or filtered)");
    const std::uint64_t t = sampling_threshold(total, random_bits);
    std::uint64_t running = 0;
    for (std::size_t i = 0; i < q.size(); ++i) {
        running += q[i];
        if (running > t) return static_cast<token_id>(i);
    }
    TINYLLM_FAIL("sample: unreachable (t = ", t, " >= total = ", total, ")");
}

// out[b] = a token drawn from softmax(logits[b]) with the random bits of
// Philox stream (b + stream_offset) at step `step` (one draw per row per step).
inline void sample(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, std::uint64_t seed,
                   std::uint64_t step, std::uint64_t stream_offset = 0) {  // (B), (B, V)
    sampling_detail::check_out(out, logits, "sample");
    ::tinyllm::detail::check_vocab(logits.extent(1), "sample");
    std::vector<float> row(static_cast<std::size_t>(logits.extent(1)));
    for (index_t b = 0; b < logits.extent(0); ++b) {
        for (index_t i = 0; i < logits.extent(1); ++i) row[static_cast<std::size_t>(i)] = logits(b, i);
        out(b) = sample_row(row, sampling_bits(seed, static_cast<std::uint64_t>(b) + stream_offset, step), b);
    }
}

// The processors of sampling::params in their fixed order (temperature ->
// top-k -> top-p -> min-p), in place. Temperature 0 (greedy) is the chooser's
// business, not a processor's: here it is rejected.
inline void apply_params(tensor_view<float, 2> logits, const sampling::params& p) {  // (B, V)
    ::tinyllm::detail::check_params(p);
    TINYLLM_EXPECT(p.temperature > 0.0f, "apply_params: temperature 0 means greedy, which has no processed logits");
    if (p.temperature != 1.0f) temperature(logits, p.temperature);
    if (p.top_k) top_k(logits, *p.top_k);
    if (p.top_p) top_p(logits, *p.top_p);
    if (p.min_p) min_p(logits, *p.min_p);
}

// The fused chain of sampling::params (temperature -> top-k -> top-p -> min-p
// -> sample; temperature 0 = greedy), on a copy of the logits. This is the CPU
// reference of tinyllm::cuda::sample (which draws row b from stream b).
inline void sample(tensor_view<token_id, 1> out, tensor_view<const float, 2> logits, const sampling::params& p,
                   std::uint64_t seed, std::uint64_t step, std::uint64_t stream_offset = 0) {  // (B), (B, V)
    ::tinyllm::detail::check_params(p);
    tensor<float, 2> work(logits.shape());  // (B, V)
    for (index_t b = 0; b < logits.extent(0); ++b)
        for (index_t i = 0; i < logits.extent(1); ++i) work(b, i) = logits(b, i);
    if (p.temperature == 0.0f) return greedy(out, work.view());
    apply_params(work.view(), p);
    sample(out, work.view(), seed, step, stream_offset);
}

// The probabilities softmax(z) of one row as doubles (for display and tests). A row
// with NaN or +inf, or with every logit -inf, is rejected as the choosers reject it.
inline std::vector<double> softmax_row(std::span<const float> row) {
    TINYLLM_EXPECT(!row.empty(), "softmax_row: the row is empty");
    sampling_detail::check_row(row, 0, "softmax_row");
    const float m = sampling_detail::row_max(row);
    TINYLLM_EXPECT(m != -std::numeric_limits<float>::infinity(),
                   "softmax_row: every logit is -inf (all tokens banned or filtered)");
    std::vector<double> p(row.size());
    double s = 0;
    for (std::size_t i = 0; i < row.size(); ++i) s += p[i] = std::exp(static_cast<double>(row[i]) - m);
    for (double& v : p) v /= s;
    return p;
}

}  // namespace cpu
}  // namespace tinyllm
