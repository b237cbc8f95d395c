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

#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/threads.hpp>
#include <tinyllm/timing.hpp>

#include <algorithm>
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
