"""Run directories, the lock of a run folder, and the end-of-run summary.

Every training run writes into ``runs/<run_name>/`` (``ckpt_dir``, ``output_dir`` and ``eval_dir`` derive from
``run_name`` in ``configs/train.yaml``), never over the shipped ``models/model.pt``: :func:`check_run_dirs` refuses a
run folder outside ``runs/`` and any output folder inside the bundle's ``models/``, and :class:`RunLock` keeps a second
training out of a run folder in use. :class:`RunSummary`, called from ``finalize``, ends the log with the best metric
and the exact command that uses the run's weights.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch.distributed as dist
from ignite.engine import Engine
from monai.bundle import ConfigParser

from .errors import BundleError, write_error

__all__ = ["RunLock", "RunSummary", "check_run_dirs", "command_for"]

# the shipped weights' folder of this bundle (also protected when a config names another bundle_root)
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"


def check_run_dirs(bundle_root: str | Path, run_name: str, **dirs: str | Path) -> None:
    """Raises :class:`BundleError` when ``runs/<run_name>`` resolves outside ``<bundle_root>/runs`` (a symbolic link)
    or when one of ``dirs`` (e.g. ``ckpt_dir=...``, ``output_dir=...``) resolves into the bundle's ``models/`` folder,
    which holds the shipped weights. Call it before anything is written."""
    runs = Path(bundle_root, "runs").resolve()
    run_dir = (runs / str(run_name)).resolve()
    if run_dir == runs or not run_dir.is_relative_to(runs):
        raise BundleError(f"run_name: {run_name!r} resolves to {run_dir}, outside {runs}: use a plain folder name")
    protected = {Path(bundle_root, "models").resolve(), SHIPPED_MODELS}
    for key, value in dirs.items():
        path = Path(value).resolve()
        for models in protected:
            if path.is_relative_to(models):
                raise BundleError(
                    f"{key}: {value} is inside {models}, the bundle's folder of shipped weights, which training never "
                    "writes: leave it unset (runs/<run_name>/...) or choose another folder"
                )


class RunLock:
    """An exclusive lock on a run folder, held from ``acquire`` (``initialize``) to ``release`` (``finalize``) or the
    end of the process: ``fcntl.flock`` on ``<directory>/.lock``, which holds the holder's pid. A second training on
    the same folder stops at once, naming it. Under ``torchrun`` only rank 0 takes it (the ranks are one training)."""

    def __init__(self, directory: str | Path, name: str = ".lock") -> None:
        self.directory, self.path = Path(directory), Path(directory) / name
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Creates the folder and takes the lock; raises :class:`BundleError` when another process holds it."""
        if self._file is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 holds the lock for all ranks
                return
            file = open(self.path, "a+")  # noqa: SIM115 (held open for the whole run)
        except OSError as e:
            raise write_error(self.directory, e, "cannot create the run folder") from e
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BundleError(
                    f"{self.directory}: another training holds this run folder (pid {holder}); wait for it to end, or "
                    "choose another --run_name"
                ) from e
            raise write_error(self.path, e, "cannot lock the run folder") from e
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the lock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None


logger = logging.getLogger(__name__)


def _display(value: Any, root: Path) -> str:
    """A command-line value: paths inside the bundle relative to it, everything else as Fire parses it back."""
    if value is None:  # monai.bundle run drops None overrides; '$None' evaluates to None
        return shlex.quote("$None")
    if isinstance(value, Path) or (isinstance(value, str) and "/" in value):
        path = Path(value).resolve()  # relative to the working directory, as the run used it
        try:
            return shlex.quote(str(path.relative_to(root)))
        except ValueError:
            return shlex.quote(str(path))
    return shlex.quote(value if isinstance(value, str) else repr(value))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (str, Path)) and isinstance(b, (str, Path)) and ("/" in str(a) or "/" in str(b)):
        return Path(a).resolve() == Path(b).resolve()
    return type(a) is type(b) and a == b


def command_for(bundle_root: str | Path, configs: Sequence[str], settings: Mapping[str, Any]) -> str:
    """The ``monai.bundle run`` command (run from ``bundle_root``) with ``configs`` (relative to ``bundle_root``) and
    an override for each of ``settings`` that those configs define with another default (a key they do not define
    cannot matter to them, and ``check_command_line`` would reject it)."""
    root = Path(bundle_root).resolve()
    parser = ConfigParser()
    parser.read_config([str(root / c) for c in configs])
    parser["bundle_root"] = str(root)
    args = []
    for key, value in settings.items():
        if key in parser and not _same(value, parser.get_parsed_content(key)):
            args.append(f"--{key} {_display(value, root)}")
    files = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    quoted = shlex.quote(files)
    if quoted != files and not any(c in files for c in '"$`\\'):  # a list of configs reads better in double quotes
        quoted = f'"{files}"'
    return " ".join(["python -m monai.bundle run --config_file", quoted, *args])


class RunSummary:
    """Logs, as the last lines of a training run: the best validation metric and its epoch, where the run's weights
    are, and the command that uses them (``configs`` with ``settings`` as overrides where they differ from the
    defaults of ``configs``; ``settings["ckpt_path"]`` is the weights file). Call it from ``finalize``."""

    def __init__(
        self,
        bundle_root: str | Path,
        configs: Sequence[str],
        settings: Mapping[str, Any],
        validator: Engine | None = None,
        action: str = "segment images",
    ) -> None:
        self.bundle_root, self.configs, self.settings = Path(bundle_root), list(configs), dict(settings)
        self.validator, self.action = validator, action

    def lines(self) -> list[str]:
        weights = Path(self.settings["ckpt_path"])
        shown = _display(weights, self.bundle_root.resolve())
        state = getattr(self.validator, "state", None)
        name, best = getattr(state, "key_metric_name", None), getattr(state, "best_metric", -1)
        if not weights.is_file():
            return [f"training finished without a best model ({shown} was not written: no validation ran)"]
        metric = f"best {name} {best:.4f} at epoch {state.best_metric_epoch}; " if name and best != -1 else ""
        command = command_for(self.bundle_root, self.configs, self.settings)
        head = f"training finished: {metric}weights: {shown}"
        return [head, f"{self.action} with them (from the bundle root):", command]

    def __call__(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        for line in self.lines():
            logger.info(line)
