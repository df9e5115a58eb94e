"""torch.export of the Condition Model and the denoiser: saved, loaded back, equal to eager, and sampled with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from monai.networks.schedulers import DDIMScheduler
from tiny_config import TINY_NET

from scripts.diffusion.sampling import DiffusionSegmentationInferer
from scripts.networks import EnsembleSegmenter, MedSegDiffV2
from scripts.tools.export import (
    FILES,
    ExportedMedSegDiffV2,
    export,
    export_programs,
    read_extra_files,
    save_programs,
)

if TYPE_CHECKING:
    from conftest import BundleCLI

# every test needs the network exported with torch.export (the export shared by most takes ~10 s) or exports it itself
pytestmark = pytest.mark.slow

ROI = 32
# the tiny network through the bundle's own config (1-channel MR, 2 classes), as the CLI builds it
NET_DEF = {f"network_def#{k}": v for k, v in TINY_NET.items()}
OVERRIDES = {"image_channels": 1, "num_classes": 2, "roi_size": ROI, "concat_anchor": True, **NET_DEF}


@pytest.fixture(scope="module")
def net() -> MedSegDiffV2:
    torch.manual_seed(0)
    return MedSegDiffV2(1, 2, **TINY_NET).eval()  # with concat_anchor: the anchor reaches the denoiser's input too


@pytest.fixture(scope="module")
def exported(net: MedSegDiffV2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    save_programs(export_programs(net, ROI), folder)
    return folder


@pytest.mark.parametrize("batch", [1, 3])
def test_condition_program_matches_eager(net: MedSegDiffV2, exported: Path, batch: int) -> None:
    program = torch.export.load(exported / FILES["condition"]).module()
    image = torch.randn(batch, 1, ROI, ROI)
    with torch.no_grad():
        want, got = net.condition(image), program(image)
    assert len(got) == 3
    for a, b in zip(got, want[:3], strict=True):  # the image, kept for concat_image networks, is not an output
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 6])
def test_denoiser_program_matches_eager(net: MedSegDiffV2, exported: Path, batch: int) -> None:
    program = torch.export.load(exported / FILES["denoiser"]).module()
    with torch.no_grad():
        cond = net.condition(torch.randn(1, 1, ROI, ROI)).repeat_interleave(batch)
        x = torch.randn(batch, 2, ROI, ROI)
        for t in (999.0, 10.0):
            ts = torch.tensor([t])
            torch.testing.assert_close(program(x, ts, *cond[:3]), net(x, ts, condition=cond), atol=1e-5, rtol=1e-4)


def test_sampling_with_the_exported_pair_matches_eager(net: MedSegDiffV2, exported: Path) -> None:
    pair = ExportedMedSegDiffV2.load(exported)
    assert (pair.in_channels, pair.out_channels) == (1, 2)
    make = lambda: DiffusionSegmentationInferer(DDIMScheduler(1000), 3, 4, fusion="samples", seed=1)  # noqa: E731
    for image in (torch.randn(2, 1, ROI, ROI), torch.randn(1, 1, ROI, ROI, 3)):  # 2D batch; volume slice by slice
        want, got = make()(image, net), make()(image, pair)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # soft members: equal up to float noise
        assert ((got > 0.5) == (want > 0.5)).float().mean() > 0.999  # masks: float noise may flip a rare pixel
    with pytest.raises(ValueError, match="one timestep"):
        pair(torch.randn(2, 2, ROI, ROI), torch.tensor([1.0, 2.0]), pair.condition(torch.randn(2, 1, ROI, ROI)))


def test_the_exported_pair_runs_the_whole_inference_as_one_network(net: MedSegDiffV2, exported: Path) -> None:
    """``EnsembleSegmenter`` (image -> fused segmentation, what verify_net_in_out calls) over the exported pair."""
    make = lambda: DiffusionSegmentationInferer(DDIMScheduler(1000), 3, 4, fusion="samples", seed=1)  # noqa: E731
    image = torch.randn(2, 1, ROI, ROI)
    want = EnsembleSegmenter(net, make(), 4, "staple")(image)
    got = EnsembleSegmenter(ExportedMedSegDiffV2.load(exported), make(), 4, "staple")(image)
    assert got.shape == want.shape == (2, 2, ROI, ROI) and got.dtype == torch.float32
    assert (got == want).float().mean() > 0.999  # float noise may flip a rare pixel of a member


def test_export_reads_the_network_from_the_bundle_config(bundle_root: Path, net: MedSegDiffV2, tmp_path: Path) -> None:
    config = str(bundle_root / "configs" / "inference.yaml")
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    paths = export(str(tmp_path / "model.pt"), str(tmp_path / "out"), config, **OVERRIDES)
    pair, image = ExportedMedSegDiffV2.load(tmp_path / "out"), torch.randn(2, 1, ROI, ROI)
    assert set(paths) == {"condition", "denoiser"}
    for path in paths.values():  # as MONAI's ckpt_export: the metadata and the configs travel with the program
        extra = read_extra_files(path)
        assert extra["metadata.json"] == json.loads((bundle_root / "configs" / "metadata.json").read_text())
        assert extra["configs.json"] == {"inference.yaml": yaml.safe_load(Path(config).read_text())}
        assert extra["overrides.json"] == OVERRIDES
    with torch.no_grad():
        torch.testing.assert_close(pair.condition(image).feature, net.condition(image).feature, atol=1e-5, rtol=1e-4)
    torch.save({"model": MedSegDiffV2(1, 1, **TINY_NET).state_dict()}, tmp_path / "other.pt")  # 1 class, not 2
    with pytest.raises(RuntimeError, match="size mismatch"):
        export(str(tmp_path / "other.pt"), str(tmp_path / "x"), config, **OVERRIDES)


@pytest.mark.parametrize("extra_input", ["self_condition", "concat_image"])
def test_networks_with_an_input_the_programs_lack_are_refused(extra_input: str) -> None:
    with pytest.raises(ValueError, match=extra_input):
        export_programs(MedSegDiffV2(1, 2, **TINY_NET, **{extra_input: True}), ROI)


def test_only_the_known_extra_files_are_stored(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extra files"):
        save_programs({}, tmp_path, {"notes.txt": "x"})
    assert read_extra_files(exported / FILES["denoiser"]) == {}  # saved without any


def test_cli_from_the_bundle_root(bundle_cli: BundleCLI, net: MedSegDiffV2, tmp_path: Path) -> None:
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    cmd = [
        "-m",
        "scripts.tools.export",
        "--ckpt",
        str(tmp_path / "model.pt"),
        "--output",
        str(tmp_path),
    ]
    cmd += ["--config_file", "['configs/inference.yaml','configs/inference_volume.yaml']", "--roi_size", str(ROI)]
    cmd += ["--context_slices", "0"]  # the 1-channel test network (the volume default is 2.5D: 3 channels)
    for k, v in TINY_NET.items():
        cmd += [f"--network_def#{k}", str(v)]
    run = bundle_cli.python(*cmd, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    pair = ExportedMedSegDiffV2.load(tmp_path)
    assert (pair.in_channels, pair.out_channels) == (1, 2)  # from inference_volume.yaml: MR, 2 structures
    extra = read_extra_files(tmp_path / FILES["condition"])
    assert set(extra["configs.json"]) == {"inference.yaml", "inference_volume.yaml"}
    assert extra["overrides.json"]["roi_size"] == ROI and "metadata.json" in extra
