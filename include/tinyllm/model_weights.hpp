// tinyllm/model_weights.hpp — a model's weights as tensors (model_weights, one
// layer_weights per layer, in torch.nn.Linear's (out_features, in_features)
// layout), and how they come and go: read from a Hugging Face checkpoint's
// model.safetensors under GPT-2's, Llama's or Mixtral's tensor names
// (load_model_weights: every name and shape checked before anything is
// allocated), written back under the same names (checkpoint_tensors, save_model),
// held and saved quantized (quantized_model_weights, tinyllm's own layout,
// described below), or drawn at random for a config (random_model_weights).
// The model that computes with them: model.hpp.
#pragma once

#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/model_config.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/safetensors.hpp>
#include <tinyllm/tensor.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tinyllm {

namespace detail {

// Before anything is allocated per layer: the checkpoint must hold `name`, a
// tensor of the last layer config c announces, so that a layer count beyond
// the checkpoint's is an error naming the field, not a huge allocation.
inline void expect_last_layer(const model_config& c, const safetensors_checkpoint& ck, const std::string& name) {
    if (!ck.contains(name))
        TINYLLM_FAIL("checkpoint '", ck.dir(), "' has no tensor '", name, "' of the last of the ", c.num_layers,
                     " layers its config.json announces (\"",
                     c.arch == model_arch::gpt2 ? "n_layer" : "num_hidden_layers", "\")");
}

}  // namespace detail

// The weights of one layer, in torch.nn.Linear layout (out_features, in_features).
struct layer_weights {
    tensor<float, 1> attn_norm_weight, attn_norm_bias;  // (D); bias: GPT-2 only
    tensor<float, 1> ffn_norm_weight, ffn_norm_bias;    // (D)
    tensor<float, 2> wq, wk, wv, wo;                     // (Hq*Dh, D), (Hkv*Dh, D), (Hkv*Dh, D), (D, Hq*Dh)
    tensor<float, 1> bq, bk, bv, bo;                     // GPT-2 only
    tensor<float, 2> fc, proj;                           // GPT-2 MLP: (F, D), (D, F)
    tensor<float, 1> fc_bias, proj_bias;                 // (F), (D)
    tensor<float, 2> gate, up, down;                     // Llama SwiGLU: (F, D), (F, D), (D, F)
    tensor<float, 2> router;                             // Mixtral: (E, D)
    tensor<float, 3> w1, w3, w2;                         // Mixtral experts: (E, F, D), (E, F, D), (E, D, F)
};

// How the checkpoint the weights came from named and laid out its tensors, so
// that they (or their gradients) can be written back the same way.
struct checkpoint_layout {
    std::string gpt2_prefix = "transformer.";  // GPT-2: "transformer." (transformers) or "" (the Hub's original files)
    bool fused_experts = false;                // Mixtral: transformers >= 5's mlp.experts.gate_up_proj (E, 2F, D)
                                               // and down_proj (E, D, F), not block_sparse_moe.experts.N.w1/w2/w3
};

struct model_weights {
    checkpoint_layout layout;
    tensor<float, 2> embed;            // (V, D)
    tensor<float, 2> positions;        // (P, D), GPT-2
    std::vector<layer_weights> layers;
    tensor<float, 1> final_norm_weight, final_norm_bias;  // (D)
    tensor<float, 2> lm_head;          // (V, D); empty when tied to embed
};

// The matrices of model_weights held in bfloat16 (model::set_weight_dtype): the
// ones a decoded token reads whole, nearly all of a model's bytes. The norms'
// weights, the biases, GPT-2's position table (one row read per token) and
// Mixtral's router (its logits choose the experts, computed as the reference
// computes them) stay float.
struct layer_weights_bf16 {
    tensor<bfloat16, 2> wq, wk, wv, wo;            // as in layer_weights
    tensor<bfloat16, 2> fc, proj, gate, up, down;  // GPT-2 MLP, Llama SwiGLU
    tensor<bfloat16, 3> w1, w3, w2;                // Mixtral experts
};

struct model_weights_bf16 {
    tensor<bfloat16, 2> embed;    // (V, D)
    tensor<bfloat16, 2> lm_head;  // (V, D); empty when tied to embed
    std::vector<layer_weights_bf16> layers;
};

// The matrices of a layer quantized (model::quantize_weights); an empty
// quantized_matrix (rows 0) where the layer has no such matrix. Mixtral's
// experts are quantized one matrix per expert, w1[e], w3[e] (F, D) and w2[e]
// (D, F), each with its own scales (empty vectors for GPT-2 and Llama). The
// router stays float in layer_weights::router: it is E x D, a sliver of the
// layer's E (3 F D) expert weights, and its logits choose the experts, so a
// rounding there would change which experts run, not just a value.
struct layer_weights_quantized {
    quantized_matrix wq, wk, wv, wo, fc, proj, gate, up, down;
    std::vector<quantized_matrix> w1, w3, w2;  // Mixtral: E of (F, D), (F, D), (D, F)
};

// ---- quantized checkpoints -------------------------------------------------------
//
// A model holding its matrices quantized (cpu::model::quantize_weights, or
// quantize_weights_gptq) is written by save_quantized_model and read back by
// cpu::model::load in tinyllm's own layout (docs/quantization.md has the table):
// config.json as for the float model plus a "quantization_config" entry, and one
// model.safetensors whose tensors are named after model_weights' members —
//   embed (V, D); positions (P, D), GPT-2; final_norm.weight (D); final_norm.bias (D), GPT-2;
//   layers.L.attn_norm.weight, layers.L.ffn_norm.weight (D), and GPT-2's
//   layers.L.{attn_norm.bias, ffn_norm.bias, bq, bk, bv, bo, fc_bias, proj_bias};
//   Mixtral's router layers.L.router (E, D),  all F32;
// and, for each quantized matrix NAME (layers.L.wq ... layers.L.down, Mixtral's
// layers.L.experts.E.w1, .w3 (F, D) and .w2 (D, F) for each expert E, and
// lm_head when the output projection is untied), of N outputs and K inputs:
//   NAME.qweight  int8: I8 (N, K);  int4: U8 (N, K/2), two inputs per byte (quantize.hpp)
//   NAME.scales   F32 (N, 1) for int8, (N, K/G) for int4
//   NAME.zeros    U8 (N, K/G), int4 only.
// Hugging Face's quantized formats (GPTQ's packed int32 qweight, AWQ's, bitsandbytes')
// are other layouts; their configs are refused by name.

