"""Custom components of the MedSegDiff-V2 bundle (importable as ``scripts`` from the bundle root)."""

from . import (
    baseline,
    checks,
    data,
    diagnostics,
    diffusion,
    distribution,
    ema,
    errors,
    evaluation,
    handlers,
    metrics,
    networks,
    runs,
    sampling,
)

__all__ = [
    "baseline",
    "checks",
    "data",
    "diagnostics",
    "diffusion",
    "distribution",
    "ema",
    "errors",
    "evaluation",
    "handlers",
    "metrics",
    "networks",
    "runs",
    "sampling",
]
