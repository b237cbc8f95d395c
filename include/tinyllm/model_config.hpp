// tinyllm/model_config.hpp — what a decoder-only model is made of, as numbers:
// model_config (the architecture, its widths and counts, the RoPE variant, the
// end-of-text ids, a quantized checkpoint's format), read from a Hugging Face
// config.json (load_model_config) with every field checked and named in
// errors; and the configs of the real shapes the benchmarks use (model_shapes).
//
// The keys differ by architecture (GPT-2: n_embd, n_layer, n_head, n_positions,
// layer_norm_epsilon; Llama and Mixtral: hidden_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads, intermediate_size, rms_norm_eps,
// rope_theta and rope_scaling; Mixtral also num_local_experts and
// num_experts_per_tok). The vocabulary size, the widths, the layer and head
// counts, GPT-2's n_positions and Mixtral's expert counts must be there (a
// config without them describes no particular model, though transformers'
// classes would fill in their own); the others take the default of the
// architecture's transformers config class (GPT2Config, LlamaConfig,
// MixtralConfig: Mixtral's rope_theta 1e6, rms_norm_eps 1e-5, 8 key/value
// heads and 131072 positions are not Llama's). The model itself: model.hpp.
#pragma once

#include <tinyllm/detail/files.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace tinyllm {

enum class model_arch { gpt2, llama, mixtral };

struct model_config {
    model_arch arch = model_arch::llama;
    std::string architecture;          // as written in config.json
    index_t vocab_size = 0;
    index_t hidden_size = 0;           // D
    index_t num_layers = 0;
    index_t num_heads = 0;             // Hq
    index_t num_kv_heads = 0;          // Hkv (GPT-2: = Hq)
    index_t head_dim = 0;              // Dh
    index_t intermediate_size = 0;     // the FFN's hidden width (per expert for Mixtral)
    index_t max_positions = 0;         // GPT-2's position table; informational for RoPE models
    float norm_eps = 1e-5f;
    bool tie_word_embeddings = false;
    index_t num_experts = 0;           // Mixtral
    index_t experts_per_token = 0;     // Mixtral
    double router_aux_loss_coef = 0;   // Mixtral: the load-balancing loss's weight in training (transformers: 0.001)
    rope_config rope;                  // Llama, Mixtral
    std::vector<token_id> eos_token_ids;
    // A quantized checkpoint's (`tinyllm quantize --out`, save_quantized_model):
    // the format of its matrices and how they were rounded ("rtn" or "gptq");
    // empty for a float checkpoint.
    std::optional<quant_spec> quantization;
    std::string quantization_method;
};

