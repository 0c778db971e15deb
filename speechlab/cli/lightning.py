"""LightningCLI subclass used by ``speechlab fit|validate|test|predict``, and the progress bar it
uses in non-interactive runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback, ProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from speechlab.errors import InputError
from speechlab.progress import default_interval, is_terminal, rate
from speechlab.tasks.base import embedded_files

#: ``--ckpt_path`` values that Lightning resolves itself (not files)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class LogProgressBar(ProgressBar):
    """Lightning progress bar for logs that are not terminals (CI, SLURM, ``nohup``, ``| tee``),
    where every redraw of a TQDM bar becomes a line: one line at most every ``interval`` seconds
    of training (step, epoch, steps/s and the progress-bar metrics), one after each validation
    with its metrics, one at the end of training. Evaluation runs print nothing of their own
    (Lightning prints the results table).

    Args:
        interval: seconds between two training lines (default ``$SPEECHLAB_PROGRESS_INTERVAL``
            or 30).
    """

    def __init__(self, interval: float | None = None) -> None:
        super().__init__()
        self.interval = default_interval() if interval is None else interval
        self._enabled = True
        self._start = self._last = 0.0
        self._start_step = 0
        self.lines = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, *parts: str) -> None:
        if self._enabled:
            print("  ".join(p for p in parts if p), flush=True)
            self.lines += 1

    def _metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        items = []
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key == "v_num":
                continue
            items.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return "  ".join(items)

    @staticmethod
    def _position(trainer: pl.Trainer) -> str:
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        return f"step {trainer.global_step}{total}  epoch {trainer.current_epoch}"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        steps = trainer.global_step - self._start_step
        self._print(self._position(trainer), rate(steps, now - self._start, "steps"),
                    self._metrics(trainer, pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._print(f"validation at {self._position(trainer)}", self._metrics(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.monotonic() - self._start
        steps = trainer.global_step - self._start_step
        self._print(f"training ended at {self._position(trainer)}", f"{elapsed:.1f} s",
                    rate(steps, elapsed, "steps"), self._metrics(trainer, pl_module))


class RunConfigCallback(SaveConfigCallback):
    """Writes the run's resolved configuration: for ``fit`` where Lightning does (``config.yaml``
    in the trainer's log dir); for ``test`` / ``validate`` / ``predict`` of a task with an
    ``output_dir``, beside its outputs (``hyps.jsonl``, ``wer.json``) as ``config.<stage>.yaml``,
    so evaluating a checkpoint leaves no ``config.yaml`` in the working directory, does not
    replace the training run's (a recipe's ``output_dir`` is often its log dir), and the outputs
    keep the settings that made them."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        hparams = getattr(pl_module, "hparams", {})
        out = hparams.get("output_dir") if stage != "fit" and isinstance(hparams, dict) else None
        if not out or self.already_saved:
            super().setup(trainer, pl_module, stage)
            return
        if trainer.is_global_zero:
            Path(out).mkdir(parents=True, exist_ok=True)
            name, fn = Path(self.config_filename), getattr(stage, "value", stage)  # TrainerFn
            self.parser.save(self.config, str(Path(out) / f"{name.stem}.{fn}{name.suffix}"),
                             skip_none=False, overwrite=True, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class SpeechLabCLI(LightningCLI):
    """Lightning's CLI over any task and data module: recipes name them with
    ``model.class_path`` / ``data.class_path`` (subclass mode).

    When stdout is not a terminal, the progress bar enabled and the recipe names no progress bar
    callback, the trainer gets a :class:`LogProgressBar` instead of Lightning's TQDM bar (a
    recipe or ``--trainer.callbacks+=pytorch_lightning.callbacks.TQDMProgressBar`` keeps TQDM).

    ``--ckpt_path FILE`` (any subcommand): the checkpoint's model and data module (class paths
    and init args, saved by the tasks' and data modules' ``save_hyperparameters``) are read
    into the configuration, so ``speechlab test --ckpt_path FILE`` needs no recipe. Precedence,
    lowest first: defaults, ``--config`` recipes, the checkpoint, then the ``--model.*`` /
    ``--data.*`` arguments of the command line (``--model.init_args.output_dir``, decoding
    options, another test manifest): what the command line says wins. (Lightning's own
    ``LightningCLI`` lets the checkpoint override the command line, and ignores the data module's
    hyper-parameters.) Init args naming a file whose content the checkpoint holds itself (its
    ``checkpoint["speechlab"]["embedded_files"]``, e.g. a fused seq2seq model's ``lm_checkpoint``)
    are set to the checkpoint, so a model stays testable when the files it was trained from are
    gone. A ``--ckpt_path`` that is not a file (and not ``last``/``best``/``hpc``/``registry``) is
    an :class:`~speechlab.errors.InputError` naming it.

    ``test`` refuses to start, before the trainer runs, when the task would replace files an
    earlier ``test`` wrote (``--model.init_args.overwrite true`` allows it; see
    :class:`speechlab.tasks.base.TestOutputs`).

    One run folder: the paths a recipe leaves unset (null) are derived from
    ``trainer.default_root_dir`` after parsing (:func:`derive_run_paths`; ``--print_config``
    shows them unset, the run's saved ``config.yaml`` derived), so a variant renames its run
    with that one line.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", RunConfigCallback)
        self._ckpt_config_done = False
        super().__init__(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, args=args, **kwargs)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # validated after derive_run_paths: a logger's save_dir is required, and derived
        if isinstance(args, (list, tuple)) or args is None:
            argv = list(sys.argv[1:] if args is None else args)
            with_ckpt = with_checkpoint_config(argv)
            self._ckpt_config_done = with_ckpt is not argv
            config = parser.parse_args(with_ckpt, _skip_validation=True)
        else:
            config = parser.parse_object(args, _skip_validation=True)
        derive_run_paths(config[config.subcommand] if config.get("subcommand") else config)
        try:
            parser.validate(config)
        except (TypeError, KeyError) as e:
            parser.error(str(e), e)
        self.config = config

    def _parse_ckpt_path(self) -> None:
        if not self._ckpt_config_done:  # e.g. ckpt_path set in a recipe: Lightning's way
            super()._parse_ckpt_path()

    def before_test(self) -> None:
        check = getattr(self.model, "check_test_outputs", None)
        if callable(check):
            check(self.trainer, early=True, datamodule=self.datamodule)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> pl.Trainer:
        configured = list(callbacks)
        for value in (config.get("callbacks"), self.trainer_defaults.get("callbacks")):
            configured += value if isinstance(value, list) else [value] if value else []
        if (config.get("enable_progress_bar") is not False and not is_terminal(sys.stdout)
                and not any(isinstance(c, ProgressBar) for c in configured)):
            callbacks = [*callbacks, LogProgressBar()]
        return super()._instantiate_trainer(config, callbacks)


def derive_run_paths(config: Any) -> None:
    """Fill the run paths left unset (null) in a parsed configuration (a jsonargparse
    ``Namespace``) from ``trainer.default_root_dir`` (nothing when that is unset): the
    ``save_dir`` of the logger(s), the ``dirpath`` of every callback that has one
    (``ModelCheckpoint``, :class:`~speechlab.callbacks.LatestCheckpoint`):
    ``ROOT/checkpoints``, and the task's ``output_dir`` (where ``test`` writes). A value the
    recipe or the command line gives is kept. (A ``ModelCheckpoint`` without ``dirpath`` thus
    writes to ``ROOT/checkpoints``, not to Lightning's ``<log_dir>/checkpoints``.)"""
    root = config.get("trainer.default_root_dir")
    if not root:
        return

    def fill(values: Any, key: str, value: str) -> None:
        for item in values if isinstance(values, list) else [values]:
            init_args = item.get("init_args") if hasattr(item, "get") else None
            if hasattr(init_args, "get") and key in init_args and init_args.get(key) is None:
                init_args[key] = value

    fill(config.get("trainer.logger"), "save_dir", str(root))
    fill(config.get("trainer.callbacks"), "dirpath", str(Path(root) / "checkpoints"))
    fill(config.get("model"), "output_dir", str(root))


def _option_value(argv: list[str], name: str) -> tuple[int, str] | None:
    """(index of the value, value) of the last ``name VALUE`` / ``name=VALUE`` in ``argv``."""
    found = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            found = (i + 1, argv[i + 1])
        elif arg.startswith(name + "="):
            found = (i, arg.split("=", 1)[1])
    return found


def _subclass_value(hparams: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of hyper-parameters saved through LightningCLI (which
    records the class under ``_class_path``), else None."""
    if not isinstance(hparams, dict) or "_class_path" not in hparams:
        return None
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return {"class_path": hparams["_class_path"], "init_args": init_args}


def with_checkpoint_config(argv: list[str]) -> list[str]:
    """``argv`` of a Lightning subcommand with the model and data module of its ``--ckpt_path``
    checkpoint inserted as ``--model=…`` / ``--data=…`` after the last ``--config`` (so that
    the recipe < the checkpoint < the rest of the command line); ``argv`` itself when there is
    no checkpoint file or it holds no class paths.

    Raises:
        InputError: ``--ckpt_path`` names no file, or a file that is not a checkpoint.
    """
    if not argv or argv[0].startswith("-"):
        return argv
    ckpt = _option_value(argv, "--ckpt_path")
    if ckpt is None or ckpt[1] in SPECIAL_CKPT_PATHS or "://" in ckpt[1] or ckpt[1] in ("", "null"):
        return argv
    path = Path(ckpt[1])
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint" + (" (a folder)" if path.is_dir() else ""))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise InputError(f"{path}: not a checkpoint ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    if not isinstance(checkpoint, dict):
        raise InputError(f"{path}: not a checkpoint (a {type(checkpoint).__name__})")
    inserted = []
    for key, hp_key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        value = _subclass_value(checkpoint.get(hp_key))
        if value is not None and key == "model":  # files the checkpoint holds: from the checkpoint
            for name in embedded_files(checkpoint):
                if value["init_args"].get(name) is not None:
                    value["init_args"][name] = str(path.resolve())
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        except yaml.YAMLError:  # objects, not a LightningCLI dump: Lightning's way
            value = None
        if value is not None:
            inserted.append(f"--{key}={text}")
    if not inserted:
        return argv
    config = [i for i, a in enumerate(argv) if a in ("-c", "--config") or a.startswith("--config=")]
    at = (config[-1] + (1 if "=" in argv[config[-1]] else 2)) if config else 1
    return [*argv[:at], *inserted, *argv[at:]]
