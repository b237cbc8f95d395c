#!/usr/bin/env python3
"""Encode throughput of tinyllm's SentencePiece-family encoders against Hugging Face
`tokenizers` and Google's `sentencepiece`, one thread, same machine, same run, same text.

    .venv/bin/pip install tokenizers sentencepiece          # tools/bootstrap --python does
    tools/prepare-kjv                                       # data/kjv.txt
    cmake --build build --target bench_tokenizer tinyllm_cli
    .venv/bin/python bench/sentencepiece_vs_hf.py --build build [--json out.json]

The text is the King James Bible (data/kjv.txt, 31,102 verses, 4.1 MB), encoded two ways:
  lines   each verse (its newline included) in its own encode call, as a data pipeline
          encodes documents; for the Python libraries one call per verse from Python
  whole   the whole text in one call (one sequence: no pre-tokenizer in the Llama form)
with the fixtures of tests/fixtures/sentencepiece (tools/make-sentencepiece-fixtures):
  bpe_llama.json, unigram.json   tinyllm tokenizer::encode_ordinary vs tokenizers
                                 Tokenizer.encode(text, add_special_tokens=False)
  bpe.model, unigram.model       tinyllm sentencepiece_processor::encode vs
                                 sentencepiece SentencePieceProcessor.encode(text)
  unigram sample (alpha 0.1)     tinyllm encode_sample on unigram.json vs sentencepiece's
                                 encode(enable_sampling=True, alpha=0.1, nbest_size=-1)
                                 on unigram.model (the same pieces and scores)
tinyllm is timed by bin/bench_tokenizer (Google Benchmark, its "sentencepiece/" rows, at
least 1 s each); the libraries here, repeated until 1 s has passed. Every figure is
bytes per second of *CPU time* of one thread (RAYON_NUM_THREADS=1 for tokenizers,
num_threads=1 for sentencepiece), so a busy machine distorts the ratio less.
Ids: `tinyllm tokenize --file` on the whole text must give exactly the library's ids
(for a .model file the CLI reads it as a tokenizer, the Hub converters' form); for the
lines, the total token counts must agree. Samples are random: their token counts are
printed (the same distribution gives nearly the same count).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

# tokenizers reads these when it first starts its thread pool: one thread, like tinyllm.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def cpu_time_rate(nbytes, fn, min_time=1.0):
    """bytes per second of CPU time of fn(), repeated until min_time has passed; and fn's last result."""
    n, start = 0, time.process_time()
    while True:
        result = fn()
        n += 1
        elapsed = time.process_time() - start
        if elapsed >= min_time:
            return nbytes * n / elapsed, result


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    osname = platform.platform()
    try:
        osname = "Debian " + open("/etc/debian_version").read().strip()
    except OSError:
        pass
    return cpu, osname


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--kjv", default=os.path.join(ROOT, "data", "kjv.txt"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "tests", "fixtures", "sentencepiece"))
    ap.add_argument("--json")
    args = ap.parse_args()
    import sentencepiece as spm
    import tokenizers

    text = open(args.kjv, encoding="utf-8", newline="").read()
    lines = text.splitlines(keepends=True)
    nbytes = len(text.encode("utf-8"))
    fx = lambda f: os.path.join(args.fixtures, f)  # noqa: E731
    bench = os.path.join(args.build, "bin", "bench_tokenizer")
    cli = os.path.join(args.build, "bin", "tinyllm")

    env = dict(os.environ, TINYLLM_BENCH_KJV=os.path.abspath(args.kjv),
               TINYLLM_BENCH_SP_DIR=os.path.abspath(args.fixtures))
    out = subprocess.run([bench, "--benchmark_filter=^sentencepiece/", "--benchmark_format=json"], env=env,
                         capture_output=True, text=True, check=True)
    ours = {}
    for b in json.loads(out.stdout)["benchmarks"]:
        name = b["name"].split("/min_time")[0]
        ours[name] = (b["bytes_per_second"], int(b["tokens"]))

    def hf(file):
        tok = tokenizers.Tokenizer.from_file(fx(file))
        return {"lines": lambda: [tok.encode(l, add_special_tokens=False).ids for l in lines],
                "whole": lambda: tok.encode(text, add_special_tokens=False).ids}

    def sp(file, **kw):
        proc = spm.SentencePieceProcessor(model_file=fx(file))
        return {"lines": lambda: proc.encode(lines, num_threads=1, **kw),
                "whole": lambda: proc.encode(text, num_threads=1, **kw)}

    sample = dict(enable_sampling=True, alpha=0.1, nbest_size=-1)
    cases = [  # (row name, tinyllm row prefix, tinyllm shape prefix, library name, library calls, check ids)
        ("bpe_llama.json", "sentencepiece/bpe_llama.json", "", f"tokenizers {tokenizers.__version__}", hf("bpe_llama.json"), True),
        ("unigram.json", "sentencepiece/unigram.json", "", f"tokenizers {tokenizers.__version__}", hf("unigram.json"), True),
        ("bpe.model", "sentencepiece/bpe.model", "", f"sentencepiece {spm.__version__}", sp("bpe.model"), True),
        ("unigram.model", "sentencepiece/unigram.model", "", f"sentencepiece {spm.__version__}", sp("unigram.model"), True),
        ("unigram sample a=0.1", "sentencepiece/unigram.json", "sample_", f"sentencepiece {spm.__version__}",
         sp("unigram.model", **sample), False),
    ]

    cpu, osname = machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {osname}, load average {load:.1f}; "
          f"{datetime.date.today().isoformat()}")
    print(f"text: {os.path.relpath(args.kjv, ROOT)}, {nbytes:,} bytes, {len(lines):,} lines; "
          f"one thread; MB/s = 10^6 bytes per second of CPU time\n")
    print(f"{'model':22} {'text':6} {'tinyllm MB/s':>12} {'library':20} {'MB/s':>6} {'ratio':>6}  ids")
    rows, ok = [], True
    for label, prefix, shape_prefix, lib, calls, check in cases:
        for shape in ("lines", "whole"):
            rate, ids = cpu_time_rate(nbytes, calls[shape])
            ours_rate, ours_tokens = ours[f"{prefix}/{shape_prefix}{shape}"]
            theirs_tokens = sum(len(x) for x in ids) if shape == "lines" else len(ids)
            if not check:
                verdict = f"random: {ours_tokens:,} vs {theirs_tokens:,} tokens"
            elif shape == "lines":
                same = ours_tokens == theirs_tokens
                ok &= same
                verdict = f"{'same' if same else 'DIFFERENT'} count, {theirs_tokens:,} tokens"
            else:
                file = label
                got = subprocess.run([cli, "tokenize", "--vocab", fx(file), "--special-as-text", "--file", args.kjv],
                                     capture_output=True, text=True, check=True).stdout.split()
                whole_ids_ok = [int(x) for x in got] == list(ids)
                ok &= whole_ids_ok and ours_tokens == theirs_tokens
                verdict = f"{'identical' if whole_ids_ok else 'DIFFERENT'}, {theirs_tokens:,} tokens"
            rows.append({"model": label, "text": shape, "tinyllm_MBps": ours_rate / 1e6, "library": lib,
                         "library_MBps": rate / 1e6, "ratio": ours_rate / rate, "tinyllm_tokens": ours_tokens,
                         "library_tokens": theirs_tokens, "ids": verdict})
            print(f"{label:22} {shape:6} {ours_rate / 1e6:12.2f} {lib:20} {rate / 1e6:6.2f} {ours_rate / rate:6.2f}  "
                  f"{verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpu, "os": osname, "date": datetime.date.today().isoformat(), "text_bytes": nbytes,
                       "rows": rows}, f, indent=1)
    if not ok:
        sys.exit("tinyllm's ids differ from the library's")


if __name__ == "__main__":
    main()
