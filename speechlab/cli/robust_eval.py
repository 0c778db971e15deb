"""Evaluate ASR checkpoints on many test sets at once: WER/CER (summed edit counts, via
:func:`speechlab.score.edit_counts`), hypotheses, and for far-field sets whose lines name their
clean source (``clean_id``) the distance between clean and far-field encoder embeddings.

One process loads each checkpoint once and runs every set. ``speechlab test`` does that too
(``data.init_args.test_manifest`` a list of manifests: WER/CER and hypotheses per set), but not
the embedding distances, which are why this module stays. Used by ``recipes/robust/evaluate.py``
and the robust-encoder notebook; not a ``speechlab`` command, but above ``tasks/`` (it runs
their checkpoints) and with tables and set names of one experiment, so it sits in the CLI layer
until that experiment's driver takes it. Checkpoints are loaded with
:meth:`CTCTask.load <speechlab.tasks.base.SpeechLabTask.load>` (any model of the CTC family).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from speechlab.data.speech import SpeechDataModule
from speechlab.functional.ctc import ctc_greedy_decode
from speechlab.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from speechlab.score import edit_counts
from speechlab.tasks.ctc import CTCTask

log = logging.getLogger("speechlab.tasks")


@dataclass
class SetResult:
    """Scores of one model on one test set."""

    name: str
    utterances: int
    word_errors: int
    words: int
    char_errors: int
    chars: int
    rows: list[dict[str, str]]

    @property
    def wer(self) -> float:
        return self.word_errors / max(1, self.words)

    @property
    def cer(self) -> float:
        return self.char_errors / max(1, self.chars)

    def summary(self) -> dict[str, Any]:
        return {"utterances": self.utterances, "wer": self.wer, "cer": self.cer,
                "word_errors": self.word_errors, "words": self.words,
                "char_errors": self.char_errors, "chars": self.chars}


def batches(manifest: str | Path, vocab: str, resample: bool = False,
            max_duration: float = 60.0, num_workers: int = 1, seed: int = 0) -> Iterator[dict]:
    """Evaluation batches of a manifest (fixed order, every utterance kept whatever its length;
    the fbank dither is seeded, so features are reproducible). When they are all out, logs how
    many were scored of how many in the manifest (and why any were skipped)."""
    dm = SpeechDataModule(test_manifest=str(manifest), vocab=vocab, resample=resample,
                          max_duration=max_duration, output_frame_rate=None,
                          num_workers=num_workers, check_samples=False)
    dm.setup("test")
    torch.manual_seed(seed)
    scored = 0
    for batch in dm.test_dataloader():
        scored += len(batch["ids"])
        yield batch
    report = dm.report("test")
    if report is not None:
        (log.warning if report.skipped else log.info)("%s", report.coverage(scored))


@torch.inference_mode()
def evaluate_manifest(task: CTCTask, name: str, manifest: str | Path, resample: bool = False,
                      embeddings: dict[str, torch.Tensor] | None = None,
                      **loader_kw: Any) -> SetResult:
    """Greedy transcripts and WER/CER of ``task`` on ``manifest``. When ``embeddings`` is a
    dict, it receives each utterance's ``(T', D)`` encoder output by cut id."""
    rows: list[dict[str, str]] = []
    vocab = "".join(task.vocab.chars)
    for batch in batches(manifest, vocab, resample, **loader_kw):
        enc, lens = task.encode(batch["features"], batch["feature_lens"])
        log_probs = task.head(enc).float().log_softmax(-1)
        hyps = [task.vocab.decode(ids) for ids in ctc_greedy_decode(log_probs, lens, task.vocab.blank)]
        rows += [{"id": i, "ref": r, "hyp": h} for i, r, h in zip(batch["ids"], batch["texts"], hyps, strict=True)]
        if embeddings is not None:
            for i, cut_id in enumerate(batch["ids"]):
                embeddings[cut_id] = enc[i, :int(lens[i])].clone()
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    words = edit_counts(refs, hyps, unit="word", normalize=True)
    chars = edit_counts(refs, hyps, unit="char", normalize=True)
    return SetResult(name, len(rows), words.errors, words.ref_len, chars.errors, chars.ref_len,
                     sorted(rows, key=lambda r: r["id"]))


def clean_ids(manifest: str | Path) -> dict[str, str]:
    """``{far-field id: clean_id}`` of a manifest's lines that have both (empty otherwise)."""
    return {row["id"]: row["clean_id"] for _, row in read_jsonl(manifest, what="manifest")
            if "clean_id" in row and "id" in row}


