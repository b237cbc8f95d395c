// examples/tinyllm/cmd_train.cpp — `tinyllm train`: train a model on text files
// and save it as a Hugging Face checkpoint (docs/training.md, "tinyllm train").
//
// The loop is cpu::trainer (<tinyllm/train.hpp>); this file does what is around
// it: reading and checking the text, the tokenizer (loaded or trained), the
// token file (made once, reused while the text and the tokenizer are the same),
// the model's shape from the flags, the progress line, the JSONL log, samples at
// each evaluation, checkpoints, Ctrl-C, --resume, and the loss curve (train_plot.hpp).
#include "gpu.hpp"
#include "paths.hpp"
#include "registry.hpp"
#include "train_plot.hpp"

#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/threads.hpp>
#include <tinyllm/train.hpp>

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t interrupted = 0;
extern "C" void on_interrupt(int) {
    interrupted = 1;
    std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the program at once
}

// The text of each file, checked: readable, not empty, valid UTF-8 (the first
// bad byte named by line and column).
std::vector<std::string> read_corpus(const std::vector<std::string>& files) {
    std::vector<std::string> texts;
    for (const std::string& f : files) {
        if (!fs::exists(f)) {
            if (f == default_corpus())
                throw tinyllm::error("the default corpus " + f +
                                     " is missing: tools/bootstrap installs the King James Bible (bible-kjv) and "
                                     "writes it there, or pass --data FILE");
            throw tinyllm::error("--data: no file '" + f + "'");
        }
        std::string text = tinyllm::detail::read_text_file(f);
        if (text.empty()) throw tinyllm::error("--data: '" + f + "' is empty");
        for (std::size_t i = 0, line = 1, line_start = 0; i < text.size();) {
            std::uint32_t cp;
            const int n = tinyllm::detail::decode_utf8(text, i, cp);
            if (cp == tinyllm::detail::invalid_code_point) {
                std::ostringstream why;
                why << "--data: '" << f << "' is not UTF-8 text: byte " << i << " (line " << line << ", column "
                    << i - line_start + 1 << ") is 0x" << std::hex << std::setw(2) << std::setfill('0')
                    << static_cast<unsigned>(static_cast<unsigned char>(text[i])) << ", which starts no valid sequence";
                throw tinyllm::error(why.str());
            }
            if (text[i] == '\n') ++line, line_start = i + 1;
            i += static_cast<std::size_t>(n);
        }
        texts.push_back(std::move(text));
    }
    return texts;
}

std::string format_duration(double seconds) {
    const long s = static_cast<long>(seconds + 0.5);
    char buf[32];
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

std::string json_escape(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (c == '"' || c == '\\') out += '\\', out += c;
        else if (c == '\n') out += "\\n";
        else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            out += buf;
        } else out += c;
    }
    return out;
}

// The run's numeric options, checked with the names of their flags before any
// work is done (cpu::trainer checks them again: expect_train_options).
void check_run_flags(const tinyllm::train_options& o) {
    using tinyllm::detail::cat;
    if (o.batch < 1) throw usage_error("--batch must be at least 1, got " + cat(o.batch));
    if (o.context < 1) throw usage_error("--context must be at least 1, got " + cat(o.context));
    if (o.steps < 1) throw usage_error("--steps must be at least 1, got " + cat(o.steps));
    if (o.steps > tinyllm::train_max_steps) throw usage_error("--steps must be at most 2^40, got " + cat(o.steps));
    if (o.batch > tinyllm::train_max_step_tokens / o.context)
        throw usage_error("--batch " + cat(o.batch) + " x --context " + cat(o.context) +
                          " is more than 2^31 tokens a step");
    if (!(std::isfinite(o.lr) && o.lr > 0)) throw usage_error("--lr must be a positive number, got " + cat(o.lr));
    if (o.warmup < 0) throw usage_error("--warmup must not be negative, got " + cat(o.warmup));
    if (o.warmup > tinyllm::train_max_steps) throw usage_error("--warmup must be at most 2^40, got " + cat(o.warmup));
    if (!(std::isfinite(o.weight_decay) && o.weight_decay >= 0))
        throw usage_error("--weight-decay must be a number >= 0, got " + cat(o.weight_decay));
    if (!(std::isfinite(o.clip) && o.clip >= 0))
        throw usage_error("--clip must be a number >= 0 (0: no clipping), got " + cat(o.clip));
    if (o.eval_batches < 1) throw usage_error("--eval-batches must be at least 1, got " + cat(o.eval_batches));
    if (o.eval_batches > tinyllm::train_max_steps)
        throw usage_error("--eval-batches must be at most 2^40, got " + cat(o.eval_batches));
}

