"""Fusion of an ensemble of sampled masks: Warfield's STAPLE (SimpleITK), mean, majority vote; uncertainty map."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy.special import entr

logger = logging.getLogger(__name__)

METHODS = ("staple", "mean", "vote")


STAPLE_MAX_ITERATIONS = 200  # SimpleITK's default is unbounded: EM on noisy, disagreeing masks may never converge


def staple_binary(
    samples: np.ndarray, threshold: float = 0.5, max_iterations: int = STAPLE_MAX_ITERATIONS
) -> np.ndarray:
    """Binary STAPLE of N {0,1} masks (N, *spatial) with SimpleITK; returns the {0,1} consensus.

    STAPLE's EM is undefined (NaN) when every rater is all-empty or all-full, which is common on 2D slices; then all
    raters agree and their common mask is returned. Any other NaN falls back to majority vote, with a warning. EM stops
    at convergence or after ``max_iterations`` (then its last estimate is used, with a warning).
    """
    import SimpleITK as sitk  # noqa: N813 (imported where STAPLE runs: the other fusions do not need it)

    samples = (samples > 0).astype(np.uint8)
    if (samples == samples[0]).all():
        return samples[0].copy()
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetMaximumIterations(max_iterations)
    prob = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(s) for s in samples]))
    if f.GetElapsedIterations() >= max_iterations:
        msg = f"STAPLE did not converge in {max_iterations} iterations; its last estimate is used"
        warnings.warn(msg, stacklevel=2)
    if np.isnan(prob).any():
        logger.warning("STAPLE returned NaN; using the majority vote instead")
        return vote(samples[:, None])[0]
    return (prob >= threshold).astype(np.uint8)


def staple_multilabel(label_maps: np.ndarray, max_iterations: int = STAPLE_MAX_ITERATIONS) -> np.ndarray:
    """Multi-class STAPLE of N label maps (N, *spatial) with SimpleITK's ``MultiLabelSTAPLEImageFilter``."""
    import SimpleITK as sitk  # noqa: N813

    label_maps = label_maps.astype(np.uint8)
    if (label_maps == label_maps[0]).all():
        return label_maps[0].copy()
    f = sitk.MultiLabelSTAPLEImageFilter()
    f.SetLabelForUndecidedPixels(255)
    f.SetMaximumNumberOfIterations(max_iterations)
    fused = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(m) for m in label_maps]))
    undecided = fused == 255
    if undecided.any():  # ties: take the majority label of the raters there
        fused[undecided] = _mode(label_maps)[undecided]
    return fused


def _mode(label_maps: np.ndarray) -> np.ndarray:
    counts = np.stack([(label_maps == k).sum(0) for k in range(int(label_maps.max()) + 1)])
    return counts.argmax(0).astype(np.uint8)


def vote(samples: np.ndarray) -> np.ndarray:
    """Per-class majority vote of (N, K, *spatial) binary samples -> (K, *spatial) {0,1} (ties count as foreground)."""
    # not VoteEnsemble: it rounds the mean half to even, so a tie (5 of 10 members) would count as background
    return (samples.mean(0) >= 0.5).astype(np.uint8)


