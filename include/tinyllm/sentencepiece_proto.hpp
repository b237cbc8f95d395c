// tinyllm/sentencepiece_proto.hpp — SentencePiece's own model file
// (tokenizer.model, spiece.model: a serialized protobuf `ModelProto`), read
// without a protobuf library, and encoded exactly as the `sentencepiece`
// library's SentencePieceProcessor.encode(text) does.
//
// The protobuf wire format, as much of it as is needed here. A message is a
// list of fields; each starts with a varint tag = (field number << 3) | wire type:
//
//   wire type 0  varint        7 bits per byte, low bits first, high bit = "more"
//                              (int32 -1 is ten bytes: it is sign-extended to 64 bits)
//   wire type 1  64-bit        8 bytes, little-endian (skipped here)
//   wire type 2  length-delimited   a varint byte count, then the bytes: strings,
//                              bytes, and nested messages (read with the same reader)
//   wire type 5  32-bit        4 bytes, little-endian: a float
//
// Fields this reader does not know are skipped by their wire type; a field it
// knows with the wrong wire type, a varint longer than 10 bytes or cut short,
// or a length that runs past the end of its message is an error naming the
// byte offset in the file and the field (ModelProto.pieces[3].score).
//
// The fields read (numbers from sentencepiece_model.proto):
//
//   ModelProto       pieces = 1 (repeated SentencePiece), trainer_spec = 2, normalizer_spec = 3
//   SentencePiece    piece = 1 (string), score = 2 (float), type = 3 (enum: NORMAL 1,
//                    UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6; default NORMAL)
//   TrainerSpec      model_type = 3 (UNIGRAM 1 (default), BPE 2, WORD 3, CHAR 4),
//                    treat_whitespace_as_suffix = 24, byte_fallback = 35,
//                    unk_id = 40 (default 0), bos_id = 41 (1), eos_id = 42 (2), pad_id = 43 (-1)
//   NormalizerSpec   name = 1, precompiled_charsmap = 2 (bytes), add_dummy_prefix = 3,
//                    remove_extra_whitespaces = 4, escape_whitespaces = 5 (all three default true)
//
// Refused, each by name: WORD and CHAR models; a non-empty precompiled_charsmap
// (NFKC and the other compiled normalizers; train with
// normalization_rule_name="identity"); treat_whitespace_as_suffix;
// escape_whitespaces off (spaces kept as " ", the dummy prefix too); USER_DEFINED
// and UNUSED pieces; a model without exactly one UNKNOWN piece at unk_id.
//
// How SentencePiece encodes (what sentencepiece_processor::encode reproduces):
//
//   1. Normalize. Invalid UTF-8 bytes become U+FFFD, one per byte. With
//      remove_extra_whitespaces: leading spaces are dropped, a run of spaces
//      becomes one. Then " " -> "▁" (escape_whitespaces), one "▁" in front
//      (add_dummy_prefix), and, with remove_extra_whitespaces, every trailing
//      "▁" is dropped (also a "▁" that was in the text). "" and "   " encode to nothing.
//   2. Segment the whole normalized text (no pre-tokenizer) with NORMAL pieces
//      only: control pieces ("<s>") and byte pieces ("<0x41>") are never found
//      in text.
//        BPE      start from characters; repeatedly merge the adjacent pair whose
//                 concatenation is a piece with the highest score (leftmost on ties).
//        Unigram  Viterbi over the lattice of pieces (sentencepiece.hpp); a character
//                 that is not itself a piece gets an unknown edge scored (lowest score - 10).
//   3. A symbol that is not a piece is unknown: with byte_fallback its UTF-8 bytes
//      as <0xNN> pieces, else <unk>, a run of them fused into one <unk>.
//
// sentencepiece_processor::tokenizer() is the same vocabulary as a tinyllm
// tokenizer (Hugging Face's reading of the model, as its converters write
// tokenizer.json): BPE merges derived from the piece scores, normalizer
// Prepend("▁") + Replace(" " -> "▁"), UNKNOWN and CONTROL pieces as special
// tokens, the BOS piece put before a text by encode_with_template, and decoding
// that drops the one leading space; hf_tokenizer_json writes it as that
// tokenizer.json (generated, since there is no file to copy). It agrees with the processor except on text
// that contains a control or byte piece's string ("<0x41>" can match the piece
// <0x41> in a Unigram lattice there) and, rarely, on BPE ties. It cannot strip or
// collapse spaces, so load_tokenizer refuses a model with remove_extra_whitespaces
// (use load_sentencepiece_model and its encode, or the tokenizer on text already
// stripped).
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/sentencepiece.hpp>
#include <tinyllm/tokenizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tinyllm {

