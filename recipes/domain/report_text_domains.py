"""Tables of the real-text domain-transfer study (issue 14; ``recipes/domain/run_gpu.sh`` and
``recipes/domain/run_cpu_decode.sh``).

Collect the raw outputs into one record (and print its tables)::

    python recipes/domain/report_text_domains.py collect --stage3 results_stage3.json \\
        --cpu exp/domain_cpu/results_cpu.json --ctc-dir CTC_TEST_DIR --logs LOG_DIR... \\
        --ppl-dir exp/domain_ppl --meta meta.json --out docs/results/domain_text_h200.json

Print the markdown tables of a record::

    python recipes/domain/report_text_domains.py table docs/results/domain_text_h200.json

``--ctc-dir`` holds ``ctc_books/wer.json`` and ``ctc_reviews/wer.json`` (``speechlab test`` of the
CTC model, greedy); ``--logs`` are folders with the ``fit_<run>.log`` files of the three stages
(their last "training ended" line gives steps, wall time, steps/s and the dev metrics);
``--ppl-dir`` holds ``<lm>_on_<domain>/`` outputs of ``speechlab test`` of each LSTM LM on
each domain's speech sentences; ``--meta`` is a JSON object (date, machine, commands) copied
into the record.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ENDED = re.compile(r"training ended at step (\d+)/(\d+)\s+epoch (\d+)\s+([\d.]+) s\s+([\d.]+) "
                   r"steps/s(.*)")
METRIC = re.compile(r"(val/\w+) ([\d.]+)")
VALIDATION = re.compile(r"validation at step (\d+)/\d+\s+epoch \d+(.*)")
# (row label, model key in the record, note)
ROWS = (
    ("CTC, no LM (greedy)", "ctc", "the encoder every seq2seq row starts from"),
    ("none", "none", "seq2seq, no LM"),
    ("shallow, LSTM LM", "shallow", "none + beta log P_LM"),
    ("shallow + ILM, LSTM LM", "ilm", "none + beta log P_LM - lambda log P_ILM"),
    ("shallow, KenLM char 6-gram", "ngram", "none + beta_ng log P_6gram"),
    ("shallow + ILM, KenLM char 6-gram", "ngramilm", "none + beta_ng log P_6gram - lambda log P_ILM"),
    ("deep", "deep", "none + LM state, gate and output DNN trained on A"),
    ("cold", "cold", "trained on A with the frozen A LM"),
)
RUNS = (("lm_books", "A LM text"), ("lm_reviews", "B LM text"), ("ctc", "A speech"),
        ("none", "A speech"), ("cold", "A speech"), ("deep", "A speech (from none)"),
        ("ft_none", "10 % of B"), ("ft_cold", "10 % of B (B LM)"), ("ft_deep", "10 % of B (B LM)"))


def _rate(w: dict) -> dict:
    return {"wer": w["test_word"]["rate"], "cer": w["test_char"]["rate"],
            "utterances": w["utterances"]}


def training_runs(log_dirs: list[Path]) -> dict[str, dict]:
    runs = {}
    for d in log_dirs:
        for log in sorted(d.glob("fit_*.log")):
            lines = [m for m in map(ENDED.search, log.read_text(errors="replace").splitlines()) if m]
            if not lines:
                continue
            m = lines[-1]
            curve = [[int(v[1]), *(float(x) for _, x in METRIC.findall(v[2]))]
                     for v in map(VALIDATION.search, log.read_text(errors="replace").splitlines()) if v]
            metrics = {k: float(v) for k, v in METRIC.findall(m[6])}
            runs[log.stem[4:]] = {
                "steps": int(m[1]), "max_steps": int(m[2]), "epochs": int(m[3]),
                "wall_s": float(m[4]), "steps_per_s": float(m[5]), **metrics,
                "dev_curve": {"columns": ["step", *metrics], "rows": curve}}
    return runs


def collect(args: argparse.Namespace) -> dict:
    """The record: the CPU decodes (KenLM rows; LSTM-LM shallow / ILM rows with the weights of
    the wider dev grid) replace the GPU call's rows of the same name; both sets are kept."""
    stage3 = json.loads(Path(args.stage3).read_text())
    cpu = json.loads(Path(args.cpu).read_text()) if args.cpu else {}
    tests = {k: v for k, v in {**stage3, **cpu}.items() if k != "weights"}
    for domain in ("books", "reviews"):
        path = Path(args.ctc_dir) / f"ctc_{domain}" / "wer.json"
        if path.exists():
            tests[f"ctc_{domain}_b1"] = _rate(json.loads(path.read_text()))
    ppl = {}
    for path in sorted(Path(args.ppl_dir).glob("*_on_*/results.json")) if args.ppl_dir else ():
        ppl[path.parent.name] = json.loads(path.read_text())
    return {
        "meta": json.loads(Path(args.meta).read_text()) if args.meta else {},
        "weights": {**stage3.get("weights", {}), **cpu.get("weights", {})},
        "gpu_weights": stage3.get("weights", {}),
        "training": training_runs([Path(d) for d in args.logs]),
        "lm_perplexity": ppl,
        "tests": tests,
        "tests_gpu": {k: v for k, v in stage3.items() if k != "weights"},
        "tests_cpu": {k: v for k, v in cpu.items() if k != "weights"},
    }


