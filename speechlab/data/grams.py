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
from collections.abc import Iterable, Sequence
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
        by_order = ngram_counts(texts, vocab, max_n, within_words)
        counts = {g: c for order in by_order.values() for g, c in order.items()}
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


# ---------------------------------------------------------------------- statistics over text


def ngram_counts(texts: Iterable[str], vocab: CharVocab, max_n: int,
                 within_words: bool = False) -> dict[int, Counter[str]]:
    """``{n: Counter of n-grams}`` for ``2 <= n <= max_n`` over ``texts`` (used as given).

    N-grams with characters outside ``vocab`` are not counted, nor, with ``within_words=True``,
    n-grams that contain a space.
    """
    counts: dict[int, Counter[str]] = {n: Counter() for n in range(2, max_n + 1)}
    for text in texts:
        for n in range(2, max_n + 1):
            for i in range(len(text) - n + 1):
                g = text[i : i + n]
                if vocab.oov_chars(g) or (within_words and " " in g):
                    continue
                counts[n][g] += 1
    return counts


def segment_greedy(text: str, grams: GramSet) -> list[str]:
    """Longest-match segmentation of ``text`` into grams of the set (left to right); a character
    outside the set is one token of its own."""
    out, i = [], 0
    while i < len(text):
        for n in range(min(grams.max_n, len(text) - i), 0, -1):
            if text[i : i + n] in grams:
                out.append(text[i : i + n])
                i += n
                break
        else:  # a character outside the vocabulary: count it as one token
            out.append(text[i])
            i += 1
    return out


def min_frames(text: str, grams: GramSet) -> int:
    """Fewest frames a Gram-CTC path needs to emit ``text``: a shortest segmentation into grams
    plus one blank between two equal consecutive grams (dynamic programming over positions and
    the last gram). With unigrams only this is CTC's ``len + repeats``. ``2**30`` when no
    segmentation exists (a character outside the set)."""
    inf = 1 << 30
    u = len(text)
    # best[i] = {last gram: frames} for the prefix text[:i]
    best: list[dict[str, int]] = [dict() for _ in range(u + 1)]
    best[0][""] = 0
    for i in range(u):
        if not best[i]:
            continue
        for n in range(1, min(grams.max_n, u - i) + 1):
            g = text[i : i + n]
            if g not in grams:
                continue
            cost = min(f + (2 if last == g else 1) for last, f in best[i].items())
            if cost < best[i + n].get(g, inf):
                best[i + n][g] = cost
    return min(best[u].values()) if best[u] else inf


def gram_statistics(texts: Sequence[str], grams: GramSet, counts: dict[str, int] | None = None,
                    top: int = 40) -> str:
    """A printable report: set size by order, the ``top`` longer grams by ``counts`` (when
    given), and how much of ``texts`` the set covers (greedy segmentation, fewest frames)."""
    by_order = Counter(len(g) for g in grams.grams)
    lines = [f"GramSet: {len(grams.grams)} grams + blank = {len(grams)} outputs; by order: "
             + ", ".join(f"{n}-grams {by_order[n]}" for n in sorted(by_order))]
    chars = sum(len(t) for t in texts)
    if texts:
        tokens = sum(len(segment_greedy(t, grams)) for t in texts)
        frames_ctc = sum(min_frames(t, GramSet.unigrams(grams.vocab)) for t in texts)
        frames_g = sum(min_frames(t, grams) for t in texts)
        lines.append(f"text: {len(texts)} utterances, {chars} characters; greedy longest-match "
                     f"segmentation: {tokens} tokens ({chars / max(tokens, 1):.2f} characters per "
                     f"token); fewest frames a path needs: CTC {frames_ctc}, this set {frames_g} "
                     f"({frames_g / max(frames_ctc, 1):.2f}x)")
    if counts is not None:
        longer = sorted(((g, counts.get(g, 0)) for g in grams.grams if len(g) > 1),
                        key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{g!r}:{c}" for g, c in longer[:top])
        lines.append(f"longest grams by count (top {min(top, len(longer))} of {len(longer)}): {shown}")
    return "\n".join(lines)


def refine_grams(grams: GramSet, counts: dict[str, int], keep: int) -> GramSet:
    """All unigrams + the ``keep`` longer grams of ``grams`` with the highest (non-zero)
    ``counts`` (e.g. how often a model emitted each gram); ties by the gram string. Order: by
    count, so ids follow usage."""
    longer = sorted(((g, c) for g, c in counts.items() if len(g) > 1 and c > 0 and g in grams),
                    key=lambda kv: (-kv[1], kv[0]))[:keep]
    return GramSet.from_ngrams(grams.vocab, [g for g, _ in longer])


def emission_report(counts: dict[str, int], top: int = 30) -> str:
    """A printable report of ``{gram: times emitted}``: tokens by gram length, the share of
    characters spelled by multi-character grams, the ``top`` most used and the unused grams."""
    total = sum(counts.values())
    chars = sum(len(g) * c for g, c in counts.items())
    by_len: Counter[int] = Counter()
    for g, c in counts.items():
        by_len[len(g)] += c
    multi = sum(len(g) * c for g, c in counts.items() if len(g) > 1)
    used = sorted(((g, c) for g, c in counts.items() if c > 0), key=lambda kv: (-kv[1], kv[0]))
    longer = [(g, c) for g, c in used if len(g) > 1]
    lines = [
        f"emitted {total} tokens spelling {chars} characters ({chars / max(total, 1):.2f} per token); "
        "by gram length: " + ", ".join(f"{n}: {by_len[n]}" for n in sorted(by_len)),
        f"characters spelled by multi-character grams: {multi} ({100 * multi / max(chars, 1):.1f}%)",
        f"grams used: {len(used)} of {len(counts)} ({len(longer)} longer than one character)",
        "most used longer grams: " + ", ".join(f"{g!r}:{c}" for g, c in longer[:top]),
    ]
    unused = sorted(g for g, c in counts.items() if c == 0 and len(g) > 1)
    if unused:
        lines.append(f"never emitted ({len(unused)}): " + ", ".join(map(repr, unused[:top]))
                     + (" ..." if len(unused) > top else ""))
    return "\n".join(lines)
