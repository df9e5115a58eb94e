"""Start-up checks of the user-facing settings, before any data is read or cached.

One table, :data:`RULES`, holds every key with a closed set of values or a range; each config passes the keys it
defines (``checked_settings``) to :func:`check_settings` from its ``initialize`` list. A row only applies when its
key is passed, so rows for keys that only some configs define are harmless. To check a new key: add a row here and a
``key: '@key'`` line to ``checked_settings`` of the config that defines it (``tests/test_reliability.py`` fails when a
config defines a key of this table without passing it).

:func:`check_roi_size` checks ``roi_size`` against the built network's total stride; :func:`check_device`,
:func:`check_output_dir` and :func:`check_reliance_cases` check the device, the output folder and the validation cases
image reliance needs, also before any data is read.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.datalist import VAL_FRACTION, PathLike, read_sections
from ..diffusion.schedulers import SAMPLERS
from ..networks import ANCHOR_MODES, PRESETS, SEMANTIC_MODES
from .errors import BundleError

__all__ = [
    "RULES",
    "Rule",
    "check_device",
    "check_output_dir",
    "check_reliance_cases",
    "check_roi_size",
    "check_settings",
]

# a check returns None when the value is valid, else the valid values in words
Check = Callable[[Any, Mapping[str, Any]], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bound(bound: float | str | None, settings: Mapping[str, Any]) -> tuple[Any, str]:
    """A bound given as a number, or as the name of another setting (shown as ``name=value``)."""
    if isinstance(bound, str):
        value = settings.get(bound)
        return (value if _is_number(value) else None), f"{bound}={value}"
    return bound, f"{bound}"


def one_of(*choices: Any) -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        ok = any(v == c and type(v) is type(c) for c in choices)  # True is not the choice 1
        return None if ok else "one of " + ", ".join(repr(c) for c in choices)

    return check


def integer(low: int | str | None = None, high: int | str | None = None) -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        lo, lo_text = _bound(low, settings)
        hi, hi_text = _bound(high, settings)
        words = "an integer" + (
            f" in [{lo_text}, {hi_text}]" if high is not None else f" >= {lo_text}" if low is not None else ""
        )
        ok = _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
        return None if ok else words

    return check


def number(low: float | None = None, high: float | None = None, low_open: bool = False) -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        left = "(" if low_open else "["
        if low is not None and high is not None:
            words = f"a number in {left}{low:g}, {high:g}]"
        else:
            words = f"a number {'>' if low_open else '>='} {low:g}" if low is not None else "a number"
        ok = _is_number(v) and (low is None or v > low or (not low_open and v == low)) and (high is None or v <= high)
        return None if ok else words

    return check


def boolean() -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        return None if isinstance(v, bool) else "True or False (on the command line True/False; true is a string)"

    return check


def existing_file() -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        return None if isinstance(v, (str, Path)) and Path(v).is_file() else "the path of an existing file"

    return check


def plain_name() -> Check:
    """A folder name: not empty, not '.' or '..', no path separator."""

    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        ok = isinstance(v, str) and v not in ("", ".", "..") and not any(c in v for c in "/\\\0")
        return None if ok else "a plain folder name (not empty, '.' or '..'; no '/' or '\\')"

    return check


def optional(inner: Check) -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        words = inner(v, settings) if v is not None else None
        return None if words is None else f"null/None or {words}"

    return check


def output_format() -> Check:
    """``output_ext``: a format the writers handle, and NIfTI for volumes (a PNG holds one 2D image)."""
    formats = one_of(".png", ".nii.gz", ".nii")

    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        words = formats(v, settings)
        if words is None and v == ".png" and settings.get("spatial_dims") == 3:
            return "'.nii.gz' or '.nii' for volumes (spatial_dims=3: a PNG holds one 2D image)"
        return words

    return check


@dataclass(frozen=True)
class Rule:
    key: str
    check: Check


RULES: tuple[Rule, ...] = (
    # data
    Rule("spatial_dims", one_of(2, 3)),
    Rule("modality", one_of("rgb", "mr", "ct")),
    Rule("image_channels", integer(1)),
    Rule("num_classes", integer(1)),
    Rule("roi_size", integer(1)),  # and a multiple of the network's stride: check_roi_size
    Rule("batch_size", integer(1)),
    Rule("eval_batch_size", integer(1)),
    Rule("num_workers", integer(0)),
    Rule("cache_rate", number(0.0, 1.0)),
    Rule("slice_axis", one_of(0, 1, 2)),
    Rule("fg_ratio", number(0.0, 1.0)),
    Rule("slices_per_volume", integer(1)),
    Rule(
        "context_slices",
        lambda v, s: (
            None
            if _is_int(v) and v >= 0 and (v == 0 or s.get("spatial_dims") != 2)
            else "an integer >= 0 (0 for 2D images: neighbouring slices exist only in volumes)"
        ),
    ),
    Rule("allow_empty_labels", boolean()),
    Rule("augment", boolean()),
    # model and training
    Rule("preset", one_of(*PRESETS, None)),
    Rule("anchor", one_of(*ANCHOR_MODES)),
    Rule("semantic", one_of(*SEMANTIC_MODES)),
    Rule("num_train_timesteps", integer(1)),
    Rule("learning_rate", number(0.0, low_open=True)),
    Rule("epochs", integer(1)),
    Rule("val_interval", integer(1)),
    Rule("ema_momentum", number(0.0, 1.0, low_open=True)),
    Rule("ema_power", optional(number(0.0, low_open=True))),
    Rule("anchor_gates", one_of("single", "per_class")),
    Rule("anchor_residual", boolean()),
    Rule("concat_anchor", boolean()),
    Rule("patch_size", optional(integer(1))),
    Rule("val_reliance", boolean()),
    Rule("seed", integer(0, 2**32 - 1)),  # numpy's range (set_determinism)
    Rule("resume", boolean()),
    Rule("init_weights", optional(existing_file())),
    Rule("time_budget_s", optional(number(0.0))),
    Rule("run_name", plain_name()),  # runs/<run_name>/ stays inside runs/
    # sampling and inference
    Rule("sampler", one_of(*SAMPLERS)),
    Rule("eta", number(0.0, 1.0)),
    Rule("num_inference_steps", integer(1, "num_train_timesteps")),
    Rule("ensemble_size", integer(1)),
    Rule("fusion", one_of("staple", "vote", "mean")),
    Rule("largest_component", boolean()),
    Rule("flip_members", boolean()),
    Rule("soft_members", boolean()),
    Rule("save_samples", boolean()),
    Rule("keep_samples", boolean()),
    Rule("autocast", boolean()),
    Rule("keep_freed_memory", boolean()),
    Rule("slice_batch", integer(1)),
    Rule("output_ext", output_format()),  # 2D: a NIfTI result also needs a NIfTI input (scripts.data.inputs)
    Rule("output_scale", optional(number(0.0, low_open=True))),
    Rule("grid_cases", integer(0)),
    Rule("eval_split", one_of("validation", "test")),
    Rule("ece_bins", integer(1)),
    # diffusion options (checked where a config defines them)
    Rule("prediction_type", one_of("epsilon", "sample", "v_prediction")),
    Rule("snr_gamma", optional(number(0.0, low_open=True))),
    Rule("recycling", number(0.0, 1.0)),
    Rule("anchor_warmup_iterations", integer(0)),
    Rule("timestep_groups", optional(integer(1))),
    Rule("amp", boolean()),
    Rule("filter_checkpointing", boolean()),
    Rule("sample_start_t", optional(integer(1, "num_train_timesteps"))),
)


def check_settings(settings: Mapping[str, Any], rules: tuple[Rule, ...] = RULES) -> None:
    """Checks every setting of ``settings`` that has a row in ``rules``; raises one :class:`BundleError` listing each
    invalid key, its value and the valid values."""
    problems = []
    for rule in rules:
        if rule.key in settings:
            expected = rule.check(settings[rule.key], settings)
            if expected is not None:
                problems.append(f"{rule.key}={settings[rule.key]!r} is invalid, expected {expected}")
    if problems:
        raise BundleError(f"invalid setting{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))


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
