// tinyllm/tokenizer_io.hpp — reading and writing byte-level BPE vocabularies.
//
// Five formats:
//
//   tiktoken rank files   one line per token: base64(token bytes), a space, its
//                         rank (= id). Merges are implied: two tokens merge when
//                         their concatenation is a token, ranked by its id.
//   GPT-2 encoder.json    {"token": id, ...} with every byte written as a
//     + vocab.bpe         printable character (the byte<->unicode map below),
//                         and vocab.bpe: "#version" then one merge "a b" per line
//                         (ranked by its line).
//   Hugging Face          tokenizer.json with a BPE model, a ByteLevel
//     tokenizer.json      pre-tokenizer, merges as "a b" strings or ["a", "b"]
//                         arrays, and added (special) tokens; or a
//                         SentencePiece-family file (Llama 2, Mistral: BPE with
//                         byte_fallback; Unigram), read into sentencepiece.hpp's
//                         model (parse_hf_sentencepiece_json).
//   SentencePiece         tokenizer.model, a protobuf ModelProto (load_tokenizer
//     .model              reads it with sentencepiece_proto.hpp).
//   tinyllm's own         a text file (save_tokenizer / load_tokenizer):
//                             tinyllm-bpe 1
//                             pattern r50k|cl100k|o200k
//                             whole-piece-lookup 0|1
//                             tiktoken-merges 0|1
//                             add-prefix-space 0|1
//                             tokens N
//                             <base64 bytes>          (N lines; id = line index; "-" marks a hole)
//                             merges M
//                             <left> <right> <merged> <rank>   (M lines; only when tiktoken-merges is 0)
//                             specials K
//                             <id> <base64 text>      (K lines)
//
// A malformed file throws tinyllm::error naming the file, the line (or JSON
// field) and what was wrong.
#pragma once

#include <tinyllm/bpe.hpp>
#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/sentencepiece.hpp>
#include <tinyllm/sentencepiece_proto.hpp>
#include <tinyllm/tokenizer.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tinyllm {

namespace detail {

inline std::string read_text_file(const std::string& path) { return read_whole_file(path); }

// The bound on a token id (a tiktoken rank) read from a file of `entries`
// entries. A vector is sized from the largest id, so an id is bounded by what
// the file holds before it is used ({"a": 99999999}, 15 bytes, would allocate
// gigabytes). Ids may leave gaps (cl100k's special tokens sit above a hole), but
// stay below twice the number of entries (the published files have no gaps).
inline std::size_t id_limit(std::size_t entries) { return 2 * entries; }

inline int base64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// Decode standard base64 (with '=' padding). Returns false on malformed input
// and sets `what`.
inline bool base64_decode(std::string_view s, std::string& out, std::string& what) {
    out.clear();
    if (s.size() % 4 != 0) {
        what = "base64 length " + std::to_string(s.size()) + " is not a multiple of 4";
        return false;
    }
    for (std::size_t i = 0; i < s.size(); i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s[i + k];
            if (c == '=' && i + 4 == s.size() && k >= 2) {
                v[k] = 0;
                ++pad;
                continue;
            }
            v[k] = base64_value(c);
            if (v[k] < 0 || pad) {
                what = std::string("bad base64 character '") + c + "' at column " + std::to_string(i + k + 1);
                return false;
            }
        }
        const unsigned bits = (unsigned(v[0]) << 18) | (unsigned(v[1]) << 12) | (unsigned(v[2]) << 6) | unsigned(v[3]);
        out += static_cast<char>(bits >> 16);
        if (pad < 2) out += static_cast<char>((bits >> 8) & 0xFF);
        if (pad < 1) out += static_cast<char>(bits & 0xFF);
    }
    return true;
}

inline std::string base64_encode(std::string_view s) {
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < s.size(); i += 3) {
        unsigned bits = unsigned(static_cast<unsigned char>(s[i])) << 16;
        if (i + 1 < s.size()) bits |= unsigned(static_cast<unsigned char>(s[i + 1])) << 8;
        if (i + 2 < s.size()) bits |= unsigned(static_cast<unsigned char>(s[i + 2]));
        out += alphabet[(bits >> 18) & 63];
        out += alphabet[(bits >> 12) & 63];
        out += i + 1 < s.size() ? alphabet[(bits >> 6) & 63] : '=';
        out += i + 2 < s.size() ? alphabet[bits & 63] : '=';
    }
    return out;
}

// Split text into lines (without the "\n"; a trailing "\r" is removed too).
inline std::vector<std::string_view> split_lines(std::string_view text) {
    std::vector<std::string_view> lines;
    std::size_t at = 0;
    while (at < text.size()) {
        std::size_t e = text.find('\n', at);
        if (e == std::string_view::npos) e = text.size();
        std::string_view line = text.substr(at, e - at);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        lines.push_back(line);
        at = e + 1;
    }
    return lines;
}

template <class Int>
bool parse_int(std::string_view s, Int& v) {
    if (s.empty()) return false;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && end == s.data() + s.size();
}

inline std::vector<std::string_view> split_spaces(std::string_view line) {
    std::vector<std::string_view> words;
    std::size_t at = 0;
    while (at < line.size()) {
        while (at < line.size() && line[at] == ' ') ++at;
        if (at >= line.size()) break;
        std::size_t e = line.find(' ', at);
        if (e == std::string_view::npos) e = line.size();
        words.push_back(line.substr(at, e - at));
        at = e;
    }
    return words;
}

// GPT-2's byte <-> unicode map. GPT-2 stores tokens as text, and bytes that are
// whitespace or control characters would be unreadable or ambiguous there, so
// each byte b is written as one printable code point: the printable bytes
// '!'..'~', '¡'..'¬', '®'..'ÿ' as themselves, the other 68 bytes as
// U+0100, U+0101, ... in increasing byte order (so a space is "Ġ", U+0120).
inline const std::array<std::uint32_t, 256>& byte_to_unicode() {
    static const std::array<std::uint32_t, 256> table = [] {
        std::array<std::uint32_t, 256> t{};
        std::uint32_t next = 256;
        for (std::uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            t[b] = printable ? b : next++;
        }
        return t;
    }();
    return table;
}

// The bytes a GPT-2-style token string stands for; false if a character is
// not in the map.
inline bool unicode_to_bytes(std::string_view s, std::string& out) {
    static const std::array<int, 324> inverse = [] {
        std::array<int, 324> inv{};
        inv.fill(-1);
        const auto& fwd = byte_to_unicode();
        for (int b = 0; b < 256; ++b) inv[fwd[b]] = b;
        return inv;
    }();
    out.clear();
    for (std::size_t i = 0; i < s.size();) {
        std::uint32_t cp;
        i += static_cast<std::size_t>(decode_utf8(s, i, cp));
        if (cp >= inverse.size() || inverse[cp] < 0) return false;
        out += static_cast<char>(inverse[cp]);
    }
    return true;
}

inline std::string bytes_to_unicode(std::string_view bytes) {
    std::string out;
    for (const char c : bytes) encode_utf8(byte_to_unicode()[static_cast<unsigned char>(c)], out);
    return out;
}

inline std::string printable_line(std::string_view line) {
    std::string s(line.substr(0, 60));
    for (char& c : s)
        if (static_cast<unsigned char>(c) < 0x20) c = '?';
    return "\"" + s + (line.size() > 60 ? "...\"" : "\"");
}

}  // namespace detail

// ---- tiktoken rank files ----------------------------------------------------------

// Parse the text of a tiktoken rank file (`source` names it in errors).
inline bpe_vocab parse_tiktoken_ranks(std::string_view text, const std::string& source) {
    std::vector<std::string> tokens;
    std::vector<bool> present;
    std::string bytes, what;
    const auto lines = detail::split_lines(text);
    for (std::size_t n = 0; n < lines.size(); ++n) {
        const std::string_view line = lines[n];
        if (line.empty()) continue;
        const auto words = detail::split_spaces(line);
        if (words.size() != 2)
            TINYLLM_FAIL("malformed tiktoken rank file ", source, " line ", n + 1, ": expected '<base64> <rank>', got ",
                         detail::printable_line(line));
        if (!detail::base64_decode(words[0], bytes, what) || bytes.empty())
            TINYLLM_FAIL("malformed tiktoken rank file ", source, " line ", n + 1, ": ",
                         bytes.empty() && what.empty() ? "empty token" : what);
        token_id id;  // the rank is the token's id
        if (!detail::parse_int(words[1], id) || id < 0)
            TINYLLM_FAIL("malformed tiktoken rank file ", source, " line ", n + 1, ": rank '", words[1],
                         "' is not a non-negative integer below 2^31 (a token_id)");
        // Ranks index the vocabulary, which may have gaps (present[] says which
        // ranks exist), but not so wide that the vocabulary outgrows the file.
        const auto rank = static_cast<std::size_t>(id);
        if (rank >= tokens.size()) {
            if (rank >= detail::id_limit(lines.size()))
                TINYLLM_FAIL("malformed tiktoken rank file ", source, " line ", n + 1, ": rank ", rank,
                             " is implausibly large for a file of ", lines.size(), " lines (ranks must be below ",
                             detail::id_limit(lines.size()), ")");
            tokens.resize(rank + 1);
            present.resize(rank + 1, false);
        }
        if (present[rank])
            TINYLLM_FAIL("malformed tiktoken rank file ", source, " line ", n + 1, ": rank ", rank, " appears twice");
        tokens[rank] = bytes;
        present[rank] = true;
    }
    if (tokens.empty()) TINYLLM_FAIL("malformed tiktoken rank file ", source, ": no tokens");
    try {
        return bpe_vocab(std::move(tokens), std::move(present), {}, true, true);
    } catch (const error& e) {
        TINYLLM_FAIL("bad vocabulary in tiktoken rank file ", source, ": ", e.what());
    }
}

