"""Seed statistics of a multi-seed 20 Newsgroups run (``SEEDS="0 1 2" bash
recipes/20news/run_gpu.sh``): each recipe's test perplexity over its seeds (mean ± sample
standard deviation) and, against a baseline recipe, the paired per-seed relative differences
(the same seed's data order and initialisation draw for both) with their mean ± std and t
statistic, as a markdown table.

  python recipes/20news/seeds_report.py /tmp/out [--baseline lstm_equal_size]

Reads ``<dir>/<recipe>_seed<s>.json`` (``speechlab test``'s results.json: ``perplexity``, and
``npmi_mean`` for a TCNLM). A file that cannot be read or lacks ``perplexity`` is named and
skipped (counted in the last line).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

RUN_NAME = re.compile(r"^(?P<recipe>.+)_seed(?P<seed>\d+)\.json$")


def read_runs(folder: Path) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """``{recipe: {seed: results}}`` from ``folder``'s ``<recipe>_seed<s>.json`` files, and a
    line per file skipped (unreadable, not JSON, no numeric ``perplexity``)."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    skipped = []
    for path in sorted(folder.glob("*_seed*.json")):
        m = RUN_NAME.match(path.name)
        if m is None:
            continue
        try:
            results = json.loads(path.read_text())
            float(results["perplexity"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            skipped.append(f"{path}: skipped ({type(e).__name__}: {e})")
            continue
        runs[m["recipe"]][int(m["seed"])] = results
    return dict(runs), skipped


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than 2 values)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def paired_differences(runs: dict[str, dict[int, dict]], recipe: str, baseline: str) -> list[float]:
    """Per seed both ran: ``(ppl_recipe - ppl_baseline) / ppl_baseline`` in %."""
    a, b = runs[recipe], runs[baseline]
    return [100 * (a[s]["perplexity"] - b[s]["perplexity"]) / b[s]["perplexity"] for s in sorted(a.keys() & b.keys())]


def report(runs: dict[str, dict[int, dict]], baseline: str) -> list[str]:
    """The markdown table's lines."""
    lines = [f"| recipe | seeds | test perplexity (mean ± std) | per seed | vs {baseline}, paired (mean ± std) | t | NPMI |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for recipe in sorted(runs, key=lambda r: (r != baseline, r)):
        by_seed = runs[recipe]
        ppl = [by_seed[s]["perplexity"] for s in sorted(by_seed)]
        m, sd = mean_std(ppl)
        per_seed = ", ".join(f"{s}: {by_seed[s]['perplexity']:.2f}" for s in sorted(by_seed))
        diff, t = "–", "–"
        if recipe != baseline and baseline in runs:
            d = paired_differences(runs, recipe, baseline)
            if d:
                dm, dsd = mean_std(d)
                diff = f"{dm:+.2f} % ± {dsd:.2f}" if len(d) > 1 else f"{dm:+.2f} %"
                t = f"{dm / (dsd / math.sqrt(len(d))):.2f}" if len(d) > 1 and dsd > 0 else "–"
        npmi = [by_seed[s]["npmi_mean"] for s in sorted(by_seed) if "npmi_mean" in by_seed[s]]
        npmi_cell = f"{statistics.fmean(npmi):.3f}" if npmi else "–"
        sd_cell = f" ± {sd:.2f}" if not math.isnan(sd) else ""
        lines.append(f"| {recipe} | {len(ppl)} | {m:.2f}{sd_cell} | {per_seed} | {diff} | {t} | {npmi_cell} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the run's $OUT (holding <recipe>_seed<s>.json)")
    p.add_argument("--baseline", default="lstm_equal_size", help="the recipe the others are compared with")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        print(f"seeds_report: {args.folder}: no such folder", file=sys.stderr)
        return 2
    runs, skipped = read_runs(args.folder)
    for line in skipped:
        print(line, file=sys.stderr)
    if not runs:
        print(f"seeds_report: {args.folder}: no <recipe>_seed<s>.json results", file=sys.stderr)
        return 2
    print("\n".join(report(runs, args.baseline)))
    print(f"\n{sum(len(v) for v in runs.values())} runs read, {len(skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
