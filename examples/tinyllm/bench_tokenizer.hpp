// examples/tinyllm/bench_tokenizer.hpp — the inputs shared by the CPU and CUDA
// rows of `tinyllm bench bpe`: a tokenizer (GPT-2's r50k_base from
// $TINYLLM_SHARED_DIR or ../shared, else a small vocabulary trained on the
// spot) and a batch of documents (--size documents, default 2000, of ~1 KB
// of English-like text each; 64 on the simulated GPU).
#pragma once

#include "registry.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace tinyllm_cli::bpe_bench {

inline const std::vector<std::string>& words() {
    static const std::vector<std::string> w{
        "the", "tiger", "jumped", "out", "of", "a", "tree", "to", "get", "drink", "because", "it", "was",
        "thirsty", "tokenization", "byte", "pair", "encoding", "merges", "frequent", "pairs", "into", "new",
        "symbols", "GPU", "kernel", "2026", "3.14159", "don't", "we'll", "(parenthesis)", "snake_case",
        "CamelCase", "naïve", "Привет", "你好", "😀", "\n", "  ", "1,000,000", "http://example.com/x"};
    return w;
}

inline std::vector<std::string> documents(long long count) {
    std::vector<std::string> docs;
    tinyllm::philox_generator g(11, 0);
    for (long long d = 0; d < count; ++d) {
        std::string s;
        while (s.size() < 1000) {
            s += words()[g.next_bits() % words().size()];
            s += ' ';
        }
        docs.push_back(std::move(s));
    }
    return docs;
}

inline std::shared_ptr<tinyllm::tokenizer> tokenizer(std::string& which) {
    std::vector<std::string> dirs;
    if (const char* d = std::getenv("TINYLLM_SHARED_DIR")) dirs.push_back(d);
    dirs.push_back("../shared");
    for (const auto& d : dirs) {
        const std::string p = d + "/data/tokenizers/r50k_base.tiktoken";
        if (std::ifstream(p)) {
            which = "r50k_base";
            return std::make_shared<tinyllm::tokenizer>(tinyllm::load_tiktoken_encoding("r50k_base", p));
        }
    }
    which = "trained4096";
    tinyllm::bpe_train_options opt;
    opt.vocab_size = 4096;
    return std::make_shared<tinyllm::tokenizer>(tinyllm::train_bpe(documents(300), opt));
}

// Everything a "bpe" row needs: the tokenizer, --size documents (default 2000;
// 64 on the simulated GPU, for the CPU row too), their total bytes, the row's
// name suffix and at most 5 repeats.
struct workload {
    std::string which;  // "r50k_base" or "trained4096"
    std::shared_ptr<tinyllm::tokenizer> tok;
    std::vector<std::string> docs;
    double bytes = 0;
    int repeats = 5;
    std::string shape() const { return "docs=" + std::to_string(docs.size()) + "," + which; }
};

inline workload make_workload(const bench_context& ctx) {
    workload w;
    w.tok = tokenizer(w.which);
    w.docs = documents(ctx.size_or(2000, 64));
    for (const auto& d : w.docs) w.bytes += static_cast<double>(d.size());
    w.repeats = ctx.repeats < 5 ? ctx.repeats : 5;
    return w;
}

}  // namespace tinyllm_cli::bpe_bench
