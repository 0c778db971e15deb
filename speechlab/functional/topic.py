"""Pure functions of topic models: the Gaussian KL term of the ELBO, the bag-of-words
reconstruction term (mixture of topic-word distributions), and NPMI topic coherence from document co-occurrence. Imports only torch."""

from __future__ import annotations

import torch


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per row.

    ``0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``.

    Args:
        mu: ``(..., Z)`` means.
        logvar: ``(..., Z)`` log variances.

    Returns:
        ``(...)`` KL divergences in nats.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def mixture_log_probs(topics: torch.Tensor, beta: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``log (t^T beta)``: word log-probabilities of a mixture of the topics' word distributions.

    Args:
        topics: ``(B, K)`` topic proportions (rows sum to 1).
        beta: ``(K, V)`` topic-word distributions (rows sum to 1).

    Returns:
        ``(B, V)`` log-probabilities.
    """
    return (topics @ beta + eps).log()


def bow_nll(bow: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``-log p(d) = -sum_v d_v log p_v`` per document (a multinomial over the words, up to the
    count-permutation constant, which the ELBO's gradient does not see).

    Args:
        bow: ``(B, V)`` word counts.
        log_probs: ``(B, V)`` word log-probabilities.

    Returns:
        ``(B,)`` negative log-likelihoods in nats.
    """
    return -(bow * log_probs).sum(dim=-1)


def npmi_matrix(doc_word: torch.Tensor) -> torch.Tensor:
    """Pairwise NPMI of words from document co-occurrence.

    ``P(w) = D(w) / D``, ``P(w_i, w_j) = D(w_i, w_j) / D`` (documents containing the word(s));
    ``NPMI = log(P(w_i, w_j) / (P(w_i) P(w_j))) / -log P(w_i, w_j)``, with the conventions
    NPMI = -1 when the pair never co-occurs and NPMI = 1 when it occurs in every document.

    Args:
        doc_word: ``(D, W)`` counts or 0/1 (any value > 0 means "occurs").

    Returns:
        ``(W, W)`` float64 NPMI (the diagonal is 1 for words that occur, -1 for those that don't).
    """
    x = (doc_word > 0).double()
    n_docs = x.shape[0]
    if n_docs == 0:
        raise ValueError("npmi_matrix: empty reference corpus")
    p_joint = (x.T @ x) / n_docs
    p = torch.diagonal(p_joint)
    npmi = torch.full_like(p_joint, -1.0)
    seen = p_joint > 0
    logj = p_joint[seen].log()
    pmi = logj - (p[:, None] * p[None, :])[seen].log()
    denom = -logj
    npmi[seen] = torch.where(denom > 0, pmi / denom.clamp(min=1e-300), torch.ones_like(pmi))
    return npmi


def topic_npmi(top_words: torch.Tensor, doc_word: torch.Tensor) -> torch.Tensor:
    """NPMI coherence of each topic: the mean NPMI over the pairs of its top words.

    Args:
        top_words: ``(K, N)`` word ids (columns of ``doc_word``), ``N >= 2``.
        doc_word: ``(D, V)`` reference corpus, counts or 0/1 per document.

    Returns:
        ``(K,)`` float64 coherences (the model's coherence is their mean).
    """
    k, n = top_words.shape
    if n < 2:
        raise ValueError("topic_npmi needs at least 2 words per topic")
    words, inverse = torch.unique(top_words.reshape(-1), return_inverse=True)
    m = npmi_matrix(doc_word[:, words])
    idx = inverse.reshape(k, n)
    pairs = torch.triu_indices(n, n, offset=1, device=idx.device)
    vals = m[idx[:, pairs[0]], idx[:, pairs[1]]]
    return vals.mean(dim=-1)
