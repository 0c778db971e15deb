"""``speechlab lm ngram``: train a KenLM n-gram LM (:mod:`speechlab.lm.ngram`)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from speechlab.io import check_overwrite
from speechlab.lm.ngram import KenLMBuildError, load_model, read_lines, train_ngram


def add_ngram_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="training text, one sentence per line")
    src.add_argument("--manifest", help="training text from a manifest's 'text' fields")
    p.add_argument("--order", type=int, default=3, help="n-gram order (<= 6)")
    p.add_argument("--out", required=True, help="model path: .arpa, or .bin (KenLM binary)")
    p.add_argument("--unit", choices=("word", "char"), default="word",
                   help="word LM, or character LM with '|' for the space")
    p.add_argument("--normalize", choices=("speechlab", "none"), default="speechlab")
    p.add_argument("--memory", default="1G", help="lmplz -S memory (default 1G)")
    p.add_argument("--prune", type=int, nargs="*", help="lmplz --prune thresholds")
    p.add_argument("--binary-type", choices=("probing", "trie"), default="probing")
    p.add_argument("--no-discount-fallback", action="store_true")
    p.add_argument("--force", action="store_true", help="overwrite --out")


def ngram(args: argparse.Namespace) -> int:
    """Train a word (or character) n-gram language model with KenLM's ``lmplz``.

      speechlab lm ngram --text train.txt --order 3 --out exp/lm/3gram.arpa
      speechlab lm ngram --text train.txt --order 3 --out exp/lm/3gram.bin      # + build_binary
      speechlab lm ngram --manifest data/tiny/train.jsonl --order 3 --out lm.arpa

    TEXT has one sentence per line (a manifest's ``"text"`` fields with ``--manifest``); lines are
    normalized with speechlab's normalizer (``--normalize none`` to keep them as they are).
    ``--unit char`` writes a character LM: every character is an LM "word" and the space becomes
    ``|`` (the token layout of flashlight's lexicon-free decoder).

    ``lmplz`` and ``build_binary`` are not on PyPI as programs: on first use speechlab builds them from
    the ``kenlm`` source package (``pip download --no-deps --no-binary kenlm kenlm``; cmake, a C++
    compiler and Boost program_options/thread/test are needed) into ``$SPEECHLAB_CACHE/kenlm``
    (default ``~/.cache/speechlab/kenlm``), once (~1-2 minutes on 2 cores). A missing prerequisite is
    named in one line. ``$SPEECHLAB_KENLM_BIN`` may point at a folder that already holds the two
    programs. Output is written atomically (the model appears complete or not at all).
    """
    check_overwrite(args.out, args.force)
    lines = read_lines(args.text, args.manifest, args.normalize == "speechlab", args.unit)
    try:
        out = train_ngram(lines, args.out, args.order, args.memory,
                          not args.no_discount_fallback, args.prune, args.binary_type)
    except KenLMBuildError as e:
        print(f"speechlab lm ngram: {e}", file=sys.stderr)
        return 3
    with contextlib.suppress(Exception):
        model = load_model(out)
        print(f"wrote {out}: order {model.order}, {len(lines)} training sentences")
        return 0
    print(f"wrote {out}")
    return 0
