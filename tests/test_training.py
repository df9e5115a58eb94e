"""The training workflow run through monai.bundle on the embedded real data, with tiny overrides."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from tiny_config import TINY_TRAINING

from scripts.runtime.checkpoints import AtomicCheckpointSaver
from scripts.runtime.errors import BundleError
from scripts.runtime.resume import latest_checkpoint


@pytest.mark.slow
def test_2d_binary_training_writes_checkpoints_and_validation_dice(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
) -> None:
    wf = train_workflow(tmp_path, "quick.yaml")
    assert not wf.check_properties(), wf.check_properties()  # model-zoo required keys are present
    rec = run_recording(wf)
    assert len(rec["losses"]) == 4 and all(torch.isfinite(torch.as_tensor(rec["losses"])))
    assert 0.0 <= rec["dice"] <= 1.0
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    net = wf.parser.get_parsed_content("network_def")
    net.load_state_dict(model["model"])  # the best checkpoint holds the (EMA) network weights, as the shipped file
    ckpt = torch.load(latest_checkpoint(tmp_path / "models"), map_location="cpu", weights_only=True)
    assert {"network", "ema", "optimizer", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 4 and ckpt["trainer"]["epoch_length"] == 4
    assert (tmp_path / "logs").is_dir() and any((tmp_path / "logs").iterdir())  # TensorBoard events


@pytest.mark.slow
def test_3d_multiclass_volumes_are_sliced_and_validated_as_volumes(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
) -> None:
    wf = train_workflow(tmp_path, "quick.yaml", "volume.yaml", batch_size=2, slices_per_volume=2)
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    # 2.5D by default for volumes (context_slices 1): the slice and its two neighbours as channels
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4, 2, 32, 32)
    val = next(iter(wf.parser.get_parsed_content("validate#dataloader")))
    assert val["image"].ndim == 5 and val["label"].shape[1] == 2  # whole volume, one-hot
    rec = run_recording(wf)
    assert rec["trainer_epoch"] == 1 and 0.0 <= rec["dice"] <= 1.0
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.parametrize("overlays", [("quick.yaml",), ("quick.yaml", "volume.yaml")])
def test_augment_transforms_images_and_keeps_labels_binary(
    train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path, overlays: tuple[str, ...]
) -> None:
    """augment: rotation, scaling and intensity after the flips; the labels stay one-hot masks of the same shape."""
    plain = train_workflow(tmp_path / "plain", *overlays, num_workers=0)
    augmented = train_workflow(tmp_path / "augmented", *overlays, num_workers=0, augment=True)
    assert len(augmented.parser.get_parsed_content("train#random")) == len(
        plain.parser.get_parsed_content("train#random")
    ) + len(augmented.parser["train"]["augmentation"])
    a, b = (next(iter(wf.parser.get_parsed_content("train#dataloader"))) for wf in (plain, augmented))
    assert a["image"].shape == b["image"].shape and a["label"].shape == b["label"].shape
    assert not torch.equal(a["image"], b["image"])
    assert torch.isfinite(b["image"]).all() and set(b["label"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_same_seed_same_first_epoch_loss(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
) -> None:
    a = run_recording(train_workflow(tmp_path / "a", "quick.yaml", val_interval=5))
    b = run_recording(train_workflow(tmp_path / "b", "quick.yaml", val_interval=5))
    c = run_recording(train_workflow(tmp_path / "c", "quick.yaml", val_interval=5, seed=1))
    assert a["losses"] == b["losses"]
    assert a["losses"] != c["losses"]


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
) -> None:
    first = run_recording(train_workflow(tmp_path, "quick.yaml", val_interval=5))
    assert first["epochs"] == [1]
    saved = torch.load(latest_checkpoint(tmp_path / "models"), map_location="cpu", weights_only=True)
    wf = train_workflow(tmp_path, "quick.yaml", val_interval=5, epochs=2, resume=True)
    net, trainer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("train#trainer")
    at_start: dict = {}

    def snapshot(engine) -> None:
        if not at_start:
            at_start.update({k: v.clone() for k, v in net.state_dict().items()}, iteration=engine.state.iteration)

    trainer.add_event_handler(Events.ITERATION_STARTED, snapshot)
    second = run_recording(wf)
    assert second["epochs"] == [2]  # epoch 1 is not repeated
    assert second["trainer_epoch"] == 2
    assert latest_checkpoint(tmp_path / "models").name == "checkpoint_epoch=2.pt"
    assert not (tmp_path / "models" / "checkpoint_epoch=1.pt").exists()  # n_saved=1, replaced after the new one
    # the resumed run started from the saved weights and iteration count, not from a fresh initialisation
    assert at_start.pop("iteration") == len(first["losses"]) + 1
    assert all(torch.equal(saved["network"][k], v) for k, v in at_start.items())
    fresh = run_recording(train_workflow(tmp_path / "fresh", "quick.yaml", val_interval=5, epochs=2))
    assert fresh["epochs"] == [1, 2]


@pytest.mark.slow
def test_init_weights_starts_the_network_and_its_ema_from_given_weights(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
) -> None:
    run_recording(train_workflow(tmp_path / "first", "quick.yaml", val_interval=1))
    weights = tmp_path / "first" / "models" / "model.pt"
    given = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    wf = train_workflow(tmp_path / "tuned", "quick.yaml", val_interval=5, init_weights=str(weights))
    net, ema = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("train#ema").ema_model
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert not all(torch.equal(given[k], v) for k, v in fresh.items())
    at_start: list[dict] = []
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_STARTED,
        lambda e: at_start or at_start.extend([{k: v.clone() for k, v in m.state_dict().items()} for m in (net, ema)]),
    )
    run_recording(wf)
    for state in at_start:
        assert all(torch.equal(given[k], v) for k, v in state.items())


def test_resume_rejects_the_string_false(train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="resume='false' is invalid, expected True or False"):  # before any data
        train_workflow(tmp_path, "quick.yaml", resume="false")


def test_checkpoint_write_is_atomic_and_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing a new checkpoint leaves the previous one intact, loadable, and no partial file."""
    from ignite.engine import Engine

    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": net}, save_interval=1, n_saved=1, engine_key="trainer"
    )
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = tmp_path / "checkpoint_epoch=1.pt"
    before = first.read_bytes()
    assert set(torch.load(first, weights_only=True)) == {"network", "trainer"}

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("killed while writing")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="killed while writing"):
        engine.run([0], max_epochs=2)
    assert first.read_bytes() == before  # the previous checkpoint survives
    assert not (tmp_path / "checkpoint_epoch=2.pt").exists()  # no half-written file under the final name
    assert latest_checkpoint(tmp_path) == first  # what a resumed run loads


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(training=[]), "section 'training' is empty"),
        (lambda d: d["training"][0].update(image="missing.jpg"), "file not found"),
        (lambda d: d["validation"][0].update(label=d["training"][0]["image"]), "label has 3 channels"),
    ],
)
def test_bad_datalist_stops_before_training_without_touching_outputs(
    train_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path, mutate, message: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(bundle_root / "data" / "demo" / "isic", data)
    datalist = json.loads((data / "datalist.json").read_text())
    mutate(datalist)
    (data / "datalist.json").write_text(json.dumps(datalist))
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"earlier work")
    wf = train_workflow(tmp_path, "quick.yaml", dataset_dir=str(data))
    with pytest.raises(RuntimeError) as err:
        wf.run()
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any(message in c for c in chain), chain
    assert (models / "model.pt").read_bytes() == b"earlier work"
    assert not list((tmp_path / "models").glob("checkpoint*"))