namespace detail::protobuf {

enum wire_type : std::uint32_t { varint = 0, fixed64 = 1, length_delimited = 2, fixed32 = 5 };

inline const char* wire_type_name(std::uint32_t t) {
    switch (t) {
        case varint:
            return "varint (0)";
        case fixed64:
            return "64-bit (1)";
        case length_delimited:
            return "length-delimited (2)";
        case 3:
            return "start-group (3)";
        case 4:
            return "end-group (4)";
        case fixed32:
            return "32-bit (5)";
        default:
            return "invalid";
    }
}

// One field of a message: its number and wire type, where it starts in the
// file, and its value (a varint, the 4 bytes of a 32-bit field, or the bytes of
// a length-delimited one; `value_offset` is where those bytes start in the file).
struct field {
    std::uint32_t number = 0;
    std::uint32_t type = 0;
    std::size_t offset = 0;
    std::uint64_t int_value = 0;
    std::uint32_t bits32 = 0;
    std::string_view bytes;
    std::size_t value_offset = 0;
};

// Reads the fields of one message, data[0, size), which starts at byte `base`
// of the file. `where` names the message in errors ("ModelProto.trainer_spec").
class reader {
public:
    reader(std::string_view data, std::size_t base, std::string path, std::string where)
        : data_(data), base_(base), path_(std::move(path)), where_(std::move(where)) {}

    // The next field, or false at the end of the message.
    bool next(field& f) {
        if (at_ == data_.size()) return false;
        f = field{};
        f.offset = base_ + at_;
        const std::uint64_t tag = read_varint("a field's tag");
        f.number = static_cast<std::uint32_t>(tag >> 3);
        f.type = static_cast<std::uint32_t>(tag & 7);
        if (f.number == 0 || tag >> 3 > 0x1FFFFFFF)
            fail(f.offset, "field number " + std::to_string(tag >> 3) + " is not valid");
        const std::string name = "field " + std::to_string(f.number);
        switch (f.type) {
            case varint:
                f.int_value = read_varint(name);
                break;
            case fixed64:
                need(8, f.offset, name);
                at_ += 8;
                break;
            case length_delimited: {
                const std::uint64_t n = read_varint(name + "'s length");
                f.value_offset = base_ + at_;
                if (n > data_.size() - at_)
                    fail(f.offset, name + ": its length " + std::to_string(n) + " runs past the end of " + where_ +
                                       " (" + std::to_string(data_.size() - at_) + " bytes left)");
                f.bytes = data_.substr(at_, std::size_t(n));
                at_ += std::size_t(n);
                break;
            }
            case fixed32:
                need(4, f.offset, name);
                for (int k = 3; k >= 0; --k)
                    f.bits32 = (f.bits32 << 8) | static_cast<unsigned char>(data_[at_ + std::size_t(k)]);
                at_ += 4;
                break;
            default:
                fail(f.offset, name + " has wire type " + std::to_string(f.type) + ", " + wire_type_name(f.type) +
                                   ", which this reader does not read");
        }
        return true;
    }

    // Check that a known field has the wire type its declaration implies.
    void expect(const field& f, std::uint32_t type, std::string_view field_name) const {
        if (f.type != type)
            fail(f.offset, std::string(field_name) + " (field " + std::to_string(f.number) + ") has wire type " +
                               wire_type_name(f.type) + ", expected " + wire_type_name(type));
    }

    // A nested message's reader.
    reader nested(const field& f, std::string where) const {
        return reader(f.bytes, f.value_offset, path_, std::move(where));
    }

    [[noreturn]] void fail(std::size_t offset, const std::string& what) const {
        TINYLLM_FAIL("malformed SentencePiece model ", path_, ": at byte ", offset, ", in ", where_, ": ", what);
    }
    const std::string& where() const { return where_; }

private:
    std::uint64_t read_varint(const std::string& what) {
        const std::size_t start = base_ + at_;
        std::uint64_t v = 0;
        for (int shift = 0; shift < 70; shift += 7) {
            if (at_ == data_.size()) fail(start, what + ": the varint is cut off by the end of " + where_);
            const auto b = static_cast<unsigned char>(data_[at_++]);
            if (shift == 63 && b > 1) fail(start, what + ": the varint is longer than 64 bits");
            v |= std::uint64_t(b & 0x7F) << shift;
            if (!(b & 0x80)) return v;
        }
        fail(start, what + ": the varint is longer than 10 bytes");
    }
    void need(std::size_t n, std::size_t offset, const std::string& what) const {
        if (data_.size() - at_ < n)
            fail(offset, what + ": " + std::to_string(n) + " bytes are needed, " + std::to_string(data_.size() - at_) +
                             " are left in " + where_);
    }

