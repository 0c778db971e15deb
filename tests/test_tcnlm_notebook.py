"""notebooks/tcnlm.ipynb executes end to end on the embedded corpus (about a minute of CPU:
marked slow; CI runs notebooks through nbmake)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tcnlm.ipynb"


@pytest.mark.slow
def test_tcnlm_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2  # topic bars, perplexity
    text = "".join(o.get("text", "") for o in outputs)
    assert "trained 4 models" in text and "topics 0+1 (50/50):" in text
