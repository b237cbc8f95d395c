// examples/tinyllm/bench_model.cu — `tinyllm bench model`: the whole decoder
// on the GPU (tinyllm::cuda::model), prefill and decode tokens/s.
//
// Models: random weights (tinyllm::random_model_weights) of two real shapes,
// tinyllm::model_shapes::gpt2_124m() and llama_1b() (Llama-3.2-1B), each in
// float32 and bfloat16. Rows "model/tinyllm_cuda/<model>_<dtype>_<phase>_b<B>",
// the names bench/baselines/model.py gives transformers (eager) on the same
// shapes, so tools/bench-report puts them in one table:
//   prefill  B prompts of 128 tokens in one forward (logits of the last position
//            of each row): tokens/s = 128 B / time; flops = 2 · weights · tokens.
//   decode   one token per row at cache length 128 (the lengths are reset before
//            each timed step, so every step does the same work): tokens/s = B / time;
//            bytes = the weights read once (+ the K/V cache read), so the GB/s
//            column says how close a step gets to the weights-read-once floor.
//   decode_graph  the same step from model::decode_step, one CUDA-graph launch per
//            step (the cache grows by one position per timed step from 128).
//   decode_dataflow  the same step as ONE kernel launch (model::decode_step_dataflow,
//            decode_dataflow.cuh; dense models, B <= 8), the cache growing as decode_graph's.
//   paged_decode, paged_decode_graph  continuous batching's step (model::forward_batch)
//            on B paged sessions (blocks of 16) decoding from 128 cached positions
//            (+ up to 64), eagerly and from the pool's CUDA graphs.
// Check column: tokens/s, and how the model's last-position logits agree with
// the CPU reference (GPT-2 shape, 8-token prompt) or, for the 1B shape whose CPU
// run would take minutes, bfloat16 against the float32 GPU model.
//
// `tinyllm bench model_breakdown`: where batch-1 bf16 decode from a CUDA graph (the
// decode_graph rows) spends its time, kernel by kernel, for both shapes: the step is
// captured under a launch_timeline (timeline.cuh), which puts a pair of events around
// every node, and each replay is split into its kernels. A row per kernel name: its
// time per step summed over its launches (median over the steps), how many launches a
// step makes and their share of the step; then the whole step from its first node's
// start to its last node's end, and what the nodes leave over (the gaps between them).
// The same for continuous batching's paged step (forward_batch on one paged session,
// from the pool's graph), whose paged_decode_graph row run E measured at 2.5 times the
// contiguous step's. Programmatic launch stays off: its edges cannot pass the event
// nodes. The event nodes cost a little time of their own, so the step is slower than
// decode_graph's row. Last, the one-launch step (model::decode_step_dataflow), traced: a
// row per kind of phase (embed, qkv, attention, out_proj, ffn_in, ffn_out, logits) with
// its time on the step's chain summed over the layers, and the whole launch.
//
// The one-launch step's rows run after every other row of their component (both
// models' graph, eager and paged rows first; `later` below). Its blocks wait for each
// other in a loop, and it has run only on the simulated GPU so far: a step that hangs
// traps after about 17 s, which ends the process with a CUDA error, and `tinyllm bench`
// then prints the rows measured before it (main.cpp) — all of the others.
//
// `tinyllm bench model_moe`: the same rows for a Mixtral-style model (mixtral_1b
// below: Llama-3.2-1B's shape with 8 experts of 4096 per layer, top 2, so a token
// multiplies with as many weights as in llama_1b). A decode step's bytes count only
// the experts its tokens can have chosen, at most min(8, 2 B) per layer. Decode steps
// of at most 8 rows run the experts as grouped GEMVs and are captured in a CUDA graph;
// B = 32 runs them on cuBLAS with the dispatch plan read back, eagerly (0 graphs).
//
// On the simulated GPU (docs/simulator.md) the real shapes would take hours: the
// rows run two small models of the same architectures instead (gpt2_tiny and
// llama_tiny below: 2 layers, head dim 64, Llama's GQA 4:1 and llama3 RoPE), with
// prompts of 64 tokens at B = 1 and 4 — still a prompt for v4 mma (bf16) and v3
// flash (fp32), and a decode step for the split-K kernel — and both models are
// checked against the CPU reference (mixtral_tiny too: 2 layers, D 256, experts of 256).
#include "registry.hpp"

