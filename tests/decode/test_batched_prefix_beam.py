"""The batched (torch) prefix beam search against independent oracles and the CPU search: the
brute-force enumeration of every frame path (exhaustive settings), PrefixBeamSearch (C++ when
built, else its Python reference) under every pruning option on batches of unequal lengths,
padding frames, the frame step traced whole by torch.compile, and CUDA against the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from speechlab.data.grams import GramSet
from speechlab.data.text import CharVocab
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from speechlab.decode.prefix_beam import (
    BeamHypothesis,
    GramDecoding,
    PrefixBeamSearch,
    native_available,
)
from tests.decode.test_gram_decode import CASES, CJK, EXHAUSTIVE, brute_force
from tests.helpers import sync_free_backend

CPU_BACKEND = "native" if native_available() else "reference"
HAS_CUDA = torch.cuda.is_available()
#: two scores closer than this are a tie: the CPU search orders ties by trie node (creation
#: order), the batched one arbitrarily (topk), so either hypothesis may come first
TIE = 1e-9

CHARS = "abc '"
UNIGRAMS = list(CHARS)
BIGRAMS = [*CHARS, "ab", "c ", " a", "ca", "bc", "'a", "abc"]  # with a trigram and merges


def random_batch(gen: torch.Generator, lengths: list[int], v: int, scale: float = 3.0) -> torch.Tensor:
    """``(B, T, V)`` log-probs; frames past each length are NaN (they must be ignored)."""
    lp = (scale * torch.randn(len(lengths), max(lengths), v, generator=gen)).log_softmax(-1)
    for b, n in enumerate(lengths):
        lp[b, n:] = math.nan
    return lp


def assert_same_hyps(got: list[BeamHypothesis], ref: list[BeamHypothesis], tol: float = 1e-6) -> None:
    """The same best text (or a tie: within TIE of the reference's best) and, where the
    reference's n-best scores have no ties, the same n-best list of (text, score)."""
    assert got and ref
    if got[0].text != ref[0].text:
        assert abs(got[0].score - ref[0].score) < TIE, (got[0], ref[0])
    else:
        assert got[0].score == pytest.approx(ref[0].score, abs=tol)
    scores = [h.score for h in ref]
    if all(a - b > TIE for a, b in zip(scores, scores[1:], strict=False)):
        assert [h.text for h in got] == [h.text for h in ref]
        assert [h.score for h in got] == pytest.approx(scores, abs=tol)
        assert [h.am_score for h in got] == pytest.approx([h.am_score for h in ref], abs=tol)
        assert [h.lm_score for h in got] == pytest.approx([h.lm_score for h in ref], abs=tol)
        assert [h.words for h in got] == [h.words for h in ref]


# ------------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("chars,grams,t", CASES)
def test_equals_brute_force(chars, grams, t):
    """Exhaustive settings: the n-best strings and their log-probabilities are those of the
    enumeration over all V^T paths, for every utterance of a batch of unequal lengths."""
    gen = torch.Generator().manual_seed(len(grams) * 10 + t)
    lengths = [t, t - 1, t - 2]
    lp = random_batch(gen, lengths, len(grams) + 1, scale=2.0)
    dec = BatchedPrefixBeamSearch(chars, grams, **EXHAUSTIVE, beam_size=(len(grams) + 1) ** t)
    got = dec.decode(lp, torch.tensor(lengths), nbest=8)
    for b, n in enumerate(lengths):
        exact = sorted(brute_force(lp[b, :n], grams).items(), key=lambda kv: -kv[1])[:8]
        assert [h.text for h in got[b]] == [s for s, _ in exact]
        assert [h.am_score for h in got[b]] == pytest.approx([p for _, p in exact], abs=1e-5)
        assert all(h.lm_score == 0.0 for h in got[b])


def test_merging_same_string_from_different_grams():
    """'ab' spelled by [a, b] and by [ab] is one hypothesis whose probability is the sum."""
    q = torch.tensor([[0.0, 0.4, 0.0, 0.6], [0.6, 0.0, 0.4, 0.0]]).clamp_min(1e-30).log()
    # "ab": (a,b) 0.16 + (ab,_) 0.36 + (ab,b) is "abb"  ->  0.52
    best = BatchedPrefixBeamSearch("ab", ["a", "b", "ab"], beam_size=50).decode(q[None])[0][0]
    assert best.text == "ab" and math.exp(best.am_score) == pytest.approx(0.52)


def test_more_than_255_symbols_and_minus_inf():
    """300 characters and frames that are -inf almost everywhere: exact against brute force."""
    chars = CJK[:300]
    lp = torch.full((2, 301), -math.inf)
    lp[0, [0, 14, 270]] = torch.tensor([0.0, 1.6, 1.2])
    lp[1, [0, 15, 271]] = torch.tensor([0.2, 1.5, 1.4])
    lp = lp.log_softmax(-1)
    got = BatchedPrefixBeamSearch(chars, **EXHAUSTIVE, beam_size=100).decode(lp[None], nbest=3)[0]
    exact = sorted(brute_force(lp, chars).items(), key=lambda kv: -kv[1])[:3]
    assert [h.text for h in got] == [s for s, _ in exact]
    assert [h.am_score for h in got] == pytest.approx([p for _, p in exact], abs=1e-5)


# ------------------------------------------------------------------------------- CPU search
PRUNING = [
    dict(**EXHAUSTIVE),
    dict(),  # GramDecoding's defaults: token_threshold 12, beam_threshold 30
    dict(token_beam=3, token_threshold=4.0, beam_threshold=8.0),
    dict(token_beam=2, token_threshold=2.0, beam_threshold=3.0),
    dict(token_beam=4, word_score=1.5),
]


@pytest.mark.parametrize("grams", [UNIGRAMS, BIGRAMS], ids=["unigrams", "bigrams"])
@pytest.mark.parametrize("beam_size", [1, 4, 16])
def test_equals_cpu_search(grams, beam_size):
    """Same choices as PrefixBeamSearch under every pruning option, utterance by utterance, on
    a batch of unequal lengths (0 and 1 frame included)."""
    gen = torch.Generator().manual_seed(beam_size * 100 + len(grams))
    lengths = [30, 17, 1, 0, 25, 30]
    for kw in PRUNING:
        lp = random_batch(gen, lengths, len(grams) + 1)
        got = BatchedPrefixBeamSearch(CHARS, grams, beam_size=beam_size, **kw).decode(lp, lengths, nbest=4)
        cpu = PrefixBeamSearch(CHARS, grams, beam_size=beam_size, backend=CPU_BACKEND, **kw)
        for b, n in enumerate(lengths):
            assert_same_hyps(got[b], cpu.decode(lp[b, :n], nbest=4))


def test_ties_between_tokens_go_to_the_lower_id():
    """token_beam with equal log-probs keeps the lower ids, as the CPU search does."""
    lp = torch.tensor([[0.1, 0.2, 0.2, 0.2, 0.3]]).log()
    for tb in (1, 2):
        got = BatchedPrefixBeamSearch("abcd", beam_size=8, token_beam=tb).decode(lp[None], nbest=8)[0]
        ref = PrefixBeamSearch("abcd", beam_size=8, token_beam=tb, backend=CPU_BACKEND).decode(lp, nbest=8)
        assert sorted((h.text, round(h.score, 9)) for h in got) == sorted((h.text, round(h.score, 9)) for h in ref)


def test_padding_frames_are_ignored():
    """An utterance decodes the same alone and in a padded batch (NaN in its padding)."""
    gen = torch.Generator().manual_seed(1)
    lengths = [20, 9, 14]
    lp = random_batch(gen, lengths, len(BIGRAMS) + 1)
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, beam_size=8, token_beam=5)
    batch = dec.decode(lp, lengths, nbest=8)
    for b, n in enumerate(lengths):
        alone = dec.decode(lp[b : b + 1, :n], nbest=8)[0]
        assert batch[b] == alone


