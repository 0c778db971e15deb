"""Evaluation decodes and scores every readable utterance (issue 13): a test utterance too short
for its transcript under CTC's frame rate is decoded anyway (its errors count), for the CTC task
and for the seq2seq task (which has no frame constraint at all); ``hyps.jsonl`` holds every id,
so ``speechlab score --ref test.jsonl --hyp hyps.jsonl`` reproduces the task's own WER/CER; the
log says how many were scored of how many and why any were skipped (unreadable audio only).
Only training filters by length. Oracles: :mod:`speechlab.score` on the written files, the
manifest's own ids, and torch's ``ctc_loss`` over the feasible dev utterances."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechlab.data.manifests import ctc_min_frames
from speechlab.data.speech import SpeechDataModule
from speechlab.score import edit_counts
from tests.cli.test_bad_input import absolute, one_error_line, run_cli
from tests.cli.test_checkpoint_cli import _fit

SHORT_TEXT = "seven eight nine"  # 16 characters; 0.2 s is 5 output frames at 25 Hz


@pytest.fixture(scope="module")
def eval_set(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """The tiny corpus's dev + test utterances (absolute paths, explicit ids) and one more:
    the first 0.2 s of one of them with a transcript CTC cannot emit in 5 frames; also the
    same manifest plus an entry whose audio is unreadable."""
    tmp = tmp_path_factory.mktemp("eval_set")
    rows = []
    for split in ("dev", "test"):
        path = absolute(tiny_corpus[split], tmp / f"{split}.jsonl")
        rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    for r in rows:
        r.setdefault("id", Path(r["audio_filepath"]).stem)
    short = {"audio_filepath": rows[0]["audio_filepath"], "offset": 0.0, "duration": 0.2,
             "text": SHORT_TEXT, "id": "too_short"}
    assert math.floor(0.2 * 25) < ctc_min_frames(SHORT_TEXT)
    manifest = tmp / "eval.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, short]))
    (tmp / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    bad = {"audio_filepath": str(tmp / "corrupt.wav"), "text": "one", "id": "corrupt"}
    with_bad = tmp / "eval_bad.jsonl"
    with_bad.write_text(manifest.read_text() + json.dumps(bad) + "\n")
    return {"manifest": manifest, "with_bad": with_bad, "tmp": tmp}


@pytest.fixture(scope="module")
def checkpoints(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """CTC and seq2seq checkpoints of ``speechlab fit`` (2 steps; output_frame_rate 25)."""
    tmp = tmp_path_factory.mktemp("eval_ckpts")
    return {task: _fit(tmp / task, tiny_corpus, task) for task in ("ctc", "seq2seq")}


def manifest_ids(path: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for line in path.read_text().splitlines() if line)


def speechlab_score(capsys, ref: Path, hyp: Path) -> dict:
    rc, out, err = run_cli(capsys, "score", "--ref", ref, "--hyp", hyp, "--json")
    assert rc == 0, err
    return json.loads(out)


def speechlab_test(capsys, ckpt: Path, manifest: Path, out: Path) -> tuple[str, dict, list[dict]]:
    rc, stdout, err = run_cli(capsys, "test", "--ckpt_path", ckpt, "--data.init_args.test_manifest",
                              manifest, "--model.init_args.output_dir", out,
                              "--trainer.logger=false", "--trainer.enable_progress_bar=false")
    assert rc == 0, err
    rows = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines() if line]
    return stdout, json.loads((out / "wer.json").read_text()), rows


def coverage_message(caplog, split: str) -> str:
    lines = [r.getMessage() for r in caplog.records
             if r.name == "speechlab.tasks" and r.getMessage().startswith(f"{split}: scored ")]
    assert len(lines) == 1, caplog.text
    return lines[0]


@pytest.mark.parametrize("task", ["ctc", "seq2seq"])
def test_speechlab_test_scores_every_utterance(task, checkpoints, eval_set, tmp_path, capsys,
                                               caplog, monkeypatch):
    """The too-short utterance is decoded and scored: hyps.jsonl has every id of the manifest,
    and ``speechlab score --ref MANIFEST --hyp hyps.jsonl`` gives exactly the counts the task
    wrote to wer.json and printed; the log line says N scored of N (CTC: and names the one left
    out of the loss; seq2seq has no frame constraint, so none)."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="speechlab.tasks")
    manifest = eval_set["manifest"]
    ids = manifest_ids(manifest)
    stdout, summary, rows = speechlab_test(capsys, checkpoints[task], manifest, tmp_path / "out")
    assert sorted(r["id"] for r in rows) == ids and "too_short" in ids
    scored = speechlab_score(capsys, manifest, tmp_path / "out" / "hyps.jsonl")
    assert scored["utterances"] == summary["utterances"] == len(ids)
    for key, unit in (("test_word", "words"), ("test_char", "chars")):
        assert summary[key]["errors"] == scored[unit]["errors"]
        assert summary[key]["ref_len"] == scored[unit]["ref_len"]
    assert f"WER {100 * scored['wer']:.2f}%" in stdout and f"CER {100 * scored['cer']:.2f}%" in stdout
    line = coverage_message(caplog, "test")
    assert line.startswith(f"test: scored {len(ids)} of {len(ids)} utterances of {manifest}")
    assert "skipped" not in line and summary["skipped"] == {}
    if task == "ctc":
        assert line.endswith("; 1 with a transcript too long for its output frames (too_short): "
                             "decoded and scored, left out of test/loss"), line
        assert summary["left_out_of_loss"] == 1
    else:
        assert "too long" not in line and summary["left_out_of_loss"] == 0
    assert f"speechlab score --ref {manifest} --hyp" in stdout


