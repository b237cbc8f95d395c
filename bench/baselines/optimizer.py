"""PyTorch baselines for `tinyllm bench adamw`: one AdamW step of n float parameters.

Same n (default 2^26, --n to change it) and byte count as the CUDA rows (p, g, m, v read
and p, m, v written: 28 bytes per parameter), lr 6e-4, betas (0.9, 0.95), weight decay
0.1: torch.optim.AdamW with fused=True (one kernel, the closest to tinyllm's v1) and with
foreach=True (the default on the GPU: a few multi-tensor kernels per operation), the
parameter as one tensor.

    python3 bench/baselines/optimizer.py --json out/adamw_pytorch.json
"""
import argparse

from _timing import Results, require_cuda_torch, time_cuda

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
p.add_argument("--repeats", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--n", type=int, default=1 << 26)
args = p.parse_args()

torch = require_cuda_torch()
results = Results(torch)
n = args.n

for label, options in (("fused", dict(fused=True)), ("foreach", dict(foreach=True))):
    param = torch.nn.Parameter(torch.randn(n, device="cuda") * 0.02)
    param.grad = torch.randn(n, device="cuda") * 1e-3
    opt = torch.optim.AdamW([param], lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, **options)
    opt.step()  # creates the state outside the timing
    results.add(f"adamw/pytorch_AdamW_{label}_f32/n={n}", time_cuda(torch, opt.step, args.repeats, args.warmup),
                bytes=28.0 * n)
results.write(args.json)
