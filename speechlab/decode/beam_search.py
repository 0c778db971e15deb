"""Greedy and beam search for the attention decoder, batched over utterances × beams.

Every step is one :meth:`~speechlab.nn.decoder.AttentionDecoder.step` (and one LM step) for all
``B·K`` hypotheses at once — no Python loop over utterances or beams, so on a GPU a beam of 8
costs little more than greedy decoding. Per hypothesis the search carries the decoder state and
the LM state (reordered with the surviving beams' origins after every step).

Scores: ``log P(y_t | …)`` of the (deep/cold-fused) decoder, plus ``β log P_LM(y_t | …)`` with
shallow fusion (``lm_weight = β > 0``), plus ``β_ng log P_ngram(y_t | …)`` of a KenLM character
n-gram (``ngram_weight``, :class:`~speechlab.decode.ngram_fusion.CharNgramScorer`), minus
``λ log P_ILM(y_t | …)`` of the decoder's zero-attention internal LM (``ilm_weight``,
:meth:`~speechlab.nn.decoder.AttentionDecoder.ilm_step`); every term is natural-log and each
model carries its own per-hypothesis state. End of sentence: id ``eos`` (0) ends a hypothesis; a
finished hypothesis keeps its slot and score (it is extended by ``eos`` at no cost) until every
hypothesis of the batch has finished. Max-length guard: after
``ceil(max_len_ratio · encoder frames)`` tokens (at most ``max_len``) only ``eos`` is allowed.
Length normalization: the final ranking divides each score by ``length ** length_penalty``
(length counts ``eos``); the search itself ranks by raw scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechlab.decode.ngram_fusion import CharNgramScorer
from speechlab.functional.fusion import length_normalize, shallow_fusion
from speechlab.nn.decoder import AttentionDecoder, Memory, lm_step, select_state
from speechlab.nn.lm import RNNLanguageModel


@dataclass
class Hypothesis:
    """A decoded sequence: ``tokens`` without ``eos``; ``log_prob`` the summed step scores (with
    ``β log P_LM`` under shallow fusion, ``β_ng log P_ngram`` and ``− λ log P_ILM`` when their
    weights are set); ``score`` the length-normalized ranking score."""

    tokens: list[int]
    log_prob: float
    score: float


@dataclass
class GreedyDetails:
    """Per-step analysis of greedy decoding: ``alignments (B, U, T)``; ``gates (B, U, G)``
    (deep/cold fusion; None otherwise); ``lm_log_probs (B, U, V)`` (None without an LM)."""

    alignments: torch.Tensor
    gates: torch.Tensor | None
    lm_log_probs: torch.Tensor | None


def max_lengths(memory: Memory, max_len_ratio: float, max_len: int | None = None) -> torch.Tensor:
    """Token budget per utterance ``(B,)``: ``ceil(ratio · frames)`` (≥ 1), capped by ``max_len``."""
    n = torch.ceil(memory.lengths.double() * max_len_ratio).long().clamp(min=1)
    return n.clamp(max=max_len) if max_len is not None else n


def _check_lm(decoder: AttentionDecoder, lm: RNNLanguageModel | None, lm_weight: float) -> bool:
    needs = decoder.uses_lm or lm_weight != 0.0
    if needs and lm is None:
        raise ValueError(f"decoding with fusion={decoder.fusion!r}, lm_weight={lm_weight} needs an LM")
    if lm is not None and lm.vocab_size != decoder.vocab_size:
        raise ValueError(f"LM has {lm.vocab_size} outputs but the decoder {decoder.vocab_size}")
    return needs


@dataclass(frozen=True)
class ExtraTerms:
    """Search-time score terms beside the decoder and the RNN LM: ``+ ngram_weight · ln
    P_ngram`` (``ngram``: a character n-gram scorer) and ``− ilm_weight · ln P_ILM`` (the
    decoder's zero-attention internal LM). A zero weight skips its model entirely."""

    ngram: CharNgramScorer | None = None
    ngram_weight: float = 0.0
    ilm_weight: float = 0.0

    def check(self, decoder: AttentionDecoder) -> None:
        """Raise ``ValueError`` when a weighted term cannot be computed for ``decoder``."""
        if self.ngram_weight != 0.0:
            if self.ngram is None:
                raise ValueError(f"ngram_weight={self.ngram_weight} needs an n-gram scorer")
            if self.ngram.vocab_size != decoder.vocab_size:
                raise ValueError(f"the n-gram scorer has {self.ngram.vocab_size} tokens but the "
                                 f"decoder {decoder.vocab_size}")
        if self.ilm_weight != 0.0:
            decoder.check_ilm()

    def step(self, decoder: AttentionDecoder, tokens: torch.Tensor, state: dict
             ) -> tuple[torch.Tensor | None, dict]:
        """Consume ``tokens (N,)``: ``(score to add (N, V) fp32 or None, new state)``; the state
        ``{"ngram": (N,) ids, "ilm": LSTM state}`` starts as ``{}`` and is reordered with
        :func:`select_state`."""
        add, new = None, {}
        if self.ngram_weight != 0.0:
            assert self.ngram is not None
            ngram_logp, new["ngram"] = self.ngram.step(tokens, state.get("ngram"))
            add = self.ngram_weight * ngram_logp
        if self.ilm_weight != 0.0:
            ilm_logits, new["ilm"] = decoder.ilm_step(tokens, state.get("ilm"))
            ilm = -self.ilm_weight * ilm_logits.float().log_softmax(dim=-1)
            add = ilm if add is None else add + ilm
        return add, new


NO_EXTRA_TERMS = ExtraTerms()


def _step_scores(decoder: AttentionDecoder, lm: RNNLanguageModel | None, use_lm: bool,
                 lm_weight: float, tokens: torch.Tensor, state: dict, lm_state: object,
                 memory: Memory, extra: ExtraTerms = NO_EXTRA_TERMS, extra_state: dict | None = None):
    """One fused step: ``(log-prob scores (N, V) fp32, decoder state, LM state, gate, LM
    log-probs, extra terms' state)``."""
    lm_logits = lm_hidden = lm_logp = None
    if use_lm:
        assert lm is not None
        lm_logits, lm_hidden, lm_state = lm_step(lm, tokens, lm_state)
        lm_logp = lm_logits.float().log_softmax(dim=-1)
    logits, state, gate = decoder.step(tokens, state, memory, lm_logits, lm_hidden)
    logp = logits.float().log_softmax(dim=-1)
    if lm_weight != 0.0:
        assert lm_logp is not None
        logp = shallow_fusion(logp, lm_logp, lm_weight)
    add, extra_state = extra.step(decoder, tokens, extra_state or {})
    if add is not None:
        logp = logp + add
    return logp, state, lm_state, gate, lm_logp, extra_state


@torch.no_grad()
def greedy_search(decoder: AttentionDecoder, memory: Memory, lm: RNNLanguageModel | None = None,
                  lm_weight: float = 0.0, max_len_ratio: float = 1.0, max_len: int | None = None,
                  eos: int = 0, return_details: bool = False, *,
                  ngram: CharNgramScorer | None = None, ngram_weight: float = 0.0,
                  ilm_weight: float = 0.0
                  ) -> list[Hypothesis] | tuple[list[Hypothesis], GreedyDetails]:
    """Argmax decoding of a batch (the reference that beam size 1 must reproduce).

    Args:
        decoder: the attention decoder (put it in eval mode first).
        memory: :class:`Memory` of ``B`` utterances.
        lm: frozen LM (deep/cold fusion inputs and/or shallow fusion).
        lm_weight: shallow fusion weight β.
        max_len_ratio, max_len: the max-length guard (see the module docstring).
        eos: the ``<sos>``/``<eos>`` id.
        return_details: also return :class:`GreedyDetails` (attention and gates per step).
        ngram: a character n-gram scorer (shallow fusion with ``ngram_weight``).
        ngram_weight: its weight β_ng (0: not used).
        ilm_weight: λ of the internal LM subtracted (0: none; fusion none/shallow only).

    Returns:
        One :class:`Hypothesis` per utterance (``score = log_prob``), and the details if asked.
    """
    use_lm = _check_lm(decoder, lm, lm_weight)
    extra = ExtraTerms(ngram, ngram_weight, ilm_weight)
    extra.check(decoder)
    extra_state: dict = {}
    b = memory.values.shape[0]
    device = memory.values.device
    limit = max_lengths(memory, max_len_ratio, max_len)
    state = decoder.init_state(memory)
    lm_state: object = None
    tokens = torch.full((b,), eos, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    total = torch.zeros(b, dtype=torch.float32, device=device)
    out, aligns, gates, lm_lps = [], [], [], []
    for t in range(int(limit.max()) + 1):
        logp, state, lm_state, gate, lm_logp, extra_state = _step_scores(
            decoder, lm, use_lm, lm_weight, tokens, state, lm_state, memory, extra, extra_state)
        forced = t >= limit
        best = torch.where(forced, torch.full_like(tokens, eos), logp.argmax(dim=-1))
        best = torch.where(finished, torch.full_like(best, eos), best)
        total = total + torch.where(finished, 0.0, logp.gather(1, best[:, None]).squeeze(1))
        out.append(best)
        if return_details:
            aligns.append(state["alignment"])
            if gate is not None:
                gates.append(gate)
            if lm_logp is not None:
                lm_lps.append(lm_logp)
        finished = finished | (best == eos)
        tokens = best
        if bool(finished.all()):
            break
    seq = torch.stack(out, dim=1).cpu()
    hyps = []
    for i in range(b):
        row = seq[i].tolist()
        row = row[: row.index(eos)] if eos in row else row
        hyps.append(Hypothesis(row, float(total[i]), float(total[i])))
    if not return_details:
        return hyps
    details = GreedyDetails(torch.stack(aligns, dim=1), torch.stack(gates, dim=1) if gates else None,
                            torch.stack(lm_lps, dim=1) if lm_lps else None)
    return hyps, details


@torch.no_grad()
def beam_search(decoder: AttentionDecoder, memory: Memory, lm: RNNLanguageModel | None = None,
                lm_weight: float = 0.0, beam_size: int = 4, length_penalty: float = 1.0,
                max_len_ratio: float = 1.0, max_len: int | None = None, eos: int = 0,
                nbest: int = 1, *, ngram: CharNgramScorer | None = None,
                ngram_weight: float = 0.0, ilm_weight: float = 0.0) -> list[list[Hypothesis]]:
    """Beam search over ``B`` utterances × ``beam_size`` beams, one decoder step per position.

    Args:
        decoder: the attention decoder (eval mode).
        memory: :class:`Memory` of ``B`` utterances.
        lm: frozen LM, carried per hypothesis (deep/cold fusion inputs, shallow fusion).
        lm_weight: shallow fusion weight β (0: none).
        beam_size: beams per utterance ``K``.
        length_penalty: α of the final ranking ``score / length^α``.
        max_len_ratio, max_len: the max-length guard.
        eos: the ``<sos>``/``<eos>`` id.
        nbest: hypotheses returned per utterance (≤ ``beam_size``), best first.
        ngram, ngram_weight, ilm_weight: the n-gram and internal-LM terms (as
            :func:`greedy_search`), their states carried per hypothesis.

    Returns:
        Per utterance, the ``nbest`` best :class:`Hypothesis` by normalized score.
    """
    use_lm = _check_lm(decoder, lm, lm_weight)
    extra = ExtraTerms(ngram, ngram_weight, ilm_weight)
    extra.check(decoder)
    extra_state: dict = {}
    b, k, v = memory.values.shape[0], beam_size, decoder.vocab_size
    device = memory.values.device
    limit = max_lengths(memory, max_len_ratio, max_len)  # (B,)
    mem = memory.repeat(k)
    state = decoder.init_state(mem)
    lm_state: object = None
    tokens = torch.full((b * k,), eos, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start: no duplicate expansions
    finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b, k, dtype=torch.long, device=device)
    only_eos = torch.full((v,), float("-inf"), device=device)
    only_eos[eos] = 0.0
    offsets = (torch.arange(b, device=device) * k)[:, None]
    origins, emitted = [], []
    for t in range(int(limit.max()) + 1):
        logp, state, lm_state, _, _, extra_state = _step_scores(
            decoder, lm, use_lm, lm_weight, tokens, state, lm_state, mem, extra, extra_state)
        logp = logp.view(b, k, v)
        forced = (t >= limit)[:, None, None]
        logp = torch.where(forced, logp + only_eos, logp)   # max-length guard: eos only
        logp = torch.where(finished[..., None], only_eos, logp)  # finished: stay, no cost
        cand = (scores[..., None] + logp).view(b, k * v)
        scores, idx = cand.topk(k, dim=1)
        origin, token = idx // v, idx % v
        was_finished = finished.gather(1, origin)
        finished = was_finished | (token == eos) | torch.isinf(scores)
        lengths = lengths.gather(1, origin) + (~was_finished).long()
        origins.append(origin)
        emitted.append(token)
        flat = (offsets + origin).view(-1)
        state = select_state(state, flat)
        lm_state = select_state(lm_state, flat)
        extra_state = select_state(extra_state, flat)
        tokens = token.view(-1)
        if bool(finished.all()):
            break
    ranked = length_normalize(scores, lengths, length_penalty)
    order = ranked.argsort(dim=1, descending=True)[:, :nbest].cpu()
    origins_c = torch.stack(origins).cpu()   # (steps, B, K)
    emitted_c = torch.stack(emitted).cpu()
    scores_c, ranked_c, lengths_c = scores.cpu(), ranked.cpu(), lengths.cpu()
    results: list[list[Hypothesis]] = []
    for i in range(b):
        hyps = []
        for j in order[i].tolist():
            seq, beam = [], j
            for step in range(len(emitted) - 1, -1, -1):  # backtrack the surviving path
                seq.append(int(emitted_c[step, i, beam]))
                beam = int(origins_c[step, i, beam])
            seq.reverse()
            seq = seq[: int(lengths_c[i, j])]
            if seq and seq[-1] == eos:
                seq = seq[:-1]
            hyps.append(Hypothesis(seq, float(scores_c[i, j]), float(ranked_c[i, j])))
        results.append(hyps)
    return results


def decode(decoder: AttentionDecoder, memory: Memory, lm: RNNLanguageModel | None = None,
           lm_weight: float = 0.0, beam_size: int = 1, length_penalty: float = 1.0,
           max_len_ratio: float = 1.0, max_len: int | None = None, eos: int = 0, *,
           ngram: CharNgramScorer | None = None, ngram_weight: float = 0.0,
           ilm_weight: float = 0.0) -> list[Hypothesis]:
    """Best hypothesis per utterance: greedy for ``beam_size == 1``, beam search otherwise."""
    terms = {"ngram": ngram, "ngram_weight": ngram_weight, "ilm_weight": ilm_weight}
    if beam_size <= 1:
        return greedy_search(decoder, memory, lm, lm_weight, max_len_ratio, max_len, eos, **terms)  # type: ignore[return-value]
    return [h[0] for h in beam_search(decoder, memory, lm, lm_weight, beam_size, length_penalty,
                                      max_len_ratio, max_len, eos, **terms)]
