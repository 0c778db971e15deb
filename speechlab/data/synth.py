"""Synthesize a speech corpus with espeak-ng (the embedded default data set).

:func:`synthesize_corpus` speaks sentences from speechlab's own generator
(:mod:`speechlab.data.sentences`) or from a text file (:func:`read_sentences`), one utterance
per sentence, with a voice, variant, speed and pitch drawn per utterance from a random generator
seeded by (seed, utterance index): any utterance is reproducible on its own, the output does not
depend on ``jobs``, and the same seed gives byte-identical files. It writes 16-bit PCM WAVs and
NeMo-style ``train``/``dev``/``test`` manifests (no sentence text in two splits), resumes in a
folder it wrote before, and refuses one that holds another corpus unless ``force``.

The command is ``speechlab data synth`` (:func:`speechlab.cli.data.synth`; its help gives the
layout on disk).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechlab.data.sentences import Sentence
from speechlab.data.text import normalize_text, split_by_text
from speechlab.errors import CLIError
from speechlab.io import atomic_write_jsonl, read_text
from speechlab.parallel import run_parallel

log = logging.getLogger(__name__)

ESPEAK_MISSING = (
    "espeak-ng not found on PATH: install it (apt-get install espeak-ng; `make demo` does this)"
)
#: English espeak-ng voices (language names as ``espeak-ng --voices=en`` lists them).
DEFAULT_VOICES: tuple[str, ...] = (
    "en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)
#: Voice variants (``espeak-ng --voices=variant``): seven male, five female.
DEFAULT_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
)
ESPEAK_SAMPLE_RATE = 22050
SPLITS = ("train", "dev", "test")


# --------------------------------------------------------------------------- espeak-ng

def find_espeak() -> str:
    """Path of ``espeak-ng``; raises :class:`~speechlab.errors.CLIError` with install advice."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise CLIError(ESPEAK_MISSING)
    return path


