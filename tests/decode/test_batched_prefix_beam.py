"""The batched (torch) prefix beam search against independent oracles and the CPU search: the
brute-force enumeration of every frame path (exhaustive settings), PrefixBeamSearch (C++ when
built, else its Python reference) under every pruning option on batches of unequal lengths,
padding frames, the frame step traced whole by torch.compile, and CUDA against the CPU.

With a character LM (a hand-written 3-gram ARPA; slow: lmplz 6-grams): brute force with the LM
scored by kenlm on whole sentences, PrefixBeamSearch(lm_unit="char") with both backends, the
LM parts of merged candidates, the step with the LM traced sync-free, CUDA against the CPU."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechlab.data.grams import GramSet
from speechlab.data.sentences import generate_sentences
from speechlab.data.text import CharVocab
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch, BeamState
from speechlab.decode.prefix_beam import (
    BeamHypothesis,
    GramDecoding,
    KenLMScorer,
    PrefixBeamSearch,
    arpa_words,
    native_available,
)
from speechlab.lm import ngram
from speechlab.lm.tensor_ngram import TensorNgramLM
from tests.decode.test_gram_decode import BACKENDS, CASES, CJK, EXHAUSTIVE, brute_force
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


# ------------------------------------------------------------------------------- character LM
#: a character 3-gram by hand (space = |): backoffs, bigrams and trigrams across a space, </s>
#: after some contexts only; no "'" and no "c" context (CHARS' "'" is <unk>, "c" backs off)
CHAR_ARPA = """
\\data\\
ngram 1=7
ngram 2=10
ngram 3=5

\\1-grams:
-1.2\t<unk>\t0
-99\t<s>\t-0.5
-0.9\t</s>\t0
-0.6\ta\t-0.3
-0.7\tb\t-0.2
-0.9\tc\t-0.25
-0.8\t|\t-0.4

\\2-grams:
-0.3\t<s> a\t-0.1
-0.5\t<s> b
-0.4\ta b\t-0.2
-0.6\tb a
-0.35\tb |\t-0.15
-0.5\t| a
-0.45\tc |
-0.7\ta </s>
-0.3\t| </s>
-0.55\ta a

\\3-grams:
-0.2\t<s> a b
-0.15\ta b |
-0.25\tb | a
-0.1\t<s> a a
-0.3\ta b a

\\end\\
"""
#: (α, β) pairs: a light LM, a heavy one with a word bonus, a word penalty
LM_WEIGHTS = [(0.5, 0.0), (2.0, 1.0), (1.0, -2.0)]


@pytest.fixture()
def char_arpa(tmp_path):
    path = tmp_path / "char3.arpa"
    path.write_text(CHAR_ARPA.lstrip())
    return path


def kenlm_scorers(unit: str):
    """A getter of kenlm scorers in ``unit`` mode by path, each loaded once; skips the test with
    the reason when the kenlm module cannot be imported (the GPU machine lacks it)."""
    pytest.importorskip("kenlm", reason="the kenlm Python module is not installed (pip install kenlm)")
    cache: dict[str, KenLMScorer] = {}

    def get(path) -> KenLMScorer:
        if str(path) not in cache:
            cache[str(path)] = KenLMScorer(path, unit=unit)
        return cache[str(path)]
    return get


@pytest.fixture(scope="module")
def kenlm_char():
    """kenlm char-mode scorers by path (loaded once per module), the oracle of the LM tests;
    skips the test with the reason when the kenlm module cannot be imported (the GPU machine
    lacks it)."""
    return kenlm_scorers("char")


def char_lm_total(lm: KenLMScorer, text: str, alpha: float, beta: float) -> float:
    """The LM part of ``text`` as the CPU search defines it: ``α·ln P(chars + </s>) + β·spaces``,
    the sentence scored whole by kenlm."""
    return alpha * lm.sentence_score(text) + beta * text.count(" ")


def assert_same_with_lm(got: list[BeamHypothesis], ref: list[BeamHypothesis], tol: float = 1e-4) -> float:
    """The same best text (no tie allowance: with an LM ties are not met here) with total, am
    and LM scores and words within ``tol``, and the n-best as :func:`assert_same_hyps`; returns
    the largest difference of the best hypothesis' scores."""
    assert got[0].text == ref[0].text, (got[0], ref[0])
    diff = max(abs(got[0].score - ref[0].score), abs(got[0].am_score - ref[0].am_score),
               abs(got[0].lm_score - ref[0].lm_score))
    assert diff < tol, (got[0], ref[0])
    assert got[0].words == ref[0].words
    assert_same_hyps(got, ref, tol=tol)
    return diff


