"""Batched CTC / Gram-CTC beam search (``BatchedPrefixBeamSearch``) against batched greedy
decoding, the C++ prefix beam search (one thread, and one utterance per thread on every core)
and torchaudio's flashlight ``ctc_decoder`` (unigrams only), on the same emissions: decoder-only
throughput (utterances per second) and wall time relative to batched greedy decoding; then end
to end, an acoustic model's forward pass plus greedy or beam decoding of its output.

  python bench/batched_decode.py --device cuda            # the H200 (issue 18's table)
  python bench/batched_decode.py --device cpu --batch 8 --frames 100 --repeat 1   # a CPU smoke run

Emissions: ``--batch`` utterances of ``--frames`` frames (250 = 10 s at stride 4) of peaky random
log-probs (a blank-or-token path with the right token's logit raised by 6, as a trained model
emits), for two output sets: the 29-output unigram set (blank + a-z, space, apostrophe) and the
813-output bigram set (those + all 784 bigrams). Every decoder gets the same log-probs; the
batched rows include moving the transcripts to the host.

Batched beam rows: the per-frame loop (one Python launch of every kernel per frame), on CUDA the
CUDA-graph loop (chunks of ``--graph-chunk`` frames replayed; the default of ``decode``) and
that with the frame step ``torch.compile``-d (on CUDA unless ``--no-compile``: one compilation
per output set, tens of seconds); with a character 3-gram LM (an ARPA written here from 2,000
generated sentences: maximum-likelihood probabilities and a constant backoff, for timing only;
``--lm-order 0``: none), and with a word 3-gram LM of the same sentences (``--word-lm-order``),
without and with its words as the lexicon (on CUDA the latter also with the compiled step). A search's first decode (graph capture, compilation) is the untimed
warm-up run.

End to end (the NGPU-LM reading of "beam ≤ 1.15× greedy"): the BiLSTM CTC encoder of
``recipes/synth/ctc.yaml`` (random weights) on ``--batch`` × ``4 · --frames`` random 80-dim
feature frames (10 s of 16 kHz audio at a 10 ms hop → 250 output frames at stride 4), its
log-probs decoded greedily or by the beam search; the ratio column of those rows is relative to
forward + greedy. A row that fails prints its reason and the table goes on.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's speechlab, not an installed one

from speechlab.data.grams import GramSet  # noqa: E402
from speechlab.data.sentences import generate_sentences  # noqa: E402
from speechlab.data.text import DEFAULT_CHARS, CharVocab  # noqa: E402
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch  # noqa: E402
from speechlab.decode.prefix_beam import PrefixBeamSearch, native_available  # noqa: E402
from speechlab.lm.tensor_ngram import TensorNgramLM  # noqa: E402
from speechlab.nn.encoders import SpeechEncoderConfig  # noqa: E402
from speechlab.tasks.ctc import CTCTask  # noqa: E402
from speechlab.tasks.gram_ctc import GramCTCTask  # noqa: E402

RECIPE = REPO / "recipes" / "synth" / "ctc.yaml"


class Row(NamedTuple):
    """One table row: seconds per batch (None: failed or skipped, ``note`` says why), the best
    texts (None: not compared) and whether it is an end-to-end row."""

    decoder: str
    seconds: float | None
    texts: list[str] | None = None
    note: str = ""
    end_to_end: bool = False


def gram_sets() -> dict[str, list[str]]:
    chars = list(DEFAULT_CHARS)
    return {"29 outputs (unigrams)": chars,
            "813 outputs (+ 784 bigrams)": chars + ["".join(p) for p in itertools.product(chars, repeat=2)]}


def emissions(batch: int, frames: int, outputs: int, seed: int = 0) -> torch.Tensor:
    """``(batch, frames, outputs)`` log-probs: per frame blank (p 0.5) or a random token,
    whose logit is raised by 6 over N(0, 1) noise."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, outputs, generator=gen)
    blank = torch.rand(batch, frames, generator=gen) < 0.5
    token = torch.randint(1, outputs, (batch, frames), generator=gen)
    label = torch.where(blank, torch.zeros_like(token), token)
    logits.scatter_add_(-1, label[..., None], torch.full((batch, frames, 1), 6.0))
    return logits.log_softmax(-1)


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[float, object]:
    """Median wall seconds of ``fn`` over ``repeat`` runs after one warm-up run, and what the
    warm-up run returned."""
    first = fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def row(decoder: str, fn: Callable[[], list[str]], device: torch.device, repeat: int,
        compare: bool = True, end_to_end: bool = False) -> Row:
    """Time ``fn`` (its texts kept when ``compare``); an exception becomes the row's note."""
    try:
        seconds, texts = timed(fn, device, repeat)
        return Row(decoder, seconds, list(texts) if compare else None, end_to_end=end_to_end)
    except Exception as e:  # a failing decoder must not stop the table
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return Row(decoder, None, note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}",
                   end_to_end=end_to_end)


