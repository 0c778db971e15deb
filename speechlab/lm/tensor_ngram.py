"""An ARPA n-gram LM as sorted torch tables, queried for many (state, token) pairs at once.

:class:`TensorNgramLM` is the n-gram LM of the batched beam search
(:mod:`speechlab.decode.batched_prefix_beam`): one call scores ``N`` (LM state, token) pairs
with a fixed number of tensor ops — no host sync, no data-dependent shape, no Python loop over
the pairs — on the CPU or a GPU (the idea of NVIDIA NeMo's NGPU-LM, 2025: an ARPA model stored
as sorted arc tables on the device). Its scores and states are KenLM's (tested against the
``kenlm`` module on lmplz models and hand-written ARPAs).

**States.** A state is the id of a *context*: an n-gram of the model (of at most ``order - 1``
tokens) that some longer n-gram extends, or that has a non-zero backoff, as in KenLM. State
``0`` is the empty context; the state after a history is the longest suffix of the history that
is a context (KenLM's right state: two histories with the same state score every continuation
alike). :meth:`TensorNgramLM.bos_state` is the context ``<s>``.

**Tables** (``S`` states, ``A`` arcs: every n-gram of the model is one arc, from the state of
its first ``n - 1`` tokens on its last token; ``V`` LM tokens):

- ``arc_key (A,)`` int64, sorted: ``state * V + token`` (states are numbered by order, so the
  arcs of each order form one sorted block: the per-order arc tables laid end to end);
- ``arc_logp (A,)``: ln P of the n-gram (ARPA log10 × ln 10);
- ``arc_next (A,)`` int64: the state after the n-gram (its longest suffix that is a context);
- ``arc_order (A,)`` int64: the n-gram's length;
- ``state_backoff (S,)``: ln backoff weight of the context (``0`` for the empty one);
- ``state_suffix (S,)`` int64: the state to back off to (the longest proper suffix that is a
  context; ``0`` → ``0``);
- ``state_order (S,)``, ``state_parent (S,)``, ``state_token (S,)``: the context's length, the
  state of its first ``n - 1`` tokens and its last token (for :meth:`TensorNgramLM.state_tokens`).

**Lookup** (:meth:`TensorNgramLM.full_score`): ``order`` rounds, each one
``torch.searchsorted`` of the keys ``state * V + token`` in ``arc_key``: a pair found takes
the arc's ln P plus the backoff weights gathered so far, and the arc's next state; a pair not
found adds its state's backoff and moves to ``state_suffix``. The empty context has an arc to
every token, so every pair is found by the last round. Memory (float32): 28 bytes per arc and
36 per state (a word 6-gram of 1.26e6 n-grams and 5.2e5 states: 54 MB); time: ``order`` binary
searches of ``log2 A`` steps per pair. Reading that ARPA file takes ~3 s (Python parsing).

**Tokens.** Without a vocabulary, token ids are the LM's own (the order of the ARPA's 1-grams;
:meth:`TensorNgramLM.token_id`), unknown strings mapping to ``<unk>``. With ``vocab`` (the
tokens of a :class:`~speechlab.data.text.CharVocab`, the grams of a GramSet, the words of a
word vocabulary), token ids are the vocabulary's indices, each mapped to its LM token once
(a space written ``|``, the character-LM convention of :func:`speechlab.lm.ngram.char_tokens`;
tokens the LM lacks, such as the blank, map to ``<unk>``). Like KenLM, an unknown token is
scored with ``<unk>``'s probability (a model without ``<unk>`` gets one of log10 prob ``-100``).

**ARPA files as KenLM reads them.** Every n-gram's first ``n - 1`` tokens must be an n-gram of
the model (else :class:`~speechlab.errors.InputError`). An n-gram whose last ``n - 1`` tokens
are missing (SRILM pruning does this) gets them inserted as a *blank* n-gram whose probability
is the backed-off one, as KenLM does, so that scores and states stay KenLM's.

**In the batched search.** :class:`~speechlab.decode.batched_prefix_beam.BatchedPrefixBeamSearch`
uses it as a character LM (``lm=``, ``lm_unit="char"``): each hypothesis carries its LM state,
and an extension scores its gram's characters in turn (at most ``max_n`` rounds, a fixed loop);
or as a word LM (``lm_unit="word"``, the LM's own ids): each hypothesis carries the LM state of
its completed words and a hash of its partial word; a space (also inside a gram such as
``"b "``) or the end looks the word's LM id up in a sorted table of the LM words' hashes
(``torch.searchsorted``; ``<unk>`` when absent) and scores it with :meth:`TensorNgramLM.score`.
An optional lexicon is a sorted table of its words' prefix hashes (membership by searchsorted).
A gram-level LM (the gram as one token) is not done.

Usage (a batch of hypotheses, each with its LM state)::

    lm = TensorNgramLM.from_arpa("exp/lm/tiny_char6.arpa", vocab=char_vocab.tokens(range(29)))
    states = lm.bos_state(n)                    # (n,) int64
    logp, states = lm.score(states, tokens)     # tokens (n,) vocabulary ids -> (n,), (n,)
    logp_all, _ = lm.score(states[:, None], torch.arange(29)[None])  # (n, 29): every token
    final = lm.eos_score(states)                # (n,) ln P(</s> | state)
"""

