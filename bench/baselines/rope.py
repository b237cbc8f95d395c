"""PyTorch baseline for `tinyllm bench rope`: eager RoPE as in transformers'
apply_rotary_pos_emb (Llama), in place semantics aside, on the same shape.

    python3 bench/baselines/rope.py --json out/rope_pytorch.json

q has shape (B, T, H, D) = (4, 4096, 32, 128) in bf16 (tinyllm's layout;
transformers transposes to (B, H, T, D) first, which is a view and changes
nothing here). cos and sin are (B, T, D) in bf16, computed once outside the
timed region, as a model computes them once per forward pass and shares them
between layers. The timed work is

    q * cos + rotate_half(q) * sin,  rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])

which PyTorch runs as several element-wise kernels (neg, cat, two multiplies,
an add). Bytes counted: q read once and the result written once, as for the
tinyllm rows (the real traffic of the eager version is several times more).
"""
from _timing import Results, parse_args, require_cuda_torch, time_cuda

args = parse_args(__doc__)
torch = require_cuda_torch()
results = Results(torch)

B, T, H, D = 4, 4096, 32, 128
theta = 10000.0
q = torch.rand(B, T, H, D, device="cuda", dtype=torch.bfloat16) * 2 - 1
position_ids = torch.arange(T, device="cuda").unsqueeze(0).expand(B, T)

# As LlamaRotaryEmbedding: inv_freq in float32, freqs = positions x inv_freq, emb = cat(freqs, freqs).
inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64, device="cuda").float() / D))
freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
emb = torch.cat((freqs, freqs), dim=-1)              # (B, T, D)
cos = emb.cos().to(torch.bfloat16).unsqueeze(2)      # (B, T, 1, D): broadcast over heads
sin = emb.sin().to(torch.bfloat16).unsqueeze(2)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x):
    return x * cos + rotate_half(x) * sin


n = B * T * H * D
shape = f"B={B},T={T},H={H},D={D},bf16"
results.add(f"rope/pytorch_eager/{shape}", time_cuda(torch, lambda: apply_rotary(q), args.repeats, args.warmup),
            bytes=2.0 * n * 2)
results.write(args.json)
