"""The configs run as zoo bundles do: each file complete on its own (no cross-file macro, which MONAI resolves from
the working directory), the blocks shared by training, evaluation and inference identical, and a bundle that runs
from any working directory with --bundle_root."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

if TYPE_CHECKING:
    from conftest import BundleCLI

# (config, block id) pairs that must hold the same definition as inference.yaml's / inference_volume.yaml's
SHARED = {
    "inference.yaml": {
        "train.yaml": ["scheduler", "inferer", "fuse", "keep_largest", "intensity", "deterministic"],
        "evaluate.yaml": ["weights_loader"],
    },
    "inference_volume.yaml": {"volume.yaml": ["deterministic"]},
}


def load(bundle_root: Path, name: str) -> dict:
    return yaml.safe_load((bundle_root / "configs" / name).read_text())


def test_no_config_uses_a_cross_file_macro_or_the_scripts_global(bundle_root: Path) -> None:
    """`%configs/...` resolves from the working directory; `$scripts.` needs the bundle on sys.path before
    `initialize` runs: both break a run started outside the bundle root."""
    for path in sorted((bundle_root / "configs").rglob("*.yaml")):
        text = "\n".join(
            line.split("#", 1)[0] if line.lstrip().startswith("#") else line for line in path.read_text().splitlines()
        )
        assert "%configs/" not in text, path
        assert "$scripts." not in text and "(scripts." not in text and "$import scripts" not in text, path


@pytest.mark.parametrize(("source", "copies"), SHARED.items())
def test_shared_blocks_are_identical(bundle_root: Path, source: str, copies: dict[str, list[str]]) -> None:
    original = load(bundle_root, source)
    for name, keys in copies.items():
        config = load(bundle_root, name)
        for key in keys:
            assert config[key] == original[key], f"{name}#{key} differs from {source}#{key}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "configs",
    [["inference.yaml"], ["train.yaml", "quick.yaml"], ["train.yaml", "quick.yaml", "volume.yaml", "evaluate.yaml"]],
)
def test_configs_initialise_from_another_working_directory(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path, configs: list[str]
) -> None:
    """`monai.bundle run` from an unrelated folder with --bundle_root: the configs parse, `scripts` imports, and the
    start-up checks pass (run_id is a no-op, so nothing trains or samples)."""
    files = "[" + ",".join(f"'{bundle_root / 'configs' / c}'" for c in configs) + "]"
    args = ["--run_id", "_noop_", "--bundle_root", str(bundle_root), "--config_file", files]
    args += ["--output_dir", str(tmp_path / "out")]
    if "train.yaml" in configs:
        args += ["--ckpt_dir", str(tmp_path / "ckpt"), "--eval_dir", str(tmp_path / "eval")]
    proc = bundle_cli(*args, cwd=tmp_path, env={"PYTHONPATH": None}, timeout=300)
    assert "ModuleNotFoundError" not in proc.stderr and "FileNotFoundError" not in proc.stderr, proc.stderr[-3000:]
    assert "run ID '_noop_' doesn't exist" in proc.stderr, proc.stderr[-3000:]


# each shipped weight file, the overlays that train or evaluate it, and the inference configs that run it by default
WEIGHTS = {
    "models/model.pt": (["weights/isic_128.yaml"], ["inference.yaml"], ["quick.yaml"]),
    "models/model_hippocampus.pt": (
        ["volume.yaml", "weights/hippocampus_64.yaml"],
        ["inference.yaml", "inference_volume.yaml"],
        ["quick.yaml", "volume.yaml"],
    ),
}


@pytest.mark.parametrize("weights", WEIGHTS)
def test_each_weights_overlay_trains_and_evaluates_its_shipped_weights(
    bundle_root: Path, committed_file: Callable[[str], Path], weights: str
) -> None:
    """train.yaml + the weights overlay builds the network the shipped file fits (no hand-typed --roi_size or
    --patch_size), with the resolution of its default inference config, and the quick demo trains that architecture;
    the overlay and the inference config also agree on the input (context_slices) and the weights' own uncertainty
    map (uncertainty_anchor_weight, chosen on their validation list)."""
    overlays, inference, quick = WEIGHTS[weights]
    state = torch.load(committed_file(weights), map_location="cpu", weights_only=True)["model"]
    parsed = {}
    for name, configs in {
        "train": ["train.yaml", *overlays],
        "inference": inference,
        "quick": ["train.yaml", *quick],
    }.items():
        parser = ConfigParser()
        parser.read_config([str(bundle_root / "configs" / c) for c in configs])
        parser["bundle_root"] = str(bundle_root)
        parser.get_parsed_content("network_def").load_state_dict(state, strict=True)
        parsed[name] = {k: parser.get_parsed_content(k) for k in ("preset", "roi_size", "patch_size")}
        if name != "quick":
            parsed[name] |= {k: parser.get(k) for k in ("context_slices", "uncertainty_anchor_weight")}
    assert parsed["train"] == parsed["inference"]
    assert {k: parsed["train"][k] for k in parsed["quick"]} == parsed["quick"]


@pytest.mark.slow
def test_importing_scripts_imports_every_module_and_every_config_name_resolves(bundle_root: Path) -> None:
    """``import scripts`` (in a fresh interpreter) loads every module of the stage folders, so that each
    ``scripts.<stage>.<module>.<name>`` of a config resolves: a ``$`` expression does not import on its own."""
    root = bundle_root / "scripts"
    modules = sorted(
        "scripts." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if p.name != "__init__.py"
    )
    names = set()
    for config in (bundle_root / "configs").rglob("*.yaml"):
        names |= set(re.findall(r"\bscripts(?:\.[A-Za-z_]\w*)+", config.read_text()))
    assert len(modules) > 30 and len(names) > 20
    code = (
        "import functools, sys, scripts\n"
        f"missing = [m for m in {modules!r} if m not in sys.modules]\n"
        f"unresolved = [n for n in {sorted(names)!r} if functools.reduce("
        "lambda o, a: getattr(o, a, None), n.split('.')[1:], scripts) is None]\n"
        "print(missing, unresolved)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=bundle_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr
