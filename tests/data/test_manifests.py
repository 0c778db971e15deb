"""Manifest loading and validation: each bad input is fed and its reason and line checked."""

from __future__ import annotations

import gzip
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut
from lhotse.utils import fastcopy

from speechlab.data.manifests import (
    ManifestError,
    ManifestIssue,
    ValidationReport,
    ctc_min_frames,
    load_cuts,
    read_manifest,
    write_manifest,
)
from speechlab.data.text import CharVocab, normalize_text
from tests.helpers import SR, entry, manifest, tone, wav


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return wav(tmp_path / "good.wav")


def only_issue(report: ValidationReport) -> ManifestIssue:
    assert len(report.issues) == 1, report.issues
    return report.issues[0]


def check_skip(
    tmp_path: Path, good: Path, bad: dict | str, category: str, good_text: str = "hello world", **kw
) -> ManifestIssue:
    """Manifest = good, bad, good: line 2 is skipped with ``category``; the others are kept."""
    m = manifest(
        tmp_path, [entry(good, id="a", text=good_text), bad, entry(good, id="c", text=good_text)]
    )
    cuts, report = load_cuts(m, **kw)
    issue = only_issue(report)
    assert issue.line == 2
    assert issue.manifest == str(m)
    assert issue.category == category, issue.reason
    assert report.total == 3 and report.kept == 2
    assert [c.id for c in cuts] == ["a", "c"]
    return issue


# ------------------------------------------------------------------------------ good entries


def test_loads_nemo_manifest(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good, text="Turn ON the Lights!", speaker="s1", id="u1")])
    cuts, report = load_cuts(m)
    assert report.total == report.kept == 1 and report.issues == []
    (cut,) = list(cuts)
    assert isinstance(cut, MonoCut)
    assert cut.id == "u1" and cut.duration == pytest.approx(1.0)
    assert cut.sampling_rate == SR and cut.num_channels == 1
    (sup,) = cut.supervisions
    assert sup.text == "turn on the lights" and sup.speaker == "s1"
    assert sup.start == 0 and sup.duration == pytest.approx(1.0)
    assert cut.load_audio().shape == (1, SR)
    assert report.summary() == f"{m}: kept 1/1, skipped 0"


def test_relative_path_resolves_against_manifest_folder(tmp_path: Path, monkeypatch) -> None:
    wav(tmp_path / "data" / "wavs" / "x.wav")
    m = manifest(tmp_path / "data", [entry("wavs/x.wav")])
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    cuts, _ = load_cuts(m)
    (cut,) = list(cuts)
    assert Path(cut.recording.sources[0].source) == (tmp_path / "data" / "wavs" / "x.wav").resolve()
    assert cut.id == "x"  # stable id from the path stem
    assert cut.load_audio().shape == (1, SR)


