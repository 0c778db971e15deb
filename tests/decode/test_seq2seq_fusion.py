"""KenLM character n-gram shallow fusion and zero-attention internal-LM estimation in the seq2seq
search, against independent oracles: ``kenlm.Model.score`` on whole sentences (the scorer's
stepwise log-probs), teacher forcing on an all-zero memory (the ILM), teacher forcing + kenlm +
ILM summed per hypothesis (the search's scores), and the search without the new terms (β = λ =
0). The n-gram tests skip, naming kenlm, when the kenlm module cannot be imported."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from speechlab.decode.beam_search import beam_search, greedy_search, max_lengths
from speechlab.errors import InputError
from speechlab.nn.decoder import AttentionDecoder, AttentionDecoderConfig, Memory, select_state
from speechlab.nn.lm import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LN10 = math.log(10.0)
CHARS = ("a", "b", " ", "c")  # "c" is not in the LM: it gets <unk>'s probability
#: a character bigram LM in the ``--unit char`` format (the space is ``|``), written by hand
ARPA = """\\data\\
ngram 1=6
ngram 2=7

\\1-grams:
-1.5\t<unk>\t0
0\t<s>\t-0.30103
-0.69897\t</s>\t0
-0.39794\ta\t-0.1
-0.52288\tb\t-0.2
-0.82391\t|\t-0.05

\\2-grams:
-0.1549\t<s> a
-0.3010\ta b
-0.2218\tb </s>
-0.5229\tb |
-0.2000\t| a
-0.6990\ta </s>
-0.4000\tb a

