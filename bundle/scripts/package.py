"""Packs the bundle into a zip that unpacks to one folder named after the bundle (``medsegdiff_v2/``), ready to run.

Usage, from the bundle root: ``python -m scripts.package [--output dist/medsegdiff_v2_<version>.zip]``.
Only the bundle's own files travel: LICENSE, large_files.yml, configs/, docs/, scripts/, data/ and models/model.pt
(no checkpoints, runs/, eval/, caches or __pycache__). Weights listed in large_files.yml must match their hash.
The archive is reproducible: sorted entries with a fixed timestamp.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .weights import verify_weights

logger = logging.getLogger(__name__)

INCLUDE = ("LICENSE", "large_files.yml", "configs", "docs", "scripts", "data", "models/model.pt")
SKIP_SUFFIXES = (".pyc", ".pyo")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def bundle_files(bundle_root: Path) -> Iterator[Path]:
    """The files of ``INCLUDE`` under ``bundle_root``, without hidden files, caches and compiled Python."""
    for name in INCLUDE:
        top = bundle_root / name
        for path in sorted(top.rglob("*")) if top.is_dir() else [top] if top.is_file() else []:
            rel = path.relative_to(bundle_root)
            if not path.is_file() or path.suffix in SKIP_SUFFIXES:
                continue
            if any(part.startswith(".") or part == "__pycache__" or part.endswith("cache") for part in rel.parts):
                continue
            yield path


def package_bundle(bundle_root: str | Path = ".", output: str | Path | None = None) -> Path:
    """Writes the zip (default ``dist/<name>_<version>.zip``, name and version from configs/metadata.json) and returns
    its path. Raises ``ValueError`` when models/model.pt does not match its large_files.yml hash."""
    root = Path(bundle_root).resolve()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    folder = re.sub(r"[^0-9a-z]+", "_", meta.get("name", root.name).lower()).strip("_")
    output = Path(output or Path("dist") / f"{folder}_{meta['version']}.zip")
    weights = root / "models" / "model.pt"
    if weights.is_file():
        verify_weights(weights, root / "large_files.yml", root)
    else:
        logger.warning(f"no {weights}: the package ships without weights")
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in bundle_files(root):
            info = zipfile.ZipInfo(f"{folder}/{path.relative_to(root).as_posix()}", FIXED_TIME)
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    logger.info(f"packed {root} into {output} ({folder}/, version {meta['version']})")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle_root", default=".", help="the bundle to pack (default: the current folder)")
    parser.add_argument("--output", default=None, help="zip path (default: dist/<name>_<version>.zip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(package_bundle(args.bundle_root, args.output))


if __name__ == "__main__":
    main()
