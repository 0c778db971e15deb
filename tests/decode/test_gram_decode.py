"""Gram-CTC decoding against independent oracles: greedy collapse vs hand-computed paths; prefix
beam search vs brute-force enumeration of every frame path (summed per spelled string), with
and without a KenLM scored by ``kenlm.Model.score`` on whole sentences; C++ vs Python search."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
import torch

from speechlab.decode.prefix_beam import KenLMScorer, PrefixBeamSearch, native_available
from speechlab.functional.gram_decode import (
    collapse_gram_path,
    gram_emission_counts,
    gram_greedy_decode,
    gram_greedy_ids,
)

BACKENDS = ["reference"] + (["native"] if native_available() else [])


def one_hot_path(path: list[int], v: int) -> torch.Tensor:
    """``(T, V)`` log-probs whose argmax is ``path`` (0.9 on the path, the rest shared)."""
    p = torch.full((len(path), v), 0.1 / (v - 1))
    p[torch.arange(len(path)), torch.tensor(path)] = 0.9
    return p.log()


# ------------------------------------------------------------------------------- greedy
def test_greedy_collapse_hand_computed():
    sym = ["<blank>", "a", "b", " ", "ab", "b "]
    # ab ab _ ab a b "b " "b " _ b  ->  ab | ab | a | b | "b " | b  =  "abababb b"
    path = [4, 4, 0, 4, 1, 2, 5, 5, 0, 2]
    assert collapse_gram_path(path, sym) == "abababb b"
    lp = torch.stack([one_hot_path(path, 6), one_hot_path([1, 1, 0, 1, 2, 2, 0, 0, 0, 0], 6)])
    lens = torch.tensor([10, 6])
    assert gram_greedy_ids(lp, lens) == [[4, 4, 1, 2, 5, 2], [1, 1, 2]]
    assert gram_greedy_decode(lp, lens, sym) == ["abababb b", "aab"]
    # the second utterance is cut at 3 frames: a a(merged) _ -> "a"
    assert gram_greedy_decode(lp, torch.tensor([10, 3]), sym)[1] == "a"
    counts = gram_emission_counts(lp, lens)
    assert counts.tolist() == [0, 3, 3, 0, 2, 1]


def test_greedy_checks_symbols():
    with pytest.raises(ValueError, match="3 outputs but 2 symbols"):
        gram_greedy_decode(torch.zeros(1, 2, 3), torch.tensor([2]), ["", "a"])


# ------------------------------------------------------------------------------- brute force
#: no token or beam pruning (the defaults, GramDecoding's, prune): what brute force is compared with
EXHAUSTIVE = {"token_threshold": math.inf, "beam_threshold": math.inf}

def brute_force(lp: torch.Tensor, grams: list[str]) -> dict[str, float]:
    """ln P(string) summed over every frame path (exact)."""
    probs = lp.double().exp().tolist()
    t, v = lp.shape
    acc: dict[str, float] = defaultdict(float)
    for path in itertools.product(range(v), repeat=t):
        p = 1.0
        for i, k in enumerate(path):
            p *= probs[i][k]
        acc[collapse_gram_path(path, ["", *grams])] += p
    return {s: math.log(p) for s, p in acc.items() if p > 0}


CASES = [
    ("ab", ["a", "b", "ab", "ba", "aa"], 5),  # grams that overlap and repeat
    ("ab ", ["a", "b", " ", "ab", "b ", " a"], 4),  # grams across a word boundary
    ("ab", ["a", "b"], 6),  # plain CTC
    ("abc", ["a", "b", "c", "abc", "bc"], 4),  # a trigram
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chars,grams,t", CASES)
def test_prefix_beam_search_equals_brute_force(backend, chars, grams, t):
    """With a beam wide enough to keep every prefix, the search is exact: the n-best strings and
    their log-probabilities are those of the enumeration over all V^T paths."""
    gen = torch.Generator().manual_seed(len(grams) * 10 + t)
    for _ in range(3):
        lp = (2 * torch.randn(t, len(grams) + 1, generator=gen)).log_softmax(-1)
        exact = sorted(brute_force(lp, grams).items(), key=lambda kv: -kv[1])
        dec = PrefixBeamSearch(chars, grams, **EXHAUSTIVE, beam_size=10_000, backend=backend)
        got = dec.decode(lp, nbest=8)
        assert [h.text for h in got] == [s for s, _ in exact[:8]]
        for h, (_, ref) in zip(got, exact, strict=False):
            assert h.am_score == pytest.approx(ref, abs=1e-5)
            assert h.lm_score == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_merging_same_string_from_different_grams(backend):
    """'ab' spelled by [a, b] and by [ab] is one hypothesis whose probability is the sum."""
    p = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]]).clamp_min(1e-30).log()
    # frame 0: a or ab (0.5 each); frame 1: b  ->  "ab" (a,b) = 0.5, "abb" (ab,b) = 0.5
    got = PrefixBeamSearch("ab", ["a", "b", "ab"], beam_size=50, backend=backend).decode(p, nbest=3)
    assert {h.text: round(math.exp(h.am_score), 6) for h in got[:2]} == {"ab": 0.5, "abb": 0.5}
    q = torch.tensor([[0.0, 0.4, 0.0, 0.6], [0.6, 0.0, 0.4, 0.0]]).clamp_min(1e-30).log()
    # "ab": (a,b) 0.16 + (ab,_) 0.36 + (ab,b) is "abb"  ->  0.52
    best = PrefixBeamSearch("ab", ["a", "b", "ab"], beam_size=50, backend=backend).decode(q)[0]
    assert best.text == "ab" and math.exp(best.am_score) == pytest.approx(0.52)


@pytest.mark.skipif(not native_available(), reason="speechlab._decode not built")
def test_native_equals_python_with_pruning():
    """The C++ search and the Python one make the same choices under every pruning option."""
    gen = torch.Generator().manual_seed(3)
    chars = "abc '"
    grams = list(chars) + ["ab", "c ", " a", "ca", "abc"]
    for beam, token_beam, thr, bthr in [(4, 0, math.inf, math.inf), (3, 3, 4.0, 8.0), (8, 2, 2.0, 3.0)]:
        for _ in range(5):
            lp = (3 * torch.randn(30, len(grams) + 1, generator=gen)).log_softmax(-1)
            kw = dict(beam_size=beam, token_beam=token_beam, token_threshold=thr, beam_threshold=bthr)
            a = PrefixBeamSearch(chars, grams, backend="native", **kw).decode(lp, nbest=4)
            b = PrefixBeamSearch(chars, grams, backend="reference", **kw).decode(lp, nbest=4)
            assert [h.text for h in a] == [h.text for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


@pytest.mark.skipif(not native_available(), reason="speechlab._decode not built")
def test_native_equals_python_with_lm_lexicon_and_pruning(arpa):
    """Same choices with a word LM, a lexicon (look-ahead, finite and -inf unk) and pruning."""
    lm = KenLMScorer(arpa)
    chars, grams = "ab ", ["a", "b", " ", "ab", "ba", "b "]
    gen = torch.Generator().manual_seed(5)
    for unk in (-2.0, -math.inf):
        for _ in range(4):
            lp = (2 * torch.randn(20, len(grams) + 1, generator=gen)).log_softmax(-1)
            kw = dict(beam_size=4, token_beam=3, beam_threshold=10.0, lm=lm, lm_weight=0.8,
                      word_score=0.5, lexicon=["ab", "ba", "a"], unk_score=unk)
            a = PrefixBeamSearch(chars, grams, backend="native", **kw).decode(lp, nbest=3)
            b = PrefixBeamSearch(chars, grams, backend="reference", **kw).decode(lp, nbest=3)
            assert [h.text for h in a] == [h.text for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


# ------------------------------------------------------------------------ large character sets
#: CJK ideographs: a character set of thousands of symbols (ids beyond 8 bits)
CJK = [chr(0x4E00 + i) for i in range(5000)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_than_255_symbols_keeps_prefixes_apart(backend):
    """Issue 13: with 300 characters the C++ trie keyed a child (node << 8) | char, so the child
    271 of one prefix was the child 15 of another and their probabilities were summed (native
    gave [14, 15] at -0.67). The n-best list is the brute-force enumeration of all 301^2 paths;
    the best is also hand-computed: ln(p0(14) p1(15)), one path only."""
    chars = CJK[:300]
    lp = torch.full((2, 301), -math.inf)
    lp[0, [0, 14, 270]] = torch.tensor([0.0, 1.6, 1.2])
    lp[1, [0, 15, 271]] = torch.tensor([0.2, 1.5, 1.4])
    lp = lp.log_softmax(-1)
    got = PrefixBeamSearch(chars, **EXHAUSTIVE, beam_size=100, backend=backend).decode(lp, nbest=3)
    exact = sorted(brute_force(lp, chars).items(), key=lambda kv: -kv[1])[:3]
    assert [h.text for h in got] == [s for s, _ in exact]
    assert [h.am_score for h in got] == pytest.approx([p for _, p in exact], abs=1e-5)
    ids = [[chars.index(c) + 1 for c in h.text] for h in got]
    assert ids == [[14, 15], [14, 271], [270, 15]]
    hand = math.log(math.exp(1.6) / (1 + math.exp(1.6) + math.exp(1.2))
                    * math.exp(1.5) / (math.exp(0.2) + math.exp(1.5) + math.exp(1.4)))
    assert got[0].am_score == pytest.approx(hand, abs=1e-5)


@pytest.mark.skipif(not native_available(), reason="speechlab._decode not built")
def test_native_equals_python_on_5000_characters():
    """A character set of 5,000 symbols (+ space), grams of 2-7 characters over it (a 7-gram's
    key in base 5,002 does not fit 64 bits) and a lexicon of words over it: the C++ and Python
    searches give the same n-best lists and scores. Peaky random frames put the best tokens
    anywhere in the 5,000 ids, so many (prefix, char) pairs share their low bits."""
    gen = torch.Generator().manual_seed(13)
    chars = [*CJK, " "]
    pick = torch.randint(0, len(CJK), (400,), generator=gen).tolist()
    grams = list(dict.fromkeys(
        [*chars, *("".join(CJK[i] for i in pick[k:k + n]) for n, k0 in ((2, 0), (3, 200), (7, 300))
                   for k in range(k0, k0 + 60, n))]))
    lexicon = ["".join(CJK[i] for i in pick[k:k + 2]) for k in range(0, 200, 2)]
    # even frames favour the lexicon's words that are grams, odd ones the space, so that
    # hypotheses hold words of the lexicon and words outside it
    favoured = [grams.index(w) + 1 for w in lexicon if w in grams]
    space = grams.index(" ") + 1
    for boost, kw in ((0.0, dict(beam_size=16, token_beam=40)),
                      (20.0, dict(beam_size=8, token_beam=20, lexicon=lexicon, unk_score=-2.0))):
        for _ in range(3):
            lp = 5 * torch.randn(25, len(grams) + 1, generator=gen)
            lp[::2, favoured] += boost
            lp[1::2, space] += boost
            lp = lp.log_softmax(-1)
            a = PrefixBeamSearch(chars, grams, backend="native", **kw).decode(lp, nbest=5)
            b = PrefixBeamSearch(chars, grams, backend="reference", **kw).decode(lp, nbest=5)
            assert [h.text for h in a] == [h.text for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
            assert max(len(h.text) for h in a) >= 10  # long prefixes: many trie nodes


# ------------------------------------------------------------------------------- with an LM
ARPA = """
\\data\\
ngram 1=6
ngram 2=5