    std::string_view data_;
    std::size_t base_;
    std::size_t at_ = 0;
    std::string path_;
    std::string where_;
};

inline float as_float(std::uint32_t bits) {
    float f;
    static_assert(sizeof f == 4);
    std::memcpy(&f, &bits, 4);
    return f;
}

}  // namespace detail::protobuf

// The fields of a ModelProto this library reads (see the top of the file).
struct sentencepiece_proto {
    enum class piece_type { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };
    enum class model_type { unigram = 1, bpe = 2, word = 3, character = 4 };
    struct piece {
        std::string text;
        float score = 0;
        piece_type type = piece_type::normal;
    };
    std::vector<piece> pieces;
    // TrainerSpec (proto2 defaults when a field is absent).
    model_type model = model_type::unigram;
    bool byte_fallback = false;
    bool treat_whitespace_as_suffix = false;
    std::int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
    // NormalizerSpec.
    std::string normalizer_name;
    std::string precompiled_charsmap;
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = true;
    bool escape_whitespaces = true;
};

// Parse the bytes of a ModelProto. `path` names the file in errors.
inline sentencepiece_proto parse_sentencepiece_proto(std::string_view bytes, const std::string& path) {
    namespace pb = detail::protobuf;
    sentencepiece_proto m;
    pb::reader top(bytes, 0, path, "ModelProto");
    pb::field f;
    const auto as_bool = [](const pb::field& x) { return x.int_value != 0; };
    const auto as_int32 = [](const pb::field& x) {
        return static_cast<std::int32_t>(static_cast<std::uint32_t>(x.int_value));
    };
    while (top.next(f)) {
        if (f.number == 1) {  // pieces
            top.expect(f, pb::length_delimited, "pieces");
            const std::string where = "ModelProto.pieces[" + std::to_string(m.pieces.size()) + "]";
            pb::reader r = top.nested(f, where);
            sentencepiece_proto::piece p;
            pb::field g;
            while (r.next(g)) {
                if (g.number == 1) {
                    r.expect(g, pb::length_delimited, "piece");
                    p.text = std::string(g.bytes);
                } else if (g.number == 2) {
                    r.expect(g, pb::fixed32, "score");
                    p.score = pb::as_float(g.bits32);
                } else if (g.number == 3) {
                    r.expect(g, pb::varint, "type");
                    if (g.int_value < 1 || g.int_value > 6)
                        r.fail(g.offset, "type " + std::to_string(g.int_value) + " is not a SentencePiece type (1..6)");
                    p.type = static_cast<sentencepiece_proto::piece_type>(g.int_value);
                }
            }
            m.pieces.push_back(std::move(p));
        } else if (f.number == 2) {  // trainer_spec
            top.expect(f, pb::length_delimited, "trainer_spec");
            pb::reader r = top.nested(f, "ModelProto.trainer_spec");
            pb::field g;
            while (r.next(g)) {
                switch (g.number) {
                    case 3:
                        r.expect(g, pb::varint, "model_type");
                        if (g.int_value < 1 || g.int_value > 4)
                            r.fail(g.offset,
                                   "model_type " + std::to_string(g.int_value) + " is not UNIGRAM, BPE, WORD or CHAR");
                        m.model = static_cast<sentencepiece_proto::model_type>(g.int_value);
                        break;
                    case 24:
                        r.expect(g, pb::varint, "treat_whitespace_as_suffix");
                        m.treat_whitespace_as_suffix = as_bool(g);
                        break;
                    case 35:
                        r.expect(g, pb::varint, "byte_fallback");
                        m.byte_fallback = as_bool(g);
                        break;
                    case 40:
                        r.expect(g, pb::varint, "unk_id");
                        m.unk_id = as_int32(g);
                        break;
                    case 41:
                        r.expect(g, pb::varint, "bos_id");
                        m.bos_id = as_int32(g);
                        break;
                    case 42:
                        r.expect(g, pb::varint, "eos_id");
                        m.eos_id = as_int32(g);
                        break;
                    case 43:
                        r.expect(g, pb::varint, "pad_id");
                        m.pad_id = as_int32(g);
                        break;
                    default:
                        break;
                }
            }
        } else if (f.number == 3) {  // normalizer_spec
            top.expect(f, pb::length_delimited, "normalizer_spec");
            pb::reader r = top.nested(f, "ModelProto.normalizer_spec");
            pb::field g;
            while (r.next(g)) {
                switch (g.number) {
                    case 1:
                        r.expect(g, pb::length_delimited, "name");
                        m.normalizer_name = std::string(g.bytes);
                        break;
                    case 2:
                        r.expect(g, pb::length_delimited, "precompiled_charsmap");
                        m.precompiled_charsmap = std::string(g.bytes);
                        break;
                    case 3:
                        r.expect(g, pb::varint, "add_dummy_prefix");
                        m.add_dummy_prefix = as_bool(g);
                        break;
                    case 4:
                        r.expect(g, pb::varint, "remove_extra_whitespaces");
                        m.remove_extra_whitespaces = as_bool(g);
                        break;
                    case 5:
                        r.expect(g, pb::varint, "escape_whitespaces");
                        m.escape_whitespaces = as_bool(g);
                        break;
                    default:
                        break;
                }
            }
        }
    }
    if (m.pieces.empty())
        TINYLLM_FAIL("malformed SentencePiece model ", path, ": it has no pieces (ModelProto.pieces, field 1)");
    return m;
}

