"""The shared speech encoder family: convolutional subsampling + bidirectional RNN.

CTC, Gram-CTC, the robust encoder and the attention seq2seq model all use
:class:`SpeechEncoder`, configured by :class:`SpeechEncoderConfig`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechlab.nn.recurrence import run_recurrence


@dataclass
class SpeechEncoderConfig:
    """Encoder hyper-parameters.

    Attributes:
        input_dim: feature dimension (80 log-mel bins).
        stride: time subsampling factor of the conv front end: 1, 2, 4 or 8 (each factor of 2
            is one 3×3 stride-2 conv2d + ReLU).
        conv_channels: channels of the conv front end.
        rnn_type: ``"lstm"`` or ``"gru"``.
        hidden_size: RNN units per direction.
        num_layers: stacked RNN layers.
        bidirectional: bidirectional RNN (output dim doubles).
        dropout: dropout between RNN layers and on the output.
    """

    input_dim: int = 80
    stride: int = 4
    conv_channels: int = 32
    rnn_type: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.1


def _halve(lengths: torch.Tensor) -> torch.Tensor:
    return torch.div(lengths + 1, 2, rounding_mode="floor")


class ConvSubsampling(nn.Module):
    """``log2(stride)`` 3×3 stride-2 conv2d layers over (time, frequency), then a linear
    projection. ``(B, T, F) → (B, ceil(T / stride), out_dim)``."""

    def __init__(self, input_dim: int, out_dim: int, stride: int = 4, channels: int = 32) -> None:
        super().__init__()
        if stride not in (1, 2, 4, 8):
            raise ValueError(f"stride must be 1, 2, 4 or 8, got {stride}")
        self.stride = stride
        n = int(math.log2(stride))
        convs: list[nn.Module] = []
        in_ch, freq = 1, input_dim
        for _ in range(n):
            convs.append(nn.Conv2d(in_ch, channels, 3, stride=2, padding=1))
            in_ch, freq = channels, (freq + 1) // 2
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Linear(in_ch * freq, out_dim)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames after subsampling: each stride-2 layer maps ``T → ceil(T / 2)``."""
        for _ in self.convs:
            lengths = _halve(lengths)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            # padded frames are zeroed after each layer, so an utterance encodes the same
            # alone and in a padded batch
            y, lengths = torch.relu(conv(y)), _halve(lengths)
            valid = torch.arange(y.shape[2], device=y.device)[None, :] < lengths[:, None].to(y.device)
            y = y * valid[:, None, :, None]
        b, c, t, f = y.shape
        y = self.proj(y.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return y, lengths


class SpeechEncoder(nn.Module):
    """Conv subsampling + (bi)RNN. ``forward(features (B, T, F), lengths (B,))`` returns
    ``(encoded (B, T', output_dim), lengths (B,))`` with ``T' = ceil(T / stride)``; frames past
    an utterance's length are zeros."""

    def __init__(self, config: SpeechEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SpeechEncoderConfig()
        rnn_input = config.hidden_size
        self.subsampling = ConvSubsampling(config.input_dim, rnn_input, config.stride,
                                           config.conv_channels)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[config.rnn_type]
        self.rnn = rnn_cls(rnn_input, config.hidden_size, num_layers=config.num_layers,
                           batch_first=True, bidirectional=config.bidirectional,
                           dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = config.hidden_size * (2 if config.bidirectional else 1)

    @property
    def frame_rate(self) -> float:
        """Output frames per second of audio (10 ms fbank frames / stride)."""
        return 100.0 / self.config.stride

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling(features, lengths)
        lengths = lengths.clamp(min=1, max=x.shape[1])
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = run_recurrence(self.rnn, packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.dropout(out), lengths

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
