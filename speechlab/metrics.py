"""Error-rate metric for training loops: sums edit counts (never averages rates), reduced
across DDP ranks by torchmetrics. The counting itself is :func:`speechlab.score.edit_counts`."""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics import Metric

from speechlab.score import edit_counts


class ErrorRate(Metric):
    """Corpus word or character error rate: ``sum(errors) / sum(reference length)``, both sides
    normalized with :func:`~speechlab.data.text.normalize_text` as ``speechlab score`` does (a
    hypothesis like ``"what' is"`` counts as ``"what is"``), so a task's test WER equals the
    scorer's on its ``hyps.jsonl``."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, unit: Literal["word", "char"] = "word") -> None:
        super().__init__()
        self.unit = unit
        self.add_state("errors", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("ref_len", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, hyps: list[str], refs: list[str]) -> None:
        counts = edit_counts(refs, hyps, unit=self.unit, normalize=True)
        self.errors += counts.errors
        self.ref_len += counts.ref_len

    def compute(self) -> torch.Tensor:
        return self.errors.float() / self.ref_len.clamp(min=1).float()
