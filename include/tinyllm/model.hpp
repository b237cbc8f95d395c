// tinyllm/model.hpp — a decoder-only transformer built from tinyllm's parts,
// loading real Hugging Face checkpoints (config.json + model.safetensors).
//
// The forward pass reads as the diagram of the transformer:
//
//     x = embed(tokens) (+ learned positions, GPT-2)                    (T, D)
//     for each layer:
//         h = norm1(x)                      LayerNorm (GPT-2) / RMSNorm (Llama, Mixtral)
//         q, k, v = h Wq, h Wk, h Wv        (T, Hq, Dh), (T, Hkv, Dh), (T, Hkv, Dh)
//         q, k = rope(q, k, positions)      Llama, Mixtral (GPT-2 has learned positions instead)
//         cache.append(k, v)                the KV cache keeps every past key and value
//         x = x + attention(q, cache) Wo    causal: token t sees positions <= t
//         h = norm2(x)
//         x = x + ffn(h)                    GPT-2 MLP (gelu_new) / SwiGLU (Llama) / MoE of SwiGLU experts (Mixtral)
//     logits = norm_f(x) W_lm^T             (T, V); GPT-2 ties W_lm to the embedding table
//
// Generation feeds the prompt once (prefill: every prompt position in one
// forward, filling the cache) and then one token at a time (decode: a single
// query attends over the cache), choosing each token with the samplers of
// <tinyllm/sampling.hpp>. On the CPU it runs one of two sets of kernels
// (model::kernels): the blocked float rung of docs/cpu.md by default — the
// linear layers through cpu::linear_gemm (<tinyllm/gemm.hpp>: packed blocks,
// SIMD, threads, OpenBLAS when built with it) and attention through
// cpu::attention_tiled (<tinyllm/attention_tiled.hpp>: online softmax over key
// blocks) — or the component references of include/tinyllm/, which define what
// the blocked kernels compute and are what the tests compare them with.
//
// What a model is made of lives beside this file: model_config.hpp reads
// config.json into a model_config, model_weights.hpp reads and writes the
// weights of a checkpoint (and draws random ones). This file is the model:
// cpu::model (the forward pass, its sessions and KV caches, training's
// forward_backward) and generation.
//
// Supported architectures (config.json "architectures"):
//
// | architecture        | positions        | norm      | attention | FFN                       | lm_head          |
// |---------------------|------------------|-----------|-----------|---------------------------|------------------|
// | GPT2LMHeadModel     | learned (wpe)    | LayerNorm | MHA, bias | gelu_new MLP, bias        | tied to wte      |
// | LlamaForCausalLM    | RoPE, rotate-half| RMSNorm   | GQA       | SwiGLU                    | separate or tied |
// | MixtralForCausalLM  | RoPE, rotate-half| RMSNorm   | GQA       | top-k MoE of SwiGLU experts| separate        |
#pragma once

#include <tinyllm/activation.hpp>
#include <tinyllm/attention.hpp>
#include <tinyllm/attention_tiled.hpp>
#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/kv_cache_int8.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/model_config.hpp>
#include <tinyllm/model_weights.hpp>
#include <tinyllm/moe.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/optimizer.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/safetensors.hpp>
#include <tinyllm/sampling.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/vectorized.hpp>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace tinyllm {

// ---- training: what forward_backward computes -------------------------------------

// The losses of one batch. The gradients forward_backward writes are those of `total`.
struct loss_terms {
    double lm = 0;       // mean next-token cross-entropy over the targets that are not ignore_index
    double aux = 0;      // Mixtral: the load-balancing loss as transformers defines it; 0 otherwise
    double distill = 0;  // with teacher logits: tau^2 KL(teacher || student) at temperature tau, mean over positions
    double total = 0;    // lm_weight * lm + aux_weight * aux + distill_weight * distill
};

struct backward_options {
    double lm_weight = 1.0;       // 0: only the auxiliary loss (tinyllm grads --aux-only)
    double aux_weight = 0.0;      // Mixtral: router_aux_loss_coef (0.001 in the fixtures), as transformers' training loss
    cross_entropy_options loss;   // ignore_index (-100), label smoothing
    // Distillation (cpu::distillation_loss in <tinyllm/loss.hpp>): a teacher's logits for
    // the same positions, (B * T, V) in the tokens' row order, or empty (none).
    tensor_view<const float, 2> teacher_logits;
    double distill_weight = 0.0;
    double distill_temperature = 1.0;
};

namespace detail {

// Calls f(name, a's tensor, b's tensor) for every weight tensor of two models
// of the same layout (a model and its gradients, or a model twice), in a fixed
// order, under tinyllm's names ("embed_tokens", "layers.0.wq", ...). A and B
// are model_weights, const or not; tensors of a kind the architecture lacks
// are empty and visited all the same.
template <class A, class B, class F>
void for_each_weight(A& a, B& b, F&& f) {
    f(std::string("embed_tokens"), a.embed, b.embed);
    f(std::string("embed_positions"), a.positions, b.positions);
    TINYLLM_EXPECT(a.layers.size() == b.layers.size(), "model weights: ", a.layers.size(), " layers against ",
                   b.layers.size(), " (gradients are made with zeros_like)");
    for (std::size_t l = 0; l < a.layers.size(); ++l) {
        auto& L = a.layers[l];
        auto& G = b.layers[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        f(p + "attn_norm.weight", L.attn_norm_weight, G.attn_norm_weight);
        f(p + "attn_norm.bias", L.attn_norm_bias, G.attn_norm_bias);
        f(p + "wq", L.wq, G.wq), f(p + "wk", L.wk, G.wk), f(p + "wv", L.wv, G.wv), f(p + "wo", L.wo, G.wo);
        f(p + "bq", L.bq, G.bq), f(p + "bk", L.bk, G.bk), f(p + "bv", L.bv, G.bv), f(p + "bo", L.bo, G.bo);
        f(p + "ffn_norm.weight", L.ffn_norm_weight, G.ffn_norm_weight);
        f(p + "ffn_norm.bias", L.ffn_norm_bias, G.ffn_norm_bias);
        f(p + "fc", L.fc, G.fc), f(p + "fc_bias", L.fc_bias, G.fc_bias);
        f(p + "proj", L.proj, G.proj), f(p + "proj_bias", L.proj_bias, G.proj_bias);
        f(p + "gate", L.gate, G.gate), f(p + "up", L.up, G.up), f(p + "down", L.down, G.down);
        f(p + "router", L.router, G.router);
        f(p + "experts.w1", L.w1, G.w1), f(p + "experts.w3", L.w3, G.w3), f(p + "experts.w2", L.w2, G.w2);
    }
    f(std::string("final_norm.weight"), a.final_norm_weight, b.final_norm_weight);
    f(std::string("final_norm.bias"), a.final_norm_bias, b.final_norm_bias);
    f(std::string("lm_head"), a.lm_head, b.lm_head);
}

}  // namespace detail

// Zero tensors of the shapes of `w` (empty where `w` is empty): a gradient buffer.
inline model_weights zeros_like(const model_weights& w) {
    model_weights g = w;
    detail::for_each_weight(g, g, [](const std::string&, auto& t, auto&) {
        std::fill(t.values().begin(), t.values().end(), 0.0f);
    });
    return g;
}

// The optimizer's view of a model: one named_parameter (<tinyllm/optimizer.hpp>)
// per weight tensor, pairing it with the tensor of the same place in `grads`
// (zeros_like(w), filled by forward_backward). Names are tinyllm's layout's
// ("layers.0.wq", "embed_tokens", "embed_positions", ...), so the default
// decay rule leaves the embeddings, norms and biases undecayed.
inline std::vector<named_parameter<float>> model_parameters(model_weights& w, model_weights& grads) {
    TINYLLM_EXPECT(grads.layers.size() == w.layers.size() && grads.embed.shape() == w.embed.shape(),
                   "model_parameters: grads does not have the weights' layout (make it with zeros_like)");
    std::vector<named_parameter<float>> out;
    detail::for_each_weight(w, grads, [&](const std::string& name, auto& value, auto& grad) {
        if (value.size() != 0) out.push_back(make_parameter(name, value, grad));
    });
    return out;
}

namespace cpu {

// A decoder-only model on the CPU: float32, bfloat16 (set_weight_dtype) or
// quantized (quantize_weights, load) matrices, run by the blocked kernels by
// default or by the component references (set_kernels).
class model {
public:
    model(model_config config, model_weights weights) : config_(std::move(config)), w_(std::move(weights)) {
        TINYLLM_EXPECT(static_cast<index_t>(w_.layers.size()) == config_.num_layers, "model: ", w_.layers.size(),
                       " layers of weights for a config with ", config_.num_layers);
    }

    // How the CPU holds the weight matrices: float32 (as loaded), or bfloat16
    // (layer_weights_bf16), which halves the bytes every decoded token reads —
    // batch-1 decoding is bound by them. set_weight_dtype(bfloat16) rounds each
    // matrix to nearest even and frees its float copy (a bf16 checkpoint, widened
    // exactly when loaded, comes back bit for bit); set_weight_dtype(float32)
    // widens them back, exactly. The blocked kernels read bf16 weights widened to
    // float, accumulating in float (cpu::linear_gemm's bf16 form); the reference
    // kernels and forward_backward need float32 weights and say so. While the
    // matrices are bf16, weights() holds them empty (its norms, biases, GPT-2's
    // positions and Mixtral's routers stay) and weights_bf16() holds them.
    enum class weight_dtype { float32, bfloat16 };
    void set_weight_dtype(weight_dtype d) {
        if (d == dtype_) return;
        TINYLLM_EXPECT(!quantized_, "model::set_weight_dtype: the matrices are quantized (", quant_spec_.name(),
                       "); load the model again for float weights");
        if (d == weight_dtype::bfloat16) {
            w16_.layers.resize(w_.layers.size());
            detail::for_each_matrix(w_, w16_, [](auto& f32, auto& b16) { detail::convert_releasing(b16, f32); });
        } else {
            detail::for_each_matrix(w_, w16_, [](auto& f32, auto& b16) { detail::convert_releasing(f32, b16); });
            w16_ = model_weights_bf16();
        }
        dtype_ = d;
    }
    weight_dtype weights_dtype() const { return dtype_; }
    const model_weights_bf16& weights_bf16() const { return w16_; }

    // Hold the matrices a decoded token reads whole — each layer's Wq, Wk, Wv,
    // Wo and MLP matrices (Mixtral: each expert's w1, w3 and w2, one quantized
    // matrix per expert), and an untied output projection — quantized to
    // `spec` by round to nearest (tinyllm/quantize.hpp), freeing their float
    // copies; the embedding (with a tied head), norms, biases, GPT-2's
    // positions and Mixtral's routers stay float. The same matrices as
    // round_model_weights (tinyllm/quantize_model.hpp) rounds, so the model
    // computes what a model of those rounded weights computes, on
    // cpu::linear_quantized_fused. For float32 models on the blocked kernels;
    // inference only: forward_backward and the reference kernels refuse a
    // quantized model. There is no way back: load the model again for float weights.
    void quantize_weights(const quant_spec& spec) {
        expect_quantizable_model(spec, "model::quantize_weights");
        wq_.assign(w_.layers.size(), layer_weights_quantized{});
        if (w_.lm_head.size()) head_q_ = quantize_rtn(w_.lm_head.view(), spec);
        for (std::size_t l = 0; l < w_.layers.size(); ++l) {
            for (const auto& [name, member, dense] : detail::layer_matrix_members)
                if (const tensor<float, 2>& m = w_.layers[l].*dense; m.size())
                    wq_[l].*member = quantize_rtn(m.view(), spec);
            for (const auto& [name, member, dense] : detail::layer_expert_members) {
                const tensor<float, 3>& experts = w_.layers[l].*dense;  // (E, rows, cols)
                for (index_t e = 0; e < (experts.size() ? experts.extent(0) : 0); ++e)
                    (wq_[l].*member).push_back(quantize_rtn(experts.view().slice(0, e), spec));
            }
        }
        finish_quantization(spec, "rtn");
    }

