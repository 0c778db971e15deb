"""Two CPU processes (DDP, gloo) on the tiny corpus.

Fast (default suite): ``torchrun`` launches ``tests/tasks/ddp_worker.py`` on 2 ranks, as a user
launches a recipe; Lightning takes the torchrun environment. The ranks train on different
utterances at every step (lhotse's rank-aware sampler), their validation ids partition the dev
set, and the WER/CER Lightning logs equal the single-process value of the whole dev set computed
here from summed counts (the transcripts are a fixed function of the reference, so the expected
value is known and differs from the mean of the per-rank rates).

Slow: the same through bench/ddp.py and the tiny Gram-CTC recipe, with the DDP validation
counts compared to a one-process validation of the same checkpoint. The GPU run of that script
is in docs/ddp.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from speechlab.data.corpus import DocumentDataModule
from speechlab.data.textlm import BucketBatchSampler
from speechlab.score import edit_counts
from tests.tasks.ddp_worker import fake_hypothesis

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "ddp.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ddp", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ddp_two_cpu_ranks(tiny_corpus, tmp_path):
    # dev = all 12 utterances (the corpus's own dev split has fewer cuts than ranks)
    corpus = tiny_corpus["train"].parent
    data = tmp_path / "data"
    data.mkdir()
    for split, source in (("train", "train"), ("dev", "all")):
        rows = [json.loads(line) for line in tiny_corpus[source].read_text().splitlines() if line]
        for row in rows:
            row["audio_filepath"] = str((corpus / row["audio_filepath"]).resolve())
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc = _bench().main(["--out", str(out), "--data", str(data), "--recipes", "gram_ctc",
                        "--accelerator", "cpu", "--devices", "2", "--precision", "32",
                        "--steps", "2", "--warmup", "1", "--num-workers", "0",
                        "--max-duration", "8", "--stages", "ddp,val1", "--stage-timeout-s", "300"])
    res = json.loads((out / "ddp.json").read_text())["recipes"]["gram_ctc"]
    ids = res["ids"]
    assert ids["steps_with_shared_ids"] == 0 and ids["steps_per_rank"][0] >= 1, ids
    assert ids["val_covers_dev"] and ids["val_duplicates"] == 0, ids
    assert res["wer_equal"]["ok"], res["wer_equal"]
    assert res["wer_equal"]["val_word"]["ddp"][1] > 0
    assert rc == 0


def _absolute(manifest: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line]
    for row in rows:
        row["audio_filepath"] = str((manifest.parent / row["audio_filepath"]).resolve())
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_ddp_two_gloo_ranks_under_torchrun(tiny_corpus, tmp_path):
    train = _absolute(tiny_corpus["train"], tmp_path / "train.jsonl")
    dev = _absolute(tiny_corpus["all"], tmp_path / "dev.jsonl")  # 12 cuts: both ranks get some
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "tasks" / "ddp_worker.py"), str(tmp_path), str(train), str(dev)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Lightning ran as rank 0/1 of a torchrun world of 2, over gloo
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert {r["cluster_environment"] for r in ranks} == {"TorchElasticEnvironment"}
    assert {r["backend"] for r in ranks} == {"gloo"}

    # training: the same number of steps, never an utterance on both ranks
    steps = [r["train_steps"] for r in ranks]
    assert len(steps[0]) == len(steps[1]) == 2, steps
    for a, b in zip(*steps, strict=True):
        assert a and b and not set(a) & set(b), (a, b)

    # validation: every dev utterance on exactly one rank
    dev_rows = [json.loads(line) for line in dev.read_text().splitlines() if line]
    val = [r["val_ids"] for r in ranks]
    assert val[0] and val[1] and not set(val[0]) & set(val[1])
    assert sorted(val[0] + val[1]) == sorted(row["id"] for row in dev_rows)

    # the logged WER/CER: summed counts of the whole dev set, computed here in one process
    refs = [row["text"] for row in dev_rows]
    hyps = [fake_hypothesis(t) for t in refs]
    for unit, key in (("word", "val/wer"), ("char", "val/cer")):
        whole = edit_counts(refs, hyps, unit=unit)
        expected = whole.errors / whole.ref_len
        local = [r["local_counts"][unit] for r in ranks]
        assert [sum(c[0] for c in local), sum(c[1] for c in local)] == [whole.errors, whole.ref_len]
        mean_of_rates = sum(e / n for e, n in local) / 2
        # the logged float32 rate is within 1e-7 of the pooled one; the mean of the two ranks'
        # rates is not (the check can tell a sum of counts from a mean of rates)
        assert abs(mean_of_rates - expected) > 1e-5, (mean_of_rates, expected)
        for r in ranks:
            assert r["logged"][key] == pytest.approx(expected, abs=1e-6), (unit, r["logged"], expected)


def _fake_world(monkeypatch, rank: int, world: int) -> None:
    """torch.distributed as seen by a data module on ``rank`` of ``world`` (no process group)."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)


def test_text_lm_batches_under_ddp():
    lengths = [3 + (i * 7) % 11 for i in range(30)]  # 13 batches of <= 24 tokens
    for world in (2, 3):
        train = [BucketBatchSampler(lengths, 24, shuffle=True, seed=1, rank=r, world_size=world)
                 for r in range(world)]
        evals = [BucketBatchSampler(lengths, 24, shuffle=False, rank=r, world_size=world)
                 for r in range(world)]
        # training: equal steps on every rank, disjoint sentences
        assert len({len(list(s)) for s in train}) == 1
        seen = [i for s in train for b in s for i in b]
        assert len(seen) == len(set(seen))
        # evaluation: every sentence on exactly one rank, even when the batches do not divide
        assert len(list(BucketBatchSampler(lengths, 24, shuffle=False))) % world != 0
        assert sorted(i for s in evals for b in s for i in b) == list(range(len(lengths)))


def _sentences(loader) -> list[tuple[int, ...]]:
    return [tuple(t[:n].tolist()) for b in loader for t, n in zip(b["tokens"], b["lengths"], strict=True)]


def test_topic_lm_evaluation_under_ddp(monkeypatch):
    dm = DocumentDataModule(embedded_documents=40, batch_size=8)
    dm.setup()
    n = len(dm.dataset("val"))  # sentences
    assert n % 3 != 0  # Lightning's padding DistributedSampler would repeat examples here
    rows: list[tuple] = []
    for rank in range(3):
        _fake_world(monkeypatch, rank, 3)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # Lightning leaves it in place
        rows += _sentences(loader)
    monkeypatch.undo()
    whole = _sentences(dm.val_dataloader())
    assert len(rows) == n == len(whole) and sorted(rows) == sorted(whole)


@pytest.mark.slow
def test_robust_gan_ranks_stay_identical_under_ddp(tmp_path):
    """Critic updates are backward passes of their own: with unused-parameter detection each one
    averages its gradients over the ranks, so the ranks' encoders and critics stay equal while
    training on different batches."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "tasks" / "ddp_worker.py"), "robust_gan", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"robust.rank{r}.pt") for r in (0, 1))
    assert all(not set(a) & set(b) for a, b in zip(r0["train_steps"], r1["train_steps"], strict=True))
    moved = [k for k in r0["after"] if not torch.equal(r0["after"][k], r0["before"][k])]
    assert any(k.startswith("critic.") for k in moved) and any(k.startswith("encoder.") for k in moved)
    for k in r0["after"]:
        assert torch.equal(r0["after"][k], r1["after"][k]), k