def espeak_voices(espeak: str) -> tuple[set[str], set[str]]:
    """``(languages, variants)`` that this espeak-ng installation offers."""
    def listing(arg: str) -> str:
        r = subprocess.run([espeak, arg], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise CLIError(f"{espeak} {arg} failed: {r.stderr.strip()}")
        return r.stdout

    languages = set()
    for line in listing("--voices=en").splitlines()[1:]:
        cols = line.split()
        # mbrola voices (file mb/...) need separately installed mbrola databases
        if len(cols) >= 5 and cols[1] != "variant" and not cols[4].startswith("mb/"):
            languages.add(cols[1])
    variants = set(re.findall(r"!v/(\S+)", listing("--voices=variant")))
    return languages, variants


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything that determines one synthesized utterance.

    ``speed`` is espeak-ng's ``-s`` (words per minute), ``pitch`` its ``-p`` (0-99).
    """

    index: int
    id: str
    text: str
    domain: str
    voice: str
    variant: str
    speed: int
    pitch: int

    @property
    def speaker(self) -> str:
        return f"{self.voice}+{self.variant}"

    def wav_name(self, sample_rate: int) -> str:
        """File name under ``wavs/``: the id plus a hash of the synthesis parameters, so that a
        changed sentence or voice is never mistaken for a finished file on resume."""
        key = f"{self.text}|{self.speaker}|{self.speed}|{self.pitch}|{sample_rate}"
        return f"{self.id}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.wav"


def utterance_spec(
    index: int,
    sentence: Sentence,
    seed: int,
    voices: Sequence[str] = DEFAULT_VOICES,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    speed_range: tuple[int, int] = (130, 190),
    pitch_range: tuple[int, int] = (30, 70),
    id_prefix: str = "tts",
) -> UtteranceSpec:
    """Voice, variant, speed and pitch of utterance ``index``, drawn from an RNG seeded by
    ``(seed, index)`` only (ranges inclusive)."""
    rng = random.Random(f"speechlab.synth:{seed}:{index}")
    return UtteranceSpec(
        index=index,
        id=f"{id_prefix}{index:06d}",
        text=sentence.text,
        domain=sentence.domain,
        voice=rng.choice(list(voices)),
        variant=rng.choice(list(variants)),
        speed=rng.randint(*speed_range),
        pitch=rng.randint(*pitch_range),
    )


def synthesize(spec: UtteranceSpec, espeak: str, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``spec`` with espeak-ng; mono float32 samples at ``sample_rate`` Hz."""
    import soundfile as sf

    from speechlab.data.audio import resample

    cmd = [espeak, "-v", spec.speaker, "-s", str(spec.speed), "-p", str(spec.pitch), "--stdout",
           spec.text]
    r = subprocess.run(cmd, capture_output=True, check=False)
    if r.returncode != 0 or len(r.stdout) <= 44:
        raise RuntimeError(
            f"espeak-ng failed on utterance {spec.id} ({spec.text!r}, voice {spec.speaker}): "
            f"{r.stderr.decode(errors='replace').strip() or 'no audio'}"
        )
    # --stdout writes a streamed WAV (placeholder sizes); libsndfile reads it to the end
    samples, sr = sf.read(io.BytesIO(r.stdout), dtype="float32", always_2d=True)
    return resample(np.ascontiguousarray(samples[:, 0]), sr, sample_rate).astype(np.float32)


def _render(task: tuple[UtteranceSpec, str, int, str]) -> tuple[int, int]:
    """Synthesize one utterance and write it; returns ``(index, num_samples)``."""
    from speechlab.data.audio import write_audio

    spec, espeak, sample_rate, path = task
    samples = synthesize(spec, espeak, sample_rate)
    write_audio(path, samples, sample_rate)
    return spec.index, len(samples)


# --------------------------------------------------------------------------- corpus

def read_sentences(path: str | Path) -> tuple[list[Sentence], list[int]]:
    """Sentences of a text file, one per line, normalized with
    :func:`~speechlab.data.text.normalize_text`; returns ``(sentences, skipped line numbers)``
    where skipped lines are those that normalize to nothing (blank, punctuation only)."""
    try:
        lines = read_text(path).splitlines()
    except FileNotFoundError:
        raise CLIError(f"{path}: text file not found") from None
    except UnicodeDecodeError as e:
        raise CLIError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise CLIError(f"{path}: cannot read text file ({e.strerror or e})") from None
    sentences, skipped = [], []
    for lineno, line in enumerate(lines, 1):
        text = normalize_text(line)
        if text:
            sentences.append(Sentence(text, "text"))
        else:
            skipped.append(lineno)
    return sentences, skipped


def split_corpus(
    specs: Sequence[UtteranceSpec], seed: int, dev_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, list[UtteranceSpec]]:
    """Deterministic train/dev/test split that keeps every text in one split
    (:func:`~speechlab.data.text.split_by_text`); within a split utterances keep their index
    order."""
    splits = split_by_text([spec.text for spec in specs], seed, dev_fraction, test_fraction)
    return {s: sorted((specs[i] for i in idx), key=lambda u: u.index) for s, idx in splits.items()}


def _resolve_voices(
    espeak: str, voices: Sequence[str] | None, variants: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    have_voices, have_variants = espeak_voices(espeak)
    resolved = []
    for wanted, have, default, what in (
        (voices, have_voices, DEFAULT_VOICES, "voice"),
        (variants, have_variants, DEFAULT_VARIANTS, "variant"),
    ):
        missing = [v for v in (wanted or default) if v not in have]
        if wanted and missing:
            raise CLIError(f"espeak-ng has no {what} {', '.join(missing)} (see espeak-ng --voices)")
        if missing:
            log.warning("espeak-ng lacks the %ss %s; using the others", what, ", ".join(missing))
        ok = [v for v in (wanted or default) if v in have]
        if not ok:
            raise CLIError(f"espeak-ng offers none of the {what}s {', '.join(wanted or default)}")
        resolved.append(ok)
    return resolved[0], resolved[1]


def _remove_stray_temps(wav_dir: Path) -> None:
    """Remove temporary files left by an interrupted run (see :func:`speechlab.io.atomic_path`)."""
    for tmp in wav_dir.glob(".*.wav.*.tmp.wav"):
        tmp.unlink(missing_ok=True)


def _check_existing_manifests(out_dir: Path, splits: dict[str, list[UtteranceSpec]],
                              paths: dict[int, Path]) -> None:
    """Refuse to replace a manifest of ``out_dir`` that lists other utterances than this run's
    (a resumed run with the same settings lists the same ids and files)."""
    for split, members in splits.items():
        manifest = out_dir / f"{split}.jsonl"
        if not manifest.is_file():
            continue
        planned = [(u.id, paths[u.index].relative_to(out_dir).as_posix()) for u in members]
        try:
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
            existing = [(r.get("id"), r.get("audio_filepath")) for r in rows]
        except (UnicodeDecodeError, ValueError, AttributeError):
            existing = None
        if existing != planned:
            raise FileExistsError(
                f"{manifest}: exists and lists another corpus than this run's (other --seed, "
                f"--utterances, --text, voice or split settings); pass --force to replace the "
                f"manifests (WAVs of other settings are kept) or choose another --out")


def synthesize_corpus(
    out_dir: str | Path,
    sentences: Sequence[Sentence],
    seed: int = 0,
    jobs: int = 2,
    sample_rate: int = 16000,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    voices: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    speed_range: tuple[int, int] = (130, 190),
    pitch_range: tuple[int, int] = (30, 70),
    id_prefix: str = "tts",
    progress: bool = True,
    force: bool = False,
    splits_wanted: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Synthesize ``sentences`` (utterance ``i`` speaks ``sentences[i]``) into ``out_dir``.

    Writes ``out_dir/wavs/*.wav`` (16-bit PCM, mono, ``sample_rate`` Hz) and the manifests
    ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``; returns ``{split: manifest path}``. Existing
    WAVs are kept (resume). A manifest in ``out_dir`` that lists another corpus (other seed,
    sentences or voice settings) is an error before anything is synthesized, unless ``force``
    (then it is replaced). ``voices``/``variants`` default to those of :data:`DEFAULT_VOICES`
    and :data:`DEFAULT_VARIANTS` that espeak-ng has; ``speed_range`` is in words per minute,
    ``pitch_range`` in espeak-ng's 0-99 units, both inclusive. ``splits_wanted`` (e.g. ``["test"]``)
    renders and writes only those splits: the same utterances, files and manifest lines as a
    full run (the split is decided on the whole corpus first), for evaluating elsewhere a model
    trained on the full corpus.
    """
    from speechlab.data.audio import audio_info

    espeak = find_espeak()
    if not sentences:
        raise ValueError("synthesize_corpus: no sentences to synthesize")
    voices, variants = _resolve_voices(espeak, voices, variants)
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    _remove_stray_temps(wav_dir)

    specs = [
        utterance_spec(i, s, seed, voices, variants, speed_range, pitch_range, id_prefix)
        for i, s in enumerate(sentences)
    ]
    paths = {spec.index: wav_dir / spec.wav_name(sample_rate) for spec in specs}
    splits = split_corpus(specs, seed, dev_fraction, test_fraction)
    if splits_wanted is not None:
        unknown = sorted(set(splits_wanted) - splits.keys())
        if unknown:
            raise ValueError(f"synthesize_corpus: unknown split(s) {unknown} ({', '.join(SPLITS)})")
        splits = {name: members for name, members in splits.items() if name in splits_wanted}
        kept = {u.index for members in splits.values() for u in members}
        specs = [spec for spec in specs if spec.index in kept]
    if not force:
        _check_existing_manifests(out_dir, splits, paths)
    num_samples: dict[int, int] = {}
    todo = []
    for spec in specs:
        path = paths[spec.index]
        if path.is_file():
            num_samples[spec.index] = audio_info(path).frames
        else:
            todo.append((spec, espeak, sample_rate, str(path)))
    if num_samples:
        log.info("resuming: %d of %d utterances already synthesized", len(num_samples), len(specs))
    for index, n in run_parallel(todo, _render, jobs, "synth", len(specs), len(num_samples),
                                 progress):
        num_samples[index] = n

    manifests = {}
    for split, members in splits.items():
        rows = (
            {
                "id": u.id,
                "audio_filepath": paths[u.index].relative_to(out_dir).as_posix(),
                "duration": round(num_samples[u.index] / sample_rate, 4),
                "text": u.text,
                "speaker": u.speaker,
                "domain": u.domain,
                "voice": u.voice,
                "variant": u.variant,
                "speed": u.speed,
                "pitch": u.pitch,
            }
            for u in members
        )
        manifests[split] = out_dir / f"{split}.jsonl"
        atomic_write_jsonl(manifests[split], rows)
    hours = sum(num_samples.values()) / sample_rate / 3600
    log.info(
        "%d utterances (%.2f h) in %s: %s", len(specs), hours, out_dir,
        ", ".join(f"{s} {len(m)}" for s, m in splits.items()),
    )
    return manifests
