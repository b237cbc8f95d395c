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

// N calibration windows of T tokens (N, T) from the part of data.tokens training
// used (outside the validation range [val_begin, val_end)), spread evenly over it:
// text like what the model will read, never what it is measured on.
inline tinyllm::tensor<tinyllm::token_id, 2> calibration_windows(const tinyllm::token_file& data,
                                                                std::pair<std::uint64_t, std::uint64_t> validation,
                                                                tinyllm::index_t N, tinyllm::index_t T) {
    // The larger training side of the validation range.
    const std::uint64_t before = validation.first, after = data.size() - validation.second;
    const std::uint64_t begin = before >= after ? 0 : validation.second, length = before >= after ? before : after;
    const auto window = static_cast<std::uint64_t>(T);
    if (length < window * static_cast<std::uint64_t>(N))
        throw tinyllm::error("the training split of data.tokens (" + std::to_string(length) + " tokens) holds fewer than " +
                             std::to_string(N) + " calibration windows of " + std::to_string(T) + " tokens");
    tinyllm::tensor<tinyllm::token_id, 2> out(tinyllm::extents<2>{N, T});
    const std::uint64_t stride = (length - window) / static_cast<std::uint64_t>(N > 1 ? N - 1 : 1);
    for (tinyllm::index_t n = 0; n < N; ++n)
        for (tinyllm::index_t t = 0; t < T; ++t)
            out(n, t) = data[begin + static_cast<std::uint64_t>(n) * stride + static_cast<std::uint64_t>(t)];
    return out;
}

}  // namespace tinyllm_cli
