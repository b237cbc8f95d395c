// tests/test_tokenizer_io.cpp — the tokenizer file formats: Hugging Face
// tokenizer.json (agreement with the `tokenizers` library on a vocabulary it
// trained), GPT-2 encoder.json + vocab.bpe, tiktoken rank files, tinyllm's own
// format (save/load round trip), the JSON reader, and an error message for
// every kind of malformed file.
#include "support/catch.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/model_config.hpp>
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
    toks.push_back(toks.back());
    toks.back().set_template({0}, {1, 300});  // a special token and an ordinary one; the two lines are written
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
        CHECK(back.encode_with_template("a b") == tok.encode_with_template("a b"));
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
        // With a space put before the text: ByteLevel's with r50k, a normalizer with a Split.
        toks.emplace_back(toks.back().vocab(), p, toks.back().specials(), true);
    }
    toks.push_back(toks.front());
    toks.back().set_template({0}, {1, 300});  // written as a TemplateProcessing
    CHECK_THAT(hf_tokenizer_json(toks.back()), contains("\"post_processor\": {\"type\": \"TemplateProcessing\""));
    for (const auto& tok : toks) {
        INFO("pattern " << pretokenizer_name(tok.pattern()) << ", " << tok.vocab_size() << " ids, prefix space "
                        << tok.add_prefix_space());
        const std::string path = tmp.write("tokenizer.json", "");
        save_hf_tokenizer_json(tok, path);
        const tokenizer back = load_hf_tokenizer_json(path);
        CHECK(back.pattern() == tok.pattern());
        CHECK(back.add_prefix_space() == tok.add_prefix_space());
        CHECK(back.vocab_size() == tok.vocab_size());
        CHECK(back.specials().size() == tok.specials().size());
        CHECK(back.vocab().merges().size() == tok.vocab().merges().size());
        CHECK(serialize_tokenizer(back) == serialize_tokenizer(tok));
        CHECK(back.encode_with_template("a b") == tok.encode_with_template("a b"));
        for (std::size_t k = 0; k < texts.size(); ++k)
            CHECK(back.encode_ordinary(texts[k].as_string()) == tok.encode_ordinary(texts[k].as_string()));
    }
    if (const tokenizer* r = real_tokenizer("cl100k_base"))
        CHECK_THROWS_WITH(hf_tokenizer_json(*r), contains("needs an explicit merge list"));
}

