"""Pure tensor functions (they import only torch)."""

from speechlab.functional.gram_ctc import gram_ctc_loss

__all__ = ["gram_ctc_loss"]
