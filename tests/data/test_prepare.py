"""``speechlab data prepare``: lhotse's recipe preparers -> speechlab manifests (issue 19.1).

Each corpus gets a small tree in its real layout, built here (``tmp_path``) from the real clips
of ``shared/data/speech_samples`` (LibriSpeech, LJ Speech and CMU ARCTIC clips with their
transcripts; Common Voice's TSV layout with clips of all three, encoded as MP3 like the real
corpus). The oracle for the texts is the source manifest's ``text_normalized`` (re-normalized by
speechlab's normalizer), for the durations soundfile's header of the file the row names.
Planted bad transcripts (digits, punctuation only) and missing audio are skipped and counted.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechlab.data.prepare import (
    SplitReport,
    manifest_rows,
    normalize_transcript,
    split_rows,
    unspellable_chars,
)
from speechlab.data.text import CharVocab, normalize_text
from tests.helpers import LIBRI_BAD, LIBRI_PARTS, build_librispeech, run_cli

# ---------------------------------------------------------------------------- helpers



def one_error_line(err: str) -> str:
    """Exactly one line ``speechlab data prepare: error: ...`` and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("speechlab ")]
    assert len(lines) == 1 and lines[0].startswith("speechlab data prepare: error: "), err
    return lines[0]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def samples(speech_samples) -> dict[str, dict]:
    """The transcribed clips of ``speech_samples/manifest.jsonl`` by corpus id
    (``251-137823-0002``, ``LJ002-0020``, ``aew-arctic_a0001``), with absolute paths."""
    return speech_samples


def oracle(sample: dict) -> str:
    """The expected text: the source's ``text_normalized``, re-normalized by speechlab (the
    source keeps digits, speechlab's vocabulary has none; for these clips they agree)."""
    return normalize_text(sample["text_normalized"])


def check_rows(manifest: Path, samples: dict[str, dict]) -> list[dict]:
    """Every row of ``manifest``: the audio exists, the duration is soundfile's, the text is the
    oracle's (for the rows that come from a source clip)."""
    got = rows(manifest)
    for r in got:
        assert {"id", "audio_filepath", "duration", "text"} <= set(r) <= {
            "id", "audio_filepath", "duration", "text", "speaker"}, r
        path = Path(r["audio_filepath"])
        assert path.is_absolute() and path.is_file(), r
        info = sf.info(str(path))
        assert abs(r["duration"] - info.frames / info.samplerate) < 1e-5, (r, info.frames)
        assert normalize_text(r["text"]) == r["text"] and r["text"]
        if r["id"] in samples:
            assert r["text"] == oracle(samples[r["id"]]), r
    return got


def validate_ok(capsys, manifest: Path, *extra: str) -> str:
    """``speechlab data validate`` accepts the manifest: exit 0, nothing skipped."""
    rc, out, err = run_cli(capsys, "data", "validate", "--manifest", manifest, "--vocab",
                           "default", *extra)
    n = len(rows(manifest))
    assert rc == 0 and f"kept {n}/{n}, skipped 0" in out, out + err
    return out


