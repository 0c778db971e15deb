"""Automatic gram selection (Gram-CTC, Liu et al. 2017, §3): decode the training set greedily
with a model trained on a large candidate set, count how often each gram is emitted, and keep
every unigram plus the ``--keep`` most emitted longer grams (grams never emitted are dropped).

  speechlab grams refine --checkpoint exp/tiny_gram_ctc_cand/checkpoints/best.ckpt \\
      --manifest data/tiny/train.jsonl --keep 50 --out exp/tiny_gram_ctc_cand/refined.json

Prints the emission statistics: emitted tokens by gram length, the share of characters the model
spells with multi-character grams, the most and least used grams, and the kept set.
"""

from __future__ import annotations

import argparse
from collections import Counter

from speechlab.cli.decode import add_device_argument
from speechlab.data.grams import GramSet
from speechlab.functional.gram_decode import gram_emission_counts


def refine_grams(grams: GramSet, counts: dict[str, int], keep: int) -> GramSet:
    """All unigrams + the ``keep`` longer grams with the highest (non-zero) counts; ties by the
    gram string. Order: by count, so ids follow usage."""
    longer = sorted(((g, c) for g, c in counts.items() if len(g) > 1 and c > 0 and g in grams),
                    key=lambda kv: (-kv[1], kv[0]))[:keep]
    return GramSet.from_ngrams(grams.vocab, [g for g, _ in longer])


def emission_report(counts: dict[str, int], top: int = 30) -> str:
    total = sum(counts.values())
    chars = sum(len(g) * c for g, c in counts.items())
    by_len: Counter[int] = Counter()
    for g, c in counts.items():
        by_len[len(g)] += c
    multi = sum(len(g) * c for g, c in counts.items() if len(g) > 1)
    used = sorted(((g, c) for g, c in counts.items() if c > 0), key=lambda kv: (-kv[1], kv[0]))
    longer = [(g, c) for g, c in used if len(g) > 1]
    lines = [
        f"emitted {total} tokens spelling {chars} characters ({chars / max(total, 1):.2f} per token); "
        "by gram length: " + ", ".join(f"{n}: {by_len[n]}" for n in sorted(by_len)),
        f"characters spelled by multi-character grams: {multi} ({100 * multi / max(chars, 1):.1f}%)",
        f"grams used: {len(used)} of {len(counts)} ({len(longer)} longer than one character)",
        "most used longer grams: " + ", ".join(f"{g!r}:{c}" for g, c in longer[:top]),
    ]
    unused = sorted(g for g, c in counts.items() if c == 0 and len(g) > 1)
    if unused:
        lines.append(f"never emitted ({len(unused)}): " + ", ".join(map(repr, unused[:top]))
                     + (" ..." if len(unused) > top else ""))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="Gram-CTC model trained on candidates")
    p.add_argument("--manifest", required=True, help="the training manifest to decode")
    p.add_argument("--keep", type=int, required=True, help="longer grams kept (besides unigrams)")
    p.add_argument("--out", help="write the refined GramSet JSON here")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--resample", action="store_true")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    add_device_argument(p)


def main(args: argparse.Namespace) -> int:
    import torch

    from speechlab.cli.decode import network_outputs, resolve_device
    from speechlab.io import check_overwrite
    from speechlab.tasks.gram_ctc import load_gram_ctc
    from speechlab.tasks.gram_select import gram_statistics

    device = resolve_device(args.device)  # inputs and outputs checked before the network runs
    if args.out:
        check_overwrite(args.out, args.force)
    if args.keep < 0:
        raise ValueError(f"--keep must be >= 0, got {args.keep}")
    model = load_gram_ctc(args.checkpoint)
    assert model.grams is not None
    out = network_outputs(model, args.manifest, args.sample_rate, args.resample, device=device)
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
