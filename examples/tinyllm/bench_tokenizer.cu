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

TINYLLM_BENCH("bpe", "byte-level BPE encoding of a batch of ~1 KB documents (r50k_base from ../shared, else a trained vocabulary): --size documents (default 2000; simulated GPU 64)", 1) {
    if (!ctx.gpu_available) return;
    const auto w = bpe_bench::make_workload(ctx);
    const tinyllm::cuda::bpe_device_vocab dv(w.tok->vocab());
    std::vector<std::vector<tinyllm::token_id>> got;
    auto timing = tinyllm::time_cpu("bpe/cuda_encode_batch/" + w.shape(),
                                    [&] { got = tinyllm::cuda::encode_batch(*w.tok, dv, w.docs); }, w.bytes, 0, 1,
                                    w.repeats);
    std::size_t wrong = 0;
    for (std::size_t d = 0; d < w.docs.size(); ++d) wrong += got[d] != w.tok->encode_ordinary(w.docs[d]);
    ctx.rows.push_back({"cuda batch", "cuda", timing,
                        wrong == 0 ? "identical ids" : std::to_string(wrong) + " documents differ", wrong == 0, false});
}
