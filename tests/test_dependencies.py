"""Dependencies: a test module whose optional piece is missing skips with the reason instead of
stopping pytest at collection."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_without_kenlm_its_tests_skip_with_the_reason(tmp_path):
    """tests/test_lm_ngram.py in a pytest run where ``import kenlm`` fails as for a module that
    is not installed: it is collected, the kenlm tests skip naming kenlm, the others pass."""
    hidden = tmp_path / "no_kenlm"
    hidden.mkdir()
    (hidden / "kenlm.py").write_text(
        'raise ModuleNotFoundError("No module named \'kenlm\'", name="kenlm")\n')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(hidden), str(REPO), env.get("PYTHONPATH", "")])
    # every test but the slow one that builds lmplz and needs no kenlm module
    cmd = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
           "-m", "slow or not slow", "-k", "not counts_by_hand", "tests/test_lm_ngram.py"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    skipped = re.findall(r"^SKIPPED \[\d+\] tests/test_lm_ngram\.py:\d+: (.*)$", out, re.M)
    assert len(skipped) == 2 and all("kenlm" in reason for reason in skipped), out[-3000:]
    for name in ("test_truncated_arpa_is_named", "test_lm_ngram_scores_match_kenlm_queries"):
        assert re.search(rf"::{name} SKIPPED", out), out[-3000:]
    assert re.search(r"^=+ \d+ passed, 2 skipped", out, re.M) and "FAILED" not in out, out[-3000:]
