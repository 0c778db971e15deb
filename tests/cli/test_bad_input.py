"""Bad input as a user meets it, end to end (issue 8): each case gives a one-line error that
names the thing and the reason, or a counted, logged skip; nothing overwrites an existing output
without ``--force``. Property-based tests (hypothesis) fuzz the manifest reader and the scorer.

The per-reason manifest checks live in ``tests/data/test_manifests.py`` and the loss engine's
edge cases in ``tests/functional/test_gram_ctc.py``; this file walks through the commands
(``speechlab ...`` run in-process through :func:`speechlab.cli.main`) and the public API the way
a user reaches them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from speechlab.cli import TOOLS, load_tool, main
from speechlab.data.grams import GramSet, min_frames
from speechlab.data.manifests import ManifestError, load_cuts, read_manifest
from speechlab.data.text import CharVocab, normalize_text
from speechlab.functional.gram_ctc import gram_ctc_loss
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.score import TranscriptError, edit_counts, read_transcripts
from speechlab.tasks.ctc import CTCTask
from speechlab.tasks.gram_ctc import GramCTCTask
from tests.helpers import entry, manifest, run_cli, tone, wav

REPO = Path(__file__).resolve().parents[2]
CTC_RECIPE = REPO / "recipes" / "tiny" / "ctc.yaml"
GRAM_RECIPE = REPO / "recipes" / "tiny" / "gram_ctc.yaml"
CONFORMER_RECIPE = REPO / "recipes" / "tiny" / "ctc_conformer.yaml"
VOCAB = CharVocab()
SR = 16000



def one_error_line(err: str, command: str) -> str:
    """The error a command printed: exactly one line ``speechlab COMMAND: error: ...`` and no
    traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("speechlab ")]
    assert len(lines) == 1 and lines[0].startswith(f"speechlab {command}: error: "), err
    return lines[0]


def absolute(manifest_path: Path, out: Path, extra: list[dict] = ()) -> Path:
    """``manifest_path``'s lines with absolute audio paths (plus ``extra``), written to ``out``."""
    rows = [json.loads(line) for line in manifest_path.read_text().splitlines() if line]
    for r in rows:
        r["audio_filepath"] = str((manifest_path.parent / r["audio_filepath"]).resolve())
    out.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return out


# ============================================================================ audio and text

#: a recipe vocabulary without "z": the normalizer's alphabet is the default vocabulary's, so
#: out-of-vocabulary text needs a smaller one (text in another script normalizes to empty)
NO_Z = "abcdefghijklmnopqrstuvwxy '"


