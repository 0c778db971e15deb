"""Single-device training throughput of each task's tiny recipe, as the user trains it.

For each task the recipe's YAML (``recipes/tiny/<recipe>.yaml``) is written to
``OUT/<task>/config.yaml`` with the data paths, device, precision, step count and callbacks
replaced, and trained by ``python -m speechlab.cli fit --config OUT/<task>/config.yaml`` (one
process, ``devices: 1``, validation and loggers off). The first ``--warmup`` steps are left out
of the timing (data-loader start-up, cuDNN autotuning, first allocations). Then:

* ASR tasks (ctc, gram_ctc, robust_gan, seq2seq, seq2seq_cold): **audio seconds per second**, from
  :class:`speechlab.callbacks.AudioThroughput` (the training utterances' duration; robust_gan
  encodes each utterance twice, clean and far-field, and runs ``n_critic`` critic updates);
* LM tasks (rnnlm, tcnlm): **target tokens per second** (:class:`speechlab.callbacks.TokenThroughput`);
* peak GPU memory of the run (``torch.cuda.max_memory_allocated``) and, for gram_ctc, the Gram-CTC
  loss backend that ran (the CUDA kernel needs the compiled extension: ``pip install -e .``).

A markdown table goes to stdout and ``OUT/throughput.md``; everything to ``OUT/throughput.json``.

Data: ``--data-root`` has the layout of ``data/`` (``speechlab data synth`` and
``recipes/robust/prepare_cpu.sh``). A small copy to carry to a GPU machine (about 40 MB for 200
utterances, relative paths) is made here with ``--make-data``::

    python bench/throughput.py --make-data .bench/data --data-root data --utterances 200

It holds the first 200 utterances of ``data/tiny/train.jsonl``
(``tiny/train.jsonl`` + ``tiny/wavs/``; ``tiny/dev.jsonl`` = the first 8, unused with
validation off) and their far-field copies from ``data/robust/farfield/train/train.jsonl``
(``robust/farfield/train/``, with ``clean_id``; the clean manifest ``robust/clean/train.jsonl``
points at the same ``tiny/wavs``). The text tasks need no other file: rnnlm reads the
transcripts of ``tiny/train.jsonl`` (as ``recipes/tiny/rnnlm.yaml`` does), tcnlm uses the
generated embedded corpus. seq2seq_cold loads the checkpoint that the rnnlm run writes
(``OUT/rnnlm/ckpt/final.ckpt``; run rnnlm first, as the default task order does) or ``--lm``.

GPU (one H200; carry ``.bench`` and the wheels lhotse, jsonargparse, soundfile, jiwer, ...)::

    python bench/throughput.py --device cuda --data-root .bench/data --out /tmp/thr \\
        --steps 40 --warmup 10 --num-workers 4

CPU check (here)::

    python bench/throughput.py --device cpu --steps 6 --warmup 2 --tasks ctc --out /tmp/thr
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
from effective_config import effective_configs  # noqa: E402

#: task -> (recipe name, unit of the throughput)
TASKS: dict[str, tuple[str, str]] = {
    "ctc": ("ctc", "audio"),
    "gram_ctc": ("gram_ctc", "audio"),
    "robust_gan": ("robust_gan", "audio"),
    "rnnlm": ("rnnlm", "tokens"),
    "seq2seq": ("seq2seq", "audio"),
    "seq2seq_cold": ("seq2seq_cold", "audio"),
    "tcnlm": ("tcnlm", "tokens"),
}


# -- callbacks (imported by the CLI child as ``throughput.*``: bench/ is on its PYTHONPATH) ----
class RunStats(pl.Callback):
    """Peak memory, parameter count, precision and (Gram-CTC) the loss backend of the run;
    writes ``run_stats.json`` at the end of training."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        dev = pl_module.device
        stats: dict[str, Any] = {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "precision": str(trainer.precision), "global_step": trainer.global_step,
            "parameters": sum(p.numel() for p in pl_module.parameters()),
            "torch": torch.__version__, "lightning": pl.__version__,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if dev.type == "cuda":
            stats["peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
            stats["peak_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        backend = pl_module.hparams.get("loss_backend")
        if backend is not None:
            from speechlab.ops import resolve_backend

            stats["gram_ctc_backend"] = resolve_backend(backend, dev)
        _write(self.out_dir / "run_stats.json", stats)


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


# -- the data subset ----------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _dump(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_data(src: Path, out: Path, utterances: int, dev: int = 8) -> dict[str, Any]:
    """The carryable subset described in the module docstring (relative audio paths)."""
    tiny = _rows(src / "tiny/train.jsonl")[:utterances]
    for row in tiny:
        wav = Path(row["audio_filepath"])
        (out / "tiny/wavs").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "tiny" / wav, out / "tiny/wavs" / wav.name)
        row["audio_filepath"] = f"wavs/{wav.name}"
    _dump(out / "tiny/train.jsonl", tiny)
    _dump(out / "tiny/dev.jsonl", tiny[:dev])
    summary: dict[str, Any] = {"tiny_train": len(tiny),
                               "tiny_audio_s": round(sum(r["duration"] for r in tiny), 1)}
    far_src = src / "robust/farfield/train/train.jsonl"
    if far_src.exists():
        keep = {r["id"]: r for r in tiny}
        far = [r for r in _rows(far_src) if r.get("clean_id") in keep]
        for row in far:
            wav = Path(row["audio_filepath"])
            (out / "robust/farfield/train/wavs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(far_src.parent / wav, out / "robust/farfield/train/wavs" / wav.name)
            row["audio_filepath"] = f"wavs/{wav.name}"
            row.pop("clean_audio_filepath", None)  # the clean view comes from the clean manifest
        clean = [dict(keep[r["clean_id"]], audio_filepath=f"../../tiny/{keep[r['clean_id']]['audio_filepath']}")
                 for r in far]
        _dump(out / "robust/farfield/train/train.jsonl", far)
        _dump(out / "robust/farfield/dev/dev.jsonl",
              [dict(r, audio_filepath=f"../train/{r['audio_filepath']}") for r in far[:dev]])
        _dump(out / "robust/clean/train.jsonl", clean)
        summary["robust_pairs"] = len(far)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    summary["megabytes"] = round(size / 2**20, 1)
    return summary


# -- one run ------------------------------------------------------------------------------------
@functools.cache
def _recipes() -> dict[str, dict[str, Any]]:
    """The tasks' recipes as ``speechlab fit`` reads them (includes resolved), read once."""
    names = sorted({recipe for recipe, _ in TASKS.values()})
    return dict(zip(names, effective_configs([REPO / "recipes/tiny" / f"{n}.yaml" for n in names]),
                    strict=True))


def task_config(task: str, run_dir: Path, args: argparse.Namespace, lm: Path | None) -> dict[str, Any]:
    """The tiny recipe of ``task`` with data, device, steps and callbacks replaced."""
    recipe, unit = TASKS[task]
    cfg = copy.deepcopy(_recipes()[recipe])
    t = cfg["trainer"]
    t.update(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
             precision=args.precision, max_steps=args.warmup + args.steps, max_time=None,
             logger=False, enable_progress_bar=False, enable_model_summary=False,
             num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(run_dir),
             enable_checkpointing=task == "rnnlm")
    t.pop("check_val_every_n_epoch", None)
    counter = ({"class_path": "speechlab.callbacks.AudioThroughput",
                "init_args": {"out_dir": str(run_dir), "warmup_steps": args.warmup}}
               if unit == "audio" else
               {"class_path": "speechlab.callbacks.TokenThroughput",
                "init_args": {"out_dir": str(run_dir), "warmup_steps": args.warmup}})
    t["callbacks"] = [counter, {"class_path": "throughput.RunStats",
                                "init_args": {"out_dir": str(run_dir)}}]
    if task == "rnnlm":  # its checkpoint is seq2seq_cold's LM
        t["callbacks"].append(
            {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(run_dir / "ckpt"), "filename": "final", "monitor": None,
                           "save_top_k": 1, "every_n_train_steps": args.warmup + args.steps,
                           "enable_version_counter": False}})
    m = cfg["model"]["init_args"]
    if "output_dir" in m:
        m["output_dir"] = str(run_dir)
    if task == "gram_ctc":
        m["loss_backend"] = args.gram_backend
    if m.get("lm_checkpoint"):  # the recipes that fuse an LM
        m["lm_checkpoint"] = str(lm) if lm is not None else None
    d = cfg["data"]["init_args"]
    root = Path(args.data_root).resolve()
    if task == "robust_gan":
        d.update(train_manifest=str(root / "robust/farfield/train/train.jsonl"),
                 paired_clean_manifest=str(root / "robust/clean/train.jsonl"),
                 dev_manifest=str(root / "robust/farfield/dev/dev.jsonl"), test_manifest=None)
    elif task == "rnnlm":
        d.update(train_text=str(root / "tiny/train.jsonl"), dev_text=str(root / "tiny/dev.jsonl"))
    elif unit == "audio":
        d.update(train_manifest=str(root / "tiny/train.jsonl"),
                 dev_manifest=str(root / "tiny/dev.jsonl"), test_manifest=None)
    if unit == "audio":
        d["num_workers"] = args.num_workers
        if args.max_duration:
            d["max_duration"] = args.max_duration
    return cfg


def run_task(task: str, out: Path, args: argparse.Namespace, lm: Path | None) -> dict[str, Any]:
    run_dir = out / task
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg = task_config(task, run_dir, args, lm)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "speechlab.cli", "fit", "--config", str(run_dir / "config.yaml")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), str(REPO / "bench"), env.get("PYTHONPATH", "")] if p)
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its data-loader workers too
            proc.wait()
            rc = "timeout"
    wall = time.perf_counter() - t0
    print(f"  {task}: rc={rc} {wall:.1f} s", flush=True)
    if rc != 0:
        print("\n".join("    | " + line for line in
                        (run_dir / "log.txt").read_text().splitlines()[-20:]), flush=True)
    res: dict[str, Any] = {"recipe": f"recipes/tiny/{TASKS[task][0]}.yaml", "unit": TASKS[task][1],
                           "rc": rc, "wall_s": round(wall, 1), "cmd": " ".join(cmd[1:]),
                           "batch": batch_label(cfg)}
    for name in ("throughput", "run_stats"):
        path = run_dir / f"{name}.json"
        res[name] = json.loads(path.read_text()) if path.exists() else None
    return res


