"""A fused TC-LSTM forward step in Triton: the topic-scaled recurrent product, the gates and the
cell in one kernel.

:func:`~speechlab.nn.factorized_lstm.tc_lstm_step` runs, per time step, ``hc = h @ U_c^T``
(one GEMM), ``hc * us`` (pointwise), the per-gate product with ``U_a`` (a batched GEMM), and
the LSTM cell (pointwise): four kernels even when compiled. :func:`tc_lstm_step_triton` keeps
the first GEMM (cuBLAS) and does the other three in one Triton kernel: each program owns a
``(BLOCK_B, BLOCK_H)`` tile of hidden units and accumulates all four gates' products over the
factor dimension (``tl.dot``, fp32 accumulators, the ``us`` scaling applied as the tiles are
loaded), then applies the cell to the tile. It differs from the eager step only in rounding: the
gate products stay fp32 (the eager ``bmm`` rounds them to the product dtype). fp32 products are
multiplied in full fp32 (``input_precision="ieee"``, as torch's matmul by default), not TF32.

With ``TRITON_INTERPRET=1`` in the environment before triton is imported, the kernel runs on
CPU tensors in Triton's interpreter (the tests do, in a subprocess; bf16 is not supported there,
fp16 and fp32 are). :func:`use_triton_forward` swaps it into every
:class:`~speechlab.nn.factorized_lstm.TCLSTMRecurrence` (the backward stays as it is).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gates_cell(hc_ptr, us_ptr, ua_ptr, gx_ptr, c_ptr, h_ptr, hlp_ptr, cn_ptr, act_ptr,  # noqa: ANN001, ANN201
                B, H, F,
                s_hc_g, s_hc_b, s_hc_f, s_us_g, s_us_b, s_us_f, s_ua_g, s_ua_f, s_ua_h,
                s_gx_g, s_gx_b, s_gx_h,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr):
    """The kernel: gates ``g_k = gx_k + (hc_k * us_k) @ U_a_k^T``
    for a ``(BLOCK_B, BLOCK_H)`` tile, then ``c' = σ(g_f) c + σ(g_i) tanh(g_g)``, ``h' = σ(g_o)
    tanh(c')`` (tanh as ``2σ(2x) - 1``); writes h', h' in the product dtype, c' and the four
    activations."""
    pb, ph = tl.program_id(0), tl.program_id(1)
    rb = pb * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = ph * BLOCK_H + tl.arange(0, BLOCK_H)
    mb, mh = rb < B, rh < H
    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        rf = f0 + tl.arange(0, BLOCK_F)
        mf = rf < F
        m_bf = mb[:, None] & mf[None, :]
        m_fh = mf[:, None] & mh[None, :]
        x_off = rb[:, None] * s_hc_b + rf[None, :] * s_hc_f
        s_off = rb[:, None] * s_us_b + rf[None, :] * s_us_f
        w_off = rf[:, None] * s_ua_f + rh[None, :] * s_ua_h
        x = tl.load(hc_ptr + x_off, mask=m_bf, other=0.0) * tl.load(us_ptr + s_off, mask=m_bf, other=0.0)
        w = tl.load(ua_ptr + w_off, mask=m_fh, other=0.0)
        acc_i += tl.dot(x.to(w.dtype), w, input_precision="ieee")
        x = (tl.load(hc_ptr + s_hc_g + x_off, mask=m_bf, other=0.0)
             * tl.load(us_ptr + s_us_g + s_off, mask=m_bf, other=0.0))
        w = tl.load(ua_ptr + s_ua_g + w_off, mask=m_fh, other=0.0)
        acc_f += tl.dot(x.to(w.dtype), w, input_precision="ieee")
        x = (tl.load(hc_ptr + 2 * s_hc_g + x_off, mask=m_bf, other=0.0)
             * tl.load(us_ptr + 2 * s_us_g + s_off, mask=m_bf, other=0.0))
        w = tl.load(ua_ptr + 2 * s_ua_g + w_off, mask=m_fh, other=0.0)
        acc_g += tl.dot(x.to(w.dtype), w, input_precision="ieee")
        x = (tl.load(hc_ptr + 3 * s_hc_g + x_off, mask=m_bf, other=0.0)
             * tl.load(us_ptr + 3 * s_us_g + s_off, mask=m_bf, other=0.0))
        w = tl.load(ua_ptr + 3 * s_ua_g + w_off, mask=m_fh, other=0.0)
        acc_o += tl.dot(x.to(w.dtype), w, input_precision="ieee")
    m = mb[:, None] & mh[None, :]
    off_gx = rb[:, None] * s_gx_b + rh[None, :] * s_gx_h
    gi = 1.0 / (1.0 + tl.exp(-(acc_i + tl.load(gx_ptr + off_gx, mask=m, other=0.0))))
    gf = 1.0 / (1.0 + tl.exp(-(acc_f + tl.load(gx_ptr + s_gx_g + off_gx, mask=m, other=0.0))))
    gg = 2.0 / (1.0 + tl.exp(-2.0 * (acc_g + tl.load(gx_ptr + 2 * s_gx_g + off_gx, mask=m, other=0.0)))) - 1.0
    go = 1.0 / (1.0 + tl.exp(-(acc_o + tl.load(gx_ptr + 3 * s_gx_g + off_gx, mask=m, other=0.0))))
    off = rb[:, None] * H + rh[None, :]  # the outputs are contiguous (B, H) / (4, B, H)
    c = gf * tl.load(c_ptr + off, mask=m, other=0.0) + gi * gg
    h = go * (2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0)
    tl.store(cn_ptr + off, c, mask=m)
    tl.store(h_ptr + off, h, mask=m)
    tl.store(hlp_ptr + off, h.to(hlp_ptr.dtype.element_ty), mask=m)
    tl.store(act_ptr + off, gi, mask=m)
    tl.store(act_ptr + B * H + off, gf, mask=m)
    tl.store(act_ptr + 2 * B * H + off, gg, mask=m)
    tl.store(act_ptr + 3 * B * H + off, go, mask=m)


def tc_lstm_step_triton(gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor, us: torch.Tensor,
                        u_c_t: torch.Tensor, u_a_t: torch.Tensor, block_b: int = 16, block_h: int = 32,
                        block_f: int = 32
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~speechlab.nn.factorized_lstm.tc_lstm_step` with the gate products and the cell in
    one Triton kernel: the same arguments (``gx (4, B, H)`` and ``c (B, H)`` float32, ``us (4, B,
    F)``, ``u_c_t (H, 4F)``, ``u_a_t (4, F, H)`` in the product dtype) and the same outputs ``(h,
    h in the product dtype, c, hc (4, B, F), act (4, B, H))``."""
    b, hidden = h.shape
    f = u_a_t.shape[1]
    hc = (h.to(u_c_t.dtype) @ u_c_t).view(b, 4, -1).transpose(0, 1)
    c = c.contiguous()
    h_out = torch.empty_like(c)
    h_lp = torch.empty(b, hidden, dtype=u_c_t.dtype, device=c.device)
    c_out = torch.empty_like(c)
    act = torch.empty(4, b, hidden, dtype=c.dtype, device=c.device)
    grid = (-(-b // block_b), -(-hidden // block_h))
    _gates_cell[grid](hc, us, u_a_t, gx, c, h_out, h_lp, c_out, act, b, hidden, f,
                    *hc.stride(), *us.stride(), *u_a_t.stride(), *gx.stride(),
                    BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_F=block_f)
    return h_out, h_lp, c_out, hc, act


def use_triton_forward(enable: bool = True) -> None:
    """Run every :class:`~speechlab.nn.factorized_lstm.TCLSTMRecurrence` forward step through
    :func:`tc_lstm_step_triton` from now on (``enable=False``: back to the eager step; the
    backward step is left as :func:`~speechlab.nn.factorized_lstm.compile_steps` set it)."""
    from speechlab.nn import factorized_lstm

    factorized_lstm._STEP_FNS["forward"] = tc_lstm_step_triton if enable else factorized_lstm.tc_lstm_step
