"""PyTorch baselines for `tinyllm bench attention`, `tinyllm bench attention_decode` and
`tinyllm bench attention_backward`: torch.nn.functional.scaled_dot_product_attention with
the flash and cuDNN backends (torch.nn.attention.sdpa_kernel), bf16, on the same shapes as
the tinyllm rows.

    python3 bench/baselines/attention.py --json out/attention_pytorch.json

attention: causal, 16k tokens of a 2048-wide model; TFLOP/s with
FLOPs = 4*B*H*S*S*D / 2 (causal). attention_decode: one query per sequence,
B=8, L=32768, H=32, D=128, no mask, then the same with 8 and 4 KV heads (GQA, enable_gqa);
GB/s of K and V read (2*B*L*Hkv*D*2 bytes).
attention_backward: causal, B=1 and 8, S=2048, H=16, D=128; the backward alone
(torch.autograd.grad of the saved forward: dQ, dK, dV), TFLOP/s with 2.5x the
forward's FLOPs, as tinyllm's rows.
Row names match the tinyllm rows: attention/<version>/<shape>.
"""
from _timing import Results, parse_args, require_cuda_torch, time_cuda

args = parse_args(__doc__)
torch = require_cuda_torch()
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
import torch.nn.functional as F  # noqa: E402

results = Results(torch)
backends = [("pytorch_flash", SDPBackend.FLASH_ATTENTION), ("pytorch_cudnn", SDPBackend.CUDNN_ATTENTION)]


def shape_name(B, Tq, Tk, H, Hkv, D, causal):
    return f"B={B},Tq={Tq},Tk={Tk},Hq={H},Hkv={Hkv},D={D},{'causal,' if causal else ''}bf16"


def run(component, B, Tq, Tk, H, D, causal, bytes=0.0, backward=False, Hkv=None):
    # SDPA's layout is (B, H, T, D); tinyllm's (B, T, H, D) is the same data transposed.
    # Hkv < H: grouped-query attention (SDPA's enable_gqa: each KV head serves H/Hkv query heads).
    Hkv = Hkv or H
    q = torch.randn(B, H, Tq, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    k = torch.randn(B, Hkv, Tk, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    v = torch.randn(B, Hkv, Tk, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    flops = 4.0 * B * H * Tq * Tk * D / (2 if causal else 1) * (2.5 if backward else 1)
    extra = {"enable_gqa": True} if Hkv != H else {}
    for key, backend in backends:
        name = f"{component}/{key}/{shape_name(B, Tq, Tk, H, Hkv, D, causal)}"
        try:
            with sdpa_kernel(backend):
                if backward:
                    # The forward once (it saves what its backward needs), then the backward alone.
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    dout = torch.randn_like(out)
                    fn = lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)  # noqa: E731
                else:
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)  # noqa: E731
                fn()
                timing = time_cuda(torch, fn, args.repeats, args.warmup)
        except RuntimeError as e:  # a backend may not support a shape or this GPU
            print(f"{name:56s} skipped: {str(e).splitlines()[0]}")
            continue
        if bytes:
            results.add(name, timing, bytes=bytes)
        else:
            results.add(name, timing, flops=flops)


for B, S, H, D in [(8, 2048, 16, 128), (8, 2048, 32, 64), (2, 8192, 16, 128)]:
    run("attention", B, S, S, H, D, causal=True)

B, L, H, D = 8, 32768, 32, 128
run("attention_decode", B, 1, L, H, D, causal=False, bytes=2.0 * B * L * H * D * 2)
run("attention_decode", B, 1, L, H, D, causal=False, bytes=2.0 * B * L * (H // 4) * D * 2, Hkv=H // 4)
run("attention_decode", B, 1, L, H, D, causal=False, bytes=2.0 * B * L * (H // 8) * D * 2, Hkv=H // 8)

for B in (1, 8):
    run("attention_backward", B, 2048, 2048, 16, 128, causal=True, backward=True)

results.write(args.json)
