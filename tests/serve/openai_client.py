#!/usr/bin/env python3
"""tests/serve/openai_client.py — `tinyllm serve` driven by the official openai client.

    openai_client.py TINYLLM MODEL_DIR

Starts `TINYLLM serve --model MODEL_DIR --port 0` and checks, through the openai
package's own client (exit 77, CTest's "skipped", when it is not installed):

  * /v1/models lists the model;
  * completions and chat completions, streamed and not, give the same text, and
    the usage counts the tokens;
  * a sampled completion is exactly what `tinyllm generate` prints for the same
    prompt, temperature and seed;
  * 32 requests at once (mixed prompts, lengths, temperatures, seeds, streamed or
    not) each equal the same request made alone afterwards;
  * a stop string ends the text before it, with finish_reason "stop";
  * bad requests raise the client's BadRequestError / NotFoundError with a message
    naming the field;
  * log-probabilities (completions and chat, streamed and not) are log softmax of
    what `tinyllm logits` prints;
  * a stream the client abandons is cancelled: /metrics shows no running request
    and the KV blocks back (only the prefix cache holds any).
"""
import concurrent.futures
import math
import os
import re
import subprocess
import sys
import time
import urllib.request

try:
    import openai
except ImportError:
    print("the openai package is not installed (tools/bootstrap puts it in .venv/); skipped")
    sys.exit(77)

TINYLLM, MODEL_DIR = sys.argv[1], sys.argv[2]
failures = []


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def metrics(base):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


server = subprocess.Popen([TINYLLM, "serve", "--model", MODEL_DIR, "--port", "0", "--max-batch", "8",
                           "--token-budget", "64", "--prefill-chunk", "16", "--block-size", "8",
                           "--kv-blocks", "2048"],
                          stdout=subprocess.PIPE, text=True)
