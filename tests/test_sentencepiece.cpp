// tests/test_sentencepiece.cpp — SentencePiece-family tokenizers
// (sentencepiece.hpp, read from tokenizer.json by tokenizer_io.hpp): the same
// ids, templates and decoded text as Hugging Face `tokenizers` on the fixtures
// of tools/make-sentencepiece-fixtures (a Llama-style BPE with byte fallback,
// the same model with a Metaspace pre-tokenizer, a Unigram model), round
// trips, byte fallback, the Viterbi lattice on a hand-made model, and an error
// for each kind of malformed or unsupported file.
#include "support/catch.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/detail/json.hpp>
#include <tinyllm/sentencepiece.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

using namespace tinyllm;
using tinyllm_test::contains;

namespace {

using tokenizer_test::ids_of;
std::string sp_dir() { return tokenizer_test::sentencepiece_dir(); }
const json::value& expected() { return tokenizer_test::sentencepiece_json("expected.json"); }

std::string fixture_text(const std::string& file) { return detail::read_text_file(sp_dir() + file); }

// `text` with the first `from` replaced by `to` (the replaced text must be there).
std::string edited(std::string text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

const std::string tiger = "The tiger jumped out of a tree to get a drink because it was thirsty.";

}  // namespace

TEST_CASE("SentencePiece tokenizer.json: same ids and text as the tokenizers library", "[sentencepiece]") {
    const auto& texts = expected().at("texts").as_array();
    for (const auto& [file, want] : expected().at("tokenizers").as_object()) {
        INFO(file);
        const tokenizer tok = load_tokenizer(sp_dir() + file);
        REQUIRE(tok.sentencepiece() != nullptr);
        std::size_t same = 0, same_template = 0, same_text = 0;
        for (std::size_t i = 0; i < texts.size(); ++i) {
            const std::string& text = texts[i].as_string();
            INFO("text " << i << ": " << json::quote(text));
            const auto ids = tok.encode(text, allowed_special::everything());
            const auto hf = ids_of(want.at("ids").at(i));
            CHECK(ids == hf);
            same += ids == hf;
            const auto with = tok.encode_with_template(text, allowed_special::everything());
            CHECK(with == ids_of(want.at("ids_template").at(i)));
            same_template += with == ids_of(want.at("ids_template").at(i));
            const std::string decoded = tok.decode(hf);
            CHECK(decoded == want.at("decoded").at(i).as_string());
            same_text += decoded == want.at("decoded").at(i).as_string();
            // A stream that starts the text gives what decode gives (valid UTF-8 throughout).
            stream_decoder stream(tok, stream_start::starts_text);
            std::string streamed;
            for (const token_id id : hf) streamed += stream.push(id);
            streamed += stream.finish();
            CHECK(streamed == decoded);
        }
        CHECK(same == texts.size());
        CHECK(same_template == texts.size());
        CHECK(same_text == texts.size());
    }
}

TEST_CASE("SentencePiece: decode(encode(text)) restores the text", "[sentencepiece]") {
    // The Llama form (Prepend + Replace, Strip one space) round-trips every
    // text without a "▁" of its own (which decodes as a space), spaces and
    // bytes included, when special tokens' strings are text (a stretch after
    // a special token gets a "▁" of its own, in Hugging Face too). With Metaspace "always" a text's own
    // leading space (or "▁") stands in for the prepended one and is dropped,
    // and each stretch after a special token gets a "▁" of its own, so the
    // Unigram fixture round-trips only the other texts (as in Hugging Face).
    const tokenizer llama = load_tokenizer(sp_dir() + "bpe_llama.json");
    const tokenizer unigram = load_tokenizer(sp_dir() + "unigram.json");
    const auto& texts = expected().at("texts").as_array();
    const auto& hf_unigram = expected().at("tokenizers").at("unigram.json").at("decoded");
    std::size_t unigram_round_trips = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        const std::string& text = texts[i].as_string();
        INFO(json::quote(text));
        if (text.find("\xE2\x96\x81") == std::string::npos)
            CHECK(llama.decode(llama.encode(text, {}, special_handling::as_text)) == text);
        if (hf_unigram.at(i).as_string() == text) {
            CHECK(unigram.decode(unigram.encode(text, allowed_special::everything())) == text);
            ++unigram_round_trips;
        }
    }
    CHECK(unigram_round_trips > texts.size() / 2);
}

