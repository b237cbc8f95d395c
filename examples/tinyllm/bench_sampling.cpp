// examples/tinyllm/bench_sampling.cpp — the CPU reference rows of `tinyllm bench
// greedy|temperature|top_k|top_p|min_p` (see bench_sampling.hpp; CUDA rows in
// bench_sampling.cu). The CPU reference sorts rows for top-p, so it is timed
// with at most 3 repeats.
#include "bench_sampling.hpp"

#include <tinyllm/timing.hpp>

#include <algorithm>

using namespace tinyllm_cli;
namespace sb = tinyllm_cli::sampling_bench;

namespace {
void cpu_row(bench_context& ctx, const sb::setting& s) {
    const tinyllm::index_t V = sb::vocab(ctx);
    const auto z = sb::logits(V);
    std::vector<tinyllm::token_id> got;
    const auto timing = tinyllm::time_cpu(
        std::string(s.component) + "/cpu_reference/" + sb::shape(V), [&] { got = sb::reference(z, V, s.params); },
        4.0 * sb::rows * V, 0, 0, std::min(ctx.repeats, 3));
    ctx.rows.push_back({"cpu reference", "cpu", timing, "reference", !got.empty(), false});
}
}  // namespace

TINYLLM_BENCH("greedy", "argmax of B=64 rows of V logits (--size V, default 128256; simulated GPU 5003)", 0) { cpu_row(ctx, sb::settings()[0]); }
TINYLLM_BENCH("temperature", "temperature 0.7 + multinomial draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 0) {
    cpu_row(ctx, sb::settings()[1]);
}
TINYLLM_BENCH("top_k", "top-k 50 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 0) { cpu_row(ctx, sb::settings()[2]); }
TINYLLM_BENCH("top_p", "top-p 0.9 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 0) { cpu_row(ctx, sb::settings()[3]); }
TINYLLM_BENCH("min_p", "min-p 0.1 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 0) { cpu_row(ctx, sb::settings()[4]); }
