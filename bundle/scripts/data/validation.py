"""Datalist validation: every case is checked before training starts, and one :class:`DataValidationError` names
the file and the problem, instead of failing hours into a run.

Label value rule: with ``num_classes`` foreground classes a label map must hold integers in ``[0, num_classes]``.
For binary tasks (``num_classes == 1``) and ``binary_255=True`` the value 255 is also accepted as foreground
(8-bit 0/255 masks such as ISIC); the preprocessing must then map it to 1 (train.yaml's ``label_transforms``)
(or ``MapLabelValued(keys="label", orig_labels=[255], target_labels=[1])``); both are no-ops on 0/1 masks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import DataValidationError
from .datalist import SECTIONS, VAL_FRACTION, PathLike, read_sections
from .readers import FileInfo, check_dims, check_image_values, check_rgb_range, fmt_shape, read_file, resolve_path

logger = logging.getLogger(__name__)


def _check_label_values(info: FileInfo, num_classes: int, binary_255: bool) -> None:
    data = info.data
    assert data is not None
    if info.channels != 1:
        raise DataValidationError(
            f"{info.path}: label has {info.channels} channels; expected a single-channel integer label map"
        )
    if data.dtype == bool or data.size == 0:
        return
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all():
            raise DataValidationError(f"{info.path}: label is not integer-valued (contains NaN/inf)")
        frac = data[data != np.round(data)]
        if frac.size:
            raise DataValidationError(
                f"{info.path}: label is not integer-valued (e.g. value {frac.flat[0]:.4g}); "
                f"expected class indices 0..{num_classes}"
            )
    if data.min() >= 0 and data.max() <= num_classes:
        return
    bad = (data < 0) | (data > num_classes)
    if binary_255 and num_classes == 1:
        bad &= data != 255
    if bad.any():
        values = np.unique(data[bad])
        shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if values.size > 8 else "")
        raise DataValidationError(
            f"{info.path}: label values outside 0..{num_classes} (num_classes={num_classes} foreground classes): "
            f"found {shown}"
        )


def _check_same_grid(ref: FileInfo, other: FileInfo, affine_tol: float) -> None:
    if ref.spatial_shape != other.spatial_shape:
        raise DataValidationError(
            f"{other.path}: shape mismatch: spatial shape {fmt_shape(other.spatial_shape)} "
            f"but {ref.path} has {fmt_shape(ref.spatial_shape)}"
        )
    if ref.affine is None or other.affine is None:
        return
    if not np.allclose(ref.affine, other.affine, atol=affine_tol):
        diff = float(np.max(np.abs(ref.affine - other.affine)))
        fmt = {"float_kind": lambda v: f"{v:.4g}"}
        raise DataValidationError(
            f"{other.path}: geometry mismatch with {ref.path}: affines differ by up to {diff:.4g} "
            f"(tolerance {affine_tol:g}); affine {np.array2string(other.affine.ravel()[:12], formatter=fmt)} "
            f"vs {np.array2string(ref.affine.ravel()[:12], formatter=fmt)}"
        )


@dataclass(frozen=True)
class _Checker:
    """Validation settings shared by all cases."""

    num_classes: int
    spatial_dims: int
    image_key: str
    label_key: str
    in_channels: int | None
    binary_255: bool
    affine_tol: float
    check_data: bool
    modality: str | None = None

    def __call__(self, item: Any, root: Path) -> tuple[dict, set[int]]:
        """The case with absolute paths, and the foreground classes its label holds."""
        if not isinstance(item, Mapping):
            raise DataValidationError(f"entry {item!r} is not a dict with {self.image_key!r} and {self.label_key!r}")
        for key in (self.image_key, self.label_key):
            if key not in item:
                raise DataValidationError(f"entry {dict(item)} has no {key!r} key")
        case = dict(item)
        images = item[self.image_key]
        multi = isinstance(images, (list, tuple))
        paths = [resolve_path(p, root) for p in (images if multi else [images])]
        if not paths:
            raise DataValidationError(f"entry {dict(item)} has an empty {self.image_key!r} list")
        case[self.image_key] = paths if multi else paths[0]
        case[self.label_key] = resolve_path(item[self.label_key], root)

        infos = [read_file(p, with_data=self.check_data) for p in paths]
        for info in infos:
            check_dims(info, self.spatial_dims)
            check_image_values(info)
            check_rgb_range(info, self.modality)
            info.data = None  # free memory early
        label = read_file(case[self.label_key], with_data=True)
        check_dims(label, self.spatial_dims)
        for info in infos[1:] + [label]:
            _check_same_grid(infos[0], info, self.affine_tol)
        channels = sum(i.channels for i in infos)
        if self.in_channels is not None and channels != self.in_channels:
            raise DataValidationError(
                f"{paths[0]}: image has {channels} channels, expected in_channels={self.in_channels}"
            )
        _check_label_values(label, self.num_classes, self.binary_255)
        values = {int(v) for v in np.unique(label.data) if v != 0}
        return case, {1 if v == 255 and self.num_classes == 1 else v for v in values}


def validate_datalist(
    datalist: PathLike | Mapping | Sequence | None,
    dataset_dir: PathLike,
    num_classes: int,
    spatial_dims: int,
    keys: Sequence[str] = SECTIONS,
    *,
    image_key: str = "image",
    label_key: str = "label",
    in_channels: int | None = None,
    modality: str | None = None,
    binary_255: bool = True,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    affine_tol: float = 1e-3,
    check_data: bool = True,
    num_workers: int | None = None,
    allow_empty_labels: bool = False,
) -> dict[str, list[dict]]:
    """Load the ``keys`` sections of a datalist, check every case, and return them with absolute paths.

    Args:
        datalist: a Decathlon-style JSON file (path absolute, relative to the working directory, or relative to
            ``dataset_dir``), an already loaded dict of sections, a plain list of cases (split with
            :func:`split_cases`), or ``None``/``""`` to use the folder layout of :func:`find_folder_cases`
            (also split with :func:`split_cases`).
        dataset_dir: the folder the datalist paths are relative to.
        num_classes: number of FOREGROUND classes; label values must be integers in ``[0, num_classes]``.
        spatial_dims: 2 (PNG/JPEG/2D NIfTI images) or 3 (NIfTI volumes, DICOM series folders).
        keys: the sections to return.
        image_key, label_key: item keys; an image may be a list of files (stacked as channels by LoadImaged).
        in_channels: if given, the number of image channels every case must have (e.g. 3 for RGB).
        modality: if ``"rgb"``, image intensities must lie in 0..255 (8-bit): a 16-bit image is refused, as the
            ``rgb`` normalisation would clip it (``mr`` takes per-image percentiles instead).
        binary_255: for ``num_classes == 1`` also accept label value 255 (0/255 masks) as foreground.
        val_fraction, seed: the deterministic split used for lists and folder layouts.
        affine_tol: absolute tolerance when comparing the image and label affines (NIfTI / DICOM).
        check_data: read the image voxels (NaN/inf and modality range checks, truncated files); labels are always
            read.
        num_workers: threads used to read files (default: up to 8).
        allow_empty_labels: accept a ``training`` section whose labels are all empty (all background); by default
            it stops with an error, as the model would learn nothing. The share of empty labels of each section is
            logged either way, and foreground classes absent from every training label are warned about.

    Raises:
        DataValidationError: naming the file and the problem, on the first invalid case
            (the message also lists a few further invalid cases, if any).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes is the number of foreground classes and must be >= 1, got {num_classes}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    start = time.perf_counter()
    root = Path(dataset_dir).expanduser().resolve()
    sections = read_sections(datalist, root, keys, val_fraction, seed)
    checker = _Checker(
        num_classes, spatial_dims, image_key, label_key, in_channels, binary_255, affine_tol, check_data, modality
    )

    def check(job: tuple[str, int, Any]) -> tuple[dict, set[int]] | str:
        key, index, item = job
        try:
            return checker(item, root)
        except DataValidationError as e:
            return f"[{key} case {index}] {e}"

    jobs = [(key, i, item) for key in keys for i, item in enumerate(sections[key])]
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, jobs))
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        more = ""
        if len(errors) > 1:
            more = f"\n{len(errors) - 1} more invalid case(s):\n  " + "\n  ".join(errors[1:6])
            more += "\n  ..." if len(errors) > 6 else ""
        raise DataValidationError(errors[0] + more)
    out: dict[str, list[dict]] = {key: [] for key in keys}
    classes: dict[str, list[set[int]]] = {key: [] for key in keys}
    for (key, _, _), (case, present) in zip(jobs, results, strict=True):
        out[key].append(case)
        classes[key].append(present)
    counts = ", ".join(f"{len(v)} {k}" for k, v in out.items())
    empty = {k: sum(not c for c in v) for k, v in classes.items()}
    shares = ", ".join(f"{k} {empty[k]}/{len(v)} ({100 * empty[k] / max(len(v), 1):.0f}%)" for k, v in classes.items())
    logger.info(f"validated {counts} cases from {root} in {time.perf_counter() - start:.1f}s; empty labels: {shares}")
    if "training" in classes:
        _check_training_labels(classes["training"], num_classes, allow_empty_labels, root)
    return out