namespace detail {

inline json::value read_json_file(const std::string& path) {
    return json::parse(read_whole_file(path, "a JSON file"), path);
}

// The largest value config.json may give a dimension (vocabulary, widths,
// layers, heads, positions, experts): 2^31, so that the product of any two
// fits in index_t. The weight tensors they imply are bounded as safetensors_file
// bounds a tensor: 2^50 elements (the product of the nonzero extents).
inline constexpr index_t config_dim_max = index_t{1} << 31;
inline constexpr index_t config_numel_max = index_t{1} << 50;

// JSON number v, the value of `key` in config file `path`, as an integer
// (64.0 and 1e30 are not), named in the error.
inline index_t config_integer(const json::value& v, const char* key, const std::string& path) {
    if (!v.is_number()) TINYLLM_FAIL("'", path, "': \"", key, "\" must be a number");
    const std::optional<std::int64_t> n = v.to_int64();
    if (!n) TINYLLM_FAIL("'", path, "': \"", key, "\" = ", v.number_text(), " must be an integer that fits in 64 bits");
    return *n;
}

// config[key] as an integer in [0, max], or `fallback` when absent or null; -1 fallback = required.
inline index_t config_int(const json::value& c, const char* key, index_t fallback, const std::string& path,
                          index_t max = std::numeric_limits<index_t>::max()) {
    const json::value* v = c.find(key);
    if (!v || v->is_null()) {
        if (fallback < 0) TINYLLM_FAIL("'", path, "' has no \"", key, "\"");
        return fallback;
    }
    const index_t n = config_integer(*v, key, path);
    if (n < 0) TINYLLM_FAIL("'", path, "': \"", key, "\" = ", n, " must not be negative");
    if (n > max) TINYLLM_FAIL("'", path, "': \"", key, "\" = ", n, " is too large (at most ", max, ")");
    return n;
}

// A dimension of the model: config_int bounded by config_dim_max.
inline index_t config_dim(const json::value& c, const char* key, index_t fallback, const std::string& path) {
    return config_int(c, key, fallback, path, config_dim_max);
}

inline double config_double(const json::value& c, const char* key, double fallback, const std::string& path) {
    const json::value* v = c.find(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_number()) TINYLLM_FAIL("'", path, "': \"", key, "\" must be a number");
    return v->as_double();
}

// config[key] as a bool, or `fallback` when absent or null; another type is an
// error ("true", a string, is not read as true or as false).
inline bool config_bool(const json::value& c, const char* key, bool fallback, const std::string& path) {
    const json::value* v = c.find(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_bool()) TINYLLM_FAIL("'", path, "': \"", key, "\" must be true or false");
    return v->as_bool();
}

// config[key] as a string, or nullptr when absent or null; another type is an error.
inline const std::string* config_string(const json::value& c, const char* key, const std::string& path) {
    const json::value* v = c.find(key);
    if (!v || v->is_null()) return nullptr;
    if (!v->is_string()) TINYLLM_FAIL("'", path, "': \"", key, "\" must be a string");
    return &v->as_string();
}

// A norm's epsilon (layer_norm_epsilon, rms_norm_eps) as the float the norms
// use: finite and positive after the conversion, checked here rather than at
// the first forward (and 1e300 is not converted to float: out of range).
inline float config_norm_eps(const json::value& c, const char* key, double fallback, const std::string& path) {
    const double eps = config_double(c, key, fallback, path);
    if (!(eps > 0 && eps <= std::numeric_limits<float>::max()) || !(static_cast<float>(eps) > 0))
        TINYLLM_FAIL("'", path, "': \"", key, "\" = ", eps, " must be a positive number that a float holds");
    return static_cast<float>(eps);
}

inline rope_config read_rope(const json::value& c, index_t head_dim, const std::string& path,
                             double default_theta = 10000.0) {
    rope_config rope;
    rope.rotary_dim = head_dim;
    rope.pairing = rope_pairing::rotate_half;
    // transformers < 5 writes rope_theta (and rope_scaling) at the top level;
    // transformers 5 writes rope_parameters {"rope_theta": ..., "rope_type": ...}.
    const json::value* params = c.find("rope_parameters");
    if (params && !params->is_null() && !params->is_object())
        TINYLLM_FAIL("'", path, "': \"rope_parameters\" must be an object");
    if (!params || !params->is_object()) params = c.find("rope_scaling");
    if (params && !params->is_null() && !params->is_object())
        TINYLLM_FAIL("'", path, "': \"rope_scaling\" must be an object");
    rope.theta = config_double(c, "rope_theta", default_theta, path);
    if (params && params->is_object()) {
        rope.theta = config_double(*params, "rope_theta", rope.theta, path);
        std::string type = "default";
        if (const json::value* t = params->find("rope_type"); t && t->is_string()) type = t->as_string();
        else if (const json::value* t2 = params->find("type"); t2 && t2->is_string()) type = t2->as_string();
        if (type == "linear") {
            rope.scaling = rope_scaling::linear;
            rope.factor = config_double(*params, "factor", 1.0, path);
        } else if (type == "llama3") {
            rope.scaling = rope_scaling::llama3;
            rope.factor = config_double(*params, "factor", 8.0, path);
            rope.low_freq_factor = config_double(*params, "low_freq_factor", 1.0, path);
            rope.high_freq_factor = config_double(*params, "high_freq_factor", 4.0, path);
            // A context length: a whole number of positions (transformers' int), which
            // model_config_json writes back as one (8192.5 or 1e300 would not read back).
            const index_t original =
                config_int(*params, "original_max_position_embeddings", 8192, path, config_dim_max);
            if (original < 1)
                TINYLLM_FAIL("'", path, "': \"original_max_position_embeddings\" = ", original, " must be positive");
            rope.original_max_position_embeddings = static_cast<double>(original);
        } else if (type != "default") {
            TINYLLM_FAIL("'", path, "': rope type \"", type, "\" is not supported (default, linear, llama3 are)");
        }
    }
    // The fraction of each head that rotates (transformers: int(head_dim * factor)),
    // rounded down to whole pairs. It must leave at least one pair: rotary_dim 0
    // would mean the whole head to rope_config, the opposite of what was asked.
    if (const json::value* f = c.find("partial_rotary_factor"); f && !f->is_null()) {
        if (!f->is_number()) TINYLLM_FAIL("'", path, "': \"partial_rotary_factor\" must be a number");
        const double factor = f->as_double();
        if (!(factor > 0 && factor <= 1))
            TINYLLM_FAIL("'", path, "': \"partial_rotary_factor\" = ", factor, " must be in (0, 1]");
        rope.rotary_dim = static_cast<index_t>(static_cast<double>(head_dim) * factor) / 2 * 2;
        if (rope.rotary_dim < 2)
            TINYLLM_FAIL("'", path, "': \"partial_rotary_factor\" = ", factor, " of head_dim ", head_dim,
                         " rotates no pair of features (at least 2 must rotate)");
    }
    return rope;
}

}  // namespace detail

