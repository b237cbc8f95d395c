// examples/tinyllm/tour_model.cpp — the tour's last chapter: the whole pipeline
// end to end on the example sentence, with a small model built from the parts.
#include "registry.hpp"
#include "tour_models.hpp"

#include <tinyllm/model.hpp>
#include <tinyllm/optimizer.hpp>
#include <tinyllm/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <numeric>
#include <string>
#include <vector>

using namespace tinyllm_cli;

tinyllm::cpu::model tinyllm_cli::tour_tiny_llama() {
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

namespace {

std::string printable(std::int32_t byte) {
    if (byte >= 32 && byte < 127) return std::string(1, static_cast<char>(byte));
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", byte);
    return buf;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(70, "model", "The whole pipeline: tokens in, tokens out") {
    auto& out = ctx.out;
    const tinyllm::cpu::model m = tour_tiny_llama();
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

TINYLLM_TOUR_CHAPTER(75, "training", "Learning: one gradient step on the sentence") {
    auto& out = ctx.out;
    tinyllm::cpu::model m = tour_tiny_llama();
    const std::string sentence = example_sentence;
    const auto T = static_cast<tinyllm::index_t>(sentence.size()) - 1;
    // Position t reads byte t and should predict byte t + 1.
    tinyllm::tensor<tinyllm::token_id, 2> tokens(tinyllm::extents<2>{1, T}), targets(tinyllm::extents<2>{1, T});
    for (tinyllm::index_t t = 0; t < T; ++t) {
        tokens(0, t) = static_cast<unsigned char>(sentence[static_cast<std::size_t>(t)]);
        targets(0, t) = static_cast<unsigned char>(sentence[static_cast<std::size_t>(t) + 1]);
    }
    out << "Training asks how every weight should change to make the text more likely (docs/training.md).\n"
           "forward_backward runs the model of the last chapter on the sentence, measures the next-byte\n"
           "cross-entropy, and sends its gradient back through every block (include/tinyllm/model.hpp):\n\n"
           "    loss = mean_t -log p(byte t+1 | bytes <= t)        dloss/dlogits = p - onehot(next byte)\n"
           "    ... then through the head, the norms, SwiGLU, attention, RoPE, down to the embedding.\n\n";

    tinyllm::model_weights grads = tinyllm::zeros_like(m.weights());
    tinyllm::model_weights before = m.weights();  // a copy, to see what moved
    const double loss0 = m.forward_backward(grads, tokens.view(), targets.view()).lm;
    auto params = tinyllm::model_parameters(m.weights(), grads);
    out << std::fixed << std::setprecision(4) << "1. Loss before: " << loss0 << " nats per byte (a uniform guess over 256 bytes is ln 256 = "
        << std::log(256.0) << ").\n";
    const double norm = tinyllm::cpu::clip_grad_norm(params, 1.0);
    out << "2. The gradient of " << params.size() << " weight tensors has global L2 norm " << norm
        << "; clipped to 1.\n";
    tinyllm::adamw_config adamw;
    adamw.lr = 1e-2;
    adamw.weight_decay = 0.1;
    auto state = tinyllm::cpu::make_adamw_state(params);
    tinyllm::cpu::adamw_step(params, state, adamw);
    const double loss1 = m.forward_backward(grads, tokens.view(), targets.view()).lm;
    out << "3. One AdamW step (lr " << adamw.lr << ", weight decay " << adamw.weight_decay
        << " on matrices only): loss after " << loss1 << " (" << std::showpos << loss1 - loss0 << std::noshowpos
        << ").\n";

    // Which tensors moved most, relative to their size: ||w1 - w0|| / ||w0||.
    auto before_params = tinyllm::model_parameters(before, grads);
    std::vector<std::pair<double, std::string>> moved;
    for (std::size_t i = 0; i < params.size(); ++i) {
        double diff = 0, base = 0;
        for (tinyllm::index_t j = 0; j < params[i].value.size(); ++j) {
            const double w0 = before_params[i].value(j), w1 = params[i].value(j);
            diff += (w1 - w0) * (w1 - w0);
            base += w0 * w0;
        }
        moved.emplace_back(std::sqrt(diff / std::max(base, 1e-30)), params[i].name);
    }
    std::sort(moved.rbegin(), moved.rend());
    out << "4. The tensors that moved most (relative change ||dw|| / ||w||):\n";
    for (std::size_t i = 0; i < 5 && i < moved.size(); ++i)
        out << "     " << std::left << std::setw(22) << moved[i].second << std::right << std::setprecision(5)
            << moved[i].first << "\n";
    out << "   Adam moves each weight by about lr per step whatever its gradient's scale, so the tensors of\n"
           "   small weights (initialised at +-1/sqrt(fan_in)) change most relative to their size.\n";
    for (int step = 2; step <= 20; ++step) {
        m.forward_backward(grads, tokens.view(), targets.view());
        tinyllm::cpu::clip_grad_norm(params, 1.0, step);
        tinyllm::cpu::adamw_step(params, state, adamw);
    }
    const double loss20 = m.forward_backward(grads, tokens.view(), targets.view()).lm;
    out << "5. Nineteen more steps: loss " << loss20 << ". The model is memorizing one sentence; `tinyllm grads`\n"
           "   prints these gradients for a real checkpoint, and tests/test_training.cpp shows them equal to\n"
           "   PyTorch autograd's.\n";
    out.unsetf(std::ios::fixed);
}
