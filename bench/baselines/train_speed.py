"""Training speed side by side: `tinyllm train` and PyTorch eager on the same model, batches
and thread count, taken in turns on the same machine (its speed drifts by 10-20% from
minute to minute, so the two are measured alternately, not one after the other).

    python3 bench/baselines/train_speed.py build/bin/tinyllm --data data/kjv.txt --threads 2
    python3 bench/baselines/train_speed.py build/bin/tinyllm --data data/kjv.txt -- --batch 8 --layers 6

Each round: `tinyllm train ... --keep-initial --steps S` into a scratch folder (its step times
are read from log.jsonl), then train_parity.py replays the same run in PyTorch and times S
more steps of the same loop (torch.optim.AdamW, clipping, the schedule; --compile: also
under torch.compile). Step times are medians over the steps after the first 3; the table
reports per round and the median over rounds, in ms/step and tokens/s; the ratio is
PyTorch's time over tinyllm's (above 1: tinyllm faster). Arguments after "--" go to tinyllm
train (the model's shape and the run's options; the default model's when none).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("tinyllm", help="the tinyllm binary (build/bin/tinyllm)")
p.add_argument("--data", required=True, help="the text to train on")
p.add_argument("--steps", type=int, default=20, help="timed steps per round and side (default 20)")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--compile", action="store_true", help="also time PyTorch under torch.compile")
p.add_argument("--json", help="write the results here")
argv = sys.argv[1:]
train_args = argv[argv.index("--") + 1:] if "--" in argv else []
args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

here = os.path.dirname(os.path.abspath(__file__))
work = tempfile.mkdtemp(prefix="tinyllm_train_speed_")
rows = []
try:
    for r in range(args.rounds):
        run = os.path.join(work, f"run{r}")
        subprocess.run([args.tinyllm, "train", "--data", args.data, "--out", run, "--steps", str(args.steps + 3),
                        "--keep-initial", "--eval-every", "100000", "--eval-batches", "1", "--sample-tokens", "0",
                        "--threads", str(args.threads)] + train_args,
                       check=True, stdout=subprocess.DEVNULL)
        seconds = [json.loads(line)["seconds"] for line in open(os.path.join(run, "log.jsonl")) if '"loss"' in line]
        state = json.load(open(os.path.join(run, "training_state.json")))
        tokens = state["options"]["batch"] * state["options"]["context"]
        ours = statistics.median(seconds[3:])
        out = os.path.join(run, "pytorch.json")
        cmd = [sys.executable, os.path.join(here, "train_parity.py"), run, "--steps", "1", "--time", str(args.steps),
               "--threads", str(args.threads), "--json", out]
        if args.compile:
            cmd.append("--compile")
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        theirs = {b["name"]: b["median_ms"] / 1e3 for b in json.load(open(out))["benchmarks"]}
        rows.append({"tinyllm": ours, **theirs})
        line = f"round {r + 1}: tinyllm {ours * 1e3:7.1f} ms/step ({tokens / ours:6.0f} tokens/s)"
        for name, t in theirs.items():
            line += f", {name.split('/')[1]} {t * 1e3:7.1f} ms ({tokens / t:6.0f} tokens/s, x{t / ours:.2f})"
        print(line, flush=True)
        shutil.rmtree(run)
finally:
    shutil.rmtree(work, ignore_errors=True)

summary = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
print(f"median of {args.rounds} rounds, {tokens} tokens per step, {args.threads} threads:")
for k, t in summary.items():
    print(f"  {k:28s} {t * 1e3:8.1f} ms/step {tokens / t:8.0f} tokens/s  ratio to tinyllm x{t / summary['tinyllm']:.2f}")
if args.json:
    json.dump({"tokens_per_step": tokens, "threads": args.threads, "rounds": rows, "median_seconds": summary},
              open(args.json, "w"), indent=2)
