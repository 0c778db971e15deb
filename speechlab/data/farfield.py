"""Far-field corruption: reverberate speech with a room impulse response and add noise.

:func:`corrupt` makes the far-field copy of one utterance: the clean audio convolved with a room
impulse response (a real one, or a shoebox room simulated with pyroomacoustics:
:func:`simulate_shoebox_rir`) plus noise (recordings, or generated white, pink or babble noise)
at an SNR measured against the reverberant speech. The copy keeps the clean length and frames
(the RIR is aligned on its direct path) and is attenuated only if it would clip.
:func:`farfield_corpus` corrupts every utterance of a manifest into a folder (each random choice
seeded by (seed, clean id), so independent of ``jobs`` and of the manifest's order; resumable)
and writes the noisy manifest, whose lines name their clean source (``clean_id``).

The command is ``speechlab data farfield`` (:func:`speechlab.cli.data.farfield`; its help lists
the fields of the output manifest).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechlab.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from speechlab.parallel import init_worker, run_parallel

log = logging.getLogger(__name__)

SPEED_OF_SOUND = 343.0  # m/s, pyroomacoustics' default
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
NOISE_TYPES = ("white", "pink", "babble")
ID_SUFFIX = "__farfield"


# --------------------------------------------------------------------------- pure signal functions

def signal_power(x: np.ndarray) -> float:
    """Mean square of ``x`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` chosen so that
    ``10 log10(power(speech) / power(g * noise)) == snr_db`` (dB; power = mean square over the
    whole signal): :func:`torchaudio.functional.add_noise` in float64. ``noise`` must have the
    length of ``speech``; silent noise raises ``ValueError``; silent speech gets no noise (the
    SNR is then undefined)."""
    import torch  # here, not at the top: `speechlab data farfield` starts without torch
    from torchaudio.functional import add_noise

    speech = np.asarray(speech, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if speech.shape != noise.shape:
        raise ValueError(f"mix_at_snr: speech {speech.shape} and noise {noise.shape} differ in shape")
    if signal_power(noise) == 0.0:
        raise ValueError("mix_at_snr: the noise is silent")
    if signal_power(speech) == 0.0:
        return speech.copy()
    noisy = add_noise(torch.from_numpy(speech.astype(np.float64)),
                      torch.from_numpy(noise.astype(np.float64)),
                      torch.tensor(float(snr_db), dtype=torch.float64))
    return noisy.numpy().astype(np.float32)


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR in dB of ``noisy`` against the reference ``clean``: power(clean) / power(noisy - clean)."""
    clean = np.asarray(clean, dtype=np.float64)
    residual = np.asarray(noisy, dtype=np.float64) - clean
    return 10.0 * math.log10(signal_power(clean) / signal_power(residual))


def rir_onset(rir: np.ndarray, threshold: float = 0.2) -> int:
    """Index of the direct path: the first sample whose magnitude reaches ``threshold`` times
    the largest one."""
    mag = np.abs(rir)
    return int(np.argmax(mag >= threshold * mag.max()))


def align_rir(rir: np.ndarray, onset: int | None = None) -> np.ndarray:
    """Drop the propagation delay before the direct path (``onset``, detected by
    :func:`rir_onset` when omitted) and scale to unit energy, so that convolving keeps the
    speech in place and at about its level. Returns float32."""
    rir = np.asarray(rir, dtype=np.float64)
    if rir.size == 0 or not np.any(rir):
        raise ValueError("align_rir: the impulse response is empty or silent")
    rir = rir[rir_onset(rir) if onset is None else onset:]
    return (rir / np.sqrt(np.sum(rir * rir))).astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve ``speech`` with ``rir`` (both at the same rate;
    :func:`torchaudio.functional.fftconvolve` in float64), truncated to the length of
    ``speech`` (the reverberant tail past the end is dropped)."""
    import torch
    from torchaudio.functional import fftconvolve

    out = fftconvolve(torch.from_numpy(np.asarray(speech, np.float64)),
                      torch.from_numpy(np.asarray(rir, np.float64)))
    return out[: len(speech)].numpy().astype(np.float32)


def white_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian white noise, unit variance, ``n`` samples."""
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink (1/f power) noise, unit variance, ``n`` samples: white noise shaped in the
    frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = np.inf  # no DC
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return (x / (x.std() or 1.0)).astype(np.float32)