TEST_CASE("SentencePiece: the tiger sentence, byte fallback and token bytes", "[sentencepiece]") {
    const tokenizer tok = load_tokenizer(sp_dir() + "bpe_llama.json");
    const sentencepiece_model& sp = *tok.sentencepiece();
    CHECK(sp.kind() == sentencepiece_kind::bpe);
    CHECK(sp.normalize("The tiger") == "\xE2\x96\x81The\xE2\x96\x81tiger");
    const auto ids = tok.encode(tiger);
    CHECK(sp.piece(ids.front()).rfind("\xE2\x96\x81", 0) == 0);  // the first piece starts with "▁"
    CHECK(tok.token_bytes(ids.front()).front() == ' ');           // ... and decodes with a space
    CHECK(tok.decode(ids) == tiger);                               // which decode drops
    CHECK(tok.decode_bytes(ids) == tiger);

    // Token bytes: "▁" is a space, <0xNN> is one byte, specials are their text.
    const token_id newline = *sp.find("<0x0A>");
    CHECK(tok.token_bytes(newline) == "\n");
    CHECK(sp.byte_value(newline) == 0x0A);
    const token_id the = *sp.find("\xE2\x96\x81the");
    CHECK(tok.token_bytes(the) == " the");
    CHECK(tok.token_bytes(1) == "<s>");
    CHECK(tok.template_before().size() == 1);
    CHECK(tok.template_before()[0] == 1);
    CHECK(tok.template_after().empty());
    CHECK(tok.vocab_size() == sp.size());

    // Korean is not in a vocabulary trained on the King James Bible: every
    // character is its three UTF-8 bytes, and decoding restores them.
    const std::string korean = "\xEC\x95\x88";  // 안
    const auto k = tok.encode(korean);
    REQUIRE(k.size() == 4);  // ▁ <0xEC> <0x95> <0x88>
    CHECK(sp.piece(k[0]) == "\xE2\x96\x81");
    CHECK(sp.piece(k[1]) == "<0xEC>");
    CHECK(sp.piece(k[2]) == "<0x95>");
    CHECK(sp.piece(k[3]) == "<0x88>");
    CHECK(tok.decode(k) == korean);

    // A stream after a prompt keeps the space; one that starts the text drops it.
    stream_decoder after_prompt(tok);
    CHECK(after_prompt.push(the) == " the");
    stream_decoder first(tok, stream_start::starts_text);
    CHECK(first.push(the) == "the");
    // A character split over byte tokens is held back until complete.
    stream_decoder split(tok);
    CHECK(split.push(k[0]) == " ");
    CHECK(split.push(k[1]).empty());
    CHECK(split.push(k[2]).empty());
    CHECK(split.push(k[3]) == korean);
    // Hugging Face's ByteFallback: byte tokens that are not valid UTF-8 are one U+FFFD each.
    CHECK(tok.decode({k[1], k[2]}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
    CHECK(tok.decode(std::vector<token_id>{k[1], k[2]}, decode_errors::keep) == "\xEC\x95");

    // Special tokens follow tinyllm's rule: an error unless allowed.
    CHECK_THROWS_WITH(tok.encode("a </s> b"), contains("special token \"</s>\""));
    const auto with_eos = tok.encode("a </s> b", allowed_special::everything());
    CHECK(std::count(with_eos.begin(), with_eos.end(), token_id{2}) == 1);
    CHECK(tok.encode("</s>", allowed_special::everything()) == std::vector<token_id>{2});
}

TEST_CASE("SentencePiece: a tokenizer.json is written back as it was read", "[sentencepiece]") {
    const std::string text = fixture_text("unigram.json");
    const tokenizer tok = parse_hf_tokenizer_json(text, "unigram.json");
    CHECK(tok.sentencepiece()->kind() == sentencepiece_kind::unigram);
    CHECK(hf_tokenizer_json(tok) == text);
    CHECK_THROWS_WITH(serialize_tokenizer(tok), contains("byte-level BPE only"));
}

namespace {

// A hand-made Unigram model: the lattice of the picture in sentencepiece.hpp.
std::string small_unigram(const std::string& extra_model = "", const std::string& normalizer = "null") {
    return R"({"added_tokens": [{"id": 0, "content": "<unk>", "special": true}], "normalizer": )" + normalizer +
           R"(, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
  "post_processor": null,
  "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
  "model": {"type": "Unigram", "unk_id": 0)" + extra_model + R"(, "vocab": [["<unk>", 0.0], ["▁", -4.1], ["t", -5.0],
    ["h", -5.2], ["e", -4.5], ["▁t", -6.3], ["th", -6.0], ["he", -5.9], ["▁the", -7.0], ["the", -6.8],
    ["a", -3.0], ["▁a", -3.5]]}})";
}

}  // namespace

