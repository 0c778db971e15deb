"""Pure topic-model functions against hand-computed values."""

import math

import pytest
import torch

from speechlab.functional.topic import (
    bow_nll,
    gaussian_kl,
    mixture_log_probs,
    npmi_matrix,
    topic_npmi,
)


def test_gaussian_kl_hand_computed():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 0: 0.5*(1 + 1 - 1 - 0) + 0.5*(0 + 2 - 1 - ln 2); row 1: the prior itself
    expected = torch.tensor([0.5 + 0.5 * (1 - math.log(2.0)), 0.0])
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(7), torch.ones(7))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))


def test_bow_nll_of_a_mixture_hand_computed():
    beta = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    topics = torch.tensor([[0.5, 0.5]])
    bow = torch.tensor([[2.0, 1.0, 0.0]])
    # p = [0.25, 0.5, 0.25]: -(2 log 0.25 + log 0.5)
    expected = -(2 * math.log(0.25) + math.log(0.5))
    assert bow_nll(bow, mixture_log_probs(topics, beta)).item() == pytest.approx(expected, rel=1e-6)


# toy corpus over words a=0, b=1, c=2, d=3: {a,b}, {a,b,c}, {a}, {c,d}
TOY = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.float)


def test_npmi_hand_computed_toy_corpus():
    m = npmi_matrix(TOY * 3)  # counts > 1 mean "occurs" just the same
    # P(a)=3/4 P(b)=1/2 P(ab)=1/2: log(4/3) / log 2
    assert m[0, 1].item() == pytest.approx(math.log(4 / 3) / math.log(2))
    # P(ac)=1/4, P(c)=1/2: log(2/3) / log 4
    assert m[0, 2].item() == pytest.approx(math.log(2 / 3) / math.log(4))
    assert m[1, 2].item() == pytest.approx(0.0, abs=1e-12)  # P(bc)=1/4 = P(b)P(c)
    assert m[1, 3].item() == -1.0  # never together
    assert m[2, 3].item() == pytest.approx(math.log(2) / math.log(4))  # P(cd)=1/4, P(d)=1/4
    torch.testing.assert_close(m, m.T)


def test_topic_npmi_is_the_mean_over_word_pairs():
    top = torch.tensor([[0, 1, 2], [1, 3, 3]])
    got = topic_npmi(top, TOY)
    first = (math.log(4 / 3) / math.log(2) + math.log(2 / 3) / math.log(4) + 0.0) / 3
    second = (-1.0 + -1.0 + 1.0) / 3  # (b,d), (b,d), (d,d): d with itself occurs where d does
    assert got[0].item() == pytest.approx(first)
    assert got[1].item() == pytest.approx(second)


def test_npmi_word_in_every_document_is_one():
    docs = torch.ones(3, 2)
    assert npmi_matrix(docs)[0, 1].item() == 1.0


def test_npmi_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        npmi_matrix(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="at least 2"):
        topic_npmi(torch.tensor([[0]]), TOY)
