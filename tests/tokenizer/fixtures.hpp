// tests/tokenizer/fixtures.hpp — where the tokenizer tests find their data:
// the committed fixtures (tests/fixtures/tokenizer/, made by
// tools/gen-tokenizer-fixtures) and the real vocabularies in ../shared.
#pragma once

#include <tinyllm/detail/json.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>

namespace tokenizer_test {

inline std::string fixture_dir() {
    std::string here = __FILE__;  // .../tests/tokenizer/fixtures.hpp
    here = here.substr(0, here.rfind('/'));
    here = here.substr(0, here.rfind('/'));
    return here + "/fixtures/tokenizer/";
}

inline const tinyllm::json::value& conformance() {
    static const tinyllm::json::value doc = [] {
        const std::string path = fixture_dir() + "conformance.json";
        return tinyllm::json::parse(tinyllm::detail::read_text_file(path), path);
    }();
    return doc;
}

// Path of a file in ../shared/data/tokenizers, or nullopt when ../shared is absent.
inline std::optional<std::string> shared_vocab(const std::string& name) {
    const char* dir = std::getenv("TINYLLM_SHARED_DIR");
    if (!dir || !*dir) return std::nullopt;
    std::string path = std::string(dir) + "/data/tokenizers/" + name;
    if (!std::ifstream(path)) return std::nullopt;
    return path;
}

// The real tokenizers, loaded once per test program (nullptr without ../shared).
inline const tinyllm::tokenizer* real_tokenizer(const std::string& encoding) {
    static std::optional<tinyllm::tokenizer> r50k, cl100k;
    static bool loaded = false;
    if (!loaded) {
        loaded = true;
        if (auto p = shared_vocab("r50k_base.tiktoken")) r50k = tinyllm::load_tiktoken_encoding("r50k_base", *p);
        if (auto p = shared_vocab("cl100k_base.tiktoken")) cl100k = tinyllm::load_tiktoken_encoding("cl100k_base", *p);
    }
    auto& t = encoding == "r50k_base" ? r50k : cl100k;
    return t ? &*t : nullptr;
}

}  // namespace tokenizer_test
