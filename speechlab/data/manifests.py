"""Validate a speech manifest (NeMo-style JSONL or lhotse cuts) and report every bad line.

A manifest is JSON lines, one utterance per line::

    {"audio_filepath": "wavs/0001.wav", "duration": 1.92, "text": "turn on the lights"}

with optional ``offset`` (seconds into the file), ``speaker`` and ``id``; any other field (e.g.
``clean_id`` of paired far-field data, ``domain``) is kept in the cut's ``custom`` dict. Relative
paths resolve against the manifest's folder. lhotse cut manifests (``*.jsonl[.gz]`` whose lines
carry lhotse's ``"type": "MonoCut"`` etc.) are accepted too and go through the same checks.

:func:`load_cuts` turns a manifest into a lhotse ``CutSet`` plus a :class:`ValidationReport`.
Every problem is named by manifest path, line number and reason; bad utterances are skipped,
counted and logged (``on_error="skip"``) or raise :class:`ManifestError` (``on_error="raise"``).
Never skipped, always an error: malformed JSON (a corrupt manifest is not a bad utterance), a
sample rate other than the recipe's when resampling is off, and a manifest with nothing left.

Reason categories (the text before the first ``:`` of a reason): ``missing field``,
``bad field``, ``bad cut``, ``duplicate id``, ``audio not found``, ``audio is a directory``,
``unreadable audio`` (garbage bytes, truncated or undecodable files), ``empty audio`` (no
samples), ``multi-channel``, ``non-finite samples``, ``empty text``, ``OOV-only text``,
``OOV characters``, ``duration mismatch``, ``bad offset``, ``too short``.

The manifest is UTF-8, with or without a byte-order mark (:func:`speechlab.io.open_text`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import gzip
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.cut import Cut, MixedCut
from lhotse.cut.data import DataCut
from lhotse.serialization import deserialize_item
from lhotse.utils import fastcopy

from speechlab.data.audio import AudioError, audio_info
from speechlab.data.text import CharVocab, normalize_text
from speechlab.errors import InputError
from speechlab.io import atomic_path, atomic_write_jsonl, read_jsonl

__all__ = [
    "ManifestError",
    "ManifestIssue",
    "ValidationReport",
    "read_manifest",
    "manifest_texts",
    "load_cuts",
    "write_manifest",
    "ctc_min_frames",
]

logger = logging.getLogger("speechlab.data")

#: Fields a NeMo-style entry must have. ``duration`` is optional: when present it is checked
#: against the audio, when absent it is taken from the audio.
REQUIRED_FIELDS: tuple[str, ...] = ("audio_filepath", "text")
#: Fields that map onto the cut itself; everything else goes to ``cut.custom``.
CORE_FIELDS: frozenset[str] = frozenset(
    {"audio_filepath", "duration", "text", "offset", "speaker", "id"}
)
LHOTSE_CUT_TYPES: frozenset[str] = frozenset({"MonoCut", "MultiCut", "MixedCut", "Cut"})
#: Per-issue WARNING lines before the log switches to one summary line.
LOG_LIMIT = 20
_BLOCK_FRAMES = 1 << 18  # samples per read when scanning audio (bounded memory for long files)


class ManifestError(InputError):
    """A manifest that cannot be used; the message reads ``"<manifest path>:<line>: <reason>"``.

    ``report`` holds the :class:`ValidationReport` when the error is raised after validation
    (e.g. every entry was skipped), else ``None``.
    """

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ManifestIssue:
    """One problem with one manifest line."""

    manifest: str
    line: int
    reason: str
    utt_id: str | None = None

    @property
    def category(self) -> str:
        """The reason's category: its text before the first ``":"`` (e.g. ``"too short"``)."""
        return self.reason.split(":", 1)[0].strip()

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason}"


@dataclass
class ValidationReport:
    """What :func:`load_cuts` kept and skipped."""

    manifest: str
    total: int
    kept: int
    issues: list[ManifestIssue] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    def counts_by_reason(self) -> dict[str, int]:
        """Reason category -> number of issues, most frequent first."""
        return dict(collections.Counter(i.category for i in self.issues).most_common())

    def summary(self) -> str:
        """One line, e.g. ``"train.jsonl: kept 1790/1800, skipped 10 (duration mismatch: 4, ...)"``."""
        line = f"{self.manifest}: kept {self.kept}/{self.total}, skipped {self.skipped}"
        counts = self.counts_by_reason()
        if counts:
            line += " (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"
        return line

    def coverage(self, scored: int) -> str:
        """What an evaluation of this manifest covered, e.g. ``"scored 297 of 300 utterances
        of test.jsonl, skipped 3 (unreadable audio: 3)"`` (``scored``: utterances decoded)."""
        line = f"scored {scored} of {self.total} utterances of {self.manifest}"
        counts = self.counts_by_reason()
        if counts:
            line += f", skipped {self.skipped} (" + ", ".join(
                f"{k}: {v}" for k, v in counts.items()) + ")"
        return line


