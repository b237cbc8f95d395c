#!/usr/bin/env python3
"""A byte-level tokenizer.json's post-processor gives the ids Hugging Face's `tokenizers`
gives: `tinyllm tokenize --template` against `Tokenizer.from_file(f).encode(text).ids`
(add_special_tokens=True, the library's default), for the post-processors byte-level files
carry — TemplateProcessing (a BOS before the text; a BOS and an EOS), RobertaProcessing,
BertProcessing, ByteLevel alone (GPT-2's: no ids), and Sequence[ByteLevel,
TemplateProcessing] (Llama 3's) — each written into a copy of the byte-level fixture.

    tests/python/tokenizer_template_check.py <tinyllm binary> <hf_tokenizer.json> <work dir>

Exits 77 (CTest: skipped) without the tokenizers package (tools/bootstrap --python).
"""
import json
import os
import subprocess
import sys

try:
    from tokenizers import Tokenizer
except ImportError:
    print("tokenizers is not installed: skipped (tools/bootstrap --python installs it)")
    sys.exit(77)

TEXTS = ["The tiger jumped out of a tree.", " leading space", "a<|endoftext|>b", "x"]


def template(before, after):
    """A TemplateProcessing with the special tokens `before` and `after` the text, as (name, id) pairs."""
    def items(seq, type_id):
        return ([{"SpecialToken": {"id": n, "type_id": type_id}} for n, _ in before] +
                [{"Sequence": {"id": seq, "type_id": type_id}}] +
                [{"SpecialToken": {"id": n, "type_id": type_id}} for n, _ in after])
    return {"type": "TemplateProcessing", "single": items("A", 0), "pair": items("A", 0) + items("B", 1),
            "special_tokens": {n: {"id": n, "ids": [i], "tokens": [n]} for n, i in before + after}}


def main():
    tinyllm, fixture, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    base = json.load(open(fixture, encoding="utf-8"))
    eot, pad = ("<|endoftext|>", 0), ("<pad>", 1)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    cases = {
        "bos": template([eot], []),
        "bos_eos": template([eot], [pad]),
        "llama3": {"type": "Sequence", "processors": [byte_level, template([eot], [])]},
        "roberta": {"type": "RobertaProcessing", "sep": list(pad), "cls": list(eot), "trim_offsets": True,
                    "add_prefix_space": False},
        "bert": {"type": "BertProcessing", "sep": list(pad), "cls": list(eot)},
        "gpt2": byte_level,
        "none": None,
    }
    failures, compared = [], 0
    for name, post in cases.items():
        doc = dict(base, post_processor=post)
        path = os.path.join(work, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        hf = Tokenizer.from_file(path)
        for text in TEXTS:
            theirs = hf.encode(text).ids
            ours = subprocess.run([tinyllm, "tokenize", "--vocab", path, "--template", "--allow-special", text],
                                  capture_output=True, text=True, check=True).stdout.split()
            compared += 1
            if [int(x) for x in ours] != theirs:
                failures.append(f"{name}, {text!r}: tinyllm {ours}, tokenizers {theirs}")
    for f in failures:
        print("FAIL:", f)
    print(f"{compared - len(failures)} of {compared} encodings with the template equal to tokenizers'")
    sys.exit(1 if failures else 0)


main()