    // The same matrices quantized by GPTQ (quantize_gptq, tinyllm/quantize.hpp)
    // instead of round to nearest, calibrated on this model's own activations:
    // `calibration` holds M windows of T tokens (M, T) — text like the text the
    // model will see, not the held-out text it is measured on. As in the GPTQ
    // paper's implementation, the layers are quantized in order and each layer's
    // inputs are those of the model whose earlier layers are already quantized,
    // so a layer also corrects what the rounding before it changed: for layer l,
    // the windows are run through the model (layers < l quantized, l and above
    // float) and H = 2 X^T X / M is gathered for each input of the layer — one
    // for Wq, Wk and Wv (they read the same normed input), one for Wo, one for the
    // MLP's first matrices (fc, or gate and up), one for its last (proj, down) —
    // then its matrices are quantized; an untied output projection last, on the
    // final norm's output. L + 1 passes over the windows (L when tied).
    // Mixtral's experts get a Hessian each, over the tokens routed to them: for
    // expert e, H_e = 2 X_e^T X_e / M_e with X_e the normed hidden states of the
    // M_e (token, slot) rows whose top-k holds e (w1's and w3's input, D x D), and
    // another over those rows' SwiGLU output (w2's input, F x F). An expert no
    // calibration token reached has no statistics to weigh its errors by: it is
    // quantized by round to nearest instead. The router stays float.
    void quantize_weights_gptq(const quant_spec& spec, tensor_view<const token_id, 2> calibration,
                               const gptq_options& options = {}) {
        const char* op = "model::quantize_weights_gptq";
        expect_quantizable_model(spec, op);
        const index_t M = calibration.extent(0), T = calibration.extent(1);
        TINYLLM_EXPECT(M >= 1 && T >= 1, op, ": the calibration windows are ", M, " x ", T, "; GPTQ needs tokens");
        for (index_t m = 0; m < M; ++m)
            for (index_t t = 0; t < T; ++t)
                TINYLLM_EXPECT(calibration(m, t) >= 0 && calibration(m, t) < config_.vocab_size, op,
                               ": calibration token (", m, ", ", t, ") = ", calibration(m, t),
                               " is outside the vocabulary [0, ", config_.vocab_size, ")");
        TINYLLM_EXPECT(kernels_ == kernels::blocked, op, ": runs its calibration on the blocked kernels "
                       "(set_kernels(kernels::blocked))");
        // Run every window through the model; `observe` sees each projection's input,
        // `observe_experts` (if given) each expert's.
        const auto run_windows = [&](const linear_observer& observe, const expert_observer* observe_experts = nullptr) {
            observe_linear_ = &observe;
            observe_expert_ = observe_experts;
            try {
                for (index_t m = 0; m < M; ++m) {
                    session s = new_session(T);
                    std::vector<token_id> window(static_cast<std::size_t>(T));
                    for (index_t t = 0; t < T; ++t) window[static_cast<std::size_t>(t)] = calibration(m, t);
                    forward_positions(s, window, {}, false);
                }
            } catch (...) {
                observe_linear_ = nullptr;
                observe_expert_ = nullptr;
                throw;
            }
            observe_linear_ = nullptr;
            observe_expert_ = nullptr;
        };
        // While it runs, the layers already quantized compute with their quantized
        // matrices (project prefers them) and the rest with float ones.
        wq_.assign(w_.layers.size(), layer_weights_quantized{});
        quantized_ = true;
        try {
            for (std::size_t l = 0; l < w_.layers.size(); ++l) {
                const layer_weights& L = w_.layers[l];
                // Which Hessian each matrix of the layer is quantized with.
                const auto input_of = [&](std::string_view name) -> int {
                    if (name == "wq" || name == "wk" || name == "wv") return 0;
                    if (name == "wo") return 1;
                    if (name == "fc" || name == "gate" || name == "up") return 2;
                    return 3;  // proj, down
                };
                // Input i's Hessian, gathered where the first matrix reading it (`reader[i]`) meets it.
                std::array<std::optional<gptq_hessian>, 4> h;
                std::array<const tensor<float, 2>*, 4> reader{};
                for (const auto& [name, member, dense] : detail::layer_matrix_members) {
                    const tensor<float, 2>& m = L.*dense;
                    const auto i = static_cast<std::size_t>(input_of(name));
                    if (m.size() && !reader[i]) h[i].emplace(m.extent(1)), reader[i] = &m;
                }
                // Mixtral: expert e's two Hessians, over the rows routed to it —
                // h_in[e] (D x D) for w1 and w3, h_hidden[e] (F x F) for w2.
                const index_t E = L.w1.size() ? L.w1.extent(0) : 0;
                std::vector<gptq_hessian> h_in, h_hidden;
                for (index_t e = 0; e < E; ++e) h_in.emplace_back(L.w1.extent(2)), h_hidden.emplace_back(L.w2.extent(2));
                const expert_observer see_experts = [&](const tensor<float, 3>& weight, index_t e,
                                                        tensor_view<const float, 2> x) {
                    if (&weight == &L.w1) h_in[static_cast<std::size_t>(e)].add(x);
                    else if (&weight == &L.w2) h_hidden[static_cast<std::size_t>(e)].add(x);
                };
                run_windows(
                    [&](const tensor<float, 2>& weight, tensor_view<const float, 2> x) {
                        for (std::size_t i = 0; i < reader.size(); ++i)
                            if (reader[i] == &weight) h[i]->add(x);
                    },
                    E ? &see_experts : nullptr);
                for (const auto& [name, member, dense] : detail::layer_matrix_members)
                    if (const tensor<float, 2>& m = L.*dense; m.size())
                        wq_[l].*member = quantize_gptq(m.view(), *h[static_cast<std::size_t>(input_of(name))], spec,
                                                       options);
                for (const auto& [name, member, dense] : detail::layer_expert_members) {
                    const std::vector<gptq_hessian>& he = std::string_view(name) == "w2" ? h_hidden : h_in;
                    for (index_t e = 0; e < E; ++e) {
                        const auto m = (L.*dense).view().slice(0, e);  // (rows, cols)
                        const gptq_hessian& H = he[static_cast<std::size_t>(e)];
                        // No calibration row reached expert e: round to nearest.
                        (wq_[l].*member).push_back(H.rows() > 0 ? quantize_gptq(m, H, spec, options)
                                                                : quantize_rtn(m, spec));
                    }
                }
            }
            if (w_.lm_head.size()) {
                gptq_hessian h(w_.lm_head.extent(1));
                run_windows([&](const tensor<float, 2>& weight, tensor_view<const float, 2> x) {
                    if (&weight == &w_.lm_head) h.add(x);
                });
                head_q_ = quantize_gptq(w_.lm_head.view(), h, spec, options);
            }
        } catch (...) {
            // Back to the float model it was.
            wq_.clear();
            head_q_ = quantized_matrix();
            quantized_ = false;
            throw;
        }
        finish_quantization(spec, "gptq");
    }

    // Whether (and how) the matrices are quantized.
    bool quantized() const { return quantized_; }
    const quant_spec& quantization() const { return quant_spec_; }
    // The quantized matrices (empty unless quantized()): each layer's, and an
    // untied output projection's (rows 0 when tied).
    const std::vector<layer_weights_quantized>& weights_quantized() const { return wq_; }
    const quantized_matrix& head_quantized() const { return head_q_; }
    // Bytes of the weights as held: float32 and bfloat16 tensors, quantized matrices in their format.
    index_t weight_bytes() const {
        index_t bytes = 0;
        const auto add_float = [&](const auto& t) { bytes += static_cast<index_t>(sizeof(float)) * t.size(); };
        const auto add_bf16 = [&](const auto& t) { bytes += static_cast<index_t>(sizeof(bfloat16)) * t.size(); };
        add_float(w_.embed), add_float(w_.positions), add_float(w_.lm_head);
        add_float(w_.final_norm_weight), add_float(w_.final_norm_bias);
        add_bf16(w16_.embed), add_bf16(w16_.lm_head);
        bytes += head_q_.bytes();
        for (const layer_weights& L : w_.layers) {
            for (const auto* t : {&L.attn_norm_weight, &L.attn_norm_bias, &L.ffn_norm_weight, &L.ffn_norm_bias, &L.bq,
                                  &L.bk, &L.bv, &L.bo, &L.fc_bias, &L.proj_bias})
                add_float(*t);
            for (const auto* t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.fc, &L.proj, &L.gate, &L.up, &L.down, &L.router})
                add_float(*t);
            add_float(L.w1), add_float(L.w3), add_float(L.w2);
        }
        for (const layer_weights_bf16& L : w16_.layers) {
            for (const auto* t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.fc, &L.proj, &L.gate, &L.up, &L.down}) add_bf16(*t);
            add_bf16(L.w1), add_bf16(L.w3), add_bf16(L.w2);
        }
        for (const layer_weights_quantized& Q : wq_) {
            for (const auto* q : {&Q.wq, &Q.wk, &Q.wv, &Q.wo, &Q.fc, &Q.proj, &Q.gate, &Q.up, &Q.down})
                bytes += q->bytes();
            for (const auto* experts : {&Q.w1, &Q.w3, &Q.w2})
                for (const quantized_matrix& q : *experts) bytes += q.bytes();
        }
        return bytes;
    }

    // Load DIR/config.json and DIR/model.safetensors (or its shards); the
    // matrices then held in `dtype` (see set_weight_dtype).
    static model load(const std::string& dir, weight_dtype dtype = weight_dtype::float32) {
        model_config c = load_model_config(dir);
        const safetensors_checkpoint ck(dir);
        if (c.quantization) {
            // A quantized checkpoint (save_quantized_model): the matrices load as stored.
            TINYLLM_EXPECT(dtype == weight_dtype::float32, "model::load: '", dir, "' holds its matrices quantized (",
                           c.quantization->name(), "); they load as they are, not as bfloat16");
            quantized_model_weights q = load_quantized_model_weights(c, ck, dir);
            const quant_spec spec = *c.quantization;
            model m(std::move(c), std::move(q.floats));
            m.wq_ = std::move(q.layers);
            m.head_q_ = std::move(q.lm_head);
            m.quantized_ = true;
            m.quant_spec_ = spec;
            return m;
        }
        model_weights w = load_model_weights(c, ck);
        model m(std::move(c), std::move(w));
        m.set_weight_dtype(dtype);
        return m;
    }

    // The CPU kernels the forward pass runs: `blocked` (the default: float
    // accumulation, cache-blocked and threaded) or `reference` (the readable
    // definitions, accumulating in double, one thread).
    enum class kernels { blocked, reference };
    void set_kernels(kernels k) { kernels_ = k; }
    kernels kernel_choice() const { return kernels_; }

    const model_config& config() const { return config_; }
    const model_weights& weights() const { return w_; }
    model_weights& weights() { return w_; }  // training updates them in place (float32 only)

    // How a session keeps its keys and values: float32 (kv_cache), or int8 with
    // a scale per position and head (kv_cache_int8, tinyllm/kv_cache_int8.hpp;
    // about 3.6-3.8x less memory, attention over the rounded keys and values).
    enum class kv_dtype { float32, int8 };

    // One sequence's state: a KV cache per layer and the number of positions
    // fed. Its keys and values are in one of three places: contiguous float32
    // caches, contiguous int8 caches, or blocks of a shared pool through a block
    // table (a paged session, tinyllm/paged_kv.hpp; move-only, it returns its
    // blocks to the pool when it ends).
    struct session {
        std::vector<kv_cache<float>> caches;       // a float32 session's, one per layer
        std::vector<kv_cache_int8> caches_int8;    // an int8 session's, one per layer
        kv_block_table paged;                      // a paged session's blocks (float32), all layers
        index_t length = 0;
        index_t max_length = 0;                    // a paged session's limit (GPT-2: its learned positions)