def loop_segment(x: np.ndarray, start: int, n: int) -> np.ndarray:
    """``n`` samples of ``x`` from ``start``, wrapping around (looping) as often as needed."""
    if len(x) == 0:
        raise ValueError("loop_segment: empty signal")
    return np.take(x, np.arange(start, start + n) % len(x))


def peak_limit(x: np.ndarray, peak: float = 0.9) -> tuple[np.ndarray, float]:
    """Attenuate ``x`` so its largest magnitude is at most ``peak``; returns ``(x, gain)``
    with ``gain <= 1`` (1 when no change was needed)."""
    m = float(np.max(np.abs(x))) if len(x) else 0.0
    gain = 1.0 if m <= peak else peak / m
    return (x * gain).astype(np.float32), gain


# --------------------------------------------------------------------------- room simulation

def simulate_shoebox_rir(
    room_dim: Sequence[float],
    rt60: float,
    source: Sequence[float],
    mic: Sequence[float],
    sample_rate: int,
    max_order: int | None = None,
) -> np.ndarray:
    """Impulse response (float32) from ``source`` to ``mic`` (metres) in a shoebox room of
    ``room_dim`` metres whose wall absorption gives ``rt60`` seconds by Sabine's formula
    (``pyroomacoustics.inverse_sabine``), by the image source method, reflection order capped at
    ``max_order``. Sample ``i`` is time ``i / sample_rate`` after emission: the direct path
    arrives at ``distance / 343 m/s`` (pyroomacoustics' fractional-delay lead is removed)."""
    import pyroomacoustics as pra

    absorption, order = pra.inverse_sabine(rt60, room_dim)
    if max_order is not None:
        order = min(order, max_order)
    room = pra.ShoeBox(list(room_dim), fs=sample_rate, materials=pra.Material(absorption),
                       max_order=order, air_absorption=False)
    room.add_source(list(source))
    room.add_microphone(np.asarray(mic, dtype=np.float64).reshape(3, 1))
    room.compute_rir()
    lead = pra.constants.get("frac_delay_length") // 2
    return np.asarray(room.rir[0][0][lead:], dtype=np.float32)


@dataclass(frozen=True)
class RoomSpec:
    """Ranges of the simulated rooms: dimensions in metres, RT60 in seconds, source-mic
    distance in metres, image-source reflection order cap. ``bank = 0`` simulates a fresh room
    per utterance; ``bank = K`` draws each utterance's room from K rooms fixed by the seed
    (each simulated once per process: much faster for large corpora)."""

    room_min: tuple[float, float, float] = (3.0, 3.0, 2.4)
    room_max: tuple[float, float, float] = (10.0, 8.0, 4.0)
    rt60_range: tuple[float, float] = (0.2, 0.8)
    distance_range: tuple[float, float] = (0.5, 4.0)
    max_order: int = 80
    bank: int = 0


def sample_room(rng: np.random.Generator, spec: RoomSpec) -> dict[str, Any]:
    """Draw a room, RT60, microphone and a source at a sampled distance inside it (0.3 m from
    walls, heights 0.5-2.0 m). Returns ``{"room_dim", "rt60", "source", "mic", "distance"}``."""
    import pyroomacoustics as pra

    margin = 0.3
    for _ in range(1000):
        dims = rng.uniform(spec.room_min, spec.room_max)
        rt60 = float(rng.uniform(*spec.rt60_range))
        distance = float(rng.uniform(*spec.distance_range))
        lo = np.array([margin, margin, 0.5])
        hi = np.array([dims[0] - margin, dims[1] - margin, min(2.0, dims[2] - margin)])
        mic = rng.uniform(lo, hi)
        azimuth = rng.uniform(0.0, 2 * np.pi)
        elevation = rng.uniform(-0.25, 0.25)
        direction = np.array([np.cos(azimuth) * np.cos(elevation),
                              np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])
        source = mic + distance * direction
        if np.any(source < lo) or np.any(source > hi):
            continue
        try:
            pra.inverse_sabine(rt60, dims)
        except ValueError:  # RT60 unreachable in this room (too short for its size)
            continue
        return {"room_dim": dims.tolist(), "rt60": rt60, "source": source.tolist(),
                "mic": mic.tolist(), "distance": distance}
    raise ValueError(f"could not place a source and microphone in rooms of {spec}")


