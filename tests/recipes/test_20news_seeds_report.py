"""recipes/20news/seeds_report.py: seed means, sample standard deviations and paired
differences against hand-computed values; bad files are named and skipped."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "recipes" / "20news" / "seeds_report.py"
spec = importlib.util.spec_from_file_location("seeds_report", PATH)
seeds_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds_report)


def write(folder: Path, name: str, **results) -> None:
    (folder / f"{name}.json").write_text(json.dumps(results))


def test_means_stds_and_paired_differences(tmp_path, capsys):
    for s, ppl in enumerate([200.0, 196.0, 198.0]):
        write(tmp_path, f"lstm_equal_size_seed{s}", perplexity=ppl)
    # -2 %, -1 %, 0 % against the same seed's LSTM
    for s, ppl in enumerate([196.0, 194.04, 198.0]):
        write(tmp_path, f"tcnlm_10_seed{s}", perplexity=ppl, npmi_mean=0.1 * (s + 1))
    write(tmp_path, "tcnlm_30_seed0", perplexity=190.0)  # one seed: no std, no t
    write(tmp_path, "tcnlm_30_seed1", topics=[])  # no perplexity: skipped, named
    (tmp_path / "tcnlm_30_seed2.json").write_text("{not json")
    write(tmp_path, "tcnlm_10", perplexity=1.0)  # not a seed run: ignored
    runs, skipped = seeds_report.read_runs(tmp_path)
    assert sorted(runs) == ["lstm_equal_size", "tcnlm_10", "tcnlm_30"] and len(skipped) == 2
    assert all("tcnlm_30_seed" in line and "skipped" in line for line in skipped)
    assert seeds_report.mean_std([200.0, 196.0, 198.0]) == (198.0, 2.0)
    d = seeds_report.paired_differences(runs, "tcnlm_10", "lstm_equal_size")
    assert d == pytest.approx([-2.0, -1.0, 0.0])
    assert seeds_report.paired_differences(runs, "tcnlm_30", "lstm_equal_size") == pytest.approx([-5.0])
    assert seeds_report.main([str(tmp_path)]) == 0
    out = capsys.readouterr()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.out.splitlines() if line.startswith("| ")}
    assert "198.00 ± 2.00" in rows["lstm_equal_size"]
    t = -1.0 / (1.0 / math.sqrt(3))
    assert "-1.00 % ± 1.00" in rows["tcnlm_10"] and f"{t:.2f}" in rows["tcnlm_10"] and "0.200" in rows["tcnlm_10"]
    assert "| 1 | 190.00 |" in rows["tcnlm_30"] and "-5.00 %" in rows["tcnlm_30"]
    assert "7 runs read, 2 skipped" in out.out
    assert out.err.count("skipped") == 2


def test_missing_folder_and_no_results(tmp_path, capsys):
    assert seeds_report.main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert seeds_report.main([str(tmp_path)]) == 2
    assert "no <recipe>_seed<s>.json results" in capsys.readouterr().err
