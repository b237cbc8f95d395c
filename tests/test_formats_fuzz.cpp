// tests/test_formats_fuzz.cpp — the libFuzzer target tests/fuzz/fuzz_formats.cpp
// run as an ordinary test: its entry point over a seed corpus (the target's own
// small files, the SentencePiece fixture models and the Hugging Face fixtures'
// config.json when ../shared is there, each under every reader) and a few
// thousand deterministic mutations of it (bit flips, truncations, splices,
// random bytes). Every invariant the fuzzer checks aborts the test here too.
#define TINYLLM_FUZZ_NO_ENTRY
#include "fuzz/fuzz_formats.cpp"

#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"
#include "tokenizer/fixtures.hpp"

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

// The seeds, each with the reader it is a valid file for.
std::vector<std::pair<tinyllm_fuzz::reader, std::string>> seeds() {
    using tinyllm_fuzz::reader;
    auto all = tinyllm_fuzz::seed_corpus();
    const std::string dir = tokenizer_test::fixture_dir() + "../sentencepiece/";
    for (const char* f : {"bpe.model", "unigram.model", "bpe_ws.model", "unigram_ws.model"})
        all.emplace_back(reader::sentencepiece, tinyllm_fuzz::read_bytes(dir + f));
    for (const char* arch : {"gpt2", "llama", "mixtral"})
        if (const std::string hf = tinyllm_test::fixture_dir(arch); !hf.empty())
            all.emplace_back(reader::config, tinyllm_fuzz::read_bytes(hf + "/config.json"));
    return all;
}

void run(std::uint8_t mode, const std::string& body) {
    std::string input(1, static_cast<char>(mode));
    input += body;
    tinyllm_fuzz::one_input(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

}  // namespace

// TINYLLM_FUZZ_SEEDS=DIR also writes the seeds to DIR as the fuzzer's inputs
// (the reader's number, then the file): a starting corpus for fuzz_formats.
TEST_CASE("every seed is a valid file for its reader") {
    const char* out = std::getenv("TINYLLM_FUZZ_SEEDS");
    if (out && *out) std::filesystem::create_directories(out);
    int n = 0;
    for (const auto& [r, body] : seeds()) {
        INFO("reader " << tinyllm_fuzz::reader_name(r) << ", " << body.size() << " bytes");
        REQUIRE(!body.empty());
        CHECK_NOTHROW(tinyllm_fuzz::read_as(r, body));
        if (out && *out)
            tinyllm_fuzz::write_file((std::filesystem::path(out) / ("seed_" + std::to_string(n++))).string(),
                                     std::string(1, static_cast<char>(r)) + body);
    }
}

TEST_CASE("fuzz entry point over a seed corpus and its mutations") {
    const auto corpus = seeds();
    std::size_t inputs = 0;
    for (const auto& s : corpus)
        for (std::uint8_t mode = 0; mode < tinyllm_fuzz::reader_count; ++mode, ++inputs) run(mode, s.second);

    // Mutations of a seed, mostly read by its own reader (a mutated file of the
    // right kind gets furthest), sometimes by another.
    std::mt19937_64 rng(tinyllm_test::test_seed());
    for (int trial = 0; trial < 3000; ++trial, ++inputs) {
        const auto& [r, original] = corpus[rng() % corpus.size()];
        std::string s = original;
        const int edits = 1 + static_cast<int>(rng() % 8);
        for (int e = 0; e < edits && !s.empty(); ++e) {
            const std::size_t at = rng() % s.size();
            switch (rng() % 6) {
                case 0:
                    s[at] = static_cast<char>(s[at] ^ (1 << (rng() % 8)));
                    break;  // bit flip
                case 1:
                    s.resize(at);
                    break;  // truncate
                case 2:
                    s.insert(at, 1, static_cast<char>(rng() & 0xFF));
                    break;  // random byte
                case 3:
                    s.erase(at, 1 + rng() % 16);
                    break;  // delete a run
                case 4:
                    s[at] = "0123456789-.e\"{}[],:"[rng() % 20];
                    break;  // a JSON or digit byte
                default: {  // splice another seed
                    const std::string& o = corpus[rng() % corpus.size()].second;
                    const std::size_t from = rng() % (o.size() + 1);
                    s.insert(at, o.substr(from, rng() % 64));
                }
            }
        }
        const auto mode = static_cast<std::uint8_t>(rng() % 4 ? static_cast<int>(r) : static_cast<int>(rng() % 256));
        INFO(
            "seed " << tinyllm_test::test_seed() << " trial " << trial << " reader "
                    << tinyllm_fuzz::reader_name(static_cast<tinyllm_fuzz::reader>(mode % tinyllm_fuzz::reader_count)));
        run(mode, s);
    }
    CHECK(inputs > 3000);
}