TEST_CASE("tokenizer.json: a byte-level file's post-processor gives encode_with_template's ids") {
    // What the tokenizers library's encode(text) adds (tests/python/tokenizer_template_check.py
    // compares the ids with the library's): Llama 3's Sequence[ByteLevel, TemplateProcessing]
    // puts its BOS before the text; RoBERTa's cls and sep go around it; GPT-2's ByteLevel adds none.
    const std::string good = tinyllm::detail::read_text_file(fixture_dir() + "hf_tokenizer.json");
    const auto with_post = [&](const std::string& post) {
        std::string s = good;
        const std::string from = "\"post_processor\": null";
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return parse_hf_tokenizer_json(s.replace(at, from.size(), "\"post_processor\": " + post), "t.json");
    };
    const std::string bos = R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0]}}})";
    const tokenizer plain = with_post("null");
    const std::vector<token_id> text = plain.encode("The tiger");
    REQUIRE(!text.empty());
    CHECK(plain.encode_with_template("The tiger") == text);
    std::vector<token_id> want = text;
    want.insert(want.begin(), 0);
    CHECK(with_post(bos).encode_with_template("The tiger") == want);
    const std::string byte_level = R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true})";
    const tokenizer llama3 = with_post(R"({"type": "Sequence", "processors": [)" + byte_level + ", " + bos + "]}");
    CHECK(llama3.encode_with_template("The tiger") == want);
    CHECK(std::vector<token_id>(llama3.template_before().begin(), llama3.template_before().end()) == std::vector<token_id>{0});
    CHECK(with_post(byte_level).encode_with_template("The tiger") == text);
    want.push_back(1);
    CHECK(with_post(R"({"type": "RobertaProcessing", "sep": ["<pad>", 1], "cls": ["<|endoftext|>", 0]})")
              .encode_with_template("The tiger") == want);
    CHECK(with_post(R"({"type": "BertProcessing", "sep": ["<pad>", 1], "cls": ["<|endoftext|>", 0]})")
              .encode_with_template("The tiger") == want);
    // What cannot be read is named.
    CHECK_THROWS_WITH(with_post(R"({"type": "Sequence", "processors": [)" + bos + ", " + bos + "]}"),
                      contains("field \"post_processor.processors[1]\": a second post-processor that adds ids"));
    CHECK_THROWS_WITH(with_post(R"({"type": "Nonsense"})"),
                      contains("field \"post_processor\": \"Nonsense\" is not supported"));
    CHECK_THROWS_WITH(with_post(R"({"type": "RobertaProcessing", "sep": ["</s>"], "cls": ["<s>", 0]})"),
                      contains("field \"post_processor.sep\": expected [\"token\", id]"));
    std::string unknown_id = bos;
    unknown_id.replace(unknown_id.find("[0]"), 3, "[5000]");
    CHECK_THROWS_WITH(with_post(unknown_id), contains("the template's id 5000 is neither in model.vocab nor an added token"));
    tokenizer t = plain;
    CHECK_THROWS_WITH(t.set_template({5000}, {}), contains("neither a token of the vocabulary nor a special token"));
}

