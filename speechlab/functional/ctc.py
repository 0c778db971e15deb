"""CTC loss of a linear head's logits and CTC decoding helpers (pure tensor functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ctc_loss_from_logits(logits: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                         target_lens: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """Mean CTC loss of frame logits, as every speechlab CTC head trains: log-softmax in
    float32, torch's ``ctc_loss`` with ``reduction="mean"`` and ``zero_infinity=True`` (an
    utterance too long for its frames contributes loss 0 and gradient 0).

    Args:
        logits: ``(B, T, V)`` per-frame logits (any float dtype).
        lengths: ``(B,)`` valid frames.
        targets: ``(B, S)`` label ids (padded).
        target_lens: ``(B,)`` target lengths.
        blank: the blank id.
    """
    log_probs = logits.float().log_softmax(dim=-1)
    return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lens, blank=blank,
                      reduction="mean", zero_infinity=True)


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
