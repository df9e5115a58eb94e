"""The bundle's dictionary transform, named in the configs' transform chains next to MONAI's."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import AsDiscrete, MapTransform


class LabelToOneHotd(MapTransform):
    """Integer label map ``(1, *spatial)`` -> ``(num_classes, *spatial)`` float32 {0, 1}: one channel per FOREGROUND
    class (``AsDiscrete(to_onehot=num_classes + 1)`` without the background channel). ``num_classes=1`` gives the
    binary mask. Not ``AsDiscreted`` alone: it keeps the background channel and accepts out-of-range values silently.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_classes < 1:
            raise ValueError(f"num_classes (foreground classes) must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.to_onehot = AsDiscrete(to_onehot=num_classes + 1, dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if label.shape[0] != 1:
                raise ValueError(f"LabelToOneHotd: {key!r} must be a (1, *spatial) label map, got {tuple(label.shape)}")
            if label.min() < 0 or label.max() > self.num_classes:
                raise ValueError(
                    f"LabelToOneHotd: {key!r} has values outside 0..{self.num_classes} "
                    f"(min {float(label.min()):g}, max {float(label.max()):g}); map 0/255 masks to 0/1 first"
                )
            d[key] = self.to_onehot(label)[1:]
        return d