# ------------------------------------------------------------------------------------- reading


def _is_lhotse_cut(entry: dict) -> bool:
    kind = entry.get("type")
    return isinstance(kind, str) and kind in LHOTSE_CUT_TYPES


def _iter_entries(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line, entry) for every non-blank line; raises ManifestError on bad JSON / non-objects."""
    return read_jsonl(path, ManifestError, "manifest")


def _missing_fields(entry: dict) -> list[str]:
    if _is_lhotse_cut(entry):
        return []
    return [k for k in REQUIRED_FIELDS if k not in entry or entry[k] is None]


def read_manifest(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number (1-based), entry)`` for each non-blank line of a JSONL manifest
    (``.gz`` is read transparently). Raises :class:`ManifestError` on malformed JSON, a line that
    is not a JSON object, or a NeMo-style entry missing a required field (lhotse cut lines are
    passed through as dicts)."""
    for lineno, entry in _iter_entries(path):
        missing = _missing_fields(entry)
        if missing:
            raise ManifestError(f"{path}:{lineno}: missing field: {', '.join(map(repr, missing))}")
        yield lineno, entry


def manifest_texts(path: str | os.PathLike, normalize: bool = True) -> list[str]:
    """The transcripts of a manifest (NeMo-style ``"text"`` or lhotse cuts' first supervision),
    normalized with speechlab's normalizer unless ``normalize=False``; errors name the file and
    line."""
    texts = []
    for line, entry in read_manifest(path):
        if "supervisions" in entry:
            sups = entry.get("supervisions") or [{}]
            text = sups[0].get("text")
        else:
            text = entry.get("text")
        if not isinstance(text, str):
            raise ManifestError(f"{path}:{line}: no transcript text")
        texts.append(normalize_text(text) if normalize else text)
    return texts


def write_manifest(path: str | os.PathLike, entries: Iterable[dict]) -> int:
    """Write entries as JSON lines (gzipped for ``*.gz``), atomically; returns the number of
    lines written."""
    if Path(path).suffix != ".gz":
        return atomic_write_jsonl(path, entries)
    n = 0
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            n += 1
    return n


# ------------------------------------------------------------------------------------- checks


class _Skip(Exception):
    """A skippable problem with one entry; the message is the reason."""


class _Fatal(Exception):
    """A problem with the run's settings that no skip can fix (wrong sample rate)."""


@dataclass
class _Checked:
    """Result of checking one entry: a cut (kept) or a reason (skipped)."""

    line: int
    cut: Cut | None = None
    reason: str | None = None
    fatal: str | None = None
    utt_id: str | None = None
    # NeMo entries: the cut is built in the main thread (ids need the whole manifest)
    nemo: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Settings:
    vocab: CharVocab | None
    sample_rate: int
    resample: bool
    output_frame_rate: float | None
    check_samples: bool
    max_duration_mismatch: float


def ctc_min_frames(target: str) -> int:
    """Frames CTC needs to emit ``target``: one per character plus a blank between each pair
    of equal adjacent characters."""
    return len(target) + sum(1 for a, b in zip(target, target[1:], strict=False) if a == b)


def _check_text(raw: Any, vocab: CharVocab | None) -> str:
    """Normalized text, or :class:`_Skip` for empty / OOV text."""
    if not isinstance(raw, str):
        raise _Skip(f"bad field: 'text' must be a string, got {type(raw).__name__}")
    text = normalize_text(raw)
    if not text:
        raise _Skip(f"empty text: {raw!r} normalizes to ''")
    if vocab is not None:
        oov = vocab.oov_chars(text)
        if oov:
            shown = "".join(sorted(oov))
            if not any(c in vocab.chars for c in text if not c.isspace()):
                raise _Skip(
                    f"OOV-only text: no character of {text!r} is in the vocabulary ({shown!r} are not)"
                )
            raise _Skip(f"OOV characters: {shown!r} in {text!r}")
    return text


