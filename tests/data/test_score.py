"""Tests of speechlab.score: counts against jiwer and hand-computed cases, file reading, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import jiwer
import pytest

import speechlab.cli
from speechlab.data.text import normalize_text
from speechlab.score import (
    ErrorCounts,
    MissingIdsError,
    TranscriptError,
    check_ids,
    edit_counts,
    read_transcripts,
    score,
)

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "house", "red", "big", "small", "quickly", "it's", "don't"]


def _sentence(rng: random.Random, lo: int = 1, hi: int = 9) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _perturb(rng: random.Random, text: str) -> str:
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.1:
            continue  # deletion
        if r < 0.2:
            w = rng.choice(WORDS)  # substitution (sometimes the same word)
        out.append(w)
        if rng.random() < 0.08:
            out.append(rng.choice(WORDS))  # insertion
    return " ".join(out)


@pytest.fixture
def cli():
    """``speechlab.cli.main`` (imports only the module of the command it runs)."""
    return speechlab.cli.main


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    ("ref", "hyp", "unit", "expected"),
    [
        # (S, D, I, H, N)
        ("the cat sat", "the cat sat down", "word", (0, 0, 1, 3, 3)),
        ("the cat sat", "the bat sat", "word", (1, 0, 0, 2, 3)),
        ("the cat sat", "the sat", "word", (0, 1, 0, 2, 3)),
        ("the cat sat on the mat", "a cat sat mat", "word", (1, 2, 0, 3, 6)),
        ("a b c", "x y z", "word", (3, 0, 0, 0, 3)),
        ("a b c", "a b c", "word", (0, 0, 0, 3, 3)),
        ("cat", "cut", "char", (1, 0, 0, 2, 3)),
        ("cat", "cats", "char", (0, 0, 1, 3, 3)),
        ("the cat", "thecat", "char", (0, 1, 0, 6, 7)),  # the space counts
        ("abc", "", "char", (0, 3, 0, 0, 3)),
        ("", "a b c", "word", (0, 0, 3, 0, 0)),
        ("", "a b c", "char", (0, 0, 5, 0, 0)),
        ("a b", "", "word", (0, 2, 0, 0, 2)),
        ("", "", "word", (0, 0, 0, 0, 0)),
        ("  the   cat ", "the cat", "word", (0, 0, 0, 2, 2)),  # whitespace collapsed
    ],
)
def test_hand_computed(ref: str, hyp: str, unit: str, expected: tuple) -> None:
    c = edit_counts([ref], [hyp], unit)  # type: ignore[arg-type]
    assert (c.substitutions, c.deletions, c.insertions, c.hits, c.ref_len) == expected


def test_insertion_rate() -> None:
    assert edit_counts(["the cat sat"], ["the cat sat down"]).rate == pytest.approx(1 / 3)


def test_empty_reference_rates() -> None:
    assert edit_counts([""], [""]).rate == 0.0
    assert math.isinf(edit_counts([""], ["a"]).rate)
    # an empty reference inside a corpus just adds insertions
    c = edit_counts(["a b", ""], ["a b", "x y z"])
    assert (c.insertions, c.ref_len, c.rate) == (3, 2, 1.5)
    assert edit_counts([], []) == ErrorCounts()


def test_matches_jiwer_random_corpus() -> None:
    rng = random.Random(0)
    refs = [_sentence(rng) for _ in range(300)]
    hyps = [_perturb(rng, r) for r in refs]
    nonempty = [k for k, h in enumerate(hyps) if h]  # keep jiwer on its well-defined inputs
    refs = [refs[k] for k in nonempty]
    hyps = [hyps[k] for k in nonempty]
    w = edit_counts(refs, hyps, "word")
    c = edit_counts(refs, hyps, "char")
    assert w.rate == pytest.approx(jiwer.wer(refs, hyps))
    assert c.rate == pytest.approx(jiwer.cer(refs, hyps))
    out = jiwer.process_words(refs, hyps)
    assert (w.substitutions, w.deletions, w.insertions, w.hits) == (
        out.substitutions, out.deletions, out.insertions, out.hits)
    assert w.ref_len == sum(len(r.split()) for r in refs)
    assert c.ref_len == sum(len(r) for r in refs)
    assert 0 < w.errors < w.ref_len  # the perturbation did something


def test_counts_sum_like_concatenated_corpus() -> None:
    rng = random.Random(1)
    refs = [_sentence(rng, 0) for _ in range(64)]
    hyps = [_perturb(rng, r) for r in refs]
    for unit in ("word", "char"):
        whole = edit_counts(refs, hyps, unit)
        batches = [edit_counts(refs[i : i + 8], hyps[i : i + 8], unit) for i in range(0, 64, 8)]
        assert sum(batches) == whole
        assert sum(batches[1:], batches[0]) == whole
        assert ErrorCounts(*whole.as_tuple()) == whole
    # rates of sums, not means of rates
    a = edit_counts(["a"], ["b"])
    b = edit_counts(["a b c d"], ["a b c d"])
    assert (a + b).rate == pytest.approx(1 / 5)


def test_error_counts_validation() -> None:
    c = ErrorCounts(substitutions=1, deletions=2, insertions=3, hits=4, ref_len=7)
    assert (c.errors, c.hyp_len, c.rate) == (6, 8, 6 / 7)
    with pytest.raises(ValueError, match="ref_len"):
        ErrorCounts(1, 0, 0, 0, 5)
    with pytest.raises(ValueError, match="negative"):
        ErrorCounts(-1, 0, 0, 0, -1)
    with pytest.raises(ValueError, match="unit"):
        edit_counts(["a"], ["a"], "phone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        edit_counts(["a", "b"], ["a"])


# ---------------------------------------------------------------------------- score()


def test_score_report() -> None:
    refs = {"u1": "The cat sat.", "u2": "hello world", "u3": "", "u4": "a b c d", "u5": "ok"}
    hyps = {"u1": "the cat sat down", "u2": "", "u3": "oops", "u4": "a x c", "u5": "OK!"}
    r = score(refs, hyps)
    assert r.normalization == "speechlab"
    assert r.num_utterances == 5
    assert r.words == ErrorCounts(substitutions=1, deletions=3, insertions=2, hits=6, ref_len=10)
    assert r.wer == pytest.approx(6 / 10)
    norm_refs = [normalize_text(refs[k]) for k in refs]
    norm_hyps = [normalize_text(hyps[k]) for k in refs]
    assert r.chars == edit_counts(norm_refs, norm_hyps, "char")
    assert [u.id for u in r.utterances] == list(refs)
    u1 = r.utterances[0]
    assert (u1.ref, u1.hyp, u1.word_errors, u1.ref_words) == ("the cat sat", "the cat sat down", 1, 3)
    # most errors first; ties by rate (u3: insertion into an empty ref = inf)
    assert [u.id for u in r.worst()] == ["u2", "u4", "u3", "u1"]
    assert [u.id for u in r.worst(2)] == ["u2", "u4"]
    al = r.utterances[3].alignment().splitlines()
    assert al == ["REF: a b c d", "HYP: a x c *", "       S   D"]
    d = r.to_dict(worst=3, alignments=1)
    json.dumps(d, allow_nan=False)  # strict JSON: inf rates become null
    assert "alignment" in d["worst"][0] and "alignment" not in d["worst"][1]
    assert d["worst"][2]["wer"] is None


def test_score_normalization_off() -> None:
    r = score({"a": "The Cat"}, {"a": "the  cat"}, normalize=False)
    assert r.normalization == "none"
    assert r.words.substitutions == 2
    assert score({"a": "The Cat"}, {"a": "the  cat"}).words.errors == 0


def test_missing_ids_are_listed() -> None:
    refs = {f"r{k}": "a" for k in range(30)} | {"shared": "x"}
    hyps = {"shared": "x", "extra": "y"}
    with pytest.raises(MissingIdsError) as e:
        score(refs, hyps)
    msg = str(e.value)
    assert "30 id(s) of REF missing from HYP: r0, r1," in msg
    assert "r19, ... (10 more)" in msg and "r20" not in msg
    assert "1 id(s) of HYP not in REF: extra" in msg
    check_ids({"a": ""}, {"a": "b"})  # no error


# ---------------------------------------------------------------------------- reading


def test_read_tsv_and_kaldi(tmp_path: Path) -> None:
    p = _write(tmp_path / "h.txt", "u1\tthe cat\nu2 kaldi style text\n\nu3\t\nu4\n u5\tx\r\n")
    assert read_transcripts(p) == {
        "u1": "the cat", "u2": "kaldi style text", "u3": "", "u4": "", "u5": "x"}


def test_read_jsonl_manifest_and_test_output(tmp_path: Path) -> None:
    man = _jsonl(tmp_path / "m.jsonl", [
        {"audio_filepath": "wav/a1.wav", "duration": 1.0, "text": "Hello"},
        {"id": "b2", "audio_filepath": "wav/x.wav", "duration": 1.0, "text": ""},
    ])
    assert read_transcripts(man) == {"a1": "Hello", "b2": ""}
    out = _jsonl(tmp_path / "o.jsonl", [{"id": "a1", "ref": "hello", "hyp": "hallo"}])
    assert read_transcripts(out, ("ref", "text")) == {"a1": "hello"}
    assert read_transcripts(out, ("hyp", "text")) == {"a1": "hallo"}
    assert read_transcripts(out, "hyp") == {"a1": "hallo"}


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        ('{"id": "a", "text": "x"}\n{"id": "b", "text": \n', None, r"m:2: malformed JSON"),
        ('{"id": "a", "text": "x"}\n{"text": "y"}\n', None, r"m:2: no 'id' \(or 'audio_filepath'\)"),
        ('{"id": "a", "ref": "x"}\n', None, r"m:1: no 'text' field \(keys: id, ref\)"),
        ('{"id": "a", "ref": "x"}\n', ("hyp", "text"), r"m:1: no 'hyp' or 'text' field"),
        ('{"id": "a", "text": null}\n', None, r"m:1: text of 'a' is NoneType"),
        ('{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n', None,
         r"m:3: duplicate id 'a' \(first on line 1\)"),
        ("a\tx\nb\ty\na\tz\n", None, r"m:3: duplicate id 'a'"),
        ("a\tx\n\tno id\n", None, r"m:2: empty utterance id"),
        ('{"id": "a", "text": "x"}\n[1, 2]\n', None, r"m:2: malformed entry \(expected a JSON object, got list\)"),
    ],
)
def test_read_errors_name_file_and_line(
    tmp_path: Path, content: str, field: object, reason: str
) -> None:
    p = _write(tmp_path / "m", content)
    with pytest.raises(TranscriptError, match=reason):
        read_transcripts(p, field)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- CLI


def test_cli_text_report(cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref = _write(tmp_path / "ref.tsv", "u1\tThe cat sat.\nu2\thello world\n")
    hyp = _jsonl(tmp_path / "hyp.jsonl", [
        {"id": "u2", "ref": "hello world", "hyp": "hello word"},
        {"id": "u1", "ref": "the cat sat", "hyp": "the cat sat down"},
    ])
    assert cli(["score", "--ref", str(ref), "--hyp", str(hyp), "--show-alignments", "1"]) == 0
    out = capsys.readouterr().out
    assert "normalization: speechlab.data.text.normalize_text" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln[:3] in ("WER", "CER")}
    assert lines["WER"][:7] == ["WER", "40.00%", "1", "0", "1", "2", "5"]
    assert lines["CER"][-1] == "chars"
    assert "utterances:    2" in out
    # both have one error; u2 ranks first by its higher rate (1/2 > 1/3)
    assert "u2  (word errors 1, ref words 2)" in out and "HYP: hello word" in out
    assert "REF: the cat sat ****" not in out  # only one alignment asked for


def test_cli_json(cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref = _jsonl(tmp_path / "ref.jsonl", [
        {"audio_filepath": "a/u1.wav", "duration": 1, "text": "Don't stop"},
        {"audio_filepath": "a/u2.wav", "duration": 1, "text": "go"},
    ])
    hyp = _write(tmp_path / "hyp.tsv", "u1\tdon't stop\nu2\n")
    assert cli(["score", "--ref", str(ref), "--hyp", str(hyp), "--json",
                "--normalize", "none", "--show-alignments", "5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["normalization"] == "none"
    assert d["utterances"] == 2
    assert d["words"] == {"substitutions": 1, "deletions": 1, "insertions": 0, "hits": 1,
                          "ref_len": 3, "errors": 2, "rate": pytest.approx(2 / 3)}
    assert d["wer"] == pytest.approx(2 / 3)
    assert d["chars"]["ref_len"] == len("Don't stop") + len("go")
    assert [w["id"] for w in d["worst"]] == ["u2", "u1"]
    assert d["worst"][0]["alignment"].startswith("REF: go")
    assert (d["ref"], d["hyp"]) == (str(ref), str(hyp))


def test_cli_errors_exit_2(cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref = _write(tmp_path / "ref.tsv", "u1\ta\nu2\tb\nu3\tc\n")
    hyp = _write(tmp_path / "hyp.tsv", "u1\ta\nu9\tb\n")
    assert cli(["score", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, no traceback
    assert "2 id(s) of REF" in err and "u2, u3" in err and "not in REF" in err and "u9" in err

    bad = _write(tmp_path / "bad.jsonl", '{"id": "u1", "text": "a"}\n{oops\n')
    assert cli(["score", "--ref", str(ref), "--hyp", str(bad)]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err

    assert cli(["score", "--ref", str(tmp_path / "nope.tsv"), "--hyp", str(hyp)]) == 2
    assert "nope.tsv" in capsys.readouterr().err

    empty = _write(tmp_path / "empty.tsv", "")
    assert cli(["score", "--ref", str(empty), "--hyp", str(empty)]) == 2
    assert "no utterances" in capsys.readouterr().err


def test_training_metric_counts_equal_the_scorer() -> None:
    """The tasks' ErrorRate and `speechlab score` (both normalized) count the same errors, also
    for raw model output that normalization changes (a stray apostrophe, doubled spaces); found
    when a demo's test WER was one word off the scorer's."""
    from speechlab.metrics import ErrorRate

    refs = ["what is the temperature in the study", "turn on the lights", "don't stop"]
    hyps = ["what' is the temperatur in the stardy", "turn  on the 'lights", "dont stop"]
    report = score(dict(enumerate(refs)), dict(enumerate(hyps)))
    for unit, expected in (("word", report.words), ("char", report.chars)):
        metric = ErrorRate(unit)
        metric.update(hyps, refs)
        assert (int(metric.errors), int(metric.ref_len)) == (expected.errors, expected.ref_len)
    # without normalization the stray apostrophes are errors: the test can tell the difference
    assert edit_counts(refs, hyps).errors > report.words.errors