try:
    first = server.stdout.readline()
    match = re.search(r"(http://[0-9.]+:[0-9]+)\s+model '([^']+)'", first)
    if not match:
        print("the server did not print its address: " + repr(first))
        sys.exit(1)
    base, name = match.group(1), match.group(2)
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)

    models = client.models.list()
    check([m.id for m in models.data] == [name], f"/v1/models lists '{name}'")

    prompt = "In the beginning"
    c = client.completions.create(model=name, prompt=prompt, max_tokens=10, temperature=0)
    text = c.choices[0].text
    check(c.object == "text_completion" and c.choices[0].finish_reason in ("length", "stop"),
          f"completion: {text!r}, finish_reason {c.choices[0].finish_reason}")
    check(c.usage.completion_tokens == 10 or c.choices[0].finish_reason == "stop",
          f"usage: {c.usage.prompt_tokens} prompt + {c.usage.completion_tokens} completion tokens")
    check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "usage adds up")
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=name, prompt=prompt, max_tokens=10, temperature=0, stream=True) if ch.choices)
    check(streamed == text, f"streamed completion equals the whole one ({streamed!r})")

    # The same draw as `tinyllm generate` (which prints the prompt, then the continuation).
    sampled = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0.9, seed=7)
    cli = subprocess.run([TINYLLM, "generate", "--model", MODEL_DIR, "--prompt", prompt, "--temperature", "0.9",
                          "--seed", "7", "--max-new-tokens", "12"], capture_output=True, text=True, check=True)
    check(cli.stdout == prompt + sampled.choices[0].text + "\n",
          f"seed 7, temperature 0.9: the server's {sampled.choices[0].text!r} is what tinyllm generate prints")

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who made the light?"}]
    chat = client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0)
    reply = chat.choices[0].message.content
    check(chat.object == "chat.completion" and chat.choices[0].message.role == "assistant",
          f"chat reply {reply!r}")
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    check(chunks[0].choices[0].delta.role == "assistant", "the first chat chunk names the role")
    check("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == reply,
          "streamed chat equals the whole reply")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens,
          "stream_options.include_usage: the last chunk carries the usage")

    # A stop string taken from the greedy text itself: the reply ends just before it.
    long = client.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0).choices[0].text
    if len(long) >= 8:
        stop = long[4:7]
        cut = client.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "zzzz"])
        check(cut.choices[0].text == long[:long.index(stop)] and cut.choices[0].finish_reason == "stop",
              f"stop {stop!r}: {cut.choices[0].text!r}, finish_reason {cut.choices[0].finish_reason}")
        s_text = "".join(ch.choices[0].text for ch in client.completions.create(
            model=name, prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True) if ch.choices)
        check(s_text == cut.choices[0].text, "streamed with the stop string: the same text")
    else:
        check(False, f"the greedy text {long!r} is too short to take a stop string from")

    # 32 at once, then each alone: the same text.
    words = ["And God said", "Let there be light", "the earth was without form", "and void", "In the beginning"]

    def request(i):
        kwargs = dict(model=name, prompt=words[i % 5] * (1 + i % 3), max_tokens=4 + i % 9,
                      temperature=0 if i % 4 == 0 else 0.7 + 0.05 * (i % 5), seed=100 + i)
        if i % 3 == 0:
            return "".join(ch.choices[0].text for ch in client.completions.create(stream=True, **kwargs) if ch.choices)
        return client.completions.create(**kwargs).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(request, range(32)))
    alone = [request(i) for i in range(32)]
    same = sum(a == b for a, b in zip(together, alone))
    check(same == 32, f"32 concurrent requests: {same} of 32 equal the same request made alone")

    # Bad requests: the client's exceptions, with the field named.
    def raises(exc, fragment, **kwargs):
        try:
            client.completions.create(**kwargs)
        except exc as e:
            return fragment in str(e)
        return False

    check(raises(openai.NotFoundError, "does not exist", model="no-such-model", prompt="x"), "unknown model: 404")
    check(raises(openai.BadRequestError, "temperature", model=name, prompt="x", temperature=5), "temperature 5: 400")
    check(raises(openai.BadRequestError, "'n'", model=name, prompt="x", n=2), "n = 2: 400")
    check(raises(openai.BadRequestError, "top_p", model=name, prompt="x", top_p=0), "top_p = 0: 400")
    check(raises(openai.BadRequestError, "positions", model=name, prompt="x", max_tokens=10 ** 6),
          "max_tokens past the server's positions: 400")

    # Log-probabilities, greedy: the first token's are log softmax of what `tinyllm logits` prints for
    # the prompt; each token is its own top 1; streamed chunks carry the same entries.
    ids = [5, 6, 7, 5, 6]
    lp = client.completions.create(model=name, prompt=ids, max_tokens=6, temperature=0, logprobs=3)
    L = lp.choices[0].logprobs
    raw = subprocess.run([TINYLLM, "logits", "--model", MODEL_DIR, "--prompt-ids", " ".join(map(str, ids))],
                         capture_output=True, text=True, check=True).stdout.split()
    z = [float(x) for x in raw]
    mx = max(z)
    lse = mx + math.log(sum(math.exp(x - mx) for x in z))
    want = sorted((x - lse for x in z), reverse=True)[:3]
    got = sorted(L.top_logprobs[0].values(), reverse=True)
    check(len(L.tokens) == lp.usage.completion_tokens and len(L.token_logprobs) == len(L.tokens) and
          len(L.top_logprobs) == len(L.tokens) and len(L.text_offset) == len(L.tokens),
          f"completions logprobs=3: {len(L.tokens)} entries for {lp.usage.completion_tokens} tokens")
    check(abs(L.token_logprobs[0] - want[0]) < 1e-4 and all(abs(a - b) < 1e-4 for a, b in zip(got, want)),
          f"the first token's log p {L.token_logprobs[0]:.6f} and top 3 are log softmax of `tinyllm logits` "
          f"({want[0]:.6f})")
    check(all(t <= 0 and abs(t - max(top.values())) < 1e-6 for t, top in zip(L.token_logprobs, L.top_logprobs)),
          "greedy: each token is its own most likely")
    check(L.text_offset[0] == 0 and "".join(L.tokens) == lp.choices[0].text or "bytes:" in "".join(L.tokens),
          f"the tokens spell the text {lp.choices[0].text!r}")
    # text_offset counts characters of the reply as returned, where each invalid byte sequence
    # (a token that is part of a character, sampled here) is one U+FFFD: every whole-text token
    # is found at its offset.
    placed = 0
    for seed in range(1, 6):
        r = client.completions.create(model=name, prompt="The tiger", max_tokens=12, seed=seed, logprobs=1)
        text, L2 = r.choices[0].text, r.choices[0].logprobs
        ok = all(b >= a for a, b in zip(L2.text_offset, L2.text_offset[1:])) and all(o <= len(text) for o in L2.text_offset)
        for tok, off in zip(L2.tokens, L2.text_offset):
            if not tok.startswith("bytes:"):
                ok = ok and text[off:off + len(tok)] == tok
                placed += 1
        check(ok, f"seed {seed}: text_offset {L2.text_offset} places the tokens {L2.tokens} in {text!r}")
    check(placed > 0, f"text_offset: {placed} whole-text tokens found at their offsets in 5 sampled replies")
    s_lp = [x for ch in client.completions.create(model=name, prompt=ids, max_tokens=6, temperature=0, logprobs=3,
                                                  stream=True) if ch.choices and ch.choices[0].logprobs
            for x in ch.choices[0].logprobs.token_logprobs]
    check(s_lp == L.token_logprobs, "streamed: the same log-probabilities")
    clp = client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                         top_logprobs=2)
    content = clp.choices[0].logprobs.content
    check(len(content) == clp.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in content),
          f"chat logprobs: {len(content)} entries of 2 alternatives for {clp.usage.completion_tokens} tokens")
    if clp.choices[0].finish_reason == "length":
        check(bytes(b for e in content for b in e.bytes).decode("utf-8", "replace") == clp.choices[0].message.content,
              "chat logprobs: the tokens' bytes spell the reply")
    check(raises(openai.BadRequestError, "logprobs", model=name, prompt="x", logprobs=21), "logprobs = 21: 400")
    try:
        client.chat.completions.create(model=name, messages=messages, top_logprobs=2)
        check(False, "top_logprobs without logprobs: accepted")
    except openai.BadRequestError as e:
        check("top_logprobs" in str(e), "top_logprobs without logprobs: 400")

    # A client that walks away mid-stream: its request is cancelled and its blocks freed.
    before = metrics(base)
    # (12000 tokens: seconds of work, so that it is still running when the client leaves.)
    stream = client.completions.create(model=name, prompt=prompt, max_tokens=12000, temperature=0.8, seed=3,
                                       stream=True, extra_body={"ignore_eos": True})
    got = 0
    for _ in stream:
        got += 1
        if got == 2:
            break
    stream.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        m = metrics(base)
        if m["tinyllm_requests_running"] == 0 and m["tinyllm_requests_waiting"] == 0 and \
           m['tinyllm_requests_finished_total{reason="cancelled"}'] > before['tinyllm_requests_finished_total{reason="cancelled"}']:
            break
        time.sleep(0.1)
    check(m['tinyllm_requests_finished_total{reason="cancelled"}'] ==
          before['tinyllm_requests_finished_total{reason="cancelled"}'] + 1, "the abandoned stream was cancelled")
    spent = m["tinyllm_generation_tokens_total"] - before["tinyllm_generation_tokens_total"]
    check(spent < 6000, f"... after {spent:.0f} of its 12000 tokens")
    check(m["tinyllm_requests_running"] == 0 and m["tinyllm_kv_blocks_used"] == m["tinyllm_prefix_cache_blocks"],
          f"its blocks are back: {m['tinyllm_kv_blocks_used']:.0f} used, all held by the prefix cache")
    check(m["tinyllm_generation_tokens_total"] > 0 and m["tinyllm_requests_submitted_total"] >= 70,
          f"/metrics counted {m['tinyllm_requests_submitted_total']:.0f} requests and "
          f"{m['tinyllm_generation_tokens_total']:.0f} tokens")
finally:
    server.terminate()
    code = server.wait(timeout=30)
check(code == 0, f"SIGTERM stops the server cleanly (exit {code})")
if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all checks passed")
