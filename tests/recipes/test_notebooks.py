"""Every notebook in notebooks/ executes top to bottom in its small settings
(``SPEECHLAB_NOTEBOOK_SMALL=1``), through nbmake's runner, in the default test run; its figures
render (PNG outputs) and the cells print what the notebook is about. The committed notebooks
carry the outputs of their full settings.

The kernel imports this checkout (its root is prepended to ``PYTHONPATH``) and runs in
notebooks/ (nbmake's working directory): a notebook must write only to temporary folders, which
the test checks. Budget on a 2-core CPU: about 20-60 s per notebook (README: Notebooks)."""

from __future__ import annotations

import base64
import os
import shutil
import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"

#: notebook -> (PNG figures, texts its outputs must contain, needs espeak-ng)
EXPECT: dict[str, tuple[int, list[str], bool]] = {
    # train a tiny model; gram emissions over a spectrogram; preferred grams; decode +/- LM
    "gram_ctc.ipynb": (2, ["espeak-ng digits", "60 steps in", "fewest frames a path needs",
                           "characters spelled by multi-character grams", "\ngreedy ",
                           "\nbeam 16 ", "\nbeam 16 + LM ", "\nbeam 16 + LM + lexicon "], True),
    # alignment, gate, gate after the LM swap; dev CER vs step of the H200 runs of record
    "cold_fusion.ipynb": (4, ["none (small settings)", "LM frozen: True True", "numbers LM"], True),
    # clean/far-field spectrograms, embedding projections, WER by SNR
    "robust_encoder.ipynb": (3, ["small settings", "far-field utterances"], True),
    # topic bars, perplexity against topics; the 20 Newsgroups topics and generations of record
    "tcnlm.ipynb": (2, ["trained 4 models", "topics 0+1 (50/50):", "20 Newsgroups, one NVIDIA H200",
                        "| 1 | +0.265 | scsi card"], False),
}


def outputs(nb) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def png_sizes(nb) -> list[tuple[int, int]]:
    """(width, height) of every PNG output, read from its header."""
    sizes = []
    for o in outputs(nb):
        data = o.get("data", {}).get("image/png")
        if data:
            raw = base64.b64decode(data)
            assert raw[:8] == b"\x89PNG\r\n\x1a\n"
            sizes.append(struct.unpack(">II", raw[16:24]))
    return sizes


def output_text(nb) -> str:
    parts = []
    for o in outputs(nb):
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
        parts.append(o.get("data", {}).get("text/markdown", ""))
    return "\n" + "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_committed_notebook_has_its_full_settings_outputs(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not [o for o in outputs(nb) if o.get("output_type") == "error"]
    assert len(png_sizes(nb)) == EXPECT[name][0]
    assert "small settings" not in output_text(nb)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_notebook_runs_in_small_settings(name, monkeypatch):
    pytest.importorskip("matplotlib")
    nb_run = pytest.importorskip("nbmake.nb_run")
    figures, texts, needs_espeak = EXPECT[name]
    if needs_espeak and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make installs it: scripts/system_deps.sh)")
    monkeypatch.setenv("SPEECHLAB_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p))
    for var in ("GRAM_NOTEBOOK_STEPS", "GRAM_NOTEBOOK_CHECKPOINT", "COLD_FUSION_CKPT",
                "COLD_FUSION_SWAP_LM", "COLD_FUSION_MANIFEST", "COLD_FUSION_WORKDIR"):
        monkeypatch.delenv(var, raising=False)
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    result = nb_run.NotebookRun(NOTEBOOKS / name, default_timeout=300).execute()
    assert result.error is None, result.error.trace
    sizes = png_sizes(result.nb)
    assert len(sizes) == figures, sizes
    assert all(w >= 200 and h >= 100 for w, h in sizes), sizes
    text = output_text(result.nb)
    for t in texts:
        assert t in text, t
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before  # wrote nothing beside itself
