"""Dice of each sampler setting with trained weights on validation cases (STAPLE fusion of the ensemble).

Uses the bundle's training config for the validation preprocessing, so the cases are prepared exactly as in
validation. Example (small preset trained with quick.yaml on ISIC)::

    python bench/studies/sampler_quality.py --weights bundle/runs/quick/models/model.pt --overlays quick.yaml \
        --dataset_dir ../shared/data/isic2018_task1_256 --datalist bundle/docs/splits/isic2018_split.json \
        --cases 32 --settings ddpm:100 ddim:5 ddim:10 ddim:20
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for its shared set-up

from common import absolute_paths, add_weights_arguments, arg_parser, trained_network, use_bundle  # noqa: E402

use_bundle()

from scripts.diffusion.fusion import fuse, onehot_to_labels  # noqa: E402
from scripts.diffusion.sampling import DiffusionSegmentationInferer  # noqa: E402
from scripts.diffusion.schedulers import RespacedDDPMScheduler  # noqa: E402


def dice(pred: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean over classes 1..k of the Dice of label maps; 1.0 when both are empty for a class."""
    scores = []
    for c in range(1, k + 1):
        p, g = pred == c, gt == c
        denom = p.sum() + g.sum()
        scores.append(1.0 if denom == 0 else 2 * (p & g).sum() / denom)
    return float(np.mean(scores))


def main() -> None:
    ap = arg_parser(__doc__)
    add_weights_arguments(ap, overlays=["quick.yaml"], cases=32)
    ap.add_argument("--ensemble", type=int, default=10)
    ap.add_argument("--settings", nargs="+", default=["ddpm:100", "ddim:5", "ddim:10", "ddim:20"])
    ap.add_argument("--fusion", default="staple")
    args = absolute_paths(ap.parse_args(), "weights", "dataset_dir", "datalist", "json")
    parser, net = trained_network(args)
    k = net.out_channels
    cases = []
    for i, batch in enumerate(parser.get_parsed_content("validate#dataloader")):
        if args.cases and i >= args.cases:
            break
        cases.append((batch["image"], onehot_to_labels(batch["label"][0].numpy(), 0)))
    results = {"weights": args.weights, "cases": len(cases), "ensemble": args.ensemble, "fusion": args.fusion}
    with torch.no_grad():
        anchor = [
            dice(onehot_to_labels((torch.sigmoid(net.condition(img).anchor_logits)[0] > 0.5).numpy(), 0), gt, k)
            for img, gt in cases
        ]
    results["anchor (Condition Model alone)"] = round(float(np.mean(anchor)), 4)
    for setting in args.settings:
        kind, steps = setting.split(":")
        sched = (DDIMScheduler if kind == "ddim" else RespacedDDPMScheduler)(1000, schedule="linear_beta")
        inferer = DiffusionSegmentationInferer(
            sched, int(steps), args.ensemble, fusion="samples", seed=0, soft_members=False
        )
        fused, curve, single = [], np.zeros(args.ensemble), []
        t0 = time.perf_counter()
        for img, gt in cases:
            samples = inferer(img, net)[0].numpy().reshape(args.ensemble, k, *gt.shape)
            fused.append(dice(fuse(samples, args.fusion), gt, k))
            single.append(np.mean([dice(onehot_to_labels(s, 0), gt, k) for s in samples]))
            curve += [dice(fuse(samples[:n], args.fusion), gt, k) for n in range(1, args.ensemble + 1)]
        results[setting] = {
            "dice_fused": round(float(np.mean(fused)), 4),
            "dice_single_sample_mean": round(float(np.mean(single)), 4),
            "dice_vs_ensemble_size": [round(float(c), 4) for c in curve / len(cases)],
            "seconds_per_case": round((time.perf_counter() - t0) / len(cases), 2),
        }
        print(setting, json.dumps(results[setting]), flush=True)
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
