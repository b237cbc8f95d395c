// tests/test_tokenizer_io.cpp — the tokenizer file formats: Hugging Face
// tokenizer.json (agreement with the `tokenizers` library on a vocabulary it
// trained), GPT-2 encoder.json + vocab.bpe, tiktoken rank files, tinyllm's own
// format (save/load round trip), the JSON reader, and an error message for
// every kind of malformed file.
#include "support/catch.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <filesystem>
#include <unistd.h>
#include <fstream>
#include <random>
#include <string>
#include <vector>

using namespace tinyllm;
using tinyllm_test::contains;
using tokenizer_test::conformance;
using tokenizer_test::fixture_dir;
using tokenizer_test::real_tokenizer;

namespace {

struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        path = std::filesystem::temp_directory_path() /
               ("tinyllm_tok_" + std::to_string(std::random_device{}()) + "_" + std::to_string(::getpid()));
        std::filesystem::create_directories(path);
    }
    ~temp_dir() { std::filesystem::remove_all(path); }
    std::string write(const std::string& name, const std::string& content) const {
        const auto p = (path / name).string();
        std::ofstream(p, std::ios::binary) << content;
        return p;
    }
};

std::string byte_ranks(int extra_lines = 0) {
    std::string s;
    for (int b = 0; b < 256; ++b) s += detail::base64_encode(std::string(1, char(b))) + " " + std::to_string(b) + "\n";
    if (extra_lines) s += detail::base64_encode("ab") + " 256\n";
    return s;
}

}  // namespace

TEST_CASE("JSON reader") {
    const auto v = json::parse(R"({"a": [1, -2.5e3, true, false, null], "s": "x\u00e9\ud83d\ude00\n\"", "o": {}})");
    CHECK(v.at("a").at(0).as_int64() == 1);
    CHECK(v.at("a").at(1).as_double() == -2500.0);
    CHECK(v.at("a").at(2).as_bool());
    CHECK(v.at("a").at(4).is_null());
    CHECK(v.at("s").as_string() == "x\xC3\xA9\xF0\x9F\x98\x80\n\"");
    CHECK(v.at("o").size() == 0);
    CHECK(json::parse("12345678901234567").as_int64() == 12345678901234567LL);
    CHECK_THROWS_WITH(json::parse("{\"a\": [1, 2}", "f.json"), contains("f.json at byte 11 (line 1, column 12)"));
    CHECK_THROWS_WITH(json::parse("[1]\n x"), contains("line 2"));
    CHECK_THROWS_WITH(json::parse(R"("\ud800")"), contains("surrogate"));
    CHECK_THROWS_WITH(json::parse(R"("\udc00")"), contains("lone low surrogate"));
    CHECK_THROWS_WITH(json::parse("\"abc"), contains("unterminated"));
    CHECK_THROWS_WITH(json::parse("01"), contains("after the JSON value"));
    CHECK_THROWS_WITH(json::parse("[1,]"), contains("expected a value"));
    CHECK_THROWS_WITH(json::parse(std::string(600, '[')), contains("deeper"));
    CHECK_THROWS_WITH(json::parse("\"\xFF\""), contains("invalid UTF-8"));
    CHECK_THROWS_WITH(v.at("s").as_int64(), contains("is a string, expected a number"));
    CHECK(json::quote("a\"\n\x01") == "\"a\\\"\\n\\u0001\"");
}

TEST_CASE("Hugging Face tokenizer.json: same ids as the tokenizers library") {
    const std::string dir = fixture_dir();
    const auto expected = json::parse(detail::read_text_file(dir + "hf_ids.json"), "hf_ids.json");
    for (const char* file : {"hf_tokenizer.json", "hf_tokenizer_strings.json"}) {
        INFO(file);
        const tokenizer tok = load_tokenizer(dir + file);
        CHECK(tok.vocab_size() == 600);
        CHECK(tok.special_id("<|endoftext|>") == token_id(0));
        const auto& texts = expected.at("texts").as_array();
        const auto& ids = expected.at("ids").as_array();
        for (std::size_t k = 0; k < texts.size(); ++k) {
            std::vector<token_id> want;
            for (const auto& e : ids[k].as_array()) want.push_back(token_id(e.as_int64()));
            INFO("text " << k);
            CHECK(tok.encode(texts[k].as_string(), allowed_special::everything()) == want);
        }
    }
}

