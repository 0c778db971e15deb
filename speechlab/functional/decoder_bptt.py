"""Teacher forcing's attention-decoder recurrence with a hand-written backward (BPTT).

The recurrence is :meth:`speechlab.nn.decoder.AttentionDecoder.recurrence`: for ``t = 0 … U−1``,
from ``h = c = 0``, ``ctx_{−1} = 0`` and a given first alignment ``α_{−1}``::

    x⁰_t           = [e_t; ctx_{t−1}]                         # input feeding
    h^l_t, c^l_t   = LSTMCell_l(x^l_t, h^l_{t−1}, c^l_{t−1})   # gate order i, f, g, o
    x^{l+1}_t      = m^l_t ∘ h^l_t                             # inter-layer dropout mask (or 1)
    q_t            = h^{L−1}_t                                 # the query
    z_t            = keys + W_q q_t  [+ windows(α_{t−1}) F]    # (B, T, A); location attention
    α_t            = softmax over the valid frames of tanh(z_t) w
    ctx_t          = α_t values                                # (B, D)

``windows(α)`` are the ``K``-frame windows of the zero-padded alignment and ``F (K, A)`` the
composed location filter (:meth:`speechlab.nn.attention.Attention.location_filters`).

Why: autograd records some thirty nodes per step and its backward forms every weight gradient
at every step — an outer product the size of the weight, accumulated into it, ``U`` times —
which on the CPU costs more than the arithmetic that matters. Here :func:`recurrence_forward`
runs the loop without autograd and keeps what the backward needs (:class:`Tape`);
:func:`recurrence_backward` runs the loop in reverse computing only the gradients that flow from
step to step (hidden and cell states, context, previous alignment) and keeps the per-step gate
gradients: the LSTM weights', ``W_q``'s and the embedded inputs' gradients are then one product
each over all ``U·B`` rows; those of the keys, ``w`` and ``F`` (which need the ``(B, T, A)``
energy gradient of every step) are accumulated step by step into small buffers instead of
keeping ``U`` such gradients. :func:`attention_recurrence` ties the two together as an autograd
function.

What else makes the steps cheap on the CPU (none of it changes the function computed):
``tanh`` of the energies as ``2σ(2z) − 1`` with the constant dropped by the softmax
(:func:`_doubled`); the energies recomputed in the backward rather than kept (``U·B·T·A``
numbers, whose first touch costs more than the recomputation); each layer's input and previous
hidden state as one row of :attr:`Tape.states`, so that a step's gates are one product
(:class:`StepProduct`); per-step views made once (:func:`_steps`).

Shapes: ``B`` utterances, ``U`` tokens, ``T`` frames, ``E`` embedding size, ``D`` memory
(context) size, ``H`` LSTM units, ``A`` attention energy size, ``K`` location kernel width,
``L`` layers. The tape is time-major (``(U, B, …)``), so that every step's slice is contiguous.

Imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "AttentionWeights",
    "LSTMWeights",
    "RecurrenceGrads",
    "StepProduct",
    "Tape",
    "attention_recurrence",
    "location_windows",
    "location_windows_backward",
    "recurrence_backward",
    "recurrence_forward",
]


class LSTMWeights(NamedTuple):
    """One ``nn.LSTMCell``'s parameters (gate order i, f, g, o): ``w_ih (4H, I)``,
    ``w_hh (4H, H)``, ``b_ih (4H,)``, ``b_hh (4H,)``; layer 0's input is ``I = E + D``
    (``[e_t; ctx_{t−1}]``), a higher layer's ``I = H``."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor


class AttentionWeights(NamedTuple):
    """The attention's parameters in the recurrence: ``query (A, H)`` (``W_q``), ``energy
    (A,)`` (``w``), ``filters (K, A)`` (the composed location filter ``F``; None for content
    attention). The keys' projection ``W_k k + b`` is applied before (the ``keys`` input)."""

    query: torch.Tensor
    energy: torch.Tensor
    filters: torch.Tensor | None


