"""Atomic files on disk: ignite's ``DiskSaver`` writing through a temporary file and a rename, keeping the previous
file until the new one is on disk, and the clean-up of partial writes left by an interrupted run."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ignite.handlers import DiskSaver

from .errors import write_error
from .records import ModelRecord, file_mode

logger = logging.getLogger(__name__)


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