inline tokenizer load_tiktoken(const std::string& path, pretokenizer pattern, std::vector<special_token> specials = {}) {
    return tokenizer(parse_tiktoken_ranks(detail::read_text_file(path), path), pattern, std::move(specials));
}

// The pattern and special tokens of tiktoken's named encodings, and the number
// of ranks their files hold (ranks 0 .. ranks - 1), where it is checked: the
// published r50k_base, cl100k_base and o200k_base files (tests/test_tokenizer_io.cpp
// reads them from ../shared). A rank file named as another encoding would
// otherwise load without complaint, with that encoding's split rules and special
// ids, and give wrong tokens.
struct encoding_spec {
    pretokenizer pattern;
    std::vector<special_token> specials;
    std::size_t ranks = 0;  // 0: not checked (p50k_base)
};

inline encoding_spec tiktoken_encoding_spec(std::string_view name) {
    if (name == "r50k_base" || name == "gpt2") return {pretokenizer::r50k, {{"<|endoftext|>", 50256}}, 50256};
    if (name == "p50k_base") return {pretokenizer::r50k, {{"<|endoftext|>", 50256}}};
    if (name == "cl100k_base")
        return {pretokenizer::cl100k,
                {{"<|endoftext|>", 100257},
                 {"<|fim_prefix|>", 100258},
                 {"<|fim_middle|>", 100259},
                 {"<|fim_suffix|>", 100260},
                 {"<|endofprompt|>", 100276}},
                100256};
    if (name == "o200k_base")
        return {pretokenizer::o200k, {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}}, 199998};
    TINYLLM_FAIL("unknown encoding '", name, "' (expected r50k_base, gpt2, p50k_base, cl100k_base or o200k_base)");
}

namespace detail {
// The tokenizer of encoding `name` from the text of its rank file (`source` names
// it in errors), refused when the file holds another number of ranks than the
// encoding has, with the encoding whose count it does hold, if one does.
inline tokenizer named_tiktoken(std::string_view name, std::string_view text, const std::string& source) {
    encoding_spec spec = tiktoken_encoding_spec(name);
    bpe_vocab ranks = parse_tiktoken_ranks(text, source);
    if (spec.ranks != 0 && ranks.size() != spec.ranks) {
        std::string other;
        for (const char* known : {"r50k_base", "cl100k_base", "o200k_base"})
            if (tiktoken_encoding_spec(known).ranks == ranks.size()) other = cat(" (", known, "'s count)");
        TINYLLM_FAIL(source, " holds ranks 0 .. ", ranks.size() - 1, other, ", but ", name, " has ", spec.ranks,
                     " (0 .. ", spec.ranks - 1, "): is it another encoding's rank file?");
    }
    return tokenizer(std::move(ranks), spec.pattern, std::move(spec.specials));
}
}  // namespace detail

// A tiktoken encoding by name from its rank file: load_tiktoken_encoding("cl100k_base", ".../cl100k_base.tiktoken").
inline tokenizer load_tiktoken_encoding(std::string_view name, const std::string& rank_file) {
    return detail::named_tiktoken(name, detail::read_text_file(rank_file), rank_file);
}

// ---- GPT-2 encoder.json + vocab.bpe ---------------------------------------------------

inline tokenizer load_gpt2(const std::string& encoder_json_path, const std::string& vocab_bpe_path) {
    const auto doc = json::parse(detail::read_text_file(encoder_json_path), encoder_json_path);
    if (!doc.is_object()) TINYLLM_FAIL("malformed ", encoder_json_path, ": expected a JSON object {\"token\": id}");
    std::vector<std::string> tokens;
    std::vector<bool> present;
    std::vector<special_token> specials;
    std::string bytes;
    // The token vector is sized from the largest id: bounded first (detail::id_limit).
    const std::size_t limit = detail::id_limit(doc.as_object().size());
    for (const auto& [key, value] : doc.as_object()) {
        if (!value.is_number())
            TINYLLM_FAIL("malformed ", encoder_json_path, ": the id of \"", key, "\" is ",
                         json::kind_name(value.type()), ", expected a number");
        std::int64_t id = -1;
        try {
            id = value.as_int64();
        } catch (const error&) {
        }
        if (id < 0 || id >= 100'000'000)
            TINYLLM_FAIL("malformed ", encoder_json_path, ": the id of \"", key, "\" is ", value.number_text(),
                         ", expected an integer in [0, 1e8)");
        if (static_cast<std::size_t>(id) >= limit)
            TINYLLM_FAIL("malformed ", encoder_json_path, ": the id of \"", key, "\" is ", id,
                         ", implausibly large for a file of ", doc.as_object().size(), " tokens (ids must be below ",
                         limit, ")");
        if (!detail::unicode_to_bytes(key, bytes)) {
            if (key.size() > 2 && key.front() == '<' && key.back() == '>') {  // "<|endoftext|>"
                specials.push_back({key, static_cast<token_id>(id)});
                continue;
            }
            TINYLLM_FAIL("malformed ", encoder_json_path, ": token \"", key,
                         "\" has a character outside GPT-2's byte-to-unicode map");
        }
        if (static_cast<std::size_t>(id) >= tokens.size()) {
            tokens.resize(std::size_t(id) + 1);
            present.resize(std::size_t(id) + 1, false);
        }
        if (present[std::size_t(id)])
            TINYLLM_FAIL("malformed ", encoder_json_path, ": id ", id, " is used by two tokens");
        tokens[std::size_t(id)] = bytes;
        present[std::size_t(id)] = true;
    }
    // "<|endoftext|>" is written with printable characters, so it decoded
    // above as an ordinary token; GPT-2 treats it as special.
    for (std::size_t id = 0; id < tokens.size(); ++id)
        if (present[id] && tokens[id] == "<|endoftext|>") {
            specials.push_back({tokens[id], static_cast<token_id>(id)});
            present[id] = false;
            tokens[id].clear();
        }
    // vocab.bpe: every merge is "a b" with a, b and ab in the vocabulary, ranked
    // by its position in the file (as GPT-2's own encoder and Hugging Face's
    // BPE.from_file rank them), whatever the id of the token it makes.
    const std::string merges_text = detail::read_text_file(vocab_bpe_path);
    const auto lines = detail::split_lines(merges_text);
    std::string left, right;
    std::vector<bpe_merge> merges;
    bpe_vocab probe;  // built below once the tokens are known
    try {
        probe = bpe_vocab(tokens, present, {}, false, true);
    } catch (const error& e) {
        TINYLLM_FAIL("bad vocabulary in ", encoder_json_path, ": ", e.what());
    }
    for (std::size_t n = 0; n < lines.size(); ++n) {
        const std::string_view line = lines[n];
        if (line.empty() || (n == 0 && line.substr(0, 8) == "#version")) continue;
        const auto words = detail::split_spaces(line);
        if (words.size() != 2)
            TINYLLM_FAIL("malformed ", vocab_bpe_path, " line ", n + 1, ": expected a merge 'a b', got ",
                         detail::printable_line(line));
        if (!detail::unicode_to_bytes(words[0], left) || !detail::unicode_to_bytes(words[1], right))
            TINYLLM_FAIL("malformed ", vocab_bpe_path, " line ", n + 1,
                         ": a character outside GPT-2's byte-to-unicode map");
        const token_id a = probe.find(left), b = probe.find(right), ab = probe.find(left + right);
        if (a == bpe_vocab::none || b == bpe_vocab::none || ab == bpe_vocab::none)
            TINYLLM_FAIL("malformed ", vocab_bpe_path, " line ", n + 1, ": merge ", detail::printable_line(line),
                         " uses or makes a token that ", encoder_json_path, " does not have");
        merges.push_back({a, b, ab, static_cast<std::uint32_t>(merges.size())});
    }
    // The published GPT-2 files list their merges in id order, where tiktoken's
    // rule (rank = the merged token's id) gives the same encoding, but a pair of
    // files need not: "b c" before "a b" with "ab" = 256 and "bc" = 257 makes
    // "abc" a + bc. Nor does GPT-2 look a whole piece up before merging
    // (ignore_merges is off in Hugging Face's reading).
    try {
        return tokenizer(bpe_vocab(std::move(tokens), std::move(present), std::move(merges), false, false),
                         pretokenizer::r50k, std::move(specials));
    } catch (const error& e) {
        TINYLLM_FAIL("bad vocabulary in ", encoder_json_path, " and ", vocab_bpe_path, ": ", e.what());
    }
}

