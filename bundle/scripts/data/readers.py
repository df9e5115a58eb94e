"""Reading one image or label file for the checks: nibabel (NIfTI), PIL (2D), MONAI ``LoadImage`` (DICOM series folders
and anything else), with the per-file checks shared by datalist validation and inference inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import LoadImage
from PIL import Image

from ..runtime.errors import BundleError, DataValidationError
from .dicom import check_dicom_series

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # the suffixes MONAI's PILReader claims
# the 2D images inference writes back: MONAI's writers squeeze a 1-pixel axis away and then find no writer
MIN_IMAGE_SIZE = 2
MODALITIES = ("rgb", "ct", "mr")  # the intensity normalisations of the configs (train.yaml's intensity block)
RGB_RANGE = (0, 255)  # modality rgb: ScaleIntensityRanged maps 0..255 to [0, 1] and clips the rest


@dataclass
class FileInfo:
    """What validation needs to know about one image file."""

    path: str
    spatial_shape: tuple[int, ...]
    channels: int
    affine: np.ndarray | None
    data: np.ndarray | None


def resolve_path(entry: Any, root: Path) -> str:
    if not isinstance(entry, (str, os.PathLike)):
        raise DataValidationError(f"datalist path entry {entry!r} is not a string")
    return os.path.normpath(os.path.join(root, os.path.expanduser(str(entry))))


def read_file(path: str, with_data: bool) -> FileInfo:
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
            return FileInfo(path, spatial, channels, np.asarray(img.affine, dtype=float), data)
        if os.path.isfile(path) and name.endswith(PIL_SUFFIXES):
            with Image.open(path) as img:
                img.load()  # full decode: catches truncated files
                data = np.asarray(img) if with_data else None
                return FileInfo(path, tuple(img.size), len(img.getbands()), None, data)
        # DICOM series folder or another format: exactly what LoadImaged will do in training
        if os.path.isdir(path):
            check_dicom_series(path)  # ITK would stack a series with a gap at a wrong, uniform spacing
        img = LoadImage(image_only=True)(path)
        spatial = tuple(int(s) for s in img.meta["spatial_shape"])
        channels = int(np.prod(img.shape)) // max(int(np.prod(spatial)), 1)
        return FileInfo(path, spatial, channels, np.asarray(img.affine, dtype=float), img.numpy())
    except BundleError as e:
        raise DataValidationError(str(e)) from e
    except Exception as e:  # any reader failure means the same thing to the user
        reason = f"{type(e).__name__}: {e}".strip().splitlines()[0][:200]
        raise DataValidationError(f"{path}: cannot be read (corrupt or truncated file?): {reason}") from e


def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def check_dims(info: FileInfo, spatial_dims: int) -> None:
    rank = len(info.spatial_shape)
    if rank != spatial_dims:
        kind = {2: "2D image", 3: "3D volume"}.get(rank, f"{rank}D array")
        want = "2D images" if spatial_dims == 2 else "3D volumes"
        raise DataValidationError(
            f"{info.path}: is a {kind} (spatial shape {fmt_shape(info.spatial_shape)}) "
            f"but spatial_dims={spatial_dims} expects {want}"
        )


def check_image_values(info: FileInfo) -> None:
    data = info.data
    if data is None or not np.issubdtype(data.dtype, np.inexact):
        return
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataValidationError(f"{info.path}: image contains NaN or infinite intensities ({bad} voxels)")


def check_rgb_range(info: FileInfo, modality: str | None) -> None:
    """Refuses an image whose intensities do not fit ``modality=rgb`` (8-bit 0..255), e.g. a 16-bit PNG, rather than
    letting the normalisation clip most of it to 1.0."""
    data = info.data
    if modality != "rgb" or data is None or data.size == 0:
        return
    low, high = RGB_RANGE
    lo, hi = data.min(), data.max()
    if lo >= low and hi <= high:
        return
    share = float(np.count_nonzero((data < low) | (data > high))) / data.size
    raise DataValidationError(
        f"{info.path}: intensities {lo:g}..{hi:g} ({data.dtype}) do not fit modality=rgb, which maps {low}..{high} "
        f"to [0, 1] and clips the rest ({share:.0%} of the values would clip): use --modality mr (per-image "
        "percentiles, e.g. for 16-bit images) or convert the images to 8-bit"
    )


def check_image_size(info: FileInfo) -> None:
    """2D images must be at least :data:`MIN_IMAGE_SIZE` pixels along each axis for their result to be written."""
    if len(info.spatial_shape) == 2 and min(info.spatial_shape) < MIN_IMAGE_SIZE:
        raise DataValidationError(
            f"{info.path}: image is {fmt_shape(info.spatial_shape)} pixels; inference needs at least "
            f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}"
        )


def is_dicom_series(folder: Path) -> bool:
    """A folder holding DICOM files directly (a series) rather than one case per entry."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return bool(files) and all(p.suffix.lower() in (".dcm", "") for p in files)
