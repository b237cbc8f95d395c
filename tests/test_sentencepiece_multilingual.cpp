// tests/test_sentencepiece_multilingual.cpp — the SentencePiece family on
// vocabularies that hold non-Latin pieces: the multilingual fixtures of
// tools/make-sentencepiece-fixtures (--only-multilingual), a BPE and a Unigram
// model trained by the `sentencepiece` library on 300 lines of the King James
// Bible plus four copies of multilingual.txt (Korean, Chinese, Japanese, Greek,
// Russian, Arabic, Hindi, Thai, Vietnamese, French, German, Spanish, emoji),
// vocabulary 1,100, character coverage 0.9995 (the rarest characters left to
// byte fallback); both hold merged non-Latin pieces (에서, δι, ен, ال ...).
//
//  * the tokenizer.json files give exactly Hugging Face `tokenizers`' ids and
//    decoded strings, and the .model files exactly the `sentencepiece` library's,
//    on the training lines, held-out sentences in those languages and the
//    shared edge cases (76 texts, expected_multi.json);
//  * tinyllm's trainers on the same corpus (data/kjv.txt needed, else skipped):
//    the BPE vocabulary equals the library's piece for piece, the alphabet chosen
//    by coverage is the library's, and the Unigram vocabulary shares most pieces.
#include "support/catch.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/detail/json.hpp>
#include <tinyllm/sentencepiece_proto.hpp>
#include <tinyllm/sentencepiece_train.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

using namespace tinyllm;
using tokenizer_test::ids_of;
using tokenizer_test::sentencepiece_dir;

namespace {

const json::value& expected() { return tokenizer_test::sentencepiece_json("expected_multi.json"); }

std::vector<std::string> texts() {
    std::vector<std::string> out;
    for (const auto& t : expected().find("texts")->as_array()) out.push_back(t.as_string());
    return out;
}

// The training corpus of the fixtures: the first 300 lines of data/kjv.txt
// (empty ones left out) and four copies of multilingual.txt; nullopt without data/kjv.txt.
std::optional<std::string> corpus() {
    std::ifstream f(tokenizer_test::fixture_dir() + "../../../data/kjv.txt");
    if (!f) return std::nullopt;
    std::string line, text;
    for (int n = 0; n < 300 && std::getline(f, line); ++n)
        if (!line.empty()) text += line + "\n";
    const std::string multi = detail::read_text_file(sentencepiece_dir() + "multilingual.txt");
    for (int copy = 0; copy < 4; ++copy) text += multi;
    return text;
}

std::vector<std::string> pieces_of(const tokenizer& t) {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < t.sentencepiece()->size(); ++i) out.push_back(t.sentencepiece()->piece(token_id(i)));
    return out;
}

sentencepiece_train_options fixture_options(sentencepiece_kind kind) {
    sentencepiece_train_options o;
    o.kind = kind;
    o.vocab_size = 1100;
    o.character_coverage = 0.9995;
    return o;
}

}  // namespace

TEST_CASE("multilingual tokenizer.json files: Hugging Face tokenizers' ids and strings", "[sentencepiece_multi]") {
    const auto all = texts();
    REQUIRE(all.size() == 76);
    for (const char* name : {"bpe_multi.json", "unigram_multi.json"}) {
        const tokenizer tok = load_tokenizer(sentencepiece_dir() + name);
        const auto& want = *expected().find("tokenizers")->find(name);
        const auto& ids = want.find("ids")->as_array();
        const auto& decoded = want.find("decoded")->as_array();
        std::size_t merged = 0;  // tokens that are merged pieces of non-ASCII characters (에서, δι, ...)
        for (std::size_t i = 0; i < all.size(); ++i) {
            INFO(name << " text " << i << ": \"" << all[i] << "\"");
            const auto got = tok.encode(all[i]);
            REQUIRE(got == ids_of(ids[i]));
            REQUIRE(tok.decode(got) == decoded[i].as_string());
            for (const token_id id : got) {
                std::u32string chars = detail::sp_to_u32(tok.token_bytes(id));
                std::erase(chars, U' ');
                merged += tok.sentencepiece()->byte_value(id) < 0 && chars.size() >= 2 &&
                          std::any_of(chars.begin(), chars.end(), [](char32_t c) { return c >= 0x80; });
            }
        }
        INFO(name << ": " << merged << " tokens are merged pieces of non-ASCII characters");
        REQUIRE(merged >= 20);  // the point of these fixtures
    }
}

TEST_CASE("multilingual .model files: the sentencepiece library's ids and strings", "[sentencepiece_multi]") {
    const auto all = texts();
    for (const char* name : {"bpe_multi.model", "unigram_multi.model"}) {
        const auto sp = load_sentencepiece_model(sentencepiece_dir() + name);
        const auto& want = *expected().find("models")->find(name);
        const auto& ids = want.find("ids")->as_array();
        const auto& decoded = want.find("decoded")->as_array();
        for (std::size_t i = 0; i < all.size(); ++i) {
            INFO(name << " text " << i << ": \"" << all[i] << "\"");
            const auto got = sp.encode(all[i]);
            REQUIRE(got == ids_of(ids[i]));
            REQUIRE(sp.decode(got) == decoded[i].as_string());
        }
    }
}

TEST_CASE("SentencePiece trainers on the multilingual corpus agree with the sentencepiece trainer",
          "[sentencepiece_multi]") {
    const auto text = corpus();
    if (!text) {
        WARN("data/kjv.txt is absent (tools/bootstrap prepares it): skipped");
        return;
    }
    {
        sentencepiece_trainer trainer(fixture_options(sentencepiece_kind::bpe));
        trainer.add_text(*text);
        const auto ours = pieces_of(trainer.train());
        const auto theirs = pieces_of(load_tokenizer(sentencepiece_dir() + "bpe_multi.json"));
        REQUIRE(ours.size() == 1100);
        REQUIRE(theirs.size() == 1100);
        for (std::size_t i = 0; i < ours.size(); ++i) {
            INFO("id " << i);
            REQUIRE(ours[i] == theirs[i]);
        }
        // Coverage 0.9995 left some characters out of the alphabet; the same ones.
        std::set<std::string> alphabet;
        for (const char32_t c : trainer.alphabet()) alphabet.insert(detail::sp_to_utf8(std::u32string(1, c)));
        std::set<char32_t> seen;
        for (const char32_t c : detail::sp_to_u32(*text))
            if (c != U'\n') seen.insert(c == U' ' ? detail::sp_meta_space : c);
        INFO(alphabet.size() << " of " << seen.size() << " characters in the alphabet");
        REQUIRE(alphabet.size() < seen.size());
    }
    {
        sentencepiece_trainer trainer(fixture_options(sentencepiece_kind::unigram));
        trainer.add_text(*text);
        const auto ours = pieces_of(trainer.train());
        const auto theirs = pieces_of(load_tokenizer(sentencepiece_dir() + "unigram_multi.json"));
        REQUIRE(ours.size() == 1100);
        const std::set<std::string> a(ours.begin(), ours.end()), b(theirs.begin(), theirs.end());
        std::size_t common = 0;
        for (const auto& s : a) common += b.count(s);
        INFO(common << " of 1100 pieces in common");
        REQUIRE(common >= 1000);
    }
}
