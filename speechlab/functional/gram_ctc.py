r"""Gram-CTC loss (Liu et al., 2017): CTC whose outputs are character n-grams.

The network emits, per frame, log-probabilities over ``V = {blank} ∪ G`` where the gram set
``G`` holds every character and some longer character n-grams (a
:class:`speechlab.data.grams.GramSet`). Targets are *character* ids, as for
:func:`torch.nn.functional.ctc_loss`. The collapse ``B`` of a frame path merges consecutive
equal gram ids, drops blanks and concatenates the grams' characters, and

.. math:: \mathcal{L}(x, y) = -\log \sum_{\pi:\ B(\pi) = y} \prod_t p_t(\pi_t).

With a unigram-only gram set this is exactly CTC with the same ids.

Lattice, for a target ``y`` of ``U`` characters: blank states ``b_0..b_U`` and one gram state
``(i, n)`` per substring ``y[i:i+n]`` in the gram set. Transitions ``t-1 -> t``: into ``b_k``
from ``b_k`` and from every gram state ending at ``k``; into ``(i, n)`` with id ``g`` from
itself, from ``b_i`` and from every gram state ending at ``i`` whose id is not ``g``. Start:
``b_0`` and grams starting at 0; final: ``b_U`` and grams ending at ``U``.

Forward/backward variables are in log space; ``α_t(s)`` and ``β_t(s)`` both include the
emission of frame ``t`` (as warp-ctc and torch do).

**Gradient convention.** The backward returns the true gradient with respect to ``log_probs``
taken as free variables: ``∂L_n/∂log_probs[t, n, c] = -γ_t(c)``, the posterior of label ``c``
at frame ``t`` (zero for ``t >= input_lengths[n]``). Through a ``log_softmax`` this gives the
familiar ``p_t(c) - γ_t(c)`` with respect to the logits, which is also what torch's
``ctc_loss`` yields there (torch's backward returns the logit form directly, so the two agree
only through ``log_softmax``; compare gradients with respect to logits). Because the
convention is the exact derivative, ``torch.autograd.gradcheck`` holds for arbitrary inputs.

This module imports only torch and :mod:`speechlab.ops` (the extension loader); the gram set
is used through the small :class:`GramTable` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from speechlab import ops

REDUCTIONS = ("mean", "sum", "none")
_ERROR_COLUMN = 4  # lattice[:, 4]: bad-input bits set by the kernels (speechlab.ops.gram_ctc)


class GramTable(Protocol):
    """What the loss needs of a gram set (:class:`speechlab.data.grams.GramSet` has it)."""

    blank: int
    max_n: int

    @property
    def num_chars(self) -> int: ...

    def __len__(self) -> int: ...

    def key_table(self) -> tuple[list[int], list[int]]: ...


def _key_tensors(grams: GramTable, device: torch.device) -> tuple[Tensor, Tensor]:
    fn = getattr(grams, "key_tensors", None)
    if fn is not None:
        return fn(device)
    keys, ids = grams.key_table()
    return (
        torch.tensor(keys, dtype=torch.int64, device=device),
        torch.tensor(ids, dtype=torch.int32, device=device),
    )


# ============================================================================ argument handling
def _as_lengths(x: Tensor | Sequence[int], name: str, n: int) -> Tensor:
    """``(n,)`` int64 lengths, left on the device they came on (a sequence gives a CPU tensor)."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(list(x), dtype=torch.int64)
    if x.dim() != 1 or x.numel() != n:
        raise ValueError(f"gram_ctc_loss: {name} must have shape ({n},), got {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"gram_ctc_loss: {name} must be an integer tensor, got {x.dtype}")
    return x.to(torch.int64)


def _to_device(xs: Sequence[Tensor | None], device: torch.device) -> list[Any]:
    """The tensors ``xs`` on ``device`` (a None stays None). CPU ones go to CUDA together, as
    the bytes of one pinned buffer copied ``non_blocking``: from pageable memory a blocking copy
    synchronises (torch's sync debug mode flags it) and even an asynchronous one may make the
    driver synchronise with the stream to stage it. Their dtypes may differ: each part starts
    at a byte offset that is a multiple of its element size as long as no part has larger
    elements than the parts before it (the callers pass int64 tensors, then at most one float
    tensor). During CUDA graph capture each is copied as it is, so torch still rejects pageable
    memory there."""
    out = list(xs)
    host = [i for i, x in enumerate(xs) if x is not None and x.is_cpu]
    if device.type == "cuda" and host and not torch.cuda.is_current_stream_capturing():
        like = [xs[i] for i in host]
        buf = _pack_bytes(like, pin_memory=True).to(device, non_blocking=True)
        for i, x in zip(host, _unpack_bytes(buf, like), strict=True):
            out[i] = x
    return [x if x is None or x.device == device else x.to(device) for x in out]


def _pack_bytes(xs: Sequence[Tensor], pin_memory: bool = False) -> Tensor:
    """The bytes of the CPU tensors ``xs`` one after the other in one uint8 tensor."""
    parts = [x.contiguous().view(-1).view(torch.uint8) for x in xs]
    buf = torch.empty(sum(p.numel() for p in parts), dtype=torch.uint8, pin_memory=pin_memory)
    return torch.cat(parts, out=buf)


def _unpack_bytes(buf: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``buf`` (from :func:`_pack_bytes`, on any device) with the dtypes and shapes of
    ``like``."""
    sizes = [x.numel() * x.element_size() for x in like]
    return [part.view(x.dtype).view(x.shape) for part, x in zip(buf.split(sizes), like, strict=True)]


def _padded_targets(targets: Tensor, target_lengths: Tensor, n: int) -> Tensor:
    """(N, S) int64 targets from padded 2-D or concatenated 1-D ones, on ``targets``' device
    (sized from ``target_lengths``: a host synchronisation only if those are on a GPU)."""
    if targets.dtype != torch.int64:
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
            raise TypeError(
                f"gram_ctc_loss: targets must be an integer tensor, got {targets.dtype}"
            )
        targets = targets.to(torch.int64)
    if targets.dim() == 2:
        if targets.size(0) != n:
            raise ValueError(
                f"gram_ctc_loss: targets has {targets.size(0)} rows, log_probs has batch {n}"
            )
        return targets
    if targets.dim() != 1:
        raise ValueError(
            f"gram_ctc_loss: targets must be (N, S) padded or 1-D concatenated, got "
            f"{tuple(targets.shape)}"
        )
    total = int(target_lengths.sum())
    if total != targets.numel():
        raise ValueError(
            f"gram_ctc_loss: 1-D targets hold {targets.numel()} ids but target_lengths sum to "
            f"{total}"
        )
    max_u = int(target_lengths.max()) if n else 0
    if total == 0 or max_u == 0:
        return targets.new_zeros((n, max(max_u, 0)))
    lengths = _to_device([target_lengths], targets.device)[0]
    start = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(max_u, device=targets.device)
    idx = (start[:, None] + pos[None, :]).clamp(max=total - 1)
    return torch.where(pos[None, :] < lengths[:, None], targets[idx], 0)


def _check_lengths(lengths: Tensor, bound: int, name: str) -> None:
    values = lengths.tolist()
    if values and (min(values) < 0 or max(values) > bound):
        i = next(i for i, v in enumerate(values) if not 0 <= v <= bound)
        raise ValueError(f"gram_ctc_loss: {name}[{i}] = {values[i]} is outside [0, {bound}]")


def _check_ids(targets: Tensor, target_lengths: Tensor, num_chars: int) -> None:
    if targets.numel() == 0:
        return
    pos = torch.arange(targets.size(1), device=targets.device)
    ids = torch.where(pos.unsqueeze(0) < target_lengths.unsqueeze(1), targets, 1)  # 1: padding
    lo, hi = torch.aminmax(ids)
    if int(lo) < 1 or int(hi) > num_chars:
        b, j = (int(v) for v in ((ids < 1) | (ids > num_chars)).nonzero()[0])
        raise ValueError(
            f"gram_ctc_loss: targets[{b}, {j}] = {int(targets[b, j])} is not a character id "
            f"(expected 1..{num_chars}; targets are character ids, blank excluded)"
        )


def _validate(
    t_max: int,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    num_chars: int,
    *,
    host_only: bool = False,
) -> bool:
    """Raise ``ValueError`` naming the first length outside ``[0, T]`` / ``[0, S]`` or target
    id outside ``1..num_chars`` (within its target length); ``targets`` padded ``(N, S)``.

    Pure. On CPU tensors it touches no device; on CUDA tensors each check synchronises (used
    only once the kernels have flagged an error). ``host_only``: run only the checks whose
    tensors are all on the CPU. Returns whether every check ran.
    """

    def wanted(*xs: Tensor) -> bool:
        return not host_only or all(x.is_cpu for x in xs)

    done = 0
    if wanted(input_lengths):
        _check_lengths(input_lengths, t_max, "input_lengths")
        done += 1
    if wanted(target_lengths):
        _check_lengths(target_lengths, targets.size(1), "target_lengths")
        done += 1
    if wanted(targets, target_lengths):
        _check_ids(targets, target_lengths, num_chars)
        done += 1
    return done == 3


# ============================================================================ public API
def gram_ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    grams: GramTable,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    backend: str = "auto",
    *,
    validate: bool = True,
) -> Tensor:
    """The Gram-CTC loss; mirrors :func:`torch.nn.functional.ctc_loss`.

    Args:
        log_probs: ``(T, N, |V|)`` log-probabilities over the gram set's outputs (``|V| =
            len(grams)``), e.g. from ``log_softmax``; fp32, fp64, or (compiled kernels)
            bf16/fp16, which are accumulated in fp32.
        targets: character ids (``1..|Σ|``), padded ``(N, S)`` or concatenated 1-D
            ``(sum(target_lengths),)``. Padding values are ignored.
        input_lengths: ``(N,)`` frames per utterance, ``<= T``.
        target_lengths: ``(N,)`` characters per utterance, ``<= S``.
        grams: the gram set (:class:`speechlab.data.grams.GramSet`).
        blank: the blank id; a gram set fixes it at ``grams.blank`` (0).
        reduction: ``"mean"`` (each utterance's loss divided by its target length, clamped to
            at least 1, then the batch mean), ``"sum"`` or ``"none"`` (``(N,)``).
        zero_infinity: replace infinite losses (targets that cannot fit their frames) and
            their gradients by zero.
        backend: ``"auto"``, ``"cuda"``, ``"cpu"`` or ``"reference"`` (see
            :func:`speechlab.ops.available_backends`).
        validate: raise ``ValueError`` naming the first length outside ``[0, T]`` /
            ``[0, S]`` or target id outside ``1..|Σ|`` (within its target length). Lengths and
            targets that arrive on the host (Python sequences, CPU tensors) are checked there,
            before they are copied to the device (pinned, ``non_blocking``); the kernels flag
            the rest, and reading their flags is one host synchronisation on CUDA. So a CUDA
            call with both lengths and ``targets`` on the host (torch's ``ctc_loss`` takes
            host lengths too) never synchronises; one with a CUDA length, or with host
            lengths but CUDA ``targets`` (lengths checked on the host, ids through the
            flags), synchronises once (the reference backend copies CUDA targets to the host
            anyway). ``validate=False``: no checks and no sync (except for 1-D concatenated
            ``targets`` with CUDA ``target_lengths``, which need one to size the padding); a
            bad utterance gets a NaN loss.

    Returns:
        The loss in nats: a scalar, or ``(N,)`` for ``reduction="none"``. Its dtype is
        fp32 (fp64 for fp64 inputs), also for bf16/fp16 inputs.

    The gradient with respect to ``log_probs`` is ``-γ_t(c)`` per utterance (module docstring).
    """
    if not isinstance(log_probs, Tensor) or log_probs.dim() != 3:
        shape = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs)
        raise ValueError(f"gram_ctc_loss: log_probs must be a (T, N, V) tensor, got {shape}")
    if not log_probs.dtype.is_floating_point:
        raise TypeError(f"gram_ctc_loss: log_probs must be floating point, got {log_probs.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"gram_ctc_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if log_probs.size(2) != len(grams):
        raise ValueError(
            f"gram_ctc_loss: log_probs has {log_probs.size(2)} outputs but the gram set has "
            f"{len(grams)} (blank + {len(grams) - 1} grams)"
        )
    if blank != grams.blank:
        raise ValueError(
            f"gram_ctc_loss: blank={blank}, but the gram set puts the blank at {grams.blank}"
        )
    if not isinstance(targets, Tensor):
        raise TypeError(f"gram_ctc_loss: targets must be a tensor, got {type(targets).__name__}")
    device = log_probs.device
    t_max, n = log_probs.size(0), log_probs.size(1)
    il = _as_lengths(input_lengths, "input_lengths", n)
    tl = _as_lengths(target_lengths, "target_lengths", n)
    tg = _padded_targets(targets, tl, n)
    # host checks first; the kernel flags are read only for what arrived on a device
    checked = validate and _validate(t_max, tg, il, tl, grams.num_chars, host_only=True)

    out_dtype = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    # the mean's weights are made where the target lengths are, so host lengths cost no launch
    weights = _mean_weights(tl, out_dtype) if reduction == "mean" else None

    which = ops.resolve_backend(backend, device)
    if which == "reference":
        tg_host, tl_host = tg.cpu(), tl.cpu()  # the reference builds its lattice on the host
        if validate and not checked:
            _validate(t_max, tg_host, il.cpu(), tl_host, grams.num_chars)
        if log_probs.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"gram_ctc_loss: the reference backend takes fp32/fp64 log_probs, got "
                f"{log_probs.dtype}"
            )
        il, tl, weights = _to_device([il, tl, weights], device)
        nll = _reference_nll(log_probs, tg_host, il, tl_host, grams, zero_infinity)
    else:
        tg, il, tl, weights = _to_device([tg, il, tl, weights], device)
        keys, ids = _key_tensors(grams, device)
        # on CUDA, β runs beside α in the forward when a backward will follow
        need_beta = device.type == "cuda" and log_probs.requires_grad and torch.is_grad_enabled()
        nll, _, _, lattice = torch.ops.speechlab.gram_ctc_forward(
            log_probs, tg, il, tl, keys, ids, grams.num_chars, grams.max_n, zero_infinity, need_beta
        )
        # the kernels flag bad lengths and ids (NaN loss); one host sync to raise instead
        if validate and not checked and bool(lattice[:, _ERROR_COLUMN].any()):
            _validate(t_max, tg, il, tl, grams.num_chars)  # raises with the details
            raise ValueError("gram_ctc_loss: the kernel flagged invalid lengths or targets")
    if zero_infinity:
        nll = torch.where(torch.isinf(nll), 0.0, nll)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if n == 0:
        return nll.sum() / 0  # NaN, as the mean of nothing
    # mean(nll / max(U, 1)) as one dot product: 1 kernel forward and 1 backward instead of
    # clamp, div, mean and their backward ops (at speech shapes the loss is host-bound)
    return torch.dot(nll, weights)


def _mean_weights(target_lengths: Tensor, dtype: torch.dtype) -> Tensor:
    """``(N,)`` weights ``1 / (N · max(U_n, 1))`` of the "mean" reduction, on
    ``target_lengths``' device: the mean is ``nll · weights``."""
    n = target_lengths.numel()
    return (target_lengths.clamp(min=1) * max(n, 1)).to(dtype).reciprocal_()


# ============================================================================ reference backend
class ReferenceLattice:
    """Padded lattice tables of a batch, built in Python (the reference backend's).

    Attributes (``S`` = most states in the batch, ``P = max_n + 2``; index ``S`` is the
    padding state whose value is always ``-inf``):
        label: ``(N, S)`` output id of each state.
        pred, succ: ``(N, S, P)`` predecessor / successor states (itself first).
        final: ``(N,)`` index of ``b_U``; its predecessors are the final states, and the
            successors of ``b_0`` (index 0) are the start states.
    """

    def __init__(self, targets: Tensor, target_lengths: Tensor, grams: GramTable) -> None:
        keys, ids = grams.key_table()
        table = dict(zip(keys, ids, strict=True))
        base = grams.num_chars + 1
        n_max = grams.max_n
        p = n_max + 2
        rows = []
        for y, u in zip(targets.tolist(), target_lengths.tolist(), strict=True):
            rows.append(self._utterance(y[:u], table, base, n_max))
        s_max = max(len(r[0]) for r in rows) if rows else 1
        pad = s_max
        nb = len(rows)
        label = torch.zeros((nb, s_max), dtype=torch.int64)
        pred = torch.full((nb, s_max, p), pad, dtype=torch.int64)
        succ = torch.full((nb, s_max, p), pad, dtype=torch.int64)
        final = torch.zeros((nb,), dtype=torch.int64)
        for b, (lab, pr, su, fin) in enumerate(rows):
            label[b, : len(lab)] = torch.tensor(lab)
            for s, (ps, ss) in enumerate(zip(pr, su, strict=True)):
                pred[b, s, : len(ps)] = torch.tensor(ps)
                succ[b, s, : len(ss)] = torch.tensor(ss)
            final[b] = fin
        self.label, self.pred, self.succ, self.final = label, pred, succ, final
        self.num_states = s_max

    @staticmethod
    def _utterance(
        y: list[int], table: dict[int, int], base: int, n_max: int
    ) -> tuple[list[int], list[list[int]], list[list[int]], int]:
        u = len(y)
        # ends[k] = [(n, gram id)] of the grams y[k-n:k], by increasing n
        ends: list[list[tuple[int, int]]] = [[] for _ in range(u + 1)]
        for k in range(1, u + 1):
            for n in range(1, min(n_max, k) + 1):
                key = 0
                for c in y[k - n : k]:
                    key = key * base + c
                g = table.get(key)
                if g is not None:
                    ends[k].append((n, g))
        blank_at: list[int] = []
        gram_at: dict[tuple[int, int], int] = {}  # (start i, n) -> state
        label: list[int] = []
        for k in range(u + 1):
            for n, g in ends[k]:
                gram_at[(k - n, n)] = len(label)
                label.append(g)
            blank_at.append(len(label))
            label.append(0)
        pred: list[list[int]] = [[] for _ in label]
        succ: list[list[int]] = [[] for _ in label]

        def ending(k: int) -> list[tuple[int, int]]:  # (state, id) of grams ending at k
            return [(gram_at[(k - n, n)], g) for n, g in ends[k]]

        def starting(k: int) -> list[tuple[int, int]]:  # (state, id) of grams starting at k
            return sorted(
                (gram_at[(k, n)], label[gram_at[(k, n)]])
                for n in range(1, n_max + 1)
                if (k, n) in gram_at
            )

        for k in range(u + 1):
            s = blank_at[k]
            pred[s] = [s] + [q for q, _ in ending(k)]
            succ[s] = [s] + [q for q, _ in starting(k)]
            for n, g in ends[k]:
                s = gram_at[(k - n, n)]
                i = k - n
                pred[s] = [s, blank_at[i]] + [q for q, h in ending(i) if h != g]
                succ[s] = [s, blank_at[k]] + [q for q, h in starting(k) if h != g]
        return label, pred, succ, blank_at[u]


def _lse_gather(buf: Tensor, index: Tensor) -> Tensor:
    """logsumexp over the last axis of ``buf`` gathered at ``index`` ``(N, S, P)``."""
    nb, s, p = index.shape
    return torch.logsumexp(buf.gather(1, index.reshape(nb, s * p)).reshape(nb, s, p), dim=-1)


def reference_alpha(
    log_probs: Tensor, lat: ReferenceLattice, input_lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Forward variables: ``(log p (N,), log α (T, N, S+1))``, in fp32/fp64 like the input.

    Vectorized over the batch, looping over time. For ``t >= input_lengths[n]`` the last
    column of α is carried over; column ``S`` is the ``-inf`` padding state.
    """
    t_max, nb, _ = log_probs.shape
    dev, dt = log_probs.device, log_probs.dtype
    label, pred = lat.label.to(dev), lat.pred.to(dev)
    s = lat.num_states
    emit = log_probs.gather(2, label[None].expand(t_max, nb, s))  # (T, N, S)
    ninf = torch.full((nb, 1), -torch.inf, dtype=dt, device=dev)
    alpha = torch.full((nb, s + 1), -torch.inf, dtype=dt, device=dev)
    alpha[:, 0] = 0  # the virtual frame t = -1 holds only b_0
    alphas = log_probs.new_empty((t_max, nb, s + 1))
    for t in range(t_max):
        new = torch.cat([_lse_gather(alpha, pred) + emit[t], ninf], dim=1)
        alpha = torch.where((t < input_lengths)[:, None], new, alpha)
        alphas[t] = alpha
    fin = pred[torch.arange(nb, device=dev), lat.final.to(dev)]  # the final states
    logp = torch.logsumexp(alpha.gather(1, fin), dim=1)
    return logp, alphas


def reference_beta(
    log_probs: Tensor, lat: ReferenceLattice, input_lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward variables without the frame's emission: ``(log p (N,), log β̃ (T, N, S))``
    with ``β_t(s) = β̃_t(s) + log_probs[t, n, label(s)]``; ``-inf`` for ``t >= input_lengths``.
    """
    t_max, nb, _ = log_probs.shape
    dev, dt = log_probs.device, log_probs.dtype
    label, succ = lat.label.to(dev), lat.succ.to(dev)
    s = lat.num_states
    emit = log_probs.gather(2, label[None].expand(t_max, nb, s))
    ninf = torch.full((nb, 1), -torch.inf, dtype=dt, device=dev)
    onehot = torch.full((nb, s + 1), -torch.inf, dtype=dt, device=dev)
    onehot[torch.arange(nb, device=dev), lat.final.to(dev)] = 0  # virtual frame t = T_n
    beta = onehot
    betas = torch.full((t_max, nb, s), -torch.inf, dtype=dt, device=dev)
    for t in range(t_max - 1, -1, -1):
        nxt = torch.where((t + 1 >= input_lengths)[:, None], onehot, beta)
        bex = _lse_gather(nxt, succ)
        active = (t < input_lengths)[:, None]
        betas[t] = torch.where(active, bex, -torch.inf)
        beta = torch.where(active, torch.cat([bex + emit[t], ninf], dim=1), beta)
    first = torch.where((input_lengths == 0)[:, None], onehot, beta)
    logp = torch.logsumexp(first.gather(1, succ[:, 0]), dim=1)  # successors of b_0 = starts
    return logp, betas


class _ReferenceGramCTC(torch.autograd.Function):
    """nll = -log p with the explicit α/β gradient ``-γ`` (no autograd through the loop)."""

    @staticmethod
    def forward(ctx, log_probs, lat, input_lengths, zero_infinity):  # type: ignore[override]
        logp, alphas = reference_alpha(log_probs.detach(), lat, input_lengths)
        ctx.save_for_backward(log_probs, input_lengths, logp, alphas)
        ctx.lat, ctx.zero_infinity = lat, zero_infinity
        return -logp

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        log_probs, input_lengths, logp, alphas = ctx.saved_tensors
        lat = ctx.lat
        t_max, nb, v = log_probs.shape
        _, betas = reference_beta(log_probs, lat, input_lengths)
        finite = torch.isfinite(logp)
        lp_safe = torch.where(finite, logp, 0)
        # γ_t(s) = exp(α_t(s) + β̃_t(s) - log p): α carries the emission once
        gamma = torch.exp(alphas[..., :-1] + betas - lp_safe[None, :, None])
        label = lat.label.to(log_probs.device)[None].expand(t_max, nb, -1)
        out = torch.zeros_like(log_probs).scatter_add_(2, label, gamma)
        out = -out * grad[None, :, None]
        active = torch.arange(t_max, device=log_probs.device)[:, None] < input_lengths[None]
        bad = torch.nan if not ctx.zero_infinity else 0.0
        out = torch.where(~finite[None, :, None] & active[..., None], bad, out)
        return out, None, None, None


def _reference_nll(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    grams: GramTable,
    zero_infinity: bool,
) -> Tensor:
    lat = ReferenceLattice(targets.cpu(), target_lengths.cpu(), grams)
    return _ReferenceGramCTC.apply(log_probs, lat, input_lengths, zero_infinity)


def gram_ctc_reference_logp(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    grams: GramTable,
) -> tuple[Tensor, Tensor]:
    """``log p(y|x)`` of each utterance computed from α and, independently, from β (the two
    must agree); reference backend, padded ``(N, S)`` targets."""
    lat = ReferenceLattice(targets.cpu(), target_lengths.cpu(), grams)
    il = input_lengths.to(log_probs.device)
    return reference_alpha(log_probs, lat, il)[0], reference_beta(log_probs, lat, il)[0]


__all__ = ["GramTable", "ReferenceLattice", "gram_ctc_loss", "gram_ctc_reference_logp"]
