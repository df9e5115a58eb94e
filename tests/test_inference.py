"""Inference: samplers, STAPLE fusion, geometry-preserving round trips, repeatability, bad inputs."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.transforms import KeepLargestConnectedComponentd
from PIL import Image
from tiny_config import TINY_NET

from scripts.data.transforms import SliceContextd, stack_context
from scripts.diffusion.fusion import EnsembleFusiond, fuse, staple_binary, staple_multilabel
from scripts.diffusion.sampling import DiffusionSegmentationInferer
from scripts.diffusion.schedulers import RespacedDDPMScheduler
from scripts.networks import MedSegDiffV2

if TYPE_CHECKING:
    from conftest import BundleCLI

NET = TINY_NET
FAST = {"roi_size": 32, "num_inference_steps": 2, "ensemble_size": 3}


def tiny_net(in_ch: int, out_ch: int, seed: int = 0) -> MedSegDiffV2:
    torch.manual_seed(seed)
    return MedSegDiffV2(in_ch, out_ch, **NET).eval()


def save_weights(path: Path, in_ch: int, out_ch: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_net(in_ch, out_ch).state_dict(), path)
    return path


def run_inference(build: Callable[..., ConfigWorkflow], tmp: Path, *overlays: str, **overrides) -> ConfigWorkflow:
    """Runs ``inference.yaml`` + ``overlays`` (built by the ``bundle_workflow`` fixture) with the tiny network."""
    net = {f"network_def#{k}": v for k, v in NET.items()}
    meta = str(Path(__file__).resolve().parents[1] / "bundle" / "configs" / "metadata.json")
    wf = build(
        "inference.yaml",
        *overlays,
        workflow_type="infer",
        meta_file=meta,
        **{"output_dir": str(tmp / "out"), **FAST, **net, **overrides},
    )
    wf.run()
    wf.finalize()
    return wf


# -- samplers ----------------------------------------------------------------------------------------------------------
class OracleEps(torch.nn.Module):
    """Predicts the exact noise of x_t for a known x0: a correct sampler must end at x0."""

    def __init__(self, x0: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.x0, self.abar = x0, scheduler.alphas_cumprod

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        a = self.abar[int(t)]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("cls, steps", [(RespacedDDPMScheduler, 100), (DDIMScheduler, 10), (RespacedDDPMScheduler, 7)])
def test_samplers_recover_x0_with_an_oracle(cls, steps: int) -> None:
    scheduler = cls(num_train_timesteps=1000, schedule="linear_beta")
    scheduler.set_timesteps(steps)
    x0 = torch.rand(1, 1, 8, 8).round() * 2 - 1
    oracle, x = OracleEps(x0, scheduler), torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert len(scheduler.timesteps) == steps and scheduler.timesteps[0] > scheduler.timesteps[-1]
    for t in scheduler.timesteps:
        x, _ = scheduler.step(oracle(x, t), int(t), x)
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)


def test_respaced_ddpm_with_all_steps_is_monai_ddpm() -> None:
    ours, monai_ = (c(num_train_timesteps=1000, schedule="linear_beta") for c in (RespacedDDPMScheduler, DDPMScheduler))
    ours.set_timesteps(1000)
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for t in (999, 500, 1, 0):
        a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        b = monai_.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=1e-4)


def test_ensemble_sampling_with_cached_condition_equals_the_uncached_loop() -> None:
    net, image = tiny_net(1, 2), torch.randn(2, 1, 32, 32)
    inferer = DiffusionSegmentationInferer(DDIMScheduler(1000), num_inference_steps=3, ensemble_size=4, seed=5)
    cached = inferer.sample(image, net, torch.Generator().manual_seed(5))
    # reference: every step and member recomputes the Condition Model from the image
    scheduler, g = DDIMScheduler(1000), torch.Generator().manual_seed(5)
    scheduler.set_timesteps(3)
    x = torch.randn((8, 2, 32, 32), generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x, _ = scheduler.step(net(x, t, image=image.repeat_interleave(4, 0)), int(t), x, eta=0.0, generator=g)
    torch.testing.assert_close(cached, ((x.clamp(-1, 1) + 1) / 2).reshape(2, 4, 2, 32, 32))


def test_condition_model_runs_once_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    net, calls = tiny_net(1, 1), []
    original = net.condition_model.forward
    monkeypatch.setattr(net.condition_model, "forward", lambda image: calls.append(image.shape[0]) or original(image))
    DiffusionSegmentationInferer(DDIMScheduler(1000), num_inference_steps=4, ensemble_size=5)(
        torch.randn(2, 1, 32, 32), net
    )
    assert calls == [2]  # one batched call for 2 images, not once per step (4) or member (5)


def test_sampling_is_repeatable_under_a_seed() -> None:
    net, image = tiny_net(1, 1), torch.randn(1, 1, 32, 32)
    make = lambda seed: DiffusionSegmentationInferer(DDIMScheduler(1000), 3, 4, fusion="samples", seed=seed)  # noqa
    a, b, c = make(1)(image, net), make(1)(image, net), make(2)(image, net)
    assert torch.equal(a, b) and a.shape == (1, 4, 32, 32)
    assert not torch.equal(a, c)


# -- fusion ------------------------------------------------------------------------------------------------------------
def _disc_samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    return np.stack([((yy - 16 + rng.integers(-3, 4)) ** 2 + (xx - 16) ** 2 < rng.integers(40, 90)) for _ in range(n)])


def test_binary_staple_matches_simpleitk() -> None:
    samples = _disc_samples(7).astype(np.uint8)
    direct = sitk.GetArrayFromImage(sitk.STAPLE([sitk.GetImageFromArray(s) for s in samples], 1.0)) >= 0.5
    np.testing.assert_array_equal(staple_binary(samples), direct.astype(np.uint8))
    assert 0 < staple_binary(samples).sum() < samples[0].size


def test_multilabel_staple_matches_simpleitk() -> None:
    a, b = _disc_samples(5, 1).astype(np.uint8), _disc_samples(5, 2).astype(np.uint8)
    maps = np.where(b > 0, 2, a).astype(np.uint8)  # two overlapping-free structures per rater
    f = sitk.MultiLabelSTAPLEImageFilter()
    f.SetLabelForUndecidedPixels(255)
    direct = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(m) for m in maps]))
    ours = staple_multilabel(maps)
    decided = direct != 255
    np.testing.assert_array_equal(ours[decided], direct[decided])
    assert set(np.unique(ours)) <= {0, 1, 2}


def test_staple_nan_guard_for_all_empty_and_all_full() -> None:
    empty, full = np.zeros((5, 16, 16), np.uint8), np.ones((5, 16, 16), np.uint8)
    with np.errstate(all="ignore"):
        raw = sitk.GetArrayFromImage(sitk.STAPLE([sitk.GetImageFromArray(s) for s in empty], 1.0))
    assert np.isnan(raw).any()  # the failure the guard exists for
    np.testing.assert_array_equal(staple_binary(empty), empty[0])
    np.testing.assert_array_equal(staple_binary(full), full[0])
    np.testing.assert_array_equal(fuse(np.zeros((4, 3, 8, 8), np.uint8)), np.zeros((8, 8)))


def test_fusion_transform_outputs_labels_and_uncertainty() -> None:
    samples = np.zeros((3, 2, 8, 8), np.float32)  # 3 members, 2 classes
    samples[:, 0, :4] = 1  # all members agree on class 1 in the top half
    samples[0, 1, 6:] = 1  # one member of three sees class 2 at the bottom
    for method in ("staple", "vote", "mean"):
        out = EnsembleFusiond("pred", ensemble_size=3, method=method, samples_key="samples")(
            {"pred": torch.as_tensor(samples.reshape(6, 8, 8))}
        )
        labels = out["pred"][0].numpy()
        assert (labels[:4] == 1).all() and (labels[6:] == 0).all() and out["samples"].shape == (3, 8, 8)
        unc = out["uncertainty"][0].numpy()
        assert unc[:4].max() == 0 and unc[6:].min() == pytest.approx(0.9183, abs=1e-3)  # H(1/3) in bits
    with pytest.raises(ValueError, match="multiple of ensemble_size"):
        EnsembleFusiond("pred", ensemble_size=4)({"pred": torch.zeros(6, 8, 8)})


def test_soft_members_are_fused_as_masks_and_keep_their_probability() -> None:
    """Soft members (values in [0, 1]): the fusion sees their masks (> 0.5), the probability is their mean and the
    uncertainty its entropy, so members that agree on the mask but not on their confidence are not certain."""
    members = np.zeros((2, 1, 4, 4), np.float32)
    members[0, 0, :2], members[1, 0, :2] = 0.9, 0.7  # both call the top half foreground, unsure to different degrees
    members[0, 0, 3], members[1, 0, 3] = 0.6, 0.3  # the bottom row: they disagree
    out = EnsembleFusiond("pred", ensemble_size=2, method="vote", samples_key="samples", probability_key="prob")(
        {"pred": torch.as_tensor(members.reshape(2, 4, 4))}
    )
    labels = np.asarray(out["pred"][0])
    assert (labels[:2] == 1).all() and (labels[2] == 0).all() and (labels[3] == 1).all()  # vote: ties count
    np.testing.assert_array_equal(np.asarray(out["samples"]), (members[:, 0] > 0.5).astype(np.uint8))
    np.testing.assert_allclose(np.asarray(out["prob"]), members.mean(0), atol=1e-6)
    unc = np.asarray(out["uncertainty"][0])
    assert unc[:2] == pytest.approx(0.7219, abs=1e-3)  # H(0.8) in bits: binary members would give 0
    assert unc[2].max() == 0 and unc[3] == pytest.approx(0.9928, abs=1e-3)  # H(0.45)


def test_anchor_weight_mixes_the_anchor_probability_into_the_uncertainty_only() -> None:
    """``anchor_weight``: the last K channels are the anchor probability; the uncertainty is the entropy of the mix,
    while the fused mask and the probability come from the members alone."""
    members = np.zeros((2, 1, 4, 4), np.float32)
    members[:, 0, :2] = 0.9  # members sure of the top half
    anchor = np.full((1, 4, 4), 0.5, np.float32)  # the anchor unsure everywhere
    pred = torch.as_tensor(np.concatenate([members.reshape(2, 4, 4), anchor]))
    out = EnsembleFusiond("pred", ensemble_size=2, method="vote", probability_key="prob", anchor_weight=0.5)(
        {"pred": pred}
    )
    assert (np.asarray(out["pred"][0])[:2] == 1).all() and (np.asarray(out["pred"][0])[2:] == 0).all()
    np.testing.assert_allclose(np.asarray(out["prob"]), members.mean(0), atol=1e-6)
    unc = np.asarray(out["uncertainty"][0])
    assert unc[:2] == pytest.approx(0.8813, abs=1e-3)  # H(0.5 * 0.5 + 0.5 * 0.9) = H(0.7) in bits; members: H(0.9)
    assert unc[2:] == pytest.approx(0.8113, abs=1e-3)  # H(0.5 * 0.5 + 0.5 * 0) = H(0.25); the members alone: 0
    with pytest.raises(ValueError, match="the anchor probability"):
        EnsembleFusiond("pred", ensemble_size=2, anchor_weight=0.5)({"pred": torch.zeros(4, 4, 4)})


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 1, 32, 32, 3)])
def test_inferer_appends_the_anchor_probability_after_the_members(shape: tuple[int, ...]) -> None:
    """``anchor_probability``: the output is the members (N*K channels, unchanged) and then sigmoid(anchor logits),
    for 2D images and for volumes (slice by slice)."""
    net = tiny_net(1, 2)
    image = torch.rand(shape)
    sched = DDIMScheduler(20, schedule="linear_beta", prediction_type="sample")
    plain = DiffusionSegmentationInferer(sched, 2, ensemble_size=3, fusion="samples", seed=0)
    mixed = DiffusionSegmentationInferer(sched, 2, ensemble_size=3, fusion="samples", seed=0, anchor_probability=True)
    a, b = plain(image, net), mixed(image, net)
    assert b.shape[1] == 3 * 2 + 2
    torch.testing.assert_close(b[:, :6], a)
    slices = image.movedim(-1, 1).flatten(0, 1) if image.ndim == 5 else image  # (slices, C, H, W)
    with torch.no_grad():
        anchor = torch.sigmoid(net.condition(slices).anchor_logits)
    expected = anchor.unflatten(0, (1, -1)).movedim(1, -1) if image.ndim == 5 else anchor
    torch.testing.assert_close(b[:, 6:], expected)
    with pytest.raises(ValueError, match="anchor_probability needs fusion='samples'"):
        DiffusionSegmentationInferer(sched, 2, fusion="mean", anchor_probability=True)


def _islands(num_classes: int) -> torch.Tensor:
    """A label map: each class a large blob plus a 1-pixel island far from it."""
    labels = torch.zeros(1, 16, 16)
    for c in range(1, num_classes + 1):
        labels[0, 8 * (c - 1) : 8 * (c - 1) + 5, :6] = c
        labels[0, 8 * (c - 1) + 2, 14] = c
    return labels


@pytest.mark.parametrize("config", ["inference.yaml", "train.yaml"])
def test_largest_component_key_removes_islands_of_each_class(bundle_root: Path, config: str) -> None:
    """``largest_component`` keeps each class's largest component of the fused label map (inference, V2 validation);
    off, the step is left out of the chain."""
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / config))
    parser.update({"num_classes": 2, "largest_component": True, "val_reliance": False})
    labels = _islands(2)
    kept = parser.get_parsed_content("keep_largest" if config == "inference.yaml" else "validate#postprocessing")
    if config == "train.yaml":
        kept = next(t for t in kept.transforms if isinstance(t, KeepLargestConnectedComponentd))
    out = kept({"pred": labels.clone()})["pred"]
    assert (out[0, :, 14] == 0).all() and (out == 1).sum() == 30 and (out == 2).sum() == 30
    parser.update({"largest_component": False})
    chain = parser.get_parsed_content("postprocessing" if config == "inference.yaml" else "validate#postprocessing")
    assert not any(isinstance(t, KeepLargestConnectedComponentd) for t in chain.transforms)


def test_largest_component_key_on_the_unet_baselines_per_class_masks(bundle_root: Path) -> None:
    """The UNet's masks have no background channel: every class, the first included, keeps its largest component."""
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / f) for f in ("train.yaml", "baseline.yaml")])
    parser.update({"num_classes": 2, "largest_component": True})
    labels = _islands(2)[0]
    logits = torch.stack([labels == 1, labels == 2]).float() * 20 - 10
    out = parser.get_parsed_content("validate#postprocessing")({"pred": logits})["pred"]
    assert out[:, :, 14].sum() == 0 and out[0].sum() == 30 and out[1].sum() == 30


