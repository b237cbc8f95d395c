// tests/test_tokenizer_train.cpp — BPE training: the incremental trainer
// (pair index + heap with lazy invalidation) learns exactly the merges of the
// obvious algorithm that recounts every pair of the corpus after each merge,
// encoding replays the training segmentation, and save/load round-trips.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "tokenizer/fixtures.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace tinyllm;

namespace {

struct naive_result {
    std::vector<std::pair<std::string, std::string>> merges;  // as byte strings
    std::map<std::string, std::vector<std::string>> segmentation;
};

// The textbook trainer: recount all pairs after every merge.
naive_result naive_train(const std::vector<std::string>& texts, pretokenizer p, std::size_t merges_wanted) {
    std::map<std::string, std::uint64_t> counts;
    for (const auto& t : texts) {
        // Training cuts the special token's string out of the text.
        std::size_t at = 0;
        for (;;) {
            const std::size_t e = t.find("<|endoftext|>", at);
            const std::string part = t.substr(at, e == std::string::npos ? std::string::npos : e - at);
            for (auto piece : pretokenize(part, p)) ++counts[std::string(piece)];
            if (e == std::string::npos) break;
            at = e + 13;
        }
    }
    std::map<std::string, std::vector<std::string>> words;
    for (const auto& [w, c] : counts) {
        std::vector<std::string> s;
        for (char ch : w) s.emplace_back(1, ch);
        words[w] = s;
    }
    naive_result r;
    while (r.merges.size() < merges_wanted) {
        std::map<std::pair<std::string, std::string>, std::uint64_t> pairs;
        for (const auto& [w, s] : words)
            for (std::size_t i = 0; i + 1 < s.size(); ++i) pairs[{s[i], s[i + 1]}] += counts[w];
        if (pairs.empty()) break;
        // Highest count; ties: smallest (left, right) — std::map iterates in that order.
        auto best = pairs.begin();
        for (auto it = pairs.begin(); it != pairs.end(); ++it)
            if (it->second > best->second) best = it;
        const auto [a, b] = best->first;
        r.merges.push_back({a, b});
        for (auto& [w, s] : words) {
            std::vector<std::string> out;
            for (std::size_t i = 0; i < s.size(); ++i) {
                if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) out.push_back(a + b), ++i;
                else out.push_back(s[i]);
            }
            s = out;
        }
    }
    r.segmentation = words;
    return r;
}

}  // namespace

TEST_CASE("training: the incremental trainer learns the naive trainer's merges") {
    std::mt19937 rng(tinyllm_test::test_seed());
    const auto& all = tokenizer_test::conformance().at("texts").as_array();
    for (int trial = 0; trial < 3; ++trial) {
        std::vector<std::string> texts;
        for (int k = 0; k < 40; ++k) texts.push_back(all[rng() % all.size()].as_string());
        const auto p = trial == 0 ? pretokenizer::r50k : trial == 1 ? pretokenizer::cl100k : pretokenizer::o200k;
        bpe_train_options opt;
        opt.vocab_size = 256 + 150 + 1;
        opt.pattern = p;
        opt.special_tokens = {"<|endoftext|>"};
        std::size_t calls = 0;
        opt.progress = [&](std::size_t done, std::size_t total) {
            ++calls;
            CHECK(done <= total);
        };
        const tokenizer tok = train_bpe(texts, opt);
        const naive_result want = naive_train(texts, p, 150);
        const auto merges = tok.vocab().merges();
        REQUIRE(merges.size() == want.merges.size());
        CHECK(calls == merges.size());
        for (std::size_t k = 0; k < merges.size(); ++k) {
            INFO("trial " << trial << " merge " << k);
            CHECK(std::string(tok.vocab().bytes(merges[k].left)) == want.merges[k].first);
            CHECK(std::string(tok.vocab().bytes(merges[k].right)) == want.merges[k].second);
            CHECK(merges[k].merged == static_cast<token_id>(256 + k));
        }
        CHECK(tok.special_id("<|endoftext|>") == token_id(256 + merges.size()));
        // Encoding a training word replays the training segmentation.
        for (const auto& [w, seg] : want.segmentation) {
            std::vector<std::string> got;
            for (auto id : tok.vocab().encode_piece(w)) got.emplace_back(tok.token_bytes(id));
            CHECK(got == seg);
        }
        for (const auto& t : texts) CHECK(tok.decode(tok.encode_ordinary(t)) == t);
    }
}

TEST_CASE("training: a hand-checked example") {
    bpe_train_options opt;
    opt.vocab_size = 256 + 3;
    const tokenizer tok = train_bpe({"aaab aaab aaab ab"}, opt);
    // Words: "aaab" x1, " aaab" x2, " ab" x1. Pair counts: (a,a) 6, (a,b) 4, (' ',a) 3.
    // Merge 1: aa.  Words: [aa a b] [' ' aa a b]x2 [' ' a b]. Counts: (aa,a) 3, (a,b) 4, (' ',aa) 2, (' ',a) 1.
    // Merge 2: ab.  Words: [aa ab] [' ' aa ab]x2 [' ' ab]. Counts: (aa,ab) 3, (' ',aa) 2, (' ',ab) 1.
    // Merge 3: aaab.
    const auto m = tok.vocab().merges();
    REQUIRE(m.size() == 3);
    CHECK(tok.vocab().bytes(m[0].merged) == "aa");
    CHECK(tok.vocab().bytes(m[1].merged) == "ab");
    CHECK(tok.vocab().bytes(m[2].merged) == "aaab");
    CHECK(tok.encode_ordinary("aaab aab") == std::vector<token_id>{258, ' ', 256, 'b'});
}

TEST_CASE("training: vocabulary size, special tokens, save/load") {
    const std::string dir = tokenizer_test::fixture_dir();
    bpe_train_options opt;
    opt.vocab_size = 400;
    opt.pattern = pretokenizer::cl100k;
    opt.special_tokens = {"<|endoftext|>", "<|pad|>"};
    const tokenizer tok = train_bpe_files({dir + "hf_corpus.txt"}, opt);
    CHECK(tok.vocab_size() == 400);
    CHECK(tok.special_id("<|pad|>") == token_id(399));
    const std::string text = detail::read_text_file(dir + "hf_corpus.txt");
    const auto ids = tok.encode_ordinary(text);
    CHECK(ids.size() * 5 < text.size() * 3);  // it compresses its own training text (mostly random scripts)
    const auto path = (std::filesystem::temp_directory_path() / "tinyllm_trained.tinyllm").string();
    save_tokenizer(tok, path);
    const tokenizer back = load_tokenizer(path);
    std::filesystem::remove(path);
    CHECK(back.encode_ordinary(text) == ids);
    CHECK(back.encode("x<|pad|>", {"<|pad|>"}) == std::vector<token_id>{'x', 399});
    CHECK_THROWS_WITH(train_bpe({"x"}, bpe_train_options{100, pretokenizer::r50k, {}, {}}),
                      tinyllm_test::contains("at least 256"));
    // An empty special token (it had made add_text loop forever).
    CHECK_THROWS_WITH(train_bpe({"hello world"}, bpe_train_options{300, pretokenizer::r50k, {"<|a|>", ""}, {}}),
                      tinyllm_test::contains("special_tokens[1] is empty"));
}
