// tests/test_sentencepiece.cpp — SentencePiece-family tokenizers
// (sentencepiece.hpp, read from tokenizer.json by tokenizer_io.hpp): the same
// ids, templates and decoded text as Hugging Face `tokenizers` on the fixtures
// of tools/make-sentencepiece-fixtures (a Llama-style BPE with byte fallback,
// the same model with a Metaspace pre-tokenizer, a Unigram model), round
// trips, byte fallback, the Viterbi lattice on a hand-made model, an error
// for each kind of malformed or unsupported file, and Unigram sampling (subword
// regularization): the exact distribution on a hand-made model, reproducibility,
// and the same decoded text as Viterbi on the fixture.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/detail/json.hpp>
#include <tinyllm/sentencepiece.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
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
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"type\":\"TemplateProcessing\"", "\"type\":\"ByteLevel\""), "t.json"),
                      contains("field \"post_processor\": \"ByteLevel\" in a SentencePiece-family file"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"type\":\"TemplateProcessing\"", "\"type\":\"BertProcessing\""), "t.json"),
                      contains("field \"post_processor.cls\": expected [\"token\", id]"));
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
    // A score that is not finite (-1e400 reads as -inf) is no SentencePiece score.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(uni, "[\"t\", -5.0]", "[\"t\", -1e400]"), "u.json"),
                      contains("u.json: field \"model.vocab[2]\": the score -1e400 of \"t\" is not a finite number"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(uni, "[\"t\", -5.0]", "[\"t\", 1e999]"), "u.json"),
                      contains("field \"model.vocab[2]\": the score 1e999"));
    // A count that is not a non-negative integer names the file and the field.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"start\":1,", "\"start\":1.5,"), "t.json"),
                      contains("t.json: field \"decoder.decoders[3].start\": expected a non-negative integer (a count "
                               "of characters), got 1.5"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"start\":1,", "\"start\":-1,"), "t.json"),
                      contains("field \"decoder.decoders[3].start\": expected a non-negative integer"));
    // Added tokens that take the spaces beside them are refused here too.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"lstrip\":false", "\"lstrip\":true"), "t.json"),
                      contains("t.json: field \"added_tokens[0].lstrip\": true is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"rstrip\":false", "\"rstrip\":true"), "t.json"),
                      contains("t.json: field \"added_tokens[0].rstrip\": true is not supported"));
    // An id that the vocabulary's size rules out is refused before anything is sized from it.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(good, "\"<0x41>\":", "\"<0x41>\":99999999,\"x\":"), "t.json"),
                      contains("t.json: field \"model.vocab[\"<0x41>\"]\": id 99999999 is not below the"));
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

// ---- Unigram sampling (subword regularization) -------------------------------------

namespace {

// Every segmentation of one word of `sp` (already normalized: "▁the"), found by
// brute force (independently of the lattice code): each part a piece, or one
// character that is no piece (the unknown edge, lowest score - 10). Returns the
// ids each segmentation encodes to (unknown characters: <unk>, a run of them one
// <unk>, as the small model has no byte fallback) with its exact probability
// exp(alpha * score) / Z.
std::map<std::vector<token_id>, double> segmentations(const sentencepiece_model& sp, const std::string& word,
                                                      double alpha) {
    double lowest = std::numeric_limits<double>::max();
    for (std::size_t id = 0; id < sp.size(); ++id) lowest = std::min(lowest, sp.score(token_id(id)));
    const token_id unk = *sp.options().unk;
    std::map<std::vector<token_id>, double> weight;
    std::vector<token_id> ids;
    const std::function<void(std::size_t, double)> walk = [&](std::size_t at, double score) {
        if (at == word.size()) {
            weight[ids] += std::exp(alpha * score);
            return;
        }
        const std::size_t char_len = detail::char_length(word, at);
        for (std::size_t end = at + 1; end <= word.size(); ++end)
            if (const auto id = sp.find(word.substr(at, end - at))) {
                ids.push_back(*id);
                walk(end, score + sp.score(*id));
                ids.pop_back();
            }
        if (!sp.find(word.substr(at, char_len))) {
            const bool fused = !ids.empty() && ids.back() == unk;
            if (!fused) ids.push_back(unk);
            walk(at + char_len, score + lowest - 10.0);
            if (!fused) ids.pop_back();
        }
    };
    walk(0, 0.0);
    double z = 0;
    for (const auto& [seg, w] : weight) z += w;
    for (auto& [seg, w] : weight) w /= z;
    return weight;
}

std::string show(const sentencepiece_model& sp, const std::vector<token_id>& ids) {
    std::string s;
    for (const token_id id : ids) s += "[" + sp.piece(id) + "]";
    return s;
}

}  // namespace