# -- whole workflow ----------------------------------------------------------------------------------------------------
def test_2d_inference_writes_masks_of_the_input_size(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path
) -> None:
    src = bundle_root / "data" / "demo" / "isic" / "images"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted(src.glob("*.jpg"))[:2]:
        shutil.copy(p, inputs / p.name)
    ckpt = save_weights(tmp_path / "model.pt", 3, 1)
    run_inference(bundle_workflow, tmp_path, input=str(inputs), ckpt_path=str(ckpt))
    for p in inputs.iterdir():
        seg = np.asarray(Image.open(tmp_path / "out" / f"{p.stem}_seg.png"))
        assert seg.shape == np.asarray(Image.open(p)).shape[:2] and set(np.unique(seg)) <= {0, 255}
        unc = np.asarray(Image.open(tmp_path / "out" / f"{p.stem}_uncertainty.png"))
        assert unc.shape == seg.shape
    first = (tmp_path / "out" / f"{sorted(inputs.iterdir())[0].stem}_seg.png").read_bytes()
    run_inference(bundle_workflow, tmp_path / "again", input=str(inputs), ckpt_path=str(ckpt))
    assert (tmp_path / "again" / "out" / f"{sorted(inputs.iterdir())[0].stem}_seg.png").read_bytes() == first


