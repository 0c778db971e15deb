"""Far-field corruption: SNR mixing, simulated and real RIRs, manifests, determinism, resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechlab import cli
from speechlab.data.audio import read_audio, write_audio
from speechlab.data.farfield import (
    ID_SUFFIX,
    FarfieldConfig,
    RoomSpec,
    align_rir,
    corrupt,
    farfield_corpus,
    list_audio,
    loop_segment,
    measured_snr_db,
    mix_at_snr,
    peak_limit,
    pink_noise,
    read_manifest,
    simulate_shoebox_rir,
)

SR = 16000
N = 6


def speechlike(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Harmonic bursts with pauses: enough structure for babble and SNR checks."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(90, 220)
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * rng.uniform(2, 4) * t) > -0.3).astype(float)
    return (0.3 * x * envelope / 2.5).astype(np.float32)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small clean corpus (no espeak needed): ``clean/test.jsonl`` + wavs."""
    root = tmp_path_factory.mktemp("far") / "clean"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(N):
        x = speechlike(rng, rng.uniform(0.8, 1.6))
        write_audio(root / "wavs" / f"u{i}.wav", x, SR)
        lines.append({"id": f"u{i}", "audio_filepath": f"wavs/u{i}.wav",
                      "duration": round(len(x) / SR, 4), "text": f"utterance {i}",
                      "speaker": f"spk{i % 2}"})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root / "test.jsonl"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


# --------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 20.0])
def test_mix_at_snr(snr_db: float) -> None:
    rng = np.random.default_rng(1)
    speech = speechlike(rng, 1.0)
    noise = rng.standard_normal(len(speech)).astype(np.float32) * 3
    noisy = mix_at_snr(speech, noise, snr_db)
    assert noisy.shape == speech.shape and noisy.dtype == np.float32
    assert measured_snr_db(speech, noisy) == pytest.approx(snr_db, abs=0.01)
    with pytest.raises(ValueError, match="differ in shape"):
        mix_at_snr(speech, noise[:-1], snr_db)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(speech, np.zeros_like(speech), snr_db)


def test_small_helpers() -> None:
    assert loop_segment(np.arange(4.0), 2, 7).tolist() == [2, 3, 0, 1, 2, 3, 0]
    y, gain = peak_limit(np.array([0.5, -2.0], np.float32), 0.9)
    assert gain == pytest.approx(0.45) and np.abs(y).max() == pytest.approx(0.9)
    assert peak_limit(np.array([0.1, -0.2], np.float32))[1] == 1.0
    rir = align_rir(np.r_[np.zeros(50), 1.0, 0.5, 0.25])
    assert rir[0] == rir.max() and np.sum(rir.astype(np.float64) ** 2) == pytest.approx(1.0)
    # pink noise: power falls ~3 dB per octave
    p = np.abs(np.fft.rfft(pink_noise(np.random.default_rng(0), 2**16))) ** 2
    low, high = p[256:512].sum(), p[4096:8192].sum()  # 4 octaves apart, equal power per octave
    assert 0.5 < low / high < 2.0


def test_simulated_rir_direct_path_and_decay() -> None:
    dims, source, mic = [6.0, 5.0, 3.0], [1.0, 1.5, 1.6], [4.0, 3.0, 1.2]
    rir = simulate_shoebox_rir(dims, 0.5, source, mic, SR, max_order=40)
    distance = math.dist(source, mic)
    expected = distance / 343.0 * SR
    peak = int(np.argmax(np.abs(rir[: int(expected) + 20])))
    assert abs(peak - expected) <= 1.5
    assert np.abs(rir[peak]) >= 0.3 * np.abs(rir).max()
    # nothing arrives early (outside the +-40-sample fractional-delay filter)
    assert np.all(np.abs(rir[: int(expected) - 41]) < 0.05 * np.abs(rir[peak]))
    # energy decays: 50 ms windows after the direct path lose energy steadily
    win = SR // 20
    energy = [float(np.sum(rir[peak + k * win: peak + (k + 1) * win] ** 2)) for k in range(6)]
    assert all(a > b for a, b in zip(energy, energy[1:], strict=False))
    assert 10 * math.log10(energy[0] / energy[5]) > 15  # RT60 0.5 s: 60 dB in 0.5 s


