"""Gram sets for Gram-CTC: the output vocabulary of character n-grams.

Ids: ``0`` = blank, ``1..|Σ|`` = the unigrams in the :class:`CharVocab`'s order (so a
unigram-only :class:`GramSet` is plain CTC with the same ids), then the longer grams in the
order given. Targets of the Gram-CTC loss stay *character* ids; the gram set only defines the
network's outputs and the lattice.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from speechlab.data.text import CharVocab
from speechlab.errors import InputError
from speechlab.io import atomic_write_text, read_text

_FORMAT = "gramset"
_VERSION = 1


class GramSet:
    """An ordered set of character n-grams (all unigrams included) with the blank at id 0.

    Args:
        vocab: the character vocabulary the targets are encoded with.
        grams: gram strings. Must contain every character of ``vocab`` as a unigram; the
            unigrams get ids ``1..len(vocab.chars)`` in vocabulary order whatever their order
            here; longer grams follow in the order given.

    Raises:
        ValueError: a unigram is missing, a gram is empty, repeated, or uses a character that
            ``vocab`` does not hold, or a gram is too long for the kernels' 63-bit gram keys.

    >>> from speechlab.data.text import CharVocab
    >>> g = GramSet(CharVocab("ab"), ["a", "b", "ab", "aab"])
    >>> len(g), g.id_of("ab"), g[4], g.max_n
    (5, 3, 'aab', 3)
    """

    blank: int = 0
    blank_symbol: str = "<blank>"

    def __init__(self, vocab: CharVocab, grams: Iterable[str]) -> None:
        grams = list(grams)
        seen: set[str] = set()
        for g in grams:
            if not isinstance(g, str) or not g:
                raise ValueError(f"GramSet: grams must be non-empty strings, got {g!r}")
            if g in seen:
                raise ValueError(f"GramSet: gram {g!r} is given twice")
            seen.add(g)
            oov = vocab.oov_chars(g)
            if oov:
                raise ValueError(
                    f"GramSet: gram {g!r} uses characters not in the vocabulary: {sorted(oov)!r}"
                )
        missing = [c for c in vocab.chars if c not in seen]
        if missing:
            raise ValueError(
                f"GramSet: every character of the vocabulary must be a unigram; missing "
                f"{missing!r} (use GramSet.from_ngrams(vocab, ngrams) to add them)"
            )
        self.vocab = vocab
        self.grams: tuple[str, ...] = tuple(vocab.chars) + tuple(g for g in grams if len(g) > 1)
        self._index = {g: i + 1 for i, g in enumerate(self.grams)}
        self.max_n = max(len(g) for g in self.grams)
        limit = self.max_key_length(len(vocab.chars))
        if self.max_n > limit:
            raise ValueError(
                f"GramSet: grams of up to {limit} characters are supported with "
                f"{len(vocab.chars)} characters (63-bit gram keys); got a gram of {self.max_n}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def unigrams(cls, vocab: CharVocab) -> GramSet:
        """The unigram-only set: Gram-CTC with it is CTC."""
        return cls(vocab, vocab.chars)

    @classmethod
    def from_ngrams(cls, vocab: CharVocab, ngrams: Iterable[str]) -> GramSet:
        """All unigrams of ``vocab`` plus ``ngrams`` (unigrams among them are ignored)."""
        return cls(vocab, list(vocab.chars) + [g for g in ngrams if len(g) > 1])

    @classmethod
    def all_ngrams(cls, vocab: CharVocab, max_n: int = 2) -> GramSet:
        """Every n-gram over ``vocab``'s characters for ``n <= max_n`` (28 characters and
        ``max_n=2``: 28 + 784 grams, 813 outputs with the blank)."""
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        grams = list(vocab.chars)
        level = list(vocab.chars)
        for _ in range(2, max_n + 1):
            level = [p + c for p in level for c in vocab.chars]
            grams += level
        return cls(vocab, grams)

    @classmethod
    def from_corpus(
        cls,
        texts: Iterable[str],
        vocab: CharVocab,
        max_n: int = 2,
        top_k: int = 100,
        within_words: bool = False,
    ) -> GramSet:
        """All unigrams plus the ``top_k`` most frequent n-grams (``2 <= n <= max_n``) of
        ``texts``.

        Texts are used as given (normalize them first, as for training). N-grams that contain
        a character outside ``vocab`` are not counted. With ``within_words=True`` n-grams that
        contain a space are not counted. Ties are broken by the gram string, so the result is
        deterministic.
        """
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        counts: Counter[str] = Counter()
        for text in texts:
            for n in range(2, max_n + 1):
                for i in range(len(text) - n + 1):
                    g = text[i : i + n]
                    if vocab.oov_chars(g) or (within_words and " " in g):
                        continue
                    counts[g] += 1
        best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return cls.from_ngrams(vocab, [g for g, _ in best])

    # ------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        """Number of network outputs: the blank plus every gram."""
        return len(self.grams) + 1

    @property
    def num_chars(self) -> int:
        """|Σ|: the number of characters (= unigrams)."""
        return len(self.vocab.chars)

    def __getitem__(self, gram_id: int) -> str:
        """The gram string of ``gram_id`` (``""`` for the blank)."""
        if gram_id == self.blank:
            return ""
        if not 0 < gram_id <= len(self.grams):
            raise IndexError(f"gram id {gram_id} out of range [0, {len(self)})")
        return self.grams[gram_id - 1]

    def __contains__(self, gram: object) -> bool:
        return gram in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GramSet) and (other.vocab, other.grams) == (
            self.vocab,
            self.grams,
        )

    def __hash__(self) -> int:
        return hash((self.vocab, self.grams))

    def __repr__(self) -> str:
        return f"GramSet({len(self.grams)} grams, max_n={self.max_n}, vocab={self.vocab!r})"

    def id_of(self, gram: str) -> int:
        """Id of ``gram``; ``KeyError`` if it is not in the set."""
        try:
            return self._index[gram]
        except KeyError:
            raise KeyError(f"gram {gram!r} is not in the GramSet") from None

    def symbols(self) -> list[str]:
        """Output symbols in id order (``"<blank>"`` first)."""
        return [self.blank_symbol, *self.grams]

    def decode(self, ids: Iterable[int]) -> str:
        """Concatenate the grams of ``ids``, skipping blanks (no merging of repeats)."""
        return "".join(self[int(i)] for i in ids if int(i) != self.blank)

    def collapse(self, ids: Iterable[int]) -> str:
        """The Gram-CTC collapse B of a frame path: merge consecutive equal ids, drop blanks,
        concatenate the grams' characters."""
        out = []
        prev = None
        for i in ids:
            i = int(i)
            if i != prev and i != self.blank:
                out.append(self[i])
            prev = i
        return "".join(out)

    # ------------------------------------------------------------------ kernel tables
    @staticmethod
    def max_key_length(num_chars: int) -> int:
        """Longest gram whose key ``sum(c_j * (num_chars+1)**(n-1-j))`` fits in 63 bits."""
        base = num_chars + 1
        n = 0
        while base ** (n + 1) < 2**63:
            n += 1
        return n

    def key_of(self, gram: str) -> int:
        """The integer key of a gram: its character ids as digits in base ``|Σ|+1``."""
        key = 0
        base = self.num_chars + 1
        for c in gram:
            key = key * base + self.vocab.id_of(c)
        return key

    def key_table(self) -> tuple[list[int], list[int]]:
        """``(keys, ids)`` of every gram, sorted by key (the kernels binary-search it)."""
        pairs = sorted((self.key_of(g), self._index[g]) for g in self.grams)
        return [k for k, _ in pairs], [i for _, i in pairs]

    def key_tensors(self, device: object = "cpu") -> tuple:
        """:meth:`key_table` as ``(int64 keys, int32 ids)`` tensors on ``device``, cached."""
        import torch  # lazily: speechlab.data stays import-light

        dev = torch.device(device)
        cache = self.__dict__.setdefault("_key_tensors", {})
        if dev not in cache:
            keys, ids = self.key_table()
            cache[dev] = (
                torch.tensor(keys, dtype=torch.int64, device=dev),
                torch.tensor(ids, dtype=torch.int32, device=dev),
            )
        return cache[dev]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "type": _FORMAT,
            "version": _VERSION,
            "chars": list(self.vocab.chars),
            "grams": list(self.grams),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "GramSet dict") -> GramSet:
        """Inverse of :meth:`to_dict`; errors name ``source``."""
        if not isinstance(d, dict) or d.get("type") != _FORMAT:
            raise InputError(f"{source}: not a GramSet (expected an object with type={_FORMAT!r})")
        if d.get("version") != _VERSION:
            raise InputError(f"{source}: unsupported GramSet version {d.get('version')!r}")
        chars, grams = d.get("chars"), d.get("grams")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise InputError(f"{source}: 'chars' must be a list of strings")
        if not isinstance(grams, list) or not all(isinstance(g, str) for g in grams):
            raise InputError(f"{source}: 'grams' must be a list of strings")
        try:
            vocab = CharVocab(chars)
            gs = cls(vocab, grams)
        except ValueError as e:
            raise InputError(f"{source}: {e}") from None
        if gs.grams != tuple(grams):
            raise InputError(f"{source}: 'grams' must list the unigrams first, in vocabulary order")
        return gs

    def save(self, path: str | os.PathLike) -> None:
        """Write the set as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> GramSet:
        """Read a set written by :meth:`save`; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GramSet file")
        try:
            d = json.loads(read_text(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: malformed GramSet JSON: {e}") from None
        return cls.from_dict(d, source=str(path))
