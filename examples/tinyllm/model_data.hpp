// examples/tinyllm/model_data.hpp — the held-out text of a model `tinyllm train`
// wrote: its data.tokens and the validation range training used, for the
// commands that measure a trained model (quantize, speculate).
#pragma once

#include <tinyllm/data.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/model.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>

namespace tinyllm_cli {

// DIR/data.tokens, or an error saying DIR is not a directory `tinyllm train` wrote.
inline std::string model_tokens_path(const std::string& dir) {
    const std::string path = (std::filesystem::path(dir) / "data.tokens").string();
    if (!std::filesystem::exists(path))
        throw tinyllm::error("'" + dir + "' has no data.tokens: give a model directory `tinyllm train` wrote");
    return path;
}

// The validation range of DIR/data.tokens: the one training_state.json records, else the last 5%
// (split_tokens with windows of T tokens).
inline std::pair<std::uint64_t, std::uint64_t> validation_range(const std::string& dir, const tinyllm::token_file& data,
                                                                tinyllm::index_t T) {
    const auto state = std::filesystem::path(dir) / "training_state.json";
    if (std::filesystem::exists(state)) {
        const auto doc = tinyllm::detail::read_json_file(state.string());
        if (const auto* d = doc.find("data"); d && d->is_object() && d->find("validation")) {
            const auto& v = d->at("validation");
            return {static_cast<std::uint64_t>(v.at(std::size_t{0}).as_int64()),
                    static_cast<std::uint64_t>(v.at(std::size_t{1}).as_int64())};
        }
    }
    const auto s = tinyllm::split_tokens(data.size(), T, 0.05);
    return {s.val_begin, s.val_end};
}

}  // namespace tinyllm_cli
