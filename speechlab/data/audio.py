"""Audio I/O (soundfile) and resampling (torchaudio). Samples are float32 in [-1, 1]."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from speechlab.io import atomic_path


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file and the reason."""


# libsndfile's open log says "data : 32000 (should be 15978)" when a WAV/AIFF file holds less
# sample data than its header declares (a truncated file); it then silently reads the shorter
# file. 0 and 0xFFFFFFFF are the "unknown length" markers of streamed WAVs, not truncation.
_SHORT_DATA = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Header of an audio file (sample rate, channels, frames); raises :class:`AudioError` for
    an unreadable file and for a truncated one (less sample data than the header declares)."""
    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError on bad headers
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    m = _SHORT_DATA.search(getattr(info, "extra_info", "") or "")
    if m and int(m.group(1)) not in _STREAMED_SIZES and int(m.group(2)) < int(m.group(1)):
        raise AudioError(
            f"{path}: truncated audio (header declares {m.group(1)} bytes of samples, "
            f"the file holds {m.group(2)})"
        )
    return info


def read_audio(
    path: str | os.PathLike, offset: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:
    """Read ``(samples (channels, num_samples) float32, sample_rate)``; ``offset``/``duration``
    in seconds. Raises ``FileNotFoundError`` or :class:`AudioError` (also for a directory)."""
    if Path(path).is_dir():
        raise AudioError(f"{path}: a directory, not an audio file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    info = audio_info(path)
    start = int(round(offset * info.samplerate))
    stop = None if duration is None else start + int(round(duration * info.samplerate))
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: corrupt or truncated audio ({e})") from e
    return np.ascontiguousarray(data.T), sr


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono ``(num_samples,)`` or ``(channels, num_samples)`` float audio as 16-bit PCM
    WAV, atomically (temp file + rename)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.T
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def resample(samples: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling along the last axis (torchaudio's sinc interpolation)."""
    if orig_sr == new_sr:
        return samples
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), orig_sr, new_sr).numpy()
