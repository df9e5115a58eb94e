"""Uncertainty that is measured: how well an uncertainty map finds the prediction's own errors
(error-detection AUROC) and how well a foreground probability is calibrated (expected calibration error), for the
diffusion ensemble and the UNet baseline alike (the UNet's uncertainty map: :mod:`.baseline`; the reliability diagram
of the calibration: :class:`.reliability.ReliabilityDiagramSaver`).

Inputs, per case (channel-first, any spatial size; volumes are scored whole):

- uncertainty map (1, *spatial): the ensemble's ``uncertainty`` of ``EnsembleFusiond`` (entropy of the members'
  mean foreground probability, maximum over classes) or, for the UNet, the same entropy of its sigmoid probability
  (:class:`.baseline.ProbabilityUncertaintyd`);
- foreground probability (K, *spatial) per class: the ensemble members' mean (``EnsembleFusiond``'s
  ``probability_key``) or the UNet's sigmoid;
- prediction and truth as (K, *spatial) one-hot foreground channels.

Multi-class choice: the error map is one map, ``prediction label != true label`` (any class wrong), scored against the
single uncertainty map; calibration is per foreground class (one-vs-rest: probability of class k against "truth is
k"), reported per class and averaged over classes. Both are pooled over all pixels of all cases (the headline value)
and also computed per case (the CSV details; a case without errors, or only errors, has an undefined AUROC: NaN,
left out of the summaries). The pooled statistics are kept on one process (no distributed gathering).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from ..diffusion.fusion import onehot_to_labels

__all__ = [
    "ErrorDetectionAUROC",
    "ExpectedCalibrationError",
    "auroc_from_counts",
    "calibration_bins",
    "ece_from_bins",
    "from_engine_errors",
]


# ---- AUROC ------------------------------------------------------------------------------------------------------


def score_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct score values (ascending) with the number of positive and negative targets at each: an exact summary
    for the AUROC, compact where scores tie (an ensemble of hard masks has N + 1 entropy values), up to one entry per
    pixel for soft members' or a sigmoid's continuous uncertainty."""
    values, inverse = torch.unique(scores.flatten().float(), return_inverse=True)
    pos = targets.flatten().bool()
    n_pos = torch.bincount(inverse[pos], minlength=len(values))
    n_all = torch.bincount(inverse, minlength=len(values))
    return values, n_pos.int(), (n_all - n_pos).int()  # 12 bytes per distinct value, kept for the pooled AUROC


def auroc_from_counts(n_pos: torch.Tensor, n_neg: torch.Tensor) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted as 1/2) from positive and negative counts
    per distinct score, in ascending score order. NaN when either class is absent."""
    n_pos, n_neg = n_pos.double(), n_neg.double()
    total_pos, total_neg = float(n_pos.sum()), float(n_neg.sum())
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    neg_below = torch.cumsum(n_neg, 0) - n_neg
    return float((n_pos * (neg_below + 0.5 * n_neg)).sum()) / (total_pos * total_neg)


def _merge_counts(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    values = torch.cat([p[0] for p in parts])
    merged, inverse = torch.unique(values, return_inverse=True)
    out = [
        torch.zeros(len(merged), dtype=torch.int64).index_add_(0, inverse, torch.cat([p[i] for p in parts]).long())
        for i in (1, 2)
    ]
    return merged, out[0], out[1]


class ErrorDetectionAUROC(CumulativeIterationMetric):
    """Per-pixel AUROC of an uncertainty map (``y_pred``, (B, 1, *spatial)) for finding errors (``y``, (B, 1,
    *spatial), 1 where the prediction is wrong): 1 = every error is more uncertain than every correct pixel,
    0.5 = no better than chance.

    The buffer holds the per-case AUROC (B, 1) (NaN where a case has no error or no correct pixel);
    :meth:`aggregate` returns the AUROC pooled over all pixels of all cases.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def reset(self) -> None:
        super().reset()
        self._counts = []

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if y_pred.shape != y.shape:
            raise ValueError(f"uncertainty {tuple(y_pred.shape)} and error map {tuple(y.shape)} do not match")
        out = []
        for scores, errors in zip(y_pred.detach().cpu(), y.detach().cpu(), strict=True):
            counts = score_counts(scores, errors)
            self._counts.append(counts)
            out.append(auroc_from_counts(counts[1], counts[2]))
        return torch.tensor(out, dtype=torch.float32)[:, None]

    def aggregate(self) -> torch.Tensor:
        if not self._counts:
            raise RuntimeError("ErrorDetectionAUROC: no case was scored")
        _, n_pos, n_neg = _merge_counts(self._counts)
        if n_pos.sum() == 0:
            warnings.warn("no prediction error in any case: the error-detection AUROC is undefined (NaN)", stacklevel=2)
        return torch.tensor(auroc_from_counts(n_pos, n_neg))


