"""``speechlab grams select|refine``: the two ways of choosing a Gram-CTC output set (Liu et al.
2017, §3), by n-gram frequency in the training text or by what a trained model emits. The
statistics behind them are :mod:`speechlab.data.grams` functions."""

from __future__ import annotations

import argparse

from speechlab.data.grams import (
    GramSet,
    emission_report,
    gram_statistics,
    ngram_counts,
    refine_grams,
)
from speechlab.data.manifests import manifest_texts
from speechlab.data.text import DEFAULT_CHARS, CharVocab
from speechlab.io import check_overwrite


def add_select_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, nargs="+", help="training manifest(s)")
    p.add_argument("--max-n", type=int, default=2, help="longest n-gram (default 2)")
    p.add_argument("--top-k", type=int, default=50, help="n-grams kept besides the unigrams")
    p.add_argument("--vocab", default="".join(DEFAULT_CHARS), help="characters in id order")
    p.add_argument("--within-words", action="store_true", help="no n-gram with a space")
    p.add_argument("--out", help="write the GramSet JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --out")


def select(args: argparse.Namespace) -> int:
    """Handpicked gram selection (Gram-CTC, Liu et al. 2017, §3): every character of the vocabulary
    plus the ``--top-k`` most frequent n-grams (``2 <= n <= --max-n``) of the training text.

      speechlab grams select --manifest data/tiny/train.jsonl --max-n 2 --top-k 50 --out grams.json

    Prints the gram statistics: how many n-grams of each order the text has, the chosen grams with
    their counts, and how much of the text the set covers (characters inside a selected n-gram of a
    greedy longest-match segmentation; the frames a Gram-CTC model needs shrink with it).
    """
    if args.out:
        check_overwrite(args.out, args.force)
    vocab = CharVocab(list(args.vocab))
    texts = [t for m in args.manifest for t in manifest_texts(m)]
    grams = GramSet.from_corpus(texts, vocab, max_n=args.max_n, top_k=args.top_k,
                                within_words=args.within_words)
    counts = ngram_counts(texts, vocab, args.max_n)
    flat = {g: c for cnt in counts.values() for g, c in cnt.items()}
    for n, cnt in counts.items():
        print(f"{n}-grams in the text: {len(cnt)} distinct, {sum(cnt.values())} occurrences")
    print(gram_statistics(texts, grams, flat))
    if args.out:
        grams.save(args.out)
        print(f"wrote {args.out}")
    return 0


def add_refine_arguments(p: argparse.ArgumentParser) -> None:
    # refine's imports (the network, Lightning) load only for refine: grams select stays light
    from speechlab.cli.decode import add_device_argument

    p.add_argument("--checkpoint", required=True, help="Gram-CTC model trained on candidates")
    p.add_argument("--manifest", required=True, help="the training manifest to decode")
    p.add_argument("--keep", type=int, required=True, help="longer grams kept (besides unigrams)")
    p.add_argument("--out", help="write the refined GramSet JSON here")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--resample", action="store_true")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    add_device_argument(p)


def refine(args: argparse.Namespace) -> int:
    """Automatic gram selection (Gram-CTC, Liu et al. 2017, §3): decode the training set greedily
    with a model trained on a large candidate set, count how often each gram is emitted, and keep
    every unigram plus the ``--keep`` most emitted longer grams (grams never emitted are dropped).

      speechlab grams refine --checkpoint exp/tiny_gram_ctc_cand/checkpoints/best.ckpt \\
          --manifest data/tiny/train.jsonl --keep 50 --out exp/tiny_gram_ctc_cand/refined.json

    Prints the emission statistics: emitted tokens by gram length, the share of characters the model
    spells with multi-character grams, the most and least used grams, and the kept set.
    """
    import torch

    from speechlab.cli.decode import checkpoint_features, network_outputs, resolve_device
    from speechlab.functional.gram_decode import gram_emission_counts
    from speechlab.tasks.ctc import CTCTask
    from speechlab.tasks.gram_ctc import as_gram_ctc

    device = resolve_device(args.device)  # inputs and outputs checked before the network runs
    if args.out:
        check_overwrite(args.out, args.force)
    if args.keep < 0:
        raise ValueError(f"--keep must be >= 0, got {args.keep}")
    model = as_gram_ctc(CTCTask.load(args.checkpoint))
    assert model.grams is not None
    out = network_outputs(model, args.manifest, args.sample_rate, args.resample, device=device,
                          features=checkpoint_features(args.checkpoint))
    total = torch.zeros(len(model.grams), dtype=torch.long)
    for lp in out.log_probs:
        total += gram_emission_counts(lp[None], torch.tensor([lp.shape[0]]))
    counts = {model.grams[i]: int(total[i]) for i in range(1, len(model.grams))}
    print(f"{args.checkpoint}: candidate set of {len(model.grams) - 1} grams; greedy decodes of "
          f"{len(out.ids)} utterances of {args.manifest}")
    print(emission_report(counts))
    refined = refine_grams(model.grams, counts, args.keep)
    print("refined " + gram_statistics(out.texts, refined, counts))
    if args.out:
        refined.save(args.out)
        print(f"wrote {args.out}")
    return 0
