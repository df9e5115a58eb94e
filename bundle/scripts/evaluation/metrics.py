"""Evaluation metrics MONAI does not have: sample diversity (GED, Dice confidence interval), the ensemble curve, and
HD95 with empty masks handled explicitly. Their Dice and IoU are MONAI's ``compute_dice`` / ``compute_iou`` (as the
configs' ``DiceMetric`` / ``MeanIoU``), applied to broadcast pairs of masks (:func:`dice_scores`, :func:`iou_scores`).

Conventions (as ``DiceMetric(ignore_empty=False)``): a class absent from both masks scores Dice = IoU = 1 and
distance 0; absent from exactly one scores 0 (distance 1). Ensembles come as (B, N, *spatial) label maps 0..K (the
``samples`` of ``EnsembleFusiond``); ground truth as (B, K, *spatial) one-hot foreground channels.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, HausdorffDistanceMetric, compute_dice, compute_iou
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scipy import stats

from ..diffusion.fusion import STAPLE_MAX_ITERATIONS, fuse

logger = logging.getLogger(__name__)


def _paired(score: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``score`` (MONAI's ``compute_dice`` or ``compute_iou``, ``ignore_empty=False``) of binary masks ``a``, ``b``
    (..., K, P) broadcast against each other: (..., K). Booleans: exact pixel counts at one byte per pixel."""
    a, b = torch.broadcast_tensors(a.bool(), b.bool())
    lead, (k, p) = a.shape[:-2], a.shape[-2:]
    out = score(a.reshape(-1, k, p), b.reshape(-1, k, p), include_background=True, ignore_empty=False)
    return out.reshape(*lead, k)


