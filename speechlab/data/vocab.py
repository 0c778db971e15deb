"""Vocabularies: one protocol for the token <-> id maps of every task.

Three vocabularies implement :class:`Vocab`:

* :class:`~speechlab.data.text.CharVocab`: characters, CTC blank at id 0 (the ASR tasks, the
  character LMs);
* :class:`~speechlab.data.subword.SentencePieceVocab`: SentencePiece pieces, blank at id 0
  (subword LMs and ASR targets);
* :class:`WordVocab` (here): words (the TCNLM's LM and topic vocabularies).

They share the names of :class:`Vocab` (``id_of``, ``token_of``, ``encode``, ``decode`` returning
a string, ``tokens`` returning the token strings, ``to_dict``); each adds what is its own
(``blank`` and ``oov_chars`` for the ASR ones, ``unk`` for words). A saved vocabulary is its
``to_dict()`` (JSON; ``"type"`` is ``char``, ``sentencepiece`` or ``word``), and
:func:`vocab_from_dict` rebuilds any of them. :class:`~speechlab.data.grams.GramSet` (Gram-CTC's
output units) has the same ``id_of``/``decode`` but is a gram inventory, not one of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from speechlab.data.subword import SentencePieceVocab
from speechlab.data.text import CharVocab


@runtime_checkable
class Vocab(Protocol):
    """A token <-> id map with a JSON form."""

    def __len__(self) -> int:
        """Number of ids (the model's output size)."""
        ...

    def id_of(self, token: str) -> int:
        """Id of one token (``KeyError`` when the vocabulary lacks it)."""
        ...

    def token_of(self, idx: int) -> str:
        """Token string of one id."""
        ...

    def encode(self, text: Any) -> list[int]:
        """Ids of a text (``str``; a word vocabulary also takes a token sequence)."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, as a string."""
        ...

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The token strings of ``ids``, one per id."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state; :func:`vocab_from_dict` rebuilds the vocabulary from it."""
        ...


class WordVocab:
    """Word <-> id map. ``unk`` (if given) is the id of unknown words; without it, unknown words
    are dropped by :meth:`encode`."""

    def __init__(self, words: Sequence[str], unk: str | None = None) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("WordVocab: duplicate words")
        if unk is not None and unk not in self.index:
            raise ValueError(f"WordVocab: unk token {unk!r} not in the words")
        self.unk = unk
        self.unk_id = None if unk is None else self.index[unk]

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordVocab) and self.words == other.words and self.unk == other.unk

    def __hash__(self) -> int:
        return hash((tuple(self.words), self.unk))

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __repr__(self) -> str:
        return f"WordVocab({len(self)} words)"

    def id_of(self, word: str) -> int:
        return self.index[word]

    def token_of(self, idx: int) -> str:
        return self.words[int(idx)]

    def encode(self, text: str | Iterable[str]) -> list[int]:
        """Ids of the words of ``text`` (a string is split on white space)."""
        tokens = text.split() if isinstance(text, str) else text
        if self.unk_id is None:
            return [self.index[t] for t in tokens if t in self.index]
        return [self.index.get(t, self.unk_id) for t in tokens]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` joined by single spaces."""
        return " ".join(self.tokens(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "word", "words": self.words, "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordVocab:
        return cls(d["words"], d.get("unk"))


#: ``to_dict()["type"]`` -> class
VOCAB_TYPES: dict[str, type] = {"char": CharVocab, "sentencepiece": SentencePieceVocab,
                                "word": WordVocab}


def vocab_from_dict(d: dict[str, Any]) -> Vocab:
    """Rebuild any vocabulary from its ``to_dict()`` (``"type"``: ``char``, ``sentencepiece``
    or ``word``)."""
    kind = d.get("type")
    if kind not in VOCAB_TYPES:
        raise ValueError(f"unknown vocabulary type {kind!r} (known: {', '.join(VOCAB_TYPES)})")
    return VOCAB_TYPES[kind].from_dict(d)


__all__ = ["VOCAB_TYPES", "Vocab", "WordVocab", "vocab_from_dict"]
