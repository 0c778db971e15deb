"""``speechlab test`` on several test sets in one run (issue 15.4): ``data.test_manifest`` a list
(or a dict name -> manifest) gives one test dataloader per set; the task writes
``hyps.<name>.jsonl`` per set and one ``wer.json`` with every set's counts, logs and prints one
line per set, and refuses to start when any file it would write exists. Oracles: the scorer
(:mod:`speechlab.score`) on each set's files, the manifests' own ids, and a separate
single-manifest ``speechlab test`` of each set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from speechlab.data.speech import SpeechDataModule, eval_set_names, named_test_sets
from speechlab.errors import InputError
from tests.cli.test_bad_input import absolute, one_error_line, run_cli
from tests.cli.test_checkpoint_cli import _fit
from tests.cli.test_eval_coverage import manifest_ids, speechlab_score, speechlab_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = ("--trainer.logger=false", "--trainer.enable_progress_bar=false")


@pytest.fixture(scope="module")
def two_sets(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """Two manifests with the same stem in two folders (``clean/set.jsonl``: the dev
    utterances; ``noisy/set.jsonl``: the test utterances plus one with unreadable audio)."""
    tmp = tmp_path_factory.mktemp("two_sets")
    (tmp / "clean").mkdir()
    (tmp / "noisy").mkdir()
    (tmp / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    bad = {"audio_filepath": str(tmp / "corrupt.wav"), "text": "one", "id": "corrupt"}
    a = absolute(tiny_corpus["dev"], tmp / "clean" / "set.jsonl")
    b = absolute(tiny_corpus["test"], tmp / "noisy" / "set.jsonl", extra=[bad])
    for path in (a, b):  # explicit ids (the hypotheses files are keyed by them)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        for r in rows:
            r.setdefault("id", Path(r["audio_filepath"]).stem)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"clean-set": a, "noisy-set": b}


@pytest.fixture(scope="module")
def ctc_checkpoint(tiny_corpus, tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("many_sets_ckpt") / "ctc", tiny_corpus, "ctc")


def test_set_names_are_stems_made_unique_by_folders(tmp_path):
    """Stems when they differ (``.jsonl.gz`` and ``.json`` endings dropped); the fewest
    trailing folders that make them unique when they collide; the same manifest twice, an
    empty list and a bad dict name are one-line errors."""
    assert eval_set_names(["x/dev.jsonl", "x/test.jsonl.gz", "y/other.json"]) == \
        ["dev", "test", "other"]
    assert eval_set_names(["a/sim/test.jsonl", "a/real/test.jsonl", "a/clean.jsonl"]) == \
        ["sim-test", "real-test", "a-clean"]
    assert eval_set_names(["p/a/s.jsonl", "q/a/s.jsonl"]) == ["p-a-s", "q-a-s"]
    with pytest.raises(InputError, match=r"x/dev.jsonl is given twice \(entries 1 and 2\)"):
        eval_set_names(["x/dev.jsonl", str(Path("x/dev.jsonl").resolve())])
    with pytest.raises(InputError, match="an empty list"):
        named_test_sets([])
    with pytest.raises(InputError, match="set name 'a/b'"):
        named_test_sets({"a/b": "x.jsonl"})
    assert named_test_sets("x.jsonl") is None and named_test_sets(None) is None
    assert named_test_sets({"clean": "c.jsonl", "far": "f.jsonl"}) == \
        {"clean": "c.jsonl", "far": "f.jsonl"}


def test_data_module_gives_one_loader_per_set(two_sets):
    """A list of manifests: one test loader per set, in order, each with exactly its
    manifest's readable utterances, and a report per set (the unreadable entry counted in the
    noisy set's only); a single string keeps one loader and the ``test`` report."""
    a, b = two_sets["clean-set"], two_sets["noisy-set"]
    dm = SpeechDataModule(test_manifest=[str(a), str(b)], max_duration=30.0, num_workers=0)
    assert dm.test_sets == {"clean-set": str(a), "noisy-set": str(b)}
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    got = [sorted(i for batch in dl for i in batch["ids"]) for dl in loaders]
    assert got == [manifest_ids(a), [i for i in manifest_ids(b) if i != "corrupt"]]
    assert dm.report("test:clean-set").skipped == 0
    assert dm.report("test:noisy-set").counts_by_reason() == {"unreadable audio": 1}
    single = SpeechDataModule(test_manifest=str(a), max_duration=30.0, num_workers=0)
    single.setup("test")
    assert single.test_sets is None and not isinstance(single.test_dataloader(), list)
    assert single.report("test").manifest == str(a)


