"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (read-only);
tests that need it skip with a reason when it is absent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPEECHLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$SPEECHLAB_SHARED_DATA``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SPEECHLAB_SHARED_DATA)")
    return SHARED_DATA


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
    from corpus import synth_tiny_corpus

    return synth_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))