@pytest.mark.slow
def test_tracking_with_mlflow_records_the_run(bundle_root: Path, tmp_path: Path) -> None:
    import mlflow
    from monai.bundle import run

    run(
        config_file=[str(bundle_root / "configs" / "train.yaml"), str(bundle_root / "configs" / "quick.yaml")],
        meta_file=str(bundle_root / "configs" / "metadata.json"),
        logging_file=str(bundle_root / "configs" / "logging.conf"),
        tracking="mlflow",
        bundle_root=str(bundle_root),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        **TINY_TRAINING,
    )
    db = tmp_path / "runs" / "mlruns.db"
    assert db.is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs, "no MLflow run recorded"
    metrics = set().union(*(r.data.metrics for r in runs))
    assert "train_loss" in metrics and "val_mean_dice" in metrics, metrics


@pytest.mark.slow
def test_2_5d_training_gives_each_slice_its_neighbours_as_channels(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
) -> None:
    """context_slices through monai.bundle: 3 slices per MR channel into a 3-channel network, validated on whole
    volumes (which the sampler slices with the same context)."""
    wf = train_workflow(tmp_path, "quick.yaml", "volume.yaml", batch_size=2, slices_per_volume=2, context_slices=1)
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4, 2, 32, 32)
    assert wf.parser.get_parsed_content("network_def").in_channels == 3
    rec = run_recording(wf)
    assert rec["trainer_epoch"] == 1 and 0.0 <= rec["dice"] <= 1.0
