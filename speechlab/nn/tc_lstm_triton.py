"""Fused TC-LSTM steps in Triton: forward, the topic-scaled recurrent product, the gates and the
cell in one kernel; backward, the gate gradients, their product with ``U_a`` and the scaling in
one kernel.

:func:`~speechlab.nn.factorized_lstm.tc_lstm_step` runs, per time step, ``hc = h @ U_c^T``
(one GEMM), ``hc * us`` (pointwise), the per-gate product with ``U_a`` (a batched GEMM), and
the LSTM cell (pointwise): four kernels even when compiled. :func:`tc_lstm_step_triton` keeps
the first GEMM (cuBLAS) and does the other three in one Triton kernel: each program owns a
``(BLOCK_B, BLOCK_H)`` tile of hidden units and accumulates all four gates' products over the
factor dimension (``tl.dot``, fp32 accumulators, the ``us`` scaling applied as the tiles are
loaded), then applies the cell to the tile. It differs from the eager step only in rounding: the
gate products stay fp32 (the eager ``bmm`` rounds them to the product dtype). fp32 products are
multiplied in full fp32 (``input_precision="ieee"``, as torch's matmul by default), not TF32.
:func:`tc_lstm_step_backward_triton` likewise turns the backward step's four kernels (gate
gradients, ``bmm`` with ``U_a``, the ``us`` scaling, the ``@ U_c`` GEMM) into one Triton kernel
and the GEMM: 8 kernels per time step become 4.

With ``TRITON_INTERPRET=1`` in the environment before triton is imported, the kernel runs on
CPU tensors in Triton's interpreter (the tests do, in a subprocess; bf16 is not supported there,
fp16 and fp32 are). :func:`use_triton_steps` swaps both into every
:class:`~speechlab.nn.factorized_lstm.TCLSTMRecurrence`.
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


@triton.jit
def _gates_backward(dho_ptr, dhr_ptr, dc_ptr, cp_ptr, c_ptr, act_ptr, us_ptr, ua_ptr,  # noqa: ANN001, ANN201
                    dg_ptr, dcp_ptr, dm_ptr, m_ptr, B, H, F,
                    s_us_g, s_us_b, s_us_f, s_ua_g, s_ua_h, s_ua_f,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr):
    """The backward kernel for a ``(BLOCK_B, BLOCK_F)`` tile of ``dm``: over the hidden units in
    tiles, the gate gradients ``dg`` from the cell's (the eager step's formulas), then ``dm_k +=
    dg_k @ U_a_k``; writes ``dm``, ``m = dm ⊙ us`` as ``(B, 4F)`` for the ``@ U_c`` GEMM, and
    (the programs of the first factor tile) ``dg`` and ``dc_prev = dc · f``. The state inputs
    are contiguous ``(B, H)`` / ``(4, B, H)``."""
    pb, pf = tl.program_id(0), tl.program_id(1)
    rb = pb * BLOCK_B + tl.arange(0, BLOCK_B)
    rf = pf * BLOCK_F + tl.arange(0, BLOCK_F)
    mb, mf = rb < B, rf < F
    acc_i = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
    acc_o = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
    first = pf == 0
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        mh = rh < H
        m = mb[:, None] & mh[None, :]
        off = rb[:, None] * H + rh[None, :]
        dh = tl.load(dho_ptr + off, mask=m, other=0.0) + tl.load(dhr_ptr + off, mask=m, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + off, mask=m, other=0.0)
        gi = tl.load(act_ptr + off, mask=m, other=0.0)
        gf = tl.load(act_ptr + B * H + off, mask=m, other=0.0)
        gg = tl.load(act_ptr + 2 * B * H + off, mask=m, other=0.0)
        go = tl.load(act_ptr + 3 * B * H + off, mask=m, other=0.0)
        tc = 2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0
        dc = tl.load(dc_ptr + off, mask=m, other=0.0) + dh * go * (1.0 - tc * tc)
        out_ty = dg_ptr.dtype.element_ty
        d_i = (dc * gg * gi * (1.0 - gi)).to(out_ty)
        d_f = (dc * tl.load(cp_ptr + off, mask=m, other=0.0) * gf * (1.0 - gf)).to(out_ty)
        d_g = (dc * gi * (1.0 - gg * gg)).to(out_ty)
        d_o = (dh * tc * go * (1.0 - go)).to(out_ty)
        wm = mh[:, None] & mf[None, :]
        w_off = rh[:, None] * s_ua_h + rf[None, :] * s_ua_f
        acc_i += tl.dot(d_i, tl.load(ua_ptr + w_off, mask=wm, other=0.0), input_precision="ieee")
        acc_f += tl.dot(d_f, tl.load(ua_ptr + s_ua_g + w_off, mask=wm, other=0.0), input_precision="ieee")
        acc_g += tl.dot(d_g, tl.load(ua_ptr + 2 * s_ua_g + w_off, mask=wm, other=0.0), input_precision="ieee")
        acc_o += tl.dot(d_o, tl.load(ua_ptr + 3 * s_ua_g + w_off, mask=wm, other=0.0), input_precision="ieee")
        mw = m & first
        tl.store(dg_ptr + off, d_i, mask=mw)
        tl.store(dg_ptr + B * H + off, d_f, mask=mw)
        tl.store(dg_ptr + 2 * B * H + off, d_g, mask=mw)
        tl.store(dg_ptr + 3 * B * H + off, d_o, mask=mw)
        tl.store(dcp_ptr + off, dc * gf, mask=mw)
    mo = mb[:, None] & mf[None, :]
    o_dm = rb[:, None] * F + rf[None, :]  # dm (4, B, F) contiguous
    o_m = rb[:, None] * (4 * F) + rf[None, :]  # m (B, 4F) contiguous
    s_off = rb[:, None] * s_us_b + rf[None, :] * s_us_f
    out_ty = dm_ptr.dtype.element_ty
    dm = acc_i.to(out_ty)
    tl.store(dm_ptr + o_dm, dm, mask=mo)
    tl.store(m_ptr + o_m, (dm * tl.load(us_ptr + s_off, mask=mo, other=0.0)).to(out_ty), mask=mo)
    dm = acc_f.to(out_ty)
    tl.store(dm_ptr + B * F + o_dm, dm, mask=mo)
    tl.store(m_ptr + F + o_m, (dm * tl.load(us_ptr + s_us_g + s_off, mask=mo, other=0.0)).to(out_ty), mask=mo)
    dm = acc_g.to(out_ty)
    tl.store(dm_ptr + 2 * B * F + o_dm, dm, mask=mo)
    tl.store(m_ptr + 2 * F + o_m, (dm * tl.load(us_ptr + 2 * s_us_g + s_off, mask=mo, other=0.0)).to(out_ty),
             mask=mo)
    dm = acc_o.to(out_ty)
    tl.store(dm_ptr + 3 * B * F + o_dm, dm, mask=mo)
    tl.store(m_ptr + 3 * F + o_m, (dm * tl.load(us_ptr + 3 * s_us_g + s_off, mask=mo, other=0.0)).to(out_ty),
             mask=mo)


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


def tc_lstm_step_backward_triton(dh_out: torch.Tensor, dh_rec: torch.Tensor, dc: torch.Tensor,
                                 c_prev: torch.Tensor, c: torch.Tensor, act: torch.Tensor,
                                 us: torch.Tensor, u_c: torch.Tensor, u_a: torch.Tensor,
                                 block_b: int = 16, block_h: int = 32, block_f: int = 32
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~speechlab.nn.factorized_lstm.tc_lstm_step_backward` as one Triton kernel (the gate
    gradients, their product with ``U_a`` and the ``us`` scaling) and the ``@ U_c`` GEMM: the
    same arguments and outputs ``(dh_rec_prev, dc_prev, dg, dm)``."""
    b, hidden = dh_out.shape
    f = u_a.shape[2]
    pd = u_a.dtype
    dh_out, dh_rec, dc = dh_out.contiguous(), dh_rec.contiguous(), dc.contiguous()
    c_prev, c, act = c_prev.contiguous(), c.contiguous(), act.contiguous()
    dg = torch.empty(4, b, hidden, dtype=pd, device=dc.device)
    dc_prev = torch.empty_like(dc)
    dm = torch.empty(4, b, f, dtype=pd, device=dc.device)
    m = torch.empty(b, 4 * f, dtype=pd, device=dc.device)
    grid = (-(-b // block_b), -(-f // block_f))
    _gates_backward[grid](dh_out, dh_rec, dc, c_prev, c, act, us, u_a, dg, dc_prev, dm, m, b, hidden, f,
                          *us.stride(), *u_a.stride(), BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_F=block_f)
    return m @ u_c, dc_prev, dg, dm


def use_triton_steps(enable: bool = True) -> None:
    """Run every :class:`~speechlab.nn.factorized_lstm.TCLSTMRecurrence` step, forward and
    backward, through :func:`tc_lstm_step_triton` and :func:`tc_lstm_step_backward_triton` from
    now on (``enable=False``: back to the eager steps)."""
    from speechlab.nn import factorized_lstm

    factorized_lstm._STEP_FNS.update(
        forward=tc_lstm_step_triton if enable else factorized_lstm.tc_lstm_step,
        backward=tc_lstm_step_backward_triton if enable else factorized_lstm.tc_lstm_step_backward)
