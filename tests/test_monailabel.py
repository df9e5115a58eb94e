"""MONAI Label: a copy of the bundle (tiny weights, volume profile) served by a real ``monailabel start_server``;
a NIfTI volume is segmented over HTTP and must come back in the input's shape and geometry."""

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
from tiny_config import TINY_NET

from scripts.networks import MedSegDiffV2

pytest.importorskip("monailabel")

MODEL = "medsegdiff_v2"
# CPU-fast inference for the served copy (merged into its configs/inference.yaml)
FAST = {"num_inference_steps": 2, "ensemble_size": 2, "roi_size": 32, "slice_batch": 16, "inferer#progress": False}
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


def _served_bundle(src: Path, dst: Path) -> None:
    """Copies the bundle to ``dst`` with tiny weights and ``configs/inference.yaml`` rewritten to the merged volume
    config (MONAI Label reads only ``configs/inference.(json|yaml)``)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data", "eval", "models", "__pycache__", "*.log"))
    parser = ConfigParser()
    parser.read_config([str(src / "configs" / "inference.yaml"), str(src / "configs" / "inference_volume.yaml")])
    for k, v in {**FAST, **{f"network_def#{k}": v for k, v in TINY_NET.items()}}.items():
        parser[k] = v
    ConfigParser.export_config_file(parser.get(), str(dst / "configs" / "inference.yaml"), fmt="yaml")
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [32, 32, -1]
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = LABELS
    (dst / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    torch.manual_seed(0)
    (dst / "models").mkdir()
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
    _served_bundle(bundle_root, app / "model" / MODEL)
    image = _study(bundle_root, studies / "case.nii.gz")
    port, log = _free_port(), root / "server.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "MONAI_LABEL_TRACKING_ENABLED": "false",
    }
    cmd = [sys.executable, str(LAUNCHER), "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--conf", "models", MODEL, "--conf", "preload", "false"]
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


def test_server_lists_the_bundle_with_its_labels(server: dict) -> None:
    model = server["info"]["models"].get(MODEL)
    assert model is not None, f"{MODEL} not served; log:\n{server['log'].read_text()[-4000:]}"
    assert model["labels"] == {"anterior": 1, "posterior": 2}
    assert model["dimension"] == 3 and model["type"] == "segmentation"


def test_infer_over_http_returns_a_label_volume_in_the_input_geometry(server: dict, tmp_path: Path) -> None:
    req = urllib.request.Request(f"{server['url']}/infer/{MODEL}?image=case&output=image", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            (tmp_path / "label.nii.gz").write_bytes(r.read())
    except urllib.error.HTTPError as e:
        pytest.fail(f"infer failed ({e.code}: {e.read()[:500]!r}); log:\n{server['log'].read_text()[-6000:]}")
    label, image = nib.load(tmp_path / "label.nii.gz"), server["image"]
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    np.testing.assert_allclose(label.header.get_zooms()[:3], image.header.get_zooms()[:3], atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}