def _check_length(duration: float, text: str, rate: float | None) -> None:
    if rate is None:
        return
    frames = math.floor(duration * rate + 1e-6)
    needed = ctc_min_frames(text)
    if frames < needed:
        raise _Skip(
            f"too short: {frames} frames at {rate:g} Hz < {needed} needed for {len(text)} characters "
            f"({duration:.2f} s)"
        )


def _sample_rate_error(where: str, sr: int, expected: int) -> str:
    return (
        f"sample rate: {where} is {sr} Hz, the recipe expects {expected} Hz; set `resample: true` "
        f"in the recipe's data section (--resample on the command line) to resample on load"
    )


def _header(path: Path) -> sf._SoundFileInfo:
    if path.is_dir():
        raise _Skip(f"audio is a directory: {path} (an audio file expected)")
    if not path.is_file():
        raise _Skip(f"audio not found: {path}")
    try:
        return audio_info(path)
    except FileNotFoundError as e:
        raise _Skip(f"audio not found: {path}") from e
    except AudioError as e:
        raise _Skip(f"unreadable audio: {e}") from e


def _scan_samples(path: Path, start: int, frames: int) -> None:
    """Read ``frames`` samples from ``start``: catches undecodable data and NaN/inf samples."""
    n_read = n_nan = n_inf = 0
    try:
        with sf.SoundFile(str(path)) as f:
            if start:
                f.seek(start)
            while n_read < frames:
                block = f.read(min(_BLOCK_FRAMES, frames - n_read), dtype="float32")
                if len(block) == 0:
                    break
                n_read += len(block)
                if not np.isfinite(block).all():
                    n_nan += int(np.isnan(block).sum())
                    n_inf += int(np.isinf(block).sum())
    except Exception as e:  # libsndfile errors on undecodable data
        raise _Skip(f"unreadable audio: {path}: corrupt audio ({e})") from e
    if n_read < frames:
        raise _Skip(
            f"unreadable audio: {path}: truncated audio (read {n_read} of {frames} samples)"
        )
    if n_nan or n_inf:
        raise _Skip(f"non-finite samples: {n_nan} NaN, {n_inf} inf in {path}")


