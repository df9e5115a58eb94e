"""Uncertainty that is measured: error-detection AUROC and calibration error on constructed inputs, the
engine-output transforms, the reliability diagram, evaluate.yaml end to end for V2 and the UNet, and eval_split."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.metrics import CalibrationErrorMetric, compute_roc_auc
from monai.transforms import GaussianSmooth
from PIL import Image
from tiny_config import TINY_EVAL

from scripts.diffusion.fusion import binary_entropy
from scripts.evaluation.baseline import ProbabilityUncertaintyd
from scripts.evaluation.reliability import ReliabilityDiagramSaver
from scripts.evaluation.uncertainty import ErrorDetectionAUROC, ExpectedCalibrationError, from_engine_errors

# ---- error-detection AUROC --------------------------------------------------------------------------------------


def _errors(seed: int, shape: tuple[int, ...] = (2, 1, 64, 64), rate: float = 0.1) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < rate).float()


def test_auroc_is_one_for_a_map_that_marks_the_errors_half_for_noise_zero_when_inverted() -> None:
    errors = _errors(0)
    metric = ErrorDetectionAUROC()
    assert torch.equal(metric(errors.clone(), errors), torch.ones(2, 1))  # per case
    assert metric.aggregate().item() == 1.0  # pooled
    metric.reset()
    metric(1 - errors, errors)
    assert metric.aggregate().item() == 0.0
    metric.reset()
    noise = torch.rand(errors.shape, generator=torch.Generator().manual_seed(1))
    per_case = metric(noise, errors)
    assert metric.aggregate().item() == pytest.approx(0.5, abs=0.03)
    assert torch.allclose(per_case, torch.full((2, 1), 0.5), atol=0.05)


def test_auroc_matches_monai_compute_roc_auc_with_ties_pooled_and_per_case() -> None:
    g = torch.Generator().manual_seed(2)
    errors = _errors(3, (3, 1, 12, 12), rate=0.3)
    # few distinct values (as the entropy of an ensemble of hard masks), correlated with the errors: ties matter
    scores = ((errors + torch.rand(errors.shape, generator=g)) * 2).round() / 4
    metric = ErrorDetectionAUROC()
    per_case = metric(scores, errors)
    for i in range(3):
        assert per_case[i, 0].item() == pytest.approx(compute_roc_auc(scores[i].flatten(), errors[i].flatten()))
    pooled = compute_roc_auc(scores.flatten(), errors.flatten())
    assert metric.aggregate().item() == pytest.approx(pooled)
    assert 0.5 < pooled < 1.0


def test_auroc_of_a_case_without_errors_is_nan_and_left_out_of_the_pooled_value() -> None:
    errors = _errors(4, (1, 1, 16, 16))
    metric = ErrorDetectionAUROC()
    metric(errors.clone(), errors)
    per_case = metric(torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))  # a perfect case: nothing to detect
    assert torch.isnan(per_case).all()
    # its pixels are all correct: they join the negatives of the pooled AUROC, which stays well defined
    assert 0.5 < metric.aggregate().item() <= 1.0
    metric.reset()
    metric(torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.warns(UserWarning, match="no prediction error"):
        assert np.isnan(metric.aggregate().item())


# ---- expected calibration error ---------------------------------------------------------------------------------


def _calibrated(levels: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8, 1.0), per_level: int = 10):
    """Probabilities at bin centres-ish with exactly the matching share of foreground pixels: perfectly calibrated."""
    prob, truth = [], []
    for p in levels:
        positives = round(p * per_level)
        prob += [p] * per_level
        truth += [1.0] * positives + [0.0] * (per_level - positives)
    return torch.tensor(prob).reshape(1, 1, -1), torch.tensor(truth).reshape(1, 1, -1)


def test_ece_is_zero_for_perfectly_calibrated_probabilities() -> None:
    prob, truth = _calibrated()
    metric = ExpectedCalibrationError(num_bins=15)
    assert metric(prob, truth).item() == pytest.approx(0.0, abs=1e-6)
    assert metric.aggregate().item() == pytest.approx(0.0, abs=1e-6)


def test_ece_is_large_for_overconfident_probabilities_hand_computed() -> None:
    # says 1.0 where only 60% are foreground, 0.0 where 30% are: ECE = 0.5 * 0.4 + 0.5 * 0.3
    prob = torch.tensor([1.0] * 10 + [0.0] * 10).reshape(1, 1, 20)
    truth = torch.tensor([1.0] * 6 + [0.0] * 4 + [1.0] * 3 + [0.0] * 7).reshape(1, 1, 20)
    metric = ExpectedCalibrationError()
    assert metric(prob, truth).item() == pytest.approx(0.35)
    # the same pixels with honest probabilities 0.6 and 0.3: calibrated
    metric.reset()
    honest = torch.tensor([0.6] * 10 + [0.3] * 10).reshape(1, 1, 20)
    assert metric(honest, truth).item() == pytest.approx(0.0, abs=1e-6)


def test_ece_is_per_class_per_case_and_pooled_over_pixels() -> None:
    calibrated_p, calibrated_t = _calibrated()  # 50 pixels
    over_p = torch.ones_like(calibrated_p)  # class 2: always sure, 50% foreground -> ECE 0.5
    over_t = (torch.arange(50) % 2).float().reshape(1, 1, 50)
    prob, truth = torch.cat([calibrated_p, over_p], 1), torch.cat([calibrated_t, over_t], 1)
    metric = ExpectedCalibrationError()
    per_case = metric(torch.cat([prob, prob]), torch.cat([truth, truth]))
    assert per_case.shape == (2, 2) and torch.allclose(per_case, torch.tensor([[0.0, 0.5]] * 2), atol=1e-6)
    assert torch.allclose(metric.per_class(), torch.tensor([0.0, 0.5], dtype=torch.float64), atol=1e-6)
    assert metric.aggregate().item() == pytest.approx(0.25)
    assert metric.bins.shape == (2, 15, 3) and metric.bins[..., 0].sum().item() == 2 * 2 * 50
    with pytest.raises(ValueError, match="probabilities"):
        metric(prob * 2, truth)


def test_ece_per_case_equals_monai_calibration_error_but_pools_pixels_and_bins_edges_to_the_right() -> None:
    """MONAI's CalibrationErrorMetric gives the same per-case, per-class ECE on continuous probabilities; ours pools
    the pixels of all cases (MONAI averages the per-case values) and puts p = k / num_bins in bin k (MONAI: k - 1)."""
    g = torch.Generator().manual_seed(5)
    prob = torch.rand(3, 2, 32, 32, generator=g)
    shift = torch.tensor([0.0, 0.3, -0.3])[:, None, None, None]  # calibrated, under- and overconfident cases
    truth = (torch.rand(prob.shape, generator=g) < prob + shift).float()
    ours, monai = ExpectedCalibrationError(num_bins=15), CalibrationErrorMetric(num_bins=15, metric_reduction="none")
    per_case = ours(prob, truth)
    assert torch.allclose(per_case, monai(prob, truth), atol=1e-5)
    assert ours.aggregate().item() < monai.aggregate(reduction="mean").item() - 0.05  # pooled: the shifts cancel
    edges = torch.tensor([0.2, 0.4, 0.6, 0.8]).reshape(1, 1, 4)  # a 10-member ensemble of hard masks: k/10
    ours.reset()
    ours(edges, torch.ones_like(edges))
    assert ours.bins[0, [3, 6, 9, 12], 0].tolist() == [1, 1, 1, 1]  # [k/15, (k+1)/15): on the edge, in the upper bin


# ---- engine output transforms and the UNet's uncertainty -----------------------------------------------------------


def test_transforms_give_multiclass_errors_and_sigmoid_entropy() -> None:
    truth = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 1]]).float()  # labels 0, 1, 2, 2
    pred = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1]]).float()  # labels 0, 1, 1, 2: pixel 2 wrong
    unc = torch.tensor([[0.0, 0.8, 0.9, 0.8]])
    scores, errors = from_engine_errors()({"uncertainty": unc, "pred": pred, "label": truth})
    assert torch.equal(errors[0], torch.tensor([[0.0, 0.0, 1.0, 0.0]])) and torch.equal(scores[0], unc)
    out = ProbabilityUncertaintyd(keys="prob")({"prob": torch.tensor([[0.5, 0.0, 1.0], [0.0, 0.0, 0.11]])})
    assert torch.allclose(out["uncertainty"], torch.tensor([[1.0, 0.0, 0.4999]]), atol=1e-3)  # bits, max over classes


@pytest.mark.parametrize(
    ("configs", "volume"),
    [
        (["train.yaml", "evaluate.yaml"], False),
        (["train.yaml", "volume.yaml", "evaluate.yaml"], True),
        (["inference.yaml"], False),
        (["inference.yaml", "inference_volume.yaml"], True),
    ],
)
def test_uncertainty_keys_mix_the_anchor_and_smooth_in_plane(
    bundle_root: Path, configs: list[str], volume: bool
) -> None:
    """``uncertainty_anchor_weight`` and ``uncertainty_sigma`` through the configs' postprocessing: the map is the
    entropy of the anchor-members mix, smoothed by MONAI's Gaussian in-plane only (a volume's slices stay apart)."""
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in configs])
    settings = {"ensemble_size": 2, "num_classes": 1, "val_reliance": False, "fusion": "vote"}
    parser.update({**settings, "uncertainty_anchor_weight": 0.5, "uncertainty_sigma": 1.0})
    chain = [parser.get_parsed_content(key) for key in ("fuse", "smooth_uncertainty")]
    shape = (8, 8, 3) if volume else (8, 8)
    members = torch.rand(2, *shape)
    anchor = torch.zeros(1, *shape)
    anchor[0, 2:5, 2:5] = 0.5  # unsure in one block of the middle slice (or of the image)
    data = {"pred": torch.cat([members, anchor])}
    for transform in chain:
        data = transform(data)
    raw = binary_entropy((0.5 * anchor + 0.5 * members.mean(0, keepdim=True)).numpy())
    sigma = [1.0, 1.0, 0.0] if volume else [1.0, 1.0]
    expected = GaussianSmooth(sigma)(torch.as_tensor(raw, dtype=torch.float32))
    torch.testing.assert_close(torch.as_tensor(data["uncertainty"]), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, torch.as_tensor(raw, dtype=torch.float32))
    parser.update({"uncertainty_sigma": 0.0})
    assert parser.get_parsed_content("smooth_uncertainty") is None  # off: the step leaves the chain


def test_reliability_diagram_saver_writes_png_and_csv(tmp_path: Path) -> None:
    metric = ExpectedCalibrationError(num_bins=10)
    metric(*_calibrated())
    ReliabilityDiagramSaver(metric, tmp_path, title="test")(None)
    rows = list(csv.DictReader((tmp_path / "reliability.csv").open()))
    assert len(rows) == 10 and sum(int(r["pixels"]) for r in rows) == 50
    filled = [r for r in rows if int(r["pixels"])]
    assert all(float(r["mean_probability"]) == pytest.approx(float(r["foreground_frequency"])) for r in filled)
    png = np.asarray(Image.open(tmp_path / "reliability_diagram.png"))
    assert png.ndim == 3 and png.std() > 0


# ---- evaluate.yaml: V2 and the UNet, and eval_split ----------------------------------------------------------------


def _details(out: Path, name: str) -> list[list[str]]:
    return list(csv.reader((out / f"{name}_raw.csv").open()))


@pytest.mark.slow
@pytest.mark.parametrize("uncertainty", [{}, {"uncertainty_anchor_weight": 0.5, "uncertainty_sigma": 1.0}])
def test_evaluate_yaml_writes_uncertainty_metrics_and_reliability_diagram(
    train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path, uncertainty: dict
) -> None:
    """Untrained weights: the numbers are not meaningful, but each output is written and in range (also with the
    anchor mixed into the uncertainty map and the map smoothed)."""
    settings = {**TINY_EVAL, **uncertainty}
    wf = train_workflow(tmp_path, "quick.yaml", "evaluate.yaml", eval_dir=str(tmp_path / "eval"), **settings)
    (tmp_path / "models").mkdir()
    torch.save({"model": wf.parser.get_parsed_content("network").state_dict()}, tmp_path / "models" / "model.pt")
    wf.run()
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    wf.finalize()
    assert 0 <= metrics["val_ece"] <= 1 and (
        np.isnan(metrics["val_error_auroc"]) or 0 <= metrics["val_error_auroc"] <= 1
    )
    out = tmp_path / "eval"
    for name in ("val_error_auroc", "val_ece"):
        assert len(_details(out, name)) == 1 + 8 and (out / f"{name}_summary.csv").is_file()
    assert "val_ece" in (out / "metrics.csv").read_text()
    assert len((out / "reliability.csv").read_text().splitlines()) == 1 + 15
    assert (out / "reliability_diagram.png").is_file()


def test_baseline_evaluation_scores_the_unet_sigmoid(
    train_workflow: Callable[..., ConfigWorkflow], tmp_path: Path
) -> None:
    unet = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1, "channels": [4, 8]}
    small = {"network_def": {**unet, "strides": [2]}, "eval_dir": str(tmp_path / "e")}
    wf = train_workflow(tmp_path, "quick.yaml", "evaluate.yaml", "baseline.yaml", **small)
    (tmp_path / "models").mkdir()
    torch.save({"model": wf.parser.get_parsed_content("network").state_dict()}, tmp_path / "models" / "model.pt")
    seen: dict = {}
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.setdefault("output", e.state.output[0]))
    wf.run()
    metrics = evaluator.state.metrics
    wf.finalize()
    item = seen["output"]
    prob = item["prob"]
    assert prob.min() >= 0 and prob.max() <= 1 and len(torch.unique(prob)) > 2  # a probability, not the mask
    assert torch.equal(item["pred"], (prob >= 0.5).float())
    assert item["uncertainty"].shape == prob.shape and item["uncertainty"].max() <= 1
    assert 0 <= metrics["val_ece"] <= 1 and 0 <= metrics["val_error_auroc"] <= 1
    assert (tmp_path / "e" / "reliability_diagram.png").is_file() and (tmp_path / "e" / "val_ece_raw.csv").is_file()


def _split_datalist(demo: Path, tmp: Path, with_test: bool = True) -> Path:
    d = json.loads((demo / "isic" / "datalist.json").read_text())
    sections = {"training": d["training"], "validation": d["validation"][:5]}
    if with_test:
        sections["test"] = d["validation"][5:]
    path = tmp / "split.json"
    path.write_text(json.dumps(sections))
    return path


def test_eval_split_test_scores_the_test_list(
    train_workflow: Callable[..., ConfigWorkflow], demo_data: Path, tmp_path: Path
) -> None:
    split = _split_datalist(demo_data, tmp_path)
    test_cases = json.loads(split.read_text())["test"]
    common = {"datalist": str(split), "eval_dir": str(tmp_path / "eval"), **TINY_EVAL}
    wf = train_workflow(tmp_path, "quick.yaml", "evaluate.yaml", **common)  # default: validation
    assert len(wf.parser.get_parsed_content("validate#datalist")) == 5
    wf = train_workflow(tmp_path, "quick.yaml", "evaluate.yaml", eval_split="test", **common)
    scored = wf.parser.get_parsed_content("validate#datalist")
    assert [Path(c["image"]).name for c in scored] == [Path(c["image"]).name for c in test_cases]
    (tmp_path / "models").mkdir()
    torch.save({"model": wf.parser.get_parsed_content("network").state_dict()}, tmp_path / "models" / "model.pt")
    wf.run()
    wf.finalize()
    rows = _details(tmp_path / "eval", "val_mean_dice")[1:]
    assert sorted(Path(r[0]).name for r in rows) == sorted(Path(c["image"]).name for c in test_cases)


def _chain(err: BaseException) -> str:
    """The messages of an exception and its causes (the config parser wraps the bundle's errors)."""
    messages = []
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    return " <- ".join(messages)


def test_eval_split_bad_value_or_missing_section_is_a_clear_error(
    train_workflow: Callable[..., ConfigWorkflow], demo_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(Exception) as err:
        train_workflow(tmp_path, "quick.yaml", "evaluate.yaml", eval_split="testing")
    assert "invalid setting: eval_split='testing' is invalid, expected one of 'validation', 'test'" in _chain(err.value)
    split = _split_datalist(demo_data, tmp_path, with_test=False)
    wf = train_workflow(tmp_path, "quick.yaml", "evaluate.yaml", eval_split="test", datalist=str(split))
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("validate#datalist")
    assert f"{split}: missing section 'test' in the datalist (list sections: 'training', 'validation')" in _chain(
        err.value
    )


@pytest.mark.parametrize(
    ("name", "sizes"), [("isic2018_split.json", (1715, 100, 131)), ("msd_hippocampus_split.json", (155, 20, 20))]
)
def test_split_files_hold_a_disjoint_held_out_test_list(bundle_root: Path, name: str, sizes: tuple[int, ...]) -> None:
    split = json.loads((bundle_root / "docs" / "splits" / name).read_text())
    parts = [{c["image"] for c in split[k]} for k in ("training", "validation", "test")]
    assert tuple(len(p) for p in parts) == sizes
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