def summary_line(caplog, corpus: str, split: str) -> str:
    lines = [r.getMessage() for r in caplog.records
             if r.name == "speechlab.data.prepare" and r.getMessage().startswith(f"{corpus} {split}: ")
             and " utterances, " in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    return lines[0]


def skip_lines(caplog) -> list[str]:
    """The per-utterance skip lines: ``CORPUS SPLIT: skipped ID (AUDIO): REASON``."""
    return [r.getMessage() for r in caplog.records if r.name == "speechlab.data.prepare"
            and re.match(r"\S+ \S+: skipped \S+ \(", r.getMessage())]


@pytest.fixture(scope="module")
def libri(tmp_path_factory, samples) -> Path:
    return build_librispeech(tmp_path_factory.mktemp("libri"), samples)


def test_librispeech(libri: Path, samples, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "data" / "librispeech"
    rc, _, err = run_cli(capsys, "data", "prepare", "librispeech", "--corpus-dir", libri,
                         "--out", out, "--num-jobs", "2")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["dev-clean.jsonl", "test-clean.jsonl"]
    for part, ids in LIBRI_PARTS.items():
        got = check_rows(out / f"{part}.jsonl", samples)
        assert [r["id"] for r in got] == sorted(ids)
        assert [r["speaker"] for r in got] == [i.split("-")[0] for i in sorted(ids)]
        assert {Path(r["audio_filepath"]).parent.parent.parent.name for r in got} == {part}
    # the planted transcripts: each skipped with a line naming the file and the reason
    lines = skip_lines(caplog)
    assert len(lines) == len(LIBRI_BAD), lines
    for utt, _, has_audio, category in LIBRI_BAD:
        line = next(ln for ln in lines if f" {utt} " in ln)
        assert line.startswith("librispeech test-clean: skipped ") and f": {category}: " in line
        flac = libri / "test-clean" / "251" / "137823" / f"{utt}.flac"
        assert f"skipped {utt} ({flac}): " in line, line
        assert line.endswith("(dropped by lhotse)") != has_audio, line
    dev = summary_line(caplog, "librispeech", "dev-clean")
    assert re.fullmatch(r"librispeech dev-clean: 2 utterances, 0\.00 h, skipped 0 -> .*dev-clean"
                        r"\.jsonl", dev), dev
    test = summary_line(caplog, "librispeech", "test-clean")
    assert test.startswith("librispeech test-clean: 3 utterances, 0.00 h, skipped 3 (")
    assert all(f"{c}: 1" in test for *_, c in LIBRI_BAD), test
    for part in LIBRI_PARTS:
        validate_ok(capsys, out / f"{part}.jsonl")

    # --parts picks parts; an existing manifest is kept without --force, replaced with it
    before = (out / "dev-clean.jsonl").read_bytes()
    rc, _, err = run_cli(capsys, "data", "prepare", "librispeech", "--corpus-dir", libri,
                         "--out", out, "--parts", "dev-clean")
    assert rc == 2 and "dev-clean.jsonl: exists; pass --force to overwrite it" in one_error_line(err)
    assert (out / "dev-clean.jsonl").read_bytes() == before
    rc, _, err = run_cli(capsys, "data", "prepare", "librispeech", "--corpus-dir", libri,
                         "--out", tmp_path / "dev_only", "--parts", "dev-clean")
    assert rc == 0 and [p.name for p in (tmp_path / "dev_only").iterdir()] == ["dev-clean.jsonl"]
    assert (tmp_path / "dev_only" / "dev-clean.jsonl").read_bytes() == before


def test_librispeech_bad_input(libri: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cases = [
        (["--corpus-dir", tmp_path / "missing"], "missing: librispeech corpus folder not found"),
        (["--corpus-dir", libri.parent], "no LibriSpeech part folder"),
        (["--corpus-dir", libri, "--parts", "train-clean-101"],
         "unknown LibriSpeech part(s) train-clean-101"),
        (["--corpus-dir", libri, "--parts", "dev-other"], "dev-other: part folder not found"),
    ]
    for args, message in cases:
        rc, _, err = run_cli(capsys, "data", "prepare", "librispeech", *args, "--out", out)
        assert rc == 2 and message in one_error_line(err), (args, err)
    assert "did you mean" in one_error_line(
        run_cli(capsys, "data", "prepare", "librispeech", "--corpus-dir", libri.parent,
                "--out", out)[2])
    # an unreadable audio file: lhotse cannot read its header; one line that names it
    broken = tmp_path / "broken"
    shutil.copytree(libri, broken)
    flac = broken / "dev-clean" / "3536" / "23268" / "3536-23268-0010.flac"
    flac.write_bytes(np.random.default_rng(0).bytes(3000))
    rc, _, err = run_cli(capsys, "data", "prepare", "librispeech", "--corpus-dir", broken,
                         "--out", out, "--parts", "dev-clean")
    line = one_error_line(err)
    assert rc == 2 and "prepare_librispeech failed" in line and str(flac) in line, line
    assert not out.exists()
    rc, _, err = run_cli(capsys, "data", "prepare", "timit", "--corpus-dir", libri, "--out", out)
    assert rc == 2 and "unknown corpus 'timit' (known: librispeech, ljspeech, commonvoice, " \
        "cmu_arctic)" in one_error_line(err)
    rc, _, err = run_cli(capsys, "data", "prepare", "librispeech", "--corpus-dir", libri,
                         "--out", out, "--dev-fraction", "0.1")
    assert rc == 2 and "only for ljspeech and cmu_arctic" in one_error_line(err)


# ---------------------------------------------------------------------------- LJ Speech

LJ_IDS = ["LJ002-0020", "LJ002-0035", "LJ050-0131"]
#: the raw column differs from the normalized one, as in the real corpus ("In 1813"): the
#: manifest's text comes from the normalized column
LJ_RAW = {"LJ002-0020": "In 1813"}


def build_ljspeech(root: Path, samples: dict[str, dict], extra: str = "") -> Path:
    """``root/LJSpeech-1.1/{metadata.csv, wavs/ID.wav}`` (ID|text|normalized text)."""
    corpus = root / "LJSpeech-1.1"
    (corpus / "wavs").mkdir(parents=True)
    lines = []
    for utt in LJ_IDS:
        shutil.copyfile(samples[utt]["path"], corpus / "wavs" / f"{utt}.wav")
        text = samples[utt]["text"]
        lines.append(f"{utt}|{LJ_RAW.get(utt, text)}|{text}")
    # planted: digits in the normalized column too
    shutil.copyfile(samples["LJ002-0035"]["path"], corpus / "wavs" / "LJ999-0001.wav")
    lines.append("LJ999-0001|Room 101.|Room 101.")
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return corpus


def test_ljspeech_split_skip_force(samples, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    corpus = build_ljspeech(tmp_path, samples)
    out = tmp_path / "data" / "ljspeech"
    args = ["data", "prepare", "ljspeech", "--corpus-dir", corpus, "--out", out,
            "--dev-fraction", "0.34", "--test-fraction", "0.34"]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    got = {s: check_rows(out / f"{s}.jsonl", samples) for s in ("train", "dev", "test")}
    assert [len(v) for v in got.values()] == [1, 1, 1]  # round(0.34 * 3) = 1 each
    assert sorted(r["id"] for v in got.values() for r in v) == LJ_IDS
    assert not any("speaker" in r for v in got.values() for r in v)  # lhotse names none
    text = {r["id"]: r["text"] for v in got.values() for r in v}
    assert text["LJ002-0020"] == "in eighteen thirteen"
    (line,) = skip_lines(caplog)
    assert line.startswith("ljspeech all: skipped LJ999-0001 (") and "LJ999-0001.wav" in line
    assert "OOV characters: '01' in 'Room 101.'" in line, line
    assert any(r.getMessage() == "ljspeech: skipped 1 of 4 utterances before the split "
               "(OOV characters: 1)" for r in caplog.records)
    for split in ("train", "dev", "test"):
        assert summary_line(caplog, "ljspeech", split).startswith(f"ljspeech {split}: 1 utterances")
        validate_ok(capsys, out / f"{split}.jsonl", "--sample-rate", "22050")
    # the same corpus, the same split (and bytes) on a re-run; --force replaces, else an error
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = run_cli(capsys, *args)
    assert rc == 2 and "exists; pass --force to overwrite it" in one_error_line(err)
    rc, _, err = run_cli(capsys, *args, "--force")
    assert rc == 0, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # default fractions (0.05 of 3 utterances: none): dev and test are written, empty, with a
    # warning; a seed other than 0 is another split
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", corpus,
                         "--out", tmp_path / "default")
    assert rc == 0 and len(rows(tmp_path / "default" / "train.jsonl")) == 3
    assert (tmp_path / "default" / "dev.jsonl").read_text() == ""
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith(
        "ljspeech dev: 0 utterances") and r.getMessage().endswith("(empty)") for r in caplog.records)


def test_ljspeech_bad_layout(samples, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", tmp_path,
                         "--out", out)
    assert rc == 2 and "no metadata.csv (LJ Speech layout" in one_error_line(err)
    corpus = build_ljspeech(tmp_path, samples, extra="LJ002-0099|two fields only\n")
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", tmp_path,
                         "--out", out)
    assert rc == 2 and "did you mean" in one_error_line(err)
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", corpus,
                         "--out", out)
    assert rc == 2 and f"{corpus / 'metadata.csv'}:5: 2 '|'-separated field(s), expected 3" \
        in one_error_line(err)
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", corpus,
                         "--out", out, "--parts", "dev-clean")
    assert rc == 2 and "ljspeech has no part(s) dev-clean" in one_error_line(err)
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", corpus,
                         "--out", out, "--dev-fraction", "0.6", "--test-fraction", "0.5")
    assert rc == 2 and "split fractions must be >= 0 and sum to < 1" in one_error_line(err)
    assert not out.exists()