def test_corrupt_snr_length_and_determinism() -> None:
    speech = speechlike(np.random.default_rng(2), 1.2)
    for noise in ("white", "pink"):
        config = FarfieldConfig(seed=5, snr_range=(0.0, 20.0), noise_types=(noise,),
                                room=RoomSpec(max_order=30))
        noisy, reverberant, meta = corrupt(speech, SR, "utt", config)
        assert len(noisy) == len(reverberant) == len(speech)
        assert meta["noise"] == noise and meta["rir"].startswith("simulated:")
        assert 0 <= meta["snr_db"] <= 20 and 0 < meta["gain"] <= 1
        assert measured_snr_db(reverberant, noisy / meta["gain"]) == pytest.approx(
            meta["snr_db"], abs=0.5)
        again = corrupt(speech, SR, "utt", config)
        assert np.array_equal(again[0], noisy) and again[2] == meta
        other = corrupt(speech, SR, "utt2", config)
        assert other[2]["snr_db"] != meta["snr_db"]


def test_far_field_copy_stays_aligned_with_the_clean_speech() -> None:
    """The paired frames line up: in simulated rooms the reverberant copy's cross-correlation
    with the clean speech peaks within 1 ms of lag 0 (the propagation delay is cut at the direct
    path; a tenth of the 10 ms frame shift), so frame t of the far-field features is frame t of
    the clean ones. Without the cut the lag is the source-microphone distance / c (several ms)."""
    rng = np.random.default_rng(4)  # broadband bursts: a harmonic signal's xcorr is periodic
    speech = (0.1 * rng.standard_normal(SR) * (np.arange(SR) % 4000 < 2500)).astype(np.float32)
    for seed in range(4):
        config = FarfieldConfig(seed=seed, snr_range=(20.0, 20.0), noise_types=("white",),
                                room=RoomSpec(max_order=30))
        _, reverberant, meta = corrupt(speech, SR, f"utt{seed}", config)
        xcorr = np.correlate(reverberant.astype(np.float64), speech.astype(np.float64), "full")
        lag = int(np.argmax(np.abs(xcorr))) - (len(speech) - 1)
        assert abs(lag) <= SR // 1000, (meta["rir"], lag)


# --------------------------------------------------------------------------- corpus

def run(clean: Path, out: Path, jobs: int = 1, **kwargs) -> Path:
    config = FarfieldConfig(**{"room": RoomSpec(max_order=30), **kwargs})
    return farfield_corpus(clean, out, config, jobs=jobs, progress=False)


def test_corpus_manifest_links_and_snr(clean: Path, tmp_path: Path) -> None:
    out = run(clean, tmp_path / "a", seed=0)
    assert out == tmp_path / "a" / "test.jsonl"
    inputs = {r["id"]: r for r in rows(clean)}
    got = rows(out)
    assert [r["clean_id"] for r in got] == list(inputs)
    config = FarfieldConfig(seed=0, room=RoomSpec(max_order=30))
    entries = {e.id: e for e in read_manifest(clean)}
    for r in got:
        src = inputs[r["clean_id"]]
        assert r["id"] == src["id"] + ID_SUFFIX
        assert (r["text"], r["speaker"], r["duration"]) == (src["text"], src["speaker"],
                                                            src["duration"])
        assert (out.parent / r["clean_audio_filepath"]).resolve() == (
            clean.parent / src["audio_filepath"]).resolve()
        noisy, sr = read_audio(out.parent / r["audio_filepath"])
        speech, _ = read_audio(clean.parent / src["audio_filepath"])
        assert sr == SR and noisy.shape == speech.shape  # same length as the clean input
        _, reverberant, meta = corrupt(speech[0], SR, r["clean_id"], config,
                                       list(entries.values()))
        assert {k: r[k] for k in meta} == meta
        assert measured_snr_db(reverberant, noisy[0] / r["gain"]) == pytest.approx(
            r["snr_db"], abs=0.5)
        if r["noise"] == "babble":
            assert r["clean_id"] not in r["babble_ids"] and set(r["babble_ids"]) <= set(inputs)
    assert {r["noise"] for r in got} <= {"white", "pink", "babble"}


