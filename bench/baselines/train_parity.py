"""PyTorch replay of a `tinyllm train` run: the same initial weights, the same batches and
the same AdamW settings, and the per-step losses compared; then PyTorch's training speed on
the same model, batch and thread count (the baseline of docs/training.md's speed table).

    build/bin/tinyllm train --data data/kjv.txt --out /tmp/run --steps 20 --keep-initial --threads 2
    python3 bench/baselines/train_parity.py /tmp/run                   # losses of the 20 steps
    python3 bench/baselines/train_parity.py /tmp/run --time 10 --threads 2

What is replayed, from the run's folder:
  initial/            the weights before step 0, as transformers loads them (--keep-initial)
  data.tokens         the token file (tinyllm/data.hpp's layout); batch s is drawn exactly as
                      tinyllm's draw_batch does: window b starts at a position taken from
                      Philox4x32-10 (seed, stream 3, words 2(sB + b) and 2(sB + b) + 1),
                      reimplemented below
  training_state.json the options: batch, context, lr, warmup, weight decay, betas, eps, clip
  log.jsonl           tinyllm's loss at every step
The loop is torch.optim.AdamW over two parameter groups (matrices decay; embeddings, norms and
biases do not: tinyllm's default_weight_decay), torch.nn.utils.clip_grad_norm_, and the
learning rate of tinyllm's schedule (linear warmup, cosine to lr/10 at the last step) set
before each step. The loss is the mean cross-entropy of the logits against the next tokens
(plus router_aux_loss_coef x transformers' load-balancing loss for Mixtral), without dropout,
as tinyllm trains. Float32, CPU.
Passes when every compared step's loss agrees within --tolerance (1e-4) relative.

--time N: after the replay, N more steps of the same loop (batches continue), timed; prints
the median step time and tokens/s (the first 3 untimed). --compile: the model under
torch.compile as well.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("run", help="the folder of a tinyllm train run made with --keep-initial")
p.add_argument("--steps", type=int, default=20, help="steps to replay and compare (default 20)")
p.add_argument("--tolerance", type=float, default=1e-4, help="relative loss difference allowed (default 1e-4)")
p.add_argument("--time", type=int, default=0, help="time this many more steps (default 0: no timing)")
p.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count())
p.add_argument("--json", help="write the speed results to this file")
args = p.parse_args() if __name__ == "__main__" else None

try:
    import numpy as np
    import torch
    import transformers
except ImportError as e:
    print(f"train_parity: {e.name} is not importable (tools/bootstrap --python installs it): skipped")
    sys.exit(0)
transformers.logging.set_verbosity_error()
if args:
    torch.set_num_threads(args.threads)

M0, M1, W0, W1, MASK = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def philox_bits(seed, stream, n):
    """Word n of stream `stream` under `seed`: tinyllm/philox.hpp's convention."""
    block = n >> 2
    c = [block & MASK, (block >> 32) & MASK, stream & MASK, (stream >> 32) & MASK]
    k = [seed & MASK, (seed >> 32) & MASK]
    for r in range(10):
        if r:
            k = [(k[0] + W0) & MASK, (k[1] + W1) & MASK]
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK]
    return c[n & 3]


def read_token_file(path):
    with open(path, "rb") as f:
        header = f.read(64)
        assert header[:8] == b"TLTOKENS", f"{path}: not a token file"
        width = int.from_bytes(header[12:16], "little")
        count = int.from_bytes(header[16:24], "little")
        ids = np.frombuffer(f.read(), dtype=np.uint16 if width == 2 else np.uint32)
    assert ids.size == count, f"{path}: {ids.size} ids, header says {count}"
    return ids.astype(np.int64)


def draw_batch(ids, begin, end, seed, step, B, T):
    """tinyllm's draw_batch: B windows of T + 1 tokens from ids[begin:end]."""
    starts = end - begin - (T + 1) + 1
    tokens = np.empty((B, T), dtype=np.int64)
    targets = np.empty((B, T), dtype=np.int64)
    for b in range(B):
        k = 2 * (step * B + b)
        r = (philox_bits(seed, 3, k) << 32) | philox_bits(seed, 3, k + 1)
        s = begin + r % starts
        tokens[b] = ids[s:s + T]
        targets[b] = ids[s + 1:s + T + 1]
    return torch.from_numpy(tokens), torch.from_numpy(targets)


