"""Loading weights: clear errors for a missing or mismatched file, and the integrity of shipped weights against
``large_files.yml``.

``large_files.yml`` follows the model-zoo convention: ``large_files: [{path, url, hash_val, hash_type}]`` with paths
relative to the bundle root; its ``committed_files`` list records, the same way, the hash of each weight file committed
with the bundle (``models/model.pt``). ``VerifiedWeightsLoader`` checks a listed weight file's hash (MONAI's
``check_hash``) before loading it, so a truncated or replaced file is reported as corrupt, with its path.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.apps.utils import check_hash
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader
from torch import nn

from ..diffusion.training import unwrap
from .errors import BundleError

logger = logging.getLogger(__name__)

# the lists of large_files.yml that hold weight files with their hash
WEIGHT_LISTS = ("large_files", "committed_files")


# what torch.load(weights_only=True) names when a file holds a Python object it refuses to unpickle
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_failure(path: str | Path, error: BaseException) -> BundleError:
    """The :class:`BundleError` for a weights file that ``torch.load(weights_only=True)`` cannot read: a file holding
    pickled Python objects (refused, never run) is said to be one; anything else is corrupt or truncated."""
    if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower():
        found = _UNSUPPORTED_GLOBAL.search(str(error))
        what = f" ({found.group(1)})" if found else ""
        return BundleError(
            f"{path}: not a plain weights file: it holds a pickled Python object{what} that torch.load(weights_only="
            "True) refuses to run. Load it in a trusted session and re-save only its tensors (state dicts), e.g. "
            "torch.save({'model': model.state_dict()}, path)"
        )
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return BundleError(f"{path}: cannot be loaded (corrupt or truncated file?): {reason}")


def describe_mismatch(saved: Mapping[str, torch.Tensor], module: nn.Module) -> str:
    """How the state dict ``saved`` differs from ``module``'s: missing, unexpected and mismatched keys, with a hint."""
    own = unwrap(module).state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and saved[k].shape != v.shape
    ]
    parts = [f"{len(missing)} missing keys {missing[:5]}", f"{len(unexpected)} unexpected keys {unexpected[:5]}"]
    parts.append(f"{len(shapes)} shape mismatches {shapes[:5]}")
    hint = "Check preset, roi_size, patch_size, image_channels, num_classes, anchor, semantic, concat_anchor, "
    hint += "self_condition and concat_image"
    # the SS-Former's token embedding is a conv whose kernel is the token patch: name the weights' patch_size
    token = next((k for k in own if k.endswith("embed_c.weight") and k in saved), None)
    if token is not None and saved[token].shape[-2:] != own[token].shape[-2:]:
        patch = saved[token].shape[-1]
        hint = f"The weights have patch_size {patch} (--patch_size {patch}). {hint}"
    return "; ".join(parts) + f". {hint} against training."


class WeightsLoader(CheckpointLoader):
    """``CheckpointLoader`` (``weights_only=True``, ``map_location``) with clear errors: a missing file, or weights
    that do not fit the configured network (naming the missing, unexpected and mismatched keys)."""

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise BundleError(
                f"no weights at {self.load_path}: train first (configs/train.yaml) or set --ckpt_path to a checkpoint"
            )
        try:
            super().__call__(engine)
        except Exception as e:
            if "state_dict" in str(e):
                raise BundleError(f"{self.load_path} does not match the configured network: {self._mismatch()}") from e
            raise load_failure(self.load_path, e) from e

    def _mismatch(self) -> str:
        saved = torch.load(self.load_path, map_location="cpu", weights_only=True)
        key, module = next(iter(self.load_dict.items()))
        saved = saved.get(key, saved) if isinstance(saved, Mapping) else saved
        return describe_mismatch(saved, module)


def large_file_entry(path: str | Path, large_files: str | Path, bundle_root: str | Path | None = None) -> dict | None:
    """The entry of ``large_files`` (yml/yaml/json; its ``large_files`` or ``committed_files`` list) whose ``path``
    (relative to ``bundle_root``, by default the folder of ``large_files``) is ``path``; ``None`` when the list file
    does not exist or does not list ``path``."""
    large_files = Path(large_files)
    if not large_files.is_file():
        return None
    root = Path(bundle_root) if bundle_root is not None else large_files.parent
    target = Path(path).resolve()
    content = ConfigParser.load_config_file(large_files)
    for entry in (e for name in WEIGHT_LISTS for e in content.get(name) or []):
        if (root / entry["path"]).resolve() == target:
            return entry
    return None


def file_hash(path: str | Path, hash_type: str = "sha256") -> str:
    """The hex digest of the file at ``path``."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, hash_type.lower()).hexdigest()


def verify_weights(path: str | Path, large_files: str | Path, bundle_root: str | Path | None = None) -> bool:
    """Checks the hash of ``path`` against its ``large_files`` entry. Returns whether it was checked (``False``: not
    listed, or listed without ``hash_val``); raises ``ValueError`` naming the file and both hashes on a mismatch."""
    entry = large_file_entry(path, large_files, bundle_root)
    if entry is None:
        return False
    expected, hash_type = entry.get("hash_val"), entry.get("hash_type", "sha256")
    if not expected:
        logger.warning(f"{large_files} lists {entry['path']} without hash_val: its integrity is not checked.")
        return False
    if not check_hash(path, str(expected).lower(), hash_type):
        actual = file_hash(path, hash_type)  # the actual digest, for the message (check_hash only logs it)
        raise BundleError(
            f"{path} is not the file listed in {large_files}: corrupt, truncated or replaced (expected {hash_type} "
            f"{expected}, got {actual}). Restore it ({entry.get('url') or 'git checkout -- ' + str(entry['path'])}); "
            "to ship new weights on purpose, record their hash there; to use your own, pass --ckpt_path <file>."
        )
    logger.info(f"{path}: {hash_type} verified against {large_files}")
    return True


class VerifiedWeightsLoader(WeightsLoader):
    """``WeightsLoader`` that first checks the file's hash when ``large_files`` lists it (see ``verify_weights``)."""

    def __init__(self, *args: Any, large_files: str | None = None, bundle_root: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.large_files, self.bundle_root = large_files, bundle_root

    def __call__(self, engine: Engine) -> None:
        if self.large_files is not None and Path(self.load_path).is_file():
            verify_weights(self.load_path, self.large_files, self.bundle_root)
        super().__call__(engine)


class InitialWeightsLoader(VerifiedWeightsLoader):
    """Fine-tuning: when training starts, loads ``{"model": state dict}`` weights (the shipped format, e.g.
    ``models/model.pt``) into the network and its EMA copy, so that training starts from them, after checking their
    hash when ``large_files`` lists them (as inference does). ``load_path=None`` does nothing. Attached before the
    resume handler, whose checkpoint, when resuming, then takes precedence."""

    def __init__(
        self,
        load_path: str | None,
        network: nn.Module,
        ema_model: nn.Module | None = None,
        map_location: str | torch.device | None = "cpu",
        large_files: str | None = None,
        bundle_root: str | None = None,
    ) -> None:
        super().__init__(
            load_path=str(load_path),
            load_dict={"model": network},
            map_location=map_location,
            large_files=large_files,
            bundle_root=bundle_root,
        )
        self.enabled, self.ema_model = load_path is not None, ema_model

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise BundleError(f"init_weights: no weights at {self.load_path}")
        super().__call__(engine)
        if self.ema_model is not None:
            self.ema_model.load_state_dict(unwrap(self.load_dict["model"]).state_dict())  # DDP: the inner module
        logger.info(f"training starts from the weights of {self.load_path}")
