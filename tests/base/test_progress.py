"""Progress output stays bounded when stdout/stderr are not terminals (CI logs, pipes): the
tools' progress helper and the Lightning progress bar of ``speechlab fit``."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from speechlab.progress import LineProgress, progress

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("SPEECHLAB_PROGRESS_INTERVAL", None)
    return env


def _segments(text: str) -> list[str]:
    """What a log viewer shows as lines: tqdm redraws with carriage returns."""
    return [s for s in re.split(r"[\r\n]", text) if s.strip()]


def test_line_progress_writes_at_most_one_line_per_interval():
    out = io.StringIO()
    bar = progress(range(5000), desc="work", unit="utt", file=out)  # StringIO: not a terminal
    assert isinstance(bar, LineProgress)
    assert sum(1 for _ in bar) == 5000
    lines = out.getvalue().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("work: 5000/5000 utt (100%)")
    out = io.StringIO()
    with LineProgress(total=10, desc="w", interval=0.0, file=out) as bar:  # every update
        for _ in range(10):
            bar.update()
    assert len(out.getvalue().splitlines()) == 11  # 10 updates + the closing line


def test_synth_progress_is_bounded_in_a_pipe(tmp_path, espeak):
    proc = subprocess.run(
        [sys.executable, "-m", "speechlab.cli", "data", "synth", "--out", str(tmp_path / "c"),
         "--utterances", "60", "--seed", "1", "--jobs", "1"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [s for s in _segments(proc.stdout + proc.stderr) if s.startswith("synth")]
    # 60 updates; tqdm would redraw for most of them, the helper writes the closing line
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("synth: 60/60 utt (100%)")


def test_fit_progress_is_bounded_in_a_pipe(tmp_path):
    steps = 400
    proc = subprocess.run(
        [sys.executable, "-m", "speechlab.cli", "fit",
         "--model", "pytorch_lightning.demos.boring_classes.BoringModel",
         "--data", "pytorch_lightning.demos.boring_classes.BoringDataModule",
         f"--trainer.max_steps={steps}", "--trainer.accelerator=cpu", "--trainer.logger=false",
         "--trainer.enable_checkpointing=false", "--trainer.enable_model_summary=false",
         "--trainer.val_check_interval=100", "--trainer.check_val_every_n_epoch=null",
         f"--trainer.default_root_dir={tmp_path}"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = _segments(proc.stdout)
    assert not [s for s in out if "it/s" in s or "Epoch " in s], out[:5]  # no TQDM redraws
    validations = [s for s in out if s.startswith("validation at step")]
    assert len(validations) == 4  # every 100 of 400 steps (64 batches per epoch)
    assert out[-1].startswith(f"training ended at step {steps}/{steps}")
    assert len(out) <= 8, out