def learning_rate_at(o, step):
    """tinyllm's schedule_of + learning_rate_at."""
    max_lr, min_lr, warmup = o["lr"], o["lr"] / 10, o["warmup"]
    decay = max(o["steps"], warmup + 1)
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= decay:
        return min_lr
    ratio = (step - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def main():
    state = json.load(open(os.path.join(args.run, "training_state.json")))
    o = state["options"]
    B, T, seed = o["batch"], o["context"], o["seed"]
    train_begin, train_end = state["data"]["train"]
    ids = read_token_file(os.path.join(args.run, "data.tokens"))
    logged = {}
    for line in open(os.path.join(args.run, "log.jsonl")):
        entry = json.loads(line)
        if "loss" in entry:
            logged[entry["step"]] = entry["loss"]

    initial = os.path.join(args.run, "initial")
    if not os.path.exists(os.path.join(initial, "config.json")):
        sys.exit(f"train_parity: {initial} is missing: run tinyllm train with --keep-initial")
    model = transformers.AutoModelForCausalLM.from_pretrained(initial, torch_dtype=torch.float32,
                                                              attn_implementation="eager").train()
    mixtral = model.config.model_type == "mixtral"
    for module in model.modules():  # tinyllm trains without dropout (GPT2Config's default is 0.1)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        keep = param.dim() < 2 or any(e in name for e in ("embed", "wte", "wpe"))
        (no_decay if keep else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    params = decay + no_decay

    def step(s, net):
        tokens, targets = draw_batch(ids, train_begin, train_end, seed, s, B, T)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(o, s)
        optimizer.zero_grad(set_to_none=True)
        out = net(tokens, output_router_logits=True) if mixtral else net(tokens)
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1))
        total = loss + o["aux_weight"] * out.aux_loss if mixtral else loss
        total.backward()
        if o["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, o["clip"])
        optimizer.step()
        return loss.item()

    print(f"{args.run}: {model.config.model_type}, {sum(p.numel() for p in params) / 1e6:.2f}M parameters, "
          f"batch {B} x {T}, torch {torch.__version__}, {args.threads} threads")
    worst, compared = 0.0, 0
    print(f"{'step':>5} {'tinyllm':>12} {'pytorch':>12} {'relative':>10}")
    for s in range(args.steps):
        loss = step(s, model)
        if s in logged:
            rel = abs(loss - logged[s]) / abs(loss)
            worst, compared = max(worst, rel), compared + 1
            print(f"{s:>5} {logged[s]:>12.7f} {loss:>12.7f} {rel:>10.2e}")
        else:
            print(f"{s:>5} {'-':>12} {loss:>12.7f}")
    ok = compared > 0 and worst <= args.tolerance
    print(f"worst relative difference over {compared} steps: {worst:.2e} "
          f"({'within' if ok else 'NOT within'} {args.tolerance:g})")

    results = []
    if args.time > 0:
        nets = [("eager", model)]
        if args.compile:
            nets.append(("compile", torch.compile(model)))
        next_step = args.steps
        for label, net in nets:
            times = []
            for i in range(args.time + 3):
                start = time.perf_counter()
                step(next_step, net)
                next_step += 1
                if i >= 3:
                    times.append(time.perf_counter() - start)
            median = statistics.median(times)
            tps = B * T / median
            results.append({"name": f"train/pytorch_{label}_cpu", "median_ms": median * 1e3, "tokens_per_second": tps})
            print(f"pytorch {label}: {median * 1e3:.1f} ms/step, {tps:.0f} tokens/s (median of {args.time})")
    if args.json:
        json.dump({"context": {"torch": torch.__version__, "threads": args.threads}, "benchmarks": results},
                  open(args.json, "w"), indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