// ---- Hugging Face tokenizer.json --------------------------------------------------------

namespace detail {

// The pattern of a Split pre-tokenizer (`where` names it in errors:
// "pre_tokenizer.pretokenizers[0]"). tinyllm's pre-tokenizers give the regex's
// matches as the pieces, which is Split's "Isolated" behavior without invert;
// the others cut the text elsewhere (Removed drops the matches, invert splits on
// what does not match), so they are refused by name rather than read as it.
inline pretokenizer hf_split_pattern(const json::value& split, const std::string& path, const std::string& where) {
    if (const json::value* b = split.find("behavior"); b && !(b->is_string() && b->as_string() == "Isolated"))
        TINYLLM_FAIL("unsupported pre_tokenizer in ", path, ": field \"", where, ".behavior\": ",
                     b->is_string() ? json::quote(b->as_string()) : std::string(json::kind_name(b->type())),
                     " is not supported (supported: \"Isolated\")");
    if (const json::value* inv = split.find("invert"); inv && !inv->is_null() && !(inv->is_bool() && !inv->as_bool()))
        TINYLLM_FAIL("unsupported pre_tokenizer in ", path, ": field \"", where,
                     ".invert\": only false is supported (invert splits the text on what the pattern does not "
                     "match)");
    const json::value* pat = split.find("pattern");
    const json::value* rx = pat ? pat->find("Regex") : nullptr;
    if (!rx || !rx->is_string())
        TINYLLM_FAIL("unsupported pre_tokenizer in ", path, ": Split without a \"pattern\": {\"Regex\": ...}");
    const std::string& r = rx->as_string();
    // Llama 3 writes cl100k's pattern without its possessive quantifiers and
    // without \s++$: the same pieces but at the end of the text, where
    // whitespace after a line break is a piece of its own (pretokenizer::llama3).
    for (const auto p : {pretokenizer::r50k, pretokenizer::cl100k, pretokenizer::o200k, pretokenizer::llama3})
        if (r == pretokenizer_regex(p)) return p;
    if (r == R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)") return pretokenizer::r50k;
    TINYLLM_FAIL("unsupported pre_tokenizer in ", path, ": Split pattern ", json::quote(r),
                 " is not one of the r50k, cl100k or o200k patterns");
}

}  // namespace detail

namespace detail {

// Whether a tokenizer.json is a SentencePiece-family file rather than a
// byte-level BPE: a Unigram model, a BPE with byte_fallback, a Metaspace
// pre-tokenizer, or a normalizer without a ByteLevel pre-tokenizer.
inline bool is_sentencepiece_json(const json::value& doc) {
    const json::value* model = doc.find("model");
    if (!model || !model->is_object()) return false;
    const auto type_of = [](const json::value* v) -> std::string {
        const json::value* t = v ? v->find("type") : nullptr;
        return t && t->is_string() ? t->as_string() : "";
    };
    if (type_of(model) == "Unigram") return true;
    if (const auto* v = model->find("byte_fallback"); v && v->is_bool() && v->as_bool()) return true;
    const json::value* pre = doc.find("pre_tokenizer");
    if (type_of(pre) == "Metaspace") return true;
    bool byte_level = type_of(pre) == "ByteLevel";
    if (const auto* list = pre ? pre->find("pretokenizers") : nullptr; list && list->is_array())
        for (const auto& p : list->as_array()) byte_level |= type_of(&p) == "ByteLevel";
    const json::value* norm = doc.find("normalizer");
    return norm && !norm->is_null() && !byte_level;
}

// The ids a tokenizer.json's post-processor puts before and after a single text
// (what Hugging Face's encode(text) adds with add_special_tokens=True):
//   TemplateProcessing    its "single" template: [SpecialToken...] Sequence A [SpecialToken...]
//   RobertaProcessing,    cls, the text, sep ({"cls": ["<s>", 0], "sep": ["</s>", 2]})
//   BertProcessing
//   ByteLevel             no ids (it trims offsets; byte-level files only)
//   Sequence              of the above, in order ({"processors": [ByteLevel, TemplateProcessing]}:
//                         Llama 3's tokenizer.json)
// null or missing: none. `byte_level` says which family the file is (ByteLevel is
// refused in a SentencePiece file). The pair template is not used.
inline void hf_post_processor_template(const json::value& doc, const std::string& path, bool byte_level,
                                       std::vector<token_id>& before, std::vector<token_id>& after) {
    const auto field_error = [&](const std::string& field, const std::string& what) {
        TINYLLM_FAIL("malformed ", path, ": field \"", field, "\": ", what);
    };
    const auto type_of = [](const json::value& v) -> std::string {
        const json::value* t = v.find("type");
        return t && t->is_string() ? t->as_string() : "";
    };
    const auto id_in_range = [&](const json::value& id, const std::string& where) {
        std::int64_t v = -1;
        if (id.is_number()) try {
                v = id.as_int64();
            } catch (const error&) {
            }
        if (v < 0 || v >= 100'000'000) field_error(where, "expected ids in [0, 1e8)");
        return static_cast<token_id>(v);
    };
    bool adds_ids = false;
    const auto one = [&](const json::value& post, const std::string& where) {
        const std::string type = type_of(post);
        if (type == "ByteLevel") {
            if (!byte_level)
                TINYLLM_FAIL("unsupported tokenizer.json ", path, ": field \"", where,
                             "\": \"ByteLevel\" in a SentencePiece-family file");
            return;
        }
        if (type != "TemplateProcessing" && type != "RobertaProcessing" && type != "BertProcessing")
            TINYLLM_FAIL("unsupported tokenizer.json ", path, ": field \"", where, "\": \"", type,
                         "\" is not supported (supported: TemplateProcessing, RobertaProcessing, BertProcessing",
                         byte_level ? ", ByteLevel" : "", ", or a Sequence of them)");
        if (adds_ids) field_error(where, "a second post-processor that adds ids (one is read)");
        adds_ids = true;
        if (type != "TemplateProcessing") {  // cls, the text, sep
            for (const char* key : {"cls", "sep"}) {
                const json::value* pair = post.find(key);
                if (!pair || !pair->is_array() || pair->size() != 2 || !pair->at(0).is_string())
                    field_error(where + "." + key, "expected [\"token\", id]");
                (std::string(key) == "cls" ? before : after).push_back(id_in_range(pair->at(1), where + "." + key));
            }
            return;
        }
        const json::value* single = post.find("single");
        const json::value* table = post.find("special_tokens");
        if (!single || !single->is_array()) field_error(where + ".single", "missing or not an array");
        bool seen_text = false;
        for (std::size_t k = 0; k < single->size(); ++k) {
            const json::value& item = single->at(k);
            const std::string at = where + ".single[" + std::to_string(k) + "]";
            if (const json::value* seq = item.find("Sequence")) {
                const json::value* id = seq->find("id");
                if (seen_text || !id || !id->is_string() || id->as_string() != "A")
                    field_error(at, "the single template must hold the sequence A exactly once");
                seen_text = true;
            } else if (const json::value* sp = item.find("SpecialToken")) {
                const json::value* name = sp->find("id");
                if (!name || !name->is_string()) field_error(at + ".SpecialToken.id", "missing or not a string");
                const json::value* entry = table && table->is_object() ? table->find(name->as_string()) : nullptr;
                const json::value* ids = entry ? entry->find("ids") : nullptr;
                if (!ids || !ids->is_array())
                    field_error(where + ".special_tokens",
                                json::quote(name->as_string()) + " is missing or has no \"ids\"");
                for (const auto& id : ids->as_array())
                    (seen_text ? after : before)
                        .push_back(
                            id_in_range(id, where + ".special_tokens[" + json::quote(name->as_string()) + "].ids"));
            } else {
                field_error(at, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
            }
        }
        if (!seen_text) field_error(where + ".single", "the template has no sequence A");
    };
    const json::value* post = doc.find("post_processor");
    if (!post || post->is_null()) return;
    if (!post->is_object()) field_error("post_processor", "expected an object or null");
    if (type_of(*post) == "Sequence") {
        const json::value* list = post->find("processors");
        if (!list || !list->is_array()) field_error("post_processor.processors", "missing or not an array");
        for (std::size_t k = 0; k < list->size(); ++k) {
            const std::string where = "post_processor.processors[" + std::to_string(k) + "]";
            if (!list->at(k).is_object()) field_error(where, "expected an object");
            one(list->at(k), where);
        }
    } else {
        one(*post, "post_processor");
    }
}

// One entry of a tokenizer.json's model.merges, "a b" or ["a", "b"], as its two
// halves; `where` names it in the error ("malformed PATH: field \"model.merges[k]\": ...").
inline std::pair<std::string, std::string> merge_halves(const json::value& m, const std::string& path,
                                                        const std::string& where) {
    if (m.is_string()) {
        const std::string& s = m.as_string();
        const auto space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
            TINYLLM_FAIL("malformed ", path, ": field \"", where, "\": expected \"a b\" (two tokens separated by one "
                         "space), got ", json::quote(s));
        return {s.substr(0, space), s.substr(space + 1)};
    }
    if (m.is_array() && m.size() == 2 && m.at(0).is_string() && m.at(1).is_string())
        return {m.at(0).as_string(), m.at(1).as_string()};
    TINYLLM_FAIL("malformed ", path, ": field \"", where, "\": expected \"a b\" or [\"a\", \"b\"]");
}

// The normalizer hf_tokenizer_json writes for a tokenizer that puts a space
// before text that does not start with one (add_prefix_space) and cuts it with
// a Split pre-tokenizer. ByteLevel's own add_prefix_space cannot say that
// there: it puts the space before each piece it is given, and after a Split
// that is every piece. A normalizer runs before the Split: Prepend puts " " in
// front of text that is not empty, then a Replace turns the two spaces at the
// very start (\A, not ^, which would also match after each line break) back
// into one, so text that began with a space keeps just that one. As
// tinyllm's prefix space, it applies to each stretch of text between special
// tokens (written with normalized: false, so matched before normalizing).
inline constexpr std::string_view hf_prefix_space_normalizer =
    R"({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": " "}, )"
    R"({"type": "Replace", "pattern": {"Regex": "\\A  "}, "content": " "}]})";