from __future__ import annotations

import logging
import math
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from speechlab.errors import InputError
from speechlab.io import open_text
from speechlab.lm.ngram import CHAR_SPACE

log = logging.getLogger("speechlab.lm")

LN10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
#: log10 prob of ``<unk>`` when the ARPA has none (KenLM's ``unknown_missing_logprob``)
MISSING_UNK_LOG10 = -100.0


class FullScore(NamedTuple):
    """What :meth:`TensorNgramLM.full_score` returns, each of the broadcast input shape.

    Attributes:
        logp: ln P(token | state) (natural log).
        state: int64, the state after the token.
        ngram_length: int64, the length of the n-gram that gave the probability (KenLM's
            ``ngram_length``; ``1``: the unigram).
    """

    logp: Tensor
    state: Tensor
    ngram_length: Tensor


@dataclass
class _Level:
    """The n-grams of one order during the build: token ids ``(M, n)``, log10 prob and backoff
    ``(M,)``, and whether each is a blank (inserted, not in the file)."""

    words: np.ndarray
    log10p: np.ndarray
    log10bo: np.ndarray
    blank: np.ndarray

    def take(self, idx: np.ndarray) -> _Level:
        return _Level(self.words[idx], self.log10p[idx], self.log10bo[idx], self.blank[idx])

    def extend(self, words: np.ndarray) -> _Level:
        """These n-grams plus ``words`` as blanks (probability filled in later)."""
        m = len(words)
        return _Level(np.concatenate([self.words, words]),
                      np.concatenate([self.log10p, np.full(m, np.nan)]),
                      np.concatenate([self.log10bo, np.zeros(m)]),
                      np.concatenate([self.blank, np.ones(m, bool)]))


