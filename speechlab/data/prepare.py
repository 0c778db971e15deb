"""Corpus preparation: lhotse's recipe preparers -> speechlab manifests.

:func:`prepare_corpus` checks the folder layout of a downloaded corpus, runs lhotse's preparer
(``lhotse.recipes.prepare_librispeech``, ``prepare_ljspeech``, ``prepare_commonvoice``,
``prepare_cmu_arctic``: lhotse reads the transcripts and the audio headers, nothing here parses
them again), turns each part's ``RecordingSet`` + ``SupervisionSet`` into manifest rows
(:func:`manifest_rows`) and writes one NeMo-style JSONL manifest per split, atomically:

=========== ===================================================================================
corpus      manifests written (``OUT/<name>.jsonl``)
=========== ===================================================================================
librispeech one per part found (or named by ``parts``): ``dev-clean``, ``dev-other``,
            ``test-clean``, ``test-other``, ``train-clean-100``, ``train-clean-360``,
            ``train-other-500`` (and mini LibriSpeech's ``dev-clean-2``, ``train-clean-5``)
commonvoice one per TSV split: ``train``, ``dev``, ``test`` by default; ``validated``,
            ``invalidated``, ``other`` when named
ljspeech    ``train``, ``dev``, ``test`` (the corpus has no split: :func:`split_rows`)
cmu_arctic  ``train``, ``dev``, ``test`` (no official split either; a prompt is read by every
            speaker, and all its readings go to one split)
=========== ===================================================================================

A row is ``{"id", "audio_filepath" (absolute), "duration", "text", "speaker"}`` (no
``"speaker"`` for LJ Speech, which names none; ``"offset"`` too for a supervision that is not
the whole file, which none of these corpora has): the format
:mod:`speechlab.data.manifests` loads. ``text`` is the transcript normalized by
:func:`speechlab.data.text.normalize_text`, the normalizer of training and scoring (LJ Speech:
its normalized column, numbers spelled out). A transcript that normalizes to empty text, or
holds a letter or digit that the normalizer cannot spell in the vocabulary (``1813``,
``中``: :func:`unspellable_chars`), is skipped with a logged line (split, audio file, reason)
and counted in the split's summary line (utterances, hours, skipped by reason). Transcripts
without audio, which lhotse's preparers drop (logging each file), are counted too.

Bad input (no such folder, a folder in another layout, an unknown corpus or part) is an
:class:`~speechlab.errors.InputError` with one line that names the path and what was expected.
The command is ``speechlab data prepare`` (:func:`speechlab.cli.data.prepare`).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechlab.data.text import CharVocab, normalize_text, split_by_text
from speechlab.errors import InputError
from speechlab.io import check_overwrite

if TYPE_CHECKING:  # lhotse (and torch) load only when a corpus is prepared
    from lhotse import RecordingSet, SupervisionSet
    from lhotse.supervision import SupervisionSegment

__all__ = [
    "CORPORA",
    "SPLITS",
    "SkippedUtterance",
    "SplitReport",
    "manifest_rows",
    "normalize_transcript",
    "prepare_corpus",
    "split_rows",
    "unspellable_chars",
]

log = logging.getLogger(__name__)

#: corpus name -> what it is (``speechlab data prepare CORPUS``)
CORPORA: dict[str, str] = {
    "librispeech": "LibriSpeech (or mini LibriSpeech): one manifest per part",
    "ljspeech": "LJ Speech 1.1: train/dev/test split here",
    "commonvoice": "Common Voice (one language): one manifest per TSV split",
    "cmu_arctic": "CMU ARCTIC: train/dev/test split here, by prompt",
}
#: the splits written for corpora without their own (ljspeech, cmu_arctic)
SPLITS: tuple[str, ...] = ("train", "dev", "test")
#: corpora that :func:`split_rows` splits; the others keep the corpus's parts
UNSPLIT_CORPORA: frozenset[str] = frozenset({"ljspeech", "cmu_arctic"})
DEFAULT_DEV_FRACTION = 0.05
DEFAULT_TEST_FRACTION = 0.05
#: seconds within which a supervision that starts at 0 and ends at the recording's end is the
#: whole file (no ``offset`` in its row; the duration is the file's)
WHOLE_FILE_TOLERANCE = 1e-3
#: per-utterance WARNING lines per split before one "more ..." line (the summary counts all)
LOG_LIMIT = 20
#: columns of a Common Voice TSV that lhotse's ``prepare_commonvoice`` reads
COMMONVOICE_COLUMNS: tuple[str, ...] = (
    "client_id", "path", "sentence", "age", "gender", "accents", "variant",
)
_ARCTIC_DIR = re.compile(r"^cmu_[^_]+_[^_]+(_.*)?$")  # cmu_us_aew_arctic: lhotse's speaker = [2]


# ------------------------------------------------------------------------------ transcripts


def unspellable_chars(raw: str, vocab: CharVocab | None = None) -> list[str]:
    """Letters and digits of ``raw`` that :func:`normalize_text` cannot spell in ``vocab``
    (default: a-z, space, apostrophe): it folds ``é`` to ``e`` and ``ß`` to ``ss``, but drops
    ``1`` or ``中`` as if they were punctuation, which would leave a transcript that no longer
    says what the audio says. Punctuation is not reported (it becomes a space, as intended).

    >>> unspellable_chars("In 1813, Zürich")
    ['1', '3', '8']
    """
    vocab = vocab or CharVocab()
    bad = set()
    for c in set(raw):
        if c.isalnum():
            spelled = normalize_text(c)
            if not spelled or vocab.oov_chars(spelled):
                bad.add(c)
    return sorted(bad)


def normalize_transcript(raw: Any, vocab: CharVocab | None = None) -> tuple[str | None, str | None]:
    """``(normalized text, None)``, or ``(None, reason)`` for a transcript to skip: not a
    string, characters the vocabulary cannot spell (reason ``OOV characters: ...``, as
    :mod:`speechlab.data.manifests` names it), or empty after normalization (``empty text:``)."""
    vocab = vocab or CharVocab()
    if not isinstance(raw, str):
        return None, f"missing field: no transcript text (got {raw!r})"
    bad = unspellable_chars(raw, vocab)
    if bad:
        return None, f"OOV characters: {''.join(bad)!r} in {raw!r}"
    text = normalize_text(raw)
    if not text:
        return None, f"empty text: {raw!r} normalizes to ''"
    oov = vocab.oov_chars(text)  # a vocabulary without the apostrophe or the space
    if oov:
        return None, f"OOV characters: {''.join(sorted(oov))!r} in {text!r}"
    return text, None


def _transcript(sup: SupervisionSegment) -> Any:
    """The transcript to normalize: LJ Speech's normalized column (numbers and abbreviations
    spelled out, kept by lhotse in ``custom["normalized_text"]``) when present, else the text."""
    custom = sup.custom or {}
    normalized = custom.get("normalized_text")
    return normalized if isinstance(normalized, str) and normalized.strip() else sup.text


# ----------------------------------------------------------------------------- rows, splits


@dataclass(frozen=True)
class SkippedUtterance:
    """One utterance left out of a manifest: its id, audio file and the reason."""

    id: str
    audio: str
    reason: str

    @property
    def category(self) -> str:
        """The reason's category, the text before its first ``":"`` (``"empty text"``)."""
        return self.reason.split(":", 1)[0].strip()


