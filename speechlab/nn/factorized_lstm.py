"""Topic-compositional LSTM (TC-LSTM) of TCNLM (Wang et al., AISTATS 2018).

Every gate ``g in {i, f, g, o}`` (PyTorch's order) has topic-dependent input and recurrent
weights factorized as ``W_g(t) = W_a,g · diag(W_b,g t) · W_c,g`` and
``U_g(t) = U_a,g · diag(U_b,g t) · U_c,g``, i.e. a mixture of ``T`` experts with mixing weights
``t`` (the document's topic proportions) at the cost of a rank-``F`` factorization:

    gate_g = W_a,g ((W_b,g t) ⊙ (W_c,g x_t)) + U_a,g ((U_b,g t) ⊙ (U_c,g h_{t-1})) + b_g

Shapes (``B`` batch, ``L`` time, ``E`` input, ``H`` hidden, ``F`` factor, ``T`` topics):
``w_c (4, F, E)``, ``w_b (4, F, T)``, ``w_a (4, H, F)``; ``u_c (4, F, H)``, ``u_b (4, F, T)``,
``u_a (4, H, F)``; ``bias (4, H)``.

Speed: the input path of the whole sequence is one batched product (:meth:`input_gates`); only
the recurrence loops over time. The recurrence is a custom autograd function
(:class:`TCLSTMRecurrence`) whose backward computes the weight gradients of all time steps in
one product each (as cuDNN does), so a step is two small products and one fused element-wise
kernel forward and backward; :func:`compile_steps` swaps in ``torch.compile``d step functions,
and :class:`CUDAGraphStep` replays a whole training step as one CUDA graph (no launch overhead).
:func:`tc_lstm_reference` is the plain autograd loop, the oracle in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

LSTMState = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- step functions

def tc_lstm_step(gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor, us: torch.Tensor,
                 u_c_t: torch.Tensor, u_a_t: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One TC-LSTM step.

    The products run in the dtype of ``us``/``u_c_t``/``u_a_t`` (the "product dtype", bf16 under
    autocast), the gates and the state in the dtype of ``gx`` and ``c`` (float32).

    Args:
        gx: ``(4, B, H)`` input-path gate pre-activations (bias included).
        h: ``(B, H)`` previous output (any float dtype; cast to the product dtype).
        c: ``(B, H)`` previous cell.
        us: ``(4, B, F)`` recurrent topic scales ``U_b t``.
        u_c_t: ``(H, 4F)`` = ``u_c.reshape(4F, H).T``.
        u_a_t: ``(4, F, H)`` = ``u_a.transpose(1, 2)``.

    Returns:
        ``h (B, H)``, the same in the product dtype (the next step's input, written by the same
        fused kernel when compiled), ``c (B, H)``, ``hc (4, B, F)`` = ``U_c h_prev`` and the gate
        activations ``act (4, B, H)`` (i, f, g, o after their nonlinearities); the last two are
        kept for backward.
    """
    b = h.shape[0]
    hc = (h.to(u_c_t.dtype) @ u_c_t).view(b, 4, -1).transpose(0, 1)
    g = gx + torch.bmm(hc * us, u_a_t).to(gx.dtype)
    i, f, o = torch.sigmoid(g[0]), torch.sigmoid(g[1]), torch.sigmoid(g[3])
    gg = torch.tanh(g[2])
    c = f * c + i * gg
    h = o * torch.tanh(c)
    return h, h.to(u_c_t.dtype), c, hc, torch.stack((i, f, gg, o))