// Whether a tokenizer.json's normalizer is hf_prefix_space_normalizer (key
// order and spacing aside).
inline bool is_hf_prefix_space_normalizer(const json::value& n) {
    const auto string_at = [](const json::value& v, std::string_view key) -> std::string {
        const json::value* s = v.find(key);
        return s && s->is_string() ? s->as_string() : std::string("\x01");  // not any string written
    };
    const json::value* list = n.find("normalizers");
    if (string_at(n, "type") != "Sequence" || !list || !list->is_array() || list->size() != 2) return false;
    const json::value& prepend = list->at(0);
    const json::value& replace = list->at(1);
    const json::value* pattern = replace.find("pattern");
    return string_at(prepend, "type") == "Prepend" && string_at(prepend, "prepend") == " " &&
           string_at(replace, "type") == "Replace" && pattern && string_at(*pattern, "Regex") == "\\A  " &&
           !pattern->find("String") && string_at(replace, "content") == " ";
}

// How many entries a tokenizer.json's added_tokens has (0 when it is not an array).
inline std::size_t added_token_count(const json::value& doc) {
    const json::value* added = doc.find("added_tokens");
    return added && added->is_array() ? added->size() : 0;
}

// The error for an id of a tokenizer.json whose model.vocab and added_tokens hold
// `entries` entries together, at or past id_limit(entries).
inline std::string hf_id_too_large(std::int64_t id, std::size_t entries) {
    return "id " + std::to_string(id) + " is implausibly large for a file of " + std::to_string(entries) +
           " vocabulary entries and added tokens (ids must be below " + std::to_string(id_limit(entries)) + ")";
}

// A tokenizer.json's added_tokens ({"id", "content", ...} each) as tinyllm
// special tokens. `vocab_entries`: how many entries model.vocab has (which
// bounds the ids, with the added tokens).
inline std::vector<special_token> added_tokens(const json::value& doc, const std::string& path,
                                               std::size_t vocab_entries) {
    std::vector<special_token> specials;
    const auto* added = doc.find("added_tokens");
    if (!added || added->is_null()) return specials;
    if (!added->is_array()) TINYLLM_FAIL("malformed ", path, ": field \"added_tokens\": expected an array");
    const std::size_t entries = vocab_entries + added->size();
    for (std::size_t k = 0; k < added->size(); ++k) {
        const auto& a = added->at(k);
        const std::string where = "added_tokens[" + std::to_string(k) + "]";
        const auto* id = a.find("id");
        const auto* content = a.find("content");
        if (!id || !id->is_number() || !content || !content->is_string() || content->as_string().empty())
            TINYLLM_FAIL("malformed ", path, ": field \"", where,
                         "\": expected {\"id\": number, \"content\": non-empty string, ...}");
        std::int64_t v = -1;
        try { v = id->as_int64(); } catch (const error&) {}
        if (v < 0 || v >= 100'000'000)
            TINYLLM_FAIL("malformed ", path, ": field \"", where, ".id\": expected an integer in [0, 1e8)");
        if (static_cast<std::size_t>(v) >= id_limit(entries))
            TINYLLM_FAIL("malformed ", path, ": field \"", where, ".id\": ", hf_id_too_large(v, entries));
        // Hugging Face lets an added token take the spaces beside it (lstrip,
        // rstrip: "a <mask> b" -> "a", "<mask>", "b") or match only as a whole
        // word (single_word); a tinyllm special token matches its text alone,
        // so such a file would give other ids than HF's: refused by name.
        for (const char* option : {"lstrip", "rstrip", "single_word"})
            if (const json::value* flag = a.find(option);
                flag && !flag->is_null() && !(flag->is_bool() && !flag->as_bool()))
                TINYLLM_FAIL("unsupported tokenizer.json ", path, ": field \"", where, ".", option,
                             "\": ", flag->is_bool() ? "true" : "a value other than false",
                             " is not supported (a special token matches its text alone, without the spaces or "
                             "word boundaries around it)");
        specials.push_back({content->as_string(), static_cast<token_id>(v)});
    }
    return specials;
}

}  // namespace detail

inline tokenizer parse_hf_sentencepiece_json(const json::value& doc, std::string_view text, const std::string& path);

