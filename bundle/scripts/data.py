"""Data side of the bundle: datalist loading with up-front validation, and two dictionary transforms.

``load_datalist`` / ``validate_datalist`` check every case before training starts and raise one
:class:`DataValidationError` naming the file and the problem, instead of failing hours into a run.
The transform chain itself is written declaratively in the bundle configs from MONAI transforms plus
:class:`NormalizeIntensityByModalityd` and :class:`LabelToOneHotd`.

Label value rule: with ``num_classes`` foreground classes a label map must hold integers in ``[0, num_classes]``.
For binary tasks (``num_classes == 1``) and ``binary_255=True`` the value 255 is also accepted as foreground
(8-bit 0/255 masks such as ISIC); the preprocessing must then map it to 1 with :class:`BinarizeLabeld`
(or ``MapLabelValued(keys="label", orig_labels=[255], target_labels=[1])``); both are no-ops on 0/1 masks.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AsDiscrete,
    LoadImage,
    MapTransform,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)
from PIL import Image

from .dicom import check_dicom_series
from .errors import BundleError

__all__ = [
    "BinarizeLabeld",
    "DataValidationError",
    "LabelToOneHotd",
    "NormalizeIntensityByModalityd",
    "find_folder_cases",
    "load_datalist",
    "load_images",
    "split_cases",
    "validate_datalist",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # the suffixes MONAI's PILReader claims
# folder layouts: image sub-folder -> accepted label sub-folders
FOLDER_LAYOUTS: dict[str, tuple[str, ...]] = {"imagesTr": ("labelsTr",), "images": ("masks", "labels")}
# mask stem = image stem + one of these (ISIC: X.jpg <-> X_segmentation.png); "" = same stem
MASK_SUFFIXES = ("", "_segmentation", "_seg", "_mask", "_label")
SECTIONS = ("training", "validation")

PathLike = str | os.PathLike


class DataValidationError(BundleError):
    """A dataset problem found before training; the message names the file and the problem."""


@dataclass
class _FileInfo:
    """What validation needs to know about one image file."""

    path: str
    spatial_shape: tuple[int, ...]
    channels: int
    affine: np.ndarray | None
    data: np.ndarray | None


# ----------------------------------------------------------------------------------------------------------------------
# datalist sources: JSON file / dict / list / folder layout
# ----------------------------------------------------------------------------------------------------------------------
def _stem(name: str) -> str:
    """File name without its (double) suffix: ``a.nii.gz`` -> ``a``; folders keep their name."""
    for suffix in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def find_folder_cases(dataset_dir: PathLike) -> list[dict[str, str]]:
    """Pair images and labels in ``imagesTr/``+``labelsTr/`` or ``images/``+``masks/`` (or ``labels/``).

    A label matches an image when its stem equals the image stem plus one of :data:`MASK_SUFFIXES`
    (``X.jpg`` <-> ``X.png`` or ``X_segmentation.png``); an nnU-Net channel suffix ``_0000`` on the image is ignored.
    Entries may be files or DICOM series folders. Paths are relative to ``dataset_dir``.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DataValidationError(f"{root}: dataset_dir not found (no datalist file was given)")
    for image_dir, label_dirs in FOLDER_LAYOUTS.items():
        label_dir = next((root / d for d in label_dirs if (root / d).is_dir()), None)
        if not (root / image_dir).is_dir() or label_dir is None:
            continue
        labels = {_stem(p.name): p for p in _entries(label_dir)}
        cases = []
        for image in _entries(root / image_dir):
            stem = _stem(image.name)
            stems = [stem, stem[:-5]] if stem.endswith("_0000") else [stem]
            label = next((labels[s + x] for s in stems for x in MASK_SUFFIXES if s + x in labels), None)
            if label is None:
                tried = ", ".join(f"{stem}{x}.*" for x in MASK_SUFFIXES)
                raise DataValidationError(f"{image}: no matching label file in {label_dir} (looked for {tried})")
            cases.append({"image": str(image.relative_to(root)), "label": str(label.relative_to(root))})
        if not cases:
            raise DataValidationError(f"{root / image_dir}: datalist is empty (no images in the folder)")
        return cases
    raise DataValidationError(
        f"{root}: no datalist given and no folder layout found (expected imagesTr/ + labelsTr/ or images/ + masks/)"
    )