// A SentencePiece model read from its ModelProto: encodes as the sentencepiece
// library does (see the top of the file), and gives the same vocabulary as a
// tinyllm tokenizer.
class sentencepiece_processor {
public:
    sentencepiece_processor(sentencepiece_proto proto, const std::string& path) : proto_(std::move(proto)) {
        using type = sentencepiece_proto::piece_type;
        auto unsupported = [&](const std::string& what) {
            TINYLLM_FAIL("unsupported SentencePiece model ", path, ": ", what);
        };
        if (proto_.model == sentencepiece_proto::model_type::word)
            unsupported("model_type WORD (whitespace-delimited words) is not supported (supported: UNIGRAM, BPE)");
        if (proto_.model == sentencepiece_proto::model_type::character)
            unsupported("model_type CHAR (one piece per character) is not supported (supported: UNIGRAM, BPE)");
        if (!proto_.precompiled_charsmap.empty())
            unsupported("normalizer_spec \"" + proto_.normalizer_name + "\" has a precompiled_charsmap (" +
                        std::to_string(proto_.precompiled_charsmap.size()) +
                        " bytes: a compiled normalization such as NFKC), which is not supported; only models trained "
                        "with normalization_rule_name=\"identity\" (an empty charsmap) are");
        if (proto_.treat_whitespace_as_suffix) unsupported("trainer_spec.treat_whitespace_as_suffix is not supported");
        // Without escaping, SentencePiece keeps spaces as " " (the dummy prefix
        // too: " Hello" is <0x20> H ..., and decoding keeps that space), where
        // both readings here put "▁" in front and strip it again.
        if (!proto_.escape_whitespaces)
            unsupported(
                "normalizer_spec.escape_whitespaces is off, which is not supported (SentencePiece then keeps "
                "spaces, the dummy prefix included, as \" \" rather than \"\xE2\x96\x81\")");
        const std::size_t n = proto_.pieces.size();
        if (proto_.unk_id < 0 || std::size_t(proto_.unk_id) >= n ||
            proto_.pieces[std::size_t(proto_.unk_id)].type != type::unknown)
            unsupported("trainer_spec.unk_id " + std::to_string(proto_.unk_id) + " is not the id of an UNKNOWN piece");

        std::vector<std::string> texts;
        std::vector<double> scores;
        texts.reserve(n);
        scores.reserve(n);
        std::vector<special_token> specials;
        normal_.reserve(n);
        for (std::size_t id = 0; id < n; ++id) {
            const auto& p = proto_.pieces[id];
            const auto name = [&] { return "piece " + std::to_string(id) + " \"" + p.text + "\""; };
            if (p.type == type::user_defined)
                unsupported(name() + " is USER_DEFINED; user-defined symbols are not supported");
            if (p.type == type::unused) unsupported(name() + " is UNUSED; unused pieces are not supported");
            if (!std::isfinite(p.score)) unsupported(name() + " has a score that is not a finite number");
            if (p.type == type::byte && detail::byte_piece_value(p.text) < 0)
                unsupported(name() + " is a BYTE piece but not written <0xNN>");
            if (p.type == type::unknown && id != std::size_t(proto_.unk_id))
                unsupported(name() + " is a second UNKNOWN piece (unk_id is " + std::to_string(proto_.unk_id) + ")");
            if (p.type == type::unknown || p.type == type::control)
                specials.push_back({p.text, static_cast<token_id>(id)});
            if (p.type == type::normal) {
                normal_.emplace(p.text, static_cast<token_id>(id));
                min_score_ = std::min(min_score_, double(p.score));
                longest_ = std::max(longest_, p.text.size());
            }
            texts.push_back(p.text);
            scores.push_back(p.score);
        }

        sentencepiece_options o;
        if (proto_.add_dummy_prefix) o.normalizer.push_back({"", "\xE2\x96\x81"});
        if (proto_.escape_whitespaces) o.normalizer.push_back({" ", "\xE2\x96\x81"});
        o.byte_fallback = proto_.byte_fallback;
        o.unk = static_cast<token_id>(proto_.unk_id);
        o.fuse_unk = true;
        o.decoder.push_back({"\xE2\x96\x81", " "});
        o.decode_bytes = proto_.byte_fallback;
        o.strip_leading_spaces = proto_.add_dummy_prefix ? 1 : 0;
        if (proto_.bos_id >= 0 && std::size_t(proto_.bos_id) < n) o.template_before.push_back(proto_.bos_id);

        try {
            sentencepiece_model model;
            if (proto_.model == sentencepiece_proto::model_type::unigram) {
                o.source_json = hf_json({});
                model = sentencepiece_model::unigram(std::move(texts), std::move(scores), std::move(o));
            } else {
                // Merges, as Hugging Face's converters derive them: every split of a
                // NORMAL piece into two pieces, ranked by the piece's score (higher
                // first; equal scores by id).
                std::vector<token_id> order;
                for (const auto& [text, id] : normal_)
                    if (text.size() > detail::char_length(text, 0)) order.push_back(id);
                std::sort(order.begin(), order.end(), [&](token_id a, token_id b) {
                    const float sa = proto_.pieces[std::size_t(a)].score, sb = proto_.pieces[std::size_t(b)].score;
                    return sa != sb ? sa > sb : a < b;
                });
                // (The cuts fall between characters, as the converters' Python strings
                // cut: half a UTF-8 character is no piece. An invalid byte is a
                // character of its own, as everywhere in this file.)
                std::unordered_map<std::string_view, token_id> all;
                all.reserve(n);
                for (std::size_t id = 0; id < n; ++id) all.emplace(proto_.pieces[id].text, static_cast<token_id>(id));
                std::vector<std::pair<token_id, token_id>> merges;
                for (const token_id id : order) {
                    const std::string_view t = proto_.pieces[std::size_t(id)].text;
                    for (std::size_t cut = detail::char_length(t, 0); cut < t.size();
                         cut += detail::char_length(t, cut)) {
                        const auto a = all.find(t.substr(0, cut));
                        if (a == all.end()) continue;
                        const auto b = all.find(t.substr(cut));
                        if (b != all.end()) merges.emplace_back(a->second, b->second);
                    }
                }
                o.source_json = hf_json(merges);
                model = sentencepiece_model::bpe(std::move(texts), merges, std::move(o));
            }
            tokenizer_ = tinyllm::tokenizer(std::move(model), std::move(specials));
        } catch (const error& e) {
            TINYLLM_FAIL("bad SentencePiece model ", path, ": ", e.what());
        }
    }