TEST_CASE("tinyllm format: save and load round trip") {
    temp_dir tmp;
    std::vector<tokenizer> toks;
    toks.push_back(load_hf_tokenizer_json(fixture_dir() + "hf_tokenizer.json"));
    if (const tokenizer* r = real_tokenizer("cl100k_base")) toks.push_back(*r);
    const auto& texts = conformance().at("texts").as_array();
    for (const auto& tok : toks) {
        const std::string path = tmp.write("t.tinyllm", "");
        save_tokenizer(tok, path);
        const tokenizer back = load_tokenizer(path);
        CHECK(back.pattern() == tok.pattern());
        CHECK(back.vocab_size() == tok.vocab_size());
        CHECK(back.specials().size() == tok.specials().size());
        CHECK(serialize_tokenizer(back) == serialize_tokenizer(tok));
        for (std::size_t k = 0; k < texts.size(); k += 7)
            CHECK(back.encode_ordinary(texts[k].as_string()) == tok.encode_ordinary(texts[k].as_string()));
    }
}

TEST_CASE("tokenizer.json written by hf_tokenizer_json reads back to the same tokenizer") {
    temp_dir tmp;
    std::vector<tokenizer> toks;
    toks.push_back(load_hf_tokenizer_json(fixture_dir() + "hf_tokenizer.json"));
    const auto& texts = conformance().at("texts").as_array();
    std::vector<std::string> corpus;
    for (std::size_t k = 0; k < texts.size(); ++k) corpus.push_back(texts[k].as_string());
    for (const pretokenizer p : {pretokenizer::r50k, pretokenizer::cl100k, pretokenizer::o200k, pretokenizer::llama3}) {
        bpe_train_options o;
        o.vocab_size = 400;
        o.pattern = p;
        o.special_tokens = {"<|endoftext|>", "<|pad|>"};
        toks.push_back(train_bpe(corpus, o));
    }
    for (const auto& tok : toks) {
        INFO("pattern " << pretokenizer_name(tok.pattern()) << ", " << tok.vocab_size() << " ids");
        const std::string path = tmp.write("tokenizer.json", "");
        save_hf_tokenizer_json(tok, path);
        const tokenizer back = load_hf_tokenizer_json(path);
        CHECK(back.pattern() == tok.pattern());
        CHECK(back.add_prefix_space() == tok.add_prefix_space());
        CHECK(back.vocab_size() == tok.vocab_size());
        CHECK(back.specials().size() == tok.specials().size());
        CHECK(back.vocab().merges().size() == tok.vocab().merges().size());
        CHECK(serialize_tokenizer(back) == serialize_tokenizer(tok));
        for (std::size_t k = 0; k < texts.size(); ++k)
            CHECK(back.encode_ordinary(texts[k].as_string()) == tok.encode_ordinary(texts[k].as_string()));
    }
    if (const tokenizer* r = real_tokenizer("cl100k_base"))
        CHECK_THROWS_WITH(hf_tokenizer_json(*r), contains("needs an explicit merge list"));
}

