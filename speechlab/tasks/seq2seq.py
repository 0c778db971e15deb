"""``Seq2SeqTask``: attention encoder–decoder ASR with LM fusion (none, shallow, deep, cold).

- ``none``: the attention model alone.
- ``shallow``: trained like ``none``; at search time ``log P + β log P_LM`` (``lm_weight = β``).
- ``deep`` (Gulcehre et al. 2015): the LM's hidden state enters through a scalar gate; meant to be
  fused *after* both models are trained: ``init_checkpoint`` loads a trained ``none`` model
  (its output layer is widened with zero weights for the LM part, so fusion starts exactly at
  the baseline) and ``freeze_seq2seq`` trains only the gate and the output DNN.
- ``cold`` (Sriram et al. 2017): the LM's normalized logits enter through a vector gate (bias
  −1) and the seq2seq model is trained from scratch with the LM.

Training aids for every fusion mode: joint CTC–attention training (Watanabe et al. 2017; a CTC
head on the shared encoder, loss ``(1 − λ)·CE + λ·CTC`` with ``ctc_weight = λ``), which teaches
the encoder monotonic alignments early, and encoder initialization from a trained
:class:`~speechlab.tasks.ctc.CTCTask` checkpoint (``init_checkpoint``; its head initializes the
CTC head).

The LM (an :class:`~speechlab.tasks.rnnlm.RNNLMTask` checkpoint, ``lm_checkpoint``) is frozen: it
is deliberately *not* a registered submodule, so it is not in ``parameters()`` (the optimizer
never sees it), not in ``state_dict()``, and ``trainer.fit`` switching modules to train mode does
not reach it — it stays in eval mode with ``requires_grad=False``. It follows the task's device
and dtype (``_apply``). Checkpoints embed a copy (``checkpoint["speechlab"]["lm"]``), so testing
needs no LM file; ``test_lm_checkpoint`` swaps in another LM (e.g. another domain's) at test time
without retraining — it must share the vocabulary (and, for deep fusion, the hidden size).

Two more search-time terms, for any fusion mode: a KenLM character n-gram (``ngram_lm``, a
``speechlab lm ngram --unit char`` model, weight ``ngram_weight``) added like the RNN LM's
shallow fusion, and the decoder's zero-attention internal LM (``ilm_weight = λ``, fusion
none/shallow) subtracted: ``log P_dec + β log P_LM + β_ng log P_ngram − λ log P_ILM`` per token
(:mod:`speechlab.decode.beam_search`, ``docs/cold_fusion.md``). The n-gram model is not embedded
in checkpoints: its absolute path is saved, and every option can be given at test time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from speechlab.data.features import SpecAugment
from speechlab.data.text import DEFAULT_CHARS
from speechlab.data.textlm import EOS, IGNORE_INDEX, teacher_forcing_pairs
from speechlab.decode.beam_search import GreedyDetails, Hypothesis, decode, greedy_search
from speechlab.decode.ngram_fusion import CharNgramScorer
from speechlab.functional.ctc import ctc_loss_from_logits
from speechlab.nn.decoder import AttentionDecoder, AttentionDecoderConfig, Memory
from speechlab.nn.encoders import SpeechEncoder, SpeechEncoderConfig
from speechlab.nn.fusion import freeze
from speechlab.nn.lm import RNNLanguageModel
from speechlab.tasks.asr import ASRTask
from speechlab.tasks.base import checkpoint_state
from speechlab.tasks.rnnlm import (
    LMCheckpointError,
    language_model_from_bundle,
    lm_bundle,
    load_language_model,
)

log = logging.getLogger("speechlab.tasks")


def scheduled_sampling_prob(step: int, max_prob: float, start: int, ramp: int) -> float:
    """Probability of feeding the model's own prediction: 0 before ``start``, then linear to
    ``max_prob`` over ``ramp`` steps."""
    if max_prob <= 0 or step < start:
        return 0.0
    return max_prob * min(1.0, (step - start + 1) / max(1, ramp))


class Seq2SeqTask(ASRTask):
    """Attention seq2seq ASR (see the module docstring).

    Args:
        vocab: output characters (id 0 = ``<eos>``/``<sos>``; same layout as the LM).
        encoder: shared encoder hyper-parameters (as the CTC models').
        decoder: attention decoder hyper-parameters.
        fusion: ``none``, ``shallow``, ``deep`` or ``cold``.
        lm_checkpoint: the RNN LM (needed by ``shallow``, ``deep``, ``cold``).
        test_lm_checkpoint: another LM swapped in for validate/test/predict (and whenever a
            checkpoint is loaded), without retraining; with ``fusion: none`` it is the LM of
            shallow fusion (``lm_weight``), so any trained model can be tested with shallow fusion.
        lm_weight: shallow fusion weight β at search time (also usable on top of deep/cold);
            like the other search options, ``speechlab test --ckpt_path … --model.init_args.X``
            overrides the checkpoint's value.
        ngram_lm: a KenLM character n-gram (ARPA or binary, ``speechlab lm ngram --unit char``)
            for shallow fusion at search time; saved by absolute path, not embedded.
        ngram_weight: its weight β_ng (needs ``ngram_lm``).
        ilm_weight: λ of internal LM estimation: the decoder's zero-attention LM
            (:meth:`~speechlab.nn.decoder.AttentionDecoder.ilm_step`) subtracted at search time,
            ``− λ log P_ILM``; fusion none/shallow only.
        beam_size: beams for test/predict (1 = greedy).
        val_beam_size: beams for validation during fit.
        length_penalty: α of the final ranking ``score / length^α``.
        max_len_ratio: max-length guard, output tokens per encoder frame.
        label_smoothing: cross-entropy label smoothing.
        scheduled_sampling: final probability of feeding back the model's own argmax.
        scheduled_sampling_start, scheduled_sampling_ramp: its schedule (steps).
        init_checkpoint: a checkpoint to start from: a Seq2SeqTask (deep fusion: the trained
            baseline; parameters whose shapes match are loaded, the output layer is widened) or
            a CTCTask (the encoder, and its head as the CTC head when ``ctc_weight > 0``).
        freeze_seq2seq: train only the fusion gate and the output DNN (deep fusion).
        ctc_weight: λ of joint CTC–attention training, in [0, 1): loss ``(1 − λ)·CE + λ·CTC``
            of a CTC head (blank = id 0) on the encoder; 0 = attention only (no head). Search
            uses the attention decoder alone.
        spec_augment: SpecAugment on training batches.
        lr, weight_decay, warmup_steps, total_steps, output_dir, overwrite: see :class:`ASRTask`.
    """

    #: training-start options: a trained model's checkpoint saves them as None (the run started
    #: from them; rebuilding the model from the checkpoint must not load them again). Search-time
    #: options (beam size, LM weight, output_dir, ...) are saved; ``speechlab test --ckpt_path``
    #: takes them from the command line when it gives them (:class:`~speechlab.cli.lightning.SpeechLabCLI`).
    saved_as_none = ("init_checkpoint",)

    def __init__(self, vocab: str = "".join(DEFAULT_CHARS),
                 encoder: SpeechEncoderConfig | None = None,
                 decoder: AttentionDecoderConfig | None = None,
                 fusion: Literal["none", "shallow", "deep", "cold"] = "none",
                 lm_checkpoint: str | None = None, test_lm_checkpoint: str | None = None,
                 lm_weight: float = 0.0, ngram_lm: str | None = None,
                 ngram_weight: float = 0.0, ilm_weight: float = 0.0, beam_size: int = 4, val_beam_size: int = 1,
                 length_penalty: float = 1.0, max_len_ratio: float = 1.0,
                 label_smoothing: float = 0.1, scheduled_sampling: float = 0.0,
                 scheduled_sampling_start: int = 0, scheduled_sampling_ramp: int = 1000,
                 init_checkpoint: str | None = None, freeze_seq2seq: bool = False,
                 ctc_weight: float = 0.0, spec_augment: bool = True, lr: float = 2e-3,
                 weight_decay: float = 1e-2,
                 warmup_steps: int = 200, total_steps: int | None = None,
                 output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(vocab, lr, weight_decay, warmup_steps, total_steps, output_dir, overwrite)
        self.save_hyperparameters()
        if lm_checkpoint is not None:  # checkpoints name the LM by absolute path (any cwd)
            self.hparams.lm_checkpoint = os.path.abspath(lm_checkpoint)
        if fusion != "none" and lm_checkpoint is None:
            raise ValueError(f"fusion={fusion!r} needs model.init_args.lm_checkpoint (an RNNLMTask "
                             "checkpoint: speechlab fit --config recipes/tiny/rnnlm.yaml)")
        if fusion == "shallow" and lm_weight == 0.0:
            log.warning("fusion=shallow with lm_weight=0: the LM does not change the search")
        if ngram_weight != 0.0 and ngram_lm is None:
            raise ValueError(f"ngram_weight={ngram_weight} needs model.init_args.ngram_lm (a "
                             "KenLM character model: speechlab lm ngram --unit char)")
        self.ngram: CharNgramScorer | None = None
        if ngram_lm is not None:
            self.hparams.ngram_lm = os.path.abspath(ngram_lm)
            self.ngram = CharNgramScorer(self.hparams.ngram_lm, self.vocab.chars)
        self.__dict__["_lm"] = None  # not a submodule: frozen, outside parameters()/state_dict()
        self._lm_config: dict[str, Any] = {}
        self._lm_source = ""
        if lm_checkpoint is not None:
            self._set_lm(*load_language_model(lm_checkpoint, self.vocab)[:2], source=lm_checkpoint)
        self.encoder = SpeechEncoder(encoder or SpeechEncoderConfig())
        lm_hidden = self._lm_config.get("hidden_size")
        self.decoder = AttentionDecoder(len(self.vocab), self.encoder.output_dim, decoder,
                                        fusion=fusion, lm_hidden_size=lm_hidden)
        if ilm_weight != 0.0:
            self.decoder.check_ilm()
        if not 0.0 <= ctc_weight < 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1), got {ctc_weight}")
        self.ctc_head = (torch.nn.Linear(self.encoder.output_dim, len(self.vocab))
                         if ctc_weight > 0 else None)
        self.spec_augment = SpecAugment() if spec_augment else None
        if init_checkpoint is not None:
            self.load_baseline(init_checkpoint)
        if freeze_seq2seq:
            if self.decoder.fusion_layer is None:
                raise ValueError("freeze_seq2seq trains only the fusion gate and output DNN: it "
                                 "needs fusion: deep or cold")
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith(("decoder.fusion_layer.", "decoder.output.")))

    # -- the frozen LM -------------------------------------------------------------------
    @property
    def lm(self) -> RNNLanguageModel | None:
        """The frozen LM (eval mode, no grad), or None with ``fusion: none``."""
        return self.__dict__["_lm"]

    def _set_lm(self, lm: RNNLanguageModel, config: dict[str, Any], source: str) -> None:
        old = self._lm_config.get("hidden_size")
        if (self.hparams.fusion == "deep" and old is not None
                and config.get("hidden_size") != old):
            raise LMCheckpointError(
                f"{source}: deep fusion was trained with an LM of hidden size {old}; this LM has "
                f"{config.get('hidden_size')} (cold and shallow fusion accept any LM with the vocabulary)")
        ref = next(iter(self.parameters()), None) if "encoder" in self._modules else None
        if ref is not None:
            lm = lm.to(device=ref.device)
        self.__dict__["_lm"] = freeze(lm)
        self._lm_config = dict(config)
        self._lm_source = source
        log.info("language model: %s (%s)", source, config)

    def swap_language_model(self, path: str | Path) -> None:
        """Replace the fused LM by another RNNLMTask checkpoint (same vocabulary), no retraining.
        With ``fusion: none``/``shallow`` the LM is used only by shallow fusion (``lm_weight``)."""
        lm, config, _ = load_language_model(path, self.vocab)
        self._set_lm(lm, config, str(path))

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        super()._apply(fn, recurse)
        if self.lm is not None:  # the unregistered LM follows .to()/.cuda()/.double()
            self.lm._apply(fn)
        return self

    def setup(self, stage: str) -> None:
        super().setup(stage)
        swap = self.hparams.test_lm_checkpoint
        if stage in ("validate", "test", "predict") and swap and self._lm_source != swap:
            self.swap_language_model(swap)

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """``vocab``, and ``lm``: the frozen LM's record (:func:`lm_bundle` plus its ``source``),
        so that testing needs no LM file."""
        state = super().extra_checkpoint_state()
        if self.lm is not None:
            state["lm"] = {**lm_bundle(self.lm, self._lm_config, self.vocab), "source": self._lm_source}
        return state

    def embedded_init_args(self) -> list[str]:
        """``lm_checkpoint`` once there is an LM: rebuilt from this file (speechlab test
        --ckpt_path), the LM comes from here, not from the training-time path (which may be
        gone or retrained)."""
        return ["lm_checkpoint"] if self.lm is not None else []

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        """``test_lm_checkpoint`` when given, else the checkpoint's embedded LM."""
        super().load_extra_checkpoint_state(state)
        swap = self.hparams.test_lm_checkpoint
        if swap:
            self.swap_language_model(swap)
        elif isinstance(state.get("lm"), dict):
            bundle = state["lm"]
            lm, config, _ = language_model_from_bundle(bundle, "checkpoint's embedded LM")
            self._set_lm(lm, config, bundle.get("source", "checkpoint"))

    def load_baseline(self, path: str | Path) -> None:
        """Initialize from a trained Seq2SeqTask or CTCTask checkpoint: tensors of equal name
        and shape are copied (a CTCTask's ``head`` goes to ``ctc_head``); the first output
        layer, widened by fusion, gets the baseline's weights for the decoder state and zeros
        for the LM part (so the fused model starts as the baseline)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        vocab = checkpoint_state(ckpt, str(path)).get("vocab") or {}
        if vocab.get("chars") != list(self.vocab.chars):
            raise ValueError(f"{path}: vocabulary {vocab} differs from the model's {self.vocab!r}")
        own = self.state_dict()
        loaded, widened = 0, []
        with torch.no_grad():
            for name, value in ckpt["state_dict"].items():
                if name.startswith("head.") and "decoder.embedding.weight" not in ckpt["state_dict"]:
                    name = "ctc_" + name  # a CTCTask's output layer -> the joint CTC head
                if name not in own:
                    continue
                target = own[name]
                if target.shape == value.shape:
                    target.copy_(value)
                    loaded += 1
                elif (name == "decoder.output.0.weight" and target.shape[0] == value.shape[0]
                      and target.shape[1] > value.shape[1]):
                    target.zero_()
                    target[:, : value.shape[1]] = value
                    widened.append(name)
        if loaded == 0:
            raise ValueError(f"{path}: no parameter matches this model; is it a Seq2SeqTask checkpoint?")
        log.info("initialized from %s: %d tensors copied, widened %s", path, loaded, widened)

    # -- model -----------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return self.encoder.frame_rate

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """``features (B, T, F)`` → the decoder's :class:`Memory` (SpecAugment when training)."""
        if self.spec_augment is not None and self.training:
            features = self.spec_augment(features)
        enc, enc_lens = self.encoder(features, lengths)
        return self.decoder.prepare_memory(enc, enc_lens)

    def sampling_prob(self) -> float:
        hp = self.hparams
        if not self.training:
            return 0.0
        return scheduled_sampling_prob(self.global_step, hp.scheduled_sampling,
                                       hp.scheduled_sampling_start, hp.scheduled_sampling_ramp)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Attention cross-entropy, or ``(1 − λ)·CE + λ·CTC`` with a CTC head (``ctc_weight``);
        the parts are logged as ``<split>/att_loss`` and ``<split>/ctc_loss``."""
        memory = self.encode(batch["features"], batch["feature_lens"])
        inputs, outputs = teacher_forcing_pairs(batch["targets"], batch["target_lens"], EOS)
        out = self.decoder(memory, inputs, lm=self.lm if self.decoder.uses_lm else None,
                           sampling_prob=self.sampling_prob())
        att = F.cross_entropy(out.logits.float().flatten(0, 1), outputs.flatten(),
                              ignore_index=IGNORE_INDEX,
                              label_smoothing=self.hparams.label_smoothing if self.training else 0.0)
        if self.ctc_head is None:
            return att
        if self.training:
            self.note_infeasible(batch, memory.lengths)  # counted; zero_infinity skips them
        ctc = self.ctc_loss(memory.values, memory.lengths, batch["targets"], batch["target_lens"])
        if self._trainer is not None:
            split = "train" if self.training else ("val" if self.trainer.validating or
                                                   self.trainer.sanity_checking else "test")
            n = len(batch["targets"])
            self.log(f"{split}/att_loss", att.detach(), batch_size=n)
            self.log(f"{split}/ctc_loss", ctc.detach(), batch_size=n)
        lam = self.hparams.ctc_weight
        return (1.0 - lam) * att + lam * ctc

    def ctc_loss(self, encoded: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                 target_lens: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss (fp32, ``zero_infinity``) of the CTC head over ``encoded (B, T', D)``
        for character ``targets (B, S)`` (blank = 0)."""
        if self.ctc_head is None:
            raise ValueError("no CTC head: set ctc_weight > 0")
        return ctc_loss_from_logits(self.ctc_head(encoded), lengths, targets, target_lens,
                                    self.vocab.blank)

    def search(self, batch: dict[str, Any], beam_size: int | None = None,
               lm_weight: float | None = None) -> list[Hypothesis]:
        """Best hypothesis per utterance (greedy for beam 1)."""
        hp = self.hparams
        beam = hp.beam_size if beam_size is None else beam_size
        weight = hp.lm_weight if lm_weight is None else lm_weight
        memory = self.encode(batch["features"], batch["feature_lens"])
        lm = self.lm if (self.decoder.uses_lm or weight != 0.0) else None
        return decode(self.decoder, memory, lm, weight, beam, hp.length_penalty, hp.max_len_ratio,
                      eos=EOS, **self.extra_terms())

    def extra_terms(self) -> dict[str, Any]:
        """The n-gram and internal-LM options of the search (keyword arguments of
        :func:`~speechlab.decode.beam_search.beam_search` / ``greedy_search``)."""
        return {"ngram": self.ngram, "ngram_weight": self.hparams.ngram_weight,
                "ilm_weight": self.hparams.ilm_weight}

    def greedy_details(self, batch: dict[str, Any]) -> tuple[list[str], GreedyDetails]:
        """Greedy transcripts with attention alignments and fusion gates (for analysis)."""
        memory = self.encode(batch["features"], batch["feature_lens"])
        hyps, details = greedy_search(self.decoder, memory, self.lm, self.hparams.lm_weight,
                                      self.hparams.max_len_ratio, eos=EOS, return_details=True,
                                      **self.extra_terms())
        return [self.vocab.decode(h.tokens) for h in hyps], details

    def transcribe(self, batch: dict[str, Any]) -> list[str]:
        trainer = self._trainer
        during_fit = trainer is not None and not (trainer.testing or trainer.predicting)
        beam = self.hparams.val_beam_size if during_fit else self.hparams.beam_size
        return [self.vocab.decode(h.tokens) for h in self.search(batch, beam_size=beam)]
