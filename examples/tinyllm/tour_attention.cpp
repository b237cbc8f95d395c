// examples/tinyllm/tour_attention.cpp — the tour's attention chapter, and
// `tinyllm attention-probs`, which prints the same probabilities as JSON for
// tools/plot-attention (the heatmap docs/img/attention.png).
//
// The words of the example sentence are the tokens. Each distinct word gets a
// random 16-dimensional embedding and each head random projections W_q, W_k,
// W_v (16 x 8), all from Philox, so the numbers are the same on every machine.
// The weights are not trained: the chapter shows the mechanics — the causal
// mask, rows summing to 1, heads differing — not linguistics.
#include "registry.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

struct tour_attention_result {
    std::vector<std::string> tokens;
    tinyllm::tensor<float, 4> probs;  // (1, H, T, T)
};

std::vector<std::string> sentence_words() {
    std::vector<std::string> words;
    std::istringstream in(example_sentence);
    std::string w;
    while (in >> w) {
        while (!w.empty() && (w.back() == '.' || w.back() == ',')) w.pop_back();
        words.push_back(w);
    }
    return words;
}

tour_attention_result tour_attention(int heads, std::uint64_t seed) {
    constexpr index_t model_dim = 16, head_dim = 8;
    tour_attention_result r;
    r.tokens = sentence_words();
    const index_t T = static_cast<index_t>(r.tokens.size()), H = heads;

    // Token ids: the index of each word's first occurrence (so "a" twice is one token).
    std::map<std::string, index_t> ids;
    for (const auto& w : r.tokens) ids.emplace(w, static_cast<index_t>(ids.size()));
    tinyllm::tensor<float, 2> embedding({static_cast<index_t>(ids.size()), model_dim});  // (V, 16)
    tinyllm::cpu::fill_uniform(embedding.view(), seed, -1.0f, 1.0f);
    // W_q, W_k, W_v of head h: (16, 8) each, seeded per (head, matrix), so head h is
    // the same whatever the number of heads.
    tinyllm::tensor<float, 4> w({H, 3, model_dim, head_dim});
    for (index_t h = 0; h < H; ++h)
        for (index_t m = 0; m < 3; ++m)
            tinyllm::cpu::fill_uniform(w.view().slice(0, h).slice(0, m), seed + 1 + static_cast<std::uint64_t>(3 * h + m),
                                       -1.0f, 1.0f);

    // q, k, v = x W: (1, T, H, 8) each.
    tinyllm::tensor<float, 4> q({1, T, H, head_dim}), k({1, T, H, head_dim}), v({1, T, H, head_dim});
    tinyllm::tensor<float, 4>* qkv[3] = {&q, &k, &v};
    for (index_t t = 0; t < T; ++t) {
        const index_t id = ids.at(r.tokens[static_cast<std::size_t>(t)]);
        for (int m = 0; m < 3; ++m)
            for (index_t h = 0; h < H; ++h)
                for (index_t d = 0; d < head_dim; ++d) {
                    float acc = 0.0f;
                    for (index_t e = 0; e < model_dim; ++e) acc += embedding(id, e) * w(h, m, e, d);
                    (*qkv[m])(0, t, h, d) = acc;
                }
    }
    tinyllm::tensor<float, 4> out({1, T, H, head_dim});
    r.probs = tinyllm::tensor<float, 4>({1, H, T, T});
    tinyllm::attention_options opts;
    opts.causal = true;
    tinyllm::cpu::attention<float>(out.view(), q.view(), k.view(), v.view(), opts, r.probs.view());
    return r;
}

void print_probs(std::ostream& out, const tour_attention_result& r, index_t h) {
    const index_t T = static_cast<index_t>(r.tokens.size());
    out << "           ";
    for (const auto& w : r.tokens) out << std::setw(5) << w.substr(0, 4);
    out << "   sum\n";
    for (index_t i = 0; i < T; ++i) {
        out << "  " << std::setw(8) << std::left << r.tokens[static_cast<std::size_t>(i)] << std::right << " ";
        double sum = 0;
        for (index_t j = 0; j < T; ++j) {
            const float p = r.probs(0, h, i, j);
            sum += p;
            if (p == 0.0f) {
                out << "    .";
            } else {
                char buf[16];
                std::snprintf(buf, sizeof buf, "%5.2f", static_cast<double>(p));
                out << buf;
            }
        }
        char buf[16];
        std::snprintf(buf, sizeof buf, "%6.3f", sum);
        out << buf << "\n";
    }
}

}  // namespace

