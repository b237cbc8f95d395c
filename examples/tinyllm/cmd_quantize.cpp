// examples/tinyllm/cmd_quantize.cpp — `tinyllm quantize`: what weight
// quantization costs a trained model in quality. The held-out loss and
// perplexity of the float model, then of the same model with its matrices
// rounded to each format (tinyllm/quantize_model.hpp), over the same windows.
#include "model_data.hpp"
#include "registry.hpp"

#include <tinyllm/data.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/quantize_model.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

// Mean next-token loss over `windows` consecutive windows of T + 1 tokens from `begin`.
double held_out_loss(const tinyllm::cpu::model& m, const tinyllm::token_file& data, std::uint64_t begin, index_t T,
                     index_t windows) {
    std::vector<tinyllm::token_id> tokens(static_cast<std::size_t>(T)), targets(static_cast<std::size_t>(T));
    double sum = 0;
    for (index_t w = 0; w < windows; ++w) {
        const std::uint64_t start = begin + static_cast<std::uint64_t>(w * T);
        for (index_t t = 0; t < T; ++t) {
            tokens[static_cast<std::size_t>(t)] = data[start + static_cast<std::uint64_t>(t)];
            targets[static_cast<std::size_t>(t)] = data[start + static_cast<std::uint64_t>(t) + 1];
        }
        auto session = m.new_session(T);
        const auto logits = m.forward(session, tokens);
        sum += tinyllm::cpu::cross_entropy(tinyllm::tensor_view<float, 2>(), logits.view(),
                                      tinyllm::tensor_view<const tinyllm::token_id, 1>(targets.data(), {T}));
    }
    return sum / static_cast<double>(windows);
}

}  // namespace

TINYLLM_COMMAND("quantize", "measure what int8/int4 weights cost a trained model: held-out loss and perplexity",
                "usage: tinyllm quantize --model DIR [--formats LIST] [--context T] [--windows N]\n\n"
                "DIR is a model `tinyllm train` wrote (it holds data.tokens, the tokenized corpus). The\n"
                "float model and, for each format of LIST (default int8,int4-g128,int4-g64,int4-g32),\n"
                "the same model with every matrix of its layers rounded to the format (round to nearest;\n"
                "the embedding, a tied output projection, norms, biases and a router stay float: see\n"
                "tinyllm/quantize_model.hpp) are scored on the same held-out windows: N consecutive\n"
                "windows of T + 1 tokens from the start of the validation split training used (default\n"
                "T = 128, N = as many as the split holds). Printed: the bits per quantized weight, the\n"
                "weights' bytes, the mean next-token loss, the perplexity and its change.\n"
                "(`tinyllm generate --dtype int8|int4-gG` runs a model on its quantized weights.)\n") {
    const auto a = parse_args(args, {"model", "formats", "context", "windows"}, {});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    const std::string dir = a.get("model");
    if (dir.empty()) throw usage_error("--model DIR is required");
    std::vector<tinyllm::quant_spec> specs;
    {
        std::stringstream list(a.get("formats", "int8,int4-g128,int4-g64,int4-g32"));
        for (std::string item; std::getline(list, item, ',');) {
            try {
                specs.push_back(tinyllm::parse_quant_spec(item));
            } catch (const tinyllm::error& e) {
                throw usage_error(std::string("--formats: ") + e.what());
            }
        }
    }
    const long long context = a.get_int("context", 128);
    if (context < 1) throw usage_error("--context must be at least 1");
    const index_t T = context;
    const tinyllm::token_file data(model_tokens_path(dir));
    const auto [val_begin, val_end] = validation_range(dir, data, T);
    const auto available = static_cast<index_t>((val_end - val_begin - 1) / static_cast<std::uint64_t>(T));
    if (available < 1) throw tinyllm::error("the validation split of '" + dir + "' holds no window of " +
                                            std::to_string(T + 1) + " tokens");
    const long long windows = a.get_int("windows", available);
    if (windows < 1 || windows > available)
        throw usage_error("--windows must be between 1 and " + std::to_string(available) + " (the split's windows of " +
                          std::to_string(T + 1) + " tokens)");

    const tinyllm::cpu::model float_model = tinyllm::cpu::model::load(dir);
    if (data.vocab_size() > float_model.config().vocab_size)
        throw tinyllm::error("data.tokens' vocabulary (" + std::to_string(data.vocab_size()) +
                             ") is larger than the model's (" + std::to_string(float_model.config().vocab_size) + ")");
    out << "model " << dir << ": " << windows << " held-out windows of " << T << " tokens (tokens " << val_begin
        << " .. " << val_begin + static_cast<std::uint64_t>(windows * T) << " of data.tokens)\n";
    char line[200];
    std::snprintf(line, sizeof line, "%-10s %8s %12s %10s %11s %9s %7s\n", "weights", "bits/w", "bytes", "loss",
                  "perplexity", "change", "time");
    out << line;
    const auto timed_loss = [&](const tinyllm::cpu::model& m, double& seconds) {
        const auto t0 = std::chrono::steady_clock::now();
        const double loss = held_out_loss(m, data, val_begin, T, windows);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return loss;
    };
    double seconds = 0;
    const double base = timed_loss(float_model, seconds);
    const index_t float_bytes = tinyllm::float32_bytes(float_model.weights());
    std::snprintf(line, sizeof line, "%-10s %8.2f %12lld %10.4f %11.3f %9s %6.1fs\n", "float32", 32.0,
                  static_cast<long long>(float_bytes), base, std::exp(base), "", seconds);
    out << line << std::flush;
    for (const auto& spec : specs) {
        // A group size this model's shapes do not allow: say so, go on.
        if (const std::string why = tinyllm::quant_spec_mismatch(float_model.weights(), spec); !why.empty()) {
            out << spec.name() << ": skipped, " << why << "\n";
            continue;
        }
        tinyllm::model_weights w = float_model.weights();
        const tinyllm::quantization_summary s = tinyllm::round_model_weights(w, spec);
        const tinyllm::cpu::model m(float_model.config(), std::move(w));
        const double loss = timed_loss(m, seconds);
        std::snprintf(line, sizeof line, "%-10s %8.2f %12lld %10.4f %11.3f %+8.2f%% %6.1fs\n", spec.name().c_str(),
                      s.bits_per_weight(), static_cast<long long>(s.quantized_bytes + s.float_bytes_kept), loss,
                      std::exp(loss), 100.0 * (std::exp(loss - base) - 1.0), seconds);
        out << line << std::flush;
    }
    out << "(bytes: the quantized matrices in their format plus everything kept in float32)\n";
    return 0;
}
