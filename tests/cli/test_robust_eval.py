"""speechlab.cli.robust_eval: embedding distances and tables against hand-computed values,
and a checkpoint evaluated on a clean and a far-field set (WER re-scored independently)."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from speechlab.cli.robust_eval import (
    embedding_distance,
    evaluate_sets,
    reference_set,
    results_table,
)
from speechlab.data.speech import SpeechDataModule
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.score import edit_counts
from speechlab.tasks.robust import RobustASRTask


def test_embedding_distance_by_hand():
    clean = {"c1": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    noisy = {"n1": torch.tensor([[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]),  # longer: trimmed to 2
             "n2": torch.ones(2, 2)}  # its clean source is missing: skipped
    d = embedding_distance(noisy, clean, {"n1": "c1", "n2": "c9", "n3": "c1"})
    assert d["n"] == 1
    assert d["l1"] == pytest.approx(2 / 4)
    assert d["rel_l1"] == pytest.approx(2 / 10)
    assert d["cos"] == pytest.approx((1 / math.sqrt(5) + 1) / 2)
    assert embedding_distance({}, clean, {"n1": "c1"}) == {"n": 0}


def _summary(wer, cer, n=10):
    return {"wer": wer, "cer": cer, "utterances": n}


def test_results_table_gaps_by_hand():
    results = {
        "a": {"sets": {"clean": _summary(0.2, 0.1), "sim_snr10": _summary(0.3, 0.15),
                       "sim_snr0": _summary(0.6, 0.3), "fsdd_clean": _summary(0.5, 0.4, 3),
                       "fsdd_real_snr10": _summary(0.8, 0.5, 3)}},
        "b": {"sets": {"clean": _summary(0.25, 0.1), "sim_snr10": _summary(0.25, 0.1),
                       "sim_snr0": _summary(0.35, 0.2), "fsdd_clean": _summary(0.5, 0.4, 3),
                       "fsdd_real_snr10": _summary(0.5, 0.4, 3)}},
    }
    lines = results_table(results, "wer").splitlines()
    assert lines[0] == "| test set | a | b |"
    assert lines[2] == "| clean (10) | 20.0 | 25.0 |"
    assert lines[3] == "| sim_snr10 (10) | 30.0 (+10.0) | 25.0 (+0.0) |"
    assert lines[4] == "| sim_snr0 (10) | 60.0 (+40.0) | 35.0 (+10.0) |"
    assert lines[6] == "| fsdd_real_snr10 (3) | 80.0 (+30.0) | 50.0 (+0.0) |"
    assert lines[7] == "| **mean gap, synthetic far-field sets** | +25.0 | +5.0 |"
    assert lines[8] == "| **mean gap, fsdd far-field sets** | +30.0 | +0.0 |"
    assert "| sim_snr10 (10) | 15.0 (+5.0) | 10.0 (+0.0) |" in results_table(results, "cer")
    assert reference_set("fsdd_sim_snr10", ["clean", "fsdd_clean"]) == "fsdd_clean"
    assert reference_set("clean", ["clean"]) is None


def test_evaluate_sets_on_a_checkpoint(tiny_corpus, tiny_farfield, tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = RobustASRTask(encoder=SpeechEncoderConfig(hidden_size=32, num_layers=1, conv_channels=8),
                         spec_augment=False, lambda_adv=0.1, n_critic=1, warmup_steps=1)
    dm = SpeechDataModule(str(tiny_farfield["train"]), paired_clean_manifest=str(tiny_corpus["train"]),
                          num_workers=0, check_samples=False)
    dm.setup("fit")
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, train_dataloaders=DataLoader(list(dm.train_dataloader()), batch_size=None))
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)

    sets = {"clean": tiny_corpus["train"], "far": tiny_farfield["train"]}
    results = evaluate_sets(ckpt, sets, out_dir=tmp_path / "eval", num_workers=0)
    n_far = len(tiny_farfield["train"].read_text().splitlines())
    for name, manifest in sets.items():
        summary = results["sets"][name]
        rows = [json.loads(line) for line in (tmp_path / "eval" / f"{name}.hyps.jsonl").read_text().splitlines()]
        assert summary["utterances"] == len(rows) == len(manifest.read_text().splitlines())
        words = edit_counts([r["ref"] for r in rows], [r["hyp"] for r in rows], unit="word")
        assert (summary["word_errors"], summary["words"]) == (words.errors, words.ref_len)
        assert summary["wer"] == pytest.approx(words.rate)
    assert "embedding" not in results["sets"]["clean"]
    emb = results["sets"]["far"]["embedding"]
    assert emb["n"] == n_far and emb["rel_l1"] > 0 and -1 <= emb["cos"] <= 1
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == results
