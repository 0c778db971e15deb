"""Fixtures shared by the test folders (``tests/<layer>/``); a fixture that one folder uses
lives in that folder's ``conftest.py``. Helpers that are not fixtures are in ``tests/helpers.py``.

Real data lives in ``../shared/data`` beside the checkout (read-only; ``$SPEECHLAB_SHARED_DATA``
elsewhere); tests that need it take the ``shared_data`` fixture, which skips them with a reason
when it is absent (``tests/data``: the corpus preparers, real noise; ``tests/recipes``: the
LibriSpeech recipes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPEECHLAB_SHARED_DATA", REPO.parent / "shared" / "data"))

# One OpenMP thread per process: CI has 2 cores, and tests start data workers and subprocesses;
# two threads each oversubscribe the CPU (steps measured 3x slower under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$SPEECHLAB_SHARED_DATA``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SPEECHLAB_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def speech_samples(shared_data) -> dict[str, dict]:
    """The transcribed clips of ``shared/data/speech_samples`` by corpus id
    (:func:`tests.helpers.read_speech_samples`)."""
    from tests.helpers import read_speech_samples

    return read_speech_samples(shared_data / "speech_samples")


@pytest.fixture(scope="session")
def espeak() -> str:
    """Path of espeak-ng; skips when it is not installed (make test installs it)."""
    path = shutil.which("espeak-ng")
    if path is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, espeak) -> dict[str, Path]:
    """12 espeak-ng utterances with train/dev/test manifests (and ``all``)."""
    from tests.helpers import synth_tiny_corpus

    return synth_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def tiny_farfield(tiny_corpus) -> dict[str, Path]:
    """Far-field copies of the tiny corpus's train and dev splits (``speechlab data farfield``:
    simulated rooms, white/pink noise, SNR 0-20 dB), by split; each line has ``clean_id``."""
    from speechlab.cli import main

    out = tiny_corpus["train"].parent / "farfield"
    manifests = {}
    for split in ("train", "dev"):
        manifests[split] = out / split / f"{split}.jsonl"
        if not manifests[split].exists():
            rc = main(["data", "farfield", "--in", str(tiny_corpus[split]), "--out",
                       str(out / split), "--snr-range", "0", "20", "--seed", "0", "--jobs", "1",
                       "--max-order", "20", "--noise-type", "white", "pink"])
            assert rc == 0
    return manifests


@pytest.fixture
def one_torch_thread():
    """One torch thread for a test (tiny ops: two threads collapse on a busy 2-core machine);
    modules that want it say ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
