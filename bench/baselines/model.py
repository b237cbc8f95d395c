"""PyTorch baseline for `tinyllm bench model`: transformers' own models, eager attention,
on the same shapes as tinyllm's model rows.

    python3 bench/baselines/model.py --json out/model_pytorch.json

Models, random-initialised (no download), attn_implementation="eager", float32 and bfloat16:
  gpt2_124m  GPT2LMHeadModel, GPT-2 small: vocab 50257, 12 layers, d=768, 12 heads
  llama_1b   LlamaForCausalLM with Llama-3.2-1B's config: vocab 128256, 16 layers, d=2048,
             32 heads over 8 KV heads of 64, FFN 8192, RoPE theta 500000 with llama3 scaling
             (factor 32, low 1, high 4, original 8192), tied embeddings
  mixtral_1b MixtralForCausalLM with llama_1b's shape, each MLP 8 experts of 4096, top 2, RoPE
             theta 1e6 (run by model_moe.py, for `tinyllm bench model_moe`)
Rows "model/pytorch_eager/<model>_<dtype>_<phase>_b<batch>", dtype fp32 or bf16, batch 1 or 32:
  prefill  B prompts of 128 tokens in one forward with use_cache=True and logits_to_keep=1
           (what generate() runs first); _timing.time_cuda (L2 flush, CUDA events, median of
           min(--repeats, 10) runs, 5 for llama_1b); tokens/s = B*128 / time.
  decode   after an untimed 128-token prefill, 32 steps of one token per sequence with the KV
           cache (use_cache=True), each step choosing its token by argmax; CUDA events around
           the 32 steps, divided by 32; median of 3 runs; tokens/s = B / step time.
Each row has tokens_per_second; prefill rows flops_per_second (2 flops per weight per token,
causal attention), decode rows bytes_per_second (the weights read once per step, plus the KV
cache at the middle step). float32 runs with PyTorch's defaults (no TF32 for matmuls).

The bandwidth floor of batch-1 decode is printed too: every step must read every weight once,
so a step cannot take less than weight bytes / memory bandwidth. Weight bytes = all parameters
(a tied embedding counted once, as the LM head reads it whole) less GPT-2's position table and,
when untied, the input embedding (a step reads only one row of each), and of a MoE layer the
experts that no token of the step can have chosen (B tokens choose at most min(E, k B) of them,
exactly k for one token; prefill's flops count k experts a token). The bandwidth is the
GPU's nominal peak when its name is known, and the measured rate of a 2 GiB device copy.
"""
import argparse
import json
import os
import statistics
import sys
import time

# Hidden options, for smoke-testing this script without a GPU (not part of the baseline):
#   --device cpu --smoke   tiny shapes, a few repeats, wall-clock timing.
_hidden = argparse.ArgumentParser(add_help=False)
_hidden.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
_hidden.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
# Which models (model_moe.py runs this script with --models mixtral_1b).
_hidden.add_argument("--models", nargs="+", default=["gpt2_124m", "llama_1b"], help=argparse.SUPPRESS)
hidden, sys.argv[1:] = _hidden.parse_known_args()

from _timing import Results, parse_args, require_cuda_torch, time_cuda  # noqa: E402

args = parse_args(__doc__)
if hidden.device == "cuda":
    torch = require_cuda_torch()
else:
    try:
        import torch
    except ImportError:
        print("torch is not importable: baseline skipped")
        sys.exit(0)
try:
    import transformers
except ImportError:
    print("transformers is not importable: baseline skipped")
    sys.exit(0)
transformers.logging.set_verbosity_error()
from _models import (MODELS, MOE_MODELS, cache_of, decode_cache_argument, kv_bytes,  # noqa: E402
                     last_logits_only, shape_of, step_weight_bytes)

DEVICE = hidden.device
PROMPT = 16 if hidden.smoke else 128
STEPS = 4 if hidden.smoke else 32
BATCHES = (1, 4) if hidden.smoke else (1, 32)
DTYPES = (("fp32", torch.float32), ("bf16", torch.bfloat16))
# Nominal memory bandwidth, bytes/s, by GPU name (the first match wins).
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.039e12),
                  ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12))


# ---- timing -------------------------------------------------------------------

def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_prefill(fn, repeats, warmup):
    """(median, min, max) microseconds of fn(): _timing's CUDA-event timer, or wall clock on the CPU."""
    if DEVICE == "cuda":
        return time_cuda(torch, fn, repeats, warmup)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times), min(times), max(times)


def time_decode(model, ids, repeats, warmup):
    """(median, min, max) microseconds of one decode step, each run = untimed prefill + STEPS timed steps."""
    flush = None
    if DEVICE == "cuda":
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        flush = torch.empty(2 * max(l2, 1 << 20), dtype=torch.uint8, device="cuda")

    cache_arg = decode_cache_argument(model)

    def one_run():
        out = model(ids, use_cache=True, **last_logits_only(model))
        cache, token = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        if flush is not None:
            flush.fill_(0x5A)
        sync()
        if DEVICE == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        for _ in range(STEPS):
            out = model(token, use_cache=True, **{cache_arg: cache})
            cache, token = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
        if DEVICE == "cuda":
            stop.record()
            stop.synchronize()
            total_us = start.elapsed_time(stop) * 1e3
        else:
            total_us = (time.perf_counter() - t0) * 1e6
        # The steps must have grown the cache (a cache argument ignored would time something else).
        length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else cache[0][0].shape[-2]
        assert length == ids.shape[1] + STEPS, f"the KV cache holds {length} positions, not {ids.shape[1] + STEPS}"
        return total_us / STEPS

    for _ in range(warmup):
        one_run()
    times = [one_run() for _ in range(repeats)]
    return statistics.median(times), min(times), max(times)


