"""Fusion layers between an attention decoder's state and a (frozen) language model.

Thin modules over :mod:`speechlab.functional.fusion`; the output DNN and softmax that follow
belong to :class:`~speechlab.nn.decoder.AttentionDecoder`. The LM itself is not a submodule
here: it is frozen and owned by whoever drives decoding (the task or the beam search), and its
outputs are passed in.
"""

from __future__ import annotations

import torch
from torch import nn

from speechlab.functional.fusion import cold_fusion_state, deep_fusion_state, normalize_lm_logits

#: initial bias of cold fusion's gate: σ(−1) ≈ 0.27, so the decoder starts by mostly ignoring
#: the LM and learns where to listen to it.
COLD_GATE_BIAS_INIT = -1.0


class ColdFusion(nn.Module):
    """``h = W_h log_softmax(ℓ) + b_h``; ``g = σ(W_g [s; h] + b_g)`` (vector, ``b_g = −1``);
    ``s_CF = [s; g ∘ h]``.

    Args:
        state_dim: decoder state size ``S``.
        vocab_size: LM outputs ``V``.
        fusion_dim: LM feature / gate size ``D``.
    """

    def __init__(self, state_dim: int, vocab_size: int, fusion_dim: int = 128) -> None:
        super().__init__()
        self.lm_proj = nn.Linear(vocab_size, fusion_dim)
        self.gate = nn.Linear(state_dim + fusion_dim, fusion_dim)
        nn.init.constant_(self.gate.bias, COLD_GATE_BIAS_INIT)
        self.out_dim = state_dim + fusion_dim

    def forward(self, s: torch.Tensor, lm_logits: torch.Tensor, lm_hidden: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``s (B, S)``, ``lm_logits (B, V)`` → ``(s_CF (B, S + D), gate (B, D))``."""
        h = self.lm_proj(normalize_lm_logits(lm_logits).to(s.dtype))
        return cold_fusion_state(s, h, self.gate.weight, self.gate.bias)


class DeepFusion(nn.Module):
    """``g = σ(v·h_LM + b)`` (a scalar per step); ``s_DF = [s; g · h_LM]``.

    Args:
        state_dim: decoder state size ``S``.
        lm_hidden_size: the LM's hidden size ``H``.
    """

    def __init__(self, state_dim: int, lm_hidden_size: int) -> None:
        super().__init__()
        self.gate = nn.Linear(lm_hidden_size, 1)
        self.out_dim = state_dim + lm_hidden_size

    def forward(self, s: torch.Tensor, lm_logits: torch.Tensor | None, lm_hidden: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``s (B, S)``, ``lm_hidden (B, H)`` → ``(s_DF (B, S + H), gate (B, 1))``."""
        return deep_fusion_state(s, lm_hidden.to(s.dtype), self.gate.weight, self.gate.bias)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