def test_offset_segments(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR).astype(np.float32)
    sf.write(str(tmp_path / "long.wav"), x, SR, subtype="FLOAT")
    m = manifest(
        tmp_path,
        [entry("long.wav", duration=1.0, offset=0.5), entry("long.wav", duration=1.5, offset=1.5)],
    )
    cuts, report = load_cuts(m)
    assert report.kept == 2
    a, b = list(cuts)
    assert a.id == "long-00000500" and b.id == "long-00001500"
    assert a.start == 0.5 and a.duration == 1.0
    np.testing.assert_allclose(a.load_audio()[0], x[SR // 2 : SR // 2 + SR])
    np.testing.assert_allclose(b.load_audio()[0], x[3 * SR // 2 :])


def test_offset_segment_past_end_is_a_duration_mismatch(tmp_path: Path, good: Path) -> None:
    issue = check_skip(tmp_path, good, entry(good, duration=0.8, offset=0.5), "duration mismatch")
    assert "ends past the end" in issue.reason


def test_offset_beyond_end(tmp_path: Path, good: Path) -> None:
    check_skip(tmp_path, good, entry(good, duration=0.5, offset=2.0), "bad offset")


def test_extra_fields_go_to_custom(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good, id="noisy1", clean_id="clean1", domain="kitchen")])
    cuts, _ = load_cuts(m)
    (cut,) = list(cuts)
    assert cut.custom == {"clean_id": "clean1", "domain": "kitchen"}
    assert cut.clean_id == "clean1"


def test_duration_optional_and_within_tolerance(tmp_path: Path, good: Path) -> None:
    e = entry(good)
    del e["duration"]
    m = manifest(tmp_path, [e, entry(good, duration=1.08, id="b")])
    cuts, report = load_cuts(m)
    assert report.kept == 2
    assert [c.duration for c in cuts] == [pytest.approx(1.0)] * 2


def test_resample_when_recipe_says_so(tmp_path: Path) -> None:
    wav(tmp_path / "low.wav", seconds=1.0, sr=8000)
    m = manifest(tmp_path, [entry("low.wav")])
    cuts, report = load_cuts(m, sample_rate=16000, resample=True)
    assert report.kept == 1
    (cut,) = list(cuts)
    assert cut.sampling_rate == 16000
    audio = cut.load_audio()
    assert audio.shape == (1, 16000)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.1


def lhotse_manifest(
    tmp_path: Path, cuts: CutSet, texts: list[str], name: str = "cuts.jsonl.gz"
) -> Path:
    """Write ``cuts`` as a lhotse cut manifest with raw supervision texts ``texts``."""
    raw = CutSet.from_cuts(
        fastcopy(c, supervisions=[fastcopy(c.supervisions[0], text=t)])
        for c, t in zip(cuts, texts, strict=True)
    )
    out = tmp_path / name
    raw.to_file(out)
    return out


def test_lhotse_cut_manifest_accepted(tmp_path: Path, good: Path) -> None:
    cuts, _ = load_cuts(manifest(tmp_path, [entry(good, id="a", clean_id="c0")]))
    out = lhotse_manifest(tmp_path, cuts, ["HELLO, World!"])
    with gzip.open(out, "rt") as f:
        assert json.loads(f.readline())["type"] == "MonoCut"
    cuts2, report = load_cuts(out)
    assert report.kept == 1
    (cut,) = list(cuts2)
    assert cut.id == "a" and cut.custom == {"clean_id": "c0"}
    assert cut.supervisions[0].text == "hello world"  # normalized on load
    assert cut.load_audio().shape == (1, SR)


def test_lhotse_cut_manifest_runs_checks(tmp_path: Path, good: Path) -> None:
    wav(tmp_path / "nf.wav")
    cuts, _ = load_cuts(
        manifest(
            tmp_path, [entry(good, id=i) for i in "abc"] + [entry(tmp_path / "nf.wav", id="d")]
        )
    )
    out = lhotse_manifest(tmp_path, cuts, ["fine", "?!", "fine", "fine"], name="cuts.jsonl")
    x = tone(1.0)
    x[10] = np.nan
    sf.write(str(tmp_path / "nf.wav"), x, SR, subtype="FLOAT")
    _, report = load_cuts(out, output_frame_rate=25)
    assert [(i.line, i.category) for i in report.issues] == [
        (2, "empty text"),
        (4, "non-finite samples"),
    ]
    with pytest.raises(ManifestError, match=rf"{out}:1: sample rate: cut 'a' is 16000 Hz"):
        load_cuts(out, sample_rate=8000)
    good.unlink()
    with pytest.raises(ManifestError, match="no usable entry, all 4 skipped") as e:
        load_cuts(out)
    assert [(i.line, i.category) for i in e.value.report.issues] == [
        (1, "audio not found"),
        (2, "empty text"),
        (3, "audio not found"),
        (4, "non-finite samples"),
    ]


def test_lhotse_relative_source_resolves_against_manifest(tmp_path: Path, monkeypatch) -> None:
    wav(tmp_path / "d" / "wavs" / "r.wav")
    cuts, _ = load_cuts(manifest(tmp_path / "d", [entry("wavs/r.wav")]))
    d = cuts[0].to_dict()
    d["recording"]["sources"][0]["source"] = "wavs/r.wav"  # relative, as lhotse recipes write
    m = manifest(tmp_path / "d", [d], name="cuts.jsonl")
    monkeypatch.chdir(tmp_path)
    cuts2, report = load_cuts(m)
    assert report.kept == 1 and cuts2[0].load_audio().shape == (1, SR)


# ------------------------------------------------------------------------------ bad manifests


def test_malformed_json_raises_with_line(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good), entry(good), '{"audio_filepath": "x.wav", "text": '])
    for kw in ({}, {"on_error": "skip"}, {"on_error": "raise"}):
        with pytest.raises(ManifestError, match=rf"^{m}:3: malformed JSON"):
            load_cuts(m, **kw)
    with pytest.raises(ManifestError, match=rf"{m}:3: malformed JSON"):
        list(read_manifest(m))