namespace detail {

// A layer's quantizable matrices: their checkpoint names, and where the model keeps them.
// (Pointers to members through aliases: nvcc's front end rewrites a plain
// `T C::*m` declaration with parentheses that GCC then warns about.)
using quantized_member = quantized_matrix layer_weights_quantized::*;
using matrix_member = tensor<float, 2> layer_weights::*;
using vector_member = tensor<float, 1> layer_weights::*;
struct layer_matrix_member {
    const char* name;
    quantized_member quantized;
    matrix_member dense;
};
inline constexpr layer_matrix_member layer_matrix_members[] = {
    {"wq", &layer_weights_quantized::wq, &layer_weights::wq},
    {"wk", &layer_weights_quantized::wk, &layer_weights::wk},
    {"wv", &layer_weights_quantized::wv, &layer_weights::wv},
    {"wo", &layer_weights_quantized::wo, &layer_weights::wo},
    {"fc", &layer_weights_quantized::fc, &layer_weights::fc},
    {"proj", &layer_weights_quantized::proj, &layer_weights::proj},
    {"gate", &layer_weights_quantized::gate, &layer_weights::gate},
    {"up", &layer_weights_quantized::up, &layer_weights::up},
    {"down", &layer_weights_quantized::down, &layer_weights::down},
};

// Mixtral's expert matrices: their names (layers.L.experts.E.NAME in a checkpoint),
// the per-expert quantized matrices and the float (E, rows, cols) tensor they come from.
using expert_quantized_member = std::vector<quantized_matrix> layer_weights_quantized::*;
using expert_member = tensor<float, 3> layer_weights::*;
struct layer_expert_member {
    const char* name;
    expert_quantized_member quantized;
    expert_member dense;
};
inline constexpr layer_expert_member layer_expert_members[] = {
    {"w1", &layer_weights_quantized::w1, &layer_weights::w1},
    {"w3", &layer_weights_quantized::w3, &layer_weights::w3},
    {"w2", &layer_weights_quantized::w2, &layer_weights::w2},
};

// The checkpoint name of expert e's matrix `name` in layer l: layers.L.experts.E.NAME.
inline std::string expert_matrix_name(std::size_t l, index_t e, std::string_view name) {
    return "layers." + std::to_string(l) + ".experts." + std::to_string(e) + "." + std::string(name);
}

// A layer's vectors (norm weights, biases), which stay float.
struct layer_vector_member {
    const char* name;
    vector_member vector;
};
inline constexpr layer_vector_member layer_vector_members[] = {
    {"attn_norm.weight", &layer_weights::attn_norm_weight}, {"attn_norm.bias", &layer_weights::attn_norm_bias},
    {"ffn_norm.weight", &layer_weights::ffn_norm_weight},   {"ffn_norm.bias", &layer_weights::ffn_norm_bias},
    {"bq", &layer_weights::bq}, {"bk", &layer_weights::bk}, {"bv", &layer_weights::bv}, {"bo", &layer_weights::bo},
    {"fc_bias", &layer_weights::fc_bias},                   {"proj_bias", &layer_weights::proj_bias},
};

// The shape (N outputs, K inputs) of a layer matrix of config c; {0, 0} where its architecture has none.
inline std::array<index_t, 2> layer_matrix_shape(const model_config& c, std::string_view name) {
    const index_t D = c.hidden_size, F = c.intermediate_size;
    const index_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
    const bool gpt2 = c.arch == model_arch::gpt2, llama = c.arch == model_arch::llama;
    if (name == "wq") return {q, D};
    if (name == "wk" || name == "wv") return {kv, D};
    if (name == "wo") return {D, q};
    if (gpt2 && name == "fc") return {F, D};
    if (gpt2 && name == "proj") return {D, F};
    if (llama && (name == "gate" || name == "up")) return {F, D};
    if (llama && name == "down") return {D, F};
    return {0, 0};
}

// The shape (N outputs, K inputs) of each expert's matrix `name` (w1, w3, w2) of config c;
// {0, 0} when it has no experts.
inline std::array<index_t, 2> expert_matrix_shape(const model_config& c, std::string_view name) {
    if (c.arch != model_arch::mixtral) return {0, 0};
    const index_t D = c.hidden_size, F = c.intermediate_size;
    return name == "w2" ? std::array<index_t, 2>{D, F} : std::array<index_t, 2>{F, D};
}

// The length of a layer vector of config c; 0 where its architecture has none.
inline index_t layer_vector_length(const model_config& c, std::string_view name) {
    if (name == "attn_norm.weight" || name == "ffn_norm.weight") return c.hidden_size;
    if (c.arch != model_arch::gpt2) return 0;
    return name == "fc_bias" ? c.intermediate_size : c.hidden_size;  // GPT-2: norm biases, bq bk bv bo, proj_bias
}

// Calls f(name, matrix) for each matrix quantize_model.hpp quantizes (the layers' and an
// untied head's, each Mixtral expert's on its own), and
// g(bytes) for the float32 bytes of every tensor that is not. W is model_weights
// (f may change the matrices) or const model_weights (f only reads them).
template <class W, class F, class G>
void for_each_quantized_matrix(W& w, F&& f, G&& kept) {
    auto keep = [&](const auto& t) { kept(static_cast<index_t>(sizeof(float)) * t.size()); };
    keep(w.embed), keep(w.positions), keep(w.final_norm_weight), keep(w.final_norm_bias);
    if (w.lm_head.size()) f(std::string("lm_head"), w.lm_head);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
        auto& L = w.layers[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        keep(L.attn_norm_weight), keep(L.attn_norm_bias), keep(L.ffn_norm_weight), keep(L.ffn_norm_bias);
        keep(L.bq), keep(L.bk), keep(L.bv), keep(L.bo), keep(L.fc_bias), keep(L.proj_bias), keep(L.router);
        for (const auto& [name, member, dense] : layer_matrix_members)  // detail::layer_matrix_members, above
            if ((L.*dense).size()) f(p + name, L.*dense);
        for (const auto& [name, quantized, dense] : layer_expert_members) {
            auto* experts = &(L.*dense);
            if (!experts->size()) continue;
            const index_t E = experts->extent(0), rows = experts->extent(1), cols = experts->extent(2);
            for (index_t e = 0; e < E; ++e) {
                // Expert e's matrix as its own (rows, cols) tensor, written back after f.
                tensor<float, 2> m(extents<2>{rows, cols});
                std::copy_n(experts->data() + e * rows * cols, rows * cols, m.data());
                f(expert_matrix_name(l, e, name), m);
                if constexpr (!std::is_const_v<W>) std::copy_n(m.data(), rows * cols, experts->data() + e * rows * cols);
            }
        }
    }
}


// Read NAME.qweight, NAME.scales and NAME.zeros as the (N, K) matrix `spec` makes;
// any tensor missing, of another dtype or shape, or holding a value the format
// cannot (int8 -128, a zero point above 15, a negative or non-finite scale) is
// an error naming it.
inline quantized_matrix read_quantized_matrix(const safetensors_checkpoint& ck, const std::string& where,
                                              const std::string& name, index_t N, index_t K, const quant_spec& spec) {
    const bool int8 = spec.format == quant_format::int8;
    if (!int8 && K % spec.group != 0)
        TINYLLM_FAIL("checkpoint '", where, "': its quantization (", spec.name(), ") has groups of ", spec.group,
                     " inputs, which do not divide the ", K, " inputs of ", name, " (", N, " x ", K, ")");
    const auto raw = [&](const char* suffix, st_dtype dtype, index_t rows, index_t cols) -> const safetensors_tensor& {
        const std::string full = name + suffix;
        const safetensors_tensor* t = ck.find(full);
        if (!t)
            TINYLLM_FAIL("checkpoint '", where, "': its config says the matrices are ", spec.name(),
                         " but tensor '", full, "' is missing");
        const bool ok = t->dtype == dtype && t->shape.size() == 2 && t->shape[0] == rows && t->shape[1] == cols;
        if (!ok)
            TINYLLM_FAIL("checkpoint '", where, "': tensor '", full, "' is ", st_dtype_name(t->dtype), " ",
                         safetensors_file::shape_string(t->shape), " but the config (", spec.name(), ", ", name,
                         " of ", N, " x ", K, ") asks for ", st_dtype_name(dtype), " ",
                         safetensors_file::shape_string({rows, cols}));
        return *t;
    };
    // Every tensor checked before anything is allocated: N and K come from the
    // config, and only the file's tensors vouch for them.
    const safetensors_tensor& values = raw(".qweight", int8 ? st_dtype::i8 : st_dtype::u8, N, spec.row_bytes(K));
    const safetensors_tensor& scales = raw(".scales", st_dtype::f32, N, spec.groups(K));
    const safetensors_tensor* zeros = int8 ? nullptr : &raw(".zeros", st_dtype::u8, N, spec.groups(K));
    quantized_matrix q = empty_quantized(N, K, spec);
    std::memcpy(q.data.data(), values.data, q.data.size());
    if (int8)
        for (std::size_t i = 0; i < q.data.size(); ++i)
            if (q.data[i] == 0x80)
                TINYLLM_FAIL("checkpoint '", where, "': ", name, ".qweight holds -128 at (",
                             static_cast<index_t>(i) / K, ", ", static_cast<index_t>(i) % K,
                             "); int8 weights are in [-127, 127]");
    q.scales = to_tensor<float, 2>(scales);
    for (index_t n = 0; n < N; ++n)
        for (index_t g = 0; g < q.groups(); ++g)
            if (!std::isfinite(q.scales(n, g)) || q.scales(n, g) < 0.0f)
                TINYLLM_FAIL("checkpoint '", where, "': ",
                             name, ".scales(", n, ", ", g, ") = ", q.scales(n, g), "; scales are finite and >= 0");
    if (!int8) {
        q.zeros = to_tensor<std::uint8_t, 2>(*zeros);
        for (index_t n = 0; n < N; ++n)
            for (index_t g = 0; g < q.groups(); ++g)
                if (q.zeros(n, g) > 15)
                    TINYLLM_FAIL("checkpoint '", where, "': ", name, ".zeros(", n, ", ", g,
                                 ") = ", static_cast<int>(q.zeros(n, g)), "; int4 zero points are in [0, 15]");
    } else {
        if (ck.contains(name + ".zeros"))
            TINYLLM_FAIL("checkpoint '", where, "': tensor '", name,
                         ".zeros' is there, but int8 matrices have no zero points (is the config's format right?)");
    }
    return q;
}

}  // namespace detail