// Parse a Hugging Face tokenizer.json (`source` names it in errors): a
// byte-level BPE here, a SentencePiece-family file by parse_hf_sentencepiece_json.
inline tokenizer parse_hf_tokenizer_json(std::string_view text, const std::string& path) {
    const auto doc = json::parse(text, path);
    auto field_error = [&](const std::string& field, const std::string& what) {
        TINYLLM_FAIL("malformed ", path, ": field \"", field, "\": ", what);
    };
    auto unsupported = [&](const std::string& field, const std::string& what) {
        TINYLLM_FAIL("unsupported tokenizer.json ", path, ": field \"", field, "\": ", what);
    };
    if (!doc.is_object()) field_error("(top level)", "expected a JSON object");
    if (detail::is_sentencepiece_json(doc)) return parse_hf_sentencepiece_json(doc, text, path);
    const json::value* model = doc.find("model");
    if (!model || !model->is_object()) field_error("model", "missing or not an object");
    if (const auto* type = model->find("type"); type && (!type->is_string() || type->as_string() != "BPE"))
        field_error("model.type", "only \"BPE\" (byte-level) and \"Unigram\" models are supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        const auto* v = model->find(key);
        if (v && !v->is_null() && !(v->is_string() && v->as_string().empty()))
            field_error(std::string("model.") + key, "not supported by a byte-level BPE");
    }
    if (const auto* v = model->find("byte_fallback"); v && v->is_bool() && v->as_bool())
        field_error("model.byte_fallback", "true is not supported (that is a SentencePiece-style BPE)");
    // BPE-dropout skips merges at random: not the deterministic encoding tinyllm
    // computes (0 skips none).
    if (const auto* v = model->find("dropout"); v && !v->is_null() && !(v->is_number() && v->as_double() == 0.0))
        unsupported("model.dropout", "BPE-dropout (a non-zero dropout) is not supported");
    if (const auto* v = model->find("normalizer"); v && !v->is_null())
        field_error("normalizer", "normalizers are not supported");
    // The one normalizer read: the prefix space hf_tokenizer_json writes for a
    // Split pre-tokenizer (detail::is_hf_prefix_space_normalizer).
    bool add_prefix_space = false;
    if (const auto* v = doc.find("normalizer"); v && !v->is_null()) {
        if (!detail::is_hf_prefix_space_normalizer(*v))
            unsupported("normalizer",
                        "normalizers are not supported (except the one that puts a space before the text, which "
                        "hf_tokenizer_json writes)");
        add_prefix_space = true;
    }
    bool whole_piece = false;
    if (const auto* v = model->find("ignore_merges"); v && v->is_bool()) whole_piece = v->as_bool();

    // Pre-tokenizer: ByteLevel (with its regex), or Sequence[Split(regex), ByteLevel(use_regex=false)].
    pretokenizer pattern = pretokenizer::r50k;
    const json::value* pre = doc.find("pre_tokenizer");
    if (!pre || !pre->is_object()) field_error("pre_tokenizer", "missing: a byte-level BPE needs ByteLevel");
    auto byte_level = [&](const json::value& bl, bool split_given, const std::string& where) {
        bool use_regex = true;
        if (const auto* v = bl.find("use_regex"); v && v->is_bool()) use_regex = v->as_bool();
        if (use_regex && split_given) field_error("pre_tokenizer", "both a Split and ByteLevel(use_regex=true)");
        if (!use_regex && !split_given) field_error("pre_tokenizer", "ByteLevel(use_regex=false) without a Split");
        if (const auto* v = bl.find("add_prefix_space"); v && v->is_bool() && v->as_bool()) {
            // ByteLevel puts the space before each piece it is given: the whole
            // text (its own regex splits after), but after a Split every piece
            // of it (" Hello", " world", " ,"), which tinyllm does not do.
            if (split_given)
                unsupported(where + ".add_prefix_space",
                            "true after a Split is not supported (Hugging Face puts a space before every piece of "
                            "the Split)");
            add_prefix_space = true;
        }
    };
    const std::string pre_type = pre->find("type") && pre->at("type").is_string() ? pre->at("type").as_string() : "";
    if (pre_type == "ByteLevel") {
        byte_level(*pre, false, "pre_tokenizer");
    } else if (pre_type == "Sequence") {
        const auto* list = pre->find("pretokenizers");
        if (!list || !list->is_array()) field_error("pre_tokenizer.pretokenizers", "missing or not an array");
        bool split = false, bl = false;
        for (std::size_t k = 0; k < list->size(); ++k) {
            const json::value& p = list->at(k);
            const std::string where = "pre_tokenizer.pretokenizers[" + std::to_string(k) + "]";
            const std::string t = p.find("type") && p.at("type").is_string() ? p.at("type").as_string() : "";
            // A Split after ByteLevel would cut the byte-to-unicode text ("Ġ" for a space).
            if (t == "Split" && !split && !bl) {
                pattern = detail::hf_split_pattern(p, path, where);
                split = true;
            } else if (t == "ByteLevel" && !bl) {
                byte_level(p, split, where);
                bl = true;
            } else {
                unsupported(where, "an entry of type " + json::quote(t) +
                                       " here is not supported (supported: Split(regex), then ByteLevel)");
            }
        }
        if (!bl) field_error("pre_tokenizer", "a byte-level BPE needs a ByteLevel pre-tokenizer");
    } else {
        field_error("pre_tokenizer.type", "\"" + pre_type + "\" is not supported (expected ByteLevel or Sequence)");
    }

    // Vocabulary.
    const json::value* vocab = model->find("vocab");
    if (!vocab || !vocab->is_object()) field_error("model.vocab", "missing or not an object");
    const std::size_t entries = vocab->size() + detail::added_token_count(doc);
    std::vector<std::string> tokens;
    std::vector<bool> present;
    std::string bytes;
    std::vector<std::pair<token_id, std::string>> non_byte_level;
    for (const auto& [key, value] : vocab->as_object()) {
        std::int64_t id = -1;
        if (value.is_number()) try { id = value.as_int64(); } catch (const error&) {}
        if (id < 0 || id >= 100'000'000) field_error("model.vocab[" + json::quote(key) + "]", "expected an integer id in [0, 1e8)");
        if (std::size_t(id) >= detail::id_limit(entries))
            field_error("model.vocab[" + json::quote(key) + "]", detail::hf_id_too_large(id, entries));
        if (std::size_t(id) >= tokens.size()) {
            tokens.resize(std::size_t(id) + 1);
            present.resize(std::size_t(id) + 1, false);
        }
        if (present[std::size_t(id)]) field_error("model.vocab[" + json::quote(key) + "]", "id " + std::to_string(id) + " is used twice");
        if (!detail::unicode_to_bytes(key, bytes)) {
            non_byte_level.emplace_back(static_cast<token_id>(id), key);  // must be an added token
            continue;
        }
        tokens[std::size_t(id)] = bytes;
        present[std::size_t(id)] = true;
    }

    // Added tokens: matched in the input before pre-tokenization; all of them
    // become tinyllm special tokens.
    std::vector<special_token> specials = detail::added_tokens(doc, path, vocab->size());
    for (const special_token& sp : specials)
        if (std::size_t(sp.id) < tokens.size() && present[std::size_t(sp.id)]) {
            present[std::size_t(sp.id)] = false;  // the special token owns this id
            tokens[std::size_t(sp.id)].clear();
        }
    for (const auto& [id, key] : non_byte_level) {
        bool is_added = false;
        for (const auto& s : specials) is_added |= s.id == id;
        if (!is_added)
            field_error("model.vocab[" + json::quote(key) + "]",
                        "not a byte-level token (a character outside GPT-2's byte-to-unicode map) and not an added token");
    }

    // Merges: "a b" strings or ["a", "b"] arrays; rank = position in the list.
    const json::value* merges = model->find("merges");
    if (!merges || !merges->is_array()) field_error("model.merges", "missing or not an array");
    bpe_vocab probe;
    try {
        probe = bpe_vocab(tokens, present, {}, false, whole_piece);
    } catch (const error& e) {
        field_error("model.vocab", e.what());
    }
    std::vector<bpe_merge> list;
    list.reserve(merges->size());
    std::string left, right;
    for (std::size_t k = 0; k < merges->size(); ++k) {
        const auto& m = merges->at(k);
        const std::string where = "model.merges[" + std::to_string(k) + "]";
        const auto [a, b] = detail::merge_halves(m, path, where);
        if (!detail::unicode_to_bytes(a, left) || !detail::unicode_to_bytes(b, right))
            field_error(where, "a character outside GPT-2's byte-to-unicode map");
        const token_id ia = probe.find(left), ib = probe.find(right), iab = probe.find(left + right);
        if (ia == bpe_vocab::none || ib == bpe_vocab::none || iab == bpe_vocab::none)
            field_error(where, "merge " + json::quote(a) + " + " + json::quote(b) + " uses or makes a token missing from model.vocab");
        list.push_back({ia, ib, iab, static_cast<std::uint32_t>(k)});
    }
    std::vector<token_id> before, after;
    detail::hf_post_processor_template(doc, path, true, before, after);
    tokenizer tok(bpe_vocab(std::move(tokens), std::move(present), std::move(list), false, whole_piece), pattern,
                  std::move(specials), add_prefix_space);
    for (const auto* ids : {&before, &after})
        for (const token_id id : *ids)
            if (!tok.vocab().contains(id) && !tok.is_special(id))
                field_error("post_processor", "the template's id " + std::to_string(id) +
                                                  " is neither in model.vocab nor an added token");
    tok.set_template(std::move(before), std::move(after));
    return tok;
}

// ---- Hugging Face tokenizer.json: the SentencePiece family ---------------------------------