def test_non_object_line_raises(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good), "[1, 2]"])
    with pytest.raises(ManifestError, match=rf"{m}:2: malformed entry"):
        load_cuts(m)


def test_read_manifest(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good, id="a"), "", entry(good, id="b")])
    assert [(n, e["id"]) for n, e in read_manifest(m)] == [(1, "a"), (3, "b")]
    bad = manifest(tmp_path, [entry(good), {"audio_filepath": "x.wav"}], name="bad.jsonl")
    with pytest.raises(ManifestError, match=rf"{bad}:2: missing field: 'text'"):
        list(read_manifest(bad))


def test_write_manifest_round_trip(tmp_path: Path, good: Path) -> None:
    rows = [entry(good, id="a", text="naïve café")]
    assert write_manifest(tmp_path / "out" / "w.jsonl", rows) == 1
    assert [e for _, e in read_manifest(tmp_path / "out" / "w.jsonl")] == rows


def test_write_manifest_gz_and_binary_manifest(tmp_path: Path, good: Path) -> None:
    assert write_manifest(tmp_path / "w.jsonl.gz", [entry(good, id="a")]) == 1
    cuts, _ = load_cuts(tmp_path / "w.jsonl.gz")
    assert [c.id for c in cuts] == ["a"]
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="malformed manifest"):
        load_cuts(tmp_path / "bin.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ManifestError, match="malformed manifest"):
        load_cuts(tmp_path / "bad.jsonl.gz")


def test_missing_field(tmp_path: Path, good: Path) -> None:
    issue = check_skip(
        tmp_path, good, {"audio_filepath": str(good), "duration": 1.0}, "missing field"
    )
    assert "'text'" in issue.reason


def test_missing_audio_file(tmp_path: Path, good: Path) -> None:
    issue = check_skip(tmp_path, good, entry(tmp_path / "nope.wav", id="b"), "audio not found")
    assert "nope.wav" in issue.reason and issue.utt_id == "b"


def test_directory_as_audio_is_named_a_directory(tmp_path: Path, good: Path) -> None:
    """Issue 13: a folder given as ``audio_filepath`` was reported as "audio not found"."""
    (tmp_path / "wavs").mkdir()
    issue = check_skip(tmp_path, good, entry(tmp_path / "wavs", id="b"), "audio is a directory")
    assert str(tmp_path / "wavs") in issue.reason and issue.utt_id == "b"
    # a lhotse cut whose recording source is a folder
    cut = load_cuts(manifest(tmp_path, [entry(good, id="a")], name="one.jsonl"))[0][0].to_dict()
    cut["recording"]["sources"][0]["source"] = str(tmp_path / "wavs")
    issue = check_skip(tmp_path, good, cut, "audio is a directory")
    assert str(tmp_path / "wavs") in issue.reason


def test_garbage_bytes(tmp_path: Path, good: Path) -> None:
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(1).bytes(4000))
    issue = check_skip(tmp_path, good, entry(tmp_path / "junk.wav"), "unreadable audio")
    assert "junk.wav" in issue.reason


