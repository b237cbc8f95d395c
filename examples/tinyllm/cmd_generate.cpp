// examples/tinyllm/cmd_generate.cpp — `tinyllm generate` and `tinyllm logits`:
// run a Hugging Face checkpoint (config.json + model.safetensors) with the CPU
// model of <tinyllm/model.hpp> (its blocked kernels, or the references with
// --reference), or on the GPU with <tinyllm/cuda/model.cuh> (--device cuda,
// through gpu.hpp).
#include "gpu.hpp"
#include "paths.hpp"
#include "registry.hpp"

#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/speculative.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

// The samplers' settings, with the names of their flags, checked before a model
// loads (loading grows with the checkpoint); the samplers check them
// again (sampling.hpp's check_params).
void check_sampling_flags(const tinyllm::sampling::params& p) {
    using tinyllm::detail::cat;
    if (!(std::isfinite(p.temperature) && p.temperature >= 0.0f))
        throw usage_error("--temperature must be a number >= 0 (0: greedy), got " + cat(p.temperature));
    if (p.top_k && *p.top_k < 1) throw usage_error("--top-k must be at least 1, got " + cat(*p.top_k));
    if (p.top_p && !(*p.top_p > 0.0f && *p.top_p <= 1.0f))
        throw usage_error("--top-p must be in (0, 1], got " + cat(*p.top_p));
    if (p.min_p && !(*p.min_p >= 0.0f && *p.min_p <= 1.0f))
        throw usage_error("--min-p must be in [0, 1], got " + cat(*p.min_p));
}

