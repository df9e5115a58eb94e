"""Nothing lost, nothing silent in training: the run folder stays inside runs/ and out of the shipped models/, one
training per run folder, the record beside model.pt that resume trusts, resume refusing changed settings, hash checks
of init_weights, file modes under the umask, and one ``ERROR:`` line for every failure."""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.metrics import DiceMetric
from tiny_config import TINY_NET

from scripts.networks import MedSegDiffV2
from scripts.runtime.checkpoints import AtomicCheckpointSaver
from scripts.runtime.cli import unknown_override_keys
from scripts.runtime.errors import BundleError, bundle_error_in, install_error_summary
from scripts.runtime.records import ModelRecord
from scripts.runtime.resume import ResumeFromLatestCheckpoint, latest_checkpoint
from scripts.runtime.runs import RunLock, check_run_dirs
from scripts.runtime.settings import check_settings
from scripts.runtime.weights import InitialWeightsLoader, WeightsLoader

if TYPE_CHECKING:
    from conftest import BundleCLI

TRAIN_QUICK = "['configs/train.yaml','configs/quick.yaml']"


def message(err: BaseException) -> str:
    found = bundle_error_in(err)
    assert found is not None, repr(err)
    return str(found)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def error_hook(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, bundle_cli: BundleCLI
) -> Callable[[BaseException], str]:
    """The last stderr line that the hook installed by ``monai.bundle run`` prints for an uncaught ``exc``."""
    monkeypatch.setattr(sys, "excepthook", lambda *a: None)  # the usual traceback: left out
    install_error_summary()

    def last(exc: BaseException) -> str:
        capsys.readouterr()
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return bundle_cli.last_line(capsys.readouterr().err)

    return last


# -- the run folder: inside runs/, never the shipped models/ -----------------------------------------------------------
CLI_REFUSALS = [
    (["--run_name", ".."], "run_name='..' is invalid, expected a plain folder name"),
    (["--ckpt_dir", "models"], "ERROR: ckpt_dir: models is inside"),
    (["--seed", "-1"], "seed=-1 is invalid, expected an integer in [0, 4294967295]"),
    (["--network_def#bogus", "1"], "--network_def#bogus (MedSegDiffV2 has no argument 'bogus'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expected"), CLI_REFUSALS, ids=[" ".join(a) for a, _ in CLI_REFUSALS])
def test_bad_run_folder_seed_or_network_argument_stops_at_start_up_with_an_error_line(
    bundle_root: Path, bundle_cli: BundleCLI, args: list[str], expected: str
) -> None:
    models = bundle_root / "models"
    before = tree(models)
    name = f"pytest_safety_{os.getpid()}"
    run_name = [] if "--run_name" in args else ["--run_name", name]
    proc = bundle_cli("--config_file", TRAIN_QUICK, *run_name, *args, timeout=180)
    assert proc.returncode != 0
    line = bundle_cli.last_line(proc.stderr)
    assert line.startswith("ERROR: ") and expected in line, proc.stderr[-2000:]
    assert "validated" not in proc.stdout  # before any data was read
    assert tree(models) == before  # nothing written into the shipped weights' folder
    assert not (bundle_root / "runs" / name).exists() and not (bundle_root / "logs").exists()


def test_run_folder_must_stay_inside_runs_and_out_of_the_shipped_models(bundle_root: Path, tmp_path: Path) -> None:
    check_run_dirs(bundle_root, "train", ckpt_dir=tmp_path / "m", output_dir=bundle_root / "runs" / "train" / "logs")
    for name in ("..", ".", "", "a/b", "a\\b"):
        with pytest.raises(BundleError, match="run_name="):
            check_settings({"run_name": name})
    with pytest.raises(BundleError, match=r"^output_dir: .* is inside .*models, the bundle's folder of shipped"):
        check_run_dirs(bundle_root, "train", output_dir=bundle_root / "models" / "logs")
    with pytest.raises(BundleError, match=r"^ckpt_dir: "):
        check_run_dirs(bundle_root, "train", ckpt_dir=bundle_root / "runs" / ".." / "models")
    root = tmp_path / "bundle"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "escape").symlink_to(tmp_path)  # a run folder that is a link out of runs/
    with pytest.raises(BundleError, match=r"^run_name: 'escape' resolves to .*, outside"):
        check_run_dirs(root, "escape")