// The options that shape the model and the run, and their defaults: the
// default model (a 4-layer Llama of d = 256 on the King James Bible).
struct shape_defaults {
    const char* arch = "llama";
    long long layers = 4, d_model = 256, heads = 8, kv_heads = 4, ffn = 0, experts = 8, top_k = 2;
};

tinyllm::model_config model_config_from(const parsed_args& a, tinyllm::index_t vocab, tinyllm::index_t context,
                                        tinyllm::token_id eos) {
    const shape_defaults d;
    const std::string arch = a.get("arch", d.arch);
    tinyllm::model_config c;
    if (arch == "gpt2") c.arch = tinyllm::model_arch::gpt2, c.architecture = "GPT2LMHeadModel";
    else if (arch == "llama") c.arch = tinyllm::model_arch::llama, c.architecture = "LlamaForCausalLM";
    else if (arch == "mixtral") c.arch = tinyllm::model_arch::mixtral, c.architecture = "MixtralForCausalLM";
    else throw usage_error("--arch must be gpt2, llama or mixtral, got '" + arch + "'");
    const bool gpt2 = c.arch == tinyllm::model_arch::gpt2;
    const long long D = a.get_int("d-model", d.d_model), layers = a.get_int("layers", d.layers),
                    heads = a.get_int("heads", d.heads);
    const long long kv = gpt2 ? heads : a.get_int("kv-heads", std::min(d.kv_heads, heads));
    if (gpt2 && a.options.count("kv-heads") && a.get_int("kv-heads", heads) != heads)
        throw usage_error("--kv-heads: GPT-2 has one key/value head per query head");
    if (D < 1 || layers < 1 || heads < 1 || kv < 1) throw usage_error("--d-model, --layers, --heads and --kv-heads must be positive");
    if (D % heads != 0) throw usage_error("--d-model " + std::to_string(D) + " is not a multiple of --heads " + std::to_string(heads));
    if (heads % kv != 0) throw usage_error("--heads " + std::to_string(heads) + " is not a multiple of --kv-heads " + std::to_string(kv));
    const long long head_dim = D / heads;
    if (!gpt2 && head_dim % 2 != 0) throw usage_error("RoPE needs an even head size; d-model / heads = " + std::to_string(head_dim));
    // The FFN's width: GPT-2's 4 D; Llama's SwiGLU 8/3 D (the same parameters as 4 D
    // in two matrices) rounded up to a multiple of 64; Mixtral's experts the same.
    const long long ffn = a.get_int("ffn", gpt2 ? 4 * D : (8 * D / 3 + 63) / 64 * 64);
    if (ffn < 1) throw usage_error("--ffn must be positive");
    c.vocab_size = vocab;
    c.hidden_size = D;
    c.num_layers = layers;
    c.num_heads = heads;
    c.num_kv_heads = kv;
    c.head_dim = head_dim;
    c.intermediate_size = ffn;
    c.max_positions = context;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = true;  // a small model's largest matrix, shared with the output (GPT-2 and nanoGPT do)
    if (c.arch == tinyllm::model_arch::mixtral) {
        c.num_experts = a.get_int("experts", d.experts);
        c.experts_per_token = a.get_int("top-k", d.top_k);
        if (c.num_experts < 1 || c.experts_per_token < 1 || c.experts_per_token > c.num_experts)
            throw usage_error("--experts and --top-k: need 1 <= top-k <= experts");
        c.router_aux_loss_coef = 0.001;
    } else if (a.options.count("experts") || a.options.count("top-k")) {
        throw usage_error("--experts and --top-k are for --arch mixtral");
    }
    if (!gpt2) {
        c.rope.rotary_dim = head_dim;
        c.rope.theta = 10000.0;
        c.rope.pairing = tinyllm::rope_pairing::rotate_half;
    }
    if (eos >= 0) c.eos_token_ids = {eos};
    return c;
}

// The default sample prompt: the text's first three words.
std::string first_words(const std::string& text) {
    std::istringstream words(text.substr(0, 200));
    std::string w, out;
    for (int i = 0; i < 3 && words >> w; ++i) out += (i ? " " : "") + w;
    return out;
}