TEST_CASE("tokenizer.json: a prefix space is one space before the text, as in the tokenizers library") {
    const auto& texts = conformance().at("texts").as_array();
    std::vector<std::string> corpus;
    for (std::size_t k = 0; k < texts.size(); ++k) corpus.push_back(texts[k].as_string());
    bpe_train_options o;
    o.vocab_size = 400;
    o.pattern = pretokenizer::cl100k;
    o.special_tokens = {"<|endoftext|>"};
    const tokenizer trained = train_bpe(corpus, o);
    const tokenizer prefixed(trained.vocab(), trained.pattern(), trained.specials(), true);
    // One space before each stretch of text that does not start with one, not
    // before every piece: "Hello world, the cat." is " Hello world, the cat.".
    const std::string text = "Hello world, the cat.";
    CHECK(prefixed.encode_ordinary(text) == trained.encode_ordinary(" " + text));
    CHECK(prefixed.encode_ordinary(" " + text) == trained.encode_ordinary(" " + text));
    CHECK(prefixed.encode("a<|endoftext|>b", allowed_special::everything()) ==
          prefixed.encode("a<|endoftext|> b", allowed_special::everything()));
    // After a Split, ByteLevel's add_prefix_space would put a space before every
    // piece (" Hello", " world", " ,", ...), so the writer says it with a
    // normalizer, which the tokenizers library reads to tinyllm's ids (checked
    // with tokenizers 0.23.3 on the conformance texts), and the reader reads back.
    const std::string written = hf_tokenizer_json(prefixed);
    CHECK(written.find(std::string(detail::hf_prefix_space_normalizer)) != std::string::npos);
    CHECK(written.find("\"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": false") ==
          std::string::npos);
    const tokenizer back = parse_hf_tokenizer_json(written, "p.json");
    CHECK(back.add_prefix_space());
    CHECK(back.encode_ordinary(text) == prefixed.encode_ordinary(text));
    // The reader refuses the per-piece layout, and any other normalizer.
    const std::string plain = hf_tokenizer_json(trained);
    const auto edited = [](std::string s, const std::string& from, const std::string& to) {
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    const std::string bl = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false";
    CHECK_THROWS_WITH(
        parse_hf_tokenizer_json(edited(plain, bl, "{\"type\": \"ByteLevel\", \"add_prefix_space\": true"), "p.json"),
        contains("p.json: field \"pre_tokenizer.pretokenizers[1].add_prefix_space\": true after a Split "
                 "is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(written, "\"prepend\": \" \"", "\"prepend\": \"  \""), "p.json"),
                      contains("p.json: field \"normalizer\": normalizers are not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(edited(written, "\\\\A  ", "^  "), "p.json"),
                      contains("field \"normalizer\""));
    // A Split after ByteLevel would cut the byte-to-unicode text: refused.
    const auto split_at = plain.find("{\"type\": \"Split\"");
    const auto bl_at = plain.find(bl);
    REQUIRE(split_at < bl_at);
    const std::string split = plain.substr(split_at, bl_at - 2 - split_at);  // without the ", " before ByteLevel
    const std::string byte_level = plain.substr(bl_at, plain.find('}', bl_at) + 1 - bl_at);
    const std::string swapped =
        edited(plain, split + ", " + byte_level,
               edited(byte_level, "\"use_regex\": false", "\"use_regex\": true") + ", " + split);
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(swapped, "p.json"),
                      contains("field \"pre_tokenizer.pretokenizers[1]\": an entry of type \"Split\" here"));
}

TEST_CASE("tokenizer.json: settings that would change the ids are refused by name") {
    const auto& texts = conformance().at("texts").as_array();
    std::vector<std::string> corpus;
    for (std::size_t k = 0; k < texts.size(); ++k) corpus.push_back(texts[k].as_string());
    bpe_train_options o;
    o.vocab_size = 300;
    o.pattern = pretokenizer::o200k;
    o.special_tokens = {"<|endoftext|>"};
    const std::string good = hf_tokenizer_json(train_bpe(corpus, o));
    const auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    CHECK_NOTHROW(parse_hf_tokenizer_json(good, "s.json"));
    // Added tokens that take the spaces beside them, or match whole words only.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"lstrip\": false", "\"lstrip\": true"), "s.json"),
                      contains("s.json: field \"added_tokens[0].lstrip\": true is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"rstrip\": false", "\"rstrip\": true"), "s.json"),
                      contains("s.json: field \"added_tokens[0].rstrip\": true is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"single_word\": false", "\"single_word\": true"), "s.json"),
                      contains("field \"added_tokens[0].single_word\""));
    // A Split that removes its matches, or splits on what does not match.
    CHECK_THROWS_WITH(
        parse_hf_tokenizer_json(with("\"behavior\": \"Isolated\"", "\"behavior\": \"Removed\""), "s.json"),
        contains("s.json: field \"pre_tokenizer.pretokenizers[0].behavior\": \"Removed\" is not supported"));
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"invert\": false", "\"invert\": true"), "s.json"),
                      contains("s.json: field \"pre_tokenizer.pretokenizers[0].invert\": only false"));
    // BPE-dropout; a dropout of 0 drops nothing.
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(with("\"dropout\": null", "\"dropout\": 0.5"), "s.json"),
                      contains("s.json: field \"model.dropout\""));
    CHECK_NOTHROW(parse_hf_tokenizer_json(with("\"dropout\": null", "\"dropout\": 0.0"), "s.json"));
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
    // encoder.json: byte-to-unicode strings; vocab.bpe: the merge that made each
    // token, in id order (GPT-2's ranks are its ids), recovered as GPT-2's
    // encoder would make the token: BPE on its bytes with only the merges ranked
    // below it stops at the two tokens its own merge joins. (load_gpt2 ranks
    // merges by their line, so the list must be the one GPT-2 has, not just any
    // split of each token into two.)
    std::string encoder = "{";
    std::string merges = "#version: 0.2\n";
    bpe_vocab probe(tokens, std::vector<bool>(tokens.size(), true), {}, true, true);
    for (std::size_t id = 0; id < tokens.size(); ++id) {
        encoder += (id ? ", " : "") + json::quote(detail::bytes_to_unicode(tokens[id])) + ": " + std::to_string(id);
        const std::string& t = tokens[id];
        if (t.size() < 2) continue;
        std::vector<token_id> parts;
        for (const char c : t) parts.push_back(probe.byte_token(static_cast<unsigned char>(c)));
        for (;;) {
            std::size_t best = parts.size();
            std::uint32_t best_rank = static_cast<std::uint32_t>(id);
            for (std::size_t i = 0; i + 1 < parts.size(); ++i)
                if (const auto [rank, merged] = probe.merge_of(parts[i], parts[i + 1]); rank < best_rank)
                    best = i, best_rank = rank;
            if (best == parts.size()) break;
            parts[best] = probe.merge_of(parts[best], parts[best + 1]).second;
            parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
        }
        REQUIRE(parts.size() == 2);
        merges += detail::bytes_to_unicode(probe.bytes(parts[0])) + " " +
                  detail::bytes_to_unicode(probe.bytes(parts[1])) + "\n";
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

TEST_CASE("GPT-2 encoder.json + vocab.bpe: merges rank by their line in vocab.bpe, not by id") {
    temp_dir tmp;
    std::string encoder = "{";
    for (int b = 0; b < 256; ++b)
        encoder +=
            (b ? ", " : "") + json::quote(detail::bytes_to_unicode(std::string(1, char(b)))) + ": " + std::to_string(b);
    encoder += ", \"ab\": 256, \"bc\": 257}";
    const std::string enc_path = tmp.write("encoder.json", encoder);
    // "b c" (making id 257) ranks before "a b" (id 256): "abc" is a + bc, as in
    // Hugging Face's BPE.from_file and GPT-2's own encoder.
    const tokenizer tok = load_gpt2(enc_path, tmp.write("vocab.bpe", "#version: 0.2\nb c\na b\n"));
    CHECK(tok.encode_ordinary("abc") == std::vector<token_id>{'a', 257});
    CHECK(load_gpt2(enc_path, tmp.write("v2.bpe", "#version: 0.2\na b\nb c\n")).encode_ordinary("abc") ==
          std::vector<token_id>{256, 'c'});
    // The merge list is explicit, so it is written as a tokenizer.json with it.
    const tokenizer back = parse_hf_tokenizer_json(hf_tokenizer_json(tok), "g.json");
    CHECK(back.encode_ordinary("abc") == std::vector<token_id>{'a', 257});
}

TEST_CASE("loaders bound every id and count by what the file holds") {
    temp_dir tmp;
    // Each of these is about 100 bytes and had sized a vector from the number,
    // allocating gigabytes before anything was checked.
    const std::string own =
        "tinyllm-bpe 1\npattern r50k\nwhole-piece-lookup 0\ntiktoken-merges 0\nadd-prefix-space 0\n";
    CHECK_THROWS_WITH(parse_tokenizer(own + "tokens 100000000\n", "big.tinyllm"),
                      contains("big.tinyllm line 6: unexpected end of file: 'tokens 100000000' counts more entries "
                               "than the 0 lines left"));
    const std::string good = serialize_tokenizer(load_hf_tokenizer_json(fixture_dir() + "hf_tokenizer.json"));
    const auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, s.find('\n', at) - at, to);
    };
    CHECK_NOTHROW(parse_tokenizer(good, "v.tinyllm"));
    CHECK_THROWS_WITH(parse_tokenizer(with("\nmerges ", "\nmerges 99999999"), "v.tinyllm"),
                      contains("'merges 99999999' counts more entries than the"));
    CHECK_THROWS_WITH(parse_tokenizer(with("\nspecials ", "\nspecials 999999"), "v.tinyllm"),
                      contains("'specials 999999' counts more entries than the"));
    // hf_tokenizer.json has 600 ids, two of them special.
    std::string far = good;
    const std::string first_special = "\nspecials 2\n0 ";
    REQUIRE(far.find(first_special) != std::string::npos);
    far.replace(far.find(first_special), first_special.size(), "\nspecials 2\n99999999 ");
    CHECK_THROWS_WITH(parse_tokenizer(far, "v.tinyllm"),
                      contains("special token id 99999999 is implausibly large for a file of 600 tokens and 2 special "
                               "tokens (ids must be below 1204)"));
    CHECK_THROWS_WITH(load_gpt2(tmp.write("big.json", "{\"a\": 99999999}"), tmp.write("vocab.bpe", "#version: 0.2\n")),
                      contains("big.json: the id of \"a\" is 99999999, implausibly large for a file of 1 tokens (ids "
                               "must be below 2)"));
    const std::string byte_level =
        R"({"model": {"type": "BPE", "vocab": {"a": 99999999}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}})";
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(byte_level, "big.json"),
                      contains("big.json: field \"model.vocab[\"a\"]\": id 99999999 is implausibly large for a file "
                               "of 1 vocabulary entries and added tokens (ids must be below 2)"));
    const std::string sentencepiece = R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 99999999},
        "merges": []}, "decoder": {"type": "Metaspace", "replacement": "▁"}})";
    CHECK_THROWS_WITH(parse_hf_tokenizer_json(sentencepiece, "sp.json"),
                      contains("sp.json: field \"model.vocab[\"a\"]\": id 99999999 is not below the 1 pieces"));
    // Added tokens: the fixture has 600 vocabulary entries (its two special
    // tokens among them) and 2 added tokens, so ids must be below 1204. Gaps
    // are allowed: a token well above the vocabulary still loads.
    const std::string hf = detail::read_text_file(fixture_dir() + "hf_tokenizer_strings.json");
    const auto added = [&](const std::string& id) {
        std::string s = hf;
        const std::string list = "\"added_tokens\": [";
        REQUIRE(s.find(list) != std::string::npos);
        return s.insert(s.find(list) + list.size(), "{\"id\": " + id + ", \"content\": \"<|x|>\"}, ");
    };
    CHECK_THROWS_WITH(
        parse_hf_tokenizer_json(added("99999999"), "a.json"),
        contains("a.json: field \"added_tokens[0].id\": id 99999999 is implausibly large for a file of 603 "
                 "vocabulary entries and added tokens (ids must be below 1206)"));
    CHECK(parse_hf_tokenizer_json(added("1205"), "a.json").vocab_size() == 1206);
}

