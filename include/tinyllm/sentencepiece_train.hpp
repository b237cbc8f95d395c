// tinyllm/sentencepiece_train.hpp — learn a SentencePiece vocabulary from text:
// BPE over characters, or the Unigram language model (Kudo 2018), the two
// algorithms of Kudo & Richardson's SentencePiece, with the rules its trainer
// follows. The result is a Llama-style tokenizer.json (sentencepiece.hpp encodes
// it; Hugging Face `tokenizers` loads it).
//
// The corpus. Every line is a sentence. As Llama's tokenizer sees it, a "▁"
// (U+2581) is put in front and every space becomes "▁" ("In the beginning" ->
// "▁In▁the▁beginning"), and the sentence is cut into words before each "▁" that
// follows a non-"▁" ("▁In", "▁the", "▁beginning"; a run "▁▁▁x" stays one word).
// Identical words are counted once with their frequency. No piece ever crosses
// a word: a "▁" may only begin a piece, or make up all of it ("▁▁").
//
// The alphabet. Characters are sorted by frequency; the most frequent are kept
// until they cover `character_coverage` of all characters (1.0: all). The rest
// are "unknown" in training (no piece contains them) and are encoded by byte
// fallback (<0xNN> pieces) or as <unk>. Every kept character is a piece.
//
// More rules on a piece (as SentencePiece's trainer): at most `max_piece_length`
// characters; one Unicode script (Latin letters do not join punctuation or Han;
// Hiragana and Katakana count as Han, combining marks take the script before
// them; punctuation, symbols and digits are "Common"); with split_digits, a
// digit is a piece alone.
//
// BPE (sentencepiece_kind::bpe). Start from characters; repeatedly make the most
// frequent adjacent pair of symbols one symbol, and its text a piece:
//
//     "▁the" x 3, "▁then" x 1         pairs: ▁t 4, th 4, he 4, en 1
//     best: the most frequent; ties: the shorter text, then the smaller string
//           in code points (▁ is U+2581, after ASCII): "he" < "th" < "▁t" -> "he"
//     "▁ t he" x 3, "▁ t he n" x 1     pairs: ▁t 4, the 4, hen 1 -> "▁t" (shorter)
//     "▁t he" x 3, "▁t he n" x 1       pairs: ▁the 4, hen 1 -> "▁the" ...
//
// A pair whose text is already a piece (made before from other parts: "aa"+"a"
// and "a"+"aa" are both "aaa") is dropped and not merged. The pieces' scores
// are their order (0, -1, -2, ...), then the characters follow. The
// tokenizer.json lists as merges every split of a piece into two pieces,
// ranked by the piece's score: the form Hugging Face's converters give Llama.
//
// Unigram (sentencepiece_kind::unigram). A word's probability is the sum over
// its segmentations x = (x1 .. xm) of prod p(xi): a unigram language model over
// pieces. Training fits p by EM and shrinks the vocabulary:
//
//   1. Seeds: every character, and the substrings of 2+ characters that occur
//      at least twice and are followed by more than one different character
//      (the branching nodes of the corpus's suffix tree, as SentencePiece takes
//      them), each scored freq x length; the best `seed_size` are kept. Scores
//      become log probabilities: log(s / sum s).
//   2. E step: over each word's lattice (sentencepiece.hpp draws one), the
//      forward-backward algorithm gives every piece's expected count
//          E[c(x)] = sum over words w of freq(w) * sum over occurrences (s, e)
//                    of x in w of exp(alpha(s) + log p(x) + beta(e) - log Z(w)),
//      alpha/beta: log-sum-exp of all paths from the start / to the end.
//   3. M step (Bayesian, as SentencePiece): drop pieces with E[c] < 0.5, then
//          log p(x) = digamma(E[c(x)]) - digamma(sum E[c]).
//   4. Steps 2-3 twice, then prune: for each piece x, the loss of the corpus
//      likelihood if x were removed, approximated by replacing x's Viterbi
//      count by its second-best segmentation: loss(x) = F(x) (log p(x) -
//      sum log p'(y) over the alternative's pieces y, with the alternatives'
//      counts raised by x's). Pieces whose own best segmentation is not
//      themselves, or never used, go; the rest keep the highest losses, down to
//      max(shrinking_factor x size, 1.1 x vocab_size). Characters always stay.
//   5. Repeat 2-4 until at most 1.1 x vocab_size pieces; keep every character
//      and the highest-scored pieces up to vocab_size.
//
// Both models lay out ids as SentencePiece does: <unk> 0, <s> 1, </s> 2, the
// 256 byte pieces <0x00>..<0xFF> (byte_fallback), then the learned pieces.
// SentencePiece's BPE trainer also restricts its search to the 1,000 (or 5%)
// most frequent pairs between refreshes, and its Unigram seeds come from a
// suffix array over whole sentences; this reference scans every pair and counts
// substrings word by word. The BPE vocabularies have come out equal piece for
// piece on every corpus tried (the tests hold two of them); the Unigram ones
// share about 97% of their pieces (docs/tokenization.md gives the measured overlap).
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/sentencepiece.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <queue>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace tinyllm {

struct sentencepiece_train_options {
    sentencepiece_kind kind = sentencepiece_kind::unigram;
    std::size_t vocab_size = 8000;     // every piece: 3 control pieces, 256 byte pieces, the learned ones
    double character_coverage = 0.9995;  // share of the corpus's characters the alphabet covers (0.98 .. 1)
    bool byte_fallback = true;           // add <0x00>..<0xFF>; else unknown characters are <unk>
    bool split_digits = true;            // every digit is a piece alone
    std::size_t max_piece_length = 16;   // characters
    std::size_t max_sentence_bytes = 4192;  // longer lines are skipped (as SentencePiece)
    // Unigram only.
    std::size_t seed_size = 1000000;
    double shrinking_factor = 0.75;
    int em_sub_iterations = 2;
    // Progress messages (may be empty).
    std::function<void(const std::string&)> progress;
};

namespace detail {

// The Unicode script classes the piece rule needs (a small table of the main
// scripts; anything not listed counts as Common).
enum class sp_script { any, common, inherited, latin, greek, cyrillic, armenian, hebrew, arabic, devanagari,
                       bengali, thai, georgian, hangul, han };

inline sp_script sp_script_of(char32_t c) {
    struct range {
        char32_t lo, hi;
        sp_script s;
    };
    static constexpr range table[] = {
        {U'A', U'Z', sp_script::latin},        {U'a', U'z', sp_script::latin},
        {0xAA, 0xAA, sp_script::latin},        {0xBA, 0xBA, sp_script::latin},
        {0xC0, 0xD6, sp_script::latin},        {0xD8, 0xF6, sp_script::latin},
        {0xF8, 0x24F, sp_script::latin},       {0x250, 0x2AF, sp_script::latin},
        {0x300, 0x36F, sp_script::inherited},  {0x370, 0x3FF, sp_script::greek},
        {0x400, 0x52F, sp_script::cyrillic},   {0x531, 0x58F, sp_script::armenian},
        {0x591, 0x5FF, sp_script::hebrew},     {0x610, 0x61A, sp_script::arabic},
        {0x620, 0x63F, sp_script::arabic},     {0x641, 0x64A, sp_script::arabic},
        {0x64B, 0x655, sp_script::inherited},  {0x656, 0x65F, sp_script::arabic},
        {0x66E, 0x6FF, sp_script::arabic},     {0x750, 0x77F, sp_script::arabic},
        {0x900, 0x963, sp_script::devanagari}, {0x966, 0x97F, sp_script::devanagari},
        {0x980, 0x9FF, sp_script::bengali},    {0xE01, 0xE3A, sp_script::thai},
        {0xE40, 0xE5B, sp_script::thai},       {0x10A0, 0x10FF, sp_script::georgian},
        {0x1100, 0x11FF, sp_script::hangul},   {0x1AB0, 0x1AFF, sp_script::inherited},
        {0x1DC0, 0x1DFF, sp_script::inherited}, {0x1E00, 0x1EFF, sp_script::latin},
        {0x1F00, 0x1FFF, sp_script::greek},    {0x200C, 0x200D, sp_script::inherited},
        {0x20D0, 0x20FF, sp_script::inherited}, {0x2C60, 0x2C7F, sp_script::latin},
        {0x2E80, 0x2FDF, sp_script::han},      {0x3005, 0x3007, sp_script::han},
        {0x3041, 0x30FF, sp_script::han},      {0x3130, 0x318F, sp_script::hangul},
        {0x31F0, 0x31FF, sp_script::han},      {0x3400, 0x4DBF, sp_script::han},
        {0x4E00, 0x9FFF, sp_script::han},      {0xA720, 0xA7FF, sp_script::latin},
        {0xAC00, 0xD7AF, sp_script::hangul},   {0xF900, 0xFAFF, sp_script::han},
        {0xFE00, 0xFE0F, sp_script::inherited}, {0xFE20, 0xFE2F, sp_script::inherited},
        {0xFF21, 0xFF3A, sp_script::latin},    {0xFF41, 0xFF5A, sp_script::latin},
        {0xFF66, 0xFF9F, sp_script::han},      {0x20000, 0x3FFFF, sp_script::han},
    };
    for (const range& r : table)
        if (c >= r.lo && c <= r.hi) return r.s;
    return sp_script::common;
}

inline bool sp_is_decimal_digit(char32_t c) {
    return (c >= U'0' && c <= U'9') || (c >= 0xFF10 && c <= 0xFF19) || (c >= 0x660 && c <= 0x669) ||
           (c >= 0x6F0 && c <= 0x6F9) || (c >= 0x966 && c <= 0x96F);
}

inline constexpr char32_t sp_meta_space = 0x2581;  // "▁"
inline constexpr char32_t sp_unknown = 0x2585;     // stands for a character outside the alphabet in training

inline std::u32string sp_to_u32(std::string_view s) {
    std::u32string out;
    for (std::size_t i = 0; i < s.size();) {
        std::uint32_t cp;
        i += static_cast<std::size_t>(decode_utf8(s, i, cp));
        out.push_back(cp == invalid_code_point ? char32_t(replacement_character) : char32_t(cp));
    }
    return out;
}

inline std::string sp_to_utf8(std::u32string_view s) {
    std::string out;
    for (const char32_t c : s) encode_utf8(static_cast<std::uint32_t>(c), out);
    return out;
}

struct u32_hash {
    std::size_t operator()(const std::u32string& s) const { return std::hash<std::u32string>{}(s); }
};

// SentencePiece's digamma: psi(x) by the recurrence psi(x) = psi(x + 1) - 1/x
// up to x >= 7, then the asymptotic series ln(x') + 1/(24 x'^2) - ... at x' = x - 1/2.
inline double sp_digamma(double x) {
    double r = 0;
    for (; x < 7; ++x) r -= 1 / x;
    x -= 0.5;
    const double q = 1 / (x * x);
    return r + std::log(x) + q / 24 - 7 * q * q / 960 + 31 * q * q * q / 8064 - 127 * q * q * q * q / 30720;
}

inline double sp_log_add(double a, double b) {
    if (a == -std::numeric_limits<double>::infinity()) return b;
    if (b == -std::numeric_limits<double>::infinity()) return a;
    const double m = std::max(a, b);
    return m + std::log1p(std::exp(-std::abs(a - b)));
}

}  // namespace detail

class sentencepiece_trainer {
public:
    explicit sentencepiece_trainer(sentencepiece_train_options options) : options_(std::move(options)) {
        const std::size_t fixed = 3 + (options_.byte_fallback ? 256 : 0);
        TINYLLM_EXPECT(options_.vocab_size > fixed, "vocab_size ", options_.vocab_size, " must be more than the ",
                       fixed, " fixed pieces (<unk>, <s>, </s>", options_.byte_fallback ? " and 256 byte pieces" : "",
                       ")");
        TINYLLM_EXPECT(options_.vocab_size <= 0x7FFFFFFFu, "vocab_size ", options_.vocab_size, " does not fit token_id");
        TINYLLM_EXPECT(options_.character_coverage >= 0.98 && options_.character_coverage <= 1.0,
                       "character_coverage must be in [0.98, 1] (as SentencePiece), got ", options_.character_coverage);
        TINYLLM_EXPECT(options_.max_piece_length >= 1, "max_piece_length must be at least 1");
        TINYLLM_EXPECT(options_.shrinking_factor > 0 && options_.shrinking_factor < 1,
                       "shrinking_factor must be in (0, 1), got ", options_.shrinking_factor);
        TINYLLM_EXPECT(options_.em_sub_iterations >= 1, "em_sub_iterations must be at least 1");
    }

    // Add text (many lines; may be called many times).
    void add_text(std::string_view text) {
        std::size_t at = 0;
        while (at <= text.size()) {
            std::size_t end = text.find('\n', at);
            if (end == std::string_view::npos) end = text.size();
            std::string_view line = text.substr(at, end - at);
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            add_sentence(line);
            if (end == text.size()) break;
            at = end + 1;
        }
    }

    std::size_t sentences() const { return sentences_; }
    std::size_t skipped_sentences() const { return skipped_; }
    std::size_t distinct_words() const { return word_counts_.size(); }

    // The characters the vocabulary covers (after train()), most frequent first.
    const std::vector<char32_t>& alphabet() const { return alphabet_; }

    // Train; returns the tokenizer.json text (load_tokenizer/parse_hf_tokenizer_json read it).
    std::string train_json() {
        TINYLLM_EXPECT(!word_counts_.empty(), "sentencepiece_trainer: no text to train on (every line was empty",
                       skipped_ ? " or too long" : "", ")");
        prepare();
        std::vector<std::pair<std::u32string, double>> pieces;  // learned pieces with scores, best first
        if (options_.kind == sentencepiece_kind::bpe)
            pieces = train_bpe_pieces();
        else
            pieces = train_unigram_pieces();
        const std::size_t fixed = 3 + (options_.byte_fallback ? 256 : 0);
        TINYLLM_EXPECT(pieces.size() == learned_budget(), "vocab_size ", options_.vocab_size,
                       " is too large for this text: it yields at most ", fixed + pieces.size(), " pieces (",
                       fixed, " fixed, ", pieces.size(), " learned); lower vocab_size or give more text");
        return to_json(pieces);
    }

    tokenizer train() {
        const std::string json = train_json();
        return parse_hf_tokenizer_json(json, "<trained tokenizer.json>");
    }

private:
    struct word {
        std::u32string text;
        std::int64_t count;
    };

    void add_sentence(std::string_view line) {
        if (line.empty()) return;
        if (line.size() > options_.max_sentence_bytes) {
            ++skipped_;
            return;
        }
        ++sentences_;
        // "▁" in front, spaces as "▁", cut before each "▁" that follows a non-"▁".
        std::u32string s(1, detail::sp_meta_space);
        for (const char32_t c : detail::sp_to_u32(line)) s.push_back(c == U' ' ? detail::sp_meta_space : c);
        std::size_t start = 0;
        for (std::size_t i = 1; i <= s.size(); ++i) {
            if (i == s.size() || (s[i] == detail::sp_meta_space && s[i - 1] != detail::sp_meta_space)) {
                ++word_counts_[s.substr(start, i - start)];
                start = i;
            }
        }
    }

    // Alphabet by coverage; words in a fixed order with unknown characters replaced.
    void prepare() {
        std::unordered_map<char32_t, std::int64_t> counts;
        std::int64_t total = 0;
        for (const auto& [w, n] : word_counts_)
            for (const char32_t c : w) {
                if (c == 0) continue;
                counts[c] += n;
                total += n;
            }
        std::vector<std::pair<char32_t, std::int64_t>> by_count(counts.begin(), counts.end());
        std::sort(by_count.begin(), by_count.end(),
                  [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
        alphabet_.clear();
        char_count_.clear();
        std::int64_t covered = 0;
        for (const auto& [c, n] : by_count) {
            // SentencePiece compares the coverage in single precision.
            const float coverage = static_cast<float>(double(covered) / double(total));
            if (coverage >= static_cast<float>(options_.character_coverage) && options_.character_coverage < 1.0) break;
            covered += n;
            if (c == U'\t' || c == detail::sp_unknown) continue;  // never pieces (as SentencePiece)
            alphabet_.push_back(c);
            char_count_[c] = n;
        }
        const std::size_t fixed = 3 + (options_.byte_fallback ? 256 : 0);
        TINYLLM_EXPECT(alphabet_.size() + fixed <= options_.vocab_size, "vocab_size ", options_.vocab_size,
                       " is smaller than the alphabet (", alphabet_.size(), " characters) + ", fixed,
                       " fixed pieces; raise vocab_size or lower character_coverage");
        words_.clear();
        for (const auto& [w, n] : word_counts_) {
            std::u32string t = w;
            for (char32_t& c : t)
                if (!char_count_.count(c)) c = detail::sp_unknown;
            words_.push_back({std::move(t), n});
        }
        std::sort(words_.begin(), words_.end(), [](const word& a, const word& b) { return a.text < b.text; });
        say(std::to_string(sentences_) + " sentences, " + std::to_string(words_.size()) + " distinct words, alphabet " +
            std::to_string(alphabet_.size()) + " characters covering " +
            std::to_string(100.0 * double(covered) / double(std::max<std::int64_t>(total, 1))) + "%");
    }

    // SentencePiece's rule for a piece (split_by_whitespace, whitespace-only pieces allowed).
    bool valid_piece(std::u32string_view p) const {
        if (p.empty() || p.size() > options_.max_piece_length) return false;
        const bool all_space = std::all_of(p.begin(), p.end(), [](char32_t c) { return c == detail::sp_meta_space; });
        detail::sp_script prev = detail::sp_script::any;
        for (std::size_t i = 0; i < p.size(); ++i) {
            const char32_t c = p[i];
            if (c == detail::sp_unknown || c == 0 || c == U'\t' || c == U' ') return false;
            if (c == detail::sp_meta_space) {
                if (!all_space && i > 0) return false;
                continue;
            }
            detail::sp_script s = detail::sp_script_of(c);
            if (s == detail::sp_script::inherited) s = prev;
            if (options_.split_digits && detail::sp_is_decimal_digit(c) && p.size() > 1) return false;
            if (s != detail::sp_script::any && prev != detail::sp_script::any && s != prev) return false;
            prev = s;
        }
        return true;
    }

    void say(const std::string& s) const {
        if (options_.progress) options_.progress(s);
    }

    std::size_t learned_budget() const { return options_.vocab_size - 3 - (options_.byte_fallback ? 256 : 0); }

    // ---- BPE ----------------------------------------------------------------------

    std::vector<std::pair<std::u32string, double>> train_bpe_pieces() {
        // Symbols: 0 .. A-1 the alphabet's characters, then merged symbols; unknown = -1.
        std::vector<std::u32string> text;
        std::unordered_map<char32_t, int> char_id;
        for (const char32_t c : alphabet_) char_id[c] = int(text.size()), text.emplace_back(1, c);
        std::vector<std::vector<int>> seq(words_.size());
        for (std::size_t w = 0; w < words_.size(); ++w)
            for (const char32_t c : words_[w].text) {
                const auto it = char_id.find(c);
                seq[w].push_back(it == char_id.end() ? -1 : it->second);
            }
        using key_t = std::uint64_t;
        const auto key = [](int a, int b) { return (key_t(std::uint32_t(a)) << 32) | std::uint32_t(b); };
        std::unordered_map<key_t, std::int64_t> count;
        std::unordered_map<key_t, std::vector<std::uint32_t>> where;
        std::unordered_set<key_t> dead;                 // pairs whose text is invalid or already a piece
        std::unordered_map<key_t, std::u32string> joined;  // the text of a live pair
        const auto pair_ok = [&](key_t k, int a, int b) {
            if (dead.count(k)) return false;
            if (joined.count(k)) return true;
            std::u32string t = text[std::size_t(a)] + text[std::size_t(b)];
            if (!valid_piece(t)) {
                dead.insert(k);
                return false;
            }
            joined.emplace(k, std::move(t));
            return true;
        };
        std::vector<key_t> touched;
        const auto add_pairs = [&](std::uint32_t w, std::int64_t sign) {
            const auto& s = seq[w];
            for (std::size_t i = 0; i + 1 < s.size(); ++i) {
                if (s[i] < 0 || s[i + 1] < 0) continue;
                const key_t k = key(s[i], s[i + 1]);
                if (!pair_ok(k, s[i], s[i + 1])) continue;
                count[k] += sign * words_[w].count;
                if (sign > 0) where[k].push_back(w);
                touched.push_back(k);
            }
        };
        // The best pair: highest count, then the shorter text, then the smaller text.
        struct cand {
            std::int64_t count;
            key_t k;
        };
        const auto worse = [&](const cand& x, const cand& y) {  // x below y in the heap
            if (x.count != y.count) return x.count < y.count;
            const std::u32string& tx = joined.at(x.k);
            const std::u32string& ty = joined.at(y.k);
            if (tx.size() != ty.size()) return tx.size() > ty.size();
            return tx > ty;
        };
        std::priority_queue<cand, std::vector<cand>, decltype(worse)> heap(worse);
        for (std::uint32_t w = 0; w < seq.size(); ++w) add_pairs(w, +1);
        for (const auto& [k, n] : count)
            if (n > 0) heap.push({n, k});

        std::unordered_set<std::u32string, detail::u32_hash> made;
        for (const char32_t c : alphabet_) made.insert(std::u32string(1, c));
        std::vector<std::pair<std::u32string, double>> pieces;
        const std::size_t wanted = learned_budget() - alphabet_.size();
        std::vector<std::uint32_t> stamp(seq.size(), 0);
        std::uint32_t round = 0;
        while (pieces.size() < wanted && !heap.empty()) {
            const cand top = heap.top();
            heap.pop();
            const auto c = count.find(top.k);
            if (dead.count(top.k) || c == count.end() || c->second != top.count || top.count <= 0) continue;  // stale
            const std::u32string piece = joined.at(top.k);
            if (!made.insert(piece).second) {  // the same text by other parts: drop this pair
                dead.insert(top.k);
                count.erase(top.k);
                continue;
            }
            const int a = int(top.k >> 32), b = int(top.k & 0xFFFFFFFFu);
            const int id = int(text.size());
            text.push_back(piece);
            pieces.emplace_back(piece, -double(pieces.size()));
            ++round;
            touched.clear();
            const std::vector<std::uint32_t> affected = std::move(where[top.k]);
            where.erase(top.k);
            for (const std::uint32_t w : affected) {
                if (stamp[w] == round) continue;
                stamp[w] = round;
                auto& s = seq[w];
                bool has = false;
                for (std::size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
                if (!has) continue;
                add_pairs(w, -1);
                std::vector<int> out;
                for (std::size_t i = 0; i < s.size(); ++i) {
                    if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
                        out.push_back(id);
                        ++i;
                    } else {
                        out.push_back(s[i]);
                    }
                }
                s = std::move(out);
                add_pairs(w, +1);
            }
            count.erase(top.k);
            dead.insert(top.k);
            for (const key_t k : touched) {
                const auto it = count.find(k);
                if (it != count.end() && it->second > 0) heap.push({it->second, k});
            }
            if (pieces.size() % 1000 == 0) say("bpe: " + std::to_string(pieces.size()) + " / " + std::to_string(wanted) + " pieces");
        }
        // Then the characters, most frequent first (SentencePiece's order), scored on.
        for (const char32_t c : alphabet_) pieces.emplace_back(std::u32string(1, c), -double(pieces.size()));
        return pieces;
    }

    // ---- Unigram ------------------------------------------------------------------

    struct unigram_model {
        std::vector<std::u32string> pieces;
        std::vector<double> scores;  // log probabilities
        std::unordered_map<std::u32string, int, detail::u32_hash> index;
        std::size_t longest = 1;
        double min_score = 0;
        void build() {
            index.clear();
            longest = 1;
            min_score = 0;
            for (std::size_t i = 0; i < pieces.size(); ++i) {
                index.emplace(pieces[i], int(i));
                longest = std::max(longest, pieces[i].size());
                min_score = std::min(min_score, scores[i]);
            }
        }
        // Calls f(start, end, piece id or -1 for an unknown character, score) for every lattice edge of w.
        template <class F>
        void edges(const std::u32string& w, F&& f) const {
            for (std::size_t s = 0; s < w.size(); ++s) {
                bool single = false;
                std::u32string sub;
                for (std::size_t len = 1; len <= longest && s + len <= w.size(); ++len) {
                    sub.push_back(w[s + len - 1]);
                    const auto it = index.find(sub);
                    if (it == index.end()) continue;
                    single |= len == 1;
                    f(s, s + len, it->second, scores[std::size_t(it->second)]);
                }
                if (!single) f(s, s + 1, -1, min_score - 10.0);
            }
        }
    };

    std::vector<std::pair<std::u32string, double>> seeds() const {
        // Characters with their counts, then substrings (2+ characters, valid,
        // seen at least twice, followed by more than one different character)
        // scored count x length.
        struct stat {
            std::int64_t count = 0;
            char32_t next = 0;  // the one character seen after it so far; 1: more than one
        };
        std::unordered_map<std::u32string, stat, detail::u32_hash> subs;
        for (const word& w : words_) {
            const std::u32string& t = w.text;
            for (std::size_t s = 0; s < t.size(); ++s) {
                std::u32string sub(1, t[s]);
                for (std::size_t e = s + 2; e <= t.size() && e - s <= options_.max_piece_length; ++e) {
                    sub.push_back(t[e - 1]);
                    if (!valid_piece(sub)) break;  // longer ones only add characters: invalid too
                    stat& st = subs[sub];
                    st.count += w.count;
                    // A word end is followed by the next word's "▁" (or the end of the line).
                    const char32_t after = e < t.size() ? t[e] : detail::sp_meta_space;
                    if (st.next == 0) st.next = after;
                    else if (st.next != after) st.next = 1;
                }
            }
        }
        std::vector<std::pair<std::u32string, double>> out;
        for (const char32_t c : alphabet_) out.emplace_back(std::u32string(1, c), double(char_count_.at(c)));
        std::vector<std::pair<std::u32string, double>> cands;
        for (auto& [s, st] : subs)
            if (st.count >= 2 && st.next == 1) cands.emplace_back(s, double(st.count) * double(s.size()));
        std::sort(cands.begin(), cands.end(),
                  [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
        if (cands.size() > options_.seed_size) cands.resize(options_.seed_size);
        out.insert(out.end(), cands.begin(), cands.end());
        double sum = 0;
        for (const auto& p : out) sum += p.second;
        for (auto& p : out) p.second = std::log(p.second) - std::log(sum);
        return out;
    }

    // E step: expected count of every piece; returns the objective (-mean log Z per word occurrence).
    double e_step(const unigram_model& m, std::vector<double>& expected) const {
        const double ninf = -std::numeric_limits<double>::infinity();
        expected.assign(m.pieces.size(), 0.0);
        double objective = 0;
        std::int64_t all = 0;
        std::vector<double> alpha, beta;
        struct edge {
            std::size_t s, e;
            int id;
            double score;
        };
        std::vector<edge> es;
        for (const word& w : words_) {
            const std::size_t n = w.text.size();
            es.clear();
            m.edges(w.text, [&](std::size_t s, std::size_t e, int id, double sc) { es.push_back({s, e, id, sc}); });
            alpha.assign(n + 1, ninf);
            beta.assign(n + 1, ninf);
            alpha[0] = 0;
            for (const edge& x : es) alpha[x.e] = detail::sp_log_add(alpha[x.e], alpha[x.s] + x.score);  // edges sorted by start
            beta[n] = 0;
            for (auto it = es.rbegin(); it != es.rend(); ++it) beta[it->s] = detail::sp_log_add(beta[it->s], it->score + beta[it->e]);
            const double z = alpha[n];
            for (const edge& x : es)
                if (x.id >= 0) expected[std::size_t(x.id)] += double(w.count) * std::exp(alpha[x.s] + x.score + beta[x.e] - z);
            objective -= double(w.count) * z;
            all += w.count;
        }
        return objective / double(all);
    }

    // Viterbi segmentation of w: piece ids (-1: unknown) of the best path.
    static std::vector<int> viterbi(const unigram_model& m, const std::u32string& w) {
        const std::size_t n = w.size();
        std::vector<double> best(n + 1, -std::numeric_limits<double>::infinity());
        std::vector<std::pair<std::size_t, int>> back(n + 1, {0, -1});
        best[0] = 0;
        m.edges(w, [&](std::size_t s, std::size_t e, int id, double sc) {
            if (best[s] + sc > best[e]) best[e] = best[s] + sc, back[e] = {s, id};
        });
        std::vector<int> out;
        for (std::size_t e = n; e > 0; e = back[e].first) out.push_back(back[e].second);
        std::reverse(out.begin(), out.end());
        return out;
    }

    // The best and second-best segmentations of w (two-best Viterbi).
    static std::vector<std::vector<int>> two_best(const unigram_model& m, const std::u32string& w) {
        const std::size_t n = w.size();
        struct entry {
            double score;
            std::size_t from;  // start position
            int rank;          // which of the two at `from`
            int id;
        };
        std::vector<std::vector<entry>> at(n + 1);
        at[0].push_back({0.0, 0, -1, -1});
        std::vector<std::vector<std::pair<std::size_t, std::pair<int, double>>>> incoming(n + 1);
        m.edges(w, [&](std::size_t s, std::size_t e, int id, double sc) { incoming[e].push_back({s, {id, sc}}); });
        for (std::size_t e = 1; e <= n; ++e) {
            std::vector<entry> c;
            for (const auto& [s, x] : incoming[e])
                for (int r = 0; r < int(at[s].size()); ++r) c.push_back({at[s][std::size_t(r)].score + x.second, s, r, x.first});
            std::sort(c.begin(), c.end(), [](const entry& a, const entry& b) { return a.score > b.score; });
            if (c.size() > 2) c.resize(2);
            at[e] = std::move(c);
        }
        std::vector<std::vector<int>> out;
        for (int r = 0; r < int(at[n].size()); ++r) {
            std::vector<int> path;
            std::size_t e = n;
            int rank = r;
            while (e > 0) {
                const entry& x = at[e][std::size_t(rank)];
                path.push_back(x.id);
                rank = x.rank;
                e = x.from;
            }
            std::reverse(path.begin(), path.end());
            out.push_back(std::move(path));
        }
        return out;
    }

    void m_step(unigram_model& m, const std::vector<double>& expected) const {
        unigram_model next;
        double sum = 0;
        for (std::size_t i = 0; i < m.pieces.size(); ++i) {
            if (expected[i] < 0.5) continue;
            next.pieces.push_back(m.pieces[i]);
            next.scores.push_back(expected[i]);
            sum += expected[i];
        }
        const double log_sum = detail::sp_digamma(sum);
        for (double& s : next.scores) s = detail::sp_digamma(s) - log_sum;
        next.build();
        m = std::move(next);
    }

    void prune(unigram_model& m, std::size_t desired) const {
        const std::size_t size = m.pieces.size();
        std::vector<bool> keep(size, true);
        std::vector<std::vector<int>> alternatives(size);
        for (std::size_t i = 0; i < size; ++i) {
            const auto nb = two_best(m, m.pieces[i]);
            if (nb.size() < 2) continue;
            if (nb[0].size() >= 2) keep[i] = false;  // the piece is not its own best segmentation
            else alternatives[i] = nb[1];
        }
        // Viterbi counts over the corpus, and which words use each piece.
        std::vector<double> freq(size, 0.0);
        std::vector<std::vector<std::uint32_t>> users(size);
        double total_words = 0;
        for (std::uint32_t wi = 0; wi < words_.size(); ++wi) {
            total_words += double(words_[wi].count);
            for (const int id : viterbi(m, words_[wi].text))
                if (id >= 0) freq[std::size_t(id)] += double(words_[wi].count), users[std::size_t(id)].push_back(wi);
        }
        double sum = 0;
        for (const double f : freq) sum += f;
        const double log_sum = std::log(sum);
        unigram_model next;
        std::vector<std::pair<std::size_t, double>> candidates;
        for (std::size_t i = 0; i < size; ++i) {
            if (freq[i] == 0 || !keep[i]) continue;
            if (alternatives[i].empty()) {  // a character: always kept
                next.pieces.push_back(m.pieces[i]);
                next.scores.push_back(m.scores[i]);
                continue;
            }
            double f = 0;  // share of word occurrences that use the piece
            for (const std::uint32_t w : users[i]) f += double(words_[w].count);
            f /= total_words;
            const double log_p = std::log(freq[i]) - log_sum;
            const double log_sum_alt = std::log(sum + freq[i] * double(alternatives[i].size() - 1));
            double log_p_alt = 0;
            for (const int a : alternatives[i])
                log_p_alt += std::log((a >= 0 ? freq[std::size_t(a)] : 0.0) + freq[i]) - log_sum_alt;
            candidates.emplace_back(i, f * (log_p - log_p_alt));
        }
        const std::size_t target =
            std::max<std::size_t>(desired, static_cast<std::size_t>(options_.shrinking_factor * double(size)));
        std::sort(candidates.begin(), candidates.end(),
                  [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
        for (const auto& [i, loss] : candidates) {
            if (next.pieces.size() >= target) break;
            next.pieces.push_back(m.pieces[i]);
            next.scores.push_back(m.scores[i]);
        }
        next.build();
        m = std::move(next);
    }

    std::vector<std::pair<std::u32string, double>> train_unigram_pieces() {
        unigram_model m;
        for (auto& [p, s] : seeds()) m.pieces.push_back(std::move(p)), m.scores.push_back(s);
        m.build();
        say("unigram: " + std::to_string(m.pieces.size()) + " seed pieces");
        const std::size_t budget = learned_budget();
        const auto desired = static_cast<std::size_t>(double(options_.vocab_size) * 1.1);
        std::vector<double> expected;
        for (int round = 1;; ++round) {
            double objective = 0;
            for (int it = 0; it < options_.em_sub_iterations; ++it) {
                objective = e_step(m, expected);
                m_step(m, expected);
            }
            say("unigram: EM round " + std::to_string(round) + ", " + std::to_string(m.pieces.size()) +
                " pieces, -log likelihood per word " + std::to_string(objective));
            if (m.pieces.size() <= desired) break;
            const std::size_t before = m.pieces.size();
            prune(m, desired);
            if (m.pieces.size() >= before) break;  // nothing left to prune
        }
        // Every character, then the best-scored pieces, up to the budget.
        std::unordered_map<std::u32string, double, detail::u32_hash> final_pieces;
        double penalty = 0;
        for (const char32_t c : alphabet_) {
            const std::u32string s(1, c);
            const auto it = m.index.find(s);
            if (it != m.index.end()) {
                final_pieces[s] = m.scores[std::size_t(it->second)];
            } else {
                final_pieces[s] = m.min_score + penalty;
                penalty += 0.0001;
            }
        }
        std::vector<std::size_t> order(m.pieces.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return m.scores[a] != m.scores[b] ? m.scores[a] > m.scores[b] : m.pieces[a] < m.pieces[b];
        });
        for (const std::size_t i : order) {
            if (final_pieces.size() >= budget) break;
            final_pieces.emplace(m.pieces[i], m.scores[i]);
        }
        std::vector<std::pair<std::u32string, double>> out(final_pieces.begin(), final_pieces.end());
        std::sort(out.begin(), out.end(),
                  [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
        return out;
    }

    // ---- tokenizer.json -------------------------------------------------------------

    std::string to_json(const std::vector<std::pair<std::u32string, double>>& learned) const {
        std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
        std::vector<double> scores = {0, 0, 0};
        if (options_.byte_fallback)
            for (int b = 0; b < 256; ++b) pieces.push_back(detail::byte_piece_name(static_cast<unsigned char>(b))), scores.push_back(0);
        for (const auto& [p, s] : learned) pieces.push_back(detail::sp_to_utf8(p)), scores.push_back(s);
        const auto q = [](std::string_view s) { return json::quote(s); };
        const bool bpe = options_.kind == sentencepiece_kind::bpe;
        std::string j = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[";
        const char* names[] = {"<unk>", "<s>", "</s>"};
        for (int i = 0; i < 3; ++i)
            j += std::string(i ? "," : "") + "{\"id\":" + std::to_string(i) + ",\"content\":" + q(names[i]) +
                 ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}";
        j += "],";
        // Llama 2's form: Prepend("▁") and Replace(" ", "▁"), no pre-tokenizer, "<s>" before the text.
        j += "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\u2581\"},"
             "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\u2581\"}]},";
        j += "\"pre_tokenizer\":null,";
        j += "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
             "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[{\"SpecialToken\":{\"id\":\"<s>\","
             "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
             "{\"Sequence\":{\"id\":\"B\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],"
             "\"tokens\":[\"<s>\"]}}},";
        j += "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\u2581\"},"
             "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \","
             "\"start\":1,\"stop\":0}]},";
        const std::string fallback = options_.byte_fallback ? "true" : "false";
        if (bpe) {
            j += "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\",\"continuing_subword_prefix\":null,"
                 "\"end_of_word_suffix\":null,\"fuse_unk\":true,\"byte_fallback\":" + fallback +
                 ",\"ignore_merges\":false,\"vocab\":{";
            for (std::size_t i = 0; i < pieces.size(); ++i)
                j += std::string(i ? "," : "") + q(pieces[i]) + ":" + std::to_string(i);
            j += "},\"merges\":[";
            bool first = true;
            for (const auto& [l, r] : bpe_merges(pieces)) {
                j += std::string(first ? "" : ",") + "[" + q(pieces[std::size_t(l)]) + "," + q(pieces[std::size_t(r)]) + "]";
                first = false;
            }
            j += "]}}";
        } else {
            j += "\"model\":{\"type\":\"Unigram\",\"unk_id\":0,\"vocab\":[";
            for (std::size_t i = 0; i < pieces.size(); ++i) {
                j += std::string(i ? "," : "") + "[" + q(pieces[i]) + "," +
                     json::format_number(static_cast<float>(scores[i])) + "]";
            }
            j += "],\"byte_fallback\":" + fallback + "}}";
        }
        return j;
    }

    // Every split of a learned piece into two pieces, ranked by the piece's id
    // (its score order), then the parts' ids: how Llama's merges are derived.
    static std::vector<std::pair<token_id, token_id>> bpe_merges(const std::vector<std::string>& pieces) {
        std::unordered_map<std::string, token_id> id;
        for (std::size_t i = 0; i < pieces.size(); ++i) id.emplace(pieces[i], token_id(i));
        struct m {
            token_id merged, left, right;
        };
        std::vector<m> found;
        for (std::size_t i = 3; i < pieces.size(); ++i) {
            const std::string& p = pieces[i];
            if (detail::byte_piece_value(p) >= 0) continue;
            for (std::size_t cut = detail::char_length(p, 0); cut < p.size(); cut += detail::char_length(p, cut)) {
                const auto l = id.find(p.substr(0, cut));
                const auto r = id.find(p.substr(cut));
                if (l != id.end() && r != id.end() && l->second >= 3 && r->second >= 3)
                    found.push_back({token_id(i), l->second, r->second});
            }
        }
        std::sort(found.begin(), found.end(), [](const m& a, const m& b) {
            return std::tie(a.merged, a.left, a.right) < std::tie(b.merged, b.left, b.right);
        });
        std::vector<std::pair<token_id, token_id>> out;
        for (const m& x : found) out.emplace_back(x.left, x.right);
        return out;
    }

    sentencepiece_train_options options_;
    std::unordered_map<std::u32string, std::int64_t, detail::u32_hash> word_counts_;
    std::size_t sentences_ = 0;
    std::size_t skipped_ = 0;
    std::vector<char32_t> alphabet_;
    std::unordered_map<char32_t, std::int64_t> char_count_;
    std::vector<word> words_;
};

// Train on in-memory texts; returns the tokenizer (its tokenizer.json: hf_tokenizer_json).
inline tokenizer train_sentencepiece(const std::vector<std::string>& texts, const sentencepiece_train_options& options) {
    sentencepiece_trainer trainer(options);
    for (const auto& t : texts) trainer.add_text(t);
    return trainer.train();
}

}  // namespace tinyllm
