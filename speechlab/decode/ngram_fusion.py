"""A KenLM character n-gram LM as a next-token scorer for the seq2seq search (shallow fusion).

The model is a ``speechlab lm ngram --unit char`` ARPA or binary: every character is an LM word,
the space written ``|``. Over a :class:`~speechlab.data.text.CharVocab` layout (id 0 =
``<sos>``/``<eos>``, id ``i ≥ 1`` = ``chars[i - 1]``) the scorer gives, per hypothesis, the
natural-log probability of every token as the next character: a character's LM word, ``</s>``
for id 0; a character the LM does not know gets KenLM's ``<unk>`` probability.

Per hypothesis the state is the id of a ``kenlm.State`` interned by
:class:`~speechlab.decode.prefix_beam.KenLMScorer` (which caches ``(state, word)`` scores across
steps and utterances): a ``LongTensor (N,)``, so the search reorders it with
:func:`~speechlab.nn.decoder.select_state` like its other states. Like the RNN LM's
:func:`~speechlab.nn.decoder.lm_step`, a step *consumes* the previous tokens and then scores the
next one; consuming id 0 (``<sos>``) gives the ``<s>`` context.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from speechlab.decode.prefix_beam import CHAR_SPACE, KenLMScorer
from speechlab.errors import InputError

EOS_WORD = "</s>"


def char_lm_words(chars: Sequence[str]) -> list[str]:
    """The LM word of every token id: ``["</s>", *chars]`` with the space as ``|``."""
    return [EOS_WORD, *(CHAR_SPACE if c == " " else c for c in chars)]


class CharNgramScorer:
    """Next-character log-probabilities of a KenLM character model for batches of hypotheses.

    Args:
        path: the KenLM model (ARPA or binary, ``--unit char``).
        chars: the vocabulary's characters in id order (token ``i + 1`` is ``chars[i]``).

    Raises:
        InputError: the kenlm module is missing, or ``path`` is not a readable KenLM model (the
            message names the file).
    """

    def __init__(self, path: str | os.PathLike, chars: Sequence[str]) -> None:
        try:
            import kenlm  # noqa: F401
        except ImportError:
            raise InputError(f"ngram_lm={path}: n-gram fusion needs the kenlm Python module "
                             "(pip install kenlm)") from None
        try:
            self.lm = KenLMScorer(path, unit="char")
        except (OSError, ValueError) as e:
            raise InputError(f"ngram_lm: {e}") from None
        self.words = char_lm_words(chars)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def vocab_size(self) -> int:
        """Tokens scored, ``V`` (``len(chars) + 1``)."""
        return len(self.words)

    @property
    def begin(self) -> int:
        """The state id of the ``<s>`` context."""
        return 0

    def _row(self, state: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ln P(token | state) (V,) float64, next state id (V,) long)``, cached per state."""
        row = self._rows.get(state)
        if row is None:
            scored = [self.lm.score(state, w) for w in self.words]
            row = self._rows[state] = (torch.tensor([s for s, _ in scored], dtype=torch.float64),
                                       torch.tensor([n for _, n in scored], dtype=torch.long))
        return row

    def step(self, tokens: torch.Tensor, state: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Consume the previous tokens, score every next token.

        Args:
            tokens: ``(N,)`` previous token ids (0 = ``<sos>``: back to the ``<s>`` context).
            state: ``(N,)`` state ids from the previous step, or None at the start.

        Returns:
            ``(log_probs (N, V) float32 in nats, new state (N,) long)``, on ``tokens``' device.
        """
        ids = tokens.tolist()
        before = [self.begin] * len(ids) if state is None else state.tolist()
        after = [self.begin if t == 0 else int(self._row(s)[1][t]) for s, t in zip(before, ids,
                                                                                     strict=True)]
        log_probs = torch.stack([self._row(s)[0] for s in after]) if after else \
            torch.zeros(0, self.vocab_size, dtype=torch.float64)
        return (log_probs.to(device=tokens.device, dtype=torch.float32),
                torch.tensor(after, dtype=torch.long, device=tokens.device))
