"""Distribution: 2-process (gloo) training, the packaged bundle, weights integrity, CLI key and metadata checks."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from ignite.engine import Engine
from tiny_config import TINY_NET

from scripts.networks import MedSegDiffV2
from scripts.runtime.cli import check_command_line, unknown_override_keys
from scripts.runtime.weights import VerifiedWeightsLoader, verify_weights
from scripts.tools.package import package_bundle

if TYPE_CHECKING:
    from conftest import BundleCLI

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "schema" / "meta_schema_20240725.json"
NET = {f"network_def#{k}": v for k, v in TINY_NET.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_overrides(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", repr(v) if not isinstance(v, str) else v)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_weights(path: Path) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": MedSegDiffV2(3, 1, **TINY_NET).state_dict()}, path)
    return path


# -- multi-process training --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_gloo_processes_train_on_disjoint_data_and_only_rank0_saves(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    def recorder(engine: str, tag: str) -> str:  # appends "<tag> <epoch> <file>" for every case of every batch
        files = "e.state.batch['image'].meta['filename_or_obj']"
        seen = f"lambda e: @seen.extend(f'{tag} {{e.state.epoch}} {{pathlib.Path(f).name}}' for f in {files})"
        return f"$@{engine}.add_event_handler(ignite.engine.Events.ITERATION_STARTED, {seen})"

    def names(handlers: str) -> str:
        return f"' '.join(type(h).__name__ for h in @{handlers})"

    record = {
        "seen": "@seen",
        "train_handlers": names("train#trainer#train_handlers"),
        "val_handlers": names("validate#evaluator#val_handlers"),
        "dice": "@validate#evaluator.state.metrics['val_mean_dice']",
    }
    overlay = {
        "+imports": ["$import json", "$import pathlib"],
        "roi_size": 32,
        "batch_size": 8,
        "num_workers": 0,
        "epochs": 2,
        "val_interval": 2,
        "num_inference_steps": 2,
        "ema_momentum": 0.1,
        "ema_power": None,
        **NET,
        "ckpt_dir": f"$'{tmp_path}/models/rank' + os.environ['RANK']",  # each rank's own folder: who wrote what
        "output_dir": str(tmp_path / "runs"),
        "seen": "$[]",
        "run": [  # records the cases each rank trained and validated on, and its handlers, into rank<R>.json
            recorder("train#trainer", "train"),
            recorder("validate#evaluator", "val"),
            "$@train#trainer.run()",
            f"$pathlib.Path('{tmp_path}/rank' + str(dist.get_rank()) + '.json').write_text(json.dumps("
            + "{"
            + ", ".join(f"'{k}': {v}" for k, v in record.items())
            + "}))",
        ],
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(overlay))
    configs = f"['configs/train.yaml','configs/multi_gpu_train.yaml','{tmp_path / 'tiny.yaml'}']"
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    # CPU and gloo even on a CUDA machine (one GPU per process would need two GPUs)
    configs_args = ["-m", "monai.bundle", "run", "--config_file", configs]
    proc = bundle_cli.python(*args, *configs_args, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    datalist = json.loads((bundle_root / "data" / "demo" / "isic" / "datalist.json").read_text())
    for tag, section, epochs in (("train", "training", (1, 2)), ("val", "validation", (2,))):
        cases = {Path(c["image"]).name for c in datalist[section]}
        for epoch in epochs:
            a, b = ({line.split()[2] for line in r["seen"] if line.startswith(f"{tag} {epoch} ")} for r in ranks)
            assert a and b and not a & b, (tag, epoch, a & b)  # each rank its own share of the cases
            assert a | b == cases  # together: every case once
    first, second = ({line.split()[2] for line in ranks[0]["seen"] if line.startswith(f"train {e} ")} for e in (1, 2))
    assert first != second  # the sampler reshuffles the split every epoch
    assert ranks[0]["dice"] == ranks[1]["dice"]  # the Dice is gathered over both ranks' validation cases

    rank1 = set(ranks[1]["train_handlers"].split())
    assert {"ValidationHandler", "ResumeFromLatestCheckpoint"} <= rank1 and any(h.endswith("EMAHandler") for h in rank1)
    for saver_or_logger in ("AtomicCheckpointSaver", "LossProgressBar", "StatsHandler", "TensorBoardStatsHandler"):
        assert saver_or_logger in ranks[0]["train_handlers"].split()
        assert saver_or_logger not in ranks[1]["train_handlers"].split()
    savers_and_loggers = {"AtomicCheckpointSaver", "StatsHandler", "TensorBoardStatsHandler"}
    assert not savers_and_loggers & set(ranks[1]["val_handlers"].split())
    assert "AtomicCheckpointSaver" in ranks[0]["val_handlers"].split()

    rank0, rank1 = tmp_path / "models" / "rank0", tmp_path / "models" / "rank1"
    assert (rank0 / "model.pt").is_file() and (rank0 / "checkpoint_epoch=2.pt").is_file()
    assert not list(rank1.iterdir())  # rank 1 wrote no checkpoint
    ckpt = torch.load(rank0 / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["network"])  # saved without the DDP wrapper
    MedSegDiffV2(3, 1, **TINY_NET).load_state_dict(torch.load(rank0 / "model.pt", weights_only=True)["model"])


# -- packaging ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_packaged_bundle_unpacks_to_one_folder_and_runs_inference(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(bundle_root, src, ignore=shutil.ignore_patterns("__pycache__", "runs", "eval", "models"))
    weights = tiny_weights(src / "models" / "model.pt")
    (src / "models" / "checkpoint_epoch=3.pt").write_bytes(b"training state")  # must not ship
    (src / "runs").mkdir()
    (src / "runs" / "events.out").write_bytes(b"log")
    (src / "scripts" / "__pycache__").mkdir(exist_ok=True)
    (src / "scripts" / "__pycache__" / "x.pyc").write_bytes(b"")
    listed = {"path": "models/model.pt", "url": "", "hash_val": sha256(weights), "hash_type": "sha256"}
    (src / "large_files.yml").write_text(yaml.safe_dump({"large_files": [listed]}))

    version = json.loads((src / "configs" / "metadata.json").read_text())["version"]
    proc = bundle_cli.python(
        "-m", "scripts.tools.package", "--output", str(tmp_path / "dist" / "b.zip"), cwd=src, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "dist" / "b.zip") as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"medsegdiff_v2"}
        assert "medsegdiff_v2/models/model.pt" in names and "medsegdiff_v2/configs/inference.yaml" in names
        assert not [n for n in names if "checkpoint_epoch" in n or "/runs/" in n or "__pycache__" in n]
        zf.extractall(tmp_path / "unpacked")
    bundle = tmp_path / "unpacked" / "medsegdiff_v2"
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["version"] == version

    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir(), work.mkdir()
    image = sorted((bundle / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
    shutil.copy(image, inputs / image.name)
    # the weights loader checks large_files.yml; unknown --keys are rejected (both as the YAML lines proposed for
    # inference.yaml), which must let every override of this command through
    checked = {
        "weights_loader#_target_": "scripts.runtime.weights.VerifiedWeightsLoader",
        "weights_loader#large_files": "$@bundle_root + '/large_files.yml'",
        "+initialize": [{"_target_": "scripts.runtime.cli.check_command_line"}],
    }
    (tmp_path / "checked.yaml").write_text(yaml.safe_dump(checked))
    configs = f"['{bundle / 'configs' / 'inference.yaml'}','{tmp_path / 'checked.yaml'}']"
    fast = {"num_inference_steps": 2, "ensemble_size": 2, "roi_size": 32, **NET}
    args = ["-m", "monai.bundle", "run", "--bundle_root", str(bundle), "--config_file", configs]
    args += ["--input", str(inputs), "--output_dir", str(tmp_path / "out"), *cli_overrides(fast)]
    # from another folder: the configs put --bundle_root on sys.path themselves (no PYTHONPATH)
    proc = bundle_cli.python(*args, cwd=work, env={"PYTHONPATH": None}, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"{bundle / 'models' / 'model.pt'}: sha256 verified" in proc.stdout + proc.stderr
    assert (tmp_path / "out" / f"{image.stem}_seg.png").is_file()


@pytest.mark.slow
def test_the_real_package_holds_every_default_weight_file_and_monai_load_builds_the_network(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    """The zip of this bundle: every weight file a config uses by default, the JSON form of the configs that
    ``monai.bundle.load`` reads, volume inference with the default (hippocampus) weights from another folder, and
    ``monai.bundle.load`` returning the network with the shipped weights."""
    zip_path = package_bundle(bundle_root, tmp_path / "dist" / "b.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "unpacked")
    listed = yaml.safe_load((bundle_root / "large_files.yml").read_text())["committed_files"]
    assert {f"medsegdiff_v2/{e['path']}" for e in listed} <= names
    assert {"medsegdiff_v2/models/model.pt", "medsegdiff_v2/models/model_hippocampus.pt"} <= names
    bundle = tmp_path / "unpacked" / "medsegdiff_v2"
    for name in ("inference", "train"):
        as_json = json.loads((bundle / "configs" / f"{name}.json").read_text())
        assert as_json == yaml.safe_load((bundle / "configs" / f"{name}.yaml").read_text())

    volume = sorted((bundle / "data" / "demo" / "hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    work = tmp_path / "work"
    work.mkdir()
    configs = f"['{bundle / 'configs' / 'inference.yaml'}','{bundle / 'configs' / 'inference_volume.yaml'}']"
    args = ["-m", "monai.bundle", "run", "--bundle_root", str(bundle), "--config_file", configs, "--input", str(volume)]
    args += ["--output_dir", "out", "--num_inference_steps", "2", "--ensemble_size", "2", "--slice_batch", "64"]
    env = {"PYTHONPATH": None}
    proc = bundle_cli.python(*args, cwd=work, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"{bundle / 'models' / 'model_hippocampus.pt'}: sha256 verified" in proc.stdout + proc.stderr
    stem = volume.name.removesuffix(".nii.gz")
    assert (work / "out" / f"{stem}_seg.nii.gz").is_file()  # a relative --output_dir is the shell's folder

    downloaded = tmp_path / "downloaded"
    code = (  # as a user of a zoo bundle: download the zip, make its scripts importable, load the network
        "import sys, torch, monai.bundle as mb\n"
        f"mb.download(name='medsegdiff_v2', url={zip_path.resolve().as_uri()!r}, bundle_dir={str(downloaded)!r}, "
        "progress=False)\n"
        f"sys.path.insert(0, {str(downloaded / 'medsegdiff_v2')!r})\n"
        f"net = mb.load('medsegdiff_v2', bundle_dir={str(downloaded)!r}, workflow_type='inference', "
        "key_in_ckpt='model', device='cpu')\n"
        f"state = torch.load({str(bundle / 'models' / 'model.pt')!r}, map_location='cpu', weights_only=True)['model']\n"
        "assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items()), 'weights not loaded'\n"
        "print(type(net).__name__)\n"
    )
    proc = bundle_cli.python("-c", code, cwd=work, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("MedSegDiffV2"), proc.stderr[-3000:]


def test_packaging_refuses_weights_that_do_not_match_large_files(
    bundle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    shutil.copytree(bundle_root / "configs", src / "configs")
    tiny_weights(src / "models" / "model.pt")
    listed = {"path": "models/model.pt", "hash_val": "0" * 64}
    (src / "large_files.yml").write_text(yaml.safe_dump({"large_files": [listed]}))
    with pytest.raises(ValueError, match="model.pt is not the file listed in"):
        package_bundle(src, tmp_path / "b.zip")
    assert not (tmp_path / "b.zip").exists()
    listed["hash_val"] = sha256(src / "models" / "model.pt")
    (src / "large_files.yml").write_text(yaml.safe_dump({"large_files": [listed]}))
    monkeypatch.chdir(tmp_path)
    version = json.loads((src / "configs" / "metadata.json").read_text())["version"]
    assert package_bundle(src) == Path("dist") / f"medsegdiff_v2_{version}.zip"  # the default name
    assert zipfile.ZipFile(tmp_path / "dist" / f"medsegdiff_v2_{version}.zip").namelist()


# -- weights integrity -------------------------------------------------------------------------------------------------
def test_tampered_weights_are_refused_and_intact_weights_load(tmp_path: Path) -> None:
    weights = tiny_weights(tmp_path / "models" / "model.pt")
    expected = sha256(weights)
    large_files = tmp_path / "large_files.yml"
    entry = {"path": "models/model.pt", "url": "https://example.org/model.pt", "hash_val": expected}
    large_files.write_text(yaml.safe_dump({"large_files": [{**entry, "hash_type": "sha256"}]}))

    assert verify_weights(weights, large_files) is True
    assert verify_weights(tiny_weights(tmp_path / "other.pt"), large_files) is False  # not listed: not checked
    assert verify_weights(weights, tmp_path / "missing.yml") is False

    net = MedSegDiffV2(3, 1, **TINY_NET)
    loader = VerifiedWeightsLoader(load_path=str(weights), load_dict={"model": net}, large_files=str(large_files))
    loader(Engine(lambda e, b: None))  # intact: loads
    saved = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())

    state = torch.load(weights, weights_only=True)
    state["model"]["condition_model.head.2.weight"].add_(1e-3)  # a subtly altered file
    torch.save(state, weights)
    actual = sha256(weights)
    for check in (lambda: verify_weights(weights, large_files), lambda: loader(Engine(lambda e, b: None))):
        with pytest.raises(ValueError) as err:
            check()
        message = str(err.value)
        assert str(weights) in message and expected in message and actual in message and "sha256" in message


# -- command line and metadata -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_override_keys_are_named_with_close_matches(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    configs = [str(bundle_root / "configs" / c) for c in ("train.yaml", "quick.yaml")]
    keys = ["learning_rate", "learning_rte", "network_def#channels", "train::dataloader::batch_size", "+train#handlers"]
    assert unknown_override_keys(configs, keys) == ["learning_rte"]
    assert unknown_override_keys(configs, ["run_name", "tracking_uri"], tracking="mlflow") == []
    argv = ["run", "--config_file", repr(configs), "--learning_rte", "1e-3", "--epochs=3", "--resume", "True"]
    with pytest.raises(ValueError, match=r"--learning_rte \(did you mean --learning_rate[,?]"):
        check_command_line(argv)
    check_command_line(["run", "--config_file", repr(configs), "--learning_rate", "1e-3", "--epochs=3"])
    check_command_line(["run", "--config-file", repr(configs), "--meta-file", "None", "--epochs", "2"])
    check_command_line(["verify_metadata", "--learning_rte", "1"])  # not `monai.bundle run`: nothing to check
    check_command_line()  # this process (pytest) is not `python -m monai.bundle`: nothing to check
    args_file = tmp_path / "args.yaml"
    args_file.write_text(yaml.safe_dump({"config_file": configs, "epocs": 3}))
    with pytest.raises(ValueError, match="--epocs"):
        check_command_line(["run", "--args_file", str(args_file)])

    overlay = tmp_path / "checked.yaml"  # the initialize line proposed for the bundle configs
    overlay.write_text(yaml.safe_dump({"+initialize": [{"_target_": "scripts.runtime.cli.check_command_line"}]}))
    configs_arg = f"['configs/inference.yaml','{overlay}']"
    proc = bundle_cli("--config_file", configs_arg, "--ensemble_sise", "3", timeout=180)
    assert proc.returncode != 0
    assert "unknown config key(s) on the command line: --ensemble_sise (did you mean --ensemble_size" in proc.stderr


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"no metadata schema at {SCHEMA}")
@pytest.mark.slow
def test_metadata_failing_the_schema_gives_a_clear_error(
    bundle_root: Path, bundle_cli: BundleCLI, tmp_path: Path
) -> None:
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    del meta["version"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    args = ["-m", "monai.bundle", "verify_metadata", "--meta_file", str(bad), "--filepath", str(SCHEMA)]
    proc = bundle_cli.python(*args, cwd=tmp_path, timeout=180)
    assert proc.returncode != 0
    assert "ValueError: 'version' is a required property" in proc.stderr
    assert "Failed validating against schema" in proc.stderr
