// examples/tinyllm/cmd_train_tokenizer.cpp — `tinyllm train-tokenizer`: learn a
// vocabulary from text files. Byte-level BPE (<tinyllm/bpe_train.hpp>) by default;
// --model sentencepiece-bpe or unigram learns a SentencePiece-family vocabulary
// (<tinyllm/sentencepiece_train.hpp>) and writes a Llama-style tokenizer.json.
#include "registry.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/sentencepiece_train.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <chrono>
#include <cstddef>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

// Feed every CORPUS file to a trainer (bpe_trainer or sentencepiece_trainer); returns the bytes read.
template <class Trainer>
std::size_t add_corpus(Trainer& trainer, const std::vector<std::string>& paths) {
    std::size_t bytes = 0;
    for (const auto& path : paths) {
        const std::string text = tinyllm::detail::read_text_file(path);
        bytes += text.size();
        trainer.add_text(text);
        std::cerr << "read " << path << " (" << text.size() << " bytes)\n";
    }
    // Byte-level BPE would "learn" its 256 bytes from nothing and write them: refused instead.
    if (bytes == 0)
        throw tinyllm::error("the CORPUS files hold no text (0 bytes): there is nothing to learn a vocabulary from");
    return bytes;
}

// --model sentencepiece-bpe | unigram: SentencePiece's two algorithms, written as tokenizer.json.
int train_sentencepiece_command(const parsed_args& a, tinyllm::sentencepiece_kind kind, std::ostream& out) {
    if (a.options.count("pattern") || a.options.count("special"))
        throw usage_error("--pattern and --special are for --model bpe (byte-level BPE); a SentencePiece model has "
                          "no pre-tokenization pattern and its special tokens are <unk>, <s>, </s>");
    tinyllm::sentencepiece_train_options opt;
    opt.kind = kind;
    const long long n = a.get_int("vocab-size", 0);
    if (n <= 0) throw usage_error("--vocab-size N is required");
    opt.vocab_size = static_cast<std::size_t>(n);
    opt.character_coverage = a.get_double("character-coverage", opt.character_coverage);
    opt.byte_fallback = !a.has_flag("no-byte-fallback");
    opt.split_digits = !a.has_flag("no-split-digits");
    const auto start = std::chrono::steady_clock::now();
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    opt.progress = [&](const std::string& s) { std::cerr << "[" << static_cast<int>(seconds()) << " s] " << s << "\n"; };
    tinyllm::sentencepiece_trainer trainer(opt);
    const std::size_t bytes = add_corpus(trainer, a.positional);
    if (trainer.skipped_sentences())
        std::cerr << "skipped " << trainer.skipped_sentences() << " lines longer than " << opt.max_sentence_bytes
                  << " bytes (as SentencePiece does)\n";
    const std::string json = trainer.train_json();
    const auto tok = tinyllm::parse_hf_tokenizer_json(json, a.get("out"));  // what the file will say, checked
    {
        std::ofstream f(a.get("out"), std::ios::binary);
        if (!f || !(f << json)) throw std::runtime_error("cannot write '" + a.get("out") + "'");
    }
    out << "trained a SentencePiece " << (kind == tinyllm::sentencepiece_kind::bpe ? "BPE" : "Unigram")
        << " vocabulary of " << tok.vocab_size() << " pieces (alphabet " << trainer.alphabet().size()
        << " characters) on " << bytes << " bytes in " << seconds() << " s; wrote " << a.get("out") << "\n";
    return 0;
}

}  // namespace

