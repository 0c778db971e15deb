"""LightningCLI subclass used by ``speechlab fit|validate|test|predict``, and the progress bar it
uses in non-interactive runs."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ProgressBar
from pytorch_lightning.cli import LightningCLI

from speechlab.progress import default_interval, is_terminal, rate


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


class SpeechLabCLI(LightningCLI):
    """Lightning's CLI over any task and data module: recipes name them with
    ``model.class_path`` / ``data.class_path`` (subclass mode).

    When stdout is not a terminal, the progress bar enabled and the recipe names no progress bar
    callback, the trainer gets a :class:`LogProgressBar` instead of Lightning's TQDM bar (a
    recipe or ``--trainer.callbacks+=pytorch_lightning.callbacks.TQDMProgressBar`` keeps TQDM).
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, args=args, **kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> pl.Trainer:
        configured = list(callbacks)
        for value in (config.get("callbacks"), self.trainer_defaults.get("callbacks")):
            configured += value if isinstance(value, list) else [value] if value else []
        if (config.get("enable_progress_bar") is not False and not is_terminal(sys.stdout)
                and not any(isinstance(c, ProgressBar) for c in configured)):
            callbacks = [*callbacks, LogProgressBar()]
        return super()._instantiate_trainer(config, callbacks)
