// examples/tinyllm/tour_train.cpp — the tour's training chapter: a small model
// trained live for about a minute on the King James Bible (data/kjv.txt, which
// tools/bootstrap writes), its loss falling on screen, then writing text.
#include "paths.hpp"
#include "registry.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/train.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <string>
#include <unistd.h>

using namespace tinyllm_cli;

TINYLLM_TOUR_CHAPTER(95, "train", "A model that learned: a minute of training on the King James Bible") {
    auto& out = ctx.out;
    namespace fs = std::filesystem;
    const std::string corpus = default_corpus();
    out << "The last chapters put the pieces together and took one gradient step. Repeating that step over\n"
           "real text is all training is (docs/training.md, `tinyllm train`): draw a batch of windows,\n"
           "forward_backward, clip, AdamW, again.\n\n";
    if (!fs::exists(corpus)) {
        out << "The corpus " << corpus << " is missing: tools/bootstrap installs the King James Bible\n"
               "(Debian's bible-kjv) and writes it there. This chapter is skipped.\n";
        return;
    }
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    // The first 1.5 MB (Genesis to Judges), a 1024-token vocabulary, a 2-layer Llama.
    std::string text = tinyllm::detail::read_text_file(corpus);
    text.resize(std::min<std::size_t>(text.size(), 1500000));
    tinyllm::bpe_train_options bo;
    bo.vocab_size = 1024;
    bo.pattern = tinyllm::pretokenizer::cl100k;
    bo.special_tokens = {"<|endoftext|>"};
    const tinyllm::tokenizer tok = tinyllm::train_bpe({text}, bo);
    const auto ids = tok.encode_ordinary(text);
    const fs::path dir = fs::temp_directory_path() / ("tinyllm_tour_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string token_path = (dir / "data.tokens").string();
    tinyllm::write_token_file(token_path, ids, tinyllm::fnv1a64(text), static_cast<tinyllm::index_t>(tok.vocab_size()));
    const tinyllm::token_file data(token_path);
    out << "1. The text: the first " << text.size() / 1000 << " kB of " << corpus << " (Genesis to Judges). A BPE\n"
        << "   tokenizer learns " << tok.vocab_size() << " tokens on it and turns it into " << ids.size()
        << " ids (" << std::fixed << std::setprecision(2) << static_cast<double>(text.size()) / static_cast<double>(ids.size())
        << " bytes each);\n   5% are held out, to measure the loss on text the model never trains on.\n";

    tinyllm::model_config c;
    c.arch = tinyllm::model_arch::llama;
    c.architecture = "LlamaForCausalLM";
    c.vocab_size = static_cast<tinyllm::index_t>(tok.vocab_size());
    c.hidden_size = 128;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 32;
    c.intermediate_size = 384;
    c.max_positions = 64;
    c.tie_word_embeddings = true;
    c.rope.rotary_dim = 32;
    c.rope.pairing = tinyllm::rope_pairing::rotate_half;
    tinyllm::train_options o;
    o.batch = 16;
    o.context = 64;
    o.steps = ctx.train_steps;
    o.lr = 3e-3;
    o.warmup = 20;
    o.seed = 7;
    o.eval_batches = 16;
    const auto splits = tinyllm::split_tokens(data.size(), o.context, 0.05);
    tinyllm::cpu::trainer t(tinyllm::cpu::model(c, tinyllm::init_weights(c, o.seed)), data, splits, o);
    out << "2. The model: a Llama of " << c.num_layers << " layers, d = " << c.hidden_size << ", " << c.num_heads
        << " heads over " << c.num_kv_heads << " key/value heads, random weights (GPT-2's initialisation).\n"
        << "   Each step: " << o.batch << " windows of " << o.context << " tokens, AdamW at lr " << std::defaultfloat << o.lr
        << " (warmup, then cosine decay).\n\n" << std::fixed;
    const double before = t.evaluate();
    out << "   step    train loss   validation loss\n"
        << "      0                  " << std::setprecision(3) << before << "   (ln " << c.vocab_size
        << " = " << std::log(static_cast<double>(c.vocab_size)) << ": a uniform guess)\n" << std::flush;
    double smoothed = 0;
    for (std::int64_t s = 0; s < o.steps; ++s) {
        const auto st = t.step();
        smoothed = s == 0 ? st.loss : 0.9 * smoothed + 0.1 * st.loss;
        if ((s + 1) % 50 == 0) {
            out << std::setw(7) << s + 1 << std::setw(14) << smoothed;
            if ((s + 1) % 250 == 0) out << std::setw(18) << t.evaluate();
            out << "\n" << std::flush;
        }
    }
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    out << "\n3. " << o.steps << " steps, " << o.steps * o.batch * o.context << " tokens, in " << std::setprecision(0)
        << seconds << " s. What it writes after \"And God said\" (temperature 0.8, top-k 40):\n\n";
    tinyllm::cpu::generation_options g;
    g.max_new_tokens = 60;
    g.sampling.temperature = 0.8f;
    g.sampling.top_k = 40;
    g.seed = 1;
    const std::string prompt = "And God said";
    std::string sample = prompt + tok.decode(tinyllm::cpu::generate(t.model(), tok.encode_ordinary(prompt), g));
    for (char& ch : sample)
        if (ch == '\n') ch = ' ';
    out << "   " << sample << "\n\n";
    if (o.steps >= tour_train_steps_default)
        out << "   Words, verses, even the grammar of the King James Bible, from random weights in a minute.\n";
    out << "   `tinyllm train` trains the larger default model (about 8 minutes; `tinyllm generate` then\n"
           "   uses it), saves it as Hugging Face does, and resumes after Ctrl-C.\n";
    out.unsetf(std::ios::fixed);
    std::error_code ec;
    fs::remove_all(dir, ec);
}
