"""The reliability diagram of an :class:`~.uncertainty.ExpectedCalibrationError` metric, pooled over the run's
cases: a PNG for a person to look at and its numbers as a CSV."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from .uncertainty import ExpectedCalibrationError

__all__ = ["ReliabilityDiagramSaver"]

logger = logging.getLogger(__name__)


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