def _number(entry: dict, key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Skip(f"bad field: {key!r} must be a finite number, got {value!r}")
    if value < 0:
        raise _Skip(f"bad field: {key!r} must be >= 0, got {value!r}")
    return float(value)


def _check_nemo(line: int, entry: dict, base: Path, s: _Settings) -> _Checked:
    missing = _missing_fields(entry)
    if missing:
        raise _Skip(f"missing field: {', '.join(map(repr, missing))}")
    if not isinstance(entry["audio_filepath"], str) or not entry["audio_filepath"]:
        raise _Skip(f"bad field: 'audio_filepath' must be a path, got {entry['audio_filepath']!r}")
    offset = _number(entry, "offset")
    duration = _number(entry, "duration")
    text = _check_text(entry["text"], s.vocab)

    path = Path(entry["audio_filepath"]).expanduser()
    if not path.is_absolute():
        path = base / path
    info = _header(path)
    if info.channels != 1:
        raise _Skip(f"multi-channel: {info.channels} channels in {path} (mono audio expected)")
    sr, total = info.samplerate, info.frames
    if total == 0:
        raise _Skip(f"empty audio: {path} has no samples")
    if sr != s.sample_rate and not s.resample:
        raise _Fatal(_sample_rate_error(str(path), sr, s.sample_rate))
    length = total / sr
    start = offset or 0.0
    if start >= length:
        raise _Skip(f"bad offset: offset {start:.2f} s is past the end of {path} ({length:.2f} s)")
    available = length - start
    tol = s.max_duration_mismatch
    if duration is not None:
        if offset is None and abs(duration - length) > tol:
            raise _Skip(
                f"duration mismatch: manifest says {duration:.2f} s, {path} is {length:.2f} s"
            )
        if offset is not None and duration - available > tol:
            raise _Skip(
                f"duration mismatch: segment {start:.2f}+{duration:.2f} s ends past the end of "
                f"{path} ({length:.2f} s)"
            )
    # a whole-file entry covers the whole file; a segment its window (clipped to the file)
    cut_duration = available if offset is None or duration is None else min(duration, available)
    if cut_duration <= 0:
        raise _Skip(f"bad field: 'duration' must be > 0, got {duration!r}")
    _check_length(cut_duration, text, s.output_frame_rate)
    if s.check_samples:
        first = round(start * sr)
        _scan_samples(path, first, min(round(cut_duration * sr), total - first))
    return _Checked(
        line,
        utt_id=entry.get("id"),
        nemo={
            "path": path,
            "sr": sr,
            "frames": total,
            "offset": start,
            "duration": cut_duration,
            "has_offset": offset is not None,
            "text": text,
            "speaker": entry.get("speaker"),
            "id": None if entry.get("id") is None else str(entry["id"]),
            "custom": {k: v for k, v in entry.items() if k not in CORE_FIELDS},
        },
    )


def _map_data_cuts(cut: Cut, fn: Callable[[DataCut], DataCut]) -> Cut:
    """Apply ``fn`` to a DataCut or to each DataCut track of a MixedCut."""
    if isinstance(cut, DataCut):
        return fn(cut)
    if isinstance(cut, MixedCut):
        return fastcopy(
            cut,
            tracks=[fastcopy(t, cut=_map_data_cuts(t.cut, fn)) for t in cut.tracks],
        )
    return cut


def _data_cuts(cut: Cut) -> list[DataCut]:
    if isinstance(cut, DataCut):
        return [cut]
    if isinstance(cut, MixedCut):
        return [c for t in cut.tracks for c in _data_cuts(t.cut)]
    return []


def _resolve_sources(cut: DataCut, base: Path) -> DataCut:
    """Relative file sources resolve against the manifest folder first, then the working
    directory (lhotse's own convention)."""
    rec = cut.recording
    if rec is None:
        return cut
    sources = []
    changed = False
    for src in rec.sources:
        if src.type == "file" and isinstance(src.source, str) and not os.path.isabs(src.source):
            candidate = base / src.source
            if candidate.exists() or not Path(src.source).exists():
                src = fastcopy(src, source=str(candidate))
                changed = True
        sources.append(src)
    return fastcopy(cut, recording=fastcopy(rec, sources=sources)) if changed else cut


def _check_lhotse(line: int, entry: dict, base: Path, s: _Settings) -> _Checked:
    try:
        cut = deserialize_item(dict(entry))
    except Exception as e:
        raise _Skip(
            f"bad cut: not a valid lhotse {entry.get('type')} ({type(e).__name__}: {e})"
        ) from e
    # lhotse does not check field types: a cut must have a string id and a positive duration
    if not isinstance(cut.id, str) or not cut.id:
        raise _Skip(f"bad cut: 'id' must be a non-empty string, got {cut.id!r}")
    duration = getattr(cut, "duration", None)
    if isinstance(duration, bool) or not isinstance(duration, int | float) \
            or not math.isfinite(duration) or duration <= 0:
        raise _Skip(f"bad cut: 'duration' must be a positive number, got {duration!r}")
    sups = [sup for sup in cut.supervisions if sup.text is not None]
    if not sups:
        raise _Skip("missing field: 'text' (no supervision with text)")
    normalized = {sup.id: normalize_text(sup.text) for sup in sups}
    joined = " ".join(t for t in normalized.values() if t)
    text = _check_text(joined or " ".join(sup.text for sup in sups), s.vocab)
    cut = _map_data_cuts(cut, lambda c: _resolve_sources(c, base))
    if not cut.has_recording:
        raise _Skip("missing field: 'recording' (the cut has no audio)")
    for dc in _data_cuts(cut):
        rec = dc.recording
        if rec is None:
            continue
        for src in rec.sources:
            if src.type != "file":
                continue
            info = _header(Path(src.source))
            # transforms (speed perturbation, ...) change the recording's duration on purpose
            if (
                not rec.transforms
                and abs(info.frames / info.samplerate - rec.duration) > s.max_duration_mismatch
            ):
                raise _Skip(
                    f"duration mismatch: recording {rec.id!r} says {rec.duration:.2f} s, "
                    f"{src.source} is {info.frames / info.samplerate:.2f} s"
                )
    if cut.num_channels != 1:
        raise _Skip(
            f"multi-channel: {cut.num_channels} channels in cut {cut.id!r} (mono audio expected)"
        )
    if cut.sampling_rate != s.sample_rate and not s.resample:
        raise _Fatal(_sample_rate_error(f"cut {cut.id!r}", cut.sampling_rate, s.sample_rate))

    _check_length(cut.duration, text, s.output_frame_rate)
    if s.check_samples:
        try:
            audio = cut.load_audio()
        except Exception as e:
            raise _Skip(f"unreadable audio: cut {cut.id!r}: {type(e).__name__}: {e}") from e
        if audio is not None and not np.isfinite(audio).all():
            raise _Skip(
                f"non-finite samples: {int(np.isnan(audio).sum())} NaN, "
                f"{int(np.isinf(audio).sum())} inf in cut {cut.id!r}"
            )

    def renormalize(dc: DataCut) -> DataCut:
        return fastcopy(
            dc,
            supervisions=[
                fastcopy(sup, text=normalized[sup.id]) if sup.id in normalized else sup
                for sup in dc.supervisions
            ],
        )

    cut = _map_data_cuts(cut, renormalize)
    if cut.sampling_rate != s.sample_rate:
        cut = cut.resample(s.sample_rate)
    return _Checked(line, cut=cut, utt_id=cut.id)


def _check(line: int, entry: dict, base: Path, s: _Settings) -> _Checked:
    utt_id = entry.get("id") if isinstance(entry.get("id"), str) else None
    lhotse = _is_lhotse_cut(entry)
    try:
        if lhotse:
            return _check_lhotse(line, entry, base, s)
        return _check_nemo(line, entry, base, s)
    except _Skip as e:
        return _Checked(line, reason=str(e), utt_id=utt_id)
    except _Fatal as e:
        return _Checked(line, fatal=str(e), utt_id=utt_id)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as e:
        if not lhotse:
            raise
        # lhotse builds cuts without checking field types; a malformed one fails on first use
        return _Checked(line, reason=f"bad cut: malformed lhotse {entry['type']} "
                                     f"({type(e).__name__}: {e})", utt_id=utt_id)


# ------------------------------------------------------------------------------------- cut ids


def _path_hash(path: Path) -> str:
    return hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:8]