    const sentencepiece_proto& proto() const { return proto_; }
    // The vocabulary as a tinyllm tokenizer (see the top of the file for where it differs).
    // (Of a processor about to go away, the tokenizer itself, moved out rather than copied.)
    const tinyllm::tokenizer& tokenizer() const& { return tokenizer_; }
    tinyllm::tokenizer tokenizer() && { return std::move(tokenizer_); }
    const sentencepiece_model& model() const { return *tokenizer_.sentencepiece(); }
    std::size_t size() const { return proto_.pieces.size(); }

    // Step 1: the text the model segments ("  The  tiger " -> "▁The▁tiger" with
    // remove_extra_whitespaces).
    std::string normalize(std::string_view text) const {
        const std::string_view space = "\xE2\x96\x81";
        std::string s;  // the characters, invalid bytes as U+FFFD, extra spaces removed
        s.reserve(text.size());
        bool prev_space = proto_.remove_extra_whitespaces;  // drops leading spaces too
        for (std::size_t at = 0; at < text.size();) {
            std::uint32_t cp;
            const int len = detail::decode_utf8(text, at, cp);
            if (cp == detail::invalid_code_point) {
                detail::encode_utf8(detail::replacement_character, s);
                at += 1;  // one U+FFFD per invalid byte, as SentencePiece does
                prev_space = false;
                continue;
            }
            const bool is_space = cp == ' ';
            if (!(is_space && prev_space && proto_.remove_extra_whitespaces))
                s.append(text.substr(at, std::size_t(len)));
            if (proto_.remove_extra_whitespaces) prev_space = is_space;
            at += std::size_t(len);
        }
        if (s.empty()) return s;
        std::string out;
        out.reserve(s.size() + 3);
        if (proto_.add_dummy_prefix) out.append(space);
        for (const char c : s) {
            if (c == ' ' && proto_.escape_whitespaces)
                out.append(space);
            else
                out += c;
        }
        if (proto_.remove_extra_whitespaces) {
            const std::string_view tail = proto_.escape_whitespaces ? space : " ";
            while (out.size() >= tail.size() && std::string_view(out).substr(out.size() - tail.size()) == tail)
                out.resize(out.size() - tail.size());
        }
        return out;
    }

