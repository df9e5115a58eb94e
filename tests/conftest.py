"""Shared test setup: the bundle root on sys.path (as `monai.bundle run` does) and the embedded data."""

from __future__ import annotations

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
