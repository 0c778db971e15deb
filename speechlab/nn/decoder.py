"""Attention decoder (LSTM with input feeding) with optional LM fusion (deep or cold).

One step, for a batch of hypotheses ``(N,)`` (``N`` = utterances × beams in beam search)::

    x_t   = [E y_{t-1}; c_{t-1}]                      # input feeding
    q_t   = LSTM(x_t, state)                          # top-layer output
    c_t, α_t = Attention(q_t, memory, α_{t-1})        # location-aware or content
    s_t   = [q_t; c_t]                                # decoder state: output ⊕ context
    s'_t  = s_t | ColdFusion(s_t, ℓ_t) | DeepFusion(s_t, h^LM_t)
    P(y_t) = softmax(W_2 ReLU(W_1 s'_t + b_1) + b_2)  # output DNN

Token ids follow :mod:`speechlab.data.textlm`: id 0 is ``<sos>``/``<eos>``. The LM is not a
submodule (it is frozen and owned by the caller); :func:`lm_step` runs it on batch-first state so
that every decoding state can be reordered along dim 0 with :func:`select_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from speechlab.functional.decoder_bptt import AttentionWeights, LSTMWeights, attention_recurrence
from speechlab.nn.attention import Attention, frame_mask
from speechlab.nn.cuda_graphs import GraphCache
from speechlab.nn.fusion import ColdFusion, DeepFusion
from speechlab.nn.lm import RNNLanguageModel
from speechlab.nn.recurrence import run_recurrence

FusionKind = Literal["none", "shallow", "deep", "cold"]
FUSION_KINDS: tuple[str, ...] = ("none", "shallow", "deep", "cold")
State = dict[str, object]


@dataclass
class AttentionDecoderConfig:
    """Decoder hyper-parameters.

    Attributes:
        embed_dim: token embedding size.
        hidden_size: LSTM units per layer.
        num_layers: stacked LSTM cells.
        attention: ``"location"`` (location-aware) or ``"content"``.
        attention_dim: attention energy size.
        location_channels, location_kernel: location-aware conv over the previous alignment.
        output_dim: hidden size of the output DNN.
        fusion_dim: cold fusion's LM feature / gate size.
        dropout: on embeddings, between LSTM layers and in the output DNN.
        cuda_graphs: on a GPU, run teacher forcing's recurrence (LSTM cells + attention over
            the whole target) as CUDA graphs, forward and backward, one per padded batch shape
            (batch to a multiple of 8, frames of 32, tokens of 16), in float32 with autocast
            off: one launch instead of a few dozen per token. Training only; decoding and the
            CPU are unchanged.
    """

    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    attention: Literal["location", "content"] = "location"
    attention_dim: int = 128
    location_channels: int = 10
    location_kernel: int = 15
    output_dim: int = 256
    fusion_dim: int = 128
    dropout: float = 0.1
    cuda_graphs: bool = False


class Memory(NamedTuple):
    """Encoder outputs prepared for attention: ``values (N, T, D)``, ``keys (N, T, A)``,
    ``mask (N, T)``, ``lengths (N,)``."""

    values: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

    def repeat(self, k: int) -> Memory:
        """Each utterance ``k`` times in a row (``(B, …) → (B·k, …)``), for beam search."""
        return Memory(*(t.repeat_interleave(k, dim=0) for t in self))


class DecoderOutput(NamedTuple):
    """Teacher-forced outputs: ``logits (B, U, V)``, ``alignments (B, U, T)``, ``gates
    (B, U, G)`` (None without deep/cold fusion)."""

    logits: torch.Tensor
    alignments: torch.Tensor
    gates: torch.Tensor | None


def select_state(state: object, index: torch.Tensor) -> object:
    """Reorder every tensor of a (nested dict/tuple) decoding state along dim 0."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: select_state(v, index) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(select_state(v, index) for v in state)
    if state is None:
        return None
    raise TypeError(f"cannot reorder decoding state of type {type(state).__name__}")


