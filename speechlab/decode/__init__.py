"""Decoders: CTC / Gram-CTC prefix beam search (per utterance in C++, or batched in torch) and
the attention decoder's batched beam search.

:func:`prefix_beam_search` picks the CTC / Gram-CTC search that a :class:`GramDecoding` asks for
on a device; both have ``decode_batch(log_probs (B, T, V), lengths (B,)) -> list[str]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from speechlab.decode.prefix_beam import GramDecoding, KenLMScorer, PrefixBeamSearch
from speechlab.lm.tensor_ngram import TensorNgramLM


def uses_batched_search(config: GramDecoding, device: torch.device | str) -> bool:
    """Whether ``config.search`` means the batched search on ``device``: ``batched``, or
    ``auto`` on a GPU when the batched search supports the config (otherwise the C++ search
    runs, on the log-probs copied to the host)."""
    if config.search == "auto":
        return torch.device(device).type == "cuda" and BatchedPrefixBeamSearch.unsupported(config) is None
    return config.search == "batched"


def prefix_beam_search(grams: Any, config: GramDecoding, device: torch.device | str = "cpu", *,
                       lm: KenLMScorer | TensorNgramLM | None = None,
                       lexicon: Iterable[str] | None = None
                       ) -> PrefixBeamSearch | BatchedPrefixBeamSearch:
    """The CTC / Gram-CTC beam search of ``config`` over ``grams`` (a GramSet, or a CharVocab)
    for log-probs on ``device``: :class:`BatchedPrefixBeamSearch` on that device when
    :func:`uses_batched_search`, else the C++ :class:`PrefixBeamSearch`. ``lm`` / ``lexicon``:
    ``config.lm`` / ``config.lexicon`` already loaded, to share across several searches (a
    :class:`KenLMScorer` for the C++ search, a :class:`TensorNgramLM` for the batched one, as
    :func:`load_lm` gives; see the two ``from_config``)."""
    if uses_batched_search(config, device):
        return BatchedPrefixBeamSearch.from_config(
            grams, config, device=device, lm=lm if isinstance(lm, TensorNgramLM) else None,
            lexicon=lexicon)
    return PrefixBeamSearch.from_config(grams, config, lm=lm if isinstance(lm, KenLMScorer) else None,
                                        lexicon=lexicon)


def load_lm(grams: Any, config: GramDecoding, device: torch.device | str = "cpu"
            ) -> KenLMScorer | TensorNgramLM | None:
    """``config.lm`` loaded once for :func:`prefix_beam_search` on ``device`` (None without one)."""
    if config.lm is None:
        return None
    if uses_batched_search(config, device):
        return BatchedPrefixBeamSearch.load_lm(grams, config.lm, device=device, unit=config.lm_unit)
    return KenLMScorer(config.lm, config.lm_unit)


__all__ = ["load_lm", "prefix_beam_search", "uses_batched_search"]