def _audio_path(recording: Any) -> str:
    sources = [s for s in recording.sources if s.type == "file"]
    if len(recording.sources) != 1 or not sources:
        raise InputError(f"recording {recording.id!r}: expected one audio file, got sources "
                         f"{[(s.type, s.source) for s in recording.sources]}")
    return os.path.abspath(sources[0].source)


def manifest_rows(recordings: RecordingSet, supervisions: SupervisionSet,
                  vocab: CharVocab | None = None,
                  transcript: Callable[[Any], Any] = _transcript,
                  ) -> tuple[list[dict[str, Any]], list[SkippedUtterance]]:
    """Manifest rows of lhotse manifests, sorted by id, and the utterances skipped for their
    transcript (:func:`normalize_transcript`). A row: ``id``, ``audio_filepath`` (absolute),
    ``duration`` (seconds: the recording's for a supervision that covers it, to within
    :data:`WHOLE_FILE_TOLERANCE`, else the supervision's, with ``offset``), ``text``
    (normalized) and ``speaker`` when known."""
    by_id = {r.id: r for r in recordings}  # RecordingSet[str] is a linear scan
    rows, skipped = [], []
    for sup in sorted(supervisions, key=lambda s: s.id):
        rec = by_id.get(sup.recording_id)
        if rec is None:  # lhotse's fix_manifests removes these; a hand-built set may not
            skipped.append(SkippedUtterance(sup.id, "", f"audio not found: no recording "
                                                        f"{sup.recording_id!r}"))
            continue
        audio = _audio_path(rec)
        text, reason = normalize_transcript(transcript(sup), vocab)
        if reason is not None:
            skipped.append(SkippedUtterance(sup.id, audio, reason))
            continue
        # lhotse's fix_manifests trims supervisions to the recording with some rounding
        # (LJ Speech: 1.5396458 s of a 1.5396372 s file): within a millisecond is the whole file
        whole = sup.start < WHOLE_FILE_TOLERANCE and \
            abs(sup.end - rec.duration) < WHOLE_FILE_TOLERANCE
        duration = rec.duration if whole else min(sup.duration, rec.duration - sup.start)
        row: dict[str, Any] = {"id": sup.id, "audio_filepath": audio,
                               "duration": round(float(duration), 6), "text": text}
        if not whole:
            row["offset"] = round(float(sup.start), 6)
        if sup.speaker:
            row["speaker"] = str(sup.speaker)
        rows.append(row)
    return rows, skipped


