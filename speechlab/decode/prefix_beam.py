"""CTC / Gram-CTC prefix beam search with an optional KenLM n-gram LM.

Hypotheses are *strings*: every frame path that spells the same prefix is merged into one
hypothesis, whatever grams spelled it (``"ab"`` from ``a,b`` or from the bigram ``ab``). Per
prefix ℓ the search carries the log-probability of the paths whose current frame is the blank
and, for each ``n``, of those whose current frame repeats the last emitted gram (ℓ's suffix of
length ``n``) — which is what decides whether the next equal gram merges or extends. With a
unigram-only gram set this is the usual CTC prefix beam search.

Score of a hypothesis: ``ln P_acoustic(ℓ) + α·ln P_LM(words of ℓ) + β·|words|``. Word LM
(``lm_unit="word"``): a word is scored when a space follows it; the last partial word and
``</s>`` are scored at the end. Character LM (``lm_unit="char"``): every character is an LM
token, the space written ``|`` (``speechlab lm ngram --unit char``). LM scores are cached per
trie node (each prefix is scored once) and per (LM state, word). An optional ``lexicon`` (word
mode; e.g. the LM's words, :func:`arpa_words`) adds ``unk_score`` once to a word that leaves the
lexicon's prefixes or ends outside it (``-inf``: only lexicon words are spelled, as in
flashlight's lexicon decoder).

The hot loop is C++ (``csrc/prefix_beam_search.cpp``, the module ``speechlab._decode``, called
through ctypes; the LM is reached through a callback that only runs on cache misses). A pure
Python implementation of the same algorithm (``backend="reference"``, the word the Gram-CTC
loss uses for its pure-PyTorch implementation too) is the fallback when the
extension is not built, and a cross-check in the tests.

    >>> dec = PrefixBeamSearch(chars="ab", grams=["a", "b", "ab"], beam_size=8)
    >>> import torch; lp = torch.tensor([[0.1, 0.1, 0.1, 0.7]]).log()
    >>> dec.decode(lp)[0].text
    'ab'
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from speechlab.io import open_text, read_text

LN10 = math.log(10.0)
CHAR_SPACE = "|"
_LM_FN = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
                          ctypes.c_int32, ctypes.POINTER(ctypes.c_int32))


@dataclass
class BeamHypothesis:
    """One decoded hypothesis: ``text``; ``score = am_score + lm_score``; ``am_score`` the
    acoustic log-probability (nats) of all paths spelling ``text``; ``lm_score`` the LM part
    ``α·ln P_LM + β·words``; ``words`` the words counted for β.

    ``word_times``: ``(word, first frame, last frame)`` (0-based output frames, inclusive) of
    every word of ``text`` (``text.split()``), or ``None`` when not asked for (only
    :class:`~speechlab.decode.batched_prefix_beam.BatchedPrefixBeamSearch` with
    ``timestamps=True`` gives them). Each emitted gram has an emission frame, the frame of the
    extension that appended it to the hypothesis (along the back-pointers the search keeps);
    a word starts at the emission frame of the gram holding its first character and ends at
    that of the gram holding its last, so a gram spanning a word boundary (``"e "``, ``" t"``,
    ``"b c"``) gives its frame to both words (see :func:`word_times`)."""

    text: str
    score: float
    am_score: float
    lm_score: float
    words: int
    word_times: list[tuple[str, int, int]] | None = None


def word_times(grams_with_frames: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """The words of a hypothesis spelled by ``grams_with_frames`` — each emitted gram with its
    emission frame, in order — with their first and last frames: a word (a maximal run of
    non-space characters, as ``str.split`` gives) runs from the frame of the gram holding its
    first character to the frame of the gram holding its last; a gram spanning a space gives
    its frame to the words on both sides; grams of spaces only give no word.

    >>> word_times([("a", 2), ("b ", 5), ("c", 9)])
    [('ab', 2, 5), ('c', 9, 9)]
    """
    out: list[tuple[str, int, int]] = []
    chars: list[str] = []
    start = end = -1
    for gram, frame in grams_with_frames:
        for ch in gram:
            if ch.isspace():
                if chars:
                    out.append(("".join(chars), start, end))
                    chars = []
            else:
                if not chars:
                    start = frame
                chars.append(ch)
                end = frame
    if chars:
        out.append(("".join(chars), start, end))
    return out


class KenLMScorer:
    """A KenLM model (ARPA or binary) for the beam search: natural-log scores, interned states.

    Args:
        path: the model file (``speechlab lm ngram``); a file that is not a KenLM model raises
            ``ValueError`` naming it.
        unit: ``"word"`` (words separated by spaces) or ``"char"`` (every character a token,
            the space written ``|``).
    """

    def __init__(self, path: str | os.PathLike, unit: str = "word") -> None:
        import kenlm

        from speechlab.lm.ngram import load_model

        if unit not in ("word", "char"):
            raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
        self.path = Path(path)
        self.unit = unit
        self.model = load_model(path)
        self._kenlm = kenlm
        self.states: list[Any] = []
        self._ids: dict[Any, int] = {}
        self._cache: dict[tuple[int, str | None], tuple[float, int]] = {}
        begin = kenlm.State()
        self.model.BeginSentenceWrite(begin)
        self._intern(begin)

    @property
    def order(self) -> int:
        return int(self.model.order)

    def _intern(self, state: Any) -> int:
        i = self._ids.get(state)
        if i is None:
            i = len(self.states)
            self._ids[state] = i
            self.states.append(state)
        return i

    def score(self, state: int, word: str | None) -> tuple[float, int]:
        """``(ln P(word | state), next state)``; ``word=None`` scores ``</s>``. Cached (states
        are interned, so the cache holds across utterances)."""
        key = (state, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self._kenlm.State()
        w = "</s>" if word is None else word
        s = self.model.BaseScore(self.states[state], w, out)
        hit = self._cache[key] = (s * LN10, self._intern(out))
        return hit

    def sentence_score(self, text: str) -> float:
        """``ln P`` of a whole sentence with ``<s>``/``</s>`` (the beam search's LM total)."""
        if self.unit == "char":
            text = " ".join(CHAR_SPACE if c == " " else c for c in text)
        return self.model.score(text, bos=True, eos=True) * LN10


def arpa_words(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA model's 1-gram section (without ``<s>``, ``</s>``, ``<unk>``): a
    lexicon for :class:`PrefixBeamSearch`. A file that is not an ARPA model raises
    ``ValueError`` naming it."""
    words, in_unigrams, seen = [], False, False
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("\\1-grams:"):
                    in_unigrams = seen = True
                    continue
                if in_unigrams:
                    if not line.strip() or line.startswith("\\"):
                        break
                    fields = line.split("\t")
                    if len(fields) < 2:
                        raise ValueError(f"{path}:{lineno}: not an ARPA 1-gram line: {line.strip()!r}")
                    w = fields[1].strip()
                    if w not in ("<s>", "</s>", "<unk>"):
                        words.append(w)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an ARPA model (not UTF-8 text; a binary KenLM model's "
                         f"words cannot be read)") from None
    if not seen:
        raise ValueError(f"{path}: not an ARPA model (no \\1-grams: section)")
    return words


def load_lexicon(spec: str | None, lm: str | os.PathLike | None) -> list[str] | None:
    """The lexicon of a :class:`PrefixBeamSearch`: ``None`` for ``spec=None``; for ``"lm"`` the
    words of the ARPA model ``lm`` (:func:`arpa_words`); else the first word of each line of the
    file ``spec``.

    Raises:
        ValueError: ``spec="lm"`` without an ARPA ``lm`` (a binary model's words cannot be read).
        FileNotFoundError: ``spec`` names no file.
    """
    if spec is None:
        return None
    if spec == "lm":
        if lm is None or not str(lm).endswith(".arpa"):
            raise ValueError("--lexicon lm needs an ARPA --lm (a binary LM's words cannot be read)")
        return arpa_words(lm)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such lexicon file")
    return [w for line in read_text(path).splitlines() for w in line.split()[:1]]


def _load_library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("speechlab._decode")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    f = lib.slpbs_decode
    i32, dbl = ctypes.c_int32, ctypes.c_double
    p = ctypes.c_void_p
    f.argtypes = [p, i32, i32, p, p, i32, i32, i32, dbl, dbl, dbl, dbl, i32, i32, _LM_FN, p, dbl,
                  i32, i32, p, p, p, p]
    f.restype = i32
    lib.slpbs_context_new.argtypes = [p, p, i32, p, dbl, i32]
    lib.slpbs_context_new.restype = p
    lib.slpbs_context_free.argtypes = [p]
    lib.slpbs_context_free.restype = None
    return lib


_LIB: ctypes.CDLL | None | bool = False


def native_available() -> bool:
    """Whether the C++ search (``speechlab._decode``) is built and loadable."""
    global _LIB
    if _LIB is False:
        _LIB = _load_library()
    return _LIB is not None


@dataclass
class GramDecoding:
    """The options of CTC / Gram-CTC decoding, and their one set of defaults: the task's
    ``decoding`` (``test``/``predict``; validation is always greedy), ``speechlab decode``'s flags
    (generated from these fields) and :meth:`PrefixBeamSearch.from_config` all read them.

    Attributes:
        method: greedy (best path) or beam (prefix beam search over grams).
        search: the beam search: cpu (the C++ search, one utterance at a time), batched (all
            utterances and beams together in torch, on the log-probs' device; ARPA character
            or word LMs, a lexicon with a word LM), or auto (batched on a GPU when it can run
            the config, cpu otherwise).
        beam_size: hypotheses kept per frame.
        token_beam: non-blank tokens tried per frame (0: all).
        token_threshold: skip tokens more than this below the frame's best log-prob (nats).
        beam_threshold: drop hypotheses more than this below the best (nats).
        lm: KenLM model (speechlab lm ngram), or none.
        lm_unit: the LM's tokens: word or char.
        lm_weight: α, the weight of the natural-log LM score.
        word_score: β, added per word.
        lexicon: the words a hypothesis may spell: lm (the ARPA LM's words), a file of words
            (one per line), or none; a word outside it costs unk_score.
        unk_score: the cost of a word outside the lexicon (-inf: lexicon words only).
    """

    method: Literal["greedy", "beam"] = "greedy"
    search: Literal["auto", "cpu", "batched"] = "auto"
    beam_size: int = 16
    token_beam: int = 0
    token_threshold: float = 12.0
    beam_threshold: float = 30.0
    lm: str | None = None
    lm_unit: Literal["word", "char"] = "word"
    lm_weight: float = 0.5
    word_score: float = 0.0
    lexicon: str | None = None
    unk_score: float = -math.inf


class PrefixBeamSearch:
    """Prefix beam search over gram (or character) outputs.

    Args:
        chars: the character vocabulary in id order (ids ``1..|Σ|``; blank = 0).
        grams: the gram strings of output ids ``1..V-1`` in id order (default ``chars``: CTC).
        beam_size: hypotheses kept per frame.
        token_beam: at most this many non-blank tokens tried per frame (``0``: all).
        token_threshold: skip tokens whose log-prob is below the frame's best minus this.
        beam_threshold: drop hypotheses scoring below the best minus this.
        lm: a :class:`KenLMScorer`, a model path, or ``None``.
        lm_weight: α (on natural-log LM probabilities).
        word_score: β, added per word.
        lm_unit: ``"word"`` or ``"char"`` when ``lm`` is a path.
        lexicon: words (word mode): a word outside them costs ``unk_score`` (once).
        unk_score: the lexicon's penalty (``-inf``: lexicon words only).
        backend: ``"auto"`` (C++ when built), ``"native"`` (C++) or ``"reference"`` (Python).

    The defaults are :class:`GramDecoding`'s; :meth:`from_config` builds the search from one.
    Pass ``token_threshold=beam_threshold=math.inf`` for the exhaustive (unpruned) search.
    """

    def __init__(self, chars: Sequence[str], grams: Sequence[str] | None = None,
                 beam_size: int = GramDecoding.beam_size, token_beam: int = GramDecoding.token_beam,
                 token_threshold: float = GramDecoding.token_threshold,
                 beam_threshold: float = GramDecoding.beam_threshold,
                 lm: KenLMScorer | str | os.PathLike | None = None,
                 lm_weight: float = GramDecoding.lm_weight, word_score: float = GramDecoding.word_score,
                 lm_unit: str = GramDecoding.lm_unit, lexicon: Iterable[str] | None = None,
                 unk_score: float = GramDecoding.unk_score, backend: str = "auto") -> None:
        self.chars = list(chars)
        self.grams = list(grams) if grams is not None else list(self.chars)
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        for g in self.grams:
            if not g or len(g) > 7 or any(c not in index for c in g):
                raise ValueError(f"gram {g!r}: 1-7 characters of the vocabulary expected")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.beam_size, self.token_beam = beam_size, token_beam
        self.token_threshold, self.beam_threshold = token_threshold, beam_threshold
        if lm is not None and not isinstance(lm, KenLMScorer):
            lm = KenLMScorer(lm, lm_unit)
        self.lm = lm
        self.lm_weight, self.word_score = lm_weight, word_score
        self.space_id = index.get(" ", -1)
        offsets = [0, 0]
        flat: list[int] = []
        for g in self.grams:
            flat += [index[c] for c in g]
            offsets.append(len(flat))
        self._gram_chars = np.asarray(flat or [0], dtype=np.int32)
        self._gram_offsets = np.asarray(offsets, dtype=np.int32)
        self._gram_ids = [[index[c] for c in g] for g in self.grams]
        self.unk_score = unk_score
        self.lexicon = sorted({w for w in lexicon if w and all(c in index for c in w)}) if lexicon else []
        lex_flat: list[int] = []
        lex_off = [0]
        for w in self.lexicon:
            lex_flat += [index[c] for c in w]
            lex_off.append(len(lex_flat))
        self._lex_chars = np.asarray(lex_flat or [0], dtype=np.int32)
        self._lex_offsets = np.asarray(lex_off, dtype=np.int32)
        # look-ahead: unigram ln P of each lexicon word (word LM only)
        self._lex_lm: np.ndarray | None = None
        if self.lexicon and self.lm is not None and self.lm.unit == "word":
            self._lex_lm = np.asarray([self.lm.model.score(w, bos=False, eos=False) * LN10
                                       for w in self.lexicon], dtype=np.float64)
        self.max_n = max(len(g) for g in self.grams)
        if backend not in ("auto", "native", "reference"):
            raise ValueError(f"backend must be auto, native or reference, got {backend!r}")
        if backend == "native" and not native_available():
            raise RuntimeError("the C++ prefix beam search (speechlab._decode) is not built; "
                               "reinstall with pip install --no-build-isolation -e .")
        self.backend = "native" if backend != "reference" and native_available() else "reference"
        self._error: BaseException | None = None
        self._callback = _LM_FN(self._lm_callback)
        self._context: int | None = None

    @classmethod
    def from_gramset(cls, grams: Any, **kwargs: Any) -> PrefixBeamSearch:
        """From a :class:`speechlab.data.grams.GramSet` (or a ``CharVocab``: plain CTC)."""
        vocab = getattr(grams, "vocab", grams)
        return cls(vocab.chars, list(getattr(grams, "grams", vocab.chars)), **kwargs)

    @classmethod
    def from_config(cls, grams: Any, config: GramDecoding, *, lm: KenLMScorer | None = None,
                    lexicon: Iterable[str] | None = None, backend: str = "auto") -> PrefixBeamSearch:
        """The search ``config`` describes over ``grams`` (a GramSet, or a ``CharVocab``: CTC).

        ``lm`` / ``lexicon``: the already loaded ``config.lm`` and ``config.lexicon``, to share
        one KenLM model and word list across several searches (e.g. a grid of ``lm_weight``);
        by default they are loaded from the config's paths.
        """
        if lm is None and config.lm is not None:
            lm = KenLMScorer(config.lm, config.lm_unit)
        if lexicon is None:
            lexicon = load_lexicon(config.lexicon, config.lm)
        return cls.from_gramset(
            grams, beam_size=config.beam_size, token_beam=config.token_beam,
            token_threshold=config.token_threshold, beam_threshold=config.beam_threshold, lm=lm,
            lm_weight=config.lm_weight, word_score=config.word_score, lm_unit=config.lm_unit,
            lexicon=lexicon, unk_score=config.unk_score, backend=backend)

    @property
    def num_outputs(self) -> int:
        return len(self.grams) + 1

    # ------------------------------------------------------------------ LM glue
    def _lm_mode(self) -> int:
        if self.lm is None:
            return 0
        return 2 if self.lm.unit == "char" else 1

    def _lm_word(self, ids: Sequence[int]) -> str:
        if self.lm is not None and self.lm.unit == "char":
            c = self.chars[ids[0] - 1]
            return CHAR_SPACE if c == " " else c
        return "".join(self.chars[i - 1] for i in ids)

    def _lm_callback(self, state: int, chars: Any, n: int, next_state: Any) -> float:
        try:
            assert self.lm is not None
            word = None if n < 0 else self._lm_word([chars[i] for i in range(n)])
            s, nxt = self.lm.score(state, word)
            next_state[0] = nxt
            return s
        except BaseException as e:  # never let an exception cross the C frame
            self._error = e
            return math.nan

    # ------------------------------------------------------------------ decoding
    def decode(self, log_probs: torch.Tensor, nbest: int = 1) -> list[BeamHypothesis]:
        """Decode one utterance.

        Args:
            log_probs: ``(T, V)`` log-probabilities (natural log), ``V = 1 + len(grams)``.
            nbest: hypotheses returned, best first.

        Returns:
            Up to ``nbest`` hypotheses (at least one: the empty string for ``T = 0``).
        """
        if log_probs.dim() != 2 or log_probs.shape[1] != self.num_outputs:
            raise ValueError(f"log_probs must be (T, {self.num_outputs}), got {tuple(log_probs.shape)}")
        lp = np.ascontiguousarray(log_probs.detach().float().cpu().numpy())
        if self.backend == "native":
            return self._decode_native(lp, nbest)
        return self._decode_python(lp, nbest)

    def decode_batch(self, log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> list[str]:
        """Best transcript of each utterance of ``log_probs (B, T, V)`` with ``lengths (B,)``."""
        lens = [int(x) for x in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        lp = log_probs.detach().float().cpu()
        return [self.decode(lp[b, : lens[b]])[0].text for b in range(lp.shape[0])]

    def _native_context(self) -> int:
        """The C++ context (lexicon trie, LM cache across utterances), made on first use."""
        if self._context is None:
            assert isinstance(_LIB, ctypes.CDLL)
            lex = self.lexicon if self._lm_mode() != 2 else []
            self._context = _LIB.slpbs_context_new(
                self._lex_chars.ctypes.data, self._lex_offsets.ctypes.data, len(lex),
                None if self._lex_lm is None else self._lex_lm.ctypes.data,
                float(self.lm_weight), len(self.chars))
        return self._context

    def __del__(self) -> None:
        ctx = getattr(self, "_context", None)
        if ctx is not None and isinstance(_LIB, ctypes.CDLL):
            _LIB.slpbs_context_free(ctx)
            self._context = None

    def _decode_native(self, lp: np.ndarray, nbest: int) -> list[BeamHypothesis]:
        assert isinstance(_LIB, ctypes.CDLL)
        t, v = lp.shape
        max_len = max(1, t * self.max_n)
        out_chars = np.zeros((nbest, max_len), dtype=np.int32)
        out_lens = np.zeros(nbest, dtype=np.int32)
        out_words = np.zeros(nbest, dtype=np.int32)
        out_scores = np.zeros((nbest, 3), dtype=np.float64)
        self._error = None
        k = _LIB.slpbs_decode(
            lp.ctypes.data, t, v, self._gram_chars.ctypes.data, self._gram_offsets.ctypes.data,
            len(self.chars), self.beam_size, self.token_beam, float(self.token_threshold),
            float(self.beam_threshold), float(self.lm_weight), float(self.word_score),
            self._lm_mode(), self.space_id, self._callback, self._native_context(),
            float(self.unk_score), nbest, max_len,
            out_chars.ctypes.data,
            out_lens.ctypes.data, out_words.ctypes.data, out_scores.ctypes.data)
        if k == -1:
            raise RuntimeError(f"LM scoring failed: {self._error!r}") from self._error
        if k < 0:
            raise ValueError("prefix beam search: invalid arguments")
        return [BeamHypothesis("".join(self.chars[c - 1] for c in out_chars[i, : out_lens[i]]),
                               float(out_scores[i, 0]), float(out_scores[i, 1]),
                               float(out_scores[i, 2]), int(out_words[i])) for i in range(k)]

    # ------------------------------------------------------------------ Python fallback
    def _decode_python(self, lp: np.ndarray, nbest: int) -> list[BeamHypothesis]:
        """The same algorithm as the C++ search, in Python (slow; fallback and cross-check)."""
        ninf = -math.inf
        mode = self._lm_mode()
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        gram_by_str = {g: i + 1 for i, g in enumerate(self.grams)}
        # trie nodes: [parent, char id, depth, word_start, lm_state, lm_score, words, text,
        #              off_lexicon, look-ahead]
        nodes: list[list[Any]] = [[-1, 0, 0, 0, 0, 0.0, 0, "", 0, 0.0]]
        words = set(self.lexicon) if mode != 2 else set()
        prefixes: dict[str, float] = {}
        for k, w in enumerate(self.lexicon if mode != 2 else []):
            look = self.lm_weight * float(self._lex_lm[k]) if self._lex_lm is not None else 0.0
            for i in range(1, len(w) + 1):
                prefixes[w[:i]] = max(prefixes.get(w[:i], -math.inf), look)

        def check_word(n: list[Any], word: str, complete: bool) -> None:
            if not words or n[8] or not word:
                return
            ok = word in words if complete else word in prefixes
            if ok and not complete:
                n[9] = prefixes[word]
            if not ok:
                n[8], n[9] = 1, 0.0
                n[5] += self.unk_score
        children: dict[tuple[int, int], int] = {}
        cache: dict[tuple[int, Any], tuple[float, int]] = {}

        def lm_call(state: int, word: tuple[int, ...] | None) -> tuple[float, int]:
            key = (state, word)
            if key not in cache:
                assert self.lm is not None
                cache[key] = self.lm.score(state, None if word is None else self._lm_word(word))
            return cache[key]

        def score_word(n: list[Any], text: str, start: int) -> None:
            n[6] += 1
            n[5] += self.word_score
            if mode == 1:
                word = tuple(index[c] for c in text[start:])
                s, n[4] = lm_call(n[4], word)
                n[5] += self.lm_weight * s

        def child(node: int, c: int) -> int:
            key = (node, c)
            if key in children:
                return children[key]
            p = nodes[node]
            n = [node, c, p[2] + 1, p[3], p[4], p[5], p[6], p[7] + self.chars[c - 1], p[8], 0.0]
            if mode == 2:
                s, n[4] = lm_call(p[4], (c,))
                n[5] += self.lm_weight * s
                if c == self.space_id:
                    n[6] += 1
                    n[5] += self.word_score
            elif c == self.space_id:
                n[3] = n[2]
                if p[2] > p[3]:
                    check_word(n, p[7][p[3]:], True)
                    score_word(n, p[7], p[3])
                n[8] = 0
            else:
                check_word(n, n[7][n[3]:], False)
            children[key] = len(nodes)
            nodes.append(n)
            return len(nodes) - 1

        def suffix_gram(node: int, n: int) -> int:
            text = nodes[node][7]
            return gram_by_str.get(text[-n:], -1) if len(text) >= n else -1

        def lse(*xs: float) -> float:
            m = max(xs)
            return m if m == ninf else m + math.log(sum(math.exp(x - m) for x in xs))

        beam = [(0, 0.0, [ninf] * (self.max_n + 1))]  # (node, pb, pg[0..max_n])
        for row in lp.astype(np.float64):
            nonblank = row[1:]
            best = nonblank.max() if len(nonblank) else ninf
            cand = [g for g in range(1, len(row)) if row[g] > ninf and row[g] >= best - self.token_threshold]
            if 0 < self.token_beam < len(cand):
                cand = sorted(cand, key=lambda g: (-row[g], g))[: self.token_beam]
            nxt: dict[int, list[Any]] = {}  # node -> [pb, pg]; insertion order = C++'s

            def slot(node: int, nxt: dict[int, list[Any]] = nxt) -> list[Any]:
                if node not in nxt:
                    nxt[node] = [ninf, [ninf] * (self.max_n + 1)]
                return nxt[node]

            for node, pb, pg in beam:
                tot = lse(pb, *pg[1:])
                sg = [-1] + [suffix_gram(node, n) for n in range(1, self.max_n + 1)]
                s = slot(node)
                s[0] = lse(s[0], tot + row[0])
                for n in range(1, self.max_n + 1):
                    if pg[n] > ninf:
                        s[1][n] = lse(s[1][n], pg[n] + row[sg[n]])
                for g in cand:
                    m = len(self.grams[g - 1])
                    src = lse(pb, *[pg[n] for n in range(1, self.max_n + 1)
                                    if pg[n] > ninf and not (n == m and sg[n] == g)])
                    if src == ninf:
                        continue
                    c = node
                    for ch in self._gram_ids[g - 1]:
                        c = child(c, ch)
                    if nodes[c][5] == ninf:
                        continue
                    s = slot(c)
                    s[1][m] = lse(s[1][m], src + row[g])
            ranked = sorted(((lse(v[0], *v[1][1:]) + nodes[k][5] + nodes[k][9], k)
                             for k, v in nxt.items()),
                            key=lambda x: (-x[0], x[1]))[: self.beam_size]
            floor = ranked[0][0] - self.beam_threshold if ranked else 0.0
            beam = [(k, nxt[k][0], nxt[k][1]) for sc, k in ranked if sc > ninf and sc >= floor]
        out = []
        for node, pb, pg in beam:
            n = list(nodes[node])
            if mode != 2 and n[2] > n[3]:
                check_word(n, n[7][n[3]:], True)
                score_word(n, n[7], n[3])
            if mode != 0:
                s, _ = lm_call(n[4], None)
                n[5] += self.lm_weight * s
            am = lse(pb, *pg[1:])
            out.append(BeamHypothesis(n[7], float(am + n[5]), float(am), float(n[5]), int(n[6])))
        out.sort(key=lambda h: -h.score)
        return out[:nbest]


__all__ = [
    "BeamHypothesis", "GramDecoding", "KenLMScorer", "PrefixBeamSearch", "arpa_words", "load_lexicon",
    "native_available", "word_times",
]
