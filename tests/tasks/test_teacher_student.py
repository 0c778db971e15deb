"""Teacher–student on the paired clean view (issue 15.3): ``frame_posterior_kl`` against a
hand-computed value (2 frames x 3 classes, a padding frame ignored, a temperature), against
``torch.nn.functional.kl_div`` as an independent oracle, zero for equal distributions, gradient
only into the student; ``RobustASRTask(ts_weight > 0)`` keeps its teacher frozen through a real
2-step fit (unchanged, eval mode, outside the optimizer and the state dict), and ``ts_weight``
0 gives exactly the loss without the term."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from speechlab.errors import InputError
from speechlab.functional.adversarial import masked_l1_distance
from speechlab.functional.distillation import frame_posterior_kl
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.tasks.ctc import CTCTask
from tests.tasks.test_robust_task import ENC, fit, make_task, paired_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def probs_log(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def test_kl_by_hand_two_frames_three_classes_padding_ignored():
    """Frames (p, q): ([.5, .25, .25], [.25, .5, .25]) and ([.8, .1, .1], [.1, .8, .1]); a third
    frame of utterance 0 is padding (lengths [2]) and holds anything."""
    teacher = probs_log([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [1 / 3, 1 / 3, 1 / 3]])[None]
    student = probs_log([[0.25, 0.5, 0.25], [0.1, 0.8, 0.1], [0.98, 0.01, 0.01]])[None]
    kl1 = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0
    kl2 = 0.8 * math.log(0.8 / 0.1) + 0.1 * math.log(0.1 / 0.8) + 0
    got = frame_posterior_kl(teacher, student, torch.tensor([2]))
    assert got.item() == pytest.approx((kl1 + kl2) / 2, rel=1e-12)
    # temperature 2: p ∝ sqrt(p); KL of the renormalised ones, times 4
    def soft(p):
        r = [x ** 0.5 for x in p]
        return [x / sum(r) for x in r]

    pairs = [([0.5, 0.25, 0.25], [0.25, 0.5, 0.25]), ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1])]
    kls = [sum(a * math.log(a / b) for a, b in zip(soft(p), soft(q), strict=True)) for p, q in pairs]
    got = frame_posterior_kl(teacher, student, torch.tensor([2]), temperature=2.0)
    assert got.item() == pytest.approx(4 * sum(kls) / 2, rel=1e-12)


def test_kl_matches_torch_kl_div_over_valid_frames():
    """Random posteriors, unequal lengths: the mean over valid frames of torch's
    ``kl_div(log q, log p, log_target=True)`` summed over classes (temperatures 1 and 3)."""
    g = torch.Generator().manual_seed(0)
    b, t, c = 3, 7, 5
    teacher = torch.randn(b, t, c, generator=g, dtype=torch.float64) * 3
    student = torch.randn(b, t, c, generator=g, dtype=torch.float64) * 3
    lengths = torch.tensor([7, 4, 1])
    for tau in (1.0, 3.0):
        lp, lq = (teacher / tau).log_softmax(-1), (student / tau).log_softmax(-1)
        rows = [F.kl_div(lq[i, :n], lp[i, :n], log_target=True, reduction="sum")
                for i, n in enumerate(lengths.tolist())]
        want = tau ** 2 * torch.stack(rows).sum() / lengths.sum()
        got = frame_posterior_kl(teacher, student, lengths, temperature=tau)
        assert got.item() == pytest.approx(want.item(), rel=1e-10)


def test_kl_is_zero_for_equal_posteriors_and_its_gradient_reaches_only_the_student():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 4, generator=g).log_softmax(-1)
    zero = frame_posterior_kl(x, x.clone(), torch.tensor([6, 3]))
    assert zero.abs().item() < 1e-6
    teacher = torch.randn(2, 6, 4, generator=g).requires_grad_(True)
    student = torch.randn(2, 6, 4, generator=g).requires_grad_(True)
    frame_posterior_kl(teacher, student, torch.tensor([6, 3]), temperature=2.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad[0].abs().sum() > 0
    assert student.grad[1, 3:].abs().sum() == 0  # padding frames get no gradient
    assert frame_posterior_kl(teacher, student, torch.tensor([0, 0])).item() == 0.0


def save_teacher(path: Path, encoder: SpeechEncoderConfig = ENC, vocab: str | None = None) -> Path:
    """A CTCTask trained 1 step on random batches, saved by Lightning (the checkpoint format
    ``speechlab fit`` writes)."""
    torch.manual_seed(0)
    kw = {} if vocab is None else {"vocab": vocab}
    task = CTCTask(encoder=encoder, spec_augment=False, warmup_steps=1, **kw)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, train_dataloaders=DataLoader([paired_batch(5)], batch_size=None))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.ckpt")


def test_teacher_stays_frozen_through_a_fit(teacher_ckpt):
    """A real 2-step fit with ts_weight 1: the teacher's parameters are bit-identical after,
    it is in eval mode with requires_grad False, none of its tensors is in an optimizer or
    the task's state dict, the student's parameters did change, and train/ts was logged."""
    task = make_task(views="both", ts_weight=1.0, teacher_checkpoint=str(teacher_ckpt),
                     ts_temperature=2.0)
    teacher = task.load_teacher()
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in task.named_parameters()}
    trainer = fit(task, [paired_batch(0), paired_batch(1)], steps=2)
    assert trainer.global_step == 2
    assert task.teacher is teacher and not teacher.training
    assert all(torch.equal(before[n], p) for n, p in teacher.named_parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    in_opt = [p for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]]
    assert in_opt and not teacher_ids & {id(p) for p in in_opt}
    assert not teacher_ids & {id(p) for p in task.parameters()}
    assert all(not k.startswith(("teacher", "_teacher")) for k in task.state_dict())
    assert any(not torch.equal(student_before[n], p) for n, p in task.named_parameters())
    assert "train/ts" in trainer.logged_metrics


def test_loss_is_the_old_loss_plus_the_weighted_kl(teacher_ckpt):
    """ts_weight 0: the total is exactly L_ctc(x̃) + L_ctc(x) + λ_L1·L1 (torch.equal), no
    teacher is read and no ts term appears; ts_weight 0.5: that plus 0.5·frame_posterior_kl of
    the teacher's clean-view and the student's far-field posteriors, computed here."""
    batch = paired_batch(2)
    old = make_task(views="both", lambda_l1=0.7, teacher_checkpoint=str(teacher_ckpt)).eval()
    out = old.encoder_losses(batch)
    noisy, noisy_lens, clean, clean_lens = out["emb"]
    want = (old.ctc_loss(noisy, noisy_lens, batch["targets"], batch["target_lens"])
            + old.ctc_loss(clean, clean_lens, batch["targets"], batch["target_lens"])
            + 0.7 * masked_l1_distance(clean.float(), noisy.float(),
                                       torch.minimum(clean_lens, noisy_lens)))
    assert torch.equal(out["loss"], want)
    assert "ts" not in out and old.teacher is None
    ts = make_task(views="both", lambda_l1=0.7, ts_weight=0.5,
                   teacher_checkpoint=str(teacher_ckpt)).eval()
    ts.load_state_dict(old.state_dict())
    out_ts = ts.encoder_losses(batch)
    t_lp, t_lens = ts.teacher(batch["clean_features"], batch["clean_feature_lens"])
    s_lp = ts.head(noisy).log_softmax(-1)
    t = min(t_lp.shape[1], s_lp.shape[1])
    kl = frame_posterior_kl(t_lp[:, :t], s_lp[:, :t], torch.minimum(t_lens, noisy_lens))
    assert kl > 0
    assert out_ts["loss"].item() == pytest.approx((want + 0.5 * kl).item(), rel=1e-6)
    assert out_ts["ts"].item() == pytest.approx(kl.item(), rel=1e-6)


def test_teacher_must_fit_the_student(teacher_ckpt, tmp_path):
    """ts_weight > 0 without a teacher or with one view is a ValueError; a teacher of another
    vocabulary or stride is one line naming its checkpoint."""
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        make_task(views="both", ts_weight=1.0)
    with pytest.raises(ValueError, match="views='both'"):
        make_task(views="noisy", ts_weight=1.0, teacher_checkpoint=str(teacher_ckpt))
    other = save_teacher(tmp_path / "stride8.ckpt",
                         SpeechEncoderConfig(stride=8, hidden_size=32, num_layers=1,
                                             conv_channels=8, dropout=0.0))
    with pytest.raises(InputError, match=rf"^{other}: the teacher emits 12.5 frames/s"):
        make_task(views="both", ts_weight=1.0, teacher_checkpoint=str(other)).load_teacher()
    vocab = save_teacher(tmp_path / "vocab.ckpt", vocab="abc '")
    with pytest.raises(InputError, match=rf"^{vocab}: teacher vocabulary"):
        make_task(views="both", ts_weight=1.0, teacher_checkpoint=str(vocab)).load_teacher()


def test_init_checkpoint_warm_starts_encoder_and_head_only(teacher_ckpt, tmp_path):
    """``init_checkpoint`` (issue 15.2, the warm start of every row): the encoder and CTC head
    equal the trained CTC model's tensor for tensor, a GAN's critic starts as a fresh one (the
    same seed without init gives the same critic), a checkpoint of the warm-started model saves
    ``init_checkpoint`` as None, and a source of another encoder shape or vocabulary is one
    line naming its file."""
    source = CTCTask.load_from_checkpoint(teacher_ckpt, map_location="cpu", weights_only=False)
    torch.manual_seed(3)
    fresh = make_task(views="both", lambda_adv=0.1)
    torch.manual_seed(3)
    warm = make_task(views="both", lambda_adv=0.1, init_checkpoint=str(teacher_ckpt))
    want = {**{f"encoder.{k}": v for k, v in source.encoder.state_dict().items()},
            **{f"head.{k}": v for k, v in source.head.state_dict().items()}}
    got = warm.state_dict()
    assert want and all(torch.equal(got[k], v) for k, v in want.items())
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in want.items())
    critic = [k for k in got if k.startswith("critic.")]
    assert critic and all(torch.equal(got[k], fresh.state_dict()[k]) for k in critic)

    trainer = fit(warm, [paired_batch(0)], steps=1)
    trainer.save_checkpoint(tmp_path / "warm.ckpt")
    saved = torch.load(tmp_path / "warm.ckpt", map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["init_checkpoint"] is None

    other = save_teacher(tmp_path / "wide.ckpt",
                         SpeechEncoderConfig(stride=ENC.stride, hidden_size=ENC.hidden_size + 8,
                                             num_layers=ENC.num_layers,
                                             conv_channels=ENC.conv_channels, dropout=0.0))
    with pytest.raises(InputError, match=rf"^{other}: its encoder does not fit") as err:
        make_task(views="both", init_checkpoint=str(other))
    assert "\n" not in str(err.value)
    vocab = save_teacher(tmp_path / "vocab.ckpt", vocab="abc '")
    with pytest.raises(InputError, match=rf"^{vocab}: vocabulary"):
        make_task(views="both", init_checkpoint=str(vocab))
