"""Packs the bundle into a zip that unpacks to one folder named after the bundle (``medsegdiff_v2/``), ready to run.

Usage, from the bundle root: ``python -m scripts.tools.package [--output dist/medsegdiff_v2_<version>.zip]``.
Only the bundle's own files travel: LICENSE, large_files.yml, configs/, docs/, scripts/, data/ and every weight file
that large_files.yml lists (the configs' defaults, e.g. models/model.pt and models/model_hippocampus.pt; no
checkpoints, runs/, eval/, caches or __pycache__). Each must be present and match its hash.
Next to ``configs/inference.yaml`` and ``configs/train.yaml`` the archive holds their JSON form
(``configs/inference.json``, ``configs/train.json``, the same content), because ``monai.bundle.load`` reads only
``configs/<workflow_type>.json``. The archive is reproducible (sorted entries, a fixed timestamp) and written
atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from ..runtime.errors import BundleError
from ..runtime.weights import WEIGHT_LISTS, verify_weights

logger = logging.getLogger(__name__)

INCLUDE = ("LICENSE", "large_files.yml", "configs", "docs", "scripts", "data")
SKIP_SUFFIXES = (".pyc", ".pyo")
# configs also packed as JSON: monai.bundle.load(..., workflow_type=<name>) reads only configs/<name>.json
AS_JSON = ("inference.yaml", "train.yaml")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def listed_weights(bundle_root: Path) -> list[str]:
    """The weight files (bundle-relative paths) that ``large_files.yml`` lists with their hash."""
    listing = bundle_root / "large_files.yml"
    entries = yaml.safe_load(listing.read_text()) if listing.is_file() else None
    entries = entries if isinstance(entries, dict) else {}
    return [e["path"] for key in WEIGHT_LISTS for e in entries.get(key) or [] if isinstance(e, dict) and "path" in e]


def bundle_files(bundle_root: Path) -> Iterator[Path]:
    """The files of ``INCLUDE`` and the listed weights under ``bundle_root``, without hidden files, caches and
    compiled Python."""
    for name in (*INCLUDE, *listed_weights(bundle_root)):
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
    its path. Raises ``BundleError`` when a weight file that large_files.yml lists is missing or does not match its
    hash."""
    root = Path(bundle_root).resolve()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    folder = re.sub(r"[^0-9a-z]+", "_", meta.get("name", root.name).lower()).strip("_")
    output = Path(output or Path("dist") / f"{folder}_{meta['version']}.zip")
    for rel in listed_weights(root):
        weights = root / rel
        if not weights.is_file():
            raise BundleError(f"{weights}: listed in large_files.yml but missing; the package would lack it")
        verify_weights(weights, root / "large_files.yml", root)
    entries = {
        path.relative_to(root).as_posix(): (path.read_bytes(), path.stat().st_mode) for path in bundle_files(root)
    }
    for name in AS_JSON:
        config = yaml.safe_load(entries[f"configs/{name}"][0])
        text = json.dumps(config, indent=4) + "\n"
        entries[f"configs/{Path(name).stem}.json"] = (text.encode(), entries[f"configs/{name}"][1])
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel, (data, mode) in sorted(entries.items()):
                info = zipfile.ZipInfo(f"{folder}/{rel}", FIXED_TIME)
                info.external_attr = (mode & 0o777 | 0o100000) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
