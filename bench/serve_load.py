#!/usr/bin/env python3
"""bench/serve_load.py — load `tinyllm serve` with a synthetic stream of requests.

    bench/serve_load.py --url http://127.0.0.1:8000 [--requests 64] [--rate 8]
                        [--corpus data/kjv.txt] [--min-tokens 16] [--max-tokens 128] [--seed 1]

Requests arrive as a Poisson process of --rate per second. Each is a streamed
/v1/completions request: a prompt of one to four consecutive lines of the corpus,
max_tokens uniform in [--min-tokens, --max-tokens], temperature 0.8, its own seed,
ignore_eos (so that every request runs its length and runs are comparable). For each the
client records the time to the first token (TTFT) and to the last; the report is
the throughput (completion tokens per second of wall time) and the percentiles.

Only the Python standard library: the server's events are read straight off the
HTTP stream. docs/serving.md has the measurements.
"""
import argparse
import json
import random
import statistics
import threading
import time
import urllib.request


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", help="the model name (default: the one /v1/models lists)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rate", type=float, default=8.0, help="mean arrivals per second")
    ap.add_argument("--corpus", default="data/kjv.txt")
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    model = a.model or json.load(urllib.request.urlopen(a.url + "/v1/models"))["data"][0]["id"]
    lines = [l for l in open(a.corpus, encoding="utf-8").read().splitlines() if l.strip()]
    rng = random.Random(a.seed)
    plan, t = [], 0.0
    for i in range(a.requests):
        t += rng.expovariate(a.rate)
        first = rng.randrange(len(lines) - 4)
        prompt = "\n".join(lines[first:first + rng.randint(1, 4)]) + "\n"
        plan.append((t, prompt, rng.randint(a.min_tokens, a.max_tokens), i))

    results = [None] * a.requests

    def run(at, prompt, max_tokens, i, start):
        time.sleep(max(0.0, start + at - time.perf_counter()))
        sent = time.perf_counter()
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
                           "seed": 1000 + i, "stream": True, "ignore_eos": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(a.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        first_token, tokens = None, 0
        with urllib.request.urlopen(req, timeout=600) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif first_token is None and event["choices"] and event["choices"][0]["text"]:
                    first_token = time.perf_counter()
        done = time.perf_counter()
        results[i] = (first_token - sent if first_token else done - sent, done - sent, tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(*p, start)) for p in plan]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    ttft = [r[0] * 1000 for r in results]
    latency = [r[1] * 1000 for r in results]
    tokens = sum(r[2] for r in results)
    print(f"{a.requests} requests at {a.rate:g}/s (Poisson), {a.min_tokens}-{a.max_tokens} new tokens each: "
          f"{tokens} tokens in {wall:.2f} s = {tokens / wall:.0f} tokens/s")
    print(f"TTFT ms: p50 {percentile(ttft, 50):.0f}  p99 {percentile(ttft, 99):.0f}  "
          f"mean {statistics.mean(ttft):.0f};  latency ms: p50 {percentile(latency, 50):.0f}  "
          f"p99 {percentile(latency, 99):.0f}")


if __name__ == "__main__":
    main()