def test_unreadable_audio_is_the_only_skip_and_is_counted(checkpoints, eval_set, tmp_path, capsys,
                                                          caplog, monkeypatch):
    """An entry whose audio cannot be read is skipped, named by the reader and counted in the
    line "test: scored N of N+1 ..., skipped 1 (unreadable audio: 1)" and in wer.json; the
    too-short utterance is still scored, and hyps.jsonl scored against itself (the scorer's
    REF reads its "ref") reproduces the task's counts."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    manifest = eval_set["with_bad"]
    ids = manifest_ids(manifest)
    stdout, summary, rows = speechlab_test(capsys, checkpoints["ctc"], manifest, tmp_path / "out")
    assert sorted(r["id"] for r in rows) == [i for i in ids if i != "corrupt"]
    line = coverage_message(caplog, "test")
    assert line.startswith(f"test: scored {len(ids) - 1} of {len(ids)} utterances of {manifest}, "
                           "skipped 1 (unreadable audio: 1)"), line
    assert any(r.name == "speechlab.data" and r.getMessage().startswith(
        f"{manifest}:{len(ids)}: unreadable audio: ") for r in caplog.records), caplog.text
    assert summary["skipped"] == {"unreadable audio": 1}
    hyps = tmp_path / "out" / "hyps.jsonl"
    scored = speechlab_score(capsys, hyps, hyps)
    assert (summary["test_word"]["errors"], summary["test_word"]["ref_len"]) == \
        (scored["words"]["errors"], scored["words"]["ref_len"])
    assert f"speechlab score --ref {hyps} --hyp {hyps}" in stdout


def test_speechlab_decode_outputs_every_id(checkpoints, eval_set, tmp_path, capsys, monkeypatch):
    """``speechlab decode`` writes a hypothesis for every utterance of the manifest, says so
    ("scored N of N"), and its printed WER is the scorer's on its --out file."""
    monkeypatch.chdir(tmp_path)
    manifest, out = eval_set["manifest"], tmp_path / "decode.jsonl"
    ids = manifest_ids(manifest)
    rc, stdout, err = run_cli(capsys, "decode", "--checkpoint", checkpoints["ctc"], "--manifest",
                              manifest, "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert manifest_ids(out) == ids
    assert f"decode: scored {len(ids)} of {len(ids)} utterances of {manifest}" in stdout
    scored = speechlab_score(capsys, manifest, out)
    assert f"WER {100 * scored['wer']:6.2f}%  CER {100 * scored['cer']:6.2f}%" in stdout


def test_speechlab_decode_batched_search_writes_the_cpu_searchs_hypotheses(checkpoints, eval_set,
                                                                           tmp_path, capsys):
    """``speechlab decode --method beam --search batched`` (padded batches of the network
    outputs, the default with ``--device cuda``) writes the hypotheses of ``--search cpu``."""
    manifest, files = eval_set["manifest"], {}
    for search in ("cpu", "batched"):
        files[search] = tmp_path / f"{search}.jsonl"
        rc, stdout, err = run_cli(capsys, "decode", "--checkpoint", checkpoints["ctc"], "--manifest",
                                  manifest, "--method", "beam", "--beam-size", "4", "--search",
                                  search, "--out", files[search], "--device", "cpu")
        assert rc == 0, err
        assert ("beam 4 batched" in stdout) == (search == "batched")
    assert files["cpu"].read_text() == files["batched"].read_text()
    assert manifest_ids(files["batched"]) == manifest_ids(manifest)


def test_speechlab_decode_nbest_and_word_timestamps(checkpoints, eval_set, tmp_path, capsys):
    """``speechlab decode --nbest N --timestamps --out F``: every line also has ``nbest`` (N
    hypotheses at most, sorted by score, the first one ``hyp``) and ``words`` (the words of
    ``hyp``, in seconds: whole frames of ``model.frame_rate``, ordered, within the audio);
    ``hyp`` is the one written without the flags. The C++ search gives ``--nbest`` too, not
    ``--timestamps`` (a one-line error), and greedy decoding neither."""
    from speechlab.tasks import load
    from speechlab.tasks.gram_ctc import as_gram_ctc

    ckpt, manifest = checkpoints["ctc"], eval_set["manifest"]
    rate = as_gram_ctc(load(ckpt)).frame_rate
    duration = {json.loads(line)["id"]: json.loads(line).get("duration")
                for line in manifest.read_text().splitlines() if line}
    base = ["decode", "--checkpoint", ckpt, "--manifest", manifest, "--method", "beam",
            "--beam-size", "4", "--device", "cpu"]
    files = {name: tmp_path / f"{name}.jsonl" for name in ("plain", "timed", "cpu")}
    for name, flags in (("plain", ["--search", "batched"]),
                        ("timed", ["--search", "batched", "--nbest", "3", "--timestamps"]),
                        ("cpu", ["--search", "cpu", "--nbest", "3"])):
        rc, _, err = run_cli(capsys, *base, *flags, "--out", files[name])
        assert rc == 0, err
    rows = {name: [json.loads(line) for line in f.read_text().splitlines() if line]
            for name, f in files.items()}
    assert [r["hyp"] for r in rows["timed"]] == [r["hyp"] for r in rows["plain"]]
    assert all("nbest" not in r and "words" not in r for r in rows["plain"])
    for name in ("timed", "cpu"):
        for r in rows[name]:
            nbest = r["nbest"]
            assert 1 <= len(nbest) <= 3 and nbest[0]["hyp"] == r["hyp"]
            assert [h["score"] for h in nbest] == sorted((h["score"] for h in nbest), reverse=True)
            assert all(h["score"] == pytest.approx(h["am_score"] + h["lm_score"]) for h in nbest)
    assert all("words" not in r for r in rows["cpu"])
    for r in rows["timed"]:
        words = r["words"]
        assert [w["word"] for w in words] == r["hyp"].split()
        bounds = [x for w in words for x in (w["start"], w["end"])]
        assert bounds == sorted(bounds) and all(w["start"] < w["end"] for w in words)
        for x in bounds:
            assert x * rate == pytest.approx(round(x * rate), abs=1e-4)
        if words and duration[r["id"]] is not None:
            assert words[-1]["end"] <= duration[r["id"]] + 1 / rate + 1e-6
    assert any(r["words"] for r in rows["timed"])
    for flags, message in ((["--method", "beam", "--search", "cpu", "--timestamps"], "--timestamps needs --search batched"),
                           (["--nbest", "2"], "--timestamps/--nbest need --method beam"),
                           (["--method", "beam", "--nbest", "0"], "--nbest 0: 1 or more expected")):
        rc, _, err = run_cli(capsys, "decode", "--checkpoint", ckpt, "--manifest", manifest,
                             *flags, "--device", "cpu")
        assert rc == 2 and message in one_error_line(err, "decode")


def test_speechlab_decode_computes_the_features_speechlab_test_does(checkpoints, eval_set):
    """The network outputs ``speechlab decode`` (and ``grams refine``) decode are the ones
    ``speechlab test`` scores: the same features, dither included (seeded per utterance), as
    the data module the checkpoint was trained with. Until 2026-12-03 decode computed them
    without dither: on espeak-ng speech that took a model's greedy WER from 6.9 % to 18.2 %."""
    from speechlab.cli.decode import checkpoint_features, network_outputs
    from speechlab.tasks import load
    from speechlab.tasks.gram_ctc import as_gram_ctc

    ckpt, manifest = checkpoints["ctc"], str(eval_set["manifest"])
    model = as_gram_ctc(load(ckpt)).eval()
    features = checkpoint_features(ckpt)
    assert features == {"num_mel_bins": 80, "dither": 1.0}
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]
    dm = SpeechDataModule(**{k: v for k, v in saved.items() if not k.startswith("_")}
                          | {"test_manifest": manifest, "num_workers": 0})  # as speechlab test
    dm.setup("test")
    expected = {}
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            lp, lens = model(batch["features"], batch["feature_lens"])
            expected |= {i: lp[b, : int(lens[b])] for b, i in enumerate(batch["ids"])}
    out = network_outputs(model, manifest, features=features)
    assert sorted(out.ids) == sorted(expected)
    for i, lp in zip(out.ids, out.log_probs, strict=True):
        torch.testing.assert_close(lp, expected[i].float(), rtol=0, atol=1e-5)
    undithered = network_outputs(model, manifest, features={"dither": 0.0})
    assert max((a - b).abs().max().item()
               for a, b in zip(undithered.log_probs, out.log_probs, strict=True)) > 1e-3


