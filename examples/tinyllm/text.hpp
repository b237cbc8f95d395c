// examples/tinyllm/text.hpp — small text helpers that several tour chapters share.
#pragma once

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

namespace tinyllm_cli {

// The whitespace-separated words of a sentence.
inline std::vector<std::string> words_of(const std::string& sentence) {
    std::vector<std::string> words;
    std::istringstream in(sentence);
    for (std::string w; in >> w;) words.push_back(w);
    return words;
}

// v with `precision` digits after the point ("%.*f").
inline std::string fixed(double v, int precision) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", precision, v);
    return buf;
}

}  // namespace tinyllm_cli
