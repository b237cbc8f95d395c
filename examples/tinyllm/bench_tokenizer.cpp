// examples/tinyllm/bench_tokenizer.cpp — CPU row of `tinyllm bench bpe`:
// encode_ordinary over a batch of documents on one thread (see
// bench_tokenizer.hpp; the CUDA row is in bench_tokenizer.cu). Bytes: the
// documents' text. For the comparison with tiktoken see
// bench/tokenizer_vs_tiktoken.py.
#include "bench_tokenizer.hpp"
#include "registry.hpp"

#include <tinyllm/timing.hpp>

#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_BENCH("bpe", "byte-level BPE encoding of a batch of ~1 KB documents (r50k_base from ../shared, else a trained vocabulary): --size documents (default 2000; simulated GPU 64)", 0) {
    const auto w = bpe_bench::make_workload(ctx);
    std::size_t n = 0;
    auto timing = tinyllm::time_cpu(
        "bpe/cpu_reference/" + w.shape(),
        [&] {
            n = 0;
            for (const auto& d : w.docs) n += w.tok->encode_ordinary(d).size();
        },
        w.bytes, 0, 1, w.repeats);
    ctx.rows.push_back({"cpu 1 thread", "cpu", timing, std::to_string(n) + " tokens", true, true});
}
