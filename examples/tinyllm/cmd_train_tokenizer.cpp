// examples/tinyllm/cmd_train_tokenizer.cpp — `tinyllm train-tokenizer`: learn a
// vocabulary from text files. Byte-level BPE (<tinyllm/bpe_train.hpp>) by default.
#include "registry.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <chrono>
#include <cstddef>
#include <iostream>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_COMMAND("train-tokenizer", "learn a byte-level BPE vocabulary from text files",
                "usage: tinyllm train-tokenizer --vocab-size N --out FILE [--pattern r50k|cl100k|o200k]\n"
                "                               [--special TOKEN[,TOKEN...]] CORPUS...\n\n"
                "Learns N - 256 - (number of special tokens) merges from the CORPUS files, pre-tokenized\n"
                "with --pattern (default cl100k), and writes the tokenizer in tinyllm's format (load it\n"
                "with `tinyllm tokenize --vocab FILE`). Progress goes to stderr.\n") {
    const auto a = parse_args(args, {"vocab-size", "out", "pattern", "special"}, {});
    if (a.positional.empty()) throw usage_error("give at least one CORPUS file");
    if (a.get("out").empty()) throw usage_error("--out FILE is required");
    tinyllm::bpe_train_options opt;
    const long long n = a.get_int("vocab-size", 0);
    if (n < 257) throw usage_error("--vocab-size N is required and must be more than 256");
    opt.vocab_size = static_cast<std::size_t>(n);
    opt.pattern = tinyllm::pretokenizer_from_name(a.get("pattern", "cl100k"));
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
    std::size_t bytes = 0;
    for (const auto& path : a.positional) {
        const std::string text = tinyllm::detail::read_text_file(path);
        bytes += text.size();
        trainer.add_text(text);
        std::cerr << "read " << path << " (" << text.size() << " bytes)\n";
    }
    std::cerr << trainer.distinct_pieces() << " distinct pieces in " << bytes << " bytes\n";
    const auto tok = trainer.train();
    std::cerr << "\n";
    tinyllm::save_tokenizer(tok, a.get("out"));
    const std::size_t merges = tok.vocab().size() - 256;
    out << "trained " << merges << " merges (vocabulary " << tok.vocab_size() << ") on " << bytes << " bytes in "
        << seconds() << " s; wrote " << a.get("out") << "\n";
    return 0;
}