# -- one training per run folder ---------------------------------------------------------------------------------------
def test_a_second_training_on_a_held_run_folder_stops_at_once_naming_the_holder(
    train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path
) -> None:
    holder = RunLock(tmp_path / "models")
    holder.acquire()
    try:
        with pytest.raises(RuntimeError) as err:
            train_workflow(tmp_path, "quick.yaml")
        assert message(err.value) == (
            f"{tmp_path / 'models'}: another training holds this run folder (pid {os.getpid()}); wait for it to end, "
            "or choose another --run_name"
        )
    finally:
        holder.release()
    wf = train_workflow(tmp_path, "quick.yaml")  # free again
    lock = wf.parser.get_parsed_content("train#run_lock")
    assert lock.held and (tmp_path / "models" / ".lock").read_text().strip() == str(os.getpid())
    wf.finalize()  # released at the end of the run
    assert not lock.held
    again = RunLock(tmp_path / "models")
    again.acquire()
    again.release()


@pytest.mark.slow
def test_two_trainings_of_one_run_folder_the_second_ends_with_the_error_line(
    bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with open(models / ".lock", "w") as held:  # another training, as a lock holder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        proc = bundle_cli("--config_file", TRAIN_QUICK, "--ckpt_dir", str(models), "--output_dir", str(tmp_path))
    assert proc.returncode != 0
    expected = f"ERROR: {models}: another training holds this run folder (pid 4242)"
    assert bundle_cli.last_line(proc.stderr).startswith(expected), proc.stderr[-2000:]
    assert "validated" not in proc.stdout
    assert sorted(p.name for p in models.iterdir()) == [".lock"]


# -- the record beside model.pt ----------------------------------------------------------------------------------------
def scored_engine(scores: Iterator[float]) -> Engine:
    """An evaluator whose key metric ``dice`` takes the next of ``scores`` each epoch."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def metric(e: Engine) -> None:
        e.state.metrics["dice"] = next(scores)

    return engine


def best_saver(folder: Path, net: torch.nn.Module) -> AtomicCheckpointSaver:
    return AtomicCheckpointSaver(
        folder, {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )


def train_and_kill_after_a_new_best(folder: Path, kill: Callable[[], None] | None = None) -> tuple[dict, bytes]:
    """Epoch 1 scores 0.5 (its checkpoint state is returned), epoch 2 scores 0.9 with ``kill`` armed during that
    write; the run ends before the checkpoint of epoch 2. Returns the checkpoint state and the model file of 0.5."""
    net = torch.nn.Linear(2, 1)
    saver = best_saver(folder, net)
    engine = scored_engine(iter([0.5, 0.9]))
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    checkpoint, first = saver.state_dict(), (folder / "model.pt").read_bytes()
    with torch.no_grad():
        net.weight.add_(1.0)
    if kill is not None:
        kill()
    try:
        engine.run([0], max_epochs=2)
    except OSError:
        pass
    return checkpoint, first


def resume_and_score(folder: Path, checkpoint: dict, score: float) -> AtomicCheckpointSaver:
    """A resumed run: the saver restored from ``checkpoint``, then its record; one validation scoring ``score``."""
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(7.0)
    saver = best_saver(folder, net)
    saver.load_state_dict(checkpoint)
    engine = scored_engine(iter([score]))
    saver.attach(engine)
    saver.restore_record()
    engine.run([0], max_epochs=1)
    return saver


def test_a_best_written_after_the_last_checkpoint_is_not_replaced_by_a_worse_resumed_score(tmp_path: Path) -> None:
    checkpoint, _ = train_and_kill_after_a_new_best(tmp_path)
    best = (tmp_path / "model.pt").read_bytes()
    record = json.loads((tmp_path / "model.json").read_text())
    assert {k: record[k] for k in ("file", "metric", "score", "epoch")} == {
        "file": "model.pt",
        "metric": "dice",
        "score": 0.9,
        "epoch": 2,
    }
    assert "pending" not in record and len(record["sha256"]) == 64
    saver = resume_and_score(tmp_path, checkpoint, 0.7)  # the checkpoint still says 0.5
    assert (tmp_path / "model.pt").read_bytes() == best
    assert (saver.engine.state.best_metric, saver.engine.state.best_metric_epoch) == (0.9, 2)
    assert saver.state_dict()["best"] == [(0.9, "model.pt")]


def test_a_kill_between_model_pt_and_its_record_keeps_the_new_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill() -> None:
        def killed(self, entry) -> None:
            raise OSError("killed after model.pt, before its record")

        monkeypatch.setattr(ModelRecord, "commit", killed)

    checkpoint, _ = train_and_kill_after_a_new_best(tmp_path, kill)
    monkeypatch.undo()
    best = (tmp_path / "model.pt").read_bytes()
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["score"] == 0.5 and record["pending"]["score"] == 0.9  # the record still describes the old file
    saver = resume_and_score(tmp_path, checkpoint, 0.7)
    assert (tmp_path / "model.pt").read_bytes() == best
    assert saver.engine.state.best_metric == 0.9


def test_a_kill_before_model_pt_was_replaced_keeps_the_old_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def kill() -> None:
        def killed(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            raise OSError("killed while writing model.pt")

        monkeypatch.setattr(torch, "save", killed)

    checkpoint, first = train_and_kill_after_a_new_best(tmp_path, kill)
    monkeypatch.undo()
    assert (tmp_path / "model.pt").read_bytes() == first  # the atomic write kept the old file
    saver = resume_and_score(tmp_path, checkpoint, 0.7)  # 0.7 beats the 0.5 of the file on disk
    assert (tmp_path / "model.pt").read_bytes() != first
    assert saver.state_dict()["best"] == [(0.7, "model.pt")]
    assert json.loads((tmp_path / "model.json").read_text())["score"] == 0.7


def test_a_model_pt_replaced_by_hand_is_refused_on_resume(tmp_path: Path) -> None:
    checkpoint, _ = train_and_kill_after_a_new_best(tmp_path)
    torch.save({"model": torch.nn.Linear(2, 1).state_dict()}, tmp_path / "model.pt")
    with pytest.raises(BundleError, match=r"model.pt: not the file its record model.json describes"):
        resume_and_score(tmp_path, checkpoint, 0.7)


@pytest.mark.slow
def test_time_budget_stop_then_resume_compares_with_the_last_validation_not_the_stale_checkpoint(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The budget stops epoch 1 between val_intervals: the checkpoint is written, then the last validation writes
    model.pt. The resumed run scores worse and must keep it."""
    models = tmp_path / "models"
    first = run_recording(train_workflow(tmp_path, "quick.yaml", epochs=3, val_interval=5, time_budget_s=0))
    assert first["trainer_epoch"] == 1
    ckpt = torch.load(latest_checkpoint(models), weights_only=True)
    assert ckpt["best_model"]["best_metric"] == -1  # written before that validation
    best = (models / "model.pt").read_bytes()

    wf = train_workflow(tmp_path, "quick.yaml", epochs=2, val_interval=5, time_budget_s=0, resume=True)
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    monkeypatch.setattr(DiceMetric, "aggregate", lambda self, *a, **k: torch.tensor(0.0))  # a worse continuation
    second = run_recording(wf)
    assert second["epochs"] == [2] and second["dice"] == 0.0
    assert (models / "model.pt").read_bytes() == best
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (pytest.approx(first["dice"]), 1)
    record = json.loads((models / "model.json").read_text())
    assert (record["score"], record["epoch"], record["iteration"]) == (pytest.approx(first["dice"]), 1, 4)
    assert record["settings"]["roi_size"] == 32 and record["settings"]["network_def"]["class"] == "MedSegDiffV2"


# -- resume refuses changed settings; the learning rate --------------------------------------------------------------
@pytest.mark.slow
def test_resume_refuses_a_changed_architecture_or_resolution_naming_the_key_and_both_values(
    train_workflow: Callable[..., ConfigWorkflow], run_recording: Callable[[ConfigWorkflow], dict], tmp_path: Path
) -> None:
    run_recording(train_workflow(tmp_path, "quick.yaml"))
    models = tmp_path / "models"
    checkpoint = latest_checkpoint(models)
    refusals = [
        ({"roi_size": 64}, "roi_size: the run was trained with 32, this configuration has 64. Resume needs the "),
        ({"preset": "paper"}, "preset: the run was trained with 'small', this configuration has 'paper'"),
        ({"network_def#channels": [8, 16, 32]}, "network_def: the run's network is MedSegDiffV2 with "),
    ]
    for overrides, expected in refusals:
        wf = train_workflow(tmp_path, "quick.yaml", epochs=2, resume=True, **overrides)
        with pytest.raises(RuntimeError) as err:
            wf.run()
        wf.parser.get_parsed_content("train#run_lock").release()
        assert message(err.value).startswith(expected), message(err.value)
        assert "Error(s) in loading state_dict" not in message(err.value)
    assert "shape mismatches" in message(err.value)  # the network's weights: which tensors differ

    # no checkpoint yet (stopped before its first write): the record beside model.pt holds the settings
    checkpoint.unlink()
    wf = train_workflow(tmp_path, "quick.yaml", epochs=2, resume=True, roi_size=64)
    with pytest.raises(RuntimeError) as err:
        wf.run()
    wf.parser.get_parsed_content("train#run_lock").release()
    assert message(err.value).startswith("roi_size: the run was trained with 32, this configuration has 64")
    assert f"({models / 'model.json'})" in message(err.value)


@pytest.mark.slow
def test_resume_of_a_checkpoint_without_settings_and_other_weights_says_what_differs(
    train_workflow: Callable[..., ConfigWorkflow], run_recording: Callable[[ConfigWorkflow], dict], tmp_path: Path
) -> None:
    run_recording(train_workflow(tmp_path, "quick.yaml"))
    models = tmp_path / "models"
    path = latest_checkpoint(models)
    ckpt = torch.load(path, weights_only=True)
    ckpt.pop("settings", None)  # an earlier version's checkpoint
    torch.save(ckpt, path)
    (models / "model.json").unlink(missing_ok=True)
    wf = train_workflow(tmp_path, "quick.yaml", epochs=2, resume=True, **{"network_def#channels": [8, 16, 32]})
    with pytest.raises(RuntimeError) as err:
        wf.run()
    assert message(err.value).startswith(f"{path}: cannot resume, its network does not fit the configured network")
    assert "shape mismatches" in message(err.value)


@pytest.mark.slow
def test_resume_applies_the_configured_learning_rate_and_logs_it(
    train_workflow: Callable[..., ConfigWorkflow],
    run_recording: Callable[[ConfigWorkflow], dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    run_recording(train_workflow(tmp_path, "quick.yaml", val_interval=5))
    wf = train_workflow(tmp_path, "quick.yaml", val_interval=5, epochs=2, resume=True, learning_rate=0.5)
    optimizer = wf.parser.get_parsed_content("optimizer")
    at_start: list[float] = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_STARTED(once=5), lambda e: at_start.extend(g["lr"] for g in optimizer.param_groups)
    )
    capsys.readouterr()
    run_recording(wf)
    assert at_start == [0.5]
    assert "optimizer: the configured learning rate [0.5] replaces the checkpoint's [0.0001]" in capsys.readouterr().out


# -- weights: hash check of init_weights, plain weights files, modes under the umask -----------------------------------
def tiny_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": MedSegDiffV2(3, 1, **TINY_NET).state_dict()}, path)
    return path


def test_init_weights_listed_in_large_files_must_match_their_hash(
    train_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    shipped = tiny_weights(root / "models" / "model.pt", seed=0)
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    listed = {"path": "models/model.pt", "hash_val": digest, "hash_type": "sha256"}
    (root / "large_files.yml").write_text(yaml.safe_dump({"large_files": [], "committed_files": [listed]}))
    tiny_weights(shipped, seed=1)  # replaced by another valid checkpoint
    wf = train_workflow(
        tmp_path,
        "quick.yaml",
        bundle_root=str(root),
        dataset_dir=str(bundle_root / "data" / "demo" / "isic"),
        init_weights=str(shipped),
    )
    with pytest.raises(RuntimeError) as err:
        wf.run()
    assert message(err.value).startswith(f"{shipped} is not the file listed in {root / 'large_files.yml'}")
    assert not (tmp_path / "models" / "model.pt").exists()


def test_a_file_with_pickled_objects_is_named_as_such_not_as_corrupt(tmp_path: Path) -> None:
    net = MedSegDiffV2(3, 1, **TINY_NET)
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"network": net.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    expected = rf"^{path}: not a plain weights file: it holds a pickled Python object \(argparse.Namespace\)"
    resume = ResumeFromLatestCheckpoint(tmp_path, {"network": net})
    engine = Engine(lambda e, b: None)
    resume.attach(engine)
    with pytest.raises(BundleError, match=expected):
        resume(engine)
    for loader in (
        WeightsLoader(load_path=str(path), load_dict={"model": net}),
        InitialWeightsLoader(str(path), net),
    ):
        with pytest.raises(BundleError, match=expected):
            loader(engine)


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644)])
def test_weights_checkpoints_and_record_get_the_mode_of_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    net = torch.nn.Linear(2, 1)
    trainer, evaluator = Engine(lambda e, b: None), scored_engine(iter([0.5]))
    best = best_saver(tmp_path, net)
    interval = AtomicCheckpointSaver(tmp_path, {"network": net, "best_model": best}, save_interval=1, engine_key="t")
    best.attach(evaluator)
    interval.attach(trainer)
    previous = os.umask(umask)
    try:
        evaluator.run([0], max_epochs=1)
        trainer.run([0], max_epochs=1)
    finally:
        os.umask(previous)
    files = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert files == {"model.pt": mode, "model.json": mode, "checkpoint_epoch=1.pt": mode}


