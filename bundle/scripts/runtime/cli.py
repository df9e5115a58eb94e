"""The start-up check of a ``monai.bundle run`` command, on one parse of its config files and overrides.

``monai.bundle run`` accepts any ``--key value`` and silently adds unknown keys to the config, so a typo such as
``--learning_rte 1e-3`` trains with the default. :func:`check_command_line` (the first item of each config's
``initialize`` list) parses the command's config files with its overrides once, rejects override keys that are
neither in the config files nor an argument that the component they are added to accepts (``--network_def#bogus 1``:
``MedSegDiffV2`` has no argument ``bogus``), and checks every setting of that parsed config against
:data:`scripts.runtime.settings.RULES`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
from collections.abc import Iterable, Sequence
from pydoc import locate
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator, ConfigComponent
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS, ID_SEP_KEY, MERGE_KEY

from ..networks import MedSegDiffV2
from ..networks.medsegdiff_v2 import Architecture
from .errors import BundleError, install_error_summary
from .settings import check_config

# components whose **kwargs take a known set of names
KEYWORD_ARGUMENTS = {MedSegDiffV2: [f.name for f in dataclasses.fields(Architecture)]}

# the parameters of monai.bundle.scripts.run itself; every other --key is a config override
RUN_ARGS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def _config_ids(config: Any, prefix: str = "") -> Iterable[str]:
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        cid = f"{prefix}#{k}" if prefix else str(k)  # "#": the separator the bundle configs use
        yield cid
        yield from _config_ids(v, cid)


def component_arguments(target: Any) -> list[str] | None:
    """The keyword arguments the ``_target_`` of a config component accepts (``None``: any, or unknown)."""
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    try:
        name = ConfigComponent({"_target_": target}, locator=ComponentLocator()).resolve_module_name()
        component = locate(name) if isinstance(name, str) else name
        parameters = inspect.signature(component).parameters.values() if callable(component) else None
    except (TypeError, ValueError, ImportError):
        return None
    if parameters is None:
        return None
    extra: list[str] = []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        if component not in KEYWORD_ARGUMENTS:
            return None
        extra = KEYWORD_ARGUMENTS[component]
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names + extra + sorted(ConfigComponent.non_arg_keys)


def command_parser(config_file: str | Sequence[str], tracking: Any = None) -> ConfigParser:
    """The parser of a command's config files, with the experiment-tracking settings ``--tracking`` adds."""
    parser = ConfigParser(ConfigParser.load_config_files(config_file))
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        tracking = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    if isinstance(tracking, dict):
        for k, v in tracking.get("configs", {}).items():
            if k not in parser:
                parser[k] = v
    return parser


def unknown_override_keys(
    config: str | Sequence[str] | ConfigParser, keys: Iterable[str], tracking: Any = None
) -> list[str]:
    """The ``keys`` (override ids such as ``learning_rate`` or ``network_def#channels``) that ``config`` (config files
    or their parser) does not define. A new key under a component (a dict with ``_target_``) is an argument: unknown
    when the component's signature has no such argument (and no ``**kwargs``)."""
    parser = config if isinstance(config, ConfigParser) else command_parser(config, tracking)
    unknown = []
    for key in keys:
        cid = ReferenceResolver.normalize_id(key.removeprefix(MERGE_KEY))
        parent = cid.rpartition(ID_SEP_KEY)[0]
        if cid in parser or cid.startswith(parser.meta_key):
            continue
        if parent and parent in parser and isinstance(parser[parent], dict) and "_target_" in parser[parent]:
            accepted = component_arguments(parser[parent]["_target_"])
            if accepted is None or cid.rpartition(ID_SEP_KEY)[2] in accepted:
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


def parse_run_arguments(argv: Sequence[str]) -> dict[str, Any]:
    """The ``--key value`` arguments of a ``monai.bundle run`` command line (``argv[0] == "run"``), values parsed as
    Fire does for literals; an ``--args_file`` supplies defaults that the command line overrides."""
    args: dict[str, Any] = {}
    for i, token in enumerate(argv[1:], start=1):
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            name = name.replace("-", "_") if name.replace("-", "_") in RUN_ARGS else name  # Fire accepts both
            has_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            args[name] = _cli_value(value if eq else argv[i + 1] if has_next else "True")
    if args.get("args_file"):  # defaults from an args file; the command line wins
        args = {**ConfigParser.load_config_file(args["args_file"]), **args}
    return args


def _unknown_keys_message(config_file: Any, unknown: list[str]) -> str:
    config = ConfigParser.load_config_files(config_file)
    ids = list(_config_ids(config))
    hints = []
    for key in unknown:
        parent, _, name = ReferenceResolver.normalize_id(key.removeprefix(MERGE_KEY)).rpartition(ID_SEP_KEY)
        node = ConfigParser(config).get(parent) if parent else None
        target = node.get("_target_") if isinstance(node, dict) else None
        accepted = component_arguments(target) if target else None
        candidates = list(dict.fromkeys([f"{parent}#{a}" for a in accepted or ()] + ids))
        close = difflib.get_close_matches(key.replace(ID_SEP_KEY, "#"), candidates, n=3)
        notes = [f"{str(target).rpartition('.')[2]} has no argument '{name}'"] if accepted is not None else []
        notes += [f"did you mean {', '.join('--' + c for c in close)}?"] if close else []
        hints.append(f"--{key}" + (f" ({'; '.join(notes)})" if notes else ""))
    return (
        f"unknown config key(s) on the command line: {'; '.join(hints)}. They are not defined in {config_file}; "
        "monai.bundle would silently add them and ignore them. Fix the spelling, or define a new key in a config."
    )


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Raises :class:`BundleError` when ``monai.bundle run`` got an override key (``--key value``) that its config
    files do not define (with close matches), or when a setting of the parsed config (files + overrides) breaks a
    rule of :data:`~scripts.runtime.settings.RULES`. ``argv``: the command's arguments (``["run", "--config_file",
    ...]``); ``None`` reads them from this process when it is ``python -m monai.bundle`` and does nothing otherwise
    (the Python API calls :func:`~scripts.runtime.settings.check_config` on its own parser)."""
    if argv is None:
        if not running_monai_bundle():
            return
        argv = sys.argv[1:]
        install_error_summary()  # a bundle error ends stderr with its one-line message
    argv = list(argv)
    if not argv or argv[0] != "run":
        return
    args = parse_run_arguments(argv)
    overrides = {k: v for k, v in args.items() if k not in RUN_ARGS}
    config_file, tracking = args.get("config_file"), args.get("tracking")
    if config_file is None:
        return
    parser = command_parser(config_file, tracking)
    unknown = unknown_override_keys(parser, overrides)
    if unknown:
        raise BundleError(_unknown_keys_message(config_file, unknown))
    parser.update(overrides)  # as monai.bundle run applies them
    check_config(parser)
