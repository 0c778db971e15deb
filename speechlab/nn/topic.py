"""Neural topic model with the Gaussian softmax construction (Miao et al., 2017), as used by
TCNLM (Wang et al., 2018).

Inference network ``q(z | d)``: ``log(1 + d)`` → MLP → ``mu``, ``log sigma^2``;
``z = mu + sigma * eps`` (reparameterized; ``z = mu`` in eval mode); topic proportions
``t = softmax(W z + b)``. ELBO ``= log p(d | t) - KL(q(z|d) || N(0, I))`` with one of two
decoders over topic-word parameters ``phi (K, V)``:

- ``"mixture"`` (the papers' form): ``beta_k = softmax(phi_k)``,
  ``p(d | t) = prod_v (t^T beta)_v^{d_v}``;
- ``"product"`` (ProdLDA's, Srivastava & Sutton 2017): ``p(w | t) = softmax(BN(t^T phi))``, a
  product of experts with batch normalization (no affine) on the word logits. On our data it
  finds coherent topics in far fewer steps than the mixture (the mixture sits for hundreds of
  steps with every topic equal to the corpus's most frequent words: docs/tcnlm.md).

Either way ``beta = softmax(phi)`` row-wise gives each topic's word distribution, whose top words
are the topic's word list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from speechlab.functional.topic import bow_nll, gaussian_kl, mixture_log_probs


@dataclass
class TopicModelOutput:
    """Per-document outputs (all ``(B, ...)``)."""

    topics: torch.Tensor  #: (B, K) proportions t
    mu: torch.Tensor  #: (B, Z)
    logvar: torch.Tensor  #: (B, Z)
    nll: torch.Tensor  #: (B,) reconstruction -log p(d|t)
    kl: torch.Tensor  #: (B,) KL(q(z|d) || N(0, I))

    @property
    def elbo(self) -> torch.Tensor:
        """``(B,)`` evidence lower bound (nats)."""
        return -(self.nll + self.kl)


class NeuralTopicModel(nn.Module):
    """Gaussian-softmax neural topic model.

    Args:
        vocab_size: topic vocabulary size ``V``.
        num_topics: ``K``.
        hidden_size: units of each inference-MLP layer.
        num_layers: inference-MLP layers.
        latent_size: dimension ``Z`` of ``z`` (default ``K``).
        dropout: on the MLP output.
        decoder: ``"product"`` or ``"mixture"`` (module docstring).
    """

    def __init__(self, vocab_size: int, num_topics: int, hidden_size: int = 256, num_layers: int = 2,
                 latent_size: int | None = None, dropout: float = 0.0,
                 decoder: Literal["product", "mixture"] = "product") -> None:
        super().__init__()
        if decoder not in ("product", "mixture"):
            raise ValueError(f"decoder must be 'product' or 'mixture', got {decoder!r}")
        self.vocab_size, self.num_topics, self.decoder = vocab_size, num_topics, decoder
        latent_size = latent_size or num_topics
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(vocab_size if i == 0 else hidden_size, hidden_size), nn.Softplus()]
        self.encoder = nn.Sequential(*layers, nn.Dropout(dropout))
        self.mu = nn.Linear(hidden_size, latent_size)
        self.logvar = nn.Linear(hidden_size, latent_size)
        self.to_topics = nn.Linear(latent_size, num_topics)
        self.topic_word = nn.Parameter(torch.randn(num_topics, vocab_size) * 0.02)
        self.word_bn = nn.BatchNorm1d(vocab_size, affine=False) if decoder == "product" else None
        nn.init.zeros_(self.logvar.weight)
        nn.init.constant_(self.logvar.bias, -4.0)  # start near-deterministic; the KL widens it

    def beta(self) -> torch.Tensor:
        """``(K, V)`` topic-word distributions ``softmax(phi)``."""
        return self.topic_word.float().softmax(dim=-1)

    def encode(self, bow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bow (B, V)`` counts → ``(mu (B, Z), logvar (B, Z))``."""
        h = self.encoder(torch.log1p(bow))
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def topics_from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, Z)`` → ``t (B, K)``."""
        return self.to_topics(z).float().softmax(dim=-1)

    def word_log_probs(self, topics: torch.Tensor) -> torch.Tensor:
        """``topics (B, K)`` → ``(B, V)`` float32 log p(w | t) of the decoder."""
        with torch.autocast(device_type=topics.device.type, enabled=False):
            t = topics.float()
            if self.word_bn is None:
                return mixture_log_probs(t, self.beta())
            return self.word_bn(t @ self.topic_word.float()).log_softmax(dim=-1)

    def forward(self, bow: torch.Tensor, sample: bool | None = None) -> TopicModelOutput:
        """``bow (B, V)`` → :class:`TopicModelOutput`; ``sample`` defaults to ``self.training``."""
        mu, logvar = self.encode(bow)
        sample = self.training if sample is None else sample
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu
        t = self.topics_from_latent(z)
        return TopicModelOutput(t, mu, logvar, bow_nll(bow.float(), self.word_log_probs(t)),
                                gaussian_kl(mu.float(), logvar.float()))

    def top_words(self, k: int = 10) -> torch.Tensor:
        """``(K, k)`` ids of each topic's most probable words."""
        return self.topic_word.topk(k, dim=-1).indices
