"""GAN-robust speech encoder (Sriram et al., 2017): the CTC model of :class:`CTCTask` trained on
paired clean ``x`` and far-field ``x̃`` views of the same utterances, with a WGAN-GP critic that
separates the clean from the far-field embeddings and an encoder that learns to fool it.

Encoder/head objective per step (``views="both"``)::

    L = L_ctc(x̃) + L_ctc(x) + lambda_adv · (−mean f(e(x̃))) + lambda_l1 · |e(x) − e(x̃)|₁
        + ts_weight · L_ts

with ``e(x)`` detached in both penalties (the clean embeddings are targets). ``L_ts``
(teacher–student on the paired clean view): a frozen clean CTC model (``teacher_checkpoint``)
gives frame posteriors on the clean view ``x``; they are the targets of this model's posteriors
on the far-field view ``x̃`` of the same frames, ``L_ts`` = mean over valid frames of
``KL(p_teacher(·|x_t) ‖ p_student(·|x̃_t))`` at temperature ``ts_temperature`` (times its square;
:func:`~speechlab.functional.distillation.frame_posterior_kl`). The teacher is not a submodule:
not in ``parameters()``, the optimizer or the checkpoint's weights, in eval mode with
``requires_grad=False``; it is read from ``teacher_checkpoint`` when a fit starts, so testing a
trained model does not need it. Critic objective,
``n_critic`` updates per encoder update on the batch's detached embeddings::

    L_f = mean f(e(x̃)) − mean f(e(x)) + gp_weight · GP

Baselines are configurations of the same task:

========================  ==========  ============  ===========
recipe                    views       lambda_adv    lambda_l1
========================  ==========  ============  ===========
clean-only                ``clean``   0             0
augmentation-only         ``both``    0             0
paired L1 penalty         ``both``    0             > 0
GAN (+ optional L1)       ``both``    > 0           ≥ 0
========================  ==========  ============  ===========

Teacher–student is ``views="both"`` with ``ts_weight > 0`` (combinable with the others).

(``views="noisy"`` trains on the far-field view alone.) The critic exists only when
``lambda_adv > 0``.

Optimisation is manual (two optimizers). Critic updates are *inner* steps: they go through the
strategy's ``optimizer_step`` (precision plugin, ``on_before_optimizer_step`` hooks) but not
through ``LightningOptimizer.step``, so ``trainer.global_step`` — and with it ``max_steps``, the
learning-rate schedule and checkpoint intervals — counts encoder updates only, the same in every
mode. Gradient clipping of the encoder/head is done here (``grad_clip``): Lightning's
``trainer.gradient_clip_val`` does not apply to manual optimization, and recipes must not set it.
The gradient norms before clipping are logged here too: ``train/grad_norm`` (encoder/head) and
``train/critic_grad_norm`` (the last critic update of the step).

Mixed precision (``precision: bf16-mixed``): the encoder runs under autocast, but the critic,
its Wasserstein estimate and gradient penalty, the encoder's adversarial loss and the L1 distance
are computed in float32 with autocast off (embeddings cast up). The critic is small, and the
penalty differentiates its input gradient, which bf16 would round to 8 bits. bf16 needs no
gradient scaling, so the manual steps are the same at every precision.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F

from speechlab.data.text import DEFAULT_CHARS
from speechlab.errors import InputError
from speechlab.functional.adversarial import (
    generator_loss,
    gradient_penalty,
    masked_l1_distance,
    wasserstein_critic_loss,
)
from speechlab.functional.distillation import frame_posterior_kl
from speechlab.nn.critic import CriticConfig, SequenceCritic
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.nn.fusion import freeze
from speechlab.tasks.base import log_grad_norm
from speechlab.tasks.ctc import CTCTask

log = logging.getLogger("speechlab.tasks")

Views = Literal["clean", "noisy", "both"]


def pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad ``(B, T, F)`` features to ``(B, length, F)`` (``length >= T``)."""
    return F.pad(x, (0, 0, 0, length - x.shape[1]))


