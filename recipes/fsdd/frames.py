"""How many output frames Gram-CTC vs CTC need on our data (model-free): for each corpus and
encoder stride, the share of utterances whose transcript cannot be emitted at all (fewer output
frames than the fewest a path needs: characters + blanks between repeats for CTC; a shortest gram
segmentation for Gram-CTC, speechlab.data.grams.min_frames).

  python recipes/fsdd/frames.py --manifest data/tiny/train.jsonl data/fsdd/train.jsonl --top-k 50
"""

from __future__ import annotations

import argparse
import math

from speechlab.data.grams import GramSet, min_frames
from speechlab.data.manifests import read_manifest
from speechlab.data.text import CharVocab, normalize_text


def output_frames(duration: float, stride: int) -> int:
    """Encoder output frames of an utterance: 25 ms / 10 ms fbank frames, then ceil(T/2) per
    stride-2 layer (speechlab.nn.encoders.ConvSubsampling)."""
    t = max(1, int((duration * 1000 - 25) // 10) + 1)
    for _ in range(int(math.log2(stride))):
        t = (t + 1) // 2
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", nargs="+", required=True)
    p.add_argument("--top-k", type=int, nargs="+", default=[50])
    p.add_argument("--max-n", type=int, default=2)
    p.add_argument("--strides", type=int, nargs="+", default=[2, 4, 8])
    args = p.parse_args()
    vocab = CharVocab()
    print("| manifest | grams | chars/s of speech | " + " | ".join(
        f"infeasible at stride {s} ({100 / s:g} frames/s)" for s in args.strides) + " |")
    print("|---|---|---|" + "---|" * len(args.strides))
    for m in args.manifest:
        rows = [(normalize_text(e["text"]), float(e["duration"])) for _, e in read_manifest(m)]
        texts = [t for t, _ in rows]
        rate = sum(len(t) for t in texts) / sum(d for _, d in rows)
        sets = [("CTC (characters)", GramSet.unigrams(vocab))]
        sets += [(f"Gram-CTC, {k} most frequent n-grams (n<={args.max_n})",
                  GramSet.from_corpus(texts, vocab, args.max_n, k)) for k in args.top_k]
        for name, gs in sets:
            need = [min_frames(t, gs) for t in texts]
            cells = []
            for s in args.strides:
                bad = sum(n > output_frames(d, s) for n, (_, d) in zip(need, rows, strict=True))
                cells.append(f"{100 * bad / len(rows):.1f}%")
            print(f"| {m} | {name} | {rate:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