namespace detail {

// config.json's "quantization_config" of a checkpoint save_quantized_model wrote:
//   {"quant_method": "tinyllm", "format": "int4-g128", "bits": 4, "group_size": 128, "method": "gptq"}
// (int8: "bits": 8, "group_size": 0, one scale per output row).
// Other libraries' entries (GPTQ's, AWQ's, bitsandbytes') describe other tensor layouts and are refused.
inline void read_quantization_config(model_config& m, const json::value& q, const std::string& path) {
    if (!q.is_object()) TINYLLM_FAIL("'", path, "': \"quantization_config\" is not an object");
    const auto text = [&](const char* key) {
        const json::value* v = q.find(key);
        if (!v || !v->is_string()) TINYLLM_FAIL("'", path, "': quantization_config has no \"", key, "\" string");
        return v->as_string();
    };
    const std::string method = text("quant_method");
    if (method != "tinyllm")
        TINYLLM_FAIL("'", path, "': quantization_config.quant_method \"", method,
                     "\" is another library's checkpoint layout; tinyllm reads its own (quant_method \"tinyllm\", "
                     "written by `tinyllm quantize --out`) and float checkpoints");
    try {
        m.quantization = parse_quant_spec(text("format"));
    } catch (const error& e) {
        TINYLLM_FAIL("'", path, "': quantization_config.format: ", e.what());
    }
    const index_t bits = config_int(q, "bits", -1, path);
    const index_t group = config_int(q, "group_size", -1, path);
    const bool int8 = m.quantization->format == quant_format::int8;
    if (bits != (int8 ? 8 : 4) || group != (int8 ? 0 : m.quantization->group))
        TINYLLM_FAIL("'", path,
                     "': quantization_config says format ", m.quantization->name(), " but bits ", bits,
                     " and group_size ", group, " (", m.quantization->name(), " is bits ", int8 ? 8 : 4,
                     ", group_size ", int8 ? index_t{0} : m.quantization->group, ")");
    m.quantization_method = text("method");
    if (m.quantization_method != "rtn" && m.quantization_method != "gptq")
        TINYLLM_FAIL("'", path,
                     "': quantization_config.method \"", m.quantization_method, "\" is not rtn or gptq");
}

}  // namespace detail

