"""MONAI Label: the app of tools/monailabel_app served by a real `monailabel start_server`, as bundle/docs/README.md
starts it (the repository's bundle and shipped weights), driven over HTTP: the models and strategies it lists, a 2D
image and volumes segmented (mask + uncertainty map), the uncertainty strategy's next sample, and a second server on a
copy of the bundle whose weights get replaced."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from PIL import Image

pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")
decoder = pytest.importorskip("requests_toolbelt.multipart.decoder")

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tools" / "monailabel_app"
MODEL_2D, MODEL_3D = "medsegdiff_v2", "medsegdiff_v2_volume"
# CPU-fast sampling, as request settings (the default request is tested once, in the 2D test)
FAST = {"num_inference_steps": 2, "ensemble_size": 3, "slice_batch": 16}
HELD_OUT = "hippocampus_099"  # a test-list volume of docs/splits/msd_hippocampus_split.json
# demo photos: the lesion crop, two more unlabelled, one labelled
ISIC = ["ISIC_0000006", "ISIC_0000034", "ISIC_0000063", "ISIC_0000097"]
CROP = slice(28, 228)  # rows kept of the 256x256 demo image: a non-square 200x256 image (transposition shows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:] if log.exists() else ""


@pytest.fixture(scope="module")
def studies(bundle_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The studies folder: a non-square lesion photo (with its mask kept aside), two more photos, one photo already
    labelled (labels/final), a hippocampus volume re-stored with a non-RAS, anisotropic, offset affine, and the
    held-out hippocampus volume."""
    root = tmp_path_factory.mktemp("studies")
    isic = bundle_root / "data" / "demo" / "isic"
    photo = np.asarray(Image.open(isic / "images" / f"{ISIC[0]}.jpg"))[CROP]
    Image.fromarray(photo).save(root / "lesion.jpg", quality=95)
    truth = np.asarray(Image.open(isic / "masks" / f"{ISIC[0]}_segmentation.png"))[CROP] > 0
    for name in ISIC[1:]:
        shutil.copy(isic / "images" / f"{name}.jpg", root)
    (root / "labels" / "final").mkdir(parents=True)
    shutil.copy(isic / "masks" / f"{ISIC[-1]}_segmentation.png", root / "labels" / "final" / f"{ISIC[-1]}.png")

    hippo = bundle_root / "data" / "demo" / "hippocampus"
    src = nib.load(sorted((hippo / "imagesTr").glob("*.nii.gz"))[1])
    affine = np.diag([-0.8, -1.2, 2.5, 1.0])
    affine[:3, 3] = [30.0, -12.0, 7.5]
    case = nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32)[:, :, :12], affine)
    nib.save(case, root / "case.nii.gz")
    shutil.copy(hippo / "imagesTr" / f"{HELD_OUT}.nii.gz", root)
    return {"path": root, "photo": photo, "truth": truth, "case": case, "labelled": ISIC[-1]}


