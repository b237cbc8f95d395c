"""PyTorch baselines for `tinyllm bench rmsnorm|layernorm|residual_rmsnorm|swiglu`
and `mlp_swiglu_gemv|mlp_gelu_gemv|down_residual_rmsnorm_gemv|moe_experts_gemv`.

Same shapes and byte counts as the CUDA rows: (16384, 4096) bfloat16 (--rows to
change the rows), eps 1e-5, eager PyTorch (what a user gets without writing a
kernel). GB/s counts each input read once and each output written once.

The MLP GEMV rows are a decode step's first MLP projection (--gemv-rows M rows,
default 1) as transformers writes it: LlamaMLP's act_fn(gate_proj(x)) *
up_proj(x) at Llama-3.2-1B's D 2048, H 8192, and GPT-2's c_fc + gelu_new at
D 768, H 3072; bytes are dominated by the weights, read once. The down row is
the MLP's last projection with the residual add and the next RMSNorm, as
LlamaDecoderLayer and LlamaRMSNorm write them: x = x + down_proj(h); norm(x).
The MoE row is a decode step's experts at Mixtral-8x7B's shape (E 8, k 2, D 4096,
F 14336; M = --gemv-rows tokens) as transformers' MixtralSparseMoeBlock runs
them: a loop over the experts hit (found with torch.where, which waits for the
GPU, as tinyllm's GEMM path waits for its plan), each expert's SwiGLU MLP on its
tokens, scaled by the routing weights and index_add_-ed into the output (the
combine, a few KB more than tinyllm's rows move). Bytes: the chosen experts'
weights, read once.

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
p.add_argument("--gemv-rows", type=int, default=1)
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

# A decode step's MLP input: M rows of x, weights (H, D) as nn.Linear holds them.
M = args.gemv_rows
for name, Dm, H in (("mlp_swiglu_gemv", 2048, 8192), ("mlp_gelu_gemv", 768, 3072)):
    scale = Dm ** -0.5
    xm = rand(M, Dm, lo=-1.0, hi=1.0)
    wa = rand(H, Dm, lo=-scale, hi=scale)
    key = f"{name}/pytorch_eager/M={M},D={Dm},H={H},bf16"
    if name == "mlp_swiglu_gemv":
        wb = rand(H, Dm, lo=-scale, hi=scale)
        results.add(key, time_cuda(torch, lambda: F.silu(F.linear(xm, wa)) * F.linear(xm, wb), args.repeats,
                                   args.warmup),
                    bytes=(2 * H * Dm + M * Dm + M * H) * size, flops=4.0 * M * H * Dm)
    else:
        bias = rand(H, lo=-0.5, hi=0.5)
        results.add(key, time_cuda(torch, lambda: F.gelu(F.linear(xm, wa, bias), approximate="tanh"), args.repeats,
                                   args.warmup),
                    bytes=(H * Dm + H + M * Dm + M * H) * size, flops=2.0 * M * H * Dm)

# The down projection (D, H), the residual add and the next RMSNorm, at M rows and at 8
# (as `tinyllm bench down_residual_rmsnorm_gemv` times M = 1 and 8).
Dm, H = 2048, 8192
wd = rand(Dm, H, lo=-H ** -0.5, hi=H ** -0.5)
gd = rand(Dm, lo=0.5, hi=1.5)
for Md in sorted({M, 8}):
    hm = rand(Md, H, lo=-1.0, hi=1.0)
    xs = rand(Md, Dm, lo=-1.0, hi=1.0)

    def down_residual_rms():
        s = xs + F.linear(hm, wd)
        return s, F.rms_norm(s, (Dm,), gd, eps) if hasattr(F, "rms_norm") else rms_norm_llama(s, gd)

    results.add(f"down_residual_rmsnorm_gemv/pytorch_eager/M={Md},D={Dm},H={H},bf16",
                time_cuda(torch, down_residual_rms, args.repeats, args.warmup),
                bytes=(Dm * H + Md * H + 3 * Md * Dm + Dm) * size, flops=2.0 * Md * H * Dm)

# A decode step's MoE experts (Mixtral-8x7B shape), transformers' expert loop.
Dm, Fm, E, k = 4096, 14336, 8, 2
s1, s2 = Dm ** -0.5, Fm ** -0.5
w1 = rand(E, Fm, Dm, lo=-s1, hi=s1)
w3 = rand(E, Fm, Dm, lo=-s1, hi=s1)
w2 = rand(E, Dm, Fm, lo=-s2, hi=s2)
xm = rand(M, Dm, lo=-1.0, hi=1.0)
routing = torch.softmax(torch.rand(M, E, device="cuda") * 8 - 4, dim=-1)
weights, chosen = torch.topk(routing, k, dim=-1)
weights = (weights / weights.sum(dim=-1, keepdim=True)).to(dt)


def moe_experts():
    out = torch.zeros_like(xm)
    mask = F.one_hot(chosen, num_classes=E).permute(2, 1, 0)  # (E, k, M)
    for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
        slot, token = torch.where(mask[e].squeeze(0))
        h = xm[token]
        y = F.linear(F.silu(F.linear(h, w1[e].squeeze(0))) * F.linear(h, w3[e].squeeze(0)), w2[e].squeeze(0))
        out.index_add_(0, token, y * weights[token, slot, None])
    return out


experts_read = int(torch.unique(chosen).numel())
results.add(f"moe_experts_gemv/pytorch_hf_expert_loop/M={M},D={Dm},F={Fm},E=8,k=2,bf16",
            time_cuda(torch, moe_experts, args.repeats, args.warmup),
            bytes=(experts_read * 3 * Fm * Dm + 2 * M * k * Dm) * size, flops=6.0 * M * k * Fm * Dm)

results.write(args.json)
sys.exit(0)
