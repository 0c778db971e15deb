"""Loader of speechlab's compiled extension (``speechlab._C``, built from ``csrc/``) and the
resolver that picks a Gram-CTC backend.

Backends:

- ``"cuda"``: the CUDA kernel (extension built with CUDA, tensors on a CUDA device);
- ``"cpu"``: the C++ CPU kernel (tensors on the CPU);
- ``"reference"``: vectorized pure PyTorch, always available, slow; the spec in code.

``backend="auto"`` takes the compiled kernel for the tensors' device when there is one and the
reference otherwise, warning once when the extension is missing.

>>> ok, why = available_backends()["reference"]
>>> ok
True
"""

from __future__ import annotations

import importlib
import warnings

import torch

BACKENDS = ("auto", "cuda", "cpu", "reference")

_state: dict[str, object] = {"tried": False, "error": None}
_warned: set[str] = set()
_resolved: dict[tuple[str, str], str] = {}  # (backend, device type) -> backend that runs


def load_extension() -> bool:
    """Import ``speechlab._C`` once and register the ops' fake and autograd kernels.

    Returns whether the extension is loaded; the reason of a failure is kept for
    :func:`available_backends`.
    """
    if not _state["tried"]:
        _state["tried"] = True
        try:
            importlib.import_module("speechlab._C")
            from speechlab.ops import gram_ctc

            gram_ctc.register()
        except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError
            _state["error"] = f"{type(e).__name__}: {e}"
    return _state["error"] is None


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def available_backends() -> dict[str, tuple[bool, str]]:
    """Each backend's availability and, when unavailable, why (name -> (ok, reason))."""
    out: dict[str, tuple[bool, str]] = {}
    if load_extension():
        out["cpu"] = (True, "compiled C++ kernel (speechlab._C)")
        if not _has_kernel("speechlab::gram_ctc_forward", "CUDA"):
            out["cuda"] = (
                False,
                "speechlab._C was built without the CUDA kernel (rebuild with "
                "SPEECHLAB_BUILD_CUDA=1 and a CUDA toolkit)",
            )
        elif not torch.cuda.is_available():
            out["cuda"] = (False, "no CUDA device is available")
        else:
            out["cuda"] = (True, "compiled CUDA kernel (speechlab._C)")
    else:
        why = (
            f"the compiled extension speechlab._C is not available ({_state['error']}); "
            "build it with `python -m pip install --no-build-isolation -e .`"
        )
        out["cpu"] = (False, why)
        out["cuda"] = (False, why)
    out["reference"] = (True, "pure PyTorch, always available")
    return out


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a RuntimeWarning the first time ``key`` is seen."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=5)  # the caller of gram_ctc_loss


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for tensors on ``device``: ``"cuda"``, ``"cpu"`` or
    ``"reference"``.

    ``"auto"`` falls back to the reference (warning once) when the compiled kernel for the
    device is missing; an explicit ``"cuda"``/``"cpu"`` that cannot run raises ``RuntimeError``
    with the reason.
    """
    key = (backend, device.type)
    hit = _resolved.get(key)
    if hit is not None:
        return hit
    which = _resolve(backend, device)
    _resolved[key] = which
    return which


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return backend
    avail = available_backends()
    kind = "cuda" if device.type == "cuda" else "cpu" if device.type == "cpu" else None
    if backend == "auto":
        if kind is None:
            return "reference"
        ok, why = avail[kind]
        if ok:
            return kind
        warn_once(
            f"fallback-{kind}",
            f"speechlab: the {kind} Gram-CTC kernel is unavailable ({why}); using the slow "
            "pure-PyTorch reference",
        )
        return "reference"
    ok, why = avail[backend]
    if not ok:
        raise RuntimeError(f"Gram-CTC backend {backend!r} is unavailable: {why}")
    if kind != backend:
        raise RuntimeError(
            f"Gram-CTC backend {backend!r} needs tensors on a {backend} device, got {device}"
        )
    return backend


__all__ = ["BACKENDS", "available_backends", "load_extension", "resolve_backend", "warn_once"]
