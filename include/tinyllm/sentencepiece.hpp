// tinyllm/sentencepiece.hpp — the SentencePiece family of tokenizers (Llama 2,
// Mistral, TinyLlama, T5-style Unigram models), computed as Hugging Face
// `tokenizers` computes them from a tokenizer.json. A readable CPU reference.
//
// How it differs from byte-level BPE (bpe.hpp):
//
//   * Spaces are a visible character. Before the model sees the text, every
//     " " becomes "▁" (U+2581, three UTF-8 bytes) and one "▁" is put in front,
//     so "The tiger" is modelled as "▁The▁tiger" and the pieces are "▁The",
//     "▁tiger": the space belongs to the word after it, as in GPT-2, but it is
//     an ordinary character of the vocabulary, not byte 0x20.
//   * The units are Unicode characters, not bytes. Encoding starts from the
//     characters of the text; a character that is not in the vocabulary is
//     written as its UTF-8 bytes, each byte a token "<0xNN>" ("byte fallback"):
//     "안" (EC 95 88) is <0xEC> <0x95> <0x88> when "안" is not a piece. Without
//     byte fallback it becomes the unknown token "<unk>" (runs of them fused
//     into one with fuse_unk), and the text cannot be restored.
//   * Two models cut the "▁"-text into pieces:
//       BPE      as in bpe.hpp, over characters: repeatedly merge the adjacent
//                pair with the lowest rank in the merges list (leftmost on
//                ties) until no listed pair is adjacent.
//       Unigram  every piece has a score, its log probability; the pieces
//                chosen are the segmentation whose scores sum highest, found by
//                Viterbi over the lattice of all pieces that occur in the text.
//                For "▁the" with pieces ▁ (-4.1), t (-5.0), h (-5.2), e (-4.5),
//                ▁t (-6.3), th (-6.0), he (-5.9), ▁the (-7.0), the (-6.8):
//
//                  position   0     1     2     3     4        (character boundaries)
//                             |  ▁  |  t  |  h  |  e  |
//                             +-----+-----+-----+-----+
//                             |--▁--|--t--|--h--|--e--|        one-character pieces
//                             |----▁t-----|----he-----|
//                                   |----th-----|
//                                   |-------the-------|
//                             |----------▁the---------|
//
//                  best[k] = max over pieces p ending at k of best[start(p)] + score(p),
//                  best[0] = 0; best[4] = max(-7.0 (▁the), -4.1 - 6.8 (▁ the),
//                  -6.3 - 5.9 (▁t he), ...) = -7.0, so "▁the" is one token. Reading
//                  back the argmax at each end gives the pieces. A character that is
//                  not itself a piece gets an "unknown" edge scored (lowest score - 10);
//                  such edges are encoded by byte fallback, or as <unk>.
//   * Sampling (Unigram only; subword regularization, Kudo 2018). Instead of
//     the best segmentation, encode_sample draws one at random, so that a model
//     trained on the samples sees "▁the" also as "▁t he" and "▁ the" and learns
//     to read the pieces of a word. A segmentation x of a word (a path through
//     the lattice above, its pieces' scores summing to score(x)) is drawn with
//
//         P(x) = exp(alpha * score(x)) / Z,    Z = sum over all paths y of exp(alpha * score(y)).
//
//     alpha > 0 sharpens or flattens it: the scores are log probabilities, so
//     P(x) is proportional to p(x)^alpha; alpha -> infinity gives Viterbi's
//     answer, small alpha nearly uniform choices. There are exponentially many
//     paths, but Z and the draw are two passes over the same edges as Viterbi
//     ("forward filtering, backward sampling"):
//
//       forward   a[0] = 0;  a[k] = log sum over pieces p ending at k of exp(a[start(p)] + alpha * score(p))
//                 (Viterbi with max replaced by log-sum-exp): exp(a[k]) is the
//                 sum of exp(alpha * score) over all paths of word[0, k), and a[n] = log Z.
//       backward  at end = n, pick one piece p ending there with probability
//                 exp(a[start(p)] + alpha * score(p) - a[end]), i.e. the share of
//                 the paths ending at `end` whose last piece is p (these shares sum to 1);
//                 then end = start(p); repeat until 0.
//
//     The draw is exact: the probability of the path p1 p2 ... pm it returns is
//     the product of its steps, and the product telescopes,
//         prod_j exp(a[s_j] + alpha * score(p_j) - a[e_j]) = exp(alpha * score(x) - a[n]) = P(x),
//     since each piece ends where the next starts (e_j = s_{j+1}), a[0] = 0 and a[n] = log Z.
//     Cost: the same O(n * L) as Viterbi, plus one random number per piece drawn.
//     The unknown edges take part with their score, and the path is written out
//     as Viterbi's is (unknown runs fused, then bytes or <unk>), so decoding a
//     sample gives the same text as decoding the best segmentation.
//     The random numbers are Philox's (philox.hpp), so a (seed, stream) gives
//     the same ids on every machine; see subword_sampling for how they are counted.
//   * Decoding turns "▁" back into " ", the <0xNN> tokens back into bytes, and
//     removes the one space that encoding put in front of the text.
//
// What is read from a tokenizer.json (tokenizer_io.hpp builds this model):
//
//   normalizer      null; Sequence of Prepend(s) and Replace(String a -> b)
//                   (Llama 2: Prepend("▁"), Replace(" ", "▁")); Precompiled with
//                   an empty charsmap (an identity). NFKC and the rest: refused.
//   pre_tokenizer   null, or Metaspace(replacement, prepend_scheme always|first|
//                   never, split) (Mistral, Unigram models).
//   model           BPE (merges, byte_fallback, unk_token, fuse_unk,
//                   ignore_merges) or Unigram (pieces with finite scores,
//                   unk_id, byte_fallback).
//   added_tokens    special tokens; lstrip, rstrip or single_word true: refused.
//   decoder         Sequence of Replace("▁" -> " "), ByteFallback, Fuse,
//                   Strip(" ", n, 0), or Metaspace.
//   post_processor  null or TemplateProcessing: the ids put around a text
//                   (Llama: "<s>" before it), tokenizer::encode_with_template.
//
// Unlike bpe.hpp, which cuts text into short pieces first, a Llama-style
// tokenizer has no pre-tokenizer: the whole text is one sequence. Both models
// here therefore cost O(n log n) (BPE: a heap of candidate merges) or O(n * L)
// (Unigram: L = the longest piece) for n characters, never O(n^2).
//
// The model is immutable after construction; encode and decode are const.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/philox.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tinyllm {