// Why `spec` cannot quantize `w`: "the group size G does not divide the K inputs
// of NAME (N x K)" for the first matrix whose inputs an int4 group size does not
// divide; empty when it can (always for int8).
inline std::string quant_spec_mismatch(const model_weights& w, const quant_spec& spec) {
    std::string why;
    if (spec.format != quant_format::int4) return why;
    detail::for_each_quantized_matrix(
        w,
        [&](const std::string& name, const tensor<float, 2>& m) {
            if (why.empty() && m.extent(1) % spec.group != 0)
                why = tinyllm::detail::cat("the group size ", spec.group, " does not divide the ", m.extent(1),
                                           " inputs of ", name, " (", m.extent(0), " x ", m.extent(1), ")");
        },
        [](index_t) {});
    return why;
}

// What a quantized checkpoint holds: the float tensors, with the quantized
// matrices left empty, and the quantized matrices.
struct quantized_model_weights {
    model_weights floats;
    std::vector<layer_weights_quantized> layers;
    quantized_matrix lm_head;  // an untied output projection; empty when tied to the embedding
};

// Read a quantized checkpoint (the layout above) of config c, whose
// quantization_config names its format. Every tensor the config implies must
// be there with its dtype and shape, and no other: a checkpoint whose
// quantization config and tensors disagree is an error that names the tensor.
inline quantized_model_weights load_quantized_model_weights(const model_config& c, const safetensors_checkpoint& ck,
                                                            const std::string& where) {
    if (!c.quantization) TINYLLM_FAIL("load_quantized_model_weights: '", where, "' has no quantization_config");
    const quant_spec& spec = *c.quantization;
    const index_t D = c.hidden_size, V = c.vocab_size;
    std::set<std::string> expected;
    const auto vector = [&](const std::string& name, index_t n) {
        expected.insert(name);
        return ck.load(name, extents<1>{n});
    };
    const auto matrix = [&](const std::string& name, index_t rows, index_t cols) {
        expected.insert(name);
        return ck.load(name, extents<2>{rows, cols});
    };
    const auto quantized = [&](const std::string& name, index_t N, index_t K) {
        expected.insert(name + ".qweight");
        expected.insert(name + ".scales");
        if (spec.format == quant_format::int4) expected.insert(name + ".zeros");
        return detail::read_quantized_matrix(ck, where, name, N, K, spec);
    };
    quantized_model_weights q;
    model_weights& w = q.floats;
    w.embed = matrix("embed", V, D);
    if (c.arch == model_arch::gpt2) w.positions = matrix("positions", c.max_positions, D);
    w.final_norm_weight = vector("final_norm.weight", D);
    if (c.arch == model_arch::gpt2) w.final_norm_bias = vector("final_norm.bias", D);
    if (!c.tie_word_embeddings) q.lm_head = quantized("lm_head", V, D);
    detail::expect_last_layer(c, ck, "layers." + std::to_string(c.num_layers - 1) + ".attn_norm.weight");
    // Layer by layer (not num_layers at once): the file's tensors vouch for each.
    for (index_t l = 0; l < c.num_layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        layer_weights& L = w.layers.emplace_back();
        q.layers.emplace_back();
        for (const auto& [name, member] : detail::layer_vector_members)
            if (const index_t n = detail::layer_vector_length(c, name)) L.*member = vector(p + name, n);
        for (const auto& [name, member, dense] : detail::layer_matrix_members)
            if (const auto [N, K] = detail::layer_matrix_shape(c, name); N > 0)
                q.layers[static_cast<std::size_t>(l)].*member = quantized(p + name, N, K);
        if (c.arch == model_arch::mixtral) {
            // The router (float) and each expert's three matrices (quantized).
            L.router = matrix(p + "router", c.num_experts, D);
            for (const auto& [name, member, dense] : detail::layer_expert_members) {
                const auto [N, K] = detail::expert_matrix_shape(c, name);
                std::vector<quantized_matrix>& experts = q.layers[static_cast<std::size_t>(l)].*member;
                for (index_t e = 0; e < c.num_experts; ++e)
                    experts.push_back(quantized(detail::expert_matrix_name(static_cast<std::size_t>(l), e, name), N, K));
            }
        }
    }
    for (const std::string& name : ck.names())
        if (!expected.count(name))
            TINYLLM_FAIL("checkpoint '", where, "': tensor '", name, "' is not part of a ",
                         spec.name(), " ", c.architecture, " of this config (docs/quantization.md lists the tensors)");
    return q;
}

