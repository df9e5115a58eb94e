"""Shared test setup: the bundle root on sys.path (as `monai.bundle run` does), the embedded data, the bundle's
workflows built from its configs as `monai.bundle run` builds them, and its command line run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from tiny_config import TINY_TRAINING

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"

if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))

from scripts.runtime.settings import check_config  # noqa: E402  (the bundle root is on sys.path now)


@pytest.fixture(scope="session", autouse=True)
def _in_bundle_root() -> Iterator[None]:
    """Tests run from the bundle root, as `monai.bundle run` does: the training configs' ``%configs/...`` macros
    resolve against the working directory."""
    previous = Path.cwd()
    os.chdir(BUNDLE)
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE


class BundleCLI:
    """The bundle's commands as the README runs them, each in a subprocess: this interpreter, from the bundle root
    unless ``cwd`` is given, one OpenMP thread, output captured as text."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def python(
        self,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str | None] | None = None,
        timeout: float = 300,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """``python *args``; ``env``: variables set for that process, a ``None`` value unsets one (``PYTHONPATH``)."""
        environ = {**os.environ, "OMP_NUM_THREADS": "1"}
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root if cwd is None else cwd,
            env=environ,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=check,
        )

    def __call__(
        self, *args: str, prelude: str = "", timeout: float = 300, **kwargs: Any
    ) -> subprocess.CompletedProcess:
        """``python -m monai.bundle run *args``; ``prelude``: Python run first in that process (a simulated fault), then
        monai.bundle as ``-m`` runs it."""
        command = ["-m", "monai.bundle"]
        if prelude:
            code = (
                f"import runpy, sys\n{prelude}\nrunpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
            )
            command = ["-c", code]
        return self.python(*command, "run", *args, timeout=timeout, **kwargs)

    @staticmethod
    def last_line(text: str) -> str:
        """The last non-empty line of ``text`` (where the bundle's ``ERROR:`` summary goes)."""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def bundle_cli() -> BundleCLI:
    """``bundle_cli(*args)``: ``python -m monai.bundle run *args`` from the bundle root; ``bundle_cli.python(*args)``:
    any other command of this interpreter (``-m scripts...``, ``-c ...``); ``bundle_cli.last_line(text)``."""
    return BundleCLI(BUNDLE)


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The small embedded demo datasets (``isic/`` 2D, ``hippocampus/`` 3D), each with a ``datalist.json``."""
    return BUNDLE / "data" / "demo"


@pytest.fixture(scope="session")
def committed_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``committed_file("models/model.pt")``: that bundle file as committed (git ``HEAD``), never what a local run left
    in the working tree; the working-tree file where the bundle is not a git checkout (e.g. an unpacked package)."""

    def get(relative: str) -> Path:
        git = ["git", "show", f"HEAD:{(BUNDLE / relative).relative_to(REPO).as_posix()}"]
        try:
            blob = subprocess.run(git, cwd=REPO, capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return BUNDLE / relative
        path = tmp_path_factory.mktemp("committed") / Path(relative).name
        path.write_bytes(blob)
        return path

    return get


@pytest.fixture(scope="session")
def committed_model(committed_file: Callable[[str], Path]) -> Path:
    """The shipped 2D weights ``models/model.pt`` as committed."""
    return committed_file("models/model.pt")


@pytest.fixture
def bundle_workflow() -> Callable[..., ConfigWorkflow]:
    """Builds and initialises a ``ConfigWorkflow`` from configs named relative to ``configs/`` (merged left to right)
    with ``overrides``, the bundle root set as in a ``monai.bundle run`` from it."""

    def build(
        *configs: str, workflow_type: str = "train", meta_file: str | None = None, **overrides: Any
    ) -> ConfigWorkflow:
        wf = ConfigWorkflow(
            config_file=[str(BUNDLE / "configs" / c) for c in configs],
            workflow_type=workflow_type,
            meta_file=meta_file,
            logging_file=None,
            **{"bundle_root": str(BUNDLE), **overrides},
        )
        check_config(wf.parser)  # what check_command_line does first in a `monai.bundle run`
        wf.initialize()
        return wf

    return build


@pytest.fixture
def train_workflow(bundle_workflow: Callable[..., ConfigWorkflow]) -> Callable[..., ConfigWorkflow]:
    """``train.yaml`` + ``overlays`` with the tiny network and one short epoch (``TINY_TRAINING``), writing its
    checkpoints into ``tmp/models`` and its logs into ``tmp/logs``."""

    def build(tmp: Path, *overlays: str, **overrides: Any) -> ConfigWorkflow:
        dirs = {"ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "logs")}
        return bundle_workflow("train.yaml", *overlays, **{**dirs, **TINY_TRAINING, **overrides})

    return build


@pytest.fixture
def run_recording() -> Callable[[ConfigWorkflow], dict]:
    """Runs a training workflow and returns its per-iteration losses, the epochs started, the trainer's last epoch
    and the validation Dice."""

    def run(wf: ConfigWorkflow) -> dict:
        trainer = wf.parser.get_parsed_content("train#trainer")
        record: dict = {"losses": [], "epochs": []}
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: record["losses"].append(e.state.output[0]["loss"])
        )
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: record["epochs"].append(e.state.epoch))
        wf.run()
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        record["dice"] = evaluator.state.metrics.get("val_mean_dice")
        record["trainer_epoch"] = trainer.state.epoch
        wf.finalize()
        return record

    return run
