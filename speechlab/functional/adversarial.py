"""Pure tensor functions for adversarial (WGAN-GP) training of a robust speech encoder.

Conventions (Sriram et al., 2017; Gulrajani et al., 2017): the critic ``f`` scores an embedding
sequence; it is trained to score *clean* embeddings ``e(x)`` ("real") high and *far-field*
embeddings ``e(x̃)`` ("fake") low. The Wasserstein estimate is
``W = mean f(e(x)) − mean f(e(x̃))``; the critic minimises ``−W + gp_weight · GP`` and the
encoder minimises ``−mean f(e(x̃))`` (clean embeddings are detached targets).

Embedding sequences are ``(B, T, D)`` tensors with ``lengths (B,)``: frames ``t >= lengths[b]``
are padding and never contribute to a loss, a penalty or a distance.

Imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "frame_mask",
    "wasserstein_critic_loss",
    "generator_loss",
    "interpolate",
    "gradient_penalty",
    "masked_l1_distance",
]

#: A critic: ``(embeddings (B, T, D), lengths (B,)) -> scores (B,)``.
Critic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, max_len)`` bool mask, True on the first ``lengths[b]`` frames of row ``b``."""
    t = torch.arange(max_len, device=lengths.device)
    return t[None, :] < lengths[:, None]


def wasserstein_critic_loss(real_scores: torch.Tensor,
                            fake_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic loss ``−W`` and the Wasserstein estimate ``W``.

    Args:
        real_scores: ``(B,)`` critic scores of clean embeddings.
        fake_scores: ``(B',)`` critic scores of far-field embeddings.

    Returns:
        ``(loss, w)``: scalars with ``w = real_scores.mean() − fake_scores.mean()`` and
        ``loss = −w`` (minimised by the critic).
    """
    w = real_scores.mean() - fake_scores.mean()
    return -w, w


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Encoder ("generator") adversarial loss ``−mean f(e(x̃))`` from ``(B,)`` scores of the
    far-field embeddings: raising their scores towards the clean ones lowers ``W``."""
    return -fake_scores.mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-utterance random interpolates ``eps_b · real_b + (1 − eps_b) · fake_b``.

    Args:
        real, fake: ``(B, T, D)`` embeddings (padding frames zero).
        eps: ``(B,)`` mixing weights in [0, 1].

    Returns:
        ``(B, T, D)`` interpolates.
    """
    e = eps.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    return e * real + (1 - e) * fake


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor,
                     lengths: torch.Tensor, eps: torch.Tensor | None = None,
                     target_norm: float = 1.0) -> torch.Tensor:
    """WGAN-GP gradient penalty ``mean_b (‖∇_x̂ f(x̂_b)‖₂ − target_norm)²`` on interpolates.

    The gradient norm of utterance ``b`` is taken over its valid frames only
    (``t < lengths[b]``, all ``D`` dimensions), so padding never enters the penalty even if the
    critic looked at padded frames. The result is differentiable with respect to the critic's
    parameters (``create_graph=True``); ``real`` and ``fake`` should be detached.

    Args:
        critic: ``(x (B, T, D), lengths (B,)) -> scores (B,)``.
        real: ``(B, T, D)`` clean embeddings.
        fake: ``(B, T, D)`` far-field embeddings of the same utterances (pad both to one ``T``).
        lengths: ``(B,)`` valid frames of the interpolates (e.g. the max of the two views').
        eps: ``(B,)`` mixing weights; default ``U(0, 1)`` per utterance.
        target_norm: the norm the penalty pulls gradients to (1 for a 1-Lipschitz critic).

    Returns:
        Scalar penalty.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have one shape")
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    x_hat = interpolate(real.detach(), fake.detach(), eps).requires_grad_(True)
    scores = critic(x_hat, lengths)
    (grads,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    mask = frame_mask(lengths.to(grads.device), grads.shape[1])
    grads = grads * mask.unsqueeze(-1).to(grads.dtype)
    # sqrt(sum g² + tiny): finite second derivative even where a gradient is exactly zero
    norms = (grads.flatten(1).pow(2).sum(dim=1) + 1e-12).sqrt()
    return (norms - target_norm).pow(2).mean()


def masked_l1_distance(a: torch.Tensor, b: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the valid frames of two aligned embedding sequences.

    ``sum_{b, t < lengths[b], d} |a − b| / (D · sum_b lengths[b])``, i.e. ``‖e(x) − e(x̃)‖₁``
    normalised per embedding element, so the value does not grow with batch size, duration or
    ``D``.

    Args:
        a, b: ``(B, T, D)`` embeddings (the two views of the same utterances, frame-aligned;
            trim both to the shorter ``T`` if the views differ in length).
        lengths: ``(B,)`` frames to compare per utterance (``<= T``).

    Returns:
        Scalar distance.
    """
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have one shape")
    mask = frame_mask(lengths.to(a.device), a.shape[1]).unsqueeze(-1).to(a.dtype)
    total = ((a - b).abs() * mask).sum()
    count = mask.sum() * a.shape[-1]
    return total / count.clamp(min=1)
