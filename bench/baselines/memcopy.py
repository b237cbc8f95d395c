"""PyTorch baseline for `tinyllm bench copy`: a device-to-device copy of n floats.

    python3 bench/baselines/memcopy.py --json out/copy_pytorch.json
"""
from _timing import Results, parse_args, require_cuda_torch, time_cuda

args = parse_args(__doc__)
torch = require_cuda_torch()
results = Results(torch)
n = 1 << 26  # the default size of `tinyllm bench copy`
x = torch.rand(n, device="cuda")
y = torch.empty_like(x)
results.add(f"copy/pytorch_copy_/n={n}", time_cuda(torch, lambda: y.copy_(x), args.repeats, args.warmup), bytes=8.0 * n)
results.write(args.json)