enum class sentencepiece_kind { bpe, unigram };

// Metaspace's prepend_scheme: when a "▁" is put in front of a stretch of text.
enum class prepend_scheme {
    always,  // every stretch (the text, and each part between special tokens)
    first,   // only the stretch at the start of the text
    never,
};

// One step of a normalizer: Prepend(text) when `from` is empty, else Replace(from -> to).
struct text_rewrite {
    std::string from;
    std::string to;
};

// Everything about a SentencePiece-family tokenizer except its pieces.
struct sentencepiece_options {
    // Normalizer (in order) and Metaspace pre-tokenizer.
    std::vector<text_rewrite> normalizer;
    bool metaspace = false;
    std::string replacement = "\xE2\x96\x81";  // "▁" U+2581
    prepend_scheme prepend = prepend_scheme::always;
    bool split = true;  // Metaspace: cut the text before every replacement character

    // Model.
    bool byte_fallback = false;
    std::optional<token_id> unk;  // the unknown token
    bool fuse_unk = true;         // a run of unknown characters is one <unk>
    bool ignore_merges = false;   // BPE: a whole word that is a piece is one token

    // Decoder: replacements applied to each piece, <0xNN> pieces as bytes
    // (ByteFallback), how many leading spaces of the text to drop (Strip), and
    // Metaspace's decoder (which drops every "▁" of the first token instead).
    std::vector<text_rewrite> decoder;
    bool decode_bytes = false;
    std::size_t strip_leading_spaces = 0;
    bool metaspace_decoder = false;

    // Post-processor (TemplateProcessing, single sequence): ids before and after the text.
    std::vector<token_id> template_before;
    std::vector<token_id> template_after;

