"""speechlab.functional.adversarial and the critic, against hand-computed cases: a linear critic
``f(x) = sum_{t < L} w·x_t`` has gradient ``w`` on each valid frame, so its gradient norm is
``sqrt(L)·|w|`` whatever the interpolate; a quadratic critic ``f(x) = ½ sum |x_t|²`` has gradient
``x̂`` itself, which pins down the interpolation."""

from __future__ import annotations

import math

import pytest
import torch

from speechlab.functional.adversarial import (
    frame_mask,
    generator_loss,
    gradient_penalty,
    interpolate,
    masked_l1_distance,
    wasserstein_critic_loss,
)
from speechlab.nn.critic import CriticConfig, SequenceCritic

LENGTHS = torch.tensor([4, 2, 1])  # B = 3, T = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


D = 3


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(3, 4, D, generator=g, dtype=torch.float64)
    fake = torch.randn(3, 4, D, generator=g, dtype=torch.float64)
    return real, fake


def test_frame_mask():
    assert frame_mask(LENGTHS, 4).tolist() == [[True] * 4, [True, True, False, False],
                                               [True, False, False, False]]


def test_wasserstein_and_generator_losses_by_hand():
    real = torch.tensor([3.0, 1.0])  # mean 2
    fake = torch.tensor([-1.0, 0.0, 0.5, 0.5])  # mean 0
    loss, w = wasserstein_critic_loss(real, fake)
    assert w.item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(-2.0)
    assert generator_loss(fake).item() == pytest.approx(0.0)
    assert generator_loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(-1.5)


def test_gradient_penalty_linear_critic_matches_hand_computation():
    w = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)  # |w| = 1.3

    def critic(x, lengths):
        return (x @ w * frame_mask(lengths, x.shape[1])).sum(dim=1)

    real, fake = _pair()
    expected = sum((math.sqrt(n) * 1.3 - 1) ** 2 for n in (4, 2, 1)) / 3
    for eps in (torch.zeros(3), torch.ones(3), torch.tensor([0.2, 0.7, 0.5])):
        gp = gradient_penalty(critic, real, fake, LENGTHS, eps=eps.double())
        assert gp.item() == pytest.approx(expected, rel=1e-9)
    # random eps (the default) cannot change a linear critic's gradient
    assert gradient_penalty(critic, real, fake, LENGTHS).item() == pytest.approx(expected, rel=1e-9)
    # another target norm: (sqrt(L)|w| - 2)^2
    expected2 = sum((math.sqrt(n) * 1.3 - 2) ** 2 for n in (4, 2, 1)) / 3
    assert gradient_penalty(critic, real, fake, LENGTHS, target_norm=2.0).item() == pytest.approx(expected2)


def test_gradient_penalty_ignores_padding_even_if_the_critic_does_not():
    w = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)

    def unmasked_critic(x, lengths):  # looks at padded frames too: gradient w on all T frames
        return (x @ w).sum(dim=1)

    real, fake = _pair()
    gp = gradient_penalty(unmasked_critic, real, fake, LENGTHS)
    expected = sum((math.sqrt(n) * 1.3 - 1) ** 2 for n in (4, 2, 1)) / 3
    assert gp.item() == pytest.approx(expected, rel=1e-9)
    unmasked = (math.sqrt(4) * 1.3 - 1) ** 2
    assert gp.item() != pytest.approx(unmasked)


def test_gradient_penalty_quadratic_critic_pins_the_interpolate():
    def critic(x, lengths):
        return 0.5 * (x.pow(2).sum(-1) * frame_mask(lengths, x.shape[1])).sum(dim=1)

    real, fake = _pair(1)
    eps = torch.tensor([0.25, 0.5, 0.9], dtype=torch.float64)
    expected = 0.0
    for b, n in enumerate(LENGTHS.tolist()):
        x_hat = eps[b] * real[b, :n] + (1 - eps[b]) * fake[b, :n]
        expected += (x_hat.norm().item() - 1) ** 2 / 3
    assert gradient_penalty(critic, real, fake, LENGTHS, eps=eps).item() == pytest.approx(expected)
    assert torch.equal(interpolate(real, fake, eps)[1], 0.5 * real[1] + 0.5 * fake[1])


