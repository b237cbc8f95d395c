// examples/tinyllm/cmd_quantize.cpp — `tinyllm quantize`: what weight
// quantization costs a trained model in quality, and quantized checkpoints.
// Measuring: the held-out loss and perplexity of the float model, then of the
// same model holding its matrices in each format, chosen by each method (round
// to nearest, GPTQ calibrated on the model's training text), over the same
// windows. Writing (--out): one format and method, saved as a quantized
// checkpoint (save_quantized_model) that `tinyllm generate --model` loads.
#include "model_data.hpp"
#include "registry.hpp"

#include <tinyllm/data.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/quantize_model.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

// Mean next-token loss over `windows` consecutive windows of T + 1 tokens from `begin`,
// each a prefill of T tokens into a fresh session keeping its keys and values in `kv`.
double held_out_loss(const tinyllm::cpu::model& m, const tinyllm::token_file& data, std::uint64_t begin, index_t T,
                     index_t windows, tinyllm::cpu::model::kv_dtype kv = tinyllm::cpu::model::kv_dtype::float32) {
    std::vector<tinyllm::token_id> tokens(static_cast<std::size_t>(T)), targets(static_cast<std::size_t>(T));
    double sum = 0;
    for (index_t w = 0; w < windows; ++w) {
        const std::uint64_t start = begin + static_cast<std::uint64_t>(w * T);
        for (index_t t = 0; t < T; ++t) {
            tokens[static_cast<std::size_t>(t)] = data[start + static_cast<std::uint64_t>(t)];
            targets[static_cast<std::size_t>(t)] = data[start + static_cast<std::uint64_t>(t) + 1];
        }
        auto session = m.new_session(T, kv);
        const auto logits = m.forward(session, tokens);
        sum += tinyllm::cpu::cross_entropy(tinyllm::tensor_view<float, 2>(), logits.view(),
                                      tinyllm::tensor_view<const tinyllm::token_id, 1>(targets.data(), {T}));
    }
    return sum / static_cast<double>(windows);
}

// The float model quantized to `spec` by `method` ("rtn" or "gptq"; GPTQ on `calibration`).
void quantize(tinyllm::cpu::model& m, const tinyllm::quant_spec& spec, const std::string& method,
              const std::optional<tinyllm::tensor<tinyllm::token_id, 2>>& calibration) {
    if (method == "gptq") m.quantize_weights_gptq(spec, calibration->view());
    else m.quantize_weights(spec);
}

// N windows of T tokens, evenly spaced over `file` encoded with DIR/tokenizer.json.
tinyllm::tensor<tinyllm::token_id, 2> text_windows(const std::string& dir, const std::string& file, index_t N,
                                                   index_t T) {
    const std::filesystem::path tokenizer = std::filesystem::path(dir) / "tokenizer.json";
    if (!std::filesystem::exists(tokenizer))
        throw usage_error("--calibration-text needs " + tokenizer.string() + " to encode the text");
    std::string text;
    try {
        text = tinyllm::detail::read_whole_file(file, "a text file");
    } catch (const tinyllm::error& e) {
        throw usage_error(std::string("--calibration-text: ") + e.what());
    }
    const std::vector<tinyllm::token_id> ids = tinyllm::load_tokenizer(tokenizer.string()).encode(text);
    const auto n = static_cast<index_t>(ids.size());
    if (n < T * N)
        throw usage_error("--calibration-text: '" + file + "' encodes to " + std::to_string(n) + " tokens, fewer than " +
                          std::to_string(N) + " windows of " + std::to_string(T) + " (lower --calibration or --context)");
    tinyllm::tensor<tinyllm::token_id, 2> out(tinyllm::extents<2>{N, T});
    const index_t stride = N > 1 ? (n - T) / (N - 1) : 0;
    for (index_t w = 0; w < N; ++w)
        for (index_t t = 0; t < T; ++t) out(w, t) = ids[static_cast<std::size_t>(w * stride + t)];
    return out;
}

std::vector<std::string> split_list(const std::string& text) {
    std::vector<std::string> items;
    std::stringstream list(text);
    for (std::string item; std::getline(list, item, ',');) items.push_back(item);
    return items;
}

