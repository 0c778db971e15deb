"""What training writes to TensorBoard besides the loss: learning rate (LearningRateMonitor, in
every recipe), the total gradient norm before clipping, and at validation the first dev
utterances' audio and reference/hypothesis text. Read back from the event files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from speechlab.data.speech import SpeechDataModule
from speechlab.nn.critic import CriticConfig
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.tasks.base import warmup_cosine
from speechlab.tasks.ctc import CTCTask
from speechlab.tasks.robust import RobustASRTask

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.util import tensor_util  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ENC = SpeechEncoderConfig(hidden_size=32, num_layers=1, conv_channels=8, dropout=0.0)
CLIP = 1e-3  # far below any gradient norm of a fresh model: a clipped norm would read <= CLIP


def events(log_dir: Path):
    files = list(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    acc = event_accumulator.EventAccumulator(
        str(files[0].parent), size_guidance={"scalars": 0, "tensors": 0, "audio": 0})
    acc.Reload()
    return acc


def test_asr_fit_logs_lr_grad_norm_audio_and_hypotheses(tiny_corpus, tmp_path):
    torch.manual_seed(0)
    lr, warmup, total = 1e-3, 3, 6
    dm = SpeechDataModule(str(tiny_corpus["train"]), str(tiny_corpus["all"]), max_duration=8,
                          num_workers=0, dither=0.0)
    task = CTCTask(encoder=ENC, spec_augment=False, lr=lr, warmup_steps=warmup, total_steps=total)
    trainer = pl.Trainer(
        max_steps=total, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[LearningRateMonitor(logging_interval="step")], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        gradient_clip_val=CLIP, check_val_every_n_epoch=None, val_check_interval=3,
        num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(task, datamodule=dm)
    acc = events(tmp_path / "tb")
    tags = acc.Tags()

    lrs = acc.Scalars("lr-AdamW")
    assert [e.step for e in lrs] == list(range(total))
    for e in lrs:  # the schedule's value at every step
        assert e.value == pytest.approx(lr * warmup_cosine(e.step, warmup, total), rel=1e-5)

    norms = acc.Scalars("train/grad_norm")
    assert len(norms) == total
    assert all(math.isfinite(e.value) and e.value > 10 * CLIP for e in norms)  # before clipping

    # reference vs hypothesis at both validations (steps 3 and 6), audio once
    text = acc.Tensors("val/samples/text_summary")
    assert [e.step for e in text] == [3, 6]
    table = tensor_util.make_ndarray(text[-1].tensor_proto).item().decode()
    dev_ids = [c.id for c in dm.cuts("dev")]
    first = next(iter(dm.val_dataloader()))
    assert "| reference | hypothesis |" in table
    for i in range(min(4, len(first["ids"]))):
        assert f"| {i} | {first['ids'][i]} | {first['texts'][i]} |" in table
    audio_tags = sorted(tags["audio"])
    assert audio_tags == [f"val/audio/{i}" for i in range(min(4, len(first["ids"])))]
    clip = acc.Audio("val/audio/0")
    assert [e.step for e in clip] == [3]
    cut = dm.cuts("dev")[dev_ids.index(first["ids"][0])]
    assert clip[0].sample_rate == cut.sampling_rate == 16000
    assert clip[0].length_frames == cut.num_samples
    assert clip[0].encoded_audio_string[:4] == b"RIFF"


def _paired_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([60, 48, 40])
    feats = torch.randn(3, 60, 80, generator=g)
    return {"features": feats, "feature_lens": lens, "clean_features": feats.roll(1, 1),
            "clean_feature_lens": lens, "targets": torch.randint(1, 28, (3, 5), generator=g),
            "target_lens": torch.tensor([5, 3, 4]), "ids": ["a", "b", "c"],
            "texts": ["abcde", "abc", "abcd"]}


def test_robust_task_logs_grad_norms_before_its_own_clipping(tmp_path):
    torch.manual_seed(0)
    task = RobustASRTask(encoder=ENC, spec_augment=False, lambda_adv=1.0, n_critic=2,
                         critic=CriticConfig(channels=16, kernel_size=3), grad_clip=CLIP,
                         warmup_steps=1, total_steps=4)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"),
                         callbacks=[LearningRateMonitor(logging_interval="step")],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(task, train_dataloaders=DataLoader([_paired_batch(i) for i in range(4)],
                                                   batch_size=None))
    acc = events(tmp_path / "tb")
    enc = acc.Scalars("train/grad_norm")
    critic = acc.Scalars("train/critic_grad_norm")
    assert [e.step for e in enc] == [0, 1, 2, 3] and len(critic) == 4
    assert all(math.isfinite(e.value) and e.value > 10 * CLIP for e in enc)
    assert all(math.isfinite(e.value) and e.value > 0 for e in critic)
    assert len(acc.Scalars("lr-AdamW")) == 4  # the encoder's schedule (the critic has none)


def test_every_recipe_logs_the_learning_rate():
    sys.path.insert(0, str(REPO / "recipes"))
    from effective_config import effective_configs

    paths = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if not p.name.startswith("_"))
    for path, config in zip(paths, effective_configs(paths, in_process=True), strict=True):
        trainer = config["trainer"]  # with the trainer block the recipe includes
        callbacks = [c["class_path"] for c in trainer.get("callbacks") or []]
        assert "pytorch_lightning.callbacks.LearningRateMonitor" in callbacks, path
        assert trainer.get("logger"), path