TEST_CASE("tiktoken rank files: malformed lines") {
    temp_dir tmp;
    CHECK_NOTHROW(load_tiktoken(tmp.write("ok.tiktoken", byte_ranks(1)), pretokenizer::r50k));
    // A folder reads as nothing on Linux: named, not taken for an empty (or tiktoken) file.
    std::filesystem::create_directory(tmp.path / "folder.tiktoken");
    CHECK_THROWS_WITH(load_tiktoken((tmp.path / "folder.tiktoken").string(), pretokenizer::r50k),
                      contains("folder.tiktoken' is a folder, not a file"));
    CHECK_THROWS_WITH(load_tokenizer((tmp.path / "folder.tiktoken").string()), contains("is a folder, not a file"));
    // A device reads without end (/dev/zero would fill the memory): refused by name before reading.
    if (std::filesystem::exists("/dev/zero")) {
        CHECK_THROWS_WITH(load_tokenizer("/dev/zero"), contains("'/dev/zero' is a device or socket, not a file"));
        CHECK_THROWS_WITH(tinyllm::load_sentencepiece_model("/dev/zero"),
                          contains("'/dev/zero' is a device or socket, not a SentencePiece model"));
        CHECK_THROWS_WITH(tinyllm::detail::read_json_file("/dev/zero"), contains("is a device or socket, not a JSON file"));
    }
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