def _cell(tests: dict, key: str) -> str:
    r = tests.get(key)
    return "–" if r is None else f"{100 * r['wer']:.1f} / {100 * r['cer']:.2f}"


def tables(record: dict) -> str:
    t, w = record["tests"], record["weights"]
    out = ["| row | A test (A LM) | B test, B LM swapped in | B test after fine-tuning on 10 % of B |",
           "|---|---:|---:|---:|"]
    for label, key, _ in ROWS:
        cells = []
        for prefix, domain in (("", "books"), ("", "reviews"), ("ft_", "reviews")):
            if key == "ctc":
                cells.append(_cell(t, f"ctc_{domain}_b1") if not prefix else "–")
                continue
            beam = _cell(t, f"{prefix}{key}_{domain}_b4")
            # greedy only where no weight was re-picked on the CPU (the GPU's b1 rows of
            # shallow / ILM used the GPU grid's weights)
            greedy = key in ("none", "deep", "cold") and t.get(f"{prefix}{key}_{domain}_b1")
            cells.append(beam + (f" ({_cell(t, f'{prefix}{key}_{domain}_b1')})" if greedy else ""))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("WER / CER in %, beam 4 (greedy in parentheses for the rows without LM weights). "
               "Weights picked on "
               f"B's dev set: shallow beta = {w.get('beta')}; shallow + ILM beta = "
               f"{w.get('ilm_beta')}, lambda = {w.get('ilm_lambda')}; 6-gram beta = "
               f"{w.get('ngram_beta')}; 6-gram + ILM beta = {w.get('ngram_ilm_beta')}, lambda = "
               f"{w.get('ngram_ilm_lambda')}.")
    out += ["", "| run | trained on | steps | wall s | steps/s | dev (last validation) |",
            "|---|---|---:|---:|---:|---|"]
    for run, data in RUNS:
        r = record["training"].get(run)
        if r is None:
            continue
        dev = ", ".join(f"{k[4:]} {100 * v:.2f} %" if k != "val/ppl" else f"ppl {v:.3f}"
                        for k, v in r.items() if k.startswith("val/"))
        out.append(f"| {run} | {data} | {r['steps']} | {r['wall_s']:.0f} | {r['steps_per_s']:.1f} | {dev} |")
    curves = {run: record["training"][run]["dev_curve"] for run in ("none", "cold")
              if run in record["training"]}
    if curves:
        out += ["", "Dev CER (%, greedy, A's dev set) at each validation (once per epoch):", "",
                "| run | " + " | ".join(f"epoch {i}" for i in range(max(len(c["rows"]) for c in curves.values()))) + " |",
                "|---|" + "---:|" * max(len(c["rows"]) for c in curves.values())]
        width = max(len(c["rows"]) for c in curves.values())
        for run, c in curves.items():
            cer = c["columns"].index("val/cer")
            cells = [f"{100 * row[cer]:.1f} (step {row[0]})" for row in c["rows"]]
            out.append(f"| {run} | " + " | ".join(cells + ["–"] * (width - len(cells))) + " |")
    ppl = record.get("lm_perplexity", {})
    if ppl:
        out += ["", "| character perplexity of the LSTM LM on the speech sentences of | A (books) | B (reviews) |",
                "|---|---:|---:|"]
        for lm, name in (("books", "A LM"), ("reviews", "B LM")):
            vals = [ppl.get(f"{lm}_on_{d}", {}).get("perplexity") for d in ("books", "reviews")]
            out.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--stage3", required=True)
    c.add_argument("--cpu")
    c.add_argument("--ctc-dir", default=".")
    c.add_argument("--logs", nargs="*", default=[])
    c.add_argument("--ppl-dir")
    c.add_argument("--meta")
    c.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("record")
    args = parser.parse_args(argv)
    if args.command == "collect":
        record = collect(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    else:
        record = json.loads(Path(args.record).read_text())
    print(tables(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
