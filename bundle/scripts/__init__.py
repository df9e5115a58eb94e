"""Custom components of the MedSegDiff-V2 bundle (importable as ``scripts`` from the bundle root)."""

from . import data, diffusion, handlers, networks, sampling

__all__ = ["data", "diffusion", "handlers", "networks", "sampling"]