// What the checkpoint's config.json says a prompt and its continuation must fit,
// checked before the weights load (the model checks again): every id inside the
// vocabulary, and for GPT-2 the prompt and the new tokens within its learned positions.
void check_prompt_fits(const tinyllm::model_config& c, std::span<const tinyllm::token_id> prompt,
                       long long max_new_tokens) {
    for (std::size_t t = 0; t < prompt.size(); ++t)
        if (prompt[t] >= c.vocab_size)
            throw usage_error("the prompt's token " + std::to_string(t) + " is id " + std::to_string(prompt[t]) +
                              ", outside the model's vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    const long long needed = static_cast<long long>(prompt.size()) + max_new_tokens;
    if (c.arch == tinyllm::model_arch::gpt2 && needed > c.max_positions)
        throw usage_error("the prompt's " + std::to_string(prompt.size()) + " tokens and --max-new-tokens " +
                          std::to_string(max_new_tokens) + " need " + std::to_string(needed) +
                          " positions; this GPT-2 has " + std::to_string(c.max_positions));
}

// --device and --dtype: true for the GPU, with *bf16 set for --dtype bfloat16 and
// *quantized for --dtype int8 or int4-gG (quantized at load, round to nearest, on
// either device).
bool wants_gpu(const parsed_args& a, bool* bf16, std::optional<tinyllm::quant_spec>* quantized) {
    const std::string device = a.get("device", "cpu"), dtype = a.get("dtype", "float32");
    if (device != "cpu" && device != "cuda") throw usage_error("--device must be cpu or cuda, got '" + device + "'");
    if (dtype != "float32" && dtype != "bfloat16") {
        try {
            *quantized = tinyllm::parse_quant_spec(dtype);
        } catch (const tinyllm::error&) {
            throw usage_error("--dtype must be float32, bfloat16, int8 or int4-gG (G an even group size), got '" +
                              dtype + "'");
        }
        if (a.has_flag("reference"))
            throw usage_error("--reference runs float32 weights; --dtype " + dtype + " needs the blocked kernels");
    }
    *bf16 = dtype == "bfloat16";
    if (device == "cuda" && a.has_flag("reference"))
        throw usage_error("--reference selects the CPU reference kernels; it needs --device cpu");
    if (*bf16 && a.has_flag("reference"))
        throw usage_error("--reference runs float32 weights; --dtype bfloat16 needs the blocked kernels (the default)");
    return device == "cuda";
}

// The checkpoint in `dir` as a CPU model: its matrices in --dtype, on the kernels
// --reference asks for.
tinyllm::cpu::model load_cpu_model(const parsed_args& a, const std::string& dir, bool bf16,
                                   const std::optional<tinyllm::quant_spec>& quantized) {
    using tinyllm::cpu::model;
    auto m = model::load(dir, bf16 ? model::weight_dtype::bfloat16 : model::weight_dtype::float32);
    if (quantized && m.quantized())
        throw usage_error("'" + dir + "' is a quantized checkpoint (" + m.quantization().name() +
                          "); it runs as stored, without --dtype " + quantized->name());
    if (quantized) {
        if (const std::string why = tinyllm::quant_spec_mismatch(m.weights(), *quantized); !why.empty())
            throw usage_error("--dtype " + quantized->name() + ": " + why);
        m.quantize_weights(*quantized);
    }
    m.set_kernels(a.has_flag("reference") ? model::kernels::reference : model::kernels::blocked);
    return m;
}

// --draft-model / --prompt-lookup / --speculate, checked before any model loads.
struct speculation {
    bool active = false;
    tinyllm::index_t k = 4;
    tinyllm::index_t lookup_ngram = 0;
    std::string draft_dir;
    bool draft_bf16 = false;
    std::optional<tinyllm::quant_spec> draft_quantized;
};

speculation speculation_of(const parsed_args& a, const std::string& dir) {
    speculation s;
    const bool draft = a.options.count("draft-model") > 0, lookup = a.options.count("prompt-lookup") > 0;
    if (!draft && !lookup) {
        for (const char* only : {"speculate", "draft-dtype"})
            if (a.options.count(only)) throw usage_error(std::string("--") + only + " needs --draft-model DIR2 or --prompt-lookup N");
        return s;
    }
    if (draft && lookup) throw usage_error("give one drafter: --draft-model DIR2 or --prompt-lookup N, not both");
    if (a.has_flag("reference")) throw usage_error("speculative decoding runs the blocked kernels; drop --reference");
    s.active = true;
    s.k = a.get_int("speculate", 4);
    if (s.k < 1) throw usage_error("--speculate K: K = " + std::to_string(s.k) + " must be at least 1");
    if (lookup) {
        if (a.options.count("draft-dtype")) throw usage_error("--draft-dtype needs --draft-model DIR2");
        s.lookup_ngram = a.get_int("prompt-lookup", 0);
        if (s.lookup_ngram < 1)
            throw usage_error("--prompt-lookup N: N = " + std::to_string(s.lookup_ngram) + " must be at least 1");
        return s;
    }
    s.draft_dir = a.get("draft-model");
    const std::string dtype = a.get("draft-dtype", "float32");
    if (dtype == "bfloat16") s.draft_bf16 = true;
    else if (dtype != "float32") {
        try {
            s.draft_quantized = tinyllm::parse_quant_spec(dtype);
        } catch (const tinyllm::error&) {
            throw usage_error("--draft-dtype must be float32, bfloat16, int8 or int4-gG, got '" + dtype + "'");
        }
    }
    // The vocabulary sizes are checked by the library; the tokenizers, when both
    // directories have one, must be the same file.
    namespace fs = std::filesystem;
    const fs::path t1 = fs::path(dir) / "tokenizer.json", t2 = fs::path(s.draft_dir) / "tokenizer.json";
    const auto bytes = [](const fs::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string((std::istreambuf_iterator<char>(in)), {});
    };
    if (fs::exists(t1) && fs::exists(t2) && bytes(t1) != bytes(t2))
        throw usage_error("the draft model's tokenizer (" + t2.string() + ") differs from the model's (" + t1.string() +
                          "): a draft must share the model's vocabulary");
    return s;
}

void report_speculation(const tinyllm::speculative_result& r, tinyllm::index_t k) {
    std::fprintf(stderr,
                 "speculative decoding: %zu tokens in %lld target forwards (%.2f per forward); "
                 "%lld of %lld drafted tokens accepted (%.1f%%), k = %lld\n",
                 r.tokens.size(), static_cast<long long>(r.rounds), r.tokens_per_round(),
                 static_cast<long long>(r.accepted), static_cast<long long>(r.drafted), 100.0 * r.acceptance_rate(),
                 static_cast<long long>(k));
}

}  // namespace