@pytest.mark.parametrize("check_samples", [True, False])
def test_truncated_wav(tmp_path: Path, good: Path, check_samples: bool) -> None:
    full = wav(tmp_path / "t.wav", seconds=1.0).read_bytes()
    (tmp_path / "t.wav").write_bytes(full[: len(full) // 2])
    issue = check_skip(
        tmp_path, good, entry(tmp_path / "t.wav"), "unreadable audio", check_samples=check_samples
    )
    assert "truncated" in issue.reason


def test_wrong_sample_rate_is_an_error_not_a_skip(tmp_path: Path, good: Path) -> None:
    wav(tmp_path / "low.wav", sr=8000)
    m = manifest(tmp_path, [entry(good), entry(tmp_path / "low.wav")])
    with pytest.raises(ManifestError) as e:
        load_cuts(m, sample_rate=16000, on_error="skip")
    msg = str(e.value)
    assert msg.startswith(f"{m}:2: sample rate")
    assert "low.wav" in msg and "8000" in msg and "16000" in msg and "resample: true" in msg


def test_stereo(tmp_path: Path, good: Path) -> None:
    wav(tmp_path / "st.wav", channels=2)
    issue = check_skip(tmp_path, good, entry(tmp_path / "st.wav"), "multi-channel")
    assert "2 channels" in issue.reason


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, good: Path, bad_value: float) -> None:
    x = tone(1.0)
    x[1234] = bad_value
    sf.write(str(tmp_path / "nf.wav"), x, SR, subtype="FLOAT")
    issue = check_skip(tmp_path, good, entry(tmp_path / "nf.wav"), "non-finite samples")
    assert ("1 NaN" if np.isnan(bad_value) else "1 inf") in issue.reason
    # header-only validation cannot see it
    _, report = load_cuts(manifest(tmp_path, [entry(tmp_path / "nf.wav")]), check_samples=False)
    assert report.issues == []


@pytest.mark.parametrize("text", ["", "   ", "?!...", "—"])
def test_empty_text(tmp_path: Path, good: Path, text: str) -> None:
    assert normalize_text(text) == ""
    check_skip(tmp_path, good, entry(good, text=text), "empty text")


def test_oov_only_text(tmp_path: Path, good: Path) -> None:
    # normalize_text keeps only a-z, space and apostrophe, so non-Latin text is *empty* after
    # normalization, and OOV needs a vocabulary smaller than the normalizer's alphabet
    assert normalize_text("日本") == ""
    check_skip(tmp_path, good, entry(good, text="日本"), "empty text", vocab=CharVocab())
    vocab = CharVocab("abc ")
    issue = check_skip(
        tmp_path, good, entry(good, text="XYZ zy"), "OOV-only text", good_text="abc", vocab=vocab
    )
    assert "xyz zy" in issue.reason


def test_partially_oov_text(tmp_path: Path, good: Path) -> None:
    issue = check_skip(
        tmp_path,
        good,
        entry(good, text="a cab d"),
        "OOV characters",
        good_text="a cab",
        vocab=CharVocab("abc "),
    )
    assert "'d'" in issue.reason


def test_default_vocab_accepts_normalized_text(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good, text="Don’t STOP, naïve café!")])
    cuts, report = load_cuts(m, vocab=CharVocab())
    assert report.issues == [] and cuts[0].supervisions[0].text == "don't stop naive cafe"


def test_duration_mismatch(tmp_path: Path, good: Path) -> None:
    issue = check_skip(tmp_path, good, entry(good, duration=1.3), "duration mismatch")
    assert "1.30" in issue.reason and "1.00" in issue.reason
    _, report = load_cuts(
        manifest(tmp_path, [entry(good, duration=1.3)]), max_duration_mismatch=0.5
    )
    assert report.issues == []


def test_too_short_for_transcript(tmp_path: Path, good: Path) -> None:
    wav(tmp_path / "short.wav", seconds=0.2)
    text = "the quick brown fox jumps over the lazy"  # 39 chars; 0.2 s * 25 Hz = 5 frames
    issue = check_skip(
        tmp_path, good, entry(tmp_path / "short.wav", 0.2, text), "too short", output_frame_rate=25
    )
    assert issue.reason.startswith(
        f"too short: 5 frames at 25 Hz < {len(text)} needed for {len(text)} characters"
    )
    # the same line is fine without a frame rate
    _, report = load_cuts(manifest(tmp_path, [entry(tmp_path / "short.wav", 0.2, text)]))
    assert report.issues == []


def test_ctc_min_frames_counts_repeats() -> None:
    assert ctc_min_frames("abc") == 3
    assert ctc_min_frames("aab") == 4
    assert ctc_min_frames("hello  all") == 10 + 3


def test_repeats_decide_too_short(tmp_path: Path) -> None:
    wav(tmp_path / "x.wav", seconds=0.2)  # 5 frames at 25 Hz
    m = manifest(
        tmp_path,
        [
            entry(tmp_path / "x.wav", 0.2, "abcde", id="ok"),
            entry(tmp_path / "x.wav", 0.2, "aabcd", id="rep"),
        ],
    )
    cuts, report = load_cuts(m, output_frame_rate=25)
    assert [c.id for c in cuts] == ["ok"]
    assert "6 needed for 5 characters" in only_issue(report).reason


