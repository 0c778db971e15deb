"""Text of the real-text domain-transfer study (issue 14; ``recipes/domain/run_gpu.sh``).

Domain A = sentences of the ten public-domain books of ``../shared/data/text/books`` (literary
prose and verse), domain B = the rt_polarity movie-review snippets (short, informal). Each
domain's sentences are normalized with :func:`speechlab.data.text.normalize_text` (the tasks'
normalizer), kept when they have 4-20 words and no digits, de-duplicated, and shuffled by
``--seed``. The first sentences of the shuffle become speech (synthesized by
``speechlab data synth --text`` where the models train); the domain's LM text is every other
normalized sentence without digits, of any length (long sentences are most of a book's text):
**no sentence of either domain's speech (train, dev or test) is in an LM's text**.

Writes (``OUT``, default ``data/domain_text``)::

    books_speech.txt     --books-speech sentences (A: train + dev + test speech)
    reviews_speech.txt   --reviews-speech sentences (B: the 10 % fine-tuning set + dev + test)
    lm/books.txt         every other A sentence, in text order (the A LMs' training text)
    lm/reviews.txt       every other B sentence, in text order
    stats.json           counts and characters per domain

usage: python recipes/domain/prepare_text_domains.py [--text-dir ../shared/data/text] [--out D]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from speechlab.data.text import normalize_text
from speechlab.io import atomic_write_text

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
# rt_polarity is tokenized ("he 's", "does n't", "j . r . r ."): glue clitics back on
CLITIC = re.compile(r"\s+('(?:s|re|ve|d|ll|m)|n't)\b")


def book_sentences(text: str) -> list[str]:
    """Sentences of a Gutenberg text: paragraphs (blank-line separated) joined into one line,
    split after ``.``/``!``/``?``."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        out.extend(s for s in SENTENCE_END.split(flat) if s)
    return out


def review_sentences(text: str) -> list[str]:
    """rt_polarity snippets, one per line, with the tokenizer's clitic splits undone."""
    return [CLITIC.sub(r"\1", line) for line in text.splitlines()]


def keep(raw: str, min_words: int, max_words: int) -> str | None:
    """The normalized sentence, or None when it has digits or a word count outside the range."""
    if re.search(r"\d", raw):
        return None
    text = normalize_text(raw)
    return text if min_words <= len(text.split()) <= max_words else None


def select(raw: list[str], seed: int, min_words: int, max_words: int) -> list[str]:
    """Kept, de-duplicated sentences in an order fixed by ``seed``."""
    kept = sorted({t for t in (keep(s, min_words, max_words) for s in raw) if t})
    random.Random(seed).shuffle(kept)
    return kept


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-dir", type=Path, default=Path("../shared/data/text"))
    p.add_argument("--out", type=Path, default=Path("data/domain_text"))
    p.add_argument("--books-speech", type=int, default=10800,
                   help="A sentences spoken (default 10,800: 10,000 train + 300 dev + 500 test)")
    p.add_argument("--reviews-speech", type=int, default=1900,
                   help="B sentences spoken (default 1,900: 1,000 fine-tuning + 300 dev + 600 test)")
    p.add_argument("--min-words", type=int, default=4)
    p.add_argument("--max-words", type=int, default=20)
    p.add_argument("--seed", type=int, default=14)
    args = p.parse_args()
    books = sorted((args.text_dir / "books").glob("*.txt"))
    reviews = args.text_dir / "rt_polarity" / "sentences.txt"
    if not books or not reviews.is_file():
        print(f"error: {args.text_dir}: needs books/*.txt and rt_polarity/sentences.txt "
              "(../shared/data/text, see its README)", file=sys.stderr)
        return 2
    raw_a = [s for path in books for s in book_sentences(path.read_text(encoding="utf-8"))]
    raw_b = review_sentences(reviews.read_text(encoding="latin-1"))
    stats = {}
    for name, raw, n_speech in (("books", raw_a, args.books_speech), ("reviews", raw_b, args.reviews_speech)):
        sentences = select(raw, args.seed, args.min_words, args.max_words)
        if len(sentences) <= n_speech:
            print(f"error: {name}: {len(sentences)} usable sentences, {n_speech} asked for speech",
                  file=sys.stderr)
            return 2
        speech = sentences[:n_speech]
        spoken = set(speech)
        lm = [t for t in (keep(s, 1, 10**9) for s in raw) if t and t not in spoken]
        atomic_write_text(args.out / f"{name}_speech.txt", "\n".join(speech) + "\n")
        atomic_write_text(args.out / "lm" / f"{name}.txt", "\n".join(lm) + "\n")
        stats[name] = {"raw_sentences": len(raw), "usable": len(sentences), "speech": len(speech),
                       "lm_sentences": len(lm), "lm_chars": sum(len(s) + 1 for s in lm),
                       "speech_mean_words": round(sum(len(s.split()) for s in speech) / len(speech), 2)}
        print(name, json.dumps(stats[name]))
    atomic_write_text(args.out / "stats.json", json.dumps(stats, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
