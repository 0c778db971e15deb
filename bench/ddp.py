"""Two-process data-parallel (DDP) checks and throughput of the tiny ASR recipes.

For each recipe (``gram_ctc``: recipes/tiny/gram_ctc.yaml, ``seq2seq_cold``:
recipes/tiny/seq2seq_cold.yaml) this runs ``speechlab`` (Lightning CLI) three times:

1. ``fit`` on ``--devices`` (2) processes, strategy ddp, ``--steps`` steps, then one validation
   at the last step; the callbacks of :mod:`speechlab.callbacks` record each rank's utterance
   ids (train and val), the audio throughput after ``--warmup`` steps and the validation error
   counts summed over ranks; a checkpoint is saved at the last step.
2. ``validate`` of that checkpoint on one process: its error counts must equal (1)'s.
3. ``fit --ckpt_path`` of that checkpoint on one process for ``--steps`` more steps (the resume
   check; its throughput after ``--warmup`` steps is the one-device number: same recipe, same
   per-device batch, ``data.max_duration`` seconds of audio).

Checks: the ranks' training ids are disjoint at every step (and over the run: each epoch
is split between ranks), the ranks' validation ids partition the dev set, the DDP WER/CER equal
the single-process ones (summed counts), the resumed run starts at the saved step and its loss
is finite. Scaling efficiency = thr(N) / (N * thr(1)). A markdown table goes to stdout and
``OUT/ddp.md``; everything to ``OUT/ddp.json`` (written after every stage).

GPU (two H200s)::

    python3 bench/ddp.py --out $OUT --data .ddp/data --lm .ddp/lm/rnnlm.ckpt \\
        --accelerator gpu --precision bf16-mixed --steps 40 --warmup 10 --budget-s 270

CPU rehearsal (gloo)::

    python3 bench/ddp.py --out /tmp/ddp --data .ddp/data --lm .ddp/lm/rnnlm.ckpt \\
        --accelerator cpu --precision bf16-mixed --steps 4 --warmup 1 --num-workers 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
from effective_config import effective_configs  # noqa: E402

RECIPES = {"gram_ctc": REPO / "recipes/tiny/gram_ctc.yaml",
           "seq2seq_cold": REPO / "recipes/tiny/seq2seq_cold.yaml"}


def recipe_config(recipe: str, run_dir: Path, args: argparse.Namespace, *, devices: int,
                  max_steps: int, validate_at: int | None) -> dict[str, Any]:
    """The recipe's YAML with the data, step count, devices, callbacks and outputs replaced."""
    cfg = effective_configs([RECIPES[recipe]])[0]  # the recipe with its includes resolved
    t = cfg["trainer"]
    t.update(accelerator=args.accelerator, devices=devices, precision=args.precision,
             max_steps=max_steps, max_time=None, logger=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=5,
             default_root_dir=str(run_dir))
    t["strategy"] = "ddp" if devices > 1 else "auto"
    if validate_at:
        t.update(check_val_every_n_epoch=None, val_check_interval=validate_at)
    else:
        t.update(limit_val_batches=0)
    t["callbacks"] = [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run_dir / "ckpt"), "filename": "final", "monitor": None,
                       "save_top_k": 1, "every_n_train_steps": max_steps,
                       "enable_version_counter": False}},
        {"class_path": "speechlab.callbacks.BatchIdRecorder", "init_args": {"out_dir": str(run_dir)}},
        {"class_path": "speechlab.callbacks.AudioThroughput",
         "init_args": {"out_dir": str(run_dir), "warmup_steps": args.warmup}},
        {"class_path": "speechlab.callbacks.EvalCounts", "init_args": {"out_dir": str(run_dir)}},
    ]
    m = cfg["model"]["init_args"]
    m["output_dir"] = str(run_dir)
    if recipe == "gram_ctc":
        m["loss_backend"] = args.gram_backend
    if m.get("lm_checkpoint"):  # the recipes that fuse an LM
        m["lm_checkpoint"] = str(Path(args.lm).resolve())
    d = cfg["data"]["init_args"]
    data = Path(args.data).resolve()
    d.update(train_manifest=str(data / "train.jsonl"), dev_manifest=str(data / "dev.jsonl"),
             test_manifest=str(data / "dev.jsonl"), num_workers=args.num_workers)
    if args.max_duration:
        d["max_duration"] = args.max_duration
    return cfg


