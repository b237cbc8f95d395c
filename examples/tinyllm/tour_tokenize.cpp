// examples/tinyllm/tour_tokenize.cpp — the tour's tokenization chapter: the
// example sentence cut into pieces, turned into token ids, and back; then the
// same sentence and a Korean one side by side in byte-level BPE, SentencePiece
// BPE and SentencePiece Unigram (the fixtures in tests/fixtures/sentencepiece).
#include "paths.hpp"
#include "registry.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/sentencepiece_proto.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
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

// The SentencePiece fixtures: $TINYLLM_TEST_FIXTURES/sentencepiece, else the source tree's.
std::optional<std::string> find_sentencepiece_fixtures() {
    std::vector<std::filesystem::path> dirs;
    if (const char* d = std::getenv("TINYLLM_TEST_FIXTURES"); d && *d) dirs.emplace_back(std::filesystem::path(d) / "sentencepiece");
    dirs.push_back(std::filesystem::path(TINYLLM_SOURCE_DIR) / "tests" / "fixtures" / "sentencepiece");
    for (const auto& d : dirs)
        if (std::filesystem::exists(d / "unigram.json") && std::filesystem::exists(d / "bpe_llama.json") &&
            std::filesystem::exists(d / "unigram_ws.model"))
            return d.string() + "/";
    return std::nullopt;
}

// Bytes as text: valid UTF-8 as it is, any other byte as \xNN (a byte-level
// token can end in the middle of a character).
std::string shown(std::string_view bytes) {
    std::string out;
    for (std::size_t at = 0; at < bytes.size();) {
        std::uint32_t cp;
        const int n = tinyllm::detail::decode_utf8(bytes, at, cp);
        if (cp == tinyllm::detail::invalid_code_point) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02X", static_cast<unsigned char>(bytes[at]));
            out += buf;
            at += 1;
        } else {
            out.append(bytes.substr(at, std::size_t(n)));
            at += std::size_t(n);
        }
    }
    return out;
}

// "[a][b][c]" wrapped at about 76 columns, each line indented.
void print_pieces(std::ostream& out, const std::vector<std::string>& pieces) {
    std::size_t column = 0;
    for (const auto& p : pieces) {
        const std::string cell = "[" + p + "]";
        std::size_t width = 0;  // characters, not bytes
        for (const char c : cell) width += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
        if (column == 0 || column + width > 76) out << (column ? "\n" : "") << "       ", column = 7;
        out << cell;
        column += width;
    }
    out << "\n";
}

// The tiger sentence and a Korean one in three tokenizers (see the top of the file).
void three_tokenizers(std::ostream& out, const tinyllm::tokenizer& byte_level, const std::string& byte_level_name) {
    const auto dir = find_sentencepiece_fixtures();
    if (!dir) {
        out << "\n(tests/fixtures/sentencepiece not found: the SentencePiece comparison is skipped.)\n";
        return;
    }
    const tinyllm::tokenizer bpe = tinyllm::load_tokenizer(*dir + "bpe_llama.json");
    const tinyllm::tokenizer unigram = tinyllm::load_tokenizer(*dir + "unigram.json");
    const auto pieces = [](const tinyllm::tokenizer& t, const std::vector<tinyllm::token_id>& ids) {
        std::vector<std::string> v;
        for (const auto id : ids) v.push_back(t.sentencepiece() ? t.sentencepiece()->piece(id) : shown(t.token_bytes(id)));
        return v;
    };
    const std::string korean = "\xED\x98\xB8\xEB\x9E\x91\xEC\x9D\xB4\xEA\xB0\x80 \xEB\x9B\xB0\xEC\x97\x88\xEB\x8B\xA4.";  // 호랑이가 뛰었다.
    out << "\nLlama 2, Mistral and T5 use the SentencePiece family instead: a space is the visible\n"
           "character \"\xE2\x96\x81\", one is put in front of the text, and the units are characters, not\n"
           "bytes. Two vocabularies of 700 pieces trained on the King James Bible, beside the one above:\n";
    for (const std::string& text : {std::string(example_sentence), korean}) {
        out << "\n  \"" << text << "\""
            << (text == korean ? "  (Korean: \"The tiger jumped.\")" : "") << "\n";
        const auto show = [&](const std::string& name, const tinyllm::tokenizer& t) {
            const auto ids = t.encode(text);
            out << "    " << name << ", " << ids.size() << " tokens:\n";
            print_pieces(out, pieces(t, ids));
        };
        show("byte-level BPE (" + byte_level_name + ")", byte_level);
        show("SentencePiece BPE (bpe_llama.json)", bpe);
        show("SentencePiece Unigram (unigram.json)", unigram);
    }
    out << "\nThe Bible has no Hangul, so no Korean character is a piece: with byte fallback each\n"
           "syllable becomes its three UTF-8 bytes as tokens <0xNN> (\xED\x98\xB8 = <0xED><0x98><0xB8>),\n"
           "and decoding gives the text back. Byte-level BPE needs no fallback: its 256 base tokens\n"
           "are the bytes. A vocabulary without byte fallback (unigram_ws.model) writes every run\n"
           "of unknown characters as the unknown token, and the text is lost:\n";
    const auto ws = tinyllm::load_sentencepiece_model(*dir + "unigram_ws.model");
    const auto ids = ws.encode(korean);
    std::vector<std::string> v;
    for (const auto id : ids) v.push_back(ws.model().piece(id));
    print_pieces(out, v);
    out << "       decodes to \"" << ws.decode(ids) << "\"\n";
    out << "\nA Unigram model can also draw a segmentation at random instead of the best one, so that\n"
           "a model in training sees words spelled several ways (subword regularization;\n"
           "`tinyllm tokenize --sample-alpha 0.5 --seed 1`):\n";
    print_pieces(out, pieces(unigram, unigram.encode_sample(example_sentence, {0.5, 1, 0})));
}

}  // namespace

TINYLLM_TOUR_CHAPTER(20, "tokenize", "Tokenization: text to token ids (byte-level BPE, SentencePiece)") {
    auto& out = ctx.out;
    const std::string sentence = example_sentence;
    tinyllm::tokenizer tok;
    std::string tok_name = "r50k_base";
    if (const auto path = find_r50k()) {
        tok = tinyllm::load_tiktoken_encoding("r50k_base", *path);
        out << "Using GPT-2's vocabulary (r50k_base, " << tok.vocab_size() << " tokens) from " << *path << ".\n\n";
    } else {
        tinyllm::bpe_train_options opt;
        opt.vocab_size = 256 + 120;
        tok = tinyllm::train_bpe({paragraph}, opt);
        tok_name = "the small vocabulary";
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
    three_tokenizers(out, tok, tok_name);
}
