"""``speechlab decode``: greedy or beam (+KenLM) decoding of a manifest with a CTC or Gram-CTC
checkpoint, scored with speechlab's scorer; also the network pass and the ``--device`` option
that ``speechlab grams refine`` shares."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import docstring_parser
import torch

from speechlab.data.manifests import ValidationReport
from speechlab.data.speech import SpeechDataModule
from speechlab.decode import load_lm, prefix_beam_search, uses_batched_search
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from speechlab.decode.prefix_beam import (
    BeamHypothesis,
    GramDecoding,
    PrefixBeamSearch,
    load_lexicon,
)
from speechlab.errors import InputError
from speechlab.functional.gram_decode import gram_greedy_decode
from speechlab.io import atomic_write_jsonl, atomic_write_text, check_overwrite
from speechlab.progress import progress
from speechlab.score import edit_counts
from speechlab.tasks.ctc import CTCTask
from speechlab.tasks.gram_ctc import GramCTCTask, as_gram_ctc


@dataclass
class Outputs:
    """Network outputs of a manifest: ids, reference texts, ``(T_i, V)`` log-probs, seconds of
    audio, the seconds the network took, and what reading the manifest kept and skipped."""

    ids: list[str]
    texts: list[str]
    log_probs: list[torch.Tensor]
    audio_seconds: float
    network_seconds: float
    report: ValidationReport | None = None

    @property
    def frames(self) -> int:
        return sum(int(lp.shape[0]) for lp in self.log_probs)


#: the data module options that make the features (the rest only select and batch utterances)
FEATURE_OPTIONS = ("num_mel_bins", "dither")


def checkpoint_features(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The feature options (:data:`FEATURE_OPTIONS`) of the data module a checkpoint was trained
    with (LightningCLI saves them), so that decoding computes the features ``speechlab test``
    computes; empty (the data module's defaults) for a checkpoint without them."""
    ckpt = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    data = ckpt.get("datamodule_hyper_parameters") or {}
    return {k: data[k] for k in FEATURE_OPTIONS if k in data}


def network_outputs(model: GramCTCTask, manifest: str, sample_rate: int = 16000,
                    resample: bool = False, max_duration: float = 60.0,
                    device: str | torch.device = "cpu",
                    features: dict[str, Any] | None = None) -> Outputs:
    """Run ``model`` (eval, no grad) over every utterance of ``manifest`` on ``device`` (all
    of them, whatever their length; only unreadable audio and bad entries are skipped, counted
    in ``report``); the log-probs come back on the CPU, in float32. ``features``: the data
    module's feature options (:func:`checkpoint_features` of the model's checkpoint), so the
    features, dither included (seeded per utterance, as in ``speechlab test``), are the ones
    the model was trained and tested on."""
    dm = SpeechDataModule(test_manifest=manifest, vocab="".join(model.vocab.chars),
                          sample_rate=sample_rate, resample=resample, max_duration=max_duration,
                          output_frame_rate=None, num_workers=0, **(features or {}))
    dm.setup("test")
    ids, texts, lps = [], [], []
    seconds, net = 0.0, 0.0
    model.eval().to(device)
    bar = progress(total=len(dm.cuts("test")), desc="network", unit="utt")
    with torch.inference_mode(), bar:
        for batch in dm.test_dataloader():
            t0 = time.perf_counter()
            lp, lens = model(batch["features"].to(device), batch["feature_lens"].to(device))
            lp, lens = lp.float().cpu(), lens.cpu()
            net += time.perf_counter() - t0
            seconds += float(batch["feature_lens"].sum()) * dm.frame_shift_ms / 1000
            ids += batch["ids"]
            texts += batch["texts"]
            lps += [lp[b, : int(lens[b])].clone() for b in range(lp.shape[0])]
            bar.update(len(batch["ids"]))
    return Outputs(ids, texts, lps, seconds, net, dm.report("test"))


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; otherwise ``spec``.

    Raises:
        InputError: ``spec`` is not a device name, or names a CUDA device this machine lacks.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"--device {spec}: no such CUDA device here "
                         f"({torch.cuda.device_count()} visible)")
    return device


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="where the network runs: cpu, cuda, cuda:1, ... (auto: cuda if available)")


def greedy(model: GramCTCTask, out: Outputs) -> list[str]:
    assert model.grams is not None
    sym = model.grams.symbols()
    return [gram_greedy_decode(lp[None], torch.tensor([lp.shape[0]]), sym)[0] for lp in out.log_probs]


#: GramDecoding fields that take several values on the command line: a grid, decoded in turn
GRID_FIELDS = ("lm_weight", "word_score")


