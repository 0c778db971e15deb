"""KenLM n-gram tooling: a hand-written ARPA scored through the kenlm module (fast), the build's
error messages, and (slow: builds lmplz on first use) ``speechlab lm ngram`` on a tiny
hand-checked corpus, its scores compared with ``kenlm.Model`` queries. Without the kenlm Python
module the tests that need it skip with the reason (the others still run)."""

from __future__ import annotations

import math
import shutil

import pytest

from speechlab.cli import main
from speechlab.decode.prefix_beam import KenLMScorer
from speechlab.lm import ngram


@pytest.fixture(scope="module")
def kenlm():
    """The kenlm module; skips the test with the reason when it cannot be imported."""
    return pytest.importorskip("kenlm", reason="the kenlm Python module is not installed "
                                               "(pip install kenlm)")


def test_character_tokens_and_lines(tmp_path):
    assert ngram.char_tokens("ab c") == "a b | c"
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio_filepath": "x.wav", "duration": 1, "text": "Hello, World!"}\n\n')
    assert ngram.read_lines(None, str(m), True, "word") == ["hello world"]
    assert ngram.read_lines(None, str(m), True, "char") == ["h e l l o | w o r l d"]
    m.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: malformed JSON"):
        ngram.read_lines(None, str(m), True, "word")
    m.write_text('{"text": "ok"}\n{"text": 1}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: no string 'text' field"):
        ngram.read_lines(None, str(m), True, "word")


def test_order_is_checked(tmp_path):
    with pytest.raises(ValueError, match="order must be 1..6"):
        ngram.train_ngram(["a b"], tmp_path / "m.arpa", order=7)


def test_missing_build_tool_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "cmake" else "/usr/bin/" + name)
    with pytest.raises(ngram.KenLMBuildError, match="missing cmake.*libboost-program-options-dev"):
        ngram._check_prerequisites()


def test_missing_boost_header_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(ngram, "INCLUDE_DIRS", [str(tmp_path)])
    with pytest.raises(ngram.KenLMBuildError, match="boost/program_options.hpp.*libboost-program-options-dev"):
        ngram._check_prerequisites()


def test_kenlm_bin_env_must_hold_the_programs(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHLAB_KENLM_BIN", str(tmp_path))
    with pytest.raises(ngram.KenLMBuildError, match="does not hold lmplz and build_binary"):
        ngram.kenlm_bin_dir()


def test_truncated_arpa_is_named(kenlm, tmp_path):
    bad = tmp_path / "cut.arpa"
    bad.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<unk>\n")
    with pytest.raises(ValueError, match=r"cut\.arpa: KenLM could not load it"):
        ngram.load_model(bad)


# ----------------------------------------------------------------------------- slow: lmplz
CORPUS = ["the cat sat", "the cat ran", "a dog sat", "the dog sat"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``speechlab lm ngram`` (ARPA and binary) on the tiny corpus; builds lmplz once."""
    tmp = tmp_path_factory.mktemp("lm")
    text = tmp / "corpus.txt"
    text.write_text("\n".join(CORPUS) + "\n")
    for name in ("m.arpa", "m.bin"):
        assert main(["lm", "ngram", "--text", str(text), "--order", "2", "--out", str(tmp / name)]) == 0
    return tmp


@pytest.mark.slow
def test_lm_ngram_counts_by_hand(trained):
    """The ARPA header counts what the corpus has: 6 words + <s>, </s>, <unk>; bigrams: the
    10 distinct pairs with sentence boundaries."""
    head = (trained / "m.arpa").read_text().split("\n\n")[0]
    assert "ngram 1=9" in head
    pairs = {p for s in CORPUS for p in zip(["<s>", *s.split()], [*s.split(), "</s>"], strict=True)}
    assert len(pairs) == 10 and f"ngram 2={len(pairs)}" in head


@pytest.mark.slow
def test_lm_ngram_scores_match_kenlm_queries(kenlm, trained):  # kenlm first: skip before lmplz builds
    """ARPA and binary score alike; our stepwise scorer adds up to kenlm.Model.score; every
    context's next-word distribution sums to one; seen sentences beat their scrambles."""
    arpa, binary = kenlm.Model(str(trained / "m.arpa")), kenlm.Model(str(trained / "m.bin"))
    scorer = KenLMScorer(trained / "m.bin")
    vocab = ["the", "cat", "sat", "ran", "a", "dog", "<unk>"]
    for sentence in [*CORPUS, "dog the cat", "a cat ran", "the zebra sat"]:
        assert arpa.score(sentence) == pytest.approx(binary.score(sentence), abs=1e-5)
        state, total = 0, 0.0
        for w in sentence.split():
            s, state = scorer.score(state, w)
            total += s
        total += scorer.score(state, None)[0]
        assert total == pytest.approx(arpa.score(sentence) * math.log(10), abs=1e-4)
    for context in ([], ["the"], ["cat"], ["dog"]):
        state = kenlm.State()
        arpa.BeginSentenceWrite(state)
        for w in context:
            out = kenlm.State()
            arpa.BaseScore(state, w, out)
            state = out
        mass = sum(10 ** arpa.BaseScore(state, w, kenlm.State()) for w in [*vocab, "</s>"])
        assert mass == pytest.approx(1.0, abs=1e-3), context
    assert arpa.score("the cat sat") > arpa.score("sat cat the")
