"""Nothing lost, nothing silent, round two (inference and data): settings, devices, output folders and every input
case are checked before any sampling; outputs are written atomically and all or none per case; evaluation runs with
a single sample."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from PIL import Image
from tiny_config import TINY_NET

from scripts.data.inputs import load_images
from scripts.data.validation import load_datalist
from scripts.evaluation.metrics import DiceConfidenceIntervalMetric
from scripts.evaluation.outputs import AtomicSaveImaged
from scripts.networks import MedSegDiffV2
from scripts.runtime.checks import check_device, check_output_dir, check_reliance_cases
from scripts.runtime.errors import BundleError, DataValidationError, bundle_error_in, summary_line
from scripts.runtime.settings import check_settings

if TYPE_CHECKING:
    from conftest import BundleCLI

FAST = {
    "roi_size": 32,
    "num_inference_steps": 2,
    "ensemble_size": 3,
    **{f"network_def#{k}": v for k, v in TINY_NET.items()},
}


def save_weights(path: Path, in_ch: int = 3, out_ch: int = 1) -> Path:
    torch.manual_seed(0)
    torch.save(MedSegDiffV2(in_ch, out_ch, **TINY_NET).state_dict(), path)
    return path


def infer(build: Callable[..., ConfigWorkflow], tmp: Path, **overrides) -> None:
    """``inference.yaml`` with the tiny network, writing into ``tmp/out``."""
    ckpt = save_weights(tmp / "model.pt")
    wf = build(
        "inference.yaml",
        workflow_type="infer",
        **{"output_dir": str(tmp / "out"), "ckpt_path": str(ckpt), **FAST, **overrides},
    )
    wf.run()
    wf.finalize()


def png(path: Path, shape: tuple[int, ...], dtype: type = np.uint8, high: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, high, shape).astype(dtype)).save(path)
    return path


def one_isic_image(bundle_root: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = sorted((bundle_root / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
    return Path(shutil.copy(src, folder / src.name))


def test_png_output_for_volumes_is_refused() -> None:
    with pytest.raises(BundleError, match=r"output_ext='.png' is invalid, expected '.nii.gz' or '.nii' for volumes"):
        check_settings({"spatial_dims": 3, "output_ext": ".png"})
    check_settings({"spatial_dims": 2, "output_ext": ".png"})
    check_settings({"spatial_dims": 3, "output_ext": ".nii.gz"})


def test_a_device_the_machine_does_not_have_is_refused_at_start_up(
    bundle_workflow: Callable[..., ConfigWorkflow], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BundleError, match="device: cuda is not available on this machine .*use --device cpu"):
        check_device("cuda")
    with pytest.raises(BundleError, match="device: 'gpu' is not a torch device"):
        check_device("gpu")
    check_device("cpu")
    check_device(torch.device("cpu"))
    with pytest.raises(RuntimeError) as err:  # inference.yaml checks it before loading weights or reading inputs
        bundle_workflow("inference.yaml", workflow_type="infer", device="cuda", output_dir=str(tmp_path / "out"))
    assert "device: cuda is not available" in str(bundle_error_in(err.value))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BundleError, match=r"device: cuda:1 does not exist: this machine has 1 CUDA GPU\(s\)"):
        check_device("cuda:1")
    check_device("cuda:0")


def test_an_output_dir_that_is_a_file_cannot_be_created_or_is_read_only_is_refused(
    bundle_workflow: Callable[..., ConfigWorkflow], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "file.txt"
    file.write_text("not a folder")
    with pytest.raises(BundleError, match=f"output_dir: {re.escape(str(file))} is an existing file, not a folder"):
        check_output_dir(file)
    with pytest.raises(BundleError, match=r"output_dir: .*file.txt/out cannot be created \(Not a directory\)"):
        check_output_dir(file / "out")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != read_only and access(path, mode, **kw))
    with pytest.raises(BundleError, match="output_dir: .*read_only is not writable"):
        check_output_dir(read_only)
    monkeypatch.undo()

    def read_only_mkdir(self: Path, *args, **kwargs) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    with pytest.raises(BundleError, match=r"output_dir: .*new cannot be created \(Read-only file system\)"):
        check_output_dir(tmp_path / "new")
    monkeypatch.undo()
    check_output_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # the probe is removed
    with pytest.raises(RuntimeError) as err:  # inference.yaml checks it at start-up, before any sampling
        bundle_workflow("inference.yaml", workflow_type="infer", output_dir=str(file))
    assert "is an existing file, not a folder" in str(bundle_error_in(err.value))


def test_image_reliance_with_fewer_than_2_validation_cases_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "six"
    for i in range(6):  # never read: the check needs only the names
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / f"case{i}.png").touch()
    expected = r"val_reliance: .*needs at least 2 validation cases; the folder layout of .*six .* has 1\. Set --val_rel"
    with pytest.raises(BundleError, match=expected):
        check_reliance_cases(None, folder, "validation", True)
    check_reliance_cases(None, folder, "validation", False)
    one = tmp_path / "one.json"
    one.write_text(
        json.dumps({"training": [{"image": "a", "label": "b"}], "validation": [{"image": "c", "label": "d"}]})
    )
    with pytest.raises(BundleError, match=f"{re.escape(str(one))} has 1. Set --val_reliance False"):
        check_reliance_cases(str(one), tmp_path, "validation", True)
    two = {"validation": [{"image": "c", "label": "d"}, {"image": "e", "label": "f"}]}
    check_reliance_cases(two, tmp_path, "validation", True)


CLI_CASES = {
    "volumes as png": (
        ["--config_file", "['configs/inference.yaml','configs/inference_volume.yaml']", "--output_ext", ".png"],
        "output_ext='.png' is invalid, expected '.nii.gz' or '.nii' for volumes",
    ),
    "output_dir is a file": (["--config_file", "configs/inference.yaml"], "is an existing file, not a folder"),
    "no cuda": (["--config_file", "configs/inference.yaml", "--device", "cuda"], "device: cuda is not available"),
    "one validation case": (
        ["--config_file", "['configs/train.yaml','configs/quick.yaml']"],
        "needs at least 2 validation cases; ",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_start_up_refusals_end_monai_bundle_run_with_the_message(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path, case: str
) -> None:
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    args, message = CLI_CASES[case]
    out = tmp_path / "out"
    if case == "output_dir is a file":
        out.write_text("x")
    run_name = f"pytest_safety_{os.getpid()}"
    if case == "one validation case":  # the files are never read
        cases = [{"image": f"{i}.png", "label": f"{i}_mask.png"} for i in range(3)]
        datalist = tmp_path / "datalist.json"
        datalist.write_text(json.dumps({"training": cases[:2], "validation": cases[2:]}))
        args = [*args, "--dataset_dir", str(tmp_path), "--datalist", str(datalist), "--run_name", run_name]
    else:
        args = [*args, "--output_dir", str(out)]
    proc = bundle_cli(*args)
    assert proc.returncode != 0
    line = bundle_cli.last_line(proc.stderr)
    assert line.startswith("ERROR: ") and message in line, proc.stderr[-2000:]
    assert "case(s) to segment" not in proc.stdout and "validated" not in proc.stdout  # no input was read
    assert not (bundle_root / "runs" / run_name).exists()


# -- input cases: checked before sampling; a bad one is reported and skipped -------------------------------------------
def test_16bit_images_under_modality_rgb_are_refused_naming_the_file(tmp_path: Path) -> None:
    cases = []
    for i in range(3):
        image = png(tmp_path / "images" / f"c{i}.png", (24, 24), np.uint16, 60000)  # 16-bit grey
        mask = png(tmp_path / "masks" / f"c{i}.png", (24, 24), np.uint8, 2)
        cases.append({"image": str(image.relative_to(tmp_path)), "label": str(mask.relative_to(tmp_path))})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": cases[:2], "validation": cases[2:]}))
    message = r"c0\.png: intensities \d+\.\.\d+ \(uint16\) do not fit modality=rgb.*use --modality mr"
    with pytest.raises(DataValidationError, match=message):
        load_datalist(str(datalist), tmp_path, "training", 1, 2, in_channels=1, modality="rgb")
    assert len(load_datalist(str(datalist), tmp_path, "training", 1, 2, in_channels=1, modality="mr")) == 2
    parser = ConfigParser()  # train.yaml passes its modality to both sections
    parser.read_config(["configs/train.yaml", "configs/quick.yaml"])
    parser.update({"dataset_dir": str(tmp_path), "datalist": str(datalist), "image_channels": 1})
    for section in ("train#datalist", "validate#datalist"):
        with pytest.raises(RuntimeError) as err:
            parser.get_parsed_content(section)
        assert "do not fit modality=rgb" in str(bundle_error_in(err.value))
    with pytest.raises(DataValidationError, match="no valid input case to segment: .*do not fit modality=rgb"):
        load_images(str(tmp_path / "images" / "c0.png"), tmp_path, 2, in_channels=1, modality="rgb")


def test_images_smaller_than_2x2_and_png_inputs_with_nifti_output_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    png(folder / "one.png", (1, 1, 3))
    png(folder / "thin.png", (1, 40, 3))
    two = png(folder / "two.png", (2, 2, 3))
    assert load_images(str(folder), tmp_path, 2, in_channels=3) == [{"image": str(two)}]
    with pytest.raises(DataValidationError, match=r"one\.png: image is 1x1 pixels; inference needs at least 2x2"):
        load_images(str(folder / "one.png"), tmp_path, 2, in_channels=3)
    with pytest.raises(DataValidationError, match=r"two\.png: a 2D .png image cannot be written as output_ext=.nii.gz"):
        load_images(str(two), tmp_path, 2, in_channels=3, output_ext=".nii.gz")
    nifti = tmp_path / "slice.nii.gz"  # a 2D NIfTI keeps its geometry in a NIfTI result
    nib.save(nib.Nifti1Image(np.zeros((20, 16), np.float32), np.eye(4)), nifti)
    assert load_images(str(nifti), tmp_path, 2, in_channels=1, output_ext=".nii.gz") == [{"image": str(nifti)}]
    parser = ConfigParser()  # inference.yaml passes output_ext and modality to the checks
    parser.read_config("configs/inference.yaml")
    parser.update({"input": str(two), "output_ext": ".nii.gz"})
    with pytest.raises(RuntimeError) as err:
        parser.get_parsed_content("datalist")
    assert "cannot be written as output_ext=.nii.gz" in str(bundle_error_in(err.value))


def test_two_inputs_with_the_same_output_name_are_refused(tmp_path: Path) -> None:
    a, b = png(tmp_path / "a" / "x.png", (4, 4, 3)), png(tmp_path / "b" / "x.jpg", (4, 4, 3))
    with pytest.raises(
        DataValidationError, match=r"b/x\.jpg: its outputs \(x_seg\.\.\.\) would overwrite those of .*a/x"
    ):
        load_images([str(a), str(b)], tmp_path, 2, in_channels=3)


def test_a_relative_input_is_read_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = png(tmp_path / "in" / "x.png", (4, 4, 3))
    monkeypatch.chdir(tmp_path)
    assert load_images("in/x.png", tmp_path / "elsewhere", 2, in_channels=3) == [{"image": str(image)}]
    assert load_images("in", tmp_path / "elsewhere", 2, in_channels=3) == [{"image": str(image)}]


def test_a_batch_skips_and_reports_entries_without_image_and_too_small_images(
    bundle_workflow: Callable[..., ConfigWorkflow], tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    png(data / "small.png", (2, 2, 3))
    png(data / "dot.png", (1, 1, 3))
    datalist = data / "datalist.json"
    entries = [{"image": "small.png"}, {"label": "small.png"}, {"image": "dot.png"}]
    datalist.write_text(json.dumps({"testing": entries}))
    infer(bundle_workflow, tmp_path, input=str(datalist), input_key="testing", dataset_dir=str(data))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["small_seg.png", "small_uncertainty.png"]
    assert np.asarray(Image.open(out / "small_seg.png")).shape == (2, 2)
    log = "".join(capfd.readouterr())
    assert "entry 1 {'label': 'small.png'}: has no 'image' key" in log
    assert "dot.png: image is 1x1 pixels" in log


# -- outputs: atomic, all or none per case -----------------------------------------------------------------------------
class Killed(BaseException):
    """A stand-in for kill -9: no ``except Exception`` runs after it."""


@pytest.mark.slow
def test_a_run_killed_while_writing_leaves_no_truncated_output_and_the_next_run_completes(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = one_isic_image(bundle_root, tmp_path / "in")
    save = Image.Image.save

    def killed_while_writing(self: Image.Image, fp, *args, **kwargs) -> None:
        if "uncertainty" in str(fp):
            Path(fp).write_bytes(b"")  # the file exists, empty, when the process dies
            raise Killed
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", killed_while_writing)
    with pytest.raises(Killed):
        infer(bundle_workflow, tmp_path, input=str(image.parent))
    out = tmp_path / "out"
    assert not (out / f"{image.stem}_uncertainty.png").exists()
    for path in out.iterdir():
        if not path.name.startswith("."):  # what a user sees is complete
            Image.open(path).load()
    monkeypatch.setattr(Image.Image, "save", save)
    infer(bundle_workflow, tmp_path, input=str(image.parent))  # the next run replaces the temporary file
    assert sorted(p.name for p in out.iterdir()) == [f"{image.stem}_seg.png", f"{image.stem}_uncertainty.png"]


def test_a_full_disk_removes_the_cases_outputs_and_ends_with_the_file_name(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = one_isic_image(bundle_root, tmp_path / "in")
    save = Image.Image.save

    def full_disk(self: Image.Image, fp, *args, **kwargs) -> None:
        if "uncertainty" in str(fp):
            Path(fp).write_bytes(b"\x89PNG\r\n")  # a part written, then no space left
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(Exception) as err:
        infer(bundle_workflow, tmp_path, input=str(image.parent))
    final = tmp_path / "out" / f"{image.stem}_uncertainty.png"
    error = bundle_error_in(err.value)
    assert error is not None and str(error).startswith(f"{final}: cannot be written (No space left on device)")
    assert summary_line(error).startswith(f"ERROR: {final}: cannot be written")  # the last line on stderr
    assert list((tmp_path / "out").iterdir()) == []  # neither the mask nor a temporary file


def test_nifti_outputs_of_a_case_are_written_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def saver(key: str) -> AtomicSaveImaged:
        return AtomicSaveImaged(
            key,
            output_dir=str(tmp_path),
            output_postfix=key,
            output_ext=".nii.gz",
            resample=False,
            separate_folder=False,
            print_log=False,
        )

    volume = MetaTensor(torch.rand(1, 6, 5, 4), affine=torch.eye(4), meta={"filename_or_obj": "case.nii.gz"})
    data = saver("pred")({"pred": volume, "uncertainty": volume.clone()})
    assert nib.load(tmp_path / "case_pred.nii.gz").shape == (6, 5, 4)

    def no_space(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", no_space)
    message = r"case_uncertainty\.nii\.gz: cannot be written \(No space left on device\); its other outputs \(1\)"
    with pytest.raises(BundleError, match=message):
        saver("uncertainty")(data)
    assert list(tmp_path.iterdir()) == []


# -- evaluation with one sample per case -------------------------------------------------------------------------------
def test_dice_confidence_interval_of_one_sample_is_not_available(caplog: pytest.LogCaptureFixture) -> None:
    truth = torch.zeros(1, 2, 4, 4)
    truth[0, 0, :, :2] = 1
    truth[0, 1, :, 2:] = 1
    one = (truth[0, 0] + 2 * truth[0, 1])[None]  # one member
    with caplog.at_level(logging.WARNING):
        width = DiceConfidenceIntervalMetric()(one[None], truth)
    assert width.shape == (1, 2) and torch.isnan(width).all()
    assert "not available" in caplog.text


@pytest.mark.slow
def test_evaluate_yaml_with_ensemble_size_1_completes_with_the_interval_as_nan(
    train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path
) -> None:
    (tmp_path / "models").mkdir()
    torch.manual_seed(0)
    torch.save({"model": MedSegDiffV2(3, 1, **TINY_NET).state_dict()}, tmp_path / "models" / "model.pt")
    eval_dir = tmp_path / "eval"
    wf = train_workflow(
        tmp_path,
        "quick.yaml",
        "evaluate.yaml",
        eval_dir=str(eval_dir),
        ensemble_size=1,
        sampler="ddim",
        grid_cases=2,
        val_reliance=False,
    )
    wf.run()
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    wf.finalize()
    assert math.isnan(metrics["val_dice_ci95_width"])
    assert np.isfinite(metrics["val_mean_dice"]) and np.isfinite(metrics["val_ged"])
    assert "val_dice_ci95_width,nan" in (eval_dir / "metrics.csv").read_text()
    assert (eval_dir / "ensemble_curve.csv").is_file()
