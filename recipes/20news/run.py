"""Train the 20 Newsgroups recipes (TCNLM 10/30/50 topics, LSTM equal size / equal parameters)
for a fixed small budget each, concurrently on one GPU, and print the results table.

The documents are read and tokenized once (the recipes' data settings; ``--train``/``--test``
override the paths); then one process per recipe (forked, so they share the prepared data)
trains ``TopicLMTask`` with the recipe's model settings for ``--steps`` steps or until the
deadline, tests it (perplexity; TCNLM: topic words and NPMI on the test documents) and samples
sentences for a few topics. Each writes ``<out>/<recipe>.json``; the table goes to stdout and
``<out>/table.md``.

  python recipes/20news/run.py --train .cache/20news/train.jsonl.gz \\
      --test .cache/20news/test.jsonl.gz --out /tmp/out --steps 6000 --seconds 180
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

# the parent must not initialize CUDA before forking the trainers (NVML-based device checks)
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes"))
from effective_config import effective_configs  # noqa: E402

CONFIGS = ("lstm_equal_size", "lstm_equal_params", "tcnlm_10", "tcnlm_30", "tcnlm_50")


#: (recipe folder, name) -> the recipe as ``speechlab fit`` reads it (includes resolved); read
#: in the parent, before the trainers fork (``load_recipes``)
RECIPES: dict[tuple[Path, str], dict[str, Any]] = {}


def load_recipes(names: list[str], recipe_dir: Path) -> None:
    paths = [recipe_dir / f"{name}.yaml" for name in names]
    RECIPES.update(zip([(recipe_dir, n) for n in names], effective_configs(paths), strict=True))


def recipe_args(name: str, recipe_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    if (recipe_dir, name) not in RECIPES:
        load_recipes([name], recipe_dir)
    cfg = RECIPES[(recipe_dir, name)]
    return cfg["model"]["init_args"], cfg["data"]["init_args"], cfg["trainer"]


def train_one(name: str, dm: Any, args: argparse.Namespace, deadline: float) -> None:
    """Child process: train, test, sample; write ``<out>/<name>.json``."""
    import pytorch_lightning as pl
    import torch

    from speechlab.io import atomic_write_text
    from speechlab.tasks.topic_lm import (
        TopicLMTask,
        count_parameters,
        parse_topic_mixture,
        sample_sentences,
    )

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model_args, _, trainer_args = recipe_args(name, args.recipes)
    out_dir = Path(args.out)
    # a re-run into the same --out replaces its results (as it does <out>/<name>.json)
    model_args = {**model_args, "total_steps": args.steps, "output_dir": str(out_dir / name),
                  "overwrite": True}
    if args.accelerator == "cpu":
        model_args.update(args.cpu_model or {})
    task = TopicLMTask(**model_args)
    budget = max(10.0, deadline - time.time() - args.reserve)
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1,
                         precision=trainer_args.get("precision", "32") if args.accelerator == "gpu" else "32",
                         max_steps=args.steps, max_time={"seconds": budget},
                         gradient_clip_val=trainer_args.get("gradient_clip_val"), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(out_dir / name))
    t0 = time.time()
    trainer.fit(task, datamodule=dm)
    train_s = time.time() - t0
    steps = trainer.global_step
    t0 = time.time()
    trainer.test(task, datamodule=dm, verbose=False)
    results = json.loads((out_dir / name / "results.json").read_text())
    results.update(name=name, steps=steps, train_seconds=round(train_s, 1), test_seconds=round(time.time() - t0, 1),
                   hidden_size=task.hparams.lstm_hidden_size if not task.is_tcnlm else task.hparams.hidden_size,
                   parameters=count_parameters(task), budget_seconds=round(budget, 1),
                   train_loss=float(trainer.callback_metrics.get("train/loss", float("nan"))))
    if task.is_tcnlm and "npmi" in results:
        best = sorted(range(len(results["npmi"])), key=lambda k: -results["npmi"][k])[: args.sample_topics]
        task.eval()
        results["samples"] = {str(k): sample_sentences(task, parse_topic_mixture(str(k), task.hparams.num_topics),
                                                       num=3, max_len=20, temperature=0.8, seed=k)
                              for k in best}
    elif not task.is_tcnlm:
        results["samples"] = {"lstm": sample_sentences(task, None, num=3, max_len=20, temperature=0.8)}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(results, indent=1) + "\n")
    print(f"[{name}] done: {steps} steps in {train_s:.0f}s, test ppl {results['perplexity']:.2f}", flush=True)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | hidden | parameters | steps | train s | test perplexity | NPMI (top 10, test docs) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        npmi = f"{r['npmi_mean']:.4f}" if "npmi_mean" in r else "–"
        lines.append(f"| {r['name']} | {r['hidden_size']} | {r['parameters'] / 1e6:.1f}M | {r['steps']} | "
                     f"{r['train_seconds']:.0f} | {r['perplexity']:.2f} | {npmi} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=None, help="training documents (default: the recipe's)")
    p.add_argument("--test", default=None, help="test documents (default: the recipe's)")
    p.add_argument("--recipes", type=Path, default=REPO / "recipes" / "20news")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seconds", type=float, default=180, help="wall-clock budget for everything")
    p.add_argument("--reserve", type=float, default=40, help="seconds kept for testing and sampling")
    p.add_argument("--sample-topics", type=int, default=3)
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--max-documents", type=int, default=None, help="quick runs: fewer training documents")
    p.add_argument("--cpu-model", type=json.loads, default=None, help="CPU smoke runs: model overrides (JSON)")
    args = p.parse_args(argv)
    deadline = time.time() + args.seconds

    from speechlab.data.corpus import DocumentDataModule

    load_recipes(args.configs, args.recipes)
    data_args = [recipe_args(c, args.recipes)[1] for c in args.configs]
    if any(d != data_args[0] for d in data_args):
        raise SystemExit("the recipes' data settings differ; this runner shares one data module")
    data = {**data_args[0], "num_workers": 2}
    for key in ("train", "test"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    if args.max_documents:
        data["max_documents"] = args.max_documents
    t0 = time.time()
    dm = DocumentDataModule(**data)
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.splits.items()}
    sentences = {k: len(dm.dataset(k)) for k in dm.splits}
    print(f"data: documents {sizes}, sentences {sentences}, LM vocabulary {len(dm.lm_vocab)}, topic "
          f"vocabulary {len(dm.topic_vocab)} ({time.time() - t0:.0f}s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if torch.cuda.is_initialized():
        raise SystemExit("CUDA was initialized before forking the trainers")
    ctx = mp.get_context("fork")
    procs = {c: ctx.Process(target=train_one, args=(c, dm, args, deadline), name=c) for c in args.configs}
    for proc in procs.values():
        proc.start()
    for c, proc in procs.items():
        proc.join(timeout=max(1.0, deadline + 120 - time.time()))
        if proc.is_alive():
            proc.terminate()
            print(f"[{c}] killed at the deadline", flush=True)
    rows = [json.loads((out / f"{c}.json").read_text()) for c in args.configs if (out / f"{c}.json").exists()]
    summary = {"data": {"documents": sizes, "sentences": sentences, "lm_vocab": len(dm.lm_vocab),
                        "topic_vocab": len(dm.topic_vocab)}, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    print("\n" + text)
    for r in rows:
        if "topics" in r:
            order = sorted(range(len(r["npmi"])), key=lambda k: -r["npmi"][k])
            print(f"\n{r['name']} topics (best NPMI first):")
            for k in order[:5]:
                print(f"  {k:2d} ({r['npmi'][k]:+.3f}): {' '.join(r['topics'][k])}")
        for k, sents in r.get("samples", {}).items():
            print(f"  samples {r['name']} topic {k}: " + " | ".join(sents))
    missing = [c for c in args.configs if not (out / f"{c}.json").exists()]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
