// examples/tinyllm/tour_inference.cpp — the tour's chapter on making inference
// cheaper: the tiger sentence continued by the model with int8 and int4 weights
// (docs/quantization.md), then by speculative decoding, each drafted token's
// fate marked (docs/speculative.md). It runs the default model (models/kjv)
// when `tinyllm train` has made it, else the tour's small random model.
#include "paths.hpp"
#include "registry.hpp"
#include "tour_models.hpp"

#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/speculative.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <optional>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_TOUR_CHAPTER(97, "inference", "Cheaper inference: quantized weights and speculative decoding") {
    auto& out = ctx.out;
    namespace fs = std::filesystem;
    using clock = std::chrono::steady_clock;
    const std::string dir = default_model_dir();
    const bool trained = fs::exists(fs::path(dir) / "config.json") && fs::exists(fs::path(dir) / "tokenizer.json");
    text_codec codec;
    tinyllm::cpu::model target = trained ? tinyllm::cpu::model::load(dir) : tour_tiny_llama();
    if (trained) codec.tok = tinyllm::load_tokenizer((fs::path(dir) / "tokenizer.json").string());
    out << "Decoding one token reads every weight of the model once, so on most hardware its speed is\n"
           "set by how many bytes the weights take and by how many times they are read. Two ways to\n"
           "spend fewer: store each weight in fewer bits, and check several tokens per read.\n\n"
        << (trained ? "The model: the default one (" + dir + ", trained by `tinyllm train`).\n"
                    : std::string("The model: the tour's small random model (train the default one with `tinyllm "
                                  "train` to see this\nchapter on a model that learned).\n"));
    const std::string prompt_text = "The tiger jumped out of a tree";
    const std::vector<tinyllm::token_id> prompt = codec.encode(prompt_text);

    // 1. Quantized weights (include/tinyllm/quantize.hpp): greedy continuations side by side.
    tinyllm::cpu::generation_options g;
    g.max_new_tokens = 24;
    g.eos_token_ids = {-1};  // run the full length
    const auto reference = tinyllm::cpu::generate(target, prompt, g);
    out << "\n1. Weight-only quantization, round to nearest (docs/quantization.md). Greedy, "
        << g.max_new_tokens << " tokens after\n   \"" << prompt_text << "\":\n\n";
    const auto row = [&](const std::string& name, const tinyllm::cpu::model& m, const std::vector<tinyllm::token_id>& ids) {
        std::size_t same = 0;
        while (same < ids.size() && same < reference.size() && ids[same] == reference[same]) ++same;
        out << "   " << std::left << std::setw(9) << name << std::right << std::setw(9)
            << std::fixed << std::setprecision(2) << static_cast<double>(m.weight_bytes()) / 1e6 << " MB  \""
            << codec.decode(ids) << "\"";
        if (&m != &target) out << "  (" << same << " first tokens as float32)";
        out << "\n";
    };
    row("float32", target, reference);
    for (const char* spec : {"int8", "int4-g32"}) {
        tinyllm::cpu::model q = trained ? tinyllm::cpu::model::load(dir) : tour_tiny_llama();
        q.quantize_weights(tinyllm::parse_quant_spec(spec));
        row(spec, q, tinyllm::cpu::generate(q, prompt, g));
    }
    out.unsetf(std::ios::fixed);
    out << "\n   The bytes are the whole model's (the embedding stays float32). A greedy text follows its\n"
           "   model until two candidates are close; rounding moves logits by little, so the texts agree\n"
           "   for a while and may then part.\n";

    // 2. Speculative decoding (include/tinyllm/speculative.hpp).
    tinyllm::cpu::model draft = trained ? tinyllm::cpu::model::load(dir) : tour_tiny_llama();
    draft.quantize_weights(tinyllm::parse_quant_spec("int4-g32"));
    tinyllm::speculative_options o;
    o.draft_tokens = 4;
    o.max_new_tokens = g.max_new_tokens;
    o.eos_token_ids = g.eos_token_ids;
    const auto t0 = clock::now();
    const auto r = tinyllm::cpu::generate_speculative(target, draft, prompt, o);
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    out << "\n2. Speculative decoding (docs/speculative.md): a draft — here the int4 copy — proposes "
        << o.draft_tokens << " tokens,\n   the float32 model checks all of them in one forward over "
        << o.draft_tokens + 1 << " positions, keeps the agreed\n"
           "   prefix and adds one token of its own. [brackets] mark drafted tokens it accepted,\n"
           "   | ends a round:\n\n   \"";
    std::size_t at = 0;
    for (tinyllm::index_t a : r.accepted_per_round) {
        for (tinyllm::index_t i = 0; i < a && at < r.tokens.size(); ++i) out << "[" << codec.decode(r.tokens[at++]) << "]";
        if (at < r.tokens.size()) out << codec.decode(r.tokens[at++]);
        out << "|";
    }
    out << "\"\n\n   " << r.tokens.size() << " tokens in " << r.rounds << " target forwards ("
        << std::fixed << std::setprecision(2) << r.tokens_per_round() << " per forward); " << r.accepted << " of "
        << r.drafted << " drafted tokens accepted (" << std::setprecision(0) << 100 * r.acceptance_rate() << "%), "
        << std::setprecision(1) << ms << " ms.\n";
    out.unsetf(std::ios::fixed);
    out << "   Greedy, so the text is exactly the float32 model's: "
        << (r.tokens == reference ? "the same tokens as in 1." : "DIFFERENT from 1. (a bug)") << "\n";

    const auto lookup = tinyllm::cpu::generate_prompt_lookup(target, prompt, 3, o);
    out << "   Prompt lookup (no draft model: copy what followed the last 3 tokens earlier in the text)\n"
           "   accepts "
        << lookup.accepted << " of " << lookup.drafted << " and yields the same text: "
        << (lookup.tokens == reference ? "yes" : "NO (a bug)") << ".\n\n"
        << "   With sampling, acceptance is random: a drafted token d is kept with probability\n"
           "   min(1, p(d)/q(d)) and a rejection is replaced from max(0, p - q), which makes every token\n"
           "   follow the model's own distribution p exactly (tests/test_speculative.cpp checks it).\n"
           "   Try: tinyllm generate --prompt \"And God said\" --draft-model DIR2 --speculate 4\n";
}
