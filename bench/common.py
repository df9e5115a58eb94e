"""Set-up shared by the scripts of bench/ and bench/studies/: where the bundle is, importing its ``scripts`` package,
the command-line parser, and the bundle's configs read as ``monai.bundle run`` reads them.

The scripts in bench/ import it directly (their folder is on ``sys.path``); those in bench/studies/ put bench/ on
``sys.path`` first. It imports the standard library only (bench_network.py also runs where torch alone is
installed); MONAI is imported when a config is read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def use_bundle(bundle: str | Path = BUNDLE) -> Path:
    """Put the bundle root first on ``sys.path``, so that ``scripts`` is imported from it (as ``monai.bundle run``
    does from the bundle root); returns the resolved root."""
    root = Path(bundle).resolve()
    with contextlib.suppress(ValueError):
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    return root


def arg_parser(
    description: str | None, formatter_class: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter
) -> argparse.ArgumentParser:
    """The scripts' parser: the module docstring as description, kept as written (examples included)."""
    return argparse.ArgumentParser(description=description, formatter_class=formatter_class)


def absolute_paths(args: argparse.Namespace, *names: str) -> argparse.Namespace:
    """Resolve the named path arguments against the current directory, keeping their type (``str`` or ``Path``;
    ``None`` stays ``None``): call before ``bundle_config`` changes the working directory."""
    for name in names:
        value = getattr(args, name)
        if value is not None:
            resolved = Path(value).resolve()
            setattr(args, name, resolved if isinstance(value, Path) else str(resolved))
    return args


def config_files(*names: str, bundle: Path = BUNDLE) -> list[str]:
    """Paths of the bundle's configs/<name> files, in the given order (later ones override earlier ones)."""
    return [str(bundle / "configs" / name) for name in names]


def bundle_config(
    configs: Iterable[str], overrides: Mapping[str, Any] | None = None, bundle: Path = BUNDLE
) -> ConfigParser:
    """The bundle's configs/<name> files read into one ``ConfigParser``, with ``bundle_root`` set and ``overrides``
    applied in order. Changes the working directory to the bundle root, from which the configs' %configs/... macros
    resolve (make relative path arguments absolute first: ``absolute_paths``), and puts it on ``sys.path`` for the
    ``scripts`` components the configs name."""
    from monai.bundle import ConfigParser

    use_bundle(bundle)
    os.chdir(bundle)
    parser = ConfigParser()
    parser.read_config(config_files(*configs, bundle=bundle))
    parser.update({"bundle_root": str(bundle), **(overrides or {})})
    return parser


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (``platform.processor()`` is often empty on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def add_weights_arguments(ap: argparse.ArgumentParser, overlays: list[str], cases: int) -> None:
    """The arguments of a script that scores trained weights on a datalist section: ``--weights``, ``--overlays``
    (configs after train.yaml), ``--dataset_dir``, ``--datalist``, ``--split``, ``--cases`` (0: all), ``--json``."""
    ap.add_argument("--weights", required=True)
    ap.add_argument("--overlays", nargs="*", default=overlays)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--cases", type=int, default=cases, help="the first N cases of the split (0: all)")
    ap.add_argument("--json", type=Path)


def trained_network(args: argparse.Namespace, overrides: Mapping[str, Any] | None = None) -> tuple[ConfigParser, Any]:
    """train.yaml + ``args.overlays`` prepared as validation prepares ``args.split`` (one case per batch, no cache),
    and its network in eval mode with the weights of ``args.weights`` (``{"model": state}``, ``{"ema": ...}`` or a
    bare state dict). Call after ``absolute_paths(args, "weights", "dataset_dir", "datalist", "json")``."""
    import torch

    settings = {"dataset_dir": args.dataset_dir, "datalist": args.datalist, "validate#split": args.split}
    settings.update({"validate#dataloader#batch_size": 1, "cache_rate": 0.0, **(overrides or {})})
    parser = bundle_config(["train.yaml", *args.overlays], settings)
    net = parser.get_parsed_content("network_def").eval()
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("ema", state.get("model", state)))
    return parser, net
