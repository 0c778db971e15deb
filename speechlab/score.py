"""Score hypotheses against references: corpus WER and CER with S/D/I counts and the worst utterances.

:func:`edit_counts` is speechlab's one WER/CER function (jiwer alignments; rates from counts
summed over the corpus, never averaged over utterances): the tasks' metrics, decoding and
evaluation use it. :func:`score` makes a :class:`ScoreReport` of transcripts matched by id, which
:func:`read_transcripts` reads from JSONL manifests, ``speechlab test`` outputs, lhotse cuts or
``id<TAB>text`` files (:func:`check_ids`: an id on one side only is an error). Both sides are
normalized with speechlab's one normalizer (``speechlab.data.text.normalize_text``) unless
``normalize=False``.

The command is ``speechlab score`` (:func:`speechlab.cli.score.score`); neither imports torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jiwer

from speechlab.data.text import normalize_text
from speechlab.io import read_jsonl, read_text

__all__ = [
    "ErrorCounts",
    "MissingIdsError",
    "ScoreReport",
    "TranscriptError",
    "UtteranceScore",
    "check_ids",
    "edit_counts",
    "read_transcripts",
    "score",
]

Unit = Literal["word", "char"]

#: JSONL fields read for the references and the hypotheses, in order of preference.
REF_FIELDS: tuple[str, ...] = ("ref", "text")
HYP_FIELDS: tuple[str, ...] = ("hyp", "text")

NORMALIZERS: dict[str, str] = {
    "speechlab": "speechlab.data.text.normalize_text (accents folded, lower-case, "
    "punctuation and hyphens to spaces, whitespace collapsed)",
    "none": "none (whitespace collapsed only)",
}

_MAX_LISTED_IDS = 20


# --------------------------------------------------------------------------------------
# Counts


@dataclass(frozen=True)
class ErrorCounts:
    """Levenshtein edit counts of one or more reference/hypothesis pairs.

    Counts add (``a + b``, ``sum(counts)``), so per-batch or per-rank counts combine into the
    exact corpus figure; :attr:`rate` is always computed from the summed counts.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    ref_len: int = 0

    def __post_init__(self) -> None:
        values = (self.substitutions, self.deletions, self.insertions, self.hits, self.ref_len)
        if any(v < 0 for v in values):
            raise ValueError(f"ErrorCounts: negative count in {self}")
        if self.ref_len != self.hits + self.substitutions + self.deletions:
            raise ValueError(
                f"ErrorCounts: ref_len must equal hits + substitutions + deletions, got {self}"
            )

    @property
    def errors(self) -> int:
        """Substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def hyp_len(self) -> int:
        """Number of hypothesis units (hits + substitutions + insertions)."""
        return self.hits + self.substitutions + self.insertions

    @property
    def rate(self) -> float:
        """``errors / ref_len``; with an empty reference 0.0 when there is no error, else inf."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
            self.ref_len + other.ref_len,
        )

    def __radd__(self, other: object) -> ErrorCounts:
        # lets sum(list_of_counts) start from 0
        if other == 0:
            return self
        return NotImplemented  # type: ignore[return-value]

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        """``(substitutions, deletions, insertions, hits, ref_len)``; ``ErrorCounts(*t)``
        rebuilds it (e.g. after an all-reduce of a tensor of these five numbers)."""
        return (self.substitutions, self.deletions, self.insertions, self.hits, self.ref_len)

    def to_dict(self) -> dict[str, Any]:
        return {
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "ref_len": self.ref_len,
            "errors": self.errors,
            "rate": _json_rate(self.rate),
        }


@dataclass
class _Alignment:
    ref: list[str]
    hyp: list[str]
    chunks: list[jiwer.AlignmentChunk]
    counts: ErrorCounts


def _clean(text: str) -> str:
    """Collapse whitespace: the only change made to a text when normalization is off."""
    return " ".join(text.split())


def _tokens(text: str, unit: Unit) -> list[str]:
    """Words or characters of a whitespace-collapsed text (as jiwer's default transforms)."""
    if unit == "char":
        return list(text)
    return text.split(" ") if text else []


def _counts_of(chunks: Sequence[jiwer.AlignmentChunk]) -> ErrorCounts:
    s = d = i = h = 0
    for c in chunks:
        n_ref, n_hyp = c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx
        if c.type == "equal":
            h += n_ref
        elif c.type == "substitute":
            # rapidfuzz's replace blocks are square; be safe if one ever is not
            s += min(n_ref, n_hyp)
            d += max(0, n_ref - n_hyp)
            i += max(0, n_hyp - n_ref)
        elif c.type == "delete":
            d += n_ref
        elif c.type == "insert":
            i += n_hyp
    return ErrorCounts(s, d, i, h, h + s + d)


