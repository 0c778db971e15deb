"""TensorNgramLM (speechlab/lm/tensor_ngram.py), the n-gram LM in torch tables, against the
kenlm module. Every token's ln P, matched n-gram length and next state (our state ids and
kenlm's states must correspond one to one), every </s> and every sentence total, with all
sentences scored in one batched query per position:

- a hand-written 3-gram ARPA (backoffs, explicit zero backoffs, a backoff with nothing extending
  it, a trigram whose suffix bigram is missing, <unk> as a context), on every sentence of up to
  4 tokens over its words and an OOV word; the same without <unk>; some values checked by hand;
- (slow: builds lmplz on first use) lmplz models of generated sentences: a word 3-gram and a
  character 6-gram queried through a CharVocab's ids, on held-out sentences with OOV tokens.

Also: the vocabulary mapping, broadcasting, malformed files, the query traced whole by
torch.compile without host sync, and CUDA against the CPU. Without the kenlm module (or lmplz)
the tests that need it skip with the reason."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from speechlab.data.sentences import generate_sentences
from speechlab.data.text import CharVocab
from speechlab.errors import InputError
from speechlab.lm import ngram
from speechlab.lm.tensor_ngram import LN10, TensorNgramLM
from tests.helpers import sync_free_backend

HAS_CUDA = torch.cuda.is_available()

#: 3-gram, every special case of the lookup: "b" has an explicit zero backoff but is extended
#: ("b c"), "d" has a backoff and nothing extends it (KenLM keeps it in the state), "a c" has an
#: explicit zero backoff and nothing extends it (not a state), "c a" a backoff and no trigram,
#: "<s> a d" lacks its suffix "a d" (SRILM-style pruning: KenLM inserts a blank), <unk> is
#: extended ("<unk> a")
HAND_ARPA = """
\\data\\
ngram 1=7
ngram 2=9
ngram 3=4

\\1-grams:
-1.5\t<unk>\t-0.1
-99\t<s>\t-0.6
-1.0\t</s>
-0.7\ta\t-0.4
-0.8\tb\t0
-0.9\tc\t-0.25
-1.2\td\t-0.3

\\2-grams:
-0.3\t<s> a\t-0.2
-0.5\t<s> b
-0.4\ta b\t-0.35
-0.6\ta c\t0
-0.2\tb c\t-0.15
-0.7\tb </s>
-0.45\tc a\t-0.05
-0.9\tc </s>
-0.8\t<unk> a

\\3-grams:
-0.1\t<s> a b
-0.15\ta b c
-0.05\t<s> a d
-0.2\tb c a

