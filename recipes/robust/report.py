"""Tables of the GAN-robust encoder study (recipes/robust/run_gpu.sh).

  python recipes/robust/report.py collect RESULTS.json [RESULTS.json ...] --out RECORD.json \
      [--meta KEY=VALUE ...]
  python recipes/robust/report.py table RECORD.json [--metric wer|cer]

``collect`` merges the ``results.json`` of several device calls (one per seed) into one record;
``table`` prints Markdown: per row (mean over its seeds, ± half the range) the metric on every
test set, and the far-field sets' gap to the same models' clean score.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROWS = {"clean": "clean-only", "augment": "augmentation (both views)", "l1": "paired L1 (λ 3)",
        "ts": "teacher–student (clean view)", "gan": "GAN (λ_adv 0.01)",
        "gan_l1": "GAN + L1"}
SETS = {"clean": "clean", "sim_snr20": "simulated room, 20 dB", "sim_snr10": "simulated room, 10 dB",
        "sim_snr0": "simulated room, 0 dB", "heldout_snr20": "held-out real noise + RIR, 20 dB",
        "heldout_snr10": "held-out real noise + RIR, 10 dB",
        "heldout_snr0": "held-out real noise + RIR, 0 dB", "fsdd_clean": "FSDD (real speech), clean",
        "fsdd_sim_snr10": "FSDD, simulated room 10 dB",
        "fsdd_heldout_snr10": "FSDD, held-out real noise + RIR 10 dB"}


def collect(paths: list[Path], meta: dict[str, str]) -> dict:
    runs: dict[str, dict] = {}
    for path in paths:
        for run, row in json.loads(path.read_text()).items():
            if run in runs:
                raise SystemExit(f"{path}: run {run} is in two results files")
            runs[run] = row
    return {**meta, "runs": runs}


def by_row(record: dict) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for run, result in sorted(record["runs"].items()):
        m = re.fullmatch(r"(.+)_s(\d+)", run)
        if m is None or "test" not in result:
            continue
        rows.setdefault(m.group(1), []).append(result)
    return rows


def mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def table(record: dict, metric: str) -> str:
    rows = by_row(record)
    names = [r for r in ROWS if r in rows]
    seeds = sorted({len(rows[r]) for r in names})
    out = [f"{metric.upper()} %, mean of {'/'.join(map(str, seeds))} seeds ± half the range; "
           "far-field sets: (gap to the same models' clean score)", "",
           "| test set | " + " | ".join(ROWS[r] for r in names) + " |",
           "| --- |" + " ---: |" * len(names)]
    for key, label in SETS.items():
        cells = []
        for r in names:
            values = [100 * res["test"][key][metric] for res in rows[r] if key in res["test"]]
            if not values:
                cells.append("–")
                continue
            cell = mean_spread(values)
            base = "fsdd_clean" if key.startswith("fsdd_") else "clean"
            if key != base:
                clean = [100 * res["test"][base][metric] for res in rows[r]]
                cell += f" (+{statistics.fmean(values) - statistics.fmean(clean):.1f})"
            cells.append(cell)
        n = rows[names[0]][0]["test"].get(key, {}).get("utterances", "?")
        out.append(f"| {label} ({n}) | " + " | ".join(cells) + " |")
    out.append("| encoder updates; wall time, s | " + " | ".join(
        f"{statistics.fmean(x['steps'] for x in rows[r]):,.0f}; "
        f"{mean_spread([x['train_s'] for x in rows[r]])}" for r in names) + " |")
    out.append("| best far-field dev CER % | " + " | ".join(
        mean_spread([100 * min(c for _, c in x["dev_cer_curve"]) for x in rows[r]])
        for r in names) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("results", nargs="+", type=Path)
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--meta", nargs="*", default=[], help="KEY=VALUE fields of the record")
    t = sub.add_parser("table")
    t.add_argument("record", type=Path)
    t.add_argument("--metric", choices=("wer", "cer"), default="wer")
    args = parser.parse_args(argv)
    if args.command == "collect":
        meta = dict(kv.split("=", 1) for kv in args.meta)
        args.out.write_text(json.dumps(collect(args.results, meta), indent=1) + "\n")
        print(f"{args.out}: {len(json.loads(args.out.read_text())['runs'])} runs")
    else:
        print(table(json.loads(args.record.read_text()), args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
