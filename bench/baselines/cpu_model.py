"""PyTorch CPU baseline for bench/cpu/bench_model.cpp: transformers' own GPT-2 and Llama
models, eager attention, on the CPU, on the same shapes and thread count as tinyllm's
`model/*` rows.

    OMP_NUM_THREADS=2 python3 bench/baselines/cpu_model.py --json out/cpu_model_pytorch.json
    python3 bench/baselines/cpu_model.py --models gpt2_124m --threads 2     # GPT-2 only

Models (bench/baselines/_models.py), random-initialised, float32 and bfloat16 weights:
  gpt2_124m  GPT-2 small (vocab 50257, 12 layers, d=768, 12 heads), tied embeddings
  llama_1b   Llama-3.2-1B's shape (vocab 128256, 16 layers, d=2048, 32 heads over 8 KV
             heads of 64, FFN 8192), tied embeddings
Rows "model/pytorch_eager_cpu/<model>_<dtype>_<phase>", batch 1:
  prefill  one forward of a 128-token prompt with use_cache=True and logits_to_keep=1 (what
           generate() runs first); wall clock, median of --repeats (3 for llama_1b);
           tokens/s = 128 / time.
  decode   after an untimed 128-token prefill, 32 steps of one token with the KV cache, each
           choosing its token by argmax; time per step = the 32 steps / 32; median of 3 runs.
Under torch.inference_mode, torch.set_num_threads(--threads).

  train    model/pytorch_eager_cpu/train_gpt2_6m_b4_t64: one training step of a 5.8M-parameter
           GPT-2 (d=256, 6 layers of 8 heads, FFN 1024, 64 positions, vocabulary 4096; the
           train_step rows' model) on 4 rows of 64 tokens: zero_grad, forward with labels,
           backward, torch.optim.AdamW step (lr 1e-3, its defaults); no dropout; median of 10 after 3.
Also printed: the machine's copy bandwidth (a 1 GiB torch copy, bytes read + written per
second, median of 5) and each model's bandwidth floor for batch-1 decode: a step must read
every weight once (_models.weight_bytes), so it takes at least weight bytes / bandwidth.
"""
import argparse
import os
import statistics
import sys
import time

from _timing import Results, cpu_name, require_torch

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count())
p.add_argument("--models", default="gpt2_124m,llama_1b,train", help="comma-separated: gpt2_124m, llama_1b, train")
p.add_argument("--dtypes", default="fp32,bf16",
               help="comma-separated: fp32, bf16 (PyTorch's bf16 prefill of Llama-3.2-1B takes minutes per call)")
args = p.parse_args()

torch = require_torch()
try:
    import transformers
except ImportError:
    print("transformers is not importable: baseline skipped")
    sys.exit(0)
transformers.logging.set_verbosity_error()
from _models import MODELS, cache_of, decode_cache_argument, last_logits_only, weight_bytes  # noqa: E402

torch.set_num_threads(args.threads)
PROMPT, STEPS = 128, 32


def median_of(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = [fn() for _ in range(repeats)]
    return statistics.median(times), min(times), max(times)


def timed(fn):
    """A function that runs fn once and returns its wall-clock microseconds."""
    def run():
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6
    return run


def decode_step_us(model, ids):
    """Microseconds per decode step of one run: untimed prefill, then STEPS timed steps."""
    cache_arg = decode_cache_argument(model)
    out = model(ids, use_cache=True, **last_logits_only(model))
    cache, token = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    start = time.perf_counter()
    for _ in range(STEPS):
        out = model(token, use_cache=True, **{cache_arg: cache})
        cache, token = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    elapsed = (time.perf_counter() - start) * 1e6
    length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else cache[0][0].shape[-2]
    assert length == PROMPT + STEPS, f"the KV cache holds {length} positions, not {PROMPT + STEPS}"
    return elapsed / STEPS


def copy_bandwidth():
    """Bytes read + written per second by a 1 GiB copy (median of 5)."""
    src = torch.ones(1 << 28, dtype=torch.float32)
    dst = torch.empty_like(src)
    median, _, _ = median_of(timed(lambda: dst.copy_(src)), 5)
    return 2.0 * src.numel() * 4 / (median * 1e-6)


def train_step(results):
    # No dropout: tinyllm's forward_backward has none.
    config = transformers.GPT2Config(vocab_size=4096, n_positions=64, n_embd=256, n_layer=6, n_head=8,
                                     activation_function="gelu_new", tie_word_embeddings=True,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 4096, (4, 64), generator=torch.Generator().manual_seed(0))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()

    timing = median_of(timed(step), 10, warmup=3)
    tps = 4 * 64 / (timing[0] * 1e-6)
    results.add("model/pytorch_eager_cpu/train_gpt2_6m_b4_t64", timing, extra={"tokens_per_second": tps},
                note=f" {tps:10.1f} tokens/s ({params / 1e6:.2f}M parameters)")


def main():
    device = f"{cpu_name()}, {args.threads} threads"
    results = Results(torch, device=device, timer="wall clock, median")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {device}", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth (read + write): {bandwidth / 1e9:.2f} GB/s", flush=True)
    wanted = args.models.split(",")
    floors = []
    for name, cls, make_config in MODELS:
        if name not in wanted:
            continue
        config = make_config(False)
        torch.manual_seed(0)
        model = cls(config).eval()
        assert model.config._attn_implementation == "eager", model.config._attn_implementation
        ids = torch.randint(0, config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
        repeats = min(args.repeats, 3) if name == "llama_1b" else args.repeats
        for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if dtype_name not in args.dtypes.split(","):
                continue
            model.to(dtype)  # float32 first, then the same weights rounded to bfloat16
            wbytes = weight_bytes(model)
            row = f"model/pytorch_eager_cpu/{name}_{dtype_name}_%s"
            with torch.inference_mode():
                timing = median_of(timed(lambda: model(ids, use_cache=True, **last_logits_only(model))), repeats)
                tps = PROMPT / (timing[0] * 1e-6)
                results.add(row % "prefill128", timing, extra={"tokens_per_second": tps}, note=f" {tps:10.1f} tokens/s")
                timing = median_of(lambda: decode_step_us(model, ids), 3)
                tps = 1 / (timing[0] * 1e-6)
                results.add(row % "decode", timing, bytes=wbytes, extra={"tokens_per_second": tps},
                            note=f" {tps:10.2f} tokens/s")
            floors.append((f"{name} {dtype_name}", wbytes, tps))
        del model
    if "train" in wanted:
        train_step(results)
    print("Batch-1 decode against the bandwidth floor (weight bytes / copy bandwidth):")
    for label, wbytes, tps in floors:
        floor_ms = wbytes / bandwidth * 1e3
        print(f"  {label}: {wbytes / 1e6:.0f} MB per step, floor {floor_ms:.1f} ms/step ({1e3 / floor_ms:.1f} tokens/s);"
              f" measured {tps:.2f} tokens/s = {100 * tps * floor_ms / 1e3:.0f}% of it")
    results.write(args.json)


main()
