"""TCNLM and its LSTM baselines in one task (Wang et al., AISTATS 2018).

``lm_type: tcnlm``: a :class:`~speechlab.nn.topic.NeuralTopicModel` reads each sentence's
document-minus-sentence bag of words and gives topic proportions ``t`` (sampled in training, the
mean in evaluation) to a :class:`~speechlab.nn.factorized_lstm.TopicCompositionalLM`; the loss
is the joint negative log-likelihood ``LM NLL + ntm_weight * (bow NLL + KL)``, per target token.

``lm_type: lstm``: the plain :class:`~speechlab.nn.lm.RNNLanguageModel` on the same data and
metrics, of the same hidden size (``lstm_hidden_size: null``), or of the same number of
parameters as the TCNLM with this task's settings (``match_params: true``; topic model counted).

Protocols (data options of :class:`~speechlab.data.corpus.DocumentDataModule`): the TCNLM's
topic input is the document without the sentence (``topic_context: others``) or only its
preceding sentences (``preceding``); the LSTM reads single sentences, or, with ``stream: true``,
whole documents as consecutive sentence chunks with its state carried from one to the next
(truncated BPTT; reset at each document's first sentence). The targets are the same in every
protocol, so the perplexities compare.

Metrics: ``{train,val,test}/ppl`` = exp(summed token NLL / target tokens), ``</s>`` included
and ``<unk>`` counted as a token. ``speechlab test`` writes ``results.json`` (perplexity, and
for TCNLM each topic's top words and its NPMI on the test documents) to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from speechlab.data.corpus import BOS, EOS, PAD, UNK, doc_word_sparse, lda_topic_word_logits
from speechlab.data.vocab import WordVocab
from speechlab.functional.topic import topic_npmi
from speechlab.io import atomic_write_text
from speechlab.nn import count_parameters
from speechlab.nn.factorized_lstm import TopicCompositionalLM, compile_steps
from speechlab.nn.lm import RNNLanguageModel
from speechlab.nn.topic import NeuralTopicModel
from speechlab.tasks.base import OptimizerParameters, SpeechLabTask
from speechlab.tasks.rnnlm import Perplexity

log = logging.getLogger("speechlab.tasks")


def lstm_hidden_for_params(target: int, vocab_size: int, embed_dim: int, num_layers: int = 1) -> int:
    """Hidden size ``H`` of a :class:`RNNLanguageModel` (LSTM) whose parameter count is closest
    to ``target``."""
    def params(h: int) -> int:
        with torch.device("meta"):
            return count_parameters(RNNLanguageModel(vocab_size, embed_dim, h, num_layers, "lstm", 0.0))

    lo, hi = 1, 1
    while params(hi) < target:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(params(h) - target))


class TopicLMTask(SpeechLabTask):
    """TCNLM (``lm_type: tcnlm``) or a plain LSTM LM baseline (``lm_type: lstm``) on a
    :class:`~speechlab.data.corpus.DocumentDataModule`.

    Args:
        lm_type: ``"tcnlm"`` or ``"lstm"``.
        num_topics: topics ``T`` of the topic model (also the experts of the TC-LSTM).
        embed_dim, hidden_size, num_layers, dropout: the LM (TCNLM and equal-size LSTM).
        factor_size: rank ``F`` of the TC-LSTM's factorized weights.
        topic_init_std: initial spread of the TC-LSTM's topic factors (see
            :class:`~speechlab.nn.factorized_lstm.TCLSTMLayer`).
        topic_hidden, topic_layers, topic_dropout: the topic model's inference MLP (dropout
            0.2 there kept the embedded corpus's topics unlearnt after 500 steps: NPMI 0.00 vs
            0.29 without).
        topic_decoder: ``"product"`` (ProdLDA-style, default) or ``"mixture"`` (the paper's);
            see :mod:`speechlab.nn.topic`.
        ntm_weight: weight of the topic model's negative ELBO in the loss.
        topic_pretrain_steps: the first training steps train the topic model alone (loss = its
            negative ELBO per bag-of-words token; the LM is not run and gets no gradient), so
            the TC-LSTM is joined to topics that already mean something.
        kl_warmup_steps: the KL term of the topic model's ELBO is scaled by
            ``min(1, (step + 1) / kl_warmup_steps)`` in training (KL annealing; 0: always 1).
            Evaluation always uses the full ELBO.
        topic_init: the topic model's topic-word parameters ``phi (T, V_topic)`` at the start of
            training: ``"random"`` (``N(0, 0.02^2)``) or ``"lda"``: at ``setup("fit")``,
            scikit-learn LDA (batch variational Bayes, ``lda_max_iter`` iterations,
            ``random_state`` = the torch seed, ``torch.initial_seed()``, which
            ``seed_everything`` sets) is fit on the training documents' topic-word counts (one
            row per document, not per sentence), and ``phi`` becomes its log topic-word
            distributions, centred per row (:func:`~speechlab.data.corpus.lda_topic_word_logits`):
            ``softmax(phi_k)`` is LDA's ``beta_k``, so the topics (and their top words) start as
            LDA's. Not rescaled: in training the product decoder's batch norm divides each
            word's logit by its spread over the batch, so a scale factor on ``phi`` would not
            change the decoder's output (up to BN's eps), only how far one Adam step moves
            ``phi`` relative to its size; ``topic_word_lr_scale`` is the knob for that. Not
            applied to a task loaded from a checkpoint, nor again in a second ``fit`` of the
            same task; resuming (``fit(ckpt_path=...)``) fits LDA at setup, then the
            checkpoint's weights replace its result (the time of one LDA fit is lost; Lightning
            restores checkpoints after ``setup``). ``lm_type: tcnlm`` only.
        lda_max_iter: LDA's passes over the training documents (``topic_init: lda``).
        topic_source: where the TC-LSTM's topic mixture comes from: ``"model"`` (the neural
            topic model, trained jointly: the TCNLM) or ``"label"`` (an oracle: the document's
            class label one-hot, e.g. its newsgroup; uniform for a document without a known
            label; no topic model, the loss is the LM's). With ``"label"`` the topics are the
            training documents' labels (:attr:`DocumentDataModule.label_names`): ``num_topics``
            is set from the data at ``setup`` and the topic-model settings are unused. It bounds
            what a document-level topic signal of that granularity can give the LM.
        topic_word_lr_scale: the learning rate of ``phi`` is ``lr * topic_word_lr_scale`` (its
            own optimizer param group, same schedule), e.g. small to keep LDA's topics from
            drifting; 1: one group, as without it. ``lm_type: tcnlm`` only.
        lstm_hidden_size: hidden size of the ``lstm`` baseline (default ``hidden_size``).
        match_params: ``lstm`` only: choose ``lstm_hidden_size`` so that the baseline has as
            many parameters as the TCNLM (LM + topic model) with these settings.
        lr, weight_decay, warmup_steps, total_steps: AdamW with warm-up + cosine decay.
        compile: ``torch.compile`` the TC-LSTM step functions during ``fit`` (CUDA only;
            ignored on CPU).
        top_k: words per topic for the topic lists and NPMI.
        output_dir: where ``test`` writes ``results.json``; default the logger's folder.
        overwrite: let ``test`` replace an existing ``results.json`` (without it ``test``
            refuses to start; see :class:`speechlab.tasks.base.TestOutputs`). Not saved in checkpoints.
        lm_vocab_size, topic_vocab_size: set from the data at ``setup`` (and saved, so that a
            checkpoint rebuilds the model); give them only to build a model without data.
    """

    test_output_names = ("results.json",)

    def __init__(self, lm_type: Literal["tcnlm", "lstm"] = "tcnlm", num_topics: int = 50,
                 embed_dim: int = 300, hidden_size: int = 600, factor_size: int = 600,
                 num_layers: int = 1, dropout: float = 0.4, topic_init_std: float = 1.5,
                 topic_hidden: int = 256,
                 topic_layers: int = 2, topic_dropout: float = 0.0,
                 topic_decoder: Literal["product", "mixture"] = "product", ntm_weight: float = 1.0,
                 topic_pretrain_steps: int = 0, kl_warmup_steps: int = 0,
                 topic_init: Literal["random", "lda"] = "random", lda_max_iter: int = 20,
                 topic_word_lr_scale: float = 1.0, topic_source: Literal["model", "label"] = "model",
                 lstm_hidden_size: int | None = None, match_params: bool = False,
                 lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 200,
                 total_steps: int | None = None, compile: bool = False, top_k: int = 10,
                 output_dir: str | None = None, lm_vocab_size: int | None = None,
                 topic_vocab_size: int | None = None, overwrite: bool = False) -> None:
        super().__init__()
        if lm_type not in ("tcnlm", "lstm"):
            raise ValueError(f"lm_type must be 'tcnlm' or 'lstm', got {lm_type!r}")
        if match_params and lm_type != "lstm":
            raise ValueError("match_params applies to lm_type: lstm only")
        if topic_pretrain_steps < 0 or kl_warmup_steps < 0:
            raise ValueError("topic_pretrain_steps and kl_warmup_steps must be >= 0")
        if topic_pretrain_steps > 0 and lm_type != "tcnlm":
            raise ValueError("topic_pretrain_steps trains the topic model: it needs lm_type: tcnlm")
        if topic_init not in ("random", "lda"):
            raise ValueError(f"topic_init must be 'random' or 'lda', got {topic_init!r}")
        if lda_max_iter < 1 or topic_word_lr_scale < 0:
            raise ValueError("lda_max_iter must be >= 1 and topic_word_lr_scale >= 0")
        if (topic_init != "random" or topic_word_lr_scale != 1.0) and lm_type != "tcnlm":
            raise ValueError("topic_init and topic_word_lr_scale set the topic model's topic-word "
                             "parameters: they need lm_type: tcnlm")
        if topic_source not in ("model", "label"):
            raise ValueError(f"topic_source must be 'model' or 'label', got {topic_source!r}")
        if topic_source == "label" and (lm_type != "tcnlm" or topic_init != "random"
                                        or topic_pretrain_steps or topic_word_lr_scale != 1.0):
            raise ValueError("topic_source: label feeds the TC-LSTM the document's label (lm_type: "
                             "tcnlm) and has no topic model to initialise, pre-train or give a "
                             "learning rate (topic_init, topic_pretrain_steps, topic_word_lr_scale)")
        self.save_hyperparameters()
        self.lm: nn.Module | None = None
        self.topic_model: NeuralTopicModel | None = None
        self.lm_vocab: WordVocab | None = None
        self.topic_vocab: WordVocab | None = None
        self.label_names: list[str] | None = None  # topic_source: label
        self.ppl = nn.ModuleDict({s: Perplexity() for s in ("val", "test")})
        self._stream_state: dict[str, Any] = {}  # split -> a document stream's carried LSTM state
        # topic_word holds trained or initialized values (loaded from a checkpoint, or set from
        # LDA by an earlier setup): topic_init: lda leaves it alone
        self._topic_word_set = False
        if lm_vocab_size is not None and (lm_type == "lstm" or topic_vocab_size is not None):
            self.build(lm_vocab_size, topic_vocab_size)

    # -- model -------------------------------------------------------------------------------
    @property
    def is_tcnlm(self) -> bool:
        return self.hparams.lm_type == "tcnlm"

    @property
    def label_topics(self) -> bool:
        """Whether the topic mixture is the document's label (``topic_source: label``)."""
        return self.hparams.get("topic_source", "model") == "label"

    def _tcnlm_modules(self, lm_vocab_size: int, topic_vocab_size: int
                       ) -> tuple[TopicCompositionalLM, NeuralTopicModel | None]:
        """The TC-LSTM LM and the topic model (none with ``topic_source: label``)."""
        hp = self.hparams
        lm = TopicCompositionalLM(lm_vocab_size, hp.num_topics, hp.embed_dim, hp.hidden_size,
                                  hp.factor_size, hp.num_layers, hp.dropout, hp.topic_init_std)
        if self.label_topics:  # the label is the mixture
            return lm, None
        return lm, NeuralTopicModel(topic_vocab_size, hp.num_topics, hp.topic_hidden, hp.topic_layers,
                                    dropout=hp.topic_dropout, decoder=hp.topic_decoder)

    def build(self, lm_vocab_size: int, topic_vocab_size: int | None) -> None:
        """Create the modules for the given vocabulary sizes (recorded in ``hparams``)."""
        hp = self.hparams
        hp.lm_vocab_size, hp.topic_vocab_size = lm_vocab_size, topic_vocab_size
        if self.is_tcnlm:
            if topic_vocab_size is None:
                raise ValueError("TCNLM needs topic_vocab_size")
            self.lm, self.topic_model = self._tcnlm_modules(lm_vocab_size, topic_vocab_size)
            return
        if hp.lstm_hidden_size is None:
            if hp.match_params:
                if topic_vocab_size is None:
                    raise ValueError("match_params needs topic_vocab_size")
                with torch.device("meta"):
                    target = sum(count_parameters(m) for m in self._tcnlm_modules(lm_vocab_size, topic_vocab_size)
                                 if m is not None)
                hp.lstm_hidden_size = lstm_hidden_for_params(target, lm_vocab_size, hp.embed_dim,
                                                             hp.num_layers)
                log.info("equal-parameter LSTM: hidden %d for the TCNLM's %d parameters",
                         hp.lstm_hidden_size, target)
            else:
                hp.lstm_hidden_size = hp.hidden_size
        self.lm = RNNLanguageModel(lm_vocab_size, hp.embed_dim, hp.lstm_hidden_size, hp.num_layers,
                                   "lstm", hp.dropout)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        lda = stage == "fit" and self.hparams.topic_init == "lda" and not self._topic_word_set
        if dm is None or not hasattr(dm, "lm_vocab"):
            if self.lm is None:
                raise ValueError("TopicLMTask needs a DocumentDataModule (or lm_vocab_size and "
                                 "topic_vocab_size)")
            if lda:
                raise ValueError("topic_init: lda fits LDA on the training documents: it needs a "
                                 "DocumentDataModule")
            return
        if dm.lm_vocab is None:
            dm.setup(stage)
        if self.label_topics:
            self.set_labels(list(getattr(dm, "label_names", [])))
        self.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
        if lda:
            self.init_topic_word_from_lda(doc_word_sparse(dm.splits["train"], len(dm.topic_vocab)))

    def init_topic_word_from_lda(self, doc_word: Any) -> None:
        """Set the topic model's ``topic_word (T, V_topic)`` to
        :func:`~speechlab.data.corpus.lda_topic_word_logits` of ``doc_word`` (``(D, V_topic)``
        topic-word counts per training document, e.g. ``scipy.sparse``), with ``lda_max_iter``
        iterations and ``random_state = torch.initial_seed() mod 2^32`` (see ``topic_init``);
        logs the fit time."""
        assert self.topic_model is not None
        hp, seed = self.hparams, torch.initial_seed() % 2**32
        start = time.perf_counter()
        logits = lda_topic_word_logits(doc_word, hp.num_topics, hp.lda_max_iter, seed)
        with torch.no_grad():
            self.topic_model.topic_word.copy_(logits)
        self._topic_word_set = True
        log.info("topic_init lda: %d topics fit on %d documents x %d topic words, %d iterations, "
                 "seed %d: %.1f s", hp.num_topics, doc_word.shape[0], doc_word.shape[1],
                 hp.lda_max_iter, seed, time.perf_counter() - start)

    def optimizer_parameters(self) -> OptimizerParameters:
        """All parameters; with ``topic_word_lr_scale`` other than 1, two param groups: the
        topic model's ``topic_word`` at ``lr * topic_word_lr_scale`` and the rest at ``lr``."""
        scale = self.hparams.topic_word_lr_scale
        if scale == 1.0 or self.topic_model is None:
            return super().optimizer_parameters()
        phi = self.topic_model.topic_word
        return [{"params": [p for p in self.parameters() if p is not phi]},
                {"params": [phi], "lr_scale": scale}]

    def set_labels(self, names: list[str]) -> None:
        """``topic_source: label``: the topics are these labels (``num_topics = len(names)``,
        before the model is built; a built model must have as many)."""
        if not names:
            raise ValueError("topic_source: label needs labelled training documents (a JSONL "
                             "'label' field or a folder per label); these have none")
        if self.label_names is not None and self.label_names != names:
            raise ValueError(f"data/model mismatch: the model's labels are {self.label_names}, the "
                             f"data's {names}")
        if self.lm is None:
            if self.hparams.num_topics != len(names):
                log.info("topic_source label: %d topics, one per training label (not num_topics=%d)",
                         len(names), self.hparams.num_topics)
            self.hparams.num_topics = len(names)
        elif self.hparams.num_topics != len(names):
            raise ValueError(f"data/model mismatch: the model has {self.hparams.num_topics} topics, "
                             f"the data {len(names)} labels")
        self.label_names = names

    def set_vocabularies(self, lm_vocab: WordVocab, topic_vocab: WordVocab) -> None:
        """Adopt the data's vocabularies: build the model, or check that they fit it."""
        hp = self.hparams
        if self.lm is None:
            self.build(len(lm_vocab), len(topic_vocab))
        elif hp.lm_vocab_size != len(lm_vocab) or (self.is_tcnlm and hp.topic_vocab_size != len(topic_vocab)):
            raise ValueError(f"data/model mismatch: the model has LM/topic vocabularies of "
                             f"{hp.lm_vocab_size}/{hp.topic_vocab_size} words, the data "
                             f"{len(lm_vocab)}/{len(topic_vocab)}")
        if self.lm_vocab is not None and self.lm_vocab != lm_vocab:
            raise ValueError("data/model mismatch: the LM vocabulary differs from the checkpoint's")
        self.lm_vocab, self.topic_vocab = lm_vocab, topic_vocab

    def on_fit_start(self) -> None:
        if self.hparams.compile and self.device.type == "cuda" and self.is_tcnlm:
            compile_steps(True)

    def on_fit_end(self) -> None:
        if self.hparams.compile:
            compile_steps(False)  # evaluation batches have other shapes: no recompiles there

    # -- forward -----------------------------------------------------------------------------
    def topics(self, bow: torch.Tensor) -> torch.Tensor:
        """``bow (B, V_topic)`` → topic proportions ``(B, T)`` (mean of q(z|d); eval mode)."""
        assert self.topic_model is not None
        return self.topic_model(bow, sample=False).topics

    def compute(self, batch: dict[str, torch.Tensor], state: Any = None) -> dict[str, Any]:
        """Summed LM NLL (``lm_nll``; per row ``sentence_nll (B,)``), target tokens, and (TCNLM)
        summed topic-model NLL and KL of a batch; ``loss`` is their per-token total.

        A batch of a document stream (it has ``first (B,)``; LSTM only) continues ``state``, the
        ``out["state"]`` of the stream's previous batch (``None`` at its start), from zeros in
        the rows where ``first`` is True; ``out["state"]`` is the state after each row."""
        assert self.lm is not None
        tokens, targets = batch["tokens"], batch["targets"]
        out: dict[str, Any] = {}
        if self.is_tcnlm:
            if "first" in batch:
                raise ValueError("a document stream (data stream: true) is for lm_type: lstm; the "
                                 "TCNLM reads sentences (topic_context: preceding keeps out the future)")
            if self.label_topics:
                logits, _, _ = self.lm(tokens, label_topic_mixture(batch["label"], self.hparams.num_topics))
                return self._lm_loss(out, logits, targets)
            assert self.topic_model is not None
            ntm = self.topic_model(batch["bow"])
            out["ntm_nll"], out["kl"] = ntm.nll.sum(), ntm.kl.sum()
            neg_elbo = out["ntm_nll"] + self.kl_scale() * out["kl"]
            if self.pretraining_topics():  # the topic model alone
                out["loss"] = neg_elbo / batch["bow"].sum().clamp(min=1)
                return out
            logits, _, _ = self.lm(tokens, ntm.topics)
        elif "first" in batch:
            if state is not None:
                keep = (~batch["first"]).to(state[0].dtype)[None, :, None]
                state = tuple(s * keep for s in state)
            logits, _, out["state"] = self.lm(tokens, state, lengths=batch["lengths"])
        else:
            logits, _, _ = self.lm(tokens)
        return self._lm_loss(out, logits, targets, self.hparams.ntm_weight * neg_elbo if self.is_tcnlm else None)

    @staticmethod
    def _lm_loss(out: dict[str, Any], logits: torch.Tensor, targets: torch.Tensor,
                 extra: torch.Tensor | None = None) -> dict[str, Any]:
        """``out`` with the LM's summed NLL, per-sentence NLL and target tokens, and ``loss``
        = (LM NLL + ``extra``, e.g. the weighted topic-model ELBO) per target token."""
        n_tokens = (targets != -100).sum()
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              ignore_index=-100, reduction="none").view(targets.shape).sum(1)
        lm_nll = nll.sum()
        loss = lm_nll if extra is None else lm_nll + extra
        out.update(lm_nll=lm_nll, sentence_nll=nll, tokens=n_tokens, loss=loss / n_tokens.clamp(min=1))
        return out

    def pretraining_topics(self) -> bool:
        """Whether this training step trains the topic model alone (``topic_pretrain_steps``)."""
        return self.training and self.global_step < self.hparams.get("topic_pretrain_steps", 0)

    def kl_scale(self) -> float:
        """The KL term's weight at this step: ``min(1, (step + 1) / kl_warmup_steps)`` in
        training (1 without ``kl_warmup_steps``, and in evaluation)."""
        warmup = self.hparams.get("kl_warmup_steps", 0)
        if not self.training or warmup <= 0:
            return 1.0
        return min(1.0, (self.global_step + 1) / warmup)

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> dict[str, Any]:
        """:meth:`compute`, carrying a document stream's state from batch to batch of ``split``
        (detached: truncated BPTT); the carry is dropped at the start of each epoch."""
        out = self.compute(batch, self._stream_state.get(split))
        if "state" in out:
            self._stream_state[split] = tuple(s.detach() for s in out["state"])
        return out

    def on_train_epoch_start(self) -> None:
        self._stream_state.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._stream_state.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._stream_state.pop("test", None)

    # -- Lightning hooks ---------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._step(batch, "train")
        n = len(batch["tokens"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        if "lm_nll" in out:  # not while the topic model trains alone
            self.log("train/ppl", torch.exp(out["lm_nll"].detach() / out["tokens"].clamp(min=1)),
                     prog_bar=True, batch_size=n)
        if "kl" in out:  # the topic model's terms
            self.log("train/kl", out["kl"].detach() / n, batch_size=n)
            self.log("train/bow_nll", out["ntm_nll"].detach() / n, batch_size=n)
        return out["loss"]

    def _evaluate(self, batch: dict[str, torch.Tensor], split: str) -> None:
        out = self._step(batch, split)
        metric = self.ppl[split]
        metric.update(out["lm_nll"], out["tokens"])
        self.log(f"{split}/ppl", metric, prog_bar=split == "val", batch_size=len(batch["tokens"]))
        self.log(f"{split}/loss", out["loss"], batch_size=len(batch["tokens"]), sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        ppl = float(self.ppl["test"].compute())
        if not self.trainer.is_global_zero:
            return
        results: dict[str, Any] = {"lm_type": self.hparams.lm_type, "perplexity": ppl,
                                   "tokens": int(self.ppl["test"].tokens),
                                   "parameters": count_parameters(self)}
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "hparams") and "stream" in dm.hparams:
            results["protocol"] = {"topic_context": dm.hparams.topic_context, "stream": dm.hparams.stream}
        if self.label_topics:
            results["topic_source"] = "label"
            results["labels"] = self.label_names
        elif self.is_tcnlm:
            results["topics"] = self.topic_words(self.hparams.top_k)
            if dm is not None and getattr(dm, "splits", None):
                npmi = self.npmi(dm.splits["test"].doc_term_matrix(len(self.topic_vocab), binary=True))
                results["npmi"] = npmi.tolist()
                results["npmi_mean"] = float(npmi.mean())
        out = self.test_output_dir() / "results.json"
        atomic_write_text(out, json.dumps(results, indent=1) + "\n")
        print(f"\ntest perplexity {ppl:.2f} over {results['tokens']} tokens"
              + (f"; NPMI {results['npmi_mean']:.4f}" if "npmi_mean" in results else "")
              + f"\nresults: {out}")

    # -- topics ------------------------------------------------------------------------------
    def topic_words(self, k: int = 10) -> list[list[str]]:
        """The ``k`` most probable words of each topic (rows of beta)."""
        if self.label_topics:
            raise ValueError(f"this TCNLM's topics are its documents' labels (topic_source: label; "
                             f"no topic model, no topic words): {', '.join(self.label_names or [])}")
        if self.topic_model is None or self.topic_vocab is None:
            raise ValueError("topic words need a TCNLM with its topic vocabulary")
        return [self.topic_vocab.tokens(row) for row in self.topic_model.top_words(k).tolist()]

    def npmi(self, doc_word: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """``(T,)`` NPMI of each topic's top ``k`` words on a ``(D, V_topic)`` reference corpus."""
        assert self.topic_model is not None
        top = self.topic_model.top_words(k or self.hparams.top_k).cpu()
        return topic_npmi(top, doc_word.cpu())

    # -- checkpoints -------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict[str, Any]:
        """``lm_vocab`` and ``topic_vocab`` (``WordVocab.to_dict``), once the data set them."""
        state = super().extra_checkpoint_state()
        if self.lm_vocab is not None:
            state["lm_vocab"] = self.lm_vocab.to_dict()
        if self.topic_vocab is not None:
            state["topic_vocab"] = self.topic_vocab.to_dict()
        if self.label_names is not None:
            state["label_names"] = list(self.label_names)
        return state

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_extra_checkpoint_state(state)
        self._topic_word_set = True  # the checkpoint's weights follow: no topic_init over them
        if "lm_vocab" in state:
            self.lm_vocab = WordVocab.from_dict(state["lm_vocab"])
        if "topic_vocab" in state:
            self.topic_vocab = WordVocab.from_dict(state["topic_vocab"])
        if "label_names" in state:
            self.label_names = list(state["label_names"])


def label_topic_mixture(labels: torch.Tensor, num_topics: int) -> torch.Tensor:
    """``labels (B,)`` label ids → ``(B, num_topics)`` topic mixtures: one-hot, uniform for a
    label id outside ``[0, num_topics)`` (``-1``: no known label)."""
    known = (labels >= 0) & (labels < num_topics)
    onehot = F.one_hot(labels.clamp(0, num_topics - 1), num_topics).float()
    return torch.where(known[:, None], onehot, torch.full_like(onehot, 1.0 / num_topics))


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
    token = torch.full((num,), vocab.id_of(BOS), dtype=torch.long, device=device)
    t = None if topics is None else topics.to(device).float().expand(num, -1)
    banned = [vocab.id_of(PAD), vocab.id_of(BOS)] + ([] if allow_unk else [vocab.id_of(UNK)])
    eos = vocab.id_of(EOS)
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
        sentences.append(vocab.decode(words))
    return sentences
