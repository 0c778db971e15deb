"""The fused Triton TC-LSTM forward step against the eager step: on the CPU through Triton's
interpreter (fp32 and fp16 products, ragged tile edges), on a GPU compiled (bf16 too), and
inside the recurrence: outputs and gradients of a layer equal the reference's.

The interpreter must be chosen before triton is imported, so the interpreted tests run in a
subprocess with TRITON_INTERPRET=1 (test_the_triton_interpreter_subprocess_passes); in this process they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechlab.nn.factorized_lstm import TCLSTMLayer, tc_lstm_step, tc_lstm_step_backward

tc_lstm_triton = pytest.importorskip("speechlab.nn.tc_lstm_triton", reason="needs triton")


def step_inputs(b: int, h: int, f: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gx, hid, c = torch.randn(4, b, h, generator=g), torch.randn(b, h, generator=g), torch.randn(b, h, generator=g)
    us = torch.randn(4, b, f, generator=g)
    u_c_t = torch.randn(h, 4 * f, generator=g) / h ** 0.5
    u_a_t = torch.randn(4, f, h, generator=g) / f ** 0.5
    return [x.to(device) for x in (gx, hid, c)] + [x.to(device, dtype) for x in (us, u_c_t, u_a_t)]


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess")


def test_the_triton_interpreter_subprocess_passes():
    """This file's interpreted tests in a subprocess with TRITON_INTERPRET=1: all pass, none skip."""
    if INTERPRETED:
        pytest.skip("this is the subprocess")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "interpreted"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "9 passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-500:]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(16, 32, 32), (5, 37, 21)], ids=["one tile", "ragged"])
@interpreted
def test_fused_step_equals_the_eager_step_interpreted(dtype, tol, shape):
    """h, h in the product dtype, c, hc and the activations of the eager step (fp16: to the
    product dtype's rounding, the eager step rounds its gate products to fp16 too)."""
    args = step_inputs(*shape, dtype)
    got = tc_lstm_triton.tc_lstm_step_triton(*args)
    want = tc_lstm_step(*args)
    for name, a, b in zip(("h", "h_lp", "c", "hc", "act"), got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=name)


def backward_inputs(b: int, h: int, f: int, dtype: torch.dtype, device: str = "cpu", seed: int = 1):
    """The backward step's arguments after a forward step of :func:`step_inputs`."""
    gx, hid, c_prev, us, u_c_t, u_a_t = step_inputs(b, h, f, dtype, device, seed)
    _, _, c, _, act = tc_lstm_step(gx, hid, c_prev, us, u_c_t, u_a_t)
    g = torch.Generator().manual_seed(seed + 1)
    dh_out, dc = torch.randn(b, h, generator=g).to(device), torch.randn(b, h, generator=g).to(device)
    dh_rec = torch.randn(b, h, generator=g).to(device, dtype)
    u_c = u_c_t.t().contiguous()  # (4F, H)
    u_a = u_a_t.transpose(1, 2).contiguous()  # (4, H, F)
    return dh_out, dh_rec, dc, c_prev, c, act, us, u_c, u_a


@interpreted
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(16, 32, 32), (5, 37, 21)], ids=["one tile", "ragged"])
def test_fused_backward_step_equals_the_eager_one_interpreted(dtype, tol, shape):
    """dh_rec_prev, dc_prev, dg and dm of the eager backward step."""
    args = backward_inputs(*shape, dtype)
    got = tc_lstm_triton.tc_lstm_step_backward_triton(*args)
    want = tc_lstm_step_backward(*args)
    for name, a, b in zip(("dh_rec_prev", "dc_prev", "dg", "dm"), got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * 10, msg=name)


@interpreted
def test_layer_with_the_fused_steps_equals_the_reference_interpreted():
    """A TC-LSTM layer run through the recurrence with use_triton_steps: the reference
    autograd layer's outputs and parameter gradients."""
    torch.manual_seed(3)
    layer = TCLSTMLayer(6, 20, num_topics=3, factor_size=18)
    x, topics = torch.randn(3, 5, 6), torch.softmax(torch.randn(3, 3), -1)
    ref, (h_ref, _) = layer(x, topics, reference=True)
    ref_grads = torch.autograd.grad(ref.square().sum() + h_ref.sum(), list(layer.parameters()))
    tc_lstm_triton.use_triton_steps(True)
    try:
        out, (h, _) = layer(x, topics)
        grads = torch.autograd.grad(out.square().sum() + h.sum(), list(layer.parameters()))
    finally:
        tc_lstm_triton.use_triton_steps(False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


#: pointer arguments that are float32 whatever the product dtype (the state and the gates)
FP32_POINTERS = {"gx_ptr", "c_ptr", "h_ptr", "cn_ptr", "act_ptr", "dho_ptr", "dc_ptr", "cp_ptr", "dcp_ptr"}


@pytest.mark.skipif(INTERPRETED, reason="compiles for a GPU: not in the interpreter")
@pytest.mark.parametrize("product", ["bf16", "fp32"])
def test_kernels_compile_for_hopper_without_a_gpu(product, tmp_path, monkeypatch):
    """Both kernels compile ahead of time for sm_90 (Triton's own ptxas; no GPU needed), with
    bf16 and fp32 products: what the interpreter cannot check (typing, layouts, shared memory
    within the H200's 228 KB per block)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile, not a cache hit
    blocks = {"BLOCK_B": 16, "BLOCK_H": 32, "BLOCK_F": 32}
    for kernel in (tc_lstm_triton._gates_cell, tc_lstm_triton._gates_backward):
        names = list(inspect.signature(kernel.fn).parameters)
        signature = {n: "constexpr" if n in blocks else ("*fp32" if n in FP32_POINTERS else f"*{product}")
                     if n.endswith("_ptr") else "i32" for n in names}
        constants = {(names.index(n),): v for n, v in blocks.items()}
        compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm.get("cubin") and compiled.metadata.shared <= 228 * 1024, kernel.fn.__name__


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
def test_fused_steps_equal_the_eager_steps_on_gpu(dtype, tol):
    """Both kernels compiled for the GPU at the 20 Newsgroups size (batch 64, hidden 600,
    factor 600)."""
    args = step_inputs(64, 600, 600, dtype, device="cuda")
    got = tc_lstm_triton.tc_lstm_step_triton(*args)
    want = tc_lstm_step(*args)
    for name, a, b in zip(("h", "h_lp", "c", "hc", "act"), got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=name)
    args = backward_inputs(64, 600, 600, dtype, device="cuda")
    got = tc_lstm_triton.tc_lstm_step_backward_triton(*args)
    want = tc_lstm_step_backward(*args)
    for name, a, b in zip(("dh_rec_prev", "dc_prev", "dg", "dm"), got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * 10, msg=name)
