"""Greedy (best-path) decoding for Gram-CTC: per-frame argmax over gram ids, then the collapse B
(merge consecutive equal ids, drop blanks, concatenate the grams' characters).

Pure tensor functions; the gram strings come in as ``symbols`` (``symbols[i]`` = the string of
gram id ``i``, ``""`` or anything for the blank), e.g. ``GramSet.symbols()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from speechlab.functional.ctc import ctc_greedy_decode


def collapse_gram_path(path: Sequence[int], symbols: Sequence[str], blank: int = 0) -> str:
    """The collapse ``B`` of one frame path of gram ids.

    >>> collapse_gram_path([1, 1, 0, 3, 3, 2], ["", "a", "b", "ab"])
    'aabb'
    """
    out: list[str] = []
    prev = None
    for i in path:
        i = int(i)
        if i != prev and i != blank:
            out.append(symbols[i])
        prev = i
    return "".join(out)


def gram_greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path gram ids: argmax per frame, merge repeats, drop blanks.

    Args:
        log_probs: ``(B, T, V)`` per-frame scores over ``V = {blank} ∪ G``.
        lengths: ``(B,)`` valid frames.
        blank: the blank id.

    Returns:
        One list of emitted gram ids per utterance (after the collapse of repeats).
    """
    return ctc_greedy_decode(log_probs, lengths, blank)


def gram_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, symbols: Sequence[str],
                       blank: int = 0) -> list[str]:
    """Best-path transcripts: :func:`gram_greedy_ids` joined through ``symbols``.

    Args:
        log_probs: ``(B, T, V)``.
        lengths: ``(B,)``.
        symbols: ``V`` gram strings in id order.
        blank: the blank id.

    Returns:
        One string per utterance.
    """
    if log_probs.shape[-1] != len(symbols):
        raise ValueError(f"log_probs has {log_probs.shape[-1]} outputs but {len(symbols)} symbols")
    return ["".join(symbols[i] for i in ids) for ids in gram_greedy_ids(log_probs, lengths, blank)]


def gram_emission_counts(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """How often each gram id is emitted by best-path decoding (after merging repeats).

    Args:
        log_probs: ``(B, T, V)``; lengths: ``(B,)``.

    Returns:
        ``(V,)`` int64 counts (the blank's entry counts nothing: 0).
    """
    best = log_probs.argmax(dim=-1)
    t = torch.arange(best.shape[1], device=best.device)
    keep = (best != blank) & (t[None, :] < lengths[:, None].to(best.device))
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    return torch.bincount(best[keep], minlength=log_probs.shape[-1])


__all__ = ["collapse_gram_path", "gram_emission_counts", "gram_greedy_decode", "gram_greedy_ids"]
