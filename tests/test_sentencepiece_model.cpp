// tests/test_sentencepiece_model.cpp — SentencePiece's own model files
// (tokenizer.model, read by sentencepiece_proto.hpp without a protobuf library):
// the same ids and decoded text as the `sentencepiece` library on the fixtures
// of tools/make-sentencepiece-fixtures (bpe.model and unigram.model with byte
// fallback; bpe_ws.model and unigram_ws.model with the trainer's default
// whitespace handling and <unk>), load_tokenizer on a .model file, round trips,
// and an error naming the byte offset and field for truncated and corrupted files.
#include "support/catch.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/detail/json.hpp>
#include <tinyllm/sentencepiece_proto.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace tinyllm;
using tinyllm_test::contains;

namespace {

using tokenizer_test::ids_of;
std::string sp_dir() { return tokenizer_test::sentencepiece_dir(); }
const json::value& expected() { return tokenizer_test::sentencepiece_json("expected_spm.json"); }

std::string model_bytes(const std::string& name) { return detail::read_text_file(sp_dir() + name); }

// Text that holds a control or byte piece's string: there the tokenizer
// (Hugging Face's reading) may differ from SentencePiece.
bool has_reserved_string(const std::string& t) {
    for (const char* s : {"<s>", "</s>", "<unk>", "<0x"})
        if (t.find(s) != std::string::npos) return true;
    return false;
}

// Offsets at which the top-level fields of a ModelProto start (and its end):
// truncating the file there leaves a well-formed, shorter message.
std::set<std::size_t> top_level_boundaries(const std::string& bytes) {
    std::set<std::size_t> out;
    detail::protobuf::reader r(bytes, 0, "x", "ModelProto");
    detail::protobuf::field f;
    while (r.next(f)) out.insert(f.offset);
    out.insert(bytes.size());
    return out;
}

std::string varint(std::uint64_t v) {
    std::string s;
    do {
        s += static_cast<char>((v & 0x7F) | (v >= 0x80 ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return s;
}
std::string len_field(int number, const std::string& payload) {
    return varint(std::uint64_t(number) << 3 | 2) + varint(payload.size()) + payload;
}
std::string int_field(int number, std::uint64_t v) { return varint(std::uint64_t(number) << 3) + varint(v); }

}  // namespace

TEST_CASE("sentencepiece .model: the same ids as the sentencepiece library", "[sentencepiece_model]") {
    const auto& texts = expected().find("texts")->as_array();
    REQUIRE(texts.size() >= 140);
    for (const char* name : {"bpe.model", "unigram.model", "bpe_ws.model", "unigram_ws.model"}) {
        INFO(name);
        const sentencepiece_processor sp = load_sentencepiece_model(sp_dir() + name);
        const json::value& e = *expected().find("models")->find(name);
        const auto& ids = e.find("ids")->as_array();
        const auto& decoded = e.find("decoded")->as_array();
        std::size_t same = 0, same_decoded = 0;
        for (std::size_t k = 0; k < texts.size(); ++k) {
            const std::string& t = texts[k].as_string();
            INFO("text " << k << ": \"" << t << "\"");
            const std::vector<token_id> got = sp.encode(t);
            CHECK(got == ids_of(ids[k]));
            same += got == ids_of(ids[k]);
            CHECK(sp.decode(ids_of(ids[k])) == decoded[k].as_string());
            same_decoded += sp.decode(ids_of(ids[k])) == decoded[k].as_string();
        }
        CHECK(same == texts.size());
        CHECK(same_decoded == texts.size());
    }
}

TEST_CASE("sentencepiece .model: Unigram path scores add up in float, as the library's", "[sentencepiece_model]") {
    // "lll" after this prefix is l + ll or ll + l: equal sums in double, not in float, where
    // the sentencepiece library (0.2.3) keeps ll + l. The ids are the library's encode(text).
    const sentencepiece_processor sp = load_sentencepiece_model(sp_dir() + "unigram_multi.model");
    CHECK(sp.encode("\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xef\xbf\xbdlll") ==
          std::vector<token_id>{259, 364, 465, 607, 569, 242, 194, 192, 517, 290});
    CHECK(sp.encode("Hello lll world") == std::vector<token_id>{259, 1086, 289, 517, 283, 484, 517, 282, 519, 290, 271});
}

TEST_CASE("sentencepiece .model: what the file holds", "[sentencepiece_model]") {
    const sentencepiece_processor bpe = load_sentencepiece_model(sp_dir() + "bpe.model");
    CHECK(bpe.proto().model == sentencepiece_proto::model_type::bpe);
    CHECK(bpe.size() == 700);
    CHECK(bpe.proto().byte_fallback);
    CHECK(bpe.proto().normalizer_name == "identity");
    CHECK(bpe.proto().precompiled_charsmap.empty());
    CHECK_FALSE(bpe.proto().remove_extra_whitespaces);
    CHECK(bpe.proto().add_dummy_prefix);
    CHECK(bpe.proto().unk_id == 0);
    CHECK(bpe.proto().bos_id == 1);
    CHECK(bpe.proto().eos_id == 2);
    CHECK(bpe.proto().pad_id == -1);  // a ten-byte varint
    CHECK(bpe.proto().pieces[0].text == "<unk>");
    CHECK(bpe.proto().pieces[0].type == sentencepiece_proto::piece_type::unknown);
    CHECK(bpe.proto().pieces[1].type == sentencepiece_proto::piece_type::control);
    CHECK(bpe.proto().pieces[3].text == "<0x00>");
    CHECK(bpe.proto().pieces[3].type == sentencepiece_proto::piece_type::byte);
    // The same pieces as the tokenizer.json made from the same model.
    const tokenizer hf = load_tokenizer(sp_dir() + "bpe_llama.json");
    for (token_id id = 0; id < 700; ++id) CHECK(hf.sentencepiece()->piece(id) == bpe.model().piece(id));

    const sentencepiece_processor uni = load_sentencepiece_model(sp_dir() + "unigram_ws.model");
    CHECK(uni.proto().model == sentencepiece_proto::model_type::unigram);
    CHECK_FALSE(uni.proto().byte_fallback);
    CHECK(uni.proto().remove_extra_whitespaces);
    CHECK(uni.normalize("  The   tiger  ") == "\xE2\x96\x81The\xE2\x96\x81tiger");
    CHECK(uni.normalize("   ").empty());
    CHECK(uni.normalize("a \xE2\x96\x81 ") ==
          "\xE2\x96\x81"
          "a");  // trailing "▁" dropped, even one of the text
    CHECK(uni.normalize("a\xFF") ==
          "\xE2\x96\x81"
          "a\xEF\xBF\xBD");  // an invalid byte is U+FFFD
    CHECK(bpe.normalize("  a  ") ==
          "\xE2\x96\x81\xE2\x96\x81\xE2\x96\x81"
          "a\xE2\x96\x81\xE2\x96\x81");
}

TEST_CASE("sentencepiece .model: round trips", "[sentencepiece_model]") {
    const auto& texts = expected().find("texts")->as_array();
    for (const char* name : {"bpe.model", "unigram.model"}) {
        INFO(name);
        const sentencepiece_processor sp = load_sentencepiece_model(sp_dir() + name);
        for (const auto& v : texts) {
            const std::string& t = v.as_string();
            if (t.find("\xE2\x96\x81") != std::string::npos) continue;  // a "▁" of the text decodes as a space
            INFO("\"" << t << "\"");
            CHECK(sp.decode(sp.encode(t)) == t);  // byte fallback, no whitespace removal: lossless
            if (has_reserved_string(t)) continue;
            const std::vector<token_id> ids = sp.tokenizer().encode_ordinary(t);
            CHECK(sp.tokenizer().decode(ids) == t);
        }
    }
    // Where the tokenizer (Hugging Face's reading) and SentencePiece differ: a
    // Unigram lattice over every piece finds the byte piece <0x41> in the text;
    // SentencePiece looks up NORMAL pieces only, so the text stays text.
    const sentencepiece_processor uni = load_sentencepiece_model(sp_dir() + "unigram.model");
    const token_id byte_a = *uni.model().find("<0x41>");
    const auto has_byte_a = [&](const std::vector<token_id>& ids) {
        return std::find(ids.begin(), ids.end(), byte_a) != ids.end();
    };
    CHECK(has_byte_a(uni.tokenizer().encode_ordinary("<0x41>")));
    CHECK_FALSE(has_byte_a(uni.encode("<0x41>")));
    CHECK(uni.decode(uni.encode("<0x41>")) == "<0x41>");
    // With remove_extra_whitespaces the text comes back with its spaces tidied.
    const sentencepiece_processor ws = load_sentencepiece_model(sp_dir() + "bpe_ws.model");
    CHECK(ws.decode(ws.encode("  In the   beginning  ")) == "In the beginning");
}

TEST_CASE("sentencepiece .model: load_tokenizer reads it", "[sentencepiece_model]") {
    const auto& texts = expected().find("texts")->as_array();
    for (const char* name : {"bpe.model", "unigram.model"}) {
        INFO(name);
        const tokenizer tok = load_tokenizer(sp_dir() + name);
        REQUIRE(tok.sentencepiece() != nullptr);
        CHECK(tok.vocab_size() == 700);
        CHECK(tok.special_id("<s>") == token_id(1));
        const auto& ids = expected().find("models")->find(name)->find("ids")->as_array();
        std::size_t compared = 0;
        for (std::size_t k = 0; k < texts.size(); ++k) {
            const std::string& t = texts[k].as_string();
            if (has_reserved_string(t)) continue;
            INFO("\"" << t << "\"");
            CHECK(tok.encode(t) == ids_of(ids[k]));
            ++compared;
        }
        CHECK(compared > 130);
        // The BOS piece before the text, as Llama's tokenizer.json's template.
        const auto with = tok.encode_with_template("In the beginning");
        REQUIRE(!with.empty());
        CHECK(with.front() == 1);
    }
    // hf_tokenizer_json writes it as a tokenizer.json that reads back to the same tokenizer.
    for (const char* name : {"bpe.model", "unigram.model"}) {
        INFO(name);
        const tokenizer tok = load_tokenizer(sp_dir() + name);
        const std::string text = hf_tokenizer_json(tok);
        REQUIRE(!text.empty());
        const tokenizer back = parse_hf_tokenizer_json(text, "back.json");
        REQUIRE(back.sentencepiece() != nullptr);
        CHECK(hf_tokenizer_json(back) == text);
        CHECK(back.specials().size() == tok.specials().size());
        CHECK(std::vector<token_id>(back.template_before().begin(), back.template_before().end()) ==
              std::vector<token_id>{1});
        for (const auto& v : texts) {
            const std::string& t = v.as_string();
            INFO("\"" << t << "\"");
            const auto ids = tok.encode_ordinary(t);
            CHECK(back.encode_ordinary(t) == ids);
            CHECK(back.decode(ids) == tok.decode(ids));
        }
    }
    // Recognised by its content as well as by its name.
    const std::string path = (std::filesystem::temp_directory_path() / "tinyllm_test_spm_model.bin").string();
    {
        std::ofstream out(path, std::ios::binary);
        out << model_bytes("unigram.model");
    }
    const tokenizer sniffed = load_tokenizer(path);
    std::remove(path.c_str());
    REQUIRE(sniffed.sentencepiece() != nullptr);
    CHECK(sniffed.sentencepiece()->kind() == sentencepiece_kind::unigram);
    // A tokenizer cannot strip and collapse spaces: refused, pointing at the processor.
    CHECK_THROWS_WITH(load_tokenizer(sp_dir() + "bpe_ws.model"), contains("remove_extra_whitespaces"));
    CHECK_THROWS_WITH(load_tokenizer(sp_dir() + "unigram_ws.model"), contains("load_sentencepiece_model"));
}

TEST_CASE("sentencepiece .model: truncated and corrupted files are refused", "[sentencepiece_model]") {
    for (const char* name : {"bpe.model", "unigram_ws.model"}) {
        INFO(name);
        const std::string good = model_bytes(name);
        const std::set<std::size_t> boundaries = top_level_boundaries(good);
        std::size_t refused = 0;
        for (std::size_t cut = 1; cut < good.size(); cut += 37) {
            if (boundaries.count(cut)) continue;  // a well-formed (shorter) message
            INFO("cut at " << cut);
            CHECK_THROWS_WITH(parse_sentencepiece_proto(std::string_view(good).substr(0, cut), "t.model"),
                              contains("malformed SentencePiece model t.model: at byte"));
            ++refused;
        }
        CHECK(refused > 50);
        // Cut inside the last field (the normalizer or trainer spec): its length runs past the end.
        CHECK_THROWS_WITH(parse_sentencepiece_proto(std::string_view(good).substr(0, good.size() - 1), "t.model"),
                          contains("runs past the end of ModelProto"));
    }
    const std::string good = model_bytes("bpe.model");
    // Nothing but a tag; a tag whose varint is cut off; a length past the end.
    CHECK_THROWS_WITH(parse_sentencepiece_proto("\x0A", "t.model"),
                      contains("at byte 1, in ModelProto: field 1's length: "
                               "the varint is cut off"));
    CHECK_THROWS_WITH(parse_sentencepiece_proto("\x8A", "t.model"), contains("a field's tag: the varint is cut off"));
    CHECK_THROWS_WITH(parse_sentencepiece_proto(std::string("\x0A\x05"
                                                            "ab",
                                                            4),
                                                "t.model"),
                      contains("at byte 0, in ModelProto: field 1: its length 5 runs past the end"));
    CHECK_THROWS_WITH(parse_sentencepiece_proto(std::string(11, '\xFF'), "t.model"), contains("longer than"));
    CHECK_THROWS_WITH(parse_sentencepiece_proto(std::string_view(), "t.model"), contains("it has no pieces"));

    // A flipped wire type: the first field (pieces) as 32-bit.
    std::string bad = good;
    bad[0] = '\x0D';
    CHECK_THROWS_WITH(parse_sentencepiece_proto(bad, "t.model"),
                      contains("at byte 0, in ModelProto: pieces (field 1) has wire type 32-bit (5), expected "
                               "length-delimited (2)"));
    // The first piece's score (tag 0x15: field 2, 32-bit) as a varint (0x10).
    bad = good;
    const std::size_t score_tag = bad.find('\x15');
    REQUIRE(score_tag != std::string::npos);
    REQUIRE(score_tag < 20);
    bad[score_tag] = '\x10';
    CHECK_THROWS_WITH(parse_sentencepiece_proto(bad, "t.model"),
                      contains("at byte " + std::to_string(score_tag) +
                               ", in ModelProto.pieces[0]: score (field 2) "
                               "has wire type varint (0), expected 32-bit (5)"));
    // A group (wire type 3) is not read.
    CHECK_THROWS_WITH(parse_sentencepiece_proto(good + "\x0B", "t.model"), contains("start-group (3)"));

    // Unknown fields are skipped by their wire type.
    const std::string extra = good + int_field(99, 7) + len_field(98, "abc") + varint(97 << 3 | 5) + "abcd" +
                              varint(96 << 3 | 1) + "12345678";
    CHECK(sentencepiece_processor(parse_sentencepiece_proto(extra, "t.model"), "t.model").encode("In the beginning") ==
          load_sentencepiece_model(sp_dir() + "bpe.model").encode("In the beginning"));
}

TEST_CASE("sentencepiece .model: random corruption is refused or read, never a crash", "[sentencepiece_model]") {
    const std::string good = model_bytes("unigram_ws.model");
    std::mt19937 rng(7);
    std::size_t read = 0, refused = 0;
    for (int trial = 0; trial < 300; ++trial) {
        std::string bad = good;
        for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng() & 0xFF);
        try {
            const sentencepiece_processor sp(parse_sentencepiece_proto(bad, "t.model"), "t.model");
            (void)sp.decode(sp.encode("In the beginning God created the heaven and the earth."));
            ++read;
        } catch (const error& e) {
            CHECK_THAT(std::string(e.what()), contains("SentencePiece model t.model"));
            ++refused;
        }
    }
    CHECK(read + refused == 300);
    CHECK(refused > 0);
}

TEST_CASE("sentencepiece .model: unsupported models are refused by name", "[sentencepiece_model]") {
    const std::string good = model_bytes("bpe.model");
    const auto refused = [](const std::string& bytes) {
        return sentencepiece_processor(parse_sentencepiece_proto(bytes, "t.model"), "t.model");
    };
    // A later trainer_spec / normalizer_spec merges into the first (protobuf's rule).
    CHECK_THROWS_WITH(refused(good + len_field(2, int_field(3, 3))), contains("model_type WORD"));
    CHECK_THROWS_WITH(refused(good + len_field(2, int_field(3, 4))), contains("model_type CHAR"));
    CHECK_THROWS_WITH(refused(good + len_field(2, int_field(3, 9))), contains("model_type 9 is not"));
    CHECK_THROWS_WITH(refused(good + len_field(3, len_field(1, "nmt_nfkc") + len_field(2, "xyz"))),
                      contains("normalizer_spec \"nmt_nfkc\" has a precompiled_charsmap"));
    CHECK_THROWS_WITH(refused(good + len_field(2, int_field(24, 1))), contains("treat_whitespace_as_suffix"));
    // Without escaping, SentencePiece's dummy prefix is " ", not "▁" (and decoding keeps it).
    CHECK_THROWS_WITH(refused(good + len_field(3, int_field(5, 0))),
                      contains("unsupported SentencePiece model t.model: normalizer_spec.escape_whitespaces is off"));
    CHECK_NOTHROW(refused(good + len_field(3, int_field(5, 1))));
    CHECK_THROWS_WITH(refused(good + len_field(2, int_field(40, 5))), contains("unk_id 5 is not the id of an UNKNOWN"));
    CHECK_THROWS_WITH(refused(good + len_field(1, len_field(1, "zz") + int_field(3, 4))),
                      contains("piece 700 \"zz\" is USER_DEFINED"));
    CHECK_THROWS_WITH(refused(good + len_field(1, len_field(1, "zz") + int_field(3, 5))),
                      contains("piece 700 \"zz\" is UNUSED"));
    CHECK_THROWS_WITH(refused(good + len_field(1, len_field(1, "zz") + int_field(3, 7))),
                      contains("type 7 is not a SentencePiece type"));
    // A duplicate piece: the model refuses it, naming the file.
    CHECK_THROWS_WITH(refused(good + len_field(1, len_field(1, "<s>") + int_field(3, 1))),
                      contains("bad SentencePiece model t.model"));
    // Without byte_fallback's 256 pieces, byte_fallback is refused.
    CHECK_THROWS_WITH(refused(model_bytes("bpe_ws.model") + len_field(2, int_field(35, 1))),
                      contains("byte fallback needs all 256 pieces"));
}
