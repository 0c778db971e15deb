"""speechlab: speech and sequence modeling research library on PyTorch + Lightning."""

__version__ = "0.1.0"
