"""Checkpoints: atomic writes on ignite's public ``Checkpoint`` / ``DiskSaver`` API that keep the previous file until
the new one is on disk, and resuming a killed run with everything that decides what is written next."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from .errors import BundleError

logger = logging.getLogger(__name__)


class SafeDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes atomically (temporary file + rename, group/other read bits kept) and removes
    superseded checkpoints only AFTER the new one is on disk; ignite removes the old file before writing the new one,
    so a crash during the write would otherwise leave no checkpoint at all. ``filename`` fixes the file name;
    ``key`` stores a single saved object as ``{key: state}`` (ignite stores it bare), the format of the shipped
    ``models/model.pt``."""

    def __init__(self, dirname: str | Path, filename: str | None = None, key: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename, self.key = filename, key
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__({self.key: checkpoint} if self.key else checkpoint, filename, metadata)
        for old in self._superseded:
            if old != filename and (Path(self.dirname) / old).exists():
                super().remove(old)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)

    def remove_after_next_save(self, paths: Iterable[Path]) -> None:
        self._superseded.extend(p.name for p in paths)


# the name of an unfinished atomic write: tempfile.NamedTemporaryFile's default in ignite's DiskSaver
TEMPORARY_NAME = re.compile(r"^tmp[a-z0-9_]{8}$")


def remove_stale_temporary_files(directory: str | Path) -> list[Path]:
    """Removes the temporary files that an interrupted atomic checkpoint write left in ``directory`` (never
    loadable); returns them."""
    folder = Path(directory)
    stale = [p for p in folder.glob("tmp*") if p.is_file() and TEMPORARY_NAME.match(p.name)] if folder.is_dir() else []
    for path in stale:
        path.unlink()
    if stale:
        names = ", ".join(p.name for p in stale)
        logger.warning(f"removed {len(stale)} partial write(s) left by an interrupted run in {folder}: {names}")
    return stale