def split_rows(rows: Sequence[dict[str, Any]], dev_fraction: float = DEFAULT_DEV_FRACTION,
               test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
               ) -> dict[str, list[dict[str, Any]]]:
    """Deterministic train/dev/test split of a corpus that has none, keeping every text in one
    split (:func:`~speechlab.data.text.split_by_text`, the rule of ``speechlab data synth``:
    CMU ARCTIC's speakers read the same prompts, and a test prompt should be new to the model).
    Rows keep their input order within a split; a text's split is the same on every machine and
    for every order of ``rows``."""
    splits = split_by_text([row["text"] for row in rows], seed, dev_fraction, test_fraction)
    return {s: [rows[i] for i in idx] for s, idx in splits.items()}


@dataclass
class SplitReport:
    """What was written for one split: its manifest, utterances, seconds and the skips."""

    corpus: str
    split: str
    manifest: Path | None
    utterances: int
    seconds: float
    skipped: collections.Counter = field(default_factory=collections.Counter)

    def summary(self) -> str:
        """One line: ``"librispeech dev-clean: 2703 utterances, 5.39 h, skipped 1 (OOV
        characters: 1) -> data/librispeech/dev-clean.jsonl"``."""
        line = (f"{self.corpus} {self.split}: {self.utterances} utterances, "
                f"{self.seconds / 3600:.2f} h, skipped {sum(self.skipped.values())}")
        if self.skipped:
            line += " (" + ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common()) + ")"
        return line + (f" -> {self.manifest}" if self.manifest is not None else "")


# ------------------------------------------------------------------------------ layouts


def _is_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder ({what} expected)")
    return path


