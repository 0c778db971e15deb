"""The shared speech encoder family: convolutional subsampling + a bidirectional RNN or a
Conformer (torchaudio's :class:`torchaudio.models.Conformer`).

CTC, Gram-CTC, the robust encoder and the attention seq2seq model all use
:class:`SpeechEncoder`, configured by :class:`SpeechEncoderConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchaudio.models import Conformer

from speechlab.errors import InputError
from speechlab.functional.adversarial import frame_mask
from speechlab.nn.recurrence import run_recurrence


@dataclass
class SpeechEncoderConfig:
    """Encoder hyper-parameters.

    Attributes:
        input_dim: feature dimension (80 log-mel bins).
        stride: time subsampling factor of the conv front end: 1, 2, 4 or 8 (each factor of 2
            is one 3×3 stride-2 conv2d + ReLU).
        conv_channels: channels of the conv front end.
        kind: ``"rnn"`` (a stacked RNN of ``rnn_type``) or ``"conformer"`` (torchaudio's
            Conformer, Gulati et al. 2020). Saved configurations without it are ``"rnn"``.
        rnn_type: ``"lstm"`` or ``"gru"`` (``kind: rnn`` only).
        hidden_size: RNN units per direction; for the Conformer its model dimension d_model
            (the output dimension).
        num_layers: stacked RNN layers or Conformer blocks.
        bidirectional: bidirectional RNN (output dim doubles; ``kind: rnn`` only).
        dropout: dropout between RNN layers (inside the Conformer blocks) and on the output.
        num_heads: Conformer attention heads (``hidden_size`` must be a multiple).
        ffn_dim: hidden units of the Conformer's feed-forward modules; None: 4 × hidden_size.
        depthwise_conv_kernel_size: the Conformer convolution module's kernel, in output
            frames (odd).
    """

    input_dim: int = 80
    stride: int = 4
    conv_channels: int = 32
    kind: Literal["rnn", "conformer"] = "rnn"
    rnn_type: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.1
    num_heads: int = 4
    ffn_dim: int | None = None
    depthwise_conv_kernel_size: int = 31

    def __post_init__(self) -> None:
        """Raises:
            InputError: a value the encoder cannot be built with, named (``encoder.<field>``).
        """
        if self.stride not in (1, 2, 4, 8):
            raise InputError(f"encoder.stride must be 1, 2, 4 or 8, got {self.stride}")
        if self.kind not in ("rnn", "conformer"):
            raise InputError(f"encoder.kind must be 'rnn' or 'conformer', got {self.kind!r}")
        if self.kind == "conformer":
            if self.num_heads < 1 or self.hidden_size % self.num_heads:
                raise InputError(f"encoder.hidden_size {self.hidden_size} (the Conformer's d_model) "
                                 f"is not a multiple of encoder.num_heads {self.num_heads}")
            if self.depthwise_conv_kernel_size < 1 or self.depthwise_conv_kernel_size % 2 == 0:
                raise InputError("encoder.depthwise_conv_kernel_size must be odd, got "
                                 f"{self.depthwise_conv_kernel_size}")


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

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            # padded frames are zeroed after each layer, so an utterance encodes the same
            # alone and in a padded batch
            y, lengths = torch.relu(conv(y)), _halve(lengths)
            valid = frame_mask(lengths.to(y.device), y.shape[2])
            y = y * valid[:, None, :, None]
        b, c, t, f = y.shape
        y = self.proj(y.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return y, lengths


class ConformerEncoder(nn.Module):
    """torchaudio's :class:`~torchaudio.models.Conformer` made padding-invariant.
    ``forward(x (B, T, D), lengths (B,))`` → ``(B, T, D)``, frames past a length zeroed.

    torchaudio masks padded frames out of self-attention only; its convolution modules' depthwise
    convolutions would read them (whatever the feed-forward modules made of the padding) into
    the last ``kernel // 2`` valid frames. Here the depthwise convolutions' inputs are zeroed
    past each length (as in ESPnet), through forward pre-hooks held for one forward call, so an
    utterance encodes the same alone and in a padded batch (in eval mode: training-mode
    BatchNorm statistics include the padding, as in torchaudio)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_layers: int,
                 kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.conformer = Conformer(input_dim=dim, num_heads=num_heads, ffn_dim=ffn_dim,
                                   num_layers=num_layers, depthwise_conv_kernel_size=kernel_size,
                                   dropout=dropout)

    def _depthwise_convs(self) -> list[nn.Module]:
        # torchaudio's _ConvolutionModule: LayerNorm, then Sequential(pointwise conv, GLU,
        # depthwise conv, norm, SiLU, pointwise conv, dropout) over (B, D, T)
        return [layer.conv_module.sequential[2] for layer in self.conformer.conformer_layers]

    @contextmanager
    def _masked_depthwise_inputs(self, valid: torch.Tensor) -> Iterator[None]:
        """While open, each depthwise conv's input (B, D, T) is multiplied by ``valid`` (B, 1, T)."""
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (args[0] * valid.to(args[0].dtype), *args[1:])

        handles = [conv.register_forward_pre_hook(hook) for conv in self._depthwise_convs()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        total = x.shape[1]
        longest = int(lengths.max())  # torchaudio's key padding mask is (B, max(lengths))
        valid = frame_mask(lengths.to(x.device), longest)
        with self._masked_depthwise_inputs(valid[:, None, :]):
            out, _ = self.conformer(x[:, :longest], lengths.to(x.device))
        out = out * valid[:, :, None].to(out.dtype)
        return F.pad(out, (0, 0, 0, total - longest))


class SpeechEncoder(nn.Module):
    """Conv subsampling + (bi)RNN or Conformer. ``forward(features (B, T, F), lengths (B,))``
    returns ``(encoded (B, T', output_dim), lengths (B,))`` with ``T' = ceil(T / stride)``;
    frames past an utterance's length are zeros."""

    def __init__(self, config: SpeechEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SpeechEncoderConfig()
        self.subsampling = ConvSubsampling(config.input_dim, config.hidden_size, config.stride,
                                           config.conv_channels)
        self.rnn: nn.Module | None = None
        self.conformer: ConformerEncoder | None = None
        if config.kind == "conformer":
            self.conformer = ConformerEncoder(
                config.hidden_size, config.num_heads, config.ffn_dim or 4 * config.hidden_size,
                config.num_layers, config.depthwise_conv_kernel_size, config.dropout)
            self.output_dim = config.hidden_size
        else:
            rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[config.rnn_type]
            self.rnn = rnn_cls(config.hidden_size, config.hidden_size, num_layers=config.num_layers,
                               batch_first=True, bidirectional=config.bidirectional,
                               dropout=config.dropout if config.num_layers > 1 else 0.0)
            self.output_dim = config.hidden_size * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def frame_rate(self) -> float:
        """Output frames per second of audio (10 ms fbank frames / stride)."""
        return 100.0 / self.config.stride

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling(features, lengths)
        lengths = lengths.clamp(min=1, max=x.shape[1])
        if self.conformer is not None:
            return self.dropout(self.conformer(x, lengths)), lengths
        assert self.rnn is not None
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = run_recurrence(self.rnn, packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.dropout(out), lengths

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