namespace detail {

// Calls f(float tensor, its bf16 counterpart) for every matrix the two hold in common
// (model_weights and model_weights_bf16 of as many layers, const or not).
template <class W, class W16, class F>
void for_each_matrix(W& w, W16& b, F&& f) {
    f(w.embed, b.embed);
    f(w.lm_head, b.lm_head);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
        auto& L = w.layers[l];
        auto& B = b.layers[l];
        f(L.wq, B.wq), f(L.wk, B.wk), f(L.wv, B.wv), f(L.wo, B.wo);
        f(L.fc, B.fc), f(L.proj, B.proj), f(L.gate, B.gate), f(L.up, B.up), f(L.down, B.down);
        f(L.w1, B.w1), f(L.w3, B.w3), f(L.w2, B.w2);
    }
}

// dst = src converted element by element (bf16: rounded to nearest even; float: widened
// exactly), then src released, so that at most one matrix is held twice at a time.
template <class To, class From, std::size_t R>
void convert_releasing(tensor<To, R>& dst, tensor<From, R>& src) {
    dst = tensor<To, R>(src.shape());
    const From* in = src.data();
    To* out = dst.data();
    for (index_t i = 0; i < src.size(); ++i) {
        if constexpr (std::is_same_v<To, bfloat16>) out[i] = float_to_bf16(in[i]);
        else out[i] = bf16_to_float(in[i]);
    }
    src = tensor<From, R>();
}

// The transpose of a (rows, cols) tensor, as a new (cols, rows) tensor: GPT-2
// stores its projections as Conv1D (in, out); tinyllm uses Linear's (out, in).
inline tensor<float, 2> transposed(const tensor<float, 2>& a) {
    tensor<float, 2> t(extents<2>{a.extent(1), a.extent(0)});
    for (index_t i = 0; i < a.extent(0); ++i)
        for (index_t j = 0; j < a.extent(1); ++j) t(j, i) = a(i, j);
    return t;
}

inline tensor<float, 2> rows_of(const tensor<float, 2>& a, index_t first, index_t count) {
    tensor<float, 2> r(extents<2>{count, a.extent(1)});
    for (index_t i = 0; i < count; ++i)
        for (index_t j = 0; j < a.extent(1); ++j) r(i, j) = a(first + i, j);
    return r;
}

inline tensor<float, 1> slice_of(const tensor<float, 1>& a, index_t first, index_t count) {
    tensor<float, 1> r(extents<1>{count});
    for (index_t i = 0; i < count; ++i) r(i) = a(first + i);
    return r;
}

}  // namespace detail

