"""Crash-safe resume: a ``speechlab fit`` run SIGKILLed mid-epoch and resumed from its last
checkpoint trains on the same batches (sampler position) with the same losses as a run that was
never interrupted (CPU, fixed seed, deterministic mode, dropout and SpecAugment on, validation
between steps). The oracle is the uninterrupted run itself, step by step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]

#: checkpoint every K steps; the killed run hangs (and is killed) after step HANG; all runs stop
#: at MAX_STEPS, which crosses an epoch boundary (10 utterances, <= 5 s of audio per batch)
K, HANG, MAX_STEPS = 3, 5, 14


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _model(task: str) -> dict:
    encoder = {"stride": 4, "conv_channels": 4, "rnn_type": "gru", "hidden_size": 16,
               "num_layers": 1, "dropout": 0.2}
    args = {"encoder": encoder, "spec_augment": True, "lr": 3e-3, "warmup_steps": 2}
    if task == "gram_ctc":
        args.update(default_max_n=2, default_top_k=10)
        return {"class_path": "speechlab.tasks.gram_ctc.GramCTCTask", "init_args": args}
    return {"class_path": "speechlab.tasks.ctc.CTCTask", "init_args": args}


def _config(run: Path, corpus: dict[str, Path], task: str, num_workers: int,
            hang: int | None = None) -> Path:
    """A recipe for one run whose outputs all go to ``run``."""
    callbacks = [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run / "checkpoints"), "filename": "step{step}",
                       "every_n_train_steps": K, "save_top_k": -1, "save_last": True,
                       "auto_insert_metric_name": False,
                       "enable_version_counter": False}},
        {"class_path": "speechlab.callbacks.StepLog", "init_args": {"path": str(run / "steps.jsonl")}},
    ]
    if hang is not None:
        callbacks.append({"class_path": "tests.helpers.HangAtStep",
                          "init_args": {"step": hang, "flag": str(run / "hanging")}})
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": MAX_STEPS,
                    "deterministic": True, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 1,
                    "val_check_interval": 4, "check_val_every_n_epoch": None,
                    "use_distributed_sampler": False, "default_root_dir": str(run),
                    "callbacks": callbacks},
        "model": _model(task),
        "data": {"class_path": "speechlab.data.speech.SpeechDataModule",
                 "init_args": {"train_manifest": str(corpus["train"]),
                               "dev_manifest": str(corpus["dev"]),
                               "test_manifest": str(corpus["test"]), "max_duration": 5.0,
                               "num_buckets": 2, "num_workers": num_workers, "seed": 7}},
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "speechlab.cli", "fit", "--config", str(config), *extra]


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def _wait(proc: subprocess.Popen, flag: Path, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before hanging:\n"
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("run did not reach the hang step in time")
        time.sleep(0.05)


def _resume_matches_uninterrupted(tmp_path: Path, corpus: dict[str, Path], task: str,
                                  num_workers: int = 0) -> None:
    ref_cfg = _config(tmp_path / "reference", corpus, task, num_workers)
    cut_cfg = _config(tmp_path / "killed", corpus, task, num_workers, hang=HANG)
    common = {"env": _env(), "cwd": tmp_path, "stdout": subprocess.PIPE,
              "stderr": subprocess.STDOUT, "text": True}
    reference = subprocess.Popen(_fit_cmd(ref_cfg), **common)
    killed = subprocess.Popen(_fit_cmd(cut_cfg), **common)
    try:
        _wait(killed, tmp_path / "killed" / "hanging")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed.returncode == -signal.SIGKILL
        out, _ = reference.communicate(timeout=300)
        assert reference.returncode == 0, out[-3000:]
    finally:
        for p in (reference, killed):
            if p.poll() is None:
                p.kill()
    killed_steps = _steps(tmp_path / "killed")
    assert [r["step"] for r in killed_steps] == list(range(1, HANG + 1))

    # the last checkpoint of the killed run: written at step K, mid-epoch
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    last = ckpt_dir / f"step{K}.ckpt"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", last.name]
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == K
    reference_steps = _steps(tmp_path / "reference")
    assert [r["step"] for r in reference_steps] == list(range(1, MAX_STEPS + 1))
    epoch_of_k = reference_steps[K - 1]["epoch"]
    assert reference_steps[K]["epoch"] == epoch_of_k, "checkpoint K must be mid-epoch"
    assert reference_steps[-1]["epoch"] > epoch_of_k, "the runs must cross an epoch boundary"
    # the killed run had trained exactly like the reference up to its death
    assert killed_steps == reference_steps[:HANG]

    # resume (appending to the killed run's step log) and finish the run
    resumed = subprocess.run(_fit_cmd(cut_cfg, "--ckpt_path", str(last)), **common, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    after = _steps(tmp_path / "killed")[HANG:]
    assert [r["step"] for r in after] == list(range(K + 1, MAX_STEPS + 1))
    expected = reference_steps[K:]
    assert [r["ids"] for r in after] == [r["ids"] for r in expected]  # sampler position
    assert [r["epoch"] for r in after] == [r["epoch"] for r in expected]
    losses = torch.tensor([r["loss"] for r in after], dtype=torch.float64)
    ref_losses = torch.tensor([r["loss"] for r in expected], dtype=torch.float64)
    assert torch.equal(losses, ref_losses), (losses, ref_losses)


def test_ctc_resumes_mid_epoch_like_an_uninterrupted_run(tiny_corpus, tmp_path):
    _resume_matches_uninterrupted(tmp_path, tiny_corpus, "ctc")


@pytest.mark.slow
def test_gram_ctc_resumes_mid_epoch_like_an_uninterrupted_run(tiny_corpus, tmp_path):
    _resume_matches_uninterrupted(tmp_path, tiny_corpus, "gram_ctc")


@pytest.mark.slow
def test_ctc_resumes_mid_epoch_with_data_loader_workers(tiny_corpus, tmp_path):
    """Two workers: the sampler runs batches ahead of training (prefetch); the checkpoint keeps
    the position of the batches training consumed, and features do not depend on the worker."""
    _resume_matches_uninterrupted(tmp_path, tiny_corpus, "ctc", num_workers=2)
