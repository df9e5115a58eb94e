"""MONAI Label: two copies of the bundle's volume profile served by a real ``monailabel start_server``, one with tiny
random weights (a NIfTI volume must come back over HTTP in the input's shape and geometry) and one with the shipped
hippocampus weights (a held-out volume must come back segmented)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from tiny_config import TINY_NET

from scripts.networks import MedSegDiffV2

pytest.importorskip("monailabel")

MODEL, REAL = "medsegdiff_v2", "medsegdiff_v2_hippocampus"
# CPU-fast inference for the served copies (merged into their configs/inference.yaml)
FAST = {"num_inference_steps": 5, "ensemble_size": 2, "slice_batch": 16, "inferer#progress": False}
TINY = {"roi_size": 32, **{f"network_def#{k}": v for k, v in TINY_NET.items()}}
HELD_OUT = "hippocampus_099"  # a test-list volume of docs/splits/msd_hippocampus_split.json
# What a MONAI Label deployment of the volume profile needs in metadata.json: label VALUES as channel_def keys
# (0 = background) and a 3-long spatial_shape, so that the server reports labels 1, 2 and dimension 3.
LABELS = {"0": "background", "1": "anterior", "2": "posterior"}

# `monailabel` with import shims for our pins (pydicom 3, CPU torch without torchvision): see the script's docstring
LAUNCHER = Path(__file__).resolve().parents[1] / "tools" / "monailabel_server.py"

APP_MAIN = '''
"""Minimal MONAI Label app: every bundle named in ``--conf models a,b`` under <app>/model/ as a BundleInferTask."""

import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask


class BundleApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        names = [n.strip() for n in conf.get("models", "").split(",") if n.strip()]
        self.bundles = {n: os.path.join(app_dir, "model", n) for n in names}
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MedSegDiff-V2", description="bundle app")

    def init_infers(self):
        return {n: BundleInferTask(p, self.conf, load_strict=True) for n, p in self.bundles.items()}
'''


def _served_bundle(src: Path, dst: Path, real: bool) -> None:
    """Copies the bundle to ``dst`` as the README says: ``configs/inference.yaml`` rewritten to the merged volume config
    (MONAI Label reads only ``configs/inference.(json|yaml)``), the structures as labels in metadata.json, and as
    ``models/model.pt`` (the file MONAI Label loads) the shipped hippocampus weights, or tiny random ones."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data", "eval", "models", "__pycache__", "*.log"))
    parser = ConfigParser()
    parser.read_config([str(src / "configs" / "inference.yaml"), str(src / "configs" / "inference_volume.yaml")])
    for k, v in {**FAST, **({} if real else TINY)}.items():
        parser[k] = v
    ConfigParser.export_config_file(parser.get(), str(dst / "configs" / "inference.yaml"), fmt="yaml")
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    roi = parser["roi_size"]
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [roi, roi, -1]
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = LABELS
    (dst / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    (dst / "models").mkdir()
    if real:
        shutil.copy(src / "models" / "model_hippocampus.pt", dst / "models" / "model.pt")
    else:
        torch.manual_seed(0)
        torch.save({"model": MedSegDiffV2(1, 2, **TINY_NET).state_dict()}, dst / "models" / "model.pt")


def _study(bundle_root: Path, path: Path) -> nib.Nifti1Image:
    """A demo hippocampus MR volume re-stored with a non-RAS, anisotropic, offset affine (so geometry bugs show)."""
    src = nib.load(sorted((bundle_root / "data" / "demo" / "hippocampus" / "imagesTr").glob("*.nii.gz"))[0])
    affine = np.diag([-0.8, -1.2, 2.5, 1.0])
    affine[:3, 3] = [30.0, -12.0, 7.5]
    img = nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32)[:, :, :12], affine)
    nib.save(img, path)
    return img


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(bundle_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A running MONAI Label server (subprocess) over one study; always stopped at the end."""
    root = tmp_path_factory.mktemp("monailabel")
    app, studies = root / "app", root / "studies"
    (app / "model").mkdir(parents=True)
    studies.mkdir()
    (app / "main.py").write_text(APP_MAIN)
    _served_bundle(bundle_root, app / "model" / MODEL, real=False)
    _served_bundle(bundle_root, app / "model" / REAL, real=True)
    image = _study(bundle_root, studies / "case.nii.gz")
    shutil.copy(bundle_root / "data" / "demo" / "hippocampus" / "imagesTr" / f"{HELD_OUT}.nii.gz", studies)
    port, log = _free_port(), root / "server.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "MONAI_LABEL_TRACKING_ENABLED": "false",
    }
    cmd = [sys.executable, str(LAUNCHER), "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--conf", "models", f"{MODEL},{REAL}"]
    cmd += ["--conf", "preload", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                info = _get(f"{url}/info/")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MONAI Label server did not start (rc={proc.poll()}):\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
        yield {"url": url, "info": info, "image": image, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _infer(server: dict, model: str, image: str, out: Path) -> nib.Nifti1Image:
    req = urllib.request.Request(f"{server['url']}/infer/{model}?image={image}&output=image", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            out.write_bytes(r.read())
    except urllib.error.HTTPError as e:
        pytest.fail(f"infer failed ({e.code}: {e.read()[:500]!r}); log:\n{server['log'].read_text()[-6000:]}")
    return nib.load(out)


@pytest.mark.parametrize("name", [MODEL, REAL])
def test_server_lists_the_bundle_with_its_labels(server: dict, name: str) -> None:
    model = server["info"]["models"].get(name)
    assert model is not None, f"{name} not served; log:\n{server['log'].read_text()[-4000:]}"
    assert model["labels"] == {"anterior": 1, "posterior": 2}
    assert model["dimension"] == 3 and model["type"] == "segmentation"


def test_infer_over_http_returns_a_label_volume_in_the_input_geometry(server: dict, tmp_path: Path) -> None:
    label, image = _infer(server, MODEL, "case", tmp_path / "label.nii.gz"), server["image"]
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    np.testing.assert_allclose(label.header.get_zooms()[:3], image.header.get_zooms()[:3], atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}


def test_shipped_hippocampus_weights_segment_a_held_out_volume_over_http(
    server: dict, bundle_root: Path, tmp_path: Path
) -> None:
    label = np.asarray(_infer(server, REAL, HELD_OUT, tmp_path / "label.nii.gz").dataobj)
    truth = nib.load(bundle_root / "data" / "demo" / "hippocampus" / "labelsTr" / f"{HELD_OUT}.nii.gz")
    truth = np.asarray(truth.dataobj)
    assert label.shape == truth.shape
    onehot = [one_hot(torch.as_tensor(np.asarray(x, np.int64))[None, None], 3) for x in (label, truth)]
    dice = compute_dice(*onehot, include_background=False)[0].tolist()  # anterior, posterior
    assert min(dice) > 0.5, dice  # tiny random weights score about 0
