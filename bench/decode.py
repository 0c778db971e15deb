"""Prefix beam search (speechlab.decode) vs torchaudio's flashlight ``ctc_decoder`` on the same
CTC network outputs and the same KenLM, at equal beam: WER/CER and decoding time.

  python bench/decode.py --checkpoint exp/fsdd_ctc/checkpoints/best.ckpt \\
      --manifest data/fsdd/test.jsonl --resample --word-lm exp/lm/fsdd_2gram.arpa \\
      --char-lm exp/lm/fsdd_char6.arpa --beam 8 16 32

Rows (both decoders, one torch thread, network outputs computed once):
- no LM: lexicon-free search.
- char LM: lexicon-free search, every character an LM token (the space is ``|``): the same
  search space and the same scores in both decoders (flashlight's ``lm_weight`` is on log10
  probabilities: ``α_fl = α·ln 10``).
- word LM: flashlight needs a lexicon with a word LM (the LM's words here), so ours gets the same
  lexicon (``unk_score=-inf``: only lexicon words). Flashlight's result depends on how the
  lexicon spells words (with the ``|`` separator, without, or both): all three are run, and ours
  is timed against the best of them.

``--simulate CONFUSION`` replaces the network by simulated CTC emissions of the manifest's
transcripts (a blank/character frame alignment with random durations; each character's peak goes
to a random other character with probability CONFUSION, the true one keeping a smaller bump), for
a decoder comparison at a realistic error rate without a trained model.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from speechlab.cli.decode import checkpoint_features, network_outputs
from speechlab.decode.prefix_beam import KenLMScorer, PrefixBeamSearch, arpa_words
from speechlab.score import edit_counts
from speechlab.tasks.ctc import CTCTask
from speechlab.tasks.gram_ctc import as_gram_ctc


def flashlight(tokens: list[str], beam: int, lm: Path | None, lexicon: Path | None,
               lm_weight: float, word_score: float, beam_threshold: float):
    from torchaudio.models.decoder import ctc_decoder

    return ctc_decoder(lexicon=str(lexicon) if lexicon else None, tokens=tokens,
                       lm=str(lm) if lm else None, beam_size=beam, beam_threshold=beam_threshold,
                       lm_weight=lm_weight, word_score=word_score, sil_score=0.0,
                       unk_score=-math.inf if lexicon else 0.0, blank_token="-", sil_token="|",
                       log_add=True)


def fl_text(hyp, tokens: list[str], lexicon: bool) -> str:
    if lexicon:
        return " ".join(hyp.words)
    return " ".join("".join(tokens[i] for i in hyp.tokens.tolist() if i != 0).replace("|", " ").split())


def simulate(texts: list[str], chars: list[str], confusion: float, seed: int = 0) -> list[torch.Tensor]:
    """Simulated CTC log-probs ``(T, 1 + len(chars))`` for each text (see the module doc)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    v = len(chars) + 1
    for text in texts:
        labels: list[tuple[int, int]] = []  # (peak label, true label) per frame
        prev = None
        for c in text:
            cid = chars.index(c) + 1
            if cid == prev or torch.rand(1, generator=gen).item() < 0.5:
                labels += [(0, 0)] * int(torch.randint(1, 3, (1,), generator=gen))
            peak = cid
            if torch.rand(1, generator=gen).item() < confusion:
                peak = int(torch.randint(1, v, (1,), generator=gen))
            labels += [(peak, cid)] * int(torch.randint(1, 4, (1,), generator=gen))
            prev = cid
        labels += [(0, 0)] * 2
        logits = torch.randn(len(labels), v, generator=gen)
        for t, (peak, true) in enumerate(labels):
            logits[t, peak] += 6.0
            if true != peak:
                logits[t, true] += 4.5
        out.append(logits.log_softmax(-1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a CTCTask (or unigram GramCTCTask) checkpoint")
    p.add_argument("--simulate", type=float, metavar="CONFUSION",
                   help="simulated emissions of the manifest's texts instead of a checkpoint")
    p.add_argument("--manifest", required=True)
    p.add_argument("--resample", action="store_true")
    p.add_argument("--word-lm", type=Path, help="word KenLM (ARPA: its words make the lexicon)")
    p.add_argument("--char-lm", type=Path, help="character KenLM (speechlab lm ngram --unit char)")
    p.add_argument("--beam", type=int, nargs="+", default=[16])
    p.add_argument("--alpha", type=float, default=0.5, help="α on natural-log LM scores")
    p.add_argument("--beta", type=float, default=1.0, help="β per word")
    p.add_argument("--beam-threshold", type=float, default=50.0)
    p.add_argument("--repeat", type=int, default=1, help="timing repetitions (best is kept)")
    args = p.parse_args()
    torch.set_num_threads(1)

    if args.simulate is not None:
        from speechlab.data.manifests import manifest_texts
        from speechlab.data.text import DEFAULT_CHARS

        chars = list(DEFAULT_CHARS)
        texts = manifest_texts(args.manifest)
        emissions = simulate(texts, chars, args.simulate)
    else:
        if not args.checkpoint:
            raise SystemExit("give --checkpoint or --simulate")
        model = as_gram_ctc(CTCTask.load(args.checkpoint))
        assert model.grams is not None
        if model.grams.max_n != 1:
            raise SystemExit("bench/decode.py compares on unigram CTC: give a CTC checkpoint")
        out = network_outputs(model, args.manifest, resample=args.resample,
                              features=checkpoint_features(args.checkpoint))
        chars = list(model.vocab.chars)
        texts = out.texts
        emissions = [lp.float().contiguous() for lp in out.log_probs]
    tokens = ["-", *["|" if c == " " else c for c in chars]]
    greedy = [" ".join("".join(chars[i - 1] for i in ids if i).split()) for ids in
              (torch.unique_consecutive(e.argmax(-1)).tolist() for e in emissions)]
    print(f"{len(emissions)} utterances, {sum(len(e) for e in emissions)} frames, {len(tokens)} outputs; "
          f"greedy WER {100 * edit_counts(texts, greedy, unit='word').rate:.2f}% "
          f"CER {100 * edit_counts(texts, greedy, unit='char').rate:.2f}%; "
          f"alpha {args.alpha} (flashlight lm_weight {args.alpha * math.log(10):.3f}), beta {args.beta}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-decode."))
    settings: list[tuple[str, Path | None, str]] = [("none", None, "word")]
    if args.char_lm:
        settings.append(("char LM", args.char_lm, "char"))
    if args.word_lm:
        settings.append(("word LM", args.word_lm, "word"))
    print("| LM | beam | decoder | WER % | CER % | time s | ms/utt | ours / best flashlight time |")
    print("|---|---|---|---|---|---|---|---|")
    spellings = {"w o r d |": "{s} |\n", "w o r d": "{s}\n", "both": "{s} |\n{w}\t{s}\n"}
    for name, lm_path, unit in settings:
        lexicons: dict[str, Path | None] = {"": None}
        if name == "word LM":
            # flashlight's lexicon spelling matters: with the separator (words between
            # separators), without (a last word needs no separator), or both
            assert lm_path is not None
            lexicons = {}
            for k, (label, fmt) in enumerate(spellings.items()):
                path = tmp / f"lexicon{k}.txt"
                path.write_text("".join(f"{w}\t" + fmt.format(s=" ".join(w), w=w)
                                        for w in arpa_words(lm_path)))
                lexicons[f" (lexicon '{label}')"] = path
        alpha = args.alpha if lm_path else 0.0
        beta = args.beta if lm_path and unit == "word" else 0.0
        for beam in args.beam:
            scorer = KenLMScorer(lm_path, unit) if lm_path else None
            ours = PrefixBeamSearch(chars, beam_size=beam, beam_threshold=args.beam_threshold,
                                    lm=scorer, lm_weight=alpha, word_score=beta,
                                    lexicon=arpa_words(lm_path) if name == "word LM" else None)
            runs = [("speechlab", lambda e, o=ours: o.decode(e)[0].text.strip())]
            for suffix, lexicon in lexicons.items():
                fl = flashlight(tokens, beam, lm_path, lexicon, alpha * math.log(10), beta,
                                args.beam_threshold)
                runs.append((f"flashlight{suffix}", lambda e, f=fl, lx=lexicon is not None:
                             fl_text(f(e[None])[0][0], tokens, lx)))
            rows = {}
            for label, run in runs:
                best = math.inf
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    hyps = [run(e) for e in emissions]
                    best = min(best, time.perf_counter() - t0)
                w = edit_counts(texts, hyps, unit="word")
                c = edit_counts(texts, hyps, unit="char")
                rows[label] = (w.rate, c.rate, best)
            # ours against flashlight's best configuration (lowest WER, then fastest)
            ref = min((r for k, r in rows.items() if k != "speechlab"), key=lambda r: (r[0], r[2]))
            for label, (wer, cer, secs) in rows.items():
                ratio = f"{secs / ref[2]:.2f}" if label == "speechlab" else ""
                print(f"| {name} | {beam} | {label} | {100 * wer:.2f} | {100 * cer:.2f} | "
                      f"{secs:.3f} | {1000 * secs / len(emissions):.2f} | {ratio} |")

if __name__ == "__main__":
    main()
