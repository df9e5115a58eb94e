"""Datalist sources: a Decathlon-style JSON file (MONAI's ``load_decathlon_datalist`` rules), a dict of sections, a
plain list of cases, or a folder layout (``imagesTr/`` + ``labelsTr/``, ``images/`` + ``masks/``), with the
deterministic train/validation split of lists and folders."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runtime.errors import DataValidationError

# folder layouts: image sub-folder -> accepted label sub-folders
FOLDER_LAYOUTS: dict[str, tuple[str, ...]] = {"imagesTr": ("labelsTr",), "images": ("masks", "labels")}
# mask stem = image stem + one of these (ISIC: X.jpg <-> X_segmentation.png); "" = same stem
MASK_SUFFIXES = ("", "_segmentation", "_seg", "_mask", "_label")
SECTIONS = ("training", "validation")
VAL_FRACTION = 0.2  # the validation share of a plain list or a folder layout (split_cases)

PathLike = str | os.PathLike


def _stem(name: str) -> str:
    """File name without its (double) suffix: ``a.nii.gz`` -> ``a``; folders keep their name."""
    for suffix in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def folder_entries(folder: Path) -> list[Path]:
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
        labels = {_stem(p.name): p for p in folder_entries(label_dir)}
        cases = []
        for image in folder_entries(root / image_dir):
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


def split_cases(cases: Sequence[Any], val_fraction: float = VAL_FRACTION, seed: int = 0) -> dict[str, list[Any]]:
    """Deterministic train/validation split: shuffle indices with ``random.Random(seed)``, the first
    ``round(val_fraction * n)`` (at least 1 and at most n - 1 when ``val_fraction > 0``) go to validation.
    Both parts keep the input order."""
    # not monai.data.partition_dataset: its shuffle and rounding give other splits than the recorded docs/splits
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


def read_sections(
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
        # not load_decathlon_datalist: its bare ValueError names neither the sections there are nor a bad case's file;
        # the sections are checked below and their paths resolved with every other source's, by the validation
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