# -- full disk, read-only file system: one ERROR line ----------------------------------------------------------------
@pytest.mark.slow
def test_a_full_disk_during_training_ends_with_the_file_and_the_reason(
    train_workflow: Callable[..., ConfigWorkflow],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error_hook: Callable[[BaseException], str],
) -> None:
    wf = train_workflow(tmp_path, "quick.yaml", val_interval=5)

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RuntimeError) as err:
        wf.run()
    line = error_hook(err.value)
    assert line.startswith(f"ERROR: {tmp_path / 'models' / 'checkpoint_epoch=1.pt'}: no space left on the device")
    assert not list((tmp_path / "models").glob("tmp*")) and not list((tmp_path / "models").glob("*.pt"))


def test_a_full_disk_seen_by_torchs_writer_names_the_file_and_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(obj, f, *args, **kwargs):  # what torch raises when the device fills up during the write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    saver = AtomicCheckpointSaver(tmp_path, {"network": torch.nn.Linear(2, 1)}, save_interval=1)
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    with pytest.raises(BundleError, match=rf"^{tmp_path / 'network_epoch=1.pt'}: cannot write: RuntimeError: .* MiB "):
        engine.run([0], max_epochs=1)


@pytest.mark.slow
def test_a_read_only_file_system_ends_with_the_folder_and_the_reason(bundle_cli: BundleCLI, tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    prelude = (
        "import errno, os, pathlib\n"
        "real_mkdir = pathlib.Path.mkdir\n"
        "def mkdir(self, *a, **k):\n"
        f"    if str(self).startswith({str(read_only)!r}):\n"
        "        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))\n"
        "    return real_mkdir(self, *a, **k)\n"
        "pathlib.Path.mkdir = mkdir\n"
    )
    args = ["--config_file", TRAIN_QUICK, "--ckpt_dir", str(read_only / "models"), "--output_dir", str(tmp_path)]
    proc = bundle_cli(*args, prelude=prelude, timeout=180)
    assert proc.returncode != 0
    expected = f"ERROR: {read_only / 'models'}: cannot create the run folder: read-only file system"
    assert bundle_cli.last_line(proc.stderr).startswith(expected), proc.stderr[-2000:]


def test_every_uncaught_failure_ends_with_one_error_line(error_hook: Callable[[BaseException], str]) -> None:
    def chained(inner: BaseException, outer: str) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as e:
                raise RuntimeError(outer) from e
        except RuntimeError as e:
            return e

    denied = OSError(errno.EACCES, "Permission denied", "/data/run/logs")
    assert error_hook(chained(denied, "Failed to evaluate ConfigExpression")) == (
        "ERROR: /data/run/logs: permission denied: write the run to a folder you may write (--ckpt_dir/--output_dir)"
    )
    bogus = TypeError("MedSegDiffV2 got unknown arguments ['bogus']")
    outer = "Failed to instantiate component 'scripts.networks.MedSegDiffV2' with keywords: bogus"
    assert error_hook(chained(bogus, outer)) == (
        "ERROR: scripts.networks.MedSegDiffV2: MedSegDiffV2 got unknown arguments ['bogus']"
    )
    assert error_hook(chained(BundleError("x.yaml: bad"), "wrapped")) == "ERROR: x.yaml: bad"


def test_unknown_arguments_of_a_component_are_unknown_keys(bundle_root: Path) -> None:
    configs = [str(bundle_root / "configs" / c) for c in ("train.yaml", "quick.yaml")]
    keys = ["network_def#channels", "network_def#bogus", "train#trainer#amp", "train#trainer#amq"]
    assert unknown_override_keys(configs, keys) == ["network_def#bogus", "train#trainer#amq"]
