"""RobustASRTask on synthetic paired batches: each optimizer step changes only its own
parameters (snapshots around every step of a real Trainer run), critic steps do not count as
global steps, encoder gradients are clipped by hand, the two views are encoded exactly as they
would be alone, and the baseline modes use the views they say."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from speechlab.nn.critic import CriticConfig
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.tasks.robust import RobustASRTask

ENC = SpeechEncoderConfig(hidden_size=32, num_layers=1, conv_channels=8, dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def paired_batch(seed: int = 0, b: int = 3) -> dict:
    """Random features for both views (the far-field one longer, as after a RIR tail)."""
    g = torch.Generator().manual_seed(seed)
    clean_lens = torch.tensor([60, 48, 40][:b])
    noisy_lens = clean_lens + torch.tensor([4, 0, 8][:b])
    target_lens = torch.tensor([5, 3, 4][:b])

    def feats(lens):
        x = torch.randn(b, int(lens.max()), 80, generator=g)
        return x * (torch.arange(x.shape[1])[None, :, None] < lens[:, None, None])

    return {"features": feats(noisy_lens), "feature_lens": noisy_lens,
            "clean_features": feats(clean_lens), "clean_feature_lens": clean_lens,
            "targets": torch.randint(1, 28, (b, 5), generator=g), "target_lens": target_lens,
            "ids": [f"u{i}" for i in range(b)], "texts": ["abcde"[:n] for n in target_lens]}


def make_task(**kw) -> RobustASRTask:
    kw.setdefault("critic", CriticConfig(channels=16, kernel_size=3))
    return RobustASRTask(encoder=ENC, spec_augment=False, warmup_steps=1, **kw)


class StepSnapshots(pl.Callback):
    """Parameter snapshots before every optimizer step and after each batch."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, torch.Tensor]]] = []
        self.grad_norms: list[float] = []

    @staticmethod
    def snapshot(module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        first = optimizer.param_groups[0]["params"][0]
        kind = "critic" if any(first is p for p in pl_module.critic.parameters()) else "encoder"
        self.events.append((kind, self.snapshot(pl_module)))
        if kind == "encoder":
            grads = [p.grad for p in optimizer.param_groups[0]["params"] if p.grad is not None]
            self.grad_norms.append(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads])).item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.events.append(("end", self.snapshot(pl_module)))


def changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def fit(task: RobustASRTask, batches: list[dict], steps: int, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def test_critic_and_encoder_steps_update_only_their_own_parameters():
    torch.manual_seed(0)
    task = make_task(lambda_adv=1.0, lambda_l1=0.5, n_critic=2, weight_decay=0.1, grad_clip=None)
    snaps = StepSnapshots()
    trainer = fit(task, [paired_batch()], steps=1, callbacks=[snaps])
    assert [k for k, _ in snaps.events] == ["critic", "critic", "encoder", "end"]
    assert trainer.global_step == 1  # critic updates are inner steps
    critic = {n for n in snaps.events[0][1] if n.startswith("critic.")}
    encoder_head = set(snaps.events[0][1]) - critic
    assert critic and any(n.startswith("encoder.") for n in encoder_head) and \
        any(n.startswith("head.") for n in encoder_head)
    (_, s0), (_, s1), (_, s2), (_, s3) = snaps.events
    # each critic step: some critic weights move, no encoder/head parameter does
    for before, after in [(s0, s1), (s1, s2)]:
        assert changed(before, after) and changed(before, after) <= critic
    # the encoder step (weight decay on: a zero-but-present critic gradient would show)
    # changes the encoder and head and no critic parameter
    moved = changed(s2, s3)
    assert moved and moved <= encoder_head
    assert any(n.startswith("encoder.") for n in moved) and any(n.startswith("head.") for n in moved)


def test_encoder_gradients_are_clipped_by_hand():
    torch.manual_seed(0)
    snaps = StepSnapshots()
    fit(make_task(lambda_adv=1.0, n_critic=1, grad_clip=1e-3), [paired_batch()], steps=1,
        callbacks=[snaps])
    assert snaps.grad_norms and snaps.grad_norms[0] == pytest.approx(1e-3, rel=1e-3)
    snaps = StepSnapshots()
    fit(make_task(lambda_adv=1.0, n_critic=1, grad_clip=None), [paired_batch()], steps=1,
        callbacks=[snaps])
    assert snaps.grad_norms[0] > 1e-2


def test_encode_pair_equals_encoding_each_view_alone():
    torch.manual_seed(0)
    task = make_task().eval()
    batch = paired_batch()
    with torch.no_grad():
        noisy, noisy_lens, clean, clean_lens = task.encode_pair(batch)
        for b in range(3):
            for feats, lens, enc, enc_lens in [
                    (batch["features"], batch["feature_lens"], noisy, noisy_lens),
                    (batch["clean_features"], batch["clean_feature_lens"], clean, clean_lens)]:
                n = int(lens[b])
                alone, alone_len = task.encoder(feats[b:b + 1, :n], lens[b:b + 1])
                assert int(alone_len) == int(enc_lens[b])
                torch.testing.assert_close(enc[b, :int(alone_len)], alone[0], atol=1e-5, rtol=1e-4)
                assert enc[b, int(alone_len):].abs().sum() == 0


def test_modes_use_the_views_they_name():
    torch.manual_seed(0)
    batch = paired_batch()
    clean_batch = {**batch, "features": batch["clean_features"],
                   "feature_lens": batch["clean_feature_lens"]}
    task = make_task(views="clean").eval()
    with torch.no_grad():
        assert task.encoder_losses(batch)["loss"].item() == pytest.approx(
            task.compute_loss(clean_batch).item(), rel=1e-5)
        noisy_only = make_task(views="noisy").eval()
        noisy_only.load_state_dict(task.state_dict())
        assert noisy_only.encoder_losses(batch)["loss"].item() == pytest.approx(
            task.compute_loss(batch).item(), rel=1e-5)
        both = make_task(views="both", lambda_l1=2.0).eval()
        both.load_state_dict(task.state_dict())
        out = both.encoder_losses(batch)
        expected = task.compute_loss(batch) + task.compute_loss(clean_batch) + 2.0 * out["l1"]
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert out["l1"].item() > 0
        # penalty warm-up: at encoder update 0 of 4 the L1 weight is 1/4 of lambda_l1
        ramped = make_task(views="both", lambda_l1=2.0, penalty_warmup_steps=4).eval()
        ramped.load_state_dict(task.state_dict())
        out = ramped.encoder_losses(batch)
        expected = task.compute_loss(batch) + task.compute_loss(clean_batch) + 0.5 * out["l1"]
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.critic is None and both.critic is None
    assert make_task(lambda_adv=0.1).critic is not None
    with pytest.raises(ValueError, match="views='both'"):
        make_task(views="clean", lambda_adv=1.0)
    with pytest.raises(ValueError, match="paired"):
        make_task().encoder_losses({k: v for k, v in batch.items() if not k.startswith("clean")})


def test_gan_training_lowers_the_loss_on_fixed_batches():
    torch.manual_seed(0)
    task = make_task(lambda_adv=0.1, lambda_l1=0.0, n_critic=2, lr=3e-3, total_steps=60)
    batches = [paired_batch(0), paired_batch(1)]
    task.eval()
    with torch.no_grad():
        before = sum(task.encoder_losses(b)["loss"].item() for b in batches)
    task.train()
    fit(task, batches, steps=60)
    task.eval()
    with torch.no_grad():
        after = sum(task.encoder_losses(b)["loss"].item() for b in batches)
    assert after < 0.5 * before