def tc_lstm_step_backward(dh_out: torch.Tensor, dh_rec: torch.Tensor, dc: torch.Tensor,
                          c_prev: torch.Tensor, c: torch.Tensor, act: torch.Tensor, us: torch.Tensor,
                          u_c: torch.Tensor, u_a: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`tc_lstm_step` for the state path.

    Args:
        dh_out: ``(B, H)`` gradient w.r.t. this step's output from above (float32).
        dh_rec: ``(B, H)`` gradient w.r.t. this step's output through the next step (the
            ``dh_rec_prev`` that step returned; zeros for the last step).
        dc: ``(B, H)`` gradient w.r.t. this step's cell.
        c_prev, c: ``(B, H)`` cell before and after the step.
        act: ``(4, B, H)`` gate activations of the step.
        us: ``(4, B, F)``; u_c: ``(4F, H)`` (flat); u_a: ``(4, H, F)``: in the product dtype.

    Returns:
        ``dh_rec_prev (B, H)`` (product dtype; the previous step's ``dh_rec``), ``dc_prev (B, H)``,
        ``dg (4, B, H)`` gate pre-activation gradients and ``dm (4, B, F)`` the gradient w.r.t.
        ``hc * us`` (both in the product dtype).
    """
    dh = dh_out + dh_rec.to(dh_out.dtype)
    i, f, gg, o = act[0], act[1], act[2], act[3]
    tc = torch.tanh(c)
    dc = dc + dh * o * (1 - tc * tc)
    dg = torch.stack((dc * gg * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - gg * gg),
                      dh * tc * o * (1 - o))).to(u_a.dtype)
    dm = torch.bmm(dg, u_a)
    b = dh.shape[0]
    dh_rec_prev = (dm * us).transpose(0, 1).reshape(b, -1) @ u_c
    return dh_rec_prev, dc * f, dg, dm


_STEP_FNS: dict[str, Callable[..., Any]] = {"forward": tc_lstm_step, "backward": tc_lstm_step_backward}


def compile_steps(enable: bool = True, **compile_kwargs: Any) -> None:
    """Use ``torch.compile``d step functions (``fullgraph``, static shapes by default) in every
    :class:`TCLSTMRecurrence` from now on, or the eager ones with ``enable=False``. Compilation
    happens at the first call per shape."""
    if not enable:
        _STEP_FNS.update(forward=tc_lstm_step, backward=tc_lstm_step_backward)
        return
    compile_kwargs.setdefault("fullgraph", True)
    compile_kwargs.setdefault("dynamic", False)
    _STEP_FNS.update(forward=torch.compile(tc_lstm_step, **compile_kwargs),
                     backward=torch.compile(tc_lstm_step_backward, **compile_kwargs))


class TCLSTMRecurrence(torch.autograd.Function):
    """The recurrence over precomputed input gates; all tensor inputs one floating dtype.

    ``forward(gx (L, 4, B, H), h0 (B, H), c0 (B, H), us (4, B, F), u_c (4, F, H), u_a (4, H, F),
    mm_dtype=None)`` → ``(hs (L, B, H), h (B, H), c (B, H))``. ``mm_dtype`` (e.g. bf16): the
    dtype of the matrix products (float32 accumulation); default the inputs' dtype.

    Backward runs the state path step by step (two products a step) and then computes the
    gradients of ``us``, ``u_c`` and ``u_a`` for all steps in one product each.
    """

    @staticmethod
    def forward(ctx: Any, gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, us: torch.Tensor,
                u_c: torch.Tensor, u_a: torch.Tensor, mm_dtype: torch.dtype | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        step = _STEP_FNS["forward"]
        mm = mm_dtype or gx.dtype
        ctx.in_dtype = us.dtype
        us, u_c, u_a = us.to(mm), u_c.to(mm), u_a.to(mm)
        u_c_t, u_a_t = u_c.reshape(-1, u_c.shape[-1]).t(), u_a.transpose(1, 2)
        h, h_mm, c = h0, h0.to(mm), c0
        hs, h_mms, cs, hcs, acts = [], [h_mm], [c0], [], []
        for t in range(gx.shape[0]):
            h, h_mm, c, hc, act = step(gx[t], h_mm, c, us, u_c_t, u_a_t)
            hs.append(h)
            h_mms.append(h_mm)
            cs.append(c)
            hcs.append(hc)
            acts.append(act)
        ctx.save_for_backward(torch.stack(h_mms[:-1]), torch.stack(cs), torch.stack(hcs),
                              torch.stack(acts), us, u_c, u_a)
        return torch.stack(hs), h, c

    @staticmethod
    def backward(ctx: Any, d_hs: torch.Tensor, d_h: torch.Tensor, d_c: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        h_prev, c_all, hc_all, act_all, us, u_c, u_a = ctx.saved_tensors
        step = _STEP_FNS["backward"]
        u_c_flat = u_c.reshape(-1, u_c.shape[-1])
        n_steps, b = d_hs.shape[0], d_hs.shape[1]
        # grads are materialized (zeros when unused); the final h's grad joins the last step's
        dh_rec, dc = d_h.to(u_c.dtype), d_c
        dgs: list[torch.Tensor] = []
        dms: list[torch.Tensor] = []
        for t in range(n_steps - 1, -1, -1):
            dh_rec, dc, dg_t, dm_t = step(d_hs[t], dh_rec, dc, c_all[t], c_all[t + 1], act_all[t], us,
                                          u_c_flat, u_a)
            dgs.append(dg_t)
            dms.append(dm_t)
        dg = torch.stack(dgs[::-1])  # (L, 4, B, H)
        dm = torch.stack(dms[::-1])  # (L, 4, B, F)
        out = ctx.in_dtype
        d_us = (dm.to(out) * hc_all.to(out)).sum(0)
        # weight gradients of all steps at once: d u_a[g] = sum_{t,b} dg[t,g,b,:]^T (hc*us)[t,g,b,:]
        d_u_a = torch.einsum("lgbh,lgbf->ghf", dg, hc_all * us).to(out)
        dhc = (dm * us).permute(0, 2, 1, 3).reshape(n_steps * b, -1)  # (L*B, 4F)
        d_u_c = (dhc.t() @ h_prev.reshape(n_steps * b, -1)).view_as(u_c).to(out)
        return dg.to(out), dh_rec.to(out), dc, d_us, d_u_c, d_u_a, None


def tc_lstm_reference(gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, us: torch.Tensor,
                      u_c: torch.Tensor, u_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :class:`TCLSTMRecurrence`, differentiated by autograd (the oracle)."""
    u_c_t, u_a_t = u_c.reshape(-1, u_c.shape[-1]).t(), u_a.transpose(1, 2)
    h, c, hs = h0, c0, []
    for t in range(gx.shape[0]):
        h, _, c, _, _ = tc_lstm_step(gx[t], h, c, us, u_c_t, u_a_t)
        hs.append(h)
    return torch.stack(hs), h, c

# --------------------------------------------------------------------------- modules

class TCLSTMLayer(nn.Module):
    """One TC-LSTM layer.

    Args:
        input_size: ``E``.
        hidden_size: ``H``.
        num_topics: ``T``.
        factor_size: ``F`` (rank of each gate's factorization).
        topic_init_std: spread of the initial ``W_b``, ``U_b`` entries around 1. The experts
            must start different for the topic signal to be picked up: on the embedded corpus
            std 0.1 left the topics unused after 1500 steps (test perplexity equal to the plain
            LSTM's), std 1.5 gave 21% lower perplexity (docs/tcnlm.md).
    """

    def __init__(self, input_size: int, hidden_size: int, num_topics: int, factor_size: int,
                 topic_init_std: float = 1.5) -> None:
        super().__init__()
        e, h, t, f = input_size, hidden_size, num_topics, factor_size
        self.topic_init_std = topic_init_std
        self.input_size, self.hidden_size, self.num_topics, self.factor_size = e, h, t, f
        self.w_c = nn.Parameter(torch.empty(4, f, e))
        self.w_b = nn.Parameter(torch.empty(4, f, t))
        self.w_a = nn.Parameter(torch.empty(4, h, f))
        self.u_c = nn.Parameter(torch.empty(4, f, h))
        self.u_b = nn.Parameter(torch.empty(4, f, t))
        self.u_a = nn.Parameter(torch.empty(4, h, f))
        self.bias = nn.Parameter(torch.zeros(4, h))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W_b``/``U_b`` entries ~ N(1, topic_init_std) (the product's mean over experts is
        ``W_a W_c``, whose entries have variance ``1/(3 fan_in)``); forget-gate bias 1."""
        e, h, f = self.input_size, self.hidden_size, self.factor_size
        for a, c, fan_in in ((self.w_a, self.w_c, e), (self.u_a, self.u_c, h)):
            nn.init.uniform_(c, -math.sqrt(3 / fan_in), math.sqrt(3 / fan_in))  # var 1/fan_in
            nn.init.uniform_(a, -1 / math.sqrt(f), 1 / math.sqrt(f))  # var 1/(3F): a·c var 1/(3 fan_in)
        nn.init.normal_(self.w_b, 1.0, self.topic_init_std)
        nn.init.normal_(self.u_b, 1.0, self.topic_init_std)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[1].fill_(1.0)

    def topic_scales(self, topics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``topics (B, T)`` → ``(W_b t, U_b t)``, each ``(4, B, F)``."""
        return (torch.einsum("bt,gft->gbf", topics, self.w_b),
                torch.einsum("bt,gft->gbf", topics, self.u_b))

    def input_gates(self, x: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)``, ``ws (4, B, F)`` → ``(L, 4, B, H)`` input-path pre-activations of the
        whole sequence (bias included), in two batched products."""
        b, n = x.shape[0], x.shape[1]
        xc = (x.reshape(b * n, -1) @ self.w_c.reshape(-1, self.input_size).t()).view(b, n, 4, -1)
        m = xc * ws.transpose(0, 1)[:, None]  # (B, L, 4, F)
        gx = torch.einsum("blgf,ghf->lgbh", m, self.w_a)
        return gx + self.bias[None, :, None, :].to(gx.dtype)

    def forward(self, x: torch.Tensor, topics: torch.Tensor, state: LSTMState | None = None,
                reference: bool = False) -> tuple[torch.Tensor, LSTMState]:
        """``x (B, L, E)``, ``topics (B, T)`` → ``(out (B, L, H), (h (B, H), c (B, H)))``.

        The recurrence keeps its state and gates in float32; under autocast its matrix products
        take the autocast dtype (bf16; on an H200 the compiled + graphed training step at hidden 600
        went from 5.6 to 3.9 ms with bf16 instead of float32 products);
        ``reference=True`` uses :func:`tc_lstm_reference` (float32, autograd) instead."""
        ws, us = self.topic_scales(topics)
        gx = self.input_gates(x, ws)
        dtype = self.u_a.dtype
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size, dtype=dtype)
            state = (zeros, zeros)
        device = x.device.type
        mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else dtype
        with torch.autocast(device_type=device, enabled=False):
            args = (gx.to(dtype), state[0].to(dtype), state[1].to(dtype), us.to(dtype), self.u_c, self.u_a)
            if reference:
                hs, h, c = tc_lstm_reference(*args)
            else:
                hs, h, c = TCLSTMRecurrence.apply(*args, mm_dtype)
        return hs.transpose(0, 1), (h, c)


class TCLSTM(nn.Module):
    """Stacked :class:`TCLSTMLayer` s (batch first), all conditioned on the same topics.

    Args:
        input_size, hidden_size, num_topics, factor_size: see :class:`TCLSTMLayer`.
        num_layers: stacked layers.
        dropout: between layers.
        topic_init_std: see :class:`TCLSTMLayer`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_topics: int, factor_size: int,
                 num_layers: int = 1, dropout: float = 0.0, topic_init_std: float = 1.5) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TCLSTMLayer(input_size if i == 0 else hidden_size, hidden_size, num_topics, factor_size,
                        topic_init_std)
            for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, topics: torch.Tensor, state: Sequence[LSTMState] | None = None
                ) -> tuple[torch.Tensor, list[LSTMState]]:
        """``x (B, L, E)``, ``topics (B, T)`` → ``(out (B, L, H), [per-layer (h, c)])``."""
        states = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, s = layer(x, topics, None if state is None else state[i])
            states.append(s)
        return x, states