def _start(app_args: list[str], root: Path) -> tuple[subprocess.Popen, str, Path]:
    """`monailabel start_server` (the console script runs `python -m monailabel.main`) on a free local port."""
    port, log = _free_port(), root / f"server_{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",  # no background scoring at start-up: the tests score explicitly
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "MONAI_LABEL_TRACKING_ENABLED": "false",
    }
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", *app_args, "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            requests.get(f"{url}/info/", timeout=5).raise_for_status()
            return proc, url, log
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"MONAI Label server did not start (rc={proc.poll()}):\n{_read(log)}")
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(studies: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The documented command: the app over the studies, with its defaults (this repository's bundle, both models)."""
    proc, url, log = _start(["--app", str(APP), "--studies", str(studies["path"])], tmp_path_factory.mktemp("ml"))
    try:
        yield {"url": url, "log": log}
    finally:
        _stop(proc)


def _post(server: dict, path: str, **kwargs: Any) -> requests.Response:
    r = requests.post(f"{server['url']}{path}", timeout=600, **kwargs)
    if r.status_code != 200:
        pytest.fail(f"POST {path}: {r.status_code} {r.text[:500]}; log:\n{_read(server['log'])}")
    return r


def _infer(server: dict, model: str, image: str, params: dict | None = None) -> tuple[bytes, dict]:
    """POST /infer as a viewer does (no ``output``: multipart with the label file and the result JSON)."""
    data = {"params": json.dumps(params)} if params else None
    r = _post(server, f"/infer/{model}?image={image}", data=data)
    parts = decoder.MultipartDecoder(r.content, r.headers["content-type"]).parts
    by_name = {p.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]: p for p in parts}
    assert set(by_name) == {"params", "image"}
    return by_name["image"].content, json.loads(by_name["params"].content)


def _nifti(content: bytes, path: Path) -> nib.Nifti1Image:
    path.write_bytes(content)
    return nib.load(path)


def _blank_label(studies: dict[str, Any], image: str) -> tuple[str, bytes]:
    """An empty label file for ``image`` (a PNG for a photo, a NIfTI for a volume)."""
    if image in ("case", HELD_OUT):
        src = nib.load(studies["path"] / f"{image}.nii.gz")
        return "label.nii", nib.Nifti1Image(np.zeros(src.shape, np.uint8), src.affine).to_bytes()
    buf = io.BytesIO()
    Image.fromarray(np.zeros(Image.open(studies["path"] / f"{image}.jpg").size[::-1], np.uint8)).save(buf, "PNG")
    return "label.png", buf.getvalue()


def _dice(a: np.ndarray, b: np.ndarray, classes: int) -> list[float]:
    onehot = [one_hot(torch.as_tensor(np.asarray(x, np.int64))[None, None], classes + 1) for x in (a, b)]
    return compute_dice(*onehot, include_background=False)[0].tolist()


def test_label_names_of_the_2d_model_are_those_of_the_bundle_metadata(bundle_root: Path) -> None:
    labels = yaml.safe_load((bundle_root / "configs" / "monailabel.yaml").read_text())["monailabel_labels"]
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert labels["image"] == {v: int(k) + 1 for k, v in channel_def.items()}  # foreground channel k: label k + 1


@pytest.mark.slow
def test_info_lists_both_models_their_settings_and_the_uncertainty_strategy(server: dict, bundle_root: Path) -> None:
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    image, volume = info["models"][MODEL_2D], info["models"][MODEL_3D]
    assert image["labels"] == {"lesion": 1} and image["dimension"] == 2 and image["type"] == "segmentation"
    assert volume["labels"] == {"anterior": 1, "posterior": 2} and volume["dimension"] == 3
    # the request settings a client may change, with inference.yaml's defaults
    defaults = yaml.safe_load((bundle_root / "configs" / "inference.yaml").read_text())
    assert image["config"]["num_inference_steps"] == defaults["num_inference_steps"]
    assert image["config"]["ensemble_size"] == defaults["ensemble_size"]
    assert image["config"]["uncertainty_sigma"] == defaults["uncertainty_sigma"]
    volume_sigma = yaml.safe_load((bundle_root / "configs" / "inference_volume.yaml").read_text())["uncertainty_sigma"]
    assert volume["config"]["uncertainty_sigma"] == volume_sigma != defaults["uncertainty_sigma"]  # its weights' own
    assert "uncertainty" in info["strategies"] and "uncertainty" in info["scoring"]


@pytest.mark.slow
def test_default_2d_request_returns_a_png_mask_of_the_image_size_and_its_uncertainty(
    server: dict, studies: dict[str, Any]
) -> None:
    label, params = _infer(server, MODEL_2D, "lesion")  # no settings: 10 steps, 10 members, STAPLE
    mask = Image.open(io.BytesIO(label))
    assert mask.format == "PNG" and mask.mode == "L"
    mask = np.asarray(mask)
    assert mask.shape == studies["photo"].shape[:2]  # (H, W) = (200, 256): 2D, not (1, H, W), not transposed
    assert set(np.unique(mask)) <= {0, 1}
    assert _dice(mask, studies["truth"], 1)[0] > 0.7  # the shipped ISIC weights find the lesion where it is

    unc = params["uncertainty"]
    assert unc["format"] == ".png" and unc["scale"] == 255 and unc["encoding"] == "base64"
    umap = np.asarray(Image.open(io.BytesIO(base64.b64decode(unc["file"]))))
    assert umap.shape == mask.shape and umap.dtype == np.uint8
    assert 0 < unc["mean"] < unc["max"] <= 1
    assert umap.mean() / 255 == pytest.approx(unc["mean"], abs=0.01)
    # the members disagree near the lesion's border, not far from it
    edge = mask != np.roll(mask, 3, axis=0)
    assert umap[edge].mean() > 4 * umap[~edge].mean()


@pytest.mark.slow
def test_volume_request_returns_nifti_mask_and_uncertainty_in_the_input_geometry(
    server: dict, studies: dict[str, Any], tmp_path: Path
) -> None:
    label, params = _infer(server, MODEL_3D, "case", FAST)
    image = studies["case"]
    unc = params["uncertainty"]
    assert unc["format"] == ".nii.gz" and unc["scale"] == 1
    for out in (_nifti(label, tmp_path / "label.nii.gz"), _nifti(base64.b64decode(unc["file"]), tmp_path / "u.nii.gz")):
        assert out.shape == image.shape
        np.testing.assert_allclose(out.affine, image.affine, atol=1e-4)
        np.testing.assert_allclose(out.header.get_zooms()[:3], image.header.get_zooms()[:3], atol=1e-4)
    mask = np.asarray(nib.load(tmp_path / "label.nii.gz").dataobj)
    umap = np.asarray(nib.load(tmp_path / "u.nii.gz").dataobj)
    assert set(np.unique(mask)) <= {0, 1, 2} and umap.dtype == np.float32
    assert umap.min() >= 0 and umap.max() <= 1 and float(umap.mean()) == pytest.approx(unc["mean"], rel=1e-4)


@pytest.mark.slow
def test_shipped_hippocampus_weights_segment_a_held_out_volume(server: dict, bundle_root: Path, tmp_path: Path) -> None:
    label, _ = _infer(server, MODEL_3D, HELD_OUT, {**FAST, "num_inference_steps": 5})
    mask = np.asarray(_nifti(label, tmp_path / "label.nii.gz").dataobj)
    truth = nib.load(bundle_root / "data" / "demo" / "hippocampus" / "labelsTr" / f"{HELD_OUT}.nii.gz").dataobj
    truth = np.asarray(truth)
    assert mask.shape == truth.shape
    assert min(_dice(mask, truth, 2)) > 0.5  # anterior, posterior


@pytest.mark.slow
def test_request_settings_are_checked_as_on_the_command_line(server: dict) -> None:
    r = requests.post(
        f"{server['url']}/infer/{MODEL_2D}?image=lesion", data={"params": json.dumps({"ensemble_size": 0})}, timeout=60
    )
    assert r.status_code == 422 and "ensemble_size=0" in r.json()["detail"]
    params = {"params": json.dumps({"uncertainty_sigma": -1.0})}
    r = requests.post(f"{server['url']}/infer/{MODEL_2D}?image=lesion", data=params, timeout=60)
    assert r.status_code == 422 and "uncertainty_sigma=-1.0" in r.json()["detail"]


@pytest.mark.slow
def test_next_sample_is_the_unlabelled_image_with_the_most_uncertain_ensemble(
    server: dict, studies: dict[str, Any]
) -> None:
    url = server["url"]
    summary = _post(server, "/scoring/uncertainty?run_sync=true", json=FAST).json()
    unlabelled = ["case", HELD_OUT, "lesion", *ISIC[1:-1]]  # 2D photos and volumes, each scored by its own model
    assert summary["scored"] == len(unlabelled) and summary["failed"] == 0

    def info(image: str) -> dict:
        return requests.get(f"{url}/datastore/image/info?image={image}", timeout=30).json()

    scores = {i: info(i)["ensemble_uncertainty"]["score"] for i in unlabelled}
    assert "ensemble_uncertainty" not in info(studies["labelled"])
    # the score is the mean of the uncertainty map that /infer returns with the mask
    _, params = _infer(server, MODEL_2D, "lesion", FAST)
    assert scores["lesion"] == pytest.approx(params["uncertainty"]["mean"], rel=1e-5)
    assert len(set(scores.values())) == len(scores)

    ranked = sorted(scores, key=scores.get, reverse=True)
    first = _post(server, "/activelearning/uncertainty", json={}).json()
    assert first["id"] == ranked[0]
    # labelled (a final label saved through the API), it leaves the pool: the next most uncertain comes next
    label = {"label": _blank_label(studies, ranked[0])}
    r = requests.put(f"{url}/datastore/label?image={ranked[0]}&tag=final", files=label, timeout=60)
    assert r.status_code == 200, r.text
    assert _post(server, "/activelearning/uncertainty", json={}).json()["id"] == ranked[1]
    # a second scoring run reuses the stored scores (same weights, same settings)
    assert _post(server, "/scoring/uncertainty?run_sync=true", json=FAST).json()["scored"] == 0


@pytest.mark.slow
def test_replaced_weights_are_refused_over_http(bundle_root: Path, studies: dict[str, Any], tmp_path: Path) -> None:
    """A copy of the bundle served by another server: its models/model.pt overwritten by model_hippocampus.pt (the
    copy's large_files.yml records model.pt's sha256) stops being served, with the reason."""
    bundle = tmp_path / "bundle"

    def ignore(folder: str, names: list[str]) -> set[str]:  # the root's data and docs (not scripts/data), outputs
        top = {"data", "docs"} if Path(folder) == bundle_root else set()
        return {n for n in names if n in top | {"runs", "eval", "__pycache__"}}

    shutil.copytree(bundle_root, bundle, ignore=ignore)
    args = ["--app", str(APP), "--studies", str(studies["path"]), "--conf", "bundle", str(bundle)]
    proc, url, log = _start([*args, "--conf", "models", MODEL_2D], tmp_path)
    try:
        assert MODEL_2D in requests.get(f"{url}/info/", timeout=30).json()["models"]
        shutil.copy(bundle / "models" / "model_hippocampus.pt", bundle / "models" / "model.pt")
        assert MODEL_2D not in requests.get(f"{url}/info/", timeout=30).json()["models"]
        r = requests.post(f"{url}/infer/{MODEL_2D}?image=lesion", timeout=120)
        assert r.status_code == 500
        assert "model.pt is not the file listed in" in r.json()["detail"] and "sha256" in r.json()["detail"]
    finally:
        _stop(proc)
