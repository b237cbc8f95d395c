// examples/tinyllm/cmd_grads.cpp — `tinyllm grads`: the loss of a batch and
// the gradient of every parameter of a Hugging Face checkpoint, written under
// the checkpoint's own tensor names, for anyone checking tinyllm's backward
// pass against another framework (PyTorch autograd: tools/gen-hf-fixtures).
#include "gpu.hpp"
#include "registry.hpp"

#include <tinyllm/model.hpp>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_COMMAND("grads", "write the loss's gradient for every weight of a checkpoint (.safetensors)",
                "usage: tinyllm grads --model DIR --ids \"ID ...\" [--batch B] [--device cpu|cuda] [--aux | --aux-only]\n"
                "                     --out FILE.safetensors\n\n"
                "The ids are split into B rows of equal length (default 1). Position t of a row predicts\n"
                "token t+1 of the same row; the loss is the mean next-token cross-entropy over the\n"
                "B x (T-1) predictions, as transformers computes it with labels = input_ids. stdout: the\n"
                "loss whose gradient is written. FILE holds d loss / d parameter for every parameter,\n"
                "float32, named and shaped as in the checkpoint (GPT-2: a tied lm_head's gradient is\n"
                "part of wte's, which is not written twice).\n"
                "Mixtral: --aux adds router_aux_loss_coef x the load-balancing loss (transformers'\n"
                "load_balancing_loss_func, over every layer's router rows) to the loss; --aux-only\n"
                "writes the gradient of the load-balancing loss alone. The loss breakdown goes to stderr.\n"
                "--device: cpu (the CPU model, default) or cuda (tinyllm::cuda::model in float32;\n"
                "the gradients are downloaded from the GPU and written the same way).\n") {
    const auto a = parse_args(args, {"model", "ids", "batch", "device", "out"}, {"aux", "aux-only"});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    if (a.get("model").empty()) throw usage_error("--model DIR is required");
    if (a.get("ids").empty()) throw usage_error("--ids \"ID ...\" is required");
    if (a.get("out").empty()) throw usage_error("--out FILE.safetensors is required");
    require_output_folder("--out", a.get("out"));  // before the model loads and the gradients are computed
    const std::string device = a.get("device", "cpu");
    if (device != "cpu" && device != "cuda") throw usage_error("--device must be cpu or cuda, got '" + device + "'");
    if (a.has_flag("aux") && a.has_flag("aux-only")) throw usage_error("give at most one of --aux and --aux-only");
    const auto ids = parse_token_ids(a.get("ids"));
    const long long batch = a.get_int("batch", 1);
    if (batch < 1) throw usage_error("--batch must be at least 1");
    if (ids.size() % static_cast<std::size_t>(batch) != 0)
        throw usage_error("--batch " + std::to_string(batch) + " does not divide the " + std::to_string(ids.size()) +
                          " ids into rows of equal length");
    const tinyllm::index_t B = batch, T = static_cast<tinyllm::index_t>(ids.size()) / B;
    if (T < 2) throw usage_error("each row needs at least 2 tokens (one to predict the next)");

    require_checkpoint(a, "model");  // after the options, whose errors name them whatever the path
    const auto model = tinyllm::cpu::model::load(a.get("model"));
    const bool moe = model.config().arch == tinyllm::model_arch::mixtral;
    if ((a.has_flag("aux") || a.has_flag("aux-only")) && !moe)
        throw usage_error("--aux and --aux-only need a Mixtral checkpoint (a router to balance)");

    tinyllm::tensor<tinyllm::token_id, 2> tokens(tinyllm::extents<2>{B, T}), targets(tinyllm::extents<2>{B, T});
    for (tinyllm::index_t b = 0; b < B; ++b)
        for (tinyllm::index_t t = 0; t < T; ++t) {
            tokens(b, t) = ids[static_cast<std::size_t>(b * T + t)];
            targets(b, t) = t + 1 < T ? ids[static_cast<std::size_t>(b * T + t + 1)] : -100;  // -100: ignored
        }
    tinyllm::backward_options o;
    if (a.has_flag("aux")) o.aux_weight = model.config().router_aux_loss_coef;
    if (a.has_flag("aux-only")) o.lm_weight = 0, o.aux_weight = 1;
    tinyllm::model_weights grads = tinyllm::zeros_like(model.weights());
    const tinyllm::loss_terms loss = device == "cuda"
                                         ? gpu_forward_backward(model, grads, tokens.view(), targets.view(), o)
                                         : model.forward_backward(grads, tokens.view(), targets.view(), o);
    tinyllm::save_checkpoint_tensors(a.get("out"), tinyllm::checkpoint_tensors(model.config(), grads));

    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g\n", loss.total);
    out << buf;
    std::cerr << "lm loss " << loss.lm;
    if (moe) std::cerr << ", load-balancing loss " << loss.aux << " (weight " << o.aux_weight << ")";
    std::cerr << "; gradients of " << loss.total << " written to " << a.get("out") << "\n";
    return 0;
}
