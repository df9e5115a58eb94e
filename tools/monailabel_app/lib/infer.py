"""The bundle's inference as a MONAI Label infer task: the fused ensemble mask as the label file (2D: a PNG of shape
(H, W); volumes: NIfTI in the input's geometry) and the ensemble's uncertainty map in the result JSON."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose, SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

# the bundle's config files per profile, merged left to right
PROFILES = {
    "image": ("inference.yaml", "monailabel.yaml"),
    "volume": ("inference.yaml", "inference_volume.yaml", "monailabel.yaml"),
}
# 2D files (the rest, NIfTI/NRRD volumes and DICOM series folders, go to the volume profile)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# label file formats that hold 8-bit values only: the uncertainty (bits, in [0, 1]) is written scaled to 0..255
EIGHT_BIT = (".png", ".jpg", ".jpeg", ".bmp")
UNCERTAINTY = "entropy in bits of the ensemble members' mean foreground probability (0: all members agree)"


def use_bundle_scripts(bundle_root: Path) -> None:
    """The bundle's configs import its ``scripts`` package, as ``monai.bundle run`` from the bundle root does."""
    if str(bundle_root) not in sys.path:
        sys.path.insert(0, str(bundle_root))


def is_image_2d(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


class MedSegDiffInfer(BasicInferTask):
    """One profile of the bundle (``image``: inference.yaml, ``volume``: + inference_volume.yaml, both with
    monailabel.yaml) run as the bundle runs it: its ``preprocessing``, ``inferer`` (the ensemble) and
    ``postprocessing`` (fusion, uncertainty, inversion to the input's grid) without its SaveImaged writers.

    The weights are the config's ``ckpt_path``, checked against ``large_files.yml`` (sha256) before they are served
    and before every inference: a replaced file is refused (the model leaves ``/info/``; ``/infer`` answers 500 with the
    reason). The settings in ``monailabel_options`` may be changed per request and are checked as on the command line.
    """

    def __init__(self, bundle_root: str | Path, profile: str = "image", preload: bool = False) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.profile = profile
        use_bundle_scripts(self.bundle_root)
        parser = ConfigParser()
        parser.read_config([str(self.bundle_root / "configs" / f) for f in PROFILES[profile]])
        parser["bundle_root"] = str(self.bundle_root)
        self._base = copy.deepcopy(parser.get())
        self._parsed: tuple[str, dict[str, Any]] | None = None
        self._verified: tuple | None = None
        self.large_files = str(parser.get_parsed_content("weights_loader#large_files"))
        self.ckpt = ckpt = str(parser.get_parsed_content("ckpt_path"))
        self.defaults = {k: parser.get_parsed_content(k) for k in parser["monailabel_options"]}
        meta = json.loads((self.bundle_root / "configs" / "metadata.json").read_text())
        kind = "2D images" if profile == "image" else "volumes, slice by slice"
        super().__init__(
            path=ckpt,
            network=parser.get_parsed_content("network_def"),
            type=InferType.SEGMENTATION,
            labels=dict(parser["monailabel_labels"][profile]),
            dimension=int(parser["spatial_dims"]),
            description=f"{meta['name']} {meta['version']} ({kind}, {Path(ckpt).name}): ensemble mask + uncertainty",
            model_state_dict="model",
            config=dict(self.defaults),
            load_strict=True,
            preload=preload and self.is_valid(),  # never loads unverified weights
        )

    # --- weights --------------------------------------------------------------------------------------------------
    def verify_weights(self) -> None:
        """Raises the bundle's error when the weights file is missing or is not the one ``large_files.yml`` lists."""
        from scripts.runtime.errors import BundleError
        from scripts.runtime.weights import verify_weights

        path = self.ckpt
        if not os.path.isfile(path):
            raise BundleError(f"no weights at {path}")
        st = os.stat(path)
        stamp = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp != self._verified:
            verify_weights(path, self.large_files, self.bundle_root)
            self._verified = stamp

    def weights_stamp(self) -> str:
        """Identifies the weights file as verified (path, size, modification time): scores made with other weights
        are stale."""
        self.verify_weights()
        path, _, size, mtime, _ = self._verified  # type: ignore[misc]
        return f"{path}:{size}:{mtime}"

    def is_valid(self) -> bool:
        try:
            self.verify_weights()
        except Exception as e:  # any reason not to serve: logged, not listed
            logger.error(f"{self.profile} model not served: {e}")
            return False
        return True

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        try:
            self.verify_weights()
        except Exception as e:
            raise HTTPException(status_code=500, detail=f"weights refused: {e}") from e
        return super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)

    # --- the bundle's pipeline, with the request's settings ---------------------------------------------------------
    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """The ``monailabel_options`` settings of a request: its values (strings typed as the defaults) or the
        defaults."""
        out = {}
        for k, default in self.defaults.items():
            v = request.get(k, default)
            if isinstance(v, str) and default is not None and not isinstance(default, str):
                try:
                    v = bool(strtobool(v)) if isinstance(default, bool) else type(default)(v)
                except ValueError as e:
                    raise HTTPException(status_code=422, detail=f"{k}={v!r} is invalid: {e}") from e
            out[k] = v
        return out

    def _pipeline(self, data: dict[str, Any]) -> dict[str, Any]:
        """preprocessing, inferer and postprocessing parsed with the request's settings (one parse per settings, so
        that postprocessing's Invertd inverts the very preprocessing instance that ran)."""
        from scripts.runtime.errors import BundleError
        from scripts.runtime.settings import check_config

        options = self.options(data)
        key = json.dumps(options, sort_keys=True, default=str)
        if self._parsed is None or self._parsed[0] != key:
            parser = ConfigParser(copy.deepcopy(self._base))
            for k, v in options.items():
                parser[k] = v
            try:
                check_config(parser)
            except BundleError as e:
                raise HTTPException(status_code=422, detail=str(e)) from e
            parts = {k: parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")}
            self._parsed = (key, parts)
        return self._parsed[1]

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return list(self._pipeline(data or {})["preprocessing"].transforms)

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        return self._pipeline(data or {})["inferer"]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        post: Compose = self._pipeline(data or {})["postprocessing"]
        kept = [t for t in post.transforms if not isinstance(t, SaveImaged)]
        # (1, *spatial) -> (*spatial): what the 2D writers (PNG/JPEG) and the viewers expect
        return [*kept, SqueezeDimd(keys=["pred", "uncertainty"], dim=0)]

    # --- outputs -----------------------------------------------------------------------------------------------------
    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """The mask as the label file (default: PNG for 2D, NIfTI for volumes; ``result_extension`` overrides) and,
        in the result JSON, ``uncertainty``: the map as a file of the same format (base64), its mean and maximum."""
        ext = extension or data.get("result_extension") or (".png" if self.dimension == 2 else ".nii.gz")
        label, result = super().writer(data, extension=ext, dtype=dtype or data.get("result_dtype") or "uint8")
        result = dict(result)
        result["uncertainty"] = self._uncertainty(data, ext)
        return label, result

    @staticmethod
    def _uncertainty(data: dict[str, Any], ext: str) -> dict[str, Any]:
        unc = data["uncertainty"]
        scale = 255 if ext.lower() in EIGHT_BIT else 1
        values = {
            **data,
            "uncertainty": (unc * scale).round() if scale != 1 else unc,
            "result_extension": ext,
            "result_dtype": "uint8" if scale != 1 else "float32",
        }
        path, _ = Writer(label="uncertainty", json=None)(values)
        try:
            encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        finally:
            os.remove(path)
        arr = torch.as_tensor(unc).float()
        return {
            "description": UNCERTAINTY,
            "mean": float(arr.mean()),
            "max": float(arr.max()),
            "format": ext,
            "dtype": values["result_dtype"],
            "scale": scale,
            "encoding": "base64",
            "file": encoded,
        }
