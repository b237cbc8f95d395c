// CUDA tests for cuda::model<float>::forward_backward (tinyllm/cuda/model.cuh):
// a whole training step's forward and backward on the GPU.
//
//   * the HF fixtures (../shared/fixtures/hf/{gpt2,llama,mixtral}, skipped
//     cleanly when absent): the batch of grads.json; the LM loss within 1e-5
//     relative of transformers' lm_loss; every parameter's gradient, compared
//     tensor by tensor under the checkpoint's names, within 1e-4 relative L2 of
//     PyTorch autograd's (grads_lm.safetensors) and of cpu::model's; for
//     Mixtral also the load-balancing loss alone (lm_weight 0, aux_weight 1)
//     against aux_loss and grads_aux.safetensors;
//   * small random models of each architecture (GQA, untied head for Llama,
//     a Mixtral with the aux loss weighted in, a batch of two rows with an
//     ignored target), GPU against cpu::model::forward_backward;
//   * the same step twice gives the same bits (no float atomics);
//   * a bfloat16 model refuses to train, clearly;
//   * a training run (cpu::trainer, <tinyllm/train.hpp>) whose gradients come
//     from the GPU, as `tinyllm train --device cuda` runs it, takes the CPU
//     run's steps: every step's loss within 1e-5 relative and the weights after
//     the last within 1e-4 relative L2, tensor by tensor.
// Every gradient comes back freshly downloaded into a CPU model_weights that
// the test first fills with NaN, so nothing stale can pass; NaN never passes.
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"

#include <tinyllm/cuda/model.cuh>
#include <tinyllm/model.hpp>
#include <tinyllm/train.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
// Names one by one: `using namespace tinyllm` would make `cuda` ambiguous in nvcc's
// generated code (tinyllm::cuda against libcu++'s ::cuda).
using tinyllm::backward_options;
using tinyllm::bfloat16;
using tinyllm::checkpoint_layout;
using tinyllm::checkpoint_tensors;
using tinyllm::extents;
using tinyllm::index_t;
using tinyllm::layer_weights;
using tinyllm::load_model_weights;
using tinyllm::loss_terms;
using tinyllm::model_arch;
using tinyllm::model_config;
using tinyllm::model_weights;
using tinyllm::random_model_weights;
using tinyllm::rope_pairing;
using tinyllm::safetensors_checkpoint;
using tinyllm::tensor;
using tinyllm::token_id;
using tinyllm::zeros_like;
using tinyllm_test::fixture_dir;
using tinyllm_test::tolerance;

namespace {

struct batch {
    tensor<token_id, 2> tokens, targets;  // (B, T); targets(b, t) = tokens(b, t + 1), the last -100
};

batch batch_of(const tinyllm::json::value& input_ids) {
    const auto& rows = input_ids.as_array();
    const index_t B = static_cast<index_t>(rows.size()), T = static_cast<index_t>(rows.front().as_array().size());
    batch out{tensor<token_id, 2>(extents<2>{B, T}), tensor<token_id, 2>(extents<2>{B, T})};
    for (index_t b = 0; b < B; ++b) {
        const auto ids = tinyllm_test::ids_of(rows[static_cast<std::size_t>(b)]);
        REQUIRE(static_cast<index_t>(ids.size()) == T);
        for (index_t t = 0; t < T; ++t) {
            out.tokens(b, t) = ids[static_cast<std::size_t>(t)];
            out.targets(b, t) = t + 1 < T ? ids[static_cast<std::size_t>(t + 1)] : -100;
        }
    }
    return out;
}

// A gradient buffer full of NaN: whatever forward_backward leaves unwritten fails.
model_weights poisoned_like(const model_weights& w) {
    model_weights g = zeros_like(w);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    auto fill = [&](auto& t) { std::fill(t.values().begin(), t.values().end(), nan); };
    fill(g.embed);
    fill(g.positions);
    fill(g.final_norm_weight);
    fill(g.final_norm_bias);
    fill(g.lm_head);
    for (layer_weights& L : g.layers) {
        for (auto* t : {&L.attn_norm_weight, &L.attn_norm_bias, &L.ffn_norm_weight, &L.ffn_norm_bias, &L.bq, &L.bk,
                        &L.bv, &L.bo, &L.fc_bias, &L.proj_bias})
            fill(*t);
        for (auto* t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.fc, &L.proj, &L.gate, &L.up, &L.down, &L.router}) fill(*t);
        for (auto* t : {&L.w1, &L.w3, &L.w2}) fill(*t);
    }
    return g;
}

