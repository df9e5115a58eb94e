"""Start-up checks of the user-facing settings, before any data is read or cached.

One table, :data:`RULES`, holds every key with a closed set of values or a range; each config passes the keys it
defines (``checked_settings``) to :func:`check_settings` from its ``initialize`` list. A row only applies when its
key is passed, so rows for keys that only some configs define are harmless. To check a new key: add a row here and a
``key: '@key'`` line to ``checked_settings`` of the config that defines it (``tests/test_reliability.py`` fails when a
config defines a key of this table without passing it).

:func:`check_roi_size` checks ``roi_size`` against the built network's total stride.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError
from .networks import ANCHOR_MODES, PRESETS, SEMANTIC_MODES
from .schedulers import SAMPLERS

__all__ = ["RULES", "Rule", "check_roi_size", "check_settings"]

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


def optional(inner: Check) -> Check:
    def check(v: Any, settings: Mapping[str, Any]) -> str | None:
        words = inner(v, settings) if v is not None else None
        return None if words is None else f"null/None or {words}"

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
    Rule("seed", integer()),
    Rule("resume", boolean()),
    Rule("init_weights", optional(existing_file())),
    Rule("time_budget_s", optional(number(0.0))),
    Rule("run_name", lambda v, s: None if isinstance(v, str) and v and "/" not in v else "a name without '/'"),
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
    Rule("output_ext", one_of(".png", ".nii.gz", ".nii")),
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