// Load the weights of `config` from a checkpoint, checking every shape.
inline model_weights load_model_weights(const model_config& c, const safetensors_checkpoint& ck) {
    const index_t D = c.hidden_size, V = c.vocab_size, F = c.intermediate_size, Dh = c.head_dim;
    const index_t q_out = c.num_heads * Dh, kv_out = c.num_kv_heads * Dh;
    model_weights w;
    if (c.arch == model_arch::gpt2) {
        // transformers saves "transformer.wte.weight"; the original GPT-2
        // checkpoints on the Hub (openai-community/gpt2) omit the prefix.
        const std::string t = ck.contains("transformer.wte.weight") ? "transformer." : "";
        w.layout.gpt2_prefix = t;
        w.embed = ck.load(t + "wte.weight", extents<2>{V, D});
        w.positions = ck.load(t + "wpe.weight", extents<2>{c.max_positions, D});
        detail::expect_last_layer(c, ck, t + "h." + std::to_string(c.num_layers - 1) + ".ln_1.weight");
        // Layer by layer (not num_layers at once): the file's tensors vouch for each.
        for (index_t l = 0; l < c.num_layers; ++l) {
            const std::string p = t + "h." + std::to_string(l) + ".";
            layer_weights& L = w.layers.emplace_back();
            L.attn_norm_weight = ck.load(p + "ln_1.weight", extents<1>{D});
            L.attn_norm_bias = ck.load(p + "ln_1.bias", extents<1>{D});
            L.ffn_norm_weight = ck.load(p + "ln_2.weight", extents<1>{D});
            L.ffn_norm_bias = ck.load(p + "ln_2.bias", extents<1>{D});
            // c_attn is one Conv1D (D, 3D) producing q | k | v side by side.
            const auto qkv = detail::transposed(ck.load(p + "attn.c_attn.weight", extents<2>{D, 3 * D}));  // (3D, D)
            const auto qkv_bias = ck.load(p + "attn.c_attn.bias", extents<1>{3 * D});
            L.wq = detail::rows_of(qkv, 0, D);
            L.wk = detail::rows_of(qkv, D, D);
            L.wv = detail::rows_of(qkv, 2 * D, D);
            L.bq = detail::slice_of(qkv_bias, 0, D);
            L.bk = detail::slice_of(qkv_bias, D, D);
            L.bv = detail::slice_of(qkv_bias, 2 * D, D);
            L.wo = detail::transposed(ck.load(p + "attn.c_proj.weight", extents<2>{D, D}));
            L.bo = ck.load(p + "attn.c_proj.bias", extents<1>{D});
            L.fc = detail::transposed(ck.load(p + "mlp.c_fc.weight", extents<2>{D, F}));
            L.fc_bias = ck.load(p + "mlp.c_fc.bias", extents<1>{F});
            L.proj = detail::transposed(ck.load(p + "mlp.c_proj.weight", extents<2>{F, D}));
            L.proj_bias = ck.load(p + "mlp.c_proj.bias", extents<1>{D});
        }
        w.final_norm_weight = ck.load(t + "ln_f.weight", extents<1>{D});
        w.final_norm_bias = ck.load(t + "ln_f.bias", extents<1>{D});
        if (!c.tie_word_embeddings) w.lm_head = ck.load("lm_head.weight", extents<2>{V, D});
        return w;
    }
    w.embed = ck.load("model.embed_tokens.weight", extents<2>{V, D});
    detail::expect_last_layer(c, ck, "model.layers." + std::to_string(c.num_layers - 1) + ".input_layernorm.weight");
    // Layer by layer (not num_layers at once): the file's tensors vouch for each.
    for (index_t l = 0; l < c.num_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        layer_weights& L = w.layers.emplace_back();
        L.attn_norm_weight = ck.load(p + "input_layernorm.weight", extents<1>{D});
        L.ffn_norm_weight = ck.load(p + "post_attention_layernorm.weight", extents<1>{D});
        L.wq = ck.load(p + "self_attn.q_proj.weight", extents<2>{q_out, D});
        L.wk = ck.load(p + "self_attn.k_proj.weight", extents<2>{kv_out, D});
        L.wv = ck.load(p + "self_attn.v_proj.weight", extents<2>{kv_out, D});
        L.wo = ck.load(p + "self_attn.o_proj.weight", extents<2>{D, q_out});
        if (c.arch == model_arch::llama) {
            L.gate = ck.load(p + "mlp.gate_proj.weight", extents<2>{F, D});
            L.up = ck.load(p + "mlp.up_proj.weight", extents<2>{F, D});
            L.down = ck.load(p + "mlp.down_proj.weight", extents<2>{D, F});
        } else {
            // Two layouts: one tensor per expert matrix (block_sparse_moe.experts.N.w1/w3/w2, the
            // original Mixtral release and transformers < 5), or all experts in one tensor
            // (mlp.experts.gate_up_proj = [w1; w3] per expert, mlp.experts.down_proj; transformers >= 5).
            // The (E, F, D) tensors are allocated only once the checkpoint's own
            // shapes (the router's, the experts') have confirmed E, F and D.
            const index_t E = c.num_experts;
            w.layout.fused_experts = ck.contains(p + "mlp.gate.weight");
            if (w.layout.fused_experts) {
                L.router = ck.load(p + "mlp.gate.weight", extents<2>{E, D});
                const auto gate_up = ck.load(p + "mlp.experts.gate_up_proj", extents<3>{E, 2 * F, D});
                L.w1 = tensor<float, 3>(extents<3>{E, F, D});
                L.w3 = tensor<float, 3>(extents<3>{E, F, D});
                for (index_t e = 0; e < E; ++e) {
                    const float* src = gate_up.data() + e * 2 * F * D;
                    std::copy(src, src + F * D, L.w1.data() + e * F * D);
                    std::copy(src + F * D, src + 2 * F * D, L.w3.data() + e * F * D);
                }
                L.w2 = ck.load(p + "mlp.experts.down_proj", extents<3>{E, D, F});
                continue;
            }
            L.router = ck.load(p + "block_sparse_moe.gate.weight", extents<2>{E, D});
            const std::string last = p + "block_sparse_moe.experts." + std::to_string(E - 1) + ".w2.weight";
            if (!ck.contains(last))
                TINYLLM_FAIL("checkpoint '", ck.dir(), "' has no tensor '", last, "' of the last of the ", E,
                             " experts its config.json announces (\"num_local_experts\")");
            // Every expert's three matrices there with their shapes before the (E, F, D)
            // tensors are allocated: E comes from the config, and only the file vouches for it.
            for (index_t e = 0; e < E; ++e) {
                const std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
                ck.expect(q + "w1.weight", extents<2>{F, D});
                ck.expect(q + "w3.weight", extents<2>{F, D});
                ck.expect(q + "w2.weight", extents<2>{D, F});
            }
            for (index_t e = 0; e < E; ++e) {
                const std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
                const auto w1 = ck.load(q + "w1.weight", extents<2>{F, D});
                const auto w3 = ck.load(q + "w3.weight", extents<2>{F, D});
                const auto w2 = ck.load(q + "w2.weight", extents<2>{D, F});
                if (e == 0) {
                    L.w1 = tensor<float, 3>(extents<3>{E, F, D});
                    L.w3 = tensor<float, 3>(extents<3>{E, F, D});
                    L.w2 = tensor<float, 3>(extents<3>{E, D, F});
                }
                std::copy(w1.values().begin(), w1.values().end(), L.w1.data() + e * F * D);
                std::copy(w3.values().begin(), w3.values().end(), L.w3.data() + e * F * D);
                std::copy(w2.values().begin(), w2.values().end(), L.w2.data() + e * D * F);
            }
        }
    }
    w.final_norm_weight = ck.load("model.norm.weight", extents<1>{D});
    if (!c.tie_word_embeddings) w.lm_head = ck.load("lm_head.weight", extents<2>{V, D});
    return w;
}