// Parse a SentencePiece-family tokenizer.json (Llama 2 / Mistral / TinyLlama
// BPE with byte fallback, or a Unigram model); what is read and what is refused
// is listed at the top of sentencepiece.hpp. `path` names the file in errors.
inline tokenizer parse_hf_sentencepiece_json(const json::value& doc, std::string_view text, const std::string& path) {
    auto field_error = [&](const std::string& field, const std::string& what) {
        TINYLLM_FAIL("malformed ", path, ": field \"", field, "\": ", what);
    };
    auto unsupported = [&](const std::string& field, const std::string& what) {
        TINYLLM_FAIL("unsupported tokenizer.json ", path, ": field \"", field, "\": ", what);
    };
    const auto type_of = [](const json::value& v) -> std::string {
        const json::value* t = v.find("type");
        return t && t->is_string() ? t->as_string() : "";
    };
    const auto string_of = [&](const json::value& v, const char* key, const std::string& where) -> std::string {
        const json::value* s = v.find(key);
        if (!s || !s->is_string()) field_error(where + "." + key, "missing or not a string");
        return s->as_string();
    };
    // A Replace's pattern: {"String": "..."} only (a Regex is refused).
    const auto replace_pattern = [&](const json::value& r, const std::string& where) -> std::string {
        const json::value* pat = r.find("pattern");
        if (pat && pat->find("Regex")) unsupported(where + ".pattern", "a Regex pattern is not supported (only String)");
        const json::value* str = pat ? pat->find("String") : nullptr;
        if (!str || !str->is_string() || str->as_string().empty())
            field_error(where + ".pattern", "expected {\"String\": \"...\"} (not empty)");
        return str->as_string();
    };
    if (!doc.is_object()) field_error("(top level)", "expected a JSON object");
    const json::value* model = doc.find("model");
    if (!model || !model->is_object()) field_error("model", "missing or not an object");
    const std::string model_type = type_of(*model);
    if (model_type != "BPE" && model_type != "Unigram")
        field_error("model.type", "\"" + model_type + "\": only \"BPE\" and \"Unigram\" models are supported");
    sentencepiece_options o;
    o.source_json = std::string(text);

    // Normalizer: Prepend, Replace (String), an empty Precompiled, or a Sequence of them.
    const auto normalizer_step = [&](const json::value& n, const std::string& where) {
        const std::string t = type_of(n);
        if (t == "Prepend") {
            o.normalizer.push_back({"", string_of(n, "prepend", where)});
        } else if (t == "Replace") {
            o.normalizer.push_back({replace_pattern(n, where), string_of(n, "content", where)});
        } else if (t == "Precompiled") {
            const json::value* map = n.find("precompiled_charsmap");
            if (map && !map->is_null() && !(map->is_string() && map->as_string().empty()))
                unsupported(where, "a Precompiled normalizer (SentencePiece's NFKC character map, "
                                   "precompiled_charsmap) is not supported");
        } else {
            unsupported(where, "normalizer \"" + t + "\" is not supported (supported: Prepend, Replace with a "
                               "String pattern, Sequence of them)");
        }
    };
    if (const json::value* norm = doc.find("normalizer"); norm && !norm->is_null()) {
        if (type_of(*norm) == "Sequence") {
            const json::value* list = norm->find("normalizers");
            if (!list || !list->is_array()) field_error("normalizer.normalizers", "missing or not an array");
            for (std::size_t k = 0; k < list->size(); ++k)
                normalizer_step(list->at(k), "normalizer.normalizers[" + std::to_string(k) + "]");
        } else {
            normalizer_step(*norm, "normalizer");
        }
    }

    // Pre-tokenizer: null or Metaspace. Its prepend_scheme (or the older add_prefix_space).
    const auto read_prepend = [&](const json::value& m, const std::string& where) {
        if (const json::value* p = m.find("prepend_scheme"); p && !p->is_null()) {
            const std::string v = p->is_string() ? p->as_string() : "";
            if (v == "always") return prepend_scheme::always;
            if (v == "first") return prepend_scheme::first;
            if (v == "never") return prepend_scheme::never;
            field_error(where + ".prepend_scheme", "expected \"always\", \"first\" or \"never\"");
        }
        if (const json::value* a = m.find("add_prefix_space"); a && a->is_bool() && !a->as_bool())
            return prepend_scheme::never;
        return prepend_scheme::always;
    };
    const auto read_replacement = [&](const json::value& m, const std::string& where) {
        const json::value* r = m.find("replacement");
        if (!r || !r->is_string()) field_error(where + ".replacement", "missing or not a string");
        std::uint32_t cp = 0;
        const std::string& s = r->as_string();
        if (s.empty() || std::size_t(detail::decode_utf8(s, 0, cp)) != s.size())
            field_error(where + ".replacement", "expected one character");
        return s;
    };
    if (const json::value* pre = doc.find("pre_tokenizer"); pre && !pre->is_null()) {
        if (type_of(*pre) != "Metaspace")
            unsupported("pre_tokenizer", "\"" + type_of(*pre) + "\" is not supported with a SentencePiece model "
                        "(supported: null, Metaspace)");
        o.metaspace = true;
        o.replacement = read_replacement(*pre, "pre_tokenizer");
        o.prepend = read_prepend(*pre, "pre_tokenizer");
        if (const json::value* v = pre->find("split"); v && v->is_bool()) o.split = v->as_bool();
    }

    // Decoder: Sequence[Replace, ByteFallback, Fuse, Strip] (any of them), or Metaspace.
    const json::value* dec = doc.find("decoder");
    if (!dec || dec->is_null())
        unsupported("decoder", "missing: a SentencePiece tokenizer needs a decoder (Sequence or Metaspace)");
    if (type_of(*dec) == "Metaspace") {
        o.metaspace_decoder = true;
        const std::string r = read_replacement(*dec, "decoder");
        o.decoder.push_back({r, " "});
        o.replacement = r;
        if (!o.metaspace) o.prepend = read_prepend(*dec, "decoder");
    } else if (type_of(*dec) == "Sequence") {
        const json::value* list = dec->find("decoders");
        if (!list || !list->is_array()) field_error("decoder.decoders", "missing or not an array");
        bool fused = false;
        for (std::size_t k = 0; k < list->size(); ++k) {
            const json::value& d = list->at(k);
            const std::string where = "decoder.decoders[" + std::to_string(k) + "]";
            const std::string t = type_of(d);
            if (t == "Replace") {
                o.decoder.push_back({replace_pattern(d, where), string_of(d, "content", where)});
            } else if (t == "ByteFallback") {
                o.decode_bytes = true;
            } else if (t == "Fuse") {
                fused = true;
            } else if (t == "Strip") {
                const json::value* start = d.find("start");
                const json::value* stop = d.find("stop");
                if (string_of(d, "content", where) != " " || !start || !start->is_number() || !stop ||
                    !stop->is_number() || stop->number_text() != "0" || !fused)
                    unsupported(where, "only Strip(\" \", n, 0) after Fuse is supported");
                // A count of characters (Hugging Face's usize): 1.5 or -1 is no count.
                const std::optional<std::int64_t> count = start->to_int64();
                if (!count || *count < 0)
                    field_error(where + ".start",
                                "expected a non-negative integer (a count of characters), got " + start->number_text());
                o.strip_leading_spaces = static_cast<std::size_t>(*count);
            } else {
                unsupported(where, "decoder \"" + t + "\" is not supported (supported: Replace, ByteFallback, "
                                   "Fuse, Strip)");
            }
        }
    } else {
        unsupported("decoder", "\"" + type_of(*dec) + "\" is not supported (supported: Sequence, Metaspace)");
    }

    // Added tokens become special tokens.
    const json::value* model_vocab = model->find("vocab");
    std::vector<special_token> specials = detail::added_tokens(
        doc, path, model_vocab && (model_vocab->is_array() || model_vocab->is_object()) ? model_vocab->size() : 0);
    const auto id_of_piece = [&](std::string_view piece, const std::vector<std::string>& pieces) -> std::optional<token_id> {
        for (std::size_t i = 0; i < pieces.size(); ++i)
            if (pieces[i] == piece) return static_cast<token_id>(i);
        return std::nullopt;
    };

    // Model.
    if (const auto* v = model->find("byte_fallback"); v && v->is_bool()) o.byte_fallback = v->as_bool();
    std::vector<std::string> pieces;
    auto build = [&]() -> sentencepiece_model {
        if (model_type == "Unigram") {
            const json::value* vocab = model->find("vocab");
            if (!vocab || !vocab->is_array()) field_error("model.vocab", "missing or not an array of [piece, score]");
            std::vector<double> scores;
            for (std::size_t k = 0; k < vocab->size(); ++k) {
                const json::value& e = vocab->at(k);
                if (!e.is_array() || e.size() != 2 || !e.at(0).is_string() || !e.at(1).is_number())
                    field_error("model.vocab[" + std::to_string(k) + "]", "expected [\"piece\", score]");
                // The Viterbi search adds scores: an infinite one (-1e400 reads as -inf)
                // would make every path through the piece -inf, or win outright, which is
                // no score SentencePiece gives (its .model loader refuses it too).
                const double score = e.at(1).as_double();
                if (!std::isfinite(score))
                    unsupported("model.vocab[" + std::to_string(k) + "]",
                                "the score " + e.at(1).number_text() + " of " + json::quote(e.at(0).as_string()) +
                                    " is not a finite number");
                pieces.push_back(e.at(0).as_string());
                scores.push_back(score);
            }
            const json::value* unk = model->find("unk_id");
            if (!unk || !unk->is_number()) field_error("model.unk_id", "missing: a Unigram model needs an unknown token");
            std::int64_t u = -1;
            try { u = unk->as_int64(); } catch (const error&) {}
            if (u < 0 || std::size_t(u) >= pieces.size())
                field_error("model.unk_id", "expected an id in [0, " + std::to_string(pieces.size()) + ")");
            o.unk = static_cast<token_id>(u);
            return sentencepiece_model::unigram(std::move(pieces), std::move(scores), std::move(o));
        }
        for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix", "dropout"}) {
            const auto* v = model->find(key);
            if (v && !v->is_null() && !(v->is_string() && v->as_string().empty()))
                unsupported(std::string("model.") + key, "not supported by a SentencePiece BPE");
        }
        if (const auto* v = model->find("fuse_unk"); v && v->is_bool()) o.fuse_unk = v->as_bool();
        if (const auto* v = model->find("ignore_merges"); v && v->is_bool()) o.ignore_merges = v->as_bool();
        const json::value* vocab = model->find("vocab");
        if (!vocab || !vocab->is_object()) field_error("model.vocab", "missing or not an object");
        std::vector<bool> present;
        for (const auto& [key, value] : vocab->as_object()) {
            std::int64_t id = -1;
            if (value.is_number()) try { id = value.as_int64(); } catch (const error&) {}
            const std::string where = "model.vocab[" + json::quote(key) + "]";
            if (id < 0 || id >= 100'000'000) field_error(where, "expected an integer id in [0, 1e8)");
            // The ids must be 0 .. N-1 (checked below), so one of N or more is
            // refused here, before the pieces are sized from it.
            if (std::size_t(id) >= vocab->size())
                field_error(where, "id " + std::to_string(id) + " is not below the " + std::to_string(vocab->size()) +
                                       " pieces of model.vocab (ids must be 0 .. N-1)");
            if (std::size_t(id) >= pieces.size()) pieces.resize(std::size_t(id) + 1), present.resize(std::size_t(id) + 1);
            if (present[std::size_t(id)]) field_error(where, "id " + std::to_string(id) + " is used twice");
            pieces[std::size_t(id)] = key;
            present[std::size_t(id)] = true;
        }
        for (std::size_t id = 0; id < pieces.size(); ++id)
            if (!present[id]) field_error("model.vocab", "no piece has id " + std::to_string(id) + " (ids must be 0 .. N-1)");
        if (const json::value* unk = model->find("unk_token"); unk && !unk->is_null()) {
            if (!unk->is_string()) field_error("model.unk_token", "expected a string or null");
            o.unk = id_of_piece(unk->as_string(), pieces);
            if (!o.unk) field_error("model.unk_token", json::quote(unk->as_string()) + " is not in model.vocab");
        }
        // Merges: "a b" strings or ["a", "b"] arrays; rank = position in the list.
        const json::value* merges = model->find("merges");
        if (!merges || !merges->is_array()) field_error("model.merges", "missing or not an array");
        std::unordered_map<std::string, token_id, detail::string_hash, std::equal_to<>> ids;
        for (std::size_t i = 0; i < pieces.size(); ++i) ids.emplace(pieces[i], static_cast<token_id>(i));
        std::vector<std::pair<token_id, token_id>> list;
        for (std::size_t k = 0; k < merges->size(); ++k) {
            const auto& m = merges->at(k);
            const std::string where = "model.merges[" + std::to_string(k) + "]";
            const auto [a, b] = detail::merge_halves(m, path, where);
            const auto ia = ids.find(a), ib = ids.find(b), iab = ids.find(a + b);
            if (ia == ids.end() || ib == ids.end() || iab == ids.end())
                field_error(where, "merge " + json::quote(a) + " + " + json::quote(b) +
                                       " uses or makes a piece missing from model.vocab");
            list.emplace_back(ia->second, ib->second);
        }
        return sentencepiece_model::bpe(std::move(pieces), list, std::move(o));
    };
    // Post-processor: its single template (detail::hf_post_processor_template).
    std::vector<token_id> before, after;
    detail::hf_post_processor_template(doc, path, false, before, after);
    o.template_before = std::move(before);
    o.template_after = std::move(after);
    try {
        return tokenizer(build(), std::move(specials));
    } catch (const error& e) {
        TINYLLM_FAIL("bad SentencePiece tokenizer in ", path, ": ", e.what());
    }
}
inline tokenizer parse_hf_sentencepiece_json(std::string_view text, const std::string& path) {
    return parse_hf_sentencepiece_json(json::parse(text, path), text, path);
}