def _simulated_room(room: dict[str, Any], max_order: int, sample_rate: int) -> tuple[np.ndarray, str]:
    """Simulate ``room`` (from :func:`sample_room`); returns the aligned RIR and its
    description ``simulated:<X>x<Y>x<Z>,<rt60>,<distance>`` (metres, seconds)."""
    raw = simulate_shoebox_rir(room["room_dim"], room["rt60"], room["source"], room["mic"],
                               sample_rate, max_order)
    direct = int(round(room["distance"] / SPEED_OF_SOUND * sample_rate))
    dims = "x".join(f"{d:.2f}" for d in room["room_dim"])
    return (align_rir(raw, onset=min(direct, len(raw) - 1)),
            f"simulated:{dims},{room['rt60']:.3f},{room['distance']:.2f}")


@functools.lru_cache(maxsize=1024)
def _bank_room(seed: int, index: int, spec: RoomSpec, sample_rate: int) -> tuple[np.ndarray, str]:
    """Room ``index`` of the seed's room bank (cached)."""
    rng = np.random.default_rng([seed, _id_hash("speechlab.farfield.room"), index])
    return _simulated_room(sample_room(rng, spec), spec.max_order, sample_rate)


# --------------------------------------------------------------------------- corpus

@dataclass(frozen=True)
class Entry:
    """One input utterance: manifest line number, clean id, resolved audio path, optional
    offset/duration (seconds) and the original manifest row."""

    lineno: int
    id: str
    path: Path
    offset: float
    duration: float | None
    row: dict = field(compare=False, hash=False)


@dataclass(frozen=True)
class FarfieldConfig:
    """Everything besides the input that determines the output. SNRs in dB, ``sample_rate``
    in Hz (None: keep each input's rate), ``babble_talkers`` an inclusive range."""

    seed: int = 0
    snr_range: tuple[float, float] = (0.0, 20.0)
    noise_types: tuple[str, ...] = NOISE_TYPES
    noise_files: tuple[str, ...] = ()
    noise_dir: str | None = None
    rir_files: tuple[str, ...] = ()
    rir_dir: str | None = None
    room: RoomSpec = RoomSpec()
    sample_rate: int | None = None
    babble_talkers: tuple[int, int] = (3, 6)
    peak: float = 0.9