\\end\\
"""
HAND_WORDS = ["a", "b", "c", "d", "zebra"]  # zebra: OOV


@pytest.fixture(scope="module")
def kenlm():
    """The kenlm module; skips the test with the reason when it cannot be imported."""
    return pytest.importorskip("kenlm", reason="the kenlm Python module is not installed "
                                               "(pip install kenlm)")


@pytest.fixture
def hand_arpa(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text(HAND_ARPA.lstrip())
    return path


def without_unk(text: str) -> str:
    """HAND_ARPA without <unk> (KenLM then substitutes log10 prob -100)."""
    lines = [line for line in text.splitlines() if "<unk>" not in line]
    return "\n".join(lines).replace("ngram 1=7", "ngram 1=6").replace("ngram 2=9", "ngram 2=8")


def kenlm_reference(kenlm, model, sentence: list[str]) -> list[tuple[float, int, object]]:
    """Per token and the final </s>: (ln P, n-gram length, kenlm.State after it), from
    ``model.full_scores`` and a ``BaseScore`` walk."""
    state = kenlm.State()
    model.BeginSentenceWrite(state)
    out = []
    full = list(model.full_scores(" ".join(sentence), bos=True, eos=True))
    for (log10p, length, _), word in zip(full, [*sentence, "</s>"], strict=True):
        nxt = kenlm.State()
        model.BaseScore(state, word, nxt)
        out.append((log10p * LN10, length, nxt))
        state = nxt
    return out


def compare_with_kenlm(kenlm, lm: TensorNgramLM, model, sentences: list[list[str]],
                       ids: list[list[int]] | None = None, tol: float = 1e-4) -> float:
    """Score ``sentences`` (LM tokens, as kenlm takes them) batched — one ``full_score`` of all
    sentences per position, ``ids`` the token ids given to it (default the LM's) — and assert
    kenlm's per-token scores (within ``tol`` nats), n-gram lengths, sentence totals (within
    ``tol`` per token) and states (a one-to-one correspondence). Returns the largest per-token
    difference."""
    if ids is None:
        ids = [[lm.token_id(w) for w in s] for s in sentences]
    b, t_max = len(sentences), max(len(s) for s in sentences) + 1
    tokens = torch.zeros(b, t_max, dtype=torch.int64)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
    lengths = torch.tensor([len(s) for s in sentences])
    states = lm.bos_state(b)
    eos = torch.tensor(lm.eos)
    logp, length, state = [], [], []
    for t in range(t_max):
        out = lm.full_score(states, tokens[:, t].to(lm.device))
        end = lm.full_score(states, eos.to(lm.device), lm_ids=True)
        at_end = (lengths == t).to(lm.device)
        out = [torch.where(at_end, e, o) for o, e in zip(out, end, strict=True)]
        logp.append(out[0].double().cpu())
        length.append(out[2].cpu())
        state.append(out[1].cpu())
        states = out[1]
    logp, length, state = torch.stack(logp, 1), torch.stack(length, 1), torch.stack(state, 1)
    worst = 0.0
    ours_of: dict[object, int] = {}
    theirs_of: dict[int, object] = {}
    for i, s in enumerate(sentences):
        ref = kenlm_reference(kenlm, model, s)
        for t, (ref_logp, ref_len, ref_state) in enumerate(ref):
            diff = abs(float(logp[i, t]) - ref_logp)
            worst = max(worst, diff)
            assert diff <= tol, (s, t, float(logp[i, t]), ref_logp)
            assert int(length[i, t]) == ref_len, (s, t, int(length[i, t]), ref_len)
            ours = int(state[i, t])
            assert ours_of.setdefault(ref_state, ours) == ours, (s, t, lm.state_tokens(ours))
            assert theirs_of.setdefault(ours, ref_state) == ref_state, (s, t, lm.state_tokens(ours))
        total = float(logp[i, :len(s) + 1].sum())
        assert total == pytest.approx(model.score(" ".join(s), bos=True, eos=True) * LN10,
                                      abs=tol * (len(s) + 1)), s
    return worst


def all_sentences(words: list[str], max_len: int) -> list[list[str]]:
    return [list(s) for n in range(max_len + 1) for s in itertools.product(words, repeat=n)]


# ----------------------------------------------------------------------------- hand-written ARPA
def test_hand_arpa_by_hand(hand_arpa):
    """Values worked out from the ARPA text (no kenlm): the history, the token, log10 P, the
    matched n-gram's length and the context of the next state."""
    lm = TensorNgramLM.from_arpa(hand_arpa, dtype=torch.float64)
    assert (lm.order, lm.num_arcs) == (3, 7 + 9 + 4 + 1)  # + the blank "a d"
    cases = [
        ([], "a", -0.3, 2, ("<s>", "a")),
        (["a"], "b", -0.1, 3, ("a", "b")),                           # trigram
        (["a"], "d", -0.05, 3, ("d",)),                              # "a d" missing; d has a backoff
        (["zebra", "a"], "d", -0.4 - 1.2, 2, ("d",)),                # the blank "a d": bo(a) + P(d)
        (["a", "b"], "d", -0.35 + 0.0 - 1.2, 1, ("d",)),             # bo(a b) + bo(b) (zero) + P(d)
        (["b", "d"], "c", -0.3 - 0.9, 1, ("c",)),                    # bo(d) + P(c)
        (["a", "c"], "a", -0.45, 2, ("c", "a")),                     # "a c" is no state: from "c"
        (["b", "c", "a"], "</s>", -0.05 - 0.4 - 1.0, 1, ()),         # bo(c a) + bo(a) + P(</s>)
        ([], "zebra", -0.6 - 1.5, 1, ("<unk>",)),                    # OOV: <unk>, a context
        (["zebra"], "a", -0.8, 2, ("a",)),
        (["a", "b"], "zebra", -0.35 - 0.0 - 1.5, 1, ("<unk>",)),     # bo(a b) + bo(b) + P(<unk>)
    ]
    for history, token, log10p, length, context in cases:
        state = lm.bos_state()
        for w in history:
            state = lm.score(state, torch.tensor(lm.token_id(w)))[1]
        out = lm.full_score(state, torch.tensor(lm.token_id(token)))
        assert out.logp.item() == pytest.approx(log10p * LN10, abs=1e-12), (history, token)
        assert out.ngram_length.item() == length, (history, token)
        assert lm.state_tokens(out.state.item()) == context, (history, token)
    assert lm.eos_score(lm.bos_state()).item() == pytest.approx((-0.6 - 1.0) * LN10)
    assert lm.state_tokens(lm.bos_state().item()) == ("<s>",)
    assert lm.token_id("zebra") == lm.unk == lm.token_id("<unk>")