def _align(refs: Sequence[str], hyps: Sequence[str], unit: Unit) -> list[_Alignment]:
    """Align each pair with jiwer (whitespace-collapsed texts; no other transform).

    Pairs with an empty side are aligned here (all insertions or all deletions), since some
    jiwer versions refuse empty references.
    """
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [_clean(r) for r in refs]
    hyps = [_clean(h) for h in hyps]
    out: list[_Alignment | None] = [None] * len(refs)
    both = [k for k, (r, h) in enumerate(zip(refs, hyps, strict=True)) if r and h]
    for k, (r, h) in enumerate(zip(refs, hyps, strict=True)):
        if r and h:
            continue
        ref_t, hyp_t = _tokens(r, unit), _tokens(h, unit)
        chunks = []
        if ref_t:
            chunks.append(jiwer.AlignmentChunk("delete", 0, len(ref_t), 0, 0))
        if hyp_t:
            chunks.append(jiwer.AlignmentChunk("insert", 0, 0, 0, len(hyp_t)))
        out[k] = _Alignment(ref_t, hyp_t, chunks, _counts_of(chunks))
    if both:
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        result = process([refs[k] for k in both], [hyps[k] for k in both])
        for k, ref_t, hyp_t, chunks in zip(
            both, result.references, result.hypotheses, result.alignments, strict=True
        ):
            out[k] = _Alignment(ref_t, hyp_t, chunks, _counts_of(chunks))
    return out  # type: ignore[return-value]


def edit_counts(refs: Sequence[str], hyps: Sequence[str], unit: Unit = "word",
                normalize: bool = False) -> ErrorCounts:
    """Summed word (``unit="word"``) or character (``unit="char"``) edit counts of the pairs.

    This is speechlab's one WER/CER function (built on ``jiwer.process_words`` /
    ``process_characters``). Texts are taken as they are, apart from collapsing whitespace,
    unless ``normalize`` (both sides through :func:`speechlab.data.text.normalize_text`, as
    ``speechlab score`` does by default; the training metrics and ``speechlab decode`` use it, so
    their numbers equal the scorer's). Characters include the spaces between words. Sum the
    counts of batches/ranks, then take ``.rate``:

    >>> edit_counts(["the cat sat"], ["the cat sat down"]).rate
    0.3333333333333333
    >>> edit_counts([""], ["a b c"])
    ErrorCounts(substitutions=0, deletions=0, insertions=3, hits=0, ref_len=0)
    """
    if normalize:
        refs, hyps = [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]
    return sum((a.counts for a in _align(refs, hyps, unit)), ErrorCounts())


# --------------------------------------------------------------------------------------
# Reading transcripts


class TranscriptError(ValueError):
    """A REF/HYP file that cannot be read; the message names the file, the line and why."""


class MissingIdsError(ValueError):
    """REF and HYP do not hold the same utterance ids; the message lists them."""


_ABSENT = object()


def _jsonl_text(obj: dict, fields: Sequence[str]) -> Any:
    for name in fields:
        if name in obj:
            return obj[name]
    if "text" in fields and isinstance(obj.get("supervisions"), list):  # a lhotse cut
        return " ".join(str(s.get("text") or "") for s in obj["supervisions"])
    return _ABSENT


def _jsonl_id(obj: dict) -> Any:
    if "id" in obj:
        return obj["id"]
    if isinstance(obj.get("audio_filepath"), str):
        return Path(obj["audio_filepath"]).stem
    return None


def read_transcripts(
    path: str | os.PathLike, field: str | Sequence[str] | None = None
) -> dict[str, str]:
    """Read ``{id: text}`` from a JSONL manifest/hypothesis file or an ``id<TAB>text`` file.

    The format is taken from the first non-blank line (``{`` = JSONL). In JSONL the text is
    the first of ``field`` (a key or a sequence of keys; default ``"text"``) that a line
    holds (lhotse cuts: their supervisions' texts); the id is ``"id"``, else the stem of
    ``"audio_filepath"``. In text files a line is ``id<TAB>text``, or ``id text`` when it has no
    tab; a bare ``id`` is an empty text. Empty texts are allowed; blank lines are skipped.

    Raises :class:`TranscriptError` (``path:line: reason``) on malformed JSON, a missing id or
    text, a non-string text, or a duplicate id.
    """
    path = Path(path)
    fields = ("text",) if field is None else (field,) if isinstance(field, str) else tuple(field)
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}

    def fail(lineno: int, reason: str) -> TranscriptError:
        return TranscriptError(f"{path}:{lineno}: {reason}")

    try:
        lines = read_text(path).splitlines()
    except UnicodeDecodeError as e:
        raise TranscriptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from e
        raise TranscriptError(f"{path}: cannot read ({e})") from e

    is_jsonl = next((ln.lstrip().startswith("{") for ln in lines if ln.strip()), False)
    for lineno, utt, text in (_jsonl_transcripts(path, fields) if is_jsonl
                              else _text_transcripts(lines)):
        if not utt:
            raise fail(lineno, "empty utterance id")
        if utt in out:
            raise fail(lineno, f"duplicate id {utt!r} (first on line {first_line[utt]})")
        out[utt] = text
        first_line[utt] = lineno
    return out