def split_cases(cases: Sequence[Any], val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[Any]]:
    """Deterministic train/validation split: shuffle indices with ``random.Random(seed)``, the first
    ``round(val_fraction * n)`` (at least 1 and at most n - 1 when ``val_fraction > 0``) go to validation.
    Both parts keep the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(cases)
    n_val = min(max(round(val_fraction * n), 1), n - 1) if val_fraction > 0 and n > 1 else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return {
        "training": [c for i, c in enumerate(cases) if i not in val],
        "validation": [c for i, c in enumerate(cases) if i in val],
    }


def _read_sections(
    datalist: PathLike | Mapping | Sequence | None,
    dataset_dir: Path,
    keys: Sequence[str],
    val_fraction: float,
    seed: int,
) -> dict[str, list]:
    """Raw (unresolved) sections ``keys`` from a JSON file, a dict, a list of cases, or the folder layout."""
    source = "datalist"
    if datalist is None or (isinstance(datalist, str) and not datalist.strip()):
        datalist = find_folder_cases(dataset_dir)
    elif isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist).expanduser()
        if not path.is_file() and not path.is_absolute() and (dataset_dir / path).is_file():
            path = dataset_dir / path
        if not path.is_file():
            raise DataValidationError(f"{path}: datalist file not found")
        try:
            datalist = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataValidationError(f"{path}: datalist cannot be read as JSON: {e}") from e
        source = str(path)
    if isinstance(datalist, Mapping):
        sections = {}
        for key in keys:
            if key not in datalist:
                found = ", ".join(repr(k) for k, v in datalist.items() if isinstance(v, list)) or "none"
                raise DataValidationError(f"{source}: missing section {key!r} in the datalist (list sections: {found})")
            if not isinstance(datalist[key], list):
                raise DataValidationError(f"{source}: section {key!r} is not a list")
            sections[key] = datalist[key]
    elif isinstance(datalist, Sequence) and not isinstance(datalist, str):
        unknown = [k for k in keys if k not in SECTIONS]
        if unknown:
            raise ValueError(f"a datalist given as a plain list is split into {SECTIONS}; cannot provide {unknown}")
        sections = split_cases(list(datalist), val_fraction, seed)
        if not datalist:
            raise DataValidationError(f"{source}: datalist is empty (no cases)")
    else:
        raise DataValidationError(f"{source}: unsupported datalist type {type(datalist).__name__}")
    for key in keys:
        if not sections[key]:
            raise DataValidationError(f"{source}: section {key!r} is empty (no cases)")
    return sections


# ----------------------------------------------------------------------------------------------------------------------
# reading one file: nibabel (NIfTI), PIL (2D), MONAI LoadImage (DICOM series folders and anything else)
# ----------------------------------------------------------------------------------------------------------------------
def _read(path: str, with_data: bool) -> _FileInfo:
    """Header (and optionally voxels) of one file, in MONAI's spatial-shape convention."""
    if not os.path.exists(path):
        raise DataValidationError(f"{path}: file not found")
    name = path.lower()
    try:
        if os.path.isfile(path) and name.endswith(NIFTI_SUFFIXES):
            img = nib.load(path)
            rank = min(len(img.shape), 3)  # as MONAI's NibabelReader: a 4th+ axis is channels
            data = np.asanyarray(img.dataobj) if with_data else None
            spatial = tuple(int(s) for s in img.shape[:rank])
            channels = int(np.prod(img.shape[rank:], dtype=int))
            return _FileInfo(path, spatial, channels, np.asarray(img.affine, dtype=float), data)
        if os.path.isfile(path) and name.endswith(PIL_SUFFIXES):
            with Image.open(path) as img:
                img.load()  # full decode: catches truncated files
                data = np.asarray(img) if with_data else None
                return _FileInfo(path, tuple(img.size), len(img.getbands()), None, data)
        # DICOM series folder or another format: exactly what LoadImaged will do in training
        if os.path.isdir(path):
            check_dicom_series(path)  # ITK would stack a series with a gap at a wrong, uniform spacing
        img = LoadImage(image_only=True)(path)
        spatial = tuple(int(s) for s in img.meta["spatial_shape"])
        channels = int(np.prod(img.shape)) // max(int(np.prod(spatial)), 1)
        return _FileInfo(path, spatial, channels, np.asarray(img.affine, dtype=float), img.numpy())
    except BundleError as e:
        raise DataValidationError(str(e)) from e
    except Exception as e:  # any reader failure means the same thing to the user
        reason = f"{type(e).__name__}: {e}".strip().splitlines()[0][:200]
        raise DataValidationError(f"{path}: cannot be read (corrupt or truncated file?): {reason}") from e


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _check_dims(info: _FileInfo, spatial_dims: int) -> None:
    rank = len(info.spatial_shape)
    if rank != spatial_dims:
        kind = {2: "2D image", 3: "3D volume"}.get(rank, f"{rank}D array")
        want = "2D images" if spatial_dims == 2 else "3D volumes"
        raise DataValidationError(
            f"{info.path}: is a {kind} (spatial shape {_fmt(info.spatial_shape)}) "
            f"but spatial_dims={spatial_dims} expects {want}"
        )


