// examples/tinyllm/cmd_tokenize.cpp — `tinyllm tokenize` and `tinyllm detokenize`:
// the tokenizer of <tinyllm/tokenizer.hpp> (byte-level BPE, or a SentencePiece-family
// tokenizer.json or tokenizer.model) from the command line. Training a vocabulary is
// cmd_train_tokenizer.cpp.
#include "registry.hpp"

#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

std::string read_all(std::istream& in) { return std::string(std::istreambuf_iterator<char>(in), {}); }

// --vocab FILE, or (without it) the rank file of --encoding in $TINYLLM_SHARED_DIR or ../shared.
tinyllm::tokenizer load_vocab(const parsed_args& a) {
    std::string path = a.get("vocab");
    const std::string encoding = a.get("encoding");
    if (path.empty()) {
        if (encoding.empty()) throw usage_error("--vocab FILE is required (or --encoding NAME with ../shared present)");
        const std::string file = (encoding == "gpt2" ? std::string("r50k_base") : encoding) + ".tiktoken";
        std::vector<std::string> dirs;
        if (const char* d = std::getenv("TINYLLM_SHARED_DIR")) dirs.push_back(d);
        dirs.push_back("../shared");
        for (const auto& d : dirs) {
            const std::string p = d + "/data/tokenizers/" + file;
            if (std::ifstream(p)) {
                path = p;
                break;
            }
        }
        if (path.empty())
            throw usage_error("no --vocab given and " + file + " not found in $TINYLLM_SHARED_DIR or ../shared");
    }
    require_input_file(a, "vocab");
    return tinyllm::load_tokenizer(path, encoding);
}

// A token's bytes, readable: printable ASCII as is, valid UTF-8 as is,
// control characters and stray bytes as escapes.
std::string readable(std::string_view bytes) {
    std::string out;
    for (std::size_t i = 0; i < bytes.size();) {
        std::uint32_t cp;
        const int n = tinyllm::detail::decode_utf8(bytes, i, cp);
        char buf[8];
        if (cp == '\n') out += "\\n";
        else if (cp == '\r') out += "\\r";
        else if (cp == '\t') out += "\\t";
        else if (cp == '\\') out += "\\\\";
        else if (cp == tinyllm::detail::invalid_code_point || cp < 0x20 || cp == 0x7F) {
            for (int k = 0; k < n; ++k) {
                std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(bytes[i + std::size_t(k)]));
                out += buf;
            }
        } else {
            out.append(bytes.substr(i, std::size_t(n)));
        }
        i += std::size_t(n);
    }
    return out;
}

}  // namespace