        kv_dtype dtype() const { return caches_int8.empty() ? kv_dtype::float32 : kv_dtype::int8; }
        bool is_paged() const { return paged.pool() != nullptr; }
        index_t capacity() const {
            return is_paged() ? max_length
                              : !caches.empty() ? caches.front().capacity()
                                                : !caches_int8.empty() ? caches_int8.front().capacity() : 0;
        }
        // Bytes the caches hold: contiguous ones for their whole capacity, a
        // paged session for the blocks its table holds (shared ones included).
        index_t cache_bytes() const {
            index_t bytes = 0;
            for (const kv_cache<float>& c : caches)
                bytes += 2 * c.batch() * c.capacity() * c.kv_heads() * c.head_dim() *
                         static_cast<index_t>(sizeof(float));
            for (const kv_cache_int8& c : caches_int8) bytes += c.bytes();
            if (is_paged()) bytes += static_cast<index_t>(paged.blocks().size()) * paged.pool()->block_bytes();
            return bytes;
        }
    };

    session new_session(index_t capacity, kv_dtype kv = kv_dtype::float32) const {
        TINYLLM_EXPECT(capacity >= 1, "model::new_session: capacity = ", capacity, " must be at least 1");
        if (config_.arch == model_arch::gpt2)
            TINYLLM_EXPECT(capacity <= config_.max_positions, "model::new_session: capacity ", capacity,
                           " exceeds GPT-2's ", config_.max_positions, " learned positions");
        // RoPE models may run past max_position_embeddings (it is informational),
        // so their bound is the cache's size: its float32 keys and values for every
        // layer, at most 2^40 bytes (1 TiB), computed without overflow.
        TINYLLM_EXPECT(
            detail::nonzero_product_at_most(index_t{1} << 40, {capacity, config_.num_layers, 2, config_.num_kv_heads,
                                                               config_.head_dim, static_cast<index_t>(sizeof(float))}),
            "model::new_session: capacity ", capacity, " needs a KV cache of more than 2^40 bytes (",
            config_.num_layers, " layers of ", config_.num_kv_heads, " KV heads of ", config_.head_dim,
            " floats, keys and values)");
        session s;
        for (index_t l = 0; l < config_.num_layers; ++l) {
            if (kv == kv_dtype::int8) s.caches_int8.emplace_back(1, capacity, config_.num_kv_heads, config_.head_dim);
            else s.caches.emplace_back(1, capacity, config_.num_kv_heads, config_.head_dim);
        }
        return s;
    }

    // A paged session: its keys and values go to blocks of `pool`, taken as it
    // grows (tinyllm/paged_kv.hpp). The pool must have this model's layers, KV
    // heads and head dim; it must outlive the session.
    session new_session(kv_block_pool& pool) const {
        TINYLLM_EXPECT(pool.layers() == config_.num_layers && pool.kv_heads() == config_.num_kv_heads &&
                           pool.head_dim() == config_.head_dim,
                       "model::new_session: the block pool has ", pool.layers(), " layers of ", pool.kv_heads(),
                       " KV heads of ", pool.head_dim(), "; the model has ", config_.num_layers, " of ",
                       config_.num_kv_heads, " of ", config_.head_dim);
        session s;
        s.paged = kv_block_table(pool);
        s.max_length =
            config_.arch == model_arch::gpt2 ? config_.max_positions : std::numeric_limits<std::int32_t>::max();
        return s;
    }
    // A paged session continuing `prefix`, a table holding the first positions
    // of a sequence (prefix_cache::match's, tinyllm/prefix_cache.hpp): the next
    // forward feeds position prefix.length().
    session new_session(kv_block_table prefix) const {
        TINYLLM_EXPECT(prefix.pool() != nullptr, "model::new_session: the block table has no pool");
        session s = new_session(*prefix.pool());
        s.length = prefix.length();
        s.paged = std::move(prefix);
        return s;
    }
    // A paged session holding the same positions as `s` (its blocks shared,
    // copied on write): what two continuations of one prefix start from.
    session fork(const session& s) const {
        TINYLLM_EXPECT(s.is_paged(), "model::fork: only a paged session's blocks can be shared");
        return new_session(s.paged.fork());
    }

    // Roll a session back to its first `length` positions (the caches keep
    // their storage): a later forward continues from position `length`.
    void truncate(session& s, index_t length) const {
        TINYLLM_EXPECT(length >= 0 && length <= s.length, "model::truncate: length ", length, " is outside [0, ",
                       s.length, "]");
        for (kv_cache<float>& c : s.caches) c.truncate(length);
        for (kv_cache_int8& c : s.caches_int8) c.truncate(length);
        if (s.is_paged()) s.paged.truncate(length);
        s.length = length;
    }

    // Called once per layer with that layer's attention probabilities,
    // (1, Hq, n, length + n): row i is fed position i, column j a cached position.
    using attention_observer = std::function<void(index_t layer, tensor_view<const float, 4> probs)>;

    // Feed `tokens` after what the session already holds; returns the logits of
    // each fed position, (n, V). A prompt is fed at once (prefill), then one
    // token per call (decode). `observe`, if set, sees every layer's attention.
    tensor<float, 2> forward(session& s, std::span<const token_id> tokens,
                             const attention_observer& observe = {}) const {
        return forward_positions(s, tokens, observe, false);
    }

    // forward, returning only the last fed position's logits, (1, V): what
    // generation needs. For a prompt of n tokens the output projection, the
    // largest product (V x D per position), runs on one row instead of n.
    tensor<float, 2> forward_last(session& s, std::span<const token_id> tokens) const {
        return forward_positions(s, tokens, {}, true);
    }

