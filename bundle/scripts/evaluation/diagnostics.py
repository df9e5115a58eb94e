"""Diagnostics of whether the diffusion model uses the image: anchor Dice, image reliance, loss terms.

Image reliance = Dice of the sampled masks with each case's own condition minus Dice when every case is sampled with
ANOTHER case's condition (same noise), both against the case's own truth. A denoiser that ignores its condition
scores ~0; one that segments from the image scores about its Dice minus the Dice of an unrelated mask.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


def donor_indices(n: int, seed: int = 0) -> list[int]:
    """A seeded derangement of range(n): case i gets the condition of case ``donor_indices(n)[i]`` != i (n >= 2)."""
    if n < 2:
        raise ValueError(f"image reliance needs at least 2 validation cases, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    donors = [0] * n
    for pos, case in enumerate(order):
        donors[case] = int(order[(pos + 1) % n])  # each case takes the next one in a random cycle
    return donors


class DonorDataset(Dataset):
    """Wraps a (cached) dataset: item i also holds ``donor``, the image of another case (``donor_indices``)."""

    def __init__(self, dataset: Sequence[Mapping], seed: int = 0, image_key: str = "image") -> None:
        self.dataset, self.image_key = dataset, image_key
        self.donors = donor_indices(len(dataset), seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["donor"] = self.dataset[self.donors[index]][self.image_key]
        return item


class UnpackPredictiond(MapTransform):
    """Moves the entries of a dict-valued prediction (``{"pred", "anchor", "pred_swapped"}``) to top-level keys."""

    def __init__(self, keys: KeysCollection = "pred", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], Mapping):
                packed = d.pop(key)
                d.update(packed)
        return d


class ImageRelianceHandler:
    """Adds ``name`` = metrics[``dice``] - metrics[``swapped_dice``] to the evaluator's metrics at every epoch end
    (attach it after the metrics, before the loggers)."""

    def __init__(
        self, dice: str = "val_mean_dice", swapped_dice: str = "val_swapped_dice", name: str = "val_image_reliance"
    ) -> None:
        self.dice, self.swapped_dice, self.name = dice, swapped_dice, name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        if self.dice in metrics and self.swapped_dice in metrics:
            metrics[self.name] = float(metrics[self.dice]) - float(metrics[self.swapped_dice])


def loss_terms(output: list[dict] | dict) -> dict[str, float]:
    """Iteration log of a training step: the total loss and, for the diffusion model, eq. 3's two terms (batch means
    of L_n and of the gated anchor term) and the x0 loss where it is on; an ``output_transform`` for StatsHandler /
    TensorBoardStatsHandler."""
    items = output if isinstance(output, list) else [output]
    terms = {"train_loss": float(items[0]["loss"])}
    preds = [item.get("pred") for item in items]
    if all(isinstance(p, Mapping) and "loss_n" in p for p in preds):
        for key in ("loss_n", "loss_anchor", "loss_x0"):
            if all(key in p for p in preds):
                terms[key] = float(torch.stack([torch.as_tensor(p[key]).float().mean() for p in preds]).mean())
    return terms


class DataWaitLogger(Timer):
    """Ignite's :class:`~ignite.handlers.Timer` of the time spent waiting for the next batch (between ignite's
    GET_BATCH events), logged at every epoch end as a share of the epoch's time (``engine.state.times``), so that a
    loader bottleneck is visible; the share is also kept as ``engine.state.data_wait_share``."""

    def attach(self, engine: Engine) -> DataWaitLogger:  # type: ignore[override]
        super().attach(
            engine, start=Events.EPOCH_STARTED, resume=Events.GET_BATCH_STARTED, pause=Events.GET_BATCH_COMPLETED
        )
        engine.add_event_handler(Events.EPOCH_STARTED, self.pause)  # reset() starts the clock: wait for a batch
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)
        return self

    def _log(self, engine: Engine) -> None:
        wait = self.value()
        total = max(engine.state.times[Events.EPOCH_COMPLETED.name] or 0.0, wait, 1e-9)  # the epoch so far
        engine.state.data_wait_share = wait / total
        logger.info(
            f"epoch {engine.state.epoch}: {wait:.1f} s of {total:.1f} s waiting for data "
            f"({100 * wait / total:.1f}%), {engine.state.epoch_length / total:.2f} it/s"
        )
