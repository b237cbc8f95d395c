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

Second, for `tinyllm bench rope_cache`: a decode step's RoPE on q and k and its
KV-cache write, as transformers runs them with a StaticCache — Llama-3.2-1B
heads (32 q, 8 kv, head dim 64, theta 500000), B = 32 rows, one new token each
at position 1000 of a 4096-position cache: apply_rotary_pos_emb on q and k, then
key_cache.index_copy_ and value_cache.index_copy_ along the sequence. Bytes
counted as tinyllm's rows count them: q, k, v read, q and k written, k and v
written to the cache.

Third, for `tinyllm bench qkv_rope_cache`: the same step with its projection,
as transformers' LlamaAttention runs it for one token (M = 1 row, hidden size
2048): q_proj, k_proj and v_proj (three bf16 GEMMs, F.linear), the rotation of
q and k, and the two index_copy_ into the StaticCache. Bytes counted as
tinyllm's rows count them: the weights (3072 x 2048), x, qkv and the cache rows.
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

# rope_cache: transformers' layout, q (B, Hq, 1, Dh), k and v (B, Hkv, 1, Dh), caches (B, Hkv, capacity, Dh).
Bd, Hq, Hkv, Dh, capacity, position = 32, 32, 8, 64, 4096, 1000
qd = torch.rand(Bd, Hq, 1, Dh, device="cuda", dtype=torch.bfloat16) * 2 - 1
kd = torch.rand(Bd, Hkv, 1, Dh, device="cuda", dtype=torch.bfloat16) * 2 - 1
vd = torch.rand(Bd, Hkv, 1, Dh, device="cuda", dtype=torch.bfloat16) * 2 - 1
key_cache = torch.zeros(Bd, Hkv, capacity, Dh, device="cuda", dtype=torch.bfloat16)
value_cache = torch.zeros_like(key_cache)
inv_freq_d = 1.0 / (500000.0 ** (torch.arange(0, Dh, 2, dtype=torch.int64, device="cuda").float() / Dh))
freqs_d = torch.full((Bd, 1, 1), float(position), device="cuda") * inv_freq_d  # (B, 1, Dh/2)
emb_d = torch.cat((freqs_d, freqs_d), dim=-1)                                   # (B, 1, Dh)
cos_d = emb_d.cos().to(torch.bfloat16).unsqueeze(1)                             # (B, 1, 1, Dh)
sin_d = emb_d.sin().to(torch.bfloat16).unsqueeze(1)
cache_position = torch.tensor([position], device="cuda")


def decode_rope_and_cache():
    q_rot = qd * cos_d + rotate_half(qd) * sin_d
    k_rot = kd * cos_d + rotate_half(kd) * sin_d
    key_cache.index_copy_(2, cache_position, k_rot)
    value_cache.index_copy_(2, cache_position, vd)
    return q_rot


stride = (Hq + 2 * Hkv) * Dh
results.add(f"rope_cache/pytorch_eager/B={Bd},Hq={Hq},Hkv={Hkv},Dh={Dh},bf16",
            time_cuda(torch, decode_rope_and_cache, args.repeats, args.warmup),
            bytes=2.0 * Bd * (stride + (Hq + Hkv) * Dh + 2 * Hkv * Dh))

# qkv_rope_cache: M = 1 row of h (1, 1, 2048); Wq (2048, 2048), Wk and Wv (512, 2048), scaled as tinyllm's bench.
M, Dm = 1, 2048
hm = torch.rand(M, 1, Dm, device="cuda", dtype=torch.bfloat16) * 2 - 1
wq, wk, wv = ((torch.rand(n, Dm, device="cuda", dtype=torch.bfloat16) * 2 - 1) / Dm ** 0.5
              for n in (Hq * Dh, Hkv * Dh, Hkv * Dh))
key_cache_m = torch.zeros(M, Hkv, capacity, Dh, device="cuda", dtype=torch.bfloat16)
value_cache_m = torch.zeros_like(key_cache_m)
cos_m, sin_m = cos_d[:M], sin_d[:M]


def decode_qkv_rope_and_cache():
    q = torch.nn.functional.linear(hm, wq).view(M, 1, Hq, Dh).transpose(1, 2)   # (M, Hq, 1, Dh)
    k = torch.nn.functional.linear(hm, wk).view(M, 1, Hkv, Dh).transpose(1, 2)
    v = torch.nn.functional.linear(hm, wv).view(M, 1, Hkv, Dh).transpose(1, 2)
    q_rot = q * cos_m + rotate_half(q) * sin_m
    k_rot = k * cos_m + rotate_half(k) * sin_m
    key_cache_m.index_copy_(2, cache_position, k_rot)
    value_cache_m.index_copy_(2, cache_position, v)
    return q_rot


results.add(f"qkv_rope_cache/pytorch_eager/M={M},D={Dm},Hq={Hq},Hkv={Hkv},Dh={Dh},bf16",
            time_cuda(torch, decode_qkv_rope_and_cache, args.repeats, args.warmup),
            bytes=2.0 * (stride * Dm + M * Dm + M * stride + 2 * M * Hkv * Dh),
            flops=2.0 * M * stride * Dm)
results.write(args.json)