def test_validation_scores_every_dev_utterance_and_averages_the_loss_over_feasible_ones(
        checkpoints, eval_set, caplog):
    """Validation decodes and scores the too-short dev utterance (val/wer over all of them) and
    leaves it out of val/loss: the mean of torch's per-utterance CTC loss (over target length)
    over the utterances whose loss is finite; the log line counts it."""
    import pytorch_lightning as pl

    from speechlab.tasks.ctc import CTCTask

    caplog.set_level(logging.INFO, logger="speechlab.tasks")
    manifest = eval_set["manifest"]
    task = CTCTask.load_from_checkpoint(checkpoints["ctc"], map_location="cpu").eval()
    dm = SpeechDataModule(dev_manifest=str(manifest), max_duration=30.0, num_workers=0,
                          output_frame_rate=25.0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    metrics = trainer.validate(task, datamodule=dm)[0]
    # the oracle reads the manifest itself, with no length filter
    oracle = SpeechDataModule(test_manifest=str(manifest), max_duration=30.0, num_workers=0,
                              output_frame_rate=None)
    oracle.setup("test")
    refs, hyps, losses = [], [], []
    with torch.no_grad():
        for batch in oracle.test_dataloader():
            lp, lens = task(batch["features"], batch["feature_lens"])
            per_utt = F.ctc_loss(lp.transpose(0, 1), batch["targets"], lens, batch["target_lens"],
                                 reduction="none", zero_infinity=False) / batch["target_lens"]
            losses += per_utt.tolist()
            refs += batch["texts"]
            hyps += task.transcribe(batch)
    assert len(refs) == len(manifest_ids(manifest))
    finite = [x for x in losses if math.isfinite(x)]
    assert len(finite) == len(losses) - 1
    assert metrics["val/loss"] == pytest.approx(sum(finite) / len(finite), rel=1e-4)
    assert metrics["val/wer"] == pytest.approx(edit_counts(refs, hyps, unit="word").rate, abs=1e-6)
    assert metrics["val/cer"] == pytest.approx(edit_counts(refs, hyps, unit="char").rate, abs=1e-6)
    line = coverage_message(caplog, "val")
    assert line.startswith(f"val: scored {len(refs)} of {len(refs)} utterances of {manifest}")
    assert line.endswith("; 1 with a transcript too long for its output frames (too_short): "
                         "decoded and scored, left out of val/loss"), line


def test_robust_evaluator_scores_every_utterance(checkpoints, eval_set, caplog):
    """The many-set evaluator (``robust_eval.evaluate_manifest``) follows the same rule: every
    readable utterance scored (its WER is the scorer's over all of them), unreadable audio the
    only skip, and the log line says N scored of M and why."""
    from speechlab.cli.robust_eval import evaluate_manifest
    from speechlab.tasks.ctc import CTCTask

    caplog.set_level(logging.INFO)
    task = CTCTask.load(checkpoints["ctc"])
    manifest = eval_set["with_bad"]
    ids = manifest_ids(manifest)
    res = evaluate_manifest(task, "eval", manifest, num_workers=0)
    assert sorted(r["id"] for r in res.rows) == [i for i in ids if i != "corrupt"]
    words = edit_counts([r["ref"] for r in res.rows], [r["hyp"] for r in res.rows], unit="word")
    assert (res.word_errors, res.words) == (words.errors, words.ref_len)
    assert any(r.getMessage() == f"scored {len(ids) - 1} of {len(ids)} utterances of {manifest}, "
               "skipped 1 (unreadable audio: 1)" for r in caplog.records), caplog.text
