"""Geometry checks of a DICOM series folder before it is read as one volume.

MONAI's ``ITKReader`` reads the first series GDCM finds in a folder (a second series only gives a Python warning) and
stacks its files whatever their spacing: a missing slice gives a volume with uniform spacing and the wrong geometry
(with only a C++ warning). :func:`check_dicom_series` finds the series as GDCM does (SimpleITK's
``GetGDCMSeriesIDs`` / ``GetGDCMSeriesFileNames``, by SeriesInstanceUID; files GDCM cannot parse are left out, as
ITK leaves them out), reads their headers only, and raises a :class:`~scripts.runtime.errors.BundleError` naming the
folder and the problem: mixed series, mixed orientations or sizes, duplicate slices, missing slices (a gap) or
non-uniform spacing. The bundle never resamples a series to hide a gap.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..runtime.errors import BundleError

__all__ = ["check_dicom_series", "series_files"]


def series_files(folder: str | Path) -> dict[str, list[Path]]:
    """The DICOM series of ``folder`` (not its subfolders) as GDCM finds them: SeriesInstanceUID -> files."""
    import SimpleITK as sitk  # noqa: N813 (imported where a series folder is checked, as fusion's STAPLE does)

    reader = sitk.ImageSeriesReader
    return {
        uid: [Path(f) for f in reader.GetGDCMSeriesFileNames(str(folder), uid)]
        for uid in reader.GetGDCMSeriesIDs(str(folder))
    }


def _position_along_normal(ds: pydicom.Dataset, normal: np.ndarray) -> float | None:
    position = getattr(ds, "ImagePositionPatient", None)
    return None if position is None else float(np.dot(np.asarray(position, dtype=float), normal))


def check_dicom_series(folder: str | Path, rel_tol: float = 0.01, abs_tol: float = 0.01) -> None:
    """Raises :class:`BundleError` unless ``folder`` holds one series of parallel, equally sized slices at uniform
    spacing (within ``max(abs_tol mm, rel_tol * spacing)``)."""
    folder = Path(folder)
    series = series_files(folder)
    if len(series) > 1:
        counts = Counter({uid: len(files) for uid, files in series.items()})
        found = ", ".join(f"{uid} ({n} files)" for uid, n in counts.most_common())
        raise BundleError(f"{folder}: mixed DICOM series, {len(series)} series in one folder: {found}; one per folder")
    headers = []
    for path in sorted(next(iter(series.values()), [])):
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except (InvalidDicomError, OSError, ValueError) as e:
            raise BundleError(f"{path}: not a readable DICOM file in the series folder {folder}: {e}") from e
    if len(headers) < 2:
        return
    sizes = Counter((int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))) for _, ds in headers)
    if len(sizes) > 1:
        raise BundleError(f"{folder}: slices of different sizes in one series (rows x columns: {dict(sizes)})")
    orientations = [getattr(ds, "ImageOrientationPatient", None) for _, ds in headers]
    if any(o is None for o in orientations):
        return _check_instance_numbers(folder, headers)
    cosines = np.asarray(orientations, dtype=float)
    if np.abs(cosines - cosines[0]).max() > 1e-4:
        raise BundleError(f"{folder}: slices with different orientations (ImageOrientationPatient) in one series")
    normal = np.cross(cosines[0][:3], cosines[0][3:])
    positions = [(_position_along_normal(ds, normal), path) for path, ds in headers]
    if any(d is None for d, _ in positions):
        return _check_instance_numbers(folder, headers)
    positions.sort(key=lambda x: x[0])
    z = np.array([d for d, _ in positions])
    steps = np.diff(z)
    step = float(np.median(steps))
    tol = max(abs_tol, rel_tol * abs(step))
    duplicate = int(np.argmin(steps))
    if steps[duplicate] <= tol:
        a, b = positions[duplicate][1].name, positions[duplicate + 1][1].name
        raise BundleError(f"{folder}: duplicate slice position {z[duplicate]:.4g} mm ({a} and {b})")
    worst = int(np.argmax(np.abs(steps - step)))
    if abs(steps[worst] - step) > tol:
        gap, a, b = float(steps[worst]), positions[worst][1].name, positions[worst + 1][1].name
        ratio = gap / step
        missing = round(ratio) - 1
        hint = f"{missing} missing slice(s)?" if missing >= 1 and abs(ratio - round(ratio)) * step <= tol else ""
        raise BundleError(
            f"{folder}: non-uniform slice spacing: a gap of {gap:.4g} mm between {a} ({z[worst]:.4g} mm) and {b} "
            f"({z[worst + 1]:.4g} mm) where the other slices are {step:.4g} mm apart{'; ' + hint if hint else ''}"
        )


def _check_instance_numbers(folder: Path, headers: list[tuple[Path, pydicom.Dataset]]) -> None:
    """Without slice positions: the instance numbers must run without a gap."""
    numbers = sorted(int(ds.InstanceNumber) for _, ds in headers if getattr(ds, "InstanceNumber", None) is not None)
    if len(numbers) != len(headers):
        raise BundleError(f"{folder}: slices without ImagePositionPatient nor InstanceNumber: cannot order the series")
    gaps = [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b - a != 1]
    if gaps:
        a, b = gaps[0]
        raise BundleError(f"{folder}: missing slice(s): instance numbers jump from {a} to {b}")
