"""Checkpoint handlers: atomic saving and resuming a killed run from its latest checkpoint."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver, ProgressBar
from monai.handlers import CheckpointLoader, CheckpointSaver, from_engine

logger = logging.getLogger(__name__)


class SafeDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes atomically (temporary file + rename, group/other read bits kept) and removes
    superseded checkpoints only AFTER the new one is on disk; ignite removes the old file before writing the new one,
    so a crash during the write would otherwise leave no checkpoint at all. ``filename`` fixes the file name."""

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for old in self._superseded:
            if old != filename and (Path(self.dirname) / old).exists():
                super().remove(old)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)

    def remove_after_next_save(self, paths: Iterable[Path]) -> None:
        self._superseded.extend(p.name for p in paths)


class AtomicCheckpointSaver(CheckpointSaver):
    """``CheckpointSaver`` whose files are written by ``SafeDiskSaver``: a crash never leaves a truncated checkpoint
    or no checkpoint (MONAI's saver writes in place).

    With ``engine_key`` the engine it is attached to is saved too under that key (its epoch and iteration, for
    resuming), which a config cannot reference without a circular reference.
    """

    def __init__(self, *args, engine_key: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key
        for ckpt in self._checkpoints():
            ckpt.save_handler = SafeDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))

    def _checkpoints(self) -> list:
        return [c for c in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint) if c]

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            for ckpt in self._checkpoints():
                ckpt.to_save[self.engine_key] = engine
        ckpt = self._interval_checkpoint
        if ckpt is not None:
            # interval checkpoints of an earlier (e.g. resumed) run are replaced once the first new one is written
            name = "checkpoint" if len(ckpt.to_save) > 1 else next(iter(ckpt.to_save))
            prefix = f"{ckpt.filename_prefix}_" if ckpt.filename_prefix else ""
            step = "epoch" if self.epoch_level else "iteration"
            ckpt.save_handler.remove_after_next_save(Path(self.save_dir).glob(f"{prefix}{name}_{step}=*.pt"))
        super().attach(engine)


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> Path | None:
    """The interval checkpoint with the highest epoch/iteration number in ``ckpt_dir`` (``None`` if there is none)."""
    best, best_n = None, -1
    for path in Path(ckpt_dir).glob(f"{prefix}*.pt"):
        match = re.search(r"=(\d+)\.pt$", path.name)
        n = int(match.group(1)) if match else -1
        if n > best_n:
            best, best_n = path, n
    return best


class ResumeFromLatestCheckpoint(CheckpointLoader):
    """Loads the latest interval checkpoint of ``ckpt_dir`` (network, EMA network, optimizer, and the state of the
    engine it is attached to, under ``engine_key``) when ``enabled``; the trainer then continues from the saved epoch.
    Without a checkpoint it logs a warning and training starts fresh."""

    def __init__(
        self,
        ckpt_dir: str | Path,
        load_dict: dict,
        enabled: bool = True,
        engine_key: str = "trainer",
        map_location: str = "cpu",
    ) -> None:
        if isinstance(enabled, str):
            raise ValueError(f"resume must be True or False, got the string {enabled!r} (on the CLI: --resume True).")
        self.ckpt_dir, self.enabled, self.engine_key = Path(ckpt_dir), enabled, engine_key
        super().__init__(load_path=str(self.ckpt_dir / "unset.pt"), load_dict=load_dict, map_location=map_location)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            logger.warning(f"resume requested but no checkpoint in {self.ckpt_dir}: training starts from scratch.")
            return
        self.load_path = str(path)
        self.load_dict[self.engine_key] = engine
        logger.info(f"resuming from {path}")
        super().attach(engine)


class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar showing the running loss (attachable from a bundle config)."""

    def __init__(self, persist: bool = True, **kwargs) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        super().attach(engine, output_transform=lambda output: {"loss": from_engine(["loss"], first=True)(output)})


class WeightsLoader(CheckpointLoader):
    """``CheckpointLoader`` (``weights_only=True``, ``map_location``) with clear errors: a missing file, or weights
    that do not fit the configured network (naming the missing, unexpected and mismatched keys)."""

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise FileNotFoundError(
                f"no weights at {self.load_path}: train first (configs/train.yaml) or set --ckpt_path to a checkpoint"
            )
        try:
            super().__call__(engine)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise ValueError(f"{self.load_path} does not match the configured network: {self._mismatch()}") from None

    def _mismatch(self) -> str:
        saved = torch.load(self.load_path, map_location="cpu", weights_only=True)
        key, module = next(iter(self.load_dict.items()))
        saved = saved.get(key, saved) if isinstance(saved, Mapping) else saved
        own = module.state_dict()
        missing = sorted(set(own) - set(saved))
        unexpected = sorted(set(saved) - set(own))
        shapes = [
            f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in saved and saved[k].shape != v.shape
        ]
        parts = [f"{len(missing)} missing keys {missing[:5]}", f"{len(unexpected)} unexpected keys {unexpected[:5]}"]
        parts.append(f"{len(shapes)} shape mismatches {shapes[:5]}")
        return "; ".join(parts) + ". Check preset, image_channels, num_classes, anchor and semantic against training."


class WallClockBudget:
    """Stops training at the first epoch end after ``seconds`` of wall-clock time (``None``: no budget), after a last
    validation when ``validator`` is given and has not run at that epoch; checkpoints of that epoch are written by the
    handlers listed before this one. For training runs compared under the same time budget."""

    def __init__(self, seconds: float | None, validator: Engine | None = None) -> None:
        self.seconds, self.validator = seconds, validator
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        if self.seconds is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        elapsed = time.perf_counter() - self._start
        # all ranks of a distributed run stop at the same epoch, as soon as one of them is past the budget
        if idist.all_reduce(float(elapsed >= self.seconds), op="MAX") == 0:
            return
        logger.info(
            f"time budget of {self.seconds:g} s reached after {elapsed:.0f} s (epoch {engine.state.epoch}, "
            f"iteration {engine.state.iteration}): stopping"
        )
        if self.validator is not None and self.validator.state.epoch != engine.state.epoch:
            self.validator.run(engine.state.epoch)
        engine.terminate()
