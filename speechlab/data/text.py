"""Text normalization and vocabularies.

One normalizer (:func:`normalize_text`) is used in training, decoding and scoring, so that the
numbers a model is trained on and the numbers it is scored on mean the same thing.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence

from speechlab.io import atomic_write_text, read_text

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
# letters that have no decomposition into a-z but a conventional spelling in it
_LIGATURES = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o"})
_NON_WORD = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalize a transcript: NFKD, ASCII-fold accents and ligatures (``ß`` → ``ss``), lower-case, typographic apostrophes to
    ``'``, hyphens/underscores/other punctuation to spaces, collapse whitespace.

    >>> normalize_text("Turn ON the Kitchen-Lights, please!")
    'turn on the kitchen lights please'
    >>> normalize_text("Don\u2019t  stop")
    "don't stop"
    """
    text = unicodedata.normalize("NFKD", text).translate(_APOSTROPHES).translate(_LIGATURES)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _NON_WORD.sub(" ", text)
    # apostrophes that do not sit inside a word are quotes, not contractions
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return _SPACES.sub(" ", text).strip()


DEFAULT_CHARS: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz") + (" ", "'")


class CharVocab:
    """Character vocabulary with the CTC blank at index 0.

    Ids: ``0`` = blank, ``1..len(chars)`` = ``chars`` in the given order. The default is
    ``a``-``z``, space, apostrophe (29 outputs with the blank).
    """

    blank: int = 0
    blank_symbol: str = "<blank>"

    def __init__(self, chars: Sequence[str] = DEFAULT_CHARS) -> None:
        chars = tuple(chars)
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharVocab: duplicate characters {dup!r}")
        if any(len(c) != 1 for c in chars):
            raise ValueError(f"CharVocab: every entry must be one character, got {chars!r}")
        self.chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        """Number of outputs including the blank."""
        return len(self.chars) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({''.join(self.chars)!r})"

    def id_of(self, char: str) -> int:
        """Id of a character (``<blank>``: the blank); ``KeyError`` when it is not held."""
        return self.blank if char == self.blank_symbol else self._index[char]

    def token_of(self, idx: int) -> str:
        """Character of id ``idx`` (``<blank>`` for the blank)."""
        if not 0 <= idx < len(self):
            raise ValueError(f"id {idx} out of range [0, {len(self)})")
        return self.blank_symbol if idx == self.blank else self.chars[idx - 1]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Characters of ``ids`` (the blank as ``<blank>``)."""
        return [self.token_of(int(i)) for i in ids]

    def oov_chars(self, text: str) -> set[str]:
        """Characters of ``text`` that the vocabulary does not hold."""
        return {c for c in text if c not in self._index}

    def encode(self, text: str, strict: bool = True) -> list[int]:
        """Character ids of ``text`` (already normalized). With ``strict=False`` unknown
        characters are dropped; otherwise they raise ``ValueError``."""
        if strict:
            oov = self.oov_chars(text)
            if oov:
                raise ValueError(f"characters not in vocabulary: {sorted(oov)!r} in {text!r}")
            return [self._index[c] for c in text]
        return [self._index[c] for c in text if c in self._index]

    def decode(self, ids: Iterable[int]) -> str:
        """String of the ids (blank ids are skipped; no CTC collapse here)."""
        return "".join(self.chars[i - 1] for i in ids if i != self.blank)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharVocab:
        return cls(d["chars"])

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        return cls.from_dict(json.loads(read_text(path)))
