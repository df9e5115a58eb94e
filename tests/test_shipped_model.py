"""The shipped weights (ISIC 2D, hippocampus volumes): loadable on CPU with weights_only, the defaults of their
inference configs and fit their networks, segment an image and a held-out volume, their sha256 is recorded, and their
measured metrics are in metadata.json. The weights tested are the committed ones (``committed_file``), never what a
local run left in the working tree."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from PIL import Image

from scripts.runtime.weights import large_file_entry, verify_weights

# the shipped weights (bundle-relative path) and the configs that run them by default
SHIPPED = {
    "models/model.pt": ["inference.yaml"],  # ISIC 2018, 2D
    "models/model_hippocampus.pt": ["inference.yaml", "inference_volume.yaml"],  # MSD hippocampus, volumes
}


@pytest.mark.parametrize("weights", SHIPPED)
def test_weights_are_a_small_cpu_state_dict_under_key_model(
    committed_file: Callable[[str], Path], weights: str
) -> None:
    path = committed_file(weights)
    assert path.stat().st_size < 25 * 2**20  # larger weights belong in large_files.yml
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ckpt) == ["model"]
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in ckpt["model"].values())


@pytest.mark.parametrize("weights", SHIPPED)
def test_weights_are_the_default_of_their_configs_and_fit_its_network(
    bundle_root: Path, committed_file: Callable[[str], Path], weights: str
) -> None:
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in SHIPPED[weights]])
    parser["bundle_root"] = str(bundle_root)
    assert Path(parser.get_parsed_content("ckpt_path")) == bundle_root / weights
    net = parser.get_parsed_content("network_def")
    state = torch.load(committed_file(weights), map_location="cpu", weights_only=True)["model"]
    net.load_state_dict(state, strict=True)


@pytest.mark.parametrize("weights", SHIPPED)
def test_recorded_sha256_matches_the_committed_and_the_checked_out_weights(
    bundle_root: Path, committed_file: Callable[[str], Path], weights: str
) -> None:
    """large_files.yml records the hash of each shipped weight file (one place; update it when the weights change)."""
    entry = large_file_entry(bundle_root / weights, bundle_root / "large_files.yml")
    assert entry is not None and entry["hash_type"] == "sha256"
    recorded = entry["hash_val"]
    git = ["git", "show", "HEAD:bundle/large_files.yml"]
    head = subprocess.run(git, cwd=bundle_root, capture_output=True, text=True)
    committed = yaml.safe_load(head.stdout).get("committed_files") or [] if head.returncode == 0 else []
    for e in (e for e in committed if e["path"] == weights):  # the committed pair agrees
        assert e["hash_val"] == hashlib.sha256(committed_file(weights).read_bytes()).hexdigest()
    assert verify_weights(bundle_root / weights, bundle_root / "large_files.yml") is True
    assert hashlib.sha256((bundle_root / weights).read_bytes()).hexdigest() == recorded


@pytest.mark.slow
def test_default_inference_with_the_shipped_weights_writes_a_mask(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, demo_data: Path, tmp_path: Path
) -> None:
    image = sorted((demo_data / "isic" / "images").glob("*.jpg"))[0]
    wf = bundle_workflow(
        "inference.yaml",
        workflow_type="infer",
        meta_file=str(bundle_root / "configs" / "metadata.json"),
        input=str(image),
        output_dir=str(tmp_path),
        num_inference_steps=2,
        ensemble_size=2,
    )
    wf.run()
    wf.finalize()
    mask = np.asarray(Image.open(tmp_path / f"{image.stem}_seg.png"))
    assert mask.shape == np.asarray(Image.open(image)).shape[:2]  # the input's own size
    assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.slow
def test_default_volume_inference_with_the_shipped_weights_segments_a_held_out_volume(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, demo_data: Path, tmp_path: Path
) -> None:
    """hippocampus_099 is in the split's test list (never trained on nor used for checkpoint selection): the default
    volume profile, with fewer steps and samples, finds both structures (random weights score about 0)."""
    case = "hippocampus_099.nii.gz"
    wf = bundle_workflow(
        "inference.yaml",
        "inference_volume.yaml",
        workflow_type="infer",
        input=str(demo_data / "hippocampus" / "imagesTr" / case),
        output_dir=str(tmp_path),
        num_inference_steps=5,
        ensemble_size=2,
        slice_batch=8,
    )
    wf.run()
    wf.finalize()
    seg = np.asarray(nib.load(tmp_path / case.replace(".nii.gz", "_seg.nii.gz")).dataobj)
    truth = np.asarray(nib.load(demo_data / "hippocampus" / "labelsTr" / case).dataobj)
    assert seg.shape == truth.shape
    onehot = [one_hot(torch.as_tensor(np.asarray(x, np.int64))[None, None], 3) for x in (seg, truth)]
    dice = compute_dice(*onehot, include_background=False)[0].tolist()  # anterior, posterior
    assert min(dice) > 0.5, dice


def test_metadata_reports_measured_metrics_of_the_shipped_weights(bundle_root: Path) -> None:
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    metrics = meta["eval_metrics"]
    assert {"mean_dice", "mean_iou", "hd95"} <= set(metrics)
    assert all(isinstance(v, float) for k, v in metrics.items() if k in ("mean_dice", "mean_iou", "hd95"))
    assert 0 <= metrics["mean_iou"] <= metrics["mean_dice"] <= 1
    assert "results.md" in metrics["source"]  # where the numbers were measured, with the command


SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "schema" / "meta_schema_20240725.json"


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"no metadata schema at {SCHEMA}")
def test_metadata_verifies_against_the_model_zoo_schema(bundle_root: Path) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(bundle_root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    outputs = meta["network_data_format"]["outputs"]
    assert outputs["pred"]["channel_def"] == {"0": "lesion"}  # one channel per foreground class: the x0 estimate
    assert outputs["pred"]["value_range"] == [-1, 1]


def test_metadata_agrees_with_the_inference_config(bundle_root: Path) -> None:
    """Size, channels, classes and the sampler that metadata.json describes are those inference.yaml runs."""
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.yaml"))
    cfg = {k: parser[k] for k in ("roi_size", "image_channels", "num_classes", "sampler", "num_inference_steps")}
    cfg.update({k: parser[k] for k in ("ensemble_size", "fusion", "prediction_type", "concat_anchor", "patch_size")})
    fmt = meta["network_data_format"]
    roi = [cfg["roi_size"], cfg["roi_size"]]
    assert fmt["inputs"]["image"]["spatial_shape"] == roi and fmt["inputs"]["x"]["spatial_shape"] == roi
    assert fmt["inputs"]["image"]["num_channels"] == cfg["image_channels"]
    assert fmt["inputs"]["x"]["num_channels"] == cfg["num_classes"]
    pred, labels = fmt["outputs"]["pred"], fmt["post_processed_outputs"]["pred"]
    assert pred["spatial_shape"] == roi and pred["num_channels"] == len(pred["channel_def"]) == cfg["num_classes"]
    assert labels["num_channels"] == 1 and labels["format"] == "labels"  # a label map in the input's size
    source, description = meta["eval_metrics"]["source"], meta["description"]
    sampler = {"ddpm": "DDPM respaced to", "ddim": "DDIM"}[cfg["sampler"]]
    assert f"{sampler} {cfg['num_inference_steps']} steps" in source and f"{cfg['ensemble_size']} samples" in source
    assert cfg["fusion"].upper() in source
    assert f"prediction_type: {cfg['prediction_type']}" in description
    assert f"concat_anchor: {str(cfg['concat_anchor']).lower()}" in description
    assert f"patch_size: {cfg['patch_size']}" in description