TINYLLM_TOUR_CHAPTER(40, "attention", "Attention: who looks at whom") {
    auto& out = ctx.out;
    const auto r = tour_attention(2, 2024);
    const index_t T = static_cast<index_t>(r.tokens.size());
    out << "Each token asks a question (its query q), offers a label (its key k) and a payload (its\n"
           "value v). The answer of token i is a weighted average of the payloads:\n\n"
           "    scores S = Q K^T / sqrt(d)     P = softmax(S) row by row     O = P V\n\n"
           "In a language model token i may only look back (causal mask): S[i][j] = -inf for j > i,\n"
           "so P[i][j] = 0 there. Here the "
        << T << " words of the sentence are the tokens, with random (untrained)\n"
           "16-dim embeddings and two heads of dim 8 (weights from Philox, seed 2024).\n";
    for (index_t h = 0; h < 2; ++h) {
        out << "\nHead " << h << ": P[i][j], row i = the word looking, column j = the word looked at\n";
        print_probs(out, r, h);
    }
    // The properties the picture shows, checked.
    double worst_sum = 0, upper = 0, diff = 0;
    for (index_t h = 0; h < 2; ++h)
        for (index_t i = 0; i < T; ++i) {
            double s = 0;
            for (index_t j = 0; j < T; ++j) {
                s += r.probs(0, h, i, j);
                if (j > i) upper += std::fabs(r.probs(0, h, i, j));
                if (h == 1) diff = std::max(diff, static_cast<double>(std::fabs(r.probs(0, 1, i, j) - r.probs(0, 0, i, j))));
            }
            worst_sum = std::max(worst_sum, std::fabs(s - 1.0));
        }
    out << "\nEvery row sums to 1 (largest deviation " << worst_sum << "); everything above the diagonal is "
        << (upper == 0 ? "exactly 0" : "NOT zero") << ";\nthe two heads differ (largest difference " << std::setprecision(3)
        << diff << "): each head has its own W_q and W_k, so it attends by its own rule.\n"
           "Row 0 ('The') can only look at itself: 1.00. The two 'a's share an embedding, so their\n"
           "keys are equal and every later query weighs them alike.\n\n"
           "`tinyllm attention-probs` prints these probabilities as JSON; tools/plot-attention turns\n"
           "them into a heatmap (docs/img/attention.png). A real model's heads, from a Hugging Face\n"
           "checkpoint run by the model of the last chapter:\n\n"
           "    tools/plot-attention --model gpt2 --tokenizer gpt2/tokenizer.json \\\n"
           "        --prompt \"The tiger jumped out of a tree\" --layer 5 --out heads.png\n\n"
           "See docs/attention.md for the kernels.\n";
}

namespace {

// {"tokens": [...], "probs": [head][row][col]} for the first `heads` heads of probs (1, H, T, T).
void print_probs_json(std::ostream& out, const std::vector<std::string>& tokens,
                      tinyllm::tensor_view<const float, 4> probs, index_t heads) {
    const index_t T = static_cast<index_t>(tokens.size());
    out << "{\"tokens\": [";
    for (std::size_t t = 0; t < tokens.size(); ++t) out << (t ? ", " : "") << tinyllm::json::quote(tokens[t]);
    out << "],\n \"probs\": [";
    for (index_t h = 0; h < heads; ++h) {
        out << (h ? ",\n  [" : "\n  [");
        for (index_t i = 0; i < T; ++i) {
            out << (i ? ", [" : "[");
            for (index_t j = 0; j < T; ++j) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.6f", static_cast<double>(probs(0, h, i, j)));
                out << (j ? ", " : "") << buf;
            }
            out << "]";
        }
        out << "]";
    }
    out << "]}\n";
}

}  // namespace