@pytest.mark.parametrize("unk", [True, False], ids=["with-unk", "without-unk"])
def test_hand_arpa_equals_kenlm(kenlm, hand_arpa, unk):
    """All 781 sentences of up to 4 tokens over a b c d and an OOV word (float64: the
    difference is kenlm's float32 rounding, 1e-5 of the -230 nats of a missing <unk>)."""
    if not unk:
        hand_arpa.write_text(without_unk(HAND_ARPA.lstrip()))
    lm = TensorNgramLM.from_arpa(hand_arpa, dtype=torch.float64)
    model = kenlm.Model(str(hand_arpa))
    worst = compare_with_kenlm(kenlm, lm, model, all_sentences(HAND_WORDS, 4))
    print(f"hand ARPA ({'with' if unk else 'without'} <unk>): max |ours - kenlm| = {worst:.2e} nats")
    assert lm.sentence_score(["a", "b", "zebra"]) == pytest.approx(model.score("a b zebra") * LN10,
                                                                   abs=1e-5)


def test_vocabulary_mapping_and_broadcast(hand_arpa):
    """With a vocabulary, ids are its indices, each mapped to its LM token (a space to ``|``,
    absent ones to <unk>); states (S, 1) × tokens (1, V) score every pair at once."""
    vocab = ["<blank>", "a", "b", "c", "d", " ", "e", ""]
    lm = TensorNgramLM.from_arpa(hand_arpa, vocab=vocab)
    plain = TensorNgramLM.from_arpa(hand_arpa)
    assert lm.vocab_size == len(vocab) and plain.vocab_size == 7
    assert [lm.lm_tokens[i] for i in lm.token_map.tolist()] == ["<unk>", "a", "b", "c", "d",
                                                                 "<unk>", "<unk>", "<unk>"]
    assert lm.token_id("c") == 3 and plain.token_id("c") == plain.lm_tokens.index("c")
    with pytest.raises(KeyError):
        lm.token_id("zebra")
    states = torch.arange(lm.num_states)
    logp, nxt = lm.score(states[:, None], torch.arange(len(vocab))[None])
    assert logp.shape == nxt.shape == (lm.num_states, len(vocab))
    for j, lm_id in enumerate(lm.token_map.tolist()):
        ref_logp, ref_next = plain.score(states, torch.full_like(states, lm_id))
        assert torch.equal(logp[:, j], ref_logp) and torch.equal(nxt[:, j], ref_next)
    # a character vocabulary: the space is the LM's "|"
    char_arpa = hand_arpa.parent / "char.arpa"
    char_arpa.write_text(HAND_ARPA.lstrip().replace("\tb", "\t|").replace(" b", " |"))
    chars = CharVocab("a c")
    lm = TensorNgramLM.from_arpa(char_arpa, vocab=chars.tokens(range(len(chars))))
    assert [lm.lm_tokens[i] for i in lm.token_map.tolist()] == ["<unk>", "a", "|", "c"]


def test_malformed_arpa_files_are_named(tmp_path, hand_arpa):
    text = HAND_ARPA.lstrip()
    cases = {
        "notarpa": ("hello\n", r"notarpa\.arpa:1: not an ARPA file"),
        "count": (text.replace("ngram 2=9", "ngram 2=10"),
                  r"count\.arpa:\d+: the header announces 10 2-grams, the \\2-grams: section has 9"),
        "cut": (text.split("\\3-grams:")[0], r"cut\.arpa:\d+: the file ends before"),
        "token": (text.replace("-0.5\t<s> b", "-0.5\t<s> e"), r"token\.arpa:\d+: token 'e'"),
        "field": (text.replace("-0.5\t<s> b", "-0.5\t<s>"), r"field\.arpa:\d+: expected 'log10prob'"),
        "number": (text.replace("-0.5\t<s> b", "x\t<s> b"), r"number\.arpa:\d+: bad number"),
        "nobos": (text.replace("<s>", "<t>"), r"nobos\.arpa: the ARPA model has no <s>"),
        "dup": (text.replace("-0.5\t<s> b", "-0.5\t<s> a"), r"dup\.arpa: duplicate 2-gram '<s> a'"),
        "context": (text.replace("-0.2\tb c a", "-0.2\td c a"),
                    r"context\.arpa: the context of the 3-gram 'd c a' is not a 2-gram"),
    }
    for name, (body, match) in cases.items():
        path = tmp_path / f"{name}.arpa"
        path.write_text(body)
        with pytest.raises(InputError, match=match):
            TensorNgramLM.from_arpa(path)
    with pytest.raises(InputError, match="no such ARPA file"):
        TensorNgramLM.from_arpa(tmp_path / "absent.arpa")