def test_duplicate_id(tmp_path: Path, good: Path) -> None:
    issue = check_skip(tmp_path, good, entry(good, id="a"), "duplicate id")
    assert "line 1" in issue.reason


def test_same_stem_in_two_folders_gets_distinct_ids(tmp_path: Path) -> None:
    wav(tmp_path / "s1" / "0001.wav")
    wav(tmp_path / "s2" / "0001.wav")
    cuts, report = load_cuts(manifest(tmp_path, [entry("s1/0001.wav"), entry("s2/0001.wav")]))
    ids = [c.id for c in cuts]
    assert (
        report.kept == 2 and ids[0] == "0001" and ids[1].startswith("0001-") and len(set(ids)) == 2
    )


# ------------------------------------------------------------------------------ reporting


def test_skips_are_counted_logged_and_summarized(tmp_path: Path, good: Path, caplog) -> None:
    wav(tmp_path / "st.wav", channels=2)
    entries = [entry(good, id=f"g{i}") for i in range(5)]
    entries += [
        entry(good, duration=2.0, id="d1"),
        entry(good, text="!!", id="e1"),
        entry(tmp_path / "missing.wav", id="m1"),
        entry(good, duration=2.0, id="d2"),
        entry(tmp_path / "st.wav", id="s1"),
    ]
    m = manifest(tmp_path, entries, name="train.jsonl")
    with caplog.at_level(logging.WARNING, logger="speechlab.data"):
        cuts, report = load_cuts(m)
    assert len(cuts) == 5 and report.total == 10 and report.kept == 5
    assert [i.line for i in report.issues] == [6, 7, 8, 9, 10]
    assert report.counts_by_reason() == {
        "duration mismatch": 2,
        "empty text": 1,
        "audio not found": 1,
        "multi-channel": 1,
    }
    assert report.summary() == (
        f"{m}: kept 5/10, skipped 5 (duration mismatch: 2, empty text: 1, "
        "audio not found: 1, multi-channel: 1)"
    )
    messages = [r.getMessage() for r in caplog.records if r.name == "speechlab.data"]
    assert messages[:5] == [str(i) for i in report.issues]
    assert messages[0].startswith(f"{m}:6: duration mismatch")
    assert messages[-1] == report.summary()


def test_log_is_capped(tmp_path: Path, good: Path, caplog) -> None:
    entries = [entry(good, id="ok")] + [entry(good, text="", id=f"e{i}") for i in range(30)]
    with caplog.at_level(logging.WARNING, logger="speechlab.data"):
        _, report = load_cuts(manifest(tmp_path, entries))
    assert len(report.issues) == 30
    records = [r for r in caplog.records if r.name == "speechlab.data"]
    assert len(records) == 20 + 2  # 20 issues, a "more issues" line, the summary
    assert "empty text: 30" in records[-1].getMessage()


def test_on_error_raise(tmp_path: Path, good: Path) -> None:
    m = manifest(
        tmp_path, [entry(good), entry(good, id="x", duration=1.5), entry(tmp_path / "no.wav")]
    )
    with pytest.raises(ManifestError, match=rf"^{m}:2: duration mismatch"):
        load_cuts(m, on_error="raise")


def test_all_skipped_is_an_error(tmp_path: Path, good: Path) -> None:
    m = manifest(tmp_path, [entry(good, text=""), entry(tmp_path / "no.wav")])
    with pytest.raises(
        ManifestError,
        match=rf"^{m}: no usable entry, all 2 skipped \(empty text: 1, audio not found: 1\)$",
    ) as e:
        load_cuts(m)
    assert e.value.report is not None and len(e.value.report.issues) == 2
    with pytest.raises(ManifestError, match="no entries"):
        load_cuts(manifest(tmp_path, [""], name="empty.jsonl"))