// Every tensor of `got` against `want`, under the checkpoint's names; returns the worst rel-L2.
double require_gradients_close(const model_config& config, const model_weights& got, const model_weights& want,
                               const std::string& what, double rel_l2 = 1e-4) {
    const auto got_tensors = checkpoint_tensors(config, got);
    const auto want_tensors = checkpoint_tensors(config, want);
    REQUIRE(got_tensors.size() == want_tensors.size());
    double worst = 0, worst_abs = 0;
    for (std::size_t i = 0; i < got_tensors.size(); ++i) {
        REQUIRE(got_tensors[i].name == want_tensors[i].name);
        const auto c = tinyllm_test::compare(got_tensors[i].values, want_tensors[i].values,
                                             tolerance{1e-6, 1.0, rel_l2}, what + " " + got_tensors[i].name);
        worst = std::max(worst, c.rel_l2_error);
        worst_abs = std::max(worst_abs, c.max_abs_error);
        INFO(c.report);
        CHECK(c.passed);
    }
    std::printf("  %s: %zu gradients, worst max-abs %.3g, worst rel-L2 %.3g (tolerance %.0e)\n", what.c_str(),
                got_tensors.size(), worst_abs, worst, rel_l2);
    return worst;
}

// The gradients PyTorch wrote to `file`, read as a checkpoint in `layout`.
model_weights pytorch_gradients(const model_config& config, const std::string& file, const checkpoint_layout& layout) {
    model_weights w = load_model_weights(config, safetensors_checkpoint(file));
    w.layout = layout;  // PyTorch's names may be transformers 5's (fused experts), the checkpoint's older
    return w;
}

}  // namespace

TEST_CASE("cuda forward_backward: loss and every gradient equal PyTorch autograd and the CPU",
          "[cuda][training][fixtures]") {
    for (const char* arch : {"gpt2", "llama", "mixtral"}) {
        DYNAMIC_SECTION(arch) {
            const std::string dir = fixture_dir(arch);
            if (dir.empty() || !std::filesystem::exists(dir + "/grads.json")) {
                WARN("skipped: ../shared/fixtures/hf/" << arch << "/grads.json is not here");
                continue;
            }
            const tinyllm::json::value spec = tinyllm::detail::read_json_file(dir + "/grads.json");
            const batch data = batch_of(*spec.find("input_ids"));
            const cpu::model host = cpu::model::load(dir);
            const tc::model<float> m(host);

            model_weights grads = poisoned_like(host.weights()), cpu_grads = zeros_like(host.weights());
            const loss_terms loss = m.forward_backward(grads, data.tokens.view(), data.targets.view());
            host.forward_backward(cpu_grads, data.tokens.view(), data.targets.view());
            const double want = spec.find("lm_loss")->as_double();
            std::printf("  %s: cuda lm loss %.9g, PyTorch %.9g (relative difference %.2g)\n", arch, loss.lm, want,
                        std::abs(loss.lm - want) / want);
            CHECK(std::abs(loss.lm - want) <= 1e-5 * std::abs(want));
            CHECK(loss.total == loss.lm);
            CHECK(grads.layout.gpt2_prefix == host.weights().layout.gpt2_prefix);
            CHECK(grads.layout.fused_experts == host.weights().layout.fused_experts);
            require_gradients_close(host.config(), grads,
                                    pytorch_gradients(host.config(), dir + "/grads_lm.safetensors", grads.layout),
                                    std::string(arch) + " cuda vs PyTorch");
            require_gradients_close(host.config(), grads, cpu_grads, std::string(arch) + " cuda vs CPU");

            if (std::string(arch) == "mixtral") {
                backward_options aux_only;
                aux_only.lm_weight = 0;
                aux_only.aux_weight = 1;
                grads = poisoned_like(host.weights());
                const loss_terms aux = m.forward_backward(grads, data.tokens.view(), data.targets.view(), aux_only);
                host.forward_backward(cpu_grads, data.tokens.view(), data.targets.view(), aux_only);
                const double want_aux = spec.find("aux_loss")->as_double();
                std::printf("  mixtral: cuda load-balancing loss %.9g, PyTorch %.9g\n", aux.aux, want_aux);
                CHECK(std::abs(aux.aux - want_aux) <= 1e-5 * std::abs(want_aux));
                CHECK(aux.total == aux.aux);
                require_gradients_close(host.config(), grads,
                                        pytorch_gradients(host.config(), dir + "/grads_aux.safetensors", grads.layout),
                                        "mixtral aux cuda vs PyTorch");
                require_gradients_close(host.config(), grads, cpu_grads, "mixtral aux cuda vs CPU");
            }
        }
    }
}

