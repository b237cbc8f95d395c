"""PyTorch baselines for `tinyllm bench greedy|temperature|top_k|top_p|min_p`:
sampling the next token from float32 logits the way users write it in eager PyTorch.

    python3 bench/baselines/sampling.py --json out/sampling_pytorch.json

Shapes: B=64, V=128256 (the default of `tinyllm bench`) and B=1, V=50257.
  greedy       logits.argmax(-1)
  temperature  softmax(logits / 0.7) -> multinomial
  top_k        topk(50) -> softmax -> multinomial -> gather the index
  top_p        sort descending -> softmax -> cumsum -> mask beyond p = 0.9
               (Hugging Face's TopPLogitsWarper) -> scatter back -> softmax -> multinomial
  min_p        softmax -> mask p < 0.1 * max p -> multinomial
Bytes = the logits read once (4·B·V), as for the tinyllm rows.
"""
from _timing import Results, parse_args, require_cuda_torch, time_cuda

args = parse_args(__doc__)
torch = require_cuda_torch()
results = Results(torch)


def greedy(logits):
    return logits.argmax(dim=-1)


def temperature(logits, t=0.7):
    return torch.multinomial(torch.softmax(logits / t, dim=-1), 1)


def top_k(logits, k=50):
    values, indices = torch.topk(logits, k, dim=-1)
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1)
    return indices.gather(-1, choice)


def top_p(logits, p=0.9):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove = cumulative > p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses p
    remove[..., 0] = False
    mask = remove.scatter(-1, sorted_indices, remove)
    filtered = logits.masked_fill(mask, float("-inf"))
    return torch.multinomial(torch.softmax(filtered, dim=-1), 1)


def min_p(logits, p=0.1):
    probs = torch.softmax(logits, dim=-1)
    keep = probs >= p * probs.max(dim=-1, keepdim=True).values
    return torch.multinomial(probs * keep, 1)


for B, V in ((64, 128256), (1, 50257)):
    torch.manual_seed(0)
    logits = torch.rand(B, V, device="cuda") * 16 - 8  # uniform [-8, 8), like `tinyllm bench`
    shape = f"B={B},V={V}"
    for component, what, fn in (("greedy", "argmax", greedy), ("temperature", "softmax_multinomial", temperature),
                                ("top_k", "topk_multinomial", top_k), ("top_p", "sort_cumsum_multinomial", top_p),
                                ("min_p", "softmax_mask_multinomial", min_p)):
        results.add(f"{component}/pytorch_{what}/{shape}", time_cuda(torch, lambda: fn(logits), args.repeats,
                                                                     args.warmup), bytes=4.0 * B * V)
results.write(args.json)