@pytest.mark.parametrize("name", ["m.jsonl", "m.jsonl.gz"])
def test_manifest_with_a_byte_order_mark(tmp_path: Path, good: Path, name: str) -> None:
    """Issue 13: a manifest that starts with a UTF-8 BOM (many Windows tools write one) was
    refused as malformed JSON at line 1; it reads as the same manifest without it."""
    plain = manifest(tmp_path, [entry(good, id="a"), entry(good, id="b", text="good bye")])
    data = b"\xef\xbb\xbf" + plain.read_bytes()
    bom = tmp_path / name
    bom.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert list(read_manifest(bom)) == list(read_manifest(plain))
    cuts, report = load_cuts(bom)
    assert report.kept == 2 and not report.issues
    assert [c.id for c in cuts] == ["a", "b"]
    assert [c.supervisions[0].text for c in cuts] == ["hello world", "good bye"]


def test_manifest_not_found(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        load_cuts(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------ CLI


def run_cli(*argv: str, capsys) -> tuple[int, str, str]:
    from speechlab.cli import main

    rc = main(["data", "validate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_validate_empty_manifest_is_one_error(tmp_path: Path, capsys) -> None:
    """Issue 13: an empty manifest printed only "kept 0/0, skipped 0" and exited 1 (the status
    of "bad utterances found"); it is one line naming the file, exit 2, like malformed JSON."""
    for content in ("", "\n  \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text(content)
        rc, out, err = run_cli("--manifest", str(empty), capsys=capsys)
        assert rc == 2 and out == ""
        assert err.splitlines() == [f"speechlab data validate: error: {empty}: empty manifest "
                                    f"(no entries, only blank lines or none)"]


def test_cli_validate(tmp_path: Path, good: Path, capsys) -> None:
    clean = manifest(tmp_path, [entry(good, id="a")], name="clean.jsonl")
    rc, out, _ = run_cli("--manifest", str(clean), capsys=capsys)
    assert rc == 0 and out.strip() == f"{clean}: kept 1/1, skipped 0"

    dirty = manifest(
        tmp_path,
        [entry(good, id="a", text="cab"), entry(good, text="xyz", id="b")],
        name="dirty.jsonl",
    )
    rc, out, _ = run_cli(
        "--manifest", str(dirty), "--vocab", "abc ", "--frame-rate", "25", capsys=capsys
    )
    assert rc == 1
    assert f"{dirty}: kept 1/2, skipped 1 (OOV-only text: 1)" in out
    assert f"{dirty}:2: OOV-only text" in out

    nothing = manifest(tmp_path, [entry(good, text="")], name="nothing.jsonl")
    rc, out, _ = run_cli("--manifest", str(nothing), capsys=capsys)
    assert rc == 1 and "kept 0/1" in out and f"{nothing}:1: empty text" in out

    wav(tmp_path / "low.wav", sr=8000)
    low = manifest(tmp_path, [entry(tmp_path / "low.wav")], name="low.jsonl")
    rc, _, err = run_cli("--manifest", str(low), capsys=capsys)
    assert rc == 2 and "resample: true" in err and f"{low}:1: sample rate" in err
    rc, out, _ = run_cli("--manifest", str(low), "--resample", capsys=capsys)
    assert rc == 0


def test_cli_registration_and_help(capsys) -> None:
    from speechlab import cli
    from speechlab.cli import data

    assert cli.TOOLS["data"]["validate"][0] == "speechlab.cli.data:validate"
    assert data.validate.__doc__.splitlines()[0].startswith("Validate a speech manifest")
    with pytest.raises(SystemExit):
        cli.main(["data", "validate", "--help"])
    out = capsys.readouterr().out
    assert "Validate a speech manifest" in out and "--resample" in out and "--frame-rate" in out


@pytest.mark.skipif(sys.platform == "win32", reason="timing")
def test_validation_speed(tmp_path: Path) -> None:
    """200 files with check_samples in well under a few seconds (the 1800-file bench scales)."""
    import time

    rng = np.random.default_rng(0)
    entries = []
    for i in range(200):
        p = tmp_path / "w" / f"{i:04d}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(str(p), rng.uniform(-0.3, 0.3, SR).astype(np.float32), SR, subtype="PCM_16")
        entries.append(entry(f"w/{i:04d}.wav", 1.0, "a b c"))
    m = manifest(tmp_path, entries)
    t0 = time.perf_counter()
    cuts, report = load_cuts(m, output_frame_rate=25, vocab=CharVocab())
    assert report.kept == 200 and len(cuts) == 200
    assert time.perf_counter() - t0 < 3.0
