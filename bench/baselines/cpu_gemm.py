"""PyTorch CPU baseline for bench/cpu/bench_gemm.cpp and `tinyllm bench gemm`.

torch.matmul in float32 on the CPU at the same GPT-2 124M shapes, x (M, K) times a
linear layer's weight (N, K) transposed, on the same number of threads as tinyllm
(--threads, default OMP_NUM_THREADS or the cores: torch.set_num_threads). What a user
gets from PyTorch's CPU build (MKL or OpenBLAS, depending on the wheel).

    OMP_NUM_THREADS=2 python3 bench/baselines/cpu_gemm.py --json out/cpu_gemm_pytorch.json
"""
import argparse
import os

from _timing import Results, cpu_name, require_torch, time_cpu

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
p.add_argument("--repeats", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count())
args = p.parse_args()

torch = require_torch()
torch.set_num_threads(args.threads)


results = Results(torch, device=f"{cpu_name()}, {args.threads} threads", timer="wall clock, median")
shapes = {"qkv": (128, 768, 2304), "mlp": (128, 3072, 768), "decode": (1, 768, 50257), "logits": (128, 768, 50257)}
g = torch.Generator().manual_seed(0)
for name, (M, K, N) in shapes.items():
    x = torch.rand(M, K, generator=g) * 2 - 1
    w = torch.rand(N, K, generator=g) * 2 - 1
    out = torch.empty(M, N)
    timing = time_cpu(lambda: torch.matmul(x, w.t(), out=out), args.repeats, args.warmup)
    results.add(f"gemm/pytorch_matmul/{name}_{M}x{K}x{N}_f32", timing, flops=2.0 * M * N * K,
                note=f"  {2.0 * M * N * K / (timing[0] * 1e3):8.1f} GFLOP/s")
results.write(args.json)