@pytest.mark.parametrize("lm_weight,word_score", LM_WEIGHTS)
@pytest.mark.parametrize("chars,grams,t", CASES)
def test_with_char_lm_equals_brute_force(char_arpa, kenlm_char, chars, grams, t, lm_weight, word_score):
    """Exhaustive settings with the character LM: the n-best strings are those of the brute-force
    enumeration ranked by ln P_am(s) + α ln P_LM(s) + β spaces(s), the LM scored on whole
    sentences by kenlm (every hypothesis' am and LM parts checked), for a batch of unequal
    lengths."""
    lm = kenlm_char(char_arpa)
    gen = torch.Generator().manual_seed(len(grams) * 10 + t + 1)
    lengths = [t, t - 1, t - 2]
    lp = random_batch(gen, lengths, len(grams) + 1, scale=2.0)
    dec = BatchedPrefixBeamSearch(chars, grams, **EXHAUSTIVE, beam_size=(len(grams) + 1) ** t,
                                  lm=char_arpa, lm_weight=lm_weight, word_score=word_score)
    got = dec.decode(lp, torch.tensor(lengths), nbest=8)
    for b, n in enumerate(lengths):
        am = brute_force(lp[b, :n], grams)
        total = {s: a + char_lm_total(lm, s, lm_weight, word_score) for s, a in am.items()}
        exact = sorted(total.items(), key=lambda kv: -kv[1])[:8]
        assert [h.text for h in got[b]] == [s for s, _ in exact]
        assert [h.score for h in got[b]] == pytest.approx([p for _, p in exact], abs=1e-4)
        for h in got[b]:
            assert h.am_score == pytest.approx(am[h.text], abs=1e-5)
            assert h.lm_score == pytest.approx(char_lm_total(lm, h.text, lm_weight, word_score), abs=1e-4)
            assert h.words == h.text.count(" ")