    // One step of several paged sessions at once, what continuous batching runs
    // (tinyllm/batching.hpp): session i is fed tokens[i] — a chunk of its prompt
    // or its one newest token. Every matrix product runs once over all the new
    // rows of all the sessions stacked, (sum of n_i, D): that is where batching's
    // speed comes from, since the weights are read once per step instead of once
    // per sequence. Positions, RoPE, the cache writes and attention are each
    // sequence's own (attention through its block table). Returns the logits of
    // each session's last fed position, (S, V). The blocks every session needs
    // are checked first; a pool too small is an error before anything changes.
    tensor<float, 2> forward_batch(std::span<session* const> sessions,
                                   std::span<const std::span<const token_id>> tokens) const {
        const model_config& c = config_;
        const char* op = "model::forward_batch";
        const index_t S = static_cast<index_t>(sessions.size()), D = c.hidden_size, Dh = c.head_dim;
        const index_t Hq = c.num_heads, Hkv = c.num_kv_heads;
        TINYLLM_EXPECT(S >= 1 && static_cast<index_t>(tokens.size()) == S, op, ": ", S, " sessions and ",
                       tokens.size(), " token lists");
        std::vector<index_t> first(static_cast<std::size_t>(S) + 1, 0);  // session i's rows: [first[i], first[i+1])
        index_t blocks_needed = 0;
        const kv_block_pool* pool = nullptr;
        for (index_t i = 0; i < S; ++i) {
            const session& s = *sessions[static_cast<std::size_t>(i)];
            const std::span<const token_id> t = tokens[static_cast<std::size_t>(i)];
            const index_t n = static_cast<index_t>(t.size());
            TINYLLM_EXPECT(s.is_paged(), op, ": session ", i, " is not paged (new_session(pool))");
            TINYLLM_EXPECT(!pool || s.paged.pool() == pool, op, ": session ", i, "'s blocks are in another pool");
            pool = s.paged.pool();
            for (index_t j = 0; j < i; ++j)
                TINYLLM_EXPECT(sessions[static_cast<std::size_t>(j)] != &s, op, ": session ", i, " is also session ",
                               j);
            TINYLLM_EXPECT(n >= 1, op, ": no tokens for session ", i);
            TINYLLM_EXPECT(s.length + n <= s.capacity(), op, ": session ", i, ": ", s.length, " + ", n,
                           " positions exceed its capacity ", s.capacity());
            for (const token_id id : t)
                TINYLLM_EXPECT(id >= 0 && id < c.vocab_size, op, ": session ", i, ": token id ", id,
                               " is outside the vocabulary [0, ", c.vocab_size, ")");
            blocks_needed += s.paged.blocks_needed(n);
            first[static_cast<std::size_t>(i) + 1] = first[static_cast<std::size_t>(i)] + n;
        }
        TINYLLM_EXPECT(blocks_needed <= pool->free_blocks(), op, ": the step needs ", blocks_needed,
                       " free blocks; the pool has ", pool->free_blocks(), " of ", pool->blocks());
        for (index_t i = 0; i < S; ++i) sessions[static_cast<std::size_t>(i)]->paged.reserve(
                                            static_cast<index_t>(tokens[static_cast<std::size_t>(i)].size()));
        const bool bf16 = dtype_ == weight_dtype::bfloat16;
        TINYLLM_EXPECT((!bf16 && !quantized_) || kernels_ == kernels::blocked, op,
                       ": the reference kernels need float32 weights");
        const index_t N = first.back();
        const auto rows_of = [&](index_t i) { return first[static_cast<std::size_t>(i)]; };
        const auto count_of = [&](index_t i) {
            return first[static_cast<std::size_t>(i) + 1] - first[static_cast<std::size_t>(i)];
        };

        // x = embed(tokens) (+ positions), every session's rows stacked          (N, D)
        tensor<float, 2> x(extents<2>{N, D});
        for (index_t i = 0; i < S; ++i) {
            const session& s = *sessions[static_cast<std::size_t>(i)];
            const std::span<const token_id> t = tokens[static_cast<std::size_t>(i)];
            for (index_t r = 0; r < count_of(i); ++r)
                for (index_t j = 0; j < D; ++j)
                    x(rows_of(i) + r, j) = bf16 ? bf16_to_float(w16_.embed(t[static_cast<std::size_t>(r)], j))
                                                : w_.embed(t[static_cast<std::size_t>(r)], j);
            if (c.arch == model_arch::gpt2) {
                tensor<std::int64_t, 2> positions(extents<2>{1, count_of(i)});
                for (index_t r = 0; r < count_of(i); ++r) positions(0, r) = s.length + r;
                add_learned_positions(tensor_view<float, 3>(x.data() + rows_of(i) * D, {1, count_of(i), D}),
                                      w_.positions.view(), positions.view());
            }
        }
        tensor<float, 2> h(extents<2>{N, D}), delta(extents<2>{N, D});                // (N, D)
        tensor<float, 2> q(extents<2>{N, Hq * Dh}), k(extents<2>{N, Hkv * Dh}), v(extents<2>{N, Hkv * Dh});
        tensor<float, 2> attn(extents<2>{N, Hq * Dh});
        attention_options opts;
        opts.causal = true;
        for (index_t l = 0; l < c.num_layers; ++l) {
            const layer_weights& L = w_.layers[static_cast<std::size_t>(l)];
            const layer_weights_bf16& L16 = bf16 ? w16_.layers[static_cast<std::size_t>(l)] : no_bf16_layer_;
            const layer_weights_quantized& LQ = quantized_ ? wq_[static_cast<std::size_t>(l)] : no_quantized_layer_;
            attention_inputs(q.view(), k.view(), v.view(), h.view(), x.view(), L, L16, LQ);
            for (index_t i = 0; i < S; ++i) {
                session& s = *sessions[static_cast<std::size_t>(i)];
                const index_t n = count_of(i), r0 = rows_of(i);
                tensor_view<float, 4> qi(q.data() + r0 * Hq * Dh, {1, n, Hq, Dh});   // (1, n_i, Hq, Dh)
                tensor_view<float, 4> ki(k.data() + r0 * Hkv * Dh, {1, n, Hkv, Dh});
                if (c.arch != model_arch::gpt2) apply_rope(qi, ki, c.rope, s.length);
                s.paged.write(l, s.length, tensor_view<const float, 3>(k.data() + r0 * Hkv * Dh, {n, Hkv, Dh}),
                              tensor_view<const float, 3>(v.data() + r0 * Hkv * Dh, {n, Hkv, Dh}));
                attend_paged(tensor_view<float, 4>(attn.data() + r0 * Hq * Dh, {1, n, Hq, Dh}), qi, s.paged, l,
                             s.length + n, opts);
            }
            project(delta.view(), attn.view(), L.wo, L16.wo, LQ.wo, L.bo);
            add(x.view(), x.view(), delta.view());
            norm(h.view(), x.view(), L.ffn_norm_weight, L.ffn_norm_bias);
            mlp(delta.view(), h.view(), L, L16, LQ);
            add(x.view(), x.view(), delta.view());
        }
        for (index_t i = 0; i < S; ++i) {
            session& s = *sessions[static_cast<std::size_t>(i)];
            s.length += count_of(i);
            s.paged.advance(count_of(i));
        }
        // Each session's last row, normed, through the output projection.        (S, D) -> (S, V)
        tensor<float, 2> last(extents<2>{S, D}), last_normed(extents<2>{S, D});
        for (index_t i = 0; i < S; ++i)
            for (index_t j = 0; j < D; ++j) last(i, j) = x(rows_of(i) + count_of(i) - 1, j);
        norm(last_normed.view(), last.view(), w_.final_norm_weight, w_.final_norm_bias);
        tensor<float, 2> logits(extents<2>{S, c.vocab_size});
        const tensor<float, 2>& head = c.tie_word_embeddings ? w_.embed : w_.lm_head;
        const tensor<bfloat16, 2>& head16 = c.tie_word_embeddings ? w16_.embed : w16_.lm_head;
        project(logits.view(), last_normed.view(), head, head16,
                c.tie_word_embeddings ? no_quantized_layer_.wq : head_q_, tensor<float, 1>{});
        return logits;
    }

private:
    tensor<float, 2> forward_positions(session& s, std::span<const token_id> tokens, const attention_observer& observe,
                                       bool last_only) const {
        const model_config& c = config_;
        const index_t n = static_cast<index_t>(tokens.size()), D = c.hidden_size, Dh = c.head_dim;
        const index_t Hq = c.num_heads, Hkv = c.num_kv_heads;
        TINYLLM_EXPECT(n >= 1, "model::forward: no tokens to feed");
        TINYLLM_EXPECT(s.capacity() > 0 && s.length + n <= s.capacity(), "model::forward: ", s.length, " + ", n,
                       " positions exceed the session's capacity");
        for (index_t t = 0; t < n; ++t)
            TINYLLM_EXPECT(tokens[t] >= 0 && tokens[t] < c.vocab_size, "model::forward: token id ", tokens[t],
                           " at position ", s.length + t, " is outside the vocabulary [0, ", c.vocab_size, ")");
        TINYLLM_EXPECT(!observe || !s.is_paged(), "model::forward: the attention observer needs a contiguous "
                       "session (a paged one attends through its block table and forms no probabilities)");
        if (s.is_paged()) s.paged.reserve(n);  // every layer writes the same positions of the same blocks

        const bool bf16 = dtype_ == weight_dtype::bfloat16;
        TINYLLM_EXPECT(!bf16 || kernels_ == kernels::blocked,
                       "model::forward: the reference kernels need float32 weights, and this model holds its "
                       "matrices in bfloat16 (set_weight_dtype(weight_dtype::float32) widens them back)");
        TINYLLM_EXPECT(!quantized_ || kernels_ == kernels::blocked,
                       "model::forward: the reference kernels need float32 weights, and this model holds its "
                       "matrices quantized (", quant_spec_.name(), ")");

        // x = embed(tokens) (+ positions)                                         (n, D)
        tensor<float, 2> x(extents<2>{n, D});
        for (index_t t = 0; t < n; ++t)
            for (index_t j = 0; j < D; ++j)
                x(t, j) = bf16 ? bf16_to_float(w16_.embed(tokens[t], j)) : w_.embed(tokens[t], j);
        tensor<std::int64_t, 2> positions(extents<2>{1, n});  // (1, n)
        for (index_t t = 0; t < n; ++t) positions(0, t) = s.length + t;
        if (c.arch == model_arch::gpt2)
            add_learned_positions(tensor_view<float, 3>(x.data(), {1, n, D}), w_.positions.view(), positions.view());

        tensor<float, 2> h(extents<2>{n, D}), delta(extents<2>{n, D});               // (n, D)
        tensor<float, 2> q(extents<2>{n, Hq * Dh}), k(extents<2>{n, Hkv * Dh}), v(extents<2>{n, Hkv * Dh});
        tensor<float, 2> attn(extents<2>{n, Hq * Dh});
        for (index_t l = 0; l < c.num_layers; ++l) {
            const layer_weights& L = w_.layers[static_cast<std::size_t>(l)];
            const layer_weights_bf16& L16 = bf16 ? w16_.layers[static_cast<std::size_t>(l)] : no_bf16_layer_;
            const layer_weights_quantized& LQ = quantized_ ? wq_[static_cast<std::size_t>(l)] : no_quantized_layer_;
            attention_inputs(q.view(), k.view(), v.view(), h.view(), x.view(), L, L16, LQ);
            tensor_view<float, 4> q4(q.data(), {1, n, Hq, Dh});   // (B=1, n, Hq, Dh)
            tensor_view<float, 4> k4(k.data(), {1, n, Hkv, Dh});  // (B=1, n, Hkv, Dh)
            tensor_view<float, 4> v4(v.data(), {1, n, Hkv, Dh});
            if (c.arch != model_arch::gpt2) apply_rope(q4, k4, c.rope, s.length);  // positions length..length+n-1
            const tensor_view<float, 4> attn4(attn.data(), {1, n, Hq, Dh});  // (1, n, Hq, Dh)
            attention_options opts;
            opts.causal = true;
            if (s.is_paged()) {
                // Into the session's blocks, then attention through its block table.
                s.paged.write(l, s.length, tensor_view<const float, 3>(k.data(), {n, Hkv, Dh}),
                              tensor_view<const float, 3>(v.data(), {n, Hkv, Dh}));
                attend_paged(attn4, q4, s.paged, l, s.length + n, opts);
            } else if (s.dtype() == kv_dtype::int8) {
                kv_cache_int8& cache = s.caches_int8[static_cast<std::size_t>(l)];
                cache.append(k4, v4);
                // The cache dequantized for this layer.                  (1, length + n, Hkv, Dh) each
                tensor<float, 4> keys(extents<4>{1, cache.length(), Hkv, Dh}), values(keys.shape());
                cache.dequantize(keys.view(), values.view());
                attend(attn4, q4, keys.view(), values.view(), opts, observe, l);
            } else {
                kv_cache<float>& cache = s.caches[static_cast<std::size_t>(l)];
                cache.append(k4, v4);
                attend(attn4, q4, cache.keys(), cache.values(), opts, observe, l);
            }
            project(delta.view(), attn.view(), L.wo, L16.wo, LQ.wo, L.bo);
            add(x.view(), x.view(), delta.view());

            norm(h.view(), x.view(), L.ffn_norm_weight, L.ffn_norm_bias);
            mlp(delta.view(), h.view(), L, L16, LQ);
            add(x.view(), x.view(), delta.view());
        }
        s.length += n;
        if (s.is_paged()) s.paged.advance(n);

        norm(h.view(), x.view(), w_.final_norm_weight, w_.final_norm_bias);
        const index_t rows = last_only ? 1 : n;
        tensor<float, 2> logits(extents<2>{rows, c.vocab_size});  // (rows, V)
        const tensor<float, 2>& head = c.tie_word_embeddings ? w_.embed : w_.lm_head;
        const tensor<bfloat16, 2>& head16 = c.tie_word_embeddings ? w16_.embed : w16_.lm_head;
        project(logits.view(), tensor_view<const float, 2>(h.view()).narrow(0, n - rows, rows), head, head16,
                c.tie_word_embeddings ? no_quantized_layer_.wq : head_q_, tensor<float, 1>{});
        return logits;
    }

public:

    // Training: run B rows of T tokens forward (positions 0..T-1, no cache),
    // measure the loss against `targets` (targets(b, t) is the token that should
    // follow tokens(b, t), or ignore_index), and back-propagate it: every
    // parameter's gradient is written (overwritten) into `grads`, which has the
    // weights' layout (zeros_like(weights())). tokens, targets: (B, T). Runs
    // on the chosen kernels (set_kernels) as forward does, float32 weights only.
    // Defined below, after the class.
    loss_terms forward_backward(model_weights& grads, tensor_view<const token_id, 2> tokens,
                                tensor_view<const token_id, 2> targets, const backward_options& options = {}) const;

private:
    // A layer's attention inputs: h = norm1(x), then q, k, v = h Wq^T, h Wk^T, h Wv^T
    // (+ GPT-2's biases), each matrix as held.  x, h (n, D); q (n, Hq Dh); k, v (n, Hkv Dh)
    void attention_inputs(tensor_view<float, 2> q, tensor_view<float, 2> k, tensor_view<float, 2> v,
                          tensor_view<float, 2> h, tensor_view<const float, 2> x, const layer_weights& L,
                          const layer_weights_bf16& L16, const layer_weights_quantized& LQ) const {
        norm(h, x, L.attn_norm_weight, L.attn_norm_bias);
        project(q, h, L.wq, L16.wq, LQ.wq, L.bq);
        project(k, h, L.wk, L16.wk, LQ.wk, L.bk);
        project(v, h, L.wv, L16.wv, LQ.wv, L.bv);
    }

    // The layer's MLP (or MoE block) on the rows of h, through the chosen kernels.  out, h (n, D)
    void mlp(tensor_view<float, 2> out, tensor_view<const float, 2> h, const layer_weights& L,
             const layer_weights_bf16& L16, const layer_weights_quantized& LQ) const {
        if (kernels_ == kernels::blocked) {
            mlp_blocked(out, h, L, L16, LQ);
        } else if (config_.arch == model_arch::gpt2) {
            gpt2_mlp(out, h, {L.fc.view(), L.fc_bias.view(), L.proj.view(), L.proj_bias.view()}, activation::gelu_tanh);
        } else if (config_.arch == model_arch::llama) {
            swiglu_mlp(out, h, {L.gate.view(), L.up.view(), L.down.view()});
        } else {
            moe_forward(out, h, L.router.view(), L.w1.view(), L.w3.view(), L.w2.view(), config_.experts_per_token);
        }
    }

    // Attention of the n new queries (the last of `length` positions) through a
    // paged session's block table: the reference reads the blocks in place
    // (cpu::attention_paged); the blocked kernels gather the positions into a
    // contiguous copy and run the tiled float attention on it.  out, q (1, n, Hq, Dh)
    void attend_paged(tensor_view<float, 4> out, tensor_view<const float, 4> q, const kv_block_table& table,
                      index_t layer, index_t length, const attention_options& opts) const {
        if (kernels_ == kernels::blocked) {
            const extents<4> shape{1, length, config_.num_kv_heads, config_.head_dim};
            tensor<float, 4> keys(shape), values(shape);  // (1, length, Hkv, Dh)
            table.gather(layer, length, keys.view(), values.view());
            attention_tiled<float>(out, q, keys.view(), values.view(), opts);
            return;
        }
        const kv_block_pool& pool = *table.pool();
        const std::int32_t fed = static_cast<std::int32_t>(length);
        const index_t held = static_cast<index_t>(table.blocks().size());
        attention_paged(out, q, pool.keys(layer), pool.values(layer),
                        tensor_view<const std::int32_t, 2>(table.blocks().data(), {1, held}),
                        tensor_view<const std::int32_t, 1>(&fed, {1}), opts);
    }

    // Attention of the n new queries over a contiguous cache's keys and values
    // (this step's included), on the chosen kernels; `observe` sees the probabilities.
    //   out, q (1, n, Hq, Dh); keys, values (1, length + n, Hkv, Dh)
    void attend(tensor_view<float, 4> out, tensor_view<const float, 4> q, tensor_view<const float, 4> keys,
                tensor_view<const float, 4> values, const attention_options& opts, const attention_observer& observe,
                index_t layer) const {
        if (kernels_ == kernels::blocked) attention_tiled<float>(out, q, keys, values, opts);
        if (observe) {
            // The tiled kernel never forms the probabilities; the reference does.
            // Its output is discarded on the blocked path, so observing changes nothing.
            tensor<float, 4> probs(extents<4>{1, q.extent(2), q.extent(1), keys.extent(1)});  // (1, Hq, n, length + n)
            tensor<float, 4> scratch;
            if (kernels_ == kernels::blocked) scratch = tensor<float, 4>(out.shape());
            attention<float>(kernels_ == kernels::blocked ? scratch.view() : out, q, keys, values, opts, probs.view());
            observe(layer, probs.view());
        } else if (kernels_ == kernels::reference) {
            attention<float>(out, q, keys, values, opts);
        }
    }

