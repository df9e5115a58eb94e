"""Discovery of the inputs to segment: a datalist section, a folder of images or volumes, or one file."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .datalist import PathLike, folder_entries, read_sections
from .errors import DataValidationError
from .readers import check_dims, check_image_values, is_dicom_series, read_file, resolve_path

logger = logging.getLogger(__name__)


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
            items = read_sections(str(path), root, (key,), 0.0, 0)[key]
        elif path.is_dir() and not is_dicom_series(path):
            items = [str(p) for p in folder_entries(path) if not p.name.endswith(".json")]  # no hidden entries
        elif path.exists():
            items = [str(path)]
        else:
            raise DataValidationError(f"{path}: input not found")
    elif isinstance(src, Mapping):
        items = read_sections(src, root, (key,), 0.0, 0)[key]
    else:
        items = list(src)
    cases, bad = [], []
    for item in items:
        entry = item[image_key] if isinstance(item, Mapping) else item
        path = resolve_path(entry, root)
        try:
            info = read_file(path, with_data=True)
            check_dims(info, spatial_dims)
            check_image_values(info)
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
