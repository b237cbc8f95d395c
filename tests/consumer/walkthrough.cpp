// The worked program of docs/api.md: tinyllm's CPU API as a research program uses it.
//
//   walkthrough SHARED_DIR OUT_DIR
//
// SHARED_DIR holds data/tokenizers/cl100k_base.tiktoken and fixtures/hf/llama (a tiny
// random-init Llama checkpoint in Hugging Face's layout). Every input and result is saved
// to OUT_DIR as a .npy file; tests/consumer/walkthrough.py recomputes each step with
// PyTorch from those files and compares. Each block between "// ---- step" lines appears
// verbatim in docs/api.md (tools/check-api-doc checks it). Exits with 77 when SHARED_DIR
// lacks the files (CTest's "skipped").
#include <tinyllm/tinyllm.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
    if (argc != 3) {
        std::fprintf(stderr, "usage: walkthrough SHARED_DIR OUT_DIR\n");
        return 2;
    }
    const std::string shared = argv[1], out_dir = argv[2];
    const std::string rank_file = shared + "/data/tokenizers/cl100k_base.tiktoken";
    const std::string checkpoint = shared + "/fixtures/hf/llama";
    if (!std::filesystem::exists(rank_file) || !std::filesystem::exists(checkpoint + "/config.json")) {
        std::fprintf(stderr, "walkthrough: %s lacks the cl100k rank file or the Llama fixture; skipped\n",
                     shared.c_str());
        return 77;
    }
    std::filesystem::create_directories(out_dir);
    auto path = [&](const std::string& name) { return out_dir + "/" + name + ".npy"; };

    // ---- step 1: tokenize
    const tinyllm::tokenizer tok = tinyllm::load_tiktoken_encoding("cl100k_base", rank_file);
    const std::vector<tinyllm::token_id> ids = tok.encode("The tiger jumped out of a tree to get a drink.");
    const std::string text = tok.decode(ids);  // the same sentence again
    // ---- end

    // ---- step 2: tensors, random fills and .npy files
    const tinyllm::index_t B = 2, T = 8, D = 64, Hq = 4, Hkv = 2, Dh = 16;
    tinyllm::tensor<float, 3> x({B, T, D});  // (B, T, D): a batch of activations
    tinyllm::cpu::fill_normal(x, /*seed=*/1);
    tinyllm::save_npy(path("x"), x);
    const auto x_again = tinyllm::load_npy<float, 3>(path("x"));  // the same values, bit for bit
    // ---- end
    if (x_again.values() != x.values()) throw tinyllm::error("walkthrough: x.npy did not read back as written");

    // ---- step 3: linear projections of (B, T, D) activations
    tinyllm::tensor<float, 2> wq({Hq * Dh, D}), wk({Hkv * Dh, D}), wv({Hkv * Dh, D});  // (out, in), as nn.Linear
    tinyllm::cpu::fill_normal(wq, 2, 0.0f, 0.125f);
    tinyllm::cpu::fill_normal(wk, 3, 0.0f, 0.125f);
    tinyllm::cpu::fill_normal(wv, 4, 0.0f, 0.125f);
    tinyllm::tensor<float, 3> q3({B, T, Hq * Dh}), k3({B, T, Hkv * Dh}), v3({B, T, Hkv * Dh});
    tinyllm::cpu::linear(q3, x, wq, {});  // q3 = x wq^T, no bias
    tinyllm::cpu::linear(k3, x, wk, {});
    tinyllm::cpu::linear(v3, x, wv, {});
    auto q = tinyllm::reshape(q3, {B, T, Hq, Dh});  // (B, T, Hq, Dh): a view, no copy
    auto k = tinyllm::reshape(k3, {B, T, Hkv, Dh});
    auto v = tinyllm::reshape(v3, {B, T, Hkv, Dh});
    // ---- end

    // ---- step 4: RoPE with Llama 3's frequency scaling
    tinyllm::rope_config rope;  // rotary_dim 0: the whole head dimension
    rope.theta = 500000.0;
    rope.scaling = tinyllm::rope_scaling::llama3;
    rope.factor = 8.0;
    rope.low_freq_factor = 1.0;
    rope.high_freq_factor = 4.0;
    rope.original_max_position_embeddings = 8192;
    tinyllm::cpu::apply_rope(q, k, rope);  // in place; positions 0 .. T-1 in every row
    // ---- end
    tinyllm::save_npy(path("wq"), wq);
    tinyllm::save_npy(path("wk"), wk);
    tinyllm::save_npy(path("wv"), wv);
    tinyllm::save_npy(path("q_rope"), q);
    tinyllm::save_npy(path("k_rope"), k);

    // ---- step 5: causal grouped-query attention with a sliding window
    tinyllm::attention_options opts;
    opts.causal = true;
    opts.window = 4;  // each query sees itself and the 3 keys before it
    tinyllm::tensor<float, 4> attn({B, T, Hq, Dh});  // 4 query heads share 2 key/value heads
    tinyllm::cpu::attention(attn.view(), q, k, v, opts);
    // ---- end
    tinyllm::save_npy(path("v"), v);
    tinyllm::save_npy(path("attn"), attn);

    // ---- step 6: RMSNorm and a SwiGLU MLP on (B, T, D)
    const tinyllm::index_t Hmlp = 128;
    tinyllm::tensor<float, 1> norm_weight({D});
    tinyllm::tensor<float, 2> gate({Hmlp, D}), up({Hmlp, D}), down({D, Hmlp});
    tinyllm::cpu::fill_uniform(norm_weight, 5, 0.5f, 1.5f);
    tinyllm::cpu::fill_normal(gate, 6, 0.0f, 0.125f);
    tinyllm::cpu::fill_normal(up, 7, 0.0f, 0.125f);
    tinyllm::cpu::fill_normal(down, 8, 0.0f, 0.09f);
    tinyllm::tensor<float, 3> h({B, T, D}), y({B, T, D});
    tinyllm::cpu::rms_norm(h, x, norm_weight, 1e-5f);
    const tinyllm::swiglu_mlp_weights<float> mlp{gate, up, down};  // views of the three matrices
    tinyllm::cpu::swiglu_mlp(y, h, mlp);  // y = (silu(h gate^T) * (h up^T)) down^T
    // ---- end
    tinyllm::save_npy(path("norm_weight"), norm_weight);
    tinyllm::save_npy(path("gate"), gate);
    tinyllm::save_npy(path("up"), up);
    tinyllm::save_npy(path("down"), down);
    tinyllm::save_npy(path("h"), h);
    tinyllm::save_npy(path("y"), y);

    // ---- step 7: a sampling chain and a seeded draw
    const tinyllm::index_t V = 1000;
    tinyllm::tensor<float, 2> logits({B, V});  // (B, V)
    tinyllm::cpu::fill_normal(logits, 9, 0.0f, 3.0f);
    tinyllm::save_npy(path("logits"), logits);
    const tinyllm::sampling::chain chain{tinyllm::sampling::temperature{0.8f}, tinyllm::sampling::top_k{50},
                                         tinyllm::sampling::top_p{0.9f}};
    tinyllm::cpu::apply(logits, chain);  // filtered tokens become -inf
    tinyllm::tensor<tinyllm::token_id, 1> next({B});
    tinyllm::cpu::sample(next, logits, /*seed=*/42, /*step=*/0);
    // ---- end
    tinyllm::save_npy(path("logits_filtered"), logits);
    tinyllm::save_npy(path("next"), next);

    // ---- step 8: mixture-of-experts routing
    const tinyllm::index_t E = 8, top = 2;
    tinyllm::tensor<float, 2> router({E, D});
    tinyllm::cpu::fill_normal(router, 10, 0.0f, 0.125f);
    tinyllm::tensor<float, 3> router_logits({B, T, E});
    tinyllm::cpu::linear(router_logits, h, router, {});
    tinyllm::tensor<std::int32_t, 2> experts({B * T, top});  // (tokens, k): best first
    tinyllm::tensor<float, 2> expert_weights({B * T, top});
    tinyllm::cpu::softmax_topk_gating(experts, expert_weights, tinyllm::reshape(router_logits, {B * T, E}),
                                      /*renormalize=*/true);
    // ---- end
    tinyllm::save_npy(path("router"), router);
    tinyllm::save_npy(path("experts"), experts);
    tinyllm::save_npy(path("expert_weights"), expert_weights);

    // ---- step 9: a Hugging Face checkpoint
    const tinyllm::cpu::model model = tinyllm::cpu::model::load(checkpoint);  // config.json + model.safetensors
    std::vector<tinyllm::token_id> prompt = ids;
    for (auto& id : prompt) id %= static_cast<tinyllm::token_id>(model.config().vocab_size);  // a tiny vocabulary
    auto session = model.new_session(/*capacity=*/64);
    const tinyllm::tensor<float, 2> prompt_logits = model.forward(session, prompt);  // (n, V)
    // ---- end
    tinyllm::save_npy(path("ids"), tinyllm::tensor_view<const tinyllm::token_id, 1>(
                                       ids.data(), {static_cast<tinyllm::index_t>(ids.size())}));
    tinyllm::save_npy(path("prompt_logits"), prompt_logits);

    std::printf("walkthrough: %zu tokens (\"%s\"), attention %s, MLP %s, next tokens %d %d, experts of token 0: %d %d,"
                " checkpoint logits %s; results in %s\n",
                ids.size(), text.c_str(), tinyllm::to_string(attn.shape()).c_str(),
                tinyllm::to_string(y.shape()).c_str(), static_cast<int>(next(0)), static_cast<int>(next(1)),
                static_cast<int>(experts(0, 0)), static_cast<int>(experts(0, 1)),
                tinyllm::to_string(prompt_logits.shape()).c_str(), out_dir.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "walkthrough: %s\n", e.what());
    return 1;
}
