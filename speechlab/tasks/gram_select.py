"""Handpicked gram selection (Gram-CTC, Liu et al. 2017, §3): every character of the vocabulary
plus the ``--top-k`` most frequent n-grams (``2 <= n <= --max-n``) of the training text.

  speechlab grams select --manifest data/tiny/train.jsonl --max-n 2 --top-k 50 --out grams.json

Prints the gram statistics: how many n-grams of each order the text has, the chosen grams with
their counts, and how much of the text the set covers (characters inside a selected n-gram of a
greedy longest-match segmentation; the frames a Gram-CTC model needs shrink with it).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from speechlab.data.grams import GramSet
from speechlab.data.manifests import ManifestError, read_manifest
from speechlab.data.text import DEFAULT_CHARS, CharVocab, normalize_text

log = logging.getLogger("speechlab.grams")


def manifest_texts(path: str | Path, normalize: bool = True) -> list[str]:
    """The transcripts of a manifest (NeMo-style ``"text"`` or lhotse cuts' first supervision),
    normalized with speechlab's normalizer; errors name the file and line."""
    texts = []
    for line, entry in read_manifest(path):
        if "supervisions" in entry:
            sups = entry.get("supervisions") or [{}]
            text = sups[0].get("text")
        else:
            text = entry.get("text")
        if not isinstance(text, str):
            raise ManifestError(f"{path}:{line}: no transcript text")
        texts.append(normalize_text(text) if normalize else text)
    return texts


def ngram_counts(texts: Iterable[str], vocab: CharVocab, max_n: int) -> dict[int, Counter[str]]:
    """``{n: Counter of n-grams}`` for ``2 <= n <= max_n`` (n-grams with characters outside
    ``vocab`` are not counted)."""
    counts: dict[int, Counter[str]] = {n: Counter() for n in range(2, max_n + 1)}
    for text in texts:
        for n in range(2, max_n + 1):
            for i in range(len(text) - n + 1):
                g = text[i : i + n]
                if not vocab.oov_chars(g):
                    counts[n][g] += 1
    return counts


def segment_greedy(text: str, grams: GramSet) -> list[str]:
    """Longest-match segmentation of ``text`` into grams of the set (left to right)."""
    out, i = [], 0
    while i < len(text):
        for n in range(min(grams.max_n, len(text) - i), 0, -1):
            if text[i : i + n] in grams:
                out.append(text[i : i + n])
                i += n
                break
        else:  # a character outside the vocabulary: count it as one token
            out.append(text[i])
            i += 1
    return out


def min_frames(text: str, grams: GramSet) -> int:
    """Fewest frames a Gram-CTC path needs to emit ``text``: a shortest segmentation into grams
    plus one blank between two equal consecutive grams (dynamic programming over positions and
    the last gram). With unigrams only this is CTC's ``len + repeats``."""
    inf = 1 << 30
    u = len(text)
    # best[i] = {last gram: frames} for the prefix text[:i]
    best: list[dict[str, int]] = [dict() for _ in range(u + 1)]
    best[0][""] = 0
    for i in range(u):
        if not best[i]:
            continue
        for n in range(1, min(grams.max_n, u - i) + 1):
            g = text[i : i + n]
            if g not in grams:
                continue
            cost = min(f + (2 if last == g else 1) for last, f in best[i].items())
            if cost < best[i + n].get(g, inf):
                best[i + n][g] = cost
    return min(best[u].values()) if best[u] else inf


def gram_statistics(texts: Sequence[str], grams: GramSet, counts: dict[str, int] | None = None,
                    top: int = 40) -> str:
    """A printable report: set size by order, the grams (with ``counts``), text coverage."""
    by_order = Counter(len(g) for g in grams.grams)
    lines = [f"GramSet: {len(grams.grams)} grams + blank = {len(grams)} outputs; by order: "
             + ", ".join(f"{n}-grams {by_order[n]}" for n in sorted(by_order))]
    chars = sum(len(t) for t in texts)
    if texts:
        tokens = sum(len(segment_greedy(t, grams)) for t in texts)
        frames_ctc = sum(min_frames(t, GramSet.unigrams(grams.vocab)) for t in texts)
        frames_g = sum(min_frames(t, grams) for t in texts)
        lines.append(f"text: {len(texts)} utterances, {chars} characters; greedy longest-match "
                     f"segmentation: {tokens} tokens ({chars / max(tokens, 1):.2f} characters per "
                     f"token); fewest frames a path needs: CTC {frames_ctc}, this set {frames_g} "
                     f"({frames_g / max(frames_ctc, 1):.2f}x)")
    if counts is not None:
        longer = sorted(((g, counts.get(g, 0)) for g in grams.grams if len(g) > 1),
                        key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{g!r}:{c}" for g, c in longer[:top])
        lines.append(f"longest grams by count (top {min(top, len(longer))} of {len(longer)}): {shown}")
    return "\n".join(lines)


def select_grams(texts: Sequence[str], vocab: CharVocab, max_n: int = 2, top_k: int = 50,
                 within_words: bool = False) -> GramSet:
    """The handpicked set: unigrams + the ``top_k`` most frequent n-grams (``n <= max_n``)."""
    return GramSet.from_corpus(texts, vocab, max_n=max_n, top_k=top_k, within_words=within_words)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, nargs="+", help="training manifest(s)")
    p.add_argument("--max-n", type=int, default=2, help="longest n-gram (default 2)")
    p.add_argument("--top-k", type=int, default=50, help="n-grams kept besides the unigrams")
    p.add_argument("--vocab", default="".join(DEFAULT_CHARS), help="characters in id order")
    p.add_argument("--within-words", action="store_true", help="no n-gram with a space")
    p.add_argument("--out", help="write the GramSet JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --out")


def main(args: argparse.Namespace) -> int:
    from speechlab.io import check_overwrite

    if args.out:
        check_overwrite(args.out, args.force)
    vocab = CharVocab(list(args.vocab))
    texts = [t for m in args.manifest for t in manifest_texts(m)]
    grams = select_grams(texts, vocab, args.max_n, args.top_k, args.within_words)
    counts = ngram_counts(texts, vocab, args.max_n)
    flat = {g: c for cnt in counts.values() for g, c in cnt.items()}
    for n, cnt in counts.items():
        print(f"{n}-grams in the text: {len(cnt)} distinct, {sum(cnt.values())} occurrences")
    print(gram_statistics(texts, grams, flat))
    if args.out:
        grams.save(args.out)
        print(f"wrote {args.out}")
    return 0
