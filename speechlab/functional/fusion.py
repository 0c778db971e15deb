"""Fusion of a sequence-to-sequence decoder with a language model (pure tensor functions).

Notation per decoder step: ``s`` (B, S) the decoder state (decoder output ⊕ attention context),
``lm_logits`` (B, V) the LM's next-token logits, ``lm_hidden`` (B, H) its top hidden state.

- cold fusion (Sriram et al. 2017): ``h = DNN(log_softmax(lm_logits))``,
  ``g = σ(W [s; h] + b)`` (a vector gate), ``s_CF = [s; g ∘ h]``;
- deep fusion (Gulcehre et al. 2015): ``g = σ(v·lm_hidden + b)`` (a scalar gate),
  ``s_DF = [s; g · lm_hidden]``;
- shallow fusion: ``log P(y) + β log P_LM(y)`` at search time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_lm_logits(lm_logits: torch.Tensor) -> torch.Tensor:
    """LM logits → log-probabilities ``(…, V)``: the "normalized logits" cold fusion feeds to
    its DNN (invariant to the arbitrary offset of raw logits)."""
    return lm_logits.float().log_softmax(dim=-1)


def cold_fusion_state(s: torch.Tensor, h: torch.Tensor, gate_weight: torch.Tensor,
                      gate_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cold fusion's gated state.

    Args:
        s: ``(B, S)`` decoder state.
        h: ``(B, D)`` the LM feature ``DNN(log_softmax(lm_logits))``.
        gate_weight: ``(D, S + D)``; gate_bias: ``(D,)``.

    Returns:
        ``(s_CF (B, S + D), g (B, D))`` with ``g = σ(W[s; h] + b)`` and ``s_CF = [s; g ∘ h]``.
    """
    g = torch.sigmoid(F.linear(torch.cat([s, h], dim=-1), gate_weight, gate_bias))
    return torch.cat([s, g * h], dim=-1), g


def deep_fusion_state(s: torch.Tensor, lm_hidden: torch.Tensor, gate_weight: torch.Tensor,
                      gate_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep fusion's gated state.

    Args:
        s: ``(B, S)`` decoder state.
        lm_hidden: ``(B, H)`` the LM's top-layer hidden state.
        gate_weight: ``(1, H)``; gate_bias: ``(1,)``.

    Returns:
        ``(s_DF (B, S + H), g (B, 1))`` with ``g = σ(v·lm_hidden + b)``, ``s_DF = [s; g·lm_hidden]``.
    """
    g = torch.sigmoid(F.linear(lm_hidden, gate_weight, gate_bias))
    return torch.cat([s, g * lm_hidden], dim=-1), g


def shallow_fusion(log_probs: torch.Tensor, lm_log_probs: torch.Tensor, lm_weight: float
                   ) -> torch.Tensor:
    """``log P(y) + β · log P_LM(y)`` (same shape as the inputs, ``(…, V)``)."""
    return log_probs + lm_weight * lm_log_probs


def length_normalize(scores: torch.Tensor, lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """Hypothesis scores divided by ``length ** alpha`` (``alpha = 0``: raw scores, ``1``: the
    per-token average). ``lengths`` count the emitted tokens including ``<eos>`` (≥ 1)."""
    if alpha == 0:
        return scores
    return scores / lengths.clamp(min=1).to(scores.dtype).pow(alpha)