TINYLLM_COMMAND("train-tokenizer", "learn a tokenizer vocabulary from text files (byte-level BPE or SentencePiece)",
                "usage: tinyllm train-tokenizer --vocab-size N --out FILE [--model bpe|sentencepiece-bpe|unigram]\n"
                "                               [--pattern r50k|gpt2|cl100k|o200k|llama3] [--special TOKEN[,TOKEN...]]\n"
                "                               [--character-coverage C] [--no-byte-fallback] [--no-split-digits]\n"
                "                               CORPUS...\n\n"
                "--model bpe (default): byte-level BPE (GPT-2 style). Learns N - 256 - (number of special\n"
                "tokens) merges from the CORPUS files, pre-tokenized with --pattern (default cl100k), and\n"
                "writes the tokenizer in tinyllm's format (load it with `tinyllm tokenize --vocab FILE`).\n\n"
                "--model sentencepiece-bpe | unigram: SentencePiece's BPE over characters, or its Unigram\n"
                "language model (EM with pruning), trained with SentencePiece's rules (every line a sentence,\n"
                "a piece never crosses a space, one script per piece; --character-coverage C of the text's\n"
                "characters, default 0.9995, 1 for all). N counts every piece: <unk>, <s>, </s>, the 256 byte\n"
                "pieces <0x00>..<0xFF> (unless --no-byte-fallback) and the learned ones. Writes a Llama-style\n"
                "tokenizer.json (Hugging Face tokenizers loads it; so do tinyllm tokenize/generate/train).\n"
                "Progress goes to stderr.\n") {
    const auto a = parse_args(args, {"vocab-size", "out", "pattern", "special", "model", "character-coverage"},
                              {"no-byte-fallback", "no-split-digits"});
    if (a.positional.empty()) throw usage_error("give at least one CORPUS file");
    if (a.get("out").empty()) throw usage_error("--out FILE is required");
    require_output_folder("--out", a.get("out"));  // before the corpus is read and trained on
    const std::string model = a.get("model", "bpe");
    if (model == "sentencepiece-bpe") return train_sentencepiece_command(a, tinyllm::sentencepiece_kind::bpe, out);
    if (model == "unigram") return train_sentencepiece_command(a, tinyllm::sentencepiece_kind::unigram, out);
    if (model != "bpe") throw usage_error("--model must be bpe, sentencepiece-bpe or unigram, not '" + model + "'");
    for (const char* o : {"character-coverage"})
        if (a.options.count(o)) throw usage_error(std::string("--") + o + " is for --model sentencepiece-bpe or unigram");
    if (a.has_flag("no-byte-fallback") || a.has_flag("no-split-digits"))
        throw usage_error("--no-byte-fallback and --no-split-digits are for --model sentencepiece-bpe or unigram");
    tinyllm::bpe_train_options opt;
    const long long n = a.get_int("vocab-size", 0);
    if (n < 257) throw usage_error("--vocab-size N is required and must be more than 256");
    opt.vocab_size = static_cast<std::size_t>(n);
    try {
        opt.pattern = tinyllm::pretokenizer_from_name(a.get("pattern", "cl100k"));
    } catch (const tinyllm::error&) {
        throw usage_error("--pattern " + a.get("pattern") + " is not r50k, gpt2, cl100k, o200k or llama3");
    }
    std::string specials = a.get("special");
    for (std::size_t at = 0; !specials.empty() && at <= specials.size();) {
        std::size_t e = specials.find(',', at);
        if (e == std::string::npos) e = specials.size();
        if (e > at) opt.special_tokens.push_back(specials.substr(at, e - at));
        at = e + 1;
    }
    const auto start = std::chrono::steady_clock::now();
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    opt.progress = [&](std::size_t done, std::size_t total) {
        if (done % 64 == 0 || done == total)
            std::cerr << "\rmerges " << done << " / " << total << "  (" << static_cast<int>(seconds()) << " s)"
                      << std::flush;
    };
    tinyllm::bpe_trainer trainer(opt);
    const std::size_t bytes = add_corpus(trainer, a.positional);
    std::cerr << trainer.distinct_pieces() << " distinct pieces in " << bytes << " bytes\n";
    const auto tok = trainer.train();
    std::cerr << "\n";
    tinyllm::save_tokenizer(tok, a.get("out"));
    const std::size_t merges = tok.vocab().size() - 256;
    out << "trained " << merges << " merges (vocabulary " << tok.vocab_size() << ") on " << bytes << " bytes in "
        << seconds() << " s; wrote " << a.get("out") << "\n";
    if (tok.vocab_size() < opt.vocab_size)
        std::cerr << "note: --vocab-size asked for " << opt.vocab_size
                  << " tokens; the corpus ran out of pairs to merge "
                  << "(every piece is one token) at " << tok.vocab_size() << "\n";
    return 0;
}