# --------------------------------------------------------------------------- CMU ARCTIC

ARCTIC_IDS = [f"aew-arctic_a000{i}" for i in (1, 2, 3)] + [f"axb-arctic_a000{i}" for i in (4, 5, 6)]


def build_arctic(root: Path, samples: dict[str, dict]) -> Path:
    """``root/cmu_arctic/cmu_us_SPEAKER_arctic/{wav/arctic_a0001.wav, etc/txt.done.data}``."""
    corpus = root / "cmu_arctic"
    for speaker in ("aew", "axb"):
        folder = corpus / f"cmu_us_{speaker}_arctic"
        (folder / "wav").mkdir(parents=True)
        (folder / "etc").mkdir()
        lines = []
        for utt_id in ARCTIC_IDS:
            if utt_id.startswith(speaker):
                utt = utt_id.split("-")[1]
                shutil.copyfile(samples[utt_id]["path"], folder / "wav" / f"{utt}.wav")
                lines.append(f'( {utt} "{samples[utt_id]["text"]}" )')
        (folder / "etc" / "txt.done.data").write_text("\n".join(lines) + "\n")
    return corpus


def test_cmu_arctic(samples, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    corpus = build_arctic(tmp_path, samples)
    out = tmp_path / "data" / "arctic"
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir", corpus,
                         "--out", out, "--dev-fraction", "0.2", "--test-fraction", "0.2")
    assert rc == 0, err
    got = {s: check_rows(out / f"{s}.jsonl", samples) for s in ("train", "dev", "test")}
    assert [len(v) for v in got.values()] == [4, 1, 1]
    flat = [r for v in got.values() for r in v]
    assert sorted(r["id"] for r in flat) == ARCTIC_IDS
    assert {r["id"]: r["speaker"] for r in flat} == {i: i[:3] for i in ARCTIC_IDS}
    assert not skip_lines(caplog)
    for split in got:
        validate_ok(capsys, out / f"{split}.jsonl")
    # one speaker's folder alone is a corpus too (lhotse searches recursively)
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir",
                         corpus / "cmu_us_axb_arctic", "--out", tmp_path / "axb", "--parts", "train")
    assert rc == 0 and [r["id"] for r in rows(tmp_path / "axb" / "train.jsonl")] == ARCTIC_IDS[3:]


