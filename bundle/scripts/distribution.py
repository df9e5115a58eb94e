"""Shipping the bundle: weights integrity against ``large_files.yml`` and a check of command-line override keys.

``large_files.yml`` follows the model-zoo convention: ``large_files: [{path, url, hash_val, hash_type}]`` with paths
relative to the bundle root; its ``committed_files`` list records, the same way, the hash of each weight file committed
with the bundle (``models/model.pt``). ``VerifiedWeightsLoader`` checks a listed weight file's hash before loading it,
so a truncated or replaced file is reported as corrupt, with its path.

``monai.bundle run`` accepts any ``--key value`` and silently adds unknown keys to the config, so a typo such as
``--learning_rte 1e-3`` trains with the default. ``check_cli_overrides`` (called from a config's ``initialize``
list) rejects override keys that are neither in the config files nor an argument added to a component.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS, ID_SEP_KEY, MERGE_KEY

from .errors import BundleError, install_error_summary
from .handlers import WeightsLoader

logger = logging.getLogger(__name__)

# the parameters of monai.bundle.scripts.run itself; every other --key is a config override
RUN_ARGS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
# the lists of large_files.yml that hold weight files with their hash
WEIGHT_LISTS = ("large_files", "committed_files")


# -- weights integrity -------------------------------------------------------------------------------------------------
def file_hash(path: str | Path, hash_type: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    actual = file_hash(path, hash_type)
    if actual.lower() != str(expected).lower():
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


# -- command-line override keys ----------------------------------------------------------------------------------------
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


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Raises ``ValueError`` when ``python -m monai.bundle run`` got an override key (``--key value``) that its config
    files do not define, with close matches. Does nothing outside that command (Python API, tests, other CLIs)."""
    from_process = argv is None
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py") or argv[1] != "run":
        return
    if from_process:
        install_error_summary()  # a bundle error ends stderr with its one-line message
    args: dict[str, Any] = {}
    for i, token in enumerate(argv[2:], start=2):
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
