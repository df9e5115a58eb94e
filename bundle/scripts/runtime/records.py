"""The record of a run beside its best model: the settings it was trained with (:class:`RunSettings`, compared on
resume) and ``model.json`` (:class:`ModelRecord`: score, epoch, sha256), written atomically around the model file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..diffusion.training import unwrap
from .errors import BundleError, write_error
from .weights import file_hash

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
