"""Nothing lost, nothing silent: run directories, resume, empty labels, DICOM gaps, start-up checks of the settings,
the last line of an error, and the integrity of the shipped weights."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image
from tiny_config import TINY_NET

from scripts.data.dicom import check_dicom_series
from scripts.data.inputs import load_images
from scripts.data.readers import MODALITIES
from scripts.data.validation import load_datalist
from scripts.networks import MedSegDiffV2
from scripts.runtime.checkpoints import AtomicCheckpointSaver
from scripts.runtime.checks import check_roi_size
from scripts.runtime.disk import remove_stale_temporary_files
from scripts.runtime.errors import BundleError, DataValidationError
from scripts.runtime.resume import latest_checkpoint
from scripts.runtime.settings import check_config, check_settings, config_settings
from scripts.runtime.weights import verify_weights

if TYPE_CHECKING:
    from conftest import BundleCLI

REPO = Path(__file__).resolve().parents[1]
TRAINING_OVERLAYS = [
    [],
    ["quick.yaml"],
    ["quick.yaml", "volume.yaml"],
    ["baseline.yaml"],
    ["multi_gpu_train.yaml"],
    *[[f"ablation/{row}.yaml"] for row in ("backbone", "sa", "usa", "usa_ssformer")],
]


def run(wf: ConfigWorkflow) -> None:
    wf.run()
    wf.finalize()


# -- 1. training never overwrites the shipped weights ------------------------------------------------------------------
@pytest.mark.parametrize("overlays", TRAINING_OVERLAYS, ids=lambda o: "+".join(o) or "train")
def test_every_training_config_writes_into_its_own_ignored_run_directory(bundle_root: Path, overlays) -> None:
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in ("train.yaml", *overlays)])
    parser["bundle_root"] = str(bundle_root)
    run_dir = bundle_root / "runs" / parser["run_name"]
    for key in ("ckpt_dir", "output_dir", "eval_dir"):
        path = Path(parser.get_parsed_content(key)).resolve()
        assert path.is_relative_to(run_dir.resolve()), (key, path)
        assert not path.is_relative_to((bundle_root / "models").resolve())
    ignored = subprocess.run(["git", "check-ignore", "-q", str(run_dir / "models" / "model.pt")], cwd=REPO)
    assert ignored.returncode == 0, f"{run_dir} is not git-ignored"


def test_overlays_set_only_run_name_not_the_directories(bundle_root: Path) -> None:
    for overlay in [
        "quick.yaml",
        "baseline.yaml",
        *(f"ablation/{r}.yaml" for r in ("backbone", "sa", "usa", "usa_ssformer")),
    ]:
        content = yaml.safe_load((bundle_root / "configs" / overlay).read_text())
        assert "run_name" in content and not {"ckpt_dir", "output_dir", "eval_dir"} & set(content), overlay


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def test_each_config_block_lives_in_its_entry_config_and_its_listed_copies_only(bundle_root: Path) -> None:
    """The image chain (one per data kind), the sampling stack, the fusion, the weights check and the Dice metric are
    written in inference.yaml (or train.yaml) and, so that each config runs on its own from any folder, copied only
    where tests/test_configs.py holds the copy identical. The network is written in both entry configs (train.yaml
    and inference.yaml, so that ``--network_def#<arg>`` overrides work) and the two must agree."""
    configs = bundle_root / "configs"
    raw = {p.relative_to(configs).as_posix(): yaml.safe_load(p.read_text()) for p in configs.rglob("*.yaml")}
    where: dict[str, list[str]] = {}
    for name, content in raw.items():
        for target in _targets(content):
            where.setdefault(target, []).append(name)
    chain_2d, chain_3d = ["inference.yaml", "train.yaml"], ["inference_volume.yaml", "volume.yaml"]
    expected = {
        "scripts.diffusion.schedulers.make_scheduler": chain_2d,
        "scripts.diffusion.sampling.DiffusionSegmentationInferer": chain_2d,
        "scripts.diffusion.fusion.EnsembleFusiond": chain_2d,
        "scripts.runtime.weights.VerifiedWeightsLoader": ["evaluate.yaml", "inference.yaml"],
        "DiceMetric": ["train.yaml"],
        "LoadImaged": sorted(chain_2d + chain_3d),
        "Resized": sorted(chain_2d + chain_3d),
        "ScaleIntensityRangePercentilesd": chain_2d,
        "scripts.networks.MedSegDiffV2": chain_2d,
    }
    assert {t: sorted(where.get(t, [])) for t in expected} == expected
    train_net = {k: v for k, v in raw["train.yaml"]["network_def"].items() if k != "filter_checkpointing"}
    assert train_net == raw["inference.yaml"]["network_def"]


def test_quick_overlay_stops_on_a_wall_clock_budget_with_epochs_as_an_upper_bound(bundle_root: Path) -> None:
    """The README's first command ends in about 10 minutes on 2 cores: about 8 minutes of training, then caching and
    the last validation."""
    quick = yaml.safe_load((bundle_root / "configs" / "quick.yaml").read_text())
    assert 300 <= quick["time_budget_s"] <= 540
    assert quick["epochs"] >= quick["val_interval"] and quick["run_name"] == "quick"
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in ("train.yaml", "quick.yaml")])
    assert parser.get_parsed_content("time_budget_s") == quick["time_budget_s"]
    budget = [h for h in parser["train"]["handlers"] if h["_target_"].endswith("WallClockBudget")]
    assert [h["seconds"] for h in budget] == ["@time_budget_s"]