class AtomicCheckpointSaver:
    """Saves checkpoints with ignite's ``Checkpoint`` and :class:`SafeDiskSaver`: atomic writes, and the previous file
    is kept until the new one is on disk. Two modes, like MONAI's ``CheckpointSaver`` (same argument names):

    - ``save_interval > 0``: every ``save_interval`` epochs (or iterations), ``checkpoint_epoch=N.pt``, keeping the
      last ``n_saved``; with ``engine_key`` the engine it is attached to is saved too (epoch and iteration, for
      resuming), which a config cannot reference without a circular reference;
    - ``save_key_metric``: the best model by the engine's key metric (higher is better), into
      ``key_metric_filename``.

    Its state (the best score and epoch, and the files saved) is a ``state_dict``: put the saver in the trainer's
    checkpoint and a resumed run restores it, also into the evaluator's ``best_metric`` / ``best_metric_epoch``, so it
    never replaces the best model with a worse one. Unfinished writes of an interrupted run are removed at attach.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        engine_key: str | None = None,
        save_interval: int = 0,
        n_saved: int | None = 1,
        epoch_level: bool = True,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_filename: str | None = None,
        key_metric_greater_or_equal: bool = False,
        file_prefix: str = "",
    ) -> None:
        if save_interval <= 0 and not save_key_metric:
            raise ValueError("AtomicCheckpointSaver saves nothing: set save_interval > 0 or save_key_metric=True")
        self.save_dir, self.save_dict, self.engine_key = Path(save_dir), dict(save_dict), engine_key
        self.save_interval, self.n_saved, self.epoch_level = save_interval, n_saved, epoch_level
        self.save_key_metric, self.key_metric_name = save_key_metric, key_metric_name
        self.key_metric_filename, self.key_metric_greater_or_equal = key_metric_filename, key_metric_greater_or_equal
        self.file_prefix = file_prefix
        # the disk savers are built here, on every rank of a distributed run: their first idist call is collective
        # (ignite's lazy set-up of its process groups), and only rank 0 attaches this handler
        self._disk = {
            "interval": SafeDiskSaver(self.save_dir) if save_interval > 0 else None,
            "best": SafeDiskSaver(self.save_dir) if save_key_metric else None,
        }
        self.interval: Checkpoint | None = None  # built at attach, when the engine to save is known
        self.best: Checkpoint | None = None
        self.engine: Engine | None = None
        self._pending: Mapping | None = None

    def _checkpoint(self, kind: str, to_save: dict, filename: str | None, **kwargs: Any) -> Checkpoint:
        saver = self._disk[kind]
        saver.key = next(iter(to_save)) if len(to_save) == 1 else None
        if filename:  # a fixed name (a pattern without fields), also in the record of saved files
            kwargs["filename_pattern"] = filename
        return Checkpoint(to_save, saver, filename_prefix=self.file_prefix, **kwargs)

    def _step(self, engine: Engine) -> int:
        return engine.state.epoch if self.epoch_level else engine.state.iteration

    def _score(self, engine: Engine) -> float:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None:
            raise ValueError("save_key_metric needs key_metric_name or an engine with a key metric")
        return float(engine.state.metrics[name])

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        remove_stale_temporary_files(self.save_dir)
        to_save = {**self.save_dict, **({self.engine_key: engine} if self.engine_key else {})}
        if self.save_interval > 0:
            step = "epoch" if self.epoch_level else "iteration"
            self.interval = self._checkpoint(
                "interval", to_save, None, score_function=self._step, score_name=step, n_saved=self.n_saved
            )
            # interval checkpoints of an earlier (e.g. resumed) run are replaced once the first new one is written
            name = "checkpoint" if len(to_save) > 1 else next(iter(to_save))
            prefix = f"{self.file_prefix}_" if self.file_prefix else ""
            earlier = self.save_dir.glob(f"{prefix}{name}_{step}=*.pt")
            self.interval.save_handler.remove_after_next_save(earlier)
            event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
            engine.add_event_handler(event(every=self.save_interval), self.interval)
        if self.save_key_metric:
            self.best = self._checkpoint(
                "best",
                to_save,
                self.key_metric_filename,
                score_function=self._score,
                score_name="key_metric",
                greater_or_equal=self.key_metric_greater_or_equal,
            )
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.best)
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def state_dict(self) -> dict[str, Any]:
        """What decides the next writes: the files saved with their scores, and the engine's best metric."""
        state = getattr(self.engine, "state", None)
        return {
            "interval": list(self.interval.state_dict()["_saved"]) if self.interval else [],
            "best": list(self.best.state_dict()["_saved"]) if self.best else [],
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.engine is None:  # not attached yet: restored at attach
            self._pending = state
            return
        self._pending = None
        if self.best is not None:
            self.best.load_state_dict({"_saved": [tuple(x) for x in state["best"]]})
            if state["best"]:
                logger.info(f"restored the best model record {state['best']}, epoch {state['best_metric_epoch']}")
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


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
    earlier run's checkpoints, which this run replaces."""

    def __init__(
        self,
        ckpt_dir: str | Path,
        load_dict: Mapping[str, Any],
        enabled: bool = True,
        engine_key: str = "trainer",
        map_location: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(enabled, bool):
            raise BundleError(f"resume must be True or False, got {enabled!r} (on the CLI: --resume True).")
        self.ckpt_dir, self.load_dict, self.enabled = Path(ckpt_dir), dict(load_dict), enabled
        self.engine_key, self.map_location = engine_key, map_location
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
            return
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = self.path
        try:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        except Exception as e:
            raise BundleError(f"{path}: cannot resume from this checkpoint (corrupt or truncated?): {e}") from e
        to_load = {**self.load_dict, self.engine_key: engine}
        missing = [k for k in to_load if k not in checkpoint]
        if missing:
            raise BundleError(
                f"{path}: cannot resume, the checkpoint has no {missing} (it holds {sorted(checkpoint)}); it was "
                "written by another configuration or version. Start a new run with another --run_name."
            )
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint)
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise BundleError(
                    f"{path} was saved at epoch {engine.state.epoch}, beyond epochs={max_epochs}: raise --epochs to "
                    "train further."
                )
            engine.state.max_epochs = max_epochs  # a finished run may be trained further with a larger --epochs
        logger.info(f"resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