def beam_hypotheses(search: PrefixBeamSearch | BatchedPrefixBeamSearch, log_probs: list[torch.Tensor],
                    batch_size: int = 32, nbest: int = 1,
                    timestamps: bool = False) -> list[list[BeamHypothesis]]:
    """The ``nbest`` hypotheses (best first) of each ``(T_i, V)`` log-prob matrix: one utterance
    at a time for the C++ search, padded batches of ``batch_size`` on the search's device for
    the batched one; ``timestamps`` (the batched search only) fills their ``word_times``."""
    if isinstance(search, PrefixBeamSearch):
        if timestamps:
            raise ValueError("timestamps need the batched search")
        return [search.decode(lp, nbest)
                for lp in progress(log_probs, desc="beam search", unit="utt")]
    hyps: list[list[BeamHypothesis]] = []
    bar = progress(total=len(log_probs), desc="batched beam search", unit="utt")
    with bar:
        for i in range(0, len(log_probs), batch_size):
            chunk = log_probs[i:i + batch_size]
            lengths = torch.tensor([lp.shape[0] for lp in chunk])
            padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
            hyps += search.decode(padded, lengths, nbest=nbest, timestamps=timestamps)
            bar.update(len(chunk))
    return hyps


def hypothesis_fields(hyps: list[BeamHypothesis], frame_rate: float, nbest: int,
                      timestamps: bool) -> dict[str, Any]:
    """The ``--out`` fields of one utterance beyond ``{id, ref, hyp}``: ``nbest`` (``nbest > 1``:
    ``{hyp, score, am_score, lm_score}`` per hypothesis, best first) and ``words``
    (``timestamps``: ``{word, start, end}`` of the best one, in seconds: ``start`` = first
    frame / ``frame_rate``, ``end`` = (last frame + 1) / ``frame_rate``)."""
    row: dict[str, Any] = {}
    if nbest > 1:
        row["nbest"] = [{"hyp": h.text, "score": h.score, "am_score": h.am_score,
                         "lm_score": h.lm_score} for h in hyps]
    if timestamps:
        times = hyps[0].word_times if hyps and hyps[0].word_times is not None else []
        row["words"] = [{"word": w, "start": round(a / frame_rate, 6),
                         "end": round((z + 1) / frame_rate, 6)} for w, a, z in times]
    return row


def add_config_arguments(p: argparse.ArgumentParser, config: type, grid: Sequence[str] = ()) -> None:
    """One ``--flag-name`` per field of the dataclass ``config``, with its default, its type
    (``Literal`` fields as choices) and its help from the class docstring's ``Attributes``;
    fields named in ``grid`` take one or more values (a list)."""
    docs = {a.arg_name: a.description for a in docstring_parser.parse(config.__doc__ or "").params}
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        hint = hints[f.name]
        kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kw: dict[str, Any] = {"default": f.default,
                              "help": (docs.get(f.name) or "").replace("%", "%%") or None}
        if typing.get_origin(hint) is Literal:
            kw["choices"] = typing.get_args(hint)
        else:
            kw["type"] = kinds[0] if typing.get_origin(kinds[0]) is not Literal else str
        if f.name in grid:
            kw.update(nargs="+", default=[f.default])
        p.add_argument("--" + f.name.replace("_", "-"), **kw)


def config_from_arguments(args: argparse.Namespace, config: type, **values: Any) -> Any:
    """The ``config`` dataclass of the parsed flags of :func:`add_config_arguments`, with
    ``values`` (e.g. one point of a grid field) in place of the flags."""
    return config(**{f.name: values[f.name] if f.name in values else getattr(args, f.name)
                     for f in dataclasses.fields(config)})


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="CTCTask or GramCTCTask checkpoint")
    p.add_argument("--manifest", required=True, help="utterances to decode (with references)")
    add_config_arguments(p, GramDecoding, grid=GRID_FIELDS)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--resample", action="store_true", help="resample audio to --sample-rate")
    add_device_argument(p)
    p.add_argument("--out", help="hypotheses JSONL ({id, ref, hyp}) of the best grid point")
    p.add_argument("--nbest", type=int, default=1,
                   help="beam search: with --out, also the N best hypotheses with their scores "
                        "(\"nbest\": [{hyp, score, am_score, lm_score}]) when N > 1")
    p.add_argument("--timestamps", action="store_true",
                   help="beam search with --search batched: with --out, also every word's start "
                        "and end in seconds (\"words\": [{word, start, end}])")
    p.add_argument("--json", help="write the results (all grid points) as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite existing --out / --json files")