def greedy(lp: torch.Tensor, grams: list[str]) -> list[str]:
    """Batched greedy decoding: argmax, merge repeats, drop blanks (on the device), texts on the host."""
    ids = lp.argmax(-1)
    keep = (ids != 0) & torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids[:, 1:] != ids[:, :-1]], 1)
    ids, keep = ids.cpu().tolist(), keep.cpu().tolist()
    return ["".join(grams[i - 1] for i, k in zip(row, ks, strict=True) if k) for row, ks in zip(ids, keep, strict=True)]


def flashlight_decoder(chars: list[str], beam: int, word_lm: WordLM | None = None
                       ) -> Callable[[torch.Tensor, torch.Tensor], list[str]] | None:
    """torchaudio's flashlight decoder (None when flashlight-text is missing): lexicon-free, or
    with ``word_lm`` its KenLM word LM and the LM's words as the lexicon (spelled ``w o r d |``,
    written beside the ARPA), at the batched rows' LM weight 0.5 and word score 1.0."""
    try:
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError):  # torchaudio raises RuntimeError without flashlight-text
        return None
    tokens = ["-", *["|" if c == " " else c for c in chars]]
    lm: dict = dict(lexicon=None, lm=None)
    if word_lm is not None:
        lexicon = word_lm.path.with_suffix(".lexicon")
        lexicon.write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in word_lm.lexicon))
        lm = dict(lexicon=str(lexicon), lm=str(word_lm.path), lm_weight=0.5, word_score=1.0)
    fl = ctc_decoder(tokens=tokens, beam_size=beam, beam_threshold=math.inf, blank_token="-",
                     sil_token="|", log_add=True, **lm)

    def decode(lp: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [" ".join("".join(tokens[i] for i in h[0].tokens.tolist() if i != 0)
                         .replace("|", " ").split()) for h in fl(lp.float(), lengths)]
    return decode


def write_arpa(path: Path, unit: str = "char", order: int = 3, sentences: int = 2000) -> list[str]:
    """A character (``unit="char"``, space written ``|``, every character of ``DEFAULT_CHARS``
    a 1-gram) or word (``unit="word"``) ``order``-gram ARPA of generated sentences, ``<unk>``
    a 1-gram: maximum-likelihood log10 probabilities (of the n-gram given its first ``n - 1``
    tokens) and a backoff of -0.5; not normalised (timing only). Returns the 1-gram tokens
    other than ``<s>``, ``</s>``, ``<unk>`` (for a word LM: its lexicon)."""
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
    for s in generate_sentences(sentences, seed=0):
        units = s.text.split() if unit == "word" else ["|" if c == " " else c for c in s.text]
        toks = ["<s>", *units, "</s>"]
        for n in range(1, order + 1):
            counts[n].update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    extra = ["<unk>"] if unit == "word" else ["|" if c == " " else c for c in [*DEFAULT_CHARS, "<unk>"]]
    counts[1].update((t,) for t in extra)
    total = sum(counts[1].values())
    lines = ["\\data\\", *(f"ngram {n}={len(counts[n])}" for n in range(1, order + 1)), ""]
    for n in range(1, order + 1):
        lines.append(f"\\{n}-grams:")
        for gram, c in sorted(counts[n].items()):
            den = total if n == 1 else counts[n - 1][gram[:-1]]
            logp = -99.0 if gram == ("<s>",) else math.log10(min(1.0, c / den))
            backoff = "\t-0.5" if n < order and gram[-1] != "</s>" else ""
            lines.append(f"{logp:.6f}\t{' '.join(gram)}{backoff}")
        lines.append("")
    path.write_text("\n".join([*lines, "\\end\\", ""]))
    return sorted(g[0] for g in counts[1] if g[0] not in ("<s>", "</s>", "<unk>"))


class WordLM(NamedTuple):
    """The word LM rows' ARPA, its order and lexicon (the LM's words)."""

    path: Path
    order: int
    lexicon: list[str]


def acoustic_model(grams: list[str], device: torch.device) -> torch.nn.Module:
    """The CTC model of ``recipes/synth/ctc.yaml`` (its encoder config read from the recipe;
    random weights) for the unigram set, its Gram-CTC twin with a gram head for a larger set;
    eval mode on ``device``."""
    init = yaml.safe_load(RECIPE.read_text())["model"]["init_args"]
    encoder = SpeechEncoderConfig(**init["encoder"])
    chars = "".join(DEFAULT_CHARS)
    if grams == list(chars):
        model: torch.nn.Module = CTCTask(vocab=chars, encoder=encoder, spec_augment=False)
    else:
        gram_task = GramCTCTask(vocab=chars, encoder=encoder, spec_augment=False)
        gram_task.set_grams(GramSet(CharVocab(chars), grams))
        model = gram_task
    return model.to(device).eval()


def beam_searches(grams: list[str], args: argparse.Namespace, device: torch.device,
                  lm: TensorNgramLM | None, word_lm: WordLM | None
                  ) -> list[tuple[str, BatchedPrefixBeamSearch | str]]:
    """The batched beam searches of the table by row name, float32 (made once per output set:
    the decoder and end-to-end rows share their graphs and compiled steps); a search that
    cannot be made is the reason, a string."""
    chars = list(DEFAULT_CHARS)
    opts = dict(beam_size=args.beam, token_beam=args.token_beam, device=device, dtype=torch.float32,
                graph_chunk=args.graph_chunk)
    rows: list[tuple[str, dict]] = [("batched beam, per-frame loop", dict(cuda_graph=False))]
    if device.type == "cuda":
        rows.append(("batched beam, CUDA graph", {}))
        if args.compile:
            rows.append(("batched beam, CUDA graph + compile", dict(compile=True)))
    how = "CUDA graph" if device.type == "cuda" else "per-frame loop"  # the LM rows' loop
    if lm is not None:
        rows.append((f"batched beam + char {lm.order}-gram LM, {how}", dict(lm=lm, lm_weight=0.5, word_score=1.0)))
    if word_lm is not None:
        rows.append((f"batched beam + word {word_lm.order}-gram LM, {how}",
                     dict(lm=word_lm.path, lm_unit="word", lm_weight=0.5, word_score=1.0)))
        word_lexicon = dict(lm=word_lm.path, lm_unit="word", lexicon=word_lm.lexicon, lm_weight=0.5,
                            word_score=1.0)
        rows.append((f"batched beam + word {word_lm.order}-gram LM + lexicon, {how}", word_lexicon))
        if device.type == "cuda" and args.compile:  # the fastest way to run the full configuration
            rows.append((f"batched beam + word {word_lm.order}-gram LM + lexicon, CUDA graph + compile",
                         dict(word_lexicon, compile=True)))
    out: list[tuple[str, BatchedPrefixBeamSearch | str]] = []
    for name, kw in rows:
        try:
            out.append((name, BatchedPrefixBeamSearch(chars, grams, **opts, **kw)))
        except Exception as e:
            out.append((name, f"failed: {type(e).__name__}: {e}"))
    return out


def decoder_rows(grams: list[str], args: argparse.Namespace, device: torch.device,
                 searches: list[tuple[str, BatchedPrefixBeamSearch | str]], word_lm: WordLM | None
                 ) -> Iterator[Row]:
    """Decoder-only rows for one output set: batched greedy first, each batched beam search
    (a failed graph capture noted), the C++ search, flashlight (unigrams; with ``word_lm`` also
    flashlight with that LM and its lexicon)."""
    chars = list(DEFAULT_CHARS)
    lp_cpu = emissions(args.batch, args.frames, len(grams) + 1)
    lp = lp_cpu.to(device)
    lengths = torch.full((args.batch,), args.frames)
    cpu, cpu_repeat = torch.device("cpu"), max(1, args.repeat // 2)
    yield row("batched greedy", lambda: greedy(lp, grams), device, args.repeat, compare=False)
    for name, search in searches:
        if isinstance(search, str):
            yield Row(name, None, note=search)
            continue
        r = row(name, lambda s=search: s.decode_batch(lp, lengths), device, args.repeat,
                compare=search.lm is None)
        if search.graph_error is not None:
            r = r._replace(note=f"graph capture failed, ran eagerly: {search.graph_error[:160]}")
        yield r
    opts = {"beam_size": args.beam, "token_beam": args.token_beam}
    if native_available():
        torch.set_num_threads(1)
        one = PrefixBeamSearch(chars, grams, **opts)
        yield row("C++ search, 1 thread", lambda: one.decode_batch(lp_cpu, lengths), cpu, cpu_repeat)
        searches = [PrefixBeamSearch(chars, grams, **opts) for _ in range(args.threads)]

        def utterance(b: int) -> str:
            return searches[b % args.threads].decode(lp_cpu[b])[0].text

        def all_cores() -> list[str]:
            with ThreadPoolExecutor(args.threads) as pool:  # ctypes calls release the GIL
                return list(pool.map(utterance, range(args.batch)))
        yield row(f"C++ search, {args.threads} threads", all_cores, cpu, cpu_repeat)
        torch.set_num_threads(args.torch_threads)
    if len(grams) != len(chars):
        return
    fl = flashlight_decoder(chars, args.beam)
    if fl is None:
        yield Row("flashlight ctc_decoder (CPU)", None, note="flashlight-text is not installed")
        return
    yield row("flashlight ctc_decoder (CPU)", lambda: fl(lp_cpu, lengths), cpu, cpu_repeat)
    if word_lm is not None:
        try:
            fl_lm = flashlight_decoder(chars, args.beam, word_lm)
        except Exception as e:  # e.g. flashlight-text built without KenLM
            yield Row(f"flashlight + word {word_lm.order}-gram LM + lexicon (CPU)", None,
                      note=f"failed: {type(e).__name__}: {e}")
            return
        yield row(f"flashlight + word {word_lm.order}-gram LM + lexicon (CPU)",
                  lambda: fl_lm(lp_cpu, lengths), cpu, cpu_repeat, compare=False)


def end_to_end_rows(grams: list[str], args: argparse.Namespace, device: torch.device,
                    searches: list[tuple[str, BatchedPrefixBeamSearch | str]]) -> Iterator[Row]:
    """The acoustic model's forward alone, forward + batched greedy (the base of these rows'
    ratios), forward + each batched beam search."""
    try:
        model = acoustic_model(grams, device)
    except Exception as e:
        yield Row("acoustic model", None, note=f"failed: {type(e).__name__}: {e}", end_to_end=True)
        return
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(args.batch, 4 * args.frames, 80, generator=gen).to(device)
    feature_lens = torch.full((args.batch,), 4 * args.frames, device=device)

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model(features, feature_lens)

    yield row("BiLSTM forward alone", lambda: [str(forward()[0].shape)], device, args.repeat,
              compare=False, end_to_end=True)
    yield row("forward + batched greedy", lambda: greedy(forward()[0], grams), device, args.repeat,
              compare=False, end_to_end=True)
    for name, search in searches:
        if "per-frame" in name and device.type == "cuda":
            continue  # the eager loop's time is in the decoder rows; end to end only what one would run
        if isinstance(search, str):
            yield Row(f"forward + {name}", None, note=search, end_to_end=True)
            continue

        def decode(s: BatchedPrefixBeamSearch = search) -> list[str]:
            lp, lens = forward()
            return s.decode_batch(lp, lens)
        yield row(f"forward + {name}", decode, device, args.repeat, compare=False, end_to_end=True)


def print_rows(label: str, rows: Iterator[Row], batch: int) -> None:
    """Print each row as it is timed: ratios to the first decoder-only row (batched greedy) and
    to the end-to-end greedy row; best texts compared with the first beam row's."""
    base: dict[bool, float | None] = {}
    reference: list[str] | None = None
    for r in rows:
        if r.seconds is None:
            print(f"| {label} | {r.decoder} | – | – | – | {r.note} |", flush=True)
            base.setdefault(r.end_to_end, None)
            continue
        if (r.end_to_end and "greedy" in r.decoder) or (not r.end_to_end and r.decoder == "batched greedy"):
            base[r.end_to_end] = r.seconds
        if reference is None and r.texts is not None:
            reference = r.texts
        b = base.get(r.end_to_end)
        ratio = "–" if b is None else f"{r.seconds / b:.2f}"
        same = "–" if r.texts is None or reference is None else \
            f"{sum(a == c for a, c in zip(r.texts, reference, strict=True))}/{batch}"
        if r.note:
            same = f"{same}; {r.note}"
        print(f"| {label} | {r.decoder} | {1000 * r.seconds:.1f} | {batch / r.seconds:,.0f} | {ratio} | {same} |",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--beam", type=int, default=16)
    p.add_argument("--token-beam", type=int, default=0, help="tokens tried per frame (0: all)")
    p.add_argument("--graph-chunk", type=int, default=25, help="frames per CUDA graph replay")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also the CUDA-graph rows with the frame step torch.compile-d (CUDA only)")
    p.add_argument("--lm-order", type=int, default=3, help="order of the char LM rows (0: none)")
    p.add_argument("--word-lm-order", type=int, default=3,
                   help="order of the word LM rows, without and with the lexicon (0: none)")
    p.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                   help="skip the acoustic model rows")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of the 'C++ search, every core' row (one utterance each)")
    args = p.parse_args()
    args.torch_threads = torch.get_num_threads()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; batch {args.batch} x {args.frames} frames; beam {args.beam}, "
          f"token_beam {args.token_beam}; CUDA graph chunk {args.graph_chunk}; median of "
          f"{args.repeat}; torch {torch.__version__}")
    lm, word_lm = None, None
    with tempfile.TemporaryDirectory() as tmp:
        if args.lm_order > 0:
            try:
                arpa = Path(tmp) / "char.arpa"
                write_arpa(arpa, "char", order=args.lm_order)
                lm = TensorNgramLM.from_arpa(arpa, vocab=["<blank>", *DEFAULT_CHARS], device=device,
                                             dtype=torch.float32)
            except Exception as e:
                print(f"(no char LM rows: {type(e).__name__}: {e})")
        if args.word_lm_order > 0:
            arpa = Path(tmp) / "word.arpa"
            word_lm = WordLM(arpa, args.word_lm_order, write_arpa(arpa, "word", order=args.word_lm_order))
        # the whole table inside: the word LM rows load the ARPA from the temporary folder
        searches = {label: beam_searches(grams, args, device, lm, word_lm) for label, grams in gram_sets().items()}
        print("\n| output set | decoder | ms per batch | utterances/s | ÷ batched greedy | same best text |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for label, grams in gram_sets().items():
            print_rows(label, decoder_rows(grams, args, device, searches[label], word_lm), args.batch)
        if args.end_to_end:
            print("\nEnd to end (÷ column: relative to forward + batched greedy):\n")
            print("| output set | model + decoder | ms per batch | utterances/s | ÷ forward + greedy | note |")
            print("| --- | --- | ---: | ---: | ---: | --- |")
            for label, grams in gram_sets().items():
                print_rows(label, end_to_end_rows(grams, args, device, searches[label]), args.batch)

if __name__ == "__main__":
    main()
