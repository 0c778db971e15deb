"""Decoders: batched seq2seq beam search (and CTC prefix beam search)."""
