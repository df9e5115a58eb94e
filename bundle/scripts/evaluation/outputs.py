"""Writing inference outputs so that nothing is left half-written.

:class:`AtomicSaveImaged` is MONAI's ``SaveImaged`` with two guarantees: each file is written under a temporary name
in its folder (``.<name>.partial<ext>``) and renamed (``os.replace``) once complete, so a killed run leaves no
truncated output; and when a write fails with an ``OSError`` (read-only folder, full disk), the files the chain
already wrote for the case are removed and a :class:`BundleError` names the file. A killed run can leave hidden
``.partial`` files behind; the next run of the same input replaces them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.data import MetaTensor
from monai.data.image_writer import ImageWriter, NibabelWriter, PILWriter
from monai.transforms import SaveImaged

from ..runtime.errors import BundleError

__all__ = ["AtomicSaveImaged", "NiftiOutputWriter", "PNGOutputWriter", "partial_name"]

PARTIAL = ".partial"


class _KeepsOSError(ImageWriter):
    """Keeps the ``OSError`` of a failed write in ``self.failures`` (a list given with the writer's init kwargs):
    ``SaveImage`` replaces every writer's error by "cannot find a suitable writer"."""

    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
        try:
            super().write(filename, verbose=verbose, **kwargs)
        except OSError as e:
            failures = getattr(self, "failures", None)
            if isinstance(failures, list):
                failures.append(e)
            raise


class PNGOutputWriter(_KeepsOSError, PILWriter):
    """MONAI's ``PILWriter`` that keeps its ``OSError``."""


class NiftiOutputWriter(_KeepsOSError, NibabelWriter):
    """MONAI's ``NibabelWriter`` that keeps its ``OSError``."""


WRITERS: dict[str, type[ImageWriter]] = {
    ".png": PNGOutputWriter,
    ".nii.gz": NiftiOutputWriter,
    ".nii": NiftiOutputWriter,
}


def partial_name(path: str | os.PathLike, ext: str) -> Path:
    """The temporary name of ``path`` while it is written: hidden, in the same folder, with the same extension."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL}{ext}")


def _remove(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


class AtomicSaveImaged(SaveImaged):
    """``SaveImaged`` (same arguments) that writes each file atomically and a case's files all or none.

    The files written for the case so far by this and earlier ``AtomicSaveImaged`` steps of the chain are listed in
    the data under ``written_key``; a failed write removes them, so a case has either all its outputs or none. The
    output extension picks the writer: ``.png`` (PIL) or ``.nii``/``.nii.gz`` (nibabel); MONAI Label's bundle task
    leaves it out like any ``SaveImaged``."""

    def __init__(self, keys: Any, *args: Any, written_key: str = "written_files", **kwargs: Any) -> None:
        ext = str(kwargs.get("output_ext", ".nii.gz")).lower()
        if ext not in WRITERS:
            raise BundleError(f"output_ext: {ext!r} is not written atomically; use one of {', '.join(WRITERS)}")
        kwargs.setdefault("writer", WRITERS[ext])
        super().__init__(keys, *args, **kwargs)
        self.written_key = written_key
        self.failures: list[OSError] = []
        self.saver.set_options(init_kwargs={"failures": self.failures})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        written: list[str] = list(d.get(self.written_key, []))
        saver = self.saver
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            if meta_key is None and meta_key_postfix is not None:
                meta_key = f"{key}_{meta_key_postfix}"
            img = d[key]
            meta = d.get(meta_key) if meta_key is not None else None
            meta = img.meta if isinstance(img, MetaTensor) else meta  # as SaveImage reads it
            final = saver.folder_layout.filename(**saver.fname_formatter(meta, saver))  # as SaveImage names it
            partial = partial_name(final, saver.output_ext)
            self.failures.clear()
            try:
                saver(img, meta, filename=str(partial)[: -len(saver.output_ext)])  # SaveImage appends output_ext
                os.replace(partial, final)
            except Exception as e:
                _remove(partial)
                for path in written:  # all or none: the case's outputs already written
                    _remove(path)
                error = self.failures[-1] if self.failures else e if isinstance(e, OSError) else None
                if error is None:
                    raise
                removed = f"; its other outputs ({len(written)}) were removed" if written else ""
                raise BundleError(f"{final}: cannot be written ({error.strerror or error}){removed}") from e
            written.append(str(final))
        d[self.written_key] = written
        return d
