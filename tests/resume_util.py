"""Helpers that the resume tests load into ``speechlab fit`` subprocesses (by class path)."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl


class HangAtStep(pl.Callback):
    """At the end of training step ``step`` touch ``flag`` and sleep until killed: the test then
    SIGKILLs a run whose progress is known exactly (no race with a fast-running process). Once
    ``flag`` exists (the resumed run) it does nothing."""

    def __init__(self, step: int, flag: str) -> None:
        self.step = step
        self.flag = Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.flag.exists():
            self.flag.touch()
            while True:
                time.sleep(0.05)
