// examples/tinyllm/bench_sampling.cu — the CUDA rows of `tinyllm bench
// greedy|temperature|top_k|top_p|min_p` (see bench_sampling.hpp for the shapes
// and bytes; CPU rows in bench_sampling.cpp; PyTorch: bench/baselines/sampling.py).
//
//   v1 unfused  one kernel per processor (temperature, top_k, top_p, min_p, each
//               in place) and then the draw. They overwrite the logits, so each
//               timed run first restores them with a device-to-device copy of
//               4·B·V bytes, which is INCLUDED in the v1 time.
//   v2 fused    tinyllm::cuda::sample_fused(out, logits, params, ...): one kernel.
//   v3 split    tinyllm::cuda::sample_split / greedy_split: several blocks per
//               row (split_count's choice: 5 at B = 64, V = 128256; greedy's
//               greedy_split_count: 8), one launch per pass (greedy: one launch).
//   v4 candidates  tinyllm::cuda::sample_candidates (top-k only): one launch;
//               every block keeps its chunk's k largest keys (16 chunks of at
//               most 8192 at B = 64, V = 128256) and each row's last block
//               selects and draws among them.
//   v5 buckets  tinyllm::cuda::sample_buckets (top-p without top-k): three
//               launches — the maximum, the row's mass in eighth-nat buckets of
//               z - m, then the crossing bucket's elements as candidates for the
//               threshold and the draw.
//   v6 filtered tinyllm::cuda::sample_filtered (top-k only): v4's slots and
//               last block, with fewer blocks per row (4 at B = 64), each
//               walking several chunks against a bound carried from chunk to
//               chunk, so that most chunks need no selection.
//   v7 chained  tinyllm::cuda::sample_chained (top-p without top-k): v5's
//               three passes in one launch, each block taking a ticket and a
//               row's blocks of one pass waiting only for that row's pass before.
//   greedy      v1: one argmax reduction per row (greedy_reduction); v3 also
//               with 5, 16 and 32 blocks per row (forced split counts).
// Each version first runs once on poisoned tokens with the host-side status
// check, and its tokens must be identical to the CPU reference's; the timed
// runs skip the status copy (sampling_check::none). The v3 and v5 rows also
// give each launch's time (after an L2 flush, from a launch_timeline) in the
// check column: which pass costs what, without a profiler.
#include "bench_sampling.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/sampling.cuh>
#include <tinyllm/cuda/timeline.cuh>
#include <tinyllm/cuda/timing.cuh>

#include <cstdio>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace sb = tinyllm_cli::sampling_bench;
namespace tc = tinyllm::cuda;
using tinyllm::extents;
using tinyllm::index_t;

