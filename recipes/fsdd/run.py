"""Train, decode and tabulate the Gram-CTC vs CTC comparison (docs/gram_ctc_asr.md's tables).

For each recipe of a suite, sequentially: ``speechlab fit`` (wall time measured), then the best
checkpoint decodes dev and test: greedy, beam without LM, and beam + word KenLM with α/β picked
on dev (grid). The candidates recipe is followed by ``speechlab grams refine``. Results go to
``exp/results_<suite>.json`` and a markdown table is printed.

  python recipes/fsdd/run.py --suite fsdd            # FSDD spoken digits (real speech)
  python recipes/fsdd/run.py --suite tiny            # embedded espeak-ng corpus
  python recipes/fsdd/run.py --suite fsdd --only gram_ctc ctc --max-time 00:00:03:00
  python recipes/fsdd/run.py --suite fsdd --jobs 9 --max-steps 3000 --results exp/gpu.json  # GPU

``--jobs K`` trains and decodes K recipes at once (a candidates recipe and the refined recipe that
needs its grams run one after the other); their wall times then overlap and are not comparable
with sequential runs: compare steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes"))
from effective_config import effective_configs  # noqa: E402

SUITES = {
    "fsdd": {
        "recipes": ["ctc", "gram_ctc", "ctc_stride8", "gram_ctc_stride8", "gram_ctc_joint",
                    "gram_ctc_candidates", "gram_ctc_refined", "ctc_stride2", "gram_ctc_stride2"],
        "folder": "recipes/fsdd", "data": "data/fsdd", "resample": True, "lm_order": 2,
        "refine_keep": 20,
    },
    "tiny": {
        "recipes": ["ctc", "gram_ctc", "ctc_stride8", "gram_ctc_stride8"],
        "folder": "recipes/tiny", "data": "data/tiny", "resample": False, "lm_order": 3,
        "refine_keep": 50,
    },
    "synth": {
        "recipes": ["ctc", "gram_ctc", "gram_ctc_joint", "ctc_stride8", "gram_ctc_stride8"],
        "folder": "recipes/synth", "data": "data/synth", "resample": False, "lm_order": 3,
        "refine_keep": 100,
    },
}
ALPHAS = [0.2, 0.5, 1.0]
BETAS = [0.0, 1.0, 2.0]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread: two collapse on a shared 2-core CPU


def sh(cmd: list[str], log: Path | None = None) -> None:
    print("$", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, cwd=REPO, env=ENV)
        return
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=ENV).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"command failed ({rc}), log {log}:\n{tail}")


DECODE_DEVICE = "auto"
CHECKPOINTS: Path | None = None  # --checkpoints: best checkpoints trained elsewhere, by exp name
TRAINED = ""  # --trained: how those were trained (the table's train column)


def decode(ckpt: str, manifest: str, resample: bool, extra: list[str], out_json: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "speechlab.cli", "decode", "--checkpoint", ckpt, "--manifest",
           manifest, "--json", str(out_json), "--force", "--device", DECODE_DEVICE, *extra]
    if resample:
        cmd.append("--resample")
    sh(cmd)
    return json.loads(out_json.read_text())["results"]


def run_recipe(name: str, suite: dict, lm: Path, overrides: list[str], results: dict,
               reuse: bool = False) -> None:
    cfg = REPO / suite["folder"] / f"{name}.yaml"
    conf = effective_configs([cfg])[0]  # the recipe with its includes resolved
    exp = Path(conf["trainer"]["default_root_dir"])
    (REPO / exp).mkdir(parents=True, exist_ok=True)
    key = cfg.stem
    fit = [sys.executable, "-m", "speechlab.cli", "fit", "--config", str(cfg.relative_to(REPO)),
           "--trainer.enable_progress_bar=false"]
    data = suite["data"]
    fit += [f"--data.init_args.train_manifest={data}/train.jsonl",
            f"--data.init_args.dev_manifest={data}/dev.jsonl",
            f"--data.init_args.test_manifest={data}/test.jsonl"]
    fit += overrides
    given = CHECKPOINTS / f"{exp.name}.ckpt" if CHECKPOINTS else None
    import torch

    if given is not None and given.exists():  # trained elsewhere (e.g. on the GPU machine)
        ckpt = str(given)
        best_step = int(torch.load(given, map_location="cpu", weights_only=False).get("global_step", 0))
        steps, train_s, epochs = best_step, None, None
    else:
        timing = REPO / exp / "train_seconds.txt"
        if reuse and (REPO / exp / "checkpoints" / "best.ckpt").exists() and timing.exists():
            train_s = float(timing.read_text())
        else:
            t0 = time.time()
            sh(fit, REPO / exp / "fit.log")
            train_s = time.time() - t0
            timing.write_text(f"{train_s:.1f}\n")
        ckpt = str(exp / "checkpoints" / "best.ckpt")
        meta = torch.load(REPO / exp / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)
        steps, epochs = int(meta.get("global_step", 0)), int(meta.get("epoch", 0))  # last validation
        best_step = int(torch.load(REPO / ckpt, map_location="cpu", weights_only=False)
                        .get("global_step", 0))
    rs = suite["resample"]
    row: dict = {"recipe": str(cfg.relative_to(REPO)),
                 "train_seconds": None if train_s is None else round(train_s, 1),
                 "trained": TRAINED if train_s is None else "here",
                 "steps": steps, "best_step": best_step, "epochs": epochs,
                 "overrides": overrides,
                 "load_average": round(os.getloadavg()[0], 1)}
    row["test_greedy"] = decode(ckpt, f"{data}/test.jsonl", rs, [], REPO / exp / "test_greedy.json")[0]
    row["test_beam"] = decode(ckpt, f"{data}/test.jsonl", rs, ["--method", "beam"],
                              REPO / exp / "test_beam.json")[0]
    grid = ["--method", "beam", "--lm", str(lm), "--lm-weight", *map(str, ALPHAS),
            "--word-score", *map(str, BETAS)]
    dev = decode(ckpt, f"{data}/dev.jsonl", rs, grid, REPO / exp / "dev_lm_grid.json")
    best = min(dev, key=lambda r: (r["wer"], r["cer"]))
    row["lm_weight"], row["word_score"] = best["lm_weight"], best["word_score"]
    row["test_beam_lm"] = decode(ckpt, f"{data}/test.jsonl", rs,
                                 ["--method", "beam", "--lm", str(lm), "--lm-weight",
                                  str(best["lm_weight"]), "--word-score", str(best["word_score"])],
                                 REPO / exp / "test_beam_lm.json")[0]
    # the same LM, hypotheses restricted to its words (flashlight's lexicon decoding)
    dev = decode(ckpt, f"{data}/dev.jsonl", rs, [*grid, "--lexicon", "lm"],
                 REPO / exp / "dev_lm_lexicon_grid.json")
    best = min(dev, key=lambda r: (r["wer"], r["cer"]))
    row["lexicon_lm_weight"], row["lexicon_word_score"] = best["lm_weight"], best["word_score"]
    row["test_beam_lm_lexicon"] = decode(
        ckpt, f"{data}/test.jsonl", rs,
        ["--method", "beam", "--lm", str(lm), "--lexicon", "lm", "--lm-weight",
         str(best["lm_weight"]), "--word-score", str(best["word_score"])],
        REPO / exp / "test_beam_lm_lexicon.json")[0]
    results[key] = row
    if cfg.stem.endswith("candidates"):
        refined = exp / "refined.json"
        cmd = [sys.executable, "-m", "speechlab.cli", "grams", "refine", "--checkpoint", ckpt,
               "--manifest", f"{data}/train.jsonl", "--keep", str(suite["refine_keep"]),
               "--out", str(refined), "--force", "--device", DECODE_DEVICE]
        if rs:
            cmd.append("--resample")
        sh(cmd, REPO / exp / "refine.log")
        print((REPO / exp / "refine.log").read_text())


def table(results: dict) -> str:
    lines = ["| recipe | frames/s | train wall time (steps) | greedy WER / CER | beam WER / CER | "
             "beam+LM WER / CER (α, β) | beam+LM+lexicon WER / CER (α, β) |",
             "|---|---|---|---|---|---|---|"]
    for row in results.values():
        if not isinstance(row, dict) or "test_greedy" not in row:
            continue
        g, b, lm = row["test_greedy"], row["test_beam"], row["test_beam_lm"]
        lines.append(
            f"| `{row['recipe']}` | {g['frames_per_second']:.1f} | "
            + (f"{row['train_seconds'] / 60:.1f} min ({row.get('best_step', '?')}/{row['steps']})"
               if row.get("train_seconds") is not None
               else f"{row.get('trained', '?')} (best: step {row.get('best_step', '?')})")
            + f" | {100 * g['wer']:.1f} / {100 * g['cer']:.1f} | "
            f"{100 * b['wer']:.1f} / {100 * b['cer']:.1f} | {100 * lm['wer']:.1f} / "
            f"{100 * lm['cer']:.1f} ({row['lm_weight']:g}, {row['word_score']:g}) | "
            + (f"{100 * lx['wer']:.1f} / {100 * lx['cer']:.1f} ({row['lexicon_lm_weight']:g}, "
               f"{row['lexicon_word_score']:g}) |" if (lx := row.get("test_beam_lm_lexicon")) else "– |"))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), required=True)
    p.add_argument("--only", nargs="*", help="recipe names of the suite to run")
    p.add_argument("--max-time", help="override every recipe's trainer.max_time (DD:HH:MM:SS)")
    p.add_argument("--max-steps", type=int, help="override every recipe's trainer.max_steps")
    p.add_argument("--warmup-steps", type=int, help="override every recipe's warm-up steps")
    p.add_argument("--val-every", type=int, help="override check_val_every_n_epoch")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more `speechlab fit` overrides for every recipe, e.g. "
                   "trainer.accelerator=gpu data.init_args.num_workers=2")
    p.add_argument("--jobs", type=int, default=1, help="recipes trained and decoded at once")
    p.add_argument("--device", default="auto", help="where decoding runs the network")
    p.add_argument("--checkpoints", type=Path,
                   help="decode the checkpoints DIR/<exp name>.ckpt instead of training (a recipe "
                   "without one there is trained here)")
    p.add_argument("--trained", default="elsewhere",
                   help="with --checkpoints: how they were trained, for the table")
    p.add_argument("--data", help="the suite's data folder (default: the suite's)")
    p.add_argument("--results", type=Path, help="results JSON (default exp/results_<suite>.json)")
    p.add_argument("--table", action="store_true", help="only print the table of saved results")
    p.add_argument("--reuse", action="store_true",
                   help="do not retrain a recipe whose best checkpoint and train time exist")
    args = p.parse_args()
    suite = SUITES[args.suite]
    global DECODE_DEVICE, CHECKPOINTS, TRAINED
    DECODE_DEVICE, TRAINED = args.device, args.trained
    CHECKPOINTS = args.checkpoints.resolve() if args.checkpoints else None
    if args.data:
        suite = {**suite, "data": args.data}
    out = args.results or REPO / "exp" / f"results_{args.suite}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.table:
        print(table(results))
        return
    os.chdir(REPO)
    if args.suite == "fsdd" and not (REPO / "data/fsdd/train.jsonl").exists():
        sh([sys.executable, "recipes/fsdd/prepare.py"])
    lm = REPO / "exp" / "lm" / f"{args.suite}_{suite['lm_order']}gram.arpa"
    if not lm.exists():
        sh([sys.executable, "-m", "speechlab.cli", "lm", "ngram", "--manifest",
            f"{suite['data']}/train.jsonl", "--order", str(suite["lm_order"]), "--out", str(lm)])
    results["machine"] = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                          f"load average at start {os.getloadavg()[0]:.1f}")
    overrides = []
    if args.max_time:
        overrides.append(f"--trainer.max_time={args.max_time}")
    if args.max_steps:
        overrides.append(f"--trainer.max_steps={args.max_steps}")
    if args.warmup_steps:
        overrides.append(f"--model.init_args.warmup_steps={args.warmup_steps}")
    if args.val_every:
        overrides.append(f"--trainer.check_val_every_n_epoch={args.val_every}")
    overrides += [f"--{kv}" for kv in args.set]
    names = [n for n in suite["recipes"]
             if not args.only or n in args.only or n.split("/")[-1] in args.only]
    # a refined recipe trains on the grams its candidates recipe chose: one chain
    chains = [[n] for n in names if not n.endswith("_refined")]
    for n in names:
        if n.endswith("_refined"):
            cand = n.replace("_refined", "_candidates")
            chain = next((c for c in chains if c[0] == cand), None)
            (chain.append(n) if chain else chains.append([n]))
    lock = threading.Lock()

    def run_chain(chain: list[str]) -> None:
        for name in chain:
            run_recipe(name, suite, lm, overrides, results, args.reuse)
            with lock:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1) + "\n")
                tmp.replace(out)
                print(table(results), flush=True)

    failed = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(run_chain, c): c for c in chains}
        for future, chain in futures.items():
            try:
                future.result()
            except BaseException as e:  # noqa: BLE001 - report every chain, then fail
                failed.append(chain[0])
                print(f"{' -> '.join(chain)} failed: {e}", file=sys.stderr, flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
