"""notebooks/gram_ctc.ipynb executes end to end in its small setting (60 training steps on an
FSDD slice; ~40 s of CPU under load: marked slow like the other notebooks)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "gram_ctc.ipynb"


@pytest.mark.slow
def test_gram_ctc_notebook_executes(shared_data, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    if not (shared_data / "fsdd" / "manifest.jsonl").exists():
        pytest.skip("FSDD not in the shared data")
    monkeypatch.setenv("GRAM_NOTEBOOK_STEPS", "60")
    monkeypatch.setenv("SPEECHLAB_SHARED_DATA", str(shared_data))
    monkeypatch.delenv("GRAM_NOTEBOOK_CHECKPOINT", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2  # emissions, gram bars
    text = "".join(o.get("text", "") for o in outputs)
    assert "60 steps in" in text and "fewest frames a path needs" in text
    for decoder in ("greedy", "beam 16 ", "beam 16 + LM ", "beam 16 + LM + lexicon"):
        assert f"\n{decoder}" in "\n" + text, decoder