TEST_CASE("cuda forward_backward: random models equal cpu::model::forward_backward", "[cuda][training]") {
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        DYNAMIC_SECTION(static_cast<int>(arch)) {
            const model_config c =
                tinyllm_test::small_model_config(arch, 37, 24, 6, 20, 16, /*tied=*/arch == model_arch::gpt2);
            const std::uint64_t seed = tinyllm_test::test_seed();
            model_weights w = random_model_weights(c, seed);
            for (layer_weights& L : w.layers)  // router logits spread wide: no near-ties in the top-k
                for (float& x : L.router.values()) x *= 8.0f;
            const index_t B = 2, T = 7;
            tensor<token_id, 2> tokens(extents<2>{B, T}), targets(extents<2>{B, T});
            for (index_t i = 0; i < B * T; ++i) {
                tokens.data()[i] = static_cast<token_id>((seed >> (i % 50)) % 37);
                targets.data()[i] = i % T == T - 1 ? -100 : static_cast<token_id>((seed >> ((i + 7) % 50)) % 37);
            }
            backward_options o;
            o.lm_weight = 0.75;
            o.aux_weight = arch == model_arch::mixtral ? 0.5 : 0.0;
            const cpu::model host(c, w);
            const tc::model<float> m(c, w);
            model_weights grads = poisoned_like(host.weights()), cpu_grads = zeros_like(host.weights());
            const loss_terms got = m.forward_backward(grads, tokens.view(), targets.view(), o);
            const loss_terms want = host.forward_backward(cpu_grads, tokens.view(), targets.view(), o);
            std::printf("  random %d: cuda loss lm %.9g aux %.9g, CPU lm %.9g aux %.9g\n", static_cast<int>(arch),
                        got.lm, got.aux, want.lm, want.aux);
            CHECK(std::abs(got.lm - want.lm) <= 1e-5 * std::abs(want.lm));
            CHECK(std::abs(got.aux - want.aux) <= 1e-5 * std::abs(want.aux));
            CHECK(std::abs(got.total - want.total) <= 1e-5 * std::abs(want.total));
            require_gradients_close(c, grads, cpu_grads, "random cuda vs CPU");
            // Deterministic: no float atomics anywhere, so a second step gives the same bits.
            model_weights again;
            const loss_terms repeat = m.forward_backward(again, tokens.view(), targets.view(), o);
            CHECK(repeat.total == got.total);
            const auto first = checkpoint_tensors(c, grads), second = checkpoint_tensors(c, again);
            REQUIRE(first.size() == second.size());
            for (std::size_t i = 0; i < first.size(); ++i) {
                INFO(first[i].name);
                CHECK(first[i].values == second[i].values);
            }
        }
    }
}

