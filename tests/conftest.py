"""Shared test setup: the bundle root on sys.path (as `monai.bundle run` does) and the embedded data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"

if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The small embedded demo datasets (``isic/`` 2D, ``hippocampus/`` 3D), each with a ``datalist.json``."""
    return BUNDLE / "data" / "demo"


@pytest.fixture(scope="session")
def committed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped ``models/model.pt`` as committed (git ``HEAD``), never what a local run left in the working tree;
    the working-tree file where the bundle is not a git checkout (e.g. an unpacked package)."""
    relative = (BUNDLE / "models" / "model.pt").relative_to(REPO).as_posix()
    try:
        blob = subprocess.run(["git", "show", f"HEAD:{relative}"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return BUNDLE / "models" / "model.pt"
    path = tmp_path_factory.mktemp("committed") / "model.pt"
    path.write_bytes(blob)
    return path
