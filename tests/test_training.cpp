// A whole model's backward pass (cpu::model::forward_backward) against PyTorch
// autograd: ../shared/fixtures/hf/{gpt2,llama,mixtral}/grads.json describes a
// batch and its loss, grads_lm.safetensors the gradient transformers computes
// for every parameter (and, for Mixtral, grads_aux.safetensors that of the
// load-balancing loss). The loss must agree to 1e-5 relative, every
// parameter's gradient to 1e-4 relative L2. Also: writing weights and
// gradients back under the checkpoint's names, and bad input.
#include "support/compare.hpp"
#include "support/fixtures.hpp"

#include <tinyllm/model.hpp>
#include <tinyllm/philox.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

using namespace tinyllm;
using tinyllm_test::fixture_dir;

namespace {

struct batch {
    tensor<token_id, 2> tokens, targets;  // (B, T); targets(b, t) = tokens(b, t + 1), the last -100
};

batch batch_of(const json::value& input_ids) {
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

// Every gradient tinyllm computed against the file PyTorch wrote, tensor by
// tensor under the checkpoint's names (the file is read as a checkpoint, so
// its layout — GPT-2's Conv1D, Mixtral's fused experts — is undone the same
// way as the weights').
void require_gradients_match(const model_config& config, const model_weights& got, const std::string& file) {
    model_weights expected = load_model_weights(config, safetensors_checkpoint(file));
    expected.layout = got.layout;  // PyTorch's names may be transformers 5's (fused experts), the checkpoint's older
    const auto got_tensors = checkpoint_tensors(config, got);
    const auto want_tensors = checkpoint_tensors(config, expected);
    REQUIRE(got_tensors.size() == want_tensors.size());
    double worst = 0;
    for (std::size_t i = 0; i < got_tensors.size(); ++i) {
        REQUIRE(got_tensors[i].name == want_tensors[i].name);
        const auto c = tinyllm_test::compare(got_tensors[i].values, want_tensors[i].values,
                                             tinyllm_test::tolerance{1e-6, 1.0, 1e-4}, got_tensors[i].name);
        worst = std::max(worst, c.rel_l2_error);
        INFO(c.report);
        CHECK(c.passed);
    }
    std::printf("  %s: %zu gradients, worst rel-L2 error %.3g (tolerance 1e-4)\n", file.c_str(), got_tensors.size(),
                worst);
}

}  // namespace

TEST_CASE("forward_backward: loss and every gradient equal PyTorch autograd", "[training][fixtures]") {
    // Both kernel sets: the blocked ones (the default: linear_gemm and the tiled attention
    // forward and backward) and the references.
    using kernels = cpu::model::kernels;
    for (const char* arch : {"gpt2", "llama", "mixtral"})
        for (const kernels choice : {kernels::blocked, kernels::reference}) {
            DYNAMIC_SECTION(arch << (choice == kernels::blocked ? " blocked" : " reference")) {
                const std::string dir = fixture_dir(arch);
                if (dir.empty() || !std::filesystem::exists(dir + "/grads.json")) {
                    WARN("skipped: ../shared/fixtures/hf/" << arch << "/grads.json is not here");
                    continue;
                }
                const json::value spec = detail::read_json_file(dir + "/grads.json");
                const batch data = batch_of(*spec.find("input_ids"));
                cpu::model m = cpu::model::load(dir);
                m.set_kernels(choice);
                model_weights grads = zeros_like(m.weights());
                const loss_terms loss = m.forward_backward(grads, data.tokens.view(), data.targets.view());
                const double want = spec.find("lm_loss")->as_double();
                std::printf("  %s: lm loss %.9g, PyTorch %.9g (relative difference %.2g)\n", arch, loss.lm, want,
                            std::abs(loss.lm - want) / want);
                CHECK(std::abs(loss.lm - want) <= 1e-5 * std::abs(want));
                CHECK(loss.total == loss.lm);
                require_gradients_match(m.config(), grads, dir + "/grads_lm.safetensors");

                if (std::string(arch) == "mixtral") {
                    backward_options aux_only;
                    aux_only.lm_weight = 0;
                    aux_only.aux_weight = 1;
                    const loss_terms aux = m.forward_backward(grads, data.tokens.view(), data.targets.view(), aux_only);
                    const double want_aux = spec.find("aux_loss")->as_double();
                    std::printf("  mixtral: load-balancing loss %.9g, PyTorch %.9g\n", aux.aux, want_aux);
                    CHECK(std::abs(aux.aux - want_aux) <= 1e-5 * std::abs(want_aux));
                    CHECK(aux.total == aux.aux);
                    require_gradients_match(m.config(), grads, dir + "/grads_aux.safetensors");
                }
            }
        }
}

TEST_CASE("forward_backward: the blocked kernels' loss and gradients equal the references'", "[training][blocked]") {
    // Random models of the three architectures, long enough rows (T = 70) that the tiled
    // attention runs several key blocks, its backward included; every gradient compared.
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        DYNAMIC_SECTION(static_cast<int>(arch)) {
            const model_config c =
                tinyllm_test::small_model_config(arch, 97, 48, 12, 80, 80, /*tied=*/arch != model_arch::llama);
            const std::uint64_t seed = tinyllm_test::test_seed();
            cpu::model blocked(c, random_model_weights(c, seed)), reference = blocked;
            reference.set_kernels(cpu::model::kernels::reference);
            const index_t B = 2, T = 70;
            tensor<token_id, 2> tokens(extents<2>{B, T}), targets(extents<2>{B, T});
            philox_generator g(seed, 3);
            for (index_t i = 0; i < B * T; ++i) {
                tokens.data()[i] = static_cast<token_id>(g.next_bits() % 97);
                targets.data()[i] = i % 11 == 0 ? -100 : static_cast<token_id>(g.next_bits() % 97);
            }
            backward_options o;
            o.aux_weight = arch == model_arch::mixtral ? 0.5 : 0.0;
            model_weights gb = zeros_like(blocked.weights()), gr = zeros_like(reference.weights());
            const loss_terms lb = blocked.forward_backward(gb, tokens.view(), targets.view(), o);
            const loss_terms lr = reference.forward_backward(gr, tokens.view(), targets.view(), o);
            std::printf("  arch %d: loss blocked %.9g, reference %.9g\n", static_cast<int>(arch), lb.total, lr.total);
            CHECK(std::abs(lb.total - lr.total) <= 1e-5 * std::abs(lr.total));
            const auto got = checkpoint_tensors(c, gb), want = checkpoint_tensors(c, gr);
            REQUIRE(got.size() == want.size());
            for (std::size_t i = 0; i < got.size(); ++i) {
                REQUIRE(got[i].name == want[i].name);
                const std::vector<double> w(want[i].values.begin(), want[i].values.end());
                TINYLLM_REQUIRE_CLOSE(got[i].values, w, tinyllm_test::tolerance{1e-6, 1e-3, 1e-4}, got[i].name);
            }
        }
    }
}