    // The ids of `text`, as SentencePieceProcessor.encode(text) (no BOS/EOS).
    std::vector<token_id> encode(std::string_view text) const {
        const std::string s = normalize(text);
        std::vector<std::string_view> parts;  // the segmentation
        if (proto_.model == sentencepiece_proto::model_type::bpe)
            segment_bpe(s, parts);
        else
            segment_unigram(s, parts);
        // Step 3: pieces to ids; unknown parts as bytes or one <unk> per run.
        std::vector<token_id> out;
        const sentencepiece_model& m = model();
        const auto unk = static_cast<token_id>(proto_.unk_id);
        for (const std::string_view p : parts) {
            const auto it = normal_.find(p);
            if (it != normal_.end()) {
                out.push_back(it->second);
            } else if (proto_.byte_fallback) {
                for (const char c : p) out.push_back(*m.find(detail::byte_piece_name(static_cast<unsigned char>(c))));
            } else if (out.empty() || out.back() != unk) {
                out.push_back(unk);
            }
        }
        return out;
    }

    // The text of `ids`, as SentencePieceProcessor.decode: control pieces are
    // dropped, <unk> is " ⁇ ", runs of byte pieces are their bytes (an invalid
    // UTF-8 byte: U+FFFD), "▁" is a space, and with add_dummy_prefix the first
    // piece loses one leading "▁" (with remove_extra_whitespaces also the next
    // ones, while they decode to nothing), as the sentencepiece library does.
    std::string decode(std::span<const token_id> ids) const {
        using type = sentencepiece_proto::piece_type;
        std::string text, bytes;
        bool at_start = true;  // nothing written yet
        const auto flush = [&] {
            for (std::size_t at = 0; at < bytes.size();) {
                std::uint32_t cp;
                const int len = detail::decode_utf8(bytes, at, cp);
                if (cp == detail::invalid_code_point) {
                    detail::encode_utf8(detail::replacement_character, text);
                    at += 1;
                } else {
                    text.append(bytes, at, std::size_t(len));
                    at += std::size_t(len);
                }
            }
            if (!bytes.empty()) at_start = false;
            bytes.clear();
        };
        for (const token_id id : ids) {
            TINYLLM_EXPECT(id >= 0 && std::size_t(id) < size(), "token id ", id, " is not in the vocabulary (", size(),
                           " pieces)");
            const auto& p = proto_.pieces[std::size_t(id)];
            if (p.type == type::byte) {
                bytes += static_cast<char>(detail::byte_piece_value(p.text));
                continue;
            }
            flush();
            if (p.type == type::control) continue;
            if (p.type == type::unknown) {
                text += " \xE2\x81\x87 ";
                at_start = false;
                continue;
            }
            std::string piece = p.text;
            if (at_start && proto_.add_dummy_prefix && piece.rfind("\xE2\x96\x81", 0) == 0) piece.erase(0, 3);
            detail::replace_all(piece, "\xE2\x96\x81", " ");
            text += piece;
            // With remove_extra_whitespaces, a piece that was one "▁" leaves the next at the start.
            at_start = piece.empty() && proto_.remove_extra_whitespaces;
        }
        flush();
        return text;
    }
    std::string decode(std::initializer_list<token_id> ids) const {
        return decode(std::span<const token_id>(ids.begin(), ids.size()));
    }

private:
    // The same tokenizer as a Hugging Face tokenizer.json (what hf_tokenizer_json
    // writes for it, so that checkpoints carry it), in the form the Hub's converters
    // give a Llama-style model: normalizer Prepend("▁") + Replace(" " -> "▁"), no
    // pre-tokenizer, the Llama decoder, "<s> $A" as the template, and the UNKNOWN
    // and CONTROL pieces as added tokens.
    std::string hf_json(const std::vector<std::pair<token_id, token_id>>& merges) const {
        using type = sentencepiece_proto::piece_type;
        const std::string space = "\xE2\x96\x81";
        const auto& pieces = proto_.pieces;
        const auto text_of = [&](token_id id) { return json::quote(pieces[std::size_t(id)].text); };
        std::string j = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[";
        bool first = true;
        for (std::size_t id = 0; id < pieces.size(); ++id) {
            if (pieces[id].type != type::unknown && pieces[id].type != type::control) continue;
            j += (first ? "" : ",") + std::string("{\"id\":") + std::to_string(id) +
                 ",\"content\":" + json::quote(pieces[id].text) +
                 ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}";
            first = false;
        }
        j += "],\"normalizer\":";
        std::vector<std::string> steps;
        if (proto_.add_dummy_prefix) steps.push_back("{\"type\":\"Prepend\",\"prepend\":\"" + space + "\"}");
        if (proto_.escape_whitespaces)
            steps.push_back("{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"" + space + "\"}");
        if (steps.empty()) {
            j += "null";
        } else {
            j += "{\"type\":\"Sequence\",\"normalizers\":[";
            for (std::size_t k = 0; k < steps.size(); ++k) j += (k ? "," : "") + steps[k];
            j += "]}";
        }
        j += ",\"pre_tokenizer\":null,\"post_processor\":";
        if (proto_.bos_id >= 0 && std::size_t(proto_.bos_id) < pieces.size()) {
            const std::string bos = text_of(proto_.bos_id);
            j += "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":" + bos +
                 ",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[{\"SpecialToken\":{\"id\":" +
                 bos + ",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":" + bos +
                 ",\"type_id\":1}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}],\"special_tokens\":{" + bos +
                 ":{\"id\":" + bos + ",\"ids\":[" + std::to_string(proto_.bos_id) + "],\"tokens\":[" + bos + "]}}}";
        } else {
            j += "null";
        }
        j += ",\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"" +
             space + "\"},\"content\":\" \"}";
        if (proto_.byte_fallback) j += ",{\"type\":\"ByteFallback\"}";
        j += ",{\"type\":\"Fuse\"}";
        if (proto_.add_dummy_prefix) j += ",{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}";
        j += "]},\"model\":";
        const std::string fallback = proto_.byte_fallback ? "true" : "false";
        if (proto_.model == sentencepiece_proto::model_type::unigram) {
            j += "{\"type\":\"Unigram\",\"unk_id\":" + std::to_string(proto_.unk_id) + ",\"vocab\":[";
            for (std::size_t id = 0; id < pieces.size(); ++id) {
                // The same double back.
                j += (id ? ",[" : "[") + json::quote(pieces[id].text) + "," +
                     json::format_number(double(pieces[id].score)) + "]";
            }
            j += "],\"byte_fallback\":" + fallback + "}}";
        } else {
            j +=
                "{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":" + text_of(proto_.unk_id) +
                ",\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":true,\"byte_fallback\":" +
                fallback + ",\"ignore_merges\":false,\"vocab\":{";
            // (The two long lists appended in place: about 1.4 MB for a 32,000-piece model.)
            const auto append_text = [&](token_id id) { json::detail::write_string(j, pieces[std::size_t(id)].text); };
            for (std::size_t id = 0; id < pieces.size(); ++id) {
                if (id) j += ',';
                append_text(static_cast<token_id>(id));
                j += ':';
                j += std::to_string(id);
            }
            j += "},\"merges\":[";
            for (std::size_t k = 0; k < merges.size(); ++k) {
                j += k ? ",[" : "[";
                append_text(merges[k].first);
                j += ',';
                append_text(merges[k].second);
                j += ']';
            }
            j += "]}}";
        }
        return j;
    }