TINYLLM_COMMAND("generate", "generate text with a Hugging Face checkpoint (GPT-2, Llama, Mixtral)",
                "usage: tinyllm generate [--model DIR] (--prompt TEXT [--tokenizer FILE] [--encoding NAME] |\n"
                "                         --prompt-ids \"ID ...\") [--max-new-tokens N]\n"
                "                         [--greedy | --temperature T --top-k K --top-p P --min-p M --seed S]\n"
                "                         [--device cpu|cuda] [--dtype float32|bfloat16|int8|int4-gG] [--reference]\n"
                "                         [--draft-model DIR2 [--draft-dtype D] | --prompt-lookup N] [--speculate K]\n"
                "                         [--kv-cache float32|int8]\n\n"
                "DIR holds config.json and model.safetensors (or model.safetensors.index.json + shards),\n"
                "as Hugging Face publishes them. Without --model: the default model, models/kjv, which\n"
                "`tinyllm train` trains on the King James Bible with no arguments. With --prompt-ids,\n"
                "stdout carries only the generated ids, separated by spaces. With --prompt, the text is\n"
                "encoded with the tokenizer FILE (a tiktoken rank file, a Hugging Face tokenizer.json or\n"
                "tinyllm's own; default DIR/tokenizer.json) and the decoded continuation streams out as\n"
                "it is generated. Default: greedy, 32 new tokens, --device cpu (the default model:\n"
                "temperature 0.8, top-k 40, 200 new tokens).\n"
                "--device cuda runs the CUDA model; on either device the weights are held in --dtype\n"
                "(float32; bfloat16: half the bytes, float accumulation; int8 or int4-gG, e.g. int4-g64:\n"
                "the layers' matrices quantized at load by round to nearest, docs/quantization.md). A\n"
                "checkpoint of `tinyllm quantize --out` runs quantized as stored. Both devices choose tokens\n"
                "with the same samplers and seeds. On the CPU the model runs its blocked kernels (float\n"
                "accumulation, threads: docs/cpu.md); --reference runs the readable reference kernels\n"
                "instead (double accumulation, one thread, float32 weights, many times slower), which\n"
                "define what the blocked ones compute.\n"
                "Speculative decoding (docs/speculative.md): --draft-model DIR2, a smaller model\n"
                "with the same tokenizer, drafts K tokens per round (--speculate K, default 4; the draft\n"
                "held in --draft-dtype, default float32) and the model checks them in one forward;\n"
                "--prompt-lookup N drafts instead by copying what followed the latest earlier\n"
                "occurrence of the text's last N (or fewer) tokens. The output follows the same\n"
                "distribution as without it (greedy: the same tokens); stderr reports the acceptance.\n"
                "With --device cuda the CUDA model is the target and the draft runs on the GPU too.\n"
                "--kv-cache int8 (either device, without speculative decoding) keeps the keys and values\n"
                "in 8 bits with a scale per position and head: 3.6x (head dim 32) to 3.8x (64) less memory\n"
                "than float32 (docs/quantization.md).\n") {
    const auto a = parse_args(args,
                              {"model", "prompt", "prompt-ids", "tokenizer", "encoding", "max-new-tokens", "temperature",
                               "top-k", "top-p", "min-p", "seed", "device", "dtype", "draft-model", "draft-dtype",
                               "speculate", "prompt-lookup", "kv-cache"},
                              {"greedy", "reference"});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    const bool default_model = a.get("model").empty();
    const std::string dir = default_model ? default_model_dir() : a.get("model");
    if (default_model && !std::filesystem::exists(std::filesystem::path(dir) / "config.json"))
        throw usage_error("no --model DIR, and the default model (" + dir +
                          ") is not there yet: train it with `tinyllm train` (about 8 minutes on two CPU cores, "
                          "on the King James Bible that tools/bootstrap installs), or pass --model DIR");
    const bool text_mode = a.options.count("prompt") > 0;
    if (text_mode == (a.options.count("prompt-ids") > 0))
        throw usage_error("give exactly one of --prompt TEXT and --prompt-ids \"ID ...\"");
    if (!text_mode && (a.options.count("tokenizer") || a.options.count("encoding")))
        throw usage_error("--tokenizer and --encoding encode a --prompt TEXT; --prompt-ids needs neither");
    const std::string tokenizer_path =
        a.get("tokenizer").empty() ? (std::filesystem::path(dir) / "tokenizer.json").string() : a.get("tokenizer");
    bool bf16 = false;
    std::optional<tinyllm::quant_spec> quantized;
    const bool gpu = wants_gpu(a, &bf16, &quantized);

    tinyllm::cpu::generation_options o;
    if (const std::string kv = a.get("kv-cache", "float32"); kv == "int8") {
        if (a.options.count("draft-model") || a.options.count("prompt-lookup"))
            throw usage_error("--kv-cache int8 does not combine with speculative decoding yet");
        o.kv_cache = tinyllm::cpu::model::kv_dtype::int8;
    } else if (kv != "float32") {
        throw usage_error("--kv-cache must be float32 or int8, got '" + kv + "'");
    }
    o.max_new_tokens = a.get_int("max-new-tokens", default_model ? 200 : 32);
    if (o.max_new_tokens < 0) throw usage_error("--max-new-tokens must not be negative");
    const bool sampling = a.options.count("temperature") || a.options.count("top-k") || a.options.count("top-p") ||
                          a.options.count("min-p");
    if (a.has_flag("greedy") && sampling) throw usage_error("--greedy cannot be combined with sampling options");
    // The default model samples (a small model decoded greedily soon repeats itself).
    const bool default_sampling = default_model && !a.has_flag("greedy") && !sampling;
    o.sampling.temperature = static_cast<float>(a.get_double("temperature", default_sampling ? 0.8 : sampling ? 1.0 : 0.0));
    if (default_sampling) o.sampling.top_k = 40;
    if (a.options.count("top-k")) o.sampling.top_k = a.get_int("top-k", 0);
    if (a.options.count("top-p")) o.sampling.top_p = static_cast<float>(a.get_double("top-p", 1.0));
    if (a.options.count("min-p")) o.sampling.min_p = static_cast<float>(a.get_double("min-p", 0.0));
    const long long seed = a.get_int("seed", 0);
    if (seed < 0) throw usage_error("--seed must not be negative, got " + std::to_string(seed));
    o.seed = static_cast<std::uint64_t>(seed);
    check_sampling_flags(o.sampling);
    // The options are refused first (their errors name them, whatever the paths); then the paths.
    require_checkpoint(a, "model");
    require_checkpoint(a, "draft-model");
    require_input_file(a, "tokenizer");
    if (text_mode && !std::filesystem::exists(tokenizer_path))
        throw usage_error("--prompt needs --tokenizer FILE (" + dir + " has no tokenizer.json)");

    const speculation spec = speculation_of(a, dir);

    // The same loop on either device: prefill, then one token at a time, on_token per token.
    // Speculative decoding's report goes to stderr after the text's last line.
    std::optional<tinyllm::speculative_result> speculated;
    const auto report = [&] {
        out << std::flush;
        if (speculated) report_speculation(*speculated, spec.k);
    };
    const gpu_weights gpu_target{dir, bf16, quantized, o.kv_cache == tinyllm::cpu::model::kv_dtype::int8};
    auto run = [&](std::span<const tinyllm::token_id> prompt, const std::function<void(tinyllm::token_id)>& on_token) {
        check_prompt_fits(tinyllm::load_model_config(dir), prompt, o.max_new_tokens);
        if (gpu && !spec.active) {
            gpu_generate(gpu_target, prompt, o, on_token);
            return;
        }
        tinyllm::speculative_options so;
        so.draft_tokens = spec.k;
        so.max_new_tokens = o.max_new_tokens;
        so.sampling = o.sampling;
        so.seed = o.seed;
        const auto each = [&](tinyllm::token_id id, bool) { on_token(id); };
        if (gpu) {  // the CUDA model as target, and as draft
            const gpu_weights draft{spec.draft_dir, spec.draft_bf16, spec.draft_quantized, false};
            speculated = gpu_generate_speculative(gpu_target, draft, spec.lookup_ngram, prompt, so, each);
            return;
        }
        const tinyllm::cpu::model target = load_cpu_model(a, dir, bf16, quantized);
        if (!spec.active) {
            tinyllm::cpu::generate(target, prompt, o, on_token);
            return;
        }
        speculated =
            spec.lookup_ngram > 0
                ? tinyllm::cpu::generate_prompt_lookup(target, prompt, spec.lookup_ngram, so, each)
                : tinyllm::cpu::generate_speculative(target, load_cpu_model(a, spec.draft_dir, spec.draft_bf16, spec.draft_quantized),
                                                     prompt, so, each);
    };
    if (!text_mode) {
        bool first = true;
        run(parse_token_ids(a.get("prompt-ids")), [&](tinyllm::token_id id) {
            out << (first ? "" : " ") << id << std::flush;
            first = false;
        });
        out << "\n";
        report();
        return 0;
    }
    const auto tok = tinyllm::load_tokenizer(tokenizer_path, a.get("encoding"));
    tinyllm::stream_decoder decoder(tok);
    out << a.get("prompt") << std::flush;
    // The template's ids before a text ("<s>" in a Llama tokenizer.json; none for byte-level BPE), then the prompt.
    std::vector<tinyllm::token_id> prompt_ids(tok.template_before().begin(), tok.template_before().end());
    const auto text_ids = tok.encode(a.get("prompt"));
    prompt_ids.insert(prompt_ids.end(), text_ids.begin(), text_ids.end());
    if (prompt_ids.empty()) throw usage_error("--prompt encodes to no tokens: give a prompt of at least one token");
    run(prompt_ids, [&](tinyllm::token_id id) {
        TINYLLM_EXPECT(static_cast<std::size_t>(id) < tok.vocab_size(), "the model produced token ", id,
                       " which the tokenizer (", tok.vocab_size(), " tokens) cannot decode");
        out << decoder.push(id) << std::flush;
    });
    out << decoder.finish() << "\n";
    report();
    return 0;
}