    // out = x weight^T + bias through the chosen kernels, float weights.  out (n, N), x (n, K)
    void linear_on_kernels(tensor_view<float, 2> out, tensor_view<const float, 2> x, tensor_view<const float, 2> weight,
                           tensor_view<const float, 1> bias) const {
        if (kernels_ == kernels::blocked) linear_gemm(out, x, weight, bias);
        else linear(out, x, weight, bias);
    }

    // Its gradients through the chosen kernels (linear_backward's arguments).
    void linear_backward_on_kernels(tensor_view<float, 2> dx, tensor_view<float, 2> dweight,
                                    tensor_view<float, 1> dbias, tensor_view<const float, 2> dout,
                                    tensor_view<const float, 2> x, tensor_view<const float, 2> weight) const {
        if (kernels_ == kernels::blocked) linear_backward_gemm(dx, dweight, dbias, dout, x, weight);
        else linear_backward(dx, dweight, dbias, dout, x, weight);
    }

    // out = x weight^T + bias through the chosen kernels and the weight as held
    // (weight16 when the matrices are bf16, weight_q when this one is quantized).  out (n, N), x (n, K)
    void project(tensor_view<float, 2> out, tensor_view<const float, 2> x, const tensor<float, 2>& weight,
                 const tensor<bfloat16, 2>& weight16, const quantized_matrix& weight_q,
                 const tensor<float, 1>& bias) const {
        if (observe_linear_ && weight.size()) (*observe_linear_)(weight, x);
        if (weight_q.rows > 0) linear_quantized_fused(out, x, weight_q, bias.view());
        else if (dtype_ == weight_dtype::bfloat16) linear_gemm(out, x, weight16.view(), bias.view());
        else linear_on_kernels(out, x, weight.view(), bias.view());
    }

    // The MLPs on the blocked kernels: the steps of gpt2_mlp, swiglu_mlp and
    // moe_forward, each product through linear_gemm (float or bf16 weights).
    void mlp_blocked(tensor_view<float, 2> out, tensor_view<const float, 2> h, const layer_weights& L,
                     const layer_weights_bf16& L16, const layer_weights_quantized& LQ) const {
        const index_t n = h.extent(0);
        const tensor<float, 1> none;
        if (config_.arch == model_arch::gpt2) {
            tensor<float, 2> hidden(extents<2>{n, config_.intermediate_size});  // (n, F)
            project(hidden.view(), h, L.fc, L16.fc, LQ.fc, L.fc_bias);
            activate_vectorized(hidden.view(), hidden.view(), activation::gelu_tanh);
            project(out, hidden.view(), L.proj, L16.proj, LQ.proj, L.proj_bias);
        } else if (config_.arch == model_arch::llama) {
            const extents<2> hidden{n, config_.intermediate_size};
            tensor<float, 2> gate(hidden), up(hidden);  // (n, F)
            project(gate.view(), h, L.gate, L16.gate, LQ.gate, none);
            project(up.view(), h, L.up, L16.up, LQ.up, none);
            swiglu_vectorized(gate.view(), gate.view(), up.view());
            project(out, gate.view(), L.down, L16.down, LQ.down, none);
        } else {
            moe_blocked(out, h, L, L16, LQ);
        }
    }

    // Mixtral's routing of the rows of x as moe_forward computes it: router logits
    // in double, softmax -> top-k -> renormalize, and the plan grouping rows by expert.
    struct moe_routing {
        tensor<float, 2> logits;         // (T, E)
        tensor<std::int32_t, 2> ids;     // (T, k)
        tensor<float, 2> weights;        // (T, k)
        moe_plan_buffers plan;
    };
    moe_routing route(tensor_view<const float, 2> x, const layer_weights& L) const {
        const index_t T = x.extent(0), E = config_.num_experts, k = config_.experts_per_token;
        moe_routing r{tensor<float, 2>(extents<2>{T, E}), tensor<std::int32_t, 2>(extents<2>{T, k}),
                      tensor<float, 2>(extents<2>{T, k}), moe_plan_buffers(T, k, E)};
        moe_router_logits(r.logits.view(), x, L.router.view());
        softmax_topk_gating(r.ids.view(), r.weights.view(), r.logits.view(), true);
        moe_plan(r.plan.view(), r.ids.view());
        return r;
    }

    // Mixtral's sparse MoE block on the blocked kernels: moe_forward's steps (router
    // logits in double as the reference computes them, so both choose the same
    // experts; softmax -> top-k -> renormalize; tokens gathered expert by expert),
    // with each expert's rows multiplied through linear_gemm as one (rows, D) block,
    // or through linear_quantized_fused when the experts are quantized (the router
    // is float either way).
    void moe_blocked(tensor_view<float, 2> out, tensor_view<const float, 2> x, const layer_weights& L,
                     const layer_weights_bf16& L16, const layer_weights_quantized& LQ) const {
        const index_t D = x.extent(1), E = config_.num_experts, F = config_.intermediate_size;
        const bool bf16 = dtype_ == weight_dtype::bfloat16;
        moe_routing r = route(x, L);
        moe_plan_buffers& plan = r.plan;
        tensor<float, 2> sorted(extents<2>{plan.rows(), D}), expert_out(extents<2>{plan.rows(), D});  // (R, D)
        moe_gather(sorted.view(), x, plan.view());
        for (auto& v : expert_out.values()) v = 0.0f;  // rows no expert fills (padding)
        for (index_t e = 0; e < E; ++e) {
            const index_t first = plan.expert_offsets(e), rows = plan.expert_counts(e);
            if (rows == 0) continue;
            // out = in · (expert e's matrix of w, w16 or wq, as held)^T
            auto expert = [&](tensor_view<float, 2> out, tensor_view<const float, 2> in, const tensor<float, 3>& w,
                              const tensor<bfloat16, 3>& w16, const std::vector<quantized_matrix>& wq) {
                if (observe_expert_ && w.size()) (*observe_expert_)(w, e, in);
                if (!wq.empty()) linear_quantized_fused(out, in, wq[static_cast<std::size_t>(e)]);
                else if (bf16) linear_gemm(out, in, w16.view().slice(0, e), {});
                else linear_gemm(out, in, w.view().slice(0, e), {});
            };
            const auto in = sorted.view().narrow(0, first, rows);  // (rows, D)
            tensor<float, 2> gate(extents<2>{rows, F}), up(extents<2>{rows, F});
            expert(gate.view(), in, L.w1, L16.w1, LQ.w1);
            expert(up.view(), in, L.w3, L16.w3, LQ.w3);
            swiglu_vectorized(gate.view(), gate.view(), up.view());
            expert(expert_out.view().narrow(0, first, rows), gate.view(), L.w2, L16.w2, LQ.w2);
        }
        moe_combine(out, expert_out.view(), r.weights.view(), plan.view());
    }

    // moe_backward's steps on the blocked kernels (float32 weights): the forward
    // recomputed as moe_blocked computes it (router logits in double, so the same
    // experts, ties and order), each expert's rows through linear_gemm and
    // linear_backward_gemm as one block, SwiGLU through the vectorized rung; the
    // combine, gating and slot sums as the reference. Every gradient overwritten.
    void moe_backward_blocked(tensor_view<float, 2> dx, tensor<float, 2>& drouter, tensor<float, 3>& dw1,
                              tensor<float, 3>& dw3, tensor<float, 3>& dw2, tensor_view<const float, 2> dout,
                              tensor_view<const float, 2> dlogits_extra, tensor_view<const float, 2> x,
                              const layer_weights& L) const {
        const index_t T = x.extent(0), D = x.extent(1), E = config_.num_experts, k = config_.experts_per_token;
        const index_t F = config_.intermediate_size;
        moe_routing r = route(x, L);
        moe_plan_buffers& plan = r.plan;
        const index_t R = plan.rows();
        tensor<float, 2> x_sorted(extents<2>{R, D}), y_sorted(extents<2>{R, D});                   // (R, D)
        tensor<float, 2> gate(extents<2>{R, F}), up(extents<2>{R, F}), h(extents<2>{R, F});       // (R, F)
        moe_gather(x_sorted.view(), x, plan.view());
        const auto rows_of = [&](auto& buffer, index_t e) {  // expert e's rows of an (R, .) buffer
            return buffer.view().narrow(0, plan.expert_offsets(e), plan.expert_counts(e));
        };
        for (index_t e = 0; e < E; ++e) {
            linear_gemm(rows_of(gate, e), rows_of(x_sorted, e), L.w1.view().slice(0, e), {});
            linear_gemm(rows_of(up, e), rows_of(x_sorted, e), L.w3.view().slice(0, e), {});
            swiglu_vectorized(rows_of(h, e), rows_of(gate, e), rows_of(up, e));
            linear_gemm(rows_of(y_sorted, e), rows_of(h, e), L.w2.view().slice(0, e), {});
        }
        // Combine: dy_sorted[row_of(t, j)] = w(t, j) dout[t]; dweights(t, j) = <dout[t], y_sorted[row_of(t, j)]>.
        tensor<float, 2> dy_sorted(extents<2>{R, D});  // (R, D), zero on padding rows
        tensor<float, 2> dweights(extents<2>{T, k});   // (T, k)
        tinyllm::detail::moe_combine_backward(dy_sorted.view(), dweights.view(), dout, y_sorted.view(),
                                              r.weights.view(), plan.view());
        // Experts, each one's rows as a block (an expert no token reached gets zero gradients).
        tensor<float, 2> dh(extents<2>{R, F}), dgate(extents<2>{R, F}), dup(extents<2>{R, F});  // (R, F)
        tensor<float, 2> dx_gate(extents<2>{R, D}), dx_up(extents<2>{R, D});                     // (R, D)
        for (index_t e = 0; e < E; ++e) {
            linear_backward_gemm(rows_of(dh, e), dw2.view().slice(0, e), {}, rows_of(dy_sorted, e), rows_of(h, e),
                                 L.w2.view().slice(0, e));
            swiglu_backward_vectorized(rows_of(dgate, e), rows_of(dup, e), rows_of(dh, e), rows_of(gate, e),
                                       rows_of(up, e));
            linear_backward_gemm(rows_of(dx_gate, e), dw1.view().slice(0, e), {}, rows_of(dgate, e),
                                 rows_of(x_sorted, e), L.w1.view().slice(0, e));
            linear_backward_gemm(rows_of(dx_up, e), dw3.view().slice(0, e), {}, rows_of(dup, e),
                                 rows_of(x_sorted, e), L.w3.view().slice(0, e));
        }
        // Gating (only the chosen experts' logits get gradient) plus the auxiliary loss's gradient.
        tensor<float, 2> dlogits(extents<2>{T, E});  // (T, E)
        if (dlogits_extra.size() != 0)
            for (index_t t = 0; t < T; ++t)
                for (index_t e = 0; e < E; ++e) dlogits(t, e) = dlogits_extra(t, e);
        softmax_topk_gating_backward(dlogits.view(), dweights.view(), r.logits.view(), /*renormalize=*/true,
                                     /*accumulate=*/dlogits_extra.size() != 0);
        // Router (logits = x router^T): its gradient, and dx = dlogits router + the k slots' rows in slot order.
        linear_backward_gemm(dx, drouter.view(), {}, dlogits.view(), x, L.router.view());
        for (index_t t = 0; t < T; ++t)
            for (index_t j = 0; j < k; ++j) {
                const std::int32_t row = plan.row_of(t, j);
                if (row < 0) continue;
                for (index_t d = 0; d < D; ++d) dx(t, d) += dx_gate(row, d) + dx_up(row, d);
            }
    }

