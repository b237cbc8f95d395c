"""PyTorch baseline for `tinyllm bench embedding`: token embedding lookup,
ids (8, 1024) int32 into a bf16 table (50257, 4096), out (8, 1024, 4096) bf16 —
the shape of the CUDA rows of examples/tinyllm/bench_embedding.cu.

    python3 bench/baselines/embedding.py --json out/embedding_pytorch.json
"""
from _timing import Results, parse_args, require_cuda_torch, time_cuda

args = parse_args(__doc__)
torch = require_cuda_torch()
results = Results(torch)
B, T, V, D = 8, 1024, 50257, 4096
table = torch.randn(V, D, device="cuda", dtype=torch.bfloat16)
ids = torch.randint(0, V, (B, T), device="cuda", dtype=torch.int32)
out = torch.empty(B, T, D, device="cuda", dtype=torch.bfloat16)
shape = f"B={B},T={T},V={V},D={D},bf16"
bytes_moved = 2.0 * B * T * D * 2  # each output row read from the table once and written once
results.add(f"embedding/pytorch_embedding/{shape}",
            time_cuda(torch, lambda: torch.nn.functional.embedding(ids, table), args.repeats, args.warmup),
            bytes=bytes_moved)
results.add(f"embedding/pytorch_index_select_out/{shape}",
            time_cuda(torch, lambda: torch.index_select(table, 0, ids.view(-1), out=out.view(B * T, D)),
                      args.repeats, args.warmup),
            bytes=bytes_moved)
results.write(args.json)
