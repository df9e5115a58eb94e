"""Evaluation handlers: a PNG grid of image / truth / prediction / uncertainty for a person to look at (the best and
the worst cases), and the ensemble curve (Dice against ensemble size) as a CSV (the reliability diagram:
:mod:`.reliability`)."""

from __future__ import annotations

import csv
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.visualize import blend_images
from PIL import Image, ImageDraw

from ..diffusion.fusion import onehot_to_labels
from .metrics import dice_scores

if TYPE_CHECKING:
    from matplotlib.colors import ListedColormap

__all__ = ["EnsembleCurveSaver", "OverlayGridSaver", "case_dice"]

logger = logging.getLogger(__name__)

# label colours (RGB) for classes 1..; truth and prediction are drawn filled at 50% over the image
PALETTE = np.array([[255, 64, 64], [64, 160, 255], [64, 255, 96], [255, 200, 0], [200, 64, 255]], dtype=np.float32)


def _plane(volume: np.ndarray, index: int | None, axis: int) -> np.ndarray:
    return volume if index is None else np.take(volume, index, axis=axis)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(C, *plane) intensities -> (H, W, 3) uint8, each channel scaled by its 1st-99th percentiles."""
    img = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    img = np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1)
    return (np.moveaxis(img, 0, -1) * 255).astype(np.uint8)


@functools.cache
def _palette_colormap() -> ListedColormap:
    from matplotlib.colors import ListedColormap  # on first use: importing the module needs no matplotlib

    return ListedColormap(PALETTE / 255, name="label_palette")


def _overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with the label map (H, W) blended in at 50% by MONAI's ``blend_images``, class k in
    PALETTE colour k (background left as is)."""
    n = len(PALETTE)
    # a ListedColormap of n colours maps a value v in (0, 1] to colour int(v * n): class k -> the centre of its colour
    shade = np.where(labels > 0, ((labels.astype(np.int64) - 1) % n + 0.5) / n, 0.0)[None]
    image = np.moveaxis(rgb, -1, 0).astype(np.float64) / 255
    # cmap: MONAI passes it to matplotlib's colormaps.get_cmap, which takes a Colormap as well as a name
    out = blend_images(image, shade, alpha=0.5, cmap=_palette_colormap(), rescale_arrays=False)
    return np.moveaxis(np.rint(np.asarray(out) * 255), 0, -1).astype(np.uint8)


def case_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over classes of the Dice (:func:`.metrics.dice_scores`) of one case's one-hot (K, *spatial) masks; a class
    absent from both scores 1."""
    masks = [torch.as_tensor(np.asarray(m) > 0.5).flatten(1) for m in (pred, truth)]
    return float(dice_scores(*masks).mean())


class OverlayGridSaver:
    """Writes ``filename`` in ``output_dir``: one row per case, with the image, the ground truth and the prediction
    drawn over it, and the uncertainty map (black = all samples agree), the case's Dice written on the row. Volumes
    show the slice along ``slice_axis`` with the most ground-truth foreground.

    ``select``: ``"best_worst"`` shows the ``num_cases`` // 2 best and the rest worst cases by Dice (best first);
    ``"first"`` the first ``num_cases`` cases."""

    def __init__(
        self,
        output_dir: str | Path,
        num_cases: int = 4,
        filename: str = "overlay_grid.png",
        slice_axis: int = 2,
        select: str = "best_worst",
    ) -> None:
        if select not in ("best_worst", "first"):
            raise ValueError(f"select must be 'best_worst' or 'first', got {select!r}")
        self.output_dir, self.num_cases, self.filename = Path(output_dir), num_cases, filename
        self.slice_axis, self.select = slice_axis, select
        self.rows: list[tuple[float, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            if self.select == "first" and len(self.rows) >= self.num_cases:
                return
            self.rows.append(self._row(item))

    def _chosen(self) -> list[tuple[float, np.ndarray]]:
        if self.select == "first" or len(self.rows) <= self.num_cases:
            return self.rows[: self.num_cases]
        ranked = sorted(self.rows, key=lambda r: -r[0])
        best = self.num_cases // 2
        return ranked[:best] + ranked[len(ranked) - (self.num_cases - best) :]

    def _row(self, item: dict) -> tuple[float, np.ndarray]:
        def arr(key: str) -> np.ndarray | None:
            value = item.get(key)
            return None if value is None else torch.as_tensor(value).detach().cpu().float().numpy()

        image, label, pred, unc = arr("image"), arr("label"), arr("pred"), arr("uncertainty")
        truth = onehot_to_labels(label, 0)
        labels_pred = onehot_to_labels(pred, 0)
        index = None
        if truth.ndim == 3:  # a volume: pick the slice with the most truth (else prediction) foreground
            axes = tuple(a for a in range(3) if a != self.slice_axis)
            weight = (truth > 0).sum(axes) + 1e-3 * (labels_pred > 0).sum(axes)
            index = int(weight.argmax())
        rgb = _to_rgb(np.stack([_plane(c, index, self.slice_axis) for c in image]))
        tiles = [rgb, _overlay(rgb, _plane(truth, index, self.slice_axis))]
        tiles.append(_overlay(rgb, _plane(labels_pred, index, self.slice_axis)))
        if unc is not None:
            u = _plane(unc[0], index, self.slice_axis)
            tiles.append(np.repeat((np.clip(u, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1))
        else:
            tiles.append(np.zeros_like(rgb))
        dice = case_dice(pred, label)
        row = Image.fromarray(np.concatenate(tiles, axis=1))
        ImageDraw.Draw(row).text((2, 1), f"Dice {dice:.2f}", fill=(255, 255, 0))
        return dice, np.asarray(row)

    def _write(self, engine: Engine) -> None:
        chosen = [row for _, row in self._chosen()]
        if not chosen:
            return
        width = max(r.shape[1] for r in chosen)
        rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in chosen]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.filename
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        which = "best and worst cases by Dice" if self.select == "best_worst" else "first cases"
        logger.info(f"overlay grid (image | truth | prediction | uncertainty; {which}) written to {path}")


class EnsembleCurveSaver:
    """Writes the ensemble curve of ``metric_name`` (an ``EnsembleDiceCurveMetric`` whose per-case details are kept)
    as ``filename`` (columns ensemble_size, mean_dice, std_dice, cases) in ``output_dir``. Not a second
    ``MetricsSaver``: its summary would label the ensemble sizes class0..classN-1."""

    def __init__(
        self, output_dir: str | Path, metric_name: str = "ensemble_dice", filename: str = "ensemble_curve.csv"
    ) -> None:
        self.output_dir, self.metric_name, self.filename = Path(output_dir), metric_name, filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = engine.state.metric_details.get(self.metric_name)
        if details is None:
            return
        curve = torch.as_tensor(details).float()  # (cases, N)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.filename
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ensemble_size", "mean_dice", "std_dice", "cases"])
            for n in range(curve.shape[1]):
                col = curve[:, n]
                std = float(col.std()) if len(col) > 1 else 0.0
                writer.writerow([n + 1, f"{float(col.mean()):.4f}", f"{std:.4f}", len(col)])
        logger.info(f"ensemble curve written to {path}: {', '.join(f'{v:.3f}' for v in curve.mean(0).tolist())}")