class Tape(NamedTuple):
    """What :func:`recurrence_forward` keeps for :func:`recurrence_backward` (time-major;
    lists have one entry per layer). The energies ``σ(2 z_t)`` are not kept (``U·B·T·A``
    numbers): the backward recomputes each step's from ``query_proj`` and the alignments.

    Attributes:
        states: ``(U+1, B, I + H)``: row ``t`` is what layer ``l``'s gates at step ``t`` read
            besides the embedded token, ``[ctx_{t−1}; h⁰_{t−1}]`` for layer 0 (``I = D``),
            ``[x^l_t; h^l_{t−1}]`` above (``I = H``; row ``U``'s ``x`` unused): one product
            with ``[W_ih | W_hh]`` per step. ``h``, ``inputs`` and ``contexts`` are views of them.
        h: ``(U+1, B, H)``: ``h[l][t] = h^l_{t−1}`` (row 0 zero); ``h[L−1][1:]`` are the queries.
        c: ``(U+1, B, H)``: ``c[l][t] = c^l_{t−1}`` (row 0 zero).
        gates: ``(U, B, 4H)``: the activations ``σ(i), σ(f), tanh(g), σ(o)``.
        tanh_c: ``(U, B, H)``: ``tanh(c^l_t)``.
        inputs: ``(U, B, H)`` for layers ``l ≥ 1``: ``x^l_t`` (layer 0's entry is None: its
            input is the embedded tokens and ``contexts``).
        query_proj: ``(U, B, A)``: ``2 W_q q_t``.
        padded_alignments: ``(U+1, B, T + 2p)``: ``α_{t−1}`` at ``[t]`` (row 0 the first
            alignment) between ``p = K//2`` zero frames on each side (``p = 0`` for content
            attention), what :func:`location_windows` reads.
        alignments: ``(U+1, B, T)``: the view of ``padded_alignments`` without the padding.
        contexts: ``(U+1, B, D)``: ``contexts[t] = ctx_{t−1}`` (row 0 zero).
    """

    states: list[torch.Tensor]
    h: list[torch.Tensor]
    c: list[torch.Tensor]
    gates: list[torch.Tensor]
    tanh_c: list[torch.Tensor]
    inputs: list[torch.Tensor | None]
    query_proj: torch.Tensor
    padded_alignments: torch.Tensor
    alignments: torch.Tensor
    contexts: torch.Tensor


class RecurrenceGrads(NamedTuple):
    """What :func:`recurrence_backward` returns: the gradients of ``embedded (B, U, E)``,
    ``values (B, T, D)``, ``keys (B, T, A)``, of each cell's weights and of the attention's
    weights (``filters`` None for content attention)."""

    embedded: torch.Tensor
    values: torch.Tensor
    keys: torch.Tensor
    cells: list[LSTMWeights]
    attention: AttentionWeights


