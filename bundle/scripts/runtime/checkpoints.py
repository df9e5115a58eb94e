"""Checkpoints on ignite's public ``Checkpoint`` API: interval checkpoints for resuming and the best model with its
record (``model.json``), both written atomically (:mod:`.disk`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from .disk import SafeDiskSaver, remove_stale_temporary_files
from .records import ModelRecord, RunSettings

logger = logging.getLogger(__name__)


class AtomicCheckpointSaver:
    """Saves checkpoints with ignite's ``Checkpoint`` and :class:`SafeDiskSaver`: atomic writes, and the previous file
    is kept until the new one is on disk. Two modes, like MONAI's ``CheckpointSaver`` (same argument names):

    - ``save_interval > 0``: every ``save_interval`` epochs (or iterations), ``checkpoint_epoch=N.pt``, keeping the
      last ``n_saved``; with ``engine_key`` the engine it is attached to is saved too (epoch and iteration, for
      resuming), which a config cannot reference without a circular reference;
    - ``save_key_metric``: the best model by the engine's key metric (higher is better), into
      ``key_metric_filename``, with its :class:`ModelRecord` beside it (``model.pt`` -> ``model.json``; ``settings``:
      the :class:`RunSettings` it records).

    Its state (the best score and epoch, and the files saved) is a ``state_dict``: put the saver in the trainer's
    checkpoint and a resumed run restores it, also into the evaluator's ``best_metric`` / ``best_metric_epoch``;
    :meth:`restore_record` then applies the record of the file on disk (written after every best, so never older than
    the checkpoint), so it never replaces the best model with a worse one. Put an interval saver's engine (the trainer)
    and this saver in one ``save_dict`` and the record also holds the trainer's iteration. Unfinished writes of an
    interrupted run are removed at attach.
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
        settings: RunSettings | None = None,
    ) -> None:
        if save_interval <= 0 and not save_key_metric:
            raise ValueError("AtomicCheckpointSaver saves nothing: set save_interval > 0 or save_key_metric=True")
        self.save_dir, self.save_dict, self.engine_key = Path(save_dir), dict(save_dict), engine_key
        self.save_interval, self.n_saved, self.epoch_level = save_interval, n_saved, epoch_level
        self.save_key_metric, self.key_metric_name = save_key_metric, key_metric_name
        self.key_metric_filename, self.key_metric_greater_or_equal = key_metric_filename, key_metric_greater_or_equal
        self.file_prefix = file_prefix
        self.record = (
            ModelRecord(self.save_dir / key_metric_filename, settings)
            if save_key_metric and key_metric_filename
            else None
        )
        # the disk savers are built here, on every rank of a distributed run: their first idist call is collective
        # (ignite's lazy set-up of its process groups), and only rank 0 attaches this handler
        self._disk = {
            "interval": SafeDiskSaver(self.save_dir) if save_interval > 0 else None,
            "best": SafeDiskSaver(self.save_dir, record=self.record, describe=self._entry) if save_key_metric else None,
        }
        self.interval: Checkpoint | None = None  # built at attach, when the engine to save is known
        self.best: Checkpoint | None = None
        self.engine: Engine | None = None
        self.trainer: Engine | None = None  # the engine whose checkpoint holds this saver (its iteration is recorded)
        self._pending: Mapping | None = None

    def _checkpoint(self, kind: str, to_save: dict, filename: str | None, **kwargs: Any) -> Checkpoint:
        saver = self._disk[kind]
        saver.key = next(iter(to_save)) if len(to_save) == 1 else None
        if filename:  # a fixed name (a pattern without fields), also in the record of saved files
            kwargs["filename_pattern"] = filename
        return Checkpoint(to_save, saver, filename_prefix=self.file_prefix, **kwargs)

    def _entry(self, metadata: Mapping | None) -> dict[str, Any]:
        """The record of a best-model write: the metric, its score, the epoch and the trainer's iteration."""
        state = getattr(self.engine, "state", None)
        return {
            "metric": self.key_metric_name or getattr(state, "key_metric_name", None),
            "score": float((metadata or {}).get("priority", float("nan"))),
            "epoch": getattr(state, "epoch", None),
            "iteration": getattr(getattr(self.trainer, "state", None), "iteration", None),
        }

    def _step(self, engine: Engine) -> int:
        return engine.state.epoch if self.epoch_level else engine.state.iteration

    def _score(self, engine: Engine) -> float:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None:
            raise ValueError("save_key_metric needs key_metric_name or an engine with a key metric")
        return float(engine.state.metrics[name])

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        for saved in self.save_dict.values():  # a best-model saver in this engine's checkpoint records its iteration
            if isinstance(saved, AtomicCheckpointSaver):
                saved.trainer = engine
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

    def restore_record(self) -> None:
        """Resuming (after :meth:`load_state_dict`): the best score and epoch of the model file on disk from its
        record, when the record's is the higher (the record is written after every best, the checkpoint later, so a
        run stopped between the two, or a last validation after the last checkpoint, left the checkpoint behind). A
        missing model file resets the best, so that the next validation writes one."""
        if self.record is None or self.best is None or self.engine is None:
            return
        entry, model = self.record.resolve(), self.record.model_path
        state = self.engine.state
        if not model.is_file():
            if self.best.state_dict()["_saved"]:
                logger.warning(f"{model} is missing: the next validation writes a new best model")
            self.best.load_state_dict({"_saved": []})
            state.best_metric, state.best_metric_epoch = -1, -1
            return
        if entry is None:
            logger.warning(f"{model} has no record ({self.record.path.name}): the checkpoint's best score is used")
            return
        score, epoch = float(entry["score"]), int(entry.get("epoch") or -1)
        if score > float(getattr(state, "best_metric", -1)):
            self.best.load_state_dict({"_saved": [(score, model.name)]})
            state.best_metric, state.best_metric_epoch = score, epoch
        logger.info(
            f"best model {model.name}: {entry.get('metric')} {state.best_metric:.4f} at epoch "
            f"{state.best_metric_epoch} (record {self.record.path.name}); only a better score replaces it"
        )