    // The tokenizer.json this was read from (hf_tokenizer_json writes it back).
    std::string source_json;
};

// How encode_sample draws a Unigram segmentation (see "Sampling" at the top).
//
//   alpha   P(segmentation) is proportional to exp(alpha * its score); finite and > 0.
//           sentencepiece's usual values are 0.1 to 1 (its `alpha` with nbest_size = -1).
//   seed    with stream, all the randomness: the same (seed, stream, text) gives the same ids.
//   stream  which draw for this seed: a training loop passes a document's number, or
//           epoch * documents + document, so every document and epoch gets its own sample.
//
// The random numbers: the k-th word of the call (counting from 0 over the words
// for_each_word gives, continued across the stretches between special tokens in
// tokenizer::encode_sample), when it draws its i-th piece (back to front: i = 0
// is its last piece), uses Philox words n = k * 2^32 + 2i and 2i + 1 of stream
// `stream` under `seed` (philox_bits(seed, stream, n)), as the double
// u = (64 bits >> 11) * 2^-53 in [0, 1). A word's draw therefore depends only on
// (seed, stream, k) and the word: different words use disjoint numbers, and
// changing one word of a text leaves the others' draws as they were.
struct subword_sampling {
    double alpha = 0.1;
    std::uint64_t seed = 0;
    std::uint64_t stream = 0;
};

namespace detail {

// The uniform double in [0, 1) of the 64 Philox bits at words n, n + 1 (n even, one block).
inline double subword_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t n) {
    const philox_counter b = philox_block(seed, stream, n >> 2);
    const std::uint64_t bits = (std::uint64_t(b.v[n & 3]) << 32) | b.v[(n + 1) & 3];
    return static_cast<double>(bits >> 11) * 0x1p-53;
}

// Heterogeneous lookup: find a std::string key with a std::string_view.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

inline void replace_all(std::string& s, std::string_view from, std::string_view to) {
    if (from.empty() || s.find(from) == std::string::npos) return;
    std::string out;
    out.reserve(s.size());
    std::size_t at = 0;
    for (std::size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size())
        out.append(s, at, hit - at).append(to);
    out.append(s, at, std::string::npos);
    s = std::move(out);
}

// "<0xNN>" -> NN, or -1.
inline int byte_piece_value(std::string_view piece) {
    if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
    int v = 0;
    for (const char c : piece.substr(3, 2)) {
        const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;  // Hugging Face writes upper-case hex
        v = v * 16 + d;
    }
    return v;
}

inline std::string byte_piece_name(unsigned char b) {
    const char* hex = "0123456789ABCDEF";
    return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

// The byte length of the UTF-8 character at s[at] (an invalid byte counts as a
// character of one byte; it can only be encoded by byte fallback).
inline std::size_t char_length(std::string_view s, std::size_t at) {
    std::uint32_t cp;
    const int n = decode_utf8(s, at, cp);
    return cp == invalid_code_point ? 1 : static_cast<std::size_t>(n);
}

}  // namespace detail

class sentencepiece_model {
public:
    sentencepiece_model() = default;

    // A BPE model: pieces[id] is the piece's text ("▁the", "<0x0A>", "<s>");
    // merges in rank order, each a pair of piece ids whose concatenation is a piece.
    static sentencepiece_model bpe(std::vector<std::string> pieces,
                                   const std::vector<std::pair<token_id, token_id>>& merges,
                                   sentencepiece_options options) {
        sentencepiece_model m(sentencepiece_kind::bpe, std::move(pieces), {}, std::move(options));
        m.merges_.reserve(merges.size());
        std::string joined;  // one buffer for every pair's concatenation
        for (std::size_t rank = 0; rank < merges.size(); ++rank) {
            const auto [a, b] = merges[rank];
            TINYLLM_EXPECT(m.contains(a) && m.contains(b), "merge ", rank, " (", a, ", ", b,
                           ") names an id outside the vocabulary of ", m.size(), " pieces");
            joined.assign(m.piece(a)).append(m.piece(b));
            const auto merged = m.find(joined);
            TINYLLM_EXPECT(merged.has_value(), "merge ", rank, " \"", m.piece(a), "\" + \"", m.piece(b), "\" makes \"",
                           joined, "\", which is not a piece of the vocabulary");
            // The first listing of a pair wins (a later duplicate would have a worse rank).
            m.merges_.try_emplace(pair_key(a, b), merge_info{static_cast<std::uint32_t>(rank), *merged});
        }
        return m;
    }

