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
- word LM: ours lexicon-free with the word LM; flashlight needs a lexicon with a word LM, so it
  searches only the LM's words (a different, constrained search — shown for reference).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from speechlab.decode.prefix_beam import KenLMScorer, PrefixBeamSearch
from speechlab.score import edit_counts
from speechlab.tasks.decode_cli import network_outputs
from speechlab.tasks.gram_ctc import load_gram_ctc


def lm_words(arpa: Path) -> list[str]:
    """The 1-gram words of an ARPA file (without <s>, </s>, <unk>)."""
    words, in_unigrams = [], False
    for line in arpa.read_text(encoding="utf-8").splitlines():
        if line.startswith("\\1-grams:"):
            in_unigrams = True
            continue
        if in_unigrams:
            if not line.strip() or line.startswith("\\"):
                break
            w = line.split("\t")[1]
            if w not in ("<s>", "</s>", "<unk>"):
                words.append(w)
    return words


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a CTCTask (or unigram GramCTCTask) checkpoint")
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

    model = load_gram_ctc(args.checkpoint)
    assert model.grams is not None
    if model.grams.max_n != 1:
        raise SystemExit("bench/decode.py compares on unigram CTC: give a CTC checkpoint")
    out = network_outputs(model, args.manifest, resample=args.resample)
    chars = list(model.vocab.chars)
    tokens = ["-", *["|" if c == " " else c for c in chars]]
    emissions = [lp.float().contiguous() for lp in out.log_probs]
    print(f"{len(emissions)} utterances, {out.frames} frames, {len(tokens)} outputs; "
          f"alpha {args.alpha} (flashlight lm_weight {args.alpha * math.log(10):.3f}), beta {args.beta}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-decode."))
    settings: list[tuple[str, Path | None, str]] = [("none", None, "word")]
    if args.char_lm:
        settings.append(("char LM", args.char_lm, "char"))
    if args.word_lm:
        settings.append(("word LM", args.word_lm, "word"))
    print("| LM | beam | decoder | WER % | CER % | time s | ms/utt | ours/flashlight time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, lm_path, unit in settings:
        lexicon = None
        if name == "word LM":
            assert lm_path is not None
            lexicon = tmp / "lexicon.txt"
            lexicon.write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in lm_words(lm_path)))
        alpha = args.alpha if lm_path else 0.0
        beta = args.beta if lm_path and unit == "word" else 0.0
        for beam in args.beam:
            scorer = KenLMScorer(lm_path, unit) if lm_path else None
            ours = PrefixBeamSearch(chars, beam_size=beam, beam_threshold=args.beam_threshold,
                                    lm=scorer, lm_weight=alpha, word_score=beta)
            fl = flashlight(tokens, beam, lm_path, lexicon, alpha * math.log(10), beta,
                            args.beam_threshold)
            rows = {}
            for label, run in [
                ("speechlab", lambda e, o=ours: o.decode(e)[0].text.strip()),
                ("flashlight", lambda e, f=fl, lx=lexicon is not None: fl_text(f(e[None])[0][0], tokens, lx)),
            ]:
                best = math.inf
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    hyps = [run(e) for e in emissions]
                    best = min(best, time.perf_counter() - t0)
                w = edit_counts(out.texts, hyps, unit="word")
                c = edit_counts(out.texts, hyps, unit="char")
                rows[label] = (w.rate, c.rate, best)
            ratio = rows["speechlab"][2] / rows["flashlight"][2]
            for label, (wer, cer, secs) in rows.items():
                print(f"| {name} | {beam} | {label} | {100 * wer:.2f} | {100 * cer:.2f} | {secs:.3f} | "
                      f"{1000 * secs / len(emissions):.2f} | {ratio:.2f} |" if label == "speechlab" else
                      f"| {name} | {beam} | {label} | {100 * wer:.2f} | {100 * cer:.2f} | {secs:.3f} | "
                      f"{1000 * secs / len(emissions):.2f} | |")


if __name__ == "__main__":
    main()
