// bench/cpu/bench_tokenizer.cpp — byte-level BPE on the CPU, one thread.
//
//   TINYLLM_SHARED_DIR=../shared TINYLLM_BENCH_TEXTS=a.txt,b.txt bin/bench_tokenizer --benchmark_format=json
//
// * encode/<encoding>/<text>: encode_ordinary throughput (bytes per second)
//   with the real r50k_base and cl100k_base vocabularies from ../shared, on
//   each file named in TINYLLM_BENCH_TEXTS (bench/tokenizer_vs_tiktoken.py
//   writes them and times tiktoken on the same files). Without the variable,
//   a built-in English paragraph repeated to 1 MB.
// * pretokenize/<pattern>: the pre-tokenizer alone.
// * long_piece: one 1 MB piece of 'a' (the linked-list + heap merge path).
// * train/<MB>: bpe training to a 4096-token vocabulary on the first MB of the
//   texts (TINYLLM_BENCH_TRAIN_MB=1,10).
// Without ../shared only the trained-vocabulary rows run.
#include <benchmark/benchmark.h>

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

struct named_text {
    std::string name, text;
};

std::vector<named_text> bench_texts() {
    std::vector<named_text> out;
    if (const char* list = std::getenv("TINYLLM_BENCH_TEXTS")) {
        std::string s = list;
        for (std::size_t at = 0; at < s.size();) {
            std::size_t e = s.find(',', at);
            if (e == std::string::npos) e = s.size();
            const std::string path = s.substr(at, e - at);
            std::string name = path.substr(path.rfind('/') + 1);
            name = name.substr(0, name.find('.'));
            out.push_back({name, tinyllm::detail::read_text_file(path)});
            at = e + 1;
        }
    }
    if (out.empty()) {
        const std::string p =
            "Byte pair encoding starts from single bytes and repeatedly merges the most frequent adjacent pair "
            "into a new symbol. After enough merges, common words are single tokens while rare words are spelled "
            "with a few pieces. It's fast; isn't it? Numbers like 42, 1999 and 3.14159 are split.\n";
        std::string t;
        while (t.size() < (1 << 20)) t += p;
        out.push_back({"builtin", t});
    }
    return out;
}

std::shared_ptr<tinyllm::tokenizer> load(const std::string& encoding) {
    const char* dir = std::getenv("TINYLLM_SHARED_DIR");
    if (!dir) return nullptr;
    const std::string path = std::string(dir) + "/data/tokenizers/" + encoding + ".tiktoken";
    if (!std::ifstream(path)) return nullptr;
    return std::make_shared<tinyllm::tokenizer>(tinyllm::load_tiktoken_encoding(encoding, path));
}

void register_all() {
    static const auto texts = bench_texts();
    for (const char* enc : {"r50k_base", "cl100k_base"}) {
        auto tok = load(enc);
        if (!tok) continue;
        for (const auto& t : texts) {
            benchmark::RegisterBenchmark(("encode/" + std::string(enc) + "/" + t.name).c_str(),
                                         [tok, &t](benchmark::State& state) {
                                             std::vector<tinyllm::token_id> ids;
                                             for (auto _ : state) {
                                                 ids.clear();
                                                 tok->encode_ordinary(t.text, ids);
                                                 benchmark::DoNotOptimize(ids.data());
                                             }
                                             state.SetBytesProcessed(state.iterations() *
                                                                     static_cast<std::int64_t>(t.text.size()));
                                             state.counters["tokens"] = static_cast<double>(ids.size());
                                         })
                ->Unit(benchmark::kMillisecond)
                ->MinTime(1.0);
        }
        if (std::string(enc) == "r50k_base") {
            benchmark::RegisterBenchmark("long_piece/a_x_1MB/r50k_base", [tok](benchmark::State& state) {
                const std::string a(1 << 20, 'a');
                for (auto _ : state) benchmark::DoNotOptimize(tok->encode_ordinary(a).size());
                state.SetBytesProcessed(state.iterations() * (1 << 20));
            })->Unit(benchmark::kMillisecond);
        }
    }
    for (const auto p : {tinyllm::pretokenizer::r50k, tinyllm::pretokenizer::cl100k, tinyllm::pretokenizer::o200k})
        for (const auto& t : texts)
            benchmark::RegisterBenchmark(("pretokenize/" + std::string(tinyllm::pretokenizer_name(p)) + "/" + t.name).c_str(),
                                         [p, &t](benchmark::State& state) {
                                             std::size_t n = 0;
                                             for (auto _ : state) {
                                                 tinyllm::for_each_piece(t.text, p, [&](std::string_view) { ++n; });
                                                 benchmark::DoNotOptimize(n);
                                             }
                                             state.SetBytesProcessed(state.iterations() *
                                                                     static_cast<std::int64_t>(t.text.size()));
                                         })
                ->Unit(benchmark::kMillisecond);
    const char* train = std::getenv("TINYLLM_BENCH_TRAIN_MB");
    std::string mbs = train ? train : "1";
    for (std::size_t at = 0; at < mbs.size();) {
        std::size_t e = mbs.find(',', at);
        if (e == std::string::npos) e = mbs.size();
        const std::size_t mb = std::stoul(mbs.substr(at, e - at));
        at = e + 1;
        benchmark::RegisterBenchmark(("train/vocab4096/" + std::to_string(mb) + "MB").c_str(), [mb](benchmark::State& state) {
            std::string corpus;
            while (corpus.size() < mb << 20)
                for (const auto& t : texts) corpus += t.text;
            corpus.resize(mb << 20);
            for (auto _ : state) {
                tinyllm::bpe_train_options opt;
                opt.vocab_size = 4096;
                opt.pattern = tinyllm::pretokenizer::cl100k;
                benchmark::DoNotOptimize(tinyllm::train_bpe({corpus}, opt).vocab_size());
            }
            state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(corpus.size()));
        })->Unit(benchmark::kSecond)->Iterations(1);
    }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
