"""PyTorch baseline for `tinyllm bench moe_gating` and `tinyllm bench moe_dispatch`.

Same shapes as the CUDA rows: T = 16384 float32 router logits with (E, k) =
(8, 2) and (256, 8); dispatch moves (T, 1024) float32 hidden states.

  moe_gating/pytorch_softmax_topk          softmax -> topk -> renormalize (what Mixtral's HF code does)
  moe_gating/pytorch_softmax_topk_permute  the same + the token permutation: argsort of the flattened
                                           expert ids and index_select of the hidden states
  moe_dispatch/pytorch_permute_combine     argsort + index_select (gather into expert order), then
                                           combine: weighted rows summed back per token (index_add_)

    python3 bench/baselines/moe.py --json out/moe_pytorch.json
"""
from _timing import Results, parse_args, require_cuda_torch, time_cuda

args = parse_args(__doc__)
torch = require_cuda_torch()
results = Results(torch)
T, D = 16384, 1024

for E, k in ((8, 2), (256, 8)):
    shape = f"T={T},E={E},k={k}"
    g = torch.Generator(device="cuda").manual_seed(11)
    logits = torch.rand(T, E, device="cuda", generator=g) * 8 - 4
    x = torch.rand(T, D, device="cuda", generator=g) * 2 - 1
    gating_bytes = 4.0 * T * E + 8.0 * T * k

    def gating():
        p = torch.softmax(logits, dim=-1)
        w, ids = torch.topk(p, k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        return w, ids

    def gating_permute():
        w, ids = gating()
        order = torch.argsort(ids.reshape(-1), stable=True)  # slots grouped by expert, token order within
        tokens = order // k
        return torch.index_select(x, 0, tokens), w, order

    def permute_combine():
        sorted_x, w, order = gating_permute()
        out = torch.zeros_like(x)
        out.index_add_(0, order // k, sorted_x * w.reshape(-1)[order].unsqueeze(1))  # identity experts
        return out

    results.add(f"moe_gating/pytorch_softmax_topk/{shape}", time_cuda(torch, gating, args.repeats, args.warmup),
                bytes=gating_bytes)
    results.add(f"moe_gating/pytorch_softmax_topk_permute/{shape}",
                time_cuda(torch, gating_permute, args.repeats, args.warmup), bytes=gating_bytes)
    R = T * k
    dispatch_bytes = 4.0 * 6 * R + 2.0 * R * D * 4 + (R + T) * D * 4.0
    results.add(f"moe_dispatch/pytorch_permute_combine/{shape},D={D}",
                time_cuda(torch, permute_combine, args.repeats, args.warmup), bytes=dispatch_bytes)

results.write(args.json)
