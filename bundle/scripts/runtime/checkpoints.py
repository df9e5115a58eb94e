"""Checkpoints: atomic writes on ignite's public ``Checkpoint`` / ``DiskSaver`` API that keep the previous file until
the new one is on disk, the record beside the best model (``model.json``: its score, epoch, sha256 and the settings
it was trained with), and resuming a killed run with everything that decides what is written next."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from torch import nn

from ..diffusion.training import unwrap
from .errors import BundleError, write_error
from .weights import describe_mismatch, file_hash, load_failure

logger = logging.getLogger(__name__)


def current_umask() -> int:
    """This process's umask (read from ``/proc`` where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file under the current umask (what ``open`` gives; temporary files get 0600)."""
    return 0o666 & ~current_umask()


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists), so that saved and current settings compare equal."""
    return json.loads(json.dumps(value, default=str))


class RunSettings:
    """The settings a run's weights and scores depend on (architecture, resolution, data format) and a fingerprint of
    the network's parameter shapes (``network_def``, which also covers ``--network_def#<arg>`` overrides). Its
    ``state_dict`` goes into every checkpoint and the best model's record; :meth:`check` refuses to resume a run with
    other values, naming each key and both values."""

    def __init__(self, settings: Mapping[str, Any], network: nn.Module | None = None) -> None:
        self.settings, self.network = dict(settings), network

    def fingerprint(self) -> dict[str, Any] | None:
        if self.network is None:
            return None
        state = unwrap(self.network).state_dict()
        shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
        return {
            "class": type(unwrap(self.network)).__name__,
            "parameters": sum(v.numel() for v in state.values()),
            "shapes_sha256": hashlib.sha256(shapes.encode()).hexdigest()[:16],
        }

    def state_dict(self) -> dict[str, Any]:
        fingerprint = self.fingerprint()
        return _plain({**self.settings, **({"network_def": fingerprint} if fingerprint else {})})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.check(state, "the checkpoint")

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """``key: saved vs now`` for each key both hold with different values (keys one of them lacks are skipped)."""
        now, saved = self.state_dict(), _plain(dict(saved))
        lines = []
        for key, value in now.items():
            if key not in saved or saved[key] == value:
                continue
            if key == "network_def":
                was, new = saved[key], value
                lines.append(
                    f"network_def: the run's network is {was.get('class')} with {was.get('parameters')} parameters "
                    f"(shapes {was.get('shapes_sha256')}), this configuration's {new['class']} with "
                    f"{new['parameters']} (shapes {new['shapes_sha256']}): a --network_def#<arg> differs from the run's"
                )
            else:
                lines.append(f"{key}: the run was trained with {saved[key]!r}, this configuration has {value!r}")
        return lines

    def check(self, saved: Mapping[str, Any], source: str | Path, detail: str = "") -> None:
        """Raises :class:`BundleError` when ``saved`` (read from ``source``) differs from these settings."""
        lines = self.differences(saved)
        if lines:
            raise BundleError(
                f"{'; '.join(lines)}. Resume needs the settings the run was trained with ({source}); keep them, or "
                f"start a new run with another --run_name.{detail}"
            )


class ModelRecord:
    """The record beside a best-model file (``model.pt`` -> ``model.json``): its score, the epoch and iteration it was
    validated at, its sha256 and the run's settings. Written atomically before the model file (the new entry as
    ``pending``) and again after it, so that a run killed between the writes still knows the score of the file on
    disk: the committed entry when the file's sha256 is the recorded one, else the pending one."""

    def __init__(self, model_path: str | Path, settings: RunSettings | None = None) -> None:
        self.model_path = Path(model_path)
        self.path = self.model_path.with_suffix(".json")
        self.settings = settings

    def read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.path}: unreadable record of {self.model_path.name} ({e}); remove it") from e
        if not isinstance(record, dict):
            raise BundleError(f"{self.path}: not a record of {self.model_path.name}; remove it")
        return record

    def _write(self, record: Mapping[str, Any]) -> None:
        temporary = None
        try:  # a temporary name that remove_stale_temporary_files knows, then an atomic rename
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False) as tmp:
                temporary = Path(tmp.name)
                json.dump(record, tmp, indent=1)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(temporary, file_mode())
            os.replace(temporary, self.path)
        except OSError as e:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            raise write_error(self.path, e) from e

    def begin(self, entry: Mapping[str, Any]) -> None:
        """Before the model file is written: the current record with ``entry`` as pending."""
        try:
            current = self.read() or {}
        except BundleError:  # unreadable: the pending entry alone still describes the new file
            current = {}
        committed = {k: v for k, v in current.items() if k != "pending"}
        self._write({**committed, "pending": dict(entry)})

    def commit(self, entry: Mapping[str, Any]) -> None:
        """After the model file is on disk: ``entry`` with the file's sha256 and the settings."""
        settings = self.settings.state_dict() if self.settings is not None else None
        file = {"file": self.model_path.name, "sha256": file_hash(self.model_path)}
        self._write({**dict(entry), **file, **({"settings": settings} if settings is not None else {})})

    def resolve(self) -> dict[str, Any] | None:
        """The entry that describes the model file now on disk (``None``: no file or no record); raises
        :class:`BundleError` when the file is neither the recorded nor the pending one (replaced by hand)."""
        record = self.read()
        if record is None or not self.model_path.is_file():
            return None
        digest = file_hash(self.model_path)
        if record.get("sha256") == digest:
            return record
        if isinstance(record.get("pending"), dict):  # stopped after the file was written, before the record
            return {**record["pending"], "sha256": digest}
        raise BundleError(
            f"{self.model_path}: not the file its record {self.path.name} describes (sha256 {digest}, recorded "
            f"{record.get('sha256')}): it was replaced after training wrote it, so its score is unknown. Restore it, "
            "or move it (and the record) aside to let the resumed run write a new best"
        )


class SafeDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes atomically (temporary file + rename) and removes superseded checkpoints only
    AFTER the new one is on disk; ignite removes the old file before writing the new one, so a crash during the write
    would otherwise leave no checkpoint at all. ``filename`` fixes the file name; ``key`` stores a single saved object
    as ``{key: state}`` (ignite stores it bare), the format of the shipped ``models/model.pt``. Files get the mode the
    umask gives (ignite adds group/other read bits). A failed write raises its ``OSError`` with the file name set, or
    (torch's bare ``RuntimeError``) a :class:`BundleError` naming the file, the free space or a read-only file system.
    ``record``: a :class:`ModelRecord` written around each write, with the entry ``describe(metadata)`` returns."""

    def __init__(
        self,
        dirname: str | Path,
        filename: str | None = None,
        key: str | None = None,
        record: ModelRecord | None = None,
        describe: Callable[[Mapping | None], dict] | None = None,
    ) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename, self.key, self.record, self.describe = filename, key, record, describe
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        path = Path(self.dirname) / filename
        entry: dict = {}
        if self.record is not None:
            entry = self.describe(metadata) if self.describe is not None else dict(metadata or {})
            self.record.begin(entry)
        try:
            super().__call__({self.key: checkpoint} if self.key else checkpoint, filename, metadata)
            if path.is_file():
                os.chmod(path, file_mode())
        except OSError as e:  # kept an OSError, naming the file (the ERROR line of scripts.runtime.errors shows both)
            if e.filename is None and e.errno is not None:
                e.filename = str(path)
            raise
        except RuntimeError as e:  # torch's zip writer raises a bare RuntimeError when the disk is full
            raise write_error(path, e) from e
        if self.record is not None:
            self.record.commit(entry)
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
