"""Gram-CTC CUDA kernel: against torch's CUDA ctc_loss, the C++ CPU kernel (itself tested
against torch, brute force and gradcheck in test_gram_ctc.py), determinism, half precision,
long targets (the generic and global-memory paths), opcheck. Run on a GPU machine:

    pytest -m cuda tests/functional/test_gram_ctc_cuda.py
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from speechlab import ops
from speechlab.data.grams import GramSet
from speechlab.functional import gram_ctc_loss
from tests.functional.test_gram_ctc import (  # sibling test module: helpers only
    ABC,
    BAD_IDS,
    BAD_INPUTS,
    BIGRAMS,
    TOL,
    TRIGRAMS,
    VOCAB,
    bad_call,
    encode,
    loss_and_logit_grad,
    random_batch,
    torch_ctc_and_logit_grad,
)

HAS_CUDA, WHY = ops.available_backends()["cuda"]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA kernel: {WHY}")]

GRAM_SETS = {
    "unigrams": GramSet.unigrams(VOCAB),
    "bigrams813": GramSet.all_ngrams(VOCAB, 2),
    "abc-bigrams": BIGRAMS,
    "abc-trigrams": TRIGRAMS,  # P = 5 -> the P = 6 kernels
    "abc-all5": GramSet.from_ngrams(ABC, ["ab", "ba", "aab", "abab", "ababa", "aaaaa"]),  # P = 7
    "corpus3": GramSet.from_corpus(["the cat sat on the mat", "that hat"], VOCAB, 3, 20),
}


def on_cuda(*xs):
    return [x.cuda() if isinstance(x, torch.Tensor) else x for x in xs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unigrams_equal_torch_cuda_ctc(dtype):
    grams = GRAM_SETS["unigrams"]
    logits, targets, il, tl = on_cuda(*random_batch(16, 150, 40, grams, seed=1, dtype=dtype))
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, "cuda")
    with torch.backends.cudnn.flags(enabled=False):
        ref, g_ref = torch_ctc_and_logit_grad(logits, targets, il, tl)
    rel = ((ours - ref).abs() / ref.abs()).max().item()
    assert rel <= TOL[dtype]["loss"], rel
    assert (g_ours - g_ref).abs().max().item() <= TOL[dtype]["grad"]


@pytest.mark.parametrize("name", list(GRAM_SETS))
def test_cuda_equals_cpu_kernel_fp64(name):
    grams = GRAM_SETS[name]
    u = 30 if grams.num_chars > 3 else 12
    logits, targets, il, tl = random_batch(7, 4 * u, u, grams, seed=2)
    cpu, g_cpu = loss_and_logit_grad(logits, targets, il, tl, grams, "cpu")
    gpu, g_gpu = loss_and_logit_grad(*on_cuda(logits, targets, il, tl), grams, "cuda")
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-12, atol=0)
    assert torch.allclose(g_gpu.cpu(), g_cpu, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["unigrams", "bigrams813", "corpus3"])
def test_cuda_fp32_as_accurate_as_the_cpu_kernel(name):
    """fp32 log-space sums over 200 frames drift by ~1e-4 in any implementation: both fp32
    kernels are compared with the fp64 result."""
    grams = GRAM_SETS[name]
    logits, targets, il, tl = random_batch(8, 200, 60, grams, seed=3, dtype=torch.float32)
    exact, g_exact = loss_and_logit_grad(logits.double(), targets, il, tl, grams, "cpu")
    cpu, g_cpu = loss_and_logit_grad(logits, targets, il, tl, grams, "cpu")
    gpu, g_gpu = loss_and_logit_grad(*on_cuda(logits, targets, il, tl), grams, "cuda")
    assert torch.allclose(gpu.cpu().double(), exact, rtol=2e-6, atol=0)
    assert torch.allclose(cpu.double(), exact, rtol=2e-6, atol=0)
    err_gpu = (g_gpu.cpu().double() - g_exact).abs().max().item()
    err_cpu = (g_cpu.double() - g_exact).abs().max().item()
    assert err_gpu <= 1e-3 and err_cpu <= 1e-3, (err_gpu, err_cpu)


@pytest.mark.parametrize("name", list(GRAM_SETS))
def test_lattice_identical_on_cpu_and_cuda(name):
    grams = GRAM_SETS[name]
    _, targets, _, tl = random_batch(9, 200, 40, grams, seed=4)
    targets = targets.clamp(min=0)
    keys, ids = grams.key_tensors("cpu")
    args = (grams.num_chars, grams.max_n)
    cpu = torch.ops.speechlab.gram_ctc_lattice(targets, tl, keys, ids, *args)
    kc, ic = grams.key_tensors("cuda")
    gpu = torch.ops.speechlab.gram_ctc_lattice(targets.cuda(), tl.cuda(), kc, ic, *args)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["unigrams", "bigrams813"])
def test_half_inputs_accumulate_in_fp32(dtype, name):
    grams = GRAM_SETS[name]
    logits, targets, il, tl = on_cuda(*random_batch(8, 120, 30, grams, seed=5, dtype=torch.float32))
    lp = logits.log_softmax(-1).to(dtype).requires_grad_(True)
    loss = gram_ctc_loss(lp, targets, il, tl, grams, reduction="none", backend="cuda")
    assert loss.dtype == torch.float32
    lp32 = lp.detach().float().requires_grad_(True)
    want = gram_ctc_loss(lp32, targets, il, tl, grams, reduction="none", backend="cuda")
    assert torch.allclose(loss, want, rtol=1e-6)
    loss.sum().backward()
    want.sum().backward()
    assert lp.grad.dtype == dtype
    assert torch.allclose(lp.grad.float(), lp32.grad, atol=1e-2)


@pytest.mark.parametrize("name", ["unigrams", "bigrams813", "abc-trigrams"])
def test_backward_is_bitwise_repeatable(name):
    grams = GRAM_SETS[name]
    u = 60 if grams.num_chars > 3 else 20
    logits, targets, il, tl = on_cuda(
        *random_batch(16, 4 * u, u, grams, seed=6, dtype=torch.float32)
    )
    grads = [
        loss_and_logit_grad(logits, targets, il, tl, grams, "cuda", "mean")[1] for _ in range(3)
    ]
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_beta_beside_alpha_equals_beta_in_the_backward():
    grams = GRAM_SETS["bigrams813"]
    logits, targets, il, tl = on_cuda(*random_batch(6, 80, 20, grams, seed=12, dtype=torch.float32))
    keys, ids = grams.key_tensors("cuda")
    lp = logits.log_softmax(-1)
    args = (lp, targets, il, tl, keys, ids, grams.num_chars, grams.max_n, False)
    garbage = torch.full((1 << 22,), float("nan"), device="cuda")  # dirty the allocator
    del garbage
    nll, alpha, beta, lattice = torch.ops.speechlab.gram_ctc_forward(*args, True)
    # every element is defined (-inf outside each utterance's frames and states)
    assert not alpha.isnan().any() and not beta.isnan().any()
    assert (beta[1, il[1] :] == -math.inf).all() and (alpha[1, il[1] :] == -math.inf).all()
    _, _, empty, _ = torch.ops.speechlab.gram_ctc_forward(*args, False)
    g = torch.rand(6, device="cuda")
    rest = (targets.shape[1], grams.max_n, False)
    a = torch.ops.speechlab.gram_ctc_backward(g, lp, lattice, il, nll, alpha, beta, *rest)
    b = torch.ops.speechlab.gram_ctc_backward(g, lp, lattice, il, nll, alpha, empty, *rest)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("u", "path"), [(700, "fast R=2"), (1200, "generic, shared memory")])
def test_long_targets_equal_torch(u, path):
    grams = GRAM_SETS["unigrams"]
    logits, targets, il, tl = on_cuda(
        *random_batch(3, 2 * u + 20, u, grams, seed=7, dtype=torch.float64)
    )
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, "cuda")
    with torch.backends.cudnn.flags(enabled=False):
        ref, g_ref = torch_ctc_and_logit_grad(logits, targets, il, tl)
    assert torch.allclose(ours, ref, rtol=1e-12), path
    assert torch.allclose(g_ours, g_ref, atol=1e-10), path


def test_long_bigram_targets_generic_path_equal_cpu():
    grams = GRAM_SETS["bigrams813"]
    logits, targets, il, tl = random_batch(2, 1700, 800, grams, seed=8)  # S_bound = 2400
    cpu, g_cpu = loss_and_logit_grad(logits, targets, il, tl, grams, "cpu")
    gpu, g_gpu = loss_and_logit_grad(*on_cuda(logits, targets, il, tl), grams, "cuda")
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-12)
    assert torch.allclose(g_gpu.cpu(), g_cpu, atol=1e-10)


@pytest.mark.slow
def test_very_long_target_global_memory_path():
    """30 001 states: alpha/beta do not fit shared memory and go to a global scratch."""
    grams = GRAM_SETS["unigrams"]
    u = 15000
    logits, targets, il, tl = on_cuda(
        *random_batch(1, 2 * u + 50, u, grams, seed=9, dtype=torch.float64)
    )
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, "cuda")
    with torch.backends.cudnn.flags(enabled=False):
        ref, g_ref = torch_ctc_and_logit_grad(logits, targets, il, tl)
    assert torch.allclose(ours, ref, rtol=1e-11)
    assert torch.allclose(g_ours, g_ref, atol=1e-9)


def test_infeasible_and_zero_infinity_like_torch():
    grams = GRAM_SETS["unigrams"]
    logits = torch.randn((4, 3, 29), dtype=torch.float64, device="cuda")
    targets, tl = encode(["abcde", "aa", "ab"], VOCAB)
    targets, tl = targets.cuda(), tl.cuda()
    il = torch.tensor([4, 2, 4], device="cuda")
    for zero_infinity in (False, True):
        ours, g_ours = loss_and_logit_grad(
            logits, targets, il, tl, grams, "cuda", zero_infinity=zero_infinity
        )
        with torch.backends.cudnn.flags(enabled=False):
            ref, g_ref = torch_ctc_and_logit_grad(
                logits, targets, il, tl, zero_infinity=zero_infinity
            )
        assert torch.allclose(ours, ref, rtol=1e-12)
        finite_rows = torch.isfinite(g_ref)
        assert torch.equal(torch.isfinite(g_ours), finite_rows)
        assert torch.allclose(g_ours[finite_rows], g_ref[finite_rows], atol=1e-10)


def test_empty_targets_and_inputs():
    grams = GRAM_SETS["abc-bigrams"]
    lp = torch.randn((5, 3, len(grams)), dtype=torch.float64, device="cuda").log_softmax(-1)
    targets = torch.zeros((3, 0), dtype=torch.int64, device="cuda")
    loss = gram_ctc_loss(lp, targets, [5, 2, 0], [0, 0, 0], grams, reduction="none", backend="cuda")
    want = torch.stack([-lp[:5, 0, 0].sum(), -lp[:2, 1, 0].sum(), lp.new_zeros(())])
    assert torch.allclose(loss, want, rtol=1e-14)
    t2, tl2 = encode(["a"], ABC)
    assert gram_ctc_loss(lp[:, :1], t2.cuda(), [0], tl2, grams).item() == math.inf


def test_unvalidated_bad_target_gives_nan():
    grams = GRAM_SETS["abc-bigrams"]
    lp = torch.zeros((5, 2, len(grams)), device="cuda").log_softmax(-1)
    loss = gram_ctc_loss(
        lp,
        torch.tensor([[1, 9], [1, 2]], device="cuda"),
        [5, 5],
        [2, 2],
        grams,
        reduction="none",
        validate=False,
    )
    assert loss[0].isnan() and loss[1].isfinite()


@contextlib.contextmanager
def no_sync_allowed():
    """torch raises RuntimeError ("called a synchronizing CUDA operation") on a device->host
    sync, a blocking host->device copy or a cudaStreamSynchronize inside the block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("form", ["tensors", "lists", "concatenated int32"])
