"""The no-image prior: Dice of the best fixed shape, the score a segmenter must beat to show it uses the image.

2D: a centred disc, its radius chosen on the training cases and scored on the validation (or ``--split test``)
cases. Volumes (``--volume``): a fixed atlas, the mean one-hot training mask of each class on a common grid (in-plane
``roi_size``, the median depth), thresholded at the level that scores best on the training cases, resized to each
scored volume's depth and scored on the whole volume. Both read the cases through the bundle's own preprocessing
(configs/train.yaml, + volume.yaml), at the training ``roi_size``.

    python bench/disc_prior.py --dataset_dir ../shared/data/isic2018_task1_256 \
        --datalist bundle/docs/splits/isic2018_split.json --roi_size 64 --fit_cases 400
    python bench/disc_prior.py --volume --dataset_dir ../shared/data/msd_hippocampus \
        --datalist bundle/docs/splits/msd_hippocampus_split.json --roi_size 64 --fit_cases 200
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric

from common import absolute_paths, arg_parser, bundle_config


def masks(parser: ConfigParser, section: str, limit: int | None) -> list[torch.Tensor]:
    """The (K, *spatial) one-hot truth of each case of ``section`` through the bundle's validation preprocessing."""
    data = parser.get_parsed_content(f"{section}#datalist")[:limit]
    transform = parser.get_parsed_content("validate#preprocessing")
    return [transform(item)["label"].as_tensor() for item in data]


def disc(size: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= radius**2).float()


def dice_of(prior: torch.Tensor, truth: torch.Tensor) -> float:
    metric = DiceMetric(include_background=True, ignore_empty=False)
    metric(prior.expand_as(truth), truth)
    return metric.aggregate().item()


def to_depth(volume: torch.Tensor, depth: int, mode: str) -> torch.Tensor:
    """(K, H, W, D) -> (K, H, W, depth)."""
    return F.interpolate(volume[None].float(), size=(*volume.shape[1:3], depth), mode=mode)[0]


def atlas_prior(fit: list[torch.Tensor], val: list[torch.Tensor]) -> dict:
    """The best fixed atlas (see the module docstring): its threshold chosen on ``fit``, its Dice on ``val``."""
    depth = int(torch.tensor([m.shape[-1] for m in fit]).median())
    atlas = torch.stack([to_depth(m, depth, "trilinear") for m in fit]).mean(0)
    at_depth = {d: to_depth(atlas, d, "trilinear") for d in {m.shape[-1] for m in fit + val}}  # resized once per depth

    def score(threshold: float, cases: list[torch.Tensor]) -> float:
        metric = DiceMetric(include_background=True, ignore_empty=False)
        for truth in cases:
            metric((at_depth[truth.shape[-1]] >= threshold).float()[None], truth[None])
        return metric.aggregate().item()

    thresholds = [t / 20 for t in range(1, 20)]
    fit_scores = {t: score(t, fit) for t in thresholds}
    best = max(fit_scores, key=fit_scores.get)
    return {
        "atlas_depth": depth,
        "threshold_fit_on_training": best,
        "training_cases": len(fit),
        "scored_cases": len(val),
        "scored_dice": round(score(best, val), 4),
    }


def disc_prior(fit: list[torch.Tensor], val: list[torch.Tensor], size: int) -> dict:
    """The best centred disc: its radius chosen on ``fit``, its Dice on ``val``."""
    fit_t, val_t = torch.stack(fit), torch.stack(val)
    radii = [r / 2 for r in range(2, size + 1)]
    fit_scores = {r: dice_of(disc(size, r), fit_t) for r in radii}
    best = max(fit_scores, key=fit_scores.get)
    val_scores = {r: dice_of(disc(size, r), val_t) for r in radii}
    oracle = max(val_scores, key=val_scores.get)
    return {
        "radius_fit_on_training": best,
        "training_cases": len(fit),
        "scored_cases": len(val),
        "scored_dice": round(val_scores[best], 4),
        "best_radius_on_scored_cases": oracle,
        "scored_dice_at_that_radius": round(val_scores[oracle], 4),
    }


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--roi_size", type=int, default=64)
    ap.add_argument("--fit_cases", type=int, default=400, help="training cases used to choose the radius")
    ap.add_argument("--volume", action="store_true", help="3D volumes (configs/volume.yaml): the atlas prior")
    ap.add_argument("--split", default="validation", choices=["validation", "test"], help="the datalist section scored")
    ap.add_argument("--json", type=Path)
    args = absolute_paths(ap.parse_args(), "dataset_dir", "datalist", "json")
    parser = bundle_config(
        ["train.yaml"] + (["volume.yaml"] if args.volume else []),
        {
            "dataset_dir": args.dataset_dir,
            "datalist": args.datalist,
            "roi_size": args.roi_size,
            "validate#split": args.split,
        },
    )
    fit, val = masks(parser, "train", args.fit_cases), masks(parser, "validate", None)
    result = {"split": args.split}
    result |= atlas_prior(fit, val) if args.volume else disc_prior(fit, val, args.roi_size)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
