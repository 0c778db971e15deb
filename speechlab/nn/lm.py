"""Recurrent language model: embedding → LSTM/GRU → linear over the vocabulary.

One implementation serves the character LM of Cold Fusion (the frozen LM), and the word-level
plain-LSTM baselines of TCNLM.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechlab.nn.recurrence import run_recurrence

RNNState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RNNLanguageModel(nn.Module):
    """Next-token model ``p(x_t | x_<t)``.

    Args:
        vocab_size: tokens including special ones.
        embed_dim: embedding size.
        hidden_size: RNN units.
        num_layers: stacked RNN layers.
        rnn_type: ``"lstm"`` or ``"gru"``.
        dropout: on embeddings, between layers and before the output layer.
        tie_weights: share the embedding and output matrices (needs ``embed_dim == hidden_size``).
    """

    def __init__(self, vocab_size: int, embed_dim: int = 256, hidden_size: int = 512,
                 num_layers: int = 2, rnn_type: Literal["lstm", "gru"] = "lstm",
                 dropout: float = 0.2, tie_weights: bool = False) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn_type]
        self.rnn = rnn_cls(embed_dim, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            if embed_dim != hidden_size:
                raise ValueError(f"tie_weights needs embed_dim == hidden_size ({embed_dim} != {hidden_size})")
            self.output.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor, state: RNNState | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, RNNState]:
        """``tokens (B, L)`` → ``(logits (B, L, V), hidden (B, L, H), state)``; ``state`` is the
        RNN state after the last position (feed it back to continue). With ``lengths (B,)``
        (each ≥ 1) row ``b``'s state is the one after its position ``lengths[b] - 1`` (the rest
        is padding, run through a packed sequence; its outputs are zeros)."""
        x = self.dropout(self.embedding(tokens))
        if lengths is None:
            hidden, state = run_recurrence(self.rnn, x, state)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            hidden, state = run_recurrence(self.rnn, packed, state)
            hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=tokens.shape[1])
        return self.output(self.dropout(hidden)), hidden, state

    def step(self, token: torch.Tensor, state: RNNState | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, RNNState]:
        """One position: ``token (B,)`` → ``(logits (B, V), hidden (B, H), state)``."""
        logits, hidden, state = self(token[:, None], state)
        return logits[:, 0], hidden[:, 0], state