def test_host_lengths_and_targets_do_not_synchronise(form):
    """validate=True with lengths and targets on the host: checked there, copied through
    pinned memory without blocking, no flag read -- the forward never syncs."""
    grams = GRAM_SETS["bigrams813"]
    logits, targets, il, tl = random_batch(8, 120, 30, grams, seed=13, dtype=torch.float32)
    want_args = on_cuda(targets, il, tl)
    if form == "lists":
        il, tl = il.tolist(), tl.tolist()
    elif form == "concatenated int32":
        targets = torch.cat([targets[i, : tl[i]] for i in range(len(tl))]).int()
        il, tl = il.int(), tl.int()
    lp = logits.cuda().log_softmax(-1).requires_grad_(True)
    gram_ctc_loss(lp, targets, il, tl, grams)  # first call: gram keys to the GPU, pinned blocks
    with no_sync_allowed():
        mean = gram_ctc_loss(lp, targets, il, tl, grams)
        each = gram_ctc_loss(lp, targets, il, tl, grams, reduction="none", zero_infinity=True)
    assert torch.equal(mean, gram_ctc_loss(lp, *want_args, grams))
    want = gram_ctc_loss(lp, *want_args, grams, reduction="none", zero_infinity=True)
    assert torch.equal(each, want)


@pytest.mark.parametrize("where", ["cuda lengths", "cuda targets"])
def test_device_inputs_still_sync_once_to_validate(where):
    """What arrives on the GPU is checked through the kernel flags: one sync (which the debug
    mode catches, so the test above is not vacuous); validate=False never syncs."""
    grams = GRAM_SETS["abc-bigrams"]
    logits, targets, il, tl = random_batch(4, 20, 6, grams, seed=14, dtype=torch.float32)
    args = (targets, il.cuda(), tl.cuda()) if where == "cuda lengths" else (targets.cuda(), il, tl)
    lp = logits.cuda().log_softmax(-1)
    gram_ctc_loss(lp, *args, grams)
    with no_sync_allowed(), pytest.raises(RuntimeError, match="synchronizing"):
        gram_ctc_loss(lp, *args, grams)
    with no_sync_allowed():
        gram_ctc_loss(lp, *args, grams, validate=False)