    // The row-wise steps through the chosen kernels: vectorized.hpp's float
    // loops on the blocked kernels, the double references otherwise.

    // The backward of norm(): dx = norm'(dout) (+ dskip, the gradient arriving by
    // the residual path, when given), dweight and dbias overwritten.
    void norm_backward(tensor_view<float, 2> dx, tensor<float, 1>& dweight, tensor<float, 1>& dbias,
                       tensor_view<const float, 2> dout, tensor_view<const float, 2> dskip,
                       tensor_view<const float, 2> x, const tensor<float, 1>& weight) const {
        const float eps = config_.norm_eps;
        const bool blocked = kernels_ == kernels::blocked;
        if (config_.arch == model_arch::gpt2) {
            if (blocked)
                residual_add_layer_norm_backward_vectorized(dx, dweight.view(), dbias.view(), dout, dskip, x,
                                                            weight.view(), eps);
            else residual_add_layer_norm_backward(dx, dweight.view(), dbias.view(), dout, dskip, x, weight.view(), eps);
        } else {
            if (blocked) residual_add_rms_norm_backward_vectorized(dx, dweight.view(), dout, dskip, x, weight.view(), eps);
            else residual_add_rms_norm_backward(dx, dweight.view(), dout, dskip, x, weight.view(), eps);
        }
    }

    void norm(tensor_view<float, 2> out, tensor_view<const float, 2> x, const tensor<float, 1>& weight,
              const tensor<float, 1>& bias) const {
        const float eps = config_.norm_eps;
        const bool blocked = kernels_ == kernels::blocked;
        if (config_.arch == model_arch::gpt2) {
            if (blocked) layer_norm_vectorized(out, x, weight.view(), bias.view(), eps);
            else layer_norm(out, x, weight.view(), bias.view(), eps);
        } else {
            if (blocked) rms_norm_vectorized(out, x, weight.view(), eps);
            else rms_norm(out, x, weight.view(), eps);
        }
    }

    void gelu_on_kernels(tensor_view<float, 2> out, tensor_view<const float, 2> x) const {
        if (kernels_ == kernels::blocked) activate_vectorized(out, x, activation::gelu_tanh);
        else activate(out, x, activation::gelu_tanh);
    }

    void gelu_backward_on_kernels(tensor_view<float, 2> dx, tensor_view<const float, 2> dout,
                                  tensor_view<const float, 2> x) const {
        if (kernels_ == kernels::blocked) activate_backward_vectorized(dx, dout, x, activation::gelu_tanh);
        else activate_backward(dx, dout, x, activation::gelu_tanh);
    }

    void swiglu_on_kernels(tensor_view<float, 2> out, tensor_view<const float, 2> gate,
                           tensor_view<const float, 2> up) const {
        if (kernels_ == kernels::blocked) swiglu_vectorized(out, gate, up);
        else swiglu(out, gate, up);
    }

    void swiglu_backward_on_kernels(tensor_view<float, 2> dgate, tensor_view<float, 2> dup,
                                    tensor_view<const float, 2> dout, tensor_view<const float, 2> gate,
                                    tensor_view<const float, 2> up) const {
        if (kernels_ == kernels::blocked) swiglu_backward_vectorized(dgate, dup, dout, gate, up);
        else swiglu_backward(dgate, dup, dout, gate, up);
    }

    double cross_entropy_on_kernels(tensor_view<float, 2> dlogits, tensor_view<const float, 2> logits,
                                    tensor_view<const token_id, 1> targets, const cross_entropy_options& options) const {
        if (kernels_ == kernels::blocked) return cross_entropy_vectorized(dlogits, logits, targets, options);
        return cross_entropy(dlogits, logits, targets, options);
    }

    model_config config_;
    model_weights w_;
    model_weights_bf16 w16_;  // the matrices, when dtype_ is bfloat16
    kernels kernels_ = kernels::blocked;
    weight_dtype dtype_ = weight_dtype::float32;
    inline static const layer_weights_bf16 no_bf16_layer_{};  // float32 weights: every bf16 matrix empty
    // Sees each projection's input x (n, K) and the float weight it meets (by
    // address): set only while quantize_weights_gptq gathers its statistics.
    using linear_observer = std::function<void(const tensor<float, 2>&, tensor_view<const float, 2>)>;
    mutable const linear_observer* observe_linear_ = nullptr;
    // The same for Mixtral's experts: the float (E, rows, cols) tensor, the expert e
    // and the input rows routed to it, x (rows_e, cols) — w1's and w3's input
    // (the normed hidden state of the tokens routed to e), or w2's (their SwiGLU output).
    using expert_observer = std::function<void(const tensor<float, 3>&, index_t, tensor_view<const float, 2>)>;
    mutable const expert_observer* observe_expert_ = nullptr;

    // What quantize_weights and quantize_weights_gptq check first.
    void expect_quantizable_model(const quant_spec& spec, const char* op) const {
        TINYLLM_EXPECT(!quantized_, op, ": the matrices are already quantized (", quant_spec_.name(), ")");
        TINYLLM_EXPECT(dtype_ == weight_dtype::float32, op,
                       ": the matrices are bfloat16; quantize from float32 weights");
        const std::string why = quant_spec_mismatch(w_, spec);
        TINYLLM_EXPECT(why.empty(), op, ": ", spec.name(), ": ", why);
    }

    // The quantized matrices are in wq_ and head_q_: free their float copies, record the format.
    void finish_quantization(const quant_spec& spec, const char* method) {
        w_.lm_head = tensor<float, 2>();
        for (layer_weights& L : w_.layers) {
            for (const auto& [name, member, dense] : detail::layer_matrix_members) L.*dense = tensor<float, 2>();
            for (const auto& [name, member, dense] : detail::layer_expert_members) L.*dense = tensor<float, 3>();
        }
        quantized_ = true;
        quant_spec_ = spec;
        config_.quantization = spec;
        config_.quantization_method = method;
    }

    bool quantized_ = false;                       // quantize_weights was called
    quant_spec quant_spec_;
    std::vector<layer_weights_quantized> wq_;      // the layers' quantized matrices, when quantized_
    quantized_matrix head_q_;                      // an untied output projection, quantized
    inline static const layer_weights_quantized no_quantized_layer_{};  // not quantized: every matrix empty
};

// ---- training: forward_backward ---------------------------------------------------
//
// The forward pass of a training step is the model's forward over a whole batch
// (N = B*T rows), keeping what the backward pass needs; the backward pass walks
// the same diagram from the top down, each block turning the gradient of its
// output into the gradient of its input and of its weights (docs/training.md):
//
//     dlogits = softmax(logits) - onehot(targets), / valid targets     (cross_entropy, fused)
//     dh = dlogits W_lm;  dW_lm = dlogits^T h                          (tied: added to d embed)
//     dx = norm_f backward (dh)
//     for each layer, last first:
//         dh2 = ffn backward (dx)               dx += norm2 backward (dh2)
//         da  = dx Wo                           dq, dk, dv = attention backward (da)
//         dq, dk = rope backward                dh1 = dq Wq + dk Wk + dv Wv
//         dx += norm1 backward (dh1)
//     d embed[token] += dx (scatter-add); GPT-2: d positions[t] += dx
//
// The residual stream is why dx is added to, never replaced: x feeds both the
// block and the skip connection, so its gradient is the sum of both paths.
// What is kept per layer and token is listed in detail::layer_activations; the
// attention probabilities are not kept (attention_backward recomputes them).

namespace detail {

// What one layer keeps from the forward pass for its backward, per batch (N = B*T rows).
struct layer_activations {
    tensor<float, 2> x;              // (N, D)       the stream entering the layer
    tensor<float, 2> h1;             // (N, D)       norm1(x), the projections' input
    tensor<float, 2> q, k, v;        // (N, Hq*Dh), (N, Hkv*Dh), (N, Hkv*Dh); q and k after RoPE
    tensor<float, 2> attn;           // (N, Hq*Dh)   attention output, Wo's input
    tensor<float, 2> x_mid;          // (N, D)       x + attention: the stream entering the FFN
    tensor<float, 2> h2;             // (N, D)       norm2(x_mid), the FFN's input
    tensor<float, 2> a, b;           // (N, F)       GPT-2: fc pre-activation (b empty); Llama: gate, up
    tensor<float, 2> router_logits;  // (N, E)       Mixtral
    tensor<float, 3> lse;            // (B, Hq, T)   blocked kernels: each attention row's log-sum-exp
};

// The first non-finite value among the gradients, as "name[index] = value", or "".
// Each tensor is first checked whole on its bits (an exponent of all ones is
// inf or NaN), a loop that vectorizes; only a tensor that fails is searched.
inline std::string first_non_finite(const model_weights& g) {
    std::string found;
    tinyllm::detail::for_each_weight(g, g, [&](const std::string& name, const auto& t, const auto&) {
        if (!found.empty()) return;
        const auto& values = t.values();
        std::uint32_t any = 0;  // 1 once an exponent field of all ones is seen
        for (const float x : values)
            any |= static_cast<std::uint32_t>((std::bit_cast<std::uint32_t>(x) & 0x7f800000u) == 0x7f800000u);
        if (!any) return;
        for (std::size_t i = 0; found.empty() && i < values.size(); ++i)
            if (!std::isfinite(values[i])) found = tinyllm::detail::cat(name, "[", i, "] = ", values[i]);
    });
    return found;
}

// Mixtral's load-balancing loss over all R = layers * N router rows (transformers'
// load_balancing_loss_func): aux = E * sum_e (c_e / R) * (sum_rows p_e / R), where c_e
// counts the rows whose top-k holds expert e and carries no gradient. Its gradient
// with respect to one row's logits z: d aux / d z_e' = E / R^2 * p_e' (c_e' - sum_e c_e p_e).
// router_logits: each layer's (N, E) logits; returns aux and sets aux_dlogits[l]
// (N, E) = aux_weight * d aux / d router_logits[l]. Sums in double, on the host
// (cpu::model and cuda::model share it: the GPU downloads its router logits).
inline double load_balancing_loss(std::vector<tensor<float, 2>>& aux_dlogits,
                                  const std::vector<tensor_view<const float, 2>>& router_logits, index_t k,
                                  double aux_weight) {
    aux_dlogits.assign(router_logits.size(), {});
    if (router_logits.empty()) return 0.0;
    const index_t N = router_logits.front().extent(0), E = router_logits.front().extent(1);
    const index_t R = static_cast<index_t>(router_logits.size()) * N;
    std::vector<double> counts(static_cast<std::size_t>(E), 0.0), prob_sums(counts.size(), 0.0);
    std::vector<tensor<double, 2>> probs;  // per layer (N, E)
    for (const tensor_view<const float, 2>& z : router_logits) {
        tensor<std::int32_t, 2> ids(extents<2>{N, k});
        tensor<float, 2> unused(extents<2>{N, k});
        softmax_topk_gating(ids.view(), unused.view(), z, true);
        for (index_t r = 0; r < N; ++r)
            for (index_t j = 0; j < k; ++j) counts[static_cast<std::size_t>(ids(r, j))] += 1.0;
        tensor<double, 2> p(extents<2>{N, E});
        for (index_t r = 0; r < N; ++r) {
            double m = z(r, 0), sum = 0;
            for (index_t e = 0; e < E; ++e) m = std::max(m, static_cast<double>(z(r, e)));
            for (index_t e = 0; e < E; ++e) sum += p(r, e) = std::exp(z(r, e) - m);
            for (index_t e = 0; e < E; ++e) prob_sums[static_cast<std::size_t>(e)] += p(r, e) /= sum;
        }
        probs.push_back(std::move(p));
    }
    const double Rd = static_cast<double>(R);
    double aux = 0;
    for (index_t e = 0; e < E; ++e)
        aux += (counts[static_cast<std::size_t>(e)] / Rd) * (prob_sums[static_cast<std::size_t>(e)] / Rd);
    aux *= static_cast<double>(E);
    for (std::size_t l = 0; l < router_logits.size(); ++l) {
        aux_dlogits[l] = tensor<float, 2>(extents<2>{N, E});
        for (index_t r = 0; r < N; ++r) {
            double mean_count = 0;  // sum_e c_e p_e
            for (index_t e = 0; e < E; ++e) mean_count += counts[static_cast<std::size_t>(e)] * probs[l](r, e);
            for (index_t e = 0; e < E; ++e)
                aux_dlogits[l](r, e) = static_cast<float>(aux_weight * static_cast<double>(E) / (Rd * Rd) *
                                                          probs[l](r, e) *
                                                          (counts[static_cast<std::size_t>(e)] - mean_count));
        }
    }
    return aux;
}

}  // namespace detail

