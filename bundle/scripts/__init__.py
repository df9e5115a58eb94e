"""Custom components of the MedSegDiff-V2 bundle, grouped by stage (importable as ``scripts`` from the bundle root).

- ``data``: datalists, file readers and DICOM series, the data checks, inference inputs, transforms;
- ``networks``: MedSegDiff-V2, one module per component of the paper;
- ``diffusion``: noise schedules and samplers, the training inferer and loss, sampling, ensemble fusion, EMA;
- ``evaluation``: metrics (overlap, diversity, uncertainty), output writers, savers, diagnostics, the UNet baseline's
  loss;
- ``runtime``: start-up checks, errors, checkpoints and shipped weights, run folders, handlers;
- ``tools``: TorchScript-free export and the model-zoo package.

Importing ``scripts`` imports every module (a test holds the list complete), so that a config's
``$scripts.<stage>.<module>.<name>`` always resolves.
"""

from . import data, diffusion, evaluation, networks, runtime, tools
from .data import datalist, dicom, inputs, readers, transforms, validation  # noqa: F401
from .diffusion import ema, fusion, sampling, schedulers, training  # noqa: F401
from .evaluation import baseline, diagnostics, metrics, outputs, reliability, savers, uncertainty  # noqa: F401
from .runtime import (  # noqa: F401  # noqa: F401
    allocator,
    checkpoints,
    checks,
    cli,
    disk,
    errors,
    handlers,
    records,
    resume,
    runs,
    settings,
    weights,
)
from .tools import export, package  # noqa: F401

__all__ = ["data", "diffusion", "evaluation", "networks", "runtime", "tools"]