TEST_CASE("Unigram: Viterbi picks the best-scoring segmentation", "[sentencepiece]") {
    const tokenizer tok = parse_hf_tokenizer_json(small_unigram(), "u.json");
    // best[4] = max(-7.0 (▁the), -4.1 - 6.8 (▁ the), -6.3 - 5.9 (▁t he), ...) = -7.0
    CHECK(tok.encode("the") == std::vector<token_id>{8});
    // "▁a" (-3.5) beats "▁" + "a" (-7.1); "▁the▁a" splits at the "▁".
    CHECK(tok.encode("the a") == std::vector<token_id>{8, 11});
    CHECK(tok.decode(tok.encode("the a")) == "the a");
    // "x" and "y" are no piece: without byte fallback a run of them is one <unk>.
    CHECK(tok.encode("txy") == std::vector<token_id>{5, 0});
    CHECK(tok.decode(tok.encode("txy")) == "t<unk>");
    // The Metaspace decoder drops every "▁" of the first token.
    CHECK(tok.decode({1, 8}) == " the");
    CHECK(tok.decode({8, 1, 8}) == "the  the");
}

TEST_CASE("SentencePiece BPE: merges apply lowest rank first", "[sentencepiece]") {
    const auto file = [](const std::string& merges) {
        return R"({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
  {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "pre_tokenizer": null,
  "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
  {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
  "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
  "vocab": {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "c": 4, "ab": 5, "bc": 6, "abc": 7, "▁abc": 8},
  "merges": [)" + merges + "]}}";
    };
    // (b, c) ranks before (a, b): "abc" -> a bc -> abc; without (a, bc) it stops at a bc.
    CHECK(parse_hf_tokenizer_json(file(R"("b c", "a b", "a bc", "▁ abc")"), "m.json").encode("abc") ==
          std::vector<token_id>{8});
    CHECK(parse_hf_tokenizer_json(file(R"("b c", "a b", "ab c")"), "m.json").encode("abc") ==
          std::vector<token_id>{1, 2, 6});
    CHECK(parse_hf_tokenizer_json(file(R"("a b", "b c", "ab c")"), "m.json").encode("abc") ==
          std::vector<token_id>{1, 7});
    // Unknown characters (no byte fallback here) fuse into one <unk>.
    const tokenizer tok = parse_hf_tokenizer_json(file(R"("a b")"), "m.json");
    CHECK(tok.encode("axyb") == std::vector<token_id>{1, 2, 0, 3});
    // A long text is one sequence (no pre-tokenizer): the heap keeps it fast.
    std::string longer;
    for (int i = 0; i < 20000; ++i) longer += "abc ";
    CHECK(parse_hf_tokenizer_json(file(R"("b c", "a bc", "▁ abc")"), "m.json").encode(longer).size() == 20000 + 1);
}