def _parse_arpa(path: Path) -> tuple[list[str], list[_Level]]:
    """The 1-gram tokens (in file order) and the n-grams of every order of an ARPA file.
    Malformed input raises :class:`InputError` as ``path:LINE: reason``."""
    counts: dict[int, int] = {}
    tokens: list[str] = []
    index: dict[str, int] = {}
    lookup = index.__getitem__
    levels: list[_Level] = []
    try:
        with open_text(path) as f:
            lineno = 0
            section = None  # None: before \data\; 0: the header; n: the n-gram section
            ids, probs, backoffs = array("q"), array("d"), array("d")
            seen_end = False

            def close(n: int, at: int) -> None:
                got = len(probs)
                if got != counts[n]:
                    raise InputError(f"{path}:{at}: the header announces {counts[n]} {n}-grams, "
                                     f"the \\{n}-grams: section has {got}")
                words = np.frombuffer(ids, dtype=np.int64).reshape(got, n).copy()
                levels.append(_Level(words, np.frombuffer(probs, dtype=np.float64).copy(),
                                     np.frombuffer(backoffs, dtype=np.float64).copy(),
                                     np.zeros(got, bool)))

            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                if section is None:
                    if line != "\\data\\":
                        raise InputError(f"{path}:{lineno}: not an ARPA file (expected '\\data\\', "
                                         f"got {line[:40]!r})")
                    section = 0
                    continue
                if line.startswith("\\"):
                    if section:
                        close(section, lineno)
                    want = section + 1
                    if line == "\\end\\" and section and section == len(counts):
                        seen_end = True
                        break
                    if line != f"\\{want}-grams:" or want not in counts:
                        what = f"'\\{want}-grams:'" if want in counts else "'\\end\\'"
                        raise InputError(f"{path}:{lineno}: expected {what}, got {line[:40]!r}")
                    section = want
                    ids, probs, backoffs = array("q"), array("d"), array("d")
                    continue
                if section == 0:
                    key, _, value = line.partition("=")
                    parts = key.split()
                    try:
                        if len(parts) != 2 or parts[0] != "ngram":
                            raise ValueError
                        n, c = int(parts[1]), int(value)
                    except ValueError:
                        raise InputError(f"{path}:{lineno}: expected 'ngram N=COUNT' in the "
                                         f"header, got {line[:40]!r}") from None
                    if n != len(counts) + 1:
                        raise InputError(f"{path}:{lineno}: header line for order {n}, expected "
                                         f"order {len(counts) + 1}")
                    counts[n] = c
                    continue
                fields = line.split()
                n = section
                if len(fields) not in (n + 1, n + 2):
                    raise InputError(f"{path}:{lineno}: expected 'log10prob' and {n} token(s) "
                                     f"[and a backoff], got {line[:60]!r}")
                try:
                    probs.append(float(fields[0]))
                    backoffs.append(float(fields[n + 1]) if len(fields) == n + 2 else 0.0)
                except ValueError:
                    raise InputError(f"{path}:{lineno}: bad number in {line[:60]!r}") from None
                if n == 1:
                    tok = fields[1]
                    if tok in index:
                        raise InputError(f"{path}:{lineno}: duplicate 1-gram {tok!r}")
                    index[tok] = len(tokens)
                    tokens.append(tok)
                    ids.append(index[tok])
                else:
                    try:
                        ids.extend(map(lookup, fields[1:n + 1]))
                    except KeyError as e:
                        raise InputError(f"{path}:{lineno}: token {e.args[0]!r} of this {n}-gram "
                                         f"is not a 1-gram of the model") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not an ARPA file (not UTF-8 text: {e.reason})") from None
    if section is None:
        raise InputError(f"{path}: not an ARPA file (no '\\data\\' line)")
    if not seen_end:
        raise InputError(f"{path}:{lineno}: the file ends before '\\end\\' (truncated?)")
    if len(levels) != len(counts) or not levels:
        raise InputError(f"{path}: the header announces {len(counts)} orders, the file has "
                         f"{len(levels)} n-gram sections")
    for special in (BOS, EOS):
        if special not in index:
            raise InputError(f"{path}: the ARPA model has no {special} 1-gram")
    return tokens, levels


def _find(keys: list[np.ndarray], rows: np.ndarray, v: int) -> np.ndarray:
    """Node ids (at level ``rows.shape[1]``) of the n-grams ``rows``, ``-1`` for the missing
    ones: one binary search per level, the key of a node being ``parent node * V + token``."""
    ids = np.zeros(len(rows), np.int64)
    ok = np.ones(len(rows), bool)
    for j in range(rows.shape[1]):
        level = keys[j + 1]
        if len(level) == 0:
            return np.full(len(rows), -1, np.int64)
        q = ids * v + rows[:, j]
        pos = np.minimum(np.searchsorted(level, q), len(level) - 1)
        ok &= level[pos] == q
        ids = np.where(ok, pos, 0)
    return np.where(ok, ids, -1)


