"""The models the model baselines run (bench/baselines/model.py on the GPU, cpu_model.py on
the CPU): transformers' GPT-2 and Llama classes, random-initialised with the shapes of
tinyllm's model_shapes (include/tinyllm/model.hpp), and what a decode step reads; and the
Mixtral-style shape of `tinyllm bench model_moe` (model_moe.py, on the GPU).
"""
import inspect

import transformers


def gpt2_config(smoke):
    if smoke:
        shape = dict(vocab_size=512, n_positions=256, n_embd=64, n_layer=2, n_head=4)
    else:
        shape = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    return transformers.GPT2Config(**shape, activation_function="gelu_new", tie_word_embeddings=True,
                                   attn_implementation="eager")


def llama_config(smoke):
    if smoke:
        shape = dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    else:
        shape = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64)
    # rope_theta + rope_scaling: read by transformers 4, converted to rope_parameters by 5.
    return transformers.LlamaConfig(
        **shape, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000 if not smoke else None, eos_token_id=128001 if not smoke else None,
        attn_implementation="eager")


def mixtral_config(smoke):
    """mixtral_1b of examples/tinyllm/bench_model.cu: Llama-3.2-1B's shape with each MLP made 8
    experts of 4096, 2 per token (so a token multiplies with llama_1b's 1.24B weights), Mixtral's
    RoPE (theta 1e6, no scaling), tied embeddings."""
    if smoke:
        shape = dict(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    else:
        shape = dict(vocab_size=128256, hidden_size=2048, intermediate_size=4096, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64)
    return transformers.MixtralConfig(
        **shape, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=131072, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=True, rope_theta=1e6, sliding_window=None,
        attn_implementation="eager")


MODELS = (("gpt2_124m", transformers.GPT2LMHeadModel, gpt2_config),
          ("llama_1b", transformers.LlamaForCausalLM, llama_config))
MOE_MODELS = (("mixtral_1b", transformers.MixtralForCausalLM, mixtral_config),)


def cache_of(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


def last_logits_only(model):
    """The forward argument that keeps only the last position's logits, as generate() does in prefill."""
    names = inspect.signature(model.forward).parameters
    if "logits_to_keep" in names:
        return {"logits_to_keep": 1}
    return {"num_logits_to_keep": 1} if "num_logits_to_keep" in names else {}


def weight_bytes(model):
    """Bytes one decode step must read: every weight once. All parameters (a tied embedding
    counted once, as the LM head reads it whole) less GPT-2's position table and, when
    untied, the input embedding (a step reads one row of each)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied matrix appears once
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb.data_ptr() != head.data_ptr():
        total -= emb.numel() * emb.element_size()
    for name, p in model.named_parameters():
        if name.endswith("wpe.weight"):
            total -= p.numel() * p.element_size()
    return total


def step_weight_bytes(model, config, tokens):
    """Bytes a step of `tokens` tokens must read: weight_bytes less, in each MoE layer, the experts
    no token can have chosen (the tokens choose at most min(E, k * tokens); exactly k for one)."""
    total = weight_bytes(model)
    if isinstance(config, transformers.MixtralConfig):
        E, k = config.num_local_experts, config.num_experts_per_tok
        expert = 3 * config.hidden_size * config.intermediate_size * next(model.parameters()).element_size()
        total -= config.num_hidden_layers * (E - min(E, k * tokens)) * expert
    return total


def shape_of(config):
    """(layers, query heads, KV heads, head dim, hidden, vocab) of a GPT-2 or Llama config."""
    if isinstance(config, transformers.GPT2Config):
        return config.n_layer, config.n_head, config.n_head, config.n_embd // config.n_head, config.n_embd, \
            config.vocab_size
    return (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
            config.hidden_size, config.vocab_size)


def kv_bytes(config, B, length, element_size):
    L, _, Hkv, Dh, _, _ = shape_of(config)
    return 2.0 * L * B * length * Hkv * Dh * element_size


def decode_cache_argument(model):
    """transformers 5.24 renamed past_key_values (argument and output) to cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
