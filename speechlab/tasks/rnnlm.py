"""``RNNLMTask``: trains :class:`~speechlab.nn.lm.RNNLanguageModel` on sentences from
:class:`~speechlab.data.textlm.TextDataModule`; reports perplexity; its checkpoint is what the
seq2seq task loads as the (frozen) LM of shallow, deep and cold fusion. ``speechlab test`` writes
``results.json`` (perplexity) to ``output_dir``.

Checkpoint contract (read by :func:`load_language_model`): a Lightning checkpoint whose
``state_dict`` holds the LM under ``lm.``, with ``checkpoint["speechlab"]["lm_config"]`` (the
constructor arguments of :class:`RNNLanguageModel`) and ``["vocab"]`` (the vocabulary's
``to_dict``); checkpoints of earlier versions (``speechlab_lm_config``, ``speechlab_vocab``)
are read too (:func:`~speechlab.tasks.base.checkpoint_state`). A plain dict ``{"config",
"vocab", "state_dict"}`` (what the seq2seq task embeds in its own checkpoints) is accepted as
well.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from speechlab.data.subword import SentencePieceVocab
from speechlab.data.text import DEFAULT_CHARS, CharVocab
from speechlab.data.textlm import IGNORE_INDEX
from speechlab.data.vocab import Vocab, vocab_from_dict
from speechlab.io import atomic_write_text
from speechlab.nn.lm import RNNLanguageModel
from speechlab.tasks.base import CheckpointError, SpeechLabTask, checkpoint_state


class LMCheckpointError(CheckpointError):
    """An LM checkpoint that cannot be used; the message names the file and the reason (the
    ``speechlab`` command reports it in one line)."""


class Perplexity(Metric):
    """Corpus perplexity ``exp(sum NLL / sum tokens)`` (summed, DDP-reduced; never a mean of
    per-batch perplexities)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, tokens: torch.Tensor | int) -> None:
        self.nll = self.nll + nll_sum.detach().double()  # not in place: states may be inference tensors
        self.tokens = self.tokens + int(tokens)

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.tokens.clamp(min=1)).float()


