// examples/tinyllm/tour_tokenize.cpp — the tour's tokenization chapter: the
// example sentence cut into pieces, turned into token ids, and back.
#include "registry.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

// A paragraph to train a small vocabulary on when the real one is absent.
constexpr const char* paragraph =
    "The tiger is the largest living cat species. It hunts mainly deer and wild boar. "
    "A tiger can jump out of a tree, swim across a river and drink from a lake. "
    "The tiger was thirsty because it was hot; it jumped out of the tree to get a drink. "
    "Tigers are solitary, and a tiger marks its territory. The tree was tall and the drink was cold.";

std::optional<std::string> find_r50k() {
    std::vector<std::string> dirs;
    if (const char* d = std::getenv("TINYLLM_SHARED_DIR")) dirs.push_back(d);
    dirs.push_back("../shared");
    for (const auto& d : dirs) {
        const std::string p = d + "/data/tokenizers/r50k_base.tiktoken";
        if (std::ifstream(p)) return p;
    }
    return std::nullopt;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(20, "tokenize", "Tokenization: text to token ids with byte-level BPE") {
    auto& out = ctx.out;
    const std::string sentence = example_sentence;
    tinyllm::tokenizer tok;
    if (const auto path = find_r50k()) {
        tok = tinyllm::load_tiktoken_encoding("r50k_base", *path);
        out << "Using GPT-2's vocabulary (r50k_base, " << tok.vocab_size() << " tokens) from " << *path << ".\n\n";
    } else {
        tinyllm::bpe_train_options opt;
        opt.vocab_size = 256 + 120;
        tok = tinyllm::train_bpe({paragraph}, opt);
        out << "../shared/data/tokenizers/r50k_base.tiktoken not found (set TINYLLM_SHARED_DIR), so this chapter\n"
               "trains a small vocabulary (256 bytes + 120 merges) on a paragraph about tigers instead.\n\n";
    }
    out << "A model reads integers, not characters. Byte-level BPE turns text into integers in two steps.\n\n"
           "1. Pre-tokenization cuts the text into pieces with GPT-2's pattern: a word keeps its leading\n"
           "   space, punctuation and digits stay apart. BPE never merges across these cuts.\n   ";
    for (auto piece : tinyllm::pretokenize(sentence, tok.pattern())) out << "[" << piece << "]";
    out << "\n\n2. Each piece starts as its bytes and the merges learned in training are applied, lowest\n"
           "   rank first, until no learned merge applies. The word \" thirsty\", merge by merge:\n";
    // Replay the merges on one piece to show them.
    const std::string word = " thirsty";
    std::vector<std::string> parts;
    for (char c : word) parts.emplace_back(1, c);
    const auto& v = tok.vocab();
    auto show_parts = [&] {
        out << "     ";
        for (const auto& p : parts) out << "[" << p << "]";
        out << "\n";
    };
    show_parts();
    for (;;) {
        std::size_t best = parts.size();
        std::uint32_t best_rank = tinyllm::bpe_vocab::no_rank;
        for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
            const auto rank = v.merge_of(v.find(parts[i]), v.find(parts[i + 1])).first;
            if (rank < best_rank) best_rank = rank, best = i;
        }
        if (best == parts.size()) break;
        parts[best] += parts[best + 1];
        parts.erase(parts.begin() + static_cast<long>(best) + 1);
        show_parts();
    }
    const auto ids = tok.encode(sentence);
    out << "\nThe sentence (" << sentence.size() << " bytes) becomes " << ids.size() << " tokens:\n     ";
    for (auto id : ids) out << id << " ";
    out << "\n     ";
    for (auto id : ids) out << "[" << tok.token_bytes(id) << "]";
    const std::string back = tok.decode(ids);
    out << "\n\nDecoding concatenates the tokens' bytes: \"" << back << "\"\nRound trip: "
        << (back == sentence ? "identical" : "DIFFERENT") << ". Any byte string encodes, since the 256 bytes\n"
        << "are tokens; an emoji split across two tokens is held back by the streaming decoder until\n"
        << "its last byte arrives.\n";
}
