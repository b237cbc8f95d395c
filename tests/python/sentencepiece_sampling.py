#!/usr/bin/env python3
"""tinyllm's Unigram sampling draws segmentations as often as the `sentencepiece`
library's does (subword regularization: encode(..., enable_sampling=True, alpha=A,
nbest_size=-1)). The two use different random number generators, so the check is on
the distribution: for a few words of the Unigram fixture (unigram.model) and two values
of alpha, N draws from each, and every segmentation's two frequencies must agree within
5 standard deviations of their difference (two binomial proportions, pooled).

    tests/python/sentencepiece_sampling.py <tinyllm binary> <tests/fixtures/sentencepiece>

Exits 77 (CTest: skipped) without the sentencepiece package (tools/bootstrap --python).
"""
import collections
import math
import subprocess
import sys

try:
    import sentencepiece as spm
except ImportError:
    print("sentencepiece is not installed: skipped (tools/bootstrap --python installs it)")
    sys.exit(77)

N = 4000
WORDS = ["tiger", "drink", "thirsty", "because", "firmament"]


def main():
    tinyllm, fixtures = sys.argv[1], sys.argv[2]
    model = fixtures + "/unigram.model"
    sp = spm.SentencePieceProcessor(model_file=model)
    worst, outcomes, bad = 0.0, 0, []
    for alpha in (0.1, 0.5):
        for word in WORDS:
            theirs = collections.Counter(
                tuple(sp.encode(word, enable_sampling=True, alpha=alpha, nbest_size=-1)) for _ in range(N))
            out = subprocess.run([tinyllm, "tokenize", "--vocab", model, "--sample-alpha", str(alpha), "--seed", "1",
                                  "--samples", str(N), word], capture_output=True, text=True, check=True).stdout
            ours = collections.Counter(tuple(int(x) for x in line.split()) for line in out.splitlines())
            assert sum(ours.values()) == N, f"tinyllm printed {sum(ours.values())} draws, not {N}"
            for seg in set(theirs) | set(ours):
                a, b = ours[seg] / N, theirs[seg] / N
                p = (a + b) / 2
                sd = math.sqrt(p * (1 - p) * 2 / N)
                z = abs(a - b) / sd if sd > 0 else 0.0
                worst = max(worst, z)
                outcomes += 1
                if z > 5:
                    bad.append(f"alpha {alpha}, '{word}', {[sp.id_to_piece(i) for i in seg]}: "
                               f"tinyllm {ours[seg]}, sentencepiece {theirs[seg]} of {N} ({z:.1f} sd)")
            best = max(theirs, key=theirs.get)
            print(f"alpha {alpha:3} {word:10} {len(set(theirs) | set(ours)):3} segmentations seen; likeliest "
                  f"{' '.join(sp.id_to_piece(i) for i in best)}: tinyllm {ours[best]}, sentencepiece {theirs[best]}")
    print(f"{outcomes} (alpha, word, segmentation) frequencies compared, largest difference {worst:.2f} sd")
    if bad:
        print("differ by more than 5 sd:\n  " + "\n  ".join(bad))
        sys.exit(1)
    print(f"sentencepiece {spm.__version__} and tinyllm sample the same distribution")


if __name__ == "__main__":
    main()