\\1-grams:
-1.0\t<unk>\t0
0\t<s>\t-0.30103
-0.69897\t</s>\t0
-0.39794\tab\t-0.1
-0.52288\tba\t-0.2
-0.69897\ta\t-0.15

\\2-grams:
-0.1549\t<s> ab
-0.3010\tab ba
-0.2218\tba </s>
-0.5229\tab </s>
-0.6990\ta </s>

\\end\\
"""


@pytest.fixture()
def arpa(tmp_path):
    path = tmp_path / "tiny.arpa"
    path.write_text(ARPA.lstrip())
    return path


def test_kenlm_scorer_hand_computed(arpa):
    """Stepwise scores follow the ARPA by hand: P(ab|<s>) from the bigram, P(a|ab) by backoff."""
    lm = KenLMScorer(arpa)
    s, st = lm.score(0, "ab")
    assert s == pytest.approx(-0.1549 * math.log(10), abs=1e-4)
    s2, st2 = lm.score(st, "a")  # no bigram "ab a": backoff(ab) + P(a)
    assert s2 == pytest.approx((-0.1 - 0.69897) * math.log(10), abs=1e-4)
    s3, _ = lm.score(st2, None)  # P(</s> | a) from the bigram
    assert s3 == pytest.approx(-0.6990 * math.log(10), abs=1e-4)
    assert lm.sentence_score("ab a") == pytest.approx(s + s2 + s3, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lm_weight,word_score", [(0.5, 0.0), (2.0, 1.0), (1.0, -2.0)])
def test_beam_search_with_lm_equals_brute_force(arpa, backend, lm_weight, word_score):
    """Exact search with an LM: the winner maximizes ln P_am(s) + α ln P_LM(s) + β words(s) over
    all strings of the brute-force enumeration, the LM scored on whole sentences by kenlm."""
    lm = KenLMScorer(arpa)
    chars, grams = "ab ", ["a", "b", " ", "ab", "ba", "b "]
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        lp = (2 * torch.randn(4, len(grams) + 1, generator=gen)).log_softmax(-1)
        total = {}
        for s, am in brute_force(lp, grams).items():
            words = len(s.split())
            total[s] = am + lm_weight * lm.sentence_score(" ".join(s.split())) + word_score * words
        ref = max(total, key=total.get)
        dec = PrefixBeamSearch(chars, grams, **EXHAUSTIVE, beam_size=100_000, lm=lm, lm_weight=lm_weight,
                               word_score=word_score, backend=backend)
        best = dec.decode(lp)[0]
        assert best.text == ref
        assert best.score == pytest.approx(total[ref], abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unk_score", [-3.0, -math.inf])
def test_lexicon_equals_brute_force(arpa, backend, unk_score):
    """With a lexicon, every word outside it costs unk_score once (-inf: excluded); exact search
    equals the brute-force optimum of that total."""
    lm = KenLMScorer(arpa)
    chars, grams = "ab ", ["a", "b", " ", "ab", "ba", "b "]
    lexicon = ["ab", "ba", "a"]
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):
        lp = (2 * torch.randn(4, len(grams) + 1, generator=gen)).log_softmax(-1)
        total = {}
        for s, am in brute_force(lp, grams).items():
            unknown = sum(w not in lexicon for w in s.split())
            penalty = unk_score * unknown if unknown else 0.0
            total[s] = am + 0.5 * lm.sentence_score(" ".join(s.split())) + penalty
        ref = max(total, key=total.get)
        dec = PrefixBeamSearch(chars, grams, **EXHAUSTIVE, beam_size=100_000, lm=lm, lm_weight=0.5,
                               lexicon=lexicon, unk_score=unk_score, backend=backend)
        best = dec.decode(lp)[0]
        assert best.text == ref
        assert best.score == pytest.approx(total[ref], abs=1e-4)


def test_arpa_words(arpa):
    from speechlab.decode.prefix_beam import arpa_words

    assert arpa_words(arpa) == ["ab", "ba", "a"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_character_lm_mode(tmp_path, backend):
    """Character LM: every character is a token, the space is '|'."""
    path = tmp_path / "char.arpa"
    path.write_text("\\data\\\nngram 1=6\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n"
                    "0\t<s>\t-0.2\n-0.5\t</s>\t0\n-0.3\ta\t-0.1\n-0.9\tb\t0\n-0.6\t|\t0\n\n"
                    "\\2-grams:\n-0.1\t<s> b\n-0.4\ta |\n\n\\end\\\n")
    lm = KenLMScorer(path, unit="char")
    lp = torch.tensor([[0.5, 0.2, 0.2, 0.1]] * 3).log()
    dec = PrefixBeamSearch("ab ", None, **EXHAUSTIVE, beam_size=10_000, lm=lm, lm_weight=1.0, word_score=0.5,
                           backend=backend)
    got = dec.decode(lp, nbest=20)
    for h in got:
        ref = lm.sentence_score(h.text) + 0.5 * h.text.count(" ")
        assert h.lm_score == pytest.approx(ref, abs=1e-4), h.text
        assert h.words == h.text.count(" ")


def test_not_a_kenlm_file(tmp_path):
    bad = tmp_path / "model.arpa"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match=r"model\.arpa: not a KenLM model"):
        KenLMScorer(bad)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        KenLMScorer(tmp_path / "missing.bin")


def test_bad_arguments():
    with pytest.raises(ValueError, match="gram 'z'"):
        PrefixBeamSearch("ab", ["a", "b", "z"])
    with pytest.raises(ValueError, match=r"must be \(T, 3\)"):
        PrefixBeamSearch("ab").decode(torch.zeros(4, 5))


def test_empty_input_gives_empty_hypothesis():
    for backend in BACKENDS:
        h = PrefixBeamSearch("ab", backend=backend).decode(torch.zeros(0, 3))
        assert [x.text for x in h] == [""]


# ------------------------------------------------------------------------------- flashlight
def test_unigram_beam_vs_flashlight_ctc_decoder():
    """On unigrams without an LM, against torchaudio's flashlight lexicon-free decoder at equal
    beam: the probability of each transcript is computed independently by torch's CTC loss.
    the score ours reports is a lower bound of it (paths pruned from the beam are missing), and
    its transcripts are at least as probable as flashlight's (which inserts word separators at
    the ends and merges differently)."""
    pytest.importorskip("flashlight.lib.text.decoder")
    import torch.nn.functional as F
    from torchaudio.models.decoder import ctc_decoder

    chars = list("abc ")
    tokens = ["-", *["|" if c == " " else c for c in chars]]
    fl = ctc_decoder(lexicon=None, tokens=tokens, lm=None, beam_size=16, blank_token="-",
                     sil_token="|", log_add=True)
    ours = PrefixBeamSearch(chars, beam_size=16)

    def log_p(lp: torch.Tensor, text: str) -> float:
        if not text:
            return float(lp[:, 0].sum())
        y = torch.tensor([[chars.index(c) + 1 for c in text]])
        return -float(F.ctc_loss(lp[:, None], y, [lp.shape[0]], [len(text)], reduction="sum"))

    gen = torch.Generator().manual_seed(0)
    better = 0
    for _ in range(30):
        lp = (3 * torch.randn(25, len(tokens), generator=gen)).log_softmax(-1).double()
        hyp = fl(lp[None].float().contiguous())[0][0]
        fl_text = "".join(tokens[i] for i in hyp.tokens.tolist() if i != 0).replace("|", " ")
        fl_best = max(log_p(lp, fl_text), log_p(lp, fl_text.strip()))
        best = ours.decode(lp.float())[0]
        exact = log_p(lp, best.text)
        assert best.am_score <= exact + 1e-4
        better += exact >= fl_best - 1e-4
    assert better >= 28
