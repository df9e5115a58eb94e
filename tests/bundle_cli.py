"""The bundle's command line as the README runs it, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(bundle_root: Path, *args: str, prelude: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ...`` from the bundle root; ``prelude``: Python run first in that process (a
    simulated fault), then monai.bundle as ``-m`` runs it."""
    command = ["-m", "monai.bundle"]
    if prelude:
        code = f"import runpy, sys\n{prelude}\nrunpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
        command = ["-c", code]
    return subprocess.run(
        [sys.executable, *command, "run", *args],
        cwd=bundle_root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (where the bundle's ``ERROR:`` summary goes)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
