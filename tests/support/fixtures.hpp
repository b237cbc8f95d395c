// tests/support/fixtures.hpp — the Hugging Face fixtures of ../shared/fixtures/hf
// (tiny GPT-2, Llama and Mixtral checkpoints with transformers' outputs), for
// the CPU and the CUDA model tests. Tests skip cleanly when they are absent.
//
// Where: $TINYLLM_SHARED_DIR/fixtures/hf/<name> (CTest sets the variable to the
// checkout's ../shared), else ../shared/fixtures/hf/<name> from the working dir.
#pragma once

#include <tinyllm/detail/json.hpp>
#include <tinyllm/model.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace tinyllm_test {

// The fixture's folder, or "" when it is not there.
inline std::string fixture_dir(const std::string& name) {
    const char* shared = std::getenv("TINYLLM_SHARED_DIR");
    const std::filesystem::path dir =
        std::filesystem::path(shared && *shared ? shared : "../shared") / "fixtures" / "hf" / name;
    return std::filesystem::exists(dir / "config.json") ? dir.string() : "";
}

inline std::vector<std::int32_t> ids_of(const tinyllm::json::value& array) {
    std::vector<std::int32_t> ids;
    for (const auto& v : array.as_array()) ids.push_back(static_cast<std::int32_t>(v.as_int64()));
    return ids;
}

inline std::vector<double> doubles_of(const tinyllm::json::value& array) {
    std::vector<double> out;
    for (const auto& v : array.as_array()) out.push_back(v.as_double());
    return out;
}

}  // namespace tinyllm_test
