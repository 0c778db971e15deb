"""LightningModules, one per training task, over one base task
(:class:`~speechlab.tasks.base.SpeechLabTask`); :func:`load` rebuilds any of them from its
checkpoint."""

from speechlab.tasks.asr import ASRTask
from speechlab.tasks.base import SpeechLabTask, load
from speechlab.tasks.ctc import CTCTask

__all__ = ["ASRTask", "CTCTask", "SpeechLabTask", "load"]