@pytest.mark.slow
def test_quick_training_leaves_the_shipped_weights_and_git_status_alone_and_ends_with_the_inference_command(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    """The README's first command (shortened to one tiny epoch), then the inference command it prints."""
    shipped = (bundle_root / "models" / "model.pt").read_bytes()
    name = f"pytest_{os.getpid()}"
    run_dir = bundle_root / "runs" / name
    try:
        proc = bundle_cli(
            "--config_file",
            "['configs/train.yaml','configs/quick.yaml']",
            *(
                "--run_name",
                name,
                "--roi_size",
                "32",
                "--epochs",
                "1",
                "--val_interval",
                "1",
                "--num_inference_steps",
                "2",
            ),
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        weights = f"runs/{name}/models/model.pt"
        command = bundle_cli.last_line(proc.stdout)
        assert f"- python -m monai.bundle run --config_file configs/inference.yaml --ckpt_path {weights}" in command
        assert " --roi_size 32" in command  # quick.yaml's 128 overridden for this run
        assert " --patch_size" not in command  # quick.yaml trains the shipped weights' 2x2 tokens, inference's default
        assert "best val_mean_dice" in proc.stdout
        assert list(torch.load(bundle_root / weights, weights_only=True)) == ["model"]  # the shipped format
        assert (bundle_root / "models" / "model.pt").read_bytes() == shipped
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "bundle/models", "bundle/runs", "bundle/eval"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert status.stdout == "", status.stdout
        image = sorted((bundle_root / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
        args = shlex.split(command.split("run ", 1)[1].replace("--config_file configs/inference.yaml", ""))
        fast = [
            "--input",
            str(image),
            "--output_dir",
            str(tmp_path),
            "--num_inference_steps",
            "2",
            "--ensemble_size",
            "2",
        ]
        proc = bundle_cli("--config_file", "configs/inference.yaml", *args, *fast)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / f"{image.stem}_seg.png").is_file()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- 2. resume restores what decides what is written -------------------------------------------------------------------
@pytest.mark.slow
def test_resume_never_replaces_the_best_model_with_a_worse_one_and_restores_ema_optimizer_trainer(
    train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path
) -> None:
    run(train_workflow(tmp_path, "quick.yaml", epochs=2))
    models = tmp_path / "models"
    ckpt_path = latest_checkpoint(models)
    assert ckpt_path.name == "checkpoint_epoch=2.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert {"network", "ema", "optimizer", "trainer", "best_model"} <= set(ckpt)
    record = ckpt["best_model"]
    assert record["best"] and record["best"][0][1] == "model.pt" and record["best_metric_epoch"] in (1, 2)
    # pretend the saved best was perfect: every later validation is worse, so model.pt must not change
    ckpt["best_model"] = {**record, "best": [(1.0, "model.pt")], "best_metric": 1.0, "best_metric_epoch": 2}
    torch.save(ckpt, ckpt_path)
    best_before = (models / "model.pt").read_bytes()
    (models / "tmpab12cd34").write_bytes(b"half a checkpoint")  # an interrupted atomic write
    (models / "tmp_notes.txt").write_text("not ours")

    wf = train_workflow(tmp_path, "quick.yaml", epochs=3, resume=True)  # a finished run, trained further
    trainer = wf.parser.get_parsed_content("train#trainer")
    ema = wf.parser.get_parsed_content("train#ema").ema_model
    optimizer = wf.parser.get_parsed_content("optimizer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    at_start: dict = {}

    @trainer.on(Events.ITERATION_STARTED(once=9))
    def snapshot(engine: Engine) -> None:
        at_start["ema"] = {k: v.clone() for k, v in ema.state_dict().items()}
        at_start["optimizer_steps"] = [s["step"].item() for s in optimizer.state_dict()["state"].values()]

    run(wf)
    assert trainer.state.epoch == 3 and at_start, "the resumed run did not start at iteration 9 (epoch 3)"
    assert all(torch.equal(ckpt["ema"][k], v) for k, v in at_start["ema"].items())
    assert set(at_start["optimizer_steps"]) == {8.0}  # AdamW's step count went on from the checkpoint
    assert evaluator.state.epoch == 3 and evaluator.state.metrics["val_mean_dice"] < 1.0
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (1.0, 2)
    assert (models / "model.pt").read_bytes() == best_before
    assert not (models / "tmpab12cd34").exists() and (models / "tmp_notes.txt").exists()
    saved = torch.load(latest_checkpoint(models), weights_only=True)["best_model"]
    assert saved["best"] == [(1.0, "model.pt")] and saved["best_metric_epoch"] == 2


BEST = {"key_metric_name": "dice", "key_metric_filename": "model.pt"}


def test_best_model_saver_restores_its_record_and_only_a_better_score_replaces_the_file(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    scores = iter([0.5, 0.3, 0.7])
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def metric(engine: Engine) -> None:
        engine.state.metrics["dice"] = next(scores)

    saver = AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=True, **BEST)
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)
    assert saver.state_dict()["best"] == [(0.5, "model.pt")]
    state = saver.state_dict()
    first = (tmp_path / "model.pt").read_bytes()
    assert list(torch.load(tmp_path / "model.pt", weights_only=True)) == ["model"]

    resumed_engine = Engine(lambda e, b: None)
    resumed_engine.add_event_handler(Events.EPOCH_COMPLETED, metric)
    resumed = AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=True, **BEST)
    resumed.load_state_dict(state)  # before attach: applied at attach
    resumed.attach(resumed_engine)
    with torch.no_grad():
        net.weight.add_(1.0)
    resumed_engine.run([0], max_epochs=1)  # 0.3 < 0.5: kept
    assert (tmp_path / "model.pt").read_bytes() == first
    resumed_engine.run([0], max_epochs=2)  # 0.7 > 0.5: replaced
    assert (tmp_path / "model.pt").read_bytes() != first
    assert resumed.state_dict()["best"] == [(0.7, "model.pt")]


def test_stale_temporary_files_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tmpx8k2_9qz").write_bytes(b"partial")
    (tmp_path / "tmpfile.pt").write_bytes(b"someone else's")
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"kept")
    with caplog.at_level(logging.WARNING):
        removed = remove_stale_temporary_files(tmp_path)
    assert [p.name for p in removed] == ["tmpx8k2_9qz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "tmpfile.pt"]
    assert "tmpx8k2_9qz" in caplog.text


# -- 3. empty labels ---------------------------------------------------------------------------------------------------
def _empty_isic(demo_data: Path, tmp: Path) -> Path:
    data = tmp / "isic"
    shutil.copytree(demo_data / "isic", data)
    for mask in (data / "masks").glob("*.png"):
        Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    return data


def test_all_empty_training_labels_stop_the_run_unless_allowed(
    demo_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _empty_isic(demo_data, tmp_path)
    with pytest.raises(DataValidationError, match=r"every one of the \d+ training labels is empty"):
        load_datalist(data / "datalist.json", data, "training", 1, 2)
    with caplog.at_level(logging.INFO):
        cases = load_datalist(data / "datalist.json", data, "training", 1, 2, allow_empty_labels=True)
        load_datalist(data / "datalist.json", data, "validation", 1, 2)  # validation alone: reported, not an error
    n = len(cases)
    assert f"empty labels: training {n}/{n} (100%)" in caplog.text
    assert "empty labels: validation" in caplog.text


def test_all_empty_3d_labels_stop_the_run_and_absent_classes_are_warned(
    demo_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "hippo"
    shutil.copytree(demo_data / "hippocampus", data)
    labels = sorted((data / "labelsTr").glob("*.nii.gz"))
    for path in labels:
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), path)
    with pytest.raises(DataValidationError, match="training labels is empty"):
        load_datalist(data / "datalist.json", data, "training", 2, 3)
    for path in labels:  # one class left: trains, with a warning naming the absent class
        img = nib.load(path)
        volume = np.zeros(img.shape, np.uint8)
        volume[2:4, 2:4, 2:4] = 1
        nib.save(nib.Nifti1Image(volume, img.affine), path)
    with caplog.at_level(logging.WARNING):
        load_datalist(data / "datalist.json", data, "training", 2, 3)
    assert "foreground class(es) [2] appear in no training label" in caplog.text


@pytest.mark.slow
def test_empty_labels_through_monai_bundle_run_end_with_the_message(
    bundle_cli: BundleCLI, demo_data: Path, tmp_path: Path
) -> None:
    data = _empty_isic(demo_data, tmp_path)
    args = ["--config_file", "['configs/train.yaml','configs/quick.yaml']", "--dataset_dir", str(data)]
    proc = bundle_cli(*args, "--ckpt_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "l"))
    assert proc.returncode != 0
    line = bundle_cli.last_line(proc.stderr)
    assert line.startswith("ERROR: ") and "training labels is empty" in line and "allow_empty_labels" in line, line


# -- 4. DICOM series ---------------------------------------------------------------------------------------------------
def write_series(folder: Path, bundle_root: Path, depth: int = 8, uid: str = "1.2.826.0.1.3680043.2.1125.9") -> Path:
    sitk = pytest.importorskip("SimpleITK")
    src = sitk.ReadImage(str(sorted((bundle_root / "data" / "demo" / "hippocampus" / "imagesTr").glob("*.gz"))[0]))
    src = sitk.Cast(src[:, :, :depth], sitk.sitkInt16)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(depth):
        sl = src[:, :, z]
        tags = {
            "0020|000e": uid,
            "0020|0013": str(z + 1),
            "0008|0060": "MR",
            "0008|0018": f"{uid}.{z + 1}",
            "0020|0032": "\\".join(map(str, src.TransformIndexToPhysicalPoint((0, 0, z)))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(sl)
    return folder


def test_dicom_series_with_a_missing_slice_is_refused_naming_the_gap(bundle_root: Path, tmp_path: Path) -> None:
    series = write_series(tmp_path / "series", bundle_root)
    check_dicom_series(series)  # complete: fine
    assert len(load_images(str(series), tmp_path, 3, in_channels=1)) == 1
    (series / "004.dcm").unlink()
    with pytest.raises(BundleError) as err:
        check_dicom_series(series)
    message = str(err.value)
    assert str(series) in message and "003.dcm" in message and "005.dcm" in message and "1 missing slice" in message
    assert "a gap of 2 mm" in message  # the demo volume's slices are 1 mm apart
    with pytest.raises(DataValidationError, match="no valid input case to segment: .*non-uniform slice spacing"):
        load_images(str(series), tmp_path, 3, in_channels=1)  # what inference runs before reading any volume


def test_dicom_folder_with_two_series_or_duplicate_slices_is_refused(bundle_root: Path, tmp_path: Path) -> None:
    series = write_series(tmp_path / "mixed", bundle_root)
    write_series(tmp_path / "other", bundle_root, depth=2, uid="1.2.826.0.1.3680043.2.1125.10")
    for i, f in enumerate(sorted((tmp_path / "other").iterdir())):
        shutil.copy(f, series / f"other_{i}.dcm")
    with pytest.raises(BundleError, match=r"mixed DICOM series, 2 series in one folder"):
        check_dicom_series(series)
    dup = write_series(tmp_path / "dup", bundle_root, depth=4)
    shutil.copy(dup / "001.dcm", dup / "001_copy.dcm")
    with pytest.raises(BundleError, match=r"duplicate slice position .*001.dcm and 001_copy.dcm"):
        check_dicom_series(dup)


def test_dicom_gap_in_a_training_case_is_a_data_validation_error(bundle_root: Path, tmp_path: Path) -> None:
    series = write_series(tmp_path / "case", bundle_root)
    (series / "002.dcm").unlink()
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((35, 51, 7), np.uint8), np.eye(4)), label)
    with pytest.raises(DataValidationError, match="case: non-uniform slice spacing"):
        load_datalist({"training": [{"image": "case", "label": "label.nii.gz"}]}, tmp_path, "training", 2, 3)


# -- 5. settings checked at start-up -----------------------------------------------------------------------------------
GOOD = {
    "sampler": "ddim",
    "fusion": "vote",
    "prediction_type": "v_prediction",
    "ensemble_size": 1,
    "num_train_timesteps": 1000,
    "num_inference_steps": 1000,
    "batch_size": 2,
    "num_classes": 3,
    "slice_axis": 0,
    "snr_gamma": None,
    "timestep_groups": 1,
    "amp": False,
    "filter_checkpointing": True,
    "sample_start_t": 1000,
    "time_budget_s": 0,
    "preset": None,
    "resume": True,
    "cache_rate": 1.0,
    "loss#alpha": 1,
    "x0_loss_weight": 0.5,
}
BAD = [
    ("sampler", "dpm", "one of 'ddpm', 'ddim'"),
    ("fusion", "max", "one of 'staple', 'mean', 'vote'"),
    ("prediction_type", "eps", "one of 'epsilon', 'sample', 'v_prediction'"),
    ("ensemble_size", 0, "an integer >= 1"),
    ("num_inference_steps", 1001, "an integer in [1, num_train_timesteps=1000]"),
    ("batch_size", "abc", "an integer >= 1"),
    ("batch_size", 2.0, "an integer >= 1"),
    ("num_classes", 0, "an integer >= 1"),
    ("slice_axis", 3, "one of 0, 1, 2"),
    ("slice_axis", True, "one of 0, 1, 2"),
    ("snr_gamma", 0, "null/None or a number > 0"),
    ("timestep_groups", 0, "null/None or an integer >= 1"),
    ("amp", "false", "True or False"),
    ("filter_checkpointing", 1, "True or False"),
    ("largest_component", "yes", "True or False"),
    ("flip_members", 1, "True or False"),
    ("augment", "yes", "True or False"),
    ("init_weights", "no_such_model.pt", "null/None or the path of an existing file"),
    ("sample_start_t", 0, "null/None or an integer in [1, num_train_timesteps=1000]"),
    ("cache_rate", 1.5, "a number in [0, 1]"),
    ("preset", "huge", "one of 'paper', 'small', None"),
    ("patch_size", 0, "null/None or an integer >= 1"),
    ("baseline_norm", "group", "one of 'batch', 'instance'"),
    ("eval_split", "testing", "one of 'validation', 'test'"),
    ("ece_bins", 0, "an integer >= 1"),
    ("anchor_corruption", -1.0, "a number >= 0"),
    ("loss#alpha", 0, "an integer >= 1"),
    ("loss#beta", -1.0, "a number >= 0"),
    ("x0_loss_weight", -0.5, "a number >= 0"),
    ("anchor_warmup_learning_rate", 0, "null/None or a number > 0"),
    ("concat_image", "yes", "True or False"),
]


def test_settings_table_accepts_valid_values() -> None:
    check_settings(GOOD)
    check_settings({})  # a row applies only where its key is given


@pytest.mark.parametrize(("key", "value", "expected"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_settings_table_names_the_key_the_value_and_the_valid_values(key: str, value, expected: str) -> None:
    with pytest.raises(BundleError) as err:
        check_settings({**GOOD, key: value})
    assert str(err.value).startswith(f"invalid setting: {key}={value!r} is invalid, expected {expected}")


def test_roi_size_is_checked_against_the_network_stride() -> None:
    net = MedSegDiffV2(3, 1, **TINY_NET)
    check_roi_size(8 * net.size_divisor, net)
    with pytest.raises(
        BundleError, match=f"roi_size=30 is not a multiple of the network's total stride {net.size_divisor}"
    ):
        check_roi_size(30, net)


CONFIG_SETS = [
    ["train.yaml"],
    ["train.yaml", "quick.yaml", "volume.yaml"],
    ["train.yaml", "evaluate.yaml"],
    ["train.yaml", "volume.yaml", "evaluate.yaml", "baseline.yaml"],
    ["inference.yaml"],
    ["inference.yaml", "inference_volume.yaml"],
]


@pytest.mark.parametrize("configs", CONFIG_SETS, ids=lambda c: "+".join(c))
def test_each_config_checks_its_parsed_settings_at_start_up(bundle_root: Path, configs: list[str]) -> None:
    """The first check of ``initialize`` reads the one parsed config; a bad value set in a config file (not only on
    the command line) is caught by the same table."""
    files = [str(bundle_root / "configs" / c) for c in configs]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    initialize = [i for i in parser["initialize"] if isinstance(i, dict)]
    assert initialize[0].get("_target_") == "scripts.runtime.cli.check_command_line"
    assert any("check_roi_size" in str(i) for i in parser["initialize"])
    assert "checked_settings" not in parser.get()
    check_config(parser)  # the shipped defaults pass
    settings = config_settings(parser)
    assert {"roi_size", "num_classes", "modality"} <= set(settings)
    parser["ensemble_size" if "ensemble_size" in parser else "roi_size"] = 0
    with pytest.raises(BundleError, match=r"invalid setting: (ensemble_size|roi_size)=0 is invalid"):
        check_config(parser)


def test_modalities_are_the_intensity_blocks_of_the_configs(bundle_root: Path) -> None:
    for name in ("train.yaml", "inference.yaml"):
        parser = ConfigParser(ConfigParser.load_config_files(str(bundle_root / "configs" / name)))
        assert tuple(parser["intensity"]) == MODALITIES, name


CLI_CASES = [
    ("configs/inference.yaml", ["--sampler", "dpm"], "sampler='dpm' is invalid, expected one of 'ddpm', 'ddim'"),
    ("configs/inference.yaml", ["--ensemble_size", "0"], "ensemble_size=0 is invalid, expected an integer >= 1"),
    (
        "['configs/train.yaml','configs/quick.yaml']",
        ["--roi_size", "30"],
        "roi_size=30 is not a multiple of the network's total stride 16",  # quick.yaml: 2x2 tokens
    ),
    (
        "['configs/train.yaml','configs/quick.yaml']",
        ["--batch_size", "abc"],
        "batch_size='abc' is invalid, expected an integer >= 1",
    ),
    (
        "['configs/train.yaml','configs/evaluate.yaml']",
        ["--eval_split", "testing"],
        "eval_split='testing' is invalid, expected one of 'validation', 'test'",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("configs", "args", "message"), CLI_CASES, ids=[" ".join(a) for _, a, _ in CLI_CASES])
def test_bad_settings_stop_monai_bundle_run_at_start_up_with_the_message_last(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path, configs: str, args: list[str], message: str
) -> None:
    dirs = ["--output_dir", str(tmp_path)] if "inference" in configs else ["--run_name", f"pytest_{os.getpid()}"]
    proc = bundle_cli("--config_file", configs, *args, *dirs, timeout=180)
    assert proc.returncode != 0
    line = bundle_cli.last_line(proc.stderr)
    assert line.startswith("ERROR: ") and message in line, proc.stderr[-2000:]
    assert "validated" not in proc.stdout  # stopped before any data was read or cached
    assert not (bundle_root / "runs" / f"pytest_{os.getpid()}").exists()


# -- 7. shipped weights are checked ------------------------------------------------------------------------------------
def test_truncated_shipped_weights_are_reported_as_corrupt_with_their_path(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path, committed_model: Path
) -> None:
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    shutil.copy(bundle_root / "large_files.yml", root / "large_files.yml")
    weights = root / "models" / "model.pt"
    shutil.copy(committed_model, weights)
    assert verify_weights(weights, root / "large_files.yml") is True
    weights.write_bytes(committed_model.read_bytes()[: 1 << 20])  # truncated to 1 MiB
    with pytest.raises(BundleError, match=f"{weights} is not the file listed in .*corrupt, truncated or replaced"):
        verify_weights(weights, root / "large_files.yml")

    image = sorted((bundle_root / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
    wf = bundle_workflow(
        "inference.yaml",
        workflow_type="infer",
        bundle_root=str(root),
        input=str(image),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(RuntimeError) as err:  # the default inference config checks the hash before loading
        wf.run()
    assert "corrupt, truncated or replaced" in str(err.value.__cause__ or err.value)


def test_truncated_weights_of_a_run_are_reported_as_unloadable(tmp_path: Path) -> None:
    from scripts.runtime.weights import WeightsLoader

    path = tmp_path / "model.pt"
    torch.save({"model": MedSegDiffV2(3, 1, **TINY_NET).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:2000])
    loader = WeightsLoader(load_path=str(path), load_dict={"model": MedSegDiffV2(3, 1, **TINY_NET)})
    with pytest.raises(BundleError, match=f"{path}: cannot be loaded \\(corrupt or truncated file\\?\\)"):
        loader(Engine(lambda e, b: None))