    // BPE: characters, then the highest-scoring merge (leftmost on ties) until none applies.
    void segment_bpe(std::string_view s, std::vector<std::string_view>& parts) const {
        struct symbol {
            std::size_t start, len;
            std::ptrdiff_t prev, next;
        };
        std::vector<symbol> sym;
        for (std::size_t at = 0; at < s.size();) {
            const std::size_t len = detail::char_length(s, at);
            const auto i = static_cast<std::ptrdiff_t>(sym.size());
            sym.push_back({at, len, i - 1, at + len < s.size() ? i + 1 : -1});
            at += len;
        }
        struct candidate {
            float score;
            std::ptrdiff_t left, right;
            std::size_t size;
        };
        const auto worse = [](const candidate& a, const candidate& b) {
            return a.score != b.score ? a.score < b.score : a.left > b.left;
        };
        std::priority_queue<candidate, std::vector<candidate>, decltype(worse)> agenda(worse);
        const auto consider = [&](std::ptrdiff_t l, std::ptrdiff_t r) {
            if (l < 0 || r < 0) return;
            const std::string_view merged =
                s.substr(sym[std::size_t(l)].start, sym[std::size_t(l)].len + sym[std::size_t(r)].len);
            const auto it = normal_.find(merged);
            if (it == normal_.end()) return;
            agenda.push({proto_.pieces[std::size_t(it->second)].score, l, r, merged.size()});
        };
        for (std::size_t i = 1; i < sym.size(); ++i) consider(std::ptrdiff_t(i) - 1, std::ptrdiff_t(i));
        while (!agenda.empty()) {
            const candidate c = agenda.top();
            agenda.pop();
            symbol& l = sym[std::size_t(c.left)];
            symbol& r = sym[std::size_t(c.right)];
            if (l.len == 0 || r.len == 0 || l.len + r.len != c.size) continue;  // stale
            l.len += r.len;
            r.len = 0;
            l.next = r.next;
            if (r.next >= 0) sym[std::size_t(r.next)].prev = c.left;
            consider(l.prev, c.left);
            consider(c.left, l.next);
        }
        for (std::ptrdiff_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[std::size_t(i)].next)
            parts.push_back(s.substr(sym[std::size_t(i)].start, sym[std::size_t(i)].len));
    }

