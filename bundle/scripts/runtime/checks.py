"""Start-up checks of the machine and the run, before any data is read or cached: :func:`check_roi_size` (the
network's total stride), :func:`check_device`, :func:`check_output_dir` and :func:`check_reliance_cases` (the
validation cases image reliance needs). The settings' closed sets and ranges are checked in :mod:`.settings`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.datalist import VAL_FRACTION, PathLike, read_sections
from .errors import BundleError

__all__ = ["check_device", "check_output_dir", "check_reliance_cases", "check_roi_size", "network_stride"]


def network_stride(network: Any) -> int | None:
    """The factor the network's input size must be a multiple of: ``size_divisor`` (MedSegDiff-V2) or the product
    of ``strides`` (MONAI UNet); ``None`` when unknown."""
    divisor = getattr(network, "size_divisor", None)
    if divisor is None and getattr(network, "strides", None) is not None:
        divisor = math.prod(int(s) for s in network.strides)
    return int(divisor) if divisor else None


def check_roi_size(roi_size: int, network: Any) -> None:
    """Raises :class:`BundleError` when ``roi_size`` is not a multiple of the network's total stride."""
    stride = network_stride(network)
    if stride is None or roi_size % stride == 0:
        return
    lower, upper = (roi_size // stride) * stride, (roi_size // stride + 1) * stride
    near = " or ".join(str(v) for v in (lower, upper) if v > 0)
    raise BundleError(
        f"roi_size={roi_size} is not a multiple of the network's total stride {stride} (set by preset/channels/"
        f"patch_size): use e.g. {near}"
    )


def check_device(device: Any, key: str = "device") -> None:
    """Raises :class:`BundleError` unless ``device`` (a ``torch.device`` or its name) exists on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise BundleError(f"{key}: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from e
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        available = torch.cuda.is_available()
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch finds no CUDA GPU"
    else:  # mps, xpu, ...: the backend's own query
        backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
        available = bool(getattr(backend, "is_available", lambda: False)())
        why = f"torch finds no {dev.type} device"
    if not available:
        raise BundleError(f"{key}: {device!s} is not available on this machine ({why}): use --device cpu")
    count = torch.cuda.device_count() if dev.type == "cuda" else None
    if count is not None and dev.index is not None and dev.index >= count:
        raise BundleError(
            f"{key}: {device!s} does not exist: this machine has {count} CUDA GPU(s), cuda:0..{count - 1}"
        )


def check_output_dir(path: PathLike, key: str = "output_dir") -> None:
    """Creates the folder ``path`` if needed; raises :class:`BundleError` unless this process can write into it (an
    existing file, a folder that cannot be created, a read-only folder), before a run samples anything."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise BundleError(f"{key}: {folder} is an existing file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BundleError(f"{key}: {folder} cannot be created ({e.strerror or e})") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BundleError(f"{key}: {folder} is not writable (a read-only folder or file system)")
    try:  # a probe file: what access() cannot tell (some network file systems, root on a read-only mount)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
            pass
    except OSError as e:
        raise BundleError(f"{key}: {folder} is not writable ({e.strerror or e})") from e


def check_reliance_cases(
    datalist: PathLike | Mapping | Sequence | None, dataset_dir: PathLike, split: str, val_reliance: bool
) -> None:
    """Image reliance (``val_reliance``) samples each case of the ``split`` section with another case's condition:
    raises :class:`BundleError` when the section has fewer than 2 cases, from the datalist alone (no image is read).
    A folder layout or a plain list puts ``round(VAL_FRACTION * n)`` of its n cases in validation, as
    ``scripts.data.validation.load_datalist`` does."""
    if not val_reliance:
        return
    root = Path(dataset_dir).expanduser().resolve()
    try:
        cases = read_sections(datalist, root, (split,), VAL_FRACTION, 0)[split]
    except ValueError:  # no such file or section...: the data loading reports it, as without image reliance
        return
    if len(cases) >= 2:
        return
    if isinstance(datalist, (str, os.PathLike)) and str(datalist).strip():
        source = str(datalist)
    elif datalist is None or isinstance(datalist, str):
        source = f"the folder layout of {root} ({VAL_FRACTION:.0%} of its cases go to validation)"
    else:
        source = "the datalist"
    raise BundleError(
        f"val_reliance: image reliance samples each {split} case with another case's condition and needs at least 2 "
        f"{split} cases; {source} has {len(cases)}. Set --val_reliance False (or add {split} cases)"
    )