TEST_CASE("Unigram sampling: every segmentation as often as exp(alpha * score) / Z says", "[sentencepiece]") {
    const tokenizer tok = parse_hf_tokenizer_json(small_unigram(), "u.json");
    const sentencepiece_model& sp = *tok.sentencepiece();
    const std::string bar = "\xE2\x96\x81";
    const double alpha = 0.3;
    // Three words sampled together: "▁the" (7 segmentations), "▁thx" ("x" is no
    // piece: 3) and "▁a" (2). The joint frequencies (42 outcomes) check each word's
    // distribution and that the words' draws are independent.
    const auto the = segmentations(sp, bar + "the", alpha);
    const auto thx = segmentations(sp, bar + "thx", alpha);
    const auto a = segmentations(sp, bar + "a", alpha);
    CHECK(the.size() == 7);
    CHECK(thx.size() == 3);
    CHECK(a.size() == 2);
    std::map<std::vector<token_id>, double> joint;
    for (const auto& [s1, p1] : the)
        for (const auto& [s2, p2] : thx)
            for (const auto& [s3, p3] : a) {
                std::vector<token_id> ids = s1;
                ids.insert(ids.end(), s2.begin(), s2.end());
                ids.insert(ids.end(), s3.begin(), s3.end());
                joint[ids] = p1 * p2 * p3;
            }
    REQUIRE(joint.size() == 42);

    // 20,000 draws, each with its own stream under this run's seed. A count c of an
    // outcome of probability p is binomial(N, p): within 5 standard deviations of
    // N p (a false alarm about once in 1.7 million per outcome).
    const int n = 20000;
    const std::uint64_t seed = tinyllm_test::test_seed();
    std::map<std::vector<token_id>, int> count;
    for (int i = 0; i < n; ++i) ++count[sp.encode_sample("the thx a", {alpha, seed, std::uint64_t(i)})];
    for (const auto& [ids, c] : count) {
        INFO(show(sp, ids));
        CHECK(joint.count(ids) == 1);  // nothing outside the enumeration
    }
    for (const auto& [ids, p] : joint) {
        const double mean = n * p, sd = std::sqrt(n * p * (1 - p));
        const int c = count.count(ids) ? count.at(ids) : 0;
        INFO(show(sp, ids) << ": p = " << p << ", expected " << mean << " +- " << sd << ", drawn " << c);
        CHECK(std::abs(c - mean) <= 5 * sd + 1e-9);
    }
    // The marginal of the first word, with a tighter look at the likeliest outcomes.
    std::map<std::vector<token_id>, int> first;
    for (const auto& [ids, c] : count) {
        for (const auto& [seg, p] : the)
            if (std::equal(seg.begin(), seg.end(), ids.begin()) && ids.size() >= seg.size() &&
                (ids.size() == seg.size() || sp.piece(ids[seg.size()]).rfind(bar, 0) == 0))
                first[seg] += c;
    }
    for (const auto& [seg, p] : the) {
        const double mean = n * p, sd = std::sqrt(n * p * (1 - p));
        INFO(show(sp, seg) << ": p = " << p << ", expected " << mean << " +- " << sd << ", drawn " << first[seg]);
        CHECK(std::abs(first[seg] - mean) <= 5 * sd + 1e-9);
    }
    // "▁the" is Viterbi's answer and the likeliest sample; every segmentation occurs.
    CHECK(the.at({8}) > 0.5);
    CHECK(first.size() == the.size());
}

TEST_CASE("Unigram sampling: reproducible per (seed, stream), new for another", "[sentencepiece]") {
    const tokenizer tok = load_tokenizer(sp_dir() + "unigram.json");
    const sentencepiece_model& sp = *tok.sentencepiece();
    const std::string text = tiger + " " + tiger + " And God said, Let there be light: and there was light.";
    const subword_sampling base{0.1, 20260101, 0};
    const auto ids = tok.encode_sample(text, base);
    CHECK(tok.encode_sample(text, base) == ids);        // the same seed and stream: the same ids
    CHECK(sp.encode_sample(text, base) == ids);         // the model and the tokenizer agree
    CHECK(tok.decode(ids) == text);
    CHECK(ids != tok.encode(text));                     // alpha 0.1 on 40 words: not the best segmentation
    std::set<std::vector<token_id>> seen{ids};
    for (std::uint64_t k = 1; k <= 10; ++k) {
        seen.insert(tok.encode_sample(text, {0.1, base.seed + k, 0}));  // another seed
        seen.insert(tok.encode_sample(text, {0.1, base.seed, k}));      // another stream
    }
    CHECK(seen.size() == 21);

    // A word's draw depends only on (seed, stream, its index, itself): changing the
    // second word leaves the first and the third as they were.
    const auto a = tok.encode_sample("because tiger drink", base);
    const auto b = tok.encode_sample("because lion drink", base);
    const auto words = [&](const std::vector<token_id>& v) {
        std::vector<std::vector<token_id>> w;
        for (const token_id id : v) {
            if (w.empty() || sp.piece(id).rfind("\xE2\x96\x81", 0) == 0) w.emplace_back();
            w.back().push_back(id);
        }
        return w;
    };
    REQUIRE(words(a).size() == 3);
    REQUIRE(words(b).size() == 3);
    CHECK(words(a)[0] == words(b)[0]);
    CHECK(words(a)[2] == words(b)[2]);

    // Special tokens split the text; the words are counted across the stretches.
    const auto with_eos = tok.encode_sample("a tiger </s> a tiger", base, allowed_special::everything());
    CHECK(std::count(with_eos.begin(), with_eos.end(), *tok.special_id("</s>")) == 1);
    CHECK(tok.decode(with_eos) == tok.decode(tok.encode("a tiger </s> a tiger", allowed_special::everything())));
}

