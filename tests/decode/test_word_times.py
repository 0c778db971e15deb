"""Word timestamps of the batched prefix beam search (``decode(..., timestamps=True)``): the
pure text → words mapping :func:`word_times` on hand-written cases, exact frames on peaky
emissions whose best path is known (grams inside a word, across a space, starting a word),
and on random emissions the invariants: one entry per word of the text, frames ordered and
within the utterance, texts and scores unchanged by asking for the times."""

from __future__ import annotations

import pytest
import torch

from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from speechlab.decode.prefix_beam import BeamHypothesis, word_times

BLANK = "-"


@pytest.mark.parametrize(("grams", "expected"), [
    ([], []),
    ([("a", 0), ("b", 2), (" ", 4), ("c", 5), ("d", 7)], [("ab", 0, 2), ("cd", 5, 7)]),
    ([("a", 0), ("b ", 2), ("c", 3)], [("ab", 0, 2), ("c", 3, 3)]),  # "b " ends "ab"
    ([("a", 0), (" c", 2), ("d", 3)], [("a", 0, 0), ("cd", 2, 3)]),  # " c" starts "cd"
    ([("a", 0), ("b c", 4), ("d", 6)], [("ab", 0, 4), ("cd", 4, 6)]),  # one gram, both words
    ([("ab", 1), (" ", 2), ("ab", 3), (" ", 5), ("ab", 8)], [("ab", 1, 1), ("ab", 3, 3), ("ab", 8, 8)]),
    ([(" ", 0), (" a", 1), ("  ", 3), ("b", 4), (" ", 6)], [("a", 1, 1), ("b", 4, 4)]),  # outer spaces
    ([(" ", 0), ("  ", 3)], []),
])
def test_word_times_by_hand(grams, expected):
    assert word_times(grams) == expected
    assert [w for w, _, _ in word_times(grams)] == "".join(g for g, _ in grams).split()


def peaky(grams: list[str], frames: str | list[str]) -> torch.Tensor:
    """``(1, T, V)`` log-probs with 0.9 on each frame's symbol (``-``: blank), the rest spread."""
    symbols = [BLANK, *grams]
    lp = torch.full((len(frames), len(symbols)), 0.1 / (len(symbols) - 1))
    for t, sym in enumerate(frames):
        lp[t, symbols.index(sym)] = 0.9
    return lp.log()[None]


@pytest.mark.parametrize(("grams", "frames", "text", "expected"), [
    (list("abcd "), "a-bb c-d-", "ab cd", [("ab", 0, 2), ("cd", 5, 7)]),
    (list("abcd ") + ["b "], ["a", "-", "b ", "c", "c", "d"], "ab cd", [("ab", 0, 2), ("cd", 3, 5)]),
    (list("abcd ") + [" c"], ["a", "b", "b", " c", "-", "d"], "ab cd", [("ab", 0, 1), ("cd", 3, 5)]),
    (list("abcd ") + ["b c"], ["-", "a", "b c", "d"], "ab cd", [("ab", 1, 2), ("cd", 2, 3)]),
    (list("ab "), "a-b a b", "ab a b", [("ab", 0, 2), ("a", 4, 4), ("b", 6, 6)]),
])
def test_peaky_emissions_give_the_known_frames(grams, frames, text, expected):
    dec = BatchedPrefixBeamSearch(chars=sorted(set("".join(grams))), grams=grams, beam_size=8)
    best = dec.decode(peaky(grams, frames), timestamps=True)[0][0]
    assert best.text == text
    assert best.word_times == expected


def test_random_emissions_invariants_and_unchanged_hypotheses():
    chars = "ab '"
    grams = [*chars, "ab", "b ", " a", "a b", "'a"]
    torch.manual_seed(0)
    lp = torch.randn(4, 14, len(grams) + 1).mul(2.0).log_softmax(-1)
    lengths = [14, 9, 1, 0]
    for word_score in (0.0, 1.5):
        dec = BatchedPrefixBeamSearch(chars=chars, grams=grams, beam_size=6, word_score=word_score)
        plain = dec.decode(lp, lengths, nbest=6)
        timed = dec.decode(lp, lengths, nbest=6, timestamps=True)
        for hyps, with_times, length in zip(plain, timed, lengths, strict=True):
            assert [(h.text, h.score, h.am_score, h.lm_score, h.words) for h in hyps] == \
                [(h.text, h.score, h.am_score, h.lm_score, h.words) for h in with_times]
            assert all(h.word_times is None for h in hyps)
            for h in with_times:
                assert h.word_times is not None
                assert [w for w, _, _ in h.word_times] == h.text.split()
                flat = [f for _, a, z in h.word_times for f in (a, z)]
                assert flat == sorted(flat)
                assert all(0 <= f < length for f in flat)


def test_other_searches_leave_word_times_empty():
    assert BeamHypothesis("a", 0.0, 0.0, 0.0, 1).word_times is None
