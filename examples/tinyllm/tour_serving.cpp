// examples/tinyllm/tour_serving.cpp — the tour's chapter on serving many
// requests (docs/serving.md): two requests that begin with the tiger sentence
// share its blocks of the paged KV cache through the prefix cache, and three
// requests decoded together by continuous batching get the tokens each gets
// alone. It runs the default model (models/kjv) when `tinyllm train` has made
// it, else the tour's small random model.
#include "paths.hpp"
#include "registry.hpp"
#include "tour_models.hpp"

#include <tinyllm/batching.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <filesystem>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_TOUR_CHAPTER(98, "serving", "Serving many requests: paged blocks, a shared prefix, continuous batching") {
    auto& out = ctx.out;
    namespace fs = std::filesystem;
    const std::string dir = default_model_dir();
    const bool trained = fs::exists(fs::path(dir) / "config.json") && fs::exists(fs::path(dir) / "tokenizer.json");
    text_codec codec;
    const tinyllm::cpu::model m = trained ? tinyllm::cpu::model::load(dir) : tour_tiny_llama();
    if (trained) codec.tok = tinyllm::load_tokenizer((fs::path(dir) / "tokenizer.json").string());
    const tinyllm::model_config& c = m.config();
    out << "A server keeps one KV cache per request. The paged cache cuts the memory into blocks of a few\n"
           "positions in one pool; each request holds a table of its blocks (docs/serving.md).\n"
        << (trained ? "The model: the default one (" + dir + ").\n"
                    : std::string("The model: the tour's small random model (one token per byte).\n"));

    const tinyllm::index_t bs = 4;
    tinyllm::kv_block_pool pool(c.num_layers, 64, bs, c.num_kv_heads, c.head_dim);
    tinyllm::prefix_cache cache(pool, 32);
    const auto show_table = [&](const std::vector<tinyllm::token_id>& ids, const tinyllm::kv_block_table& t) {
        for (std::size_t b = 0; b < t.blocks().size(); ++b) {
            out << "     block " << t.blocks()[b] << " (held by " << pool.ref_count(t.blocks()[b]) << "): \"";
            for (std::size_t p = b * bs; p < std::min(ids.size(), (b + 1) * bs); ++p) out << codec.decode(ids[p]);
            out << "\"\n";
        }
    };
    // Serve a prompt as a server would: its cached prefix, then the rest; keep its blocks for later requests.
    const auto serve = [&](const std::string& text) {
        const std::vector<tinyllm::token_id> ids = codec.encode(text);
        const std::span<const tinyllm::token_id> all(ids);
        auto s = m.new_session(cache.match(all.first(all.size() - 1)));
        const tinyllm::index_t reused = s.length;
        m.forward_last(s, all.subspan(static_cast<std::size_t>(reused)));
        cache.insert(ids, s.paged);
        out << "\n   \"" << text << "\": " << ids.size() << " tokens, " << reused << " from the cache, "
            << ids.size() - static_cast<std::size_t>(reused) << " computed\n";
        show_table(ids, s.paged);
        return s;
    };
    out << "\n1. Two requests that begin the same way, blocks of " << bs << " tokens. The second finds the\n"
           "   first one's whole blocks in the prefix cache and computes only the rest:\n";
    auto first = serve("The tiger jumped out of a tree to get a drink");
    auto second = serve("The tiger jumped out of a tree to catch a bird");
    out << "\n   The shared blocks are held by both requests and the cache; the pool has " << pool.used_blocks()
        << " of its " << pool.blocks() << " blocks in use.\n";

    out << "\n2. Continuous batching: three requests decoded together, the batch decided again at every\n"
           "   step (decodes, then prompt chunks, within a budget of rows). Greedy, 12 tokens each:\n\n";
    tinyllm::continuous_batcher batcher(m, pool, {16, 8, 8}, &cache);
    const std::vector<std::string> prompts = {"The tiger jumped out of a tree", "And God said",
                                              "The tiger was thirsty because"};
    std::vector<tinyllm::index_t> ids;
    for (const auto& p : prompts) {
        tinyllm::batch_request r;
        r.prompt = codec.encode(p);
        r.max_new_tokens = 12;
        r.eos_token_ids = {-1};
        ids.push_back(batcher.submit(r));
    }
    batcher.run();
    bool same = true;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        tinyllm::cpu::generation_options g;
        g.max_new_tokens = 12;
        g.eos_token_ids = {-1};
        const auto alone = tinyllm::cpu::generate(m, codec.encode(prompts[i]), g);
        same = same && alone == batcher.tokens(ids[i]);
        out << "   \"" << prompts[i] << "\" -> \"" << codec.decode(batcher.tokens(ids[i])) << "\"\n";
    }
    const tinyllm::batch_stats& st = batcher.stats();
    out << "\n   " << st.steps << " steps, at most " << st.max_batch_rows << " rows in one; " << st.prefill_tokens
        << " prompt positions and " << st.decode_tokens << " decode rows fed. Each request's tokens are\n"
        << "   the ones it gets alone: " << (same ? "yes" : "NO (a bug)") << ". The prefix cache served "
        << cache.stats().hit_tokens << " of " << cache.stats().lookup_tokens << " looked-up tokens.\n"
        << "   Measure it: tinyllm bench prefix_cache, tinyllm bench batching.\n\n"
        << "   Serve it: `tinyllm serve` runs this batcher on its own thread (tinyllm::engine) behind\n"
        << "   OpenAI's HTTP API, so any OpenAI client can send it requests at once (docs/serving.md).\n";
}