def _check_image_values(info: _FileInfo) -> None:
    data = info.data
    if data is None or not np.issubdtype(data.dtype, np.inexact):
        return
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataValidationError(f"{info.path}: image contains NaN or infinite intensities ({bad} voxels)")


def _check_label_values(info: _FileInfo, num_classes: int, binary_255: bool) -> None:
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


def _check_same_grid(ref: _FileInfo, other: _FileInfo, affine_tol: float) -> None:
    if ref.spatial_shape != other.spatial_shape:
        raise DataValidationError(
            f"{other.path}: shape mismatch: spatial shape {_fmt(other.spatial_shape)} "
            f"but {ref.path} has {_fmt(ref.spatial_shape)}"
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


# ----------------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------------
def _resolve(entry: Any, root: Path) -> str:
    if not isinstance(entry, (str, os.PathLike)):
        raise DataValidationError(f"datalist path entry {entry!r} is not a string")
    return os.path.normpath(os.path.join(root, os.path.expanduser(str(entry))))


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
        paths = [_resolve(p, root) for p in (images if multi else [images])]
        if not paths:
            raise DataValidationError(f"entry {dict(item)} has an empty {self.image_key!r} list")
        case[self.image_key] = paths if multi else paths[0]
        case[self.label_key] = _resolve(item[self.label_key], root)

        infos = [_read(p, with_data=self.check_data) for p in paths]
        for info in infos:
            _check_dims(info, self.spatial_dims)
            _check_image_values(info)
            info.data = None  # free memory early
        label = _read(case[self.label_key], with_data=True)
        _check_dims(label, self.spatial_dims)
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
    binary_255: bool = True,
    val_fraction: float = 0.2,
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
        binary_255: for ``num_classes == 1`` also accept label value 255 (0/255 masks) as foreground.
        val_fraction, seed: the deterministic split used for lists and folder layouts.
        affine_tol: absolute tolerance when comparing the image and label affines (NIfTI / DICOM).
        check_data: read the image voxels (NaN/inf check, truncated files); labels are always read.
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
    sections = _read_sections(datalist, root, keys, val_fraction, seed)
    checker = _Checker(num_classes, spatial_dims, image_key, label_key, in_channels, binary_255, affine_tol, check_data)

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
    ``"$scripts.data.load_datalist(@datalist, @dataset_dir, 'training', @num_classes, @spatial_dims)"``.
    ``kwargs`` go to :func:`validate_datalist`."""
    return validate_datalist(datalist, dataset_dir, num_classes, spatial_dims, keys=(key,), **kwargs)[key]


def load_images(
    source: PathLike | Mapping | Sequence | None,
    dataset_dir: PathLike,
    spatial_dims: int,
    key: str = "testing",
    in_channels: int | None = None,
    image_key: str = "image",
) -> list[dict]:
    """Cases to segment, ``[{"image": path}, ...]``, from a datalist JSON (section ``key``), a list, a folder of
    images/volumes (each file or DICOM series sub-folder is a case), or a single file. Each image is checked up front
    (readable, dimensionality, channels, finite intensities); a bad case is reported with a warning and skipped, so a
    batch run still writes the others. Raises :class:`DataValidationError` when no valid case is left."""
    root = Path(dataset_dir).expanduser().resolve()
    src = root if source is None or (isinstance(source, str) and not source.strip()) else source
    if isinstance(src, (str, os.PathLike)):
        path = Path(src).expanduser()
        path = path if path.is_absolute() or path.exists() else root / path
        if path.is_file() and path.name.lower().endswith(".json"):
            items = _read_sections(str(path), root, (key,), 0.0, 0)[key]
        elif path.is_dir() and not _is_dicom_series(path):
            items = [str(p) for p in _entries(path) if not p.name.startswith(".") and not p.name.endswith(".json")]
        elif path.exists():
            items = [str(path)]
        else:
            raise DataValidationError(f"{path}: input not found")
    elif isinstance(src, Mapping):
        items = _read_sections(src, root, (key,), 0.0, 0)[key]
    else:
        items = list(src)
    cases, bad = [], []
    for item in items:
        entry = item[image_key] if isinstance(item, Mapping) else item
        path = _resolve(entry, root)
        try:
            info = _read(path, with_data=True)
            _check_dims(info, spatial_dims)
            _check_image_values(info)
            if in_channels is not None and info.channels != in_channels:
                raise DataValidationError(f"{path}: image has {info.channels} channels, expected {in_channels}")
        except DataValidationError as e:
            bad.append(str(e))
            logger.warning(f"skipping a bad case: {e}")
            continue
        cases.append({**(dict(item) if isinstance(item, Mapping) else {}), image_key: path})
    if not cases:  # one line: the reason of the first bad case (all of them were logged above)
        first = bad[0] if bad else "empty input"
        more = f" (and {len(bad) - 1} more bad case(s), logged above)" if len(bad) > 1 else ""
        raise DataValidationError(f"no valid input case to segment: {first}{more}")
    logger.info(f"{len(cases)} case(s) to segment, {len(bad)} skipped")
    return cases


def _is_dicom_series(folder: Path) -> bool:
    """A folder holding DICOM files directly (a series) rather than one case per entry."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return bool(files) and all(p.suffix.lower() in (".dcm", "") for p in files)


# ----------------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------------
class NormalizeIntensityByModalityd(MapTransform):
    """Scale intensities to [0, 1] by modality, with MONAI transforms:

    - ``"ct"``: window ``[a_min, a_max]`` HU (clipped), ``ScaleIntensityRange``;
    - ``"mr"``: per-channel percentiles ``[lower, upper]`` (clipped), ``ScaleIntensityRangePercentiles``;
    - ``"rgb"``: divide by 255 (8-bit photographs such as dermoscopy).
    """

    MODALITIES = ("ct", "mr", "rgb")

    def __init__(
        self,
        keys: KeysCollection,
        modality: str,
        a_min: float = -1000.0,
        a_max: float = 1000.0,
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = modality.lower()
        if self.modality == "ct":
            self.scaler = ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True)
        elif self.modality == "mr":
            self.scaler = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True, channel_wise=True)
        elif self.modality == "rgb":
            self.scaler = ScaleIntensityRange(0.0, 255.0, 0.0, 1.0, clip=True)
        else:
            raise ValueError(f"modality must be one of {self.MODALITIES}, got {modality!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class BinarizeLabeld(MapTransform):
    """For binary tasks (``num_classes == 1``) map any label value >= 0.5 to 1 (``AsDiscrete(threshold=0.5)``), so 0/255
    and 0/1 masks both become 0/1 float32; multi-class label maps (``num_classes > 1``) pass through unchanged."""

    def __init__(self, keys: KeysCollection, num_classes: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarize = AsDiscrete(threshold=0.5) if num_classes == 1 else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.binarize is not None:
            for key in self.key_iterator(d):
                d[key] = self.binarize(d[key])
        return d


class LabelToOneHotd(MapTransform):
    """Integer label map ``(1, *spatial)`` -> ``(num_classes, *spatial)`` float32 {0, 1}: one channel per FOREGROUND
    class (``AsDiscrete(to_onehot=num_classes + 1)`` without the background channel). ``num_classes=1`` gives the
    binary mask."""

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_classes < 1:
            raise ValueError(f"num_classes (foreground classes) must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.to_onehot = AsDiscrete(to_onehot=num_classes + 1, dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if label.shape[0] != 1:
                raise ValueError(f"LabelToOneHotd: {key!r} must be a (1, *spatial) label map, got {tuple(label.shape)}")
            if label.min() < 0 or label.max() > self.num_classes:
                raise ValueError(
                    f"LabelToOneHotd: {key!r} has values outside 0..{self.num_classes} "
                    f"(min {float(label.min()):g}, max {float(label.max()):g}); map 0/255 masks to 0/1 first"
                )
            d[key] = self.to_onehot(label)[1:]
        return d
