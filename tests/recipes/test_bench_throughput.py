"""bench/throughput.py without training: every task's run config points at the data root, times
the requested steps with the right counter, and its callbacks import; the carryable subset keeps
the far-field/clean pairs and resolves every audio path."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("throughput", BENCH / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # the class_path the CLI child imports
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("throughput", None)


def _import(class_path: str):
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_task_configs(bench, tmp_path):
    args = argparse.Namespace(device="cuda", precision="bf16-mixed", warmup=3, steps=5,
                              data_root=str(tmp_path), num_workers=2, max_duration=None,
                              gram_backend="auto")
    lm = tmp_path / "lm.ckpt"
    for task, (_recipe, unit) in bench.TASKS.items():
        cfg = bench.task_config(task, tmp_path / task, args, lm)
        t, d = cfg["trainer"], cfg["data"]["init_args"]
        assert (t["accelerator"], t["devices"], t["precision"], t["max_steps"]) == ("gpu", 1, "bf16-mixed", 8)
        assert t["logger"] is False and t["limit_val_batches"] == 0
        counter = _import(t["callbacks"][0]["class_path"])
        assert counter.__name__ == ("AudioThroughput" if unit == "audio" else "TokenThroughput")
        assert t["callbacks"][0]["init_args"]["warmup_steps"] == 3
        for cb in t["callbacks"]:
            _import(cb["class_path"])
        paths = [v for k, v in d.items() if k.endswith(("_manifest", "_text")) and v]
        assert all(str(p).startswith(str(tmp_path)) for p in paths), (task, paths)
        if unit == "audio":
            assert d["num_workers"] == 2
        if task == "seq2seq_cold":
            assert cfg["model"]["init_args"]["lm_checkpoint"] == str(lm)
        if task == "robust_gan":
            assert d["paired_clean_manifest"] == str(tmp_path / "robust/clean/train.jsonl")


def test_make_data_keeps_pairs_and_paths(bench, tmp_path):
    src, out = tmp_path / "data", tmp_path / "subset"
    rows = [{"id": f"u{i}", "audio_filepath": f"wavs/u{i}.wav", "duration": 1.0 + i, "text": "a b"}
            for i in range(4)]
    (src / "tiny/wavs").mkdir(parents=True)
    far_dir = src / "robust/farfield/train"
    (far_dir / "wavs").mkdir(parents=True)
    for r in rows:
        (src / "tiny" / r["audio_filepath"]).write_bytes(r["id"].encode())
        (far_dir / f"wavs/{r['id']}_far.wav").write_bytes(b"far" + r["id"].encode())
    (src / "tiny/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    far = [dict(r, id=f"{r['id']}_far", audio_filepath=f"wavs/{r['id']}_far.wav", clean_id=r["id"])
           for r in rows]
    (far_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in far))

    summary = bench.make_data(src, out, utterances=3, dev=2)
    assert summary["tiny_train"] == 3 and summary["robust_pairs"] == 3

    def resolved(manifest: Path) -> list[tuple[str, bytes]]:
        return [(r["id"], (manifest.parent / r["audio_filepath"]).read_bytes())
                for r in map(json.loads, manifest.read_text().splitlines())]

    assert resolved(out / "tiny/train.jsonl") == [(f"u{i}", f"u{i}".encode()) for i in range(3)]
    assert resolved(out / "robust/clean/train.jsonl") == resolved(out / "tiny/train.jsonl")
    assert resolved(out / "robust/farfield/train/train.jsonl") == [
        (f"u{i}_far", f"faru{i}".encode()) for i in range(3)]
    assert len(resolved(out / "robust/farfield/dev/dev.jsonl")) == 2
    clean_ids = [json.loads(x)["clean_id"] for x in (out / "robust/farfield/train/train.jsonl").read_text().splitlines()]
    assert clean_ids == ["u0", "u1", "u2"]