TEST_CASE("Unigram sampling: a large alpha gives Viterbi's answer, any alpha the same text", "[sentencepiece]") {
    const std::uint64_t seed = tinyllm_test::test_seed();
    // The hand-made model: alpha 1e6 puts all the weight on the best path.
    const tokenizer small = parse_hf_tokenizer_json(small_unigram(), "u.json");
    for (const char* text : {"the", "the a", "txy", "a the thee the", "hehe tt"}) {
        INFO(text);
        for (std::uint64_t s = 0; s < 20; ++s) CHECK(small.encode_sample(text, {1e6, seed, s}) == small.encode(text));
        const auto sample = small.encode_sample(text, {0.5, seed, 99});
        CHECK(small.decode(sample) == small.decode(small.encode(text)));
    }
    // The fixture (byte fallback, Metaspace) on its 133 texts: a large alpha gives
    // the Viterbi ids; small ones other ids but the same decoded text. (Texts with
    // a byte piece's name such as "<0x41>" are left out of the second check: a
    // sample may take the piece <0x41>, which decodes to "A".)
    const tokenizer tok = load_tokenizer(sp_dir() + "unigram.json");
    const auto& texts = expected().at("texts").as_array();
    std::size_t same_ids = 0, differ = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        const std::string& text = texts[i].as_string();
        INFO("text " << i << ": " << json::quote(text));
        const auto best = tok.encode(text, allowed_special::everything());
        const auto sharp = tok.encode_sample(text, {1e6, seed, i}, allowed_special::everything());
        CHECK(sharp == best);
        same_ids += sharp == best;
        if (text.find("<0x") != std::string::npos) continue;
        for (const double alpha : {0.05, 0.2, 1.0}) {
            const auto ids = tok.encode_sample(text, {alpha, seed, i}, allowed_special::everything());
            CHECK(tok.decode(ids) == tok.decode(best));
            differ += ids != best;
        }
    }
    CHECK(same_ids == texts.size());
    CHECK(differ > texts.size() / 2);  // the samples are not just Viterbi's answer (about 170 of 390 differ)
    // Korean: characters outside the vocabulary are byte tokens in the samples too.
    const std::string korean = "\xEC\x95\x88\xEB\x85\x95 tiger";  // 안녕 tiger
    const auto k = tok.encode_sample(korean, {0.1, seed, 0});
    CHECK(tok.decode(k) == korean);
    CHECK(tok.sentencepiece()->piece(k[1]) == "<0xEC>");
    // SentencePiece's own .model file, read as a tokenizer, samples too.
    const tokenizer spm = load_tokenizer(sp_dir() + "unigram.model");
    CHECK(spm.decode(spm.encode_sample(tiger, {0.1, seed, 0})) == tiger);
}

TEST_CASE("Unigram sampling: refused for BPE and for a bad alpha, by name", "[sentencepiece]") {
    const tokenizer unigram = load_tokenizer(sp_dir() + "unigram.json");
    const tokenizer bpe = load_tokenizer(sp_dir() + "bpe_llama.json");
    CHECK_THROWS_WITH(bpe.encode_sample("the tiger", {0.1, 1, 0}), contains("BPE-dropout"));
    CHECK_THROWS_WITH(bpe.sentencepiece()->encode_sample("the tiger", {0.1, 1, 0}),
                      contains("this is a SentencePiece BPE model"));
    CHECK_THROWS_WITH(tokenizer().encode_sample("the tiger", {0.1, 1, 0}), contains("byte-level BPE tokenizer"));
    for (const double alpha : {0.0, -0.5, std::numeric_limits<double>::infinity(),
                               std::numeric_limits<double>::quiet_NaN()}) {
        INFO(alpha);
        CHECK_THROWS_WITH(unigram.encode_sample("the tiger", {alpha, 1, 0}), contains("must be a finite number > 0"));
        CHECK_THROWS_WITH(unigram.encode_sample("", {alpha, 1, 0}), contains("alpha"));
    }
    CHECK(unigram.encode_sample("", {0.1, 1, 0}).empty());
}