def _trie(levels: list[_Level], tokens: list[str]
          ) -> tuple[list[_Level], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Sort every level into a trie (node key ``parent * V + last token``), inserting blanks
    for missing suffixes until there are none. Returns the sorted levels (index 1..N; index 0 the
    root), their keys, parent ids and suffix ids (node ids one level down). A duplicate n-gram,
    or one whose context is missing, raises :class:`InputError`."""
    v, n_max = len(tokens), len(levels)
    lv = [None, *levels]  # type: ignore[list-item]
    while True:
        keys = [np.zeros(1, np.int64)]
        parents: list[np.ndarray] = [np.zeros(0, np.int64)]
        suffixes: list[np.ndarray] = [np.zeros(0, np.int64)]
        sorted_levels: list[_Level] = [lv[0]]
        missing_suffix: dict[int, np.ndarray] = {}
        orphans: list[tuple[int, np.ndarray]] = []
        for n in range(1, n_max + 1):
            level = lv[n]
            if n == 1:
                parent = np.zeros(len(level.words), np.int64)
                suffix = np.zeros(len(level.words), np.int64)
            else:
                parent = _find(keys, level.words[:, :-1], v)
                suffix = _find(keys, level.words[:, 1:], v)
                lost = suffix < 0
                if lost.any():
                    missing_suffix[n - 1] = np.unique(level.words[lost, 1:], axis=0)
                if (parent < 0).any():
                    orphans.append((n, level.words[parent < 0][0]))
                    keep = np.flatnonzero(parent >= 0)
                    level, parent, suffix = level.take(keep), parent[keep], suffix[keep]
            key = parent * v + level.words[:, -1]
            order = np.argsort(key, kind="stable")
            key, level, parent, suffix = key[order], level.take(order), parent[order], suffix[order]
            dup = np.flatnonzero(np.diff(key) == 0)
            if len(dup):
                raise InputError(f"duplicate {n}-gram {_spell(tokens, level.words[dup[0]])!r}")
            keys.append(key)
            parents.append(parent)
            suffixes.append(suffix)
            sorted_levels.append(level)
        if not missing_suffix:
            if orphans:
                n, row = orphans[0]
                raise InputError(f"the context of the {n}-gram {_spell(tokens, row)!r} is not a "
                                 f"{n - 1}-gram of the model (KenLM refuses such models too)")
            return sorted_levels, keys, parents, suffixes
        for n, rows in missing_suffix.items():
            log.info("ARPA: %d %d-gram(s) missing as suffixes of longer ones; inserted as blanks, "
                     "as KenLM does", len(rows), n)
            lv[n] = lv[n].extend(rows)


def _spell(tokens: list[str], row: np.ndarray) -> str:
    return " ".join(tokens[int(i)] for i in row)


class TensorNgramLM:
    """A backoff n-gram LM (an ARPA file) in torch tensors: batched, sync-free KenLM queries.

    Build it with :meth:`from_arpa`; the module docstring describes the tables and the lookup.
    States and token ids are int64 tensors; scores are natural logs in ``dtype``.

    Attributes:
        order: the model's n-gram order.
        lm_tokens: the LM's tokens in id order (the ARPA's 1-grams, then ``<unk>`` if added).
        vocab_size: the number of token ids :meth:`score` takes (``len(vocab)``, or
            ``len(lm_tokens)`` without a vocabulary).
        num_states, num_arcs: ``S`` and ``A``.
        bos, eos, unk: the LM ids of ``<s>``, ``</s>`` and ``<unk>``.
    """

    def __init__(self, order: int, lm_tokens: list[str], tables: dict[str, Tensor],
                 token_map: Tensor | None, bos_state: int) -> None:
        self.order = order
        self.lm_tokens = lm_tokens
        self._index = {t: i for i, t in enumerate(lm_tokens)}
        self.bos, self.eos, self.unk = (self._index[t] for t in (BOS, EOS, UNK))
        self.arc_key = tables["arc_key"]
        self.arc_logp = tables["arc_logp"]
        self.arc_next = tables["arc_next"]
        self.arc_order = tables["arc_order"]
        self.state_backoff = tables["state_backoff"]
        self.state_suffix = tables["state_suffix"]
        self.state_order = tables["state_order"]
        self.state_parent = tables["state_parent"]
        self.state_token = tables["state_token"]
        self.token_map = token_map
        self._bos_state = bos_state
        self._vocab: dict[str, int] | None = None
        # 0-dim constants for torch.where (a Python number there is a tensor made per call: on a
        # GPU, one more kernel)
        self._zero = torch.zeros((), dtype=self.arc_logp.dtype, device=self.arc_key.device)
        self._izero = torch.zeros((), dtype=torch.int64, device=self.arc_key.device)

    # ------------------------------------------------------------------------ building
    @classmethod
    def from_arpa(cls, path: str | os.PathLike, vocab: Sequence[str] | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                  ) -> TensorNgramLM:
        """Read an ARPA file (``.gz`` too) into tables on ``device``.

        Args:
            path: the ARPA model (``speechlab lm ngram --out m.arpa``).
            vocab: the token strings of the ids :meth:`score` will take, in id order (e.g.
                ``CharVocab.tokens(range(len(vocab)))`` or a GramSet's grams); a space is
                written ``|``; strings the LM lacks map to ``<unk>``. ``None``: the LM's own ids.
            device: where the tables live (and the queries run).
            dtype: the float type of the scores (``float64`` for exact KenLM sums).

        Raises:
            InputError: the file is not a well-formed ARPA model (``path:LINE: reason``).
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such ARPA file")
        tokens, levels = _parse_arpa(path)
        forced = []  # contexts KenLM keeps in its state although nothing extends them
        if UNK not in tokens:
            log.warning("%s: the ARPA model has no <unk>; substituting log10 probability %g, as "
                        "KenLM does", path, MISSING_UNK_LOG10)
            tokens.append(UNK)
            lv1 = levels[0]
            levels[0] = _Level(np.concatenate([lv1.words, [[len(tokens) - 1]]]),
                               np.append(lv1.log10p, MISSING_UNK_LOG10), np.append(lv1.log10bo, 0.0),
                               np.append(lv1.blank, False))
            forced.append(len(tokens) - 1)  # KenLM gives it backoff +0.0: "extends"
        forced.append(tokens.index(BOS))  # KenLM's begin-of-sentence state is always [<s>]
        v = len(tokens)
        if sum(len(lv.words) for lv in levels) * v >= 2**62:
            raise InputError(f"{path}: too large for int64 arc keys ({v} tokens)")
        try:
            lv, _, parents, suffixes = _trie(levels, tokens)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        tables, bos_state = _tables(lv, parents, suffixes, v, forced)
        tables = {k: torch.from_numpy(a) for k, a in tables.items()}
        tables["arc_logp"] = tables["arc_logp"].to(dtype)
        tables["state_backoff"] = tables["state_backoff"].to(dtype)
        token_map = None
        if vocab is not None:
            index = {t: i for i, t in enumerate(tokens)}
            unk = index[UNK]
            token_map = torch.tensor([index.get(t.replace(" ", CHAR_SPACE), unk) if t else unk
                                      for t in vocab], dtype=torch.int64)
        lm = cls(len(levels), tokens, tables, token_map, bos_state)
        if vocab is not None:
            lm._vocab = {}
            for i, t in enumerate(vocab):
                lm._vocab.setdefault(t, i)
        return lm.to(device)

    def to(self, device: str | torch.device) -> TensorNgramLM:
        """The same LM with its tables on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if self.arc_key.device == device:
            return self
        names = ("arc_key", "arc_logp", "arc_next", "arc_order", "state_backoff", "state_suffix",
                 "state_order", "state_parent", "state_token")
        lm = TensorNgramLM(self.order, self.lm_tokens,
                           {k: getattr(self, k).to(device) for k in names},
                           None if self.token_map is None else self.token_map.to(device),
                           self._bos_state)
        lm._vocab = self._vocab
        return lm

    # ------------------------------------------------------------------------ attributes
    @property
    def device(self) -> torch.device:
        return self.arc_key.device

    @property
    def dtype(self) -> torch.dtype:
        return self.arc_logp.dtype

    @property
    def num_states(self) -> int:
        return self.state_backoff.numel()

    @property
    def num_arcs(self) -> int:
        return self.arc_key.numel()

    @property
    def vocab_size(self) -> int:
        return len(self.lm_tokens) if self.token_map is None else self.token_map.numel()

    def token_id(self, token: str) -> int:
        """The id of ``token`` for :meth:`score`: the LM's id (``<unk>``'s for a token the LM
        lacks), or with a vocabulary its index there (a ``KeyError`` when absent)."""
        if self._vocab is not None:
            return self._vocab[token]
        return self._index.get(token.replace(" ", CHAR_SPACE), self.unk)

    def bos_state(self, shape: int | Sequence[int] = ()) -> Tensor:
        """The state of the sentence start (the context ``<s>``), an int64 tensor of ``shape``."""
        return torch.full((shape,) if isinstance(shape, int) else tuple(shape), self._bos_state,
                          dtype=torch.int64, device=self.device)

    def state_tokens(self, state: int) -> tuple[str, ...]:
        """The context that ``state`` stands for, oldest token first (``()``: the empty one).
        A host-side helper (for tests and debugging), not for the search loop."""
        out = []
        while state > 0:
            out.append(self.lm_tokens[int(self.state_token[state])])
            state = int(self.state_parent[state])
        return tuple(reversed(out))

    # ------------------------------------------------------------------------ queries
    def full_score(self, states: Tensor, tokens: Tensor, lm_ids: bool = False) -> FullScore:
        """ln P(token | state), the next state and the matched n-gram's length, for every pair.

        Args:
            states: int64 state ids, any shape.
            tokens: int64 token ids (the vocabulary's, or the LM's), broadcastable with
                ``states`` (e.g. states ``(B, 1)`` and tokens ``(1, C)`` score ``C`` tokens after
                each of ``B`` states).
            lm_ids: ``tokens`` are LM ids even though a vocabulary was given.

        Returns:
            :class:`FullScore` of the broadcast shape: ``logp`` (natural log, ``dtype``),
            ``state`` and ``ngram_length`` (int64). ``order`` rounds of tensor ops; no host sync.
        """
        logp, arc = self._lookup(states, tokens, lm_ids)
        return FullScore(logp, self.arc_next[arc], self.arc_order[arc])

    def _lookup(self, states: Tensor, tokens: Tensor, lm_ids: bool) -> tuple[Tensor, Tensor]:
        """``(ln P, arc index)`` of every (state, token) pair, of the broadcast shape: ``order``
        rounds of one ``searchsorted`` each (the module docstring's lookup)."""
        if self.token_map is not None and not lm_ids:
            tokens = self.token_map[tokens]
        keys, v = self.arc_key, len(self.lm_tokens)
        last = keys.numel() - 1
        cur, acc, arc = states, None, self._izero
        for r in range(self.order):
            key = cur * v + tokens
            pos = torch.searchsorted(keys, key).clamp_(max=last)
            # a pair found in an earlier round kept its state, so it is found again (the same
            # arc): ``hit`` is "found by now", and the empty context has every token, so every
            # pair is found by the last round
            hit = keys[pos] == key
            arc = torch.where(hit, pos, arc)
            if r + 1 < self.order:
                backoff = torch.where(hit, self._zero, self.state_backoff[cur])
                acc = backoff if acc is None else acc + backoff
                cur = torch.where(hit, cur, self.state_suffix[cur])
        logp = self.arc_logp[arc]
        return (logp if acc is None else acc + logp), arc

    def score(self, states: Tensor, tokens: Tensor, lm_ids: bool = False) -> tuple[Tensor, Tensor]:
        """``(logp, next_states)``: ln P(token | state) (natural log) and the state after the
        token, of the broadcast shape of ``states`` and ``tokens`` (see :meth:`full_score`;
        ``lm_ids``: the tokens are LM ids, :meth:`lm_ids` of the vocabulary's)."""
        logp, arc = self._lookup(states, tokens, lm_ids)
        return logp, self.arc_next[arc]

    def lm_ids(self, tokens: Tensor) -> Tensor:
        """The LM ids of vocabulary token ids (the same tensor without a vocabulary): map once,
        then score with ``lm_ids=True``."""
        return tokens if self.token_map is None else self.token_map[tokens]

    def eos_score(self, states: Tensor) -> Tensor:
        """ln P(``</s>`` | state), of the shape of ``states``."""
        eos = torch.full((), self.eos, dtype=torch.int64, device=states.device)
        return self.full_score(states, eos, lm_ids=True).logp

    def sentence_score(self, tokens: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """ln P of a token sequence (LM tokens, e.g. ``"the cat".split()``), like
        ``kenlm.Model.score(..., bos, eos) * ln 10``. One query per token: a host-side helper."""
        ids = [self._index.get(t, self.unk) for t in tokens]
        state = self.bos_state() if bos else torch.zeros((), dtype=torch.int64, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in [*ids, self.eos] if eos else ids:
            out = self.full_score(state, torch.tensor(i, device=self.device), lm_ids=True)
            total, state = total + out.logp.double(), out.state
        return float(total)

    def __repr__(self) -> str:
        return (f"TensorNgramLM(order={self.order}, tokens={len(self.lm_tokens)}, "
                f"states={self.num_states}, arcs={self.num_arcs}, device={self.device}, "
                f"dtype={self.dtype})")


def _tables(lv: list[_Level], parents: list[np.ndarray], suffixes: list[np.ndarray], v: int,
            forced: list[int]) -> tuple[dict[str, np.ndarray], int]:
    """The state and arc tables (numpy) from the sorted trie levels; also the ``<s>`` state."""
    n_max = len(lv) - 1
    # contexts: extended by a longer n-gram (or blank), a non-zero backoff, or forced (<s>, <unk>)
    state_of: list[np.ndarray] = [np.zeros(1, np.int64)]
    next_of: list[np.ndarray] = [np.zeros(1, np.int64)]
    n_states = 1
    for n in range(1, n_max + 1):
        m = len(lv[n].words)
        if n < n_max:
            ctx = lv[n].log10bo != 0
            ctx[parents[n + 1]] = True
            if n == 1:
                ctx[forced] = True
        else:
            ctx = np.zeros(m, bool)
        ids = np.full(m, -1, np.int64)
        ids[ctx] = np.arange(n_states, n_states + ctx.sum())
        n_states += int(ctx.sum())
        state_of.append(ids)
        # the next state after the n-gram: itself when a context, else its suffix's
        next_of.append(np.where(ids >= 0, ids, next_of[n - 1][suffixes[n]]))
        if n >= 2 and lv[n].blank.any():  # blank prob: backoff of the context + the suffix's
            b = lv[n].blank
            lv[n].log10p[b] = (lv[n - 1].log10bo[parents[n][b]]
                               + lv[n - 1].log10p[suffixes[n][b]])
    backoff = np.zeros(n_states)
    suffix = np.zeros(n_states, np.int64)
    order = np.zeros(n_states, np.int64)
    parent = np.zeros(n_states, np.int64)
    token = np.zeros(n_states, np.int64)
    keys, logp, nxt, arc_order = [], [], [], []
    for n in range(1, n_max + 1):
        level, ids = lv[n], state_of[n]
        ctx = ids >= 0
        backoff[ids[ctx]] = level.log10bo[ctx] * LN10
        suffix[ids[ctx]] = next_of[n - 1][suffixes[n][ctx]]
        order[ids[ctx]] = n
        parent[ids[ctx]] = state_of[n - 1][parents[n][ctx]]
        token[ids[ctx]] = level.words[ctx, -1]
        parent_state = state_of[n - 1][parents[n]]
        assert (parent_state >= 0).all()
        keys.append(parent_state * v + level.words[:, -1])
        logp.append(level.log10p * LN10)
        nxt.append(next_of[n])
        arc_order.append(np.full(len(level.words), n, np.int64))
    arc_key = np.concatenate(keys)
    assert (np.diff(arc_key) > 0).all(), "arc keys not sorted"
    bos = int(state_of[1][forced[-1]]) if n_max > 1 else 0  # level-1 node id = token id
    return dict(arc_key=arc_key, arc_logp=np.concatenate(logp), arc_next=np.concatenate(nxt),
                arc_order=np.concatenate(arc_order), state_backoff=backoff, state_suffix=suffix,
                state_order=order, state_parent=parent, state_token=token), bos
