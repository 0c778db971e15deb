"""nn.Modules of speechlab."""

from speechlab.nn.losses import GramCTCLoss

__all__ = ["GramCTCLoss"]
