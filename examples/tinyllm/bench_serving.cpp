// examples/tinyllm/bench_serving.cpp — `tinyllm bench prefix_cache`: the time to
// first token of requests that share a long system prompt, with and without
// the prefix cache (tinyllm/prefix_cache.hpp), on the CPU model.
//
// The model has the default model's shapes (a 4-layer Llama, d 256, 8 heads
// over 4 KV heads, vocabulary 4096) with random weights: the time does not
// depend on what the weights learned. Each request is the same system prompt
// of S tokens (--size S, default 384) and 16 tokens of its own, fed as one
// prefill; the time to first token is that prefill's time (the logits of the
// last position, from which the first token is sampled). Rows:
//   * paged session, no prefix cache: every request computes all S + 16 positions;
//   * paged session with the cache: the system prompt's whole blocks come from
//     the cache, and the request computes its own tokens (and the rest of the
//     last partly filled block);
//   * a contiguous session on the blocked kernels, for scale: paged attention
//     is the double-precision reference (tinyllm/paged_kv.hpp), slower per
//     position than the tiled float kernel, so the comparison that isolates
//     the cache is the first two rows.
// Each row is checked against the logits without the cache.
#include "registry.hpp"

#include <tinyllm/batching.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/threads.hpp>
#include <tinyllm/timing.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;
using tinyllm::token_id;

namespace {

tinyllm::model_config default_model_shapes() {
    tinyllm::model_config c;
    c.arch = tinyllm::model_arch::llama;
    c.architecture = "LlamaForCausalLM";
    c.vocab_size = 4096;
    c.hidden_size = 256;
    c.num_layers = 4;
    c.num_heads = 8;
    c.num_kv_heads = 4;
    c.head_dim = 32;
    c.intermediate_size = 704;
    c.max_positions = 4096;
    c.tie_word_embeddings = true;
    c.rope.rotary_dim = 32;
    c.rope.theta = 10000.0;
    c.rope.pairing = tinyllm::rope_pairing::rotate_half;
    return c;
}

std::vector<token_id> random_tokens(index_t n, std::uint64_t seed, index_t vocab) {
    tinyllm::philox_generator g(seed);
    std::vector<token_id> t(static_cast<std::size_t>(n));
    for (auto& id : t) id = static_cast<token_id>(g.next_bits() % static_cast<std::uint32_t>(vocab));
    return t;
}

}  // namespace