// ---- writing weights (or their gradients) under the checkpoint's names ----------

// One tensor as the checkpoint stores it: its name, shape and row-major values.
struct checkpoint_tensor {
    std::string name;
    std::vector<index_t> shape;
    std::vector<float> values;
};

// The inverse of load_model_weights: every tensor of `w` under the name, layout
// and shape the checkpoint it came from uses (w.layout): GPT-2's Conv1D
// matrices transposed back to (in, out) and q | k | v joined into c_attn;
// Mixtral's experts one tensor per matrix or fused, as loaded. A tied output
// projection is not written (Hugging Face does not store it). Applied to a
// gradient buffer (zeros_like(w) filled by forward_backward), it names each
// gradient as PyTorch names the parameter's .grad.
inline std::vector<checkpoint_tensor> checkpoint_tensors(const model_config& c, const model_weights& w) {
    std::vector<checkpoint_tensor> out;
    auto put = [&]<std::size_t R>(const std::string& name, const tensor<float, R>& t) {
        checkpoint_tensor ct{name, {}, t.values()};
        for (std::size_t d = 0; d < R; ++d) ct.shape.push_back(t.extent(d));
        out.push_back(std::move(ct));
    };
    auto transposed_put = [&](const std::string& name, const tensor<float, 2>& t) { put(name, detail::transposed(t)); };
    const index_t D = c.hidden_size, F = c.intermediate_size, E = c.num_experts;
    if (c.arch == model_arch::gpt2) {
        const std::string t = w.layout.gpt2_prefix;
        put(t + "wte.weight", w.embed);
        put(t + "wpe.weight", w.positions);
        for (index_t l = 0; l < c.num_layers; ++l) {
            const std::string p = t + "h." + std::to_string(l) + ".";
            const layer_weights& L = w.layers[static_cast<std::size_t>(l)];
            put(p + "ln_1.weight", L.attn_norm_weight);
            put(p + "ln_1.bias", L.attn_norm_bias);
            tensor<float, 2> c_attn(extents<2>{D, 3 * D});  // (in, out) = [wq; wk; wv]^T
            tensor<float, 1> c_attn_bias(extents<1>{3 * D});
            for (index_t part = 0; part < 3; ++part) {
                const tensor<float, 2>& m = part == 0 ? L.wq : part == 1 ? L.wk : L.wv;
                const tensor<float, 1>& b = part == 0 ? L.bq : part == 1 ? L.bk : L.bv;
                for (index_t o = 0; o < D; ++o) {
                    for (index_t i = 0; i < D; ++i) c_attn(i, part * D + o) = m(o, i);
                    c_attn_bias(part * D + o) = b(o);
                }
            }
            put(p + "attn.c_attn.weight", c_attn);
            put(p + "attn.c_attn.bias", c_attn_bias);
            transposed_put(p + "attn.c_proj.weight", L.wo);
            put(p + "attn.c_proj.bias", L.bo);
            put(p + "ln_2.weight", L.ffn_norm_weight);
            put(p + "ln_2.bias", L.ffn_norm_bias);
            transposed_put(p + "mlp.c_fc.weight", L.fc);
            put(p + "mlp.c_fc.bias", L.fc_bias);
            transposed_put(p + "mlp.c_proj.weight", L.proj);
            put(p + "mlp.c_proj.bias", L.proj_bias);
        }
        put(t + "ln_f.weight", w.final_norm_weight);
        put(t + "ln_f.bias", w.final_norm_bias);
    } else {
        put("model.embed_tokens.weight", w.embed);
        for (index_t l = 0; l < c.num_layers; ++l) {
            const std::string p = "model.layers." + std::to_string(l) + ".";
            const layer_weights& L = w.layers[static_cast<std::size_t>(l)];
            put(p + "input_layernorm.weight", L.attn_norm_weight);
            put(p + "post_attention_layernorm.weight", L.ffn_norm_weight);
            put(p + "self_attn.q_proj.weight", L.wq);
            put(p + "self_attn.k_proj.weight", L.wk);
            put(p + "self_attn.v_proj.weight", L.wv);
            put(p + "self_attn.o_proj.weight", L.wo);
            if (c.arch == model_arch::llama) {
                put(p + "mlp.gate_proj.weight", L.gate);
                put(p + "mlp.up_proj.weight", L.up);
                put(p + "mlp.down_proj.weight", L.down);
            } else if (w.layout.fused_experts) {
                put(p + "mlp.gate.weight", L.router);
                tensor<float, 3> gate_up(extents<3>{E, 2 * F, D});  // per expert: w1 rows, then w3 rows
                for (index_t e = 0; e < E; ++e) {
                    std::copy(L.w1.data() + e * F * D, L.w1.data() + (e + 1) * F * D, gate_up.data() + e * 2 * F * D);
                    std::copy(L.w3.data() + e * F * D, L.w3.data() + (e + 1) * F * D,
                              gate_up.data() + e * 2 * F * D + F * D);
                }
                put(p + "mlp.experts.gate_up_proj", gate_up);
                put(p + "mlp.experts.down_proj", L.w2);
            } else {
                put(p + "block_sparse_moe.gate.weight", L.router);
                for (index_t e = 0; e < E; ++e) {
                    const std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
                    auto matrix = [&](const tensor<float, 3>& m, index_t rows, index_t cols) {
                        tensor<float, 2> r(extents<2>{rows, cols});
                        std::copy(m.data() + e * rows * cols, m.data() + (e + 1) * rows * cols, r.data());
                        return r;
                    };
                    put(q + "w1.weight", matrix(L.w1, F, D));
                    put(q + "w2.weight", matrix(L.w2, D, F));
                    put(q + "w3.weight", matrix(L.w3, F, D));
                }
            }
        }
        put("model.norm.weight", w.final_norm_weight);
    }
    if (!c.tie_word_embeddings) put("lm_head.weight", w.lm_head);
    return out;
}

