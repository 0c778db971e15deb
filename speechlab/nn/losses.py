"""Loss modules."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from speechlab.functional.gram_ctc import GramTable, gram_ctc_loss


class GramCTCLoss(nn.Module):
    """Gram-CTC loss as a module; mirrors :class:`torch.nn.CTCLoss`.

    Args:
        grams: the gram set (:class:`speechlab.data.grams.GramSet`) the network's outputs
            follow: ``len(grams)`` outputs, blank at 0.
        blank, reduction, zero_infinity, backend: as in
            :func:`speechlab.functional.gram_ctc_loss`.

    Shapes: ``log_probs (T, N, len(grams))``, ``targets (N, S)`` padded or concatenated 1-D
    character ids, ``input_lengths (N,)``, ``target_lengths (N,)``; output scalar, or ``(N,)``
    with ``reduction="none"``.
    """

    def __init__(
        self,
        grams: GramTable,
        blank: int = 0,
        reduction: str = "mean",
        zero_infinity: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.grams = grams
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = zero_infinity
        self.backend = backend

    def forward(
        self,
        log_probs: Tensor,
        targets: Tensor,
        input_lengths: Tensor | Sequence[int],
        target_lengths: Tensor | Sequence[int],
    ) -> Tensor:
        return gram_ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            self.grams,
            blank=self.blank,
            reduction=self.reduction,
            zero_infinity=self.zero_infinity,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"grams={len(self.grams)} outputs, reduction={self.reduction!r}, "
            f"zero_infinity={self.zero_infinity}, backend={self.backend!r}"
        )