class RobustASRTask(CTCTask):
    """CTC model with a clean/far-field embedding critic (see the module docstring).

    Args:
        vocab, encoder, spec_augment: as :class:`CTCTask` (SpecAugment masks are drawn
            independently for the two views).
        views: ``"both"`` (paired batches: CTC on the far-field and the clean view),
            ``"clean"`` (the clean view only: the batch's ``clean_features`` when paired, else
            its ``features``) or ``"noisy"`` (the batch's ``features`` only).
        lambda_adv: weight of the encoder's adversarial loss; ``> 0`` builds and trains the
            critic. Needs ``views="both"``.
        lambda_l1: weight of the masked L1 distance between clean (detached) and far-field
            embeddings. Needs ``views="both"``.
        critic: critic hyper-parameters.
        n_critic: critic updates per encoder update.
        gp_weight: weight of the WGAN-GP gradient penalty.
        critic_lr: critic Adam learning rate (constant).
        critic_betas: critic Adam betas (WGAN-GP uses ``(0.5, 0.9)`` or ``(0, 0.9)``).
        penalty_warmup_steps: ramp ``lambda_adv`` and ``lambda_l1`` linearly from 0 over the
            first encoder updates (the critic trains from the start). Early on the embeddings
            carry no information yet and a full-strength penalty can collapse them (all views
            equal, CTC stuck on blanks), as ``lambda_l1 = 40`` did in the CPU study.
        grad_clip: max global L2 norm of the encoder/head gradients (``None``: no clipping).
        ts_weight: weight of the teacher–student loss ``L_ts`` (0: none, no teacher loaded).
            Needs ``views="both"`` and ``teacher_checkpoint``. Not ramped by
            ``penalty_warmup_steps``.
        teacher_checkpoint: a trained CTC-family checkpoint (:class:`CTCTask`, or a robust one)
            with this model's vocabulary and frame rate; frozen, used only in training.
        ts_temperature: softmax temperature ``τ`` of ``L_ts`` (scaled by ``τ²``).
        init_checkpoint: a trained CTC-family checkpoint (the same vocabulary and encoder
            configuration) whose encoder and CTC head this model starts from (the warm start
            of every configuration of a study; the critic, if any, starts fresh). A training-start
            option: checkpoints save it as None, so rebuilding a trained model does not read it.
        lr, weight_decay, warmup_steps, total_steps, output_dir, overwrite: see :class:`ASRTask`; the
            schedule applies to the encoder/head optimizer.
    """

    #: a training-start option: the weights are in the checkpoint
    saved_as_none = ("init_checkpoint",)

    def __init__(self, vocab: str = "".join(DEFAULT_CHARS),
                 encoder: SpeechEncoderConfig | None = None, spec_augment: bool = True,
                 views: Views = "both", lambda_adv: float = 0.0, lambda_l1: float = 0.0,
                 critic: CriticConfig | None = None, n_critic: int = 5, gp_weight: float = 10.0,
                 critic_lr: float = 5e-4, critic_betas: tuple[float, float] = (0.5, 0.9),
                 penalty_warmup_steps: int = 0, grad_clip: float | None = 2.0,
                 ts_weight: float = 0.0, teacher_checkpoint: str | None = None,
                 ts_temperature: float = 1.0, init_checkpoint: str | None = None,
                 lr: float = 2e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 200, total_steps: int | None = None,
                 output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(vocab, encoder, spec_augment, lr, weight_decay, warmup_steps,
                         total_steps, output_dir, overwrite)
        self.save_hyperparameters()
        if teacher_checkpoint is not None:  # by absolute path: checkpoints resume from any cwd
            self.hparams.teacher_checkpoint = os.path.abspath(teacher_checkpoint)
        if views not in ("clean", "noisy", "both"):
            raise ValueError(f"views must be 'clean', 'noisy' or 'both', got {views!r}")
        if views != "both" and (lambda_adv > 0 or lambda_l1 > 0):
            raise ValueError(f"lambda_adv/lambda_l1 compare the two views: they need "
                             f"views='both' (got views={views!r})")
        if lambda_adv < 0 or lambda_l1 < 0 or n_critic < 1 or penalty_warmup_steps < 0:
            raise ValueError("lambda_adv, lambda_l1 and penalty_warmup_steps must be >= 0 and "
                             "n_critic >= 1")
        if ts_weight < 0 or not ts_temperature > 0:
            raise ValueError("ts_weight must be >= 0 and ts_temperature > 0")
        if ts_weight > 0 and (views != "both" or teacher_checkpoint is None):
            raise ValueError("ts_weight > 0 distils a clean teacher into the far-field view: it "
                             "needs views='both' and model.init_args.teacher_checkpoint")
        self.__dict__["_teacher"] = None  # not a submodule: frozen, outside parameters()/state_dict()
        self.automatic_optimization = False
        self.critic = (SequenceCritic(self.encoder.output_dim, critic or CriticConfig())
                       if lambda_adv > 0 else None)
        if init_checkpoint is not None:
            self.load_encoder_and_head(init_checkpoint)

    def load_encoder_and_head(self, path: str) -> None:
        """Copy the encoder and CTC head of the CTC-family checkpoint ``path`` into this model.

        Raises:
            InputError: another vocabulary, or an encoder or head of other shapes (another
                encoder configuration).
        """
        source = CTCTask.load(path)
        if source.vocab != self.vocab:
            raise InputError(f"{path}: vocabulary {source.vocab} differs from the model's {self.vocab}")
        for name in ("encoder", "head"):
            try:
                getattr(self, name).load_state_dict(getattr(source, name).state_dict())
            except RuntimeError as err:  # missing/unexpected keys or other shapes
                first = str(err).strip().splitlines()[-1].strip()
                raise InputError(f"{path}: its {name} does not fit this model's "
                                 f"(another encoder configuration?): {first}") from None
        log.info("initialized the encoder and CTC head from %s", path)

    # -- the frozen teacher -------------------------------------------------------------------
    @property
    def teacher(self) -> CTCTask | None:
        """The frozen teacher (eval mode, no grad) once loaded (:meth:`load_teacher`), else None."""
        return self.__dict__["_teacher"]

    def load_teacher(self) -> CTCTask:
        """Read ``teacher_checkpoint`` (once), check that it fits this model and freeze it.

        Raises:
            InputError: another vocabulary or output frame rate than this model's.
        """
        if self.teacher is not None:
            return self.teacher
        path = self.hparams.teacher_checkpoint
        teacher = CTCTask.load(path)
        if teacher.vocab != self.vocab:
            raise InputError(f"{path}: teacher vocabulary {teacher.vocab} differs from the "
                             f"model's {self.vocab}")
        if abs(teacher.frame_rate - self.frame_rate) > 1e-6:
            raise InputError(f"{path}: the teacher emits {teacher.frame_rate} frames/s, the model "
                             f"{self.frame_rate}; their frames must line up (the same stride)")
        ref = next(iter(self.parameters()))
        self.__dict__["_teacher"] = freeze(teacher.to(device=ref.device))
        log.info("teacher: %s", path)
        return teacher

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        super()._apply(fn, recurse)
        if self.teacher is not None:  # the unregistered teacher follows .to()/.cuda()
            self.teacher._apply(fn)
        return self

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.ts_weight > 0:
            self.load_teacher()

    def teacher_student_loss(self, batch: dict[str, Any], noisy: torch.Tensor,
                             noisy_lens: torch.Tensor) -> torch.Tensor:
        """``L_ts``: the teacher's frame posteriors on the clean view (no grad) against this
        model's on the far-field embeddings ``noisy (B, T', D)``, over the frames both views
        have (float32)."""
        teacher = self.load_teacher()
        with torch.no_grad():
            t_log_probs, t_lens = teacher(batch["clean_features"], batch["clean_feature_lens"])
        t = min(t_log_probs.shape[1], noisy.shape[1])
        with self.fp32():
            s_log_probs = self.head(noisy[:, :t].float()).float().log_softmax(-1)
            return frame_posterior_kl(t_log_probs[:, :t].float(), s_log_probs,
                                      torch.minimum(t_lens, noisy_lens),
                                      self.hparams.ts_temperature)

    # -- optimisation -----------------------------------------------------------------------
    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        """Encoder + head parameters (the critic has its own optimizer)."""
        return [p for name, p in self.named_parameters() if not name.startswith("critic.")]

    def configure_optimizers(self) -> Any:
        cfg = super().configure_optimizers()
        if self.critic is None:
            return cfg
        hp = self.hparams
        critic_opt = torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr,
                                      betas=tuple(hp.critic_betas))
        return [cfg["optimizer"], critic_opt], [cfg["lr_scheduler"]]

    def _inner_step(self, optimizer: Any) -> None:
        """``optimizer.step()`` through the strategy, without counting a global step."""
        raw = getattr(optimizer, "optimizer", optimizer)  # unwrap LightningOptimizer
        self.trainer.strategy.optimizer_step(raw, closure=lambda: None)

    def penalty_scale(self) -> float:
        """Multiplier of ``lambda_adv`` and ``lambda_l1`` at the current encoder update:
        ``min(1, (global_step + 1) / penalty_warmup_steps)`` (1 without warm-up)."""
        warmup = self.hparams.penalty_warmup_steps
        return 1.0 if warmup <= 0 else min(1.0, (self.global_step + 1) / warmup)

    # -- the two views ----------------------------------------------------------------------
    def encode_pair(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor, torch.Tensor]:
        """Encode both views in one encoder call (padding-invariant, so stacking is exact).

        Returns:
            ``(noisy (B, T', D), noisy_lens (B,), clean (B, T', D), clean_lens (B,))``.
        """
        if "clean_features" not in batch:
            raise ValueError("views='both' needs paired batches: set data.init_args."
                             "paired_clean_manifest (and a far-field train manifest with clean_id)")
        noisy, clean = batch["features"], batch["clean_features"]
        t = max(noisy.shape[1], clean.shape[1])
        enc, lens = self.encode(torch.cat([pad_time(noisy, t), pad_time(clean, t)]),
                                torch.cat([batch["feature_lens"], batch["clean_feature_lens"]]))
        b = noisy.shape[0]
        return enc[:b], lens[:b], enc[b:], lens[b:]

    # -- the two steps ----------------------------------------------------------------------
    def critic_losses(self, clean: torch.Tensor, clean_lens: torch.Tensor, noisy: torch.Tensor,
                      noisy_lens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Critic loss terms on detached ``(B, T', D)`` embeddings: ``loss`` (= −W +
        gp_weight·GP), ``wasserstein`` (W) and ``gp``."""
        assert self.critic is not None
        clean, noisy = clean.detach().float(), noisy.detach().float()
        with self.fp32():
            neg_w, w = wasserstein_critic_loss(self.critic(clean, clean_lens),
                                               self.critic(noisy, noisy_lens))
            gp = gradient_penalty(self.critic, clean, noisy, torch.maximum(clean_lens, noisy_lens))
        return {"loss": neg_w + self.hparams.gp_weight * gp, "wasserstein": w, "gp": gp}

    def adversarial_loss(self, noisy: torch.Tensor, noisy_lens: torch.Tensor) -> torch.Tensor:
        """The encoder's adversarial loss ``−mean f(e(x̃))`` on far-field embeddings
        ``(B, T', D)`` (float32; gradients flow into the encoder)."""
        assert self.critic is not None
        with self.fp32():
            return generator_loss(self.critic(noisy.float(), noisy_lens))

    def fp32(self) -> torch.autocast:
        """Autocast off on this task's device: the critic and the penalties run in float32."""
        return torch.autocast(device_type=self.device.type, enabled=False)

    def critic_step(self, optimizer: Any, clean: torch.Tensor, clean_lens: torch.Tensor,
                    noisy: torch.Tensor, noisy_lens: torch.Tensor) -> dict[str, torch.Tensor]:
        """One critic update (encoder untouched: embeddings are detached and only the critic's
        parameters require grad meanwhile)."""
        with self.toggled_optimizer(optimizer):
            optimizer.zero_grad(set_to_none=True)
            out = self.critic_losses(clean, clean_lens, noisy, noisy_lens)
            self.manual_backward(out["loss"])
            log_grad_norm(self, self.critic.parameters(), "train/critic_grad_norm")
            self._inner_step(optimizer)
        return {k: v.detach() for k, v in out.items()}

    def encoder_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Encoder/head loss terms of a training batch (``loss`` is the total); in
        ``views="both"`` also the detached embeddings for the critic."""
        hp = self.hparams
        targets, target_lens = batch["targets"], batch["target_lens"]
        if hp.views != "both":
            key = "clean_features" if hp.views == "clean" and "clean_features" in batch else "features"
            enc, lens = self.encode(batch[key], batch[key.replace("features", "feature_lens")])
            loss = self.ctc_loss(enc, lens, targets, target_lens)
            return {"loss": loss, f"ctc_{hp.views}": loss.detach()}
        noisy, noisy_lens, clean, clean_lens = self.encode_pair(batch)
        ctc_noisy = self.ctc_loss(noisy, noisy_lens, targets, target_lens)
        ctc_clean = self.ctc_loss(clean, clean_lens, targets, target_lens)
        l1 = masked_l1_distance(clean.detach().float(), noisy.float(),  # summed in fp32
                                torch.minimum(clean_lens, noisy_lens))
        out = {"ctc_noisy": ctc_noisy, "ctc_clean": ctc_clean, "l1": l1,
               "emb": (noisy, noisy_lens, clean, clean_lens)}
        loss = ctc_noisy + ctc_clean
        if hp.lambda_l1 > 0:
            loss = loss + self.penalty_scale() * hp.lambda_l1 * l1
        if hp.get("ts_weight", 0.0) > 0:
            out["ts"] = self.teacher_student_loss(batch, noisy, noisy_lens)
            loss = loss + hp.ts_weight * out["ts"]
        out["loss"] = loss
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        n = len(batch["ids"])
        opts = self.optimizers()
        enc_opt, critic_opt = opts if isinstance(opts, list) else (opts, None)

        out = self.encoder_losses(batch)
        if critic_opt is not None:
            noisy, noisy_lens, clean, clean_lens = out["emb"]
            for _ in range(hp.n_critic):
                stats = self.critic_step(critic_opt, clean, clean_lens, noisy, noisy_lens)
            self.log_dict({"train/critic_loss": stats["loss"], "train/wasserstein":
                           stats["wasserstein"], "train/gp": stats["gp"]}, batch_size=n)
        with self.toggled_optimizer(enc_opt):  # the critic's parameters get no gradient
            if critic_opt is not None:
                out["adv"] = self.adversarial_loss(noisy, noisy_lens)
                out["loss"] = out["loss"] + self.penalty_scale() * hp.lambda_adv * out["adv"]
            enc_opt.zero_grad(set_to_none=True)
            self.manual_backward(out["loss"])
            log_grad_norm(self, self.optimizer_parameters())
            if hp.grad_clip:
                self.clip_gradients(enc_opt, gradient_clip_val=hp.grad_clip,
                                    gradient_clip_algorithm="norm")
            enc_opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        out.pop("emb", None)
        loss = out.pop("loss").detach()
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, batch_size=n)
        return loss