// The lines of the JSONL log from before step `step` (the part a resumed run keeps): the
// training lines of steps 0 .. step - 1 and the evaluations after at most `step` steps (the
// one at the checkpoint itself included; a training line counts from 0, an evaluation
// after N steps says N).
void truncate_log(const std::string& path, std::int64_t step) {
    std::ifstream in(path);
    if (!in) return;
    std::string kept, line;
    while (std::getline(in, line)) {
        try {
            const auto v = tinyllm::json::parse(line, path);
            const bool evaluation = v.find("val_loss") != nullptr;
            if (v.find("step") && v.at("step").as_int64() < step + (evaluation ? 1 : 0)) kept += line + "\n";
        } catch (const tinyllm::error&) {
            // a line cut short by a crash: dropped
        }
    }
    in.close();
    tinyllm::detail::write_file_replacing(path, kept, "tinyllm train");
}

}  // namespace

TINYLLM_COMMAND("train", "train a GPT-2, Llama or Mixtral model on text; save it as a Hugging Face checkpoint",
                "usage: tinyllm train [--data FILE [FILE...]] [--out DIR] [--resume DIR]\n"
                "                     [--tokenizer FILE | --vocab-size N]\n"
                "                     [--arch gpt2|llama|mixtral] [--layers N] [--d-model N] [--heads N]\n"
                "                     [--kv-heads N] [--ffn N] [--experts N] [--top-k N] [--context T]\n"
                "                     [--batch B] [--steps N] [--lr X] [--warmup N] [--weight-decay X]\n"
                "                     [--clip X] [--seed S] [--validation F] [--eval-every N] [--eval-batches N]\n"
                "                     [--sample-prompt TEXT] [--sample-tokens N] [--device cpu|cuda] [--threads N]\n\n"
                "Trains a model from scratch on UTF-8 text and writes it to DIR as Hugging Face does\n"
                "(config.json, model.safetensors, tokenizer.json, generation_config.json), loadable by\n"
                "`tinyllm generate --model DIR` and transformers' AutoModelForCausalLM. Beside it:\n"
                "optimizer.safetensors and training_state.json (what --resume needs), data.tokens (the\n"
                "tokenized corpus, reused while the text and tokenizer are unchanged), log.jsonl (every\n"
                "step and evaluation) and loss.png (the loss curve).\n\n"
                "With no arguments it trains the default model: a 4-layer Llama (d 256, 8 heads over 4\n"
                "key/value heads, 4.0M parameters) on the King James Bible (data/kjv.txt, written by\n"
                "tools/bootstrap) with a 4096-token BPE vocabulary, into models/kjv — about 8 minutes\n"
                "on two CPU cores — which `tinyllm generate` then uses without --model.\n\n"
                "  --data FILE...     the text (several files: joined with <|endoftext|>)\n"
                "  --tokenizer FILE   a tokenizer.json (or tinyllm's format); else one is trained on\n"
                "                     the text with --vocab-size N tokens (default 4096)\n"
                "  --arch, sizes      the model (default llama, 4 layers, d-model 256, 8 heads, 4 kv-heads;\n"
                "                     --ffn defaults to 4 d (GPT-2) or 8/3 d rounded up to 64; --experts 8\n"
                "                     --top-k 2 for mixtral); --context T tokens per window (default 128)\n"
                "  --batch B          windows per step (default 16); --steps N (default 600)\n"
                "  --lr X             peak learning rate (default 2e-3), after --warmup N steps (default\n"
                "                     60), cosine decay to X/10 at the last step; AdamW betas (0.9, 0.95),\n"
                "                     --weight-decay X (default 0.1) on matrices; --clip X global gradient\n"
                "                     norm (default 1, 0: none); --seed S (default 1337): the initial\n"
                "                     weights and the batches, so a run repeats exactly\n"
                "  --validation F     the held-out fraction of the tokens (default 0.05)\n"
                "  --eval-every N     validation loss, a sample and a checkpoint every N steps (default\n"
                "                     100) and at the end; --eval-batches N windows per evaluation (default 16)\n"
                "  --sample-prompt T  the samples' prompt (default: the text's first three words)\n"
                "  --device cuda      gradients on the GPU (the CUDA model), AdamW on the CPU\n"
                "  --threads N        CPU threads (default: one per core)\n"
                "  --resume DIR       continue the run saved in DIR (its options; --steps may change)\n"
                "  --stop-after N     stop after step N as Ctrl-C does (the rest with --resume)\n"
                "  --keep-initial     also save the initial weights in DIR/initial (for comparisons)\n"
                "  --teacher DIR      distill: learn from the model in DIR (same tokenizer) as well as\n"
                "                     from the text: loss (1 - A) CE + A T^2 KL(teacher || student) at\n"
                "                     temperature T (--distill-weight A, default 0.5; --distill-temperature\n"
                "                     T, default 2; CPU only; docs/training.md)\n"
                "  --fail-above X     exit with status 1 when the final validation loss is above X\n\n"
                "Ctrl-C stops after the current step and saves a checkpoint to resume from.\n") {
    const auto a = parse_args(args,
                              {"data", "out", "resume", "tokenizer", "vocab-size", "arch", "layers", "d-model", "heads",
                               "kv-heads", "ffn", "experts", "top-k", "context", "batch", "steps", "lr", "warmup",
                               "weight-decay", "clip", "seed", "validation", "eval-every", "eval-batches",
                               "sample-prompt", "sample-tokens", "device", "threads", "stop-after", "fail-above",
                               "teacher", "distill-weight", "distill-temperature"},
                              {"keep-initial"});
    using clock = std::chrono::steady_clock;
    const auto started = clock::now();
    const std::string device = a.get("device", "cpu");
    if (device != "cpu" && device != "cuda") throw usage_error("--device must be cpu or cuda, got '" + device + "'");
    if (device == "cuda") {  // said now, not after the tokenizer, the data and the first evaluation
        const gpu_report gpus = query_gpus();
        if (gpus.devices.empty())
            throw tinyllm::error("tinyllm train: --device cuda: no usable GPU (" + gpus.why_none +
                                 "); use --device cpu");
    }
    if (a.options.count("threads")) {
        const long long n = a.get_int("threads", 0);
        if (n < 1 || n > 4096) throw usage_error("--threads must be in [1, 4096], got " + a.get("threads"));
        tinyllm::cpu::set_num_threads(static_cast<int>(n));
    }
    const bool resuming = a.options.count("resume") > 0;
    if (resuming && !std::filesystem::exists(std::filesystem::path(a.get("resume")) / "training_state.json"))
        throw usage_error(
            "--resume " + a.get("resume") +
            " holds no training_state.json: not a run that tinyllm train saved (or its save was interrupted)");
    require_checkpoint(a, "teacher");
    require_input_file(a, "tokenizer");
    std::vector<std::string> data_files;
    if (a.options.count("data")) data_files.push_back(a.get("data"));
    for (const auto& p : a.positional) {
        if (data_files.empty()) throw usage_error("unexpected argument '" + p + "' (text files follow --data)");
        data_files.push_back(p);
    }
    const bool default_run = data_files.empty() && !resuming;
    if (default_run) data_files.push_back(default_corpus());
    const std::string out_dir =
        a.get("out", resuming ? a.get("resume") : default_run ? default_model_dir() : "");
    if (out_dir.empty()) throw usage_error("--out DIR is required with --data");
    if (a.options.count("tokenizer") && a.options.count("vocab-size"))
        throw usage_error("give --tokenizer FILE or --vocab-size N (to train one), not both");
    const auto path = [&](const char* name) { return (fs::path(out_dir) / name).string(); };

    // ---- the options of the run -------------------------------------------------
    tinyllm::train_options o;
    o.batch = a.get_int("batch", 16);
    o.context = a.get_int("context", 128);
    o.steps = a.get_int("steps", 600);
    o.lr = a.get_double("lr", 2e-3);
    o.warmup = a.get_int("warmup", 60);
    o.weight_decay = a.get_double("weight-decay", 0.1);
    o.clip = a.get_double("clip", 1.0);
    {
        const std::string seed = a.get("seed", "1337");
        const auto [end, ec] = std::from_chars(seed.data(), seed.data() + seed.size(), o.seed);
        if (seed.empty() || ec != std::errc() || end != seed.data() + seed.size())
            throw usage_error("--seed needs an unsigned 64-bit integer, got '" + seed + "'");
    }
    o.eval_batches = a.get_int("eval-batches", 16);
    const long long eval_every = a.get_int("eval-every", 100);
    if (eval_every < 1) throw usage_error("--eval-every must be at least 1");
    const double validation = a.get_double("validation", 0.05);
    if (!(validation > 0 && validation < 0.5)) throw usage_error("--validation must be in (0, 0.5)");
    const long long stop_after = a.get_int("stop-after", -1);
    if (a.options.count("stop-after") && stop_after < 1) throw usage_error("--stop-after must be at least 1");
    const double fail_above = a.get_double("fail-above", std::numeric_limits<double>::infinity());
    const bool distilled = a.options.count("teacher") > 0;
    if (!distilled && (a.options.count("distill-weight") || a.options.count("distill-temperature")))
        throw usage_error("--distill-weight and --distill-temperature need --teacher DIR");
    if (distilled && device == "cuda") throw usage_error("--teacher: distillation runs on the CPU; drop --device cuda");
    if (distilled) {
        o.distill_weight = a.get_double("distill-weight", 0.5);
        o.distill_temperature = a.get_double("distill-temperature", 2.0);
        if (!(o.distill_weight > 0 && o.distill_weight <= 1)) throw usage_error("--distill-weight must be in (0, 1]");
        if (!(o.distill_temperature >= tinyllm::detail::distillation_temperature_min &&
              o.distill_temperature <= tinyllm::detail::distillation_temperature_max))
            throw usage_error("--distill-temperature must be positive, in [1e-3, 1e3]");
    }
    const long long sample_tokens = a.get_int("sample-tokens", 48);
    if (sample_tokens < 0) throw usage_error("--sample-tokens must not be negative");
    // Every option is checked before the work begins: training the tokenizer and
    // tokenizing the corpus grow with --data, and write data.tokens.
    check_run_flags(o);
    if (!resuming) {
        (void)model_config_from(a, 257, o.context, -1);  // the model's shape (its vocabulary comes later)
        if (!a.options.count("tokenizer") && a.get_int("vocab-size", 4096) < 257)
            throw usage_error("--vocab-size must be at least 257 (256 bytes and <|endoftext|>)");
    }

    std::optional<tinyllm::tokenizer> tokenizer;
    tinyllm::model_config config;
    std::int64_t start_step = 0;
    tinyllm::data_splits splits;
    std::string sample_prompt = a.get("sample-prompt");

    if (resuming) {
        // Everything comes from the checkpoint; flags may only repeat it (or change --steps).
        const std::string dir = a.get("resume");
        const auto state = tinyllm::read_training_state(dir);
        const tinyllm::train_options saved = tinyllm::read_train_options(state, dir + "/training_state.json");
        const auto mine = tinyllm::detail::train_option_fields(o), theirs = tinyllm::detail::train_option_fields(saved);
        const char* flag_of[] = {"batch", "context", "steps", "lr", "warmup", "weight-decay", "beta1", "beta2", "eps",
                                 "clip", "seed", "eval-batches", "aux_weight"};
        for (std::size_t i = 0; i < std::size(flag_of); ++i)
            if (a.options.count(flag_of[i]) && mine[i].first != "steps" && mine[i].second != theirs[i].second)
                throw usage_error("--" + std::string(flag_of[i]) + " " + mine[i].second + ": the run in " + dir +
                                  " was trained with " + theirs[i].second + " (only --steps may change when resuming)");
        for (const char* shape : {"data", "arch", "layers", "d-model", "heads", "kv-heads", "ffn", "experts", "top-k",
                                  "tokenizer", "vocab-size", "validation"})
            if (a.options.count(shape))
                throw usage_error(std::string("--") + shape + ": a resumed run keeps its model, tokenizer and data split (" +
                                  dir + ")");
        if (saved.distill_weight > 0 && !distilled)
            throw usage_error("the run in " + dir + " learns from a teacher: give --teacher DIR again to resume it");
        if (saved.distill_weight == 0 && distilled)
            throw usage_error("--teacher: the run in " + dir + " was not distilled (a resumed run keeps its loss)");
        if (distilled && (o.distill_weight != saved.distill_weight || o.distill_temperature != saved.distill_temperature))
            throw usage_error("--distill-weight/--distill-temperature: the run in " + dir + " was trained with " +
                              tinyllm::detail::json_number(saved.distill_weight) + " and " +
                              tinyllm::detail::json_number(saved.distill_temperature));
        const long long steps = o.steps;
        o = saved;
        if (a.options.count("steps")) o.steps = steps;
        config = tinyllm::load_model_config(dir);
        tokenizer = tinyllm::load_tokenizer((fs::path(dir) / "tokenizer.json").string());
        const tinyllm::tokenizer& tok = *tokenizer;
        TINYLLM_EXPECT(static_cast<tinyllm::index_t>(tok.vocab_size()) <= config.vocab_size, dir,
                       "/tokenizer.json has ", tok.vocab_size(), " tokens but the model's vocabulary ", config.vocab_size);
        start_step = state.at("step").as_int64();
        const auto& d = state.at("data");
        splits = {static_cast<std::uint64_t>(d.at("train").at(0).as_int64()),
                  static_cast<std::uint64_t>(d.at("train").at(1).as_int64()),
                  static_cast<std::uint64_t>(d.at("validation").at(0).as_int64()),
                  static_cast<std::uint64_t>(d.at("validation").at(1).as_int64())};
        if (out_dir != dir) {
            fs::create_directories(out_dir);
            for (const char* f : {"data.tokens", "log.jsonl"})
                if (fs::exists(fs::path(dir) / f)) fs::copy_file(fs::path(dir) / f, path(f), fs::copy_options::overwrite_existing);
        }
        if (!fs::exists(path("data.tokens")))
            throw tinyllm::error("cannot resume from '" + dir + "': its data.tokens (the tokenized corpus) is missing");
        if (sample_prompt.empty()) {  // the same prompt as before the stop: the text's first words, decoded
            const tinyllm::token_file corpus(path("data.tokens"));
            std::vector<tinyllm::token_id> head;
            for (std::uint64_t i = 0; i < std::min<std::uint64_t>(corpus.size(), 64); ++i) head.push_back(corpus[i]);
            sample_prompt = first_words(tok.decode(head));
        }
        out << "resuming " << dir << " at step " << start_step << " of " << o.steps << "\n";
    } else {
        if (fs::exists(path("training_state.json")))
            throw usage_error("'" + out_dir + "' already holds a training run: continue it with --resume " + out_dir +
                              ", or remove it or choose another --out to start afresh");
        fs::create_directories(out_dir);
        const auto texts = read_corpus(data_files);
        if (a.options.count("tokenizer")) {
            tokenizer = tinyllm::load_tokenizer(a.get("tokenizer"));
        } else {
            const long long vocab = a.get_int("vocab-size", 4096);  // checked above
            tinyllm::bpe_train_options bo;
            bo.vocab_size = static_cast<std::size_t>(vocab);
            bo.pattern = tinyllm::pretokenizer::cl100k;
            bo.special_tokens = {"<|endoftext|>"};
            const auto t0 = clock::now();
            tokenizer = tinyllm::train_bpe(texts, bo);
            out << "tokenizer: trained " << tokenizer->vocab_size() << " tokens (BPE) on the text in "
                << std::fixed << std::setprecision(1) << std::chrono::duration<double>(clock::now() - t0).count()
                << " s\n" << std::defaultfloat;
            if (tokenizer->vocab_size() < bo.vocab_size)
                out << "tokenizer: --vocab-size asked for " << vocab << " tokens; the text ran out of pairs to merge "
                    << "(every piece is one token) at " << tokenizer->vocab_size() << "\n";
        }
        const tinyllm::tokenizer& tok = *tokenizer;
        // Refuse a tokenizer the checkpoint could not carry before spending time on it.
        (void)tinyllm::hf_tokenizer_json(tok);
        const auto eos = tok.special_id("<|endoftext|>");

        // The token file: reused when it was made from this text and this tokenizer.
        std::uint64_t fingerprint = tinyllm::fnv1a64(tinyllm::hf_tokenizer_json(tok));
        for (const auto& t : texts) fingerprint = tinyllm::fnv1a64(t, tinyllm::fnv1a64("\x1e", fingerprint));
        bool reuse = false;
        if (fs::exists(path("data.tokens"))) {
            try {
                reuse = tinyllm::token_file(path("data.tokens")).fingerprint() == fingerprint;
            } catch (const tinyllm::error&) {
                reuse = false;  // damaged: made again
            }
        }
        if (!reuse) {
            const auto t0 = clock::now();
            std::vector<tinyllm::token_id> ids;
            for (std::size_t i = 0; i < texts.size(); ++i) {
                if (i > 0 && eos) ids.push_back(*eos);
                tok.encode_ordinary(texts[i], ids);
            }
            tinyllm::write_token_file(path("data.tokens"), ids, fingerprint,
                                      static_cast<tinyllm::index_t>(tok.vocab_size()));
            out << "data: " << ids.size() << " tokens from " << texts.size() << " file(s) ("
                << std::fixed << std::setprecision(2) << [&] {
                       std::size_t bytes = 0;
                       for (const auto& t : texts) bytes += t.size();
                       return static_cast<double>(bytes) / static_cast<double>(std::max<std::size_t>(ids.size(), 1));
                   }()
                << " bytes per token), tokenized in " << std::setprecision(1)
                << std::chrono::duration<double>(clock::now() - t0).count() << " s into " << path("data.tokens") << "\n"
                << std::defaultfloat;
        } else {
            out << "data: reusing " << path("data.tokens") << " (made from this text and tokenizer)\n";
        }
        config = model_config_from(a, static_cast<tinyllm::index_t>(tok.vocab_size()), o.context, eos ? *eos : -1);
        const tinyllm::token_file probe(path("data.tokens"));
        try {
            splits = tinyllm::split_tokens(probe.size(), o.context, validation);
        } catch (const tinyllm::error& e) {
            throw tinyllm::error(std::string("--data: the corpus is too short for this run: ") + e.what());
        }
        if (sample_prompt.empty()) sample_prompt = first_words(texts.front());
    }
    if (sample_prompt.empty()) sample_prompt = "The";
    if (tinyllm::detail::is_valid_utf8(sample_prompt) == false) throw usage_error("--sample-prompt must be UTF-8");

    const tinyllm::tokenizer& tok = *tokenizer;
    const tinyllm::token_file data(path("data.tokens"));
    TINYLLM_EXPECT(data.vocab_size() <= config.vocab_size, path("data.tokens"), " holds ids of a ", data.vocab_size(),
                   "-token vocabulary; the model has ", config.vocab_size);
    tinyllm::gradient_function gradients;
    if (device == "cuda") gradients = gpu_forward_backward;
    if (config.arch == tinyllm::model_arch::mixtral) o.aux_weight = config.router_aux_loss_coef;
    std::optional<tinyllm::cpu::model> teacher;  // outlives the trainer, which points to it
    if (distilled) {
        const std::string dir = a.get("teacher");
        teacher.emplace(tinyllm::cpu::model::load(dir));
        const auto teacher_tok = tinyllm::load_tokenizer((fs::path(dir) / "tokenizer.json").string());
        if (tinyllm::hf_tokenizer_json(teacher_tok) != tinyllm::hf_tokenizer_json(tok))
            throw usage_error("--teacher " + dir + ": its tokenizer.json is not the tokenizer of this run; a student "
                              "learns the teacher's distribution over the same tokens (train with --tokenizer " + dir +
                              "/tokenizer.json)");
    }
    tinyllm::cpu::trainer t(tinyllm::cpu::model(config, tinyllm::init_weights(config, o.seed)), data, splits, o, gradients);
    if (teacher) t.set_teacher(*teacher);
    if (resuming) t.restore(a.get("resume"));
    const std::int64_t params = [&] {
        std::int64_t n = 0;
        tinyllm::detail::for_each_weight(t.model().weights(), t.model().weights(),
                                         [&](const std::string&, const auto& w, const auto&) { n += w.size(); });
        return n;
    }();
    out << "model: " << config.architecture << ", " << config.num_layers << " layers, d " << config.hidden_size << ", "
        << config.num_heads << " heads (" << config.num_kv_heads << " kv), ffn " << config.intermediate_size;
    if (config.num_experts) out << " x " << config.num_experts << " experts (top " << config.experts_per_token << ")";
    out << ", vocabulary " << config.vocab_size << ": " << std::fixed << std::setprecision(2) << params / 1e6
        << "M parameters\n" << std::defaultfloat
        << "run: " << o.steps << " steps of " << o.batch << " x " << o.context << " tokens (train " << splits.train_end - splits.train_begin
        << " tokens, validation " << splits.val_end - splits.val_begin << "), lr " << o.lr << ", on "
        << (device == "cuda" ? "the GPU" : std::to_string(tinyllm::cpu::num_threads()) + " CPU thread(s)") << "\n"
        << "writing to " << out_dir << "\n" << std::flush;

    // ---- the loop ---------------------------------------------------------------
    const std::string log_path = path("log.jsonl");
    if (resuming) truncate_log(log_path, start_step);
    else fs::remove(log_path);
    std::ofstream log(log_path, std::ios::app);
    if (!log) throw tinyllm::error("cannot write " + log_path);
    const bool tty = ::isatty(STDOUT_FILENO) && &out == &std::cout;
    const std::int64_t plain_every = std::max<std::int64_t>(1, o.steps / 40);
    const auto prompt_ids = tok.encode_ordinary(sample_prompt);
    double last_val = std::nan(""), train_seconds = 0;
    std::int64_t timed_tokens = 0;
    const auto loop_start = clock::now();
    const std::int64_t first = t.steps_done();

    auto evaluate_and_save = [&](bool final) {
        const double val = t.evaluate();
        last_val = val;
        std::string sample;
        if (sample_tokens > 0 && !prompt_ids.empty()) {
            tinyllm::cpu::generation_options g;
            g.max_new_tokens = sample_tokens;
            g.sampling.temperature = 0.8f;
            g.sampling.top_k = 40;
            g.seed = o.seed + static_cast<std::uint64_t>(t.steps_done());
            const auto ids = tinyllm::cpu::generate(t.model(), prompt_ids, g);
            sample = tok.decode(ids);
        }
        log << "{\"step\": " << t.steps_done() << ", \"val_loss\": " << tinyllm::detail::json_number(val)
            << ", \"sample\": \"" << json_escape(sample_prompt + sample) << "\"}\n" << std::flush;
        if (tty) out << "\r\x1b[K";
        out << "step " << t.steps_done() << "/" << o.steps << ": validation loss " << std::fixed << std::setprecision(4)
            << val << std::defaultfloat << (final ? " (final)" : "") << "\n";
        if (!sample.empty()) {
            std::string shown = sample_prompt + sample;
            for (char& c : shown)
                if (c == '\n') c = ' ';
            out << "  sample: " << shown << "\n";
        }
        tinyllm::save_training_checkpoint(out_dir, t, tok);
        out << std::flush;
    };

    std::signal(SIGINT, on_interrupt);
    if (first == 0) {
        if (a.has_flag("keep-initial")) tinyllm::save_training_checkpoint(path("initial"), t, tok);
        evaluate_and_save(false);
    }
    bool stopped = false;
    while (t.steps_done() < o.steps && !interrupted && !stopped) {
        const tinyllm::step_stats s = t.step();
        train_seconds += s.seconds;
        timed_tokens += o.batch * o.context;
        const double tokens_per_s = static_cast<double>(timed_tokens) / train_seconds;
        const double elapsed = std::chrono::duration<double>(clock::now() - loop_start).count();
        const double eta = elapsed / static_cast<double>(t.steps_done() - first) * static_cast<double>(o.steps - t.steps_done());
        log << "{\"step\": " << s.step << ", \"loss\": " << tinyllm::detail::json_number(s.loss);
        if (config.num_experts) log << ", \"aux_loss\": " << tinyllm::detail::json_number(s.aux);
        if (teacher) log << ", \"distill_loss\": " << tinyllm::detail::json_number(s.distill);
        log << ", \"lr\": " << tinyllm::detail::json_number(s.lr) << ", \"grad_norm\": "
            << tinyllm::detail::json_number(s.grad_norm) << ", \"seconds\": " << tinyllm::detail::json_number(s.seconds)
            << ", \"tokens_per_s\": " << tinyllm::detail::json_number(tokens_per_s) << "}\n";
        std::ostringstream line;
        line << "step " << t.steps_done() << "/" << o.steps << "  loss " << std::fixed << std::setprecision(4) << s.loss
             << "  val " << (std::isnan(last_val) ? std::string("-") : [&] {
                    std::ostringstream v;
                    v << std::fixed << std::setprecision(4) << last_val;
                    return v.str();
                }())
             << "  " << std::setprecision(0) << tokens_per_s << " tok/s  " << format_duration(elapsed) << " elapsed  ETA "
             << format_duration(eta);
        if (tty) out << "\r\x1b[K" << line.str() << std::flush;
        else if (t.steps_done() % plain_every == 0 || t.steps_done() == o.steps) out << line.str() << "\n" << std::flush;
        if (t.steps_done() % eval_every == 0 || t.steps_done() == o.steps) evaluate_and_save(t.steps_done() == o.steps);
        stopped = t.steps_done() == stop_after;
    }
    log.close();
    std::signal(SIGINT, SIG_DFL);
    if ((interrupted || stopped) && t.steps_done() < o.steps) {
        tinyllm::save_training_checkpoint(out_dir, t, tok);
        out << (tty ? "\r\x1b[K" : "") << (interrupted ? "interrupted" : "--stop-after") << ": stopped after step " << t.steps_done() << " of " << o.steps
            << "; the checkpoint in " << out_dir << " continues with\n    tinyllm train --resume " << out_dir << "\n";
        return interrupted ? 130 : 0;
    }
    const std::string plot = path("loss.png");
    try {
        write_loss_plot(plot, log_path);
    } catch (const std::exception& e) {
        out << "(no loss plot: " << e.what() << ")\n";
    }
    const double total = std::chrono::duration<double>(clock::now() - started).count();
    out << "done: " << o.steps << " steps, validation loss " << std::fixed << std::setprecision(4) << last_val
        << ", " << std::setprecision(0) << (train_seconds > 0 ? static_cast<double>(timed_tokens) / train_seconds : 0.0)
        << " training tokens/s, " << format_duration(total) << " in all\n" << std::defaultfloat
        << "  model: " << out_dir << " (config.json, model.safetensors, tokenizer.json)\n"
        << "  loss curve: " << plot << ", log: " << log_path << "\n"
        << "  generate: tinyllm generate"
        << (out_dir == default_model_dir() ? std::string() : " --model " + out_dir) << " --prompt \"" << sample_prompt
        << "\"\n";
    if (last_val > fail_above) {
        out << "FAILED: the validation loss " << std::setprecision(6) << last_val << " is above --fail-above "
            << fail_above << "\n";
        return 1;
    }
    return 0;
}