TEST_CASE("checkpoint_tensors: weights written under the checkpoint's names load back equal", "[training][fixtures]") {
    for (const char* arch : {"gpt2", "llama", "mixtral"}) {
        DYNAMIC_SECTION(arch) {
            const std::string dir = fixture_dir(arch);
            if (dir.empty()) {
                WARN("skipped: ../shared/fixtures/hf/" << arch << " is not here");
                continue;
            }
            const safetensors_checkpoint original(dir);
            const cpu::model m = cpu::model::load(dir);
            const auto tensors = checkpoint_tensors(m.config(), m.weights());
            // The same names as the checkpoint, each tensor bit for bit.
            std::map<std::string, std::vector<float>> written;
            for (const auto& t : tensors) written[t.name] = t.values;
            const auto names = original.names();
            CHECK(written.size() == names.size());
            for (const auto& name : names) {
                INFO(name);
                REQUIRE(written.count(name) == 1);
                CHECK(written[name] == to_float_vector(*original.find(name)));
            }
            // And through a file: save, load as a checkpoint, same weights.
            const auto path = std::filesystem::temp_directory_path() /
                              ("tinyllm_test_training_" + std::string(arch) + ".safetensors");
            save_checkpoint_tensors(path.string(), tensors);
            const model_weights back = load_model_weights(m.config(), safetensors_checkpoint(path.string()));
            CHECK(checkpoint_tensors(m.config(), back).size() == tensors.size());
            CHECK(back.embed.values() == m.weights().embed.values());
            CHECK(back.layers.back().wq.values() == m.weights().layers.back().wq.values());
            std::filesystem::remove(path);
        }
    }
}

