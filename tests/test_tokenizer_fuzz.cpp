// tests/test_tokenizer_fuzz.cpp — the libFuzzer target tests/fuzz/fuzz_tokenizer.cpp
// run as an ordinary test: its entry point over a seed corpus (the fixture
// files, each under every mode) and a few thousand deterministic mutations of
// it (bit flips, truncations, splices, random bytes). Every invariant the
// fuzzer checks aborts the test here too.
#define TINYLLM_FUZZ_NO_ENTRY
#include "fuzz/fuzz_tokenizer.cpp"

#include "support/catch.hpp"
#include "support/compare.hpp"
#include "tokenizer/fixtures.hpp"

#include <random>
#include <string>
#include <vector>

TEST_CASE("fuzz entry point over a seed corpus and its mutations") {
    const std::string dir = tokenizer_test::fixture_dir();
    std::vector<std::string> seeds;
    for (const char* f : {"hf_tokenizer.json", "hf_tokenizer_strings.json", "hf_corpus.txt"})
        seeds.push_back(tinyllm::detail::read_text_file(dir + f));
    {
        std::string ranks;
        for (int b = 0; b < 256; ++b)
            ranks += tinyllm::detail::base64_encode(std::string(1, char(b))) + " " + std::to_string(b) + "\n";
        ranks += tinyllm::detail::base64_encode("ab") + " 256\n";
        seeds.push_back(ranks);
        seeds.push_back(tinyllm::serialize_tokenizer(tinyllm_fuzz::trained()));
    }
    const auto& texts = tokenizer_test::conformance().at("texts").as_array();
    for (std::size_t k = 0; k < texts.size(); k += 5) seeds.push_back(texts[k].as_string());

    auto run = [](std::uint8_t mode, const std::string& body) {
        std::string input(1, char(mode));
        input += body;
        tinyllm_fuzz::one_input(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
    };
    std::size_t inputs = 0;
    for (const auto& s : seeds)
        for (std::uint8_t mode = 0; mode < 6; ++mode, ++inputs) run(mode, s);

    std::mt19937_64 rng(tinyllm_test::test_seed());
    for (int trial = 0; trial < 3000; ++trial, ++inputs) {
        std::string s = seeds[rng() % seeds.size()];
        if (s.size() > 4096 && rng() % 2) s = s.substr(rng() % (s.size() - 4096), 4096);
        const int edits = 1 + int(rng() % 8);
        for (int e = 0; e < edits && !s.empty(); ++e) {
            const std::size_t at = rng() % s.size();
            switch (rng() % 5) {
                case 0: s[at] = char(s[at] ^ (1 << (rng() % 8))); break;   // bit flip
                case 1: s.resize(at); break;                               // truncate
                case 2: s.insert(at, 1, char(rng() & 0xFF)); break;        // random byte
                case 3: s.erase(at, 1 + rng() % 16); break;                // delete a run
                default: {                                                 // splice another seed
                    const std::string& o = seeds[rng() % seeds.size()];
                    const std::size_t from = rng() % (o.size() + 1);
                    s.insert(at, o.substr(from, rng() % 64));
                }
            }
        }
        INFO("seed " << tinyllm_test::test_seed() << " trial " << trial);
        run(std::uint8_t(rng() % 6), s);
    }
    CHECK(inputs > 3000);
}