// The model_config of a parsed config.json; `path` names it in errors.
inline model_config model_config_from_json(const json::value& c, const std::string& path) {
    model_config m;
    // The architecture: the first of "architectures", or else (as transformers'
    // AutoModelForCausalLM does) the causal-LM class that "model_type" names.
    const json::value* archs = c.find("architectures");
    if (archs && !archs->is_null() &&
        (!archs->is_array() || (archs->size() > 0 && !archs->at(std::size_t{0}).is_string())))
        TINYLLM_FAIL("'", path, "': \"architectures\" must be a list of class names");
    if (archs && archs->is_array() && archs->size() > 0) {
        m.architecture = archs->at(std::size_t{0}).as_string();
    } else {
        const json::value* type = c.find("model_type");
        if (!type || !type->is_string())
            TINYLLM_FAIL("'", path, "' has neither an \"architectures\" list nor a \"model_type\"");
        const std::string& t = type->as_string();
        if (t == "gpt2") m.architecture = "GPT2LMHeadModel";
        else if (t == "llama") m.architecture = "LlamaForCausalLM";
        else if (t == "mixtral") m.architecture = "MixtralForCausalLM";
        else
            TINYLLM_FAIL("'", path, "': model_type \"", t, "\" (and no \"architectures\" list) is not supported ",
                         "(gpt2, llama and mixtral are)");
    }
    if (m.architecture == "GPT2LMHeadModel") {
        m.arch = model_arch::gpt2;
        m.vocab_size = detail::config_dim(c, "vocab_size", -1, path);
        m.hidden_size = detail::config_dim(c, "n_embd", -1, path);
        m.num_layers = detail::config_dim(c, "n_layer", -1, path);
        m.num_heads = detail::config_dim(c, "n_head", -1, path);
        m.num_kv_heads = m.num_heads;
        m.intermediate_size = detail::config_dim(c, "n_inner", 4 * m.hidden_size, path);
        m.max_positions = detail::config_dim(c, "n_positions", -1, path);
        m.norm_eps = detail::config_norm_eps(c, "layer_norm_epsilon", 1e-5, path);
        m.tie_word_embeddings = detail::config_bool(c, "tie_word_embeddings", true, path);
        if (const std::string* act = detail::config_string(c, "activation_function", path); act && *act != "gelu_new")
            TINYLLM_FAIL("'", path, "': activation_function \"", *act, "\" is not supported (gelu_new is)");
    } else if (m.architecture == "LlamaForCausalLM" || m.architecture == "MixtralForCausalLM") {
        m.arch = m.architecture == "LlamaForCausalLM" ? model_arch::llama : model_arch::mixtral;
        m.vocab_size = detail::config_dim(c, "vocab_size", -1, path);
        m.hidden_size = detail::config_dim(c, "hidden_size", -1, path);
        m.num_layers = detail::config_dim(c, "num_hidden_layers", -1, path);
        m.num_heads = detail::config_dim(c, "num_attention_heads", -1, path);
        // The defaults of transformers' LlamaConfig and MixtralConfig.
        const bool mixtral = m.arch == model_arch::mixtral;
        // Left out: the class's default (Mixtral 8); given as null: num_attention_heads (both classes).
        const json::value* kv = c.find("num_key_value_heads");
        m.num_kv_heads = detail::config_dim(c, "num_key_value_heads", kv || !mixtral ? m.num_heads : 8, path);
        m.intermediate_size = detail::config_dim(c, "intermediate_size", -1, path);
        m.max_positions = detail::config_dim(c, "max_position_embeddings", mixtral ? 4096 * 32 : 2048, path);
        m.norm_eps = detail::config_norm_eps(c, "rms_norm_eps", mixtral ? 1e-5 : 1e-6, path);
        m.tie_word_embeddings = detail::config_bool(c, "tie_word_embeddings", false, path);
        if (const std::string* act = detail::config_string(c, "hidden_act", path); act && *act != "silu")
            TINYLLM_FAIL("'", path, "': hidden_act \"", *act, "\" is not supported (silu is)");
        if (m.arch == model_arch::mixtral) {
            m.num_experts = detail::config_dim(c, "num_local_experts", -1, path);
            m.experts_per_token = detail::config_dim(c, "num_experts_per_tok", -1, path);
            m.router_aux_loss_coef = detail::config_double(c, "router_aux_loss_coef", 0.001, path);
            if (!(m.router_aux_loss_coef >= 0 && std::isfinite(m.router_aux_loss_coef)))
                TINYLLM_FAIL("'", path, "': \"router_aux_loss_coef\" = ", m.router_aux_loss_coef,
                             " must be a finite number >= 0");
            TINYLLM_EXPECT(m.experts_per_token >= 1 && m.experts_per_token <= m.num_experts, "'", path,
                           "': num_experts_per_tok = ", m.experts_per_token, " must be in [1, num_local_experts = ",
                           m.num_experts, "]");
        }
    } else {
        TINYLLM_FAIL("'", path, "': architecture \"", m.architecture,
                     "\" is not supported (GPT2LMHeadModel, LlamaForCausalLM and MixtralForCausalLM are)");
    }
    TINYLLM_EXPECT(m.num_heads >= 1 && m.hidden_size >= 1 && m.vocab_size >= 1 && m.num_layers >= 1, "'", path,
                   "': vocab, hidden size, layers and heads must be positive");
    m.head_dim = m.arch == model_arch::gpt2 ? m.hidden_size / m.num_heads
                                            : detail::config_dim(c, "head_dim", m.hidden_size / m.num_heads, path);
    TINYLLM_EXPECT(m.arch != model_arch::gpt2 || m.hidden_size % m.num_heads == 0, "'", path, "': n_embd = ",
                   m.hidden_size, " is not a multiple of n_head = ", m.num_heads);
    TINYLLM_EXPECT(m.num_kv_heads >= 1 && m.num_heads % m.num_kv_heads == 0, "'", path, "': num_attention_heads = ",
                   m.num_heads, " must be a multiple of num_key_value_heads = ", m.num_kv_heads);
    // Every weight tensor the dimensions imply must be of a size a checkpoint can
    // hold, before anything is computed or allocated from them (each dimension is
    // at most 2^31, but a product of three is not bounded by that).
    {
        const bool gpt2 = m.arch == model_arch::gpt2;
        const char* D = gpt2 ? "n_embd" : "hidden_size";
        const char* F = gpt2 ? "n_inner" : "intermediate_size";
        const auto bounded = [&](const std::string& what, std::initializer_list<index_t> factors) {
            if (!detail::nonzero_product_at_most(detail::config_numel_max, factors))
                TINYLLM_FAIL("'", path, "': a weight of ", what, " would be too large (more than 2^50 elements)");
        };
        bounded(detail::cat("vocab_size (", m.vocab_size, ") x ", D, " (", m.hidden_size, ")"),
                {m.vocab_size, m.hidden_size});
        bounded(detail::cat(F, " (", m.intermediate_size, ") x ", D, " (", m.hidden_size, ")"),
                {m.intermediate_size, m.hidden_size});
        if (gpt2) {
            bounded(detail::cat("n_positions (", m.max_positions, ") x n_embd (", m.hidden_size, ")"),
                    {m.max_positions, m.hidden_size});
            bounded(detail::cat("n_embd (", m.hidden_size, ") x 3 n_embd"), {m.hidden_size, m.hidden_size, 3});
        } else {
            bounded(detail::cat("num_attention_heads (", m.num_heads, ") x head_dim (", m.head_dim, ") x hidden_size (",
                                m.hidden_size, ")"),
                    {m.num_heads, m.head_dim, m.hidden_size});
        }
        if (m.arch == model_arch::mixtral)
            bounded(detail::cat("num_local_experts (", m.num_experts, ") x 2 intermediate_size (",
                                2 * m.intermediate_size, ") x hidden_size (", m.hidden_size, ")"),
                    {m.num_experts, 2 * m.intermediate_size, m.hidden_size});
    }
    if (m.arch != model_arch::gpt2) {
        m.rope = detail::read_rope(c, m.head_dim, path, m.arch == model_arch::mixtral ? 1e6 : 10000.0);
        try {
            validate(m.rope, m.head_dim);
        } catch (const error& e) {  // (validate's message names no file)
            TINYLLM_FAIL("'", path,
                         "': the RoPE settings (head_dim, rope_theta, rope_scaling) are not valid: ", e.what());
        }
    }
    // eos_token_id: one id or a list of them, each inside the vocabulary.
    if (const json::value* eos = c.find("eos_token_id"); eos && !eos->is_null()) {
        const auto add = [&](const json::value& e) {
            if (!e.is_number())
                TINYLLM_FAIL("'", path, "': \"eos_token_id\" must be a token id or a list of token ids");
            const index_t id = detail::config_integer(e, "eos_token_id", path);
            if (id < 0 || id >= m.vocab_size)
                TINYLLM_FAIL("'", path, "': \"eos_token_id\" ", id, " is outside the vocabulary [0, ", m.vocab_size,
                             ")");
            m.eos_token_ids.push_back(static_cast<token_id>(id));
        };
        if (eos->is_array())
            for (const auto& e : eos->as_array()) add(e);
        else
            add(*eos);
    }
    if (const json::value* q = c.find("quantization_config"); q && !q->is_null())
        detail::read_quantization_config(m, *q, path);
    return m;
}

