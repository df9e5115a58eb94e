"""Custom components of the MedSegDiff-V2 bundle (importable as ``scripts`` from the bundle root)."""

from . import baseline, data, diffusion, distribution, evaluation, handlers, metrics, networks, sampling

__all__ = ["baseline", "data", "diffusion", "distribution", "evaluation", "handlers", "metrics", "networks", "sampling"]