TINYLLM_BENCH("prefix_cache", "time to first token of requests sharing a system prompt of S tokens (--size S, default 384) plus 16 of their own: paged sessions without and with the prefix cache, and a contiguous session; the default model's shapes", 0) {
    const index_t S = ctx.size_or(384, 40), U = 16, bs = 16;
    const tinyllm::model_config c = default_model_shapes();
    tinyllm::cpu::model m(c, tinyllm::random_model_weights(c, 7));
    const std::vector<token_id> system = random_tokens(S, 1, c.vocab_size);
    // Request i: the system prompt, then 16 tokens of its own.
    const auto request = [&](std::uint64_t i) {
        std::vector<token_id> p = system;
        const std::vector<token_id> own = random_tokens(U, 1000 + i, c.vocab_size);
        p.insert(p.end(), own.begin(), own.end());
        return p;
    };
    const index_t per_request = (S + U + bs - 1) / bs;
    tinyllm::kv_block_pool pool(c.num_layers, 8 * per_request + 8, bs, c.num_kv_heads, c.head_dim);
    tinyllm::prefix_cache cache(pool, 4 * per_request);
    const std::string threads = std::to_string(tinyllm::cpu::num_threads()) + " threads";
    const std::string shape = std::to_string(S) + "+" + std::to_string(U);

    // The logits of request i without any cache: what every row must give.
    const auto plain = [&](std::uint64_t i) {
        auto s = m.new_session(pool);
        return m.forward_last(s, request(i));
    };
    const auto check_row = [&](const tinyllm::tensor<float, 2>& got, std::uint64_t i) {
        const auto want = plain(i);
        double err = 0;
        for (std::size_t k = 0; k < got.values().size(); ++k) {
            const double e = std::fabs(static_cast<double>(got.values()[k]) - want.values()[k]);
            err = std::isnan(e) ? INFINITY : std::max(err, e);
        }
        char text[48];
        std::snprintf(text, sizeof text, "max-abs %.1e", err);
        ctx.rows.back().check = text;
        ctx.rows.back().agrees = err <= 1e-3;
    };

    std::uint64_t next = 0;
    ctx.rows.push_back({"paged, no prefix cache: prefill " + shape + ", " + threads, "cpu",
                        tinyllm::time_cpu("prefix_cache/paged/" + shape, [&] { plain(next++); }, 0, 0, 1, ctx.repeats),
                        "", true, true});
    check_row(plain(0), 0);

    // The first request fills the cache with the system prompt's blocks.
    const auto serve = [&](std::uint64_t i) {
        const std::vector<token_id> prompt = request(i);
        const std::span<const token_id> all(prompt);
        auto s = m.new_session(cache.match(all.first(all.size() - 1)));
        auto logits = m.forward_last(s, all.subspan(static_cast<std::size_t>(s.length)));
        cache.insert(prompt, s.paged);
        return logits;
    };
    serve(0);
    const index_t hits_before = cache.stats().hit_tokens, lookups_before = cache.stats().lookups;
    ctx.rows.push_back({"paged + prefix cache: system prompt from the cache, " + threads, "cpu",
                        tinyllm::time_cpu("prefix_cache/cached/" + shape, [&] { serve(next++); }, 0, 0, 1, ctx.repeats),
                        "", true, false});
    check_row(serve(next), next);
    ++next;
    const double hit_per_request = static_cast<double>(cache.stats().hit_tokens - hits_before) /
                                   static_cast<double>(cache.stats().lookups - lookups_before);

    ctx.rows.push_back({"contiguous, blocked kernels: prefill " + shape + ", " + threads, "cpu",
                        tinyllm::time_cpu("prefix_cache/contiguous/" + shape,
                                          [&] {
                                              auto s = m.new_session(S + U);
                                              m.forward_last(s, request(next++));
                                          },
                                          0, 0, 1, ctx.repeats),
                        "", true, false});
    {
        auto s = m.new_session(S + U);
        check_row(m.forward_last(s, request(next)), next);
    }
    ctx.out << "system prompt " << S << " tokens + " << U << " per request, blocks of " << bs << "; with the cache "
            << hit_per_request << " of " << S + U << " prompt tokens per request came from it ("
            << 100.0 * cache.stats().hit_rate() << "% of all tokens looked up), " << S + U - hit_per_request
            << " were computed\n";
}

// ---- tinyllm bench batching -------------------------------------------------------
//
// A synthetic serving workload: N requests (--size N, default 64) arrive as a
// Poisson process at 300 per second (more than one at a time can serve on two
// cores), each with a prompt of 16-128 tokens and 8-64 tokens to
// generate (greedy), drawn from a fixed seed. Three ways to serve them, on the
// default model's shapes:
//   * one at a time: each request alone (cpu::generate on a contiguous
//     session), first come first served;
//   * static batching: the requests waiting when the server is free, up to 16,
//     form a batch that runs (model::forward_batch) until its longest member
//     finishes; whoever arrives meanwhile waits for the whole batch. (Finished
//     members stop computing here; a padded batch would also spend their rows.)
//   * continuous batching: continuous_batcher (tinyllm/batching.hpp), the batch
//     decided again at every step.
// The clock is the wall clock, except that time with nothing to do and no
// request yet arrived is skipped. Reported: generated tokens per second over
// the whole run, and percentiles of the time to first token and of the
// latency (arrival to last token).
namespace {

struct workload_request {
    double arrival = 0;  // seconds from the start
    std::vector<token_id> prompt;
    index_t new_tokens = 0;
};

std::vector<workload_request> poisson_workload(index_t n, double rate, index_t vocab) {
    tinyllm::philox_generator g(2026);
    std::vector<workload_request> out;
    double t = 0;
    for (index_t i = 0; i < n; ++i) {
        t += -std::log(1.0 - static_cast<double>(g.uniform())) / rate;  // exponential gaps
        workload_request r;
        r.arrival = t;
        r.prompt = random_tokens(16 + static_cast<index_t>(g.next_bits() % 113), 5000 + static_cast<std::uint64_t>(i),
                                 vocab);
        r.new_tokens = 8 + static_cast<index_t>(g.next_bits() % 57);
        out.push_back(std::move(r));
    }
    return out;
}

struct served {
    std::vector<double> first_token, done;  // seconds from the start, per request
    index_t tokens = 0;
    double end = 0;
};

// A clock that skips idle time: now() is wall time since start plus what was skipped.
struct workload_clock {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    double skipped = 0;
    double now() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() + skipped;
    }
    void wait_until(double t) {
        if (t > now()) skipped += t - now();
    }
};