TEST_CASE("GPT-2 encoder.json + vocab.bpe gives tiktoken's gpt2 encoding") {
    temp_dir tmp;
    const tokenizer* r50k = real_tokenizer("r50k_base");
    // Without ../shared: a small vocabulary with two merges.
    std::vector<std::string> tokens;
    std::vector<std::pair<std::string, std::string>> splits;
    const bpe_vocab* v = r50k ? &r50k->vocab() : nullptr;
    const std::size_t n = v ? v->size() : 258;
    for (std::size_t id = 0; id < n; ++id) {
        if (v) tokens.emplace_back(v->bytes(token_id(id)));
        else tokens.push_back(id < 256 ? std::string(1, char(id)) : id == 256 ? "ab" : "abc");
    }
    // encoder.json: byte-to-unicode strings; vocab.bpe: one split per merged token.
    std::string encoder = "{";
    std::string merges = "#version: 0.2\n";
    bpe_vocab probe(tokens, std::vector<bool>(tokens.size(), true), {}, true, true);
    for (std::size_t id = 0; id < tokens.size(); ++id) {
        encoder += (id ? ", " : "") + json::quote(detail::bytes_to_unicode(tokens[id])) + ": " + std::to_string(id);
        const std::string& t = tokens[id];
        for (std::size_t k = 1; k < t.size(); ++k) {
            const token_id a = probe.find(t.substr(0, k)), b = probe.find(t.substr(k));
            if (a != bpe_vocab::none && b != bpe_vocab::none && static_cast<std::size_t>(a) < id &&
                static_cast<std::size_t>(b) < id) {
                merges += detail::bytes_to_unicode(t.substr(0, k)) + " " + detail::bytes_to_unicode(t.substr(k)) + "\n";
                break;
            }
        }
    }
    encoder += ", \"<|endoftext|>\": " + std::to_string(tokens.size()) + "}";
    const std::string enc_path = tmp.write("encoder.json", encoder), bpe_path = tmp.write("vocab.bpe", merges);
    const tokenizer gpt2 = load_gpt2(enc_path, bpe_path);
    CHECK(gpt2.special_id("<|endoftext|>") == token_id(tokens.size()));
    if (r50k) {
        const auto& texts = conformance().at("texts").as_array();
        for (const auto& t : texts) CHECK(gpt2.encode_ordinary(t.as_string()) == r50k->encode_ordinary(t.as_string()));
        CHECK(gpt2.encode("hello world<|endoftext|>", allowed_special::everything()) ==
              std::vector<token_id>{31373, 995, 50256});
    } else {
        CHECK(gpt2.encode_ordinary("xabc ab") == std::vector<token_id>{'x', 257, ' ', 256});
    }
    // Malformed files.
    CHECK_THROWS_WITH(load_gpt2(tmp.write("e1.json", "{\"a\": \"x\"}"), bpe_path),
                      contains("e1.json: the id of \"a\" is a string, expected a number"));
    CHECK_THROWS_WITH(load_gpt2(tmp.write("e2.json", "[1, 2"), bpe_path), contains("e2.json at byte 5"));
    CHECK_THROWS_WITH(load_gpt2(enc_path, tmp.write("m1.bpe", "#version: 0.2\na b c\n")),
                      contains("m1.bpe line 2: expected a merge 'a b'"));
    CHECK_THROWS_WITH(load_gpt2(enc_path, tmp.write("m2.bpe", "#version: 0.2\nqqqq zzzz\n")),
                      contains("m2.bpe line 2: merge"));
    CHECK_THROWS_WITH(load_gpt2(tmp.write("e3.json", "{\"a\": 0}"), bpe_path), contains("every byte"));
}

TEST_CASE("tiktoken rank files: malformed lines") {
    temp_dir tmp;
    CHECK_NOTHROW(load_tiktoken(tmp.write("ok.tiktoken", byte_ranks(1)), pretokenizer::r50k));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("a.tiktoken", byte_ranks() + "YWI=\n"), pretokenizer::r50k),
                      contains("a.tiktoken line 257: expected '<base64> <rank>'"));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("b.tiktoken", byte_ranks() + "Y*I= 256\n"), pretokenizer::r50k),
                      contains("b.tiktoken line 257: bad base64 character '*'"));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("c.tiktoken", byte_ranks() + "YWI= x1\n"), pretokenizer::r50k),
                      contains("c.tiktoken line 257: rank 'x1'"));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("d.tiktoken", byte_ranks() + "YWI= 3\n"), pretokenizer::r50k),
                      contains("d.tiktoken line 257: rank 3 appears twice"));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("e.tiktoken", "YWI= 0\n"), pretokenizer::r50k),
                      contains("byte 0 is missing"));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("f.tiktoken", ""), pretokenizer::r50k), contains("no tokens"));
    // Ranks may leave gaps, but not so wide that the vocabulary outgrows the file
    // (a 14-byte line must not allocate 10^8 entries): below twice its lines.
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("h.tiktoken", "QUI= 99999999\n"), pretokenizer::r50k),
                      contains("h.tiktoken line 1: rank 99999999 is implausibly large for a file of 1 lines"));
    CHECK_THROWS_WITH(load_tiktoken(tmp.write("i.tiktoken", byte_ranks() + "YWI= 514\n"), pretokenizer::r50k),
                      contains("i.tiktoken line 257: rank 514 is implausibly large for a file of 257 lines"));
    CHECK(load_tiktoken(tmp.write("j.tiktoken", byte_ranks() + "YWI= 513\n"), pretokenizer::r50k).vocab_size() == 514);
    CHECK_THROWS_WITH(load_tiktoken((tmp.path / "missing").string(), pretokenizer::r50k), contains("cannot open"));
    CHECK_THROWS_WITH(load_tokenizer(tmp.write("g.txt", byte_ranks())), contains("say which encoding"));
}

