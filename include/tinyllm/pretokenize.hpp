// tinyllm/pretokenize.hpp — split text into the pieces that byte-level BPE then
// encodes one at a time, exactly as the GPT-2, cl100k, o200k and Llama 3 regexes do.
//
// BPE never merges across a piece boundary. The boundaries keep a word, its
// leading space, a run of digits, a run of punctuation and a run of whitespace
// apart, so "dog", " dog", "dog." and "dog!" share the token for "dog" instead
// of each spending a vocabulary entry on its own. The three patterns tiktoken
// uses (\p{L} letters, \p{N} numbers, \s whitespace, \p{M} marks):
//
//   r50k_base / GPT-2
//     '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
//   cl100k_base (GPT-3.5/4)
//     '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//     |\s++$|\s*[\r\n]|\s+(?!\S)|\s
//   o200k_base (GPT-4o)
//     [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//     |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//     |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// and the form Meta's Llama 3 tokenizer.json gives cl100k's pattern (llama3):
//     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
//     |\s*[\r\n]+|\s+(?!\S)|\s+
// Without the possessive quantifiers it matches the same pieces, but it has no
// \s++$: whitespace at the end of the text splits after its last line break
// ("a\n  " is "a", "\n", "  "; cl100k gives "a", "\n  "), as Hugging Face's
// tokenizers, which run this regex, split it.
//
// Why each part exists:
//   * 's 't 're 've 'm 'll 'd   English contractions become their own pieces ("don't" -> "don", "'t").
//   * " ?\p{L}+"                a word keeps its leading space: " dog" is one token, and the space
//                               costs nothing extra.
//   * \p{N}{1,3}                cl100k/o200k cut digit runs into groups of at most 3, so numbers
//                               are spelled with a small, regular set of tokens.
//   * \s+(?!\S)                 a whitespace run gives its *last* space to the next word: "a   b"
//                               -> "a", "  ", " b", so " b" is the same token as in "a b".
//   * \s*[\r\n]                 (cl100k/o200k) line breaks end a whitespace piece, which keeps
//                               code indentation tokens regular.
//   * o200k's two letter rules  split camelCase: "HelloWorld" -> "Hello", "World".
//
// These are hand-written scanners, not a regex engine: each pattern is a
// function that, at a position, returns where the regex's match (leftmost-first
// alternation, with the backtracking that greedy quantifiers and `(?!\S)` imply)
// would end. The classes come from tools/gen-unicode-tables (Unicode 16.0, the
// version tiktoken's regex engine uses). Bytes that are not valid UTF-8 (which
// tiktoken cannot receive: Python strings are always valid) are treated as
// characters of their own in no class, like punctuation. Every scanner is O(n)
// over the text.
#pragma once

#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tinyllm {

enum class pretokenizer {
    r50k,    // r50k_base, p50k_base and GPT-2 (also Hugging Face's ByteLevel pre-tokenizer)
    cl100k,  // cl100k_base
    o200k,   // o200k_base
    llama3,  // Llama 3's tokenizer.json: cl100k's pattern without \s++$, so whitespace at
             // the end of the text splits after its last line break ("\n  " is "\n", "  ")
};

// The regex each pretokenizer implements (as tiktoken 0.14 writes it).
inline std::string_view pretokenizer_regex(pretokenizer p) {
    switch (p) {
        case pretokenizer::r50k:
            return R"('(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s)";
        case pretokenizer::cl100k:
            return R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
        case pretokenizer::o200k:
            return R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
        case pretokenizer::llama3:  // as Meta's Llama 3 tokenizer.json writes it
            return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    }
    return {};
}

inline std::string_view pretokenizer_name(pretokenizer p) {
    switch (p) {
        case pretokenizer::r50k: return "r50k";
        case pretokenizer::cl100k: return "cl100k";
        case pretokenizer::o200k: return "o200k";
        case pretokenizer::llama3: return "llama3";
    }
    return {};
}

// "r50k", "r50k_base", "p50k_base", "gpt2", "cl100k", "cl100k_base", "o200k", "o200k_base", "llama3".
inline pretokenizer pretokenizer_from_name(std::string_view name) {
    if (name == "r50k" || name == "r50k_base" || name == "p50k_base" || name == "gpt2") return pretokenizer::r50k;
    if (name == "cl100k" || name == "cl100k_base") return pretokenizer::cl100k;
    if (name == "o200k" || name == "o200k_base") return pretokenizer::o200k;
    if (name == "llama3") return pretokenizer::llama3;
    TINYLLM_FAIL("unknown pre-tokenization pattern '", name, "' (expected r50k, gpt2, cl100k, o200k or llama3)");
}