def lm_nll(model: RNNLanguageModel, inputs: torch.Tensor, targets: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood (fp32) and the number of scored tokens of a batch
    ``inputs/targets (B, L)`` (targets padded with ``IGNORE_INDEX``)."""
    logits, _, _ = model(inputs)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (targets != IGNORE_INDEX).sum()


class RNNLMTask(SpeechLabTask):
    """Character (or SentencePiece) LSTM/GRU language model.

    Args:
        vocab: characters in id order (id 0 = blank = ``<eos>``/``<sos>``); must equal the
            data's. Ignored with ``sentencepiece_model``.
        sentencepiece_model: ``.model`` file of a subword LM (must equal the data's).
        embed_dim, hidden_size, num_layers, rnn_type, dropout, tie_weights: see
            :class:`~speechlab.nn.lm.RNNLanguageModel`.
        lr, weight_decay, warmup_steps, total_steps: AdamW with linear warm-up + cosine decay
            (``total_steps`` defaults to ``trainer.max_steps``).
        output_dir: where ``test`` writes ``results.json`` (perplexity, tokens); default the
            logger's folder.
        overwrite: let ``test`` replace an existing ``results.json`` (without it ``test``
            refuses to start; see :class:`speechlab.tasks.base.TestOutputs`). Not saved in checkpoints.
    """

    test_output_names = ("results.json",)

    def __init__(self, vocab: str = "".join(DEFAULT_CHARS), sentencepiece_model: str | None = None,
                 embed_dim: int = 64, hidden_size: int = 256, num_layers: int = 2,
                 rnn_type: Literal["lstm", "gru"] = "lstm", dropout: float = 0.1,
                 tie_weights: bool = False, lr: float = 2e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 100, total_steps: int | None = None,
                 output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        if sentencepiece_model is not None:  # checkpoints name it by absolute path (any cwd)
            self.hparams.sentencepiece_model = os.path.abspath(sentencepiece_model)
        self.vocab: Vocab = (SentencePieceVocab.load(sentencepiece_model) if sentencepiece_model
                             else CharVocab(list(vocab)))
        self.lm_config = {"vocab_size": len(self.vocab), "embed_dim": embed_dim,
                          "hidden_size": hidden_size, "num_layers": num_layers,
                          "rnn_type": rnn_type, "dropout": dropout, "tie_weights": tie_weights}
        self.lm = RNNLanguageModel(**self.lm_config)
        self.ppl = torch.nn.ModuleDict({s: Perplexity() for s in ("val", "test")})

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "vocab", self.vocab) != self.vocab:
            raise ValueError(f"recipe mismatch: model vocabulary {self.vocab!r} != data vocabulary "
                             f"{dm.vocab!r}; set the same model.init_args.vocab and data.init_args.vocab")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        nll, tokens = lm_nll(self.lm, batch["inputs"], batch["targets"])
        loss = nll / tokens.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["lengths"]))
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        nll, tokens = lm_nll(self.lm, batch["inputs"], batch["targets"])
        n = len(batch["lengths"])
        self.log(f"{split}/loss", nll / tokens.clamp(min=1), batch_size=n, sync_dist=True)
        self.ppl[split].update(nll, tokens)
        self.log(f"{split}/ppl", self.ppl[split], batch_size=n, prog_bar=split == "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        ppl = float(self.ppl["test"].compute())
        if not self.trainer.is_global_zero:
            return
        results = {"perplexity": ppl, "tokens": int(self.ppl["test"].tokens),
                   "vocab_size": len(self.vocab)}
        out = self.test_output_dir() / "results.json"
        atomic_write_text(out, json.dumps(results, indent=1) + "\n")
        print(f"\ntest perplexity {ppl:.3f} over {results['tokens']} tokens\nresults: {out}")

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """``vocab`` (the vocabulary's ``to_dict``, a SentencePiece model embedded) and
        ``lm_config`` (the constructor arguments of :class:`RNNLanguageModel`)."""
        return {**super().extra_checkpoint_state(), "vocab": self.vocab.to_dict(),
                "lm_config": dict(self.lm_config)}


def lm_bundle(lm: RNNLanguageModel, config: dict[str, Any], vocab: Vocab) -> dict[str, Any]:
    """The self-contained LM record ``{"config", "vocab", "state_dict"}`` (CPU tensors)."""
    return {"config": dict(config), "vocab": vocab.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in lm.state_dict().items()}}


def language_model_from_bundle(bundle: dict[str, Any], where: str = "LM record"
                               ) -> tuple[RNNLanguageModel, dict[str, Any], Vocab]:
    """Rebuild ``(lm, config, vocab)`` from :func:`lm_bundle`'s record."""
    try:
        config = dict(bundle["config"])
        vocab = vocab_from_dict(bundle["vocab"])
        lm = RNNLanguageModel(**config)
        lm.load_state_dict(bundle["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise LMCheckpointError(f"{where}: not a usable RNN LM ({type(e).__name__}: {e})") from None
    if config.get("vocab_size") != len(vocab):
        raise LMCheckpointError(f"{where}: LM has {config.get('vocab_size')} outputs but its "
                                f"vocabulary {vocab!r} has {len(vocab)}")
    return lm, config, vocab


def load_language_model(path: str | Path, expected_vocab: Vocab | None = None
                        ) -> tuple[RNNLanguageModel, dict[str, Any], Vocab]:
    """Load an :class:`RNNLMTask` checkpoint (:meth:`RNNLMTask.load
    <speechlab.tasks.base.SpeechLabTask.load>`), a saved :func:`lm_bundle`, or the LM embedded in
    a fused model's checkpoint (a :class:`~speechlab.tasks.seq2seq.Seq2SeqTask` one:
    ``checkpoint["speechlab"]["lm"]``) as ``(lm, config, vocab)``; the LM is returned in eval mode.

    Raises :class:`LMCheckpointError` naming ``path`` when the file is missing, is not an RNN LM
    checkpoint, or its vocabulary differs from ``expected_vocab`` (the seq2seq model's: the LM
    and the decoder must share one output space).
    """
    path = Path(path)
    if not path.is_file():
        raise LMCheckpointError(f"{path}: LM checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise LMCheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(ckpt, dict) and {"config", "vocab", "state_dict"} <= ckpt.keys():
        lm, config, vocab = language_model_from_bundle(ckpt, str(path))
    else:
        lm, config, vocab = _checkpoint_lm(ckpt, path)
    if expected_vocab is not None and vocab != expected_vocab:
        raise LMCheckpointError(
            f"{path}: LM vocabulary {vocab!r} does not match the seq2seq vocabulary "
            f"{expected_vocab!r}; the LM and the decoder must share one output space "
            "(train the LM with the same data.init_args.vocab)")
    return lm.eval(), config, vocab


def _checkpoint_lm(ckpt: Any, path: Path) -> tuple[RNNLanguageModel, dict[str, Any], Vocab]:
    """``(lm, config, vocab)`` of the task checkpoint ``ckpt`` (read from ``path``): the LM a
    fused seq2seq checkpoint embeds, or the :class:`RNNLMTask` it holds."""
    how = "train one with speechlab fit --config recipes/tiny/rnnlm.yaml"
    try:
        state = checkpoint_state(ckpt, str(path))
    except CheckpointError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise LMCheckpointError(f"{path}: not an RNNLMTask checkpoint ({reason}); {how}") from None
    if isinstance(state.get("lm"), dict):
        return language_model_from_bundle(state["lm"], str(path))
    if "lm_config" not in state:
        raise LMCheckpointError(f"{path}: not an RNNLMTask checkpoint (no lm_config); {how}")
    try:
        task = RNNLMTask.load(path)
    except CheckpointError as e:
        raise LMCheckpointError(str(e)) from None
    return task.lm, dict(task.lm_config), task.vocab


def perplexity(model: RNNLanguageModel, batches: list[dict[str, Any]]) -> float:
    """Perplexity of ``model`` over LM batches (eval mode, no grad) — for notebooks/tests."""
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for b in batches:
            s, n = lm_nll(model, b["inputs"], b["targets"])
            nll, tokens = nll + float(s), tokens + int(n)
    model.train(was_training)
    return math.exp(nll / max(tokens, 1))