TEST_CASE("tiktoken rank files: a file named as another encoding is refused") {
    temp_dir tmp;
    // 256 ranks are no named encoding's file; p50k_base's count is not checked.
    const std::string bytes_only = tmp.write("bytes.tiktoken", byte_ranks());
    CHECK_THROWS_WITH(load_tiktoken_encoding("o200k_base", bytes_only),
                      contains("bytes.tiktoken holds ranks 0 .. 255, but o200k_base has 199998 (0 .. 199997)"));
    CHECK_THROWS_WITH(load_tokenizer(bytes_only, "gpt2"), contains("but gpt2 has 50256"));
    CHECK_NOTHROW(load_tiktoken_encoding("p50k_base", bytes_only));
    // The published files: each loads as its own encoding and is refused as another.
    const auto r50k = tokenizer_test::shared_vocab("r50k_base.tiktoken");
    const auto cl100k = tokenizer_test::shared_vocab("cl100k_base.tiktoken");
    if (!r50k || !cl100k) {
        WARN("../shared/data/tokenizers not found: the published rank files' part skipped");
        return;
    }
    CHECK(load_tokenizer(*r50k, "r50k_base").vocab_size() == 50257);
    CHECK_THROWS_WITH(load_tokenizer(*r50k, "cl100k_base"),
                      contains("holds ranks 0 .. 50255 (r50k_base's count), but cl100k_base has 100256"));
    CHECK_THROWS_WITH(load_tiktoken_encoding("r50k_base", *cl100k),
                      contains("holds ranks 0 .. 100255 (cl100k_base's count), but r50k_base has 50256"));
}

TEST_CASE("Hugging Face tokenizer.json: malformed fields") {
    const std::string good = detail::read_text_file(fixture_dir() + "hf_tokenizer_strings.json");
    auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    CHECK_NOTHROW(parse_hf_tokenizer_json(good, "t.json"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json("{}", "t.json"), contains("t.json: field \"model\""));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"type\": \"BPE\"", "\"type\": \"WordPiece\""), "t.json"),
                      contains("field \"model.type\""));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"type\": \"ByteLevel\"", "\"type\": \"Whitespace\""), "t.json"),
                      contains("field \"pre_tokenizer.type\""));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"merges\": [", "\"merges\": [\"a b c\", "), "t.json"),
                      contains("field \"model.merges[0]\": expected \"a b\""));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"merges\": [", "\"merges\": [\"zzzz qqqq\", "), "t.json"),
                      contains("field \"model.merges[0]\": merge"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"merges\": [", "\"merges\": [7, "), "t.json"),
                      contains("model.merges[0]"));
    // (A key the vocabulary does not have: a key given twice keeps its last value.)
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"vocab\": {", "\"vocab\": {\"xyzzy\": -1, "), "t.json"),
                      contains("model.vocab[\"xyzzy\"]"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(good.substr(0, 500), "t.json"), contains("malformed JSON in t.json"));
}

TEST_CASE("tinyllm format: malformed files") {
    const tokenizer tok = load_hf_tokenizer_json(fixture_dir() + "hf_tokenizer.json");
    const std::string good = serialize_tokenizer(tok);
    CHECK_NOTHROW(parse_tokenizer(good, "v.tinyllm"));
    CHECK_THROWS_WITH(parse_tokenizer("tinyllm-bpe 2\n", "v.tinyllm"), contains("v.tinyllm line 1: expected the header"));
    CHECK_THROWS_WITH(parse_tokenizer("tinyllm-bpe 1\npattern xyz\n", "v.tinyllm"), contains("line 2: unknown pattern"));
    CHECK_THROWS_WITH(parse_tokenizer(good.substr(0, good.size() / 2), "v.tinyllm"), contains("unexpected end of file"));
    std::string bad = good;
    bad.replace(bad.find("\nmerges ") + 1, 0, "");
    const auto merge_line = bad.find('\n', bad.find("\nmerges ") + 1) + 1;
    bad.replace(merge_line, bad.find('\n', merge_line) - merge_line, "1 2 3 0");
    CHECK_THROWS_WITH(parse_tokenizer(bad, "v.tinyllm"), contains("does not concatenate"));
}
