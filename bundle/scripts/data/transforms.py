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


def stack_context(volume: torch.Tensor, context: int, axis: int = -1) -> torch.Tensor:
    """(C, *spatial) -> (C * (2 context + 1), *spatial): channel block c holds channel c shifted by -context ..
    +context slices along ``axis`` (a spatial axis of ``volume``; the edge slices repeat beyond the volume), so that
    every slice carries its neighbours as extra channels. Channel order: (c, offset), offset fastest."""
    if context == 0:
        return volume
    axis = axis % volume.ndim
    depth = volume.shape[axis]
    index = torch.arange(depth, device=volume.device)
    shifted = [volume.index_select(axis, (index + o).clamp(0, depth - 1)) for o in range(-context, context + 1)]
    return torch.stack(shifted, 1).flatten(0, 1)


class SliceContextd(MapTransform):
    """2.5D context of a ``(C, H, W, 2 context + 1)`` slab cropped around a slice: the image's slab becomes
    ``(C * (2 context + 1), H, W)`` (the neighbours as extra channels, the order of :func:`stack_context`), the label
    keeps its centre slice ``(C, H, W)``. ``context=0``: one slice squeezed. Not in the paper."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", context: int = 0) -> None:
        super().__init__(keys)
        if context < 0:
            raise ValueError(f"context_slices must be >= 0, got {context}")
        self.label_key, self.context = label_key, context

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        depth = 2 * self.context + 1
        for key in self.key_iterator(d):
            if d[key].shape[-1] != depth:
                raise ValueError(f"SliceContextd: {key!r} needs {depth} slices, got shape {tuple(d[key].shape)}")
            d[key] = d[key].movedim(-1, 1).flatten(0, 1)  # (C, S, H, W) -> (C * S, H, W)
        if self.label_key in d:
            d[self.label_key] = d[self.label_key][..., self.context]
        return d