def _non_ras_volume(bundle_root: Path, path: Path) -> nib.Nifti1Image:
    """A demo hippocampus volume re-stored with an oblique-free but non-RAS (LPI), anisotropic, offset affine."""
    src = nib.load(sorted((bundle_root / "data" / "demo" / "hippocampus" / "imagesTr").glob("*.nii.gz"))[0])
    data = np.asarray(src.dataobj, dtype=np.float32)[:, :, :10]
    affine = np.diag([-0.8, -1.2, -2.5, 1.0])
    affine[:3, 3] = [30.0, -12.0, 7.5]
    img = nib.Nifti1Image(data, affine)
    nib.save(img, path)
    return img


def test_3d_inference_keeps_shape_spacing_affine_and_orientation(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path
) -> None:
    vol = _non_ras_volume(bundle_root, tmp_path / "case.nii.gz")
    ckpt = save_weights(tmp_path / "model.pt", 1, 2)
    run_inference(  # a plain 2D slice network (context_slices 0), sampled slice by slice
        bundle_workflow,
        tmp_path,
        "inference_volume.yaml",
        input=str(tmp_path / "case.nii.gz"),
        ckpt_path=str(ckpt),
        context_slices=0,
    )
    seg = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    unc = nib.load(tmp_path / "out" / "case_uncertainty.nii.gz")
    for out in (seg, unc):
        assert out.shape == vol.shape
        np.testing.assert_allclose(out.affine, vol.affine, atol=1e-4)
        assert nib.aff2axcodes(out.affine) == ("L", "P", "I")
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    u = np.asarray(unc.dataobj)
    assert u.min() >= 0 and u.max() <= 1