namespace detail::pretok {

namespace ucls = tinyllm::detail::unicode;

// One decoded character: code point, class bits, byte length (0 at the end of the text).
struct ch {
    std::uint32_t cp;
    std::uint8_t bits;
    std::uint8_t len;
};

inline constexpr std::uint8_t letter = ucls::letter;
inline constexpr std::uint8_t number = ucls::number;
inline constexpr std::uint8_t space = ucls::space;
inline constexpr std::uint8_t upperish = ucls::lu | ucls::lt | ucls::lm | ucls::lo | ucls::mark;  // o200k [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
inline constexpr std::uint8_t lowerish = ucls::ll | ucls::lm | ucls::lo | ucls::mark;  // o200k [\p{Ll}\p{Lm}\p{Lo}\p{M}]

struct text {
    const unsigned char* p;
    std::size_t n;

    ch at(std::size_t i) const {
        if (i >= n) return {0, 0, 0};
        const unsigned b = p[i];
        if (b < 0x80) return {b, ucls::classes(b), 1};
        std::uint32_t cp;
        const int len = decode_utf8(p + i, p + n, cp);
        return {cp, ucls::classes(cp), static_cast<std::uint8_t>(len)};
    }
    // End of the run of characters whose bits intersect `mask` (or, with
    // mask == 0, characters in none of letter/number/space), starting at i.
    std::size_t run(std::size_t i, std::uint8_t mask) const {
        for (;;) {
            const ch c = at(i);
            if (c.len == 0) return i;
            const bool in = mask ? (c.bits & mask) != 0 : (c.bits & (letter | number | space)) == 0;
            if (!in) return i;
            i += c.len;
        }
    }
};

inline bool is_other(const ch& c) { return c.len && (c.bits & (letter | number | space)) == 0; }
inline bool is_cr_lf(std::uint32_t cp) { return cp == '\r' || cp == '\n'; }
inline std::uint32_t ascii_lower(std::uint32_t cp) { return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp; }

// Length in bytes of a contraction at i ('s 't 'd 'm 'll 've 're), 0 if none.
// Case-insensitive matching uses Unicode simple case folding, under which 's'
// also matches U+017F LATIN SMALL LETTER LONG S (as in Rust's regex).
inline std::size_t contraction(const text& t, std::size_t i, bool ignore_case) {
    if (t.at(i).cp != '\'') return 0;
    const ch c1 = t.at(i + 1);
    if (!c1.len) return 0;
    std::uint32_t a = c1.cp;
    if (ignore_case) a = (a == 0x17F) ? 's' : ascii_lower(a);
    if (a == 's' || a == 'd' || a == 'm' || a == 't') return 1 + c1.len;
    const ch c2 = t.at(i + 1 + c1.len);
    if (!c2.len) return 0;
    const std::uint32_t b = ignore_case ? ascii_lower(c2.cp) : c2.cp;
    if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return 1 + c1.len + c2.len;
    return 0;
}

// The whitespace alternatives, at i where t.at(i) is whitespace, in the order
// the patterns list them:
//   r50k    \s++$  \s+(?!\S)  \s
//   cl100k  \s++$  \s*[\r\n]  \s+(?!\S)  \s
//   o200k   \s*[\r\n]+  \s+(?!\S)  \s+      (no \s++$: a run at the end of the text
//                                          still stops after its last line break)
//   llama3  \s*[\r\n]+  \s+(?!\S)  \s+      (likewise)
inline std::size_t whitespace(const text& t, std::size_t i, bool line_breaks, bool end_first = true) {
    std::size_t e = i, last_start = i, after_newline = 0, count = 0;
    for (;;) {
        const ch c = t.at(e);
        if (!c.len || !(c.bits & space)) break;
        last_start = e;
        e += c.len;
        ++count;
        if (is_cr_lf(c.cp)) after_newline = e;
    }
    if (end_first && e == t.n) return e;                     // \s++$
    if (line_breaks && after_newline) return after_newline;  // \s*[\r\n]: up to the last line break
    if (e == t.n) return e;                                  // \s+(?!\S) at the end of the text
    if (count >= 2) return last_start;                // \s+(?!\S): leave the last space for the next piece
    return e;                                         // \s
}

inline std::size_t next_r50k(const text& t, std::size_t i) {
    if (const std::size_t c = contraction(t, i, false)) return i + c;
    const ch c = t.at(i);
    std::size_t j = i;
    ch k = c;
    if (c.cp == ' ') {
        const ch c1 = t.at(i + 1);
        if (c1.len && !(c1.bits & space)) j = i + 1, k = c1;  // " ?" takes the space
    }
    if (k.bits & letter) return t.run(j, letter);
    if (k.bits & number) return t.run(j, number);
    if (is_other(k)) return t.run(j, 0);
    return whitespace(t, i, false);
}

// cl100k's rules; end_first = false drops \s++$ (Llama 3's form of the pattern).
inline std::size_t next_cl100k(const text& t, std::size_t i, bool end_first = true) {
    if (const std::size_t c = contraction(t, i, true)) return i + c;
    const ch c = t.at(i);
    if (c.bits & letter) return t.run(i, letter);  // \p{L}++
    if (!(c.bits & number) && !is_cr_lf(c.cp)) {   // [^\r\n\p{L}\p{N}]?+\p{L}++
        const ch c1 = t.at(i + c.len);
        if (c1.bits & letter) return t.run(i + c.len, letter);
    }
    if (c.bits & number) {  // \p{N}{1,3}+
        std::size_t e = i + c.len;
        for (int k = 1; k < 3; ++k) {
            const ch d = t.at(e);
            if (!(d.bits & number)) break;
            e += d.len;
        }
        return e;
    }
    std::size_t j = t.n + 1;  //  ?[^\s\p{L}\p{N}]++[\r\n]*+
    if (c.cp == ' ' && is_other(t.at(i + 1)))
        j = i + 1;
    else if (is_other(c))
        j = i;
    if (j <= t.n) {
        std::size_t e = t.run(j, 0);
        while (e < t.n && is_cr_lf(t.p[e])) ++e;
        return e;
    }
    return whitespace(t, i, true, end_first);
}

// o200k's letter rules, trying the alternatives in order with the backtracking
// a regex engine would do; returns 0 when neither matches at i.
inline std::size_t o200k_letters(const text& t, std::size_t i) {
    const ch c = t.at(i);
    const bool prefix = c.len && !(c.bits & (letter | number)) && !is_cr_lf(c.cp);  // [^\r\n\p{L}\p{N}]
    const std::size_t starts[2] = {prefix ? i + c.len : i, i};
    const int nstarts = prefix ? 2 : 1;
    // Rule 1: P? U* W+ C?  — U* greedy, backtracking until a W can start.
    for (int s = 0; s < nstarts; ++s) {
        std::size_t k = starts[s], last_w_end = 0;
        bool found = false;
        std::size_t e = k;
        for (;;) {  // the U run [k, e), remembering where its last W character ends
            const ch u = t.at(e);
            if (!u.len || !(u.bits & upperish)) break;
            e += u.len;
            if (u.bits & lowerish) last_w_end = e, found = true;
        }
        std::size_t w;
        if (t.at(e).bits & lowerish)
            w = t.run(e, lowerish);  // W+ right after the maximal U*
        else if (found)
            w = last_w_end;  // U* gives back characters until its last one that is also a W
        else
            continue;
        return w + contraction(t, w, true);
    }
    // Rule 2: P? U+ W* C?
    for (int s = 0; s < nstarts; ++s) {
        const std::size_t k = starts[s];
        if (!(t.at(k).bits & upperish)) continue;
        const std::size_t w = t.run(t.run(k, upperish), lowerish);
        return w + contraction(t, w, true);
    }
    return 0;
}

inline std::size_t next_o200k(const text& t, std::size_t i) {
    if (const std::size_t e = o200k_letters(t, i)) return e;
    const ch c = t.at(i);
    if (c.bits & number) {  // \p{N}{1,3}
        std::size_t e = i + c.len;
        for (int k = 1; k < 3; ++k) {
            const ch d = t.at(e);
            if (!(d.bits & number)) break;
            e += d.len;
        }
        return e;
    }
    std::size_t j = t.n + 1;  //  ?[^\s\p{L}\p{N}]+[\r\n/]*
    if (c.cp == ' ' && is_other(t.at(i + 1)))
        j = i + 1;
    else if (is_other(c))
        j = i;
    if (j <= t.n) {
        std::size_t e = t.run(j, 0);
        while (e < t.n && (is_cr_lf(t.p[e]) || t.p[e] == '/')) ++e;
        return e;
    }
    return whitespace(t, i, true, false);
}

}  // namespace detail::pretok