// Write tensors (checkpoint_tensors' result) to one .safetensors file, float32.
inline void save_checkpoint_tensors(const std::string& path, const std::vector<checkpoint_tensor>& tensors) {
    std::vector<safetensors_entry> entries;
    for (const checkpoint_tensor& t : tensors) {
        const float* p = t.values.data();
        switch (t.shape.size()) {
            case 1: entries.emplace_back(t.name, tensor_view<const float, 1>(p, {t.shape[0]})); break;
            case 2: entries.emplace_back(t.name, tensor_view<const float, 2>(p, {t.shape[0], t.shape[1]})); break;
            case 3:
                entries.emplace_back(t.name, tensor_view<const float, 3>(p, {t.shape[0], t.shape[1], t.shape[2]}));
                break;
            default: TINYLLM_FAIL("save_checkpoint_tensors: '", t.name, "' has ", t.shape.size(), " dimensions");
        }
    }
    save_safetensors(path, entries);
}

// ---- writing a model in Hugging Face's layout -----------------------------------

namespace detail {

// x as JSON text (json::format_number: the shortest that reads back as load_model_config
// reads it, in every locale). A training log may hold a loss that is not finite: that is
// written NaN, Infinity or -Infinity, as Python's json writes and reads them.
template <class T>
std::string json_number(T x) {
    if (x != x) return "NaN";
    if (x - x != 0) return x > 0 ? "Infinity" : "-Infinity";
    return json::format_number(x);
}

}  // namespace detail

// config.json for `c`, as transformers writes it for the architecture: the
// fields load_model_config reads (it reads this text back to the same config)
// and that transformers' AutoConfig needs, float32 weights. RoPE must be what
// transformers' Llama and Mixtral compute: rotate_half pairing over the whole
// head (other pairings are refused). A config that load_model_config would
// refuse (an eos_token_id outside the vocabulary, a non-positive eps, ...) is
// refused here, so that nothing is saved that cannot be loaded.
inline std::string model_config_json(const model_config& c) {
    const auto n = [](index_t v) { return std::to_string(v); };
    const auto f = [](double v) { return detail::json_number(v); };
    std::string j = "{\n";
    const auto field = [&j](const std::string& key, const std::string& value) {
        j += "  \"" + key + "\": " + value + ",\n";
    };
    const bool gpt2 = c.arch == model_arch::gpt2;
    const std::string architecture =
        gpt2 ? "GPT2LMHeadModel" : c.arch == model_arch::llama ? "LlamaForCausalLM" : "MixtralForCausalLM";
    field("architectures", "[\"" + architecture + "\"]");
    field("model_type", gpt2 ? "\"gpt2\"" : c.arch == model_arch::llama ? "\"llama\"" : "\"mixtral\"");
    field("vocab_size", n(c.vocab_size));
    if (gpt2) {
        field("n_embd", n(c.hidden_size));
        field("n_layer", n(c.num_layers));
        field("n_head", n(c.num_heads));
        field("n_inner", n(c.intermediate_size));
        field("n_positions", n(c.max_positions));
        field("n_ctx", n(c.max_positions));
        field("layer_norm_epsilon", detail::json_number(c.norm_eps));
        field("activation_function", "\"gelu_new\"");
    } else {
        TINYLLM_EXPECT(c.rope.pairing == rope_pairing::rotate_half &&
                           (c.rope.rotary_dim == 0 || c.rope.rotary_dim == c.head_dim),
                       "model_config_json: transformers' ", architecture, " rotates whole heads in halves; this "
                       "model's RoPE (", to_string(c.rope.pairing), ", ", c.rope.rotary_dim, " of ", c.head_dim,
                       " features) cannot be written for it");
        field("hidden_size", n(c.hidden_size));
        field("intermediate_size", n(c.intermediate_size));
        field("num_hidden_layers", n(c.num_layers));
        field("num_attention_heads", n(c.num_heads));
        field("num_key_value_heads", n(c.num_kv_heads));
        field("head_dim", n(c.head_dim));
        field("max_position_embeddings", n(c.max_positions));
        field("rms_norm_eps", detail::json_number(c.norm_eps));
        field("hidden_act", "\"silu\"");
        field("rope_theta", f(c.rope.theta));
        switch (c.rope.scaling) {
            case rope_scaling::none: field("rope_scaling", "null"); break;
            case rope_scaling::linear:
                field("rope_scaling", "{\"rope_type\": \"linear\", \"factor\": " + f(c.rope.factor) + "}");
                break;
            case rope_scaling::llama3:
                // (Checked before the conversion to an integer, which 1e300 would overflow.)
                if (const double p = c.rope.original_max_position_embeddings;
                    !(p >= 1 && p <= static_cast<double>(detail::config_dim_max) && std::floor(p) == p))
                    TINYLLM_FAIL("model_config_json: rope original_max_position_embeddings = ", p,
                                 " must be a whole number of positions in [1, 2^31] (config.json holds an integer)");
                field("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": " + f(c.rope.factor) +
                                          ", \"low_freq_factor\": " + f(c.rope.low_freq_factor) +
                                          ", \"high_freq_factor\": " + f(c.rope.high_freq_factor) +
                                          ", \"original_max_position_embeddings\": " +
                                          n(static_cast<index_t>(c.rope.original_max_position_embeddings)) + "}");
                break;
            case rope_scaling::ntk:
                TINYLLM_FAIL("model_config_json: NTK-scaled RoPE has no Llama config.json form");
        }
        field("attention_bias", "false");
        field("mlp_bias", "false");
        if (c.arch == model_arch::mixtral) {
            field("num_local_experts", n(c.num_experts));
            field("num_experts_per_tok", n(c.experts_per_token));
            field("router_aux_loss_coef", f(c.router_aux_loss_coef));
            field("sliding_window", "null");
        }
    }
    // GPT2Config defaults bos_token_id to 50256, outside a smaller vocabulary; GPT-2 begins
    // a text with its end-of-text token, so the two are the same id (as in openai-community/gpt2).
    if (gpt2 && !c.eos_token_ids.empty()) field("bos_token_id", std::to_string(c.eos_token_ids[0]));
    if (c.eos_token_ids.size() == 1) field("eos_token_id", std::to_string(c.eos_token_ids[0]));
    else if (!c.eos_token_ids.empty()) {
        std::string list = "[";
        for (std::size_t i = 0; i < c.eos_token_ids.size(); ++i)
            list += (i ? ", " : "") + std::to_string(c.eos_token_ids[i]);
        field("eos_token_id", list + "]");
    }
    if (c.quantization) {
        const bool int8 = c.quantization->format == quant_format::int8;
        field("quantization_config", "{\"quant_method\": \"tinyllm\", \"format\": \"" + c.quantization->name() +
                                         "\", \"bits\": " + n(int8 ? 8 : 4) + ", \"group_size\": " +
                                         n(int8 ? 0 : c.quantization->group) + ", \"method\": " +
                                         json::quote(c.quantization_method.empty() ? "rtn" : c.quantization_method) +
                                         "}");
    }
    field("torch_dtype", "\"float32\"");
    j += "  \"tie_word_embeddings\": " + std::string(c.tie_word_embeddings ? "true" : "false") + "\n}\n";
    try {
        (void)model_config_from_json(json::parse(j, "config.json"), "config.json");
    } catch (const error& e) {
        throw error(detail::cat("model_config_json: this config would not load back: ", e.what()));
    }
    return j;
}