def test_float32():
    """float32 state (the GPU's natural type) agrees with the CPU search to 1e-4 here."""
    gen = torch.Generator().manual_seed(2)
    lengths = [30, 22]
    lp = random_batch(gen, lengths, len(BIGRAMS) + 1)
    got = BatchedPrefixBeamSearch(CHARS, BIGRAMS, beam_size=8, dtype=torch.float32).decode(lp, lengths, nbest=4)
    cpu = PrefixBeamSearch(CHARS, BIGRAMS, beam_size=8, backend=CPU_BACKEND)
    for b, n in enumerate(lengths):
        assert_same_hyps(got[b], cpu.decode(lp[b, :n], nbest=4), tol=1e-4)


# ------------------------------------------------------------------------------- the frame step
def test_step_is_one_sync_free_graph():
    """The frame step is captured whole (torch.compile fullgraph: a branch on a tensor value
    fails to trace) and the graph holds no host sync or data-dependent shape (the backend
    above). The controls show that such code is caught. (Tracing only, no code generation:
    inductor takes ~35 s on 2 CPU cores.)"""
    for bad in (lambda x: x * x.sum().item(), lambda x: x[x > 0.5], lambda x: x + 1 if x.sum() > 0 else x):
        torch._dynamo.reset()
        with pytest.raises(Exception, match="host sync|data-dependent|Data-dependent"):
            torch.compile(bad, fullgraph=True, backend=sync_free_backend)(torch.rand(3))
    torch._dynamo.reset()
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, beam_size=4, token_beam=3, word_score=0.5)
    step = torch.compile(dec._step, fullgraph=True, backend=sync_free_backend)
    gen = torch.Generator().manual_seed(4)
    lp = random_batch(gen, [6, 3], len(BIGRAMS) + 1).double()
    eager = traced = dec.initial_state(2)
    for t in range(6):
        active = torch.tensor([6, 3]) > t
        eager, traced = dec._step(eager, lp[:, t], active), step(traced, lp[:, t], active)
        for a, b in zip(eager, traced, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------- API
def test_from_config_and_defaults():
    vocab = CharVocab("ab ")
    gs = GramSet(vocab, ["a", "b", " ", "ab", "b "])
    dec = BatchedPrefixBeamSearch.from_config(gs, GramDecoding(method="beam", beam_size=3, token_beam=2))
    assert (dec.grams, dec.beam_size, dec.token_beam) == (["a", "b", " ", "ab", "b "], 3, 2)
    ctc = BatchedPrefixBeamSearch.from_config(vocab, GramDecoding())
    assert ctc.grams == ["a", "b", " "]
    d = GramDecoding()
    assert (ctc.beam_size, ctc.token_beam, ctc.token_threshold, ctc.beam_threshold, ctc.word_score) == (
        d.beam_size, d.token_beam, d.token_threshold, d.beam_threshold, d.word_score)
    with pytest.raises(ValueError, match="does not support a word LM yet"):
        BatchedPrefixBeamSearch.from_config(gs, GramDecoding(lm="x.arpa"))
    with pytest.raises(ValueError, match="does not support a lexicon"):
        BatchedPrefixBeamSearch.from_config(gs, GramDecoding(lexicon="words.txt"))


def test_bad_arguments_and_empty_inputs():
    with pytest.raises(ValueError, match="gram 'z'"):
        BatchedPrefixBeamSearch("ab", ["a", "b", "z"])
    with pytest.raises(ValueError, match="given twice"):
        BatchedPrefixBeamSearch("ab", ["a", "b", "a"])
    dec = BatchedPrefixBeamSearch("ab")
    with pytest.raises(ValueError, match=r"must be \(B, T, 3\)"):
        dec.decode(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="lengths"):
        dec.decode(torch.zeros(2, 4, 3), [4, 5])
    assert dec.decode(torch.zeros(0, 4, 3)) == []
    got = dec.decode(torch.zeros(2, 0, 3), [0, 0], nbest=3)
    assert [[h.text for h in hs] for hs in got] == [[""], [""]]
    assert dec.decode_batch(torch.tensor([[[0.1, 0.8, 0.1]]]).log(), [1]) == ["a"]


# ------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_cpu(dtype):
    """The same hypotheses on the GPU as on the CPU (B = 32 utterances of unequal lengths)."""
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 60, (32,), generator=gen).tolist()
    lp = random_batch(gen, lengths, len(BIGRAMS) + 1)
    kw = dict(beam_size=16, token_beam=6, dtype=dtype)
    cpu = BatchedPrefixBeamSearch(CHARS, BIGRAMS, **kw).decode(lp, lengths, nbest=4)
    gpu = BatchedPrefixBeamSearch(CHARS, BIGRAMS, device="cuda", **kw).decode(lp.cuda(), lengths, nbest=4)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(gpu, cpu, strict=True):
        assert_same_hyps(a, b, tol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_step_never_syncs_and_captures_in_a_graph():
    """The frame step runs with CUDA's sync debug mode set to error, and a step captured in a
    CUDA graph and replayed gives the eager step's state."""
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, device="cuda", beam_size=8, token_beam=4, word_score=0.3)
    gen = torch.Generator().manual_seed(6)
    lp = random_batch(gen, [12, 7, 12], len(BIGRAMS) + 1).double().cuda()
    lens = torch.tensor([12, 7, 12], device="cuda")
    state = dec.initial_state(3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(5):
            state = dec._step(state, lp[:, t], lens > t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    static_in = [x.clone() for x in state]
    frame, active = lp[:, 5].clone(), lens > 5
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs ask
        dec._step(type(state)(*static_in), frame, active)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = dec._step(type(state)(*static_in), frame, active)
    for t in range(5, 12):
        for dst, src in zip(static_in, state, strict=True):
            dst.copy_(src)
        frame.copy_(lp[:, t])
        active.copy_(lens > t)
        graph.replay()
        state = dec._step(state, lp[:, t], lens > t)
        for a, b in zip(static_out, state, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
