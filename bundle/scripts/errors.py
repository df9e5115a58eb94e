"""The bundle's own error type, and the last line a user sees when it stops a ``monai.bundle run``.

MONAI wraps every exception raised while a config is parsed or run in ``RuntimeError: Failed to evaluate
ConfigExpression`` / ``Failed to instantiate component``, so the bundle's clear message ends up in the middle of a long
traceback. :func:`install_error_summary` (called by ``scripts.cli.check_cli_overrides``, the first
``initialize`` step of every config) adds a hook that, after Python's usual traceback, prints the message of the
:class:`BundleError` that caused the failure as the final line: ``ERROR: <file or key>: <problem>``.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["BundleError", "DataValidationError", "bundle_error_in", "install_error_summary", "summary_line"]


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


def summary_line(error: BaseException) -> str:
    """One line for ``error``: its first line, and a hint when the full message (shown above) has more."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    more = f" ({len(lines) - 1} more line(s) above)" if len(lines) > 1 else ""
    return f"ERROR: {lines[0]}{more}"


def _hook(previous):
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)
        error = bundle_error_in(exc)
        if error is not None:
            sys.stderr.write(summary_line(error) + "\n")
            sys.stderr.flush()

    hook.medsegdiff_summary = True  # type: ignore[attr-defined]
    return hook


def install_error_summary() -> None:
    """Makes an uncaught :class:`BundleError` end the process's stderr with its one-line message (idempotent; the
    usual traceback is still printed first)."""
    if not getattr(sys.excepthook, "medsegdiff_summary", False):
        sys.excepthook = _hook(sys.excepthook)