TEST_CASE("cuda forward_backward: bfloat16 and bad input fail clearly", "[cuda][training]") {
    model_config c;
    c.arch = model_arch::llama;
    c.vocab_size = 11;
    c.hidden_size = 8;
    c.num_layers = 1;
    c.num_heads = 2;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.intermediate_size = 8;
    c.max_positions = 8;
    c.rope.rotary_dim = 4;
    const model_weights w = random_model_weights(c, 7);
    tensor<token_id, 2> tokens(extents<2>{1, 3}, 1), targets(extents<2>{1, 3}, 2);
    model_weights grads;
    const tc::model<bfloat16> half(c, w);
    REQUIRE_THROWS_WITH(half.forward_backward(grads, tokens.view(), targets.view()),
                        Catch::Contains("training runs in float only"));
    const tc::model<float> m(c, w);
    tokens(0, 1) = 11;
    REQUIRE_THROWS_WITH(m.forward_backward(grads, tokens.view(), targets.view()),
                        Catch::Contains("outside the vocabulary"));
    tensor<token_id, 2> short_targets(extents<2>{1, 2}, 2);
    tokens(0, 1) = 1;
    REQUIRE_THROWS_WITH(m.forward_backward(grads, tokens.view(), short_targets.view()),
                        Catch::Contains("must be equal"));
}

TEST_CASE("cuda training: a run on the GPU's gradients takes the CPU run's steps", "[cuda][training]") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("tinyllm_cuda_train_" + std::to_string(tinyllm_test::test_seed()));
    fs::create_directories(dir);
    // A corpus with structure: a counting pattern with a random skip now and then.
    std::vector<token_id> ids(3000);
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 0);
    for (std::size_t i = 1; i < ids.size(); ++i)
        ids[i] = static_cast<token_id>((ids[i - 1] + 1 + (g.next_bits() % 8 == 0 ? 3 : 0)) % 37);
    const std::string path = (dir / "data.tokens").string();
    tinyllm::write_token_file(path, ids, 1, 37);
    const tinyllm::token_file data(path);
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        DYNAMIC_SECTION(static_cast<int>(arch)) {
            const model_config c = tinyllm_test::small_model_config(arch, 37, 24, 6, 20, 16, /*tied=*/true);
            tinyllm::train_options o;
            o.batch = 3;
            o.context = 12;
            o.steps = 5;
            o.lr = 3e-3;
            o.warmup = 1;
            o.seed = tinyllm_test::test_seed();
            o.aux_weight = arch == model_arch::mixtral ? 0.01 : 0.0;
            const auto splits = tinyllm::split_tokens(data.size(), o.context, 0.1);
            const model_weights w = tinyllm::init_weights(c, o.seed);
            cpu::trainer on_cpu(cpu::model(c, w), data, splits, o);
            cpu::trainer on_gpu(cpu::model(c, w), data, splits, o,
                                [](const cpu::model& m, model_weights& grads, auto tokens, auto targets,
                                   const backward_options& bo) {
                                    return tc::model<float>(m).forward_backward(grads, tokens, targets, bo);
                                });
            for (int s = 0; s < o.steps; ++s) {
                const auto want = on_cpu.step(), got = on_gpu.step();
                std::printf("  train %d step %d: cuda loss %.9g, CPU %.9g\n", static_cast<int>(arch), s, got.loss,
                            want.loss);
                CHECK(std::isfinite(got.loss));
                CHECK(std::abs(got.loss - want.loss) <= 1e-5 * std::abs(want.loss));
            }
            tinyllm::detail::for_each_weight(on_gpu.model().weights(), on_cpu.model().weights(),
                                             [&](const std::string& name, const auto& x, const auto& y) {
                                                 if (y.size() == 0) return;
                                                 const auto cmp = tinyllm_test::compare(
                                                     std::span<const float>(x.values().data(), x.values().size()),
                                                     std::span<const float>(y.values().data(), y.values().size()),
                                                     tolerance{1e30, 0.0, 1e-4}, name);
                                                 INFO(cmp.report);
                                                 CHECK(cmp.passed);
                                             });
        }
    }
    fs::remove_all(dir);
}