def batch_label(cfg: dict[str, Any]) -> str:
    d = cfg["data"]["init_args"]
    if "max_duration" in d:
        views = " per view" if d.get("paired_clean_manifest") else ""
        return f"{d['max_duration']:g} s audio{views}"
    if "max_tokens" in d:
        return f"{d['max_tokens']} tokens"
    return f"{d.get('batch_size', '?')} sentences"


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = ["| task | recipe | batch | steps timed | steps/s | ÷ ctc | throughput | items/s | "
            "peak GPU memory | notes |", "|---|---|---|---|---|---|---|---|---|---|"]

    def steps_per_s(r: dict[str, Any]) -> float | None:
        thr = r.get("throughput") or {}
        return thr["timed_steps"] / thr["elapsed_s"] if thr.get("elapsed_s") else None

    ctc_rate = steps_per_s(results["ctc"]) if "ctc" in results else None
    for task, r in results.items():
        thr, st = r.get("throughput") or {}, r.get("run_stats") or {}
        if r["unit"] == "audio":
            value, per_s = thr.get("audio_s_per_s"), "audio s/s"
            items = (thr.get("utterances", 0) / thr["elapsed_s"]) if thr.get("elapsed_s") else None
            item_unit = "utt/s"
        else:
            value, per_s = thr.get("tokens_per_s"), "tokens/s"
            items = (thr.get("sentences", 0) / thr["elapsed_s"]) if thr.get("elapsed_s") else None
            item_unit = "sent/s"
        mem = st.get("peak_allocated_mb")
        notes = [] if r["rc"] == 0 else [f"**rc={r['rc']}** (see {task}/log.txt)"]
        if "gram_ctc_backend" in st:
            notes.append(f"Gram-CTC backend {st['gram_ctc_backend']}")
        if task == "robust_gan":
            notes.append("2 views encoded + critic steps per utterance")
        rate = steps_per_s(r)
        ratio = f"{rate / ctc_rate:.2f}" if rate and ctc_rate and r["unit"] == "audio" else "-"
        rows.append(
            f"| {task} | `{r['recipe']}` | {r['batch']} | {thr.get('timed_steps', 0)} | "
            f"{'n/a' if rate is None else f'{rate:.2f}'} | {ratio} | "
            f"{'n/a' if value is None else f'{value:,.0f} {per_s}'} | "
            f"{'n/a' if items is None else f'{items:,.1f} {item_unit}'} | "
            f"{'-' if mem is None else f'{mem / 1024:.2f} GiB'} | {'; '.join(notes)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per task")
    p.add_argument("--warmup", type=int, default=10, help="steps before the timing starts")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {','.join(TASKS)}")
    p.add_argument("--data-root", default=None,
                   help="folder laid out like data/ (default .bench/data if present, else data)")
    p.add_argument("--out", default="/tmp/speechlab_throughput")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data-loader workers of the speech tasks (default 4 on cuda, 1 on cpu)")
    p.add_argument("--max-duration", type=float, default=None,
                   help="override the recipes' seconds of audio per batch")
    p.add_argument("--gram-backend", default="auto", help="GramCTCTask loss_backend")
    p.add_argument("--lm", default=None, help="RNNLMTask checkpoint for seq2seq_cold "
                   "(default: the one the rnnlm run of this call writes)")
    p.add_argument("--timeout-s", type=float, default=300, help="per task")
    p.add_argument("--make-data", metavar="DIR", default=None,
                   help="write the carryable subset of --data-root to DIR and exit")
    p.add_argument("--utterances", type=int, default=200, help="--make-data: utterances")
    args = p.parse_args(argv)
    if args.data_root is None:
        args.data_root = str(REPO / ".bench/data") if (REPO / ".bench/data").is_dir() else str(REPO / "data")
    if args.make_data:
        summary = make_data(Path(args.data_root), Path(args.make_data), args.utterances)
        print(json.dumps(summary))
        return 0
    if args.num_workers is None:
        args.num_workers = 4 if args.device == "cuda" else 1
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    tasks.sort(key=list(TASKS).index)  # rnnlm before seq2seq_cold
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "tasks": {}}
    lm = Path(args.lm).resolve() if args.lm else None
    for task in tasks:
        if task == "seq2seq_cold" and lm is None:
            lm = out / "rnnlm/ckpt/final.ckpt"
            if not lm.exists():
                print("  seq2seq_cold: skipped (no LM: run rnnlm in the same call or give --lm)")
                continue
        print(f"{task}: {args.warmup} + {args.steps} steps on {args.device} ({args.precision})", flush=True)
        results["tasks"][task] = run_task(task, out, args, lm)
        (out / "throughput.json").write_text(json.dumps(results, indent=1) + "\n")
    md = table(results["tasks"], args)
    results["table"] = md
    (out / "throughput.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "throughput.md").write_text(md + "\n")
    print(md)
    ok = all(r["rc"] == 0 and r.get("throughput") and
             math.isfinite(r["throughput"].get("audio_s_per_s") or r["throughput"].get("tokens_per_s") or math.nan)
             for r in results["tasks"].values())
    return 0 if ok and results["tasks"] else 1


if __name__ == "__main__":
    sys.exit(main())