    // A Unigram model: pieces[id] with its score (log probability) scores[id].
    static sentencepiece_model unigram(std::vector<std::string> pieces, std::vector<double> scores,
                                       sentencepiece_options options) {
        TINYLLM_EXPECT(scores.size() == pieces.size(), "a Unigram model needs one score per piece: ", pieces.size(),
                       " pieces, ", scores.size(), " scores");
        TINYLLM_EXPECT(options.unk.has_value(), "a Unigram model needs an unknown token (unk_id)");
        return sentencepiece_model(sentencepiece_kind::unigram, std::move(pieces), std::move(scores),
                                   std::move(options));
    }

    sentencepiece_kind kind() const { return kind_; }
    const sentencepiece_options& options() const { return options_; }
    std::size_t size() const { return pieces_.size(); }
    bool contains(token_id id) const { return id >= 0 && static_cast<std::size_t>(id) < pieces_.size(); }
    const std::string& piece(token_id id) const {
        TINYLLM_EXPECT(contains(id), "token id ", id, " is not in the vocabulary (", size(), " pieces)");
        return pieces_[static_cast<std::size_t>(id)];
    }
    std::optional<token_id> find(std::string_view piece) const {
        const auto it = ids_.find(piece);
        if (it == ids_.end()) return std::nullopt;
        return it->second;
    }
    double score(token_id id) const { return kind_ == sentencepiece_kind::unigram ? scores_.at(std::size_t(id)) : 0.0; }

    // What a token decodes to: the piece after the decoder's replacements
    // ("▁the" -> " the"), or its byte when it is "<0xNN>" and the decoder has
    // ByteFallback (<0x0A> -> "\n"). Concatenating these gives the text, except
    // for the leading space decode() drops (text_start_fix).
    std::string_view token_bytes(token_id id) const {
        TINYLLM_EXPECT(contains(id), "token id ", id, " is not in the vocabulary (", size(), " pieces)");
        return decoded_[static_cast<std::size_t>(id)];
    }
    // NN for a "<0xNN>" piece that decodes to its byte, else -1.
    int byte_value(token_id id) const {
        return options_.decode_bytes && contains(id) ? byte_of_[static_cast<std::size_t>(id)] : -1;
    }

    // ---- encoding ---------------------------------------------------------------

    // Append the ids of `text`, one stretch of ordinary text (no special tokens).
    // text_start: the stretch begins the whole text (Metaspace's prepend_scheme "first").
    void encode(std::string_view text, std::vector<token_id>& out, bool text_start = true) const {
        const std::string normalized = normalize(text, text_start);
        for_each_word(normalized, [&](std::string_view word) {
            if (kind_ == sentencepiece_kind::bpe)
                encode_bpe(word, out);
            else
                encode_unigram(word, out);
        });
    }
    std::vector<token_id> encode(std::string_view text) const {
        std::vector<token_id> out;
        encode(text, out, true);
        return out;
    }

    // ---- sampling (Unigram) -------------------------------------------------------

    // Append the ids of one segmentation of `text` drawn at random with
    // P(segmentation) proportional to exp(alpha * score), word by word (see
    // "Sampling" at the top and subword_sampling for the random numbers).
    // first_word: the index k of the text's first word (a caller encoding
    // several stretches of one text passes on what the previous call returned);
    // returns the index after the text's last word. Refused: BPE models, and
    // an alpha that is not a finite number > 0.
    std::uint64_t encode_sample(std::string_view text, std::vector<token_id>& out, const subword_sampling& sampling,
                                bool text_start = true, std::uint64_t first_word = 0) const {
        check_sampling(sampling);
        const std::string normalized = normalize(text, text_start);
        std::uint64_t word_index = first_word;
        for_each_word(normalized, [&](std::string_view word) { sample_unigram(word, out, sampling, word_index++); });
        return word_index;
    }
    std::vector<token_id> encode_sample(std::string_view text, const subword_sampling& sampling) const {
        std::vector<token_id> out;
        encode_sample(text, out, sampling, true, 0);
        return out;
    }