tinyllm::quant_spec parse_spec(const std::string& option, const std::string& text) {
    try {
        return tinyllm::parse_quant_spec(text);
    } catch (const tinyllm::error& e) {
        throw usage_error("--" + option + ": " + e.what());
    }
}

}  // namespace

TINYLLM_COMMAND("quantize", "int8/int4 weights: what they cost a trained model, or a quantized checkpoint written",
                "usage: tinyllm quantize --model DIR [--formats LIST] [--methods LIST] [--calibration N]\n"
                "                        [--context T] [--windows N]\n"
                "       tinyllm quantize --model DIR --format F [--method rtn|gptq] [--calibration N]\n"
                "                        [--calibration-text FILE] [--context T] --out DIR2\n\n"
                "Measuring (no --out). DIR is a model `tinyllm train` wrote (it holds data.tokens, the\n"
                "tokenized corpus). The float model and, for each format of LIST (default\n"
                "int8,int4-g128,int4-g64,int4-g32) and each method (default rtn,gptq), the model holding\n"
                "its layers' matrices in that format (Mixtral: each expert's; the embedding, a tied output\n"
                "projection, norms, biases and routers stay float: tinyllm/quantize_model.hpp) are scored on\n"
                "the same held-out windows: N consecutive windows of T + 1 tokens from the start of the\n"
                "validation split training used (default T = 128, N = as many as the split holds).\n"
                "Methods: rtn rounds each weight to nearest; gptq (Frantar et al. 2023) rounds column by\n"
                "column, correcting the rest of each row for the error so far, weighted by the model's own\n"
                "activations on --calibration N windows of T tokens (default 32) from the TRAINING split\n"
                "(Mixtral: each expert on the tokens routed to it). Printed: the bits per quantized weight,\n"
                "the weights' bytes, the mean next-token loss, the perplexity and its change; then the same\n"
                "for the float model with its KV cache in int8 (a scale per position and head) and the\n"
                "cache's bytes per position.\n\n"
                "Writing (--out DIR2): DIR (any model tinyllm loads; gptq calibrates on DIR's data.tokens,\n"
                "or on --calibration-text FILE: N windows of T tokens spread over FILE, encoded with\n"
                "DIR/tokenizer.json, for checkpoints `tinyllm train` did not write) is\n"
                "quantized to F by the method (default rtn) and written to DIR2 as a quantized checkpoint\n"
                "— config.json with a \"quantization_config\", model.safetensors with each matrix's\n"
                "integers, scales and zero points (docs/quantization.md has the layout) — beside DIR's\n"
                "tokenizer and generation config. `tinyllm generate --model DIR2` runs it.\n") {
    const auto a = parse_args(args, {"model", "formats", "methods", "format", "method", "calibration",
                                     "calibration-text", "context", "windows", "out"},
                              {});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    require_checkpoint(a, "model");
    const std::string dir = a.get("model");
    if (dir.empty()) throw usage_error("--model DIR is required");
    const long long context = a.get_int("context", 128);
    if (context < 1 || context > (1LL << 31))
        throw usage_error("--context must be in [1, 2^31], got " + a.get("context"));
    const index_t T = context;
    const long long calibration_count = a.get_int("calibration", 32);
    if (calibration_count < 1) throw usage_error("--calibration must be at least 1");
    const auto check_method = [](const std::string& method) {
        if (method != "rtn" && method != "gptq")
            throw usage_error("method '" + method + "' is not rtn or gptq");
    };
    // GPTQ's calibration windows: from --calibration-text FILE (encoded with DIR's tokenizer), else from
    // DIR's training text.
    const auto calibration_of = [&](const std::string& model_dir) {
        if (a.options.count("calibration-text")) return text_windows(model_dir, a.get("calibration-text"), calibration_count, T);
        if (!std::filesystem::exists(std::filesystem::path(model_dir) / "data.tokens"))
            throw usage_error("gptq calibrates on " + model_dir + "'s data.tokens (a model `tinyllm train` wrote), "
                              "which is not there; pass --calibration-text FILE");
        const tinyllm::token_file data(model_tokens_path(model_dir));
        return calibration_windows(data, validation_range(model_dir, data, T), calibration_count, T);
    };

    if (a.options.count("out")) {
        namespace fs = std::filesystem;
        const std::string out_dir = a.get("out");
        if (!a.options.count("format")) throw usage_error("--out needs --format F (int8 or int4-gG)");
        if (a.options.count("formats") || a.options.count("methods") || a.options.count("windows"))
            throw usage_error("--formats, --methods and --windows measure; --out writes one --format and --method");
        std::error_code ec;
        if (fs::exists(out_dir) && fs::equivalent(out_dir, dir, ec))
            throw usage_error("--out must be another directory than --model");
        const tinyllm::quant_spec spec = parse_spec("format", a.get("format"));
        const std::string method = a.get("method", "rtn");
        check_method(method);
        std::optional<tinyllm::tensor<tinyllm::token_id, 2>> calibration;
        if (method == "gptq") calibration = calibration_of(dir);
        const auto t0 = std::chrono::steady_clock::now();
        tinyllm::cpu::model m = tinyllm::cpu::model::load(dir);
        if (const std::string why = tinyllm::quant_spec_mismatch(m.weights(), spec); !why.empty())
            throw usage_error("--format " + spec.name() + ": " + why);
        const index_t float_bytes = m.weight_bytes();
        quantize(m, spec, method, calibration);
        tinyllm::cpu::save_quantized_model(out_dir, m);
        // The files a model directory needs besides its weights.
        for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                                 "merges.txt", "generation_config.json"}) {
            const fs::path from = fs::path(dir) / name;
            if (fs::exists(from)) fs::copy_file(from, fs::path(out_dir) / name, fs::copy_options::overwrite_existing);
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        out << "wrote " << out_dir << ": " << spec.name() << " by " << method;
        if (calibration)
            out << " (calibrated on " << calibration->extent(0) << " windows of " << T << " tokens of "
                << (a.options.count("calibration-text") ? a.get("calibration-text") : "the training text") << ")";
        char line[160];
        std::snprintf(line, sizeof line, "; weights %lld bytes, %.2fx smaller than float32 (%lld); %.1f s\n",
                      static_cast<long long>(m.weight_bytes()),
                      static_cast<double>(float_bytes) / static_cast<double>(m.weight_bytes()),
                      static_cast<long long>(float_bytes), seconds);
        out << line;
        return 0;
    }
    if (a.options.count("format") || a.options.count("method"))
        throw usage_error("--format and --method choose what --out writes; to measure, give --formats and --methods");

    std::vector<tinyllm::quant_spec> specs;
    for (const std::string& item : split_list(a.get("formats", "int8,int4-g128,int4-g64,int4-g32")))
        specs.push_back(parse_spec("formats", item));
    const std::vector<std::string> methods = split_list(a.get("methods", "rtn,gptq"));
    for (const std::string& method : methods) check_method(method);
    const tinyllm::token_file data(model_tokens_path(dir));
    const auto [val_begin, val_end] = validation_range(dir, data, T);
    const auto available = static_cast<index_t>((val_end - val_begin - 1) / static_cast<std::uint64_t>(T));
    if (available < 1) throw tinyllm::error("the validation split of '" + dir + "' holds no window of " +
                                            std::to_string(T + 1) + " tokens");
    const long long windows = a.get_int("windows", available);
    if (windows < 1 || windows > available)
        throw usage_error("--windows must be between 1 and " + std::to_string(available) + " (the split's windows of " +
                          std::to_string(T + 1) + " tokens)");
    std::optional<tinyllm::tensor<tinyllm::token_id, 2>> calibration;
    if (std::find(methods.begin(), methods.end(), "gptq") != methods.end()) calibration = calibration_of(dir);

    const tinyllm::cpu::model float_model = tinyllm::cpu::model::load(dir);
    if (data.vocab_size() > float_model.config().vocab_size)
        throw tinyllm::error("data.tokens' vocabulary (" + std::to_string(data.vocab_size()) +
                             ") is larger than the model's (" + std::to_string(float_model.config().vocab_size) + ")");
    out << "model " << dir << ": " << windows << " held-out windows of " << T << " tokens (tokens " << val_begin
        << " .. " << val_begin + static_cast<std::uint64_t>(windows * T) << " of data.tokens)";
    if (calibration)
        out << "; gptq calibrated on " << calibration->extent(0) << " windows of "
            << (a.options.count("calibration-text") ? a.get("calibration-text") : std::string("the training split"));
    out << "\n";
    char line[200];
    std::snprintf(line, sizeof line, "%-10s %-6s %8s %12s %10s %11s %9s %7s %7s\n", "weights", "method", "bits/w",
                  "bytes", "loss", "perplexity", "change", "quant", "eval");
    out << line;
    const auto timed_loss = [&](const tinyllm::cpu::model& m, double& seconds) {
        const auto t0 = std::chrono::steady_clock::now();
        const double loss = held_out_loss(m, data, val_begin, T, windows);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return loss;
    };
    double seconds = 0;
    const double base = timed_loss(float_model, seconds);
    const index_t float_bytes = float_model.weight_bytes();
    std::snprintf(line, sizeof line, "%-10s %-6s %8.2f %12lld %10.4f %11.3f %9s %7s %6.1fs\n", "float32", "", 32.0,
                  static_cast<long long>(float_bytes), base, std::exp(base), "", "", seconds);
    out << line << std::flush;
    for (const auto& spec : specs) {
        // A group size this model's shapes do not allow: say so, go on.
        if (const std::string why = tinyllm::quant_spec_mismatch(float_model.weights(), spec); !why.empty()) {
            out << spec.name() << ": skipped, " << why << "\n";
            continue;
        }
        for (const std::string& method : methods) {
            tinyllm::cpu::model m = float_model;
            const auto t0 = std::chrono::steady_clock::now();
            quantize(m, spec, method, calibration);
            const double quantize_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const tinyllm::quantization_summary s = tinyllm::quantization_of(m);
            const double loss = timed_loss(m, seconds);
            std::snprintf(line, sizeof line, "%-10s %-6s %8.2f %12lld %10.4f %11.3f %+8.2f%% %6.1fs %6.1fs\n",
                          spec.name().c_str(), method.c_str(), s.bits_per_weight(),
                          static_cast<long long>(m.weight_bytes()), loss, std::exp(loss),
                          100.0 * (std::exp(loss - base) - 1.0), quantize_seconds, seconds);
            out << line << std::flush;
        }
    }
    out << "(bytes: the quantized matrices in their format plus everything kept in float32; quant: the seconds\n"
           " quantizing took, eval: the seconds scoring the windows took)\n";

    // The KV cache in 8 bits, beside the float32 weights: the same windows, each
    // position's keys and values rounded as they are cached.
    using kv = tinyllm::cpu::model::kv_dtype;
    const auto per_position = [&](kv dtype) { return float_model.new_session(1, dtype).cache_bytes(); };
    std::snprintf(line, sizeof line, "\n%-18s %14s %10s %11s %9s %7s\n", "KV cache", "bytes/position", "loss",
                  "perplexity", "change", "eval");
    out << line;
    std::snprintf(line, sizeof line, "%-18s %14lld %10.4f %11.3f %9s %7s\n", "float32",
                  static_cast<long long>(per_position(kv::float32)), base, std::exp(base), "", "");
    out << line << std::flush;
    {
        const auto t0 = std::chrono::steady_clock::now();
        const double loss = held_out_loss(float_model, data, val_begin, T, windows, kv::int8);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::snprintf(line, sizeof line, "%-18s %14lld %10.4f %11.3f %+8.2f%% %6.1fs\n", "int8",
                      static_cast<long long>(per_position(kv::int8)), loss, std::exp(loss),
                      100.0 * (std::exp(loss - base) - 1.0), seconds);
        out << line;
    }
    out << "(bytes/position: every layer's keys and values of one position; int8 with one float scale per\n"
           " position and head)\n";
    return 0;
}