TINYLLM_COMMAND("attention-probs", "print attention probabilities as JSON (for tools/plot-attention)",
                "usage: tinyllm attention-probs [--heads N] [--seed S]\n"
                "       tinyllm attention-probs --model DIR (--prompt TEXT --tokenizer FILE [--encoding NAME] |\n"
                "                               --prompt-ids \"ID ...\") [--layer L] [--heads N]\n\n"
                "Without --model: the attention chapter's example (the words of the tour sentence, random\n"
                "weights, causal) with N heads (1..8, default 4).\n"
                "With --model: a Hugging Face checkpoint (GPT-2, Llama, Mixtral) run on the prompt by the\n"
                "CPU model; the heads of layer L (default 0; negative counts from the last\n"
                "layer), the first N of them (default: up to 8).\n"
                "Prints {\"tokens\": [...], \"probs\": [head][row][col]}.\n") {
    const auto a = parse_args(args, {"heads", "seed", "model", "prompt", "prompt-ids", "tokenizer", "encoding", "layer"},
                              {});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    require_checkpoint(a, "model");
    require_input_file(a, "tokenizer");
    if (a.get("model").empty()) {
        for (const char* o : {"prompt", "prompt-ids", "tokenizer", "encoding", "layer"})
            if (a.options.count(o)) throw usage_error(std::string("--") + o + " needs --model DIR");
        const long long heads = a.get_int("heads", 4);
        if (heads < 1 || heads > 8) throw usage_error("--heads must be between 1 and 8");
        const auto r = tour_attention(static_cast<int>(heads), static_cast<std::uint64_t>(a.get_int("seed", 2024)));
        print_probs_json(out, r.tokens, r.probs.view(), heads);
        return 0;
    }
    if (a.options.count("seed")) throw usage_error("--seed applies to the random example, not to --model");
    const bool text_mode = a.options.count("prompt") > 0;
    if (text_mode == (a.options.count("prompt-ids") > 0))
        throw usage_error("give exactly one of --prompt TEXT (with --tokenizer) and --prompt-ids \"ID ...\"");
    if (text_mode && a.get("tokenizer").empty()) throw usage_error("--prompt needs --tokenizer FILE");

    const auto model = tinyllm::cpu::model::load(a.get("model"));
    const auto& c = model.config();
    std::vector<tinyllm::token_id> ids;
    std::vector<std::string> labels;
    if (text_mode) {
        const auto tok = tinyllm::load_tokenizer(a.get("tokenizer"), a.get("encoding"));
        for (const auto id : tok.encode(a.get("prompt"))) {
            ids.push_back(id);
            labels.push_back(tok.decode({id}));  // one token's text (U+FFFD for a partial character)
        }
    } else {
        ids = parse_token_ids(a.get("prompt-ids"));
        for (const auto id : ids) labels.push_back(std::to_string(id));
    }
    if (ids.empty()) throw usage_error("the prompt encodes to no tokens");
    long long layer = a.get_int("layer", 0);
    if (layer < 0) layer += c.num_layers;
    if (layer < 0 || layer >= c.num_layers)
        throw usage_error("--layer must be in [-" + std::to_string(c.num_layers) + ", " +
                          std::to_string(c.num_layers) + ") for this model");
    const long long heads = a.get_int("heads", std::min<long long>(c.num_heads, 8));
    if (heads < 1 || heads > c.num_heads)
        throw usage_error("--heads must be between 1 and the model's " + std::to_string(c.num_heads));

    auto session = model.new_session(static_cast<index_t>(ids.size()));
    tinyllm::tensor<float, 4> probs;
    model.forward(session, ids, [&](index_t l, tinyllm::tensor_view<const float, 4> p) {
        if (l != layer) return;
        probs = tinyllm::tensor<float, 4>(p.shape());
        for (index_t h = 0; h < p.extent(1); ++h)
            for (index_t i = 0; i < p.extent(2); ++i)
                for (index_t j = 0; j < p.extent(3); ++j) probs(0, h, i, j) = p(0, h, i, j);
    });
    print_probs_json(out, labels, probs.view(), heads);
    return 0;
}
