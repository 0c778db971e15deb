"""CTC decoding helpers (pure tensor functions)."""

from __future__ import annotations

import torch


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: per-frame argmax, merge repeats, drop blanks.

    Args:
        log_probs: ``(B, T, V)`` per-frame scores (log-probabilities or logits).
        lengths: ``(B,)`` valid frames per utterance.
        blank: the blank id.

    Returns:
        One list of label ids per utterance.
    """
    best = log_probs.argmax(dim=-1)  # (B, T)
    t = torch.arange(best.shape[1], device=best.device)
    keep = (best != blank) & (t[None, :] < lengths[:, None].to(best.device))
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    best, keep = best.cpu(), keep.cpu()
    return [best[b][keep[b]].tolist() for b in range(best.shape[0])]
