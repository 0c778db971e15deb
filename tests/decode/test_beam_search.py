"""Batched seq2seq beam search against independent oracles: greedy decoding (beam 1), decoding
each utterance alone (batching), and exhaustive enumeration scored by teacher forcing (search
correctness, shallow fusion with per-hypothesis LM state, length normalization, max length)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from speechlab.decode.beam_search import beam_search, greedy_search, max_lengths
from speechlab.nn.decoder import AttentionDecoder, AttentionDecoderConfig, Memory
from speechlab.nn.lm import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _models(fusion: str, vocab: int = 29, seed: int = 0, eos_bias: float = 0.0,
            eos_scale: float = 1.0) -> tuple[AttentionDecoder, RNNLanguageModel]:
    torch.manual_seed(seed)
    lm = RNNLanguageModel(vocab, embed_dim=8, hidden_size=16, num_layers=1, dropout=0.0).eval()
    cfg = AttentionDecoderConfig(embed_dim=8, hidden_size=16, attention_dim=8, location_channels=4,
                                 location_kernel=5, output_dim=16, fusion_dim=8, dropout=0.0)
    dec = AttentionDecoder(vocab, 12, cfg, fusion=fusion, lm_hidden_size=16).eval()
    with torch.no_grad():
        dec.output[-1].weight.mul_(3.0)  # peakier distributions: fewer exact ties
        dec.output[-1].weight[0].mul_(eos_scale)  # tune <eos> so hypotheses end at various steps
        dec.output[-1].bias[0] += eos_bias
    return dec, lm


def _memory(dec: AttentionDecoder, lengths: list[int], seed: int = 1) -> Memory:
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(len(lengths), max(lengths), 12, generator=g)
    lens = torch.tensor(lengths)
    enc = enc * (torch.arange(enc.shape[1])[None, :, None] < lens[:, None, None])
    return dec.prepare_memory(enc, lens)


def _one(memory: Memory, i: int) -> Memory:
    """Utterance ``i`` alone, cut to its own length (no padding at all)."""
    n = int(memory.lengths[i])
    return Memory(memory.values[i : i + 1, :n], memory.keys[i : i + 1, :n],
                  memory.mask[i : i + 1, :n], memory.lengths[i : i + 1])


# (fusion, shallow weight, seed, eos scale, eos bias): random models whose greedy outputs end
# both by <eos> (at various steps) and by the max-length guard
GREEDY_CASES = [("none", 0.0, 1, 6.0, 0.0), ("none", 0.5, 7, 1.0, 0.6), ("cold", 0.0, 1, 3.0, 0.5),
                ("deep", 0.3, 5, 1.0, 0.6)]
LENGTHS = [9, 14, 5, 11, 7, 12]


@pytest.mark.parametrize("fusion,lm_weight,seed,eos_scale,eos_bias", GREEDY_CASES)
def test_beam_one_equals_greedy(fusion, lm_weight, seed, eos_scale, eos_bias):
    dec, lm = _models(fusion, seed=seed, eos_bias=eos_bias, eos_scale=eos_scale)
    memory = _memory(dec, LENGTHS)
    greedy = greedy_search(dec, memory, lm, lm_weight, max_len_ratio=1.0)
    beam = beam_search(dec, memory, lm, lm_weight, beam_size=1, max_len_ratio=1.0)
    assert [g.tokens for g in greedy] == [b[0].tokens for b in beam]
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].log_prob == pytest.approx(g.log_prob, abs=1e-4)
    ends = [len(g.tokens) for g in greedy]
    assert any(0 < n < limit for n, limit in zip(ends, LENGTHS, strict=True))  # ended by <eos>
    assert any(n == limit for n, limit in zip(ends, LENGTHS, strict=True))  # by the guard


@pytest.mark.parametrize("case,beam", [(GREEDY_CASES[0], 4), (GREEDY_CASES[2], 8),
                                       (GREEDY_CASES[3], 3)])
def test_batched_beam_equals_per_utterance(case, beam):
    fusion, lm_weight, seed, eos_scale, eos_bias = case
    dec, lm = _models(fusion, seed=seed, eos_bias=eos_bias, eos_scale=eos_scale)
    lengths = LENGTHS
    memory = _memory(dec, lengths)
    batched = beam_search(dec, memory, lm, lm_weight, beam_size=beam, max_len_ratio=1.0, nbest=beam)
    for i in range(len(lengths)):
        alone = beam_search(dec, _one(memory, i), lm, lm_weight, beam_size=beam,
                            max_len_ratio=1.0, nbest=beam)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


def _teacher_forced_score(dec, lm, memory, tokens, lm_weight):
    """Sum of per-step fused log-probs of ``tokens + [eos]`` computed by teacher forcing (the
    decoder's training path and the LM run over the whole prefix at once)."""
    inputs = torch.tensor([[0] + tokens])
    targets = torch.tensor(tokens + [0])
    with torch.no_grad():
        out = dec(memory, inputs, lm=lm if dec.uses_lm else None)
        logp = out.logits[0].float().log_softmax(-1)
        if lm_weight:
            lm_logits, _, _ = lm(inputs)
            logp = logp + lm_weight * lm_logits[0].float().log_softmax(-1)
    return float(logp.gather(1, targets[:, None]).sum())


@pytest.mark.parametrize("fusion,lm_weight,alpha", [("none", 0.0, 0.0), ("none", 0.7, 1.0),
                                                    ("cold", 0.3, 0.5)])
def test_beam_search_matches_exhaustive_search(fusion, lm_weight, alpha):
    """With a 3-symbol vocabulary (eos + 2), a max length of 3 and a beam wide enough to keep
    every live prefix, beam search must return the best of *all* sequences, scored
    independently by teacher forcing."""
    dec, lm = _models(fusion, vocab=3, seed=3, eos_bias=-0.5)
    memory = _memory(dec, [3], seed=4)
    limit = int(max_lengths(memory, 1.0)[0])
    assert limit == 3
    candidates = [list(seq) for n in range(limit + 1) for seq in itertools.product([1, 2], repeat=n)]
    scored = []
    for seq in candidates:
        lp = _teacher_forced_score(dec, lm, memory, seq, lm_weight)
        scored.append((lp / (len(seq) + 1) ** alpha, lp, seq))
    scored.sort(key=lambda x: -x[0])
    nbest = beam_search(dec, memory, lm, lm_weight, beam_size=8, length_penalty=alpha,
                        max_len_ratio=1.0, nbest=4)[0]
    assert [h.tokens for h in nbest] == [s[2] for s in scored[:4]]
    for h, (norm, lp, _) in zip(nbest, scored, strict=False):
        assert h.log_prob == pytest.approx(lp, abs=1e-4)
        assert h.score == pytest.approx(norm, abs=1e-4)


def test_max_length_guard_and_eos():
    dec, lm = _models("none", eos_bias=-50.0)  # eos practically never chosen: the guard must end it
    memory = _memory(dec, [6, 3])
    limit = max_lengths(memory, 0.5)
    assert limit.tolist() == [3, 2]
    out = beam_search(dec, memory, beam_size=4, max_len_ratio=0.5, nbest=4)
    for i, hyps in enumerate(out):
        assert all(len(h.tokens) == limit[i] for h in hyps)
        assert all(0 not in h.tokens for h in hyps)
    greedy = greedy_search(dec, memory, max_len_ratio=0.5)
    assert [len(g.tokens) for g in greedy] == limit.tolist()
    assert math.isfinite(out[0][0].log_prob)


def test_fusion_without_lm_is_an_error():
    dec, _ = _models("cold")
    with pytest.raises(ValueError, match="needs an LM"):
        greedy_search(dec, _memory(dec, [4]))
