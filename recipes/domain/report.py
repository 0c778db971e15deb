"""Markdown tables of the domain-transfer experiment (recipes/domain/run.sh) from its outputs:
``exp/domain/results/<run>/wer.json`` and the CSV training logs.

usage: python recipes/domain/report.py [exp/domain]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

MODELS = ("none", "shallow", "deep", "cold")


def rates(results: Path, name: str) -> str:
    path = results / name / "wer.json"
    if not path.exists():
        return "n/a | n/a"
    s = json.loads(path.read_text())
    return f"{100 * s['test_word']['rate']:.1f} | {100 * s['test_char']['rate']:.1f}"


def curve(exp: Path, run: str) -> list[tuple[int, float | None, float | None]]:
    """``(step, train loss, val CER)`` rows of a run's CSV log (latest version)."""
    versions = sorted((exp / run / "csv").glob("version_*/metrics.csv"))
    if not versions:
        return []
    rows = []
    with open(versions[-1], newline="") as f:
        for r in csv.DictReader(f):
            loss = float(r["train/loss"]) if r.get("train/loss") else None
            cer = float(r["val/cer"]) if r.get("val/cer") else None
            rows.append((int(r["step"]), loss, cer))
    return rows


def main() -> None:
    exp = Path(sys.argv[1] if len(sys.argv) > 1 else "exp/domain")
    res = exp / "results"
    print("| model | A=home test WER % | CER % | B=numbers test (B LM swapped in) WER % | CER % "
          "| B after fine-tuning on 10% of B WER % | CER % |")
    print("|---|---|---|---|---|---|---|")
    for m in MODELS:
        print(f"| {m} | {rates(res, f'{m}_home')} | {rates(res, f'{m}_numbers')} | "
              f"{rates(res, f'ft_{m}_numbers')} |")
    print()
    print("Validation CER (home dev, greedy) during training on domain A:")
    print()
    curves = {run: curve(exp, run) for run in ("none", "cold")}
    steps = sorted({s for rows in curves.values() for s, _, c in rows if c is not None})
    print("| step | " + " | ".join(f"{r} val CER %" for r in curves) + " |")
    print("|---|" + "---|" * len(curves))
    for step in steps:
        cells = []
        for rows in curves.values():
            v = [c for s, _, c in rows if s == step and c is not None]
            cells.append(f"{100 * v[0]:.1f}" if v else "")
        print(f"| {step} | " + " | ".join(cells) + " |")
    print()
    for run, rows in curves.items():
        losses = [(s, v) for s, v, _ in rows if v is not None]
        if losses:
            marks = losses[:: max(1, len(losses) // 8)] + [losses[-1]]
            print(f"{run} train loss (label-smoothed CE) by step: "
                  + ", ".join(f"{s}: {v:.2f}" for s, v in marks))


if __name__ == "__main__":
    main()
