"""LightningCLI subclass used by ``speechlab fit|validate|test|predict``."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI


class SpeechLabCLI(LightningCLI):
    """Lightning's CLI over any task and data module: recipes name them with
    ``model.class_path`` / ``data.class_path`` (subclass mode)."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, args=args, **kwargs)
