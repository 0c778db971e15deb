"""LightningModules, one per training task."""

from speechlab.tasks.asr import ASRTask
from speechlab.tasks.ctc import CTCTask

__all__ = ["ASRTask", "CTCTask"]
