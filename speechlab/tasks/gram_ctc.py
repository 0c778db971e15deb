"""Gram-CTC acoustic model (Liu et al., ICML 2017): the CTC baseline's encoder with an output
layer over a :class:`~speechlab.data.grams.GramSet` (blank + characters + longer n-grams),
trained with :func:`speechlab.functional.gram_ctc_loss`.

Options of the paper: the gram set is handpicked (``speechlab grams select``) or automatically
refined (``speechlab grams refine``); joint training adds ``λ·CTC`` on a second, unigram head
(``ctc_weight``, with a schedule); the encoder's frame ``stride`` (2/4/8) tests the claim that
multi-character outputs allow fewer frames. Decoding: greedy (argmax, collapse over gram ids) or
prefix beam search over grams with an optional KenLM (``decoding``), in ``test``/``predict``;
validation always decodes greedily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch

from speechlab.data.grams import GramSet, min_frames
from speechlab.data.manifests import manifest_texts
from speechlab.data.text import DEFAULT_CHARS

# GramDecoding is imported here also so that checkpoints that pickled it as
# speechlab.tasks.gram_ctc.GramDecoding (before it moved to decode/) still load
from speechlab.decode import prefix_beam_search
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from speechlab.decode.prefix_beam import GramDecoding, PrefixBeamSearch
from speechlab.errors import InputError
from speechlab.functional.gram_ctc import gram_ctc_loss
from speechlab.functional.gram_decode import gram_greedy_decode
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.tasks.ctc import CTCTask

log = logging.getLogger("speechlab.tasks")



def ctc_weight_at(step: int, weight: float, schedule: str, steps: int) -> float:
    """λ of the joint CTC loss at ``step``: ``constant``; ``linear`` decay to 0 over ``steps``;
    ``step``: λ until ``steps``, then 0."""
    if weight == 0.0:
        return 0.0
    if schedule == "constant":
        return weight
    if schedule == "linear":
        return weight * max(0.0, 1.0 - step / max(1, steps))
    if schedule == "step":
        return weight if step < steps else 0.0
    raise ValueError(f"ctc_weight_schedule must be constant, linear or step, got {schedule!r}")


class GramCTCTask(CTCTask):
    """Gram-CTC: :class:`CTCTask`'s encoder (and SpecAugment, optimizer, metrics) with a gram head.

    Args:
        vocab: output characters (blank = 0 implicit); the gram set's characters must match.
        grams: a GramSet JSON file (``speechlab grams select|refine``), or ``None``: the
            handpicked default — all unigrams + the ``default_top_k`` most frequent n-grams
            (``n <= default_max_n``) of the training manifest's text, built at set-up.
        default_max_n, default_top_k: the default set's parameters.
        ctc_weight: λ of the joint unigram CTC loss (0: Gram-CTC alone; no CTC head is built).
        ctc_weight_schedule: ``constant``, ``linear`` (decay to 0 over ``ctc_weight_steps``) or
            ``step`` (λ for ``ctc_weight_steps`` steps, then 0).
        ctc_weight_steps: see ``ctc_weight_schedule``.
        encoder: encoder hyper-parameters (``stride`` 1/2/4/8).
        spec_augment: SpecAugment on training batches.
        decoding: decoding of ``test``/``predict`` (:class:`GramDecoding`).
        loss_backend: ``gram_ctc_loss`` backend (``auto``, ``cuda``, ``cpu``, ``reference``).
        lr, weight_decay, warmup_steps, total_steps, output_dir, overwrite: see :class:`ASRTask`.

    Shapes: ``forward(features (B, T, F), lengths (B,))`` → ``(log_probs (B, T', |V|), (B,))``
    with ``T' = ceil(T / stride)`` and ``|V| = len(grams)``.
    """

    #: the set travels in the checkpoint: a model rebuilt from its hyper-parameters (speechlab
    #: test --ckpt_path) needs no GramSet file and takes the saved set
    saved_as_none = ("grams",)

    def __init__(self, vocab: str = "".join(DEFAULT_CHARS), grams: str | None = None,
                 default_max_n: int = 2, default_top_k: int = 50, ctc_weight: float = 0.0,
                 ctc_weight_schedule: Literal["constant", "linear", "step"] = "constant",
                 ctc_weight_steps: int = 0, encoder: SpeechEncoderConfig | None = None,
                 spec_augment: bool = True, decoding: GramDecoding | None = None,
                 loss_backend: str = "auto", lr: float = 2e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 200, total_steps: int | None = None,
                 output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(vocab, encoder, spec_augment, lr, weight_decay, warmup_steps,
                         total_steps, output_dir, overwrite)
        self.save_hyperparameters()
        ctc_weight_at(0, ctc_weight, ctc_weight_schedule, ctc_weight_steps)  # validates
        if ctc_weight < 0:
            raise ValueError(f"ctc_weight must be >= 0, got {ctc_weight}")
        if ctc_weight == 0.0:
            self.head = None  # type: ignore[assignment]  # CTCTask's unigram head: joint only
        self.decoding = decoding or GramDecoding()
        self.grams: GramSet | None = None
        self.gram_head: torch.nn.Linear | None = None
        self._beam: tuple[str, PrefixBeamSearch | BatchedPrefixBeamSearch] | None = None
        if grams is not None:
            self.set_grams(self.load_grams(grams))

    # -- gram set --------------------------------------------------------------------------
    def load_grams(self, path: str | Path) -> GramSet:
        """Read a GramSet file and check its characters against the model's vocabulary."""
        gs = GramSet.load(path)
        if gs.vocab != self.vocab:
            raise InputError(f"{path}: the GramSet's characters {''.join(gs.vocab.chars)!r} are not "
                             f"the model's vocabulary {''.join(self.vocab.chars)!r}")
        return gs

    def set_grams(self, grams: GramSet) -> None:
        """Use ``grams`` as the output set; (re)builds the gram head when its size changes."""
        if grams.vocab != self.vocab:
            raise ValueError(f"GramSet characters {grams.vocab} differ from the model's {self.vocab}")
        if self.gram_head is None or self.gram_head.out_features != len(grams):
            self.gram_head = torch.nn.Linear(self.encoder.output_dim, len(grams))
            if self.grams is not None:
                log.info("gram head rebuilt for %d outputs", len(grams))
        self.grams = grams
        self._beam = None
        self._min_frames_cache: dict[str, int] = {}

    def default_grams(self) -> GramSet:
        """The handpicked default set from the training manifest of the trainer's data module."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        path = getattr(getattr(dm, "hparams", None), "train_manifest", None)
        if path is None:
            raise ValueError("GramCTCTask: model.init_args.grams is null and the data module has "
                             "no train_manifest to pick the default grams from; give a GramSet "
                             "file (speechlab grams select)")
        hp = self.hparams
        gs = GramSet.from_corpus(manifest_texts(path), self.vocab, hp.default_max_n, hp.default_top_k)
        log.info("default GramSet from %s: %d grams (max_n=%d, top_k=%d)", path, len(gs) - 1,
                 hp.default_max_n, hp.default_top_k)
        return gs

    def setup(self, stage: str) -> None:
        # validate/test/predict without a gram set: the checkpoint brings it (on_load_checkpoint)
        if self.grams is None and stage == "fit":
            self.set_grams(self.default_grams())
            self.gram_head.to(self.device)  # type: ignore[union-attr]
        super().setup(stage)

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """``vocab``, and ``grams``: the GramSet (``GramSet.to_dict``) once there is one."""
        state = super().extra_checkpoint_state()
        if self.grams is not None:
            state["grams"] = self.grams.to_dict()
        return state

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        """The checkpoint's GramSet (and a gram head of its size); a GramSet file given as well
        must be the same set."""
        super().load_extra_checkpoint_state(state)
        if "grams" not in state:
            return
        saved = GramSet.from_dict(state["grams"], source="checkpoint GramSet")
        if self.grams is not None and saved != self.grams:
            if self.hparams.grams is not None:
                raise InputError(
                    f"{self.hparams.grams}: this GramSet ({len(self.grams)} outputs) does not match "
                    f"the checkpoint's gram head ({len(saved)} outputs, the set it was trained "
                    f"with); use the GramSet file of the training run")
            log.info("using the checkpoint's GramSet (%d outputs)", len(saved))
        self.set_grams(saved)

    # -- model -------------------------------------------------------------------------------
    def _head(self) -> torch.nn.Linear:
        if self.gram_head is None:
            raise RuntimeError("GramCTCTask: no gram set yet (grams: null is resolved at set-up "
                               "from the training manifest)")
        return self.gram_head

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features (B, T, F)`` → ``(gram log-probs (B, T', |V|), lengths (B,))``."""
        enc, lengths = self.encode(features, lengths)
        return self._head()(enc).float().log_softmax(dim=-1), lengths

    def ctc_weight(self) -> float:
        hp = self.hparams
        return ctc_weight_at(self.global_step, hp.ctc_weight, hp.ctc_weight_schedule,
                             hp.ctc_weight_steps)

    def min_frames(self, text: str) -> int:
        """Fewest frames a Gram-CTC path over :attr:`grams` needs for ``text`` (fewer than CTC's
        when longer grams cover it; cached per text)."""
        assert self.grams is not None
        need = self._min_frames_cache.get(text)
        if need is None:
            if len(self._min_frames_cache) > 100_000:
                self._min_frames_cache.clear()
            need = self._min_frames_cache[text] = min_frames(text, self.grams)
        return need

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        enc, lengths = self.encode(batch["features"], batch["feature_lens"])
        log_probs = self._head()(enc).float().log_softmax(dim=-1)
        assert self.grams is not None
        self.note_infeasible(batch, lengths)  # counted, warned; zero_infinity skips them
        loss = gram_ctc_loss(log_probs.transpose(0, 1), batch["targets"], lengths,
                             batch["target_lens"], self.grams, reduction="mean",
                             zero_infinity=True, backend=self.hparams.loss_backend)
        lam = self.ctc_weight() if self.head is not None else 0.0
        if lam > 0.0:
            ctc = self.ctc_loss(enc, lengths, batch["targets"], batch["target_lens"])
            if self.training:
                n = len(batch["ids"])
                self.log("train/gram_ctc", loss.detach(), batch_size=n)
                self.log("train/ctc", ctc.detach(), batch_size=n)
                self.log("train/ctc_weight", lam, batch_size=n)
            loss = loss + lam * ctc
        return loss

    # -- decoding ----------------------------------------------------------------------------
    def beam_search(self, device: torch.device | str = "cpu") -> PrefixBeamSearch | BatchedPrefixBeamSearch:
        """The prefix beam search of :attr:`decoding` for log-probs on ``device`` (the batched
        one on a GPU unless ``decoding.search`` says otherwise; built once per device)."""
        key = str(torch.device(device))
        if self._beam is None or self._beam[0] != key:
            assert self.grams is not None
            self._beam = (key, prefix_beam_search(self.grams, self.decoding, device))
        return self._beam[1]

    def _use_beam(self) -> bool:
        trainer = self._trainer
        evaluating = trainer is not None and (trainer.testing or trainer.predicting)
        return self.decoding.method == "beam" and (evaluating or trainer is None)

    def transcribe(self, batch: dict[str, Any]) -> list[str]:
        log_probs, lengths = self(batch["features"], batch["feature_lens"])
        if self._use_beam():
            return self.beam_search(log_probs.device).decode_batch(log_probs, lengths)
        assert self.grams is not None
        return gram_greedy_decode(log_probs, lengths, self.grams.symbols())


def as_gram_ctc(task: CTCTask) -> GramCTCTask:
    """``task`` itself when it is a :class:`GramCTCTask`; a :class:`CTCTask` (or another model of
    the CTC family) turned into the equivalent unigram Gram-CTC model: the same encoder, its
    head as the gram head (unigram Gram-CTC ids are CTC ids), in eval mode. With
    :meth:`~speechlab.tasks.base.SpeechLabTask.load`: ``as_gram_ctc(CTCTask.load(path))``."""
    if isinstance(task, GramCTCTask):
        return task
    if not isinstance(task, CTCTask):
        raise InputError(f"a {type(task).__name__} is not a CTC model: it has no unigram Gram-CTC "
                         "equivalent")
    model = GramCTCTask(vocab="".join(task.vocab.chars), encoder=task.encoder.config,
                        spec_augment=task.hparams.get("spec_augment", True), ctc_weight=0.0)
    model.set_grams(GramSet.unigrams(model.vocab))
    model.encoder.load_state_dict(task.encoder.state_dict())
    model.gram_head.load_state_dict(task.head.state_dict())  # type: ignore[union-attr]
    return model.to(next(task.parameters()).device).eval()


__all__ = ["GramCTCTask", "as_gram_ctc", "ctc_weight_at"]
