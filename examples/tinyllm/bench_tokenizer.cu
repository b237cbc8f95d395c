// examples/tinyllm/bench_tokenizer.cu — CUDA row of `tinyllm bench bpe`:
// cuda::encode_batch (host pre-tokenization, one GPU thread per piece, host
// gather) on the same documents as the CPU row, timed end to end on the host
// clock (transfers included), and checked id for id against encode_ordinary.
#include "bench_tokenizer.hpp"
#include "registry.hpp"

#include <tinyllm/cuda/bpe.cuh>
#include <tinyllm/timing.hpp>

#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_BENCH("bpe", "byte-level BPE encoding of a batch of ~1 KB documents (r50k_base from ../shared, else a trained vocabulary): --size documents (default 2000)", 1) {
    if (!ctx.gpu_available) return;
    const long long count = ctx.size > 0 ? ctx.size : 2000;
    std::string which;
    const auto tok = bpe_bench::tokenizer(which);
    const auto docs = bpe_bench::documents(count);
    double bytes = 0;
    for (const auto& d : docs) bytes += static_cast<double>(d.size());
    const tinyllm::cuda::bpe_device_vocab dv(tok->vocab());
    std::vector<std::vector<tinyllm::token_id>> got;
    const int repeats = ctx.repeats < 5 ? ctx.repeats : 5;
    auto timing = tinyllm::time_cpu("bpe/cuda_encode_batch/docs=" + std::to_string(count) + "," + which,
                                    [&] { got = tinyllm::cuda::encode_batch(*tok, dv, docs); }, bytes, 0, 1, repeats);
    std::size_t wrong = 0;
    for (std::size_t d = 0; d < docs.size(); ++d) wrong += got[d] != tok->encode_ordinary(docs[d]);
    ctx.rows.push_back({"cuda batch", "cuda", timing,
                        wrong == 0 ? "identical ids" : std::to_string(wrong) + " documents differ", wrong == 0, false});
}