def _id_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def utterance_rngs(seed: int, clean_id: str) -> tuple[np.random.Generator, ...]:
    """Independent generators for (RIR, noise, SNR) of one utterance, seeded by
    ``(seed, clean_id)`` only."""
    children = np.random.SeedSequence([seed, _id_hash(clean_id)]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def _safe_name(clean_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", clean_id).strip("._") or "utt"
    if name != clean_id:  # keep distinct ids distinct after sanitizing
        name += "-" + hashlib.sha1(clean_id.encode()).hexdigest()[:6]
    return name + ID_SUFFIX


@functools.lru_cache(maxsize=64)
def _load_mono(path: str, sample_rate: int) -> np.ndarray:
    """A whole file as mono float32 at ``sample_rate`` (channels averaged); cached."""
    from speechlab.data.audio import read_audio, resample

    x, sr = read_audio(path)
    return resample(x.mean(axis=0), sr, sample_rate).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _load_rir(path: str, sample_rate: int) -> np.ndarray:
    """A real RIR file: first channel, resampled, aligned on its direct path, unit energy."""
    from speechlab.data.audio import read_audio, resample

    x, sr = read_audio(path)
    return align_rir(resample(np.ascontiguousarray(x[0]), sr, sample_rate))


def _read_entry(entry: Entry, manifest: str) -> tuple[np.ndarray, int]:
    from speechlab.data.audio import read_audio

    try:
        x, sr = read_audio(entry.path, entry.offset, entry.duration)
    except (OSError, ValueError) as e:
        raise ValueError(f"{manifest}:{entry.lineno}: {e}") from None
    if x.shape[0] != 1:
        raise ValueError(f"{manifest}:{entry.lineno}: {entry.path}: "
                         f"{x.shape[0]} channels; far-field corruption needs mono audio")
    if x.shape[1] == 0:
        raise ValueError(f"{manifest}:{entry.lineno}: {entry.path}: no samples")
    return x[0], sr


def corrupt(
    speech: np.ndarray,
    sample_rate: int,
    entry_id: str,
    config: FarfieldConfig,
    babble_source: Sequence[Entry] = (),
    manifest: str = "",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Far-field version of ``speech`` (mono float32 at ``sample_rate`` Hz).

    Returns ``(noisy, reverberant, meta)``: ``noisy`` is peak-limited (``meta["gain"]``), so
    ``noisy / gain - reverberant`` is the added noise at ``meta["snr_db"]`` dB against
    ``reverberant``. ``meta`` also names the RIR and the noise.
    """
    from speechlab.data.audio import resample

    rir_rng, noise_rng, snr_rng = utterance_rngs(config.seed, entry_id)
    n = len(speech)
    meta: dict[str, Any] = {}

    # room impulse response
    if config.rir_files:
        name = config.rir_files[int(rir_rng.integers(len(config.rir_files)))]
        rir = _load_rir(str(Path(config.rir_dir or ".") / name), sample_rate)
        meta["rir"] = name
    else:
        if config.room.bank > 0:
            j = int(rir_rng.integers(config.room.bank))
            rir, desc = _bank_room(config.seed, j, config.room, sample_rate)
            meta["room"] = j
        else:
            rir, desc = _simulated_room(sample_room(rir_rng, config.room), config.room.max_order,
                                        sample_rate)
        meta["rir"] = desc
    reverberant = reverberate(speech, rir)

    # noise
    # recordings (as one category) and each generated type are equally likely
    sources = (["file"] if config.noise_files else []) + list(config.noise_types)
    kind = name = sources[int(noise_rng.integers(len(sources)))]
    if kind == "file":
        name = config.noise_files[int(noise_rng.integers(len(config.noise_files)))]
        full = _load_mono(str(Path(config.noise_dir or ".") / name), sample_rate)
        noise = loop_segment(full, int(noise_rng.integers(len(full))), n)
        for _ in range(10):  # a silent stretch of a recording: try another place
            if signal_power(noise) > 0:
                break
            noise = loop_segment(full, int(noise_rng.integers(len(full))), n)
        meta["noise"] = name
    elif name == "white":
        noise = white_noise(noise_rng, n)
        meta["noise"] = "white"
    elif name == "pink":
        noise = pink_noise(noise_rng, n)
        meta["noise"] = "pink"
    else:
        others = [e for e in babble_source if e.id != entry_id]
        if not others:
            raise ValueError("babble noise needs at least two utterances in the manifest")
        lo, hi = config.babble_talkers
        k = min(len(others), int(noise_rng.integers(lo, hi + 1)))
        picks = sorted(noise_rng.choice(len(others), size=k, replace=False).tolist())
        noise = np.zeros(n, dtype=np.float64)
        for i in picks:
            x, sr = _read_entry(others[i], manifest)
            x = resample(x, sr, sample_rate)
            p = signal_power(x)
            start = int(noise_rng.integers(len(x)))
            if p > 0:
                noise += loop_segment(x, start, n) / math.sqrt(p)
        meta["noise"] = "babble"
        meta["babble_ids"] = [others[i].id for i in picks]

    snr_db = float(snr_rng.uniform(*config.snr_range))
    noisy = mix_at_snr(reverberant, noise, snr_db)
    noisy, gain = peak_limit(noisy, config.peak)
    meta["snr_db"] = round(snr_db, 3)
    meta["gain"] = round(gain, 6)
    return noisy, reverberant, meta


# --------------------------------------------------------------------------- worker

_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any], pool: bool = True) -> None:
    _STATE.clear()
    _STATE.update(state)
    if pool:
        init_worker()


def _render(index: int) -> tuple[int, dict[str, Any]]:
    """Corrupt entry ``index`` of the worker's state and write WAV + sidecar; returns the row."""
    from speechlab.data.audio import resample, write_audio

    entries: list[Entry] = _STATE["entries"]
    config: FarfieldConfig = _STATE["config"]
    out_dir: Path = _STATE["out_dir"]
    manifest: str = _STATE["manifest"]
    entry = entries[index]
    speech, sr = _read_entry(entry, manifest)
    if config.sample_rate and config.sample_rate != sr:
        speech, sr = resample(speech, sr, config.sample_rate), config.sample_rate
    noisy, _, meta = corrupt(speech, sr, entry.id, config, entries, manifest)
    wav = out_dir / "wavs" / (_safe_name(entry.id) + ".wav")
    row = _output_row(entry, wav, out_dir, len(noisy) / sr, meta)
    write_audio(wav, noisy, sr)
    atomic_write_text(wav.with_suffix(".json"),
                      json.dumps({"key": _STATE["keys"][index], "row": row}, ensure_ascii=False))
    return index, row


def _output_row(entry: Entry, wav: Path, out_dir: Path, duration: float,
                meta: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in entry.row.items() if k not in ("id", "audio_filepath", "offset",
                                                             "duration")}
    return {
        "id": entry.id + ID_SUFFIX,
        "audio_filepath": wav.relative_to(out_dir).as_posix(),
        "duration": round(duration, 4),
        **row,
        "clean_id": entry.id,
        "clean_audio_filepath": (entry.path.as_posix()
                                 if Path(entry.row["audio_filepath"]).is_absolute()
                                 else Path(os.path.relpath(entry.path, out_dir)).as_posix()),
        **({"clean_offset": entry.offset} if entry.offset else {}),
        **meta,
    }


# --------------------------------------------------------------------------- driver

def read_manifest(path: str | Path) -> list[Entry]:
    """Entries of a NeMo-style JSONL manifest; errors name the manifest, line and reason. An
    entry without ``"id"`` is named after its audio file's stem, as ``load_cuts`` names it."""
    from speechlab.data.audio import audio_info

    path = Path(path)
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for lineno, row in read_jsonl(path, ValueError, "manifest"):
        if "audio_filepath" not in row:
            raise ValueError(f"{path}:{lineno}: no \"audio_filepath\"")
        audio = Path(row["audio_filepath"])
        audio = Path(os.path.abspath(audio if audio.is_absolute() else path.parent / audio))
        if audio.is_dir():
            raise ValueError(f"{path}:{lineno}: {audio}: a directory, not an audio file")
        if not audio.is_file():
            raise ValueError(f"{path}:{lineno}: {audio}: audio file not found")
        # the id load_cuts gives such an entry (file stem), so clean_id links to the clean cut
        clean_id = str(row.get("id") or Path(row["audio_filepath"]).stem)
        if clean_id in seen:
            raise ValueError(f"{path}:{lineno}: id {clean_id!r} repeats line {seen[clean_id]}")
        seen[clean_id] = lineno
        try:
            info = audio_info(audio)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        if info.channels != 1:
            raise ValueError(f"{path}:{lineno}: {audio}: {info.channels} channels; "
                             "far-field corruption needs mono audio")
        offset = float(row.get("offset") or 0.0)
        duration = float(row["duration"]) if offset and "duration" in row else None
        entries.append(Entry(lineno, clean_id, audio, offset, duration, row))
    if not entries:
        raise ValueError(f"{path}: manifest has no utterances")
    return entries


def list_audio(folder: str | Path, what: str) -> tuple[str, ...]:
    """Audio files under ``folder`` (recursively), as sorted POSIX paths relative to it."""
    from speechlab.data.audio import audio_info

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) for {what}")
    for f in files:
        audio_info(folder / f)  # unreadable -> AudioError naming the file
    return files


def _keys(entries: Sequence[Entry], config: FarfieldConfig) -> list[str]:
    """Per-utterance fingerprint of everything the output depends on (resume checks it)."""
    common = json.dumps(asdict(config), sort_keys=True, default=str)
    if "babble" in config.noise_types:
        common += json.dumps([(e.id, str(e.path), e.offset, e.duration) for e in entries])
    base = hashlib.sha1(common.encode())
    keys = []
    for e in entries:
        h = base.copy()
        h.update(json.dumps([e.id, str(e.path), e.offset, e.duration]).encode())
        keys.append(h.hexdigest())
    return keys


def _finished(wav: Path, key: str) -> dict[str, Any] | None:
    sidecar = wav.with_suffix(".json")
    if not (wav.is_file() and sidecar.is_file()):
        return None
    try:
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved["row"] if saved.get("key") == key else None


def farfield_corpus(
    manifest: str | Path,
    out_dir: str | Path,
    config: FarfieldConfig = FarfieldConfig(),
    jobs: int = 2,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Corrupt every utterance of ``manifest`` into ``out_dir``; returns the output manifest
    ``out_dir/<manifest stem>.jsonl``. Finished utterances are kept (resume); outputs made with
    other settings are an error (``FileExistsError``) unless ``force``, which overwrites them."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    out_manifest = out_dir / (manifest.name[: -len(".jsonl")] if manifest.name.endswith(".jsonl")
                              else manifest.stem)
    out_manifest = out_manifest.with_name(out_manifest.name + ".jsonl")
    if out_manifest.resolve() == manifest.resolve():
        raise ValueError(f"{out_manifest}: would overwrite the input manifest; choose another --out")
    lo, hi = config.snr_range
    if lo > hi:
        raise ValueError(f"SNR range {lo} {hi}: low end above high end")
    if not config.noise_files and not config.noise_types:
        raise ValueError("no noise source: give --noise-dir or --noise-type")
    entries = read_manifest(manifest)
    if "babble" in config.noise_types and len(entries) < 2:
        raise ValueError(f"{manifest}: babble noise needs at least two utterances")
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)

    keys = _keys(entries, config)
    rows: dict[int, dict[str, Any]] = {}
    other: list[Path] = []
    for i, e in enumerate(entries):
        wav = out_dir / "wavs" / (_safe_name(e.id) + ".wav")
        row = _finished(wav, keys[i])
        if row is not None:
            rows[i] = row
        elif wav.is_file():
            other.append(wav)
    if other and not force:
        raise FileExistsError(
            f"{out_dir}: {len(other)} far-field WAV(s) made with other settings (another --seed, "
            f"SNR, noise, room or input) would be overwritten, e.g. {other[0]}; pass --force to "
            f"overwrite them or choose another --out")
    if out_manifest.is_file() and not force:
        try:
            listed = [json.loads(line).get("id") for line in
                      out_manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, ValueError, AttributeError):
            listed = None
        if listed != [e.id + ID_SUFFIX for e in entries]:
            raise FileExistsError(
                f"{out_manifest}: exists and lists other utterances than {manifest}; pass "
                f"--force to overwrite it or choose another --out")
    if rows:
        log.info("resuming: %d of %d utterances already corrupted", len(rows), len(entries))
    todo = [i for i in range(len(entries)) if i not in rows]
    state = {"entries": entries, "config": config, "out_dir": out_dir,
             "manifest": str(manifest), "keys": keys}
    if jobs <= 1 or len(todo) <= 1:
        _init_worker(state, pool=False)
    for index, row in run_parallel(todo, _render, jobs, "farfield", len(entries), len(rows),
                                   progress, initializer=_init_worker, initargs=(state,)):
        rows[index] = row
    atomic_write_jsonl(out_manifest, (rows[i] for i in range(len(entries))))
    hours = sum(r["duration"] for r in rows.values()) / 3600
    log.info("%d far-field utterances (%.2f h) in %s", len(rows), hours, out_manifest)
    return out_manifest
