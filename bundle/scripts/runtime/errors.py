"""The bundle's own error type, and the last line a user sees when it stops a ``monai.bundle run``.

MONAI wraps every exception raised while a config is parsed or run in ``RuntimeError: Failed to evaluate
ConfigExpression`` / ``Failed to instantiate component``, so the bundle's clear message ends up in the middle of a long
traceback. :func:`install_error_summary` (called by ``scripts.runtime.cli.check_command_line``, the first
``initialize`` step of every config) adds a hook that, after Python's usual traceback, prints one final line for every
failure: ``ERROR: <file or key>: <problem>``: the message of the :class:`BundleError` that caused it, else the file
and reason of an ``OSError`` (disk full, read-only file system, permission), else the component and the root cause.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from pathlib import Path
from types import TracebackType

__all__ = [
    "BundleError",
    "DataValidationError",
    "bundle_error_in",
    "failure_line",
    "install_error_summary",
    "summary_line",
    "write_error",
]


class BundleError(ValueError):
    """A problem the user can fix (a setting, a file, the data); the message names the file or key and the problem.
    A ``ValueError`` so that callers catching ``ValueError`` keep working."""


class DataValidationError(BundleError):
    """A dataset problem found before training; the message names the file and the problem."""


def bundle_error_in(exc: BaseException | None) -> BundleError | None:
    """The first :class:`BundleError` in the chain of causes/contexts of ``exc`` (``None`` if there is none)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BundleError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# what to do about the usual reasons a write fails
_WRITE_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space, or write the run elsewhere (--ckpt_dir/--output_dir)",
    errno.EDQUOT: "disk quota exceeded: free some space, or write the run elsewhere (--ckpt_dir/--output_dir)",
    errno.EROFS: "read-only file system: write the run elsewhere (--ckpt_dir/--output_dir, or --bundle_root)",
    errno.EACCES: "permission denied: write the run to a folder you may write (--ckpt_dir/--output_dir)",
    errno.EPERM: "operation not permitted: write the run to a folder you may write (--ckpt_dir/--output_dir)",
}


def _file_system_state(path: Path) -> str:
    """Why a write into ``path``'s folder may have failed when the error does not say (torch's zip writer raises a
    bare ``RuntimeError``): a read-only file system, or the free space."""
    folder = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if folder is None:
        return ""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "; the file system is read-only"
        return f"; {shutil.disk_usage(folder).free / 2**20:.0f} MiB free on its file system"
    except OSError:
        return ""


def write_error(path: str | Path, error: BaseException, what: str = "cannot write") -> BundleError:
    """A :class:`BundleError` for a failed write of ``path``: ``<path>: <what>: <reason and what to do>``."""
    os_error = next((e for e in _chain(error) if isinstance(e, OSError) and e.errno is not None), None)
    if os_error is not None:
        reason = _WRITE_HINTS.get(os_error.errno, os_error.strerror or str(os_error))
    else:
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        reason += _file_system_state(Path(path))
    return BundleError(f"{path}: {what}: {reason}")


def summary_line(error: BaseException) -> str:
    """One line for ``error``: its first line, and a hint when the full message (shown above) has more."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    more = f" ({len(lines) - 1} more line(s) above)" if len(lines) > 1 else ""
    return f"ERROR: {lines[0]}{more}"


# MONAI's wrapper of an exception raised while instantiating a config component
_COMPONENT = re.compile(r"Failed to instantiate component '([^']+)'")


def failure_line(exc: BaseException) -> str:
    """The last line for a failure: the :class:`BundleError` that caused it; else the file and reason of an
    ``OSError``; else the component being built (or the exception type) and the root cause."""
    error = bundle_error_in(exc)
    if error is not None:
        return summary_line(error)
    chain = _chain(exc)
    os_error = next(
        (e for e in chain if isinstance(e, OSError) and (e.filename is not None or e.errno in _WRITE_HINTS)), None
    )
    if os_error is not None:
        where = os_error.filename if os_error.filename is not None else type(os_error).__name__
        reason = _WRITE_HINTS.get(os_error.errno, os_error.strerror or str(os_error))  # type: ignore[arg-type]
        return summary_line(BundleError(f"{where}: {reason}"))
    if isinstance(exc, KeyboardInterrupt):
        return "ERROR: interrupted"
    root = chain[-1]
    component = next((m.group(1) for e in chain if (m := _COMPONENT.search(str(e)))), None)
    problem = str(root).strip().splitlines()[0] if str(root).strip() else "(no message)"
    return f"ERROR: {component or type(root).__name__}: {problem}"


def _hook(previous):
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)
        sys.stderr.write(failure_line(exc) + "\n")
        sys.stderr.flush()

    hook.medsegdiff_summary = True  # type: ignore[attr-defined]
    return hook


def install_error_summary() -> None:
    """Makes every uncaught exception end the process's stderr with one ``ERROR:`` line (:func:`failure_line`;
    idempotent; the usual traceback is still printed first)."""
    if not getattr(sys.excepthook, "medsegdiff_summary", False):
        sys.excepthook = _hook(sys.excepthook)