def decode(args: argparse.Namespace) -> int:
    """Decode a manifest with a trained CTC or Gram-CTC checkpoint: greedy, or prefix beam search
    over grams with an optional KenLM; prints WER/CER (speechlab's scorer), output frames per
    second of audio and decoding time. Several ``--lm-weight``/``--word-score`` values decode the
    same network outputs once per pair (a grid: tune on dev, then decode test with the best pair).

      speechlab decode --checkpoint exp/tiny_gram_ctc/checkpoints/best.ckpt --manifest data/tiny/test.jsonl
      speechlab decode --checkpoint C --manifest M --method beam --beam-size 16 \\
          --lm exp/lm/tiny_3gram.arpa --lm-weight 0.3 0.6 1.0 --word-score 0 1 2 --out hyps.jsonl
      speechlab decode ... --lm exp/lm/tiny_3gram.arpa --lexicon lm     # only the LM's words
      speechlab decode ... --method beam --search batched --nbest 5 --timestamps --out hyps.jsonl

    ``--nbest N`` / ``--timestamps`` add to each ``--out`` line the N best hypotheses
    (``"nbest"``) and the best one's word times in seconds (``"words"``, the batched search
    only: :attr:`~speechlab.decode.prefix_beam.BeamHypothesis.word_times` over the model's
    frame rate, ``end`` = (last frame + 1) / rate).

    CTC checkpoints (``CTCTask``) decode as unigram Gram-CTC, which is the same model.
    """
    # every input and output is checked before the network runs over the manifest
    device = resolve_device(args.device)
    for path in (args.out, args.json):
        if path:
            check_overwrite(path, args.force)
    if args.nbest < 1:
        raise InputError(f"--nbest {args.nbest}: 1 or more expected")
    if (args.timestamps or args.nbest > 1) and args.method != "beam":
        raise InputError("--timestamps/--nbest need --method beam")
    first = config_from_arguments(args, GramDecoding, lm_weight=args.lm_weight[0],
                                  word_score=args.word_score[0])
    if args.timestamps and not uses_batched_search(first, device):
        raise InputError("--timestamps needs --search batched (the C++ search returns no frames)")
    model = as_gram_ctc(CTCTask.load(args.checkpoint))
    # the LM and lexicon are loaded once, for every point of the grid
    lm = load_lm(model.grams, first, device) if args.method == "beam" else None
    lexicon = load_lexicon(args.lexicon, args.lm) if args.method == "beam" else None
    out = network_outputs(model, args.manifest, args.sample_rate, args.resample, device=device,
                          features=checkpoint_features(args.checkpoint))
    fps = out.frames / max(out.audio_seconds, 1e-9)
    print(f"{args.checkpoint}: {len(model.grams or [])} outputs, {model.frame_rate:g} frames/s; "
          f"{len(out.ids)} utterances, {out.audio_seconds:.1f} s audio, {out.frames} frames "
          f"({fps:.1f}/s); network {out.network_seconds:.1f} s")
    if out.report is not None:
        print(f"decode: {out.report.coverage(len(out.ids))}")
    results = []
    grid = [(a, b) for a in args.lm_weight for b in args.word_score] if args.method == "beam" \
        else [(0.0, 0.0)]
    best_hyps: list[str] = []
    for alpha, beta in grid:
        t0 = time.perf_counter()
        extra: list[dict[str, Any]] = [{} for _ in out.ids]
        if args.method == "greedy":
            hyps = greedy(model, out)
            label = "greedy"
        else:
            point = config_from_arguments(args, GramDecoding, lm_weight=alpha, word_score=beta)
            dec = prefix_beam_search(model.grams, point, device, lm=lm, lexicon=lexicon)
            beams = beam_hypotheses(dec, out.log_probs, nbest=args.nbest, timestamps=args.timestamps)
            hyps = [h[0].text if h else "" for h in beams]
            extra = [hypothesis_fields(h, model.frame_rate, args.nbest, args.timestamps) for h in beams]
            label = (f"beam {args.beam_size}" + (" batched" if uses_batched_search(point, device) else "")
                     + (f" + LM α={alpha:g} β={beta:g}" if lm is not None else ""))
            label += " + lexicon" if lexicon else ""
        dt = time.perf_counter() - t0
        w = edit_counts(out.texts, hyps, unit="word", normalize=True)
        c = edit_counts(out.texts, hyps, unit="char", normalize=True)
        row = {"decoding": label, "lm_weight": alpha, "word_score": beta, "wer": w.rate,
               "cer": c.rate, "word_errors": w.errors, "words": w.ref_len, "decode_seconds": dt,
               "frames_per_second": fps, "utterances": len(hyps)}
        results.append((row, hyps, extra))
        print(f"{label:32s} WER {100 * w.rate:6.2f}%  CER {100 * c.rate:6.2f}%  "
              f"decode {dt:6.2f} s ({1000 * dt / max(len(hyps), 1):.2f} ms/utt)")
    best_row, best_hyps, best_extra = min(results, key=lambda r: (r[0]["wer"], r[0]["cer"]))
    if len(results) > 1:
        print(f"best: {best_row['decoding']}  WER {100 * best_row['wer']:.2f}%  "
              f"CER {100 * best_row['cer']:.2f}%")
    if args.out:
        atomic_write_jsonl(args.out, ({"id": i, "ref": r, "hyp": h} | x for i, r, h, x
                                      in zip(out.ids, out.texts, best_hyps, best_extra, strict=True)))
    if args.json:
        atomic_write_text(args.json, json.dumps({"checkpoint": args.checkpoint, "manifest": args.manifest,
                                                 "results": [r for r, _, _ in results]}, indent=1) + "\n")
    return 0