inline tokenizer load_hf_tokenizer_json(const std::string& path) {
    return parse_hf_tokenizer_json(detail::read_text_file(path), path);
}

namespace detail {

// A byte-level tokenizer's template as a TemplateProcessing post-processor
// (null without one). Each id is named by its text: the special token's, or the
// token's bytes in GPT-2's byte-to-unicode form. The pair template puts the
// single one around each sequence.
inline std::string hf_template_processing(const tokenizer& tok) {
    if (tok.template_before().empty() && tok.template_after().empty()) return "null";
    const auto name = [&](token_id id) {
        return json::quote(tok.is_special(id) ? std::string(tok.token_bytes(id))
                                              : bytes_to_unicode(tok.token_bytes(id)));
    };
    // The template around sequence `seq`, as the items of a JSON array.
    const auto around = [&](const char* seq, int type_id) {
        const std::string type = ", \"type_id\": " + std::to_string(type_id) + "}}";
        std::vector<std::string> items;
        for (const token_id id : tok.template_before())
            items.push_back("{\"SpecialToken\": {\"id\": " + name(id) + type);
        items.push_back("{\"Sequence\": {\"id\": \"" + std::string(seq) + "\"" + type);
        for (const token_id id : tok.template_after())
            items.push_back("{\"SpecialToken\": {\"id\": " + name(id) + type);
        std::string out;
        for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
        return out;
    };
    std::vector<token_id> ids(tok.template_before().begin(), tok.template_before().end());
    ids.insert(ids.end(), tok.template_after().begin(), tok.template_after().end());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    std::string table;
    for (const token_id id : ids)
        table += (table.empty() ? "" : ", ") + name(id) + ": {\"id\": " + name(id) + ", \"ids\": [" +
                 std::to_string(id) + "], \"tokens\": [" + name(id) + "]}";
    return "{\"type\": \"TemplateProcessing\", \"single\": [" + around("A", 0) + "], \"pair\": [" + around("A", 0) +
           ", " + around("B", 1) + "], \"special_tokens\": {" + table + "}}";
}

}  // namespace detail

// `tok` as a Hugging Face tokenizer.json (byte-level BPE): what
// parse_hf_tokenizer_json reads back to the same tokenizer and the tokenizers
// library loads. The vocabulary's strings and the merges are GPT-2's
// byte-to-unicode form; the pre-tokenizer is ByteLevel with its own regex (r50k)
// or a Split on the pattern's regex followed by ByteLevel without one (cl100k,
// o200k, llama3); special tokens are added tokens. The prefix space
// (add_prefix_space) is ByteLevel's with r50k, and a normalizer with a Split
// (detail::hf_prefix_space_normalizer: ByteLevel's would go before every piece).
// A vocabulary that ranks its merges by token id — read from a tiktoken rank
// file, which has no merge list — is refused. A SentencePiece tokenizer is
// written as the tokenizer.json it was read from.
inline std::string hf_tokenizer_json(const tokenizer& tok) {
    if (const sentencepiece_model* sp = tok.sentencepiece()) return sp->options().source_json;
    const bpe_vocab& v = tok.vocab();
    TINYLLM_EXPECT(!v.tiktoken_merges(),
                   "hf_tokenizer_json: this vocabulary ranks merges by token id (a tiktoken rank file); a "
                   "tokenizer.json needs an explicit merge list (train one with train_bpe, or load a tokenizer.json "
                   "or GPT-2's encoder.json and vocab.bpe)");
    const auto q = [](std::string_view text) { return json::quote(text); };
    const bool r50k = tok.pattern() == pretokenizer::r50k;
    const bool prefix_normalizer = tok.add_prefix_space() && !r50k;
    const std::string prefix_space = tok.add_prefix_space() && r50k ? "true" : "false";
    std::string j = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
    for (std::size_t i = 0; i < tok.specials().size(); ++i) {
        const special_token& t = tok.specials()[i];
        j += std::string(i ? "," : "") + "\n    {\"id\": " + std::to_string(t.id) + ", \"content\": " + q(t.text) +
             ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
             "\"special\": true}";
    }
    j += tok.specials().empty() ? "],\n" : "\n  ],\n";
    j += "  \"normalizer\": " +
         (prefix_normalizer ? std::string(detail::hf_prefix_space_normalizer) : std::string("null")) +
         ",\n  \"pre_tokenizer\": ";
    if (r50k)
        j += "{\"type\": \"ByteLevel\", \"add_prefix_space\": " + prefix_space +
             ", \"trim_offsets\": true, \"use_regex\": true},\n";
    else
        j += "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": " +
             q(pretokenizer_regex(tok.pattern())) +
             "}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": " +
             prefix_space + ", \"trim_offsets\": true, \"use_regex\": false}]},\n";
    j += "  \"post_processor\": " + detail::hf_template_processing(tok) + ",\n";
    j += "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n";
    j += "  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null, "
         "\"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": " +
         std::string(v.whole_piece_lookup() ? "true" : "false") + ",\n    \"vocab\": {";
    bool first = true;
    for (std::size_t id = 0; id < v.size(); ++id) {
        if (!v.contains(static_cast<token_id>(id))) continue;
        j += std::string(first ? "" : ",") + "\n      " + q(detail::bytes_to_unicode(v.bytes(static_cast<token_id>(id)))) +
             ": " + std::to_string(id);
        first = false;
    }
    j += "\n    },\n    \"merges\": [";
    const std::vector<bpe_merge> merges = v.merges();
    for (std::size_t i = 0; i < merges.size(); ++i)
        j += std::string(i ? "," : "") + "\n      [" + q(detail::bytes_to_unicode(v.bytes(merges[i].left))) + ", " +
             q(detail::bytes_to_unicode(v.bytes(merges[i].right))) + "]";
    j += "\n    ]\n  }\n}\n";
    return j;
}

// Write hf_tokenizer_json(tok) to `path` (through a temporary file renamed into place).
inline void save_hf_tokenizer_json(const tokenizer& tok, const std::string& path) {
    detail::write_file_replacing(path, hf_tokenizer_json(tok), "save_hf_tokenizer_json");
}

// ---- tinyllm's own format -----------------------------------------------------------

inline std::string serialize_tokenizer(const tokenizer& tok) {
    TINYLLM_EXPECT(!tok.sentencepiece(), "serialize_tokenizer: tinyllm's own format holds byte-level BPE only; save a "
                   "SentencePiece tokenizer as a tokenizer.json (save_hf_tokenizer_json)");
    const bpe_vocab& v = tok.vocab();
    std::string out = "tinyllm-bpe 1\n";
    out += "pattern " + std::string(pretokenizer_name(tok.pattern())) + "\n";
    out += "whole-piece-lookup " + std::to_string(int(v.whole_piece_lookup())) + "\n";
    out += "tiktoken-merges " + std::to_string(int(v.tiktoken_merges())) + "\n";
    out += "add-prefix-space " + std::to_string(int(tok.add_prefix_space())) + "\n";
    out += "tokens " + std::to_string(v.size()) + "\n";
    for (std::size_t i = 0; i < v.size(); ++i) {
        const auto id = static_cast<token_id>(i);
        out += (v.contains(id) ? detail::base64_encode(v.bytes(id)) : "-") + "\n";
    }
    if (v.tiktoken_merges()) {
        out += "merges 0\n";
    } else {
        const auto merges = v.merges();
        out += "merges " + std::to_string(merges.size()) + "\n";
        for (const auto& m : merges)
            out += std::to_string(m.left) + " " + std::to_string(m.right) + " " + std::to_string(m.merged) + " " +
                   std::to_string(m.rank) + "\n";
    }
    out += "specials " + std::to_string(tok.specials().size()) + "\n";
    for (const auto& s : tok.specials()) out += std::to_string(s.id) + " " + detail::base64_encode(s.text) + "\n";
    // The template (a tokenizer.json's post-processor), only when there is one: files
    // without these two lines read as before.
    if (!tok.template_before().empty() || !tok.template_after().empty())
        for (const auto& [key, ids] :
             {std::pair{"template-before", tok.template_before()}, std::pair{"template-after", tok.template_after()}}) {
            out += std::string(key) + " " + std::to_string(ids.size());
            for (const token_id id : ids) out += " " + std::to_string(id);
            out += "\n";
        }
    return out;
}