TEST_CASE("forward_backward: a random model's gradients follow the loss (finite differences)", "[training]") {
    // Central differences through the whole float model, on a few weights of
    // each kind: d loss / d w ~ (loss(w + h) - loss(w - h)) / 2h. Float
    // rounding in the loss bounds the agreement; the weights are chosen among
    // the largest gradients so that the difference is far above that noise.
    for (const model_arch arch : {model_arch::gpt2, model_arch::llama, model_arch::mixtral}) {
        DYNAMIC_SECTION(static_cast<int>(arch)) {
            const model_config c =
                tinyllm_test::small_model_config(arch, 23, 16, 4, 24, 16, /*tied=*/arch == model_arch::gpt2);
            const std::uint64_t seed = tinyllm_test::test_seed();
            model_weights w = random_model_weights(c, seed);
            // Router logits spread wide, so that near-ties in the top-k (where the loss jumps) are rare.
            for (layer_weights& L : w.layers)
                for (float& x : L.router.values()) x *= 8.0f;
            const index_t B = 2, T = 5;
            tensor<token_id, 2> tokens(extents<2>{B, T}), targets(extents<2>{B, T});
            for (index_t i = 0; i < B * T; ++i) {
                tokens.data()[i] = static_cast<token_id>((seed >> (i % 50)) % 23);
                targets.data()[i] = i % T == T - 1 ? -100 : static_cast<token_id>((seed >> ((i + 7) % 50)) % 23);
            }
            backward_options o;
            o.aux_weight = arch == model_arch::mixtral ? 0.5 : 0.0;  // the aux gradient checked too
            const cpu::model m(c, w);
            model_weights grads = zeros_like(m.weights());
            m.forward_backward(grads, tokens.view(), targets.view(), o);
            // The largest-gradient element of a few tensors of each layer kind.
            auto probe = [&](auto member, const char* what) {
                tensor<float, 2>& weight = member(w);
                const tensor<float, 2>& grad = member(grads);
                std::size_t at = 0;
                for (std::size_t i = 0; i < grad.values().size(); ++i)
                    if (std::abs(grad.values()[i]) > std::abs(grad.values()[at])) at = i;
                const float saved = weight.values()[at];
                const auto loss_at = [&](float value) {
                    model_weights unused;
                    weight.values()[at] = value;
                    const double loss =
                        cpu::model(c, w).forward_backward(unused, tokens.view(), targets.view(), o).total;
                    weight.values()[at] = saved;
                    return loss;
                };
                const float h = 1e-2f;
                const double up = loss_at(saved + h), down = loss_at(saved - h);
                const double numeric = (up - down) / (2.0 * static_cast<double>(h)), analytic = grad.values()[at];
                // Central differences of a float loss at h = 1e-2 agree to ~1e-5 where the
                // loss is smooth; 1e-4 + 1e-3 |g| is ten times that and still catches a
                // gradient off by a few percent.
                const double tol = 1e-4 + 1e-3 * std::abs(analytic);
                std::printf("  arch %d %s: analytic %.6g, central difference %.6g\n", static_cast<int>(arch), what,
                            analytic, numeric);
                // A MoE's loss jumps, and its slope changes, where a perturbation changes
                // which experts a token picks; there the difference quotient means nothing.
                // Either shows as the two one-sided quotients disagreeing (a smooth loss
                // makes them differ by only h times its curvature). (Comparing the central
                // quotients at h and h / 2 missed a change of both jump and slope.)
                if (arch == model_arch::mixtral) {
                    const double here = loss_at(saved);
                    const double right = (up - here) / static_cast<double>(h),
                                 left = (here - down) / static_cast<double>(h);
                    if (std::abs(right - left) > 2e-3 + 2e-2 * std::abs(analytic)) {  // far more than curvature
                        WARN(what << ": the routing changes within the step (one-sided quotients " << left << " and "
                                  << right << "); no comparison");
                        return;
                    }
                }
                INFO(what << ": analytic " << analytic << ", numeric " << numeric);
                CHECK(std::abs(numeric - analytic) <= tol);
            };
            probe([](model_weights& x) -> tensor<float, 2>& { return x.embed; }, "embed");
            probe([](model_weights& x) -> tensor<float, 2>& { return x.layers[0].wq; }, "layers.0.wq");
            probe([](model_weights& x) -> tensor<float, 2>& { return x.layers[1].wv; }, "layers.1.wv");
            probe([](model_weights& x) -> tensor<float, 2>& { return x.layers[0].wo; }, "layers.0.wo");
            if (arch == model_arch::gpt2)
                probe([](model_weights& x) -> tensor<float, 2>& { return x.layers[1].fc; }, "layers.1.fc");
            if (arch == model_arch::llama)
                probe([](model_weights& x) -> tensor<float, 2>& { return x.layers[1].gate; }, "layers.1.gate");
            if (arch == model_arch::mixtral)
                probe([](model_weights& x) -> tensor<float, 2>& { return x.layers[0].router; }, "layers.0.router");
        }
    }
}