def _check_training_labels(present: list[set[int]], num_classes: int, allow_empty: bool, root: Path) -> None:
    """All-empty training labels stop the run (unless allowed); foreground classes never present are warned about."""
    seen = set().union(*present)
    if not seen:
        message = (
            f"{root}: every one of the {len(present)} training labels is empty (background only): the model would "
            "learn nothing (check the label files and num_classes, or set allow_empty_labels=True)"
        )
        if not allow_empty:
            raise DataValidationError(message)
        logger.warning(message)
        return
    absent = sorted(set(range(1, num_classes + 1)) - seen)
    if absent:
        logger.warning(f"{root}: foreground class(es) {absent} appear in no training label (num_classes={num_classes})")


def load_datalist(
    datalist: PathLike | Mapping | Sequence | None,
    dataset_dir: PathLike,
    key: str = "training",
    num_classes: int = 1,
    spatial_dims: int = 2,
    **kwargs: Any,
) -> list[dict]:
    """One validated section with absolute paths, for bundle configs, e.g.
    ``"$scripts.data.validation.load_datalist(@datalist, @dataset_dir, 'training', @num_classes, @spatial_dims)"``.
    ``kwargs`` go to :func:`validate_datalist`."""
    return validate_datalist(datalist, dataset_dir, num_classes, spatial_dims, keys=(key,), **kwargs)[key]
