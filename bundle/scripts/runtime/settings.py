"""The start-up check of the user-facing settings: one table, :data:`RULES`, of every key with a closed set of values or
a range, checked against the one parsed config (files + command-line overrides) before any data is read.

``monai.bundle run`` calls :func:`check_config` through ``scripts.runtime.cli.check_command_line``, the first item of
each config's ``initialize`` list; the Python API calls :func:`check_config` on its own parser. A row applies where the
config defines its key. The choices come from the modules that use them (samplers, fusion methods, presets...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.networks.schedulers.ddpm import DDPMPredictionType

from ..data.readers import MODALITIES
from ..diffusion.fusion import METHODS
from ..diffusion.schedulers import SAMPLERS
from ..networks import ANCHOR_MODES, GATE_MODES, PRESETS, SEMANTIC_MODES
from .errors import BundleError

__all__ = ["RULES", "Rule", "check_config", "check_settings", "config_settings"]

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
    Rule("modality", one_of(*MODALITIES)),
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
    Rule("anchor_gates", one_of(*GATE_MODES)),
    Rule("anchor_residual", boolean()),
    Rule("concat_anchor", boolean()),
    Rule("self_condition", boolean()),
    Rule("concat_image", boolean()),
    Rule("patch_size", optional(integer(1))),
    Rule("baseline_norm", one_of("batch", "instance")),  # configs/baseline.yaml
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
    Rule("fusion", one_of(*METHODS)),
    Rule("largest_component", boolean()),
    Rule("flip_members", boolean()),
    Rule("soft_members", boolean()),
    Rule("uncertainty_anchor_weight", number(0.0, 1.0)),
    Rule("uncertainty_sigma", number(0.0)),
    Rule("save_samples", boolean()),
    Rule("keep_samples", boolean()),
    Rule("autocast", boolean()),
    Rule("keep_freed_memory", boolean()),
    Rule("slice_batch", integer(1)),
    Rule("output_ext", output_format()),  # 2D: a NIfTI result also needs a NIfTI input (scripts.data.inputs)
    Rule("output_scale", optional(number(0.0, low_open=True))),
    Rule("grid_cases", integer(0)),
    Rule("eval_split", one_of("validation", "test")),  # the datalist sections scored
    Rule("ece_bins", integer(1)),
    # diffusion options (checked where a config defines them)
    Rule("prediction_type", one_of(*(t.value for t in DDPMPredictionType))),
    Rule("snr_gamma", optional(number(0.0, low_open=True))),
    Rule("recycling", number(0.0, 1.0)),
    Rule("loss#alpha", integer(1)),  # eq. 3: the anchor term for the cases with t = 0 mod alpha (1: every case)
    Rule("loss#beta", number(0.0)),
    Rule("anchor_corruption", number(0.0)),
    Rule("x0_loss_weight", number(0.0)),
    Rule("anchor_warmup_iterations", integer(0)),
    Rule("anchor_warmup_learning_rate", optional(number(0.0, low_open=True))),
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


def config_settings(parser: ConfigParser, rules: tuple[Rule, ...] = RULES) -> dict[str, Any]:
    """The resolved value of every key of ``rules`` that ``parser`` defines (a key whose expression fails to resolve
    is left to the workflow, which reports it where it is used)."""
    settings = {}
    for rule in rules:
        if rule.key in parser:
            try:
                settings[rule.key] = parser.get_parsed_content(rule.key, instantiate=False)
            except Exception:  # noqa: BLE001 - reported by the workflow itself
                continue
    return settings


def check_config(parser: ConfigParser) -> None:
    """Checks the settings of a parsed config (files and overrides) against :data:`RULES`."""
    check_settings(config_settings(parser))