def embedding_distance(noisy: Mapping[str, torch.Tensor], clean: Mapping[str, torch.Tensor],
                       pairs: Mapping[str, str]) -> dict[str, float]:
    """Distance between far-field and clean embeddings of the same utterances (frame-aligned
    over the shorter length): ``l1`` = mean |e(x) − e(x̃)| per element, ``rel_l1`` = that over
    the mean |e(x)|, and ``cos`` = mean per-frame cosine similarity. Pairs missing on either
    side are skipped; ``n`` counts the pairs used."""
    diff = mag = cos = 0.0
    elems = frames = n = 0
    for noisy_id, clean_id in pairs.items():
        if noisy_id not in noisy or clean_id not in clean:
            continue
        a, b = clean[clean_id], noisy[noisy_id]
        t = min(len(a), len(b))
        a, b = a[:t].float(), b[:t].float()
        diff += (a - b).abs().sum().item()
        mag += a.abs().sum().item()
        cos += torch.nn.functional.cosine_similarity(a, b, dim=-1).sum().item()
        elems += a.numel()
        frames += t
        n += 1
    if n == 0:
        return {"n": 0}
    return {"n": n, "l1": diff / elems, "rel_l1": diff / max(mag, 1e-12), "cos": cos / frames}


def evaluate_sets(checkpoint: str | Path, sets: Mapping[str, str | Path], resample: bool = True,
                  out_dir: str | Path | None = None, **loader_kw: Any) -> dict[str, Any]:
    """Evaluate one checkpoint on every ``name -> manifest`` of ``sets``, in order.

    Sets without ``clean_id`` lines are clean references: their embeddings are kept, and each
    later far-field set (lines with ``clean_id``) also gets :func:`embedding_distance` to them.
    So list the clean sets first.

    Args:
        checkpoint: Lightning checkpoint of a CTC-family task.
        sets: test sets by name.
        resample: accept manifests at other sample rates (e.g. 8 kHz FSDD).
        out_dir: when given, writes ``<name>.hyps.jsonl`` per set and ``results.json``.

    Returns:
        ``{"checkpoint", "sets": {name: summary (+ "embedding": distances)}}``.
    """
    task = CTCTask.load(checkpoint)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "sets": {}}
    clean_emb: dict[str, torch.Tensor] = {}
    for name, manifest in sets.items():
        pairs = clean_ids(manifest)
        emb: dict[str, torch.Tensor] = {} if pairs else clean_emb
        res = evaluate_manifest(task, name, manifest, resample=resample, embeddings=emb,
                                **loader_kw)
        summary = res.summary()
        if pairs:
            summary["embedding"] = embedding_distance(emb, clean_emb, pairs)
        results["sets"][name] = summary
        log.info("%s: %s WER %.2f%% CER %.2f%%", Path(checkpoint).name, name, 100 * res.wer,
                 100 * res.cer)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(out / f"{name}.hyps.jsonl", res.rows)
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "results.json", json.dumps(results, indent=1) + "\n")
    return results


def reference_set(name: str, names: list[str]) -> str | None:
    """The clean set a noisy set's gap is measured against: ``fsdd_clean`` for ``fsdd_*``
    sets, else ``clean`` (``None`` for the clean sets themselves or when absent)."""
    ref = "fsdd_clean" if name.startswith("fsdd_") else "clean"
    return None if name == ref or ref not in names else ref


def results_table(results: Mapping[str, Mapping[str, Any]], unit: str = "wer") -> str:
    """Markdown table: one row per test set, one column per model, cells ``rate (gap)`` in %
    where gap = rate − the rate on the matching clean set (:func:`reference_set`); last rows:
    the mean gap over the far-field sets of the synthetic (``sim_*``, ``real_*``) and of the
    FSDD corpus.

    Args:
        results: ``{model: evaluate_sets(...) output}``.
        unit: ``"wer"`` or ``"cer"``.
    """
    models = list(results)
    names = list(next(iter(results.values()))["sets"])
    lines = ["| test set | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    gaps: dict[str, dict[str, list[float]]] = {m: {"synthetic": [], "fsdd": []} for m in models}
    for name in names:
        ref = reference_set(name, names)
        cells = []
        for m in models:
            sets = results[m]["sets"]
            rate = 100 * sets[name][unit]
            if ref is None:
                cells.append(f"{rate:.1f}")
                continue
            gap = rate - 100 * sets[ref][unit]
            gaps[m]["fsdd" if name.startswith("fsdd_") else "synthetic"].append(gap)
            cells.append(f"{rate:.1f} ({gap:+.1f})")
        lines.append(f"| {name} ({next(iter(results.values()))['sets'][name]['utterances']}) | "
                     + " | ".join(cells) + " |")
    for corpus in ("synthetic", "fsdd"):
        if any(gaps[m][corpus] for m in models):
            cells = [f"{sum(g) / len(g):+.1f}" if (g := gaps[m][corpus]) else "" for m in models]
            lines.append(f"| **mean gap, {corpus} far-field sets** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def distance_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of the clean/far-field embedding distances (relative L1, cosine) per
    far-field set and model."""
    models = list(results)
    names = [n for n, s in next(iter(results.values()))["sets"].items() if "embedding" in s]
    lines = ["| test set | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for name in names:
        cells = []
        for m in models:
            e = results[m]["sets"][name].get("embedding", {})
            cells.append(f"{e['rel_l1']:.3f} / {e['cos']:.3f}" if e.get("n") else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
