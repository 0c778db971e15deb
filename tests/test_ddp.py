"""Two CPU processes (DDP, gloo) on the tiny corpus, through bench/ddp.py: the ranks train on
different utterances (lhotse's rank-aware sampler), their validation ids partition the dev set,
and the validation WER/CER reduced over the ranks (summed counts) equal a single process's
on the same checkpoint. The GPU run of the same script is in docs/ddp.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ddp.py"


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
