"""PyTorch baselines for `tinyllm bench rmsnorm|layernorm|residual_rmsnorm|swiglu`.

Same shapes and byte counts as the CUDA rows: (16384, 4096) bfloat16 (--rows to
change the rows), eps 1e-5, eager PyTorch (what a user gets without writing a
kernel). GB/s counts each input read once and each output written once.

    python3 bench/baselines/layers.py --json out/layers_pytorch.json
"""
import argparse
import sys

from _timing import Results, require_cuda_torch, time_cuda

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
p.add_argument("--repeats", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--rows", type=int, default=16384)
args = p.parse_args()

torch = require_cuda_torch()
F = torch.nn.functional
results = Results(torch)

rows, D, eps = args.rows, 4096, 1e-5
shape = f"{rows}x{D}_bf16"
dt = torch.bfloat16
n, size = rows * D, 2  # elements, bytes per element


def rand(*s, lo=-2.0, hi=2.0):
    return (torch.rand(*s, device="cuda", dtype=torch.float32) * (hi - lo) + lo).to(dt)


x = rand(rows, D)
res = rand(rows, D, lo=-4.0, hi=4.0)
w = rand(D, lo=0.5, hi=1.5)
b = rand(D, lo=-1.0, hi=1.0)


def rms_norm_llama(t, weight):
    """Hugging Face Llama's LlamaRMSNorm.forward: float32 statistics, cast back, scale."""
    h = t.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(t.dtype)


have_fused_rms = hasattr(F, "rms_norm")
rms = (lambda t: F.rms_norm(t, (D,), w, eps)) if have_fused_rms else (lambda t: rms_norm_llama(t, w))
rms_name = "pytorch_F.rms_norm" if have_fused_rms else "pytorch_llama_formula"


def run(name, fn, bytes_moved):
    results.add(f"{name}/{shape}", time_cuda(torch, fn, args.repeats, args.warmup), bytes=bytes_moved)


run("layernorm/pytorch_F.layer_norm", lambda: F.layer_norm(x, (D,), w, b, eps), 2.0 * n * size + 2.0 * D * size)
run(f"rmsnorm/{rms_name}", lambda: rms(x), 2.0 * n * size + D * size)
if have_fused_rms:  # the formula as many model files write it, for comparison
    run("rmsnorm/pytorch_llama_formula", lambda: rms_norm_llama(x, w), 2.0 * n * size + D * size)


def residual_rms():
    s = x + res
    return s, rms(s)


run(f"residual_rmsnorm/pytorch_add+{rms_name.removeprefix('pytorch_')}", residual_rms, 4.0 * n * size + D * size)

g = rand(rows, D, lo=-4.0, hi=4.0)
u = rand(rows, D)
run("swiglu/pytorch_F.silu(g)*u", lambda: F.silu(g) * u, 3.0 * n * size)

results.write(args.json)
sys.exit(0)
