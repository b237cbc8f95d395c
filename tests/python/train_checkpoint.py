"""A model `tinyllm train` saved is one transformers loads unchanged, and trains the same.

    python3 tests/python/train_checkpoint.py TINYLLM_BINARY TEXT_FILE WORK_DIR

For GPT-2, Llama and Mixtral: a few steps of `tinyllm train` on TEXT_FILE into WORK_DIR/<arch>,
then
  * AutoModelForCausalLM.from_pretrained(dir): its last-position logits for a prompt within
    1e-4 (max-abs over the logits' largest magnitude) of `tinyllm logits` on the same ids;
  * AutoTokenizer.from_pretrained(dir) (tokenizer.json through the tokenizers library): the
    same ids as `tinyllm tokenize` for a passage of the text;
  * bench/baselines/train_parity.py: PyTorch, from the same initial weights, batches and AdamW
    settings, takes the same steps (each step's loss within 1e-4 relative).
Exit 77 (skipped) when torch, transformers or tokenizers cannot be imported.
"""
import os
import shutil
import subprocess
import sys

try:
    import torch
    import transformers
    import tokenizers  # noqa: F401  (AutoTokenizer's fast path)
except ImportError as e:
    print(f"train_checkpoint: {e.name} is not importable (tools/bootstrap --python installs it): skipped")
    sys.exit(77)
transformers.logging.set_verbosity_error()

binary, text_file, work = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))
parity = os.path.join(here, "..", "..", "bench", "baselines", "train_parity.py")
shutil.rmtree(work, ignore_errors=True)
text = open(text_file, encoding="utf-8").read()
passage = text[1000:1600]
failures = []

shapes = {
    "gpt2": ["--arch", "gpt2", "--ffn", "256"],
    "llama": ["--arch", "llama", "--kv-heads", "2"],
    "mixtral": ["--arch", "mixtral", "--kv-heads", "2", "--experts", "4", "--top-k", "2", "--ffn", "128"],
}
for arch, flags in shapes.items():
    out = os.path.join(work, arch)
    subprocess.run([binary, "train", "--data", text_file, "--out", out, "--vocab-size", "400", "--layers", "2",
                    "--d-model", "64", "--heads", "4", "--context", "32", "--batch", "4", "--steps", "6",
                    "--warmup", "2", "--eval-every", "100", "--eval-batches", "2", "--sample-tokens", "0",
                    "--keep-initial", "--threads", "2"] + flags, check=True, stdout=subprocess.DEVNULL)

    tok = transformers.AutoTokenizer.from_pretrained(out)
    want_ids = subprocess.run([binary, "tokenize", "--vocab", os.path.join(out, "tokenizer.json"), passage],
                              check=True, capture_output=True, text=True).stdout.split()
    got_ids = [str(i) for i in tok(passage)["input_ids"]]
    if got_ids != want_ids:
        failures.append(f"{arch}: AutoTokenizer's ids differ from tinyllm tokenize's")

    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    prompt = got_ids[:24]
    theirs = subprocess.run([binary, "logits", "--model", out, "--prompt-ids", " ".join(prompt)],
                            check=True, capture_output=True, text=True).stdout.split()
    with torch.no_grad():
        ours = model(torch.tensor([[int(i) for i in prompt]])).logits[0, -1]
    tinyllm_logits = torch.tensor([float(x) for x in theirs])
    err = (ours - tinyllm_logits).abs().max().item() / tinyllm_logits.abs().max().item()
    print(f"{arch}: {sum(p.numel() for p in model.parameters())} parameters, tokenizer "
          f"{'agrees' if got_ids == want_ids else 'DISAGREES'}, logits max-abs / max |logit| = {err:.2e}")
    if not err <= 1e-4:
        failures.append(f"{arch}: logits differ by {err:.2e} relative")

    replay = subprocess.run([sys.executable, parity, out, "--steps", "6", "--threads", "2"], capture_output=True,
                            text=True)
    print("   " + (replay.stdout.strip().splitlines() or ["(no output)"])[-1])
    if replay.returncode != 0:
        failures.append(f"{arch}: PyTorch's replay of the run disagrees:\n{replay.stdout}{replay.stderr}")

shutil.rmtree(work, ignore_errors=True)
if failures:
    print("FAILED:\n" + "\n".join(failures))
    sys.exit(1)
print("train_checkpoint: transformers loads and replays every checkpoint")
