"""Functions behind ``speechlab tcnlm``: sampling sentences conditioned on a topic mixture,
loading a checkpoint and its data, NPMI coherence of the model's topics and of an LDA."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from speechlab.data.corpus import DocumentDataModule, ProcessedDocuments
    from speechlab.tasks.topic_lm import TopicLMTask

log = logging.getLogger("speechlab.tcnlm")


def parse_topic_mixture(spec: str, num_topics: int) -> torch.Tensor:
    """``"3"`` → one-hot topic 3; ``"3:0.7,5:0.3"`` → that mixture (normalized to sum 1).
    Returns ``(num_topics,)``."""
    t = torch.zeros(num_topics)
    for part in spec.split(","):
        k, _, w = part.partition(":")
        try:
            k_id, weight = int(k), float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"--topic {spec!r}: expected K or K:W,K:W,... (K an integer, W a number)") from None
        if not 0 <= k_id < num_topics:
            raise ValueError(f"--topic {spec!r}: topic {k_id} out of range (the model has {num_topics} topics)")
        if weight < 0:
            raise ValueError(f"--topic {spec!r}: negative weight {weight}")
        t[k_id] += weight
    if t.sum() <= 0:
        raise ValueError(f"--topic {spec!r}: the weights sum to zero")
    return t / t.sum()


@torch.no_grad()
def sample_sentences(task: TopicLMTask, topics: torch.Tensor | None, num: int = 5, max_len: int = 30,
                     temperature: float = 1.0, seed: int = 0, allow_unk: bool = False) -> list[str]:
    """Sample ``num`` sentences from the task's LM, conditioned on ``topics (T,)`` (TCNLM) or
    unconditioned (``None``; plain LSTM)."""
    from speechlab.data.corpus import BOS, EOS, PAD, UNK

    vocab, lm = task.lm_vocab, task.lm
    if vocab is None or lm is None:
        raise ValueError("the checkpoint has no LM vocabulary")
    if task.is_tcnlm and topics is None:
        raise ValueError("a TCNLM needs topic proportions to generate")
    if not task.is_tcnlm and topics is not None:
        raise ValueError("this checkpoint is a plain LSTM LM: it cannot be conditioned on a topic")
    lm.eval()
    device = next(lm.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    token = torch.full((num,), vocab.id(BOS), dtype=torch.long, device=device)
    t = None if topics is None else topics.to(device).float().expand(num, -1)
    banned = [vocab.id(PAD), vocab.id(BOS)] + ([] if allow_unk else [vocab.id(UNK)])
    eos = vocab.id(EOS)
    state = None
    out = torch.full((num, max_len), eos, dtype=torch.long)
    done = torch.zeros(num, dtype=torch.bool)
    for i in range(max_len):
        logits, _, state = lm.step(token, t, state) if t is not None else lm.step(token, state)
        logits = logits.float()
        logits[:, banned] = float("-inf")
        token = torch.multinomial((logits / max(temperature, 1e-6)).softmax(-1), 1, generator=gen)[:, 0]
        out[:, i] = torch.where(done.to(device), eos, token).cpu()
        done |= (token == eos).cpu()
        if done.all():
            break
    sentences = []
    for row in out.tolist():
        words = row[: row.index(eos)] if eos in row else row
        sentences.append(" ".join(vocab.decode(words)))
    return sentences


def load_task(checkpoint: str, device: str = "cpu") -> TopicLMTask:
    from speechlab.tasks.topic_lm import TopicLMTask

    task = TopicLMTask.load_from_checkpoint(checkpoint, map_location=device)
    task.eval()
    return task


def datamodule_from_checkpoint(checkpoint: str, overrides: dict[str, Any] | None = None) -> DocumentDataModule:
    """The :class:`DocumentDataModule` of a checkpoint's saved data settings (set up)."""
    from speechlab.data.corpus import DocumentDataModule

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hp = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if not hp:
        raise ValueError(f"{checkpoint}: no data settings saved in the checkpoint "
                         "(train with a DocumentDataModule, or pass --train)")
    hp.update({k: v for k, v in (overrides or {}).items() if v is not None})
    dm = DocumentDataModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    dm.setup("test")
    return dm


def doc_word_sparse(docs: ProcessedDocuments, vocab_size: int) -> Any:
    """``scipy.sparse.csr_matrix (D, V)`` of topic-word counts (for scikit-learn)."""
    import numpy as np
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for d, sents in enumerate(docs.topic_sentences):
        for s in sents:
            rows += [d] * len(s)
            cols += s
    data = np.ones(len(rows), dtype=np.float32)
    return csr_matrix((data, (rows, cols)), shape=(len(docs), vocab_size))


def lda_top_words(doc_word: Any, num_topics: int, top_k: int = 10, max_iter: int = 20, seed: int = 0
                  ) -> torch.Tensor:
    """Fit scikit-learn's ``LatentDirichletAllocation`` (batch variational Bayes) on a ``(D, V)``
    count matrix; ``(K, top_k)`` ids of each topic's top words."""
    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(n_components=num_topics, max_iter=max_iter, learning_method="batch",
                                    random_state=seed)
    lda.fit(doc_word)
    return torch.from_numpy(lda.components_.argsort(axis=1)[:, ::-1][:, :top_k].copy())


def coherence_report(task: TopicLMTask, dm: DocumentDataModule, reference: str = "test", top_k: int = 10,
                     lda: bool = False, lda_iter: int = 20, seed: int = 0) -> dict[str, Any]:
    """NPMI of the task's topics (and optionally LDA's) on the ``reference`` split's documents."""
    from speechlab.functional.topic import topic_npmi

    if not task.is_tcnlm:
        raise ValueError("coherence needs a TCNLM checkpoint (the LSTM baseline has no topics)")
    assert task.topic_vocab is not None and dm.topic_vocab is not None
    if task.topic_vocab != dm.topic_vocab:
        raise ValueError("the data's topic vocabulary differs from the checkpoint's: same data settings needed")
    v = len(task.topic_vocab)
    ref = dm.splits[reference].doc_term_matrix(v, binary=True)
    npmi = task.npmi(ref, top_k)
    report: dict[str, Any] = {"reference": reference, "reference_documents": int(ref.shape[0]),
                              "top_k": top_k, "tcnlm": {"npmi_mean": float(npmi.mean()),
                                                        "npmi": npmi.tolist(),
                                                        "topics": task.topic_words(top_k)}}
    if lda:
        top = lda_top_words(doc_word_sparse(dm.splits["train"], v), task.hparams.num_topics, top_k,
                            lda_iter, seed)
        lda_npmi = topic_npmi(top, ref)
        report["lda"] = {"npmi_mean": float(lda_npmi.mean()), "npmi": lda_npmi.tolist(),
                         "topics": [task.topic_vocab.decode(r) for r in top.tolist()], "max_iter": lda_iter}
    return report
