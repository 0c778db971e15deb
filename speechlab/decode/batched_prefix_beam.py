"""CTC / Gram-CTC prefix beam search batched in torch: all utterances × beams advance together.

The algorithm is :class:`~speechlab.decode.prefix_beam.PrefixBeamSearch`'s (its
``_decode_python`` is the readable statement): hypotheses are spelled strings, and per string ℓ
the search carries ``pb`` (paths whose current frame is the blank) and ``pg[n]`` (paths whose
current frame repeats the last emitted gram, ℓ's suffix of length ``n``). Here every frame is one
call of :meth:`BatchedPrefixBeamSearch._step` on fixed-size tensors — ``B`` utterances × ``K``
beams × ``C`` candidate grams — with ``-inf`` for padding, no ``.item()``, no branch on tensor
values and no data-dependent shape, so the frame loop never waits for the device. On a CUDA
device :meth:`~BatchedPrefixBeamSearch.decode` replays the loop as a CUDA graph of a chunk of
frames (captured once per batch size, the chunk's start frame a device tensor), instead of
launching every frame's ~110 kernels from Python. An optional n-gram LM
(:class:`~speechlab.lm.tensor_ngram.TensorNgramLM`): a character LM (the CPU search's
``lm_unit="char"``) or a word LM (``lm_unit="word"``), the latter with an optional lexicon
(``lexicon``, ``unk_score``). ``decode(..., timestamps=True)`` also gives every word's first and
last frames (:attr:`BeamHypothesis.word_times`), from the back-pointers.

State of hypothesis ``(b, k)`` (:class:`BeamState`):

- ``pb (B, K)``, ``pg (B, K, N)`` log-probabilities (``N = max_n``, ``pg[..., n - 1]`` for ``n``);
- ``tail (B, K, N)``: the last ``N`` characters of ℓ, right-aligned, ``0`` before the start. It
  gives the gram id of each suffix ``ℓ[-n:]`` (the repeat transition and the extension rule)
  through a table of the grams' hashes, checked character by character;
- ``h1, h2 (B, K)``: two polynomial hashes of ℓ (moduli below ``2^31``, so that
  ``h·base^m`` fits ``int64``), updated as ``h' = (h·base^|g| + hash(g)) mod M``;
- ``words (B, K)``: words completed so far (a space after a non-space), for ``word_score``;
  with the LM, the spaces of ℓ (the CPU search's character-LM count);
- ``lm_state``, ``lm_score (B, K)`` (with the LM): the LM state after ℓ's characters (word
  LM: after ℓ's completed words) and ℓ's LM part ``α·ln P_LM(ℓ) + β·words`` (no ``</s>``;
  word LM: the completed words only, with the lexicon's ``unk_score`` paid so far);
- ``wh1, wh2, wlen (B, K)`` (word LM): two polynomial hashes of ℓ's partial word (the
  characters after its last space) and its length;
- ``parent``, ``emit (B, K)``: the back-pointer of the last frame (the beam slot it came from and
  the gram it appended, ``0``: none), of the most probable of the candidates merged into the
  string (so the emission frames read off them, the word times, follow the likely paths). The strings are spelled once, after the loop, by walking
  the back-pointers; nothing of size ``O(|ℓ|)`` is carried per frame.

Per frame: the candidate grams of each utterance are its top ``C`` tokens by log-prob
(``C = token_beam``, or all ``V - 1``; stable sort, so ties go to the lower id as in the C++
search), those below ``best - token_threshold`` masked to ``-inf``. The ``K`` stays and
``K·C`` extensions ``ℓ + g`` are candidates; candidates that spell the same string (equal hash
pair, ``(h1·M2 + h2)``) are merged: sorted by key within the utterance, then a segment
logsumexp (scatter ``amax`` + scatter ``add``) of each of the ``N + 1`` components. The merged
strings are ranked by ``lse(pb, pg) + word_score·words`` (with the LM: ``lse(pb, pg) +
lm_score``), the best ``K`` kept (``topk``), and those below ``best - beam_threshold`` set to
``-inf``. Frames past an utterance's length leave its beams unchanged.

**Character LM.** Every character of every emitted gram is an LM token (a space is ``|``), as in
:class:`~speechlab.decode.prefix_beam.PrefixBeamSearch` with ``lm_unit="char"``: a hypothesis
scores ``am + α·ln P_LM(ℓ) + β·spaces(ℓ)``, and ``α·ln P(</s> | ℓ)`` once at the end. A stay
keeps ℓ's LM state and part; an extension ℓ + g scores g's characters in turn from ℓ's state, a
fixed loop of ``N`` rounds of :meth:`TensorNgramLM.score` over the ``(B, K, C)`` extensions
(padded positions of shorter grams masked), with no host sync. The LM part is a function of the
string, so the members of a merged segment (equal hash pair) have the same one and the segment
takes its first member's LM state and part (that they agree is tested).

**Word LM.** As :class:`~speechlab.decode.prefix_beam.PrefixBeamSearch` with ``lm_unit="word"``
(``csrc/prefix_beam_search.cpp``): a space after a non-empty partial word — also a space inside
a gram (``"s "``, ``" t"``, ``"a b"``) — completes the word and adds ``β + α·ln P(word |
state)`` (KenLM's log10 × ln 10, as the tables hold it); at the end the last partial word is
scored the same way, then ``α·ln P(</s> | state)``. The completed word's LM id comes from its
hash: the LM's spellable words are a sorted table of their hash pairs (``h1·M2 + h2`` of the
char ids, 62 bits), with their lengths; ``torch.searchsorted`` of the partial word's key, found
when key and length agree, else ``<unk>`` (an OOV word scores as KenLM scores it). An extension
ℓ + g takes g's characters in turn, a fixed loop of ``N`` rounds over the ``(B, K, C)``
extensions, each round one table lookup and one :meth:`TensorNgramLM.score` (masked where no
word ends). **Lexicon** (``lexicon``: the words a hypothesis may spell, e.g. the LM's): a sorted
table of the hash pairs of all the words' prefixes (with length, is-a-word, look-ahead);
membership by searchsorted. As in the C++ search, a partial word that leaves the prefixes pays
``unk_score`` once then, one that ends (space or end) inside them without being a word pays it
then (``-inf``: only lexicon words survive); the ranking adds the look-ahead of a partial word
inside the lexicon, ``α·max ln P_unigram`` of the words it can still become (not part of the
scores returned).

Differences from the CPU search: equal scores are ordered arbitrarily (the CPU search orders
them by trie node), and strings are identified by a 62-bit hash pair instead of a trie (two
strings merged by a collision: about ``(K·C)² / 2^62`` per utterance and frame).

    >>> dec = BatchedPrefixBeamSearch(chars="ab", grams=["a", "b", "ab"], beam_size=8)
    >>> lp = torch.tensor([[[0.1, 0.1, 0.1, 0.7]]]).log()
    >>> dec.decode(lp, torch.tensor([1]))[0][0].text
    'ab'
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from speechlab.decode.prefix_beam import BeamHypothesis, GramDecoding, load_lexicon, word_times
from speechlab.lm.tensor_ngram import TensorNgramLM

#: the two hash moduli (primes below 2^31) and bases
M1, M2 = 2_147_483_647, 2_147_483_629
BASE1, BASE2 = 911_382_323, 972_663_749
NEG_INF = -math.inf


class BeamState(NamedTuple):
    """The search state after a frame (``B`` utterances, ``K`` beams, ``N = max_n``).

    Attributes:
        pb: ``(B, K)`` ln P of the paths spelling the beam's string and ending in the blank.
        pg: ``(B, K, N)`` ln P of those whose current frame repeats the last gram, of ``n``
            characters at index ``n - 1``.
        tail: ``(B, K, N)`` int64, the string's last ``N`` char ids, right-aligned, ``0`` padded.
        h1: ``(B, K)`` int64, hash of the string modulo ``M1``.
        h2: ``(B, K)`` int64, hash modulo ``M2``.
        words: ``(B, K)`` int64, the words counted for β: without an LM, completed words (a
            non-space followed by a space); with the character LM, the spaces of the string
            (the CPU search's ``lm_unit="char"`` count).
        lm_state: ``(B, K)`` int64, the LM state after the string's characters (``<s>`` first);
            ``0`` without an LM.
        lm_score: ``(B, K)`` the LM part of the string so far, ``α·ln P_LM(chars) + β·words``
            (nats, without ``</s>``); ``0`` without an LM.
        parent: ``(B, K)`` int64, the beam slot of the previous frame this one came from.
        emit: ``(B, K)`` int64, the gram id appended at this frame (``0``: none).
        wh1: ``(B, K)`` int64, with a word LM the hash modulo ``M1`` of the partial word (the
            characters after the last space; ``0`` otherwise).
        wh2: ``(B, K)`` int64, the partial word's hash modulo ``M2``.
        wlen: ``(B, K)`` int64, the partial word's length (``0``: none, e.g. after a space).
    """

    pb: Tensor
    pg: Tensor
    tail: Tensor
    h1: Tensor
    h2: Tensor
    words: Tensor
    lm_state: Tensor
    lm_score: Tensor
    parent: Tensor
    emit: Tensor
    wh1: Tensor
    wh2: Tensor
    wlen: Tensor


@dataclass
class _ChunkLoop:
    """The static buffers of the chunked frame loop of one batch size (``B`` utterances, room
    for ``T`` frames, a multiple of the chunk): what a CUDA graph of one chunk reads and writes
    at fixed addresses, and the graph.

    Attributes:
        lp: ``(T, B, V)`` the batch's log-probabilities, time-major (rows past its longest
            utterance: stale, those frames are inactive).
        lens: ``(B,)`` int64, the frames of each utterance.
        t0: ``(1,)`` int64, the first frame of the next chunk (advanced by the chunk itself).
        state: the state before the next chunk.
        initial: :meth:`BatchedPrefixBeamSearch.initial_state` of ``B`` (copied into ``state``
            by every decode).
        parents: ``(T, B, K)`` int32, the back-pointers of every frame (``BeamState.parent``).
        emits: ``(T, B, K)`` int32, the grams appended at every frame (``BeamState.emit``).
        graph: the captured chunk, a ``torch.cuda.CUDAGraph`` (``None``: not captured).
        failed: the capture failed: the chunks run eagerly.
    """

    lp: Tensor
    lens: Tensor
    t0: Tensor
    state: BeamState
    initial: BeamState
    parents: Tensor
    emits: Tensor
    graph: Any = None
    failed: bool = False


def _poly_hash(ids: Sequence[int], base: int, mod: int) -> int:
    h = 0
    for c in ids:
        h = (h * base + c) % mod
    return h


def _is_kenlm_binary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a KenLM binary model (False for an ARPA or an unreadable file: that
    error comes where the LM is loaded)."""
    try:
        with open(path, "rb") as f:
            return f.read(64).startswith(b"mmap lm http://kheafield.com/code")
    except OSError:
        return False


