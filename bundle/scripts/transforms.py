"""The bundle's dictionary transforms, named in the configs' transform chains next to MONAI's."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import AsDiscrete, MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles


class NormalizeIntensityByModalityd(MapTransform):
    """Scale intensities to [0, 1] by modality, with MONAI transforms:

    - ``"ct"``: window ``[a_min, a_max]`` HU (clipped), ``ScaleIntensityRange``;
    - ``"mr"``: per-channel percentiles ``[lower, upper]`` (clipped), ``ScaleIntensityRangePercentiles``;
    - ``"rgb"``: divide by 255 (8-bit photographs such as dermoscopy).
    """

    MODALITIES = ("ct", "mr", "rgb")

    def __init__(
        self,
        keys: KeysCollection,
        modality: str,
        a_min: float = -1000.0,
        a_max: float = 1000.0,
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = modality.lower()
        if self.modality == "ct":
            self.scaler = ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True)
        elif self.modality == "mr":
            self.scaler = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True, channel_wise=True)
        elif self.modality == "rgb":
            self.scaler = ScaleIntensityRange(0.0, 255.0, 0.0, 1.0, clip=True)
        else:
            raise ValueError(f"modality must be one of {self.MODALITIES}, got {modality!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class BinarizeLabeld(MapTransform):
    """For binary tasks (``num_classes == 1``) map any label value >= 0.5 to 1 (``AsDiscrete(threshold=0.5)``), so 0/255
    and 0/1 masks both become 0/1 float32; multi-class label maps (``num_classes > 1``) pass through unchanged."""

    def __init__(self, keys: KeysCollection, num_classes: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarize = AsDiscrete(threshold=0.5) if num_classes == 1 else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.binarize is not None:
            for key in self.key_iterator(d):
                d[key] = self.binarize(d[key])
        return d


class LabelToOneHotd(MapTransform):
    """Integer label map ``(1, *spatial)`` -> ``(num_classes, *spatial)`` float32 {0, 1}: one channel per FOREGROUND
    class (``AsDiscrete(to_onehot=num_classes + 1)`` without the background channel). ``num_classes=1`` gives the
    binary mask."""

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
