"""Evaluate robust-encoder checkpoints on every test set of recipes/robust/prepare_cpu.sh and write the
WER/CER tables (docs/robust_encoder.md).

usage:
  python recipes/robust/evaluate.py --sets data/robust/test --out exp/robust_eval \
      --ckpt clean=exp/tiny_robust_clean/checkpoints/last.ckpt augment=... l1=... gan=...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from speechlab.cli.robust_eval import distance_table, evaluate_sets, results_table
from speechlab.io import atomic_write_text, check_overwrite

#: evaluation order: clean references first (their embeddings are the distance targets)
ORDER = ["clean", "sim_snr20", "sim_snr10", "sim_snr5", "sim_snr0", "sim_small_snr10",
         "sim_large_snr10", "real_snr20", "real_snr10", "real_snr5", "real_snr0",
         "fsdd_clean", "fsdd_sim_snr10", "fsdd_real_snr10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", nargs="+", required=True, help="NAME=CHECKPOINT ...")
    parser.add_argument("--sets", type=Path, default=Path("data/robust/test"))
    parser.add_argument("--out", type=Path, default=Path("exp/robust_eval"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the summaries here (docs/robust_results.json)")
    parser.add_argument("--force", action="store_true", help="replace earlier results in --out/--json")
    args = parser.parse_args()
    for path in (args.out / "all_results.json", args.json):
        if path is not None:
            check_overwrite(path, args.force)  # before any model runs
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    sets = {}
    for name in ORDER:
        found = sorted((args.sets / name).glob("*.jsonl"))
        if found:
            sets[name] = found[0]
    results = {}
    for spec in args.ckpt:
        name, ckpt = spec.split("=", 1)
        start = time.time()
        results[name] = evaluate_sets(ckpt, sets, out_dir=args.out / name)
        results[name]["eval_seconds"] = round(time.time() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "all_results.json", json.dumps(results, indent=1) + "\n")
    text = ("WER % (noisy − clean gap)\n\n" + results_table(results, "wer")
            + "\nCER % (noisy − clean gap)\n\n" + results_table(results, "cer")
            + "\nembedding distance to the clean view: relative L1 / cosine\n\n"
            + distance_table(results))
    atomic_write_text(args.out / "tables.md", text)
    if args.json is not None:
        meta = {"command": "python recipes/robust/evaluate.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), "
                           f"torch {torch.__version__}, {args.threads} thread(s)"}
        atomic_write_text(args.json, json.dumps({"meta": meta, "models": results}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
