// tests/tokenizer/fixtures.hpp — where the tokenizer tests find their data:
// the committed fixtures (tests/fixtures/tokenizer/, made by
// tools/gen-tokenizer-fixtures) and the real vocabularies in ../shared.
#pragma once

#include <tinyllm/detail/json.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace tokenizer_test {

// The committed fixtures' folder (with a trailing '/'), the first of:
// $TINYLLM_TEST_FIXTURES (set by tools/gpu-check, or by hand), the folder next to
// the test program when the build folder sits in the checkout (build*/bin/ ->
// tests/fixtures/), and the source path compiled in. Test programs run on
// another machine (a GPU machine, say) find their data without a rebuild.
inline std::string fixture_dir() {
    namespace fs = std::filesystem;
    std::vector<fs::path> roots;
    if (const char* env = std::getenv("TINYLLM_TEST_FIXTURES"); env && *env) roots.emplace_back(env);
    std::error_code ec;
    if (const fs::path exe = fs::read_symlink("/proc/self/exe", ec); !ec)
        roots.push_back(exe.parent_path().parent_path().parent_path() / "tests" / "fixtures");
    const fs::path here = __FILE__;  // .../tests/tokenizer/fixtures.hpp
    roots.push_back(here.parent_path().parent_path() / "fixtures");
    for (const auto& root : roots)
        if (fs::exists(root / "tokenizer" / "conformance.json")) return (root / "tokenizer").string() + "/";
    return (roots.back() / "tokenizer").string() + "/";
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

// The SentencePiece fixtures (tools/make-sentencepiece-fixtures), beside the byte-level ones.
inline std::string sentencepiece_dir() { return fixture_dir() + "../sentencepiece/"; }

// A JSON fixture of that folder, parsed once per process.
inline const tinyllm::json::value& sentencepiece_json(const std::string& name) {
    static std::map<std::string, tinyllm::json::value> docs;
    auto it = docs.find(name);
    if (it == docs.end()) {
        const std::string path = sentencepiece_dir() + name;
        it = docs.emplace(name, tinyllm::json::parse(tinyllm::detail::read_text_file(path), path)).first;
    }
    return it->second;
}

// A JSON array of token ids.
inline std::vector<tinyllm::token_id> ids_of(const tinyllm::json::value& a) {
    std::vector<tinyllm::token_id> ids;
    for (const auto& v : a.as_array()) ids.push_back(static_cast<tinyllm::token_id>(v.as_int64()));
    return ids;
}

}  // namespace tokenizer_test