double percentile(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    const double at = p * static_cast<double>(v.size() - 1);
    const std::size_t lo = static_cast<std::size_t>(at);
    const std::size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (at - static_cast<double>(lo));
}

}  // namespace

TINYLLM_BENCH("batching", "serving N requests (--size N, default 64; Poisson arrivals at 300/s, prompts of 16-128 tokens, 8-64 new tokens): one at a time vs static batching vs continuous batching, throughput and latency percentiles; the default model's shapes", 1) {
    const index_t N = ctx.size_or(64, 6);
    const tinyllm::model_config c = default_model_shapes();
    tinyllm::cpu::model m(c, tinyllm::random_model_weights(c, 7));
    const double rate = 300.0;  // requests per second: more than one at a time can serve
    const std::vector<workload_request> work = poisson_workload(N, rate, c.vocab_size);
    const std::vector<token_id> never = {static_cast<token_id>(c.vocab_size)};  // no end-of-sequence: full lengths

    // One at a time, first come first served.
    served one;
    std::vector<std::vector<token_id>> reference(static_cast<std::size_t>(N));
    {
        workload_clock clock;
        for (index_t i = 0; i < N; ++i) {
            const workload_request& r = work[static_cast<std::size_t>(i)];
            clock.wait_until(r.arrival);
            tinyllm::cpu::generation_options o;
            o.max_new_tokens = r.new_tokens;
            o.eos_token_ids = never;
            bool first = true;
            reference[static_cast<std::size_t>(i)] = tinyllm::cpu::generate(m, r.prompt, o, [&](token_id) {
                if (first) one.first_token.push_back(clock.now());
                first = false;
            });
            one.done.push_back(clock.now());
            one.tokens += r.new_tokens;
        }
        one.end = clock.now();
    }

    const index_t block = 16;
    index_t most_blocks = 0;
    for (const auto& r : work)
        most_blocks += (static_cast<index_t>(r.prompt.size()) + r.new_tokens + block - 1) / block;
    bool same_tokens = true;

    // Static batching: whoever waits when the server is free, up to 16, until the batch is done.
    served fixed;
    fixed.first_token.assign(static_cast<std::size_t>(N), 0), fixed.done.assign(static_cast<std::size_t>(N), 0);
    {
        tinyllm::kv_block_pool pool(c.num_layers, most_blocks, block, c.num_kv_heads, c.head_dim);
        workload_clock clock;
        index_t next = 0;
        while (next < N) {
            clock.wait_until(work[static_cast<std::size_t>(next)].arrival);
            std::vector<index_t> members;
            while (next < N && work[static_cast<std::size_t>(next)].arrival <= clock.now() && members.size() < 16)
                members.push_back(next++);
            std::vector<tinyllm::cpu::model::session> sessions;
            for (std::size_t j = 0; j < members.size(); ++j) sessions.push_back(m.new_session(pool));
            std::vector<std::vector<token_id>> out(members.size());
            std::vector<std::vector<token_id>> feed(members.size());
            for (std::size_t j = 0; j < members.size(); ++j) feed[j] = work[static_cast<std::size_t>(members[j])].prompt;
            for (;;) {
                std::vector<tinyllm::cpu::model::session*> ss;
                std::vector<std::span<const token_id>> fs;
                std::vector<std::size_t> who;
                for (std::size_t j = 0; j < members.size(); ++j)
                    if (static_cast<index_t>(out[j].size()) < work[static_cast<std::size_t>(members[j])].new_tokens) {
                        ss.push_back(&sessions[j]), fs.emplace_back(feed[j]), who.push_back(j);
                    }
                if (ss.empty()) break;
                const auto logits = m.forward_batch(ss, fs);
                for (std::size_t k = 0; k < who.size(); ++k) {
                    const std::size_t j = who[k];
                    const auto row = tinyllm::tensor_view<const float, 2>(logits.view()).narrow(0, static_cast<index_t>(k), 1);
                    const token_id t = static_cast<token_id>(std::max_element(row.data(), row.data() + c.vocab_size) - row.data());
                    out[j].push_back(t);
                    feed[j] = {t};
                    const std::size_t id = static_cast<std::size_t>(members[j]);
                    if (out[j].size() == 1) fixed.first_token[id] = clock.now();
                    if (static_cast<index_t>(out[j].size()) == work[id].new_tokens) fixed.done[id] = clock.now();
                }
            }
            // The batch is done only when its longest member is: everyone's latency ends here.
            for (std::size_t j = 0; j < members.size(); ++j) {
                const std::size_t id = static_cast<std::size_t>(members[j]);
                fixed.done[id] = clock.now();
                fixed.tokens += work[id].new_tokens;
                same_tokens = same_tokens && out[j] == reference[id];
            }
        }
        fixed.end = clock.now();
    }

    // Continuous batching.
    served cont;
    cont.first_token.assign(static_cast<std::size_t>(N), 0), cont.done.assign(static_cast<std::size_t>(N), 0);
    {
        tinyllm::kv_block_pool pool(c.num_layers, most_blocks, block, c.num_kv_heads, c.head_dim);
        tinyllm::continuous_batcher batcher(m, pool, {256, 32, 128});
        workload_clock clock;
        index_t next = 0;
        std::vector<index_t> ids;
        while (next < N || !batcher.idle()) {
            if (batcher.idle()) clock.wait_until(work[static_cast<std::size_t>(next)].arrival);
            while (next < N && work[static_cast<std::size_t>(next)].arrival <= clock.now()) {
                tinyllm::batch_request r;
                r.prompt = work[static_cast<std::size_t>(next)].prompt;
                r.max_new_tokens = work[static_cast<std::size_t>(next)].new_tokens;
                r.eos_token_ids = never;
                ids.push_back(batcher.submit(r));
                ++next;
            }
            for (const auto& e : batcher.step()) {
                const std::size_t id = static_cast<std::size_t>(e.id);
                if (batcher.tokens(e.id).size() == 1 && e.token >= 0) cont.first_token[id] = clock.now();
                if (e.finished != tinyllm::finish_reason::none) cont.done[id] = clock.now();
            }
        }
        cont.end = clock.now();
        for (index_t i = 0; i < N; ++i) {
            cont.tokens += static_cast<index_t>(batcher.tokens(ids[static_cast<std::size_t>(i)]).size());
            same_tokens = same_tokens && batcher.tokens(ids[static_cast<std::size_t>(i)]) == reference[static_cast<std::size_t>(i)];
        }
    }

    char line[200];
    ctx.out << N << " requests, Poisson arrivals at " << rate << "/s over " << work.back().arrival
            << " s; greedy; the tokens of all three " << (same_tokens ? "are identical" : "DIFFER") << "\n";
    std::snprintf(line, sizeof line, "%-22s %9s %9s %9s %9s %9s %9s %9s\n", "policy", "tokens/s", "total s", "TTFT p50",
                  "TTFT p90", "lat p50", "lat p90", "lat p99");
    ctx.out << line;
    for (const auto& [name, s] : {std::pair<const char*, const served*>{"one at a time", &one},
                                  {"static batching (16)", &fixed},
                                  {"continuous batching", &cont}}) {
        std::vector<double> ttft, latency;
        for (index_t i = 0; i < N; ++i) {
            ttft.push_back(s->first_token[static_cast<std::size_t>(i)] - work[static_cast<std::size_t>(i)].arrival);
            latency.push_back(s->done[static_cast<std::size_t>(i)] - work[static_cast<std::size_t>(i)].arrival);
        }
        std::snprintf(line, sizeof line, "%-22s %9.1f %9.2f %9.3f %9.3f %9.3f %9.3f %9.3f\n", name,
                      static_cast<double>(s->tokens) / s->end, s->end, percentile(ttft, 0.5), percentile(ttft, 0.9),
                      percentile(latency, 0.5), percentile(latency, 0.9), percentile(latency, 0.99));
        ctx.out << line;
    }
    if (!same_tokens) throw tinyllm::error("tinyllm bench batching: the three policies generated different tokens");
}