    // Throws unless encode_sample can draw with these settings on this model.
    void check_sampling(const subword_sampling& sampling) const {
        TINYLLM_EXPECT(kind_ == sentencepiece_kind::unigram,
                       "encode_sample draws Unigram segmentations (subword regularization), but this is a "
                       "SentencePiece BPE model; sampling BPE is BPE-dropout (skipping merges at random, "
                       "Provilkov et al. 2020, Hugging Face's `dropout`), a different algorithm that tinyllm does "
                       "not implement: use encode");
        TINYLLM_EXPECT(std::isfinite(sampling.alpha) && sampling.alpha > 0, "encode_sample: alpha = ",
                       sampling.alpha,
                       " must be a finite number > 0 (P(segmentation) is proportional to exp(alpha * score); "
                       "0.1 to 1 are usual; for the best segmentation use encode)");
    }

    // The text the model sees: the normalizer's rewrites, then Metaspace's
    // " " -> "▁" and prepended "▁" ("The tiger" -> "▁The▁tiger").
    std::string normalize(std::string_view text, bool text_start = true) const {
        std::string s(text);
        for (const text_rewrite& r : options_.normalizer) {
            if (r.from.empty()) {
                if (!s.empty()) s.insert(0, r.to);  // Prepend: not to an empty text
            } else {
                detail::replace_all(s, r.from, r.to);
            }
        }
        if (options_.metaspace) {
            detail::replace_all(s, " ", options_.replacement);
            const bool want = options_.prepend == prepend_scheme::always ||
                              (options_.prepend == prepend_scheme::first && text_start);
            if (want && !s.empty() && s.rfind(options_.replacement, 0) != 0) s.insert(0, options_.replacement);
        }
        return s;
    }

    // The words the model encodes one by one: the whole text, or (Metaspace
    // with split) the text cut before every "▁": "▁a▁▁b" -> "▁a", "▁", "▁b".
    template <class F>
    void for_each_word(std::string_view s, F&& f) const {
        if (!(options_.metaspace && options_.split)) {
            if (!s.empty()) f(s);
            return;
        }
        const std::string_view r = options_.replacement;
        std::size_t start = 0;
        for (std::size_t at = s.find(r, 1); at != std::string_view::npos; at = s.find(r, at + r.size())) {
            if (at > start) f(s.substr(start, at - start));
            start = at;
        }
        if (start < s.size()) f(s.substr(start));
    }

    // ---- decoding ---------------------------------------------------------------

    // Fix the start of a decoded text (bytes: the concatenated token_bytes)
    // whose first token is `first`: the Metaspace decoder drops every "▁" of
    // the first token (not only one), and Strip drops up to n leading spaces.
    void text_start_fix(token_id first, bool first_is_special, std::string& bytes) const {
        if (options_.metaspace_decoder && options_.prepend != prepend_scheme::never && !first_is_special &&
            contains(first)) {
            std::string kept = pieces_[std::size_t(first)];
            detail::replace_all(kept, options_.replacement, "");
            bytes.replace(0, std::min(bytes.size(), decoded_[std::size_t(first)].size()), kept);
        }
        std::size_t n = 0;
        while (n < options_.strip_leading_spaces && n < bytes.size() && bytes[n] == ' ') ++n;
        bytes.erase(0, n);
    }

private:
    struct merge_info {
        std::uint32_t rank;
        token_id merged;
    };
    static std::uint64_t pair_key(token_id a, token_id b) {
        return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
    }