def test_dicom_series_in_gives_nifti_out(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path
) -> None:
    src = sitk.ReadImage(str(sorted((bundle_root / "data" / "demo" / "hippocampus" / "imagesTr").glob("*.nii.gz"))[1]))
    src = sitk.Cast(src[:, :, :8], sitk.sitkInt16)
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(src.GetDepth()):
        sl = src[:, :, z]
        for tag, value in {
            "0020|000e": uid,
            "0020|0013": str(z + 1),
            "0008|0060": "MR",
            "0020|0032": "\\".join(map(str, src.TransformIndexToPhysicalPoint((0, 0, z)))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"{z:03d}.dcm"))
        writer.Execute(sl)
    ckpt = save_weights(tmp_path / "model.pt", 1, 2)
    run_inference(
        bundle_workflow, tmp_path, "inference_volume.yaml", input=str(series), ckpt_path=str(ckpt), context_slices=0
    )
    outs = list((tmp_path / "out").glob("*_seg.nii.gz"))
    assert len(outs) == 1
    assert nib.load(outs[0]).shape == tuple(src.GetSize())


def test_batch_run_skips_and_reports_bad_cases(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path, capfd
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((bundle_root / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
    shutil.copy(good, inputs / good.name)
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    nan = np.full((16, 16), np.nan, np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), inputs / "nan.nii.gz")
    vol = np.zeros((16, 16, 4), np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), inputs / "volume.nii.gz")
    ckpt = save_weights(tmp_path / "model.pt", 3, 1)
    run_inference(bundle_workflow, tmp_path, input=str(inputs), ckpt_path=str(ckpt))
    assert (tmp_path / "out" / f"{good.stem}_seg.png").is_file()
    assert len(list((tmp_path / "out").glob("*_seg.png"))) == 1
    log = "".join(capfd.readouterr())
    assert "corrupt.png: cannot be read" in log
    assert "volume.nii.gz: is a 3D volume" in log
    assert "nan.nii.gz: image contains NaN or infinite intensities" in log


def test_weights_that_do_not_fit_the_network_name_the_keys(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((bundle_root / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
    shutil.copy(good, inputs / good.name)
    ckpt = save_weights(tmp_path / "model.pt", 3, 2)  # trained for 2 classes, configured for 1
    with pytest.raises(RuntimeError) as err:
        run_inference(bundle_workflow, tmp_path, input=str(inputs), ckpt_path=str(ckpt))
    messages = []
    e: BaseException | None = err.value
    while e is not None:
        messages.append(str(e))
        e = e.__cause__
    text = " ".join(messages)
    assert "does not match the configured network" in text and "shape mismatches" in text
    assert "condition_model.head.2.weight" in text and "The weights have patch_size" not in text
    coarse = tmp_path / "patch2.pt"  # weights with 2x2 SS-Former tokens, configured with the preset's 1x1
    torch.save(MedSegDiffV2(3, 1, **{**NET, "patch_size": 2}).state_dict(), coarse)
    with pytest.raises(RuntimeError) as err:
        run_inference(bundle_workflow, tmp_path, input=str(inputs), ckpt_path=str(coarse))
    assert "The weights have patch_size 2 (--patch_size 2)" in str(err.value.__cause__ or err.value)
    with pytest.raises(RuntimeError) as err:
        run_inference(bundle_workflow, tmp_path, input=str(inputs), ckpt_path=str(tmp_path / "nope.pt"))
    assert "no weights at" in str(err.value.__cause__ or err.value) + repr(err.value)


def _as_if_saved_on_cuda(src: Path, dst: Path) -> None:
    """Rewrites a torch zip checkpoint so that its storages say they were saved on 'cuda:0' (as on a GPU box): the
    location is the pickled string 'cpu' in data.pkl (BINUNICODE opcode, length-prefixed, no byte offsets)."""
    import struct
    import zipfile

    cpu, cuda = (b"X" + struct.pack("<I", len(v)) + v for v in (b"cpu", b"cuda:0"))
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert cpu in data
                data = data.replace(cpu, cuda)
            zout.writestr(item, data)


def test_cuda_saved_weights_load_on_a_cpu_machine(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path
) -> None:
    cpu = save_weights(tmp_path / "cpu.pt", 3, 1)
    cuda = tmp_path / "cuda.pt"
    _as_if_saved_on_cuda(cpu, cuda)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda, weights_only=True)  # what a loader without map_location hits on a CPU machine
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((bundle_root / "data" / "demo" / "isic" / "images").glob("*.jpg"))[0]
    shutil.copy(good, inputs / good.name)
    run_inference(bundle_workflow, tmp_path, input=str(inputs), ckpt_path=str(cuda))
    assert (tmp_path / "out" / f"{good.stem}_seg.png").is_file()


ALLOCATION_LOOP = """
import resource, sys, torch
sys.path.insert(0, sys.argv[2])
from scripts.runtime.allocator import keep_freed_memory
applied = keep_freed_memory(sys.argv[1] == "keep")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    x = torch.ones(16, 2**20)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_keep_freed_memory_stops_refaulting_large_per_step_tensors(bundle_root: Path, bundle_cli: BundleCLI) -> None:
    """Each large tensor of a sampling step is mapped and faulted in afresh by default; with the setting (inference.yaml
    ``keep_freed_memory``) the freed memory is reused. Run in subprocesses: the setting is process-wide."""
    faults = {}
    for mode in ("default", "keep"):
        out = bundle_cli.python("-c", ALLOCATION_LOOP, mode, str(bundle_root), check=True).stdout.split()
        assert out[0] == str(mode == "keep")
        faults[mode] = int(out[1])
    assert faults["keep"] * 4 < faults["default"], faults  # measured: a few reuses fault again, never most


@pytest.mark.slow
def test_2_5d_volume_keeps_its_geometry_and_each_slice_sees_its_neighbours(
    bundle_workflow: Callable[..., ConfigWorkflow], bundle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """context_slices=1: the sampler gets 3 slices per image channel, the middle one the slice itself, and the
    output keeps the input's shape, affine and orientation."""
    vol = _non_ras_volume(bundle_root, tmp_path / "case.nii.gz")
    ckpt = save_weights(tmp_path / "model.pt", 3, 2)  # 1 MR channel x (2 * 1 + 1) slices
    seen: list[torch.Tensor] = []
    original = DiffusionSegmentationInferer._sample_2d

    def spy(self, image, network, generator, diagnostics=False):
        seen.append(image.clone())
        return original(self, image, network, generator, diagnostics)

    monkeypatch.setattr(DiffusionSegmentationInferer, "_sample_2d", spy)
    run_inference(
        bundle_workflow,
        tmp_path,
        "inference_volume.yaml",
        input=str(tmp_path / "case.nii.gz"),
        ckpt_path=str(ckpt),
        context_slices=1,
        slice_batch=4,
    )
    seg = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    assert seg.shape == vol.shape
    np.testing.assert_allclose(seg.affine, vol.affine, atol=1e-4)
    assert nib.aff2axcodes(seg.affine) == ("L", "P", "I")
    slices = torch.cat(seen)  # (depth, 3, H, W) in slice order
    assert slices.shape[1] == 3 and slices.shape[0] == vol.shape[2]
    torch.testing.assert_close(slices[1:, 0], slices[:-1, 1])  # slice i's previous neighbour is slice i - 1
    torch.testing.assert_close(slices[:-1, 2], slices[1:, 1])  # slice i's next neighbour is slice i + 1
    torch.testing.assert_close(slices[0, 0], slices[0, 1])  # beyond the volume the edge slice repeats


def test_stack_context_and_slice_contextd_agree_on_the_channel_order() -> None:
    """Training's slab (SliceContextd) and inference's shifted volume (stack_context) give a slice the same channels."""
    volume = torch.arange(2 * 4 * 4 * 6, dtype=torch.float32).reshape(2, 4, 4, 6)  # (C, H, W, D)
    stacked = stack_context(volume, 2, axis=-1)  # (C * 5, H, W, D)
    slab = {"image": volume[..., 1:6], "label": torch.zeros(1, 4, 4, 5)}  # the slab centred on slice 3
    out = SliceContextd(keys="image", context=2)(slab)
    torch.testing.assert_close(out["image"], stacked[..., 3])
    assert out["label"].shape == (1, 4, 4)
