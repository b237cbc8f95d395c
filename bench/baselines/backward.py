"""PyTorch baselines for the backward rows of `tinyllm bench`: cross_entropy,
rmsnorm_backward, layernorm_backward, swiglu_backward, linear_backward and
embedding_backward (examples/tinyllm/bench_backward.cu), eager PyTorch autograd on
the same shapes, dtypes and byte / FLOP counts:

  cross_entropy       (8192, V) float logits, V = 50257 and 128256 (--ce-rows):
                      F.cross_entropy forward + backward (what tinyllm's fused kernel
                      does in one pass: loss and dlogits), and the loss alone (no_grad)
  rmsnorm_backward,   (16384, 4096) bf16 (--layer-rows), eps 1e-5: the backward of
  layernorm_backward  F.rms_norm (the Llama formula where F.rms_norm is missing) /
                      F.layer_norm with weight (and bias): dx, dweight (dbias)
  swiglu_backward     the same shape: the backward of F.silu(gate) * up
  linear_backward     x (8192, 768) (--linear-rows), weight (3072, 768), bias, float
                      and bf16: the backward of F.linear (dx, dweight, dbias), TFLOP/s
                      with 4 rows N K FLOPs; and the forward (2 rows N K)
  embedding_backward  ids (8, 1024) (--T) into (50257, 768), float and bf16: the
                      backward of F.embedding (dtable), GB/s of dout read once and the
                      table written once

Only the backward is timed (torch.autograd.grad on a graph built once, retain_graph)
except for cross_entropy, whose tinyllm kernel computes the loss too.

    python3 bench/baselines/backward.py --json out/backward_pytorch.json
"""
import argparse

from _timing import Results, require_cuda_torch, time_cuda

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
p.add_argument("--repeats", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--ce-rows", type=int, default=8192)
p.add_argument("--layer-rows", type=int, default=16384)
p.add_argument("--linear-rows", type=int, default=8192)
p.add_argument("--T", type=int, default=1024)
args = p.parse_args()

torch = require_cuda_torch()
F = torch.nn.functional
results = Results(torch)


def timed(fn):
    return time_cuda(torch, fn, args.repeats, args.warmup)


def rand(*shape, lo=-1.0, hi=1.0, dtype=torch.float32, grad=False):
    t = (torch.rand(*shape, device="cuda", dtype=torch.float32) * (hi - lo) + lo).to(dtype)
    return t.requires_grad_(grad)


def backward_of(out, inputs, dout):
    """fn() running only the backward of `out` (built once) into `inputs`."""
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


# ---- cross_entropy -------------------------------------------------------------------------
rows = args.ce_rows
for V in (50257, 128256):
    shape = f"rows={rows},V={V},f32"
    n = rows * V
    logits = rand(rows, V, lo=-4.0, hi=4.0, grad=True)
    targets = (torch.arange(rows, device="cuda", dtype=torch.int64) * 7919 + 13) % V

    def loss_and_grad():
        return torch.autograd.grad(F.cross_entropy(logits, targets), logits)

    def loss_only():
        with torch.no_grad():
            return F.cross_entropy(logits, targets)

    results.add(f"cross_entropy/pytorch_F.cross_entropy_fwd+bwd/{shape}", timed(loss_and_grad), bytes=2.0 * n * 4)
    results.add(f"cross_entropy/pytorch_F.cross_entropy_loss_only/{shape}", timed(loss_only), bytes=1.0 * n * 4)
    del logits
    torch.cuda.empty_cache()

# ---- norms and swiglu: (rows, 4096) bf16 ------------------------------------------------------
rows, D, eps, bf16 = args.layer_rows, 4096, 1e-5, torch.bfloat16
shape = f"{rows}x{D}_bf16"
n = rows * D
x = rand(rows, D, lo=-2.0, hi=2.0, dtype=bf16, grad=True)
dout = rand(rows, D, dtype=bf16)
w = rand(D, lo=0.5, hi=1.5, dtype=bf16, grad=True)
b = rand(D, dtype=bf16, grad=True)


def rms_norm_llama(t, weight):
    """Hugging Face Llama's LlamaRMSNorm.forward: float32 statistics, cast back, scale."""
    h = t.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(t.dtype)


if hasattr(F, "rms_norm"):
    rms_name, y = "pytorch_F.rms_norm_bwd", F.rms_norm(x, (D,), w, eps)
else:
    rms_name, y = "pytorch_llama_formula_bwd", rms_norm_llama(x, w)
results.add(f"rmsnorm_backward/{rms_name}/{shape}", timed(backward_of(y, (x, w), dout)),
            bytes=(3.0 * n + 2.0 * D) * 2)
y = F.layer_norm(x, (D,), w, b, eps)
results.add(f"layernorm_backward/pytorch_F.layer_norm_bwd/{shape}", timed(backward_of(y, (x, w, b), dout)),
            bytes=(3.0 * n + 3.0 * D) * 2)
del x, y
g = rand(rows, D, lo=-4.0, hi=4.0, dtype=bf16, grad=True)
u = rand(rows, D, lo=-2.0, hi=2.0, dtype=bf16, grad=True)
y = F.silu(g) * u
results.add(f"swiglu_backward/pytorch_F.silu(g)*u_bwd/{shape}", timed(backward_of(y, (g, u), dout)),
            bytes=5.0 * n * 2)
del g, u, y, dout
torch.cuda.empty_cache()

# ---- linear: GPT-2's c_fc ---------------------------------------------------------------------------
rows, K, N = args.linear_rows, 768, 3072
gemm = 2.0 * rows * N * K
for dt, name in ((torch.float32, "f32"), (bf16, "bf16")):
    shape = f"{rows}x{K}_x_{N}x{K}_{name}"
    x = rand(rows, K, dtype=dt, grad=True)
    w = rand(N, K, lo=-0.1, hi=0.1, dtype=dt, grad=True)
    b = rand(N, lo=-0.1, hi=0.1, dtype=dt, grad=True)
    dout = rand(rows, N, dtype=dt)
    y = F.linear(x, w, b)
    results.add(f"linear_backward/pytorch_F.linear_bwd/{shape}", timed(backward_of(y, (x, w, b), dout)),
                flops=2 * gemm)
    with torch.no_grad():
        results.add(f"linear_backward/pytorch_F.linear_forward/{shape}", timed(lambda: F.linear(x, w, b)), flops=gemm)

# ---- embedding: ids (8, T) into (50257, 768) ---------------------------------------------------------
B, T, V, Dm = 8, args.T, 50257, 768
ids = (torch.arange(B * T, device="cuda", dtype=torch.int64).view(B, T) * 7919 + 13) % V
for dt, name, size in ((torch.float32, "f32", 4), (bf16, "bf16", 2)):
    shape = f"B={B},T={T},V={V},D={Dm},{name}"
    table = rand(V, Dm, dtype=dt, grad=True)
    dout = rand(B, T, Dm, dtype=dt)
    y = F.embedding(ids, table)
    results.add(f"embedding_backward/pytorch_F.embedding_bwd/{shape}", timed(backward_of(y, (table,), dout)),
                bytes=(B * T * Dm + V * Dm) * float(size))

results.write(args.json)