def _build_nemo_cut(cut_id: str, rec_id: str, d: dict[str, Any]) -> Cut:
    sr, frames = d["sr"], d["frames"]
    recording = Recording(
        id=rec_id,
        sources=[AudioSource(type="file", channels=[0], source=str(d["path"]))],
        sampling_rate=sr,
        num_samples=frames,
        duration=frames / sr,
    )
    cut: Cut = MonoCut(
        id=cut_id,
        start=d["offset"],
        duration=d["duration"],
        channel=0,
        recording=recording,
        supervisions=[
            SupervisionSegment(
                id=cut_id,
                recording_id=rec_id,
                start=0.0,
                duration=d["duration"],
                channel=0,
                text=d["text"],
                speaker=None if d["speaker"] is None else str(d["speaker"]),
            )
        ],
        custom=d["custom"] or None,
    )
    return cut


class _Ids:
    """Assigns cut and recording ids in manifest order (stable for a given manifest):
    the entry's ``id``, else the file stem (+ ``-<offset in ms>`` for segments); a stem that two
    different files share gets a hash of the path appended."""

    def __init__(self) -> None:
        self.rec_ids: dict[Path, str] = {}
        self.rec_owner: dict[str, Path] = {}
        self.cut_lines: dict[str, int] = {}

    def recording_id(self, path: Path) -> str:
        if path not in self.rec_ids:
            rec_id = path.stem
            if rec_id in self.rec_owner:
                rec_id = f"{path.stem}-{_path_hash(path)}"
            self.rec_ids[path] = rec_id
            self.rec_owner[rec_id] = path
        return self.rec_ids[path]

    def claim(self, cut_id: str, line: int) -> None:
        if cut_id in self.cut_lines:
            raise _Skip(f"duplicate id: {cut_id!r} (first on line {self.cut_lines[cut_id]})")
        self.cut_lines[cut_id] = line

    def nemo_cut_id(self, d: dict[str, Any], rec_id: str) -> str:
        if d["id"] is not None:
            return d["id"]
        if d["has_offset"]:
            return f"{rec_id}-{round(d['offset'] * 1000):08d}"
        return rec_id


# ------------------------------------------------------------------------------------- loading


def _default_workers() -> int:
    return min(8, 2 * (os.cpu_count() or 1))