def bad_utterances(folder: Path, oov: bool = False) -> list[tuple[dict, str]]:
    """One manifest entry per kind of bad audio/transcript, with the skip category it gets
    (``oov``: also transcripts outside :data:`NO_Z`)."""
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    full = wav(folder / "truncated.wav", seconds=1.0).read_bytes()
    (folder / "truncated.wav").write_bytes(full[: len(full) // 2])
    (folder / "zero_bytes.wav").write_bytes(b"")
    sf.write(str(folder / "no_samples.wav"), np.zeros(0, np.float32), SR)
    nan = tone(1.0)
    nan[100] = np.nan
    sf.write(str(folder / "nan.wav"), nan, SR, subtype="FLOAT")
    wav(folder / "stereo.wav", channels=2)
    ok = wav(folder / "ok.wav", seconds=1.0)
    short = wav(folder / "short.wav", seconds=0.3)
    oov_cases = [(entry(ok, id="oov_text", text="zzz"), "OOV-only text"),
                 (entry(ok, id="oov_chars", text="lazy"), "OOV characters")]
    return [*(oov_cases if oov else []),
        (entry(folder / "corrupt.wav", id="corrupt"), "unreadable audio"),
        (entry(folder / "truncated.wav", id="truncated"), "unreadable audio"),
        (entry(folder / "zero_bytes.wav", id="zero_bytes", duration=0.0), "unreadable audio"),
        (entry(folder / "no_samples.wav", id="no_samples", duration=0.0), "empty audio"),
        (entry(folder / "nan.wav", id="nan"), "non-finite samples"),
        (entry(folder / "stereo.wav", id="stereo"), "multi-channel"),
        (entry(ok, id="empty_text", text=" ?! "), "empty text"),
        (entry(ok, id="other_script", text="日本語"), "empty text"),
        (entry(folder / "missing.wav", id="missing"), "audio not found"),
        (entry(folder / "wavs", id="a_folder"), "audio is a directory"),
        (entry(short, id="too_long_text", duration=0.3,
               text="this transcript is far too long for a third of a second"), "too short"),
    ]


def test_validate_names_every_bad_utterance_and_counts_them(tmp_path, capsys):
    """``speechlab data validate``: each bad line is named (manifest:line: category: ... file),
    the summary counts the skips by reason, and the exit status says there were problems."""
    good = wav(tmp_path / "good.wav")
    cases = bad_utterances(tmp_path / "audio", oov=True)
    m = manifest(tmp_path, [entry(good, id="good0", text="hello")] + [e for e, _ in cases])
    rc, out, _ = run_cli(capsys, "data", "validate", "--manifest", m, "--vocab", NO_Z,
                         "--frame-rate", "25")
    assert rc == 1
    for line, (e, category) in enumerate(cases, start=2):
        issue = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith(f"{m}:{line}: "))
        assert issue.startswith(f"{m}:{line}: {category}: "), issue
        if category not in ("empty text", "OOV-only text", "OOV characters", "too short",
                            "audio not found"):
            assert Path(e["audio_filepath"]).name in issue, issue  # the file is named
    expected = Counter(c for _, c in cases)
    counts = ", ".join(f"{k}: {v}" for k, v in expected.most_common())
    assert f"{m}: kept 1/{1 + len(cases)}, skipped {len(cases)} ({counts})" in out
    assert "empty audio: " in out and "has no samples" in out  # not "bad offset"


def test_wrong_sample_rate_is_one_error_with_the_fix(tmp_path, capsys):
    """A sample rate other than the recipe's is never a silent skip: one error line naming the
    manifest line, the file, both rates and the setting that resamples."""
    good, low = wav(tmp_path / "good.wav"), wav(tmp_path / "low.wav", sr=8000)
    m = manifest(tmp_path, [entry(good), entry(low)])
    rc, _, err = run_cli(capsys, "data", "validate", "--manifest", m)
    line = one_error_line(err, "data validate")
    assert rc == 2 and f"{m}:2: sample rate: {low} is 8000 Hz, the recipe expects 16000 Hz" in line
    assert "resample: true" in line
    assert run_cli(capsys, "data", "validate", "--manifest", m, "--resample")[0] == 0


def test_training_skips_bad_utterances_counted_and_logged(tiny_corpus, tmp_path, capsys, caplog,
                                                          monkeypatch):
    """``speechlab fit`` on a train manifest with every kind of bad utterance: training runs on the
    good ones; each skip is logged with its line and the summary counts them by reason."""
    monkeypatch.chdir(tmp_path)
    cases = bad_utterances(tmp_path / "audio")
    train = absolute(tiny_corpus["train"], tmp_path / "train.jsonl", [e for e, _ in cases])
    dev = absolute(tiny_corpus["dev"], tmp_path / "dev.jsonl")
    n_good = len(tiny_corpus["train"].read_text().splitlines())
    caplog.set_level(logging.WARNING, logger="speechlab.data")
    rc, _, err = run_cli(
        capsys, "fit", "--config", CTC_RECIPE, "--trainer.fast_dev_run", "1",
        "--trainer.default_root_dir", tmp_path, "--data.init_args.train_manifest", train,
        "--data.init_args.dev_manifest", dev, "--data.init_args.num_workers", "0",
        "--trainer.enable_progress_bar", "false")
    assert rc == 0, err
    messages = [r.getMessage() for r in caplog.records]
    for line, (_, category) in enumerate(cases, start=n_good + 1):
        assert any(msg.startswith(f"{train}:{line}: {category}") for msg in messages), line
    summary = next(msg for msg in messages if msg.startswith(f"{train}: kept"))
    assert summary.startswith(f"{train}: kept {n_good}/{n_good + len(cases)}, skipped {len(cases)}")


def test_manifest_with_nothing_usable_is_one_error(tiny_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = bad_utterances(tmp_path / "audio")
    train = manifest(tmp_path, [e for e, _ in cases], name="train.jsonl")
    rc, _, err = run_cli(
        capsys, "fit", "--config", CTC_RECIPE, "--trainer.fast_dev_run", "1",
        "--data.init_args.train_manifest", train, "--data.init_args.num_workers", "0")
    line = one_error_line(err, "fit")
    assert rc == 2 and f"{train}: no usable entry, all {len(cases)} skipped (" in line


# ============================================================================ byte-order marks

def _user_file_readers(audio: Path) -> dict[str, tuple[str, str, object]]:
    """name -> (file name, UTF-8 text, reader): the readers of files the user gives (those of
    ARPA words and synth sentences were BOM-safe already: the first never reads line 1's text,
    the second normalizes U+FEFF away)."""
    from speechlab.cli.robust_eval import clean_ids
    from speechlab.data import corpus, farfield, subword, textlm
    from speechlab.decode.prefix_beam import load_lexicon
    from speechlab.lm.ngram import read_lines

    rows = [{"id": "u1", "audio_filepath": str(audio), "duration": 1.0, "text": "hello world",
             "clean_id": "c1", "label": "greeting"},
            {"id": "u2", "audio_filepath": str(audio), "duration": 1.0, "text": "good bye"}]
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    lines = "hello world\ngood bye\n"
    return {
        "manifest": ("m.jsonl", jsonl, lambda p: list(read_manifest(p))),
        "load_cuts": ("m.jsonl", jsonl, lambda p: [c.id for c in load_cuts(p)[0]]),
        "score ref (jsonl)": ("r.jsonl", jsonl, read_transcripts),
        "score ref (tsv)": ("r.tsv", "u1\thello world\nu2\tgood bye\n", read_transcripts),
        "farfield manifest": ("m.jsonl", jsonl, farfield.read_manifest),
        "text LM manifest": ("m.jsonl", jsonl,
                             lambda p: [(t.text, t.line) for t in textlm.read_text_lines(p)]),
        "text LM text": ("t.txt", lines,
                         lambda p: [(t.text, t.line) for t in textlm.read_text_lines(p)]),
        "subword manifest": ("m.jsonl", jsonl, subword.texts_from_manifest),
        "documents (jsonl)": ("d.jsonl", jsonl, corpus.read_jsonl_documents),
        "documents (folder)": ("d.txt", lines, lambda p: corpus.read_folder_documents(p.parent)),
        "stop words": ("stop.txt", "the\na\n", lambda p: corpus.load_stop_words(str(p))),
        "n-gram text": ("t.txt", lines, lambda p: read_lines(str(p), None, False, "word")),
        "n-gram manifest": ("m.jsonl", jsonl, lambda p: read_lines(None, str(p), False, "word")),
        "clean ids": ("m.jsonl", jsonl, clean_ids),
        "lexicon": ("words.txt", "hello\nworld\n", lambda p: load_lexicon(str(p), None)),
        "GramSet": ("g.json", json.dumps(GramSet.from_ngrams(VOCAB, ["th", "he"]).to_dict()),
                    lambda p: GramSet.load(p).to_dict()),
        "CharVocab": ("v.json", json.dumps(CharVocab().to_dict()), lambda p: CharVocab.load(p).chars),
    }


USER_FILE_READERS = (
    "manifest", "load_cuts", "score ref (jsonl)", "score ref (tsv)", "farfield manifest",
    "text LM manifest", "text LM text", "subword manifest", "documents (jsonl)",
    "documents (folder)", "stop words", "n-gram text", "n-gram manifest", "clean ids", "lexicon",
    "GramSet", "CharVocab",
)


@pytest.mark.parametrize("name", USER_FILE_READERS)
def test_every_reader_of_user_files_accepts_a_byte_order_mark(tmp_path, name):
    """Issue 13: a UTF-8 BOM at the start of a user's file (many Windows tools write one) made
    JSON readers refuse line 1 and text readers keep U+FEFF in the first word or id. Each reader
    returns for the file with a BOM what it returns for the same file without one."""
    audio = wav(tmp_path / "a.wav")
    readers = _user_file_readers(audio)
    assert sorted(readers) == sorted(USER_FILE_READERS)
    filename, text, reader = readers[name]
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    plain = tmp_path / "plain" / filename
    plain.write_bytes(text.encode("utf-8"))
    bom = tmp_path / "bom" / filename
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    expected = reader(plain)
    assert expected and "\ufeff" not in repr(expected)
    assert reader(bom) == expected


# ============================================================================ too long for frames

def logits_and_targets(texts: list[str], frames: list[int], vocab_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((max(frames), len(texts), vocab_size), generator=gen, dtype=torch.float64)
    targets = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(VOCAB.encode(t)) for t in texts], batch_first=True)
    return logits, targets, torch.tensor(frames), torch.tensor([len(t) for t in texts])


@pytest.mark.parametrize("grams", ["unigrams", "bigrams"])
def test_transcript_too_long_for_its_frames_inf_or_zero(grams):
    """Per utterance: ``zero_infinity=False`` gives an infinite loss, ``True`` gives 0 and a zero
    gradient, for CTC (torch) and Gram-CTC alike; feasibility is the fewest frames a path needs
    (CTC: characters + repeats; Gram-CTC: fewer when grams cover the text)."""
    gs = GramSet.unigrams(VOCAB) if grams == "unigrams" else GramSet.from_ngrams(VOCAB, ["ab", "th"])
    texts, frames = ["abab", "abab", "aa", "the"], [3, 2, 2, 5]
    feasible = [f >= min_frames(t, gs) for t, f in zip(texts, frames, strict=True)]
    assert feasible == ([False, False, False, True] if grams == "unigrams"
                        else [True, False, False, True])  # ab _ ab fits 3 frames
    logits, targets, il, tl = logits_and_targets(texts, frames, len(gs))
    for zero_infinity in (False, True):
        x = logits.clone().requires_grad_()
        loss = gram_ctc_loss(x.log_softmax(-1), targets, il, tl, gs, reduction="none",
                             zero_infinity=zero_infinity)
        loss.sum().backward()
        for n, ok in enumerate(feasible):
            if ok:
                assert math.isfinite(loss[n].item()) and loss[n].item() > 0
                assert x.grad[: frames[n], n].abs().sum() > 0
            elif zero_infinity:
                assert loss[n].item() == 0.0 and torch.equal(x.grad[:, n], torch.zeros_like(x.grad[:, n]))
            else:
                assert loss[n].item() == math.inf
        if grams == "unigrams":  # the oracle: torch's CTC loss of the same outputs
            y = logits.clone().requires_grad_()
            ref = F.ctc_loss(y.log_softmax(-1), targets, il, tl, reduction="none",
                             zero_infinity=zero_infinity)
            ref.sum().backward()
            assert torch.equal(loss.isinf(), ref.isinf())
            torch.testing.assert_close(loss[~ref.isinf()], ref[~ref.isinf()])
            if zero_infinity:
                torch.testing.assert_close(x.grad, y.grad)


def small_encoder() -> SpeechEncoderConfig:
    return SpeechEncoderConfig(input_dim=80, stride=4, conv_channels=4, rnn_type="gru",
                               hidden_size=16, num_layers=1, dropout=0.0)


@pytest.mark.parametrize("task_name", ["ctc", "gram_ctc"])
def test_task_skips_and_counts_utterances_too_long_for_their_frames(task_name, tmp_path, caplog):
    """In training an utterance whose transcript cannot fit its frames is skipped (loss 0, no
    gradient, ``zero_infinity``), counted and named in a warning: the batch loss is the good
    utterance's loss over the batch size (torch's ``mean`` counts the skipped one), and so are
    the gradients."""
    torch.manual_seed(0)
    if task_name == "ctc":
        task = CTCTask(encoder=small_encoder(), spec_augment=False)
    else:
        path = tmp_path / "grams.json"
        GramSet.from_ngrams(VOCAB, ["th", "he", "e "]).save(path)
        task = GramCTCTask(grams=str(path), encoder=small_encoder(), spec_augment=False)
    texts = ["the", "the cat sat on the mat"]
    feats = torch.randn(2, 80, 80)
    batch = {"features": feats, "feature_lens": torch.tensor([80, 24]),  # 20 and 6 output frames
             "targets": torch.nn.utils.rnn.pad_sequence([torch.tensor(VOCAB.encode(t)) for t in texts],
                                                        batch_first=True),
             "target_lens": torch.tensor([len(t) for t in texts]), "ids": ["good", "too_long"],
             "texts": texts}
    single = {k: v[:1] for k, v in batch.items()}
    caplog.set_level(logging.WARNING, logger="speechlab.tasks")
    task.train()
    loss_batch = task.compute_loss(batch)
    grads_batch = torch.autograd.grad(loss_batch, list(task.parameters()), allow_unused=True)
    assert task.infeasible_utterances == 1
    assert any("utterance too_long: transcript of 22 characters needs" in r.getMessage()
               and "the model has 6" in r.getMessage() for r in caplog.records), caplog.text
    loss_single = task.compute_loss(single)
    grads_single = torch.autograd.grad(loss_single, list(task.parameters()), allow_unused=True)
    assert task.infeasible_utterances == 1  # the good utterance alone is not counted
    torch.testing.assert_close(loss_batch, loss_single / 2)
    for gb, gs in zip(grads_batch, grads_single, strict=True):
        if gs is not None:
            torch.testing.assert_close(gb, gs / 2, atol=1e-6, rtol=1e-4)
    if task_name == "ctc":  # the oracle for the task's loss: torch's CTC over its outputs
        task.eval()
        with torch.no_grad():
            lp, lens = task(batch["features"], batch["feature_lens"])
            ref = F.ctc_loss(lp.transpose(0, 1), batch["targets"], lens, batch["target_lens"],
                             zero_infinity=True)
            torch.testing.assert_close(task.compute_loss(batch), ref)


# ============================================================================ entry points

#: the three ways to start the command: the console script (pyproject's ``speechlab =
#: "speechlab.cli:main"``, which pip's generated script calls just so), ``python -m
#: speechlab.cli`` (README's form for torchrun/srun) and ``python -m speechlab``
ENTRY_POINTS = {
    "speechlab": ["-c", "import sys; from speechlab.cli import main; sys.exit(main())"],
    "python -m speechlab.cli": ["-m", "speechlab.cli"],
    "python -m speechlab": ["-m", "speechlab"],
}


def test_every_entry_point_gives_the_same_one_line_error(tmp_path):
    """Issue 13: under ``python -m speechlab.cli`` the CLIError that speechlab.score raised was
    the class of a second copy of speechlab.cli, not the one ``__main__`` caught: a traceback.
    ``python -m speechlab`` did not exist. Each bad input below (a CLIError raised in a library
    module, a missing file) gives one line on stderr, exit status 2, the same for all three."""
    ref = tmp_path / "ref.tsv"
    ref.write_text("u1\ta\nu2\tb\n")
    hyp = tmp_path / "hyp.tsv"
    hyp.write_text("u1\ta\n")
    cases = {
        "id missing": ["score", "--ref", ref, "--hyp", hyp],
        "missing file": ["score", "--ref", ref, "--hyp", tmp_path / "nope.tsv"],
        # no espeak-ng on PATH: the CLIError of speechlab.data.synth
        "espeak-ng missing": ["data", "synth", "--out", tmp_path / "corpus"],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for case, argv in cases.items():
        errors = {}
        for name, start in ENTRY_POINTS.items():
            proc = subprocess.run([sys.executable, *start, *map(str, argv)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2, (case, name, proc.stderr)
            assert "Traceback" not in proc.stderr, (case, name, proc.stderr)
            assert len(proc.stderr.splitlines()) == 1, (case, name, proc.stderr)
            errors[name] = proc.stderr
        assert len(set(errors.values())) == 1, (case, errors)
        line = errors["speechlab"]
        assert line.startswith(f"speechlab {' '.join(argv[:2 if argv[0] == 'data' else 1])}: error: ")
        assert {"id missing": "u2", "missing file": "nope.tsv",
                "espeak-ng missing": "espeak-ng not found"}[case] in line, line


# ============================================================================ recipes (YAML)

def test_unknown_recipe_key_on_the_command_line_is_named(capsys):
    rc, _, err = run_cli(capsys, "fit", "--config", CTC_RECIPE, "--model.init_args.hiden_size", "3")
    assert rc == 2 and "Traceback" not in err
    assert "Option 'hiden_size' is not accepted" in err and "usage: speechlab" in err


@pytest.mark.parametrize("recipe, option, value, reason", [
    (CTC_RECIPE, "stride", "3", "encoder.stride must be 1, 2, 4 or 8, got 3"),
    (CONFORMER_RECIPE, "num_heads", "5", "encoder.hidden_size 144 (the Conformer's d_model) is "
                                         "not a multiple of encoder.num_heads 5"),
    (CONFORMER_RECIPE, "depthwise_conv_kernel_size", "16", "must be odd, got 16")])
def test_encoder_value_it_cannot_be_built_with_is_one_line(recipe, option, value, reason, capsys):
    rc, _, err = run_cli(capsys, "fit", "--config", recipe, f"--model.init_args.encoder.{option}",
                         value, "--trainer.fast_dev_run", "1")
    assert rc == 2 and reason in one_error_line(err, "fit")


def test_unknown_encoder_kind_is_a_usage_error(capsys):
    rc, _, err = run_cli(capsys, "fit", "--config", CTC_RECIPE, "--model.init_args.encoder.kind",
                         "transformer", "--trainer.fast_dev_run", "1")
    assert rc == 2 and "Traceback" not in err and "usage: speechlab" in err
    assert "'transformer'" in err and "conformer" in err


def test_unknown_key_in_a_recipe_file_is_named(tmp_path, capsys):
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  class_path: speechlab.tasks.ctc.CTCTask\n  init_args:\n"
                      "    encoder:\n      hiden_size: 3\n")
    rc, _, err = run_cli(capsys, "fit", "--config", CTC_RECIPE, "--config", nested)
    assert rc == 2 and "Traceback" not in err
    assert 'Parser key "encoder"' in err and "Option 'hiden_size' is not accepted" in err
    top = tmp_path / "top.yaml"
    top.write_text("trainr:\n  max_steps: 3\n")
    rc, _, err = run_cli(capsys, "fit", "--config", CTC_RECIPE, "--config", top)
    assert rc == 2 and "'trainr.max_steps'" in err


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  init_args:\n    lr: [0.1\n    warmup_steps: 3\n")
    rc, _, err = run_cli(capsys, "fit", "--config", CTC_RECIPE, "--config", bad)
    line = one_error_line(err, "fit")
    assert rc == 2
    assert re.search(rf"{re.escape(str(bad))}: YAML syntax error at line \d+, column \d+: ", line)
    missing = tmp_path / "missing.yaml"
    rc, _, err = run_cli(capsys, "fit", "--config", missing)
    assert rc == 2 and f"File does not exist: '{missing}'" in err


# ============================================================================ checkpoints, GramSets, LMs

@pytest.fixture(scope="module")
def gram_run(tiny_corpus, tmp_path_factory):
    """``speechlab fit`` of the tiny Gram-CTC recipe for 2 steps with a handpicked GramSet file:
    the checkpoint, the GramSet, the test manifest and the folder."""
    tmp = tmp_path_factory.mktemp("gram_run")
    grams = tmp / "grams.json"
    GramSet.from_ngrams(VOCAB, ["th", "he", "in", "e "]).save(grams)
    train = absolute(tiny_corpus["train"], tmp / "train.jsonl")
    test = absolute(tiny_corpus["test"], tmp / "test.jsonl")
    argv = ["fit", "--config", str(GRAM_RECIPE), "--trainer.max_steps", "2",
            "--model.init_args.grams", str(grams), "--model.init_args.output_dir", str(tmp),
            "--data.init_args.train_manifest", str(train), "--data.init_args.dev_manifest",
            str(test), "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar",
            "false", "--trainer.enable_model_summary", "false"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the recipe's relative exp/ folder lands in tmp
        assert main(argv) == 0
    ckpt = tmp / "exp" / "tiny_gram_ctc" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return {"ckpt": ckpt, "grams": grams, "test": test, "train": train, "tmp": tmp}


def test_missing_checkpoint_one_line_naming_it(gram_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nope = tmp_path / "nope.ckpt"
    rc, _, err = run_cli(capsys, "decode", "--checkpoint", nope, "--manifest", gram_run["test"])
    assert rc == 2 and one_error_line(err, "decode").endswith(f"{nope}: no such checkpoint")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    rc, _, err = run_cli(capsys, "decode", "--checkpoint", junk, "--manifest", gram_run["test"])
    assert rc == 2 and f"{junk}: not a checkpoint" in one_error_line(err, "decode")
    rc, _, err = run_cli(capsys, "test", "--config", CTC_RECIPE, "--ckpt_path", nope,
                         "--trainer.logger", "false", "--data.init_args.test_manifest",
                         gram_run["test"], "--data.init_args.num_workers", "0")
    assert rc == 2 and str(nope) in one_error_line(err, "test")


def test_device_that_does_not_exist_one_line(gram_run, tmp_path, capsys, monkeypatch):
    """``decode`` / ``grams refine --device``: a name that is no device, or a CUDA device the
    machine lacks, is one line naming the option's value, before the checkpoint is read."""
    monkeypatch.chdir(tmp_path)
    missing_cuda = f"cuda:{torch.cuda.device_count()}"  # one past the last (cuda:0 on a CPU box)
    for tool in (["decode"], ["grams", "refine", "--keep", "5"]):
        for spec, reason in [("gpu0", "not a device"), (missing_cuda, "no such CUDA device")]:
            rc, _, err = run_cli(capsys, *tool, "--checkpoint", tmp_path / "nope.ckpt",
                                 "--manifest", gram_run["test"], "--device", spec)
            line = one_error_line(err, " ".join(tool[:2]) if tool[0] == "grams" else "decode")
            assert rc == 2 and line.endswith(f"--device {spec}: {reason}" + (
                f" here ({torch.cuda.device_count()} visible)" if "CUDA" in reason else
                " (cpu, cuda, cuda:N or auto)")), line


def test_gramset_file_that_does_not_fit_the_model(gram_run, tmp_path, capsys, monkeypatch):
    """``speechlab fit`` with a GramSet file of other characters, a file that is not a GramSet, or
    none at all: one line naming the file and why."""
    monkeypatch.chdir(tmp_path)
    abc, junk, missing = tmp_path / "abc.json", tmp_path / "junk.json", tmp_path / "missing.json"
    GramSet(CharVocab("abc"), ["a", "b", "c", "ab"]).save(abc)
    junk.write_text("[1, 2")
    for path, reason in [(abc, "the GramSet's characters 'abc' are not the model's vocabulary"),
                         (junk, "malformed GramSet JSON"), (missing, "no such GramSet file")]:
        rc, _, err = run_cli(capsys, "fit", "--config", GRAM_RECIPE, "--model.init_args.grams",
                             path, "--trainer.fast_dev_run", "1")
        assert rc == 2 and f"{path}: {reason}" in one_error_line(err, "fit")
    assert not (tmp_path / "exp").exists()  # nothing started


def test_gramset_file_that_does_not_match_the_checkpoint_head(gram_run, tmp_path):
    """Testing a checkpoint with a GramSet file other than the one it was trained with (the
    Python API: a task built with that file, ``trainer.test(ckpt_path=...)``): an error naming
    the file and both sizes; nothing is written."""
    import pytorch_lightning as pl

    from speechlab.data.speech import SpeechDataModule
    from speechlab.errors import InputError

    other = tmp_path / "other.json"
    GramSet.from_ngrams(VOCAB, ["th", "he"]).save(other)
    hp = torch.load(gram_run["ckpt"], map_location="cpu", weights_only=False)["hyper_parameters"]
    task = GramCTCTask(grams=str(other), encoder=SpeechEncoderConfig(**hp["encoder"]),
                       output_dir=str(tmp_path))
    dm = SpeechDataModule(test_manifest=str(gram_run["test"]), num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(InputError, match=rf"{re.escape(str(other))}: this GramSet \(31 outputs\) "
                       r"does not match the checkpoint's gram head \(33 outputs"):
        trainer.test(task, datamodule=dm, ckpt_path=gram_run["ckpt"])
    assert not (tmp_path / "hyps.jsonl").exists()


def test_speechlab_test_with_a_gramset_file_that_does_not_match(gram_run, tmp_path, capsys,
                                                                 monkeypatch):
    """``speechlab test --ckpt_path C --model.init_args.grams OTHER``: the command line wins over
    the checkpoint's hyper-parameters, so OTHER is used and found not to fit the head."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.json"
    GramSet.from_ngrams(VOCAB, ["th", "he"]).save(other)
    rc, _, err = run_cli(capsys, "test", "--config", GRAM_RECIPE, "--ckpt_path", gram_run["ckpt"],
                         "--model.init_args.grams", other, "--trainer.logger", "false",
                         "--data.init_args.test_manifest", gram_run["test"],
                         "--data.init_args.num_workers", "0", "--model.init_args.output_dir",
                         tmp_path, "--trainer.enable_progress_bar", "false")
    assert rc == 2 and f"{other}: this GramSet (31 outputs) does not match" in \
        one_error_line(err, "test")


@pytest.mark.parametrize("kind", ["text", "binary", "empty", "lexicon"])
def test_kenlm_file_that_is_not_one(gram_run, tmp_path, capsys, kind):
    """``speechlab decode --lm FILE`` where FILE is not a KenLM model: one line naming it, before
    the network runs over the manifest."""
    lm = tmp_path / ("lm.bin" if kind == "binary" else "lm.arpa")
    lm.write_bytes({"text": b"hello world\n", "binary": np.random.default_rng(0).bytes(500),
                    "empty": b"", "lexicon": b"\\data\\\nngram 1=1\n"}[kind])
    extra = ["--lexicon", "lm"] if kind == "lexicon" else []
    rc, out, err = run_cli(capsys, "decode", "--checkpoint", gram_run["ckpt"], "--manifest",
                           gram_run["test"], "--method", "beam", "--lm", lm, *extra)
    line = one_error_line(err, "decode")
    assert rc == 2 and f"{lm}: " in line
    assert ("KenLM could not load it" if kind == "lexicon" else "not a KenLM model") in line
    assert "utterances" not in out  # failed before decoding
    if kind == "lexicon":  # the lexicon reader names a file that is not ARPA too
        from speechlab.decode.prefix_beam import arpa_words

        with pytest.raises(ValueError, match=rf"{re.escape(str(lm))}: not an ARPA model"):
            arpa_words(lm)


# ============================================================================ no overwrite without --force

def writing_tools() -> list[tuple[str, ...]]:
    tools = []
    for name, target in TOOLS.items():
        items = [(name,)] if isinstance(target, tuple) else [(name, t) for t in target]
        tools += items
    return tools


@pytest.mark.parametrize("words", writing_tools(), ids=" ".join)
def test_every_tool_that_writes_files_has_force(words):
    """Audit: a tool with an output option (``--out``, ``--json`` with a path) offers ``--force``."""
    target = TOOLS[words[0]] if len(words) == 1 else TOOLS[words[0]][words[1]]
    parser = argparse.ArgumentParser()
    load_tool(target[0]).add_arguments(parser)
    options = {o: a for a in parser._actions for o in a.option_strings}
    writes = [o for o in ("--out", "--json") if o in options and options[o].nargs != 0]
    if writes:
        assert "--force" in options, f"speechlab {' '.join(words)} writes {writes} without --force"


def test_decode_does_not_overwrite_without_force(gram_run, tmp_path, capsys):
    out, js = tmp_path / "hyps.jsonl", tmp_path / "results.json"
    out.write_text("keep me\n")
    base = ["decode", "--checkpoint", gram_run["ckpt"], "--manifest", gram_run["test"]]
    rc, _, err = run_cli(capsys, *base, "--out", out)
    assert rc == 2 and one_error_line(err, "decode").endswith(
        f"{out}: exists; pass --force to overwrite it")
    assert out.read_text() == "keep me\n"
    rc, _, err = run_cli(capsys, *base, "--out", out, "--json", js, "--force")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(gram_run["test"].read_text().splitlines())
    assert json.loads(js.read_text())["results"][0]["decoding"] == "greedy"
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("argv", [
    ["grams", "select", "--manifest", "{m}", "--out", "{out}"],
    ["lm", "ngram", "--manifest", "{m}", "--out", "{out}"],
    ["tcnlm", "generate", "--checkpoint", "{ckpt}", "--topic", "0", "--out", "{out}"],
    ["tcnlm", "topics", "--checkpoint", "{ckpt}", "--out", "{out}"],
    ["tcnlm", "coherence", "--checkpoint", "{ckpt}", "--out", "{out}"],
], ids=lambda a: " ".join(a[:2]))
def test_tools_refuse_to_overwrite_before_doing_any_work(argv, tmp_path, capsys):
    """The existing output is checked first: the error names it, even though the other inputs
    (a missing checkpoint here) would fail later; the file is left as it was."""
    out = tmp_path / "out.json"
    out.write_text("keep me\n")
    m = manifest(tmp_path, [entry(tmp_path / "a.wav", text="hello world")])
    args = [a.format(m=m, out=out, ckpt=tmp_path / "missing.ckpt") for a in argv]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 2 and one_error_line(err, " ".join(argv[:2])).endswith(
        f"{out}: exists; pass --force to overwrite it")
    assert out.read_text() == "keep me\n"


def test_synth_into_a_folder_of_another_corpus_needs_force(espeak, tmp_path, capsys):
    out = tmp_path / "corpus"
    base = ["data", "synth", "--out", out, "--utterances", "2", "--jobs", "1",
            "--dev-fraction", "0", "--test-fraction", "0"]
    assert run_cli(capsys, *base, "--seed", "0")[0] == 0
    before = (out / "train.jsonl").read_text()
    assert run_cli(capsys, *base, "--seed", "0")[0] == 0  # resuming the same corpus is fine
    rc, _, err = run_cli(capsys, *base, "--seed", "1")
    line = one_error_line(err, "data synth")
    assert rc == 2 and f"{out / 'train.jsonl'}: exists and lists another corpus" in line
    assert "--force" in line and (out / "train.jsonl").read_text() == before
    assert run_cli(capsys, *base, "--seed", "1", "--force")[0] == 0
    assert (out / "train.jsonl").read_text() != before


# ============================================================================ property-based

GOOD_WAV = "good.wav"
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def sometimes(good, *bad):
    """``good`` half of the time, else one of ``bad`` (so that many examples load)."""
    return st.one_of(st.just(good), st.just(good), st.just(good), *bad)


NEMO = st.fixed_dictionaries(
    {"audio_filepath": sometimes(GOOD_WAV, st.sampled_from(["stereo.wav", "junk.wav", "nope.wav",
                                                            "", ".", "8k.wav"]), JSON_VALUES),
     "text": sometimes("hello world", st.text(max_size=20), st.just("ÉCOLE d'été"), JSON_VALUES)},
    optional={"duration": sometimes(1.0, st.floats(0, 2), st.just(-1.0), JSON_VALUES),
              "offset": sometimes(0.0, st.floats(0, 2), JSON_VALUES),
              "id": st.one_of(st.sampled_from(["a", "b"]), JSON_VALUES),
              "speaker": JSON_VALUES, "type": st.sampled_from(["MonoCut", "Cut", "other"]),
              "extra": JSON_VALUES})
#: a valid lhotse cut of good.wav (its source resolves against the manifest's folder)
LHOTSE_CUT = {
    "id": "cut", "start": 0.0, "duration": 1.0, "channel": 0, "type": "MonoCut",
    "supervisions": [{"id": "cut", "recording_id": "rec", "start": 0.0, "duration": 1.0,
                      "channel": 0, "text": "hello world"}],
    "recording": {"id": "rec", "sources": [{"type": "file", "channels": [0], "source": GOOD_WAV}],
                  "sampling_rate": SR, "num_samples": SR, "duration": 1.0, "channel_ids": [0]},
}
LHOTSE = st.tuples(st.sampled_from([None, *LHOTSE_CUT]), JSON_VALUES).map(
    lambda kv: LHOTSE_CUT if kv[0] is None else {**LHOTSE_CUT, kv[0]: kv[1]})
LINES = st.lists(st.one_of(NEMO.map(json.dumps), NEMO.map(lambda e: json.dumps(e, ensure_ascii=False)),
                           NEMO.map(json.dumps), LHOTSE.map(json.dumps), JSON_VALUES.map(json.dumps),
                           st.text(max_size=30)), min_size=1, max_size=5)
ENTRIES = NEMO


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    wav(folder / GOOD_WAV, seconds=1.0)
    wav(folder / "stereo.wav", channels=2)
    wav(folder / "8k.wav", sr=8000)
    (folder / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=LINES)
@example(lines=['{"audio_filepath": "good.wav", "text": "hello world"}',  # U+0085 is no line end
                '{"audio_filepath": "good.wav", "text": "\x85"}'])
def test_fuzz_manifest_reader(fuzz_dir, lines):
    """Any manifest: ``load_cuts`` returns valid cuts with a consistent report, or raises
    ``ManifestError`` naming the manifest (and the line when one is to blame); never another
    exception type. ``read_manifest`` likewise."""
    path = fuzz_dir / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        cuts, report = load_cuts(path, vocab=VOCAB, output_frame_rate=25, num_workers=1)
    except ManifestError as e:
        assert str(e).startswith(f"{path}:") or str(e).startswith(f"{path}: "), str(e)
        for problem in ("malformed", "sample rate"):
            if problem in str(e) and "not UTF-8" not in str(e):
                assert re.match(rf"{re.escape(str(path))}:\d+: ", str(e)), str(e)
    else:
        # JSON lines end at \n, \r\n or \r; not at the other characters str.splitlines()
        # breaks on (U+0085, U+2028, form feed, ...), which JSON strings may hold unescaped
        text = path.read_bytes().decode("utf-8")
        n_lines = len([ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()])
        assert report.total == n_lines and report.kept == len(cuts) >= 1
        assert report.skipped == len(report.issues)
        for issue in report.issues:
            assert issue.line >= 1 and str(issue).startswith(f"{path}:{issue.line}: ")
        for cut in cuts:
            text = cut.supervisions[0].text
            assert text and text == normalize_text(text) and not VOCAB.oov_chars(text)
            assert cut.num_channels == 1 and cut.sampling_rate == SR and cut.duration > 0
    try:
        rows = list(read_manifest(path))
    except ManifestError as e:
        assert str(e).startswith(f"{path}:")
    else:
        assert all(isinstance(r, dict) for _, r in rows)


def levenshtein(a: list[str], b: list[str]) -> int:
    """Edit distance (the oracle): substitutions, deletions and insertions cost 1."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


SENTENCES = st.lists(st.sampled_from(["a", "b", "ab", "ba", "c", "é"]), max_size=6).map(" ".join)
PAIRS = st.lists(st.tuples(SENTENCES, SENTENCES), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(pairs=PAIRS, spaces=st.sampled_from(["", "  ", "\t"]))
def test_fuzz_scorer_against_levenshtein_and_jiwer(pairs, spaces):
    refs = [spaces + r + spaces for r, _ in pairs]  # whitespace is collapsed, never an error
    hyps = [h.replace(" ", " " + spaces) for _, h in pairs]
    for unit in ("word", "char"):
        counts = edit_counts(refs, hyps, unit=unit)
        tok = (lambda s: s.split()) if unit == "word" else (lambda s: list(" ".join(s.split())))
        assert counts.errors == sum(levenshtein(tok(r), tok(h)) for r, h in pairs)
        assert counts.ref_len == sum(len(tok(r)) for r, _ in pairs)
        assert counts.hyp_len == sum(len(tok(h)) for _, h in pairs)
        assert counts.hits + counts.substitutions + counts.deletions == counts.ref_len
        # counts add: per-utterance counts sum to the corpus counts
        assert sum(edit_counts([r], [h], unit=unit) for r, h in zip(refs, hyps, strict=True)) == counts
        assert edit_counts(refs, refs, unit=unit).errors == 0  # identical: no error
        kept = [(r, h) for r, h in pairs if r.strip()]
        if kept:  # jiwer (which refuses empty references) as the second oracle
            fn = jiwer.process_words if unit == "word" else jiwer.process_characters
            j = fn([r for r, _ in kept], [h for _, h in kept])
            ours = edit_counts([r for r, _ in kept], [h for _, h in kept], unit=unit)
            assert (ours.substitutions, ours.deletions, ours.insertions, ours.hits) == (
                j.substitutions, j.deletions, j.insertions, j.hits)
            assert ours.rate == pytest.approx(j.wer if unit == "word" else j.cer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.text(max_size=30), ENTRIES.map(json.dumps),
                                st.builds(lambda i, t: f"{i}\t{t}", st.text(max_size=4),
                                          st.text(max_size=10))), max_size=6))
def test_fuzz_transcript_reader(fuzz_dir, lines):
    """The scorer's reader: any file gives ``{id: text}`` of strings or ``TranscriptError``
    naming the file (and line)."""
    path = fuzz_dir / "hyp.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        got = read_transcripts(path, field=("hyp", "text"))
    except TranscriptError as e:
        assert str(e).startswith(f"{path}:"), str(e)
    else:
        assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in got.items())
