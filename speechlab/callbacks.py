"""Reusable Lightning callbacks for checking multi-process (DDP) training.

* :class:`BatchIdRecorder` -- the utterance ids each rank trained and validated on, one JSON
  file per rank (``ids.rank{R}.json``): ranks must see disjoint batches.
* :class:`AudioThroughput` -- seconds of audio trained on per second of wall time, summed over
  ranks, after ``warmup_steps`` (``throughput.rank{R}.json``; rank 0 also writes the total).
* :class:`EvalCounts` -- the validation error counts summed over ranks (``val_counts.json``):
  the WER / CER of the whole dev set, whatever the number of processes.

All of them take ``out_dir`` and only write there; add them to a recipe with
``--trainer.callbacks+=speechlab.callbacks.BatchIdRecorder --trainer.callbacks.out_dir=DIR``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

#: feature frames per second (10 ms shift) -- the batches' ``feature_lens`` unit
FRAMES_PER_SECOND = 100.0


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BatchIdRecorder(pl.Callback):
    """Records ``batch["ids"]`` (and the local loss) of every training step and the ids of
    every validation batch of this rank."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train: list[list[str]] = []
        self.losses: list[float] = []
        self.val: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train.append(list(batch["ids"]))
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.losses.append(float(loss.detach()))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.val = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self.val.extend(batch["ids"])

    def _dump(self, trainer) -> None:
        rank, world = _dist()
        _write(self.out_dir / f"ids.rank{rank}.json",
               {"rank": rank, "world_size": world, "global_step": trainer.global_step,
                "train_steps": self.train, "losses": self.losses, "val_ids": self.val})

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._dump(trainer)


class AudioThroughput(pl.Callback):
    """Audio seconds trained per wall-clock second, after ``warmup_steps`` steps.

    Each rank counts the audio of its own batches (``feature_lens`` frames); the time runs from
    the end of step ``warmup_steps`` to the end of the last step (device synchronized), so
    data-loader start-up, compilation and the first allocations are left out. Rank 0 writes
    the total over ranks (``throughput.json``).
    """

    def __init__(self, out_dir: str, warmup_steps: int = 10) -> None:
        self.out_dir = Path(out_dir)
        self.warmup_steps = warmup_steps
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.audio_s = 0.0
        self.utterances = 0
        self.t0: float | None = None
        self.t1: float | None = None
        self._pending = 0.0
        self._pending_n = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps == self.warmup_steps:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()
        elif self.steps > self.warmup_steps:
            self.audio_s += float(batch["feature_lens"].sum()) / FRAMES_PER_SECOND
            self.utterances += len(batch["ids"])
            _sync(pl_module.device)
            self.t1 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        rank, world = _dist()
        elapsed = (self.t1 - self.t0) if self.t0 is not None and self.t1 is not None else 0.0
        mine = {"rank": rank, "world_size": world, "steps": self.steps,
                "timed_steps": max(self.steps - self.warmup_steps, 0), "audio_s": self.audio_s,
                "utterances": self.utterances, "elapsed_s": elapsed}
        _write(self.out_dir / f"throughput.rank{rank}.json", mine)
        stats = torch.tensor([self.audio_s, float(self.utterances), elapsed], dtype=torch.float64,
                             device=pl_module.device)
        if world > 1:
            parts = [torch.zeros_like(stats) for _ in range(world)]
            torch.distributed.all_gather(parts, stats)
        else:
            parts = [stats]
        if rank == 0:
            audio = sum(float(p[0]) for p in parts)
            wall = max(float(p[2]) for p in parts)
            _write(self.out_dir / "throughput.json",
                   {"world_size": world, "timed_steps": mine["timed_steps"],
                    "warmup_steps": self.warmup_steps, "audio_s": audio,
                    "utterances": int(sum(float(p[1]) for p in parts)), "elapsed_s": wall,
                    "audio_s_per_s": audio / wall if wall > 0 else None})


class EvalCounts(pl.Callback):
    """Validation error counts of the whole dev set: each :class:`speechlab.metrics.ErrorRate`
    of ``pl_module.metrics`` whose name starts with ``val``, summed over ranks by hand (a copy:
    Lightning's own reduction is untouched). Rank 0 writes ``val_counts.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        rank, world = _dist()
        metrics = getattr(pl_module, "metrics", {})
        out: dict[str, Any] = {"world_size": world, "global_step": trainer.global_step}
        for name in sorted(metrics):
            if not name.startswith("val"):
                continue
            m = metrics[name]
            counts = torch.stack([m.errors.detach().clone(), m.ref_len.detach().clone()]).long()
            local = counts.tolist()
            if world > 1:
                torch.distributed.all_reduce(counts)
            errors, ref_len = (int(v) for v in counts.tolist())
            out[name] = {"errors": errors, "ref_len": ref_len,
                         "rate": errors / max(ref_len, 1), "rank0_local": local}
        if rank == 0:
            _write(self.out_dir / "val_counts.json", out)