def onehot_to_labels(onehot: np.ndarray, channel_axis: int) -> np.ndarray:
    """Foreground channels (one per class, {0,1}) -> integer labels 0..K along ``channel_axis``.

    Where channels overlap the class with the highest index wins.
    """
    onehot = np.moveaxis(onehot > 0, channel_axis, 0)
    labels = np.zeros(onehot.shape[1:], dtype=np.uint8)
    for k in range(onehot.shape[0]):
        labels[onehot[k]] = k + 1
    return labels


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a per-pixel foreground frequency p in [0, 1]."""
    return (entr(p) + entr(1 - p)) / np.log(2)


def fuse(samples: np.ndarray, method: str = "staple", max_iterations: int = STAPLE_MAX_ITERATIONS) -> np.ndarray:
    """(N, K, *spatial) binary samples -> (*spatial) label map 0..K fused with ``method``."""
    if method not in METHODS:
        raise ValueError(f"fusion method must be one of {METHODS}, got {method!r}")
    k = samples.shape[1]
    if method == "mean":  # soft voting: the class (background included) with the highest mean frequency
        # not MeanEnsemble: it averages the foreground channels only; the background's 1 - max decides here
        freq = samples.mean(0)
        return np.concatenate([1 - freq.max(0, keepdims=True), freq]).argmax(0).astype(np.uint8)
    if method == "vote":
        return onehot_to_labels(vote(samples), 0)
    if k == 1:
        return staple_binary(samples[:, 0], max_iterations=max_iterations)
    return staple_multilabel(np.stack([onehot_to_labels(s, 0) for s in samples]), max_iterations)


class EnsembleFusiond(MapTransform):
    """Fuses the ensemble in ``keys`` (N*K member channels in [0, 1], member-major; a member's mask is its value above
    0.5) into a label map and adds an uncertainty map.

    Output: ``keys`` -> (1, *spatial) uint8 labels 0..K, the ``method`` fusion of the members' masks;
    ``uncertainty_key`` -> (1, *spatial) float32, the entropy in bits of the members' mean foreground probability
    (maximum over classes; 0 = all members agree and are sure); ``probability_key`` -> (K, *spatial) float32, that
    mean probability per class; with ``samples_key`` the members' masks are kept as (N, *spatial) label maps. Binary
    members give the foreground frequency. With several ``keys`` (e.g. the ensemble drawn with another case's
    condition), the uncertainty, probability and samples are those of the first key.

    ``anchor_weight`` > 0: each key ends with K more channels, the Condition Model's anchor probability
    (``DiffusionSegmentationInferer(anchor_probability=True)``), and the uncertainty is the entropy of
    ``anchor_weight`` * anchor + (1 - ``anchor_weight``) * members' mean; the fusion and ``probability_key`` use the
    members alone. Not in the paper (docs/architecture.md).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ensemble_size: int,
        method: str = "staple",
        uncertainty_key: str | None = "uncertainty",
        samples_key: str | None = None,
        probability_key: str | None = None,
        staple_max_iterations: int = STAPLE_MAX_ITERATIONS,
        anchor_weight: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.staple_max_iterations = staple_max_iterations
        if method not in METHODS:
            raise ValueError(f"fusion method must be one of {METHODS}, got {method!r}")
        if not 0.0 <= anchor_weight <= 1.0:
            raise ValueError(f"anchor_weight must be in [0, 1], got {anchor_weight}")
        self.anchor_weight = anchor_weight
        self.ensemble_size, self.method = ensemble_size, method
        self.uncertainty_key, self.samples_key, self.probability_key = uncertainty_key, samples_key, probability_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for i, key in enumerate(self.key_iterator(d)):
            pred = d[key]
            arr = np.asarray(torch.as_tensor(pred).detach().cpu().numpy(), dtype=np.float32)
            groups = self.ensemble_size + (1 if self.anchor_weight else 0)  # the anchor: one more group of K
            if arr.shape[0] % groups:
                raise ValueError(
                    f"{key} has {arr.shape[0]} channels, not a multiple of ensemble_size={self.ensemble_size}"
                    + (" + 1 (the anchor probability)" if self.anchor_weight else "")
                )
            members = arr.reshape(groups, -1, *arr.shape[1:])
            members, anchor = (members[:-1], members[-1]) if self.anchor_weight else (members, None)
            samples = (members > 0.5).astype(np.uint8)
            d[key] = self._like(pred, fuse(samples, self.method, self.staple_max_iterations)[None])
            if i > 0:
                continue
            probability = members.mean(0)
            if self.uncertainty_key:
                mixed = (
                    probability
                    if anchor is None
                    else self.anchor_weight * anchor + (1 - self.anchor_weight) * probability
                )
                entropy = binary_entropy(mixed).max(0)[None].astype(np.float32)
                d[self.uncertainty_key] = self._like(pred, entropy)
            if self.probability_key:
                d[self.probability_key] = self._like(pred, probability)
            if self.samples_key:
                d[self.samples_key] = self._like(pred, np.stack([onehot_to_labels(s, 0) for s in samples]))
        return d

    @staticmethod
    def _like(ref: Any, array: np.ndarray) -> torch.Tensor:
        # on the input's device, as MONAI transforms keep it: validation on a GPU compares with GPU labels
        out = torch.as_tensor(array, device=ref.device if isinstance(ref, torch.Tensor) else None)
        return (
            MetaTensor(out, meta=ref.meta, applied_operations=ref.applied_operations)
            if isinstance(ref, MetaTensor)
            else out
        )
