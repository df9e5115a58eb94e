"""The supervised baseline's parts (configs/baseline.yaml): its loss, Dice + binary cross-entropy on sigmoid outputs,
its slice-by-slice inferer for volumes (2.5D context as the diffusion model's), and the uncertainty map of its sigmoid
probability (scored by :mod:`.uncertainty` as the ensemble's)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.inferers import SliceInferer
from monai.losses import DiceCELoss
from monai.transforms import MapTransform

from ..data.transforms import stack_context
from ..diffusion.fusion import binary_entropy

__all__ = ["ContextSliceInferer", "DiceBCELoss", "ProbabilityUncertaintyd"]


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


class ContextSliceInferer(SliceInferer):
    """``SliceInferer`` whose 2D network sees each slice with ``context`` neighbours on each side as extra image
    channels (:func:`scripts.data.transforms.stack_context`, as training's ``SliceContextd`` and the diffusion
    sampler's ``context_slices``); ``context=0`` is a plain ``SliceInferer``."""

    def __init__(self, context: int = 0, spatial_dim: int = 0, **kwargs: Any) -> None:
        if context < 0:
            raise ValueError(f"context_slices must be >= 0, got {context}")
        super().__init__(spatial_dim=spatial_dim, **kwargs)
        self.context = context

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if self.context:
            inputs = torch.stack([stack_context(v, self.context, 1 + self.spatial_dim) for v in inputs])
        return super().__call__(inputs, network, *args, **kwargs)


class ProbabilityUncertaintyd(MapTransform):
    """Uncertainty map of a per-class probability in ``keys`` (K, *spatial), as ``EnsembleFusiond`` makes it for an
    ensemble: the binary entropy in bits, maximum over classes, written to ``uncertainty_key`` as (1, *spatial)."""

    def __init__(
        self, keys: KeysCollection, uncertainty_key: str = "uncertainty", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.uncertainty_key = uncertainty_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            p = np.clip(torch.as_tensor(d[key]).detach().cpu().numpy().astype(np.float64), 0, 1)
            d[self.uncertainty_key] = torch.from_numpy(binary_entropy(p).max(0, keepdims=True).astype(np.float32))
        return d