TINYLLM_COMMAND("logits", "print the last position's logits of a checkpoint (one per line)",
                "usage: tinyllm logits --model DIR --prompt-ids \"ID ...\" [--device cpu|cuda]\n"
                "                      [--dtype float32|bfloat16|int8|int4-gG] [--reference]\n\n"
                "Runs the prompt through the model and prints the V logits of its last position, one per\n"
                "line, for debugging and for comparison with other implementations. --reference: the CPU\n"
                "reference kernels instead of the blocked ones (as for generate).\n") {
    const auto a = parse_args(args, {"model", "prompt-ids", "device", "dtype"}, {"reference"});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    if (a.get("model").empty()) throw usage_error("--model DIR is required");
    if (a.get("prompt-ids").empty()) throw usage_error("--prompt-ids \"ID ...\" is required");
    bool bf16 = false;
    std::optional<tinyllm::quant_spec> quantized;
    const bool gpu = wants_gpu(a, &bf16, &quantized);
    const auto prompt = parse_token_ids(a.get("prompt-ids"));
    require_checkpoint(a, "model");
    check_prompt_fits(tinyllm::load_model_config(a.get("model")), prompt, 0);
    std::vector<float> last;
    if (gpu) {
        last = gpu_last_logits(gpu_weights{a.get("model"), bf16, quantized, false}, prompt);
    } else {
        const auto model = load_cpu_model(a, a.get("model"), bf16, quantized);
        auto session = model.new_session(static_cast<tinyllm::index_t>(prompt.size()));
        const auto logits = model.forward(session, prompt);  // (n, V)
        for (tinyllm::index_t i = 0; i < logits.extent(1); ++i) last.push_back(logits(logits.extent(0) - 1, i));
    }
    char buf[32];
    for (float v : last) {
        std::snprintf(buf, sizeof buf, "%.9g\n", static_cast<double>(v));
        out << buf;
    }
    return 0;
}
