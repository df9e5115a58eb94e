"""Resuming a killed run: the latest interval checkpoint with everything that decides what is written next (network,
EMA, optimizer, the best-model saver and its record, the engine's epoch and iteration)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch import nn

from ..diffusion.training import unwrap
from .checkpoints import AtomicCheckpointSaver
from .errors import BundleError
from .records import RunSettings
from .weights import describe_mismatch, load_failure

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> Path | None:
    """The interval checkpoint with the highest epoch/iteration number in ``ckpt_dir`` (``None`` if there is none)."""
    best, best_n = None, -1
    for path in Path(ckpt_dir).glob(f"{prefix}*.pt"):
        match = re.search(r"=(\d+)\.pt$", path.name)
        n = int(match.group(1)) if match else -1
        if n > best_n:
            best, best_n = path, n
    return best


class ResumeFromLatestCheckpoint:
    """With ``enabled``, loads the latest interval checkpoint of ``ckpt_dir`` when the engine starts: every object of
    ``load_dict`` (network, EMA network, optimizer, the best-model saver) and the engine's own state under
    ``engine_key``; the trainer then continues from the saved epoch (``epochs`` may be raised to train a finished run
    further). Without a checkpoint it warns and training starts fresh; not enabled, it warns when ``ckpt_dir`` holds an
    earlier run's checkpoints, which this run replaces.

    Before loading anything it compares ``settings`` (:class:`RunSettings`) with those saved in the best model's record
    and in the checkpoint, and refuses a change, naming the key and both values. The configured learning rate wins
    over the checkpoint's (logged when they differ), unless ``load_dict`` holds a learning-rate scheduler, whose
    saved state then decides it. Best-model savers of ``load_dict`` then restore their record
    (:meth:`AtomicCheckpointSaver.restore_record`), also when there is no checkpoint."""

    def __init__(
        self,
        ckpt_dir: str | Path,
        load_dict: Mapping[str, Any],
        enabled: bool = True,
        engine_key: str = "trainer",
        map_location: str | torch.device = "cpu",
        settings: RunSettings | None = None,
    ) -> None:
        if not isinstance(enabled, bool):
            raise BundleError(f"resume must be True or False, got {enabled!r} (on the CLI: --resume True).")
        self.ckpt_dir, self.load_dict, self.enabled = Path(ckpt_dir), dict(load_dict), enabled
        self.engine_key, self.map_location, self.settings = engine_key, map_location, settings
        self.path: Path | None = None

    def attach(self, engine: Engine) -> None:
        self.path = latest_checkpoint(self.ckpt_dir)
        if not self.enabled:
            if self.path is not None:
                logger.warning(
                    f"{self.ckpt_dir} holds checkpoints of an earlier run ({self.path.name}): this run starts from "
                    "scratch and replaces them. Continue it with --resume True, or keep it with another --run_name."
                )
            return
        if self.path is None:
            logger.warning(f"resume requested but no checkpoint in {self.ckpt_dir}: training starts from scratch.")
        engine.add_event_handler(Events.STARTED, self)

    def _savers(self) -> list[AtomicCheckpointSaver]:
        return [v for v in self.load_dict.values() if isinstance(v, AtomicCheckpointSaver) and v.record is not None]

    def __call__(self, engine: Engine) -> None:
        checkpoint = self._read(engine, self.path) if self.path is not None else None
        for record in (s.record for s in self._savers() if s.record is not None):  # also without a checkpoint
            saved = record.read()
            if self.settings is not None and saved and isinstance(saved.get("settings"), Mapping):
                self.settings.check(saved["settings"], record.path)
        if checkpoint is not None and self.path is not None:
            self._load(engine, self.path, checkpoint)
        for saver in self._savers():
            saver.restore_record()

    def _read(self, engine: Engine, path: Path) -> Mapping[str, Any]:
        """The checkpoint, once its contents and settings are known to fit this run."""
        try:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        except Exception as e:
            raise load_failure(path, e) from e
        to_load = {**self.load_dict, self.engine_key: engine}
        missing = [k for k in to_load if k not in checkpoint]
        if missing:
            raise BundleError(
                f"{path}: cannot resume, the checkpoint has no {missing} (it holds {sorted(checkpoint)}); it was "
                "written by another configuration or version. Start a new run with another --run_name."
            )
        saved_settings = checkpoint.get("settings")
        if self.settings is not None and isinstance(saved_settings, Mapping):
            network, module = checkpoint.get("network"), self.load_dict.get("network")
            detail = ""
            if any(d.startswith("network_def") for d in self.settings.differences(saved_settings)):
                if isinstance(network, Mapping) and isinstance(module, nn.Module):
                    detail = f" The weights: {describe_mismatch(network, module)}"
            self.settings.check(saved_settings, path, detail)
        elif self.settings is not None:
            logger.warning(f"{path} records no settings (an earlier version): only its weights' shapes are checked")
        for key, module in to_load.items():  # weights that do not fit: say how, not torch's raw error
            if isinstance(module, nn.Module) and isinstance(checkpoint[key], Mapping):
                own = unwrap(module).state_dict()
                saved = checkpoint[key]
                if set(own) != set(saved) or any(saved[k].shape != v.shape for k, v in own.items()):
                    raise BundleError(
                        f"{path}: cannot resume, its {key} does not fit the configured network: "
                        f"{describe_mismatch(saved, module)}"
                    )
        return checkpoint

    def _load(self, engine: Engine, path: Path, checkpoint: Mapping[str, Any]) -> None:
        to_load = {**self.load_dict, self.engine_key: engine}
        optimizers = {k: o for k, o in to_load.items() if isinstance(o, torch.optim.Optimizer)}
        configured = {k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()}
        schedulers = any(isinstance(o, torch.optim.lr_scheduler.LRScheduler) for o in to_load.values())
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint)
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise BundleError(
                    f"{path} was saved at epoch {engine.state.epoch}, beyond epochs={max_epochs}: raise --epochs to "
                    "train further."
                )
            engine.state.max_epochs = max_epochs  # a finished run may be trained further with a larger --epochs
        for key, optimizer in optimizers.items():
            saved_lr = [g["lr"] for g in optimizer.param_groups]
            if saved_lr == configured[key] or schedulers:
                continue
            for group, lr in zip(optimizer.param_groups, configured[key], strict=True):
                group["lr"] = lr
            logger.info(f"{key}: the configured learning rate {configured[key]} replaces the checkpoint's {saved_lr}")
        logger.info(f"resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