inline loss_terms model::forward_backward(model_weights& grads, tensor_view<const token_id, 2> tokens,
                                          tensor_view<const token_id, 2> targets,
                                          const backward_options& options) const {
    const model_config& c = config_;
    const index_t B = tokens.extent(0), T = tokens.extent(1), N = B * T;
    const index_t D = c.hidden_size, Dh = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
    const index_t V = c.vocab_size, F = c.intermediate_size, E = c.num_experts;
    const bool gpt2 = c.arch == model_arch::gpt2, moe = c.arch == model_arch::mixtral;
    TINYLLM_EXPECT(dtype_ == weight_dtype::float32, "model::forward_backward: training needs float32 weights, and "
                   "this model holds its matrices in bfloat16 (set_weight_dtype(weight_dtype::float32) widens them)");
    TINYLLM_EXPECT(!quantized_, "model::forward_backward: training needs float32 weights, and this model holds its "
                   "matrices quantized (", quant_spec_.name(), ")");
    TINYLLM_EXPECT(B >= 1 && T >= 1, "model::forward_backward: tokens has shape ", to_string(tokens.shape()),
                   "; it needs at least one row of one token (B, T)");
    TINYLLM_EXPECT(targets.shape() == tokens.shape(), "model::forward_backward: targets has shape ",
                   to_string(targets.shape()), " but tokens has shape ", to_string(tokens.shape()),
                   "; they must be equal (B, T)");
    TINYLLM_EXPECT(std::isfinite(options.lm_weight) && std::isfinite(options.aux_weight) && options.lm_weight >= 0 &&
                       options.aux_weight >= 0,
                   "model::forward_backward: lm_weight = ", options.lm_weight, " and aux_weight = ",
                   options.aux_weight, " must be finite and not negative");
    TINYLLM_EXPECT(std::isfinite(options.distill_weight) && options.distill_weight >= 0,
                   "model::forward_backward: distill_weight = ", options.distill_weight,
                   " must be finite and not negative");
    TINYLLM_EXPECT(!gpt2 || T <= c.max_positions, "model::forward_backward: ", T, " positions exceed GPT-2's ",
                   c.max_positions, " learned positions");
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t)
            TINYLLM_EXPECT(tokens(b, t) >= 0 && tokens(b, t) < V, "model::forward_backward: token id ", tokens(b, t),
                           " at (", b, ", ", t, ") is outside the vocabulary [0, ", V, ")");
    if (static_cast<index_t>(grads.layers.size()) != c.num_layers || grads.embed.shape() != w_.embed.shape())
        grads = zeros_like(w_);

    // ---- forward, keeping each layer's activations ----
    tensor<std::int32_t, 2> positions(extents<2>{B, T});  // (B, T): 0..T-1 in every row
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t) positions(b, t) = static_cast<std::int32_t>(t);
    tensor<float, 2> x(extents<2>{N, D});  // (N, D) the residual stream
    embedding(x.view(), tensor_view<const token_id, 1>(tokens.data(), {N}), w_.embed.view());
    if (gpt2) add_learned_positions(tensor_view<float, 3>(x.data(), {B, T, D}), w_.positions.view(), positions.view());

    attention_options causal;
    causal.causal = true;
    // The products through the chosen kernels: linear_gemm / linear_backward_gemm and the
    // tiled attention (which keeps each row's log-sum-exp for its backward) on the blocked
    // kernels, the references otherwise; Mixtral's experts through moe_blocked and
    // moe_backward_blocked, or moe_forward and moe_backward.
    const bool blocked = kernels_ == kernels::blocked;
    auto as4 = [&](tensor<float, 2>& m, index_t heads) { return tensor_view<float, 4>(m.data(), {B, T, heads, Dh}); };
    auto cas4 = [&](const tensor<float, 2>& m, index_t heads) {
        return tensor_view<const float, 4>(m.data(), {B, T, heads, Dh});
    };
    std::vector<detail::layer_activations> acts(static_cast<std::size_t>(c.num_layers));
    tensor<float, 2> delta(extents<2>{N, D});  // (N, D) a block's output, added to the stream
    for (index_t l = 0; l < c.num_layers; ++l) {
        const layer_weights& L = w_.layers[static_cast<std::size_t>(l)];
        detail::layer_activations& A = acts[static_cast<std::size_t>(l)];
        A.x = x;
        A.h1 = tensor<float, 2>(extents<2>{N, D});
        norm(A.h1.view(), x.view(), L.attn_norm_weight, L.attn_norm_bias);
        A.q = tensor<float, 2>(extents<2>{N, Hq * Dh});
        A.k = tensor<float, 2>(extents<2>{N, Hkv * Dh});
        A.v = tensor<float, 2>(extents<2>{N, Hkv * Dh});
        linear_on_kernels(A.q.view(), A.h1.view(), L.wq.view(), L.bq.view());
        linear_on_kernels(A.k.view(), A.h1.view(), L.wk.view(), L.bk.view());
        linear_on_kernels(A.v.view(), A.h1.view(), L.wv.view(), L.bv.view());
        if (!gpt2) apply_rope(as4(A.q, Hq), as4(A.k, Hkv), c.rope, 0);
        A.attn = tensor<float, 2>(extents<2>{N, Hq * Dh});
        if (blocked) {
            A.lse = tensor<float, 3>(extents<3>{B, Hq, T});
            attention_tiled<float>(as4(A.attn, Hq), cas4(A.q, Hq), cas4(A.k, Hkv), cas4(A.v, Hkv), causal,
                                   A.lse.view());
        } else {
            attention<float>(as4(A.attn, Hq), cas4(A.q, Hq), cas4(A.k, Hkv), cas4(A.v, Hkv), causal);
        }
        linear_on_kernels(delta.view(), A.attn.view(), L.wo.view(), L.bo.view());
        add(x.view(), x.view(), delta.view());

        A.x_mid = x;
        A.h2 = tensor<float, 2>(extents<2>{N, D});
        norm(A.h2.view(), x.view(), L.ffn_norm_weight, L.ffn_norm_bias);
        if (gpt2) {
            A.a = tensor<float, 2>(extents<2>{N, F});  // fc pre-activation
            linear_on_kernels(A.a.view(), A.h2.view(), L.fc.view(), L.fc_bias.view());
            tensor<float, 2> g(extents<2>{N, F});
            gelu_on_kernels(g.view(), A.a.view());
            linear_on_kernels(delta.view(), g.view(), L.proj.view(), L.proj_bias.view());
        } else if (!moe) {
            A.a = tensor<float, 2>(extents<2>{N, F});  // gate
            A.b = tensor<float, 2>(extents<2>{N, F});  // up
            linear_on_kernels(A.a.view(), A.h2.view(), L.gate.view(), {});
            linear_on_kernels(A.b.view(), A.h2.view(), L.up.view(), {});
            tensor<float, 2> s(extents<2>{N, F});
            swiglu_on_kernels(s.view(), A.a.view(), A.b.view());
            linear_on_kernels(delta.view(), s.view(), L.down.view(), {});
        } else {
            A.router_logits = tensor<float, 2>(extents<2>{N, E});
            linear(A.router_logits.view(), A.h2.view(), L.router.view(), {});
            if (blocked) moe_blocked(delta.view(), A.h2.view(), L, no_bf16_layer_, no_quantized_layer_);
            else
                moe_forward(delta.view(), A.h2.view(), L.router.view(), L.w1.view(), L.w3.view(), L.w2.view(),
                            c.experts_per_token);
        }
        add(x.view(), x.view(), delta.view());
    }
    tensor<float, 2> hf(extents<2>{N, D});  // (N, D) norm_f(x)
    norm(hf.view(), x.view(), w_.final_norm_weight, w_.final_norm_bias);
    const tensor<float, 2>& head = c.tie_word_embeddings ? w_.embed : w_.lm_head;
    tensor<float, 2> logits(extents<2>{N, V});  // (N, V), overwritten below by its gradient
    linear_on_kernels(logits.view(), hf.view(), head.view(), {});

    // ---- the losses ----
    loss_terms loss;
    const tensor_view<const token_id, 1> flat_targets(targets.data(), {N});
    tensor<float, 2> student;  // (N, V): the logits kept for distillation (the cross-entropy overwrites them)
    if (options.teacher_logits.size() != 0) {
        TINYLLM_EXPECT(options.teacher_logits.shape() == logits.shape(), "model::forward_backward: teacher logits ",
                       to_string(options.teacher_logits.shape()), " for student logits ", to_string(logits.shape()),
                       " (B * T positions, V)");
        student = logits;
    }
    loss.lm = cross_entropy_on_kernels(logits.view(), logits.view(), flat_targets, options.loss);  // dlogits in place
    if (options.lm_weight != 1.0)
        for (float& g : logits.values()) g = static_cast<float>(g * options.lm_weight);
    if (options.teacher_logits.size() != 0)  // adds distill_weight times its gradient
        loss.distill = distillation_loss(logits.view(), student.view(), options.teacher_logits,
                                         options.distill_temperature, options.distill_weight);
    // Mixtral's load-balancing loss and its gradient at each layer's router logits.
    std::vector<tensor<float, 2>> aux_dlogits;  // (N, E) per layer
    if (moe) {
        std::vector<tensor_view<const float, 2>> router_logits;
        for (const auto& A : acts) router_logits.push_back(A.router_logits.view());
        loss.aux = detail::load_balancing_loss(aux_dlogits, router_logits, c.experts_per_token, options.aux_weight);
    }
    loss.total = options.lm_weight * loss.lm + options.aux_weight * loss.aux + options.distill_weight * loss.distill;

    // ---- backward, from the loss down ----
    const tensor_view<const float, 2> dlogits = logits.view();
    tensor<float, 2> dh(extents<2>{N, D}), dx(extents<2>{N, D});  // (N, D)
    tensor<float, 2>& dhead = c.tie_word_embeddings ? grads.embed : grads.lm_head;
    linear_backward_on_kernels(dh.view(), dhead.view(), {}, dlogits, hf.view(), head.view());
    norm_backward(dx.view(), grads.final_norm_weight, grads.final_norm_bias, dh.view(), {}, x.view(),
                  w_.final_norm_weight);

    tensor<float, 2> dq(extents<2>{N, Hq * Dh}), dk(extents<2>{N, Hkv * Dh}), dv(extents<2>{N, Hkv * Dh});
    tensor<float, 2> dattn(extents<2>{N, Hq * Dh}), dpart(extents<2>{N, D});
    for (index_t l = c.num_layers - 1; l >= 0; --l) {
        const layer_weights& L = w_.layers[static_cast<std::size_t>(l)];
        layer_weights& G = grads.layers[static_cast<std::size_t>(l)];
        const detail::layer_activations& A = acts[static_cast<std::size_t>(l)];
        // FFN block: x_out = x_mid + ffn(norm2(x_mid)); dx holds d x_out.
        if (gpt2) {
            tensor<float, 2> g(extents<2>{N, F}), dg(extents<2>{N, F});  // gelu(a) recomputed; its gradient
            gelu_on_kernels(g.view(), A.a.view());
            linear_backward_on_kernels(dg.view(), G.proj.view(), G.proj_bias.view(), dx.view(), g.view(),
                                       L.proj.view());
            gelu_backward_on_kernels(dg.view(), dg.view(), A.a.view());
            linear_backward_on_kernels(dh.view(), G.fc.view(), G.fc_bias.view(), dg.view(), A.h2.view(), L.fc.view());
        } else if (!moe) {
            tensor<float, 2> s(extents<2>{N, F}), ds(extents<2>{N, F}), dup(extents<2>{N, F});
            swiglu_on_kernels(s.view(), A.a.view(), A.b.view());
            linear_backward_on_kernels(ds.view(), G.down.view(), {}, dx.view(), s.view(), L.down.view());
            swiglu_backward_on_kernels(ds.view(), dup.view(), ds.view(), A.a.view(), A.b.view());  // ds becomes d gate
            linear_backward_on_kernels(dh.view(), G.gate.view(), {}, ds.view(), A.h2.view(), L.gate.view());
            linear_backward_on_kernels(dpart.view(), G.up.view(), {}, dup.view(), A.h2.view(), L.up.view());
            add(dh.view(), dh.view(), dpart.view());
        } else {
            if (blocked)
                moe_backward_blocked(dh.view(), G.router, G.w1, G.w3, G.w2, dx.view(),
                                     aux_dlogits[static_cast<std::size_t>(l)].view(), A.h2.view(), L);
            else
                moe_backward(dh.view(), G.router.view(), G.w1.view(), G.w3.view(), G.w2.view(), dx.view(),
                             aux_dlogits[static_cast<std::size_t>(l)].view(), A.h2.view(), L.router.view(),
                             L.w1.view(), L.w3.view(), L.w2.view(), c.experts_per_token);
        }
        norm_backward(dx.view(), G.ffn_norm_weight, G.ffn_norm_bias, dh.view(), dx.view(), A.x_mid.view(),
                      L.ffn_norm_weight);  // dx = d x_mid: the norm's path plus the skip's
        // Attention block: x_mid = x + attention(norm1(x)) Wo.
        linear_backward_on_kernels(dattn.view(), G.wo.view(), G.bo.view(), dx.view(), A.attn.view(), L.wo.view());
        if (blocked)
            attention_backward_tiled<float>(as4(dq, Hq), as4(dk, Hkv), as4(dv, Hkv), cas4(dattn, Hq), cas4(A.q, Hq),
                                            cas4(A.k, Hkv), cas4(A.v, Hkv), cas4(A.attn, Hq), A.lse.view(), causal);
        else
            attention_backward<float>(as4(dq, Hq), as4(dk, Hkv), as4(dv, Hkv), cas4(dattn, Hq), cas4(A.q, Hq),
                                      cas4(A.k, Hkv), cas4(A.v, Hkv), causal);
        if (!gpt2) {
            apply_rope_backward(as4(dq, Hq), c.rope, 0);
            apply_rope_backward(as4(dk, Hkv), c.rope, 0);
        }
        linear_backward_on_kernels(dh.view(), G.wq.view(), G.bq.view(), dq.view(), A.h1.view(), L.wq.view());
        linear_backward_on_kernels(dpart.view(), G.wk.view(), G.bk.view(), dk.view(), A.h1.view(), L.wk.view());
        add(dh.view(), dh.view(), dpart.view());
        linear_backward_on_kernels(dpart.view(), G.wv.view(), G.bv.view(), dv.view(), A.h1.view(), L.wv.view());
        add(dh.view(), dh.view(), dpart.view());
        norm_backward(dx.view(), G.attn_norm_weight, G.attn_norm_bias, dh.view(), dx.view(), A.x.view(),
                      L.attn_norm_weight);  // dx = d x
    }
    // The embedding: each row of dx goes back to its token's row of the table
    // (added to the output projection's gradient when the two are tied).
    embedding_backward(grads.embed.view(), tensor_view<const token_id, 1>(tokens.data(), {N}), dx.view(), 1.0f,
                       /*accumulate=*/c.tie_word_embeddings);
    if (gpt2)
        learned_positions_backward(grads.positions.view(), tensor_view<const float, 3>(dx.data(), {B, T, D}),
                                   positions.view(), /*accumulate=*/false);

    if (const std::string bad = detail::first_non_finite(grads); !bad.empty())
        TINYLLM_FAIL("model::forward_backward: the gradient went non-finite: ", bad, " (lm loss ", loss.lm,
                     ", aux loss ", loss.aux, ")");
    return loss;
}