TEST_CASE("forward_backward: bad input is a clear error", "[training]") {
    model_config c = model_shapes::gpt2_124m();
    c.vocab_size = 11, c.hidden_size = 8, c.num_layers = 1, c.num_heads = c.num_kv_heads = 2, c.head_dim = 4;
    c.intermediate_size = 8, c.max_positions = 4;
    const cpu::model m(c, random_model_weights(c, 1));
    model_weights grads = zeros_like(m.weights());
    tensor<token_id, 2> tokens(extents<2>{1, 3}, 1), targets(extents<2>{1, 3}, 2), wrong(extents<2>{1, 2}, 2);
    CHECK_THROWS_WITH(m.forward_backward(grads, tokens.view(), wrong.view()),
                      Catch::Contains("targets has shape") && Catch::Contains("(B, T)"));
    tokens(0, 1) = 11;
    CHECK_THROWS_WITH(m.forward_backward(grads, tokens.view(), targets.view()),
                      Catch::Contains("token id 11 at (0, 1)") && Catch::Contains("vocabulary"));
    tokens(0, 1) = 1;
    targets(0, 2) = 12;
    CHECK_THROWS_WITH(m.forward_backward(grads, tokens.view(), targets.view()),
                      Catch::Contains("target") && Catch::Contains("12"));
    targets(0, 2) = 2;
    backward_options negative;
    negative.lm_weight = -1;
    CHECK_THROWS_WITH(m.forward_backward(grads, tokens.view(), targets.view(), negative),
                      Catch::Contains("lm_weight = -1"));
    tensor<token_id, 2> too_long(extents<2>{1, 5}, 1);
    CHECK_THROWS_WITH(m.forward_backward(grads, too_long.view(), too_long.view()),
                      Catch::Contains("exceed GPT-2's 4 learned positions"));
}