def test_query_is_one_sync_free_graph(hand_arpa):
    """score, full_score and eos_score are captured whole by torch.compile (fullgraph) with
    no host sync or data-dependent shape (tests.helpers.sync_free_backend), and give the eager
    results; with a vocabulary too."""
    gen = torch.Generator().manual_seed(0)
    for vocab in (None, ["<blank>", "a", "b", "c", "d", " "]):
        lm = TensorNgramLM.from_arpa(hand_arpa, vocab=vocab)
        states = torch.randint(0, lm.num_states, (4, 9), generator=gen)
        tokens = torch.randint(0, lm.vocab_size, (4, 9), generator=gen)
        torch._dynamo.reset()
        for fn, args in ((lm.full_score, (states, tokens)), (lm.score, (states, tokens)),
                         (lm.eos_score, (states,))):
            traced = torch.compile(fn, fullgraph=True, backend=sync_free_backend)(*args)
            eager = fn(*args)
            for a, b in zip(traced if isinstance(traced, tuple) else (traced,),
                            eager if isinstance(eager, tuple) else (eager,), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_equals_cpu(hand_arpa):
    """The tables on the GPU give the CPU's scores and states, for 20k random pairs, with
    CUDA's sync debug mode set to error (a host sync would raise)."""
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float64, torch.float32):
        cpu = TensorNgramLM.from_arpa(hand_arpa, dtype=dtype)
        gpu = cpu.to("cuda")
        assert gpu.device.type == "cuda" and gpu.dtype == dtype
        states = torch.randint(0, cpu.num_states, (20_000,), generator=gen)
        tokens = torch.randint(0, cpu.vocab_size, (20_000,), generator=gen)
        s, t = states.cuda(), tokens.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = gpu.full_score(s, t)
            eos = gpu.eos_score(s)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        ref = cpu.full_score(states, tokens)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
        torch.testing.assert_close(eos.cpu(), cpu.eos_score(states), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- slow: lmplz
@pytest.fixture(scope="module")
def lmplz():
    """KenLM's programs (built on first use); skips with the reason when they cannot be."""
    try:
        return ngram.kenlm_bin_dir()
    except ngram.KenLMBuildError as e:
        pytest.skip(f"lmplz unavailable: {e}")


def held_out(n: int, train: set[str], seed: int) -> list[str]:
    """``n`` generated sentences not in ``train``, every third with a word replaced by an OOV
    one (``zyzzyva``, ``qwerty``)."""
    rng = random.Random(seed)
    out = []
    for s in generate_sentences(3 * n, seed=seed):
        if s.text in train:
            continue
        words = s.text.split()
        if len(out) % 3 == 0:
            words[rng.randrange(len(words))] = rng.choice(["zyzzyva", "qwerty"])
        out.append(" ".join(words))
        if len(out) == n:
            break
    return out


@pytest.mark.slow
def test_word_trigram_equals_kenlm(kenlm, lmplz, tmp_path):
    """An lmplz word 3-gram of 2,000 generated sentences; 300 held-out ones (a third with an
    OOV word); float32, the default."""
    train = [s.text for s in generate_sentences(2000, seed=0)]
    arpa = ngram.train_ngram(train, tmp_path / "word3.arpa", order=3)
    lm = TensorNgramLM.from_arpa(arpa)
    model = kenlm.Model(str(arpa))
    sentences = [s.split() for s in held_out(300, set(train), seed=1)]
    worst = compare_with_kenlm(kenlm, lm, model, sentences)
    print(f"word 3-gram ({lm}): max |ours - kenlm| = {worst:.2e} nats")


@pytest.mark.slow
def test_char_6gram_through_a_char_vocabulary_equals_kenlm(kenlm, lmplz, tmp_path):
    """An lmplz character 6-gram (space written |) of 1,000 generated sentences, queried with
    the ids of a CharVocab that also holds characters the LM never saw (7, é: <unk>); 200
    held-out sentences, a third with such a character."""
    train = [s.text for s in generate_sentences(1000, seed=0)]
    arpa = ngram.train_ngram([ngram.char_tokens(s) for s in train], tmp_path / "char6.arpa", order=6)
    chars = CharVocab("abcdefghijklmnopqrstuvwxyz '7é")
    lm = TensorNgramLM.from_arpa(arpa, vocab=chars.tokens(range(len(chars))))
    model = kenlm.Model(str(arpa))
    rng = random.Random(2)
    texts = [s if i % 3 else s.replace(rng.choice(s.replace(" ", "")), rng.choice("7é"), 1)
             for i, s in enumerate(held_out(200, set(train), seed=3))]
    sentences = [ngram.char_tokens(s).split() for s in texts]
    worst = compare_with_kenlm(kenlm, lm, model, sentences, ids=[chars.encode(s) for s in texts])
    print(f"char 6-gram ({lm}): max |ours - kenlm| = {worst:.2e} nats")