class TopicCompositionalLM(nn.Module):
    """TCNLM's language model: embedding → :class:`TCLSTM` (conditioned on topic proportions)
    → linear over the vocabulary.

    Args:
        vocab_size: LM vocabulary.
        num_topics: ``T``.
        embed_dim, hidden_size, factor_size, num_layers: sizes.
        dropout: on embeddings, between layers and before the output layer.
        topic_init_std: see :class:`TCLSTMLayer`.
    """

    def __init__(self, vocab_size: int, num_topics: int, embed_dim: int = 300, hidden_size: int = 600,
                 factor_size: int = 600, num_layers: int = 1, dropout: float = 0.4,
                 topic_init_std: float = 1.5) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = TCLSTM(embed_dim, hidden_size, num_topics, factor_size, num_layers, dropout,
                          topic_init_std)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, topics: torch.Tensor,
                state: Sequence[LSTMState] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[LSTMState]]:
        """``tokens (B, L)``, ``topics (B, T)`` → ``(logits (B, L, V), hidden (B, L, H), state)``."""
        hidden, state = self.rnn(self.dropout(self.embedding(tokens)), topics, state)
        return self.output(self.dropout(hidden)), hidden, state

    def step(self, token: torch.Tensor, topics: torch.Tensor, state: Sequence[LSTMState] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, list[LSTMState]]:
        """One position: ``token (B,)`` → ``(logits (B, V), hidden (B, H), state)``."""
        logits, hidden, state = self(token[:, None], topics, state)
        return logits[:, 0], hidden[:, 0], state


# --------------------------------------------------------------------------- CUDA graphs

class CUDAGraphStep:
    """A whole training step (forward, backward, optimizer) captured once as a CUDA graph and
    replayed: no per-kernel launch overhead, which dominates a small-batch recurrence.

    ``step_fn(*static_inputs) -> loss`` must do ``loss.backward()`` and ``optimizer.step()``
    itself, allocate no new parameters or optimizer state after warm-up (use an optimizer with
    ``capturable=True``), and do no host synchronization. Calling the object copies the inputs
    into the static buffers (same shapes and dtypes) and replays; it returns the static loss
    tensor (read it after the call; it is overwritten by the next).
    """

    def __init__(self, step_fn: Callable[..., torch.Tensor], example_inputs: Sequence[torch.Tensor],
                 warmup: int = 3) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDAGraphStep needs CUDA")
        self.static_inputs = [x.clone() for x in example_inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step_fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = step_fn(*self.static_inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for dst, src in zip(self.static_inputs, inputs, strict=True):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_loss
