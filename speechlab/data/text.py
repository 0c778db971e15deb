"""Text normalization and vocabularies.

One normalizer (:func:`normalize_text`) is used in training, decoding and scoring, so that the
numbers a model is trained on and the numbers it is scored on mean the same thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence

from speechlab.errors import InputError
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


def split_by_text(texts: Sequence[str], seed: int = 0, dev_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> dict[str, list[int]]:
    """Deterministic train/dev/test split of items by their ``texts``, keeping every text in one
    split: ``{"train" | "dev" | "test": ascending item indices}``.

    Distinct texts are visited in an order fixed by a hash of (seed, text); a text's items go to
    test while test holds fewer than ``round(test_fraction * N)`` items and the whole group
    fits, then likewise to dev, else to train. The assignment of a text depends only on the
    texts ahead of it in the hash order, so it is the same on every machine. Used by
    ``speechlab data synth`` and ``speechlab data prepare`` (corpora without a split).

    Raises:
        InputError: a fraction below 0, or fractions that sum to 1 or more.
    """
    if dev_fraction < 0 or test_fraction < 0 or dev_fraction + test_fraction >= 1:
        raise InputError(f"split fractions must be >= 0 and sum to < 1 (dev {dev_fraction}, "
                         f"test {test_fraction})")
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    order = sorted(groups, key=lambda t: hashlib.sha1(f"{seed}\n{t}".encode()).digest())
    n = len(texts)
    targets = {"test": round(test_fraction * n), "dev": round(dev_fraction * n)}
    members: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for text in order:
        group = groups[text]
        split = next((s for s in ("test", "dev") if len(members[s]) + len(group) <= targets[s]),
                     "train")
        members[split].extend(group)
    return {s: sorted(idx) for s, idx in members.items()}