def test_deterministic_and_independent_of_jobs(clean: Path, tmp_path: Path) -> None:
    run(clean, tmp_path / "a", seed=0)
    run(clean, tmp_path / "b", seed=0, jobs=2)
    a = tree(tmp_path / "a")
    assert tree(tmp_path / "b") == a
    run(clean, tmp_path / "c", seed=1)
    c = tree(tmp_path / "c")
    assert c.keys() == a.keys()
    assert all(c[k] != a[k] for k in a if k.endswith(".wav"))


def test_resume_remakes_only_missing_files(clean: Path, tmp_path: Path) -> None:
    out = run(clean, tmp_path / "r", seed=0).parent
    before = tree(out)
    wavs = sorted((out / "wavs").glob("*.wav"))
    victim = wavs[2]
    victim.unlink()
    (out / "test.jsonl").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in wavs if p != victim}
    run(clean, out, seed=0)
    assert tree(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # other settings into the same folder: an error (nothing overwritten) without force; with
    # force everything is re-made (no stale files reused)
    with pytest.raises(FileExistsError, match="other settings.*--force"):
        run(clean, out, seed=0, snr_range=(5.0, 5.0))
    assert tree(out) == before
    config = FarfieldConfig(seed=0, snr_range=(5.0, 5.0), room=RoomSpec(max_order=30))
    farfield_corpus(clean, out, config, jobs=1, progress=False, force=True)
    assert all(r["snr_db"] == 5.0 for r in rows(out / "test.jsonl"))


def test_real_noise_and_rir(clean: Path, tmp_path: Path, shared_data: Path) -> None:
    folder = shared_data / "noise_rir"
    noise_dir, rir_dir = folder / "noise", folder / "rir"
    noise_files, rir_files = list_audio(noise_dir, "noise"), list_audio(rir_dir, "RIR")
    config = dict(seed=3, noise_types=(), noise_files=noise_files, noise_dir=str(noise_dir),
                  rir_files=rir_files, rir_dir=str(rir_dir))
    out = run(clean, tmp_path / "real", **config)
    entries = {e.id: e for e in read_manifest(clean)}
    for r in rows(out):
        assert r["noise"] in noise_files and r["rir"] in rir_files
        noisy, _ = read_audio(out.parent / r["audio_filepath"])
        speech, _ = read_audio(entries[r["clean_id"]].path)
        _, reverberant, _ = corrupt(speech[0], SR, r["clean_id"], FarfieldConfig(**config))
        assert noisy.shape == speech.shape
        assert measured_snr_db(reverberant, noisy[0] / r["gain"]) == pytest.approx(
            r["snr_db"], abs=0.5)


def test_unreadable_audio_names_manifest_line(clean: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(clean.parent, root)
    (root / "wavs" / "u2.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError, match=r"test\.jsonl:3: .*u2\.wav"):
        run(root / "test.jsonl", tmp_path / "o", seed=0)
    (root / "wavs" / "u2.wav").unlink()
    with pytest.raises(ValueError, match=r"test\.jsonl:3: .*not found"):
        run(root / "test.jsonl", tmp_path / "o", seed=0)


def test_cli(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["data", "farfield", "--in", str(clean), "--out", str(out), "--snr", "5",
            "--noise-type", "pink", "--max-order", "20", "--rooms", "2", "--jobs", "1"]
    assert cli.main(argv) == 0
    got = rows(out / "test.jsonl")
    assert len(got) == N and all(r["snr_db"] == 5.0 and r["noise"] == "pink" for r in got)
    assert {r["room"] for r in got} <= {0, 1}
    assert sf.info(str(out / got[0]["audio_filepath"])).subtype == "PCM_16"
    assert cli.main(["data", "farfield", "--in", str(tmp_path / "none.jsonl"), "--out",
                     str(out)]) == 2
    assert "none.jsonl: manifest not found" in capsys.readouterr().err
