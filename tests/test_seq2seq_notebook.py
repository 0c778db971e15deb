"""notebooks/cold_fusion.ipynb executes end to end in its small settings (espeak-ng corpus of 12
utterances, tiny LMs and cold-fusion model): alignment and gate plots, LM swap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "cold_fusion.ipynb"


def test_cold_fusion_notebook_executes(espeak, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    for var in ("COLD_FUSION_CKPT", "COLD_FUSION_SWAP_LM", "COLD_FUSION_MANIFEST"):
        monkeypatch.delenv(var, raising=False)  # the small settings, whatever the shell has
    monkeypatch.setenv("COLD_FUSION_WORKDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=dict(os.environ))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # alignment, gate, gate after the LM swap
    text = "".join(o.get("text", "") for o in outputs)
    assert "LM frozen: True True" in text and "numbers LM" in text
