"""Custom components of the MedSegDiff-V2 bundle (importable as ``scripts`` from the bundle root)."""

from . import networks

__all__ = ["networks"]
