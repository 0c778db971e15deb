"""The base of every speechlab task: what they all do the same way.

:class:`SpeechLabTask` is a ``LightningModule`` with

- the files ``test`` writes and its refusal to replace earlier ones (:class:`TestOutputs`:
  ``output_dir`` / ``overwrite`` hyper-parameters; checked in :meth:`setup`);
- the optimizer: AdamW with linear warm-up and cosine decay stepped per batch
  (:func:`adamw_warmup_cosine`) over :meth:`~SpeechLabTask.optimizer_parameters` (parameters,
  or param groups whose learning rate is the task's times their ``lr_scale``);
- ``train/grad_norm``: the total gradient norm before clipping (:func:`log_grad_norm`; tasks with
  manual optimization log their own);
- :class:`~speechlab.callbacks.RNGState`, so that resumed runs draw the same random numbers;
- checkpoints: run options (``overwrite``) are not saved, the init args of
  :attr:`~SpeechLabTask.saved_as_none` are saved as None, and what a task needs besides its
  weights and hyper-parameters travels under one key, ``checkpoint["speechlab"]`` (below).

A task subclasses it and adds its model, its loss and its evaluation. :meth:`SpeechLabTask.load`
(or :func:`load`) rebuilds any task from its checkpoint.

The checkpoint convention: ``checkpoint["speechlab"]`` is a dict ``{"format": 1, "class_path":
"speechlab.tasks.ctc.CTCTask", "embedded_files": [...], ...}`` plus the task's own entries
(:meth:`~SpeechLabTask.extra_checkpoint_state`): ``vocab`` (ASR tasks, ``RNNLMTask``), ``grams``
(Gram-CTC), ``lm`` (a fused seq2seq model's LM record), ``lm_config`` (``RNNLMTask``),
``lm_vocab`` and ``topic_vocab`` (``TopicLMTask``). ``embedded_files`` names the init args whose
file the checkpoint holds itself (a fused seq2seq model's ``lm_checkpoint``): rebuilt from the
checkpoint, those init args name the checkpoint. Checkpoints of earlier speechlab versions kept
these entries as top-level keys (``speechlab_vocab``, ``speechlab_grams``, ...):
:func:`checkpoint_state` reads both layouts, and a checkpoint with neither is a
:class:`CheckpointError`.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytorch_lightning as pl
import torch

from speechlab.callbacks import RNGState
from speechlab.errors import InputError

log = logging.getLogger("speechlab.tasks")

#: the checkpoint key of a task's own state, and the version of its layout
CHECKPOINT_KEY = "speechlab"
CHECKPOINT_FORMAT = 1

#: the top-level keys of checkpoints written before :data:`CHECKPOINT_KEY` -> their entry there
LEGACY_KEYS: dict[str, str] = {
    "speechlab_vocab": "vocab",
    "speechlab_grams": "grams",
    "speechlab_lm": "lm",
    "speechlab_lm_config": "lm_config",
    "speechlab_lm_vocab": "lm_vocab",
    "speechlab_topic_vocab": "topic_vocab",
    "speechlab_embedded_files": "embedded_files",
}


# ---------------------------------------------------------------- test outputs
# The files ``speechlab test`` writes, and its refusal to replace an earlier run's.
#
# Tasks that write results at the end of ``test`` (the ASR tasks: ``hyps.jsonl`` and
# ``wer.json``, or ``hyps.<name>.jsonl`` per test set and one ``wer.json`` when the data module
# names several test sets; the LM tasks: ``results.json``) mix in :class:`TestOutputs`. They write into
# ``model.init_args.output_dir`` (default: the logger's folder, or ``trainer.default_root_dir``
# without a logger), atomically (:mod:`speechlab.io`), and refuse to start when one of those files
# exists already, unless ``model.init_args.overwrite`` is true: an
# :class:`~speechlab.errors.InputError` naming the file and the way out, before the model decodes
# anything. ``SpeechLabCLI`` checks before the trainer starts (before the data module reads its
# data); the task checks again in ``setup("test")`` (the Python API, and output folders that only
# the logger knows). ``overwrite`` is a run option, not part of the model: checkpoints do not
# save it.

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


T = TypeVar("T", bound="SpeechLabTask")


class CheckpointError(InputError):
    """A checkpoint that speechlab cannot read; the message names the file and the reason (the
    ``speechlab`` command reports it in one line)."""


def checkpoint_state(checkpoint: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """The task state of a checkpoint (the ``checkpoint["speechlab"]`` dict), also from the
    layout of earlier versions (top-level :data:`LEGACY_KEYS`, translated; ``checkpoint`` is
    left as it is).

    Raises:
        CheckpointError: naming ``where``, when ``checkpoint`` has neither layout or a format
            this version does not read.
    """
    state = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if isinstance(state, dict):
        fmt = state.get("format")
        if fmt != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{where}: checkpoint format {fmt!r} (checkpoint['{CHECKPOINT_KEY}']['format']); "
                f"this speechlab version reads format {CHECKPOINT_FORMAT}: written by a newer or "
                "unknown speechlab version")
        return state
    legacy = {new: checkpoint[old] for old, new in LEGACY_KEYS.items()
              if isinstance(checkpoint, dict) and old in checkpoint}
    if not legacy:
        raise CheckpointError(
            f"{where}: no speechlab task state (checkpoint['{CHECKPOINT_KEY}'], or the "
            "speechlab_vocab/... keys of earlier versions): written by an older or unknown "
            "speechlab version, or not by a speechlab task")
    return {"format": CHECKPOINT_FORMAT, "embedded_files": [], **legacy}


def class_path(cls: type) -> str:
    """``"module.Class"``: what :func:`importlib.import_module` + ``getattr`` find ``cls`` by."""
    return f"{cls.__module__}.{cls.__qualname__}"


def embedded_files(checkpoint: dict[str, Any]) -> list[str]:
    """The init args whose file ``checkpoint`` holds itself (either layout); ``[]`` for a
    checkpoint without speechlab state (any other LightningModule's)."""
    try:
        names = checkpoint_state(checkpoint).get("embedded_files")
    except CheckpointError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.05) -> float:
    """Learning-rate multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine decay to
    ``min_ratio`` at ``total_steps`` (constant after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def log_grad_norm(module: pl.LightningModule, parameters: Any = None,
                  name: str = "train/grad_norm") -> torch.Tensor:
    """Log (and return) the total L2 norm of the gradients of ``parameters`` (default all of
    ``module``'s). Called from ``on_before_optimizer_step``, which Lightning runs before it clips
    gradients, it is the norm before clipping; manual-optimization tasks call it before their
    own ``clip_gradients``."""
    params = module.parameters() if parameters is None else parameters
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    module.log(name, norm.detach().float(), on_step=True, on_epoch=False)
    return norm


#: what :meth:`SpeechLabTask.optimizer_parameters` returns: parameters (one group), or param
#: groups: dicts ``{"params": [...], "lr_scale": s}`` (``lr_scale`` optional, default 1)
OptimizerParameters = list[torch.nn.Parameter] | list[dict[str, Any]]


def param_groups(parameters: OptimizerParameters, lr: float) -> OptimizerParameters:
    """``parameters`` as the optimizer takes them: a list of parameters as it is; param groups
    with ``lr_scale`` get the peak learning rate ``lr * lr_scale`` (the schedule multiplies every
    group's by the same factor, so their ratio stays ``lr_scale`` at every step)."""
    if not parameters or not isinstance(parameters[0], dict):
        return parameters
    return [{**{k: v for k, v in group.items() if k != "lr_scale"},
             "lr": lr * group.get("lr_scale", 1.0)} for group in parameters]


def adamw_warmup_cosine(module: pl.LightningModule, parameters: OptimizerParameters) -> dict[str, Any]:
    """The optimizer set-up every speechlab task uses: AdamW (``hparams.lr``, times a param
    group's ``lr_scale``; ``hparams.weight_decay``) with :func:`warmup_cosine` stepped per batch
    over ``hparams.total_steps`` (default ``trainer.max_steps``; constant after warm-up if neither)."""
    hp = module.hparams
    opt = torch.optim.AdamW(param_groups(list(parameters), hp.lr), lr=hp.lr,
                            weight_decay=hp.weight_decay)
    max_steps = module.trainer.max_steps
    total = hp.get("total_steps") or (max_steps if max_steps > 0 else None)
    if total is None:
        log.warning("no total_steps and trainer.max_steps unset: learning rate stays constant "
                    "after warm-up")
        total = 10**12
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, hp.warmup_steps, total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SpeechLabTask(TestOutputs, pl.LightningModule):
    """Base of every speechlab task (not used directly in recipes); see the module docstring.

    A subclass calls ``save_hyperparameters()`` with at least ``lr``, ``weight_decay``,
    ``warmup_steps``, ``total_steps``, ``output_dir`` and ``overwrite`` among its init args, and
    calls ``super().setup(stage)`` when it overrides :meth:`setup`.
    """

    #: init args that checkpoints save as None: training-start options (the run started from
    #: them; a model rebuilt from its checkpoint must not read them again) and files whose
    #: content the checkpoint holds itself
    saved_as_none: ClassVar[tuple[str, ...]] = ()

    # -- optimization -----------------------------------------------------------------------
    def optimizer_parameters(self) -> OptimizerParameters:
        """Parameters of the AdamW + warm-up/cosine optimizer (all of them by default; a task
        with a second optimizer, e.g. the robust encoder's critic, leaves its own out), or param
        groups with their own ``lr_scale`` (:func:`param_groups`; the TCNLM's topic-word
        parameters)."""
        return list(self.parameters())

    def configure_optimizers(self) -> Any:
        return adamw_warmup_cosine(self, self.optimizer_parameters())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.automatic_optimization:  # manual optimization logs its own (before clipping)
            log_grad_norm(self)

    def configure_callbacks(self) -> list[pl.Callback]:
        """:class:`~speechlab.callbacks.RNGState`: resumed runs draw the same random numbers
        (dropout, SpecAugment) as uninterrupted ones."""
        return [RNGState()]

    # -- set-up and checkpoints -------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """``test``: refuse to replace an earlier run's results (:class:`TestOutputs`)."""
        if self._trainer is not None:
            self.setup_test_outputs(stage)

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """This task's entries of ``checkpoint["speechlab"]`` (besides ``format``, ``class_path``
        and ``embedded_files``): plain values, lists, dicts and tensors, so that a weights-only
        ``torch.load`` reads them. A subclass adds to its parent's."""
        return {}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`extra_checkpoint_state` saved (``state``: the checkpoint's
        ``checkpoint["speechlab"]``, translated from an earlier layout if need be). Runs before
        the weights are loaded, so a task can build the modules its weights need here."""

    def embedded_init_args(self) -> list[str]:
        """Init args naming a file whose content the checkpoint holds itself (saved as the
        checkpoint's ``embedded_files``); rebuilt from the checkpoint they name the checkpoint."""
        return []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.strip_run_options(checkpoint)
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):
            hp.update((key, None) for key in self.saved_as_none if key in hp)
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT, "class_path": class_path(type(self)),
            "embedded_files": self.embedded_init_args(), **self.extra_checkpoint_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Translate an earlier layout's top-level keys into ``checkpoint["speechlab"]`` (in
        place: the one place where that happens), then :meth:`load_extra_checkpoint_state`."""
        where = (self._trainer.ckpt_path if self._trainer is not None else None) or "checkpoint"
        state = checkpoint_state(checkpoint, str(where))
        for key in LEGACY_KEYS:
            checkpoint.pop(key, None)
        checkpoint[CHECKPOINT_KEY] = state
        self.load_extra_checkpoint_state(state)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls: type[T], path: str | os.PathLike, map_location: Any = "cpu",
             **overrides: Any) -> T:
        """The task saved in the checkpoint ``path``, with its weights and state (vocabulary,
        GramSet, embedded LM, ...), in eval mode, on ``map_location``.

        The class is the one LightningCLI recorded (the hyper-parameters' ``_class_path``), else
        the one the task recorded (``checkpoint["speechlab"]["class_path"]``), else ``cls``; it
        must be ``cls`` or a subclass (``CTCTask.load`` returns a ``RobustASRTask`` for a robust
        checkpoint, ``SpeechLabTask.load`` any task). ``overrides`` replace saved init args
        (``output_dir=...``, ``test_lm_checkpoint=...``); init args naming a file the checkpoint
        embeds (``embedded_files``) name ``path``, so that file need not exist any more.

        Raises:
            CheckpointError: one line naming ``path``: no such file, not a checkpoint, no
                speechlab state (:func:`checkpoint_state`), a task of another class, or weights
                that do not fit the task its hyper-parameters build.
        """
        path = Path(path)
        data, checkpoint = _read_checkpoint(path)
        task_cls = _task_class(checkpoint, checkpoint_state(checkpoint, str(path)), cls, path)
        hp = checkpoint.get("hyper_parameters") or {}
        for name in embedded_files(checkpoint):
            if hp.get(name) is not None:
                overrides.setdefault(name, str(path.resolve()))
        try:
            task = task_cls.load_from_checkpoint(io.BytesIO(data), map_location=map_location,
                                                 weights_only=False, **overrides)
        except RuntimeError as e:  # load_state_dict: missing/unexpected keys, other shapes
            if not str(e).startswith("Error(s) in loading state_dict"):
                raise
            raise CheckpointError(f"{path}: its weights do not fit the {task_cls.__name__} its "
                                  f"hyper-parameters build ({_first_line(e)})") from None
        return task.eval()


def load(path: str | os.PathLike, map_location: Any = "cpu", **overrides: Any) -> SpeechLabTask:
    """Any speechlab task from its checkpoint: :meth:`SpeechLabTask.load`."""
    return SpeechLabTask.load(path, map_location, **overrides)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_checkpoint(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the Lightning checkpoint ``path`` and the dict they hold (on the CPU).

    Raises:
        CheckpointError: no such file, not a torch file, or not a Lightning checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint" + (" (a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:  # our own checkpoints: hyper-parameters may hold config dataclasses (not weights-only)
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise CheckpointError(f"{path}: not a checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return data, checkpoint


def _task_class(checkpoint: dict[str, Any], state: dict[str, Any], fallback: type[T],
                path: Path) -> type[T]:
    """The task class of ``checkpoint`` (see :meth:`SpeechLabTask.load`)."""
    hp = checkpoint.get("hyper_parameters")
    name = (hp.get("_class_path") if isinstance(hp, dict) else None) or state.get("class_path")
    if not name:
        if fallback is SpeechLabTask:
            raise CheckpointError(f"{path}: no task class recorded (a model built in Python by an "
                                  "earlier speechlab version): load it with its class, e.g. "
                                  "CTCTask.load(path)")
        return fallback
    module, _, attr = str(name).rpartition(".")
    try:
        task_cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path}: its task class {name} cannot be imported "
                              f"({type(e).__name__}: {_first_line(e)})") from None
    if not (isinstance(task_cls, type) and issubclass(task_cls, fallback)):
        raise CheckpointError(f"{path}: a {name} checkpoint, not a {fallback.__name__} "
                              "(or a subclass of it)")
    return task_cls