def _ordered_map(
    fn: Callable[[tuple[int, dict]], _Checked], items: list[tuple[int, dict]], workers: int
) -> Iterator[_Checked]:
    """``map(fn, items)`` over a thread pool with a bounded window; results in input order."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    window = 32 * workers
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="manifest") as pool:
        pending: collections.deque[cf.Future[_Checked]] = collections.deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def load_cuts(
    path: str | os.PathLike,
    *,
    vocab: CharVocab | None = None,
    sample_rate: int = 16000,
    resample: bool = False,
    output_frame_rate: float | None = None,
    check_samples: bool = True,
    on_error: Literal["skip", "raise"] = "skip",
    max_duration_mismatch: float = 0.1,
    num_workers: int | None = None,
) -> tuple[CutSet, ValidationReport]:
    """Load and validate a manifest into a lhotse ``CutSet`` (in manifest order).

    Args:
        path: NeMo-style JSONL manifest or lhotse cut manifest (``.jsonl`` / ``.jsonl.gz``).
        vocab: when given, text with characters outside it (after normalization) is skipped.
        sample_rate: the recipe's sample rate. Audio at another rate is an error (never a
            skip) unless ``resample`` is set, in which case the cut resamples lazily on load.
        output_frame_rate: model output frames per second (e.g. 25 for 10 ms fbank with 4x
            subsampling); when given, utterances too short for CTC to emit their transcript
            are skipped (for training data: evaluation sets keep them, ``None``).
        check_samples: read every sample (catches undecodable data and NaN/inf); otherwise
            only headers are read.
        on_error: ``"skip"`` counts, logs and skips bad entries; ``"raise"`` raises
            :class:`ManifestError` at the first one.
        max_duration_mismatch: seconds the manifest ``duration`` may differ from the audio.
        num_workers: threads that check audio (default ``min(8, 2 * cpu_count)``).

    Returns:
        ``(cuts, report)``. Each cut's single supervision holds the normalized text; fields
        outside the NeMo schema are in ``cut.custom``.

    Raises:
        ManifestError: malformed JSON, wrong sample rate without ``resample``, the first
            issue with ``on_error="raise"``, or a manifest with no usable entry.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    manifest = str(path)
    base = Path(path).resolve().parent
    settings = _Settings(
        vocab, sample_rate, resample, output_frame_rate, check_samples, max_duration_mismatch
    )
    entries = list(_iter_entries(path))  # a corrupt manifest fails before any audio is read
    workers = _default_workers() if num_workers is None else num_workers

    cuts: list[Cut] = []
    issues: list[ManifestIssue] = []
    ids = _Ids()

    def record(issue: ManifestIssue) -> None:
        if on_error == "raise":
            raise ManifestError(str(issue))
        issues.append(issue)
        if len(issues) <= LOG_LIMIT:
            logger.warning("%s", issue)
        elif len(issues) == LOG_LIMIT + 1:
            logger.warning("%s: more issues; not logging each (see the summary)", manifest)

    results = _ordered_map(lambda item: _check(item[0], item[1], base, settings), entries, workers)
    try:
        for res in results:
            if res.fatal is not None:
                raise ManifestError(f"{manifest}:{res.line}: {res.fatal}")
            if res.reason is not None:
                record(ManifestIssue(manifest, res.line, res.reason, res.utt_id))
                continue
            try:
                if res.nemo is not None:
                    d = res.nemo
                    rec_id = ids.recording_id(d["path"])
                    cut_id = ids.nemo_cut_id(d, rec_id)
                    ids.claim(cut_id, res.line)
                    cut = _build_nemo_cut(cut_id, rec_id, d)
                    if d["sr"] != sample_rate:
                        cut = cut.resample(sample_rate)
                else:
                    assert res.cut is not None
                    cut = res.cut
                    ids.claim(cut.id, res.line)
            except _Skip as e:
                record(ManifestIssue(manifest, res.line, str(e), res.utt_id))
                continue
            cuts.append(cut)
    finally:
        results.close()

    report = ValidationReport(manifest, total=len(entries), kept=len(cuts), issues=issues)
    if not cuts:
        if not entries:  # a manifest-level error like malformed JSON: no report to print
            raise ManifestError(f"{manifest}: empty manifest (no entries, only blank lines or none)")
        counts = ", ".join(f"{k}: {v}" for k, v in report.counts_by_reason().items())
        raise ManifestError(
            f"{manifest}: no usable entry, all {report.total} skipped ({counts})", report=report
        )
    (logger.warning if issues else logger.info)("%s", report.summary())
    return CutSet.from_cuts(cuts), report
