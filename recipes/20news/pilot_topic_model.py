"""Pilot: the TCNLM's topic model trained alone on 20 Newsgroups document bags (each training
document once per epoch; Adam with beta1 0.99, batch 200), NPMI of the top 10 words on the test
documents ten times in the run (docs/tcnlm.md, "Topic pre-training and KL annealing").

  python recipes/20news/pilot_topic_model.py --lr 2e-3                  # the library's model
  python recipes/20news/pilot_topic_model.py --prodlda --prior-alpha 0.02  # ProdLDA's variant

``--prodlda``: ProdLDA's inference side instead of the Gaussian softmax (Srivastava & Sutton
2017): batch-normalized mu / log sigma^2, ``t = softmax(z)`` directly, dropout on ``t``
(``--theta-dropout``), and the KL to the Laplace approximation of a symmetric Dirichlet(alpha)
prior instead of N(0, I). The decoder (product of experts with batch-normalized logits) is the
library's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from speechlab.data.corpus import DocumentDataModule  # noqa: E402
from speechlab.functional.topic import bow_nll, gaussian_kl, topic_npmi  # noqa: E402
from speechlab.nn.topic import NeuralTopicModel  # noqa: E402


def laplace_dirichlet_prior(alpha: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance ``(K,)`` of the softmax-basis Laplace approximation of Dirichlet(alpha)."""
    a = torch.full((k,), alpha)
    return a.log() - a.log().mean(), (1 / a) * (1 - 2 / k) + (1 / a).sum() / k**2


class ProdLDAInference(NeuralTopicModel):
    """The library's topic model with ProdLDA's inference network and prior (module docstring)."""

    def __init__(self, vocab_size: int, num_topics: int, alpha: float, theta_dropout: float) -> None:
        super().__init__(vocab_size, num_topics)
        self.bn_mu = nn.BatchNorm1d(num_topics, affine=False)
        self.bn_logvar = nn.BatchNorm1d(num_topics, affine=False)
        self.theta_dropout = nn.Dropout(theta_dropout)
        self.prior_mu, self.prior_var = laplace_dirichlet_prior(alpha, num_topics)

    def forward(self, bow: torch.Tensor, sample: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.log1p(bow))
        mu, logvar = self.bn_mu(self.mu(h)), self.bn_logvar(self.logvar(h)).clamp(-10, 10)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu
        t = self.theta_dropout(z.softmax(-1))
        m0, v0 = self.prior_mu, self.prior_var
        kl = 0.5 * (logvar.exp() / v0 + (mu - m0) ** 2 / v0 - 1 + v0.log() - logvar).sum(-1)
        return bow_nll(bow, self.word_log_probs(t)), kl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topics", type=int, default=10)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--prodlda", action="store_true")
    p.add_argument("--prior-alpha", type=float, default=1.0)
    p.add_argument("--theta-dropout", type=float, default=0.2)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    text = args.shared / "text/20news"
    dm = DocumentDataModule(train=str(text / "train.jsonl"), test=str(text / "test.jsonl"),
                            val_fraction=0.1, clean="usenet", min_freq=3, stop_words="sklearn",
                            topic_top_fraction=0.001, topic_min_count=50, max_sentence_len=30)
    dm.setup()
    v = len(dm.topic_vocab)
    train = dm.splits["train"].doc_term_matrix(v)
    train = train[train.sum(1) > 0]
    reference = dm.splits["test"].doc_term_matrix(v, binary=True)
    print(f"{len(train)} training documents, topic vocabulary {v}")
    if args.prodlda:
        model: NeuralTopicModel = ProdLDAInference(v, args.topics, args.prior_alpha, args.theta_dropout)
    else:
        model = NeuralTopicModel(v, args.topics)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.99, 0.999))
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 200):
            bow = train[perm[i:i + 200]]
            if args.prodlda:
                nll, kl = model(bow)
            else:
                out = model(bow)
                nll, kl = out.nll, gaussian_kl(out.mu, out.logvar)
            loss = (nll + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (epoch + 1) % max(1, args.epochs // 10) == 0:
            model.eval()
            npmi = topic_npmi(model.top_words(10), reference).mean().item()
            print(f"epoch {epoch + 1} NPMI {npmi:.3f} ({time.time() - start:.0f} s)", flush=True)
    for row in model.top_words(10):
        print(dm.topic_vocab.decode(row.tolist()))


if __name__ == "__main__":
    main()