namespace {

void cuda_rows(bench_context& ctx, const sb::setting& s) {
    if (!ctx.gpu_available) return;
    const index_t V = sb::vocab(ctx), B = sb::rows;
    const auto z = sb::logits(V);
    const auto want = sb::reference(z, V, s.params);
    const auto original = tc::to_device(z);
    tc::device_buffer<float> work(z.size());
    tc::device_buffer<tinyllm::token_id> out(static_cast<std::size_t>(B));
    const auto logits = work.view(extents<2>{B, V});
    const auto tokens = out.view(extents<1>{B});
    const double bytes = 4.0 * B * V;
    tc::timing_options o;
    o.repeats = ctx.repeats;

    auto restore = [&] {
        TINYLLM_CUDA_CHECK(cudaMemcpyAsync(work.data(), original.data(), original.bytes(), cudaMemcpyDeviceToDevice));
    };
    // A rung of several launches (split = true) also runs once, after an L2 flush, under a
    // launch_timeline (timeline.cuh): the check column gets each launch's time, so a run
    // without a profiler still shows which pass costs what.
    auto add = [&](const char* version, const char* key, bool baseline, auto&& run, bool split = false) {
        out.poison();
        run(tc::sampling_check::sync);
        bool agrees = false;
        std::string check = sb::compare_tokens(tc::to_host(out), want, agrees);
        const auto timing = tc::time_gpu(std::string(s.component) + "/" + key + "/" + sb::shape(V),
                                         [&] { run(tc::sampling_check::none); }, bytes, 0, o);
        if (split) {
            tc::detail::l2_flusher flusher;
            flusher.flush(o.flush, nullptr);
            tc::launch_timeline timeline;
            run(tc::sampling_check::none);
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            std::string launches;
            for (const auto& span : timeline.spans()) {
                char us[32];
                std::snprintf(us, sizeof us, "%s%.1f", launches.empty() ? "" : " + ", span.us);
                launches += us;
            }
            check += "; launches " + launches + " us";
        }
        ctx.rows.push_back({version, "cuda", timing, check, agrees, baseline});
    };

    const auto& p = s.params;
    if (p.temperature == 0.0f) {
        restore();
        add("greedy reduction", "cuda_greedy", true,
            [&](tc::sampling_check c) { tc::greedy_reduction(tokens, logits, c); });
        add("v3 split", "cuda_v3_split", false,
            [&](tc::sampling_check c) { tc::greedy_split(tokens, logits, 0, c); });
        // The same kernel with other block counts per row than greedy_split_count's
        // (8 at B = 64): how the count trades one wave's balance over the SMs against
        // each block's fixed cost (its reduction and the last block's decode). The
        // first is split_count's, which the sampling passes use (5 at B = 64).
        const int chosen = tc::detail::greedy_split_count(B, V, 0);
        for (const int splits : {tc::detail::split_count(B, V, 0), 16, 32}) {
            if (splits == chosen || splits > tc::detail::split_count(B, V, splits)) continue;
            const std::string version = "v3 split, " + std::to_string(splits) + " blocks/row";
            const std::string key = "cuda_v3_split_x" + std::to_string(splits);
            add(version.c_str(), key.c_str(), false,
                [&](tc::sampling_check c) { tc::greedy_split(tokens, logits, splits, c); });
        }
        return;
    }
    add("v1 unfused (+copy)", "cuda_v1_unfused", true, [&](tc::sampling_check c) {
        restore();
        if (p.temperature != 1.0f) tc::temperature(logits, p.temperature, c);
        if (p.top_k) tc::top_k(logits, *p.top_k, c);
        if (p.top_p) tc::top_p(logits, *p.top_p, c);
        if (p.min_p) tc::min_p(logits, *p.min_p, c);
        tc::sample(tokens, logits, sb::seed, sb::step, 0, c);
    });
    restore();
    add("v2 fused", "cuda_v2_fused", false,
        [&](tc::sampling_check c) { tc::sample_fused(tokens, logits, p, sb::seed, sb::step, 0, c); });
    add(
        "v3 split", "cuda_v3_split", false,
        [&](tc::sampling_check c) { tc::sample_split(tokens, logits, p, sb::seed, sb::step, 0, 0, c); }, true);
    if (tc::detail::candidates_apply(V, p)) {
        add("v4 candidates", "cuda_v4_candidates", false,
            [&](tc::sampling_check c) { tc::sample_candidates(tokens, logits, p, sb::seed, sb::step, 0, 0, c); });
        add("v6 filtered", "cuda_v6_filtered", false,
            [&](tc::sampling_check c) { tc::sample_filtered(tokens, logits, p, sb::seed, sb::step, 0, 0, c); });
    }
    if (tc::detail::buckets_apply(V, p)) {
        add(
            "v5 buckets", "cuda_v5_buckets", false,
            [&](tc::sampling_check c) { tc::sample_buckets(tokens, logits, p, sb::seed, sb::step, 0, 0, c); }, true);
        add("v7 chained", "cuda_v7_chained", false,
            [&](tc::sampling_check c) { tc::sample_chained(tokens, logits, p, sb::seed, sb::step, 0, 0, c); });
    }
}

}  // namespace

TINYLLM_BENCH("greedy", "argmax of B=64 rows of V logits (--size V, default 128256; simulated GPU 5003)", 1) { cuda_rows(ctx, sb::settings()[0]); }
TINYLLM_BENCH("temperature", "temperature 0.7 + multinomial draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 1) {
    cuda_rows(ctx, sb::settings()[1]);
}
TINYLLM_BENCH("top_k", "top-k 50 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 1) { cuda_rows(ctx, sb::settings()[2]); }
TINYLLM_BENCH("top_p", "top-p 0.9 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 1) { cuda_rows(ctx, sb::settings()[3]); }
TINYLLM_BENCH("min_p", "min-p 0.1 + draw, B=64 x V (--size V, default 128256; simulated GPU 5003)", 1) { cuda_rows(ctx, sb::settings()[4]); }