// Write a model to DIR as Hugging Face publishes one: config.json
// (model_config_json) and model.safetensors (checkpoint_tensors: the names of
// the layout the weights were loaded from, transformers' by default), float32.
// model::load, tinyllm generate and transformers' AutoModelForCausalLM read it.
// DIR is created if needed; each file is written beside its final name and
// renamed into place, so an interrupted save never leaves a half-written file
// under the real name.
inline void save_model(const std::string& dir, const model_config& c, const model_weights& w) {
    namespace fs = std::filesystem;
    TINYLLM_EXPECT(!c.quantization, "save_model: writes float checkpoints, and this config's matrices are quantized (",
                   c.quantization->name(), "); save_quantized_model writes those");
    TINYLLM_EXPECT(w.embed.size() == c.vocab_size * c.hidden_size && static_cast<index_t>(w.layers.size()) == c.num_layers,
                   "save_model: the weights do not hold this config's float32 embedding and ", c.num_layers,
                   " layers (a model holding bf16 matrices: set_weight_dtype(weight_dtype::float32) first)");
    const std::string config_text = model_config_json(c);  // refuses a config that would not load, before any write
    std::error_code ec;
    fs::create_directories(dir, ec);
    TINYLLM_EXPECT(!ec, "save_model: cannot create the directory '", dir, "': ", ec.message());
    const std::string weights = (fs::path(dir) / "model.safetensors").string();
    save_checkpoint_tensors(weights + ".tmp", checkpoint_tensors(c, w));
    detail::rename_into_place(weights + ".tmp", weights, "save_model");
    detail::write_file_replacing((fs::path(dir) / "config.json").string(), config_text, "save_model");
}

// ---- random models of real shapes (benchmarks, tests, the tour) ---------------

// Weights for `c` drawn from Philox: every matrix uniform in [-a, a] with
// a = 1/sqrt(fan_in) (torch.nn.Linear's init), the embedding and position
// tables uniform in [-1, 1], norm weights 1 and biases 0. Same seed, same model.
inline model_weights random_model_weights(const model_config& c, std::uint64_t seed) {
    const index_t D = c.hidden_size, V = c.vocab_size, F = c.intermediate_size, Dh = c.head_dim;
    const index_t q_out = c.num_heads * Dh, kv_out = c.num_kv_heads * Dh;
    const bool gpt2 = c.arch == model_arch::gpt2;
    auto uniform = [&seed]<std::size_t R>(const extents<R>& shape, float a) {
        tensor<float, R> t(shape);
        cpu::fill_uniform(t.view(), seed++, -a, a);
        return t;
    };
    auto matrix = [&](index_t out, index_t in) { return uniform(extents<2>{out, in}, 1.0f / std::sqrt(static_cast<float>(in))); };
    auto ones = [](index_t n) { return tensor<float, 1>(extents<1>{n}, 1.0f); };
    auto zeros_if = [](bool yes, index_t n) { return yes ? tensor<float, 1>(extents<1>{n}, 0.0f) : tensor<float, 1>(); };
    model_weights w;
    w.embed = uniform(extents<2>{V, D}, 1.0f);
    if (gpt2) w.positions = uniform(extents<2>{c.max_positions, D}, 1.0f);
    for (index_t l = 0; l < c.num_layers; ++l) {
        layer_weights L;
        L.attn_norm_weight = ones(D);
        L.ffn_norm_weight = ones(D);
        L.attn_norm_bias = zeros_if(gpt2, D);
        L.ffn_norm_bias = zeros_if(gpt2, D);
        L.wq = matrix(q_out, D);
        L.wk = matrix(kv_out, D);
        L.wv = matrix(kv_out, D);
        L.wo = matrix(D, q_out);
        if (gpt2) {
            L.bq = zeros_if(true, q_out);
            L.bk = zeros_if(true, kv_out);
            L.bv = zeros_if(true, kv_out);
            L.bo = zeros_if(true, D);
            L.fc = matrix(F, D);
            L.fc_bias = zeros_if(true, F);
            L.proj = matrix(D, F);
            L.proj_bias = zeros_if(true, D);
        } else if (c.arch == model_arch::llama) {
            L.gate = matrix(F, D);
            L.up = matrix(F, D);
            L.down = matrix(D, F);
        } else {
            const index_t E = c.num_experts;
            L.router = matrix(E, D);
            L.w1 = uniform(extents<3>{E, F, D}, 1.0f / std::sqrt(static_cast<float>(D)));
            L.w3 = uniform(extents<3>{E, F, D}, 1.0f / std::sqrt(static_cast<float>(D)));
            L.w2 = uniform(extents<3>{E, D, F}, 1.0f / std::sqrt(static_cast<float>(F)));
        }
        w.layers.push_back(std::move(L));
    }
    w.final_norm_weight = ones(D);
    w.final_norm_bias = zeros_if(gpt2, D);
    if (!c.tie_word_embeddings) w.lm_head = matrix(V, D);
    return w;
}

}  // namespace tinyllm
