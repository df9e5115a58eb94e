"""Discovery of the inputs to segment: a datalist section, a folder of images or volumes, or one file."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..runtime.errors import DataValidationError
from .datalist import PathLike, folder_entries, read_sections
from .readers import (
    NIFTI_SUFFIXES,
    check_dims,
    check_image_size,
    check_image_values,
    check_rgb_range,
    is_dicom_series,
    read_file,
    resolve_path,
)

logger = logging.getLogger(__name__)


def load_images(
    source: PathLike | Mapping | Sequence | None,
    dataset_dir: PathLike,
    spatial_dims: int,
    key: str = "testing",
    in_channels: int | None = None,
    image_key: str = "image",
    modality: str | None = None,
    output_ext: str | None = None,
) -> list[dict]:
    """Cases to segment, ``[{"image": path}, ...]``, from a datalist JSON (section ``key``), a list, a folder of
    images/volumes (each file or DICOM series sub-folder is a case), or a single file (a relative path: from the
    working directory if it exists there, else from ``dataset_dir``). Each case is checked up front (an ``image_key``
    entry, readable, dimensionality, channels, finite intensities, 8-bit range for ``modality="rgb"``, the minimum 2D
    size, an ``output_ext`` that can hold its result); a bad case is reported with a warning and skipped, so a batch
    run still writes the others. Raises :class:`DataValidationError` when no valid case is left, or when two cases
    would write the same output files."""
    root = Path(dataset_dir).expanduser().resolve()
    src = root if source is None or (isinstance(source, str) and not source.strip()) else source
    where = "input"
    if isinstance(src, (str, os.PathLike)):
        path = Path(src).expanduser()
        path = (path if path.is_absolute() or path.exists() else root / path).resolve()
        if path.is_file() and path.name.lower().endswith(".json"):
            items = read_sections(str(path), root, (key,), 0.0, 0)[key]
            where = f"{path} section {key!r}"
        elif path.is_dir() and not is_dicom_series(path):
            items = [str(p) for p in folder_entries(path) if not p.name.endswith(".json")]  # no hidden entries
        elif path.exists():
            items = [str(path)]
        else:
            raise DataValidationError(f"{path}: input not found")
    elif isinstance(src, Mapping):
        items = read_sections(src, root, (key,), 0.0, 0)[key]
        where = f"input section {key!r}"
    else:
        items = list(src)
    cases, bad = [], []
    for index, item in enumerate(items):
        try:
            if isinstance(item, Mapping) and image_key not in item:
                raise DataValidationError(f"{where} entry {index} {dict(item)}: has no {image_key!r} key")
            image = resolve_path(item[image_key] if isinstance(item, Mapping) else item, root)
            info = read_file(image, with_data=True)
            check_dims(info, spatial_dims)
            check_image_values(info)
            check_rgb_range(info, modality)
            check_image_size(info)
            _check_output_format(image, spatial_dims, output_ext)
            if in_channels is not None and info.channels != in_channels:
                raise DataValidationError(f"{image}: image has {info.channels} channels, expected {in_channels}")
        except DataValidationError as e:
            bad.append(str(e))
            logger.warning(f"skipping a bad case: {e}")
            continue
        cases.append({**(dict(item) if isinstance(item, Mapping) else {}), image_key: image})
    if not cases:  # one line: the reason of the first bad case (all of them were logged above)
        first = bad[0] if bad else "empty input"
        more = f" (and {len(bad) - 1} more bad case(s), logged above)" if len(bad) > 1 else ""
        raise DataValidationError(f"no valid input case to segment: {first}{more}")
    _check_distinct_outputs([c[image_key] for c in cases])
    logger.info(f"{len(cases)} case(s) to segment, {len(bad)} skipped")
    return cases


def _check_output_format(path: str, spatial_dims: int, output_ext: str | None) -> None:
    """A 2D result is written as NIfTI only from a NIfTI input (its affine); MONAI cannot write a PNG/JPEG image's."""
    if spatial_dims == 2 and output_ext in NIFTI_SUFFIXES and not path.lower().endswith(NIFTI_SUFFIXES):
        raise DataValidationError(
            f"{path}: a 2D {Path(path).suffix or 'non-NIfTI'} image cannot be written as output_ext={output_ext} "
            "(only 2D NIfTI inputs can): use --output_ext .png"
        )


def output_stem(path: str) -> str:
    """The name inference gives a case's outputs (``<stem>_seg<ext>``): as MONAI's SaveImage, the file name less its
    extension (``.nii.gz`` counts as one)."""
    stem, ext = os.path.splitext(os.path.basename(os.path.normpath(path)))
    return os.path.splitext(stem)[0] if ext == ".gz" else stem


def _check_distinct_outputs(paths: Sequence[str]) -> None:
    """Refuses two cases whose outputs would have the same names (``a/x.png`` and ``b/x.png``): one would be lost."""
    seen: dict[str, str] = {}
    for path in paths:
        other = seen.setdefault(output_stem(path), path)
        if other != path:
            raise DataValidationError(
                f"{path}: its outputs ({output_stem(path)}_seg...) would overwrite those of {other}: rename one of them"
            )
