"""Python side of the compiled Gram-CTC operators (``torch.ops.speechlab.*``).

The schemas, the CPU/CUDA kernels and the autograd formula (C++, registered for the Autograd
dispatch key) live in ``csrc/``; this module registers the fake (meta) kernels used by
``torch.compile`` and ``opcheck``. Import it only through
:func:`speechlab.ops.load_extension`, which loads the library first.

Operators (lattice layout: ``csrc/gram_ctc.h``):

- ``gram_ctc_lattice(targets (N,S) int64, target_lengths (N,) int64, gram_keys (G,) int64,
  gram_ids (G,) int32, num_chars, max_gram_len) -> lattice (N, W) int32``
- ``gram_ctc_forward(log_probs (T,N,V), targets, input_lengths (N,) int64, target_lengths,
  gram_keys, gram_ids, num_chars, max_gram_len, zero_infinity, need_beta) -> (nll (N,),
  log_alpha (N,T,S_bound), beta (N,T,S_bound) or (0,), lattice (N,W))``; floats are fp32
  (fp64 for fp64 inputs). ``beta`` is log β without the frame's emission, computed when
  ``need_beta`` (the CUDA kernel runs it beside α, so the backward needs no sequential
  sweep). Differentiable in ``log_probs``. ``lattice[:, 4]`` flags bad input (1: target id,
  2: target length, 4: input length); such utterances get a NaN ``nll``.
- ``gram_ctc_backward(grad (N,), log_probs, lattice, input_lengths, nll, log_alpha, beta,
  max_target_len, max_gram_len, zero_infinity) -> grad_log_probs (T,N,V)``: the gradient of
  ``sum_n grad[n] * nll[n]`` with respect to ``log_probs`` as free variables,
  ``-grad[n] * gamma_t(c)`` (see ``speechlab.functional.gram_ctc``).
"""

from __future__ import annotations

import torch

_HEADER = 8
#: lattice[:, ERROR_COLUMN] bits
ERROR_COLUMN = 4
ERR_TARGET_ID, ERR_TARGET_LENGTH, ERR_INPUT_LENGTH = 1, 2, 4


def state_bound(max_target_len: int, max_gram_len: int) -> int:
    """Upper bound on the lattice states of a target of ``max_target_len`` characters:
    ``(U+1) + sum_{n<=N} (U-n+1)``."""
    u = max_target_len
    return (u + 1) + sum(max(u - n + 1, 0) for n in range(1, max_gram_len + 1))


def lattice_width(max_target_len: int, max_gram_len: int) -> int:
    """Ints per lattice row (mirrors ``LatticeLayout`` in csrc/gram_ctc.h)."""
    u, n = max_target_len, max_gram_len
    sb = state_bound(u, n)
    p = n + 2
    return _HEADER + 2 * (u + 1) + (u + 1) * n + sb * (1 + 2 * p + 2)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_lattice(targets, target_lengths, gram_keys, gram_ids, num_chars, max_gram_len):
    n, u = targets.shape
    return targets.new_empty((n, lattice_width(u, max_gram_len)), dtype=torch.int32)


def _fake_forward(
    log_probs,
    targets,
    input_lengths,
    target_lengths,
    gram_keys,
    gram_ids,
    num_chars,
    max_gram_len,
    zero_infinity,
    need_beta,
):
    t, n, _ = log_probs.shape
    u = targets.shape[1]
    acc = _acc_dtype(log_probs.dtype)
    nll = log_probs.new_empty((n,), dtype=acc)
    alpha = log_probs.new_empty((n, t, state_bound(u, max_gram_len)), dtype=acc)
    beta = log_probs.new_empty(alpha.shape if need_beta else (0,), dtype=acc)
    lattice = targets.new_empty((n, lattice_width(u, max_gram_len)), dtype=torch.int32)
    return nll, alpha, beta, lattice


def _fake_backward(
    grad,
    log_probs,
    lattice,
    input_lengths,
    nll,
    log_alpha,
    beta,
    max_target_len,
    max_gram_len,
    zero_infinity,
):
    return torch.empty_like(log_probs)


_registered = False


def register() -> None:
    """Register the fake kernels of the loaded ``speechlab`` library (idempotent)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("speechlab::gram_ctc_lattice")(_fake_lattice)
    torch.library.register_fake("speechlab::gram_ctc_forward")(_fake_forward)
    torch.library.register_fake("speechlab::gram_ctc_backward")(_fake_backward)
    _registered = True
