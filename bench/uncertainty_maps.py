"""Which uncertainty map finds the ensemble's errors best: the members' entropy (the default), their variance, the
Condition Model's anchor entropy, and mixes of the two (of the probabilities, or of the entropies), each scored by
the pooled error-detection AUROC against the fused (STAPLE) prediction's errors; the candidate probabilities (members'
mean, anchor, mixes) by the pooled expected calibration error. Sampling as evaluate.yaml samples (DDIM, 2 steps, 5
members, soft members, STAPLE) unless --set says otherwise; volumes are scored whole, in the network's space, as
evaluation scores them. Select on ``--split validation``; report test once (evaluate.yaml with the chosen key).

    python bench/uncertainty_maps.py --weights bundle/models/model_hippocampus.pt \
        --overlays volume.yaml weights/hippocampus_64.yaml --dataset_dir ../shared/data/msd_hippocampus \
        --datalist bundle/docs/splits/msd_hippocampus_split.json --split validation --json maps.json
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from monai.transforms import GaussianSmooth

from common import absolute_paths, add_weights_arguments, arg_parser, cpu_model, trained_network, use_bundle

use_bundle()

from denoiser_calls import label_dice  # noqa: E402
from scripts.diffusion.fusion import binary_entropy, fuse, onehot_to_labels  # noqa: E402
from scripts.evaluation.uncertainty import ErrorDetectionAUROC, ExpectedCalibrationError  # noqa: E402

WEIGHTS = (0.25, 0.5, 0.75)  # the anchor's share in a mix
SIGMAS = (1.0, 2.0)  # in-plane Gaussian smoothing (pixels) of the maps
SAMPLING = {"sampler": "ddim", "num_inference_steps": 2, "ensemble_size": 5, "fusion": "staple"}


def candidates(
    members: np.ndarray, anchor: np.ndarray, slice_axis: int | None, weights: tuple[float, ...] = WEIGHTS
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Uncertainty maps (*spatial) and foreground probabilities (K, *spatial) from soft members (N, K, *spatial) and
    the anchor probability (K, *spatial); an entropy map is the maximum over classes, as ``EnsembleFusiond``'s. The
    entropies of the members' mean and of the mixed probabilities are also smoothed in-plane (not along
    ``slice_axis`` of a volume) by MONAI's ``GaussianSmooth``, as ``uncertainty_sigma`` smooths the configs' map."""
    mean = members.mean(0)
    maps = {
        "members' entropy (default)": binary_entropy(mean).max(0),
        "members' variance": members.var(0).max(0),
        "anchor entropy": binary_entropy(anchor).max(0),
    }
    probs = {"members' mean": mean, "anchor": anchor}
    for w in weights:
        mixed = w * anchor + (1 - w) * mean
        maps[f"entropy of {w:g} anchor + {1 - w:g} members"] = binary_entropy(mixed).max(0)
        maps[f"{w:g} anchor entropy + {1 - w:g} members' entropy"] = (
            w * binary_entropy(anchor) + (1 - w) * binary_entropy(mean)
        ).max(0)
        probs[f"{w:g} anchor + {1 - w:g} members"] = mixed
    for name in ["members' entropy (default)"] + [f"entropy of {w:g} anchor + {1 - w:g} members" for w in weights]:
        for sigma in SIGMAS:
            sigmas = [0.0 if axis == slice_axis else sigma for axis in range(maps[name].ndim)]  # as the configs' key
            maps[f"{name}, smoothed {sigma:g} px"] = GaussianSmooth(sigmas)(maps[name][None])[0].numpy()
    return maps, probs


def main() -> None:
    ap = arg_parser(__doc__)
    add_weights_arguments(ap, overlays=["weights/isic_128.yaml"], cases=0)
    ap.add_argument("--anchor_weights", nargs="+", type=float, default=list(WEIGHTS), help="the anchor's shares to mix")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. ensemble_size=10")
    args = absolute_paths(ap.parse_args(), "weights", "dataset_dir", "datalist", "json")
    overrides = {k: json.loads(v) if v[:1] in "0123456789[{tfn-" else v for k, v in (s.split("=", 1) for s in args.set)}
    settings = {**SAMPLING, "val_reliance": False, **overrides, "inferer#anchor_probability": True}
    parser, net = trained_network(args, settings)
    inferer = parser.get_parsed_content("inferer")
    k, n = net.out_channels, inferer.ensemble_size
    slice_axis = inferer.slice_axis if parser.get_parsed_content("spatial_dims") == 3 else None
    auroc_metrics: dict[str, ErrorDetectionAUROC] = {}
    ece_metrics: dict[str, ExpectedCalibrationError] = {}
    dice: dict[str, list[float]] = {"ensemble (STAPLE)": [], "anchor": []}
    t0, n_cases = time.perf_counter(), 0
    for i, batch in enumerate(parser.get_parsed_content("validate#dataloader")):
        if args.cases and i >= args.cases:
            break
        with torch.no_grad():
            out = inferer(batch["image"], net)[0].float().numpy()
        members, anchor = out[: n * k].reshape(n, k, *out.shape[1:]), out[n * k :]
        truth_onehot = batch["label"][0].numpy() > 0.5
        truth = onehot_to_labels(truth_onehot, 0)
        fused = fuse((members > 0.5).astype(np.uint8), "staple")
        errors = torch.as_tensor(fused != truth)[None, None].float()
        dice["ensemble (STAPLE)"].append(label_dice(fused, truth, k))
        dice["anchor"].append(label_dice(onehot_to_labels(anchor > 0.5, 0), truth, k))
        maps, probs = candidates(members, anchor, slice_axis, tuple(args.anchor_weights))
        for name, m in maps.items():
            auroc_metrics.setdefault(name, ErrorDetectionAUROC())(
                torch.as_tensor(m, dtype=torch.float32)[None, None], errors
            )
        for name, prob in probs.items():
            ece_metrics.setdefault(name, ExpectedCalibrationError())(
                torch.as_tensor(prob)[None].clamp(0, 1), torch.as_tensor(truth_onehot)[None].float()
            )
        n_cases += 1
        if n_cases % 10 == 0:
            print(f"{n_cases} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    auroc = {name: float(metric.aggregate()) for name, metric in auroc_metrics.items()}
    ece = {name: float(metric.aggregate()) for name, metric in ece_metrics.items()}
    lines = [f"Dice: {', '.join(f'{name} {np.mean(v):.4f}' for name, v in dice.items())}"]
    lines += ["| uncertainty map | error AUROC |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in auroc.items()]
    lines += ["", "| foreground probability | ECE |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in ece.items()]
    print("\n".join(lines))
    result = {
        "weights": str(args.weights),
        "split": args.split,
        "cases": n_cases,
        "settings": {key: value for key, value in settings.items() if key != "inferer#anchor_probability"},
        "cpu": cpu_model(),
        "seconds": round(time.perf_counter() - t0),
        "dice": {name: round(float(np.mean(v)), 4) for name, v in dice.items()},
        "dice_per_case": {name: [round(x, 4) for x in v] for name, v in dice.items()},  # for paired comparisons
        "error_auroc": {name: round(v, 4) for name, v in auroc.items()},
        "ece": {name: round(v, 4) for name, v in ece.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