def location_windows(alignment: torch.Tensor, kernel: int) -> torch.Tensor:
    """The ``kernel``-frame windows of the zero-padded alignment (``kernel`` odd, centred):
    ``(…, T) → (…, T, K)`` (a view of the padded copy); ``windows(α) @ F`` are the location
    features, as :meth:`speechlab.nn.attention.Attention.location_features` computes them."""
    return F.pad(alignment, (kernel // 2, kernel // 2)).unfold(-1, kernel, 1)


def location_windows_backward(grad_windows: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`location_windows` (overlap-add), from the windows' gradient laid
    out ``(K, B, T)`` (``[k, b, j]``: that of window ``j``'s ``k``-th frame, i.e. of frame
    ``j + k − K//2``), to ``(B, T)``: ``out[b, i] = Σ_k grad[k, b, i − k + K//2]`` over the
    ``k`` that keep ``i − k + K//2`` inside ``[0, T)``.

    One strided view of the zero-padded gradient and a sum: padded by ``p = K//2`` frames on
    both sides (rows of ``W = T + 2p``), the ``K`` terms of ``out[b, i]`` lie ``B·W − 1`` apart
    from offset ``b·W + i + 2p``."""
    k, b, t = grad_windows.shape
    p = k // 2
    padded = F.pad(grad_windows, (p, p)).contiguous()
    w = t + 2 * p
    terms = padded.as_strided((b, t, k), (w, 1, b * w - 1), padded.storage_offset() + 2 * p)
    return terms.sum(-1)


def _doubled(keys: torch.Tensor, att: AttentionWeights) -> tuple[torch.Tensor, AttentionWeights]:
    """``2 keys`` and ``2 W_q, 2 w, 2 F``, from which the steps form ``2 z_t``.

    ``tanh(z) = 2σ(2z) − 1``, and the softmax ignores the constant ``−Σ_a w_a`` that this adds
    to every score of an utterance, so ``α_t = softmax(σ(2 z_t) · 2w)`` exactly: the steps take
    one sigmoid, several times faster than tanh on the CPU. The backward uses
    ``tanh'(z) = 4σ'(2z)`` and ``Σ_j ds_j tanh(z_j) = 2 Σ_j ds_j σ(2 z_j)`` (a softmax's input
    gradient ``ds`` sums to zero over the frames)."""
    return 2 * keys, AttentionWeights(2 * att.query, 2 * att.energy,
                                      None if att.filters is None else 2 * att.filters)


def _energies(query_proj: torch.Tensor, keys2: torch.Tensor, padded_alignment: torch.Tensor,
              filters2: torch.Tensor | None, out: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step's ``σ(2 z_t)``, written into ``out (B, T, A)``, from ``query_proj (B, A)``
    ``= 2 W_q q_t``, ``keys2 = 2 keys`` and, for location attention (``filters2 = 2F``), the padded
    ``α_{t−1} (B, T + 2p)``. Returns it and the ``(B·T, K)`` windows of ``α_{t−1}`` (None for
    content attention)."""
    z2 = torch.add(keys2, query_proj[:, None, :], out=out)
    windows = None
    if filters2 is not None:  # + windows(α_{t−1}) 2F, one product over the B·T windows
        k, a = filters2.shape
        windows = padded_alignment.unfold(-1, k, 1).reshape(-1, k)
        z2.view(-1, a).addmm_(windows, filters2)
    return z2.sigmoid_(), windows


class StepProduct:
    """``x ↦ x Wᵀ`` (``(N, K) → (N, M)``) for a weight ``W (M, K)`` that every step of a loop
    multiplies a few rows by: ``torch.mm`` against ``Wᵀ`` made contiguous once (public torch
    only; torch's private pre-packed oneDNN product was about twice as fast at 4–10 rows, some
    5 % of the recurrence, and was left out so as not to depend on private operators)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight_t = weight.t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, self.weight_t)


def _steps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``x``'s rows along dim 0, as views made at once: the loops take a step's slices from
    these tuples, since indexing a tensor at every step costs about as much as the small ops."""
    return x.unbind(0)


def _lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor, acts: torch.Tensor,
               parts: tuple[torch.Tensor, ...], c: torch.Tensor, tanh_c: torch.Tensor,
               h: torch.Tensor) -> None:
    """One LSTM cell from its pre-activations ``gates (B, 4H)`` and ``c_prev (B, H)``, written
    into ``acts (B, 4H)`` (``σ(i), σ(f), tanh(g), σ(o)``; ``parts`` its four ``(B, H)`` views),
    ``c``, ``tanh_c`` and ``h`` ``(B, H)``."""
    i, f, g, o = parts
    n = c.shape[-1]
    torch.sigmoid(gates, out=acts)
    torch.tanh(gates[:, 2 * n:3 * n], out=g)
    torch.mul(f, c_prev, out=c).addcmul_(i, g)
    torch.tanh(c, out=tanh_c)
    torch.mul(o, tanh_c, out=h)


def recurrence_forward(embedded: torch.Tensor, values: torch.Tensor, keys: torch.Tensor,
                       mask: torch.Tensor, first_alignment: torch.Tensor,
                       cells: Sequence[LSTMWeights], att: AttentionWeights,
                       dropout_masks: torch.Tensor | None = None) -> Tape:
    """The recurrence of the module docstring, without autograd.

    Args:
        embedded: ``(B, U, E)`` the embedded previous tokens ``e_t``.
        values: ``(B, T, D)`` the memory (encoder outputs) that contexts average.
        keys: ``(B, T, A)`` the projected memory ``W_k k + b``.
        mask: ``(B, T)`` bool, True on valid frames (at least one per utterance).
        first_alignment: ``(B, T)`` ``α_{−1}`` (read by location attention only).
        cells: ``L`` LSTM cells' weights, bottom first.
        att: the attention's weights.
        dropout_masks: ``(L−1, U, B, H)`` the inter-layer masks ``m^l_t`` (already scaled by
            ``1/(1−p)``), or None for none.

    Returns:
        The :class:`Tape`: the outputs are ``h[L−1][1:]`` (queries), ``contexts[1:]`` and
        ``alignments[1:]``.
    """
    b, u, e = embedded.shape
    t, d = values.shape[1:]
    n, a = cells[0].w_hh.shape[1], keys.shape[-1]
    new = embedded.new_empty
    p = att.filters.shape[0] // 2 if att.filters is not None else 0

    # layer l's [input; h^l_{t−1}] rows (see Tape.states), h^l and the inputs as views of them
    widths = [d] + [n] * (len(cells) - 1)
    states = [new(u + 1, b, i + n) for i in widths]
    for rows in states:
        rows[0] = 0
    h = [rows[..., i:] for rows, i in zip(states, widths, strict=True)]
    contexts = states[0][..., :d]
    inputs: list[torch.Tensor | None] = [None] + [rows[:-1, :, :n] for rows in states[1:]]
    c = [embedded.new_zeros(u + 1, b, n) for _ in cells]
    gates = [new(u, b, 4 * n) for _ in cells]
    tanh_c = [new(u, b, n) for _ in cells]
    query_proj = new(u, b, a)
    padded_alignments = embedded.new_zeros(u + 1, b, t + 2 * p)
    alignments = padded_alignments[..., p:p + t]
    alignments[0] = first_alignment
    score_bias = torch.zeros_like(first_alignment).masked_fill_(~mask, float("-inf"))
    keys2, att2 = _doubled(keys, att)
    energies = torch.empty_like(keys)  # one step's σ(2 z_t), reused

    bottom = cells[0]
    # layer 0's input-to-hidden product of the embedded tokens (and both biases), all steps at once
    emb_gates = torch.addmm(bottom.b_ih + bottom.b_hh, embedded.transpose(0, 1).reshape(u * b, e),
                            bottom.w_ih[:, :e].t()).view(u, b, 4 * n)
    biases = [cell.b_ih + cell.b_hh for cell in cells]
    products = [StepProduct(torch.cat([cell.w_ih[:, -i:], cell.w_hh], dim=1))
                for cell, i in zip(cells, widths, strict=True)]
    query_t, score_bias = att2.query.t(), score_bias.view(-1)
    state_rows, h_rows, c_rows = ([_steps(x) for x in xs] for xs in (states, h, c))
    act_rows, tanh_c_rows = [_steps(x) for x in gates], [_steps(x) for x in tanh_c]
    part_rows = [list(zip(*map(_steps, x.view(u, b, 4, n).unbind(2)), strict=True))
                 for x in gates]
    input_rows = [_steps(x) if x is not None else () for x in inputs]
    mask_rows = [_steps(m) for m in dropout_masks] if dropout_masks is not None else None
    emb_rows, qp_rows, padded_rows = map(_steps, (emb_gates, query_proj, padded_alignments))
    align_rows, context_rows = _steps(alignments[:, :, None]), _steps(contexts[:, :, None])
    for step in range(u):
        for layer, product in enumerate(products):
            if layer > 0:  # x^l_t = m^{l−1}_t ∘ h^{l−1}_t
                below, x = h_rows[layer - 1][step + 1], input_rows[layer][step]
                if mask_rows is None:
                    x.copy_(below)
                else:
                    torch.mul(below, mask_rows[layer - 1][step], out=x)
            pre = product(state_rows[layer][step])
            pre += emb_rows[step] if layer == 0 else biases[layer]
            _lstm_cell(pre, c_rows[layer][step], act_rows[layer][step], part_rows[layer][step],
                       c_rows[layer][step + 1], tanh_c_rows[layer][step], h_rows[layer][step + 1])
        qp = torch.mm(h_rows[-1][step + 1], query_t, out=qp_rows[step])
        sig, _ = _energies(qp, keys2, padded_rows[step], att2.filters, energies)
        scores = torch.addmv(score_bias, sig.view(-1, a), att2.energy).view(b, 1, t)
        alignment = align_rows[step + 1]  # (B, 1, T)
        alignment.copy_(scores.softmax(dim=-1))
        torch.bmm(alignment, values, out=context_rows[step + 1])
    return Tape(states, h, c, gates, tanh_c, inputs, query_proj, padded_alignments, alignments,
                contexts)


def _cell_backward_factors(tape: Tape, layer: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's cell backward, the factors of every step at once: ``P (U, B, 3, H)``,
    ``P_o``, ``R`` and ``σ(f)`` ``(U, B, H)``, such that with ``dh`` the gradient of ``h_t``
    and ``dc = dc_next + dh ∘ R`` the total gradient of ``c_t``, the gate pre-activations'
    gradient is ``[dc ∘ P; dh ∘ P_o]`` and that of ``c_{t−1}`` is ``dc ∘ σ(f)``::

        P   = [tanh(g) σ'(i), c_{t−1} σ'(f), σ(i) tanh'(g)]
        P_o = tanh(c_t) σ'(o),   R = σ(o) tanh'(c_t)
    """
    i, f, g, o = tape.gates[layer].chunk(4, dim=-1)
    tc = tape.tanh_c[layer]
    p = torch.stack([g * i * (1 - i), tape.c[layer][:-1] * f * (1 - f), i * (1 - g * g)], dim=2)
    return p, tc * o * (1 - o), o * (1 - tc * tc), f


def recurrence_backward(tape: Tape, embedded: torch.Tensor, values: torch.Tensor,
                        keys: torch.Tensor, cells: Sequence[LSTMWeights], att: AttentionWeights,
                        dropout_masks: torch.Tensor | None, grad_queries: torch.Tensor | None,
                        grad_contexts: torch.Tensor | None,
                        grad_alignments: torch.Tensor | None) -> RecurrenceGrads:
    """Gradients of :func:`recurrence_forward`'s inputs and weights.

    The loop runs the steps in reverse and carries the gradients of ``h^l_t``, ``c^l_t``,
    ``ctx_t`` and ``α_t``; it keeps the gate pre-activations' gradients ``(U, B, 4H)``, those
    of ``W_q q_t`` ``(U, B, A)`` and of ``ctx_t`` ``(U, B, D)``, from which the LSTM weights',
    ``W_q``'s, the embedded inputs' and the values' gradients are one product each after the
    loop. The energies' gradient ``dz_t (B, T, A)`` is not kept (``U`` times the size of the
    keys): each step adds it into the gradients of the keys, ``w`` and ``F`` (small
    accumulators that stay in cache).

    Args:
        tape: from :func:`recurrence_forward` on these inputs and weights.
        embedded, values, keys, cells, att, dropout_masks: as given to
            :func:`recurrence_forward`.
        grad_queries: ``(B, U, H)``, grad_contexts: ``(B, U, D)``, grad_alignments:
            ``(B, U, T)``: the gradients of the outputs (None: zero).

    Returns:
        :class:`RecurrenceGrads`.
    """
    b, u, e = embedded.shape
    t, d = values.shape[1:]
    a = keys.shape[-1]
    n = cells[0].w_hh.shape[1]
    top = len(cells) - 1
    kernel = att.filters.shape[0] if att.filters is not None else 0
    new = embedded.new_empty
    # time-major views of the outputs' gradients
    g_q = grad_queries.transpose(0, 1) if grad_queries is not None else None
    g_ctx = grad_contexts.transpose(0, 1) if grad_contexts is not None else None
    g_align = grad_alignments.transpose(0, 1) if grad_alignments is not None else None

    factors = [_cell_backward_factors(tape, layer) for layer in range(len(cells))]
    widths = [d] + [n] * (len(cells) - 1)
    # dg ↦ the gradient of layer l's state row [input; h^l_{t−1}] (Tape.states)
    products = [StepProduct(torch.cat([cell.w_ih[:, -i:], cell.w_hh], dim=1).t())
                for cell, i in zip(cells, widths, strict=True)]
    keys2, att2 = _doubled(keys, att)
    energy4 = 4 * att.energy
    energies, d_z = torch.empty_like(keys), torch.empty_like(keys)  # one step's, reused
    # kept per step, for the weight gradients after the loop
    d_gates = [new(u, b, 4 * n) for _ in cells]
    d_query_proj = new(u, b, a)  # of W_q q_t
    d_ctx = new(u, b, d)  # the total gradient of ctx_t, written by step t + 1
    d_ctx[-1] = 0 if g_ctx is None else g_ctx[-1]
    # accumulated over the steps
    d_keys = torch.zeros_like(keys)
    d_energy_half = att.energy.new_zeros(a)  # Σ ds σ(2z): half the gradient of w
    d_filters = torch.zeros_like(att.filters) if att.filters is not None else None
    # what flows from step t+1 to step t
    d_h = [embedded.new_zeros(b, n) for _ in cells]  # of h^l_t through W_hh
    d_c = [embedded.new_zeros(b, n) for _ in cells]  # of c^l_t through the forget gate
    d_align_next = embedded.new_zeros(b, 1, t)  # of α_t through the location features
    # per-step views (see _steps), (B, 1, ·) where a batched product wants them
    qp_rows, padded_rows = _steps(tape.query_proj), _steps(tape.padded_alignments)
    align_rows = _steps(tape.alignments[:, :, None])
    d_qp_rows, d_ctx_rows, d_ctx_rows3 = map(_steps, (d_query_proj, d_ctx, d_ctx[:, :, None]))
    factor_rows = [[_steps(x) for x in layer_factors] for layer_factors in factors]
    d_gate_rows = [_steps(x) for x in d_gates]
    d_gate_first = [_steps(x.view(u, b, 4, n)[:, :, :3]) for x in d_gates]  # i, f, g parts
    d_gate_o = [_steps(x[..., 3 * n:]) for x in d_gates]
    g_q_rows = _steps(g_q) if g_q is not None else None
    g_ctx_rows = _steps(g_ctx) if g_ctx is not None else None
    g_align_rows = _steps(g_align[:, :, None]) if g_align is not None else None
    mask_rows = [_steps(m) for m in dropout_masks] if dropout_masks is not None else None
    values_t, d_z_flat = values.transpose(1, 2), d_z.view(-1, a)
    for step in reversed(range(u)):
        sig, windows = _energies(qp_rows[step], keys2, padded_rows[step], att2.filters,
                                 energies)  # recomputed
        d_align = d_align_next if g_align_rows is None else d_align_next + g_align_rows[step]
        # + values · d_ctx, as a row vector times (D, T) (a column-vector bmm is slow on the CPU)
        d_align = torch.baddbmm(d_align, d_ctx_rows3[step], values_t)
        alignment = align_rows[step + 1]
        ds = torch._softmax_backward_data(d_align, alignment, -1, alignment.dtype)  # (B, 1, T)
        d_energy_half.addmv_(sig.view(-1, a).t(), ds.view(-1))
        # scores = σ(2z)·2w: dz = ds ⊗ 4w ∘ σ'(2z)
        torch.mul(ds.view(b, t, 1), energy4, out=d_z)
        torch.ops.aten.sigmoid_backward.grad_input(d_z, sig, grad_input=d_z)
        d_keys += d_z
        d_qp = torch.sum(d_z, dim=1, out=d_qp_rows[step])
        if windows is not None and att.filters is not None and d_filters is not None:
            d_filters.addmm_(windows.t(), d_z_flat)
            if step > 0:  # α_{−1} is an input without a gradient
                grad_windows = torch.mm(att.filters, d_z_flat.t())  # (K, B·T)
                d_align_next = location_windows_backward(grad_windows.view(kernel, b, t))
                d_align_next = d_align_next.view(b, 1, t)
        dh = torch.addmm(d_h[top], d_qp, att.query)
        if g_q_rows is not None:
            dh += g_q_rows[step]
        for layer in reversed(range(len(cells))):
            p, p_o, r, forget = (x[step] for x in factor_rows[layer])
            dc = torch.addcmul(d_c[layer], dh, r)
            torch.mul(dc[:, None, :], p, out=d_gate_first[layer][step])
            torch.mul(dh, p_o, out=d_gate_o[layer][step])
            d_c[layer] = dc.mul_(forget)
            d_state = products[layer](d_gate_rows[layer][step])
            d_input, d_h[layer] = d_state[:, :widths[layer]], d_state[:, widths[layer]:]
            if layer > 0:
                if mask_rows is not None:
                    d_input = d_input * mask_rows[layer - 1][step]
                dh = d_h[layer - 1] + d_input
            elif step > 0:  # the gradient of ctx_{t−1}: through the input feeding (+ its own)
                if g_ctx_rows is None:
                    d_ctx_rows[step - 1].copy_(d_input)
                else:
                    torch.add(d_input, g_ctx_rows[step - 1], out=d_ctx_rows[step - 1])

    rows = u * b
    cell_grads = []
    for layer in range(len(cells)):
        dg = d_gates[layer].view(rows, 4 * n)
        d_w_hh = dg.t() @ tape.h[layer][:-1].reshape(rows, n)
        if layer == 0:
            x = torch.cat([embedded.transpose(0, 1), tape.contexts[:-1]], dim=-1)
        else:
            x = tape.inputs[layer]
            assert x is not None
        d_w_ih = dg.t() @ x.reshape(rows, -1)
        d_b = dg.sum(0)
        cell_grads.append(LSTMWeights(d_w_ih, d_w_hh, d_b, d_b.clone()))
    d_embedded = d_gates[0].view(rows, 4 * n) @ cells[0].w_ih[:, :e]
    d_query = d_query_proj.view(rows, a).t() @ tape.h[top][1:].reshape(rows, n)
    d_values = torch.bmm(tape.alignments[1:].permute(1, 2, 0), d_ctx.transpose(0, 1))
    return RecurrenceGrads(d_embedded.view(u, b, e).transpose(0, 1), d_values, d_keys, cell_grads,
                           AttentionWeights(d_query, 2 * d_energy_half, d_filters))


class _AttentionRecurrence(torch.autograd.Function):
    """:func:`recurrence_forward` forward, :func:`recurrence_backward` backward (the inputs
    flattened: the cells' weights last, four per cell)."""

    @staticmethod
    def forward(ctx: Any, embedded: torch.Tensor, values: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor, first_alignment: torch.Tensor,
                dropout_masks: torch.Tensor | None, query: torch.Tensor, energy: torch.Tensor,
                filters: torch.Tensor | None, *cell_weights: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cells = _cells(cell_weights)
        tape = recurrence_forward(embedded, values, keys, mask, first_alignment, cells,
                                  AttentionWeights(query, energy, filters), dropout_masks)
        ctx.set_materialize_grads(False)  # unused outputs' gradients come as None
        ctx.layers = len(cells)
        ctx.save_for_backward(embedded, values, keys, dropout_masks, query, energy, filters,
                              *cell_weights, *tape.states, *tape.h, *tape.c, *tape.gates,
                              *tape.tanh_c, *tape.inputs, *tape[6:])
        return (tape.h[-1][1:].transpose(0, 1).contiguous(),
                tape.contexts[1:].transpose(0, 1).contiguous(),
                tape.alignments[1:].transpose(0, 1).contiguous())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_queries: torch.Tensor | None, grad_contexts: torch.Tensor | None,
                 grad_alignments: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        layers = ctx.layers
        embedded, values, keys, dropout_masks, query, energy, filters, *rest = ctx.saved_tensors
        cells, rest = _cells(rest[:4 * layers]), rest[4 * layers:]
        states, h, c, gates, tanh_c, inputs = (list(rest[i * layers:(i + 1) * layers])
                                               for i in range(6))
        tape = Tape(states, h, c, gates, tanh_c, inputs, *rest[6 * layers:])
        grads = recurrence_backward(tape, embedded, values, keys, cells,
                                    AttentionWeights(query, energy, filters), dropout_masks,
                                    grad_queries, grad_contexts, grad_alignments)
        att = grads.attention
        return (grads.embedded, grads.values, grads.keys, None, None, None, att.query, att.energy,
                att.filters, *(g for cell in grads.cells for g in cell))


def _cells(weights: Sequence[torch.Tensor]) -> list[LSTMWeights]:
    return [LSTMWeights(*weights[i:i + 4]) for i in range(0, len(weights), 4)]


def attention_recurrence(embedded: torch.Tensor, values: torch.Tensor, keys: torch.Tensor,
                         mask: torch.Tensor, first_alignment: torch.Tensor,
                         cells: Sequence[LSTMWeights], att: AttentionWeights,
                         dropout_masks: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher forcing's recurrence (the module docstring) as one autograd node whose backward
    is :func:`recurrence_backward`. Arguments as :func:`recurrence_forward`; every float
    tensor of one dtype (float32 or float64), on the CPU or not (it is written for the CPU,
    where autograd's per-step overhead dominates). Not twice differentiable.

    Returns:
        ``(queries (B, U, H), contexts (B, U, D), alignments (B, U, T))``, as
        :meth:`speechlab.nn.decoder.AttentionDecoder.recurrence`.
    """
    return _AttentionRecurrence.apply(embedded, values, keys, mask, first_alignment,
                                      dropout_masks, att.query, att.energy, att.filters,
                                      *(w for cell in cells for w in cell))