    sentencepiece_model(sentencepiece_kind kind, std::vector<std::string> pieces, std::vector<double> scores,
                        sentencepiece_options options)
        : kind_(kind), pieces_(std::move(pieces)), scores_(std::move(scores)), options_(std::move(options)) {
        TINYLLM_EXPECT(!pieces_.empty(), "a SentencePiece model needs at least one piece");
        TINYLLM_EXPECT(pieces_.size() < std::size_t(std::numeric_limits<token_id>::max()), "too many pieces: ",
                       pieces_.size());
        decoded_.resize(pieces_.size());
        byte_of_.assign(pieces_.size(), -1);
        ids_.reserve(pieces_.size());
        for (std::size_t id = 0; id < pieces_.size(); ++id) {
            const std::string& p = pieces_[id];
            TINYLLM_EXPECT(!p.empty(), "piece ", id, " is empty");
            TINYLLM_EXPECT(ids_.emplace(p, static_cast<token_id>(id)).second, "piece \"", p, "\" appears twice (ids ",
                           ids_.at(p), " and ", id, ")");
            longest_ = std::max(longest_, p.size());
            byte_of_[id] = detail::byte_piece_value(p);
            if (options_.decode_bytes && byte_of_[id] >= 0) {
                decoded_[id] = std::string(1, static_cast<char>(byte_of_[id]));
            } else {
                decoded_[id] = p;
                for (const text_rewrite& r : options_.decoder) detail::replace_all(decoded_[id], r.from, r.to);
            }
        }
        if (options_.unk)
            TINYLLM_EXPECT(contains(*options_.unk), "the unknown token's id ", *options_.unk,
                           " is outside the vocabulary of ", pieces_.size(), " pieces");
        if (options_.byte_fallback)
            for (int b = 0; b < 256; ++b)
                TINYLLM_EXPECT(find(detail::byte_piece_name(static_cast<unsigned char>(b))).has_value(),
                               "byte_fallback is on but the vocabulary has no piece ",
                               detail::byte_piece_name(static_cast<unsigned char>(b)),
                               " (byte fallback needs all 256 pieces <0x00> .. <0xFF>)");
        for (const double s : scores_) min_score_ = std::min(min_score_, s);
    }

    // A character (or a run of them) that is not a piece: its bytes as <0xNN>
    // tokens, else <unk>, else (no unknown token) nothing, as Hugging Face does.
    void push_bytes(std::string_view s, std::vector<token_id>& out) const {
        for (const char c : s) out.push_back(*find(detail::byte_piece_name(static_cast<unsigned char>(c))));
    }

    // BPE over the characters of one word.
    void encode_bpe(std::string_view word, std::vector<token_id>& out) const {
        if (options_.ignore_merges)
            if (const auto id = find(word)) {
                out.push_back(*id);
                return;
            }
        // 1. One symbol per character; unknown characters as bytes or <unk>.
        std::vector<token_id> symbols;
        bool unk_pending = false;  // the last symbol is an <unk> that more unknown characters may join
        for (std::size_t at = 0; at < word.size();) {
            const std::size_t n = detail::char_length(word, at);
            const std::string_view c = word.substr(at, n);
            at += n;
            if (const auto id = find(c)) {
                symbols.push_back(*id);
                unk_pending = false;
            } else if (options_.byte_fallback) {
                push_bytes(c, symbols);  // every byte has a piece (checked at construction)
            } else if (options_.unk) {
                if (!(unk_pending && options_.fuse_unk)) symbols.push_back(*options_.unk);
                unk_pending = true;
            }
        }
        // 2. Merge, lowest rank first, leftmost on ties. The symbols form a
        // linked list (merging i with next[i] keeps i and removes the other);
        // the heap holds candidate pairs (rank, left position), and an entry is
        // stale when its pair is no longer at that position.
        const std::size_t n = symbols.size();
        std::vector<std::size_t> prev(n), next(n);
        std::vector<bool> alive(n, true);
        constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
        for (std::size_t i = 0; i < n; ++i) prev[i] = i == 0 ? none : i - 1, next[i] = i + 1 == n ? none : i + 1;
        using candidate = std::pair<std::uint32_t, std::size_t>;  // (rank, position): smallest first
        std::priority_queue<candidate, std::vector<candidate>, std::greater<>> heap;
        const auto push = [&](std::size_t i) {
            if (i == none || next[i] == none) return;
            const auto it = merges_.find(pair_key(symbols[i], symbols[next[i]]));
            if (it != merges_.end()) heap.push({it->second.rank, i});
        };
        for (std::size_t i = 0; i + 1 < n; ++i) push(i);
        while (!heap.empty()) {
            const auto [rank, i] = heap.top();
            heap.pop();
            if (!alive[i] || next[i] == none) continue;
            const auto it = merges_.find(pair_key(symbols[i], symbols[next[i]]));
            if (it == merges_.end() || it->second.rank != rank) continue;  // stale: the pair changed
            const std::size_t j = next[i];
            symbols[i] = it->second.merged;
            alive[j] = false;
            next[i] = next[j];
            if (next[j] != none) prev[next[j]] = i;
            push(prev[i]);
            push(i);
        }
        for (std::size_t i = 0; i < n; ++i)
            if (alive[i]) out.push_back(symbols[i]);
    }

