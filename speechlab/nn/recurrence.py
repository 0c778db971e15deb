"""Recurrences under CPU autocast on every x86-64 CPU.

Under CPU bf16 autocast (``precision: bf16-mixed`` on the CPU) torch runs an ``nn.LSTM`` whose
input is float32 through oneDNN's LSTM primitive in bf16. oneDNN has no such primitive for
AVX2-only CPUs (e.g. an AMD EPYC without avx512*, seen with torch 2.11-2.14): creating it fails with ``RuntimeError: could not create a primitive descriptor for the LSTM
forward propagation primitive``. ``ONEDNN_MAX_CPU_ISA=AVX2`` (set before torch loads) makes any
x86-64 CPU behave so, which is how the tests exercise that path.

:func:`run_recurrence` is how speechlab calls every ``nn.LSTM`` / ``nn.GRU`` / ``nn.LSTMCell``:
where :func:`cpu_autocast_supports` says this CPU cannot run that kind of recurrence in the
autocast dtype, the recurrence runs in float32 with autocast off (its output stays float32; the
layers after it are autocast again). Elsewhere — CUDA, no autocast, CPUs that can — it is a
plain call. The answer is probed once per process, kind and dtype, on the first call.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

log = logging.getLogger("speechlab.nn")

#: the recurrent module kinds that are probed (subclasses are probed as their base kind)
KINDS: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)

T = TypeVar("T")


def _kind(rnn: nn.Module) -> type[nn.Module]:
    for kind in KINDS:
        if isinstance(rnn, kind):
            return kind
    raise TypeError(f"not a recurrent module: {type(rnn).__name__} (expected one of "
                    f"{', '.join(k.__name__ for k in KINDS)})")


@functools.cache
def cpu_autocast_supports(kind: type[nn.Module] = nn.LSTM, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether a ``kind`` recurrence (``nn.LSTM``, ``nn.GRU``, ``nn.LSTMCell``, ...) runs forward
    and backward under ``torch.autocast("cpu", dtype=dtype)`` on this CPU, with float32 and with
    ``dtype`` inputs (a 4-unit module over 3 steps of 2 sequences, bidirectional for the
    multi-step kinds; about a millisecond). Probed once per process, kind and dtype; the global
    random state is left as it was. False on AVX2-only CPUs for ``nn.LSTM`` in bf16 (oneDNN
    has no bf16 LSTM primitive there)."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        cell = issubclass(kind, nn.RNNCellBase)
        cpu = {"device": "cpu", "dtype": torch.float32}
        rnn = kind(4, 4, **cpu) if cell else kind(4, 4, bidirectional=True, **cpu)
        x = torch.linspace(-1.0, 1.0, 24, **cpu).reshape(3, 2, 4)
        try:
            for inp in (x, x.to(dtype)):
                with torch.autocast("cpu", dtype=dtype):
                    out = rnn(inp[0] if cell else inp)
                out = out[0] if isinstance(out, tuple) else out
                out.float().sum().backward()
        except RuntimeError as e:
            log.info("this CPU runs no %s under %s autocast (%s): speechlab runs it in float32 "
                     "with autocast off", kind.__name__, dtype, str(e).splitlines()[0])
            return False
    return True


def _cast(obj: T, dtype: torch.dtype) -> T:
    """Floating tensors of ``obj`` (a tensor, a PackedSequence, a tuple of them, None) in ``dtype``."""
    if isinstance(obj, (torch.Tensor, PackedSequence)):  # (before tuple: a PackedSequence is one)
        return obj.to(dtype) if obj.data.is_floating_point() else obj  # type: ignore[return-value]
    if isinstance(obj, tuple):
        return tuple(_cast(o, dtype) for o in obj)  # type: ignore[return-value]
    return obj


def needs_fp32(rnn: nn.Module, x: torch.Tensor | PackedSequence) -> bool:
    """Whether :func:`run_recurrence` would run ``rnn`` on ``x`` in float32 with autocast off:
    ``x`` is on the CPU, CPU autocast is on, and this CPU cannot run ``rnn``'s kind in the
    autocast dtype."""
    kind = _kind(rnn)  # checked on every machine, not only where the answer is False
    data = x.data if isinstance(x, PackedSequence) else x
    return (data.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and not cpu_autocast_supports(kind, torch.get_autocast_dtype("cpu")))


def run_recurrence(rnn: nn.Module, x: torch.Tensor | PackedSequence, state: Any = None) -> Any:
    """``rnn(x, state)`` for an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (``x (B, L, D)`` or
    ``(L, B, D)`` or a PackedSequence) or a cell (``x (B, D)``); returns what ``rnn`` returns.
    Where :func:`needs_fp32` says so, ``x`` and ``state`` are cast to the module's parameter
    dtype (float32 under mixed precision) and the call runs with CPU autocast off, so the outputs
    are float32."""
    if not needs_fp32(rnn, x):
        return rnn(x, state)
    dtype = next(rnn.parameters()).dtype
    with torch.autocast("cpu", enabled=False):
        return rnn(_cast(x, dtype), _cast(state, dtype))