#: pruning with the LM (the ranking that pruning sees includes the LM part)
LM_PRUNING = [
    dict(**EXHAUSTIVE),
    dict(),  # GramDecoding's defaults
    dict(token_beam=3, token_threshold=4.0, beam_threshold=8.0),
    dict(token_beam=2, token_threshold=2.0, beam_threshold=3.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grams", [UNIGRAMS, BIGRAMS], ids=["unigrams", "bigrams"])
@pytest.mark.parametrize("beam_size", [4, 16])
def test_with_char_lm_equals_cpu_search(char_arpa, kenlm_char, backend, grams, beam_size):
    """Same choices as PrefixBeamSearch(lm=<the same ARPA>, lm_unit="char") for several α/β
    under every pruning option, utterance by utterance, on a batch of unequal lengths (0 and 1
    frame included): the same best text, total / am / LM scores within 1e-4."""
    gen = torch.Generator().manual_seed(beam_size * 100 + len(grams) + 7)
    lengths = [30, 17, 1, 0, 25] if backend == "native" else [20, 1, 0, 12]
    lm = kenlm_char(char_arpa)
    tlm = TensorNgramLM.from_arpa(char_arpa, vocab=["<blank>", *CHARS], dtype=torch.float64)
    worst = 0.0
    for lm_weight, word_score in LM_WEIGHTS:
        for kw in LM_PRUNING if backend == "native" else LM_PRUNING[1:3]:
            lp = random_batch(gen, lengths, len(grams) + 1)
            dec = BatchedPrefixBeamSearch(CHARS, grams, beam_size=beam_size, lm=tlm, lm_weight=lm_weight,
                                          word_score=word_score, **kw)
            got = dec.decode(lp, lengths, nbest=4)
            cpu = PrefixBeamSearch(CHARS, grams, beam_size=beam_size, lm=lm, lm_weight=lm_weight,
                                   word_score=word_score, backend=backend, **kw)
            for b, n in enumerate(lengths):
                worst = max(worst, assert_same_with_lm(got[b], cpu.decode(lp[b, :n], nbest=4)))
    print(f"max |batched - PrefixBeamSearch({backend})| of the best's scores: {worst:.2e}")


def test_char_lm_from_a_path_an_object_and_a_config(char_arpa):
    """The LM as an ARPA path, as a TensorNgramLM with its own token ids (no vocabulary; moved
    and cast by the search), and through from_config(lm_unit="char") give the same hypotheses."""
    vocab = CharVocab(CHARS)
    gs = GramSet(vocab, BIGRAMS)
    gen = torch.Generator().manual_seed(9)
    lengths = [25, 14]
    lp = random_batch(gen, lengths, len(gs))
    kw = dict(beam_size=8, token_beam=4, lm_weight=1.2, word_score=0.4)
    by_path = BatchedPrefixBeamSearch(CHARS, gs.grams, lm=char_arpa, **kw).decode(lp, lengths, nbest=4)
    own_ids = TensorNgramLM.from_arpa(char_arpa)  # float32 tables, the LM's own token ids
    by_object = BatchedPrefixBeamSearch(CHARS, gs.grams, lm=own_ids, **kw).decode(lp, lengths, nbest=4)
    config = GramDecoding(method="beam", beam_size=8, token_beam=4, lm=str(char_arpa), lm_unit="char",
                          lm_weight=1.2, word_score=0.4)
    dec = BatchedPrefixBeamSearch.from_config(gs, config)
    assert dec.lm is not None and dec.lm.dtype == torch.float64
    by_config = dec.decode(lp, lengths, nbest=4)
    for a, b, c in zip(by_path, by_object, by_config, strict=True):
        assert a == c
        assert_same_hyps(b, a, tol=1e-4)
    with pytest.raises(ValueError, match="lexicon with a word LM only"):
        BatchedPrefixBeamSearch.from_config(gs, GramDecoding(lm=str(char_arpa), lm_unit="char", lexicon="lm"))
    with pytest.raises(ValueError, match="lexicon with a word LM only"):
        BatchedPrefixBeamSearch(CHARS, lm=char_arpa, lexicon=["ab"])
    with pytest.raises(ValueError, match="lm_unit must be 'char' or 'word'"):
        BatchedPrefixBeamSearch(CHARS, lm=char_arpa, lm_unit="gram")
    with pytest.raises(ValueError, match="no token for the character 'c'"):
        BatchedPrefixBeamSearch(CHARS, lm=TensorNgramLM.from_arpa(char_arpa, vocab=["<blank>", "a", "b"]))


# ------------------------------------------------------------------------------- the word LM
#: a word bigram LM over CHARS' words (with <unk>); "ab", "c", "abc" share prefixes, "'a" has
#: the apostrophe, and every other spelled word is OOV (scored as <unk>)
WORD_ARPA = """
\\data\\
ngram 1=9
ngram 2=8

\\1-grams:
-1.0\t<unk>\t-0.2
-1.5\t<s>\t-0.4
-0.9\t</s>
-0.7\ta\t-0.3
-0.8\tab\t-0.2
-1.1\tc\t-0.25
-1.2\tba\t-0.1
-1.3\tabc
-1.6\t'a\t-0.15

\\2-grams:
-0.2\t<s> a
-0.35\t<s> ab
-0.3\ta ab
-0.25\tab c
-0.4\tc </s>
-0.5\tba a
-0.45\t<unk> c
-0.6\t'a ba

\\end\\
"""
#: a trigram LM over the same words without <unk> (KenLM substitutes log10 prob -100)
WORD_TRIGRAM_ARPA = """
\\data\\
ngram 1=7
ngram 2=4
ngram 3=2

\\1-grams:
-1.5\t<s>\t-0.3
-0.9\t</s>
-0.7\ta\t-0.2
-0.8\tab\t-0.25
-1.1\tc\t-0.1
-1.2\tba
-1.3\tabc

\\2-grams:
-0.3\t<s> a\t-0.1
-0.4\ta ab\t-0.15
-0.2\tab c
-0.5\tc a

\\3-grams:
-0.1\t<s> a ab
-0.15\ta ab c

\\end\\
"""
#: texts the emissions spell (plus noise): LM words, OOV words (bb, cab, 'c), leading,
#: trailing and repeated spaces, a partial last word
WORD_TEXTS = ["a ab c", "ab c ba a", "abc 'a ba", " c cab ab", "bb a  c ", "'c ab abc"]
#: (α, β): β ≠ 0 both ways
WORD_LM_WEIGHTS = [(0.5, 0.0), (2.0, 1.0), (1.0, -2.0), (1.5, 0.7)]


@pytest.fixture()
def word_arpa(tmp_path):
    path = tmp_path / "word2.arpa"
    path.write_text(WORD_ARPA.lstrip())
    return path


@pytest.fixture(scope="module")
def kenlm_word():
    """kenlm word-mode scorers by path (loaded once per module), for the C++ search."""
    return kenlm_scorers("word")


def lm_kwargs(kind: str | None, char_arpa, word_arpa, lm_weight: float) -> dict:
    """The LM arguments of BatchedPrefixBeamSearch for ``kind``: None, "char", "word" or
    "word_lexicon" (with a lexicon)."""
    if kind is None:
        return {}
    if kind == "char":
        return dict(lm=char_arpa, lm_weight=lm_weight)
    lexicon = dict(lexicon=["a", "ab", "c", "cab"], unk_score=-2.0) if kind == "word_lexicon" else {}
    return dict(lm=word_arpa, lm_unit="word", lm_weight=lm_weight, **lexicon)


@pytest.mark.parametrize("arpa", ["bigram", "trigram_no_unk"])
@pytest.mark.parametrize("grams", [UNIGRAMS, BIGRAMS], ids=["unigrams", "bigrams"])
@pytest.mark.parametrize("beam_size", [1, 4, 8])
def test_with_word_lm_equals_cpu_search(tmp_path, kenlm_word, arpa, grams, beam_size):
    """The word LM (lm_unit="word"): the same choices as PrefixBeamSearch(lm=<the same ARPA>,
    lm_unit="word") — a word scored when a space completes it (also a space inside a gram:
    "c ", " a"), the last partial word and </s> at the end, β per word, OOV words as <unk> —
    for several α/β and pruning options, on noisy emissions spelling texts of LM and OOV words
    and on random ones, a batch of unequal lengths (0 and 1 frame included): the same best
    text, total / am / LM scores within 1e-4 and the same word count."""
    path = tmp_path / f"word_{arpa}.arpa"
    path.write_text((WORD_ARPA if arpa == "bigram" else WORD_TRIGRAM_ARPA).lstrip())
    lm = kenlm_word(path)
    tlm = TensorNgramLM.from_arpa(path, dtype=torch.float64)
    gen = torch.Generator().manual_seed(beam_size * 100 + len(grams) + (arpa == "bigram"))
    worst, spelled_best = 0.0, 0
    for lm_weight, word_score in WORD_LM_WEIGHTS:
        for kw in LM_PRUNING[1:3] + [dict(**EXHAUSTIVE)]:
            spelled, lengths = spelled_emissions(gen, WORD_TEXTS, grams, boost=5.0, noise=1.0)
            t = spelled.shape[1]  # and random emissions of 1, 0 and t frames
            lp = torch.cat([spelled, random_batch(gen, [1, 0, t], len(grams) + 1)])
            lengths = lengths + [1, 0, t]
            dec = BatchedPrefixBeamSearch(CHARS, grams, beam_size=beam_size, lm=tlm, lm_unit="word",
                                          lm_weight=lm_weight, word_score=word_score, **kw)
            got = dec.decode(lp, lengths, nbest=4)
            cpu = PrefixBeamSearch(CHARS, grams, beam_size=beam_size, lm=lm, lm_weight=lm_weight,
                                   word_score=word_score, **kw)
            for b, n in enumerate(lengths):
                ref = cpu.decode(lp[b, :n], nbest=4)
                worst = max(worst, assert_same_with_lm(got[b], ref))
                spelled_best += b < len(WORD_TEXTS) and ref[0].text == WORD_TEXTS[b]
    assert spelled_best > 0  # the emissions do spell the texts (LM and OOV words) at times
    print(f"max |batched - PrefixBeamSearch| of the best's scores (word LM): {worst:.2e}")


def test_word_lm_scores_and_config(word_arpa, kenlm_word):
    """Every n-best hypothesis' LM part is α·ln P(words + </s>) + β·words with the sentence
    scored whole by kenlm (OOV words as <unk>); from_config(lm_unit="word") loads the ARPA with
    the LM's own ids and gives the same hypotheses; unsupported() accepts word LMs and a
    lexicon with one (not a lexicon without a word LM); decoding.search auto picks the batched
    search for a word LM on a GPU (the C++ one on the CPU), search batched on either."""
    from speechlab.decode import uses_batched_search

    lm = kenlm_word(word_arpa)
    vocab = CharVocab(CHARS)
    gs = GramSet(vocab, BIGRAMS)
    gen = torch.Generator().manual_seed(21)
    lp, lengths = spelled_emissions(gen, WORD_TEXTS, BIGRAMS, boost=3.0, noise=1.5)
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, beam_size=8, lm=word_arpa, lm_unit="word",
                                  lm_weight=1.3, word_score=0.6)
    hyps = dec.decode(lp, lengths, nbest=8)
    for hs in hyps:
        for h in hs:
            words = h.text.split()
            assert h.words == len(words)
            ref = 1.3 * lm.sentence_score(" ".join(words)) + 0.6 * len(words)
            assert h.lm_score == pytest.approx(ref, abs=1e-6)
    config = GramDecoding(method="beam", beam_size=8, lm=str(word_arpa), lm_unit="word",
                          lm_weight=1.3, word_score=0.6)
    assert BatchedPrefixBeamSearch.unsupported(config) is None
    assert uses_batched_search(config, "cuda") and not uses_batched_search(config, "cpu")  # auto
    batched = dataclasses.replace(config, search="batched")
    assert uses_batched_search(batched, "cuda") and uses_batched_search(batched, "cpu")
    binary = word_arpa.parent / "word2.bin"  # a KenLM binary (its header): the C++ search's
    binary.write_bytes(b"mmap lm http://kheafield.com/code" + bytes(64))
    assert "binary" in (BatchedPrefixBeamSearch.unsupported(GramDecoding(lm=str(binary))) or "")
    with_lexicon = GramDecoding(method="beam", lm=str(word_arpa), lm_unit="word", lexicon="lm")
    assert BatchedPrefixBeamSearch.unsupported(with_lexicon) is None
    assert uses_batched_search(with_lexicon, "cuda")
    assert uses_batched_search(dataclasses.replace(with_lexicon, search="batched"), "cpu")
    lex = BatchedPrefixBeamSearch.from_config(gs, with_lexicon)
    assert lex.lexicon == sorted(arpa_words(word_arpa))
    for bad in (GramDecoding(lexicon="lm"), GramDecoding(lm=str(word_arpa), lm_unit="char", lexicon="lm")):
        assert "word LM only" in (BatchedPrefixBeamSearch.unsupported(bad) or "")
        assert not uses_batched_search(bad, "cuda")
    by_config = BatchedPrefixBeamSearch.from_config(gs, config)
    assert by_config.word_lm and by_config.lm is not None and by_config.lm.dtype == torch.float64
    assert by_config.decode(lp, lengths, nbest=8) == hyps


#: lexicons: the LM's words (decoding.lexicon: lm), and a word list with words the LM lacks
#: ("bb", "cab": <unk> to the LM) and without some of its words ("ba", "abc", "'a")
LEXICONS = {"lm": None, "list": ["a", "ab", "bb", "cab", "c", "abca"]}


@pytest.mark.parametrize("lexicon", ["lm", "list"])
@pytest.mark.parametrize("unk_score", [-math.inf, -3.0, 1.0], ids=["strict", "unk-3", "unk+1"])
@pytest.mark.parametrize("grams", [UNIGRAMS, BIGRAMS], ids=["unigrams", "bigrams"])
def test_with_word_lm_and_lexicon_equals_cpu_search(word_arpa, kenlm_word, lexicon, unk_score, grams):
    """The lexicon (with the word LM): the same choices as PrefixBeamSearch with the same
    lexicon and unk_score — a word that leaves the lexicon's prefixes pays unk_score once, one
    that ends (a space or the end) inside them but is no word pays it then, -inf keeps only
    lexicon words, and the look-ahead (α·max unigram ln P of the words a partial word can
    become) ranks partial words — for beams 1/4/8 and several α/β: the same best text and
    scores within 1e-4; an utterance whose every hypothesis ends outside a strict lexicon is
    -inf in both, and both return the hypotheses in the order the search ranked them after the
    last frame (the same best text: a real test set had such utterances decode differently
    when the C++ search ordered -inf ties by trie node)."""
    words = arpa_words(word_arpa) if lexicon == "lm" else LEXICONS[lexicon]
    lm = kenlm_word(word_arpa)
    tlm = TensorNgramLM.from_arpa(word_arpa, dtype=torch.float64)
    gen = torch.Generator().manual_seed(len(grams) + int(unk_score if math.isfinite(unk_score) else 7))
    worst, checked, dead = 0.0, 0, 0
    for beam_size in (1, 4, 8):
        for lm_weight, word_score in WORD_LM_WEIGHTS[1:]:
            spelled, lengths = spelled_emissions(gen, WORD_TEXTS, grams, boost=5.0, noise=1.0)
            t = spelled.shape[1]
            lp = torch.cat([spelled, random_batch(gen, [1, 0, t], len(grams) + 1)])
            lengths = lengths + [1, 0, t]
            dec = BatchedPrefixBeamSearch(CHARS, grams, beam_size=beam_size, lm=tlm, lm_unit="word",
                                          lm_weight=lm_weight, word_score=word_score, lexicon=words,
                                          unk_score=unk_score)
            got = dec.decode(lp, lengths, nbest=4)
            cpu = PrefixBeamSearch(CHARS, grams, beam_size=beam_size, lm=lm, lm_weight=lm_weight,
                                   word_score=word_score, lexicon=words, unk_score=unk_score)
            for b, n in enumerate(lengths):
                ref = cpu.decode(lp[b, :n], nbest=4)
                if not ref or ref[0].score == -math.inf:
                    assert not got[b] or got[b][0].score == -math.inf, (got[b], ref)
                    assert [h.text for h in got[b][:1]] == [h.text for h in ref[:1]], (got[b], ref)
                    dead += bool(ref)
                    continue
                worst = max(worst, assert_same_with_lm(got[b], ref))
                checked += 1
                if unk_score == -math.inf:
                    assert all(w in words for w in got[b][0].text.split())
    assert checked > 50
    print(f"max |batched - PrefixBeamSearch| of the best's scores (word LM + lexicon): {worst:.2e}; "
          f"{dead} utterances with every hypothesis -inf")


@pytest.mark.parametrize("grams", [UNIGRAMS, BIGRAMS], ids=["unigrams", "bigrams"])
def test_every_hypothesis_off_a_strict_lexicon_keeps_the_search_order(word_arpa, kenlm_word, grams):
    """Emissions that end inside a word the strict lexicon lacks ("ab c" + "ab": a prefix of
    "abc", no word of ["a", "c", "abc"]): every final hypothesis is -inf; both searches then
    return the hypotheses in the order the search ranked them after the last frame, so the
    same texts, n-best order included (the C++ search had ordered such ties by trie node)."""
    words = ["a", "c", "abc"]
    tlm = TensorNgramLM.from_arpa(word_arpa, dtype=torch.float64)
    gen = torch.Generator().manual_seed(21)
    dead = 0
    for noise in (0.5, 1.0, 1.5):
        lp, lengths = spelled_emissions(gen, ["abc c ab", "c abc ab", "a ab"], grams, boost=6.0, noise=noise)
        for beam_size in (2, 4):
            kw = dict(beam_size=beam_size, lm_weight=1.0, word_score=0.5, lexicon=words, unk_score=-math.inf)
            got = BatchedPrefixBeamSearch(CHARS, grams, lm=tlm, lm_unit="word", **kw).decode(lp, lengths, nbest=3)
            cpu = PrefixBeamSearch(CHARS, grams, lm=kenlm_word(word_arpa), **kw)
            for b, n in enumerate(lengths):
                ref = cpu.decode(lp[b, :n], nbest=3)
                assert [h.text for h in got[b]] == [h.text for h in ref], (got[b], ref)
                dead += bool(ref) and ref[0].score == -math.inf
    assert dead >= 2, dead  # the case under test did occur


def test_merged_candidates_have_equal_lm_parts(char_arpa):
    """The LM part and state are functions of the string: at every frame, the candidates that
    spell one string (equal hash pair: stays and extensions from different beams and grams, e.g.
    "ab" + "c" and "a" + "bc") have the same LM state and, to rounding, the same LM part, so the
    segment may take any member's. Also every kept hypothesis' LM part is the LM's score of its
    string."""
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, beam_size=16, token_beam=6, lm=char_arpa,
                                  lm_weight=1.5, word_score=0.7)
    assert dec.lm is not None
    gen = torch.Generator().manual_seed(10)
    lengths = [24, 16, 24]
    lp = random_batch(gen, lengths, len(BIGRAMS) + 1, scale=1.0)
    state = dec.initial_state(len(lengths))
    merged_groups = 0
    for t in range(max(lengths)):
        active = torch.tensor(lengths) > t
        frame = torch.where(active[:, None], lp[:, t], 0.0).double()
        _, cand = dec._token_candidates(frame)
        keys = dec._candidate_keys(state, cand)
        part, lm_state = dec._candidate_lm(state, cand)
        for b in range(len(lengths)):
            groups: dict[int, list[int]] = {}
            for i, key in enumerate(keys[b].tolist()):
                groups.setdefault(key, []).append(i)
            for members in groups.values():
                if len(members) > 1:
                    merged_groups += any(i >= dec.beam_size for i in members)
                    assert len(set(lm_state[b, members].tolist())) == 1
                    spread = part[b, members].max() - part[b, members].min()
                    assert spread < 1e-9
        state = dec._step(state, frame, active)
    assert merged_groups > 100  # merges across grams and beams did happen
    hyps = dec.decode(lp, lengths, nbest=16)
    for hs in hyps:
        for h in hs:
            ref = 1.5 * dec.lm.sentence_score([ngram.char_tokens(c) for c in h.text]) + 0.7 * h.text.count(" ")
            assert h.lm_score == pytest.approx(ref, abs=1e-9)


