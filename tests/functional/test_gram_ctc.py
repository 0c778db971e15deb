"""Gram-CTC loss on the CPU backends (the pure-PyTorch reference and the C++ kernel).

Oracles: torch.nn.functional.ctc_loss (a unigram gram set is CTC), a brute-force sum over
every frame path for T <= 5, hand-computed values, gradcheck, and torch.library.opcheck.
The CUDA kernel is tested in test_gram_ctc_cuda.py with the helpers defined here.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from speechlab import ops
from speechlab.data.grams import GramSet
from speechlab.data.text import CharVocab
from speechlab.functional import gram_ctc as gc
from speechlab.functional import gram_ctc_loss
from speechlab.functional.gram_ctc import gram_ctc_reference_logp
from speechlab.nn import GramCTCLoss

HAS_CPU_KERNEL, WHY_NO_CPU = ops.available_backends()["cpu"]
needs_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason=f"no C++ kernel: {WHY_NO_CPU}")
CPU_BACKENDS = [
    "reference",
    pytest.param("cpu", marks=needs_cpu_kernel),
]
VOCAB = CharVocab()
ABC = CharVocab("abc")
# small gram sets for the brute force: bigrams, trigrams, grams that repeat inside targets
BIGRAMS = GramSet.from_ngrams(ABC, ["ab", "ba", "aa", "cc"])
TRIGRAMS = GramSet.from_ngrams(ABC, ["ab", "aa", "aba", "aaa", "bab"])
TOL = {torch.float32: dict(loss=1e-6, grad=5e-4), torch.float64: dict(loss=1e-12, grad=1e-10)}


# ============================================================================ helpers
def random_batch(
    batch: int,
    t_max: int,
    u_max: int,
    grams: GramSet,
    *,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    slack: int = 3,
    repeats: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``logits (T, N, V)``, padded ``targets (N, u_max)`` (padding holds garbage),
    ``input_lengths`` and ``target_lengths`` (variable; the first utterance uses the full
    sizes). Targets contain runs of repeated characters; lengths stay CTC-feasible."""
    g = torch.Generator().manual_seed(seed)
    nc = grams.num_chars
    tl = torch.randint(0, u_max + 1, (batch,), generator=g)
    tl[0] = u_max
    targets = torch.randint(1, nc + 1, (batch, u_max), generator=g)
    if repeats and u_max >= 2:
        rep = torch.rand((batch, u_max - 1), generator=g) < 0.3
        targets[:, 1:] = torch.where(rep, targets[:, :-1], targets[:, 1:])
    pos = torch.arange(u_max)[None]
    targets = torch.where(
        pos < tl[:, None], targets, torch.randint(-5, 40, (batch, u_max), generator=g)
    )
    need = 2 * tl + 1
    il = torch.minimum(
        need + torch.randint(0, slack + 1, (batch,), generator=g), torch.tensor(t_max)
    )
    il[0] = t_max
    assert bool((il >= need).all()), "t_max too small for the targets"
    logits = torch.randn((t_max, batch, len(grams)), generator=g, dtype=torch.float64) * 2
    return logits.to(device=device, dtype=dtype), targets.to(device), il.to(device), tl.to(device)