def dice_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of binary masks ``a``, ``b`` (..., K, P), broadcast, per class: (..., K) (MONAI's ``compute_dice``)."""
    return _paired(compute_dice, a, b)


def iou_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks ``a``, ``b`` (..., K, P), broadcast, per class: (..., K) (MONAI's ``compute_iou``)."""
    return _paired(compute_iou, a, b)


def _split(samples: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, *spatial) label maps and (B, K, *spatial) one-hot truth -> (B, N, K, P) and (B, K, P) booleans."""
    if samples.ndim != y.ndim or samples.shape[0] != y.shape[0] or samples.shape[2:] != y.shape[2:]:
        raise ValueError(f"samples {tuple(samples.shape)} and ground truth {tuple(y.shape)} do not match")
    labels = samples.round().long().flatten(2)
    onehot = torch.stack([labels == k for k in range(1, y.shape[1] + 1)], dim=2)
    return onehot, y.flatten(2) > 0.5


def generalized_energy_distance(samples: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Squared Generalized Energy Distance (Kohl et al., NeurIPS 2018, eq. 4) with d = 1 - IoU, per class.

    D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')], the expectations taken over all ordered pairs (same-index pairs
    included) of the N samples ``samples`` (N, K, P) and the M annotations ``truths`` (M, K, P). Returns (K,).
    Lower is better; 0 means samples and annotations are all identical.
    """
    s, y = samples.bool(), truths.bool()

    def mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (A, K, P), (B, K, P) -> (K,)
        # one row of pairs at a time: memory of (B, K, P), not (A, B, K, P), for large volumes
        return torch.stack([(1 - iou_scores(ai, b)).mean(0) for ai in a]).mean(0)

    return 2 * mean_distance(s, y) - mean_distance(s, s) - mean_distance(y, y)


def dice_confidence_interval(dice: torch.Tensor, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Student-t confidence interval of the mean of N per-sample Dice scores (N, ...) -> (lower, upper).

    The paper reports a "confidence interval (CI)" of the samples (Table 5) without defining it; this is the textbook
    interval of the mean sample Dice. Its width shrinks as the samples agree (a narrower interval is more confident).
    """
    n = dice.shape[0]
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 samples, got {n}")
    mean, sd = dice.mean(0), dice.std(0, unbiased=True)
    # scipy's interval of the standard t, scaled here: scipy gives NaN for scale 0 (samples that all agree), not width 0
    half = float(stats.t.interval(level, n - 1)[1]) * sd / math.sqrt(n)
    return mean - half, mean + half


class _PerCaseMetric(CumulativeIterationMetric):
    """A cumulative metric of (B, K) per-case, per-class values, aggregated with ``reduction``."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        self.reduction = reduction

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        value, not_nans = do_metric_reduction(self.get_buffer(), reduction or self.reduction)
        return torch.where(not_nans > 0, value, torch.nan)  # only NaN values: not available, not MONAI's 0


class GeneralizedEnergyDistanceMetric(_PerCaseMetric):
    """Per-case, per-class squared GED between an ensemble's samples and the (single) ground truth."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        samples, truth = _split(y_pred, y)
        return torch.stack(
            [generalized_energy_distance(s, t[None]) for s, t in zip(samples, truth, strict=True)]
        ).float()


class DiceConfidenceIntervalMetric(_PerCaseMetric):
    """Per-case, per-class width of the 95% confidence interval of the mean per-sample Dice (see
    ``dice_confidence_interval``); ``bound="lower"|"upper"`` returns that end of the interval instead. With a single
    sample per case (ensemble_size 1) the interval is not available: NaN, with a warning (once)."""

    def __init__(self, level: float = 0.95, bound: str = "width", reduction: MetricReduction | str = "mean") -> None:
        super().__init__(reduction)
        if bound not in ("width", "lower", "upper"):
            raise ValueError(f"bound must be 'width', 'lower' or 'upper', got {bound!r}")
        self.level, self.bound = level, bound
        self._warned = False

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        samples, truth = _split(y_pred, y)
        if samples.shape[1] < 2:
            if not self._warned:
                logger.warning(
                    "the Dice confidence interval needs at least 2 samples per case (ensemble_size >= 2); with "
                    f"{samples.shape[1]} it is not available and reported as NaN"
                )
                self._warned = True
            return torch.full((samples.shape[0], truth.shape[1]), float("nan"), device=y_pred.device)
        dice = dice_scores(samples, truth[:, None])  # (B, N, K)
        lower, upper = dice_confidence_interval(dice.transpose(0, 1), self.level)
        out = {"width": upper - lower, "lower": lower, "upper": upper}[self.bound]
        return out.float()


class EnsembleDiceCurveMetric(CumulativeIterationMetric):
    """Dice (mean over classes) of the first n samples fused with ``method``, for n = 1..N (the paper's Fig. 3).

    Per case (B, N); aggregated over cases to the curve (N,).
    """

    def __init__(self, method: str = "staple", max_iterations: int = STAPLE_MAX_ITERATIONS) -> None:
        super().__init__()
        self.method, self.max_iterations = method, max_iterations

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        samples, _ = _split(y_pred, y)
        curves = []
        for case, gt in zip(samples, y, strict=True):
            arr = case.reshape(case.shape[0], *gt.shape).cpu().numpy().astype(np.uint8)  # (N, K, *spatial)
            # label maps of the first n samples, n = 1..N
            fused = torch.stack(
                [torch.from_numpy(fuse(arr[:n], self.method, self.max_iterations)) for n in range(1, arr.shape[0] + 1)]
            ).to(gt.device)
            onehot, truth = _split(fused[None], gt[None])
            curves.append(dice_scores(onehot[0], truth).mean(-1))
        return torch.stack(curves).float()

    def aggregate(self) -> torch.Tensor:
        return self.get_buffer().mean(0)


class HD95Metric(HausdorffDistanceMetric):
    """95th-percentile Hausdorff distance (MONAI) in pixels/voxels of the evaluation grid, with empty masks defined
    instead of NaN/inf: 0 when the class is absent from both prediction and truth, and the grid's diagonal (the
    largest possible distance) when it is absent from exactly one."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, **kwargs: Any) -> None:
        super().__init__(include_background=True, percentile=95, reduction=reduction, **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        pred_any = y_pred.flatten(2).bool().any(-1)
        gt_any = y.flatten(2).bool().any(-1)
        both = pred_any & gt_any
        out = torch.zeros(pred_any.shape, dtype=torch.float32, device=y_pred.device)
        if both.any():
            with warnings.catch_warnings():  # MONAI warns about the empty entries, which are replaced below
                warnings.simplefilter("ignore")
                hd = super()._compute_tensor(y_pred, y, **kwargs).to(out)
            out[both] = hd[both]
        out[pred_any ^ gt_any] = math.sqrt(sum(s**2 for s in y.shape[2:]))
        return out
