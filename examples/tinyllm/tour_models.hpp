// examples/tinyllm/tour_models.hpp — models more than one tour chapter runs.
#pragma once

#include <tinyllm/model.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <optional>
#include <string>
#include <vector>

namespace tinyllm_cli {

// A Llama-shaped model with vocabulary 256 (one token per byte), D = 32, 2 layers,
// 4 query heads sharing 2 key/value heads; random weights from Philox
// (tinyllm::random_model_weights: uniform in +-1/sqrt(fan_in), like nn.Linear's init).
// Defined in tour_model.cpp.
tinyllm::cpu::model tour_tiny_llama();

// How a chapter turns text into ids and back: the model's tokenizer, or one
// token per byte for tour_tiny_llama (printable ASCII shown, "?" otherwise).
struct text_codec {
    std::optional<tinyllm::tokenizer> tok;
    std::vector<tinyllm::token_id> encode(const std::string& s) const {
        if (tok) return tok->encode_ordinary(s);
        return {s.begin(), s.end()};
    }
    std::string decode(tinyllm::token_id id) const {
        std::string s;
        if (tok) s = tok->decode(std::vector<tinyllm::token_id>{id});
        else if (id >= 32 && id < 127) s = std::string(1, static_cast<char>(id));
        else s = "?";
        for (char& c : s)
            if (c == '\n') c = ' ';
        return s;
    }
    std::string decode(const std::vector<tinyllm::token_id>& ids) const {
        std::string s;
        for (auto id : ids) s += decode(id);
        return s;
    }
};

}  // namespace tinyllm_cli
