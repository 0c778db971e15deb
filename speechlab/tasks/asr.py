"""Training/evaluation glue shared by the speech recognition tasks.

:class:`ASRTask` owns what every ASR task does the same way on top of
:class:`~speechlab.tasks.base.SpeechLabTask` (optimizer, learning-rate schedule, gradient norm,
RNG state, test outputs): WER/CER from summed edit counts on validation and test, the hypotheses
file that ``speechlab test`` writes, and what goes to TensorBoard besides the scalars: at every
validation, the reference and hypothesis of the first dev utterances (``val/samples``, text) and their audio
(``val/audio/<i>``, at the first validation of a fit). A subclass defines
``compute_loss(batch)`` and ``transcribe(batch) -> list[str]``.

Validation and test decode and score every utterance the data module read (only unreadable
audio and bad entries are skipped, by the manifest reader, counted and logged). An utterance
whose transcript is too long for the model's output frames is scored like any other; only its
(infinite) CTC / Gram-CTC loss is left out of ``val/loss`` / ``test/loss``. At the end of each
validation and test one log line says how many utterances were scored, of how many in the
manifest, why any were skipped, and how many were left out of the loss.

When the data module names several test sets (``SpeechDataModule(test_manifest=[...])``, one
test dataloader each), ``test`` keeps one WER/CER metric pair per set, logs ``test/<name>/wer``
and ``test/<name>/cer``, writes ``hyps.<name>.jsonl`` per set and one ``wer.json`` holding every
set's summary, and prints and logs one line per set.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from speechlab.data.manifests import ValidationReport, ctc_min_frames
from speechlab.data.speech import named_test_split
from speechlab.data.text import CharVocab
from speechlab.errors import InputError
from speechlab.io import atomic_write_jsonl, atomic_write_text
from speechlab.metrics import ErrorRate
from speechlab.tasks.base import SpeechLabTask

log = logging.getLogger("speechlab.tasks")


def coverage_line(split: str, scored: int, report: ValidationReport | None,
                  infeasible: list[str]) -> str:
    """What a validation / test covered: ``"<split>: scored N of M utterances of <manifest>[,
    skipped K (reason: count, ...)]"``, and how many of them were left out of the loss
    (``infeasible``: the ids of utterances whose transcript is too long for their frames)."""
    line = f"{split}: " + (report.coverage(scored) if report is not None
                           else f"scored {scored} utterances")
    if infeasible:
        shown = ", ".join(infeasible[:5]) + (", ..." if len(infeasible) > 5 else "")
        line += (f"; {len(infeasible)} with a transcript too long for its output frames "
                 f"({shown}): decoded and scored, left out of {split}/loss")
    return line


class ASRTask(SpeechLabTask):
    """Base of the ASR tasks (not used directly in recipes).

    Args:
        vocab: output characters in id order (blank = 0 implicit); must equal the data's.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        total_steps: steps of the cosine schedule; default ``trainer.max_steps``.
        output_dir: where ``test`` writes ``hyps.jsonl`` and ``wer.json``; default the logger's
            folder. With several test sets (``data.test_manifest`` a list or dict):
            ``hyps.<name>.jsonl`` per set and one ``wer.json`` ``{"sets": {name: summary}}``,
            each summary laid out like the single set's ``wer.json`` (plus ``hyps``).
        overwrite: let ``test`` replace those files when they exist (without it ``test``
            refuses to start; see :class:`speechlab.tasks.base.TestOutputs`). Not saved in checkpoints.
    """

    test_output_names = ("hyps.jsonl", "wer.json")

    #: dev utterances (the first of the first validation batch) whose reference and hypothesis
    #: (every validation) and audio (first validation) go to a TensorBoard logger; 0: none
    logged_samples: int = 4

    def __init__(self, vocab: str, lr: float = 2e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 200, total_steps: int | None = None,
                 output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__()
        self.vocab = CharVocab(list(vocab))
        self.metrics = torch.nn.ModuleDict({
            f"{split}_{unit}": ErrorRate(unit) for split in ("val", "test") for unit in ("word", "char")
        })
        self._test_names: list[str | None] = [None]
        self._test_tallies: list[dict[str, Any]] = []
        self._audio_logged = False
        #: training utterances whose transcript did not fit their frames (:meth:`note_infeasible`)
        self.infeasible_utterances = 0
        #: ids of this validation / test epoch's utterances left out of the loss (infeasible)
        self._eval_infeasible: list[str] = []
        #: utterances decoded and scored in this validation / test epoch
        self._eval_scored = 0

    # -- subclass API ---------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def transcribe(self, batch: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    @property
    def frame_rate(self) -> float:
        """Model output frames per second of audio."""
        raise NotImplementedError

    def min_frames(self, text: str) -> int:
        """Fewest output frames a path that spells ``text`` needs (CTC: one per character plus
        a blank between equal neighbours)."""
        return ctc_min_frames(text)

    #: utterances warned about one by one before the warnings stop (the count goes on)
    INFEASIBLE_LOG_LIMIT = 10

    def note_infeasible(self, batch: dict[str, Any], lengths: torch.Tensor) -> int:
        """Count and report the utterances of ``batch`` whose transcript is too long for their
        ``lengths`` output frames; returns their number. Their CTC / Gram-CTC loss is
        infinite; the tasks compute it with ``zero_infinity=True`` in a per-utterance mean, so
        such an utterance contributes loss 0 and gradient 0 (it still counts in the batch
        mean's denominator).

        Training (``self.training``): data modules skip most of them at set-up
        (``output_frame_rate``); the ones that get through are counted in
        :attr:`infeasible_utterances`, logged as ``train/infeasible`` (a sum per epoch) and
        warned about, naming the utterance (the first ``INFEASIBLE_LOG_LIMIT``).

        Evaluation: they are decoded and scored like any other utterance; validation / test
        leave them out of the loss average (``val/loss`` is the mean over the others) and count
        them in the line logged at the end of the epoch."""
        texts = batch.get("texts")
        if texts is None:  # a hand-made batch: the transcripts from the target ids
            texts = [self.vocab.decode(t[:n].tolist()) for t, n in
                     zip(batch["targets"], batch["target_lens"].tolist(), strict=True)]
        ids = batch.get("ids") or [f"#{i}" for i in range(len(texts))]
        bad = [(utt, text, n, need) for utt, text, n in zip(ids, texts, lengths.tolist(), strict=True)
               if n < (need := self.min_frames(text))]
        if not bad:
            return 0
        if not self.training:
            self._eval_infeasible += [utt for utt, *_ in bad]
            return len(bad)
        before = self.infeasible_utterances
        self.infeasible_utterances += len(bad)
        for k, (utt, text, n, need) in enumerate(bad, start=before + 1):
            if k > self.INFEASIBLE_LOG_LIMIT:
                break
            log.warning("utterance %s: transcript of %d characters needs %d output frames, the "
                        "model has %d; loss and gradient set to 0 (zero_infinity), skipped%s",
                        utt, len(text), need, n,
                        "; further ones are only counted (train/infeasible)"
                        if k == self.INFEASIBLE_LOG_LIMIT else "")
        if self._trainer is not None and self.training:
            self.log("train/infeasible", float(len(bad)), reduce_fx="sum", on_step=False,
                     on_epoch=True, batch_size=len(texts))
        return len(bad)

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        if getattr(dm, "vocab", self.vocab) != self.vocab:
            raise InputError(f"recipe mismatch: model vocab {self.vocab} != data vocab {dm.vocab}; "
                             "set the same characters in model.init_args.vocab and data.init_args.vocab")
        rate = getattr(dm.hparams, "output_frame_rate", None)
        if rate is not None and abs(rate - self.frame_rate) > 1e-6:
            raise InputError(
                f"recipe mismatch: data.init_args.output_frame_rate is {rate} but the model emits "
                f"{self.frame_rate} frames/s (100 / stride); set output_frame_rate: {self.frame_rate}")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str, name: str | None = None) -> list[str]:
        """Loss, transcripts and error counts of an evaluation batch, logged as
        ``<split>/loss``, ``<split>/wer``, ``<split>/cer`` (a named test set ``name``:
        ``test/<name>/...``, its own metrics)."""
        before = len(self._eval_infeasible)
        loss = self.compute_loss(batch)
        hyps = self.transcribe(batch)
        n = len(batch["ids"])
        left_out = len(self._eval_infeasible) - before  # loss 0 in the batch mean (zero_infinity)
        self._eval_scored += n
        prefix, key = (split, "") if name is None else (f"{split}/{name}", f":{name}")
        if left_out < n:  # the mean over the utterances the loss can fit
            self.log(f"{prefix}/loss", loss * (n / (n - left_out)), batch_size=n - left_out,
                     sync_dist=True, add_dataloader_idx=False)
        for unit in ("word", "char"):
            metric = self.metrics[f"{split}_{unit}{key}"]
            metric.update(hyps, batch["texts"])
            self.log(f"{prefix}/{'wer' if unit == 'word' else 'cer'}", metric, batch_size=n,
                     prog_bar=split == "val", add_dataloader_idx=False,
                     metric_attribute=f"metrics.{split}_{unit}{key}")
        return hyps

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hyps = self._evaluate(batch, "val")
        if batch_idx == 0:
            self.log_samples(batch, hyps)

    def on_validation_epoch_start(self) -> None:
        self._eval_infeasible, self._eval_scored = [], 0

    def on_validation_epoch_end(self) -> None:
        scored, infeasible = self._gather_coverage(self._eval_scored, self._eval_infeasible)
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_coverage("val", scored, infeasible)

    @staticmethod
    def _gather_coverage(scored: int, infeasible: list[str]) -> tuple[int, list[str]]:
        """(utterances scored, ids left out of the loss) of this rank's ``scored`` and
        ``infeasible``, over all ranks."""
        infeasible = list(infeasible)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[tuple[int, list[str]]] = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
            torch.distributed.all_gather_object(parts, (scored, infeasible))
            scored = sum(p[0] for p in parts)
            infeasible = [i for p in parts for i in p[1]]
        return scored, sorted(infeasible)

    def _manifest_report(self, split: str) -> ValidationReport | None:
        """The data module's :class:`ValidationReport` of the ``val`` (dev) or ``test``
        manifest (or a named test set's split); None without one (dataloaders passed
        directly)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        report = getattr(dm, "report", None)
        return report("dev" if split == "val" else split) if callable(report) else None

    def _log_coverage(self, split: str, scored: int, infeasible: list[str],
                      report_split: str | None = None) -> None:
        """Log :func:`coverage_line`: a warning when anything was skipped or left out of the
        loss, else info. ``report_split``: the data module's split whose manifest report to
        use (default ``split``; a named test set's own)."""
        report = self._manifest_report(report_split or split)
        line = coverage_line(split, scored, report, infeasible)
        (log.warning if infeasible or (report is not None and report.skipped) else log.info)(
            "%s", line)

    def on_fit_start(self) -> None:
        self._audio_logged = False

    def log_samples(self, batch: dict[str, Any], hyps: list[str]) -> None:
        """Reference vs hypothesis of the batch's first :attr:`logged_samples` utterances as a
        markdown table (``val/samples``), and their audio (``val/audio/<i>``, once per fit;
        read from the datamodule's dev cuts), to every logger with ``add_text``/``add_audio``
        (TensorBoard). Global rank 0 only; not during the sanity check."""
        n = min(self.logged_samples, len(hyps))
        if n == 0 or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in self.loggers
                   if callable(getattr(getattr(lg, "experiment", None), "add_text", None))]
        if not writers:
            return
        step = self.global_step
        rows = ["| # | id | reference | hypothesis |", "|---|---|---|---|"]
        rows += [f"| {i} | {batch['ids'][i]} | {batch['texts'][i]} | {hyps[i]} |" for i in range(n)]
        audio = [] if self._audio_logged else self._sample_audio(batch["ids"][:n])
        for w in writers:
            w.add_text("val/samples", "\n".join(rows), global_step=step)
            for i, (wave, rate) in enumerate(audio):
                if callable(getattr(w, "add_audio", None)):
                    w.add_audio(f"val/audio/{i}", wave, global_step=step, sample_rate=rate)
        self._audio_logged = self._audio_logged or bool(audio)

    def _sample_audio(self, ids: list[str]) -> list[tuple[torch.Tensor, int]]:
        """``(samples (1, L) float32 in [-1, 1], sample rate)`` of dev cuts by id; empty without
        a datamodule that has them (dataloaders passed directly)."""
        cuts = getattr(getattr(self.trainer, "datamodule", None), "cuts", None)
        try:
            by_id = {c.id: c for c in cuts("dev")} if callable(cuts) else {}
        except KeyError:
            return []
        out = []
        for i in ids:
            if i in by_id:
                wave = torch.from_numpy(by_id[i].load_audio()[:1]).float().clamp(-1, 1)
                out.append((wave, int(by_id[i].sampling_rate)))
        return out

    # -- test: one set (``hyps.jsonl``) or several named sets (``hyps.<name>.jsonl``) -----------
    def test_set_names(self, datamodule: Any = None) -> list[str] | None:
        """Names of the test sets, in dataloader order, when the data module names several
        (``SpeechDataModule.test_sets``); without a data module and with several test loaders,
        ``"0"``, ``"1"``, ...; None for one test set (today's single-set layout)."""
        if datamodule is None and self._trainer is not None:
            datamodule = getattr(self.trainer, "datamodule", None)
        sets = getattr(datamodule, "test_sets", None)
        if sets is not None:
            return list(sets)
        loaders = self.trainer.test_dataloaders if self._trainer is not None else None
        if isinstance(loaders, (list, tuple)) and len(loaders) > 1:
            return [str(i) for i in range(len(loaders))]
        return None

    def test_output_files(self, datamodule: Any = None) -> tuple[str, ...]:
        """``hyps.jsonl`` and ``wer.json``; with several test sets ``hyps.<name>.jsonl`` per set
        and one ``wer.json``."""
        names = self.test_set_names(datamodule)
        if names is None:
            return self.test_output_names
        return (*(f"hyps.{name}.jsonl" for name in names), "wer.json")

    def _test_metrics(self, names: list[str] | None) -> None:
        """Add one word / char :class:`ErrorRate` pair per named test set to :attr:`metrics`
        (``test_word:<name>``, ``test_char:<name>``), once."""
        for name in names or ():
            for unit in ("word", "char"):
                if f"test_{unit}:{name}" not in self.metrics:
                    self.metrics[f"test_{unit}:{name}"] = ErrorRate(unit).to(self.device)

    def on_test_start(self) -> None:
        # test loaders passed without a data module naming them are known only now
        if getattr(self.trainer, "datamodule", None) is None and self.test_set_names() is not None:
            self.check_test_outputs(self.trainer)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        tally = self._test_tallies[dataloader_idx]
        before = len(self._eval_infeasible)
        hyps = self._evaluate(batch, "test", self._test_names[dataloader_idx])
        tally["infeasible"] += self._eval_infeasible[before:]
        tally["scored"] += len(batch["ids"])
        tally["rows"] += [{"id": i, "ref": r, "hyp": h}
                          for i, r, h in zip(batch["ids"], batch["texts"], hyps, strict=True)]

    def on_test_epoch_start(self) -> None:
        names = self.test_set_names()
        self._test_metrics(names)
        #: per test set (dataloader order): its name (None: the single set) and its tally
        self._test_names: list[str | None] = list(names) if names is not None else [None]
        self._test_tallies: list[dict[str, Any]] = [
            {"scored": 0, "infeasible": [], "rows": []} for _ in self._test_names]
        self._eval_infeasible, self._eval_scored = [], 0

    def _gather_rows(self, rows: list[dict[str, str]]) -> list[dict[str, str]]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict]] = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        return sorted(rows, key=lambda r: r["id"])

    def _test_set_summary(self, name: str | None, rows: list[dict[str, str]],
                          infeasible: list[str]) -> dict[str, Any]:
        """One set's part of ``wer.json``: ``test_word`` / ``test_char`` counts and rates,
        utterances, manifest, skipped (by reason), left_out_of_loss."""
        suffix = "" if name is None else f":{name}"
        summary: dict[str, Any] = {}
        for unit in ("word", "char"):
            m = self.metrics[f"test_{unit}{suffix}"]
            summary[f"test_{unit}"] = {"errors": int(m.errors), "ref_len": int(m.ref_len),
                                       "rate": float(m.compute())}
        report = self._manifest_report("test" if name is None else named_test_split(name))
        summary["utterances"] = len(rows)
        if report is not None:
            summary["manifest"] = report.manifest
            summary["skipped"] = report.counts_by_reason()
        summary["left_out_of_loss"] = len(infeasible)
        return summary

    def on_test_epoch_end(self) -> None:
        out = self.test_output_dir() if self.trainer.is_global_zero else None
        sets: dict[str | None, dict[str, Any]] = {}
        lines = []
        for name, tally in zip(self._test_names, self._test_tallies, strict=True):
            rows = self._gather_rows(tally["rows"])
            scored, infeasible = self._gather_coverage(tally["scored"], tally["infeasible"])
            summary = self._test_set_summary(name, rows, infeasible)  # collective (metric sync)
            if out is None:
                continue
            split = "test" if name is None else named_test_split(name)
            self._log_coverage("test", scored, infeasible, split)
            hyps = out / ("hyps.jsonl" if name is None else f"hyps.{name}.jsonl")
            atomic_write_jsonl(hyps, rows)
            sets[name] = summary
            wer, cer = summary["test_word"], summary["test_char"]
            # the manifest as the reference when every entry was scored (else it has ids that
            # the hypotheses lack, and the scorer refuses); the hypotheses hold the references too
            ref = summary["manifest"] if summary.get("manifest") and not summary["skipped"] else hyps
            line = (f"test{'' if name is None else ' ' + name}: {len(rows)} utterances  "
                    f"WER {100 * wer['rate']:.2f}% ({wer['errors']}/{wer['ref_len']} words)  "
                    f"CER {100 * cer['rate']:.2f}% ({cer['errors']}/{cer['ref_len']} chars)")
            lines.append((line, hyps, ref))
        if out is None:
            return
        if None in sets:  # the single-set layout of wer.json (unchanged)
            atomic_write_text(out / "wer.json", json.dumps(sets[None], indent=1) + "\n")
            (line, hyps, ref), = lines
            print(f"\n{line}\nhypotheses: {hyps}\nsummary:    {out / 'wer.json'}\n"
                  f"rescore:    speechlab score --ref {ref} --hyp {hyps}")
            return
        for name, summary in sets.items():
            summary["hyps"] = f"hyps.{name}.jsonl"
        atomic_write_text(out / "wer.json", json.dumps({"sets": sets}, indent=1) + "\n")
        print("\n" + "\n".join(f"{line}  hypotheses: {hyps}" for line, hyps, _ in lines)
              + f"\nsummary:    {out / 'wer.json'}\nrescore:    speechlab score --ref "
              f"{lines[0][2]} --hyp {lines[0][1]}  (and so on for each set)")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        return [{"id": i, "hyp": h} for i, h in zip(batch["ids"], self.transcribe(batch), strict=True)]

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """``vocab``: the output characters (``CharVocab.to_dict``)."""
        return {**super().extra_checkpoint_state(), "vocab": self.vocab.to_dict()}