TINYLLM_COMMAND("tokenize", "print the token ids of a text (byte-level BPE or SentencePiece)",
                "usage: tinyllm tokenize --vocab FILE [--encoding r50k_base|cl100k_base|o200k_base|gpt2]\n"
                "                        [--allow-special | --special-as-text] [--show] [--template]\n"
                "                        [--sample-alpha A [--seed S] [--samples N]] [--file F | TEXT...]\n\n"
                "FILE is a tiktoken rank file (say which --encoding it is, unless its name does),\n"
                "a Hugging Face tokenizer.json (byte-level BPE, or SentencePiece BPE / Unigram as\n"
                "Llama 2 and Mistral use), or a file written by `tinyllm train-tokenizer`.\n"
                "Without --vocab, --encoding NAME loads NAME.tiktoken from $TINYLLM_SHARED_DIR or\n"
                "../shared/data/tokenizers. The text is TEXT, the contents of --file, or stdin.\n"
                "Prints the ids separated by spaces; --show prints one token per line: id and bytes.\n"
                "A special token's text (\"<|endoftext|>\") is an error unless --allow-special\n"
                "(encode it as its id) or --special-as-text (encode it as ordinary text).\n"
                "--template puts the tokenizer.json's template around the ids (Llama's <s> before them):\n"
                "what Hugging Face's encode(text) returns by default, and what `tinyllm generate` feeds a model.\n\n"
                "--sample-alpha A (SentencePiece Unigram models only): instead of the best segmentation,\n"
                "draw one at random with probability proportional to exp(A * score) (subword\n"
                "regularization; A > 0, 0.1 to 1 are usual, larger is closer to the best). The draw is\n"
                "Philox's: --seed S (default 0) gives the same ids every time. --samples N prints N\n"
                "draws, one per line (streams 0 .. N-1 of the seed; the first is the single draw).\n") {
    const auto a = parse_args(args, {"vocab", "encoding", "file", "sample-alpha", "seed", "samples"},
                              {"show", "allow-special", "special-as-text", "template"});
    if (a.has_flag("allow-special") && a.has_flag("special-as-text"))
        throw usage_error(
            "give --allow-special (a special token's text becomes its id) or --special-as-text (it "
            "stays text), not both");
    const bool sampling = a.options.count("sample-alpha") > 0;
    if (!sampling && (a.options.count("seed") || a.options.count("samples")))
        throw usage_error("--seed and --samples choose the draws of --sample-alpha A, which is not given");
    std::uint64_t seed = 0;
    if (a.options.count("seed")) {
        const std::string& v = a.get("seed");
        char* end = nullptr;
        seed = std::strtoull(v.c_str(), &end, 10);
        if (v.empty() || *end != '\0' || v[0] == '-') throw usage_error("--seed needs a non-negative integer, got '" + v + "'");
    }
    const long long samples = a.get_int("samples", 1);
    if (samples < 1) throw usage_error("--samples N: N = " + std::to_string(samples) + " must be at least 1");
    const double alpha = a.get_double("sample-alpha", 0.1);
    const auto tok = load_vocab(a);
    if (sampling) {
        const tinyllm::sentencepiece_model* sp = tok.sentencepiece();
        const std::string vocab = a.options.count("vocab") ? a.get("vocab") : "--encoding " + a.get("encoding");
        if (!sp)
            throw usage_error("--sample-alpha draws SentencePiece Unigram segmentations, but " + vocab +
                              " is a byte-level BPE vocabulary");
        if (sp->kind() != tinyllm::sentencepiece_kind::unigram)
            throw usage_error("--sample-alpha draws SentencePiece Unigram segmentations, but " + vocab +
                              " is a SentencePiece BPE model (sampling BPE is BPE-dropout, a different algorithm, "
                              "not implemented)");
        if (!(std::isfinite(alpha) && alpha > 0))
            throw usage_error("--sample-alpha A: A = " + a.get("sample-alpha") + " must be a finite number > 0");
    }
    std::string text;
    if (a.options.count("file") && !a.positional.empty())
        throw usage_error("give the text with --file F or as arguments, not both");
    require_input_file(a, "file");
    if (a.options.count("file")) {
        text = tinyllm::detail::read_text_file(a.get("file"));
    } else if (!a.positional.empty()) {
        for (std::size_t i = 0; i < a.positional.size(); ++i) text += (i ? " " : "") + a.positional[i];
    } else {
        text = read_all(std::cin);
    }
    if (!a.has_flag("allow-special") && !a.has_flag("special-as-text")) {
        // The library's error names its C++ options; this one names the command's flags.
        const tinyllm::special_token* first = nullptr;
        std::size_t at = std::string::npos;
        for (const auto& s : tok.specials()) {
            const std::size_t p = text.find(s.text);
            if (p != std::string::npos && (p < at || (p == at && s.text.size() > first->text.size())))
                at = p, first = &s;
        }
        if (first)
            throw usage_error("the text holds the special token \"" + first->text + "\" at byte " + std::to_string(at) +
                              ": give --allow-special to encode it as its id (" + std::to_string(first->id) +
                              "), or --special-as-text to encode it as ordinary text");
    }
    const tinyllm::allowed_special allowed =
        a.has_flag("allow-special") ? tinyllm::allowed_special::everything() : tinyllm::allowed_special::none();
    const auto others =
        a.has_flag("special-as-text") ? tinyllm::special_handling::as_text : tinyllm::special_handling::error;
    for (long long k = 0; k < samples; ++k) {
        std::vector<tinyllm::token_id> ids =
            sampling ? tok.encode_sample(text, {alpha, seed, std::uint64_t(k)}, allowed, others)
                     : tok.encode(text, allowed, others);
        if (a.has_flag("template")) {
            ids.insert(ids.begin(), tok.template_before().begin(), tok.template_before().end());
            ids.insert(ids.end(), tok.template_after().begin(), tok.template_after().end());
        }
        if (a.has_flag("show")) {
            if (k) out << "\n";  // a blank line between draws
            for (const auto id : ids) out << id << "\t\"" << readable(tok.token_bytes(id)) << "\"\n";
        } else {
            for (std::size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
            out << "\n";
        }
    }
    return 0;
}

TINYLLM_COMMAND("detokenize", "turn token ids back into text",
                "usage: tinyllm detokenize --vocab FILE [--encoding NAME] [--raw] [--file F | ID...]\n\n"
                "Reads whitespace-separated ids from the arguments, --file, or stdin and prints the text.\n"
                "Bytes that are not valid UTF-8 print as U+FFFD unless --raw.\n") {
    const auto a = parse_args(args, {"vocab", "encoding", "file"}, {"raw"});
    const auto tok = load_vocab(a);
    std::string words;
    if (a.options.count("file") && !a.positional.empty())
        throw usage_error("give the ids with --file F or as arguments, not both");
    require_input_file(a, "file");
    if (a.options.count("file")) words = tinyllm::detail::read_text_file(a.get("file"));
    else if (!a.positional.empty()) for (const auto& p : a.positional) words += p + " ";
    else words = read_all(std::cin);
    std::vector<tinyllm::token_id> ids;
    std::istringstream in(words);
    std::string w;
    while (in >> w) {
        char* end = nullptr;
        const unsigned long v = std::strtoul(w.c_str(), &end, 10);
        if (*end != '\0' || w[0] == '-' || v > 0x7fffffffUL) throw usage_error("'" + w + "' is not a token id");
        if (v >= tok.vocab_size())
            throw usage_error("token id " + w + " is not in the vocabulary (ids 0 .. " +
                              std::to_string(tok.vocab_size() - 1) + ")");
        ids.push_back(static_cast<tinyllm::token_id>(v));
    }
    out << tok.decode(ids, a.has_flag("raw") ? tinyllm::decode_errors::keep : tinyllm::decode_errors::replace);
    return 0;
}