# ------------------------------------------------------------------------------- the frame step
@pytest.mark.parametrize("with_lm", [None, "char", "word", "word_lexicon"],
                         ids=["no_lm", "char_lm", "word_lm", "word_lm_lexicon"])
def test_step_is_one_sync_free_graph(char_arpa, word_arpa, with_lm):
    """The frame step (with the character LM too) is captured whole (torch.compile fullgraph: a
    branch on a tensor value fails to trace) and the graph holds no host sync or data-dependent
    shape (the backend above). The controls show that such code is caught. (Tracing only, no
    code generation: inductor takes ~35 s on 2 CPU cores.)"""
    for bad in (lambda x: x * x.sum().item(), lambda x: x[x > 0.5], lambda x: x + 1 if x.sum() > 0 else x):
        torch._dynamo.reset()
        with pytest.raises(Exception, match="host sync|data-dependent|Data-dependent"):
            torch.compile(bad, fullgraph=True, backend=sync_free_backend)(torch.rand(3))
    torch._dynamo.reset()
    lm = lm_kwargs(with_lm, char_arpa, word_arpa, lm_weight=1.3)
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, beam_size=4, token_beam=3, word_score=0.5, **lm)
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


@pytest.mark.parametrize("with_lm", [None, "char", "word", "word_lexicon"],
                         ids=["no_lm", "char_lm", "word_lm", "word_lm_lexicon"])