// Where the piece that starts at byte `at` of `text` ends (at < text.size()).
inline std::size_t next_piece_end(std::string_view text, std::size_t at, pretokenizer p) {
    const detail::pretok::text t{reinterpret_cast<const unsigned char*>(text.data()), text.size()};
    switch (p) {
        case pretokenizer::r50k: return detail::pretok::next_r50k(t, at);
        case pretokenizer::cl100k: return detail::pretok::next_cl100k(t, at);
        case pretokenizer::o200k: return detail::pretok::next_o200k(t, at);
        case pretokenizer::llama3: return detail::pretok::next_cl100k(t, at, false);
    }
    return text.size();
}

// Call on_piece(std::string_view) for each piece of text, in order. The pieces
// cover the text exactly: concatenated they give it back.
template <class F>
void for_each_piece(std::string_view text, pretokenizer p, F&& on_piece) {
    const detail::pretok::text t{reinterpret_cast<const unsigned char*>(text.data()), text.size()};
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t e;
        switch (p) {
            case pretokenizer::r50k: e = detail::pretok::next_r50k(t, i); break;
            case pretokenizer::cl100k: e = detail::pretok::next_cl100k(t, i); break;
            case pretokenizer::llama3: e = detail::pretok::next_cl100k(t, i, false); break;
            default: e = detail::pretok::next_o200k(t, i); break;
        }
        on_piece(text.substr(i, e - i));
        i = e;
    }
}

inline std::vector<std::string_view> pretokenize(std::string_view text, pretokenizer p) {
    std::vector<std::string_view> pieces;
    for_each_piece(text, p, [&](std::string_view piece) { pieces.push_back(piece); });
    return pieces;
}

}  // namespace tinyllm