def test_gradient_penalty_gradient_wrt_critic_parameters():
    """d/dw (s|w| - 1)^2 = 2 (s|w| - 1) s w/|w| with s = sqrt(L): GP is trainable."""
    w = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64, requires_grad=True)

    def critic(x, lengths):
        return (x @ w * frame_mask(lengths, x.shape[1])).sum(dim=1)

    real, fake = _pair()
    gradient_penalty(critic, real, fake, LENGTHS).backward()
    wd = w.detach()
    expected = sum(2 * (math.sqrt(n) * 1.3 - 1) * math.sqrt(n) * wd / 1.3 for n in (4, 2, 1)) / 3
    torch.testing.assert_close(w.grad, expected)


def test_masked_l1_distance_by_hand():
    a = torch.zeros(2, 3, 2)
    b = torch.zeros(2, 3, 2)
    b[0, 0] = torch.tensor([1.0, -3.0])  # valid: |.|_1 = 4
    b[0, 1] = torch.tensor([0.5, 0.5])  # valid: 1
    b[0, 2] = 100.0  # padding of utterance 0
    b[1, 0] = torch.tensor([2.0, 0.0])  # valid: 2
    b[1, 1:] = -50.0  # padding of utterance 1
    d = masked_l1_distance(a, b, torch.tensor([2, 1]))
    assert d.item() == pytest.approx((4 + 1 + 2) / (3 * 2))  # 3 valid frames × D = 2
    d.requires_grad_(False)
    b.requires_grad_(True)
    masked_l1_distance(a, b, torch.tensor([2, 1])).backward()
    assert b.grad[0, 2].abs().sum() == 0 and b.grad[1, 1:].abs().sum() == 0


@pytest.mark.parametrize("gru", [False, True])
def test_critic_is_padding_invariant_and_gradient_penalty_trains_it(gru):
    torch.manual_seed(0)
    critic = SequenceCritic(8, CriticConfig(channels=16, kernel_size=3, num_layers=2, gru=gru))
    x = torch.randn(3, 7, 8)
    lengths = torch.tensor([7, 4, 2])
    garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage[b, n:] = 1e3  # padding content must not matter
    scores = critic(x, lengths)
    assert scores.shape == (3,)
    torch.testing.assert_close(critic(garbage, lengths), scores)
    for b, n in enumerate(lengths.tolist()):  # alone (no padding) = in the batch
        torch.testing.assert_close(critic(x[b:b + 1, :n], lengths[b:b + 1]), scores[b:b + 1])
    # double backward through the critic: GP gives every weight a finite, non-zero gradient
    # (biases may get none: with piecewise-linear activations the input gradient does not
    # depend on them almost everywhere)
    real, fake = torch.randn(3, 7, 8), torch.randn(3, 7, 8)
    gradient_penalty(critic, real, fake, lengths).backward()
    weights = {n: p for n, p in critic.named_parameters() if "weight" in n}
    assert len(weights) >= 3
    for name, p in weights.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_critic_separates_shifted_embeddings():
    """A few WGAN-GP updates make W positive on clearly separable inputs (real = fake + 1)."""
    torch.manual_seed(0)
    critic = SequenceCritic(4, CriticConfig(channels=16, kernel_size=3))
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    lengths = torch.tensor([6, 5, 3, 6])
    for _ in range(60):
        fake = torch.randn(4, 6, 4)
        real = fake + 1.0
        loss, w = wasserstein_critic_loss(critic(real, lengths), critic(fake, lengths))
        loss = loss + 10 * gradient_penalty(critic, real, fake, lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fake = torch.randn(64, 6, 4)
    _, w = wasserstein_critic_loss(critic(fake + 1, torch.full((64,), 6)),
                                   critic(fake, torch.full((64,), 6)))
    assert w.item() > 0.5
