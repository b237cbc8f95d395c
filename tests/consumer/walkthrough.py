#!/usr/bin/env python3
"""The PyTorch side of docs/api.md: every step of tests/consumer/walkthrough.cpp again,
from the inputs it saved as .npy files, and the agreement of each result.

    python3 tests/consumer/walkthrough.py SHARED_DIR OUT_DIR

Exits 0 when every step agrees within its stated tolerance, 1 when one does not, and
77 (CTest's "skipped") when numpy, torch, transformers or tiktoken is not installed.
Float steps are compared by relative L2 error (||a - b|| / ||b||); the tokenizer's ids,
the sampler's kept sets and the chosen experts must be equal.
"""
import math
import sys

try:
    import numpy as np
    import tiktoken
    import tiktoken_ext.openai_public as openai_public
    import torch
    import torch.nn.functional as F
    import transformers
except ImportError as e:  # the agreement check needs the reference implementations
    print(f"walkthrough.py: {e.name} is not installed; skipped")
    sys.exit(77)

shared, out = sys.argv[1], sys.argv[2]
torch.set_default_dtype(torch.float64)  # the references in float64: what remains is tinyllm's error
failures = []


def load(name):
    return torch.from_numpy(np.load(f"{out}/{name}.npy"))


def rel_l2(got, want):
    got, want = got.double(), want.double()
    return (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)).item()


def check(step, ok, detail):
    print(f"  {'ok  ' if ok else 'FAIL'} {step}: {detail}")
    if not ok:
        failures.append(step)


def close(step, got, want, tol):
    got, want = got.double(), want.double()
    finite = bool(torch.isfinite(got).all())
    err = rel_l2(got, want) if finite else math.inf
    check(step, finite and err <= tol, f"relative L2 {err:.2e} (tolerance {tol:.0e})")


print(f"walkthrough.py: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tiktoken {tiktoken.__version__}")

# step 1: tokenize — tiktoken's cl100k_base from the same rank file
rank_file = f"{shared}/data/tokenizers/cl100k_base.tiktoken"
local_ranks = tiktoken.load.load_tiktoken_bpe(rank_file)
openai_public.load_tiktoken_bpe = lambda *args, **kwargs: local_ranks
enc = tiktoken.Encoding(**openai_public.cl100k_base())
ids = load("ids").tolist()
want_ids = enc.encode("The tiger jumped out of a tree to get a drink.")
check("tokenize (cl100k_base)", ids == want_ids, f"{len(ids)} ids, tiktoken {len(want_ids)}")

# step 3: linear projections
x = load("x").double()
B, T, D = x.shape
q3, k3, v3 = x @ load("wq").double().T, x @ load("wk").double().T, x @ load("wv").double().T
Hq, Hkv, Dh = 4, 2, 16
q, k = q3.view(B, T, Hq, Dh), k3.view(B, T, Hkv, Dh)
v = v3.view(B, T, Hkv, Dh)
close("linear -> v (B, T, Hkv, Dh)", load("v"), v, 1e-6)

# step 4: RoPE, Llama 3 scaling — the inverse frequencies from transformers' own rule
config = transformers.LlamaConfig(hidden_size=Hq * Dh, num_attention_heads=Hq, head_dim=Dh,
                                  max_position_embeddings=131072,
                                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192})
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]  # (T, Dh/2)
cos = torch.cat([angles.cos(), angles.cos()], -1)[None, :, None, :]
sin = torch.cat([angles.sin(), angles.sin()], -1)[None, :, None, :]


def rotate_half(t):
    return torch.cat([-t[..., Dh // 2:], t[..., :Dh // 2]], -1)


q_rope, k_rope = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
close("RoPE llama3 (q)", load("q_rope"), q_rope, 1e-6)
close("RoPE llama3 (k)", load("k_rope"), k_rope, 1e-6)

# step 5: causal GQA attention, window 4 — from tinyllm's q and k, so the step is compared alone
qt, kt, vt = load("q_rope").double(), load("k_rope").double(), load("v").double()
i = torch.arange(T)[:, None]
j = torch.arange(T)[None, :]
allowed = (j <= i) & (j > i - 4)  # causal, sliding window of 4
attn = F.scaled_dot_product_attention(qt.transpose(1, 2), kt.transpose(1, 2), vt.transpose(1, 2),
                                      attn_mask=allowed, enable_gqa=True).transpose(1, 2)
close("attention (causal, GQA 4:2, window 4)", load("attn"), attn, 1e-6)

# step 6: RMSNorm + SwiGLU MLP
h = F.rms_norm(x, (D,), load("norm_weight").double(), eps=1e-5)
close("rms_norm", load("h"), h, 1e-6)
ht = load("h").double()
y = (F.silu(ht @ load("gate").double().T) * (ht @ load("up").double().T)) @ load("down").double().T
close("swiglu_mlp", load("y"), y, 1e-6)

# step 7: temperature 0.8 -> top-k 50 -> top-p 0.9: the kept sets equal transformers' warpers
logits = load("logits").float()
warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(0.8),
                                            transformers.TopKLogitsWarper(50),
                                            transformers.TopPLogitsWarper(0.9)])
want_kept = torch.isfinite(warpers(None, logits.clone()))
kept = torch.isfinite(load("logits_filtered"))
check("sampling chain kept sets", bool((kept == want_kept).all()),
      f"{int(kept.sum())} tokens kept, transformers {int(want_kept.sum())}")
nxt = load("next").long()
check("sampled tokens are kept tokens", bool(kept[torch.arange(B), nxt].all()), f"next = {nxt.tolist()}")

# step 8: softmax -> top-2 -> renormalize
router_logits = load("h").double() @ load("router").double().T
probs = torch.softmax(router_logits.reshape(B * T, -1), -1)
top_w, top_i = probs.topk(2, -1)
top_w = top_w / top_w.sum(-1, keepdim=True)
check("MoE experts", bool((load("experts").long() == top_i).all()), "top-2 ids of 16 tokens")
close("MoE weights", load("expert_weights"), top_w, 1e-6)

# step 9: the checkpoint's logits for the same prompt
model = transformers.AutoModelForCausalLM.from_pretrained(f"{shared}/fixtures/hf/llama", dtype=torch.float32)
prompt = torch.tensor([[i % model.config.vocab_size for i in ids]])
with torch.no_grad():
    want_logits = model(prompt).logits[0]
close("checkpoint logits (float32 model)", load("prompt_logits"), want_logits, 1e-5)

if failures:
    print(f"walkthrough.py: {len(failures)} step(s) disagree: {', '.join(failures)}")
    sys.exit(1)
print("walkthrough.py: every step agrees")