inline void save_tokenizer(const tokenizer& tok, const std::string& path) {
    std::ofstream f(path, std::ios::binary);
    if (!f) TINYLLM_FAIL("cannot write '", path, "'");
    f << serialize_tokenizer(tok);
    if (!f) TINYLLM_FAIL("error writing '", path, "'");
}

inline tokenizer parse_tokenizer(std::string_view text, const std::string& path) {
    const auto lines = detail::split_lines(text);
    std::size_t n = 0;
    auto fail = [&](const std::string& what) {
        TINYLLM_FAIL("malformed tinyllm tokenizer file ", path, " line ", n + 1, ": ", what);
    };
    auto next_line = [&]() -> std::string_view {
        if (n >= lines.size()) fail("unexpected end of file");
        return lines[n];
    };
    auto header = [&](std::string_view key) -> std::string_view {
        const std::string_view line = next_line();
        if (line.substr(0, key.size() + 1) != std::string(key) + " ")
            fail("expected '" + std::string(key) + " ...', got " + detail::printable_line(line));
        return line.substr(key.size() + 1);
    };
    // A count of the entries that follow, one a line. A vector is sized from it,
    // so it is bounded by the lines the file has left before it is used
    // ("tokens 100000000" in a 100-byte file would allocate gigabytes).
    auto number = [&](std::string_view key, std::size_t limit) {
        std::size_t v;
        const std::string_view s = header(key);
        if (!detail::parse_int(s, v) || v > limit) fail("'" + std::string(key) + "' needs a count up to " + std::to_string(limit));
        const std::size_t rest = lines.size() - n - 1;
        if (v > rest)
            fail("unexpected end of file: '" + std::string(key) + " " + std::to_string(v) +
                 "' counts more entries than the " + std::to_string(rest) + " lines left in the file");
        ++n;
        return v;
    };
    auto flag = [&](std::string_view key) {
        const std::string_view s = header(key);
        if (s != "0" && s != "1") fail("'" + std::string(key) + "' must be 0 or 1");
        ++n;
        return s == "1";
    };
    if (next_line() != "tinyllm-bpe 1") fail("expected the header 'tinyllm-bpe 1'");
    ++n;
    pretokenizer pattern;
    try {
        pattern = pretokenizer_from_name(header("pattern"));
    } catch (const error&) {
        fail("unknown pattern (expected r50k, cl100k or o200k)");
    }
    ++n;
    const bool whole = flag("whole-piece-lookup");
    const bool tiktoken_merges = flag("tiktoken-merges");
    const bool prefix = flag("add-prefix-space");
    const std::size_t count = number("tokens", 100'000'000);
    std::vector<std::string> tokens(count);
    std::vector<bool> present(count, false);
    std::string what;
    for (std::size_t id = 0; id < count; ++id, ++n) {
        const std::string_view line = next_line();
        if (line == "-") continue;
        if (!detail::base64_decode(line, tokens[id], what) || tokens[id].empty())
            fail("token " + std::to_string(id) + ": " + (what.empty() ? "empty token" : what));
        present[id] = true;
    }
    const std::size_t merge_count = number("merges", 100'000'000);
    std::vector<bpe_merge> merges;
    for (std::size_t k = 0; k < merge_count; ++k, ++n) {
        const auto words = detail::split_spaces(next_line());
        bpe_merge m{};
        if (words.size() != 4 || !detail::parse_int(words[0], m.left) || !detail::parse_int(words[1], m.right) ||
            !detail::parse_int(words[2], m.merged) || !detail::parse_int(words[3], m.rank))
            fail("expected a merge '<left> <right> <merged> <rank>'");
        const auto listed = [&](token_id id) {  // an id of the file (negative ids are not)
            return id >= 0 && static_cast<std::size_t>(id) < count && present[static_cast<std::size_t>(id)];
        };
        if (!(listed(m.left) && listed(m.right) && listed(m.merged) &&
              tokens[static_cast<std::size_t>(m.merged)] ==
                  tokens[static_cast<std::size_t>(m.left)] + tokens[static_cast<std::size_t>(m.right)]))
            fail("merge " + std::to_string(m.left) + " + " + std::to_string(m.right) + " -> " +
                 std::to_string(m.merged) + " does not concatenate tokens of the file");
        merges.push_back(m);
    }
    const std::size_t special_count = number("specials", 1'000'000);
    std::vector<special_token> specials;
    for (std::size_t k = 0; k < special_count; ++k, ++n) {
        const auto words = detail::split_spaces(next_line());
        special_token s;
        if (words.size() != 2 || !detail::parse_int(words[0], s.id) || !detail::base64_decode(words[1], s.text, what) ||
            s.text.empty())
            fail("expected a special token '<id> <base64 text>'");
        // The id sizes the embedding table (vocab_size()): bounded first (detail::id_limit).
        const std::size_t limit = detail::id_limit(count + special_count);
        if (s.id >= 0 && static_cast<std::size_t>(s.id) >= limit)
            fail("special token id " + std::to_string(s.id) + " is implausibly large for a file of " +
                 std::to_string(count) + " tokens and " + std::to_string(special_count) +
                 " special tokens (ids must be below " + std::to_string(limit) + ")");
        specials.push_back(s);
    }
    // The optional template: "template-before N id..." and "template-after N id...".
    std::vector<token_id> template_ids[2];
    if (n < lines.size() && lines[n].rfind("template-before ", 0) == 0)
        for (int which = 0; which < 2; ++which, ++n) {
            const char* key = which == 0 ? "template-before" : "template-after";
            const auto words = detail::split_spaces(header(key));
            std::size_t k = 0;
            if (words.empty() || !detail::parse_int(words[0], k) || k != words.size() - 1)
                fail("expected '" + std::string(key) + " <count> <id>...'");
            for (std::size_t i = 1; i < words.size(); ++i) {
                token_id id = -1;
                if (!detail::parse_int(words[i], id) || id < 0)
                    fail("'" + std::string(words[i]) + "' is not a token id");
                template_ids[which].push_back(id);
            }
        }
    try {
        tokenizer tok(bpe_vocab(std::move(tokens), std::move(present), std::move(merges), tiktoken_merges, whole),
                      pattern, std::move(specials), prefix);
        if (!template_ids[0].empty() || !template_ids[1].empty())
            tok.set_template(std::move(template_ids[0]), std::move(template_ids[1]));
        return tok;
    } catch (const error& e) {
        TINYLLM_FAIL("bad vocabulary in tinyllm tokenizer file ", path, ": ", e.what());
    }
}

// Load a tokenizer, recognising the format: tinyllm's own ("tinyllm-bpe"),
// Hugging Face tokenizer.json (a JSON object), SentencePiece's tokenizer.model
// (a name ending in ".model", or protobuf bytes that start as a ModelProto;
// sentencepiece_proto.hpp), or a tiktoken rank file (then `encoding` names the
// pattern and special tokens: r50k_base, cl100k_base, ...).
inline tokenizer load_tokenizer(const std::string& path, std::string_view encoding = "") {
    const std::string text = detail::read_text_file(path);
    if (text.rfind("tinyllm-bpe", 0) == 0) return parse_tokenizer(text, path);
    if (path.size() >= 6 && path.compare(path.size() - 6, 6, ".model") == 0)
        return sentencepiece_model_tokenizer(text, path);
    std::size_t first = text.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && text[first] == '{') return parse_hf_tokenizer_json(text, path);
    if (detail::looks_like_sentencepiece_model(text)) return sentencepiece_model_tokenizer(text, path);
    std::string name(encoding);
    if (name.empty()) {  // guess from the file name
        for (const char* known : {"o200k_base", "cl100k_base", "p50k_base", "r50k_base", "gpt2"})
            if (path.find(known) != std::string::npos) {
                name = known;
                break;
            }
        if (name.empty())
            TINYLLM_FAIL("'", path, "' looks like a tiktoken rank file; say which encoding it is "
                         "(r50k_base, cl100k_base, o200k_base or gpt2)");
    }
    return detail::named_tiktoken(name, text, path);
}

}  // namespace tinyllm