@pytest.mark.parametrize("grams,token_beam", [(UNIGRAMS, 0), (BIGRAMS, 0), (BIGRAMS, 4)],
                         ids=["unigrams", "bigrams", "bigrams-token_beam"])
def test_chunked_loop_equals_frame_loop(char_arpa, word_arpa, grams, token_beam, with_lm):
    """The chunked loop that decode() captures as a CUDA graph, run eagerly (on the CPU here):
    chunks of S = 8 frames from a device start index over kept static buffers (log-probs,
    lengths, state, back-pointers written at device-indexed rows), equals the per-frame loop
    bit for bit — state, back-pointers, n-best with word times — for ragged lengths, T not a
    multiple of S, and batches of other sizes and lengths in between (buffers reused, grown,
    reset)."""
    lm = lm_kwargs(with_lm, char_arpa, word_arpa, lm_weight=1.2)
    dec = BatchedPrefixBeamSearch(CHARS, grams, beam_size=8, token_beam=token_beam, word_score=0.5,
                                  graph_chunk=8, **lm)
    gen = torch.Generator().manual_seed(12)
    for lengths in ([37, 5, 0, 1, 29, 37], [12, 3], [37, 5, 0, 1, 29, 20], [90, 9, 2, 3, 1, 5], [8, 1]):
        lp = random_batch(gen, lengths, len(grams) + 1).double()
        plain = dec._run_frames(lp, lengths)
        chunked = dec._run_chunked(lp, lengths, graph=False)
        for name, a, b in zip(BeamState._fields, plain[0], chunked[0], strict=True):
            if name not in ("parent", "emit"):  # of the last frame: padding frames in chunks
                assert torch.equal(a, b), name
        assert torch.equal(plain[1], chunked[1]) and torch.equal(plain[2], chunked[2])
        assert dec._finish(*chunked, nbest=4, timestamps=True) == dec._finish(*plain, nbest=4, timestamps=True)
    # kept per batch size: frames room for B = 6 grown from 40 to 96 (the 90 frames batch)
    assert {key[0]: loop.lp.shape[0] for key, loop in dec._loops.items()} == {6: 96, 2: 16}
    assert dec.graph_captures == 0  # nothing captured on the CPU
    with pytest.raises(ValueError, match="graph_chunk"):
        BatchedPrefixBeamSearch(CHARS, graph_chunk=0)


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
    with pytest.raises(ValueError, match="lexicon with a word LM only"):
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
@pytest.mark.parametrize("with_lm", [None, "char", "word", "word_lexicon"],
                         ids=["no_lm", "char_lm", "word_lm", "word_lm_lexicon"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_cpu(char_arpa, word_arpa, dtype, with_lm):
    """The same hypotheses on the GPU as on the CPU (B = 32 utterances of unequal lengths),
    without an LM, with the character LM, the word LM and the word LM with a lexicon (the CPU
    batched search equals the C++ search: the tests above)."""
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 60, (32,), generator=gen).tolist()
    lp = random_batch(gen, lengths, len(BIGRAMS) + 1)
    kw = dict(beam_size=16, token_beam=6, dtype=dtype, word_score=0.6,
              **lm_kwargs(with_lm, char_arpa, word_arpa, lm_weight=0.9))
    cpu = BatchedPrefixBeamSearch(CHARS, BIGRAMS, **kw).decode(lp, lengths, nbest=4)
    gpu = BatchedPrefixBeamSearch(CHARS, BIGRAMS, device="cuda", **kw).decode(lp.cuda(), lengths, nbest=4)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(gpu, cpu, strict=True):
        assert_same_hyps(a, b, tol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("with_lm", [None, "char", "word", "word_lexicon"],
                         ids=["no_lm", "char_lm", "word_lm", "word_lm_lexicon"])
def test_cuda_step_never_syncs_and_captures_in_a_graph(char_arpa, word_arpa, with_lm):
    """The frame step (with the character or word LM too) runs with CUDA's sync debug mode set
    to error, and a step captured in a CUDA graph and replayed gives the eager step's state."""
    lm = lm_kwargs(with_lm, char_arpa, word_arpa, lm_weight=1.1)
    dec = BatchedPrefixBeamSearch(CHARS, BIGRAMS, device="cuda", beam_size=8, token_beam=4, word_score=0.3,
                                  **lm)
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


def assert_same_decode(got: list[list[BeamHypothesis]], ref: list[list[BeamHypothesis]], tol: float) -> None:
    """The same n-best texts, word counts and word times per utterance; scores within ``tol``."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert [(h.text, h.words, h.word_times) for h in g] == [(h.text, h.words, h.word_times) for h in r]
        for field in ("score", "am_score", "lm_score"):
            assert [getattr(h, field) for h in g] == pytest.approx([getattr(h, field) for h in r], abs=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("with_lm", [None, "char", "word", "word_lexicon"],
                         ids=["no_lm", "char_lm", "word_lm", "word_lm_lexicon"])
@pytest.mark.parametrize("grams,token_beam", [(UNIGRAMS, 0), (BIGRAMS, 0), (BIGRAMS, 4)],
                         ids=["unigrams", "bigrams", "bigrams-token_beam"])
def test_cuda_graph_decode_equals_eager(char_arpa, word_arpa, grams, token_beam, with_lm):
    """decode() on the GPU replaying CUDA graphs of S = 8 frames gives the per-frame loop's
    hypotheses (texts, n-best, word times; float64 scores within 1e-6) for ragged lengths, T
    not a multiple of S, and batches of other shapes in a row: one capture per batch size,
    none for a batch of a size already seen that fits the kept buffers, one more for a longer
    batch."""
    kw = dict(beam_size=8, token_beam=token_beam, word_score=0.4, graph_chunk=8, device="cuda",
              **lm_kwargs(with_lm, char_arpa, word_arpa, lm_weight=0.9))
    graphed = BatchedPrefixBeamSearch(CHARS, grams, **kw)
    eager = BatchedPrefixBeamSearch(CHARS, grams, cuda_graph=False, **kw)
    gen = torch.Generator().manual_seed(13)
    batches = [([37, 5, 0, 1, 29, 37], 1), ([12, 3, 16], 2), ([37, 5, 0, 1, 29, 20], 2),
               ([30, 30, 2, 9, 1, 30], 2), ([12, 3, 16], 2), ([90, 9, 2, 3, 1, 5], 3)]
    for lengths, captures in batches:
        lp = random_batch(gen, lengths, len(grams) + 1).cuda()
        got = graphed.decode(lp, lengths, nbest=4, timestamps=True)
        assert graphed.graph_error is None and graphed.graph_captures == captures, lengths
        assert_same_decode(got, eager.decode(lp, lengths, nbest=4, timestamps=True), tol=1e-6)
        assert_same_decode(graphed.decode(lp, lengths, nbest=4, timestamps=True, cuda_graph=False), got, tol=1e-6)
    assert eager.graph_captures == 0 and graphed.graph_captures == 3


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_graph_of_the_compiled_step():
    """compile=True: the inductor-compiled frame step captured in the CUDA graph gives the eager
    per-frame loop's texts and n-best (float64 scores within 1e-6), also for a second batch of
    the same size (no second capture)."""
    torch._dynamo.reset()
    try:
        kw = dict(beam_size=4, token_beam=3, word_score=0.3, graph_chunk=8, device="cuda")
        compiled = BatchedPrefixBeamSearch(CHARS, BIGRAMS, compile=True, **kw)
        eager = BatchedPrefixBeamSearch(CHARS, BIGRAMS, cuda_graph=False, **kw)
        gen = torch.Generator().manual_seed(14)
        for lengths in ([21, 4, 13], [9, 9, 1]):
            lp = random_batch(gen, lengths, len(BIGRAMS) + 1).cuda()
            got = compiled.decode(lp, lengths, nbest=4, timestamps=True)
            assert compiled.graph_error is None and compiled.graph_captures == 1
            assert_same_decode(got, eager.decode(lp, lengths, nbest=4, timestamps=True), tol=1e-6)
    finally:
        torch._dynamo.reset()


#: a step that syncs with the host (.item()) cannot be captured: decode() warns and runs the
#: chunks eagerly, with the same results (in a subprocess: a failed capture may leave the CUDA
#: context unusable for later tests)
FAILED_CAPTURE = """
import warnings, torch
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from tests.decode.test_batched_prefix_beam import BIGRAMS, CHARS, assert_same_decode, random_batch
kw = dict(beam_size=4, token_beam=3, graph_chunk=8, device="cuda")
dec, eager = BatchedPrefixBeamSearch(CHARS, BIGRAMS, **kw), BatchedPrefixBeamSearch(CHARS, BIGRAMS, cuda_graph=False, **kw)
step = dec._step
dec._step = lambda s, f, a: step(s, f, a) if s.pb.sum().item() <= 0 else step(s, f, a)
lp = random_batch(torch.Generator().manual_seed(15), [20, 7], len(BIGRAMS) + 1).cuda()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = dec.decode(lp, [20, 7], nbest=4)
assert any("CUDA graph capture failed" in str(w.message) for w in caught), [str(w.message) for w in caught]
assert dec.graph_captures == 0 and dec.graph_error, dec.graph_error
assert_same_decode(got, eager.decode(lp, [20, 7], nbest=4), tol=1e-9)
assert_same_decode(dec.decode(lp, [20, 7], nbest=4), got, tol=1e-9)  # no second attempt
print("fallback ok:", dec.graph_error[:120])
"""


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_graph_capture_failure_falls_back():
    """A step that cannot be captured (a host sync): decode() warns, records why in
    ``graph_error`` and decodes that batch size eagerly, with the same results."""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", FAILED_CAPTURE], cwd=root, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             p for p in [str(root), os.environ.get("PYTHONPATH", "")] if p)})
    assert run.returncode == 0, run.stdout + run.stderr
    print(run.stdout.strip())


# ------------------------------------------------------------------------------- slow: lmplz
@pytest.fixture(scope="module")
def lmplz_char6(tmp_path_factory):
    """An lmplz character 6-gram (space written |) of 1,000 generated sentences, and held-out
    sentences; skips with the reason when lmplz cannot be built."""
    try:
        ngram.kenlm_bin_dir()
    except ngram.KenLMBuildError as e:
        pytest.skip(f"lmplz unavailable: {e}")
    train = [s.text for s in generate_sentences(1000, seed=0)]
    arpa = ngram.train_ngram([ngram.char_tokens(s) for s in train],
                             tmp_path_factory.mktemp("lm") / "char6.arpa", order=6)
    held = [s.text for s in generate_sentences(60, seed=5) if s.text not in set(train)]
    return arpa, held


def spelled_emissions(gen: torch.Generator, texts: list[str], grams: list[str], boost: float = 4.0,
                      noise: float = 2.0) -> tuple[torch.Tensor, list[int]]:
    """``(B, T, V)`` noisy log-probs that spell each text: its longest-match segmentation into
    ``grams``, each gram's frame boosted by ``boost`` and followed by a blank frame."""
    index = {g: i + 1 for i, g in enumerate(grams)}
    paths = []
    for text in texts:
        path, i = [], 0
        while i < len(text):
            g = next(text[i:i + m] for m in range(max(map(len, grams)), 0, -1) if text[i:i + m] in index)
            path += [index[g], 0]
            i += len(g)
        paths.append(path)
    lengths = [len(p) for p in paths]
    logits = noise * torch.randn(len(texts), max(lengths), len(grams) + 1, generator=gen)
    for b, path in enumerate(paths):
        logits[b, torch.arange(len(path)), torch.tensor(path)] += boost
        logits[b, len(path):] = math.nan
    return logits.log_softmax(-1), lengths


@pytest.mark.slow
@pytest.mark.parametrize("gram_set", ["unigrams", "grams"])
def test_lmplz_char_6gram_equals_cpu_search(lmplz_char6, kenlm_char, gram_set):
    """An lmplz character 6-gram over the 28 characters of CharVocab, on noisy emissions that
    spell held-out sentences (noisy enough that the LM decides: CER ~0.9 without it, ~0.2 with
    it), unigrams (CTC) and a gram set of frequent 2- and 3-grams: the same best text and
    scores within 1e-4 as PrefixBeamSearch(lm_unit="char") for several α/β and pruning
    settings."""
    arpa, held = lmplz_char6
    vocab = CharVocab()
    extra = ["th", "he", "in", "er", "an", "e ", " t", "s ", "the", "ing", " th"]
    grams = list(vocab.chars) + (extra if gram_set == "grams" else [])
    gen = torch.Generator().manual_seed(11)
    lm = kenlm_char(arpa)
    tlm = TensorNgramLM.from_arpa(arpa, vocab=vocab.tokens(range(len(vocab))), dtype=torch.float64)
    worst = 0.0
    for lm_weight, word_score in [(0.5, 0.0), (1.0, 1.5), (1.5, -1.0)]:
        for kw in (dict(beam_size=16), dict(beam_size=8, token_beam=6, beam_threshold=10.0)):
            lp, lengths = spelled_emissions(gen, held[:8], grams)
            dec = BatchedPrefixBeamSearch(vocab.chars, grams, lm=tlm, lm_weight=lm_weight,
                                          word_score=word_score, **kw)
            got = dec.decode(lp, lengths, nbest=4)
            cpu = PrefixBeamSearch(vocab.chars, grams, lm=lm, lm_weight=lm_weight, word_score=word_score,
                                   backend=CPU_BACKEND, **kw)
            for b, n in enumerate(lengths):
                worst = max(worst, assert_same_with_lm(got[b], cpu.decode(lp[b, :n], nbest=4)))
    print(f"lmplz char 6-gram ({tlm}), {gram_set}: max |batched - CPU| = {worst:.2e}")
