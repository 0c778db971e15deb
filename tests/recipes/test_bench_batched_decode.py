"""bench/batched_decode.py on the CPU at a toy size: every row of the table is timed (the word
LM rows load their ARPA while it still exists; flashlight rows only where flashlight-text is
installed, else one row that says so); no row fails."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "batched_decode.py"


def test_every_row_is_timed():
    out = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--batch", "2", "--frames", "12",
                          "--repeat", "1", "--threads", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| output set")]
    assert "failed" not in out.stdout, out.stdout
    names = {line.split(" | ")[1] for line in rows}
    for want in ("batched greedy", "batched beam, per-frame loop",
                 "batched beam + char 3-gram LM, per-frame loop", "batched beam + word 3-gram LM, per-frame loop",
                 "batched beam + word 3-gram LM + lexicon, per-frame loop", "forward + batched greedy",
                 "forward + batched beam + word 3-gram LM + lexicon, per-frame loop"):
        assert want in names, (want, sorted(names))
    for line in rows:
        cells = line.split(" | ")
        if cells[1].startswith("flashlight") and "not installed" in line:
            continue
        assert re.fullmatch(r"[\d,.]+", cells[2]), line  # ms per batch