def _time_major(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return state.transpose(0, 1).contiguous()
    if isinstance(state, tuple):
        return tuple(_time_major(s) for s in state)
    return state


def lm_step(lm: RNNLanguageModel, tokens: torch.Tensor, state: object | None
            ) -> tuple[torch.Tensor, torch.Tensor, object]:
    """One LM step with **batch-first** state (``(N, layers, H)`` tensors, reorderable with
    :func:`select_state`): ``tokens (N,)`` → ``(logits (N, V), hidden (N, H), state)``. Runs
    without gradients (the fused LM is frozen)."""
    with torch.no_grad():
        logits, hidden, new_state = lm.step(tokens, _time_major(state))
    return logits, hidden, _time_major(new_state)


class AttentionDecoder(nn.Module):
    """LSTM attention decoder with optional deep/cold fusion (see the module docstring).

    Args:
        vocab_size: outputs ``V`` (id 0 = ``<eos>``/``<sos>``).
        memory_dim: encoder output size.
        config: hyper-parameters.
        fusion: ``none``/``shallow`` (no LM inside the decoder), ``deep`` or ``cold``.
        lm_hidden_size: the LM's hidden size (deep fusion).
    """

    #: teacher forcing in training on the CPU runs the recurrence as :meth:`bptt_recurrence`
    #: (see :meth:`uses_cpu_bptt`); False (on an instance): :meth:`recurrence`, autograd step
    #: by step, the reference that tests and the speed benchmark's anchor run
    cpu_bptt: bool = True

    def __init__(self, vocab_size: int, memory_dim: int, config: AttentionDecoderConfig | None = None,
                 fusion: FusionKind = "none", lm_hidden_size: int | None = None) -> None:
        super().__init__()
        if fusion not in FUSION_KINDS:
            raise ValueError(f"fusion must be one of {FUSION_KINDS}, got {fusion!r}")
        self.config = c = config or AttentionDecoderConfig()
        self.vocab_size = vocab_size
        self.fusion = fusion
        self.embedding = nn.Embedding(vocab_size, c.embed_dim)
        self.cells = nn.ModuleList(
            nn.LSTMCell(c.embed_dim + memory_dim if i == 0 else c.hidden_size, c.hidden_size)
            for i in range(c.num_layers))
        self.attention = Attention(memory_dim, c.hidden_size, c.attention_dim, c.attention,
                                   c.location_channels, c.location_kernel)
        self.dropout = nn.Dropout(c.dropout)
        self.memory_dim = memory_dim
        self.state_dim = c.hidden_size + memory_dim
        self.fusion_layer: ColdFusion | DeepFusion | None = None
        if fusion == "cold":
            self.fusion_layer = ColdFusion(self.state_dim, vocab_size, c.fusion_dim)
        elif fusion == "deep":
            if lm_hidden_size is None:
                raise ValueError("deep fusion needs lm_hidden_size")
            self.fusion_layer = DeepFusion(self.state_dim, lm_hidden_size)
        fused_dim = self.fusion_layer.out_dim if self.fusion_layer is not None else self.state_dim
        self.output = nn.Sequential(nn.Linear(fused_dim, c.output_dim), nn.ReLU(),
                                    nn.Dropout(c.dropout), nn.Linear(c.output_dim, vocab_size))

    @property
    def uses_lm(self) -> bool:
        """Whether each step needs the LM's outputs (deep and cold fusion)."""
        return self.fusion_layer is not None

    def prepare_memory(self, encoded: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """``encoded (B, T, D)``, ``lengths (B,)`` → :class:`Memory` (keys projected once)."""
        lengths = lengths.to(encoded.device)
        return Memory(encoded, self.attention.precompute(encoded),
                      frame_mask(lengths, encoded.shape[1]), lengths)

    def init_state(self, memory: Memory) -> State:
        """Zero LSTM state and context; the first alignment is uniform over valid frames."""
        n, t, d = memory.values.shape
        zeros = memory.values.new_zeros(n, len(self.cells), self.config.hidden_size)
        align = memory.mask.to(memory.values.dtype) / memory.lengths.clamp(min=1)[:, None].to(memory.values.dtype)
        return {"h": zeros, "c": zeros.clone(), "context": memory.values.new_zeros(n, d),
                "alignment": align}

    def step(self, tokens: torch.Tensor, state: State, memory: Memory,
             lm_logits: torch.Tensor | None = None, lm_hidden: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """One step for ``N`` hypotheses.

        Args:
            tokens: ``(N,)`` previous tokens (``<sos>`` = 0 at the start).
            state: from :meth:`init_state` or the previous step.
            memory: :class:`Memory` with ``N`` rows.
            lm_logits: ``(N, V)`` LM logits for this position (cold fusion).
            lm_hidden: ``(N, H)`` LM top hidden state for this position (deep fusion).

        Returns:
            ``(logits (N, V), new state, gate (N, G) or None)``; the new state's ``alignment``
            ``(N, T)`` is this step's attention.
        """
        x = torch.cat([self.dropout(self.embedding(tokens)), state["context"]], dim=-1)
        new_state = self.recur(x, state, memory)
        query = new_state.pop("query")
        logits, gate = self.readout(torch.cat([query, new_state["context"]], dim=-1),
                                    lm_logits, lm_hidden)
        return logits, new_state, gate

    def recur(self, x: torch.Tensor, state: State, memory: Memory,
              location_filters: torch.Tensor | None = None) -> State:
        """The recurrent part of :meth:`step`: ``x (N, E + D)`` = [embedded previous token;
        previous context] through the LSTM cells and the attention. Returns the new state
        (``h``, ``c``, ``context``, ``alignment``) and, under ``"query"``, the top cell's output;
        ``[query; context]`` is the decoder state ``s_t`` that fusion and the output DNN read.
        ``location_filters``: :meth:`Attention.location_filters`, computed once per sequence."""
        lstm = self.lstm_cells(x, state)
        context, alignment = self.attention(lstm["query"], memory.values, memory.keys,
                                            memory.mask, state["alignment"], location_filters)
        return {"h": lstm["h"], "c": lstm["c"], "context": context, "alignment": alignment,
                "query": lstm["query"]}

    def lstm_cells(self, x: torch.Tensor, state: State) -> State:
        """The stacked LSTM cells of :meth:`recur` alone: ``x (N, E + D)`` and ``state["h"]``,
        ``state["c"]`` ``(N, layers, H)`` → ``{"h", "c"}`` (new, same shapes) and ``"query"``
        ``(N, H)``, the top cell's output."""
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = run_recurrence(cell, x, (state["h"][:, i], state["c"][:, i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h) if i + 1 < len(self.cells) else h
        return {"h": torch.stack(hs, dim=1), "c": torch.stack(cs, dim=1), "query": x}

    def check_ilm(self) -> None:
        """Raise ``ValueError`` unless :meth:`ilm_step` is defined (fusion none/shallow)."""
        if self.fusion_layer is not None:
            raise ValueError(f"internal LM estimation (ilm_weight) is defined for fusion none/"
                             f"shallow only, not {self.fusion}: its output DNN reads the LM too")

    def ilm_step(self, tokens: torch.Tensor, state: State | None
                 ) -> tuple[torch.Tensor, State]:
        """One step of the internal LM by zero attention (Meng et al. 2021): the decoder with
        the context zero at every step, i.e. the LSTM cells on ``[E y_{t-1}; 0]`` and the output
        DNN on ``[q_t; 0]``, so ``log_softmax`` of the logits is ``log P_ILM(y_t | y_<t)``.

        Args:
            tokens: ``(N,)`` previous tokens (``<sos>`` = 0 at the start).
            state: ``{"h", "c"}`` ``(N, layers, H)`` from the previous ILM step, or None at
                the start (zero LSTM state, as :meth:`init_state`); independent of the
                decoder's own state, reorderable with :func:`select_state`.

        Returns:
            ``(logits (N, V), new state)``.

        Raises:
            ValueError: with deep or cold fusion, whose output DNN also reads the LM's outputs
                (zeroing the context alone does not remove the LM from it, so the ILM is not
                defined here).
        """
        self.check_ilm()
        n = tokens.shape[0]
        if state is None:
            zeros = self.embedding.weight.new_zeros(n, len(self.cells), self.config.hidden_size)
            state = {"h": zeros, "c": zeros.clone()}
        embedded = self.dropout(self.embedding(tokens))
        no_context = embedded.new_zeros(n, self.memory_dim)
        lstm = self.lstm_cells(torch.cat([embedded, no_context], dim=-1), state)
        query = lstm.pop("query")
        logits, _ = self.readout(torch.cat([query, no_context.to(query.dtype)], dim=-1))
        return logits, lstm

    def readout(self, s: torch.Tensor, lm_logits: torch.Tensor | None = None,
                lm_hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fusion (deep/cold) and the output DNN over decoder states ``s (…, S)`` of any leading
        shape (one step ``(N, S)`` or a whole teacher-forced sequence ``(B, U, S)``): nothing in
        them feeds back into the recurrence. Returns ``(logits (…, V), gate (…, G) or None)``."""
        gate = None
        if self.fusion_layer is not None:
            if (lm_logits if self.fusion == "cold" else lm_hidden) is None:
                raise ValueError(f"{self.fusion} fusion needs the LM's outputs at every step")
            s, gate = self.fusion_layer(s, lm_logits, lm_hidden)
        return self.output(s), gate

    def forward(self, memory: Memory, inputs: torch.Tensor, lm: RNNLanguageModel | None = None,
                sampling_prob: float = 0.0) -> DecoderOutput:
        """Teacher forcing over ``inputs (B, U)`` (``<sos>`` + target ids), with scheduled
        sampling: with probability ``sampling_prob`` (per utterance and step) the previous
        token is the model's own argmax instead of the reference. With deep/cold fusion ``lm``
        (frozen) is run on the same previous tokens.

        Without scheduled sampling only the recurrence (LSTM cells + attention) runs step by
        step: the embeddings, the LM, fusion and the output DNN run once over the whole
        sequence (the same numbers as :meth:`step` by step, far fewer kernel launches). The
        recurrence is :meth:`recurrence` (autograd), or in training :meth:`graphed_recurrence`
        on a GPU with ``config.cuda_graphs`` and :meth:`bptt_recurrence` on the CPU
        (:meth:`uses_cpu_bptt`).

        Returns:
            :class:`DecoderOutput` with ``logits (B, U, V)``.
        """
        if self.uses_lm and lm is None:
            raise ValueError(f"{self.fusion} fusion needs the language model")
        if sampling_prob > 0:
            return self.forward_stepwise(memory, inputs, lm, sampling_prob)
        embedded = self.dropout(self.embedding(inputs))  # (B, U, E)
        if (self.config.cuda_graphs and memory.values.is_cuda and self.training
                and torch.is_grad_enabled()):
            queries, contexts, aligns = self.graphed_recurrence(embedded, memory)
        elif self.uses_cpu_bptt(embedded, memory):
            queries, contexts, aligns = self.bptt_recurrence(embedded, memory)
        else:
            queries, contexts, aligns = self.recurrence(embedded, memory)
        s = torch.cat([queries, contexts.to(queries.dtype)], dim=-1)
        lm_logits = lm_hidden = None
        if self.uses_lm:
            assert lm is not None
            with torch.no_grad():  # the frozen LM over the whole reference prefix at once
                lm_logits, lm_hidden, _ = lm(inputs)
        logits, gates = self.readout(s, lm_logits, lm_hidden)
        return DecoderOutput(logits, aligns, gates)

    def recurrence(self, embedded: torch.Tensor, memory: Memory
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing's recurrence: :meth:`recur` over ``embedded (B, U, E)`` (the
        embedded previous tokens) from :meth:`init_state`, through autograd step by step (the
        reference that :meth:`bptt_recurrence` is tested against). Returns ``(queries (B, U,
        H), contexts (B, U, D), alignments (B, U, T))``."""
        state = self.init_state(memory)
        filters = self.attention.location_filters() if self.attention.kind == "location" else None
        queries, contexts, aligns = [], [], []
        for t in range(embedded.shape[1]):
            state = self.recur(torch.cat([embedded[:, t], state["context"]], dim=-1), state, memory,
                               filters)
            queries.append(state["query"])
            contexts.append(state["context"])
            aligns.append(state["alignment"])
        return torch.stack(queries, dim=1), torch.stack(contexts, dim=1), torch.stack(aligns, dim=1)

    def uses_cpu_bptt(self, embedded: torch.Tensor, memory: Memory) -> bool:
        """Whether :meth:`forward` runs the recurrence as :meth:`bptt_recurrence`: with
        :attr:`cpu_bptt` on, in training with gradients, on the CPU without autocast, with
        ``embedded``, the memory and the LSTM weights all float32 or all float64 (and the
        inter-layer dropout below 1)."""
        dtype = self.cells[0].weight_ih.dtype
        return (self.cpu_bptt and self.training and torch.is_grad_enabled()
                and dtype in (torch.float32, torch.float64)
                and all(x.device.type == "cpu" and x.dtype == dtype
                        for x in (embedded, memory.values, memory.keys, self.cells[0].weight_ih))
                and not torch.is_autocast_enabled("cpu") and self.dropout.p < 1.0)

    def bptt_recurrence(self, embedded: torch.Tensor, memory: Memory
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`recurrence` as one autograd node with a hand-written backward
        (:func:`~speechlab.functional.decoder_bptt.attention_recurrence`): the same outputs and
        gradients, and on the CPU a fraction of autograd's per-step cost (every weight gradient
        is one product over the whole sequence instead of one per step). The inter-layer
        dropout masks (``num_layers > 1``) are drawn here for all steps at once, so the random
        stream differs from :meth:`recurrence`'s (the distribution does not)."""
        att = self.attention
        filters = att.location_filters() if att.kind == "location" else None
        masks = None
        p = self.dropout.p
        if self.training and p > 0 and len(self.cells) > 1:
            b, u, _ = embedded.shape
            masks = embedded.new_empty(len(self.cells) - 1, u, b, self.config.hidden_size)
            masks.bernoulli_(1.0 - p).div_(1.0 - p)
        cells = [LSTMWeights(c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh) for c in self.cells]
        return attention_recurrence(embedded, memory.values, memory.keys, memory.mask,
                                    self.init_state(memory)["alignment"], cells,
                                    AttentionWeights(att.query_proj.weight, att.energy.weight[0],
                                                     filters), masks)

    def graphed_recurrence(self, embedded: torch.Tensor, memory: Memory
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`recurrence` through CUDA graphs (``config.cuda_graphs``): the inputs padded
        by :func:`pad_recurrence_inputs` to bucketed sizes, run in float32 with autocast off
        as the graph of their shape (:class:`~speechlab.nn.cuda_graphs.GraphCache`, captured
        on first use), the outputs cut back to ``(B, U, ·)`` / ``(B, U, T)``."""
        b, u, _ = embedded.shape
        t = memory.values.shape[1]
        cache = self.__dict__.get("_graph_cache")
        if cache is None:  # not a submodule, not in the state dict, dropped on copy (below)
            cache = self.__dict__["_graph_cache"] = GraphCache(lambda: _Recurrence(self))
        with torch.autocast(embedded.device.type, enabled=False):
            queries, contexts, aligns = cache(*pad_recurrence_inputs(embedded, memory))
        return queries[:b, :u], contexts[:b, :u], aligns[:b, :u, :t]

    def __getstate__(self) -> dict[str, object]:
        state = dict(super().__getstate__())
        state.pop("_graph_cache", None)  # CUDA graphs are neither copied nor pickled
        return state

    def forward_stepwise(self, memory: Memory, inputs: torch.Tensor,
                         lm: RNNLanguageModel | None = None, sampling_prob: float = 0.0
                         ) -> DecoderOutput:
        """Teacher forcing through :meth:`step` token by token (LM steps too): what
        :meth:`forward` runs with scheduled sampling, where each step's input may be the
        previous step's argmax; with ``sampling_prob = 0`` the same numbers as :meth:`forward`
        (the speed benchmark's anchor)."""
        b, u = inputs.shape
        state = self.init_state(memory)
        lm_state = None
        logits_out, aligns, gates = [], [], []
        prev = inputs[:, 0]
        for t in range(u):
            if t > 0:
                prev = inputs[:, t]
                if sampling_prob > 0:
                    sampled = logits_out[-1].detach().argmax(dim=-1)
                    use = torch.rand(b, device=inputs.device) < sampling_prob
                    prev = torch.where(use, sampled, prev)
            lm_logits = lm_hidden = None
            if self.uses_lm:
                assert lm is not None
                lm_logits, lm_hidden, lm_state = lm_step(lm, prev, lm_state)
            logits, state, gate = self.step(prev, state, memory, lm_logits, lm_hidden)
            logits_out.append(logits)
            aligns.append(state["alignment"])  # type: ignore[arg-type]
            if gate is not None:
                gates.append(gate)
        return DecoderOutput(torch.stack(logits_out, dim=1), torch.stack(aligns, dim=1),
                             torch.stack(gates, dim=1) if gates else None)


RECURRENCE_BUCKETS = (8, 32, 16)  #: batch, frame and token multiples that graphed inputs are padded to


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_recurrence_inputs(embedded: torch.Tensor, memory: Memory,
                          buckets: tuple[int, int, int] = RECURRENCE_BUCKETS
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`AttentionDecoder.recurrence`'s inputs padded for a CUDA graph and cast to
    float32: ``embedded (B, U, E)`` with zero tokens to a multiple of ``buckets[2]``; the
    memory ``values``/``keys`` with zero frames (outside every ``lengths``, so masked) to a
    multiple of ``buckets[1]``; the batch with zero rows of length 1 (a valid frame, so their
    attention is finite) to a multiple of ``buckets[0]``. The first ``B`` rows, ``U`` tokens
    and ``T`` frames of the recurrence over them are those over the unpadded inputs: each
    token depends only on earlier ones, padded frames get zero attention, padded rows are
    separate utterances. Returns ``(embedded, values, keys, lengths)``."""
    b, u, _ = embedded.shape
    t = memory.values.shape[1]
    pb, pt, pu = (_round_up(n, m) - n for n, m in zip((b, t, u), buckets, strict=True))
    return (F.pad(embedded.float(), (0, 0, 0, pu, 0, pb)),
            F.pad(memory.values.float(), (0, 0, 0, pt, 0, pb)),
            F.pad(memory.keys.float(), (0, 0, 0, pt, 0, pb)),
            F.pad(memory.lengths, (0, pb), value=1))


class _Recurrence(nn.Module):
    """:meth:`AttentionDecoder.recurrence` as a module of ``(embedded, values, keys, lengths)``
    whose parameters are the decoder's LSTM cells and attention (what a CUDA graph captures);
    the decoder itself is held outside the module tree."""

    def __init__(self, decoder: AttentionDecoder) -> None:
        super().__init__()
        self.cells = decoder.cells
        self.attention = decoder.attention
        self.train(decoder.training)
        self.__dict__["decoder"] = decoder

    def forward(self, embedded: torch.Tensor, values: torch.Tensor, keys: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory = Memory(values, keys, frame_mask(lengths, values.shape[1]), lengths)
        return self.__dict__["decoder"].recurrence(embedded, memory)
