"""A check of the command line's override keys.

``monai.bundle run`` accepts any ``--key value`` and silently adds unknown keys to the config, so a typo such as
``--learning_rte 1e-3`` trains with the default. ``check_cli_overrides`` (called from a config's ``initialize``
list) rejects override keys that are neither in the config files nor an argument added to a component.
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS, ID_SEP_KEY, MERGE_KEY

from .errors import BundleError, install_error_summary

# the parameters of monai.bundle.scripts.run itself; every other --key is a config override
RUN_ARGS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def _config_ids(config: Any, prefix: str = "") -> Iterable[str]:
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        cid = f"{prefix}#{k}" if prefix else str(k)  # "#": the separator the bundle configs use
        yield cid
        yield from _config_ids(v, cid)


def unknown_override_keys(config_file: str | Sequence[str], keys: Iterable[str], tracking: Any = None) -> list[str]:
    """The ``keys`` (override ids such as ``learning_rate`` or ``network_def#channels``) that ``config_file`` does not
    define. A new key under a component (a dict with ``_target_``) is an argument, checked when it is instantiated."""
    parser = ConfigParser(ConfigParser.load_config_files(config_file))
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        tracking = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    if isinstance(tracking, dict):
        for k, v in tracking.get("configs", {}).items():
            if k not in parser:
                parser[k] = v
    unknown = []
    for key in keys:
        cid = ReferenceResolver.normalize_id(key.removeprefix(MERGE_KEY))
        parent = cid.rpartition(ID_SEP_KEY)[0]
        if cid in parser or cid.startswith(parser.meta_key):
            continue
        if parent and parent in parser and isinstance(parser[parent], dict) and "_target_" in parser[parent]:
            continue
        unknown.append(key)
    return unknown


def _cli_value(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def running_monai_bundle() -> bool:
    """Whether this process is ``python -m monai.bundle`` (also each worker of ``torchrun -m monai.bundle``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monai.bundle.__main__"


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Raises ``ValueError`` when ``monai.bundle run`` got an override key (``--key value``) that its config files do
    not define, with close matches. ``argv``: the command's arguments (``["run", "--config_file", ...]``); ``None``
    reads them from this process when it is ``python -m monai.bundle`` and does nothing otherwise (Python API,
    tests, other CLIs)."""
    if argv is None:
        if not running_monai_bundle():
            return
        argv = sys.argv[1:]
        install_error_summary()  # a bundle error ends stderr with its one-line message
    argv = list(argv)
    if not argv or argv[0] != "run":
        return
    args: dict[str, Any] = {}
    for i, token in enumerate(argv[1:], start=1):
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            name = name.replace("-", "_") if name.replace("-", "_") in RUN_ARGS else name  # Fire accepts both
            has_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            args[name] = _cli_value(value if eq else argv[i + 1] if has_next else "True")
    if args.get("args_file"):  # defaults from an args file; the command line wins
        args = {**ConfigParser.load_config_file(args["args_file"]), **args}
    overrides = [k for k in args if k not in RUN_ARGS]
    config_file, tracking = args.get("config_file"), args.get("tracking")
    if config_file is None or not overrides:
        return
    unknown = unknown_override_keys(config_file, overrides, tracking)
    if unknown:
        ids = list(_config_ids(ConfigParser.load_config_files(config_file)))
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key.replace(ID_SEP_KEY, "#"), ids, n=3)
            hints.append(f"--{key}" + (f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
        raise BundleError(
            f"unknown config key(s) on the command line: {'; '.join(hints)}. They are not defined in {config_file}; "
            "monai.bundle would silently add them and ignore them. Fix the spelling, or define a new key in a config."
        )
