"""llm.c CPU baseline for the train_step rows of bench/cpu/bench_model.cpp: llm.c's reference
trainer train_gpt2.c (plain C with OpenMP loops, float32) timing one training step of the same
5.8M-parameter GPT-2 that tinyllm and cpu_model.py's train row time.

    git clone https://github.com/karpathy/llm.c /tmp/llm.c
    python3 bench/baselines/llmc_train.py --llmc-src /tmp/llm.c --work /tmp/llmc-work \\
        --json out/cpu_train_llmc.json

The script downloads nothing: --llmc-src is a checkout of github.com/karpathy/llm.c (the
directory holding train_gpt2.c and llmc/). Everything else is written under --work:
  gpt2_6m.bin        a random-initialised checkpoint in llm.c's format (int32 header of 256:
                     magic 20240326, version 3, maxT 64, V 4096, L 6, NH 8, C 256, Vp 4096; then
                     the float32 tensors in train_gpt2.c's order). Weights and embeddings are
                     normal(0, 0.02), biases 0, layer-norm scales 1. FFN 4*C, tied embeddings.
  tokens_train.bin,  random token ids < 4096 in llm.c's token-file format (int32 header of 256:
  tokens_val.bin     magic 20240520, version 1, token count; then uint16 tokens)
  train_gpt2.c       a copy with these plain-text patches, each checked to match exactly once:
                       "gpt2_124M.bin"                    -> "gpt2_6m.bin"
                       the tiny_shakespeare train/val paths -> "tokens_train.bin"/"tokens_val.bin"
                       "int B = 4;" / "int T = 64;"         -> B and T below (the same values today,
                                                              so these only check the source)
                       "step <= 40"                       -> "step < STEPS" (--steps)
                       "if (step > 0 && step % 20 == 0)"  -> "if (0)": turns off text generation,
                                                              which would start from the tokenizer's
                                                              end-of-text id, unset here (no
                                                              tokenizer file; llm.c treats it as
                                                              optional and prints a warning).
                     Its validation pass (5 batches every 10 steps) is left on: it runs before the
                     step's clock starts.
  train_gpt2         built as llm.c's Makefile builds it on Linux with OpenMP:
                     CC -Ofast -Wno-unused-result -Wno-ignored-pragmas -Wno-unknown-attributes
                        -march=native -fopenmp -DOMP train_gpt2.c -lm -lgomp

The program is run with OMP_NUM_THREADS=--threads. Each step it prints "step N: train loss L
(took X ms)", timed with clock_gettime around the batch load, forward, zero_grad, backward and
AdamW update (llm.c's lr 1e-4, no weight decay). Step 0 also allocates the gradients and the
AdamW state, so it is dropped as warm-up; the row is the median (and min/max) of the rest,
"model/llmc_cpu/train_gpt2_6m_b4_t64", beside cpu_model.py's
"model/pytorch_eager_cpu/train_gpt2_6m_b4_t64"; tokens/s = B*T / median step time.
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
from array import array

from _timing import Results, cpu_name

# The model (tinyllm's gpt2_6m in bench/cpu/bench_model.cpp) and the batch.
VOCAB, CONTEXT, LAYERS, HEADS, CHANNELS = 4096, 64, 6, 8, 256
B, T = 4, 64
ROW = "model/llmc_cpu/train_gpt2_6m_b4_t64"
CFLAGS = ["-Ofast", "-Wno-unused-result", "-Wno-ignored-pragmas", "-Wno-unknown-attributes",
          "-march=native", "-fopenmp", "-DOMP"]
LDLIBS = ["-lm", "-lgomp"]


def parameter_tensors():
    """(name, element count, initial value) in the order train_gpt2.c reads them.
    The value is "normal" for normal(0, 0.02), else a constant."""
    V, C, L = VOCAB, CHANNELS, LAYERS
    return [("wte", V * C, "normal"), ("wpe", CONTEXT * C, "normal"),
            ("ln1w", L * C, 1.0), ("ln1b", L * C, 0.0),
            ("qkvw", L * 3 * C * C, "normal"), ("qkvb", L * 3 * C, 0.0),
            ("attprojw", L * C * C, "normal"), ("attprojb", L * C, 0.0),
            ("ln2w", L * C, 1.0), ("ln2b", L * C, 0.0),
            ("fcw", L * 4 * C * C, "normal"), ("fcb", L * 4 * C, 0.0),
            ("fcprojw", L * C * 4 * C, "normal"), ("fcprojb", L * C, 0.0),
            ("lnfw", C, 1.0), ("lnfb", C, 0.0)]


def header(*values):
    """llm.c's file header: 256 int32, the given values first, the rest zero."""
    return struct.pack("<256i", *values, *([0] * (256 - len(values))))


def write_checkpoint(path, rng):
    count = 0
    with open(path, "wb") as f:
        f.write(header(20240326, 3, CONTEXT, VOCAB, LAYERS, HEADS, CHANNELS, VOCAB))
        for _, n, init in parameter_tensors():
            if init == "normal":
                values = array("f", (rng.gauss(0.0, 0.02) for _ in range(n)))
            else:
                values = array("f", [init]) * n
            values.tofile(f)  # native byte order, as train_gpt2.c freads it
            count += n
    return count