// Read DIR/config.json, a Hugging Face model config.
inline model_config load_model_config(const std::string& dir) {
    const std::string path = (std::filesystem::path(dir) / "config.json").string();
    return model_config_from_json(detail::read_json_file(path), path);
}

// The shapes the benchmarks use (docs/model.md), as configs without a checkpoint.
namespace model_shapes {

// GPT-2 small (openai-community/gpt2): 124M parameters.
inline model_config gpt2_124m() {
    model_config c;
    c.arch = model_arch::gpt2;
    c.architecture = "GPT2LMHeadModel";
    c.vocab_size = 50257;
    c.hidden_size = 768;
    c.num_layers = 12;
    c.num_heads = c.num_kv_heads = 12;
    c.head_dim = 64;
    c.intermediate_size = 3072;
    c.max_positions = 1024;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = true;
    c.eos_token_ids = {50256};
    return c;
}

// Llama-3.2-1B's shape: 1.24B parameters, GQA 32/8, head dim 64, tied embeddings.
inline model_config llama_1b() {
    model_config c;
    c.arch = model_arch::llama;
    c.architecture = "LlamaForCausalLM";
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.num_layers = 16;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 64;
    c.intermediate_size = 8192;
    c.max_positions = 131072;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = true;
    c.rope.rotary_dim = 64;
    c.rope.theta = 500000.0;
    c.rope.pairing = rope_pairing::rotate_half;
    c.rope.scaling = rope_scaling::llama3;
    c.rope.factor = 32.0;
    c.rope.low_freq_factor = 1.0;
    c.rope.high_freq_factor = 4.0;
    c.rope.original_max_position_embeddings = 8192.0;
    c.eos_token_ids = {128001};
    return c;
}

}  // namespace model_shapes

}  // namespace tinyllm
