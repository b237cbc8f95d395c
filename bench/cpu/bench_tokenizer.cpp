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
// * sentencepiece/<file>/<shape>: the SentencePiece fixtures (tests/fixtures/sentencepiece,
//   or TINYLLM_BENCH_SP_DIR) encoding the King James Bible (data/kjv.txt, or
//   TINYLLM_BENCH_KJV; tools/prepare-kjv writes it), as "lines" (each of its 31,102
//   verses, newline included, one encode call each) and "whole" (the 4.1 MB text in one
//   call): bpe_llama.json and unigram.json with tokenizer::encode_ordinary (Hugging Face's
//   ids), bpe.model and unigram.model with sentencepiece_processor::encode (the
//   sentencepiece library's ids), and unigram.json/sample_*: encode_sample at alpha 0.1
//   (subword regularization, a new stream per line). bench/sentencepiece_vs_hf.py times
//   `tokenizers` and `sentencepiece` on the same text. Left out without data/kjv.txt.
// Without ../shared only the trained-vocabulary and SentencePiece rows run.
#include <benchmark/benchmark.h>

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/sentencepiece_proto.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdint>
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

#ifndef TINYLLM_SOURCE_DIR
#define TINYLLM_SOURCE_DIR "."
#endif

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : fallback;
}

// The SentencePiece rows (see the top of the file).
void register_sentencepiece() {
    const std::string dir = env_or("TINYLLM_BENCH_SP_DIR", TINYLLM_SOURCE_DIR "/tests/fixtures/sentencepiece") + "/";
    const std::string kjv_path = env_or("TINYLLM_BENCH_KJV", TINYLLM_SOURCE_DIR "/data/kjv.txt");
    if (!std::ifstream(kjv_path) || !std::ifstream(dir + "unigram.json")) return;
    static const std::string whole = tinyllm::detail::read_text_file(kjv_path);
    static const std::vector<std::string_view> lines = [] {
        std::vector<std::string_view> v;
        for (std::size_t at = 0; at < whole.size();) {
            std::size_t end = whole.find('\n', at);
            end = end == std::string::npos ? whole.size() : end + 1;
            v.push_back(std::string_view(whole).substr(at, end - at));
            at = end;
        }
        return v;
    }();
    // One row: encode(text, ids) appends the ids of one text.
    const auto row = [&](const std::string& name, bool by_line, auto encode) {
        benchmark::RegisterBenchmark(name.c_str(), [by_line, encode](benchmark::State& state) {
            std::vector<tinyllm::token_id> ids;
            for (auto _ : state) {
                ids.clear();
                if (by_line) {
                    for (std::size_t i = 0; i < lines.size(); ++i) encode(lines[i], ids, i);
                } else {
                    encode(std::string_view(whole), ids, 0);
                }
                benchmark::DoNotOptimize(ids.data());
            }
            state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(whole.size()));
            state.counters["tokens"] = static_cast<double>(ids.size());
        })->Unit(benchmark::kMillisecond)->MinTime(1.0);
    };
    for (const char* file : {"bpe_llama.json", "unigram.json"}) {
        auto tok = std::make_shared<tinyllm::tokenizer>(tinyllm::load_tokenizer(dir + file));
        for (const bool by_line : {true, false})
            row(std::string("sentencepiece/") + file + (by_line ? "/lines" : "/whole"), by_line,
                [tok](std::string_view text, std::vector<tinyllm::token_id>& ids, std::size_t) {
                    tok->encode_ordinary(text, ids);
                });
        if (std::string(file) == "unigram.json")
            for (const bool by_line : {true, false})
                row(std::string("sentencepiece/") + file + (by_line ? "/sample_lines" : "/sample_whole"), by_line,
                    [tok](std::string_view text, std::vector<tinyllm::token_id>& ids, std::size_t i) {
                        tok->sentencepiece()->encode_sample(text, ids, {0.1, 1, std::uint64_t(i)});
                    });
    }
    for (const char* file : {"bpe.model", "unigram.model"}) {
        auto sp = std::make_shared<tinyllm::sentencepiece_processor>(tinyllm::load_sentencepiece_model(dir + file));
        for (const bool by_line : {true, false})
            row(std::string("sentencepiece/") + file + (by_line ? "/lines" : "/whole"), by_line,
                [sp](std::string_view text, std::vector<tinyllm::token_id>& ids, std::size_t) {
                    const auto v = sp->encode(text);
                    ids.insert(ids.end(), v.begin(), v.end());
                });
    }
}

void register_all() {
    register_sentencepiece();
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
