// examples/tinyllm/cmd_speculate.cpp — `tinyllm speculate`: what speculative
// decoding (tinyllm/speculative.hpp) gains on a trained model. Prompts from the
// model's held-out text are continued by plain decoding and by speculative
// decoding for each k; printed: the acceptance rate, tokens per target
// forward, tokens per second and the speed-up, and (greedy) whether the text
// is the plain decoder's.
#include "model_data.hpp"
#include "registry.hpp"

#include <tinyllm/data.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/speculative.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;
using tinyllm::token_id;

namespace {

tinyllm::cpu::model load_in(const std::string& dir, const std::string& dtype) {
    using tinyllm::cpu::model;
    if (dtype == "float32") return model::load(dir);
    if (dtype == "bfloat16") return model::load(dir, model::weight_dtype::bfloat16);
    std::optional<tinyllm::quant_spec> spec;
    try {
        spec = tinyllm::parse_quant_spec(dtype);
    } catch (const tinyllm::error&) {
        throw usage_error("--draft-dtype must be float32, bfloat16, int8 or int4-gG, got '" + dtype + "'");
    }
    model m = model::load(dir);
    m.quantize_weights(*spec);
    return m;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TINYLLM_COMMAND("speculate", "measure speculative decoding on a trained model: acceptance and speed-up per k",
                "usage: tinyllm speculate --model DIR (--draft-model DIR2 [--draft-dtype D] | --prompt-lookup N)\n"
                "                         [--k LIST] [--prompts N] [--prompt-tokens P] [--tokens M]\n"
                "                         [--temperature T] [--seed S]\n\n"
                "DIR is a model `tinyllm train` wrote (its data.tokens holds the text). N prompts of P\n"
                "tokens (default 8 of 32), evenly spaced over the validation split training held out,\n"
                "are each continued by M tokens (default 64): by plain decoding, by the draft model alone\n"
                "(its cost), and by speculative decoding with k drafted tokens per round for each k of\n"
                "LIST (default 1,2,3,4,6,8). The drafter is DIR2 (a model with the same vocabulary, held\n"
                "in --draft-dtype: float32, bfloat16, int8 or int4-gG; DIR2 may be DIR itself, e.g. with\n"
                "--draft-dtype int4-g64) or prompt lookup over N-grams. Greedy by default (then the text\n"
                "must equal plain decoding's, and the last column says so); --temperature T samples with\n"
                "seed S. Printed per row: drafted tokens accepted, tokens per target forward, tokens per\n"
                "second over all prompts (prefill included) and the speed-up over plain decoding. The\n"
                "model runs its blocked CPU kernels on all threads (docs/speculative.md).\n") {
    const auto a = parse_args(args, {"model", "draft-model", "draft-dtype", "prompt-lookup", "k", "prompts",
                                     "prompt-tokens", "tokens", "temperature", "seed"},
                              {});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    require_checkpoint(a, "model");
    require_checkpoint(a, "draft-model");
    const std::string dir = a.get("model");
    if (dir.empty()) throw usage_error("--model DIR is required");
    const bool draft = a.options.count("draft-model") > 0, lookup = a.options.count("prompt-lookup") > 0;
    if (draft == lookup) throw usage_error("give one drafter: --draft-model DIR2 or --prompt-lookup N");
    if (lookup && a.options.count("draft-dtype")) throw usage_error("--draft-dtype needs --draft-model DIR2");
    const long long ngram = lookup ? a.get_int("prompt-lookup", 0) : 0;
    if (lookup && ngram < 1) throw usage_error("--prompt-lookup N must be at least 1");
    std::vector<index_t> ks;
    {
        std::stringstream list(a.get("k", "1,2,3,4,6,8"));
        for (std::string item; std::getline(list, item, ',');) {
            std::size_t used = 0;
            long long k = 0;
            try {
                k = std::stoll(item, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != item.size() || k < 1) throw usage_error("--k: '" + item + "' is not a whole number >= 1");
            ks.push_back(k);
        }
        if (ks.empty()) throw usage_error("--k: the list is empty");
    }
    const long long prompts = a.get_int("prompts", 8), P = a.get_int("prompt-tokens", 32), M = a.get_int("tokens", 64);
    if (prompts < 1 || P < 1 || M < 1) throw usage_error("--prompts, --prompt-tokens and --tokens must be at least 1");
    const double temperature = a.get_double("temperature", 0.0);
    if (!(std::isfinite(temperature) && temperature >= 0))
        throw usage_error("--temperature must be a number >= 0 (0: greedy)");

    const tinyllm::token_file data(model_tokens_path(dir));
    const auto [val_begin, val_end] = validation_range(dir, data, P);
    const std::uint64_t span = val_end - val_begin;
    if (span < static_cast<std::uint64_t>(prompts * P))
        throw tinyllm::error("the validation split of '" + dir + "' (" + std::to_string(span) + " tokens) holds fewer than " +
                             std::to_string(prompts) + " prompts of " + std::to_string(P) + " tokens");
    std::vector<std::vector<token_id>> texts;
    for (long long i = 0; i < prompts; ++i) {
        const std::uint64_t start = val_begin + span / static_cast<std::uint64_t>(prompts) * static_cast<std::uint64_t>(i);
        std::vector<token_id> t;
        for (long long j = 0; j < P; ++j) t.push_back(data[start + static_cast<std::uint64_t>(j)]);
        texts.push_back(std::move(t));
    }

    const tinyllm::cpu::model target = tinyllm::cpu::model::load(dir);
    std::optional<tinyllm::cpu::model> draft_model;
    const std::string draft_dtype = a.get("draft-dtype", "float32");
    if (draft) draft_model.emplace(load_in(a.get("draft-model"), draft_dtype));

    tinyllm::cpu::generation_options g;
    g.max_new_tokens = M;
    g.sampling.temperature = static_cast<float>(temperature);
    g.seed = static_cast<std::uint64_t>(a.get_int("seed", 0));
    g.eos_token_ids = {-1};  // every run generates exactly M tokens, so the rows compare equal work

    out << "model " << dir << " (" << target.weight_bytes() / 1000 << " kB of weights); drafter: "
        << (draft ? a.get("draft-model") + " in " + draft_dtype + " (" + std::to_string(draft_model->weight_bytes() / 1000) + " kB)"
                  : "prompt lookup, n-grams up to " + std::to_string(ngram))
        << "\n" << prompts << " held-out prompts of " << P << " tokens, " << M << " new tokens each, "
        << (temperature == 0 ? std::string("greedy") : "temperature " + std::to_string(temperature)) << "\n\n";
    char line[200];
    std::snprintf(line, sizeof line, "%-14s %9s %15s %11s %9s %s\n", "decoder", "accepted", "tokens/forward",
                  "tokens/s", "speed-up", temperature == 0 ? "text" : "");
    out << line;

    std::vector<std::vector<token_id>> plain(texts.size());
    auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < texts.size(); ++i) plain[i] = tinyllm::cpu::generate(target, texts[i], g);
    const double plain_s = seconds_since(t0);
    const double total = static_cast<double>(prompts * M);
    std::snprintf(line, sizeof line, "%-14s %9s %15.2f %11.1f %8.2fx\n", "plain", "", 1.0, total / plain_s, 1.0);
    out << line << std::flush;
    if (draft) {
        t0 = std::chrono::steady_clock::now();
        for (const auto& t : texts) tinyllm::cpu::generate(*draft_model, t, g);
        const double s = seconds_since(t0);
        std::snprintf(line, sizeof line, "%-14s %9s %15s %11.1f %8.2fx  (the draft alone: its cost c = %.2f)\n",
                      "draft model", "", "", total / s, plain_s / s, s / plain_s);
        out << line << std::flush;
    }
    for (index_t k : ks) {
        tinyllm::speculative_options o;
        o.draft_tokens = k;
        o.max_new_tokens = M;
        o.sampling = g.sampling;
        o.seed = g.seed;
        o.eos_token_ids = g.eos_token_ids;
        index_t drafted = 0, accepted = 0, rounds = 0;
        bool same = true;
        t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < texts.size(); ++i) {
            const auto r = draft ? tinyllm::cpu::generate_speculative(target, *draft_model, texts[i], o)
                                 : tinyllm::cpu::generate_prompt_lookup(target, texts[i], ngram, o);
            drafted += r.drafted;
            accepted += r.accepted;
            rounds += r.rounds;
            same = same && r.tokens == plain[i];
        }
        const double s = seconds_since(t0);
        const std::string name = (draft ? "draft k=" : "lookup k=") + std::to_string(k);
        char rate[16];
        std::snprintf(rate, sizeof rate, "%.1f%%", drafted ? 100.0 * static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0);
        std::snprintf(line, sizeof line, "%-14s %9s %15.2f %11.1f %8.2fx %s\n", name.c_str(), rate,
                      total / static_cast<double>(rounds), total / s, plain_s / s,
                      temperature == 0 ? (same ? "same as plain" : "DIFFERS from plain") : "");
        out << line << std::flush;
        if (temperature == 0 && !same)
            throw tinyllm::error("greedy speculative decoding changed the text (k = " + std::to_string(k) + ")");
    }
    return 0;
}
