"""Uncertainty that is measured: how well an uncertainty map finds the prediction's own errors
(error-detection AUROC), how well a foreground probability is calibrated (expected calibration error), and the
reliability diagram, for the diffusion ensemble and the UNet baseline alike.

Inputs, per case (channel-first, any spatial size; volumes are scored whole):

- uncertainty map (1, *spatial): the ensemble's ``uncertainty`` of ``EnsembleFusiond`` (entropy of the members'
  mean foreground probability, maximum over classes) or, for the UNet, the same entropy of its sigmoid probability
  (:class:`ProbabilityUncertaintyd`);
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

import csv
import logging
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.metrics import CumulativeIterationMetric
from monai.transforms import MapTransform

from ..diffusion.fusion import binary_entropy, onehot_to_labels

logger = logging.getLogger(__name__)

__all__ = [
    "ErrorDetectionAUROC",
    "ExpectedCalibrationError",
    "ProbabilityUncertaintyd",
    "ReliabilityDiagramSaver",
    "auroc_from_counts",
    "calibration_bins",
    "ece_from_bins",
    "from_engine_errors",
]


# ---- AUROC ------------------------------------------------------------------------------------------------------


def score_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct score values (ascending) with the number of positive and negative targets at each: an exact, compact
    summary for the AUROC (an ensemble's uncertainty takes only a few distinct values)."""
    values, inverse = torch.unique(scores.flatten().float(), return_inverse=True)
    pos = targets.flatten().bool()
    n_pos = torch.bincount(inverse[pos], minlength=len(values))
    n_all = torch.bincount(inverse, minlength=len(values))
    return values, n_pos.int(), (n_all - n_pos).int()  # 12 bytes per distinct value: the pooled AUROC keeps them all


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
    equal-width bins of [0, 1] (1.0 falls in the last): (K, num_bins, 3) float64 of pixel count, sum of probability,
    sum of truth."""
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
            p = np.clip(_array(d[key]).astype(np.float64), 0, 1)
            d[self.uncertainty_key] = torch.from_numpy(binary_entropy(p).max(0, keepdims=True).astype(np.float32))
        return d


# ---- reliability diagram ----------------------------------------------------------------------------------------


class ReliabilityDiagramSaver:
    """Writes the reliability diagram of an :class:`ExpectedCalibrationError` metric (pooled over the run's cases) as
    ``filename`` (PNG, one panel per class: foreground frequency against mean probability per bin, with the pixel
    share per bin) and its numbers as ``csv_filename`` (class, bin_lower, bin_upper, pixels, mean_probability,
    foreground_frequency) in ``output_dir``, when the engine completes."""

    def __init__(
        self,
        metric: ExpectedCalibrationError,
        output_dir: str | Path,
        filename: str = "reliability_diagram.png",
        csv_filename: str = "reliability.csv",
        title: str = "",
    ) -> None:
        self.metric, self.output_dir = metric, Path(output_dir)
        self.filename, self.csv_filename, self.title = filename, csv_filename, title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        bins = self.metric.bins
        if bins is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        num_bins = bins.shape[1]
        edges = np.linspace(0, 1, num_bins + 1)
        count, sum_p, sum_t = (x.cpu().numpy() for x in bins.unbind(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p, freq = sum_p / count, sum_t / count
        with open(self.output_dir / self.csv_filename, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "bin_lower", "bin_upper", "pixels", "mean_probability", "foreground_frequency"])
            for k in range(bins.shape[0]):
                for b in range(num_bins):
                    filled = count[k, b] > 0
                    writer.writerow(
                        [
                            k + 1,
                            f"{edges[b]:.4f}",
                            f"{edges[b + 1]:.4f}",
                            int(count[k, b]),
                            f"{mean_p[k, b]:.6f}" if filled else "",
                            f"{freq[k, b]:.6f}" if filled else "",
                        ]
                    )
        self._plot(edges, count, mean_p, freq, self.metric.per_class().tolist())
        logger.info(f"reliability diagram written to {self.output_dir / self.filename}")

    def _plot(self, edges: np.ndarray, count: np.ndarray, mean_p: np.ndarray, freq: np.ndarray, ece: list) -> None:
        from matplotlib.figure import Figure  # a Figure without pyplot draws with Agg and changes no global state

        k = count.shape[0]
        fig = Figure(figsize=(4 * k, 5))
        axes = fig.subplots(2, k, squeeze=False, gridspec_kw={"height_ratios": [3, 1]})
        width = edges[1] - edges[0]
        for c in range(k):
            top, bottom = axes[0, c], axes[1, c]
            filled = count[c] > 0
            top.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="calibrated")
            top.bar(
                edges[:-1][filled],
                freq[c][filled],
                width=width,
                align="edge",
                alpha=0.6,
                edgecolor="k",
                label="foreground frequency",
            )
            top.plot(mean_p[c][filled], freq[c][filled], "o-", color="C3", ms=3, label="(mean probability, frequency)")
            top.set(xlim=(0, 1), ylim=(0, 1), ylabel="foreground frequency", title=f"class {c + 1}: ECE {ece[c]:.4f}")
            top.legend(loc="upper left", fontsize=7)
            share = count[c] / max(count[c].sum(), 1)
            bottom.bar(edges[:-1][filled], share[filled], width=width, align="edge", color="grey", edgecolor="k")
            bottom.set(xlim=(0, 1), yscale="log", xlabel="predicted foreground probability", ylabel="pixel share")
            if filled.any():
                bottom.set_ylim(share[filled].min() / 2, 1)
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(self.output_dir / self.filename, dpi=100)