    // The edges of a word's lattice, in order of their start: f(from, to, id, score)
    // for every piece at a character boundary `from`, and an unknown edge
    // (*options_.unk, lowest score - 10) for a character that is not itself a piece
    // (even one inside a longer piece), as Hugging Face's tokenizers does.
    template <class F>
    void for_each_edge(std::string_view word, F&& f) const {
        const std::size_t n = word.size();
        const double unk_score = min_score_ - 10.0;
        for (std::size_t from = 0; from < n;) {
            const std::size_t char_len = detail::char_length(word, from);
            bool covered = false;  // a piece is exactly this character
            for (std::size_t len = 1; len <= longest_ && from + len <= n; ++len) {
                const auto id = find(word.substr(from, len));
                if (!id) continue;
                f(from, from + len, *id, scores_[std::size_t(*id)]);
                covered |= len == char_len;
            }
            if (!covered) f(from, from + char_len, *options_.unk, unk_score);
            from += char_len;
        }
    }

    // Write out a path through a word's lattice, read back to front:
    // step(end) gives the start and id of the piece that ends at `end`. Runs of
    // unknown edges fuse into one string; each string then becomes its piece,
    // its bytes, or <unk>.
    template <class Step>
    void emit_path(std::string_view word, Step&& step, std::vector<token_id>& out) const {
        std::vector<std::string_view> parts;
        std::size_t unk_end = 0;  // end of the unknown run being fused (0: none)
        for (std::size_t end = word.size(); end > 0;) {
            const auto [start, id] = step(end);
            if (id == *options_.unk) {
                if (unk_end == 0) unk_end = end;
            } else {
                if (unk_end) parts.push_back(word.substr(end, unk_end - end)), unk_end = 0;
                parts.push_back(word.substr(start, end - start));
            }
            end = start;
            if (end == 0 && unk_end) parts.push_back(word.substr(0, unk_end)), unk_end = 0;
        }
        for (auto p = parts.rbegin(); p != parts.rend(); ++p) {
            if (const auto id = find(*p))
                out.push_back(*id);
            else if (options_.byte_fallback)
                push_bytes(*p, out);
            else
                out.push_back(*options_.unk);
        }
    }

    // Unigram: Viterbi over the lattice of pieces (see the picture at the top).
    void encode_unigram(std::string_view word, std::vector<token_id>& out) const {
        struct node {                // the best segmentation of word[0, end)
            bool reached = false;
            double best = 0;         // its score
            std::size_t start = 0;   // where its last piece starts
            token_id id = -1;        // its last piece
        };
        std::vector<node> at(word.size() + 1);  // indexed by end
        at[0].reached = true;
        for_each_edge(word, [&](std::size_t from, std::size_t to, token_id id, double score) {
            const double s = at[from].best + score;
            if (!at[to].reached || s > at[to].best) at[to] = {true, s, from, id};
        });
        emit_path(word, [&](std::size_t end) { return std::pair{at[end].start, at[end].id}; }, out);
    }

