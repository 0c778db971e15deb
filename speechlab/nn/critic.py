"""The critic of the GAN-robust encoder: a small conv (+ optional GRU) network over an embedding
sequence, mean-pooled over the valid frames to one score per utterance.

No batch normalisation: the WGAN-GP penalty is per utterance, and a batch statistic would
couple the utterances of a batch. Padded frames are zeroed after every layer and excluded from
the pooling, so an utterance scores the same alone and in a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechlab.functional.adversarial import frame_mask
from speechlab.nn.recurrence import run_recurrence


@dataclass
class CriticConfig:
    """Critic hyper-parameters.

    Attributes:
        channels: width of the conv layers (and of the GRU, when used).
        kernel_size: odd temporal kernel of the 1-D convs (``same`` padding).
        num_layers: conv layers (each Conv1d + LeakyReLU(0.2)).
        gru: add a bidirectional GRU after the convs. Its double backward (needed by the
            gradient penalty) has no cuDNN kernel, so it runs with cuDNN disabled on GPU.
    """

    channels: int = 128
    kernel_size: int = 5
    num_layers: int = 2
    gru: bool = False


class SequenceCritic(nn.Module):
    """``forward(x (B, T, D), lengths (B,)) -> scores (B,)`` (unbounded, WGAN-style).

    Args:
        input_dim: ``D``, the embedding size (the encoder's ``output_dim``).
        config: see :class:`CriticConfig`.
    """

    def __init__(self, input_dim: int, config: CriticConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CriticConfig()
        if config.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {config.kernel_size}")
        dims = [input_dim] + [config.channels] * config.num_layers
        self.convs = nn.ModuleList(
            nn.Conv1d(i, o, config.kernel_size, padding=config.kernel_size // 2)
            for i, o in zip(dims[:-1], dims[1:], strict=True))
        self.gru = (nn.GRU(dims[-1], config.channels // 2, batch_first=True, bidirectional=True)
                    if config.gru else None)
        out_dim = 2 * (config.channels // 2) if config.gru else dims[-1]
        self.out = nn.Linear(out_dim, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(x.device).clamp(min=1, max=x.shape[1])
        mask = frame_mask(lengths, x.shape[1])
        m = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        y = x.transpose(1, 2) * m  # (B, D, T)
        for conv in self.convs:
            y = nn.functional.leaky_relu(conv(y), 0.2) * m
        y = y.transpose(1, 2)  # (B, T, C)
        if self.gru is not None:
            with torch.backends.cudnn.flags(enabled=False):
                packed = pack_padded_sequence(y, lengths.cpu(), batch_first=True,
                                              enforce_sorted=False)
                y, _ = run_recurrence(self.gru, packed)
                y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        pooled = (y * m.transpose(1, 2)).sum(dim=1) / lengths[:, None].to(y.dtype)
        return self.out(pooled).squeeze(-1)
