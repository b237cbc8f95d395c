#!/usr/bin/env python3
"""Check `tinyllm train-tokenizer --model sentencepiece-bpe|unigram` against the outside world.

    python tests/python/sentencepiece_train_check.py TINYLLM CORPUS WORKDIR [--vocab-size N]

For both models: train with tinyllm on CORPUS, then
  1. Hugging Face `tokenizers` loads the written tokenizer.json and gives, on a
     list of texts (prose, code, whitespace runs, emoji, Korean and other
     scripts, characters the corpus never had, the empty string), exactly the ids
     `tinyllm tokenize` gives, and decodes them back to the text (except a text
     holding "▁" itself, which decodes as a space);
  2. when the `sentencepiece` package is there, its own trainer is run with the
     same settings on the same text (identity normalization, as Llama: a "▁" in
     front, spaces kept, byte fallback, digits split, whitespace-only pieces
     allowed). The BPE vocabularies must be equal piece for piece; for Unigram the
     share of common pieces and the token counts on the texts are printed.
Exits 77 (CTest: skipped) when `tokenizers` is not installed.
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    from tokenizers import Tokenizer
except ImportError:
    print("the tokenizers package is not installed (tools/bootstrap puts it in .venv/): skipped")
    sys.exit(77)

TEXTS = [
    "The tiger jumped out of a tree to get a drink because it was thirsty.",
    "",
    " ",
    "   three leading spaces and trailing   ",
    "multiple   spaces  between    words",
    "def train(x):\n    return x * 2  # code\n",
    "tabs\tand\r\nwindows line ends",
    "In 1611, 12345 and 3.14159; 2024-06-01.",
    "안녕하세요 세계",
    "emoji: 👍 👍🏽 🦀 👨‍👩‍👧",
    "naïve café, Übermaß — “quotes”",
    "中文字符和日本語のテキスト",
    "Ελληνικά και русский текст",
    "\u2581already has the meta space",
    "And God said, Let there be light: and there was light.",
    "x" * 200,
]


def tinyllm_ids(binary, vocab, text, tmp):
    path = os.path.join(tmp, "text.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    out = subprocess.run([binary, "tokenize", "--vocab", vocab, "--file", path], check=True,
                         capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tinyllm")
    ap.add_argument("corpus")
    ap.add_argument("workdir")
    ap.add_argument("--vocab-size", type=int, default=600)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    try:
        import sentencepiece as spm
    except ImportError:
        spm = None
        print("the sentencepiece package is not installed: its trainer is not compared")

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for model, sp_type in (("sentencepiece-bpe", "bpe"), ("unigram", "unigram")):
            out = os.path.join(args.workdir, f"{sp_type}.json")
            subprocess.run([args.tinyllm, "train-tokenizer", "--model", model, "--vocab-size", str(args.vocab_size),
                            "--character-coverage", "1", "--out", out, args.corpus], check=True,
                           capture_output=True)
            hf = Tokenizer.from_file(out)
            for text in TEXTS:
                ours = tinyllm_ids(args.tinyllm, out, text, tmp)
                theirs = hf.encode(text, add_special_tokens=False).ids
                back = hf.decode(theirs, skip_special_tokens=False)
                # A "▁" in the text itself decodes as a space: that text cannot come back.
                if ours != theirs or (back != text and "\u2581" not in text):
                    failures += 1
                    print(f"{model}: MISMATCH on {text!r}\n  tinyllm    {ours}\n  tokenizers {theirs}\n"
                          f"  decoded {back!r}")
            print(f"{model}: tokenizers {__import__('tokenizers').__version__} loads {os.path.basename(out)} "
                  f"and agrees with tinyllm on all {len(TEXTS)} texts" if not failures else f"{model}: checked")

            if spm is None:
                continue
            prefix = os.path.join(tmp, sp_type)
            spm.SentencePieceTrainer.train(
                input=args.corpus, model_prefix=prefix, model_type=sp_type, vocab_size=args.vocab_size,
                byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
                add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
                allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                num_threads=1, minloglevel=2)
            sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
            theirs = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            ours = [hf.id_to_token(i) for i in range(hf.get_vocab_size(with_added_tokens=True))]
            common = len(set(ours) & set(theirs))
            same_place = sum(a == b for a, b in zip(ours, theirs))
            n_ours = sum(len(tinyllm_ids(args.tinyllm, out, t, tmp)) for t in TEXTS)
            n_theirs = sum(len(sp.encode(t)) for t in TEXTS)
            print(f"{model} vs sentencepiece {spm.__version__}'s trainer: {len(ours)} and {len(theirs)} pieces, "
                  f"{common} in common, {same_place} at the same id; tokens on the texts {n_ours} vs {n_theirs}")
            if sp_type == "bpe" and ours != theirs:
                failures += 1
                first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
                print(f"  BPE vocabularies differ first at id {first}: {ours[first]!r} vs {theirs[first]!r}")
    if failures:
        print(f"FAILED: {failures} mismatches")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