def test_speechlab_test_scores_every_set_like_separate_runs(ctc_checkpoint, two_sets, tmp_path,
                                                            capsys, caplog, monkeypatch):
    """One ``speechlab test`` with ``--data.init_args.test_manifest '[A, B]'``: per set, its
    hypotheses file holds every readable id of its manifest, its counts in wer.json and on its
    printed line equal the scorer's on that file and a separate single-manifest run's (same
    hypotheses too), its coverage line names its manifest and its skips."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="speechlab.tasks")
    out = tmp_path / "many"
    a, b = two_sets["clean-set"], two_sets["noisy-set"]
    rc, stdout, err = run_cli(capsys, "test", "--ckpt_path", ctc_checkpoint,
                              "--data.init_args.test_manifest", f"[{a}, {b}]",
                              "--model.init_args.output_dir", out, *QUIET)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == \
        ["config.test.yaml", "hyps.clean-set.jsonl", "hyps.noisy-set.jsonl", "wer.json"]
    summary = json.loads((out / "wer.json").read_text())["sets"]
    assert list(summary) == ["clean-set", "noisy-set"]
    coverage = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test: scored")]
    assert len(coverage) == 2, coverage
    for name, manifest in two_sets.items():
        hyps = out / f"hyps.{name}.jsonl"
        rows = [json.loads(line) for line in hyps.read_text().splitlines() if line]
        readable = [i for i in manifest_ids(manifest) if i != "corrupt"]
        assert sorted(r["id"] for r in rows) == readable
        scored = speechlab_score(capsys, hyps, hyps)
        s = summary[name]
        assert s["hyps"] == hyps.name and s["manifest"] == str(manifest)
        assert s["utterances"] == scored["utterances"] == len(readable)
        assert (s["test_word"]["errors"], s["test_word"]["ref_len"]) == \
            (scored["words"]["errors"], scored["words"]["ref_len"])
        assert (s["test_char"]["errors"], s["test_char"]["ref_len"]) == \
            (scored["chars"]["errors"], scored["chars"]["ref_len"])
        assert (f"test {name}: {len(readable)} utterances  WER {100 * scored['wer']:.2f}% "
                f"({scored['words']['errors']}/{scored['words']['ref_len']} words)  "
                f"CER {100 * scored['cer']:.2f}%") in stdout
        skipped = len(manifest_ids(manifest)) - len(readable)
        assert s["skipped"] == ({"unreadable audio": 1} if skipped else {})
        assert any(line.startswith(f"test: scored {len(readable)} of {len(readable) + skipped} "
                                   f"utterances of {manifest}") for line in coverage), coverage
        # the oracle: the same checkpoint tested on this set alone
        _, alone, alone_rows = speechlab_test(capsys, ctc_checkpoint, manifest,
                                              tmp_path / f"alone_{name}")
        assert alone_rows == rows
        for key in ("test_word", "test_char", "utterances", "skipped", "left_out_of_loss",
                    "manifest"):
            assert s[key] == alone[key], key


@pytest.mark.parametrize("existing", ["hyps.clean-set.jsonl", "hyps.noisy-set.jsonl", "wer.json"])
def test_overwrite_guard_covers_every_set_file(existing, ctc_checkpoint, two_sets, tmp_path,
                                               capsys):
    """Any one file of a many-set run already in the output folder: one line naming it, exit
    2, nothing written; the dict form names the sets itself."""
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text("earlier\n")
    a, b = two_sets["clean-set"], two_sets["noisy-set"]
    rc, _, err = run_cli(capsys, "test", "--ckpt_path", ctc_checkpoint,
                         "--data.init_args.test_manifest", f"[{a}, {b}]",
                         "--model.init_args.output_dir", out, *QUIET)
    assert rc == 2
    assert one_error_line(err, "test").startswith(f"speechlab test: error: {out / existing}: exists")
    assert [p.name for p in out.iterdir()] == [existing]
    named = existing.replace("clean-set", "clean").replace("noisy-set", "far")
    (out / existing).rename(out / named)
    rc, _, err = run_cli(capsys, "test", "--ckpt_path", ctc_checkpoint,
                         "--data.init_args.test_manifest", f"{{clean: {a}, far: {b}}}",
                         "--model.init_args.output_dir", out, *QUIET)
    assert rc == 2
    assert one_error_line(err, "test").startswith(f"speechlab test: error: {out / named}: exists")