def _librispeech_parts(corpus_dir: Path, parts: Sequence[str] | None) -> list[str]:
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

    known = (*LIBRISPEECH, *MINI_LIBRISPEECH)
    layout = ("LibriSpeech layout: PART/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt and "
              "SPEAKER-CHAPTER-UTT.flac, PART one of " + ", ".join(known))
    found = [p for p in known if (corpus_dir / p).is_dir()]
    if parts is None:
        if not found:
            hint = (f"; did you mean {corpus_dir / 'LibriSpeech'}?"
                    if (corpus_dir / "LibriSpeech").is_dir() else "")
            raise InputError(f"{corpus_dir}: no LibriSpeech part folder ({layout}){hint}")
        parts = found
    unknown = [p for p in parts if p not in known]
    if unknown:
        raise InputError(f"unknown LibriSpeech part(s) {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    for part in parts:
        if not (corpus_dir / part).is_dir():
            raise InputError(f"{corpus_dir / part}: part folder not found (parts here: "
                             f"{', '.join(found) or 'none'}; {layout})")
        if next((corpus_dir / part).rglob("*.trans.txt"), None) is None:
            raise InputError(f"{corpus_dir / part}: no *.trans.txt transcript ({layout})")
    return list(dict.fromkeys(parts))


def _ljspeech_check(corpus_dir: Path) -> None:
    layout = "LJ Speech layout: metadata.csv (ID|text|normalized text) and wavs/ID.wav"
    metadata = corpus_dir / "metadata.csv"
    if not metadata.is_file() or not (corpus_dir / "wavs").is_dir():
        missing = "metadata.csv" if not metadata.is_file() else "wavs/"
        hint = (f"; did you mean {corpus_dir / 'LJSpeech-1.1'}?"
                if (corpus_dir / "LJSpeech-1.1").is_dir() else "")
        raise InputError(f"{corpus_dir}: no {missing} ({layout}){hint}")
    # lhotse splits every line into exactly three fields; say which line does not fit
    with open(metadata, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            n = len(line.strip().split("|"))
            if n != 3:
                raise InputError(f"{metadata}:{lineno}: {n} '|'-separated field(s), expected 3 "
                                 f"(ID|text|normalized text)")


def _arctic_speaker(folder: str) -> str:
    return folder.split("_")[2]  # lhotse's rule: cmu_us_aew_arctic -> aew


def _arctic_check(corpus_dir: Path) -> None:
    layout = ("CMU ARCTIC layout: cmu_us_SPEAKER_arctic/wav/arctic_a0001.wav and "
              "cmu_us_SPEAKER_arctic/etc/txt.done.data, for one or more speakers")
    transcripts = sorted(corpus_dir.rglob("txt.done.data"))
    if not transcripts:
        raise InputError(f"{corpus_dir}: no */etc/txt.done.data ({layout})")
    wavs: dict[str, Path] = {}
    for wav in sorted(corpus_dir.rglob("*.wav")):
        if not _ARCTIC_DIR.match(wav.parent.parent.name):
            raise InputError(f"{wav}: not in a cmu_us_SPEAKER_arctic/wav/ folder ({layout})")
        rec_id = f"{_arctic_speaker(wav.parent.parent.name)}-{wav.stem}"
        if rec_id in wavs:  # lhotse names a recording SPEAKER-STEM and would pick one of them
            raise InputError(f"{wav}: a second WAV for {rec_id} (the first: {wavs[rec_id]}); "
                             f"lhotse's prepare_cmu_arctic reads every *.wav under the folder: "
                             f"keep one per prompt and speaker ({layout})")
        wavs[rec_id] = wav
    for path in transcripts:
        if path.parent.name != "etc" or not _ARCTIC_DIR.match(path.parent.parent.name):
            raise InputError(f"{path}: not in a cmu_us_SPEAKER_arctic/etc/ folder ({layout})")
        speaker = _arctic_speaker(path.parent.parent.name)
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            words = line[2:-2].split(maxsplit=1)  # lhotse's reading of '( arctic_a0001 "..." )'
            if len(words) != 2 or not line.startswith("(") or not line.rstrip().endswith(")"):
                raise InputError(f"{path}:{lineno}: expected ( arctic_a0001 \"text\" ), got "
                                 f"{line!r}")
            # lhotse's prepare_cmu_arctic fails on a prompt without its WAV
            if f"{speaker}-{words[0]}" not in wavs:
                raise InputError(f"{path}:{lineno}: no {path.parent.parent / 'wav' / words[0]}"
                                 f".wav for this prompt (lhotse's prepare_cmu_arctic needs one "
                                 f"per prompt)")


def _commonvoice_check(corpus_dir: Path, language: str, parts: Sequence[str],
                       ) -> tuple[Path, str, dict[str, list[str]]]:
    """``(release folder, language, {split: clips listed but missing})``; ``corpus_dir`` is a
    release folder holding ``LANG/`` or the language folder itself."""
    from lhotse.recipes.commonvoice import COMMONVOICE_SPLITS

    layout = ("Common Voice layout: RELEASE/LANG/{train,dev,test,validated}.tsv and "
              "RELEASE/LANG/clips/*.mp3")
    unknown = [p for p in parts if p not in COMMONVOICE_SPLITS]
    if unknown:
        raise InputError(f"unknown Common Voice split(s) {', '.join(unknown)} "
                         f"(known: {', '.join(COMMONVOICE_SPLITS)})")
    if (corpus_dir / "clips").is_dir() or any(corpus_dir.glob("*.tsv")):
        root, language = corpus_dir.parent, corpus_dir.name  # the language folder itself
    else:
        root = corpus_dir
        if not (corpus_dir / language).is_dir():
            here = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir())
            raise InputError(f"{corpus_dir}: no language folder {language!r} (folders here: "
                             f"{', '.join(here) or 'none'}; {layout})")
    lang_dir = root / language
    if not (lang_dir / "clips").is_dir():
        raise InputError(f"{lang_dir}: no clips/ folder ({layout})")
    missing: dict[str, list[str]] = {}
    for part in parts:
        tsv = lang_dir / f"{part}.tsv"
        if not tsv.is_file():
            raise InputError(f"{tsv}: not found ({layout})")
        with open(tsv, encoding="utf-8", newline="") as f:
            # read as lhotse reads it (QUOTE_NONE): the columns it needs, the clips it will miss
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            lacking = [c for c in COMMONVOICE_COLUMNS if c not in (reader.fieldnames or [])]
            if lacking:
                raise InputError(f"{tsv}: no column(s) {', '.join(lacking)} (lhotse's "
                                 f"prepare_commonvoice reads {', '.join(COMMONVOICE_COLUMNS)})")
            clips = [row.get("path") or "" for row in reader]
            missing[part] = [str(lang_dir / "clips" / c) for c in clips
                             if not c or not (lang_dir / "clips" / c).is_file()]
    return root, language, missing


# --------------------------------------------------------------------------- preparers


class _NoSuchFile(logging.Handler):
    """Counts lhotse's ``No such file: PATH`` warnings (a transcript whose audio is missing;
    lhotse drops it), by the first folder of PATH under ``root``."""

    def __init__(self, root: Path) -> None:
        super().__init__(logging.DEBUG)
        self.root = root
        self.paths: dict[str, list[str]] = collections.defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("No such file: "):
            path = Path(msg.removeprefix("No such file: "))
            try:
                key = path.relative_to(self.root).parts[0]
            except (ValueError, IndexError):
                key = ""
            self.paths[key].append(str(path))


@contextlib.contextmanager
def _count_missing_audio(root: Path) -> Iterator[_NoSuchFile]:
    handler = _NoSuchFile(root)
    logging.getLogger().addHandler(handler)  # lhotse's recipes log on the root logger
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def _preparer_error(corpus: str, fn: str, e: Exception) -> InputError:
    """lhotse's failure on a corpus as one line: the first lines of its message name the file
    (an unreadable audio file: ``Fetching info about audio from 'X' failed``)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = " ".join(lines[:2]) if lines else type(e).__name__
    return InputError(f"{corpus}: lhotse's {fn} failed: {type(e).__name__}: {detail}")


@dataclass
class _Prepared:
    """lhotse's manifests by part, and per part the audio files that the transcripts list but
    that do not exist (dropped by lhotse)."""

    parts: dict[str, tuple[Any, Any]]
    missing_audio: dict[str, list[str]]


def _run(corpus: str, corpus_dir: Path, parts: Sequence[str] | None, num_jobs: int,
         language: str) -> _Prepared:
    from lhotse import recipes

    if corpus == "librispeech":
        names = _librispeech_parts(corpus_dir, parts)
        log.info("librispeech: preparing %s from %s (num_jobs %d)", ", ".join(names), corpus_dir,
                 num_jobs)
        with _count_missing_audio(corpus_dir) as missing:
            out = _call(corpus, "prepare_librispeech", lambda: recipes.prepare_librispeech(
                corpus_dir, dataset_parts=names, output_dir=None, num_jobs=num_jobs))
        return _Prepared({p: (out[p]["recordings"], out[p]["supervisions"]) for p in names},
                         {p: missing.paths.get(p, []) for p in names})
    if corpus == "ljspeech":
        _ljspeech_check(corpus_dir)
        log.info("ljspeech: preparing %s", corpus_dir)
        with _count_missing_audio(corpus_dir) as missing:
            out = _call(corpus, "prepare_ljspeech",
                        lambda: recipes.prepare_ljspeech(corpus_dir, output_dir=None))
        return _Prepared({"all": (out["recordings"], out["supervisions"])},
                         {"all": [p for v in missing.paths.values() for p in v]})
    if corpus == "cmu_arctic":
        _arctic_check(corpus_dir)
        log.info("cmu_arctic: preparing %s", corpus_dir)
        out = _call(corpus, "prepare_cmu_arctic",
                    lambda: recipes.prepare_cmu_arctic(corpus_dir, output_dir=None))
        return _Prepared({"all": (out["recordings"], out["supervisions"])}, {"all": []})
    if corpus == "commonvoice":
        names = list(dict.fromkeys(parts or ("train", "dev", "test")))
        root, lang, missing_clips = _commonvoice_check(corpus_dir, language, names)
        log.info("commonvoice: preparing %s of %s (num_jobs %d)", ", ".join(names), root / lang,
                 num_jobs)
        # the recipe writes lhotse's own manifests to an output folder it requires; we keep ours
        with tempfile.TemporaryDirectory(prefix="speechlab-commonvoice-") as tmp:
            out = _call(corpus, "prepare_commonvoice", lambda: recipes.prepare_commonvoice(
                root, output_dir=tmp, languages=[lang], splits=names, num_jobs=num_jobs))
        return _Prepared({p: (out[lang][p]["recordings"], out[lang][p]["supervisions"])
                          for p in names}, missing_clips)
    raise InputError(f"unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")


def _call(corpus: str, fn: str, thunk: Callable[[], Any]) -> Any:
    """Run a preparer; what it raises on a corpus it cannot read becomes one InputError line
    (asserts on the folder, a malformed line, an audio file no backend can open)."""
    from lhotse.audio.utils import AudioLoadingError

    try:
        return thunk()
    except InputError:
        raise
    except (AssertionError, ValueError, KeyError, IndexError, StopIteration, OSError,
            RuntimeError, TypeError, AttributeError, AudioLoadingError) as e:
        raise _preparer_error(corpus, fn, e) from e


# ------------------------------------------------------------------------------ driver


def _log_skips(corpus: str, split: str, skipped: Iterable[SkippedUtterance]) -> None:
    for n, s in enumerate(skipped, start=1):
        if n <= LOG_LIMIT:
            log.warning("%s %s: skipped %s (%s): %s", corpus, split, s.id, s.audio or "no audio",
                        s.reason)
        elif n == LOG_LIMIT + 1:
            log.warning("%s %s: more skipped utterances; not logging each (see the summary)",
                        corpus, split)


def _missing_audio_skips(paths: Iterable[str]) -> list[SkippedUtterance]:
    return [SkippedUtterance(Path(p).stem, p, "audio not found: no such file (dropped by lhotse)")
            for p in paths]


def _output_splits(corpus: str, corpus_dir: Path, parts: Sequence[str] | None) -> list[str]:
    """The manifests a run writes, by name, before anything is prepared (the overwrite check)."""
    if corpus == "librispeech":
        _is_dir(corpus_dir, "LibriSpeech folder")
        return _librispeech_parts(corpus_dir, parts)
    if corpus == "commonvoice":
        return list(dict.fromkeys(parts or ("train", "dev", "test")))
    if corpus in UNSPLIT_CORPORA:
        unknown = [p for p in parts or () if p not in SPLITS]
        if unknown:
            raise InputError(f"{corpus} has no part(s) {', '.join(unknown)}: it is split here "
                             f"into {', '.join(SPLITS)}")
        return list(dict.fromkeys(parts or SPLITS))
    raise InputError(f"unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")


def prepare_corpus(
    corpus: str,
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    parts: Sequence[str] | None = None,
    num_jobs: int = 1,
    force: bool = False,
    vocab: CharVocab | None = None,
    dev_fraction: float = DEFAULT_DEV_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    language: str = "en",
) -> dict[str, SplitReport]:
    """Prepare ``corpus`` (one of :data:`CORPORA`) from ``corpus_dir`` into manifests
    ``out_dir/<split>.jsonl``; returns ``{split: SplitReport}``.

    Args:
        parts: LibriSpeech parts (default: every part folder found), Common Voice TSV splits
            (default ``train dev test``), or for LJ Speech and CMU ARCTIC which of ``train dev
            test`` to write (default all).
        num_jobs: parallel workers of lhotse's LibriSpeech and Common Voice preparers (the other
            two preparers have none).
        force: replace existing manifests (otherwise an existing one is an error, before any
            work).
        vocab: characters a transcript must be spelled in (default a-z, space, apostrophe).
        dev_fraction, test_fraction, seed: the split of LJ Speech and CMU ARCTIC
            (:func:`split_rows`).
        language: the Common Voice language folder (when ``corpus_dir`` is a release folder).

    Raises:
        InputError: unknown corpus or part, a missing folder, a folder in another layout, a
            file lhotse cannot read, or no usable utterance at all.
        FileExistsError: a manifest to write exists and ``force`` is not set.
    """
    if corpus not in CORPORA:
        raise InputError(f"unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")
    if num_jobs < 1:
        raise InputError(f"--num-jobs must be >= 1, got {num_jobs}")
    # absolute, so that lhotse's paths (the manifests', its "No such file" lines) are too
    corpus_dir = _is_dir(Path(os.path.abspath(Path(corpus_dir).expanduser())),
                         f"{corpus} corpus folder")
    out_dir = Path(out_dir)
    if corpus in UNSPLIT_CORPORA:  # fail on bad fractions before the work
        split_rows([], dev_fraction, test_fraction)
    names = _output_splits(corpus, corpus_dir, parts)
    targets = {name: out_dir / f"{name}.jsonl" for name in names}
    for path in targets.values():
        check_overwrite(path, force)

    prepared = _run(corpus, corpus_dir, parts if corpus != "librispeech" else names, num_jobs,
                    language)
    splits: dict[str, tuple[list[dict], list[SkippedUtterance]]] = {}
    for part, (recordings, supervisions) in prepared.parts.items():
        rows, skipped = manifest_rows(recordings, supervisions, vocab)
        skipped = _missing_audio_skips(prepared.missing_audio.get(part, [])) + skipped
        if corpus in UNSPLIT_CORPORA:
            _log_skips(corpus, "all", skipped)
            by_split = split_rows(rows, dev_fraction, test_fraction, seed)
            for name in names:
                splits[name] = (by_split[name], [])
            if skipped:
                counts = collections.Counter(s.category for s in skipped)
                log.warning("%s: skipped %d of %d utterances before the split (%s)", corpus,
                            len(skipped), len(rows) + len(skipped),
                            ", ".join(f"{k}: {v}" for k, v in counts.most_common()))
        else:
            _log_skips(corpus, part, skipped)
            splits[part] = (rows, skipped)
    if not any(rows for rows, _ in splits.values()):
        total = sum(len(s) for _, s in splits.values())
        raise InputError(f"{corpus_dir}: no usable utterance in {', '.join(names)} "
                         f"({total} skipped)")

    from speechlab.data.manifests import write_manifest

    reports = {}
    rates: set[int] = set()
    for name in names:
        rows, skipped = splits[name]
        write_manifest(targets[name], rows)
        report = SplitReport(corpus, name, targets[name], len(rows),
                             math.fsum(r["duration"] for r in rows),
                             collections.Counter(s.category for s in skipped))
        reports[name] = report
        (log.warning if not rows else log.info)("%s%s", report.summary(),
                                                "" if rows else " (empty)")
    for recordings, _ in prepared.parts.values():
        rates.update(r.sampling_rate for r in recordings)
    if rates - {16000}:
        log.info("%s: audio at %s Hz; the recipes expect 16000 Hz: set `resample: true` in a "
                 "recipe's data section (speechlab data validate --resample, or --sample-rate)",
                 corpus, ", ".join(map(str, sorted(rates))))
    return reports