@pytest.mark.parametrize("where", ["all on cuda", "targets on cuda"])
@pytest.mark.parametrize(("change", "message"), BAD_INPUTS, ids=BAD_IDS)
def test_bad_device_inputs_give_the_host_messages(change, message, where):
    kw = bad_call(change, "int64")
    moved = ["log_probs", "targets"]
    if where == "all on cuda":
        moved += ["input_lengths", "target_lengths"]
    kw.update({k: kw[k].cuda() for k in moved})
    with pytest.raises(ValueError) as err:
        gram_ctc_loss(**kw)
    assert str(err.value) == message


def test_auto_picks_cuda_and_opcheck():
    assert ops.resolve_backend("auto", torch.device("cuda")) == "cuda"
    grams = GRAM_SETS["abc-trigrams"]
    logits, targets, il, tl = on_cuda(*random_batch(3, 12, 4, grams, seed=10))
    targets = targets.clamp(0, 3)
    keys, ids = grams.key_tensors("cuda")
    args = (targets, tl, keys, ids, grams.num_chars, grams.max_n)
    torch.library.opcheck(torch.ops.speechlab.gram_ctc_lattice, args)
    lp = logits.log_softmax(-1).requires_grad_(True)
    fwd = (lp, targets, il, tl, keys, ids, grams.num_chars, grams.max_n, False, True)
    torch.library.opcheck(torch.ops.speechlab.gram_ctc_forward, fwd)
    nll, alpha, beta, lattice = torch.ops.speechlab.gram_ctc_forward(*fwd)
    bwd = (
        torch.ones(3, dtype=torch.float64, device="cuda"),
        lp.detach(),
        lattice,
        il,
        nll.detach(),
        alpha,
        beta,
        targets.shape[1],
        grams.max_n,
        False,
    )
    torch.library.opcheck(torch.ops.speechlab.gram_ctc_backward, bwd)


def test_unigrams_equal_torch_ctc_with_cudnn_rules():
    """Same inputs in cuDNN's format (all frames, int32 CPU targets): same loss and gradient."""
    grams = GRAM_SETS["unigrams"]
    logits, targets, il, tl = random_batch(8, 100, 30, grams, seed=11, dtype=torch.float32)
    il[:] = 100
    flat = torch.cat([targets[i, : tl[i]] for i in range(8)]).int()
    x = logits.cuda().requires_grad_(True)
    ref = F.ctc_loss(x.log_softmax(-1), flat, il.tolist(), tl.tolist(), reduction="sum")
    ref.backward()
    ours, g_ours = loss_and_logit_grad(*on_cuda(logits, targets, il, tl), grams, "cuda", "sum")
    assert torch.allclose(ours, ref.detach(), rtol=1e-5)
    assert (g_ours - x.grad).abs().max().item() <= 5e-4