def run_cli(subcommand: str, cfg: dict, run_dir: Path, timeout: float,
            ckpt: Path | None = None) -> dict[str, Any]:
    """``python3 -m speechlab.cli SUBCOMMAND --config run_dir/config.yaml``; log to run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "speechlab.cli", subcommand, "--config", str(run_dir / "config.yaml")]
    if ckpt is not None:
        cmd.append(f"--ckpt_path={ckpt}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the DDP launcher's children too
            proc.wait()
            rc = "timeout"
    wall = time.perf_counter() - t0
    print(f"  {subcommand} {run_dir.name}: rc={rc} {wall:.1f} s", flush=True)
    if rc != 0:
        tail = (run_dir / "log.txt").read_text().splitlines()[-25:]
        print("\n".join("    | " + line for line in tail), flush=True)
    return {"rc": rc, "wall_s": round(wall, 1), "cmd": " ".join(cmd[1:])}


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def check_ids(run_dir: Path, world: int, dev_ids: set[str]) -> dict[str, Any]:
    ranks = [_load(run_dir / f"ids.rank{r}.json") for r in range(world)]
    if any(r is None for r in ranks):
        return {"ok": False, "error": "missing ids.rank*.json"}
    steps = min(len(r["train_steps"]) for r in ranks)
    overlap_steps = sum(1 for s in range(steps)
                        if len(set.intersection(*(set(r["train_steps"][s]) for r in ranks))) > 0)
    per_rank = [set(i for b in r["train_steps"] for i in b) for r in ranks]
    val = [r["val_ids"] for r in ranks]
    val_union = set(i for v in val for i in v)
    val_dups = sum(len(v) for v in val) - len(val_union)
    out = {
        "steps_per_rank": [len(r["train_steps"]) for r in ranks],
        "utterances_per_rank": [sum(len(b) for b in r["train_steps"]) for r in ranks],
        "first_step_ids": [r["train_steps"][0][:3] for r in ranks] if steps else [],
        "steps_with_shared_ids": overlap_steps,
        "distinct_ids_per_rank": [len(s) for s in per_rank],
        "val_ids_per_rank": [len(v) for v in val],
        "val_covers_dev": val_union == dev_ids, "val_duplicates": val_dups,
    }
    out["ok"] = (overlap_steps == 0 and steps > 0 and val_union == dev_ids and val_dups == 0
                 if world > 1 else steps > 0)
    return out


def counts_equal(a: dict | None, b: dict | None) -> dict[str, Any]:
    if not a or not b:
        return {"ok": False, "error": "missing val_counts.json"}
    out: dict[str, Any] = {}
    for name in ("val_word", "val_char"):
        out[name] = {"ddp": [a[name]["errors"], a[name]["ref_len"]],
                     "single": [b[name]["errors"], b[name]["ref_len"]],
                     "ddp_rate": a[name]["rate"], "single_rate": b[name]["rate"]}
    out["ok"] = all(v["ddp"] == v["single"] for k, v in out.items() if k.startswith("val"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=".ddp/data", help="folder with train.jsonl and dev.jsonl")
    p.add_argument("--lm", default=".ddp/lm/rnnlm.ckpt", help="RNNLMTask checkpoint (cold fusion)")
    p.add_argument("--recipes", default="gram_ctc,seq2seq_cold")
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--fallback-precision", default="32",
                   help="if a recipe's DDP fit fails under --precision, its stages run again with this")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput")
    p.add_argument("--num-workers", type=int, default=4, help="data-loader workers per process")
    p.add_argument("--max-duration", type=float, default=None, help="seconds of audio per batch per device")
    p.add_argument("--gram-backend", default="reference", help="GramCTCTask loss_backend")
    p.add_argument("--stages", default="ddp,val1,resume")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting stages after this")
    p.add_argument("--stage-timeout-s", type=float, default=150)
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dev_ids = {json.loads(line)["id"] for line in (Path(args.data) / "dev.jsonl").read_text().splitlines()
               if line.strip()}
    results: dict[str, Any] = {"args": vars(args), "recipes": {}}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    def save() -> None:
        (out / "ddp.json").write_text(json.dumps(results, indent=1) + "\n")

    def stage(name: str, need: float) -> float | None:
        budget = left()
        if budget < need:
            print(f"  skip {name}: {budget:.0f} s of budget left (< {need:.0f})", flush=True)
            return None
        return min(budget, args.stage_timeout_s)

    plans = [(r, s) for s in args.stages.split(",") for r in args.recipes.split(",")]
    plans.sort(key=lambda x: (x[1] == "resume", x[0] != "gram_ctc"))  # ddp+val1 of both first
    for recipe, step in plans:
        res = results["recipes"].setdefault(recipe, {})
        ddp_dir, val_dir, res_dir = out / f"{recipe}.ddp", out / f"{recipe}.val1", out / f"{recipe}.resume"
        ckpt = ddp_dir / "ckpt" / "final.ckpt"
        if step == "ddp":
            print(f"{recipe}: fit on {args.devices} x {args.accelerator} ({args.steps} steps)", flush=True)
            timeout = stage(f"{recipe} ddp", 30)
            if timeout is None:
                continue
            cfg = recipe_config(recipe, ddp_dir, args, devices=args.devices, max_steps=args.steps,
                                validate_at=args.steps)
            res["precision"] = args.precision
            res["ddp_run"] = run_cli("fit", cfg, ddp_dir, timeout)
            if res["ddp_run"]["rc"] != 0 and args.fallback_precision not in ("", args.precision):
                timeout = stage(f"{recipe} ddp (precision {args.fallback_precision})", 30)
                if timeout is None:
                    continue
                res["precision"] = args.fallback_precision
                cfg["trainer"]["precision"] = args.fallback_precision
                res["ddp_run_fallback"] = run_cli("fit", cfg, ddp_dir, timeout)
            res["ids"] = check_ids(ddp_dir, args.devices, dev_ids)
            res["throughput_ddp"] = _load(ddp_dir / "throughput.json")
            res["val_ddp"] = _load(ddp_dir / "val_counts.json")
        elif step == "val1":
            if not ckpt.exists():
                continue
            timeout = stage(f"{recipe} val1", 20)
            if timeout is None:
                continue
            cfg = recipe_config(recipe, val_dir, args, devices=1, max_steps=args.steps, validate_at=None)
            cfg["trainer"]["precision"] = res.get("precision", args.precision)
            cfg["trainer"].pop("limit_val_batches", None)
            res["val1_run"] = run_cli("validate", cfg, val_dir, timeout, ckpt=ckpt)
            res["val_single"] = _load(val_dir / "val_counts.json")
            res["wer_equal"] = counts_equal(res.get("val_ddp"), res["val_single"])
        else:
            if not ckpt.exists():
                continue
            timeout = stage(f"{recipe} resume", 25)
            if timeout is None:
                continue
            cfg = recipe_config(recipe, res_dir, args, devices=1, max_steps=2 * args.steps,
                                validate_at=None)
            cfg["trainer"]["precision"] = res.get("precision", args.precision)
            res["resume_run"] = run_cli("fit", cfg, res_dir, timeout, ckpt=ckpt)
            ids = _load(res_dir / "ids.rank0.json") or {}
            losses = ids.get("losses", [])
            res["resume"] = {"ok": res["resume_run"]["rc"] == 0 and ids.get("global_step") == 2 * args.steps
                             and bool(losses) and all(math.isfinite(v) for v in losses),
                             "end_step": ids.get("global_step"), "steps_run": len(ids.get("train_steps", [])),
                             "first_losses": losses[:3], "last_losses": losses[-3:],
                             "ddp_last_losses": (_load(ddp_dir / "ids.rank0.json") or {}).get("losses", [])[-3:]}
            res["throughput_1"] = _load(res_dir / "throughput.json")
        save()

    rows = ["| recipe | 1 device audio s/s | 2 devices audio s/s | scaling efficiency | ranks disjoint | "
            "DDP WER = 1-process WER (errors/words) | DDP CER = 1-process CER | resume on 1 device |",
            "|---|---|---|---|---|---|---|---|"]
    for recipe, res in results["recipes"].items():
        t1 = (res.get("throughput_1") or {}).get("audio_s_per_s")
        t2 = (res.get("throughput_ddp") or {}).get("audio_s_per_s")
        eff = t2 / (args.devices * t1) if t1 and t2 else None
        res["scaling_efficiency"] = eff
        eq = res.get("wer_equal") or {}

        def cell(name: str, eq: dict = eq) -> str:
            if name not in eq:
                return "not run"
            v = eq[name]
            mark = "yes" if v["ddp"] == v["single"] else "**NO**"
            return (f"{mark}: {100 * v['ddp_rate']:.2f}% ({v['ddp'][0]}/{v['ddp'][1]}) vs "
                    f"{100 * v['single_rate']:.2f}% ({v['single'][0]}/{v['single'][1]})")
        ids = res.get("ids") or {}
        disjoint = ("not run" if not ids else
                    f"{'yes' if ids.get('ok') else '**NO**'} ({ids.get('steps_with_shared_ids')} shared steps)")
        resume = res.get("resume") or {}
        label = f"{recipe} ({res.get('precision', args.precision)})"
        rows.append(
            f"| {label} | {t1:.1f} | {t2:.1f} | {eff:.2f} | " if eff is not None else
            f"| {label} | {t1 if t1 is None else f'{t1:.1f}'} | {t2 if t2 is None else f'{t2:.1f}'} | n/a | ")
        rows[-1] += (f"{disjoint} | {cell('val_word')} | {cell('val_char')} | "
                     f"{('ok' if resume.get('ok') else '**failed**') + ' (step ' + str(resume.get('end_step')) + ')' if resume else 'not run'} |")
    table = "\n".join(rows)
    results["table"] = table
    results["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    (out / "ddp.md").write_text(table + "\n")
    print(table)
    print(f"total {results['total_wall_s']} s")
    stages = args.stages.split(",")
    ok = all(((r.get("ids") or {}).get("ok") or "ddp" not in stages)
             and ((r.get("wer_equal") or {}).get("ok") or "val1" not in stages)
             and ((r.get("resume") or {}).get("ok") or "resume" not in stages)
             for r in results["recipes"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
