// examples/tinyllm/tour_model.cpp — the tour's last chapter: the whole pipeline
// end to end on the example sentence, with a small model built from the parts.
#include "registry.hpp"

#include <tinyllm/model.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <numeric>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

// A Llama-shaped model with vocabulary 256 (one token per byte), D = 32, 2 layers,
// 4 query heads sharing 2 key/value heads; random weights from Philox
// (tinyllm::random_model_weights: uniform in +-1/sqrt(fan_in), like nn.Linear's init).
tinyllm::cpu::model tiny_llama() {
    tinyllm::model_config c;
    c.arch = tinyllm::model_arch::llama;
    c.architecture = "LlamaForCausalLM (random weights)";
    c.vocab_size = 256;
    c.hidden_size = 32;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.intermediate_size = 64;
    c.max_positions = 128;
    c.norm_eps = 1e-6f;
    c.rope.rotary_dim = 8;
    c.rope.theta = 10000.0;
    return tinyllm::cpu::model(c, tinyllm::random_model_weights(c, 2026));
}

std::string printable(std::int32_t byte) {
    if (byte >= 32 && byte < 127) return std::string(1, static_cast<char>(byte));
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", byte);
    return buf;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(70, "model", "The whole pipeline: tokens in, tokens out") {
    auto& out = ctx.out;
    const tinyllm::cpu::model m = tiny_llama();
    const auto& c = m.config();
    const std::string sentence = example_sentence;
    out << "Every part of the earlier chapters, composed (include/tinyllm/model.hpp):\n\n"
           "    embed -> [RMSNorm -> attention (RoPE, GQA, KV cache) -> + -> RMSNorm -> SwiGLU -> +] x L\n"
           "          -> RMSNorm -> logits -> sampler\n\n"
           "A small Llama-shaped model with random weights: vocabulary "
        << c.vocab_size << " (one token per byte, to keep it\nself-contained), D = " << c.hidden_size << ", "
        << c.num_layers << " layers, " << c.num_heads << " query heads sharing " << c.num_kv_heads
        << " key/value heads of dimension " << c.head_dim << ", FFN width " << c.intermediate_size
        << ".\nRandom weights mean the continuation is noise — the mechanics are the point. The same code\n"
           "reproduces transformers' logits on real GPT-2, Llama and Mixtral checkpoints (tests/test_model.cpp).\n\n";

    std::vector<tinyllm::token_id> tokens(sentence.begin(), sentence.end());
    out << "1. Tokens: the " << tokens.size() << " bytes of the sentence, ids (" << tokens.size() << "): ";
    for (std::size_t i = 0; i < 8; ++i) out << tokens[i] << " ";
    out << "...\n";

    auto session = m.new_session(static_cast<tinyllm::index_t>(tokens.size()) + 16);
    const auto logits = m.forward(session, tokens);  // (T, V)
    out << "2. Prefill: all " << tokens.size() << " positions in one forward pass.\n"
        << "     x = embed(tokens)                      (" << tokens.size() << ", " << c.hidden_size << ")\n"
        << "     per layer q, k, v                      (" << tokens.size() << ", " << c.num_heads << ", " << c.head_dim
        << "), (" << tokens.size() << ", " << c.num_kv_heads << ", " << c.head_dim << ") x 2\n"
        << "     KV cache after prefill, per layer      (1, " << session.caches[0].length() << ", " << c.num_kv_heads
        << ", " << c.head_dim << ") keys + values\n"
        << "     logits                                 " << tinyllm::to_string(logits.shape()) << "\n";

    const tinyllm::index_t last = logits.extent(0) - 1;
    std::vector<int> order(static_cast<std::size_t>(c.vocab_size));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                      [&](int x, int y) { return logits(last, x) > logits(last, y); });
    out << "3. The next-token logits after \"..." << sentence.substr(sentence.size() - 9) << "\", top 5: ";
    for (int i = 0; i < 5; ++i)
        out << "'" << printable(order[static_cast<std::size_t>(i)]) << "' " << std::fixed << std::setprecision(3)
            << logits(last, order[static_cast<std::size_t>(i)]) << "  ";
    out.unsetf(std::ios::fixed);
    out << "\n";

    tinyllm::cpu::generation_options greedy;
    greedy.max_new_tokens = 12;
    const auto g = tinyllm::cpu::generate(m, tokens, greedy);
    out << "4. Decode, one token at a time over the KV cache. Greedy, 12 tokens: \"";
    for (auto t : g) out << printable(t);
    out << "\"\n";
    tinyllm::cpu::generation_options sampled = greedy;
    sampled.sampling = {0.8f, 40, 0.95f, {}};
    sampled.seed = 7;
    const auto s = tinyllm::cpu::generate(m, tokens, sampled);
    out << "   Sampled (temperature 0.8, top-k 40, top-p 0.95, seed 7): \"";
    for (auto t : s) out << printable(t);
    out << "\"\n   Same seed again: " << (tinyllm::cpu::generate(m, tokens, sampled) == s ? "the same tokens" : "DIFFERENT")
        << " (Philox: reproducible, and identical on the GPU sampler).\n\n"
        << "To run a real model: tinyllm generate --model DIR --prompt TEXT --tokenizer FILE (see the README).\n";
}
