"""Additive attention over encoder frames: content-based (Bahdanau) or location-aware
(Chorowski et al. 2015, convolutional features of the previous alignment).

``e_{t,j} = wᵀ tanh(W_k k_j + W_q q_t + W_f (F * α_{t-1})_j + b)``, ``α_t = softmax_j(e_t)``
over the valid frames, ``c_t = Σ_j α_{t,j} k_j``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from speechlab.functional.adversarial import frame_mask

__all__ = ["Attention", "frame_mask"]




class Attention(nn.Module):
    """Additive attention with optional location features.

    Args:
        memory_dim: encoder output size ``D``.
        query_dim: decoder query size.
        attention_dim: energy hidden size ``A``.
        kind: ``"location"`` (location-aware) or ``"content"``.
        location_channels: conv channels over the previous alignment.
        location_kernel: conv kernel size (odd).
    """

    def __init__(self, memory_dim: int, query_dim: int, attention_dim: int = 128,
                 kind: Literal["location", "content"] = "location", location_channels: int = 10,
                 location_kernel: int = 15) -> None:
        super().__init__()
        if kind not in ("location", "content"):
            raise ValueError(f"attention kind must be 'location' or 'content', got {kind!r}")
        self.kind = kind
        self.memory_proj = nn.Linear(memory_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.energy = nn.Linear(attention_dim, 1, bias=False)
        if kind == "location":
            if location_kernel % 2 != 1:
                raise ValueError(f"location_kernel must be odd, got {location_kernel}")
            self.location_conv = nn.Conv1d(1, location_channels, location_kernel,
                                           padding=location_kernel // 2, bias=False)
            self.location_proj = nn.Linear(location_channels, attention_dim, bias=False)

    def precompute(self, memory: torch.Tensor) -> torch.Tensor:
        """Projected keys ``W_k k + b``: ``(B, T, D) → (B, T, A)``; compute once per utterance."""
        return self.memory_proj(memory)

    def location_filters(self) -> torch.Tensor:
        """The composed location filter ``(W_f F)ᵀ``: ``(K, A)``. Computed once per sequence
        by teacher forcing and passed to every step (see :meth:`location_features`)."""
        return (self.location_proj.weight @ self.location_conv.weight[:, 0, :]).t()

    def location_features(self, prev_alignment: torch.Tensor,
                          filters: torch.Tensor | None = None) -> torch.Tensor:
        """``W_f (F * α_{t-1})``: ``(B, T) → (B, T, A)``.

        The convolution (``C`` filters of width ``K``, no bias) and the projection ``W_f`` are
        both linear, so they run as one product: the ``K``-frame windows of the zero-padded
        alignment ``(B, T, K)`` times the composed ``(K, A)`` filter
        (:meth:`location_filters`) — the same numbers as ``location_proj(location_conv(α))``
        with one matrix product per step instead of a convolution and a projection (forward
        and backward)."""
        k = self.location_conv.kernel_size[0]
        windows = F.pad(prev_alignment, (k // 2, k // 2)).unfold(-1, k, 1)  # (B, T, K)
        filters = self.location_filters() if filters is None else filters
        return windows @ filters.to(windows.dtype)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor, prev_alignment: torch.Tensor,
                location_filters: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step.

        Args:
            query: ``(B, Q)`` decoder query.
            memory: ``(B, T, D)`` encoder outputs.
            keys: ``(B, T, A)`` from :meth:`precompute`.
            mask: ``(B, T)`` valid frames.
            prev_alignment: ``(B, T)`` the previous step's weights (used by ``location``).
            location_filters: :meth:`location_filters`, when the caller computed it once for
                many steps (default: computed here).

        Returns:
            ``(context (B, D), alignment (B, T))``; the alignment is zero on padded frames.
        """
        e = keys + self.query_proj(query)[:, None, :]
        if self.kind == "location":
            e = e + self.location_features(prev_alignment, location_filters)
        scores = self.energy(torch.tanh(e)).squeeze(-1)
        # the softmax in float32 at least: bf16/fp16 scores upcast, float64 ones kept
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        scores = scores.masked_fill(~mask, float("-inf"))
        alignment = scores.softmax(dim=-1).to(memory.dtype)
        context = torch.bmm(alignment[:, None, :], memory).squeeze(1)
        return context, alignment