    // Unigram: Viterbi over NORMAL pieces; a character that is not itself a piece is an unknown edge.
    // Path scores add up in float, as the sentencepiece library's do: two paths whose sums tie
    // in double may differ in float (l + ll against ll + l after a long prefix), and the
    // library's rounding decides which it keeps. (Hugging Face's tokenizers adds in double:
    // sentencepiece.hpp, for tokenizer.json, does too.)
    void segment_unigram(std::string_view s, std::vector<std::string_view>& parts) const {
        struct node {
            bool reached = false;
            float best = 0;
            std::size_t start = 0;
        };
        std::vector<node> at(s.size() + 1);
        at[0].reached = true;
        const float unk_score = static_cast<float>(min_score_) - 10.0f;
        const auto relax = [&](std::size_t from, std::size_t to, float score) {
            const float v = at[from].best + score;
            if (!at[to].reached || v > at[to].best) at[to] = {true, v, from};
        };
        for (std::size_t from = 0; from < s.size();) {
            const std::size_t char_len = detail::char_length(s, from);
            bool covered = false;
            for (std::size_t len = 1; len <= longest_ && from + len <= s.size(); ++len) {
                const auto it = normal_.find(s.substr(from, len));
                if (it == normal_.end()) continue;
                relax(from, from + len, proto_.pieces[std::size_t(it->second)].score);
                covered |= len == char_len;
            }
            if (!covered) relax(from, from + char_len, unk_score);
            from += char_len;
        }
        const std::size_t first = parts.size();
        for (std::size_t end = s.size(); end > 0; end = at[end].start)
            parts.push_back(s.substr(at[end].start, end - at[end].start));
        std::reverse(parts.begin() + std::ptrdiff_t(first), parts.end());
    }

    sentencepiece_proto proto_;
    tinyllm::tokenizer tokenizer_;
    std::unordered_map<std::string, token_id, detail::string_hash, std::equal_to<>> normal_;  // NORMAL pieces
    double min_score_ = std::numeric_limits<double>::max();  // the lowest score of a NORMAL piece
    std::size_t longest_ = 0;
};

// Read a SentencePiece model file (tokenizer.model).
inline sentencepiece_processor load_sentencepiece_model(const std::string& path) {
    const std::string bytes = detail::read_whole_file(path, "a SentencePiece model");
    return sentencepiece_processor(parse_sentencepiece_proto(bytes, path), path);
}

namespace detail {

// Whether `bytes` starts as a ModelProto does: field 1 (pieces), length-delimited
// (tag byte 0x0A), a length, then the piece's field 1 (0x0A) again. (load_tokenizer
// asks after ruling out JSON, which may also start with a newline.)
inline bool looks_like_sentencepiece_model(std::string_view bytes) {
    if (bytes.size() < 3 || bytes[0] != '\x0A') return false;
    std::size_t at = 1;
    while (at < bytes.size() && at < 6 && (static_cast<unsigned char>(bytes[at]) & 0x80)) ++at;
    return at + 1 < bytes.size() && bytes[at + 1] == '\x0A';
}

}  // namespace detail

// The model as a tinyllm tokenizer (what load_tokenizer returns for a .model
// file). A model with remove_extra_whitespaces is refused: the tokenizer cannot
// strip or collapse spaces, so it would not encode as SentencePiece does.
inline tokenizer sentencepiece_model_tokenizer(std::string_view bytes, const std::string& path) {
    sentencepiece_processor p(parse_sentencepiece_proto(bytes, path), path);
    if (p.proto().remove_extra_whitespaces)
        TINYLLM_FAIL("unsupported SentencePiece model ", path,
                     " for load_tokenizer: normalizer_spec."
                     "remove_extra_whitespaces is on (SentencePiece strips leading and trailing spaces and collapses "
                     "runs of them, which a tinyllm tokenizer cannot); use load_sentencepiece_model(path).encode, or "
                     "its tokenizer() on text with the spaces already removed");
    return std::move(p).tokenizer();
}

}  // namespace tinyllm
