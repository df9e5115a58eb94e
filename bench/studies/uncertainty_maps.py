"""Which uncertainty map finds a V2 ensemble's errors: per-pixel error-detection AUROC and ECE of candidate maps.

For each case of a datalist section the 10-member DDPM ensemble is sampled once (the bundle's network, preprocessing
and Condition Model; STAPLE of the members' masks), and these maps are scored against the fused mask's errors,
pooled over all pixels (2D, one foreground class):

- ``binary``: entropy of the share of members that call a pixel foreground (binary members);
- ``soft``: entropy of the members' mean final mask estimate (x0 + 1) / 2 (``soft_members``, the bundle's default);
- ``anchor``: entropy of the Condition Model's anchor probability alone;
- ``mix``: entropy of the average of the soft members' mean and the anchor probability;
- ``x0_prev``: entropy of the members' mean x0 estimate one step before the end.

The ECE is that of the matching probability. Used for ``soft_members`` (docs/results.md); from the repository root:

    python bench/studies/uncertainty_maps.py --dataset_dir ../shared/data/isic2018_task1_256 \\
        --datalist bundle/docs/splits/isic2018_split.json --weights bundle/models/model.pt --patch_size 2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for its shared set-up

from common import BUNDLE, absolute_paths, arg_parser, bundle_config, use_bundle  # noqa: E402

use_bundle()

from scripts.diffusion.fusion import binary_entropy, fuse  # noqa: E402
from scripts.evaluation.uncertainty import auroc_from_counts, calibration_bins, ece_from_bins  # noqa: E402


def auroc(scores: np.ndarray, errors: np.ndarray) -> float:
    """Pooled error-detection AUROC (ties count 1/2), as ``ErrorDetectionAUROC`` of the bundle computes it."""
    values, inverse = np.unique(scores, return_inverse=True)
    n_pos = np.bincount(inverse[errors], minlength=len(values))
    n_neg = np.bincount(inverse[~errors], minlength=len(values))
    return auroc_from_counts(torch.from_numpy(n_pos), torch.from_numpy(n_neg))


def ece(p: np.ndarray, y: np.ndarray) -> float:
    """Pooled ECE with 15 equal-width bins, as ``ExpectedCalibrationError`` of the bundle computes it."""
    return float(ece_from_bins(calibration_bins(torch.from_numpy(p)[None], torch.from_numpy(y)[None]))[0])


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--weights", default=str(BUNDLE / "models" / "model.pt"))
    ap.add_argument("--split", default="validation")
    ap.add_argument("--roi_size", type=int, default=128)
    ap.add_argument("--patch_size", type=int, default=2)
    ap.add_argument("--ensemble", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    args = absolute_paths(ap.parse_args(), "weights", "dataset_dir", "datalist")

    parser = bundle_config(
        ["train.yaml", "evaluate.yaml"],
        {
            "dataset_dir": args.dataset_dir,
            "datalist": args.datalist,
            "roi_size": args.roi_size,
            "patch_size": args.patch_size,
            "preset": "small",
            "num_workers": 0,
            "eval_split": args.split,
            "val_reliance": False,
            "cache_rate": 0.0,
        },
    )
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(args.weights, weights_only=True, map_location="cpu")["model"])
    net.eval()
    dataset = parser.get_parsed_content("validate#dataset")
    inferer = parser.get_parsed_content("validate#inferer")
    sched = inferer.scheduler
    maps: dict[str, list[np.ndarray]] = {k: [] for k in ("binary", "soft", "anchor", "mix", "x0_prev")}
    probs: dict[str, list[np.ndarray]] = {k: [] for k in ("binary", "soft", "anchor", "mix")}
    errors, truths, dices = [], [], []
    for i in range(len(dataset)):
        item = dataset[i]
        image, truth = item["image"][None].float(), item["label"][0].numpy() > 0.5
        with torch.no_grad():
            own = inferer.condition(image, net)
            cond = own.repeat_interleave(args.ensemble)
            g = torch.Generator().manual_seed(0)
            sched.set_timesteps(args.steps)
            x = torch.randn((args.ensemble, 1, *image.shape[2:]), generator=g)
            previous = out = x  # the x0 estimates of the last two steps
            for t in sched.timesteps:
                previous, out = out, net(x, t, condition=cond).float()
                x, _ = sched.step(out, int(t), x, generator=g)
        soft = ((x.clamp(-1, 1) + 1) / 2)[:, 0].numpy()
        binary = (soft > 0.5).astype(np.uint8)
        anchor = torch.sigmoid(own.anchor_logits.float())[0, 0].numpy()
        fused = fuse(binary[:, None]).astype(bool)
        dices.append(2 * (fused & truth).sum() / max(fused.sum() + truth.sum(), 1))
        p = {"binary": binary.mean(0), "soft": soft.mean(0), "anchor": anchor}
        p["mix"] = (p["soft"] + anchor) / 2
        for k, v in p.items():
            probs[k].append(v.ravel())
            maps[k].append(binary_entropy(v).ravel())
        maps["x0_prev"].append(binary_entropy(((previous.clamp(-1, 1) + 1) / 2)[:, 0].numpy().mean(0)).ravel())
        errors.append((fused != truth).ravel())
        truths.append(truth.ravel())
    err, y = np.concatenate(errors), np.concatenate(truths).astype(float)
    soft_all = np.concatenate(probs["soft"])
    result = {
        "cases": len(dataset),
        "dice": float(np.mean(dices)),
        "share_of_pixels_with_soft_mean_in_(0.01,0.99)": float(((soft_all > 0.01) & (soft_all < 0.99)).mean()),
        "error_auroc": {k: auroc(np.concatenate(v), err) for k, v in maps.items()},
        "ece": {k: ece(np.concatenate(v), y) for k, v in probs.items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
