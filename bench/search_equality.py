"""Issue 18.4 on a real test set: the batched beam search on the GPU against the batched search
on the CPU and the C++ search, on the *same* network outputs (computed once, on ``--device``),
with an optional word (or char) LM and lexicon: WER / CER of each and, per pair, how many
utterances get the same best hypothesis and the WER difference.

  python bench/search_equality.py --checkpoint exp/tiny_gram_ctc_joint/checkpoints/best.ckpt \\
      --manifest data/tiny/test.jsonl --beam-size 16 --lm exp/lm/tiny_3gram.arpa --lexicon lm \\
      --lm-weight 0.5 --word-score 2 --device cuda --out /tmp/eq

Searches (each skipped with its reason when it cannot run here): ``batched <device>``,
``batched cpu`` (the CPU batched search equals the C++ one: tests/decode), ``C++ cpu`` (needs
the ``kenlm`` module for an LM, which the GPU machine lacks), and without the LM ``batched
<device>, no LM`` against ``C++ cpu, no LM``, so the C++ search is compared on the device too.
Writes ``<out>/<search>.jsonl`` ({id, ref, hyp}) and ``<out>/summary.json``; prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's speechlab

from speechlab.cli.decode import beam_hypotheses, checkpoint_features, network_outputs  # noqa: E402
from speechlab.decode import load_lm, prefix_beam_search  # noqa: E402
from speechlab.decode.prefix_beam import GramDecoding, load_lexicon  # noqa: E402
from speechlab.io import atomic_write_jsonl, atomic_write_text  # noqa: E402
from speechlab.score import edit_counts  # noqa: E402
from speechlab.tasks.ctc import CTCTask  # noqa: E402
from speechlab.tasks.gram_ctc import as_gram_ctc  # noqa: E402


def same_best(a: list[str], b: list[str]) -> int:
    """How many utterances have the same best hypothesis (exact string) in ``a`` and ``b``."""
    return sum(x == y for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the network and the first batched search run")
    p.add_argument("--beam-size", type=int, default=16)
    p.add_argument("--token-beam", type=int, default=0)
    p.add_argument("--lm", default=None, help="ARPA LM (word unless --lm-unit char)")
    p.add_argument("--lm-unit", default="word", choices=["word", "char"])
    p.add_argument("--lexicon", default=None, help="'lm' (the LM's words) or a file")
    p.add_argument("--lm-weight", type=float, default=0.5)
    p.add_argument("--word-score", type=float, default=0.0)
    p.add_argument("--out", required=True, help="folder for the hypotheses and summary.json")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = as_gram_ctc(CTCTask.load(args.checkpoint))
    outs = network_outputs(model, args.manifest, device=device, features=checkpoint_features(args.checkpoint))
    print(f"{args.manifest}: {len(outs.ids)} utterances, {outs.frames} frames; network on {device}", flush=True)
    lexicon = load_lexicon(args.lexicon, args.lm)
    with_lm = GramDecoding(method="beam", beam_size=args.beam_size, token_beam=args.token_beam,
                           lm=args.lm, lm_unit=args.lm_unit, lm_weight=args.lm_weight,
                           word_score=args.word_score, lexicon=args.lexicon)
    no_lm = dataclasses.replace(with_lm, lm=None, lexicon=None, lm_weight=0.0, word_score=0.0)
    cpu = torch.device("cpu")
    runs = [(f"batched {device}", with_lm, device, "batched"), ("batched cpu", with_lm, cpu, "batched"),
            ("C++ cpu", with_lm, cpu, "cpu")]
    if args.lm is not None:
        runs += [(f"batched {device}, no LM", no_lm, device, "batched"), ("C++ cpu, no LM", no_lm, cpu, "cpu")]
    runs = list({run[0]: run for run in runs}.values())  # --device cpu: one "batched cpu"
    hyps: dict[str, list[str]] = {}
    rows: dict[str, dict] = {}
    for name, config, dev, search in runs:
        config = dataclasses.replace(config, search=search)
        try:
            lm = load_lm(model.grams, config, dev)
            dec = prefix_beam_search(model.grams, config, dev, lm=lm, lexicon=lexicon if config.lm else None)
            lps = [lp.to(dev) for lp in outs.log_probs]
            t0 = time.perf_counter()
            best = [h[0].text if h else "" for h in beam_hypotheses(dec, lps)]
            seconds = time.perf_counter() - t0
        except Exception as e:  # e.g. no kenlm module for the C++ search's LM: that row is skipped
            rows[name] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            print(f"{name}: skipped ({rows[name]['skipped']})", flush=True)
            continue
        w = edit_counts(outs.texts, best, unit="word", normalize=True)
        c = edit_counts(outs.texts, best, unit="char", normalize=True)
        hyps[name] = best
        rows[name] = {"wer": w.rate, "cer": c.rate, "seconds": seconds}
        atomic_write_jsonl(out_dir / f"{name.replace(' ', '_').replace(',', '')}.jsonl",
                           ({"id": i, "ref": r, "hyp": h} for i, r, h in zip(outs.ids, outs.texts, best, strict=True)))
        print(f"{name}: WER {100 * w.rate:.2f} %, CER {100 * c.rate:.2f} %, {seconds:.2f} s", flush=True)
    pairs = [(a, b) for a, b in ((f"batched {device}", "batched cpu"), (f"batched {device}", "C++ cpu"),
                                 ("batched cpu", "C++ cpu"), (f"batched {device}, no LM", "C++ cpu, no LM"))
             if a in hyps and b in hyps and a != b]
    pairs = list(dict.fromkeys(pairs))
    n = len(outs.ids)
    print("\n| searches | same best hypothesis | WER difference (points) |\n| --- | ---: | ---: |")
    comparisons = []
    for a, b in pairs:
        same = same_best(hyps[a], hyps[b])
        diff = 100 * (rows[a]["wer"] - rows[b]["wer"])
        comparisons.append({"a": a, "b": b, "same_best": same, "utterances": n, "wer_difference": diff})
        print(f"| {a} vs {b} | {same}/{n} ({100 * same / max(n, 1):.1f} %) | {diff:+.2f} |")
    summary = {"checkpoint": args.checkpoint, "manifest": args.manifest, "device": str(device),
               "config": dataclasses.asdict(with_lm), "searches": rows, "comparisons": comparisons}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
