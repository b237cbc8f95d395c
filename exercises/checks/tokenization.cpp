// exercises/checks/tokenization.cpp — the checks of the tokenization exercises, against
// tinyllm's BPE trainer (include/tinyllm/bpe_train.hpp) and encoder.
//
// The text: random words over a small alphabet, so that pairs repeat and tie often
// (the tie-break is part of the answer). The trainer learns one merge from it
// (vocab_size 257): token 256 is the most frequent pair, and encoding a piece with that
// tokenizer applies the merge.
#include "exercises.hpp"
#include "harness.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/pretokenize.hpp>

#include <map>
#include <sstream>
#include <string>

namespace exercises::check::tokenization_checks {

// Random words of letters from a small alphabet, separated by spaces.
std::string random_text(context& ctx) {
    const int alphabet = ctx.integer(2, 5), words = ctx.integer(3, 40);
    std::string text;
    for (int w = 0; w < words; ++w) {
        const int length = ctx.integer(1, 7);
        if (w) text += ' ';
        for (int i = 0; i < length; ++i) text += static_cast<char>('a' + ctx.integer(0, alphabet - 1));
    }
    return text;
}

tinyllm::tokenizer train_one_merge(const std::string& text) {
    tinyllm::bpe_train_options options;
    options.vocab_size = 257;
    options.pattern = tinyllm::pretokenizer::r50k;
    return tinyllm::train_bpe({text}, options);
}

std::string ids_text(std::span<const int> ids) {
    std::ostringstream s;
    s << "{";
    for (std::size_t i = 0; i < ids.size(); ++i) s << (i ? ", " : "") << ids[i];
    s << "}";
    return s.str();
}

}  // namespace exercises::check::tokenization_checks

using namespace exercises::check::tokenization_checks;

TINYLLM_EXERCISE_CHECK("tokenization/01_most_frequent_pair") {
    for (int c = 0; c < 20; ++c) {
        const std::string text = random_text(ctx);
        std::map<std::string, std::int64_t> counts;
        tinyllm::for_each_piece(text, tinyllm::pretokenizer::r50k,
                                [&](std::string_view p) { ++counts[std::string(p)]; });
        std::vector<exercises::tokenization::weighted_word> words;
        for (const auto& [piece, count] : counts) {
            exercises::tokenization::weighted_word w;
            for (unsigned char b : piece) w.ids.push_back(b);
            w.count = count;
            words.push_back(std::move(w));
        }
        ctx.case_label = "case " + std::to_string(c) + " (text \"" + text + "\", " + std::to_string(words.size()) +
                         " distinct words)";
        const tinyllm::tokenizer tok = train_one_merge(text);
        const std::string merged(tok.token_bytes(256));
        const std::pair<int, int> want{static_cast<unsigned char>(merged[0]), static_cast<unsigned char>(merged[1])};
        const auto got = exercises::tokenization::most_frequent_pair(words);
        if (got != want) {
            std::ostringstream s;
            s << "got the pair (" << got.first << ", " << got.second << "), expected (" << want.first << ", "
              << want.second << ") = \"" << merged << "\"";
            if (got.first >= 0 && got.second >= 0)
                s << "; count overlapping occurrences, weight each word by its count, and break ties to the smaller "
                     "pair";
            ctx.fail(s.str());
        }
    }
}

TINYLLM_EXERCISE_CHECK("tokenization/02_merge_pair") {
    for (int c = 0; c < 20; ++c) {
        const std::string text = random_text(ctx);
        const tinyllm::tokenizer tok = train_one_merge(text);
        const std::string merged(tok.token_bytes(256));
        const int left = static_cast<unsigned char>(merged[0]), right = static_cast<unsigned char>(merged[1]);
        tinyllm::for_each_piece(text, tinyllm::pretokenizer::r50k, [&](std::string_view piece) {
            ctx.case_label = "case " + std::to_string(c) + ", piece \"" + std::string(piece) + "\", merge (" +
                             std::to_string(left) + ", " + std::to_string(right) + ") -> 256";
            std::vector<int> ids;
            for (unsigned char b : piece) ids.push_back(b);
            const std::vector<tinyllm::token_id> encoded = tok.encode(piece);
            const std::vector<int> want(encoded.begin(), encoded.end());
            const std::vector<int> got = exercises::tokenization::merge_pair(ids, left, right, 256);
            if (got != want)
                ctx.fail("input " + ids_text(ids) + ": got " + ids_text(got) + ", expected " + ids_text(want) +
                         (got.empty()                ? " (nothing was returned: is the function still a TODO?)"
                          : got.size() < want.size() ? " (too many merges: occurrences must not overlap)"
                          : got.size() > want.size() ? " (an occurrence was not merged)"
                                                     : ""));
        });
    }
}