TEST_CASE("SentencePiece tokenizer.json: errors say what and where", "[sentencepiece]") {
    const std::string good = fixture_text("bpe_llama.json");
    CHECK_NOTHROW(parse_hf_tokenizer_json(good, "t.json"));
    // Bad merges.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"merges\":[", "\"merges\":[[\"zz\",\"qq\"],"), "t.json"),
                      contains("t.json: field \"model.merges[0]\": merge \"zz\" + \"qq\""));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"merges\":[", "\"merges\":[\"a b c\","), "t.json"),
                      contains("field \"model.merges[0]\": expected \"a b\""));
    // byte_fallback without every <0xNN> piece.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"<0x41>\":", "\"<0x4G>\":"), "t.json"),
                      contains("byte_fallback is on but the vocabulary has no piece <0x41>"));
    // Unsupported normalizers, refused by name.
    const std::string norm = "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\"";
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, norm, "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},"
                                                                  "{\"type\":\"Prepend\""), "t.json"),
                      contains("normalizer \"NFKC\" is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(small_unigram("", R"({"type": "Precompiled", "precompiled_charsmap": "AAEC"})"), "u.json"),
                      contains("a Precompiled normalizer"));
    CHECK_NOTHROW(parse_hf_tokenizer_json(small_unigram("", R"({"type": "Precompiled", "precompiled_charsmap": ""})"), "u.json"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "{\"String\":\" \"}", "{\"Regex\":\" +\"}"), "t.json"),
                      contains("a Regex pattern is not supported"));
    // Unsupported decoder, pre-tokenizer, post-processor, model options.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "{\"type\":\"Fuse\"}", "{\"type\":\"CTC\"}"), "t.json"),
                      contains("decoder \"CTC\" is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"pre_tokenizer\":null", "\"pre_tokenizer\":{\"type\":\"Whitespace\"}"), "t.json"),
                      contains("field \"pre_tokenizer\": \"Whitespace\" is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"type\":\"TemplateProcessing\"", "\"type\":\"BertProcessing\""), "t.json"),
                      contains("\"BertProcessing\" is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"dropout\":null", "\"dropout\":0.1"), "t.json"),
                      contains("model.dropout"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"unk_token\":\"<unk>\"", "\"unk_token\":\"<nope>\""), "t.json"),
                      contains("field \"model.unk_token\": \"<nope>\" is not in model.vocab"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"decoder\":{", "\"decoder\":null,\"x\":{"), "t.json"),
                      contains("needs a decoder"));
    // Unigram: no unk_id, bad entries.
    const std::string uni = small_unigram();
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(uni, "\"unk_id\": 0", "\"unk_id\": null"), "u.json"),
                      contains("field \"model.unk_id\""));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(uni, "[\"t\", -5.0]", "[\"t\"]"), "u.json"),
                      contains("field \"model.vocab[2]\": expected [\"piece\", score]"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(uni, "[\"t\", -5.0]", "[\"h\", -5.0]"), "u.json"),
                      contains("piece \"h\" appears twice"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(small_unigram(", \"byte_fallback\": true"), "u.json"),
                      contains("has no piece <0x00>"));
    // A special token whose id is a different piece.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(uni, "\"content\": \"<unk>\"", "\"content\": \"<pad>\""), "u.json"),
                      contains("which the SentencePiece model uses for the piece \"<unk>\""));
    // Still a byte-level file's errors for byte-level files.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"type\":\"BPE\"", "\"type\":\"WordPiece\""), "t.json"),
                      contains("field \"model.type\""));
}

TEST_CASE("SentencePiece: any bytes encode, and byte fallback restores them", "[sentencepiece]") {
    // Invalid UTF-8 counts one character per bad byte, which only byte fallback can write.
    std::mt19937 rng(18);
    for (const char* file : {"bpe_llama.json", "bpe_metaspace.json", "unigram.json"}) {
        INFO(file);
        const tokenizer tok = load_tokenizer(sp_dir() + file);
        for (int i = 0; i < 500; ++i) {
            std::string s;
            for (int k = 0, n = int(rng() % 40); k < n; ++k) s += static_cast<char>(rng() % 256);
            if (s.find(' ') != std::string::npos || s.find("\xE2\x96\x81") != std::string::npos) continue;
            const auto ids = tok.encode(s, {}, special_handling::as_text);
            INFO(json::quote(detail::replace_invalid_utf8(s)));
            CHECK(tok.decode_bytes(ids) == s);
            CHECK(detail::is_valid_utf8(tok.decode(ids)));
        }
    }
}
