"""nn.Modules of speechlab."""

from torch import nn

from speechlab.nn.losses import GramCTCLoss


def count_parameters(module: nn.Module) -> int:
    """Trainable and frozen parameters of ``module`` (elements; buffers such as BatchNorm's
    running statistics are not parameters)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["GramCTCLoss", "count_parameters"]
