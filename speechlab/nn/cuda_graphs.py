"""CUDA graphs of a module's training forward and backward, one per input signature.

A recurrence that runs token by token (the attention decoder's teacher forcing) launches a few
dozen small kernels per step, forward and backward; on a GPU its step time is the host's launch
time, not the GPU's. :class:`GraphCache` captures the whole forward and backward of a module once
per input signature (shapes, dtypes, which inputs need gradients) with
:func:`torch.cuda.make_graphed_callables` and replays them afterwards: one launch each way.
Callers pad their inputs to a few bucketed sizes so that few signatures occur.

The captured module must be deterministic in its shapes, run with autocast off (the graphs hold
the kernels of one dtype) and use only its own parameters and its tensor arguments. Its
parameters keep their storage (optimizers update them in place), so replays see the current
weights; dropout inside is replayed with fresh random numbers (PyTorch's graph-safe generator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger("speechlab.nn")

Signature = tuple[tuple[tuple[int, ...], torch.dtype, bool], ...]


def signature(args: tuple[torch.Tensor, ...]) -> Signature:
    """The graph key of ``args``: each one's shape, dtype and ``requires_grad``."""
    return tuple((tuple(a.shape), a.dtype, a.requires_grad) for a in args)


class GraphCache:
    """Graphed copies of a module, one per :func:`signature` of its arguments.

    Args:
        make_module: builds the module to capture (a fresh wrapper each time, sharing the
            real parameters: :func:`torch.cuda.make_graphed_callables` replaces its
            ``forward``).
        max_graphs: signatures beyond this many run eagerly (each graph keeps its own memory
            pool of the forward's saved activations), with one warning.
    """

    def __init__(self, make_module: Callable[[], nn.Module], max_graphs: int = 48) -> None:
        self.make_module = make_module
        self.max_graphs = max_graphs
        self.graphs: dict[Signature, nn.Module] = {}
        self._storage: tuple[int | bool, ...] = ()
        self._warned = False

    def _check_storage(self, module: nn.Module) -> None:
        """Forget every graph when a parameter has new storage (``.to()``, a reload; the graphs
        read the addresses they were captured with) or is frozen or unfrozen (the backward
        graph computes the gradients of those that needed one at capture)."""
        storage = tuple(x for p in module.parameters() for x in (p.data_ptr(), p.requires_grad))
        if storage != self._storage:
            self.graphs.clear()
            self._storage = storage

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The module's outputs for ``args`` (CUDA tensors), through its graph for their
        signature (captured on first use). Outputs are fresh tensors (copies of the graph's
        static buffers, which the next replay overwrites)."""
        module = self.make_module()
        self._check_storage(module)
        key = signature(args)
        graphed = self.graphs.get(key)
        if graphed is None:
            if len(self.graphs) >= self.max_graphs:
                if not self._warned:
                    log.warning("CUDA graphs: more than %d input shapes; the rest run eagerly "
                                "(pad inputs to coarser buckets)", self.max_graphs)
                    self._warned = True
                return tuple(module(*args))
            samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            graphed = torch.cuda.make_graphed_callables(module, samples, allow_unused_input=True)
            self.graphs[key] = graphed
        return tuple(o.clone() for o in graphed(*args))
