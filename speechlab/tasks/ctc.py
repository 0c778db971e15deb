"""CTC acoustic model: :class:`~speechlab.nn.encoders.SpeechEncoder` + linear head, trained
with ``torch.nn.functional.ctc_loss``, decoded greedily."""

from __future__ import annotations

from typing import Any

import torch

from speechlab.data.features import SpecAugment
from speechlab.data.text import DEFAULT_CHARS
from speechlab.functional.ctc import ctc_greedy_decode, ctc_loss_from_logits
from speechlab.nn.encoders import SpeechEncoder, SpeechEncoderConfig
from speechlab.tasks.asr import ASRTask


class CTCTask(ASRTask):
    """CTC baseline.

    Args:
        vocab: output characters (blank = 0 implicit).
        encoder: encoder hyper-parameters (shared with Gram-CTC, robust and seq2seq tasks).
        spec_augment: apply SpecAugment to training batches.
        lr, weight_decay, warmup_steps, total_steps, output_dir, overwrite: see :class:`ASRTask`.
    """

    def __init__(self, vocab: str = "".join(DEFAULT_CHARS),
                 encoder: SpeechEncoderConfig | None = None, spec_augment: bool = True,
                 lr: float = 2e-3, weight_decay: float = 1e-2, warmup_steps: int = 200,
                 total_steps: int | None = None, output_dir: str | None = None,
                 overwrite: bool = False) -> None:
        super().__init__(vocab, lr, weight_decay, warmup_steps, total_steps, output_dir, overwrite)
        self.save_hyperparameters()
        self.encoder = SpeechEncoder(encoder or SpeechEncoderConfig())
        self.head = torch.nn.Linear(self.encoder.output_dim, len(self.vocab))
        self.spec_augment = SpecAugment() if spec_augment else None

    @property
    def frame_rate(self) -> float:
        return self.encoder.frame_rate

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SpecAugment (training only) + encoder: ``features (B, T, F)`` →
        ``(embeddings (B, T', D), lengths (B,))``."""
        if self.spec_augment is not None and self.training:
            features = self.spec_augment(features)
        return self.encoder(features, lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features (B, T, F)`` → ``(log_probs (B, T', V), lengths (B,))``."""
        enc, lengths = self.encode(features, lengths)
        return self.head(enc).float().log_softmax(dim=-1), lengths

    def ctc_loss(self, encoded: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                 target_lens: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss of the head over ``encoded (B, T', D)`` for ``targets (B, S)``."""
        return ctc_loss_from_logits(self.head(encoded), lengths, targets, target_lens,
                                    self.vocab.blank)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        enc, lengths = self.encode(batch["features"], batch["feature_lens"])
        self.note_infeasible(batch, lengths)  # counted, warned; zero_infinity skips them
        return self.ctc_loss(enc, lengths, batch["targets"], batch["target_lens"])

    def transcribe(self, batch: dict[str, Any]) -> list[str]:
        log_probs, lengths = self(batch["features"], batch["feature_lens"])
        return [self.vocab.decode(ids) for ids in ctc_greedy_decode(log_probs, lengths, self.vocab.blank)]