// Changes to a sequence's logits before its next token is drawn, as OpenAI's
// API defines them over the tokens generated so far (the prompt not counted):
//     z_t <- z_t + bias[t] - count_t * frequency_penalty - [count_t > 0] * presence_penalty
// Both penalties default to 0 and no bias: the logits unchanged.
struct logit_adjustments {
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    std::map<token_id, float> logit_bias;
    bool active() const { return presence_penalty != 0.0f || frequency_penalty != 0.0f || !logit_bias.empty(); }
};

// Apply `a` to logits (1, V) given the tokens generated so far.
inline void adjust_logits(tensor_view<float, 2> logits, std::span<const token_id> generated,
                          const logit_adjustments& a) {
    if (!a.logit_bias.empty()) logit_bias(logits, a.logit_bias);
    if ((a.presence_penalty != 0.0f || a.frequency_penalty != 0.0f) && !generated.empty())
        frequency_presence_penalty(
            logits, tensor_view<const token_id, 2>(generated.data(), {1, static_cast<index_t>(generated.size())}),
            a.frequency_penalty, a.presence_penalty);
}

// How generate() chooses and when it stops.
struct generation_options {
    index_t max_new_tokens = 32;
    sampling::params sampling{0.0f, {}, {}, {}};  // temperature 0: greedy
    std::uint64_t seed = 0;                        // Philox seed for sampling
    std::uint64_t stream = 0;                      // Philox stream (generate_batch: sequence r uses stream + r)
    std::vector<token_id> eos_token_ids;           // stop after generating one of these (empty: the config's)
    model::kv_dtype kv_cache = model::kv_dtype::float32;  // generate's session: float32 or int8 keys and values
    logit_adjustments adjust;                      // penalties and biases before each draw
};

// Write a model holding its matrices quantized (quantize_weights or
// quantize_weights_gptq) to DIR in tinyllm's quantized layout (see "quantized
// checkpoints" in model_weights.hpp): config.json with its "quantization_config" and
// model.safetensors, each written beside its final name and renamed into place.
// model::load and `tinyllm generate --model DIR` read it back; transformers does
// not (it knows no quant_method "tinyllm"). Other files a model directory holds
// (tokenizer.json, generation_config.json) are the caller's to copy.
inline void save_quantized_model(const std::string& dir, const model& m) {
    namespace fs = std::filesystem;
    const model_config& c = m.config();
    TINYLLM_EXPECT(m.quantized() && c.quantization, "save_quantized_model: the model's matrices are not quantized "
                   "(quantize_weights first; save_model writes float checkpoints)");
    const model_weights& w = m.weights();
    std::vector<safetensors_entry> entries;
    // The caller's views are only kept while `entries` lives; the int8 values are
    // viewed as the signed bytes they are.
    const auto put_quantized = [&](const std::string& name, const quantized_matrix& q) {
        if (q.spec.format == quant_format::int8)
            entries.emplace_back(name + ".qweight", tensor_view<const std::int8_t, 2>(
                                                        reinterpret_cast<const std::int8_t*>(q.data.data()),
                                                        {q.rows, q.row_bytes()}));
        else
            entries.emplace_back(name + ".qweight",
                                 tensor_view<const std::uint8_t, 2>(q.data.data(), {q.rows, q.row_bytes()}));
        entries.emplace_back(name + ".scales", q.scales);
        if (q.zeros.size()) entries.emplace_back(name + ".zeros", q.zeros);
    };
    entries.emplace_back("embed", w.embed);
    if (w.positions.size()) entries.emplace_back("positions", w.positions);
    entries.emplace_back("final_norm.weight", w.final_norm_weight);
    if (w.final_norm_bias.size()) entries.emplace_back("final_norm.bias", w.final_norm_bias);
    if (m.head_quantized().rows > 0) put_quantized("lm_head", m.head_quantized());
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        for (const auto& [name, member] : tinyllm::detail::layer_vector_members)
            if ((w.layers[l].*member).size()) entries.emplace_back(p + name, w.layers[l].*member);
        for (const auto& [name, member, dense] : tinyllm::detail::layer_matrix_members)
            if (const quantized_matrix& q = m.weights_quantized()[l].*member; q.rows > 0) put_quantized(p + name, q);
        // Mixtral: the float router, then expert by expert its quantized w1, w3, w2.
        if (w.layers[l].router.size()) entries.emplace_back(p + "router", w.layers[l].router);
        for (const auto& [name, member, dense] : tinyllm::detail::layer_expert_members) {
            const std::vector<quantized_matrix>& experts = m.weights_quantized()[l].*member;
            for (std::size_t e = 0; e < experts.size(); ++e)
                put_quantized(tinyllm::detail::expert_matrix_name(l, static_cast<index_t>(e), name), experts[e]);
        }
    }
    const std::string config_text = model_config_json(c);  // refuses a config that would not load, before any write
    std::error_code ec;
    fs::create_directories(dir, ec);
    TINYLLM_EXPECT(!ec, "save_quantized_model: cannot create the directory '", dir, "': ", ec.message());
    const std::string weights = (fs::path(dir) / "model.safetensors").string();
    save_safetensors(weights + ".tmp", entries,
                     {{"format", "tinyllm-quantized"}, {"quantization", c.quantization->name()}});
    tinyllm::detail::rename_into_place(weights + ".tmp", weights, "save_quantized_model");
    tinyllm::detail::write_file_replacing((fs::path(dir) / "config.json").string(), config_text,
                                          "save_quantized_model");
}

// Generate a continuation of `prompt`: prefill, then decode one token at a
// time. on_token(id) is called as each token is chosen (for streaming).
// Returns the generated ids (the prompt excluded; an EOS that stopped it included).
inline std::vector<token_id> generate(const model& m, std::span<const token_id> prompt,
                                     const generation_options& options,
                                     const std::function<void(token_id)>& on_token = {}) {
    TINYLLM_EXPECT(!prompt.empty(), "generate: the prompt is empty");
    TINYLLM_EXPECT(options.max_new_tokens >= 0, "generate: max_new_tokens = ", options.max_new_tokens,
                   " must not be negative");
    const auto& eos = options.eos_token_ids.empty() ? m.config().eos_token_ids : options.eos_token_ids;
    auto session = m.new_session(static_cast<index_t>(prompt.size()) + std::max<index_t>(options.max_new_tokens, 1),
                                 options.kv_cache);
    std::vector<token_id> out;
    if (options.max_new_tokens == 0) return out;
    tensor<float, 2> logits = m.forward_last(session, prompt);  // (1, V)
    for (index_t step = 0; step < options.max_new_tokens; ++step) {
        token_id token = 0;
        if (options.adjust.active()) adjust_logits(logits.view(), out, options.adjust);
        sample(tensor_view<token_id, 1>(&token, {1}), tensor_view<const float, 2>(logits.view()), options.sampling,
               options.seed, static_cast<std::uint64_t>(step), options.stream);
        out.push_back(token);
        if (on_token) on_token(token);
        if (std::find(eos.begin(), eos.end(), token) != eos.end()) break;
        if (step + 1 < options.max_new_tokens) logits = m.forward_last(session, std::span<const token_id>(&token, 1));
    }
    return out;
}

// A batch of prompts of different lengths. Each sequence keeps its own KV
// cache (the CPU reference runs them one after another), and sequence r draws
// its random numbers from Philox stream r (options.stream + r), as row r of a
// batched sampler does, so the result equals generating each prompt alone with
// that stream — and equals tinyllm::cuda::generate_batch.
inline std::vector<std::vector<token_id>> generate_batch(const model& m,
                                                        const std::vector<std::vector<token_id>>& prompts,
                                                        const generation_options& options) {
    std::vector<std::vector<token_id>> out;
    for (std::size_t r = 0; r < prompts.size(); ++r) {
        generation_options o = options;
        o.stream = options.stream + r;
        out.push_back(generate(m, prompts[r], o));
    }
    return out;
}

}  // namespace cpu
}  // namespace tinyllm