# ---- what a row moves and computes --------------------------------------------

def prefill_flops(model, config, B, T):
    L, Hq, _, Dh, D, V = shape_of(config)
    # What one token multiplies with (of a MoE layer, its k experts), less the LM head.
    matrices = step_weight_bytes(model, config, 1) // next(model.parameters()).element_size() - V * D
    return 2.0 * matrices * B * T + 2.0 * V * D * B + L * 4.0 * B * Hq * T * T * Dh / 2


def add_row(results, name, timing, tokens, bytes=0.0, flops=0.0):
    per_second = tokens / (timing[0] * 1e-6)
    results.add(name, timing, bytes, flops, extra={"tokens_per_second": per_second},
                note=f" {per_second:12.1f} tokens/s")


def bandwidth():
    """(nominal peak or None, measured copy rate) in bytes/s; (None, None) on the CPU."""
    if DEVICE != "cuda":
        return None, None
    name = torch.cuda.get_device_name(0)
    peak = next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)
    src = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    median, _, _ = time_cuda(torch, lambda: dst.copy_(src), 5, 2)
    del src, dst
    return peak, 2.0 * (1 << 31) / (median * 1e-6)  # read + write


def print_floor(label, wbytes, kv, peak, copy_rate):
    line = f"  {label}: weights read once per step = {wbytes / 1e6:.1f} MB (+ KV cache <= {kv / 1e6:.2f} MB)"
    for what, bw in (("nominal peak", peak), ("measured copy", copy_rate)):
        if bw:
            floor_us = wbytes / bw * 1e6
            line += f"; at {what} {bw / 1e12:.2f} TB/s: >= {floor_us:.0f} us/step, <= {1e6 / floor_us:.0f} tokens/s"
    print(line, flush=True)


# ---- the rows -----------------------------------------------------------------

def main():
    results = Results(torch)
    peak, copy_rate = bandwidth()
    floors = []
    small_repeats = 2 if hidden.smoke else 3
    generator = torch.Generator().manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {DEVICE}"
          + (f" ({torch.cuda.get_device_name(0)})" if DEVICE == "cuda" else ""), flush=True)
    chosen = [m for m in MODELS + MOE_MODELS if m[0] in hidden.models]
    unknown = set(hidden.models) - {m[0] for m in chosen}
    assert not unknown, f"no model named {sorted(unknown)}"
    for model_name, cls, make_config in chosen:
        config = make_config(hidden.smoke)
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = cls(config).eval()
        assert model.config._attn_implementation == "eager", model.config._attn_implementation
        big = model_name in ("llama_1b", "mixtral_1b") and not hidden.smoke
        for dtype_name, dtype in DTYPES:
            model.to(dtype)  # float32 first, then the same weights rounded to bfloat16
            element = next(model.parameters()).element_size()
            floors.append((f"{model_name} {dtype_name}", step_weight_bytes(model, config, 1),
                           kv_bytes(config, 1, PROMPT + STEPS, element)))
            for B in BATCHES:
                ids = torch.randint(0, config.vocab_size, (B, PROMPT), generator=generator).to(DEVICE)
                name = f"model/pytorch_eager/{model_name}_{dtype_name}_%s_b{B}"
                with torch.inference_mode():
                    prefill = lambda: model(ids, use_cache=True, **last_logits_only(model))  # noqa: E731
                    repeats = min(args.repeats, 5 if big else 10, 2 if hidden.smoke else args.repeats)
                    timing = time_prefill(prefill, repeats, min(args.warmup, 2))
                    add_row(results, name % "prefill", timing, B * PROMPT,
                            flops=prefill_flops(model, config, B, PROMPT))
                    timing = time_decode(model, ids, min(args.repeats, small_repeats), 1)
                    add_row(results, name % "decode", timing, B,
                            bytes=step_weight_bytes(model, config, B)
                            + kv_bytes(config, B, PROMPT + STEPS // 2, element))
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

    print("Bandwidth floor of batch-1 decode (weight bytes / memory bandwidth):", flush=True)
    for label, wbytes, kv in floors:
        print_floor(label, wbytes, kv, peak, copy_rate)
    if DEVICE == "cuda":
        results.write(args.json)
    elif args.json:
        with open(args.json, "w") as f:  # the same layout; Results.write asks CUDA for the device name
            json.dump({"context": {"library": "pytorch " + torch.__version__, "timer": "wall clock, median",
                                   "device": "cpu (smoke test)"}, "benchmarks": results.rows}, f, indent=1)


main()
