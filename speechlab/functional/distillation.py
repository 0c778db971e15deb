"""Pure tensor functions for teacher–student training on frame posteriors.

A frozen teacher's per-frame output distribution (e.g. a clean CTC model on the clean view x) is
the target of a student's (the robust model on the far-field view x̃ of the same utterance,
frame-aligned). Frame posteriors are ``(B, T, C)`` log-probabilities with ``lengths (B,)``:
frames ``t >= lengths[b]`` are padding and never contribute.

Imports only torch.
"""

from __future__ import annotations

import torch

from speechlab.functional.adversarial import frame_mask

__all__ = ["frame_posterior_kl"]


def frame_posterior_kl(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor,
                       lengths: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over valid frames of ``KL(p_teacher(·|t) ‖ p_student(·|t))``, scaled by ``τ²``.

    With temperature ``τ`` both distributions are re-normalised from ``log_probs / τ``
    (``p = softmax(log p / τ)``; ``τ = 1`` leaves normalised inputs unchanged), and the mean KL
    is multiplied by ``τ²`` so that its gradients keep their size as ``τ`` changes (Hinton et
    al., 2015)::

        τ² · sum_{b, t < lengths[b]} sum_c p_T(c) (log p_T(c) − log p_S(c)) / sum_b lengths[b]

    The teacher is a target: it is detached (no gradient reaches it). Classes the teacher
    gives probability 0 contribute 0.

    Args:
        teacher_log_probs: ``(B, T, C)`` teacher log-probabilities (or logits) per frame.
        student_log_probs: ``(B, T, C)`` student log-probabilities (or logits), frame-aligned
            with the teacher's (trim both to the shorter ``T`` if the views differ).
        lengths: ``(B,)`` valid frames per utterance (``<= T``).
        temperature: ``τ > 0``.

    Returns:
        Scalar KL in nats per frame (0 when no frame is valid).
    """
    if teacher_log_probs.shape != student_log_probs.shape:
        raise ValueError(f"teacher {tuple(teacher_log_probs.shape)} and student "
                         f"{tuple(student_log_probs.shape)} log-probs must have one shape")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = (teacher_log_probs.detach() / temperature).log_softmax(-1)
    log_q = (student_log_probs / temperature).log_softmax(-1)
    p = log_p.exp()
    per_class = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    mask = frame_mask(lengths.to(per_class.device), per_class.shape[1]).to(per_class.dtype)
    total = (per_class.sum(-1) * mask).sum()
    return temperature ** 2 * total / mask.sum().clamp(min=1)
