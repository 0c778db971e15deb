"""Reusable Lightning callbacks: checking multi-process (DDP) training, resuming.

* :class:`BatchIdRecorder` -- the utterance ids each rank trained and validated on, one JSON
  file per rank (``ids.rank{R}.json``): ranks must see disjoint batches.
* :class:`AudioThroughput` -- seconds of audio trained on per second of wall time, summed over
  ranks, after ``warmup_steps`` (``throughput.rank{R}.json``; rank 0 also writes the total).
* :class:`EvalCounts` -- the validation error counts summed over ranks (``val_counts.json``):
  the WER / CER of the whole dev set, whatever the number of processes.
* :class:`StepLog` -- one JSON line per training step (global step, epoch, loss, utterance
  ids), flushed as it is written, so a killed run leaves every finished step on disk.
* :class:`RNGState` -- the RNG states (torch, CUDA, numpy, python) in checkpoints, restored
  when a run resumes, and kept out of reach of validation (the tasks add it themselves).
* :class:`LatestCheckpoint` -- ``last.ckpt`` = the latest training state (every validation and
  the end of training), what a run resumes from; the recipes pair it with a monitored ``best``.

The recorders take ``out_dir`` (or ``path``) and only write there; add them to a recipe with
``--trainer.callbacks+=speechlab.callbacks.BatchIdRecorder --trainer.callbacks.out_dir=DIR``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from speechlab.dist import rank_and_world

#: feature frames per second (10 ms shift) -- the batches' ``feature_lens`` unit
FRAMES_PER_SECOND = 100.0


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
        rank, world = rank_and_world()
        _write(self.out_dir / f"ids.rank{rank}.json",
               {"rank": rank, "world_size": world, "global_step": trainer.global_step,
                "train_steps": self.train, "losses": self.losses, "val_ids": self.val})

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._dump(trainer)


class Throughput(pl.Callback):
    """What a run trains per wall-clock second, after ``warmup_steps`` steps.

    Each rank adds up :meth:`measure` of its own batches; the time runs from the end of step
    ``warmup_steps`` to the end of the last step (device synchronized), so data-loader start-up,
    compilation and the first allocations are left out. Every rank writes its own amounts
    (``throughput.rank{R}.json``); rank 0 writes the totals over ranks, the wall time (the
    slowest rank's) and ``<rate_of>_per_s`` (``throughput.json``). Subclasses say what a batch
    holds (:meth:`measure`) and which amount the rate is of (:attr:`rate_of`).
    """

    #: the amount of :meth:`measure` whose rate ``throughput.json`` gives
    rate_of = ""

    def __init__(self, out_dir: str, warmup_steps: int = 10) -> None:
        self.out_dir = Path(out_dir)
        self.warmup_steps = warmup_steps
        self._reset()

    def measure(self, batch: dict[str, Any]) -> dict[str, float]:
        """The amounts in one training batch (e.g. ``{"audio_s": 12.5, "utterances": 8}``)."""
        raise NotImplementedError

    def _reset(self) -> None:
        self.steps = 0
        self.totals: dict[str, float] = {}
        self.t0: float | None = None
        self.t1: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps == self.warmup_steps:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()
        elif self.steps > self.warmup_steps:
            for key, value in self.measure(batch).items():
                self.totals[key] = self.totals.get(key, 0.0) + value
            _sync(pl_module.device)
            self.t1 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        rank, world = rank_and_world()
        elapsed = (self.t1 - self.t0) if self.t0 is not None and self.t1 is not None else 0.0
        keys = self.measure_keys()  # the same order on every rank
        timed = max(self.steps - self.warmup_steps, 0)
        mine = {"rank": rank, "world_size": world, "steps": self.steps, "timed_steps": timed,
                **{k: self.totals.get(k, 0.0) for k in keys}, "elapsed_s": elapsed}
        _write(self.out_dir / f"throughput.rank{rank}.json", mine)
        stats = torch.tensor([*(self.totals.get(k, 0.0) for k in keys), elapsed],
                             dtype=torch.float64, device=pl_module.device)
        if world > 1:
            parts = [torch.zeros_like(stats) for _ in range(world)]
            torch.distributed.all_gather(parts, stats)
        else:
            parts = [stats]
        if rank == 0:
            totals = {k: sum(float(p[i]) for p in parts) for i, k in enumerate(keys)}
            wall = max(float(p[-1]) for p in parts)
            rate = totals.get(self.rate_of, 0.0)
            _write(self.out_dir / "throughput.json",
                   {"world_size": world, "timed_steps": timed, "warmup_steps": self.warmup_steps,
                    **totals, "elapsed_s": wall,
                    f"{self.rate_of}_per_s": rate / wall if wall > 0 else None})

    def measure_keys(self) -> tuple[str, ...]:
        """The keys of :meth:`measure` (written as zeros when no step was timed)."""
        return (self.rate_of,)


class AudioThroughput(Throughput):
    """Audio seconds trained per wall-clock second (``audio_s_per_s``; ``feature_lens`` frames
    of each rank's batches), plus utterances; see :class:`Throughput`."""

    rate_of = "audio_s"

    def measure(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"audio_s": float(batch["feature_lens"].sum()) / FRAMES_PER_SECOND,
                "utterances": float(len(batch["ids"]))}

    def measure_keys(self) -> tuple[str, ...]:
        return ("audio_s", "utterances")


class TokenThroughput(Throughput):
    """Target tokens (``batch["targets"] != -100``) trained per wall-clock second
    (``tokens_per_s``), plus sentences, for the language-model tasks; see :class:`Throughput`."""

    rate_of = "tokens"

    def measure(self, batch: dict[str, Any]) -> dict[str, float]:
        targets = batch["targets"]
        return {"tokens": float((targets != -100).sum()), "sentences": float(targets.shape[0])}

    def measure_keys(self) -> tuple[str, ...]:
        return ("tokens", "sentences")


class EvalCounts(pl.Callback):
    """Validation error counts of the whole dev set: each :class:`speechlab.metrics.ErrorRate`
    of ``pl_module.metrics`` whose name starts with ``val``, summed over ranks by hand (a copy:
    Lightning's own reduction is untouched). Rank 0 writes ``val_counts.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        rank, world = rank_and_world()
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


class StepLog(pl.Callback):
    """Appends one JSON line per training step to ``path``: ``{"step", "epoch", "loss",
    "ids"}`` (the global step after the optimizer step, the epoch, the step's loss as returned
    by ``training_step``, and the batch's utterance ids). Each line is flushed when written, so
    a killed run leaves every finished step on disk; a resumed run appends to the same file.
    Rank 0 only."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._file: Any = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._file is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch,
               "loss": float(loss.detach()) if isinstance(loss, torch.Tensor) else None,
               "ids": list(batch["ids"]) if isinstance(batch, dict) and "ids" in batch else None}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def rng_states() -> dict[str, Any]:
    """The states of every random number generator training draws from: torch (CPU and each
    CUDA device), numpy and python's ``random``, as tensors, lists and numbers (loadable with
    ``torch.load(weights_only=True)``)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class RNGState(pl.Callback):
    """Makes the training steps' randomness (dropout, SpecAugment, ...) resumable.

    The RNG states are taken at the end of every training step and put back at the start of the
    next one, so whatever runs in between -- validation, a data-loader iterator drawing its
    worker seed at an epoch boundary, prefetching -- does not shift the training streams. The
    states of the last finished step go into checkpoints and are restored at the first step of
    a resumed run: a run resumed from step k draws the same numbers from step k + 1 on as the
    run that was never interrupted. Single process: exact. Under DDP the checkpoint holds rank
    0's states; on resume every rank restores them and ranks > 0 then re-seed from them and
    their rank (distinct, deterministic streams, not the interrupted run's).

    The speechlab tasks add this callback themselves (``configure_callbacks``).
    """

    def __init__(self) -> None:
        self._states: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._states is not None:
            set_rng_states(self._states)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._states = rng_states()

    def state_dict(self) -> dict[str, Any]:
        return {"states": self._states} if self._states is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("states")
        if states is None:
            return
        rank, _ = rank_and_world()
        if rank > 0:
            set_rng_states(states)
            seed = int(torch.randint(0, 2**62, (1,))) + rank
            import random

            import numpy as np

            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            states = rng_states()
        self._states = states


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest training state, what a stopped or crashed run resumes from
    (``speechlab fit --ckpt_path …/last.ckpt``). Rewritten at every validation (or epoch end,
    as Lightning's unmonitored checkpoints are) and once more when training ends.

    Lightning 2.6's ``save_last=True`` on a *monitored* checkpoint rewrites ``last.ckpt`` only
    when the monitored score improves (and at the end only if it never saved), so a run whose dev
    score stopped improving would resume from an older step; the recipes pair a monitored
    ``best`` checkpoint with this one.

    Args:
        dirpath: the checkpoint folder.
        filename: the file's stem (default ``last``).
        **kwargs: other :class:`~pytorch_lightning.callbacks.ModelCheckpoint` arguments (e.g.
            ``every_n_train_steps``); ``monitor`` and ``save_top_k`` are fixed.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last",
                 **kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1,
                         enable_version_counter=False, **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # not saved at this step yet
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