def encode(strings: list[str], vocab: CharVocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded targets (pad 0) and lengths of ``strings``."""
    u = max((len(s) for s in strings), default=0)
    targets = torch.zeros((len(strings), max(u, 1)), dtype=torch.int64)
    for i, s in enumerate(strings):
        targets[i, : len(s)] = torch.tensor(vocab.encode(s), dtype=torch.int64)
    return targets, torch.tensor([len(s) for s in strings])


@functools.lru_cache(maxsize=16)
def _paths(grams: GramSet, t: int) -> tuple[torch.Tensor, dict[str, list[int]]]:
    paths = list(itertools.product(range(len(grams)), repeat=t))
    by_string: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_string.setdefault(grams.collapse(p), []).append(i)
    return torch.tensor(paths, dtype=torch.int64).reshape(len(paths), t), by_string


def brute_force_nll(log_probs: torch.Tensor, target: str, grams: GramSet) -> torch.Tensor:
    """-log sum over all frame paths π with B(π) = target of prod_t p_t(π_t); log_probs (T, V)."""
    t = log_probs.shape[0]
    paths, by_string = _paths(grams, t)
    idx = by_string.get(target, [])
    if not idx:
        return log_probs.sum() * 0 + math.inf
    chosen = paths[idx]
    scores = log_probs[torch.arange(t)[None], chosen].sum(1)
    return -torch.logsumexp(scores, 0)


def loss_and_logit_grad(logits, targets, il, tl, grams, backend, reduction="none", **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = gram_ctc_loss(
        x.log_softmax(-1), targets, il, tl, grams, reduction=reduction, backend=backend, **kw
    )
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), x.grad


def torch_ctc_and_logit_grad(logits, targets, il, tl, reduction="none", **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = F.ctc_loss(x.log_softmax(-1), targets, il, tl, reduction=reduction, **kw)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), x.grad


# ============================================================================ unigrams = CTC
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unigrams_equal_torch_ctc(backend, dtype):
    grams = GramSet.unigrams(VOCAB)
    logits, targets, il, tl = random_batch(8, 60, 20, grams, seed=1, dtype=dtype)
    assert bool((targets[0, 1:] == targets[0, :-1]).any()), "want repeated characters"
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, backend)
    ref, g_ref = torch_ctc_and_logit_grad(logits, targets, il, tl)
    assert ours.dtype == dtype
    assert torch.isfinite(ref).all()
    rel = ((ours - ref).abs() / ref.abs()).max().item()
    assert rel <= TOL[dtype]["loss"], rel
    assert (g_ours - g_ref).abs().max().item() <= TOL[dtype]["grad"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_equal_torch(backend, reduction):
    grams = GramSet.unigrams(VOCAB)
    logits, targets, il, tl = random_batch(6, 40, 12, grams, seed=2)
    tl[1] = 0  # mean divides by max(target length, 1), as torch does
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, backend, reduction)
    ref, g_ref = torch_ctc_and_logit_grad(logits, targets, il, tl, reduction)
    assert ours.shape == () and torch.allclose(ours, ref, rtol=1e-12, atol=0)
    assert torch.allclose(g_ours, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_is_the_mean_of_per_target_length_losses(backend, dtype):
    """reduction="mean" (a dot product with weights 1 / (N·max(U, 1))) is
    mean(nll / max(U, 1)) of reduction="none", value and gradient, also with an empty target
    and with zero_infinity; an empty batch gives NaN, as torch's mean of nothing."""
    grams = GramSet.from_ngrams(VOCAB, ["th", "he", "e "])
    logits, targets, il, tl = random_batch(5, 30, 9, grams, seed=8)
    tl[2] = 0
    il[4] = 2  # too short for its target: infinite, zeroed by zero_infinity
    for zero_infinity in (False, True):
        x = logits.to(dtype).requires_grad_()
        kw = dict(backend=backend, zero_infinity=zero_infinity)
        got = gram_ctc_loss(x.log_softmax(-1), targets, il, tl, grams, **kw)
        (g_got,) = torch.autograd.grad(got, x)
        y = logits.to(dtype).requires_grad_()
        nll = gram_ctc_loss(y.log_softmax(-1), targets, il, tl, grams, reduction="none", **kw)
        want = (nll / tl.clamp(min=1)).mean()
        if zero_infinity:  # the gradient is only defined where the loss is finite
            (g_want,) = torch.autograd.grad(want, y)
            torch.testing.assert_close(g_got, g_want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype), rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
    empty = gram_ctc_loss(logits[:, :0].log_softmax(-1), targets[:0], il[:0], tl[:0], grams, backend=backend)
    assert empty.shape == () and torch.isnan(empty)


def test_bytes_of_tensors_pack_and_unpack():
    """The host tensors that gram_ctc_loss copies to a GPU together travel as the bytes of one
    buffer: int64 (also non-contiguous, also empty) then float parts come back equal, with
    their dtypes and shapes."""
    xs = [torch.arange(12).view(3, 4)[:, ::2], torch.tensor([], dtype=torch.int64),
          torch.tensor([5, -7]), torch.tensor([0.25, 1 / 3], dtype=torch.float32)]
    buf = gc._pack_bytes(xs)
    assert buf.dtype == torch.uint8 and buf.numel() == 8 * 6 + 8 * 2 + 4 * 2
    for got, x in zip(gc._unpack_bytes(buf, xs), xs, strict=True):
        assert got.dtype == x.dtype and torch.equal(got, x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_concatenated_targets_equal_padded(backend):
    grams = GramSet.from_ngrams(VOCAB, ["th", "he", "e "])
    logits, targets, il, tl = random_batch(5, 30, 9, grams, seed=3)
    flat = torch.cat([targets[i, : tl[i]] for i in range(len(tl))])
    lp = logits.log_softmax(-1)
    a = gram_ctc_loss(lp, targets, il, tl, grams, reduction="none", backend=backend)
    b = gram_ctc_loss(lp, flat, il, tl, grams, reduction="none", backend=backend)
    c = gram_ctc_loss(
        lp, targets.int(), il.tolist(), tl.tolist(), grams, reduction="none", backend=backend
    )
    assert torch.equal(a, b) and torch.equal(a, c)


# ============================================================================ brute force
BRUTE_TARGETS = [
    "",
    "a",
    "c",
    "aa",
    "ab",
    "ba",
    "cc",
    "aaa",
    "aba",
    "bab",
    "abc",
    "ccc",
    "aaaa",
    "abab",
    "abaa",
    "aabaa",
    "ababa",
    "ccccc",
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("grams", [BIGRAMS, TRIGRAMS], ids=["bigrams", "trigrams"])
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5])
def test_equals_brute_force_sum_over_paths(backend, grams, t):
    targets, tl = encode(BRUTE_TARGETS, ABC)
    n = len(BRUTE_TARGETS)
    il = torch.full((n,), t)
    logits = torch.randn(
        (t, n, len(grams)), dtype=torch.float64, generator=torch.Generator().manual_seed(t)
    )
    x = logits.clone().requires_grad_(True)
    ours = gram_ctc_loss(
        x.log_softmax(-1), targets, il, tl, grams, reduction="none", backend=backend
    )
    ours.masked_fill(~torch.isfinite(ours), 0).sum().backward()
    y = logits.clone().requires_grad_(True)
    lp = y.log_softmax(-1)
    brute = torch.stack([brute_force_nll(lp[:, i], s, grams) for i, s in enumerate(BRUTE_TARGETS)])
    finite = torch.isfinite(brute)
    brute.masked_fill(~finite, 0).sum().backward()
    assert torch.equal(torch.isfinite(ours), finite), (ours, brute)
    assert torch.allclose(ours[finite], brute[finite].detach(), rtol=1e-12, atol=1e-12)
    g_ours, g_brute = x.grad[:, finite], y.grad[:, finite]
    assert torch.allclose(g_ours, g_brute, rtol=0, atol=1e-10)


def test_hand_computed_bigram_loss():
    """Target "aaaa" with grams {a, aa} in 3 frames: the paths are (aa, blank, aa) and
    (a, aa, a); (aa, aa) would merge into "aa", so 2 frames are infeasible."""
    grams = GramSet.from_ngrams(CharVocab("a"), ["aa"])  # ids: 0 blank, 1 a, 2 aa
    lp = torch.randn((3, 1, 3), dtype=torch.float64).log_softmax(-1)
    targets, tl = encode(["aaaa"], CharVocab("a"))
    for backend in ["reference", "cpu"] if HAS_CPU_KERNEL else ["reference"]:
        got = gram_ctc_loss(lp, targets, [3], tl, grams, reduction="sum", backend=backend)
        p = lp[:, 0]
        want = -torch.logaddexp(p[0, 2] + p[1, 0] + p[2, 2], p[0, 1] + p[1, 2] + p[2, 1])
        assert torch.allclose(got, want, rtol=1e-14)
        short = gram_ctc_loss(lp[:2], targets, [2], tl, grams, reduction="sum", backend=backend)
        assert short.item() == math.inf


# ============================================================================ invariants
@pytest.mark.parametrize("grams", [BIGRAMS, TRIGRAMS], ids=["bigrams", "trigrams"])
def test_log_p_from_alpha_equals_log_p_from_beta(grams):
    logits, targets, il, tl = random_batch(6, 30, 10, grams, seed=4)
    la, lb = gram_ctc_reference_logp(logits.log_softmax(-1), targets, il, tl, grams)
    assert torch.isfinite(la).all()
    assert torch.allclose(la, lb, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_state_posteriors_sum_to_one_per_frame(backend):
    """d loss / d log_probs = -γ: for every valid frame the label posteriors sum to 1 (which
    needs log p from α and from β to agree); padded frames get no gradient."""
    grams = GramSet.all_ngrams(ABC, 3)
    logits, targets, il, tl = random_batch(5, 25, 8, grams, seed=5)
    lp = logits.log_softmax(-1).requires_grad_(True)
    gram_ctc_loss(lp, targets, il, tl, grams, reduction="sum", backend=backend).backward()
    total = lp.grad.sum(-1)  # (T, N)
    valid = torch.arange(lp.shape[0])[:, None] < il[None]
    assert torch.allclose(total[valid], torch.full_like(total[valid], -1.0), atol=1e-12)
    assert (lp.grad[~valid] == 0).all()
    assert (lp.grad <= 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_fp64(backend):
    grams = TRIGRAMS
    logits, targets, il, tl = random_batch(3, 7, 3, grams, seed=6)
    # arbitrary (unnormalised) log-probs: the gradient is the exact derivative
    x = (logits * 0.5).requires_grad_(True)
    fn = functools.partial(
        gram_ctc_loss,
        targets=targets,
        input_lengths=il,
        target_lengths=tl,
        grams=grams,
        reduction="none",
        backend=backend,
    )
    assert torch.autograd.gradcheck(lambda v: fn(v), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backends_agree_with_the_reference(backend):
    grams = GramSet.from_corpus(["the cat sat on the mat", "that hat"], VOCAB, max_n=3, top_k=12)
    logits, targets, il, tl = random_batch(6, 50, 16, grams, seed=7)
    ref, g_ref = loss_and_logit_grad(logits, targets, il, tl, grams, "reference")
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, backend)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=0)
    assert torch.allclose(g_ours, g_ref, rtol=0, atol=1e-11)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_half_inputs_accumulate_in_fp32(dtype):
    grams = GramSet.all_ngrams(ABC, 2)
    logits, targets, il, tl = random_batch(4, 30, 8, grams, seed=8, dtype=torch.float32)
    lp = logits.log_softmax(-1).to(dtype).requires_grad_(True)
    loss = gram_ctc_loss(lp, targets, il, tl, grams, reduction="none", backend="cpu")
    assert loss.dtype == torch.float32
    # the same rounded inputs in fp32 give the same numbers
    lp32 = lp.detach().float().requires_grad_(True)
    want = gram_ctc_loss(lp32, targets, il, tl, grams, reduction="none", backend="cpu")
    assert torch.allclose(loss, want, rtol=1e-6)
    loss.sum().backward()
    want.sum().backward()
    assert lp.grad.dtype == dtype
    assert torch.allclose(lp.grad.float(), lp32.grad, atol=1e-2)


# ============================================================================ edge cases
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_infeasible_targets_like_torch(backend):
    grams = GramSet.unigrams(VOCAB)
    logits = torch.randn((4, 3, 29), dtype=torch.float64)
    targets, tl = encode(["abcde", "aa", "ab"], VOCAB)
    il = torch.tensor([4, 2, 4])  # 5 characters in 4 frames; "aa" needs 3 frames
    for zero_infinity in (False, True):
        ours, g_ours = loss_and_logit_grad(
            logits, targets, il, tl, grams, backend, zero_infinity=zero_infinity
        )
        ref, g_ref = torch_ctc_and_logit_grad(logits, targets, il, tl, zero_infinity=zero_infinity)
        assert torch.equal(ours.isinf(), ref.isinf())
        assert torch.allclose(ours, ref, rtol=1e-12)
        if zero_infinity:
            assert ours[:2].eq(0).all() and torch.allclose(g_ours, g_ref, atol=1e-10)
            assert g_ours[:, :2].eq(0).all()
        else:
            assert ours[:2].isinf().all()
            for n in (0, 1):  # NaN in the utterance's own frames, zero in its padding
                for g in (g_ours, g_ref):
                    assert g[: il[n], n].isnan().all() and g[il[n] :, n].eq(0).all()
        assert torch.allclose(g_ours[:, 2], g_ref[:, 2], atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_targets_and_empty_inputs(backend):
    grams = GramSet.from_ngrams(VOCAB, ["th"])
    lp = torch.randn((5, 3, len(grams)), dtype=torch.float64).log_softmax(-1)
    targets = torch.zeros((3, 0), dtype=torch.int64)
    loss = gram_ctc_loss(
        lp, targets, [5, 2, 0], [0, 0, 0], grams, reduction="none", backend=backend
    )
    want = torch.stack([-lp[:5, 0, 0].sum(), -lp[:2, 1, 0].sum(), torch.tensor(0.0).double()])
    assert torch.allclose(loss, want, rtol=1e-14)
    # no frames and a non-empty target: infeasible
    t2, tl2 = encode(["a"], VOCAB)
    assert gram_ctc_loss(lp[:, :1], t2, [0], tl2, grams, backend=backend).item() == math.inf


# ============================================================================ compiled ops
@needs_cpu_kernel
def test_lattice_tables_by_hand():
    """Target "aab" with grams {a, b, aa, ab}: states b0, a, b1, a, aa, b2, b, ab, b3."""
    grams = GramSet.from_ngrams(CharVocab("ab"), ["aa", "ab"])  # ids: a1 b2 aa3 ab4
    targets, tl = encode(["aab"], CharVocab("ab"))
    keys, ids = grams.key_tensors("cpu")
    lat = torch.ops.speechlab.gram_ctc_lattice(targets, tl, keys, ids, 2, 2)[0].tolist()
    u, n, p = 3, 2, 4
    sb = (u + 1) + u + (u - 1)  # 9
    assert lat[:4] == [9, 3, 8, 5]  # states, U, index of b_U, gram states
    off_label = 8 + 2 * (u + 1) + (u + 1) * n
    label = lat[off_label : off_label + sb]
    assert label == [0, 1, 0, 1, 3, 0, 2, 4, 0]
    pred = [lat[off_label + sb + s * p : off_label + sb + (s + 1) * p] for s in range(sb)]
    pad = sb
    assert pred[5] == [5, 3, 4, pad]  # b2 <- b2, a(1), aa
    assert pred[3] == [3, 2, pad, pad]  # second a <- itself, b1 (not the first a: same id)
    assert pred[7] == [7, 2, 1, pad]  # ab(1:3) <- itself, b1, a(0)
    assert pred[6] == [6, 5, 3, 4]  # b(2) <- itself, b2, a(1), aa


@needs_cpu_kernel
def test_opcheck_cpu_ops():
    grams = BIGRAMS
    logits, targets, il, tl = random_batch(3, 9, 3, grams, seed=9)
    keys, ids = grams.key_tensors("cpu")
    targets = targets.clamp(0, 3)  # padding inside the int range the lattice expects
    args = (targets, tl, keys, ids, grams.num_chars, grams.max_n)
    torch.library.opcheck(torch.ops.speechlab.gram_ctc_lattice, args)
    lp = logits.log_softmax(-1).requires_grad_(True)
    fwd_args = (lp, targets, il, tl, keys, ids, grams.num_chars, grams.max_n, False, True)
    torch.library.opcheck(torch.ops.speechlab.gram_ctc_forward, fwd_args)
    nll, alpha, beta, lattice = torch.ops.speechlab.gram_ctc_forward(*fwd_args)
    bwd_args = (
        torch.ones(3, dtype=torch.float64),
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
    torch.library.opcheck(torch.ops.speechlab.gram_ctc_backward, bwd_args)


# ============================================================================ API and errors
def test_module_equals_functional():
    grams = BIGRAMS
    logits, targets, il, tl = random_batch(4, 20, 6, grams, seed=10)
    lp = logits.log_softmax(-1)
    mod = GramCTCLoss(grams, reduction="sum", zero_infinity=True)
    assert torch.equal(
        mod(lp, targets, il, tl),
        gram_ctc_loss(lp, targets, il, tl, grams, reduction="sum", zero_infinity=True),
    )
    assert "reduction='sum'" in repr(mod)


def test_available_backends_say_why():
    av = ops.available_backends()
    assert set(av) == {"cuda", "cpu", "reference"}
    assert av["reference"][0] is True
    for ok, why in av.values():
        assert isinstance(ok, bool) and why
    if not torch.cuda.is_available():
        assert av["cuda"][0] is False
        with pytest.raises(RuntimeError, match="unavailable"):
            ops.resolve_backend("cuda", torch.device("cpu"))


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setitem(ops._state, "tried", True)
    monkeypatch.setitem(ops._state, "error", "ImportError: simulated")
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setattr(ops, "_resolved", {})
    grams = BIGRAMS
    logits, targets, il, tl = random_batch(2, 10, 3, grams, seed=11)
    with pytest.warns(RuntimeWarning, match="reference") as rec:
        a = gram_ctc_loss(logits.log_softmax(-1), targets, il, tl, grams)
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = gram_ctc_loss(logits.log_softmax(-1), targets, il, tl, grams)
    assert torch.equal(a, b)
    assert ops.available_backends()["cpu"] == (False, ops.available_backends()["cpu"][1])
    assert "simulated" in ops.available_backends()["cpu"][1]
    with pytest.raises(RuntimeError, match="simulated"):
        gram_ctc_loss(logits.log_softmax(-1), targets, il, tl, grams, backend="cpu")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(log_probs=torch.zeros((5, 2), dtype=torch.float64)), ValueError, "(T, N, V)"),
        (dict(log_probs=torch.zeros((5, 2, 8), dtype=torch.int64)), TypeError, "floating"),
        (dict(log_probs=torch.zeros((5, 2, 7), dtype=torch.float64)), ValueError, "7 outputs"),
        (dict(targets=torch.tensor([[1, 2], [4, 1]])), ValueError, r"targets\[1, 0\] = 4"),
        (dict(targets=torch.tensor([[0, 1], [1, 1]])), ValueError, r"targets\[0, 0\] = 0"),
        (dict(targets=torch.ones((2, 2, 1), dtype=torch.int64)), ValueError, "padded or 1-D"),
        (dict(targets=torch.ones((2, 2))), TypeError, "integer"),
        (dict(input_lengths=[5, 6]), ValueError, r"input_lengths\[1\] = 6"),
        (dict(target_lengths=[3, 1]), ValueError, r"target_lengths\[0\] = 3"),
        (dict(target_lengths=[1, 1, 1]), ValueError, r"shape \(2,\)"),
        (dict(blank=3), ValueError, "blank"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_input_gives_clear_errors(change, error, match):
    kw = dict(
        log_probs=torch.zeros((5, 2, 8), dtype=torch.float64),
        targets=torch.tensor([[1, 2], [3, 0]]),
        input_lengths=[5, 5],
        target_lengths=[2, 1],
        grams=BIGRAMS,
    )
    kw.update(change)
    with pytest.raises(error, match=match):
        gram_ctc_loss(**kw)


@needs_cpu_kernel
def test_unvalidated_bad_target_gives_nan_not_a_crash():
    lp = torch.zeros((5, 2, 8), dtype=torch.float64).log_softmax(-1)
    loss = gram_ctc_loss(
        lp,
        torch.tensor([[1, 9], [1, 2]]),
        [5, 5],
        [2, 2],
        BIGRAMS,
        reduction="none",
        backend="cpu",
        validate=False,
    )
    assert loss[0].isnan() and loss[1].isfinite()


@needs_cpu_kernel
def test_backward_from_a_forward_beta_equals_the_fused_sweep():
    grams = TRIGRAMS
    logits, targets, il, tl = random_batch(4, 20, 6, grams, seed=13)
    keys, ids = grams.key_tensors("cpu")
    lp = logits.log_softmax(-1)
    args = (lp, targets, il, tl, keys, ids, grams.num_chars, grams.max_n, False)
    nll, alpha, beta, lattice = torch.ops.speechlab.gram_ctc_forward(*args, True)
    nll2, alpha2, empty, _ = torch.ops.speechlab.gram_ctc_forward(*args, False)
    assert torch.equal(nll, nll2) and torch.equal(alpha, alpha2) and empty.numel() == 0
    g = torch.rand(4, dtype=torch.float64)
    rest = (targets.shape[1], grams.max_n, False)
    a = torch.ops.speechlab.gram_ctc_backward(g, lp, lattice, il, nll, alpha, beta, *rest)
    b = torch.ops.speechlab.gram_ctc_backward(g, lp, lattice, il, nll, alpha, empty, *rest)
    assert torch.allclose(a, b, rtol=0, atol=1e-15)
    assert a.abs().sum() > 0


@needs_cpu_kernel
def test_kernel_flags_bad_lengths_without_validation():
    lp = torch.zeros((5, 3, 8), dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 2], [1, 2], [1, 2]])
    loss = gram_ctc_loss(
        lp, targets, [6, 5, 5], [2, 3, 2], BIGRAMS, reduction="none", backend="cpu", validate=False
    )
    assert loss[:2].isnan().all() and loss[2].isfinite()
    keys, ids = BIGRAMS.key_tensors("cpu")
    _, _, _, lattice = torch.ops.speechlab.gram_ctc_forward(
        lp, targets, torch.tensor([6, 5, 5]), torch.tensor([2, 3, 2]), keys, ids, 3, 2, False, False
    )
    assert lattice[:, 4].tolist() == [4, 2, 0]  # input length, target length, fine


# ============================================================================ host validation
# (change to bad_call's inputs, the message) -- the texts _validate has always given; the CUDA
# tests check that inputs arriving on the GPU (kernel flags, then _validate) give them too
_NOT_AN_ID = " is not a character id (expected 1..3; targets are character ids, blank excluded)"
BAD_INPUTS = [
    (dict(input_lengths=[5, 6]), "gram_ctc_loss: input_lengths[1] = 6 is outside [0, 5]"),
    (dict(input_lengths=[-1, 5]), "gram_ctc_loss: input_lengths[0] = -1 is outside [0, 5]"),
    (dict(target_lengths=[3, 1]), "gram_ctc_loss: target_lengths[0] = 3 is outside [0, 2]"),
    (dict(target_lengths=[2, -1]), "gram_ctc_loss: target_lengths[1] = -1 is outside [0, 2]"),
    (dict(targets=[[1, 2], [4, 0]]), "gram_ctc_loss: targets[1, 0] = 4" + _NOT_AN_ID),
    (dict(targets=[[1, -2], [3, 0]]), "gram_ctc_loss: targets[0, 1] = -2" + _NOT_AN_ID),
    # concatenated 1-D targets: named by their place in the padded (N, S) form
    (dict(targets=[1, 2, 0]), "gram_ctc_loss: targets[1, 0] = 0" + _NOT_AN_ID),
    (dict(targets=[1, 9, 3]), "gram_ctc_loss: targets[0, 1] = 9" + _NOT_AN_ID),
    (
        dict(targets=[1, 2], target_lengths=[3, -1]),
        "gram_ctc_loss: target_lengths[1] = -1 is outside [0, 3]",
    ),
]
BAD_IDS = [
    ("1-D " if isinstance(c.get("targets", [[]])[0], int) else "")
    + m.split(": ")[1].split(" is")[0]
    for c, m in BAD_INPUTS
]


def bad_call(change: dict, form: str) -> dict:
    """Keyword arguments of gram_ctc_loss on the CPU: T = 5, N = 2, S = 2, ids 1..3, lengths
    as Python lists (``form="list"``) or CPU tensors of dtype ``form``."""
    kw = dict(
        log_probs=torch.zeros((5, 2, 8), dtype=torch.float64),
        targets=[[1, 2], [3, 0]],
        input_lengths=[5, 5],
        target_lengths=[2, 1],
        grams=BIGRAMS,
    )
    kw.update(change)
    kw["targets"] = torch.tensor(kw["targets"])
    if form != "list":
        for key in ("input_lengths", "target_lengths"):
            kw[key] = torch.tensor(kw[key], dtype=getattr(torch, form))
    return kw


def _kernel_ran(*args):
    raise AssertionError("a loss kernel ran before the host checks")


def _skip_host_checks(monkeypatch) -> None:
    """Make every input count as not checkable on the host (as CUDA tensors are)."""
    validate = gc._validate

    def no_host_checks(*args, host_only=False):
        return False if host_only else validate(*args)

    monkeypatch.setattr(gc, "_validate", no_host_checks)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ["list", "int64", "int32"])
@pytest.mark.parametrize(("change", "message"), BAD_INPUTS, ids=BAD_IDS)
def test_host_inputs_are_checked_before_any_kernel(monkeypatch, backend, form, change, message):
    monkeypatch.setattr(gc, "_reference_nll", _kernel_ran)
    if backend == "cpu":
        monkeypatch.setattr(torch.ops.speechlab, "gram_ctc_forward", _kernel_ran)
    with pytest.raises(ValueError) as err:
        gram_ctc_loss(**bad_call(change, form), backend=backend)
    assert str(err.value) == message


@needs_cpu_kernel
@pytest.mark.parametrize(("change", "message"), BAD_INPUTS, ids=BAD_IDS)
def test_kernel_flags_give_the_same_messages(monkeypatch, change, message):
    """Inputs that arrive on a GPU are checked by the kernel (flags), then by _validate for
    the message; simulated here by skipping the host checks."""
    forward, flagged = torch.ops.speechlab.gram_ctc_forward, []

    def spy(*args):
        out = forward(*args)
        flagged.append(bool(out[3][:, gc._ERROR_COLUMN].any()))
        return out

    _skip_host_checks(monkeypatch)
    monkeypatch.setattr(torch.ops.speechlab, "gram_ctc_forward", spy)
    with pytest.raises(ValueError) as err:
        gram_ctc_loss(**bad_call(change, "int64"), backend="cpu")
    assert str(err.value) == message and flagged == [True]


@needs_cpu_kernel
def test_host_checked_inputs_do_not_read_the_kernel_flags(monkeypatch):
    """Everything on the host was checked there: the flags (here forged) are not read, which
    on CUDA is what saves the device->host synchronisation."""
    forward = torch.ops.speechlab.gram_ctc_forward

    def forged(*args):
        nll, alpha, beta, lattice = forward(*args)
        return nll, alpha, beta, lattice.index_fill(1, torch.tensor([gc._ERROR_COLUMN]), 1)

    monkeypatch.setattr(torch.ops.speechlab, "gram_ctc_forward", forged)
    assert gram_ctc_loss(**bad_call({}, "int64"), backend="cpu").isfinite()
    # had anything not been checked on the host (a CUDA tensor), the flags would be read
    _skip_host_checks(monkeypatch)
    with pytest.raises(ValueError, match="the kernel flagged invalid lengths or targets"):
        gram_ctc_loss(**bad_call({}, "int64"), backend="cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ["tensors", "lists", "int32", "concatenated"])
def test_validation_leaves_valid_results_unchanged(backend, form):
    """Garbage in the padding (beyond each target length) is not an error."""
    grams = GramSet.from_ngrams(VOCAB, ["th", "he", "e "])
    logits, targets, il, tl = random_batch(5, 30, 9, grams, seed=14)
    if form == "lists":
        il, tl = il.tolist(), tl.tolist()
    elif form == "int32":
        targets, il, tl = targets.int(), il.int(), tl.int()
    elif form == "concatenated":
        targets = torch.cat([targets[i, : tl[i]] for i in range(len(tl))])
    a, g_a = loss_and_logit_grad(logits, targets, il, tl, grams, backend, "mean")
    b, g_b = loss_and_logit_grad(logits, targets, il, tl, grams, backend, "mean", validate=False)
    assert torch.isfinite(a) and torch.equal(a, b) and torch.equal(g_a, g_b)


@pytest.mark.slow
@needs_cpu_kernel
def test_long_batch_cpu_kernel_agrees_with_reference():
    grams = GramSet.all_ngrams(VOCAB, 2)
    logits, targets, il, tl = random_batch(8, 300, 80, grams, seed=12, dtype=torch.float32)
    ref, g_ref = loss_and_logit_grad(logits, targets, il, tl, grams, "reference")
    ours, g_ours = loss_and_logit_grad(logits, targets, il, tl, grams, "cpu")
    assert torch.allclose(ours, ref, rtol=1e-5)
    assert torch.allclose(g_ours, g_ref, atol=1e-4)
