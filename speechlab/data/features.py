"""Acoustic features: 80-dim log-mel filterbanks (torchaudio's Kaldi-compatible fbank),
per-utterance mean/variance normalization, and SpecAugment."""

from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms as T
from torch import nn

#: fbank frame shift in milliseconds; the encoder's output frame rate is 1000 / (shift * stride)
FRAME_SHIFT_MS = 10.0


def log_mel_fbank(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = FRAME_SHIFT_MS,
    dither: float = 1.0,
) -> torch.Tensor:
    """Log-mel filterbank of a mono waveform.

    Args:
        waveform: ``(num_samples,)`` float samples in [-1, 1].
        sample_rate: Hz.
        dither: Kaldi-style dither in 16-bit sample units (1.0 = Kaldi's default). Keep it on:
            espeak-ng writes exact digital silence, which otherwise sits at the log floor.

    Returns:
        ``(num_frames, num_mel_bins)`` log energies; ``num_frames = 1 + (num_samples -
        frame_length) // frame_shift`` (Kaldi's ``snip_edges``).
    """
    if waveform.dim() != 1:
        raise ValueError(f"log_mel_fbank expects a mono (num_samples,) waveform, got {tuple(waveform.shape)}")
    return kaldi.fbank(
        waveform.unsqueeze(0) * 32768.0,
        sample_frequency=sample_rate,
        num_mel_bins=num_mel_bins,
        frame_length=frame_length_ms,
        frame_shift=frame_shift_ms,
        dither=dither,
        energy_floor=0.0,
    )


def utterance_cmvn(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance mean/variance normalization of ``(num_frames, dim)`` features."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.std(dim=0, keepdim=True, unbiased=False)
    return (features - mean) / (std + eps)


class SpecAugment(nn.Module):
    """SpecAugment (Park et al., 2019) on a batch of features: ``num_freq_masks`` frequency
    masks of width ≤ ``freq_mask_width`` bins and ``num_time_masks`` time masks of width ≤
    ``time_mask_ratio`` × the batch's frame count, drawn independently per utterance.
    Identity in eval mode. Input/output ``(batch, num_frames, dim)``."""

    def __init__(self, num_freq_masks: int = 2, freq_mask_width: int = 15,
                 num_time_masks: int = 2, time_mask_ratio: float = 0.05) -> None:
        super().__init__()
        self.num_freq_masks = num_freq_masks
        self.num_time_masks = num_time_masks
        self.time_mask_ratio = time_mask_ratio
        self.freq_mask = T.FrequencyMasking(freq_mask_width, iid_masks=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        x = features.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T): torchaudio's layout
        for _ in range(self.num_freq_masks):
            x = self.freq_mask(x)
        width = int(self.time_mask_ratio * x.shape[-1])
        if width > 0:
            time_mask = T.TimeMasking(width, iid_masks=True)
            for _ in range(self.num_time_masks):
                x = time_mask(x)
        return x.squeeze(1).transpose(1, 2)