# ---- calibration ------------------------------------------------------------------------------------------------


def calibration_bins(prob: torch.Tensor, truth: torch.Tensor, num_bins: int = 15) -> torch.Tensor:
    """Per-class bin statistics of probabilities ``prob`` and {0,1} ``truth`` (K, *spatial) over ``num_bins``
    equal-width bins [k/n, (k+1)/n) of [0, 1] (1.0 falls in the last): (K, num_bins, 3) float64 of pixel count, sum of
    probability, sum of truth (sums, not MONAI ``calibration_binning``'s means: they pool over cases exactly)."""
    k = prob.shape[0]
    p = prob.reshape(k, -1).double().clamp(0, 1)
    t = truth.reshape(k, -1).double()
    index = (p * num_bins).long().clamp_max(num_bins - 1) + num_bins * torch.arange(k)[:, None]
    stats = [
        torch.bincount(index.flatten(), weights=w.flatten(), minlength=k * num_bins) for w in (torch.ones_like(p), p, t)
    ]
    return torch.stack(stats, -1).reshape(k, num_bins, 3)


def ece_from_bins(bins: torch.Tensor) -> torch.Tensor:
    """Expected calibration error from ``calibration_bins`` (..., num_bins, 3): sum over bins of the pixel share times
    |mean probability - foreground frequency|. Returns (...)."""
    count, sum_p, sum_t = bins.unbind(-1)
    gap = (sum_p - sum_t).abs()  # = count * |mean p - frequency|
    return gap.sum(-1) / count.sum(-1).clamp_min(1)


class ExpectedCalibrationError(CumulativeIterationMetric):
    """Expected calibration error (ECE) of a per-class foreground probability (``y_pred``, (B, K, *spatial)) against
    one-hot truth (``y``, (B, K, *spatial)), with ``num_bins`` equal-width bins: 0 = in every bin the mean probability
    equals the observed foreground frequency.

    The buffer holds the per-case, per-class ECE (B, K); :meth:`aggregate` returns the ECE pooled over all pixels of
    all cases, averaged over classes; :attr:`bins` keeps the pooled (K, num_bins, 3) statistics for the diagram.

    Not MONAI's ``CalibrationErrorMetric``: it averages per-case ECEs instead of pooling the pixels, and its float32
    edges ``linspace(0, 1 + eps)`` put p = k / num_bins in bin k - 1, not k (a 10-member ensemble's 0.2, 0.4, ... in
    15 bins); elsewhere its per-case values equal these (tests/test_uncertainty.py).
    """

    def __init__(self, num_bins: int = 15) -> None:  # noqa: B042 (a metric, not an exception)
        super().__init__()
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = num_bins
        self.bins: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.bins = None

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if y_pred.shape != y.shape:
            raise ValueError(f"probability {tuple(y_pred.shape)} and ground truth {tuple(y.shape)} do not match")
        if y_pred.min() < 0 or y_pred.max() > 1:
            raise ValueError("ExpectedCalibrationError expects probabilities in [0, 1]")
        per_case = torch.stack(
            [
                calibration_bins(p, t > 0.5, self.num_bins)
                for p, t in zip(y_pred.detach().cpu(), y.detach().cpu(), strict=True)
            ]
        )  # (B, K, num_bins, 3)
        total = per_case.sum(0)
        self.bins = total if self.bins is None else self.bins + total
        return ece_from_bins(per_case).float()

    def aggregate(self) -> torch.Tensor:
        if self.bins is None:
            raise RuntimeError("ExpectedCalibrationError: no case was scored")
        return ece_from_bins(self.bins).mean()

    def per_class(self) -> torch.Tensor:
        """Pooled ECE per class (K,)."""
        if self.bins is None:
            raise RuntimeError("ExpectedCalibrationError: no case was scored")
        return ece_from_bins(self.bins)


# ---- engine output -> metric inputs -----------------------------------------------------------------------------


def _items(output: Any) -> list[Mapping]:
    return output if isinstance(output, list) else [output]


def _array(value: Any) -> np.ndarray:
    return torch.as_tensor(value).detach().cpu().numpy()


def from_engine_errors(
    uncertainty_key: str = "uncertainty", pred_key: str = "pred", label_key: str = "label"
) -> Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Output transform for :class:`ErrorDetectionAUROC`: (uncertainty maps, error maps) of decollated engine output,
    the error map being 1 where the label map of the one-hot prediction differs from the truth's."""

    def transform(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        scores, errors = [], []
        for item in _items(output):
            wrong = onehot_to_labels(_array(item[pred_key]), 0) != onehot_to_labels(_array(item[label_key]), 0)
            scores.append(torch.as_tensor(item[uncertainty_key]).detach().cpu().float().reshape(1, *wrong.shape))
            errors.append(torch.from_numpy(wrong[None]).float())
        return scores, errors

    return transform
