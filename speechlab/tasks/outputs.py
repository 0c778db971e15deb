"""The files ``speechlab test`` writes, and its refusal to replace an earlier run's.

Tasks that write results at the end of ``test`` (the ASR tasks: ``hyps.jsonl`` and
``wer.json``, or ``hyps.<name>.jsonl`` per test set and one ``wer.json`` when the data module
names several test sets; the LM tasks: ``results.json``) mix in :class:`TestOutputs`. They write into
``model.init_args.output_dir`` (default: the logger's folder, or ``trainer.default_root_dir``
without a logger), atomically (:mod:`speechlab.io`), and refuse to start when one of those files
exists already, unless ``model.init_args.overwrite`` is true: an
:class:`~speechlab.errors.InputError` naming the file and the way out, before the model decodes
anything. ``SpeechLabCLI`` checks before the trainer starts (before the data module reads its
data); the task checks again in ``setup("test")`` (the Python API, and output folders that only
the logger knows). ``overwrite`` is a run option, not part of the model: checkpoints do not
save it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from speechlab.errors import InputError

#: the task option that lets ``speechlab test`` replace earlier results
OVERWRITE_OPTION = "--model.init_args.overwrite true"


def refuse_existing(existing: list[str]) -> None:
    """:class:`InputError` naming the first of the ``existing`` output files (one line), if any."""
    if existing:
        raise InputError(f"{existing[0]}: exists (an earlier speechlab test wrote it); pass "
                         f"{OVERWRITE_OPTION} to replace it, or give another "
                         "--model.init_args.output_dir")


class TestOutputs:
    """Mixin of a ``LightningModule`` whose ``test`` writes :attr:`test_output_names` into
    :meth:`test_output_dir`; the module has ``output_dir`` and ``overwrite`` hyper-parameters."""

    __test__ = False  # not a pytest test class

    #: the file names ``test`` writes into the output folder
    test_output_names: tuple[str, ...] = ()

    def test_output_dir(self, trainer: pl.Trainer | None = None) -> Path:
        """``output_dir``, else the logger's folder, else ``trainer.default_root_dir``."""
        if self.hparams.get("output_dir"):  # type: ignore[attr-defined]
            return Path(self.hparams.output_dir)  # type: ignore[attr-defined]
        trainer = trainer or self.trainer  # type: ignore[attr-defined]
        if trainer.log_dir is not None:
            return Path(trainer.log_dir)
        return Path(trainer.default_root_dir)

    def test_output_files(self, datamodule: Any = None) -> tuple[str, ...]:
        """The names of the files ``test`` will write with ``datamodule`` (default: the
        trainer's); :attr:`test_output_names` unless a task's depend on the data (the ASR
        tasks: one hypotheses file per test set)."""
        return self.test_output_names

    def test_output_paths(self, trainer: pl.Trainer | None = None,
                          datamodule: Any = None) -> list[Path]:
        out = self.test_output_dir(trainer)
        return [out / name for name in self.test_output_files(datamodule)]

    def check_test_outputs(self, trainer: pl.Trainer, early: bool = False,
                           datamodule: Any = None) -> None:
        """Refuse (:class:`InputError`) when a file ``test`` would write exists and
        ``overwrite`` is not set. ``early`` (before ``trainer.test``, no process group yet):
        each process looks itself, and an output folder that only a logger can name (no
        ``output_dir``) is left to the check in ``setup``; otherwise global rank 0 looks and
        every rank gets its answer (all raise together). ``datamodule``: the one ``test`` will
        run on when the trainer does not hold it yet (the CLI's check)."""
        if self.hparams.get("overwrite"):  # type: ignore[attr-defined]
            return
        if early and not (self.hparams.get("output_dir") or not trainer.loggers):  # type: ignore[attr-defined]
            return
        existing = [str(p) for p in self.test_output_paths(trainer, datamodule) if p.exists()]
        refuse_existing(existing if early else trainer.strategy.broadcast(existing, src=0))

    def setup_test_outputs(self, stage: str) -> None:
        """Call from ``setup``: the check for ``stage == "test"``."""
        if stage == "test":
            self.check_test_outputs(self.trainer)  # type: ignore[attr-defined]

    @staticmethod
    def strip_run_options(checkpoint: dict[str, Any]) -> None:
        """Call from ``on_save_checkpoint``: ``overwrite`` is not saved (a checkpoint tested later
        must not replace results because the training run allowed it)."""
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            hp.pop("overwrite", None)