def _lm_token(lm: TensorNgramLM, char: str) -> int:
    """The id :meth:`TensorNgramLM.score` takes for ``char`` (a space also as ``|``)."""
    for token in (char, "|") if char == " " else (char,):
        try:
            return lm.token_id(token)
        except KeyError:
            pass
    raise ValueError(f"the LM's vocabulary has no token for the character {char!r}")


class BatchedPrefixBeamSearch:
    """Prefix beam search over gram (or character) outputs, batched over utterances and beams.

    Args:
        chars: the character vocabulary in id order (ids ``1..|Σ|``; blank = 0).
        grams: the gram strings of output ids ``1..V-1`` in id order (default ``chars``: CTC).
        beam_size: hypotheses kept per frame (``K``).
        token_beam: at most this many non-blank tokens tried per frame (``0``: all).
        token_threshold: skip tokens whose log-prob is below the frame's best minus this.
        beam_threshold: drop hypotheses scoring below the best minus this.
        word_score: β, added per word (words as :class:`PrefixBeamSearch` counts them: without
            an LM or with a word LM a run of non-space characters, completed words counting
            during the search and the last one at the end; with the character LM every space,
            as ``lm_unit="char"``).
        lm: an n-gram LM: a :class:`~speechlab.lm.tensor_ngram.TensorNgramLM` (moved to
            ``device``; character LM: its token ids looked up per character with ``token_id``;
            word LM: its own LM ids, words looked up by hash), or the path of an ARPA file
            (loaded in ``dtype``; character LM: with the vocabulary ``["<blank>", *chars]``, a
            space is the LM token ``|``, characters the LM lacks are ``<unk>``; word LM: with
            the LM's own ids).
            ``None``: no LM.
        lm_weight: α, the weight of the natural-log LM score.
        lm_unit: the LM's tokens: ``"char"`` (every character of every gram a token) or
            ``"word"`` (a word scored when a space or the end completes it), as the CPU
            search's ``lm_unit``.
        lexicon: with a word LM, the words a hypothesis may spell (e.g. the LM's words,
            :func:`~speechlab.decode.prefix_beam.arpa_words`); words with characters outside
            ``chars`` are dropped, as the CPU search does. ``None``/empty: no lexicon.
        unk_score: the cost of a word outside the lexicon, paid once (``-inf``: lexicon words
            only).
        device: where the search runs (default: the CPU).
        dtype: the float type of the log-probabilities (``float64``, like the CPU search;
            ``float32`` is faster on a GPU and agrees to about ``1e-4``).
        cuda_graph: on a CUDA device, run the frame loop as a CUDA graph of ``graph_chunk``
            frames replayed ``ceil(T / graph_chunk)`` times (captured once per batch size and
            kept, see :meth:`decode`); the same results as the per-frame loop. Ignored on the
            CPU; :meth:`decode` can override it per call.
        graph_chunk: ``S``, the frames of one captured chunk.
        compile: ``torch.compile`` the frame step (``fullgraph=True, dynamic=False``: inductor
            fuses its elementwise kernels; captured in the CUDA graph too). Numerics are
            inductor's (texts the same, scores to rounding); the first decode of each batch
            size compiles (tens of seconds). Meant for a GPU.

    The defaults are :class:`GramDecoding`'s; :meth:`from_config` builds the search from one.
    Pass ``token_threshold=beam_threshold=math.inf`` for the exhaustive (unpruned) search. Work
    per frame is ``O(B·K·C·N)`` with ``C = token_beam`` (or ``V - 1``), plus with an LM
    ``N·B·K·C`` LM queries (``order`` binary searches each).
    """

    def __init__(self, chars: Sequence[str], grams: Sequence[str] | None = None,
                 beam_size: int = GramDecoding.beam_size, token_beam: int = GramDecoding.token_beam,
                 token_threshold: float = GramDecoding.token_threshold,
                 beam_threshold: float = GramDecoding.beam_threshold,
                 word_score: float = GramDecoding.word_score,
                 lm: TensorNgramLM | str | os.PathLike | None = None,
                 lm_weight: float = GramDecoding.lm_weight, lm_unit: str = "char",
                 lexicon: Iterable[str] | None = None, unk_score: float = GramDecoding.unk_score,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
                 cuda_graph: bool = True, graph_chunk: int = 25, compile: bool = False) -> None:
        self.chars = list(chars)
        self.grams = list(grams) if grams is not None else list(self.chars)
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        if not self.grams:
            raise ValueError("at least one gram expected")
        for g in self.grams:
            if not g or len(g) > 7 or any(c not in index for c in g):
                raise ValueError(f"gram {g!r}: 1-7 characters of the vocabulary expected")
        if len(set(self.grams)) != len(self.grams):
            dup = sorted({g for g in self.grams if self.grams.count(g) > 1})
            raise ValueError(f"grams given twice: {dup!r}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if token_beam < 0:
            raise ValueError(f"token_beam must be >= 0, got {token_beam}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a float type, got {dtype}")
        if graph_chunk < 1:
            raise ValueError(f"graph_chunk must be >= 1, got {graph_chunk}")
        self.cuda_graph, self.graph_chunk, self.compile = bool(cuda_graph), graph_chunk, bool(compile)
        #: CUDA graphs captured so far (one per batch size, again when a longer batch comes)
        self.graph_captures = 0
        #: why the last CUDA graph capture failed (that batch size then decodes without one)
        self.graph_error: str | None = None
        self._loops: OrderedDict[tuple[Any, ...], _ChunkLoop] = OrderedDict()
        self._compiled_step: Any = None
        self.beam_size, self.token_beam = beam_size, token_beam
        self.token_threshold, self.beam_threshold = float(token_threshold), float(beam_threshold)
        self.word_score = float(word_score)
        self.device = torch.device(device if device is not None else "cpu")
        self.dtype = dtype
        self.space_id = index.get(" ", -1)
        self.max_n = n = max(len(g) for g in self.grams)
        g_count = len(self.grams)
        self.num_candidates = min(token_beam, g_count) if token_beam > 0 else g_count

        ids = [[index[c] for c in g] for g in self.grams]
        v = g_count + 1
        right = torch.zeros(v, n, dtype=torch.long)
        tail_idx = torch.arange(n).repeat(v, 1)  # id 0 (no gram): the tail unchanged
        length = torch.zeros(v, dtype=torch.long)
        gh1, gh2 = torch.zeros(v, dtype=torch.long), torch.zeros(v, dtype=torch.long)
        pow1, pow2 = torch.ones(v, dtype=torch.long), torch.ones(v, dtype=torch.long)
        inner_words = torch.zeros(v, dtype=torch.long)
        first_space = torch.zeros(v, dtype=torch.bool)
        for i, g in enumerate(ids, start=1):
            m = len(g)
            length[i] = m
            right[i, n - m:] = torch.tensor(g)
            # new tail = last n of (tail + g): position p < n - m takes tail[p + m], else g's char
            tail_idx[i] = torch.tensor([p + m if p < n - m else n + p for p in range(n)])
            gh1[i], gh2[i] = _poly_hash(g, BASE1, M1), _poly_hash(g, BASE2, M2)
            pow1[i], pow2[i] = pow(BASE1, m, M1), pow(BASE2, m, M2)
            inner_words[i] = sum(g[j] == self.space_id and g[j - 1] != self.space_id for j in range(1, m))
            first_space[i] = g[0] == self.space_id
        keys = gh1[1:] * M2 + gh2[1:]
        if len(set(keys.tolist())) != g_count:  # two grams of equal hash pairs: not met in practice
            raise RuntimeError("two grams have the same hash pair; change BASE1/BASE2")
        skeys, order = keys.sort()
        dev = self.device
        self._length = length.to(dev)
        self._right = right.to(dev)
        self._tail_idx = tail_idx.to(dev)
        self._inner_words = inner_words.to(dev)
        self._first_space = first_space.to(dev)
        # the grams' hash pairs sorted, then a sentinel above every key whose gram id 0 (length 0)
        # never matches: a searchsorted position is always a valid index
        self._skeys = torch.cat([skeys, torch.tensor([torch.iinfo(torch.int64).max])]).to(dev)
        self._sids = torch.cat([order + 1, torch.zeros(1, dtype=torch.long)]).to(dev)
        # per gram id, one lookup for a candidate: [|g|, |g| - 1, base1^|g|, base2^|g|, hash1, hash2]
        self._gram_table = torch.stack([length, length - 1, pow1, pow2, gh1, gh2], -1).to(dev)  # (V, 6)
        self._mods = torch.tensor([M1, M2], device=dev)
        # base^i for the suffix hashes (i = distance from the end), (N, 2): both moduli at once
        self._spow = torch.tensor([[pow(BASE1, i, M1), pow(BASE2, i, M2)] for i in range(n)], device=dev)
        self._suffix_len = torch.arange(1, n + 1, device=dev)
        # positions p of the tail outside the suffix of length n: (n, n), row n - 1
        self._outside = torch.arange(n, device=dev)[None, :] < (n - self._suffix_len)[:, None]
        # leave-one-out masks over [pb, pg_1..pg_N]: row n - 1 drops pg_n
        self._drop = torch.eye(n + 1, dtype=torch.bool, device=dev)[1:]
        self._all_ids = torch.arange(1, v, device=dev)
        k, c = beam_size, self.num_candidates
        mm = k + k * c
        self._slots = torch.arange(k, device=dev)
        # candidate j: stays j < K come from beam j; extension K + k·C + c from beam k
        self._cand_parent = torch.cat([self._slots, self._slots.repeat_interleave(c)])  # (M,)
        self._cand_ids = torch.arange(mm, device=dev)
        self._cols = torch.arange(n + 1, device=dev)
        # the values merged, [stays' N + 1 components (K·(N+1)), extensions (K·C)]: the candidate
        # each belongs to and (stays) its column of the merge table
        self._val_cand = torch.cat([self._slots.repeat_interleave(n + 1), torch.arange(k, mm, device=dev)])
        self._stay_cols = self._cols.repeat(k)
        # every gram a candidate (token_beam 0 or >= V - 1): the candidates' lookups are constants
        self._every_gram = c == g_count
        self._every_look = self._gram_table[1:][None]  # (1, C, 6)
        self._every_gram_of = torch.cat([torch.zeros_like(self._slots), self._all_ids.repeat(k)])  # (M,)
        self._every_cols = torch.cat([self._stay_cols, self._length[1:].repeat(k)])
        # 0-dim constants for torch.where (a Python number there becomes a tensor per call: on a
        # GPU, one more kernel)
        self._zero = torch.zeros((), dtype=dtype, device=dev)
        self._ninf = torch.full((), NEG_INF, dtype=dtype, device=dev)
        self._ninf_col = torch.full((1, 1), NEG_INF, dtype=dtype, device=dev)
        self._izero = torch.zeros((), dtype=torch.long, device=dev)
        self._no_gram = torch.full((), v, dtype=torch.long, device=dev)  # see _suffix_grams
        self._last_cand = torch.full((), mm - 1, dtype=torch.long, device=dev)
        self._chunk_frames = torch.arange(graph_chunk, device=dev)  # a chunk's frames from its start
        # --- the LM: characters (every character a token) or words (a word scored when a
        # space or the end completes it)
        if lm_unit not in ("char", "word"):
            raise ValueError(f"lm_unit must be 'char' or 'word', got lm_unit={lm_unit!r}")
        self.lm_unit = lm_unit
        self.lm_weight = float(lm_weight)
        self.lm: TensorNgramLM | None = None
        gram_chars = torch.zeros(v, n, dtype=torch.long)  # (V, N) left-aligned, 0 padded
        for i, g in enumerate(ids, start=1):
            gram_chars[i, :len(g)] = torch.tensor(g)
        self._gram_chars = gram_chars.to(dev)
        if lm is not None and lm_unit == "char":
            if not isinstance(lm, TensorNgramLM):
                lm = TensorNgramLM.from_arpa(lm, vocab=["<blank>", *self.chars], device=dev, dtype=dtype)
            self.lm = lm.to(dev)
            tok = [_lm_token(self.lm, ch) for ch in self.chars]
            # char id -> LM token id (id 0, the padding of gram_chars: any valid token)
            self._lm_tok = torch.tensor([tok[0], *tok], dtype=torch.long, device=dev)
            spaces = torch.zeros(v, dtype=torch.long)
            for i, g in enumerate(ids, start=1):
                spaces[i] = sum(ch == self.space_id for ch in g)
            self._gram_spaces = spaces.to(dev)
            # (V, N): the LM ids of each gram's characters (mapped once: scored with lm_ids=True)
            self._gram_lm_tokens = self.lm.lm_ids(self._lm_tok[self._gram_chars])
            # β·spaces(g) in the search's float type (an int tensor times a float is float32)
            self._gram_beta = (self.word_score * spaces.double()).to(device=dev, dtype=dtype)
        elif lm is not None:
            if not isinstance(lm, TensorNgramLM):
                lm = TensorNgramLM.from_arpa(lm, device=dev, dtype=dtype)
            self.lm = lm.to(dev)
            self._init_word_table(index)
        # --- the lexicon (with the word LM): the C++ search's filter, words of known characters
        self.unk_score = float(unk_score)
        self.lexicon = sorted({w for w in lexicon if w and all(c in index for c in w)}) if lexicon else []
        if self.lexicon:
            if not self.word_lm:
                raise ValueError("BatchedPrefixBeamSearch supports a lexicon with a word LM only "
                                 "(lm=..., lm_unit='word'); use PrefixBeamSearch")
            self._init_lexicon_table(index)

    @property
    def word_lm(self) -> bool:
        """Whether the search has a word LM (``lm_unit="word"``)."""
        return self.lm is not None and self.lm_unit == "word"

    def _init_word_table(self, index: dict[str, int]) -> None:
        """The word LM's vocabulary as a hash table: the LM tokens that are spellable words
        (every character in the vocabulary, no space), keyed by the hash pair of their char ids
        ``h1·M2 + h2``, sorted (then a sentinel), with each word's LM id and length. A partial
        word's id is a ``searchsorted`` of its key, found when key and length agree; else
        ``<unk>`` (KenLM's id of a word it lacks)."""
        assert self.lm is not None
        keys, lm_ids, lens = [], [], []
        for t, w in enumerate(self.lm.lm_tokens):
            if not w or any(c not in index or c == " " for c in w):
                continue  # never spelled
            cid = [index[c] for c in w]
            keys.append(_poly_hash(cid, BASE1, M1) * M2 + _poly_hash(cid, BASE2, M2))
            lm_ids.append(t)
            lens.append(len(cid))
        if len(set(keys)) != len(keys):  # two words of one hash pair: not met in practice
            raise RuntimeError("two LM words have the same hash pair; change BASE1/BASE2")
        skeys, order = torch.tensor(keys, dtype=torch.long).sort()
        dev = self.device
        self._wkeys = torch.cat([skeys, torch.tensor([torch.iinfo(torch.int64).max])]).to(dev)
        self._wids = torch.cat([torch.tensor(lm_ids, dtype=torch.long)[order],
                                torch.tensor([self.lm.unk])]).to(dev)
        self._wlens = torch.cat([torch.tensor(lens, dtype=torch.long)[order], torch.tensor([-1])]).to(dev)
        self._unk = torch.full((), self.lm.unk, dtype=torch.long, device=dev)

    def _init_lexicon_table(self, index: dict[str, int]) -> None:
        """The lexicon as a table of its prefixes (every non-empty prefix of every word), keyed
        by the hash pair ``h1·M2 + h2`` of their char ids, sorted (then a sentinel), with each
        prefix's length, whether it is a word and its look-ahead ``α·max ln P(w)`` over the
        words ``w`` it begins (``ln P(w)``: the word's unigram probability from the empty
        context, ``<unk>``'s for a word the LM lacks: KenLM's ``score(w, bos=False,
        eos=False)``, as the C++ search's look-ahead)."""
        assert self.lm is not None
        lm_index = {t: i for i, t in enumerate(self.lm.lm_tokens)}  # LM ids (even with a vocabulary)
        ids = torch.tensor([lm_index.get(w, self.lm.unk) for w in self.lexicon], dtype=torch.long,
                           device=self.device)
        uni = self.lm.score(torch.zeros_like(ids), ids, lm_ids=True)[0].double().cpu().tolist()
        prefixes: dict[tuple[int, ...], list[Any]] = {}
        for w, p in zip(self.lexicon, uni, strict=True):
            look = self.lm_weight * p
            cid = tuple(index[c] for c in w)
            for m in range(1, len(cid) + 1):
                entry = prefixes.setdefault(cid[:m], [False, look])
                entry[1] = max(entry[1], look)
            prefixes[cid][0] = True
        keys = [_poly_hash(p, BASE1, M1) * M2 + _poly_hash(p, BASE2, M2) for p in prefixes]
        if len(set(keys)) != len(keys):  # two prefixes of one hash pair: not met in practice
            raise RuntimeError("two lexicon prefixes have the same hash pair; change BASE1/BASE2")
        skeys, order = torch.tensor(keys, dtype=torch.long).sort()
        vals = list(prefixes.values())
        dev = self.device
        self._pkeys = torch.cat([skeys, torch.tensor([torch.iinfo(torch.int64).max])]).to(dev)
        self._plens = torch.cat([torch.tensor([len(p) for p in prefixes])[order], torch.tensor([-1])]).to(dev)
        self._pword = torch.cat([torch.tensor([v[0] for v in vals])[order], torch.tensor([False])]).to(dev)
        self._plook = torch.cat([torch.tensor([v[1] for v in vals], dtype=torch.float64)[order],
                                 torch.zeros(1, dtype=torch.float64)]).to(device=dev, dtype=self.dtype)
        self._unk_score = torch.full((), self.unk_score, dtype=self.dtype, device=dev)

    def _word_id(self, wh1: Tensor, wh2: Tensor, wlen: Tensor) -> Tensor:
        """The LM ids of the partial words of hash pairs ``wh1, wh2`` and lengths ``wlen``
        (``<unk>`` for a word the LM lacks): a searchsorted into the sorted word hashes, the
        length checked too."""
        key = wh1 * M2 + wh2
        pos = torch.searchsorted(self._wkeys, key)
        ok = (self._wkeys[pos] == key) & (self._wlens[pos] == wlen)
        return torch.where(ok, self._wids[pos], self._unk)

    @classmethod
    def from_gramset(cls, grams: Any, **kwargs: Any) -> BatchedPrefixBeamSearch:
        """From a :class:`speechlab.data.grams.GramSet` (or a ``CharVocab``: plain CTC)."""
        vocab = getattr(grams, "vocab", grams)
        return cls(vocab.chars, list(getattr(grams, "grams", vocab.chars)), **kwargs)

    @staticmethod
    def load_lm(grams: Any, path: str | os.PathLike, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float64, unit: str = "char") -> TensorNgramLM:
        """An ARPA LM as a :class:`TensorNgramLM`: with ``unit="char"`` over the characters of
        ``grams`` (a GramSet or a CharVocab: ids ``1..|Σ|``, a space as ``|``); with
        ``unit="word"`` with the LM's own token ids (words are looked up by the search)."""
        dev = device if device is not None else "cpu"
        if unit == "word":
            return TensorNgramLM.from_arpa(path, device=dev, dtype=dtype)
        vocab = getattr(grams, "vocab", grams)
        return TensorNgramLM.from_arpa(path, vocab=["<blank>", *vocab.chars], device=dev, dtype=dtype)

    @staticmethod
    def unsupported(config: GramDecoding) -> str | None:
        """Why this search cannot run ``config``, or None: character and word ARPA LMs
        (``lm_unit`` ``"char"`` or ``"word"``) are supported, a lexicon with a word LM only; a
        KenLM binary model is not (its tables cannot be read here)."""
        if config.lm is not None and _is_kenlm_binary(config.lm):
            return (f"BatchedPrefixBeamSearch reads ARPA LMs only, {config.lm!r} is a KenLM "
                    f"binary; use PrefixBeamSearch or the ARPA file")
        if config.lexicon is not None and (config.lm is None or config.lm_unit != "word"):
            return (f"BatchedPrefixBeamSearch supports a lexicon with a word LM only "
                    f"(lexicon={config.lexicon!r}, lm={config.lm!r}, lm_unit={config.lm_unit!r}); "
                    f"use PrefixBeamSearch")
        if config.lm is not None and config.lm_unit not in ("char", "word"):
            return (f"BatchedPrefixBeamSearch: unknown lm_unit={config.lm_unit!r} "
                    f"(lm={config.lm!r}); 'char' or 'word' expected")
        return None

    @classmethod
    def from_config(cls, grams: Any, config: GramDecoding, *, lm: TensorNgramLM | None = None,
                    lexicon: Iterable[str] | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float64) -> BatchedPrefixBeamSearch:
        """The search ``config`` describes over ``grams`` (a GramSet, or a ``CharVocab``: CTC).

        ``config.lm`` is an ARPA file loaded as a
        :class:`~speechlab.lm.tensor_ngram.TensorNgramLM` (:meth:`load_lm`): with
        ``lm_unit="char"`` over the gram set's characters (ids ``1..|Σ|``, a space as ``|``),
        with ``lm_unit="word"`` with its own ids; ``lm``: that LM already loaded, to share one
        across several searches (e.g. a grid of ``lm_weight``). ``config.lexicon`` (with a word
        LM) is read by :func:`~speechlab.decode.prefix_beam.load_lexicon` unless ``lexicon``
        gives its words.

        Raises:
            ValueError: the config asks for a lexicon without a word LM: not supported here
                (use :class:`PrefixBeamSearch`).
        """
        reason = cls.unsupported(config)
        if reason is not None:
            raise ValueError(reason)
        if lm is None and config.lm is not None:
            lm = cls.load_lm(grams, config.lm, device=device, dtype=dtype, unit=config.lm_unit)
        if lexicon is None:
            lexicon = load_lexicon(config.lexicon, config.lm)
        return cls.from_gramset(
            grams, beam_size=config.beam_size, token_beam=config.token_beam,
            token_threshold=config.token_threshold, beam_threshold=config.beam_threshold,
            word_score=config.word_score, lm=lm, lm_weight=config.lm_weight,
            lm_unit=config.lm_unit if lm is not None else "char", lexicon=lexicon,
            unk_score=config.unk_score, device=device, dtype=dtype)

    @property
    def num_outputs(self) -> int:
        return len(self.grams) + 1

    # ------------------------------------------------------------------ the frame step
    def initial_state(self, batch: int) -> BeamState:
        """The state before the first frame: the empty string in slot 0 (ln P = 0), the other
        slots the empty string at ``-inf`` (padding); with an LM, every slot in ``<s>``."""
        k, n, dev = self.beam_size, self.max_n, self.device
        pb = torch.full((batch, k), NEG_INF, dtype=self.dtype, device=dev)
        pb[:, 0] = 0.0
        zeros = torch.zeros(batch, k, dtype=torch.long, device=dev)
        lm_state = self.lm.bos_state((batch, k)) if self.lm is not None else zeros.clone()
        return BeamState(pb, torch.full((batch, k, n), NEG_INF, dtype=self.dtype, device=dev),
                         torch.zeros(batch, k, n, dtype=torch.long, device=dev), zeros, zeros.clone(),
                         zeros.clone(), lm_state, torch.zeros(batch, k, dtype=self.dtype, device=dev),
                         self._slots.expand(batch, k).clone(), zeros.clone(), zeros.clone(),
                         zeros.clone(), zeros.clone())

    def _suffix_grams(self, tail: Tensor) -> Tensor:
        """``(B, K, N)``: the gram id of each suffix ``ℓ[-n:]`` at index ``n - 1``, ``V`` (the
        number of outputs: no gram) when it is not a gram or ℓ is shorter than ``n``. Hash
        lookup, then an exact check of the characters (which a hash collision fails)."""
        rev = tail.flip(-1)  # rev[..., i]: the char i places from the end
        h = ((rev[..., None] * self._spow) % self._mods).cumsum(-2) % self._mods  # (B, K, N, 2)
        gid = self._sids[torch.searchsorted(self._skeys, h[..., 0] * M2 + h[..., 1])]
        same = (self._right[gid] == tail[..., None, :]) | self._outside  # (B, K, N, N)
        ok = (self._length[gid] == self._suffix_len) & same.all(-1)
        return torch.where(ok, gid, self._no_gram)

    def _words_after(self, words: Tensor, last: Tensor, gram: Tensor) -> Tensor:
        """Completed words after appending ``gram`` (``0``: nothing) to a string whose last char
        is ``last`` (``0``: empty string); the tensors broadcast."""
        starts = self._first_space[gram] & (last != 0) & (last != self.space_id)
        return words + self._inner_words[gram] + starts.long()

    def _token_candidates(self, frame: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate grams of a frame ``(B, V)``: ``(log-probs, gram ids)``, each ``(B, C)``:
        the top ``C`` non-blank tokens (stable: ties to the lower id), those below the frame's
        best minus ``token_threshold`` (or NaN) at ``-inf``. With every gram a candidate the
        ids are ``1..V-1`` (a constant, expanded)."""
        b = frame.shape[0]
        c = self.num_candidates
        nonblank = frame[:, 1:]
        best = nonblank.amax(-1, keepdim=True)
        masked = torch.where(nonblank >= best - self.token_threshold, nonblank, self._ninf)
        if c < nonblank.shape[1]:
            cand_lp, order = masked.sort(dim=-1, descending=True, stable=True)
            return cand_lp[:, :c], order[:, :c] + 1
        return masked, self._all_ids.expand(b, c)

    def _gram_lookup(self, cand: Tensor) -> Tensor:
        """``(B, C, 6)`` (or ``(1, C, 6)``, a constant, with every gram a candidate): per candidate
        gram ``[|g|, |g| - 1, base1^|g|, base2^|g|, hash1(g), hash2(g)]``, int64."""
        return self._every_look if self._every_gram else self._gram_table[cand]

    def _candidate_hashes(self, s: BeamState, cand: Tensor, look: Tensor | None = None) -> Tensor:
        """``(B, M, 2)`` int64, ``M = K + K·C``: the hash pair ``(h1, h2)`` of every candidate
        string, the ``K`` stays (ℓ itself) then the extensions ℓ_k + g_c at ``K + k·C + c``
        (``look``: :meth:`_gram_lookup` of ``cand``, computed when not given)."""
        look = self._gram_lookup(cand) if look is None else look
        h = torch.stack([s.h1, s.h2], -1)  # (B, K, 2)
        ext = (h[:, :, None, :] * look[:, None, :, 2:4] + look[:, None, :, 4:6]) % self._mods
        return torch.cat([h, ext.flatten(1, 2)], 1)

    def _candidate_keys(self, s: BeamState, cand: Tensor) -> Tensor:
        """``(B, M)`` int64, ``M = K + K·C``: the hash pair as one key ``h1·M2 + h2`` of every
        candidate string, in :meth:`_candidate_hashes`' order."""
        hc = self._candidate_hashes(s, cand)
        return hc[..., 0] * M2 + hc[..., 1]

    def _candidate_lm(self, s: BeamState, cand: Tensor, look: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
        """The LM part and LM state of every candidate string (with an LM), ``(B, M)`` each in
        :meth:`_candidate_keys`' order: a stay keeps ℓ's; an extension ℓ + g scores g's
        characters in turn from ℓ's state — a fixed loop of ``N = max_n`` rounds of
        :meth:`TensorNgramLM.score` over ``(B, K, C)`` (positions past ``|g|`` masked) — and
        adds ``α·Σ ln P + β·spaces(g)`` to ℓ's part."""
        assert self.lm is not None
        b, k = s.lm_state.shape
        c = cand.shape[1]
        look = self._gram_lookup(cand) if look is None else look
        if self._every_gram:  # constants: (1, 1, C, N) and (1, 1, C)
            tokens, beta = self._gram_lm_tokens[1:][None, None], self._gram_beta[1:][None, None]
        else:
            tokens, beta = self._gram_lm_tokens[cand][:, None], self._gram_beta[cand][:, None, :]
        length = look[..., 0][:, None, :]  # (B, 1, C) or (1, 1, C)
        # every gram has a first character: no mask at i = 0
        logp, state = self.lm.score(s.lm_state[..., None].expand(b, k, c), tokens[..., 0], lm_ids=True)
        logp = logp.to(self.dtype)
        for i in range(1, self.max_n):
            lp_i, next_i = self.lm.score(state, tokens[..., i], lm_ids=True)
            valid = length > i
            logp = logp + torch.where(valid, lp_i.to(self.dtype), self._zero)
            state = torch.where(valid, next_i, state)
        ext = s.lm_score[..., None] + self.lm_weight * logp + beta
        return (torch.cat([s.lm_score, ext.flatten(1)], 1),
                torch.cat([s.lm_state, state.flatten(1)], 1))

    def _prefix_info(self, wh1: Tensor, wh2: Tensor, wlen: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """With a lexicon: for partial words of hash pairs ``wh1, wh2`` and lengths ``wlen``,
        ``(inside, is_word, look)``: whether the partial word is a prefix of a lexicon word (the
        empty one is), whether it is a lexicon word, and its look-ahead (α·max unigram ln P of
        the lexicon words it can become; ``0`` outside and for the empty word). A searchsorted
        into the sorted prefix hashes, the length checked too."""
        key = wh1 * M2 + wh2
        pos = torch.searchsorted(self._pkeys, key)
        found = (self._pkeys[pos] == key) & (self._plens[pos] == wlen) & (wlen > 0)
        inside = found | (wlen == 0)
        return inside, found & self._pword[pos], torch.where(found, self._plook[pos], self._zero)

    def _word_lm_advance(self, w: tuple[Tensor, ...], lex: tuple[Tensor, Tensor, Tensor] | None,
                         char: Tensor, valid: Tensor
                         ) -> tuple[tuple[Tensor, ...], tuple[Tensor, Tensor, Tensor] | None]:
        """Append ``char`` (char ids, broadcast) where ``valid`` to strings in word-LM state
        ``w = (lm_score, lm_state, words, wh1, wh2, wlen)`` (and, with a lexicon, ``lex =``
        :meth:`_prefix_info` of the partial word), as the C++ search does: a space after a
        non-empty partial word scores the word (with a lexicon first ``unk_score`` if the word
        is inside the lexicon's prefixes but no word of it; then ``+ β + α·ln P(word | state)``,
        the LM state advanced, one more word; a word the LM lacks is ``<unk>``) and empties the
        partial word; any other character extends the partial word's hashes and length (with a
        lexicon ``unk_score`` once when the word leaves the lexicon's prefixes)."""
        assert self.lm is not None
        lm_score, lm_state, words, wh1, wh2, wlen = w
        space = valid & (char == self.space_id)
        done = space & (wlen > 0)
        if lex is not None:
            inside, is_word, _ = lex
            lm_score = lm_score + torch.where(done & inside & ~is_word, self._unk_score, self._zero)
        logp, nxt = self.lm.score(lm_state, self._word_id(wh1, wh2, wlen), lm_ids=True)
        lm_score = lm_score + torch.where(done, self.lm_weight * logp.to(self.dtype) + self.word_score,
                                          self._zero)
        lm_state = torch.where(done, nxt, lm_state)
        words = words + done.long()
        grow = valid & ~space
        wh1 = torch.where(space, self._izero, torch.where(grow, (wh1 * BASE1 + char) % M1, wh1))
        wh2 = torch.where(space, self._izero, torch.where(grow, (wh2 * BASE2 + char) % M2, wh2))
        wlen = torch.where(space, self._izero, wlen + grow.long())
        if lex is not None:
            inside, is_word, look = lex
            n_inside, n_word, n_look = self._prefix_info(wh1, wh2, wlen)
            lm_score = lm_score + torch.where(grow & inside & ~n_inside, self._unk_score, self._zero)
            # off the lexicon once: off until the word ends (no lookup can bring it back: the
            # prefixes are prefix-closed)
            lex = (torch.where(valid, n_inside & (inside | space), inside),
                   torch.where(valid, n_word, is_word), torch.where(valid, n_look, look))
        return (lm_score, lm_state, words, wh1, wh2, wlen), lex

    def _candidate_word_lm(self, s: BeamState, cand: Tensor, look: Tensor | None = None
                           ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """With the word LM: ``(lm_score, lm_state, words, wh1, wh2, wlen)`` of every candidate
        string, ``(B, M)`` each in :meth:`_candidate_keys`' order, and with a lexicon the
        look-ahead ``(B, M)`` (ranking only; else None): a stay keeps ℓ's; an extension ℓ + g
        takes g's characters in turn (:meth:`_word_lm_advance`, a fixed loop of ``N = max_n``
        rounds over ``(B, K, C)``, positions past ``|g|`` masked), so that every space of g
        (``"s "``, ``" t"``, ``"a b"``) completes the word before it."""
        b, k = s.lm_state.shape
        c = cand.shape[1]
        look = self._gram_lookup(cand) if look is None else look
        chars = self._gram_chars[1:][None, None] if self._every_gram else self._gram_chars[cand][:, None]
        length = look[..., 0][:, None, :]  # (B, 1, C) or (1, 1, C)
        fields = (s.lm_score, s.lm_state, s.words, s.wh1, s.wh2, s.wlen)
        ext = tuple(x[..., None].expand(b, k, c) for x in fields)
        lex0 = self._prefix_info(s.wh1, s.wh2, s.wlen) if self.lexicon else None
        lex = tuple(x[..., None].expand(b, k, c) for x in lex0) if lex0 is not None else None
        for i in range(self.max_n):
            ext, lex = self._word_lm_advance(ext, lex, chars[..., i], length > i)
        out = tuple(torch.cat([x, e.flatten(1)], 1) for x, e in zip(fields, ext, strict=True))
        if lex0 is None or lex is None:
            return out, None
        # the look-ahead of the partial word while inside the lexicon, else 0
        stay_look = torch.where(lex0[0], lex0[2], self._zero)
        ext_look = torch.where(lex[0], lex[2], self._zero)
        return out, torch.cat([stay_look, ext_look.flatten(1)], 1)

    def _step(self, s: BeamState, frame: Tensor, active: Tensor) -> BeamState:
        """One frame for every utterance and beam.

        Args:
            s: the state after the previous frame.
            frame: ``(B, V)`` log-probabilities of this frame (blank at 0), in the search's
                ``dtype``.
            active: ``(B,)`` bool, whether the frame is within the utterance; an inactive
                utterance's beams are left unchanged (``parent`` the identity, ``emit`` 0).

        Returns:
            The state after the frame. Fixed shapes, no host synchronisation, no tensor made
            from host data (so it can be captured in a CUDA graph).
        """
        b, k = s.pb.shape
        n, c = self.max_n, self.num_candidates
        mm = k + k * c
        frame = torch.where(active[:, None], frame, self._zero)  # whatever pads the batch
        # --- token pruning: the top C grams of the frame, those below the threshold at -inf
        cand_lp, cand = self._token_candidates(frame)
        look = self._gram_lookup(cand)
        m, mi = look[..., 0], look[..., 1][:, None, :].expand(b, k, c)  # |g|, |g| - 1
        # --- stays: blank after anything, repeat of the last gram (a suffix that is no gram
        # reads the -inf appended at id V)
        sg = self._suffix_grams(s.tail)  # (B, K, N)
        comps = torch.cat([s.pb[..., None], s.pg], -1)  # (B, K, N + 1)
        tot = comps.logsumexp(-1)
        rep = torch.cat([frame, self._ninf_col.to(frame.dtype).expand(b, 1)], 1).gather(1, sg.flatten(1))
        stay = torch.cat([(tot + frame[:, :1])[..., None], s.pg + rep.view(b, k, n)], -1)  # (B, K, N + 1)
        # --- extensions ℓ + g: from every path but those whose current frame already emits g
        excl = sg.gather(2, mi) == cand[:, None, :]
        loo = comps[..., None, :].masked_fill(self._drop, NEG_INF).logsumexp(-1)  # (B, K, N)
        src = torch.where(excl, loo.gather(2, mi), tot[..., None])
        ext = (src + cand_lp[:, None, :]).flatten(1)  # (B, K·C)
        # --- merge candidates spelling the same string: sort by hash key, segment logsumexp
        hc = self._candidate_hashes(s, cand, look)  # (B, M, 2)
        keys = hc[..., 0] * M2 + hc[..., 1]
        skeys, order = keys.sort(dim=1, stable=True)
        # segment of each candidate: sorted position 0 opens segment 0, a new key the next one
        seg = torch.zeros_like(order).scatter_(1, order[:, 1:], (skeys[:, 1:] != skeys[:, :-1]).cumsum(1))
        cols = (self._every_cols if self._every_gram
                else torch.cat([self._stay_cols.expand(b, -1), m.repeat(1, k)], 1))
        idx = seg.index_select(1, self._val_cand) * (n + 1) + cols
        vals = torch.cat([stay.flatten(1), ext], 1)
        top = torch.full((b, mm * (n + 1)), NEG_INF, dtype=vals.dtype,
                         device=vals.device).scatter_reduce_(1, idx, vals, "amax")
        shift = torch.where(top > NEG_INF, top, self._zero)
        total = torch.zeros_like(top).scatter_add_(1, idx, (vals - shift.gather(1, idx)).exp())
        merged = (total.log() + shift).view(b, mm, n + 1)  # an empty segment: all -inf
        # a candidate of each segment, the lowest id (an empty segment: M - 1, any valid index)
        first = torch.full_like(keys, mm - 1).scatter_reduce_(1, seg, self._cand_ids.expand(b, mm), "amin")
        score = merged.logsumexp(-1)  # -inf for an empty segment, whatever is added below
        gram_of = (self._every_gram_of.expand(b, mm) if self._every_gram
                   else torch.cat([torch.zeros_like(s.parent), cand.repeat(1, k)], 1))  # (B, M)
        cwords = None
        if self.word_lm:
            # as with the character LM below: every field is a function of the string
            cand_wlm, cand_look = self._candidate_word_lm(s, cand, look)
            score = score + cand_wlm[0].gather(1, first)
            if cand_look is not None:  # the lexicon's look-ahead: ranking only
                score = score + cand_look.gather(1, first)
        elif self.lm is not None:
            # the LM part is a function of the string: every member of a segment has it (up to
            # rounding; tested), so the segment takes its first member's
            cand_lm, cand_state = self._candidate_lm(s, cand, look)
            score = score + cand_lm.gather(1, first)
        elif self.word_score != 0.0:
            cwords = self._words_after(s.words.index_select(1, self._cand_parent),
                                       s.tail[..., -1].index_select(1, self._cand_parent), gram_of)
            score = score + self.word_score * cwords.gather(1, first)
        # the back-pointer of a string: its most probable member (the lowest id of equals), so
        # that the frames read off the back-pointers follow the paths carrying the mass
        member = torch.cat([stay.logsumexp(-1), ext], 1)  # (B, M)
        seg_best = torch.full_like(score, NEG_INF).scatter_reduce_(1, seg, member, "amax")
        lead_id = torch.where(member >= seg_best.gather(1, seg), self._cand_ids, self._last_cand)
        lead = torch.full_like(keys, mm - 1).scatter_reduce_(1, seg, lead_id, "amin")  # (B, M)
        # --- keep the best K (by am + LM part), then the beam threshold
        best_k, sel = score.topk(k, dim=1)
        keep = (best_k > NEG_INF) & (best_k >= best_k[:, :1] - self.beam_threshold)
        new = torch.where(keep[..., None], merged.gather(1, sel[..., None].expand(b, k, n + 1)), self._ninf)
        jl = lead.gather(1, sel)  # the most probable candidate of each kept string
        parent = self._cand_parent[jl]
        gram = gram_of.gather(1, jl)
        ptail = s.tail.gather(1, parent[..., None].expand(b, k, n))
        tail = torch.cat([ptail, self._right[gram]], -1).gather(2, self._tail_idx[gram])
        h = hc.gather(1, jl[..., None].expand(b, k, 2))  # the string's hash pair
        a, a3 = active[:, None], active[:, None, None]
        wh1, wh2, wlen = s.wh1, s.wh2, s.wlen  # 0 without a word LM
        if self.word_lm:
            j = first.gather(1, sel)  # the segment's first candidate, whose LM part it took
            lm_score, lm_state, words, wh1, wh2, wlen = (
                torch.where(a, x.gather(1, j), old) for x, old in
                zip(cand_wlm, (s.lm_score, s.lm_state, s.words, s.wh1, s.wh2, s.wlen), strict=True))
        elif self.lm is not None:
            words = s.words.gather(1, parent) + self._gram_spaces[gram]
            j = first.gather(1, sel)  # the segment's first candidate, whose LM part it took
            lm_state = torch.where(a, cand_state.gather(1, j), s.lm_state)
            lm_score = torch.where(a, cand_lm.gather(1, j), s.lm_score)
        else:
            words = (cwords.gather(1, jl) if cwords is not None
                     else self._words_after(s.words.gather(1, parent), ptail[..., -1], gram))
            lm_state, lm_score = s.lm_state, s.lm_score  # 0: no LM
        # --- utterances past their length keep their beams
        return BeamState(
            torch.where(a, new[..., 0], s.pb), torch.where(a3, new[..., 1:], s.pg),
            torch.where(a3, tail, s.tail), torch.where(a, h[..., 0], s.h1),
            torch.where(a, h[..., 1], s.h2), torch.where(a, words, s.words), lm_state, lm_score,
            torch.where(a, parent, self._slots), torch.where(a, gram, self._izero), wh1, wh2, wlen)

    # ------------------------------------------------------------------ decoding
    def decode(self, log_probs: Tensor, lengths: Tensor | Sequence[int] | None = None,
               nbest: int = 1, timestamps: bool = False, cuda_graph: bool | None = None
               ) -> list[list[BeamHypothesis]]:
        """Decode a batch.

        Args:
            log_probs: ``(B, T, V)`` log-probabilities (natural log), ``V = 1 + len(grams)``;
                rounded to ``float32`` first, as the CPU search does.
            lengths: ``(B,)`` frames of each utterance (default: all ``T``); frames past them are
                ignored.
            nbest: hypotheses returned per utterance, best first (at most ``beam_size``).
            timestamps: also fill each hypothesis's ``word_times`` (:class:`BeamHypothesis`):
                every word with the emission frames of the grams holding its first and last
                characters, read off the per-frame back-pointers; texts and scores unchanged.
            cuda_graph: on a CUDA device, replay a CUDA graph of ``graph_chunk`` frames instead
                of launching every frame's kernels from Python (default: the constructor's).
                The graph of a batch size is captured on its first decode (warmed up on a side
                stream first) and kept, with static buffers for up to the longest batch of that
                size seen so far (in multiples of ``graph_chunk``); a longer batch captures
                again. The chunk's start frame is a device tensor advanced inside the graph, so
                one graph serves every chunk; frames past the batch's longest utterance run
                inactive (nothing changes). A capture that fails warns and runs that batch size
                eagerly. Not thread-safe (one decode at a time per instance).

        Returns:
            Per utterance, up to ``nbest`` hypotheses, ranked by ``score = am_score +
            lm_score`` (nats): ``lm_score = word_score·words`` without an LM, with the
            character LM ``α·ln P_LM(string + </s>) + β·spaces``, with the word LM
            ``α·ln P_LM(words + </s>) + β·words`` (plus ``unk_score`` per word outside the
            lexicon); the empty string for a length of 0.
        """
        if log_probs.dim() != 3 or log_probs.shape[2] != self.num_outputs:
            raise ValueError(f"log_probs must be (B, T, {self.num_outputs}), got {tuple(log_probs.shape)}")
        bsz, t_max = log_probs.shape[:2]
        if lengths is None:
            lens = [t_max] * bsz
        else:
            lens = [int(x) for x in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
        if len(lens) != bsz or any(x < 0 or x > t_max for x in lens):
            raise ValueError(f"lengths must be {bsz} values in 0..{t_max}, got {lens}")
        if bsz == 0:
            return []
        t_run = max(lens)
        lp = log_probs.detach()[:, :t_run].float().to(device=self.device, dtype=self.dtype)
        graph = self.cuda_graph if cuda_graph is None else cuda_graph
        with torch.no_grad():
            if graph and self.device.type == "cuda" and t_run > 0:
                state, parents, emits = self._run_chunked(lp, lens, graph=True)
            else:
                state, parents, emits = self._run_frames(lp, lens)
            return self._finish(state, parents, emits, nbest, timestamps)

    def _step_fn(self) -> Callable[[BeamState, Tensor, Tensor], BeamState]:
        """The frame step: :meth:`_step`, or with ``compile`` its ``torch.compile`` (made once)."""
        if not self.compile:
            return self._step
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self._step, fullgraph=True, dynamic=False)
        return self._compiled_step

    def _run_frames(self, lp: Tensor, lens: Sequence[int]) -> tuple[BeamState, Tensor, Tensor]:
        """The plain frame loop: one :meth:`_step` per frame of ``lp (B, T, V)`` launched from
        Python (no host sync); the final state and the ``(T, B, K)`` int32 back-pointers and
        grams appended. (The frames are copied time-major first, so that a compiled step sees
        the same strides for every ``T``.)"""
        bsz, t_run = lp.shape[:2]
        step = self._step_fn()
        frames = lp.transpose(0, 1).contiguous()  # (T, B, V): every frame alike in memory
        active = torch.arange(t_run)[:, None] < torch.tensor(lens)  # (T, B)
        active = active.to(self.device)
        state = self.initial_state(bsz)
        parents = torch.empty(t_run, bsz, self.beam_size, dtype=torch.int32, device=self.device)
        emits = torch.empty_like(parents)
        for t in range(t_run):  # no host synchronisation in here
            state = step(state, frames[t], active[t])
            parents[t], emits[t] = state.parent, state.emit
        return state, parents, emits

    # ------------------------------------------------------------------ the chunked loop
    def _run_chunked(self, lp: Tensor, lens: Sequence[int], graph: bool
                     ) -> tuple[BeamState, Tensor, Tensor]:
        """The frame loop in chunks of ``S = graph_chunk`` frames over static buffers
        (:class:`_ChunkLoop`), each chunk one replay of a CUDA graph (``graph``, on CUDA) or
        one eager :meth:`_advance` (the same work, on any device: how its logic is tested on
        the CPU). The same results as :meth:`_run_frames`: the final state (but ``parent`` and
        ``emit``, of the last chunk's padding frames) and the back-pointers ``(T, B, K)``, views
        of the static buffers (read them before the next decode)."""
        bsz, t_run = lp.shape[:2]
        s = self.graph_chunk
        t_pad = -(-t_run // s) * s
        loop = self._loop(bsz, t_pad)
        step = self._step_fn()
        self._load(loop, lp, lens)
        if graph and loop.graph is None and not loop.failed:
            self._capture(loop, step)
        for _ in range(t_pad // s):
            if loop.graph is not None and graph:
                loop.graph.replay()
            else:
                self._advance(loop, step)
        return loop.state, loop.parents[:t_run], loop.emits[:t_run]

    #: batch sizes whose chunk loop (buffers and graph) is kept, the least recently used dropped
    max_graphs = 8

    def _loop(self, batch: int, frames: int) -> _ChunkLoop:
        """The kept chunk loop of ``batch`` utterances with room for ``frames`` (a multiple of
        ``graph_chunk``), or a new one (buffers on the device, no graph yet) with room for
        ``frames``, or twice the old room when that is more (so that ever longer batches
        capture a few times only)."""
        key = (batch, self.num_outputs, self.dtype)
        loop = self._loops.pop(key, None)
        if loop is None or loop.lp.shape[0] < frames:
            room = frames if loop is None else max(frames, 2 * loop.lp.shape[0])
            del loop  # its graph and buffers go before the new ones are made
            # normal tensors even under inference_mode: a later decode outside it writes them
            with torch.inference_mode(False):
                loop = self._new_loop(batch, room)
        self._loops[key] = loop
        while len(self._loops) > self.max_graphs:
            self._loops.popitem(last=False)
        return loop

    def _new_loop(self, batch: int, frames: int) -> _ChunkLoop:
        """Zeroed buffers of a chunk loop of ``batch`` utterances and ``frames`` frames."""
        dev, k = self.device, self.beam_size
        parents = torch.zeros(frames, batch, k, dtype=torch.int32, device=dev)
        initial = BeamState(*(x.clone(memory_format=torch.contiguous_format)
                              for x in self.initial_state(batch)))
        return _ChunkLoop(lp=torch.zeros(frames, batch, self.num_outputs, dtype=self.dtype, device=dev),
                          lens=torch.zeros(batch, dtype=torch.long, device=dev),
                          t0=torch.zeros(1, dtype=torch.long, device=dev),
                          state=BeamState(*(x.clone() for x in initial)), initial=initial,
                          parents=parents, emits=torch.zeros_like(parents))

    def _load(self, loop: _ChunkLoop, lp: Tensor, lens: Sequence[int]) -> None:
        """Copy a batch ``lp (B, T, V)`` with ``lens`` into the loop's buffers and reset its
        state to :meth:`initial_state` and its chunk start to frame 0 (outside any graph)."""
        loop.lp[:lp.shape[1]].copy_(lp.transpose(0, 1))
        loop.lens.copy_(torch.tensor(list(lens), dtype=torch.long))
        loop.t0.zero_()
        for dst, src in zip(loop.state, loop.initial, strict=True):
            dst.copy_(src)

    def _chunk(self, loop: _ChunkLoop, step: Callable[[BeamState, Tensor, Tensor], BeamState]
               ) -> BeamState:
        """``S`` frames from the device index ``loop.t0`` on: the state after them, and their
        back-pointers written into ``loop.parents``/``loop.emits`` at those rows; the loop's
        state and ``t0`` are not changed. Only device tensors, no host sync, fixed shapes."""
        ts = loop.t0 + self._chunk_frames  # (S,) the chunk's frames
        frames = loop.lp.index_select(0, ts)  # (S, B, V)
        active = loop.lens > ts[:, None]  # (S, B)
        state, parents, emits = loop.state, [], []
        for i in range(self.graph_chunk):
            state = step(state, frames[i], active[i])
            parents.append(state.parent)
            emits.append(state.emit)
        loop.parents.index_copy_(0, ts, torch.stack(parents).to(torch.int32))
        loop.emits.index_copy_(0, ts, torch.stack(emits).to(torch.int32))
        return state

    def _advance(self, loop: _ChunkLoop, step: Callable[[BeamState, Tensor, Tensor], BeamState]) -> None:
        """One chunk in place: :meth:`_chunk`, then its state copied into ``loop.state`` and
        ``loop.t0`` moved on by ``S`` (the work one CUDA graph replay does)."""
        state = self._chunk(loop, step)
        for dst, src in zip(loop.state, state, strict=True):
            if src is not dst:  # a field no frame changes (no LM: lm_state, lm_score)
                dst.copy_(src)
        loop.t0.add_(self.graph_chunk)

    def _capture(self, loop: _ChunkLoop, step: Callable[[BeamState, Tensor, Tensor], BeamState]) -> None:
        """Capture :meth:`_advance` of ``loop`` as a CUDA graph (``loop.graph``): first one
        :meth:`_chunk` on a side stream (lazy initialisation, ``torch.compile``'s compilation,
        kernels loaded; it changes nothing but back-pointer rows that the replays rewrite), then
        the capture on that stream (capturing runs nothing: ``loop`` is unchanged). A failed
        capture warns, and the loop's chunks run eagerly."""
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # also restores the current stream if capture fails
                self._chunk(loop, step)
                graph = torch.cuda.CUDAGraph()
                try:
                    # thread_local: CUDA calls of other threads (a DataLoader pinning memory)
                    # neither fail nor break this capture
                    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                        self._advance(loop, step)
                except Exception as e:  # an op that cannot be captured (torch/CUDA version)
                    loop.failed = True
                    self.graph_error = f"{type(e).__name__}: {e}"
                    warnings.warn(f"BatchedPrefixBeamSearch: CUDA graph capture failed, decoding "
                                  f"without it ({self.graph_error})", RuntimeWarning, stacklevel=4)
                    torch.cuda.synchronize()
                else:
                    loop.graph = graph
                    self.graph_captures += 1
            torch.cuda.current_stream().wait_stream(side)

    def decode_batch(self, log_probs: Tensor, lengths: Tensor | Sequence[int]) -> list[str]:
        """Best transcript of each utterance of ``log_probs (B, T, V)`` with ``lengths (B,)``."""
        return [h[0].text if h else "" for h in self.decode(log_probs, lengths)]

    def _finish(self, s: BeamState, parents: Tensor, emits: Tensor, nbest: int,
                timestamps: bool = False) -> list[list[BeamHypothesis]]:
        """The final scores (without an LM the last partial word counted, with one ``</s>``
        scored), the n-best per utterance, and their strings spelled by walking the
        back-pointers (on the host); with ``timestamps``, each gram's frame (the frame whose
        back-pointer appended it) gives the words' frames (:func:`word_times`)."""
        am = torch.cat([s.pb[..., None], s.pg], -1).logsumexp(-1)
        if self.word_lm:  # + the last partial word (a space completes it), + α·ln P(</s> | state)
            assert self.lm is not None
            lex = self._prefix_info(s.wh1, s.wh2, s.wlen) if self.lexicon else None
            (lm, state, words, _, _, _), _ = self._word_lm_advance(
                (s.lm_score, s.lm_state, s.words, s.wh1, s.wh2, s.wlen), lex,
                torch.full_like(s.wlen, self.space_id), torch.ones_like(s.wlen, dtype=torch.bool))
            lm = lm + self.lm_weight * self.lm.eos_score(state).to(lm.dtype)
        elif self.lm is not None:  # the LM part so far + α·ln P(</s> | state), once
            words = s.words
            lm = s.lm_score + self.lm_weight * self.lm.eos_score(s.lm_state).to(s.lm_score.dtype)
        else:
            last = s.tail[..., -1]
            words = s.words + ((last != 0) & (last != self.space_id)).long()
        am_np = am.double().cpu().numpy()
        words_np = words.cpu().numpy()
        if self.lm is not None:
            lm_np = lm.double().cpu().numpy()
        else:
            lm_np = self.word_score * words_np.astype(np.float64)
        score_np = am_np + lm_np
        par, emi = parents.cpu().numpy(), emits.cpu().numpy()
        picks = []  # (utterance, slot) of every hypothesis returned, best first per utterance
        for b in range(score_np.shape[0]):
            order = [int(k) for k in np.argsort(-score_np[b], kind="stable") if am_np[b, k] > NEG_INF]
            picks += [(b, k) for k in order[:nbest]]
        ub = np.asarray([b for b, _ in picks], dtype=np.int64)
        slot = np.asarray([k for _, k in picks], dtype=np.int64)
        path = np.zeros((len(picks), par.shape[0]), dtype=np.int64)  # gram appended per frame
        for t in range(par.shape[0] - 1, -1, -1):
            path[:, t] = emi[t, ub, slot]
            slot = par[t, ub, slot].astype(np.int64)
        out: list[list[BeamHypothesis]] = [[] for _ in range(score_np.shape[0])]
        for i, (b, k) in enumerate(picks):
            frames = np.flatnonzero(path[i])
            grams = [(self.grams[int(path[i, t]) - 1], int(t)) for t in frames]
            text = "".join(g for g, _ in grams)
            out[b].append(BeamHypothesis(text, float(score_np[b, k]), float(am_np[b, k]),
                                         float(lm_np[b, k]), int(words_np[b, k]),
                                         word_times(grams) if timestamps else None))
        return out


__all__ = ["BatchedPrefixBeamSearch", "BeamState"]
