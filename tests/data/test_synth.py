"""espeak-ng corpus synthesis: manifests, determinism, resume, --text files, missing espeak."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import soundfile as sf

from speechlab import cli
from speechlab.data.sentences import Sentence, generate_sentences
from speechlab.data.synth import (
    ESPEAK_MISSING,
    SPLITS,
    read_sentences,
    split_corpus,
    synthesize_corpus,
    utterance_spec,
)
from speechlab.data.text import normalize_text
from speechlab.errors import CLIError

N = 10


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, espeak: str) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    synthesize_corpus(out, generate_sentences(N, seed=0), seed=0, jobs=1, progress=False)
    return out


def test_manifests_and_audio(corpus: Path) -> None:
    all_rows = [r for s in SPLITS for r in rows(corpus / f"{s}.jsonl")]
    assert sorted(r["id"] for r in all_rows) == [f"tts{i:06d}" for i in range(N)]
    assert len(rows(corpus / "test.jsonl")) == 1 and len(rows(corpus / "dev.jsonl")) == 1
    for r in all_rows:
        assert {"id", "audio_filepath", "duration", "text", "speaker", "domain"} <= r.keys()
        assert not Path(r["audio_filepath"]).is_absolute()
        info = sf.info(str(corpus / r["audio_filepath"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert r["duration"] == round(info.frames / 16000, 4) and 0.3 < r["duration"] < 10
        assert normalize_text(r["text"]) == r["text"]
        assert r["speaker"] == f"{r['voice']}+{r['variant']}"
        assert 130 <= r["speed"] <= 190 and 30 <= r["pitch"] <= 70
    assert len({r["speaker"] for r in all_rows}) > 3
    assert {r["domain"] for r in all_rows} == {"home", "numbers"}


def test_deterministic_and_independent_of_jobs(corpus: Path, tmp_path: Path) -> None:
    # the same seed with 2 processes gives the same bytes as the module run with 1
    synthesize_corpus(tmp_path / "b", generate_sentences(N, seed=0), seed=0, jobs=2,
                      progress=False)
    assert tree(tmp_path / "b") == tree(corpus)
    synthesize_corpus(tmp_path / "c", generate_sentences(N, seed=1), seed=1, jobs=1,
                      progress=False)
    other = tree(tmp_path / "c")
    assert other.keys() != tree(corpus).keys()
    assert other["train.jsonl"] != tree(corpus)["train.jsonl"]


def test_resume_remakes_only_missing_files(corpus: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "r"
    shutil.copytree(corpus, out)
    before = tree(out)
    wavs = sorted((out / "wavs").glob("*.wav"))
    victim = wavs[3]
    victim.unlink()
    (out / "train.jsonl").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in wavs if p != victim}
    synthesize_corpus(out, generate_sentences(N, seed=0), seed=0, jobs=1, progress=False)
    assert tree(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert victim.is_file()


def test_splits_renders_only_those_splits_with_the_full_runs_files(corpus: Path,
                                                                   tmp_path: Path) -> None:
    # --splits dev test: the full run's dev/test manifests and WAVs byte for byte, nothing else
    out = tmp_path / "s"
    assert cli.main(["data", "synth", "--out", str(out), "--utterances", str(N), "--seed", "0",
                     "--jobs", "1", "--splits", "dev", "test"]) == 0
    full = tree(corpus)
    wanted = {r["audio_filepath"] for s in ("dev", "test") for r in rows(corpus / f"{s}.jsonl")}
    expected = {k: v for k, v in full.items() if k in wanted or k in ("dev.jsonl", "test.jsonl")}
    assert tree(out) == expected and len(wanted) == 2
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['eval'\]"):
        synthesize_corpus(tmp_path / "x", generate_sentences(N, seed=0), seed=0, jobs=1,
                          progress=False, splits_wanted=["eval"])


def test_utterance_is_reproducible_on_its_own() -> None:
    sentences = generate_sentences(50, seed=0)
    assert utterance_spec(37, sentences[37], seed=0) == utterance_spec(37, sentences[37], seed=0)
    specs = [utterance_spec(i, s, seed=0) for i, s in enumerate(sentences)]
    assert len({(s.voice, s.variant, s.speed, s.pitch) for s in specs}) > 40


def test_split_keeps_each_text_in_one_split() -> None:
    texts = [f"sentence {i % 13}" for i in range(100)]  # repeated texts
    specs = [utterance_spec(i, Sentence(t, "text"), seed=0) for i, t in enumerate(texts)]
    splits = split_corpus(specs, seed=0, dev_fraction=0.1, test_fraction=0.1)
    assert sum(len(v) for v in splits.values()) == 100
    by_split = {s: {u.text for u in v} for s, v in splits.items()}
    assert not by_split["train"] & by_split["test"]
    assert not by_split["train"] & by_split["dev"]
    assert not by_split["dev"] & by_split["test"]
    assert 0 < len(splits["test"]) <= 10 and 0 < len(splits["dev"]) <= 10
    assert split_corpus(specs, seed=0) == splits


def test_text_file_skips_empty_lines(tmp_path: Path, espeak: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    text = tmp_path / "s.txt"
    text.write_text("Turn ON the lights!\n\n  ...  \nIt's 5 o'clock\n--\nGood night.\n")
    sentences, skipped = read_sentences(text)
    assert [s.text for s in sentences] == ["turn on the lights", "it's o'clock", "good night"]
    assert skipped == [2, 3, 5]
    out = tmp_path / "corpus"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["data", "synth", "--out", str(out), "--text", str(text),
                         "--utterances", "4", "--jobs", "1"]) == 0
    assert "skipped 3 line(s)" in caplog.text and "line 2, 3, 5" in caplog.text
    got = [r for s in SPLITS for r in rows(out / f"{s}.jsonl")]
    assert len(got) == 4 and {r["domain"] for r in got} == {"text"}
    # four utterances cycle through the three sentences; one text never spans two splits
    assert sorted(r["text"] for r in got).count("turn on the lights") == 2


def test_unreadable_text_file(tmp_path: Path, capsys: pytest.CaptureFixture, espeak: str) -> None:
    assert cli.main(["data", "synth", "--out", str(tmp_path / "o"),
                     "--text", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: text file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(CLIError, match="not UTF-8"):
        read_sentences(bad)


def test_espeak_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CLIError) as e:
        synthesize_corpus(tmp_path / "o", generate_sentences(2), jobs=1, progress=False)
    assert str(e.value) == ESPEAK_MISSING
    assert cli.main(["data", "synth", "--out", str(tmp_path / "o"), "--utterances", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ESPEAK_MISSING in err[0]
