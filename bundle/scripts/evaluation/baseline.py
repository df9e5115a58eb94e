"""The supervised baseline's loss (configs/baseline.yaml): Dice + binary cross-entropy on sigmoid outputs."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss


class DiceBCELoss(DiceCELoss):
    """``DiceCELoss`` with per-channel sigmoid outputs: Dice + ``lambda_ce`` * BCE for every channel count.

    Our labels are one channel per foreground class (no background channel), so MONAI's softmax cross-entropy for
    multi-channel outputs does not apply; this is the baseline counterpart of MedSegDiffLoss's Dice + BCE term.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, **kwargs) -> None:
        super().__init__(sigmoid=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce, **kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape != target.shape:
            raise ValueError(f"prediction {tuple(input.shape)} and label {tuple(target.shape)} differ in shape")
        return self.lambda_dice * self.dice(input, target) + self.lambda_ce * self.bce(input, target)
