"""The process's place in a distributed (DDP) run, for code that runs with or without one."""

from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    """``(global rank, world size)`` of this process; ``(0, 1)`` outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