def test_cmu_arctic_bad_layout(samples, tmp_path: Path, capsys) -> None:
    corpus = build_arctic(tmp_path, samples)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir", tmp_path / "x",
                         "--out", out)
    assert rc == 2 and "x: cmu_arctic corpus folder not found" in one_error_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir", empty,
                         "--out", out)
    assert rc == 2 and "no */etc/txt.done.data (CMU ARCTIC layout" in one_error_line(err)
    # two WAVs of one prompt and speaker (lhotse reads every *.wav and would pick one)
    orig = corpus / "cmu_us_axb_arctic" / "orig" / "arctic_a0004.wav"
    orig.parent.mkdir()
    shutil.copyfile(samples["axb-arctic_a0004"]["path"], orig)
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir", corpus,
                         "--out", out)
    line = one_error_line(err)
    assert rc == 2 and "a second WAV for axb-arctic_a0004" in line and str(orig) in line, line
    orig.unlink()
    # a prompt without its WAV: lhotse's preparer would fail with a bare StopIteration
    (corpus / "cmu_us_aew_arctic" / "wav" / "arctic_a0002.wav").unlink()
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir", corpus,
                         "--out", out)
    line = one_error_line(err)
    assert rc == 2 and "txt.done.data:2: no " in line and "arctic_a0002.wav" in line, line
    # a WAV outside the cmu_us_SPEAKER_arctic/wav/ layout
    shutil.copyfile(samples["aew-arctic_a0001"]["path"], corpus / "stray.wav")
    rc, _, err = run_cli(capsys, "data", "prepare", "cmu_arctic", "--corpus-dir", corpus,
                         "--out", out)
    assert rc == 2 and "stray.wav: not in a cmu_us_SPEAKER_arctic/wav/ folder" in one_error_line(err)
    assert not out.exists()


# -------------------------------------------------------------------------- Common Voice

CV_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
              "accents", "variant", "locale", "segment"]
CV_SPLITS = {"train": ["aew-arctic_a0001", "aew-arctic_a0002", "251-137823-0002"],
             "dev": ["LJ050-0131", "axb-arctic_a0004"],
             "test": ["axb-arctic_a0006", "2412-153948-0000"]}