\\end\\
"""


@pytest.fixture()
def kenlm():
    """The kenlm module; skips the test with the reason when it cannot be imported."""
    return pytest.importorskip("kenlm", reason="the kenlm Python module is not installed "
                                               "(pip install kenlm)")


@pytest.fixture()
def arpa(tmp_path):
    path = tmp_path / "char.arpa"
    path.write_text(ARPA)
    return path


def _ids(text: str, chars=CHARS) -> list[int]:
    return [chars.index(c) + 1 for c in text]


@functools.cache
def _kenlm_model(kenlm, path):
    return kenlm.Model(str(path))


def _kenlm_nats(kenlm, path, text: str) -> float:
    """The full-sentence oracle: ``kenlm.Model.score`` of the text as character words, in nats."""
    words = " ".join("|" if c == " " else c for c in text)
    return _kenlm_model(kenlm, path).score(words, bos=True, eos=True) * LN10


# ------------------------------------------------------------------------------- the scorer
@pytest.mark.parametrize("text", ["ab a", "ba", "abc b", "c", "", "a  b"])
def test_scorer_log_probs_add_up_to_the_kenlm_sentence_score(kenlm, arpa, text):
    """Stepwise (batched, two sentences at once) log-probs of each next character and of
    ``</s>`` sum to kenlm's whole-sentence score × ln 10; the unknown "c" gets <unk>'s."""
    from speechlab.decode.ngram_fusion import CharNgramScorer

    scorer = CharNgramScorer(arpa, CHARS)
    assert scorer.vocab_size == len(CHARS) + 1
    other = "b ab"
    seqs = [_ids(text), _ids(other)]
    n = max(map(len, seqs)) + 1
    inputs = torch.tensor([[0, *s, *[0] * (n - 1 - len(s))] for s in seqs])
    state, totals = None, [0.0, 0.0]
    for t in range(n):
        logp, state = scorer.step(inputs[:, t], state)
        assert logp.shape == (2, len(CHARS) + 1) and logp.dtype == torch.float32
        if t == 0:  # by hand: P(c | <s>) = backoff(<s>) · P(<unk>); P(a | <s>) the bigram
            assert float(logp[0, 4]) == pytest.approx((-0.30103 - 1.5) * LN10, abs=1e-4)
            assert float(logp[0, 1]) == pytest.approx(-0.1549 * LN10, abs=1e-4)
        for i, s in enumerate(seqs):
            if t <= len(s):
                totals[i] += float(logp[i, s[t] if t < len(s) else 0])
    assert totals[0] == pytest.approx(_kenlm_nats(kenlm, arpa, text), abs=1e-4)
    assert totals[1] == pytest.approx(_kenlm_nats(kenlm, arpa, other), abs=1e-4)


def test_scorer_state_is_reordered_like_the_other_decoding_states(kenlm, arpa):
    """After ``select_state`` the rows follow their hypotheses: histories reordered by beam
    index then stepped equal the reordered histories run from the start."""
    from speechlab.decode.ngram_fusion import CharNgramScorer

    scorer = CharNgramScorer(arpa, CHARS)
    history = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1]])  # <sos> a b, <sos> b |, <sos> | a
    order, nxt = torch.tensor([2, 2, 0]), torch.tensor([1, 2, 0])

    def run(rows: torch.Tensor, reorder: torch.Tensor | None = None) -> torch.Tensor:
        state = None
        for t in range(rows.shape[1]):
            _, state = scorer.step(rows[:, t], state)
        if reorder is not None:
            state = select_state(state, reorder)
        return scorer.step(nxt, state)[0]

    reordered = run(history, order)
    torch.testing.assert_close(reordered, run(history[order]), rtol=0, atol=0)
    assert not torch.equal(reordered[0], reordered[2])  # different contexts, different rows


@pytest.mark.parametrize("kind", ["missing", "text", "truncated"])
def test_bad_ngram_file_is_one_input_error_naming_it(kenlm, tmp_path, kind):
    from speechlab.tasks.seq2seq import Seq2SeqTask

    path = tmp_path / "lm.arpa"
    if kind == "text":
        path.write_text("hello world\n")
    elif kind == "truncated":
        path.write_text(ARPA[: len(ARPA) // 2])
    with pytest.raises(InputError) as err:
        Seq2SeqTask(ngram_lm=str(path), ngram_weight=0.5)
    message = str(err.value)
    assert "\n" not in message and f"{path}: " in message


def test_bad_ngram_file_is_one_error_line_on_the_command_line(kenlm, tiny_corpus, tmp_path,
                                                               capsys):
    """``speechlab test --model.init_args.ngram_lm BAD``: one line, no traceback."""
    from pathlib import Path

    from speechlab.cli import main

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "seq2seq.yaml")
    bad = tmp_path / "nope.arpa"
    rc = main(["test", "--config", recipe, f"--data.init_args.test_manifest={tiny_corpus['test']}",
               "--trainer.accelerator=cpu", "--trainer.logger=false",
               f"--model.init_args.ngram_lm={bad}", "--model.init_args.ngram_weight=0.5",
               f"--model.init_args.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("speechlab ")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("speechlab test: error: ") and f"{bad}: " in lines[0]


def test_without_kenlm_only_ngram_lm_needs_it(arpa, monkeypatch):
    """kenlm not importable: setting ngram_lm is one InputError naming kenlm; without ngram_lm
    the task (and ILM) work."""
    from speechlab.tasks.seq2seq import Seq2SeqTask

    monkeypatch.setitem(__import__("sys").modules, "kenlm", None)  # import kenlm -> ImportError
    with pytest.raises(InputError, match=r"ngram_lm=.*char\.arpa: .*needs the kenlm Python module"):
        Seq2SeqTask(ngram_lm=str(arpa))
    Seq2SeqTask(ilm_weight=0.2)


def test_task_option_errors():
    from speechlab.tasks.seq2seq import Seq2SeqTask

    with pytest.raises(ValueError, match="ngram_weight=0.5 needs model.init_args.ngram_lm"):
        Seq2SeqTask(ngram_weight=0.5)


# ------------------------------------------------------------------------------- the ILM
def _decoder(fusion: str = "none", vocab: int = len(CHARS) + 1, seed: int = 0,
             eos_bias: float = 0.0) -> tuple[AttentionDecoder, RNNLanguageModel]:
    torch.manual_seed(seed)
    lm = RNNLanguageModel(vocab, embed_dim=8, hidden_size=16, num_layers=1, dropout=0.0).eval()
    cfg = AttentionDecoderConfig(embed_dim=8, hidden_size=16, num_layers=2, attention_dim=8,
                                 location_channels=4, location_kernel=5, output_dim=16,
                                 fusion_dim=8, dropout=0.0)
    dec = AttentionDecoder(vocab, 12, cfg, fusion=fusion, lm_hidden_size=16).eval()
    with torch.no_grad():
        dec.output[-1].weight.mul_(3.0)
        dec.output[-1].bias[0] += eos_bias
    return dec, lm


def _memory(dec: AttentionDecoder, lengths: list[int], seed: int = 1) -> Memory:
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(len(lengths), max(lengths), 12, generator=g)
    lens = torch.tensor(lengths)
    enc = enc * (torch.arange(enc.shape[1])[None, :, None] < lens[:, None, None])
    return dec.prepare_memory(enc, lens)


def _zero_memory(dec: AttentionDecoder, n: int) -> Memory:
    """A memory whose values are all zero: every attention context is zero."""
    return dec.prepare_memory(torch.zeros(n, 5, dec.memory_dim), torch.full((n,), 5))


def test_ilm_equals_teacher_forcing_on_an_all_zero_memory():
    dec, _ = _decoder()
    inputs = torch.randint(1, dec.vocab_size, (3, 7), generator=torch.Generator().manual_seed(2))
    inputs[:, 0] = 0
    with torch.no_grad():
        oracle = dec(_zero_memory(dec, 3), inputs).logits.log_softmax(-1)
        state, steps = None, []
        for t in range(inputs.shape[1]):
            logits, state = dec.ilm_step(inputs[:, t], state)
            steps.append(logits.log_softmax(-1))
        real = dec(_memory(dec, [6, 6, 6]), inputs).logits.log_softmax(-1)
    torch.testing.assert_close(torch.stack(steps, dim=1), oracle, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(real, oracle, atol=1e-3)  # the context matters for the real decoder


@pytest.mark.parametrize("fusion", ["deep", "cold"])
def test_ilm_is_refused_for_deep_and_cold_fusion(fusion):
    dec, lm = _decoder(fusion)
    with pytest.raises(ValueError, match=f"fusion none/shallow only, not {fusion}"):
        dec.ilm_step(torch.zeros(2, dtype=torch.long), None)
    with pytest.raises(ValueError, match="internal LM estimation"):
        beam_search(dec, _memory(dec, [4]), lm, beam_size=2, ilm_weight=0.3)


# ------------------------------------------------------------------------------- the search
def _oracle_log_prob(kenlm, arpa, dec, lm, memory, tokens, lm_weight, ngram_weight, ilm_weight):
    """``log P_dec + β log P_LM`` by teacher forcing, ``+ β_ng · kenlm sentence score (nats)``,
    ``− λ ·`` the ILM log-likelihood by teacher forcing on an all-zero memory; over
    ``tokens + [eos]``."""
    inputs = torch.tensor([[0, *tokens]])
    targets = torch.tensor([*tokens, 0])[:, None]
    with torch.no_grad():
        dec_lp = dec(memory, inputs).logits[0].log_softmax(-1).gather(1, targets).sum()
        lm_lp = lm(inputs)[0][0].log_softmax(-1).gather(1, targets).sum()
        ilm_lp = dec(_zero_memory(dec, 1), inputs).logits[0].log_softmax(-1).gather(1, targets).sum()
    text = "".join(CHARS[i - 1] for i in tokens)
    return (float(dec_lp) + lm_weight * float(lm_lp)
            + ngram_weight * _kenlm_nats(kenlm, arpa, text) - ilm_weight * float(ilm_lp))


def _one(memory: Memory, i: int) -> Memory:
    n = int(memory.lengths[i])
    return Memory(memory.values[i : i + 1, :n], memory.keys[i : i + 1, :n],
                  memory.mask[i : i + 1, :n], memory.lengths[i : i + 1])


@pytest.mark.parametrize("lm_weight,ngram_weight,ilm_weight,alpha",
                         [(0.0, 0.8, 0.0, 1.0), (0.0, 0.0, 0.4, 0.0), (0.5, 0.7, 0.3, 0.5)])
def test_beam_and_greedy_scores_are_decoder_plus_ngram_minus_ilm(kenlm, arpa, lm_weight,
                                                                 ngram_weight, ilm_weight, alpha):
    """Every n-best hypothesis of a batched beam search: ``log_prob`` = teacher-forced decoder
    + β·RNN LM + β_ng·kenlm sentence score − λ·ILM, ``score`` = that / (length + 1)^α; greedy's
    log_prob likewise. Hypotheses end both by <eos> and by the max-length guard."""
    from speechlab.decode.ngram_fusion import CharNgramScorer

    scorer = CharNgramScorer(arpa, CHARS)
    dec, lm = _decoder(seed=3, eos_bias=0.0)
    lengths = [6, 3, 8, 5]
    memory = _memory(dec, lengths)
    terms = {"ngram": scorer, "ngram_weight": ngram_weight, "ilm_weight": ilm_weight}
    nbest = beam_search(dec, memory, lm, lm_weight, beam_size=4, length_penalty=alpha,
                        max_len_ratio=1.0, nbest=4, **terms)
    greedy = greedy_search(dec, memory, lm, lm_weight, max_len_ratio=1.0, **terms)
    ends = set()
    for i, hyps in enumerate(nbest):
        one = _one(memory, i)
        for h in hyps:
            expected = _oracle_log_prob(kenlm, arpa, dec, lm, one, h.tokens, lm_weight,
                                        ngram_weight, ilm_weight)
            assert h.log_prob == pytest.approx(expected, abs=1e-3)
            assert h.score == pytest.approx(expected / (len(h.tokens) + 1) ** alpha, abs=1e-3)
            ends.add(len(h.tokens) == lengths[i])
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        g = greedy[i]
        assert g.log_prob == pytest.approx(
            _oracle_log_prob(kenlm, arpa, dec, lm, one, g.tokens, lm_weight, ngram_weight,
                             ilm_weight), abs=1e-3)
    assert ends == {True, False}


def test_beam_search_with_ngram_and_ilm_is_the_best_of_all_sequences(kenlm, arpa):
    """Vocabulary eos + "a" + "b", max length 3, a beam keeping every live prefix: the n-best
    are the best of *all* 15 sequences under the oracle score (the terms change the winner)."""
    from speechlab.decode.ngram_fusion import CharNgramScorer

    chars = ("a", "b")
    scorer = CharNgramScorer(arpa, chars)
    dec, lm = _decoder(vocab=3, seed=3, eos_bias=-0.5)
    memory = _memory(dec, [3], seed=4)
    assert int(max_lengths(memory, 1.0)[0]) == 3
    seqs = [list(s) for n in range(4) for s in itertools.product([1, 2], repeat=n)]

    def best(ngram_weight, ilm_weight):
        scored = sorted(seqs, key=lambda s: -_oracle_log_prob(
            kenlm, arpa, dec, lm, memory, s, 0.0, ngram_weight, ilm_weight) / (len(s) + 1))
        found = beam_search(dec, memory, beam_size=8, length_penalty=1.0, nbest=4, ngram=scorer,
                            ngram_weight=ngram_weight, ilm_weight=ilm_weight)[0]
        assert [h.tokens for h in found] == scored[:4]
        return scored[0]

    assert best(0.0, 0.0) != best(3.0, 0.5)


@pytest.mark.parametrize("lm_weight", [0.0, 0.6])
def test_zero_weights_leave_the_search_unchanged(kenlm, arpa, lm_weight):
    """β_ng = λ = 0 (scorer given or not): the same tokens and bit-identical scores as the
    search without the new options, greedy and beam, with and without RNN-LM shallow fusion."""
    from speechlab.decode.ngram_fusion import CharNgramScorer

    scorer = CharNgramScorer(arpa, CHARS)
    dec, lm = _decoder(seed=5, eos_bias=0.5)
    memory = _memory(dec, [7, 4, 9])
    before = beam_search(dec, memory, lm, lm_weight, beam_size=3, nbest=3)
    after = beam_search(dec, memory, lm, lm_weight, beam_size=3, nbest=3, ngram=scorer,
                        ngram_weight=0.0, ilm_weight=0.0)
    assert [[(h.tokens, h.log_prob, h.score) for h in hs] for hs in before] == \
        [[(h.tokens, h.log_prob, h.score) for h in hs] for hs in after]
    g0 = greedy_search(dec, memory, lm, lm_weight)
    g1 = greedy_search(dec, memory, lm, lm_weight, ngram=scorer, ngram_weight=0.0, ilm_weight=0.0)
    assert [(h.tokens, h.log_prob) for h in g0] == [(h.tokens, h.log_prob) for h in g1]
    changed = beam_search(dec, memory, lm, lm_weight, beam_size=3, nbest=3, ngram=scorer,
                          ngram_weight=1.0, ilm_weight=0.3)
    assert [h.log_prob for hs in changed for h in hs] != [h.log_prob for hs in before for h in hs]


def test_search_checks_the_ngram_scorer(kenlm, arpa):
    from speechlab.decode.ngram_fusion import CharNgramScorer

    dec, _ = _decoder()
    memory = _memory(dec, [4])
    with pytest.raises(ValueError, match="ngram_weight=0.5 needs an n-gram scorer"):
        greedy_search(dec, memory, ngram_weight=0.5)
    with pytest.raises(ValueError, match="n-gram scorer has 3 tokens but the decoder 5"):
        beam_search(dec, memory, ngram=CharNgramScorer(arpa, ("a", "b")), ngram_weight=0.5)


def test_task_searches_with_ngram_and_ilm_and_saves_the_options(kenlm, arpa, tmp_path):
    """Seq2SeqTask passes ngram_lm / ngram_weight / ilm_weight to the search (β = λ = 0 gives
    the plain search's transcripts) and saves them as hyper-parameters (the path absolute)."""
    from speechlab.nn.encoders import SpeechEncoderConfig
    from speechlab.tasks.seq2seq import Seq2SeqTask

    enc = SpeechEncoderConfig(hidden_size=16, num_layers=1, dropout=0.0)
    dec = AttentionDecoderConfig(embed_dim=8, hidden_size=16, attention_dim=8, location_channels=4,
                                 location_kernel=5, output_dim=16, dropout=0.0)

    def task(**kw):
        torch.manual_seed(0)
        return Seq2SeqTask(vocab="ab c", encoder=enc, decoder=dec, spec_augment=False,
                           max_len_ratio=0.5, **kw).eval()

    g = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(2, 40, 80, generator=g), "feature_lens": torch.tensor([40, 30])}
    plain, zero = task(), task(ngram_lm=str(arpa))
    fused = task(ngram_lm=str(arpa), ngram_weight=2.0, ilm_weight=0.5)
    assert fused.hparams.ngram_lm == str(arpa.resolve()) and fused.hparams.ilm_weight == 0.5
    with torch.no_grad():
        for beam in (1, 3):
            a = plain.search(batch, beam_size=beam)
            b = zero.search(batch, beam_size=beam)
            assert [(h.tokens, h.log_prob) for h in a] == [(h.tokens, h.log_prob) for h in b]
            c = fused.search(batch, beam_size=beam)
            assert [h.log_prob for h in c] != [h.log_prob for h in a]
