#!/usr/bin/env python3
"""Encode throughput of tinyllm's byte-level BPE against tiktoken, one thread,
same machine, same run, same texts; and training time.

    pip install tiktoken            # optional: tokenizers (HF training time for comparison)
    cmake --build build --target bench_tokenizer tinyllm_cli
    python3 bench/tokenizer_vs_tiktoken.py --build build --shared ../shared [--json out.json]

Texts (written to a temporary folder and given to both):
  prose         English prose: the license texts in /usr/share/common-licenses (or a
                built-in paragraph), repeated to --mb megabytes
  code          Python source from the interpreter's standard library
  multilingual  tests/fixtures/tokenizer/conformance.json texts (many scripts, emoji)
For each (encoding, text) the script checks that the ids are identical (on the first
256 KiB), then reports MB/s for both and the ratio tinyllm / tiktoken.
tiktoken is timed with encode_ordinary on the whole text (its Rust core runs on one
thread for one call); tinyllm with bin/bench_tokenizer (Google Benchmark, min 1 s).
Both throughputs are bytes per second of *CPU time* of one thread, so a busy machine
does not distort the ratio; training rows are wall time.
Training: `tinyllm train-tokenizer --vocab-size 4096` on 1 MB and 10 MB of the texts
(wall time of the process, including reading the files).
"""
import argparse
import base64
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

# HF tokenizers reads these when it first starts its thread pool: one thread, like tinyllm.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
PATTERNS = {
    "r50k_base": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def make_texts(mb):
    size = int(mb * (1 << 20))
    prose = ""
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            prose += open(p, encoding="utf-8", errors="ignore").read()
    if len(prose) < 10000:
        prose = "Byte pair encoding merges the most frequent adjacent pair of symbols into a new one. " * 200
    code = ""
    for p in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        code += open(p, encoding="utf-8", errors="ignore").read()
        if len(code) > size:
            break
    conf = json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "conformance.json"), encoding="utf-8"))
    multi = "\n".join(conf["texts"])

    def fit(t):
        t = t * (size // max(1, len(t.encode("utf-8"))) + 1)
        b = t.encode("utf-8")[:size]
        return b.decode("utf-8", errors="ignore")

    return {"prose": fit(prose), "code": fit(code), "multilingual": fit(multi)}


def time_tiktoken(enc, text, min_time=1.0):
    # CPU time of this process, like Google Benchmark's bytes_per_second for
    # tinyllm: on a shared, loaded machine wall time would mostly measure the
    # other processes. tiktoken encodes one call on the calling thread.
    enc.encode_ordinary(text[:1000])
    n, start = 0, time.process_time()
    while True:
        enc.encode_ordinary(text)
        n += 1
        elapsed = time.process_time() - start
        if elapsed >= min_time:
            return len(text.encode("utf-8")) * n / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--mb", type=float, default=2.0, help="megabytes per text (default 2)")
    ap.add_argument("--train-mb", default="1,10", help="corpus sizes for the training rows ('' to skip)")
    ap.add_argument("--json")
    args = ap.parse_args()
    import tiktoken

    bench = os.path.join(args.build, "bin", "bench_tokenizer")
    cli = os.path.join(args.build, "bin", "tinyllm")
    tmp = tempfile.mkdtemp(prefix="tinyllm_tokbench_")
    texts = make_texts(args.mb)
    paths = []
    for name, text in texts.items():
        p = os.path.join(tmp, name + ".txt")
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        paths.append(p)
    shared_tok = os.path.join(args.shared, "data", "tokenizers")
    env = dict(os.environ, TINYLLM_SHARED_DIR=os.path.abspath(args.shared), TINYLLM_BENCH_TEXTS=",".join(paths),
               TINYLLM_BENCH_TRAIN_MB="1")
    out = subprocess.run([bench, "--benchmark_filter=^encode/", "--benchmark_format=json"], env=env,
                         capture_output=True, text=True, check=True)
    ours = {b["name"].split("/min_time")[0]: b["bytes_per_second"] for b in json.loads(out.stdout)["benchmarks"]}

    rows = []
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average {load:.1f}; tiktoken {tiktoken.__version__}; "
          f"one thread; {args.mb} MB per text; MB/s of CPU time\n")
    print(f"{'encoding':12} {'text':13} {'tinyllm MB/s':>13} {'tiktoken MB/s':>14} {'ratio':>6}  ids")
    for enc_name in ("r50k_base", "cl100k_base"):
        enc = tiktoken.Encoding(enc_name, pat_str=PATTERNS[enc_name],
                                mergeable_ranks=load_ranks(os.path.join(shared_tok, enc_name + ".tiktoken")),
                                special_tokens={})
        for name, text in texts.items():
            # identical ids on a prefix (the CLI prints the ids)
            sample = text[:256 * 1024]
            sample_path = os.path.join(tmp, "sample.txt")
            with open(sample_path, "w", encoding="utf-8", newline="") as f:
                f.write(sample)
            got = subprocess.run([cli, "tokenize", "--vocab", os.path.join(shared_tok, enc_name + ".tiktoken"),
                                  "--encoding", enc_name, "--special-as-text", "--file", sample_path],
                                 capture_output=True, text=True, check=True).stdout.split()
            same = [int(x) for x in got] == enc.encode_ordinary(sample)
            tk = time_tiktoken(enc, text)
            us = ours[f"encode/{enc_name}/{name}"]
            rows.append({"encoding": enc_name, "text": name, "tinyllm_MBps": us / 1e6, "tiktoken_MBps": tk / 1e6,
                         "ratio": us / tk, "identical_ids": same})
            print(f"{enc_name:12} {name:13} {us / 1e6:13.1f} {tk / 1e6:14.1f} {us / tk:6.2f}  "
                  f"{'identical' if same else 'DIFFERENT'}")
    train_rows = []
    if args.train_mb:
        print(f"\ntraining, vocab 4096, cl100k pattern ({'tinyllm train-tokenizer'}):")
        corpus = "".join(texts.values())
        for mb in [float(x) for x in args.train_mb.split(",")]:
            size = int(mb * (1 << 20))
            c = (corpus * (size // len(corpus.encode("utf-8")) + 1)).encode("utf-8")[:size].decode("utf-8", "ignore")
            p = os.path.join(tmp, f"train_{mb}.txt")
            with open(p, "w", encoding="utf-8", newline="") as f:
                f.write(c)
            start = time.perf_counter()  # wall time, includes starting the process and reading the file
            subprocess.run([cli, "train-tokenizer", "--vocab-size", "4096", "--out", os.path.join(tmp, "v.tinyllm"), p],
                           check=True, capture_output=True)
            ours_s = time.perf_counter() - start
            hf_s = None
            try:
                from tokenizers import Tokenizer, models, pre_tokenizers, trainers
                tok = Tokenizer(models.BPE())
                tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                trainer = trainers.BpeTrainer(vocab_size=4096, show_progress=False,
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
                start = time.perf_counter()
                tok.train([p], trainer)
                hf_s = time.perf_counter() - start
            except ImportError:
                pass
            train_rows.append({"MB": mb, "tinyllm_s": ours_s, "hf_tokenizers_s": hf_s})
            print(f"  {mb:5.1f} MB: tinyllm {ours_s:7.2f} s" +
                  (f"   HF tokenizers {hf_s:7.2f} s (RAYON_NUM_THREADS=1)" if hf_s else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpu, "encode": rows, "train": train_rows}, f, indent=1)
    if not all(r["identical_ids"] for r in rows):
        sys.exit("ids differ from tiktoken")


if __name__ == "__main__":
    main()