def build_commonvoice(root: Path, samples: dict[str, dict]) -> Path:
    """``root/cv-corpus-test/en/{validated,train,dev,test}.tsv`` and ``en/clips/*.mp3``.
    Planted: an empty sentence in train (with its clip) and a clip missing in dev."""
    release = root / "cv-corpus-test"
    clips = release / "en" / "clips"
    clips.mkdir(parents=True)
    tables: dict[str, list[list[str]]] = {s: [] for s in CV_SPLITS}
    for split, ids in CV_SPLITS.items():
        for utt in ids:
            name = f"common_voice_en_{utt}.mp3"
            data, sr = sf.read(str(samples[utt]["path"]), dtype="float32")
            sf.write(str(clips / name), data, sr, format="MP3", subtype="MPEG_LAYER_III")
            speaker = f"client{samples[utt]['speaker']}"
            tables[split].append([speaker, name, samples[utt]["text"], "2", "0", "", "", "",
                                  "", "en", ""])
    shutil.copyfile(clips / tables["train"][0][1], clips / "common_voice_en_empty.mp3")
    tables["train"].append(["clientx", "common_voice_en_empty.mp3", '"..."', "2", "0", "", "",
                            "", "", "en", ""])
    tables["dev"].append(["clientx", "common_voice_en_missing.mp3", "Nobody recorded this.",
                          "2", "0", "", "", "", "", "en", ""])
    tables["validated"] = [r for s in CV_SPLITS for r in tables[s]]
    for split, table in tables.items():
        (release / "en" / f"{split}.tsv").write_text(
            "\n".join("\t".join(r) for r in [CV_COLUMNS, *table]) + "\n", encoding="utf-8")
    return release


def cv_oracle(samples: dict[str, dict]) -> dict[str, dict]:
    return {f"common_voice_en_{utt}": samples[utt] for ids in CV_SPLITS.values() for utt in ids}


def test_commonvoice(samples, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    release = build_commonvoice(tmp_path, samples)
    out = tmp_path / "data" / "cv_en"
    # the language folder itself; the default splits (each one is a process pool of lhotse's)
    rc, _, err = run_cli(capsys, "data", "prepare", "commonvoice", "--corpus-dir",
                         release / "en", "--out", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["dev.jsonl", "test.jsonl", "train.jsonl"]
    oracle_rows = cv_oracle(samples)
    for split, ids in CV_SPLITS.items():
        got = check_rows(out / f"{split}.jsonl", oracle_rows)
        assert [r["id"] for r in got] == sorted(f"common_voice_en_{u}" for u in ids)
        assert all(Path(r["audio_filepath"]).suffix == ".mp3" for r in got)
        assert [r["speaker"] for r in got] == [
            f"client{samples[u]['speaker']}" for u in sorted(ids, key=lambda u: f"common_voice_en_{u}")]
        validate_ok(capsys, out / f"{split}.jsonl", "--resample")
    lines = skip_lines(caplog)
    assert len(lines) == 2, lines
    assert any(ln.startswith("commonvoice train: skipped common_voice_en_empty (")
               and "empty text: '\"...\"' normalizes to ''" in ln for ln in lines), lines
    assert any(ln.startswith("commonvoice dev: skipped common_voice_en_missing (")
               and "audio not found: " in ln for ln in lines), lines
    assert "skipped 1 (empty text: 1)" in summary_line(caplog, "commonvoice", "train")
    assert "skipped 1 (audio not found: 1)" in summary_line(caplog, "commonvoice", "dev")
    assert any(r.getMessage().startswith("commonvoice: audio at 16000, 22050 Hz; the recipes "
                                         "expect 16000 Hz: set `resample: true`")
               for r in caplog.records)

    # the release folder with --language; --parts names the other TSVs
    rc, _, err = run_cli(capsys, "data", "prepare", "commonvoice", "--corpus-dir", release,
                         "--language", "en", "--out", tmp_path / "validated", "--parts",
                         "validated")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "validated").iterdir()] == ["validated.jsonl"]
    got = check_rows(tmp_path / "validated" / "validated.jsonl", oracle_rows)
    assert sorted(r["id"] for r in got) == sorted(oracle_rows)