def write_tokens(path, count, rng):
    with open(path, "wb") as f:
        f.write(header(20240520, 1, count))
        array("H", (rng.randrange(VOCAB) for _ in range(count))).tofile(f)


def patch(source, old, new):
    if source.count(old) != 1:
        sys.exit(f"train_gpt2.c: expected {old!r} exactly once, found it {source.count(old)} times; "
                 "this llm.c version differs from the one the script was written for")
    return source.replace(old, new)


def prepare_source(src_dir, work, steps):
    shutil.copytree(os.path.join(src_dir, "llmc"), os.path.join(work, "llmc"), dirs_exist_ok=True)
    with open(os.path.join(src_dir, "train_gpt2.c")) as f:
        source = f.read()
    source = patch(source, '"gpt2_124M.bin"', '"gpt2_6m.bin"')
    source = patch(source, '"dev/data/tinyshakespeare/tiny_shakespeare_train.bin"', '"tokens_train.bin"')
    source = patch(source, '"dev/data/tinyshakespeare/tiny_shakespeare_val.bin"', '"tokens_val.bin"')
    source = patch(source, "int B = 4;", f"int B = {B};")
    source = patch(source, "int T = 64;", f"int T = {T};")
    source = patch(source, "step <= 40", f"step < {steps}")
    source = patch(source, "if (step > 0 && step % 20 == 0)", "if (0)")
    with open(os.path.join(work, "train_gpt2.c"), "w") as f:
        f.write(source)


def compile_trainer(cc, work):
    command = [cc, *CFLAGS, "train_gpt2.c", *LDLIBS, "-o", "train_gpt2"]
    print(" ".join(command), flush=True)
    built = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"compiling train_gpt2.c failed:\n{built.stderr}")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()
    return version[0] if version else cc


def run_trainer(work, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    ran = subprocess.run(["./train_gpt2"], cwd=work, env=env, capture_output=True, text=True)
    if ran.returncode != 0:
        sys.exit(f"train_gpt2 exited with {ran.returncode}:\n{ran.stdout}\n{ran.stderr}")
    steps = re.findall(r"^step (\d+): train loss (\S+) \(took ([0-9.]+) ms\)", ran.stdout, re.MULTILINE)
    for step, loss, ms in steps:
        print(f"  step {step}: loss {loss}, {float(ms):.2f} ms", flush=True)
    return [float(ms) for _, _, ms in steps]


class LlmcResults(Results):
    """_timing's Results, naming llm.c (not PyTorch) as the library in the JSON."""

    def __init__(self, library, device):
        super().__init__(None, device=device, timer="wall clock (train_gpt2.c's clock_gettime per step), median")
        self.library = library

    def write(self, path):
        if not path:
            return
        context = {"library": self.library, "timer": self.timer, "device": self.device}
        with open(path, "w") as f:
            json.dump({"context": context, "benchmarks": self.rows}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llmc-src", required=True, help="a checkout of github.com/karpathy/llm.c")
    p.add_argument("--work", required=True, help="scratch directory (created if missing)")
    p.add_argument("--steps", type=int, default=20, help="training steps, the first one a warm-up")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for the run")
    p.add_argument("--cc", default="gcc", help="C compiler")
    p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
    args = p.parse_args()
    if args.steps < 2:
        sys.exit("--steps must be at least 2: the first step is a warm-up")
    if not os.path.isfile(os.path.join(args.llmc_src, "train_gpt2.c")):
        sys.exit(f"{args.llmc_src} has no train_gpt2.c: pass a checkout of github.com/karpathy/llm.c")
    os.makedirs(args.work, exist_ok=True)

    rng = random.Random(0)
    params = write_checkpoint(os.path.join(args.work, "gpt2_6m.bin"), rng)
    write_tokens(os.path.join(args.work, "tokens_train.bin"), 64 * B * T + 1, rng)
    write_tokens(os.path.join(args.work, "tokens_val.bin"), 8 * B * T + 1, rng)
    prepare_source(args.llmc_src, args.work, args.steps)
    compiler = compile_trainer(args.cc, args.work)

    device = f"{cpu_name()}, {args.threads} threads"
    print(f"llm.c train_gpt2.c ({compiler}), {params / 1e6:.2f}M parameters, B={B} T={T}, {device}", flush=True)
    times = run_trainer(args.work, args.threads)
    if len(times) != args.steps:
        sys.exit(f"expected {args.steps} step lines from train_gpt2, parsed {len(times)}")
    timed = times[1:]
    median, fastest = statistics.median(timed), min(timed)
    print(f"llm.c train step: median {median:.2f} ms, min {fastest:.2f} ms over {len(timed)} steps "
          f"(after 1 warm-up); {B * T / (median * 1e-3):.1f} tokens/s at the median, "
          f"{B * T / (fastest * 1e-3):.1f} at the min", flush=True)

    results = LlmcResults(f"llm.c train_gpt2.c ({compiler})", device)
    tps = B * T / (median * 1e-3)
    results.add(ROW, (median * 1e3, fastest * 1e3, max(timed) * 1e3), extra={"tokens_per_second": tps},
                note=f" {tps:10.1f} tokens/s ({params / 1e6:.2f}M parameters)")
    results.write(args.json)


if __name__ == "__main__":
    main()