def _jsonl_transcripts(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)`` of a JSON-lines transcript file (see :func:`read_transcripts`)."""
    for lineno, obj in read_jsonl(path, TranscriptError, "transcript file"):
        utt = _jsonl_id(obj)
        if utt is None:
            raise TranscriptError(f"{path}:{lineno}: no 'id' (or 'audio_filepath') field")
        utt = str(utt)
        text = _jsonl_text(obj, fields)
        if text is _ABSENT:
            wanted = " or ".join(repr(k) for k in fields)
            raise TranscriptError(f"{path}:{lineno}: no {wanted} field (keys: {', '.join(obj)})")
        if not isinstance(text, str):
            raise TranscriptError(f"{path}:{lineno}: text of {utt!r} is {type(text).__name__}, "
                                  "not a string")
        yield lineno, utt, text


def _text_transcripts(lines: list[str]) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)`` of a Kaldi-style text file's lines: ``id<TAB>text`` or ``id text``."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "\t" in line:
            utt, _, text = line.partition("\t")
        else:  # Kaldi style: id, one space, text (or a bare id: empty text)
            utt, _, text = line.strip().partition(" ")
        yield lineno, utt.strip(), text


def _list_ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_LISTED_IDS])
    more = len(ids) - _MAX_LISTED_IDS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_ids(
    refs: Mapping[str, str], hyps: Mapping[str, str], ref_name: str = "REF", hyp_name: str = "HYP"
) -> None:
    """Raise :class:`MissingIdsError` listing (the first 20 of) the ids found on one side only."""
    missing = [k for k in refs if k not in hyps]
    extra = [k for k in hyps if k not in refs]
    parts = []
    if missing:
        parts.append(f"{len(missing)} id(s) of {ref_name} missing from {hyp_name}: {_list_ids(missing)}")
    if extra:
        parts.append(f"{len(extra)} id(s) of {hyp_name} not in {ref_name}: {_list_ids(extra)}")
    if parts:
        raise MissingIdsError("; ".join(parts))


# --------------------------------------------------------------------------------------
# Scoring


@dataclass
class UtteranceScore:
    """One utterance: its (normalized) texts and word and character counts."""

    id: str
    ref: str
    hyp: str
    words: ErrorCounts
    chars: ErrorCounts
    _alignment: _Alignment = dataclasses.field(repr=False, compare=False)

    @property
    def word_errors(self) -> int:
        return self.words.errors

    @property
    def ref_words(self) -> int:
        return self.words.ref_len

    @property
    def wer(self) -> float:
        return self.words.rate

    def alignment(self) -> str:
        """Word alignment as three lines: REF, HYP and the S/D/I marks."""
        return render_alignment(self._alignment.ref, self._alignment.hyp, self._alignment.chunks)

    def to_dict(self, alignment: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "ref": self.ref,
            "hyp": self.hyp,
            "word_errors": self.word_errors,
            "ref_words": self.ref_words,
            "wer": _json_rate(self.wer),
            "substitutions": self.words.substitutions,
            "deletions": self.words.deletions,
            "insertions": self.words.insertions,
            "char_errors": self.chars.errors,
            "ref_chars": self.chars.ref_len,
            "cer": _json_rate(self.chars.rate),
        }
        if alignment:
            d["alignment"] = self.alignment()
        return d


@dataclass
class ScoreReport:
    """Corpus word and character counts plus per-utterance rows (in REF order)."""

    normalization: str
    words: ErrorCounts
    chars: ErrorCounts
    utterances: list[UtteranceScore]

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    @property
    def num_utterances(self) -> int:
        return len(self.utterances)

    def worst(self, n: int | None = None) -> list[UtteranceScore]:
        """Utterances with word errors, most errors first, ties by higher WER, then id."""
        rows = [u for u in self.utterances if u.word_errors > 0]
        rows.sort(key=lambda u: (-u.word_errors, -u.wer, u.id))
        return rows if n is None else rows[: max(n, 0)]

    def to_dict(self, worst: int = 10, alignments: int = 0) -> dict[str, Any]:
        """Machine-readable report; the first ``alignments`` worst rows carry their alignment."""
        return {
            "normalization": self.normalization,
            "utterances": self.num_utterances,
            "wer": _json_rate(self.wer),
            "cer": _json_rate(self.cer),
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
            "worst": [
                u.to_dict(alignment=k < alignments)
                for k, u in enumerate(self.worst(max(worst, alignments)))
            ],
        }

    def format(self, worst: int = 10, alignments: int = 0, header: Sequence[str] = ()) -> str:
        """Human-readable report: header, WER/CER table, worst utterances, alignments."""
        lines = list(header)
        lines += [
            f"normalization: {NORMALIZERS.get(self.normalization, self.normalization)}",
            f"utterances:    {self.num_utterances}",
            "",
            f"{'':4} {'rate':>8} {'S':>7} {'D':>7} {'I':>7} {'errors':>8} {'ref':>8}",
        ]
        for name, c, unit in (("WER", self.words, "words"), ("CER", self.chars, "chars")):
            lines.append(
                f"{name:4} {_pct(c.rate):>8} {c.substitutions:>7} {c.deletions:>7} "
                f"{c.insertions:>7} {c.errors:>8} {c.ref_len:>8} {unit}"
            )
        rows = self.worst(worst)
        if rows:
            width = max(len("id"), *(len(u.id) for u in rows))
            lines += ["", f"worst utterances (by word errors, {len(rows)} shown):",
                      f"  {'id':<{width}} {'errors':>6} {'words':>6} {'WER':>8}  S/D/I"]
            for u in rows:
                w = u.words
                lines.append(
                    f"  {u.id:<{width}} {u.word_errors:>6} {u.ref_words:>6} {_pct(u.wer):>8}  "
                    f"{w.substitutions}/{w.deletions}/{w.insertions}"
                )
        shown = self.worst(alignments)
        if shown:
            lines += ["", f"alignments of the {len(shown)} worst utterances:"]
            for u in shown:
                lines += ["", f"{u.id}  (word errors {u.word_errors}, ref words {u.ref_words})"]
                lines += ["  " + ln for ln in u.alignment().splitlines()]
        return "\n".join(lines) + "\n"


def score(
    refs: Mapping[str, str], hyps: Mapping[str, str], normalize: bool = True
) -> ScoreReport:
    """Score ``hyps`` against ``refs`` (both ``{id: text}``; the same ids, else
    :class:`MissingIdsError`). With ``normalize`` both sides go through
    :func:`~speechlab.data.text.normalize_text`; otherwise only whitespace is collapsed."""
    check_ids(refs, hyps)
    ids = list(refs)
    prep = normalize_text if normalize else _clean
    ref_texts = [prep(refs[k]) for k in ids]
    hyp_texts = [prep(hyps[k]) for k in ids]
    word_al = _align(ref_texts, hyp_texts, "word")
    char_al = _align(ref_texts, hyp_texts, "char")
    rows = [
        UtteranceScore(k, r, h, wa.counts, ca.counts, wa)
        for k, r, h, wa, ca in zip(ids, ref_texts, hyp_texts, word_al, char_al, strict=True)
    ]
    return ScoreReport(
        normalization="speechlab" if normalize else "none",
        words=sum((u.words for u in rows), ErrorCounts()),
        chars=sum((u.chars for u in rows), ErrorCounts()),
        utterances=rows,
    )


# --------------------------------------------------------------------------------------
# Rendering helpers


def _pairs(
    ref: Sequence[str], hyp: Sequence[str], chunks: Sequence[jiwer.AlignmentChunk]
) -> Iterator[tuple[str | None, str | None, str]]:
    for c in chunks:
        r = ref[c.ref_start_idx : c.ref_end_idx]
        h = hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "equal":
            yield from ((a, b, " ") for a, b in zip(r, h, strict=True))
        elif c.type == "delete":
            yield from ((a, None, "D") for a in r)
        elif c.type == "insert":
            yield from ((None, b, "I") for b in h)
        else:
            for a, b in itertools.zip_longest(r, h):
                yield a, b, "S" if a is not None and b is not None else "D" if b is None else "I"


def render_alignment(
    ref: Sequence[str], hyp: Sequence[str], chunks: Sequence[jiwer.AlignmentChunk]
) -> str:
    """Three lines ``REF:``/``HYP:``/marks; a gap is ``*`` (sclite style), columns left-aligned."""
    r_line, h_line, m_line = ["REF:"], ["HYP:"], ["    "]
    for a, b, mark in _pairs(ref, hyp, chunks):
        width = max(len(a or ""), len(b or ""), 1)
        r_line.append((a or "*" * width).ljust(width))
        h_line.append((b or "*" * width).ljust(width))
        m_line.append(mark.ljust(width))
    if len(r_line) == 1:
        r_line.append("(empty)")
        h_line.append("(empty)")
    return "\n".join(" ".join(x).rstrip() for x in (r_line, h_line, m_line)).rstrip() + "\n"


def _json_rate(rate: float) -> float | None:
    return None if math.isinf(rate) else rate


def _pct(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{100 * rate:.2f}%"