def test_commonvoice_bad_layout(samples, tmp_path: Path, capsys) -> None:
    release = build_commonvoice(tmp_path, samples)
    out = tmp_path / "out"
    for args, message in [
        (["--corpus-dir", release, "--language", "de"], "no language folder 'de' (folders "
                                                         "here: en;"),
        (["--corpus-dir", release, "--parts", "train", "extra"], "unknown Common Voice split(s) "
                                                                  "extra"),
    ]:
        rc, _, err = run_cli(capsys, "data", "prepare", "commonvoice", *args, "--out", out)
        assert rc == 2 and message in one_error_line(err), err
    (release / "en" / "test.tsv").unlink()
    rc, _, err = run_cli(capsys, "data", "prepare", "commonvoice", "--corpus-dir", release,
                         "--out", out)
    assert rc == 2 and "en/test.tsv: not found (Common Voice layout" in one_error_line(err)
    # an older release's TSV without the columns lhotse reads
    tsv = release / "en" / "dev.tsv"
    tsv.write_text(tsv.read_text().replace("\tvariant", "\tvariety"))
    rc, _, err = run_cli(capsys, "data", "prepare", "commonvoice", "--corpus-dir", release,
                         "--out", out, "--parts", "dev")
    assert rc == 2 and "dev.tsv: no column(s) variant" in one_error_line(err)
    rc, _, err = run_cli(capsys, "data", "prepare", "ljspeech", "--corpus-dir", release,
                         "--out", out, "--language", "en")
    assert rc == 2 and "--language: only for commonvoice" in one_error_line(err)
    assert not out.exists()


# ---------------------------------------------------------------------- pure functions


def test_transcript_checks() -> None:
    assert unspellable_chars("Zürich, Straße: ﬁne") == []
    assert unspellable_chars("In 1813, ½ 中文") == ["1", "3", "8", "½", "中", "文"]
    assert normalize_transcript("Don\u2019t STOP!") == ("don't stop", None)
    assert normalize_transcript(" ?! ")[1] == "empty text: ' ?! ' normalizes to ''"
    assert normalize_transcript("room 101")[1] == "OOV characters: '01' in 'room 101'"
    assert normalize_transcript(None)[1].startswith("missing field: ")
    # a vocabulary without the apostrophe
    assert normalize_transcript("don't", CharVocab("abcdefghijklmnopqrstuvwxyz "))[1] == \
        "OOV characters: \"'\" in \"don't\""


def test_split_rows_keeps_texts_together() -> None:
    texts = [f"prompt {chr(97 + i)}" for i in range(20)]
    data = [{"id": f"{spk}-{i:02d}", "text": t} for spk in ("aew", "axb", "bdl")
            for i, t in enumerate(texts)]
    splits = split_rows(data, 0.1, 0.2)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [42, 6, 12]
    seen = {s: {r["text"] for r in v} for s, v in splits.items()}
    assert not (seen["train"] & seen["dev"] or seen["train"] & seen["test"]
                or seen["dev"] & seen["test"])
    assert split_rows(list(reversed(data)), 0.1, 0.2)["test"] == list(reversed(splits["test"]))
    assert split_rows(data, 0.1, 0.2, seed=1) != splits
    for s, v in splits.items():  # input order within a split
        assert v == [r for r in data if r in v], s


def test_manifest_rows_and_summary(samples) -> None:
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    path = samples["aew-arctic_a0001"]["path"]
    rec = Recording.from_file(path, recording_id="r1")
    sups = SupervisionSet.from_segments([
        SupervisionSegment("b", "r1", 0.5, 1.0, text="Second half.", speaker="s"),
        SupervisionSegment("a", "r1", 0.0, rec.duration, text="The whole FILE"),
        SupervisionSegment("c", "r1", 0.0, 1.0, text="12"),
        SupervisionSegment("d", "r2", 0.0, 1.0, text="no recording"),
    ])
    got, skipped = manifest_rows(RecordingSet.from_recordings([rec]), sups)
    assert got == [
        {"id": "a", "audio_filepath": str(path), "duration": round(rec.duration, 6),
         "text": "the whole file"},
        {"id": "b", "audio_filepath": str(path), "duration": 1.0, "text": "second half",
         "offset": 0.5, "speaker": "s"},
    ]
    assert [(s.id, s.category) for s in skipped] == [("c", "OOV characters"),
                                                     ("d", "audio not found")]
    report = SplitReport("x", "dev", Path("o/dev.jsonl"), 2, 7200.0,
                         collections.Counter({"empty text": 2, "OOV characters": 1}))
    assert report.summary() == ("x dev: 2 utterances, 2.00 h, skipped 3 (empty text: 2, "
                                "OOV characters: 1) -> o/dev.jsonl")