    // Unigram sampling: forward filtering, backward sampling over the same
    // lattice (see "Sampling" at the top); word_index is k of subword_sampling.
    void sample_unigram(std::string_view word, std::vector<token_id>& out, const subword_sampling& sampling,
                        std::uint64_t word_index) const {
        const std::size_t n = word.size();
        TINYLLM_EXPECT(word_index < (std::uint64_t(1) << 32) && n < (std::size_t(1) << 31),
                       "encode_sample: word ", word_index, " (", n, " bytes) is past the random numbers of one "
                       "call (2^32 words of under 2^31 bytes each); encode the text in parts with other streams");
        struct edge {
            std::size_t start, end;
            token_id id;
            double score;
        };
        std::vector<edge> edges;  // in order of start
        for_each_edge(word, [&](std::size_t from, std::size_t to, token_id id, double score) {
            edges.push_back({from, to, id, score});
        });
        // Forward: a[k] = log-sum-exp of a[start] + alpha * score over the edges
        // ending at k, accumulated as (peak, sum of exp(x - peak)) while the edges
        // arrive (all edges into k start before k, so a[k] is complete when the
        // first edge leaving k is reached).
        constexpr double minus_inf = -std::numeric_limits<double>::infinity();
        std::vector<double> peak(n + 1, minus_inf), sum(n + 1, 0.0), a(n + 1, minus_inf);
        const auto finish = [&](std::size_t k) { a[k] = sum[k] > 0 ? peak[k] + std::log(sum[k]) : minus_inf; };
        a[0] = 0;
        std::size_t done = 0;  // a[0 .. done] are final
        for (const edge& e : edges) {
            while (done < e.start) finish(++done);
            const double x = a[e.start] + sampling.alpha * e.score;
            if (x == minus_inf) continue;
            if (x > peak[e.end]) {
                sum[e.end] = sum[e.end] * std::exp(peak[e.end] - x) + 1.0;
                peak[e.end] = x;
            } else {
                sum[e.end] += std::exp(x - peak[e.end]);
            }
        }
        while (done < n) finish(++done);
        // The edges grouped by their end (counting sort), for the backward pass.
        std::vector<std::size_t> first(n + 2, 0), by_end(edges.size());
        for (const edge& e : edges) ++first[e.end + 1];
        for (std::size_t k = 1; k < first.size(); ++k) first[k] += first[k - 1];
        {
            std::vector<std::size_t> fill(first.begin(), first.end() - 1);
            for (std::size_t i = 0; i < edges.size(); ++i) by_end[fill[edges[i].end]++] = i;
        }
        // Backward: at `end`, the piece p ending there with probability
        // exp(a[start(p)] + alpha * score(p) - a[end]).
        std::vector<double> weight;
        std::uint64_t drawn = 0;
        const auto step = [&](std::size_t end) {
            weight.clear();
            double total = 0;
            for (std::size_t j = first[end]; j < first[end + 1]; ++j) {
                const edge& e = edges[by_end[j]];
                const double w = std::exp(a[e.start] + sampling.alpha * e.score - a[end]);
                weight.push_back(w);
                total += w;
            }
            const double u = detail::subword_uniform(sampling.seed, sampling.stream, (word_index << 32) + 2 * drawn++);
            const double target = u * total;
            std::size_t pick = first[end + 1];  // the chosen edge's slot
            double running = 0;
            for (std::size_t j = first[end]; j < first[end + 1]; ++j) {
                const double w = weight[j - first[end]];
                if (w <= 0) continue;
                pick = j;  // the last edge with weight, should rounding leave target >= the total
                running += w;
                if (target < running) break;
            }
            TINYLLM_EXPECT(pick < first[end + 1], "encode_sample: no piece ends at byte ", end, " of a word");
            const edge& e = edges[by_end[pick]];
            return std::pair{e.start, e.id};
        };
        emit_path(word, step, out);
    }

    sentencepiece_kind kind_ = sentencepiece_kind::bpe;
    std::vector<std::string> pieces_;
    std::vector<double> scores_;
    sentencepiece_options options_;
    std::unordered_map<std::string, token_id, detail::string_hash, std::equal_to<>> ids_;
    std::unordered_map<std::uint64_t, merge_info> merges_;
    std::vector<std::string> decoded_;
    std::vector<int> byte_of_;
    std::size_t longest_ = 0;
    double min_score_ = std::numeric_limits<double>::max();
};

}  // namespace tinyllm
