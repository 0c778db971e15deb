"""One rank of the fast two-process DDP test (``tests/tasks/test_ddp.py``), launched by
``torchrun`` exactly as a user would launch a recipe: Lightning finds the torchrun environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...), joins its process group (gloo on the CPU) and
does not start processes of its own. A script, not a test module: pytest does not collect it,
and it imports nothing of ``tests``.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/tasks/ddp_worker.py OUT TRAIN DEV``
(``... tests/tasks/ddp_worker.py robust_gan OUT``: the GAN-robust task, see :func:`robust_gan`)

A tiny :class:`~speechlab.tasks.ctc.CTCTask` fits 2 steps with ``strategy="ddp"`` and
``use_distributed_sampler=False`` (the recipes' setting), then validates once. Transcripts are
replaced by :func:`fake_hypothesis`, a fixed function of the reference, so that the validation
WER/CER have a known value whatever the model learnt. Each rank writes ``OUT/rank{R}.json``:
the ids of its training steps and validation batches, its local error counts, and the WER/CER
Lightning logged (reduced over the ranks by the metric).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from speechlab.data.speech import SpeechDataModule  # noqa: E402
from speechlab.nn.encoders import SpeechEncoderConfig  # noqa: E402
from speechlab.tasks.ctc import CTCTask  # noqa: E402


def fake_hypothesis(ref: str) -> str:
    """The reference for an even number of words, else its first word: utterances' error rates
    differ widely, so a mean of per-rank rates differs from the pooled rate."""
    words = ref.split()
    return ref if len(words) % 2 == 0 else words[0]


class FixedTranscripts(CTCTask):
    """The CTC task with :func:`fake_hypothesis` as its transcripts (validation only)."""

    def transcribe(self, batch: dict[str, Any]) -> list[str]:
        return [fake_hypothesis(t) for t in batch["texts"]]


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.train: list[list[str]] = []
        self.val: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train.append(list(batch["ids"]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self.val.extend(batch["ids"])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # this rank's own counts (Lightning reduces and then resets the metrics after this hook)
        self.counts = {u: [int(pl_module.metrics[f"val_{u}"].errors),
                           int(pl_module.metrics[f"val_{u}"].ref_len)] for u in ("word", "char")}


def main(out: str, train: str, dev: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    enc = SpeechEncoderConfig(hidden_size=16, num_layers=1, conv_channels=4, dropout=0.0)
    task = FixedTranscripts(encoder=enc, spec_augment=False, warmup_steps=1)
    dm = SpeechDataModule(train, dev, max_duration=6.0, num_buckets=2, num_workers=0)
    rec = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2,
                         use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[rec])
    trainer.fit(task, datamodule=dm)
    trainer.limit_val_batches = 1.0
    logged = trainer.validate(task, datamodule=dm, verbose=False)[0]
    rank = trainer.global_rank
    result = {
        "rank": rank, "world_size": trainer.world_size,
        "env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")},
        "cluster_environment": type(trainer.strategy.cluster_environment).__name__,
        "backend": torch.distributed.get_backend(),
        "train_steps": rec.train, "val_ids": rec.val,
        "local_counts": rec.counts,
        "logged": {k: float(v) for k, v in logged.items()},
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, indent=1) + "\n")


def robust_gan(out: str) -> None:
    """The GAN-robust task (critic updates are backward passes of their own) under
    ``ddp_find_unused_parameters_true`` on random paired batches, different on each rank
    (Lightning's DistributedSampler); writes each rank's parameters before and after 3 steps."""
    from speechlab.nn.critic import CriticConfig
    from speechlab.tasks.robust import RobustASRTask

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    enc = SpeechEncoderConfig(hidden_size=16, num_layers=1, conv_channels=4, dropout=0.0)
    task = RobustASRTask(encoder=enc, spec_augment=False, lambda_adv=0.1, lambda_l1=0.1,
                         n_critic=2, critic=CriticConfig(channels=8, kernel_size=3),
                         warmup_steps=1, lr=1e-2, critic_lr=1e-2)
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(6):
        lens = torch.tensor([40, 32])
        batches.append({"features": torch.randn(2, 40, 80, generator=g), "feature_lens": lens,
                        "clean_features": torch.randn(2, 40, 80, generator=g),
                        "clean_feature_lens": lens, "targets": torch.randint(1, 29, (2, 4), generator=g),
                        "target_lens": torch.tensor([4, 3]), "ids": [f"b{i}u0", f"b{i}u1"],
                        "texts": ["abcd", "abc"]})
    before = {k: v.detach().clone() for k, v in task.state_dict().items()}
    rec = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         precision="bf16-mixed", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[rec])
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    torch.save({"before": before, "after": task.state_dict(), "train_steps": rec.train},
               Path(out, f"robust.rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    if sys.argv[1] == "robust_gan":
        robust_gan(sys.argv[2])
    else:
        main(*sys.argv[1:4])