#include <tinyllm/cuda/model.cuh>
#include <tinyllm/cuda/timeline.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/model.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;
namespace tc = tinyllm::cuda;

namespace {

// The prompt length and the batch sizes of the rows.
struct run_shape {
    index_t prompt_length;
    std::vector<index_t> batches;
};
run_shape run_shape_for(const bench_context& ctx) {
    return ctx.simulated ? run_shape{64, {1, 4}} : run_shape{128, {1, 32}};
}

// Small models of the two architectures for the simulated GPU, with the real shapes'
// paths: GPT-2 (LayerNorm, learned positions, biases, GELU MLP, MHA) and Llama-3.2
// (RMSNorm, llama3-scaled RoPE, GQA 4:1, SwiGLU), head dim 64, tied embeddings, an
// odd vocabulary for GPT-2 as in the real one; both vocabularies hold the probe's ids.
tinyllm::model_config gpt2_tiny() {
    auto c = tinyllm::model_shapes::gpt2_124m();
    c.vocab_size = 4099;
    c.hidden_size = 128;
    c.num_layers = 2;
    c.num_heads = c.num_kv_heads = 2;
    c.intermediate_size = 512;
    return c;
}
// `c` cut to 2 layers of D 256, GQA 4:1 (heads of 64), FFN width F, vocabulary 4096.
tinyllm::model_config tiny_of(tinyllm::model_config c, index_t F) {
    c.vocab_size = 4096;
    c.hidden_size = 256;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 1;
    c.intermediate_size = F;
    return c;
}
tinyllm::model_config llama_tiny() { return tiny_of(tinyllm::model_shapes::llama_1b(), 512); }

// The CPU reference's logits of the last position of `probe`.
std::vector<float> cpu_last_logits(const tinyllm::model_config& c, const tinyllm::model_weights& w,
                                   const std::vector<tinyllm::token_id>& probe) {
    const tinyllm::cpu::model host(c, w);
    auto hs = host.new_session(static_cast<index_t>(probe.size()));
    const auto all = host.forward(hs, probe);
    return std::vector<float>(all.values().end() - c.vocab_size, all.values().end());
}

// A Mixtral-style model of the Llama-3.2-1B shape: each MLP is 8 experts of width 4096,
// 2 of them per token (Mixtral's routing), so a token multiplies with 2 x 4096 = 8192
// columns of experts, as many as llama_1b's MLP: the same active weights per token
// (1.24B), 3.6B in all. Mixtral's RoPE (theta 1e6, no scaling); tied embeddings as in
// llama_1b. A shape for the benchmark, not a published checkpoint.
tinyllm::model_config mixtral_1b() {
    auto c = tinyllm::model_shapes::llama_1b();
    c.arch = tinyllm::model_arch::mixtral;
    c.architecture = "MixtralForCausalLM";
    c.intermediate_size = 4096;
    c.num_experts = 8;
    c.experts_per_token = 2;
    c.rope.theta = 1e6;
    c.rope.scaling = tinyllm::rope_scaling::none;
    return c;
}
// Its small version for the simulated GPU (llama_tiny's, with experts of 256).
tinyllm::model_config mixtral_tiny() { return tiny_of(mixtral_1b(), 256); }

// One expert's three matrices (w1, w3: (F, D); w2: (D, F)), in elements.
double expert_elements(const tinyllm::model_config& c) {
    return 3.0 * static_cast<double>(c.hidden_size) * static_cast<double>(c.intermediate_size);
}

// Weights that a token multiplies with (the embedding table once, as the tied LM head;
// of a MoE layer, the router and the token's k experts).
double matmul_weights(const tinyllm::model_config& c) {
    const double D = static_cast<double>(c.hidden_size), F = static_cast<double>(c.intermediate_size);
    const double attn = D * (c.num_heads + 2.0 * c.num_kv_heads) * c.head_dim + D * c.num_heads * c.head_dim;
    const double ffn = c.arch == tinyllm::model_arch::gpt2      ? 2 * D * F
                       : c.arch == tinyllm::model_arch::mixtral ? c.experts_per_token * expert_elements(c) + c.num_experts * D
                                                                : 3 * D * F;
    return c.num_layers * (attn + ffn) + static_cast<double>(c.vocab_size) * D;
}

// The weight bytes a decode step of B tokens reads: all of them, except, in a MoE
// layer, the experts no token chose; B tokens choose at most min(E, k B) experts
// (exactly k at B = 1), so this is the bytes-read floor's numerator.
template <class T>
double step_weight_bytes(const tc::model<T>& m, index_t B) {
    const tinyllm::model_config& c = m.config();
    const double all = static_cast<double>(m.weight_bytes());
    if (c.arch != tinyllm::model_arch::mixtral) return all;
    const index_t unused = c.num_experts - std::min(c.num_experts, c.experts_per_token * B);
    return all - static_cast<double>(c.num_layers * unused) * expert_elements(c) * sizeof(T);
}

// Rows a component runs after all its others (see the header: the one-launch step's).
using later_rows = std::vector<std::function<void()>>;

template <class T>
void model_rows(bench_context& ctx, const std::string& model_name, const std::shared_ptr<const tc::model<T>>& shared,
                const std::string& check_prefix, later_rows& later) {
    const tc::model<T>& m = *shared;
    const tinyllm::model_config& c = m.config();
    const char* dtype = std::is_same_v<T, float> ? "fp32" : "bf16";
    tc::timing_options o;
    o.repeats = ctx.repeats;
    o.warmup = 2;
    const run_shape run = run_shape_for(ctx);
    const index_t prompt_length = run.prompt_length;
    for (const index_t B : run.batches) {
        std::vector<tinyllm::token_id> tokens(static_cast<std::size_t>(B * prompt_length));
        for (std::size_t i = 0; i < tokens.size(); ++i)
            tokens[i] = static_cast<tinyllm::token_id>((i * 2654435761u) % static_cast<std::size_t>(c.vocab_size));
        auto s = m.new_session(B, prompt_length + 1);
        const tinyllm::tensor_view<const tinyllm::token_id, 2> prompt(tokens.data(), {B, prompt_length});
        const auto shape = [&](const char* phase) {
            return model_name + "_" + dtype + "_" + phase + "_b" + std::to_string(B);
        };
        auto prefill = tc::time_gpu("model/tinyllm_cuda/" + shape("prefill"), [&] {
            s.lengths.assign(static_cast<std::size_t>(B), 0);
            m.forward(s, prompt);
        }, 0, 2.0 * matmul_weights(c) * static_cast<double>(B * prompt_length), o);
        char check[160];
        std::snprintf(check, sizeof check, "%.0f tok/s; %s", B * prompt_length / (prefill.median_us * 1e-6),
                      check_prefix.c_str());
        ctx.rows.push_back({std::string("prefill ") + dtype + " B=" + std::to_string(B), "cuda", prefill, check, true,
                            false});

        const std::vector<tinyllm::token_id> next(static_cast<std::size_t>(B), 1);
        const double kv_bytes = 2.0 * c.num_layers * B * prompt_length * c.num_kv_heads * c.head_dim * sizeof(T);
        auto decode = tc::time_gpu("model/tinyllm_cuda/" + shape("decode"), [&] {
            s.lengths.assign(static_cast<std::size_t>(B), prompt_length);
            m.forward(s, tinyllm::tensor_view<const tinyllm::token_id, 2>(next.data(), {B, 1}));
        }, step_weight_bytes(m, B) + kv_bytes, 0, o);
        std::snprintf(check, sizeof check, "%.0f tok/s; %s", B / (decode.median_us * 1e-6), check_prefix.c_str());
        ctx.rows.push_back({std::string("decode ") + dtype + " B=" + std::to_string(B), "cuda", decode, check, true,
                            false});

        // The same step replayed from model::decode_step's CUDA graph (one launch per
        // step instead of a dozen per layer). Each timed step feeds one more token,
        // so the cache grows by one position per step from the same 128. The session
        // first reads the same prompts: a MoE step's routing, and so the experts it
        // reads, depends on what the rows hold (rows alike choose the same experts).
        //
        // Twice: as launched so far, and with programmatic dependent launch (launch.cuh:
        // the chained kernels of a step start before the one before them ends). The
        // second row's check is the first step after the prompt, from both sessions:
        // the same logits, bit for bit.
        const index_t graph_room = 512;
        const tc::device_buffer<tinyllm::token_id> d_next = tc::to_device(next);
        const tinyllm::tensor_view<const tinyllm::token_id, 1> next_ids(d_next.data(), {B});
        std::vector<float> first_step[2];
        for (const bool chained : {false, true}) {
            const tc::programmatic_launch_scope pdl(chained);
            auto gs = m.new_session(B, prompt_length + 1 + graph_room);
            m.forward(gs, prompt);
            const auto restart = [&] {
                gs.lengths.assign(static_cast<std::size_t>(B), prompt_length);
            };
            restart();
            m.forward(gs, tinyllm::tensor_view<const tinyllm::token_id, 2>(next.data(), {B, 1}));  // sizes the buffers
            restart();
            const auto logits = m.decode_step(gs, next_ids);  // captured here, then compared
            first_step[chained].resize(static_cast<std::size_t>(logits.size()));
            TINYLLM_CUDA_CHECK(cudaMemcpy(first_step[chained].data(), logits.data(), first_step[chained].size() * sizeof(float),
                                          cudaMemcpyDeviceToHost));
            auto graphed = tc::time_gpu("model/tinyllm_cuda/" + shape(chained ? "decode_graph_pdl" : "decode_graph"), [&] {
                if (gs.lengths[0] + 1 > gs.capacity) restart();
                m.decode_step(gs, next_ids);
            }, step_weight_bytes(m, B) + kv_bytes, 0, o);
            const bool same = !chained || first_step[0] == first_step[1];
            std::snprintf(check, sizeof check, "%.0f tok/s; %zu graphs, %zu replays%s%s",
                          B / (graphed.median_us * 1e-6), gs.graph_captures(), gs.graph_replays(),
                          gs.graph_failure().empty() ? "" : "; capture FAILED",
                          !chained ? "" : same ? "; logits = decode graph's" : "; logits DIFFER from decode graph's");
            ctx.rows.push_back({std::string(chained ? "decode graph pdl " : "decode graph ") + dtype +
                                    " B=" + std::to_string(B),
                                "cuda", graphed, check, gs.graph_failure().empty() && same, false});
        }

        // The same step as ONE kernel launch (model::decode_step_dataflow,
        // decode_dataflow.cuh): dense decoders, at most 8 rows. Each timed step feeds one
        // more token, as decode_graph's do; the check is its first step's logits against
        // the graph's first step (the same tokens and positions): the same arithmetic up
        // to the order of the norms' and attention's sums. Run later, after the
        // component's other rows (later_rows).
        if (B <= tc::detail::dataflow_max_rows && c.num_experts == 0) {
            later.push_back([&ctx, shared, model_name, shape_name = shape("decode_dataflow"), B, prompt_length,
                             graph_room, tokens, next, graph_first = first_step[0], kv_bytes, o, dtype] {
                const tc::model<T>& m = *shared;
                const tc::device_buffer<tinyllm::token_id> d_next = tc::to_device(next);
                const tinyllm::tensor_view<const tinyllm::token_id, 1> next_ids(d_next.data(), {B});
                auto fs = m.new_session(B, prompt_length + 1 + graph_room);
                m.forward(fs, tinyllm::tensor_view<const tinyllm::token_id, 2>(tokens.data(), {B, prompt_length}));
                const auto restart = [&] { fs.lengths.assign(static_cast<std::size_t>(B), prompt_length); };
                const auto logits = m.decode_step_dataflow(fs, next_ids);
                std::vector<float> first(static_cast<std::size_t>(logits.size()));
                TINYLLM_CUDA_CHECK(cudaMemcpy(first.data(), logits.data(), first.size() * sizeof(float),
                                              cudaMemcpyDeviceToHost));
                const double rel = rel_l2(first, graph_first);  // infinite where a logit is not finite
                const double allowed = std::is_same_v<T, float> ? 1e-5 : 2e-2;
                restart();
                auto flow = tc::time_gpu("model/tinyllm_cuda/" + shape_name, [&] {
                    if (fs.lengths[0] + 1 > fs.capacity) restart();
                    m.decode_step_dataflow(fs, next_ids);
                }, step_weight_bytes(m, B) + kv_bytes, 0, o);
                char check[160];
                std::snprintf(check, sizeof check,
                              "%.0f tok/s; first step %.2g rel-L2 from the decode graph's (allowed %.0e)",
                              B / (flow.median_us * 1e-6), rel, allowed);
                // Named with the model: these rows come after every model's others.
                ctx.rows.push_back({model_name + " dataflow " + dtype + " B=" + std::to_string(B), "cuda", flow,
                                    check, rel <= allowed, false});
            });
        }

        // Continuous batching's step (model::forward_batch) on B paged sessions decoding
        // from the same 128 cached positions, eagerly and from the pool's graphs; each
        // timed step feeds one more token, and the sessions are cut back to 128 positions
        // when their room runs out.
        for (const bool graphs : {false, true}) {
            const index_t block_size = 16, room = 64, per_session = (prompt_length + room) / block_size;
            tc::paged_kv_pool<T> pool(c, B * per_session, block_size);
            pool.use_graphs(graphs);
            std::vector<tinyllm::cpu::model::session> sessions;
            for (index_t b = 0; b < B; ++b) sessions.push_back(m.new_session(pool));
            std::vector<tinyllm::cpu::model::session*> ptrs;
            for (auto& ps : sessions) ptrs.push_back(&ps);
            std::vector<std::span<const tinyllm::token_id>> feeds;
            for (index_t b = 0; b < B; ++b)
                feeds.emplace_back(tokens.data() + b * prompt_length, static_cast<std::size_t>(prompt_length));
            m.forward_batch(pool, ptrs, feeds);  // the prompts
            feeds.assign(static_cast<std::size_t>(B), std::span<const tinyllm::token_id>(next.data(), 1));
            auto paged = tc::time_gpu("model/tinyllm_cuda/" + shape(graphs ? "paged_decode_graph" : "paged_decode"), [&] {
                if (sessions[0].length + 1 > prompt_length + room)
                    for (auto& ps : sessions) {
                        ps.paged.truncate(prompt_length);
                        ps.length = prompt_length;
                    }
                m.forward_batch(pool, ptrs, feeds);
            }, step_weight_bytes(m, B) + kv_bytes, 0, o);
            std::snprintf(check, sizeof check, "%.0f tok/s; %zu graphs, %zu replays%s", B / (paged.median_us * 1e-6),
                          pool.graph_captures(), pool.graph_replays(),
                          pool.graph_failure().empty() ? "" : "; capture FAILED");
            ctx.rows.push_back({std::string(graphs ? "paged graph " : "paged ") + dtype +
                                    " B=" + std::to_string(B),
                                "cuda", paged, check, pool.graph_failure().empty(), false});
        }
    }
}

// One model's rows, float32 then bfloat16 (each uploaded once); `want` = the last-position
// logits of `probe` to check against (empty: the float32 GPU model's own, for bf16 only).
void model_component(bench_context& ctx, const std::string& name, const tinyllm::model_config& c,
                     const tinyllm::model_weights& w, const std::vector<tinyllm::token_id>& probe, std::vector<float> want,
                     const char* reference, later_rows& later) {
    char agree[96];
    bool ok = true;
    {
        // Shared with the rows run later, which keep it on the GPU until then.
        const auto shared = std::make_shared<const tc::model<float>>(c, w);
        const tc::model<float>& m = *shared;
        const auto got = tc::last_logits(m, probe);
        if (want.empty()) {
            want = got;
            std::snprintf(agree, sizeof agree, "reference for bf16");
        } else {
            const double e = rel_l2(got, want);
            ok = e <= 1e-4;
            std::snprintf(agree, sizeof agree, "rel-L2 %.1e vs %s", e, reference);
        }
        model_rows(ctx, name, shared, agree, later);
        if (!ok) ctx.rows.back().agrees = false;
    }
    const auto shared = std::make_shared<const tc::model<tinyllm::bfloat16>>(c, w);
    const double e = rel_l2(tc::last_logits(*shared, probe), want);
    std::snprintf(agree, sizeof agree, "rel-L2 %.1e vs %s", e, reference);
    model_rows(ctx, name, shared, agree, later);
    if (!(e <= 3e-2)) ctx.rows.back().agrees = false;
}

// model_breakdown's rows for one decode step from a graph captured under `timeline`:
// `replay` runs one step (a replay: every node records its events again), `steps`
// times. A row per kernel name, the gaps between the nodes, the whole step. `graphs`
// and `failure`: what the session or pool says of its captures (one graph is right:
// a second shape's graph would leave stale events among the captured ones).
template <class Replay>
void timeline_rows(bench_context& ctx, const std::string& label, const std::string& shape,
                   const tc::launch_timeline& timeline, int steps, double bytes, Replay replay,
                   const std::function<std::size_t()>& graphs, const std::function<std::string()>& failure) {
    std::map<std::string, std::vector<double>> per_name;  // us per step, one entry per replay
    std::map<std::string, int> launches;                  // per step
    std::vector<std::string> order;                       // by time in the first replay
    std::vector<double> step_us, gap_us;
    std::size_t nodes = 0;
    for (int k = 0; k < steps; ++k) {
        replay();
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        double spanned = 0;
        nodes = 0;
        for (const auto& g : timeline.groups(true)) {
            if (k == 0) order.push_back(g.name);
            per_name[g.name].push_back(g.us);
            launches[g.name] = g.count;
            spanned += g.us;
            nodes += static_cast<std::size_t>(g.count);
        }
        step_us.push_back(timeline.elapsed_us(true));
        gap_us.push_back(step_us.back() - spanned);
    }
    const bool ok = failure().empty() && graphs() == 1 && nodes > 0;
    // JSON names component/version/shape, as tools/bench-report reads them: one table per
    // step shape, a row per kernel.
    const auto json_name = [&](const std::string& what) { return "model_breakdown/" + what + "/" + shape; };
    const double step_median = tinyllm::summarize("step", step_us, 0, 0).median_us;
    const auto share = [&](double us) { return step_median > 0 ? 100.0 * us / step_median : 0.0; };
    char check[160];
    for (const std::string& name : order) {
        if (per_name[name].size() != static_cast<std::size_t>(steps)) continue;  // not in every replay: not ok
        auto t = tinyllm::summarize(json_name(name), per_name[name], 0, 0);
        std::snprintf(check, sizeof check, "%d launch%s a step, %.1f%% of the step", launches[name],
                      launches[name] == 1 ? "" : "es", share(t.median_us));
        const std::string kernel = name.size() > 60 ? name.substr(0, 57) + "..." : name;  // the JSON has it whole
        ctx.rows.push_back({label + ": " + kernel, "cuda", t, check, ok, false});
    }
    auto gaps = tinyllm::summarize(json_name("between_nodes"), gap_us, 0, 0);
    std::snprintf(check, sizeof check, "between the %zu nodes: %.1f%% of the step", nodes, share(gaps.median_us));
    ctx.rows.push_back({label + ": between nodes", "cuda", gaps, check, ok, false});
    auto whole = tinyllm::summarize(json_name("whole_step"), step_us, bytes, 0);
    std::snprintf(check, sizeof check, "%zu nodes, first start to last end; %zu graph%s%s", nodes, graphs(),
                  graphs() == 1 ? "" : "s", failure().empty() ? "" : "; capture FAILED");
    ctx.rows.push_back({label + ": whole step", "cuda", whole, check, ok, false});
}

// model_breakdown's rows for one model at B = 1 after the model rows' prompt: the
// session's decode step (model::decode_step) and continuous batching's paged step
// (model::forward_batch on one paged session), each captured under a launch_timeline.
template <class T>
void breakdown_rows(bench_context& ctx, const std::string& model_name,
                    const std::shared_ptr<const tc::model<T>>& shared, later_rows& later) {
    const tc::model<T>& m = *shared;
    const tinyllm::model_config& c = m.config();
    const std::string shape = model_name + (std::is_same_v<T, float> ? "_fp32" : "_bf16");
    const index_t B = 1, prompt_length = run_shape_for(ctx).prompt_length;
    const int steps = ctx.simulated ? 2 : std::max(5, ctx.repeats);
    std::vector<tinyllm::token_id> tokens(static_cast<std::size_t>(prompt_length));
    for (std::size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = static_cast<tinyllm::token_id>((i * 2654435761u) % static_cast<std::size_t>(c.vocab_size));
    const std::vector<tinyllm::token_id> next(1, 1);
    const double bytes = step_weight_bytes(m, B);
    const tc::programmatic_launch_scope no_pdl(false);
    {
        const tc::device_buffer<tinyllm::token_id> d_next = tc::to_device(next);
        const tinyllm::tensor_view<const tinyllm::token_id, 1> next_ids(d_next.data(), {B});
        auto gs = m.new_session(B, prompt_length + 2 + steps);
        m.forward(gs, tinyllm::tensor_view<const tinyllm::token_id, 2>(tokens.data(), {B, prompt_length}));
        gs.lengths.assign(1, prompt_length);
        m.forward(gs, tinyllm::tensor_view<const tinyllm::token_id, 2>(next.data(), {B, 1}));  // sizes the buffers
        gs.lengths.assign(1, prompt_length);
        tc::launch_timeline timeline;       // the graph below is captured with its events
        (void)m.decode_step(gs, next_ids);  // eager run and capture
        timeline_rows(
            ctx, model_name, shape + "_b1", timeline, steps, bytes, [&] { (void)m.decode_step(gs, next_ids); },
            [&] { return gs.graph_captures(); }, [&] { return gs.graph_failure(); });
    }
    if (c.num_experts == 0) later.push_back([&ctx, shared, model_name, shape, B, prompt_length, steps, tokens, next,
                                             bytes] {
        // The same step as one launch (model::decode_step_dataflow), traced: every block
        // stamps the GPU's clock, and each phase's time on the step's chain (from the end
        // of the phase before it to the end of its own last block) is summed per kind of
        // phase over the layers. The kinds' times add up to the whole launch. Run later,
        // after the component's other rows (later_rows).
        const tc::model<T>& m = *shared;
        const tc::programmatic_launch_scope no_pdl(false);
        const tc::device_buffer<tinyllm::token_id> d_next = tc::to_device(next);
        const tinyllm::tensor_view<const tinyllm::token_id, 1> next_ids(d_next.data(), {B});
        auto fs = m.new_session(B, prompt_length + 2 + steps);
        m.forward(fs, tinyllm::tensor_view<const tinyllm::token_id, 2>(tokens.data(), {B, prompt_length}));
        fs.dataflow_trace = true;
        std::vector<std::string> order;
        std::map<std::string, std::vector<double>> chain, waited;  // per kind, one entry per step
        std::map<std::string, int> phases;
        std::vector<double> step_us;
        unsigned blocks = 0;
        for (int k = 0; k < steps; ++k) {
            (void)m.decode_step_dataflow(fs, next_ids);
            std::map<std::string, double> sum, wait_sum;
            double total = 0;
            blocks = 0;
            for (const auto& ph : m.dataflow_profile(fs)) {
                const std::string name(tc::detail::dataflow_kind_name(ph.kind));
                if (k == 0 && phases[name]++ == 0) order.push_back(name);
                sum[name] += ph.chain_us;
                wait_sum[name] += ph.waited_us;
                total += ph.chain_us;
                blocks += ph.blocks;
            }
            for (const std::string& name : order) {
                chain[name].push_back(sum[name]);
                waited[name].push_back(wait_sum[name] / phases[name]);
            }
            step_us.push_back(total);
        }
        const std::string label = model_name + " dataflow", json_shape = shape + "_dataflow_b1";
        const double step_median = tinyllm::summarize("step", step_us, 0, 0).median_us;
        char check[160];
        for (const std::string& name : order) {
            auto t = tinyllm::summarize("model_breakdown/" + name + "/" + json_shape, chain[name], 0, 0);
            const double w = tinyllm::summarize("waited", waited[name], 0, 0).median_us;
            std::snprintf(check, sizeof check, "%d phase%s a step, %.1f%% of the step; a block waits %.1f us",
                          phases[name], phases[name] == 1 ? "" : "s",
                          step_median > 0 ? 100.0 * t.median_us / step_median : 0.0, w);
            ctx.rows.push_back({label + ": " + name, "cuda", t, check, true, false});
        }
        auto whole = tinyllm::summarize("model_breakdown/whole_step/" + json_shape, step_us, bytes, 0);
        std::snprintf(check, sizeof check, "%u blocks in one launch, first start to last end (traced)", blocks);
        ctx.rows.push_back({label + ": whole step", "cuda", whole, check, blocks > 0, false});
    });
    {
        // A pool of 16 blocks of 16: the step's table width stays 16 (table_width) for
        // every step from 129 positions to 256, so one graph serves them all.
        const index_t block_size = 16, blocks = (prompt_length + 2 + steps + block_size - 1) / block_size;
        tc::paged_kv_pool<T> pool(c, std::max<index_t>(16, blocks), block_size);
        pool.use_graphs(true);
        auto ps = m.new_session(pool);
        std::vector<tinyllm::cpu::model::session*> ptrs{&ps};
        std::vector<std::span<const tinyllm::token_id>> feeds{std::span<const tinyllm::token_id>(tokens)};
        m.forward_batch(pool, ptrs, feeds);  // the prompt
        feeds.assign(1, std::span<const tinyllm::token_id>(next));
        tc::launch_timeline timeline;
        m.forward_batch(pool, ptrs, feeds);  // the first decode step: eager run and capture
        timeline_rows(
            ctx, model_name + " paged", shape + "_paged_b1", timeline, steps, bytes,
            [&] { m.forward_batch(pool, ptrs, feeds); }, [&] { return pool.graph_captures(); },
            [&] { return pool.graph_failure(); });
    }
}

}  // namespace

TINYLLM_BENCH("model_breakdown", "where a batch-1 bf16 decode step from a CUDA graph spends its time, kernel by kernel (GPT-2 124M and Llama-3.2-1B shapes; simulated GPU: 2-layer models)", 3) {
    if (!ctx.gpu_available) return;
    const bool sim = ctx.simulated;
    later_rows later;
    {
        const auto c = sim ? gpt2_tiny() : tinyllm::model_shapes::gpt2_124m();
        breakdown_rows(ctx, sim ? "gpt2_tiny" : "gpt2_124m",
                       std::make_shared<const tc::model<tinyllm::bfloat16>>(c, tinyllm::random_model_weights(c, 124)),
                       later);
    }
    {
        const auto c = sim ? llama_tiny() : tinyllm::model_shapes::llama_1b();
        breakdown_rows(ctx, sim ? "llama_tiny" : "llama_1b",
                       std::make_shared<const tc::model<tinyllm::bfloat16>>(c, tinyllm::random_model_weights(c, 1000)),
                       later);
    }
    for (const auto& rows : later) rows();  // the one-launch steps, last
}

TINYLLM_BENCH("model", "decoder tokens/s: GPT-2 124M and Llama-3.2-1B shapes, fp32/bf16, B=1/32, prompt 128 (simulated GPU: 2-layer models of both, B=1/4, prompt 64)", 1) {
    if (!ctx.gpu_available) return;
    const std::vector<tinyllm::token_id> probe = {11, 7, 2026, 5, 300, 42, 9, 1000};
    const bool sim = ctx.simulated;  // no --size here: the simulated GPU always runs the small models
    later_rows later;
    {
        const auto c = sim ? gpt2_tiny() : tinyllm::model_shapes::gpt2_124m();
        const auto w = tinyllm::random_model_weights(c, 124);
        model_component(ctx, sim ? "gpt2_tiny" : "gpt2_124m", c, w, probe, cpu_last_logits(c, w, probe), "CPU", later);
    }
    if (sim) {
        const auto c = llama_tiny();
        const auto w = tinyllm::random_model_weights(c, 1000);
        model_component(ctx, "llama_tiny", c, w, probe, cpu_last_logits(c, w, probe), "CPU", later);
    } else {
        // 1.24B parameters: the CPU reference would take minutes, so bf16 is checked against fp32 on the GPU.
        const auto c = tinyllm::model_shapes::llama_1b();
        model_component(ctx, "llama_1b", c, tinyllm::random_model_weights(c, 1000), probe, {}, "fp32 GPU", later);
    }
    for (const auto& rows : later) rows();  // the one-launch steps, last
}

TINYLLM_BENCH("model_moe", "decoder tokens/s of a Mixtral-style MoE: Llama-3.2-1B's shape with 8 experts of 4096 per layer, top 2 (llama_1b's active weights, 3.6B in all), fp32/bf16, B=1/32, prompt 128 (simulated GPU: a 2-layer model, B=1/4, prompt 64)", 2) {
    if (!ctx.gpu_available) return;
    const std::vector<tinyllm::token_id> probe = {11, 7, 2026, 5, 300, 42, 9, 1000};
    later_rows none;  // experts: no one-launch step
    if (ctx.simulated) {
        const auto c = mixtral_tiny();
        const auto w = tinyllm::random_model_weights(c, 2000);
        model_component(ctx, "mixtral_tiny", c, w, probe, cpu_last_logits(c, w, probe), "CPU", none);
    } else {
        // 3.6B parameters: bf16 is checked against fp32 on the GPU, as for llama_1b.
        const auto c = mixtral_1b();
        model_component(ctx, "mixtral_1b", c, tinyllm::random_model_weights(c, 2000), probe, {}, "fp32 GPU", none);
    }
}
